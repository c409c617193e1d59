//! The agent's durable state, in one redb file under the data directory
//! (`<data_dir>/state/state.redb`), or, for simulated agents, in memory
//! ([`AgentState::in_memory`]).
//!
//! What is kept and why:
//! * `desired` — the last accepted desired state (server generation or local release): after a
//!   reboot with no network the agent converges to it.
//! * `proven` — the release last proven healthy on this device, and `previous` — the one
//!   before it. Rollback targets `proven`; image pruning keeps both.
//! * `failed_generation` — a generation that was rolled back is not retried until the server
//!   sends a newer one.
//! * `journal` — every update step, written before and after it runs.
//! * `server_desired` — the generation and digest of the last desired state accepted from the
//!   server (kept apart from `desired`, which a local apply replaces), so a replayed or older
//!   state is refused after a restart too.
//! * `commands` — ids of recently run commands, so a redelivered command never runs twice.
//!
//! Durability: every write is one redb transaction committed with immediate durability (fsync),
//! so "persisted" means "on disk" when a setter returns.
//!
//! Before redb the agent kept this state in sled, in the same directory. On the first start
//! after the upgrade [`AgentState::open`] finds sled's files and no redb file, runs
//! `fleet-agent-sled-export` (a program of its own, so the agent does not link sled; see
//! [`migrate`]) and imports what it prints in one transaction before the file takes its name;
//! sled's files then move to `sled-migrated/` beside it, where an older agent could still use
//! them. Without the exporter the agent refuses to start rather than forget which release was
//! proven.
//!
//! The in-memory backend keeps the same records behind the same API, encoded the same way; it
//! "survives a restart" for as long as a clone of the handle is kept (the fleet simulator keeps
//! one per device across its agent's restarts). It exists because each database on disk costs a
//! file, a page cache and a lock: nothing at one per device, too much at ten thousand simulated
//! devices in one process.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use fleet_proto::report::UpdateOutcome;
use fleet_proto::{ReleaseSpec, UnixMillis};
use redb::{Database, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub mod migrate;

/// Where a desired release came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Origin {
    /// The fleet server, with its desired-state generation.
    Server {
        /// Generation.
        generation: u64,
    },
    /// `fleet-agent apply` on the device; `seq` counts local applies.
    Local {
        /// Local apply counter.
        seq: u64,
    },
}

/// A desired state the agent accepted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Accepted {
    /// Where it came from.
    pub origin: Origin,
    /// What should run (`None`: no application).
    pub release: Option<ReleaseSpec>,
    /// When it was accepted.
    pub accepted_at: UnixMillis,
}

/// The last desired state accepted from the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerDesired {
    /// Its generation.
    pub generation: u64,
    /// SHA-256 of its signed payload, hex: the broker's retained copy of the same state is
    /// recognised and ignored rather than refused as a replay.
    pub digest: String,
}

/// Command ids remembered (the server issues ids in increasing order; a redelivery comes soon).
const COMMANDS_KEEP: usize = 256;

/// A release proven healthy on this device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proven {
    /// Where it came from.
    pub origin: Origin,
    /// The release (`None`: no application).
    pub release: Option<ReleaseSpec>,
    /// When it was proven.
    pub proven_at: UnixMillis,
}

/// One journal record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// When.
    pub at: UnixMillis,
    /// Which update (desired origin, as text).
    pub update: String,
    /// The step, e.g. `create fleet-d1-web-1a2b3c`.
    pub step: String,
    /// `begin`, `done`, or `failed: <reason>`.
    pub phase: String,
}

/// Why the state store failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The database failed (another agent holding the file shows up here too).
    #[error("agent state at {path}: {message} (is another fleet-agent running with the same data directory?)")]
    Db {
        /// The database file.
        path: String,
        /// What redb said.
        message: String,
    },
    /// A record does not decode.
    #[error("agent state record {key} is corrupt")]
    Corrupt {
        /// Which record.
        key: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The state from before redb could not be moved over; nothing was changed.
    #[error("agent state at {path}: {reason}")]
    Migration {
        /// The state directory.
        path: String,
        /// What failed and what to do.
        reason: String,
    },
}

/// Journal entries kept; older ones are trimmed.
const JOURNAL_KEEP: u64 = 2000;

/// The file in the state directory.
pub const STATE_FILE: &str = "state.redb";

/// redb's page cache (its default is 1 GiB): the state is a few records.
const CACHE_BYTES: usize = 256 << 10;

/// Single records (`desired`, `proven`, ...): key → JSON.
const RECORDS: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("records");
/// Images this agent has used: name → nothing.
const IMAGES: TableDefinition<'static, &str, ()> = TableDefinition::new("images");
/// The update journal: sequence number → JSON.
const JOURNAL: TableDefinition<'static, u64, &[u8]> = TableDefinition::new("journal");

/// The agent's state database: redb on a device, memory in the simulator.
#[derive(Debug, Clone)]
pub struct AgentState {
    store: Store,
}

#[derive(Debug, Clone)]
enum Store {
    Redb { path: String, db: Arc<Database> },
    Memory(Arc<Mutex<Memory>>),
}

/// The in-memory backend's records, as redb would hold them.
#[derive(Debug, Default)]
struct Memory {
    records: BTreeMap<String, Vec<u8>>,
    images: BTreeSet<String>,
    journal: BTreeMap<u64, Vec<u8>>,
    next_id: u64,
}

impl Memory {
    fn lock(m: &Mutex<Memory>) -> std::sync::MutexGuard<'_, Memory> {
        // Every update below is a single map operation: a panic elsewhere leaves it consistent.
        m.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Opens (or creates) the redb file at `file`, upgraded to redb's v3 file format (which redb 3
/// requires) if it is not in it yet.
fn open_db(file: &Path) -> Result<Database, StateError> {
    let path = file.display().to_string();
    let err = db_err(&path);
    let mut db = redb::Builder::new().set_cache_size(CACHE_BYTES).create(file).or_db(&err)?;
    // Into the file format the next major redb version reads (see `telemetry::redb_store`).
    db.upgrade().or_db(&err)?;
    // Create the tables once, so readers never meet a missing one.
    let tx = db.begin_write().or_db(&err)?;
    tx.open_table(RECORDS).or_db(&err)?;
    tx.open_table(IMAGES).or_db(&err)?;
    tx.open_table(JOURNAL).or_db(&err)?;
    tx.commit().or_db(&err)?;
    Ok(db)
}

fn db_err(path: &str) -> impl Fn(&dyn std::fmt::Display) -> StateError + '_ {
    move |e| StateError::Db { path: path.to_owned(), message: e.to_string() }
}

// `map_err(&err)` takes the error by value; these adapt each redb error type to `&dyn Display`.
trait RedbResult<T> {
    fn or_db(self, err: &impl Fn(&dyn std::fmt::Display) -> StateError) -> Result<T, StateError>;
}
impl<T, E: std::fmt::Display> RedbResult<T> for Result<T, E> {
    fn or_db(self, err: &impl Fn(&dyn std::fmt::Display) -> StateError) -> Result<T, StateError> {
        self.map_err(|e| err(&e))
    }
}

impl AgentState {
    /// Opens (or creates) the state under `dir`, first moving over a state that an agent from
    /// before redb left there in sled (with `fleet-agent-sled-export`, found by
    /// [`migrate::exporter`]).
    pub fn open(dir: &Path) -> Result<AgentState, StateError> {
        Self::open_migrating_with(dir, migrate::exporter().as_deref())
    }

    /// [`AgentState::open`] with the sled exporter at `exporter` (`None`: not installed).
    pub fn open_migrating_with(
        dir: &Path,
        exporter: Option<&Path>,
    ) -> Result<AgentState, StateError> {
        std::fs::create_dir_all(dir).map_err(|e| StateError::Db {
            path: dir.display().to_string(),
            message: format!("cannot create the directory: {e}"),
        })?;
        let file = dir.join(STATE_FILE);
        migrate::from_sled_if_needed(dir, &file, exporter)?;
        let db = open_db(&file)?;
        Ok(AgentState { store: Store::Redb { path: file.display().to_string(), db: Arc::new(db) } })
    }

    /// An empty state in memory, for simulated agents; clones share it, so a clone kept across
    /// an agent's restart is what that agent finds again.
    pub fn in_memory() -> AgentState {
        AgentState { store: Store::Memory(Arc::default()) }
    }

    fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StateError> {
        let bytes = match &self.store {
            Store::Redb { path, db } => {
                let err = db_err(path);
                let tx = db.begin_read().or_db(&err)?;
                let table = tx.open_table(RECORDS).or_db(&err)?;
                let value = table.get(key).or_db(&err)?;
                value.map(|v| v.value().to_vec())
            }
            Store::Memory(m) => Memory::lock(m).records.get(key).cloned(),
        };
        match bytes {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|source| StateError::Corrupt { key: key.to_owned(), source }),
        }
    }

    fn put<T: Serialize>(&self, key: &str, value: &T) -> Result<(), StateError> {
        // Plain data structs: JSON encoding cannot fail.
        let bytes = serde_json::to_vec(value).expect("agent state records always encode");
        match &self.store {
            Store::Redb { path, db } => {
                let err = db_err(path);
                let tx = db.begin_write().or_db(&err)?;
                tx.open_table(RECORDS).or_db(&err)?.insert(key, bytes.as_slice()).or_db(&err)?;
                tx.commit().or_db(&err)?;
            }
            Store::Memory(m) => {
                Memory::lock(m).records.insert(key.to_owned(), bytes);
            }
        }
        Ok(())
    }

    /// The accepted desired state.
    pub fn desired(&self) -> Result<Option<Accepted>, StateError> {
        self.get("desired")
    }

    /// Records a newly accepted desired state (flushed to disk before returning).
    pub fn set_desired(&self, accepted: &Accepted) -> Result<(), StateError> {
        self.put("desired", accepted)
    }

    /// The release proven healthy.
    pub fn proven(&self) -> Result<Option<Proven>, StateError> {
        self.get("proven")
    }

    /// The release proven before the current one.
    pub fn previous(&self) -> Result<Option<Proven>, StateError> {
        self.get("previous")
    }

    /// Records `proven` as proven healthy; the old proven release becomes `previous`.
    pub fn set_proven(&self, proven: &Proven) -> Result<(), StateError> {
        if let Some(old) = self.proven()? {
            if old.release.as_ref().map(|r| &r.id) != proven.release.as_ref().map(|r| &r.id) {
                self.put("previous", &old)?;
            }
        }
        self.put("proven", proven)
    }

    /// The origin whose update was rolled back (not retried until a newer one arrives).
    pub fn failed(&self) -> Result<Option<Origin>, StateError> {
        self.get("failed")
    }

    /// Marks `origin` as failed.
    pub fn set_failed(&self, origin: Option<Origin>) -> Result<(), StateError> {
        self.put("failed", &origin)
    }

    /// How the last update ended.
    pub fn last_outcome(&self) -> Result<Option<UpdateOutcome>, StateError> {
        self.get("last_outcome")
    }

    /// Records how the last update ended.
    pub fn set_last_outcome(&self, outcome: &UpdateOutcome) -> Result<(), StateError> {
        self.put("last_outcome", outcome)
    }

    /// The last desired state accepted from the server.
    pub fn server_desired(&self) -> Result<Option<ServerDesired>, StateError> {
        self.get("server_desired")
    }

    /// Records a desired state accepted from the server (flushed before returning).
    pub fn set_server_desired(&self, accepted: &ServerDesired) -> Result<(), StateError> {
        self.put("server_desired", accepted)
    }

    /// The secret files the stored releases bind, their values sealed (to write them again
    /// after a reboot).
    pub fn secret_records(&self) -> Result<Vec<crate::secrets::SecretRecord>, StateError> {
        Ok(self.get("secret_files")?.unwrap_or_default())
    }

    /// Replaces the secret files' records (flushed before returning).
    pub fn set_secret_records(
        &self,
        records: &[crate::secrets::SecretRecord],
    ) -> Result<(), StateError> {
        self.put("secret_files", &records)
    }

    /// Records command `id` as run. Returns `false` if it was already recorded (then it must
    /// not run again). Flushed before returning, so a reboot command does not repeat itself.
    pub fn remember_command(&self, id: u64) -> Result<bool, StateError> {
        let mut ids: Vec<u64> = self.get("commands")?.unwrap_or_default();
        if ids.contains(&id) {
            return Ok(false);
        }
        ids.push(id);
        if ids.len() > COMMANDS_KEEP {
            ids.drain(..ids.len() - COMMANDS_KEEP);
        }
        self.put("commands", &ids)?;
        Ok(true)
    }

    /// Counter for local applies (so each `fleet-agent apply` is a new update).
    pub fn next_local_seq(&self) -> Result<u64, StateError> {
        let next = self.get::<u64>("local_seq")?.unwrap_or(0) + 1;
        self.put("local_seq", &next)?;
        Ok(next)
    }

    /// Remembers that this agent uses `image` (only such images are ever pruned).
    pub fn remember_image(&self, image: &str) -> Result<(), StateError> {
        match &self.store {
            Store::Redb { path, db } => {
                let err = db_err(path);
                let tx = db.begin_write().or_db(&err)?;
                tx.open_table(IMAGES).or_db(&err)?.insert(image, ()).or_db(&err)?;
                tx.commit().or_db(&err)?;
            }
            Store::Memory(m) => {
                Memory::lock(m).images.insert(image.to_owned());
            }
        }
        Ok(())
    }

    /// Forgets a pruned image.
    pub fn forget_image(&self, image: &str) -> Result<(), StateError> {
        match &self.store {
            Store::Redb { path, db } => {
                let err = db_err(path);
                let tx = db.begin_write().or_db(&err)?;
                tx.open_table(IMAGES).or_db(&err)?.remove(image).or_db(&err)?;
                tx.commit().or_db(&err)?;
            }
            Store::Memory(m) => {
                Memory::lock(m).images.remove(image);
            }
        }
        Ok(())
    }

    /// Images this agent has used.
    pub fn known_images(&self) -> Result<Vec<String>, StateError> {
        match &self.store {
            Store::Redb { path, db } => {
                let err = db_err(path);
                let tx = db.begin_read().or_db(&err)?;
                let table = tx.open_table(IMAGES).or_db(&err)?;
                let mut out = vec![];
                for entry in table.iter().or_db(&err)? {
                    out.push(entry.or_db(&err)?.0.value().to_owned());
                }
                Ok(out)
            }
            Store::Memory(m) => Ok(Memory::lock(m).images.iter().cloned().collect()),
        }
    }

    /// Appends a journal record (on disk when this returns).
    pub fn journal(&self, entry: &JournalEntry) -> Result<(), StateError> {
        let bytes = serde_json::to_vec(entry).expect("journal entries always encode");
        match &self.store {
            Store::Redb { path, db } => {
                let err = db_err(path);
                let tx = db.begin_write().or_db(&err)?;
                {
                    let mut journal = tx.open_table(JOURNAL).or_db(&err)?;
                    let last = journal.last().or_db(&err)?.map(|(k, _)| k.value());
                    let seq = last.map_or(0, |s| s + 1);
                    journal.insert(seq, bytes.as_slice()).or_db(&err)?;
                    // Trimmed in batches: one range delete every 256 entries.
                    if seq % 256 == 0 && seq > JOURNAL_KEEP {
                        journal.retain_in(..seq - JOURNAL_KEEP, |_, _| false).or_db(&err)?;
                    }
                }
                tx.commit().or_db(&err)?;
            }
            Store::Memory(m) => {
                let mut m = Memory::lock(m);
                let seq = m.next_id;
                m.next_id += 1;
                m.journal.insert(seq, bytes);
                if m.journal.len() as u64 > JOURNAL_KEEP {
                    m.journal.pop_first();
                }
            }
        }
        Ok(())
    }

    /// The last `n` journal records, oldest first.
    pub fn journal_tail(&self, n: usize) -> Result<Vec<JournalEntry>, StateError> {
        let raw: Vec<(u64, Vec<u8>)> = match &self.store {
            Store::Redb { path, db } => {
                let err = db_err(path);
                let tx = db.begin_read().or_db(&err)?;
                let journal = tx.open_table(JOURNAL).or_db(&err)?;
                let mut raw = vec![];
                for entry in journal.iter().or_db(&err)?.rev().take(n) {
                    let (k, v) = entry.or_db(&err)?;
                    raw.push((k.value(), v.value().to_vec()));
                }
                raw
            }
            Store::Memory(m) => {
                Memory::lock(m).journal.iter().rev().take(n).map(|(k, v)| (*k, v.clone())).collect()
            }
        };
        let mut out: Vec<JournalEntry> = raw
            .into_iter()
            .map(|(seq, v)| {
                serde_json::from_slice(&v)
                    .map_err(|source| StateError::Corrupt { key: format!("journal/{seq}"), source })
            })
            .collect::<Result<_, _>>()?;
        out.reverse();
        Ok(out)
    }

    /// Writes a migrated state (records, images, journal) in one transaction.
    fn import(&self, export: &migrate::Export) -> Result<(), StateError> {
        let Store::Redb { path, db } = &self.store else {
            unreachable!("only a database on disk is migrated")
        };
        let err = db_err(path);
        let tx = db.begin_write().or_db(&err)?;
        {
            let mut records = tx.open_table(RECORDS).or_db(&err)?;
            for (key, value) in &export.records {
                let bytes = serde_json::to_vec(value).expect("JSON values always encode");
                records.insert(key.as_str(), bytes.as_slice()).or_db(&err)?;
            }
            let mut images = tx.open_table(IMAGES).or_db(&err)?;
            for image in &export.images {
                images.insert(image.as_str(), ()).or_db(&err)?;
            }
            let mut journal = tx.open_table(JOURNAL).or_db(&err)?;
            for (seq, entry) in &export.journal {
                let bytes = serde_json::to_vec(entry).expect("JSON values always encode");
                journal.insert(*seq, bytes.as_slice()).or_db(&err)?;
            }
        }
        tx.commit().or_db(&err)
    }
}

#[cfg(test)]
mod tests {
    use fleet_proto::samples;

    use super::*;

    /// Each backend with a way to "reopen" it: redb opens the file again, memory hands out
    /// another clone of the same handle (what the simulator keeps across a restart).
    type Reopen = Box<dyn Fn() -> AgentState>;

    fn backends() -> Vec<(&'static str, Reopen, tempfile::TempDir)> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_owned();
        let memory = AgentState::in_memory();
        vec![
            ("redb", Box::new(move || AgentState::open_migrating_with(&path, None).unwrap()), dir),
            ("memory", Box::new(move || memory.clone()), tempfile::tempdir().unwrap()),
        ]
    }

    #[test]
    fn desired_and_proven_survive_reopening() {
        for (name, open, _dir) in backends() {
            let accepted = Accepted {
                origin: Origin::Server { generation: 4 },
                release: Some(samples::release()),
                accepted_at: UnixMillis(1),
            };
            {
                let s = open();
                s.set_desired(&accepted).unwrap();
                s.set_proven(&Proven {
                    origin: Origin::Local { seq: 1 },
                    release: None,
                    proven_at: UnixMillis(1),
                })
                .unwrap();
                s.set_proven(&Proven {
                    origin: accepted.origin,
                    release: accepted.release.clone(),
                    proven_at: UnixMillis(2),
                })
                .unwrap();
            }
            let s = open();
            assert_eq!(s.desired().unwrap(), Some(accepted.clone()), "{name}");
            assert_eq!(s.proven().unwrap().unwrap().release, accepted.release, "{name}");
            assert_eq!(
                s.previous().unwrap().unwrap().release,
                None,
                "{name}: the old proven release became previous"
            );
        }
    }

    #[test]
    fn commands_are_remembered_across_reopening() {
        for (name, open, _dir) in backends() {
            {
                let s = open();
                assert!(s.remember_command(7).unwrap(), "{name}");
                assert!(!s.remember_command(7).unwrap(), "{name}");
                s.set_server_desired(&ServerDesired { generation: 3, digest: "ab".into() })
                    .unwrap();
            }
            let s = open();
            assert!(!s.remember_command(7).unwrap(), "{name}: a restart does not forget");
            assert!(s.remember_command(8).unwrap(), "{name}");
            assert_eq!(s.server_desired().unwrap().unwrap().generation, 3, "{name}");
            for id in 100..100 + COMMANDS_KEEP as u64 {
                s.remember_command(id).unwrap();
            }
            assert!(s.remember_command(7).unwrap(), "{name}: only the recent ids are kept");
        }
    }

    #[test]
    fn journal_keeps_order_and_trims_the_oldest() {
        for (name, open, _dir) in backends() {
            let s = open();
            let entry = |i: u64| JournalEntry {
                at: UnixMillis(i),
                update: "u".into(),
                step: format!("s{i}"),
                phase: "begin".into(),
            };
            for i in 0..5 {
                s.journal(&entry(i)).unwrap();
            }
            let tail: Vec<String> =
                s.journal_tail(3).unwrap().into_iter().map(|e| e.step).collect();
            assert_eq!(tail, ["s2", "s3", "s4"], "{name}");
            for i in 5..JOURNAL_KEEP + 300 {
                s.journal(&entry(i)).unwrap();
            }
            drop(s);
            let all = open().journal_tail(usize::MAX).unwrap();
            assert!(all.len() as u64 <= JOURNAL_KEEP + 256, "{name}: {} kept", all.len());
            assert!(all.len() as u64 >= JOURNAL_KEEP, "{name}: {} kept", all.len());
            assert_eq!(all.last().unwrap().step, format!("s{}", JOURNAL_KEEP + 299), "{name}");
        }
    }

    #[test]
    fn the_state_file_is_in_the_format_the_next_redb_reads() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(STATE_FILE);
        drop(open_db(&file).unwrap());
        let mut db = Database::open(&file).unwrap();
        assert!(!db.upgrade().unwrap(), "already in the v3 format: nothing to upgrade");
    }

    #[test]
    fn images_are_remembered_and_forgotten() {
        for (name, open, _dir) in backends() {
            let s = open();
            s.remember_image("a").unwrap();
            s.remember_image("b").unwrap();
            s.forget_image("a").unwrap();
            drop(s);
            assert_eq!(open().known_images().unwrap(), ["b"], "{name}");
        }
    }

    /// A stand-in for `fleet-agent-sled-export`: a script that prints `doc` (or fails).
    fn exporter(dir: &Path, doc: &str, exit: u8) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("exporter");
        let out = dir.join("exporter.out");
        std::fs::write(&out, doc).unwrap();
        let script = format!(
            "#!/bin/sh\n[ \"$1\" = . ] && [ -f conf ] || exit 9\necho broken >&2\ncat '{}'\nexit {exit}\n",
            out.display()
        );
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// sled's files as an agent before redb left them (their content is the exporter's
    /// business, not the agent's).
    fn sled_files(dir: &Path) {
        std::fs::create_dir_all(dir.join("blobs")).unwrap();
        for f in ["conf", "db", "snap.0000000000A0"] {
            std::fs::write(dir.join(f), f).unwrap();
        }
    }

    fn export_doc() -> String {
        let desired = Accepted {
            origin: Origin::Server { generation: 9 },
            release: Some(samples::release()),
            accepted_at: UnixMillis(5),
        };
        let journal = |i: u64| {
            serde_json::to_value(JournalEntry {
                at: UnixMillis(i),
                update: "u".into(),
                step: format!("s{i}"),
                phase: "done".into(),
            })
            .unwrap()
        };
        serde_json::json!({
            "format": "fleet-agent-sled-state/1",
            "records": {
                "desired": desired,
                "proven": Proven { origin: desired.origin, release: desired.release.clone(), proven_at: UnixMillis(6) },
                "server_desired": ServerDesired { generation: 9, digest: "cafe".into() },
                "commands": [41, 42],
                "local_seq": 3,
            },
            "images": ["reg/app@sha256:aa", "reg/db@sha256:bb"],
            "journal": [[17, journal(17)], [18, journal(18)]],
        })
        .to_string()
    }

    #[test]
    fn a_sled_state_is_moved_to_redb_once_and_its_files_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("state");
        sled_files(&state_dir);
        let exporter = exporter(dir.path(), &export_doc(), 0);
        let s = AgentState::open_migrating_with(&state_dir, Some(&exporter)).unwrap();
        assert_eq!(s.desired().unwrap().unwrap().origin, Origin::Server { generation: 9 });
        assert_eq!(s.proven().unwrap().unwrap().proven_at, UnixMillis(6));
        assert_eq!(s.server_desired().unwrap().unwrap().digest, "cafe");
        assert!(!s.remember_command(42).unwrap(), "commands already run stay run");
        assert_eq!(s.next_local_seq().unwrap(), 4);
        assert_eq!(s.known_images().unwrap(), ["reg/app@sha256:aa", "reg/db@sha256:bb"]);
        let steps: Vec<String> = s.journal_tail(10).unwrap().into_iter().map(|e| e.step).collect();
        assert_eq!(steps, ["s17", "s18"]);
        s.journal(&JournalEntry {
            at: UnixMillis(19),
            update: "u".into(),
            step: "s19".into(),
            phase: "done".into(),
        })
        .unwrap();
        assert_eq!(s.journal_tail(1).unwrap()[0].step, "s19", "the journal goes on after 18");
        drop(s);
        assert!(!migrate::has_sled_state(&state_dir));
        for f in ["conf", "db", "blobs", "snap.0000000000A0"] {
            assert!(state_dir.join(migrate::MIGRATED_DIR).join(f).exists(), "{f} set aside");
        }
        assert!(!state_dir.join("state.redb.migrating").exists());
        // Started again, the agent neither needs nor runs the exporter.
        let s = AgentState::open_migrating_with(&state_dir, None).unwrap();
        assert_eq!(s.desired().unwrap().unwrap().origin, Origin::Server { generation: 9 });
    }

    #[test]
    fn without_a_working_exporter_the_agent_refuses_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("state");
        sled_files(&state_dir);
        let before: BTreeSet<_> =
            std::fs::read_dir(&state_dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        let err = AgentState::open_migrating_with(&state_dir, None).unwrap_err().to_string();
        assert!(err.contains("fleet-agent-sled-export") && err.contains("not installed"), "{err}");
        let failing = exporter(dir.path(), "{}", 3);
        let err =
            AgentState::open_migrating_with(&state_dir, Some(&failing)).unwrap_err().to_string();
        assert!(err.contains("broken") && err.contains("nothing was changed"), "{err}");
        let other = exporter(dir.path(), &export_doc().replace("state/1", "state/2"), 0);
        let err =
            AgentState::open_migrating_with(&state_dir, Some(&other)).unwrap_err().to_string();
        assert!(err.contains("fleet-agent-sled-state/2"), "{err}");
        let after: BTreeSet<_> =
            std::fs::read_dir(&state_dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(before, after, "sled's files stay, and no redb file appears");
    }

    #[test]
    fn a_migration_interrupted_after_the_rename_is_finished_at_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("state");
        let exporter = exporter(dir.path(), &export_doc(), 0);
        sled_files(&state_dir);
        drop(AgentState::open_migrating_with(&state_dir, Some(&exporter)).unwrap());
        // As if the agent died between the rename and moving sled's files aside.
        sled_files(&state_dir);
        let s = AgentState::open_migrating_with(&state_dir, None).unwrap();
        assert_eq!(s.server_desired().unwrap().unwrap().generation, 9);
        assert!(!migrate::has_sled_state(&state_dir));
    }
}
