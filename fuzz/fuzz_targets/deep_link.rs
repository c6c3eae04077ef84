//! `Offer::check_deep_link` on arbitrary text: never panics, and whatever it accepts stays on
//! the offer's allowed hosts (`shop.example`, `*.shop.example`) over http(s), without userinfo
//! or the characters browsers "repair" into open redirects.
#![no_main]
#![allow(clippy::unwrap_used)]

use libfuzzer_sys::fuzz_target;
use tally_fuzz::offer;
use tally_model::program::DeepLinkError;

fn allowed(host: &str) -> bool {
    host == "shop.example" || (host.ends_with(".shop.example") && host.len() > ".shop.example".len())
}

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    check(raw);
    // Random bytes rarely spell out a scheme, so also try the input as everything after one.
    check(&format!("https://{raw}"));
});

fn check(raw: &str) {
    let Ok(url) = offer().check_deep_link(raw) else {
        return;
    };
    let host = url.host_str().unwrap_or_default();
    assert!(allowed(host), "{raw:?} led to host {host:?} ({url})");
    assert!(matches!(url.scheme(), "http" | "https"), "{raw:?} led to scheme {:?}", url.scheme());
    assert!(url.username().is_empty() && url.password().is_none(), "{raw:?} kept userinfo: {url}");
    let out = url.as_str();
    assert!(!out.contains(['\r', '\n', '\\']), "{raw:?} led to {out:?}");
    assert!(!out.bytes().any(|b| b.is_ascii_control() || b == b' '), "{raw:?} led to {out:?}");

    // The normalised URL is itself an acceptable deep link (percent-encoding non-ASCII can
    // push it past the length limit, which is fine).
    match offer().check_deep_link(out) {
        Ok(again) => assert_eq!(again, url, "{raw:?}: normalising is not idempotent"),
        Err(DeepLinkError::TooLong) => {}
        Err(e) => panic!("{raw:?} was accepted as {out:?}, which is then refused: {e}"),
    }
}
