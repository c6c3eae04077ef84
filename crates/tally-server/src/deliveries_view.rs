//! The admin API's view of the delivery log (`tally_edge::admin::DeliveriesView`), on the
//! dispatcher's own store (this process delivers).

use std::sync::Arc;

use serde_json::{json, Value};
use tally_attribution::deliveries::{outbox_key, Delivery, DeliveryStore};
use tally_edge::admin::{DeliveriesView, HookError};
use tally_model::delivery::Target;

pub struct Deliveries {
    store: Arc<DeliveryStore>,
    /// On a cluster's attribution tier: only the active process redelivers, and tells the
    /// others.
    tier: Option<tally_delivery::Tier>,
}

impl Deliveries {
    pub fn new(store: Arc<DeliveryStore>, tier: Option<tally_delivery::Tier>) -> Deliveries {
        Deliveries { store, tier }
    }
}

fn key_of(name: &str) -> Result<Vec<u8>, HookError> {
    outbox_key(name).ok_or_else(|| HookError::new(400, format!("\"{name}\" is not a delivery key (like tally-1234-0)")))
}

fn read_error(e: tally_attribution::AttributionError) -> HookError {
    HookError::new(500, format!("cannot read the delivery log: {e}"))
}

/// A delivery as the API shows it (the webhook's body and secret name left out).
pub(crate) fn row(d: &Delivery) -> Value {
    let n = &d.notification;
    let (kind, url) = match &n.target {
        Target::Postback { url } => ("postback", url.as_str()),
        Target::Webhook { url, .. } => ("webhook", url.as_str()),
    };
    let time = |ms: Option<u64>| ms.map(tally_model::time::format_ts);
    json!({
        "key": n.key,
        "event": n.event,
        "receiver": n.receiver,
        "kind": kind,
        "url": url,
        "status": d.status.as_str(),
        "attempts": d.attempts,
        "created": tally_model::time::format_ts(d.created_ms),
        "next_attempt": time(d.next_at_ms),
        "delivered": time(d.delivered_ms),
        "last_status": d.last_status,
        "last_error": d.last_error,
        "last_latency_ms": d.last_latency_ms,
    })
}

impl DeliveriesView for Deliveries {
    fn list(
        &self,
        status: Option<&str>,
        receiver: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Value, HookError> {
        let after = after.map(key_of).transpose()?;
        let keep = |d: &Delivery| {
            status.is_none_or(|s| d.status.as_str() == s) && receiver.is_none_or(|r| d.notification.receiver == r)
        };
        let page = self.store.list(after.as_deref(), limit + 1, keep).map_err(read_error)?;
        let more = page.len() > limit;
        let rows: Vec<Value> = page.iter().take(limit).map(|(_, d)| row(d)).collect();
        let next = if more { rows.last().and_then(|r| r["key"].as_str().map(str::to_owned)) } else { None };
        Ok(json!({ "deliveries": rows, "next": next }))
    }

    fn get(&self, key: &str) -> Result<Option<Value>, HookError> {
        Ok(self.store.get(&key_of(key)?).map_err(read_error)?.map(|d| row(&d)))
    }

    fn redeliver(&self, key: &str) -> Result<Option<Value>, HookError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        if self.tier.as_ref().is_some_and(|t| !(t.active)()) {
            return Err(HookError::new(
                409,
                "this attribution process is a standby: redeliver on the active one (tally_bus_lease_held 1)",
            ));
        }
        let d = self.store.redeliver(&key_of(key)?, now).map_err(read_error)?;
        if let (Some(tier), Some(d)) = (&self.tier, &d) {
            tier.publish(d);
        }
        Ok(d.map(|d| row(&d)))
    }
}
