//! The enrolling side of enrollment: what the device key proves, the default validity, and
//! (feature `enroll`) a new device key with its proof and the bundle's files.
//!
//! The private key is made where the bundle is written and never travels: the server only
//! sees the public key and a signature over [`proof_message`].

use fleet_proto::DeviceId;

/// Context of the enrollment proof of possession (domain separation from anything else the
/// device key might sign).
pub const ENROLL_PROOF_CONTEXT: &[u8] = b"fleet/v1 enroll\0";

/// How long a device certificate is valid by default: devices stay in the field for years and
/// cannot always be reached to renew; revocation handles a lost device.
pub const DEFAULT_DEVICE_VALIDITY_DAYS: u32 = 5 * 365;
/// The longest device certificate the server issues: ten years, well inside the fleet CA's
/// twenty (a longer one would outlive the CA that vouches for it, and an unbounded number of
/// days overflowed the date arithmetic).
pub const MAX_DEVICE_VALIDITY_DAYS: u32 = 3650;

/// What the device key signs to prove possession when `device` is enrolled.
pub fn proof_message(device: &DeviceId) -> Vec<u8> {
    [ENROLL_PROOF_CONTEXT, device.as_str().as_bytes()].concat()
}

/// A new device key (ECDSA P-256) and its proof for `device` (what `fleetctl device enroll`
/// sends): returns (the key pair, public key hex, proof hex).
#[cfg(feature = "enroll")]
pub fn new_device_key(device: &DeviceId) -> Result<(rcgen::KeyPair, String, String), rcgen::Error> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let proof = rcgen::SigningKey::sign(&key, &proof_message(device))?;
    let public = fleet_proto::hex::encode(key.public_key_raw());
    Ok((key, public, fleet_proto::hex::encode(&proof)))
}

/// A file that could not be written, and where.
#[derive(Debug)]
pub struct FileError {
    /// The file (or its temporary sibling).
    pub path: std::path::PathBuf,
    /// Why.
    pub source: std::io::Error,
}

impl std::fmt::Display for FileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.source)
    }
}

impl std::error::Error for FileError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Writes `bytes` to `path` with `mode`, atomically (a synced temporary file renamed over it):
/// a key file is never half written nor readable by others for a moment.
pub fn write_file(path: &std::path::Path, bytes: &[u8], mode: u32) -> Result<(), FileError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let at = |path: &std::path::Path| {
        let path = path.to_owned();
        move |source| FileError { path, source }
    };
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(at(&tmp))?;
    file.write_all(bytes).and_then(|()| file.sync_all()).map_err(at(&tmp))?;
    std::fs::rename(&tmp, path).map_err(at(path))
}
