//! The log's append path: events per second through the group-commit writer, for both sync
//! policies: `submit` from a plain thread (1,000 in flight, then awaited), and the way the
//! edge appends, through an `Appender` from 1,000 tasks on a current-thread runtime.

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
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
            let appender = log.appender();
            g.bench_with_input(BenchmarkId::new("appender_1000_tasks", sync.as_str()), &sync, |b, _| {
                b.iter(|| {
                    rt.block_on(async {
                        let tasks: Vec<_> = records
                            .iter()
                            .map(|r| {
                                let (a, r) = (appender.clone(), r.clone());
                                tokio::spawn(async move { a.submit(r).ok()?.await.ok() })
                            })
                            .collect();
                        for t in tasks {
                            let _ = t.await;
                        }
                    })
                })
            });
        }
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
