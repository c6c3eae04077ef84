//! Click signals against the real server: country, region and ASN from MaxMind-format
//! databases (written by the test kit), device, OS and browser from the user agent, the
//! language, the bot list and the datacenter list, recorded on each click.

use crate::common::*;

const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1";

/// A server behind a trusted proxy (so the test picks each click's address) with both
/// databases, an operator datacenter range and an operator bot entry.
fn env_with_signals() -> Env {
    let env = Env::build("", "", "trusted_proxies = [\"127.0.0.1\"]");
    let dir = env.tmp.path();
    std::fs::write(dir.join("City.mmdb"), mmdb::city_fixture()).unwrap();
    std::fs::write(dir.join("ASN.mmdb"), mmdb::asn_fixture()).unwrap();
    std::fs::write(dir.join("dc.txt"), "198.51.100.0/24 our scanners\n").unwrap();
    std::fs::write(dir.join("bots.txt"), "AcmeMonitor/\n").unwrap();
    env.append_config(
        "[signals]\ngeoip_database = \"City.mmdb\"\nasn_database = \"ASN.mmdb\"\ndatacenters_file = \"dc.txt\"\nbots_file = \"bots.txt\"\n",
    );
    env
}

fn click(server: &TestServer, ip: &str, ua: &str, extra: &str) -> Resp {
    server.send(&format!("GET /c/demo HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: {ip}\r\nUser-Agent: {ua}\r\n{extra}\r\n"))
}

fn signals(c: &serde_json::Value) -> [&str; 8] {
    ["country", "region", "asn", "device", "os", "browser", "language", "route"].map(|k| c[k].as_str().unwrap_or(""))
}

#[test]
fn each_click_records_where_from_on_what_and_from_which_network() {
    let env = env_with_signals();
    let server = env.serve();
    // 81.2.69.200 is in the fixture's Edinburgh /28 inside London's /24: classified from the
    // full address, stored truncated to its /24 (the default privacy policy).
    assert_eq!(click(&server, "81.2.69.200", IPHONE, "Accept-Language: en-GB,en;q=0.8\r\n").status, 302);
    // A phone asking for the desktop site: the client hints still say phone and Android.
    let desktop_mode =
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";
    click(
        &server,
        "2001:db8:1::9",
        desktop_mode,
        "Sec-CH-UA-Mobile: ?1\r\nSec-CH-UA-Platform: \"Android\"\r\nAccept-Language: de-DE\r\n",
    );
    // A script on a cloud server: on the bot list, and AS16509 is a hosting ASN.
    click(&server, "52.94.1.1", "curl/8.5.0", "");
    // The operator's own lists.
    click(&server, "198.51.100.7", "AcmeMonitor/2.0", "");
    // An address no database knows, and no user agent at all.
    server.send("GET /c/demo HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 192.0.2.1\r\n\r\n");

    let events = events(&env.data());
    let clicks = of_type(&events, "click");
    assert_eq!(clicks.len(), 5);
    assert_eq!(signals(clicks[0]), ["GB", "SCT", "", "mobile", "iOS", "Safari", "en", ""]);
    assert_eq!(clicks[0]["asn"], 20712);
    assert_eq!(clicks[0]["ip"], "81.2.69.0");
    assert_eq!(clicks[0]["flags"], 0);
    assert_eq!(signals(clicks[1]), ["DE", "BE", "", "mobile", "Android", "Chrome", "de", ""]);
    assert_eq!(clicks[2]["asn"], 16509);
    assert_eq!(clicks[2]["device"], "bot");
    let flags = |c: &serde_json::Value| c["flags"].as_u64().unwrap() as u16;
    assert_eq!(flags(clicks[2]), tally_model::click_flags::UNFURLER | tally_model::click_flags::DATACENTER);
    assert_eq!(flags(clicks[3]), tally_model::click_flags::UNFURLER | tally_model::click_flags::DATACENTER);
    assert_eq!(signals(clicks[4]), [""; 8]);
    assert_eq!(flags(clicks[4]), 0);
    // Bots are not people in the metrics either.
    let metrics = server.metrics();
    assert!(metrics.contains("tally_clicks_recorded_total{kind=\"non_human\"} 2"), "{metrics}");
    // The databases' build times, for the staleness alert (the test kit writes 1700000000).
    for db in ["geoip", "asn"] {
        let series = format!("tally_signals_database_built_timestamp_seconds{{database=\"{db}\"}} 1700000000");
        assert!(metrics.contains(&series), "{series} in {metrics}");
    }
    // Replay reproduces the ledger from clicks that carry signals.
    assert_replay_matches(&env.data());
}

#[test]
fn a_reload_picks_up_new_databases_and_a_bad_one_keeps_the_old() {
    let env = env_with_signals();
    let server = env.serve();
    click(&server, "81.2.69.1", IPHONE, "");
    // Not a database: the reload fails naming the key, and clicks keep the database in force.
    let city = env.tmp.path().join("City.mmdb");
    std::fs::write(&city, b"not a database").unwrap();
    let e = server.reload().unwrap_err();
    assert!(e.contains("signals.geoip_database") && e.contains("is not a MaxMind DB file"), "{e}");
    click(&server, "81.2.69.1", IPHONE, "");
    // This week's database moved the network to France.
    let mut w = mmdb::Writer::new("GeoLite2-Country");
    w.insert(
        "81.2.69.0/24".parse().unwrap(),
        mmdb::Value::map([("country", mmdb::Value::map([("iso_code", "FR".into())]))]),
    );
    std::fs::write(&city, w.to_bytes()).unwrap();
    assert_eq!(server.reload(), Ok(false), "the program itself is unchanged");
    click(&server, "81.2.69.1", IPHONE, "");
    let events = events(&env.data());
    let countries: Vec<&str> = of_type(&events, "click").iter().map(|c| c["country"].as_str().unwrap()).collect();
    assert_eq!(countries, ["GB", "GB", "FR"]);
}

#[test]
fn a_configured_file_that_is_missing_or_bad_stops_the_start_naming_it() {
    let env = Env::new("");
    env.append_config("[signals]\ngeoip_database = \"nowhere.mmdb\"\n");
    let e = tally_server::Config::load(&env.config()).unwrap_err().to_string();
    assert!(e.contains("signals.geoip_database: no file at"), "{e}");

    let env = Env::new("");
    std::fs::write(env.tmp.path().join("agents.txt"), "browser Acme\n").unwrap();
    env.append_config("[signals]\nuser_agents_file = \"agents.txt\"\n");
    let config = tally_server::Config::load(&env.config()).unwrap();
    let e = tally_server::App::open(config).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("signals.user_agents_file") && e.contains("line 1"), "{e}");
}

/// An offer whose destination carries the signal and time macros, answering 308.
const MACRO_OFFER: &str = r#"
[[offers]]
id = "geo"
advertiser = "acme"
destination = "https://shop.example/geo?c={country}&r={region}&d={device}&b={browser}&l={language}&t={timestamp}"
allowed_hosts = ["shop.example"]
currency = "USD"
redirect = 308

  [[offers.goals]]
  id = "sale"
  payout = { kind = "fixed", amount = "1.00" }

[[links]]
code = "geo"
offer = "geo"
affiliate = "aff1"
"#;

#[test]
fn the_destination_gets_the_clicks_signals_and_the_offers_redirect_status() {
    let env = env_with_signals();
    env.append_program(MACRO_OFFER);
    let server = env.serve();
    let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let ask = |http: &str| {
        server.send(&format!(
            "GET /c/geo HTTP/{http}\r\nHost: t\r\nX-Forwarded-For: 81.2.69.1\r\nUser-Agent: {IPHONE}\r\nAccept-Language: fr-CH\r\n\r\n"
        ))
    };
    // HTTP/1.1 takes the fast path, HTTP/1.0 hyper's: both answer the offer's status.
    for http in ["1.1", "1.0"] {
        let r = ask(http);
        assert_eq!(r.status, 308, "HTTP/{http}");
        let location = r.header("location").unwrap();
        let (head, t) = location.rsplit_once("&t=").unwrap();
        assert_eq!(head, "https://shop.example/geo?c=GB&r=ENG&d=mobile&b=Safari&l=fr", "HTTP/{http}");
        let t: u64 = t.parse().unwrap();
        assert!((before..=before + 60).contains(&t), "{t} is not now ({before})");
    }
    // Links of other offers keep 302.
    assert_eq!(click(&server, "81.2.69.1", IPHONE, "").status, 302);
}

#[test]
fn a_redirect_status_a_click_may_not_answer_with_is_refused_naming_the_offer() {
    let env = Env::new("");
    env.append_program(&MACRO_OFFER.replace("redirect = 308", "redirect = 303"));
    let e = tally_edge::load_for(&tally_server::Config::load(&env.config()).unwrap().edge, Default::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("offers[geo].redirect: 303 is not a redirect status a click may answer with (302, 307, 301 or 308)"),
        "{e}"
    );
}

/// An offer routing by country, device and an A/B split, and its link.
const ROUTED_OFFER: &str = r#"
[[offers]]
id = "routed"
advertiser = "acme"
destination = "https://shop.example/default?cid={click_id}"
allowed_hosts = ["shop.example"]
currency = "USD"

  [[offers.routes]]
  name = "uk-mobile"
  country = ["GB"]
  device = ["mobile", "tablet"]
  destination = "https://uk.shop.example/m?cid={click_id}"

  [[offers.routes]]
  name = "de"
  country = ["DE"]
  destination = "https://de.shop.example/?cid={click_id}"

  [[offers.routes]]
  name = "desktop-test"
  device = ["desktop"]
  destinations = [{ name = "a", url = "https://shop.example/a?cid={click_id}", weight = 1 }, { name = "b", url = "https://shop.example/b?cid={click_id}", weight = 1 }]

  [[offers.goals]]
  id = "sale"
  payout = { kind = "fixed", amount = "1.00" }

[[links]]
code = "routed"
offer = "routed"
affiliate = "aff1"
"#;

#[test]
fn routing_rules_choose_the_destination_and_the_click_records_which() {
    let env = env_with_signals();
    env.append_program(ROUTED_OFFER);
    let server = env.serve();
    let chrome = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";
    let go = |ip: &str, ua: &str, query: &str| {
        let r = server.send(&format!(
            "GET /c/routed{query} HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: {ip}\r\nUser-Agent: {ua}\r\n\r\n"
        ));
        assert_eq!(r.status, 302);
        let location = r.header("location").unwrap().to_owned();
        location.split_once("?cid=").map_or(location.clone(), |(l, _)| l.to_owned())
    };
    assert_eq!(go("81.2.69.1", IPHONE, ""), "https://uk.shop.example/m");
    assert_eq!(go("2001:db8:1::9", IPHONE, ""), "https://de.shop.example/");
    assert_eq!(go("175.16.199.10", IPHONE, ""), "https://shop.example/default", "no rule holds");
    // The A/B split: both variants show up over 40 desktop clicks (each 1 in 2^40 to miss).
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        seen.insert(go("192.0.2.1", chrome, ""));
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["https://shop.example/a", "https://shop.example/b"]);
    // A followed deep link is the affiliate's choice: no route.
    assert_eq!(go("81.2.69.1", IPHONE, "?url=https%3A%2F%2Fshop.example%2Fsale"), "https://shop.example/sale");

    let events = events(&env.data());
    let routes: Vec<&str> = of_type(&events, "click").iter().map(|c| c["route"].as_str().unwrap()).collect();
    assert_eq!(routes[..3], ["uk-mobile", "de", ""]);
    assert!(routes[3..43].iter().all(|r| *r == "desktop-test/a" || *r == "desktop-test/b"), "{routes:?}");
    assert_eq!(routes[43], "");
    assert_replay_matches(&env.data());
}
