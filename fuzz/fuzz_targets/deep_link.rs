//! `Offer::check_deep_link` on arbitrary text: never panics, and whatever it accepts stays on
//! the offer's allowed hosts (`shop.example`, `*.shop.example`) over http(s), without userinfo
//! or the characters browsers "repair" into open redirects. The location it leads to once the
//! click's parameters are merged in (`Offer::deep_link_location`, macro values from the input
//! too) keeps the same scheme, host, path and fragment, and holds the click ID.
#![no_main]
#![allow(clippy::unwrap_used)]

use libfuzzer_sys::fuzz_target;
use tally_fuzz::offer;
use tally_model::program::{DeepLinkError, Macro};

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

    // Merged with the click's parameters (a sub ID from the input), the location stays where
    // the deep link pointed and carries the click ID.
    let click_id = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
    let merged = offer().deep_link_location(&url, |m| match m {
        Macro::ClickId => click_id,
        _ => raw,
    });
    let again = url::Url::parse(&merged).unwrap_or_else(|e| panic!("{raw:?}: merged {merged:?} does not parse: {e}"));
    assert_eq!(
        (again.scheme(), again.host_str(), again.path(), again.fragment()),
        (url.scheme(), url.host_str(), url.path(), url.fragment()),
        "{raw:?}: merged into {merged:?}"
    );
    assert!(again.query_pairs().any(|(k, v)| k == "cid" && v == click_id), "{raw:?}: {merged:?} lost the click ID");
    assert!(!merged.bytes().any(|b| b.is_ascii_control() || b == b' ' || b == b'\\'), "{raw:?} led to {merged:?}");

    // The normalised URL is itself an acceptable deep link (percent-encoding non-ASCII can
    // push it past the length limit, which is fine).
    match offer().check_deep_link(out) {
        Ok(again) => assert_eq!(again, url, "{raw:?}: normalising is not idempotent"),
        Err(DeepLinkError::TooLong) => {}
        Err(e) => panic!("{raw:?} was accepted as {out:?}, which is then refused: {e}"),
    }
}
