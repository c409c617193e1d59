//! `fleet-agent proxy`: the process that holds the host ports of start-first services (see
//! [`super`] for why it is a process of its own). One loop: control connections, a check that
//! its socket is still its own, and the stop signal.

use std::future::Future;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fleet_proto::UnixMillis;
use nix::fcntl::{Flock, FlockArg};
use tokio::task::JoinSet;

use super::control::{handle, socket_path};
use super::ports::PortProxy;
use crate::plan::Routes;

/// How often the proxy checks that its socket is still its own.
const ORPHAN_CHECK: Duration = Duration::from_secs(2);

/// Why the proxy could not run.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// A file of the proxy could not be made or read.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The control socket cannot be bound.
    #[error(transparent)]
    Socket(#[from] crate::lock::LockError),
}

/// How the proxy ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Stopped by the shutdown signal.
    Stopped,
    /// Another proxy serves the data directory already; this one did nothing.
    AlreadyServed,
    /// Its socket was removed or replaced: the data directory is gone or another proxy took
    /// over.
    Orphaned,
}

/// The table saved after every change and restored at start.
pub fn routes_path(data_dir: &Path) -> PathBuf {
    data_dir.join("proxy-routes.json")
}

/// Raises the soft limit on open descriptors to the hard one: each proxied connection holds
/// two, and the listeners' caps ([`super::ports::Limits`]) are sized for the unit's
/// `LimitNOFILE`; started by the daemon without systemd, the soft limit is often 1,024.
fn raise_descriptor_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(soft, hard, error = %e, "cannot raise the open-file limit");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the open-file limit"),
    }
}

/// Runs the proxy for `data_dir` until `shutdown`.
pub async fn run(
    data_dir: &Path,
    shutdown: impl Future<Output = ()>,
) -> Result<Ended, ProcessError> {
    let io = |action, path: &Path| {
        let path = path.to_path_buf();
        move |source| ProcessError::Io { action, path, source }
    };
    std::fs::create_dir_all(data_dir).map_err(io("create", data_dir))?;
    raise_descriptor_limit();
    let lock_path = data_dir.join("proxy.lock");
    let lock_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io("open", &lock_path))?;
    let _lock = match Flock::lock(lock_file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
            tracing::info!(dir = %data_dir.display(), "another port proxy serves this data directory");
            return Ok(Ended::AlreadyServed);
        }
        Err((_, e)) => return Err(io("lock", &lock_path)(io::Error::from(e))),
    };
    let since = UnixMillis::now();
    let proxy = PortProxy::new();
    let saved = routes_path(data_dir);
    restore(&proxy, &saved);
    let socket = socket_path(data_dir);
    let listener = crate::lock::bind(&socket, 0o600).await?;
    let identity = file_identity(&socket).map_err(io("inspect", &socket))?;
    tracing::info!(
        socket = %socket.display(),
        routes = proxy.routes().len(),
        version = crate::AGENT_VERSION,
        "port proxy serving"
    );
    let changed: Arc<dyn Fn(&PortProxy) + Send + Sync> =
        Arc::new(move |p: &PortProxy| save(&saved, &p.routes()));
    tokio::pin!(shutdown);
    let mut connections = JoinSet::new();
    let mut check = tokio::time::interval(ORPHAN_CHECK);
    let ended = loop {
        tokio::select! {
            () = &mut shutdown => break Ended::Stopped,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let (proxy, changed) = (proxy.clone(), Arc::clone(&changed));
                    connections.spawn(async move { handle(stream, &proxy, since, &*changed).await });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "port proxy control socket cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = check.tick() => {
                if file_identity(&socket).ok() != Some(identity) {
                    tracing::warn!(socket = %socket.display(), "the control socket was removed or replaced; the port proxy stops");
                    break Ended::Orphaned;
                }
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    };
    if ended == Ended::Stopped && file_identity(&socket).ok() == Some(identity) {
        let _ = std::fs::remove_file(&socket);
    }
    connections.shutdown().await;
    // Listener tasks hold the proxy, so they end only when told (or with the process); the
    // saved table stays, for the next proxy to serve.
    proxy.close_all();
    tracing::info!(?ended, "port proxy stopped");
    Ok(ended)
}

fn file_identity(path: &Path) -> io::Result<(u64, u64)> {
    let meta = std::fs::symlink_metadata(path)?;
    Ok((meta.dev(), meta.ino()))
}

/// Listens again on the saved table. A port that cannot be taken now is logged and left to
/// the daemon, which switches it again on its next converge.
fn restore(proxy: &PortProxy, saved: &Path) {
    let text = match std::fs::read(saved) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return,
        Err(e) => {
            tracing::warn!(file = %saved.display(), error = %e, "cannot read the saved proxy routes; starting empty");
            return;
        }
    };
    let routes: Routes = match serde_json::from_slice(&text) {
        Ok(routes) => routes,
        Err(e) => {
            tracing::warn!(file = %saved.display(), error = %e, "saved proxy routes unreadable; starting empty");
            return;
        }
    };
    for (service, route) in routes {
        if let Err(e) = proxy.switch(&service, &route.container, &route.forwards) {
            tracing::warn!(error = %e, "cannot restore a saved route; the agent switches it again");
        }
    }
}

/// Saves the table: written aside, synced, renamed over the old one, so a crash leaves the old
/// table or the new one.
fn save(path: &Path, routes: &Routes) {
    let tmp = path.with_extension("json.tmp");
    let write = || -> io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&serde_json::to_vec_pretty(routes).map_err(io::Error::other)?)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    if let Err(e) = write() {
        tracing::warn!(file = %path.display(), error = %e, "cannot save the proxy routes; a restarted proxy waits for the agent to switch them again");
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;
    use crate::plan::Forward;
    use crate::proxy::control::{ProxyClient, StartWith};
    use crate::proxy::ports::testing::{backend, free_addr};

    async fn ask(addr: SocketAddr) -> io::Result<String> {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(b"?").await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok(out)
    }

    /// A proxy process in a task, stopped by the returned sender.
    fn spawn_proxy(
        dir: &Path,
    ) -> (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<Result<Ended, ProcessError>>)
    {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let dir = dir.to_path_buf();
        let task = tokio::spawn(async move {
            run(&dir, async {
                let _ = stopped.await;
            })
            .await
        });
        (stop, task)
    }

    async fn ready(client: &ProxyClient) {
        for _ in 0..100 {
            if client.status_if_running().await.is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the proxy never answered");
    }

    #[tokio::test]
    async fn the_table_survives_a_restart_of_the_proxy_and_a_second_proxy_steps_aside() {
        let dir = tempfile::tempdir().unwrap();
        let client = ProxyClient::new(dir.path(), StartWith::Nothing);
        let (blue, green) = (backend("blue").await, backend("green").await);
        let listen = free_addr();
        let (stop, task) = spawn_proxy(dir.path());
        ready(&client).await;

        // A second proxy for the same directory does nothing and says so.
        let (_stop2, second) = spawn_proxy(dir.path());
        assert_eq!(second.await.unwrap().unwrap(), Ended::AlreadyServed);

        let fwd = BTreeSet::from([Forward { listen, backend: blue }]);
        client.switch("web", "c-blue", &fwd).await.unwrap();
        assert_eq!(ask(listen).await.unwrap(), "blue");
        let status = client.status().await.unwrap();
        assert_eq!(status.routes.len(), 1);
        assert_eq!(status.routes[0].container, "c-blue");
        assert_eq!(status.pid, std::process::id());

        // Stopped and started again: the saved table is served without any client.
        stop.send(()).unwrap();
        assert_eq!(task.await.unwrap().unwrap(), Ended::Stopped);
        assert!(ask(listen).await.is_err(), "stopped: the port is closed");
        let (stop, task) = spawn_proxy(dir.path());
        ready(&client).await;
        assert_eq!(ask(listen).await.unwrap(), "blue");
        assert_eq!(client.routes().await.unwrap()["web"].container, "c-blue");

        // Switch, drain, unroute through the socket.
        let fwd = BTreeSet::from([Forward { listen, backend: green }]);
        client.switch("web", "c-green", &fwd).await.unwrap();
        assert_eq!(ask(listen).await.unwrap(), "green");
        assert_eq!(client.drain("c-blue", Duration::from_secs(1)).await.unwrap(), 0);
        client.unroute("web").await.unwrap();
        assert!(client.routes().await.unwrap().is_empty());
        stop.send(()).unwrap();
        task.await.unwrap().unwrap();
        let saved: Routes =
            serde_json::from_slice(&std::fs::read(routes_path(dir.path())).unwrap()).unwrap();
        assert!(saved.is_empty(), "the unroute was saved: {saved:?}");
    }

    #[tokio::test]
    async fn a_taken_port_is_refused_by_name_and_the_proxy_leaves_when_its_socket_goes() {
        let dir = tempfile::tempdir().unwrap();
        let client = ProxyClient::new(dir.path(), StartWith::Nothing);
        let (_stop, task) = spawn_proxy(dir.path());
        ready(&client).await;
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let listen = taken.local_addr().unwrap();
        let fwd = BTreeSet::from([Forward { listen, backend: free_addr() }]);
        match client.switch("web", "c", &fwd).await {
            Err(crate::proxy::ProxyError::Refused { service, listen: l, .. }) => {
                assert_eq!((service.as_str(), l), ("web", listen));
            }
            other => panic!("{other:?}"),
        }

        std::fs::remove_file(socket_path(dir.path())).unwrap();
        let ended = tokio::time::timeout(ORPHAN_CHECK * 3, task).await.unwrap();
        assert_eq!(ended.unwrap().unwrap(), Ended::Orphaned);
    }

    #[tokio::test]
    async fn an_oversized_or_garbled_request_is_refused_and_the_proxy_serves_on() {
        let dir = tempfile::tempdir().unwrap();
        let client = ProxyClient::new(dir.path(), StartWith::Nothing);
        let (_stop, _task) = spawn_proxy(dir.path());
        ready(&client).await;
        let socket = socket_path(dir.path());
        for (request, must_answer) in
            [(vec![b'{'; 200 << 10], false), (b"{\"switch\": 7}".to_vec(), true)]
        {
            let mut s = tokio::net::UnixStream::connect(&socket).await.unwrap();
            // Over the limit the proxy answers and closes while the client still writes: the
            // client may see a reset instead of the answer. Either way nothing changes.
            let _ = s.write_all(&request).await;
            let _ = s.shutdown().await;
            let mut answer = String::new();
            let read = s.read_to_string(&mut answer).await;
            if must_answer || read.is_ok() {
                assert!(answer.contains("error"), "{answer}");
            }
        }
        assert!(client.status().await.unwrap().routes.is_empty(), "still serving, unchanged");
    }

    #[tokio::test]
    async fn without_a_proxy_and_without_permission_to_start_one_the_error_says_where() {
        let dir = tempfile::tempdir().unwrap();
        let client = ProxyClient::new(dir.path(), StartWith::Nothing);
        let err = client.routes().await.unwrap_err();
        let text = err.to_string();
        assert!(text.contains("proxy.sock") && text.contains("fleet-agent-proxy"), "{text}");
    }
}
