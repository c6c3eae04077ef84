//! Operators' decisions through the admin API: each an event in the log naming who decided,
//! applied by attribution in order, answered with what it did, and reproduced by replay.

use serde_json::Value;

use crate::common::{assert_replay_matches, events, explain, ledger_with, of_type, Env, TestServer, TOKEN};

const ADMIN: &str = "test-admin-token-0123456789";

fn env() -> Env {
    let env = Env::new("");
    env.append_config(&format!("[admin]\ntoken = \"{ADMIN}\"\n"));
    env
}

fn decide(server: &TestServer, path: &str, body: &str) -> (u16, Value) {
    let r = server.admin_with(
        "POST",
        path,
        Some(ADMIN),
        &[("Content-Type", "application/json"), ("X-Tally-Actor", "alice")],
        body,
    );
    (r.status, serde_json::from_slice(&r.body).unwrap_or(Value::Null))
}

/// A pending 8% commission on a 100.00 shoes sale through aff2's coupon; its entry ID.
fn sale(server: &TestServer, env: &Env, txid: &str) -> String {
    let r =
        server.get(&format!("/postback?offer=shoes&goal=sale&coupon=SPRING10&txid={txid}&amount=100.00&token={TOKEN}"));
    assert_eq!(r.status, 200, "{}", r.text());
    let ledger = ledger_with(&env.data(), txid);
    let e = ledger.iter().find(|e| e["txid"] == txid).unwrap();
    assert_eq!((e["status"].as_str(), e["amount"].as_str()), (Some("pending"), Some("8.00")), "{e}");
    e["id"].as_str().unwrap().to_owned()
}

#[test]
fn operators_approve_reject_adjust_and_pay_bonuses_and_replay_reproduces_them() {
    let env = env();
    let server = env.serve();
    let t1 = sale(&server, &env, "T1");
    let t2 = sale(&server, &env, "T2");

    let (status, v) = decide(&server, &format!("/admin/commissions/{t1}/approve"), "");
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (v["entry"]["status"].as_str(), v["decision"]["kind"].as_str()),
        (Some("approved"), Some("decision")),
        "{v}"
    );
    assert_eq!(v["decision"]["rule"], format!("commission {t1} approved early by alice"));
    assert_eq!(v["decision"]["source"], "operator");

    let (status, v) =
        decide(&server, &format!("/admin/commissions/{t2}/adjust"), r#"{"amount":"5.00","reason":"partial refund"}"#);
    assert_eq!((status, v["entry"]["amount"].as_str()), (200, Some("5.00")), "{v}");
    let (status, v) = decide(&server, &format!("/admin/commissions/{t2}/reject"), r#"{"reason":"self-referral"}"#);
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (v["entry"]["status"].as_str(), v["entry"]["reason"].as_str()),
        (Some("rejected"), Some("operator_rejected"))
    );
    // The approved one is taken back by a clawback.
    let (status, v) = decide(&server, &format!("/admin/commissions/{t1}/reject"), r#"{"reason":"fraud"}"#);
    assert_eq!(
        (status, v["decision"]["kind"].as_str(), v["decision"]["amount"].as_str()),
        (200, Some("clawback"), Some("-8.00")),
        "{v}"
    );
    // What can no longer apply is refused, though logged: the ledger says why.
    let (status, v) = decide(&server, &format!("/admin/commissions/{t2}/approve"), "");
    assert_eq!(status, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("not pending"), "{v}");

    let (status, v) = decide(
        &server,
        "/admin/bonuses",
        r#"{"affiliate":"aff1","offer":"hotels","amount":"25.00","reason":"Q4 contest"}"#,
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (v["decision"]["kind"].as_str(), v["decision"]["amount"].as_str(), v["decision"]["currency"].as_str()),
        (Some("bonus"), Some("25.00"), Some("EUR"))
    );

    // The entry with what refers to it; the ledger listed by affiliate and kind.
    let r = server.admin("GET", &format!("/admin/commissions/{t2}"), Some(ADMIN), "");
    assert_eq!(r.status, 200);
    let kinds: Vec<String> =
        r.json()["related"].as_array().unwrap().iter().map(|e| e["rule"].as_str().unwrap().to_owned()).collect();
    assert_eq!(kinds.len(), 3, "adjust, reject, refused approve: {kinds:?}");
    let r = server.admin("GET", "/admin/commissions?kind=decision&limit=2", Some(ADMIN), "");
    let page = r.json();
    assert_eq!(page["entries"].as_array().unwrap().len(), 2);
    let next = page["next"].as_str().unwrap();
    let r = server.admin("GET", &format!("/admin/commissions?kind=decision&after={next}"), Some(ADMIN), "");
    assert_eq!(r.json()["entries"].as_array().unwrap().len(), 2, "four decisions made decision entries");

    let decisions = of_type(&events(&env.data()), "decision").into_iter().cloned().collect::<Vec<_>>();
    assert_eq!(decisions.len(), 6);
    assert!(decisions.iter().all(|d| d["actor"] == "alice"));
    assert!(assert_replay_matches(&env.data()) >= 8);
    // --explain tells the story, decisions and who made them included.
    let story = explain(&env.data(), &t2).join("\n");
    for needle in [
        "amount 8.00 -> 5.00 by an operator's decision",
        "adjusted from 8.00 to 5.00 by alice: partial refund",
        "pending -> rejected (operator_rejected)",
        "rejected by alice: self-referral",
        "approve by alice not applied",
    ] {
        assert!(story.contains(needle), "{needle} in\n{story}");
    }
}

#[test]
fn bad_decisions_get_a_reason_and_are_not_logged() {
    let env = env();
    let server = env.serve();
    let t1 = sale(&server, &env, "T1");
    let before = events(&env.data()).len();
    for (path, body, status, needle) in [
        (format!("/admin/commissions/{t1}/reject"), "".to_owned(), 400, "reason"),
        (format!("/admin/commissions/{t1}/reject"), r#"{"reason":"  "}"#.to_owned(), 400, "say why"),
        (format!("/admin/commissions/{t1}/adjust"), r#"{"amount":"1.234","reason":"x"}"#.to_owned(), 400, "amount"),
        (format!("/admin/commissions/{t1}/adjust"), r#"{"amount":"-1","reason":"x"}"#.to_owned(), 400, "amount"),
        (format!("/admin/commissions/{t1}/approve"), r#"{"note":"x","extra":1}"#.to_owned(), 400, "unknown field"),
        ("/admin/commissions/999999/approve".to_owned(), "".to_owned(), 404, "no ledger entry"),
        ("/admin/commissions/nope/approve".to_owned(), "".to_owned(), 400, "not a ledger entry ID"),
        (
            "/admin/bonuses".to_owned(),
            r#"{"affiliate":"ghost","offer":"shoes","amount":"1","reason":"x"}"#.to_owned(),
            400,
            "no affiliate",
        ),
        (
            "/admin/bonuses".to_owned(),
            r#"{"affiliate":"aff1","offer":"nope","amount":"1","reason":"x"}"#.to_owned(),
            400,
            "no offer",
        ),
        (
            "/admin/bonuses".to_owned(),
            r#"{"affiliate":"aff1","offer":"shoes","amount":"1.5.0","reason":"x"}"#.to_owned(),
            400,
            "amount",
        ),
    ] {
        let (got, v) = decide(&server, &path, &body);
        assert_eq!(got, status, "{path} {body}: {v}");
        assert!(v.to_string().contains(needle), "{path}: {v} lacks {needle}");
    }
    for (method, path, status) in [
        ("GET", "/admin/commissions?limit=0", 400),
        ("GET", "/admin/commissions?status=paid-ish", 400),
        ("GET", "/admin/commissions?colour=red", 400),
        ("GET", "/admin/commissions/424242", 404),
        ("DELETE", "/admin/commissions", 405),
        ("GET", "/admin/bonuses", 405),
    ] {
        assert_eq!(server.admin(method, path, Some(ADMIN), "").status, status, "{method} {path}");
    }
    assert_eq!(events(&env.data()).len(), before, "nothing was logged");
}
