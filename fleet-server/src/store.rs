//! The server's state: typed records over a key-value [`Backend`], so the embedded sled store
//! and a future PostgreSQL store share all logic.
//!
//! Invariants:
//! - The store records its schema version on first open and refuses to open a store written by
//!   a newer schema (it would misread it); an older schema is migrated on open, in one atomic
//!   batch.
//! - Records are JSON, so a backup is readable and diffable.
//! - Every change goes through [`Store::update`]: changes are serialised by one writer lock, the
//!   closure reads its own pending writes, and the batch is applied atomically (all of it or
//!   nothing). A refused request therefore never leaves anything half-written, and two writers
//!   (a device report and an operator's pin) never overwrite each other's fields.
//! - [`Store::update_durable`] also flushes to disk before it returns, for writes that must
//!   survive a power cut before something is sent (a desired-state generation must never be
//!   reused: the agent would refuse the next state as a replay).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use fleet_proto::{DeviceId, Event, Inventory, UnixMillis};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::audit::AuditEntry;
use crate::auth::TokenRecord;
use crate::devices::DeviceRecord;
use crate::groups::Group;
use crate::records::{RolloutRecord, TelemetryState};
use crate::releases::ReleaseRecord;
use crate::secrets::SecretRecord;
use crate::variables::VariableRecord;

/// The schema this build writes. 1: separate sled trees for devices and events; 2: one tree of
/// collections.
pub const SCHEMA_VERSION: u32 = 2;

/// Events kept per device (a bounded history for `fleetctl device events`; telemetry is where
/// long histories go).
pub const EVENTS_KEPT: usize = 200;

/// Audit entries kept (the oldest are dropped beyond this).
pub const AUDIT_KEPT: usize = 100_000;

/// A kind of record. The tag byte prefixes every key in the backend, so collections never mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Collection {
    /// Schema version and counters.
    Meta,
    /// [`DeviceRecord`] by device id.
    Devices,
    /// A device's last reported [`Inventory`], by device id.
    Inventories,
    /// [`Event`]s by device id, 0x00, arrival counter (u64 BE).
    Events,
    /// [`ReleaseRecord`] by release id.
    Releases,
    /// [`Group`] by name.
    Groups,
    /// [`RolloutRecord`] by rollout id (u64 BE).
    Rollouts,
    /// [`TokenRecord`] by token name.
    Tokens,
    /// [`AuditEntry`] by sequence number (u64 BE).
    Audit,
    /// Telemetry points ([`fleet_proto::telemetry::Point`]) by device id, 0x00, device
    /// sequence number (u64 BE): the bounded history.
    Telemetry,
    /// A device's [`TelemetryState`] (counters, latest values), by device id.
    TelemetryState,
    /// [`VariableRecord`] by [`VariableRecord::key`] (scope, then name).
    Variables,
    /// [`SecretRecord`] (the value encrypted) by [`SecretRecord::key`] (scope, then name).
    Secrets,
}

impl Collection {
    /// Every collection, in tag order (backups list them in this order).
    pub const ALL: [Collection; 13] = [
        Collection::Meta,
        Collection::Devices,
        Collection::Inventories,
        Collection::Events,
        Collection::Releases,
        Collection::Groups,
        Collection::Rollouts,
        Collection::Tokens,
        Collection::Audit,
        Collection::Telemetry,
        Collection::TelemetryState,
        Collection::Variables,
        Collection::Secrets,
    ];

    fn tag(self) -> u8 {
        match self {
            Collection::Meta => 0,
            Collection::Devices => 1,
            Collection::Inventories => 2,
            Collection::Events => 3,
            Collection::Releases => 4,
            Collection::Groups => 5,
            Collection::Rollouts => 6,
            Collection::Tokens => 7,
            Collection::Audit => 8,
            Collection::Telemetry => 9,
            Collection::TelemetryState => 10,
            Collection::Variables => 11,
            Collection::Secrets => 12,
        }
    }
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The embedded database failed.
    #[error("store at {path}: database error")]
    Sled {
        /// The data directory.
        path: String,
        /// What sled reported.
        #[source]
        source: sled::Error,
    },
    /// The store was written by a newer fleet-server.
    #[error("store at {path} has schema version {found}, newer than this build's {supported}; run a newer fleet-server or restore a backup")]
    NewerSchema {
        /// The data directory.
        path: String,
        /// Schema found.
        found: u32,
        /// Schema this build writes.
        supported: u32,
    },
    /// A record does not decode.
    #[error("store record {collection:?}/{key} is corrupt")]
    Corrupt {
        /// Its collection.
        collection: Collection,
        /// Which record.
        key: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// Another process holds the store (sled allows one).
    #[error("store at {path} is in use by another process (a running fleet-server?)")]
    Busy {
        /// The data directory.
        path: String,
    },
}

/// Entries of a collection, key and value, in key order.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// One write of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Insert or replace.
    Put(Collection, Vec<u8>, Vec<u8>),
    /// Remove (no error if absent).
    Remove(Collection, Vec<u8>),
}

/// A key-value store of collections: what a storage engine must provide. Keys sort bytewise
/// within a collection.
pub trait Backend: Send + Sync + 'static {
    /// One value.
    fn get(&self, c: Collection, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Entries of `c` whose key starts with `prefix` and is greater than `after` (if given), in
    /// key order (or reverse order with `reverse`), at most `limit`.
    fn scan(
        &self,
        c: Collection,
        prefix: &[u8],
        after: Option<&[u8]>,
        reverse: bool,
        limit: usize,
    ) -> Result<Entries, StoreError>;
    /// How many entries of `c` start with `prefix`.
    fn count(&self, c: Collection, prefix: &[u8]) -> Result<usize, StoreError>;
    /// Applies every write or none.
    fn apply(&self, writes: Vec<Write>) -> Result<(), StoreError>;
    /// A number never returned before, also across restarts.
    fn next_id(&self) -> Result<u64, StoreError>;
    /// Makes everything applied so far durable.
    fn flush(&self) -> Result<(), StoreError>;
}

/// The embedded backend: one sled tree, keys prefixed by the collection's tag.
#[derive(Debug)]
pub struct SledBackend {
    path: String,
    db: sled::Db,
    records: sled::Tree,
}

impl SledBackend {
    /// Opens (or creates) the database under `dir`, migrating an older schema.
    pub fn open(dir: &Path) -> Result<SledBackend, StoreError> {
        let path = dir.display().to_string();
        let err = |source: sled::Error| match &source {
            sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock => {
                StoreError::Busy { path: path.clone() }
            }
            sled::Error::Io(io) if io.to_string().contains("lock") => {
                StoreError::Busy { path: path.clone() }
            }
            _ => StoreError::Sled { path: path.clone(), source },
        };
        // Keep sled's page cache small: the server's working set is a few records per device.
        let db = sled::Config::new().path(dir).cache_capacity(32 << 20).open().map_err(err)?;
        let records = db.open_tree("records").map_err(err)?;
        let backend = SledBackend { path: path.clone(), db, records };
        let meta = backend.db.open_tree("meta").map_err(err)?;
        let found = match meta.get("schema_version").map_err(err)? {
            Some(v) => u32::from_be_bytes(v.as_ref().try_into().unwrap_or([0xff; 4])),
            None => 0,
        };
        if found > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema { path, found, supported: SCHEMA_VERSION });
        }
        if found == 1 {
            backend.migrate_from_v1().map_err(err)?;
        }
        if found < SCHEMA_VERSION {
            meta.insert("schema_version", &SCHEMA_VERSION.to_be_bytes()).map_err(err)?;
            backend.db.flush().map_err(err)?;
        }
        Ok(backend)
    }

    /// Schema 1 kept devices and events in trees of their own, with the same keys.
    fn migrate_from_v1(&self) -> Result<(), sled::Error> {
        let mut batch = sled::Batch::default();
        for (name, c) in [("devices", Collection::Devices), ("events", Collection::Events)] {
            let tree = self.db.open_tree(name)?;
            for kv in tree.iter() {
                let (k, v) = kv?;
                batch.insert(key(c, &k), v);
            }
        }
        self.records.apply_batch(batch)?;
        self.records.flush()?;
        for name in ["devices", "events"] {
            self.db.drop_tree(name)?;
        }
        tracing::info!(store = %self.path, "migrated the store from schema 1 to 2");
        Ok(())
    }

    fn err(&self) -> impl Fn(sled::Error) -> StoreError + '_ {
        |source| StoreError::Sled { path: self.path.clone(), source }
    }
}

fn key(c: Collection, k: &[u8]) -> Vec<u8> {
    let mut full = Vec::with_capacity(1 + k.len());
    full.push(c.tag());
    full.extend_from_slice(k);
    full
}

impl Backend for SledBackend {
    fn get(&self, c: Collection, k: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.records.get(key(c, k)).map_err(self.err())?.map(|v| v.to_vec()))
    }

    fn scan(
        &self,
        c: Collection,
        prefix: &[u8],
        after: Option<&[u8]>,
        reverse: bool,
        limit: usize,
    ) -> Result<Entries, StoreError> {
        let full_prefix = key(c, prefix);
        let iter = self.records.scan_prefix(&full_prefix);
        let strip = |kv: sled::Result<(sled::IVec, sled::IVec)>| {
            kv.map(|(k, v)| (k[1..].to_vec(), v.to_vec())).map_err(self.err())
        };
        let keep = |entry: &Result<(Vec<u8>, Vec<u8>), StoreError>| match (entry, after) {
            (Ok((k, _)), Some(after)) => {
                if reverse {
                    k.as_slice() < after
                } else {
                    k.as_slice() > after
                }
            }
            _ => true,
        };
        if reverse {
            iter.rev().map(strip).filter(keep).take(limit).collect()
        } else {
            match after {
                // Start right after the cursor instead of walking to it.
                Some(after) if after.starts_with(prefix) => {
                    let start = key(c, after);
                    // The range runs on into the next collection's keys: stop at the end of
                    // this one (the tag byte is part of the prefix compared, so this must
                    // happen before `strip` takes it off).
                    self.records
                        .range(start..)
                        .take_while(|e| {
                            e.as_ref().map_or(true, |(k, _)| k.starts_with(&full_prefix))
                        })
                        .map(strip)
                        .filter(keep)
                        .take(limit)
                        .collect()
                }
                _ => iter.map(strip).filter(keep).take(limit).collect(),
            }
        }
    }

    fn count(&self, c: Collection, prefix: &[u8]) -> Result<usize, StoreError> {
        let mut n = 0;
        for kv in self.records.scan_prefix(key(c, prefix)).keys() {
            kv.map_err(self.err())?;
            n += 1;
        }
        Ok(n)
    }

    fn apply(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for w in writes {
            match w {
                Write::Put(c, k, v) => batch.insert(key(c, &k), v),
                Write::Remove(c, k) => batch.remove(key(c, &k)),
            }
        }
        self.records.apply_batch(batch).map_err(self.err())
    }

    fn next_id(&self) -> Result<u64, StoreError> {
        self.db.generate_id().map_err(self.err())
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.records.flush().map_err(self.err())?;
        Ok(())
    }
}

fn decode<T: DeserializeOwned>(c: Collection, k: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt {
        collection: c,
        key: String::from_utf8_lossy(k).into_owned(),
        source,
    })
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Records are plain structs of strings, numbers and maps with string keys: JSON encoding
    // cannot fail.
    serde_json::to_vec(value).expect("store records always encode")
}

/// A page of records and the cursor of the next page, if there is one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page<T> {
    /// The records.
    pub items: Vec<T>,
    /// Pass as `after` to get the next page; `None` on the last page.
    pub next: Option<String>,
}

/// The server's records, typed. Cheap to share behind an `Arc`.
pub struct Store {
    backend: Box<dyn Backend>,
    writer: Mutex<()>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// The store on `backend`.
    pub fn new(backend: impl Backend) -> Store {
        Store { backend: Box::new(backend), writer: Mutex::new(()) }
    }

    /// Opens (or creates) the embedded store under `dir`.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        Ok(Store::new(SledBackend::open(dir)?))
    }

    /// The storage engine underneath (backups read it whole).
    pub fn backend(&self) -> &dyn Backend {
        &*self.backend
    }

    fn get<T: DeserializeOwned>(&self, c: Collection, k: &[u8]) -> Result<Option<T>, StoreError> {
        self.backend.get(c, k)?.map(|v| decode(c, k, &v)).transpose()
    }

    fn all<T: DeserializeOwned>(&self, c: Collection) -> Result<Vec<T>, StoreError> {
        self.backend
            .scan(c, &[], None, false, usize::MAX)?
            .iter()
            .map(|(k, v)| decode(c, k, v))
            .collect()
    }

    fn page<T: DeserializeOwned>(
        &self,
        c: Collection,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<T>, StoreError> {
        let entries = self.backend.scan(c, &[], after.map(str::as_bytes), false, limit + 1)?;
        let more = entries.len() > limit;
        let items: Vec<T> =
            entries.iter().take(limit).map(|(k, v)| decode(c, k, v)).collect::<Result<_, _>>()?;
        let next = more
            .then(|| entries.get(limit - 1).map(|(k, _)| String::from_utf8_lossy(k).into_owned()))
            .flatten();
        Ok(Page { items, next })
    }

    /// The device's record, if known.
    pub fn device(&self, id: &DeviceId) -> Result<Option<DeviceRecord>, StoreError> {
        self.get(Collection::Devices, id.as_str().as_bytes())
    }

    /// Every device, ordered by id.
    pub fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        self.all(Collection::Devices)
    }

    /// Every device's summary, ordered by id: what lists need, read faster than
    /// [`Store::devices`].
    pub fn device_summaries(&self) -> Result<Vec<crate::devices::DeviceSummary>, StoreError> {
        self.all(Collection::Devices)
    }

    /// Devices after `after` (by id), at most `limit`.
    pub fn devices_page(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<DeviceRecord>, StoreError> {
        self.page(Collection::Devices, after, limit)
    }

    /// How many devices are known.
    pub fn device_count(&self) -> Result<usize, StoreError> {
        self.backend.count(Collection::Devices, &[])
    }

    /// The device's last reported inventory.
    pub fn inventory(&self, id: &DeviceId) -> Result<Option<Inventory>, StoreError> {
        self.get(Collection::Inventories, id.as_str().as_bytes())
    }

    /// A device's newest events, oldest first, at most `limit`.
    pub fn events(&self, id: &DeviceId, limit: usize) -> Result<Vec<Event>, StoreError> {
        let prefix = event_prefix(id);
        let mut newest: Vec<Event> = self
            .backend
            .scan(Collection::Events, &prefix, None, true, limit)?
            .iter()
            .map(|(k, v)| decode(Collection::Events, k, v))
            .collect::<Result<_, _>>()?;
        newest.reverse();
        Ok(newest)
    }

    /// A device's telemetry counters and latest values.
    pub fn telemetry_state(&self, id: &DeviceId) -> Result<Option<TelemetryState>, StoreError> {
        self.get(Collection::TelemetryState, id.as_str().as_bytes())
    }

    /// A device's stored points with sequence numbers `> after`, oldest first, at most
    /// `limit` scanned (`metric` filters what is returned).
    pub fn telemetry_points(
        &self,
        id: &DeviceId,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, fleet_proto::telemetry::Point)>, StoreError> {
        let prefix = event_prefix(id);
        let start = after.map(|a| [prefix.as_slice(), &a.to_be_bytes()].concat());
        self.backend
            .scan(Collection::Telemetry, &prefix, start.as_deref(), false, limit)?
            .iter()
            .map(|(k, v)| {
                let seq = k[k.len() - 8..].try_into().map(u64::from_be_bytes).unwrap_or(0);
                decode(Collection::Telemetry, k, v).map(|p| (seq, p))
            })
            .collect()
    }

    /// A release.
    pub fn release(&self, id: &str) -> Result<Option<ReleaseRecord>, StoreError> {
        self.get(Collection::Releases, id.as_bytes())
    }

    /// Releases after `after` (by id), at most `limit`.
    pub fn releases_page(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<ReleaseRecord>, StoreError> {
        self.page(Collection::Releases, after, limit)
    }

    /// A group.
    pub fn group(&self, name: &str) -> Result<Option<Group>, StoreError> {
        self.get(Collection::Groups, name.as_bytes())
    }

    /// Every group, by name.
    pub fn groups(&self) -> Result<Vec<Group>, StoreError> {
        self.all(Collection::Groups)
    }

    /// Every variable, in key order (scope, then name).
    pub fn variables(&self) -> Result<Vec<VariableRecord>, StoreError> {
        self.all(Collection::Variables)
    }

    /// Every secret (values encrypted), in key order (scope, then name).
    pub fn secrets(&self) -> Result<Vec<SecretRecord>, StoreError> {
        self.all(Collection::Secrets)
    }

    /// Variables after `after` (a key), at most `limit`.
    pub fn variables_page(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<VariableRecord>, StoreError> {
        self.page(Collection::Variables, after, limit)
    }

    /// A rollout.
    pub fn rollout(&self, id: u64) -> Result<Option<RolloutRecord>, StoreError> {
        self.get(Collection::Rollouts, &id.to_be_bytes())
    }

    /// Every rollout, oldest first.
    pub fn rollouts(&self) -> Result<Vec<RolloutRecord>, StoreError> {
        self.all(Collection::Rollouts)
    }

    /// An API token by name.
    pub fn token(&self, name: &str) -> Result<Option<TokenRecord>, StoreError> {
        self.get(Collection::Tokens, name.as_bytes())
    }

    /// Every API token, by name.
    pub fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.all(Collection::Tokens)
    }

    /// Audit entries at or after `since`, oldest first, at most `limit` (the newest `limit`).
    pub fn audit(&self, since: UnixMillis, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let mut newest = Vec::new();
        for (k, v) in self.backend.scan(Collection::Audit, &[], None, true, limit)? {
            let entry: AuditEntry = decode(Collection::Audit, &k, &v)?;
            if entry.at < since {
                break;
            }
            newest.push(entry);
        }
        newest.reverse();
        Ok(newest)
    }

    /// Every record of every collection, read under the writer lock so no change lands half
    /// way through (a consistent backup).
    pub fn snapshot(&self) -> Result<Vec<(Collection, Entries)>, StoreError> {
        let _serial = self.writer.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        Collection::ALL
            .iter()
            .map(|&c| Ok((c, self.backend.scan(c, &[], None, false, usize::MAX)?)))
            .collect()
    }

    /// Writes records as they are (a restore), in one atomic batch.
    pub fn load(&self, records: Vec<(Collection, Vec<u8>, Vec<u8>)>) -> Result<(), StoreError> {
        let _serial = self.writer.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let writes = records.into_iter().map(|(c, k, v)| Write::Put(c, k, v)).collect();
        self.backend.apply(writes)?;
        self.backend.flush()
    }

    /// Runs `change` under the writer lock and applies what it wrote atomically if it returns
    /// `Ok`; an `Err` writes nothing.
    pub fn update<T, E: From<StoreError>>(
        &self,
        change: impl FnOnce(&mut Tx<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        self.update_inner(change, false)
    }

    /// [`Store::update`], then flushed to disk before returning.
    pub fn update_durable<T, E: From<StoreError>>(
        &self,
        change: impl FnOnce(&mut Tx<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        self.update_inner(change, true)
    }

    fn update_inner<T, E: From<StoreError>>(
        &self,
        change: impl FnOnce(&mut Tx<'_>) -> Result<T, E>,
        durable: bool,
    ) -> Result<T, E> {
        // A panic while holding the lock leaves nothing half-applied (writes apply at the end),
        // so a poisoned lock is safe to take over.
        let _serial = self.writer.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut tx = Tx { store: self, pending: BTreeMap::new(), audit: Vec::new() };
        let out = change(&mut tx)?;
        let writes = tx.finish()?;
        if !writes.is_empty() {
            self.backend.apply(writes)?;
            if durable {
                self.backend.flush()?;
            }
        }
        Ok(out)
    }
}

fn event_prefix(id: &DeviceId) -> Vec<u8> {
    [id.as_str().as_bytes(), &[0]].concat()
}

fn point_key(id: &DeviceId, seq: u64) -> Vec<u8> {
    [id.as_str().as_bytes(), &[0], &seq.to_be_bytes()].concat()
}

/// One change in progress: reads see its own writes; nothing is applied until it ends well.
pub struct Tx<'a> {
    store: &'a Store,
    /// `None`: removed.
    pending: BTreeMap<(Collection, Vec<u8>), Option<Vec<u8>>>,
    audit: Vec<AuditEntry>,
}

impl std::fmt::Debug for Tx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx").field("pending", &self.pending.len()).finish_non_exhaustive()
    }
}

impl Tx<'_> {
    fn get<T: DeserializeOwned>(&self, c: Collection, k: &[u8]) -> Result<Option<T>, StoreError> {
        match self.pending.get(&(c, k.to_vec())) {
            Some(Some(v)) => decode(c, k, v).map(Some),
            Some(None) => Ok(None),
            None => self.store.get(c, k),
        }
    }

    fn put<T: Serialize>(&mut self, c: Collection, k: &[u8], value: &T) {
        self.pending.insert((c, k.to_vec()), Some(encode(value)));
    }

    fn remove(&mut self, c: Collection, k: &[u8]) {
        self.pending.insert((c, k.to_vec()), None);
    }

    /// A device's record, as this change sees it.
    pub fn device(&self, id: &DeviceId) -> Result<Option<DeviceRecord>, StoreError> {
        self.get(Collection::Devices, id.as_str().as_bytes())
    }

    /// Inserts or replaces a device's record.
    pub fn put_device(&mut self, record: &DeviceRecord) {
        self.put(Collection::Devices, record.id.as_str().as_bytes(), record);
    }

    /// A device's inventory, as this change sees it.
    pub fn inventory(&self, id: &DeviceId) -> Result<Option<Inventory>, StoreError> {
        self.get(Collection::Inventories, id.as_str().as_bytes())
    }

    /// Replaces a device's inventory.
    pub fn put_inventory(&mut self, id: &DeviceId, inventory: &Inventory) {
        self.put(Collection::Inventories, id.as_str().as_bytes(), inventory);
    }

    /// Records an event a device reported; only the newest [`EVENTS_KEPT`] per device stay.
    pub fn add_event(&mut self, event: &Event) -> Result<(), StoreError> {
        let prefix = event_prefix(&event.device);
        let n = self.store.backend.next_id()?;
        self.put(Collection::Events, &[prefix.as_slice(), &n.to_be_bytes()].concat(), event);
        let count = self.store.backend.count(Collection::Events, &prefix)?;
        if count >= EVENTS_KEPT {
            let excess = count + 1 - EVENTS_KEPT;
            for (k, _) in
                self.store.backend.scan(Collection::Events, &prefix, None, false, excess)?
            {
                self.remove(Collection::Events, &k);
            }
        }
        Ok(())
    }

    /// A device's telemetry counters, as this change sees them.
    pub fn telemetry_state(&self, id: &DeviceId) -> Result<Option<TelemetryState>, StoreError> {
        self.get(Collection::TelemetryState, id.as_str().as_bytes())
    }

    /// Replaces a device's telemetry counters.
    pub fn put_telemetry_state(&mut self, id: &DeviceId, state: &TelemetryState) {
        self.put(Collection::TelemetryState, id.as_str().as_bytes(), state);
    }

    /// Whether point `seq` of the device is stored (this change included).
    pub fn has_point(&self, id: &DeviceId, seq: u64) -> Result<bool, StoreError> {
        let k = point_key(id, seq);
        match self.pending.get(&(Collection::Telemetry, k.clone())) {
            Some(v) => Ok(v.is_some()),
            None => Ok(self.store.backend.get(Collection::Telemetry, &k)?.is_some()),
        }
    }

    /// Stores point `seq` of the device.
    pub fn put_point(&mut self, id: &DeviceId, seq: u64, point: &fleet_proto::telemetry::Point) {
        self.put(Collection::Telemetry, &point_key(id, seq), point);
    }

    /// Removes the device's `n` oldest stored points; returns the sequence number after the
    /// last one removed (the new oldest), if any were.
    pub fn trim_points(&mut self, id: &DeviceId, n: usize) -> Result<Option<u64>, StoreError> {
        let prefix = event_prefix(id);
        let mut last = None;
        for (k, _) in self.store.backend.scan(Collection::Telemetry, &prefix, None, false, n)? {
            last = k[k.len() - 8..].try_into().map(u64::from_be_bytes).ok();
            self.remove(Collection::Telemetry, &k);
        }
        Ok(last.map(|l| l + 1))
    }

    /// A release, as this change sees it.
    pub fn release(&self, id: &str) -> Result<Option<ReleaseRecord>, StoreError> {
        self.get(Collection::Releases, id.as_bytes())
    }

    /// Stores a release.
    pub fn put_release(&mut self, record: &ReleaseRecord) {
        self.put(Collection::Releases, record.id().as_str().as_bytes(), record);
    }

    /// A group, as this change sees it.
    pub fn group(&self, name: &str) -> Result<Option<Group>, StoreError> {
        self.get(Collection::Groups, name.as_bytes())
    }

    /// Inserts or replaces a group.
    pub fn put_group(&mut self, group: &Group) {
        self.put(Collection::Groups, group.name.as_bytes(), group);
    }

    /// Removes a group.
    pub fn remove_group(&mut self, name: &str) {
        self.remove(Collection::Groups, name.as_bytes());
    }

    /// A rollout, as this change sees it.
    pub fn rollout(&self, id: u64) -> Result<Option<RolloutRecord>, StoreError> {
        self.get(Collection::Rollouts, &id.to_be_bytes())
    }

    /// Inserts or replaces a rollout.
    pub fn put_rollout(&mut self, record: &RolloutRecord) {
        self.put(Collection::Rollouts, &record.id().to_be_bytes(), record);
    }

    /// Every record of `c` as this change sees it: the stored ones with this change's own
    /// writes laid over them, in key order.
    fn all_seen<T: DeserializeOwned>(&self, c: Collection) -> Result<Vec<T>, StoreError> {
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> =
            self.store.backend.scan(c, &[], None, false, usize::MAX)?.into_iter().collect();
        for ((pc, k), v) in &self.pending {
            if *pc != c {
                continue;
            }
            match v {
                Some(v) => merged.insert(k.clone(), v.clone()),
                None => merged.remove(k),
            };
        }
        merged.iter().map(|(k, v)| decode(c, k, v)).collect()
    }

    /// Every device, as this change sees them.
    pub fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        self.all_seen(Collection::Devices)
    }

    /// Every group, as this change sees them.
    pub fn groups(&self) -> Result<Vec<Group>, StoreError> {
        self.all_seen(Collection::Groups)
    }

    /// Every variable, as this change sees them.
    pub fn variables(&self) -> Result<Vec<VariableRecord>, StoreError> {
        self.all_seen(Collection::Variables)
    }

    /// A variable, as this change sees it.
    pub fn variable(&self, key: &str) -> Result<Option<VariableRecord>, StoreError> {
        self.get(Collection::Variables, key.as_bytes())
    }

    /// Inserts or replaces a variable.
    pub fn put_variable(&mut self, record: &VariableRecord) {
        self.put(Collection::Variables, record.key().as_bytes(), record);
    }

    /// Removes a variable.
    pub fn remove_variable(&mut self, key: &str) {
        self.remove(Collection::Variables, key.as_bytes());
    }

    /// Every secret, as this change sees them.
    pub fn secrets(&self) -> Result<Vec<SecretRecord>, StoreError> {
        self.all_seen(Collection::Secrets)
    }

    /// A secret by key, as this change sees it.
    pub fn secret(&self, key: &str) -> Result<Option<SecretRecord>, StoreError> {
        self.get(Collection::Secrets, key.as_bytes())
    }

    /// Inserts or replaces a secret.
    pub fn put_secret(&mut self, record: &SecretRecord) {
        self.put(Collection::Secrets, record.key().as_bytes(), record);
    }

    /// Removes a secret.
    pub fn remove_secret(&mut self, key: &str) {
        self.remove(Collection::Secrets, key.as_bytes());
    }

    /// A number never handed out before.
    pub fn next_id(&self) -> Result<u64, StoreError> {
        self.store.backend.next_id()
    }

    /// The next rollout id: 1, 2, 3, ... (people type them), kept in the store's meta data.
    pub fn next_rollout_id(&mut self) -> Result<u64, StoreError> {
        let last: u64 = self.get(Collection::Meta, b"last_rollout_id")?.unwrap_or(0);
        self.put(Collection::Meta, b"last_rollout_id", &(last + 1));
        Ok(last + 1)
    }

    /// A token, as this change sees it.
    pub fn token(&self, name: &str) -> Result<Option<TokenRecord>, StoreError> {
        self.get(Collection::Tokens, name.as_bytes())
    }

    /// Inserts or replaces a token.
    pub fn put_token(&mut self, token: &TokenRecord) {
        self.put(Collection::Tokens, token.name.as_bytes(), token);
    }

    /// Appends an entry to the audit log, in this change (so the log and the change are
    /// written together or not at all).
    pub fn audit(&mut self, entry: AuditEntry) {
        self.audit.push(entry);
    }

    fn finish(self) -> Result<Vec<Write>, StoreError> {
        let mut writes: Vec<Write> = self
            .pending
            .into_iter()
            .map(|((c, k), v)| match v {
                Some(v) => Write::Put(c, k, v),
                None => Write::Remove(c, k),
            })
            .collect();
        if !self.audit.is_empty() {
            let backend = &self.store.backend;
            for entry in &self.audit {
                let n = backend.next_id()?;
                writes.push(Write::Put(Collection::Audit, n.to_be_bytes().to_vec(), encode(entry)));
            }
            // Trim the oldest beyond the bound, a few at a time so no change pays for all.
            let count = backend.count(Collection::Audit, &[])?;
            if count + self.audit.len() > AUDIT_KEPT {
                let excess = (count + self.audit.len() - AUDIT_KEPT).min(1024);
                for (k, _) in backend.scan(Collection::Audit, &[], None, false, excess)? {
                    writes.push(Write::Remove(Collection::Audit, k));
                }
            }
        }
        Ok(writes)
    }
}

#[cfg(test)]
mod tests {
    use fleet_proto::{samples, Message};

    use super::*;

    #[test]
    fn devices_survive_reopening_the_store() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let rec = DeviceRecord::observe(None, &Message::Status(samples::status())).unwrap();
            store
                .update(|tx| {
                    tx.put_device(&rec);
                    Ok::<_, StoreError>(())
                })
                .unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let all = store.devices().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].id, samples::device());
        assert_eq!(store.device(&samples::device()).unwrap().unwrap(), all[0]);
    }

    #[test]
    fn events_are_kept_per_device_in_order_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let other = DeviceId::new("robot-70").unwrap();
        for i in 0..(EVENTS_KEPT + 5) {
            let mut e = samples::event();
            e.message = format!("event {i}");
            store
                .update(|tx| {
                    tx.add_event(&e)?;
                    tx.add_event(&Event { device: other.clone(), ..e.clone() })
                })
                .unwrap();
        }
        let events = store.events(&samples::device(), 3).unwrap();
        let messages: Vec<_> = events.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(messages, ["event 202", "event 203", "event 204"]);
        assert_eq!(store.events(&samples::device(), 1000).unwrap().len(), EVENTS_KEPT);
        assert!(store
            .events(&samples::device(), 1000)
            .unwrap()
            .iter()
            .all(|e| e.device == samples::device()));
    }

    #[test]
    fn a_store_from_a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            db.open_tree("meta").unwrap().insert("schema_version", &99u32.to_be_bytes()).unwrap();
            db.flush().unwrap();
        }
        let err = Store::open(dir.path()).unwrap_err();
        assert!(
            matches!(err, StoreError::NewerSchema { found: 99, supported: SCHEMA_VERSION, .. }),
            "{err}"
        );
    }

    #[test]
    fn a_schema_1_store_is_migrated_with_its_devices_and_events() {
        let dir = tempfile::tempdir().unwrap();
        let rec = DeviceRecord::observe(None, &Message::Status(samples::status())).unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            db.open_tree("meta").unwrap().insert("schema_version", &1u32.to_be_bytes()).unwrap();
            db.open_tree("devices")
                .unwrap()
                .insert(rec.id.as_str(), serde_json::to_vec(&rec).unwrap())
                .unwrap();
            let key = [event_prefix(&rec.id).as_slice(), &7u64.to_be_bytes()].concat();
            db.open_tree("events")
                .unwrap()
                .insert(key, serde_json::to_vec(&samples::event()).unwrap())
                .unwrap();
            db.flush().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.devices().unwrap(), vec![rec.clone()]);
        assert_eq!(store.events(&rec.id, 10).unwrap(), vec![samples::event()]);
    }

    #[test]
    fn a_refused_change_writes_nothing_and_reads_see_pending_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let rec = DeviceRecord::observe(None, &Message::Status(samples::status())).unwrap();
        let refused: Result<(), StoreError> = store.update(|tx| {
            tx.put_device(&rec);
            assert!(tx.device(&rec.id)?.is_some(), "a change sees its own write");
            Err(StoreError::Busy { path: "refused on purpose".into() })
        });
        assert!(refused.is_err());
        assert_eq!(store.device(&rec.id).unwrap(), None, "nothing of a refused change is kept");
    }

    #[test]
    fn the_last_page_ends_at_its_collection_even_when_full() {
        // 20 devices, pages of 10: after the second page there is nothing more to ask for,
        // and asking after the last device must not read the next collection's records.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .update(|tx| {
                for i in 0..20 {
                    let mut rec =
                        DeviceRecord::observe(None, &Message::Status(samples::status())).unwrap();
                    rec.id = DeviceId::new(format!("d{i:02}")).unwrap();
                    tx.put_device(&rec);
                    tx.put_inventory(&rec.id, &samples::inventory());
                }
                Ok::<_, StoreError>(())
            })
            .unwrap();
        let second = store.devices_page(Some("d09"), 10).unwrap();
        assert_eq!(second.items.len(), 10);
        assert_eq!(second.next, None, "a full last page has no next");
        let past = store.devices_page(Some("d19"), 10).unwrap();
        assert!(past.items.is_empty());
        assert_eq!(past.next, None);
    }

    #[test]
    fn pages_walk_every_device_once_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .update(|tx| {
                for i in 0..25 {
                    let mut rec =
                        DeviceRecord::observe(None, &Message::Status(samples::status())).unwrap();
                    rec.id = DeviceId::new(format!("d{i:02}")).unwrap();
                    tx.put_device(&rec);
                }
                Ok::<_, StoreError>(())
            })
            .unwrap();
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = store.devices_page(after.as_deref(), 10).unwrap();
            seen.extend(page.items.iter().map(|d| d.id.to_string()));
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        let expected: Vec<String> = (0..25).map(|i| format!("d{i:02}")).collect();
        assert_eq!(seen, expected);
        assert_eq!(store.device_count().unwrap(), 25);
    }
}
