//! Outgoing webhooks through a SIGKILL of `tally serve` mid-delivery, against a slow
//! receiver on 127.0.0.1: after a restart every notification is delivered at least once, and
//! every repeat carries the key that lets the receiver drop it.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;

pub(crate) const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A receiver that takes 100 ms to answer 200, counting requests by idempotency key.
pub(crate) fn slow_receiver() -> (String, Arc<Mutex<BTreeMap<String, usize>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();
    let log = Arc::clone(&seen);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                let mut r = BufReader::new(s.try_clone().unwrap());
                loop {
                    let (mut key, mut len, mut line) = (String::new(), 0usize, String::new());
                    let mut any = false;
                    while r.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                        any = true;
                        let lower = line.to_ascii_lowercase();
                        if let Some(v) = lower.strip_prefix("idempotency-key:") {
                            key = v.trim().to_owned();
                        }
                        if let Some(v) = lower.strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                        line.clear();
                    }
                    if !any {
                        return;
                    }
                    let mut body = vec![0; len];
                    let _ = r.read_exact(&mut body);
                    std::thread::sleep(Duration::from_millis(100));
                    *log.lock().unwrap().entry(key).or_default() += 1;
                    if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// A webhook `crm` to the receiver at `addr`, with its signing secret in `env`'s store.
pub(crate) fn with_webhook(env: &Env, addr: &str) {
    env.append_program(&format!(
        "[[webhooks]]\nid = \"crm\"\nurl = \"http://{addr}/hooks\"\nsecret = \"crm-key\"\nevents = [\"commission.created\"]\n"
    ));
    let secrets = env.tmp.path().join("secrets.toml");
    let mut s = std::fs::read_to_string(&secrets).unwrap();
    s.push_str(&format!("crm-key = \"{SECRET}\"\n"));
    std::fs::write(&secrets, s).unwrap();
}

#[test]
fn a_sigkill_mid_delivery_loses_no_notification() {
    let (addr, seen) = slow_receiver();
    let env = Env::new("");
    env.append_config("[deliveries]\nallow_private = true\ntimeout_ms = 5000\nper_receiver = 1\n");
    with_webhook(&env, &addr);

    let mut server = env.spawn();
    const SALES: usize = 40;
    for i in 0..SALES {
        let r = server
            .get(&format!("/postback?offer=shoes&goal=sale&coupon=SPRING10&txid=K{i}&amount=10.00&token={TOKEN}"));
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // Killed once some, not all, were delivered (one at a time, 100 ms each).
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.lock().unwrap().len() < 5 {
        assert!(Instant::now() < deadline, "no delivery began");
        std::thread::sleep(Duration::from_millis(20));
    }
    server.kill();
    let before = seen.lock().unwrap().len();
    assert!(before < SALES, "all {before} were delivered before the kill: nothing was tested");

    let mut server = env.spawn();
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen.lock().unwrap().len() < SALES {
        assert!(
            Instant::now() < deadline,
            "only {} of {SALES} delivered after the restart",
            seen.lock().unwrap().len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let keys = seen.lock().unwrap().clone();
    assert_eq!(keys.len(), SALES, "one key per notification: {keys:?}");
    assert!(keys.keys().all(|k| k.starts_with("tally-")), "{keys:?}");
    // The delivery log, read beside the running server.
    let d = env.data();
    let d = d.to_str().unwrap();
    let mut delivered = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while delivered < SALES {
        assert!(Instant::now() < deadline, "{delivered} recorded delivered");
        let (code, out, err) =
            run_code(&["deliveries", "list", "--data-dir", d, "--status", "delivered", "--format", "json"]);
        assert_eq!(code, 0, "{out}{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        delivered = v["deliveries"].as_array().unwrap().len();
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, out, _) = run_code(&["deliveries", "list", "--data-dir", d, "--receiver", "crm"]);
    assert!(code == 0 && out.lines().count() == SALES && out.contains("  delivered  crm  "), "{out}");
    let (code, _, err) = run_code(&["deliveries", "list", "--data-dir", d, "--status", "lost"]);
    assert!(code == 2 && err.contains("--status"), "{err}");
    let (code, _, err) = run_code(&["deliveries", "redeliver", "nope", "--token-file", "/dev/null"]);
    assert!(code == 2 && err.contains("not a delivery key"), "{err}");
    assert!(server.stop());
}

/// With the worker in its own process (`tally attribute`), that process writes the outbox,
/// so it delivers, and serves the delivery log on its metrics listener; the server has none.
#[test]
fn a_separate_worker_process_delivers_and_serves_its_delivery_log() {
    const ADMIN: &str = "separate-worker-admin-token-0123";
    let (addr, seen) = slow_receiver();
    let env = Env::new("");
    env.append_config(&format!(
        "[attribution]\nin_process = false\n[deliveries]\nallow_private = true\n[admin]\ntoken = \"{ADMIN}\"\n"
    ));
    with_webhook(&env, &addr);
    let server = env.spawn();
    for i in 0..3 {
        let r = server
            .get(&format!("/postback?offer=shoes&goal=sale&coupon=SPRING10&txid=W{i}&amount=10.00&token={TOKEN}"));
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let (cfg, data) = (env.config(), env.data());
    let mut worker = std::process::Command::new(BIN)
        .args(["attribute", "--config", cfg.to_str().unwrap(), "--data-dir", data.to_str().unwrap()])
        .args(["--metrics-listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let metrics: std::net::SocketAddr = {
        let mut lines = BufReader::new(worker.stdout.take().unwrap()).lines();
        loop {
            let line = lines.next().unwrap().unwrap();
            if let Some(a) = line.strip_prefix("tally attribute metrics on ") {
                break a.parse().unwrap();
            }
        }
    };
    wait_for("the worker process delivers", || seen.lock().unwrap().len() == 3);
    let get = |path: &str, token: &str| {
        Conn::open(metrics).send(&format!("GET {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n\r\n"))
    };
    wait_for("its delivery log", || {
        let r = get("/admin/deliveries?status=delivered", ADMIN);
        r.status == 200
            && serde_json::from_str::<serde_json::Value>(&r.text()).unwrap()["deliveries"].as_array().unwrap().len()
                == 3
    });
    assert_eq!(get("/admin/deliveries", "wrong").status, 401);
    assert_eq!(get("/admin/deliveries/nope", ADMIN).status, 400);
    let on_server = server.admin("GET", "/admin/deliveries", Some(ADMIN), "");
    assert_eq!(on_server.status, 404, "{}", on_server.text());
    let _ = std::process::Command::new("kill").args(["-TERM", &worker.id().to_string()]).status();
    assert!(worker.wait().unwrap().success(), "tally attribute did not stop cleanly");
}
