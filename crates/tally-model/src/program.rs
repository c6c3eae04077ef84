//! The program: advertisers, affiliates, offers (with goals and payouts) and links, loaded
//! from a TOML file.
//!
//! Loading is parse-all-then-fail: [`Program::from_toml`] reports every problem it finds in
//! one [`ProgramError`], so an operator fixes a file in one pass. The validated [`Program`] is
//! immutable; the edge swaps a whole new one in on reload.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::Deserialize;
use thiserror::Error;

use crate::delivery::PostbackTemplate;
#[cfg(test)]
use crate::managed::TokenSpec;
use crate::managed::{AffiliateSpec, CouponSpec, Edit, GroupSpec, LinkSpec, Managed, PayoutSpec, TermsSpec};
use crate::money::{parse_minor, Currency};
use crate::shards::Shards;

/// Default attribution window when an offer sets none.
pub const DEFAULT_WINDOW_DAYS: u32 = 30;
/// Longest accepted ID, link code or host pattern.
pub const MAX_ID_LEN: usize = 64;

/// Everything but RFC 3986 unreserved characters is encoded, so a macro value can never end
/// a query parameter, start a fragment, or smuggle a CR/LF into the `Location` header.
const MACRO_VALUE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

#[derive(Debug, Error)]
pub enum ProgramError {
    #[error("program is not valid TOML: {0}")]
    Syntax(String),
    #[error("program has {} problem(s):\n  {}", .0.len(), .0.join("\n  "))]
    Invalid(Vec<String>),
}

impl ProgramError {
    /// Every problem, one line each.
    pub fn problems(&self) -> Vec<String> {
        match self {
            ProgramError::Syntax(s) => vec![s.clone()],
            ProgramError::Invalid(v) => v.clone(),
        }
    }
}

// ---- the file as written -------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProgram {
    /// The calendar of daily caps, monthly tiers and milestones, and stats days.
    #[serde(default)]
    time_zone: Option<String>,
    #[serde(default)]
    advertisers: Vec<RawAdvertiser>,
    #[serde(default)]
    groups: Vec<GroupSpec>,
    #[serde(default)]
    affiliates: Vec<AffiliateSpec>,
    #[serde(default)]
    offers: Vec<RawOffer>,
    #[serde(default)]
    links: Vec<LinkSpec>,
    #[serde(default)]
    coupons: Vec<CouponSpec>,
    /// The smallest balance a payout run pays, per currency (`{ USD = "50.00" }`); a group's
    /// own minimum replaces it for its affiliates.
    #[serde(default)]
    payout_minimum: BTreeMap<String, String>,
    /// JSON webhooks to the merchant's (or anyone's) systems.
    #[serde(default)]
    webhooks: Vec<RawWebhook>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    id: String,
    url: String,
    /// The name of the signing secret in the secrets store.
    secret: String,
    /// Default: every event.
    #[serde(default)]
    events: Vec<String>,
}

/// A JSON webhook: `POST url`, signed in the Standard Webhooks format with the named secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    pub id: String,
    pub url: String,
    /// The name of its signing secret in the secrets store (resolved by the dispatcher).
    pub secret: String,
    pub events: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdvertiser {
    id: String,
    #[serde(default)]
    name: String,
    /// Names of tokens in the secrets store; any one authenticates.
    #[serde(default)]
    postback_tokens: Vec<String>,
    /// Names of HMAC keys in the secrets store; a signature by any one authenticates.
    #[serde(default)]
    hmac_secrets: Vec<String>,
    /// A credential written inline, as before secrets were named: still read, so logs
    /// holding such programs replay, but never used, and refused where a program is served
    /// ([`Program::inline_credentials`]).
    #[serde(default)]
    postback_token: Option<String>,
    #[serde(default)]
    hmac_secret: Option<String>,
    /// `Domain` of the `tally_cid` cookie on this advertiser's clicks: the merchant's site,
    /// when Tally answers on a subdomain of it (`track.shop.example`), so the cookie is the
    /// shop's own (first-party) and its pages and servers see it.
    #[serde(default)]
    cookie_domain: Option<String>,
    /// `lax` (default), `strict` or `none` (needs `cookie_secure = true`).
    #[serde(default)]
    cookie_same_site: Option<String>,
    /// `Secure` on the cookie; default: the server's `privacy.cookie_secure`.
    #[serde(default)]
    cookie_secure: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOffer {
    id: String,
    advertiser: String,
    destination: String,
    #[serde(default)]
    allowed_hosts: Vec<String>,
    /// Query parameters merged into a followed deep link; `None`: the destination's.
    #[serde(default)]
    deep_link_params: Option<BTreeMap<String, String>>,
    /// `accept` (default), `pending_review` or `postback_only` ([`BrowserPolicy`]).
    #[serde(default)]
    browser_reports: Option<String>,
    /// Largest sale amount a browser report may claim, in the offer's currency.
    #[serde(default)]
    max_browser_amount: Option<String>,
    /// Browser reports without a transaction ID are not paid.
    #[serde(default)]
    require_txid: Option<bool>,
    currency: String,
    #[serde(default)]
    window_days: Option<u32>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    goals: Vec<RawGoal>,
    /// The click's redirect status: 302 (default), 307, 301 or 308.
    #[serde(default)]
    redirect: Option<u16>,
    /// Incoming query parameters passed on to the destination: `"all"`, or names, a
    /// trailing `*` for a prefix (`["utm_*", "gclid"]`).
    #[serde(default)]
    pass_query: Option<RawPassQuery>,
    /// Routing rules, tried in order ([`crate::routing`]).
    #[serde(default)]
    routes: Vec<crate::routing::RawRoute>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawPassQuery {
    All(String),
    Names(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGoal {
    id: String,
    payout: PayoutSpec,
    #[serde(default)]
    hold_days: u32,
    #[serde(default)]
    daily_cap: Option<u32>,
    #[serde(default)]
    affiliate_daily_cap: Option<u32>,
    #[serde(default)]
    overrides: Vec<RawOverride>,
    #[serde(default)]
    milestones: Vec<RawMilestone>,
    /// `accept` (default), `pending_review` or `postback_only` ([`BrowserPolicy`]).
    #[serde(default)]
    browser_reports: Option<String>,
    /// Largest sale amount a browser report may claim, in the offer's currency.
    #[serde(default)]
    max_browser_amount: Option<String>,
    /// Browser reports without a transaction ID are not paid.
    #[serde(default)]
    require_txid: Option<bool>,
    /// Pays on a referred customer's later purchases for this many months ([`Recurring`]).
    #[serde(default)]
    recurring_months: Option<u32>,
    /// Pays on a referred customer's later purchases for as long as the program runs.
    #[serde(default)]
    lifetime: bool,
}

/// The browser policy keys, as an offer (the default of its goals) or a goal writes them.
struct RawBrowserPolicy<'a> {
    browser_reports: Option<&'a str>,
    max_browser_amount: Option<&'a str>,
    require_txid: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOverride {
    affiliate: String,
    #[serde(default)]
    payout: Option<PayoutSpec>,
    #[serde(default)]
    daily_cap: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMilestone {
    count: u32,
    bonus: String,
}

// ---- the validated program -----------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Program {
    /// BLAKE3 of the source text, hex; with managed entities, of the source's digest and
    /// theirs ([`Program::compose`]).
    pub digest: String,
    /// BLAKE3 of the source text.
    source_digest: [u8; 32],
    /// The program file's text (the base) this program was composed on, kept so it can be
    /// logged verbatim.
    pub source: String,
    pub advertisers: BTreeMap<String, Advertiser>,
    pub affiliates: Shards<Affiliate>,
    pub groups: BTreeMap<String, Group>,
    pub offers: BTreeMap<String, Arc<Offer>>,
    links: Shards<Link>,
    /// Keyed by the code in ASCII upper case: shoppers type coupons in any case.
    coupons: Shards<Coupon>,
    /// Affiliates' API tokens: the token's hash (hex) → the affiliate's ID.
    tokens: Shards<String>,
    /// Where the source writes a credential inline (`advertisers[acme].postback_token`).
    inline_credentials: Vec<String>,
    /// The calendar its days and months are counted in: `time_zone`, UTC by default.
    pub calendar: crate::time::Calendar,
    /// The entities the admin API put on top of the source ([`crate::managed`]).
    pub managed: Arc<Managed>,
    /// `payout_minimum`: the smallest balance a payout run pays, minor units by currency.
    pub payout_minimum: BTreeMap<Currency, i64>,
    /// `[[webhooks]]`, in the file's order.
    pub webhooks: Vec<Webhook>,
}

#[derive(Debug, Clone)]
pub struct Advertiser {
    pub id: String,
    pub name: String,
    /// Tokens a postback may present (`token=` or a bearer token); any one authenticates.
    pub postback_tokens: Vec<Credential>,
    /// Keys a postback may be signed with; a signature by any one authenticates.
    pub hmac_secrets: Vec<Credential>,
    /// How the `tally_cid` cookie of this advertiser's clicks is set.
    pub cookie: CookiePolicy,
}

/// The attributes of the `tally_cid` cookie an advertiser's clicks set, written out once at
/// load so a click only appends them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookiePolicy {
    /// `; Path=/; HttpOnly; SameSite=…` and `; Domain=…` if set.
    pub attributes: Arc<str>,
    /// `Secure`, if the program says; `None`: the server's setting.
    pub secure: Option<bool>,
}

impl Default for CookiePolicy {
    fn default() -> CookiePolicy {
        CookiePolicy { attributes: Arc::from("; Path=/; HttpOnly; SameSite=Lax"), secure: None }
    }
}

impl CookiePolicy {
    /// From an advertiser's `cookie_domain`, `cookie_same_site`, `cookie_secure`; the error
    /// names the key.
    pub fn parse(domain: Option<&str>, same_site: Option<&str>, secure: Option<bool>) -> Result<CookiePolicy, String> {
        let same_site = match same_site.map(str::to_ascii_lowercase).as_deref() {
            None | Some("lax") => "Lax",
            Some("strict") => "Strict",
            Some("none") if secure == Some(true) => "None",
            Some("none") => {
                return Err("cookie_same_site: \"none\" needs cookie_secure = true (browsers drop it otherwise)".into())
            }
            Some(other) => return Err(format!("cookie_same_site: expected lax, strict or none, got \"{other}\"")),
        };
        let mut attributes = format!("; Path=/; HttpOnly; SameSite={same_site}");
        if let Some(d) = domain {
            let d = d.strip_prefix('.').unwrap_or(d);
            match HostPattern::parse(d) {
                Ok(HostPattern::Exact(host)) if host.contains('.') => {
                    attributes.push_str("; Domain=");
                    attributes.push_str(&host);
                }
                _ => {
                    return Err(format!(
                        "cookie_domain: \"{d}\" is not a domain with a dot (the merchant's site, e.g. shop.example)"
                    ))
                }
            }
        }
        Ok(CookiePolicy { attributes: Arc::from(attributes), secure })
    }
}

/// A credential as the program names it. The program (which the log records verbatim) holds
/// only the name; the value comes from the secrets store when a server loads the program
/// ([`Program::resolve_credentials`]), and a program read back from the log has none.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub name: String,
    value: Option<String>,
}

impl Credential {
    pub fn named(name: &str) -> Credential {
        Credential { name: name.to_owned(), value: None }
    }

    /// A credential with its value, as the secrets store resolves it.
    pub fn resolved(name: &str, value: &str) -> Credential {
        Credential { name: name.to_owned(), value: Some(value.to_owned()) }
    }

    /// The secret, once resolved.
    pub fn value(&self) -> Option<&str> {
        self.value.as_deref()
    }
}

// Secrets stay out of logs and panics.
impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value = if self.value.is_some() { "<redacted>" } else { "<unresolved>" };
        write!(f, "Credential({}: {value})", self.name)
    }
}

#[derive(Debug, Clone)]
pub struct Affiliate {
    pub id: String,
    pub name: String,
    /// The group whose terms apply where the affiliate has none of its own.
    pub group: Option<String>,
    pub active: bool,
    pub terms: Vec<Terms>,
    /// Its `postback_url`, parsed.
    pub postback: Option<Arc<PostbackTemplate>>,
    /// As written (in the file or through the API).
    pub spec: AffiliateSpec,
}

/// Affiliates sharing terms.
#[derive(Debug, Clone)]
pub struct Group {
    pub id: String,
    pub name: String,
    pub terms: Vec<Terms>,
    /// The group's `payout_minimum`, replacing the program's for its affiliates.
    pub payout_minimum: BTreeMap<Currency, i64>,
    /// The group's `postback_url`, for its affiliates that have none of their own.
    pub postback: Option<Arc<PostbackTemplate>>,
    /// As written (in the file or through the API).
    pub spec: GroupSpec,
}

/// Terms of an affiliate or a group for one offer: for one goal, or (`goal` `None`) all of
/// the offer's goals. Each field set replaces the goal's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terms {
    pub offer: String,
    pub goal: Option<String>,
    pub payout: Option<Payout>,
    pub daily_cap: Option<u32>,
    pub hold_days: Option<u32>,
}

impl Terms {
    /// How closely these terms fit `offer`/`goal`: 2 for the goal itself, 1 for every goal
    /// of the offer, 0 not at all.
    fn fit(&self, offer: &str, goal: &str) -> u8 {
        match &self.goal {
            _ if self.offer != offer => 0,
            Some(g) if g == goal => 2,
            Some(_) => 0,
            None => 1,
        }
    }
}

/// Whose terms set a payout: the goal's own, an affiliate's override, or its group's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TermsFrom<'a> {
    Goal,
    Affiliate(&'a str),
    Group(&'a str),
}

/// The terms one affiliate gets on one goal, each field from the most specific place that
/// sets it: the goal's `overrides` for the affiliate, the affiliate's terms (for the goal,
/// then for the offer), its group's (the same), then the goal.
#[derive(Debug, Clone, Copy)]
pub struct EffectiveTerms<'a> {
    pub payout: &'a Payout,
    pub payout_from: TermsFrom<'a>,
    /// The affiliate's daily cap on the goal.
    pub daily_cap: Option<u32>,
    pub hold_days: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttributionModel {
    LastClick,
    FirstClick,
}

#[derive(Debug, Clone)]
pub struct Offer {
    pub id: String,
    pub advertiser: String,
    pub destination: Template,
    pub allowed_hosts: Vec<HostPattern>,
    /// Parameters merged into the query of a followed deep link, so the merchant's page gets
    /// the click ID there too (`deep_link_params`; by default the destination's parameters
    /// that carry a macro, e.g. `cid={click_id}`).
    pub deep_link_params: Vec<QueryParam>,
    pub currency: Currency,
    pub window_days: u32,
    pub model: AttributionModel,
    /// Never empty; the first goal is the default for reports that name none.
    pub goals: Vec<Goal>,
    /// The advertiser's cookie policy, copied here so a click needs no advertiser lookup.
    pub cookie: CookiePolicy,
    /// The status of a click's redirect (`redirect`).
    pub redirect: Redirect,
    /// Which of a click's query parameters go on to the destination (`pass_query`).
    pub pass_query: PassQuery,
    /// Routing rules (`[[offers.routes]]`): the first that holds chooses the destination;
    /// none holding, `destination` does.
    pub routes: Vec<crate::routing::Route>,
    /// Whether a rule depends on the click's local time (worked out once, off the click path).
    pub routes_use_time: bool,
}

/// Which of a click's own query parameters the redirect passes on (`pass_query`): ad
/// platforms' click IDs (`gclid`, `fbclid`) and campaign tags (`utm_*`) the merchant's
/// analytics read. Tally's own parameters (sub IDs, `src`, `url`) are never passed, nor a
/// parameter the destination already has.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PassQuery {
    #[default]
    None,
    All,
    /// Exact names, and prefixes (`utm_` from `utm_*`).
    Names {
        exact: Vec<String>,
        prefixes: Vec<String>,
    },
}

impl PassQuery {
    /// Whether a parameter of this name is passed on.
    pub fn passes(&self, name: &str) -> bool {
        match self {
            PassQuery::None => false,
            PassQuery::All => true,
            PassQuery::Names { exact, prefixes } => {
                exact.iter().any(|n| n == name) || prefixes.iter().any(|p| name.starts_with(p.as_str()))
            }
        }
    }

    fn parse(raw: RawPassQuery, at: &str, problems: &mut Vec<String>) -> PassQuery {
        match raw {
            RawPassQuery::All(s) if s == "all" => PassQuery::All,
            RawPassQuery::All(s) => {
                problems.push(format!("{at}.pass_query: \"{s}\" is not \"all\" or a list of names"));
                PassQuery::None
            }
            RawPassQuery::Names(names) => {
                let (mut exact, mut prefixes) = (Vec::new(), Vec::new());
                for n in names {
                    let (name, prefix) = n.strip_suffix('*').map_or((n.as_str(), false), |p| (p, true));
                    let ok = !name.is_empty()
                        && name.len() <= 64
                        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
                    if !ok {
                        problems.push(format!(
                            "{at}.pass_query: \"{n}\" is not a parameter name (letters, digits, _ - . and an optional trailing *)"
                        ));
                    } else if prefix {
                        prefixes.push(name.to_owned());
                    } else {
                        exact.push(name.to_owned());
                    }
                }
                PassQuery::Names { exact, prefixes }
            }
        }
    }
}

/// The status a click's redirect answers with. 302 by default: every click comes back to
/// the tracker. 301 and 308 say the link moved for good, which browsers and proxies may
/// remember (Tally sends `Cache-Control: no-store`, but not every cache honours it on a
/// permanent redirect), so a repeat click can skip Tally and go uncounted: only where the
/// user asks for it (search engines pass link equity through them). 307 is 302 that keeps
/// the method, for links that are posted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Redirect {
    #[default]
    Found,
    TemporaryRedirect,
    MovedPermanently,
    PermanentRedirect,
}

impl Redirect {
    pub fn from_code(code: u16) -> Option<Redirect> {
        Some(match code {
            302 => Redirect::Found,
            307 => Redirect::TemporaryRedirect,
            301 => Redirect::MovedPermanently,
            308 => Redirect::PermanentRedirect,
            _ => return None,
        })
    }

    pub fn code(self) -> u16 {
        match self {
            Redirect::Found => 302,
            Redirect::TemporaryRedirect => 307,
            Redirect::MovedPermanently => 301,
            Redirect::PermanentRedirect => 308,
        }
    }

    /// The status line's code and reason, as HTTP/1.1 writes them (`302 Found`).
    pub fn status_text(self) -> &'static str {
        match self {
            Redirect::Found => "302 Found",
            Redirect::TemporaryRedirect => "307 Temporary Redirect",
            Redirect::MovedPermanently => "301 Moved Permanently",
            Redirect::PermanentRedirect => "308 Permanent Redirect",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Goal {
    pub id: String,
    pub payout: Payout,
    pub hold_days: u32,
    /// Most conversions credited per UTC day for this goal, all affiliates together.
    pub daily_cap: Option<u32>,
    /// Most conversions credited per UTC day for this goal to any one affiliate.
    pub affiliate_daily_cap: Option<u32>,
    /// Per-affiliate payout and cap, keyed by affiliate ID.
    pub overrides: BTreeMap<String, GoalOverride>,
    /// Bonuses for reaching a count of credited conversions in a calendar month, ascending.
    pub milestones: Vec<Milestone>,
    /// What a report from a browser (pixel, tag) may do for this goal.
    pub browser: BrowserPolicy,
    /// Whether a conversion of a customer some affiliate referred earlier pays that
    /// affiliate, with or without a click or coupon of its own.
    pub recurring: Recurring,
}

/// Recurring and lifetime commissions: the first credited conversion of a customer (a
/// conversion that carries a customer ID) binds the customer to the affiliate it credited,
/// for the offer. A later conversion of that customer, of a goal with recurring terms, pays
/// the bound affiliate while the binding is in force, whatever click or coupon it names
/// (the referrer keeps the customer); after that, or for a goal without recurring terms,
/// it is attributed by its own click or coupon like any other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Recurring {
    #[default]
    Off,
    /// For this many calendar months from the binding conversion (`recurring_months`).
    Months(u32),
    /// For as long as the program runs (`lifetime = true`).
    Lifetime,
}

impl Recurring {
    /// Whether a binding made at `bound_ms` still holds at `ts_ms`, in `calendar`'s days:
    /// for `Months(n)`, up to (not including) the same day of the month `n` months later,
    /// or that month's last day when it is shorter.
    pub fn holds(self, calendar: &crate::time::Calendar, bound_ms: u64, ts_ms: u64) -> bool {
        match self {
            Recurring::Off => false,
            Recurring::Lifetime => true,
            Recurring::Months(n) => calendar.day_of(ts_ms) < crate::time::add_months(calendar.day_of(bound_ms), n),
        }
    }

    pub fn describe(self) -> String {
        match self {
            Recurring::Off => "none".into(),
            Recurring::Lifetime => "lifetime".into(),
            Recurring::Months(n) => format!("{n} months"),
        }
    }
}

/// How far a goal trusts reports from browsers (the pixel and the tag): anyone who holds a
/// click ID can send one, with any amount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BrowserPolicy {
    pub reports: BrowserReports,
    /// Browser reports claiming a larger sale amount (minor units) are not paid.
    pub max_amount: Option<i64>,
    /// Browser reports without a transaction ID are not paid (a reloaded page cannot pay twice).
    pub require_txid: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BrowserReports {
    /// Credited as a postback is.
    #[default]
    Accept,
    /// Credited, but `pending` until the merchant's server confirms the transaction with an
    /// `approved` postback.
    PendingReview,
    /// Recorded, never paid: only postbacks count.
    PostbackOnly,
}

impl BrowserReports {
    pub fn as_str(self) -> &'static str {
        match self {
            BrowserReports::Accept => "accept",
            BrowserReports::PendingReview => "pending_review",
            BrowserReports::PostbackOnly => "postback_only",
        }
    }
}

impl RawBrowserPolicy<'_> {
    /// This policy's keys over `base` (the offer's, for a goal); problems are named at `at`.
    fn resolve(
        &self,
        problems: &mut Vec<String>,
        at: &str,
        currency: Option<Currency>,
        base: BrowserPolicy,
    ) -> BrowserPolicy {
        let mut p = base;
        match self.browser_reports {
            None => {}
            Some("accept") => p.reports = BrowserReports::Accept,
            Some("pending_review") => p.reports = BrowserReports::PendingReview,
            Some("postback_only") => p.reports = BrowserReports::PostbackOnly,
            Some(other) => problems.push(format!(
                "{at}.browser_reports: expected accept, pending_review or postback_only, got \"{other}\""
            )),
        }
        if let Some(max) = self.max_browser_amount {
            match currency.map(|c| parse_minor(max, c, false)) {
                Some(Ok(m)) => p.max_amount = Some(m),
                Some(Err(e)) => problems.push(format!("{at}.max_browser_amount: {e}")),
                None => {}
            }
        }
        if let Some(r) = self.require_txid {
            p.require_txid = r;
        }
        p
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payout {
    /// A fixed amount in minor units of the offer's currency (CPA / CPL).
    Fixed { amount: i64 },
    /// A share of the sale amount in basis points (1/100 of a percent).
    RevShare { bps: u32 },
    /// A rate chosen by the conversion's rank among the affiliate's credited conversions for
    /// the goal in its calendar month: the tier with the largest `from` not above the rank.
    /// Sorted by `from`; the first tier starts at 1.
    Tiered { tiers: Vec<Tier> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tier {
    /// The first monthly rank (1-based) this tier applies to.
    pub from: u32,
    pub rate: Rate,
}

/// One payout rate: what a tier pays, or what a flat payout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rate {
    Fixed { amount: i64 },
    RevShare { bps: u32 },
}

impl Payout {
    /// The rate for the `rank`-th credited conversion of the month (1-based), and the tier
    /// number (1-based) when tiered.
    pub fn rate_for(&self, rank: u32) -> (Rate, Option<usize>) {
        match self {
            Payout::Fixed { amount } => (Rate::Fixed { amount: *amount }, None),
            Payout::RevShare { bps } => (Rate::RevShare { bps: *bps }, None),
            Payout::Tiered { tiers } => {
                let i = tiers.iter().rposition(|t| t.from <= rank).unwrap_or(0);
                match tiers.get(i) {
                    Some(t) => (t.rate, Some(i + 1)),
                    None => (Rate::Fixed { amount: 0 }, None),
                }
            }
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct GoalOverride {
    pub payout: Option<Payout>,
    pub daily_cap: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Milestone {
    /// Credited conversions in the calendar month that earn the bonus.
    pub count: u32,
    /// Minor units of the offer's currency.
    pub bonus: i64,
}

/// A coupon code that credits an affiliate with no click.
#[derive(Debug, Clone)]
pub struct Coupon {
    pub code: String,
    pub offer: String,
    pub affiliate: String,
    /// As set on the coupon.
    pub active: bool,
    /// It credits: it and its affiliate are active.
    pub enabled: bool,
}

#[derive(Debug, Clone)]
pub struct Link {
    pub code: String,
    pub offer: Arc<Offer>,
    pub affiliate: String,
    /// As set on the link.
    pub active: bool,
    /// It redirects: it and its affiliate are active (worked out once, off the click path).
    pub enabled: bool,
    /// Its `postback_url` as written; empty: none.
    pub postback_url: String,
    /// Its `postback_url`, parsed: before the affiliate's for commissions of its clicks.
    pub postback: Option<Arc<PostbackTemplate>>,
}

impl Program {
    /// Parses and validates a program file, reporting every problem at once.
    pub fn from_toml(source: &str) -> Result<Program, ProgramError> {
        Program::compose(source, Arc::new(Managed::default()))
    }

    /// The program file `source` with the `managed` entities on top, each replacing the
    /// file's entity with the same ID or code, validated together. Without managed entities
    /// the digest is the source's own; with them, BLAKE3 over both digests, so the same
    /// file and entities always give the same digest.
    pub fn compose(source: &str, managed: Arc<Managed>) -> Result<Program, ProgramError> {
        let mut raw: RawProgram =
            toml::from_str(source).map_err(|e| ProgramError::Syntax(e.to_string().trim().to_owned()))?;
        let source_digest = blake3::hash(source.as_bytes());
        let digest = program_digest(source_digest.as_bytes(), &managed);
        put_all(&mut raw.groups, managed.groups.values(), |g| g.id.clone());
        put_all(&mut raw.affiliates, managed.affiliates.values(), |a| a.id.clone());
        put_all(&mut raw.coupons, managed.coupons.values(), |c| c.code.to_ascii_uppercase());
        put_all(&mut raw.links, managed.links.values(), |l| l.code.clone());
        let mut problems = Vec::new();

        let calendar = match raw.time_zone.as_deref() {
            None => crate::time::Calendar::Utc,
            Some(name) => crate::time::Calendar::named(name).unwrap_or_else(|| {
                problems.push(format!(
                    "time_zone: \"{name}\" is not a time zone (an IANA name such as Europe/Berlin, or UTC)"
                ));
                crate::time::Calendar::Utc
            }),
        };
        let mut advertisers = BTreeMap::new();
        let mut inline_credentials = Vec::new();
        for a in raw.advertisers {
            check_id(&mut problems, "advertisers", &a.id);
            let inline = [("postback_token", &a.postback_token), ("hmac_secret", &a.hmac_secret)];
            for (field, _) in inline.iter().filter(|(_, v)| v.is_some()) {
                inline_credentials.push(format!("advertisers[{}].{field}", a.id));
            }
            if a.postback_tokens.is_empty() && a.hmac_secrets.is_empty() && inline.iter().all(|(_, v)| v.is_none()) {
                problems.push(format!(
                    "advertisers[{}]: needs postback_tokens or hmac_secrets (names in the secrets store), or its \
                     postbacks can never be authenticated",
                    a.id
                ));
            }
            let mut names = std::collections::BTreeSet::new();
            for (field, list) in [("postback_tokens", &a.postback_tokens), ("hmac_secrets", &a.hmac_secrets)] {
                for name in list {
                    if !is_credential_name(name) {
                        problems.push(format!(
                            "advertisers[{}].{field}: \"{name}\" is not a secret name (1-64 of A-Z a-z 0-9 _ . -)",
                            a.id
                        ));
                    } else if !names.insert(name.as_str()) {
                        problems.push(format!("advertisers[{}].{field}: \"{name}\" named twice", a.id));
                    }
                }
            }
            let named = |list: &[String]| list.iter().map(|n| Credential::named(n)).collect();
            let cookie =
                CookiePolicy::parse(a.cookie_domain.as_deref(), a.cookie_same_site.as_deref(), a.cookie_secure)
                    .unwrap_or_else(|e| {
                        problems.push(format!("advertisers[{}].{e}", a.id));
                        CookiePolicy::default()
                    });
            let advertiser = Advertiser {
                id: a.id.clone(),
                name: a.name,
                postback_tokens: named(&a.postback_tokens),
                hmac_secrets: named(&a.hmac_secrets),
                cookie,
            };
            if advertisers.insert(a.id.clone(), advertiser).is_some() {
                problems.push(format!("advertisers[{}]: duplicate id", a.id));
            }
        }

        // Offers check their overrides against the affiliates' IDs; the affiliates' terms
        // are then checked against the offers.
        let mut affiliate_ids = BTreeMap::new();
        for a in &raw.affiliates {
            check_id(&mut problems, "affiliates", &a.id);
            if affiliate_ids.insert(a.id.clone(), a.active).is_some() {
                problems.push(format!("affiliates[{}]: duplicate id", a.id));
            }
        }

        let mut offers = BTreeMap::new();
        for o in raw.offers {
            if let Some(offer) = validate_offer(&mut problems, &advertisers, &affiliate_ids, o) {
                let id = offer.id.clone();
                if offers.insert(id.clone(), Arc::new(offer)).is_some() {
                    problems.push(format!("offers[{id}]: duplicate id"));
                }
            }
        }

        let mut groups = BTreeMap::new();
        for g in raw.groups {
            let group = build_group(&mut problems, &offers, g);
            if let Some(g) = groups.insert(group.id.clone(), group) {
                problems.push(format!("groups[{}]: duplicate id", g.id));
            }
        }

        let mut affiliates = Shards::default();
        let mut tokens = Shards::default();
        for a in raw.affiliates {
            let affiliate = build_affiliate(&mut problems, &offers, &groups, a);
            index_tokens(&mut problems, &mut tokens, &affiliate);
            affiliates.insert(affiliate.id.clone(), affiliate);
        }

        let mut links = Shards::default();
        for l in raw.links {
            if let Some(link) = build_link(&mut problems, &offers, &affiliates, l) {
                if let Some(l) = links.insert(link.code.clone(), link) {
                    problems.push(format!("links[{}]: duplicate code", l.code));
                }
            }
        }

        let mut coupons = Shards::default();
        for c in raw.coupons {
            let coupon = build_coupon(&mut problems, &offers, &affiliates, c);
            if let Some(c) = coupons.insert(coupon.code.to_ascii_uppercase(), coupon) {
                problems.push(format!("coupons[{}]: duplicate code (codes are compared ignoring case)", c.code));
            }
        }

        let payout_minimum = payout_minimum(&mut problems, "", &raw.payout_minimum);
        let webhooks = build_webhooks(&mut problems, raw.webhooks);
        if !problems.is_empty() {
            return Err(ProgramError::Invalid(problems));
        }
        Ok(Program {
            payout_minimum,
            webhooks,
            digest,
            source_digest: *source_digest.as_bytes(),
            source: source.to_owned(),
            advertisers,
            affiliates,
            groups,
            offers,
            links,
            coupons,
            tokens,
            inline_credentials,
            calendar,
            managed,
        })
    }

    /// This program with `edit`'s entities put on its managed ones: the program
    /// [`Program::compose`] would give for the same file and entities (a property test holds
    /// the two equal), in time proportional to the edit, not to the program. Only the edit's
    /// entities are checked: nothing is ever removed from a program, so nothing else can stop
    /// being valid. Entities are put in the edit's order (groups, affiliates, links, coupons),
    /// so an affiliate may name a group, and a link an affiliate, of the same edit.
    pub fn with_edit(&self, edit: &Edit) -> Result<Program, ProgramError> {
        let mut managed = (*self.managed).clone();
        managed.apply(edit);
        let mut p = self.clone();
        let mut problems = Vec::new();
        // An entity the edit puts twice is put as it last has it (as the managed map keeps it).
        for g in last_of(&edit.groups, |g| g.id.clone()) {
            let group = build_group(&mut problems, &p.offers, g.clone());
            p.groups.insert(group.id.clone(), group);
        }
        let mut toggled = std::collections::BTreeSet::new();
        let affiliates = last_of(&edit.affiliates, |a| a.id.clone());
        // The tokens of the affiliates replaced go first, so a token may move between two
        // affiliates of the edit in either order, as when composing from scratch.
        for a in &affiliates {
            for t in p.affiliates.get(&a.id).map(|o| o.spec.tokens.clone()).unwrap_or_default() {
                p.tokens.remove(&t.hash);
            }
        }
        for a in affiliates {
            check_id(&mut problems, "affiliates", &a.id);
            let affiliate = build_affiliate(&mut problems, &p.offers, &p.groups, a.clone());
            index_tokens(&mut problems, &mut p.tokens, &affiliate);
            if let Some(old) = p.affiliates.insert(affiliate.id.clone(), affiliate) {
                if old.active != a.active {
                    toggled.insert(a.id.clone());
                }
            }
        }
        // Links and coupons of an affiliate enabled or disabled by this edit.
        if !toggled.is_empty() {
            let active = |id: &str| p.affiliates.get(id).is_some_and(|a| a.active);
            let links_active: Vec<(String, bool)> = toggled.iter().map(|id| (id.clone(), active(id))).collect();
            let now = |aff: &str| links_active.iter().find(|(id, _)| id == aff).map(|(_, on)| *on);
            p.links.update_where(|l| {
                now(&l.affiliate)
                    .map(|on| Link { enabled: l.active && on, ..l.clone() })
                    .filter(|n| n.enabled != l.enabled)
            });
            p.coupons.update_where(|c| {
                now(&c.affiliate)
                    .map(|on| Coupon { enabled: c.active && on, ..c.clone() })
                    .filter(|n| n.enabled != c.enabled)
            });
        }
        for l in last_of(&edit.links, |l| l.code.clone()) {
            if let Some(link) = build_link(&mut problems, &p.offers, &p.affiliates, l.clone()) {
                p.links.insert(link.code.clone(), link);
            }
        }
        for c in last_of(&edit.coupons, |c| c.code.to_ascii_uppercase()) {
            let coupon = build_coupon(&mut problems, &p.offers, &p.affiliates, c.clone());
            p.coupons.insert(coupon.code.to_ascii_uppercase(), coupon);
        }
        if !problems.is_empty() {
            return Err(ProgramError::Invalid(problems));
        }
        p.digest = program_digest(&p.source_digest, &managed);
        p.managed = Arc::new(managed);
        Ok(p)
    }

    /// The enabled coupon with this code, compared ignoring ASCII case.
    pub fn coupon(&self, code: &str) -> Option<&Coupon> {
        self.any_coupon(code).filter(|c| c.enabled)
    }

    /// The coupon with this code, enabled or not.
    pub fn any_coupon(&self, code: &str) -> Option<&Coupon> {
        if code.is_empty() || code.len() > MAX_ID_LEN {
            return None;
        }
        self.coupons.get(&code.to_ascii_uppercase())
    }

    pub fn coupons(&self) -> impl Iterator<Item = &Coupon> {
        self.coupons.values()
    }

    /// Where the postbacks of `affiliate`'s commission credited through a click of `link`
    /// (empty: no click) go: the link's own `postback_url`, else the affiliate's, else its
    /// group's. A link counts only while it still belongs to `affiliate` (disabled or not):
    /// a link moved to another affiliate must not send it this affiliate's commissions.
    pub fn postback_for(&self, link: &str, affiliate: &str) -> Option<&Arc<PostbackTemplate>> {
        let own = (!link.is_empty())
            .then(|| self.links.get(link))
            .flatten()
            .filter(|l| l.affiliate == affiliate)
            .and_then(|l| l.postback.as_ref());
        if own.is_some() {
            return own;
        }
        let a = self.affiliates.get(affiliate)?;
        a.postback.as_ref().or_else(|| a.group.as_deref().and_then(|g| self.groups.get(g)?.postback.as_ref()))
    }

    /// Whether any commission can be notified: a postback URL or a webhook anywhere.
    pub fn notifies(&self) -> bool {
        !self.webhooks.is_empty()
            || self.groups.values().any(|g| g.postback.is_some())
            || self.affiliates.values().any(|a| a.postback.is_some())
            || self.links.values().any(|l| l.postback.is_some())
    }

    /// The smallest balance in `currency` a payout run pays `affiliate`: its group's
    /// `payout_minimum` for the currency, else the program's, else nothing (zero).
    pub fn payout_minimum_for(&self, affiliate: &str, currency: Currency) -> i64 {
        let group = self.affiliates.get(affiliate).and_then(|a| a.group.as_deref()).and_then(|g| self.groups.get(g));
        group
            .and_then(|g| g.payout_minimum.get(&currency))
            .or_else(|| self.payout_minimum.get(&currency))
            .copied()
            .unwrap_or(0)
    }

    /// The affiliate whose API token has this hash (hex BLAKE3 of the token).
    pub fn affiliate_of_token(&self, hash: &str) -> Option<&Affiliate> {
        self.tokens.get(hash).and_then(|id| self.affiliates.get(id))
    }

    /// The terms `affiliate` gets on `goal` of `offer` ([`EffectiveTerms`]).
    pub fn terms<'a>(&'a self, offer: &Offer, goal: &'a Goal, affiliate: &str) -> EffectiveTerms<'a> {
        let mut t = EffectiveTerms {
            payout: &goal.payout,
            payout_from: TermsFrom::Goal,
            daily_cap: goal.affiliate_daily_cap,
            hold_days: goal.hold_days,
        };
        let aff = self.affiliates.get(affiliate);
        let group = aff.and_then(|a| a.group.as_ref()).and_then(|g| self.groups.get(g));
        // Least specific first, so each later level overwrites what it sets.
        let mut levels: Vec<(TermsFrom<'a>, &'a Terms)> = Vec::new();
        for (from, list) in [
            group.map(|g| (TermsFrom::Group(g.id.as_str()), &g.terms)),
            aff.map(|a| (TermsFrom::Affiliate(a.id.as_str()), &a.terms)),
        ]
        .into_iter()
        .flatten()
        {
            for fit in [1, 2] {
                levels.extend(list.iter().filter(|x| x.fit(&offer.id, &goal.id) == fit).map(|x| (from, x)));
            }
        }
        for (from, x) in levels {
            if let Some(p) = &x.payout {
                t.payout = p;
                t.payout_from = from;
            }
            t.daily_cap = x.daily_cap.or(t.daily_cap);
            t.hold_days = x.hold_days.unwrap_or(t.hold_days);
        }
        if let Some((id, o)) = goal.overrides.get_key_value(affiliate) {
            if let Some(p) = &o.payout {
                t.payout = p;
                t.payout_from = TermsFrom::Affiliate(id.as_str());
            }
            t.daily_cap = o.daily_cap.or(t.daily_cap);
        }
        t
    }

    /// The longest attribution window of any offer, in days: clicks older than this can never
    /// be credited under this program.
    pub fn max_window_days(&self) -> u32 {
        self.offers.values().map(|o| o.window_days).max().unwrap_or(DEFAULT_WINDOW_DAYS)
    }

    /// The enabled link with this code, if any.
    pub fn link(&self, code: &str) -> Option<&Link> {
        self.links.get(code).filter(|l| l.enabled)
    }

    /// The link with this code, enabled or not.
    pub fn any_link(&self, code: &str) -> Option<&Link> {
        self.links.get(code)
    }

    pub fn links(&self) -> impl Iterator<Item = &Link> {
        self.links.values()
    }

    pub fn offer(&self, id: &str) -> Option<&Arc<Offer>> {
        self.offers.get(id)
    }

    pub fn advertiser_of(&self, offer: &Offer) -> Option<&Advertiser> {
        self.advertisers.get(&offer.advertiser)
    }

    /// Where the source writes a credential's value inline, as programs did before secrets
    /// were named. Such a program still replays from a log (the values are never used), but
    /// a server must refuse it: it would log the credential for every auditor to read.
    pub fn inline_credentials(&self) -> &[String] {
        &self.inline_credentials
    }

    /// Fills every credential's value from `lookup` (the secrets store). Reports every name
    /// `lookup` does not know, as `advertisers[acme].postback_tokens: "name" ...` lines.
    pub fn resolve_credentials(&mut self, lookup: impl Fn(&str) -> Option<String>) -> Result<(), ProgramError> {
        let mut problems = Vec::new();
        for a in self.advertisers.values_mut() {
            for (field, list) in [("postback_tokens", &mut a.postback_tokens), ("hmac_secrets", &mut a.hmac_secrets)] {
                for c in list.iter_mut() {
                    match lookup(&c.name) {
                        Some(v) if v.len() >= MIN_SECRET_LEN => c.value = Some(v),
                        Some(_) => problems.push(format!(
                            "advertisers[{}].{field}: secret \"{}\" is shorter than {MIN_SECRET_LEN} characters",
                            a.id, c.name
                        )),
                        None => problems.push(format!(
                            "advertisers[{}].{field}: secret \"{}\" is not in the secrets store",
                            a.id, c.name
                        )),
                    }
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ProgramError::Invalid(problems))
        }
    }
}

/// Shortest secret value accepted: a token or key any shorter is guessable.
pub const MIN_SECRET_LEN: usize = 16;

/// Secret names: short, and safe as a file name and (upper-cased) in an environment variable.
pub fn is_credential_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// The digest of the program file with digest `source` and the `managed` entities: the file's
/// own when nothing is managed (so deployments that never used the API keep theirs), else
/// BLAKE3 over both digests.
fn program_digest(source: &[u8; 32], managed: &Managed) -> String {
    if managed.is_empty() {
        return blake3::Hash::from_bytes(*source).to_hex().to_string();
    }
    let mut h = blake3::Hasher::new();
    h.update(b"tally-program-v2\n");
    h.update(source);
    h.update(&managed.digest());
    h.finalize().to_hex().to_string()
}

/// The last of `items` with each key, in the order of those last ones.
fn last_of<T>(items: &[T], key: impl Fn(&T) -> String) -> Vec<&T> {
    let mut seen = std::collections::HashSet::new();
    let mut out: Vec<&T> = items.iter().rev().filter(|x| seen.insert(key(x))).collect();
    out.reverse();
    out
}

fn build_group(problems: &mut Vec<String>, offers: &BTreeMap<String, Arc<Offer>>, g: GroupSpec) -> Group {
    let at = format!("groups[{}]", g.id);
    check_id(problems, "groups", &g.id);
    let terms = validate_terms(problems, &at, offers, g.terms.clone());
    let payout_minimum = payout_minimum(problems, &at, &g.payout_minimum);
    let postback = postback_of(problems, &at, &g.postback_url);
    Group { id: g.id.clone(), name: g.name.clone(), terms, payout_minimum, postback, spec: g }
}

fn build_webhooks(problems: &mut Vec<String>, raw: Vec<RawWebhook>) -> Vec<Webhook> {
    let mut out: Vec<Webhook> = Vec::new();
    for w in raw {
        let at = format!("webhooks[{}]", w.id);
        check_id(problems, "webhooks", &w.id);
        if out.iter().any(|x| x.id == w.id) {
            problems.push(format!("{at}: duplicate id"));
        }
        if let Err(e) = crate::delivery::check_url(&w.url) {
            problems.push(format!("{at}.url: {e}"));
        }
        if !is_credential_name(&w.secret) {
            problems.push(format!(
                "{at}.secret: \"{}\" is not a secret name (1-64 of A-Z a-z 0-9 _ . -): name the signing secret in the secrets store",
                w.secret
            ));
        }
        for e in w.events.iter().filter(|e| !crate::delivery::EVENTS.contains(&e.as_str())) {
            problems.push(format!("{at}.events: \"{e}\" is not {}", crate::delivery::EVENTS.join(" or ")));
        }
        let events = if w.events.is_empty() {
            crate::delivery::EVENTS.iter().map(|e| (*e).to_owned()).collect()
        } else {
            w.events
        };
        out.push(Webhook { id: w.id, url: w.url, secret: w.secret, events });
    }
    out
}

/// A `payout_minimum` table (`{ USD = "50.00" }`), checked: known currencies, amounts exact
/// in each, not negative.
fn payout_minimum(problems: &mut Vec<String>, at: &str, table: &BTreeMap<String, String>) -> BTreeMap<Currency, i64> {
    let mut out = BTreeMap::new();
    for (code, amount) in table {
        let field =
            if at.is_empty() { format!("payout_minimum.{code}") } else { format!("{at}.payout_minimum.{code}") };
        match Currency::from_code(code) {
            Err(e) => problems.push(format!("{field}: {e}")),
            Ok(c) => match parse_minor(amount, c, false) {
                Ok(v) => {
                    out.insert(c, v);
                }
                Err(e) => problems.push(format!("{field}: {e}")),
            },
        }
    }
    out
}

/// An affiliate's group and terms checked (its ID is checked where duplicates are).
fn build_affiliate(
    problems: &mut Vec<String>,
    offers: &BTreeMap<String, Arc<Offer>>,
    groups: &BTreeMap<String, Group>,
    a: AffiliateSpec,
) -> Affiliate {
    let at = format!("affiliates[{}]", a.id);
    let group = (!a.group.is_empty()).then(|| a.group.clone());
    if let Some(g) = group.as_ref().filter(|g| !groups.contains_key(*g)) {
        problems.push(format!("{at}.group: unknown group \"{g}\""));
    }
    let terms = validate_terms(problems, &at, offers, a.terms.clone());
    let mut ids = std::collections::BTreeSet::new();
    for t in &a.tokens {
        if !is_valid_id(&t.id) || !ids.insert(t.id.as_str()) {
            problems
                .push(format!("{at}.tokens[{}]: token IDs are 1-{MAX_ID_LEN} of A-Z a-z 0-9 _ . -, once each", t.id));
        }
        if t.hash.len() != 64 || !t.hash.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
            problems.push(format!("{at}.tokens[{}].hash: 64 lower-case hex digits (BLAKE3 of the token)", t.id));
        }
    }
    let postback = postback_of(problems, &at, &a.postback_url);
    Affiliate { id: a.id.clone(), name: a.name.clone(), group, active: a.active, terms, postback, spec: a }
}

/// A `postback_url`, parsed; empty: none.
fn postback_of(problems: &mut Vec<String>, at: &str, url: &str) -> Option<Arc<PostbackTemplate>> {
    if url.is_empty() {
        return None;
    }
    PostbackTemplate::parse(url).map(Arc::new).map_err(|e| problems.push(format!("{at}.postback_url: {e}"))).ok()
}

/// Puts `affiliate`'s token hashes in the index; a hash another affiliate holds is a problem.
fn index_tokens(problems: &mut Vec<String>, index: &mut Shards<String>, affiliate: &Affiliate) {
    for t in &affiliate.spec.tokens {
        match index.get(&t.hash) {
            Some(other) if *other != affiliate.id => problems.push(format!(
                "affiliates[{}].tokens[{}]: the same token as affiliate \"{other}\"",
                affiliate.id, t.id
            )),
            _ => {
                index.insert(t.hash.clone(), affiliate.id.clone());
            }
        }
    }
}

fn build_link(
    problems: &mut Vec<String>,
    offers: &BTreeMap<String, Arc<Offer>>,
    affiliates: &Shards<Affiliate>,
    l: LinkSpec,
) -> Option<Link> {
    check_id(problems, "links", &l.code);
    let affiliate = affiliates.get(&l.affiliate);
    if affiliate.is_none() {
        problems.push(format!("links[{}].affiliate: unknown affiliate \"{}\"", l.code, l.affiliate));
    }
    // Most links have no URL of their own: no name to format for them.
    let postback = if l.postback_url.is_empty() {
        None
    } else {
        postback_of(problems, &format!("links[{}]", l.code), &l.postback_url)
    };
    let Some(offer) = offers.get(&l.offer) else {
        problems.push(format!("links[{}].offer: unknown offer \"{}\"", l.code, l.offer));
        return None;
    };
    let enabled = l.active && affiliate.is_some_and(|a| a.active);
    Some(Link {
        code: l.code,
        offer: Arc::clone(offer),
        affiliate: l.affiliate,
        active: l.active,
        enabled,
        postback_url: l.postback_url,
        postback,
    })
}

fn build_coupon(
    problems: &mut Vec<String>,
    offers: &BTreeMap<String, Arc<Offer>>,
    affiliates: &Shards<Affiliate>,
    c: CouponSpec,
) -> Coupon {
    let at = format!("coupons[{}]", c.code);
    if c.code.is_empty() || c.code.len() > MAX_ID_LEN || !c.code.bytes().all(|b| b.is_ascii_graphic()) {
        problems.push(format!("{at}: codes must be 1-{MAX_ID_LEN} printable ASCII characters, no spaces"));
    }
    let affiliate = affiliates.get(&c.affiliate);
    if affiliate.is_none() {
        problems.push(format!("{at}.affiliate: unknown affiliate \"{}\"", c.affiliate));
    }
    if !offers.contains_key(&c.offer) {
        problems.push(format!("{at}.offer: unknown offer \"{}\"", c.offer));
    }
    let enabled = c.active && affiliate.is_some_and(|a| a.active);
    Coupon { code: c.code, offer: c.offer, affiliate: c.affiliate, active: c.active, enabled }
}

/// Puts each of `managed` into `list`: in place of the entity with the same key, else at the end.
fn put_all<'a, T: Clone + 'a>(list: &mut Vec<T>, managed: impl Iterator<Item = &'a T>, key: impl Fn(&T) -> String) {
    let mut at: HashMap<String, usize> = list.iter().enumerate().map(|(i, x)| (key(x), i)).collect();
    for m in managed {
        let k = key(m);
        match at.get(&k) {
            Some(&i) => list[i] = m.clone(),
            None => {
                at.insert(k, list.len());
                list.push(m.clone());
            }
        }
    }
}

/// Checks an affiliate's or a group's terms against the offers.
fn validate_terms(
    problems: &mut Vec<String>,
    at: &str,
    offers: &BTreeMap<String, Arc<Offer>>,
    specs: Vec<TermsSpec>,
) -> Vec<Terms> {
    let mut out: Vec<Terms> = Vec::with_capacity(specs.len());
    for t in specs {
        let goal = (!t.goal.is_empty()).then_some(t.goal);
        let tat = match &goal {
            Some(g) => format!("{at}.terms[{}.{g}]", t.offer),
            None => format!("{at}.terms[{}]", t.offer),
        };
        if t.payout.is_none() && t.daily_cap.is_none() && t.hold_days.is_none() {
            problems.push(format!("{tat}: sets nothing (give payout, daily_cap or hold_days)"));
        }
        let Some(offer) = offers.get(&t.offer) else {
            problems.push(format!("{tat}.offer: unknown offer \"{}\"", t.offer));
            continue;
        };
        if let Some(g) = goal.as_ref().filter(|g| offer.goal(g).is_none()) {
            problems.push(format!("{tat}.goal: offer \"{}\" has no goal \"{g}\"", t.offer));
        }
        if out.iter().any(|x| x.offer == t.offer && x.goal == goal) {
            problems.push(format!("{tat}: duplicate terms for the same offer and goal"));
        }
        if t.hold_days.is_some_and(|d| d > 3650) {
            problems.push(format!("{tat}.hold_days: must be 0-3650"));
        }
        let payout =
            t.payout.and_then(|p| validate_payout(problems, &format!("{tat}.payout"), Some(offer.currency), p));
        out.push(Terms { offer: t.offer, goal, payout, daily_cap: t.daily_cap, hold_days: t.hold_days });
    }
    out
}

fn check_id(problems: &mut Vec<String>, section: &str, id: &str) {
    if !is_valid_id(id) {
        problems.push(format!("{section}[{id}]: ids must be 1-{MAX_ID_LEN} characters of A-Z a-z 0-9 _ . -"));
    }
}

/// IDs and link codes are restricted so they are safe in URLs, file names and log lines.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn validate_offer(
    problems: &mut Vec<String>,
    advertisers: &BTreeMap<String, Advertiser>,
    affiliates: &BTreeMap<String, bool>,
    o: RawOffer,
) -> Option<Offer> {
    let before = problems.len();
    let at = format!("offers[{}]", o.id);
    check_id(problems, "offers", &o.id);
    if !advertisers.contains_key(&o.advertiser) {
        problems.push(format!("{at}.advertiser: unknown advertiser \"{}\"", o.advertiser));
    }
    let destination = Template::parse(&o.destination).map_err(|e| problems.push(format!("{at}.destination: {e}"))).ok();
    let deep_link_params = match &o.deep_link_params {
        Some(given) => {
            let mut params = Vec::new();
            for (name, value) in given {
                match QueryParam::parse(name, value) {
                    Ok(p) => params.push(p),
                    Err(e) => problems.push(format!("{at}.deep_link_params.{name}: {e}")),
                }
            }
            params
        }
        None => QueryParam::of_template(&o.destination),
    };
    let mut allowed_hosts = Vec::new();
    for h in &o.allowed_hosts {
        match HostPattern::parse(h) {
            Ok(p) => allowed_hosts.push(p),
            Err(e) => problems.push(format!("{at}.allowed_hosts: {e}")),
        }
    }
    let currency = Currency::from_code(&o.currency).map_err(|e| problems.push(format!("{at}.currency: {e}"))).ok();
    let redirect = match o.redirect.map(|c| (c, Redirect::from_code(c))) {
        None => Redirect::Found,
        Some((_, Some(r))) => r,
        Some((c, None)) => {
            problems.push(format!(
                "{at}.redirect: {c} is not a redirect status a click may answer with (302, 307, 301 or 308)"
            ));
            Redirect::Found
        }
    };
    let pass_query = o.pass_query.map(|q| PassQuery::parse(q, &at, problems)).unwrap_or_default();
    let routes = crate::routing::validate(o.routes, &at, problems);
    let routes_use_time = routes.iter().any(|r| r.when.uses_time());
    let window_days = o.window_days.unwrap_or(DEFAULT_WINDOW_DAYS);
    if window_days == 0 || window_days > 3650 {
        problems.push(format!("{at}.window_days: must be 1-3650, got {window_days}"));
    }
    let model = match o.model.as_deref() {
        None | Some("last_click") => AttributionModel::LastClick,
        Some("first_click") => AttributionModel::FirstClick,
        Some(other) => {
            problems.push(format!("{at}.model: expected last_click or first_click, got \"{other}\""));
            AttributionModel::LastClick
        }
    };
    if o.goals.is_empty() {
        problems.push(format!("{at}.goals: an offer needs at least one goal"));
    }
    let offer_browser = RawBrowserPolicy {
        browser_reports: o.browser_reports.as_deref(),
        max_browser_amount: o.max_browser_amount.as_deref(),
        require_txid: o.require_txid,
    }
    .resolve(problems, &at, currency, BrowserPolicy::default());
    let mut goals: Vec<Goal> = Vec::new();
    for g in o.goals {
        let gat = format!("{at}.goals[{}]", g.id);
        check_id(problems, &format!("{at}.goals"), &g.id);
        if goals.iter().any(|x| x.id == g.id) {
            problems.push(format!("{gat}: duplicate id"));
        }
        let payout = validate_payout(problems, &format!("{gat}.payout"), currency, g.payout);
        let browser = RawBrowserPolicy {
            browser_reports: g.browser_reports.as_deref(),
            max_browser_amount: g.max_browser_amount.as_deref(),
            require_txid: g.require_txid,
        }
        .resolve(problems, &gat, currency, offer_browser);
        let mut overrides = BTreeMap::new();
        for ov in g.overrides {
            let oat = format!("{gat}.overrides[{}]", ov.affiliate);
            if !affiliates.contains_key(&ov.affiliate) {
                problems.push(format!("{oat}.affiliate: unknown affiliate \"{}\"", ov.affiliate));
            }
            let payout = ov.payout.and_then(|p| validate_payout(problems, &format!("{oat}.payout"), currency, p));
            let o = GoalOverride { payout, daily_cap: ov.daily_cap };
            if overrides.insert(ov.affiliate.clone(), o).is_some() {
                problems.push(format!("{oat}: duplicate affiliate"));
            }
        }
        let mut milestones: Vec<Milestone> = Vec::new();
        for m in g.milestones {
            let mat = format!("{gat}.milestones[{}]", m.count);
            if m.count == 0 {
                problems.push(format!("{mat}.count: must be at least 1"));
            }
            if milestones.iter().any(|x| x.count == m.count) {
                problems.push(format!("{mat}: duplicate count"));
            }
            match currency.map(|c| parse_minor(&m.bonus, c, false)) {
                Some(Ok(bonus)) => milestones.push(Milestone { count: m.count, bonus }),
                Some(Err(e)) => problems.push(format!("{mat}.bonus: {e}")),
                None => {}
            }
        }
        milestones.sort_by_key(|m| m.count);
        if let Some(payout) = payout {
            goals.push(Goal {
                id: g.id,
                payout,
                hold_days: g.hold_days,
                daily_cap: g.daily_cap,
                affiliate_daily_cap: g.affiliate_daily_cap,
                overrides,
                milestones,
                browser,
                recurring: match (g.recurring_months, g.lifetime) {
                    (Some(_), true) => {
                        problems.push(format!("{gat}: recurring_months and lifetime = true exclude each other"));
                        Recurring::Off
                    }
                    (Some(n), false) if !(1..=1200).contains(&n) => {
                        problems.push(format!("{gat}.recurring_months: must be 1-1200, got {n}"));
                        Recurring::Off
                    }
                    (Some(n), false) => Recurring::Months(n),
                    (None, true) => Recurring::Lifetime,
                    (None, false) => Recurring::Off,
                },
            });
        }
        if g.hold_days > 3650 {
            problems.push(format!("{gat}.hold_days: must be 0-3650, got {}", g.hold_days));
        }
    }
    if problems.len() != before {
        return None;
    }
    Some(Offer {
        cookie: advertisers.get(&o.advertiser).map(|a| a.cookie.clone()).unwrap_or_default(),
        id: o.id,
        advertiser: o.advertiser,
        destination: destination?,
        allowed_hosts,
        deep_link_params,
        currency: currency?,
        window_days,
        model,
        goals,
        redirect,
        pass_query,
        routes,
        routes_use_time,
    })
}

/// Checks one payout (of a goal or of an override).
fn validate_payout(problems: &mut Vec<String>, at: &str, currency: Option<Currency>, p: PayoutSpec) -> Option<Payout> {
    let rate = |problems: &mut Vec<String>, at: &str, amount: Option<String>, bps: Option<u32>| -> Option<Rate> {
        match (amount, bps) {
            (Some(amount), None) => match currency.map(|c| parse_minor(&amount, c, false)) {
                Some(Ok(amount)) => Some(Rate::Fixed { amount }),
                Some(Err(e)) => {
                    problems.push(format!("{at}.amount: {e}"));
                    None
                }
                None => None, // the currency problem is already reported
            },
            (None, Some(bps)) if bps <= 10_000 => Some(Rate::RevShare { bps }),
            (None, Some(bps)) => {
                problems.push(format!("{at}.bps: must be 0-10000, got {bps}"));
                None
            }
            _ => {
                problems.push(format!("{at}: takes exactly one of amount or bps"));
                None
            }
        }
    };
    match (p.kind.as_str(), p.tiers) {
        ("fixed", None) if p.bps.is_none() => match rate(problems, at, p.amount, None)? {
            Rate::Fixed { amount } => Some(Payout::Fixed { amount }),
            Rate::RevShare { .. } => None,
        },
        ("revshare", None) if p.amount.is_none() => match rate(problems, at, None, p.bps)? {
            Rate::RevShare { bps } => Some(Payout::RevShare { bps }),
            Rate::Fixed { .. } => None,
        },
        ("fixed", _) => {
            problems.push(format!("{at}: kind \"fixed\" takes amount (and no bps or tiers)"));
            None
        }
        ("revshare", _) => {
            problems.push(format!("{at}: kind \"revshare\" takes bps (and no amount or tiers)"));
            None
        }
        ("tiered", Some(raw_tiers)) if p.amount.is_none() && p.bps.is_none() => {
            let before = problems.len();
            let mut tiers: Vec<Tier> = Vec::new();
            for t in raw_tiers {
                let tat = format!("{at}.tiers[from={}]", t.from);
                if let Some(last) = tiers.last() {
                    if t.from <= last.from {
                        problems.push(format!("{tat}: tiers must be in ascending order of from"));
                    }
                } else if t.from != 1 {
                    problems.push(format!("{tat}: the first tier must start at from = 1"));
                }
                if let Some(rate) = rate(problems, &tat, t.amount, t.bps) {
                    tiers.push(Tier { from: t.from, rate });
                }
            }
            if tiers.is_empty() && problems.len() == before {
                problems.push(format!("{at}.tiers: needs at least one tier"));
            }
            (problems.len() == before).then_some(Payout::Tiered { tiers })
        }
        ("tiered", _) => {
            problems.push(format!("{at}: kind \"tiered\" takes tiers (and no amount or bps)"));
            None
        }
        (other, _) => {
            problems.push(format!("{at}.kind: expected fixed, revshare or tiered, got \"{other}\""));
            None
        }
    }
}

impl Offer {
    pub fn goal(&self, id: &str) -> Option<&Goal> {
        self.goals.iter().find(|g| g.id == id)
    }

    /// The goal a conversion that names none is booked to.
    pub fn default_goal(&self) -> &str {
        self.goals.first().map(|g| g.id.as_str()).unwrap_or("")
    }

    /// Where a followed deep link sends the browser: `url` with [`Offer::deep_link_params`]
    /// merged into its query (a parameter of the same name already there is replaced; every
    /// other one, and the fragment, stays as it was).
    pub fn deep_link_location<'a>(&self, url: &url::Url, value: impl Fn(Macro) -> &'a str) -> String {
        if self.deep_link_params.is_empty() {
            return url.to_string();
        }
        let mut query = String::with_capacity(url.query().map_or(0, str::len) + 64);
        for pair in url.query().unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let raw_name = pair.split('=').next().unwrap_or("");
            let name = url::form_urlencoded::parse(raw_name.as_bytes()).next().map(|(k, _)| k);
            if name.is_some_and(|n| self.deep_link_params.iter().any(|p| p.name == n)) {
                continue;
            }
            query.push_str(pair);
            query.push('&');
        }
        for p in &self.deep_link_params {
            p.render(&value, &mut query);
            query.push('&');
        }
        query.pop();
        let mut out = url.clone();
        out.set_query(Some(&query));
        out.to_string()
    }

    /// Checks a deep link (`url=` on a click) against the offer's allowed hosts. Returns the
    /// normalised URL to redirect to, or why it was refused.
    ///
    /// Refused: anything that is not an absolute http(s) URL, anything with userinfo,
    /// backslashes, control characters or whitespace (browsers "fix" these in ways that
    /// differ from any parser, the classic open-redirect bypasses), and any host not allowed.
    pub fn check_deep_link(&self, raw: &str) -> Result<url::Url, DeepLinkError> {
        if raw.len() > 2048 {
            return Err(DeepLinkError::TooLong);
        }
        if raw.bytes().any(|b| b == b'\\' || b.is_ascii_control() || b == b' ') {
            return Err(DeepLinkError::BadCharacter);
        }
        let lower = raw.to_ascii_lowercase();
        if !(lower.starts_with("https://") || lower.starts_with("http://")) {
            return Err(DeepLinkError::NotAbsolute);
        }
        let url = url::Url::parse(raw).map_err(|_| DeepLinkError::Unparseable)?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(DeepLinkError::UserInfo);
        }
        let Some(url::Host::Domain(host)) = url.host() else {
            return Err(DeepLinkError::HostNotAllowed);
        };
        if self.allowed_hosts.iter().any(|p| p.matches(host)) {
            Ok(url)
        } else {
            Err(DeepLinkError::HostNotAllowed)
        }
    }
}

#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum DeepLinkError {
    #[error("deep link is too long")]
    TooLong,
    #[error("deep link contains a backslash, space or control character")]
    BadCharacter,
    #[error("deep link is not an absolute http(s) URL")]
    NotAbsolute,
    #[error("deep link does not parse as a URL")]
    Unparseable,
    #[error("deep link carries userinfo")]
    UserInfo,
    #[error("deep link host is not allowed by the offer")]
    HostNotAllowed,
}

/// An allowed deep-link host: `shop.example` (exactly) or `*.shop.example` (any subdomain,
/// not the apex).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    Subdomains(String),
}

impl HostPattern {
    pub fn parse(s: &str) -> Result<HostPattern, String> {
        let lower = s.to_ascii_lowercase();
        let (wild, host) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        let ok_label =
            |l: &str| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if host.is_empty() || host.len() > 253 || !host.split('.').all(ok_label) {
            return Err(format!("\"{s}\" is not a host name or *.host pattern"));
        }
        Ok(if wild { HostPattern::Subdomains(host.to_owned()) } else { HostPattern::Exact(host.to_owned()) })
    }

    /// `host` must already be lowercase (the `url` crate normalises it).
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => host == h,
            HostPattern::Subdomains(h) => {
                host.len() > h.len() + 1
                    && host.ends_with(h.as_str())
                    && host.as_bytes()[host.len() - h.len() - 1] == b'.'
            }
        }
    }
}

/// A macro in a destination template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Macro {
    ClickId,
    AffId,
    OfferId,
    Sub(u8),
    Source,
    /// The click's signals ([`crate::Signals`]): `{country}`, `{region}`, `{device}`,
    /// `{os}`, `{browser}`, `{language}`; empty when unknown.
    Country,
    Region,
    Device,
    Os,
    Browser,
    Language,
    /// The click's time, whole seconds since the Unix epoch.
    Timestamp,
}

impl Macro {
    fn parse(name: &str) -> Option<Macro> {
        Some(match name {
            "click_id" => Macro::ClickId,
            "aff_id" => Macro::AffId,
            "offer_id" => Macro::OfferId,
            "source" => Macro::Source,
            "sub1" => Macro::Sub(1),
            "sub2" => Macro::Sub(2),
            "sub3" => Macro::Sub(3),
            "sub4" => Macro::Sub(4),
            "sub5" => Macro::Sub(5),
            "country" => Macro::Country,
            "region" => Macro::Region,
            "device" => Macro::Device,
            "os" => Macro::Os,
            "browser" => Macro::Browser,
            "language" => Macro::Language,
            "timestamp" => Macro::Timestamp,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Macro(Macro),
}

/// A destination URL with `{macro}` placeholders, parsed once at load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    segments: Vec<Segment>,
}

impl Template {
    /// Parses a template. It must be an absolute http(s) URL, and macros may only appear after
    /// the host (in the path, query or fragment): a macro in the authority would let a sub ID
    /// choose where the browser goes.
    pub fn parse(s: &str) -> Result<Template, String> {
        let segments = parse_segments(s)?;
        // Validate the shape with every macro filled by a harmless value.
        let probe = Template { segments: segments.clone() }.render(|_| "x");
        let url = url::Url::parse(&probe).map_err(|e| format!("not a URL ({e})"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err("must be an absolute http(s) URL".to_owned());
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("must not carry userinfo".to_owned());
        }
        if s.bytes().any(|b| b.is_ascii_control() || b == b' ' || b == b'\\') {
            return Err("must not contain spaces, backslashes or control characters".to_owned());
        }
        if let Some(Segment::Literal(first)) = segments.first() {
            let authority_start = first.find("://").map(|i| i + 3).unwrap_or(0);
            let authority_closed = first[authority_start..].contains(['/', '?', '#']);
            if segments.len() > 1 && !authority_closed {
                return Err("macros may only appear after the host".to_owned());
            }
        } else {
            return Err("must start with http:// or https://".to_owned());
        }
        Ok(Template { segments })
    }

    /// Fills the macros; every value is percent-encoded.
    pub fn render<'a>(&self, value: impl Fn(Macro) -> &'a str) -> String {
        let mut out = String::with_capacity(128);
        for s in &self.segments {
            match s {
                Segment::Literal(l) => out.push_str(l),
                Segment::Macro(m) => out.extend(utf8_percent_encode(value(*m), MACRO_VALUE)),
            }
        }
        out
    }
}

/// One `name=value` query parameter with macros in its value, merged into deep links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryParam {
    pub name: String,
    value: Vec<Segment>,
}

impl QueryParam {
    /// A parameter from the program: the name is 1-64 of `A-Z a-z 0-9 _ . - ~`; the value's
    /// text around its macros is sent as written, so it must be query-safe (unreserved
    /// characters, `%XX` escapes, and `!$'()*,;:@/?`).
    pub fn parse(name: &str, value: &str) -> Result<QueryParam, String> {
        let name_ok = !name.is_empty()
            && name.len() <= 64
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-~".contains(&b));
        if !name_ok {
            return Err(format!("\"{name}\" is not a parameter name (1-64 of A-Z a-z 0-9 _ . - ~)"));
        }
        let segments = parse_segments(value)?;
        for seg in &segments {
            if let Segment::Literal(l) = seg {
                if !is_query_safe(l) {
                    return Err(format!(
                        "\"{value}\": text outside macros must be query-safe (A-Z a-z 0-9 - . _ ~ %XX !$'()*,;:@/?)"
                    ));
                }
            }
        }
        Ok(QueryParam { name: name.to_owned(), value: segments })
    }

    /// The parameters of a destination template's query that carry a macro: what a deep link
    /// gets by default. `cid={click_id}&aff={aff_id}&utm_source=tally` gives `cid` and `aff`.
    pub fn of_template(destination: &str) -> Vec<QueryParam> {
        let Some((_, rest)) = destination.split_once('?') else { return Vec::new() };
        let query = rest.split('#').next().unwrap_or("");
        query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .filter(|(_, v)| v.contains('{'))
            .filter_map(|(k, v)| QueryParam::parse(k, v).ok())
            .collect()
    }

    /// `name=value` with the macros filled, each value percent-encoded as in templates.
    pub fn render<'a>(&self, value: impl Fn(Macro) -> &'a str, out: &mut String) {
        out.push_str(&self.name);
        out.push('=');
        for s in &self.value {
            match s {
                Segment::Literal(l) => out.push_str(l),
                Segment::Macro(m) => out.extend(utf8_percent_encode(value(*m), MACRO_VALUE)),
            }
        }
    }
}

/// True when `s` can stand in a query value as it is: unreserved characters, valid `%XX`
/// escapes, and the sub-delimiters that do not split a query (`&`, `=`, `+`, `#` do).
fn is_query_safe(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                if !(b.get(i + 1).is_some_and(u8::is_ascii_hexdigit) && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
                {
                    return false;
                }
                i += 3;
                continue;
            }
            c if c.is_ascii_alphanumeric() || b"-._~!$'()*,;:@/?".contains(&c) => {}
            _ => return false,
        }
        i += 1;
    }
    true
}

/// A string's literal text and `{macro}`s.
fn parse_segments(s: &str) -> Result<Vec<Segment>, String> {
    let mut segments = Vec::new();
    let mut rest = s;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            segments.push(Segment::Literal(rest[..open].to_owned()));
        }
        let after = &rest[open + 1..];
        let close = after.find('}').ok_or_else(|| format!("unclosed '{{' in \"{s}\""))?;
        let name = &after[..close];
        let m = Macro::parse(name).ok_or_else(|| format!("unknown macro {{{name}}}"))?;
        segments.push(Segment::Macro(m));
        rest = &after[close + 1..];
    }
    if rest.contains('}') {
        return Err(format!("stray '}}' in \"{s}\""));
    }
    if !rest.is_empty() {
        segments.push(Segment::Literal(rest.to_owned()));
    }
    Ok(segments)
}

/// Percent-encodes one macro value exactly as templates do; for deep links filled by callers.
pub fn encode_macro_value(v: &str) -> String {
    utf8_percent_encode(v, MACRO_VALUE).to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const GOOD: &str = include_str!("../../../tests/fixtures/program-good.toml");

    #[test]
    fn loads_a_good_program() {
        let p = Program::from_toml(GOOD).unwrap();
        let link = p.link("demo").unwrap();
        assert_eq!(link.offer.id, "shoes");
        assert_eq!(link.offer.window_days, 30);
        assert_eq!(link.offer.goals[1].payout, Payout::Fixed { amount: 250 });
        assert_eq!(link.offer.default_goal(), "sale");
        assert_eq!(p.digest.len(), 64);
        assert!(p.link("nope").is_none());
    }

    #[test]
    fn reports_every_problem_at_once() {
        let bad = r#"
[[advertisers]]
id = "acme"

[[affiliates]]
id = "bad id!"

[[offers]]
id = "o1"
advertiser = "nobody"
destination = "https://{sub1}.example/"
currency = "XXY"
window_days = 0
model = "linear"
goals = [{ id = "g", payout = { kind = "fixed", amount = "1.234" } }]

[[links]]
code = "l1"
offer = "missing"
affiliate = "ghost"
"#;
        let problems = Program::from_toml(bad).unwrap_err().problems();
        let all = problems.join("\n");
        for needle in [
            "advertisers[acme]: needs postback_tokens or hmac_secrets",
            "affiliates[bad id!]",
            "offers[o1].advertiser: unknown advertiser",
            "offers[o1].destination: macros may only appear after the host",
            "offers[o1].currency: unknown currency",
            "offers[o1].window_days",
            "offers[o1].model",
            "links[l1].affiliate: unknown affiliate",
            "links[l1].offer: unknown offer",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = Program::from_toml("[[affiliates]]\nid = \"a\"\ncolour = \"red\"\n").unwrap_err();
        assert!(matches!(err, ProgramError::Syntax(ref s) if s.contains("colour")), "{err}");
    }

    #[test]
    fn payout_errors() {
        let base = |payout: &str| GOOD.replace(r#"payout = { kind = "fixed", amount = "2.50" }"#, payout);
        for (payout, needle) in [
            (r#"payout = { kind = "fixed", amount = "2.505" }"#, "payout.amount"),
            (r#"payout = { kind = "fixed", amount = "-1" }"#, "payout.amount"),
            (r#"payout = { kind = "revshare", bps = 10001 }"#, "payout.bps"),
            (r#"payout = { kind = "revshare", amount = "1" }"#, "takes bps"),
            (r#"payout = { kind = "cpm" }"#, "payout.kind"),
            (r#"payout = { kind = "tiered", amount = "1" }"#, "takes tiers"),
        ] {
            let e = Program::from_toml(&base(payout)).unwrap_err().to_string();
            assert!(e.contains(needle), "{payout}: {e}");
        }
    }

    #[test]
    fn payout_minimums_come_from_the_group_then_the_program() {
        let src = format!(
            "payout_minimum = {{ USD = \"50.00\" }}\n{}\n[[groups]]\nid = \"gold\"\npayout_minimum = {{ USD = \"10\", EUR = \"5\" }}\n",
            GOOD.replacen("[[affiliates]]\nid = \"aff1\"", "[[affiliates]]\nid = \"aff1\"\ngroup = \"gold\"", 1)
        );
        let p = Program::from_toml(&src).unwrap();
        let (usd, eur) = (Currency::from_code("USD").unwrap(), Currency::from_code("EUR").unwrap());
        assert_eq!(p.payout_minimum_for("aff1", usd), 1_000);
        assert_eq!(p.payout_minimum_for("aff1", eur), 500);
        assert_eq!(p.payout_minimum_for("aff2", usd), 5_000);
        assert_eq!(p.payout_minimum_for("aff2", eur), 0);
        let bad = format!("payout_minimum = {{ USD = \"-1\" }}\n{GOOD}");
        assert!(Program::from_toml(&bad).unwrap_err().to_string().contains("payout_minimum.USD"));
    }

    #[test]
    fn recurring_terms_load_and_bad_ones_are_named() {
        let goal = |extra: &str| {
            GOOD.replace(
                r#"payout = { kind = "fixed", amount = "2.50" }"#,
                &format!("payout = {{ kind = \"fixed\", amount = \"2.50\" }}\n{extra}"),
            )
        };
        let recurring = |src: &str| {
            let p = Program::from_toml(src).unwrap();
            p.offers.values().flat_map(|o| o.goals.iter().map(|g| g.recurring).collect::<Vec<_>>()).collect::<Vec<_>>()
        };
        assert!(recurring(&goal("recurring_months = 12")).contains(&Recurring::Months(12)));
        assert!(recurring(&goal("lifetime = true")).contains(&Recurring::Lifetime));
        assert!(recurring(GOOD).iter().all(|r| *r == Recurring::Off));
        for (extra, needle) in [
            ("recurring_months = 0", "recurring_months: must be 1-1200, got 0"),
            ("recurring_months = 1201", "recurring_months: must be 1-1200"),
            ("recurring_months = 3\nlifetime = true", "exclude each other"),
        ] {
            let e = Program::from_toml(&goal(extra)).unwrap_err().to_string();
            assert!(e.contains(needle), "{extra}: {e}");
        }
    }

    const RULES: &str = include_str!("../../../tests/fixtures/program-rules.toml");

    /// `RULES` appended to `GOOD`, with its goal moved inside the shoes offer.
    fn with_rules(extra: &str) -> String {
        let (head, links) = GOOD.split_once("[[links]]").unwrap();
        let (coupons, goal) = RULES.split_once("[[offers.goals]]").unwrap();
        format!("{head}[[offers.goals]]{goal}{extra}\n[[links]]{links}{coupons}")
    }

    #[test]
    fn loads_tiers_overrides_caps_milestones_and_coupons() {
        let p = Program::from_toml(&with_rules("")).unwrap();
        let g = p.offer("shoes").unwrap().goal("tiered").unwrap();
        assert_eq!((g.daily_cap, g.affiliate_daily_cap), (Some(100), Some(10)));
        assert_eq!(g.payout.rate_for(1), (Rate::Fixed { amount: 100 }, Some(1)));
        assert_eq!(g.payout.rate_for(10), (Rate::Fixed { amount: 100 }, Some(1)));
        assert_eq!(g.payout.rate_for(11), (Rate::RevShare { bps: 500 }, Some(2)));
        assert_eq!(g.payout.rate_for(u32::MAX), (Rate::RevShare { bps: 500 }, Some(2)));
        let o = &g.overrides["aff1"];
        assert_eq!((o.payout.clone(), o.daily_cap), (Some(Payout::Fixed { amount: 300 }), Some(20)));
        assert_eq!(g.milestones, vec![Milestone { count: 10, bonus: 500 }, Milestone { count: 50, bonus: 2500 }]);
        let c = p.coupon("SPRING10").unwrap();
        assert_eq!((c.offer.as_str(), c.affiliate.as_str()), ("shoes", "aff1"));
        assert!(p.coupon("spring10").is_some());
        assert!(p.coupon("other").is_none());
        assert!(p.coupon("").is_none());
        assert_eq!(p.max_window_days(), 30);
    }

    fn fixed(amount: &str) -> Option<crate::managed::PayoutSpec> {
        Some(crate::managed::PayoutSpec { kind: "fixed".into(), amount: Some(amount.into()), bps: None, tiers: None })
    }

    fn terms(offer: &str, goal: &str) -> TermsSpec {
        TermsSpec { offer: offer.into(), goal: goal.into(), payout: None, daily_cap: None, hold_days: None }
    }

    fn affiliate(id: &str, group: &str) -> AffiliateSpec {
        AffiliateSpec {
            id: id.into(),
            name: String::new(),
            group: group.into(),
            active: true,
            terms: vec![],
            tokens: vec![],
            postback_url: String::new(),
        }
    }

    #[test]
    fn terms_come_from_the_override_the_affiliate_its_group_then_the_goal() {
        let file = format!(
            "{}\n[[groups]]\nid = \"gold\"\n[[groups.terms]]\noffer = \"shoes\"\nhold_days = 3\npayout = {{ kind = \"fixed\", amount = \"4.00\" }}\n",
            with_rules("")
        );
        let base = Program::from_toml(&file).unwrap();
        let offer = base.offer("shoes").unwrap().clone();
        let tiered = offer.goal("tiered").unwrap();
        // No group yet: the goal's terms (and aff1's override from the file).
        let t = base.terms(&offer, tiered, "aff2");
        assert_eq!((t.payout_from, t.daily_cap, t.hold_days), (TermsFrom::Goal, Some(10), 0));
        let edit = Edit {
            affiliates: vec![
                affiliate("aff2", "gold"),
                AffiliateSpec {
                    terms: vec![TermsSpec { payout: fixed("7.00"), daily_cap: Some(1), ..terms("shoes", "tiered") }],
                    ..affiliate("aff1", "gold")
                },
                affiliate("aff3", "gold"),
            ],
            groups: vec![],
            ..Edit::default()
        };
        let p = base.with_edit(&edit).unwrap();
        assert_ne!(p.digest, base.digest);
        assert_eq!(p.source, base.source, "the base stays the file");
        let offer = p.offer("shoes").unwrap().clone();
        let tiered = offer.goal("tiered").unwrap();
        let t = p.terms(&offer, tiered, "aff2");
        assert_eq!(t.payout_from, TermsFrom::Group("gold"));
        assert_eq!((t.payout, t.daily_cap, t.hold_days), (&Payout::Fixed { amount: 400 }, Some(10), 3));
        // aff1: the file's override beats its own terms' payout; its own cap beats the group's.
        let t = p.terms(&offer, tiered, "aff1");
        assert_eq!(t.payout_from, TermsFrom::Affiliate("aff1"));
        assert_eq!((t.payout, t.daily_cap, t.hold_days), (&Payout::Fixed { amount: 300 }, Some(20), 3));
        // The same edit twice is the same program.
        assert_eq!(p.with_edit(&edit).unwrap().digest, p.digest);
        // Recomposed from the file and the managed entities: the same digest.
        assert_eq!(Program::compose(&file, p.managed.clone()).unwrap().digest, p.digest);
    }

    #[test]
    fn disabled_affiliates_links_and_coupons_do_not_credit() {
        let p = Program::from_toml(&with_rules("")).unwrap();
        assert!(p.link("demo").is_some() && p.coupon("SPRING10").is_some());
        let off = p
            .with_edit(&Edit {
                affiliates: vec![AffiliateSpec { active: false, ..affiliate("aff1", "") }],
                ..Edit::default()
            })
            .unwrap();
        assert!(off.link("demo").is_none(), "a disabled affiliate's link does not redirect");
        assert!(off.any_link("demo").is_some_and(|l| l.active && !l.enabled));
        assert!(off.coupon("spring10").is_none());
        assert!(off.any_coupon("spring10").is_some_and(|c| c.active && !c.enabled));
        let coupon_off = p
            .with_edit(&Edit {
                coupons: vec![CouponSpec {
                    code: "spring10".into(),
                    offer: "shoes".into(),
                    affiliate: "aff1".into(),
                    active: false,
                }],
                ..Edit::default()
            })
            .unwrap();
        assert!(coupon_off.coupon("SPRING10").is_none());
        assert_eq!(coupon_off.coupons().count(), 1, "the managed coupon replaced the file's, ignoring case");
    }

    #[test]
    fn managed_entities_are_validated_with_the_program() {
        let p = Program::from_toml(&with_rules("")).unwrap();
        let edit = Edit {
            groups: vec![GroupSpec {
                id: "g".into(),
                name: String::new(),
                terms: vec![
                    terms("nope", ""),
                    TermsSpec { hold_days: Some(9999), ..terms("shoes", "missing") },
                    TermsSpec { payout: fixed("1.234"), ..terms("shoes", "") },
                ],
                payout_minimum: [("XYZ", "1"), ("USD", "0.001")].map(|(c, a)| (c.into(), a.into())).into(),
                postback_url: "https://{affiliate}.example/".into(),
            }],
            affiliates: vec![affiliate("bad id", ""), affiliate("a9", "platinum")],
            links: vec![LinkSpec {
                code: "x".into(),
                offer: "shoes".into(),
                affiliate: "ghost".into(),
                active: true,
                postback_url: "https://net.example/?x={nope}".into(),
            }],
            ..Edit::default()
        };
        let all = p.with_edit(&edit).unwrap_err().problems().join("\n");
        for needle in [
            "groups[g].terms[nope].offer: unknown offer \"nope\"",
            "groups[g].terms[shoes.missing].goal: offer \"shoes\" has no goal \"missing\"",
            "groups[g].terms[shoes.missing].hold_days: must be 0-3650",
            "groups[g].terms[shoes].payout.amount",
            "affiliates[bad id]: ids must be",
            "affiliates[a9].group: unknown group \"platinum\"",
            "links[x].affiliate: unknown affiliate \"ghost\"",
            "links[x].postback_url: unknown macro {nope}",
            "terms[nope]: sets nothing",
            "groups[g].payout_minimum.XYZ: ",
            "groups[g].payout_minimum.USD: ",
            "groups[g].postback_url: macros may only appear after the host",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
    }

    #[test]
    fn links_parse_their_postback_url_from_the_file_and_from_edits() {
        let file = with_rules("").replace(
            "[[links]]\ncode = \"demo\"",
            "[[links]]\ncode = \"demo\"\npostback_url = \"https://link.example/pb?cid={click_id}&s={status}\"",
        );
        let p = Program::from_toml(&file).unwrap();
        let demo = p.link("demo").unwrap();
        assert_eq!(demo.postback_url, "https://link.example/pb?cid={click_id}&s={status}");
        let rendered = demo.postback.as_ref().unwrap().render(|m| if m == "status" { "approved" } else { "C1" });
        assert_eq!(rendered, "https://link.example/pb?cid=C1&s=approved");
        assert!(p.notifies(), "a link's URL is a receiver");

        // The same checks as an affiliate's, named by the link's code, from a file or an edit.
        let bad = with_rules("").replace(
            "[[links]]\ncode = \"demo\"",
            "[[links]]\ncode = \"demo\"\npostback_url = \"https://{affiliate}.example/\"",
        );
        let all = Program::from_toml(&bad).unwrap_err().problems().join("\n");
        assert!(all.contains("links[demo].postback_url: macros may only appear after the host"), "{all}");
        let link = |url: &str| LinkSpec {
            code: "l2".into(),
            offer: "nope".into(),
            affiliate: "aff1".into(),
            active: true,
            postback_url: url.into(),
        };
        let all = p.with_edit(&Edit { links: vec![link("ftp://x.example/")], ..Edit::default() }).unwrap_err();
        let all = all.problems().join("\n");
        assert!(all.contains("links[l2].postback_url: must be an absolute http(s) URL"), "{all}");
        assert!(all.contains("links[l2].offer: unknown offer"), "every problem at once: {all}");
    }

    #[test]
    fn postbacks_go_to_the_link_then_the_affiliate_then_its_group() {
        let file =
            format!("{}\n[[groups]]\nid = \"gold\"\npostback_url = \"https://group.example/pb\"\n", with_rules(""));
        let p = Program::from_toml(&file).unwrap();
        let url = |p: &Program, link: &str, affiliate: &str| {
            p.postback_for(link, affiliate).map(|t| t.render(|_| "")).unwrap_or_default()
        };
        let spec = |code: &str, affiliate: &str, url: &str| LinkSpec {
            code: code.into(),
            offer: "shoes".into(),
            affiliate: affiliate.into(),
            active: true,
            postback_url: url.into(),
        };
        let p = p
            .with_edit(&Edit {
                affiliates: vec![
                    AffiliateSpec { postback_url: "https://aff1.example/pb".into(), ..affiliate("aff1", "gold") },
                    affiliate("aff2", "gold"),
                    affiliate("aff3", ""),
                ],
                links: vec![
                    spec("own", "aff1", "https://link.example/pb"),
                    spec("plain", "aff1", ""),
                    spec("grouped", "aff2", ""),
                    spec("lone", "aff3", "https://lone.example/pb"),
                ],
                ..Edit::default()
            })
            .unwrap();
        assert_eq!(url(&p, "own", "aff1"), "https://link.example/pb");
        assert_eq!(url(&p, "plain", "aff1"), "https://aff1.example/pb", "a link without one: the affiliate's");
        assert_eq!(url(&p, "", "aff1"), "https://aff1.example/pb", "no click: the affiliate's");
        assert_eq!(url(&p, "unknown", "aff1"), "https://aff1.example/pb", "a link the program lacks");
        assert_eq!(url(&p, "grouped", "aff2"), "https://group.example/pb", "neither: the group's");
        assert_eq!(url(&p, "lone", "aff3"), "https://lone.example/pb", "a link's own needs no affiliate's");
        assert_eq!(url(&p, "", "aff3"), "");
        assert_eq!(url(&p, "own", "aff2"), "https://group.example/pb", "another affiliate's link does not count");

        // A disabled link still routes its commissions' later changes; a link moved to another
        // affiliate no longer takes the first one's.
        let off = p
            .with_edit(&Edit {
                links: vec![LinkSpec { active: false, ..spec("own", "aff1", "https://link.example/pb") }],
                ..Edit::default()
            })
            .unwrap();
        assert_eq!(url(&off, "own", "aff1"), "https://link.example/pb");
        let moved = p
            .with_edit(&Edit { links: vec![spec("own", "aff3", "https://link.example/pb")], ..Edit::default() })
            .unwrap();
        assert_eq!(url(&moved, "own", "aff1"), "https://aff1.example/pb");
        assert_eq!(url(&moved, "own", "aff3"), "https://link.example/pb");
    }

    #[test]
    fn rule_errors_name_the_field() {
        for (from, to, needle) in [
            (
                r#"{ from = 1, amount = "1.00" }, { from = 11"#,
                r#"{ from = 2, amount = "1.00" }, { from = 11"#,
                "first tier must start at from = 1",
            ),
            (r#"{ from = 11, bps = 500 }"#, r#"{ from = 1, bps = 500 }"#, "ascending order"),
            (
                r#"{ from = 11, bps = 500 }"#,
                r#"{ from = 11, bps = 500, amount = "1" }"#,
                "exactly one of amount or bps",
            ),
            (r#"{ from = 11, bps = 500 }"#, r#"{ from = 11, bps = 50000 }"#, "bps: must be 0-10000"),
            (r#"kind = "tiered", tiers"#, r#"kind = "fixed", tiers"#, "kind \"fixed\" takes amount"),
            (
                r#"tiers = [{ from = 1, amount = "1.00" }, { from = 11, bps = 500 }]"#,
                "tiers = []",
                "needs at least one tier",
            ),
            (
                r#"affiliate = "aff1"
  payout"#,
                r#"affiliate = "nobody"
  payout"#,
                "overrides[nobody].affiliate: unknown affiliate",
            ),
            (r#"count = 50"#, r#"count = 10"#, "duplicate count"),
            (r#"count = 50"#, r#"count = 0"#, "count: must be at least 1"),
            (r#"bonus = "25.00""#, r#"bonus = "25.001""#, "milestones[50].bonus"),
            (
                r#"offer = "shoes"
affiliate = "aff1""#,
                r#"offer = "boots"
affiliate = "aff9""#,
                "coupons[Spring10].affiliate: unknown affiliate",
            ),
            (r#"code = "Spring10""#, r#"code = "Spring 10""#, "printable ASCII"),
        ] {
            let src = with_rules("").replace(from, to);
            assert_ne!(src, with_rules(""), "replacement {from:?} did not apply");
            let e = Program::from_toml(&src).unwrap_err().to_string();
            assert!(e.contains(needle), "{to}: {e}");
        }
        let dup =
            format!("{}\n[[coupons]]\ncode = \"SPRING10\"\noffer = \"shoes\"\naffiliate = \"aff1\"\n", with_rules(""));
        assert!(Program::from_toml(&dup).unwrap_err().to_string().contains("duplicate code"));
    }

    #[test]
    fn templates_encode_every_macro_value() {
        let t = Template::parse("https://shop.example/l?cid={click_id}&s={sub1}#{sub2}").unwrap();
        let out = t.render(|m| match m {
            Macro::ClickId => "01ABC",
            Macro::Sub(1) => "a&b=c\r\nSet-Cookie: x",
            _ => "#/?",
        });
        assert_eq!(out, "https://shop.example/l?cid=01ABC&s=a%26b%3Dc%0D%0ASet-Cookie%3A%20x#%23%2F%3F");
    }

    #[test]
    fn template_errors() {
        for bad in [
            "https://shop.example/{nope}",
            "https://shop.example/{click_id",
            "https://shop.example/}",
            "ftp://shop.example/",
            "/relative/{click_id}",
            "https://{sub1}/",
            "https://shop.{sub1}.example/",
            "https://user@shop.example/",
            "https://shop.example/a b",
        ] {
            assert!(Template::parse(bad).is_err(), "{bad} accepted");
        }
        assert!(Template::parse("https://shop.example?x={sub1}").is_ok());
    }

    #[test]
    fn deep_links_get_the_destinations_click_parameters() {
        let value = |m| match m {
            Macro::ClickId => "01ARZ3NDEKTSV4RRFFQ69G5FAV",
            Macro::AffId => "aff 1",
            Macro::Sub(1) => "a&b",
            _ => "",
        };
        let offer = |destination: &str, params: Option<&str>| {
            let extra = params.map(|p| format!("deep_link_params = {p}\n")).unwrap_or_default();
            let src = GOOD.replacen(
                "destination = \"https://shop.example/l?cid={click_id}&a={aff_id}&s={sub1}\"",
                &format!("destination = \"{destination}\"\n{extra}"),
                1,
            );
            assert_ne!(src, GOOD, "program-good.toml's shoes destination changed");
            Program::from_toml(&src).unwrap().offer("shoes").unwrap().clone()
        };
        let by_default = offer("https://shop.example/l?cid={click_id}&aff={aff_id}&s1=x{sub1}&utm=tally#top", None);
        let names: Vec<&str> = by_default.deep_link_params.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["cid", "aff", "s1"], "only the parameters that carry a macro");
        let merged = |o: &Offer, link: &str| o.deep_link_location(&o.check_deep_link(link).unwrap(), value);
        // Merged into the query, values encoded, fragment and other parameters kept as sent.
        assert_eq!(
            merged(&by_default, "https://shop.example/p/42?color=red&q=a%20b#reviews"),
            "https://shop.example/p/42?color=red&q=a%20b&cid=01ARZ3NDEKTSV4RRFFQ69G5FAV&aff=aff%201&s1=xa%26b#reviews"
        );
        // No query yet; a stale click ID (however its name is encoded) is replaced.
        assert_eq!(
            merged(&by_default, "https://shop.example/p"),
            "https://shop.example/p?cid=01ARZ3NDEKTSV4RRFFQ69G5FAV&aff=aff%201&s1=xa%26b"
        );
        assert_eq!(
            merged(&by_default, "https://shop.example/p?c%69d=OLD&x=1&&cid=OLD2"),
            "https://shop.example/p?x=1&cid=01ARZ3NDEKTSV4RRFFQ69G5FAV&aff=aff%201&s1=xa%26b"
        );
        // Named explicitly, or none at all.
        let named = offer("https://shop.example/l?cid={click_id}", Some("{ clickref = \"tly-{click_id}\" }"));
        assert_eq!(
            merged(&named, "https://shop.example/p?a=1"),
            "https://shop.example/p?a=1&clickref=tly-01ARZ3NDEKTSV4RRFFQ69G5FAV"
        );
        let none = offer("https://shop.example/l?cid={click_id}", Some("{}"));
        assert_eq!(merged(&none, "https://shop.example/p?a=1#f"), "https://shop.example/p?a=1#f");
        let path_only = offer("https://shop.example/l/{click_id}", None);
        assert!(path_only.deep_link_params.is_empty());
    }

    #[test]
    fn browser_policies_default_from_the_offer_and_cookie_policies_from_the_advertiser() {
        let src = GOOD
            .replacen("currency = \"usd\"", "currency = \"usd\"\nrequire_txid = true\nmax_browser_amount = \"250\"", 1)
            .replacen("  hold_days = 14", "  hold_days = 14\n  browser_reports = \"pending_review\"", 1)
            .replacen(
                "  id = \"lead\"",
                "  id = \"lead\"\n  require_txid = false\n  browser_reports = \"postback_only\"",
                1,
            )
            .replacen(
                "postback_tokens = [\"acme-token\"]",
                "postback_tokens = [\"acme-token\"]\ncookie_domain = \".Shop.Example\"\ncookie_same_site = \"strict\"",
                1,
            );
        let p = Program::from_toml(&src).unwrap();
        let shoes = p.offer("shoes").unwrap();
        let sale = shoes.goal("sale").unwrap().browser;
        assert_eq!(
            sale,
            BrowserPolicy { reports: BrowserReports::PendingReview, max_amount: Some(25_000), require_txid: true }
        );
        let lead = shoes.goal("lead").unwrap().browser;
        assert_eq!(
            lead,
            BrowserPolicy { reports: BrowserReports::PostbackOnly, max_amount: Some(25_000), require_txid: false }
        );
        assert_eq!(&*shoes.cookie.attributes, "; Path=/; HttpOnly; SameSite=Strict; Domain=shop.example");
        assert_eq!(shoes.cookie.secure, None);
        // Without keys: accept everything, the default cookie.
        let plain = Program::from_toml(GOOD).unwrap();
        assert_eq!(plain.offer("shoes").unwrap().goal("sale").unwrap().browser, BrowserPolicy::default());
        assert_eq!(plain.offer("shoes").unwrap().cookie, CookiePolicy::default());

        for (edit, want) in [
            (
                "browser_reports = \"maybe\"",
                "offers[shoes].browser_reports: expected accept, pending_review or postback_only",
            ),
            ("max_browser_amount = \"1.234\"", "offers[shoes].max_browser_amount:"),
        ] {
            let src = GOOD.replacen("currency = \"usd\"", &format!("currency = \"usd\"\n{edit}"), 1);
            let e = Program::from_toml(&src).unwrap_err().to_string();
            assert!(e.contains(want), "{edit}: {e}");
        }
        for (edit, want) in [
            ("cookie_same_site = \"none\"", "advertisers[acme].cookie_same_site: \"none\" needs cookie_secure = true"),
            ("cookie_same_site = \"loose\"", "advertisers[acme].cookie_same_site: expected lax, strict or none"),
            (
                "cookie_domain = \"localhost\"",
                "advertisers[acme].cookie_domain: \"localhost\" is not a domain with a dot",
            ),
            ("cookie_domain = \"*.shop.example\"", "advertisers[acme].cookie_domain:"),
        ] {
            let src = GOOD.replacen(
                "postback_tokens = [\"acme-token\"]",
                &format!("postback_tokens = [\"acme-token\"]\n{edit}"),
                1,
            );
            let e = Program::from_toml(&src).unwrap_err().to_string();
            assert!(e.contains(want), "{edit}: {e}");
        }
        let none = GOOD.replacen(
            "postback_tokens = [\"acme-token\"]",
            "postback_tokens = [\"acme-token\"]\ncookie_same_site = \"none\"\ncookie_secure = true",
            1,
        );
        let p = Program::from_toml(&none).unwrap();
        assert_eq!(p.offer("shoes").unwrap().cookie.secure, Some(true));
    }

    #[test]
    fn deep_link_param_errors_name_the_parameter() {
        for (params, want) in [
            ("{ \"a b\" = \"{click_id}\" }", "deep_link_params.a b: \"a b\" is not a parameter name"),
            ("{ cid = \"{nope}\" }", "deep_link_params.cid: unknown macro {nope}"),
            (
                "{ cid = \"x&y={click_id}\" }",
                "deep_link_params.cid: \"x&y={click_id}\": text outside macros must be query-safe",
            ),
            ("{ cid = \"%zz{click_id}\" }", "must be query-safe"),
        ] {
            let src =
                GOOD.replacen("currency = \"usd\"", &format!("currency = \"usd\"\ndeep_link_params = {params}"), 1);
            assert_ne!(src, GOOD);
            let e = Program::from_toml(&src).unwrap_err().to_string();
            assert!(e.contains(want), "{params}: {e}");
        }
    }

    #[test]
    fn deep_links_never_leave_allowed_hosts() {
        let p = Program::from_toml(GOOD).unwrap();
        let offer = p.offer("shoes").unwrap();
        for good in ["https://shop.example/p/1", "http://www.shop.example/x?y=1", "HTTPS://SHOP.EXAMPLE/"] {
            assert!(offer.check_deep_link(good).is_ok(), "{good} refused");
        }
        for bad in [
            "//evil.example",
            "https:evil.example",
            "https:/evil.example",
            "a.example@evil.example",
            "https://shop.example@evil.example/",
            "https://shop.example:pw@evil.example/",
            "https://evil.example\\@shop.example/",
            "https://evil.example\\.shop.example/",
            "https://shop.example%2eevil.example/",
            "https://evil.example%2fshop.example/",
            "https://evil.example/.shop.example",
            "https://shop.example.evil.example/",
            "https://evilshop.example/",
            "https://shop.example\r\nLocation: https://evil.example/",
            " https://evil.example/",
            "javascript:alert(1)//shop.example",
            "data:text/html,shop.example",
            "https://127.0.0.1/",
            "https://[::1]/",
        ] {
            match offer.check_deep_link(bad) {
                Err(_) => {}
                Ok(u) => assert!(
                    u.host_str() == Some("shop.example") || u.host_str().is_some_and(|h| h.ends_with(".shop.example")),
                    "{bad} led to {u}"
                ),
            }
        }
    }

    #[test]
    fn host_patterns() {
        let exact = HostPattern::parse("Shop.Example").unwrap();
        assert!(exact.matches("shop.example"));
        assert!(!exact.matches("www.shop.example"));
        let sub = HostPattern::parse("*.shop.example").unwrap();
        assert!(sub.matches("www.shop.example"));
        assert!(!sub.matches("shop.example"));
        assert!(!sub.matches("evilshop.example"));
        for bad in ["", "*.", "a..b", "a b", "evil.example/", "*.*.x"] {
            assert!(HostPattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn credentials_are_named_and_resolved_from_the_store_never_read_from_the_source() {
        let src = "[[advertisers]]\nid = \"acme\"\npostback_tokens = [\"t-new\", \"t-old\"]\nhmac_secrets = [\"k\"]\n";
        let mut p = Program::from_toml(src).unwrap();
        let a = &p.advertisers["acme"];
        assert_eq!(a.postback_tokens, vec![Credential::named("t-new"), Credential::named("t-old")]);
        assert!(p.inline_credentials().is_empty());
        let store = |name: &str| match name {
            "t-new" => Some("0123456789abcdef-new".to_owned()),
            "k" => Some("short".to_owned()),
            _ => None,
        };
        let problems = p.resolve_credentials(store).unwrap_err().problems();
        assert_eq!(
            problems,
            [
                "advertisers[acme].postback_tokens: secret \"t-old\" is not in the secrets store",
                "advertisers[acme].hmac_secrets: secret \"k\" is shorter than 16 characters",
            ]
        );
        p.resolve_credentials(|n| Some(format!("{n}-0123456789abcdef"))).unwrap();
        assert_eq!(p.advertisers["acme"].postback_tokens[1].value(), Some("t-old-0123456789abcdef"));
        // Debug output names credentials and never shows a value.
        assert!(!format!("{:?}", p.advertisers["acme"]).contains("0123456789abcdef"));
    }

    #[test]
    fn inline_credentials_of_old_programs_still_parse_and_are_reported_never_kept() {
        let src = "[[advertisers]]\nid = \"acme\"\npostback_token = \"0123456789abcdef\"\nhmac_secret = \"x\"\n";
        let p = Program::from_toml(src).unwrap();
        assert_eq!(p.inline_credentials(), ["advertisers[acme].postback_token", "advertisers[acme].hmac_secret"]);
        let a = &p.advertisers["acme"];
        assert!(a.postback_tokens.is_empty() && a.hmac_secrets.is_empty());
    }

    #[test]
    fn credential_names_are_checked() {
        let src =
            "[[advertisers]]\nid = \"acme\"\npostback_tokens = [\"a b\", \"../x\", \"ok\"]\nhmac_secrets = [\"ok\"]\n";
        let all = Program::from_toml(src).unwrap_err().problems().join("\n");
        assert!(all.contains("\"a b\" is not a secret name") && all.contains("\"../x\" is not a secret name"), "{all}");
        assert!(all.contains("advertisers[acme].hmac_secrets: \"ok\" named twice"), "{all}");
        assert!(
            is_credential_name("acme-token.v2_1") && !is_credential_name("") && !is_credential_name(&"x".repeat(65))
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod incremental {
    use super::*;
    use proptest::prelude::*;

    const FILE: &str = include_str!("../../../tests/fixtures/program-good.toml");

    /// Small pools, so edits hit each other's keys, unknown references and toggles.
    fn any_edit() -> impl Strategy<Value = Edit> {
        let id = prop::sample::select(vec!["a1", "a2", "a3", "aff1", "ghost", "bad id"]);
        let group = prop::sample::select(vec!["", "g1", "g2", "nope"]);
        let offer = prop::sample::select(vec!["shoes", "hotels", "nope"]);
        let code = prop::sample::select(vec!["c1", "C1", "c2", "demo", "x y"]);
        let token = prop::option::of(prop::sample::select(vec!["aa", "bb"]));
        let affiliate = (id.clone(), group.clone(), any::<bool>(), prop::option::of(0u32..5), token).prop_map(
            |(id, group, active, hold, token)| AffiliateSpec {
                id: id.into(),
                name: String::new(),
                group: group.into(),
                active,
                postback_url: String::new(),
                tokens: token
                    .map(|t| vec![TokenSpec { id: "t1".into(), name: String::new(), hash: t.repeat(32) }])
                    .unwrap_or_default(),
                terms: hold
                    .map(|d| {
                        vec![TermsSpec {
                            offer: "shoes".into(),
                            goal: String::new(),
                            payout: None,
                            daily_cap: None,
                            hold_days: Some(d),
                        }]
                    })
                    .unwrap_or_default(),
            },
        );
        let groups = prop::collection::vec(prop::sample::select(vec!["g1", "g2", "bad g"]), 0..2).prop_map(|ids| {
            ids.into_iter()
                .map(|id| GroupSpec {
                    id: id.into(),
                    name: String::new(),
                    terms: vec![],
                    payout_minimum: BTreeMap::new(),
                    postback_url: String::new(),
                })
                .collect()
        });
        let postback = prop::sample::select(vec!["", "https://l.example/pb?c={click_id}", "https://{click_id}.bad/"]);
        let links = prop::collection::vec((code.clone(), offer.clone(), id.clone(), any::<bool>(), postback), 0..3)
            .prop_map(|v| {
                v.into_iter()
                    .map(|(c, o, a, active, pb)| LinkSpec {
                        code: c.into(),
                        offer: o.into(),
                        affiliate: a.into(),
                        active,
                        postback_url: pb.into(),
                    })
                    .collect()
            });
        let coupons = prop::collection::vec((code, offer, id, any::<bool>()), 0..3).prop_map(|v| {
            v.into_iter()
                .map(|(c, o, a, active)| CouponSpec { code: c.into(), offer: o.into(), affiliate: a.into(), active })
                .collect()
        });
        (groups, prop::collection::vec(affiliate, 0..3), coupons, links)
            .prop_map(|(groups, affiliates, coupons, links)| Edit { groups, affiliates, coupons, links })
    }

    /// Everything a program decides by, in a comparable form.
    fn view(p: &Program) -> (String, Vec<String>, Vec<String>, Vec<String>, Vec<String>) {
        let affiliates = p
            .affiliates
            .sorted()
            .iter()
            .map(|(k, a)| format!("{k} {:?} {} {:?}", a.group, a.active, a.terms))
            .collect();
        let groups = p.groups.values().map(|g| format!("{} {:?}", g.id, g.terms)).collect();
        let mut links: Vec<String> = p
            .links()
            .map(|l| {
                let pb = (&l.postback_url, l.postback.is_some());
                format!("{} {} {} {} {} {pb:?}", l.code, l.offer.id, l.affiliate, l.active, l.enabled)
            })
            .collect();
        links.sort();
        let mut coupons: Vec<String> =
            p.coupons().map(|c| format!("{} {} {} {} {}", c.code, c.offer, c.affiliate, c.active, c.enabled)).collect();
        coupons.sort();
        let mut tokens: Vec<String> = p.tokens.iter().map(|(h, a)| format!("{h} {a}")).collect();
        tokens.sort();
        (p.digest.clone(), affiliates, groups, links, [coupons, tokens].concat())
    }

    proptest! {
        /// An edit applied incrementally gives exactly the program composed from scratch, and
        /// is refused exactly when that one is.
        #[test]
        fn with_edit_is_compose(edits in prop::collection::vec(any_edit(), 1..8)) {
            let mut p = Program::from_toml(FILE).unwrap();
            for edit in edits {
                let mut managed = (*p.managed).clone();
                managed.apply(&edit);
                let full = Program::compose(&p.source, Arc::new(managed));
                match (p.with_edit(&edit), full) {
                    (Ok(inc), Ok(full)) => {
                        prop_assert_eq!(view(&inc), view(&full));
                        p = inc;
                    }
                    (Err(_), Err(_)) => {}
                    (inc, full) => prop_assert!(false, "incremental {:?} but composed {:?}", inc.map(|p| p.digest), full.map(|p| p.digest)),
                }
            }
        }
    }
}
