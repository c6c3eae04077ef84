//! Operators' decisions through the admin API: approve a commission early, reject it, adjust
//! its amount, pay a manual bonus. Each is logged as an `OperatorDecision` naming its actor
//! (`X-Tally-Actor`); attribution applies it in log order, so replay reproduces it. Where
//! this process has the ledger ([`LedgerView`]), the answer waits for attribution to apply the
//! decision and says what it did; on an edge of a cluster it is `202` with the sequence number.
//!
//! | request | does |
//! |---|---|
//! | `GET /admin/commissions?affiliate=&offer=&status=&kind=&after=&limit=` | a page of ledger entries |
//! | `GET /admin/commissions/{id}` | the entry and the entries that refer to it |
//! | `POST /admin/commissions/{id}/approve` `{"note"}` | a pending commission approved now |
//! | `POST /admin/commissions/{id}/reject` `{"reason"}` | rejected (pending) or clawed back (approved) |
//! | `POST /admin/commissions/{id}/adjust` `{"amount","reason"}` | its amount becomes `amount` |
//! | `POST /admin/bonuses` `{"affiliate","offer","amount","reason"}` | a manual bonus, approved at once |

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Method, Request, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{json, Value};
use tally_model::{parse_minor, Currency, Decision};

use crate::admin::{error, json_response, AdminHooks, HookError, LedgerQuery, LedgerView, MAX_BODY};
use crate::manage::actor;
use crate::respond::Body;
use crate::Edge;

/// How long an answer waits for attribution to apply a decision before it says `202`.
const APPLY_WAIT: Duration = Duration::from_secs(5);
const MAX_PAGE: usize = 10_000;
const DEFAULT_PAGE: usize = 1_000;

/// Approves a pending commission now; the body may be empty.
#[derive(Debug, Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApproveBody {
    #[serde(default)]
    pub note: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RejectBody {
    pub reason: String,
}

/// `amount`: the commission's new amount, a decimal in its currency.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdjustBody {
    pub amount: String,
    pub reason: String,
}

/// `amount`: a decimal in the offer's currency.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BonusBody {
    pub affiliate: String,
    pub offer: String,
    pub amount: String,
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
    match (&method, segments) {
        (&Method::GET, ["commissions"]) => list(ledger, req.uri().query().unwrap_or("")).await,
        (&Method::GET, ["commissions", id]) => show(ledger, (*id).to_owned()).await,
        (&Method::POST, ["commissions", id, action @ ("approve" | "reject" | "adjust")]) => {
            let actor = match actor(&req) {
                Ok(a) => a,
                Err(r) => return *r,
            };
            let entry = (*id).to_owned();
            let decision = match *action {
                "approve" => read_body::<ApproveBody>(req)
                    .await
                    .map(|b| Decision::Approve { entry, note: b.unwrap_or_default().note }),
                "reject" => required::<RejectBody>(req, "{\"reason\"}")
                    .await
                    .map(|b| Decision::Reject { entry, reason: b.reason }),
                _ => required::<AdjustBody>(req, "{\"amount\",\"reason\"}").await.map(|b| Decision::Adjust {
                    entry,
                    amount: b.amount,
                    reason: b.reason,
                }),
            };
            match decision {
                Ok(d) => decide(edge, ledger, &actor, d).await,
                Err(r) => *r,
            }
        }
        (&Method::POST, ["bonuses"]) => {
            let actor = match actor(&req) {
                Ok(a) => a,
                Err(r) => return *r,
            };
            match required::<BonusBody>(req, "{\"affiliate\",\"offer\",\"amount\",\"reason\"}").await {
                Ok(b) => {
                    let d =
                        Decision::Bonus { affiliate: b.affiliate, offer: b.offer, amount: b.amount, reason: b.reason };
                    decide(edge, ledger, &actor, d).await
                }
                Err(r) => *r,
            }
        }
        (
            _,
            ["commissions"] | ["commissions", _] | ["commissions", _, "approve" | "reject" | "adjust"] | ["bonuses"],
        ) => error(405, &format!("method {method} not allowed here")),
        _ => error(404, "no such admin endpoint"),
    }
}

/// A JSON body; `None` when there is none.
pub(crate) async fn read_body<T: for<'de> Deserialize<'de>>(
    req: Request<Incoming>,
) -> Result<Option<T>, Box<Response<Body>>> {
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(Box::new(error(413, "request body too large")))
        }
        Err(e) => return Err(Box::new(error(400, &format!("cannot read body: {e}")))),
    };
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(&body).map(Some).map_err(|e| Box::new(error(400, &format!("bad JSON body: {e}"))))
}

/// A body the request must have.
pub(crate) async fn required<T: for<'de> Deserialize<'de>>(
    req: Request<Incoming>,
    what: &str,
) -> Result<T, Box<Response<Body>>> {
    read_body(req).await?.ok_or_else(|| Box::new(error(400, &format!("a JSON body is required: {what}"))))
}

pub(crate) fn no_ledger() -> Response<Body> {
    error(
        404,
        "this process keeps no ledger (an edge of a cluster): ask the attribution tier (tally commissions on its data directory)",
    )
}

fn hook_error(e: HookError) -> Response<Body> {
    error(e.status, &e.reason)
}

/// Runs a ledger read on a blocking thread.
pub(crate) async fn read<T: Send + 'static>(
    ledger: Arc<dyn LedgerView>,
    f: impl FnOnce(&dyn LedgerView) -> Result<T, HookError> + Send + 'static,
) -> Result<T, Response<Body>> {
    match tokio::task::spawn_blocking(move || f(ledger.as_ref())).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(hook_error(e)),
        Err(e) => Err(error(500, &format!("ledger read failed: {e}"))),
    }
}

async fn list(ledger: Option<Arc<dyn LedgerView>>, query: &str) -> Response<Body> {
    let q = match LedgerQuery::parse(query, None, DEFAULT_PAGE, MAX_PAGE) {
        Ok(q) => q,
        Err(why) => return error(400, &why),
    };
    let Some(ledger) = ledger else { return no_ledger() };
    match read(ledger, move |l| l.list(&q)).await {
        Ok(v) => json_response(200, &v),
        Err(r) => r,
    }
}

async fn show(ledger: Option<Arc<dyn LedgerView>>, id: String) -> Response<Body> {
    let Some(ledger) = ledger else { return no_ledger() };
    let result = read(ledger, move |l| match l.entry(&id)? {
        Some(e) => Ok(Some((e, l.related(&id)?))),
        None => Ok(None),
    })
    .await;
    match result {
        Ok(Some((entry, related))) => json_response(200, &json!({ "entry": entry, "related": related })),
        Ok(None) => error(404, "no such ledger entry"),
        Err(r) => r,
    }
}

/// Checks what can be checked before logging, logs the decision, and (with a ledger) waits
/// for attribution to apply it.
pub(crate) async fn decide(
    edge: &Arc<Edge>,
    ledger: Option<Arc<dyn LedgerView>>,
    actor: &str,
    d: Decision,
) -> Response<Body> {
    if let Some(problem) = d.problem() {
        return error(400, &problem);
    }
    // The amount's currency: the entry's, or the bonus's offer's.
    let currency = match &d {
        Decision::Bonus { affiliate, offer, .. } => {
            let program = edge.program();
            if !program.affiliates.contains_key(affiliate) {
                return error(400, &format!("affiliate: no affiliate \"{affiliate}\" in the program"));
            }
            match program.offer(offer) {
                Some(o) => Some(o.currency),
                None => return error(400, &format!("offer: no offer \"{offer}\" in the program")),
            }
        }
        _ => None,
    };
    let currency = match (d.entry(), &ledger) {
        (Some(id), Some(l)) => {
            let id = id.to_owned();
            match read(Arc::clone(l), move |l| l.entry(&id)).await {
                Ok(Some(entry)) => entry["currency"].as_str().and_then(|c| Currency::from_code(c).ok()),
                Ok(None) => return error(404, &format!("no ledger entry \"{}\"", d.entry().unwrap_or(""))),
                Err(r) => return r,
            }
        }
        _ => currency,
    };
    let amount = match &d {
        Decision::Adjust { amount, .. } | Decision::Bonus { amount, .. } => Some(amount),
        _ => None,
    };
    if let (Some(amount), Some(currency)) = (amount, currency) {
        if let Err(e) = parse_minor(amount, currency, false) {
            return error(400, &format!("amount: \"{amount}\" in {}: {e}", currency.code()));
        }
    }
    let seq = match edge.log_decision(actor, &d).await {
        Ok(seq) => seq,
        Err(e) => {
            let mut r = error(503, &format!("the log cannot take the decision now: {e}"));
            r.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
            return r;
        }
    };
    tracing::info!(actor, action = d.action(), entry = d.entry().unwrap_or(""), seq, "operator decision logged");
    let Some(ledger) = ledger else {
        return json_response(202, &json!({ "seq": seq, "applied": false }));
    };
    let target = d.entry().map(str::to_owned);
    let outcome = read(ledger, move |l| {
        if !l.wait_applied(seq, APPLY_WAIT)? {
            return Ok(None);
        }
        let made = l.made_by(seq)?;
        let entry = match &target {
            Some(id) => l.entry(id)?,
            None => None,
        };
        Ok(Some((made, entry)))
    })
    .await;
    let (made, entry) = match outcome {
        Ok(Some(x)) => x,
        Ok(None) => {
            return json_response(
                202,
                &json!({ "seq": seq, "applied": false, "note": "logged; attribution has not applied it yet" }),
            )
        }
        Err(r) => return r,
    };
    // The decision's own entry says what it did (a bonus is its own entry).
    let own_id = seq.to_string();
    let own = made.iter().find(|e| e["id"].as_str() == Some(own_id.as_str())).cloned().unwrap_or(Value::Null);
    if own["reason"] == "not_applicable" {
        return json_response(
            409,
            &json!({ "error": own["rule"].as_str().unwrap_or("not applicable"), "seq": seq, "decision": own }),
        );
    }
    json_response(200, &json!({ "seq": seq, "applied": true, "decision": own, "entry": entry }))
}
