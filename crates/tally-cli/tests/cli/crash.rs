//! Crash harness: clients drive clicks and postbacks, each with a unique marker, and keep a
//! history of every request; the server is SIGKILLed at random moments and restarted; the
//! log is then checked against the history: nothing acknowledged lost, nothing stored twice,
//! no sequence gaps, nothing stored that was never sent. A negative control (a test build
//! that acknowledges before commit) shows the checker sees loss.
//!
//! Sized by environment variables so `benches/crash.sh` can run the long version:
//! `TALLY_CRASH_KILLS` (per sync policy), `TALLY_CRASH_EVENTS` (acknowledged events to aim
//! for, per policy), `TALLY_CRASH_CLIENTS`, `TALLY_CRASH_SEED`.
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Click,
    Conversion,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A 302 for a click, a 200 "accepted" for a postback.
    Acknowledged,
    /// Any other status: the server said it did not take the event.
    Failed,
    /// Sent, but the connection died before an answer (the kill): may or may not be stored.
    TimedOut,
}

#[derive(Debug, Clone)]
pub(crate) struct Attempt {
    pub(crate) kind: Kind,
    pub(crate) marker: String,
    pub(crate) outcome: Outcome,
}

/// What the checker found; the harness asserts on it.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) attempted: u64,
    pub(crate) acknowledged: u64,
    pub(crate) failed: u64,
    pub(crate) timed_out: u64,
    pub(crate) stored: u64,
    pub(crate) lost: u64,
    pub(crate) duplicated: u64,
    pub(crate) gaps: u64,
    pub(crate) unexpected: u64,
}

/// One client: a keep-alive connection sending click, postback, click, ... until the server
/// dies or `stop` is set. A click's 302 is sent only after its append finished, and with the
/// default queue (65 536) and a few clients neither queue-full nor write errors can happen,
/// so a 302 here means "stored" just as a postback's 200 does.
pub(crate) fn client(addr: SocketAddr, prefix: String, stop: Arc<AtomicBool>, acks: Arc<AtomicU64>) -> Vec<Attempt> {
    let mut history = Vec::new();
    let Ok(s) = TcpStream::connect(addr) else { return history };
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let _ = s.set_nodelay(true);
    let mut conn = Conn::from_stream(s);
    let mut cid: Option<String> = None;
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let marker = format!("{prefix}-{i}");
        i += 1;
        let (kind, req) = match &cid {
            Some(c) if i.is_multiple_of(2) => (
                Kind::Conversion,
                format!("GET /postback?cid={c}&offer=shoes&txid={marker}&token={TOKEN} HTTP/1.1\r\nHost: t\r\n\r\n"),
            ),
            _ => (
                Kind::Click,
                format!("GET /c/demo?sub1={marker} HTTP/1.1\r\nHost: t\r\nUser-Agent: Mozilla/5.0 crash\r\n\r\n"),
            ),
        };
        let outcome = match conn.try_send(req.as_bytes()) {
            Ok(r) if kind == Kind::Click && r.status == 302 => {
                cid = Some(r.click_id());
                Outcome::Acknowledged
            }
            Ok(r) if kind == Kind::Conversion && r.status == 200 => Outcome::Acknowledged,
            Ok(_) => Outcome::Failed,
            Err(_) => Outcome::TimedOut,
        };
        if outcome == Outcome::Acknowledged {
            acks.fetch_add(1, Ordering::Relaxed);
        }
        history.push(Attempt { kind, marker, outcome });
        if outcome == Outcome::TimedOut {
            break;
        }
    }
    history
}

/// Walks the log with `tally export events`, streaming (a long run stores millions of
/// events): `each(seq, marker)` per event, the marker being a click's sub1 or a conversion's
/// txid (`(true, sub1)`, `(false, txid)`), if it has one.
pub(crate) fn walk_markers(dir: &Path, mut each: impl FnMut(u64, Option<(bool, String)>)) {
    let mut child = Command::new(BIN)
        .args(["export", "events", "--data-dir", dir.to_str().unwrap()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let v: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        let key = match v["type"].as_str() {
            Some("click") => v["sub1"].as_str().map(|m| (true, m.to_owned())),
            Some("conversion") => v["txid"].as_str().map(|m| (false, m.to_owned())),
            _ => None,
        };
        each(v["seq"].as_u64().unwrap(), key);
    }
    assert!(child.wait().unwrap().success(), "export failed");
}

/// What the check needs of a log: its sequence numbers and how often each marker is stored.
fn stored_markers(dir: &Path) -> (Vec<u64>, HashMap<(bool, String), u64>) {
    let mut seqs = Vec::new();
    let mut markers: HashMap<(bool, String), u64> = HashMap::new();
    walk_markers(dir, |seq, key| {
        seqs.push(seq);
        if let Some(k) = key {
            *markers.entry(k).or_default() += 1;
        }
    });
    (seqs, markers)
}

pub(crate) fn check(dir: &Path, history: &[Attempt]) -> Report {
    let (seqs, stored) = stored_markers(dir);
    let mut r = Report { stored: stored.values().sum(), ..Report::default() };
    // Sequence numbers start at 1 and are contiguous.
    r.gaps = seqs.iter().enumerate().filter(|(i, s)| **s != *i as u64 + 1).count() as u64;
    let mut sent = HashSet::new();
    for a in history {
        r.attempted += 1;
        let n = stored.get(&(a.kind == Kind::Click, a.marker.clone())).copied().unwrap_or(0);
        match a.outcome {
            Outcome::Acknowledged => {
                r.acknowledged += 1;
                if n == 0 {
                    r.lost += 1;
                }
            }
            Outcome::Failed => r.failed += 1,
            Outcome::TimedOut => r.timed_out += 1,
        }
        if n > 1 {
            r.duplicated += 1;
        }
        sent.insert((a.kind == Kind::Click, a.marker.as_str()));
    }
    // Stored but never sent (e.g. an event of another round replayed under a new marker).
    r.unexpected = stored.keys().filter(|(c, m)| !sent.contains(&(*c, m.as_str()))).count() as u64;
    r
}

/// Runs `kills` rounds: start, load until a random number of acknowledgements, SIGKILL.
fn run(env: &Env, vars: &[(&str, &str)], kills: u64, events: u64, seed: u64) -> (Vec<Attempt>, Duration) {
    let clients = env_u64("TALLY_CRASH_CLIENTS", 4);
    let mut rng = Rng::new(seed);
    let per_round = (events / kills.max(1)).max(10);
    let mut history = Vec::new();
    let started = Instant::now();
    for round in 0..kills {
        let mut server = env.spawn_with_env(vars);
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(AtomicU64::new(0));
        let workers: Vec<_> = (0..clients)
            .map(|t| {
                let (stop, acks, addr) = (Arc::clone(&stop), Arc::clone(&acks), server.addr);
                std::thread::spawn(move || client(addr, format!("r{round}t{t}"), stop, acks))
            })
            .collect();
        // The kill moment: after a random number of acknowledgements (between a half and one
        // and a half rounds' worth), so it lands anywhere in a batch's life. The deadline
        // only keeps a broken server from hanging the test.
        let target = per_round / 2 + rng.below(per_round);
        let deadline = Instant::now() + Duration::from_secs(120);
        while acks.load(Ordering::Relaxed) < target && Instant::now() < deadline {
            std::thread::sleep(Duration::from_micros(200 + rng.below(800)));
        }
        server.kill();
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            history.extend(w.join().unwrap());
        }
    }
    (history, started.elapsed())
}

fn harness(sync: &str, vars: &[(&str, &str)], kills: u64, events: u64) -> Report {
    let now = std::time::UNIX_EPOCH.elapsed().map(|d| d.as_nanos() as u64).unwrap_or(1);
    let seed = env_u64("TALLY_CRASH_SEED", now);
    let env = Env::new(&format!("sync = \"{sync}\""));
    let (history, took) = run(&env, vars, kills, events, seed);
    let report = check(&env.data(), &history);
    let out = tally(&["verify", "--data-dir", env.data().to_str().unwrap()]);
    assert!(out.status.success(), "verify after {kills} kills: {}", String::from_utf8_lossy(&out.stdout));
    println!(
        "crash harness sync={sync} vars={vars:?} seed={seed}: {kills} kills in {:.1} s; attempted {} acknowledged {} \
         failed {} timed out {} stored {}; lost {} duplicated {} gaps {} unexpected {}",
        took.as_secs_f64(),
        report.attempted,
        report.acknowledged,
        report.failed,
        report.timed_out,
        report.stored,
        report.lost,
        report.duplicated,
        report.gaps,
        report.unexpected
    );
    report
}

fn assert_sound(r: &Report) {
    assert_eq!(r.lost, 0, "acknowledged but missing: {r:?}");
    assert_eq!(r.duplicated, 0, "{r:?}");
    assert_eq!(r.gaps, 0, "{r:?}");
    assert_eq!(r.unexpected, 0, "{r:?}");
    assert!(r.stored <= r.attempted, "{r:?}");
    assert!(r.stored >= r.acknowledged, "{r:?}");
    assert!(r.acknowledged > 0, "the harness drove no traffic: {r:?}");
}

#[test]
fn crash_harness_sigkill_loses_nothing_acknowledged_with_sync_none() {
    let r = harness("none", &[], env_u64("TALLY_CRASH_KILLS", 5), env_u64("TALLY_CRASH_EVENTS", 2_000));
    assert_sound(&r);
}

#[test]
fn crash_harness_sigkill_loses_nothing_acknowledged_with_sync_batch() {
    let r = harness("batch", &[], env_u64("TALLY_CRASH_KILLS", 5), env_u64("TALLY_CRASH_EVENTS", 2_000));
    assert_sound(&r);
}

/// The negative control: a writer that acknowledges a batch before writing it (test build
/// only), slowed so a kill usually lands between the two. The same checker must report loss.
#[test]
fn crash_harness_reports_loss_when_appends_are_acknowledged_before_commit() {
    let vars = [(tally_log::testing::EARLY_ACK_ENV, "1"), (tally_log::testing::COMMIT_DELAY_ENV, "50")];
    let r = harness("batch", &vars, 3, 150);
    assert!(r.lost > 0, "the checker missed the loss the early-ack build causes: {r:?}");
    assert_eq!(r.duplicated, 0, "{r:?}");
    assert_eq!(r.gaps, 0, "{r:?}");
}

/// Attribution crash points: a real `tally attribute --once` process is aborted at one named
/// step (applying an event, either side of the state's write, a snapshot written but not
/// published) over and over, each run resuming from what the last one committed; the ledger
/// it ends with is byte-identical to an uninterrupted run's.
#[test]
fn attribution_killed_at_every_crash_point_ends_with_the_uninterrupted_ledger() {
    let env = Env::new("");
    env.append_config("[attribution]\nin_process = false\ncommit_every = 5\nsnapshot_every = 20\n");
    let mut server = env.serve();
    let mut conn = Conn::open(server.addr);
    for i in 0..200 {
        let r = conn.send(&format!("GET /c/demo?sub1=p{} HTTP/1.1\r\nHost: t\r\n\r\n", i % 7));
        assert_eq!(r.status, 302);
        let cid = r.click_id();
        // Every fifth transaction ID repeats an earlier one: duplicates are part of the ledger.
        let txid = if i % 5 == 4 { format!("A{}", i - 1) } else { format!("A{i}") };
        let goal = if i % 3 == 0 { "sale&amount=10.50" } else { "signup" };
        let r = conn.send(&format!(
            "GET /postback?cid={cid}&offer=shoes&goal={goal}&txid={txid}&token={TOKEN} HTTP/1.1\r\nHost: t\r\n\r\n"
        ));
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert!(server.stop());

    let data = env.data();
    let attribute = |crash_at: Option<&str>| {
        let mut cmd = Command::new(BIN);
        cmd.args(["attribute", "--once", "--config", env.config().to_str().unwrap()]);
        cmd.args(["--data-dir", data.to_str().unwrap()]);
        cmd.env_remove(tally_attribution::testing::CRASH_AT_ENV);
        if let Some(at) = crash_at {
            cmd.env(tally_attribution::testing::CRASH_AT_ENV, at);
        }
        cmd.stdout(Stdio::null()).stderr(Stdio::piped()).output().unwrap()
    };
    let digest = || {
        let out = tally(&["commissions", "--data-dir", data.to_str().unwrap(), "--digest"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };

    let out = attribute(None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let uninterrupted = digest();
    std::fs::rename(data.join("attribution"), env.tmp.path().join("attribution-uninterrupted")).unwrap();
    let _ = std::fs::remove_dir_all(data.join("attribution-snapshots"));

    let mut crashes: HashMap<&str, u32> = HashMap::new();
    let mut rng = Rng::new(0x5eed);
    for round in 0..16 {
        let point = tally_attribution::testing::CRASH_POINTS[round % 4];
        let at = format!("{point}:{}", 1 + rng.below(3));
        let out = attribute(Some(&at));
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            // The point was not reached that many times before the log ran out.
            continue;
        }
        assert!(stderr.contains("aborting at"), "{at}: failed for another reason: {stderr}");
        *crashes.entry(point).or_default() += 1;
    }
    println!("attribution crash points hit: {crashes:?}");
    for point in tally_attribution::testing::CRASH_POINTS {
        assert!(crashes.get(point).copied().unwrap_or(0) > 0, "never crashed at {point}: {crashes:?}");
    }
    let out = attribute(None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(digest(), uninterrupted);
}

/// Unmounts on drop, so a failing assertion does not leave a tmpfs behind.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn metric(m: &str, name: &str) -> u64 {
    m.lines().find(|l| l.starts_with(name)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// Writes until the filesystem refuses: first in megabytes, then in pages, so what is left
/// is less than a page.
fn fill(path: &Path) -> u64 {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let mut written = 0u64;
    for chunk in [1 << 20, 4096, 512] {
        let buf = vec![0x5a_u8; chunk];
        while f.write_all(&buf).is_ok() {
            written += chunk as u64;
        }
    }
    let _ = f.sync_all();
    written
}

/// Disk full: the data directory (log and in-process attribution) on a 400 MiB tmpfs filled
/// to the last byte. Postbacks get 503, never 2xx; clicks still redirect and are counted as
/// unrecorded (`write_error`). Once the filler is deleted the same process takes writes again
/// (RocksDB clears its no-space error by itself; the log writer notices and `/readyz` turns
/// ready) once RocksDB sees a write buffer's worth (64 MiB) free, attribution keeps up, and
/// every acknowledged postback is in the log and in a ledger that a replay of the log
/// reproduces.
#[test]
fn a_full_disk_refuses_postbacks_redirects_clicks_and_recovers_without_restart() {
    let env = Env::new("sync = \"batch\"");
    let data = env.data();
    std::fs::create_dir_all(&data).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=400m", "tmpfs"])
        .arg(&data)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        println!("SKIPPED a_full_disk_...: cannot mount a size-limited tmpfs here (needs root / CAP_SYS_ADMIN)");
        return;
    }
    let _unmount = Mounted(data.clone());
    let server = env.serve();
    let mut conn = Conn::open(server.addr);
    let mut acked = Vec::new();
    let mut n = 0;
    // Sub IDs at their maximum length make each record ~1 KiB, so the disk fills sooner.
    let pad = "p".repeat(250);
    let mut postback = |conn: &mut Conn, cid: &str| {
        n += 1;
        let txid = format!("F{n}");
        let r = conn.send(&format!(
            "GET /postback?cid={cid}&offer=shoes&txid={txid}&sub1={pad}&sub2={pad}&sub3={pad}&token={TOKEN} HTTP/1.1\r\nHost: t\r\n\r\n"
        ));
        (txid, r)
    };
    let cid = conn.send("GET /c/demo HTTP/1.1\r\nHost: t\r\n\r\n").click_id();
    for _ in 0..5 {
        let (txid, r) = postback(&mut conn, &cid);
        assert_eq!(r.status, 200, "{}", r.text());
        acked.push(txid);
    }

    let filler = data.join("filler");
    let filled = fill(&filler);
    // Space RocksDB preallocated for its WAL still takes records; after that every postback
    // is refused.
    let mut first_refused = None;
    for i in 0..100_000 {
        let (txid, r) = postback(&mut conn, &cid);
        match r.status {
            200 => acked.push(txid),
            503 => {
                first_refused = Some(i);
                break;
            }
            s => panic!("unexpected {s}: {}", r.text()),
        }
    }
    assert!(first_refused.is_some(), "the full disk never refused a postback");
    let before = server.metrics();
    for _ in 0..20 {
        let (_, r) = postback(&mut conn, &cid);
        assert_eq!(r.status, 503, "a postback was answered {} on a full disk: {}", r.status, r.text());
        assert!(r.header("retry-after").is_some());
        let c = conn.send("GET /c/demo?sub1=full HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(c.status, 302, "clicks still redirect on a full disk");
    }
    let after = server.metrics();
    let unrecorded = "tally_clicks_unrecorded_total{cause=\"write_error\"}";
    assert_eq!(metric(&after, unrecorded) - metric(&before, unrecorded), 20, "{after}");
    let shed = "tally_conversions_total{source=\"postback\",outcome=\"shed\"}";
    assert_eq!(metric(&after, shed) - metric(&before, shed), 20);
    assert_eq!(conn.send("GET /readyz HTTP/1.1\r\nHost: t\r\n\r\n").status, 503, "not ready on a full disk");

    // Space comes back: with no traffic at all, the server turns ready again by itself.
    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    while conn.send("GET /readyz HTTP/1.1\r\nHost: t\r\n\r\n").status != 200 {
        assert!(freed.elapsed() < Duration::from_secs(60), "still not ready 60 s after space was freed");
        std::thread::sleep(Duration::from_millis(100));
    }
    let ready_after = freed.elapsed();
    for _ in 0..20 {
        let (txid, r) = postback(&mut conn, &cid);
        assert_eq!(r.status, 200, "after recovery: {}", r.text());
        acked.push(txid);
        assert_eq!(conn.send("GET /c/demo?sub1=back HTTP/1.1\r\nHost: t\r\n\r\n").status, 302);
    }
    let m = server.metrics();
    assert_eq!(metric(&m, unrecorded), metric(&after, unrecorded), "clicks are recorded again");
    // Attribution (its commits on the same disk; a failed one is retried from the checkpoint,
    // see tally-attribution's worker tests) is still running and catches up.
    let head = metric(&m, "tally_log_last_sequence ");
    let caught_up = loop {
        let m = server.metrics();
        if metric(&m, "tally_attribution_position ") == head {
            break m;
        }
        assert!(
            freed.elapsed() < Duration::from_secs(90),
            "attribution did not catch up after the disk recovered: {m}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(metric(&caught_up, "tally_attribution_up "), 1);
    drop(server);

    let events = events(&data);
    let stored: HashSet<&str> = of_type(&events, "conversion").into_iter().filter_map(|c| c["txid"].as_str()).collect();
    let lost: Vec<&String> = acked.iter().filter(|t| !stored.contains(t.as_str())).collect();
    assert!(lost.is_empty(), "acknowledged but lost after a full disk: {lost:?}");
    let out = tally(&["verify", "--data-dir", data.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let out = tally(&["replay", "--data-dir", data.to_str().unwrap(), "--no-snapshots"]);
    assert!(
        out.status.success(),
        "the ledger after recovery differs from a replay: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    println!(
        "disk full: filler {filled} bytes, {} postbacks acknowledged, none lost; ready {} ms after space was freed, without restart",
        acked.len(),
        ready_after.as_millis()
    );
}
