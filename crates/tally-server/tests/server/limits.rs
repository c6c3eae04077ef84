//! HTTP limits, connection caps and privacy options, against the real server (in-process).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::common::*;

#[test]
fn connections_beyond_the_cap_wait_for_a_free_slot() {
    let env = Env::build("max_connections = 2", "", "");
    let server = env.serve();
    let mut a = Conn::open(server.addr);
    let mut b = Conn::open(server.addr);
    assert_eq!(a.send("GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n").status, 200);
    assert_eq!(b.send("GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n").status, 200);
    // A third connection is queued by the kernel, not served, while both slots are held.
    let mut c = TcpStream::connect(server.addr).unwrap();
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    c.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let mut buf = [0u8; 64];
    assert!(c.read(&mut buf).is_err(), "served beyond max_connections");
    drop(a);
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut resp = Vec::new();
    c.read_to_end(&mut resp).unwrap();
    assert!(String::from_utf8_lossy(&resp).starts_with("HTTP/1.1 200"));
    drop(b);
}

#[test]
fn privacy_options_cookies_off_forwarded_for_from_trusted_proxy_and_fallback() {
    let env = Env::build(
        "fallback_url = \"https://network.example/unknown\"",
        "",
        "cookies = false\ntrusted_proxies = [\"127.0.0.1\"]\nip_mode = \"full\"",
    );
    let server = env.serve();
    let r = server.send("GET /c/demo HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 6.6.6.6, 198.51.100.23\r\n\r\n");
    assert_eq!(r.status, 302);
    assert!(r.header("set-cookie").is_none());
    let r = server.get("/c/unknown-code");
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location"), Some("https://network.example/unknown"));
    let clicks = events(&env.data());
    let clicks = of_type(&clicks, "click");
    assert_eq!(clicks.len(), 1, "an unknown link records nothing");
    assert_eq!(clicks[0]["ip"], "198.51.100.23");

    // Not a trusted proxy: X-Forwarded-For is ignored, and the default truncation applies.
    let env = Env::new("");
    let server = env.serve();
    server.send("GET /c/demo HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 198.51.100.23\r\n\r\n");
    assert_eq!(of_type(&events(&env.data()), "click")[0]["ip"], "127.0.0.0");
}

#[test]
fn hashed_ips_do_not_reveal_the_address() {
    let env = Env::build("", "", "ip_mode = \"hash\"\nip_hash_key = \"a-long-enough-secret\"");
    let server = env.serve();
    server.get("/c/demo");
    server.get("/c/demo");
    let events = events(&env.data());
    let ips: Vec<&str> = of_type(&events, "click").iter().map(|c| c["ip"].as_str().unwrap()).collect();
    assert_eq!(ips[0].len(), 32);
    assert_eq!(ips[0], ips[1], "same address, same day, same hash");
    assert!(!ips[0].contains("127"));
}
