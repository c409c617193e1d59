//! The proxy's control socket (`<data_dir>/proxy.sock`, mode 0600, root's): how the daemon
//! reads the proxy's table and switches, closes and drains routes.
//!
//! Protocol (the admin socket's): the client sends one JSON [`Request`] and shuts down its write
//! side; the proxy answers with one JSON [`Answer`] and closes. The proxy may run an older or
//! newer build than the daemon (it is not restarted by agent updates), so the protocol only
//! grows: new requests and new fields with defaults, never a changed meaning.

use std::collections::BTreeSet;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use fleet_proto::UnixMillis;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::ports::PortProxy;
use crate::plan::{Forward, Route, Routes};

/// Largest request the proxy reads: a switch of a service with many ports is a few KiB.
const MAX_REQUEST_BYTES: u64 = 64 << 10;
/// Largest answer the client reads: a status of every route with its counts.
const MAX_ANSWER_BYTES: u64 = 4 << 20;
/// How long a request may take to arrive, and a quick call to be answered.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a proxy the daemon started gets to answer on its socket.
const START_TIMEOUT: Duration = Duration::from_secs(5);

/// The control socket of the proxy serving `data_dir`.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("proxy.sock")
}

/// What the daemon asks the proxy.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Request {
    /// The proxy's table and counts.
    Status,
    /// Send new connections on `service`'s host ports to `container` (see
    /// [`PortProxy::switch`]).
    Switch {
        /// The service.
        service: String,
        /// The container now in force.
        container: String,
        /// Every host port of the service and the container's loopback port for it.
        forwards: BTreeSet<Forward>,
    },
    /// Close `service`'s host ports.
    Unroute {
        /// The service.
        service: String,
    },
    /// Wait until no connection to `container` is open, at most `timeout_ms`.
    Drain {
        /// The container.
        container: String,
        /// The longest wait in milliseconds.
        timeout_ms: u64,
    },
}

/// The proxy's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Answer {
    /// The table (answer to `status`).
    Status(ProxyStatus),
    /// Done (`switch`, `unroute`).
    Done,
    /// Connections still open to the container when the drain ended.
    Drained {
        /// Open connections.
        open: usize,
    },
    /// The proxy cannot take a host port; nothing changed.
    Refused {
        /// The service.
        service: String,
        /// The host address.
        listen: SocketAddr,
        /// Why (the bind error).
        message: String,
    },
    /// The request was not understood.
    Error {
        /// Why.
        message: String,
    },
}

/// The proxy process and its table, as `fleet-agent status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyStatus {
    /// The proxy's process id.
    pub pid: u32,
    /// The agent version the proxy runs (it may differ from the daemon's after an update).
    pub version: String,
    /// When the proxy started.
    pub since: UnixMillis,
    /// One entry per host port.
    pub routes: Vec<RouteStatus>,
}

/// One host port in the proxy's table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteStatus {
    /// The service.
    pub service: String,
    /// The container new connections go to.
    pub container: String,
    /// The host address listened on.
    pub listen: SocketAddr,
    /// The container's loopback address.
    pub backend: SocketAddr,
    /// Connections open to that container now (over all its ports).
    pub open: usize,
}

impl ProxyStatus {
    /// The table by service, as the planner compares it.
    pub fn routes(&self) -> Routes {
        let mut routes = Routes::new();
        for r in &self.routes {
            routes
                .entry(r.service.clone())
                .or_insert_with(|| Route {
                    container: r.container.clone(),
                    forwards: BTreeSet::new(),
                })
                .forwards
                .insert(Forward { listen: r.listen, backend: r.backend });
        }
        routes
    }
}

/// The status of `proxy` now.
pub(super) fn status_of(proxy: &PortProxy, since: UnixMillis) -> ProxyStatus {
    let mut routes = Vec::new();
    for (service, route) in proxy.routes() {
        for f in &route.forwards {
            routes.push(RouteStatus {
                service: service.clone(),
                container: route.container.clone(),
                listen: f.listen,
                backend: f.backend,
                open: proxy.open_connections(&route.container),
            });
        }
    }
    ProxyStatus { pid: std::process::id(), version: crate::AGENT_VERSION.to_owned(), since, routes }
}

/// Serves one control connection: reads the request, carries it out, answers. `changed` runs
/// after every change of the table (the process saves it).
pub(super) async fn handle(
    mut stream: UnixStream,
    proxy: &PortProxy,
    since: UnixMillis,
    changed: &(dyn Fn(&PortProxy) + Sync),
) {
    // The socket is 0600 already; a peer of another user (a socket passed on, a changed mode)
    // is refused too, since this changes what the host's ports serve.
    let own = nix::unistd::geteuid().as_raw();
    if let Ok(cred) = stream.peer_cred() {
        if cred.uid() != own && cred.uid() != 0 {
            tracing::warn!(uid = cred.uid(), "port proxy control: refused a peer of another user");
            return;
        }
    }
    let mut body = Vec::new();
    let read = tokio::time::timeout(
        IO_TIMEOUT,
        (&mut stream).take(MAX_REQUEST_BYTES + 1).read_to_end(&mut body),
    )
    .await;
    let answer = match read {
        Err(_) => Answer::Error { message: format!("request not received within {IO_TIMEOUT:?}") },
        Ok(Err(e)) => Answer::Error { message: format!("cannot read the request: {e}") },
        Ok(Ok(_)) if body.len() as u64 > MAX_REQUEST_BYTES => {
            Answer::Error { message: format!("request larger than {MAX_REQUEST_BYTES} bytes") }
        }
        Ok(Ok(_)) => match serde_json::from_slice::<Request>(&body) {
            Err(e) => Answer::Error { message: format!("not a valid request: {e}") },
            Ok(request) => answer(request, proxy, since, changed).await,
        },
    };
    let bytes = serde_json::to_vec(&answer).unwrap_or_default();
    let _ = tokio::time::timeout(IO_TIMEOUT, stream.write_all(&bytes)).await;
    let _ = stream.shutdown().await;
}

async fn answer(
    request: Request,
    proxy: &PortProxy,
    since: UnixMillis,
    changed: &(dyn Fn(&PortProxy) + Sync),
) -> Answer {
    match request {
        Request::Status => Answer::Status(status_of(proxy, since)),
        Request::Switch { service, container, forwards } => {
            match proxy.switch(&service, &container, &forwards) {
                Ok(()) => {
                    changed(proxy);
                    Answer::Done
                }
                Err(e) => Answer::Refused {
                    service: e.service,
                    listen: e.listen,
                    message: e.source.to_string(),
                },
            }
        }
        Request::Unroute { service } => {
            proxy.unroute(&service);
            changed(proxy);
            Answer::Done
        }
        Request::Drain { container, timeout_ms } => {
            let open = proxy.drain(&container, Duration::from_millis(timeout_ms)).await;
            Answer::Drained { open }
        }
    }
}

/// Why a call to the proxy failed.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Nothing answers on the control socket (and the daemon may not start a proxy itself).
    #[error("the port proxy does not answer on {}: {source}{hint}", socket.display())]
    Unreachable {
        /// The control socket.
        socket: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
        /// What to check.
        hint: &'static str,
    },
    /// The proxy cannot take a host port; nothing changed.
    #[error("cannot listen on {listen} for service {service}: {message}")]
    Refused {
        /// The service.
        service: String,
        /// The host address.
        listen: SocketAddr,
        /// Why.
        message: String,
    },
    /// The proxy answered something else than the request asks for.
    #[error("the port proxy answered unexpectedly: {message}")]
    Protocol {
        /// What came back.
        message: String,
    },
}

/// What the client does when no proxy answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartWith {
    /// Nothing: under systemd the proxy is a unit of its own (started by the daemon, it would
    /// live in the daemon's cgroup and be killed with it); `status` only looks.
    Nothing,
    /// Starts `<program> proxy --data-dir DIR` as a process of its own.
    Program(PathBuf),
    /// Runs the proxy as a task of this process (the simulator and in-process tests, whose
    /// executable is not `fleet-agent`): same socket and code, but it ends with the process.
    Task,
}

/// The daemon's side of the control socket.
#[derive(Debug, Clone)]
pub struct ProxyClient {
    data_dir: PathBuf,
    socket: PathBuf,
    start_with: StartWith,
}

impl ProxyClient {
    /// The client of the proxy serving `data_dir`.
    pub fn new(data_dir: &Path, start_with: StartWith) -> ProxyClient {
        ProxyClient { data_dir: data_dir.to_path_buf(), socket: socket_path(data_dir), start_with }
    }

    /// The client a device's daemon uses: under systemd (`INVOCATION_ID` set) the proxy is a
    /// unit of its own; otherwise the daemon starts it from its own binary.
    pub fn for_daemon(data_dir: &Path) -> ProxyClient {
        let under_systemd = std::env::var_os("INVOCATION_ID").is_some();
        let start = match std::env::current_exe() {
            Ok(exe) if !under_systemd => StartWith::Program(exe),
            _ => StartWith::Nothing,
        };
        ProxyClient::new(data_dir, start)
    }

    /// The proxy's table and counts.
    pub async fn status(&self) -> Result<ProxyStatus, ProxyError> {
        match self.call(&Request::Status, IO_TIMEOUT).await? {
            Answer::Status(s) => Ok(s),
            other => Err(unexpected(other)),
        }
    }

    /// The status if a proxy answers now, without starting one (for `fleet-agent status`).
    pub async fn status_if_running(&self) -> Option<ProxyStatus> {
        let stream = UnixStream::connect(&self.socket).await.ok()?;
        match exchange(stream, &Request::Status, IO_TIMEOUT).await {
            Ok(Answer::Status(s)) => Some(s),
            _ => None,
        }
    }

    /// The routes in force, by service.
    pub async fn routes(&self) -> Result<Routes, ProxyError> {
        Ok(self.status().await?.routes())
    }

    /// See [`PortProxy::switch`].
    pub async fn switch(
        &self,
        service: &str,
        container: &str,
        forwards: &BTreeSet<Forward>,
    ) -> Result<(), ProxyError> {
        let request = Request::Switch {
            service: service.to_owned(),
            container: container.to_owned(),
            forwards: forwards.clone(),
        };
        match self.call(&request, IO_TIMEOUT).await? {
            Answer::Done => Ok(()),
            Answer::Refused { service, listen, message } => {
                Err(ProxyError::Refused { service, listen, message })
            }
            other => Err(unexpected(other)),
        }
    }

    /// See [`PortProxy::unroute`].
    pub async fn unroute(&self, service: &str) -> Result<(), ProxyError> {
        match self.call(&Request::Unroute { service: service.to_owned() }, IO_TIMEOUT).await? {
            Answer::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// See [`PortProxy::drain`]: connections still open at the end.
    pub async fn drain(&self, container: &str, timeout: Duration) -> Result<usize, ProxyError> {
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let request = Request::Drain { container: container.to_owned(), timeout_ms };
        match self.call(&request, timeout + IO_TIMEOUT).await? {
            Answer::Drained { open } => Ok(open),
            other => Err(unexpected(other)),
        }
    }

    async fn call(&self, request: &Request, wait: Duration) -> Result<Answer, ProxyError> {
        let stream = self.connect().await?;
        exchange(stream, request, wait).await.map_err(|source| self.unreachable(source))
    }

    /// Connects, starting a proxy first when none answers and the daemon may start one.
    async fn connect(&self) -> Result<UnixStream, ProxyError> {
        let first = match UnixStream::connect(&self.socket).await {
            Ok(stream) => return Ok(stream),
            Err(e) => e,
        };
        let absent =
            matches!(first.kind(), io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused);
        match &self.start_with {
            _ if !absent => return Err(self.unreachable(first)),
            StartWith::Nothing => return Err(self.unreachable(first)),
            StartWith::Program(exe) => {
                start(exe, &self.data_dir).map_err(|e| self.unreachable(e))?
            }
            StartWith::Task => {
                let dir = self.data_dir.clone();
                tokio::spawn(async move {
                    if let Err(e) = super::process::run(&dir, std::future::pending()).await {
                        tracing::error!(error = %e, "the in-process port proxy stopped");
                    }
                });
            }
        }
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            match UnixStream::connect(&self.socket).await {
                Ok(stream) => return Ok(stream),
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(self.unreachable(e))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    fn unreachable(&self, source: io::Error) -> ProxyError {
        let hint = if self.start_with != StartWith::Nothing {
            ""
        } else {
            " (is fleet-agent-proxy.service running? `systemctl status fleet-agent-proxy`)"
        };
        ProxyError::Unreachable { socket: self.socket.clone(), source, hint }
    }
}

fn unexpected(answer: Answer) -> ProxyError {
    let message = match answer {
        Answer::Error { message } => message,
        other => format!("{other:?}"),
    };
    ProxyError::Protocol { message }
}

async fn exchange(mut stream: UnixStream, request: &Request, wait: Duration) -> io::Result<Answer> {
    let body = serde_json::to_vec(request).map_err(io::Error::other)?;
    let talk = async {
        stream.write_all(&body).await?;
        stream.shutdown().await?;
        let mut answer = Vec::new();
        (&mut stream).take(MAX_ANSWER_BYTES).read_to_end(&mut answer).await?;
        Ok::<_, io::Error>(answer)
    };
    let answer = tokio::time::timeout(wait, talk).await.map_err(|_| {
        io::Error::new(io::ErrorKind::TimedOut, format!("no answer within {wait:?}"))
    })??;
    serde_json::from_slice(&answer).map_err(|e| {
        io::Error::new(io::ErrorKind::InvalidData, format!("the answer is not valid: {e}"))
    })
}

/// Starts `fleet-agent proxy` for `data_dir` in a process group of its own, so a signal to the
/// daemon's group (Ctrl-C in a terminal, a supervisor killing the group) does not reach it. Its
/// log goes to `<data_dir>/proxy.log`, started afresh when it has grown past 1 MiB.
fn start(exe: &Path, data_dir: &Path) -> io::Result<()> {
    use std::os::unix::process::CommandExt;
    let log_path = data_dir.join("proxy.log");
    if std::fs::metadata(&log_path).is_ok_and(|m| m.len() > 1 << 20) {
        let _ = std::fs::rename(&log_path, data_dir.join("proxy.log.1"));
    }
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
    let mut child = Command::new(exe)
        .arg("proxy")
        .arg("--data-dir")
        .arg(data_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .process_group(0)
        .spawn()?;
    tracing::info!(pid = child.id(), exe = %exe.display(), "started the port proxy");
    // Reaped when it exits while the daemon still runs (no zombie); a proxy that finds another
    // one serving exits at once.
    std::thread::spawn(move || child.wait());
    Ok(())
}
