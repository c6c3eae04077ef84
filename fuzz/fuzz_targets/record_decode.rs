//! `record::decode` never panics, `record::decode_view` agrees with it on every input, and
//! the format is canonical, so any record it accepts must re-encode to exactly the same
//! bytes, and `peek_kind` must agree with the decoded event.
//! A version-1 record re-encodes as the current version; it must then equal the record with its
//! version byte set back to 1 and, for a click, the `prior_click` `None` byte (`00`, the last
//! payload byte) dropped: version 2 changed nothing else.
//!
//! The first input byte picks the mode by its low bit:
//! - 0, "raw": the rest of the input is the record, as is (exercises the envelope checks).
//! - 1, "wrap": the second byte picks the kind (mapped into 1..=3) and the rest is the payload,
//!   wrapped in a valid envelope (version, kind, length, xxh3 checksum) so the fuzzer reaches
//!   the payload decoder instead of dying on the checksum. Bit 1 of the first byte picks the
//!   envelope's version: 0 the current one (`FORMAT_VERSION`), 1 version 1.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tally_model::record::{decode, decode_view, encode, peek_kind, EventView, FORMAT_VERSION};
use tally_model::{ClickView, Event, EventKind};

/// The first format, before `Click::prior_click`; still decoded.
const VERSION_1: u8 = 1;
const HEADER_LEN: usize = 6;
const CHECKSUM_LEN: usize = 4;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        check(rest);
    } else if let Some((&kind, payload)) = rest.split_first() {
        let version = if mode & 2 == 0 { FORMAT_VERSION } else { VERSION_1 };
        check(&wrap(version, kind % 3 + 1, payload));
    }
});

/// The envelope from `tally-model/src/record.rs`: version, kind, payload length (u32 BE),
/// payload, low 32 bits of xxh3-64 over everything before it (BE).
fn wrap(version: u8, kind: u8, payload: &[u8]) -> Vec<u8> {
    let Ok(len) = u32::try_from(payload.len()) else {
        return Vec::new();
    };
    let mut record = Vec::with_capacity(payload.len() + HEADER_LEN + CHECKSUM_LEN);
    record.push(version);
    record.push(kind);
    record.extend_from_slice(&len.to_be_bytes());
    record.extend_from_slice(payload);
    let sum = xxhash_rust::xxh3::xxh3_64(&record) as u32;
    record.extend_from_slice(&sum.to_be_bytes());
    record
}

fn check(record: &[u8]) {
    let decoded = decode(record);
    // The in-place decoder accepts exactly the same records, as the same events.
    match (&decoded, decode_view(record)) {
        (Ok(Event::Click(c)), Ok(EventView::Click(view))) => assert_eq!(view, ClickView::from(c)),
        (Ok(event), Ok(EventView::Owned(owned))) => assert_eq!(&owned, event),
        (Err(a), Err(b)) => assert_eq!(a, &b),
        (a, b) => panic!("decode and decode_view disagree on {}: {a:?} / {b:?}", hex(record)),
    }
    let Ok(event) = decoded else {
        return;
    };
    let bytes = match encode(&event) {
        Ok(bytes) => bytes,
        Err(e) => panic!("decoded event does not re-encode ({e}): {event:?}"),
    };
    assert_eq!(bytes[0], FORMAT_VERSION, "encode wrote an old version");
    let expected = match record[0] {
        FORMAT_VERSION => bytes,
        VERSION_1 => {
            let mut payload = bytes[HEADER_LEN..bytes.len() - CHECKSUM_LEN].to_vec();
            if event.kind() == EventKind::Click {
                assert_eq!(payload.pop(), Some(0), "a version-1 click decoded with a prior click: {event:?}");
            }
            wrap(VERSION_1, event.kind() as u8, &payload)
        }
        v => panic!("decode accepted unknown version {v}: {event:?}"),
    };
    assert!(
        expected == record,
        "decode accepted a non-canonical record\n  input:     {}\n  re-encode: {}\n  event: {event:?}",
        hex(record),
        hex(&expected),
    );
    assert_eq!(peek_kind(record), Ok(event.kind()));
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
