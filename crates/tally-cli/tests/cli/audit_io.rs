//! Audit inputs and outputs against a real `tally serve` and RocksDB in a temp dir: chain
//! anchors (`verify --anchor`), typed exports, and snapshots (`tally snapshot`).
#![allow(clippy::unwrap_used)]

use std::path::Path;

use crate::common::*;

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
    let mut server = env.serve();
    click_storm(server.addr, 2, 20, "anchor");
    assert!(server.stop());
    let anchor = head_line(&dir);
    let anchor_seq: u64 = anchor.split(':').next().unwrap().parse().unwrap();

    // More traffic after the anchor was published: the anchor still holds.
    let mut server = env.serve();
    click_storm(server.addr, 2, 20, "later");
    assert!(server.stop());
    let (ok, out, err) = run(&["verify", "--data-dir", d, "--anchor", &anchor]);
    assert!(ok, "{out}{err}");
    assert!(out.contains(&format!("anchor ok: the log up to sequence {anchor_seq} is unchanged")), "{out}");
    let (code, v) = run_json(&["verify", "--data-dir", d, "--anchor", &anchor, "--format", "json"]);
    assert_eq!((code, v["ok"].as_bool()), (0, Some(true)), "{v}");
    assert_eq!((v["anchor"]["ok"].as_bool(), v["anchor"]["outcome"].as_str()), (Some(true), Some("matches")), "{v}");
    assert_eq!(v["anchor"]["anchor"], anchor.as_str());

    // Beyond the head, and malformed anchors, are refused naming the value.
    let beyond = format!("99999:{}", anchor.split(':').nth(1).unwrap());
    let (code, out, _) = run_code(&["verify", "--data-dir", d, "--anchor", &beyond]);
    assert!(code == 1 && out.contains("sequence 99999 is beyond the log's head"), "{out}");
    for bad in ["12", "12:xyz", "abc:00"] {
        let (code, _, err) = run_code(&["verify", "--data-dir", d, "--anchor", bad]);
        assert!(code == 2 && err.contains(&format!("\"{bad}\"")), "{bad}: {err}");
    }

    // A record before the anchor is edited and the chain rewritten to hide it: plain verify
    // passes, the anchor does not.
    tally_log::testing::overwrite_event(&dir, anchor_seq - 3, &forged_program_change()).unwrap();
    tally_log::testing::rechain(&dir, None).unwrap();
    let (ok, out, _) = run(&["verify", "--data-dir", d]);
    assert!(ok, "{out}");
    let (code, out, _) = run_code(&["verify", "--data-dir", d, "--anchor", &anchor]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("anchor FAILED: the records up to sequence {anchor_seq} hash to")), "{out}");
    let (code, v) = run_json(&["verify", "--data-dir", d, "--anchor", &anchor, "--format", "json"]);
    assert_eq!((code, v["ok"].as_bool(), v["first_bad_seq"].as_u64()), (1, Some(false), None), "{v}");
    assert_eq!((v["anchor"]["ok"].as_bool(), v["anchor"]["outcome"].as_str()), (Some(false), Some("differs")), "{v}");
    assert!(v["anchor"]["message"].as_str().unwrap().contains("anchor FAILED"), "{v}");
}

#[test]
fn verify_anchor_off_a_batch_boundary_names_the_nearest_ones() {
    let env = Env::new("");
    let dir = env.data();
    let d = dir.to_str().unwrap();
    let mut server = env.serve();
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

fn lines_of(args: &[&str]) -> Vec<String> {
    let (ok, out, err) = run(args);
    assert!(ok, "{args:?}: {err}");
    out.lines().map(str::to_owned).collect()
}

fn seqs_of(jsonl: &[String]) -> Vec<u64> {
    jsonl.iter().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"].as_u64().unwrap()).collect()
}

/// Clicks and conversions (one refunded) over HTTP; returns the number of conversions.
fn traffic(server: &TestServer, tag: &str) -> usize {
    let cids = click_storm(server.addr, 2, 10, tag);
    for (i, cid) in cids.iter().take(5).enumerate() {
        let r =
            server.get(&format!("/postback?cid={cid}&offer=shoes&goal=sale&txid={tag}-{i}&amount=10.00&token={TOKEN}"));
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let r = server.get(&format!("/postback?offer=shoes&goal=sale&txid={tag}-0&status=refunded&token={TOKEN}"));
    assert_eq!(r.status, 200, "{}", r.text());
    6
}

#[test]
fn typed_exports_have_their_own_columns_and_honour_ranges() {
    let env = Env::new("");
    let dir = env.data();
    let d = dir.to_str().unwrap();
    let server = env.serve();
    let conversions = traffic(&server, "typed");
    wait_for_ledger(&dir, conversions);

    let clicks = lines_of(&["export", "clicks", "--data-dir", d, "--format", "csv"]);
    assert_eq!(
        clicks[0],
        "seq,ts_ms,click_id,link,offer,affiliate,sub1,sub2,sub3,sub4,sub5,source,deep_link,user_agent,referrer,ip,flags,prior_click,time,visitor,personal,country,region,asn,device,os,browser,language,route"
    );
    assert_eq!(clicks.len(), 1 + 20);
    let convs = lines_of(&["export", "conversions", "--data-dir", d]);
    assert_eq!(convs.len(), conversions);
    let first: serde_json::Value = serde_json::from_str(&convs[0]).unwrap();
    let keys: Vec<&str> = first.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys.len(), 22, "{keys:?}");
    assert!(!keys.contains(&"type") && !keys.contains(&"user_agent") && keys.contains(&"txid"), "{keys:?}");
    assert_eq!(first["amount"], "10.00");
    // The event time twice: milliseconds for programs, RFC 3339 UTC for people, the same instant.
    let ts = first["ts_ms"].as_u64().unwrap();
    let time = first["time"].as_str().unwrap();
    assert_eq!(tally_model::time::parse_time(time), Some(ts), "{time}");
    assert!(time.ends_with('Z') && time.len() == "2026-11-23T14:05:00.123Z".len(), "{time}");

    // Commissions: the ledger's columns, the same rows as `tally commissions`.
    let ledger = lines_of(&["commissions", "--data-dir", d, "--format", "csv"]);
    let exported = lines_of(&["export", "commissions", "--data-dir", d, "--format", "csv"]);
    assert_eq!(exported, ledger);
    assert!(exported[0].starts_with("id,date,ts_ms,kind,status,reason,affiliate"), "{}", exported[0]);

    // Sequence bounds: from inclusive, to exclusive, for events and the ledger alike.
    let all = seqs_of(&lines_of(&["export", "events", "--data-dir", d]));
    assert_eq!(seqs_of(&lines_of(&["export", "events", "--data-dir", d, "--from", "3", "--to", "6"])), [3, 4, 5]);
    let conv_seqs = seqs_of(&convs);
    let (a, b) = (conv_seqs[1].to_string(), conv_seqs[3].to_string());
    let some = lines_of(&["export", "commissions", "--data-dir", d, "--from", &a, "--to", &b, "--format", "jsonl"]);
    let ids: Vec<String> = some
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, [a.clone(), conv_seqs[2].to_string()]);

    // Time bounds: all traffic is from today (UTC), so a window ending at today's midnight
    // is empty.
    let days = lines_of(&["report", "--data-dir", d, "--by", "day", "--format", "csv"]);
    let today = days[1].split(',').next().unwrap().to_owned();
    assert_eq!(seqs_of(&lines_of(&["export", "events", "--data-dir", d, "--from", &today])), all);
    assert!(lines_of(&["export", "clicks", "--data-dir", d, "--to", &today]).is_empty());
    let midnight = format!("{today}T00:00:00Z");
    assert_eq!(lines_of(&["export", "commissions", "--data-dir", d, "--from", &midnight]).len(), ledger.len() - 1);

    // Bad values are named.
    for (flag, bad) in [("--from", "yesterday"), ("--to", "2026-11-23T10:00:00+01:00"), ("--from", "12abc")] {
        let (ok, _, err) = run(&["export", "clicks", "--data-dir", d, flag, bad]);
        assert!(!ok && err.contains(flag) && err.contains(&format!("\"{bad}\"")), "{err}");
    }
    let (ok, _, err) = run(&["export", "events", "--data-dir", d, "--from", "9", "--to", "4"]);
    assert!(!ok && err.contains("--from 9 is not before --to 4"), "{err}");
    let (ok, _, err) = run(&["export", "conversions", "--data-dir", d, "--format", "parquet"]);
    assert!(!ok && err.contains("parquet"), "{err}");
    let (ok, _, err) = run(&["export", "commissions", "--data-dir", "/nonexistent/tally-x"]);
    assert!(!ok && err.contains("/nonexistent/tally-x"), "{err}");
}

/// What the read commands say about a data directory: verify, every event, the ledger.
fn audit_view(dir: &Path) -> (String, Vec<String>, Vec<String>, String) {
    let d = dir.to_str().unwrap();
    let (ok, verify, err) = run(&["verify", "--data-dir", d]);
    assert!(ok, "verify {d}: {verify}{err}");
    let digest = lines_of(&["commissions", "--data-dir", d, "--digest"]).join("\n");
    (
        verify,
        lines_of(&["export", "events", "--data-dir", d]),
        lines_of(&["commissions", "--data-dir", d, "--format", "jsonl"]),
        digest,
    )
}

fn snapshot(from: &Path, out: &Path) -> String {
    let (ok, stdout, err) = run(&["snapshot", "--data-dir", from.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(ok, "snapshot: {stdout}{err}");
    stdout
}

#[test]
fn snapshot_of_a_stopped_server_is_a_checkpoint_that_reads_the_same() {
    let env = Env::new("");
    let dir = env.data();
    let mut server = env.serve();
    let conversions = traffic(&server, "stopped");
    wait_for_ledger(&dir, conversions);
    assert!(server.stop());
    // A periodic attribution snapshot, and one still being written (not copied).
    let periodic = dir.join("attribution-snapshots").join("00000000000000000007");
    std::fs::create_dir_all(&periodic).unwrap();
    std::fs::write(periodic.join("MANIFEST-000001"), b"immutable").unwrap();
    std::fs::create_dir_all(dir.join("attribution-snapshots").join("00000000000000000009.tmp")).unwrap();

    // An existing but empty --out is fine.
    let out = env.tmp.path().join("audit-copy");
    std::fs::create_dir(&out).unwrap();
    let said = snapshot(&dir, &out);
    assert!(said.contains("log            checkpoint"), "{said}");
    assert!(said.contains("attribution    checkpoint"), "{said}");
    assert!(said.contains("attribution snapshots 1 copied"), "{said}");
    assert_eq!(audit_view(&out), audit_view(&dir));
    let copied = out.join("attribution-snapshots").join("00000000000000000007").join("MANIFEST-000001");
    assert_eq!(std::fs::read(copied).unwrap(), b"immutable");
    assert!(!out.join("attribution-snapshots").join("00000000000000000009.tmp").exists());

    // The copy is independent: a server can run on it and the source does not change.
    let before = audit_view(&dir);
    let mut copy_server = TestServer::start(&env.config(), &out);
    assert_eq!(click_storm(copy_server.addr, 1, 5, "copy").len(), 5);
    assert!(copy_server.stop());
    assert_eq!(audit_view(&dir), before);
    assert_eq!(audit_view(&out).1.len(), before.1.len() + 6, "a program change and 5 clicks");
}

#[test]
fn snapshot_of_a_running_server_is_a_consistent_logical_copy() {
    let env = Env::new("");
    let dir = env.data();
    let server = env.serve();
    let conversions = traffic(&server, "running");
    wait_for_ledger(&dir, conversions);
    let out = env.tmp.path().join("live-copy");
    let said = snapshot(&dir, &out);
    assert!(said.contains("log            logical copy"), "{said}");
    assert!(said.contains("attribution    logical copy"), "{said}");
    let at_snapshot = audit_view(&dir);
    assert_eq!(audit_view(&out), at_snapshot);

    // Taken while clicks keep arriving: the copy verifies, and is a point in time (later
    // traffic does not reach it).
    let addr = server.addr;
    let storm = std::thread::spawn(move || click_storm(addr, 2, 200, "during"));
    let during = env.tmp.path().join("during-copy");
    snapshot(&dir, &during);
    let during_events = audit_view(&during).1.len();
    storm.join().unwrap();
    assert_eq!(audit_view(&during).1.len(), during_events);
    assert!(audit_view(&dir).1.len() >= during_events);
}

#[test]
fn snapshot_refuses_a_non_empty_out_and_a_missing_data_dir() {
    let env = Env::new("");
    let mut server = env.serve();
    click_storm(server.addr, 1, 3, "refuse");
    assert!(server.stop());
    let d = env.data();
    let taken = env.tmp.path().join("taken");
    std::fs::create_dir(&taken).unwrap();
    std::fs::write(taken.join("keep.txt"), b"mine").unwrap();
    let (ok, _, err) = run(&["snapshot", "--data-dir", d.to_str().unwrap(), "--out", taken.to_str().unwrap()]);
    assert!(!ok && err.contains("--out") && err.contains(taken.to_str().unwrap()), "{err}");
    assert_eq!(std::fs::read(taken.join("keep.txt")).unwrap(), b"mine", "a refused --out is left alone");
    let out = env.tmp.path().join("never");
    let (ok, _, err) = run(&["snapshot", "--data-dir", "/nonexistent/tally-data", "--out", out.to_str().unwrap()]);
    assert!(!ok && err.contains("/nonexistent/tally-data"), "{err}");
    assert!(!out.exists());
}

/// Without the cargo feature `parquet` (the default build), `--format parquet` says so and how
/// to build a binary that has it, and creates no file.
#[cfg(not(feature = "parquet"))]
#[test]
fn export_parquet_without_the_feature_names_the_build_command() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("clicks.parquet");
    let (ok, stdout, err) = run(&[
        "export",
        "clicks",
        "--data-dir",
        tmp.path().to_str().unwrap(),
        "--format",
        "parquet",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!ok && stdout.is_empty(), "{stdout}");
    assert!(err.contains("this tally was built without Parquet support"), "{err}");
    assert!(err.contains("cargo build --release --features tally-cli/parquet"), "{err}");
    assert!(!out.exists());
}
