//! What sealing secrets costs: the server seals every secret a device's release mounts each
//! time it issues that device a desired state, so at rollout scale this is per device.
//!
//! `cargo run --release -p fleet-proto --example seal_cost` prints the median of 7 runs of
//! 2,000 seals and opens of a 64-byte value (a password) and of a 4 KiB one (a TLS key), and the
//! bytes a sealed secret adds to the desired state.

use std::time::Instant;

use fleet_proto::seal::{seal, secret_aad, SEAL_OVERHEAD};
use fleet_proto::DeviceSealKey;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    const N: usize = 2_000;
    let device = DeviceSealKey::generate().expect("random source");
    let public = device.public();
    let aad = secret_aad("robot-0001", "db-password", "5d41402abc4b2a76b9719d911017c592");
    println!("| value | seal (µs, median of 7) | open (µs) | seals per second, one core |");
    println!("| --- | ---: | ---: | ---: |");
    for (what, len) in [("64 B password", 64), ("4 KiB TLS key", 4096)] {
        let value = vec![0x42u8; len];
        let (mut seals, mut opens) = (Vec::new(), Vec::new());
        for _ in 0..7 {
            let t = Instant::now();
            let sealed: Vec<Vec<u8>> =
                (0..N).map(|_| seal(&public, &value, &aad).expect("seal")).collect();
            seals.push(t.elapsed().as_secs_f64() * 1e6 / N as f64);
            let t = Instant::now();
            for s in &sealed {
                assert_eq!(device.open(s, &aad).expect("open").len(), len);
            }
            opens.push(t.elapsed().as_secs_f64() * 1e6 / N as f64);
        }
        let (s, o) = (median(seals), median(opens));
        println!("| {what} | {s:.1} | {o:.1} | {:.0} |", 1e6 / s);
    }
    println!(
        "\na sealed secret adds {SEAL_OVERHEAD} bytes to its value, plus its name and a 32-character digest"
    );
}
