//! What every Tally process exports besides its own counters: `tally_build_info`, the
//! standard `process_*` metrics, and the free space of its data directory. Both `tally serve`
//! and `tally attribute` register these, so either can be told apart and watched alike.
//!
//! The process metrics are read from `/proc/self` at scrape time by a small collector here,
//! rather than through a crate: prometheus-client has no process collector, and the ones
//! that exist pull in a `/proc` parsing library for six numbers.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

/// The git commit this binary was built from (12 hex digits), or "unknown" (see build.rs).
pub const REVISION: &str = env!("TALLY_REVISION");

/// Registers `tally_build_info`, the `process_*` metrics and the data directory's space.
pub fn register(registry: &mut Registry, data_dir: &Path) {
    registry.sub_registry_with_prefix("tally").register(
        "build",
        "Build information: the version and the git commit built from",
        Info::new(vec![("version", env!("CARGO_PKG_VERSION")), ("revision", REVISION)]),
    );
    registry.register_collector(Box::new(ProcessCollector { start_time: start_time() }));
    registry.register_collector(Box::new(DataDirCollector { dir: data_dir.to_owned() }));
}

/// The `process_*` metrics of the Prometheus client libraries, under their names.
#[derive(Debug)]
struct ProcessCollector {
    /// Fixed for the life of the process, so read once: recomputing it from the clock at
    /// every scrape would make it jitter, and `changes(process_start_time_seconds)` count
    /// restarts that never happened.
    start_time: f64,
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // A file that cannot be read leaves its metrics out of this scrape rather than
        // failing the whole scrape: the tracker's own metrics matter more.
        if let Some(stat) = Stat::read() {
            let ticks = rustix::param::clock_ticks_per_second().max(1) as f64;
            let cpu = ConstCounter::new((stat.utime + stat.stime) as f64 / ticks);
            cpu.encode(encoder.encode_descriptor(
                "process_cpu",
                "Total user and system CPU time spent",
                Some(&Unit::Seconds),
                cpu.metric_type(),
            )?)?;
            let page = rustix::param::page_size() as u64;
            gauge(
                &mut encoder,
                "process_resident_memory",
                "Resident memory size",
                Some(&Unit::Bytes),
                stat.rss * page,
            )?;
            gauge(&mut encoder, "process_virtual_memory", "Virtual memory size", Some(&Unit::Bytes), stat.vsize)?;
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            gauge(&mut encoder, "process_open_fds", "Open file descriptors", None, fds.count() as u64)?;
        }
        // Unlimited (`None`) cannot happen for open files on Linux (fs.nr_open caps it).
        if let Some(max) = rustix::process::getrlimit(rustix::process::Resource::Nofile).current {
            gauge(&mut encoder, "process_max_fds", "Limit on open file descriptors (soft)", None, max)?;
        }
        let start = ConstGauge::new(self.start_time);
        start.encode(encoder.encode_descriptor(
            "process_start_time",
            "Start time of the process since the Unix epoch",
            Some(&Unit::Seconds),
            start.metric_type(),
        )?)
    }
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: u64,
) -> Result<(), std::fmt::Error> {
    // i64 because prometheus-client writes it exactly; no count here nears 2^63.
    let g = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
    g.encode(encoder.encode_descriptor(name, help, unit, g.metric_type())?)
}

/// The fields of `/proc/self/stat` the collector uses.
#[derive(Debug, PartialEq)]
struct Stat {
    /// Clock ticks.
    utime: u64,
    stime: u64,
    /// Clock ticks after boot.
    starttime: u64,
    /// Bytes.
    vsize: u64,
    /// Pages.
    rss: u64,
}

impl Stat {
    fn read() -> Option<Stat> {
        Stat::parse(&std::fs::read_to_string("/proc/self/stat").ok()?)
    }

    /// proc(5): `pid (comm) state ppid ...`; `comm` may hold spaces and parentheses, so the
    /// fields are counted from the last `)`. Field 3 (state) is index 0 after it.
    fn parse(text: &str) -> Option<Stat> {
        let (_, rest) = text.rsplit_once(')')?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
        Some(Stat { utime: field(14)?, stime: field(15)?, starttime: field(22)?, vsize: field(23)?, rss: field(24)? })
    }
}

/// Seconds since the epoch when this process started: boot time (`btime` in /proc/stat) plus
/// the process's start in ticks after boot, as the Go and Python clients compute it. Where
/// /proc/stat is hidden (systemd's `ProcSubset=pid`), the time of this call, which comes
/// while the process starts up.
fn start_time() -> f64 {
    let exact = || {
        let boot = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse::<u64>()
            .ok()?;
        let ticks = rustix::param::clock_ticks_per_second().max(1) as f64;
        Some(boot as f64 + Stat::read()?.starttime as f64 / ticks)
    };
    exact().unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()))
}

/// Space on the file system of the data directory: the log and the attribution state grow
/// there, and RocksDB stops writing when it is full.
#[derive(Debug)]
struct DataDirCollector {
    dir: PathBuf,
}

impl Collector for DataDirCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Ok(fs) = rustix::fs::statvfs(&self.dir) else { return Ok(()) };
        // f_bavail, not f_bfree: the blocks reserved for root are not Tally's to use.
        let free = fs.f_bavail.saturating_mul(fs.f_frsize);
        let size = fs.f_blocks.saturating_mul(fs.f_frsize);
        gauge(
            &mut encoder,
            "tally_data_dir_free",
            "Space available to Tally on the data directory's file system",
            Some(&Unit::Bytes),
            free,
        )?;
        gauge(&mut encoder, "tally_data_dir_size", "Size of the data directory's file system", Some(&Unit::Bytes), size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let line = "4242 (tally (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 1234 \
                    987654321 5678 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n";
        assert_eq!(
            Stat::parse(line),
            Some(Stat { utime: 250, stime: 50, starttime: 1234, vsize: 987_654_321, rss: 5678 })
        );
        assert_eq!(Stat::parse("4242 (tally) S 1"), None);
        assert_eq!(Stat::parse(""), None);
    }

    #[test]
    fn this_process_has_a_stat_and_a_start_time() {
        let stat = Stat::read().expect("/proc/self/stat");
        assert!(stat.rss > 0 && stat.vsize > 0);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
        let start = start_time();
        assert!(start <= now + 1.0 && start > now - 24.0 * 3600.0, "start {start}, now {now}");
    }
}
