//! Recognising requests that are not a person clicking: prefetches, previews and unfurlers.
//! They still get the redirect (a preview must show the real page) but are flagged so reports
//! can exclude them.

use http::{HeaderMap, HeaderName, HeaderValue};

/// Lowercase substrings of user agents that fetch links to preview or index them. Specific
/// names only: a generic "bot" would also match phone models such as "CUBOT".
const UNFURLERS: &[&str] = &[
    "facebookexternalhit",
    "facebookcatalog",
    "facebot",
    "meta-externalagent",
    "twitterbot",
    "slackbot",
    "slack-imgproxy",
    "linkedinbot",
    "discordbot",
    "telegrambot",
    "whatsapp",
    "skypeuripreview",
    "pinterestbot",
    "redditbot",
    "applebot",
    "googlebot",
    "google-inspectiontool",
    "googleother",
    "adsbot-google",
    "mediapartners-google",
    "bingbot",
    "bingpreview",
    "msnbot",
    "yandexbot",
    "duckduckbot",
    "baiduspider",
    "embedly",
    "iframely",
    "quora link preview",
    "vkshare",
    "mastodon",
    "snapchat",
    "viber",
    "kakaotalk-scrap",
    "line-poker",
    "zoominfobot",
    "ahrefsbot",
    "semrushbot",
    "petalbot",
    "bytespider",
    "gptbot",
    "chatgpt-user",
    "claudebot",
    "perplexitybot",
    "headlesschrome",
    "crawler",
    "spider",
    "curl/",
    "wget/",
    "python-requests",
];

/// True if the request says it is a prefetch or prerender, not a navigation.
pub fn is_prefetch(headers: &HeaderMap) -> bool {
    headers.iter().any(|(name, value)| says_prefetch(name, value))
}

/// True if this one header says the request is a prefetch, prerender or preview. The click
/// handler calls it from its single pass over the headers: four lookups by name hashed four
/// names on every click, for headers that are nearly always absent.
pub fn says_prefetch(name: &HeaderName, value: &HeaderValue) -> bool {
    says_prefetch_raw(name.as_str(), value.as_bytes())
}

/// [`says_prefetch`] on a header as the parser saw it: the name in any case, the value as
/// bytes. The edge's fast path reads headers straight from the request buffer.
pub fn says_prefetch_raw(name: &str, value: &[u8]) -> bool {
    let needles: &[&str] = if name.eq_ignore_ascii_case("purpose") {
        &["prefetch", "preview"]
    } else if name.eq_ignore_ascii_case("sec-purpose") {
        &["prefetch", "prerender"]
    } else if name.eq_ignore_ascii_case("x-purpose") {
        &["preview", "prefetch"]
    } else if name.eq_ignore_ascii_case("x-moz") {
        &["prefetch"]
    } else {
        return false;
    };
    let v = String::from_utf8_lossy(value).to_ascii_lowercase();
    needles.iter().any(|n| v.contains(n))
}

/// True if the user agent belongs to a known unfurler, crawler or scripted client.
pub fn is_unfurler(user_agent: &str) -> bool {
    // One automaton pass over the user agent instead of fifty substring searches of a
    // lowercased copy: this runs on every click.
    static MATCHER: std::sync::OnceLock<Option<aho_corasick::AhoCorasick>> = std::sync::OnceLock::new();
    let matcher =
        MATCHER.get_or_init(|| aho_corasick::AhoCorasick::builder().ascii_case_insensitive(true).build(UNFURLERS).ok());
    match matcher {
        Some(m) => m.is_match(user_agent),
        None => {
            let ua = user_agent.to_ascii_lowercase();
            UNFURLERS.iter().any(|n| ua.contains(n))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn previews_and_prefetches_are_recognised() {
        for ua in [
            "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
            "Mozilla/5.0 (compatible; Discordbot/2.0; +https://discordapp.com)",
            "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
            "Twitterbot/1.0",
            "WhatsApp/2.23.20.0",
            "TelegramBot (like TwitterBot)",
            "LinkedInBot/1.0 (compatible; Mozilla/5.0; Apache-HttpClient +http://www.linkedin.com)",
        ] {
            assert!(is_unfurler(ua), "{ua}");
        }
        for ua in [
            "Mozilla/5.0 (Linux; Android 10; CUBOT X30) AppleWebKit/537.36 Chrome/120 Mobile Safari/537.36",
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 Version/17.0 Mobile/15E148 Safari/604.1",
            "",
        ] {
            assert!(!is_unfurler(ua), "{ua}");
        }
        let mut h = HeaderMap::new();
        assert!(!is_prefetch(&h));
        h.insert("sec-purpose", "prefetch;prerender".parse().unwrap());
        assert!(is_prefetch(&h));
        let mut h = HeaderMap::new();
        h.insert("purpose", "prefetch".parse().unwrap());
        assert!(is_prefetch(&h));
        for (name, value) in [("x-purpose", "Preview"), ("x-moz", "prefetch"), ("Sec-Purpose", "PRERENDER")] {
            let mut h = HeaderMap::new();
            h.insert(HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
            h.insert("user-agent", "Mozilla/5.0".parse().unwrap());
            assert!(is_prefetch(&h), "{name}: {value}");
        }
        // The words count only in those headers.
        let mut h = HeaderMap::new();
        h.insert("x-purposes", "prefetch".parse().unwrap());
        h.insert("referer", "https://a.example/prefetch".parse().unwrap());
        assert!(!is_prefetch(&h));
    }
}
