//! # fleet-proto — the contract between `fleet-agent` and `fleet-server`
//!
//! Everything that crosses the wire between a device and the fleet is defined here, and only
//! here: message types, the envelope and its codec, MQTT topics and Ed25519 signatures. The crate
//! does no I/O and has no async runtime, so both sides (and the aarch64 build under QEMU) test it
//! in isolation.
//!
//! ## Compatibility rules
//!
//! * Every payload is an [`envelope`]: protocol version, message kind, body. A version outside
//!   [`MIN_PROTOCOL_VERSION`]`..=`[`PROTOCOL_VERSION`] is refused with a clear error, never
//!   guessed at.
//! * Within a version, fields are only ever **appended** at the end of a message (or of a value
//!   encoded as extensible, see `codec.rs`), and enum variants only appended. Old
//!   bytes then decode with the new field absent, and new bytes decode in old builds with the
//!   field ignored. Nothing is reordered, removed or retyped.
//! * The golden fixtures in `proto/tests/golden/` are bytes written by earlier builds; they must
//!   keep decoding. The test only ever adds fixtures.
//! * Deploy servers before agents: an old server may refuse an enum variant a new agent sends.
//!
//! ## Example
//!
//! ```
//! use fleet_proto::{samples, Message, Topic, TopicKind};
//!
//! let bytes = Message::Report(samples::report()).encode();
//! let topic = Topic::parse("fleet/v1/robot-7/report").unwrap();
//! let msg = Message::decode(&bytes).unwrap();
//! msg.check_topic(&topic).unwrap();
//! assert_eq!(msg, Message::Report(samples::report()));
//! ```

mod codec;
pub mod command;
pub mod desired;
pub mod envelope;
pub mod errors;
pub mod event;
pub mod hex;
pub mod ids;
pub mod inventory;
pub mod policy;
pub mod release;
pub mod report;
#[cfg(any(test, feature = "samples"))]
pub mod samples;
pub mod seal;
pub mod sign;
pub mod status;
pub mod telemetry;
pub mod time;
pub mod topic;
pub mod version;

#[cfg(test)]
mod roundtrip_tests;

pub use command::{Command, CommandAction, CommandOutcome, CommandResult};
pub use desired::{AgentTarget, DesiredState, Pin, RegistryCredential, SealedSecret};
pub use envelope::{
    Compression, DecodeError, Message, MessageKind, TopicMismatch, MAX_MESSAGE_BYTES,
    MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};
pub use event::{Event, EventKind, Severity};
pub use ids::{DeviceId, IdError, ReleaseId, ServiceName};
pub use inventory::Inventory;
pub use release::{ImageRef, ReleaseSpec, SecretMount, ServiceSpec, SpecError};
pub use report::StateReport;
pub use seal::{DeviceSealKey, SealError, SealKey};
pub use sign::{KeyId, ServerKey, Signable, Signed, TrustedKey, TrustedKeys, VerifyError};
pub use status::{Presence, Status};
pub use telemetry::{Point, TelemetryAck, TelemetryBatch, Value};
pub use time::UnixMillis;
pub use topic::{topic, Direction, Topic, TopicError, TopicKind};
