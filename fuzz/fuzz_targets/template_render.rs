//! Rendering the offer's destination template with arbitrary macro values: the result is
//! always a URL on the template's host, with no control characters or spaces (it goes into a
//! `Location` header), and the value comes back out of the query string unchanged.
#![no_main]
#![allow(clippy::unwrap_used)]

use libfuzzer_sys::fuzz_target;
use tally_fuzz::offer;

fuzz_target!(|data: &[u8]| {
    let value = String::from_utf8_lossy(data);
    let rendered = offer().destination.render(|_| &value);
    assert!(!rendered.bytes().any(|b| b.is_ascii_control() || b == b' '), "{value:?} rendered to {rendered:?}");

    let url = url::Url::parse(&rendered).unwrap_or_else(|e| panic!("{value:?} rendered to {rendered:?}: {e}"));
    assert_eq!(url.host_str(), Some("shop.example"), "{value:?} rendered to {rendered:?}");
    assert_eq!(url.scheme(), "https");
    assert_eq!(url.path(), "/l");
    assert_eq!(url.fragment(), None, "{value:?} rendered to {rendered:?}");
    // Already normalised: what we send is exactly what a browser will parse.
    assert_eq!(url.as_str(), rendered);
    // One query pair, cid, carrying the value verbatim.
    let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    assert_eq!(pairs, [("cid".to_owned(), value.into_owned())], "rendered {rendered:?}");
});
