//! Backups: the whole store plus the keys that make it usable (fleet CA, signing key, admin
//! token, secrets key), as one JSON document.
//!
//! Secrets are in the store encrypted; the backup carries `secrets.key` (hex) too, on
//! purpose: without it a restored server could open none of them, and every device whose
//! release mounts a secret would be left without a state. The backup already holds the CA
//! and signing keys (whoever has it can impersonate the server), so the key adds no new
//! class of exposure; it keeps the rule that one backup restores one working server. Secret
//! values never appear in it in the clear.
//!
//! Invariants: a backup is taken under the store's writer lock, so it is one consistent state;
//! a restore goes only into a data directory without a store (or with `--force`, over one),
//! checks the format and schema first, writes the keys before the records, and applies all
//! records in one atomic batch — a restore that fails leaves no half-restored store. A backup
//! holds the fleet's private keys: it is written mode 0600, and whoever has it can impersonate
//! the server.

use std::collections::BTreeMap;
use std::path::Path;

use fleet_proto::UnixMillis;
use serde::{Deserialize, Serialize};

use crate::keyfile;
use crate::store::{Collection, Store, StoreError, SCHEMA_VERSION};

/// What identifies a Fleet backup.
pub const FORMAT: &str = "fleet-server-backup";

/// One backup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Backup {
    /// Always [`FORMAT`].
    pub format: String,
    /// The store schema the records are in.
    pub schema_version: u32,
    /// When it was taken.
    pub created_at: UnixMillis,
    /// The fleet-server version that took it.
    pub server_version: String,
    /// Records per collection: key (hex) and value (the record's JSON).
    pub collections: BTreeMap<Collection, Vec<(String, serde_json::Value)>>,
    /// Key files, by path relative to the data directory.
    pub files: BTreeMap<String, String>,
}

/// Why a backup or restore failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A file could not be read or written.
    #[error("{path}")]
    Io {
        /// Which file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The document is not a backup this build can restore.
    #[error("{0}")]
    Refused(String),
}

/// Key files a backup carries, relative to the data directory.
const KEY_FILES: [&str; 4] = ["pki/ca.pem", "pki/ca.key", "pki/signing.key", "admin-token"];

/// The secrets key (binary; carried as hex), relative to the data directory.
const SECRETS_KEY: &str = "secrets.key";

impl Backup {
    /// Takes a backup of `store` and the keys under `data_dir`.
    pub fn take(store: &Store, data_dir: &Path) -> Result<Backup, BackupError> {
        let mut collections = BTreeMap::new();
        for (c, entries) in store.snapshot()? {
            let records = entries
                .into_iter()
                .map(|(k, v)| {
                    // Every value is JSON (counters in Meta too); anything else would be a
                    // corrupt record, kept as hex so the backup still holds it.
                    let value = serde_json::from_slice(&v).unwrap_or_else(|_| {
                        serde_json::Value::String(fleet_proto::hex::encode(&v))
                    });
                    (fleet_proto::hex::encode(&k), value)
                })
                .collect::<Vec<_>>();
            if !records.is_empty() {
                collections.insert(c, records);
            }
        }
        let mut files = BTreeMap::new();
        for name in KEY_FILES {
            let path = data_dir.join(name);
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    files.insert(name.to_owned(), text);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(BackupError::Io { path: path.display().to_string(), source })
                }
            }
        }
        let path = data_dir.join(SECRETS_KEY);
        match std::fs::read(&path) {
            Ok(bytes) => {
                files.insert(SECRETS_KEY.to_owned(), fleet_proto::hex::encode(&bytes));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(BackupError::Io { path: path.display().to_string(), source })
            }
        }
        Ok(Backup {
            format: FORMAT.to_owned(),
            schema_version: SCHEMA_VERSION,
            created_at: UnixMillis::now(),
            server_version: env!("CARGO_PKG_VERSION").to_owned(),
            collections,
            files,
        })
    }

    /// Restores into `data_dir`. Without `force` the directory must not hold a store yet.
    pub fn restore(&self, data_dir: &Path, force: bool) -> Result<usize, BackupError> {
        if self.format != FORMAT {
            return Err(BackupError::Refused(format!(
                "not a Fleet backup (format {:?}, expected {FORMAT:?})",
                self.format
            )));
        }
        if self.schema_version > SCHEMA_VERSION {
            return Err(BackupError::Refused(format!(
                "the backup has store schema {}, newer than this build's {SCHEMA_VERSION}; restore it with fleet-server {} or newer",
                self.schema_version, self.server_version
            )));
        }
        if self.schema_version < SCHEMA_VERSION {
            return Err(BackupError::Refused(format!(
                "the backup has store schema {}; restore it with the fleet-server that took it ({}), start it once to migrate, then take a new backup",
                self.schema_version, self.server_version
            )));
        }
        let store_dir = data_dir.join("store");
        if store_dir.exists() && !force {
            return Err(BackupError::Refused(format!(
                "{} already holds a store; restore into a new --data directory, or pass --force to write over it",
                store_dir.display()
            )));
        }
        let mut records = Vec::new();
        for (c, entries) in &self.collections {
            for (k, v) in entries {
                let key = fleet_proto::hex::decode(k).ok_or_else(|| {
                    BackupError::Refused(format!("record key {k:?} in {c:?} is not hex"))
                })?;
                let value = serde_json::to_vec(v).map_err(|e| {
                    BackupError::Refused(format!("record {k} in {c:?} does not encode: {e}"))
                })?;
                records.push((*c, key, value));
            }
        }
        for (name, text) in &self.files {
            if name == SECRETS_KEY {
                let key = fleet_proto::hex::decode(text.trim())
                    .filter(|k| k.len() == crate::secrets::KEY_BYTES)
                    .ok_or_else(|| {
                        BackupError::Refused(format!(
                            "{SECRETS_KEY} in the backup is not {} bytes of hex",
                            crate::secrets::KEY_BYTES
                        ))
                    })?;
                std::fs::create_dir_all(data_dir).map_err(|source| BackupError::Io {
                    path: data_dir.display().to_string(),
                    source,
                })?;
                let path = data_dir.join(SECRETS_KEY);
                keyfile::write_file(&path, &key, 0o600).map_err(|e| {
                    BackupError::Refused(format!("cannot write {}: {e}", path.display()))
                })?;
                continue;
            }
            if !KEY_FILES.contains(&name.as_str()) {
                return Err(BackupError::Refused(format!(
                    "unexpected file {name:?} in the backup"
                )));
            }
            let path = data_dir.join(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|source| BackupError::Io {
                    path: parent.display().to_string(),
                    source,
                })?;
            }
            let mode = if name.ends_with(".pem") { 0o644 } else { 0o600 };
            keyfile::write_file(&path, text.as_bytes(), mode).map_err(|e| {
                BackupError::Refused(format!("cannot write {}: {e}", path.display()))
            })?;
        }
        let n = records.len();
        Store::open(&store_dir)?.load(records)?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use fleet_proto::{samples, Message};

    use super::*;
    use crate::devices::DeviceRecord;

    #[test]
    fn a_backup_restores_every_record_and_key_and_refuses_to_overwrite() {
        let from = tempfile::tempdir().unwrap();
        let store = Store::open(&from.path().join("store")).unwrap();
        let rec = DeviceRecord::observe(None, &Message::Status(samples::status())).unwrap();
        store
            .update(|tx| {
                tx.put_device(&rec);
                assert_eq!(tx.next_rollout_id()?, 1);
                tx.add_event(&samples::event())
            })
            .unwrap();
        std::fs::write(from.path().join("admin-token"), "secret\n").unwrap();
        let backup = Backup::take(&store, from.path()).unwrap();
        let text = serde_json::to_string(&backup).unwrap();
        let backup: Backup = serde_json::from_str(&text).unwrap();

        let to = tempfile::tempdir().unwrap();
        assert_eq!(backup.restore(to.path(), false).unwrap(), 3);
        let restored = Store::open(&to.path().join("store")).unwrap();
        assert_eq!(restored.devices().unwrap(), vec![rec.clone()]);
        assert_eq!(restored.events(&rec.id, 10).unwrap(), vec![samples::event()]);
        assert_eq!(std::fs::read_to_string(to.path().join("admin-token")).unwrap(), "secret\n");
        let next = restored.update(|tx| tx.next_rollout_id()).unwrap();
        assert_eq!(next, 2, "rollout ids go on where they were, never reused");
        drop(restored);
        let again = backup.restore(to.path(), false).unwrap_err().to_string();
        assert!(again.contains("already holds a store"), "{again}");
    }

    #[test]
    fn secrets_are_in_a_backup_only_encrypted_and_restore_with_their_key() {
        use crate::secrets::{SecretValue, Vault};
        use crate::variables::Scope;
        let value = "s3cr3t-value-never-in-clear";
        let from = tempfile::tempdir().unwrap();
        let (vault, _) = Vault::open_or_create(&from.path().join("secrets.key")).unwrap();
        let store = Store::open(&from.path().join("store")).unwrap();
        let record = vault
            .encrypt(
                "db",
                &Scope::default(),
                &SecretValue::new(value.as_bytes().to_vec()),
                UnixMillis(1),
                "ops",
            )
            .unwrap();
        store
            .update(|tx| {
                tx.put_secret(&record);
                Ok::<_, StoreError>(())
            })
            .unwrap();
        let text = serde_json::to_string(&Backup::take(&store, from.path()).unwrap()).unwrap();
        assert!(!text.contains(value), "the value is not in the backup in the clear");
        assert!(!text.contains(&fleet_proto::hex::encode(value.as_bytes())));
        let backup: Backup = serde_json::from_str(&text).unwrap();
        let to = tempfile::tempdir().unwrap();
        backup.restore(to.path(), false).unwrap();
        let (restored_vault, created) =
            Vault::open_or_create(&to.path().join("secrets.key")).unwrap();
        assert!(!created, "the key came back with the backup");
        let restored = Store::open(&to.path().join("store")).unwrap().secrets().unwrap();
        assert_eq!(restored_vault.decrypt(&restored[0]).unwrap().bytes(), value.as_bytes());
    }

    #[test]
    fn foreign_or_newer_documents_are_refused_before_anything_is_written() {
        let to = tempfile::tempdir().unwrap();
        let mut backup = Backup {
            format: "something-else".into(),
            schema_version: SCHEMA_VERSION,
            created_at: UnixMillis(0),
            server_version: "0.1.0".into(),
            collections: BTreeMap::new(),
            files: BTreeMap::new(),
        };
        assert!(backup
            .restore(to.path(), false)
            .unwrap_err()
            .to_string()
            .contains("not a Fleet backup"));
        backup.format = FORMAT.into();
        backup.schema_version = SCHEMA_VERSION + 1;
        assert!(backup.restore(to.path(), false).unwrap_err().to_string().contains("newer"));
        assert!(!to.path().join("store").exists());
    }
}
