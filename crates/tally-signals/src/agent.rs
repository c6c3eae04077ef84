//! Device class, OS family and browser family from the user agent, by ordered rules in a
//! data file (`data/user-agents.txt`, built in; its header documents the format).
//!
//! Every token of every rule goes into one Aho-Corasick automaton; one overlapping pass over
//! the user agent marks which tokens it contains, then each field takes its first rule whose
//! tokens are all present and whose excluded tokens are all absent. The cost is one pass
//! over the user agent plus a few bit tests per rule tried, whatever the number of rules.

use aho_corasick::AhoCorasick;

const BUILTIN: &str = include_str!("../data/user-agents.txt");

/// Tokens a rule set may have: the present-token set lives on the stack, as this many bits.
const MAX_TOKENS: usize = 1024;
const WORDS: usize = MAX_TOKENS / 64;
const MAX_VALUE: usize = 32;

#[derive(Debug)]
struct Rule {
    value: Box<str>,
    all: Box<[u16]>,
    none: Box<[u16]>,
}

/// The rules of the three fields, in the order they are tried.
#[derive(Debug)]
pub struct Rules {
    matcher: Option<AhoCorasick>,
    device: Vec<Rule>,
    os: Vec<Rule>,
    browser: Vec<Rule>,
}

/// The index of the rule each of device, OS and browser took; [`NONE`] for none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Matched(pub [u16; 3]);

/// No rule of the field matched.
pub const NONE: u16 = u16::MAX;

/// What the rules made of a user agent; empty when no rule of a field matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Agent<'a> {
    pub device: &'a str,
    pub os: &'a str,
    pub browser: &'a str,
}

impl Rules {
    /// The built-in rules alone.
    pub fn builtin() -> Rules {
        // The built-in file is tested to parse (`the_builtin_rules_parse`).
        Rules::parse(&[("built-in user-agents.txt", BUILTIN)]).unwrap_or_else(|_| Rules::empty())
    }

    /// The operator's rules `text` (named `name` in problems), tried before the built-in
    /// ones.
    pub fn with_file(name: &str, text: &str) -> Result<Rules, Vec<String>> {
        Rules::parse(&[(name, text), ("built-in user-agents.txt", BUILTIN)])
    }

    fn empty() -> Rules {
        Rules { matcher: None, device: Vec::new(), os: Vec::new(), browser: Vec::new() }
    }

    fn parse(files: &[(&str, &str)]) -> Result<Rules, Vec<String>> {
        let mut tokens: Vec<String> = Vec::new();
        let mut rules = Rules::empty();
        let mut problems = Vec::new();
        for (name, text) in files {
            for (i, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                match parse_rule(line, &mut tokens) {
                    Ok((field, rule)) => match field {
                        "device" => rules.device.push(rule),
                        "os" => rules.os.push(rule),
                        _ => rules.browser.push(rule),
                    },
                    Err(e) => problems.push(format!("{name} line {}: {e}", i + 1)),
                }
            }
        }
        if tokens.len() > MAX_TOKENS {
            problems.push(format!("{} distinct tokens; at most {MAX_TOKENS}", tokens.len()));
        }
        if [&rules.device, &rules.os, &rules.browser].iter().any(|r| r.len() >= usize::from(NONE)) {
            problems.push(format!("more than {} rules for one field", NONE - 1));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        rules.matcher = AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .kind(Some(aho_corasick::AhoCorasickKind::DFA))
            .build(&tokens)
            .map_err(|e| vec![format!("cannot build the user-agent matcher: {e}")])
            .map(Some)?;
        Ok(rules)
    }

    /// Classifies `user_agent`, with the client hints `Sec-CH-UA-Mobile` (`?1`) and
    /// `Sec-CH-UA-Platform` (`"Android"`) as sent, empty when absent.
    pub fn classify<'a>(&'a self, user_agent: &str, ch_mobile: &str, ch_platform: &str) -> Agent<'a> {
        self.with_hints(self.matching(user_agent), ch_mobile, ch_platform)
    }

    /// The rules each field took for `user_agent` (`NONE` where none matched): what
    /// depends on the user agent alone, so callers may keep it per user agent.
    pub fn matching(&self, user_agent: &str) -> Matched {
        let mut present = [0u64; WORDS];
        if let Some(m) = &self.matcher {
            for found in m.find_overlapping_iter(user_agent) {
                let t = found.pattern().as_usize();
                present[t / 64] |= 1 << (t % 64);
            }
        }
        let pick = |rules: &[Rule]| -> u16 {
            let has = |t: &u16| present[usize::from(*t) / 64] & (1 << (t % 64)) != 0;
            rules.iter().position(|r| r.all.iter().all(has) && !r.none.iter().any(has)).map_or(NONE, |i| i as u16)
        };
        Matched([pick(&self.device), pick(&self.os), pick(&self.browser)])
    }

    /// The values of `matched`, with the client hints applied.
    pub fn with_hints(&self, matched: Matched, ch_mobile: &str, ch_platform: &str) -> Agent<'_> {
        fn value(rules: &[Rule], i: u16) -> &str {
            rules.get(usize::from(i)).map_or("", |r| &r.value)
        }
        let [d, o, b] = matched.0;
        let mut agent =
            Agent { device: value(&self.device, d), os: value(&self.os, o), browser: value(&self.browser, b) };
        if ch_mobile.trim() == "?1" && matches!(agent.device, "" | "desktop") {
            agent.device = "mobile";
        }
        if let Some(os) = platform(ch_platform) {
            agent.os = os;
        }
        agent
    }
}

/// The OS a `Sec-CH-UA-Platform` value names, when it is one the rules also name.
fn platform(hint: &str) -> Option<&'static str> {
    let v = hint.trim().trim_matches('"');
    Some(match v {
        "Android" => "Android",
        "Chrome OS" | "Chromium OS" | "ChromeOS" => "ChromeOS",
        "iOS" => "iOS",
        "Linux" => "Linux",
        "macOS" => "macOS",
        "Windows" => "Windows",
        _ => return None,
    })
}

fn parse_rule<'a>(line: &'a str, tokens: &mut Vec<String>) -> Result<(&'a str, Rule), String> {
    let (field, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    if !matches!(field, "device" | "os" | "browser") {
        return Err(format!("{field:?} is not a field (device, os or browser)"));
    }
    let Some((value, list)) = rest.split_once('=') else {
        return Err("expected FIELD VALUE = TOKEN, TOKEN, !TOKEN".into());
    };
    let value = value.trim();
    if value.is_empty() || value.len() > MAX_VALUE || !value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(format!("value {value:?} must be 1 to {MAX_VALUE} printable ASCII characters"));
    }
    let (mut all, mut none) = (Vec::new(), Vec::new());
    for token in list.split(',') {
        let token = token.trim();
        let (excluded, text) = match token.strip_prefix('!') {
            Some(t) => (true, t.trim()),
            None => (false, token),
        };
        if text.is_empty() {
            return Err("an empty token".into());
        }
        let text = text.to_ascii_lowercase();
        let id = match tokens.iter().position(|t| *t == text) {
            Some(id) => id,
            None => {
                tokens.push(text);
                tokens.len() - 1
            }
        };
        // Past MAX_TOKENS the whole set is refused after parsing; the id is never used.
        let id = u16::try_from(id).unwrap_or(u16::MAX);
        if excluded {
            none.push(id);
        } else {
            all.push(id);
        }
    }
    if all.is_empty() {
        return Err("a rule needs at least one token the user agent must contain".into());
    }
    Ok((field, Rule { value: value.into(), all: all.into(), none: none.into() }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Real user agents and what the built-in rules must make of them.
    const CORPUS: &[(&str, &str, &str, &str)] = &[
        ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36", "desktop", "Windows", "Chrome"),
        ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.51", "desktop", "Windows", "Edge"),
        ("Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0", "desktop", "Windows", "Firefox"),
        ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15", "desktop", "macOS", "Safari"),
        ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 OPR/109.0.0.0", "desktop", "macOS", "Opera"),
        ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36", "desktop", "Linux", "Chrome"),
        ("Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0", "desktop", "Linux", "Firefox"),
        ("Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36", "desktop", "ChromeOS", "Chrome"),
        ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1", "mobile", "iOS", "Safari"),
        ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/124.0.6367.88 Mobile/15E148 Safari/604.1", "mobile", "iOS", "Chrome"),
        ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) FxiOS/125.0 Mobile/15E148 Safari/605.1.15", "mobile", "iOS", "Firefox"),
        ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148", "mobile", "iOS", "iOS WebView"),
        ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/21E236 [FBAN/FBIOS;FBAV/460.0.0.38.108;FBBV/590000000;FBDV/iPhone15,2;FBMD/iPhone;FBSN/iOS;FBSV/17.4;FBSS/3;FBCR/;FBID/phone;FBLC/en_US;FBOP/80]", "mobile", "iOS", "Facebook"),
        ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/21E236 Instagram 329.0.3.29.120 (iPhone15,2; iOS 17_4; en_US; en; scale=3.00; 1179x2556; 594500000)", "mobile", "iOS", "Instagram"),
        ("Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1", "tablet", "iOS", "Safari"),
        ("Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.6367.82 Mobile Safari/537.36", "mobile", "Android", "Chrome"),
        ("Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36", "mobile", "Android", "Chrome"),
        ("Mozilla/5.0 (Linux; Android 13; SM-S908B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/24.0 Chrome/117.0.0.0 Mobile Safari/537.36", "mobile", "Android", "Samsung Internet"),
        ("Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36", "tablet", "Android", "Chrome"),
        ("Mozilla/5.0 (Android 14; Mobile; rv:125.0) Gecko/125.0 Firefox/125.0", "mobile", "Android", "Firefox"),
        ("Mozilla/5.0 (Linux; Android 14; Pixel 8 Build/AP1A.240405.002; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/124.0.6367.82 Mobile Safari/537.36", "mobile", "Android", "Android WebView"),
        ("Mozilla/5.0 (Linux; Android 14; Pixel 8 Build/AP1A.240405.002; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/124.0.6367.82 Mobile Safari/537.36 [FB_IAB/FB4A;FBAV/460.0.0.48.109;]", "mobile", "Android", "Facebook"),
        ("Mozilla/5.0 (Linux; Android 10; CUBOT X30) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Mobile Safari/537.36", "mobile", "Android", "Chrome"),
        ("Mozilla/5.0 (Linux; Android 9; KFTRWI) AppleWebKit/537.36 (KHTML, like Gecko) Silk/108.5.1 like Chrome/108.0.5359.220 Safari/537.36", "tablet", "Android", "Silk"),
        ("Mozilla/5.0 (Linux; Android 9; AFTMM Build/PS7633; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/120.0.6099.230 Mobile Safari/537.36", "tv", "Android", "Android WebView"),
        ("Mozilla/5.0 (SMART-TV; LINUX; Tizen 6.5) AppleWebKit/537.36 (KHTML, like Gecko) 85.0.4183.93/6.5 TV Safari/537.36", "tv", "Tizen", ""),
        ("Mozilla/5.0 (PlayStation; PlayStation 5/6.50) AppleWebKit/605.1.15 (KHTML, like Gecko)", "console", "PlayStation", ""),
        ("Mozilla/5.0 (Windows NT 10.0; Win64; x64; Xbox; Xbox One) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36 Edge/44.18363.8131", "console", "Windows", "Edge"),
        ("Mozilla/5.0 (compatible; MSIE 10.0; Windows NT 6.1; Trident/6.0)", "desktop", "Windows", "Internet Explorer"),
        ("Opera/9.80 (J2ME/MIDP; Opera Mini/9.80 (S60; SymbOS; Opera Mobi/23.348; U; en) Presto/2.5.25 Version/10.54", "mobile", "", "Opera"),
        ("Mozilla/5.0 (Linux; Android 12; HarmonyOS; NOH-AN00) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/99.0.4844.88 HuaweiBrowser/14.0.5.302 Mobile Safari/537.36", "mobile", "HarmonyOS", "Chrome"),
        ("curl/8.5.0", "", "", ""),
        ("", "", "", ""),
    ];

    #[test]
    fn the_builtin_rules_parse() {
        Rules::parse(&[("built-in", BUILTIN)]).unwrap();
    }

    #[test]
    fn the_builtin_rules_read_real_user_agents() {
        let rules = Rules::builtin();
        for (ua, device, os, browser) in CORPUS {
            let got = rules.classify(ua, "", "");
            assert_eq!((got.device, got.os, got.browser), (*device, *os, *browser), "{ua}");
        }
    }

    #[test]
    fn client_hints_name_a_mobile_device_and_the_platform() {
        let rules = Rules::builtin();
        // Chrome's reduced user agent on an Android phone asking for the desktop site.
        let desktop_mode =
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";
        let got = rules.classify(desktop_mode, "?1", "\"Android\"");
        assert_eq!((got.device, got.os), ("mobile", "Android"));
        let got = rules.classify(desktop_mode, "?0", "\"Chrome OS\"");
        assert_eq!((got.device, got.os), ("desktop", "ChromeOS"));
        // An unknown platform leaves the rules' answer; a tablet stays a tablet.
        assert_eq!(rules.classify(desktop_mode, "", "\"Fuchsia\"").os, "Linux");
        assert_eq!(rules.classify("Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X)", "?1", "").device, "tablet");
    }

    #[test]
    fn an_operators_rules_come_first_and_exclusions_apply() {
        let rules = Rules::with_file(
            "ours.txt",
            "# our app's webview\nbrowser  Acme App = acmeapp/\ndevice kiosk = acmekiosk, !mobile\n",
        )
        .unwrap();
        let ua =
            "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 Chrome/124.0 Mobile Safari/537.36 AcmeApp/3.1";
        assert_eq!(rules.classify(ua, "", "").browser, "Acme App");
        assert_eq!(rules.classify("AcmeKiosk/1 (X11)", "", "").device, "kiosk");
        assert_eq!(rules.classify("AcmeKiosk/1 Mobile", "", "").device, "mobile");
    }

    #[test]
    fn bad_rules_are_named_by_file_and_line() {
        let e = Rules::with_file(
            "ours.txt",
            "colour red = x\nbrowser Acme\nbrowser = acme\nbrowser Acme = acme, \nbrowser Acme = !acme\nos  A very long name that goes past thirty-two = x\n",
        )
        .unwrap_err();
        assert_eq!(
            e,
            vec![
                "ours.txt line 1: \"colour\" is not a field (device, os or browser)".to_string(),
                "ours.txt line 2: expected FIELD VALUE = TOKEN, TOKEN, !TOKEN".into(),
                "ours.txt line 3: value \"\" must be 1 to 32 printable ASCII characters".into(),
                "ours.txt line 4: an empty token".into(),
                "ours.txt line 5: a rule needs at least one token the user agent must contain".into(),
                "ours.txt line 6: value \"A very long name that goes past thirty-two\" must be 1 to 32 printable ASCII characters".into(),
            ]
        );
    }

    #[test]
    fn too_many_tokens_are_refused() {
        let text: String = (0..=MAX_TOKENS).map(|i| format!("browser B{i} = token{i}/\n")).collect();
        let e = Rules::with_file("big.txt", &text).unwrap_err();
        assert!(e.iter().any(|p| p.contains("distinct tokens; at most 1024")), "{e:?}");
    }
}
