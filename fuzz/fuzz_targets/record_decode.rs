//! `record::decode` never panics, and the format is canonical, so any record it accepts must
//! re-encode to exactly the same bytes, and `peek_kind` must agree with the decoded event.
//!
//! The first input byte picks the mode by its low bit:
//! - 0, "raw": the rest of the input is the record, as is (exercises the envelope checks).
//! - 1, "wrap": the second byte picks the kind (mapped into 1..=3) and the rest is the payload,
//!   wrapped in a valid envelope (version, kind, length, xxh3 checksum) so the fuzzer reaches
//!   the payload decoder instead of dying on the checksum.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tally_model::record::{decode, encode, peek_kind, FORMAT_VERSION};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        check(rest);
    } else if let Some((&kind, payload)) = rest.split_first() {
        check(&wrap(kind % 3 + 1, payload));
    }
});

/// The envelope from `tally-model/src/record.rs`: version, kind, payload length (u32 BE),
/// payload, low 32 bits of xxh3-64 over everything before it (BE).
fn wrap(kind: u8, payload: &[u8]) -> Vec<u8> {
    let Ok(len) = u32::try_from(payload.len()) else {
        return Vec::new();
    };
    let mut record = Vec::with_capacity(payload.len() + 10);
    record.push(FORMAT_VERSION);
    record.push(kind);
    record.extend_from_slice(&len.to_be_bytes());
    record.extend_from_slice(payload);
    let sum = xxhash_rust::xxh3::xxh3_64(&record) as u32;
    record.extend_from_slice(&sum.to_be_bytes());
    record
}

fn check(record: &[u8]) {
    let Ok(event) = decode(record) else {
        return;
    };
    match encode(&event) {
        Ok(bytes) => assert!(
            bytes == record,
            "decode accepted a non-canonical record\n  input:     {}\n  re-encode: {}\n  event: {event:?}",
            hex(record),
            hex(&bytes),
        ),
        Err(e) => panic!("decoded event does not re-encode ({e}): {event:?}"),
    }
    assert_eq!(peek_kind(record), Ok(event.kind()));
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
