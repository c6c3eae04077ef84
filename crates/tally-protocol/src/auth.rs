//! Postback authentication: one of the advertiser's tokens, or an HMAC-SHA256 signature by
//! one of its keys. An advertiser may hold several of each (the program names them, the
//! secrets store holds their values), so a credential is rotated without downtime: add the
//! new one, move the advertiser over, remove the old one.
//!
//! Signature scheme: header `X-Tally-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>…]` where
//! a `v1` is HMAC-SHA256(key, `"{t}." ‖ raw`), and `raw` is the raw query string (GET) or the
//! raw body (POST), exactly as sent. Several `v1` (one per key, as Stripe sends while a key
//! rolls) are allowed; any one matching any key authenticates. `t` must be within the
//! configured max age of the server's clock, which stops replays of captured requests after
//! the window; inside it, the edge dedups by the signature ([`Authenticated::Signature`]).
//! Comparisons are constant-time.

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

/// Which credential authenticated a postback: the name the program gives it, never its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authenticated {
    Token {
        name: String,
    },
    /// A signature by key `name`. `mac` is the matching signature: it covers the time and the
    /// exact bytes, so a second request with it is a replay of the first.
    Signature {
        name: String,
        mac: Vec<u8>,
    },
}

/// Most `v1` signatures one header may carry: one per key being rolled, and a few spare.
const MAX_SIGNATURES: usize = 4;

/// Checks a postback's credentials for `advertiser`, whose credentials must be resolved
/// (unresolved ones never match). `token` is the `token` parameter (or the bearer token);
/// `raw` is what the signature covers.
pub fn authenticate(
    advertiser: &Advertiser,
    headers: &HeaderMap,
    token: Option<&str>,
    raw: &[u8],
    now_secs: u64,
    max_age_secs: u64,
) -> Result<Authenticated, AuthError> {
    let given = Given::read(headers, token, now_secs, max_age_secs)?;
    given.check(advertiser, raw).ok_or(AuthError::Wrong)
}

/// The advertisers among `advertisers` whose credentials the postback carries, for a report
/// that names no offer (only its click): the credential says who reports. Every
/// advertiser's credentials are compared, so the time taken says nothing of whose matched.
/// More than one only when the program gives several advertisers the same secret.
pub fn authenticate_any<'a>(
    advertisers: impl IntoIterator<Item = &'a Advertiser>,
    headers: &HeaderMap,
    token: Option<&str>,
    raw: &[u8],
    now_secs: u64,
    max_age_secs: u64,
) -> Result<Vec<(&'a Advertiser, Authenticated)>, AuthError> {
    let given = Given::read(headers, token, now_secs, max_age_secs)?;
    let found: Vec<_> = advertisers.into_iter().filter_map(|a| given.check(a, raw).map(|auth| (a, auth))).collect();
    if found.is_empty() {
        Err(AuthError::Wrong)
    } else {
        Ok(found)
    }
}

/// The credential a request carries, read once (a well-formed, fresh signature, or a token).
enum Given<'a> {
    Signature { t: u64, macs: Vec<Vec<u8>> },
    Token(&'a str),
}

impl<'a> Given<'a> {
    fn read(
        headers: &'a HeaderMap,
        token: Option<&'a str>,
        now_secs: u64,
        max_age_secs: u64,
    ) -> Result<Given<'a>, AuthError> {
        if let Some(sig) = headers.get(SIGNATURE_HEADER) {
            let (t, macs) = parse_signature(sig.as_bytes()).ok_or(AuthError::Malformed)?;
            if t.abs_diff(now_secs) > max_age_secs {
                return Err(AuthError::Stale);
            }
            return Ok(Given::Signature { t, macs });
        }
        let bearer = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        token.or(bearer).map(Given::Token).ok_or(AuthError::Missing)
    }

    fn check(&self, advertiser: &Advertiser, raw: &[u8]) -> Option<Authenticated> {
        match self {
            Given::Signature { t, macs } => {
                for key in &advertiser.hmac_secrets {
                    let Some(secret) = key.value() else { continue };
                    let Ok(mut m) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else { continue };
                    m.update(t.to_string().as_bytes());
                    m.update(b".");
                    m.update(raw);
                    let expected = m.finalize().into_bytes();
                    if let Some(mac) = macs.iter().find(|mac| bool::from(expected.as_slice().ct_eq(mac))) {
                        return Some(Authenticated::Signature { name: key.name.clone(), mac: mac.clone() });
                    }
                }
                None
            }
            Given::Token(given) => {
                // Every token is compared, matched or not, so the time taken says nothing of which.
                let mut matched = None;
                for c in &advertiser.postback_tokens {
                    if let Some(expected) = c.value() {
                        if bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
                            matched = Some(c.name.clone());
                        }
                    }
                }
                matched.map(|name| Authenticated::Token { name })
            }
        }
    }
}

fn parse_signature(v: &[u8]) -> Option<(u64, Vec<Vec<u8>>)> {
    let s = std::str::from_utf8(v).ok()?;
    let mut t = None;
    let mut macs = Vec::new();
    for part in s.split(',') {
        match part.trim().split_once('=')? {
            ("t", v) => t = v.parse::<u64>().ok(),
            ("v1", v) if macs.len() < MAX_SIGNATURES => macs.push(hex::decode(v).ok()?),
            ("v1", _) => return None,
            _ => {}
        }
    }
    if macs.is_empty() {
        return None;
    }
    Some((t?, macs))
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
    use tally_model::program::Credential;

    fn adv() -> Advertiser {
        Advertiser {
            id: "acme".into(),
            name: String::new(),
            postback_tokens: vec![
                Credential::resolved("t1", "token-0123456789abcdef"),
                Credential::resolved("t2", "token-fedcba9876543210"),
                Credential::named("unresolved"),
            ],
            hmac_secrets: vec![
                Credential::resolved("k1", "secret-0123456789abcdef"),
                Credential::resolved("k2", "secret-fedcba9876543210"),
            ],
            cookie: Default::default(),
        }
    }

    fn token(name: &str) -> Result<Authenticated, AuthError> {
        Ok(Authenticated::Token { name: name.into() })
    }

    fn signed_by(name: &str, header: &str) -> Result<Authenticated, AuthError> {
        let mac = hex::decode(header.rsplit_once("v1=").unwrap().1).unwrap();
        Ok(Authenticated::Signature { name: name.into(), mac })
    }

    fn sig(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(SIGNATURE_HEADER, v.parse().unwrap());
        h
    }

    #[test]
    fn tokens() {
        let none = HeaderMap::new();
        assert_eq!(authenticate(&adv(), &none, Some("token-0123456789abcdef"), b"", 0, 300), token("t1"));
        assert_eq!(authenticate(&adv(), &none, Some("token-fedcba9876543210"), b"", 0, 300), token("t2"));
        assert_eq!(authenticate(&adv(), &none, Some("token-0123456789abcdeX"), b"", 0, 300), Err(AuthError::Wrong));
        assert_eq!(authenticate(&adv(), &none, Some("short"), b"", 0, 300), Err(AuthError::Wrong));
        assert_eq!(authenticate(&adv(), &none, None, b"", 0, 300), Err(AuthError::Missing));
        let mut bearer = HeaderMap::new();
        bearer.insert("authorization", "Bearer token-0123456789abcdef".parse().unwrap());
        assert_eq!(authenticate(&adv(), &bearer, None, b"", 0, 300), token("t1"));
        // An advertiser whose tokens are not resolved (a program read from the log) admits none.
        let mut unresolved = adv();
        unresolved.postback_tokens = vec![Credential::named("t1")];
        assert_eq!(
            authenticate(&unresolved, &none, Some("token-0123456789abcdef"), b"", 0, 300),
            Err(AuthError::Wrong)
        );
    }

    #[test]
    fn signatures() {
        let raw = b"cid=x&offer=o";
        let now = 1_700_000_000;
        let good = sign("secret-0123456789abcdef", now - 10, raw);
        assert_eq!(authenticate(&adv(), &sig(&good), None, raw, now, 300), signed_by("k1", &good));
        let second = sign("secret-fedcba9876543210", now, raw);
        assert_eq!(authenticate(&adv(), &sig(&second), None, raw, now, 300), signed_by("k2", &second));
        // While a key rolls, the sender signs with both; either matching is enough.
        let wrong = sign("another-secret-0123456", now, raw);
        let both = format!("{wrong},v1={}", second.rsplit_once("v1=").unwrap().1);
        assert_eq!(authenticate(&adv(), &sig(&both), None, raw, now, 300), signed_by("k2", &second));
        assert_eq!(authenticate(&adv(), &sig(&good), None, b"cid=x&offer=p", now, 300), Err(AuthError::Wrong));
        let old = sign("secret-0123456789abcdef", now - 301, raw);
        assert_eq!(authenticate(&adv(), &sig(&old), None, raw, now, 300), Err(AuthError::Stale));
        let future = sign("secret-0123456789abcdef", now + 301, raw);
        assert_eq!(authenticate(&adv(), &sig(&future), None, raw, now, 300), Err(AuthError::Stale));
        let wrong_key = sign("another-secret-0123456", now, raw);
        assert_eq!(authenticate(&adv(), &sig(&wrong_key), None, raw, now, 300), Err(AuthError::Wrong));
        let many = format!("t={now}{}", ",v1=00".repeat(MAX_SIGNATURES + 1));
        for bad in ["t=abc,v1=00", "v1=00", "t=1", "t=1,v1=zz", "garbage", many.as_str()] {
            assert_eq!(authenticate(&adv(), &sig(bad), None, raw, now, 300), Err(AuthError::Malformed), "{bad}");
        }
    }

    #[test]
    fn the_credential_finds_its_advertiser() {
        let mut other = adv();
        other.id = "globex".into();
        other.postback_tokens = vec![Credential::resolved("g1", "globex-token-0123456789")];
        other.hmac_secrets = vec![Credential::resolved("gk", "globex-secret-0123456789")];
        let both = [adv(), other];
        let none = HeaderMap::new();
        let found = authenticate_any(&both, &none, Some("globex-token-0123456789"), b"", 0, 300).unwrap();
        assert_eq!(found.iter().map(|(a, _)| a.id.as_str()).collect::<Vec<_>>(), ["globex"]);
        let raw = b"cid=x";
        let now = 1_700_000_000;
        let signed = sign("secret-fedcba9876543210", now, raw);
        let found = authenticate_any(&both, &sig(&signed), None, raw, now, 300).unwrap();
        assert_eq!((found[0].0.id.as_str(), found.len()), ("acme", 1));
        assert_eq!(
            authenticate_any(&both, &none, Some("nobody-0123456789"), b"", 0, 300).unwrap_err(),
            AuthError::Wrong
        );
        assert_eq!(authenticate_any(&both, &none, None, b"", 0, 300).unwrap_err(), AuthError::Missing);
        let stale = sign("secret-fedcba9876543210", now - 400, raw);
        assert_eq!(authenticate_any(&both, &sig(&stale), None, raw, now, 300).unwrap_err(), AuthError::Stale);
        // A secret the program gives two advertisers matches both: the caller must refuse.
        let mut twin = adv();
        twin.id = "acme-eu".into();
        let found = authenticate_any([&both[0], &twin], &none, Some("token-0123456789abcdef"), b"", 0, 300).unwrap();
        assert_eq!(found.len(), 2);
    }
}
