//! Request headers as a click reads them, and the `tally_cid` cookie both ways.
//!
//! Pure: the edge's two front ends (the click fast path over `httparse`, and hyper) hand the
//! same `(name, value)` pairs to [`ClickHeaders::scan`], so a click reads the same whichever
//! parser saw it.

use crate::bots;

/// The first-party cookie that carries a click ID from the redirect to later requests.
pub const COOKIE_NAME: &str = "tally_cid";

/// What a click reads from its request headers, found in one pass over them: looking each
/// up by name hashed seven names per click, most of them for headers a click rarely has.
/// Each field is what a lookup would give: the first header of its name.
#[derive(Debug, Default)]
pub struct ClickHeaders<'a> {
    pub user_agent: &'a str,
    pub referrer: &'a str,
    /// The first `tally_cid` cookie, of the first `Cookie` header that has one.
    pub cookie_click_id: Option<&'a str>,
    /// A `Purpose`/`Sec-Purpose` prefetch header was present.
    pub prefetch: bool,
    pub accept_language: &'a str,
    /// `Sec-CH-UA-Mobile` (`?1` on a phone), as sent.
    pub ch_mobile: &'a str,
    /// `Sec-CH-UA-Platform` (`"Android"`), as sent.
    pub ch_platform: &'a str,
}

impl<'a> ClickHeaders<'a> {
    /// Scans `(name, value)` pairs, names in any case: hyper's header map, or the fast path's
    /// parser output.
    pub fn scan(headers: impl Iterator<Item = (&'a str, &'a [u8])>) -> ClickHeaders<'a> {
        let (mut ua, mut referrer, mut language, mut mobile, mut platform) = (None, None, None, None, None);
        let mut h = ClickHeaders::default();
        for (name, value) in headers {
            if name.eq_ignore_ascii_case("user-agent") {
                ua.get_or_insert_with(|| header_str(value).unwrap_or(""));
            } else if name.eq_ignore_ascii_case("referer") {
                referrer.get_or_insert_with(|| header_str(value).unwrap_or(""));
            } else if name.eq_ignore_ascii_case("accept-language") {
                language.get_or_insert_with(|| header_str(value).unwrap_or(""));
            } else if name.eq_ignore_ascii_case("sec-ch-ua-mobile") {
                mobile.get_or_insert_with(|| header_str(value).unwrap_or(""));
            } else if name.eq_ignore_ascii_case("sec-ch-ua-platform") {
                platform.get_or_insert_with(|| header_str(value).unwrap_or(""));
            } else if name.eq_ignore_ascii_case("cookie") {
                if h.cookie_click_id.is_none() {
                    h.cookie_click_id = header_str(value).and_then(cookie_value);
                }
            } else if !h.prefetch {
                h.prefetch = bots::says_prefetch_raw(name, value);
            }
        }
        h.user_agent = ua.unwrap_or("");
        h.referrer = referrer.unwrap_or("");
        h.accept_language = language.unwrap_or("");
        h.ch_mobile = mobile.unwrap_or("");
        h.ch_platform = platform.unwrap_or("");
        h
    }

    /// [`ClickHeaders::scan`] over an `http` header map.
    pub fn of_map(headers: &'a http::HeaderMap) -> ClickHeaders<'a> {
        ClickHeaders::scan(headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())))
    }
}

/// A header value as text, as `HeaderValue::to_str` reads it: visible ASCII and tabs only.
pub fn header_str(value: &[u8]) -> Option<&str> {
    if value.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b)) {
        std::str::from_utf8(value).ok()
    } else {
        None
    }
}

/// True if `value` may be sent as a header value, by `HeaderValue::from_bytes`'s rule: no
/// control characters but tab (so no CR or LF).
pub fn is_header_value(value: &[u8]) -> bool {
    value.iter().all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// The `tally_cid` value in one `Cookie` header.
pub fn cookie_value(header: &str) -> Option<&str> {
    header.split(';').find_map(|kv| {
        let (k, val) = kv.trim().split_once('=')?;
        (k == COOKIE_NAME).then_some(val)
    })
}

/// The first `tally_cid` value among a request's `Cookie` headers.
pub fn cookie_click_id(headers: &http::HeaderMap) -> Option<&str> {
    headers.get_all(http::header::COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(cookie_value)
}

/// The `tally_cid` cookie of a click: it lives as long as the offer's attribution window,
/// with the attributes of the offer's advertiser (`CookiePolicy::attributes`: path,
/// `HttpOnly`, `SameSite`, a `Domain` if set). Built by hand rather than with `format!`, which
/// took a twentieth of a click's handler time.
pub fn click_cookie(cid: &str, window_days: u32, attributes: &str, secure: bool) -> String {
    const SECURE: &str = "; Secure";
    let max_age = u64::from(window_days) * 86_400;
    let mut digits = itoa::Buffer::new();
    let max_age = digits.format(max_age);
    // Exactly as long as the value: `Bytes` takes a full `String` as it is, where spare
    // room would cost it an allocation of its own (see the edge's `redirect`).
    let len = COOKIE_NAME.len() + 1 + cid.len() + "; Max-Age=".len() + max_age.len() + attributes.len();
    let mut c = String::with_capacity(len + if secure { SECURE.len() } else { 0 });
    c.push_str(COOKIE_NAME);
    c.push('=');
    c.push_str(cid);
    c.push_str("; Max-Age=");
    c.push_str(max_age);
    c.push_str(attributes);
    if secure {
        c.push_str(SECURE);
    }
    c
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use http::HeaderValue;

    use super::*;

    const CID: &str = "01ARZ3NDEKTSV4RRFFQ69G5FAV";

    #[test]
    fn the_click_cookie_is_exactly_as_long_as_its_text() {
        let lax = tally_model::program::CookiePolicy::default();
        let c = click_cookie(CID, 30, &lax.attributes, false);
        assert_eq!(c, format!("tally_cid={CID}; Max-Age=2592000; Path=/; HttpOnly; SameSite=Lax"));
        assert_eq!(c.len(), c.capacity());
        let c = click_cookie(CID, 0, &lax.attributes, true);
        assert_eq!(c, format!("tally_cid={CID}; Max-Age=0; Path=/; HttpOnly; SameSite=Lax; Secure"));
        assert_eq!(c.len(), c.capacity());
    }

    fn headers(pairs: &[(&str, &[u8])]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (name, value) in pairs {
            h.append(http::HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_bytes(value).unwrap());
        }
        h
    }

    /// One pass finds what the lookups by name found: the first header of each name.
    #[test]
    fn the_header_scan_takes_the_first_of_each_and_the_first_click_cookie() {
        let with_cid = format!("x=1; tally_cid={CID}");
        let h = headers(&[
            ("user-agent", b"first"),
            ("cookie", b"a=b; other=1"),
            ("referer", b"https://r.example/"),
            ("user-agent", b"second"),
            ("cookie", with_cid.as_bytes()),
            ("cookie", b"tally_cid=later"),
            ("referer", b"https://later.example/"),
            ("Accept-Language", b"en-GB,en;q=0.8"),
            ("accept-language", b"de"),
            ("Sec-CH-UA-Mobile", b"?1"),
            ("sec-ch-ua-platform", b"\"Android\""),
            ("sec-ch-ua-platform", b"\"Windows\""),
        ]);
        let s = ClickHeaders::of_map(&h);
        assert_eq!(s.user_agent, "first");
        assert_eq!(s.referrer, "https://r.example/");
        assert_eq!((s.accept_language, s.ch_mobile, s.ch_platform), ("en-GB,en;q=0.8", "?1", "\"Android\""));
        assert_eq!(s.cookie_click_id, Some(CID));
        assert_eq!(cookie_click_id(&h), Some(CID));
        assert!(!s.prefetch);

        let h = headers(&[("accept", b"*/*"), ("sec-purpose", b"prefetch")]);
        let s = ClickHeaders::of_map(&h);
        assert!(s.prefetch);
        assert_eq!((s.user_agent, s.referrer, s.cookie_click_id), ("", "", None));
        assert_eq!((s.accept_language, s.ch_mobile, s.ch_platform), ("", "", ""));
    }

    /// A first value that is not text reads as empty, as `to_str` on a lookup gave; it does
    /// not fall through to a later header of the same name.
    #[test]
    fn a_user_agent_that_is_not_text_reads_as_empty() {
        let h = headers(&[("user-agent", b"caf\xe9"), ("user-agent", b"ok")]);
        let s = ClickHeaders::of_map(&h);
        assert_eq!(s.user_agent, "");
    }

    #[test]
    fn header_values_with_line_breaks_are_refused() {
        assert!(is_header_value(b"https://a.example/\tx"));
        assert!(!is_header_value(b"a\r\nSet-Cookie: x"));
        assert!(!is_header_value(b"a\x7f"));
    }
}
