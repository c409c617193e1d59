//! Property tests: every message survives encode → decode, and no byte string makes the decoder
//! panic.

use proptest::prelude::*;

use crate::*;

fn any_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        any::<Signed>().prop_map(Message::Desired),
        any::<StateReport>().prop_map(Message::Report),
        any::<TelemetryBatch>().prop_map(Message::Telemetry),
        any::<TelemetryAck>().prop_map(Message::TelemetryAck),
        any::<Event>().prop_map(Message::Event),
        any::<Status>().prop_map(Message::Status),
        any::<Signed>().prop_map(Message::Command),
        any::<CommandResult>().prop_map(Message::CommandResult),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    // Compared by bytes, not by value: a NaN telemetry value round-trips bit for bit but is not
    // equal to itself.
    #[test]
    fn every_message_round_trips(msg in any_message()) {
        let bytes = msg.encode();
        let back = Message::decode(&bytes).unwrap();
        prop_assert_eq!(back.kind(), msg.kind());
        prop_assert_eq!(back.encode(), bytes);
    }

    #[test]
    fn every_message_round_trips_compressed(msg in any_message()) {
        let bytes = msg.encode_with(Compression::Deflate);
        let back = Message::decode(&bytes).unwrap();
        prop_assert_eq!(back.kind(), msg.kind());
        prop_assert_eq!(back.encode(), msg.encode());
    }

    #[test]
    fn desired_states_round_trip_through_signatures(state in any::<DesiredState>()) {
        let key = samples::server_key();
        let trusted = TrustedKeys::new([key.public()]);
        let signed = key.sign(&state);
        let bytes = Message::Desired(signed).encode();
        let Message::Desired(back) = Message::decode(&bytes).unwrap() else { panic!("wrong kind") };
        prop_assert_eq!(back.open::<DesiredState>(&trusted).unwrap(), state);
    }

    #[test]
    fn commands_round_trip_through_signatures(cmd in any::<Command>()) {
        let key = samples::server_key();
        let trusted = TrustedKeys::new([key.public()]);
        prop_assert_eq!(key.sign(&cmd).open::<Command>(&trusted).unwrap(), cmd);
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Message::decode(&bytes);
    }

    // Random bytes rarely get past the header; these keep a valid header and fuzz the body.
    #[test]
    fn random_bodies_never_panic(kind in 1u8..=8, body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let bytes = codec::to_bytes(&(PROTOCOL_VERSION, kind, body.as_slice()));
        let _ = Message::decode(&bytes);
    }

    // Flipping bits in real messages reaches deep into the decoder.
    #[test]
    fn mutated_real_messages_never_panic(flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let mut bytes = Message::Report(samples::report()).encode();
        for (at, mask) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= mask;
        }
        let _ = Message::decode(&bytes);
    }

    #[test]
    fn every_sample_release_mutation_validates_without_panicking(release in any::<ReleaseSpec>()) {
        let _ = release.validate();
    }
}
