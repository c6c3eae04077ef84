//! Concurrency and crash acceptance: every acknowledged click is in the log exactly once.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeSet, HashMap};

use crate::common::*;

fn assert_log_is_whole(events: &[serde_json::Value]) {
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs.first(), Some(&1));
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "sequence gap");
}

#[test]
fn concurrent_clicks_are_each_logged_exactly_once_with_no_gaps() {
    let env = Env::new("");
    let mut server = env.serve();
    let ids = click_storm(server.addr, 32, 150, "load");
    assert_eq!(ids.len(), 32 * 150, "every request gets its 302");
    assert!(server.stop());
    let events = events(&env.data());
    assert_log_is_whole(&events);
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for c in of_type(&events, "click") {
        *counts.entry(c["click_id"].as_str().unwrap()).or_default() += 1;
    }
    for id in &ids {
        assert_eq!(counts.get(id.as_str()), Some(&1), "click {id} logged {:?} times", counts.get(id.as_str()));
    }
    assert_eq!(counts.len(), ids.len());
    let markers: BTreeSet<&str> = of_type(&events, "click").iter().map(|c| c["sub1"].as_str().unwrap()).collect();
    assert_eq!(markers.len(), ids.len(), "sub IDs are unique per request");
    assert!(tally(&["verify", "--data-dir", env.data().to_str().unwrap()]).status.success());
}

fn survive_sigkill(log_extra: &str) {
    let env = Env::new(log_extra);
    let mut server = env.spawn();
    let addr = server.addr;
    let storm = std::thread::spawn(move || click_storm(addr, 16, 100_000, "kill"));
    // Kill once enough clicks have been acknowledged that the kill lands mid-stream.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let m = server.metrics();
        let appended = m
            .lines()
            .find(|l| l.starts_with("tally_log_events_appended_total"))
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        if appended > 2_000 || std::time::Instant::now() > deadline {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    server.kill();
    let acknowledged = storm.join().unwrap();
    assert!(acknowledged.len() > 2_000, "only {} clicks before the kill", acknowledged.len());

    // Restart on the same directory: recovery must see every acknowledged click.
    let mut again = TestServer::start(&env.config(), &env.data());
    assert_eq!(again.get("/c/demo").status, 302);
    assert!(again.stop());
    let events = events(&env.data());
    assert_log_is_whole(&events);
    let logged: BTreeSet<&str> = of_type(&events, "click").iter().map(|c| c["click_id"].as_str().unwrap()).collect();
    let lost: Vec<&String> = acknowledged.iter().filter(|id| !logged.contains(id.as_str())).collect();
    assert!(lost.is_empty(), "{} acknowledged clicks lost, e.g. {:?}", lost.len(), lost.first());
    assert_eq!(logged.len(), of_type(&events, "click").len(), "a click was logged twice");
    assert!(tally(&["verify", "--data-dir", env.data().to_str().unwrap()]).status.success());
}

#[test]
fn sigkill_under_load_loses_no_acknowledged_click_sync_none() {
    survive_sigkill("sync = \"none\"");
}

#[test]
fn sigkill_under_load_loses_no_acknowledged_click_sync_batch() {
    survive_sigkill("sync = \"batch\"");
}
