//! The agent's durable state, in sled under the data directory (or, for simulated agents, in
//! memory: [`AgentState::in_memory`]).
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
//! Durability: sled fsyncs on a timer (500 ms); every write here that a crash must not lose is
//! followed by an explicit `flush`, so "persisted" means "on disk".
//!
//! The in-memory backend keeps the same records behind the same API, encoded the same way; it
//! "survives a restart" for as long as a clone of the handle is kept (the fleet simulator keeps
//! one per device across its agent's restarts). It exists because each sled database costs a
//! flusher thread, a page cache and several files: nothing at one per device, too much at ten
//! thousand simulated devices in one process.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use fleet_proto::report::UpdateOutcome;
use fleet_proto::{ReleaseSpec, UnixMillis};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

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
    /// sled failed (another agent holding the database shows up here too).
    #[error("agent state at {path}: {source} (is another fleet-agent running with the same data directory?)")]
    Sled {
        /// Data directory.
        path: String,
        /// What sled said.
        #[source]
        source: sled::Error,
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
}

/// Journal entries kept; older ones are trimmed.
const JOURNAL_KEEP: u64 = 2000;

/// The agent's state database: sled on a device, memory in the simulator.
#[derive(Debug, Clone)]
pub struct AgentState {
    store: Store,
}

#[derive(Debug, Clone)]
enum Store {
    Sled { path: String, db: sled::Db, journal: sled::Tree },
    Memory(Arc<Mutex<Memory>>),
}

/// The in-memory backend's records, as sled would hold them.
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

impl AgentState {
    /// Opens (or creates) the state under `dir`.
    pub fn open(dir: &Path) -> Result<AgentState, StateError> {
        let path = dir.display().to_string();
        let err = |source| StateError::Sled { path: path.clone(), source };
        // The agent's state is a few records: a small cache keeps the agent's memory small.
        let db = sled::Config::new().path(dir).cache_capacity(1 << 20).open().map_err(err)?;
        let journal = db.open_tree("journal").map_err(err)?;
        Ok(AgentState { store: Store::Sled { path, db, journal } })
    }

    /// An empty state in memory, for simulated agents; clones share it, so a clone kept across
    /// an agent's restart is what that agent finds again.
    pub fn in_memory() -> AgentState {
        AgentState { store: Store::Memory(Arc::default()) }
    }

    fn sled_err(path: &str) -> impl Fn(sled::Error) -> StateError + '_ {
        |source| StateError::Sled { path: path.to_owned(), source }
    }

    fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StateError> {
        let bytes = match &self.store {
            Store::Sled { path, db, .. } => {
                db.get(key).map_err(Self::sled_err(path))?.map(|v| v.to_vec())
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
            Store::Sled { path, db, .. } => {
                db.insert(key, bytes).map_err(Self::sled_err(path))?;
                db.flush().map_err(Self::sled_err(path))?;
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
            Store::Sled { path, db, .. } => {
                let err = Self::sled_err(path);
                let images = db.open_tree("images").map_err(&err)?;
                images.insert(image, &[]).map_err(&err)?;
                images.flush().map_err(&err)?;
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
            Store::Sled { path, db, .. } => {
                let err = Self::sled_err(path);
                db.open_tree("images").map_err(&err)?.remove(image).map_err(&err)?;
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
            Store::Sled { path, db, .. } => {
                let images = db.open_tree("images").map_err(Self::sled_err(path))?;
                Ok(images
                    .iter()
                    .keys()
                    .flatten()
                    .map(|k| String::from_utf8_lossy(&k).into_owned())
                    .collect())
            }
            Store::Memory(m) => Ok(Memory::lock(m).images.iter().cloned().collect()),
        }
    }

    /// Appends a journal record and flushes it to disk.
    pub fn journal(&self, entry: &JournalEntry) -> Result<(), StateError> {
        let bytes = serde_json::to_vec(entry).expect("journal entries always encode");
        match &self.store {
            Store::Sled { path, db, journal } => {
                let err = Self::sled_err(path);
                let seq = db.generate_id().map_err(&err)?;
                journal.insert(seq.to_be_bytes(), bytes).map_err(&err)?;
                if seq % 256 == 0 {
                    let cutoff = seq.saturating_sub(JOURNAL_KEEP).to_be_bytes();
                    for key in journal.range(..cutoff).keys().flatten() {
                        journal.remove(key).map_err(&err)?;
                    }
                }
                journal.flush().map_err(&err)?;
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
            Store::Sled { path, journal, .. } => journal
                .iter()
                .rev()
                .take(n)
                .map(|kv| {
                    let (k, v) = kv.map_err(Self::sled_err(path))?;
                    Ok((u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0; 8])), v.to_vec()))
                })
                .collect::<Result<_, StateError>>()?,
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
}

#[cfg(test)]
mod tests {
    use fleet_proto::samples;

    use super::*;

    /// Each backend with a way to "reopen" it: sled opens the directory again, memory hands out
    /// another clone of the same handle (what the simulator keeps across a restart).
    type Reopen = Box<dyn Fn() -> AgentState>;

    fn backends() -> Vec<(&'static str, Reopen, tempfile::TempDir)> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_owned();
        let memory = AgentState::in_memory();
        vec![
            ("sled", Box::new(move || AgentState::open(&path).unwrap()), dir),
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
}
