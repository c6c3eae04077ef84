//! The delivery log through the admin API: what became of each outgoing postback and webhook
//! (`tally_delivery`), and redelivery.
//!
//! | request | does |
//! |---|---|
//! | `GET /admin/deliveries?status=&receiver=&after=&limit=` | a page, in outbox order |
//! | `GET /admin/deliveries/{key}` | one delivery |
//! | `POST /admin/deliveries/{key}/redeliver` | due again now (a failed one, or a delivered one the receiver lost) |

use std::sync::Arc;

use http::{Method, Request, Response};
use hyper::body::Incoming;
use serde_json::json;

use crate::admin::{error, json_response, AdminHooks, DeliveriesView, HookError};
use crate::respond::Body;

const MAX_PAGE: usize = 1_000;
const STATUSES: [&str; 3] = ["pending", "delivered", "failed"];

pub(crate) async fn route(hooks: &AdminHooks, req: Request<Incoming>, segments: &[&str]) -> Response<Body> {
    let method = req.method().clone();
    let Some(view) = hooks.deliveries.clone() else {
        return error(
            404,
            "this process delivers no notifications (its attribution runs elsewhere, or [deliveries] enabled = false)",
        );
    };
    match (&method, segments) {
        (&Method::GET, ["deliveries"]) => {
            let (mut status, mut receiver, mut after, mut limit) = (None, None, None, 100);
            for (k, v) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
                let v = v.into_owned();
                match k.as_ref() {
                    "status" if STATUSES.contains(&v.as_str()) => status = Some(v),
                    "status" => return error(400, &format!("status: \"{v}\" is not pending, delivered or failed")),
                    "receiver" => receiver = Some(v),
                    "after" => after = Some(v),
                    "limit" => match v.parse::<usize>() {
                        Ok(n) if (1..=MAX_PAGE).contains(&n) => limit = n,
                        _ => return error(400, &format!("limit: \"{v}\" is not 1-{MAX_PAGE}")),
                    },
                    other => return error(400, &format!("unknown parameter \"{other}\"")),
                }
            }
            blocking(view, move |v| v.list(status.as_deref(), receiver.as_deref(), after.as_deref(), limit)).await
        }
        (&Method::GET, ["deliveries", key]) => {
            let key = (*key).to_owned();
            blocking(view, move |v| v.get(&key)).await
        }
        (&Method::POST, ["deliveries", key, "redeliver"]) => {
            let key = (*key).to_owned();
            blocking(view, move |v| v.redeliver(&key)).await
        }
        (_, ["deliveries"] | ["deliveries", _] | ["deliveries", _, "redeliver"]) => {
            error(405, &format!("method {method} not allowed here"))
        }
        _ => error(404, "no such admin endpoint"),
    }
}

/// Runs `f` on a blocking thread; `Option::None` is a 404.
async fn blocking<T: Into<Found> + Send + 'static>(
    view: Arc<dyn DeliveriesView>,
    f: impl FnOnce(&dyn DeliveriesView) -> Result<T, HookError> + Send + 'static,
) -> Response<Body> {
    match tokio::task::spawn_blocking(move || f(view.as_ref())).await {
        Ok(Ok(v)) => match v.into() {
            Found::Yes(v) => json_response(200, &v),
            Found::No => error(404, "no such delivery"),
        },
        Ok(Err(e)) => error(e.status, &e.reason),
        Err(e) => error(500, &format!("delivery log read failed: {e}")),
    }
}

/// A hook's answer: found or not.
pub(crate) enum Found {
    Yes(serde_json::Value),
    No,
}

impl From<serde_json::Value> for Found {
    fn from(v: serde_json::Value) -> Found {
        Found::Yes(v)
    }
}

impl From<Option<serde_json::Value>> for Found {
    fn from(v: Option<serde_json::Value>) -> Found {
        match v {
            Some(d) => Found::Yes(json!({ "delivery": d })),
            None => Found::No,
        }
    }
}
