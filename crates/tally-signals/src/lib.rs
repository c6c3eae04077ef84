//! What Tally's edge makes of a click's request, beyond the link and its query: the
//! signals traffic-quality rules, routing and reports use.
//!
//! - **Country and region** from a MaxMind-format database (GeoIP2 or GeoLite2 Country or
//!   City, or any database of that shape) when one is configured ([`geo`]).
//! - **ASN** from a MaxMind-format ASN database, and **datacenter** networks from a list of
//!   ranges and ASNs ([`networks`]; a default list of hosting ASNs ships built in).
//! - **Device class, OS and browser family** from the user agent, by ordered rules in a
//!   data file ([`agent`]; the default rules ship built in), and the `Sec-CH-UA-Mobile` and
//!   `Sec-CH-UA-Platform` client hints where the browser sends them.
//! - **Bots and unfurlers** by user-agent substrings from a list ([`bots`]; the default
//!   list ships built in, operators add theirs).
//! - **Language**: the primary subtag of the first `Accept-Language` entry.
//!
//! Invariants:
//! - [`Classifier::observe`] allocates nothing and does no I/O: it runs on every click. Its
//!   texts borrow the classifier (the database buffer or the rules).
//! - Loading reads every file once ([`Classifier::load`]) and reports every bad line or file
//!   at once, each named by its config key and line; the caller keeps the old classifier
//!   when a reload fails.
//! - The edge records what this crate answered on each click, so attribution and replay
//!   never call it: a database updated next week does not change last week's ledger.

pub mod agent;
pub mod bots;
pub mod config;
pub mod geo;
pub mod networks;

use std::net::IpAddr;

pub use config::{SignalsConfig, SignalsSection};

/// Everything a click's request is classified by, loaded from the configured files (or
/// the built-in lists alone).
#[derive(Debug)]
pub struct Classifier {
    /// Unique per load: the per-thread user-agent cache belongs to one classifier.
    id: u64,
    geo: Option<geo::GeoDb>,
    asn: Option<geo::AsnDb>,
    datacenters: networks::Networks,
    bots: bots::Bots,
    agents: agent::Rules,
}

/// What a click's request carries that the classifier reads.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The client's address (after the trusted-proxy rule, before any privacy truncation:
    /// a /24 would find the wrong country often enough to matter).
    pub ip: IpAddr,
    pub user_agent: &'a str,
    pub accept_language: &'a str,
    /// `Sec-CH-UA-Mobile`, raw (`?1` or `?0`); empty when absent.
    pub ch_mobile: &'a str,
    /// `Sec-CH-UA-Platform`, raw (`"Android"`); empty when absent.
    pub ch_platform: &'a str,
}

/// What the classifier made of one request. Texts are empty when unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Observed<'a> {
    pub country: &'a str,
    pub region: &'a str,
    /// 0 when unknown.
    pub asn: u32,
    pub device: &'a str,
    pub os: &'a str,
    pub browser: &'a str,
    pub language: Language,
    /// The user agent is on the bot list.
    pub bot: bool,
    /// The address is in a datacenter network, by range or by ASN.
    pub datacenter: bool,
}

/// Why the signals' files could not be loaded: every problem, each naming its config key,
/// file and line.
#[derive(Debug, thiserror::Error)]
#[error("signals: {}", .0.join("; "))]
pub struct LoadError(pub Vec<String>);

impl Classifier {
    /// The built-in lists and rules, no databases: what a click gets with an empty
    /// `[signals]` section.
    pub fn builtin() -> Classifier {
        Classifier {
            id: next_id(),
            geo: None,
            asn: None,
            datacenters: networks::Networks::builtin(),
            bots: bots::Bots::builtin(),
            agents: agent::Rules::builtin(),
        }
    }

    /// Reads every file `config` names (blocking). All problems are reported at once.
    pub fn load(config: &SignalsConfig) -> Result<Classifier, LoadError> {
        let mut problems = Vec::new();
        let geo = config
            .geoip_database
            .as_deref()
            .and_then(|p| geo::GeoDb::open(p).map_err(|e| problems.push(format!("signals.geoip_database: {e}"))).ok());
        let asn = config
            .asn_database
            .as_deref()
            .and_then(|p| geo::AsnDb::open(p).map_err(|e| problems.push(format!("signals.asn_database: {e}"))).ok());
        let datacenters = with_extra(
            config.datacenters_file.as_deref(),
            "signals.datacenters_file",
            &mut problems,
            networks::Networks::builtin,
            networks::Networks::with_file,
        );
        let bots = with_extra(
            config.bots_file.as_deref(),
            "signals.bots_file",
            &mut problems,
            bots::Bots::builtin,
            bots::Bots::with_file,
        );
        let agents = with_extra(
            config.user_agents_file.as_deref(),
            "signals.user_agents_file",
            &mut problems,
            agent::Rules::builtin,
            agent::Rules::with_file,
        );
        if !problems.is_empty() {
            return Err(LoadError(problems));
        }
        Ok(Classifier { id: next_id(), geo, asn, datacenters, bots, agents })
    }

    /// Classifies one request. No allocation, no I/O.
    pub fn observe<'a>(&'a self, req: &Request<'_>) -> Observed<'a> {
        let ip = canonical(req.ip);
        let (country, region) = self.geo.as_ref().map(|g| g.locate(ip)).unwrap_or_default();
        let asn = self.asn.as_ref().map_or(0, |a| a.asn(ip));
        let (matched, bot) = self.user_agent(req.user_agent);
        let agent = self.agents.with_hints(matched, req.ch_mobile, req.ch_platform);
        Observed {
            country,
            region,
            asn,
            device: if bot { "bot" } else { agent.device },
            os: agent.os,
            browser: agent.browser,
            language: Language::of(req.accept_language),
            bot,
            datacenter: self.datacenters.contains(ip, asn),
        }
    }

    /// The rules a user agent takes and whether it is a bot, from this thread's cache when
    /// the same user agent came before: browsers of one build send the same string, so
    /// most clicks skip both automata (about a microsecond on a browser's user agent).
    fn user_agent(&self, ua: &str) -> (agent::Matched, bool) {
        let hash = xxhash_rust::xxh3::xxh3_64(ua.as_bytes());
        let slot = (hash as usize) & (UA_CACHE_SLOTS - 1);
        let hit = UA_CACHE.with(|cache| {
            let cache = cache.borrow();
            match cache.get(slot) {
                Some(Some(e)) if e.owner == self.id && e.hash == hash && *e.ua == *ua => Some((e.matched, e.bot)),
                _ => None,
            }
        });
        if let Some(found) = hit {
            return found;
        }
        let found = (self.agents.matching(ua), self.bots.is_bot(ua));
        if ua.len() <= UA_CACHE_MAX_LEN {
            UA_CACHE.with(|cache| {
                let mut cache = cache.borrow_mut();
                if cache.is_empty() {
                    cache.resize_with(UA_CACHE_SLOTS, || None);
                }
                cache[slot] = Some(CachedAgent { owner: self.id, hash, ua: ua.into(), matched: found.0, bot: found.1 });
            });
        }
        found
    }

    /// When the GeoIP and ASN databases were built (`build_epoch` of their metadata, Unix
    /// seconds), for the ones loaded: a stale one means its updates stopped.
    pub fn databases_built(&self) -> (Option<u64>, Option<u64>) {
        (self.geo.as_ref().map(geo::GeoDb::built), self.asn.as_ref().map(geo::AsnDb::built))
    }

    /// Whether a GeoIP database is loaded.
    pub fn has_geo(&self) -> bool {
        self.geo.is_some()
    }

    /// Whether an ASN database is loaded.
    pub fn has_asn(&self) -> bool {
        self.asn.is_some()
    }
}

/// User agents remembered per thread (direct-mapped by hash: a new one replaces the one in
/// its slot). An edge thread's share of a day's distinct browsers fits; a flood of random
/// user agents only costs each of its clicks the uncached classification.
const UA_CACHE_SLOTS: usize = 4096;
/// Longer user agents are classified every time rather than copied into the cache.
const UA_CACHE_MAX_LEN: usize = 512;

struct CachedAgent {
    owner: u64,
    hash: u64,
    ua: Box<str>,
    matched: agent::Matched,
    bot: bool,
}

thread_local! {
    static UA_CACHE: std::cell::RefCell<Vec<Option<CachedAgent>>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn next_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// An IPv4 address as itself even when it arrived IPv4-mapped (`::ffff:a.b.c.d`, as a
/// dual-stack listener reports it): databases and lists file it under IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// A built-in list with the operator's file `path` (configured as `key`) added, or the
/// built-in list alone when none is configured; a file that cannot be read or parsed adds
/// its problems, each named by `key`.
fn with_extra<T>(
    path: Option<&std::path::Path>,
    key: &str,
    problems: &mut Vec<String>,
    builtin: fn() -> T,
    with_file: fn(&str, &str) -> Result<T, Vec<String>>,
) -> T {
    let Some(path) = path else { return builtin() };
    let parsed = std::fs::read_to_string(path)
        .map_err(|e| vec![format!("cannot read {}: {e}", path.display())])
        .and_then(|text| with_file(&path.display().to_string(), &text));
    parsed.unwrap_or_else(|e| {
        problems.extend(e.into_iter().map(|p| format!("{key}: {p}")));
        builtin()
    })
}

/// A language subtag, lower case, held inline so classifying allocates nothing.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Language {
    bytes: [u8; 8],
    len: u8,
}

impl Language {
    /// The primary subtag of the first entry of an `Accept-Language` value (`en-GB,en;q=0.8`
    /// gives `en`); empty for `*`, an empty header or anything that is not 1 to 8 ASCII
    /// letters. The first entry, not the highest weight: browsers list the user's choice
    /// first and weight the rest below it.
    pub fn of(accept_language: &str) -> Language {
        let first = accept_language.split(',').next().unwrap_or("");
        let tag = first.split(';').next().unwrap_or("").trim();
        let primary = tag.split(['-', '_']).next().unwrap_or("");
        let mut out = Language::default();
        if primary.is_empty() || primary.len() > out.bytes.len() || !primary.bytes().all(|b| b.is_ascii_alphabetic()) {
            return out;
        }
        for (slot, b) in out.bytes.iter_mut().zip(primary.bytes()) {
            *slot = b.to_ascii_lowercase();
        }
        out.len = primary.len() as u8;
        out
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII letters are ever stored.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("")
    }
}

impl std::fmt::Debug for Language {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn language_is_the_first_entrys_primary_subtag() {
        for (header, want) in [
            ("en-GB,en;q=0.9,de;q=0.8", "en"),
            ("de", "de"),
            ("  FR-ca ; q=1", "fr"),
            ("zh_Hant_TW", "zh"),
            ("*", ""),
            ("", ""),
            ("toolongtag-x", ""),
            ("e1", ""),
            ("ü", ""),
            ("x-klingon", "x"),
        ] {
            assert_eq!(Language::of(header).as_str(), want, "{header:?}");
        }
    }

    #[test]
    fn an_ipv4_mapped_address_is_classified_as_ipv4() {
        let mapped: IpAddr = "::ffff:203.0.113.9".parse().unwrap();
        assert_eq!(canonical(mapped), "203.0.113.9".parse::<IpAddr>().unwrap());
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(canonical(v6), v6);
    }

    #[test]
    fn the_builtin_classifier_reads_a_phone_and_a_crawler() {
        let c = Classifier::builtin();
        let req = |ua| Request {
            ip: "192.0.2.1".parse().unwrap(),
            user_agent: ua,
            accept_language: "en-US,en",
            ch_mobile: "",
            ch_platform: "",
        };
        let phone = c.observe(&req("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1"));
        assert_eq!((phone.device, phone.os, phone.browser, phone.bot), ("mobile", "iOS", "Safari", false));
        assert_eq!(phone.language.as_str(), "en");
        assert_eq!((phone.country, phone.region, phone.asn, phone.datacenter), ("", "", 0, false));
        let bot = c.observe(&req("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"));
        assert!(bot.bot);
        assert_eq!(bot.device, "bot");
    }

    /// The per-thread cache belongs to one classifier: a reloaded one with other rules
    /// answers by its own rules for a user agent the old one cached.
    #[test]
    fn a_new_classifier_does_not_answer_from_the_old_ones_cache() {
        let ua = "AcmeKiosk/1.0 (X11; Linux x86_64)";
        let req = Request {
            ip: "192.0.2.1".parse().unwrap(),
            user_agent: ua,
            accept_language: "",
            ch_mobile: "",
            ch_platform: "",
        };
        let old = Classifier::builtin();
        assert_eq!(old.observe(&req).device, "desktop");
        assert_eq!(old.observe(&req).device, "desktop", "from the cache");
        let dir = tempfile::tempdir().unwrap();
        let rules = dir.path().join("agents.txt");
        std::fs::write(&rules, "device kiosk = acmekiosk\n").unwrap();
        let bots = dir.path().join("bots.txt");
        std::fs::write(&bots, "acmekiosk/1\n").unwrap();
        let new = Classifier::load(&SignalsConfig {
            user_agents_file: Some(rules),
            bots_file: Some(bots),
            ..SignalsConfig::default()
        })
        .unwrap();
        let o = new.observe(&req);
        assert!(o.bot);
        assert_eq!(new.agents.classify(ua, "", "").device, "kiosk");
        // Two user agents in one slot take turns; each answer stays its own.
        let other = Request { user_agent: "curl/8.5.0", ..req };
        for _ in 0..3 {
            assert!(new.observe(&other).bot);
            assert_eq!(old.observe(&req).device, "desktop");
        }
    }

    #[test]
    fn load_reports_every_bad_file_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let bad_rules = dir.path().join("agents.txt");
        std::fs::write(&bad_rules, "device phone\n").unwrap();
        let bad_ranges = dir.path().join("dc.txt");
        std::fs::write(&bad_ranges, "300.1.2.0/24\n").unwrap();
        let config = SignalsConfig {
            geoip_database: Some(dir.path().join("missing.mmdb")),
            asn_database: Some(bad_rules.clone()),
            datacenters_file: Some(bad_ranges),
            bots_file: Some(dir.path().join("missing-bots.txt")),
            user_agents_file: Some(bad_rules),
        };
        let e = Classifier::load(&config).unwrap_err();
        let text = e.to_string();
        for key in [
            "signals.geoip_database",
            "signals.asn_database",
            "signals.datacenters_file",
            "signals.bots_file",
            "signals.user_agents_file",
        ] {
            assert!(text.contains(key), "{key} missing from {text}");
        }
        assert!(text.contains("line 1"), "{text}");
    }
}
