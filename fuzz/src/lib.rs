//! Fixtures shared by the fuzz targets. The parsers under test come from `tally-protocol`.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, OnceLock};

use tally_model::program::Offer;
use tally_model::Program;

const PROGRAM: &str = include_str!("../../tests/fixtures/fuzz-program.toml");

/// The advertiser's postback token and HMAC secret in [`advertiser`].
pub const TOKEN: &str = "0123456789abcdef";
pub const HMAC_SECRET: &str = "fedcba9876543210";

fn program() -> &'static Program {
    static PROGRAM_: OnceLock<Program> = OnceLock::new();
    PROGRAM_.get_or_init(|| {
        let mut p = Program::from_toml(PROGRAM).unwrap();
        // The secrets store, as a server resolves the program's named credentials.
        p.resolve_credentials(|name| match name {
            "acme-token" => Some(TOKEN.to_owned()),
            "acme-hmac" => Some(HMAC_SECRET.to_owned()),
            _ => None,
        })
        .unwrap();
        p
    })
}

/// The offer `all`: every macro in its destination, the same allowed hosts as [`offer`].
pub fn all_macros_offer() -> &'static Offer {
    program().offer("all").unwrap()
}

/// The advertiser `acme`, with [`TOKEN`] and [`HMAC_SECRET`].
pub fn advertiser() -> &'static tally_model::program::Advertiser {
    program().advertiser_of(all_macros_offer()).unwrap()
}

/// The offer `shoes`: destination `https://shop.example/l?cid={click_id}`, deep links allowed
/// to `shop.example` and `*.shop.example`.
pub fn offer() -> &'static Offer {
    static OFFER: OnceLock<Arc<Offer>> = OnceLock::new();
    OFFER.get_or_init(|| Arc::clone(Program::from_toml(PROGRAM).unwrap().offer("shoes").unwrap()))
}
