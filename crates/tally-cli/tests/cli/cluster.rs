//! A cluster for real: a 3-node NATS JetStream cluster on 127.0.0.1, two edges (`tally serve`
//! with `[bus]`) and two attribution processes (`tally attribute --bus`, an active and a hot
//! standby), driven with the crash harness's clients (clicks and postbacks, each with a unique
//! marker) through faults: a NATS node killed and restarted, an edge killed and restarted, the
//! stream's quorum lost and regained, the active attribution process killed, and a program
//! change made on one edge. Then every edge's log is checked against what its clients were
//! told, and each merged log against both edges' histories: nothing acknowledged lost, nothing
//! twice, nothing unexpected; its origins prove each edge's chain; and the ledger digest is
//! the same on both attribution processes, in a replay of the merged log, and on a single
//! node fed the same events.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tally_log::LogReader;
use tally_testkit::nats::NatsCluster;

use crate::common::*;
use crate::crash::{check, client, walk_markers, Attempt, Kind, Outcome, Report};

/// Clients driving one edge until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    acks: Arc<AtomicU64>,
    workers: Vec<JoinHandle<Vec<Attempt>>>,
}

impl Load {
    fn start(addr: SocketAddr, prefix: &str, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(AtomicU64::new(0));
        let workers = (0..clients)
            .map(|c| {
                let (stop, acks, prefix) = (Arc::clone(&stop), Arc::clone(&acks), format!("{prefix}-c{c}"));
                std::thread::spawn(move || client(addr, prefix, stop, acks))
            })
            .collect();
        Load { stop, acks, workers }
    }

    fn acks(&self) -> u64 {
        self.acks.load(Ordering::Relaxed)
    }

    /// Waits until `n` more acknowledgements than now (the edge is answering).
    fn wait_for_more(&self, n: u64, what: &str) {
        let from = self.acks();
        wait_for(what, || self.acks() >= from + n);
    }

    fn finish(self) -> Vec<Attempt> {
        self.stop.store(true, Ordering::Relaxed);
        self.workers.into_iter().flat_map(|w| w.join().unwrap()).collect()
    }
}

/// `tally attribute --bus` on its own data directory, with its metrics listener.
struct Attribution {
    child: Child,
    metrics: SocketAddr,
}

impl Attribution {
    fn start(config: &Path, data: &Path, urls: &str) -> Attribution {
        let mut child = Command::new(BIN)
            .args(["attribute", "--config", config.to_str().unwrap(), "--data-dir", data.to_str().unwrap()])
            .args(["--bus", urls, "--metrics-listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().unwrap().unwrap();
        assert!(first.starts_with("tally attribute merging the bus into"), "{first}");
        let second = lines.next().unwrap().unwrap();
        let metrics = second.strip_prefix("tally attribute metrics on ").unwrap().parse().unwrap();
        Attribution { child, metrics }
    }

    /// A value its `/metrics` gives (`None` if it does not answer).
    fn metric(&self, name: &str) -> Option<f64> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(self.metrics).ok()?;
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).ok()?;
        body.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    /// `GET path` on its metrics listener: (status, body).
    fn get(&self, path: &str, token: Option<&str>) -> (u16, String) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(self.metrics).unwrap();
        let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        write!(s, "GET {path} HTTP/1.0\r\n{auth}\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        (status, text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default())
    }

    /// Whether it holds the attribution lease.
    fn active(&self) -> bool {
        self.metric("tally_bus_lease_held") == Some(1.0)
    }

    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    fn stop(mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        assert!(self.child.wait().unwrap().success(), "tally attribute did not stop cleanly");
    }
}

impl Drop for Attribution {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn last_seq(dir: &Path) -> u64 {
    LogReader::open_secondary(dir).unwrap().last_seq().unwrap().unwrap_or(0)
}

/// Waits until the merged log in `merged` holds every event of every edge.
fn wait_merged(merged: &Path, edges: &[(u16, &Path)]) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let want: Vec<(u16, u64)> = edges.iter().map(|(node, dir)| (*node, last_seq(dir))).collect();
        let have: Vec<(u16, u64)> = match LogReader::open_secondary(merged) {
            Ok(r) => r.verify_origins().unwrap().iter().map(|o| (o.node, o.last_seq)).collect(),
            Err(_) => Vec::new(),
        };
        if have == want {
            return;
        }
        assert!(Instant::now() < deadline, "the merged log did not catch up: have {have:?}, want {want:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The markers of a log's clicks and conversions in log order.
fn marker_order(dir: &Path) -> Vec<(bool, String)> {
    let mut out = Vec::new();
    walk_markers(dir, |_, key| out.extend(key));
    out
}

/// Events of the edge in `edge` that the merged log holds in another order than the edge's
/// (each one that comes before an event the edge logged earlier).
fn reordered(edge: &Path, merged: &Path) -> u64 {
    let position: std::collections::HashMap<(bool, String), usize> =
        marker_order(edge).into_iter().enumerate().map(|(i, k)| (k, i)).collect();
    let mut last = None;
    let mut out = 0;
    for key in marker_order(merged) {
        if let Some(&i) = position.get(&key) {
            if last.is_some_and(|l| i < l) {
                out += 1;
            }
            last = Some(i);
        }
    }
    out
}

fn assert_clean(what: &str, r: &Report) {
    eprintln!("{what}: {r:?}");
    assert!(r.acknowledged > 0, "{what}: nothing acknowledged");
    assert_eq!((r.lost, r.duplicated, r.gaps, r.unexpected), (0, 0, 0, 0), "{what}: {r:?}");
}

/// The ledger digest line of `tally commissions --digest` (`ledger FORM HEX`).
fn digest(dir: &Path) -> String {
    let (ok, out, err) = run(&["commissions", "--digest", "--data-dir", dir.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    out.lines().find(|l| l.starts_with("ledger ")).unwrap().to_owned()
}

/// The merged log's events appended, in order, to a fresh single-node log in `dir`, then
/// attributed by `tally attribute --once` there (`config` has no bus URLs).
fn single_node_from(merged: &Path, dir: &Path, config: &Path) {
    let log = tally_log::Log::open(dir, tally_log::LogOptions::default(), tally_log::LogMetrics::default()).unwrap();
    let reader = LogReader::open_secondary(merged).unwrap();
    let records: Vec<Vec<u8>> = reader.iter_from(1).map(|r| r.unwrap().1).collect();
    // In chunks the writer's queue holds.
    for chunk in records.chunks(10_000) {
        let pending: Vec<_> = chunk.iter().map(|r| log.submit(r.clone()).unwrap()).collect();
        for p in pending {
            p.wait().unwrap();
        }
    }
    log.close();
    drop(log);
    let (ok, out, err) =
        run(&["attribute", "--once", "--config", config.to_str().unwrap(), "--data-dir", dir.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
}

/// Prints the head `tally verify` gives for a log, `SEQ:HEX`.
fn verify_head(dir: &Path) -> String {
    let (ok, out, err) = run(&["verify", "--data-dir", dir.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    out.lines().find_map(|l| l.strip_prefix("head ")).unwrap().to_owned()
}

#[test]
fn a_cluster_merges_every_edge_exactly_once_through_faults() {
    let mut nats = NatsCluster::start(3);
    let urls = nats.urls();
    let edges = [Env::new(""), Env::new("")];
    for env in &edges {
        // A short ack timeout, so the faults below cost the test seconds, not minutes.
        env.append_config(&format!(
            "\n[bus]\nreplicas = 3\nack_timeout_ms = 1000\nlease_ttl_ms = 2000\n[admin]\ntoken = \"{ADMIN}\"\n"
        ));
    }
    let vars = |node: &'static str| [("TALLY_BUS_URLS", urls.clone()), ("TALLY_SERVER_NODE_ID", node.to_owned())];
    let spawn = |i: usize| {
        let v = vars(["1", "2"][i]);
        let v: Vec<(&str, &str)> = v.iter().map(|(k, v)| (*k, v.as_str())).collect();
        edges[i].spawn_with_env(&v)
    };
    let tier = tempfile::tempdir().unwrap();
    let tier_dirs = [tier.path().join("attribution-1"), tier.path().join("attribution-2")];
    let start_tier = |i: usize| Attribution::start(&edges[0].config(), &tier_dirs[i], &urls);
    let mut attribution = [Some(start_tier(0)), Some(start_tier(1))];
    let mut a = spawn(0);
    let b = spawn(1);
    let mut history = [Vec::new(), Vec::new()];
    let load_b = Load::start(b.addr, "b", 2);
    let load_a = Load::start(a.addr, "a1", 2);
    load_a.wait_for_more(200, "edge 1 answers");
    load_b.wait_for_more(200, "edge 2 answers");

    // A NATS node dies mid-traffic and comes back.
    nats.kill(0);
    load_a.wait_for_more(300, "edge 1 answers with a NATS node down");
    nats.restart(0);

    // An edge dies mid-traffic: what it acknowledged is in its log and gets shipped.
    a.kill();
    history[0].extend(load_a.finish());
    a = spawn(0);
    let load_a = Load::start(a.addr, "a2", 2);
    load_a.wait_for_more(200, "edge 1 answers after its restart");

    // Two of three NATS nodes stop: the stream has no quorum, edges keep answering.
    nats.stop(1);
    nats.stop(2);
    load_a.wait_for_more(500, "edge 1 answers without a bus");
    load_b.wait_for_more(500, "edge 2 answers without a bus");
    nats.restart(1);
    nats.restart(2);
    load_a.wait_for_more(200, "edge 1 answers after the bus is back");

    // The active attribution process dies: the standby takes over within seconds.
    wait_for("one attribution process holds the lease", || {
        attribution.iter().flatten().filter(|p| p.active()).count() == 1
    });
    let active = usize::from(!attribution[0].as_ref().unwrap().active());
    attribution[active].take().unwrap().kill();
    let standby = 1 - active;
    let killed_at = Instant::now();
    wait_for("the standby takes the lease", || attribution[standby].as_ref().unwrap().active());
    eprintln!("the standby took over {:?} after the active one was killed", killed_at.elapsed());
    attribution[active] = Some(start_tier(active));

    // A link added on one edge's admin API redirects on the other.
    let added =
        a.admin("POST", "/admin/links", Some(ADMIN), r#"{"code":"cluster1","offer":"shoes","affiliate":"aff2"}"#);
    assert_eq!(added.status, 201, "{}", String::from_utf8_lossy(&added.body));
    wait_for("edge 2 serves the link added on edge 1", || b.get("/c/cluster1?sub1=probe").status == 302);
    history[1].push(Attempt { kind: Kind::Click, marker: "probe".into(), outcome: Outcome::Acknowledged });
    load_b.wait_for_more(100, "edge 2 answers after the program change");
    history[0].extend(load_a.finish());
    history[1].extend(load_b.finish());

    // Each edge kept what it acknowledged, and the lag drains to zero on both tiers.
    let dirs = [a.dir.clone(), b.dir.clone()];
    assert_clean("edge 1", &check(&dirs[0], &history[0]));
    assert_clean("edge 2", &check(&dirs[1], &history[1]));
    let all: Vec<Attempt> = history.iter().flatten().cloned().collect();
    for merged in &tier_dirs {
        wait_merged(merged, &[(1, &dirs[0]), (2, &dirs[1])]);
        // The merged log holds both edges' events, each once, and proves each edge's chain.
        assert_clean("merged", &check(merged, &all));
        let (code, v) = run_json(&["verify", "--origins", "--data-dir", merged.to_str().unwrap(), "--format", "json"]);
        assert_eq!(code, 0, "{v}");
        assert_eq!(v["events_without_origin"], 0, "{v}");
        for (i, dir) in dirs.iter().enumerate() {
            let node = &v["origins"][i];
            assert_eq!(node["node"], i + 1, "{v}");
            let edge_head = verify_head(dir);
            assert_eq!(format!("{}:{}", node["head_seq"], node["head"].as_str().unwrap()), edge_head, "{v}");
        }
    }
    for (i, dir) in dirs.iter().enumerate() {
        assert_eq!(reordered(dir, &tier_dirs[0]), 0, "edge {}'s events were merged out of order", i + 1);
    }
    // The tier serves the admin stats (an edge of a cluster has no ledger to read them from).
    for p in attribution.iter().flatten() {
        wait_for("the tier's stats", || {
            let (status, body) = p.get("/admin/stats", Some(ADMIN));
            status == 200
                && serde_json::from_str::<serde_json::Value>(&body).unwrap()["by_offer"]
                    .as_array()
                    .is_some_and(|r| !r.is_empty())
        });
        assert_eq!(p.get("/admin/stats", None).0, 401);
        assert_eq!(p.get("/admin/stats?from=someday", Some(ADMIN)).0, 400);
    }
    let on_edge = a.admin("GET", "/admin/stats", Some(ADMIN), "");
    assert_eq!(on_edge.status, 404, "{}", String::from_utf8_lossy(&on_edge.body));
    let merged = events(&tier_dirs[0]);
    let program_changes = merged.iter().filter(|e| e["type"] == "program_change").count();
    assert!(program_changes >= 3, "each edge's start is in the merged log: {program_changes}");
    // The link edit: logged by the edge that made it, and by each edge that adopted it.
    let link_edits = merged
        .iter()
        .filter(|e| e["type"] == "program_edit" && e["edit"].as_str().is_some_and(|x| x.contains("cluster1")))
        .count();
    assert!(link_edits >= 2, "the link edit and its adoption are in the merged log: {link_edits}");

    // One ledger: on both attribution processes, in a replay of the merged log, and on a
    // single node fed the same events.
    for p in attribution.into_iter().flatten() {
        p.stop();
    }
    let digests: Vec<String> = tier_dirs.iter().map(|d| digest(d)).collect();
    assert_eq!(digests[0], digests[1], "the two attribution processes disagree");
    let (code, v) = run_json(&["replay", "--data-dir", tier_dirs[standby].to_str().unwrap(), "--format", "json"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(
        format!("ledger {} {}", v["digest_form"].as_str().unwrap(), v["digest_replay"].as_str().unwrap()),
        digests[0]
    );
    let single = tier.path().join("single-node");
    single_node_from(&tier_dirs[standby], &single, &edges[0].config());
    assert_eq!(digest(&single), digests[0], "a single node fed the same events disagrees");
    assert!(ledger(&single).len() > 10, "the run paid commissions");
    drop((a, b));
}

const ADMIN: &str = "cluster-admin-token-0123456789";

/// The attribution tier sends the outbox from the lease holder only, and the standby that
/// takes over sends only what was not finished: it learned the rest from the delivery feed.
/// Without the feed it would send every notification again.
#[test]
fn the_tier_delivers_from_the_lease_holder_and_a_takeover_does_not_start_over() {
    use crate::deliveries::{slow_receiver, with_webhook};
    let (addr, seen) = slow_receiver();
    let nats = NatsCluster::start(1);
    let urls = nats.urls();
    let edge = Env::new("");
    edge.append_config(&format!(
        "\n[bus]\nreplicas = 1\nack_timeout_ms = 1000\nlease_ttl_ms = 2000\n[admin]\ntoken = \"{ADMIN}\"\n\
         [deliveries]\nallow_private = true\ntimeout_ms = 5000\nper_receiver = 1\n"
    ));
    with_webhook(&edge, &addr);
    let server = edge.spawn_with_env(&[("TALLY_BUS_URLS", urls.as_str()), ("TALLY_SERVER_NODE_ID", "1")]);
    let tier = tempfile::tempdir().unwrap();
    let dirs = [tier.path().join("attribution-1"), tier.path().join("attribution-2")];
    let start = |i: usize| Attribution::start(&edge.config(), &dirs[i], &urls);
    let mut procs = [Some(start(0)), Some(start(1))];
    wait_for("one attribution process holds the lease", || procs.iter().flatten().filter(|p| p.active()).count() == 1);
    let sell = |from: usize, to: usize| {
        for i in from..to {
            let r = server
                .get(&format!("/postback?offer=shoes&goal=sale&coupon=SPRING10&txid=T{i}&amount=10.00&token={TOKEN}"));
            assert_eq!(r.status, 200, "{}", r.text());
        }
    };
    const SALES: usize = 30;
    sell(0, SALES);
    // The active one delivers (one at a time, 100 ms each); the standby sends nothing.
    wait_for("deliveries begin", || seen.lock().unwrap().len() >= 10);
    let active = usize::from(!procs[0].as_ref().unwrap().active());
    let standby = 1 - active;
    let published = |i: usize| procs[i].as_ref().unwrap().metric("tally_bus_delivery_feed_published_total");
    assert_eq!(published(standby), Some(0.0), "the standby attempted deliveries");
    assert!(published(active).is_some_and(|n| n > 0.0), "the active one publishes what it delivers");
    // A standby refuses to redeliver: only the active one sends.
    let token = tier.path().join("admin-token");
    std::fs::write(&token, ADMIN).unwrap();
    let url_of = |p: &Attribution| format!("http://{}", p.metrics);
    let (code, _, err) = run_code(&[
        "deliveries",
        "redeliver",
        "tally-1-0",
        "--admin",
        &url_of(procs[standby].as_ref().unwrap()),
        "--token-file",
        token.to_str().unwrap(),
    ]);
    assert!(code != 0 && err.contains("standby"), "{err}");

    procs[active].take().unwrap().kill();
    let delivered_before = seen.lock().unwrap().len();
    assert!(delivered_before < SALES, "all were delivered before the takeover: nothing was tested");
    wait_for("the standby takes the lease", || procs[standby].as_ref().unwrap().active());
    sell(SALES, 2 * SALES);
    wait_for("every notification delivered after the takeover", || seen.lock().unwrap().len() == 2 * SALES);
    let counts = seen.lock().unwrap().clone();
    let repeats: usize = counts.values().map(|n| n - 1).sum();
    // At most what was in flight or not yet on the feed when the active one died.
    assert!(repeats <= 3, "{repeats} repeats after the takeover (it started over?): {counts:?}");

    // The restarted process is the standby now, and its delivery log knows what the active
    // one delivered.
    procs[active] = Some(start(active));
    let restarted = procs[active].as_ref().unwrap();
    wait_for("the restarted standby's delivery log", || {
        let (status, body) = restarted.get("/admin/deliveries?status=delivered&limit=1000", Some(ADMIN));
        status == 200
            && serde_json::from_str::<serde_json::Value>(&body).unwrap()["deliveries"]
                .as_array()
                .is_some_and(|d| d.len() == 2 * SALES)
    });
    assert_eq!(restarted.get("/admin/deliveries", None).0, 401);
    assert_eq!(restarted.get("/admin/deliveries?status=lost", Some(ADMIN)).0, 400);
    assert_eq!(counts.len(), seen.lock().unwrap().len(), "the restarted standby sent something");
    for p in procs.into_iter().flatten() {
        p.stop();
    }
    drop(server);
}

/// The negative control: a shipper that records messages as shipped without publishing every
/// third one. The harness must see the loss, and the tier must count the gaps it holds back.
#[test]
fn the_cluster_harness_sees_events_a_shipper_never_published() {
    let nats = NatsCluster::start(1);
    let urls = nats.urls();
    let env = Env::new("");
    env.append_config("\n[bus]\nreplicas = 1\nack_timeout_ms = 1000\n");
    let edge = env.spawn_with_env(&[
        ("TALLY_BUS_URLS", urls.as_str()),
        ("TALLY_SERVER_NODE_ID", "1"),
        (tally_bus::testing::SHIP_SKIP_ENV, "3"),
    ]);
    let tier = tempfile::tempdir().unwrap();
    let merged = tier.path().join("attribution");
    let attribution = Attribution::start(&env.config(), &merged, &urls);
    let load = Load::start(edge.addr, "n", 2);
    load.wait_for_more(300, "the edge answers");
    let history = load.finish();
    let edge_dir = edge.dir.clone();
    wait_for("the edge has shipped (or dropped) every message", || {
        let r = LogReader::open_secondary(&edge_dir).unwrap();
        r.shipped().unwrap() == r.last_seq().unwrap()
    });
    wait_for("the tier counted a gap", || attribution.metric("tally_bus_gaps_total").is_some_and(|g| g > 0.0));
    let report = check(&merged, &history);
    eprintln!("negative control: {report:?}");
    assert!(report.lost > 0, "the harness did not see the dropped messages: {report:?}");
    attribution.stop();
    drop(edge);
}

#[test]
fn reship_moves_a_stopped_edges_shipped_position_and_refuses_bad_values() {
    let env = Env::new("");
    let mut server = env.serve();
    for i in 0..3 {
        assert_eq!(server.get(&format!("/c/demo?sub1=r{i}")).status, 302);
    }
    let data = env.data();
    let dir = data.to_str().unwrap();
    let (code, _, err) = run_code(&["log", "reship", "--data-dir", dir, "--from", "1"]);
    assert_eq!(code, 2);
    assert!(err.contains("open by a running server; stop it first"), "{err}");
    server.stop();
    let last = last_seq(&data);
    let (code, v) = run_json(&["log", "reship", "--data-dir", dir, "--from", "2", "--format", "json"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!((v["from"].as_u64(), v["last_seq"].as_u64()), (Some(2), Some(last)));
    assert_eq!(LogReader::open_secondary(&data).unwrap().shipped().unwrap(), Some(1));
    for bad in ["0", &(last + 2).to_string()] {
        let (code, _, err) = run_code(&["log", "reship", "--data-dir", dir, "--from", bad]);
        assert_eq!(code, 2, "--from {bad}");
        assert!(err.contains(&format!("--from {bad}: the log holds events 1..={last}")), "{err}");
    }
    let (code, _, err) = run_code(&["log", "reship", "--data-dir", "/nonexistent/tally", "--from", "1"]);
    assert_eq!(code, 2);
    assert!(err.contains("no Tally log"), "{err}");
}
