//! The JavaScript tag's two routes: `/t.js` (the script, cacheable, with the SRI hash the
//! README prints) and `/t/convert` (its conversions, CORS-readable). Its behaviour in a
//! browser is tested in `tests/browser`.

use crate::common::*;

fn post(body: &str, origin: Option<&str>, extra: &str) -> String {
    let origin = origin.map(|o| format!("Origin: {o}\r\n")).unwrap_or_default();
    format!(
        "POST /t/convert HTTP/1.1\r\nHost: t\r\n{origin}{extra}Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[test]
fn the_tag_is_served_cacheable_with_the_integrity_the_readme_prints() {
    let env = Env::new("");
    let server = env.serve();
    let r = server.get("/t.js");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, tally_edge::tag::TAG_JS);
    assert_eq!(r.header("content-type"), Some("application/javascript; charset=utf-8"));
    assert_eq!(r.header("cache-control"), Some("public, max-age=86400"));
    // SRI with crossorigin="anonymous" needs the script to be CORS-readable.
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    let etag = r.header("etag").unwrap().to_owned();
    assert_eq!(etag, format!("\"{}\"", tally_edge::tag::integrity()));

    let again = server.send(&format!("GET /t.js HTTP/1.1\r\nHost: t\r\nIf-None-Match: \"other\", {etag}\r\n\r\n"));
    assert_eq!((again.status, again.body.len()), (304, 0));
    let stale = server.send("GET /t.js HTTP/1.1\r\nHost: t\r\nIf-None-Match: \"other\"\r\n\r\n");
    assert_eq!(stale.status, 200);
    let head = server.send("HEAD /t.js HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!((head.status, head.header("etag")), (200, Some(etag.as_str())));
    // The version's own address: the same bytes, for good.
    let pinned = server.get("/t/1.js");
    assert_eq!((pinned.status, pinned.body.as_slice()), (200, tally_edge::tag::TAG_JS));
    assert_eq!(pinned.header("cache-control"), Some("public, max-age=31536000, immutable"));
    assert_eq!(pinned.header("etag"), Some(etag.as_str()));
    assert_eq!(server.get("/t/2.js").status, 404);
    let post = server.send("POST /t.js HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n");
    assert_eq!((post.status, post.header("allow")), (405, Some("GET, HEAD")));

    // The README's snippet carries the hash of exactly these bytes.
    let readme = std::fs::read_to_string(repo_file("README.md")).unwrap();
    let sri = tally_edge::tag::integrity();
    let snippet = format!("src=\"https://track.shop.example/t/1.js\" integrity=\"{sri}\"");
    assert!(readme.contains(&snippet), "README.md must load the pinned tag with its integrity: {snippet}");
}

#[test]
fn the_tags_conversions_are_recorded_and_answered_to_the_calling_origin() {
    let env = Env::new("");
    let server = env.serve();
    let cid = server.get("/c/demo").click_id();

    // The preflight a non-simple request would send.
    let pre = server.send("OPTIONS /t/convert HTTP/1.1\r\nHost: t\r\nOrigin: http://shop.example\r\nAccess-Control-Request-Method: POST\r\n\r\n");
    assert_eq!(pre.status, 204);
    assert_eq!(pre.header("access-control-allow-origin"), Some("http://shop.example"));
    assert_eq!(pre.header("access-control-allow-methods"), Some("POST"));

    let r =
        server.send(&post(&format!("cid={cid}&txid=TAG-1&amount=12.50&currency=USD"), Some("http://shop.example"), ""));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), serde_json::json!({ "status": "accepted" }));
    assert_eq!(r.header("access-control-allow-origin"), Some("http://shop.example"));
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(r.header("vary"), Some("Origin"));
    let again =
        server.send(&post(&format!("cid={cid}&txid=TAG-1&amount=12.50&currency=USD"), Some("http://shop.example"), ""));
    assert_eq!(again.json()["status"], "duplicate");
    // Same-site deployments: Tally's own cookie stands in for a click ID the page lacks.
    let cookie = format!("Cookie: tally_cid={cid}\r\n");
    let r = server.send(&post("offer=shoes&txid=TAG-2&amount=3", Some("http://shop.example"), &cookie));
    assert_eq!(r.status, 200, "{}", r.text());

    // Errors are JSON the page can read, and name the field.
    for (body, status, field) in [
        ("txid=T".to_owned(), 400, "offer"),
        (format!("cid={cid}&amount=5"), 400, "currency"),
        (format!("cid={cid}&offer=shoes&amount=1.234"), 400, "amount"),
        ("cid=NOTACLICK&offer=shoes".to_owned(), 400, "cid"),
    ] {
        let r = server.send(&post(&body, Some("http://shop.example"), ""));
        assert_eq!(r.status, status, "{body}: {}", r.text());
        assert_eq!(r.json()["field"], field, "{body}");
        assert_eq!(r.header("access-control-allow-origin"), Some("http://shop.example"), "{body}");
    }
    let get = server.get(&format!("/t/convert?cid={cid}&offer=shoes"));
    assert_eq!((get.status, get.header("allow")), (405, Some("POST, OPTIONS")));
    // Without an Origin (a script outside a browser), any origin may read the answer.
    let r = server.send(&post(&format!("cid={cid}&offer=shoes&txid=TAG-3"), None, ""));
    assert_eq!((r.status, r.header("access-control-allow-origin")), (200, Some("*")));

    let convs: Vec<serde_json::Value> = of_type(&events(&env.data()), "conversion").into_iter().cloned().collect();
    assert_eq!(convs.len(), 4, "the two TAG-1 reports, TAG-2 and TAG-3; nothing refused: {convs:#?}");
    assert!(convs.iter().all(|c| c["conversion_source"] == "tag"));
    let tag2 = convs.iter().find(|c| c["txid"] == "TAG-2").unwrap();
    assert_eq!(tag2["click_id"], cid.as_str());
    let m = server.metrics();
    assert!(m.contains("tally_conversions_total{source=\"tag\",outcome=\"accepted\"} 3"), "{m}");
    assert!(m.contains("tally_conversions_total{source=\"tag\",outcome=\"duplicate\"} 1"), "{m}");
    assert!(m.contains("tally_conversions_total{source=\"tag\",outcome=\"invalid\"} 4"), "{m}");
}
