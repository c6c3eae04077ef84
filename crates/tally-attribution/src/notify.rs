//! The notifications a ledger entry's change makes (`tally_model::delivery`): a commission,
//! bonus or clawback credited to an affiliate, when it is created and each time its status,
//! amount or payout changes, makes one notification per receiver (one postback URL: the
//! credited click's link's, else the affiliate's, else its group's; each webhook that takes
//! the event). [`crate::State::put_entry`] puts them in the
//! outbox of the same commit as the entry, so a crash can neither lose one nor invent one.

use tally_model::delivery::{webhook_body, CommissionFacts, Notification, Target};
use tally_model::{format_minor, Program};

use crate::ledger::{Entry, Kind, Status};

/// What `new` notifies at event time `ts_ms`, given the entry as it was (`None`: created
/// now), in receiver order; their keys are left to the caller, which numbers them.
pub(crate) fn notifications(program: &Program, ts_ms: u64, old: Option<&Entry>, new: &Entry) -> Vec<Notification> {
    if !matches!(new.kind, Kind::Commission | Kind::Bonus | Kind::Clawback)
        || new.affiliate.is_empty()
        || matches!(new.status, Status::Duplicate | Status::Unattributed)
    {
        return Vec::new();
    }
    let event = match old {
        None => "commission.created",
        Some(o) if (o.status, o.amount, o.paid_in()) != (new.status, new.amount, new.paid_in()) => "commission.updated",
        Some(_) => return Vec::new(),
    };
    let facts = facts(new);
    let mut out = Vec::new();
    let mut put = |receiver: &str, target: Target| {
        out.push(Notification {
            key: String::new(),
            event: event.to_owned(),
            receiver: receiver.to_owned(),
            ts_ms,
            target,
        });
    };
    if let Some(t) = program.postback_for(&new.link, &new.affiliate) {
        put(&new.affiliate, Target::Postback { url: t.render(|m| facts.macro_value(m, event)) });
    }
    for w in program.webhooks.iter().filter(|w| w.events.iter().any(|e| e == event)) {
        let body = webhook_body(event, ts_ms, &facts);
        put(&w.id, Target::Webhook { id: w.id.clone(), url: w.url.clone(), secret: w.secret.clone(), body });
    }
    out
}

fn facts(e: &Entry) -> CommissionFacts {
    CommissionFacts {
        entry: e.id.to_string(),
        kind: e.kind.as_str().to_owned(),
        status: e.status.as_str().to_owned(),
        reason: e.reason.as_str().to_owned(),
        affiliate: e.affiliate.clone(),
        offer: e.offer.clone(),
        goal: e.goal.clone(),
        click_id: e.click_id.map(|c| c.to_string()).unwrap_or_default(),
        sub1: e.sub1.clone(),
        coupon: e.coupon.clone(),
        txid: e.txid.clone(),
        amount: e.sale_amount.map(|a| format_minor(a, e.currency)).unwrap_or_default(),
        payout: format_minor(e.amount, e.currency),
        currency: e.currency.code().to_owned(),
        paid_in: e.paid_in().unwrap_or("").to_owned(),
    }
}
