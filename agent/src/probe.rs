//! Agent-side health probes (a release's `Http` and `Tcp` probes): the agent itself connects
//! to the container, so a service is judged by what its clients see, not only by a command run
//! inside it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use fleet_proto::release::Probe;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::runtime::ObservedContainer;

/// Where to reach `port` of container `c`: its published host port if it has one (loopback when
/// published on all interfaces), else the container's own address on its network, else (host
/// network) loopback.
pub fn address(c: &ObservedContainer, port: u16) -> SocketAddr {
    if let Some(b) = c.ports.iter().find(|b| b.container_port == port && b.host_port != 0) {
        let ip =
            if b.host_ip.is_unspecified() { IpAddr::V4(Ipv4Addr::LOCALHOST) } else { b.host_ip };
        return SocketAddr::new(ip, b.host_port);
    }
    SocketAddr::new(c.ip.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)), port)
}

/// Runs one probe against `c` within `timeout`. `Ok(())` is healthy; the error says why not.
/// Probes the engine runs (`Image`, `Cmd`, `CmdShell`) are not the agent's: `Ok(())`.
pub async fn check(probe: &Probe, c: &ObservedContainer, timeout: Duration) -> Result<(), String> {
    let run = async {
        match probe {
            Probe::Tcp { port } => {
                let addr = address(c, *port);
                TcpStream::connect(addr)
                    .await
                    .map(drop)
                    .map_err(|e| format!("TCP connect to {addr} (port {port}) failed: {e}"))
            }
            Probe::Http { port, path } => http_get(address(c, *port), *port, path).await,
            Probe::Image | Probe::Cmd(_) | Probe::CmdShell(_) | Probe::Disabled => Ok(()),
        }
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(result) => result,
        Err(_) => Err(format!("probe did not answer within {} ms", timeout.as_millis())),
    }
}

/// `GET path` over HTTP/1.0; any 2xx status is healthy.
async fn http_get(addr: SocketAddr, port: u16, path: &str) -> Result<(), String> {
    let fail = |what: &str, e: std::io::Error| {
        format!("HTTP GET {path} on port {port} ({addr}): {what}: {e}")
    };
    let mut s = TcpStream::connect(addr).await.map_err(|e| fail("connect", e))?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: fleet-agent\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).await.map_err(|e| fail("send", e))?;
    // The status line is all that is needed; read at most a small head.
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 1024 {
        let n = s.read(&mut buf).await.map_err(|e| fail("read", e))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let line = line.lines().next().unwrap_or("").trim();
    let status = line.split_whitespace().nth(1).and_then(|s| s.parse::<u16>().ok());
    match status {
        Some(code) if (200..300).contains(&code) => Ok(()),
        Some(code) => Err(format!("HTTP GET {path} on port {port} answered {code}")),
        None if line.is_empty() => {
            Err(format!("HTTP GET {path} on port {port}: connection closed without an answer"))
        }
        None => Err(format!("HTTP GET {path} on port {port}: not an HTTP answer: {line:?}")),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use fleet_proto::report::{ContainerState, Health};
    use tokio::net::TcpListener;

    use super::*;
    use crate::runtime::PortBinding;

    fn container(ports: Vec<PortBinding>, ip: Option<IpAddr>) -> ObservedContainer {
        ObservedContainer {
            id: "id".into(),
            name: "c".into(),
            labels: BTreeMap::new(),
            image: "img".into(),
            state: ContainerState::Running,
            health: Health::NoCheck,
            exit_code: None,
            restart_count: 0,
            oom_killed: false,
            ports,
            ip,
            stop_grace: None,
        }
    }

    #[test]
    fn address_prefers_the_published_port_then_the_container_ip_then_loopback() {
        let ip: IpAddr = "172.17.0.5".parse().unwrap();
        let published = PortBinding {
            container_port: 80,
            host_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            host_port: 8080,
        };
        let c = container(vec![published], Some(ip));
        assert_eq!(address(&c, 80), "127.0.0.1:8080".parse().unwrap());
        assert_eq!(address(&c, 9000), "172.17.0.5:9000".parse().unwrap());
        assert_eq!(address(&container(vec![], None), 9000), "127.0.0.1:9000".parse().unwrap());
    }

    /// A server answering every connection with `answer`.
    async fn server(answer: &'static str) -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(answer.as_bytes()).await;
            }
        });
        port
    }

    #[tokio::test]
    async fn http_probe_accepts_2xx_and_names_anything_else() {
        let t = Duration::from_secs(2);
        let ok = server("HTTP/1.1 204 No Content\r\n\r\n").await;
        let c = container(vec![], None);
        let probe = |port| Probe::Http { port, path: "/health".into() };
        assert_eq!(check(&probe(ok), &c, t).await, Ok(()));

        let bad = server("HTTP/1.1 503 Service Unavailable\r\n\r\n").await;
        let err = check(&probe(bad), &c, t).await.unwrap_err();
        assert!(err.contains("answered 503"), "{err}");

        let junk = server("SSH-2.0-OpenSSH\r\n").await;
        let err = check(&probe(junk), &c, t).await.unwrap_err();
        assert!(err.contains("not an HTTP answer"), "{err}");
    }

    #[tokio::test]
    async fn tcp_probe_fails_on_a_closed_port_and_passes_on_an_open_one() {
        let t = Duration::from_secs(2);
        let open = server("").await;
        let c = container(vec![], None);
        assert_eq!(check(&Probe::Tcp { port: open }, &c, t).await, Ok(()));
        let closed =
            std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let err = check(&Probe::Tcp { port: closed }, &c, t).await.unwrap_err();
        assert!(err.contains("TCP connect"), "{err}");
    }

    #[tokio::test]
    async fn a_probe_that_hangs_times_out() {
        // Accepts but never answers.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let c = container(vec![], None);
        let probe = Probe::Http { port, path: "/".into() };
        let err = check(&probe, &c, Duration::from_millis(200)).await.unwrap_err();
        assert!(err.contains("within 200 ms"), "{err}");
        drop(l);
    }
}
