//! The `tally` binary's own behaviour: signals, `config check`, refusing a bad config,
//! `verify`, `log stats`, `health`, and the messages of the read commands.

use std::time::{Duration, Instant};

use crate::common::*;

/// SIGHUP reloads the program (an invalid one is refused and the old one kept), and SIGTERM
/// drains and exits 0. What a reload and a drain do is tested in-process (tally-server's
/// tests); this proves the binary wires the signals to them.
#[test]
fn sighup_reloads_and_sigterm_exits_cleanly() {
    let env = Env::new("");
    let mut server = env.spawn();
    assert_eq!(server.get("/c/fresh").status, 404);
    env.append_program("[[links]]\ncode = \"fresh\"\noffer = \"hotels\"\naffiliate = \"aff1\"\n");
    server.signal("HUP");
    wait_for_metric(&server, "tally_program_reloads_total{outcome=\"ok\"} 1");
    assert_eq!(server.get("/c/fresh").status, 302);
    std::fs::write(env.program(), "this is [not valid").unwrap();
    server.signal("HUP");
    wait_for_metric(&server, "tally_program_reloads_total{outcome=\"error\"} 1");
    assert_eq!(server.get("/c/fresh").status, 302, "the old program must stay in force");
    let ids = click_storm(server.addr, 4, 50, "drain");
    assert!(server.stop(), "tally did not exit 0 on SIGTERM");
    assert_eq!(of_type(&events(&env.data()), "click").len(), ids.len() + 2);
}

fn wait_for_metric(server: &Process, needle: &str) {
    // The reload runs asynchronously after the signal; poll the metric with a deadline.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !server.metrics().contains(needle) {
        assert!(Instant::now() < deadline, "{needle} never appeared");
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[test]
fn config_check_reports_every_problem() {
    let repo = repo_config("tally.toml");
    let check = ["config", "check", "--config", repo.to_str().unwrap()];
    // The example program names its credentials; without a secrets store it cannot serve.
    let (code, _, err) = run_code(&check);
    assert_eq!(code, 1, "problems found: {err}");
    for needle in [
        "advertisers[acme].postback_tokens: secret \"acme-token\" is not in the secrets store",
        "advertisers[acme].hmac_secrets: secret \"acme-hmac\"",
        "advertisers[globex].postback_tokens: secret \"globex-token\"",
        "TALLY_SECRET_<NAME>",
    ] {
        assert!(err.contains(needle), "{needle} missing from:\n{err}");
    }
    let secrets = [
        ("TALLY_SECRET_ACME_TOKEN", TOKEN),
        ("TALLY_SECRET_ACME_HMAC", HMAC_SECRET),
        ("TALLY_SECRET_GLOBEX_TOKEN", GLOBEX_TOKEN),
    ];
    let good = std::process::Command::new(BIN).args(check).envs(secrets).output().unwrap();
    assert_eq!(good.status.code(), Some(0), "{}", String::from_utf8_lossy(&good.stderr));
    assert!(String::from_utf8_lossy(&good.stdout).contains("3 offers"));
    let good = std::process::Command::new(BIN).args(check).args(["--format", "json"]).envs(secrets).output().unwrap();
    assert_eq!(good.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&good.stdout).unwrap();
    assert_eq!((v["ok"].as_bool(), v["problems"].as_array().map(Vec::len)), (Some(true), Some(0)), "{v}");
    assert_eq!((v["program"]["offers"].as_u64(), v["program"]["affiliates"].as_u64()), (Some(3), Some(2)), "{v}");
    assert!(v["program"]["links"].as_u64().is_some() && v["program"]["path"].is_string(), "{v}");
    assert_eq!(v["config"], repo.to_str().unwrap());
    // Problems, as JSON: every one listed, and nothing on stderr to scrape.
    let mut json_check = check.to_vec();
    json_check.extend(["--format", "json"]);
    let (code, v) = run_json(&json_check);
    assert_eq!(code, 1);
    assert_eq!((v["ok"].as_bool(), v["program"].is_null()), (Some(false), true), "{v}");
    let problems: Vec<&str> = v["problems"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    assert!(problems.iter().any(|p| p.contains("secret \"acme-token\" is not in the secrets store")), "{v}");
    // Nor does a program that writes a credential inline, which the log would record.
    let env = Env::new("");
    let program = std::fs::read_to_string(env.program()).unwrap();
    std::fs::write(env.program(), program.replace("postback_tokens = [\"acme-token\"]", "postback_token = \"x\""))
        .unwrap();
    let (ok, _, err) = run(&["config", "check", "--config", env.config().to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("advertisers[acme].postback_token: a credential may not be written in the program"), "{err}");
    assert!(!err.contains("\"x\""), "{err}");

    let env = Env::new("");
    std::fs::write(env.config(), "[server]\nlisten = \"x\"\nmax_headers = 0\n[log]\nsync = \"often\"\n").unwrap();
    let bad = tally(&["config", "check", "--config", env.config().to_str().unwrap()]);
    assert_eq!(bad.status.code(), Some(1));
    let err = String::from_utf8_lossy(&bad.stderr);
    for key in ["server.listen", "server.max_headers", "log.sync", "3 problem(s)"] {
        assert!(err.contains(key), "{key} missing from:\n{err}");
    }

    let env = Env::new("");
    std::fs::write(env.program(), "[[links]]\ncode = \"x\"\noffer = \"o\"\naffiliate = \"a\"\n").unwrap();
    let bad = tally(&["config", "check", "--config", env.config().to_str().unwrap()]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("links[x].offer") && err.contains("links[x].affiliate"), "{err}");

    // A config that cannot be read is trouble, not a finding.
    let missing = tally(&["config", "check", "--config", "/nonexistent/tally.toml"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/tally.toml"));
    let (code, v) = run_json(&["config", "check", "--config", "/nonexistent/tally.toml", "--format", "json"]);
    assert_eq!(code, 2);
    assert!(v["ok"] == false && v["error"].as_str().unwrap().contains("/nonexistent/tally.toml"), "{v}");
}

#[test]
fn serve_refuses_a_bad_config_naming_the_value() {
    let env = Env::new("sync = \"sometimes\"");
    let out = tally(&["serve", "--config", env.config().to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("log.sync"));
}

#[test]
fn verify_passes_then_names_the_edited_sequence() {
    let env = Env::new("");
    let mut server = env.serve();
    click_storm(server.addr, 4, 25, "verify");
    let dir = env.data();
    let d = dir.to_str().unwrap();
    let ok = tally(&["verify", "--data-dir", d]);
    assert_eq!(ok.status.code(), Some(0), "{}", String::from_utf8_lossy(&ok.stdout));
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(out.contains("101 events"), "{out}");
    assert!(out.contains("head 101:"), "{out}");
    // Standard error is not a terminal here: no progress bar, nothing at all.
    assert!(ok.stderr.is_empty(), "{}", String::from_utf8_lossy(&ok.stderr));
    let (code, v) = run_json(&["verify", "--data-dir", d, "--format", "json"]);
    assert_eq!(code, 0);
    assert_eq!((v["ok"].as_bool(), v["events"].as_u64(), v["head_seq"].as_u64()), (Some(true), Some(101), Some(101)));
    assert!(out.contains(&format!("head 101:{}", v["head"].as_str().unwrap())), "{v}\n{out}");
    assert!(v["first_bad_seq"].is_null() && v["reason"].is_null() && v["anchor"].is_null(), "{v}");
    assert!(v["batches"].as_u64().unwrap() >= 1, "{v}");
    assert!(server.stop());

    let stats = tally(&["log", "stats", "--data-dir", d]);
    assert_eq!(stats.status.code(), Some(0));
    let s = String::from_utf8_lossy(&stats.stdout);
    assert!(s.contains("  click           100\n") && s.contains("last_seq          101\n"), "{s}");
    // The longest kind keeps a space before its count.
    assert!(s.contains("  program_change  1\n"), "{s}");
    let (code, v) = run_json(&["log", "stats", "--data-dir", d, "--format", "json"]);
    assert_eq!(code, 0);
    assert_eq!(
        (v["first_seq"].as_u64(), v["last_seq"].as_u64(), v["events"].as_u64()),
        (Some(1), Some(101), Some(101))
    );
    assert_eq!((v["events_by_kind"]["click"].as_u64(), v["unreadable"].as_u64()), (Some(100), Some(0)), "{v}");
    assert!(v["bytes_on_disk"].as_u64().unwrap() > 0, "{v}");

    // Forge a record that decodes fine: only the chain can tell.
    let events = events(&dir);
    let victim = events.iter().find(|e| e["seq"] == 57).unwrap().clone();
    let forged = ClickBuilder::new()
        .id(victim["click_id"].as_str().unwrap().parse().unwrap())
        .at(victim["ts_ms"].as_u64().unwrap())
        .link("demo")
        .affiliate("aff2") // credit someone else
        .sub(1, victim["sub1"].as_str().unwrap())
        .event();
    let bytes = tally_model::encode(&forged).unwrap();
    tally_log::testing::overwrite_event(&dir, 57, &bytes).unwrap();
    let bad = tally(&["verify", "--data-dir", d]);
    assert_eq!(bad.status.code(), Some(1), "a broken chain is a finding");
    let out = String::from_utf8_lossy(&bad.stdout);
    assert!(out.contains("FAILED at sequence 57"), "{out}");
    let (code, v) = run_json(&["verify", "--data-dir", d, "--format", "json"]);
    assert_eq!(code, 1);
    assert_eq!((v["ok"].as_bool(), v["first_bad_seq"].as_u64()), (Some(false), Some(57)), "{v}");
    assert!(v["reason"].as_str().unwrap().contains("differs from what was committed"), "{v}");
}

#[test]
fn read_commands_name_a_missing_data_dir() {
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("copy");
    let out = out.to_str().unwrap();
    for args in [
        vec!["verify", "--data-dir", "/nonexistent/tally-data"],
        vec!["log", "stats", "--data-dir", "/nonexistent/tally-data"],
        vec!["export", "events", "--data-dir", "/nonexistent/tally-data"],
        vec!["replay", "--data-dir", "/nonexistent/tally-data"],
        vec!["snapshot", "--data-dir", "/nonexistent/tally-data", "--out", out],
    ] {
        let out = tally(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/tally-data"), "{args:?}");
        // With --format json the error is also the one object on standard output.
        if args[0] != "export" {
            let mut args = args.clone();
            args.extend(["--format", "json"]);
            let (code, v) = run_json(&args);
            assert_eq!(code, 2, "{args:?}");
            assert!(v["ok"] == false && v["error"].as_str().unwrap().contains("/nonexistent/tally-data"), "{v}");
        }
    }
    // Usage errors are clap's, with the same code.
    for args in [
        vec!["export", "events", "--data-dir", "/tmp", "--format", "xml"],
        vec!["verify", "--data-dir", "/tmp", "--format", "yaml"],
        vec!["verify"],
        vec!["no-such-command"],
    ] {
        let out = tally(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(!out.stderr.is_empty(), "{args:?}");
    }
    let out = tally(&["export", "events", "--data-dir", "/tmp", "--format", "xml"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("xml"));
}

/// `tally --help` documents the exit codes; completions and the man page come from the same
/// clap definitions, so they list every command.
#[test]
fn help_completions_and_man_page_come_from_the_flags() {
    let (code, help, _) = run_code(&["--help"]);
    assert_eq!(code, 0);
    assert!(help.contains("Exit codes:") && help.contains("2  trouble"), "{help}");
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let (code, script, err) = run_code(&["completions", shell]);
        assert_eq!(code, 0, "{shell}: {err}");
        for command in ["verify", "replay", "snapshot", "completions"] {
            assert!(script.contains(command), "{shell} completions lack {command}");
        }
    }
    let (code, _, err) = run_code(&["completions", "tcsh"]);
    assert!(code == 2 && err.contains("tcsh"), "{err}");

    let (code, page, _) = run_code(&["man"]);
    assert_eq!(code, 0);
    // roff's prologue defines the apostrophe string first; the title comes right after it.
    assert!(page.lines().take(5).any(|l| l.starts_with(".TH tally 1")), "{page}");
    assert!(page.contains("verify") && page.contains("Exit codes"), "{page}");
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = run_code(&["man", "--out-dir", dir.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    for page in ["tally.1", "tally-verify.1", "tally-log-stats.1"] {
        assert!(dir.path().join(page).is_file(), "{page} not written");
    }
    let (code, _, err) = run_code(&["man", "--out-dir", "/nonexistent/man1"]);
    assert!(code == 2 && err.contains("/nonexistent/man1"), "{err}");
}

/// An export that had to skip records that do not decode is incomplete: trouble (2), so a
/// script cannot take it for the whole log.
#[test]
fn an_export_that_skips_undecodable_records_exits_2() {
    let env = Env::new("");
    let mut server = env.serve();
    click_storm(server.addr, 1, 5, "undecodable");
    assert!(server.stop());
    let dir = env.data();
    tally_log::testing::overwrite_event(&dir, 3, b"not a record").unwrap();
    let (code, out, err) = run_code(&["export", "events", "--data-dir", dir.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("sequence 3 does not decode") && err.contains("1 record(s) could not be decoded"), "{err}");
    assert_eq!(out.lines().count(), 5, "the other records are still exported: {out}");
}

/// The CSV export has the documented header and quotes what it must: one record per click
/// whatever its sub IDs hold (commas, quotes, line breaks).
#[test]
fn csv_export_has_the_documented_header_and_one_record_per_click() {
    let env = Env::new("");
    let server = env.serve();
    let hostile = ["a,b", "%22quoted%22", "line%0Abreak", "cr%0D%0Alf", "%3D1%2B1"];
    for v in hostile {
        assert_eq!(server.get(&format!("/c/demo?sub1={v}")).status, 302);
    }
    let out = tally(&["export", "events", "--data-dir", env.data().to_str().unwrap(), "--format", "csv"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stderr.is_empty(), "no progress bar without a terminal");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.lines().next().unwrap().starts_with("seq,type,ts_ms,click_id,link,offer,affiliate,sub1"));
    assert!(text.contains("\"a,b\""), "{text}");
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let subs: Vec<String> = reader
        .records()
        .map(|r| r.unwrap())
        .filter(|r| r.get(1) == Some("click"))
        .map(|r| r.get(7).unwrap().to_owned())
        .collect();
    assert_eq!(subs, ["a,b", "\"quoted\"", "line\nbreak", "cr\r\nlf", "=1+1"]);
}

#[test]
fn tally_health_exits_by_the_answer() {
    let env = Env::new("");
    let server = env.serve();
    let ok = tally(&["health", "--url", &format!("http://{}/readyz", server.admin)]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let missing = tally(&["health", "--url", &format!("http://{}/nope", server.admin)]);
    assert_eq!(missing.status.code(), Some(1), "unhealthy is a finding");
    assert!(String::from_utf8_lossy(&missing.stderr).contains("404"));
    let bad = tally(&["health", "--url", "https://127.0.0.1:1/healthz"]);
    assert_eq!(bad.status.code(), Some(2), "a bad --url is trouble");
}

#[test]
fn a_bad_admin_config_is_refused_at_start() {
    let env = Env::new("");
    env.append_config("[admin]\ntoken = \"short\"\n");
    let out = tally(&["serve", "--config", env.config().to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("admin.token"));
}

#[test]
fn refused_postbacks_and_pixels_are_logged_with_what_failed_never_the_secret() {
    let env = Env::new("");
    let log = env.tmp.path().join("server.log");
    let stderr = std::fs::File::create(&log).unwrap();
    let vars = [("TALLY_LOGGING_FORMAT", "json")];
    let mut server = Process::start_with_stderr(BIN, &env.config(), &env.data(), &vars, stderr.into());
    let cid = server.get("/c/demo").click_id();
    let wrong = format!("{TOKEN}-wrong");
    for (target, status) in [
        (format!("/postback?cid={cid}&offer=shoes&txid=L1&token={wrong}"), 403),
        (format!("/postback?cid={cid}&offer=shoes&txid=L2&amount=abc&token={TOKEN}"), 400),
        ("/postback?cid=x&offer=nosuch&token=whatever".to_owned(), 400),
        (format!("/px.gif?cid={cid}&offer=shoes&amount=abc"), 400),
    ] {
        assert_eq!(server.get(&target).status, status, "{target}");
    }
    assert!(server.stop());
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|l: &serde_json::Value| l["fields"]["message"].as_str().is_some_and(|m| m.ends_with("refused")))
        .collect();
    let find = |what: &str, key: &str, value: &str| {
        lines
            .iter()
            .find(|l| l["fields"]["message"] == what && l["fields"][key] == value)
            .unwrap_or_else(|| panic!("no {what} with {key}={value} in {lines:#?}"))
    };
    let auth = find("postback refused", "reason", "bad credentials");
    assert_eq!(
        (auth["fields"]["advertiser"].as_str(), auth["fields"]["offer"].as_str()),
        (Some("acme"), Some("shoes"))
    );
    let amount = find("postback refused", "field", "amount");
    assert_eq!(amount["fields"]["advertiser"], "acme");
    find("postback refused", "field", "offer");
    find("pixel refused", "field", "amount");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains(TOKEN), "a credential reached the log:\n{text}");
}

#[test]
fn tally_decide_sends_operator_decisions_through_the_admin_api() {
    let env = Env::new("");
    let token = "test-admin-token-0123456789";
    env.append_config(&format!("[admin]\ntoken = \"{token}\"\n"));
    let server = env.serve();
    let token_file = env.tmp.path().join("admin.token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let r = server.get(&format!("/postback?offer=shoes&goal=sale&coupon=SPRING10&txid=D1&amount=100.00&token={TOKEN}"));
    assert_eq!(r.status, 200, "{}", r.text());
    let ledger = ledger_with(&env.data(), "D1");
    let id = ledger.iter().find(|e| e["txid"] == "D1").unwrap()["id"].as_str().unwrap().to_owned();
    let admin = format!("http://{}", server.admin);
    let with = |args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--admin", &admin, "--token-file", token_file.to_str().unwrap(), "--actor", "bob"]);
        run_code(&all)
    };
    let (code, out, err) = with(&["decide", "adjust", &id, "--amount", "4.00", "--reason", "partial refund"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("adjusted from 8.00 to 4.00 by bob: partial refund"), "{out}");
    let (code, out, err) = with(&["decide", "approve", &id]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("entry {id}: approved 4.00 USD")), "{out}");
    // It is approved: approving again cannot apply (exit 1, the ledger's reason).
    let (code, _, err) = with(&["decide", "approve", &id]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not pending"), "{err}");
    let (code, out, err) = with(&[
        "decide",
        "bonus",
        "--affiliate",
        "aff2",
        "--offer",
        "shoes",
        "--amount",
        "10.00",
        "--reason",
        "launch",
        "--format",
        "json",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["answer"]["decision"]["amount"], "10.00");
    // A payout run pays aff2's bonus and its approved commission; the statements land in a directory; a void undoes it.
    let (code, out, err) = with(&["decide", "payout", "--up-to", "2099-12-31", "--id", "run-1", "--note", "monthly"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("payout run-1 by bob up to 2099-12-31: 1 balance(s) paid in 2 entries (USD 14.00)"), "{out}");
    let d = env.data();
    let statements = env.tmp.path().join("statements");
    let (code, out, err) = run_code(&[
        "payouts",
        "--data-dir",
        d.to_str().unwrap(),
        "--payout",
        "run-1",
        "--out",
        statements.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("1 statements of payout run-1"), "{out}");
    let csv = std::fs::read_to_string(statements.join("run-1-aff2.csv")).unwrap();
    assert!(csv.lines().last().unwrap().starts_with("run-1,aff2,,,total,,,,,14.00,USD"), "{csv}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(statements.join("run-1-aff2.json")).unwrap()).unwrap();
    assert_eq!(json["totals"][0]["amount"], "14.00");
    let (code, out, _) = run_code(&["balances", "--data-dir", d.to_str().unwrap(), "--affiliate", "aff2"]);
    assert!(code == 0 && out.lines().nth(1).unwrap().contains("14.00"), "{out}");
    let (code, out, err) = run_code(&["payouts", "--data-dir", d.to_str().unwrap(), "--payout", "nope"]);
    assert!(code == 2 && err.contains("no payout run \"nope\""), "{out}{err}");
    let (code, out, err) = with(&["decide", "void-payout", "run-1", "--reason", "wrong account"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("payout run-1 voided by bob: wrong account; 2 entries unpaid again"), "{out}");
    let (code, _, err) = with(&["decide", "void-payout", "run-1", "--reason", "again"]);
    assert_eq!(code, 1, "{err}");
    let (code, _, err) = with(&["decide", "void-payout", "no way", "--reason", "x"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not a payout ID"), "{err}");
    // Trouble: a refused request, a wrong token, nothing listening.
    let (code, _, err) = with(&["decide", "adjust", &id, "--amount", "4.001", "--reason", "x"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("amount"), "{err}");
    std::fs::write(&token_file, "wrong-token-wrong-token").unwrap();
    let (code, _, err) = with(&["decide", "approve", &id]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("401"), "{err}");
    let (code, _, err) = run_code(&[
        "decide",
        "approve",
        &id,
        "--admin",
        "http://127.0.0.1:1",
        "--token-file",
        token_file.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cannot reach"), "{err}");
}

#[test]
fn tally_import_sends_a_file_to_the_bulk_import_and_names_bad_rows() {
    let env = Env::new("");
    let token = "test-admin-token-0123456789";
    env.append_config(&format!("[admin]\ntoken = \"{token}\"\n"));
    let server = env.serve();
    let token_file = env.tmp.path().join("admin.token");
    std::fs::write(&token_file, token).unwrap();
    let admin = format!("http://{}", server.admin);
    let with = |args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--admin", &admin, "--token-file", token_file.to_str().unwrap(), "--actor", "carol"]);
        run_code(&all)
    };
    let csv = env.tmp.path().join("ambassadors.csv");
    let mut rows = String::from("id,name,offer,link,coupon\n");
    for i in 1..=50 {
        rows.push_str(&format!("imp{i:02},Ambassador {i},shoes,l-imp{i:02},IMP{i:02}\n"));
    }
    std::fs::write(&csv, &rows).unwrap();
    let file = csv.to_str().unwrap();

    let (code, out, err) = with(&["import", file, "--type", "affiliates", "--dry-run"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("valid: would put 50 affiliates, 50 links, 50 coupons"), "{out}");
    assert_eq!(server.get("/c/l-imp07").status, 404, "a dry run imports nothing");
    let (code, out, err) = with(&["import", file, "--type", "affiliates"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("imported: 50 affiliates, 50 links, 50 coupons (log sequence"), "{out}");
    assert_eq!(server.get("/c/l-imp07").status, 302);

    // Bad rows: exit 1, each named; nothing imported.
    let bad = env.tmp.path().join("bad.csv");
    std::fs::write(&bad, "id,name,offer,link,coupon\nnew1,A,shoes,l-new1,NEW1\nnew2,B,nope,l-new2,NEW2\n").unwrap();
    let (code, _, err) = with(&["import", bad.to_str().unwrap(), "--type", "affiliates"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("nothing was imported") && err.contains("row 3:") && err.contains("nope"), "{err}");
    assert_eq!(server.get("/c/l-new1").status, 404);
    // Trouble: a CSV without --type, a file of another kind, a missing file.
    let (code, _, err) = with(&["import", file]);
    assert!(code == 2 && err.contains("--type"), "{err}");
    let txt = env.tmp.path().join("rows.txt");
    std::fs::write(&txt, "x").unwrap();
    let (code, _, err) = with(&["import", txt.to_str().unwrap()]);
    assert!(code == 2 && err.contains("not .csv"), "{err}");
    let (code, _, err) = with(&["import", "/nonexistent/rows.jsonl"]);
    assert!(code == 2 && err.contains("cannot read"), "{err}");
}
