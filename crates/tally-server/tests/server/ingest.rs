//! Acceptance tests of the ingest path against the real server (in-process) and a real RocksDB.

use std::collections::{BTreeSet, HashMap};

use crate::common::*;

#[test]
fn a_click_redirects_with_a_fresh_click_id_and_is_exported_with_its_sub_ids() {
    let env = Env::new("");
    let server = env.serve();
    let r = server.get("/c/demo?sub1=spring&sub2=a%20b&sub5=last&src=newsletter");
    assert_eq!(r.status, 302, "{}", r.text());
    let loc = r.header("location").unwrap();
    assert!(loc.starts_with("https://shop.example/landing?cid="), "{loc}");
    assert!(loc.ends_with("&aff=aff1&s1=spring"), "{loc}");
    let cid = r.click_id();
    assert_eq!(cid.len(), 26);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let cookie = r.header("set-cookie").unwrap();
    assert!(cookie.starts_with(&format!("tally_cid={cid};")), "{cookie}");
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax") && cookie.contains("Max-Age=2592000"));

    let second = server.get("/c/demo").click_id();
    assert_ne!(second, cid);

    // Exported while the server is still running (secondary instance).
    let events = events(&env.data());
    let clicks = of_type(&events, "click");
    assert_eq!(clicks.len(), 2);
    let c = clicks.iter().find(|c| c["click_id"] == cid.as_str()).unwrap();
    assert_eq!(c["sub1"], "spring");
    assert_eq!(c["sub2"], "a b");
    assert_eq!(c["sub5"], "last");
    assert_eq!(c["source"], "newsletter");
    assert_eq!(c["link"], "demo");
    assert_eq!(c["offer"], "shoes");
    assert_eq!(c["affiliate"], "aff1");
    assert_eq!(c["ip"], "127.0.0.0");
    assert_eq!(c["flags"], 0);
    // The program in force is the first event of the log.
    assert_eq!(events[0]["type"], "program_change");
}

/// A deep link reaches the merchant with the click ID, as the destination template would
/// have carried it, merged into the link's own query.
#[test]
fn a_followed_deep_link_carries_the_click_id() {
    let env = Env::new("");
    let server = env.serve();
    let r =
        server.get("/c/demo?sub1=spring&url=https%3A%2F%2Fshop.example%2Fp%2F42%3Fcolor%3Dred%26cid%3DSTALE%23reviews");
    assert_eq!(r.status, 302, "{}", r.text());
    let cid = r.click_id();
    assert_eq!(
        r.header("location"),
        Some(format!("https://shop.example/p/42?color=red&cid={cid}&aff=aff1&s1=spring#reviews").as_str())
    );
    let events = events(&env.data());
    let click = of_type(&events, "click").into_iter().find(|c| c["click_id"] == cid.as_str()).unwrap();
    // The click records the link as the affiliate gave it; the flag says it was followed.
    assert_eq!(click["deep_link"], "https://shop.example/p/42?color=red&cid=STALE#reviews");
    assert_eq!(click["flags"], 16);
}

#[test]
fn a_click_records_the_click_id_the_browser_already_carried() {
    let env = Env::new("");
    let server = env.serve();
    let first = server.get("/c/demo").click_id();
    let click = |cookie: &str| {
        let r = server.send(&format!("GET /c/demo HTTP/1.1\r\nHost: t\r\nCookie: {cookie}\r\n\r\n"));
        assert_eq!(r.status, 302, "{}", r.text());
        r.click_id()
    };
    let second = click(&format!("theme=dark; tally_cid={first}"));
    // Lowercase still parses (click IDs ignore case); junk is no prior click, not an error.
    let third = click(&format!("tally_cid={}", first.to_ascii_lowercase()));
    let junk = click("tally_cid=not-a-click-id");
    let empty = click("tally_cid=");

    let events = events(&env.data());
    let clicks = of_type(&events, "click");
    let prior = |cid: &str| clicks.iter().find(|c| c["click_id"] == cid).unwrap()["prior_click"].clone();
    assert_eq!(prior(&first), "");
    assert_eq!(prior(&second), first.as_str());
    assert_eq!(prior(&third), first.as_str());
    assert_eq!(prior(&junk), "");
    assert_eq!(prior(&empty), "");
}

#[test]
fn a_pixel_records_a_conversion_from_the_cid_or_the_cookie() {
    let env = Env::new("");
    let server = env.serve();
    let cid = server.get("/c/demo").click_id();
    let r = server.get(&format!("/px.gif?offer=shoes&goal=sale&txid=ORD-1&amount=49.90&currency=USD&cid={cid}"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("image/gif"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.body.len(), 43);

    let r = server.send(&format!(
        "GET /px.gif?offer=shoes&txid=ORD-2&amount=10 HTTP/1.1\r\nHost: t\r\nCookie: theme=dark; tally_cid={cid}\r\n\r\n"
    ));
    assert_eq!(r.status, 200, "{}", r.text());

    let events = events(&env.data());
    let convs = of_type(&events, "conversion");
    assert_eq!(convs.len(), 2);
    assert_eq!(convs[0]["click_id"], cid.as_str());
    assert_eq!(convs[0]["amount"], "49.90");
    assert_eq!(convs[0]["currency"], "USD");
    assert_eq!(convs[0]["conversion_source"], "pixel");
    assert_eq!(convs[0]["status"], "approved");
    assert_eq!(convs[1]["click_id"], cid.as_str());
    assert_eq!(convs[1]["goal"], "sale", "the offer's first goal is the default");
    assert_eq!(convs[1]["amount"], "10.00");
}

#[test]
fn postbacks_in_every_dialect_answer_their_sequence_after_commit() {
    let env = Env::new("");
    let server = env.serve();
    let cid = server.get("/c/demo").click_id();

    let r =
        server.get(&format!("/postback?cid={cid}&offer=shoes&goal=sale&txid=T1&amount=100.00&token={TOKEN}&sub2=adv"));
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["status"], "accepted");
    let seq = j["seq"].as_u64().unwrap();

    // TUNE / Everflow dialect: the click ID arrives as transaction_id.
    let r = server.get(&format!(
        "/postback?transaction_id={cid}&offer_id=shoes&adv_sub=T2&sale_amount=5.5&aff_sub3=x&token={TOKEN}"
    ));
    assert_eq!(r.status, 200, "{}", r.text());

    // POST form body with a bearer token.
    let body = format!("click_id={cid}&offer=shoes&goal=signup&order_id=T3&status=refunded");
    let r = server.send(&format!(
        "POST /postback HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    assert_eq!(r.status, 200, "{}", r.text());

    // POST JSON, HMAC-signed over the raw body.
    let body = format!(r#"{{"cid":"{cid}","offer":"shoes","txid":"T4","revenue":12.34,"status":"chargeback"}}"#);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let sig = tally_protocol::auth::sign(HMAC_SECRET, t, body.as_bytes());
    let r = server.send(&format!(
        "POST /postback HTTP/1.1\r\nHost: t\r\nX-Tally-Signature: {sig}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    assert_eq!(r.status, 200, "{}", r.text());

    // A decimal comma, as Everflow's advertisers may send it.
    let r = server.get(&format!("/postback?cid={cid}&offer=shoes&txid=T6&amount=7,25&token={TOKEN}"));
    assert_eq!(r.status, 200, "{}", r.text());

    // Coupon-only conversions carry no click.
    let r = server.get(&format!("/postback?coupon=SPRING10&offer=shoes&txid=T5&amount=1&token={TOKEN}"));
    assert_eq!(r.status, 200, "{}", r.text());

    let events = events(&env.data());
    let at_seq = events.iter().find(|e| e["seq"] == seq).unwrap();
    assert_eq!(at_seq["type"], "conversion");
    assert_eq!(at_seq["txid"], "T1");
    assert_eq!(at_seq["amount"], "100.00");
    assert_eq!(at_seq["sub2"], "adv");
    assert_eq!(at_seq["conversion_source"], "postback");
    let convs = of_type(&events, "conversion");
    let by_tx = |t: &str| *convs.iter().find(|c| c["txid"] == t).unwrap();
    assert_eq!(by_tx("T2")["click_id"], cid.as_str());
    assert_eq!(by_tx("T2")["amount"], "5.50");
    assert_eq!(by_tx("T2")["sub3"], "x");
    assert_eq!(by_tx("T3")["status"], "refunded");
    assert_eq!(by_tx("T3")["goal"], "signup");
    assert_eq!(by_tx("T4")["status"], "chargeback");
    assert_eq!(by_tx("T4")["amount"], "12.34");
    assert_eq!(by_tx("T5")["click_id"], "");
    assert_eq!(by_tx("T5")["coupon"], "SPRING10");
    assert_eq!(by_tx("T6")["amount"], "7.25");
}

#[test]
fn every_bad_input_gets_its_status_and_stores_nothing() {
    let env = Env::new("");
    let server = env.serve();
    let cid = server.get("/c/demo").click_id();
    let before = events(&env.data()).len();
    let old_sig = tally_protocol::auth::sign(HMAC_SECRET, 1_000_000, b"cid=x&offer=shoes");
    let q = |rest: &str| format!("GET /postback?cid={cid}&offer=shoes&{rest} HTTP/1.1\r\nHost: t\r\n\r\n");
    let cases: Vec<(String, u16, &str)> = vec![
        (q(""), 401, "missing credentials"),
        (q("token=wrong-token-0123456789"), 403, "bad credentials"),
        (q(&format!("token={}", "demo-globex-token-change-me")), 403, "bad credentials"),
        (
            format!("GET /postback?cid=x&offer=shoes HTTP/1.1\r\nHost: t\r\nX-Tally-Signature: {old_sig}\r\n\r\n"),
            401,
            "stale signature",
        ),
        (
            format!("GET /postback?cid={cid}&offer=shoes HTTP/1.1\r\nHost: t\r\nX-Tally-Signature: nonsense\r\n\r\n"),
            401,
            "malformed",
        ),
        (format!("GET /postback?txid=T9&token={TOKEN} HTTP/1.1\r\nHost: t\r\n\r\n"), 400, "missing field: offer"),
        (format!("GET /postback?coupon=NOPE&txid=T9&token={TOKEN} HTTP/1.1\r\nHost: t\r\n\r\n"), 400, "unknown coupon"),
        (format!("GET /postback?cid={cid}&amount=1&token=wrong-token-0123456789 HTTP/1.1\r\nHost: t\r\n\r\n"), 403, "bad credentials"),
        (format!("GET /postback?cid={cid}&amount=1 HTTP/1.1\r\nHost: t\r\n\r\n"), 401, "missing credentials"),
        // globex's credential, acme's coupon: the coupon's offer is not globex's.
        (format!("GET /postback?coupon=SPRING10&txid=T9&token={GLOBEX_TOKEN} HTTP/1.1\r\nHost: t\r\n\r\n"), 400, "is not advertiser globex's"),
        (format!("GET /postback?cid={cid}&offer=nope&token={TOKEN} HTTP/1.1\r\nHost: t\r\n\r\n"), 400, "unknown offer"),
        (format!("GET /postback?offer=shoes&token={TOKEN} HTTP/1.1\r\nHost: t\r\n\r\n"), 400, "missing field: cid"),
        (format!("GET /postback?cid=NOTACLICKID&offer=shoes&token={TOKEN} HTTP/1.1\r\nHost: t\r\n\r\n"), 400, "invalid field: cid"),
        (q(&format!("token={TOKEN}&amount=1.234")), 400, "invalid field: amount"),
        (q(&format!("token={TOKEN}&amount=1,234")), 400, "is ambiguous"),
        (q(&format!("token={TOKEN}&amount=1.234,56")), 400, "is ambiguous"),
        (q(&format!("token={TOKEN}&amount=-5")), 400, "invalid field: amount"),
        (q(&format!("token={TOKEN}&amount=1e5")), 400, "invalid field: amount"),
        (q(&format!("token={TOKEN}&amount=99999999999999999999")), 400, "invalid field: amount"),
        (q(&format!("token={TOKEN}&currency=XYZ")), 400, "invalid field: currency"),
        (q(&format!("token={TOKEN}&currency=EUR")), 400, "invalid field: currency"),
        (q(&format!("token={TOKEN}&status=maybe")), 400, "invalid field: status"),
        (q(&format!("token={TOKEN}&status=pending")), 400, "missing field: txid"),
        (q(&format!("token={TOKEN}&status=declined")), 400, "missing field: txid"),
        (q(&format!("token={TOKEN}&goal=nope")), 400, "invalid field: goal"),
        (q(&format!("token={TOKEN}&txid={}", "x".repeat(200))), 400, "invalid field: txid"),
        (
            format!("DELETE /postback?cid={cid}&offer=shoes&token={TOKEN} HTTP/1.1\r\nHost: t\r\n\r\n"),
            405,
            "method not allowed",
        ),
        (
            format!("POST /postback?token={TOKEN} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\n[1,2]"),
            400,
            "bad request body",
        ),
        (
            format!(
                "POST /postback?token={TOKEN} HTTP/1.1\r\nHost: t\r\nContent-Length: 70000\r\n\r\n{}",
                "a".repeat(70_000)
            ),
            413,
            "too large",
        ),
        ("GET /px.gif?offer=shoes HTTP/1.1\r\nHost: t\r\n\r\n".into(), 400, "missing field: cid"),
        (format!("GET /px.gif?offer=nope&cid={cid} HTTP/1.1\r\nHost: t\r\n\r\n"), 400, "unknown offer"),
        ("GET /px.gif?txid=T9 HTTP/1.1\r\nHost: t\r\n\r\n".into(), 400, "missing field: offer"),
        // A browser's report naming no offer: the program's offers are paid in USD and EUR.
        (format!("GET /px.gif?cid={cid}&amount=5 HTTP/1.1\r\nHost: t\r\n\r\n"), 400, "missing field: currency"),
        (format!("GET /px.gif?offer=shoes&cid={cid}&amount=abc HTTP/1.1\r\nHost: t\r\n\r\n"), 400, "invalid field: amount"),
        (format!("POST /px.gif?offer=shoes&cid={cid} HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n"), 405, "method"),
        (format!("HEAD /px.gif?offer=shoes&cid={cid} HTTP/1.1\r\nHost: t\r\n\r\n"), 405, ""),
        ("GET /c/no-such-link HTTP/1.1\r\nHost: t\r\n\r\n".into(), 404, "unknown link"),
        ("POST /c/demo HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n".into(), 405, "method"),
        ("GET /nowhere HTTP/1.1\r\nHost: t\r\n\r\n".into(), 404, "not found"),
    ];
    for (raw, status, reason) in &cases {
        let r = server.send(raw);
        let first_line = raw.lines().next().unwrap_or("");
        let shown: String = first_line.chars().take(120).collect();
        assert_eq!(r.status, *status, "{shown}: {}", r.text());
        assert!(r.text().contains(reason), "{shown}: expected {reason:?} in {}", r.text());
        if first_line.contains("/postback") {
            assert_eq!(r.header("content-type"), Some("application/json"), "{shown}");
        }
    }
    // Postback errors name the field in JSON.
    let r = server.send(&q(&format!("token={TOKEN}&amount=1.234")));
    assert_eq!(r.json()["field"], "amount");

    // Oversized and over-many headers are refused by the HTTP layer.
    let big = format!("GET /c/demo HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n", "a".repeat(40_000));
    let r = Conn::open(server.addr).try_send(big.as_bytes());
    assert!(r.map(|r| r.status == 431).unwrap_or(true), "oversized headers were accepted");
    let many: String = (0..100).map(|i| format!("X-H{i}: v\r\n")).collect();
    let r = Conn::open(server.addr).try_send(format!("GET /c/demo HTTP/1.1\r\nHost: t\r\n{many}\r\n").as_bytes());
    assert!(r.map(|r| r.status == 431).unwrap_or(true), "too many headers were accepted");

    assert_eq!(events(&env.data()).len(), before, "a rejected request stored something");
}

#[test]
fn previews_and_prefetches_redirect_but_are_flagged_non_human() {
    let env = Env::new("");
    let server = env.serve();
    let r = server.send("HEAD /c/demo HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(r.status, 302);
    let r = server.send("GET /c/demo HTTP/1.1\r\nHost: t\r\nSec-Purpose: prefetch\r\n\r\n");
    assert_eq!(r.status, 302);
    let r = server.send("GET /c/demo HTTP/1.1\r\nHost: t\r\nUser-Agent: Slackbot-LinkExpanding 1.0\r\n\r\n");
    assert_eq!(r.status, 302);
    let r = server
        .send("GET /c/demo HTTP/1.1\r\nHost: t\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) Firefox/130.0\r\n\r\n");
    assert_eq!(r.status, 302);
    let flags: Vec<u64> = of_type(&events(&env.data()), "click").iter().map(|c| c["flags"].as_u64().unwrap()).collect();
    assert_eq!(flags, vec![1, 2, 4, 0]);
    let metrics = server.metrics();
    assert!(metrics.contains("tally_clicks_recorded_total{kind=\"non_human\"} 3"), "{metrics}");
    assert!(metrics.contains("tally_clicks_recorded_total{kind=\"human\"} 1"), "{metrics}");
}

#[test]
fn health_readiness_and_metrics() {
    let env = Env::new("");
    let server = env.serve();
    assert_eq!(server.get("/healthz").status, 200);
    assert_eq!(server.get("/readyz").status, 200);
    server.get("/c/demo?sub1=secret-sub&url=https%3A%2F%2Fevil.example");
    server.get("/c/nope");
    // /metrics is served on the admin listener only (ARCHITECTURE.md, "Operations").
    assert_eq!(server.get("/metrics").status, 404);
    let text = server.metrics();
    for needle in [
        "tally_http_requests_total{route=\"click\",status_class=\"3xx\"} 1",
        "tally_http_requests_total{route=\"click\",status_class=\"4xx\"} 1",
        "tally_clicks_recorded_total{kind=\"human\"} 1",
        "tally_clicks_unrecorded_total{cause=\"queue_full\"} 0",
        "tally_clicks_deep_link_rejected_total 1",
        "tally_log_events_appended_total",
        "tally_log_batch_size_bucket",
        "tally_log_commit_duration_seconds_bucket",
        "tally_log_queue_depth",
        "tally_log_queue_capacity 65536",
        "tally_http_request_duration_seconds_bucket",
        "tally_build_info",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    for secret in ["demo", "secret-sub", "evil.example", "127.0.0.1", "aff1", "shoes"] {
        assert!(!text.contains(secret), "{secret} leaked into metrics");
    }
}

#[test]
fn stopping_drains_and_keeps_every_acknowledged_click() {
    let env = Env::new("");
    let mut server = env.serve();
    let ids = click_storm(server.addr, 4, 50, "drain");
    assert!(server.stop(), "the server did not stop cleanly");
    let clicks = of_type(&events(&env.data()), "click").len();
    assert_eq!(clicks, ids.len());
}

#[test]
fn a_reload_puts_a_new_program_in_force_and_keeps_the_old_one_when_invalid() {
    let env = Env::new("");
    let server = env.serve();
    assert_eq!(server.get("/c/fresh").status, 404);
    env.append_program("[[links]]\ncode = \"fresh\"\noffer = \"hotels\"\naffiliate = \"aff1\"\n");
    assert_eq!(server.reload(), Ok(true));
    assert!(server.metrics().contains("tally_program_reloads_total{outcome=\"ok\"} 1"));
    let r = server.get("/c/fresh");
    assert_eq!(r.status, 302);
    assert!(r.header("location").unwrap().starts_with("https://travel.example/hotels?click="));

    std::fs::write(env.program(), "this is [not valid").unwrap();
    assert!(server.reload().is_err(), "an invalid program is refused");
    assert!(server.metrics().contains("tally_program_reloads_total{outcome=\"error\"} 1"));
    assert_eq!(server.get("/c/fresh").status, 302, "the old program must stay in force");

    let changes = of_type(&events(&env.data()), "program_change").len();
    assert_eq!(changes, 2, "start and one successful reload are logged");
}

#[test]
fn a_repeated_conversion_is_answered_as_a_duplicate_and_logged_once_more() {
    let env = Env::new("");
    let server = env.serve();
    let cid = server.get("/c/demo").click_id();
    let url =
        |status: &str| format!("/postback?cid={cid}&offer=shoes&txid=DUP-1&amount=10&status={status}&token={TOKEN}");
    let first = server.get(&url("approved")).json();
    assert_eq!(first["status"], "accepted");
    assert!(first["duplicate_of"].is_null());
    let again = server.get(&url("approved")).json();
    assert_eq!(again["status"], "duplicate");
    assert_eq!(again["duplicate_of"], first["seq"]);
    // A refund of the same order is a new report, not a repeat; its repeat is.
    assert_eq!(server.get(&url("refunded")).json()["status"], "accepted");
    assert_eq!(server.get(&url("refunded")).json()["status"], "duplicate");
    // A pixel for the same order and goal repeats the postback: still a GIF for the browser.
    let px = server.get(&format!("/px.gif?cid={cid}&offer=shoes&txid=DUP-1&amount=10"));
    assert_eq!((px.status, px.body.len()), (200, 43));

    // Posted concurrently, one report is first and every other one is its duplicate.
    let addr = server.addr;
    let answers: Vec<serde_json::Value> = (0..16)
        .map(|_| {
            let cid = cid.clone();
            std::thread::spawn(move || {
                Conn::open(addr)
                    .send(&format!(
                        "GET /postback?cid={cid}&offer=shoes&txid=RACE&amount=5&token={TOKEN} HTTP/1.1\r\nHost: t\r\n\r\n"
                    ))
                    .json()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    let firsts: Vec<&serde_json::Value> = answers.iter().filter(|a| a["status"] == "accepted").collect();
    assert_eq!(firsts.len(), 1, "{answers:?}");
    assert!(answers.iter().filter(|a| a["status"] == "duplicate").all(|a| a["duplicate_of"] == firsts[0]["seq"]));

    let metrics = server.metrics();
    assert!(metrics.contains("tally_conversions_total{source=\"postback\",outcome=\"duplicate\"} 17"), "{metrics}");
    assert!(metrics.contains("tally_conversions_total{source=\"pixel\",outcome=\"duplicate\"} 1"), "{metrics}");
    // Every report is in the log: attribution, not ingestion, decides what is paid.
    assert_eq!(of_type(&events(&env.data()), "conversion").len(), 4 + 1 + 16);
}

/// Every status word other trackers send arrives as the status it means, in every shape a
/// postback takes (GET query, form body, JSON).
#[test]
fn every_status_word_is_understood() {
    let env = Env::new("");
    let server = env.serve();
    let cid = server.get("/c/demo").click_id();
    for (i, &(word, status)) in tally_model::event::STATUS_WORDS.iter().enumerate() {
        let query = format!("cid={cid}&offer=shoes&txid=W{i}&status={word}");
        let r = match i % 3 {
            0 => server.get(&format!("/postback?{query}&token={TOKEN}")),
            1 => server.send(&format!(
                "POST /postback?token={TOKEN} HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{query}",
                query.len()
            )),
            _ => {
                let body = format!(r#"{{"cid":"{cid}","offer":"shoes","txid":"W{i}","status":"{}"}}"#, word.to_uppercase());
                server.send(&format!(
                    "POST /postback HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                ))
            }
        };
        assert_eq!(r.status, 200, "{word}: {}", r.text());
        assert_eq!(r.json()["conversion_status"], status.as_str(), "{word}");
    }
    let convs = of_type(&events(&env.data()), "conversion").len();
    assert_eq!(convs, tally_model::event::STATUS_WORDS.len());
}

/// Everflow's and Voluum's advertisers send the click ID and little else: the offer and its
/// default goal come from the click, the advertiser from the credential.
#[test]
fn a_postback_naming_only_the_click_is_credited_to_its_offer() {
    let env = Env::new("");
    let server = env.serve();
    let cid = server.get("/c/demo").click_id();
    let to_hotels = server.get("/c/hotels-aff2");
    let hotel = to_hotels.header("location").unwrap().split("click=").nth(1).unwrap()[..26].to_owned();

    let r = server.get(&format!("/postback?transaction_id={cid}&amount=12,34&adv_sub=EF-1&token={TOKEN}"));
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!((j["status"].as_str(), j["offer"].is_null(), j["goal"].is_null()), (Some("accepted"), true, true));
    assert_eq!(j["click_id"], cid.as_str());
    // Sent again: a duplicate, answered with the first one's sequence number.
    let again = server.get(&format!("/postback?transaction_id={cid}&amount=12,34&adv_sub=EF-1&token={TOKEN}")).json();
    assert_eq!((again["status"].as_str(), &again["duplicate_of"]), (Some("duplicate"), &j["seq"]));
    // The merchant's own words: a pending lead, approved later; a rejection.
    for (q, status) in [
        (format!("cid={cid}&event=signup&txid=L-1&status=lead"), "pending"),
        (format!("cid={cid}&event=signup&txid=L-1&status=SALE"), "approved"),
        (format!("cid={cid}&event=signup&txid=L-2&status=declined"), "rejected"),
    ] {
        let r = server.get(&format!("/postback?{q}&token={TOKEN}"));
        assert_eq!((r.status, r.json()["conversion_status"].as_str()), (200, Some(status)), "{q}: {}", r.text());
    }
    // Globex's credential on acme's click: accepted (the edge cannot tell), never credited.
    let r = server.get(&format!("/postback?cid={cid}&txid=G-1&amount=9&token={GLOBEX_TOKEN}"));
    assert_eq!(r.status, 200, "{}", r.text());
    // A browser's report naming only the click, with the currency named.
    let r = server.get(&format!("/px.gif?cid={hotel}&txid=H-1&amount=80&currency=EUR"));
    assert_eq!(r.status, 200, "{}", r.text());

    let convs: Vec<serde_json::Value> = of_type(&events(&env.data()), "conversion").into_iter().cloned().collect();
    let ef = convs.iter().find(|c| c["txid"] == "EF-1").unwrap();
    assert_eq!((ef["offer"].as_str(), ef["goal"].as_str()), (Some(""), Some("")));
    assert_eq!((ef["amount"].as_str(), ef["currency"].as_str()), (Some("12.34"), Some("USD")));
    assert_eq!(ef["advertiser"], "acme");
    let px = convs.iter().find(|c| c["txid"] == "H-1").unwrap();
    assert_eq!((px["advertiser"].as_str(), px["conversion_source"].as_str()), (Some(""), Some("pixel")));

    let ledger = ledger_with(&env.data(), "H-1");
    let entry = |txid: &str, kind: &str| {
        ledger
            .iter()
            .find(|e| e["txid"] == txid && e["kind"] == kind)
            .unwrap_or_else(|| panic!("{txid} {kind}: {ledger:#?}"))
    };
    let ef = entry("EF-1", "commission");
    assert_eq!(
        (ef["offer"].as_str(), ef["goal"].as_str(), ef["affiliate"].as_str()),
        (Some("shoes"), Some("sale"), Some("aff1"))
    );
    // 8% of 12.34, held 14 days.
    assert_eq!((ef["status"].as_str(), ef["amount"].as_str()), (Some("pending"), Some("0.99")));
    let lead = entry("L-1", "commission");
    assert_eq!((lead["status"].as_str(), lead["reason"].as_str()), (Some("approved"), Some("")));
    assert_eq!(entry("L-1", "confirmation")["refers_to"], lead["id"]);
    let rejected = entry("L-2", "commission");
    assert_eq!(
        (rejected["status"].as_str(), rejected["reason"].as_str()),
        (Some("rejected"), Some("merchant_rejected"))
    );
    let foreign = entry("G-1", "commission");
    assert_eq!(
        (foreign["status"].as_str(), foreign["reason"].as_str()),
        (Some("unattributed"), Some("click_advertiser_mismatch"))
    );
    let hotel = entry("H-1", "commission");
    assert_eq!(
        (hotel["offer"].as_str(), hotel["affiliate"].as_str(), hotel["amount"].as_str()),
        (Some("hotels"), Some("aff2"), Some("12.00"))
    );
}

fn assert_log_is_whole(events: &[serde_json::Value]) {
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs.first(), Some(&1));
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "sequence gap");
}

#[test]
fn concurrent_clicks_are_each_logged_exactly_once_with_no_gaps() {
    let env = Env::new("");
    let mut server = env.serve();
    let ids = click_storm(server.addr, 32, 150, "load");
    assert_eq!(ids.len(), 32 * 150, "every request gets its 302");
    assert!(server.stop());
    let events = events(&env.data());
    assert_log_is_whole(&events);
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for c in of_type(&events, "click") {
        *counts.entry(c["click_id"].as_str().unwrap()).or_default() += 1;
    }
    for id in &ids {
        assert_eq!(counts.get(id.as_str()), Some(&1), "click {id} logged {:?} times", counts.get(id.as_str()));
    }
    assert_eq!(counts.len(), ids.len());
    let markers: BTreeSet<&str> = of_type(&events, "click").iter().map(|c| c["sub1"].as_str().unwrap()).collect();
    assert_eq!(markers.len(), ids.len(), "sub IDs are unique per request");
    let report = tally_log::LogReader::open_secondary(&env.data()).unwrap().verify().unwrap();
    assert!(report.first_bad.is_none(), "the chain does not verify: {:?}", report.first_bad);
}
