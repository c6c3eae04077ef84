//! systemd's readiness protocol (`Type=notify`): `tally serve` and `tally attribute` send
//! READY=1 to `$NOTIFY_SOCKET` once they answer, and STOPPING=1 when SIGTERM stops them. A
//! real unix datagram socket stands in for systemd.

use std::io::BufRead;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;

fn notify_socket(env: &Env) -> (UnixDatagram, PathBuf) {
    let path = env.tmp.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    (sock, path)
}

fn next(sock: &UnixDatagram, within: Duration) -> Option<String> {
    sock.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[test]
fn serve_tells_systemd_it_is_ready_once_it_answers_and_when_it_stops() {
    let env = Env::new("");
    let (sock, path) = notify_socket(&env);
    let mut server = env.spawn_with_env(&[("NOTIFY_SOCKET", path.to_str().unwrap())]);
    assert_eq!(next(&sock, Duration::from_secs(60)).as_deref(), Some("READY=1"));
    // No retry: at READY=1 both listeners answer, and the log takes clicks.
    assert_eq!(server.get("/readyz").status, 200);
    assert_eq!(server.get("/c/demo").status, 302);
    assert!(server.metrics().contains("tally_build_info"));
    assert_eq!(next(&sock, Duration::from_millis(200)), None, "one READY=1, nothing else while serving");
    assert!(server.stop(), "tally did not exit 0 on SIGTERM");
    assert_eq!(next(&sock, Duration::from_secs(5)).as_deref(), Some("STOPPING=1"));
}

#[test]
fn serve_runs_when_the_notify_socket_is_missing() {
    let env = Env::new("");
    let missing = env.tmp.path().join("no-such.sock");
    let mut server = env.spawn_with_env(&[("NOTIFY_SOCKET", missing.to_str().unwrap())]);
    assert_eq!(server.get("/readyz").status, 200);
    assert!(server.stop());
}

#[test]
fn attribute_tells_systemd_it_is_ready_and_when_it_stops() {
    let env = Env::new("");
    env.append_config("[attribution]\nin_process = false\n");
    let _server = env.serve();
    let (sock, path) = notify_socket(&env);
    let mut worker = Command::new(BIN)
        .args(["attribute", "--config", env.config().to_str().unwrap(), "--data-dir", env.data().to_str().unwrap()])
        .args(["--metrics-listen", "127.0.0.1:0"])
        .env("NOTIFY_SOCKET", &path)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(worker.stdout.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().unwrap().unwrap();
        if let Some(a) = line.strip_prefix("tally attribute metrics on ") {
            break a.parse::<std::net::SocketAddr>().unwrap();
        }
    };
    assert_eq!(next(&sock, Duration::from_secs(60)).as_deref(), Some("READY=1"));
    let m = Conn::open(addr).send("GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n").text();
    assert!(m.contains("tally_attribution_up"), "{m}");
    Command::new("kill").args(["-TERM", &worker.id().to_string()]).status().unwrap();
    assert_eq!(next(&sock, Duration::from_secs(10)).as_deref(), Some("STOPPING=1"));
    assert!(worker.wait().unwrap().success(), "SIGTERM stops the worker cleanly");
}
