//! `Message::decode` on any bytes: it must return `Ok` or an error, never panic, and what
//! decodes must survive a round trip. The comparison is of encodings, not of messages: decoding
//! tolerates appended fields and non-minimal varints (so input bytes need not come back), and a
//! NaN in telemetry is not equal to itself; `encode` of one message is canonical.
#![no_main]

use fleet_proto::envelope::Compression;
use fleet_proto::Message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(message) = Message::decode(bytes) else { return };
    let encoded = message.encode();
    let again = Message::decode(&encoded).expect("an encoded message decodes");
    assert_eq!(again.encode(), encoded, "decode(encode(m)) encodes differently from m");
    // Compressed telemetry is not canonical (DEFLATE may pack the same bytes many ways), but
    // it must decode to the same batch.
    let packed = message.encode_with(Compression::Deflate);
    let unpacked = Message::decode(&packed).expect("a compressed message decodes");
    assert_eq!(unpacked.encode(), encoded, "compression changed the message");
});
