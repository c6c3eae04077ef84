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

/// [`bench_program`] whose shoes sales and apps purchases pay a referred customer's
/// referrer for 12 months and for life: every conversion that names a customer looks up its
/// binding (traffic with [`crate::generate::Shape::customers`] set).
pub fn bench_program_recurring(affiliates: u64) -> String {
    bench_program(affiliates).replacen("hold_days = 10\n", "hold_days = 10\n  recurring_months = 12\n", 1).replacen(
        "bps = 500 }\n  hold_days = 7\n",
        "bps = 500 }\n  hold_days = 7\n  lifetime = true\n",
        1,
    )
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

#[cfg(test)]
mod tests {
    use super::*;
    use tally_model::program::Recurring;

    #[test]
    fn the_recurring_bench_program_has_recurring_goals() {
        let recurring = |src: &str| -> Vec<Recurring> {
            let p = tally_model::Program::from_toml(src).unwrap_or_else(|e| panic!("{e}"));
            p.offers
                .values()
                .flat_map(|o| o.goals.iter().map(|g| g.recurring))
                .filter(|r| *r != Recurring::Off)
                .collect()
        };
        assert!(recurring(&bench_program(8)).is_empty());
        assert_eq!(recurring(&bench_program_recurring(8)), [Recurring::Lifetime, Recurring::Months(12)]);
    }
}
