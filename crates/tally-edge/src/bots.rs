//! Recognising requests that are not a person clicking: prefetches, previews and unfurlers.
//! They still get the redirect (a preview must show the real page) but are flagged so reports
//! can exclude them.

use http::{HeaderMap, HeaderName};

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
    // Names built once: looking a header up by `&str` parses and hashes the name each time,
    // four times per click.
    const PURPOSE: HeaderName = HeaderName::from_static("purpose");
    const SEC_PURPOSE: HeaderName = HeaderName::from_static("sec-purpose");
    const X_PURPOSE: HeaderName = HeaderName::from_static("x-purpose");
    const X_MOZ: HeaderName = HeaderName::from_static("x-moz");
    let has = |name: &HeaderName, needles: &[&str]| {
        headers.get_all(name).iter().any(|v| {
            let v = String::from_utf8_lossy(v.as_bytes()).to_ascii_lowercase();
            needles.iter().any(|n| v.contains(n))
        })
    };
    has(&PURPOSE, &["prefetch", "preview"])
        || has(&SEC_PURPOSE, &["prefetch", "prerender"])
        || has(&X_PURPOSE, &["preview", "prefetch"])
        || has(&X_MOZ, &["prefetch"])
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
    }
}
