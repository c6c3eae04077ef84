//! Program management through the admin API: affiliates, groups, coupons and links one at a
//! time and in bulk, each change a `ProgramEdit` in the log that attribution and replay
//! apply in order. The server in-process on 127.0.0.1.

use std::fmt::Write as _;

use serde_json::Value;

use crate::common::{assert_replay_matches, events, ledger_with, of_type, Env, TestServer, TOKEN};

const ADMIN: &str = "test-admin-token-0123456789";

fn env() -> Env {
    let env = Env::new("");
    env.append_config(&format!("[admin]\ntoken = \"{ADMIN}\"\n"));
    env
}

fn call(server: &TestServer, method: &str, path: &str, body: &str) -> (u16, Value) {
    let r = server.admin(method, path, Some(ADMIN), body);
    let v = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    (r.status, v)
}

fn import(server: &TestServer, query: &str, content_type: &str, body: &str) -> (u16, Value) {
    let r = server.admin_with(
        "POST",
        &format!("/admin/import{query}"),
        Some(ADMIN),
        &[("Content-Type", content_type), ("X-Tally-Actor", "importer")],
        body,
    );
    (r.status, serde_json::from_slice(&r.body).unwrap_or(Value::Null))
}

fn edits(env: &Env) -> Vec<Value> {
    of_type(&events(&env.data()), "program_edit").into_iter().cloned().collect()
}

#[test]
fn entities_put_through_the_api_are_logged_credited_and_survive_a_restart() {
    let env = env();
    let mut server = env.serve();
    let group = r#"{"id":"gold","name":"Gold ambassadors","terms":[{"offer":"shoes","goal":"sale","payout":{"kind":"fixed","amount":"9.00"},"hold_days":0}]}"#;
    let (status, v) = call(&server, "POST", "/admin/groups", group);
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["group"]["terms"][0]["payout"]["amount"], "9.00");
    let r = server.admin_with(
        "POST",
        "/admin/affiliates",
        Some(ADMIN),
        &[("Content-Type", "application/json"), ("X-Tally-Actor", "alice@example.com")],
        r#"{"id":"amb1","group":"gold"}"#,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["affiliate"]["managed_by_api"], true);
    for (path, body) in [
        ("/admin/links", r#"{"code":"amb1-shoes","offer":"shoes","affiliate":"amb1"}"#),
        ("/admin/coupons", r#"{"code":"amb1","offer":"shoes","affiliate":"amb1"}"#),
    ] {
        let (status, v) = call(&server, "POST", path, body);
        assert_eq!(status, 201, "{path}: {v}");
    }
    let r = server.get("/c/amb1-shoes?sub1=x");
    assert_eq!(r.status, 302);
    assert!(r.header("location").unwrap().contains("aff=amb1"));

    // A partial change keeps the rest of the entity.
    let (status, v) = call(&server, "PATCH", "/admin/affiliates/amb1", r#"{"name":"Ann"}"#);
    assert_eq!(status, 200, "{v}");
    assert_eq!((v["affiliate"]["name"].as_str(), v["affiliate"]["group"].as_str()), (Some("Ann"), Some("gold")));
    let (status, v) = call(&server, "GET", "/admin/coupons/AMB1", "");
    assert_eq!((status, v["coupon"]["enabled"].as_bool()), (200, Some(true)), "coupons are found ignoring case: {v}");

    // A sale through the coupon pays the group's terms.
    let r = server.get(&format!("/postback?offer=shoes&goal=sale&coupon=AMB1&txid=T1&amount=100.00&token={TOKEN}"));
    assert_eq!(r.status, 200, "{}", r.text());
    let ledger = ledger_with(&env.data(), "T1");
    let e = ledger.iter().find(|e| e["txid"] == "T1").unwrap();
    assert_eq!(
        (e["affiliate"].as_str(), e["amount"].as_str(), e["status"].as_str()),
        (Some("amb1"), Some("9.00"), Some("approved")),
        "{e}"
    );
    assert!(e["rule"].as_str().unwrap().starts_with("group gold"), "{e}");

    // Disabled: its link stops redirecting and its sales are not paid.
    let (status, v) = call(&server, "POST", "/admin/affiliates/amb1/disable", "");
    assert_eq!((status, v["affiliate"]["active"].as_bool()), (200, Some(false)), "{v}");
    assert_eq!(server.get("/c/amb1-shoes").status, 404);
    let (_, v) = call(&server, "GET", "/admin/links/amb1-shoes", "");
    assert_eq!((v["link"]["active"].as_bool(), v["link"]["enabled"].as_bool()), (Some(true), Some(false)), "{v}");
    server.get(&format!("/postback?offer=shoes&goal=sale&coupon=amb1&txid=T2&amount=100.00&token={TOKEN}"));
    let ledger = ledger_with(&env.data(), "T2");
    let e = ledger.iter().find(|e| e["txid"] == "T2").unwrap();
    assert_eq!(
        (e["status"].as_str(), e["reason"].as_str(), e["amount"].as_str()),
        (Some("rejected"), Some("affiliate_disabled"), Some("0.00")),
        "{e}"
    );

    // Each change is one program edit naming its actor and what it put, nothing more.
    let logged = edits(&env);
    assert_eq!(logged.len(), 6, "group, affiliate, link, coupon, patch, disable");
    assert_eq!(logged[1]["actor"], "alice@example.com");
    assert_eq!(logged[0]["actor"], "admin");
    let put: Value = serde_json::from_str(logged[4]["edit"].as_str().unwrap()).unwrap();
    assert_eq!(put, serde_json::json!({"affiliates":[{"id":"amb1","name":"Ann","group":"gold"}]}));
    assert_eq!(of_type(&events(&env.data()), "program_change").len(), 1, "edits log no whole program");

    // A restart rebuilds the entities from the log; a reload keeps them.
    assert!(server.stop());
    let server = env.serve();
    assert_eq!(server.get("/c/amb1-shoes").status, 404);
    assert_eq!(server.reload(), Ok(false));
    let (status, _) = call(&server, "POST", "/admin/affiliates/amb1/enable", "");
    assert_eq!(status, 200);
    assert_eq!(server.get("/c/amb1-shoes").status, 302);
    let (_, v) = call(&server, "GET", "/admin/program", "");
    assert_eq!((v["managed"]["affiliates"].as_u64(), v["groups"].as_u64()), (Some(1), Some(1)), "{v}");
    server.get(&format!("/postback?offer=shoes&goal=sale&coupon=amb1&txid=T3&amount=100.00&token={TOKEN}"));
    // The restarted worker read the group's terms back from its state.
    let ledger = ledger_with(&env.data(), "T3");
    let e = ledger.iter().find(|e| e["txid"] == "T3").unwrap();
    assert_eq!((e["amount"].as_str(), e["status"].as_str()), (Some("9.00"), Some("approved")), "{e}");
    assert!(assert_replay_matches(&env.data()) >= 3);
}

/// `n` ambassadors `amb0001..` in groups g1..g3, each with a link and a coupon.
fn ambassadors(n: usize) -> String {
    let mut csv = String::from("id,name,group,offer,link,coupon\n");
    for i in 1..=n {
        let _ = writeln!(csv, "amb{i:04},Ambassador {i},g{},shoes,l-amb{i:04},AMB{i:04}", 1 + i % 3);
    }
    csv
}

#[test]
fn a_bulk_import_is_all_or_nothing_and_names_every_bad_row() {
    let env = env();
    let server = env.serve();
    let before = events(&env.data()).len();
    let groups = "{\"type\":\"group\",\"id\":\"g1\",\"terms\":[{\"offer\":\"shoes\",\"payout\":{\"kind\":\"revshare\",\"bps\":1000}}]}\n\
                  {\"type\":\"group\",\"id\":\"g2\"}\n{\"type\":\"group\",\"id\":\"g3\",\"terms\":[{\"offer\":\"shoes\",\"hold_days\":0}]}\n";

    // Bad rows: all named, nothing imported.
    let bad = "id,name,group,offer,link,coupon\n\
               ok1,Fine,,shoes,l-ok1,\n\
               x1,Unknown group,platinum,,,\n\
               ok1,Twice,,,,\n\
               bad id,Spaces,,,,\n\
               x2,Link to nowhere,,nope,l-x2,\n\
               x3,Taken link,,shoes,demo,\n";
    let (status, v) = import(&server, "?type=affiliates", "text/csv", bad);
    assert_eq!(status, 400, "{v}");
    let rows: Vec<u64> = v["problems"].as_array().unwrap().iter().filter_map(|p| p["row"].as_u64()).collect();
    for row in [3, 4, 5, 6, 7] {
        assert!(rows.contains(&row), "row {row} named in {v}");
    }
    assert!(v["error"].as_str().unwrap().contains("nothing was imported"));
    let text = v.to_string();
    for needle in ["unknown group", "also on row 2", "unknown offer", "belongs to affiliate \\\"aff1\\\""] {
        assert!(text.contains(needle), "{needle} in {text}");
    }
    assert_eq!(events(&env.data()).len(), before, "nothing was logged");
    assert_eq!(server.get("/c/l-ok1").status, 404, "not even the good rows");

    // A dry run checks without changing anything.
    let (status, v) = import(&server, "?dry_run=true", "application/x-ndjson", groups);
    assert_eq!((status, v["valid"].as_bool()), (200, Some(true)), "{v}");
    assert_eq!(events(&env.data()).len(), before);

    let (status, v) = import(&server, "", "application/x-ndjson", groups);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["put"]["groups"], 3);
    let (status, v) = import(&server, "?type=affiliates", "text/csv", &ambassadors(4000));
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (v["put"]["affiliates"].as_u64(), v["put"]["links"].as_u64(), v["put"]["coupons"].as_u64()),
        (Some(4000), Some(4000), Some(4000))
    );
    let logged = edits(&env);
    assert_eq!(logged.len(), 2, "one edit per import");
    assert_eq!(logged[1]["actor"], "importer");

    let r = server.get("/c/l-amb0042");
    assert_eq!(r.status, 302);
    assert!(r.header("location").unwrap().contains("aff=amb0042"));
    // Pages in key order, filtered by group.
    let (status, page) = call(&server, "GET", "/admin/affiliates?group=g2&limit=500", "");
    assert_eq!(status, 200);
    assert_eq!(page["total"], 1334, "{}", page["total"]);
    assert_eq!(page["affiliates"].as_array().unwrap().len(), 500);
    let next = page["next"].as_str().unwrap().to_owned();
    let (_, page2) = call(&server, "GET", &format!("/admin/affiliates?group=g2&limit=500&after={next}"), "");
    let first2 = page2["affiliates"][0]["id"].as_str().unwrap();
    assert!(first2 > next.as_str(), "{first2} after {next}");

    // Re-importing the same rows replaces them: still valid, one more edit.
    let (status, _) = import(&server, "?type=affiliates", "text/csv", &ambassadors(10));
    assert_eq!(status, 200);
}

#[test]
fn bad_management_requests_get_a_reason_and_change_nothing() {
    let env = env();
    let server = env.serve();
    let before = events(&env.data()).len();
    for (method, path, body, status, needle) in [
        ("POST", "/admin/affiliates", r#"{"id":"aff1"}"#, 409, "exists"),
        ("POST", "/admin/affiliates", r#"{"id":"new","group":"nope"}"#, 400, "unknown group"),
        ("POST", "/admin/affiliates", r#"{"id":"new","colour":"red"}"#, 400, "colour"),
        ("POST", "/admin/affiliates", r#"[1]"#, 400, "expected an object"),
        ("PUT", "/admin/affiliates/a1", r#"{"id":"a2"}"#, 400, "not the affiliate in the path"),
        ("PATCH", "/admin/affiliates/ghost", r#"{"name":"x"}"#, 404, "no affiliate"),
        ("PATCH", "/admin/affiliates/aff1", r#"{"active":"yes"}"#, 400, "invalid type"),
        ("POST", "/admin/groups/g/disable", "", 405, "not allowed"),
        (
            "POST",
            "/admin/groups",
            r#"{"id":"g","terms":[{"offer":"shoes","goal":"nope","hold_days":1}]}"#,
            400,
            "no goal",
        ),
        ("POST", "/admin/groups", r#"{"id":"g","terms":[{"offer":"shoes"}]}"#, 400, "sets nothing"),
        ("GET", "/admin/affiliates?limit=0", "", 400, "limit"),
        ("GET", "/admin/links?group=x", "", 400, "unknown parameter"),
        ("GET", "/admin/coupons/NOPE", "", 404, "no coupon"),
        ("DELETE", "/admin/affiliates/aff1", "", 405, "not allowed"),
        ("GET", "/admin/import", "", 405, "not allowed"),
    ] {
        let (got, v) = call(&server, method, path, body);
        assert_eq!(got, status, "{method} {path} {body}: {v}");
        assert!(v.to_string().contains(needle), "{method} {path}: {v} lacks {needle}");
    }
    for (query, content_type, body, status, needle) in [
        ("", "text/csv", "id\nx\n", 400, "?type=affiliates"),
        ("?type=people", "text/csv", "id\nx\n", 400, "type"),
        ("", "text/plain", "x", 415, "Content-Type"),
        ("?type=links", "text/csv", "code,offer\n", 400, "no rows"),
        ("", "application/json", r#"{"affiliates":[{"id":"a"}],"offers":[]}"#, 400, "offers"),
        ("?dry_run=maybe", "text/csv", "id\nx\n", 400, "dry_run"),
    ] {
        let (got, v) = import(&server, query, content_type, body);
        assert_eq!(got, status, "{query} {content_type}: {v}");
        assert!(v.to_string().contains(needle), "{query}: {v} lacks {needle}");
    }
    let r = server.admin_with("POST", "/admin/affiliates", Some(ADMIN), &[("X-Tally-Actor", "")], r#"{"id":"z"}"#);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("X-Tally-Actor"));
    assert_eq!(events(&env.data()).len(), before, "nothing was logged");
}

#[test]
fn links_a_build_before_program_edits_kept_in_links_toml_are_still_served() {
    let env = env();
    let mut overlay = tally_edge::Overlay::default();
    let link =
        tally_edge::OverlayLink { code: "old".into(), offer: "shoes".into(), affiliate: "aff2".into(), active: true };
    overlay.links.insert("old".into(), link);
    overlay.save(&tally_edge::Overlay::path(&env.data())).unwrap();
    let server = env.serve();
    assert_eq!(server.get("/c/old").status, 302);
    let (_, v) = call(&server, "GET", "/admin/links/old", "");
    assert_eq!(v["link"]["managed_by_api"], true, "{v}");
    // The API now changes it with a program edit; the old file is left as it was.
    let before = std::fs::read(tally_edge::Overlay::path(&env.data())).unwrap();
    assert_eq!(call(&server, "POST", "/admin/links/old/disable", "").0, 200);
    assert_eq!(server.get("/c/old").status, 404);
    assert_eq!(std::fs::read(tally_edge::Overlay::path(&env.data())).unwrap(), before);
}
