//! A click's query string (sub IDs, source, deep link) and the redirect it leads to.

use tally_model::click_flags;
use tally_model::program::{Macro, Offer};

/// Longest `src=` value kept; longer ones are truncated and the click flagged.
pub const MAX_SOURCE: usize = 128;

/// What a click's query string carries. Unknown parameters are ignored: networks append
/// their own.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ClickQuery {
    /// `sub1`..`sub5` (or `s1`..`s5`), each cut to `params::MAX_SUB` bytes.
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
                "sub1" | "s1" => 0,
                "sub2" | "s2" => 1,
                "sub3" | "s3" => 2,
                "sub4" | "s4" => 3,
                "sub5" | "s5" => 4,
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
    pub fn destination(&self, offer: &Offer, affiliate: &str, click_id: &str) -> Destination {
        let value = |m| match m {
            Macro::ClickId => click_id,
            Macro::AffId => affiliate,
            Macro::OfferId => &offer.id,
            Macro::Sub(n) => self.subs.get(usize::from(n).wrapping_sub(1)).map(String::as_str).unwrap_or(""),
            Macro::Source => &self.source,
        };
        match self.deep_link.as_deref().map(|d| offer.check_deep_link(d)) {
            Some(Ok(url)) => Destination {
                location: offer.deep_link_location(&url, value),
                followed: url.to_string(),
                flags: click_flags::DEEP_LINK_USED,
            },
            other => {
                let location = offer.destination.render(value);
                let flags = if other.is_some() { click_flags::DEEP_LINK_REJECTED } else { 0 };
                Destination { location, followed: String::new(), flags }
            }
        }
    }
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
}
