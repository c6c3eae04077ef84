//! The referral program of issue 26 end to end, over HTTP: 4,000 ambassadors in three groups
//! imported with their links and coupons, sales through links and coupon-only sales with
//! customer IDs, repeat purchases paid to the referrer with no click, operators approving and
//! rejecting, a payout run, and every statement checked against a computation made here,
//! independently of Tally's rules code. Replay reproduces it all.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value;

use crate::common::{assert_replay_matches, ledger, ledger_with, Env, TestServer, TOKEN};

const ADMIN: &str = "test-admin-token-0123456789";
const AMBASSADORS: usize = 4000;

fn admin(server: &TestServer, method: &str, path: &str, content_type: &str, body: &str) -> (u16, Value) {
    let r =
        server.admin_with(method, path, Some(ADMIN), &[("Content-Type", content_type), ("X-Tally-Actor", "ops")], body);
    (r.status, serde_json::from_slice(&r.body).unwrap_or(Value::String(r.text())))
}

fn group_of(i: usize) -> &'static str {
    ["bronze", "silver", "gold"][i % 3]
}

/// What the ambassador's group pays on a sale of `cents`, by the terms imported below.
fn sale_commission(i: usize, cents: i64) -> i64 {
    match group_of(i) {
        "bronze" => cents * 5 / 100,
        "silver" => cents / 10,
        _ => 2_000,
    }
}

/// And on a repeat order (the example program's `reorder` goal pays 5%; gold's terms 10%).
fn reorder_commission(i: usize, cents: i64) -> i64 {
    if group_of(i) == "gold" {
        cents / 10
    } else {
        cents * 5 / 100
    }
}

fn minimum(i: usize) -> i64 {
    match group_of(i) {
        "bronze" => 2_500,
        "silver" => 1_000,
        _ => 0,
    }
}

fn postback(server: &TestServer, query: &str) {
    let r = server.get(&format!("/postback?offer=shoes&token={TOKEN}&{query}"));
    assert_eq!(r.status, 200, "{query}: {}", r.text());
}

fn entry_of(rows: &[Value], txid: &str) -> String {
    rows.iter().find(|e| e["txid"] == txid && e["kind"] == "commission").unwrap()["id"].as_str().unwrap().to_owned()
}

#[test]
fn a_referral_program_of_4000_ambassadors_pays_what_an_independent_computation_says() {
    let env = Env::new("");
    env.append_config(&format!("[admin]\ntoken = \"{ADMIN}\"\n"));
    let server = env.serve();

    // Three groups with their own terms and minimums, then the ambassadors in one import.
    let groups = [
        r#"{"id":"bronze","terms":[{"offer":"shoes","goal":"sale","payout":{"kind":"revshare","bps":500},"hold_days":0}],"payout_minimum":{"USD":"25.00"}}"#,
        r#"{"id":"silver","terms":[{"offer":"shoes","goal":"sale","payout":{"kind":"revshare","bps":1000},"hold_days":0}],"payout_minimum":{"USD":"10.00"}}"#,
        r#"{"id":"gold","terms":[{"offer":"shoes","goal":"sale","payout":{"kind":"fixed","amount":"20.00"},"hold_days":30},{"offer":"shoes","goal":"reorder","payout":{"kind":"revshare","bps":1000}}]}"#,
    ];
    for g in groups {
        let (status, v) = admin(&server, "POST", "/admin/groups", "application/json", g);
        assert_eq!(status, 201, "{v}");
    }
    let mut csv = String::from("id,name,group,offer,link,coupon\n");
    for i in 1..=AMBASSADORS {
        let _ = writeln!(csv, "amb{i:04},Ambassador {i},{},shoes,l-amb{i:04},AMB{i:04}", group_of(i));
    }
    let (status, v) = admin(&server, "POST", "/admin/import?type=affiliates", "text/csv", &csv);
    assert_eq!((status, v["put"]["affiliates"].as_u64()), (200, Some(AMBASSADORS as u64)), "{v}");

    // approved[i], pending[i]: what ambassador i has, by this test's own arithmetic.
    let mut approved: BTreeMap<usize, i64> = BTreeMap::new();
    let mut gold_sales: Vec<(usize, String, i64)> = Vec::new();
    let mut customers: Vec<(usize, String)> = Vec::new();
    let mut last_txid = String::new();
    let mut sale = |server: &TestServer, i: usize, how: String, customer: String, txid: String| {
        let cents = 10_000 + (i % 7) as i64 * 5_000;
        postback(server, &format!("goal=sale&{how}&txid={txid}&amount={}.00&customer_id={customer}", cents / 100));
        if group_of(i) == "gold" {
            gold_sales.push((i, txid.clone(), sale_commission(i, cents)));
        } else {
            *approved.entry(i).or_default() += sale_commission(i, cents);
        }
        customers.push((i, customer));
        last_txid = txid;
    };
    // Sales through ambassadors' links, and coupon-only sales (no click at all).
    for i in (1..=AMBASSADORS).step_by(17) {
        let cid = server.get(&format!("/c/l-amb{i:04}")).click_id();
        sale(&server, i, format!("cid={cid}"), format!("c{i}"), format!("S{i}"));
    }
    for i in (5..=AMBASSADORS).step_by(23) {
        sale(&server, i, format!("coupon=amb{i:04}"), format!("k{i}"), format!("K{i}"));
    }
    // Repeat orders by half the customers, with no click: the referrer is paid. One in four
    // comes through another ambassador's link: the referrer keeps its customer.
    let mut reorders = 0;
    for (n, (i, customer)) in customers.clone().iter().enumerate().filter(|(n, _)| n % 2 == 0) {
        let cents = 4_000 + (n % 5) as i64 * 1_000;
        let via = if n % 4 == 0 {
            let other = (i % AMBASSADORS) + 1;
            format!("&cid={}", server.get(&format!("/c/l-amb{other:04}")).click_id())
        } else {
            String::new()
        };
        postback(&server, &format!("goal=reorder&txid=R{n}&amount={}.00&customer_id={customer}{via}", cents / 100));
        *approved.entry(*i).or_default() += reorder_commission(*i, cents);
        reorders += 1;
        last_txid = format!("R{n}");
    }
    assert!(reorders > 100, "{reorders}");
    let rows = ledger_with(&env.data(), &last_txid);

    // Gold sales wait 30 days: operators approve some now, reject others, leave the rest.
    let mut pending: BTreeMap<usize, i64> = BTreeMap::new();
    for (n, (i, txid, commission)) in gold_sales.iter().enumerate() {
        let id = entry_of(&rows, txid);
        match n % 3 {
            0 => {
                let (status, v) =
                    admin(&server, "POST", &format!("/admin/commissions/{id}/approve"), "application/json", "");
                assert_eq!(status, 200, "{v}");
                *approved.entry(*i).or_default() += commission;
            }
            1 => {
                let body = r#"{"reason":"self-referral"}"#;
                let (status, v) =
                    admin(&server, "POST", &format!("/admin/commissions/{id}/reject"), "application/json", body);
                assert_eq!(status, 200, "{v}");
            }
            _ => *pending.entry(*i).or_default() += commission,
        }
    }
    // One approved silver sale is found fraudulent: clawed back.
    let (i, txid) =
        (1..=AMBASSADORS).step_by(17).find(|i| group_of(*i) == "silver").map(|i| (i, format!("S{i}"))).unwrap();
    let id = entry_of(&rows, &txid);
    let (status, v) =
        admin(&server, "POST", &format!("/admin/commissions/{id}/reject"), "application/json", r#"{"reason":"fraud"}"#);
    assert_eq!((status, v["decision"]["kind"].as_str()), (200, Some("clawback")), "{v}");
    let cents = 10_000 + (i % 7) as i64 * 5_000;
    *approved.get_mut(&i).unwrap() -= sale_commission(i, cents);

    // Balances before the run are what this test computed.
    let (status, v) = admin(&server, "GET", "/admin/balances", "application/json", "");
    assert_eq!(status, 200);
    let usd = tally_model::Currency::from_code("USD").unwrap();
    let money = |s: &Value| tally_model::parse_minor(s.as_str().unwrap(), usd, true).unwrap();
    let balances: BTreeMap<String, &Value> =
        v["balances"].as_array().unwrap().iter().map(|b| (b["affiliate"].as_str().unwrap().to_owned(), b)).collect();
    for (i, want) in &approved {
        let b = balances[&format!("amb{i:04}")];
        assert_eq!(money(&b["approved"]), *want, "amb{i:04}: {b}");
        assert_eq!(money(&b["pending"]), pending.get(i).copied().unwrap_or(0), "amb{i:04}: {b}");
    }

    // The payout run, and each ambassador's statement.
    let (status, v) =
        admin(&server, "POST", "/admin/payouts", "application/json", r#"{"payout":"2026-12","up_to":"2099-12-31"}"#);
    assert_eq!(status, 200, "{v}");
    let mut paid = 0;
    let mut carried = 0;
    for (i, want) in &approved {
        let (status, v) = admin(&server, "GET", &format!("/admin/payouts/2026-12/statements/amb{i:04}"), "", "");
        assert_eq!(status, 200, "{v}");
        let s = &v["statement"];
        if *want > 0 && *want >= minimum(*i) {
            assert_eq!(s["totals"].as_array().unwrap().len(), 1, "amb{i:04}: {s}");
            assert_eq!(money(&s["totals"][0]["amount"]), *want, "amb{i:04}: {s}");
            let lines: i64 = s["entries"].as_array().unwrap().iter().map(|e| money(&e["amount"])).sum();
            assert_eq!(lines, *want, "the lines add up to the total");
            paid += 1;
        } else {
            assert!(s["entries"].as_array().unwrap().is_empty(), "amb{i:04} is under its minimum: {s}");
            carried += 1;
        }
    }
    assert!(paid > 100 && carried > 10, "{paid} paid, {carried} carried over");
    let run = &admin(&server, "GET", "/admin/payouts/2026-12", "", "").1["payout"];
    assert_eq!(run["affiliates"].as_u64(), Some(paid), "{run}");
    let total: i64 = approved.iter().filter(|(i, w)| **w > 0 && **w >= minimum(**i)).map(|(_, w)| w).sum();
    assert_eq!(money(&run["totals"][0]["amount"]), total, "{run}");

    // Every paid ledger entry belongs to a paid ambassador; none is paid twice.
    let rows = ledger(&env.data());
    let marked: i64 = rows.iter().filter(|e| e["payout"] == "2026-12").map(|e| money(&e["amount"])).sum();
    assert_eq!(marked, total);
    assert_replay_matches(&env.data());
}
