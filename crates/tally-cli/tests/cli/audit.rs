//! Audits end to end: a ledger made over HTTP (clicks, conversions, a duplicate, a cap, holds,
//! reversals and a mid-run program change) is reproduced by `tally replay`, whole and from
//! mid-log; `--explain` tells a clawback's story; an edited commission and an edited raw event
//! are caught.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use crate::common::*;

fn jsonl(out: &std::process::Output) -> Vec<serde_json::Value> {
    assert!(out.status.success(), "failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn commissions(dir: &Path) -> Vec<serde_json::Value> {
    jsonl(&tally(&["commissions", "--data-dir", dir.to_str().unwrap(), "--format", "jsonl"]))
}

fn postback(server: &TestServer, query: &str) {
    let r = server.get(&format!("/postback?{query}&token={TOKEN}"));
    assert_eq!(r.status, 200, "{query}: {}", r.text());
}

fn entry<'a>(entries: &'a [serde_json::Value], txid: &str, kind: &str) -> &'a serde_json::Value {
    entries.iter().find(|e| e["txid"] == txid && e["kind"] == kind).unwrap_or_else(|| panic!("no {kind} {txid}"))
}

#[test]
fn replay_reproduces_a_ledger_made_over_http_and_catches_edits() {
    let env = Env::new("");
    env.append_config("[attribution]\nsnapshot_every = 3\nsnapshots_keep = 100\n");
    let data = env.data();
    let d = data.to_str().unwrap();
    let mut server = env.serve();

    let c1 = server.get("/c/demo?sub1=a").click_id();
    let c2 = server.get("/c/demo?sub1=b").click_id();
    let c3 = server.get("/c/demo?sub1=c").click_id();
    postback(&server, &format!("cid={c1}&offer=shoes&goal=signup&txid=S1"));
    postback(&server, &format!("cid={c1}&offer=shoes&goal=signup&txid=S1")); // duplicate
    postback(&server, &format!("cid={c2}&offer=shoes&goal=sale&txid=O1&amount=100.00")); // held
    postback(&server, &format!("cid={c3}&offer=shoes&goal=sale&txid=O2&amount=50.00"));
    postback(&server, "offer=shoes&goal=sale&txid=O2&status=refunded"); // rejects a pending one

    // Mid-run program change: signups pay 3.00 and are capped at 2 a day.
    let program = std::fs::read_to_string(env.program()).unwrap();
    let changed = program
        .replacen(
            "payout = { kind = \"fixed\", amount = \"2.50\" }",
            "payout = { kind = \"fixed\", amount = \"3.00\" }",
            1,
        )
        .replacen("daily_cap = 1000", "daily_cap = 2", 1);
    assert_ne!(changed, program);
    std::fs::write(env.program(), changed).unwrap();
    assert_eq!(server.reload(), Ok(true));
    wait_for("the program change in the log", || of_type(&events(&data), "program_change").len() == 2);
    postback(&server, &format!("cid={c1}&offer=shoes&goal=signup&txid=S2"));
    postback(&server, &format!("cid={c2}&offer=shoes&goal=signup&txid=S3")); // over the cap
    postback(&server, "offer=shoes&goal=signup&txid=S1&status=refunded"); // claws back an approved one
    wait_for("8 ledger entries", || data.join("attribution/CURRENT").exists() && commissions(&data).len() == 8);
    assert!(server.stop(), "clean stop");

    let entries = commissions(&data);
    let s1 = entry(&entries, "S1", "commission");
    assert_eq!((s1["status"].as_str(), s1["amount"].as_str()), (Some("approved"), Some("2.50")));
    assert_eq!(entry(&entries, "S2", "commission")["amount"], "3.00");
    assert_eq!(entry(&entries, "S3", "commission")["status"], "rejected_cap");
    assert_eq!(entry(&entries, "O1", "commission")["status"], "pending");
    assert_eq!(entry(&entries, "O2", "commission")["status"], "rejected");
    let clawback = entry(&entries, "S1", "clawback");
    assert_eq!(clawback["amount"], "-2.50");
    assert!(entries.iter().any(|e| e["txid"] == "S1" && e["status"] == "duplicate"));

    // The whole log: every entry matches, and the digest is the one `commissions` prints.
    let (code, out, err) = run_code(&["replay", "--data-dir", d]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.is_empty(), "no progress bar without a terminal: {err}");
    assert!(out.contains("compared        8 entries") && out.contains("ok: the replay reproduces"), "{out}");
    let (code, v) = run_json(&["replay", "--data-dir", d, "--format", "json"]);
    assert_eq!(code, 0);
    assert_eq!((v["ok"].as_bool(), v["compared"].as_u64(), v["matched"].as_u64()), (Some(true), Some(8), Some(8)));
    assert_eq!((v["missing"].as_u64(), v["extra"].as_u64(), v["differing"].as_u64()), (Some(0), Some(0), Some(0)));
    assert_eq!(v["digest_replay"], v["digest_live"]);
    assert!(
        out.contains(&format!(
            "digest live     {} {}",
            v["digest_form"].as_str().unwrap(),
            v["digest_live"].as_str().unwrap()
        )),
        "{v}"
    );
    assert!(v["differences"].as_array().unwrap().is_empty() && !v["totals"].as_array().unwrap().is_empty(), "{v}");
    let (_, digest, _) = run(&["commissions", "--data-dir", d, "--digest"]);
    let ledger_line = digest.lines().nth(1).unwrap().trim_start_matches("ledger ").to_owned();
    assert!(out.contains(&format!("digest live     {ledger_line}")), "{out}\n{digest}");
    assert!(out.contains(&format!("digest replay   {ledger_line}")), "{out}\n{digest}");
    // The digest is the CSV rows' BLAKE3: anyone can recompute it from the export.
    let csv = tally(&["commissions", "--data-dir", d, "--format", "csv"]).stdout;
    let body = csv.splitn(2, |b| *b == b'\n').nth(1).unwrap();
    assert!(ledger_line.ends_with(&blake3::hash(body).to_hex().to_string()), "{ledger_line}");
    // Per affiliate.
    let (ok, out, _) = run(&["replay", "--data-dir", d, "--affiliate", "aff1"]);
    assert!(ok && out.contains("aff1") && !out.contains("aff2"), "{out}");

    // A window from mid-log starts from a snapshot before it, and matches.
    let s2_seq = entry(&entries, "S2", "commission")["id"].as_str().unwrap().to_owned();
    let (ok, out, err) = run(&["replay", "--data-dir", d, "--from", &s2_seq]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("from the snapshot at sequence"), "{out}");
    assert!(out.contains("compared        4 entries"), "S2, S3, the clawback and the S1 it reversed: {out}");

    // The clawed-back conversion's story.
    let s1_id = s1["id"].as_str().unwrap();
    let (ok, out, err) = run(&["replay", "--data-dir", d, "--explain", s1_id]);
    assert!(ok, "{out}{err}");
    let refund_seq = clawback["id"].as_str().unwrap();
    for needle in [
        format!("click {c1}: seq "),
        "rule \"goal signup: fixed 2.50\"".to_owned(),
        "recorded as commission approved 2.50 USD".to_owned(),
        format!("seq {refund_seq}: reversed (refunded)"),
        format!("seq {refund_seq}: clawback entry {refund_seq}: clawback approved -2.50 USD"),
        "duplicate report".to_owned(),
        "matches the replay".to_owned(),
    ] {
        assert!(out.contains(&needle), "{needle:?} missing from:\n{out}");
    }
    let (ok, by_txid, _) = run(&["replay", "--data-dir", d, "--explain", "S1"]);
    assert!(ok && by_txid == out);
    let (code, v) = run_json(&["replay", "--data-dir", d, "--explain", "S1", "--format", "json"]);
    assert_eq!((code, v["ok"].as_bool(), v["id"].as_str()), (0, Some(true), Some(s1_id)), "{v}");
    let lines: Vec<&str> = v["lines"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
    assert_eq!(lines.join("\n") + "\n", out);

    // A snapshot handed to an auditor replays the same, whole and from mid-log.
    let copy = env.tmp.path().join("for-the-auditor");
    let (code, v) = run_json(&["snapshot", "--data-dir", d, "--out", copy.to_str().unwrap(), "--format", "json"]);
    assert_eq!((code, v["ok"].as_bool()), (0, Some(true)), "{v}");
    assert_eq!(v["out"], copy.to_str().unwrap());
    assert!(v["log"]["seq"].as_u64().unwrap() > 0 && v["log"]["method"].is_string(), "{v}");
    assert!(v["attribution"]["position"].as_u64().unwrap() > 0, "{v}");
    assert!(v["snapshots_copied"].as_u64().unwrap() >= 1 && v["snapshots_skipped"].is_u64(), "{v}");
    assert!(v["files"].is_array(), "{v}");
    let (ok, out, err) = run(&["replay", "--data-dir", copy.to_str().unwrap()]);
    assert!(ok && out.contains(&format!("digest live     {ledger_line}")), "{out}{err}");
    let (ok, out, err) = run(&["replay", "--data-dir", copy.to_str().unwrap(), "--from", &s2_seq]);
    assert!(ok && out.contains("from the snapshot at sequence"), "{out}{err}");

    // Bad input names itself.
    let (code, _, err) = run_code(&["replay", "--data-dir", d, "--from", "yesterday"]);
    assert!(code == 2 && err.contains("--from: \"yesterday\""), "{err}");
    let (code, _, err) = run_code(&["replay", "--data-dir", d, "--explain", "NOPE"]);
    assert!(code == 2 && err.contains("no conversion \"NOPE\""), "{err}");
    let (code, _, err) = run_code(&["replay", "--data-dir", d, "--from", "999999"]);
    assert!(code == 2 && err.contains("window is empty"), "{err}");
    let (code, v) = run_json(&["replay", "--data-dir", d, "--from", "999999", "--format", "json"]);
    assert!(code == 2 && v["error"].as_str().unwrap().contains("window is empty"), "{v}");

    // An edited commission: replay names it and fails.
    let s2_entry_id = tally_attribution::EntryId::parse(&s2_seq).unwrap();
    let state_dir = tally_attribution::state_dir(&data);
    let mut s2 = tally_attribution::LedgerReader::open(&state_dir).unwrap().entry(s2_entry_id).unwrap().unwrap();
    s2.amount = 30_000;
    tally_attribution::testing::overwrite_entry(&state_dir, s2_entry_id, Some(&s2)).unwrap();
    let (code, out, _) = run_code(&["replay", "--data-dir", d]);
    assert_eq!(code, 1, "a ledger difference is a finding: {out}");
    let (code, v) = run_json(&["replay", "--data-dir", d, "--format", "json"]);
    assert_eq!((code, v["ok"].as_bool(), v["differing"].as_u64()), (1, Some(false), Some(1)), "{v}");
    let d0 = &v["differences"][0];
    assert_eq!((d0["id"].as_str(), d0["kind"].as_str()), (Some(s2_seq.as_str()), Some("differing")), "{v}");
    assert_eq!((d0["live"]["amount"].as_str(), d0["replayed"]["amount"].as_str()), (Some("300.00"), Some("3.00")));
    assert!(d0["fields"][0].as_str().unwrap().contains("amount: live \"300.00\""), "{v}");
    assert_ne!(v["digest_replay"], v["digest_live"]);
    assert!(out.contains("differing       1") && out.contains(&format!("differing {s2_seq}:")), "{out}");
    assert!(out.contains("amount: live \"300.00\", replay \"3.00\""), "{out}");
    assert!(out.contains("<- differs"), "{out}");

    // An edited raw event: verify names its sequence number.
    let (ok, out, _) = run(&["verify", "--data-dir", d]);
    assert!(ok, "{out}");
    let seq: u64 = s2_seq.parse().unwrap();
    let events = events(&data);
    let original = events.iter().find(|e| e["seq"] == seq).unwrap();
    assert_eq!(original["txid"], "S2");
    let reader = tally_log::LogReader::open_secondary(&data).unwrap();
    let mut bytes = reader.read_range(seq, 1).unwrap().remove(0).1;
    drop(reader);
    let n = bytes.len();
    bytes[n - 1] ^= 1;
    tally_log::testing::overwrite_event(&data, seq, &bytes).unwrap();
    let (code, out, _) = run_code(&["verify", "--data-dir", d]);
    assert!(code == 1 && out.contains(&format!("FAILED at sequence {seq}")), "{out}");
}

/// `--explain` says who reported a conversion: a browser (pixel or tag, no credentials) or an
/// advertiser's server, and that a report naming only its click took the click's offer; the
/// ledger's `source` column says the same.
#[test]
fn explain_names_browser_reports_and_offers_taken_from_the_click() {
    let env = Env::new("");
    let data = env.data();
    let d = data.to_str().unwrap();
    let server = env.serve();
    let cid = server.get("/c/demo?sub1=x").click_id();
    let px = server.get(&format!("/px.gif?cid={cid}&offer=shoes&goal=signup&txid=PX-1"));
    assert_eq!(px.status, 200);
    postback(&server, &format!("transaction_id={cid}&adv_sub=EF-1&amount=10,00"));
    wait_for("2 ledger entries", || data.join("attribution/CURRENT").exists() && commissions(&data).len() == 2);

    let entries = commissions(&data);
    let pixel = entry(&entries, "PX-1", "commission");
    let by_click = entry(&entries, "EF-1", "commission");
    assert_eq!((pixel["source"].as_str(), by_click["source"].as_str()), (Some("pixel"), Some("postback")));
    assert_eq!((by_click["offer"].as_str(), by_click["goal"].as_str()), (Some("shoes"), Some("sale")));
    let (ok, csv, _) = run(&["commissions", "--data-dir", d, "--format", "csv"]);
    assert!(ok && csv.lines().next().unwrap().ends_with(",program,source,payout"), "{csv}");

    let (ok, out, err) = run(&["replay", "--data-dir", d, "--explain", "PX-1"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("report of offer shoes goal signup via pixel (a browser's report)"), "{out}");
    let (ok, out, err) = run(&["replay", "--data-dir", d, "--explain", "EF-1"]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("report of offer (from the click) goal (the offer's default) via postback from advertiser acme"),
        "{out}"
    );
    assert!(out.contains("rule \"goal sale: revshare 800 bps of 10.00\""), "{out}");
}
