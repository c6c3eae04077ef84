//! Model check: random logs of clicks, conversions, duplicates, reversals and program changes,
//! attributed by the real worker (RocksDB state, commits at random points) and by a small
//! reference model written straight from the rules (no indexes, no overlay, no commits: every
//! question is answered by scanning the events seen so far). The ledgers must agree.
//!
//! The model covers joins, windows, click expiry, coupons, dedup, payouts (fixed and revenue
//! share), holds, reversals and program changes; caps, tiers, milestones and first-click
//! chains have their own table tests in `rules.rs`.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;

use common::{generate, DAY};
use proptest::prelude::*;
use tally_attribution::{AttributionMetrics, EntryId, Kind, Reason, Status, Worker, WorkerOptions};
use tally_log::{Log, LogMetrics, LogOptions};
use tally_model::program::{Payout, Program};
use tally_model::{ClickId, Conversion, ConversionStatus, Event};

const MODEL_A: &str = include_str!("../../../tests/fixtures/attribution-model.toml");

fn model_b() -> String {
    MODEL_A
        .replace("bps = 1000", "bps = 1250")
        .replace("hold_days = 10", "hold_days = 4")
        .replace("window_days = 7", "window_days = 3")
        .replace(r#"amount = "2.50""#, r#"amount = "0.99""#)
}

/// The fields of an entry the model predicts.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Outcome {
    kind: Kind,
    status: Status,
    reason: Reason,
    affiliate: String,
    click_id: Option<ClickId>,
    amount: i64,
    refers_to: Option<EntryId>,
    reversed_by: Option<u64>,
    approved_seq: Option<u64>,
    approve_at: Option<u64>,
}

fn outcome(kind: Kind, status: Status, reason: Reason) -> Outcome {
    Outcome {
        kind,
        status,
        reason,
        affiliate: String::new(),
        click_id: None,
        amount: 0,
        refers_to: None,
        reversed_by: None,
        approved_seq: None,
        approve_at: None,
    }
}

/// The reference model.
fn model(events: &[Event]) -> BTreeMap<EntryId, Outcome> {
    let mut ledger: BTreeMap<EntryId, Outcome> = BTreeMap::new();
    // For each conversion entry, the (offer, goal, txid) it claimed, if it claimed one.
    let mut claims: Vec<((String, String, String), EntryId)> = Vec::new();
    let mut program: Option<Program> = None;
    let (mut watermark, mut horizon) = (0u64, 0u64);
    for (i, event) in events.iter().enumerate() {
        let seq = i as u64 + 1;
        watermark = watermark.max(event.ts_ms());
        if let Some(p) = &program {
            let longest = p.offers.values().map(|o| o.window_days).max().unwrap_or(30);
            horizon = horizon.max(watermark.saturating_sub((u64::from(longest) + 1) * DAY));
        }
        for o in ledger.values_mut() {
            if o.status == Status::Pending && o.approve_at.is_some_and(|at| at <= watermark) {
                o.status = Status::Approved;
                o.approved_seq = Some(seq);
            }
        }
        let c = match event {
            Event::ProgramChange(p) => {
                if let Ok(p) = Program::from_toml(&p.source) {
                    program = Some(p);
                }
                continue;
            }
            // The model's logs have no program edits.
            Event::Click(_) | Event::ProgramEdit(_) | Event::Decision(_) => continue,
            Event::Conversion(c) => c,
        };
        let id = EntryId::of_event(seq);
        let kind = if c.status.is_reversal() { Kind::Reversal } else { Kind::Commission };
        // An entry that credits nobody still names the click it claimed.
        let outcome = |kind, status, reason| Outcome { click_id: c.click_id, ..outcome(kind, status, reason) };
        let Some(p) = &program else {
            ledger.insert(id, outcome(kind, Status::Unattributed, Reason::NoProgram));
            continue;
        };
        let Some(offer) = p.offer(&c.offer) else {
            ledger.insert(id, outcome(kind, Status::Unattributed, Reason::UnknownOffer));
            continue;
        };
        let Some(goal) = offer.goal(&c.goal) else {
            ledger.insert(id, outcome(kind, Status::Unattributed, Reason::UnknownGoal));
            continue;
        };
        let key = (c.offer.clone(), c.goal.clone(), c.txid.clone());
        let claimed = claims.iter().find(|(k, _)| *k == key).map(|(_, id)| *id);
        if c.status.is_reversal() {
            let r = reverse(&mut ledger, seq, c, claimed);
            ledger.insert(id, r);
            continue;
        }
        if !c.txid.is_empty() {
            if let Some(original) = claimed {
                let o = &ledger[&original];
                let mut d = outcome(kind, Status::Duplicate, Reason::RepeatedTransaction);
                d.affiliate = o.affiliate.clone();
                d.click_id = o.click_id;
                d.refers_to = Some(original);
                ledger.insert(id, d);
                continue;
            }
            claims.push((key, id));
        }
        // The click: the one event with that ID, if it is not past the horizon.
        let mut failure = Reason::NoClick;
        let mut credit: Option<(String, Option<ClickId>)> = None;
        if let Some(cid) = c.click_id {
            let click = events[..i].iter().find_map(|e| match e {
                Event::Click(k) if k.click_id == cid && k.ts_ms >= horizon => Some(k),
                _ => None,
            });
            match click {
                None if cid.timestamp_ms() < horizon => failure = Reason::ExpiredClick,
                None => failure = Reason::UnknownClick,
                Some(k) if k.offer != c.offer => failure = Reason::ClickOfferMismatch,
                Some(k) if c.ts_ms.saturating_sub(k.ts_ms) > u64::from(offer.window_days) * DAY => {
                    failure = Reason::OutsideWindow
                }
                Some(k) => credit = Some((k.affiliate.clone(), Some(cid))),
            }
        }
        if credit.is_none() && !c.coupon.is_empty() {
            match p.coupon(&c.coupon) {
                Some(coupon) if coupon.offer == c.offer => credit = Some((coupon.affiliate.clone(), None)),
                Some(_) if c.click_id.is_none() => failure = Reason::CouponOfferMismatch,
                None if c.click_id.is_none() => failure = Reason::UnknownCoupon,
                _ => {}
            }
        }
        let Some((affiliate, click_id)) = credit else {
            ledger.insert(id, outcome(kind, Status::Unattributed, failure));
            continue;
        };
        let mut o = outcome(kind, Status::Approved, Reason::None);
        o.affiliate = affiliate;
        o.click_id = click_id;
        if c.amount.is_some() && c.currency != offer.currency {
            (o.status, o.reason) = (Status::Rejected, Reason::CurrencyMismatch);
            ledger.insert(id, o);
            continue;
        }
        match goal.payout {
            Payout::Fixed { amount } => o.amount = amount,
            Payout::RevShare { bps } => match c.amount {
                None => (o.status, o.reason) = (Status::Rejected, Reason::MissingAmount),
                Some(_) if c.currency != offer.currency => {
                    (o.status, o.reason) = (Status::Rejected, Reason::CurrencyMismatch)
                }
                Some(sale) => o.amount = round_half_even(i128::from(sale) * i128::from(bps), 10_000),
            },
            Payout::Tiered { .. } => unreachable!("the model's programs have no tiers"),
        }
        if o.status == Status::Approved {
            if goal.hold_days == 0 {
                o.approved_seq = Some(seq);
            } else {
                o.status = Status::Pending;
                o.approve_at = Some(c.ts_ms + u64::from(goal.hold_days) * DAY);
            }
        }
        ledger.insert(id, o);
    }
    ledger
}

fn reverse(ledger: &mut BTreeMap<EntryId, Outcome>, seq: u64, c: &Conversion, claimed: Option<EntryId>) -> Outcome {
    let mut r = Outcome { click_id: c.click_id, ..outcome(Kind::Reversal, Status::Unattributed, Reason::NoOriginal) };
    if c.txid.is_empty() {
        r.reason = Reason::NoTransactionId;
        return r;
    }
    let Some(original_id) = claimed else { return r };
    let why = if c.status == ConversionStatus::Chargeback { Reason::Chargeback } else { Reason::Refunded };
    let original = ledger.get_mut(&original_id).unwrap();
    r.refers_to = Some(original_id);
    r.affiliate = original.affiliate.clone();
    r.click_id = original.click_id;
    if original.reversed_by.is_some() {
        (r.status, r.reason) = (Status::Duplicate, Reason::AlreadyReversed);
        return r;
    }
    match original.status {
        Status::Pending => {
            (original.status, original.reason) = (Status::Rejected, why);
            (r.status, r.reason) = (Status::Approved, why);
        }
        Status::Approved => {
            (r.kind, r.status, r.reason, r.amount) = (Kind::Clawback, Status::Approved, why, -original.amount);
            r.approved_seq = Some(seq);
        }
        _ => {
            (r.status, r.reason) = (Status::Rejected, Reason::NothingToReverse);
            return r;
        }
    }
    original.reversed_by = Some(seq);
    r
}

/// n / d rounded half to even, for d > 0, written the schoolbook way.
fn round_half_even(n: i128, d: i128) -> i64 {
    let floor = n.div_euclid(d);
    let twice_rest = 2 * (n - floor * d);
    let q = if twice_rest > d || (twice_rest == d && floor % 2 != 0) { floor + 1 } else { floor };
    i64::try_from(q).unwrap()
}

fn worker_ledger(events: &[Event], commit_seed: u64) -> BTreeMap<EntryId, Outcome> {
    let tmp = tempfile::tempdir().unwrap();
    let log = Log::open(&tmp.path().join("log"), LogOptions::default(), LogMetrics::default()).unwrap();
    let pending: Vec<_> = events.iter().map(|e| log.submit(tally_model::encode(e).unwrap()).unwrap()).collect();
    for p in pending {
        p.wait().unwrap();
    }
    let options = WorkerOptions { commit_every: 1 + (commit_seed % 64) as usize, ..WorkerOptions::default() };
    let mut w = Worker::open(&tmp.path().join("state"), options, AttributionMetrics::default()).unwrap();
    w.catch_up(&log.reader(), None).unwrap();
    w.state()
        .entries()
        .map(|e| {
            let e = e.unwrap();
            let o = Outcome {
                kind: e.kind,
                status: e.status,
                reason: e.reason,
                affiliate: e.affiliate,
                click_id: e.click_id,
                amount: e.amount,
                refers_to: e.refers_to,
                reversed_by: e.reversed_by,
                approved_seq: e.approved_seq,
                approve_at: e.approve_at_ms,
            };
            (e.id, o)
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn the_worker_agrees_with_the_reference_model(seed in any::<u64>(), n in 1usize..400, commit_seed in any::<u64>()) {
        let b = model_b();
        let events = generate::log(seed, n, &[MODEL_A, &b]);
        let expected = model(&events);
        let got = worker_ledger(&events, commit_seed);
        prop_assert_eq!(got.len(), expected.len());
        for (id, want) in &expected {
            prop_assert_eq!(got.get(id), Some(want), "entry {}", id);
        }
    }
}

/// The model itself must see what it is meant to: a hand-checked log.
#[test]
fn the_model_follows_the_rules_on_a_known_log() {
    let mut d = common::Driver::bare(tally_attribution::State::in_memory());
    d.convert("shoes", "lead", None, "T0", None); // seq 1: before any program
    d.program(MODEL_A); // 2
    let cid = d.click("shoes", "aff1"); // 3
    d.convert("shoes", "sale", Some(cid), "T1", Some(12_345)); // 4: 10% = 1234.5 -> 1234, pending
    d.convert("shoes", "sale", Some(cid), "T1", Some(12_345)); // 5: duplicate
    d.convert("shoes", "lead", Some(cid), "L1", None); // 6: approved at once
    d.reverse("shoes", "sale", "T1", ConversionStatus::Refunded); // 7: rejects 4
    d.reverse("shoes", "lead", "L1", ConversionStatus::Chargeback); // 8: claws back 6
    let m = model(&d.events);
    let get = |seq| m[&EntryId::of_event(seq)].clone();
    assert_eq!(get(1).reason, Reason::NoProgram);
    assert_eq!(
        (get(4).status, get(4).reason, get(4).amount, get(4).reversed_by),
        (Status::Rejected, Reason::Refunded, 1_234, Some(7))
    );
    assert_eq!((get(5).status, get(5).refers_to), (Status::Duplicate, Some(EntryId::of_event(4))));
    assert_eq!((get(6).status, get(6).amount, get(6).approved_seq), (Status::Approved, 250, Some(6)));
    assert_eq!((get(7).kind, get(7).status, get(7).amount), (Kind::Reversal, Status::Approved, 0));
    assert_eq!((get(8).kind, get(8).amount, get(8).reason), (Kind::Clawback, -250, Reason::Chargeback));
    assert_eq!(m.len(), 6);
    assert_eq!(round_half_even(-250, 100), -2);
}
