//! Audit inputs and outputs against a real `tally serve` and RocksDB in a temp dir: chain
//! anchors (`verify --anchor`), typed exports, and snapshots (`tally snapshot`).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use common::*;

fn run(args: &[&str]) -> (bool, String, String) {
    let out = tally(args);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The `head SEQ:HEX` that `tally verify` prints.
fn head_line(dir: &Path) -> String {
    let (ok, out, err) = run(&["verify", "--data-dir", dir.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    out.lines().find_map(|l| l.strip_prefix("head ")).unwrap().to_owned()
}

fn forged_program_change() -> Vec<u8> {
    tally_model::encode(&tally_model::Event::ProgramChange(tally_model::ProgramChange {
        ts_ms: 1,
        digest: "forged".into(),
        source: String::new(),
    }))
    .unwrap()
}

#[test]
fn verify_anchor_proves_the_log_up_to_a_published_head() {
    let env = Env::new("");
    let dir = env.data();
    let d = dir.to_str().unwrap();
    let mut server = env.start();
    click_storm(server.addr, 2, 20, "anchor");
    assert!(server.stop());
    let anchor = head_line(&dir);
    let anchor_seq: u64 = anchor.split(':').next().unwrap().parse().unwrap();

    // More traffic after the anchor was published: the anchor still holds.
    let mut server = env.start();
    click_storm(server.addr, 2, 20, "later");
    assert!(server.stop());
    let (ok, out, err) = run(&["verify", "--data-dir", d, "--anchor", &anchor]);
    assert!(ok, "{out}{err}");
    assert!(out.contains(&format!("anchor ok: the log up to sequence {anchor_seq} is unchanged")), "{out}");

    // Beyond the head, and malformed anchors, are refused naming the value.
    let beyond = format!("99999:{}", anchor.split(':').nth(1).unwrap());
    let (ok, out, _) = run(&["verify", "--data-dir", d, "--anchor", &beyond]);
    assert!(!ok && out.contains("sequence 99999 is beyond the log's head"), "{out}");
    for bad in ["12", "12:xyz", "abc:00"] {
        let (ok, _, err) = run(&["verify", "--data-dir", d, "--anchor", bad]);
        assert!(!ok && err.contains(&format!("\"{bad}\"")), "{bad}: {err}");
    }

    // A record before the anchor is edited and the chain rewritten to hide it: plain verify
    // passes, the anchor does not.
    tally_log::testing::overwrite_event(&dir, anchor_seq - 3, &forged_program_change()).unwrap();
    tally_log::testing::rechain(&dir, None).unwrap();
    let (ok, out, _) = run(&["verify", "--data-dir", d]);
    assert!(ok, "{out}");
    let (ok, out, _) = run(&["verify", "--data-dir", d, "--anchor", &anchor]);
    assert!(!ok, "{out}");
    assert!(out.contains(&format!("anchor FAILED: the records up to sequence {anchor_seq} hash to")), "{out}");
}

#[test]
fn verify_anchor_off_a_batch_boundary_names_the_nearest_ones() {
    let env = Env::new("");
    let dir = env.data();
    let d = dir.to_str().unwrap();
    let mut server = env.start();
    click_storm(server.addr, 1, 30, "boundary");
    assert!(server.stop());
    // Known boundaries every 10 records.
    tally_log::testing::rechain(&dir, Some(10)).unwrap();
    let head = head_line(&dir);
    let hex = head.split(':').nth(1).unwrap();
    let (ok, out, _) = run(&["verify", "--data-dir", d, "--anchor", &format!("15:{hex}")]);
    assert!(!ok);
    assert!(out.contains("no batch ends at sequence 15 (nearest batch ends: 10, 20)"), "{out}");
    // An edit without rewriting the chain: verify fails, and so does the anchor after it.
    tally_log::testing::overwrite_event(&dir, 4, &forged_program_change()).unwrap();
    let (ok, out, _) = run(&["verify", "--data-dir", d, "--anchor", &head]);
    assert!(!ok);
    assert!(out.contains("FAILED at sequence 4") && out.contains("anchor FAILED"), "{out}");
}
