//! Notifications: a commission's creation and each change of its status, amount or payout
//! make one outbox item per receiver, committed with the entry, with keys the same log always
//! gives again.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Driver, DAY};
use tally_attribution::State;
use tally_model::delivery::{Notification, Target};
use tally_model::event::OperatorDecision;
use tally_model::{ConversionStatus, Decision, Event};
use tally_testkit::ConversionBuilder;

const PROGRAM: &str = r#"
[[advertisers]]
id = "acme"
postback_tokens = ["acme-token"]

[[groups]]
id = "net"
postback_url = "https://group.example/pb?cid={click_id}&s={status}"

[[affiliates]]
id = "aff1"
postback_url = "https://aff1.example/pb?cid={click_id}&payout={payout}&status={status}&event={event}&tx={txid}"
[[affiliates]]
id = "aff2"
group = "net"
[[affiliates]]
id = "aff3"

[[webhooks]]
id = "crm"
url = "https://crm.example/hooks/tally"
secret = "crm-signing-key"

[[webhooks]]
id = "created-only"
url = "https://bi.example/in"
secret = "bi-key"
events = ["commission.created"]

[[offers]]
id = "shop"
advertiser = "acme"
destination = "https://shop.example/?c={click_id}"
currency = "USD"

  [[offers.goals]]
  id = "sale"
  payout = { kind = "fixed", amount = "3.00" }
  hold_days = 1
"#;

fn sale(d: &mut Driver, affiliate: &str, txid: &str) -> tally_attribution::Entry {
    let cid = d.click("shop", affiliate);
    d.apply(ConversionBuilder::new().at(d.now).offer("shop").goal("sale").click(cid).txid(txid).event());
    d.own_entry()
}

fn outbox(state: &State) -> Vec<(Vec<u8>, Notification)> {
    state.outbox_after(None, usize::MAX).unwrap()
}

#[test]
fn creations_and_changes_notify_each_receiver_once() {
    let mut d = Driver::bare(State::in_memory());
    d.program(PROGRAM);
    let e = sale(&mut d, "aff1", "T1");
    let items = outbox(&d.state);
    let summary: Vec<(&str, &str)> = items.iter().map(|(_, n)| (n.event.as_str(), n.receiver.as_str())).collect();
    assert_eq!(
        summary,
        [("commission.created", "aff1"), ("commission.created", "crm"), ("commission.created", "created-only")]
    );
    let Target::Postback { url } = &items[0].1.target else { panic!("{:?}", items[0]) };
    let cid = e.click_id.unwrap().to_string();
    assert_eq!(
        url,
        &format!("https://aff1.example/pb?cid={cid}&payout=3.00&status=pending&event=commission.created&tx=T1")
    );
    let Target::Webhook { id, url, secret, body } = &items[1].1.target else { panic!() };
    assert_eq!(
        (id.as_str(), url.as_str(), secret.as_str()),
        ("crm", "https://crm.example/hooks/tally", "crm-signing-key")
    );
    assert!(body.starts_with(r#"{"type":"commission.created""#), "{body}");
    assert!(body.contains(r#""status":"pending""#) && body.contains(&format!(r#""entry":"{}""#, e.id)), "{body}");
    assert_eq!(
        (items[0].1.key.clone(), items[2].1.key.clone()),
        (format!("tally-{}-0", e.id.seq), format!("tally-{}-2", e.id.seq))
    );

    // The hold passes: an update to the postback and to crm (created-only does not take it).
    d.wait(2 * DAY);
    d.tick();
    let items = outbox(&d.state);
    let updates: Vec<&Notification> =
        items.iter().map(|(_, n)| n).filter(|n| n.event == "commission.updated").collect();
    assert_eq!(updates.iter().map(|n| n.receiver.as_str()).collect::<Vec<_>>(), ["aff1", "crm"]);
    let Target::Postback { url } = &updates[0].target else { panic!() };
    assert!(url.contains("status=approved&event=commission.updated"), "{url}");

    // aff2 has its group's URL; aff3 none (webhooks still hear of it); a duplicate and an
    // unattributed report notify nobody.
    let before = outbox(&d.state).len();
    sale(&mut d, "aff2", "T2");
    sale(&mut d, "aff3", "T3");
    let cid = d.click("shop", "aff1");
    d.apply(ConversionBuilder::new().at(d.now).offer("shop").goal("sale").click(cid).txid("T2").event());
    d.apply(ConversionBuilder::new().at(d.now).offer("shop").goal("sale").txid("T9").event());
    let items = outbox(&d.state);
    let new: Vec<(&str, &str)> = items[before..].iter().map(|(_, n)| (n.receiver.as_str(), n.event.as_str())).collect();
    assert_eq!(
        new,
        [
            ("aff2", "commission.created"),
            ("crm", "commission.created"),
            ("created-only", "commission.created"),
            ("crm", "commission.created"),
            ("created-only", "commission.created"),
        ]
    );
    let Target::Postback { url } = &items[before].1.target else { panic!() };
    assert!(url.starts_with("https://group.example/pb?cid="), "{url}");

    // A refund of the approved sale: a clawback (created) for aff1; the sale itself only
    // gains reversed_by, which is no change a receiver is told of.
    let before = outbox(&d.state).len();
    d.apply(
        ConversionBuilder::new()
            .at(d.now)
            .offer("shop")
            .goal("sale")
            .txid("T1")
            .status(ConversionStatus::Refunded)
            .event(),
    );
    let items = outbox(&d.state);
    let refund: Vec<(&str, &str)> =
        items[before..].iter().map(|(_, n)| (n.receiver.as_str(), n.event.as_str())).collect();
    assert_eq!(
        refund,
        [("aff1", "commission.created"), ("crm", "commission.created"), ("created-only", "commission.created")]
    );
    let Target::Postback { url } = &items[before].1.target else { panic!() };
    assert!(url.contains("payout=-3.00"), "{url}");

    // Paid by a payout run: an update.
    let before = outbox(&d.state).len();
    let run = Decision::Payout {
        payout: "p1".into(),
        up_to: "2099-12-31".into(),
        affiliates: vec!["aff3".into()],
        group: String::new(),
        note: String::new(),
    };
    d.wait(2 * DAY);
    d.apply(Event::Decision(OperatorDecision { ts_ms: d.now, actor: "ops".into(), decision: run.to_json() }));
    let items = outbox(&d.state);
    let paid: Vec<&str> = items[before..].iter().map(|(_, n)| n.receiver.as_str()).collect();
    assert!(paid.contains(&"crm"), "{paid:?}");
    let body = items[before..].iter().find_map(|(_, n)| match &n.target {
        Target::Webhook { body, .. } if body.contains("\"paid_in\":\"p1\"") => Some(body),
        _ => None,
    });
    assert!(body.is_some(), "{items:?}");

    // The same log gives the same outbox: keys and bodies.
    let mut again = State::in_memory();
    for (i, e) in d.events.iter().enumerate() {
        tally_attribution::apply(&mut again, i as u64 + 1, e).unwrap();
    }
    assert_eq!(outbox(&again), outbox(&d.state));
    // Keys are in log order and unique.
    let keys: Vec<Vec<u8>> = outbox(&d.state).into_iter().map(|(k, _)| k).collect();
    let items = outbox(&d.state);
    for w in items.windows(2) {
        assert!(w[0].0 < w[1].0, "{:?}\n{:?}", w[0].1, w[1].1);
    }
    let _ = keys;
}

#[test]
fn a_program_without_receivers_makes_no_outbox_and_a_ledger_only_state_neither() {
    let mut d = Driver::new();
    let cid = d.click("shoes", "aff1");
    d.convert("shoes", "sale", Some(cid), "T1", Some(10_000));
    assert!(outbox(&d.state).is_empty());
    let mut quiet = State::in_memory();
    quiet.ledger_only();
    let mut loud = State::in_memory();
    let events = [
        tally_testkit::generate::program_event(common::T0, PROGRAM),
        Event::Click(tally_testkit::ClickBuilder::new().at(common::T0).offer("shop").affiliate("aff1").build()),
    ];
    let click = match &events[1] {
        Event::Click(c) => c.click_id,
        _ => unreachable!(),
    };
    let conversion = ConversionBuilder::new().at(common::T0).offer("shop").goal("sale").click(click).txid("X").event();
    for (i, e) in events.iter().chain([&conversion]).enumerate() {
        tally_attribution::apply(&mut quiet, i as u64 + 1, e).unwrap();
        tally_attribution::apply(&mut loud, i as u64 + 1, e).unwrap();
    }
    assert!(outbox(&quiet).is_empty());
    assert_eq!(outbox(&loud).len(), 3);
}

#[test]
fn the_outbox_is_committed_with_the_entries_and_read_back_after_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = Driver::bare(State::open(dir.path(), false).unwrap());
    d.program(PROGRAM);
    sale(&mut d, "aff1", "T1");
    sale(&mut d, "aff3", "T2");
    assert!(
        tally_attribution::LedgerReader::open(dir.path()).unwrap().outbox_after(None, 10).unwrap().is_empty(),
        "nothing before the commit"
    );
    d.state.commit().unwrap();
    let reader = tally_attribution::LedgerReader::open(dir.path()).unwrap();
    let all = reader.outbox_after(None, 100).unwrap();
    assert_eq!(all.len(), 5, "{all:?}");
    let page = reader.outbox_after(None, 2).unwrap();
    assert_eq!(page.len(), 2);
    let rest = reader.outbox_after(Some(&page[1].0), 100).unwrap();
    assert_eq!(rest.len(), 3);
    assert_eq!(rest[0], all[2]);
}

/// Links with their own postback URL, and one first-click offer.
fn with_links() -> String {
    format!(
        r#"{PROGRAM}
[[offers]]
id = "first"
advertiser = "acme"
destination = "https://shop.example/?c={{click_id}}"
currency = "USD"
model = "first_click"

  [[offers.goals]]
  id = "sale"
  payout = {{ kind = "fixed", amount = "5.00" }}

[[links]]
code = "spring"
offer = "shop"
affiliate = "aff1"
postback_url = "https://spring.example/pb?cid={{click_id}}&payout={{payout}}&s={{status}}&e={{event}}"

[[links]]
code = "plain"
offer = "shop"
affiliate = "aff1"

[[links]]
code = "intro"
offer = "first"
affiliate = "aff2"
postback_url = "https://intro.example/pb?cid={{click_id}}"
"#
    )
}

/// A click of `link`, after the visitor's `prior` click if any.
fn click_on(
    d: &mut Driver,
    offer: &str,
    affiliate: &str,
    link: &str,
    prior: Option<tally_model::ClickId>,
) -> tally_model::ClickId {
    let mut c = d.click_event(offer, affiliate, prior);
    c.link = link.to_owned();
    let id = c.click_id;
    d.apply(Event::Click(c));
    id
}

/// The postback URLs of the outbox items after the first `before`, as (receiver, URL).
fn postbacks(state: &State, before: usize) -> Vec<(String, String)> {
    outbox(state)[before..]
        .iter()
        .filter_map(|(_, n)| match &n.target {
            Target::Postback { url } => Some((n.receiver.clone(), url.clone())),
            Target::Webhook { .. } => None,
        })
        .collect()
}

#[test]
fn a_link_with_its_own_postback_url_gets_its_commissions_from_creation_to_clawback() {
    let mut d = Driver::bare(State::in_memory());
    d.program(&with_links());

    // A sale through the link with its own URL: that URL, for aff1 (its receiver).
    let spring = click_on(&mut d, "shop", "aff1", "spring", None);
    d.apply(ConversionBuilder::new().at(d.now).offer("shop").goal("sale").click(spring).txid("T1").event());
    let e1 = d.own_entry();
    assert_eq!(e1.link, "spring");
    assert_eq!(
        postbacks(&d.state, 0),
        [(
            "aff1".to_owned(),
            format!("https://spring.example/pb?cid={spring}&payout=3.00&s=pending&e=commission.created")
        )]
    );

    // One through a link without a URL: the affiliate's.
    let before = outbox(&d.state).len();
    let plain = click_on(&mut d, "shop", "aff1", "plain", None);
    d.apply(ConversionBuilder::new().at(d.now).offer("shop").goal("sale").click(plain).txid("T2").event());
    assert_eq!(d.own_entry().link, "plain");
    let got = postbacks(&d.state, before);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].1.starts_with(&format!("https://aff1.example/pb?cid={plain}&")), "{got:?}");

    // The hold passes: each approval goes where its creation went.
    let before = outbox(&d.state).len();
    d.wait(2 * DAY);
    d.tick();
    let got = postbacks(&d.state, before);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].1, format!("https://spring.example/pb?cid={spring}&payout=3.00&s=approved&e=commission.updated"));
    assert!(got[1].1.starts_with("https://aff1.example/") && got[1].1.contains("status=approved"), "{got:?}");

    // A refund of the approved sale: its clawback names the link too.
    let before = outbox(&d.state).len();
    let refund = ConversionBuilder::new().at(d.now).offer("shop").goal("sale").txid("T1");
    let entries = d.apply(refund.status(ConversionStatus::Refunded).event());
    assert!(entries.iter().all(|e| e.link == "spring"), "{entries:?}");
    assert_eq!(
        postbacks(&d.state, before),
        [(
            "aff1".to_owned(),
            format!("https://spring.example/pb?cid={spring}&payout=-3.00&s=approved&e=commission.created")
        )]
    );

    // First click: the credited (earlier) click's link decides, not the last one's.
    let before = outbox(&d.state).len();
    let intro = click_on(&mut d, "first", "aff2", "intro", None);
    d.wait(DAY / 2);
    let later = click_on(&mut d, "first", "aff1", "spring", Some(intro));
    d.apply(ConversionBuilder::new().at(d.now).offer("first").goal("sale").click(later).txid("F1").event());
    let e = d.own_entry();
    assert_eq!((e.affiliate.as_str(), e.click_id, e.link.as_str()), ("aff2", Some(intro), "intro"));
    assert_eq!(postbacks(&d.state, before), [("aff2".to_owned(), format!("https://intro.example/pb?cid={intro}"))]);

    // The same log gives the same ledger and outbox.
    d.assert_replay_matches();
    let mut again = State::in_memory();
    for (i, e) in d.events.iter().enumerate() {
        tally_attribution::apply(&mut again, i as u64 + 1, e).unwrap();
    }
    assert_eq!(outbox(&again), outbox(&d.state));
}

#[test]
fn a_link_moved_to_another_affiliate_keeps_the_first_ones_commissions_off_its_url() {
    let mut d = Driver::bare(State::in_memory());
    d.program(&with_links());
    let spring = click_on(&mut d, "shop", "aff1", "spring", None);
    d.apply(ConversionBuilder::new().at(d.now).offer("shop").goal("sale").click(spring).txid("T1").event());
    // The link now belongs to aff3: aff1's commission, approved later, goes to aff1's URL.
    let edit = tally_model::Edit {
        links: vec![tally_model::managed::LinkSpec {
            code: "spring".into(),
            offer: "shop".into(),
            affiliate: "aff3".into(),
            active: true,
            postback_url: "https://spring.example/pb?cid={click_id}".into(),
        }],
        ..tally_model::Edit::default()
    };
    let program = tally_model::Program::compose(&with_links(), std::sync::Arc::new(tally_model::Managed::default()))
        .unwrap()
        .with_edit(&edit)
        .unwrap();
    d.apply(Event::ProgramEdit(tally_model::event::ProgramEdit {
        ts_ms: d.now,
        actor: "ops".into(),
        edit: edit.to_json(),
        digest: program.digest.clone(),
    }));
    let before = outbox(&d.state).len();
    d.wait(2 * DAY);
    d.tick();
    let got = postbacks(&d.state, before);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].1.starts_with("https://aff1.example/") && got[0].1.contains("status=approved"), "{got:?}");
}
