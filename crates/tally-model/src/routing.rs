//! Routing: an offer's ordered rules that choose a click's destination by what the edge
//! observed of it (country, device, OS, browser, language) and the program's local time,
//! with weighted destinations for A/B tests. The first rule whose conditions all hold wins;
//! none holding, the offer's own destination is used.
//!
//! Pure and deterministic: the weighted draw is the click ID's random bits, so a click's
//! route follows from the click and the program (it is recorded on the click too).

use serde::Deserialize;

use crate::program::Template;
use crate::Signals;

/// Most rules an offer may have: each click tries them in order.
pub const MAX_ROUTES: usize = 64;
/// Most destinations one rule may weigh between.
pub const MAX_DESTINATIONS: usize = 16;

/// One rule: conditions and where it sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub name: String,
    pub when: Conditions,
    /// Never empty; weights sum to more than zero.
    pub destinations: Vec<Weighted>,
}

/// What a click must have for a rule to hold. An empty list, or no hours or days, means
/// any. Texts compare without regard to ASCII case.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Conditions {
    pub country: Vec<String>,
    pub device: Vec<String>,
    pub os: Vec<String>,
    pub browser: Vec<String>,
    pub language: Vec<String>,
    /// Local hours `[from, to)` in the program's time zone; `from > to` wraps midnight.
    pub hours: Option<(u8, u8)>,
    /// Local weekdays, bit 0 Monday .. bit 6 Sunday; 0 means any.
    pub days: u8,
}

/// A destination of a rule and its share of the rule's clicks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Weighted {
    pub template: Template,
    pub weight: u32,
    /// What a click records as its route: the rule's name, and `/variant` when the rule
    /// weighs several destinations.
    pub label: String,
}

/// What a rule is judged on.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub signals: Signals<&'a str>,
    /// The local hour (0-23) and weekday (0 Monday .. 6 Sunday) of the click.
    pub hour: u8,
    pub weekday: u8,
}

impl Conditions {
    pub fn holds(&self, f: &Facts<'_>) -> bool {
        let any = |list: &[String], v: &str| list.is_empty() || list.iter().any(|x| x.eq_ignore_ascii_case(v));
        any(&self.country, f.signals.country)
            && any(&self.device, f.signals.device)
            && any(&self.os, f.signals.os)
            && any(&self.browser, f.signals.browser)
            && any(&self.language, f.signals.language)
            && self.hours.is_none_or(|(from, to)| {
                if from <= to {
                    (from..to).contains(&f.hour)
                } else {
                    f.hour >= from || f.hour < to
                }
            })
            && (self.days == 0 || self.days & (1 << f.weekday) != 0)
    }

    /// Whether the rule depends on the click's local time.
    pub fn uses_time(&self) -> bool {
        self.hours.is_some() || self.days != 0
    }
}

/// The first rule of `routes` that holds for `facts`, and the destination `draw` (uniform
/// over `u64`; the click ID's random bits) picks among its weighted ones.
pub fn choose<'a>(routes: &'a [Route], facts: &Facts<'_>, draw: u64) -> Option<&'a Weighted> {
    let route = routes.iter().find(|r| r.when.holds(facts))?;
    let total: u64 = route.destinations.iter().map(|d| u64::from(d.weight)).sum();
    if total == 0 {
        return route.destinations.first();
    }
    let mut at = draw % total;
    for d in &route.destinations {
        let w = u64::from(d.weight);
        if at < w {
            return Some(d);
        }
        at -= w;
    }
    route.destinations.last()
}

/// A rule as the program file writes it (`[[offers.routes]]`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    name: String,
    #[serde(default)]
    country: Vec<String>,
    #[serde(default)]
    device: Vec<String>,
    #[serde(default)]
    os: Vec<String>,
    #[serde(default)]
    browser: Vec<String>,
    #[serde(default)]
    language: Vec<String>,
    /// `"8-20"`: from 08:00 up to 20:00 local time; `"22-6"` wraps midnight.
    #[serde(default)]
    hours: Option<String>,
    /// `["mon", "tue", …]`.
    #[serde(default)]
    days: Vec<String>,
    /// One destination, or …
    #[serde(default)]
    destination: Option<String>,
    /// … several, weighted.
    #[serde(default)]
    destinations: Vec<RawWeighted>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWeighted {
    #[serde(default)]
    name: Option<String>,
    url: String,
    #[serde(default = "one")]
    weight: u32,
}

fn one() -> u32 {
    1
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// Checks an offer's rules, pushing every problem (named `{at}.routes[{name}]…`).
pub(crate) fn validate(raw: Vec<RawRoute>, at: &str, problems: &mut Vec<String>) -> Vec<Route> {
    if raw.len() > MAX_ROUTES {
        problems.push(format!("{at}.routes: {} rules; at most {MAX_ROUTES}", raw.len()));
    }
    let mut names = std::collections::BTreeSet::new();
    let mut routes = Vec::with_capacity(raw.len());
    for r in raw {
        let rat = format!("{at}.routes[{}]", r.name);
        let before = problems.len();
        if !crate::program::is_valid_id(&r.name) {
            problems.push(format!("{rat}.name: must be 1-64 of A-Z a-z 0-9 _ . -"));
        } else if !names.insert(r.name.clone()) {
            problems.push(format!("{rat}: the name is used by another rule of the offer"));
        }
        let text_list = |key: &str, list: Vec<String>, problems: &mut Vec<String>| -> Vec<String> {
            for v in &list {
                if v.is_empty() || v.len() > 32 || !v.bytes().all(|b| (0x20..0x7f).contains(&b)) {
                    problems.push(format!("{rat}.{key}: {v:?} must be 1 to 32 printable ASCII characters"));
                }
            }
            list
        };
        let country = r.country.into_iter().map(|c| c.to_ascii_uppercase()).collect::<Vec<_>>();
        for c in &country {
            if c.len() != 2 || !c.bytes().all(|b| b.is_ascii_uppercase()) {
                problems.push(format!("{rat}.country: {c:?} is not an ISO 3166-1 alpha-2 code such as \"GB\""));
            }
        }
        let hours = r.hours.as_deref().and_then(|h| {
            let parsed =
                h.split_once('-').and_then(|(a, b)| Some((a.trim().parse::<u8>().ok()?, b.trim().parse::<u8>().ok()?)));
            match parsed {
                Some((from, to)) if from <= 23 && (1..=24).contains(&to) && from != to % 24 => Some((from, to % 24)),
                _ => {
                    problems.push(format!("{rat}.hours: {h:?} is not FROM-TO in whole hours (\"8-20\", \"22-6\")"));
                    None
                }
            }
        });
        let mut days = 0u8;
        for d in &r.days {
            match DAYS.iter().position(|x| x.eq_ignore_ascii_case(d)) {
                Some(i) => days |= 1 << i,
                None => problems.push(format!("{rat}.days: {d:?} is not one of mon, tue, wed, thu, fri, sat, sun")),
            }
        }
        let raw_destinations: Vec<RawWeighted> = match (r.destination, r.destinations.is_empty()) {
            (Some(url), true) => vec![RawWeighted { name: None, url, weight: 1 }],
            (None, false) => r.destinations,
            (Some(_), false) => {
                problems.push(format!("{rat}: set destination or destinations, not both"));
                Vec::new()
            }
            (None, true) => {
                problems.push(format!("{rat}: needs a destination (or weighted destinations)"));
                Vec::new()
            }
        };
        if raw_destinations.len() > MAX_DESTINATIONS {
            problems
                .push(format!("{rat}.destinations: {} of them; at most {MAX_DESTINATIONS}", raw_destinations.len()));
        }
        if !raw_destinations.is_empty() && raw_destinations.iter().all(|d| d.weight == 0) {
            problems.push(format!("{rat}.destinations: every weight is 0"));
        }
        let several = raw_destinations.len() > 1;
        let mut variants = std::collections::BTreeSet::new();
        let mut destinations = Vec::with_capacity(raw_destinations.len());
        for (i, d) in raw_destinations.into_iter().enumerate() {
            let variant = d.name.unwrap_or_else(|| (i + 1).to_string());
            if !crate::program::is_valid_id(&variant) {
                problems.push(format!("{rat}.destinations[{i}].name: must be 1-64 of A-Z a-z 0-9 _ . -"));
            } else if several && !variants.insert(variant.clone()) {
                problems.push(format!("{rat}.destinations[{i}].name: {variant:?} is used twice"));
            }
            match Template::parse(&d.url) {
                Ok(template) => destinations.push(Weighted {
                    template,
                    weight: d.weight,
                    label: if several { format!("{}/{variant}", r.name) } else { r.name.clone() },
                }),
                Err(e) => problems.push(format!("{rat}.destinations[{i}].url: {e}")),
            }
        }
        let when = Conditions {
            country,
            device: text_list("device", r.device, problems),
            os: text_list("os", r.os, problems),
            browser: text_list("browser", r.browser, problems),
            language: text_list("language", r.language, problems),
            hours,
            days,
        };
        if problems.len() == before {
            routes.push(Route { name: r.name, when, destinations });
        }
    }
    routes
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn facts<'a>(country: &'a str, device: &'a str, hour: u8, weekday: u8) -> Facts<'a> {
        Facts { signals: Signals { country, device, os: "iOS", language: "en", ..Default::default() }, hour, weekday }
    }

    fn route(name: &str, when: Conditions, weights: &[u32]) -> Route {
        let destinations = weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| Weighted {
                template: Template::parse(&format!("https://m.example/{name}/{i}")).unwrap(),
                weight,
                label: format!("{name}/{}", i + 1),
            })
            .collect();
        Route { name: name.into(), when, destinations }
    }

    #[test]
    fn hours_wrap_midnight_and_days_pick_weekdays() {
        let night = Conditions { hours: Some((22, 6)), ..Conditions::default() };
        for (hour, holds) in [(21, false), (22, true), (23, true), (0, true), (5, true), (6, false), (12, false)] {
            assert_eq!(night.holds(&facts("GB", "mobile", hour, 0)), holds, "{hour}h");
        }
        let weekend = Conditions { days: 0b110_0000, ..Conditions::default() };
        assert!(weekend.holds(&facts("GB", "mobile", 3, 5)));
        assert!(weekend.holds(&facts("GB", "mobile", 3, 6)));
        assert!(!weekend.holds(&facts("GB", "mobile", 3, 4)));
        let case = Conditions { country: vec!["GB".into()], device: vec!["Mobile".into()], ..Conditions::default() };
        assert!(case.holds(&facts("GB", "mobile", 0, 0)));
        assert!(!case.holds(&facts("", "mobile", 0, 0)), "an unknown country matches no list");
    }

    proptest! {
        /// The chosen rule is the first that holds, by a plain reading of the conditions;
        /// the pick is one of its destinations with a weight above zero; none holds, none.
        #[test]
        fn the_first_rule_that_holds_is_chosen(
            rules in proptest::collection::vec(
                (proptest::sample::subsequence(vec!["GB", "DE", "US"], 0..=3),
                 proptest::sample::subsequence(vec!["mobile", "desktop"], 0..=2),
                 proptest::option::of((0u8..24, 1u8..=24)),
                 0u8..128,
                 proptest::collection::vec(0u32..5, 1..4)),
                0..6),
            country in proptest::sample::select(vec!["GB", "DE", "US", "FR", ""]),
            device in proptest::sample::select(vec!["mobile", "desktop", "tablet", ""]),
            hour in 0u8..24,
            weekday in 0u8..7,
            draw in any::<u64>(),
        ) {
            let routes: Vec<Route> = rules.iter().enumerate().map(|(i, (countries, devices, hours, days, weights))| {
                let mut weights = weights.clone();
                if weights.iter().all(|&w| w == 0) { weights[0] = 1; }
                let hours = hours.filter(|(f, t)| f != &(t % 24)).map(|(f, t)| (f, t % 24));
                let when = Conditions {
                    country: countries.iter().map(|c| c.to_string()).collect(),
                    device: devices.iter().map(|d| d.to_string()).collect(),
                    hours,
                    days: *days,
                    ..Conditions::default()
                };
                route(&format!("r{i}"), when, &weights)
            }).collect();
            let f = facts(country, device, hour, weekday);
            let naive = routes.iter().position(|r| {
                let c = &r.when;
                (c.country.is_empty() || c.country.iter().any(|x| x == country))
                    && (c.device.is_empty() || c.device.iter().any(|x| x == device))
                    && c.hours.is_none_or(|(a, b)| if a <= b { hour >= a && hour < b } else { hour >= a || hour < b })
                    && (c.days == 0 || (c.days >> weekday) & 1 == 1)
            });
            let chosen = choose(&routes, &f, draw);
            match naive {
                None => prop_assert!(chosen.is_none()),
                Some(i) => {
                    let d = chosen.unwrap();
                    let r = &routes[i];
                    prop_assert!(r.destinations.iter().any(|x| std::ptr::eq(x, d)), "not a destination of {}", r.name);
                    prop_assert!(d.weight > 0);
                }
            }
        }
    }

    fn program(routes: &str) -> Result<crate::Program, crate::ProgramError> {
        crate::Program::from_toml(&format!(
            r#"
[[advertisers]]
id = "acme"
postback_tokens = ["t"]
[[offers]]
id = "o"
advertiser = "acme"
destination = "https://shop.example/"
currency = "USD"
  [[offers.goals]]
  id = "sale"
  payout = {{ kind = "fixed", amount = "1.00" }}
{routes}
"#
        ))
    }

    #[test]
    fn rules_parse_with_their_labels_and_time_use() {
        let p = program(
            r#"
  [[offers.routes]]
  name = "uk-mobile"
  country = ["gb"]
  device = ["mobile", "tablet"]
  hours = "8-20"
  days = ["Mon", "fri"]
  destinations = [{ name = "a", url = "https://a.example/?c={click_id}", weight = 70 }, { url = "https://b.example/", weight = 30 }]
  [[offers.routes]]
  name = "de"
  country = ["DE"]
  destination = "https://de.shop.example/"
"#,
        )
        .unwrap();
        let o = p.offer("o").unwrap();
        assert!(o.routes_use_time);
        let r = &o.routes[0];
        assert_eq!(r.when.country, ["GB"]);
        assert_eq!(r.when.hours, Some((8, 20)));
        assert_eq!(r.when.days, 0b1_0001);
        let labels: Vec<&str> = r.destinations.iter().map(|d| d.label.as_str()).collect();
        assert_eq!(labels, ["uk-mobile/a", "uk-mobile/2"]);
        assert_eq!(o.routes[1].destinations[0].label, "de");
    }

    #[test]
    fn bad_rules_are_named_by_offer_rule_and_key() {
        let e = program(
            r#"
  [[offers.routes]]
  name = "x"
  country = ["GBR"]
  hours = "8-8"
  days = ["someday"]
  [[offers.routes]]
  name = "x"
  destination = "ftp://no.example/"
  destinations = [{ url = "https://a.example/" }]
  [[offers.routes]]
  name = "zero"
  destinations = [{ url = "https://a.example/", weight = 0 }, { name = "v", url = "https://{sub1}/" }]
"#,
        )
        .unwrap_err()
        .to_string();
        for want in [
            r#"offers[o].routes[x].country: "GBR" is not an ISO 3166-1 alpha-2 code"#,
            r#"offers[o].routes[x].hours: "8-8" is not FROM-TO in whole hours"#,
            r#"offers[o].routes[x].days: "someday" is not one of mon"#,
            "offers[o].routes[x]: needs a destination (or weighted destinations)",
            "offers[o].routes[x]: the name is used by another rule of the offer",
            "offers[o].routes[x]: set destination or destinations, not both",
            "offers[o].routes[zero].destinations[1].url:",
        ] {
            assert!(e.contains(want), "{want} missing from {e}");
        }
    }

    /// Over evenly spread draws, each destination gets its weight's share.
    #[test]
    fn weights_split_the_clicks_in_proportion() {
        let routes = [route("ab", Conditions::default(), &[70, 20, 10, 0])];
        let mut counts = [0u64; 4];
        let n = 100_000u64;
        for i in 0..n {
            // The click ID's random bits are uniform; a multiplicative hash of i stands in.
            let draw = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let d = choose(&routes, &facts("GB", "mobile", 0, 0), draw).unwrap();
            counts[routes[0].destinations.iter().position(|x| std::ptr::eq(x, d)).unwrap()] += 1;
        }
        for (count, want) in counts.iter().zip([0.70, 0.20, 0.10, 0.0]) {
            let share = *count as f64 / n as f64;
            assert!((share - want).abs() < 0.01, "{counts:?}");
        }
        // The same draw, the same destination.
        let f = facts("GB", "mobile", 0, 0);
        assert!(std::ptr::eq(choose(&routes, &f, 42).unwrap(), choose(&routes, &f, 42).unwrap()));
    }
}
