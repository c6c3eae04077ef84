//! Recognising requests that are not a person navigating: prefetches, prerenders and
//! previews, by the headers that say so. They still get the redirect (a preview must show
//! the real page) but are flagged so reports can exclude them. User agents of bots and
//! unfurlers are `tally-signals`' bot list.

use http::{HeaderMap, HeaderName, HeaderValue};

/// True if the request says it is a prefetch or prerender, not a navigation.
pub fn is_prefetch(headers: &HeaderMap) -> bool {
    headers.iter().any(|(name, value)| says_prefetch(name, value))
}

/// True if this one header says the request is a prefetch, prerender or preview. The click
/// handler calls it from its single pass over the headers: four lookups by name hashed four
/// names on every click, for headers that are nearly always absent.
pub fn says_prefetch(name: &HeaderName, value: &HeaderValue) -> bool {
    says_prefetch_raw(name.as_str(), value.as_bytes())
}

/// [`says_prefetch`] on a header as the parser saw it: the name in any case, the value as
/// bytes. The edge's fast path reads headers straight from the request buffer.
pub fn says_prefetch_raw(name: &str, value: &[u8]) -> bool {
    let needles: &[&str] = if name.eq_ignore_ascii_case("purpose") {
        &["prefetch", "preview"]
    } else if name.eq_ignore_ascii_case("sec-purpose") {
        &["prefetch", "prerender"]
    } else if name.eq_ignore_ascii_case("x-purpose") {
        &["preview", "prefetch"]
    } else if name.eq_ignore_ascii_case("x-moz") {
        &["prefetch"]
    } else {
        return false;
    };
    let v = String::from_utf8_lossy(value).to_ascii_lowercase();
    needles.iter().any(|n| v.contains(n))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn prefetches_are_recognised() {
        let mut h = HeaderMap::new();
        assert!(!is_prefetch(&h));
        h.insert("sec-purpose", "prefetch;prerender".parse().unwrap());
        assert!(is_prefetch(&h));
        let mut h = HeaderMap::new();
        h.insert("purpose", "prefetch".parse().unwrap());
        assert!(is_prefetch(&h));
        for (name, value) in [("x-purpose", "Preview"), ("x-moz", "prefetch"), ("Sec-Purpose", "PRERENDER")] {
            let mut h = HeaderMap::new();
            h.insert(HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
            h.insert("user-agent", "Mozilla/5.0".parse().unwrap());
            assert!(is_prefetch(&h), "{name}: {value}");
        }
        // The words count only in those headers.
        let mut h = HeaderMap::new();
        h.insert("x-purposes", "prefetch".parse().unwrap());
        h.insert("referer", "https://a.example/prefetch".parse().unwrap());
        assert!(!is_prefetch(&h));
    }
}
