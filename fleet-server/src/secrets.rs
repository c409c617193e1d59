//! Secrets: values (passwords, keys, certificates) set for the whole fleet, a group or one
//! device, stored encrypted, resolved per device and delivered sealed to that device alone.
//!
//! At rest: each value is encrypted with ChaCha20-Poly1305 under `<data>/secrets.key` (32
//! random bytes made on the server's first start), with a random 96-bit nonce per value and
//! the scope and name as associated data, so a record copied to another scope or name no
//! longer opens. Next to it the store keeps a keyed digest of the value (HMAC-SHA256 under a
//! key derived from `secrets.key`, first 16 bytes in hex): the same value always has the same
//! digest, a different value a different one, and the digest says nothing about the value
//! without the key. Devices fold the digest into the config hash of the services that mount
//! the secret, so a rotation restarts exactly those.
//!
//! Precedence is the variables' ([`crate::variables::ScopedIndex`]): device > groups (the
//! device's groups in name order, the last wins) > fleet.
//!
//! Invariants: no value ever appears in a log line, an error, an audit entry, an API answer or
//! a `Debug` output — values live only in [`SecretValue`] (whose `Debug` prints the length),
//! in ciphertext, and sealed to one device's key. A device gets only the secrets its release's
//! services mount.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use fleet_proto::{ReleaseSpec, SealKey, SealedSecret, UnixMillis};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::{hkdf, hmac};
use serde::{Deserialize, Serialize};

use crate::groups::Group;
use crate::keyfile::{self, KeyFileError};
use crate::variables::{Scope, Scoped, ScopedIndex};

pub use fleet_api::secrets::MAX_VALUE_BYTES;

/// Bytes of `secrets.key`.
pub const KEY_BYTES: usize = 32;

/// HKDF info of the digest key: never the encryption key itself.
const DIGEST_INFO: &[u8] = b"fleet-server secret digest v1";
const DIGEST_SALT: &[u8] = b"fleet-server secrets";

/// Why `secrets.key` cannot be loaded or made.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The file cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file exists but is not a key.
    #[error("{path} is {len} bytes, but a secrets key is exactly {KEY_BYTES}; restore it from a backup (a new key would make every stored secret unreadable)")]
    WrongSize {
        /// The file.
        path: String,
        /// Its size.
        len: usize,
    },
    /// Others can read it.
    #[error("{path} is readable by group or others (mode {mode:o}); run: chmod 600 {path}")]
    Permissions {
        /// The file.
        path: String,
        /// Its mode.
        mode: u32,
    },
    /// The OS random source failed.
    #[error("the system random source failed")]
    Random,
}

/// Why a secret cannot be stored, opened or sealed. Never carries the value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// A stored record does not open with this server's `secrets.key`.
    #[error("the stored value of secret {name} ({scope}) does not decrypt with this server's secrets.key (was the key replaced, or the record edited?); set it again with `fleetctl secret set {name}`")]
    Unreadable {
        /// The secret.
        name: String,
        /// Its scope.
        scope: String,
    },
    /// The OS random source failed.
    #[error("the system random source failed")]
    Random,
    /// Sealing to the device failed.
    #[error("cannot seal secret {name} to device {device}: {source}")]
    Seal {
        /// The secret.
        name: String,
        /// The device.
        device: String,
        /// Why.
        #[source]
        source: fleet_proto::SealError,
    },
}

/// A secret's plaintext, held only as long as it takes to encrypt or seal it. Its `Debug`
/// prints the length only.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(Vec<u8>);

impl SecretValue {
    /// The value.
    pub fn new(bytes: Vec<u8>) -> SecretValue {
        SecretValue(bytes)
    }

    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretValue({} bytes)", self.0.len())
    }
}

impl Drop for SecretValue {
    fn drop(&mut self) {
        // Best effort: the allocator may have copied it before; this keeps it from lingering
        // in a freed block.
        self.0.iter_mut().for_each(|b| *b = 0);
    }
}

/// The server's secrets key: encrypts values at rest and keys their digests.
pub struct Vault {
    aead: LessSafeKey,
    digest: hmac::Key,
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Vault(..)")
    }
}

impl Vault {
    /// Loads `path`, creating it (mode 0600) when it does not exist. Returns whether it was
    /// created. A file of the wrong size is refused, never replaced.
    pub fn open_or_create(path: &Path) -> Result<(Vault, bool), VaultError> {
        let io = |source| VaultError::Io { path: path.display().to_string(), source };
        let created = !path.exists();
        if created {
            let key = keyfile::random::<KEY_BYTES>().map_err(|_| VaultError::Random)?;
            keyfile::write_file(path, &key, 0o600).map_err(|e| match e {
                KeyFileError::Io { source, .. } => io(source),
                _ => VaultError::Random,
            })?;
        }
        let mode = std::fs::metadata(path).map_err(io)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(VaultError::Permissions { path: path.display().to_string(), mode });
        }
        let bytes = std::fs::read(path).map_err(io)?;
        let key: [u8; KEY_BYTES] = bytes.as_slice().try_into().map_err(|_| {
            VaultError::WrongSize { path: path.display().to_string(), len: bytes.len() }
        })?;
        Ok((Vault::from_key(&key), created))
    }

    /// The vault of `key`.
    pub fn from_key(key: &[u8; KEY_BYTES]) -> Vault {
        // A 32-byte key is exactly what ChaCha20-Poly1305 takes, and a 32-byte HKDF output is
        // within its limit: neither can fail.
        let aead = LessSafeKey::new(
            UnboundKey::new(&CHACHA20_POLY1305, key).expect("a 32-byte ChaCha20 key"),
        );
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, DIGEST_SALT).extract(key);
        let digest = hmac::Key::from(
            prk.expand(&[DIGEST_INFO], hmac::HMAC_SHA256).expect("an HMAC-SHA256 key length"),
        );
        Vault { aead, digest }
    }

    /// The value's digest: stable for the same value, different for a different one, and
    /// meaningless without `secrets.key`.
    pub fn digest(&self, value: &[u8]) -> String {
        fleet_proto::hex::encode(&hmac::sign(&self.digest, value).as_ref()[..16])
    }

    /// Encrypts `value` as secret `name` in `scope`.
    pub fn encrypt(
        &self,
        name: &str,
        scope: &Scope,
        value: &SecretValue,
        set_at: UnixMillis,
        set_by: &str,
    ) -> Result<SecretRecord, SecretError> {
        let nonce = keyfile::random::<NONCE_LEN>().map_err(|_| SecretError::Random)?;
        let mut buf = value.bytes().to_vec();
        self.aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(scope.key(name).as_bytes()),
                &mut buf,
            )
            .map_err(|_| SecretError::Random)?;
        Ok(SecretRecord {
            name: name.to_owned(),
            scope: scope.clone(),
            nonce: fleet_proto::hex::encode(&nonce),
            ciphertext: fleet_proto::hex::encode(&buf),
            digest: self.digest(value.bytes()),
            bytes: value.bytes().len(),
            set_at,
            set_by: set_by.to_owned(),
        })
    }

    /// The value of `record`.
    pub fn decrypt(&self, record: &SecretRecord) -> Result<SecretValue, SecretError> {
        let unreadable = || SecretError::Unreadable {
            name: record.name.clone(),
            scope: record.scope.to_string(),
        };
        let nonce: [u8; NONCE_LEN] = fleet_proto::hex::decode(&record.nonce)
            .and_then(|n| n.try_into().ok())
            .ok_or_else(unreadable)?;
        let mut buf = fleet_proto::hex::decode(&record.ciphertext).ok_or_else(unreadable)?;
        let plain = self
            .aead
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(record.key().as_bytes()),
                &mut buf,
            )
            .map_err(|_| unreadable())?;
        let value = SecretValue(plain.to_vec());
        buf.iter_mut().for_each(|b| *b = 0);
        Ok(value)
    }

    /// `record`'s value sealed to `device`'s key: only that device can open it.
    pub fn seal_for(
        &self,
        record: &SecretRecord,
        device: &str,
        key: &SealKey,
    ) -> Result<SealedSecret, SecretError> {
        let value = self.decrypt(record)?;
        let aad = fleet_proto::seal::secret_aad(device, &record.name, &record.digest);
        let sealed = fleet_proto::seal::seal(key, value.bytes(), &aad).map_err(|source| {
            SecretError::Seal { name: record.name.clone(), device: device.to_owned(), source }
        })?;
        Ok(SealedSecret { name: record.name.clone(), digest: record.digest.clone(), sealed })
    }
}

/// A stored secret: its value only as ciphertext.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRecord {
    /// Its name.
    pub name: String,
    /// Where it applies (never a service).
    #[serde(flatten)]
    pub scope: Scope,
    /// The ChaCha20-Poly1305 nonce, hex.
    pub nonce: String,
    /// The encrypted value and its tag, hex.
    pub ciphertext: String,
    /// The keyed digest of the value ([`Vault::digest`]).
    pub digest: String,
    /// The value's length.
    pub bytes: usize,
    /// When it was set.
    pub set_at: UnixMillis,
    /// Which token set it.
    pub set_by: String,
}

impl fmt::Debug for SecretRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretRecord")
            .field("name", &self.name)
            .field("scope", &self.scope.to_string())
            .field("digest", &self.digest)
            .field("bytes", &self.bytes)
            .field("set_at", &self.set_at)
            .field("set_by", &self.set_by)
            .finish_non_exhaustive()
    }
}

impl SecretRecord {
    /// Its store key (also the associated data of its ciphertext).
    pub fn key(&self) -> String {
        self.scope.key(&self.name)
    }
}

impl Scoped for SecretRecord {
    fn scope(&self) -> &Scope {
        &self.scope
    }
}

// How the API shows a secret (never its value); made from the record below.
pub use fleet_api::secrets::{ScopeKind, SecretView};

impl From<&SecretRecord> for SecretView {
    fn from(r: &SecretRecord) -> SecretView {
        let scope = match (&r.scope.group, &r.scope.device) {
            (_, Some(_)) => ScopeKind::Device,
            (Some(_), None) => ScopeKind::Group,
            (None, None) => ScopeKind::Fleet,
        };
        SecretView {
            name: r.name.clone(),
            scope,
            group: r.scope.group.clone(),
            device: r.scope.device.clone(),
            digest: r.digest.clone(),
            bytes: r.bytes,
            set_at: r.set_at,
            set_by: r.set_by.clone(),
        }
    }
}

/// Checks a secret's name: what a Compose file can name ([`fleet_proto::release::is_object_name`]).
pub fn check_name(name: &str) -> Result<(), String> {
    if fleet_proto::release::is_object_name(name) {
        Ok(())
    } else {
        Err(format!(
            "secret name {:?}: use letters, digits, _, . and -, starting with a letter or digit, at most 64",
            name.chars().take(70).collect::<String>()
        ))
    }
}

/// Checks a value's size: 1 to [`MAX_VALUE_BYTES`] bytes, anything else binary-safe.
pub fn check_value(name: &str, len: usize) -> Result<(), String> {
    if len == 0 {
        return Err(format!(
            "the value of {name} is empty; pipe the value in: fleetctl secret set {name} < file"
        ));
    }
    if len > MAX_VALUE_BYTES {
        return Err(format!(
            "the value of {name} is {len} bytes; at most {MAX_VALUE_BYTES} (64 KiB) are accepted (large files belong in the image or a volume)"
        ));
    }
    Ok(())
}

/// The secrets a release's services mount, by store name.
pub fn mounted(spec: &ReleaseSpec) -> BTreeSet<String> {
    spec.services.iter().flat_map(|s| s.secrets.iter().map(|m| m.source.clone())).collect()
}

/// Every secret, indexed for resolving many devices in one change.
#[derive(Debug, Clone, Default)]
pub struct SecretIndex(ScopedIndex<SecretRecord>);

impl SecretIndex {
    /// Indexes `records`; secrets of a group that no longer exists apply to nobody.
    pub fn new(records: Vec<SecretRecord>, groups: &[Group]) -> SecretIndex {
        SecretIndex(ScopedIndex::new(records, groups))
    }

    /// The record in force for secret `name` on the device, if any.
    pub fn resolve(
        &self,
        id: &str,
        labels: &BTreeMap<String, String>,
        name: &str,
    ) -> Option<&SecretRecord> {
        self.0.applicable(id, labels).into_iter().rev().find(|r| r.name == name)
    }

    /// The digest in force on the device for each of `names` (`None`: no value).
    pub fn digests(
        &self,
        id: &str,
        labels: &BTreeMap<String, String>,
        names: &BTreeSet<String>,
    ) -> BTreeMap<String, Option<String>> {
        let applicable = self.0.applicable(id, labels);
        names
            .iter()
            .map(|n| {
                let digest =
                    applicable.iter().rev().find(|r| &r.name == n).map(|r| r.digest.clone());
                (n.clone(), digest)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use fleet_proto::DeviceSealKey;

    use super::*;
    use crate::groups::Selector;

    fn vault() -> Vault {
        Vault::from_key(&[7; KEY_BYTES])
    }

    fn scope(group: Option<&str>, device: Option<&str>) -> Scope {
        Scope { group: group.map(Into::into), device: device.map(Into::into), service: None }
    }

    fn record(v: &Vault, name: &str, value: &[u8], s: Scope) -> SecretRecord {
        v.encrypt(name, &s, &SecretValue::new(value.to_vec()), UnixMillis(1), "ops").unwrap()
    }

    fn group(name: &str, selector: &str) -> Group {
        Group {
            name: name.into(),
            selector: Selector::parse(selector).unwrap(),
            description: String::new(),
            created_at: UnixMillis(1),
            created_by: "admin".into(),
        }
    }

    #[test]
    fn a_value_round_trips_and_only_opens_in_its_own_scope_and_name() {
        let v = vault();
        let value = b"\x00\xffbinary key\n".to_vec();
        let r = record(&v, "db_password", &value, scope(Some("depot"), None));
        assert_eq!(v.decrypt(&r).unwrap().bytes(), value);
        assert_eq!(r.bytes, value.len());
        assert!(!r.ciphertext.contains(&fleet_proto::hex::encode(&value)));
        let moved = SecretRecord { scope: scope(None, None), ..r.clone() };
        assert!(v.decrypt(&moved).is_err(), "a record copied to another scope does not open");
        let renamed = SecretRecord { name: "other".into(), ..r.clone() };
        assert!(v.decrypt(&renamed).is_err());
        let other_key = Vault::from_key(&[8; KEY_BYTES]);
        let err = other_key.decrypt(&r).unwrap_err().to_string();
        assert!(err.contains("secrets.key") && err.contains("db_password"), "{err}");
        // Two encryptions of one value differ (fresh nonce), their digests do not.
        let again = record(&v, "db_password", &value, scope(Some("depot"), None));
        assert_ne!(again.ciphertext, r.ciphertext);
        assert_eq!(again.digest, r.digest);
    }

    #[test]
    fn digests_are_stable_per_value_and_key_and_differ_otherwise() {
        let v = vault();
        assert_eq!(v.digest(b"a"), v.digest(b"a"));
        assert_ne!(v.digest(b"a"), v.digest(b"b"));
        assert_eq!(v.digest(b"a").len(), 32);
        assert_ne!(v.digest(b"a"), Vault::from_key(&[8; KEY_BYTES]).digest(b"a"));
        // Not a plain hash of the value.
        let plain = ring::digest::digest(&ring::digest::SHA256, b"a");
        assert!(!fleet_proto::hex::encode(plain.as_ref()).starts_with(&v.digest(b"a")));
        // Frozen: a changed derivation would restart every consuming service in the fleet.
        assert_eq!(v.digest(b"hunter2"), Vault::from_key(&[7; KEY_BYTES]).digest(b"hunter2"));
    }

    #[test]
    fn device_beats_groups_by_name_beats_fleet() {
        let v = vault();
        let groups = [group("a-site", "gpu"), group("b-site", "site=depot")];
        let labels: BTreeMap<String, String> =
            [("site".to_owned(), "depot".to_owned()), ("gpu".to_owned(), String::new())].into();
        let all = vec![
            record(&v, "k", b"device", scope(None, Some("r1"))),
            record(&v, "k", b"b", scope(Some("b-site"), None)),
            record(&v, "k", b"a", scope(Some("a-site"), None)),
            record(&v, "k", b"fleet", scope(None, None)),
            record(&v, "k", b"gone", scope(Some("gone"), None)),
        ];
        for n in (1..=4).rev() {
            let index = SecretIndex::new(all[4 - n..].to_vec(), &groups);
            let got = index.resolve("r1", &labels, "k").unwrap();
            let want = v.decrypt(&all[4 - n]).unwrap();
            assert_eq!(v.decrypt(got).unwrap(), want, "with {n} scopes set");
        }
        let index = SecretIndex::new(all.clone(), &groups);
        let other = index.resolve("r2", &BTreeMap::new(), "k").unwrap();
        assert_eq!(v.decrypt(other).unwrap().bytes(), b"fleet");
        assert!(index.resolve("r1", &labels, "nope").is_none());
        let names: BTreeSet<String> = ["k".to_owned(), "nope".to_owned()].into();
        let digests = index.digests("r1", &labels, &names);
        assert_eq!(digests["k"].as_deref(), Some(v.digest(b"device").as_str()));
        assert_eq!(digests["nope"], None);
    }

    #[test]
    fn a_sealed_secret_opens_only_on_its_device() {
        let v = vault();
        let device_key = DeviceSealKey::generate().unwrap();
        let r = record(&v, "tls.key", b"-----BEGIN KEY-----", scope(None, None));
        let sealed = v.seal_for(&r, "robot-7", &device_key.public()).unwrap();
        assert_eq!(sealed.digest, r.digest);
        let aad = fleet_proto::seal::secret_aad("robot-7", "tls.key", &r.digest);
        assert_eq!(device_key.open(&sealed.sealed, &aad).unwrap(), b"-----BEGIN KEY-----");
        let wrong = fleet_proto::seal::secret_aad("robot-8", "tls.key", &r.digest);
        assert!(device_key.open(&sealed.sealed, &wrong).is_err());
        assert!(DeviceSealKey::generate().unwrap().open(&sealed.sealed, &aad).is_err());
    }

    #[test]
    fn names_and_sizes_are_checked_with_the_reason() {
        assert!(check_name("db_password").is_ok());
        assert!(check_name("tls.key").is_ok());
        assert!(check_name("-x").is_err());
        assert!(check_name("a/b").unwrap_err().contains("letters"));
        assert!(check_name(&"a".repeat(65)).is_err());
        assert!(check_value("k", 1).is_ok());
        assert!(check_value("k", MAX_VALUE_BYTES).is_ok());
        assert!(check_value("k", 0).unwrap_err().contains("empty"));
        assert!(check_value("k", MAX_VALUE_BYTES + 1).unwrap_err().contains("65537 bytes"));
    }

    #[test]
    fn nothing_prints_a_value() {
        let v = vault();
        let secret = "correct-horse-battery-staple";
        let r = record(&v, "k", secret.as_bytes(), scope(Some("g"), None));
        let value = v.decrypt(&r).unwrap();
        let view = SecretView::from(&r);
        let texts = [
            format!("{r:?}"),
            format!("{value:?}"),
            format!("{v:?}"),
            format!("{view:?}"),
            serde_json::to_string(&r).unwrap(),
            serde_json::to_string(&view).unwrap(),
            Vault::from_key(&[1; KEY_BYTES]).decrypt(&r).unwrap_err().to_string(),
        ];
        for t in texts {
            assert!(!t.contains(secret), "{t}");
            assert!(!t.contains(&fleet_proto::hex::encode(secret.as_bytes())), "{t}");
        }
    }

    /// Every byte under `dir`, file by file.
    fn files_under(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                out.extend(files_under(&path));
            } else {
                out.push((path.display().to_string(), std::fs::read(&path).unwrap()));
            }
        }
        out
    }

    #[test]
    fn a_stored_value_is_nowhere_on_disk_in_the_clear() {
        let dir = tempfile::tempdir().unwrap();
        let (v, _) = Vault::open_or_create(&dir.path().join("secrets.key")).unwrap();
        let value = b"plaintext-password-4711".to_vec();
        let store = crate::store::Store::open(&dir.path().join("store")).unwrap();
        let r = record(&v, "db", &value, scope(Some("depot"), None));
        store
            .update(|tx| {
                tx.put_secret(&r);
                Ok::<_, crate::store::StoreError>(())
            })
            .unwrap();
        store.backend().flush().unwrap();
        assert_eq!(v.decrypt(&store.secrets().unwrap()[0]).unwrap().bytes(), value);
        drop(store);
        let files = files_under(dir.path());
        assert!(files.len() > 1, "the store wrote its files");
        let hex = fleet_proto::hex::encode(&value);
        for (path, bytes) in files {
            let found = bytes.windows(value.len()).any(|w| w == value.as_slice())
                || bytes.windows(hex.len()).any(|w| w == hex.as_bytes());
            assert!(!found, "{path} holds the value");
        }
    }

    #[test]
    fn the_key_file_is_made_once_private_and_a_wrong_size_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.key");
        let (first, created) = Vault::open_or_create(&path).unwrap();
        assert!(created);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read(&path).unwrap().len(), KEY_BYTES);
        let (second, created) = Vault::open_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(first.digest(b"x"), second.digest(b"x"), "the same key after a restart");
        keyfile::write_file(&path, &[1; 31], 0o600).unwrap();
        let err = Vault::open_or_create(&path).unwrap_err().to_string();
        assert!(err.contains("31 bytes") && err.contains("backup"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap().len(), 31, "never replaced");
        keyfile::write_file(&path, &[1; 32], 0o644).unwrap();
        assert!(Vault::open_or_create(&path).unwrap_err().to_string().contains("chmod 600"));
    }
}
