//! The log's append path: events per second through the group-commit writer, for both sync
//! policies: `submit` from a plain thread (1,000 in flight, then awaited); the way the edge
//! appends, through an `Appender` from 1,000 tasks on a current-thread runtime; and 50 tasks
//! (the load benchmark's 50 connections) with and without the runtime's park hook, which
//! commits on the runtime thread when it runs out of work (`Log::park_hook`).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::time::Duration;
use tally_benches::sample_click;
use tally_log::{Appender, Log, LogMetrics, LogOptions, SyncPolicy};

const IN_FLIGHT: u64 = 1_000;
/// As many appends in flight as `benches/load.sh` has connections.
const FEW: usize = 50;

/// Appends every record from its own task and awaits them all.
fn append_from_tasks(rt: &tokio::runtime::Runtime, appender: &Appender, records: &[Vec<u8>]) {
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
}

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
        let appender = log.appender();
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
            g.bench_with_input(BenchmarkId::new("appender_1000_tasks", sync.as_str()), &sync, |b, _| {
                b.iter(|| append_from_tasks(&rt, &appender, &records))
            });
            g.throughput(Throughput::Elements(FEW as u64));
            g.bench_with_input(BenchmarkId::new("appender_50_tasks", sync.as_str()), &sync, |b, _| {
                b.iter(|| append_from_tasks(&rt, &appender, &records[..FEW]))
            });
        }
        // Last: the hook makes the log's appenders leave small groups for it from now on. A
        // new appender, because one's task lives on the runtime that first used it.
        if let Ok(rt) =
            tokio::runtime::Builder::new_current_thread().on_thread_park(log.park_hook()).enable_all().build()
        {
            let appender = log.appender();
            g.bench_with_input(BenchmarkId::new("appender_50_tasks_park_hook", sync.as_str()), &sync, |b, _| {
                b.iter(|| append_from_tasks(&rt, &appender, &records[..FEW]))
            });
        }
        g.throughput(Throughput::Elements(IN_FLIGHT));
        let batches = metrics.batches_committed.get().max(1);
        println!(
            "sync={}: {} events in {} batches ({} committed on the runtime thread), mean batch {:.1}",
            sync.as_str(),
            metrics.events_appended.get(),
            batches,
            metrics.inline_batches.get(),
            metrics.events_appended.get() as f64 / batches as f64
        );
        log.close();
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
