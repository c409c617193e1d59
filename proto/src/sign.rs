//! Ed25519 signatures over desired state and commands.
//!
//! The server signs the exact encoded payload bytes (never a re-encoding), prefixed with a
//! context string per message type, so a signed command can never pass as a desired state.
//! Each key has a [`KeyId`] (a fingerprint of the public key) so devices can trust several keys
//! at once while the server rotates. Verification uses `verify_strict`, which also refuses
//! weak keys and malleable signatures.

use std::collections::BTreeMap;
use std::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::codec;
use crate::command::Command;
use crate::desired::DesiredState;
use crate::release::ReleaseSpec;

/// Fingerprint of a public key: the first 8 bytes of its SHA-256, shown as 16 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct KeyId(pub [u8; 8]);

impl KeyId {
    /// The id of `key`.
    pub fn of(key: &VerifyingKey) -> KeyId {
        let digest = Sha256::digest(key.as_bytes());
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest[..8]);
        KeyId(id)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::hex::encode(&self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// A message type that travels signed.
pub trait Signable: Serialize + DeserializeOwned {
    /// Domain separation: signed bytes are `CONTEXT || 0x00 || payload`.
    const CONTEXT: &'static [u8];
}

impl Signable for DesiredState {
    const CONTEXT: &'static [u8] = b"fleet/v1 desired-state";
}

impl Signable for Command {
    const CONTEXT: &'static [u8] = b"fleet/v1 command";
}

/// The server signs every release it stores, so a release altered in the store (or a backup)
/// is detected before it reaches a device.
impl Signable for ReleaseSpec {
    const CONTEXT: &'static [u8] = b"fleet/v1 release";
}

/// A signed payload as it travels: the key's id, the signature and the payload bytes.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Signed {
    /// The signing key's id.
    pub key_id: KeyId,
    /// 64-byte Ed25519 signature; empty means unsigned.
    pub signature: Vec<u8>,
    /// The encoded message (postcard).
    pub payload: Vec<u8>,
}

impl fmt::Debug for Signed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signed")
            .field("key_id", &self.key_id)
            .field("signature_len", &self.signature.len())
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

/// Why a signed payload was refused. Each case is distinct so the agent can report exactly why.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// No signature at all.
    #[error("payload is not signed")]
    Unsigned,
    /// Signed by a key this device does not trust (never enrolled, or rotated out).
    #[error("signed by unknown key {key_id}; trusted keys: {trusted}")]
    UnknownKey {
        /// The key id in the payload.
        key_id: KeyId,
        /// The trusted key ids, comma separated.
        trusted: String,
    },
    /// The signature is not 64 bytes.
    #[error("signature is {len} bytes; Ed25519 signatures are 64")]
    MalformedSignature {
        /// Its length.
        len: usize,
    },
    /// The signature does not match the payload: forged or corrupted.
    #[error("signature by key {key_id} does not match the payload")]
    BadSignature {
        /// The key id in the payload.
        key_id: KeyId,
    },
    /// Correctly signed, but the payload does not decode.
    #[error("signed payload does not decode")]
    Payload(#[source] postcard::Error),
}

fn signed_bytes<T: Signable>(payload: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(T::CONTEXT.len() + 1 + payload.len());
    msg.extend_from_slice(T::CONTEXT);
    msg.push(0);
    msg.extend_from_slice(payload);
    msg
}

/// The server's private signing key.
pub struct ServerKey {
    key: SigningKey,
    id: KeyId,
}

impl fmt::Debug for ServerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServerKey({})", self.id)
    }
}

impl ServerKey {
    /// The key derived from a 32-byte secret seed (generate the seed from the OS's random
    /// source; keep it secret).
    pub fn from_seed(seed: &[u8; 32]) -> ServerKey {
        let key = SigningKey::from_bytes(seed);
        let id = KeyId::of(&key.verifying_key());
        ServerKey { key, id }
    }

    /// This key's id.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// The public half, for devices to trust.
    pub fn public(&self) -> TrustedKey {
        TrustedKey(self.key.verifying_key())
    }

    /// Signs `msg`.
    pub fn sign<T: Signable>(&self, msg: &T) -> Signed {
        let payload = codec::to_bytes(msg);
        let signature = self.key.sign(&signed_bytes::<T>(&payload));
        Signed { key_id: self.id, signature: signature.to_bytes().to_vec(), payload }
    }
}

/// A public key a device trusts.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TrustedKey(VerifyingKey);

/// Why a public key could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not 64 hex digits.
    #[error("public key must be 64 hex digits (32 bytes), got {len} characters")]
    Length {
        /// Characters given.
        len: usize,
    },
    /// Not hex.
    #[error("public key is not hexadecimal")]
    NotHex,
    /// Not a valid curve point.
    #[error("not a valid Ed25519 public key")]
    Invalid,
}

impl TrustedKey {
    /// The key's id.
    pub fn id(&self) -> KeyId {
        KeyId::of(&self.0)
    }

    /// Hex form, as written into enrollment bundles.
    pub fn to_hex(&self) -> String {
        crate::hex::encode(self.0.as_bytes())
    }

    /// Parses the hex form.
    pub fn from_hex(s: &str) -> Result<TrustedKey, KeyError> {
        let s = s.trim();
        if s.len() != 64 {
            return Err(KeyError::Length { len: s.len() });
        }
        let bytes = crate::hex::decode_array::<32>(s).ok_or(KeyError::NotHex)?;
        VerifyingKey::from_bytes(&bytes).map(TrustedKey).map_err(|_| KeyError::Invalid)
    }
}

impl fmt::Debug for TrustedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustedKey({})", self.id())
    }
}

/// The set of server keys a device trusts (more than one during a key rotation).
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys(BTreeMap<KeyId, TrustedKey>);

impl TrustedKeys {
    /// Trusts these keys.
    pub fn new(keys: impl IntoIterator<Item = TrustedKey>) -> TrustedKeys {
        TrustedKeys(keys.into_iter().map(|k| (k.id(), k)).collect())
    }

    /// Whether no key is trusted (then nothing verifies).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Signed {
    /// Verifies the signature against `trusted` and decodes the payload.
    pub fn open<T: Signable>(&self, trusted: &TrustedKeys) -> Result<T, VerifyError> {
        if self.signature.is_empty() {
            return Err(VerifyError::Unsigned);
        }
        let key = trusted.0.get(&self.key_id).ok_or_else(|| VerifyError::UnknownKey {
            key_id: self.key_id,
            trusted: trusted.0.keys().map(ToString::to_string).collect::<Vec<_>>().join(", "),
        })?;
        let sig: [u8; 64] = self
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| VerifyError::MalformedSignature { len: self.signature.len() })?;
        key.0
            .verify_strict(&signed_bytes::<T>(&self.payload), &Signature::from_bytes(&sig))
            .map_err(|_| VerifyError::BadSignature { key_id: self.key_id })?;
        codec::from_bytes_tolerant(&self.payload).map_err(VerifyError::Payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::samples;

    fn keys() -> (ServerKey, TrustedKeys) {
        let key = ServerKey::from_seed(&[7; 32]);
        let trusted = TrustedKeys::new([key.public()]);
        (key, trusted)
    }

    #[test]
    fn a_signed_desired_state_opens_with_the_trusted_key() {
        let (key, trusted) = keys();
        let signed = key.sign(&samples::desired());
        assert_eq!(signed.open::<DesiredState>(&trusted).unwrap(), samples::desired());
    }

    #[test]
    fn unsigned_payloads_are_refused() {
        let (key, trusted) = keys();
        let mut signed = key.sign(&samples::desired());
        signed.signature.clear();
        assert!(matches!(signed.open::<DesiredState>(&trusted), Err(VerifyError::Unsigned)));
    }

    #[test]
    fn payloads_signed_by_an_unknown_key_are_refused() {
        let (_, trusted) = keys();
        let stranger = ServerKey::from_seed(&[9; 32]);
        let signed = stranger.sign(&samples::desired());
        let err = signed.open::<DesiredState>(&trusted).unwrap_err();
        assert!(matches!(err, VerifyError::UnknownKey { key_id, .. } if key_id == stranger.id()));
    }

    #[test]
    fn tampered_payloads_are_refused() {
        let (key, trusted) = keys();
        let mut signed = key.sign(&samples::desired());
        let last = signed.payload.len() - 1;
        signed.payload[last] ^= 1;
        assert!(matches!(
            signed.open::<DesiredState>(&trusted),
            Err(VerifyError::BadSignature { .. })
        ));
    }

    #[test]
    fn forged_signatures_are_refused() {
        let (key, trusted) = keys();
        let mut signed = key.sign(&samples::desired());
        signed.signature[0] ^= 0x80;
        assert!(matches!(
            signed.open::<DesiredState>(&trusted),
            Err(VerifyError::BadSignature { .. })
        ));
        signed.signature.truncate(10);
        assert!(matches!(
            signed.open::<DesiredState>(&trusted),
            Err(VerifyError::MalformedSignature { len: 10 })
        ));
    }

    #[test]
    fn a_signed_command_cannot_pass_as_desired_state() {
        let (key, trusted) = keys();
        let mut cmd = key.sign(&samples::command());
        // Even with the bytes of a desired state under the command's signature context, the
        // signature cannot verify as a desired state.
        cmd.payload = codec::to_bytes(&samples::desired());
        assert!(cmd.open::<DesiredState>(&trusted).is_err());
        let cmd = key.sign(&samples::command());
        assert!(cmd.open::<DesiredState>(&trusted).is_err());
    }

    #[test]
    fn rotation_trusts_old_and_new_keys_at_once() {
        let old = ServerKey::from_seed(&[1; 32]);
        let new = ServerKey::from_seed(&[2; 32]);
        let trusted = TrustedKeys::new([old.public(), new.public()]);
        for key in [&old, &new] {
            key.sign(&samples::desired()).open::<DesiredState>(&trusted).unwrap();
        }
    }

    #[test]
    fn public_keys_round_trip_through_hex() {
        let key = ServerKey::from_seed(&[3; 32]).public();
        assert_eq!(TrustedKey::from_hex(&key.to_hex()).unwrap(), key);
        assert!(matches!(TrustedKey::from_hex("abc"), Err(KeyError::Length { len: 3 })));
        assert!(matches!(TrustedKey::from_hex(&"zz".repeat(32)), Err(KeyError::NotHex)));
        assert_eq!(key.id().to_string().len(), 16);
    }
}
