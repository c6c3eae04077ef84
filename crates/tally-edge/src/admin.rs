//! The admin listener: `/metrics`, `/healthz`, `/readyz`, and a small JSON API under
//! `/admin/` for operators, on its own address (`admin.listen`, loopback by default).
//!
//! API (every `/admin/` request needs `Authorization: Bearer <admin.token>`; without a
//! configured token the API answers 403, with a missing or wrong one 401, and nothing runs):
//!
//! | request | does |
//! |---|---|
//! | `GET`, `POST /admin/{affiliates,groups,coupons,links}`, `GET`, `PUT`, `PATCH .../{key}`, `POST .../{key}/disable`, `.../enable` | program management ([`crate::manage`]) |
//! | `POST /admin/import?type=&dry_run=` | bulk import: CSV, JSON Lines or JSON, all rows or none |
//! | `GET /admin/program` | the loaded program's digest, counts and offers |
//! | `POST /admin/reload` | re-reads the program file and overlay, as SIGHUP does |
//! | `GET /admin/stats?from=YYYY-MM-DD&to=YYYY-MM-DD` | attribution stats per offer and affiliate |
//! | `GET /admin/log-level`, `PUT /admin/log-level` `{"level":"..."}` | the tracing filter |
//!
//! Program edits go through [`Edge::edit_program`]: each is logged as a `ProgramEdit`
//! before it takes effect, so a replay sees it. Stats and the log level
//! belong to other crates (attribution, the binary's subscriber); they arrive as
//! [`AdminHooks`] so this crate depends on neither.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::{HeaderValue, Method, Request, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use crate::metrics::Route;
use crate::respond::{with_body, Body};
use crate::{Edge, EditError, ReloadError};

/// Admin request bodies are a few hundred bytes (imports aside); anything larger is refused.
pub(crate) const MAX_BODY: usize = 64 * 1024;
/// Admin connections at most: an operator and a scraper, with room to spare.
const MAX_CONNECTIONS: usize = 64;

/// A hook's refusal: the status to answer and a short reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookError {
    pub status: u16,
    pub reason: String,
}

impl HookError {
    pub fn new(status: u16, reason: impl Into<String>) -> HookError {
        HookError { status, reason: reason.into() }
    }
}

/// Stats per offer and affiliate for an inclusive date range (`from`, `to` as given in the
/// query, unparsed). Blocking: it is run on a blocking thread.
pub type StatsFn = dyn Fn(Option<&str>, Option<&str>) -> Result<Value, HookError> + Send + Sync;

/// The process's log filter, changeable at run time.
pub trait LogLevel: Send + Sync {
    fn get(&self) -> String;
    fn set(&self, filter: &str) -> Result<(), String>;
}

/// Which ledger entries a list wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LedgerQuery {
    pub affiliate: Option<String>,
    pub offer: Option<String>,
    pub status: Option<String>,
    pub kind: Option<String>,
    /// The entry ID after which the page starts.
    pub after: Option<String>,
    pub limit: usize,
}

impl LedgerQuery {
    /// Reads a list's query: `affiliate` and `offer` only where `scoped` is `None` (the admin
    /// API), else the affiliate is `scoped` and may not be asked for; `status`, `kind`,
    /// `after`, `limit` (1-`max`, default `default`). The error is the `400`'s reason.
    pub(crate) fn parse(query: &str, scoped: Option<&str>, default: usize, max: usize) -> Result<LedgerQuery, String> {
        let mut q = LedgerQuery { affiliate: scoped.map(str::to_owned), limit: default, ..LedgerQuery::default() };
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            let v = v.into_owned();
            match k.as_ref() {
                "affiliate" if scoped.is_none() => q.affiliate = Some(v),
                "offer" if scoped.is_none() => q.offer = Some(v),
                "status" => q.status = Some(v),
                "kind" => q.kind = Some(v),
                "after" => q.after = Some(v),
                "limit" => match v.parse::<usize>() {
                    Ok(n) if (1..=max).contains(&n) => q.limit = n,
                    _ => return Err(format!("limit: give 1-{max}, not \"{v}\"")),
                },
                other => {
                    let known = if scoped.is_none() { "affiliate, offer, status" } else { "status" };
                    return Err(format!("unknown parameter \"{other}\"; use {known}, kind, after, limit"));
                }
            }
        }
        Ok(q)
    }
}

/// A stats query's `from` and `to`, unparsed; the error is the `400`'s reason.
pub(crate) fn stats_range(query: &str) -> Result<(Option<String>, Option<String>), String> {
    let (mut from, mut to) = (None, None);
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "from" => from = Some(v.into_owned()),
            "to" => to = Some(v.into_owned()),
            other => return Err(format!("unknown parameter \"{other}\"; use from and to")),
        }
    }
    Ok((from, to))
}

/// What the admin API reads of the commission ledger, which attribution keeps (the edge has
/// none of its own). Entries are their ledger rows, as `tally commissions --format jsonl`
/// prints them. Every method blocks; the API calls them on a blocking thread.
pub trait LedgerView: Send + Sync {
    /// The entry `id` (`"1234"`, `"1234.1"`), `None` when the ledger has none.
    fn entry(&self, id: &str) -> Result<Option<Value>, HookError>;
    /// The entries that refer to `id` (duplicates, reversals, decisions), in id order.
    fn related(&self, id: &str) -> Result<Vec<Value>, HookError>;
    /// A page of entries: `{"entries":[...],"next","attributed_through_seq"}`.
    fn list(&self, query: &LedgerQuery) -> Result<Value, HookError>;
    /// Waits until attribution has applied the event at `seq`, at most `timeout`; whether it has.
    fn wait_applied(&self, seq: u64, timeout: std::time::Duration) -> Result<bool, HookError>;
    /// The entries the event at `seq` made (`seq`, `seq.1`, ...).
    fn made_by(&self, seq: u64) -> Result<Vec<Value>, HookError>;
    /// Balances by affiliate and currency (approved unpaid, pending, paid), with the minimum
    /// a payout run needs under `program`: `[{affiliate, currency, approved, pending, paid,
    /// minimum, payable}]`, of `affiliate` only if given.
    fn balances(&self, program: &tally_model::Program, affiliate: Option<&str>) -> Result<Value, HookError>;
    /// Payout runs in log order, with their totals, each with its lines (per affiliate and
    /// currency) when `lines`; of `affiliate` only (runs that paid it, its lines) if given.
    fn payouts(&self, affiliate: Option<&str>, lines: bool) -> Result<Value, HookError>;
    /// `affiliate`'s statement of payout run `payout`, `None` without such a run.
    fn statement(&self, payout: &str, affiliate: &str) -> Result<Option<StatementDoc>, HookError>;
}

/// A statement in both forms: JSON and CSV (`text/csv`).
#[derive(Debug, Clone)]
pub struct StatementDoc {
    pub json: Value,
    pub csv: String,
}

/// The delivery log of outgoing postbacks and webhooks, where this process delivers them.
pub trait DeliveriesView: Send + Sync {
    /// A page in outbox order: `{"deliveries":[...],"next"}`, of a status and receiver if given.
    fn list(
        &self,
        status: Option<&str>,
        receiver: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Value, HookError>;
    /// One delivery by its key (`tally-SEQ-N`).
    fn get(&self, key: &str) -> Result<Option<Value>, HookError>;
    /// Makes a delivery due now, whatever its status; the delivery as it now is.
    fn redeliver(&self, key: &str) -> Result<Option<Value>, HookError>;
}

/// What the admin API needs from outside this crate.
#[derive(Clone, Default)]
pub struct AdminHooks {
    pub stats: Option<Arc<StatsFn>>,
    pub log_level: Option<Arc<dyn LogLevel>>,
    /// The ledger, where this process has one (not on an edge of a cluster).
    pub ledger: Option<Arc<dyn LedgerView>>,
    /// The delivery log, where this process delivers notifications.
    pub deliveries: Option<Arc<dyn DeliveriesView>>,
}

impl std::fmt::Debug for AdminHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminHooks")
            .field("stats", &self.stats.is_some())
            .field("log_level", &self.log_level.is_some())
            .field("ledger", &self.ledger.is_some())
            .field("deliveries", &self.deliveries.is_some())
            .finish()
    }
}

/// Serves the admin listener until `shutdown` resolves.
pub async fn serve_admin(
    edge: Arc<Edge>,
    listener: tokio::net::TcpListener,
    hooks: AdminHooks,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let hooks = Arc::new(hooks);
    crate::server::accept_loop(edge, listener, shutdown, MAX_CONNECTIONS, false, move |edge, _peer, req| {
        let hooks = Arc::clone(&hooks);
        async move { Ok::<_, Infallible>(route(edge, &hooks, req).await) }
    })
    .await
}

async fn route(edge: Arc<Edge>, hooks: &AdminHooks, req: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let path = req.uri().path().to_owned();
    let (route, resp) = match path.as_str() {
        "/metrics" => (Route::metrics, metrics(&edge).await),
        "/healthz" => (Route::healthz, crate::respond::healthz()),
        "/readyz" => (Route::readyz, crate::respond::readyz(&edge)),
        p if p == "/admin" || p.starts_with("/admin/") => (Route::admin, api(&edge, hooks, req).await),
        _ => (Route::other, error(404, "not found")),
    };
    edge.metrics.request(route, resp.status().as_u16(), started.elapsed().as_secs_f64());
    resp
}

async fn metrics(edge: &Arc<Edge>) -> Response<Body> {
    // Property reads are RocksDB calls: off the async workers.
    let e = Arc::clone(edge);
    let _ = tokio::task::spawn_blocking(move || e.log.sample_metrics()).await;
    let mut text = String::with_capacity(16 * 1024);
    match prometheus_client::encoding::text::encode(&mut text, &edge.registry) {
        Ok(()) => with_body(200, "application/openmetrics-text; version=1.0.0; charset=utf-8", text.into()),
        Err(e) => error(500, &format!("cannot encode metrics: {e}")),
    }
}

pub(crate) fn json_response(status: u16, v: &Value) -> Response<Body> {
    with_body(status, "application/json", Bytes::from(v.to_string()))
}

pub(crate) fn error(status: u16, reason: &str) -> Response<Body> {
    json_response(status, &json!({ "error": reason }))
}

/// Checks the bearer token in constant time; `Some` is the refusal to send.
fn refusal(edge: &Edge, req: &Request<Incoming>) -> Option<Response<Body>> {
    refusal_for(edge.config.admin.token.as_deref(), req)
}

/// [`refusal`], against `token` (`None`: the API is off).
fn refusal_for(token: Option<&str>, req: &Request<Incoming>) -> Option<Response<Body>> {
    let Some(expected) = token else {
        return Some(error(403, "admin API disabled: set admin.token or admin.token_file"));
    };
    let given = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(g) if bool::from(g.as_bytes().ct_eq(expected.as_bytes())) => None,
        other => {
            let mut r =
                error(401, if other.is_some() { "wrong bearer token" } else { "missing Authorization: Bearer token" });
            r.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"tally-admin\""));
            Some(r)
        }
    }
}

async fn api(edge: &Arc<Edge>, hooks: &AdminHooks, req: Request<Incoming>) -> Response<Body> {
    if let Some(r) = refusal(edge, &req) {
        return r;
    }
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let method = req.method().clone();
    let segments: Vec<&str> = path.split('/').skip(2).collect();
    if matches!(segments.first(), Some(&("commissions" | "bonuses"))) {
        return crate::decisions::route(edge, hooks, req, &segments).await;
    }
    if matches!(segments.first(), Some(&("payouts" | "balances"))) {
        return crate::payouts::route(edge, hooks, req, &segments).await;
    }
    if segments.first() == Some(&"deliveries") {
        return crate::deliveries::route(hooks, req, &segments).await;
    }
    let managed = matches!(segments.first(), Some(&("affiliates" | "groups" | "coupons" | "links" | "import")));
    if managed {
        if let Some(r) = crate::manage::route(edge, req, &segments).await {
            return r;
        }
        return error(404, "no such admin endpoint");
    }
    match (&method, segments.as_slice()) {
        (&Method::GET, ["openapi.json"]) => with_body(200, "application/json", Bytes::from(crate::openapi::document())),
        (&Method::GET, ["program"]) => program_info(edge),
        (&Method::POST, ["reload"]) => reload(edge).await,
        (&Method::GET, ["stats"]) => stats(hooks, req.uri().query().unwrap_or("")).await,
        (&Method::GET, ["log-level"]) => match &hooks.log_level {
            Some(l) => json_response(200, &json!({ "level": l.get() })),
            None => error(404, "log level control is not available in this process"),
        },
        (&Method::PUT, ["log-level"]) => match read_json::<NewLevel>(req).await {
            Ok(n) => set_level(hooks, &n.level),
            Err(r) => *r,
        },
        (&Method::POST, ["erase"]) => match read_json::<EraseRequest>(req).await {
            Ok(e) => erase(edge, e).await,
            Err(r) => *r,
        },
        (&Method::POST, ["retention"]) => match read_json::<RetentionRequest>(req).await {
            Ok(r) => retention(edge, r).await,
            Err(r) => *r,
        },
        (_, ["program"] | ["reload"] | ["stats"] | ["log-level"] | ["erase"] | ["retention"]) => {
            error(405, &format!("method {method} not allowed here"))
        }
        _ => error(404, "no such admin endpoint"),
    }
}

pub(crate) async fn read_json<T: for<'de> Deserialize<'de>>(req: Request<Incoming>) -> Result<T, Box<Response<Body>>> {
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(Box::new(error(413, "request body too large")))
        }
        Err(e) => return Err(Box::new(error(400, &format!("cannot read body: {e}")))),
    };
    serde_json::from_slice(&body).map_err(|e| Box::new(error(400, &format!("bad JSON body: {e}"))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewLevel {
    level: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EraseRequest {
    #[serde(default)]
    click_ids: Vec<String>,
    #[serde(default)]
    ips: Vec<String>,
    #[serde(default)]
    customers: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RetentionRequest {
    /// Defaults to `privacy.retention_days`.
    days: Option<u32>,
}

/// `POST /admin/erase`: an erasure request, by click IDs, stored IPs and/or customer IDs.
async fn erase(edge: &Arc<Edge>, req: EraseRequest) -> Response<Body> {
    let mut click_ids = Vec::with_capacity(req.click_ids.len());
    for id in &req.click_ids {
        match id.parse::<tally_model::ClickId>() {
            Ok(c) => click_ids.push(c),
            Err(e) => return error(400, &format!("click_ids: \"{id}\" is not a click ID: {e}")),
        }
    }
    if let Some(ip) = req.ips.iter().find(|ip| ip.is_empty()) {
        return error(400, &format!("ips: \"{ip}\" is empty"));
    }
    if let Some(c) = req.customers.iter().find(|c| c.is_empty()) {
        return error(400, &format!("customers: \"{c}\" is empty"));
    }
    let what = tally_log::Erasure { click_ids, ips: req.ips, customers: req.customers };
    if what.is_empty() {
        return error(400, "nothing to erase: give click_ids, ips and/or customers");
    }
    match edge.erase(what).await {
        Ok(report) => json_response(200, &json!(report)),
        Err(e) => error(500, &format!("erasure failed: {e}")),
    }
}

/// `POST /admin/retention`: a retention pass now, for `days` or the configured days.
async fn retention(edge: &Arc<Edge>, req: RetentionRequest) -> Response<Body> {
    let days = req.days.unwrap_or(edge.config.retention_days);
    if days == 0 || days > 36_500 {
        return error(400, "days: give 1-36500 (privacy.retention_days is 0: personal fields are kept)");
    }
    match edge.apply_retention(days).await {
        Ok(report) => json_response(200, &json!(report)),
        Err(e) => error(500, &format!("retention failed: {e}")),
    }
}

pub(crate) fn edit_error(e: EditError) -> Response<Body> {
    match e {
        EditError::NotFound(why) => error(404, &why),
        EditError::Conflict(why) => error(409, &why),
        EditError::Invalid(problems) => {
            json_response(400, &json!({ "error": "invalid change; nothing was changed", "problems": problems }))
        }
        EditError::Reload(ReloadError::Log(e)) => {
            let mut r = error(503, &format!("the log cannot take the change now: {e}"));
            r.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
            r
        }
        other => error(500, &other.to_string()),
    }
}

fn program_info(edge: &Edge) -> Response<Body> {
    let p = edge.program();
    let offers: Vec<Value> = p
        .offers
        .values()
        .map(|o| json!({ "id": o.id, "currency": o.currency.code(), "goals": o.goals.iter().map(|g| &g.id).collect::<Vec<_>>() }))
        .collect();
    json_response(
        200,
        &json!({
            "digest": p.digest,
            "path": edge.config.program_path.display().to_string(),
            "advertisers": p.advertisers.len(),
            "time_zone": p.calendar.name(),
            "affiliates": p.affiliates.len(),
            "groups": p.groups.len(),
            "coupons": p.coupons().count(),
            "managed": {
                "affiliates": p.managed.affiliates.len(),
                "groups": p.managed.groups.len(),
                "coupons": p.managed.coupons.len(),
                "links": p.managed.links.len(),
            },
            "offers": offers,
            "links": p.links().count(),
            "active_links": p.links().filter(|l| l.active).count(),
        }),
    )
}

async fn reload(edge: &Arc<Edge>) -> Response<Body> {
    match edge.reload().await {
        Ok(changed) => json_response(200, &json!({ "changed": changed, "digest": edge.program().digest })),
        Err(ReloadError::Program(e)) => {
            json_response(400, &json!({ "error": "invalid program; keeping the old one", "problems": e.problems() }))
        }
        Err(e) => error(500, &format!("reload failed; keeping the old program: {e}")),
    }
}

/// `GET /admin/stats` for a process with no edge (`tally attribute` on a cluster's
/// attribution tier): the same bearer token (`admin.token`), query and answer as the
/// edge's admin API.
pub async fn stats_endpoint(token: Option<&str>, hooks: &AdminHooks, req: Request<Incoming>) -> Response<Body> {
    if let Some(r) = refusal_for(token, &req) {
        return r;
    }
    if req.method() != Method::GET {
        return error(405, "use GET");
    }
    stats(hooks, req.uri().query().unwrap_or("")).await
}

/// `/admin/deliveries...` on a listener of its own (`tally attribute`'s, where the worker
/// and the dispatcher run out of the server), behind `token`.
pub async fn deliveries_endpoint(token: Option<&str>, hooks: &AdminHooks, req: Request<Incoming>) -> Response<Body> {
    if let Some(r) = refusal_for(token, &req) {
        return r;
    }
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let segments: Vec<&str> = path.split('/').skip(2).collect();
    crate::deliveries::route(hooks, req, &segments).await
}

async fn stats(hooks: &AdminHooks, query: &str) -> Response<Body> {
    let Some(f) = hooks.stats.clone() else {
        return error(404, "stats are not available in this process");
    };
    let (from, to) = match stats_range(query) {
        Ok(r) => r,
        Err(why) => return error(400, &why),
    };
    match tokio::task::spawn_blocking(move || f(from.as_deref(), to.as_deref())).await {
        Ok(Ok(v)) => json_response(200, &v),
        Ok(Err(e)) => error(e.status, &e.reason),
        Err(e) => error(500, &format!("stats failed: {e}")),
    }
}

fn set_level(hooks: &AdminHooks, level: &str) -> Response<Body> {
    let Some(l) = &hooks.log_level else {
        return error(404, "log level control is not available in this process");
    };
    match l.set(level) {
        Ok(()) => {
            tracing::warn!(level, "log level changed through the admin API");
            json_response(200, &json!({ "level": l.get() }))
        }
        Err(why) => error(400, &format!("level: {why}")),
    }
}
