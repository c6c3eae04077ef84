//! Operations: the admin listener and its API, the metrics it serves, and the deploy/ files
//! and README that name those metrics. The server in-process on 127.0.0.1.

use std::collections::BTreeSet;
use std::path::Path;

use crate::common::{click_storm, events, of_type, wait_for, Env, TestServer, TOKEN};

const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

fn env_with_token() -> Env {
    let env = Env::new("");
    env.append_config(&format!("[admin]\ntoken = \"{ADMIN_TOKEN}\"\n"));
    env
}

fn repo(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(path)).unwrap()
}

/// The value of the sample written exactly as `series` (name and labels).
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no sample {series} in\n{metrics}"))
        .parse()
        .unwrap()
}

/// Names as a query or a table writes them: counters with `_total`, info with `_info`,
/// histograms by their family name.
fn exported_names(metrics: &str) -> BTreeSet<String> {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| {
            let (name, kind) = l.split_once(' ').unwrap();
            match kind {
                "counter" => format!("{name}_total"),
                "info" => format!("{name}_info"),
                _ => name.to_owned(),
            }
        })
        .collect()
}

/// Every `tally_...` and `process_...` identifier in `text` (recording rules are named
/// `tally:...`, so they are not picked up), with histogram series suffixes mapped to their
/// family.
fn referenced_names(text: &str, histograms: &BTreeSet<String>) -> BTreeSet<String> {
    ["tally_", "process_"].iter().flat_map(|prefix| names_with(text, prefix, histograms)).collect()
}

fn names_with(text: &str, prefix: &str, histograms: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find(prefix) {
        let start = i + pos;
        let boundary = start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if boundary {
            let name = &text[start..end];
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| histograms.contains(*f)))
                .unwrap_or(name);
            out.insert(family.to_owned());
        }
        i = end.max(start + 1);
    }
    out
}

#[test]
fn metrics_count_the_traffic_sent() {
    let env = env_with_token();
    let server = env.serve();
    let clicks = click_storm(server.addr, 1, 7, "m");
    assert_eq!(clicks.len(), 7);
    for _ in 0..2 {
        assert_eq!(server.send("GET /c/demo HTTP/1.1\r\nHost: t\r\nUser-Agent: curl/8.5\r\n\r\n").status, 302);
    }
    assert_eq!(server.get("/c/no-such-link").status, 404);
    let pb = |q: &str| server.get(&format!("/postback?offer=shoes&goal=sale&amount=10.00&{q}"));
    assert_eq!(pb(&format!("cid={}&txid=T1&token={TOKEN}", clicks[0])).json()["status"], "accepted");
    assert_eq!(pb(&format!("cid={}&txid=T1&token={TOKEN}", clicks[0])).json()["status"], "duplicate");
    let invalid = format!("/postback?offer=shoes&goal=sale&amount=1.234&cid={}&txid=T2&token={TOKEN}", clicks[1]);
    assert_eq!(server.get(&invalid).status, 400);
    assert_eq!(pb(&format!("cid={}&txid=T3", clicks[1])).status, 401);
    let px = server.get(&format!("/px.gif?offer=shoes&goal=sale&txid=P1&amount=5.00&cid={}", clicks[2]));
    assert_eq!(px.status, 200);
    // Appended: the program at start, 9 clicks, 3 conversions (accepted, duplicate, pixel).
    let appended = 13.0;
    wait_for("attribution to reach the log head", || {
        let m = server.metrics();
        sample(&m, "tally_attribution_position") == appended && sample(&m, "tally_attribution_lag_events") == 0.0
    });

    let m = server.metrics();
    for (series, want) in [
        ("tally_clicks_recorded_total{kind=\"human\"}", 7.0),
        ("tally_clicks_recorded_total{kind=\"non_human\"}", 2.0),
        ("tally_clicks_unrecorded_total{cause=\"queue_full\"}", 0.0),
        ("tally_http_requests_total{route=\"click\",status_class=\"3xx\"}", 9.0),
        ("tally_http_requests_total{route=\"click\",status_class=\"4xx\"}", 1.0),
        ("tally_http_requests_total{route=\"postback\",status_class=\"2xx\"}", 2.0),
        ("tally_http_requests_total{route=\"postback\",status_class=\"4xx\"}", 2.0),
        ("tally_http_requests_total{route=\"pixel\",status_class=\"2xx\"}", 1.0),
        ("tally_conversions_total{source=\"postback\",outcome=\"accepted\"}", 1.0),
        ("tally_conversions_total{source=\"postback\",outcome=\"duplicate\"}", 1.0),
        ("tally_conversions_total{source=\"postback\",outcome=\"invalid\"}", 1.0),
        ("tally_conversions_total{source=\"postback\",outcome=\"unauthorized\"}", 1.0),
        ("tally_conversions_total{source=\"pixel\",outcome=\"accepted\"}", 1.0),
        ("tally_log_events_appended_total", appended),
        ("tally_log_last_sequence", appended),
        ("tally_log_queue_capacity", 65536.0),
        ("tally_log_queue_depth", 0.0),
        ("tally_log_fsyncs_total", 0.0),
        ("tally_log_commit_errors_total", 0.0),
        ("tally_attribution_events_total", appended),
        ("tally_attribution_up", 1.0),
        ("tally_attribution_lag_seconds", 0.0),
        ("tally_program_links", 3.0),
    ] {
        assert_eq!(sample(&m, series), want, "{series}");
    }
    assert!(sample(&m, "tally_log_batch_size_count") >= 1.0);
    assert_eq!(sample(&m, "tally_log_batch_size_sum"), appended);
    assert!(sample(&m, "tally_log_commit_duration_seconds_count") >= 1.0);
    assert!(sample(&m, "tally_log_rocksdb_pending_compaction_bytes") >= 0.0);
    assert!(sample(&m, "tally_log_rocksdb_stall_seconds_total") >= 0.0);
    // The first postback's commission and the pixel's: both credited, held for 14 days.
    assert_eq!(sample(&m, "tally_attribution_ledger_entries_total{status=\"pending\"}"), 2.0);
    assert_eq!(sample(&m, "tally_attribution_pending_holds"), 2.0);
    assert_eq!(sample(&m, "tally_attribution_ledger_entries_total{status=\"duplicate\"}"), 1.0);
    let build = format!(
        "tally_build_info{{version=\"{}\",revision=\"{}\"}}",
        env!("CARGO_PKG_VERSION"),
        tally_server::process_metrics::REVISION
    );
    assert_eq!(sample(&m, &build), 1.0);

    // Labels never carry link codes, click IDs, sub IDs or IPs.
    for line in m.lines().filter(|l| !l.starts_with('#')) {
        for secret in clicks.iter().map(String::as_str).chain(["demo", "m-0-", "127.0.0"]) {
            assert!(!line.contains(secret), "{secret} leaked into a metric: {line}");
        }
    }

    // Stats through the admin API agree with the traffic.
    let stats = server.admin("GET", "/admin/stats?from=2000-01-01", Some(ADMIN_TOKEN), "").json();
    let shoes = &stats["by_offer"].as_array().unwrap().iter().find(|r| r["key"] == "shoes").unwrap().clone();
    assert_eq!(shoes["clicks"], 7, "{stats}");
    assert_eq!(shoes["non_human_clicks"], 2, "{stats}");
    assert_eq!(shoes["conversions"], 2, "{stats}");
    assert_eq!(shoes["revenue"], "15.00", "{stats}");
    let aff1 = stats["by_affiliate"].as_array().unwrap().iter().find(|r| r["key"] == "aff1").unwrap().clone();
    assert_eq!(aff1["clicks"], 7, "{stats}");
}

#[test]
fn build_process_and_disk_metrics_are_exported_and_sane() {
    let env = Env::new("");
    let server = env.serve();
    let m = server.metrics();

    let build = m.lines().find(|l| l.starts_with("tally_build_info{")).expect("tally_build_info");
    let label = |name: &str| {
        let start =
            build.find(&format!("{name}=\"")).unwrap_or_else(|| panic!("no {name} in {build}")) + name.len() + 2;
        build[start..].split('"').next().unwrap().to_owned()
    };
    assert_eq!(label("version"), env!("CARGO_PKG_VERSION"));
    let revision = label("revision");
    assert!(
        revision == "unknown" || (revision.len() == 12 && revision.bytes().all(|b| b.is_ascii_hexdigit())),
        "revision {revision:?}"
    );
    assert!(build.ends_with(" 1"), "{build}");

    let free = sample(&m, "tally_data_dir_free_bytes");
    let size = sample(&m, "tally_data_dir_size_bytes");
    assert!(free > 0.0 && free <= size, "free {free} of {size}");

    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let start = sample(&m, "process_start_time_seconds");
    // This test process started the server, and not long ago.
    assert!(start <= now && start > now - 6.0 * 3600.0, "start {start}, now {now}");
    assert!(sample(&m, "process_cpu_seconds_total") > 0.0);
    let rss = sample(&m, "process_resident_memory_bytes");
    assert!(rss > 1e6 && rss <= sample(&m, "process_virtual_memory_bytes"), "rss {rss}");
    let open = sample(&m, "process_open_fds");
    assert!(open >= 3.0 && open <= sample(&m, "process_max_fds"), "open fds {open}");
    // Counters only grow; the start time stays put.
    let later = server.metrics();
    assert!(sample(&later, "process_cpu_seconds_total") >= sample(&m, "process_cpu_seconds_total"));
    assert_eq!(sample(&later, "process_start_time_seconds"), start);
}

#[test]
fn readme_dashboard_rules_and_alerts_name_only_exported_metrics() {
    let env = Env::new("");
    let server = env.serve();
    let m = server.metrics();
    let exported = exported_names(&m);
    let histograms: BTreeSet<String> = m
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" histogram"))
        .map(str::to_owned)
        .collect();

    // The README's metrics tables list exactly what is exported: a single node's, and the
    // cluster's (`tally_bus_*`, exported only with [bus]).
    let readme = repo("README.md");
    let section = readme.split("## Metrics").nth(1).unwrap().split("\n## ").next().unwrap();
    let documented: BTreeSet<String> = section
        .lines()
        .filter(|l| l.starts_with("| `tally_") || l.starts_with("| `process_"))
        .flat_map(|l| referenced_names(l.split('|').nth(1).unwrap(), &histograms))
        .collect();
    let (bus_documented, node_documented): (BTreeSet<String>, BTreeSet<String>) =
        documented.into_iter().partition(|n| n.starts_with("tally_bus_"));
    assert_eq!(node_documented, exported, "README metrics table vs /metrics");
    let bus = {
        let mut registry = prometheus_client::registry::Registry::default();
        tally_bus::BusMetrics::default().register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        exported_names(&text)
    };
    assert_eq!(bus_documented, bus, "README cluster metrics table vs tally_bus::BusMetrics");
    let exported: BTreeSet<String> = exported.union(&bus).cloned().collect();

    for file in [
        "deploy/grafana/dashboards/tally.json",
        "deploy/prometheus/tally.rules.yml",
        "deploy/prometheus/tally.alerts.yml",
    ] {
        let used = referenced_names(&repo(file), &histograms);
        assert!(used.len() >= 5, "{file} names too few metrics to be the real file: {used:?}");
        let unknown: Vec<&String> = used.difference(&exported).collect();
        assert!(unknown.is_empty(), "{file} queries metrics Tally does not export: {unknown:?}");
    }
}

fn link_codes(server: &TestServer) -> Vec<(String, bool)> {
    let r = server.admin("GET", "/admin/links", Some(ADMIN_TOKEN), "");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["links"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["code"].as_str().unwrap().to_owned(), l["active"].as_bool().unwrap()))
        .collect()
}

#[test]
fn admin_api_refuses_without_the_token_and_changes_nothing() {
    let env = env_with_token();
    let server = env.serve();
    let before_links = link_codes(&server);
    let before_events = events(&env.data()).len();
    let body = r#"{"code":"spring","offer":"shoes","affiliate":"aff2"}"#;
    for token in [None, Some("wrong-token-wrong-token"), Some("")] {
        for (method, path, body) in [
            ("GET", "/admin/links", ""),
            ("POST", "/admin/links", body),
            ("POST", "/admin/links/demo/disable", ""),
            ("POST", "/admin/reload", ""),
            ("GET", "/admin/program", ""),
            ("GET", "/admin/stats", ""),
            ("PUT", "/admin/log-level", r#"{"level":"trace"}"#),
            ("GET", "/admin/no-such-thing", ""),
        ] {
            let r = server.admin(method, path, token, body);
            assert_eq!(r.status, 401, "{method} {path} with {token:?}: {}", r.text());
            assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));
        }
    }
    assert_eq!(link_codes(&server), before_links);
    assert_eq!(server.get("/c/spring").status, 404);
    assert_eq!(server.get("/c/demo").status, 302);
    assert!(!env.data().join("links.toml").exists());
    // The filter is the process's, shared with tests running beside this one; none of them
    // asks for "trace", so the refused PUT above would be the only way to it.
    let level = server.admin("GET", "/admin/log-level", Some(ADMIN_TOKEN), "").json();
    assert_ne!(level["level"], "trace", "a refused request changed the log level");
    // Only the clicks above were appended: no program change.
    let events = events(&env.data());
    assert_eq!(events.len(), before_events + 1);
    assert_eq!(of_type(&events, "program_change").len(), 1);
}

#[test]
fn a_link_added_through_the_api_redirects_at_once_survives_a_restart_and_is_logged() {
    let env = env_with_token();
    let mut server = env.serve();
    let r = server.admin(
        "POST",
        "/admin/links",
        Some(ADMIN_TOKEN),
        r#"{"code":"spring","offer":"shoes","affiliate":"aff2"}"#,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let added = r.json();
    assert_eq!(added["link"]["managed_by_api"], true);
    let digest = added["program_digest"].as_str().unwrap().to_owned();
    let r = server.get("/c/spring?sub1=x");
    assert_eq!(r.status, 302);
    assert!(r.header("location").unwrap().contains("aff=aff2"), "{:?}", r.header("location"));
    assert_eq!(server.admin("GET", "/admin/program", Some(ADMIN_TOKEN), "").json()["digest"], digest.as_str());

    // Disabling a link from the program file works the same way.
    let r = server.admin("POST", "/admin/links/demo/disable", Some(ADMIN_TOKEN), "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(server.get("/c/demo").status, 404);

    // The log holds each change as a ProgramEdit naming the program it makes, before the
    // click that used it; the program itself is logged once, at the start.
    let events = events(&env.data());
    assert_eq!(of_type(&events, "program_change").len(), 1, "the start");
    let changes = of_type(&events, "program_edit");
    assert_eq!(changes.len(), 2, "add, disable");
    assert_eq!(changes[0]["program_digest"], digest.as_str());
    let spring_click = events.iter().position(|e| e["type"] == "click" && e["link"] == "spring").unwrap();
    let add_seq = events.iter().position(|e| e["program_digest"] == digest.as_str()).unwrap();
    assert!(add_seq < spring_click);

    // A restart rebuilds the edits from the log; a reload keeps them too.
    assert!(server.stop());
    let server = env.serve();
    assert_eq!(server.get("/c/spring").status, 302);
    assert_eq!(server.get("/c/demo").status, 404);
    assert_eq!(server.reload(), Ok(false), "the overlay survives a reload");
    let r = server.admin("POST", "/admin/reload", Some(ADMIN_TOKEN), "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["changed"], false, "the overlay survives a reload: {}", r.text());
    assert_eq!(server.get("/c/spring").status, 302);
    let r = server.admin("POST", "/admin/links/demo/enable", Some(ADMIN_TOKEN), "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(server.get("/c/demo").status, 302);
    let codes = link_codes(&server);
    assert!(codes.contains(&("spring".into(), true)) && codes.contains(&("demo".into(), true)), "{codes:?}");
}

#[test]
fn admin_api_answers_bad_requests_with_a_reason_and_changes_nothing() {
    let env = env_with_token();
    let server = env.serve();
    let t = Some(ADMIN_TOKEN);
    let before = events(&env.data()).len();
    for (method, path, body, status, needle) in [
        ("POST", "/admin/links", "{not json", 400, "bad JSON"),
        ("POST", "/admin/links", r#"{"code":"x"}"#, 400, "missing field"),
        ("POST", "/admin/links", r#"{"code":"x","offer":"shoes","affiliate":"aff1","extra":1}"#, 400, "unknown field"),
        ("POST", "/admin/links", r#"{"code":"bad code","offer":"shoes","affiliate":"aff1"}"#, 400, "code"),
        ("POST", "/admin/links", r#"{"code":"x","offer":"nope","affiliate":"aff1"}"#, 400, "unknown offer"),
        ("POST", "/admin/links", r#"{"code":"x","offer":"shoes","affiliate":"nobody"}"#, 400, "unknown affiliate"),
        ("POST", "/admin/links", r#"{"code":"demo","offer":"shoes","affiliate":"aff1"}"#, 409, "exists"),
        ("POST", "/admin/links/nope/disable", "", 404, "no link"),
        ("DELETE", "/admin/links", "", 405, "not allowed"),
        ("GET", "/admin/reload", "", 405, "not allowed"),
        ("GET", "/admin/nothing", "", 404, "no such"),
        ("PUT", "/admin/log-level", r#"{"level":"[[["}"#, 400, "level"),
        ("PUT", "/admin/log-level", r#"{"level":""}"#, 400, "level"),
        ("GET", "/admin/stats?from=yesterday", "", 400, "from"),
        ("GET", "/admin/stats?from=2026-02-01&to=2026-01-01", "", 400, "after"),
        ("GET", "/admin/stats?offer=shoes", "", 400, "unknown parameter"),
    ] {
        let r = server.admin(method, path, t, body);
        assert_eq!(r.status, status, "{method} {path} {body}: {}", r.text());
        assert!(r.text().contains(needle), "{method} {path}: {} lacks {needle}", r.text());
    }
    let big = format!(r#"{{"code":"{}"}}"#, "x".repeat(70_000));
    assert_eq!(server.admin("POST", "/admin/links", t, &big).status, 413);
    assert!(!env.data().join("links.toml").exists());
    assert_eq!(events(&env.data()).len(), before, "nothing was logged");

    // The level can be changed and read back.
    let r = server.admin("PUT", "/admin/log-level", t, r#"{"level":"info,tally_edge=debug"}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(server.admin("GET", "/admin/log-level", t, "").json()["level"], "info,tally_edge=debug");

    // A program file broken on disk: reload refuses it and keeps serving the old one.
    std::fs::write(env.program(), "this is [not valid").unwrap();
    let r = server.admin("POST", "/admin/reload", t, "");
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(server.get("/c/demo").status, 302);
}

#[test]
fn without_a_token_the_api_is_off_but_metrics_and_health_answer() {
    let env = Env::new("");
    let server = env.serve();
    let r = server.admin("GET", "/admin/links", Some("anything-at-all-123"), "");
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("admin.token"));
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(server.admin("GET", path, None, "").status, 200, "{path}");
    }
    // Health answers on the public port too (load balancers probe it); metrics do not.
    assert_eq!(server.get("/healthz").status, 200);
    assert_eq!(server.get("/metrics").status, 404);
}

#[test]
fn the_container_config_is_valid_and_the_image_holds_no_working_credentials() {
    let config = tally_server::Config::from_toml(&repo("deploy/docker/tally.toml"), Path::new("/etc/tally")).unwrap();
    let dir = Path::new("/run/secrets");
    assert_eq!(config.edge.secrets.dir.as_deref(), Some(dir));
    // The image ships the example program, which only names credentials; with nothing
    // mounted where the image's config looks, it refuses to start, naming each one.
    let env = Env::new("");
    let empty = env.tmp.path().join("run-secrets");
    std::fs::create_dir(&empty).unwrap();
    let secrets = tally_edge::secrets::SecretsConfig { dir: Some(empty), file: None };
    let err = tally_edge::serving_program(&repo("config/program.toml"), &secrets).unwrap_err().to_string();
    for name in ["acme-token", "acme-hmac", "globex-token"] {
        assert!(err.contains(&format!("secret \"{name}\" is not in the secrets store")), "{err}");
    }
}

/// The cluster example's services, as the container's config with each one's environment:
/// every `TALLY_*` variable it sets is a real key, every Tally service joins the bus, and
/// the edges have node IDs of their own.
#[test]
fn the_cluster_example_configures_a_bus_and_distinct_edges() {
    let compose = repo("deploy/cluster/compose.yml");
    let base = repo("deploy/docker/tally.toml");
    let mut services: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for line in compose.lines() {
        let indent = line.len() - line.trim_start().len();
        let text = line.trim();
        if indent == 2 && text.ends_with(':') && !text.starts_with('#') {
            services.push((text.trim_end_matches(':').to_owned(), Vec::new()));
        } else if let Some((name, value)) = text.split_once(": ").filter(|(n, _)| n.starts_with("TALLY_")) {
            let value = value.trim_matches('"').to_owned();
            services.last_mut().unwrap().1.push((name.to_owned(), value));
        }
    }
    let tally: Vec<_> = services.iter().filter(|(_, vars)| !vars.is_empty()).collect();
    assert_eq!(tally.len(), 4, "two edges and two attribution processes: {services:?}");
    let mut node_ids = BTreeSet::new();
    for (service, vars) in tally {
        let config = tally_server::Config::from_toml_with_env(&base, Path::new("/etc/tally"), vars.clone())
            .unwrap_or_else(|e| panic!("{service}: {e}"));
        let bus = config.bus.unwrap_or_else(|| panic!("{service} is not on the bus"));
        assert_eq!(bus.urls.len(), 3, "{service}");
        if service.starts_with("edge") {
            assert!(config.edge.node_id > 0 && node_ids.insert(config.edge.node_id), "{service}: node ID");
        }
    }
    assert_eq!(node_ids.len(), 2);
}
