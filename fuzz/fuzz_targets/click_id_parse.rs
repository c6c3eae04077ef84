//! `ClickId::parse` on arbitrary text: never panics; an accepted ID prints as 26 canonical
//! uppercase characters that parse back to the same ID; parsing ignores ASCII case.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tally_model::ClickId;

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    let parsed = ClickId::parse(&s);

    // Case-insensitive, errors included (lowercasing ASCII moves no character positions).
    assert_eq!(ClickId::parse(&s.to_ascii_lowercase()), parsed, "case changed the result for {s:?}");
    assert_eq!(ClickId::parse(&s.to_ascii_uppercase()), parsed, "case changed the result for {s:?}");

    let Ok(id) = parsed else {
        return;
    };
    let text = id.to_string();
    assert_eq!(text.len(), ClickId::ENCODED_LEN, "{s:?} -> {text:?}");
    assert!(text.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_uppercase()), "{s:?} -> {text:?}");
    assert!(matches!(text.as_bytes()[0], b'0'..=b'7'), "{s:?} -> {text:?}");
    assert_eq!(text.as_bytes(), &id.encode());
    assert_eq!(ClickId::parse(&text), Ok(id), "{s:?} -> {text:?} does not round-trip");
    assert_eq!(ClickId::from_bytes(*id.as_bytes()), id);

    // The printed form is the input with Crockford's aliases resolved and letters uppercased.
    let canonical: String = s
        .chars()
        .map(|c| match c.to_ascii_uppercase() {
            'I' | 'L' => '1',
            'O' => '0',
            c => c,
        })
        .collect();
    assert_eq!(text, canonical, "{s:?} parsed to a different ID");
});
