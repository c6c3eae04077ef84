//! `parse_minor` on arbitrary text: never panics; an accepted amount formats and parses back
//! to itself; with `allow_negative = false` nothing negative gets through. And
//! `parse_reported_minor` (a merchant's amount, which may use a decimal comma): never panics,
//! never negative, agrees with `parse_minor` on text without a comma, and reads a comma only as
//! the decimal point of the same text with a dot.
//!
//! Input: byte 0 picks the currency (bits 0-1) and `allow_negative` (bit 2); the rest is the
//! amount text.
#![no_main]
#![allow(clippy::unwrap_used)]

use libfuzzer_sys::fuzz_target;
use tally_model::{format_minor, parse_minor, parse_reported_minor, Currency};

const CODES: [&str; 4] = ["USD", "JPY", "BHD", "EUR"];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let Ok(s) = std::str::from_utf8(rest) else {
        return;
    };
    let currency = Currency::from_code(CODES[usize::from(selector & 0b11)]).unwrap();
    let allow_negative = selector & 0b100 != 0;

    match parse_reported_minor(s, currency) {
        Ok(r) if s.contains(',') => {
            assert!(r >= 0, "{s:?} {currency} reported as negative {r}");
            assert_eq!(parse_minor(&s.replacen(',', ".", 1), currency, false), Ok(r), "{s:?} {currency}");
        }
        reported if !s.contains(',') => assert_eq!(reported, parse_minor(s, currency, false), "{s:?} {currency}"),
        _ => {}
    }

    let Ok(m) = parse_minor(s, currency, allow_negative) else {
        return;
    };
    if !allow_negative {
        assert!(m >= 0, "{s:?} {currency} parsed to negative {m} with allow_negative = false");
    }
    let formatted = format_minor(m, currency);
    assert_eq!(parse_minor(&formatted, currency, true), Ok(m), "{s:?} {currency} -> {m} -> {formatted:?}");
    if m >= 0 {
        assert_eq!(parse_minor(&formatted, currency, false), Ok(m), "{s:?} {currency} -> {m} -> {formatted:?}");
    }
    // Exactly `exponent` decimal places.
    let decimals = formatted.split_once('.').map_or(0, |(_, frac)| frac.len());
    assert_eq!(decimals, usize::from(currency.exponent()), "{m} {currency} -> {formatted:?}");
});
