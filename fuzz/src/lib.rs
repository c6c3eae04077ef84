//! Fixtures shared by the fuzz targets.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, OnceLock};

use tally_model::program::Offer;
use tally_model::Program;

const PROGRAM: &str = r#"
[[advertisers]]
id = "acme"
postback_token = "0123456789abcdef"

[[affiliates]]
id = "aff1"

[[offers]]
id = "shoes"
advertiser = "acme"
destination = "https://shop.example/l?cid={click_id}"
allowed_hosts = ["shop.example", "*.shop.example"]
currency = "USD"

  [[offers.goals]]
  id = "sale"
  payout = { kind = "fixed", amount = "1.00" }
"#;

/// The offer `shoes`: destination `https://shop.example/l?cid={click_id}`, deep links allowed
/// to `shop.example` and `*.shop.example`.
pub fn offer() -> &'static Offer {
    static OFFER: OnceLock<Arc<Offer>> = OnceLock::new();
    OFFER.get_or_init(|| Arc::clone(Program::from_toml(PROGRAM).unwrap().offer("shoes").unwrap()))
}
