//! The log's append path: events per second through the group-commit writer, the way the
//! edge uses it (many submits in flight, each awaited), for both sync policies.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::time::Duration;
use tally_benches::sample_click;
use tally_log::{Log, LogMetrics, LogOptions, SyncPolicy};

const IN_FLIGHT: u64 = 1_000;

fn bench(c: &mut Criterion) {
    let records: Vec<Vec<u8>> =
        (0..IN_FLIGHT).map(|i| tally_model::encode(&sample_click(i)).unwrap_or_default()).collect();
    let mut g = c.benchmark_group("log_append");
    g.throughput(Throughput::Elements(IN_FLIGHT));
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(5));
    for sync in [SyncPolicy::None, SyncPolicy::Batch] {
        let Ok(dir) = tempfile::tempdir() else { return };
        let metrics = LogMetrics::default();
        let Ok(log) = Log::open(dir.path(), LogOptions { sync, ..LogOptions::default() }, metrics.clone()) else {
            return;
        };
        g.bench_with_input(BenchmarkId::new("submit_1000_then_await", sync.as_str()), &sync, |b, _| {
            b.iter(|| {
                let pending: Vec<_> = records.iter().filter_map(|r| log.submit(r.clone()).ok()).collect();
                for p in pending {
                    let _ = p.wait();
                }
            })
        });
        let batches = metrics.batches_committed.get().max(1);
        println!(
            "sync={}: {} events in {} batches, mean batch {:.1}",
            sync.as_str(),
            metrics.events_appended.get(),
            batches,
            metrics.events_appended.get() as f64 / batches as f64
        );
        log.close();
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
