//! Attribution end to end: clicks and conversions sent over HTTP to `tally serve` show up in
//! `tally commissions` and `tally report`; the worker also runs as its own process, survives
//! SIGKILL, and reports its lag.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::*;

fn commissions(dir: &Path, extra: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec!["commissions", "--data-dir", dir.to_str().unwrap(), "--format", "jsonl"];
    args.extend_from_slice(extra);
    let out = tally(&args);
    assert!(out.status.success(), "commissions failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Waits until the ledger holds `n` entries (the worker runs behind the edge).
fn ledger_of(dir: &Path, n: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if dir.join("attribution").join("CURRENT").exists() {
            let entries = commissions(dir, &[]);
            if entries.len() >= n || Instant::now() > deadline {
                return entries;
            }
        }
        assert!(Instant::now() < deadline, "no attribution state after 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn report(dir: &Path, by: &str, extra: &[&str]) -> Vec<Vec<String>> {
    let mut args = vec!["report", "--data-dir", dir.to_str().unwrap(), "--by", by, "--format", "csv"];
    args.extend_from_slice(extra);
    let out = tally(&args);
    assert!(out.status.success(), "report failed: {}", String::from_utf8_lossy(&out.stderr));
    let mut r = csv::Reader::from_reader(out.stdout.as_slice());
    let mut rows = vec![r.headers().unwrap().iter().map(str::to_owned).collect()];
    rows.extend(r.records().map(|rec| rec.unwrap().iter().map(str::to_owned).collect()));
    rows
}

fn postback(server: &TestServer, query: &str) -> Resp {
    let r = server.get(&format!("/postback?{query}&token={TOKEN}"));
    assert!(r.status == 200, "{query}: {} {}", r.status, r.text());
    r
}

fn find<'a>(entries: &'a [serde_json::Value], txid: &str, kind: &str) -> &'a serde_json::Value {
    entries.iter().find(|e| e["txid"] == txid && e["kind"] == kind).unwrap_or_else(|| panic!("no {kind} {txid}"))
}

#[test]
fn conversions_sent_over_http_show_up_in_commissions_and_reports() {
    let env = Env::new("");
    let server = env.serve();
    let c1 = server.get("/c/demo?sub1=spring").click_id();
    let c2 = server.get("/c/demo?sub1=spring").click_id();
    let _c3 = server.get("/c/demo?sub1=autumn").click_id();
    // A HEAD request: redirected, but not a person.
    let head = server.send("HEAD /c/demo HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(head.status, 302);

    postback(&server, &format!("cid={c1}&offer=shoes&goal=signup&txid=S1"));
    postback(&server, &format!("cid={c2}&offer=shoes&goal=sale&txid=O1&amount=100.05"));
    postback(&server, &format!("cid={c2}&offer=shoes&goal=sale&txid=O2&amount=20.00"));
    postback(&server, "coupon=spring10&offer=shoes&goal=signup&txid=S2");
    postback(&server, &format!("cid={c1}&offer=shoes&goal=signup&txid=S1")); // repeat
    postback(&server, "offer=shoes&goal=sale&txid=O2&status=refunded");
    postback(&server, "cid=01ARZ3NDEKTSV4RRFFQ69G5FAV&offer=shoes&goal=signup&txid=S3");

    let entries = ledger_of(&env.data(), 7);
    assert_eq!(entries.len(), 7, "{entries:#?}");
    let s1 = find(&entries, "S1", "commission");
    assert_eq!(
        (s1["status"].as_str(), s1["amount"].as_str(), s1["currency"].as_str()),
        (Some("approved"), Some("2.50"), Some("USD"))
    );
    assert_eq!(
        (s1["affiliate"].as_str(), s1["click_id"].as_str(), s1["sub1"].as_str()),
        (Some("aff1"), Some(c1.as_str()), Some("spring"))
    );
    assert_eq!(s1["rule"], "goal signup: fixed 2.50");
    // 8% of 100.05 = 8.004 -> 8.00
    let o1 = find(&entries, "O1", "commission");
    assert_eq!(
        (o1["status"].as_str(), o1["amount"].as_str(), o1["sale_amount"].as_str()),
        (Some("pending"), Some("8.00"), Some("100.05"))
    );
    assert_eq!(o1["rule"], "goal sale: revshare 800 bps of 100.05");
    let o2 = find(&entries, "O2", "commission");
    assert_eq!((o2["status"].as_str(), o2["reason"].as_str()), (Some("rejected"), Some("refunded")));
    assert_eq!(find(&entries, "O2", "reversal")["refers_to"], o2["id"]);
    // The coupon credits aff2 with aff2's tiered override.
    let s2 = find(&entries, "S2", "commission");
    assert_eq!(
        (s2["affiliate"].as_str(), s2["coupon"].as_str(), s2["amount"].as_str()),
        (Some("aff2"), Some("SPRING10"), Some("2.50"))
    );
    assert!(s2["rule"].as_str().unwrap().starts_with("override aff2 tier 1"), "{}", s2["rule"]);
    let dups: Vec<_> = entries.iter().filter(|e| e["status"] == "duplicate").collect();
    assert_eq!(dups.len(), 1);
    assert_eq!(dups[0]["refers_to"], s1["id"]);
    let s3 = find(&entries, "S3", "commission");
    // That click ID was minted in 2016: long past every window.
    assert_eq!((s3["status"].as_str(), s3["reason"].as_str()), (Some("unattributed"), Some("expired_click")));

    // Filters.
    let aff2 = commissions(&env.data(), &["--affiliate", "aff2"]);
    assert!(aff2.iter().all(|e| e["affiliate"] == "aff2") && aff2.len() == 1);
    let pending = commissions(&env.data(), &["--status", "pending"]);
    assert_eq!(pending.len(), 1);

    // Reports: aff1 had 3 clicks by people (+1 HEAD), 2 credited conversions (S1, O1; O2
    // refunded), revenue 100.05, payout 2.50 + 8.00.
    let rows = report(&env.data(), "affiliate", &[]);
    assert_eq!(
        rows[0],
        [
            "affiliate",
            "currency",
            "clicks",
            "unique_clicks",
            "non_human_clicks",
            "conversions",
            "conversion_rate",
            "revenue",
            "payout",
            "epc"
        ]
    );
    let aff1 = rows.iter().find(|r| r[0] == "aff1").unwrap();
    assert_eq!(aff1[1..], ["USD", "3", "1", "1", "2", "66.67%", "100.05", "10.50", "3.50"]);
    let aff2 = rows.iter().find(|r| r[0] == "aff2").unwrap();
    assert_eq!(aff2[1..], ["USD", "0", "0", "0", "1", "", "0.00", "2.50", ""]);
    let by_sub = report(&env.data(), "sub1", &[]);
    assert!(by_sub.iter().any(|r| r[0] == "spring" && r[2] == "2"), "{by_sub:?}");
    // --tz re-derives the stats from the log: in the program's own zone (UTC), the same rows.
    assert_eq!(report(&env.data(), "affiliate", &["--tz", "UTC"]), rows);
    // In zones 25 hours apart the same events fall on different dates, with the same totals.
    let east = report(&env.data(), "day", &["--tz", "Pacific/Kiritimati"]);
    let west = report(&env.data(), "day", &["--tz", "Pacific/Pago_Pago"]);
    assert!(east.len() == 2 && west.len() == 2 && east[1][0] > west[1][0], "{east:?} {west:?}");
    assert_eq!(east[1][1..], west[1][1..]);
    // --from and --to are days of the zone asked for.
    let west_day = west[1][0].clone();
    assert_eq!(report(&env.data(), "day", &["--tz", "Pacific/Kiritimati", "--to", &west_day]).len(), 1);
    let today = tally(&["report", "--data-dir", env.data().to_str().unwrap(), "--by", "day"]);
    let text = String::from_utf8(today.stdout).unwrap();
    assert!(text.starts_with("day"), "{text}");
    let none = report(&env.data(), "offer", &["--from", "2001-01-01", "--to", "2001-01-31"]);
    assert_eq!(none.len(), 1, "only the header for a range with no data");

    // The whole ledger in one line, and a table for people.
    let d = tally(&["commissions", "--data-dir", env.data().to_str().unwrap(), "--digest"]);
    let text = String::from_utf8(d.stdout).unwrap();
    assert!(text.contains("7 entries") && text.lines().nth(1).unwrap().starts_with("ledger "), "{text}");
    let t = tally(&["commissions", "--data-dir", env.data().to_str().unwrap()]);
    let text = String::from_utf8(t.stdout).unwrap();
    assert!(text.starts_with("id ") && text.contains("expired_click"), "{text}");

    // /metrics exports the in-process worker.
    let m = server.metrics();
    for name in [
        "tally_attribution_position ",
        "tally_attribution_lag_events ",
        "tally_attribution_up 1",
        "tally_attribution_ledger_entries_total{status=\"duplicate\"} 1",
    ] {
        assert!(m.contains(name), "{name} missing from /metrics");
    }
}

#[test]
fn a_conversion_posted_twice_concurrently_pays_once() {
    let env = Env::new("");
    let server = env.serve();
    let cid = server.get("/c/demo").click_id();
    let addr = server.addr;
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let cid = cid.clone();
            std::thread::spawn(move || {
                let req = format!("GET /postback?cid={cid}&offer=shoes&goal=signup&txid=RACE&token={TOKEN} HTTP/1.1\r\nHost: t\r\n\r\n");
                Conn::open(addr).send(&req).status
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 200);
    }
    let entries = ledger_of(&env.data(), 8);
    let paid: Vec<_> = entries.iter().filter(|e| e["status"] == "approved").collect();
    assert_eq!(paid.len(), 1, "{entries:#?}");
    assert_eq!(paid[0]["amount"], "2.50");
    assert_eq!(entries.iter().filter(|e| e["status"] == "duplicate").count(), 7);
}

#[test]
fn bad_arguments_are_named() {
    let env = Env::new("");
    let data = env.data();
    let data = data.to_str().unwrap();
    let err = |args: &[&str]| {
        let out = tally(args);
        assert!(!out.status.success(), "{args:?} should fail");
        String::from_utf8(out.stderr).unwrap()
    };
    assert!(err(&["commissions", "--data-dir", data]).contains("no attribution state here"));
    let server = env.serve();
    server.get("/c/demo");
    ledger_of(&env.data(), 0);
    assert!(err(&["commissions", "--data-dir", data, "--status", "paid"]).contains("unknown status \"paid\""));
    assert!(err(&["commissions", "--data-dir", data, "--digest", "--status", "pending"])
        .contains("--digest covers entries of every status"));
    assert!(err(&["commissions", "--data-dir", data, "--from", "2026-1-01"]).contains("--from: \"2026-1-01\""));
    assert!(err(&["report", "--data-dir", data, "--by", "colour"]).contains("unknown grouping \"colour\""));
    assert!(
        err(&["report", "--data-dir", data, "--by", "day", "--tz", "Mars/Olympus"]).contains("--tz: \"Mars/Olympus\"")
    );
    assert!(
        err(&["report", "--data-dir", data, "--by", "day", "--from", "2026-13-01"]).contains("--from: \"2026-13-01\"")
    );
    assert!(err(&["report", "--data-dir", data, "--by", "day", "--from", "2026-02-01", "--to", "2026-01-01"])
        .contains("--from is after --to"));
    // A second worker on a directory whose server runs one is refused, and says why.
    let e = err(&["attribute", "--config", env.config().to_str().unwrap(), "--once"]);
    assert!(e.contains("is another worker running on it?"), "{e}");
}

#[test]
fn a_separate_worker_process_survives_sigkill_and_ends_with_the_same_ledger() {
    let env = Env::new("");
    env.append_config("[attribution]\nin_process = false\ncommit_every = 7\n");
    let server = env.serve();
    let data = env.data();
    let cfg = env.config();
    let attribute = |extra: &[&str]| {
        let mut cmd = std::process::Command::new(BIN);
        cmd.args(["attribute", "--config", cfg.to_str().unwrap(), "--data-dir", data.to_str().unwrap()]);
        cmd.args(extra);
        cmd
    };

    // Traffic while a worker process is killed and restarted over and over.
    let mut sent = 0;
    for round in 0..6 {
        let mut worker = attribute(&[]).stdout(std::process::Stdio::null()).spawn().unwrap();
        for i in 0..15 {
            let cid = server.get(&format!("/c/demo?sub1=r{round}")).click_id();
            postback(&server, &format!("cid={cid}&offer=shoes&goal=signup&txid=K{round}-{i}"));
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(50 * round));
        worker.kill().unwrap();
        worker.wait().unwrap();
    }
    let out = attribute(&["--once"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let digest = |dir: &Path| {
        let out = tally(&["commissions", "--data-dir", dir.to_str().unwrap(), "--digest"]);
        String::from_utf8(out.stdout).unwrap()
    };
    let killed = digest(&data);
    let entries = commissions(&data, &[]);
    assert_eq!(entries.len(), sent);

    // From scratch, uninterrupted: the same ledger.
    std::fs::rename(data.join("attribution"), env.tmp.path().join("attribution-killed")).unwrap();
    let out = attribute(&["--once"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(digest(&data), killed);

    // The running worker reports its lag on its own metrics listener.
    let mut worker =
        attribute(&["--metrics-listen", "127.0.0.1:0"]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let stdout = worker.stdout.take().unwrap();
    let addr = {
        use std::io::BufRead;
        let mut lines = std::io::BufReader::new(stdout).lines();
        loop {
            let line = lines.next().unwrap().unwrap();
            if let Some(a) = line.strip_prefix("tally attribute metrics on ") {
                break a.parse::<std::net::SocketAddr>().unwrap();
            }
        }
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = Conn::open(addr).send("GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n").text();
        if m.contains("tally_attribution_lag_events 0") && m.contains("tally_attribution_up 1") {
            break;
        }
        assert!(Instant::now() < deadline, "no lag metric: {m}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Like the server, it says what build it is and watches its process and disk.
    let m = Conn::open(addr).send("GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n").text();
    let build = format!("tally_build_info{{version=\"{}\",revision=\"", env!("CARGO_PKG_VERSION"));
    for needle in
        [&build, "process_start_time_seconds ", "process_resident_memory_bytes ", "tally_data_dir_free_bytes "]
    {
        assert!(m.contains(needle), "no {needle} in {m}");
    }
    let _ = std::process::Command::new("kill").args(["-TERM", &worker.id().to_string()]).status();
    assert!(worker.wait().unwrap().success(), "SIGTERM stops the worker cleanly");
}
