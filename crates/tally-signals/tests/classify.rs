//! The classifier against MaxMind-format databases the test kit writes (`tally_testkit::mmdb`):
//! what a click is recorded with, from the files an operator configures.
#![allow(clippy::unwrap_used)]

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use tally_signals::{Classifier, Request, SignalsConfig};
use tally_testkit::mmdb;

const CHROME: &str =
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn databases(dir: &Path) -> SignalsConfig {
    SignalsConfig {
        geoip_database: Some(write(dir, "City.mmdb", &mmdb::city_fixture())),
        asn_database: Some(write(dir, "ASN.mmdb", &mmdb::asn_fixture())),
        ..SignalsConfig::default()
    }
}

fn from(ip: &str) -> Request<'static> {
    Request {
        ip: ip.parse::<IpAddr>().unwrap(),
        user_agent: CHROME,
        accept_language: "",
        ch_mobile: "",
        ch_platform: "",
    }
}

#[test]
fn country_region_and_asn_come_from_the_databases() {
    let dir = tempfile::tempdir().unwrap();
    let c = Classifier::load(&databases(dir.path())).unwrap();
    assert!(c.has_geo() && c.has_asn());
    for (ip, country, region, asn) in [
        ("81.2.69.1", "GB", "ENG", 20712),
        ("81.2.69.200", "GB", "SCT", 20712),
        ("2.125.160.216", "GB", "WLS", 0),
        ("216.160.83.60", "US", "WA", 0),
        ("175.16.199.10", "CN", "", 0),
        ("2001:db8:1::7", "DE", "BE", 0),
        // IPv4-mapped, as a dual-stack listener reports an IPv4 client.
        ("::ffff:81.2.69.1", "GB", "ENG", 20712),
        ("52.94.1.1", "", "", 16509),
        ("192.0.2.1", "", "", 0),
        ("2001:db8:2::1", "", "", 0),
    ] {
        let o = c.observe(&from(ip));
        assert_eq!((o.country, o.region, o.asn), (country, region, asn), "{ip}");
    }
}

#[test]
fn a_hosting_asn_or_a_listed_range_is_a_datacenter() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = databases(dir.path());
    config.datacenters_file = Some(write(dir.path(), "dc.txt", b"198.51.100.0/24 our-scanner\n".as_slice()));
    let c = Classifier::load(&config).unwrap();
    assert!(c.observe(&from("52.94.1.1")).datacenter, "AS16509 is on the built-in list");
    assert!(c.observe(&from("198.51.100.9")).datacenter, "the operator's range");
    assert!(!c.observe(&from("73.1.2.3")).datacenter, "a residential ISP");
    assert!(!c.observe(&from("81.2.69.1")).datacenter);
    // Without an ASN database the ASN entries cannot match; ranges still do.
    config.asn_database = None;
    let c = Classifier::load(&config).unwrap();
    assert!(!c.observe(&from("52.94.1.1")).datacenter);
    assert!(c.observe(&from("198.51.100.9")).datacenter);
}

#[test]
fn a_database_of_the_wrong_kind_or_not_a_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let city = write(dir.path(), "City.mmdb", &mmdb::city_fixture());
    let asn = write(dir.path(), "ASN.mmdb", &mmdb::asn_fixture());
    let junk = write(dir.path(), "junk.mmdb", b"not a database".as_slice());
    let swapped = SignalsConfig { geoip_database: Some(asn), asn_database: Some(city), ..SignalsConfig::default() };
    let e = Classifier::load(&swapped).unwrap_err().to_string();
    assert!(
        e.contains("signals.geoip_database:") && e.contains("GeoLite2-ASN database, not a Country or City one"),
        "{e}"
    );
    assert!(e.contains("signals.asn_database:") && e.contains("not an ASN or ISP one"), "{e}");
    let junk = SignalsConfig { geoip_database: Some(junk), ..SignalsConfig::default() };
    let e = Classifier::load(&junk).unwrap_err().to_string();
    assert!(e.contains("junk.mmdb is not a MaxMind DB file"), "{e}");
}

#[test]
fn a_large_database_answers_every_network() {
    // The benchmark's database shape: realistic records, shared, many networks.
    let dir = tempfile::tempdir().unwrap();
    let config = SignalsConfig {
        geoip_database: Some(write(dir.path(), "City.mmdb", &mmdb::city_like(5_000, 7))),
        ..SignalsConfig::default()
    };
    let c = Classifier::load(&config).unwrap();
    let mut known = 0;
    for a in (0u32..=u32::MAX).step_by(1 << 20) {
        let o = c.observe(&from(&std::net::Ipv4Addr::from(a).to_string()));
        if !o.country.is_empty() {
            known += 1;
            assert_eq!(o.country.len(), 2);
        }
    }
    assert!(known > 0);
}
