//! Security corpus against the real server (in-process, real sockets): open-redirect payloads for `url=` deep links,
//! header injection through every macro value, forged postbacks, oversized and non-UTF-8
//! values. Each is rejected or neutralised, and afterwards `tally export events` shows that
//! nothing was stored that should not have been.

use std::collections::HashSet;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::common::*;

/// Deep-link payloads, and whether the offer (hosts `shop.example`, `*.shop.example`) may follow
/// them. Every other one must be refused and the offer's own destination used.
const DEEP_LINKS: &[(&str, bool)] = &[
    // Protocol-relative and scheme confusion.
    ("//evil.example", false),
    ("///evil.example", false),
    ("////evil.example/", false),
    ("/\\evil.example", false),
    ("\\\\evil.example", false),
    ("https:evil.example", false),
    ("https:/evil.example", false),
    ("https:///evil.example", false),
    ("https:\\\\evil.example", false),
    ("http://evil.example", false),
    ("HTTPS://EVIL.EXAMPLE/", false),
    ("hTtPs://evil.example", false),
    ("https%3A%2F%2Fevil.example", false),
    ("%2F%2Fevil.example", false),
    ("https:%2f%2fevil.example", false),
    // Userinfo: the host is what follows the @.
    ("a.example@evil.example", false),
    ("https://shop.example@evil.example", false),
    ("https://shop.example:443@evil.example", false),
    ("https://shop.example:pass@evil.example/", false),
    ("https://@evil.example", false),
    ("https://shop.example%40evil.example/", false),
    ("https://user@shop.example/", false),
    // Backslashes, which browsers turn into slashes.
    ("https://evil.example\\@shop.example/", false),
    ("https://evil.example\\.shop.example", false),
    ("https://shop.example\\evil.example", false),
    // Encoded dots and slashes in the host.
    ("https://evil.example%2eshop.example/", true), // decodes to a subdomain: allowed by *.shop.example
    ("https://evil%2eexample/", false),
    ("https://evil.example%2Fshop.example", false),
    ("https://evil.example%252f.shop.example", false),
    ("https://shop.example%2e%2e/evil", false),
    ("https://shop.example%00.evil.example/", false),
    // Look-alike hosts.
    ("https://shop.example.evil.example/", false),
    ("https://evilshop.example/", false),
    ("https://shop.exampleevil.example/", false),
    ("https://shop.example./", false),
    ("https://evil.example#shop.example", false),
    ("https://evil.example?shop.example", false),
    ("https://evil.example/shop.example", false),
    ("https://evil.example;shop.example", false),
    ("https://127.0.0.1/", false),
    ("https://[::1]/", false),
    ("https://2130706433/", false),
    ("https://0x7f.1/", false),
    // Unicode look-alikes and IDN: Cyrillic а and ѕ, a fullwidth stop, a division slash.
    ("https://shop.ex\u{0430}mple/", false),
    ("https://\u{0455}hop.example/", false),
    ("https://xn--shop-example.example/", false),
    ("https://shop.example\u{FF0E}evil.example/", false),
    ("https://evil.example\u{2215}shop.example", false),
    ("https://evil.example\u{2044}shop.example", false),
    // CR/LF and whitespace.
    ("https://shop.example\r\nLocation: https://evil.example/", false),
    ("https://shop.example/\r\nSet-Cookie: x=1", false),
    ("https://shop.example%0d%0aSet-Cookie:x=1", false),
    (" https://evil.example", false),
    ("\thttps://shop.example/", false),
    ("https://shop.example/ ", false),
    ("https://shop.example/\u{0}", false),
    // Other schemes.
    ("javascript:alert(1)", false),
    ("JaVaScRiPt:alert(1)", false),
    ("javascript://shop.example/%0aalert(1)", false),
    ("data:text/html,<script>alert(1)</script>", false),
    ("data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==", false),
    ("vbscript:msgbox(1)", false),
    ("file:///etc/passwd", false),
    ("ftp://shop.example/", false),
    ("", false),
    // Genuinely on the allowed hosts: followed, normalised.
    ("https://shop.example/p/42", true),
    ("https://www.shop.example/p/42?x=1#y", true),
    ("HTTPS://SHOP.EXAMPLE/ok", true),
    ("https://shop.example/%0d%0aSet-Cookie:x=1", true),
    ("https://shop.example/%2e%2e/%2e%2e/evil", true),
    ("https://shop\u{3002}example/", true), // an ideographic full stop is a dot to IDNA and browsers
];

/// Values for every macro: header injection, URL structure, HTML, control and non-UTF-8 bytes.
/// Given already percent-encoded (as they appear in the query).
const MACRO_VALUES: &[&str] = &[
    "%0D%0AX-Injected:%20yes",
    "%0AX-Injected:%20yes",
    "%0DX-Injected:%20yes",
    "a%0D%0A%0D%0A%3Chtml%3E",
    "%E5%98%8A%E5%98%8DX-Injected:%20yes", // U+560A U+560D: their low bytes are CR and LF
    "%26cid%3DFORGED%26aff%3Devil",
    "%23fragment",
    "%3Fx%3D1",
    "..%2F..%2Fevil",
    "%40evil.example",
    "%2F%2Fevil.example",
    "%22%3E%3Cscript%3Ealert(1)%3C%2Fscript%3E",
    "%00nul",
    "%E2%80%A8line-separator",
    "%FF%FEnot-utf8",
    "%C0%AF",
    "javascript:alert(1)",
    "a+b%20c",
];

fn form_encode(s: &str) -> String {
    s.bytes().map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

fn allowed(host: &str) -> bool {
    host == "shop.example" || (host.ends_with(".shop.example") && host.len() > ".shop.example".len())
}

/// Checks a click's redirect: 302 to an allowed host, a clean header, no injected headers.
fn check_redirect(r: &Resp, what: &str) -> url::Url {
    assert_eq!(r.status, 302, "{what}: {}", r.text());
    let loc = r.header("location").unwrap_or_else(|| panic!("{what}: no Location"));
    assert!(!loc.bytes().any(|b| b.is_ascii_control() || b == b' ' || b == b'\\'), "{what}: Location {loc:?}");
    let url = url::Url::parse(loc).unwrap_or_else(|e| panic!("{what}: Location {loc:?}: {e}"));
    assert!(matches!(url.scheme(), "http" | "https"), "{what}: Location {loc:?}");
    assert!(url.username().is_empty() && url.password().is_none(), "{what}: Location {loc:?}");
    assert!(allowed(url.host_str().unwrap_or("")), "{what}: redirected to {loc:?}");
    let expected: HashSet<&str> =
        ["location", "cache-control", "referrer-policy", "set-cookie", "content-length", "date"].into();
    for (name, _) in &r.headers {
        assert!(expected.contains(name.to_ascii_lowercase().as_str()), "{what}: unexpected header {name}");
    }
    assert_eq!(r.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case("set-cookie")).count(), 1, "{what}");
    url
}

/// The example program with a destination that uses every macro.
fn env_with_all_macros() -> Env {
    let env = Env::new("");
    let program = std::fs::read_to_string(env.program()).unwrap();
    let program = program.replace(
        "destination = \"https://shop.example/landing?cid={click_id}&aff={aff_id}&s1={sub1}\"",
        "destination = \"https://shop.example/landing/{sub1}?cid={click_id}&aff={aff_id}&o={offer_id}&s1={sub1}&s2={sub2}&s3={sub3}&s4={sub4}&s5={sub5}&src={source}#{sub2}\"",
    );
    assert!(program.contains("{sub5}"), "the example program's destination changed; update this test");
    std::fs::write(env.program(), program).unwrap();
    env
}

#[test]
fn open_redirect_payloads_never_leave_the_offer() {
    let env = env_with_all_macros();
    let server = env.serve();
    let mut sent = 0;
    for (payload, follow) in DEEP_LINKS {
        let r = server.get(&format!("/c/demo?url={}&sub1=dl", form_encode(payload)));
        sent += 1;
        let url = check_redirect(&r, &format!("url={payload:?}"));
        if *follow {
            assert_ne!(url.path(), "/landing/dl", "{payload:?} should have been followed");
        } else {
            assert_eq!(url.path(), "/landing/dl", "{payload:?} was followed to {url}");
            assert_eq!(url.host_str(), Some("shop.example"));
        }
    }
    // Parameter pollution: the first url= is the one checked and the one followed, and a
    // parameter that only decodes to `url` is still checked.
    let polluted: &[(&str, bool)] = &[
        ("url=https%3A%2F%2Fshop.example%2Fok&url=https%3A%2F%2Fevil.example%2F", true),
        ("url=https%3A%2F%2Fevil.example%2F&url=https%3A%2F%2Fshop.example%2Fok", false),
        ("url=&url=https%3A%2F%2Fevil.example%2F", false),
        ("u%72l=https%3A%2F%2Fevil.example%2F", false),
        ("url=https%3A%2F%2Fshop.example%2Fok%26url%3Dhttps%3A%2F%2Fevil.example", true),
        ("URL=https%3A%2F%2Fevil.example%2F", false),
        ("url[]=https%3A%2F%2Fevil.example%2F", false),
    ];
    for (query, follow) in polluted {
        let r = server.get(&format!("/c/demo?{query}&sub1=dl"));
        sent += 1;
        let url = check_redirect(&r, query);
        assert_eq!(url.path() != "/landing/dl", *follow, "{query} led to {url}");
        if *follow {
            assert_eq!(url.host_str(), Some("shop.example"), "{query}");
        }
    }

    let events = events(&env.data());
    let clicks = of_type(&events, "click");
    assert_eq!(clicks.len(), sent, "every click is recorded, followed or not");
    let followed: Vec<&str> =
        clicks.iter().map(|c| c["deep_link"].as_str().unwrap()).filter(|d| !d.is_empty()).collect();
    let expected_followed = DEEP_LINKS.iter().filter(|(_, f)| *f).count() + polluted.iter().filter(|(_, f)| *f).count();
    assert_eq!(followed.len(), expected_followed, "{followed:?}");
    for d in &followed {
        let u = url::Url::parse(d).unwrap();
        assert!(allowed(u.host_str().unwrap()), "stored a deep link off the offer: {d}");
    }
    let rejected = clicks.iter().filter(|c| c["flags"].as_u64().unwrap() & 8 != 0).count();
    // `URL=` and `url[]=` are not deep links at all, so they are not flagged.
    assert_eq!(rejected, sent - expected_followed - 2);
    let used = clicks.iter().filter(|c| c["flags"].as_u64().unwrap() & 16 != 0).count();
    assert_eq!(used, expected_followed, "a followed deep link is flagged as used");
}

#[test]
fn macro_values_cannot_inject_headers_or_change_the_destination() {
    let env = env_with_all_macros();
    let server = env.serve();
    // Six parameters of this stay under max_header_bytes; each is still cut to 256 bytes.
    let long = "x".repeat(1_000);
    let mut values: Vec<String> = MACRO_VALUES.iter().map(|v| (*v).to_owned()).collect();
    values.push(long.clone());
    let mut sent = 0;
    for v in &values {
        // Each value in every macro at once, under both the long and the short names.
        for names in [["sub1", "sub2", "sub3", "sub4", "sub5", "src"], ["s1", "s2", "s3", "s4", "s5", "source"]] {
            let query: String = names.iter().map(|n| format!("{n}={v}&")).collect();
            let r = server.get(&format!("/c/demo?{query}"));
            sent += 1;
            let url = check_redirect(&r, &format!("macro value {v:?}"));
            assert_eq!(url.host_str(), Some("shop.example"), "{v:?}");
            assert!(url.path().starts_with("/landing/"), "{v:?} changed the path: {url}");
            assert_eq!(url.path().matches('/').count(), 2, "{v:?} added a path segment: {url}");
            let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
            let keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
            assert_eq!(keys, ["cid", "aff", "o", "s1", "s2", "s3", "s4", "s5", "src"], "{v:?} added parameters: {url}");
            assert_eq!(pairs[0].1, r.click_id(), "{v:?} forged the click ID");
            assert_eq!((pairs[1].1.as_str(), pairs[2].1.as_str()), ("aff1", "shoes"), "{v:?}");
            // What the browser carries back is the value, decoded once, and cut to the limit.
            let decoded: String = form_urlencoded::parse(format!("v={v}").as_bytes()).next().unwrap().1.into_owned();
            let mut cut = decoded.clone();
            while cut.len() > 256 {
                cut.pop();
            }
            assert_eq!(pairs[3].1, cut, "{v:?}");
            assert!(url.fragment().is_some(), "{v:?}");
        }
    }
    let events = events(&env.data());
    let clicks = of_type(&events, "click");
    assert_eq!(clicks.len(), sent);
    for c in &clicks {
        // Stored as data, bounded; JSON escapes it on the way out.
        for k in ["sub1", "sub2", "sub3", "sub4", "sub5"] {
            assert!(c[k].as_str().unwrap().len() <= 256, "{k} stored unbounded");
        }
        assert!(c["source"].as_str().unwrap().len() <= 128, "source stored unbounded");
    }
    let truncated = clicks.iter().filter(|c| c["flags"].as_u64().unwrap() & 32 != 0).count();
    assert_eq!(truncated, 2, "the 1000-byte values are cut and flagged");
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

#[test]
fn forged_postbacks_are_refused_and_store_nothing() {
    let env = Env::new("");
    let server = env.serve();
    let cid = server.get("/c/demo").click_id();
    let hotel = server.get("/c/hotels-aff2");
    let hotel_cid = hotel.header("set-cookie").unwrap()["tally_cid=".len()..][..26].to_owned();
    let sign = |t: u64, raw: &str| tally_protocol::auth::sign(HMAC_SECRET, t, raw.as_bytes());
    let get = |query: &str, extra: &str| format!("GET /postback?{query} HTTP/1.1\r\nHost: t\r\n{extra}\r\n");
    let post = |query: &str, body: &str, extra: &str| {
        format!(
            "POST /postback?{query} HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n{extra}\r\n{body}",
            body.len()
        )
    };
    let q = |txid: &str| format!("cid={cid}&offer=shoes&txid={txid}");
    let now = now_secs();
    let sig_header = |s: String| format!("X-Tally-Signature: {s}\r\n");
    let forged: Vec<(&str, String, u16)> = vec![
        ("no credentials", get(&q("F1"), ""), 401),
        ("wrong token", get(&format!("{}&token=demo-acme-token-change-mf", q("F2")), ""), 403),
        ("token prefix", get(&format!("{}&token=demo-acme-token", q("F3")), ""), 403),
        ("token with a NUL", get(&format!("{}&token={TOKEN}%00", q("F4")), ""), 403),
        ("empty token", get(&format!("{}&token=", q("F5")), ""), 401),
        ("another advertiser's token", get(&format!("{}&token=demo-globex-token-change-me", q("F6")), ""), 403),
        ("wrong bearer", get(&q("F7"), "Authorization: Bearer demo-acme-token-change-mf\r\n"), 403),
        (
            "acme's token for globex's offer",
            get(&format!("cid={hotel_cid}&offer=hotels&txid=F8&token={TOKEN}"), ""),
            403,
        ),
        ("unknown offer (so no advertiser)", get(&format!("cid={cid}&offer=nosuch&txid=F9&token={TOKEN}"), ""), 400),
        (
            "HMAC with the wrong secret",
            get(&q("F10"), &sig_header(tally_protocol::auth::sign("not-the-secret", now, q("F10").as_bytes()))),
            403,
        ),
        ("HMAC over other bytes", get(&q("F11"), &sig_header(sign(now, &q("F11x")))), 403),
        ("HMAC truncated", get(&q("F12"), &sig_header(sign(now, &q("F12"))[..30].to_owned())), 403),
        ("HMAC stale", get(&q("F13"), &sig_header(sign(now - 3600, &q("F13")))), 401),
        ("HMAC from the future", get(&q("F14"), &sig_header(sign(now + 3600, &q("F14")))), 401),
        ("HMAC at t=0", get(&q("F15"), &sig_header(sign(0, &q("F15")))), 401),
        ("HMAC with a negative t", get(&q("F16"), &sig_header(format!("t=-1,v1={}", "00".repeat(32)))), 401),
        (
            "HMAC with a huge t",
            get(&q("F17"), &sig_header(format!("t=99999999999999999999999,v1={}", "00".repeat(32)))),
            401,
        ),
        ("HMAC with t only", get(&q("F18"), &sig_header(format!("t={now}"))), 401),
        (
            // A signature, once given, is what is checked: a good token does not rescue a bad one.
            "bad HMAC plus a good token",
            get(&format!("{}&token={TOKEN}", q("F19")), &sig_header(sign(now, "something else"))),
            403,
        ),
        (
            "HMAC for an advertiser without a secret",
            get(
                &format!("cid={hotel_cid}&offer=hotels&txid=F20"),
                &sig_header(sign(now, &format!("cid={hotel_cid}&offer=hotels&txid=F20"))),
            ),
            403,
        ),
        ("POST with a wrong token in the query", post("token=wrong-token-0123456789", &q("F21"), ""), 403),
        ("POST body changed after signing", post("", &q("F22"), &sig_header(sign(now, &q("F22x")))), 403),
        ("oversized txid", get(&format!("cid={cid}&offer=shoes&txid={}&token={TOKEN}", "T".repeat(129)), ""), 400),
        ("oversized sub", get(&format!("{}&sub1={}&token={TOKEN}", q("F23"), "s".repeat(257)), ""), 400),
        ("oversized coupon", get(&format!("coupon={}&offer=shoes&txid=F24&token={TOKEN}", "C".repeat(65)), ""), 400),
        ("CR/LF in txid", get(&format!("cid={cid}&offer=shoes&txid=F25%0D%0AX:1&token={TOKEN}"), ""), 400),
        ("NUL in a sub", get(&format!("{}&sub2=a%00b&token={TOKEN}", q("F26")), ""), 400),
        ("offer id with CR/LF", get(&format!("cid={cid}&offer=shoes%0D%0A&txid=F27&token={TOKEN}"), ""), 400),
        (
            "JSON body without an offer",
            {
                let body = "{\"cid\":\"\u{FFFD}\"}";
                post(&format!("token={TOKEN}"), body, "")
                    .replace("application/x-www-form-urlencoded", "application/json")
            },
            400,
        ),
    ];
    for (what, raw, status) in &forged {
        let r = server.send(raw);
        assert_eq!(r.status, *status, "{what}: {}", r.text());
        assert_eq!(r.json()["status"], "error", "{what}");
    }
    // Raw invalid UTF-8 in a JSON body (the test client sends &str, so write the bytes).
    let mut body = b"{\"cid\":\"".to_vec();
    body.extend_from_slice(&[0xff, 0xfe]);
    body.extend_from_slice(b"\",\"offer\":\"shoes\",\"txid\":\"F28\"}");
    let mut raw = format!(
        "POST /postback?token={TOKEN} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(&body);
    let r = Conn::open(server.addr).try_send(&raw).unwrap();
    assert_eq!(r.status, 400, "{}", r.text());

    // A genuine signed postback is accepted once; replayed inside the window it is a
    // duplicate (logged, never paid twice); replayed after it has gone stale it is refused.
    let signed = format!("{}&goal=signup", q("R1"));
    let good = sign(now, &signed);
    let first = server.send(&get(&signed, &sig_header(good.clone())));
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.json()["status"], "accepted");
    let replay = server.send(&get(&signed, &sig_header(good.clone())));
    assert_eq!(replay.status, 200, "{}", replay.text());
    assert_eq!(replay.json()["status"], "duplicate");
    assert_eq!(replay.json()["duplicate_of"], first.json()["seq"]);
    let stale = sign(now - 301, &signed);
    assert_eq!(server.send(&get(&signed, &sig_header(stale))).status, 401);
    // Without a txid as well: the signature names the transaction (`sig:` and its first 16
    // bytes), so the replay is a duplicate, and attribution pays it once.
    let untagged = format!("cid={cid}&offer=shoes&goal=signup");
    let sig = sign(now, &untagged);
    let first_untagged = server.send(&get(&untagged, &sig_header(sig.clone())));
    assert_eq!(first_untagged.json()["status"], "accepted", "{}", first_untagged.text());
    let replay_untagged = server.send(&get(&untagged, &sig_header(sig.clone())));
    assert_eq!(replay_untagged.json()["status"], "duplicate", "{}", replay_untagged.text());
    let sig_txid = format!("sig:{}", &sig.rsplit_once("v1=").unwrap().1[..32]);

    // The click ID of another offer is authenticated (acme owns shoes) and logged, but
    // attribution refuses to credit it.
    let cross = server.get(&format!("/postback?cid={hotel_cid}&offer=shoes&goal=signup&txid=X1&token={TOKEN}"));
    assert_eq!(cross.status, 200, "{}", cross.text());

    let events = events(&env.data());
    let conversions = of_type(&events, "conversion");
    let txids: Vec<&str> = conversions.iter().map(|c| c["txid"].as_str().unwrap()).collect();
    assert_eq!(txids, ["R1", "R1", &sig_txid, &sig_txid, "X1"], "only the genuine reports are stored");

    let ledger = ledger_with(&env.data(), "X1");
    let x1 = ledger.iter().find(|e| e["txid"] == "X1").unwrap();
    assert_eq!((x1["status"].as_str(), x1["reason"].as_str()), (Some("unattributed"), Some("click_offer_mismatch")));
    // The replay is booked as a zero-amount duplicate of the first.
    let r1: Vec<_> = ledger.iter().filter(|e| e["txid"] == "R1" && e["kind"] == "commission").collect();
    let paid: Vec<_> = r1.iter().filter(|e| e["status"] != "duplicate").collect();
    assert_eq!(paid.len(), 1, "a replay was paid twice: {r1:#?}");
    assert_eq!(paid[0]["amount"], "2.50");
    assert!(r1.iter().filter(|e| e["status"] == "duplicate").all(|e| e["amount"] == "0.00"), "{r1:#?}");
    let untagged_paid = ledger.iter().filter(|e| e["txid"] == sig_txid.as_str() && e["status"] != "duplicate");
    assert_eq!(untagged_paid.count(), 1, "a replayed signature without txid was paid twice: {ledger:#?}");
}

#[test]
fn credentials_rotate_without_downtime_and_a_missing_secret_keeps_the_old_program() {
    let env = Env::new("");
    let server = env.serve();
    let cid = server.get("/c/demo").click_id();
    let postback = |txid: &str, token: &str| {
        server.get(&format!("/postback?cid={cid}&offer=shoes&txid={txid}&token={token}")).status
    };
    let new_token = "acme-rotated-token-0123456789";
    let secrets = env.tmp.path().join("secrets.toml");
    let program = std::fs::read_to_string(env.program()).unwrap();
    let with_tokens =
        |names: &str| program.replace("postback_tokens = [\"acme-token\"]", &format!("postback_tokens = [{names}]"));

    // 1. Both tokens at once: the advertiser moves over while the old one still works.
    std::fs::write(&secrets, format!("{}acme-token-2 = \"{new_token}\"\n", example_secrets())).unwrap();
    std::fs::write(env.program(), with_tokens("\"acme-token\", \"acme-token-2\"")).unwrap();
    assert_eq!(server.reload(), Ok(true));
    assert_eq!(postback("ROT1", TOKEN), 200);
    assert_eq!(postback("ROT2", new_token), 200);
    // 2. The old one removed.
    std::fs::write(env.program(), with_tokens("\"acme-token-2\"")).unwrap();
    assert_eq!(server.reload(), Ok(true));
    assert_eq!(postback("ROT3", TOKEN), 403);
    assert_eq!(postback("ROT4", new_token), 200);
    // 3. A value changed in the store takes effect on reload, though the program did not change.
    let newer = "acme-newer-token-0123456789";
    std::fs::write(&secrets, format!("{}acme-token-2 = \"{newer}\"\n", example_secrets())).unwrap();
    assert_eq!(server.reload(), Ok(false), "the program itself is unchanged");
    assert_eq!(postback("ROT5", newer), 200);
    assert_eq!(postback("ROT6", new_token), 403);
    // 4. A program naming a secret the store lacks is refused; the old program stays in force.
    std::fs::write(env.program(), with_tokens("\"acme-token-3\"")).unwrap();
    let err = server.reload().unwrap_err();
    assert!(err.contains("secret \"acme-token-3\" is not in the secrets store"), "{err}");
    assert_eq!(postback("ROT7", newer), 200);
}

#[test]
fn oversized_and_non_utf8_click_values_are_bounded() {
    let env = Env::new("");
    let server = env.serve();
    // Percent-encoded invalid UTF-8 decodes lossily; an over-long value is cut on a char
    // boundary; non-UTF-8 header bytes are dropped, never stored raw.
    let r = server.get(&format!("/c/demo?sub1=%FF%FE%C0&sub2={}&src={}", "%C3%A9".repeat(200), "y".repeat(500)));
    check_redirect(&r, "non-UTF-8 and oversized values");
    let raw = b"GET /c/demo?sub1=ua HTTP/1.1\r\nHost: t\r\nUser-Agent: Mozilla \xff\xfe\r\nReferer: https://r.example/\xc0\r\nCookie: tally_cid=\xff\r\n\r\n".to_vec();
    let r = Conn::open(server.addr).try_send(&raw).unwrap();
    check_redirect(&r, "non-UTF-8 headers");
    let r = server.get(&format!("/c/demo?sub1=ua2&x={}", "z".repeat(12_000)));
    assert!(r.status == 302 || r.status == 414 || r.status == 431, "{}", r.status);

    let events = events(&env.data());
    let clicks = of_type(&events, "click");
    let first = clicks.iter().find(|c| c["sub1"] == "\u{FFFD}\u{FFFD}\u{FFFD}").unwrap();
    assert_eq!(first["sub2"].as_str().unwrap(), "\u{e9}".repeat(128));
    assert_eq!(first["source"].as_str().unwrap().len(), 128);
    assert_ne!(first["flags"].as_u64().unwrap() & 32, 0, "truncation is flagged");
    let ua = clicks.iter().find(|c| c["sub1"] == "ua").unwrap();
    assert_eq!(ua["user_agent"], "");
    assert_eq!(ua["referrer"], "");
    assert_eq!(ua["prior_click"], "", "{ua}");
}
