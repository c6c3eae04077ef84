//! Tally's wire protocol: what the edge reads from requests and what it writes into answers,
//! as pure functions over bytes and strings.
//!
//! - [`click_query`]: a click's query string (sub IDs, source, deep link) and its redirect.
//! - [`params`]: conversion parameters from pixels and postbacks, in every dialect networks send.
//! - [`auth`]: postback authentication (token or HMAC-SHA256 signature, constant-time).
//! - [`bots`]: previews, prefetches and unfurlers, recorded but flagged non-human.
//! - [`ip`]: which address is the client's, and what of it is stored.
//! - [`headers`]: the one-pass header scan of a click and the `tally_cid` cookie.
//!
//! **Architecture Invariant:** no tokio, no RocksDB, no file or network I/O. The edge calls
//! these from its handlers; the fuzz workspace depends on this crate directly, so fuzzing
//! never builds the log. Randomness is drawn in one place only (`IpPolicy::new` without a
//! configured key).

pub mod auth;
pub mod bots;
pub mod click_query;
pub mod headers;
pub mod ip;
pub mod params;
