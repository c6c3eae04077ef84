//! Test harness: a real `tally serve` process on 127.0.0.1 with a real RocksDB in a temp dir,
//! and a raw HTTP/1.1 client (raw so tests can send what a browser or attacker would).
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_tally");
pub const TOKEN: &str = "demo-acme-token-change-me";
pub const HMAC_SECRET: &str = "demo-acme-hmac-secret-change-me";

pub fn repo_config(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config").join(name)
}

/// A `tally serve` child process. Killed on drop.
pub struct Server {
    child: Option<Child>,
    pub addr: SocketAddr,
    /// The admin listener (`/metrics`, health, `/admin/`).
    pub admin: SocketAddr,
    pub dir: PathBuf,
    pub config: PathBuf,
}

pub struct Env {
    pub tmp: tempfile::TempDir,
}

impl Env {
    /// A temp dir holding `tally.toml` (with `extra` appended to its [log] section) and a
    /// copy of the example program.
    pub fn new(log_extra: &str) -> Env {
        Env::build("", log_extra, "")
    }

    /// Like [`Env::new`], with extra lines for the `[server]`, `[log]` and `[privacy]` tables.
    pub fn build(server_extra: &str, log_extra: &str, privacy_extra: &str) -> Env {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::copy(repo_config("program.toml"), tmp.path().join("program.toml")).unwrap();
        let server = if server_extra.contains("header_read_timeout_ms") {
            format!("drain_timeout_ms = 5000\n{server_extra}")
        } else {
            format!("header_read_timeout_ms = 2000\ndrain_timeout_ms = 5000\n{server_extra}")
        };
        let config = format!(
            "[server]\n{server}\n[log]\ndata_dir = \"data\"\n{log_extra}\n[program]\npath = \"program.toml\"\n[privacy]\n{privacy_extra}\n[logging]\nlevel = \"warn\"\n"
        );
        std::fs::write(tmp.path().join("tally.toml"), config).unwrap();
        Env { tmp }
    }

    pub fn config(&self) -> PathBuf {
        self.tmp.path().join("tally.toml")
    }

    pub fn data(&self) -> PathBuf {
        self.tmp.path().join("data")
    }

    pub fn program(&self) -> PathBuf {
        self.tmp.path().join("program.toml")
    }

    pub fn start(&self) -> Server {
        Server::start(&self.config(), &self.data())
    }

    pub fn start_with_env(&self, vars: &[(&str, &str)]) -> Server {
        Server::start_with_env(&self.config(), &self.data(), vars)
    }
}

impl Server {
    pub fn start(config: &Path, data: &Path) -> Server {
        Server::start_with_env(config, data, &[])
    }

    pub fn start_with_env(config: &Path, data: &Path, vars: &[(&str, &str)]) -> Server {
        let mut child = Command::new(BIN)
            .envs(vars.iter().copied())
            .args(["serve", "--config"])
            .arg(config)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--worker-threads", "2"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("tally listening on ") {
                    let _ = tx.send((false, addr.parse::<SocketAddr>().unwrap()));
                } else if let Some(addr) = line.strip_prefix("tally admin listening on ") {
                    let _ = tx.send((true, addr.parse::<SocketAddr>().unwrap()));
                }
            }
        });
        let (mut addr, mut admin) = (None, None);
        while addr.is_none() || admin.is_none() {
            match rx.recv_timeout(Duration::from_secs(60)).expect("server did not start within 60 s") {
                (false, a) => addr = Some(a),
                (true, a) => admin = Some(a),
            }
        }
        Server {
            child: Some(child),
            addr: addr.unwrap(),
            admin: admin.unwrap(),
            dir: data.to_owned(),
            config: config.to_owned(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args([&format!("-{sig}"), &self.pid().to_string()]).status().unwrap();
        assert!(ok.success());
    }

    /// SIGKILL, no chance to flush anything.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM and wait; returns whether it exited successfully.
    pub fn stop(&mut self) -> bool {
        let Some(mut c) = self.child.take() else { return false };
        self.child = None;
        let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return status.success();
            }
            if std::time::Instant::now() > deadline {
                c.kill().unwrap();
                c.wait().unwrap();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn get(&self, target: &str) -> Resp {
        Conn::open(self.addr).send(&format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n"))
    }

    pub fn send(&self, raw: &str) -> Resp {
        Conn::open(self.addr).send(raw)
    }

    /// `/metrics` from the admin listener, as text.
    pub fn metrics(&self) -> String {
        let r = Conn::open(self.admin).send("GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(r.status, 200, "{}", r.text());
        r.text()
    }

    /// A request to the admin listener; `token` goes in `Authorization: Bearer`.
    pub fn admin(&self, method: &str, path: &str, token: Option<&str>, body: &str) -> Resp {
        let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        Conn::open(self.admin).send(&format!(
            "{method} {path} HTTP/1.1\r\nHost: t\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// The click ID in a redirect's `cid=` parameter.
    pub fn click_id(&self) -> String {
        let loc = self.header("location").expect("no Location");
        let start = loc.find("cid=").expect("no cid= in Location") + 4;
        loc[start..start + 26].to_owned()
    }
}

/// A keep-alive HTTP/1.1 connection.
pub struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    pub fn open(addr: SocketAddr) -> Conn {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.set_nodelay(true).unwrap();
        Conn { reader: BufReader::new(s) }
    }

    /// Wraps a stream the caller has configured (timeouts, or a connect that may fail).
    pub fn from_stream(s: TcpStream) -> Conn {
        Conn { reader: BufReader::new(s) }
    }

    pub fn send(&mut self, raw: &str) -> Resp {
        self.try_send(raw.as_bytes()).unwrap()
    }

    pub fn try_send(&mut self, raw: &[u8]) -> std::io::Result<Resp> {
        self.reader.get_mut().write_all(raw)?;
        let head_only = raw.starts_with(b"HEAD ");
        self.read_response(head_only)
    }

    fn read_response(&mut self, head_only: bool) -> std::io::Result<Resp> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed"));
        }
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            self.reader.read_line(&mut h)?;
            let h = h.trim_end_matches(['\r', '\n']);
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_owned(), v.trim().to_owned()));
            }
        }
        let len: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; if head_only { 0 } else { len }];
        self.reader.read_exact(&mut body)?;
        Ok(Resp { status, headers, body })
    }
}

/// Runs a `tally` subcommand to completion.
pub fn tally(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

/// Runs a `tally` subcommand to completion: (succeeded, stdout, stderr).
pub fn run(args: &[&str]) -> (bool, String, String) {
    let out = tally(args);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `tally export events --format jsonl` as parsed objects.
pub fn export(dir: &Path) -> Vec<serde_json::Value> {
    let out = tally(&["export", "events", "--data-dir", dir.to_str().unwrap()]);
    assert!(out.status.success(), "export failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

pub fn of_type<'a>(events: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    events.iter().filter(|e| e["type"] == kind).collect()
}

/// Fires `n` clicks per thread over keep-alive connections; returns the click IDs whose 302
/// was received. Stops a thread at its first failure (e.g. the server was killed).
pub fn click_storm(addr: SocketAddr, threads: usize, n: usize, tag: &str) -> Vec<String> {
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let tag = tag.to_owned();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                let Ok(s) = TcpStream::connect(addr) else { return got };
                let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                let mut conn = Conn { reader: BufReader::new(s) };
                for i in 0..n {
                    let req = format!(
                        "GET /c/demo?sub1={tag}-{t}-{i} HTTP/1.1\r\nHost: t\r\nUser-Agent: Mozilla/5.0 test\r\n\r\n"
                    );
                    match conn.try_send(req.as_bytes()) {
                        Ok(r) if r.status == 302 => got.push(r.click_id()),
                        _ => break,
                    }
                }
                got
            })
        })
        .collect();
    handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
}
