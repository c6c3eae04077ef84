//! The fixture programs under `tests/fixtures/` that more than one crate's tests use.

/// The attribution rules tests' program: two offers (USD shoes with revenue share, a capped
/// lead and a tiered goal with a milestone; EUR hotels, first click), a coupon and a link.
pub const ATTRIBUTION_RULES: &str = include_str!("../../../tests/fixtures/attribution-rules.toml");

/// [`ATTRIBUTION_RULES`] with other payouts, holds and windows: what a mid-log program
/// change switches to.
pub fn program_variant() -> String {
    ATTRIBUTION_RULES
        .replace(r#"bps = 1000 }"#, r#"bps = 750 }"#)
        .replace("hold_days = 10", "hold_days = 3")
        .replace(r#"amount = "2.50""#, r#"amount = "3.25""#)
        .replace("window_days = 7", "window_days = 2")
}
