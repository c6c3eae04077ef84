//! Program management at scale: imports `AFFILIATES` (default 100,000) ambassadors, each with
//! a link and a coupon, in three groups, through the admin API of a server in this process,
//! and measures:
//!
//! - the import: time, and the bytes it added to the log (the one `ProgramEdit` record, and
//!   the log directory's growth once flushed);
//! - one entity edited through the API with that many in force (`PATCH`, median of 21);
//! - a restart: the time until the server answers again, its program rebuilt from the log;
//! - a click on an imported link (it must redirect).
//!
//! `benches/program.sh` builds and runs it (release). Figures are printed, never asserted.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use tally_testkit::Env;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ADMIN: &str = "bench-admin-token-0123456789";

fn dir_bytes(dir: &Path) -> u64 {
    tally_testkit::files_under(dir).iter().filter_map(|f| std::fs::metadata(f).ok()).map(|m| m.len()).sum()
}

fn ambassadors(n: usize) -> String {
    let mut csv = String::with_capacity(n * 64);
    csv.push_str("id,name,group,offer,link,coupon\n");
    for i in 1..=n {
        let _ = writeln!(csv, "amb{i:06},Ambassador {i},g{},shoes,l-amb{i:06},AMB{i:06}", 1 + i % 3);
    }
    csv
}

fn main() {
    let n: usize = std::env::var("AFFILIATES").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let env = Env::new("");
    env.append_config(&format!("[admin]\ntoken = \"{ADMIN}\"\n"));
    let mut server = env.serve();
    let groups = "{\"type\":\"group\",\"id\":\"g1\",\"terms\":[{\"offer\":\"shoes\",\"payout\":{\"kind\":\"revshare\",\"bps\":1000}}]}\n\
                  {\"type\":\"group\",\"id\":\"g2\",\"terms\":[{\"offer\":\"shoes\",\"hold_days\":7}]}\n\
                  {\"type\":\"group\",\"id\":\"g3\",\"terms\":[{\"offer\":\"shoes\",\"goal\":\"signup\",\"daily_cap\":5}]}\n";
    let r =
        server.admin_with("POST", "/admin/import", Some(ADMIN), &[("Content-Type", "application/x-ndjson")], groups);
    assert_eq!(r.status, 200, "{}", r.text());

    let csv = ambassadors(n);
    let before = dir_bytes(&env.data());
    let started = Instant::now();
    let r =
        server.admin_with("POST", "/admin/import?type=affiliates", Some(ADMIN), &[("Content-Type", "text/csv")], &csv);
    let import = started.elapsed();
    assert_eq!(r.status, 200, "{}", r.text());
    let reader = tally_log::LogReader::open_secondary(&env.data()).expect("the log opens for reading");
    let edits = reader.program_edits().expect("the log lists its program edits");
    let record = edits.last().map(|(_, r)| r.len()).unwrap_or(0);

    let mut patches = Vec::new();
    for i in 0..21 {
        let started = Instant::now();
        let r =
            server.admin("PATCH", &format!("/admin/affiliates/amb{:06}", 1 + i), Some(ADMIN), r#"{"name":"Renamed"}"#);
        patches.push(started.elapsed());
        assert_eq!(r.status, 200, "{}", r.text());
    }
    patches.sort();
    let r = server.get(&format!("/c/l-amb{n:06}"));
    assert_eq!(r.status, 302, "an imported link redirects");

    assert!(server.stop());
    // The directory once the server closed the log (memtables flushed to tables).
    let after = dir_bytes(&env.data());
    let started = Instant::now();
    let server = env.serve();
    let restart = started.elapsed();
    assert_eq!(server.get(&format!("/c/l-amb{n:06}")).status, 302, "still there after the restart");

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("program management, {n} ambassadors (each with a link and a coupon) in 3 groups:");
    println!(
        "  import (CSV, {} bytes)      {:>9.0} ms  ({:.0} rows/s)",
        csv.len(),
        ms(import),
        n as f64 / import.as_secs_f64()
    );
    println!("  program edit record        {:>9} bytes ({:.0} bytes per ambassador)", record, record as f64 / n as f64);
    println!(
        "  data directory growth      {:>9} bytes (import, 21 edits, clicks; after the log closed)",
        after.saturating_sub(before)
    );
    println!(
        "  one PATCH with {n} in force: median {:.1} ms, max {:.1} ms",
        ms(patches[patches.len() / 2]),
        ms(patches[patches.len() - 1])
    );
    println!("  restart until serving      {:>9.0} ms (program rebuilt from the log's edits)", ms(restart));
}
