//! The edge's click fast path (`tally-edge`'s `fast` module) against the real server (in-process, real sockets):
//! clicks it answers look exactly like hyper's, connections move to hyper on the first
//! request it does not take, and it keeps hyper's connection rules (pipelining, the
//! header-read timeout, `Connection: close`, graceful shutdown).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::common::*;

fn header_names(r: &Resp) -> Vec<String> {
    r.headers.iter().map(|(k, _)| k.to_ascii_lowercase()).collect()
}

/// Sends `request` on a new connection and reads everything until the server closes it.
fn until_closed(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(request).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    raw
}

/// Reads until the server closes the connection (or `limit` passes): true if it closed.
fn closes_within(mut s: TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 1024];
    let started = Instant::now();
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
        if started.elapsed() > limit {
            return false;
        }
    }
}

/// The same click answered by the fast path and by hyper (a `TE` header sends it there):
/// the same status and the same headers in the same order. The same for an unknown link.
#[test]
fn fast_and_hyper_answers_are_alike() {
    let env = Env::new("");
    let server = env.serve();
    let fast = server.get("/c/demo?sub1=a");
    let slow = server.send("GET /c/demo?sub1=a HTTP/1.1\r\nHost: t\r\nTE: trailers\r\n\r\n");
    assert_eq!((fast.status, slow.status), (302, 302));
    assert_eq!(header_names(&fast), header_names(&slow));
    assert_eq!(
        header_names(&fast),
        ["location", "cache-control", "referrer-policy", "set-cookie", "content-length", "date"]
    );
    assert_eq!(fast.header("location").unwrap().replace(&fast.click_id(), "CID"), {
        slow.header("location").unwrap().replace(&slow.click_id(), "CID")
    });

    let fast = server.get("/c/no-such-link");
    let slow = server.send("GET /c/no-such-link HTTP/1.1\r\nHost: t\r\nTE: trailers\r\n\r\n");
    assert_eq!((fast.status, slow.status), (404, 404));
    assert_eq!(header_names(&fast), header_names(&slow));
    assert_eq!(fast.body, slow.body);
    let head = server.send("HEAD /c/no-such-link HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!((head.status, head.header("content-length")), (404, Some(fast.body.len().to_string().as_str())));

    let events = events(&server.dir);
    assert_eq!(of_type(&events, "click").len(), 2, "both answered clicks stored, the 404s not");
}

/// One keep-alive connection: clicks on the fast path, then a postback (hyper takes the
/// connection from there, with the bytes already read), then a click again, through hyper.
#[test]
fn a_connection_moves_to_hyper_on_its_first_other_request() {
    let env = Env::new("");
    let server = env.serve();
    let mut conn = Conn::open(server.addr);
    let first = conn.send("GET /c/demo?sub1=one HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(first.status, 302);
    let cid = first.click_id();
    let postback = conn.send(&format!(
        "GET /postback?cid={cid}&offer=shoes&txid=T-1&amount=10.00&token={TOKEN} HTTP/1.1\r\nHost: t\r\n\r\n"
    ));
    assert_eq!(postback.status, 200, "{}", postback.text());
    let second = conn.send("GET /c/demo?sub1=two HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(second.status, 302);
    assert_ne!(second.click_id(), cid);

    let events = events(&server.dir);
    let clicks = of_type(&events, "click");
    assert_eq!(clicks.len(), 2);
    assert_eq!(of_type(&events, "conversion").len(), 1);
    assert_eq!(clicks[0]["sub1"], "one");
    assert_eq!(clicks[1]["sub1"], "two");
}

/// Requests pipelined in one write are answered in order, each recorded once; a head that
/// arrives in pieces is served once it is complete.
#[test]
fn pipelined_and_split_heads_are_served() {
    let env = Env::new("");
    let server = env.serve();
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_nodelay(true).unwrap();
    s.write_all(b"GET /c/demo?sub1=p1 HTTP/1.1\r\nHost: t\r\n\r\nGET /c/demo?sub1=p2 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut conn = Conn::from_stream(s.try_clone().unwrap());
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut answers = Vec::new();
    for _ in 0..2 {
        // Each `send` of nothing just reads the next response.
        answers.push(conn.try_send(b"").unwrap());
    }
    assert!(answers[0].header("location").unwrap().ends_with("s1=p1"), "{:?}", answers[0]);
    assert!(answers[1].header("location").unwrap().ends_with("s1=p2"), "{:?}", answers[1]);

    for piece in [&b"GET /c/demo?sub1=sp"[..], b"lit HTTP/1.1\r\nHo", b"st: t\r\n", b"\r\n"] {
        s.write_all(piece).unwrap();
        std::thread::sleep(Duration::from_millis(30));
    }
    let split = conn.try_send(b"").unwrap();
    assert!(split.header("location").unwrap().ends_with("s1=split"), "{split:?}");

    let subs: Vec<_> = of_type(&events(&server.dir), "click").iter().map(|c| c["sub1"].clone()).collect();
    assert_eq!(subs, ["p1", "p2", "split"]);
}

/// `Connection: keep-alive` (what browsers send) keeps the connection; `close` is answered
/// with `connection: close` and the connection closes; HTTP/1.0 is hyper's and still works.
#[test]
fn connection_options_and_http_1_0_are_honoured() {
    let env = Env::new("");
    let server = env.serve();
    let mut conn = Conn::open(server.addr);
    for _ in 0..2 {
        let r = conn.send("GET /c/demo HTTP/1.1\r\nHost: t\r\nConnection: keep-alive\r\n\r\n");
        assert_eq!((r.status, r.header("connection")), (302, None));
    }

    let raw = until_closed(server.addr, b"GET /c/demo HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert!(raw.starts_with("HTTP/1.1 302 Found\r\n"), "{raw}");
    assert!(raw.contains("\r\nconnection: close\r\n"), "{raw}");

    let raw = until_closed(server.addr, b"GET /c/demo?sub1=old HTTP/1.0\r\n\r\n");
    assert!(raw.starts_with("HTTP/1.0 302 Found\r\n"), "{raw}");

    let clicks = of_type(&events(&server.dir), "click").len();
    assert_eq!(clicks, 4);
}

/// The header-read timeout covers keep-alive idle time on the fast path, as hyper's does:
/// a connection that sends nothing after its click is closed once the timeout passes.
#[test]
fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() {
    let env = Env::build("header_read_timeout_ms = 300", "", "");
    let server = env.serve();
    let mut conn = Conn::open(server.addr);
    assert_eq!(conn.send("GET /c/demo HTTP/1.1\r\nHost: t\r\n\r\n").status, 302);
    let s = TcpStream::connect(server.addr).unwrap();
    let mut half = s.try_clone().unwrap();
    // Part of a head, never finished.
    half.write_all(b"GET /c/demo HTTP/1.1\r\nHo").unwrap();
    assert!(closes_within(s, Duration::from_secs(5)), "a partial head outlived the header timeout");
    let idle = TcpStream::connect(server.addr).unwrap();
    let mut c = Conn::from_stream(idle.try_clone().unwrap());
    assert_eq!(c.try_send(b"GET /c/demo HTTP/1.1\r\nHost: t\r\n\r\n").unwrap().status, 302);
    assert!(closes_within(idle, Duration::from_secs(5)), "an idle keep-alive connection outlived the timeout");
}

/// SIGTERM closes idle fast-path connections at once instead of waiting out the drain
/// timeout (5 s in these tests), and the server exits cleanly.
#[test]
fn sigterm_closes_idle_fast_path_connections_at_once() {
    let env = Env::build("header_read_timeout_ms = 60000", "", "");
    let mut server = env.serve();
    let idle = TcpStream::connect(server.addr).unwrap();
    let mut c = Conn::from_stream(idle.try_clone().unwrap());
    assert_eq!(c.try_send(b"GET /c/demo HTTP/1.1\r\nHost: t\r\n\r\n").unwrap().status, 302);
    let started = Instant::now();
    assert!(server.stop(), "tally did not exit cleanly on SIGTERM");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(4), "shutdown waited {took:?} for an idle connection");
    assert!(closes_within(idle, Duration::from_secs(1)));
    assert_eq!(of_type(&events(&server.dir), "click").len(), 1);
}
