//! A click's query string (sub IDs, source, deep link) and the redirect it leads to.

use tally_model::click_flags;
use tally_model::program::{Macro, Offer, PassQuery, Template};

/// Longest `src=` value kept; longer ones are truncated and the click flagged.
pub const MAX_SOURCE: usize = 128;

/// What a click's query string carries. Unknown parameters are ignored: networks append
/// their own.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ClickQuery {
    /// `sub1`..`sub5` (or `s1`..`s5`, or TUNE's `aff_sub`/`aff_sub1`..`aff_sub5`, as on
    /// postbacks), each cut to `params::MAX_SUB` bytes. Of two names for one sub ID, the
    /// later in the query wins.
    pub subs: [String; 5],
    pub source: String,
    /// The first `url=`: with parameter pollution (`url=a&url=b`) the later ones are ignored,
    /// so the value checked is the value followed.
    pub deep_link: Option<String>,
    /// `click_flags::TRUNCATED` when a value had to be cut.
    pub flags: u16,
}

impl ClickQuery {
    pub fn parse(query: &str) -> ClickQuery {
        let mut q = ClickQuery::default();
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            let sub = match k.as_ref() {
                "sub1" | "s1" | "aff_sub" | "aff_sub1" => 0,
                "sub2" | "s2" | "aff_sub2" => 1,
                "sub3" | "s3" | "aff_sub3" => 2,
                "sub4" | "s4" | "aff_sub4" => 3,
                "sub5" | "s5" | "aff_sub5" => 4,
                "url" => {
                    q.deep_link.get_or_insert_with(|| v.into_owned());
                    continue;
                }
                "src" | "source" => {
                    q.source = bounded(&v, MAX_SOURCE, &mut q.flags).to_owned();
                    continue;
                }
                _ => continue,
            };
            q.subs[sub] = bounded(&v, crate::params::MAX_SUB, &mut q.flags).to_owned();
        }
        q
    }

    /// Where the browser goes: the deep link when the offer allows it, else the offer's
    /// destination with every macro value percent-encoded. Either way the result is safe to
    /// put in `Location` and stays on the offer's hosts.
    /// A followed deep link gets the offer's `deep_link_params` (by default the destination's
    /// `cid={click_id}` and the like) merged into its query, so the merchant's page has the
    /// click ID whichever page the affiliate linked to.
    ///
    /// Then the offer's `pass_query` parameters of the click's query (`click.query`) are
    /// appended, re-encoded, except Tally's own and those the location already has.
    ///
    /// `routed` is the template a routing rule chose, used in place of the offer's
    /// destination (a followed deep link still wins: the affiliate chose the page).
    pub fn destination(
        &self,
        offer: &Offer,
        affiliate: &str,
        click: &ClickMacros<'_>,
        routed: Option<&Template>,
    ) -> Destination {
        let mut d = self.destination_before_passing(offer, affiliate, click, routed);
        if offer.pass_query != PassQuery::None {
            pass_on(&mut d.location, click.query, &offer.pass_query);
        }
        d
    }

    fn destination_before_passing(
        &self,
        offer: &Offer,
        affiliate: &str,
        click: &ClickMacros<'_>,
        routed: Option<&Template>,
    ) -> Destination {
        let value = |m| match m {
            Macro::ClickId => click.click_id,
            Macro::AffId => affiliate,
            Macro::OfferId => &offer.id,
            Macro::Sub(n) => self.subs.get(usize::from(n).wrapping_sub(1)).map(String::as_str).unwrap_or(""),
            Macro::Source => &self.source,
            Macro::Country => click.signals.country,
            Macro::Region => click.signals.region,
            Macro::Device => click.signals.device,
            Macro::Os => click.signals.os,
            Macro::Browser => click.signals.browser,
            Macro::Language => click.signals.language,
            Macro::Timestamp => click.timestamp,
        };
        match self.deep_link.as_deref().map(|d| offer.check_deep_link(d)) {
            Some(Ok(url)) => Destination {
                location: offer.deep_link_location(&url, value),
                followed: url.to_string(),
                flags: click_flags::DEEP_LINK_USED,
            },
            other => {
                let location = routed.unwrap_or(&offer.destination).render(value);
                let flags = if other.is_some() { click_flags::DEEP_LINK_REJECTED } else { 0 };
                Destination { location, followed: String::new(), flags }
            }
        }
    }
}

/// What a click's macros are filled with beyond its query and link.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClickMacros<'a> {
    pub click_id: &'a str,
    pub signals: tally_model::Signals<&'a str>,
    /// Whole seconds since the Unix epoch, as text.
    pub timestamp: &'a str,
    /// The click's raw query string (without `?`), for the offer's `pass_query`.
    pub query: &'a str,
}

/// The parameter names a click's query uses for Tally itself: never passed on.
fn is_own(name: &str) -> bool {
    matches!(
        name,
        "sub1" | "sub2" | "sub3" | "sub4" | "sub5" | "s1" | "s2" | "s3" | "s4" | "s5" | "src" | "source" | "url"
    ) || name.strip_prefix("aff_sub").is_some_and(|n| matches!(n, "" | "1" | "2" | "3" | "4" | "5"))
}

/// Appends the parameters of `query` that `pass` lets through to `location`'s query, before
/// any fragment, each name and value re-encoded (so nothing unsafe reaches `Location`).
fn pass_on(location: &mut String, query: &str, pass: &PassQuery) {
    let (base, fragment) = match location.find('#') {
        Some(at) => (&location[..at], &location[at..]),
        None => (location.as_str(), ""),
    };
    let existing = base.split_once('?').map_or("", |(_, q)| q);
    let has = |name: &str| form_urlencoded::parse(existing.as_bytes()).any(|(k, _)| k == name);
    let mut added = String::new();
    let mut seen: Vec<std::borrow::Cow<'_, str>> = Vec::new();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        if is_own(&k) || !pass.passes(&k) || has(&k) || seen.contains(&k) {
            continue;
        }
        let mut pair = form_urlencoded::Serializer::new(String::new());
        pair.append_pair(&k, &v);
        added.push('&');
        added.push_str(&pair.finish());
        seen.push(k);
    }
    if added.is_empty() {
        return;
    }
    let mut out = String::with_capacity(location.len() + added.len());
    out.push_str(base);
    if !base.contains('?') {
        out.push('?');
        added.remove(0);
    } else if base.ends_with('?') || base.ends_with('&') {
        added.remove(0);
    }
    out.push_str(&added);
    out.push_str(fragment);
    *location = out;
}

/// A click's redirect target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub location: String,
    /// The deep link followed, normalised; empty when the template was used.
    pub followed: String,
    /// `DEEP_LINK_USED` or `DEEP_LINK_REJECTED`, or 0 when no `url=` was given.
    pub flags: u16,
}

/// Cuts `s` to at most `max` bytes on a char boundary, flagging the click if it had to.
pub fn bounded<'a>(s: &'a str, max: usize, flags: &mut u16) -> &'a str {
    if s.len() <= max {
        return s;
    }
    *flags |= click_flags::TRUNCATED;
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn aliases_truncation_and_the_first_url_wins() {
        let long = "é".repeat(200); // 400 bytes: cut on a char boundary
        let q = ClickQuery::parse(&format!("s1=a&sub2=b&src=x&url=https://one&url=https://two&sub5={long}"));
        assert_eq!(q.subs[0], "a");
        assert_eq!(q.subs[1], "b");
        assert_eq!(q.source, "x");
        assert_eq!(q.deep_link.as_deref(), Some("https://one"));
        assert_eq!(q.subs[4].len(), crate::params::MAX_SUB);
        assert_eq!(q.flags, click_flags::TRUNCATED);
    }

    /// `{country}`, `{region}`, `{device}`, `{os}`, `{browser}`, `{language}` and
    /// `{timestamp}` fill in from the click's signals and time, percent-encoded, empty when
    /// unknown; in a deep link's parameters too.
    #[test]
    fn signal_and_time_macros_fill_the_destination() {
        let offer = offer_with(
            r#"destination = "https://shop.example/l?c={country}&r={region}&d={device}&os={os}&b={browser}&l={language}&t={timestamp}"
deep_link_params = { geo = "{country}-{device}" }"#,
        )
        .unwrap();
        let signals = tally_model::Signals {
            country: "GB",
            region: "ENG",
            device: "mobile",
            os: "iOS",
            browser: "Samsung Internet",
            language: "en",
            ..Default::default()
        };
        let macros = ClickMacros { click_id: "01ABC", signals, timestamp: "1700000000", query: "" };
        let d = ClickQuery::parse("").destination(&offer, "aff1", &macros, None);
        assert_eq!(
            d.location,
            "https://shop.example/l?c=GB&r=ENG&d=mobile&os=iOS&b=Samsung%20Internet&l=en&t=1700000000"
        );
        let d = ClickQuery::parse("").destination(
            &offer,
            "aff1",
            &ClickMacros { click_id: "01ABC", ..Default::default() },
            None,
        );
        assert_eq!(d.location, "https://shop.example/l?c=&r=&d=&os=&b=&l=&t=");
        let d = ClickQuery::parse("url=https://shop.example/p/1").destination(&offer, "aff1", &macros, None);
        assert_eq!(d.location, "https://shop.example/p/1?geo=GB-mobile");
    }

    /// The offer `o` of a one-offer program, with `keys` (its destination among them).
    fn offer_with(keys: &str) -> Result<std::sync::Arc<Offer>, tally_model::ProgramError> {
        let program = tally_model::Program::from_toml(&format!(
            r#"
[[advertisers]]
id = "acme"
postback_tokens = ["acme-token"]
[[affiliates]]
id = "aff1"
[[offers]]
id = "o"
advertiser = "acme"
allowed_hosts = ["shop.example"]
currency = "USD"
{keys}
  [[offers.goals]]
  id = "sale"
  payout = {{ kind = "fixed", amount = "1.00" }}
"#
        ))?;
        Ok(std::sync::Arc::clone(program.offer("o").unwrap()))
    }

    fn offer_passing(pass_query: &str, destination: &str) -> std::sync::Arc<Offer> {
        offer_with(&format!("destination = \"{destination}\"\npass_query = {pass_query}")).unwrap()
    }

    fn passed(offer: &Offer, query: &str) -> String {
        let macros = ClickMacros { click_id: "01ABC", query, ..Default::default() };
        ClickQuery::parse(query).destination(offer, "aff1", &macros, None).location
    }

    /// Campaign tags and ad click IDs reach the merchant's page; Tally's own parameters and
    /// what the destination already sets do not; everything is re-encoded.
    #[test]
    fn the_offers_pass_query_parameters_go_on_to_the_destination() {
        let listed = offer_passing(r#"["utm_*", "gclid"]"#, "https://shop.example/l?cid={click_id}&utm_source=aff");
        assert_eq!(
            passed(&listed, "sub1=a&utm_source=fb&utm_medium=cpc&gclid=G%20x&fbclid=F&utm_medium=again"),
            "https://shop.example/l?cid=01ABC&utm_source=aff&utm_medium=cpc&gclid=G+x"
        );
        assert_eq!(passed(&listed, "sub1=a"), "https://shop.example/l?cid=01ABC&utm_source=aff");
        let all = offer_passing(r#""all""#, "https://shop.example/l#top");
        assert_eq!(
            passed(&all, "s2=x&aff_sub3=y&src=z&fbclid=F&q=%0D%0ASet-Cookie:%20x&aff_subx=kept"),
            "https://shop.example/l?fbclid=F&q=%0D%0ASet-Cookie%3A+x&aff_subx=kept#top"
        );
        // A followed deep link gets them too.
        assert_eq!(
            passed(&all, "url=https%3A%2F%2Fshop.example%2Fp%3Fa%3D1&gclid=G"),
            "https://shop.example/p?a=1&gclid=G"
        );
    }

    #[test]
    fn a_pass_query_that_is_not_all_or_names_is_refused() {
        for (bad, why) in [
            (r#""some""#, r#"offers[o].pass_query: "some" is not "all" or a list of names"#),
            (r#"["utm_*", "a b"]"#, r#"offers[o].pass_query: "a b" is not a parameter name"#),
            (r#"["*"]"#, r#"offers[o].pass_query: "*" is not a parameter name"#),
        ] {
            let e = offer_with(&format!("destination = \"https://shop.example/\"\npass_query = {bad}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    /// TUNE's sub ID names work on clicks as on postbacks, so an affiliate's TUNE links
    /// need no rewriting.
    #[test]
    fn tune_sub_ids_are_accepted_on_clicks() {
        let q = ClickQuery::parse("aff_sub=a&aff_sub2=b&aff_sub3=c&aff_sub4=d&aff_sub5=e");
        assert_eq!(q.subs, ["a", "b", "c", "d", "e"].map(String::from));
        assert_eq!(ClickQuery::parse("aff_sub1=x").subs[0], "x");
        assert_eq!(ClickQuery::parse("sub1=x&aff_sub=y").subs[0], "y", "the later name wins");
    }
}
