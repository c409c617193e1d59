//! Prints what the Compose converter says about files: `cargo run -p fleet-server --example
//! compose_check -- FILE...` (problems, or the services of the release).

use std::collections::BTreeMap;

use fleet_server::compose::Compose;

fn main() {
    for path in std::env::args().skip(1) {
        let bytes = std::fs::read(&path).unwrap_or_default();
        match Compose::parse(&bytes, &BTreeMap::new()) {
            Ok(c) => println!(
                "{path}: ok, images {:?}",
                c.images().iter().map(|i| &i.reference).collect::<Vec<_>>()
            ),
            Err(problems) => {
                println!("{path}:");
                for p in problems {
                    println!("  {p}");
                }
            }
        }
    }
}
