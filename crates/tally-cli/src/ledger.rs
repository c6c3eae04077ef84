//! `tally attribute`, `tally commissions` and `tally report`: running the attribution worker
//! as its own process, and reading its ledger and stats (safe while a worker runs: the state
//! is opened as a RocksDB secondary).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use serde_json::{Map, Value};
use tally_attribution::report::{report as build_report, GroupBy};
use tally_attribution::{ledger, AttributionMetrics, Entry, State, Status, Worker, WorkerOptions};
use tally_log::LogReader;
use tally_model::format_minor;

/// Output formats of the ledger commands.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum TableFormat {
    Table,
    Csv,
    Jsonl,
}

pub const COMMISSION_COLUMNS: &[&str] = &[
    "id",
    "date",
    "ts_ms",
    "kind",
    "status",
    "reason",
    "affiliate",
    "offer",
    "goal",
    "click_id",
    "coupon",
    "sub1",
    "txid",
    "sale_amount",
    "amount",
    "currency",
    "rule",
    "approve_at_ms",
    "approved_seq",
    "refers_to",
    "reversed_by",
    "program",
];

/// Columns shown by `--format table`; the others are in csv and jsonl.
const COMMISSION_TABLE: &[&str] =
    &["id", "date", "kind", "status", "reason", "affiliate", "offer", "goal", "amount", "currency", "rule"];

pub fn commission_row(e: &Entry) -> Vec<(&'static str, Value)> {
    let opt = |v: Option<String>| Value::from(v.unwrap_or_default());
    vec![
        ("id", e.id.to_string().into()),
        ("date", ledger::format_day(ledger::day_of(e.ts_ms)).into()),
        ("ts_ms", e.ts_ms.into()),
        ("kind", e.kind.as_str().into()),
        ("status", e.status.as_str().into()),
        ("reason", e.reason.as_str().into()),
        ("affiliate", e.affiliate.as_str().into()),
        ("offer", e.offer.as_str().into()),
        ("goal", e.goal.as_str().into()),
        ("click_id", opt(e.click_id.map(|c| c.to_string()))),
        ("coupon", e.coupon.as_str().into()),
        ("sub1", e.sub1.as_str().into()),
        ("txid", e.txid.as_str().into()),
        // Exact decimal strings: money never passes through a float.
        ("sale_amount", opt(e.sale_amount.map(|a| format_minor(a, e.currency)))),
        ("amount", format_minor(e.amount, e.currency).into()),
        ("currency", e.currency.code().into()),
        ("rule", e.rule.as_str().into()),
        ("approve_at_ms", opt(e.approve_at_ms.map(|v| v.to_string()))),
        ("approved_seq", opt(e.approved_seq.map(|v| v.to_string()))),
        ("refers_to", opt(e.refers_to.map(|v| v.to_string()))),
        ("reversed_by", opt(e.reversed_by.map(|v| v.to_string()))),
        ("program", e.program.as_str().into()),
    ]
}

/// Writes rows as an aligned table, CSV or JSON lines.
fn write_rows(
    format: TableFormat,
    columns: &[&str],
    table_columns: &[&str],
    rows: impl Iterator<Item = anyhow::Result<Vec<(&'static str, Value)>>>,
) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
    let cell = |r: &[(&str, Value)], c: &str| {
        r.iter()
            .find(|(k, _)| *k == c)
            .map(|(_, v)| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .unwrap_or_default()
    };
    match format {
        TableFormat::Jsonl => {
            for r in rows {
                let obj: Map<String, Value> = r?.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
                serde_json::to_writer(&mut out, &obj)?;
                out.write_all(b"\n")?;
            }
        }
        TableFormat::Csv => {
            let mut w = csv::Writer::from_writer(&mut out);
            w.write_record(columns)?;
            for r in rows {
                let r = r?;
                w.write_record(columns.iter().map(|c| cell(&r, c)))?;
            }
            w.flush()?;
        }
        TableFormat::Table => {
            // A table needs its widths before its first line, so it holds its rows; use csv
            // or jsonl for large ledgers.
            let mut cells: Vec<Vec<String>> = vec![table_columns.iter().map(|c| (*c).to_owned()).collect()];
            for r in rows {
                let r = r?;
                cells.push(table_columns.iter().map(|c| cell(&r, c)).collect());
            }
            let widths: Vec<usize> = (0..table_columns.len())
                .map(|i| cells.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
                .collect();
            for r in &cells {
                let line: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
                writeln!(out, "{}", line.join("  ").trim_end())?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

fn open_state(data_dir: &Path) -> anyhow::Result<State> {
    Ok(State::open_reader(&tally_attribution::state_dir(data_dir))?)
}

pub struct CommissionsArgs {
    pub data_dir: PathBuf,
    pub affiliate: Option<String>,
    pub status: Option<String>,
    pub format: TableFormat,
    pub digest: bool,
}

pub fn commissions(args: CommissionsArgs) -> anyhow::Result<ExitCode> {
    let status = match args.status.as_deref() {
        None => None,
        Some(s) => Some(Status::parse(s).with_context(|| {
            let all: Vec<&str> = Status::ALL.iter().map(|s| s.as_str()).collect();
            format!("--status: unknown status \"{s}\" (expected one of {})", all.join(", "))
        })?),
    };
    let state = open_state(&args.data_dir)?;
    if args.digest {
        // The digest covers the whole ledger; filters would make two parties' lines differ.
        if args.affiliate.is_some() || status.is_some() {
            anyhow::bail!("--digest covers the whole ledger; drop --affiliate and --status");
        }
        println!("{} entries up to sequence {}", state.entries().count(), state.checkpoint().position);
        println!("ledger {}", state.ledger_digest()?);
        return Ok(ExitCode::SUCCESS);
    }
    let rows = state
        .entries()
        .filter(|e| match e {
            Ok(e) => args.affiliate.as_deref().is_none_or(|a| e.affiliate == a) && status.is_none_or(|s| e.status == s),
            Err(_) => true,
        })
        .map(|e| Ok(commission_row(&e?)));
    write_rows(args.format, COMMISSION_COLUMNS, COMMISSION_TABLE, rows)?;
    Ok(ExitCode::SUCCESS)
}

pub const REPORT_COLUMNS: &[&str] = &[
    "key",
    "currency",
    "clicks",
    "unique_clicks",
    "non_human_clicks",
    "conversions",
    "conversion_rate",
    "revenue",
    "payout",
    "epc",
];

pub fn report(
    data_dir: &Path,
    by: &str,
    from: Option<&str>,
    to: Option<&str>,
    format: TableFormat,
) -> anyhow::Result<ExitCode> {
    let group = GroupBy::parse(by)
        .with_context(|| format!("--by: unknown grouping \"{by}\" (expected affiliate, offer, day or sub1)"))?;
    let day = |flag: &str, v: Option<&str>, default: u32| -> anyhow::Result<u32> {
        match v {
            None => Ok(default),
            Some(s) => ledger::parse_day(s).with_context(|| format!("{flag}: \"{s}\" is not a date like 2026-11-23")),
        }
    };
    let (from, to) = (day("--from", from, 0)?, day("--to", to, u32::MAX)?);
    if from > to {
        anyhow::bail!("--from is after --to");
    }
    let state = open_state(data_dir)?;
    let rows = build_report(&state, group, from, to)?;
    let by_name: &'static str = match group {
        GroupBy::Affiliate => "affiliate",
        GroupBy::Offer => "offer",
        GroupBy::Day => "day",
        GroupBy::Sub1 => "sub1",
    };
    let lines = rows.into_iter().map(move |r| {
        let money = |v: i64| match r.currency {
            Some(c) => format_minor(v, c),
            None => v.to_string(),
        };
        Ok(vec![
            ("key", r.key.clone().into()),
            ("currency", r.currency.map(|c| c.code().to_owned()).unwrap_or_default().into()),
            ("clicks", r.clicks.into()),
            ("unique_clicks", r.unique_clicks.into()),
            ("non_human_clicks", r.non_human_clicks.into()),
            ("conversions", r.conversions.into()),
            // A display ratio, not money.
            ("conversion_rate", r.conversion_rate_percent().map(|p| format!("{p:.2}%")).unwrap_or_default().into()),
            ("revenue", money(r.revenue).into()),
            ("payout", money(r.payout).into()),
            ("epc", r.epc().map(money).unwrap_or_default().into()),
        ])
    });
    let mut header: Vec<&str> = REPORT_COLUMNS.to_vec();
    header[0] = by_name;
    // Rename the key column in every format.
    let renamed = lines.map(move |r: anyhow::Result<Vec<(&'static str, Value)>>| {
        r.map(|mut v| {
            v[0].0 = by_name;
            v
        })
    });
    write_rows(format, &header, &header, renamed)?;
    Ok(ExitCode::SUCCESS)
}

pub fn worker_options(config: &tally_edge::config::AttributionConfig) -> WorkerOptions {
    WorkerOptions { commit_every: config.commit_every, sync: config.sync, ..WorkerOptions::default() }
}

/// Opens the worker's state, explaining the usual reason it fails.
pub fn open_worker(data_dir: &Path, options: WorkerOptions, metrics: AttributionMetrics) -> anyhow::Result<Worker> {
    let dir = tally_attribution::state_dir(data_dir);
    Worker::open(&dir, options, metrics).with_context(|| {
        format!(
            "cannot start attribution on {} (is another worker running on it? `tally serve` runs one unless attribution.in_process = false)",
            dir.display()
        )
    })
}

/// The in-process worker of `tally serve`: a thread following the log until stopped.
pub struct InProcess {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl InProcess {
    pub fn start(mut worker: Worker, reader: LogReader) -> anyhow::Result<InProcess> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("tally-attribution".into())
            .spawn(move || {
                if let Err(e) = worker.run(reader, &flag) {
                    tracing::error!(error = %e, "attribution stopped; restart to resume from its checkpoint");
                }
            })
            .context("cannot start the attribution thread")?;
        Ok(InProcess { stop, thread })
    }

    /// Stops after the worker's current batch and its commit.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

pub struct AttributeArgs {
    pub config: PathBuf,
    pub data_dir: Option<PathBuf>,
    pub once: bool,
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// `tally attribute`: the worker as its own process, reading the server's log through a
/// secondary instance.
pub fn attribute(args: AttributeArgs) -> anyhow::Result<ExitCode> {
    let mut config = tally_edge::Config::load(&args.config)?;
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    crate::init_tracing(&config);
    let metrics = AttributionMetrics::default();
    let mut worker = open_worker(&config.data_dir, worker_options(&config.attribution), metrics.clone())?;
    let reader = LogReader::open_secondary(&config.data_dir)?;
    if args.once {
        let n = worker.catch_up(&reader, None)?;
        println!("attributed {n} events; position {}", worker.position());
        return Ok(ExitCode::SUCCESS);
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let listen = args.metrics_listen;
    let background = std::thread::Builder::new().name("tally-signals".into()).spawn(move || {
        rt.block_on(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
                return;
            };
            if let Some(addr) = listen {
                let mut registry = prometheus_client::registry::Registry::default();
                metrics.register(&mut registry);
                match tokio::net::TcpListener::bind(addr).await {
                    Ok(l) => {
                        println!(
                            "tally attribute metrics on {}",
                            l.local_addr().map(|a| a.to_string()).unwrap_or_default()
                        );
                        tokio::spawn(serve_metrics(l, Arc::new(registry)));
                    }
                    Err(e) => tracing::error!(%addr, error = %e, "cannot listen for metrics"),
                }
            }
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            flag.store(true, Ordering::Relaxed);
        })
    })?;
    println!("tally attribute following {} from sequence {}", config.data_dir.display(), worker.position() + 1);
    let result = worker.run(reader, &stop);
    drop(background);
    result?;
    tracing::info!(position = worker.position(), "attribution stopped cleanly");
    Ok(ExitCode::SUCCESS)
}

/// `/metrics` for the separate worker process, on hyper like the edge's.
async fn serve_metrics(listener: tokio::net::TcpListener, registry: Arc<prometheus_client::registry::Registry>) {
    use http_body_util::Full;
    use hyper::body::Bytes;
    use hyper::{Response, StatusCode};
    loop {
        let Ok((sock, _)) = listener.accept().await else { continue };
        let registry = Arc::clone(&registry);
        let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let registry = Arc::clone(&registry);
            async move {
                let mut body = String::new();
                let response = if req.uri().path() == "/metrics"
                    && prometheus_client::encoding::text::encode(&mut body, &registry).is_ok()
                {
                    Response::builder()
                        .header("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")
                        .body(Full::new(Bytes::from(body)))
                } else {
                    Response::builder()
                        .status(StatusCode::NOT_FOUND)
                        .body(Full::new(Bytes::from_static(b"not found\n")))
                };
                response
            }
        });
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(sock);
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
        });
    }
}
