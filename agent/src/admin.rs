//! The daemon's admin socket (`<data_dir>/agent.sock`, mode 0600): how `fleet-agent apply`
//! hands a release to the running daemon, so a local release goes through the same loop,
//! state and port proxy as one from the server. The update lock socket is separate because it
//! is mounted into applications; this one changes what runs and stays root's.
//!
//! Protocol: the client sends one JSON [`Request`] and shuts down its write side; the daemon
//! answers with one JSON [`Answer`] when the update has finished (which may take minutes: the
//! health gates run first), then closes.

use std::io;
use std::path::{Path, PathBuf};

use fleet_proto::report::UpdateOutcome;
use fleet_proto::{ReleaseSpec, UnixMillis};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

/// Largest request accepted: releases are small, the protocol's own cap is 1 MiB.
const MAX_REQUEST_BYTES: u64 = 1 << 20;

/// The admin socket of the agent whose data directory is `data_dir`.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("agent.sock")
}

/// What a client asks the daemon.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Request {
    /// Apply a local release (as `fleet-agent apply`); `force` switches despite update locks.
    Apply {
        /// The release.
        release: ReleaseSpec,
        /// Ignore update locks.
        force: bool,
    },
    /// Install another agent version and switch to it on trial (as `fleet-agent self-update`);
    /// the daemon answers, then replaces itself with that version.
    SelfUpdate {
        /// The new binary (read by the daemon, which is root).
        file: PathBuf,
        /// Its version: the slot's name.
        version: String,
        /// Seconds the new version has to commit.
        deadline_secs: u64,
        /// Install it although it is not newer than the running version.
        allow_downgrade: bool,
    },
}

/// The daemon's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Answer {
    /// The update ran to an outcome (applied, rolled back or failed).
    Outcome(UpdateOutcome),
    /// An update lock defers the switch; the daemon finishes it when the lease ends.
    Deferred {
        /// The lock holder whose lease ends last.
        holder: String,
        /// When that lease ends.
        until: UnixMillis,
    },
    /// The release was refused before anything ran.
    Refused {
        /// Every problem, each naming its field.
        problems: Vec<String>,
    },
    /// The version is installed; the daemon now replaces itself with it, on trial.
    Relaunching {
        /// The version.
        version: String,
    },
    /// The daemon could not carry the request out.
    Error {
        /// Why.
        message: String,
    },
}

/// A request on its way into the daemon's loop, with the channel for its answer.
#[derive(Debug)]
pub struct Call {
    /// The request.
    pub request: Request,
    /// Where the answer goes.
    pub reply: oneshot::Sender<Answer>,
}

/// Serves the admin socket at `path` until `shutdown`; each request goes to `calls`.
pub async fn serve(
    path: PathBuf,
    calls: mpsc::Sender<Call>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), crate::lock::LockError> {
    let listener = crate::lock::bind(&path, 0o600).await?;
    tracing::debug!(socket = %path.display(), "admin socket listening");
    tokio::pin!(shutdown);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(handle(stream, calls.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "admin socket cannot accept a connection");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let _ = std::fs::remove_file(&path);
    // Answers already given still reach their clients (a self-update is answered right before
    // the daemon stops); clients waiting for an update's answer are told the daemon stopped.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    connections.shutdown().await;
    Ok(())
}

async fn handle(mut stream: UnixStream, calls: mpsc::Sender<Call>) {
    let mut body = Vec::new();
    let read = (&mut stream).take(MAX_REQUEST_BYTES + 1).read_to_end(&mut body).await;
    let answer = match read {
        Err(e) => Answer::Error { message: format!("cannot read the request: {e}") },
        Ok(_) if body.len() as u64 > MAX_REQUEST_BYTES => {
            Answer::Error { message: format!("request larger than {MAX_REQUEST_BYTES} bytes") }
        }
        Ok(_) => match serde_json::from_slice::<Request>(&body) {
            Err(e) => Answer::Error { message: format!("not a valid request: {e}") },
            Ok(request) => {
                let (reply, answer) = oneshot::channel();
                if calls.send(Call { request, reply }).await.is_err() {
                    Answer::Error { message: "the daemon is stopping".to_owned() }
                } else {
                    answer.await.unwrap_or(Answer::Error {
                        message: "the daemon stopped before answering".to_owned(),
                    })
                }
            }
        },
    };
    let bytes = serde_json::to_vec(&answer).unwrap_or_default();
    let _ = stream.write_all(&bytes).await;
    let _ = stream.shutdown().await;
}

/// Sends `request` to the daemon at `path` and waits for its answer. `Err` with kind
/// `NotFound` or `ConnectionRefused` means no daemon is running.
pub async fn call(path: &Path, request: &Request) -> io::Result<Answer> {
    let mut stream = UnixStream::connect(path).await?;
    let body = serde_json::to_vec(request).map_err(io::Error::other)?;
    stream.write_all(&body).await?;
    stream.shutdown().await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    serde_json::from_slice(&answer).map_err(|e| {
        io::Error::new(io::ErrorKind::InvalidData, format!("the daemon's answer is not valid: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use fleet_proto::samples;

    use super::*;

    #[tokio::test]
    async fn a_request_reaches_the_loop_and_its_answer_the_client() {
        let dir = tempfile::tempdir().unwrap();
        let path = socket_path(dir.path());
        let (tx, mut rx) = mpsc::channel(1);
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(serve(path.clone(), tx, async {
            let _ = stopped.await;
        }));
        // The "daemon loop": answers every apply with a refusal naming the release.
        tokio::spawn(async move {
            while let Some(call) = rx.recv().await {
                let Request::Apply { release, force } = call.request else { continue };
                let _ = call.reply.send(Answer::Refused {
                    problems: vec![format!("{} force={force}", release.id)],
                });
            }
        });
        let mut answer = Err(io::Error::other("not tried"));
        for _ in 0..50 {
            answer =
                call(&path, &Request::Apply { release: samples::release(), force: true }).await;
            if answer.is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        match answer.unwrap() {
            Answer::Refused { problems } => {
                assert_eq!(problems, [format!("{} force=true", samples::release().id)]);
            }
            other => panic!("{other:?}"),
        }
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "only root may change what runs");
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
        assert!(!path.exists(), "socket removed on shutdown");
        let err = call(&path, &Request::Apply { release: samples::release(), force: false })
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "no daemon: the caller applies itself");
    }
}
