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
//! # Who may renew or release a lease
//!
//! A lease taken through the socket (or `fleet-agent lock acquire`) comes with a **token**: 128
//! random bits from the OS, as 32 hex digits, in the answer. Only the token's SHA-256 is kept, in
//! the lock file, so the lease keeps its owner across agent restarts and a container that can
//! read the file cannot learn the token. While the lease is in force, renewing or releasing it
//! needs that token (`may_change`); a client without it gets 409 (renew) or 403 (release) and
//! cannot extend, shorten or hijack another's lease. Once the lease has ended, anyone may take the
//! name and gets a fresh token. Renewing keeps the token.
//!
//! A lease an application wrote as a file (no token in it) works as it always did, and only its
//! writer ends it, by deleting the file: the socket answers 403 for it. The socket has no force
//! mode; root on the host can use `fleet-agent lock release NAME --force`, which acts on the file
//! directly ([`UpdateLocks::release_forced`]).
//!
//! # Files
//!
//! Each lease is one file, `<dir>/<holder>.lock`, so the lock directory can be mounted into
//! opted-in containers and an application can take a lock without speaking to the agent at all.
//! Holder names are 1 to 64 characters of `[A-Za-z0-9._-]` starting with a letter or digit: they
//! become file names, so they can never contain `/` or be `..`.
//!
//! **Per-application directories.** Leases are also read one level down, from
//! `<dir>/<app>/<holder>.lock`, and are named `<app>/<holder>`. An operator mounts
//! `/run/fleet-agent/locks/<app>` into one application's containers instead of the whole
//! directory, so one application cannot delete or overwrite another's lock files. `<app>` follows
//! the holder name rule; a symbolic link in place of a directory is not followed (the directory
//! is opened `O_DIRECTORY|O_NOFOLLOW` and its files relative to it). At most [`MAX_SUBDIRS`]
//! directories and [`MAX_LOCK_FILES`] lock files in all are read, the top directory's first and
//! at most [`MAX_LOCK_FILES_PER_APP`] from each application's; the rest are ignored with a
//! warning, so a directory full of files cannot make the agent's every check slow, and one
//! application flooding its own directory crowds out no other lock.
//!
//! A `.lock` file may contain:
//! * the JSON the agent writes, `{"holder":"navigation","until":1767225600000,
//!   "token_sha256":"<64 hex digits>"}`: the lease ends at `until` (a past `until` means
//!   expired). Only `until` and `token_sha256` are read; the holder is the file name. Without
//!   `token_sha256` the lease is the application's (see above).
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
//! may take locks), one request per connection. Renewing and releasing carry the lease's token
//! in the `Fleet-Lock-Token` header (a header, not the query, so it stays out of URLs and logs):
//!
//! | request | answer |
//! | --- | --- |
//! | `POST /v1/locks/{holder}` or `POST /v1/locks/{holder}?ttl=SECONDS` | 200, the lease and its `token` as JSON; 409 if another client's lease is in force |
//! | `DELETE /v1/locks/{holder}` | 204 (also when no lease is in force); 403 if the lease in force has another token, or none |
//! | `GET /v1/locks` | 200, JSON array of leases in force, the one ending last first |
//!
//! Malformed requests (a token that is not 32 hex digits among them) get 400 with
//! `{"error": "..."}` saying what is wrong, unknown paths 404, a wrong method 405, a request that
//! does not arrive within 5 s 408, one over 8 KiB 431, and a lock directory that cannot be read
//! or written 500. The socket serves the top directory's leases only.
//!
//! ```text
//! curl --unix-socket /run/fleet-agent/locks.sock -X POST \
//!     'http://localhost/v1/locks/navigation?ttl=600'
//! {"holder":"navigation","until":1767225600000,"token":"6f1c...e2"}
//! curl --unix-socket /run/fleet-agent/locks.sock -X DELETE \
//!     -H 'Fleet-Lock-Token: 6f1c...e2' http://localhost/v1/locks/navigation
//! ```

use std::future::Future;
use std::io::{self, Read as _};
use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use crate::http1::{parse_request, read_head, ReadError, Request, Response};
use fleet_proto::UnixMillis;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinSet;

/// The shortest lease that can be taken.
pub const MIN_TTL: Duration = Duration::from_secs(1);
/// The longest lease that can be taken, and the longest any lock file counts after it was written.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// Per-application lock directories read, at most; further ones are ignored with a warning.
pub const MAX_SUBDIRS: usize = 256;
/// Lock files read in all (top directory and per-application ones), at most; further ones are
/// ignored with a warning.
pub const MAX_LOCK_FILES: usize = 1024;
/// Lock files read from one per-application directory, at most: an application that floods its
/// own directory cannot push the other applications' locks (or the top directory's) out of
/// [`MAX_LOCK_FILES`].
pub const MAX_LOCK_FILES_PER_APP: usize = 64;
/// Entries of the top directory looked at, at most (lock files, application directories and
/// anything else).
const MAX_TOP_ENTRIES: usize = 8192;
/// The request header that carries a lease's token when renewing or releasing it.
pub const TOKEN_HEADER: &str = "Fleet-Lock-Token";

/// Random bytes in a token: 128 bits, as 32 hex digits.
const TOKEN_BYTES: usize = 16;
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

/// A lease just taken or renewed, with the token that renews or releases it (the socket's and
/// `lock acquire --json`'s answer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Taken {
    /// The lease.
    #[serde(flatten)]
    pub lease: Lease,
    /// Its token: only whoever has it may renew or release the lease while it is in force.
    pub token: Token,
}

/// A lease's token: 32 lower-case hex digits (128 bits from the OS random source).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String")]
pub struct Token(String);

impl Token {
    /// A fresh token. From the OS random source, not `fastrand`: a token must be unguessable
    /// even to a container that sees many of the agent's temporary file names.
    fn generate() -> Result<Token, LockError> {
        let mut bytes = [0u8; TOKEN_BYTES];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
            .map_err(|_| LockError::Random)?;
        Ok(Token(fleet_proto::hex::encode(&bytes)))
    }

    /// The token as text, for the client to keep.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// What the lock file keeps instead of the token, which containers may read.
    fn digest(&self) -> [u8; 32] {
        use sha2::Digest as _;
        sha2::Sha256::digest(self.0.as_bytes()).into()
    }
}

impl std::str::FromStr for Token {
    type Err = LockError;

    fn from_str(s: &str) -> Result<Token, LockError> {
        let well_formed =
            s.len() == TOKEN_BYTES * 2 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if well_formed {
            Ok(Token(s.to_owned()))
        } else {
            Err(LockError::InvalidToken)
        }
    }
}

impl TryFrom<String> for Token {
    type Error = LockError;

    fn try_from(s: String) -> Result<Token, LockError> {
        s.parse()
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Kept out of logs and panic messages.
        f.write_str("Token(..)")
    }
}

/// Renewing or releasing: what was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// `POST` on a lease in force, `lock acquire` again.
    Renew,
    /// `DELETE`, `lock release`.
    Release,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Change::Renew => "renew",
            Change::Release => "release",
        })
    }
}

/// Why a lease in force may not be renewed or released by whoever asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// It was taken with a token, and none was given.
    #[error(
        "held by another client until {} (ms since epoch); pass its token (header \
         Fleet-Lock-Token, or --token)",
        until.0
    )]
    TokenMissing {
        /// When the lease ends.
        until: UnixMillis,
    },
    /// The token given is not the one it was taken with.
    #[error(
        "held by another client until {} (ms since epoch); the token given is not its token",
        until.0
    )]
    TokenWrong {
        /// When the lease ends.
        until: UnixMillis,
    },
    /// An application wrote the lock file itself (no token in it).
    #[error(
        "its application wrote the lock file (it has no token), in force until {} (ms since \
         epoch); only that application renews or releases it, by rewriting or deleting the file",
        until.0
    )]
    WrittenByApp {
        /// When the lease ends.
        until: UnixMillis,
    },
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
    /// A token that is not one the agent hands out.
    #[error(
        "invalid lock token: a token is the 32 lower-case hex digits the lease was taken with"
    )]
    InvalidToken,
    /// The lease in force belongs to someone else.
    #[error("cannot {change} update lock {holder:?}: {refusal}")]
    Refused {
        /// The lease's name.
        holder: String,
        /// What was asked.
        change: Change,
        /// Why not.
        refusal: Refusal,
    },
    /// The OS random source failed.
    #[error("the system random source failed; no lock token could be made")]
    Random,
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
    /// Serialises check-then-write within this process, so two socket clients cannot both find
    /// a name free and both believe they hold it.
    changes: Arc<Mutex<()>>,
}

/// The part of a lock file's JSON the agent reads; other fields (the holder) are ignored.
#[derive(Deserialize)]
struct LockFileJson {
    until: UnixMillis,
    /// Any JSON value, so a file with an odd `token_sha256` still has its `until` read.
    #[serde(default)]
    token_sha256: Option<serde_json::Value>,
}

/// The lock file the agent writes.
#[derive(Serialize)]
struct LockFileOut<'a> {
    holder: &'a str,
    until: UnixMillis,
    token_sha256: String,
}

/// What one lock file says: until when it counts, and whose it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileLease {
    until: UnixMillis,
    /// The SHA-256 of its token; `None` for a file an application wrote itself.
    token_sha256: Option<[u8; 32]>,
}

/// Whether whoever presents `token` may renew or release the lease `in_force` (`None`: no lease
/// is in force, so anyone may take the name). Only a lease taken with a token can be changed, and
/// only with that token; an application's own file is its writer's alone.
fn may_change(in_force: Option<&FileLease>, token: Option<&Token>) -> Result<(), Refusal> {
    let Some(lease) = in_force else { return Ok(()) };
    let until = lease.until;
    match (lease.token_sha256, token) {
        (None, _) => Err(Refusal::WrittenByApp { until }),
        (Some(_), None) => Err(Refusal::TokenMissing { until }),
        (Some(digest), Some(token)) if digest == token.digest() => Ok(()),
        (Some(_), Some(_)) => Err(Refusal::TokenWrong { until }),
    }
}

/// Makes temporary file names unique when the same holder is renewed concurrently.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// How many more directories and lock files [`UpdateLocks::active`] reads, and how many it
/// skipped.
struct Budget {
    subdirs: usize,
    files: usize,
    skipped_subdirs: usize,
    skipped_files: usize,
}

impl Budget {
    fn take_subdir(&mut self) -> bool {
        take(&mut self.subdirs, &mut self.skipped_subdirs)
    }

    fn take_file(&mut self) -> bool {
        take(&mut self.files, &mut self.skipped_files)
    }
}

fn take(left: &mut usize, skipped: &mut usize) -> bool {
    if *left == 0 {
        *skipped += 1;
        return false;
    }
    *left -= 1;
    true
}

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
        UpdateLocks { dir: dir.into(), default_ttl: clamped, changes: Arc::default() }
    }

    /// The lock directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Takes or renews `holder`'s lease for `ttl` (`default_ttl` when `None`), counted from
    /// `now`. Renewing a lease in force needs its `token` and keeps it; a name whose lease has
    /// ended (or never was) is taken with a fresh token, whatever `token` says. Renewing sets a
    /// new end, which may be earlier than the old one: the holder knows best how long it still
    /// needs. Writes `<dir>/<holder>.lock` atomically (temporary file, then rename).
    pub fn acquire(
        &self,
        holder: &str,
        ttl: Option<Duration>,
        token: Option<&Token>,
        now: UnixMillis,
    ) -> Result<Taken, LockError> {
        validate_holder(holder)?;
        let ttl = ttl.unwrap_or(self.default_ttl);
        if !(MIN_TTL..=MAX_TTL).contains(&ttl) {
            return Err(LockError::TtlOutOfRange { ttl });
        }
        let _serial = self.changes.lock().unwrap_or_else(PoisonError::into_inner);
        let path = self.lock_path(holder);
        let in_force = self.in_force(&path, now)?;
        may_change(in_force.as_ref(), token).map_err(|refusal| LockError::Refused {
            holder: holder.to_owned(),
            change: Change::Renew,
            refusal,
        })?;
        let token = match (in_force, token) {
            (Some(_), Some(token)) => token.clone(),
            _ => Token::generate()?,
        };
        let lease = Lease { holder: holder.to_owned(), until: now.saturating_add(ttl) };
        let file = LockFileOut {
            holder,
            until: lease.until,
            token_sha256: fleet_proto::hex::encode(&token.digest()),
        };
        let json = serde_json::to_vec(&file)
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
        written.map(|()| Taken { lease, token })
    }

    /// Releases `holder`'s lease, which needs its `token` while it is in force; releasing when
    /// no lease is in force is not an error (an expired file is left in place, like any).
    pub fn release(
        &self,
        holder: &str,
        token: Option<&Token>,
        now: UnixMillis,
    ) -> Result<(), LockError> {
        validate_holder(holder)?;
        let _serial = self.changes.lock().unwrap_or_else(PoisonError::into_inner);
        let path = self.lock_path(holder);
        let Some(in_force) = self.in_force(&path, now)? else { return Ok(()) };
        may_change(Some(&in_force), token).map_err(|refusal| LockError::Refused {
            holder: holder.to_owned(),
            change: Change::Release,
            refusal,
        })?;
        remove_if_present(&path)
    }

    /// Deletes the lock file `name` (`holder` or `app/holder`) whoever wrote it: the operator's
    /// override (`fleet-agent lock release --force`, root only). The socket never offers it.
    pub fn release_forced(&self, name: &str) -> Result<(), LockError> {
        let (app, holder) = match name.split_once('/') {
            Some((app, holder)) => (Some(app), holder),
            None => (None, name),
        };
        validate_holder(holder)?;
        let Some(app) = app else {
            let _serial = self.changes.lock().unwrap_or_else(PoisonError::into_inner);
            return remove_if_present(&self.lock_path(holder));
        };
        validate_holder(app)?;
        // The application may have swapped its directory for a link: delete relative to the
        // directory opened without following one, never through the link.
        let path = self.dir.join(app);
        let dir = match open_dir_no_follow(&path) {
            Ok(dir) => dir,
            Err(e) if not_a_lock_dir(&e) => return Ok(()),
            Err(e) => return Err(LockError::io("open lock directory", &path)(e)),
        };
        let file = format!("{holder}{LOCK_SUFFIX}");
        match nix::unistd::unlinkat(&dir, file.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(nix::errno::Errno::ENOENT) => Ok(()),
            Err(e) => Err(LockError::io("remove lock file", &path.join(file))(e.into())),
        }
    }

    /// Leases in force at `now`, the one that ends last first (ties by name): those of the
    /// directory and of its per-application directories (named `<app>/<holder>`). Expired lock
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
        let mut budget = Budget {
            subdirs: MAX_SUBDIRS,
            files: MAX_LOCK_FILES,
            skipped_subdirs: 0,
            skipped_files: 0,
        };
        // In name order, the top directory's own lock files first: the same entries always
        // count, and no application directory can crowd out the operator's locks.
        let mut files = Vec::new();
        let mut apps = Vec::new();
        for entry in entries.take(MAX_TOP_ENTRIES) {
            let entry = entry.map_err(LockError::io("read lock directory", &self.dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(holder) = holder_of(&name) {
                files.push((name, holder));
            } else if entry.file_type().is_ok_and(|t| t.is_dir()) && validate_holder(&name).is_ok()
            {
                // `file_type` does not follow links: a linked directory is not read.
                apps.push(name);
            }
        }
        files.sort();
        apps.sort();
        let mut leases = Vec::new();
        for (name, holder) in files {
            if !budget.take_file() {
                continue;
            }
            let path = self.dir.join(&name);
            if let Some(lease) = self.read_lock_file(open_no_follow(&path), &path)? {
                if now < lease.until {
                    leases.push(Lease { holder, until: lease.until });
                }
            }
        }
        for app in apps {
            if budget.take_subdir() {
                self.read_app_dir(&app, now, &mut budget, &mut leases)?;
            }
        }
        if budget.skipped_subdirs > 0 || budget.skipped_files > 0 {
            tracing::warn!(
                dir = %self.dir.display(),
                skipped_dirs = budget.skipped_subdirs,
                skipped_files = budget.skipped_files,
                "too many update lock directories or files; only the first \
                 {MAX_SUBDIRS} directories and {MAX_LOCK_FILES} lock files count"
            );
        }
        leases.sort_by(|a, b| b.until.cmp(&a.until).then_with(|| a.holder.cmp(&b.holder)));
        Ok(leases)
    }

    /// Adds the leases in force of the per-application directory `app` to `leases`.
    fn read_app_dir(
        &self,
        app: &str,
        now: UnixMillis,
        budget: &mut Budget,
        leases: &mut Vec<Lease>,
    ) -> Result<(), LockError> {
        let path = self.dir.join(app);
        // Opened without following a link (the application may have swapped its directory for
        // one since it was listed), then read and its files opened relative to what was opened.
        let dir = match open_dir_no_follow(&path) {
            Ok(dir) => dir,
            Err(e) if not_a_lock_dir(&e) => return Ok(()),
            Err(e) => return Err(LockError::io("open lock directory", &path)(e)),
        };
        let listing = dir
            .try_clone()
            .map_err(LockError::io("read lock directory", &path))
            .and_then(|fd| {
                nix::dir::Dir::from_fd(fd.into())
                    .map_err(|e| LockError::io("read lock directory", &path)(e.into()))
            })?;
        let mut left_here = MAX_LOCK_FILES_PER_APP;
        for entry in listing {
            let entry = entry.map_err(|e| LockError::io("read lock directory", &path)(e.into()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(holder) = holder_of(&name) else { continue };
            if !take(&mut left_here, &mut budget.skipped_files) || !budget.take_file() {
                continue;
            }
            let opened =
                nix::fcntl::openat(&dir, entry.file_name(), no_follow_flags(), Mode::empty())
                    .map(std::fs::File::from)
                    .map_err(io::Error::from);
            if let Some(lease) = self.read_lock_file(opened, &path.join(&name))? {
                if now < lease.until {
                    leases.push(Lease { holder: format!("{app}/{holder}"), until: lease.until });
                }
            }
        }
        Ok(())
    }

    /// The lease of the lock file at `path` if it is in force at `now`.
    fn in_force(&self, path: &Path, now: UnixMillis) -> Result<Option<FileLease>, LockError> {
        let lease = self.read_lock_file(open_no_follow(path), path)?;
        Ok(lease.filter(|lease| now < lease.until))
    }

    /// What the lock file `opened` at `path` says, or `None` if the file is gone (released while
    /// we were listing) or is not a regular file.
    fn read_lock_file(
        &self,
        opened: io::Result<std::fs::File>,
        path: &Path,
    ) -> Result<Option<FileLease>, LockError> {
        // Opened without following a link and without blocking (a container may have swapped
        // the file for a link or a FIFO), then judged by what was opened.
        let file = match opened {
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
        let lease = match read_json(file) {
            Some(json) => FileLease {
                until: json.until.min(latest),
                token_sha256: json
                    .token_sha256
                    .as_ref()
                    .and_then(serde_json::Value::as_str)
                    .and_then(fleet_proto::hex::decode_array),
            },
            None => {
                FileLease { until: written.saturating_add(self.default_ttl), token_sha256: None }
            }
        };
        Ok(Some(lease))
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

/// Deletes `path`; one already gone is not an error.
fn remove_if_present(path: &Path) -> Result<(), LockError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(LockError::io("remove lock file", path)(e))
        }
        _ => Ok(()),
    }
}

/// The holder a directory entry's name stands for, if it is a lock file's name.
fn holder_of(name: &str) -> Option<String> {
    let stem = name.strip_suffix(LOCK_SUFFIX)?;
    Some(if stem.is_empty() { name } else { stem }.to_owned())
}

/// Opens `path` for reading without following a symbolic link and without blocking on a FIFO.
fn open_no_follow(path: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
}

/// [`open_no_follow`]'s flags, for a file opened relative to a directory.
fn no_follow_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC
}

/// Opens the directory `path`, failing (ELOOP or ENOTDIR) if it is a link or not a directory.
fn open_dir_no_follow(path: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_DIRECTORY | nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
}

/// An error that means "no per-application lock directory here": gone, a link, or a file.
fn not_a_lock_dir(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
        || matches!(e.raw_os_error(), Some(nix::libc::ELOOP | nix::libc::ENOTDIR))
}

/// A lock file's content as the agent's JSON; `None` for any other content, including a file
/// that cannot be read (it still counts, from its modification time).
fn read_json(file: std::fs::File) -> Option<LockFileJson> {
    let mut content = Vec::new();
    file.take(MAX_LOCK_FILE_BYTES + 1).read_to_end(&mut content).ok()?;
    if content.len() as u64 > MAX_LOCK_FILE_BYTES {
        return None;
    }
    serde_json::from_slice(&content).ok()
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
    if !matches!(method, "POST" | "DELETE") {
        return Response::method_not_allowed(method, "POST, DELETE");
    }
    let token = match request.header(TOKEN_HEADER).map(str::parse::<Token>).transpose() {
        Ok(token) => token,
        Err(e) => return error_response(&e),
    };
    let locks = locks.clone();
    if method == "POST" {
        let ttl = match parse_ttl(request.query.as_deref()) {
            Ok(ttl) => ttl,
            Err(response) => return response,
        };
        let acquired =
            run_blocking(move || locks.acquire(&holder, ttl, token.as_ref(), UnixMillis::now()))
                .await;
        return match acquired {
            Ok(taken) => {
                tracing::info!(
                    holder = %taken.lease.holder, until = taken.lease.until.0, ?peer_pid,
                    "update lock taken"
                );
                Response::serialized(200, &taken)
            }
            Err(response) => response,
        };
    }
    if let Some(query) = &request.query {
        return Response::error(
            400,
            format!("DELETE takes no query, got {query:?}; the token goes in {TOKEN_HEADER}"),
        );
    }
    let log_holder = holder.clone();
    match run_blocking(move || locks.release(&holder, token.as_ref(), UnixMillis::now())).await {
        Ok(()) => {
            tracing::info!(holder = %log_holder, ?peer_pid, "update lock released");
            Response::no_content()
        }
        Err(response) => response,
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
        LockError::InvalidHolder { .. }
        | LockError::TtlOutOfRange { .. }
        | LockError::InvalidToken => Response::error(400, error.to_string()),
        // Taking a name someone else holds is a conflict; releasing it is forbidden.
        LockError::Refused { change: Change::Renew, .. } => Response::error(409, error.to_string()),
        LockError::Refused { change: Change::Release, .. } => {
            Response::error(403, error.to_string())
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

        let taken = locks.acquire("navigation", Some(MINUTE * 10), None, now).unwrap();
        let lease = taken.lease;
        assert_eq!(lease, Lease { holder: "navigation".into(), until: UnixMillis(1_600_000) });
        assert_eq!(locks.active(now).unwrap(), vec![lease.clone()]);
        let file = std::fs::read(locks.dir().join("navigation.lock")).unwrap();
        let on_disk: Lease = serde_json::from_slice(&file).unwrap();
        assert_eq!(on_disk, lease);

        locks.release("navigation", Some(&taken.token), now).unwrap();
        assert_eq!(locks.active(now).unwrap(), vec![]);
        locks.release("navigation", None, now).unwrap();
    }

    #[test]
    fn reacquiring_renews_the_lease() {
        let dir = tempfile::tempdir().unwrap();
        let locks = locks(&dir);
        let first = locks.acquire("arm", None, None, UnixMillis(1_000_000)).unwrap();
        assert_eq!(first.lease.until, UnixMillis(1_060_000), "None takes the default TTL");
        let renewed =
            locks.acquire("arm", None, Some(&first.token), UnixMillis(1_050_000)).unwrap();
        assert_eq!(renewed.lease.until, UnixMillis(1_110_000));
        assert_eq!(renewed.token, first.token, "renewing keeps the token");
        assert_eq!(locks.active(UnixMillis(1_070_000)).unwrap(), vec![renewed.lease]);
    }

    #[test]
    fn lease_is_in_force_until_its_last_millisecond_and_not_after() {
        let dir = tempfile::tempdir().unwrap();
        let locks = locks(&dir);
        let lease = locks.acquire("arm", Some(MINUTE), None, UnixMillis(5_000)).unwrap().lease;
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
        locks.acquire("short", Some(MINUTE), None, now).unwrap();
        locks.acquire("long", Some(MINUTE * 30), None, now).unwrap();
        locks.acquire("middle", Some(MINUTE * 5), None, now).unwrap();
        let holders: Vec<_> = locks.active(now).unwrap().into_iter().map(|l| l.holder).collect();
        assert_eq!(holders, ["long", "middle", "short"]);
    }

    #[test]
    fn holder_names_that_are_not_safe_file_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let locks = locks(&dir);
        let long = "a".repeat(65);
        for bad in ["../x", "a/b", "", long.as_str(), ".hidden", "..", "-x", "a b", "é"] {
            let err = locks.acquire(bad, None, None, UnixMillis(0)).unwrap_err();
            assert!(matches!(&err, LockError::InvalidHolder { holder, .. } if holder == bad));
            assert!(err.to_string().contains("starting with a letter or digit"), "{err}");
            let released = locks.release(bad, None, UnixMillis(0));
            assert!(matches!(released, Err(LockError::InvalidHolder { .. })));
            if bad != "a/b" {
                // (`a/b` is holder `b` of application directory `a` to a forced release.)
                let forced = locks.release_forced(bad);
                assert!(matches!(forced, Err(LockError::InvalidHolder { .. })), "{bad}");
            }
        }
        assert_eq!(locks.active(UnixMillis(0)).unwrap(), vec![]);
        for good in ["a".repeat(64).as_str(), "nav-2.main_loop", "9lives"] {
            locks.acquire(good, None, None, UnixMillis(0)).unwrap();
        }
    }

    #[test]
    fn ttl_outside_one_second_to_one_day_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let locks = locks(&dir);
        for bad in [Duration::ZERO, Duration::from_millis(999), MAX_TTL + Duration::from_secs(1)] {
            let err = locks.acquire("arm", Some(bad), None, UnixMillis(0)).unwrap_err();
            assert!(matches!(err, LockError::TtlOutOfRange { ttl } if ttl == bad));
        }
        let taken = locks.acquire("arm", Some(MIN_TTL), None, UnixMillis(0)).unwrap();
        locks.acquire("arm", Some(MAX_TTL), Some(&taken.token), UnixMillis(0)).unwrap();
    }

    #[test]
    fn default_ttl_out_of_range_is_clamped() {
        let dir = tempfile::tempdir().unwrap();
        let locks = UpdateLocks::new(dir.path(), Duration::from_secs(7 * 24 * 60 * 60));
        let lease = locks.acquire("arm", None, None, UnixMillis(0)).unwrap().lease;
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
        locks.acquire("arm", Some(Duration::from_secs(60)), None, now).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"keep me", "the link was not followed");
        assert!(!std::fs::symlink_metadata(locks.dir().join("arm.lock")).unwrap().is_symlink());
        // A link and a FIFO posing as lock files: not read through, not blocked on.
        std::os::unix::fs::symlink(&target, locks.dir().join("leak.lock")).unwrap();
        nix::unistd::mkfifo(&locks.dir().join("stall.lock"), Mode::S_IRWXU).unwrap();
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

    // ---- who may renew or release ----

    fn token(seed: u8) -> Token {
        format!("{seed:02x}").repeat(TOKEN_BYTES).parse().unwrap()
    }

    #[test]
    fn only_the_token_a_lease_was_taken_with_may_change_it_while_it_is_in_force() {
        let until = UnixMillis(5_000);
        let taken_with_1 = FileLease { until, token_sha256: Some(token(1).digest()) };
        let written_by_app = FileLease { until, token_sha256: None };
        let cases = [
            (None, None, Ok(())),
            (None, Some(token(2)), Ok(())),
            (Some(taken_with_1), Some(token(1)), Ok(())),
            (Some(taken_with_1), None, Err(Refusal::TokenMissing { until })),
            (Some(taken_with_1), Some(token(2)), Err(Refusal::TokenWrong { until })),
            (Some(written_by_app), None, Err(Refusal::WrittenByApp { until })),
            (Some(written_by_app), Some(token(1)), Err(Refusal::WrittenByApp { until })),
        ];
        for (in_force, presented, expected) in cases {
            assert_eq!(
                may_change(in_force.as_ref(), presented.as_ref()),
                expected,
                "{in_force:?} {presented:?}"
            );
        }
    }

    #[test]
    fn tokens_are_32_random_hex_digits_and_only_their_hash_is_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let locks = locks(&dir);
        let a = locks.acquire("a", None, None, UnixMillis(0)).unwrap().token;
        let b = locks.acquire("b", None, None, UnixMillis(0)).unwrap().token;
        assert_ne!(a, b);
        assert_eq!(a.as_str().parse::<Token>().unwrap(), a, "the agent's tokens parse");
        let file = std::fs::read_to_string(locks.dir().join("a.lock")).unwrap();
        assert!(!file.contains(a.as_str()), "the token itself is not on disk: {file}");
        let json: serde_json::Value = serde_json::from_str(&file).unwrap();
        assert_eq!(json["token_sha256"], fleet_proto::hex::encode(&a.digest()));
    }

    #[test]
    fn a_token_that_the_agent_could_not_have_made_is_refused() {
        let long = "0".repeat(33);
        for bad in ["", "0123", long.as_str(), &"A".repeat(32), &"g".repeat(32), &"é".repeat(16)] {
            let err = bad.parse::<Token>().unwrap_err();
            assert!(err.to_string().contains("32 lower-case hex digits"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn a_lease_in_force_is_renewed_or_released_only_with_its_token() {
        let dir = tempfile::tempdir().unwrap();
        let locks = locks(&dir);
        let now = UnixMillis(1_000_000);
        let taken = locks.acquire("arm", Some(MINUTE), None, now).unwrap();

        for (presented, refusal) in [
            (None, Refusal::TokenMissing { until: taken.lease.until }),
            (Some(token(7)), Refusal::TokenWrong { until: taken.lease.until }),
        ] {
            let err = locks.acquire("arm", Some(MAX_TTL), presented.as_ref(), now).unwrap_err();
            assert!(
                matches!(&err, LockError::Refused { change: Change::Renew, refusal: r, .. } if *r == refusal),
                "{err}"
            );
            let err = locks.release("arm", presented.as_ref(), now).unwrap_err();
            assert!(
                matches!(&err, LockError::Refused { change: Change::Release, refusal: r, .. } if *r == refusal),
                "{err}"
            );
        }
        let message = locks.release("arm", None, now).unwrap_err().to_string();
        assert!(message.contains("held by another client until 1060000"), "{message}");
        assert!(message.contains("pass its token"), "{message}");
        assert_eq!(locks.active(now).unwrap(), vec![taken.lease.clone()], "nothing changed");

        locks.release("arm", Some(&taken.token), now).unwrap();
        assert_eq!(locks.active(now).unwrap(), vec![]);
    }

    #[test]
    fn once_a_lease_has_ended_anyone_takes_the_name_with_a_fresh_token() {
        let dir = tempfile::tempdir().unwrap();
        let locks = locks(&dir);
        let first = locks.acquire("arm", Some(MINUTE), None, UnixMillis(0)).unwrap();
        let ended = first.lease.until;
        locks.release("arm", None, ended).unwrap();
        assert!(locks.dir().join("arm.lock").exists(), "an expired file is left in place");
        let second = locks.acquire("arm", Some(MINUTE), None, ended).unwrap();
        assert_ne!(second.token, first.token);
        // A late renewal with the old token finds the name taken anew: it is no longer its lease.
        let err = locks.acquire("arm", None, Some(&first.token), ended).unwrap_err();
        assert!(matches!(err, LockError::Refused { refusal: Refusal::TokenWrong { .. }, .. }));
    }

    #[test]
    fn a_lease_keeps_its_owner_across_an_agent_restart() {
        let dir = tempfile::tempdir().unwrap();
        let now = UnixMillis(1_000_000);
        let taken = locks(&dir).acquire("arm", Some(MINUTE), None, now).unwrap();
        let restarted = locks(&dir);
        let err = restarted.acquire("arm", None, None, now).unwrap_err();
        assert!(matches!(err, LockError::Refused { .. }), "{err}");
        let renewed = restarted.acquire("arm", None, Some(&taken.token), now).unwrap();
        assert_eq!(renewed.token, taken.token);
        restarted.release("arm", Some(&taken.token), now).unwrap();
    }

    #[test]
    fn a_lock_file_an_app_wrote_is_ended_only_by_deleting_it_or_by_force() {
        let dir = tempfile::tempdir().unwrap();
        let locks = locks(&dir);
        let now = UnixMillis(1_700_000_000_000);
        write_app_file(&locks, "touched.lock", b"", now);
        write_app_file(&locks, "json.lock", br#"{"until":1700000030000}"#, now);
        for holder in ["touched", "json"] {
            let err = locks.release(holder, Some(&token(1)), now).unwrap_err();
            assert!(
                matches!(err, LockError::Refused { refusal: Refusal::WrittenByApp { .. }, .. }),
                "{err}"
            );
            assert!(err.to_string().contains("by rewriting or deleting the file"), "{err}");
            let err = locks.acquire(holder, None, None, now).unwrap_err();
            assert!(matches!(err, LockError::Refused { change: Change::Renew, .. }), "{err}");
        }
        assert_eq!(locks.active(now).unwrap().len(), 2, "both still hold");
        locks.release_forced("touched").unwrap();
        locks.release_forced("json").unwrap();
        locks.release_forced("json").unwrap();
        assert_eq!(locks.active(now).unwrap(), vec![]);
    }

    // ---- per-application directories ----

    fn write_in_app_dir(locks: &UpdateLocks, app: &str, name: &str, now: UnixMillis) {
        write_app_file(locks, &format!("{app}/{name}"), b"", now);
    }

    fn holders(locks: &UpdateLocks, now: UnixMillis) -> Vec<String> {
        locks.active(now).unwrap().into_iter().map(|l| l.holder).collect()
    }

    #[test]
    fn leases_in_application_directories_count_and_are_named_app_slash_holder() {
        let dir = tempfile::tempdir().unwrap();
        let locks = locks(&dir);
        let now = UnixMillis(1_700_000_000_000);
        std::fs::create_dir_all(locks.dir().join("nav")).unwrap();
        std::fs::create_dir_all(locks.dir().join("arm")).unwrap();
        write_in_app_dir(&locks, "nav", "mission.lock", now);
        write_in_app_dir(&locks, "arm", "grip.lock", now.saturating_add(MINUTE));
        write_in_app_dir(&locks, "arm", "notes.txt", now);
        write_app_file(&locks, "top.lock", b"", now);
        assert_eq!(holders(&locks, now), ["arm/grip", "nav/mission", "top"]);
        // The default TTL and MAX_TTL apply there as at the top.
        assert_eq!(holders(&locks, now.saturating_add(MINUTE)), ["arm/grip"]);
    }

    #[test]
    fn linked_badly_named_or_nested_application_directories_are_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let locks = locks(&dir);
        let now = UnixMillis(1_700_000_000_000);
        let outside = tempfile::tempdir().unwrap();
        write_app_file(&UpdateLocks::new(outside.path(), MINUTE), "elsewhere.lock", b"", now);
        std::fs::create_dir_all(locks.dir()).unwrap();
        std::os::unix::fs::symlink(outside.path(), locks.dir().join("linked")).unwrap();
        for odd in [".hidden", "a b", "nav/deeper"] {
            std::fs::create_dir_all(locks.dir().join(odd)).unwrap();
            write_in_app_dir(&locks, odd, "x.lock", now);
        }
        write_app_file(&locks, "plainfile", b"", now);
        // Inside an application directory, links and FIFOs are not followed or waited on.
        std::os::unix::fs::symlink(
            outside.path().join("elsewhere.lock"),
            locks.dir().join("nav/leak.lock"),
        )
        .unwrap();
        nix::unistd::mkfifo(&locks.dir().join("nav/stall.lock"), Mode::S_IRWXU).unwrap();
        assert_eq!(holders(&locks, now), Vec::<String>::new());
    }

    #[test]
    fn at_most_256_directories_and_1024_lock_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let locks = locks(&dir);
        let now = UnixMillis(1_700_000_000_000);
        for i in 0..MAX_SUBDIRS + 10 {
            std::fs::create_dir_all(locks.dir().join(format!("app{i}"))).unwrap();
            write_in_app_dir(&locks, &format!("app{i}"), "x.lock", now);
        }
        assert_eq!(locks.active(now).unwrap().len(), MAX_SUBDIRS);
        for i in 0..MAX_LOCK_FILES {
            write_app_file(&locks, &format!("top{i}.lock"), b"", now);
        }
        assert_eq!(locks.active(now).unwrap().len(), MAX_LOCK_FILES);
    }

    #[test]
    fn an_application_flooding_its_directory_crowds_out_no_other_lock() {
        let dir = tempfile::tempdir().unwrap();
        let locks = locks(&dir);
        let now = UnixMillis(1_700_000_000_000);
        write_app_file(&locks, "operator.lock", b"", now);
        // "a-flood" sorts first and writes more lock files than all apps may have together.
        std::fs::create_dir_all(locks.dir().join("a-flood")).unwrap();
        for i in 0..MAX_LOCK_FILES + 10 {
            write_in_app_dir(&locks, "a-flood", &format!("f{i}.lock"), now);
        }
        std::fs::create_dir_all(locks.dir().join("z-arm")).unwrap();
        write_in_app_dir(&locks, "z-arm", "grip.lock", now);
        let held = holders(&locks, now);
        assert_eq!(
            held.iter().filter(|h| h.starts_with("a-flood/")).count(),
            MAX_LOCK_FILES_PER_APP
        );
        assert!(held.contains(&"z-arm/grip".to_owned()), "{held:?}");
        assert!(held.contains(&"operator".to_owned()), "{held:?}");
    }

    #[test]
    fn forced_release_reaches_application_directories_but_never_through_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let locks = locks(&dir);
        let now = UnixMillis(1_700_000_000_000);
        std::fs::create_dir_all(locks.dir().join("nav")).unwrap();
        write_in_app_dir(&locks, "nav", "mission.lock", now);
        locks.release_forced("nav/mission").unwrap();
        assert_eq!(holders(&locks, now), Vec::<String>::new());
        locks.release_forced("nav/mission").unwrap();
        locks.release_forced("gone/mission").unwrap();

        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("mission.lock"), b"keep me").unwrap();
        std::fs::remove_dir(locks.dir().join("nav")).unwrap();
        std::os::unix::fs::symlink(outside.path(), locks.dir().join("nav")).unwrap();
        locks.release_forced("nav/mission").unwrap();
        assert!(outside.path().join("mission.lock").exists(), "the link was not followed");
        for bad in ["../x/mission", "nav/../x", "nav/a/b", "/abs"] {
            let err = locks.release_forced(bad).unwrap_err();
            assert!(matches!(err, LockError::InvalidHolder { .. }), "{bad}: {err}");
        }
    }

    // ---- socket API ----

    struct Server {
        socket: PathBuf,
        stop: tokio::sync::oneshot::Sender<()>,
        task: tokio::task::JoinHandle<Result<(), LockError>>,
        dir: tempfile::TempDir,
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
                return Server { socket, stop, task, dir };
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

    async fn call_with_token(
        socket: &Path,
        method: &str,
        target: &str,
        token: &Token,
    ) -> (u16, String) {
        let token = token.as_str();
        let request = format!(
            "{method} {target} HTTP/1.1\r\nHost: localhost\r\n{TOKEN_HEADER}: {token}\r\n\r\n"
        );
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
        let Taken { lease, token } = serde_json::from_str(&body).unwrap();
        assert_eq!(lease.holder, "navigation");
        assert!(lease.until >= before.saturating_add(Duration::from_secs(600)));
        assert!(lease.until <= UnixMillis::now().saturating_add(Duration::from_secs(600)));

        let (status, body) = call(socket, "GET", "/v1/locks").await;
        assert_eq!(status, 200);
        assert_eq!(serde_json::from_str::<Vec<Lease>>(&body).unwrap(), vec![lease]);

        let (status, body) =
            call_with_token(socket, "DELETE", "/v1/locks/navigation", &token).await;
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
            ("DELETE", "/v1/locks/arm?token=00", 400, "the token goes in Fleet-Lock-Token"),
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

    #[tokio::test]
    async fn socket_renews_and_releases_a_lease_only_with_its_token() {
        let server = start(REQUEST_TIMEOUT).await;
        let socket = &server.socket;
        let (status, body) = call(socket, "POST", "/v1/locks/nav?ttl=600").await;
        assert_eq!(status, 200, "{body}");
        let taken: Taken = serde_json::from_str(&body).unwrap();
        let other = token(9);

        let (status, body) = call(socket, "POST", "/v1/locks/nav?ttl=1").await;
        assert_eq!(status, 409, "{body}");
        let until = taken.lease.until.0;
        let expected =
            format!("held by another client until {until} (ms since epoch); pass its token");
        assert!(error_of(&body).contains(&expected), "{body}");
        let (status, body) = call_with_token(socket, "POST", "/v1/locks/nav", &other).await;
        assert_eq!(status, 409, "{body}");
        assert!(error_of(&body).contains("not its token"), "{body}");
        let (status, body) = call(socket, "DELETE", "/v1/locks/nav").await;
        assert_eq!(status, 403, "{body}");
        assert!(error_of(&body).contains("cannot release update lock \"nav\""), "{body}");
        let (status, body) = call_with_token(socket, "DELETE", "/v1/locks/nav", &other).await;
        assert_eq!(status, 403, "{body}");
        let bad = format!("DELETE /v1/locks/nav HTTP/1.1\r\n{TOKEN_HEADER}: secret\r\n\r\n");
        let (status, body) = send(socket, &bad).await;
        assert_eq!(status, 400, "{body}");
        assert!(error_of(&body).contains("invalid lock token"), "{body}");
        let (_, body) = call(socket, "GET", "/v1/locks").await;
        assert_eq!(serde_json::from_str::<Vec<Lease>>(&body).unwrap(), vec![taken.lease.clone()]);

        let (status, body) =
            call_with_token(socket, "POST", "/v1/locks/nav?ttl=60", &taken.token).await;
        assert_eq!(status, 200, "{body}");
        let renewed: Taken = serde_json::from_str(&body).unwrap();
        assert_eq!(renewed.token, taken.token);
        assert!(renewed.lease.until < taken.lease.until, "the holder shortened its lease");
        let (status, _) = call_with_token(socket, "DELETE", "/v1/locks/nav", &taken.token).await;
        assert_eq!(status, 204);
        let (status, _) = call(socket, "DELETE", "/v1/locks/nav").await;
        assert_eq!(status, 204, "releasing when no lease is in force is idempotent");
    }

    #[tokio::test]
    async fn socket_neither_releases_nor_takes_over_a_lock_file_an_app_wrote() {
        let server = start(REQUEST_TIMEOUT).await;
        let socket = &server.socket;
        let dir = server.dir.path().join("locks");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("mission.lock"), b"").unwrap();
        let (status, body) = call(socket, "DELETE", "/v1/locks/mission").await;
        assert_eq!(status, 403, "{body}");
        assert!(error_of(&body).contains("its application wrote the lock file"), "{body}");
        let (status, body) = call_with_token(socket, "POST", "/v1/locks/mission", &token(1)).await;
        assert_eq!(status, 409, "{body}");
        assert!(dir.join("mission.lock").exists());
        let (_, body) = call(socket, "GET", "/v1/locks").await;
        assert!(body.contains("\"mission\""), "{body}");
    }
}
