//! Test-only switches, read from the environment once per process (`test-util` only).

/// Environment variable that, when `N` > 0, makes the shipper drop every `N`th message
/// (record it as shipped, never publish it): the broken build the cluster harness must
/// catch as lost events.
pub const SHIP_SKIP_ENV: &str = "TALLY_TEST_SHIP_SKIP";

/// Whether the `n`th message (from 1) is to be dropped.
pub(crate) fn skip(n: u64) -> bool {
    static EVERY: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let every = *EVERY.get_or_init(|| std::env::var(SHIP_SKIP_ENV).ok().and_then(|v| v.parse().ok()).unwrap_or(0));
    every > 0 && n.is_multiple_of(every)
}
