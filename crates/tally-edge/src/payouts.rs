//! Payouts through the admin API: balances, payout runs and their voids (operator decisions,
//! logged and applied by attribution like the others, [`crate::decisions`]), and statements
//! per affiliate, in JSON or CSV. The affiliate API serves an affiliate its own
//! ([`crate::portal`]).
//!
//! | request | does |
//! |---|---|
//! | `GET /admin/balances?affiliate=` | approved unpaid, pending and paid, per affiliate and currency, with the minimum |
//! | `GET /admin/payouts` | payout runs, in order, with totals |
//! | `GET /admin/payouts/{id}` | one run, with what it paid each affiliate |
//! | `GET /admin/payouts/{id}/statements/{affiliate}?format=json\|csv` | the affiliate's statement of the run |
//! | `POST /admin/payouts` `{"payout","up_to","affiliates","group","note"}` | a payout run |
//! | `POST /admin/payouts/{id}/void` `{"reason"}` | the run's entries are unpaid again |

use std::sync::Arc;

use http::{Method, Request, Response};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{json, Value};
use tally_model::Decision;

use crate::admin::{error, json_response, AdminHooks, LedgerView, StatementDoc};
use crate::decisions::{decide, no_ledger, read, required};
use crate::manage::actor;
use crate::respond::{with_body, Body};
use crate::Edge;

/// A payout run. `payout` is its ID (default: `up_to`); `up_to` a date (`YYYY-MM-DD`, the
/// whole UTC day) or an RFC 3339 UTC time; `affiliates` or `group` limit it (default: all).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PayoutBody {
    #[serde(default)]
    pub payout: String,
    pub up_to: String,
    #[serde(default)]
    pub affiliates: Vec<String>,
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub note: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VoidBody {
    pub reason: String,
}

pub(crate) async fn route(
    edge: &Arc<Edge>,
    hooks: &AdminHooks,
    req: Request<Incoming>,
    segments: &[&str],
) -> Response<Body> {
    let method = req.method().clone();
    let ledger = hooks.ledger.clone();
    let query = req.uri().query().unwrap_or("").to_owned();
    match (&method, segments) {
        (&Method::GET, ["balances"]) => {
            let affiliate = match only_param(&query, "affiliate") {
                Ok(a) => a,
                Err(why) => return error(400, &why),
            };
            balances(edge, ledger, affiliate).await
        }
        (&Method::GET, ["payouts"]) => match only_param(&query, "") {
            Ok(_) => payouts(ledger, None).await,
            Err(why) => error(400, &why),
        },
        (&Method::GET, ["payouts", id]) => payout(ledger, (*id).to_owned(), None).await,
        (&Method::GET, ["payouts", id, "statements", affiliate]) => {
            statement(ledger, (*id).to_owned(), (*affiliate).to_owned(), &query, false).await
        }
        (&Method::POST, ["payouts"]) => {
            let actor = match actor(&req) {
                Ok(a) => a,
                Err(r) => return *r,
            };
            let b = match required::<PayoutBody>(req, "{\"up_to\"}").await {
                Ok(b) => b,
                Err(r) => return *r,
            };
            let program = edge.program();
            if let Some(a) = b.affiliates.iter().find(|a| !program.affiliates.contains_key(a.as_str())) {
                return error(400, &format!("affiliates: no affiliate \"{a}\" in the program"));
            }
            if !b.group.is_empty() && !program.groups.contains_key(&b.group) {
                return error(400, &format!("group: no group \"{}\" in the program", b.group));
            }
            let payout = if b.payout.is_empty() { b.up_to.clone() } else { b.payout };
            let d = Decision::Payout { payout, up_to: b.up_to, affiliates: b.affiliates, group: b.group, note: b.note };
            decide(edge, ledger, &actor, d).await
        }
        (&Method::POST, ["payouts", id, "void"]) => {
            let actor = match actor(&req) {
                Ok(a) => a,
                Err(r) => return *r,
            };
            let b = match required::<VoidBody>(req, "{\"reason\"}").await {
                Ok(b) => b,
                Err(r) => return *r,
            };
            let id = (*id).to_owned();
            if let Some(l) = &ledger {
                let wanted = id.clone();
                match read(Arc::clone(l), move |l| l.payouts(None, false)).await {
                    Ok(runs) if !find_run(&runs, &wanted).is_null() => {}
                    Ok(_) => return error(404, &format!("no payout \"{id}\"")),
                    Err(r) => return r,
                }
            }
            decide(edge, ledger, &actor, Decision::VoidPayout { payout: id, reason: b.reason }).await
        }
        (_, ["balances"] | ["payouts"] | ["payouts", _] | ["payouts", _, "void"] | ["payouts", _, "statements", _]) => {
            error(405, &format!("method {method} not allowed here"))
        }
        _ => error(404, "no such admin endpoint"),
    }
}

/// The value of the one parameter `name` allows (`""`: none), refusing any other.
fn only_param(query: &str, name: &str) -> Result<Option<String>, String> {
    let mut value = None;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        if k != name || name.is_empty() {
            return Err(format!("unknown parameter \"{k}\""));
        }
        value = Some(v.into_owned()).filter(|v| !v.is_empty());
    }
    Ok(value)
}

fn find_run(runs: &Value, id: &str) -> Value {
    runs.as_array().and_then(|r| r.iter().find(|r| r["payout"] == id)).cloned().unwrap_or(Value::Null)
}

pub(crate) async fn balances(
    edge: &Arc<Edge>,
    ledger: Option<Arc<dyn LedgerView>>,
    affiliate: Option<String>,
) -> Response<Body> {
    let Some(ledger) = ledger else { return no_ledger() };
    let program = edge.program();
    match read(ledger, move |l| l.balances(&program, affiliate.as_deref())).await {
        Ok(v) => json_response(200, &json!({ "balances": v })),
        Err(r) => r,
    }
}

pub(crate) async fn payouts(ledger: Option<Arc<dyn LedgerView>>, affiliate: Option<String>) -> Response<Body> {
    let Some(ledger) = ledger else { return no_ledger() };
    let lines = affiliate.is_some();
    match read(ledger, move |l| l.payouts(affiliate.as_deref(), lines)).await {
        Ok(v) => json_response(200, &json!({ "payouts": v })),
        Err(r) => r,
    }
}

async fn payout(ledger: Option<Arc<dyn LedgerView>>, id: String, affiliate: Option<String>) -> Response<Body> {
    let Some(ledger) = ledger else { return no_ledger() };
    match read(ledger, move |l| l.payouts(affiliate.as_deref(), true)).await {
        Ok(runs) => match find_run(&runs, &id) {
            Value::Null => error(404, &format!("no payout \"{id}\"")),
            run => json_response(200, &json!({ "payout": run })),
        },
        Err(r) => r,
    }
}

/// A statement, as `?format=json` (the default) or `csv` asks. `own`: for the affiliate
/// itself, which sees only runs that paid it (`404` otherwise, as for a run that does not
/// exist, so it learns nothing of runs that paid only others).
pub(crate) async fn statement(
    ledger: Option<Arc<dyn LedgerView>>,
    id: String,
    affiliate: String,
    query: &str,
    own: bool,
) -> Response<Body> {
    let csv = match only_param(query, "format") {
        Ok(None) => false,
        Ok(Some(f)) if f == "json" => false,
        Ok(Some(f)) if f == "csv" => true,
        Ok(Some(f)) => return error(400, &format!("format: \"{f}\" is not json or csv")),
        Err(why) => return error(400, &why),
    };
    let Some(ledger) = ledger else { return no_ledger() };
    let wanted = id.clone();
    let found = read(ledger, move |l| l.statement(&wanted, &affiliate)).await;
    let empty = |doc: &StatementDoc| doc.json["entries"].as_array().is_none_or(Vec::is_empty);
    match found {
        Ok(Some(doc)) if own && empty(&doc) => error(404, &format!("no payout \"{id}\"")),
        Ok(Some(StatementDoc { csv: text, .. })) if csv => with_body(200, "text/csv; charset=utf-8", text.into()),
        Ok(Some(doc)) => json_response(200, &json!({ "statement": doc.json })),
        Ok(None) => error(404, &format!("no payout \"{id}\"")),
        Err(r) => r,
    }
}
