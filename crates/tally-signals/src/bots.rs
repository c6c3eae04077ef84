//! The bot list: user-agent substrings of crawlers, link unfurlers, monitors and scripted
//! clients (`data/bots.txt`, built in), and the operator's additions in the same format.

use aho_corasick::AhoCorasick;

const BUILTIN: &str = include_str!("../data/bots.txt");

/// The list, compiled into one automaton: a click pays one pass over its user agent, not
/// one search per entry.
#[derive(Debug)]
pub struct Bots {
    matcher: Option<AhoCorasick>,
    entries: usize,
}

impl Bots {
    /// The built-in list alone.
    pub fn builtin() -> Bots {
        Bots::build(entries(BUILTIN).collect())
    }

    /// The built-in list and the operator's file `text` (named `name` in problems).
    pub fn with_file(name: &str, text: &str) -> Result<Bots, Vec<String>> {
        let mut problems = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let entry = line.trim();
            // An entry shorter than three characters would flag people: "go" is in
            // "Google", "bo" in "CUBOT".
            if !entry.is_empty() && !entry.starts_with('#') && entry.len() < 3 {
                problems.push(format!(
                    "{name} line {}: {entry:?} is too short to name a bot (3 characters at least)",
                    i + 1
                ));
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Bots::build(entries(BUILTIN).chain(entries(text)).collect()))
    }

    fn build(list: Vec<&str>) -> Bots {
        let matcher = AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .kind(Some(aho_corasick::AhoCorasickKind::DFA))
            .build(&list)
            .ok();
        Bots { matcher, entries: list.len() }
    }

    /// Whether `user_agent` contains an entry, in any case.
    pub fn is_bot(&self, user_agent: &str) -> bool {
        // Building fails only past the automaton's size limits, far beyond any list; an
        // empty user agent is a script's, but not named by any entry.
        self.matcher.as_ref().is_some_and(|m| m.is_match(user_agent))
    }

    /// Entries in the list.
    pub fn len(&self) -> usize {
        self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }
}

fn entries(text: &str) -> impl Iterator<Item = &str> {
    text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#'))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn previews_crawlers_and_scripts_are_bots_and_phones_are_not() {
        let bots = Bots::builtin();
        for ua in [
            "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
            "Mozilla/5.0 (compatible; Discordbot/2.0; +https://discordapp.com)",
            "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
            "Twitterbot/1.0",
            "WhatsApp/2.23.20.0",
            "TelegramBot (like TwitterBot)",
            "LinkedInBot/1.0 (compatible; Mozilla/5.0; Apache-HttpClient +http://www.linkedin.com)",
            "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
            "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2; +https://openai.com/gptbot)",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.0.0 Safari/537.36",
            "curl/8.5.0",
            "python-requests/2.31.0",
            "Go-http-client/1.1",
        ] {
            assert!(bots.is_bot(ua), "{ua}");
        }
        for ua in [
            "Mozilla/5.0 (Linux; Android 10; CUBOT X30) AppleWebKit/537.36 Chrome/120 Mobile Safari/537.36",
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 Version/17.0 Mobile/15E148 Safari/604.1",
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
            "",
        ] {
            assert!(!bots.is_bot(ua), "{ua}");
        }
    }

    #[test]
    fn an_operators_file_adds_to_the_builtin_list() {
        let bots = Bots::with_file("bots.txt", "# ours\nAcmeMonitor/\n\n").unwrap();
        assert!(bots.is_bot("acmemonitor/2.0"));
        assert!(bots.is_bot("curl/8.5.0"), "the built-in list still applies");
        assert_eq!(bots.len(), Bots::builtin().len() + 1);
    }

    #[test]
    fn an_entry_too_short_is_refused_naming_its_line() {
        let e = Bots::with_file("bots.txt", "fine-bot\ngo\n").unwrap_err();
        assert_eq!(e, vec!["bots.txt line 2: \"go\" is too short to name a bot (3 characters at least)".to_string()]);
    }
}
