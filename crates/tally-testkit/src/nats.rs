//! A real NATS JetStream server or cluster on 127.0.0.1 ([`NatsCluster`]): `nats-server`
//! child processes with their configs, stores and logs in one temp directory, for tests that
//! kill, stop and restart nodes.

use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Generous: a 3-node meta group elects its leader within ~2 s, but CI machines are slow.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `stop` lets a node shut down after SIGTERM before it kills it.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Per probe, so a node that accepts but hangs cannot stall the readiness wait.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Log lines per node in a failure message.
const LOG_TAIL: usize = 25;

/// NATS servers with JetStream on 127.0.0.1: one, or a cluster routed together. Every node
/// keeps its ports and store across restarts; all are killed on drop.
#[derive(Debug)]
pub struct NatsCluster {
    /// `None` when `KEEP_TMP=1` kept the directory.
    tmp: Option<TempDir>,
    dir: PathBuf,
    bin: PathBuf,
    nodes: Vec<Node>,
}

#[derive(Debug)]
struct Node {
    client: u16,
    monitor: u16,
    /// `None` once killed or stopped.
    child: Option<std::process::Child>,
}

impl NatsCluster {
    /// Starts `n` servers with JetStream (file store under the temp dir), routed into one
    /// cluster when `n > 1`, and waits until every node accepts clients and (with `n > 1`)
    /// knows the JetStream meta leader. Panics with the nodes' log tails after 30 s.
    pub fn start(n: usize) -> NatsCluster {
        NatsCluster::start_with(n, "")
    }

    /// [`NatsCluster::start`], with `extra` (server configuration: `authorization { … }`,
    /// `tls { … }`) added to every node's config.
    pub fn start_with(n: usize, extra: &str) -> NatsCluster {
        assert!(n > 0, "a NATS cluster needs at least one node");
        let bin = nats_server().unwrap_or_else(|| {
            panic!(
                "nats-server not found on PATH, at /usr/sbin or /usr/bin: install Debian's `nats-server` \
                 package, or run scripts/test, which installs it"
            )
        });
        let tmp = tempfile::Builder::new().prefix("tally-nats-").tempdir().unwrap();
        let dir = tmp.path().to_owned();
        let tmp = if std::env::var_os("KEEP_TMP").is_some_and(|v| v == "1") {
            eprintln!("KEEP_TMP=1: keeping the NATS nodes' directory {}", tmp.keep().display());
            None
        } else {
            Some(tmp)
        };
        // Listeners held together so no two ports are the same; the ports are then fixed for
        // the cluster's life, as the routes in every node's config name them.
        let listeners: Vec<TcpListener> = (0..3 * n).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
        let ports: Vec<u16> = listeners.iter().map(|l| l.local_addr().unwrap().port()).collect();
        drop(listeners);
        let (client, rest) = ports.split_at(n);
        let (monitor, cluster) = rest.split_at(n);
        for i in 0..n {
            let mut conf = format!(
                "server_name: n{i}\nlisten: 127.0.0.1:{}\nhttp: 127.0.0.1:{}\n\
                 jetstream {{ store_dir: \"{}\", max_memory_store: 64MB, max_file_store: 2GB }}\n",
                client[i],
                monitor[i],
                dir.join(format!("n{i}")).display(),
            );
            if n > 1 {
                let routes: Vec<String> =
                    (0..n).filter(|&j| j != i).map(|j| format!("nats-route://127.0.0.1:{}", cluster[j])).collect();
                conf += &format!(
                    "cluster {{ name: tally-test, listen: 127.0.0.1:{}, routes: [{}] }}\n",
                    cluster[i],
                    routes.join(", ")
                );
            }
            conf += extra;
            fs::write(dir.join(format!("node{i}.conf")), conf).unwrap();
        }
        let nodes = (0..n).map(|i| Node { client: client[i], monitor: monitor[i], child: None }).collect();
        let mut nats = NatsCluster { tmp, dir, bin, nodes };
        for i in 0..n {
            nats.spawn(i);
        }
        nats.wait_ready(&(0..n).collect::<Vec<_>>());
        nats
    }

    /// The client URLs of all nodes, comma-separated, as NATS clients take a server list.
    pub fn urls(&self) -> String {
        (0..self.len()).map(|i| self.url(i)).collect::<Vec<_>>().join(",")
    }

    /// The client URL of node `i`.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].client)
    }

    /// The number of nodes, running or not.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Never true: a cluster has at least one node.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Kills node `i` (SIGKILL) and waits for it to exit.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            // Fails only if it already exited, which is as good.
            let _ = child.kill();
            child.wait().unwrap();
        }
    }

    /// Stops node `i` gracefully (SIGTERM), killing it if it has not exited after 10 s.
    pub fn stop(&mut self, i: usize) {
        let Some(mut child) = self.nodes[i].child.take() else { return };
        if child.try_wait().unwrap().is_none() {
            // std only sends SIGKILL and unsafe code is denied, so the `kill` binary sends
            // SIGTERM. The child is not reaped yet, so its pid cannot have been reused.
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            let deadline = Instant::now() + STOP_TIMEOUT;
            while child.try_wait().unwrap().is_none() {
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    break;
                }
                sleep(Duration::from_millis(20));
            }
        }
        child.wait().unwrap();
    }

    /// Starts node `i` again with its config, ports and store (stopping it first if it
    /// runs), and waits until it accepts clients and (in a cluster) knows the meta leader.
    pub fn restart(&mut self, i: usize) {
        self.stop(i);
        self.spawn(i);
        self.wait_ready(&[i]);
    }

    /// Whether node `i`'s process runs.
    pub fn is_running(&mut self, i: usize) -> bool {
        match &mut self.nodes[i].child {
            Some(child) => child.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    /// Node `i`'s log (its stdout and stderr, over all its restarts).
    pub fn log(&self, i: usize) -> String {
        let bytes = fs::read(self.dir.join(format!("node{i}.log"))).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    fn spawn(&mut self, i: usize) {
        let log = OpenOptions::new().create(true).append(true).open(self.dir.join(format!("node{i}.log"))).unwrap();
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(self.dir.join(format!("node{i}.conf")))
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.bin.display()));
        self.nodes[i].child = Some(child);
    }

    /// Polls `nodes` until all are ready; panics early if one exits, as it never will be.
    fn wait_ready(&mut self, nodes: &[usize]) {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut waiting: Vec<(usize, String)> = nodes.iter().map(|&i| (i, String::new())).collect();
        loop {
            for (i, why) in &mut waiting {
                *why = self.ready(*i).err().unwrap_or_default();
            }
            waiting.retain(|(_, why)| !why.is_empty());
            if waiting.is_empty() {
                return;
            }
            if let Some((i, _)) = waiting.iter().find(|(i, _)| !self.is_running(*i)) {
                panic!("nats-server node {i} exited while starting\n{}", self.log_tails());
            }
            if Instant::now() >= deadline {
                let whys: Vec<String> = waiting.iter().map(|(i, why)| format!("node {i}: {why}")).collect();
                panic!("NATS nodes not ready after {READY_TIMEOUT:?}: {}\n{}", whys.join("; "), self.log_tails());
            }
            sleep(Duration::from_millis(50));
        }
    }

    /// Ready: the client port greets with INFO and /jsz answers, with a meta leader in a
    /// cluster (JetStream refuses requests until the meta group has elected one).
    fn ready(&self, i: usize) -> Result<(), String> {
        let node = &self.nodes[i];
        client_ready(node.client)?;
        let jsz = http_get(node.monitor, "/jsz")?;
        if self.len() > 1 && meta_leader(&jsz).is_none() {
            return Err("no JetStream meta leader in /jsz yet".into());
        }
        Ok(())
    }

    fn log_tails(&self) -> String {
        let mut out = String::new();
        for i in 0..self.len() {
            let log = self.log(i);
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL)..];
            let path = self.dir.join(format!("node{i}.log"));
            out += &format!("--- {} (tail) ---\n{}\n", path.display(), tail.join("\n"));
        }
        out
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.len() {
            self.kill(i);
        }
        if std::thread::panicking() && self.tmp.is_some() {
            eprintln!("the NATS nodes' logs and stores are deleted; KEEP_TMP=1 keeps them");
        }
    }
}

/// `nats-server` on PATH, else where Debian's package puts it.
fn nats_server() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("nats-server"))
        .chain(["/usr/sbin/nats-server".into(), "/usr/bin/nats-server".into()])
        .find(|p| p.is_file())
}

fn connect(port: u16) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), PROBE_TIMEOUT)?;
    stream.set_read_timeout(Some(PROBE_TIMEOUT))?;
    stream.set_write_timeout(Some(PROBE_TIMEOUT))?;
    Ok(stream)
}

/// A NATS server greets every connection with `INFO {...}` before the client says anything.
fn client_ready(port: u16) -> Result<(), String> {
    let mut line = String::new();
    connect(port)
        .and_then(|s| BufReader::new(s).read_line(&mut line))
        .map_err(|e| format!("client port {port}: {e}"))?;
    if line.starts_with("INFO ") {
        Ok(())
    } else {
        Err(format!("client port {port} greeted with {line:?}, not INFO"))
    }
}

/// The body of a 200 answer; HTTP/1.0 so the server closes the connection after it.
fn http_get(port: u16, path: &str) -> Result<String, String> {
    let mut resp = String::new();
    connect(port)
        .and_then(|mut s| {
            write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n")?;
            s.read_to_string(&mut resp)
        })
        .map_err(|e| format!("GET {path} on monitoring port {port}: {e}"))?;
    match resp.split_once("\r\n\r\n") {
        Some((head, body)) if head.split(' ').nth(1) == Some("200") => Ok(body.to_owned()),
        _ => Err(format!("GET {path} on port {port} answered {resp:?}")),
    }
}

/// The `leader` of /jsz's `meta_cluster`. The server pretty-prints the JSON and omits the
/// field until the node has seen an election.
fn meta_leader(jsz: &str) -> Option<&str> {
    let meta = &jsz[jsz.find("\"meta_cluster\"")?..];
    // The leader precedes the `replicas` objects, so the first `}` bounds the search.
    let meta = &meta[..meta.find('}')?];
    let rest = &meta[meta.find("\"leader\"")? + "\"leader\"".len()..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start().strip_prefix('"')?;
    let leader = &rest[..rest.find('"')?];
    (!leader.is_empty()).then_some(leader)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_server() -> bool {
        let missing = nats_server().is_none();
        if missing {
            eprintln!("skipped: no nats-server (install Debian's `nats-server` package)");
        }
        missing
    }

    #[test]
    fn meta_leader_is_read_from_pretty_printed_jsz() {
        let elected = "{\n  \"meta_cluster\": {\n    \"name\": \"tally-test\",\n    \"leader\": \"n1\",\n    \
                       \"peer\": \"6DVFpukC\",\n    \"cluster_size\": 3\n  }\n}";
        assert_eq!(meta_leader(elected), Some("n1"));
        let electing = "{\n  \"meta_cluster\": {\n    \"name\": \"tally-test\",\n    \"peer\": \"fqA4S4SK\",\n    \
                        \"cluster_size\": 3\n  }\n}";
        assert_eq!(meta_leader(electing), None);
        assert_eq!(meta_leader("{\"server_id\": \"N\", \"streams\": 0}"), None);
    }

    #[test]
    fn single_node_starts_answers_stops_and_restarts() {
        if no_server() {
            return;
        }
        let mut nats = NatsCluster::start(1);
        assert_eq!(nats.len(), 1);
        assert_eq!(nats.urls(), nats.url(0));
        let jsz = http_get(nats.nodes[0].monitor, "/jsz").unwrap();
        assert!(jsz.contains("\"server_id\""), "{jsz}");
        nats.kill(0);
        assert!(!nats.is_running(0));
        assert!(client_ready(nats.nodes[0].client).is_err());
        nats.restart(0);
        assert!(nats.is_running(0));
        nats.stop(0);
        assert!(!nats.is_running(0));
        assert_eq!(nats.log(0).matches("Server is ready").count(), 2, "{}", nats.log(0));
    }

    #[test]
    fn cluster_elects_a_meta_leader_again_after_a_node_is_killed_and_restarted() {
        if no_server() {
            return;
        }
        let mut nats = NatsCluster::start(3);
        assert_eq!(nats.urls().split(',').count(), 3);
        nats.kill(0);
        assert!(!nats.is_running(0));
        nats.restart(0);
        for (i, node) in nats.nodes.iter().enumerate() {
            let jsz = http_get(node.monitor, "/jsz").unwrap();
            assert!(meta_leader(&jsz).is_some(), "node {i}: {jsz}");
        }
    }
}
