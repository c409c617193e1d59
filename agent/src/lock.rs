//! Update locks: applications say "do not switch my software now", as leases that run out.
//!
//! A robot mid-mission must not have its containers replaced under it. An application that must
//! not be interrupted holds an **update lock**; while any lock is in force the agent may download
//! a new release but does not switch to it, and reports `deferred: locked by <holder> until
//! <time>`. Operators can force an update past locks; that decision lives in the reconciler.
//!
//! # Lease model
//!
//! A lock is a **lease**: a holder name and an end time (`until`, Unix milliseconds). The lease is
//! in force while `now < until` and not from `until` on. Holding a lock for longer means renewing
//! it before it ends; an application that crashes stops renewing, and its lock lapses on its own.
//! TTLs are limited to [`MIN_TTL`]`..=`[`MAX_TTL`] (1 s to 24 h).
//!
//! **Invariant: a lock never outlives its lease; an expired lock never defers an update.** Every
//! lease, however it was written, ends at most [`MAX_TTL`] after its file was last written.
//!
//! # Files
//!
//! Each lease is one file, `<dir>/<holder>.lock`, so the lock directory can be mounted into
//! opted-in containers and an application can take a lock without speaking to the agent at all.
//! Holder names are 1 to 64 characters of `[A-Za-z0-9._-]` starting with a letter or digit: they
//! become file names, so they can never contain `/` or be `..`.
//!
//! A `.lock` file may contain:
//! * the JSON the agent writes, `{"holder":"navigation","until":1767225600000}`: the lease ends at
//!   `until` (a past `until` means expired). Only `until` is read; the holder is the file name.
//! * anything else (an empty file, `touch`, text, JSON of another shape): the lease lasts the
//!   default TTL from the file's modification time, so an application that keeps touching the
//!   file keeps its lock and one that crashed loses it.
//!
//! Files not ending in `.lock` are ignored (the agent's own temporary files among them). The
//! agent writes lock files atomically (temporary file, then rename), so a reader never sees half
//! a lease. Expired files are left in place: deleting one could race with an application that is
//! renewing it at that moment, and a stale file costs nothing since it no longer counts.
//!
//! # Socket API
//!
//! [`UpdateLocks::serve`] answers HTTP/1.1 on a Unix socket (mode 0660: the socket's group is who
//! may take locks), one request per connection:
//!
//! | request | answer |
//! | --- | --- |
//! | `POST /v1/locks/{holder}` or `POST /v1/locks/{holder}?ttl=SECONDS` | 200, the lease as JSON |
//! | `DELETE /v1/locks/{holder}` | 204 (also when there was no lease) |
//! | `GET /v1/locks` | 200, JSON array of leases in force, the one ending last first |
//!
//! Malformed requests get 400 with `{"error": "..."}` saying what is wrong, unknown paths 404,
//! a wrong method 405, a request that does not arrive within 5 s 408, one over 8 KiB 431, and a
//! lock directory that cannot be read or written 500.
//!
//! ```text
//! curl --unix-socket /run/fleet-agent/locks.sock -X POST \
//!     'http://localhost/v1/locks/navigation?ttl=600'
//! {"holder":"navigation","until":1767225600000}
//! curl --unix-socket /run/fleet-agent/locks.sock -X DELETE http://localhost/v1/locks/navigation
//! ```

use std::future::Future;
use std::io::{self, Read as _};
use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use crate::http1::{parse_request, read_head, ReadError, Request, Response};
use fleet_proto::UnixMillis;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinSet;

/// The shortest lease that can be taken.
pub const MIN_TTL: Duration = Duration::from_secs(1);
/// The longest lease that can be taken, and the longest any lock file counts after it was written.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// Longest holder name, in bytes (all allowed characters are ASCII).
const MAX_HOLDER_LEN: usize = 64;
/// Suffix of lock files; everything else in the directory is ignored.
const LOCK_SUFFIX: &str = ".lock";
/// How much of a lock file is read: a lease is ~100 bytes, anything bigger is not the agent's
/// JSON and counts from its modification time without being read in full.
const MAX_LOCK_FILE_BYTES: u64 = 4096;
/// Time a client gets to send its request (and to take the answer).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request head accepted; the API has no request bodies.
const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// After answering, how long and how much unread input is drained before closing.
const LINGER_TIMEOUT: Duration = Duration::from_secs(1);
const LINGER_MAX_BYTES: usize = 64 * 1024;

/// One lease in force: who holds it and until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The holder's name (also the lock file's name without `.lock`).
    pub holder: String,
    /// The lease is in force before this instant and not from it on.
    pub until: UnixMillis,
}

/// Errors of update locks.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// A holder name that could not be a safe file name.
    #[error(
        "invalid lock holder {holder:?}: {problem}; a holder name is 1 to 64 characters of \
         A-Z, a-z, 0-9, '.', '_' and '-', starting with a letter or digit"
    )]
    InvalidHolder {
        /// The name as given.
        holder: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// A lease length outside [`MIN_TTL`]`..=`[`MAX_TTL`].
    #[error("lock TTL of {ttl:?} is out of range: it must be from {MIN_TTL:?} to {MAX_TTL:?}")]
    TtlOutOfRange {
        /// The TTL asked for.
        ttl: Duration,
    },
    /// A file system or socket operation failed.
    #[error("cannot {action} {}", path.display())]
    Io {
        /// What was being done, e.g. "write lock file".
        action: &'static str,
        /// The file, directory or socket.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// A lease could not be turned into JSON.
    #[error("cannot encode the lease of {holder:?}")]
    Encode {
        /// Whose lease.
        holder: String,
        /// What `serde_json` said.
        #[source]
        source: serde_json::Error,
    },
    /// Something already answers on the socket path (another agent, most likely).
    #[error("{} is in use by another process; is another fleet-agent running?", path.display())]
    SocketInUse {
        /// The socket path.
        path: PathBuf,
    },
    /// The socket path holds something that is not a socket, which is not ours to delete.
    #[error("{} exists and is not a socket; refusing to replace it", path.display())]
    NotASocket {
        /// The socket path.
        path: PathBuf,
    },
}

impl LockError {
    fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> LockError + 'a {
        move |source| LockError::Io { action, path: path.to_path_buf(), source }
    }
}

/// The update locks in one directory.
#[derive(Debug, Clone)]
pub struct UpdateLocks {
    dir: PathBuf,
    default_ttl: Duration,
}

/// The part of a lock file's JSON the agent reads; other fields (the holder) are ignored.
#[derive(Deserialize)]
struct LockFileJson {
    until: UnixMillis,
}

/// Makes temporary file names unique when the same holder is renewed concurrently.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl UpdateLocks {
    /// Locks kept in `dir` (created on first acquire). `default_ttl` is the lease length when none
    /// is asked for and for lock files without a JSON `until`; it is clamped to
    /// [`MIN_TTL`]`..=`[`MAX_TTL`] so the invariant holds whatever the configuration says.
    pub fn new(dir: impl Into<PathBuf>, default_ttl: Duration) -> UpdateLocks {
        let clamped = default_ttl.clamp(MIN_TTL, MAX_TTL);
        if clamped != default_ttl {
            tracing::warn!(
                asked = ?default_ttl, using = ?clamped,
                "default update lock TTL out of range; clamped"
            );
        }
        UpdateLocks { dir: dir.into(), default_ttl: clamped }
    }

    /// The lock directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Takes or renews `holder`'s lease for `ttl` (`default_ttl` when `None`), counted from
    /// `now`. Renewing sets a new end, which may be earlier than the old one: the holder knows
    /// best how long it still needs. Writes `<dir>/<holder>.lock` atomically (temporary file,
    /// then rename) with the JSON `{"holder","until"}`.
    pub fn acquire(
        &self,
        holder: &str,
        ttl: Option<Duration>,
        now: UnixMillis,
    ) -> Result<Lease, LockError> {
        validate_holder(holder)?;
        let ttl = ttl.unwrap_or(self.default_ttl);
        if !(MIN_TTL..=MAX_TTL).contains(&ttl) {
            return Err(LockError::TtlOutOfRange { ttl });
        }
        let lease = Lease { holder: holder.to_owned(), until: now.saturating_add(ttl) };
        let json = serde_json::to_vec(&lease)
            .map_err(|source| LockError::Encode { holder: holder.to_owned(), source })?;

        std::fs::create_dir_all(&self.dir)
            .map_err(LockError::io("create lock directory", &self.dir))?;
        // The temporary name does not end in `.lock`, so a concurrent `active` never reads it.
        // The directory is shared with containers: the name is unpredictable and the file is
        // created new (O_EXCL, never through a link a container planted), and the rename
        // replaces whatever sits at the lock's name without following it.
        let temp = self.dir.join(format!(
            ".{holder}.{}.{:016x}.tmp",
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed),
            fastrand::u64(..)
        ));
        let path = self.lock_path(holder);
        // No fsync: a file torn by a power cut reads as the mtime form, which is still a lock,
        // and locks are short-lived; syncing would only wear the robot's flash.
        let written = write_new(&temp, &json)
            .map_err(LockError::io("write temporary lock file", &temp))
            .and_then(|()| {
                std::fs::rename(&temp, &path).map_err(LockError::io("write lock file", &path))
            });
        if written.is_err() {
            // Best effort: a leftover temporary file is ignored by `active` anyway.
            let _ = std::fs::remove_file(&temp);
        }
        written.map(|()| lease)
    }

    /// Releases `holder`'s lease; releasing one that does not exist is not an error.
    pub fn release(&self, holder: &str) -> Result<(), LockError> {
        validate_holder(holder)?;
        let path = self.lock_path(holder);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(LockError::io("remove lock file", &path)(e))
            }
            _ => Ok(()),
        }
    }

    /// Leases in force at `now`, the one that ends last first (ties by holder name). Expired lock
    /// files are skipped and left in place; a missing directory means no locks.
    ///
    /// Any `*.lock` file counts, even one whose name is not a valid holder name: an application
    /// that wrote it meant to hold a lock, and honouring it is the safe side.
    pub fn active(&self, now: UnixMillis) -> Result<Vec<Lease>, LockError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(LockError::io("read lock directory", &self.dir)(e)),
        };
        let mut leases = Vec::new();
        for entry in entries {
            let entry = entry.map_err(LockError::io("read lock directory", &self.dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(stem) = name.strip_suffix(LOCK_SUFFIX) else { continue };
            let holder = if stem.is_empty() { name.clone() } else { stem.to_owned() };
            if let Some(until) = self.lease_end(&entry.path())? {
                if now < until {
                    leases.push(Lease { holder, until });
                }
            }
        }
        leases.sort_by(|a, b| b.until.cmp(&a.until).then_with(|| a.holder.cmp(&b.holder)));
        Ok(leases)
    }

    /// When the lease in the lock file at `path` ends, or `None` if the file is gone (released
    /// while we were listing) or is not a regular file.
    fn lease_end(&self, path: &Path) -> Result<Option<UnixMillis>, LockError> {
        // Opened without following a link and without blocking (a container may have swapped
        // the file for a link or a FIFO), then judged by what was opened.
        let file = match open_no_follow(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            // A symbolic link (ELOOP) or something else that is not a lock file.
            Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => return Ok(None),
            Err(e) => return Err(LockError::io("open lock file", path)(e)),
        };
        let meta = file.metadata().map_err(LockError::io("read lock file metadata of", path))?;
        if !meta.is_file() {
            return Ok(None);
        }
        let written = meta.modified().map_err(LockError::io("read modification time of", path))?;
        let written = unix_millis(written);
        // However the file got its content, it cannot count for longer than MAX_TTL after it
        // was last written: a crashed application's `until` in the year 3000 must still lapse.
        let latest = written.saturating_add(MAX_TTL);
        let until = match read_json_until(file) {
            Some(until) => until.min(latest),
            None => written.saturating_add(self.default_ttl),
        };
        Ok(Some(until))
    }

    fn lock_path(&self, holder: &str) -> PathBuf {
        self.dir.join(format!("{holder}{LOCK_SUFFIX}"))
    }

    /// Serves the socket API (see the module documentation) on a Unix socket at `path` until
    /// `shutdown` completes, then waits for requests in progress and removes the socket.
    ///
    /// A stale socket left by a previous run is replaced; a socket something still answers on,
    /// or a path that is not a socket, is an error. The socket gets mode 0660.
    pub async fn serve(
        self,
        path: PathBuf,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), LockError> {
        self.serve_with(path, shutdown, REQUEST_TIMEOUT).await
    }

    /// [`Self::serve`] with the request timeout as a parameter, so tests need not wait 5 s.
    async fn serve_with(
        self,
        path: PathBuf,
        shutdown: impl Future<Output = ()>,
        request_timeout: Duration,
    ) -> Result<(), LockError> {
        let listener = bind(&path, 0o660).await?;
        tracing::info!(
            socket = %path.display(), dir = %self.dir.display(),
            "update lock API listening"
        );
        let mut connections = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let locks = self.clone();
                        connections.spawn(async move {
                            handle_connection(&locks, stream, request_timeout).await;
                        });
                    }
                    Err(e) => {
                        // Usually out of file descriptors: back off instead of spinning, and
                        // keep serving, since the condition is transient.
                        tracing::warn!(error = %e, "update lock API cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(done) = connections.join_next(), if !connections.is_empty() => {
                    log_task_end(done);
                }
            }
        }
        drop(listener);
        if let Err(e) = std::fs::remove_file(&path) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(error = %e, socket = %path.display(), "cannot remove socket");
            }
        }
        // Each connection is bounded by its timeouts, so this wait is too.
        while let Some(done) = connections.join_next().await {
            log_task_end(done);
        }
        tracing::info!(socket = %path.display(), "update lock API stopped");
        Ok(())
    }
}

/// Refuses names that are not safe, unsurprising file names.
fn validate_holder(holder: &str) -> Result<(), LockError> {
    let problem = if holder.is_empty() {
        Some("it is empty")
    } else if holder.len() > MAX_HOLDER_LEN {
        Some("it is longer than 64 characters")
    } else if !holder.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
        Some("it contains a character that is not allowed")
    } else if !holder.as_bytes()[0].is_ascii_alphanumeric() {
        Some("it does not start with a letter or digit")
    } else {
        None
    };
    match problem {
        Some(problem) => Err(LockError::InvalidHolder { holder: holder.to_owned(), problem }),
        None => Ok(()),
    }
}

/// Creates `path` new (never through an existing file or link) with `bytes`.
fn write_new(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)?;
    file.write_all(bytes)
}

/// Opens `path` for reading without following a symbolic link and without blocking on a FIFO.
fn open_no_follow(path: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
}

/// The `until` of a lock file holding the agent's JSON; `None` for any other content, including
/// a file that cannot be read (it still counts, from its modification time).
fn read_json_until(file: std::fs::File) -> Option<UnixMillis> {
    let mut content = Vec::new();
    file.take(MAX_LOCK_FILE_BYTES + 1).read_to_end(&mut content).ok()?;
    if content.len() as u64 > MAX_LOCK_FILE_BYTES {
        return None;
    }
    serde_json::from_slice::<LockFileJson>(&content).ok().map(|json| json.until)
}

fn unix_millis(t: SystemTime) -> UnixMillis {
    let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    UnixMillis(u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
}

/// Binds a listening Unix socket with permissions `mode`, replacing a stale one (a socket
/// nothing answers on). The agent's admin socket is bound the same way.
pub(crate) async fn bind(path: &Path, mode: u32) -> Result<UnixListener, LockError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).await.is_ok() {
                return Err(LockError::SocketInUse { path: path.to_path_buf() });
            }
            std::fs::remove_file(path).map_err(LockError::io("remove stale socket", path))?;
        }
        Ok(_) => return Err(LockError::NotASocket { path: path.to_path_buf() }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(LockError::io("inspect socket path", path)(e)),
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(LockError::io("create socket directory", parent))?;
    }
    let listener = UnixListener::bind(path).map_err(LockError::io("listen on", path))?;
    // Connecting needs write permission: 0660 lets the socket's group in, 0600 only the owner.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(LockError::io("set permissions of", path))?;
    Ok(listener)
}

fn log_task_end(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        tracing::error!(error = %e, "update lock API connection task failed");
    }
}

/// One connection: read one request, answer, close. Never fails: problems are answered or logged.
async fn handle_connection(locks: &UpdateLocks, mut stream: UnixStream, timeout: Duration) {
    let peer_pid = stream.peer_cred().ok().and_then(|cred| cred.pid());
    let read = tokio::time::timeout(timeout, read_head(&mut stream, MAX_REQUEST_BYTES)).await;
    let response = match read {
        Err(_elapsed) => Response::error(408, format!("request not received within {timeout:?}")),
        Ok(Err(ReadError::Closed)) => return,
        Ok(Err(ReadError::Reply(response))) => response,
        Ok(Ok((head, _body))) => match parse_request(&head) {
            Ok(request) => {
                tracing::debug!(
                    method = %request.method, path = %request.path, ?peer_pid,
                    "update lock API request"
                );
                respond(locks, &request, peer_pid).await
            }
            Err(response) => response,
        },
    };
    let bytes = response.to_bytes();
    let written = tokio::time::timeout(timeout, async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await
    })
    .await;
    match written {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "update lock API client went away"),
        Err(_) => tracing::debug!("update lock API client did not take its answer in time"),
    }
    // Lingering close: on Linux, closing a Unix socket with unread input (a request body, the
    // rest of an oversized request) ends the client's read with ECONNRESET instead of a clean
    // end of stream. Drain a bounded amount until the client closes its side.
    let mut sink = [0u8; 1024];
    let drain = async {
        let mut left = LINGER_MAX_BYTES;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(timeout.min(LINGER_TIMEOUT), drain).await;
}

/// Routes a request and carries it out.
async fn respond(locks: &UpdateLocks, request: &Request, peer_pid: Option<i32>) -> Response {
    let method = request.method.as_str();
    if request.path == "/v1/locks" {
        if method != "GET" {
            return Response::method_not_allowed(method, "GET");
        }
        if let Some(query) = &request.query {
            return Response::error(400, format!("GET /v1/locks takes no query, got {query:?}"));
        }
        let locks = locks.clone();
        return match run_blocking(move || locks.active(UnixMillis::now())).await {
            Ok(leases) => Response::serialized(200, &leases),
            Err(response) => response,
        };
    }
    let Some(holder) = request.path.strip_prefix("/v1/locks/").filter(|h| !h.contains('/')) else {
        return Response::error(404, format!("no such resource {:?}", request.path));
    };
    let holder = holder.to_owned();
    match method {
        "POST" => {
            let ttl = match parse_ttl(request.query.as_deref()) {
                Ok(ttl) => ttl,
                Err(response) => return response,
            };
            let locks = locks.clone();
            let acquired =
                run_blocking(move || locks.acquire(&holder, ttl, UnixMillis::now())).await;
            match acquired {
                Ok(lease) => {
                    tracing::info!(
                        holder = %lease.holder, until = lease.until.0, ?peer_pid,
                        "update lock taken"
                    );
                    Response::serialized(200, &lease)
                }
                Err(response) => response,
            }
        }
        "DELETE" => {
            if let Some(query) = &request.query {
                return Response::error(400, format!("DELETE takes no query, got {query:?}"));
            }
            let locks = locks.clone();
            let log_holder = holder.clone();
            match run_blocking(move || locks.release(&holder)).await {
                Ok(()) => {
                    tracing::info!(holder = %log_holder, ?peer_pid, "update lock released");
                    Response::no_content()
                }
                Err(response) => response,
            }
        }
        _ => Response::method_not_allowed(method, "POST, DELETE"),
    }
}

/// The `ttl` of a POST query: `None` when absent; unknown or repeated parameters are refused so
/// a typo (`?tll=600`) does not silently take the default.
fn parse_ttl(query: Option<&str>) -> Result<Option<Duration>, Response> {
    let mut ttl = None;
    for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key != "ttl" {
            return Err(Response::error(
                400,
                format!("unknown query parameter {key:?}; the only one is ttl=SECONDS"),
            ));
        }
        if ttl.is_some() {
            return Err(Response::error(400, "ttl is given more than once"));
        }
        let seconds: u64 = value.parse().map_err(|_| {
            Response::error(400, format!("ttl must be a whole number of seconds, got {value:?}"))
        })?;
        ttl = Some(Duration::from_secs(seconds));
    }
    Ok(ttl)
}

/// Runs a file system operation off the async workers (an fsync-heavy flash device can stall
/// for a while) and turns its error into an answer.
async fn run_blocking<T: Send + 'static>(
    op: impl FnOnce() -> Result<T, LockError> + Send + 'static,
) -> Result<T, Response> {
    match tokio::task::spawn_blocking(op).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(error_response(&e)),
        Err(e) => {
            tracing::error!(error = %e, "update lock operation panicked");
            Err(Response::error(500, "internal error"))
        }
    }
}

fn error_response(error: &LockError) -> Response {
    match error {
        LockError::InvalidHolder { .. } | LockError::TtlOutOfRange { .. } => {
            Response::error(400, error.to_string())
        }
        _ => {
            let message = error_chain(error);
            tracing::error!(error = %message, "update lock operation failed");
            Response::error(500, message)
        }
    }
}

pub(crate) use fleet_proto::errors::chain as error_chain;

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    fn locks(dir: &tempfile::TempDir) -> UpdateLocks {
        UpdateLocks::new(dir.path().join("locks"), MINUTE)
    }

    fn write_app_file(locks: &UpdateLocks, name: &str, content: &[u8], mtime: UnixMillis) {
        std::fs::create_dir_all(locks.dir()).unwrap();
        let path = locks.dir().join(name);
        std::fs::write(&path, content).unwrap();
        let file = std::fs::File::options().write(true).open(&path).unwrap();
        file.set_modified(SystemTime::UNIX_EPOCH + Duration::from_millis(mtime.0)).unwrap();
    }

    #[test]
    fn acquired_lease_is_listed_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let locks = locks(&dir);
        let now = UnixMillis(1_000_000);
        assert_eq!(locks.active(now).unwrap(), vec![], "a missing directory means no locks");

        let lease = locks.acquire("navigation", Some(MINUTE * 10), now).unwrap();
        assert_eq!(lease, Lease { holder: "navigation".into(), until: UnixMillis(1_600_000) });
        assert_eq!(locks.active(now).unwrap(), vec![lease.clone()]);
        let file = std::fs::read(locks.dir().join("navigation.lock")).unwrap();
        let on_disk: Lease = serde_json::from_slice(&file).unwrap();
        assert_eq!(on_disk, lease);

        locks.release("navigation").unwrap();
        assert_eq!(locks.active(now).unwrap(), vec![]);
        locks.release("navigation").unwrap();
    }

    #[test]
    fn reacquiring_renews_the_lease() {
        let dir = tempfile::tempdir().unwrap();
        let locks = locks(&dir);
        let first = locks.acquire("arm", None, UnixMillis(1_000_000)).unwrap();
        assert_eq!(first.until, UnixMillis(1_060_000), "None takes the default TTL");
        let renewed = locks.acquire("arm", None, UnixMillis(1_050_000)).unwrap();
        assert_eq!(renewed.until, UnixMillis(1_110_000));
        assert_eq!(locks.active(UnixMillis(1_070_000)).unwrap(), vec![renewed]);
    }

    #[test]
    fn lease_is_in_force_until_its_last_millisecond_and_not_after() {
        let dir = tempfile::tempdir().unwrap();
        let locks = locks(&dir);
        let lease = locks.acquire("arm", Some(MINUTE), UnixMillis(5_000)).unwrap();
        let until = lease.until.0;
        assert_eq!(locks.active(UnixMillis(until - 1)).unwrap(), vec![lease]);
        assert_eq!(locks.active(UnixMillis(until)).unwrap(), vec![]);
        assert_eq!(locks.active(UnixMillis(until + 1)).unwrap(), vec![]);
    }

    #[test]
    fn active_lists_the_lease_that_ends_last_first() {
        let dir = tempfile::tempdir().unwrap();
        let locks = locks(&dir);
        let now = UnixMillis(0);
        locks.acquire("short", Some(MINUTE), now).unwrap();
        locks.acquire("long", Some(MINUTE * 30), now).unwrap();
        locks.acquire("middle", Some(MINUTE * 5), now).unwrap();
        let holders: Vec<_> = locks.active(now).unwrap().into_iter().map(|l| l.holder).collect();
        assert_eq!(holders, ["long", "middle", "short"]);
    }

    #[test]
    fn holder_names_that_are_not_safe_file_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let locks = locks(&dir);
        let long = "a".repeat(65);
        for bad in ["../x", "a/b", "", long.as_str(), ".hidden", "..", "-x", "a b", "é"] {
            let err = locks.acquire(bad, None, UnixMillis(0)).unwrap_err();
            assert!(matches!(&err, LockError::InvalidHolder { holder, .. } if holder == bad));
            assert!(err.to_string().contains("starting with a letter or digit"), "{err}");
            assert!(matches!(locks.release(bad), Err(LockError::InvalidHolder { .. })));
        }
        assert_eq!(locks.active(UnixMillis(0)).unwrap(), vec![]);
        for good in ["a".repeat(64).as_str(), "nav-2.main_loop", "9lives"] {
            locks.acquire(good, None, UnixMillis(0)).unwrap();
        }
    }

    #[test]
    fn ttl_outside_one_second_to_one_day_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let locks = locks(&dir);
        for bad in [Duration::ZERO, Duration::from_millis(999), MAX_TTL + Duration::from_secs(1)] {
            let err = locks.acquire("arm", Some(bad), UnixMillis(0)).unwrap_err();
            assert!(matches!(err, LockError::TtlOutOfRange { ttl } if ttl == bad));
        }
        locks.acquire("arm", Some(MIN_TTL), UnixMillis(0)).unwrap();
        locks.acquire("arm", Some(MAX_TTL), UnixMillis(0)).unwrap();
    }

    #[test]
    fn default_ttl_out_of_range_is_clamped() {
        let dir = tempfile::tempdir().unwrap();
        let locks = UpdateLocks::new(dir.path(), Duration::from_secs(7 * 24 * 60 * 60));
        let lease = locks.acquire("arm", None, UnixMillis(0)).unwrap();
        assert_eq!(lease.until, UnixMillis(0).saturating_add(MAX_TTL));
    }

    #[test]
    fn file_without_json_written_by_an_app_locks_for_default_ttl_from_its_mtime() {
        let dir = tempfile::tempdir().unwrap();
        let locks = locks(&dir);
        let mtime = UnixMillis(1_700_000_000_000);
        write_app_file(&locks, "empty.lock", b"", mtime);
        write_app_file(&locks, "text.lock", b"mission 42 in progress\n", mtime);
        write_app_file(&locks, "other-json.lock", br#"{"mission": 42}"#, mtime);
        let until = mtime.saturating_add(MINUTE);
        let holders = |now| -> Vec<String> {
            locks.active(now).unwrap().into_iter().map(|l| l.holder).collect()
        };
        assert_eq!(holders(mtime), ["empty", "other-json", "text"]);
        assert_eq!(locks.active(UnixMillis(until.0 - 1)).unwrap()[0].until, until);
        assert!(holders(until).is_empty(), "a crashed app's lock lapses");

        // Touching the file again renews it.
        write_app_file(&locks, "empty.lock", b"", until);
        assert_eq!(holders(until), ["empty"]);
    }

    #[test]
    fn what_a_container_plants_in_the_shared_directory_is_neither_followed_nor_waited_on() {
        let dir = tempfile::tempdir().unwrap();
        let locks = locks(&dir);
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("important");
        std::fs::write(&target, b"keep me").unwrap();
        std::fs::create_dir_all(locks.dir()).unwrap();
        // A link where the agent will write a lock: the rename replaces the link itself.
        std::os::unix::fs::symlink(&target, locks.dir().join("arm.lock")).unwrap();
        let now = UnixMillis::now();
        locks.acquire("arm", Some(Duration::from_secs(60)), now).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"keep me", "the link was not followed");
        assert!(!std::fs::symlink_metadata(locks.dir().join("arm.lock")).unwrap().is_symlink());
        // A link and a FIFO posing as lock files: not read through, not blocked on.
        std::os::unix::fs::symlink(&target, locks.dir().join("leak.lock")).unwrap();
        nix::unistd::mkfifo(&locks.dir().join("stall.lock"), nix::sys::stat::Mode::S_IRWXU)
            .unwrap();
        let holders: Vec<String> =
            locks.active(now).unwrap().into_iter().map(|l| l.holder).collect();
        assert_eq!(holders, ["arm"]);
    }

    #[test]
    fn json_lock_file_with_past_until_does_not_count() {
        let dir = tempfile::tempdir().unwrap();
        let locks = locks(&dir);
        let now = UnixMillis(1_700_000_000_000);
        write_app_file(&locks, "old.lock", br#"{"holder":"old","until":1699999999999}"#, now);
        write_app_file(&locks, "fresh.lock", br#"{"until":1700000000500}"#, now);
        assert_eq!(
            locks.active(now).unwrap(),
            vec![Lease { holder: "fresh".into(), until: UnixMillis(1_700_000_000_500) }]
        );
    }

    #[test]
    fn json_until_far_in_the_future_lapses_a_day_after_the_file_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let locks = locks(&dir);
        let mtime = UnixMillis(1_700_000_000_000);
        write_app_file(&locks, "forever.lock", br#"{"until":99999999999999}"#, mtime);
        let latest = mtime.saturating_add(MAX_TTL);
        assert_eq!(locks.active(mtime).unwrap()[0].until, latest);
        assert_eq!(locks.active(latest).unwrap(), vec![]);
    }

    #[test]
    fn files_not_ending_in_lock_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let locks = locks(&dir);
        let now = UnixMillis(1_700_000_000_000);
        write_app_file(&locks, "notes.txt", b"", now);
        write_app_file(&locks, "arm.lock.tmp", b"", now);
        write_app_file(&locks, "arm.locked", b"", now);
        std::fs::create_dir(locks.dir().join("dir.lock")).unwrap();
        assert_eq!(locks.active(now).unwrap(), vec![]);
    }

    // ---- socket API ----

    struct Server {
        socket: PathBuf,
        stop: tokio::sync::oneshot::Sender<()>,
        task: tokio::task::JoinHandle<Result<(), LockError>>,
        _dir: tempfile::TempDir,
    }

    async fn start(timeout: Duration) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("run").join("locks.sock");
        let locks = UpdateLocks::new(dir.path().join("locks"), MINUTE);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(locks.serve_with(
            socket.clone(),
            async {
                let _ = stopped.await;
            },
            timeout,
        ));
        for _ in 0..100 {
            if UnixStream::connect(&socket).await.is_ok() {
                return Server { socket, stop, task, _dir: dir };
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("server did not start listening");
    }

    /// Sends `request` raw and returns (status, body).
    async fn send(socket: &Path, request: &str) -> (u16, String) {
        let mut stream = UnixStream::connect(socket).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        read_response(&mut stream).await
    }

    async fn read_response(stream: &mut UnixStream) -> (u16, String) {
        let mut raw = String::new();
        stream.read_to_string(&mut raw).await.unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        assert!(head.contains("Connection: close"), "{head}");
        if status == 204 {
            assert!(!head.contains("Content-Length"), "{head}");
        } else {
            let length = format!("Content-Length: {}", body.len());
            assert!(head.contains(&length), "{head}");
        }
        (status, body.to_owned())
    }

    async fn call(socket: &Path, method: &str, target: &str) -> (u16, String) {
        let request = format!("{method} {target} HTTP/1.1\r\nHost: localhost\r\n\r\n");
        send(socket, &request).await
    }

    fn error_of(body: &str) -> String {
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        json["error"].as_str().unwrap().to_owned()
    }

    #[tokio::test]
    async fn socket_api_takes_lists_and_releases_locks() {
        let server = start(REQUEST_TIMEOUT).await;
        let socket = &server.socket;
        let mode = std::fs::metadata(socket).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o660);

        let before = UnixMillis::now();
        let (status, body) = call(socket, "POST", "/v1/locks/navigation?ttl=600").await;
        assert_eq!(status, 200, "{body}");
        let lease: Lease = serde_json::from_str(&body).unwrap();
        assert_eq!(lease.holder, "navigation");
        assert!(lease.until >= before.saturating_add(Duration::from_secs(600)));
        assert!(lease.until <= UnixMillis::now().saturating_add(Duration::from_secs(600)));

        let (status, body) = call(socket, "GET", "/v1/locks").await;
        assert_eq!(status, 200);
        assert_eq!(serde_json::from_str::<Vec<Lease>>(&body).unwrap(), vec![lease]);

        let (status, body) = call(socket, "DELETE", "/v1/locks/navigation").await;
        assert_eq!((status, body.as_str()), (204, ""));
        let (status, body) = call(socket, "GET", "/v1/locks").await;
        assert_eq!((status, body.as_str()), (200, "[]"));

        server.stop.send(()).unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(1), server.task).await;
        assert!(matches!(ended, Ok(Ok(Ok(())))), "serve ends on shutdown");
        assert!(!socket.exists(), "serve removes its socket");
    }

    #[tokio::test]
    async fn socket_api_answers_bad_requests_with_clear_statuses() {
        let server = start(REQUEST_TIMEOUT).await;
        let socket = &server.socket;
        let cases = [
            ("POST", "/v1/locks/arm?ttl=soon", 400, "whole number of seconds"),
            ("POST", "/v1/locks/arm?ttl=0", 400, "out of range"),
            ("POST", "/v1/locks/arm?ttl=86401", 400, "out of range"),
            ("POST", "/v1/locks/arm?tll=60", 400, "unknown query parameter \"tll\""),
            ("POST", "/v1/locks/arm?ttl=5&ttl=6", 400, "more than once"),
            ("POST", "/v1/locks/.hidden", 400, "invalid lock holder \".hidden\""),
            ("POST", "/v1/locks/..", 400, "invalid lock holder \"..\""),
            ("GET", "/v1/locks?all=1", 400, "takes no query"),
            ("GET", "/nope", 404, "no such resource \"/nope\""),
            ("POST", "/v1/locks/a/b", 404, "no such resource"),
            ("PUT", "/v1/locks/arm", 405, "use POST, DELETE"),
            ("GET", "/v1/locks/arm", 405, "use POST, DELETE"),
            ("DELETE", "/v1/locks", 405, "use GET"),
        ];
        for (method, target, status, message) in cases {
            let (got, body) = call(socket, method, target).await;
            assert_eq!(got, status, "{method} {target}: {body}");
            assert!(error_of(&body).contains(message), "{method} {target}: {body}");
        }
        let (status, body) = send(socket, "hello\r\n\r\n").await;
        assert_eq!(status, 400);
        assert!(error_of(&body).contains("malformed request head"), "{body}");
        let (status, _) = send(socket, "GET /v1/locks HTTP/2.0\r\n\r\n").await;
        assert_eq!(status, 505);
        let (status, body) = call(socket, "GET", "/v1/locks").await;
        assert_eq!((status, body.as_str()), (200, "[]"), "no bad request took a lock");
    }

    #[tokio::test]
    async fn oversized_request_is_refused_with_431() {
        let server = start(REQUEST_TIMEOUT).await;
        let padding = "x".repeat(MAX_REQUEST_BYTES);
        let request = format!("GET /v1/locks HTTP/1.1\r\nX-Padding: {padding}\r\n\r\n");
        let mut stream = UnixStream::connect(&server.socket).await.unwrap();
        // The server answers before reading it all; the rest of the write may fail.
        let _ = stream.write_all(request.as_bytes()).await;
        let (status, body) = read_response(&mut stream).await;
        assert_eq!(status, 431, "{body}");
    }

    #[tokio::test]
    async fn slow_client_does_not_block_others_and_gets_408() {
        let server = start(Duration::from_millis(300)).await;
        let mut slow = UnixStream::connect(&server.socket).await.unwrap();
        slow.write_all(b"GET /v1/lo").await.unwrap();

        let (status, _) = call(&server.socket, "GET", "/v1/locks").await;
        assert_eq!(status, 200, "answered while the slow client is still sending");

        let (status, body) = read_response(&mut slow).await;
        assert_eq!(status, 408, "{body}");
    }

    #[tokio::test]
    async fn serve_replaces_a_stale_socket_but_not_a_live_one_or_another_file() {
        let dir = tempfile::tempdir().unwrap();
        let locks = UpdateLocks::new(dir.path().join("locks"), MINUTE);
        let path = dir.path().join("locks.sock");

        let live = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let err = locks.clone().serve(path.clone(), async {}).await.unwrap_err();
        assert!(matches!(err, LockError::SocketInUse { .. }), "{err}");

        drop(live); // leaves the socket file behind, like a crashed agent
        locks.clone().serve(path.clone(), async {}).await.unwrap();

        std::fs::write(&path, b"not a socket").unwrap();
        let err = locks.serve(path.clone(), async {}).await.unwrap_err();
        assert!(matches!(err, LockError::NotASocket { .. }), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"not a socket");
    }
}
