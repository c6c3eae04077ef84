//! The fixture programs under `tests/fixtures/` that more than one crate's tests (or a
//! benchmark) use.

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

/// The attribution benchmark's program with `affiliates` affiliates (`aff0000`...), for
/// [`crate::generate::Shape::bench`]'s traffic.
pub fn bench_program(affiliates: u64) -> String {
    let mut s = String::from(include_str!("../../../tests/fixtures/bench-program.toml"));
    for a in 0..affiliates {
        s.push_str(&format!("\n[[affiliates]]\nid = \"aff{a:04}\"\n"));
    }
    s
}
