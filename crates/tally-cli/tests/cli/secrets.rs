//! Credentials stay out of what auditors get: after a run that used every kind of secret
//! (advertiser tokens and HMAC keys, the admin token, the IP hash key), none appears in the
//! bytes of the data directory, of a snapshot or of any export, nor in the log's records or
//! the program the attribution state keeps. And a snapshot restores what the admin API added.
#![allow(clippy::unwrap_used)]

use crate::common::*;

const ADMIN: &str = "scan-admin-token-0123456789";
const IP_KEY: &str = "scan-ip-hash-key-0123456789";

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn assert_no_secret(what: &str, bytes: &[u8]) {
    for secret in [TOKEN, HMAC_SECRET, GLOBEX_TOKEN, ADMIN, IP_KEY] {
        let found = bytes.windows(secret.len()).any(|w| w == secret.as_bytes());
        assert!(!found, "{what} holds the credential {secret}");
    }
}

/// A server run that used every kind of secret; returns its environment, stopped.
fn run_with_every_secret() -> Env {
    let env = Env::build("", "", &format!("ip_mode = \"hash\"\nip_hash_key = \"{IP_KEY}\"\n"));
    env.append_config(&format!("[admin]\ntoken = \"{ADMIN}\"\n"));
    let mut server = env.serve();
    let cid = server.get("/c/demo?sub1=scan").click_id();
    let ok = |r: Resp| assert!(r.status == 200, "{}", r.text());
    ok(server.get(&format!("/postback?cid={cid}&offer=shoes&goal=signup&txid=T1&token={TOKEN}")));
    let signed = format!("cid={cid}&offer=shoes&goal=sale&txid=T2&amount=10.00");
    let sig = tally_protocol::auth::sign(HMAC_SECRET, now_secs(), signed.as_bytes());
    ok(server.send(&format!("GET /postback?{signed} HTTP/1.1\r\nHost: t\r\nX-Tally-Signature: {sig}\r\n\r\n")));
    let hotel = server.get("/c/hotels-aff2");
    let hotel_cid = &hotel.header("set-cookie").unwrap()["tally_cid=".len()..][..26];
    ok(server.get(&format!("/postback?cid={hotel_cid}&offer=hotels&txid=T3&token={GLOBEX_TOKEN}")));
    ok(server.get(&format!("/px.gif?cid={cid}&offer=shoes&goal=signup&txid=T4")));
    let added =
        server.admin("POST", "/admin/links", Some(ADMIN), r#"{"code":"api","offer":"shoes","affiliate":"aff2"}"#);
    assert_eq!(added.status, 201, "{}", added.text());
    assert_eq!(server.reload(), Ok(false));
    wait_for_ledger(&env.data(), 4);
    assert!(server.stop());
    env
}

#[test]
fn no_credential_reaches_the_data_directory_a_snapshot_or_an_export() {
    let env = run_with_every_secret();
    let data = env.data();
    let d = data.to_str().unwrap();
    let snap = env.tmp.path().join("snap");
    let (ok, out, err) = run(&["snapshot", "--data-dir", d, "--out", snap.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    for dir in [&data, &snap] {
        for file in files_under(dir) {
            assert_no_secret(&file.display().to_string(), &std::fs::read(&file).unwrap());
        }
    }
    for kind in ["events", "clicks", "conversions", "commissions"] {
        for format in ["csv", "jsonl"] {
            let (ok, out, err) = run(&["export", kind, "--format", format, "--data-dir", d]);
            assert!(ok && !out.is_empty(), "export {kind}: {err}");
            assert_no_secret(&format!("export {kind} --format {format}"), out.as_bytes());
        }
    }
    // Table files are compressed, so a raw scan could miss a value; read what they hold.
    for dir in [&data, &snap] {
        let reader = tally_log::LogReader::open_secondary(dir).unwrap();
        let mut programs = 0;
        for item in reader.iter_from(1) {
            let (seq, record) = item.unwrap();
            assert_no_secret(&format!("{}: log record {seq}", dir.display()), &record);
            programs += usize::from(matches!(
                tally_model::decode(&record).unwrap(),
                tally_model::Event::ProgramChange(_) | tally_model::Event::ProgramEdit(_)
            ));
        }
        assert!(programs >= 2, "the start and the API edit are logged");
        let state = tally_attribution::LedgerReader::open(&tally_attribution::state_dir(dir)).unwrap();
        assert_no_secret("the attribution state's program", state.program().unwrap().source.as_bytes());
    }
}

#[test]
fn a_restored_snapshot_serves_the_links_the_admin_api_added() {
    let env = run_with_every_secret();
    let snap = env.tmp.path().join("snap");
    let (ok, out, err) =
        run(&["snapshot", "--data-dir", env.data().to_str().unwrap(), "--out", snap.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    // Restoring is serving the copy as the data directory: the program edits are in its log.
    let server = TestServer::start(&env.config(), &snap);
    let r = server.get("/c/api?sub1=restored");
    assert_eq!(r.status, 302, "{}", r.text());
    assert!(r.header("location").unwrap().contains("aff=aff2"), "{:?}", r.header("location"));
    assert_eq!(server.get("/c/demo").status, 302);
}
