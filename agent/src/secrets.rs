//! Secrets on the device: the key they are sealed to, and how a release's secret mounts become
//! read-only files in its containers.
//!
//! The server seals every secret to this device's X25519 key ([`fleet_proto::seal`]); the
//! private half is made on first start and never leaves `<data_dir>/secret.key` (0600). When a
//! desired state arrives, [`deliver`] opens the secrets its services declare (a missing or
//! unopenable one refuses the whole state, nothing changes), [`effective_release`] turns each
//! mount into a read-only bind of a file under the secrets directory (directories 0700, files
//! with the mode, owner and group the service asked for), and [`write_files`] writes them.
//!
//! The files live on a tmpfs (`[secrets] dir`, `/run/fleet-agent/secrets`), so no value is
//! ever written to flash in the clear: deleting `secret.key` makes every stored copy unreadable.
//! What survives a reboot is each file's [`SecretRecord`], the value still sealed, in the state
//! database. After a reboot the engine cannot start a service whose secret file is gone (a bind
//! mount of a missing path is an error, never an empty directory); the agent [`restore`]s the
//! files at start, and its first converge starts those services.
//!
//! A file's name carries the secret's digest, so the engine sees a rotated secret as a new
//! mount: exactly the services that read it get a new config hash and are re-created through
//! the normal health-gated update, and a rollback finds the previous value's file where the
//! proven release expects it. [`collect_garbage`] removes files no stored release refers to.
//!
//! A value never reaches an environment variable, a label, a log line, an event or a report;
//! `docker inspect` shows the file's path, never its content.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use fleet_proto::release::{SecretMount, VolumeMount, VolumeSource};
use fleet_proto::seal::{registry_credentials_aad, secret_aad};
use fleet_proto::{DesiredState, DeviceId, DeviceSealKey, RegistryCredential, ReleaseSpec};
use zeroize::Zeroizing;

/// The private key's file, under the data directory.
pub const KEY_FILE: &str = "secret.key";

/// Why the sealing key cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading, creating or writing the key file failed.
    #[error("cannot read or create the secrets key {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The file is there but does not hold a key.
    #[error("the secrets key {path} holds {len} bytes, not 32: it is damaged. Move it away and restart the agent; it makes a new key and the server seals the secrets again")]
    Damaged {
        /// The file.
        path: String,
        /// Its size.
        len: usize,
    },
    /// The random source failed.
    #[error("cannot make a secrets key: {0}")]
    Random(#[from] fleet_proto::SealError),
}

/// The device's proof that `key` is its sealing key ([`fleet_proto::StateReport::seal_key_proof`]):
/// the signature of [`fleet_proto::seal::seal_key_proof_message`] with the private key of its
/// certificate (`key_file`, PKCS#8 PEM as enrollment writes it), in hex. The server knows the
/// certificate's public key from enrollment and takes a sealing key only with this proof.
pub fn seal_key_proof(
    key_file: &Path,
    device: &DeviceId,
    key: &fleet_proto::SealKey,
) -> Result<String, String> {
    use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::PrivatePkcs8KeyDer;
    let der = PrivatePkcs8KeyDer::from_pem_file(key_file)
        .map_err(|e| format!("{}: not a PKCS#8 PEM private key: {e}", key_file.display()))?;
    let rng = ring::rand::SystemRandom::new();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, der.secret_pkcs8_der(), &rng)
            .map_err(|e| format!("{}: not a P-256 key: {e}", key_file.display()))?;
    let message = fleet_proto::seal::seal_key_proof_message(device, key);
    let signature = pair.sign(&rng, &message).map_err(|e| format!("cannot sign: {e}"))?;
    Ok(fleet_proto::hex::encode(signature.as_ref()))
}

/// The device's sealing key from `path`, made (0600) when there is none yet.
pub fn load_or_create_key(path: &Path) -> Result<DeviceSealKey, KeyError> {
    let io = |source| KeyError::Io { path: path.display().to_string(), source };
    match std::fs::read(path) {
        Ok(bytes) => {
            let bytes = Zeroizing::new(bytes);
            let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| KeyError::Damaged {
                path: path.display().to_string(),
                len: bytes.len(),
            })?;
            Ok(DeviceSealKey::from_bytes(key))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = DeviceSealKey::generate()?;
            let tmp = path.with_extension("key.tmp");
            let _ = std::fs::remove_file(&tmp);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io)?;
            f.write_all(&Zeroizing::new(key.to_bytes())[..]).map_err(io)?;
            f.sync_all().map_err(io)?;
            std::fs::rename(&tmp, path).map_err(io)?;
            Ok(key)
        }
        Err(e) => Err(io(e)),
    }
}

/// A secret opened from a desired state. Its value is wiped when dropped and never printed.
pub struct Opened {
    /// Changes with the value (from the server).
    pub digest: String,
    value: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened")
            .field("digest", &self.digest)
            .field("bytes", &self.value.len())
            .finish()
    }
}

/// What a desired state delivered: the secrets, by name, and the registry logins.
#[derive(Debug, Default)]
pub struct Delivered {
    /// The secrets, by name.
    pub secrets: BTreeMap<String, Opened>,
    /// Registry logins that came sealed.
    pub registry_credentials: Vec<RegistryCredential>,
}

/// Opens what `desired` carries sealed to this device, and checks that every secret its
/// release mounts came. Returns every problem (service, secret and why), never a value.
pub fn deliver(
    key: &DeviceSealKey,
    device: &DeviceId,
    desired: &DesiredState,
) -> Result<Delivered, Vec<String>> {
    let mut problems = Vec::new();
    let mut delivered = Delivered::default();
    for s in &desired.secrets {
        // Both become part of a file name under the secrets directory (`file_path`).
        let digest_ok = (1..=128).contains(&s.digest.len())
            && s.digest.bytes().all(|b| b.is_ascii_alphanumeric());
        if !fleet_proto::release::is_object_name(&s.name) || !digest_ok {
            problems.push(format!(
                "secret {:?}: its name or digest {:?} cannot name a file; refused",
                s.name, s.digest
            ));
            continue;
        }
        match key.open(&s.sealed, &secret_aad(device.as_str(), &s.name, &s.digest)) {
            Ok(value) => {
                delivered.secrets.insert(
                    s.name.clone(),
                    Opened { digest: s.digest.clone(), value: Zeroizing::new(value) },
                );
            }
            Err(e) => problems.push(format!("secret {:?}: {e}", s.name)),
        }
    }
    if !desired.sealed_registry_credentials.is_empty() {
        match key
            .open(&desired.sealed_registry_credentials, &registry_credentials_aad(device.as_str()))
        {
            Ok(bytes) => {
                let bytes = Zeroizing::new(bytes);
                match postcard::from_bytes::<Vec<RegistryCredential>>(&bytes) {
                    Ok(creds) => delivered.registry_credentials = creds,
                    Err(e) => {
                        problems.push(format!("the sealed registry credentials do not decode: {e}"))
                    }
                }
            }
            Err(e) => problems.push(format!("the sealed registry credentials: {e}")),
        }
    }
    for svc in desired.release.iter().flat_map(|r| r.services.iter()) {
        for m in &svc.secrets {
            if !delivered.secrets.contains_key(&m.source)
                && !problems.iter().any(|p| p.starts_with(&format!("secret {:?}", m.source)))
            {
                problems.push(format!(
                    "service {} mounts secret {:?}, which the server did not deliver (this device may not have reported its sealing key yet, or the secret has no value for it: `fleetctl secret ls`)",
                    svc.name, m.source
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(delivered)
    } else {
        Err(problems)
    }
}

/// One file to write for a secret mount.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SecretFile {
    /// Where on the host.
    pub path: PathBuf,
    /// The secret.
    pub secret: String,
    /// The digest of its value.
    pub digest: String,
    /// Permission bits.
    pub mode: u32,
    /// Owner (`None`: root).
    pub uid: Option<u32>,
    /// Group (`None`: root).
    pub gid: Option<u32>,
}

/// The file of `mount` of `service` in `app`, holding the value with `digest`. Everything that
/// makes the file differ is in its name, so two containers never share a file that changes.
fn file_path(dir: &Path, app: &str, service: &str, m: &SecretMount, digest: &str) -> PathBuf {
    let id = |v: Option<u32>| v.map_or_else(|| "r".to_owned(), |v| v.to_string());
    dir.join(app).join(service).join(format!(
        "{}.{digest}.{:o}.{}.{}",
        m.source,
        m.file_mode(),
        id(m.uid),
        id(m.gid)
    ))
}

/// `release` as the engine runs it: each secret mount becomes a read-only bind of its file
/// under `dir` (pure). `digests` are the delivered secrets' digests by name; [`deliver`] has
/// checked that every mount has one. Also returns the files to write.
pub fn effective_release(
    dir: &Path,
    release: &ReleaseSpec,
    digests: &BTreeMap<String, String>,
) -> (ReleaseSpec, Vec<SecretFile>) {
    let mut out = release.clone();
    let mut files = Vec::new();
    for svc in &mut out.services {
        for m in &svc.secrets {
            let digest = digests.get(&m.source).map_or("missing", String::as_str);
            let path = file_path(dir, &release.app, svc.name.as_str(), m, digest);
            svc.volumes.push(VolumeMount {
                source: VolumeSource::HostPath(path.display().to_string()),
                target: m.container_path(),
                read_only: true,
            });
            files.push(SecretFile {
                path,
                secret: m.source.clone(),
                digest: digest.to_owned(),
                mode: m.file_mode(),
                uid: m.uid,
                gid: m.gid,
            });
        }
    }
    files.dedup();
    (out, files)
}

/// The digests of what was delivered, for [`effective_release`].
pub fn digests(delivered: &Delivered) -> BTreeMap<String, String> {
    delivered.secrets.iter().map(|(k, v)| (k.clone(), v.digest.clone())).collect()
}

/// A secret file as the state database keeps it: where it goes, and its value still sealed
/// to this device, so that it can be written again after a reboot.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SecretRecord {
    /// The file.
    pub file: SecretFile,
    /// The value, as the server sealed it ([`fleet_proto::seal::secret_aad`]).
    pub sealed: Vec<u8>,
}

impl std::fmt::Debug for SecretRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretRecord").field("file", &self.file).finish_non_exhaustive()
    }
}

/// The records of `files`, with their sealed values from `desired`.
pub fn records(files: &[SecretFile], desired: &DesiredState) -> Vec<SecretRecord> {
    files
        .iter()
        .filter_map(|f| {
            let s = desired.secrets.iter().find(|s| s.name == f.secret && s.digest == f.digest)?;
            Some(SecretRecord { file: f.clone(), sealed: s.sealed.clone() })
        })
        .collect()
}

/// `kept` with `new` added (a file's path says all about it: a record for the same path is the
/// same file).
pub fn merge(mut kept: Vec<SecretRecord>, new: Vec<SecretRecord>) -> Vec<SecretRecord> {
    for r in new {
        if !kept.iter().any(|k| k.file.path == r.file.path) {
            kept.push(r);
        }
    }
    kept
}

/// Writes `files` with the delivered values: directories 0700 (root only), each file written
/// to a temporary name, given its mode and owner, then renamed into place.
pub fn write_files(dir: &Path, files: &[SecretFile], delivered: &Delivered) -> std::io::Result<()> {
    for f in files {
        if let Some(opened) = delivered.secrets.get(&f.secret) {
            write_file(dir, f, &opened.value)?;
        }
    }
    Ok(())
}

/// Writes the files of `records` that are missing (after a reboot emptied the tmpfs), opening
/// each value with `key`. Returns how many it wrote, and a line per file it could not.
pub fn restore(
    dir: &Path,
    key: &DeviceSealKey,
    device: &DeviceId,
    records: &[SecretRecord],
) -> (usize, Vec<String>) {
    let (mut written, mut problems) = (0, Vec::new());
    for r in records.iter().filter(|r| !r.file.path.exists()) {
        let aad = secret_aad(device.as_str(), &r.file.secret, &r.file.digest);
        let result = key
            .open(&r.sealed, &aad)
            .map_err(|e| e.to_string())
            .and_then(|v| write_file(dir, &r.file, &Zeroizing::new(v)).map_err(|e| e.to_string()));
        match result {
            Ok(()) => written += 1,
            Err(e) => problems.push(format!(
                "secret {:?} ({}): {e}",
                r.file.secret,
                r.file.path.display()
            )),
        }
    }
    (written, problems)
}

fn write_file(dir: &Path, f: &SecretFile, value: &[u8]) -> std::io::Result<()> {
    create_private_dir(dir)?;
    let parent = f.path.parent().unwrap_or(dir);
    let mut below: Vec<&Path> =
        parent.ancestors().take_while(|d| d.starts_with(dir) && *d != dir).collect();
    below.reverse();
    for d in below {
        create_private_dir(d)?;
    }
    let tmp = f.path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut out =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    out.write_all(value)?;
    out.sync_all()?;
    drop(out);
    // The mode first, while the agent still owns the file: changing a file someone else owns
    // would take CAP_FOWNER, which the shipped unit does not grant (only CAP_CHOWN).
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(f.mode))?;
    if f.uid.is_some() || f.gid.is_some() {
        std::os::unix::fs::chown(&tmp, f.uid, f.gid)?;
    }
    std::fs::rename(&tmp, &f.path)
}

fn create_private_dir(d: &Path) -> std::io::Result<()> {
    match std::fs::create_dir(d) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))
}

/// Removes every file under `dir` that none of `keep` binds (a rotated value once no stored
/// release refers to it, an app that left the device), and directories left empty. Returns
/// how many files it removed.
pub fn collect_garbage(dir: &Path, keep: &[&ReleaseSpec]) -> usize {
    sweep(dir, &in_use(dir, keep))
}

/// The secret files under `dir` that `keep` bind.
pub fn in_use(dir: &Path, keep: &[&ReleaseSpec]) -> BTreeSet<PathBuf> {
    keep.iter()
        .flat_map(|r| r.services.iter())
        .flat_map(|s| s.volumes.iter())
        .filter_map(|v| match &v.source {
            VolumeSource::HostPath(p) => Some(PathBuf::from(p)),
            _ => None,
        })
        .filter(|p| p.starts_with(dir))
        .collect()
}

fn sweep(d: &Path, wanted: &BTreeSet<PathBuf>) -> usize {
    let Ok(entries) = std::fs::read_dir(d) else { return 0 };
    let mut removed = 0;
    for e in entries.flatten() {
        let path = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => {
                removed += sweep(&path, wanted);
                // Fails while not empty, which is what we want.
                let _ = std::fs::remove_dir(&path);
            }
            Ok(_) if !wanted.contains(&path) && std::fs::remove_file(&path).is_ok() => {
                removed += 1;
            }
            _ => {}
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_proto::release::ServiceSpec;

    #[test]
    fn the_sealing_key_is_proven_with_the_certificates_key_as_enrollment_wrote_it() {
        let device = DeviceId::new("robot-7").unwrap();
        let (cert_key, public, _) = fleet_api::enroll::new_device_key(&device).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("device.key");
        std::fs::write(&key_file, cert_key.serialize_pem()).unwrap();
        let seal = DeviceSealKey::generate().unwrap().public();
        let proof = seal_key_proof(&key_file, &device, &seal).unwrap();
        let point = fleet_proto::hex::decode(&public).unwrap();
        let verify = |message: &[u8]| {
            ring::signature::UnparsedPublicKey::new(
                &ring::signature::ECDSA_P256_SHA256_ASN1,
                &point,
            )
            .verify(message, &fleet_proto::hex::decode(&proof).unwrap())
        };
        assert!(verify(&fleet_proto::seal::seal_key_proof_message(&device, &seal)).is_ok());
        let other = DeviceId::new("robot-8").unwrap();
        assert!(verify(&fleet_proto::seal::seal_key_proof_message(&other, &seal)).is_err());
        std::fs::write(&key_file, "not a key").unwrap();
        assert!(seal_key_proof(&key_file, &device, &seal).unwrap_err().contains("PKCS#8"));
    }
    use fleet_proto::seal::seal;
    use fleet_proto::{samples, SealedSecret};

    fn sealed(
        key: &DeviceSealKey,
        device: &str,
        name: &str,
        digest: &str,
        value: &[u8],
    ) -> SealedSecret {
        SealedSecret {
            name: name.to_owned(),
            digest: digest.to_owned(),
            sealed: seal(&key.public(), value, &secret_aad(device, name, digest)).unwrap(),
        }
    }

    fn mount(source: &str, target: &str, mode: u32) -> SecretMount {
        SecretMount { source: source.into(), target: target.into(), uid: None, gid: None, mode }
    }

    fn desired_with(secrets: Vec<SealedSecret>, mounts: Vec<SecretMount>) -> DesiredState {
        let mut d = samples::desired();
        d.secrets = secrets;
        d.sealed_registry_credentials = vec![];
        let release = d.release.as_mut().unwrap();
        release.services[0].secrets = mounts;
        release.services[1].secrets = vec![];
        d
    }

    #[test]
    fn the_key_is_made_once_0600_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        let a = load_or_create_key(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let b = load_or_create_key(&path).unwrap();
        assert_eq!(a.public(), b.public());
        std::fs::write(&path, b"short").unwrap();
        let err = load_or_create_key(&path).unwrap_err().to_string();
        assert!(err.contains("5 bytes, not 32") && err.contains("Move it away"), "{err}");
    }

    #[test]
    fn delivery_opens_what_is_sealed_to_this_device_and_names_what_is_missing() {
        let key = DeviceSealKey::generate().unwrap();
        let device = samples::device();
        let ok = desired_with(
            vec![sealed(&key, device.as_str(), "db", "d1", b"pw")],
            vec![mount("db", "db", 0)],
        );
        let delivered = deliver(&key, &device, &ok).unwrap();
        assert_eq!(&delivered.secrets["db"].value[..], b"pw");
        assert!(!format!("{delivered:?}").contains("pw\""), "values are never printed");

        let missing = desired_with(vec![], vec![mount("db", "db", 0)]);
        let problems = deliver(&key, &device, &missing).unwrap_err();
        assert!(problems[0].contains("service web mounts secret \"db\""), "{problems:?}");

        // Sealed for another device (its id in the associated data): refused.
        let other = desired_with(
            vec![sealed(&key, "robot-8", "db", "d1", b"pw")],
            vec![mount("db", "db", 0)],
        );
        let problems = deliver(&key, &device, &other).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("does not open"), "{problems:?}");

        // A digest or name that would climb out of the secrets directory as a file name, even
        // sealed properly: refused before anything is opened or written.
        for (name, digest) in [("db", "../../../etc/cron.d/x"), ("../db", "d1"), ("db", "")] {
            let bad = desired_with(
                vec![sealed(&key, device.as_str(), name, digest, b"pw")],
                vec![mount("db", "db", 0)],
            );
            let problems = deliver(&key, &device, &bad).unwrap_err();
            assert!(problems[0].contains("cannot name a file"), "{name} {digest}: {problems:?}");
        }
    }

    #[test]
    fn sealed_registry_credentials_open_to_the_logins() {
        let key = DeviceSealKey::generate().unwrap();
        let device = samples::device();
        let creds = vec![RegistryCredential {
            registry: "r:5000".into(),
            username: "u".into(),
            password: "p".into(),
        }];
        let mut d = desired_with(vec![], vec![]);
        d.sealed_registry_credentials = seal(
            &key.public(),
            &postcard::to_allocvec(&creds).unwrap(),
            &registry_credentials_aad(device.as_str()),
        )
        .unwrap();
        assert_eq!(deliver(&key, &device, &d).unwrap().registry_credentials, creds);
    }

    #[test]
    fn mounts_become_read_only_binds_named_by_digest_so_rotation_changes_only_the_consumer() {
        let dir = Path::new("/var/lib/fleet/secrets");
        let mut release = samples::release();
        release.services[0].secrets =
            vec![mount("db", "db", 0), mount("tls", "/etc/tls/key.pem", 0o400)];
        release.services[1].secrets = vec![];
        let v1 = BTreeMap::from([
            ("db".to_owned(), "d1".to_owned()),
            ("tls".to_owned(), "t1".to_owned()),
        ]);
        let (eff, files) = effective_release(dir, &release, &v1);
        let web = &eff.services[0];
        let binds: Vec<_> = web
            .volumes
            .iter()
            .filter(|v| v.read_only && matches!(v.source, VolumeSource::HostPath(_)))
            .collect();
        assert_eq!(binds.len(), 2);
        assert_eq!(binds[0].target, "/run/secrets/db");
        assert_eq!(
            binds[0].source,
            VolumeSource::HostPath("/var/lib/fleet/secrets/robot-stack/web/db.d1.444.r.r".into())
        );
        assert_eq!(binds[1].target, "/etc/tls/key.pem");
        assert_eq!(files[1].mode, 0o400);
        let hash = |r: &ReleaseSpec, i: usize| {
            crate::plan::config_hash(
                &r.services[i],
                false,
                &crate::hardware::HardwareMapping::default(),
            )
        };
        let v2 = BTreeMap::from([
            ("db".to_owned(), "d2".to_owned()),
            ("tls".to_owned(), "t1".to_owned()),
        ]);
        let (rotated, _) = effective_release(dir, &release, &v2);
        assert_ne!(hash(&eff, 0), hash(&rotated, 0), "the consumer is re-created");
        assert_eq!(hash(&eff, 1), hash(&rotated, 1), "the other service keeps its container");
    }

    #[test]
    fn files_are_written_with_mode_in_private_dirs_and_collected_when_unused() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("secrets");
        let key = DeviceSealKey::generate().unwrap();
        let device = samples::device();
        let d = desired_with(
            vec![sealed(&key, device.as_str(), "db", "d1", b"s3cret\n")],
            vec![mount("db", "db", 0o440)],
        );
        let delivered = deliver(&key, &device, &d).unwrap();
        let (eff, files) =
            effective_release(&dir, d.release.as_ref().unwrap(), &digests(&delivered));
        write_files(&dir, &files, &delivered).unwrap();
        assert_eq!(std::fs::read(&files[0].path).unwrap(), b"s3cret\n");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&files[0].path), 0o440);
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(files[0].path.parent().unwrap()), 0o700);

        assert_eq!(collect_garbage(&dir, &[&eff]), 0, "in use: kept");
        let empty: ReleaseSpec = ReleaseSpec {
            services: vec![ServiceSpec { secrets: vec![], ..eff.services[1].clone() }],
            ..eff.clone()
        };
        assert_eq!(collect_garbage(&dir, &[&empty]), 1);
        assert!(!files[0].path.exists());
        assert!(!files[0].path.parent().unwrap().exists(), "empty directories go too");
        assert!(dir.exists());
    }

    #[test]
    fn after_a_reboot_the_files_come_back_from_their_sealed_records() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("secrets");
        let key = DeviceSealKey::generate().unwrap();
        let device = samples::device();
        let d = desired_with(
            vec![sealed(&key, device.as_str(), "db", "d1", b"s3cret")],
            vec![mount("db", "db", 0o400)],
        );
        let delivered = deliver(&key, &device, &d).unwrap();
        let (_, files) = effective_release(&dir, d.release.as_ref().unwrap(), &digests(&delivered));
        let records = records(&files, &d);
        assert_eq!(records.len(), 1);
        assert!(!format!("{records:?}").contains("sealed:"), "no bytes in debug output");
        assert_eq!(merge(records.clone(), records.clone()).len(), 1, "one record per file");
        // The tmpfs is empty after a reboot.
        assert_eq!(restore(&dir, &key, &device, &records), (1, vec![]));
        assert_eq!(std::fs::read(&files[0].path).unwrap(), b"s3cret");
        let mode = std::fs::metadata(&files[0].path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o400);
        assert_eq!(restore(&dir, &key, &device, &records), (0, vec![]), "present: left alone");
        // A key that changed since (moved away and made again) cannot open them: said, not hidden.
        std::fs::remove_file(&files[0].path).unwrap();
        let (written, problems) =
            restore(&dir, &DeviceSealKey::generate().unwrap(), &device, &records);
        assert_eq!(written, 0);
        assert!(problems[0].contains("secret \"db\""), "{problems:?}");
    }
}
