//! The affiliate API: tokens scoped to one affiliate read only that affiliate's links,
//! coupons, commissions and stats; another's data is never in an answer.

use serde_json::Value;

use crate::common::{events, ledger_with, Conn, Env, TestServer, TOKEN};

const ADMIN: &str = "test-admin-token-0123456789";

fn get(server: &TestServer, path: &str, token: Option<&str>) -> (u16, String) {
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let r = Conn::open(server.addr).send(&format!("GET {path} HTTP/1.1\r\nHost: t\r\n{auth}\r\n"));
    (r.status, r.text())
}

fn new_token(server: &TestServer, affiliate: &str) -> (String, String) {
    let r = server.admin("POST", &format!("/admin/affiliates/{affiliate}/tokens"), Some(ADMIN), r#"{"name":"portal"}"#);
    assert_eq!(r.status, 201, "{}", r.text());
    let v = r.json();
    (v["token"].as_str().unwrap().to_owned(), v["id"].as_str().unwrap().to_owned())
}

#[test]
fn an_affiliate_token_reads_its_own_data_and_never_anothers() {
    let env = Env::new("");
    env.append_config(&format!("[admin]\ntoken = \"{ADMIN}\"\n"));
    let server = env.serve();
    let (t1, t1_id) = new_token(&server, "aff1");
    let (t2, _) = new_token(&server, "aff2");
    assert!(t1.starts_with("tally_") && t1 != t2);
    // The admin API names tokens, never shows them or their hashes again.
    let r = server.admin("GET", "/admin/affiliates/aff1", Some(ADMIN), "");
    assert_eq!(r.json()["affiliate"]["tokens"], serde_json::json!([{ "id": t1_id, "name": "portal" }]));

    // A sale for each: aff1 through its link's click, aff2 through its coupon.
    let cid = server.get("/c/demo?sub1=portal").click_id();
    for q in [
        format!("cid={cid}&offer=shoes&goal=sale&txid=TXN-AFF1&amount=100.00"),
        "coupon=SPRING10&offer=shoes&goal=sale&txid=TXN-AFF2&amount=50.00".to_owned(),
    ] {
        assert_eq!(server.get(&format!("/postback?{q}&token={TOKEN}")).status, 200);
    }
    let ledger = ledger_with(&env.data(), "TXN-AFF2");
    ledger_with(&env.data(), "TXN-AFF1");
    let aff2_entry = ledger.iter().find(|e| e["txid"] == "TXN-AFF2").unwrap()["id"].as_str().unwrap().to_owned();

    let (status, me) = get(&server, "/v1/affiliate", Some(&t1));
    assert_eq!(status, 200, "{me}");
    assert_eq!(serde_json::from_str::<Value>(&me).unwrap()["affiliate"]["id"], "aff1");
    let (_, links) = get(&server, "/v1/affiliate/links", Some(&t1));
    let links: Value = serde_json::from_str(&links).unwrap();
    let codes: Vec<&str> = links["links"].as_array().unwrap().iter().map(|l| l["code"].as_str().unwrap()).collect();
    assert_eq!(codes, ["demo", "shop"], "aff1's links only");
    let (_, commissions) = get(&server, "/v1/affiliate/commissions", Some(&t1));
    let commissions: Value = serde_json::from_str(&commissions).unwrap();
    let entries = commissions["entries"].as_array().unwrap();
    assert!(!entries.is_empty() && entries.iter().all(|e| e["affiliate"] == "aff1"), "{commissions}");
    let (_, coupons) = get(&server, "/v1/affiliate/coupons", Some(&t2));
    assert!(coupons.contains("SPRING10"), "{coupons}");

    // A payout run that pays aff2 only (a bonus, approved at once).
    let bonus = r#"{"affiliate":"aff2","offer":"shoes","amount":"33.00","reason":"contest"}"#;
    assert_eq!(server.admin("POST", "/admin/bonuses", Some(ADMIN), bonus).status, 200);
    let run = r#"{"payout":"aff2-only","up_to":"2099-12-31","affiliates":["aff2"]}"#;
    let r = server.admin("POST", "/admin/payouts", Some(ADMIN), run);
    assert_eq!(r.status, 200, "{}", r.text());
    let (status, own) = get(&server, "/v1/affiliate/payouts/aff2-only?format=csv", Some(&t2));
    assert!(status == 200 && own.contains("33.00"), "{own}");

    // Every endpoint with aff1's token: no trace of aff2 (its ID, its link, its coupon, its
    // sale, its bonus, its payout).
    for path in [
        "/v1/affiliate/balances".to_owned(),
        "/v1/affiliate/payouts".to_owned(),
        "/v1/affiliate/payouts/aff2-only".to_owned(),
        "/v1/affiliate/payouts/aff2-only?format=csv".to_owned(),
        "/v1/affiliate/balances?affiliate=aff2".to_owned(),
        "/v1/affiliate".to_owned(),
        "/v1/affiliate/links".to_owned(),
        "/v1/affiliate/coupons".to_owned(),
        "/v1/affiliate/commissions".to_owned(),
        "/v1/affiliate/commissions?limit=1000&status=pending".to_owned(),
        format!("/v1/affiliate/commissions/{aff2_entry}"),
        "/v1/affiliate/stats".to_owned(),
        "/v1/affiliate/commissions?affiliate=aff2".to_owned(),
        "/v1/affiliate/stats?affiliate=aff2".to_owned(),
        "/v1/affiliate/links?affiliate=aff2".to_owned(),
    ] {
        let (status, body) = get(&server, &path, Some(&t1));
        // Quoted: a hex digest in an answer may hold the letters aff2.
        for other in ["\"aff2\"", "hotels-aff2", "SPRING10", "TXN-AFF2", "50.00", "33.00", "aff2,"] {
            assert!(!body.contains(other), "{path} answered {status} with {other}: {body}");
        }
        if path.contains("aff2") || path.ends_with(&aff2_entry) {
            assert!(matches!(status, 400 | 403 | 404), "{path}: {status} {body}");
        }
    }
    let (status, stats) = get(&server, "/v1/affiliate/stats", Some(&t1));
    assert_eq!(status, 200, "{stats}");
    let rows = serde_json::from_str::<Value>(&stats).unwrap()["rows"].as_array().unwrap().clone();
    assert!(rows.iter().all(|r| r["key"] == "aff1") && !rows.is_empty(), "{stats}");

    // No token, a wrong one, a revoked one: 401; a disabled affiliate: 403; writes: 405.
    assert_eq!(get(&server, "/v1/affiliate", None).0, 401);
    assert_eq!(get(&server, "/v1/affiliate", Some("tally_not-a-real-token")).0, 401);
    let r = server.admin("DELETE", &format!("/admin/affiliates/aff1/tokens/{t1_id}"), Some(ADMIN), "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get(&server, "/v1/affiliate", Some(&t1)).0, 401, "revoked at once");
    assert_eq!(server.admin("POST", "/admin/affiliates/aff2/disable", Some(ADMIN), "").status, 200);
    assert_eq!(get(&server, "/v1/affiliate/links", Some(&t2)).0, 403);
    let r = Conn::open(server.addr).send(&format!(
        "POST /v1/affiliate/links HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {t2}\r\nContent-Length: 0\r\n\r\n"
    ));
    assert_eq!(r.status, 405);

    // The log holds the tokens' hashes, never a token.
    for e in events(&env.data()) {
        assert!(!e.to_string().contains(&t1) && !e.to_string().contains(&t2), "a token in the log: {e}");
    }
}

#[test]
fn tokens_are_rate_limited_and_bad_token_requests_are_refused() {
    let env = Env::new("");
    env.append_config(&format!("[admin]\ntoken = \"{ADMIN}\"\n"));
    let server = env.serve();
    let (t, _) = new_token(&server, "aff1");
    let statuses: Vec<u16> = (0..60).map(|_| get(&server, "/v1/affiliate", Some(&t)).0).collect();
    assert!(statuses.iter().filter(|s| **s == 200).count() >= 20, "{statuses:?}");
    assert!(statuses.contains(&429), "a burst past the bucket is refused: {statuses:?}");
    for (path, body, status, needle) in [
        ("/admin/affiliates/ghost/tokens", r#"{}"#, 404, "no affiliate"),
        ("/admin/affiliates/aff1/tokens", r#"{"name":"x","scope":"all"}"#, 400, "unknown field"),
        ("/admin/affiliates/aff1/tokens", r#"{"name":7}"#, 400, "name"),
    ] {
        let r = server.admin("POST", path, Some(ADMIN), body);
        assert_eq!(r.status, status, "{path} {body}: {}", r.text());
        assert!(r.text().contains(needle), "{}", r.text());
    }
    let r = server.admin("DELETE", "/admin/affiliates/aff1/tokens/tnope", Some(ADMIN), "");
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(server.admin("GET", "/admin/affiliates/aff1/tokens", Some(ADMIN), "").status, 405);
}
