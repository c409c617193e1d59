//! Secrets sealed to one device, so that only that device can read them.
//!
//! Desired state is signed, not encrypted, and it is retained by the broker: anyone who can read
//! the broker's store, its logs or a backup could read a plain value. So every secret (and every
//! registry credential) travels *sealed*: encrypted to the X25519 key of the one device it is
//! for. The device generates that key itself on first start and never lets it leave its data
//! directory; its public half ([`SealKey`]) rides on its state reports, which mutual TLS
//! authenticates.
//!
//! The construction is HPKE's base mode in spirit, with one-shot keys:
//!
//! ```text
//! eph      = fresh X25519 key                      (per sealed value)
//! shared   = X25519(eph, device)
//! key      = HKDF-SHA256(salt = "fleet-seal-v1", ikm = shared, info = eph_pub ‖ device_pub)
//! sealed   = eph_pub ‖ ChaCha20-Poly1305(key, nonce = 0, aad, value)
//! ```
//!
//! The key is used once, so the all-zero nonce is safe. `aad` binds a sealed value to what it
//! is (device, secret name, digest): the server cannot be tricked into delivering one secret
//! under another's name, nor one device's blob to another. The X25519 arithmetic comes from
//! `curve25519-dalek` (already linked for Ed25519; `ring` cannot hold a static X25519 key), the
//! rest from `ring`.

use curve25519_dalek::montgomery::MontgomeryPoint;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

/// Bytes a sealed value adds to its plaintext: the ephemeral public key and the tag.
pub const SEAL_OVERHEAD: usize = 32 + 16;

const SALT: &[u8] = b"fleet-seal-v1";

/// A device's public sealing key (X25519), as it reports it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct SealKey(pub [u8; 32]);

/// What a device signs with its certificate's key to vouch for its sealing key
/// ([`crate::StateReport::seal_key_proof`]): a context string, the device id and the key, so a
/// proof is good for this key of this device only.
pub fn seal_key_proof_message(device: &crate::DeviceId, key: &SealKey) -> Vec<u8> {
    let mut m = b"fleet seal-key proof v1\0".to_vec();
    m.extend_from_slice(device.as_str().as_bytes());
    m.push(0);
    m.extend_from_slice(&key.0);
    m
}

impl SealKey {
    /// Lower-case hex, as `fleetctl device show` prints it.
    pub fn to_hex(&self) -> String {
        crate::hex::encode(&self.0)
    }

    /// Parses [`SealKey::to_hex`]'s form.
    pub fn from_hex(s: &str) -> Option<SealKey> {
        crate::hex::decode_array(s).map(SealKey)
    }
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealKey({})", self.to_hex())
    }
}

/// The private half, kept by the device only. Never printed.
#[derive(Clone)]
pub struct DeviceSealKey([u8; 32]);

impl std::fmt::Debug for DeviceSealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceSealKey(public {})", self.public().to_hex())
    }
}

impl Drop for DeviceSealKey {
    fn drop(&mut self) {
        // Do not leave the scalar in freed memory.
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

/// Why a value could not be sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The system's random source failed.
    #[error("the system random source failed")]
    Random,
    /// The public key is a low-order point: no shared secret is possible.
    #[error("the device's sealing key is not a usable X25519 key")]
    WeakKey,
    /// Too short to be a sealed value.
    #[error("a sealed value is at least {SEAL_OVERHEAD} bytes, this one is {len}")]
    Truncated {
        /// Its length.
        len: usize,
    },
    /// Sealed to another key, tampered with, or with other associated data.
    #[error(
        "the sealed value does not open with this device's key (sealed to another key, or altered)"
    )]
    Forged,
}

impl DeviceSealKey {
    /// A fresh key from the system's random source.
    pub fn generate() -> Result<DeviceSealKey, SealError> {
        let mut bytes = [0u8; 32];
        SystemRandom::new().fill(&mut bytes).map_err(|_| SealError::Random)?;
        Ok(DeviceSealKey(bytes))
    }

    /// The key from its stored bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> DeviceSealKey {
        DeviceSealKey(bytes)
    }

    /// The bytes to store (0600, on the device only).
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0
    }

    /// The public half, which the device reports.
    pub fn public(&self) -> SealKey {
        SealKey(MontgomeryPoint::mul_base_clamped(self.0).to_bytes())
    }

    /// Opens a value [`seal`]ed to this key with the same `aad`.
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, SealError> {
        if sealed.len() < SEAL_OVERHEAD {
            return Err(SealError::Truncated { len: sealed.len() });
        }
        let (eph, body) = sealed.split_at(32);
        let mut eph_pub = [0u8; 32];
        eph_pub.copy_from_slice(eph);
        let shared = MontgomeryPoint(eph_pub).mul_clamped(self.0).to_bytes();
        let key = derive(&shared, &eph_pub, &self.public().0)?;
        let mut buf = body.to_vec();
        let plain = key
            .open_in_place(Nonce::assume_unique_for_key([0; 12]), Aad::from(aad), &mut buf)
            .map_err(|_| SealError::Forged)?;
        let n = plain.len();
        buf.truncate(n);
        Ok(buf)
    }
}

/// Encrypts `value` so that only the holder of `to`'s private half can open it, with `aad`.
pub fn seal(to: &SealKey, value: &[u8], aad: &[u8]) -> Result<Vec<u8>, SealError> {
    let eph = DeviceSealKey::generate()?;
    let eph_pub = eph.public().0;
    let shared = MontgomeryPoint(to.0).mul_clamped(eph.0).to_bytes();
    let key = derive(&shared, &eph_pub, &to.0)?;
    let mut out = Vec::with_capacity(SEAL_OVERHEAD + value.len());
    out.extend_from_slice(&eph_pub);
    let mut body = value.to_vec();
    key.seal_in_place_append_tag(Nonce::assume_unique_for_key([0; 12]), Aad::from(aad), &mut body)
        .map_err(|_| SealError::Random)?;
    out.extend_from_slice(&body);
    Ok(out)
}

fn derive(
    shared: &[u8; 32],
    eph_pub: &[u8; 32],
    device_pub: &[u8; 32],
) -> Result<LessSafeKey, SealError> {
    // A low-order public key gives the all-zero shared secret whatever the scalar.
    if shared.iter().all(|&b| b == 0) {
        return Err(SealError::WeakKey);
    }
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, SALT).extract(shared);
    let info = [eph_pub.as_slice(), device_pub.as_slice()];
    let okm = prk.expand(&info, &CHACHA20_POLY1305).map_err(|_| SealError::Random)?;
    let mut key = [0u8; 32];
    okm.fill(&mut key).map_err(|_| SealError::Random)?;
    let unbound = UnboundKey::new(&CHACHA20_POLY1305, &key).map_err(|_| SealError::Random)?;
    Ok(LessSafeKey::new(unbound))
}

/// The associated data that binds a sealed secret to its device, name and digest.
pub fn secret_aad(device: &str, name: &str, digest: &str) -> Vec<u8> {
    format!("fleet-secret\0{device}\0{name}\0{digest}").into_bytes()
}

/// The associated data of a device's sealed registry credentials.
pub fn registry_credentials_aad(device: &str) -> Vec<u8> {
    format!("fleet-registry-credentials\0{device}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_sealed_value_opens_only_with_its_key_and_aad() {
        let device = DeviceSealKey::generate().unwrap();
        let other = DeviceSealKey::generate().unwrap();
        let sealed = seal(&device.public(), b"hunter2", b"aad").unwrap();
        assert_eq!(sealed.len(), SEAL_OVERHEAD + 7);
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(device.open(&sealed, b"aad").unwrap(), b"hunter2");
        assert_eq!(other.open(&sealed, b"aad"), Err(SealError::Forged));
        assert_eq!(device.open(&sealed, b"other"), Err(SealError::Forged));
        let mut flipped = sealed.clone();
        flipped[40] ^= 1;
        assert_eq!(device.open(&flipped, b"aad"), Err(SealError::Forged));
        assert_eq!(device.open(&sealed[..20], b"aad"), Err(SealError::Truncated { len: 20 }));
    }

    #[test]
    fn sealing_twice_gives_different_bytes() {
        let device = DeviceSealKey::generate().unwrap();
        let a = seal(&device.public(), b"v", b"").unwrap();
        let b = seal(&device.public(), b"v", b"").unwrap();
        assert_ne!(a, b, "a fresh ephemeral key per value");
    }

    #[test]
    fn low_order_keys_are_refused() {
        // The identity (u = 0) and u = 1 are low-order points on Curve25519.
        assert_eq!(seal(&SealKey([0; 32]), b"v", b""), Err(SealError::WeakKey));
        let mut one = [0u8; 32];
        one[0] = 1;
        assert_eq!(seal(&SealKey(one), b"v", b""), Err(SealError::WeakKey));
    }

    #[test]
    fn debug_never_shows_the_private_key() {
        let key = DeviceSealKey::from_bytes([7; 32]);
        assert!(!format!("{key:?}").contains("0707"));
        let public = key.public();
        assert_eq!(SealKey::from_hex(&public.to_hex()), Some(public));
        assert_eq!(SealKey::from_hex("zz"), None);
    }

    #[test]
    fn the_x25519_test_vector_of_rfc_7748_holds() {
        // RFC 7748 §6.1: Alice's private key and public key.
        let alice = hex32("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
        let alice_pub = hex32("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
        assert_eq!(DeviceSealKey::from_bytes(alice).public().0, alice_pub);
    }

    fn hex32(s: &str) -> [u8; 32] {
        SealKey::from_hex(s).unwrap().0
    }

    proptest! {
        #[test]
        fn open_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let device = DeviceSealKey::from_bytes([9; 32]);
            let _ = device.open(&bytes, b"");
        }

        #[test]
        fn any_value_round_trips(value in proptest::collection::vec(any::<u8>(), 0..300), aad in ".{0,20}") {
            let device = DeviceSealKey::from_bytes([3; 32]);
            let sealed = seal(&device.public(), &value, aad.as_bytes()).unwrap();
            prop_assert_eq!(device.open(&sealed, aad.as_bytes()).unwrap(), value);
        }
    }
}
