//! The affiliate API on the public listener: what an affiliate portal, or a partner's own
//! tooling, reads with a token scoped to one affiliate. Every answer is about the token's
//! affiliate only; no path or parameter names another, so another's data cannot be asked for.
//!
//! | request | answers |
//! |---|---|
//! | `GET /v1/affiliate` | the affiliate (`id`, `name`, `group`, `active`) |
//! | `GET /v1/affiliate/links`, `/coupons` | its links (with their URL path) and coupons |
//! | `GET /v1/affiliate/commissions?status=&kind=&after=&limit=` | a page of its ledger entries |
//! | `GET /v1/affiliate/commissions/{id}` | one of its entries; `404` for anyone else's |
//! | `GET /v1/affiliate/stats?from=&to=` | its stats rows |
//! | `GET /v1/affiliate/balances` | its balances per currency: approved unpaid, pending, paid |
//! | `GET /v1/affiliate/payouts` | the payout runs that paid it, with its totals |
//! | `GET /v1/affiliate/payouts/{id}?format=json\|csv` | its statement of a run |
//!
//! Tokens are made and revoked by the admin API (`POST /admin/affiliates/{id}/tokens`,
//! `DELETE .../tokens/{token_id}`); the program keeps their BLAKE3 hashes only. Each token
//! has a token bucket (burst [`BURST`], [`PER_SECOND`] a second): past it, `429`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::{HeaderValue, Method, Request, Response};
use hyper::body::Incoming;
use serde_json::{json, Value};
use tally_model::Program;

use crate::admin::{error, json_response, HookError, LedgerQuery, LedgerView, StatsFn};
use crate::respond::Body;
use crate::Edge;

/// Requests a token may make at once, and refills a second.
pub const BURST: f64 = 20.0;
pub const PER_SECOND: f64 = 10.0;
/// Buckets kept at most; past this they are all forgotten (so full again), which only ever
/// lets a client through, never locks one out.
const MAX_BUCKETS: usize = 100_000;
const MAX_PAGE: usize = 1_000;

/// What the affiliate API reads beyond the program: the ledger and the stats (attribution's,
/// where this process has them).
#[derive(Clone, Default)]
pub struct PortalHooks {
    pub ledger: Option<Arc<dyn LedgerView>>,
    pub stats: Option<Arc<StatsFn>>,
}

impl std::fmt::Debug for PortalHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortalHooks")
            .field("ledger", &self.ledger.is_some())
            .field("stats", &self.stats.is_some())
            .finish()
    }
}

/// Token buckets by token hash.
#[derive(Debug, Default)]
pub(crate) struct Limiter {
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl Limiter {
    /// Takes one request from `key`'s bucket; `false` when it is empty.
    fn take(&self, key: &str) -> bool {
        let Ok(mut buckets) = self.buckets.lock() else { return true };
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(key) {
            buckets.clear();
        }
        let now = Instant::now();
        let (level, at) = buckets.entry(key.to_owned()).or_insert((BURST, now));
        *level = (*level + now.duration_since(*at).as_secs_f64() * PER_SECOND).min(BURST);
        *at = now;
        if *level < 1.0 {
            return false;
        }
        *level -= 1.0;
        true
    }
}

/// A token's hash, as the program keeps it.
pub fn token_hash(token: &str) -> String {
    blake3::hash(token.as_bytes()).to_hex().to_string()
}

/// A new token: `tally_` and 32 random bytes, base64url.
pub fn new_token() -> String {
    use base64::Engine as _;
    let bytes: [u8; 32] = rand::random();
    format!("tally_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

fn unauthorized(why: &str) -> Response<Body> {
    let mut r = error(401, why);
    r.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"tally-affiliate\""));
    r
}

pub(crate) async fn route(edge: &Arc<Edge>, req: Request<Incoming>) -> Response<Body> {
    if req.method() != Method::GET {
        return error(405, "the affiliate API is read-only: use GET");
    }
    if req.uri().path() == "/v1/affiliate/openapi.json" {
        return crate::respond::with_body(200, "application/json", crate::openapi::affiliate_document().into());
    }
    let Some(token) = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
    else {
        return unauthorized("missing Authorization: Bearer <affiliate token>");
    };
    let hash = token_hash(token);
    let program = edge.program();
    let Some(affiliate) = program.affiliate_of_token(&hash) else {
        return unauthorized("unknown or revoked token");
    };
    if !affiliate.active {
        return error(403, "this affiliate is disabled");
    }
    if !edge.portal_limiter.take(&hash) {
        let mut r = error(429, "too many requests for this token; slow down");
        r.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
        return r;
    }
    let me = affiliate.id.clone();
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let segments: Vec<&str> = path.split('/').skip(3).collect();
    let hooks = edge.portal.get().cloned().unwrap_or_default();
    match segments.as_slice() {
        [] => {
            let a = &affiliate.spec;
            json_response(
                200,
                &json!({ "affiliate": { "id": a.id, "name": a.name, "group": a.group, "active": a.active } }),
            )
        }
        ["links"] => no_params(&query).unwrap_or_else(|| links(&program, &me)),
        ["coupons"] => no_params(&query).unwrap_or_else(|| coupons(&program, &me)),
        ["commissions"] => commissions(hooks.ledger, me, &query).await,
        ["commissions", id] => commission(hooks.ledger, me, (*id).to_owned()).await,
        ["stats"] => stats(hooks.stats, me, query).await,
        ["balances"] => match no_params(&query) {
            Some(r) => r,
            None => crate::payouts::balances(edge, hooks.ledger, Some(me)).await,
        },
        ["payouts"] => match no_params(&query) {
            Some(r) => r,
            None => crate::payouts::payouts(hooks.ledger, Some(me)).await,
        },
        ["payouts", id] => crate::payouts::statement(hooks.ledger, (*id).to_owned(), me, &query, true).await,
        _ => error(404, "no such affiliate API endpoint"),
    }
}

fn no_params(query: &str) -> Option<Response<Body>> {
    (!query.is_empty()).then(|| error(400, "this endpoint takes no parameters"))
}

fn links(program: &Program, me: &str) -> Response<Body> {
    let mut links: Vec<Value> = program
        .links()
        .filter(|l| l.affiliate == me)
        .map(|l| json!({ "code": l.code, "offer": l.offer.id, "active": l.active, "enabled": l.enabled, "path": format!("/c/{}", l.code) }))
        .collect();
    links.sort_by(|a, b| a["code"].as_str().cmp(&b["code"].as_str()));
    json_response(200, &json!({ "links": links }))
}

fn coupons(program: &Program, me: &str) -> Response<Body> {
    let mut coupons: Vec<Value> = program
        .coupons()
        .filter(|c| c.affiliate == me)
        .map(|c| json!({ "code": c.code, "offer": c.offer, "active": c.active, "enabled": c.enabled }))
        .collect();
    coupons.sort_by(|a, b| a["code"].as_str().cmp(&b["code"].as_str()));
    json_response(200, &json!({ "coupons": coupons }))
}

fn no_ledger() -> Response<Body> {
    error(404, "commissions and stats are not served by this node (an edge of a cluster)")
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, HookError> + Send + 'static,
) -> Result<T, Response<Body>> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(error(e.status, &e.reason)),
        Err(e) => Err(error(500, &format!("read failed: {e}"))),
    }
}

async fn commissions(ledger: Option<Arc<dyn LedgerView>>, me: String, query: &str) -> Response<Body> {
    let q = match LedgerQuery::parse(query, Some(&me), 100, MAX_PAGE) {
        Ok(q) => q,
        Err(why) => return error(400, &why),
    };
    let Some(ledger) = ledger else { return no_ledger() };
    match blocking(move || ledger.list(&q)).await {
        Ok(v) => json_response(200, &v),
        Err(r) => r,
    }
}

async fn commission(ledger: Option<Arc<dyn LedgerView>>, me: String, id: String) -> Response<Body> {
    let Some(ledger) = ledger else { return no_ledger() };
    match blocking(move || ledger.entry(&id)).await {
        // Another affiliate's entry is answered as if it did not exist.
        Ok(Some(e)) if e["affiliate"].as_str() == Some(me.as_str()) => json_response(200, &json!({ "entry": e })),
        Ok(_) => error(404, "no such entry"),
        Err(r) => r,
    }
}

async fn stats(f: Option<Arc<StatsFn>>, me: String, query: String) -> Response<Body> {
    let (from, to) = match crate::admin::stats_range(&query) {
        Ok(r) => r,
        Err(why) => return error(400, &why),
    };
    let Some(f) = f else { return no_ledger() };
    match blocking(move || f(from.as_deref(), to.as_deref())).await {
        Ok(v) => {
            let mine: Vec<Value> = v["by_affiliate"]
                .as_array()
                .map(|rows| rows.iter().filter(|r| r["key"].as_str() == Some(me.as_str())).cloned().collect())
                .unwrap_or_default();
            json_response(
                200,
                &json!({ "from": v["from"], "to": v["to"], "attributed_through_seq": v["attributed_through_seq"], "rows": mine }),
            )
        }
        Err(r) => r,
    }
}
