//! Postback authentication: the advertiser's token, or an HMAC-SHA256 signature.
//!
//! Signature scheme: header `X-Tally-Signature: t=<unix seconds>,v1=<hex>` where `v1` is
//! HMAC-SHA256(advertiser's `hmac_secret`, `"{t}." ‖ raw`), and `raw` is the raw query string
//! (GET) or the raw body (POST), exactly as sent. `t` must be within the configured max age of
//! the server's clock, which stops replays of captured requests. Comparisons are constant-time.

use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use tally_model::program::Advertiser;

pub const SIGNATURE_HEADER: &str = "x-tally-signature";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// No token and no signature: 401.
    Missing,
    /// A signature whose timestamp is too old or in the future: 401.
    Stale,
    /// A malformed signature header: 401.
    Malformed,
    /// Credentials were given and are wrong: 403.
    Wrong,
}

impl AuthError {
    pub fn status(self) -> u16 {
        match self {
            AuthError::Wrong => 403,
            _ => 401,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            AuthError::Missing => "missing credentials: send token= or an X-Tally-Signature header",
            AuthError::Stale => "stale signature: timestamp outside the allowed window",
            AuthError::Malformed => "malformed X-Tally-Signature header",
            AuthError::Wrong => "bad credentials",
        }
    }
}

/// Checks a postback's credentials for `advertiser`. `token` is the `token` parameter (or the
/// bearer token); `raw` is what the signature covers.
pub fn authenticate(
    advertiser: &Advertiser,
    headers: &HeaderMap,
    token: Option<&str>,
    raw: &[u8],
    now_secs: u64,
    max_age_secs: u64,
) -> Result<(), AuthError> {
    if let Some(sig) = headers.get(SIGNATURE_HEADER) {
        let secret = advertiser.hmac_secret.as_deref().ok_or(AuthError::Wrong)?;
        let (t, mac) = parse_signature(sig.as_bytes()).ok_or(AuthError::Malformed)?;
        if t.abs_diff(now_secs) > max_age_secs {
            return Err(AuthError::Stale);
        }
        let mut m = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).map_err(|_| AuthError::Wrong)?;
        m.update(t.to_string().as_bytes());
        m.update(b".");
        m.update(raw);
        return m.verify_slice(&mac).map_err(|_| AuthError::Wrong);
    }
    let bearer =
        headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let given = token.or(bearer).ok_or(AuthError::Missing)?;
    let expected = advertiser.postback_token.as_deref().ok_or(AuthError::Wrong)?;
    if bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
        Ok(())
    } else {
        Err(AuthError::Wrong)
    }
}

fn parse_signature(v: &[u8]) -> Option<(u64, Vec<u8>)> {
    let s = std::str::from_utf8(v).ok()?;
    let mut t = None;
    let mut mac = None;
    for part in s.split(',') {
        match part.trim().split_once('=')? {
            ("t", v) => t = v.parse::<u64>().ok(),
            ("v1", v) => mac = hex::decode(v).ok(),
            _ => {}
        }
    }
    Some((t?, mac?))
}

/// Computes a signature header value; for clients, tests and docs.
pub fn sign(secret: &str, t: u64, raw: &[u8]) -> String {
    let mut m = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => return String::new(), // HMAC accepts keys of any length; unreachable
    };
    m.update(t.to_string().as_bytes());
    m.update(b".");
    m.update(raw);
    format!("t={t},v1={}", hex::encode(m.finalize().into_bytes()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn adv() -> Advertiser {
        Advertiser {
            id: "acme".into(),
            name: String::new(),
            postback_token: Some("token-0123456789abcdef".into()),
            hmac_secret: Some("secret-0123456789abcdef".into()),
        }
    }

    fn sig(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(SIGNATURE_HEADER, v.parse().unwrap());
        h
    }

    #[test]
    fn tokens() {
        let none = HeaderMap::new();
        assert_eq!(authenticate(&adv(), &none, Some("token-0123456789abcdef"), b"", 0, 300), Ok(()));
        assert_eq!(authenticate(&adv(), &none, Some("token-0123456789abcdeX"), b"", 0, 300), Err(AuthError::Wrong));
        assert_eq!(authenticate(&adv(), &none, Some("short"), b"", 0, 300), Err(AuthError::Wrong));
        assert_eq!(authenticate(&adv(), &none, None, b"", 0, 300), Err(AuthError::Missing));
        let mut bearer = HeaderMap::new();
        bearer.insert("authorization", "Bearer token-0123456789abcdef".parse().unwrap());
        assert_eq!(authenticate(&adv(), &bearer, None, b"", 0, 300), Ok(()));
    }

    #[test]
    fn signatures() {
        let raw = b"cid=x&offer=o";
        let now = 1_700_000_000;
        let good = sign("secret-0123456789abcdef", now - 10, raw);
        assert_eq!(authenticate(&adv(), &sig(&good), None, raw, now, 300), Ok(()));
        assert_eq!(authenticate(&adv(), &sig(&good), None, b"cid=x&offer=p", now, 300), Err(AuthError::Wrong));
        let old = sign("secret-0123456789abcdef", now - 301, raw);
        assert_eq!(authenticate(&adv(), &sig(&old), None, raw, now, 300), Err(AuthError::Stale));
        let future = sign("secret-0123456789abcdef", now + 301, raw);
        assert_eq!(authenticate(&adv(), &sig(&future), None, raw, now, 300), Err(AuthError::Stale));
        let wrong_key = sign("another-secret-0123456", now, raw);
        assert_eq!(authenticate(&adv(), &sig(&wrong_key), None, raw, now, 300), Err(AuthError::Wrong));
        for bad in ["t=abc,v1=00", "v1=00", "t=1", "t=1,v1=zz", "garbage"] {
            assert_eq!(authenticate(&adv(), &sig(bad), None, raw, now, 300), Err(AuthError::Malformed), "{bad}");
        }
    }
}
