//! Traffic through a host port while something changes behind it: a client loop that
//! counts every failed request (the blue/green switch, the agent stopped or upgraded).

use std::time::Duration;

/// `GET /version` of the test image's web server on `127.0.0.1:port`: its version, or why
/// the request failed.
pub fn get_version(port: u16) -> Result<String, String> {
    use std::io::{Read, Write};
    let mut s =
        std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /version HTTP/1.0\r\n\r\n").map_err(|e| format!("send: {e}"))?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).map_err(|e| format!("read: {e}"))?;
    match answer.split_once("\r\n\r\n") {
        Some((head, body))
            if head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200") =>
        {
            Ok(body.trim().to_owned())
        }
        _ => Err(format!("answer: {answer:?}")),
    }
}

/// A client loop against a host port: one request per new connection, as fast as answered.
#[derive(Debug)]
pub struct Clients {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<ClientTally>,
}

/// What a [`Clients`] loop saw.
#[derive(Debug)]
pub struct ClientTally {
    /// Requests answered.
    pub ok: u32,
    /// Why each failed one failed.
    pub failed: Vec<String>,
    /// The versions answered, each change once.
    pub versions: Vec<String>,
    /// The slowest request.
    pub max_latency: Duration,
}

impl Clients {
    /// Starts the loop against `127.0.0.1:port`.
    pub fn start(port: u16) -> Clients {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || {
                let mut t = ClientTally {
                    ok: 0,
                    failed: Vec::new(),
                    versions: Vec::new(),
                    max_latency: Duration::ZERO,
                };
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let started = std::time::Instant::now();
                    match get_version(port) {
                        Ok(v) => {
                            t.ok += 1;
                            if t.versions.last() != Some(&v) {
                                t.versions.push(v);
                            }
                        }
                        Err(e) => t.failed.push(e),
                    }
                    t.max_latency = t.max_latency.max(started.elapsed());
                }
                t
            }
        });
        Clients { stop, thread }
    }

    /// Stops the loop; what it saw.
    pub fn finish(self) -> ClientTally {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.join().unwrap()
    }
}
