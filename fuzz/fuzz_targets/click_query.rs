//! A click's query string, parsed as the edge does and turned into its redirect: never panics;
//! every kept value is within its limit; the `Location` is a valid header value with no
//! control bytes or spaces, over http(s), without userinfo, on the offer's allowed hosts; and
//! when the template is used, every macro value comes back out of the query unchanged.
#![no_main]
#![allow(clippy::unwrap_used)]

use libfuzzer_sys::fuzz_target;
use tally_fuzz::all_macros_offer;
use tally_protocol::click_query::{ClickQuery, MAX_SOURCE};
use tally_protocol::params::MAX_SUB;
use tally_model::click_flags;

const CID: &str = "01ARZ3NDEKTSV4RRFFQ69G5FAV";

fn allowed(host: &str) -> bool {
    host == "shop.example" || (host.ends_with(".shop.example") && host.len() > ".shop.example".len())
}

fuzz_target!(|data: &[u8]| {
    // hyper hands the handler the query as &str; percent-escapes inside may still decode to
    // any bytes, which form_urlencoded replaces lossily.
    let query = String::from_utf8_lossy(data);
    let q = ClickQuery::parse(&query);
    assert!(q.subs.iter().all(|s| s.len() <= MAX_SUB), "{q:?}");
    assert!(q.source.len() <= MAX_SOURCE, "{q:?}");
    assert_eq!(q.flags & !click_flags::TRUNCATED, 0);

    let offer = all_macros_offer();
    let macros = tally_protocol::click_query::ClickMacros { click_id: CID, ..Default::default() };
    let d = q.destination(offer, "aff1", &macros, None);
    let loc = &d.location;
    assert!(!loc.bytes().any(|b| b.is_ascii_control() || b == b' ' || b == b'\\'), "{query:?} led to {loc:?}");
    assert!(http::HeaderValue::from_str(loc).is_ok(), "{query:?} led to a bad header {loc:?}");
    let url = url::Url::parse(loc).unwrap_or_else(|e| panic!("{query:?} led to {loc:?}: {e}"));
    assert!(matches!(url.scheme(), "http" | "https"), "{query:?} led to {loc:?}");
    assert!(url.username().is_empty() && url.password().is_none(), "{query:?} led to {loc:?}");
    let host = url.host_str().unwrap_or_default();
    assert!(allowed(host), "{query:?} led to host {host:?} ({loc})");

    match (&q.deep_link, d.flags) {
        (None, 0) => {}
        (Some(_), click_flags::DEEP_LINK_USED) => {
            assert_eq!(&d.followed, loc);
            return;
        }
        (Some(_), click_flags::DEEP_LINK_REJECTED) => {}
        (dl, f) => panic!("deep link {dl:?} gave flags {f}"),
    }
    assert!(d.followed.is_empty());
    assert_eq!(host, "shop.example");
    assert_eq!(url.path(), "/all");
    let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    let expected: Vec<(String, String)> = [
        ("cid", CID),
        ("aff", "aff1"),
        ("o", "all"),
        ("s1", &q.subs[0]),
        ("s2", &q.subs[1]),
        ("s3", &q.subs[2]),
        ("s4", &q.subs[3]),
        ("s5", &q.subs[4]),
        ("src", &q.source),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    assert_eq!(pairs, expected, "{query:?} led to {loc:?}");
});
