//! Shared fixtures for Tally's benchmarks.

use tally_model::Event;
use tally_testkit::ClickBuilder;

/// A click shaped like production traffic: real-looking user agent, sub IDs, truncated IP.
pub fn sample_click(i: u64) -> Event {
    ClickBuilder::new()
        .at(1_700_000_000_000 + i)
        // Spreads the IDs' random part the way real click IDs are.
        .nonce(i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .link("demo")
        .sub(1, "spring-sale")
        .sub(2, &format!("kw{i}"))
        .source("newsletter")
        .user_agent("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1")
        .referrer("https://blog.example/best-running-shoes")
        .ip("203.0.113.0")
        .event()
}
