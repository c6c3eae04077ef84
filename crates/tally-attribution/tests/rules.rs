//! Table tests for every attribution rule, amounts checked to the minor unit.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Driver, DAY, PROGRAM};
use tally_attribution::report::{report, GroupBy};
use tally_attribution::{EntryId, Kind, Reason, Status};
use tally_model::{ConversionStatus, Currency, Event};

#[test]
fn fixed_payout_without_hold_is_approved_at_once() {
    let mut d = Driver::new();
    let cid = d.click("shoes", "aff1");
    d.wait(1000);
    let e = d.convert("shoes", "lead", Some(cid), "T1", None);
    assert_eq!((e.kind, e.status, e.reason), (Kind::Commission, Status::Approved, Reason::None));
    assert_eq!((e.affiliate.as_str(), e.amount, e.currency.code()), ("aff1", 250, "USD"));
    assert_eq!(e.click_id, Some(cid));
    assert_eq!(e.approved_seq, Some(d.seq));
    assert_eq!(e.rule, "goal lead: fixed 2.50");
    assert_eq!(e.sub1, "s-aff1");
}

#[test]
fn revenue_share_rounds_half_to_even() {
    // 10% of the sale: the exact share and what it rounds to.
    for (sale, want) in [(12_345, 1_234), (12_355, 1_236), (12_350, 1_235), (5, 0), (15, 2), (25, 2), (1, 0), (0, 0)] {
        let mut d = Driver::new();
        let cid = d.click("shoes", "aff1");
        let e = d.convert("shoes", "sale", Some(cid), "T", Some(sale));
        assert_eq!(e.amount, want, "10% of {sale}");
        assert_eq!(e.sale_amount, Some(sale));
        assert!(e.rule.starts_with("goal sale: revshare 1000 bps of "), "{}", e.rule);
    }
}

#[test]
fn revenue_share_needs_an_amount_in_the_offer_currency() {
    let mut d = Driver::new();
    let cid = d.click("shoes", "aff1");
    let e = d.convert("shoes", "sale", Some(cid), "T1", None);
    assert_eq!((e.status, e.reason, e.amount), (Status::Rejected, Reason::MissingAmount, 0));

    let mut c = d.conversion_event("shoes", "sale", Some(cid), "T2", Some(1000), ConversionStatus::Approved);
    c.currency = Currency::from_code("EUR").unwrap();
    d.apply(Event::Conversion(c));
    let e = d.own_entry();
    assert_eq!((e.status, e.reason, e.amount), (Status::Rejected, Reason::CurrencyMismatch, 0));

    // A fixed payout does not need the amount, but a sale in another currency is still not
    // paid, and not counted as revenue.
    let mut c = d.conversion_event("shoes", "lead", Some(cid), "T3", Some(1000), ConversionStatus::Approved);
    c.currency = Currency::from_code("EUR").unwrap();
    d.apply(Event::Conversion(c));
    let e = d.own_entry();
    assert_eq!((e.status, e.reason, e.currency.code()), (Status::Rejected, Reason::CurrencyMismatch, "USD"));
    assert_eq!(e.rule, "goal lead: sale reported in EUR, offer pays in USD");
    let rows = report(&d.state, GroupBy::Offer, 0, u32::MAX).unwrap();
    assert_eq!((rows[0].row.conversions, rows[0].row.revenue), (0, 0));
}

#[test]
fn attribution_window_is_inclusive_and_enforced() {
    let mut d = Driver::new();
    let cid = d.click("shoes", "aff1");
    d.wait(30 * DAY);
    let e = d.convert("shoes", "lead", Some(cid), "T1", None);
    assert_eq!(e.status, Status::Approved, "exactly 30 days is inside");
    d.wait(1);
    let e = d.convert("shoes", "lead", Some(cid), "T2", None);
    assert_eq!((e.status, e.reason, e.amount), (Status::Unattributed, Reason::OutsideWindow, 0));
    assert_eq!(e.affiliate, "");
}

#[test]
fn joins_and_their_failures() {
    let mut d = Driver::new();
    let hotel_click = d.click("hotels", "aff1");
    let unknown = tally_model::ClickId::new(d.now, 9, 9);

    let e = d.convert("shoes", "lead", Some(unknown), "T1", None);
    assert_eq!((e.status, e.reason), (Status::Unattributed, Reason::UnknownClick));

    let e = d.convert("shoes", "lead", None, "T2", None);
    assert_eq!((e.status, e.reason), (Status::Unattributed, Reason::NoClick));

    let e = d.convert("shoes", "lead", Some(hotel_click), "T3", None);
    assert_eq!((e.status, e.reason), (Status::Unattributed, Reason::ClickOfferMismatch));

    let e = d.convert("shoes", "nope", None, "T4", None);
    assert_eq!((e.status, e.reason), (Status::Unattributed, Reason::UnknownGoal));

    let e = d.convert("boots", "lead", None, "T5", None);
    assert_eq!((e.status, e.reason), (Status::Unattributed, Reason::UnknownOffer));
}

#[test]
fn coupons_credit_their_affiliate_without_a_click() {
    let mut d = Driver::new();
    for (code, cid, want) in [
        ("SPRING", None, Ok("aff3")),
        ("spring", None, Ok("aff3")),
        ("WINTER", None, Err(Reason::UnknownCoupon)),
        // A click that fails falls back to a valid coupon...
        ("SPRING", Some(tally_model::ClickId::new(1, 1, 1)), Ok("aff3")),
        // ...and an unknown coupon reports the click's failure.
        ("WINTER", Some(tally_model::ClickId::new(common::T0, 1, 77)), Err(Reason::UnknownClick)),
    ] {
        d.wait(DAY); // a fresh day each time: the lead goal has daily caps
        let mut c =
            d.conversion_event("shoes", "lead", cid, &format!("T-{code}-{cid:?}"), None, ConversionStatus::Approved);
        c.coupon = code.into();
        d.apply(Event::Conversion(c));
        let e = d.own_entry();
        match want {
            Ok(aff) => {
                assert_eq!((e.status, e.affiliate.as_str(), e.amount), (Status::Approved, aff, 250), "{code}");
                assert_eq!((e.coupon.as_str(), e.click_id), ("SPRING", None));
            }
            Err(reason) => assert_eq!((e.status, e.reason), (Status::Unattributed, reason), "{code}"),
        }
    }
    // A coupon of another offer credits nobody.
    let mut c = d.conversion_event("hotels", "booking", None, "H1", None, ConversionStatus::Approved);
    c.coupon = "SPRING".into();
    d.apply(Event::Conversion(c));
    assert_eq!(d.own_entry().reason, Reason::CouponOfferMismatch);
}

#[test]
fn repeated_transactions_are_duplicates_paying_zero() {
    let mut d = Driver::new();
    let cid = d.click("shoes", "aff1");
    let first = d.convert("shoes", "lead", Some(cid), "T1", None);
    let again = d.convert("shoes", "lead", Some(cid), "T1", None);
    assert_eq!((again.status, again.reason, again.amount), (Status::Duplicate, Reason::RepeatedTransaction, 0));
    assert_eq!(again.refers_to, Some(first.id));
    assert_eq!(again.affiliate, "aff1");
    // The same txid on another goal is another transaction.
    let other = d.convert("shoes", "tiered", Some(cid), "T1", None);
    assert_eq!(other.status, Status::Approved);
    // A first report that credited nobody still claims the transaction.
    let lost = d.convert("shoes", "lead", None, "T9", None);
    assert_eq!(lost.status, Status::Unattributed);
    let resent = d.convert("shoes", "lead", Some(cid), "T9", None);
    assert_eq!(resent.status, Status::Duplicate);
}

#[test]
fn holds_approve_when_the_watermark_passes() {
    let mut d = Driver::new();
    let cid = d.click("shoes", "aff1");
    let e = d.convert("shoes", "sale", Some(cid), "T1", Some(10_000));
    assert_eq!((e.status, e.amount, e.approve_at_ms), (Status::Pending, 1_000, Some(d.now + 10 * DAY)));
    d.wait(10 * DAY - 1);
    assert!(d.tick().is_empty());
    assert_eq!(d.entry(e.id).status, Status::Pending);
    d.wait(1);
    let changed = d.tick();
    assert_eq!(changed.len(), 1);
    let approved = d.entry(e.id);
    assert_eq!((approved.status, approved.approved_seq), (Status::Approved, Some(d.seq)));
    assert_eq!(d.state.pending_holds(), 0);
}

#[test]
fn daily_caps_goal_wide_per_affiliate_and_overridden() {
    let mut d = Driver::new();
    let a1 = d.click("shoes", "aff1");
    let a2 = d.click("shoes", "aff2");
    let mut got = Vec::new();
    for (i, cid) in [a2, a2, a1, a1, a1].into_iter().enumerate() {
        let e = d.convert("shoes", "lead", Some(cid), &format!("T{i}"), None);
        got.push((e.affiliate, e.status, e.reason, e.amount));
    }
    use Status::{Approved, RejectedCap};
    assert_eq!(
        got,
        vec![
            ("aff2".into(), Approved, Reason::None, 400), // the override's payout
            ("aff2".into(), RejectedCap, Reason::AffiliateDailyCap, 0), // the override's cap of 1
            ("aff1".into(), Approved, Reason::None, 250),
            ("aff1".into(), Approved, Reason::None, 250),
            ("aff1".into(), RejectedCap, Reason::DailyCap, 0), // three credited today: goal-wide cap
        ]
    );
    // A new UTC day has room again, up to the goal's per-affiliate cap of 2.
    d.wait(DAY);
    let a1 = d.click("shoes", "aff1");
    let got: Vec<_> = (0..3)
        .map(|i| {
            let e = d.convert("shoes", "lead", Some(a1), &format!("D2-{i}"), None);
            (e.status, e.reason)
        })
        .collect();
    assert_eq!(got, vec![(Approved, Reason::None), (Approved, Reason::None), (RejectedCap, Reason::AffiliateDailyCap)]);
}

#[test]
fn tiers_by_monthly_rank_and_milestone_bonus_once() {
    let mut d = Driver::new();
    let cid = d.click("shoes", "aff1");
    let e1 = d.convert("shoes", "tiered", Some(cid), "T1", None);
    assert_eq!((e1.amount, e1.rule.as_str()), (100, "goal tiered tier 1 (from 1, rank 1): fixed 1.00"));
    d.convert("shoes", "tiered", Some(cid), "T2", None);
    let bonus = d.entry(EntryId { seq: d.seq, sub: 1 });
    assert_eq!((bonus.kind, bonus.amount, bonus.status), (Kind::Bonus, 1_000, Status::Approved));
    assert_eq!(bonus.refers_to, Some(EntryId::of_event(d.seq)));
    let e3 = d.convert("shoes", "tiered", Some(cid), "T3", None);
    assert_eq!((e3.amount, e3.rule.as_str()), (200, "goal tiered tier 2 (from 3, rank 3): fixed 2.00"));

    // A refund lowers the rank: the next conversion is the third again, not the fourth.
    d.reverse("shoes", "tiered", "T3", ConversionStatus::Refunded);
    d.reverse("shoes", "tiered", "T2", ConversionStatus::Refunded);
    let e = d.convert("shoes", "tiered", Some(cid), "T4", None);
    assert_eq!(e.amount, 100, "rank 2 again");
    assert!(d.state.entry(EntryId { seq: d.seq, sub: 1 }).unwrap().is_none(), "the milestone pays once a month");

    // A new calendar month starts from rank 1; milestones can be earned again.
    d.wait(30 * DAY); // 2025-12-01
    let cid = d.click("shoes", "aff1");
    assert_eq!(d.convert("shoes", "tiered", Some(cid), "T5", None).amount, 100);
    d.convert("shoes", "tiered", Some(cid), "T6", None);
    assert_eq!(d.entry(EntryId { seq: d.seq, sub: 1 }).kind, Kind::Bonus);
}

#[test]
fn reversals_reject_pending_and_claw_back_approved() {
    let mut d = Driver::new();
    let cid = d.click("shoes", "aff1");
    let pending = d.convert("shoes", "sale", Some(cid), "P1", Some(5_000));
    let approved = d.convert("shoes", "lead", Some(cid), "A1", None);
    assert_eq!((pending.status, approved.status), (Status::Pending, Status::Approved));

    let changed = d.reverse("shoes", "sale", "P1", ConversionStatus::Refunded);
    let original = d.entry(pending.id);
    assert_eq!(
        (original.status, original.reason, original.reversed_by),
        (Status::Rejected, Reason::Refunded, Some(d.seq))
    );
    let r = d.own_entry();
    assert_eq!((r.kind, r.status, r.amount, r.refers_to), (Kind::Reversal, Status::Approved, 0, Some(pending.id)));
    assert_eq!(changed.len(), 2);
    assert_eq!(d.state.pending_holds(), 0, "a rejected commission leaves the hold queue");

    d.reverse("shoes", "lead", "A1", ConversionStatus::Chargeback);
    let c = d.own_entry();
    assert_eq!((c.kind, c.status, c.reason, c.amount), (Kind::Clawback, Status::Approved, Reason::Chargeback, -250));
    assert_eq!(c.affiliate, "aff1");
    assert_eq!(d.entry(approved.id).status, Status::Approved, "the paid commission stays; the clawback offsets it");

    d.reverse("shoes", "lead", "A1", ConversionStatus::Refunded);
    assert_eq!((d.own_entry().status, d.own_entry().reason), (Status::Duplicate, Reason::AlreadyReversed));
    d.reverse("shoes", "lead", "NOPE", ConversionStatus::Refunded);
    assert_eq!((d.own_entry().status, d.own_entry().reason), (Status::Unattributed, Reason::NoOriginal));
    d.reverse("shoes", "lead", "", ConversionStatus::Refunded);
    assert_eq!(d.own_entry().reason, Reason::NoTransactionId);

    // Reversing a report that paid nothing takes nothing back.
    d.convert("shoes", "lead", None, "U1", None);
    d.reverse("shoes", "lead", "U1", ConversionStatus::Refunded);
    assert_eq!((d.own_entry().status, d.own_entry().reason), (Status::Rejected, Reason::NothingToReverse));

    // A refund arriving after the hold passed claws back instead.
    let p2 = d.convert("shoes", "sale", Some(cid), "P2", Some(1_000));
    d.wait(10 * DAY);
    d.reverse("shoes", "sale", "P2", ConversionStatus::Refunded);
    assert_eq!(d.entry(p2.id).status, Status::Approved);
    assert_eq!((d.own_entry().kind, d.own_entry().amount), (Kind::Clawback, -100));
}

#[test]
fn first_click_offers_credit_the_earliest_click_in_the_window() {
    let mut d = Driver::new();
    let a = d.click("hotels", "aff1");
    d.wait(DAY);
    let b = d.click_after("hotels", "aff2", a);
    d.wait(DAY);
    let c = d.click_after("hotels", "aff2", b);
    let e = d.convert("hotels", "booking", Some(c), "H1", None);
    assert_eq!((e.affiliate.as_str(), e.click_id, e.amount), ("aff1", Some(a), 1_200));
    assert_eq!(e.currency.code(), "EUR");

    // Once the first click is out of the window, the click itself is credited.
    d.wait(6 * DAY);
    let e = d.convert("hotels", "booking", Some(c), "H2", None);
    assert_eq!((e.affiliate.as_str(), e.click_id), ("aff2", Some(c)));

    // A click made after the first one's cookie expired starts a new chain.
    let late = d.click_after("hotels", "aff2", c);
    let e = d.convert("hotels", "booking", Some(late), "H3", None);
    assert_eq!(e.affiliate, "aff2", "a's cookie had expired by the time of `late`, c is the chain's root");

    // Last-click offers ignore the chain.
    let s1 = d.click("shoes", "aff1");
    let s2 = d.click_after("shoes", "aff2", s1);
    let e = d.convert("shoes", "lead", Some(s2), "S1", None);
    assert_eq!(e.affiliate, "aff2");
}

#[test]
fn program_changes_apply_from_their_place_in_the_log() {
    let mut d = Driver::bare(tally_attribution::State::in_memory());
    let early = d.click("shoes", "aff1");
    let e = d.convert("shoes", "lead", Some(early), "T0", None);
    assert_eq!((e.status, e.reason), (Status::Unattributed, Reason::NoProgram));

    d.program(PROGRAM);
    let cid = d.click("shoes", "aff1");
    let before = d.convert("shoes", "lead", Some(cid), "T1", None);
    d.program(&PROGRAM.replace(r#"amount = "2.50""#, r#"amount = "3.00""#));
    let after = d.convert("shoes", "lead", Some(cid), "T2", None);
    assert_eq!((before.amount, after.amount), (250, 300));
    assert_ne!(before.program, after.program);
    assert_eq!(d.entry(before.id).amount, 250, "earlier entries keep the rules of their time");

    // A broken program in the log is ignored and the previous rules stay.
    let mut bad = d.state.program().unwrap().source.clone();
    bad.push_str("\n[[nonsense]]\n");
    d.apply(Event::ProgramChange(tally_model::ProgramChange { ts_ms: d.now, digest: String::new(), source: bad }));
    d.wait(DAY); // past today's per-affiliate cap
    let cid = d.click("shoes", "aff1");
    assert_eq!(d.convert("shoes", "lead", Some(cid), "T3", None).amount, 300);
}

#[test]
fn clicks_expire_after_the_longest_window() {
    let mut d = Driver::new();
    let old = d.click("shoes", "aff1");
    d.wait(32 * DAY);
    d.tick();
    let e = d.convert("shoes", "lead", Some(old), "T1", None);
    assert_eq!((e.status, e.reason), (Status::Unattributed, Reason::ExpiredClick));
}

#[test]
fn events_out_of_order_are_refused() {
    let mut state = tally_attribution::State::in_memory();
    let ev =
        Event::ProgramChange(tally_model::ProgramChange { ts_ms: 1, digest: String::new(), source: PROGRAM.into() });
    let err = tally_attribution::apply(&mut state, 2, &ev).unwrap_err();
    assert!(err.to_string().contains("expected sequence 1"), "{err}");
}

#[test]
fn stats_count_clicks_uniques_conversions_revenue_and_payout() {
    let mut d = Driver::new();
    let mut ev = d.click_event("shoes", "aff1", None);
    let cid = ev.click_id;
    d.apply(Event::Click(ev.clone()));
    // Same visitor again: a click but not a unique one.
    ev.click_id = tally_model::ClickId::new(d.now, 1, 999);
    d.apply(Event::Click(ev.clone()));
    d.tick(); // a HEAD request: non-human
    d.convert("shoes", "sale", Some(cid), "S1", Some(20_000));
    d.convert("shoes", "lead", Some(cid), "L1", None);
    d.reverse("shoes", "lead", "L1", ConversionStatus::Refunded);
    let rows = report(&d.state, GroupBy::Affiliate, 0, u32::MAX).unwrap();
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!((r.key.as_str(), r.row.currency.map(|c| c.code().to_owned())), ("aff1", Some("USD".into())));
    assert_eq!((r.row.clicks, r.row.unique_clicks, r.row.non_human_clicks), (2, 1, 1));
    assert_eq!((r.row.conversions, r.row.revenue, r.row.payout), (1, 20_000, 2_000));
    assert_eq!(r.row.epc(), Some(1_000));

    let by_day = report(&d.state, GroupBy::Day, 0, u32::MAX).unwrap();
    assert_eq!(by_day[0].key, "2025-11-01");
    let by_sub = report(&d.state, GroupBy::Sub1, 0, u32::MAX).unwrap();
    assert_eq!(by_sub[0].key, "s-aff1");
    assert!(report(&d.state, GroupBy::Day, 0, 10).unwrap().is_empty(), "date range filters rows");
}

#[test]
fn a_program_time_zone_moves_the_days_of_caps_and_stats() {
    const HOUR: u64 = 3_600_000;
    // T0 is 2025-11-01T00:00Z; New York is on daylight time (UTC-4) until November 2.
    let run = |time_zone: &str| {
        let mut d = Driver::bare(tally_attribution::State::in_memory());
        d.program(&format!("{time_zone}{PROGRAM}"));
        d.wait(3 * HOUR); // 23:00 on October 31 in New York
        let cid = d.click("shoes", "aff1");
        let mut got = Vec::new();
        for i in 0..3 {
            got.push(d.convert("shoes", "lead", Some(cid), &format!("A{i}"), None).status);
        }
        d.wait(HOUR); // midnight in New York: a new day there, not in UTC
        got.push(d.convert("shoes", "lead", Some(cid), "B0", None).status);
        let days: Vec<String> = d
            .state
            .stats(0, u32::MAX)
            .map(|r| tally_model::time::format_day(r.unwrap().0.day))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        (got, days)
    };
    use Status::{Approved, RejectedCap};
    let (got, days) = run("time_zone = \"America/New_York\"\n");
    assert_eq!(got, [Approved, Approved, RejectedCap, Approved], "aff1's cap of 2 a day, by New York days");
    assert_eq!(days, ["2025-10-31", "2025-11-01"]);
    let (got, days) = run("");
    assert_eq!(got, [Approved, Approved, RejectedCap, RejectedCap], "one UTC day");
    assert_eq!(days, ["2025-11-01"]);
    // A zone the database does not know is refused with the program.
    let err = tally_model::Program::from_toml(&format!("time_zone = \"Mars/Base\"\n{PROGRAM}")).unwrap_err();
    assert!(err.to_string().contains("time_zone: \"Mars/Base\" is not a time zone"), "{err}");
}

fn edit(d: &mut Driver, json: &str) {
    let edit = tally_model::Edit::from_json(json).unwrap();
    let event = tally_model::event::ProgramEdit {
        ts_ms: d.now,
        actor: "test".into(),
        digest: String::new(),
        edit: edit.to_json(),
    };
    d.apply(Event::ProgramEdit(event));
}

#[test]
fn program_edits_put_groups_whose_terms_pay_their_affiliates_across_program_changes() {
    let mut d = Driver::new();
    edit(
        &mut d,
        r#"{"groups":[{"id":"gold","terms":[{"offer":"shoes","payout":{"kind":"fixed","amount":"7.00"},"hold_days":0,"daily_cap":1}]}],
            "affiliates":[{"id":"amb","group":"gold"},{"id":"aff2","group":"gold"}]}"#,
    );
    let digest = d.state.program().unwrap().digest.clone();
    let cid = d.click("shoes", "amb");
    let e = d.convert("shoes", "sale", Some(cid), "T1", Some(10_000));
    assert_eq!((e.status, e.amount, e.rule.as_str()), (Status::Approved, 700, "group gold: fixed 7.00"));
    assert_eq!(e.program, digest);
    // The group's daily cap applies to each of its affiliates.
    let e = d.convert("shoes", "sale", Some(cid), "T2", Some(10_000));
    assert_eq!((e.status, e.reason), (Status::RejectedCap, Reason::AffiliateDailyCap));
    // aff2's override in the file beats its group for the lead goal; the group's cap (1)
    // replaces the goal's for it, and the file's override cap (1) stays.
    let cid2 = d.click("shoes", "aff2");
    let e = d.convert("shoes", "lead", Some(cid2), "T3", None);
    assert_eq!((e.amount, e.rule.as_str()), (400, "override aff2: fixed 4.00"));

    // A new program file keeps the entities the API put.
    d.wait(DAY);
    d.program(PROGRAM);
    let e = d.convert("shoes", "sale", Some(cid), "T4", Some(10_000));
    assert_eq!((e.status, e.amount), (Status::Approved, 700), "{}", e.rule);

    // Disabled: its conversions are rejected; a disabled coupon credits nobody.
    edit(
        &mut d,
        r#"{"affiliates":[{"id":"amb","group":"gold","active":false}],"coupons":[{"code":"spring","offer":"shoes","affiliate":"aff3","active":false}]}"#,
    );
    let e = d.convert("shoes", "sale", Some(cid), "T5", Some(10_000));
    assert_eq!((e.status, e.reason, e.amount), (Status::Rejected, Reason::AffiliateDisabled, 0));
    let mut c = d.conversion_event("shoes", "sale", None, "T6", Some(10_000), ConversionStatus::Approved);
    c.coupon = "SPRING".into();
    d.apply(Event::Conversion(c));
    assert_eq!(d.own_entry().reason, Reason::CouponDisabled);
}

fn decide(d: &mut Driver, json: &str) -> Vec<tally_attribution::Entry> {
    let decision = tally_model::Decision::from_json(json).unwrap();
    let event =
        tally_model::event::OperatorDecision { ts_ms: d.now, actor: "alice".into(), decision: decision.to_json() };
    d.apply(Event::Decision(event))
}

#[test]
fn operators_approve_early_reject_and_adjust_and_each_decision_is_an_entry() {
    let mut d = Driver::new();
    let cid = d.click("shoes", "aff1");
    // Sale: 10% of 100.00, held 10 days.
    let sale = d.convert("shoes", "sale", Some(cid), "T1", Some(10_000));
    assert_eq!((sale.status, sale.amount), (Status::Pending, 1000));
    let out = decide(&mut d, &format!(r#"{{"action":"approve","entry":"{}","note":"trusted partner"}}"#, sale.id));
    assert_eq!(out.len(), 2, "{out:?}");
    let target = d.entry(sale.id);
    assert_eq!((target.status, target.approved_seq), (Status::Approved, Some(d.seq)));
    let own = d.own_entry();
    assert_eq!((own.kind, own.status, own.refers_to, own.amount), (Kind::Decision, Status::Approved, Some(sale.id), 0));
    assert_eq!(own.rule, format!("commission {} approved early by alice: trusted partner", sale.id));
    assert_eq!(own.source.as_str(), "operator");
    // The hold passing later changes nothing more.
    d.wait(11 * DAY);
    assert!(d.tick().is_empty());
    // As of before the decision, it was pending: how replay compares.
    assert_eq!(target.as_of(sale.id.seq).unwrap().status, Status::Pending);

    // Adjust a pending commission: a partial refund; as_of undoes it.
    let sale2 = d.convert("shoes", "sale", Some(cid), "T2", Some(20_000));
    decide(
        &mut d,
        &format!(r#"{{"action":"adjust","entry":"{}","amount":"12.50","reason":"partial refund"}}"#, sale2.id),
    );
    let adjusted = d.entry(sale2.id);
    assert_eq!((adjusted.amount, adjusted.status), (1250, Status::Pending));
    assert_eq!(
        d.own_entry().rule,
        format!("commission {} adjusted from 20.00 to 12.50 by alice: partial refund", sale2.id)
    );
    assert_eq!(adjusted.as_of(d.seq - 1).unwrap().amount, 2000);
    assert_eq!(adjusted.as_of(d.seq).unwrap(), adjusted);

    // Reject: the pending one is rejected; the approved one is clawed back.
    decide(&mut d, &format!(r#"{{"action":"reject","entry":"{}","reason":"self-referral"}}"#, sale2.id));
    let rejected = d.entry(sale2.id);
    assert_eq!(
        (rejected.status, rejected.reason, rejected.reversed_by),
        (Status::Rejected, Reason::OperatorRejected, Some(d.seq))
    );
    let back = rejected.as_of(d.seq - 1).unwrap();
    assert_eq!((back.status, back.reason, back.amount), (Status::Pending, Reason::None, 1250));
    decide(&mut d, &format!(r#"{{"action":"reject","entry":"{}","reason":"fraud"}}"#, sale.id));
    let claw = d.own_entry();
    assert_eq!(
        (claw.kind, claw.status, claw.amount, claw.reason),
        (Kind::Clawback, Status::Approved, -1000, Reason::OperatorRejected)
    );

    // What cannot apply is booked, changing nothing.
    decide(&mut d, &format!(r#"{{"action":"approve","entry":"{}"}}"#, sale2.id));
    let own = d.own_entry();
    assert_eq!((own.status, own.reason), (Status::Rejected, Reason::NotApplicable));
    assert!(own.rule.contains("is rejected (reversed by"), "{}", own.rule);
    decide(&mut d, &format!(r#"{{"action":"adjust","entry":"{}","amount":"1.234","reason":"x"}}"#, sale.id));
    assert_eq!(d.own_entry().reason, Reason::NotApplicable);
    // An entry that does not exist makes no entry.
    assert!(decide(&mut d, r#"{"action":"approve","entry":"999999"}"#).is_empty());

    // A manual bonus, approved at once, in the offer's currency.
    decide(&mut d, r#"{"action":"bonus","affiliate":"aff2","offer":"hotels","amount":"25.00","reason":"Q4 contest"}"#);
    let bonus = d.own_entry();
    assert_eq!(
        (bonus.kind, bonus.status, bonus.amount, bonus.currency.code()),
        (Kind::Bonus, Status::Approved, 2500, "EUR")
    );
    assert_eq!(bonus.rule, "bonus by alice: Q4 contest");
    assert!(decide(&mut d, r#"{"action":"bonus","affiliate":"ghost","offer":"hotels","amount":"1","reason":"x"}"#)
        .is_empty());
}

#[test]
fn an_operator_approves_what_awaits_the_merchant_in_its_place() {
    let mut d = Driver::new();
    let cid = d.click("shoes", "aff1");
    let c = d.conversion_event("shoes", "lead", Some(cid), "P1", None, ConversionStatus::Pending);
    d.apply(Event::Conversion(c));
    let pending = d.own_entry();
    assert_eq!((pending.status, pending.reason), (Status::Pending, Reason::MerchantPending));
    decide(&mut d, &format!(r#"{{"action":"approve","entry":"{}"}}"#, pending.id));
    let now = d.entry(pending.id);
    assert_eq!((now.status, now.reason, now.confirmed_by), (Status::Approved, Reason::None, Some(d.seq)));
    assert_eq!(now.as_of(d.seq - 1).unwrap(), pending, "undone exactly");
    // The merchant's approval afterwards is a duplicate that changes nothing.
    let c = d.conversion_event("shoes", "lead", Some(cid), "P1", None, ConversionStatus::Approved);
    d.apply(Event::Conversion(c));
    assert_eq!(d.own_entry().status, Status::Duplicate);
    assert_eq!(d.entry(pending.id), now);
}

/// A state that keeps the ledger only (what replay uses) gives the same ledger as one that
/// counts stats, and holds no stats rows.
#[test]
fn a_ledger_only_state_gives_the_same_ledger_and_no_stats() {
    let events = common::generate::log(7, 5_000, &[common::PROGRAM, &common::program_variant()]);
    let mut full = tally_attribution::State::in_memory();
    let mut ledger_only = tally_attribution::State::in_memory();
    ledger_only.ledger_only();
    for (i, e) in events.iter().enumerate() {
        tally_attribution::apply(&mut full, i as u64 + 1, e).unwrap();
        tally_attribution::apply(&mut ledger_only, i as u64 + 1, e).unwrap();
    }
    let entries = |s: &tally_attribution::State| s.entries().map(Result::unwrap).collect::<Vec<_>>();
    assert!(entries(&full).len() > 100);
    assert_eq!(entries(&full), entries(&ledger_only));
    assert!(full.stats(0, u32::MAX).count() > 0);
    assert_eq!(ledger_only.stats(0, u32::MAX).count(), 0);
}
