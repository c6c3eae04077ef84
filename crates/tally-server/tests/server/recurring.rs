//! Recurring commissions over HTTP: a merchant reports its customer's ID (`customer_id=`) on
//! postbacks; the customer's later orders pay the affiliate who referred the first, with no
//! click, and the customer's ID is personal data that can be erased without changing the
//! ledger.

use crate::common::{assert_replay_matches, events, explain, ledger_with, of_type, Env, TestServer, TOKEN};

const ADMIN: &str = "test-admin-token-0123456789";

fn env() -> Env {
    let env = Env::new("");
    env.append_config(&format!("[admin]\ntoken = \"{ADMIN}\"\n"));
    // A repeat-order goal on the example program's last offer, demo-shop (link `shop`, aff1).
    env.append_program(
        "  [[offers.goals]]\n  id = \"reorder\"\n  payout = { kind = \"revshare\", bps = 500 }\n  recurring_months = 12\n",
    );
    env
}

fn postback(server: &TestServer, query: &str) -> u16 {
    let r = server.get(&format!("/postback?offer=demo-shop&token={TOKEN}&{query}"));
    assert!(r.status == 200 || r.status == 400, "{}", r.text());
    r.status
}

#[test]
fn a_referred_customers_later_orders_pay_the_referrer_without_a_click() {
    let env = env();
    let server = env.serve();
    let cid = server.get("/c/shop").click_id();
    assert_eq!(postback(&server, &format!("goal=sale&cid={cid}&txid=O1&amount=50.00&customer_id=C-1")), 200);
    assert_eq!(postback(&server, "goal=reorder&txid=O2&amount=40.00&customer_id=C-1"), 200);
    // Never referred: recorded, unpaid.
    assert_eq!(postback(&server, "goal=reorder&txid=O3&amount=40.00&customer=C-2"), 200);

    let ledger = ledger_with(&env.data(), "O3");
    let row = |txid: &str| ledger.iter().find(|e| e["txid"] == txid).unwrap().clone();
    let (first, reorder, stranger) = (row("O1"), row("O2"), row("O3"));
    assert_eq!((first["affiliate"].as_str(), first["amount"].as_str()), (Some("aff1"), Some("4.00")), "{first}");
    assert_eq!(
        (reorder["affiliate"].as_str(), reorder["amount"].as_str(), reorder["click_id"].as_str()),
        (Some("aff1"), Some("2.00"), Some(cid.as_str())),
        "{reorder}"
    );
    let rule = reorder["rule"].as_str().unwrap();
    assert!(rule.starts_with(&format!("recurring 12 months from entry {}", first["id"].as_str().unwrap())), "{rule}");
    assert_eq!((stranger["status"].as_str(), stranger["reason"].as_str()), (Some("unattributed"), Some("no_click")));
    let why = explain(&env.data(), "O2").join("\n");
    assert!(why.contains("recurring 12 months"), "{why}");

    // The log holds the pseudonym (chained) and the merchant's ID (erasable).
    let all = events(&env.data());
    let conversions = of_type(&all, "conversion");
    let c1: Vec<_> = conversions.iter().filter(|c| c["customer_id"] == "C-1").collect();
    assert_eq!(c1.len(), 2);
    let key = c1[0]["customer"].as_str().unwrap().to_owned();
    assert_eq!(key.len(), 32);
    assert_eq!(c1[1]["customer"], key.as_str(), "the same customer, the same pseudonym");
    assert_ne!(conversions.iter().find(|c| c["customer_id"] == "C-2").unwrap()["customer"], key.as_str());

    // Erasing the customer cuts its ID from both reports; the ledger is unchanged.
    let r = server.admin("POST", "/admin/erase", Some(ADMIN), r#"{"customers":["C-1"]}"#);
    assert_eq!((r.status, r.json()["erased"].as_u64()), (200, Some(2)), "{}", r.text());
    let all = events(&env.data());
    let erased: Vec<_> = of_type(&all, "conversion").into_iter().filter(|c| c["customer"] == key.as_str()).collect();
    assert!(erased.iter().all(|c| c["customer_id"] == "" && c["personal"] == "erased"), "{erased:?}");
    let r = server.admin("POST", "/admin/erase", Some(ADMIN), r#"{"customers":[""]}"#);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("customers"), "{}", r.text());
    // The binding is the pseudonym's: C-1's next order still pays aff1.
    assert_eq!(postback(&server, "goal=reorder&txid=O4&amount=20.00&customer_id=C-1"), 200);
    let ledger = ledger_with(&env.data(), "O4");
    let o4 = ledger.iter().find(|e| e["txid"] == "O4").unwrap();
    assert_eq!((o4["affiliate"].as_str(), o4["amount"].as_str()), (Some("aff1"), Some("1.00")), "{o4}");
    assert_replay_matches(&env.data());
}

#[test]
fn a_customer_alone_needs_an_offer_and_a_bounded_id() {
    let env = env();
    let server = env.serve();
    let r = server.get(&format!("/postback?goal=reorder&customer_id=C-1&txid=X&token={TOKEN}"));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("offer"), "{}", r.text());
    let long = "c".repeat(129);
    let r = server.get(&format!("/postback?offer=demo-shop&goal=reorder&customer_id={long}&txid=X&token={TOKEN}"));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("customer"), "{}", r.text());
    assert!(of_type(&events(&env.data()), "conversion").is_empty(), "nothing bad was logged");
}
