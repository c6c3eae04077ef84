//! Shared fixtures for Tally's benchmarks.

use tally_model::{Click, ClickId, Event};

/// A click shaped like production traffic: real-looking user agent, sub IDs, truncated IP.
pub fn sample_click(i: u64) -> Event {
    Event::Click(Click {
        click_id: ClickId::new(1_700_000_000_000 + i, 1, i.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        ts_ms: 1_700_000_000_000 + i,
        link: "demo".into(),
        offer: "shoes".into(),
        affiliate: "aff1".into(),
        subs: ["spring-sale".into(), format!("kw{i}"), String::new(), String::new(), String::new()],
        source: "newsletter".into(),
        deep_link: String::new(),
        user_agent: "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1".into(),
        referrer: "https://blog.example/best-running-shoes".into(),
        ip: "203.0.113.0".into(),
        flags: 0,
        prior_click: None,
    })
}
