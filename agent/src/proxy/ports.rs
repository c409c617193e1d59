//! The blue/green port engine: listeners on the host ports of start-first services, each TCP
//! connection forwarded to the container currently in force, so an update switches traffic
//! from the old container to the new one only once the new one is healthy, and without
//! refusing a single connection. It runs in the proxy process (see [`super`]), never in the
//! agent's daemon.
//!
//! Invariants:
//! * A connection is forwarded to the backend that was current when it was accepted, for its
//!   whole life; a switch affects only connections accepted after it.
//! * Each container's open connections are counted, so stopping an old container first waits
//!   for its connections to finish ([`PortProxy::drain`]), up to the stop grace period.
//! * Listeners exist only for routed services; [`PortProxy::unroute`] closes them.
//! * Bounded against clients from the network ([`Limits`]): each listener serves at most
//!   `max_connections` at once (past that, new clients wait in the listen backlog: no
//!   descriptor is spent on them), and a connection idle both ways for `idle` is closed, so
//!   parked connections cannot pile up to the cap. The unit's `LimitNOFILE` fits the caps.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{copy_bidirectional_with_sizes, AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;

use crate::plan::{Forward, Route, Routes};

/// How long connecting to a container's loopback port may take before the client's connection
/// is closed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Copy buffer per direction and connection. tokio's default (8 KiB) moved a bulk download at
/// 0.59x the speed of Docker's own loopback publish, 64 KiB at 0.81x (BENCHMARKS.md, "Data
/// plane"); it costs 128 KiB per open connection, allocated when the connection opens.
const COPY_BUFFER: usize = 64 << 10;

/// What one listener serves at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once per listener (each holds two descriptors).
    pub max_connections: usize,
    /// A connection with no bytes either way for this long is closed.
    pub idle: Duration,
}

impl Default for Limits {
    /// 4,096 connections per port (8,192 descriptors; the proxy unit's `LimitNOFILE=65536`
    /// holds seven such ports at their cap) and 10 minutes idle, longer than any HTTP
    /// keep-alive or WebSocket ping interval a robot's service would use.
    fn default() -> Limits {
        Limits { max_connections: 4096, idle: Duration::from_secs(600) }
    }
}

/// The agent's port proxy. Cheap to clone; clones share the listeners.
#[derive(Debug, Clone, Default)]
pub struct PortProxy {
    limits: Limits,
    inner: Arc<Mutex<Inner>>,
    /// Open connections per container name.
    open: Arc<Mutex<HashMap<String, usize>>>,
    /// Signalled whenever a connection ends (drains wait on it).
    closed: Arc<Notify>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Listeners by the host address they listen on.
    listeners: BTreeMap<SocketAddr, Listener>,
}

#[derive(Debug)]
struct Listener {
    service: String,
    /// Where new connections go: container name and its loopback address.
    backend: Arc<Mutex<(String, SocketAddr)>>,
    task: JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        // Stops accepting; connections already forwarded run in their own tasks and finish.
        self.task.abort();
    }
}

/// Why a switch failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {listen} for service {service}: {source}")]
pub struct SwitchError {
    /// The service.
    pub service: String,
    /// The host address.
    pub listen: SocketAddr,
    /// Why.
    #[source]
    pub source: io::Error,
}

impl PortProxy {
    /// A proxy with no routes.
    pub fn new() -> PortProxy {
        PortProxy::default()
    }

    /// A proxy with no routes and these limits.
    pub fn with_limits(limits: Limits) -> PortProxy {
        PortProxy { limits, ..PortProxy::default() }
    }

    /// The current routes by service, as the planner compares them.
    pub fn routes(&self) -> Routes {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let mut routes: Routes = BTreeMap::new();
        for (listen, l) in &inner.listeners {
            let (container, backend) =
                l.backend.lock().unwrap_or_else(PoisonError::into_inner).clone();
            let route = routes
                .entry(l.service.clone())
                .or_insert_with(|| Route { container, forwards: BTreeSet::new() });
            route.forwards.insert(Forward { listen: *listen, backend });
        }
        routes
    }

    /// Sends new connections on `service`'s host ports to `container`: listens on host ports
    /// not listened on yet, repoints the others, and closes listeners the service no longer has.
    /// All listeners are bound before any route changes, so a failure changes nothing.
    pub fn switch(
        &self,
        service: &str,
        container: &str,
        forwards: &BTreeSet<Forward>,
    ) -> Result<(), SwitchError> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let mut bound = Vec::new();
        for f in forwards {
            if inner.listeners.get(&f.listen).is_some_and(|l| l.service == service) {
                continue;
            }
            let listener = bind(f.listen).map_err(|source| SwitchError {
                service: service.to_owned(),
                listen: f.listen,
                source,
            })?;
            bound.push((f.listen, listener));
        }
        for (listen, listener) in bound {
            let backend =
                Arc::new(Mutex::new((container.to_owned(), SocketAddr::from(([127, 0, 0, 1], 0)))));
            let task = tokio::spawn(accept_loop(listener, backend.clone(), self.clone()));
            // Another service's listener on this address made the bind above fail: validation
            // refuses port clashes within a release, and the planner unroutes leaving services
            // before switching.
            inner.listeners.insert(listen, Listener { service: service.to_owned(), backend, task });
        }
        for f in forwards {
            if let Some(l) = inner.listeners.get(&f.listen) {
                *l.backend.lock().unwrap_or_else(PoisonError::into_inner) =
                    (container.to_owned(), f.backend);
            }
        }
        let keep: BTreeSet<SocketAddr> = forwards.iter().map(|f| f.listen).collect();
        inner.listeners.retain(|listen, l| l.service != service || keep.contains(listen));
        tracing::info!(service, container, ports = forwards.len(), "port proxy switched");
        Ok(())
    }

    /// Closes `service`'s listeners.
    pub fn unroute(&self, service: &str) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.listeners.retain(|_, l| l.service != service);
    }

    /// Closes every listener (the proxy stopping). Open connections finish in their tasks.
    pub fn close_all(&self) {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner).listeners.clear();
    }

    /// Connections open to `container` now.
    pub fn open_connections(&self, container: &str) -> usize {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(container)
            .copied()
            .unwrap_or(0)
    }

    /// Waits until no connection to `container` is open, or `timeout`. Returns how many were
    /// still open at the end.
    pub async fn drain(&self, container: &str, timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let closed = self.closed.notified();
            let open = self.open_connections(container);
            if open == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, closed).await.is_err() {
                let open = self.open_connections(container);
                if open > 0 {
                    tracing::info!(
                        container,
                        open,
                        "drain timed out; closing connections with the container"
                    );
                }
                return open;
            }
        }
    }

    fn connection_opened(&self, container: &str) {
        *self
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(container.to_owned())
            .or_default() += 1;
    }

    fn connection_closed(&self, container: &str) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(container) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(container);
            }
        }
        drop(open);
        self.closed.notify_waiters();
    }
}

/// Binds a listening socket now (so a port clash is the switch's error, not a task's).
fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // A restarted agent rebinds at once even with connections of its previous life in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

async fn accept_loop(
    listener: TcpListener,
    backend: Arc<Mutex<(String, SocketAddr)>>,
    proxy: PortProxy,
) {
    let slots = Arc::new(Semaphore::new(proxy.limits.max_connections));
    loop {
        // A slot first: at the cap, clients wait in the backlog instead of costing descriptors.
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let (client, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Usually out of file descriptors: back off rather than spin.
                tracing::warn!(error = %e, "port proxy cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (container, addr) = backend.lock().unwrap_or_else(PoisonError::into_inner).clone();
        // Counted before the task runs, so a drain that starts right after a switch sees it.
        proxy.connection_opened(&container);
        let proxy = proxy.clone();
        tokio::spawn(async move {
            forward(client, peer, &container, addr, proxy.limits.idle).await;
            proxy.connection_closed(&container);
            drop(slot);
        });
    }
}

async fn forward(
    mut client: TcpStream,
    peer: SocketAddr,
    container: &str,
    addr: SocketAddr,
    idle: Duration,
) {
    let _ = client.set_nodelay(true);
    let mut upstream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::warn!(container, %addr, %peer, error = %e, "port proxy cannot reach the container");
            return;
        }
        Err(_) => {
            tracing::warn!(container, %addr, %peer, "port proxy timed out reaching the container");
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    let started = tokio::time::Instant::now();
    let last = AtomicU64::new(0);
    let (mut a, mut b) = (
        Watched { io: &mut client, last: &last, started },
        Watched { io: &mut upstream, last: &last, started },
    );
    let copy = copy_bidirectional_with_sizes(&mut a, &mut b, COPY_BUFFER, COPY_BUFFER);
    tokio::pin!(copy);
    let check = (idle / 4).max(Duration::from_millis(10));
    loop {
        tokio::select! {
            done = &mut copy => {
                if let Err(e) = done {
                    tracing::debug!(container, %peer, error = %e, "proxied connection ended with an error");
                }
                return;
            }
            () = tokio::time::sleep(check) => {
                let quiet = started.elapsed().saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
                if quiet >= idle {
                    tracing::debug!(container, %peer, ?idle, "closing a connection idle both ways");
                    return;
                }
            }
        }
    }
}

/// A stream that notes when bytes last arrived on it (milliseconds after `started`), so the
/// forwarder can tell a connection idle both ways from a long one that streams.
struct Watched<'a> {
    io: &'a mut TcpStream,
    last: &'a AtomicU64,
    started: tokio::time::Instant,
}

impl AsyncRead for Watched<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut *this.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let at = u64::try_from(this.started.elapsed().as_millis()).unwrap_or(u64::MAX);
            this.last.store(at, Ordering::Relaxed);
        }
        polled
    }
}

impl AsyncWrite for Watched<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().io).poll_shutdown(cx)
    }
}

/// Test backends the proxy's tests forward to (here and in `process`).
#[cfg(test)]
pub(super) mod testing {
    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A backend answering each connection with its name, then closing.
    pub(crate) async fn backend(name: &'static str) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1];
                    // Waits for one byte, so a test can hold a connection open.
                    let _ = s.read(&mut buf).await;
                    let _ = s.write_all(name.as_bytes()).await;
                });
            }
        });
        addr
    }

    /// A loopback address nothing listens on right now.
    pub(crate) fn free_addr() -> SocketAddr {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::testing::{backend, free_addr};
    use super::*;

    async fn ask(addr: SocketAddr) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"?").await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    fn fwd(listen: SocketAddr, backend: SocketAddr) -> BTreeSet<Forward> {
        BTreeSet::from([Forward { listen, backend }])
    }

    #[tokio::test]
    async fn switch_moves_new_connections_and_keeps_open_ones_on_the_old_backend() {
        let (blue, green) = (backend("blue").await, backend("green").await);
        let listen = free_addr();
        let proxy = PortProxy::new();
        proxy.switch("web", "c-blue", &fwd(listen, blue)).unwrap();
        assert_eq!(ask(listen).await, "blue");

        // A connection opened before the switch stays with blue.
        let mut held = TcpStream::connect(listen).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(proxy.open_connections("c-blue"), 1);
        proxy.switch("web", "c-green", &fwd(listen, green)).unwrap();
        assert_eq!(ask(listen).await, "green");
        assert_eq!(proxy.routes()["web"].container, "c-green");

        let drained = tokio::spawn({
            let proxy = proxy.clone();
            async move { proxy.drain("c-blue", Duration::from_secs(5)).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!drained.is_finished(), "drain must wait for the open connection");
        held.write_all(b"?").await.unwrap();
        let mut out = String::new();
        held.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "blue");
        drop(held);
        assert_eq!(drained.await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_listener_serves_at_most_its_cap_and_closes_connections_idle_both_ways() {
        let blue = backend("blue").await;
        let listen = free_addr();
        let limits = Limits { max_connections: 2, idle: Duration::from_millis(300) };
        let proxy = PortProxy::with_limits(limits);
        proxy.switch("web", "c-blue", &fwd(listen, blue)).unwrap();
        // Two parked connections take both slots; a third waits in the backlog, unserved.
        let _one = TcpStream::connect(listen).await.unwrap();
        let mut two = TcpStream::connect(listen).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(proxy.open_connections("c-blue"), 2);
        let third = tokio::spawn(ask(listen));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!third.is_finished(), "the third client waits while the cap is reached");
        assert_eq!(proxy.open_connections("c-blue"), 2);
        // Idle both ways past 300 ms: the proxy closes them, the third is served.
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(5), third).await.unwrap().unwrap(),
            "blue"
        );
        let mut out = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(2), two.read_to_end(&mut out)).await;
        assert!(closed.is_ok(), "an idle connection is closed by the proxy");
        // The count drops as each forwarding task ends.
        for _ in 0..100 {
            if proxy.open_connections("c-blue") == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(proxy.open_connections("c-blue"), 0);
    }

    #[tokio::test]
    async fn drain_gives_up_after_its_timeout() {
        let blue = backend("blue").await;
        let listen = free_addr();
        let proxy = PortProxy::new();
        proxy.switch("web", "c-blue", &fwd(listen, blue)).unwrap();
        let _held = TcpStream::connect(listen).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(proxy.drain("c-blue", Duration::from_millis(100)).await, 1);
    }

    #[tokio::test]
    async fn unroute_closes_the_port_and_a_taken_port_fails_the_switch_without_changes() {
        let blue = backend("blue").await;
        let listen = free_addr();
        let proxy = PortProxy::new();
        proxy.switch("web", "c-blue", &fwd(listen, blue)).unwrap();
        proxy.unroute("web");
        assert!(proxy.routes().is_empty());
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(TcpStream::connect(listen).await.is_err(), "port must be closed");

        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let err =
            proxy.switch("web", "c-blue", &fwd(taken.local_addr().unwrap(), blue)).unwrap_err();
        assert_eq!(err.service, "web");
        assert!(proxy.routes().is_empty());
    }
}
