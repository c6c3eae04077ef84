//! Payouts over HTTP: balances, a payout run, statements (JSON and CSV, checked against a
//! sum of the ledger made here), the affiliate API's own view, a void, and every refusal.

use serde_json::Value;

use crate::common::{assert_replay_matches, ledger, ledger_with, Env, TestServer, TOKEN};

const ADMIN: &str = "test-admin-token-0123456789";

fn env() -> Env {
    let env = Env::new("");
    env.append_config(&format!("[admin]\ntoken = \"{ADMIN}\"\n"));
    // A program-wide minimum of 5.00 USD (top-level keys go before the first table).
    let program = std::fs::read_to_string(env.program()).unwrap();
    std::fs::write(env.program(), format!("payout_minimum = {{ USD = \"5.00\" }}\n{program}")).unwrap();
    env
}

fn admin(server: &TestServer, method: &str, path: &str, body: &str) -> (u16, Value) {
    let r = server.admin_with(
        method,
        path,
        Some(ADMIN),
        &[("Content-Type", "application/json"), ("X-Tally-Actor", "alice")],
        body,
    );
    (r.status, serde_json::from_slice(&r.body).unwrap_or(Value::String(r.text())))
}

/// An approved 2.50 signup credited to aff1 through its link `demo`.
fn signup(server: &TestServer, txid: &str) {
    let cid = server.get("/c/demo").click_id();
    let r = server.get(&format!("/postback?offer=shoes&goal=signup&cid={cid}&txid={txid}&token={TOKEN}"));
    assert_eq!(r.status, 200, "{}", r.text());
}

fn balance(server: &TestServer, affiliate: &str) -> Value {
    let (status, v) = admin(server, "GET", &format!("/admin/balances?affiliate={affiliate}"), "");
    assert_eq!(status, 200, "{v}");
    v["balances"].as_array().unwrap().iter().find(|b| b["currency"] == "USD").cloned().unwrap_or(Value::Null)
}

#[test]
fn a_payout_run_pays_balances_over_the_minimum_and_a_void_undoes_it() {
    let env = env();
    let server = env.serve();
    for t in ["P1", "P2", "P3"] {
        signup(&server, t);
    }
    // aff2: one coupon signup, 2.50, under the minimum.
    let r = server.get(&format!("/postback?offer=shoes&goal=signup&coupon=SPRING10&txid=P4&token={TOKEN}"));
    assert_eq!(r.status, 200, "{}", r.text());
    ledger_with(&env.data(), "P4");
    let b = balance(&server, "aff1");
    assert_eq!(
        (b["approved"].as_str(), b["minimum"].as_str(), b["payable"].as_bool()),
        (Some("7.50"), Some("5.00"), Some(true)),
        "{b}"
    );
    assert_eq!(balance(&server, "aff2")["payable"], false);

    let (status, v) =
        admin(&server, "POST", "/admin/payouts", r#"{"payout":"2026-12","up_to":"2099-12-31","note":"monthly"}"#);
    assert_eq!(status, 200, "{v}");
    let rule = v["decision"]["rule"].as_str().unwrap();
    assert!(rule.contains("1 balance(s) paid in 3 entries (USD 7.50); 1 below the minimum"), "{rule}");
    assert_eq!((v["decision"]["kind"].as_str(), v["decision"]["txid"].as_str()), (Some("payout"), Some("2026-12")));
    let b = balance(&server, "aff1");
    assert_eq!((b["approved"].as_str(), b["paid"].as_str()), (Some("0.00"), Some("7.50")), "{b}");

    // The statement, against the ledger summed here.
    let rows = ledger(&env.data());
    let mine: Vec<&Value> = rows.iter().filter(|e| e["payout"] == "2026-12" && e["affiliate"] == "aff1").collect();
    let usd = tally_model::Currency::from_code("USD").unwrap();
    let cents: i64 =
        mine.iter().map(|e| tally_model::parse_minor(e["amount"].as_str().unwrap(), usd, true).unwrap()).sum();
    assert_eq!((mine.len(), cents), (3, 750));
    let (status, v) = admin(&server, "GET", "/admin/payouts/2026-12/statements/aff1", "");
    assert_eq!(status, 200, "{v}");
    let s = &v["statement"];
    assert_eq!(s["entries"].as_array().unwrap().len(), mine.len());
    assert_eq!((s["totals"][0]["currency"].as_str(), s["totals"][0]["amount"].as_str()), (Some("USD"), Some("7.50")));
    let r = server.admin("GET", "/admin/payouts/2026-12/statements/aff1?format=csv", Some(ADMIN), "");
    assert_eq!((r.status, r.header("content-type")), (200, Some("text/csv; charset=utf-8")));
    let csv = r.text();
    assert!(
        csv.starts_with("payout,affiliate,entry,date,kind,offer,goal,txid,sale_amount,amount,currency,rule\n"),
        "{csv}"
    );
    assert_eq!(csv.lines().count(), 1 + 3 + 1, "{csv}");
    assert!(csv.lines().last().unwrap().starts_with("2026-12,aff1,,,total,,,,,7.50,USD,3 entries"), "{csv}");

    let (status, v) = admin(&server, "GET", "/admin/payouts", "");
    assert_eq!((status, v["payouts"].as_array().unwrap().len()), (200, 1), "{v}");
    assert_eq!(v["payouts"][0]["state"], "paid");
    let (status, v) = admin(&server, "GET", "/admin/payouts/2026-12", "");
    assert_eq!((status, v["payout"]["lines"][0]["affiliate"].as_str()), (200, Some("aff1")), "{v}");

    // The affiliate API: aff1 reads its statement; aff2, whom the run did not pay, cannot.
    let token = |a: &str| {
        server.admin("POST", &format!("/admin/affiliates/{a}/tokens"), Some(ADMIN), "{}").json()["token"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (t1, t2) = (token("aff1"), token("aff2"));
    let get = |t: &str, path: &str| {
        crate::common::Conn::open(server.addr)
            .send(&format!("GET {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {t}\r\n\r\n"))
    };
    let r = get(&t1, "/v1/affiliate/payouts/2026-12");
    assert_eq!((r.status, r.json()["statement"]["affiliate"].as_str()), (200, Some("aff1")), "{}", r.text());
    assert_eq!(get(&t1, "/v1/affiliate/payouts").json()["payouts"][0]["lines"].as_array().unwrap().len(), 1);
    let r = get(&t2, "/v1/affiliate/payouts/2026-12");
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(get(&t2, "/v1/affiliate/payouts").json()["payouts"].as_array().unwrap().is_empty());
    let r = get(&t2, "/v1/affiliate/balances");
    let all = r.json()["balances"].as_array().unwrap().clone();
    assert!(!all.is_empty() && all.iter().all(|b| b["affiliate"] == "aff2"), "{all:?}");

    // The same payout ID again: logged, not applied.
    let (status, v) = admin(&server, "POST", "/admin/payouts", r#"{"payout":"2026-12","up_to":"2099-12-31"}"#);
    assert_eq!(status, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("was used by entry"), "{v}");

    // A void: unpaid again; a second void is not applied; a later run pays them again.
    let (status, v) = admin(&server, "POST", "/admin/payouts/2026-12/void", r#"{"reason":"bank returned it"}"#);
    assert_eq!(status, 200, "{v}");
    assert!(v["decision"]["rule"].as_str().unwrap().contains("3 entries unpaid again"), "{v}");
    assert_eq!(balance(&server, "aff1")["approved"], "7.50");
    assert_eq!(admin(&server, "GET", "/admin/payouts", "").1["payouts"][0]["state"], "voided");
    let (status, _) = admin(&server, "POST", "/admin/payouts/2026-12/void", r#"{"reason":"again"}"#);
    assert_eq!(status, 409);
    let (status, v) = admin(&server, "POST", "/admin/payouts", r#"{"up_to":"2099-12-31"}"#);
    assert_eq!((status, v["decision"]["txid"].as_str()), (200, Some("2099-12-31")), "the ID defaults to up_to: {v}");
    assert_eq!(balance(&server, "aff1")["paid"], "7.50");
    assert_replay_matches(&env.data());
}

#[test]
fn bad_payout_requests_are_refused_naming_the_problem() {
    let env = env();
    let server = env.serve();
    for (method, path, body, status, needle) in [
        ("POST", "/admin/payouts", r#"{"up_to":"30.11.2026"}"#, 400, "up_to"),
        ("POST", "/admin/payouts", r#"{"payout":"a b","up_to":"2026-11-30"}"#, 400, "not a payout ID"),
        ("POST", "/admin/payouts", r#"{"up_to":"2026-11-30","affiliates":["ghost"]}"#, 400, "no affiliate \"ghost\""),
        ("POST", "/admin/payouts", r#"{"up_to":"2026-11-30","group":"ghosts"}"#, 400, "no group \"ghosts\""),
        ("POST", "/admin/payouts", "", 400, "a JSON body is required"),
        ("POST", "/admin/payouts", r#"{"up_to":"2026-11-30","colour":"red"}"#, 400, "colour"),
        ("POST", "/admin/payouts/nope/void", r#"{"reason":"x"}"#, 404, "no payout \"nope\""),
        ("POST", "/admin/payouts/nope/void", "{}", 400, "reason"),
        ("GET", "/admin/payouts/nope", "", 404, "no payout"),
        ("GET", "/admin/payouts/nope/statements/aff1", "", 404, "no payout"),
        ("GET", "/admin/payouts/nope/statements/aff1?format=xml", "", 400, "format"),
        ("GET", "/admin/balances?colour=red", "", 400, "unknown parameter"),
        ("DELETE", "/admin/payouts", "", 405, "not allowed"),
    ] {
        let (got, v) = admin(&server, method, path, body);
        assert_eq!(got, status, "{method} {path}: {v}");
        let text = v["error"].as_str().map_or_else(|| v.to_string(), str::to_owned);
        assert!(text.contains(needle), "{method} {path}: {v}");
    }
    let (status, v) = admin(&server, "GET", "/admin/payouts", "");
    assert_eq!((status, v["payouts"].as_array().map(Vec::len)), (200, Some(0)), "nothing was run: {v}");
}
