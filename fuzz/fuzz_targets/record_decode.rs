//! `record::decode` never panics, `record::decode_view` agrees with it on every input (a
//! click of version 3 or later, read in place, has no personal fields), and the format is
//! canonical: a current-version record it accepts re-encodes, with the salt of its trailer,
//! to exactly the same bytes (an erased one to the same bytes but for its seal), an older
//! record re-encodes to a current record of the same event, and `peek_kind` and `personal`
//! agree with the decode.
//!
//! The first input byte picks the mode by its low bit:
//! - 0, "raw": the rest of the input is the record, as is (exercises the envelope checks).
//! - 1, "wrap": the second byte picks the kind (mapped into 1..=3) and the rest is the payload,
//!   wrapped in a valid envelope (version, kind, length, xxh3 checksum) so the fuzzer reaches
//!   the payload decoder instead of dying on the checksum. The first byte's other bits pick
//!   the envelope's version: the current one (`FORMAT_VERSION`), 1, 2 or 3.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tally_model::record::{
    chained_len, decode, decode_personal, decode_view, encode_salted, peek_kind, personal, EventView, Personal,
    FORMAT_VERSION, SALT_LEN,
};
use tally_model::{ClickView, Event};

/// The first format, before `Click::prior_click`; still decoded.
const VERSION_1: u8 = 1;
const HEADER_LEN: usize = 6;
const CHECKSUM_LEN: usize = 4;
const SEAL_LEN: usize = 12;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        check(rest);
    } else if let Some((&kind, payload)) = rest.split_first() {
        let version = [FORMAT_VERSION, VERSION_1, 2, 3][usize::from(mode >> 1) % 4];
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
    let decoded = decode_personal(record);
    assert_eq!(decoded.clone().map(|(e, _)| e), decode(record));
    // The in-place decoder accepts the same chained bytes, as the same events; it does not
    // read a trailer, so it may accept a record whose trailer `decode` refuses.
    match (&decoded, decode_view(record)) {
        (Ok((Event::Click(c), p)), Ok(EventView::Click(view))) => {
            let mut expected = ClickView::from(c);
            if *p != Personal::Chained {
                (expected.ip, expected.user_agent, expected.referrer) = ("", "", "");
            }
            assert_eq!(view, expected);
        }
        (Ok((event, _)), Ok(EventView::Owned(owned))) => assert_eq!(&owned, event),
        (Err(a), Err(b)) => assert_eq!(a, &b),
        (Err(_), Ok(_)) if chained_len(record) < record.len() => {}
        (a, b) => panic!("decode and decode_view disagree on {}: {a:?} / {b:?}", hex(record)),
    }
    let Ok((event, held)) = decoded else {
        return;
    };
    assert_eq!(personal(record), Ok(held));
    assert_eq!(peek_kind(record), Ok(event.kind()));
    let chained = chained_len(record);
    let salt: [u8; SALT_LEN] =
        record.get(chained..chained + SALT_LEN).and_then(|s| s.try_into().ok()).unwrap_or([0; SALT_LEN]);
    let mut bytes = Vec::new();
    if let Err(e) = encode_salted(&event, salt, &mut bytes) {
        panic!("decoded event does not re-encode ({e}): {event:?}");
    }
    assert_eq!(bytes[0], FORMAT_VERSION, "encode wrote an old version");
    match (record[0], held) {
        (FORMAT_VERSION, Personal::Erased) => {
            // Re-encoded without personal fields, the seal is zeros; all else is the same.
            let seal_at = chained - CHECKSUM_LEN - SEAL_LEN;
            assert!(bytes.len() == chained && bytes[..seal_at] == record[..seal_at], "{}", hex(record));
        }
        (FORMAT_VERSION, _) => assert!(
            bytes == record,
            "decode accepted a non-canonical record\n  input:     {}\n  re-encode: {}\n  event: {event:?}",
            hex(record),
            hex(&bytes),
        ),
        (VERSION_1 | 2 | 3, _) => assert_eq!(decode(&bytes).as_ref(), Ok(&event), "{}", hex(record)),
        (v, _) => panic!("decode accepted unknown version {v}: {event:?}"),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
