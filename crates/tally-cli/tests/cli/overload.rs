//! Overload against a `tally serve` process whose log writer is throttled by a test switch
//! (an environment variable the log reads once per process, so these cannot run in the
//! test process): the queue-full policy holds and memory stays bounded.

use crate::common::*;

/// With the writer throttled and a tiny queue, the queue-full policy holds: clicks still
/// redirect and are counted unrecorded; conversions get 503 + Retry-After, never 2xx; the
/// metrics count exactly what was shed; and nothing answered 2xx is missing from the log.
#[test]
fn a_full_queue_sheds_conversions_with_503_and_still_redirects_clicks() {
    let env = Env::build("", "queue_capacity = 1\nmax_batch = 1", "");
    let mut server = env.spawn_with_env(&[(tally_log::testing::COMMIT_DELAY_ENV, "200")]);
    let cid = server.get("/c/demo").click_id();
    let addr = server.addr;
    let workers: Vec<_> = (0..12)
        .map(|i| {
            let cid = cid.clone();
            std::thread::spawn(move || {
                let mut conn = Conn::open(addr);
                let click = conn.send(&format!("GET /c/demo?sub1=q{i} HTTP/1.1\r\nHost: t\r\n\r\n"));
                let pb = conn.send(&format!(
                    "GET /postback?cid={cid}&offer=shoes&txid=Q{i}&token={TOKEN} HTTP/1.1\r\nHost: t\r\n\r\n"
                ));
                (click, pb)
            })
        })
        .collect();
    let results: Vec<(Resp, Resp)> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    assert!(results.iter().all(|(c, _)| c.status == 302), "every click redirects");
    let shed: Vec<&Resp> = results.iter().map(|(_, p)| p).filter(|p| p.status == 503).collect();
    let accepted = results.iter().filter(|(_, p)| p.status == 200).count();
    assert_eq!(shed.len() + accepted, 12, "a postback is either accepted or 503");
    assert!(!shed.is_empty(), "a queue of 1 behind a throttled writer must shed something");
    assert!(shed.iter().all(|p| p.header("retry-after") == Some("1") && p.json()["status"] == "error"));

    let metrics = server.metrics();
    let value = |needle: &str| -> u64 {
        metrics.lines().find(|l| l.starts_with(needle)).and_then(|l| l.rsplit(' ').next()).unwrap().parse().unwrap()
    };
    assert_eq!(value("tally_conversions_total{source=\"postback\",outcome=\"shed\"}"), shed.len() as u64);
    assert_eq!(value("tally_conversions_total{source=\"postback\",outcome=\"accepted\"}"), accepted as u64);
    let unrecorded = value("tally_clicks_unrecorded_total{cause=\"queue_full\"}");
    let recorded = value("tally_clicks_recorded_total{kind=\"human\"}");
    assert_eq!(unrecorded + recorded, 13);
    assert!(server.stop());

    let events = events(&env.data());
    assert_eq!(of_type(&events, "conversion").len(), accepted);
    assert_eq!(of_type(&events, "click").len() as u64, recorded);
}

/// Resident and peak memory of a process, in KiB, from /proc.
fn rss_kib(pid: i32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Overload: 64 connections flood clicks and postbacks at a writer throttled far below the
/// offered rate, with a queue of 16. Memory stays bounded (the queue, not the backlog, holds
/// events), every click redirects, every postback is 200 or 503, and the metrics count
/// exactly what the clients saw shed; the log holds exactly what was acknowledged.
#[test]
fn overload_keeps_memory_bounded_and_the_metrics_count_exactly_what_was_shed() {
    let env = Env::build("", "queue_capacity = 16", "");
    let mut server = env.spawn_with_env(&[(tally_log::testing::COMMIT_DELAY_ENV, "10")]);
    let cid = server.get("/c/demo").click_id();
    let (rss_before, _) = rss_kib(server.pid());
    let addr = server.addr;
    let (conns, per_conn) = (64, 40);
    let workers: Vec<_> = (0..conns)
        .map(|t| {
            let cid = cid.clone();
            std::thread::spawn(move || {
                let mut conn = Conn::open(addr);
                let (mut clicks, mut accepted, mut shed) = (0u64, 0u64, 0u64);
                for i in 0..per_conn {
                    let c = conn.send(&format!("GET /c/demo?sub1=o{t}-{i} HTTP/1.1\r\nHost: t\r\n\r\n"));
                    assert_eq!(c.status, 302, "clicks redirect under overload");
                    clicks += 1;
                    let p = conn.send(&format!(
                        "GET /postback?cid={cid}&offer=shoes&txid=O{t}-{i}&token={TOKEN} HTTP/1.1\r\nHost: t\r\n\r\n"
                    ));
                    match p.status {
                        200 => accepted += 1,
                        503 => shed += 1,
                        s => panic!("postback answered {s} under overload"),
                    }
                }
                (clicks, accepted, shed)
            })
        })
        .collect();
    let (mut clicks, mut accepted, mut shed) = (1u64, 0u64, 0u64);
    for w in workers {
        let (c, a, s) = w.join().unwrap();
        clicks += c;
        accepted += a;
        shed += s;
    }
    let (rss_after, peak) = rss_kib(server.pid());
    println!(
        "overload: {clicks} clicks, {accepted} postbacks accepted, {shed} shed; RSS {rss_before} KiB before, \
         {rss_after} KiB after, peak {peak} KiB"
    );
    assert!(shed > 0, "a queue of 16 behind a throttled writer must shed under 64 connections");
    // Generous: the queue holds 16 events; 64 MiB over the idle size would mean a backlog
    // is growing somewhere.
    assert!(peak < rss_before + 64 * 1024, "memory grew from {rss_before} KiB to a peak of {peak} KiB");

    let metrics = server.metrics();
    let value = |needle: &str| -> u64 {
        metrics.lines().find(|l| l.starts_with(needle)).and_then(|l| l.rsplit(' ').next()).unwrap().parse().unwrap()
    };
    assert_eq!(value("tally_conversions_total{source=\"postback\",outcome=\"shed\"}"), shed);
    assert_eq!(value("tally_conversions_total{source=\"postback\",outcome=\"accepted\"}"), accepted);
    let unrecorded = value("tally_clicks_unrecorded_total{cause=\"queue_full\"}");
    let recorded = value("tally_clicks_recorded_total{kind=\"human\"}");
    assert_eq!(unrecorded + recorded, clicks);
    assert!(server.stop());

    let events = events(&env.data());
    assert_eq!(of_type(&events, "conversion").len() as u64, accepted);
    assert_eq!(of_type(&events, "click").len() as u64, recorded);
}
