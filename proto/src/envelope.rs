//! The envelope every payload travels in, and the one entry point for encoding and decoding.
//!
//! Wire layout (postcard varints):
//!
//! ```text
//! version: u16 | kind: u8 | body length: varint | body: postcard bytes of the message
//! ```
//!
//! The version and kind come first so a decoder can refuse what it does not understand with a
//! precise error before touching the body. [`Message::decode`] never panics and never allocates more than
//! a small multiple of its input, whatever the bytes — except that a compressed telemetry body
//! ([`MessageKind::TelemetryDeflate`]) may inflate to at most [`MAX_MESSAGE_BYTES`].

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::command::CommandResult;
use crate::event::Event;
use crate::ids::DeviceId;
use crate::report::StateReport;
use crate::sign::Signed;
use crate::status::Status;
use crate::telemetry::{TelemetryAck, TelemetryBatch};
use crate::topic::{Topic, TopicKind};

/// The protocol version this build writes.
pub const PROTOCOL_VERSION: u16 = 1;

/// The oldest protocol version this build still reads.
pub const MIN_PROTOCOL_VERSION: u16 = 1;

/// Largest encoded message accepted, in bytes. Desired states with many services and telemetry
/// batches fit easily; anything larger is refused before decoding. MQTT clients and brokers are
/// configured with at least this maximum packet size.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// Kinds of message, as numbered on the wire. Numbers are never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(u8)]
pub enum MessageKind {
    /// [`Message::Desired`].
    Desired = 1,
    /// [`Message::Report`].
    Report = 2,
    /// [`Message::Telemetry`].
    Telemetry = 3,
    /// [`Message::TelemetryAck`].
    TelemetryAck = 4,
    /// [`Message::Event`].
    Event = 5,
    /// [`Message::Status`].
    Status = 6,
    /// [`Message::Command`].
    Command = 7,
    /// [`Message::CommandResult`].
    CommandResult = 8,
    /// [`Message::Telemetry`], its body compressed with raw DEFLATE ([`Compression::Deflate`]).
    TelemetryDeflate = 9,
}

impl MessageKind {
    /// Every kind, in wire order.
    pub const ALL: [MessageKind; 9] = [
        MessageKind::Desired,
        MessageKind::Report,
        MessageKind::Telemetry,
        MessageKind::TelemetryAck,
        MessageKind::Event,
        MessageKind::Status,
        MessageKind::Command,
        MessageKind::CommandResult,
        MessageKind::TelemetryDeflate,
    ];

    /// The kind with this wire number.
    pub fn from_u8(n: u8) -> Option<MessageKind> {
        MessageKind::ALL.into_iter().find(|k| *k as u8 == n)
    }

    /// The topic this kind of message travels on.
    pub fn topic_kind(self) -> TopicKind {
        match self {
            MessageKind::Desired => TopicKind::Desired,
            MessageKind::Report => TopicKind::Report,
            MessageKind::Telemetry | MessageKind::TelemetryDeflate => TopicKind::Telemetry,
            MessageKind::TelemetryAck => TopicKind::TelemetryAck,
            MessageKind::Event => TopicKind::Events,
            MessageKind::Status => TopicKind::Status,
            MessageKind::Command => TopicKind::Cmd,
            MessageKind::CommandResult => TopicKind::CmdResult,
        }
    }
}

impl fmt::Display for MessageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.topic_kind().as_str())
    }
}

/// Every message of the protocol.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// Server → device: signed [`crate::DesiredState`].
    Desired(Signed),
    /// Device → server: state report.
    Report(StateReport),
    /// Device → server: telemetry.
    Telemetry(TelemetryBatch),
    /// Server → device: telemetry stored.
    TelemetryAck(TelemetryAck),
    /// Device → server: something happened.
    Event(Event),
    /// Device → server (retained, and as last will): presence.
    Status(Status),
    /// Server → device: signed [`crate::Command`].
    Command(Signed),
    /// Device → server: a command's outcome.
    CommandResult(CommandResult),
}

/// How telemetry batches travel: [`Compression::Deflate`] shrinks typical batches 6–8× (see
/// BENCHMARKS.md), which matters on cellular links.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Plain postcard bodies ([`MessageKind::Telemetry`]).
    None,
    /// Raw DEFLATE of the postcard body ([`MessageKind::TelemetryDeflate`]).
    #[default]
    Deflate,
}

/// miniz's default level: 7.9× on a 500-point batch at ~45 MB/s on this machine's x86_64,
/// where level 1 gives 5.9× (measured in examples/telemetry_compression.rs).
const DEFLATE_LEVEL: u8 = 6;

fn inflate_reason(e: &miniz_oxide::inflate::DecompressError) -> String {
    match e.status {
        miniz_oxide::inflate::TINFLStatus::HasMoreOutput => {
            format!("it inflates beyond {MAX_MESSAGE_BYTES} bytes")
        }
        status => format!("{status:?}"),
    }
}

/// Why bytes could not be decoded into a [`Message`].
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Nothing to decode.
    #[error("empty payload")]
    Empty,
    /// Larger than [`MAX_MESSAGE_BYTES`].
    #[error("payload of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// Payload size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The header (version, kind, body length) is cut short or malformed.
    #[error("malformed envelope header")]
    Header(#[source] postcard::Error),
    /// A protocol version this build does not speak.
    #[error(
        "protocol version {found} is not supported (this build reads {min}..={max}); \
         upgrade the {hint}"
    )]
    UnsupportedVersion {
        /// The version in the payload.
        found: u16,
        /// Oldest readable version.
        min: u16,
        /// Newest readable version.
        max: u16,
        /// Which side is likely out of date.
        hint: &'static str,
    },
    /// A message kind this build does not know.
    #[error("unknown message kind {kind}")]
    UnknownKind {
        /// The kind number in the payload.
        kind: u8,
    },
    /// The body does not decode as the announced kind.
    #[error("{kind} body does not decode")]
    Body {
        /// The announced kind.
        kind: MessageKind,
        /// What postcard reported.
        #[source]
        source: postcard::Error,
    },
    /// A compressed body does not inflate, or inflates beyond [`MAX_MESSAGE_BYTES`].
    #[error("{kind} body does not decompress: {reason}")]
    Decompress {
        /// The announced kind.
        kind: MessageKind,
        /// What the decompressor reported.
        reason: String,
    },
    /// Bytes follow the body.
    #[error("{count} unexpected bytes after the body")]
    TrailingBytes {
        /// How many.
        count: usize,
    },
}

/// A message arrived on a topic it does not belong on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicMismatch {
    /// A message of one kind on another kind's topic.
    #[error("{kind} message on a {topic} topic")]
    Kind {
        /// The message's kind.
        kind: MessageKind,
        /// The topic's kind.
        topic: TopicKind,
    },
    /// A message naming one device on another device's topic: forged or misrouted.
    #[error("message for device {in_payload} on device {in_topic}'s topic")]
    Device {
        /// Device id inside the payload.
        in_payload: DeviceId,
        /// Device id in the topic.
        in_topic: DeviceId,
    },
}

impl Message {
    /// The kind of this message.
    pub fn kind(&self) -> MessageKind {
        match self {
            Message::Desired(_) => MessageKind::Desired,
            Message::Report(_) => MessageKind::Report,
            Message::Telemetry(_) => MessageKind::Telemetry,
            Message::TelemetryAck(_) => MessageKind::TelemetryAck,
            Message::Event(_) => MessageKind::Event,
            Message::Status(_) => MessageKind::Status,
            Message::Command(_) => MessageKind::Command,
            Message::CommandResult(_) => MessageKind::CommandResult,
        }
    }

    /// The device id carried in the payload, for kinds that carry one in the clear. Signed
    /// messages carry it inside the signed payload, checked after verification.
    pub fn device(&self) -> Option<&DeviceId> {
        match self {
            Message::Report(m) => Some(&m.device),
            Message::Telemetry(m) => Some(&m.device),
            Message::Event(m) => Some(&m.device),
            Message::Status(m) => Some(&m.device),
            Message::CommandResult(m) => Some(&m.device),
            Message::Desired(_) | Message::Command(_) | Message::TelemetryAck(_) => None,
        }
    }

    /// Checks that this message may travel on `topic`: right kind, and the payload's device id
    /// (where it has one) equals the topic's.
    pub fn check_topic(&self, topic: &Topic) -> Result<(), TopicMismatch> {
        if self.kind().topic_kind() != topic.kind {
            return Err(TopicMismatch::Kind { kind: self.kind(), topic: topic.kind });
        }
        match self.device() {
            Some(d) if *d != topic.device => {
                Err(TopicMismatch::Device { in_payload: d.clone(), in_topic: topic.device.clone() })
            }
            _ => Ok(()),
        }
    }

    /// Encodes this message like [`Message::encode`], compressing a telemetry batch's body as
    /// `compression` says (other messages are small and go as they are). Readers older than
    /// kind [`MessageKind::TelemetryDeflate`] refuse compressed batches as an unknown kind, so a
    /// server must be upgraded before its agents turn compression on.
    pub fn encode_with(&self, compression: Compression) -> Vec<u8> {
        match (self, compression) {
            (Message::Telemetry(m), Compression::Deflate) => {
                let raw = codec::to_bytes(m);
                let packed = miniz_oxide::deflate::compress_to_vec(&raw, DEFLATE_LEVEL);
                codec::to_bytes(&(
                    PROTOCOL_VERSION,
                    MessageKind::TelemetryDeflate as u8,
                    packed.as_slice(),
                ))
            }
            _ => self.encode(),
        }
    }

    /// Encodes this message in an envelope of the current [`PROTOCOL_VERSION`].
    pub fn encode(&self) -> Vec<u8> {
        let body = match self {
            Message::Desired(m) | Message::Command(m) => codec::to_bytes(m),
            Message::Report(m) => codec::to_bytes(m),
            Message::Telemetry(m) => codec::to_bytes(m),
            Message::TelemetryAck(m) => codec::to_bytes(m),
            Message::Event(m) => codec::to_bytes(m),
            Message::Status(m) => codec::to_bytes(m),
            Message::CommandResult(m) => codec::to_bytes(m),
        };
        codec::to_bytes(&(PROTOCOL_VERSION, self.kind() as u8, body.as_slice()))
    }

    /// Decodes one envelope. See [`DecodeError`] for every way this can fail.
    pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
        if bytes.is_empty() {
            return Err(DecodeError::Empty);
        }
        if bytes.len() > MAX_MESSAGE_BYTES {
            return Err(DecodeError::TooLarge { len: bytes.len(), max: MAX_MESSAGE_BYTES });
        }
        let (version, rest) =
            postcard::take_from_bytes::<u16>(bytes).map_err(DecodeError::Header)?;
        if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version) {
            let hint = if version > PROTOCOL_VERSION {
                "reader (it is older than the writer)"
            } else {
                "writer (it is too old for this reader)"
            };
            return Err(DecodeError::UnsupportedVersion {
                found: version,
                min: MIN_PROTOCOL_VERSION,
                max: PROTOCOL_VERSION,
                hint,
            });
        }
        let (kind_no, rest) = postcard::take_from_bytes::<u8>(rest).map_err(DecodeError::Header)?;
        let kind =
            MessageKind::from_u8(kind_no).ok_or(DecodeError::UnknownKind { kind: kind_no })?;
        let (body, rest) = postcard::take_from_bytes::<&[u8]>(rest).map_err(DecodeError::Header)?;
        if !rest.is_empty() {
            return Err(DecodeError::TrailingBytes { count: rest.len() });
        }
        let body_err = |source| DecodeError::Body { kind, source };
        Ok(match kind {
            MessageKind::Desired => {
                Message::Desired(codec::from_bytes_tolerant(body).map_err(body_err)?)
            }
            MessageKind::Report => {
                Message::Report(codec::from_bytes_tolerant(body).map_err(body_err)?)
            }
            MessageKind::Telemetry => {
                Message::Telemetry(codec::from_bytes_tolerant(body).map_err(body_err)?)
            }
            MessageKind::TelemetryAck => {
                Message::TelemetryAck(codec::from_bytes_tolerant(body).map_err(body_err)?)
            }
            MessageKind::Event => {
                Message::Event(codec::from_bytes_tolerant(body).map_err(body_err)?)
            }
            MessageKind::Status => {
                Message::Status(codec::from_bytes_tolerant(body).map_err(body_err)?)
            }
            MessageKind::Command => {
                Message::Command(codec::from_bytes_tolerant(body).map_err(body_err)?)
            }
            MessageKind::CommandResult => {
                Message::CommandResult(codec::from_bytes_tolerant(body).map_err(body_err)?)
            }
            MessageKind::TelemetryDeflate => {
                // Inflating is bounded: a small body may not expand into more than a message.
                let raw =
                    miniz_oxide::inflate::decompress_to_vec_with_limit(body, MAX_MESSAGE_BYTES)
                        .map_err(|e| DecodeError::Decompress {
                            kind,
                            reason: inflate_reason(&e),
                        })?;
                Message::Telemetry(codec::from_bytes_tolerant(&raw).map_err(body_err)?)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::samples;

    #[test]
    fn unknown_version_is_refused_with_both_versions_named() {
        let mut bytes = Message::Status(samples::status()).encode();
        bytes[0] = 9; // version 9 as a one-byte varint
        let err = Message::decode(&bytes).unwrap_err();
        assert!(matches!(err, DecodeError::UnsupportedVersion { found: 9, min: 1, max: 1, .. }));
        assert!(err.to_string().contains("protocol version 9 is not supported"), "{err}");
        bytes[0] = 0;
        assert!(matches!(
            Message::decode(&bytes),
            Err(DecodeError::UnsupportedVersion { found: 0, .. })
        ));
    }

    #[test]
    fn unknown_kind_is_refused() {
        let mut bytes = Message::Status(samples::status()).encode();
        bytes[1] = 200;
        assert!(matches!(Message::decode(&bytes), Err(DecodeError::UnknownKind { kind: 200 })));
    }

    #[test]
    fn truncated_and_padded_envelopes_are_refused() {
        let bytes = Message::Report(samples::report()).encode();
        for cut in [1, 2, 3, bytes.len() / 2, bytes.len() - 1] {
            assert!(Message::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut padded = bytes.clone();
        padded.push(0);
        assert!(matches!(Message::decode(&padded), Err(DecodeError::TrailingBytes { count: 1 })));
        assert!(matches!(Message::decode(&[]), Err(DecodeError::Empty)));
    }

    #[test]
    fn oversized_payloads_are_refused_before_decoding() {
        let big = vec![1u8; MAX_MESSAGE_BYTES + 1];
        assert!(matches!(Message::decode(&big), Err(DecodeError::TooLarge { .. })));
    }

    #[test]
    fn body_of_the_wrong_shape_names_the_kind() {
        let bytes =
            codec::to_bytes(&(PROTOCOL_VERSION, MessageKind::Report as u8, &[0xffu8, 0xff][..]));
        let err = Message::decode(&bytes).unwrap_err();
        assert!(matches!(err, DecodeError::Body { kind: MessageKind::Report, .. }), "{err:?}");
    }

    #[test]
    fn messages_must_match_their_topic() {
        let report = Message::Report(samples::report());
        let own = Topic::new(samples::device(), TopicKind::Report);
        assert_eq!(report.check_topic(&own), Ok(()));
        let other = Topic::new(DeviceId::new("other").unwrap(), TopicKind::Report);
        assert!(matches!(report.check_topic(&other), Err(TopicMismatch::Device { .. })));
        let wrong_kind = Topic::new(samples::device(), TopicKind::Events);
        assert!(matches!(report.check_topic(&wrong_kind), Err(TopicMismatch::Kind { .. })));
    }

    #[test]
    fn compressed_telemetry_decodes_to_the_same_batch_and_is_smaller() {
        let mut batch = samples::telemetry();
        let point = batch.points[0].clone();
        batch.points = (0..500).map(|_| point.clone()).collect();
        let plain = Message::Telemetry(batch.clone()).encode();
        let packed = Message::Telemetry(batch.clone()).encode_with(Compression::Deflate);
        assert_eq!(packed[1], MessageKind::TelemetryDeflate as u8);
        assert!(packed.len() * 5 < plain.len(), "{} vs {}", packed.len(), plain.len());
        let back = Message::decode(&packed).unwrap();
        assert_eq!(back, Message::Telemetry(batch.clone()));
        // Decoded, it is an ordinary telemetry message, on the telemetry topic.
        assert_eq!(back.kind(), MessageKind::Telemetry);
        assert_eq!(MessageKind::TelemetryDeflate.topic_kind(), TopicKind::Telemetry);
        assert_eq!(Message::Telemetry(batch).encode_with(Compression::None), plain);
        // Other messages are never compressed.
        let status = Message::Status(samples::status());
        assert_eq!(status.encode_with(Compression::Deflate), status.encode());
    }

    #[test]
    fn a_compressed_body_may_not_inflate_beyond_one_message() {
        // 4 MiB of zeros deflate to a few KiB: a bomb for a reader without a limit.
        let bomb = miniz_oxide::deflate::compress_to_vec(&vec![0u8; 4 * MAX_MESSAGE_BYTES], 9);
        assert!(bomb.len() < 64 * 1024);
        let bytes = codec::to_bytes(&(
            PROTOCOL_VERSION,
            MessageKind::TelemetryDeflate as u8,
            bomb.as_slice(),
        ));
        let err = Message::decode(&bytes).unwrap_err();
        assert!(
            err.to_string().contains(&format!("inflates beyond {MAX_MESSAGE_BYTES} bytes")),
            "{err}"
        );
        // Garbage is refused too, naming the kind.
        let garbage = codec::to_bytes(&(
            PROTOCOL_VERSION,
            MessageKind::TelemetryDeflate as u8,
            &[0xffu8, 0xff, 0xff][..],
        ));
        let err = Message::decode(&garbage).unwrap_err();
        assert!(matches!(err, DecodeError::Decompress { kind: MessageKind::TelemetryDeflate, .. }));
    }

    #[test]
    fn kind_numbers_round_trip() {
        for k in MessageKind::ALL {
            assert_eq!(MessageKind::from_u8(k as u8), Some(k));
        }
        assert_eq!(MessageKind::from_u8(0), None);
    }
}
