//! The bus against a real NATS server (Debian's nats-server, one node, JetStream on): the
//! shipper and the consumer between two real logs, across restarts of both; the lease; the
//! cluster's program. The 3-node cluster with faults is `tally-cli`'s `cluster` test.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use tally_bus::{Auth, BusConfig, BusMetrics, BusSection, Consumer, Lease, ProgramChannel, Shipper, Tls};
use tally_log::{Log, LogMetrics, LogOptions};
use tally_testkit::nats::NatsCluster;
use tally_testkit::{wait_for, ClickBuilder};

fn config(nats: &NatsCluster, stream: &str) -> BusConfig {
    let section = BusSection {
        urls: vec![nats.url(0)],
        stream: stream.into(),
        replicas: 1,
        max_records: 100,
        ack_timeout_ms: 1000,
        lease_ttl_ms: 1000,
        ..Default::default()
    };
    let mut problems = Vec::new();
    let config = section.validate(Path::new("."), &mut problems).unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    config
}

fn open(dir: &Path) -> Log {
    Log::open(dir, LogOptions::default(), LogMetrics::default()).unwrap()
}

fn append(log: &Log, from: u64, n: u64) {
    let pending: Vec<_> = (from..from + n)
        .map(|i| log.submit(tally_model::encode(&ClickBuilder::new().nonce(i).event()).unwrap()).unwrap())
        .collect();
    for p in pending {
        p.wait().unwrap();
    }
}

fn merged_through(merged: &Log, node: u16) -> u64 {
    merged.reader().verify_origins().unwrap().iter().find(|o| o.node == node).map_or(0, |o| o.last_seq)
}

#[test]
fn shipped_events_are_merged_once_across_restarts_of_both_sides() {
    let nats = NatsCluster::start(1);
    let config = config(&nats, "SHIP");
    let (edge_dir, merged_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let edge = open(edge_dir.path());
    let merged = open(merged_dir.path());
    append(&edge, 0, 1000);
    let metrics = BusMetrics::default();
    let shipper = Shipper::start(edge.clone(), 7, config.clone(), metrics.clone()).unwrap();
    let consumer = Consumer::start(merged.clone(), config.clone(), "test".into(), metrics.clone()).unwrap();
    wait_for("the first thousand merged", || merged_through(&merged, 7) == 1000);
    assert_eq!(edge.shipped().unwrap(), 1000);
    assert_eq!(metrics.ship_lag_events.get(), 0);
    shipper.stop();
    consumer.stop();

    // More events while both are down; then both resume from what they stored.
    append(&edge, 1000, 500);
    let stream_before = merged.merge_checkpoint().unwrap().stream;
    let metrics = BusMetrics::default();
    let shipper = Shipper::start(edge.clone(), 7, config.clone(), metrics.clone()).unwrap();
    let consumer = Consumer::start(merged.clone(), config, "test".into(), metrics.clone()).unwrap();
    wait_for("the rest merged", || merged_through(&merged, 7) == 1500);
    shipper.stop();
    consumer.stop();
    assert_eq!(metrics.duplicate_events.get(), 0, "the consumer resumed from its stream position");
    assert!(merged.merge_checkpoint().unwrap().stream > stream_before);
    let origins = merged.reader().verify_origins().unwrap();
    assert!(origins[0].is_ok(), "{origins:?}");
    assert_eq!(origins[0].records, 1500);
    assert_eq!(origins[0].head, edge.reader().verify().unwrap().head, "the merged log proves the edge's chain");
    assert_eq!(merged.reader().last_seq().unwrap(), Some(1500));
}

#[test]
fn a_shipper_that_forgot_its_position_sends_again_and_nothing_is_merged_twice() {
    let nats = NatsCluster::start(1);
    let config = config(&nats, "RESHIP");
    let (edge_dir, merged_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let edge = open(edge_dir.path());
    let merged = open(merged_dir.path());
    append(&edge, 0, 300);
    let metrics = BusMetrics::default();
    let consumer = Consumer::start(merged.clone(), config.clone(), "test".into(), metrics.clone()).unwrap();
    let shipper = Shipper::start(edge.clone(), 3, config.clone(), BusMetrics::default()).unwrap();
    wait_for("merged", || merged_through(&merged, 3) == 300);
    shipper.stop();
    // As if the position were lost (a power cut before it reached the disk): all of it again,
    // in other message sizes, past JetStream's duplicate window's view of the old IDs.
    edge.set_shipped(0).unwrap();
    let config = BusConfig { max_records: 70, ..config };
    let shipper = Shipper::start(edge.clone(), 3, config, BusMetrics::default()).unwrap();
    wait_for("the repeats arrive and are dropped", || metrics.duplicate_events.get() >= 300);
    shipper.stop();
    consumer.stop();
    assert_eq!(merged.reader().last_seq().unwrap(), Some(300));
    assert!(merged.reader().verify_origins().unwrap()[0].is_ok());
}

#[test]
fn one_process_holds_the_lease_and_a_clean_stop_hands_it_over() {
    let nats = NatsCluster::start(1);
    let config = config(&nats, "LEASE");
    let a = Lease::start(config.clone(), "a".into(), BusMetrics::default()).unwrap();
    let b = Lease::start(config, "b".into(), BusMetrics::default()).unwrap();
    wait_for("one holder", || a.is_held() || b.is_held());
    std::thread::sleep(Duration::from_millis(1500));
    assert!(a.is_held() != b.is_held(), "exactly one holds it after a TTL and more");
    let (holder, other) = if a.is_held() { (a, b) } else { (b, a) };
    holder.stop();
    wait_for("the other takes it", || other.is_held());
    other.stop();
}

#[test]
fn the_cluster_program_is_published_fetched_and_handed_to_every_follower() {
    let nats = NatsCluster::start(1);
    let config = config(&nats, "PROG");
    assert_eq!(tally_bus::fetch_program(&config, Duration::from_secs(5)).unwrap(), None);
    let (one, _) = ProgramChannel::start(config.clone(), 1, BusMetrics::default()).unwrap();
    let (two, mut adopt) = ProgramChannel::start(config.clone(), 2, BusMetrics::default()).unwrap();
    one.publish("version = 1");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let got = rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), adopt.recv()).await }).unwrap();
    assert_eq!(got.as_deref(), Some("version = 1"));
    wait_for("the program is the bus's", || {
        tally_bus::fetch_program(&config, Duration::from_secs(5)).unwrap().as_deref() == Some("version = 1")
    });
    one.stop();
    two.stop();
}

#[test]
fn an_unreachable_bus_is_an_error_not_a_hang() {
    let nats = NatsCluster::start(1);
    let mut config = config(&nats, "GONE");
    drop(nats);
    config.urls = vec!["nats://127.0.0.1:1".into()];
    let err = tally_bus::fetch_program(&config, Duration::from_millis(500)).unwrap_err();
    assert!(!err.is_empty());
}

#[test]
fn an_edge_whose_log_is_behind_the_stream_refuses_to_ship() {
    let nats = NatsCluster::start(1);
    let config = config(&nats, "REUSE");
    let (first_dir, second_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first = open(first_dir.path());
    append(&first, 0, 50);
    let shipper = Shipper::start(first.clone(), 4, config.clone(), BusMetrics::default()).unwrap();
    wait_for("shipped", || first.shipped().unwrap() == 50);
    shipper.stop();
    // A fresh data directory under the same node ID: its events 1..=10 would be dropped as
    // repeats of the first log's.
    let second = open(second_dir.path());
    append(&second, 100, 10);
    let metrics = BusMetrics::default();
    let shipper = Shipper::start(second.clone(), 4, config, metrics.clone()).unwrap();
    wait_for("refused", || metrics.publish_errors.get() > 0);
    std::thread::sleep(Duration::from_millis(500));
    shipper.stop();
    assert_eq!(second.shipped().unwrap(), 0, "nothing shipped");
}

#[test]
fn while_the_bus_is_away_the_lag_grows_and_then_drains() {
    let mut nats = NatsCluster::start(1);
    let config = config(&nats, "AWAY");
    let dir = tempfile::tempdir().unwrap();
    let edge = open(dir.path());
    append(&edge, 0, 10);
    let metrics = BusMetrics::default();
    let shipper = Shipper::start(edge.clone(), 5, config, metrics.clone()).unwrap();
    wait_for("shipped", || edge.shipped().unwrap() == 10);
    nats.kill(0);
    append(&edge, 10, 200);
    wait_for("the lag gauges see the backlog", || {
        metrics.ship_lag_events.get() == 200 && metrics.ship_lag_seconds.get() > 0.5
    });
    assert!(metrics.publish_errors.get() > 0);
    nats.restart(0);
    wait_for("the backlog drains", || edge.shipped().unwrap() == 210);
    wait_for("the gauges say so", || metrics.ship_lag_events.get() == 0 && metrics.ship_lag_seconds.get() == 0.0);
    shipper.stop();
}

#[test]
fn a_token_authenticates_and_a_missing_or_wrong_one_is_refused() {
    let token = "bus-token-0123456789abcdef";
    let nats = NatsCluster::start_with(1, &format!("authorization {{ token: \"{token}\" }}\n"));
    let open = config(&nats, "AUTH");
    let with = |value: &str| {
        BusConfig { auth: Auth::Token { secret: "nats-token".into() }, ..open.clone() }.with_credential(value.into())
    };
    assert!(tally_bus::fetch_program(&open, Duration::from_secs(3)).is_err(), "no token: refused");
    assert!(tally_bus::fetch_program(&with("not-the-token"), Duration::from_secs(3)).is_err(), "wrong token: refused");
    assert_eq!(tally_bus::fetch_program(&with(token), Duration::from_secs(5)).unwrap(), None);
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files in `dir`:
/// (ca, server cert, server key, client cert, client key).
fn certificates(dir: &Path) -> [std::path::PathBuf; 5] {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "tally test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |names: Vec<String>, ip: bool| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names).unwrap();
        if ip {
            params.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        }
        (params.signed_by(&key, &issuer).unwrap(), key)
    };
    let (server, server_key) = leaf(vec!["localhost".into()], true);
    let (client, client_key) = leaf(vec!["tally-edge".into()], false);
    let files = [
        ("ca.pem", ca.pem()),
        ("server.pem", server.pem()),
        ("server-key.pem", server_key.serialize_pem()),
        ("client.pem", client.pem()),
        ("client-key.pem", client_key.serialize_pem()),
    ];
    files.map(|(name, pem)| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path
    })
}

#[test]
fn tls_with_a_client_certificate_ships_and_merges_and_plain_connections_are_refused() {
    let certs_dir = tempfile::tempdir().unwrap();
    let [ca, server, server_key, client, client_key] = certificates(certs_dir.path());
    let nats = NatsCluster::start_with(
        1,
        &format!(
            "tls {{ cert_file: \"{}\", key_file: \"{}\", ca_file: \"{}\", verify: true, timeout: 2 }}\n",
            server.display(),
            server_key.display(),
            ca.display()
        ),
    );
    let plain = config(&nats, "TLS");
    let server_only = BusConfig { tls: Tls { ca: Some(ca.clone()), client: None }, ..plain.clone() };
    let tls = BusConfig { tls: Tls { ca: Some(ca), client: Some((client, client_key)) }, ..plain.clone() };
    assert!(tally_bus::fetch_program(&plain, Duration::from_secs(3)).is_err(), "plain: refused");
    assert!(tally_bus::fetch_program(&server_only, Duration::from_secs(3)).is_err(), "no client certificate: refused");
    assert_eq!(tally_bus::fetch_program(&tls, Duration::from_secs(5)).unwrap(), None);

    let (edge_dir, merged_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (edge, merged) = (open(edge_dir.path()), open(merged_dir.path()));
    append(&edge, 0, 100);
    let shipper = Shipper::start(edge.clone(), 9, tls.clone(), BusMetrics::default()).unwrap();
    let consumer = Consumer::start(merged.clone(), tls, "tls".into(), BusMetrics::default()).unwrap();
    wait_for("merged over TLS", || merged_through(&merged, 9) == 100);
    shipper.stop();
    consumer.stop();
}

#[test]
fn the_consumer_resumes_after_the_nats_server_restarts() {
    let mut nats = NatsCluster::start(1);
    let config = config(&nats, "RESTART");
    let (edge_dir, merged_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (edge, merged) = (open(edge_dir.path()), open(merged_dir.path()));
    append(&edge, 0, 100);
    let shipper = Shipper::start(edge.clone(), 2, config.clone(), BusMetrics::default()).unwrap();
    let consumer = Consumer::start(merged.clone(), config, "restart".into(), BusMetrics::default()).unwrap();
    wait_for("merged", || merged_through(&merged, 2) == 100);
    // The ordered consumer lived in the server's memory: a restarted server has none.
    nats.kill(0);
    nats.restart(0);
    let back = std::time::Instant::now();
    append(&edge, 100, 100);
    wait_for("merged after the restart", || merged_through(&merged, 2) == 200);
    eprintln!("merged again {:?} after the restart", back.elapsed());
    shipper.stop();
    consumer.stop();
}

#[test]
fn messages_stay_under_the_limit_with_their_chain_entries() {
    // A server that refuses anything over 8 KiB, and an edge whose every record is a batch
    // of its own (the most chain entry bytes a record can bring).
    let nats = NatsCluster::start_with(1, "max_payload: 8192\n");
    let config = BusConfig { max_message_bytes: 8192, linger: Duration::ZERO, ..config(&nats, "SMALL") };
    let (edge_dir, merged_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (edge, merged) = (open(edge_dir.path()), open(merged_dir.path()));
    for i in 0..120 {
        append(&edge, i, 1);
    }
    let metrics = BusMetrics::default();
    let shipper = Shipper::start(edge.clone(), 6, config.clone(), metrics.clone()).unwrap();
    // The consumer after the stream exists: this test counts the consumer's errors, and one
    // racing the shipper to create the stream on a slow machine is not what it is about.
    wait_for("a first message shipped", || metrics.shipped_messages.get() > 0);
    let merging = BusMetrics::default();
    let consumer = Consumer::start(merged.clone(), config, "small".into(), merging.clone()).unwrap();
    wait_for("merged", || merged_through(&merged, 6) == 120);
    shipper.stop();
    consumer.stop();
    assert_eq!(metrics.publish_errors.get(), 0, "no message was refused as too large");
    assert!(metrics.shipped_messages.get() > 1);
    assert_eq!(merging.consume_errors.get(), 0);
}
