//! The JavaScript tag, byte for byte the file `assets/t.js`, at two addresses: `/t.js`, the
//! latest tag (cached for a day, revalidated by its content hash), and `/t/{version}.js`,
//! this version's bytes for good (cached for a year, immutable), which is the address to pin
//! with a Subresource Integrity hash: a later Tally serves a new tag under a new version and
//! keeps this one, so a page's `integrity` never stops matching. The hash is a constant of the
//! release (the README prints it; a test holds the two together). The conversions the tag
//! sends arrive at `/t/convert` ([`crate::conversion::tag_conversion`]).

use std::sync::OnceLock;

use base64::Engine;
use bytes::Bytes;
use http::header::{CACHE_CONTROL, ETAG, IF_NONE_MATCH};
use http::{HeaderMap, HeaderValue, Method, Response};
use sha2::{Digest, Sha384};

use crate::respond::{method_not_allowed, with_body, Body};

/// The tag's source, as served.
pub const TAG_JS: &[u8] = include_bytes!("../assets/t.js");

/// The tag's version, in its first line and its API (`tally.version`). Any change to its bytes
/// is a new version, served at a new [`VERSIONED_PATH`], with the old one kept.
pub const TAG_VERSION: u32 = 1;

/// Where this version is served for good.
pub const VERSIONED_PATH: &str = "/t/1.js";

/// `sha384-…`: the `integrity` attribute of a `<script>` that loads this tag.
pub fn integrity() -> &'static str {
    static SRI: OnceLock<String> = OnceLock::new();
    SRI.get_or_init(|| format!("sha384-{}", base64::engine::general_purpose::STANDARD.encode(Sha384::digest(TAG_JS))))
}

/// `GET /t.js` (latest: cacheable for a day, revalidated by its ETag, the content hash, so an
/// upgrade reaches browsers within a day) or [`VERSIONED_PATH`] (`immutable`: these bytes
/// forever). Readable cross-origin: `crossorigin` and SRI need CORS.
pub(crate) fn script(method: &Method, headers: &HeaderMap, versioned: bool) -> Response<Body> {
    if method != Method::GET && method != Method::HEAD {
        return method_not_allowed("GET, HEAD", false);
    }
    let etag = format!("\"{}\"", integrity());
    let fresh = headers
        .get(IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut r = if fresh {
        with_body(304, "application/javascript; charset=utf-8", Bytes::new())
    } else {
        let body = if method == Method::HEAD { Bytes::new() } else { Bytes::from_static(TAG_JS) };
        with_body(200, "application/javascript; charset=utf-8", body)
    };
    let h = r.headers_mut();
    h.insert(
        CACHE_CONTROL,
        HeaderValue::from_static(if versioned {
            "public, max-age=31536000, immutable"
        } else {
            "public, max-age=86400"
        }),
    );
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(ETAG, v);
    }
    h.insert(http::header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    h.insert(http::header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert("cross-origin-resource-policy", HeaderValue::from_static("cross-origin"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tag_names_its_version_and_the_hash_is_sha384() {
        let first = TAG_JS.split(|&b| b == b'\n').next().unwrap_or_default();
        assert!(first.starts_with(format!("/*! tally.js v{TAG_VERSION} ").as_bytes()));
        assert!(std::str::from_utf8(TAG_JS).is_ok_and(|s| s.contains(&format!("version: {TAG_VERSION},"))));
        // 48 bytes of SHA-384 in padded base64.
        assert_eq!(integrity().len(), "sha384-".len() + 64);
        assert_eq!(VERSIONED_PATH, format!("/t/{TAG_VERSION}.js"));
    }
}
