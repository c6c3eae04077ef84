//! HTTP abuse against the real server (in-process, real sockets): slowloris, slow bodies, oversized request lines,
//! headers and bodies, too many headers. Each attack gets its limit's status or is closed,
//! and normal clients keep being served meanwhile; their latency and throughput during the
//! attack are printed (run with `--nocapture`), never asserted on.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;

/// How an attack connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// The server answered with this status (and then closed or would close).
    Status(u16),
    /// The server closed or reset the connection without a response.
    Closed,
    /// Still open at the deadline: the limit did not hold.
    StillOpen,
}

/// Normal traffic during an attack: keep-alive clicks on `threads` connections, a fresh
/// connection every 20 requests (so a full accept queue would show), until `stop` is set.
struct Bystanders {
    stop: Arc<AtomicBool>,
    handles: Vec<std::thread::JoinHandle<(Vec<Duration>, usize)>>,
    started: Instant,
}

impl Bystanders {
    fn start(addr: SocketAddr, threads: usize) -> Bystanders {
        let stop = Arc::new(AtomicBool::new(false));
        let handles = (0..threads)
            .map(|t| {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    let (mut lat, mut failed) = (Vec::new(), 0);
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let mut conn = Conn::open(addr);
                        for _ in 0..20 {
                            let req = format!("GET /c/demo?sub1=normal-{t}-{i} HTTP/1.1\r\nHost: t\r\n\r\n");
                            i += 1;
                            let at = Instant::now();
                            match conn.try_send(req.as_bytes()) {
                                Ok(r) if r.status == 302 => lat.push(at.elapsed()),
                                _ => {
                                    failed += 1;
                                    break;
                                }
                            }
                        }
                    }
                    (lat, failed)
                })
            })
            .collect();
        Bystanders { stop, handles, started: Instant::now() }
    }

    /// Stops them, prints their figures, and returns (served, failed).
    fn finish(self, during: &str) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        let elapsed = self.started.elapsed();
        let (mut lat, mut failed) = (Vec::new(), 0);
        for h in self.handles {
            let (l, f) = h.join().unwrap();
            lat.extend(l);
            failed += f;
        }
        lat.sort();
        let pct = |p: f64| lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1))).copied();
        println!(
            "normal clients during {during}: {} served, {failed} failed in {:.2} s ({:.0} req/s), p50 {:?}, p99 {:?}, max {:?}",
            lat.len(),
            elapsed.as_secs_f64(),
            lat.len() as f64 / elapsed.as_secs_f64(),
            pct(0.50).unwrap_or_default(),
            pct(0.99).unwrap_or_default(),
            lat.last().copied().unwrap_or_default(),
        );
        (lat.len(), failed)
    }
}

/// Reads what the server sends on `s` until it closes; the status of its response, if any.
fn outcome_of(s: &mut TcpStream, wait: Duration) -> Outcome {
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                // One response is all we wait for; the server need not close after it.
                if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if buf.is_empty() {
                    return Outcome::StillOpen;
                }
                break;
            }
            // A reset after the server gave up on us is a close.
            Err(_) => break,
        }
    }
    status_of(&buf)
}

fn status_of(buf: &[u8]) -> Outcome {
    let text = String::from_utf8_lossy(buf);
    match text.strip_prefix("HTTP/1.1 ").and_then(|r| r.get(..3)).and_then(|s| s.parse().ok()) {
        Some(status) => Outcome::Status(status),
        None => Outcome::Closed,
    }
}

/// Many connections each trickle a request head one byte at a time; the header timeout
/// must cut every one of them while normal clicks are answered.
#[test]
fn slowloris_connections_are_cut_off_while_normal_clients_are_served() {
    const ATTACKERS: usize = 200;
    let env = Env::build("header_read_timeout_ms = 500", "", "");
    let server = env.serve();
    let bystanders = Bystanders::start(server.addr, 4);

    let head = b"GET /c/demo HTTP/1.1\r\nHost: t\r\nX-Slow-0: a\r\nX-Slow-1: b\r\nX-Slow-2: c\r\nX-Slow-3: d\r\nX-Slow-4: e\r\nX-Slow-5: f\r\nX-Slow-6: g\r\nX-Slow-7: h\r\nX-Slow-8: i\r\nX-Slow-9: j\r\n";
    let started = Instant::now();
    let mut open: Vec<(TcpStream, usize)> = (0..ATTACKERS)
        .map(|_| {
            let s = TcpStream::connect(server.addr).unwrap();
            s.set_nonblocking(true).unwrap();
            (s, 0)
        })
        .collect();
    let mut outcomes = Vec::new();
    let mut cut_after = Vec::new();
    let deadline = started + Duration::from_secs(20);
    // One byte per connection every 50 ms: the head would take ~10 s to arrive, 20 times the
    // timeout, and never completes before the deadline.
    while !open.is_empty() && Instant::now() < deadline {
        let mut still = Vec::with_capacity(open.len());
        for (mut s, sent) in open {
            let mut probe = [0u8; 512];
            let ended = match s.read(&mut probe) {
                Ok(0) => Some(Outcome::Closed),
                Ok(n) => Some(status_of(&probe[..n])),
                Err(e) if e.kind() == ErrorKind::WouldBlock => None,
                Err(_) => Some(Outcome::Closed),
            };
            let ended = ended.or_else(|| match s.write(&head[sent % head.len()..][..1]) {
                Ok(_) => None,
                Err(e) if e.kind() == ErrorKind::WouldBlock => None,
                Err(_) => Some(Outcome::Closed),
            });
            match ended {
                Some(o) => {
                    outcomes.push(o);
                    cut_after.push(started.elapsed());
                }
                None => still.push((s, sent + 1)),
            }
        }
        open = still;
        std::thread::sleep(Duration::from_millis(50));
    }
    let (served, failed) = bystanders.finish("slowloris");
    let left = open.len();
    outcomes.extend(std::iter::repeat_n(Outcome::StillOpen, left));
    let count = |o: &Outcome| outcomes.iter().filter(|x| *x == o).count();
    println!(
        "slowloris: {ATTACKERS} connections: {} got 408, {} closed, {left} still open; last cut after {:?}",
        count(&Outcome::Status(408)),
        count(&Outcome::Closed),
        cut_after.iter().max().copied().unwrap_or_default(),
    );
    assert_eq!(left, 0, "slowloris connections outlived the header timeout");
    assert!(
        outcomes.iter().all(|o| matches!(o, Outcome::Status(408) | Outcome::Closed)),
        "unexpected answers to a slow head: {outcomes:?}"
    );
    assert!(served > 0 && failed == 0, "normal clients were not all served: {served} served, {failed} failed");
    let events = events(&env.data());
    assert_eq!(of_type(&events, "click").len(), served, "a slowloris head was stored, or a served click was not");
}

/// On a keep-alive connection each request head has the whole timeout from the moment the
/// server starts reading it. The connection's timer was armed for the first head's deadline;
/// the second head, trickled, must be cut at its own deadline: never at the first's (too
/// early), and not left open (the timer re-armed).
#[test]
fn a_second_head_on_a_keep_alive_connection_gets_its_own_timeout() {
    const TIMEOUT: Duration = Duration::from_millis(500);
    let env = Env::build("header_read_timeout_ms = 500", "", "");
    let server = env.serve();
    let mut s = TcpStream::connect(server.addr).unwrap();
    let started = Instant::now();
    // The first head in two parts, so the server waits on its timer (arming it) in between.
    s.write_all(b"GET /c/demo?sub1=first HTTP/1.1\r\nHost: t\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(150));
    s.write_all(b"\r\n").unwrap();
    assert_eq!(outcome_of(&mut s, Duration::from_secs(5)), Outcome::Status(302));
    let answered = Instant::now();
    // The second head, a byte every 50 ms, never complete.
    s.set_nonblocking(true).unwrap();
    let head = b"GET /c/demo?sub1=second HTTP/1.1\r\nHost: t\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut ended = None;
    for b in head.iter().take_while(|_| started.elapsed() < Duration::from_secs(10)) {
        let mut probe = [0u8; 512];
        ended = match s.read(&mut probe) {
            Ok(0) => Some(Outcome::Closed),
            Ok(n) => Some(status_of(&probe[..n])),
            Err(e) if e.kind() == ErrorKind::WouldBlock => match s.write(std::slice::from_ref(b)) {
                Ok(_) => None,
                Err(e) if e.kind() == ErrorKind::WouldBlock => None,
                Err(_) => Some(Outcome::Closed),
            },
            Err(_) => Some(Outcome::Closed),
        };
        if ended.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let cut = answered.elapsed();
    println!("second head cut {cut:?} after the first response: {ended:?}");
    assert!(matches!(ended, Some(Outcome::Status(408) | Outcome::Closed)), "the trickled head was not cut: {ended:?}");
    // Timers never fire early, so anything below the timeout means the first head's deadline
    // cut the second (a 50 ms probe interval is the only slack needed on the late side).
    assert!(cut >= TIMEOUT - Duration::from_millis(50), "cut after {cut:?}, before its own timeout");
    let events = events(&env.data());
    let subs: Vec<_> = of_type(&events, "click").iter().map(|c| c["sub1"].as_str().unwrap_or("").to_owned()).collect();
    assert_eq!(subs, ["first"], "only the complete head is a click");
}

/// A postback whose body trickles in is cut off by the body timeout (hyper's header timeout
/// does not cover bodies), answered 408 or closed, and stores nothing.
#[test]
fn slow_postback_bodies_are_cut_off_and_store_nothing() {
    const ATTACKERS: usize = 50;
    let env = Env::build("body_read_timeout_ms = 500", "", "");
    let server = env.serve();
    let cid = server.get("/c/demo").click_id();
    let bystanders = Bystanders::start(server.addr, 2);
    let body = format!("cid={cid}&offer=shoes&txid=SLOW&token={TOKEN}");
    let started = Instant::now();
    let mut conns: Vec<TcpStream> = (0..ATTACKERS)
        .map(|_| {
            let mut s = TcpStream::connect(server.addr).unwrap();
            let head = format!(
                "POST /postback HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            s.write_all(head.as_bytes()).unwrap();
            s.write_all(&body.as_bytes()[..4]).unwrap();
            s
        })
        .collect();
    // Everything but the last byte, slowly; the body never completes.
    for i in 4..body.len() - 1 {
        if started.elapsed() > Duration::from_secs(3) {
            break;
        }
        for s in &mut conns {
            let _ = s.write_all(&body.as_bytes()[i..=i]);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let outcomes: Vec<Outcome> = conns.iter_mut().map(|s| outcome_of(s, Duration::from_secs(15))).collect();
    let elapsed = started.elapsed();
    let (served, failed) = bystanders.finish("slow bodies");
    println!("slow bodies: {ATTACKERS} connections ended after {elapsed:?}: {outcomes:?}");
    assert!(
        outcomes.iter().all(|o| matches!(o, Outcome::Status(408) | Outcome::Closed)),
        "slow bodies were not cut off: {outcomes:?}"
    );
    assert!(served > 0 && failed == 0, "normal clients were not all served: {served} served, {failed} failed");
    let events = events(&env.data());
    assert!(of_type(&events, "conversion").is_empty(), "a slow body was stored");
}

/// Each oversized or malformed request gets its limit's status (or is closed), from many
/// connections at once, while normal clients are served; nothing of them is stored.
#[test]
fn oversized_requests_get_their_limit_while_normal_clients_are_served() {
    let env = Env::new("");
    let server = env.serve();
    let cid = server.get("/c/demo").click_id();
    let bystanders = Bystanders::start(server.addr, 4);
    let pb = format!("cid={cid}&offer=shoes&txid=BIG&token={TOKEN}");
    let many: String = (0..100).map(|i| format!("X-H{i}: v\r\n")).collect();
    // (name, request, statuses that are its limit's answer)
    let attacks: Vec<(&str, Vec<u8>, &[u16])> = vec![
        (
            "request line of 20 KiB",
            format!("GET /c/demo?sub1={} HTTP/1.1\r\nHost: t\r\n\r\n", "a".repeat(20 * 1024)).into_bytes(),
            &[414, 431],
        ),
        (
            "request line of 100 KiB",
            format!("GET /c/demo?sub1={} HTTP/1.1\r\nHost: t\r\n\r\n", "a".repeat(100 * 1024)).into_bytes(),
            &[414, 431],
        ),
        (
            "one header of 40 KiB",
            format!("GET /c/demo HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n", "a".repeat(40 * 1024)).into_bytes(),
            &[431],
        ),
        (
            "headers of 20 KiB in 1 KiB lines",
            format!(
                "GET /c/demo HTTP/1.1\r\nHost: t\r\n{}\r\n",
                (0..20).map(|i| format!("X-L{i}: {}\r\n", "b".repeat(1000))).collect::<String>()
            )
            .into_bytes(),
            &[431],
        ),
        ("100 headers", format!("GET /c/demo HTTP/1.1\r\nHost: t\r\n{many}\r\n").into_bytes(), &[431]),
        (
            "postback body of 1 MiB (Content-Length)",
            format!(
                "POST /postback?token={TOKEN} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{pb}&pad={}",
                pb.len() + 5 + 1024 * 1024,
                "p".repeat(1024 * 1024)
            )
            .into_bytes(),
            &[413],
        ),
        (
            "postback declaring 10 GiB",
            format!("POST /postback?token={TOKEN} HTTP/1.1\r\nHost: t\r\nContent-Length: 10737418240\r\n\r\n{pb}")
                .into_bytes(),
            &[413],
        ),
        (
            "postback body of 200 KiB (chunked)",
            {
                let mut r = format!("POST /postback?token={TOKEN} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
                    .into_bytes();
                r.extend(format!("{:x}\r\n{pb}&pad=\r\n", pb.len() + 5).bytes());
                for _ in 0..25 {
                    r.extend(format!("2000\r\n{}\r\n", "c".repeat(0x2000)).bytes());
                }
                r.extend(b"0\r\n\r\n");
                r
            },
            &[413],
        ),
        (
            "chunk size overflowing u64",
            format!(
                "POST /postback?token={TOKEN} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFFF\r\n{pb}\r\n"
            )
            .into_bytes(),
            &[400],
        ),
        (
            "Content-Length and chunked together (smuggling)",
            format!(
                "POST /postback?token={TOKEN} HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /c/demo?sub1=smuggled HTTP/1.1\r\nHost: t\r\n\r\n"
            )
            .into_bytes(),
            &[400],
        ),
        (
            "two Content-Lengths",
            format!(
                "POST /postback?token={TOKEN} HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: {}\r\n\r\n{pb}",
                pb.len()
            )
            .into_bytes(),
            &[400],
        ),
        ("raw non-ASCII in the request line", b"GET /c/demo?sub1=\xff\xfe HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(), &[400]),
        ("NUL in a header", b"GET /c/demo HTTP/1.1\r\nHost: t\r\nX-A: a\x00b\r\n\r\n".to_vec(), &[400]),
        ("bare LF in a header value", b"GET /c/demo HTTP/1.1\r\nHost: t\r\nX-A: a\rb\r\n\r\n".to_vec(), &[400]),
    ];
    // Ten connections per attack, all at once.
    let addr = server.addr;
    let handles: Vec<_> = attacks
        .iter()
        .flat_map(|(name, req, ok)| {
            (0..10).map(move |_| {
                let (name, req, ok) = (name.to_string(), req.clone(), ok.to_vec());
                std::thread::spawn(move || {
                    let mut s = TcpStream::connect(addr).unwrap();
                    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
                    // The server may answer and close before we finish sending: that is fine.
                    let _ = s.write_all(&req);
                    (name, ok, outcome_of(&mut s, Duration::from_secs(10)))
                })
            })
        })
        .collect();
    let results: Vec<(String, Vec<u16>, Outcome)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let (served, failed) = bystanders.finish("oversized requests");
    let mut bad = Vec::new();
    for (name, _, _) in &attacks {
        let seen: Vec<&Outcome> = results.iter().filter(|(n, _, _)| n.as_str() == *name).map(|(_, _, o)| o).collect();
        println!("{name}: {seen:?}");
    }
    for (name, ok, outcome) in &results {
        let fine = match outcome {
            Outcome::Status(s) => ok.contains(s),
            Outcome::Closed => true,
            Outcome::StillOpen => false,
        };
        if !fine {
            bad.push(format!("{name}: {outcome:?}, expected one of {ok:?} or closed"));
        }
    }
    assert!(bad.is_empty(), "{bad:#?}");
    assert!(served > 0 && failed == 0, "normal clients were not all served: {served} served, {failed} failed");
    let events = events(&env.data());
    assert!(of_type(&events, "conversion").is_empty(), "an oversized postback was stored");
    let clicks = of_type(&events, "click");
    let normal = clicks.iter().filter(|c| c["sub1"].as_str().unwrap_or("").starts_with("normal-")).count();
    assert_eq!(normal, served, "a served click is missing");
    // The one click made to get a click ID, and none from the attacks. (A request pipelined
    // behind a refused one is never read: the connection is closed after the error.)
    assert_eq!(
        clicks.len(),
        served + 1,
        "an attack stored a click: {:?}",
        clicks.iter().map(|c| &c["sub1"]).collect::<Vec<_>>()
    );
}
