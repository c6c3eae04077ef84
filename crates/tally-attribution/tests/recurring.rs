//! Recurring and lifetime commissions: a customer's first credited sale binds the customer
//! to the affiliate credited; later sales of goals with recurring terms pay that affiliate,
//! with or without a click or coupon, while the terms hold.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Driver, DAY};
use tally_attribution::{Entry, Reason, Status};
use tally_model::ConversionStatus;
use tally_testkit::ConversionBuilder;

const PROGRAM: &str = r#"
[[advertisers]]
id = "acme"
postback_tokens = ["acme-token"]

[[affiliates]]
id = "aff1"
[[affiliates]]
id = "aff2"
[[affiliates]]
id = "aff3"

[[offers]]
id = "saas"
advertiser = "acme"
destination = "https://saas.example/?c={click_id}"
currency = "USD"
window_days = 30

  [[offers.goals]]
  id = "signup"
  payout = { kind = "fixed", amount = "10.00" }

  [[offers.goals]]
  id = "renewal"
  payout = { kind = "revshare", bps = 2000 }
  recurring_months = 3

  [[offers.goals]]
  id = "upgrade"
  payout = { kind = "fixed", amount = "5.00" }
  lifetime = true

[[offers]]
id = "shop"
advertiser = "acme"
destination = "https://shop.example/?c={click_id}"
currency = "USD"
window_days = 30

  [[offers.goals]]
  id = "sale"
  payout = { kind = "fixed", amount = "1.00" }
  lifetime = true

[[coupons]]
code = "FRIEND"
offer = "saas"
affiliate = "aff3"
"#;

fn driver() -> Driver {
    let mut d = Driver::bare(tally_attribution::State::in_memory());
    d.program(PROGRAM);
    d
}

fn sale(now: u64, goal: &str, txid: &str, customer: &str) -> ConversionBuilder {
    ConversionBuilder::new().at(now).offer("saas").goal(goal).txid(txid).amount(10_000).customer(customer)
}

fn apply(d: &mut Driver, report: impl FnOnce(u64) -> ConversionBuilder) -> Entry {
    let c = report(d.now);
    d.apply(c.event());
    d.own_entry()
}

#[test]
fn a_referred_customers_renewals_pay_the_referrer_for_the_months_the_goal_says() {
    let mut d = driver();
    // 2025-11-01: signed up through aff1's click.
    let cid = d.click("saas", "aff1");
    let first = apply(&mut d, |t| sale(t, "signup", "S1", "cust-1").click(cid));
    assert_eq!((first.status, first.affiliate.as_str(), first.amount), (Status::Approved, "aff1", 1_000));

    // A month later, a renewal with no click or coupon: aff1's, 20% of the sale.
    d.wait(30 * DAY);
    let renewal = apply(&mut d, |t| sale(t, "renewal", "R1", "cust-1"));
    assert_eq!((renewal.status, renewal.affiliate.as_str(), renewal.amount), (Status::Approved, "aff1", 2_000));
    assert!(
        renewal.rule.starts_with(&format!("recurring 3 months from entry {} (2025-11-01); goal renewal", first.id)),
        "{}",
        renewal.rule
    );
    assert_eq!(renewal.click_id, Some(cid), "credited through the click that referred the customer");

    // Within the three months, another affiliate's click does not take the customer.
    d.wait(30 * DAY);
    let other = d.click("saas", "aff2");
    let renewal = apply(&mut d, |t| sale(t, "renewal", "R2", "cust-1").click(other));
    assert_eq!(renewal.affiliate, "aff1");

    // The last day of the three months still pays; 2026-02-01 is three months on: the
    // binding no longer pays renewals.
    d.now = first.ts_ms + 91 * DAY;
    let last = apply(&mut d, |t| sale(t, "renewal", "R2b", "cust-1"));
    assert_eq!(last.affiliate, "aff1");
    d.now = first.ts_ms + 92 * DAY;
    let ended = apply(&mut d, |t| sale(t, "renewal", "R3", "cust-1"));
    assert_eq!((ended.status, ended.reason, ended.amount), (Status::Unattributed, Reason::RecurringEnded, 0));
    assert!(ended.rule.contains("has ended"), "{}", ended.rule);
    // ... and a renewal with its own click is credited by that click.
    let own = d.click("saas", "aff2");
    let by_click = apply(&mut d, |t| sale(t, "renewal", "R4", "cust-1").click(own));
    assert_eq!((by_click.status, by_click.affiliate.as_str()), (Status::Approved, "aff2"));
    assert!(!by_click.rule.contains("recurring"), "{}", by_click.rule);
}

#[test]
fn lifetime_goals_pay_for_good_and_goals_without_recurring_terms_do_not() {
    let mut d = driver();
    let cid = d.click("saas", "aff1");
    apply(&mut d, |t| sale(t, "signup", "S1", "cust-1").click(cid));
    d.wait(5 * 365 * DAY);
    let upgrade = apply(&mut d, |t| sale(t, "upgrade", "U1", "cust-1"));
    assert_eq!((upgrade.status, upgrade.affiliate.as_str(), upgrade.amount), (Status::Approved, "aff1", 500));
    assert!(upgrade.rule.starts_with("recurring lifetime"), "{}", upgrade.rule);
    // A second signup of the same customer (no recurring terms) needs its own click.
    let again = apply(&mut d, |t| sale(t, "signup", "S2", "cust-1"));
    assert_eq!((again.status, again.reason), (Status::Unattributed, Reason::NoClick));
}

#[test]
fn a_coupon_refers_a_customer_as_a_click_does() {
    let mut d = driver();
    let first = apply(&mut d, |t| sale(t, "signup", "S1", "cust-9").coupon("FRIEND"));
    assert_eq!((first.affiliate.as_str(), first.coupon.as_str()), ("aff3", "FRIEND"));
    d.wait(DAY);
    let renewal = apply(&mut d, |t| sale(t, "renewal", "R1", "cust-9"));
    assert_eq!(
        (renewal.status, renewal.affiliate.as_str(), renewal.coupon.as_str()),
        (Status::Approved, "aff3", "FRIEND")
    );
}

#[test]
fn bindings_are_per_customer_and_offer_and_need_a_credited_sale() {
    let mut d = driver();
    // Never referred: nothing to pay.
    let stranger = apply(&mut d, |t| sale(t, "renewal", "R0", "nobody"));
    assert_eq!((stranger.status, stranger.reason), (Status::Unattributed, Reason::NoClick));

    // A sale the merchant rejected binds nobody.
    let cid = d.click("saas", "aff1");
    let rejected = apply(&mut d, |t| sale(t, "signup", "S1", "cust-2").click(cid).status(ConversionStatus::Rejected));
    assert_eq!(rejected.reason, Reason::MerchantRejected);
    let renewal = apply(&mut d, |t| sale(t, "renewal", "R1", "cust-2"));
    assert_eq!(renewal.reason, Reason::NoClick);

    // The first credited sale binds; a later one through another affiliate does not rebind.
    let cid2 = d.click("saas", "aff2");
    apply(&mut d, |t| sale(t, "signup", "S2", "cust-2").click(cid2));
    let cid1 = d.click("saas", "aff1");
    let later = apply(&mut d, |t| sale(t, "signup", "S3", "cust-2").click(cid1));
    assert_eq!(later.affiliate, "aff1", "a goal without recurring terms follows its own click");
    let renewal = apply(&mut d, |t| sale(t, "renewal", "R2", "cust-2"));
    assert_eq!(renewal.affiliate, "aff2");

    // Another customer, and the same customer on another offer, are not bound.
    let other = apply(&mut d, |t| sale(t, "renewal", "R3", "cust-3"));
    assert_eq!(other.reason, Reason::NoClick);
    let shop =
        apply(&mut d, |t| ConversionBuilder::new().at(t).offer("shop").goal("sale").txid("X1").customer("cust-2"));
    assert_eq!((shop.status, shop.reason), (Status::Unattributed, Reason::NoClick));
}

#[test]
fn a_refunded_recurring_commission_is_reversed_and_the_binding_stays() {
    let mut d = driver();
    let cid = d.click("saas", "aff1");
    apply(&mut d, |t| sale(t, "signup", "S1", "cust-1").click(cid));
    let renewal = apply(&mut d, |t| sale(t, "renewal", "R1", "cust-1"));
    let reversal = d.reverse("saas", "renewal", "R1", ConversionStatus::Refunded);
    assert!(reversal.iter().any(|e| e.refers_to == Some(renewal.id) && e.amount == -renewal.amount), "{reversal:?}");
    let next = apply(&mut d, |t| sale(t, "renewal", "R2", "cust-1"));
    assert_eq!((next.status, next.affiliate.as_str()), (Status::Approved, "aff1"));
}

#[test]
fn replaying_the_same_events_gives_the_same_ledger() {
    let mut d = driver();
    let cid = d.click("saas", "aff1");
    apply(&mut d, |t| sale(t, "signup", "S1", "cust-1").click(cid));
    for i in 0..5 {
        d.wait(20 * DAY);
        apply(&mut d, |t| sale(t, "renewal", &format!("R{i}"), "cust-1"));
    }
    let live = d.assert_replay_matches();
    assert_eq!(live.iter().filter(|e| e.affiliate == "aff1" && e.amount > 0).count(), 5, "{live:#?}");
}
