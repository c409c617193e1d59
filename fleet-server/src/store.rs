//! The server's state, behind [`Store`] so the embedded sled store and a future PostgreSQL
//! store share all logic.
//!
//! Invariants: the store records its schema version on first open and refuses to open a store
//! written by a newer schema (it would misread it); records are JSON so a backup is readable.

use std::path::Path;

use fleet_proto::{DeviceId, Event};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::devices::DeviceRecord;

/// The schema this build writes.
pub const SCHEMA_VERSION: u32 = 1;

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
    #[error("store record {key} is corrupt")]
    Corrupt {
        /// Which record.
        key: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// Where the server keeps its state.
pub trait Store: Send + Sync + 'static {
    /// The device's record, if known.
    fn device(&self, id: &DeviceId) -> Result<Option<DeviceRecord>, StoreError>;
    /// Inserts or replaces a device's record.
    fn put_device(&self, record: &DeviceRecord) -> Result<(), StoreError>;
    /// Every device, ordered by id.
    fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError>;
    /// Records an event a device reported; only the newest [`EVENTS_KEPT`] per device stay.
    fn add_event(&self, event: &Event) -> Result<(), StoreError>;
    /// A device's newest events, oldest first, at most `limit`.
    fn events(&self, id: &DeviceId, limit: usize) -> Result<Vec<Event>, StoreError>;
}

/// Events kept per device (a bounded history for `fleetctl device events`; telemetry is where
/// long histories go).
pub const EVENTS_KEPT: usize = 200;

/// The embedded store: sled trees in the data directory.
#[derive(Debug)]
pub struct SledStore {
    path: String,
    devices: sled::Tree,
    /// Key: device id, 0x00, arrival counter (u64 BE): one device's events are contiguous and
    /// in arrival order.
    events: sled::Tree,
    db: sled::Db,
}

impl SledStore {
    /// Opens (or creates) the store under `dir`.
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
        let path = dir.display().to_string();
        let err = |source| StoreError::Sled { path: path.clone(), source };
        // Keep sled's page cache small: the server's working set is a few records per device.
        let db = sled::Config::new().path(dir).cache_capacity(32 << 20).open().map_err(err)?;
        let meta = db.open_tree("meta").map_err(err)?;
        match meta.get("schema_version").map_err(err)? {
            Some(v) => {
                let found = u32::from_be_bytes(v.as_ref().try_into().unwrap_or([0xff; 4]));
                if found > SCHEMA_VERSION {
                    return Err(StoreError::NewerSchema { path, found, supported: SCHEMA_VERSION });
                }
            }
            None => {
                meta.insert("schema_version", &SCHEMA_VERSION.to_be_bytes()).map_err(err)?;
            }
        }
        let devices = db.open_tree("devices").map_err(err)?;
        let events = db.open_tree("events").map_err(err)?;
        Ok(SledStore { path, devices, events, db })
    }

    fn err(&self) -> impl Fn(sled::Error) -> StoreError + '_ {
        |source| StoreError::Sled { path: self.path.clone(), source }
    }
}

fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        source,
    })
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Records are plain structs of strings and numbers: JSON encoding cannot fail.
    serde_json::to_vec(value).expect("store records always encode")
}

impl Store for SledStore {
    fn device(&self, id: &DeviceId) -> Result<Option<DeviceRecord>, StoreError> {
        let key = id.as_str().as_bytes();
        self.devices.get(key).map_err(self.err())?.map(|v| decode(key, &v)).transpose()
    }

    fn put_device(&self, record: &DeviceRecord) -> Result<(), StoreError> {
        self.devices.insert(record.id.as_str().as_bytes(), encode(record)).map_err(self.err())?;
        Ok(())
    }

    fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        self.devices
            .iter()
            .map(|kv| {
                let (k, v) = kv.map_err(self.err())?;
                decode(&k, &v)
            })
            .collect()
    }

    fn add_event(&self, event: &Event) -> Result<(), StoreError> {
        let prefix = event_prefix(&event.device);
        let n = self.db.generate_id().map_err(self.err())?;
        let key = [prefix.as_slice(), &n.to_be_bytes()].concat();
        self.events.insert(key, encode(event)).map_err(self.err())?;
        // Trim the oldest beyond the bound.
        let count = self.events.scan_prefix(&prefix).count();
        for old in self.events.scan_prefix(&prefix).keys().take(count.saturating_sub(EVENTS_KEPT)) {
            self.events.remove(old.map_err(self.err())?).map_err(self.err())?;
        }
        Ok(())
    }

    fn events(&self, id: &DeviceId, limit: usize) -> Result<Vec<Event>, StoreError> {
        let mut newest: Vec<Event> = self
            .events
            .scan_prefix(event_prefix(id))
            .rev()
            .take(limit)
            .map(|kv| {
                let (k, v) = kv.map_err(self.err())?;
                decode(&k, &v)
            })
            .collect::<Result<_, _>>()?;
        newest.reverse();
        Ok(newest)
    }
}

fn event_prefix(id: &DeviceId) -> Vec<u8> {
    [id.as_str().as_bytes(), &[0]].concat()
}

#[cfg(test)]
mod tests {
    use fleet_proto::{samples, Message};

    use super::*;

    #[test]
    fn devices_survive_reopening_the_store() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            let rec = DeviceRecord::observe(None, &Message::Status(samples::status())).unwrap();
            store.put_device(&rec).unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        let all = store.devices().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].id, samples::device());
        assert_eq!(store.device(&samples::device()).unwrap().unwrap(), all[0]);
    }

    #[test]
    fn events_are_kept_per_device_in_order_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let other = DeviceId::new("robot-70").unwrap();
        for i in 0..(EVENTS_KEPT + 5) {
            let mut e = samples::event();
            e.message = format!("event {i}");
            store.add_event(&e).unwrap();
            store.add_event(&Event { device: other.clone(), ..e }).unwrap();
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
        let err = SledStore::open(dir.path()).unwrap_err();
        assert!(
            matches!(err, StoreError::NewerSchema { found: 99, supported: SCHEMA_VERSION, .. }),
            "{err}"
        );
    }
}
