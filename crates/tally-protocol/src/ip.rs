//! Client IP handling: which address is the client's (`X-Forwarded-For` only from trusted
//! proxies), and what of it is stored (truncated, keyed hash with a daily salt, or full).

use std::net::{IpAddr, Ipv6Addr};

use http::HeaderMap;
use ipnet::IpNet;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpMode {
    /// Keep the /24 of an IPv4 address and the /48 of an IPv6 address.
    Truncate,
    /// A keyed BLAKE3 hash whose key changes every UTC day: clicks of one day can be
    /// grouped by IP, but nothing links days or reveals the address.
    Hash,
    /// The address as received.
    Full,
}

#[derive(Clone)]
pub struct IpPolicy {
    pub mode: IpMode,
    key: [u8; 32],
    trusted: Vec<IpNet>,
}

impl std::fmt::Debug for IpPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpPolicy").field("mode", &self.mode).field("trusted", &self.trusted).finish_non_exhaustive()
    }
}

impl IpPolicy {
    /// `secret` seeds the hash key; empty means a random key per process (hashes then do not
    /// match across restarts).
    pub fn new(mode: IpMode, secret: &str, trusted: Vec<IpNet>) -> IpPolicy {
        let key = if secret.is_empty() {
            rand::random()
        } else {
            blake3::derive_key("tally ip hash key v1", secret.as_bytes())
        };
        IpPolicy { mode, key, trusted }
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|n| n.contains(&ip))
    }

    /// The client's address: the peer, unless the peer is a trusted proxy, in which case the
    /// right-most `X-Forwarded-For` entry that is not itself a trusted proxy. Entries left of
    /// that were written by the client and are not believed.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        self.client_ip_from(peer, headers.get_all("x-forwarded-for").iter().map(|v| v.as_bytes()))
    }

    /// [`IpPolicy::client_ip`] given the `X-Forwarded-For` values in the order they came.
    pub fn client_ip_from<'a>(&self, peer: IpAddr, forwarded_for: impl DoubleEndedIterator<Item = &'a [u8]>) -> IpAddr {
        if !self.is_trusted(peer) {
            return peer;
        }
        let mut client = peer;
        for value in forwarded_for.rev() {
            let Some(s) = crate::headers::header_str(value) else { return client };
            for part in s.rsplit(',') {
                let Ok(ip) = part.trim().parse::<IpAddr>() else { return client };
                client = ip;
                if !self.is_trusted(ip) {
                    return ip;
                }
            }
        }
        client
    }

    /// True if `peer` is a configured proxy, whose `X-Forwarded-For` is believed.
    pub fn trusts(&self, peer: IpAddr) -> bool {
        self.is_trusted(peer)
    }

    /// What gets stored for `ip` at time `now_ms`.
    pub fn render(&self, ip: IpAddr, now_ms: u64) -> String {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        };
        match self.mode {
            IpMode::Full => match ip {
                IpAddr::V4(v4) => format_v4(v4.octets()),
                v6 => v6.to_string(),
            },
            IpMode::Truncate => match ip {
                IpAddr::V4(v4) => {
                    let [a, b, c, _] = v4.octets();
                    format_v4([a, b, c, 0])
                }
                IpAddr::V6(v6) => {
                    let s = v6.segments();
                    Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0).to_string()
                }
            },
            IpMode::Hash => {
                let day = now_ms / 86_400_000;
                let day_key = blake3::keyed_hash(&self.key, &day.to_be_bytes());
                let bytes = match ip {
                    IpAddr::V4(v4) => v4.octets().to_vec(),
                    IpAddr::V6(v6) => v6.octets().to_vec(),
                };
                let h = blake3::keyed_hash(day_key.as_bytes(), &bytes);
                hex::encode(&h.as_bytes()[..16])
            }
        }
    }
}

/// Dotted-quad text of an IPv4 address, as `Ipv4Addr`'s `Display` writes it. Written out
/// because this runs on every click, and the formatting machinery was a tenth of a click's
/// handler time.
fn format_v4(octets: [u8; 4]) -> String {
    let mut s = String::with_capacity(15);
    for (i, o) in octets.into_iter().enumerate() {
        if i > 0 {
            s.push('.');
        }
        if o >= 100 {
            s.push(char::from(b'0' + o / 100));
        }
        if o >= 10 {
            s.push(char::from(b'0' + o / 10 % 10));
        }
        s.push(char::from(b'0' + o % 10));
    }
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn v4_text_matches_display_for_every_octet_value() {
        for o in 0..=255u8 {
            let octets = [o, o.wrapping_add(1), 255 - o, o / 3];
            assert_eq!(format_v4(octets), Ipv4Addr::from(octets).to_string());
        }
    }

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn truncation() {
        let p = IpPolicy::new(IpMode::Truncate, "", vec![]);
        assert_eq!(p.render("203.0.113.77".parse().unwrap(), 0), "203.0.113.0");
        assert_eq!(p.render("2001:db8:abcd:12::1".parse().unwrap(), 0), "2001:db8:abcd::");
        assert_eq!(p.render("::ffff:198.51.100.9".parse().unwrap(), 0), "198.51.100.0");
    }

    #[test]
    fn hashing_is_keyed_and_rotates_daily() {
        let p = IpPolicy::new(IpMode::Hash, "a-secret-of-16-chars", vec![]);
        let ip: IpAddr = "203.0.113.77".parse().unwrap();
        let day1 = p.render(ip, 1_000);
        assert_eq!(day1, p.render(ip, 2_000));
        assert_eq!(day1.len(), 32);
        assert_ne!(day1, p.render(ip, 86_400_000 + 1_000));
        let other = IpPolicy::new(IpMode::Hash, "another-secret-16", vec![]);
        assert_ne!(day1, other.render(ip, 1_000));
        assert!(!day1.contains("203"));
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let p = IpPolicy::new(IpMode::Full, "", vec!["10.0.0.0/8".parse().unwrap()]);
        let untrusted: IpAddr = "198.51.100.1".parse().unwrap();
        let proxy: IpAddr = "10.0.0.5".parse().unwrap();
        assert_eq!(p.client_ip(untrusted, &headers(&["1.2.3.4"])), untrusted);
        assert_eq!(p.client_ip(proxy, &headers(&["1.2.3.4"])).to_string(), "1.2.3.4");
        // The client can prepend anything; only the right-most untrusted hop counts.
        assert_eq!(p.client_ip(proxy, &headers(&["6.6.6.6, 1.2.3.4, 10.0.0.9"])).to_string(), "1.2.3.4");
        assert_eq!(p.client_ip(proxy, &headers(&["6.6.6.6", "1.2.3.4"])).to_string(), "1.2.3.4");
        assert_eq!(p.client_ip(proxy, &headers(&["garbage"])), proxy);
        assert_eq!(p.client_ip(proxy, &headers(&[])), proxy);
    }
}
