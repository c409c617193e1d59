//! Postcard with room to grow.
//!
//! Postcard is compact and fast but not self-describing: a decoder must know the exact layout.
//! Two rules make fields appendable anyway:
//!
//! * A message body (and every value marked *extensible* below) is decoded **tolerantly**:
//!   bytes the decoder does not know (fields appended by a newer writer) are ignored, and fields
//!   the bytes do not contain (appended after an older writer was built) read as zero bytes,
//!   which postcard decodes as `0`, `false`, `""`, empty collections, `None` and the first enum
//!   variant. An appended field's zero value must therefore mean "absent".
//! * Only the *end* of a body can grow. Nested values can grow only where they are encoded as
//!   a length-prefixed extensible value ([`extensible_vec`], [`extensible_opt`]); other nested
//!   types are frozen apart from appended enum variants. Changing anything else is a new
//!   protocol version.
//!
//! Human-readable formats (the server's JSON API, config files) see extensible values as plain
//! nested values; the length prefix exists only in postcard.
//!
//! Truncation is still caught: the envelope carries the body's length, so a cut-off message
//! fails to decode instead of reading as zeros. Zero-filling is bounded so that hostile bytes
//! cannot make the decoder spin.

use postcard::de_flavors::Flavor;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// At most this many zero bytes are invented past the end of one body: plenty for appended
/// fields, far too few for a hostile length prefix to cause work.
const MAX_ZERO_FILL: usize = 256;

static ZEROS: [u8; 16] = [0; 16];

/// A postcard input that reads zeros past its end (bounded) and reports what it did not read.
struct ZeroExtended<'de> {
    data: &'de [u8],
    pos: usize,
    zero_filled: usize,
}

impl<'de> ZeroExtended<'de> {
    fn fill(&mut self, n: usize) -> postcard::Result<()> {
        self.zero_filled += n;
        if self.zero_filled > MAX_ZERO_FILL {
            return Err(postcard::Error::DeserializeUnexpectedEnd);
        }
        Ok(())
    }
}

impl<'de> Flavor<'de> for ZeroExtended<'de> {
    type Remainder = usize;
    type Source = &'de [u8];

    fn pop(&mut self) -> postcard::Result<u8> {
        match self.data.get(self.pos) {
            Some(&b) => {
                self.pos += 1;
                Ok(b)
            }
            None => self.fill(1).map(|()| 0),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.data.len() - self.pos)
    }

    fn try_take_n(&mut self, ct: usize) -> postcard::Result<&'de [u8]> {
        if let Some(bytes) = self.data.get(self.pos..self.pos.saturating_add(ct)) {
            self.pos += ct;
            return Ok(bytes);
        }
        // A value that starts exactly at the end is an appended field; one that straddles the
        // end is a corrupt message.
        if self.pos >= self.data.len() && ct <= ZEROS.len() {
            self.fill(ct)?;
            return Ok(&ZEROS[..ct]);
        }
        Err(postcard::Error::DeserializeUnexpectedEnd)
    }

    fn finalize(self) -> postcard::Result<usize> {
        Ok(self.data.len().saturating_sub(self.pos))
    }
}

/// Encodes a value with postcard.
pub(crate) fn to_bytes<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    // Every Fleet type has sequences of known length and the output grows on demand, so
    // postcard has no way to fail here.
    postcard::to_allocvec(value).expect("postcard encoding of Fleet types is infallible")
}

/// Decodes a body tolerantly (see the module docs).
pub(crate) fn from_bytes_tolerant<T: DeserializeOwned>(bytes: &[u8]) -> postcard::Result<T> {
    let mut de =
        postcard::Deserializer::from_flavor(ZeroExtended { data: bytes, pos: 0, zero_filled: 0 });
    let value = T::deserialize(&mut de)?;
    // Unread bytes are fields appended by a newer writer: ignored on purpose.
    let _unread = de.finalize()?;
    Ok(value)
}

/// Serde helpers: a `Vec<T>` whose elements are each encoded as a length-prefixed, tolerantly
/// decoded body, so fields can be appended to `T`.
pub(crate) mod extensible_vec {
    use serde::de::{DeserializeOwned, Deserializer, SeqAccess, Visitor};
    use serde::ser::{SerializeSeq, Serializer};
    use serde::{Deserialize, Serialize};

    use super::Blob;

    pub(crate) fn serialize<S: Serializer, T: Serialize>(v: &[T], s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            return v.serialize(s);
        }
        let mut seq = s.serialize_seq(Some(v.len()))?;
        for item in v {
            seq.serialize_element(&Blob::encode(item))?;
        }
        seq.end()
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>, T: DeserializeOwned>(
        d: D,
    ) -> Result<Vec<T>, D::Error> {
        if d.is_human_readable() {
            return Vec::<T>::deserialize(d);
        }
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: DeserializeOwned> Visitor<'de> for V<T> {
            type Value = Vec<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a sequence of extensible values")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
                // Do not trust the length prefix for allocation: hostile bytes could claim 2^32.
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
                while let Some(blob) = seq.next_element::<Blob>()? {
                    out.push(blob.decode()?);
                }
                Ok(out)
            }
        }
        d.deserialize_seq(V(std::marker::PhantomData))
    }
}

/// Serde helpers: an `Option<T>` whose value is encoded as a length-prefixed, tolerantly
/// decoded body, so fields can be appended to `T`.
pub(crate) mod extensible_opt {
    use serde::de::{DeserializeOwned, Deserializer};
    use serde::ser::Serializer;
    use serde::{Deserialize, Serialize};

    use super::Blob;

    pub(crate) fn serialize<S: Serializer, T: Serialize>(
        v: &Option<T>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            return v.serialize(s);
        }
        v.as_ref().map(Blob::encode).serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>, T: DeserializeOwned>(
        d: D,
    ) -> Result<Option<T>, D::Error> {
        if d.is_human_readable() {
            return Option::<T>::deserialize(d);
        }
        Option::<Blob>::deserialize(d)?.map(|b| b.decode()).transpose()
    }
}

/// Serde helpers: a value encoded as a length-prefixed, tolerantly decoded body, so fields can
/// be appended to it; bytes from before the value existed decode as its zero value (every
/// field absent), so it can itself be appended to a body.
pub(crate) mod extensible {
    use serde::de::{DeserializeOwned, Deserializer};
    use serde::ser::Serializer;
    use serde::{Deserialize, Serialize};

    use super::Blob;

    pub(crate) fn serialize<S: Serializer, T: Serialize>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            return v.serialize(s);
        }
        Blob::encode(v).serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>, T: DeserializeOwned>(
        d: D,
    ) -> Result<T, D::Error> {
        if d.is_human_readable() {
            return T::deserialize(d);
        }
        Blob::deserialize(d)?.decode()
    }
}

/// The encoded bytes of one extensible value.
struct Blob(Vec<u8>);

impl Blob {
    fn encode<T: Serialize>(value: &T) -> Blob {
        Blob(to_bytes(value))
    }

    fn decode<T: DeserializeOwned, E: serde::de::Error>(&self) -> Result<T, E> {
        from_bytes_tolerant(&self.0).map_err(E::custom)
    }
}

impl Serialize for Blob {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Blob {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Blob;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Blob, E> {
                Ok(Blob(v.to_vec()))
            }
        }
        d.deserialize_bytes(V)
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Old {
        a: u32,
        name: String,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct New {
        a: u32,
        name: String,
        appended: Option<String>,
        count: u64,
        flag: bool,
    }

    #[test]
    fn bytes_from_an_older_writer_decode_with_appended_fields_absent() {
        let old = to_bytes(&Old { a: 7, name: "x".into() });
        let new: New = from_bytes_tolerant(&old).unwrap();
        assert_eq!(new, New { a: 7, name: "x".into(), appended: None, count: 0, flag: false });
    }

    #[test]
    fn bytes_from_a_newer_writer_decode_with_unknown_fields_ignored() {
        let new = to_bytes(&New {
            a: 7,
            name: "x".into(),
            appended: Some("y".into()),
            count: 3,
            flag: true,
        });
        assert_eq!(from_bytes_tolerant::<Old>(&new).unwrap(), Old { a: 7, name: "x".into() });
    }

    #[test]
    fn a_value_cut_in_the_middle_is_an_error_not_zeros() {
        let bytes = to_bytes(&Old { a: 7, name: "hello".into() });
        assert!(from_bytes_tolerant::<Old>(&bytes[..bytes.len() - 2]).is_err());
    }

    #[test]
    fn json_sees_extensible_values_as_plain_values() {
        let release = crate::samples::release();
        let json = serde_json::to_value(&release).unwrap();
        assert_eq!(json["services"][0]["name"], "web");
        let back: crate::ReleaseSpec = serde_json::from_value(json).unwrap();
        assert_eq!(back, release);
        let report = crate::samples::report();
        let json = serde_json::to_string(&report).unwrap();
        assert!(json.contains("\"arch\":\"aarch64\""), "inventory is plain JSON: {json}");
        assert_eq!(serde_json::from_str::<crate::StateReport>(&json).unwrap(), report);
    }

    #[test]
    fn hostile_lengths_past_the_end_stop_quickly() {
        // A huge sequence length followed by nothing: would loop 2^32 times if zero-fill were
        // unbounded.
        let bytes = [0xff, 0xff, 0xff, 0xff, 0x0f];
        assert!(from_bytes_tolerant::<Vec<u8>>(&bytes).is_err());
    }
}
