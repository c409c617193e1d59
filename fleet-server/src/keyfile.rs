//! Key material on disk and from the OS: random bytes, files written atomically with a mode,
//! and private files read only when nobody else can read them. The PKI, the secrets vault,
//! backups and the configuration share these; this module depends on nothing else in the crate.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Why a key file or the random source failed. The messages are the ones the PKI has always
/// printed ([`crate::pki::PkiError`] carries this transparently).
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// A file cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A private key file is readable by others.
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

/// `N` bytes from the OS random source.
pub fn random<const N: usize>() -> Result<[u8; N], KeyFileError> {
    let mut bytes = [0u8; N];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| KeyFileError::Random)?;
    Ok(bytes)
}

/// Writes a key or certificate file atomically with `mode` ([`fleet_api::enroll::write_file`]).
pub fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), KeyFileError> {
    fleet_api::enroll::write_file(path, bytes, mode)
        .map_err(|e| KeyFileError::Io { path: e.path.display().to_string(), source: e.source })
}

/// The HMAC-SHA256 key in the file at `path` (32 random bytes, hex), made with mode 0600 on
/// first use: the server's keys for logins and sessions, which nothing else needs to read.
pub fn hmac_key(path: &Path) -> Result<ring::hmac::Key, KeyFileError> {
    if !path.exists() {
        let key = fleet_proto::hex::encode(&random::<32>()?);
        write_file(path, format!("{key}\n").as_bytes(), 0o600)?;
    }
    let hex = read_secret(path)?;
    let bytes = fleet_proto::hex::decode(hex.trim()).ok_or_else(|| KeyFileError::Io {
        path: path.display().to_string(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not a hex key"),
    })?;
    Ok(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &bytes))
}

/// Reads a private key file, refusing one that others can read.
pub fn read_secret(path: &Path) -> Result<String, KeyFileError> {
    let io = |source| KeyFileError::Io { path: path.display().to_string(), source };
    let mode = std::fs::metadata(path).map_err(io)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Permissions { path: path.display().to_string(), mode });
    }
    std::fs::read_to_string(path).map_err(io)
}
