//! The fleet's keys and certificates, created on the server's first start in `<data>/pki/`:
//!
//! * the **fleet CA** (`ca.pem`, `ca.key`): issues every device's client certificate (common
//!   name = device id), the broker's server certificate and the server's own MQTT identity;
//!   devices pin it, so a broker certificate from any other CA is refused;
//! * the **desired-state signing key** (`signing.key`, ed25519): devices trust its public half
//!   from their enrollment bundle and refuse desired state and commands it did not sign;
//! * the **secrets key** (`<data>/secrets.key`, 32 bytes): encrypts secret values at rest
//!   ([`crate::secrets::Vault`]);
//! * the **revocation list** (`crl.pem`), rewritten on every revocation for the broker's
//!   `crlfile` (see `packaging/mosquitto/`).
//!
//! Private keys are written 0600 and never leave this module except into those files. A
//! device's private key never reaches the server at all: `fleetctl device enroll` generates it
//! where the bundle is written and sends the public key with a proof of possession (a signature
//! over the device id), which [`EnrollKey::verify`] checks before anything is issued.

use std::path::{Path, PathBuf};

use fleet_proto::{DeviceId, ServerKey, UnixMillis};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    PublicKeyData, RevocationReason, RevokedCertParams, SerialNumber, SignatureAlgorithm,
};
use time::{Duration, OffsetDateTime};

use crate::keyfile::{random, read_secret, write_file, KeyFileError};

/// Common name of the server's own MQTT identity. Reserved: no device may use it, because the
/// shipped broker ACL gives this identity every device's topics.
pub const SERVER_IDENTITY: &str = "fleet-server";

/// Whether `name` is a server identity: [`SERVER_IDENTITY`], or `fleet-server-` and a suffix
/// (one per server process, so that with the broker taking the certificate's name as the
/// client id, two processes never take over each other's session). No device may be enrolled
/// under such a name.
pub fn is_server_identity(name: &str) -> bool {
    name == SERVER_IDENTITY || name.strip_prefix("fleet-server-").is_some_and(|s| !s.is_empty())
}

/// The certificate and key file names of server identity `name` in a broker-files directory:
/// `server.pem`/`server.key` for [`SERVER_IDENTITY`], `NAME.pem`/`NAME.key` for the others.
pub fn identity_files(name: &str) -> (String, String) {
    if name == SERVER_IDENTITY {
        ("server.pem".to_owned(), "server.key".to_owned())
    } else {
        (format!("{name}.pem"), format!("{name}.key"))
    }
}

pub use fleet_api::enroll::{proof_message, DEFAULT_DEVICE_VALIDITY_DAYS, ENROLL_PROOF_CONTEXT};

/// Why a PKI operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A key or certificate file does not parse.
    #[error("{path} is not a valid {what}; restore it from a backup (deleting it would make every enrolled device distrust the server)")]
    Corrupt {
        /// The file.
        path: String,
        /// What it should hold.
        what: &'static str,
    },
    /// Certificate generation failed.
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// A key file cannot be written or read safely, or the random source failed.
    #[error(transparent)]
    KeyFile(#[from] KeyFileError),
    /// The secrets key cannot be loaded or made.
    #[error(transparent)]
    Vault(#[from] crate::secrets::VaultError),
}

/// Why an enrollment key was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnrollKeyError {
    /// Not hex, or not an uncompressed P-256 point.
    #[error("public_key must be an uncompressed P-256 point in hex (130 hex digits starting 04)")]
    BadKey,
    /// The proof does not verify: the requester does not hold the private key, or signed
    /// another device id.
    #[error("proof does not verify: it must be the device key's ECDSA P-256 SHA-256 signature over the enrollment context and the device id")]
    BadProof,
}

/// A device's public key as sent for enrollment (an uncompressed P-256 point).
#[derive(Debug, Clone)]
pub struct EnrollKey {
    point: Vec<u8>,
}

impl EnrollKey {
    /// Parses the hex point and checks the proof of possession for `device`.
    pub fn verify(
        device: &DeviceId,
        public_hex: &str,
        proof_hex: &str,
    ) -> Result<EnrollKey, EnrollKeyError> {
        let point = fleet_proto::hex::decode(public_hex).ok_or(EnrollKeyError::BadKey)?;
        if point.len() != 65 || point[0] != 4 {
            return Err(EnrollKeyError::BadKey);
        }
        let proof = fleet_proto::hex::decode(proof_hex).ok_or(EnrollKeyError::BadProof)?;
        // ring checks that the point is on the curve while verifying.
        ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, &point)
            .verify(&proof_message(device), &proof)
            .map_err(|_| EnrollKeyError::BadProof)?;
        Ok(EnrollKey { point })
    }
}

impl EnrollKey {
    /// The point in hex, as [`crate::devices::DeviceRecord::device_key`] keeps it.
    pub fn to_hex(&self) -> String {
        fleet_proto::hex::encode(&self.point)
    }
}

/// Whether `proof_hex` is the signature of device `device`'s sealing key `key` by its
/// certificate's key `device_key_hex` ([`fleet_proto::StateReport::seal_key_proof`]).
pub fn seal_key_proof_verifies(
    device_key_hex: &str,
    device: &DeviceId,
    key: &fleet_proto::SealKey,
    proof_hex: &str,
) -> bool {
    let (Some(point), Some(proof)) =
        (fleet_proto::hex::decode(device_key_hex), fleet_proto::hex::decode(proof_hex))
    else {
        return false;
    };
    let message = fleet_proto::seal::seal_key_proof_message(device, key);
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, &point)
        .verify(&message, &proof)
        .is_ok()
}

impl PublicKeyData for EnrollKey {
    fn der_bytes(&self) -> &[u8] {
        &self.point
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

/// A certificate the CA issued.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// Its serial number (hex), which a revocation names.
    pub serial: String,
    /// End of validity.
    pub not_after: UnixMillis,
}

/// A revoked certificate for the CRL.
#[derive(Debug, Clone)]
pub struct Revoked {
    /// Serial number (hex).
    pub serial: String,
    /// When it was revoked.
    pub at: UnixMillis,
}

/// The fleet's CA and signing key, loaded from (or created in) a directory.
pub struct Pki {
    dir: PathBuf,
    ca_pem: String,
    ca_name: String,
    ca_key: KeyPair,
    signing: ServerKey,
    vault: crate::secrets::Vault,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki")
            .field("dir", &self.dir)
            .field("ca", &self.ca_name)
            .field("signing_key", &self.signing.id())
            .finish()
    }
}

impl Pki {
    /// Loads the PKI from `dir` and the secrets key from `secrets_key`, creating the CA,
    /// signing key and secrets key on first use. Returns whether the CA was created.
    pub fn open_or_create(dir: &Path, secrets_key: &Path) -> Result<(Pki, bool), PkiError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let ca_key_path = dir.join("ca.key");
        let created = !ca_key_path.exists();
        if created {
            create(dir)?;
        }
        let ca_key = KeyPair::from_pem(&read_secret(&ca_key_path)?)
            .map_err(|_| corrupt(&ca_key_path, "PEM private key"))?;
        let ca_pem = read(&dir.join("ca.pem"))?;
        let name_path = dir.join("ca-name");
        let ca_name = read(&name_path)?.trim().to_owned();
        if ca_name.is_empty() {
            return Err(corrupt(&name_path, "CA name"));
        }
        let seed_path = dir.join("signing.key");
        let seed: [u8; 32] = fleet_proto::hex::decode(read_secret(&seed_path)?.trim())
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| corrupt(&seed_path, "hex ed25519 seed"))?;
        let signing = ServerKey::from_seed(&seed);
        let (vault, vault_created) = crate::secrets::Vault::open_or_create(secrets_key)?;
        if vault_created {
            tracing::info!(key = %secrets_key.display(), "created the secrets key");
        }
        Ok((Pki { dir: dir.to_owned(), ca_pem, ca_name, ca_key, signing, vault }, created))
    }

    /// The CA certificate (PEM) that devices and the broker pin.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The desired-state signing key.
    pub fn signing_key(&self) -> &ServerKey {
        &self.signing
    }

    /// The secrets key.
    pub fn vault(&self) -> &crate::secrets::Vault {
        &self.vault
    }

    /// The keys the server's own signatures verify against (stored releases are checked with
    /// them before they go out).
    pub fn trusted_keys(&self) -> fleet_proto::TrustedKeys {
        fleet_proto::TrustedKeys::new([self.signing.public()])
    }

    /// Where the revocation list lives.
    pub fn crl_path(&self) -> PathBuf {
        self.dir.join("crl.pem")
    }

    fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::new(ca_params(&self.ca_name, OffsetDateTime::now_utc()), &self.ca_key)
    }

    /// Issues a device's client certificate (common name = device id, client auth only).
    pub fn issue_device(
        &self,
        device: &DeviceId,
        key: &EnrollKey,
        valid_days: u32,
    ) -> Result<Issued, PkiError> {
        let mut params = leaf_params(device.as_str(), valid_days)?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params, key)
    }

    /// Issues a key and client certificate for an MQTT identity such as [`SERVER_IDENTITY`];
    /// returns (certificate PEM, key PEM).
    pub fn issue_client(
        &self,
        common_name: &str,
        valid_days: u32,
    ) -> Result<(Issued, String), PkiError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = leaf_params(common_name, valid_days)?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        Ok((self.sign(params, &key)?, key.serialize_pem()))
    }

    /// Issues a broker's TLS server certificate for `names` (DNS names or IP addresses);
    /// returns (certificate PEM, key PEM).
    pub fn issue_broker(
        &self,
        names: &[String],
        valid_days: u32,
    ) -> Result<(Issued, String), PkiError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(names.to_vec())?;
        let leaf = leaf_params(names.first().map_or("fleet-broker", String::as_str), valid_days)?;
        params.distinguished_name = leaf.distinguished_name;
        params.not_before = leaf.not_before;
        params.not_after = leaf.not_after;
        params.serial_number = leaf.serial_number;
        params.key_usages = leaf.key_usages;
        params.use_authority_key_identifier_extension = true;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        Ok((self.sign(params, &key)?, key.serialize_pem()))
    }

    fn sign(
        &self,
        params: CertificateParams,
        key: &impl PublicKeyData,
    ) -> Result<Issued, PkiError> {
        let serial = params
            .serial_number
            .as_ref()
            .map(|s| fleet_proto::hex::encode(&s.to_bytes()))
            .unwrap_or_default();
        let not_after = UnixMillis((params.not_after.unix_timestamp().max(0) as u64) * 1000);
        let cert = params.signed_by(key, &self.issuer())?;
        Ok(Issued { cert_pem: cert.pem(), serial, not_after })
    }

    /// Writes the revocation list for `revoked` to [`Pki::crl_path`] (atomically) and returns
    /// it. `number` must grow with every list. The list is valid for a year: an expired CRL
    /// makes OpenSSL (Mosquitto) refuse every device, so the server rewrites it at every start.
    pub fn write_crl(&self, revoked: &[Revoked], number: u64) -> Result<String, PkiError> {
        let now = OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: now - Duration::minutes(5),
            next_update: now + Duration::days(365),
            crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .filter_map(|r| {
                    Some(RevokedCertParams {
                        serial_number: SerialNumber::from_slice(&fleet_proto::hex::decode(
                            &r.serial,
                        )?),
                        revocation_time: OffsetDateTime::from_unix_timestamp(
                            (r.at.0 / 1000) as i64,
                        )
                        .unwrap_or(now),
                        reason_code: Some(RevocationReason::CessationOfOperation),
                        invalidity_date: None,
                    })
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let pem = params.signed_by(&self.issuer())?.pem()?;
        write_file(&self.crl_path(), pem.as_bytes(), 0o644)?;
        Ok(pem)
    }

    /// Writes what a Mosquitto broker needs into `dir` (`ca.pem`, `broker.pem`, `broker.key`)
    /// and the server's own MQTT identity (`server.pem`, `server.key`), for the configuration
    /// in `packaging/mosquitto/`. `names` are the broker's host names or IPs. The revocation
    /// list (`crl.pem`) is the caller's: it comes from the registry.
    /// `identities`: further server identities to issue ([`is_server_identity`]), one per
    /// extra server process, as `NAME.pem`/`NAME.key` ([`identity_files`]).
    pub fn write_broker_files(
        &self,
        dir: &Path,
        names: &[String],
        identities: &[String],
    ) -> Result<(), PkiError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let (broker, broker_key) = self.issue_broker(names, 825)?;
        write_file(&dir.join("ca.pem"), self.ca_pem.as_bytes(), 0o644)?;
        write_file(&dir.join("broker.pem"), broker.cert_pem.as_bytes(), 0o644)?;
        write_file(&dir.join("broker.key"), broker_key.as_bytes(), 0o600)?;
        for identity in
            std::iter::once(SERVER_IDENTITY).chain(identities.iter().map(String::as_str))
        {
            let (server, server_key) = self.issue_client(identity, 825)?;
            let (cert, key) = identity_files(identity);
            write_file(&dir.join(cert), server.cert_pem.as_bytes(), 0o644)?;
            write_file(&dir.join(key), server_key.as_bytes(), 0o600)?;
        }
        Ok(())
    }
}

/// The CA's parameters. The issuer of every certificate is rebuilt from these (name, key
/// usages, key id method), so they must never change for an existing CA.
fn ca_params(name: &str, now: OffsetDateTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::OrganizationName, "Fleet");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(20 * 365);
    params
}

fn leaf_params(common_name: &str, valid_days: u32) -> Result<CertificateParams, PkiError> {
    let now = OffsetDateTime::now_utc();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, common_name);
    // An hour of slack for devices whose clock runs behind the server's.
    params.not_before = now - Duration::hours(1);
    // Bounded here too: `time` panics on a date past its range.
    let days = valid_days.clamp(1, fleet_api::enroll::MAX_DEVICE_VALIDITY_DAYS);
    params.not_after = now + Duration::days(i64::from(days));
    params.serial_number = Some(SerialNumber::from_slice(&random::<16>()?));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

fn create(dir: &Path) -> Result<(), PkiError> {
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    // A unique name per fleet, so two fleets' CAs are never confused in a trust store.
    let name = format!("Fleet CA {}", fleet_proto::hex::encode(&random::<4>()?));
    let ca = ca_params(&name, OffsetDateTime::now_utc()).self_signed(&ca_key)?;
    write_file(&dir.join("ca.key"), ca_key.serialize_pem().as_bytes(), 0o600)?;
    write_file(
        &dir.join("signing.key"),
        format!("{}\n", fleet_proto::hex::encode(&random::<32>()?)).as_bytes(),
        0o600,
    )?;
    write_file(&dir.join("ca-name"), format!("{name}\n").as_bytes(), 0o644)?;
    // Last: its presence marks a complete PKI (open_or_create checks ca.key first, so write
    // ca.pem before ca.key would be nicer, but a missing ca.pem is reported as such).
    Ok(write_file(&dir.join("ca.pem"), ca.pem().as_bytes(), 0o644)?)
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(io(path))
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io { path: path.display().to_string(), source }
}

fn corrupt(path: &Path, what: &'static str) -> PkiError {
    PkiError::Corrupt { path: path.display().to_string(), what }
}

#[cfg(test)]
mod tests {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};

    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn device(id: &str) -> DeviceId {
        DeviceId::new(id).expect("valid id")
    }

    fn verify_client(
        pki: &Pki,
        cert_pem: &str,
        crls: Vec<CertificateRevocationListDer<'static>>,
    ) -> Result<(), rustls::Error> {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(pki.ca_pem().as_bytes()).expect("ca pem"))
            .expect("ca");
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                .with_crls(crls)
                .build()
                .expect("verifier");
        let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes()).expect("cert pem");
        verifier.verify_client_cert(&cert, &[], UnixTime::now()).map(|_| ())
    }

    #[test]
    fn server_identities_are_the_name_and_its_suffixed_forms_each_in_its_own_files() {
        assert!(is_server_identity("fleet-server") && is_server_identity("fleet-server-2"));
        for other in ["fleet-server-", "fleet-serverx", "robot-7", "xfleet-server"] {
            assert!(!is_server_identity(other), "{other}");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let (pki, _) =
            Pki::open_or_create(dir.path(), &dir.path().join("secrets.key")).expect("create");
        let out = dir.path().join("broker");
        pki.write_broker_files(&out, &["127.0.0.1".to_owned()], &["fleet-server-2".to_owned()])
            .expect("write");
        for (name, files) in [
            ("fleet-server", ("server.pem", "server.key")),
            ("fleet-server-2", ("fleet-server-2.pem", "fleet-server-2.key")),
        ] {
            assert_eq!(identity_files(name), (files.0.to_owned(), files.1.to_owned()));
            let pem = std::fs::read_to_string(out.join(files.0)).expect("cert");
            assert!(verify_client(&pki, &pem, vec![]).is_ok(), "{name}");
            let mode = std::fs::metadata(out.join(files.1)).expect("key").permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
    }

    #[test]
    fn the_ca_and_signing_key_are_created_once_and_reloaded_unchanged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (first, created) =
            Pki::open_or_create(dir.path(), &dir.path().join("secrets.key")).expect("create");
        assert!(created);
        let (second, created) =
            Pki::open_or_create(dir.path(), &dir.path().join("secrets.key")).expect("reload");
        assert!(!created);
        assert_eq!(first.ca_pem(), second.ca_pem());
        assert_eq!(first.signing_key().id(), second.signing_key().id());
        for secret in ["ca.key", "signing.key"] {
            let mode =
                std::fs::metadata(dir.path().join(secret)).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{secret}");
        }
    }

    #[test]
    fn a_device_certificate_from_a_reloaded_ca_verifies_and_a_revoked_one_does_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (pki, _) =
            Pki::open_or_create(dir.path(), &dir.path().join("secrets.key")).expect("create");
        let (pki, _) = {
            drop(pki);
            Pki::open_or_create(dir.path(), &dir.path().join("secrets.key")).expect("reload")
        };
        let id = device("robot-7");
        let (_key, public, proof) = fleet_api::enroll::new_device_key(&id).expect("key");
        let key = EnrollKey::verify(&id, &public, &proof).expect("proof");
        let issued = pki.issue_device(&id, &key, 30).expect("issue");
        verify_client(&pki, &issued.cert_pem, vec![]).expect("a fresh device certificate verifies");
        // Any number of days is bounded (an unbounded one overflowed the date arithmetic).
        let longest = pki.issue_device(&id, &key, u32::MAX).expect("issue, clamped");
        let ten_years = UnixMillis::now().0 + 3651 * 86_400_000;
        assert!(longest.not_after.0 < ten_years, "{:?}", longest.not_after);

        let crl = pki
            .write_crl(&[Revoked { serial: issued.serial.clone(), at: UnixMillis::now() }], 1)
            .expect("crl");
        let crl = CertificateRevocationListDer::from_pem_slice(crl.as_bytes()).expect("crl pem");
        let err = verify_client(&pki, &issued.cert_pem, vec![crl]).expect_err("revoked");
        assert!(format!("{err:?}").contains("Revoked"), "{err:?}");
    }

    #[test]
    fn a_certificate_from_another_fleet_is_refused() {
        let (ours, theirs) = (tempfile::tempdir().expect("t"), tempfile::tempdir().expect("t"));
        let (ours, _) =
            Pki::open_or_create(ours.path(), &ours.path().join("secrets.key")).expect("ours");
        let (theirs, _) =
            Pki::open_or_create(theirs.path(), &theirs.path().join("secrets.key")).expect("theirs");
        let (issued, _) = theirs.issue_client("robot-7", 30).expect("issue");
        assert!(verify_client(&ours, &issued.cert_pem, vec![]).is_err());
    }

    #[test]
    fn enrollment_proofs_bind_the_key_to_the_device_id() {
        let id = device("robot-7");
        let (_key, public, proof) = fleet_api::enroll::new_device_key(&id).expect("key");
        assert!(EnrollKey::verify(&id, &public, &proof).is_ok());
        assert_eq!(
            EnrollKey::verify(&device("robot-8"), &public, &proof).unwrap_err(),
            EnrollKeyError::BadProof
        );
        let (_other, other_public, _) = fleet_api::enroll::new_device_key(&id).expect("key");
        assert_eq!(
            EnrollKey::verify(&id, &other_public, &proof).unwrap_err(),
            EnrollKeyError::BadProof
        );
        assert_eq!(EnrollKey::verify(&id, "04zz", &proof).unwrap_err(), EnrollKeyError::BadKey);
        assert_eq!(
            EnrollKey::verify(&id, &public[2..], &proof).unwrap_err(),
            EnrollKeyError::BadKey
        );
    }

    #[test]
    fn a_private_key_readable_by_others_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(Pki::open_or_create(dir.path(), &dir.path().join("secrets.key")).expect("create"));
        let key = dir.path().join("ca.key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err =
            Pki::open_or_create(dir.path(), &dir.path().join("secrets.key")).expect_err("refused");
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
}
