//! Outgoing postbacks and webhooks through the running server: an affiliate's postback URL
//! set through the admin API and a webhook in the program, both fired by a sale, delivered to
//! a receiver on 127.0.0.1, listed in the delivery log, and sent again on request; a link's
//! own postback URL, before its affiliate's.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::common::{ledger_with, wait_for, Env, TestServer, TOKEN};

const ADMIN: &str = "test-admin-token-0123456789";
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Each request a receiver got: its head and body.
type Seen = Arc<Mutex<Vec<(String, String)>>>;

/// A receiver answering 200 to everything, keeping each request's head and body.
fn receiver() -> (String, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen: Seen = Arc::default();
    let log = Arc::clone(&seen);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                let mut r = BufReader::new(s.try_clone().unwrap());
                loop {
                    let mut head = String::new();
                    let mut line = String::new();
                    while r.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                        head.push_str(&line);
                        line.clear();
                    }
                    if head.is_empty() {
                        return;
                    }
                    let len = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned())
                        })
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0usize);
                    let mut body = vec![0; len];
                    let _ = r.read_exact(&mut body);
                    log.lock().unwrap().push((head, String::from_utf8_lossy(&body).into_owned()));
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
                }
            });
        }
    });
    (addr, seen)
}

fn admin(server: &TestServer, method: &str, path: &str, body: &str) -> (u16, Value) {
    let r = server.admin(method, path, Some(ADMIN), body);
    (r.status, serde_json::from_slice(&r.body).unwrap_or(Value::String(r.text())))
}

#[test]
fn a_sale_notifies_the_affiliate_and_the_webhook_and_the_delivery_log_says_so() {
    let (addr, seen) = receiver();
    let env = Env::new("");
    env.append_config(&format!(
        "[admin]\ntoken = \"{ADMIN}\"\n[deliveries]\nallow_private = true\ntimeout_ms = 2000\n"
    ));
    env.append_program(&format!(
        "[[webhooks]]\nid = \"crm\"\nurl = \"http://{addr}/hooks\"\nsecret = \"crm-key\"\nevents = [\"commission.created\"]\n"
    ));
    let secrets = env.tmp.path().join("secrets.toml");
    let mut s = std::fs::read_to_string(&secrets).unwrap();
    s.push_str(&format!("crm-key = \"{SECRET}\"\n"));
    std::fs::write(&secrets, s).unwrap();
    let server = env.serve();
    let body = format!(
        r#"{{"id":"aff1","postback_url":"http://{addr}/pb?cid={{click_id}}&payout={{payout}}&status={{status}}"}}"#
    );
    let (status, v) = admin(&server, "PATCH", "/admin/affiliates/aff1", &body);
    assert_eq!(status, 200, "{v}");

    let cid = server.get("/c/demo").click_id();
    let r = server.get(&format!("/postback?offer=shoes&goal=sale&cid={cid}&txid=N1&amount=50.00&token={TOKEN}"));
    assert_eq!(r.status, 200, "{}", r.text());
    ledger_with(&env.data(), "N1");
    wait_for("the postback and the webhook", || seen.lock().unwrap().len() >= 2);
    let got = seen.lock().unwrap().clone();
    let get = got.iter().find(|(h, _)| h.starts_with("GET ")).unwrap();
    assert!(get.0.starts_with(&format!("GET /pb?cid={cid}&payout=4.00&status=pending HTTP/1.1")), "{}", get.0);
    let post = got.iter().find(|(h, _)| h.starts_with("POST /hooks ")).unwrap();
    assert!(post.0.to_ascii_lowercase().contains("webhook-signature: v1,"), "{}", post.0);
    assert!(post.1.contains(r#""type":"commission.created""#) && post.1.contains(r#""txid":"N1""#), "{}", post.1);

    // The delivery log.
    let mut deliveries = Vec::new();
    wait_for("both delivered", || {
        let (_, v) = admin(&server, "GET", "/admin/deliveries?status=delivered", "");
        deliveries = v["deliveries"].as_array().cloned().unwrap_or_default();
        deliveries.len() == 2
    });
    let pb = deliveries.iter().find(|d| d["kind"] == "postback").unwrap().clone();
    assert_eq!(
        (pb["receiver"].as_str(), pb["attempts"].as_u64(), pb["last_status"].as_u64()),
        (Some("aff1"), Some(1), Some(200))
    );
    let key = pb["key"].as_str().unwrap().to_owned();
    let (status, one) = admin(&server, "GET", &format!("/admin/deliveries/{key}"), "");
    assert_eq!((status, one["delivery"]["key"].as_str()), (200, Some(key.as_str())), "{one}");
    let (_, crm) = admin(&server, "GET", "/admin/deliveries?receiver=crm", "");
    assert_eq!(crm["deliveries"].as_array().unwrap().len(), 1, "{crm}");

    // Sent again on request, with the same idempotency key.
    let (status, v) = admin(&server, "POST", &format!("/admin/deliveries/{key}/redeliver"), "");
    assert_eq!((status, v["delivery"]["status"].as_str()), (200, Some("pending")), "{v}");
    wait_for("the redelivery", || {
        seen.lock()
            .unwrap()
            .iter()
            .filter(|(h, _)| h.to_ascii_lowercase().contains(&format!("idempotency-key: {key}")))
            .count()
            == 2
    });

    // Refusals.
    for (method, path, status, needle) in [
        ("GET", "/admin/deliveries/nope", 400, "not a delivery key"),
        ("GET", "/admin/deliveries/tally-999999-0", 404, "no such delivery"),
        ("POST", "/admin/deliveries/tally-999999-0/redeliver", 404, "no such delivery"),
        ("GET", "/admin/deliveries?status=lost", 400, "status"),
        ("GET", "/admin/deliveries?limit=0", 400, "limit"),
        ("GET", "/admin/deliveries?colour=red", 400, "unknown parameter"),
        ("DELETE", "/admin/deliveries", 405, "not allowed"),
    ] {
        let (got, v) = admin(&server, method, path, "");
        assert_eq!(got, status, "{method} {path}: {v}");
        assert!(v["error"].as_str().unwrap_or("").contains(needle), "{method} {path}: {v}");
    }
}

#[test]
fn a_bad_postback_url_or_webhook_is_refused_naming_the_field() {
    let env = Env::new("");
    env.append_config(&format!("[admin]\ntoken = \"{ADMIN}\"\n"));
    let server = env.serve();
    let (status, v) = admin(
        &server,
        "PATCH",
        "/admin/affiliates/aff1",
        r#"{"id":"aff1","postback_url":"https://{affiliate}.example/"}"#,
    );
    assert_eq!(status, 400, "{v}");
    assert!(v.to_string().contains("postback_url: macros may only appear after the host"), "{v}");
    let (status, v) = admin(
        &server,
        "PATCH",
        "/admin/affiliates/aff1",
        r#"{"id":"aff1","postback_url":"https://net.example/?x={nope}"}"#,
    );
    assert_eq!(status, 400, "{v}");
    assert!(v.to_string().contains("unknown macro {nope}"), "{v}");
}

#[test]
fn a_link_with_its_own_postback_url_gets_its_sales_and_the_affiliates_other_links_do_not() {
    let (addr, seen) = receiver();
    let env = Env::new("");
    env.append_config(&format!(
        "[admin]\ntoken = \"{ADMIN}\"\n[deliveries]\nallow_private = true\ntimeout_ms = 2000\n"
    ));
    let server = env.serve();
    let body = format!(r#"{{"id":"aff1","postback_url":"http://{addr}/aff-pb?cid={{click_id}}&status={{status}}"}}"#);
    let (status, v) = admin(&server, "PATCH", "/admin/affiliates/aff1", &body);
    assert_eq!(status, 200, "{v}");
    let url = format!("http://{addr}/link-pb?cid={{click_id}}&payout={{payout}}&status={{status}}&tx={{txid}}");
    let body = serde_json::json!({ "code": "spring-pb", "offer": "shoes", "affiliate": "aff1", "postback_url": url });
    let (status, v) = admin(&server, "POST", "/admin/links", &body.to_string());
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["link"]["postback_url"].as_str(), Some(url.as_str()), "{v}");
    // Disabling and enabling it (a change of other fields) keeps the URL.
    assert_eq!(admin(&server, "POST", "/admin/links/spring-pb/disable", "").0, 200);
    let (status, v) = admin(&server, "POST", "/admin/links/spring-pb/enable", "");
    assert_eq!((status, v["link"]["postback_url"].as_str()), (200, Some(url.as_str())), "{v}");

    // A sale through the link: the link's URL, macros filled.
    let cid = server.get("/c/spring-pb").click_id();
    let r = server.get(&format!("/postback?offer=shoes&goal=sale&cid={cid}&txid=L1&amount=50.00&token={TOKEN}"));
    assert_eq!(r.status, 200, "{}", r.text());
    ledger_with(&env.data(), "L1");
    // A sale through the affiliate's other link (no URL of its own): the affiliate's.
    let other = server.get("/c/demo").click_id();
    let r = server.get(&format!("/postback?offer=shoes&goal=sale&cid={other}&txid=L2&amount=50.00&token={TOKEN}"));
    assert_eq!(r.status, 200, "{}", r.text());
    ledger_with(&env.data(), "L2");
    wait_for("both postbacks", || seen.lock().unwrap().len() >= 2);
    let heads: Vec<String> = seen.lock().unwrap().iter().map(|(h, _)| h.clone()).collect();
    assert_eq!(heads.len(), 2, "{heads:?}");
    let first_line =
        |prefix: &str| heads.iter().find(|h| h.starts_with(prefix)).map(|h| h.lines().next().unwrap_or(""));
    assert_eq!(
        first_line("GET /link-pb"),
        Some(format!("GET /link-pb?cid={cid}&payout=4.00&status=pending&tx=L1 HTTP/1.1").as_str()),
        "{heads:?}"
    );
    assert_eq!(
        first_line("GET /aff-pb"),
        Some(format!("GET /aff-pb?cid={other}&status=pending HTTP/1.1").as_str()),
        "{heads:?}"
    );
}

#[test]
fn a_link_with_a_bad_postback_url_is_refused_naming_the_field() {
    let env = Env::new("");
    env.append_config(&format!("[admin]\ntoken = \"{ADMIN}\"\n"));
    let server = env.serve();
    for (method, path, body, needle) in [
        (
            "POST",
            "/admin/links",
            r#"{"code":"bad-pb","offer":"shoes","affiliate":"aff1","postback_url":"https://{affiliate}.example/"}"#,
            "links[bad-pb].postback_url: macros may only appear after the host",
        ),
        (
            "PATCH",
            "/admin/links/demo",
            r#"{"postback_url":"https://net.example/?x={nope}"}"#,
            "links[demo].postback_url: unknown macro {nope}",
        ),
        (
            "POST",
            "/admin/links",
            r#"{"code":"bad-pb2","offer":"shoes","affiliate":"aff1","postback_url":7}"#,
            "bad link",
        ),
    ] {
        let (status, v) = admin(&server, method, path, body);
        assert_eq!(status, 400, "{method} {path}: {v}");
        assert!(v.to_string().contains(needle), "{method} {path}: {v}");
    }
    // Nothing was put.
    assert_eq!(admin(&server, "GET", "/admin/links/bad-pb", "").0, 404);
    let (_, v) = admin(&server, "GET", "/admin/links/demo", "");
    assert!(v["link"].get("postback_url").is_none(), "{v}");
}
