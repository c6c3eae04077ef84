//! A cluster for real: a 3-node NATS JetStream cluster on 127.0.0.1, two edges (`tally serve`
//! with `[bus]`) and the attribution tier (`tally attribute --bus`), driven with the crash
//! harness's clients (clicks and postbacks, each with a unique marker) through faults: a NATS
//! node killed and restarted, an edge killed and restarted, the stream's quorum lost and
//! regained. Then every edge's log is checked against what its clients were told, and the
//! merged log against both edges' histories: nothing acknowledged lost, nothing twice,
//! nothing unexpected; its origins prove each edge's chain; its ledger replays.
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
use crate::crash::{check, client, Attempt, Report};

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

/// `tally attribute --bus` on its own data directory.
struct Attribution {
    child: Child,
}

impl Attribution {
    fn start(config: &Path, data: &Path, urls: &str) -> Attribution {
        let mut child = Command::new(BIN)
            .args(["attribute", "--config", config.to_str().unwrap(), "--data-dir", data.to_str().unwrap()])
            .args(["--bus", urls])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert!(line.starts_with("tally attribute merging the bus into"), "{line}");
        Attribution { child }
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

fn assert_clean(what: &str, r: &Report) {
    eprintln!("{what}: {r:?}");
    assert!(r.acknowledged > 0, "{what}: nothing acknowledged");
    assert_eq!((r.lost, r.duplicated, r.gaps, r.unexpected), (0, 0, 0, 0), "{what}: {r:?}");
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
        env.append_config("\n[bus]\nreplicas = 3\nack_timeout_ms = 1000\n");
    }
    let vars = |node: &'static str| [("TALLY_BUS_URLS", urls.clone()), ("TALLY_SERVER_NODE_ID", node.to_owned())];
    let spawn = |i: usize| {
        let v = vars(["1", "2"][i]);
        let v: Vec<(&str, &str)> = v.iter().map(|(k, v)| (*k, v.as_str())).collect();
        edges[i].spawn_with_env(&v)
    };
    let merged_dir = tempfile::tempdir().unwrap();
    let merged = merged_dir.path().join("attribution");
    let attribution = Attribution::start(&edges[0].config(), &merged, &urls);
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
    history[0].extend(load_a.finish());
    history[1].extend(load_b.finish());

    // Each edge kept what it acknowledged, and the lag drains to zero.
    let dirs = [a.dir.clone(), b.dir.clone()];
    assert_clean("edge 1", &check(&dirs[0], &history[0]));
    assert_clean("edge 2", &check(&dirs[1], &history[1]));
    wait_merged(&merged, &[(1, &dirs[0]), (2, &dirs[1])]);

    // The merged log holds both edges' events, each once, and proves each edge's chain.
    let all: Vec<Attempt> = history.iter().flatten().cloned().collect();
    assert_clean("merged", &check(&merged, &all));
    let (code, v) = run_json(&["verify", "--origins", "--data-dir", merged.to_str().unwrap(), "--format", "json"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["events_without_origin"], 0, "{v}");
    for (i, dir) in dirs.iter().enumerate() {
        let node = &v["origins"][i];
        assert_eq!(node["node"], i + 1, "{v}");
        let edge_head = verify_head(dir);
        assert_eq!(format!("{}:{}", node["head_seq"], node["head"].as_str().unwrap()), edge_head, "{v}");
    }

    // The tier's ledger is the one a replay of the merged log gives.
    attribution.stop();
    let (ok, out, err) = run(&["replay", "--data-dir", merged.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    drop((a, b));
}
