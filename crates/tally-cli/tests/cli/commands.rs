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
    let (ok, _, err) = run(&check);
    assert!(!ok);
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
    assert!(good.status.success(), "{}", String::from_utf8_lossy(&good.stderr));
    assert!(String::from_utf8_lossy(&good.stdout).contains("2 offers"));
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
    assert!(!bad.status.success());
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

    let missing = tally(&["config", "check", "--config", "/nonexistent/tally.toml"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/tally.toml"));
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
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stdout));
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(out.contains("101 events"), "{out}");
    assert!(out.contains("head 101:"), "{out}");
    assert!(server.stop());

    let stats = tally(&["log", "stats", "--data-dir", d]);
    let s = String::from_utf8_lossy(&stats.stdout);
    assert!(s.contains("click         100") && s.contains("last_seq        101"), "{s}");

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
    assert!(!bad.status.success());
    let out = String::from_utf8_lossy(&bad.stdout);
    assert!(out.contains("FAILED at sequence 57"), "{out}");
}

#[test]
fn read_commands_name_a_missing_data_dir() {
    for args in [
        vec!["verify", "--data-dir", "/nonexistent/tally-data"],
        vec!["log", "stats", "--data-dir", "/nonexistent/tally-data"],
        vec!["export", "events", "--data-dir", "/nonexistent/tally-data"],
    ] {
        let out = tally(&args);
        assert!(!out.status.success(), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/tally-data"), "{args:?}");
    }
    let out = tally(&["export", "events", "--data-dir", "/tmp", "--format", "xml"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("xml"));
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
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
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
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("404"));
}

#[test]
fn a_bad_admin_config_is_refused_at_start() {
    let env = Env::new("");
    env.append_config("[admin]\ntoken = \"short\"\n");
    let out = tally(&["serve", "--config", env.config().to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("admin.token"));
}
