//! The local ingestion endpoint: applications post telemetry to a Unix socket the agent mounts
//! into services that opt in (`x-fleet: telemetry: true`), at `/run/fleet/telemetry.sock`.
//!
//! ```text
//! POST /write?precision=ms        InfluxDB line protocol (also /api/v2/write), text/plain
//! POST /v1/points                 the JSON form, application/json
//! GET  /health                    200 while the agent buffers
//! ```
//!
//! `204 No Content` means the points are **on disk** in the agent's buffer (a crash or power
//! cut from then on loses none). Refusals are HTTP 4xx with `{"error": "..."}` naming what
//! is wrong: 400 malformed (with the line), 411 without `Content-Length`, 413 body too large,
//! 415 unknown content type, 429 over the service's rate (with `Retry-After`), 503 buffer
//! unavailable. Each is counted ([`IngestCounters`]).
//!
//! Optionally (`tcp_listen`) the same endpoint listens on a loopback TCP address for host
//! processes; points that arrive there are labelled `origin=host`.
//!
//! Who posted is not taken from the request: the peer's process id (`SO_PEERCRED`) leads to
//! its container (`/proc/<pid>/cgroup`) and so to the service, which labels every point
//! `service=<name>`; a service cannot speak for another, and one flooding service meets its
//! own rate limit, not everyone's.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleet_proto::telemetry::Point;
use fleet_proto::{DeviceId, UnixMillis};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::UnixStream;
use tokio::task::JoinSet;

use super::line_protocol::{self, Precision};
use super::TelemetryHandle;
use crate::http1::{parse_request, read_head, ReadError, Request, Response};
use crate::runtime::ContainerRuntime;

/// Where the socket is inside a container that opted in.
pub const CONTAINER_DIR: &str = "/run/fleet";
/// The socket's file name (in the agent's socket directory and in [`CONTAINER_DIR`]).
pub const SOCKET_NAME: &str = "telemetry.sock";

/// Limits of the endpoint (the `[telemetry]` configuration).
#[derive(Debug, Clone, PartialEq)]
pub struct IngestConfig {
    /// Directory of the socket (mounted into opted-in containers as [`CONTAINER_DIR`]).
    pub socket_dir: PathBuf,
    /// Largest request body in bytes.
    pub max_body: usize,
    /// Most points in one request.
    pub max_points: usize,
    /// Points per second each service may post, sustained.
    pub rate: f64,
    /// Points a service may post at once.
    pub burst: f64,
    /// Connections served at the same time; more are answered 503 at once.
    pub max_connections: usize,
    /// Also listen on this loopback TCP address, for host processes that cannot use a Unix
    /// socket; `None`: the socket only. Points posted over TCP are labelled `origin=host`.
    pub tcp: Option<std::net::SocketAddr>,
}

/// Requests refused, by reason, and points accepted.
#[derive(Debug, Default)]
pub struct IngestCounters {
    /// Points accepted (on disk).
    pub accepted_points: AtomicU64,
    /// Requests refused as malformed (400, 411, 415).
    pub malformed: AtomicU64,
    /// Requests refused as too large (413).
    pub too_large: AtomicU64,
    /// Requests refused by a rate limit (429).
    pub rate_limited: AtomicU64,
    /// Requests the buffer could not take, or over the connection limit (503).
    pub unavailable: AtomicU64,
}

impl IngestCounters {
    /// Every refused request.
    pub fn rejected(&self) -> u64 {
        [&self.malformed, &self.too_large, &self.rate_limited, &self.unavailable]
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }
}

/// The container engine id in a `/proc/<pid>/cgroup` file: the 64 hex digits of a Docker
/// scope (`docker-<id>.scope` under systemd's cgroup v2 layout, `/docker/<id>` under
/// cgroupfs), `None` for a process outside a container.
pub fn container_id_from_cgroup(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let path = line.rsplit(':').next()?;
        path.split('/').rev().find_map(|part| {
            let part = part.strip_prefix("docker-").unwrap_or(part);
            let part = part.strip_suffix(".scope").unwrap_or(part);
            (part.len() == 64 && part.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| part.to_owned())
        })
    })
}

/// Maps a peer process to the service it belongs to.
pub trait Identify: Send + Sync + 'static {
    /// The service of the container `pid` runs in; `None` outside the agent's containers.
    fn service_of(&self, pid: i32) -> impl Future<Output = Option<String>> + Send;
}

/// [`Identify`] through `/proc` and the engine: a cache of container id → service, refreshed
/// from the engine's list when an unknown container posts (at most every 2 s).
pub struct ContainerIdentity<R> {
    runtime: Arc<R>,
    device: DeviceId,
    proc_root: PathBuf,
    cache: tokio::sync::Mutex<(HashMap<String, String>, Option<Instant>)>,
}

impl<R: ContainerRuntime> ContainerIdentity<R> {
    /// Reads `/proc` under `proc_root` (`/` on a device) and lists the device's containers.
    pub fn new(runtime: Arc<R>, device: DeviceId, proc_root: PathBuf) -> Self {
        ContainerIdentity {
            runtime,
            device,
            proc_root,
            cache: tokio::sync::Mutex::new((HashMap::new(), None)),
        }
    }
}

impl<R: ContainerRuntime> Identify for ContainerIdentity<R> {
    async fn service_of(&self, pid: i32) -> Option<String> {
        let cgroup =
            std::fs::read_to_string(self.proc_root.join(format!("proc/{pid}/cgroup"))).ok()?;
        let id = container_id_from_cgroup(&cgroup)?;
        let mut cache = self.cache.lock().await;
        if let Some(s) = cache.0.get(&id) {
            return Some(s.clone());
        }
        if cache.1.is_some_and(|at| at.elapsed() < Duration::from_secs(2)) {
            return None;
        }
        cache.1 = Some(Instant::now());
        if let Ok(list) = self.runtime.list(&self.device).await {
            cache.0 = list
                .iter()
                .filter_map(|c| {
                    Some((c.id.clone(), c.label(crate::runtime::labels::SERVICE)?.to_owned()))
                })
                .collect();
        }
        cache.0.get(&id).cloned()
    }
}

impl<R> std::fmt::Debug for ContainerIdentity<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerIdentity").field("device", &self.device).finish_non_exhaustive()
    }
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Per-service token buckets.
struct Limits {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Limits {
    /// Takes `n` tokens from `who`'s bucket, or says how long until there are enough.
    fn take(&self, who: &str, n: usize, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let b = buckets.entry(who.to_owned()).or_insert(Bucket { tokens: self.burst, at: now });
        b.tokens = (b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * self.rate)
            .min(self.burst);
        b.at = now;
        let n = n as f64;
        if n > b.tokens {
            return Err(Duration::from_secs_f64(
                ((n.min(self.burst) - b.tokens) / self.rate).max(0.0),
            ));
        }
        b.tokens -= n;
        Ok(())
    }
}

/// Serves the endpoint until `shutdown` completes. Fails only if the socket (or the TCP
/// address) cannot be bound.
pub async fn serve(
    cfg: IngestConfig,
    telemetry: TelemetryHandle,
    identity: Arc<impl Identify>,
    counters: Arc<IngestCounters>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), String> {
    let path = cfg.socket_dir.join(SOCKET_NAME);
    // Any user in a container that has the mount may post: the mount is the permission. On
    // the host the directory is reachable by every user, so host processes other than root
    // are refused by their credentials ([`admitted`]).
    let listener = crate::lock::bind(&path, 0o666).await.map_err(|e| e.to_string())?;
    tracing::info!(socket = %path.display(), "telemetry ingestion listening");
    let tcp = match cfg.tcp {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
            tracing::info!(%addr, "telemetry ingestion listening on loopback TCP");
            Some(l)
        }
        None => None,
    };
    let limits =
        Arc::new(Limits { rate: cfg.rate, burst: cfg.burst, buckets: Mutex::new(HashMap::new()) });
    let cfg = Arc::new(cfg);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let accepted: std::io::Result<Stream> = tokio::select! {
            () = &mut shutdown => break,
            a = listener.accept() => a.map(|(s, _)| {
                let peer = s.peer_cred().ok().map(|c| Peer { pid: c.pid(), uid: c.uid() });
                Stream::Unix(s, peer)
            }),
            a = async { tcp.as_ref().expect("guarded").accept().await }, if tcp.is_some() => {
                a.map(|(s, _)| Stream::Tcp(s))
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let stream = match accepted {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "telemetry ingestion cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if connections.len() >= cfg.max_connections {
            counters.unavailable.fetch_add(1, Ordering::Relaxed);
            let busy = Response::error(
                503,
                format!("more than {} connections at once; retry", cfg.max_connections),
            );
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(1), stream.reply(&busy)).await;
            });
            continue;
        }
        let (cfg, telemetry, identity, counters, limits) =
            (cfg.clone(), telemetry.clone(), identity.clone(), counters.clone(), limits.clone());
        connections.spawn(async move {
            match stream {
                Stream::Unix(s, peer) => {
                    connection(s, peer, &cfg, &telemetry, &*identity, &counters, &limits).await;
                }
                Stream::Tcp(s) => {
                    connection(s, None, &cfg, &telemetry, &*identity, &counters, &limits).await;
                }
            }
        });
    }
    drop(listener);
    let _ = std::fs::remove_file(&path);
    connections.shutdown().await;
    Ok(())
}

/// An accepted connection: a Unix socket peer with its credentials (its process id leads to
/// its service), or a loopback TCP peer (the host).
enum Stream {
    Unix(UnixStream, Option<Peer>),
    Tcp(tokio::net::TcpStream),
}

/// A Unix socket peer's credentials, as the kernel gives them (`SO_PEERCRED`).
#[derive(Debug, Clone, Copy)]
struct Peer {
    pid: Option<i32>,
    uid: u32,
}

/// Whether a socket peer may post: a process of one of this device's service containers (only
/// those that opted in have the socket mounted), or root on the host. Any other host user is
/// refused, since the socket's directory is open to every user so that containers' own users
/// reach it. Loopback TCP (`tcp_listen`) is an operator's explicit opening and not judged here.
fn admitted(service: Option<&str>, peer: Option<Peer>) -> Result<(), String> {
    match (service, peer) {
        (Some(_), _) | (None, None) => Ok(()),
        (None, Some(Peer { uid: 0, .. })) => Ok(()),
        (None, Some(Peer { uid, .. })) => Err(format!(
            "uid {uid} on the host may not post telemetry here: only this device's services that send telemetry, and root"
        )),
    }
}

impl Stream {
    async fn reply(mut self, r: &Response) -> std::io::Result<()> {
        match &mut self {
            Stream::Unix(s, _) => s.write_all(&r.to_bytes()).await,
            Stream::Tcp(s) => s.write_all(&r.to_bytes()).await,
        }
    }
}

const TIMEOUT: Duration = Duration::from_secs(10);
const MAX_HEAD: usize = 16 * 1024;

async fn connection<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    peer: Option<Peer>,
    cfg: &IngestConfig,
    telemetry: &TelemetryHandle,
    identity: &impl Identify,
    counters: &IngestCounters,
    limits: &Limits,
) {
    let response = match tokio::time::timeout(TIMEOUT, read_head(&mut stream, MAX_HEAD)).await {
        Err(_) => Response::error(408, format!("request not received within {TIMEOUT:?}")),
        Ok(Err(ReadError::Closed)) => return,
        Ok(Err(ReadError::Reply(r))) => r,
        Ok(Ok((head, start))) => match parse_request(&head) {
            Err(r) => r,
            Ok(req) => {
                handle(&mut stream, req, start, peer, cfg, telemetry, identity, counters, limits)
                    .await
            }
        },
    };
    match response.status {
        400 | 411 | 415 => counters.malformed.fetch_add(1, Ordering::Relaxed),
        413 => counters.too_large.fetch_add(1, Ordering::Relaxed),
        429 => counters.rate_limited.fetch_add(1, Ordering::Relaxed),
        503 => counters.unavailable.fetch_add(1, Ordering::Relaxed),
        _ => 0,
    };
    let _ = tokio::time::timeout(TIMEOUT, async {
        stream.write_all(&response.to_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}

#[allow(clippy::too_many_arguments)] // one request's whole context, passed down once
async fn handle(
    stream: &mut (impl AsyncRead + Unpin),
    req: Request,
    start: Vec<u8>,
    peer: Option<Peer>,
    cfg: &IngestConfig,
    telemetry: &TelemetryHandle,
    identity: &impl Identify,
    counters: &IngestCounters,
    limits: &Limits,
) -> Response {
    let json = match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/health") => return Response::json(200, serde_json::json!({ "status": "ok" })),
        ("POST", "/write" | "/api/v2/write") => false,
        ("POST", "/v1/points") => true,
        (_, "/write" | "/api/v2/write" | "/v1/points") => {
            return Response::method_not_allowed(&req.method, "POST")
        }
        (_, "/health") => return Response::method_not_allowed(&req.method, "GET"),
        (_, path) => {
            return Response::error(
                404,
                format!(
                    "no such endpoint {path:?}; POST line protocol to /write or JSON to /v1/points"
                ),
            )
        }
    };
    // Who posts is judged before the body is read.
    let service = match peer.and_then(|p| p.pid) {
        Some(pid) => identity.service_of(pid).await,
        None => None,
    };
    if let Err(why) = admitted(service.as_deref(), peer) {
        return Response::error(403, why);
    }
    let content_type = req
        .header("content-type")
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let type_ok = if json {
        content_type == "application/json"
    } else {
        content_type.is_empty() || content_type == "text/plain"
    };
    if !type_ok {
        let want = if json { "application/json" } else { "text/plain (InfluxDB line protocol)" };
        return Response::error(
            415,
            format!("content type {content_type:?} is not accepted here; send {want}"),
        );
    }
    if req.header("transfer-encoding").is_some() {
        return Response::error(411, "chunked bodies are not accepted; send Content-Length");
    }
    let Some(len) = req.header("content-length") else {
        return Response::error(411, "Content-Length is required");
    };
    let Ok(len) = len.parse::<usize>() else {
        return Response::error(400, format!("Content-Length {len:?} is not a number"));
    };
    if len > cfg.max_body {
        return Response::error(
            413,
            format!(
                "body of {len} bytes is larger than the limit of {} bytes; send smaller batches",
                cfg.max_body
            ),
        );
    }
    let mut body = start;
    if body.len() < len {
        let need = len - body.len();
        let mut rest = vec![0u8; need];
        match tokio::time::timeout(TIMEOUT, stream.read_exact(&mut rest)).await {
            Ok(Ok(_)) => body.extend_from_slice(&rest),
            _ => {
                return Response::error(
                    400,
                    format!("body ended before its Content-Length of {len} bytes"),
                )
            }
        }
    }
    body.truncate(len);
    let now = UnixMillis::now();
    let parsed = if json {
        line_protocol::parse_json(&body, now)
    } else {
        let precision = match query_param(req.query.as_deref(), "precision").map(Precision::parse) {
            None => Ok(Precision::Nanos),
            Some(p) => p,
        };
        let budget = line_protocol::Budget {
            max_points: cfg.max_points,
            max_label_bytes: line_protocol::MAX_LABEL_BYTES,
        };
        match (precision, std::str::from_utf8(&body)) {
            (Err(e), _) => Err(e),
            (_, Err(_)) => Err("body is not valid UTF-8".to_owned()),
            (Ok(p), Ok(text)) => match line_protocol::parse_lines(text, p, now, budget) {
                Ok(points) => Ok(points),
                Err(r) if r.too_large => return Response::error(413, r.message),
                Err(r) => Err(r.message),
            },
        }
    };
    let mut points: Vec<Point> = match parsed {
        Ok(p) => p,
        Err(e) => return Response::error(400, e),
    };
    if points.len() > cfg.max_points {
        return Response::error(
            413,
            format!(
                "{} points in one request, more than {}; send smaller batches",
                points.len(),
                cfg.max_points
            ),
        );
    }
    if points.is_empty() {
        return Response::no_content();
    }

    let who = service.clone().unwrap_or_else(|| "host".to_owned());
    if let Err(wait) = limits.take(&who, points.len(), Instant::now()) {
        let secs = wait.as_secs().max(1);
        let mut r = Response::error(
            429,
            format!(
                "{who} is over its rate of {} points/s (burst {}); retry in {secs} s",
                cfg.rate, cfg.burst
            ),
        );
        r.retry_after = Some(secs);
        return r;
    }
    for p in &mut points {
        match &service {
            // The agent says who posted; a point cannot claim another service.
            Some(s) => {
                p.labels.insert("service".to_owned(), s.clone());
            }
            None => {
                p.labels.remove("service");
                p.labels.insert("origin".to_owned(), "host".to_owned());
            }
        }
    }
    let n = points.len() as u64;
    match telemetry.record_durable(points).await {
        Ok(()) => {
            counters.accepted_points.fetch_add(n, Ordering::Relaxed);
            Response::no_content()
        }
        Err(e) => {
            Response::error(503, format!("the telemetry buffer did not take the points: {e}"))
        }
    }
}

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|kv| kv.split_once('=').filter(|(k, _)| *k == name).map(|(_, v)| v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_and_root_may_post_other_host_users_may_not() {
        let user = Some(Peer { pid: Some(4242), uid: 1000 });
        let root = Some(Peer { pid: Some(1), uid: 0 });
        // A service's process, whatever its uid (its container's users are its own).
        assert_eq!(admitted(Some("camera"), user), Ok(()));
        assert_eq!(admitted(None, root), Ok(()));
        // No credentials: loopback TCP, which the operator opened explicitly.
        assert_eq!(admitted(None, None), Ok(()));
        let refused = admitted(None, user).unwrap_err();
        assert!(refused.starts_with("uid 1000 on the host may not post"), "{refused}");
    }

    #[test]
    fn finds_the_container_of_a_process() {
        let id = "a".repeat(64);
        let v2 = format!("0::/system.slice/docker-{id}.scope\n");
        assert_eq!(container_id_from_cgroup(&v2), Some(id.clone()));
        let v1 = format!("12:memory:/docker/{id}\n11:cpu:/docker/{id}\n");
        assert_eq!(container_id_from_cgroup(&v1), Some(id.clone()));
        let nested = format!("0::/docker/{id}/init.scope\n");
        assert_eq!(container_id_from_cgroup(&nested), Some(id));
        assert_eq!(container_id_from_cgroup("0::/user.slice/user-0.slice/session-1.scope\n"), None);
    }

    #[test]
    fn each_service_has_its_own_bucket() {
        let l = Limits { rate: 10.0, burst: 20.0, buckets: Mutex::new(HashMap::new()) };
        let t = Instant::now();
        assert!(l.take("a", 20, t).is_ok());
        let wait = l.take("a", 5, t).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        // Another service is not starved by the first.
        assert!(l.take("b", 20, t).is_ok());
        // Refilled after a second.
        assert!(l.take("a", 10, t + Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn query_params() {
        assert_eq!(query_param(Some("db=x&precision=ms"), "precision"), Some("ms"));
        assert_eq!(query_param(Some("db=x"), "precision"), None);
        assert_eq!(query_param(None, "precision"), None);
    }
}
