//! Reports in the shapes merchants' systems send: naming only the click (the offer and its
//! default goal come from the click), and with the merchant's own statuses (`pending` waits
//! for the merchant's approval, `rejected` is booked unpaid or reverses an earlier report).
#![allow(clippy::unwrap_used)]

mod common;

use common::{Driver, DAY, PROGRAM};
use tally_attribution::{EntryId, Kind, Reason, Status};
use tally_model::{ClickId, ConversionStatus};
use tally_testkit::ConversionBuilder;

/// A second advertiser with its own offer, beside `PROGRAM`'s `acme`.
fn two_advertisers() -> String {
    format!(
        "{PROGRAM}
[[advertisers]]
id = \"globex\"
postback_tokens = [\"globex-token\"]

[[offers]]
id = \"gadgets\"
advertiser = \"globex\"
destination = \"https://gadgets.example/?c={{click_id}}\"
currency = \"USD\"
window_days = 30

  [[offers.goals]]
  id = \"order\"
  payout = {{ kind = \"fixed\", amount = \"5.00\" }}
"
    )
}

/// A report naming only its click, as an advertiser's postback (`advertiser` set) or a
/// browser's (empty).
fn by_click(d: &Driver, advertiser: &str, cid: Option<ClickId>, txid: &str) -> ConversionBuilder {
    ConversionBuilder::new().at(d.now).offer("").goal("").advertiser(advertiser).click(cid).txid(txid)
}

fn apply(d: &mut Driver, report: impl FnOnce(&Driver) -> ConversionBuilder) -> tally_attribution::Entry {
    let c = report(d);
    d.apply(c.event());
    d.own_entry()
}

#[test]
fn a_report_naming_only_the_click_takes_the_offer_and_default_goal_from_it() {
    let mut d = Driver::new();
    let cid = d.click("shoes", "aff1");
    d.wait(1000);
    let e = apply(&mut d, |d| by_click(d, "acme", Some(cid), "T1").amount(10_000));
    assert_eq!((e.kind, e.status, e.reason), (Kind::Commission, Status::Pending, Reason::None));
    assert_eq!((e.offer.as_str(), e.goal.as_str(), e.affiliate.as_str()), ("shoes", "sale", "aff1"));
    assert_eq!(e.amount, 1_000);
    // A named goal is kept; a browser's report (no advertiser) is credited the same way.
    let e = apply(&mut d, |d| by_click(d, "", Some(cid), "T2").goal("lead"));
    assert_eq!((e.status, e.goal.as_str(), e.amount), (Status::Approved, "lead", 250));
    // An unknown goal of the click's offer is not credited.
    let e = apply(&mut d, |d| by_click(d, "acme", Some(cid), "T3").goal("signup"));
    assert_eq!((e.status, e.reason, e.offer.as_str()), (Status::Unattributed, Reason::UnknownGoal, "shoes"));
}

#[test]
fn the_same_transaction_by_click_and_by_offer_is_paid_once() {
    let mut d = Driver::new();
    let cid = d.click("shoes", "aff1");
    let first = apply(&mut d, |d| by_click(d, "acme", Some(cid), "T1").goal("lead"));
    assert_eq!(first.status, Status::Approved);
    let again = apply(&mut d, |d| by_click(d, "acme", Some(cid), "T1").goal("lead"));
    assert_eq!(
        (again.status, again.reason, again.refers_to),
        (Status::Duplicate, Reason::RepeatedTransaction, Some(first.id))
    );
    let named = d.convert("shoes", "lead", Some(cid), "T1", None);
    assert_eq!((named.status, named.refers_to), (Status::Duplicate, Some(first.id)));
}

#[test]
fn unknown_expired_and_other_advertisers_clicks_are_not_credited() {
    let mut d = Driver::bare(tally_attribution::State::in_memory());
    d.program(&two_advertisers());
    let unknown = ClickId::new(d.now, 9, 42);
    let e = apply(&mut d, |d| by_click(d, "acme", Some(unknown), "T1"));
    assert_eq!((e.status, e.reason, e.offer.as_str()), (Status::Unattributed, Reason::UnknownClick, ""));
    assert_eq!((e.kind, e.amount), (Kind::Commission, 0));

    // globex's credential cannot report a conversion on acme's click, nor acme's on globex's.
    let shoes = d.click("shoes", "aff1");
    let gadgets = d.click("gadgets", "aff2");
    let e = apply(&mut d, |d| by_click(d, "globex", Some(shoes), "T2"));
    assert_eq!((e.status, e.reason), (Status::Unattributed, Reason::ClickAdvertiserMismatch));
    let e = apply(&mut d, |d| by_click(d, "acme", Some(gadgets), "T3"));
    assert_eq!((e.status, e.reason), (Status::Unattributed, Reason::ClickAdvertiserMismatch));
    let e = apply(&mut d, |d| by_click(d, "globex", Some(gadgets), "T4"));
    assert_eq!((e.status, e.offer.as_str(), e.goal.as_str(), e.amount), (Status::Approved, "gadgets", "order", 500));

    // Past the offer's window, the click is still known: its offer is, and the report is
    // outside the window.
    d.wait(31 * DAY);
    d.tick();
    let e = apply(&mut d, |d| by_click(d, "globex", Some(gadgets), "T5"));
    assert_eq!((e.status, e.reason, e.offer.as_str()), (Status::Unattributed, Reason::OutsideWindow, "gadgets"));
    // Past the longest window of the program (and a day), the click has expired: its offer
    // cannot be known any more.
    d.wait(2 * DAY);
    d.tick();
    let e = apply(&mut d, |d| by_click(d, "globex", Some(gadgets), "T6"));
    assert_eq!((e.status, e.reason, e.offer.as_str()), (Status::Unattributed, Reason::ExpiredClick, ""));
}

#[test]
fn a_refund_naming_only_the_click_finds_its_sale_after_the_click_expired() {
    let mut d = Driver::new();
    let cid = d.click("shoes", "aff1");
    let sale = apply(&mut d, |d| by_click(d, "acme", Some(cid), "T1").goal("lead"));
    assert_eq!(sale.status, Status::Approved);
    d.wait(40 * DAY);
    d.tick();
    let refund = by_click(&d, "acme", Some(cid), "T1").status(ConversionStatus::Refunded);
    let entries = d.apply(refund.event());
    let e = d.own_entry();
    assert_eq!((e.kind, e.reason, e.amount, e.refers_to), (Kind::Clawback, Reason::Refunded, -250, Some(sale.id)));
    assert_eq!(entries.len(), 2);
}

#[test]
fn pending_waits_for_the_merchant_then_its_hold() {
    let mut d = Driver::new();
    let cid = d.click("shoes", "aff1");
    // `lead` pays a fixed 2.50 with no hold: approved as soon as the merchant approves.
    let p = |d: &Driver, txid: &str, status| {
        ConversionBuilder::new().at(d.now).offer("shoes").goal("lead").click(cid).txid(txid).status(status)
    };
    let pending = apply(&mut d, |d| p(d, "T1", ConversionStatus::Pending));
    assert_eq!((pending.status, pending.reason, pending.amount), (Status::Pending, Reason::MerchantPending, 250));
    assert_eq!(pending.approve_at_ms, None);
    // Time passes; no hold timer approves it.
    d.wait(60 * DAY);
    d.tick();
    assert_eq!(d.entry(pending.id).status, Status::Pending);
    // A repeated pending report changes nothing.
    let again = apply(&mut d, |d| p(d, "T1", ConversionStatus::Pending));
    assert_eq!((again.status, again.refers_to), (Status::Duplicate, Some(pending.id)));
    let approve = p(&d, "T1", ConversionStatus::Approved);
    let changed = d.apply(approve.event());
    let confirmation = d.own_entry();
    assert_eq!(
        (confirmation.kind, confirmation.status, confirmation.amount),
        (Kind::Confirmation, Status::Approved, 0)
    );
    assert_eq!(confirmation.refers_to, Some(pending.id));
    let original = d.entry(pending.id);
    assert_eq!(
        (original.status, original.reason, original.approved_seq),
        (Status::Approved, Reason::None, Some(d.seq))
    );
    assert_eq!(original.confirmed_by, Some(d.seq));
    assert_eq!(changed.len(), 2);
    // A second approval is a duplicate, paying nothing.
    let twice = apply(&mut d, |d| p(d, "T1", ConversionStatus::Approved));
    assert_eq!((twice.kind, twice.status), (Kind::Commission, Status::Duplicate));

    // `sale` holds 10 days: approved by the merchant on day 2, paid on day 10.
    let fresh = d.click("shoes", "aff2");
    let sale = |d: &Driver, status| {
        ConversionBuilder::new()
            .at(d.now)
            .offer("shoes")
            .goal("sale")
            .click(fresh)
            .txid("S1")
            .amount(5_000)
            .status(status)
    };
    let t0 = d.now;
    let pending = apply(&mut d, |d| sale(d, ConversionStatus::Pending));
    assert_eq!((pending.status, pending.approve_at_ms), (Status::Pending, None));
    d.wait(2 * DAY);
    apply(&mut d, |d| sale(d, ConversionStatus::Approved));
    let held = d.entry(pending.id);
    assert_eq!((held.status, held.reason, held.approve_at_ms), (Status::Pending, Reason::None, Some(t0 + 10 * DAY)));
    d.wait(8 * DAY);
    d.tick();
    assert_eq!(d.entry(pending.id).status, Status::Approved);
}

#[test]
fn rejected_is_unpaid_first_and_a_reversal_after() {
    let mut d = Driver::new();
    let cid = d.click("shoes", "aff1");
    let r = |d: &Driver, txid: &str, status| {
        ConversionBuilder::new().at(d.now).offer("shoes").goal("lead").click(cid).txid(txid).status(status)
    };
    // First report rejected: booked, credited to nobody's balance, and it claims the
    // transaction (a later approval of it is a duplicate).
    let e = apply(&mut d, |d| r(d, "T1", ConversionStatus::Rejected));
    assert_eq!(
        (e.kind, e.status, e.reason, e.amount),
        (Kind::Commission, Status::Rejected, Reason::MerchantRejected, 0)
    );
    assert_eq!(e.affiliate, "aff1");
    let later = apply(&mut d, |d| r(d, "T1", ConversionStatus::Approved));
    assert_eq!(later.status, Status::Duplicate);

    // Pending, then rejected: the commission is rejected.
    let pending = apply(&mut d, |d| r(d, "T2", ConversionStatus::Pending));
    let rej = apply(&mut d, |d| r(d, "T2", ConversionStatus::Rejected));
    assert_eq!((rej.kind, rej.reason, rej.refers_to), (Kind::Reversal, Reason::MerchantRejected, Some(pending.id)));
    let original = d.entry(pending.id);
    assert_eq!((original.status, original.reason), (Status::Rejected, Reason::MerchantRejected));

    // Approved, then rejected: clawed back.
    let paid = d.convert("shoes", "lead", Some(cid), "T3", None);
    assert_eq!(paid.status, Status::Approved);
    let back = apply(&mut d, |d| r(d, "T3", ConversionStatus::Rejected));
    assert_eq!((back.kind, back.reason, back.amount), (Kind::Clawback, Reason::MerchantRejected, -250));
    assert_eq!(d.entry(EntryId::of_event(paid.id.seq)).reversed_by, Some(back.id.seq));
}

/// Every entry as of any earlier point equals what a replay stopping there produces: the
/// merchant's approvals and rejections undo exactly (`Entry::as_of`).
#[test]
fn merchant_decisions_undo_exactly_for_partial_replays() {
    let mut d = Driver::new();
    let cid = d.click("shoes", "aff1");
    let c = |d: &Driver, goal: &str, txid: &str, status| {
        ConversionBuilder::new().at(d.now).offer("shoes").goal(goal).click(cid).txid(txid).amount(4_000).status(status)
    };
    use ConversionStatus::*;
    for (goal, txid, status, wait) in [
        ("lead", "A", Pending, 0),
        ("sale", "B", Pending, DAY),
        ("lead", "C", Pending, 0),
        ("lead", "A", Approved, DAY),
        ("sale", "B", Approved, 2 * DAY),
        ("lead", "C", Rejected, DAY),
        ("sale", "B", Refunded, 0),
        ("sale", "D", Pending, DAY),
        ("sale", "D", Approved, 12 * DAY),
    ] {
        d.wait(wait);
        let e = c(&d, goal, txid, status).event();
        d.apply(e);
    }
    d.wait(20 * DAY);
    d.tick();
    let last = d.seq;
    let live: Vec<_> = (1..=last).filter_map(|s| d.state.entry(EntryId::of_event(s)).unwrap()).collect();
    for cut in 1..=last {
        let mut replay = Driver::bare(tally_attribution::State::in_memory());
        for e in &d.events[..usize::try_from(cut).unwrap()] {
            replay.apply(e.clone());
        }
        for e in &live {
            let want = (1..=cut).contains(&e.id.seq).then(|| replay.state.entry(e.id).unwrap()).flatten();
            assert_eq!(e.as_of(cut), want, "entry {} as of {cut}", e.id);
        }
    }
}

/// `PROGRAM` with browser policies on the `shoes` goals: `sale` reviews browser reports and
/// takes at most 100.00 from one, `lead` takes postbacks only; `tiered` requires a txid.
fn with_browser_policies() -> String {
    PROGRAM
        .replacen(
            "  hold_days = 10\n",
            "  hold_days = 10\n  browser_reports = \"pending_review\"\n  max_browser_amount = \"100.00\"\n",
            1,
        )
        .replacen("  daily_cap = 3\n", "  daily_cap = 3\n  browser_reports = \"postback_only\"\n", 1)
        .replacen("  id = \"tiered\"\n", "  id = \"tiered\"\n  require_txid = true\n", 1)
}

fn browser(d: &Driver, goal: &str, cid: ClickId, txid: &str) -> ConversionBuilder {
    ConversionBuilder::new()
        .at(d.now)
        .source(tally_model::ConversionSource::Tag)
        .offer("shoes")
        .goal(goal)
        .click(cid)
        .txid(txid)
}

#[test]
fn browser_reports_follow_the_goals_policy() {
    let mut d = Driver::bare(tally_attribution::State::in_memory());
    d.program(&with_browser_policies());
    let cid = d.click("shoes", "aff1");

    // postback_only: the browser's report is booked unpaid and does not claim the order, so
    // the merchant's postback of it is paid.
    let tag = apply(&mut d, |d| browser(d, "lead", cid, "L1"));
    assert_eq!((tag.status, tag.reason, tag.amount), (Status::Rejected, Reason::BrowserReportRefused, 0));
    assert_eq!((tag.source.as_str(), tag.affiliate.as_str()), ("tag", "aff1"));
    let postback = apply(&mut d, |d| browser(d, "lead", cid, "L1").source(tally_model::ConversionSource::Postback));
    assert_eq!((postback.status, postback.amount, postback.source.as_str()), (Status::Approved, 250, "postback"));

    // require_txid: a browser's report without one is not paid; a postback without one is.
    let no_txid = apply(&mut d, |d| browser(d, "tiered", cid, ""));
    assert_eq!((no_txid.status, no_txid.reason), (Status::Rejected, Reason::NoTransactionId));
    let postback = apply(&mut d, |d| browser(d, "tiered", cid, "").source(tally_model::ConversionSource::Postback));
    assert_eq!(postback.status, Status::Approved);

    // max_browser_amount: 100.00 at most from a browser, whatever a postback says.
    let big = apply(&mut d, |d| browser(d, "sale", cid, "S0").amount(999_900));
    assert_eq!((big.status, big.reason), (Status::Rejected, Reason::BrowserAmountOverLimit));
    assert_eq!(big.rule, "goal sale: a browser may report a sale of at most 100.00");

    // pending_review: pending, with no timer, until the merchant's postback approves it; a
    // browser's own "approved" does not.
    let review = apply(&mut d, |d| browser(d, "sale", cid, "S1").amount(5_000));
    assert_eq!((review.status, review.reason, review.amount), (Status::Pending, Reason::BrowserReview, 500));
    assert_eq!(review.approve_at_ms, None);
    let by_browser = apply(&mut d, |d| browser(d, "sale", cid, "S1").amount(5_000));
    assert_eq!(by_browser.status, Status::Duplicate);
    assert_eq!(d.entry(review.id).reason, Reason::BrowserReview);
    d.wait(DAY);
    let confirm = apply(&mut d, |d| browser(d, "sale", cid, "S1").source(tally_model::ConversionSource::Postback));
    assert_eq!((confirm.kind, confirm.refers_to), (Kind::Confirmation, Some(review.id)));
    let held = d.entry(review.id);
    assert_eq!(
        (held.status, held.reason, held.approve_at_ms),
        (Status::Pending, Reason::None, Some(review.ts_ms + 10 * DAY))
    );

    // Undone exactly for a replay that stops earlier.
    let last = d.seq;
    for cut in 1..=last {
        let mut replay = Driver::bare(tally_attribution::State::in_memory());
        for e in &d.events[..usize::try_from(cut).unwrap()] {
            replay.apply(e.clone());
        }
        let live = d.entry(review.id);
        let want = (review.id.seq <= cut).then(|| replay.entry(review.id));
        assert_eq!(live.as_of(cut), want, "as of {cut}");
    }
}
