//! Erasure and retention of personal fields against a real RocksDB: the chain still
//! verifies, everything but the personal fields reads back as it was, and the erased bytes
//! leave the database's files.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use tally_log::{Erasure, Log, LogMetrics, LogOptions};
use tally_model::record::{decode_personal, Personal};
use tally_model::{Click, ClickId, Conversion, ConversionSource, ConversionStatus, Currency, Event};

const DAY: u64 = 86_400_000;
const NOW: u64 = 1_800_000_000_000;
const OLD: u64 = NOW - 40 * DAY;

/// A click as format 2 wrote it (personal fields chained): the frozen golden record of
/// `tally_model::record`'s tests, IP `203.0.113.0`, user agent `UA`.
const V2_CLICK: &str = "02010000005510018bcfe5680000070123456789abcdef80d095ffbc310464656d6f0573686f657304616666310161000000016502666200025541000b3230332e302e3131332e30010110018bcfd625c00003fedcba98765432106ba45d5a";

fn from_hex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

fn click(n: u64, ts_ms: u64, ip: &str, user_agent: &str) -> Click {
    Click {
        click_id: ClickId::new(ts_ms, 1, n),
        ts_ms,
        link: "demo".into(),
        offer: "shoes".into(),
        affiliate: "aff1".into(),
        subs: Default::default(),
        source: String::new(),
        deep_link: String::new(),
        user_agent: user_agent.into(),
        referrer: format!("https://referrer-{n}.example/"),
        ip: ip.into(),
        flags: 0,
        prior_click: None,
        visitor: n,
        signals: Default::default(),
    }
}

fn conversion(click: &Click, ip: &str) -> Conversion {
    Conversion {
        ts_ms: click.ts_ms + 60_000,
        source: ConversionSource::Pixel,
        click_id: Some(click.click_id),
        coupon: String::new(),
        offer: "shoes".into(),
        goal: "sale".into(),
        txid: format!("T-{}", click.visitor),
        amount: Some(1_000),
        currency: Currency::from_code("USD").unwrap(),
        status: ConversionStatus::Approved,
        subs: Default::default(),
        ip: ip.into(),
        advertiser: String::new(),
        customer: None,
    }
}

fn append(log: &Log, events: &[Event]) {
    for e in events {
        log.submit(tally_model::encode(e).unwrap()).unwrap().wait().unwrap();
    }
}

/// The bytes of every file under `dir`.
fn dir_bytes(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(dir_bytes(&path));
        } else {
            out.extend(std::fs::read(&path).unwrap_or_default());
        }
    }
    out
}

fn holds(bytes: &[u8], needle: &str) -> bool {
    bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Every event of the log, with what it holds of its personal fields.
fn events(log: &Log) -> Vec<(Event, Personal)> {
    log.reader().read_range(1, usize::MAX).unwrap().iter().map(|(_, r)| decode_personal(r).unwrap()).collect()
}

#[test]
fn erasure_by_click_and_by_ip_keeps_the_chain_and_the_other_fields() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogOptions::default(), LogMetrics::default()).unwrap();
    let a = click(1, NOW, "198.51.100.1", "Erasable-UA/1.0");
    let b = click(2, NOW, "198.51.100.2", "Kept-UA/2.0");
    let c = click(3, NOW, "203.0.113.0", "Other-UA/3.0");
    append(
        &log,
        &[Event::Click(a.clone()), Event::Click(b.clone()), Event::Conversion(conversion(&a, "198.51.100.9"))],
    );
    log.submit(from_hex(V2_CLICK)).unwrap().wait().unwrap();
    append(&log, &[Event::Click(c.clone()), Event::Conversion(conversion(&b, "198.51.100.2"))]);
    let before = log.reader().verify().unwrap();
    assert!(before.is_ok());
    assert_eq!((before.personal.present, before.personal.erased), (5, 0));

    // Click a: the click and the conversion that claims it.
    let report = log.erase(&Erasure { click_ids: vec![a.click_id], ..Default::default() }).unwrap();
    assert_eq!((report.scanned, report.erased, report.already_erased, report.chained), (6, 2, 0, 0));
    // By IP: c's click and the format-2 click share one; only c's can be erased.
    let report = log
        .erase(&Erasure { click_ids: vec![a.click_id], ips: vec!["203.0.113.0".into()], ..Default::default() })
        .unwrap();
    assert_eq!((report.erased, report.already_erased, report.chained), (1, 2, 1));

    let after = log.reader().verify().unwrap();
    assert!(after.is_ok(), "{:?}", after.first_bad);
    assert_eq!((after.head, after.head_seq), (before.head, before.head_seq), "the chain is untouched");
    assert_eq!((after.personal.present, after.personal.erased), (2, 3));
    let got = events(&log);
    let erased = |e: &Event| match e.clone() {
        Event::Click(mut k) => {
            (k.ip, k.user_agent, k.referrer) = Default::default();
            Event::Click(k)
        }
        Event::Conversion(mut v) => {
            v.ip.clear();
            Event::Conversion(v)
        }
        other => other,
    };
    assert_eq!(got[0], (erased(&Event::Click(a.clone())), Personal::Erased));
    assert_eq!(got[1], (Event::Click(b.clone()), Personal::Present));
    assert_eq!(got[2], (erased(&Event::Conversion(conversion(&a, "198.51.100.9"))), Personal::Erased));
    assert_eq!(got[3].1, Personal::Chained);
    assert_eq!(got[4], (erased(&Event::Click(c)), Personal::Erased));
    assert_eq!(got[5], (Event::Conversion(conversion(&b, "198.51.100.2")), Personal::Present));

    // The erased values are gone from the files (table files rewritten, WAL released), the
    // kept ones are not.
    log.close();
    drop(log);
    let bytes = dir_bytes(dir.path());
    for gone in ["Erasable-UA/1.0", "198.51.100.1", "198.51.100.9", "Other-UA/3.0", "https://referrer-1.example/"] {
        assert!(!holds(&bytes, gone), "{gone} is still in the log's files");
    }
    assert!(holds(&bytes, "Kept-UA/2.0"));
}

/// A customer's ID is personal data: erasing by it cuts the trailers of that customer's
/// conversions and leaves the chained pseudonym, which recurring commissions join on.
#[test]
fn erasure_by_customer_keeps_the_pseudonym_and_the_customer_key_is_kept_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogOptions::default(), LogMetrics::default()).unwrap();
    let secret = log.customer_key().unwrap();
    assert_eq!(log.customer_key().unwrap(), secret, "created once");
    let k = click(1, NOW, "198.51.100.1", "UA/1.0");
    let of = |customer: &str, ip: &str| {
        let mut c = conversion(&k, ip);
        c.txid = format!("T-{ip}");
        c.customer = Some(tally_model::Customer::new(&secret, customer));
        Event::Conversion(c)
    };
    let alice = [of("alice@example.com", "198.51.100.7"), of("alice@example.com", "198.51.100.8")];
    let bob = of("bob@example.com", "198.51.100.9");
    append(&log, &[alice[0].clone(), bob.clone(), alice[1].clone()]);
    let before = log.reader().verify().unwrap();

    let report = log.erase(&Erasure { customers: vec!["alice@example.com".into()], ..Default::default() }).unwrap();
    assert_eq!((report.scanned, report.erased), (3, 2));
    let after = log.reader().verify().unwrap();
    assert!(after.is_ok());
    assert_eq!(after.head, before.head, "the chain is untouched");
    let got = events(&log);
    for (i, original) in [(0, &alice[0]), (2, &alice[1])] {
        let (Event::Conversion(erased), Personal::Erased) = &got[i] else { panic!("{:?}", got[i]) };
        let Event::Conversion(original) = original else { unreachable!() };
        let key = erased.customer.as_ref().unwrap();
        assert_eq!((key.key, key.id.as_str(), erased.ip.as_str()), (original.customer.as_ref().unwrap().key, "", ""));
    }
    assert_eq!(got[1], (bob, Personal::Present));

    log.close();
    drop(log);
    let bytes = dir_bytes(dir.path());
    assert!(!holds(&bytes, "alice@example.com"), "the erased customer ID is still in the log's files");
    assert!(holds(&bytes, "bob@example.com"));

    // Retention drops day keys, never the customer key.
    let log = Log::open(dir.path(), LogOptions::default(), LogMetrics::default()).unwrap();
    log.apply_retention(NOW + 400 * DAY).unwrap();
    assert_eq!(log.customer_key().unwrap(), secret);
}

#[test]
fn retention_erases_before_the_cutoff_resumes_and_drops_old_day_keys() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogOptions::default(), LogMetrics::default()).unwrap();
    let old = click(1, OLD, "198.51.100.1", "Old-UA/1.0");
    let new = click(2, NOW, "198.51.100.2", "New-UA/2.0");
    append(&log, &[Event::Click(old.clone()), Event::Conversion(conversion(&old, "198.51.100.3"))]);
    append(&log, &[Event::Click(new.clone()), Event::Conversion(conversion(&new, "198.51.100.4"))]);
    let old_day = (OLD / DAY) as u32;
    let today = (NOW / DAY) as u32;
    let old_key = log.day_key(old_day).unwrap();
    let today_key = log.day_key(today).unwrap();
    assert_eq!(log.day_key(today).unwrap(), today_key, "a day key is created once");
    assert_ne!(old_key, today_key);

    let report = log.apply_retention(NOW - 30 * DAY).unwrap();
    // It reads on past the cutoff for an hour of clock skew, and stops at the first record
    // beyond that.
    assert_eq!((report.records.scanned, report.records.erased), (3, 2));
    assert_eq!(report.day_keys_deleted, 1);
    assert_eq!(report.floor, 3, "the first record inside retention");
    assert!(log.reader().verify().unwrap().is_ok());
    let got = events(&log);
    assert_eq!(
        got.iter().map(|(_, p)| *p).collect::<Vec<_>>(),
        [Personal::Erased, Personal::Erased, Personal::Present, Personal::Present]
    );
    // The next pass starts at the floor; a later cutoff takes the rest.
    let again = log.apply_retention(NOW - 30 * DAY).unwrap();
    assert_eq!((again.records.scanned, again.records.erased, again.day_keys_deleted), (1, 0, 0));
    let all = log.apply_retention(NOW + DAY).unwrap();
    assert_eq!((all.records.erased, all.floor), (2, 5));
    assert!(log.reader().verify().unwrap().is_ok());
    log.close();
    drop(log);

    // Day keys survive a restart; a deleted one comes back as a new key.
    let log = Log::open(dir.path(), LogOptions::default(), LogMetrics::default()).unwrap();
    assert_eq!(log.day_key(today).unwrap(), today_key);
    assert_ne!(log.day_key(old_day).unwrap(), old_key);
    log.close();
}
