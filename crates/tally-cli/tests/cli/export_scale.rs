//! Acceptance for the audit exports: a 1,000,000-event log (written straight through the
//! `tally_log::Log` API into a real RocksDB) exports in constant memory, and the CSV read
//! back has exactly the rows that were written.
#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;
use std::io::BufReader;
use std::process::{Command, Stdio};
use std::time::Instant;

use tally_log::{Log, LogMetrics, LogOptions, Pending};
use tally_model::{Click, ClickId, Conversion, ConversionSource, ConversionStatus, Currency, Event};

const EVENTS: u64 = 1_000_000;
/// Every 20th event is a conversion, the rest are clicks.
const CONVERSION_EVERY: u64 = 20;
/// 2026-11-01T00:00:00Z.
const T0: u64 = 1_793_491_200_000;
/// Peak RSS allowed for an export child: twice the ~128 MiB measured (debug build), room to
/// spare. The log is flushed to table files before the exports (see `write_log`), so no WAL
/// replay counts here. Growth with the number of rows is checked separately, below.
const PEAK_RSS_LIMIT_KB: u64 = 256 * 1024;
/// How much more a 950,000-row export may take than a 19,000-row one of the same log.
/// Measured about 21 MiB, the RocksDB block cache (32 MiB at most) filling as the scan
/// goes; a leak of 60 bytes per row would exceed it.
const GROWTH_LIMIT_KB: u64 = 48 * 1024;

fn event(i: u64) -> Event {
    let ts_ms = T0 + i * 7;
    if i % CONVERSION_EVERY == CONVERSION_EVERY - 1 {
        return Event::Conversion(Conversion {
            ts_ms,
            source: if i.is_multiple_of(3) { ConversionSource::Pixel } else { ConversionSource::Postback },
            click_id: (i.is_multiple_of(2)).then(|| ClickId::new(ts_ms - 1000, 1, i - 1)),
            coupon: if i.is_multiple_of(5) { "SPRING".into() } else { String::new() },
            offer: "shoes".into(),
            goal: "sale".into(),
            txid: format!("T{i:08}"),
            amount: (!i.is_multiple_of(4)).then_some((i * 37 % 1_000_000) as i64),
            currency: Currency::from_code("USD").unwrap(),
            status: if i % 50 == 39 { ConversionStatus::Refunded } else { ConversionStatus::Approved },
            subs: [format!("c{}", i % 11), String::new(), "x,y".into(), String::new(), String::new()],
            ip: format!("10.0.{}.0", i % 256),
            advertiser: String::new(),
            customer: None,
        });
    }
    Event::Click(Click {
        click_id: ClickId::new(ts_ms, 1, i),
        ts_ms,
        link: format!("l{}", i % 100),
        offer: "shoes".into(),
        affiliate: format!("aff{}", i % 1000),
        // Commas, quotes and newlines: the CSV must quote them and read them back intact.
        subs: [format!("s,{i}"), format!("say \"{}\"", i % 9), "line\nbreak".into(), String::new(), "5".into()],
        source: if i.is_multiple_of(4) { "newsletter".into() } else { String::new() },
        deep_link: String::new(),
        user_agent: "Mozilla/5.0 (X11; Linux x86_64)".into(),
        referrer: "https://blog.example/".into(),
        ip: format!("192.0.2.{}", i % 256),
        flags: (i % 3) as u16,
        prior_click: (i.is_multiple_of(7)).then(|| ClickId::new(ts_ms - 5000, 1, i)),
        visitor: i % 97,
        // Every third click from an unknown network (its ASN cell left empty).
        signals: tally_model::Signals {
            country: if i.is_multiple_of(2) { "GB".into() } else { String::new() },
            region: if i.is_multiple_of(2) { "ENG".into() } else { String::new() },
            asn: (i % 3) as u32 * 16509,
            device: "desktop".into(),
            os: "Linux".into(),
            browser: String::new(),
            language: "en".into(),
            route: String::new(),
        },
    })
}

/// The CSV cells `tally export clicks|conversions` must print for event `i` (sequence i+1).
fn expected_row(i: u64) -> Vec<String> {
    let seq = (i + 1).to_string();
    match event(i) {
        Event::Click(c) => {
            let mut r = vec![seq, c.ts_ms.to_string(), c.click_id.to_string(), c.link, c.offer, c.affiliate];
            r.extend(c.subs);
            r.extend([c.source, c.deep_link, c.user_agent, c.referrer, c.ip, c.flags.to_string()]);
            r.push(c.prior_click.map(|p| p.to_string()).unwrap_or_default());
            r.push(tally_model::time::format_ts(c.ts_ms));
            r.push(format!("{:016x}", c.visitor));
            r.push("present".into());
            let g = c.signals;
            let asn = if g.asn == 0 { String::new() } else { g.asn.to_string() };
            r.extend([g.country, g.region, asn, g.device, g.os, g.browser, g.language, g.route]);
            r
        }
        Event::Conversion(c) => {
            let click_id = c.click_id.map(|p| p.to_string()).unwrap_or_default();
            let personal = if c.ip.is_empty() { "none" } else { "present" };
            let mut r = vec![seq, c.ts_ms.to_string(), click_id, c.offer];
            r.extend(c.subs);
            let amount = c.amount.map(|a| format!("{}.{:02}", a / 100, a % 100)).unwrap_or_default();
            r.extend([c.ip, c.source.as_str().into(), c.coupon, c.goal, c.txid, amount]);
            r.extend(["USD".into(), c.status.as_str().into(), tally_model::time::format_ts(c.ts_ms)]);
            r.push(personal.into());
            r.push(c.advertiser);
            r.extend([String::new(), String::new()]); // customer, customer_id
            r
        }
        Event::ProgramChange(_) | Event::ProgramEdit(_) | Event::Decision(_) => unreachable!(),
    }
}

fn write_log(dir: &std::path::Path, events: u64) {
    let log = Log::open(dir, LogOptions::default(), LogMetrics::default()).unwrap();
    // Keep a window of appends in flight (below the queue's capacity) so the writer batches.
    let mut in_flight: VecDeque<Pending> = VecDeque::new();
    for i in 0..events {
        if in_flight.len() == 16_384 {
            in_flight.pop_front().unwrap().wait().unwrap();
        }
        in_flight.push_back(log.submit(tally_model::encode(&event(i)).unwrap()).unwrap());
    }
    for p in in_flight {
        p.wait().unwrap();
    }
    log.close();
    drop(log);
    // How much of the log a secondary instance replays from the WAL into its memtables
    // depends on how many flushes RocksDB got to while the log was written, which depends on
    // what else the machine was doing: flushing first keeps the limits below about the export.
    tally_log::testing::flush_memtables(dir).unwrap();
}

/// The peak RSS in kB of live process `pid` (its `VmHWM`), or 0 once it is gone. Read from
/// `/proc` while the export runs, not from `wait4`'s rusage after: Linux carries the peak of
/// the process that forked the child (this test binary, running other tests at the same time)
/// into the child's `ru_maxrss` at exec, which made the figure 447 MiB under load for an
/// export that peaks at 112 MiB.
fn peak_rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Runs `tally export KIND --format csv`, checking each row against [`expected_row`] as it
/// streams in; returns (rows, peak RSS of the export in kB).
fn export_and_check(dir: &std::path::Path, kind: &str, extra: &[&str], want: impl Iterator<Item = u64>) -> (u64, u64) {
    let started = Instant::now();
    let mut child = Command::new(crate::common::BIN)
        .args(["export", kind, "--format", "csv", "--data-dir", dir.to_str().unwrap()])
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut csv = csv::Reader::from_reader(BufReader::with_capacity(1 << 16, child.stdout.take().unwrap()));
    let mut want = want;
    let mut rows = 0u64;
    let mut record = csv::StringRecord::new();
    let mut peak_kb = 0;
    while csv.read_record(&mut record).unwrap() {
        if rows.is_multiple_of(4096) {
            peak_kb = peak_kb.max(peak_rss_kb(child.id()));
        }
        let i = want.next().unwrap_or_else(|| panic!("{kind}: extra row {record:?}"));
        let expected = expected_row(i);
        assert!(record.iter().eq(expected.iter().map(String::as_str)), "{kind} row {rows}: {record:?} != {expected:?}");
        rows += 1;
    }
    assert!(want.next().is_none(), "{kind}: only {rows} rows");
    // At the end of its output the export is about to exit: its peak is in place.
    peak_kb = peak_kb.max(peak_rss_kb(child.id()));
    assert!(child.wait().unwrap().success(), "tally export {kind} failed");
    println!(
        "export {kind} {extra:?}: {rows} rows in {:.1?}, peak RSS {:.1} MiB",
        started.elapsed(),
        peak_kb as f64 / 1024.0
    );
    (rows, peak_kb)
}

#[test]
fn export_of_a_million_events_streams_in_constant_memory_and_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let started = Instant::now();
    write_log(&dir, EVENTS);
    println!("wrote {EVENTS} events in {:.1?}", started.elapsed());

    let is_conversion = |i: &u64| i % CONVERSION_EVERY == CONVERSION_EVERY - 1;
    let (clicks, click_peak) = export_and_check(&dir, "clicks", &[], (0..EVENTS).filter(|i| !is_conversion(i)));
    let (conversions, conversion_peak) = export_and_check(&dir, "conversions", &[], (0..EVENTS).filter(is_conversion));
    assert_eq!(clicks + conversions, EVENTS);
    // The first 2% of the log (sequences 1..=20,000; `--to` is exclusive).
    let (_, small_peak) =
        export_and_check(&dir, "clicks", &["--to", "20001"], (0..20_000).filter(|i| !is_conversion(i)));
    for (kind, peak) in [("clicks", click_peak), ("conversions", conversion_peak)] {
        assert!(peak < PEAK_RSS_LIMIT_KB, "export {kind}: peak RSS {peak} kB over {PEAK_RSS_LIMIT_KB} kB");
    }
    assert!(
        click_peak < small_peak + GROWTH_LIMIT_KB,
        "memory grows with rows: {click_peak} kB for all clicks, {small_peak} kB for the first 2%"
    );
}

/// `tally export … | head`: when the reader closes the pipe the export stops, exits 0 and
/// prints nothing on stderr, in every text format.
#[test]
fn export_into_a_pipe_closed_by_its_reader_stops_quietly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    // Megabytes of output: far more than the export's buffer and the pipe's.
    write_log(&dir, 20_000);
    for (kind, format) in [("events", "jsonl"), ("clicks", "csv"), ("conversions", "jsonl")] {
        let mut child = Command::new(crate::common::BIN)
            .args(["export", kind, "--format", format, "--data-dir", dir.to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = String::new();
        std::io::BufRead::read_line(&mut BufReader::new(child.stdout.take().unwrap()), &mut first).unwrap();
        assert!(!first.is_empty(), "{kind}: no output");
        // The reader is dropped here: the pipe is closed with the export still writing.
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{kind} {format}: {:?}, stderr {stderr}", out.status);
        assert!(stderr.is_empty(), "{kind} {format}: stderr {stderr}");
    }
}
