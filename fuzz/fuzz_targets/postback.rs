//! Postback parsing and authentication on arbitrary input.
//!
//! The input is `signature header value` `\n` `raw query or body` (no `\n`: no header).
//! - The parser never panics, and what `validate` accepts is within every limit: ids valid,
//!   bounded free text without control characters, a click ID or coupon (or a txid for a
//!   reversal), an offer or something to take it from (the click or the coupon), and a txid
//!   for a pending report.
//! - An arbitrary signature header never authenticates (the fuzzer cannot forge HMAC-SHA256),
//!   and never panics.
//! - A genuine signature over the raw bytes authenticates within the max age and is stale
//!   outside it; the same signature over the raw bytes with one bit flipped is refused.
//! - Without a header, a token authenticates exactly when it equals the advertiser's.
#![no_main]
#![allow(clippy::unwrap_used)]

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use tally_protocol::auth::{authenticate, sign, AuthError, Authenticated, SIGNATURE_HEADER};
use tally_protocol::params::{validate, Field, RawParams, MAX_COUPON, MAX_SUB, MAX_TXID};
use tally_fuzz::{advertiser, HMAC_SECRET, TOKEN};
use tally_model::program::is_valid_id;
use tally_model::ConversionStatus;

const NOW: u64 = 1_700_000_000;
const MAX_AGE: u64 = 300;

fuzz_target!(|data: &[u8]| {
    let (sig, raw) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (Some(&data[..i]), &data[i + 1..]),
        None => (None, data),
    };
    let params = RawParams::from_pairs(form_urlencoded::parse(raw));
    if let Ok(v) = validate(&params) {
        assert!(v.offer.as_deref().is_none_or(is_valid_id), "{v:?}");
        // Without an offer, something to take it from: the click, or the coupon.
        assert!(v.offer.is_some() || v.click_id.is_some() || !v.coupon.is_empty(), "{v:?}");
        assert!(v.goal.as_deref().is_none_or(is_valid_id), "{v:?}");
        assert!(v.txid.len() <= MAX_TXID && v.coupon.len() <= MAX_COUPON, "{v:?}");
        assert!(v.subs.iter().all(|s| s.len() <= MAX_SUB), "{v:?}");
        let texts = [&v.txid, &v.coupon].into_iter().chain(v.subs.iter());
        assert!(texts.flat_map(|s| s.chars()).all(|c| !c.is_control()), "{v:?}");
        if v.status.is_reversal() || v.status == ConversionStatus::Pending {
            assert!(!v.txid.is_empty(), "{v:?}");
        } else {
            assert!(v.click_id.is_some() || !v.coupon.is_empty(), "{v:?}");
        }
    }

    let adv = advertiser();
    let token = params.get(Field::Token);
    if let Some(hv) = sig.and_then(|s| HeaderValue::from_bytes(s).ok()) {
        let mut headers = HeaderMap::new();
        headers.insert(SIGNATURE_HEADER, hv);
        let r = authenticate(adv, &headers, token, raw, NOW, MAX_AGE);
        assert!(r.is_err(), "a signature the fuzzer made up was accepted: {:?}", sig);
    }

    // The timestamp comes from the input so both sides of the window are exercised.
    let skew = u64::from(data.first().copied().unwrap_or(0)) * 3;
    let t = if data.len() % 2 == 0 { NOW - skew } else { NOW + skew };
    let mut headers = HeaderMap::new();
    headers.insert(SIGNATURE_HEADER, HeaderValue::from_str(&sign(HMAC_SECRET, t, raw)).unwrap());
    let r = authenticate(adv, &headers, None, raw, NOW, MAX_AGE);
    if skew <= MAX_AGE {
        assert!(matches!(r, Ok(Authenticated::Signature { ref name, .. }) if name == "acme-hmac"), "{r:?}");
    } else {
        assert_eq!(r, Err(AuthError::Stale));
    }
    if !raw.is_empty() && skew <= MAX_AGE {
        let mut tampered = raw.to_vec();
        let i = usize::from(data[0]) % tampered.len();
        tampered[i] ^= 1;
        assert_eq!(authenticate(adv, &headers, None, &tampered, NOW, MAX_AGE), Err(AuthError::Wrong));
    }

    let r = authenticate(adv, &HeaderMap::new(), token, raw, NOW, MAX_AGE);
    match token {
        None => assert_eq!(r, Err(AuthError::Missing)),
        Some(t) if t == TOKEN => assert_eq!(r, Ok(Authenticated::Token { name: "acme-token".into() })),
        Some(_) => assert_eq!(r, Err(AuthError::Wrong)),
    }
});
