//! Privacy that keeps the log verifiable: personal fields erased on request (admin API
//! while serving, `tally erase` when stopped) and by retention (`tally retention`), after
//! which `verify` passes, `replay` reproduces the ledger, the ledger's digest is unchanged,
//! exports show the fields as erased, and the erased values are gone from the data
//! directory's files.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use tally_log::{Log, LogMetrics, LogOptions};
use tally_model::Event;

use crate::common::*;

const DAY: u64 = 86_400_000;

/// A click through the server from `ip` (forwarded by the trusted local proxy) with a
/// browser's user agent and referrer; returns its click ID.
fn click(server: &TestServer, ip: &str, user_agent: &str) -> String {
    let r = server.send(&format!(
        "GET /c/demo?sub1=p HTTP/1.1\r\nHost: t\r\nUser-Agent: {user_agent}\r\nReferer: https://ref.example/{user_agent}\r\nX-Forwarded-For: {ip}\r\n\r\n"
    ));
    assert_eq!(r.status, 302, "{}", r.text());
    r.click_id()
}

fn postback(server: &TestServer, cid: &str, txid: &str, ip: &str) {
    let r = server.send(&format!(
        "GET /postback?cid={cid}&offer=shoes&goal=signup&txid={txid}&token={TOKEN} HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: {ip}\r\n\r\n"
    ));
    assert_eq!(r.status, 200, "{}", r.text());
}

const ADMIN: &str = "privacy-admin-token-0123456789";

fn env() -> Env {
    let env = Env::build("", "", "ip_mode = \"full\"\ntrusted_proxies = [\"127.0.0.1\"]\n");
    env.append_config(&format!("[admin]\ntoken = \"{ADMIN}\"\n"));
    env
}

/// The bytes of every file under `dir`. Table files are compressed, so each scan also checks
/// that a value still held is found.
fn file_bytes(dir: &Path) -> Vec<u8> {
    files_under(dir).iter().flat_map(|f| std::fs::read(f).unwrap_or_default()).collect()
}

fn holds(bytes: &[u8], needle: &str) -> bool {
    bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
}

fn digest(d: &str) -> String {
    let (ok, out, err) = run(&["commissions", "--data-dir", d, "--digest"]);
    assert!(ok, "{err}");
    out
}

/// `verify --format json` passes, with this many records' personal fields erased.
fn verify_erased(d: &str) -> u64 {
    let (code, v) = run_json(&["verify", "--data-dir", d, "--format", "json"]);
    assert!(code == 0 && v["ok"] == true, "{v}");
    v["personal"]["erased"].as_u64().unwrap()
}

fn replay_matches(d: &str) {
    let (code, out, err) = run_code(&["replay", "--data-dir", d]);
    assert_eq!(code, 0, "replay must reproduce the ledger after erasure: {out}{err}");
}

#[test]
fn erasure_by_the_admin_api_and_the_cli_keeps_verify_replay_and_the_ledger() {
    let env = env();
    let data = env.data();
    let d = data.to_str().unwrap();
    let mut server = env.serve();
    let a = click(&server, "198.51.100.7", "Erasable-UA/1.0");
    let b = click(&server, "198.51.100.8", "Kept-UA/2.0");
    postback(&server, &a, "TA", "192.0.2.50");
    let px = server.send(&format!(
        "GET /px.gif?cid={a}&offer=shoes&goal=sale&txid=PA&amount=20.00 HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 198.51.100.7\r\n\r\n"
    ));
    assert_eq!(px.status, 200, "{}", px.text());
    postback(&server, &b, "TB", "192.0.2.50");
    wait_for_ledger(&data, 3);

    // Bad requests are refused and erase nothing.
    for (body, why) in [
        ("{}", "nothing to erase"),
        (r#"{"click_ids":["not-a-click"]}"#, "not a click ID"),
        (r#"{"ips":[""]}"#, "is empty"),
        (r#"{"click":"x"}"#, "bad JSON body"),
    ] {
        let r = server.admin("POST", "/admin/erase", Some(ADMIN), body);
        assert!(r.status == 400 && r.text().contains(why), "{body}: {} {}", r.status, r.text());
    }
    let r = server.admin("POST", "/admin/retention", Some(ADMIN), "{}");
    assert!(r.status == 400 && r.text().contains("retention_days is 0"), "{}", r.text());
    // While the server holds the log, the CLI says where to go instead.
    let (code, _, err) = run_code(&["erase", "--data-dir", d, "--click", &a]);
    assert!(code == 2 && err.contains("POST /admin/erase"), "{err}");

    // Click a, its postback and its pixel.
    let r = server.admin("POST", "/admin/erase", Some(ADMIN), &format!(r#"{{"click_ids":["{a}"]}}"#));
    assert_eq!(r.status, 200, "{}", r.text());
    let report = r.json();
    assert_eq!((report["erased"].as_u64(), report["chained"].as_u64()), (Some(3), Some(0)), "{report}");
    assert!(server.metrics().contains("tally_personal_fields_erased_total 3"));
    // The server goes on recording clicks after an erasure.
    let c = click(&server, "198.51.100.9", "Later-UA/3.0");
    assert!(server.stop());
    let before = digest(d);

    assert_eq!(verify_erased(d), 3);
    replay_matches(d);
    assert_eq!(digest(d), before, "the ledger is untouched");
    let clicks: Vec<serde_json::Value> =
        run(&["export", "clicks", "--data-dir", d]).1.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let row = |cid: &str| clicks.iter().find(|r| r["click_id"] == cid).unwrap().clone();
    let (ra, rb) = (row(&a), row(&b));
    assert_eq!(
        (ra["personal"].as_str(), ra["ip"].as_str(), ra["user_agent"].as_str()),
        (Some("erased"), Some(""), Some(""))
    );
    assert_eq!(ra["referrer"], "");
    assert_eq!(
        (rb["personal"].as_str(), rb["ip"].as_str(), rb["user_agent"].as_str()),
        (Some("present"), Some("198.51.100.8"), Some("Kept-UA/2.0"))
    );
    assert_eq!(row(&c)["personal"], "present");
    assert!(!ra["visitor"].as_str().unwrap().is_empty(), "the visitor key stays: unique clicks do not change");
    let conversions = run(&["export", "conversions", "--data-dir", d, "--format", "csv"]).1;
    assert!(
        conversions.lines().next().unwrap().ends_with(",time,personal,advertiser,customer,customer_id"),
        "{conversions}"
    );
    let bytes = file_bytes(&data);
    assert!(!holds(&bytes, "Erasable-UA/1.0") && !holds(&bytes, "198.51.100.7"), "erased values left in the files");
    assert!(holds(&bytes, "Kept-UA/2.0"), "the scan reads the files");

    // Stopped: the CLI erases by IP. b's postback came from the same server as a's, whose IP
    // is already gone, so nothing else matches it.
    let (code, v) = run_json(&["erase", "--data-dir", d, "--ip", "192.0.2.50", "--format", "json"]);
    assert!(code == 0 && v["ok"] == true, "{v}");
    assert_eq!((v["erased"].as_u64(), v["already_erased"].as_u64()), (Some(1), Some(0)), "{v}");
    let (ok, out, err) = run(&["erase", "--data-dir", d, "--click", &b]);
    assert!(ok && out.contains("1 erased now"), "{out}{err}");
    assert_eq!(verify_erased(d), 5);
    replay_matches(d);
    assert_eq!(digest(d), before);

    // Bad arguments: exit 2, naming the problem.
    let (code, _, err) = run_code(&["erase", "--data-dir", d]);
    assert!(code == 2 && err.contains("nothing to erase"), "{err}");
    let (code, _, err) = run_code(&["erase", "--data-dir", d, "--click", "nope"]);
    assert!(code == 2 && err.contains("nope"), "{err}");
    let (code, _, err) = run_code(&["erase", "--data-dir", d, "--customer", ""]);
    assert!(code == 2 && err.contains("--customer"), "{err}");
    // A customer no conversion names: nothing to erase, and that is no error.
    let (code, v) = run_json(&["erase", "--data-dir", d, "--customer", "nobody@example.com", "--format", "json"]);
    assert!(code == 0 && v["erased"] == 0, "{v}");
    let missing = env.tmp.path().join("missing");
    let (code, _, err) = run_code(&["erase", "--data-dir", missing.to_str().unwrap(), "--ip", "1.2.3.4"]);
    assert!(code == 2 && err.contains("no Tally log"), "{err}");
    assert!(!missing.exists(), "erase must not create a log");
}

#[test]
fn retention_erases_what_is_older_than_the_window_and_keeps_the_ledger() {
    let env = env();
    let data = env.data();
    let d = data.to_str().unwrap();
    // Forty days ago: the program in force, a click and its postback, written to the log as
    // the server would have.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let old = now - 40 * DAY;
    let program = tally_edge::load_for(&tally_server::Config::load(&env.config()).unwrap().edge, Default::default())
        .unwrap()
        .program;
    let old_click = ClickBuilder::new().at(old).link("demo").ip("198.51.100.40").user_agent("Old-UA/40").build();
    let conversion = ConversionBuilder::new()
        .at(old + 60_000)
        .click(old_click.click_id)
        .goal("signup")
        .txid("OLD")
        .ip("198.51.100.41");
    {
        let log = Log::open(&data, LogOptions::default(), LogMetrics::default()).unwrap();
        let Ok(Event::ProgramChange(mut change)) =
            tally_model::decode(&tally_edge::program_change_record(&program).unwrap())
        else {
            panic!("not a program change")
        };
        change.ts_ms = old - 1000;
        log.submit(tally_model::encode(&Event::ProgramChange(change)).unwrap()).unwrap().wait().unwrap();
        for e in [Event::Click(old_click.clone()), conversion.event()] {
            log.submit(tally_model::encode(&e).unwrap()).unwrap().wait().unwrap();
        }
        log.close();
    }
    let mut server = env.serve();
    let new = click(&server, "198.51.100.50", "New-UA/1");
    postback(&server, &new, "NEW", "198.51.100.51");
    wait_for_ledger(&data, 2);
    assert!(server.stop());
    let before = digest(d);

    let (code, _, err) = run_code(&["retention", "--data-dir", d, "--days", "0"]);
    assert!(code == 2 && err.contains("0"), "{err}");
    let (code, v) = run_json(&["retention", "--data-dir", d, "--days", "30", "--format", "json"]);
    assert!(code == 0 && v["ok"] == true, "{v}");
    assert_eq!(v["erased"], 2, "{v}");
    assert_eq!(verify_erased(d), 2);
    replay_matches(d);
    assert_eq!(digest(d), before);
    let events = events(&data);
    let personal = |cid: &str| -> Vec<&str> {
        events.iter().filter(|e| e["click_id"] == cid).map(|e| e["personal"].as_str().unwrap()).collect()
    };
    assert_eq!(personal(&old_click.click_id.to_string()), ["erased", "erased"]);
    assert_eq!(personal(&new), ["present", "present"]);
    let bytes = file_bytes(&data);
    assert!(!holds(&bytes, "Old-UA/40") && holds(&bytes, "New-UA/1"));
    // A second pass has nothing left to do.
    let (ok, out, err) = run(&["retention", "--data-dir", d, "--days", "30"]);
    assert!(ok && out.contains("0 erased now"), "{out}{err}");

    // A snapshot (for auditors) carries no day keys: its holder cannot test guesses against
    // visitor keys. The data directory keeps its own.
    let today = (now / DAY) as u32;
    let day_key = |dir: &Path| {
        let log = Log::open(dir, LogOptions::default(), LogMetrics::default()).unwrap();
        let key = log.day_key(today).unwrap();
        log.close();
        key
    };
    let kept = day_key(&data);
    let snap = env.tmp.path().join("snap");
    let (ok, out, err) = run(&["snapshot", "--data-dir", d, "--out", snap.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    assert_ne!(day_key(&snap), kept, "the snapshot made a new key: it had none");
    assert_eq!(day_key(&data), kept);
    assert_eq!(verify_erased(snap.to_str().unwrap()), 2);
}
