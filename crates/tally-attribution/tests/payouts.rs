//! Payout runs and their voids: operator decisions that mark approved, unpaid entries paid
//! under a payout ID, per affiliate and currency whose balance reaches its minimum.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Driver, DAY};
use tally_attribution::{Entry, Kind, Reason, Status};
use tally_model::event::OperatorDecision;
use tally_model::{ConversionStatus, Decision, Event};
use tally_testkit::ConversionBuilder;

const PROGRAM: &str = r#"
payout_minimum = { USD = "5.00" }

[[advertisers]]
id = "acme"
postback_tokens = ["acme-token"]

[[groups]]
id = "low"
payout_minimum = { USD = "1.00" }

[[affiliates]]
id = "aff1"
[[affiliates]]
id = "aff2"
[[affiliates]]
id = "aff3"
group = "low"

[[offers]]
id = "shop"
advertiser = "acme"
destination = "https://shop.example/?c={click_id}"
currency = "USD"

  [[offers.goals]]
  id = "sale"
  payout = { kind = "fixed", amount = "3.00" }

  [[offers.goals]]
  id = "held"
  payout = { kind = "fixed", amount = "4.00" }
  hold_days = 30

[[offers]]
id = "hotels"
advertiser = "acme"
destination = "https://travel.example/?c={click_id}"
currency = "EUR"

  [[offers.goals]]
  id = "booking"
  payout = { kind = "fixed", amount = "12.00" }
"#;

fn driver() -> Driver {
    let mut d = Driver::bare(tally_attribution::State::in_memory());
    d.program(PROGRAM);
    d
}

/// A sale credited to `affiliate` through a click; its entry.
fn sale(d: &mut Driver, offer: &str, goal: &str, affiliate: &str, txid: &str) -> Entry {
    let cid = d.click(offer, affiliate);
    let currency = if offer == "hotels" { "EUR" } else { "USD" };
    let c = ConversionBuilder::new().at(d.now).offer(offer).goal(goal).click(cid).txid(txid).currency(currency);
    d.apply(c.event());
    d.own_entry()
}

fn decide(d: &mut Driver, decision: Decision) -> Entry {
    let event = Event::Decision(OperatorDecision { ts_ms: d.now, actor: "alice".into(), decision: decision.to_json() });
    d.apply(event);
    d.own_entry()
}

fn run(d: &mut Driver, payout: &str, up_to: &str) -> Entry {
    let decision = Decision::Payout {
        payout: payout.into(),
        up_to: up_to.into(),
        affiliates: vec![],
        group: String::new(),
        note: String::new(),
    };
    decide(d, decision)
}

fn paid_in(d: &Driver, e: &Entry) -> Option<String> {
    d.entry(e.id).paid_in().map(str::to_owned)
}

#[test]
fn a_run_pays_approved_unpaid_balances_that_reach_their_minimum() {
    let mut d = driver();
    // 2025-11-01. aff1: 3 sales (9.00 USD) and a booking (12.00 EUR); aff2: one sale (3.00,
    // under the program's 5.00); aff3: one sale (its group's minimum is 1.00); aff1 also
    // has a held sale (pending).
    let a1: Vec<Entry> = (0..3).map(|i| sale(&mut d, "shop", "sale", "aff1", &format!("A{i}"))).collect();
    let booking = sale(&mut d, "hotels", "booking", "aff1", "B1");
    let small = sale(&mut d, "shop", "sale", "aff2", "S1");
    let low = sale(&mut d, "shop", "sale", "aff3", "L1");
    let held = sale(&mut d, "shop", "held", "aff1", "H1");
    assert_eq!(held.status, Status::Pending);
    d.wait(DAY);
    let late = sale(&mut d, "hotels", "booking", "aff1", "B9"); // 2025-11-02: after the run's end

    let p = run(&mut d, "2025-11", "2025-11-01");
    assert_eq!((p.kind, p.status, p.txid.as_str(), p.amount), (Kind::Payout, Status::Approved, "2025-11", 0));
    assert!(p.rule.contains("3 balance(s) paid in 5 entries (EUR 12.00, USD 12.00)"), "{}", p.rule);
    assert!(p.rule.contains("1 below the minimum"), "{}", p.rule);
    for e in a1.iter().chain([&booking, &low]) {
        assert_eq!(paid_in(&d, e).as_deref(), Some("2025-11"), "{}", e.id);
    }
    for e in [&small, &held, &late] {
        assert_eq!(paid_in(&d, e), None, "{}", e.id);
    }

    // The same payout ID again: booked, not applied. A new run pays only what is new.
    let again = run(&mut d, "2025-11", "2025-11-02");
    assert_eq!((again.status, again.reason), (Status::Rejected, Reason::NotApplicable));
    assert!(again.rule.contains("was used by entry"), "{}", again.rule);
    let next = run(&mut d, "2025-11b", "2025-11-02");
    assert!(next.rule.contains("1 balance(s) paid in 1 entries (EUR 12.00); 1 below"), "{}", next.rule);
    assert_eq!(paid_in(&d, &late).as_deref(), Some("2025-11b"));
    assert_eq!(paid_in(&d, &small), None, "aff2's 3.00 still waits for its minimum");
}

#[test]
fn clawbacks_after_payment_net_against_the_next_run_and_paid_amounts_are_not_adjusted() {
    let mut d = driver();
    let s1 = sale(&mut d, "shop", "sale", "aff1", "T1");
    let s2 = sale(&mut d, "shop", "sale", "aff1", "T2");
    run(&mut d, "p1", "2025-11-01");
    assert_eq!(paid_in(&d, &s1).as_deref(), Some("p1"));

    // A refund of a paid sale: a clawback of -3.00, unpaid. With a new 3.00 sale the
    // balance is 0.00: nothing to pay.
    let reversal = d.apply(
        ConversionBuilder::new()
            .at(d.now)
            .offer("shop")
            .goal("sale")
            .txid("T1")
            .status(ConversionStatus::Refunded)
            .event(),
    );
    let clawback = reversal.iter().find(|e| e.kind == Kind::Clawback).unwrap().clone();
    assert_eq!(clawback.amount, -300);
    let s3 = sale(&mut d, "shop", "sale", "aff1", "T3");
    let p2 = run(&mut d, "p2", "2025-11-01");
    assert!(p2.rule.contains("0 balance(s) paid") && p2.rule.contains("1 below the minimum"), "{}", p2.rule);
    assert_eq!((paid_in(&d, &clawback), paid_in(&d, &s3)), (None, None));
    // Two more sales: 6.00 - 3.00 + 3.00... the balance 6.00 reaches the minimum, netted.
    let s4 = sale(&mut d, "shop", "sale", "aff1", "T4");
    let s5 = sale(&mut d, "shop", "sale", "aff1", "T5");
    let p3 = run(&mut d, "p3", "2025-11-01");
    assert!(p3.rule.contains("1 balance(s) paid in 4 entries (USD 6.00)"), "{}", p3.rule);
    for e in [&clawback, &s3, &s4, &s5] {
        assert_eq!(paid_in(&d, e).as_deref(), Some("p3"));
    }

    let adjust =
        decide(&mut d, Decision::Adjust { entry: s2.id.to_string(), amount: "1.00".into(), reason: "x".into() });
    assert_eq!((adjust.status, adjust.reason), (Status::Rejected, Reason::NotApplicable));
    assert!(adjust.rule.contains("was paid in payout p1"), "{}", adjust.rule);
    assert_eq!(d.entry(s2.id).amount, 300);
}

#[test]
fn a_void_unpays_the_runs_entries_once_and_a_later_run_pays_them_again() {
    let mut d = driver();
    let s1 = sale(&mut d, "shop", "sale", "aff1", "T1");
    let s2 = sale(&mut d, "shop", "sale", "aff1", "T2");
    let p1 = run(&mut d, "p1", "2025-11-01");
    let void = decide(&mut d, Decision::VoidPayout { payout: "p1".into(), reason: "bank returned it".into() });
    assert_eq!((void.kind, void.status, void.refers_to), (Kind::Decision, Status::Approved, Some(p1.id)));
    assert!(void.rule.contains("payout p1 voided by alice: bank returned it; 2 entries unpaid again"), "{}", void.rule);
    assert_eq!((paid_in(&d, &s1), paid_in(&d, &s2)), (None, None));
    assert_eq!(d.entry(p1.id).reversed_by, Some(void.id.seq));
    // As of before the void, they were paid.
    assert_eq!(d.entry(s1.id).as_of(p1.id.seq).unwrap().paid_in(), Some("p1"));
    assert_eq!(d.entry(s1.id).as_of(p1.id.seq - 1).unwrap().paid_in(), None);

    let twice = decide(&mut d, Decision::VoidPayout { payout: "p1".into(), reason: "again".into() });
    assert_eq!((twice.status, twice.reason), (Status::Rejected, Reason::NotApplicable));
    let p2 = run(&mut d, "p2", "2025-11-01");
    assert!(p2.rule.contains("paid in 2 entries"), "{}", p2.rule);
    assert_eq!(paid_in(&d, &s1).as_deref(), Some("p2"));
}

#[test]
fn a_run_can_be_limited_to_affiliates_or_a_group_and_replay_gives_the_same_ledger() {
    let mut d = driver();
    let a = sale(&mut d, "shop", "held", "aff1", "T1"); // pending: 30 days' hold
    let b = sale(&mut d, "shop", "sale", "aff3", "T2");
    let c = sale(&mut d, "shop", "sale", "aff1", "T3");
    d.wait(31 * DAY);
    d.tick(); // the hold ends
    assert_eq!(d.entry(a.id).status, Status::Approved);
    let only_group = Decision::Payout {
        payout: "g1".into(),
        up_to: "2026-01-31".into(),
        affiliates: vec![],
        group: "low".into(),
        note: "low group first".into(),
    };
    let g1 = decide(&mut d, only_group);
    assert!(g1.rule.ends_with("; low group first"), "{}", g1.rule);
    assert_eq!((paid_in(&d, &a), paid_in(&d, &b).as_deref(), paid_in(&d, &c)), (None, Some("g1"), None));
    let named = Decision::Payout {
        payout: "a1".into(),
        up_to: "2026-01-31T23:59:59Z".into(),
        affiliates: vec!["aff1".into()],
        group: String::new(),
        note: String::new(),
    };
    decide(&mut d, named);
    assert_eq!((paid_in(&d, &a).as_deref(), paid_in(&d, &c).as_deref()), (Some("a1"), Some("a1")));

    d.assert_replay_matches();
}
