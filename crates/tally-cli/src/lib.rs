//! The `tally` command line: flags, config loading, tracing, and one function per command.
//! The work itself is done by the library crates; `main.rs` only calls [`main`].

pub mod alloc;
mod audit;
mod cluster;
mod decide;
mod deliveries;
mod export;
mod import;
mod ledger;
mod ops;
mod output;
mod payouts;
mod privacy;
mod progress;
mod snapshot;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};
use serde_json::json;
use tally_log::{Erasure, LogReader};
use tally_server::{App, Config};

use output::{found, hex, print_json, OutputFormat};
use progress::Progress;

/// Shown under `tally --help` and in the man page; the README's "Exit codes" says the same.
const EXIT_CODES: &str = "\
Exit codes:
  0  ok
  1  a check found a difference: verify (broken chain, edited record, anchor not proven),
     replay (the replay differs from the live ledger), config check (problems found),
     health (not answering 200)
  2  trouble: cannot open or read the data, a bad argument or usage, an I/O error

With --format json (verify, replay, log stats, snapshot, config check, erase, retention)
standard output holds
one JSON object, with \"ok\"; on trouble it is {\"ok\":false,\"error\":\"...\"}, and the error is
on standard error as well.";

#[derive(Debug, Parser)]
#[command(
    name = "tally",
    version,
    about = "Click and conversion tracking for affiliate programs",
    after_help = EXIT_CODES
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the tracker: click redirects, pixel, postbacks, health and metrics.
    Serve(ServeArgs),
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Event log tools.
    Log {
        #[command(subcommand)]
        command: LogCommand,
    },
    /// Export the raw log or the commission ledger (works while a server is running on the directory).
    Export {
        #[command(subcommand)]
        what: ExportWhat,
    },
    /// Recompute the log's hash chain; names the first bad sequence number if any.
    Verify {
        #[arg(long, env = "TALLY_DATA_DIR")]
        data_dir: PathBuf,
        /// A head printed by an earlier `tally verify` (`SEQ:HEX`): also prove the log up to
        /// SEQ is unchanged since then.
        #[arg(long, value_name = "SEQ:HEAD")]
        anchor: Option<tally_log::Anchor>,
        /// On a cluster's attribution tier: also prove the merged log holds exactly each
        /// edge's events (per edge: its sequence range and chain head, which the edge's own
        /// `tally verify` prints).
        #[arg(long)]
        origins: bool,
        #[arg(long, value_enum, default_value_t)]
        format: OutputFormat,
    },
    /// Copy a data directory as of now (log, attribution state and its snapshots) into a new
    /// directory that every read command accepts; works while a server is running.
    Snapshot {
        #[arg(long, env = "TALLY_DATA_DIR")]
        data_dir: PathBuf,
        /// The new data directory: must not exist, or be empty.
        #[arg(long)]
        out: PathBuf,
        #[arg(long, value_enum, default_value_t)]
        format: OutputFormat,
    },
    /// Run the attribution worker as its own process (set attribution.in_process = false for
    /// `tally serve`); follows the server's log until SIGTERM/SIGINT.
    Attribute {
        #[arg(long, env = "TALLY_CONFIG")]
        config: PathBuf,
        /// Data directory, overriding log.data_dir.
        #[arg(long, env = "TALLY_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Attribute what the log holds now, then exit.
        #[arg(long)]
        once: bool,
        /// Serve the worker's Prometheus metrics on this address (GET /metrics).
        #[arg(long, env = "TALLY_ATTRIBUTION_METRICS")]
        metrics_listen: Option<std::net::SocketAddr>,
        /// Run as the attribution tier of a cluster: merge every edge's events from these
        /// NATS servers (comma-separated nats://host:port) into this data directory's log,
        /// overriding bus.urls.
        #[arg(long, value_delimiter = ',', value_name = "URLS")]
        bus: Option<Vec<String>>,
    },
    /// List the commission ledger (works while a server is running on the directory).
    Commissions {
        #[arg(long, env = "TALLY_DATA_DIR")]
        data_dir: PathBuf,
        /// Only this affiliate's entries.
        #[arg(long)]
        affiliate: Option<String>,
        /// Only this offer's entries.
        #[arg(long)]
        offer: Option<String>,
        /// Only entries with this status: pending, approved, rejected, rejected_cap,
        /// duplicate, unattributed.
        #[arg(long)]
        status: Option<String>,
        /// Only entries from this day on (UTC, YYYY-MM-DD, by the time of the event that
        /// created them).
        #[arg(long)]
        from: Option<String>,
        /// Only entries up to this day, inclusive.
        #[arg(long)]
        to: Option<String>,
        #[arg(long, value_enum, default_value_t = ledger::TableFormat::Table)]
        format: ledger::TableFormat,
        /// Print the canonical digest of the selected entries instead of the entries: BLAKE3
        /// of their `--format csv` rows without the header line.
        #[arg(long)]
        digest: bool,
    },
    /// Payout runs in the ledger; with --payout, one run's lines, or with --out a statement
    /// per affiliate it paid (CSV and JSON). Runs and voids: `tally decide payout`.
    Payouts {
        #[arg(long, env = "TALLY_DATA_DIR")]
        data_dir: PathBuf,
        /// The payout ID.
        #[arg(long)]
        payout: Option<String>,
        /// Write each affiliate's statement of --payout into this directory.
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t)]
        format: OutputFormat,
    },
    /// Balances per affiliate and currency: approved unpaid, pending, paid, and the minimum a
    /// payout run needs.
    Balances {
        #[arg(long, env = "TALLY_DATA_DIR")]
        data_dir: PathBuf,
        #[arg(long)]
        affiliate: Option<String>,
        #[arg(long, value_enum, default_value_t)]
        format: OutputFormat,
    },
    /// Re-run attribution over the raw log into a scratch state and compare it with the live
    /// ledger; exits 1 on any difference. Works while a server is running.
    Replay {
        #[arg(long, env = "TALLY_DATA_DIR")]
        data_dir: PathBuf,
        #[command(flatten)]
        window: Window,
        /// Compare only this affiliate's entries.
        #[arg(long)]
        affiliate: Option<String>,
        /// Compare only this offer's entries.
        #[arg(long)]
        offer: Option<String>,
        /// Explain one conversion instead (its sequence number or transaction ID): the click
        /// it joined, the rule and amounts, duplicates, caps, holds and reversals.
        #[arg(long, value_name = "CONVERSION")]
        explain: Option<String>,
        /// Start from the log's first event even when a snapshot before the window exists.
        #[arg(long)]
        no_snapshots: bool,
        #[arg(long, value_enum, default_value_t)]
        format: OutputFormat,
    },
    /// Erase the personal fields (IP, user agent, referrer, customer ID) of clicks and conversions, for an
    /// erasure request; verify, replay and the ledger are unaffected. The server must be
    /// stopped (a running one: POST /admin/erase).
    Erase {
        #[arg(long, env = "TALLY_DATA_DIR")]
        data_dir: PathBuf,
        /// A click ID: the click and every conversion that claims it. Repeatable.
        #[arg(long = "click", value_name = "CLICK_ID")]
        clicks: Vec<tally_model::ClickId>,
        /// An IP as stored (after privacy.ip_mode): every click and conversion from it.
        /// Repeatable.
        #[arg(long = "ip", value_name = "IP")]
        ips: Vec<String>,
        /// A merchant's customer ID (`customer=` on conversions): every conversion of that
        /// customer. Repeatable.
        #[arg(long = "customer", value_name = "CUSTOMER_ID")]
        customers: Vec<String>,
        #[arg(long, value_enum, default_value_t)]
        format: OutputFormat,
    },
    /// Erase the personal fields of events older than --days, and the day keys of visitor
    /// pseudonyms of those days (what the server does hourly with privacy.retention_days).
    /// The server must be stopped (a running one: POST /admin/retention).
    Retention {
        #[arg(long, env = "TALLY_DATA_DIR")]
        data_dir: PathBuf,
        /// Keep this many days of personal fields (at least 1).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=36_500))]
        days: u32,
        #[arg(long, value_enum, default_value_t)]
        format: OutputFormat,
    },
    /// Clicks, unique clicks, conversions, conversion rate, revenue, payout and EPC.
    Report {
        #[arg(long, env = "TALLY_DATA_DIR")]
        data_dir: PathBuf,
        /// affiliate, offer, day or sub1.
        #[arg(long)]
        by: String,
        /// First day (YYYY-MM-DD), inclusive: a day of the program's calendar (its
        /// time_zone, UTC by default), as stats rows are kept.
        #[arg(long)]
        from: Option<String>,
        /// Last day (YYYY-MM-DD), inclusive, as for --from.
        #[arg(long)]
        to: Option<String>,
        /// Count days in this time zone instead (an IANA name, or UTC); --from and --to are
        /// then its days. Re-derived from the raw log, so it reads all of it.
        #[arg(long, value_name = "ZONE")]
        tz: Option<String>,
        #[arg(long, value_enum, default_value_t = ledger::TableFormat::Table)]
        format: ledger::TableFormat,
    },
    /// An operator's decision on the ledger (approve early, reject, adjust, bonus), sent to
    /// the running server's admin API, which logs it and answers with what attribution did.
    /// Exits 1 when the decision could not apply to the ledger as it stands.
    Decide {
        #[command(subcommand)]
        command: decide::DecideCommand,
    },
    /// Outgoing postbacks and webhooks: the delivery log, and redelivery.
    Deliveries {
        #[command(subcommand)]
        command: deliveries::DeliveriesCommand,
    },
    /// Import affiliates, groups, coupons or links from a CSV, JSON Lines or JSON file through
    /// the running server's admin API: all rows or none. Exits 1 when rows are refused
    /// (each named), 2 on trouble.
    Import {
        /// A .csv (with --type), .jsonl/.ndjson or .json file.
        file: PathBuf,
        /// What a CSV file's rows are.
        #[arg(long = "type", value_enum)]
        kind: Option<import::ImportType>,
        /// Check the file without importing it.
        #[arg(long)]
        dry_run: bool,
        /// Let links and coupons move to another affiliate.
        #[arg(long)]
        reassign: bool,
        #[command(flatten)]
        admin: decide::AdminArgs,
    },
    /// Probe a health endpoint: exits 0 when it answers 200 (a container HEALTHCHECK
    /// without curl).
    Health {
        /// e.g. http://127.0.0.1:9464/readyz
        #[arg(long, default_value = "http://127.0.0.1:9464/healthz")]
        url: String,
        /// Give up after this many milliseconds.
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// Print a shell completion script, generated from these very flags.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), generated from these very flags: `tally man | man -l -`.
    Man {
        /// Write a page per command (tally.1, tally-verify.1, ...) into this directory
        /// instead.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// The deployment config (see config/tally.toml).
    #[arg(long, env = "TALLY_CONFIG")]
    config: PathBuf,
    /// Listen address, overriding server.listen.
    #[arg(long, env = "TALLY_LISTEN")]
    listen: Option<std::net::SocketAddr>,
    /// Data directory, overriding log.data_dir.
    #[arg(long, env = "TALLY_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Tokio worker threads, overriding server.worker_threads (0 = one per core).
    #[arg(long, env = "TALLY_WORKER_THREADS")]
    worker_threads: Option<usize>,
    /// Admin listener address, overriding admin.listen.
    #[arg(long, env = "TALLY_ADMIN_LISTEN")]
    admin_listen: Option<std::net::SocketAddr>,
    /// Run as an edge of a cluster: ship events to these NATS servers (comma-separated
    /// nats://host:port), overriding bus.urls.
    #[arg(long, value_delimiter = ',', value_name = "URLS")]
    bus: Option<Vec<String>>,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate a config and the program it points to; reports every problem at once.
    Check {
        #[arg(long, env = "TALLY_CONFIG")]
        config: PathBuf,
        #[arg(long, value_enum, default_value_t)]
        format: OutputFormat,
    },
}

#[derive(Debug, Subcommand)]
enum LogCommand {
    /// Events by type, first and last sequence number, bytes on disk.
    Stats {
        #[arg(long, env = "TALLY_DATA_DIR")]
        data_dir: PathBuf,
        #[arg(long, value_enum, default_value_t)]
        format: OutputFormat,
    },
    /// On an edge of a cluster (stopped): ship its events from SEQ on again at the next
    /// start, for a tier whose stream lost them. What the tier already has it drops.
    Reship {
        #[arg(long, env = "TALLY_DATA_DIR")]
        data_dir: PathBuf,
        #[arg(long, value_name = "SEQ")]
        from: u64,
        #[arg(long, value_enum, default_value_t)]
        format: OutputFormat,
    },
}

#[derive(Debug, Subcommand)]
enum ExportWhat {
    /// Every event, in sequence order.
    Events(ExportArgs),
    /// Clicks only, with the columns a click has.
    Clicks(ExportArgs),
    /// Conversion reports only (refunds and chargebacks included), with their columns.
    Conversions(ExportArgs),
    /// The commission ledger (from the attribution state), in sequence order.
    Commissions(ExportArgs),
}

/// A window of the log, half-open: the events from `--from` up to, not including, `--to`.
#[derive(Debug, clap::Args)]
struct Window {
    /// Start, inclusive: a sequence number, or a UTC date (2026-11-23) or time
    /// (2026-11-23T14:05:00Z) meaning the first event at or after it.
    #[arg(long)]
    from: Option<String>,
    /// End, exclusive: a sequence number, a UTC date or time, as for --from.
    #[arg(long)]
    to: Option<String>,
}

#[derive(Debug, clap::Args)]
struct ExportArgs {
    #[arg(long, env = "TALLY_DATA_DIR")]
    data_dir: PathBuf,
    #[command(flatten)]
    window: Window,
    /// parquet needs a binary built with `--features tally-cli/parquet`, and --out.
    #[arg(long, value_enum, default_value_t = export::Format::Jsonl)]
    format: export::Format,
    /// Write to this file instead of standard output (required for parquet).
    #[arg(long)]
    out: Option<PathBuf>,
}

impl Command {
    /// Whether the command was asked for `--format json`, so its errors are JSON too.
    fn json(&self) -> bool {
        let format = match self {
            Command::Verify { format, .. }
            | Command::Snapshot { format, .. }
            | Command::Replay { format, .. }
            | Command::Erase { format, .. }
            | Command::Retention { format, .. }
            | Command::Config { command: ConfigCommand::Check { format, .. } }
            | Command::Log { command: LogCommand::Stats { format, .. } }
            | Command::Log { command: LogCommand::Reship { format, .. } } => *format,
            _ => OutputFormat::Text,
        };
        format == OutputFormat::Json
    }
}

/// Parses the command line and runs the command; errors are printed, not panicked. Exit
/// codes are [`EXIT_CODES`]; clap exits 2 on usage errors itself.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.command.json();
    // Commands that print their result: when the reader of their standard output goes away
    // (`tally export events | head`), they stop there, as `cat` would. The others talk to
    // sockets, where a broken pipe is a real error.
    let prints = !matches!(
        cli.command,
        Command::Serve(_)
            | Command::Attribute { .. }
            | Command::Health { .. }
            | Command::Decide { .. }
            | Command::Import { .. }
    );
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Config { command: ConfigCommand::Check { config, format } } => config_check(&config, format),
        Command::Log { command: LogCommand::Stats { data_dir, format } } => log_stats(&data_dir, format),
        Command::Log { command: LogCommand::Reship { data_dir, from, format } } => {
            cluster::reship(&data_dir, from, format)
        }
        Command::Export { what } => {
            use tally_audit::export::What;
            let (what, args) = match what {
                ExportWhat::Events(a) => (What::Events, a),
                ExportWhat::Clicks(a) => (What::Clicks, a),
                ExportWhat::Conversions(a) => (What::Conversions, a),
                ExportWhat::Commissions(a) => (What::Commissions, a),
            };
            export::range(args.window.from.as_deref(), args.window.to.as_deref())
                .and_then(|range| export::export(what, &args.data_dir, &range, args.format, args.out.as_deref()))
        }
        Command::Payouts { data_dir, payout, out, format } => {
            payouts::payouts(&data_dir, payout.as_deref(), out.as_ref(), format)
        }
        Command::Balances { data_dir, affiliate, format } => payouts::balances(&data_dir, affiliate.as_deref(), format),
        Command::Verify { data_dir, anchor, origins, format } => verify(&data_dir, anchor.as_ref(), origins, format),
        Command::Snapshot { data_dir, out, format } => snapshot::snapshot(&data_dir, &out, format),
        Command::Attribute { config, data_dir, once, metrics_listen, bus } => {
            attribute(&config, data_dir, once, metrics_listen, bus)
        }
        Command::Commissions { data_dir, affiliate, offer, status, from, to, format, digest } => {
            ledger::commissions(ledger::CommissionsArgs {
                data_dir,
                affiliate,
                offer,
                status,
                from,
                to,
                format,
                digest,
            })
        }
        Command::Replay { data_dir, window: Window { from, to }, affiliate, offer, explain, no_snapshots, format } => {
            audit::replay(audit::ReplayArgs { data_dir, from, to, affiliate, offer, explain, no_snapshots, format })
        }
        Command::Report { data_dir, by, from, to, tz, format } => {
            ledger::report(&data_dir, &by, from.as_deref(), to.as_deref(), tz.as_deref(), format)
        }
        Command::Erase { data_dir, clicks, ips, customers, format } => {
            privacy::erase(&data_dir, Erasure { click_ids: clicks, ips, customers }, format)
        }
        Command::Retention { data_dir, days, format } => privacy::retention(&data_dir, days, format),
        Command::Health { url, timeout_ms } => ops::health(&url, Duration::from_millis(timeout_ms)),
        Command::Decide { command } => decide::run(command),
        Command::Deliveries { command } => deliveries::run(command),
        Command::Import { file, kind, dry_run, reassign, admin } => {
            import::import(&file, kind, dry_run, reassign, &admin)
        }
        Command::Completions { shell } => completions(shell),
        Command::Man { out_dir } => man(out_dir.as_deref()),
    };
    match result {
        Ok(code) => code,
        Err(e) if prints && is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tally: error: {e:#}");
            if json {
                // A script reading standard output gets an object to parse either way; the
                // exit code already says what kind of failure it is.
                let _ = print_json(&json!({ "ok": false, "error": format!("{e:#}") }));
            }
            ExitCode::from(output::TROUBLE)
        }
    }
}

/// `tally completions SHELL`. Generated into memory first: the generator panics on a write
/// error, and `tally completions bash | head` must not.
fn completions(shell: clap_complete::Shell) -> anyhow::Result<ExitCode> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "tally", &mut script);
    write_stdout(&script)
}

/// `tally man [--out-dir DIR]`.
fn man(out_dir: Option<&Path>) -> anyhow::Result<ExitCode> {
    use anyhow::Context;
    match out_dir {
        Some(dir) => {
            clap_mangen::generate_to(Cli::command(), dir)
                .with_context(|| format!("--out-dir {}: cannot write the man pages", dir.display()))?;
            Ok(ExitCode::SUCCESS)
        }
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(Cli::command()).render(&mut page)?;
            write_stdout(&page)
        }
    }
}

fn write_stdout(bytes: &[u8]) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// Whether `e` comes from writing to a pipe whose reader has closed it, under any context.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(tally_audit::export::is_broken_pipe)
}

fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut config = Config::load(&args.config)?;
    if let Some(listen) = args.listen {
        config.edge.listen = listen;
    }
    if let Some(dir) = args.data_dir {
        config.set_data_dir(dir);
    }
    if let Some(n) = args.worker_threads {
        config.edge.worker_threads = n;
    }
    if let Some(a) = args.admin_listen {
        config.edge.admin.listen = Some(a);
    }
    if let Some(urls) = args.bus {
        config.set_bus_urls(urls)?;
    }
    tally_server::telemetry::init_tracing(&config.logging);
    let app = App::open(config)?;
    let listeners = app.bind()?;
    // Tests and scripts read these lines to learn the ports when listening on :0.
    println!("tally listening on {}", listeners.public_addr()?);
    if let Some(a) = listeners.admin_addr()? {
        println!("tally admin listening on {a}");
    }
    app.run(listeners, tally_server::unix_signals)?;
    tracing::info!("stopped cleanly");
    Ok(ExitCode::SUCCESS)
}

/// `tally attribute`: the worker as its own process.
fn attribute(
    config: &Path,
    data_dir: Option<PathBuf>,
    once: bool,
    metrics_listen: Option<std::net::SocketAddr>,
    bus: Option<Vec<String>>,
) -> anyhow::Result<ExitCode> {
    let mut config = Config::load(config)?;
    if let Some(dir) = data_dir {
        config.set_data_dir(dir);
    }
    if let Some(urls) = bus {
        config.set_bus_urls(urls)?;
    }
    tally_server::telemetry::init_tracing(&config.logging);
    let mut worker = tally_server::worker::Standalone::open(&config)?;
    if once {
        let mut progress = Progress::for_log(config.data_dir(), "attribute");
        let n = worker.catch_up(|seq| progress.at(seq))?;
        progress.finish();
        println!("attributed {n} events; position {}", worker.position());
        return Ok(ExitCode::SUCCESS);
    }
    let what = if config.bus.is_some() { "merging the bus into" } else { "following" };
    println!("tally attribute {what} {} from sequence {}", config.data_dir().display(), worker.position() + 1);
    // The last line printed: scripts (and tests) read up to it to learn a `:0` port, and may
    // stop reading standard output then.
    let metrics = match metrics_listen {
        Some(addr) => {
            let l = worker.bind_metrics(addr)?;
            println!("tally attribute metrics on {}", l.local_addr()?);
            Some(l)
        }
        None => None,
    };
    worker.run(metrics, config.edge.admin.token.clone())?;
    Ok(ExitCode::SUCCESS)
}

/// The entities the admin API put, from the log in `data_dir` (none without a log): the file
/// is checked as the server would compose it.
fn managed_in(data_dir: &Path) -> Result<std::sync::Arc<tally_model::Managed>, tally_edge::ReloadError> {
    if !data_dir.join("CURRENT").exists() {
        return Ok(std::sync::Arc::default());
    }
    let reader = tally_log::LogReader::open_secondary(data_dir)?;
    tally_edge::managed_in_log(&reader).map(std::sync::Arc::new)
}

fn config_check(path: &Path, format: OutputFormat) -> anyhow::Result<ExitCode> {
    let mut problems = Vec::new();
    let mut summary = None;
    match Config::load(path) {
        Ok(config) => match managed_in(config.data_dir()).and_then(|m| tally_edge::load_for(&config.edge, m)) {
            Ok(tally_edge::Loaded { program, .. }) => {
                summary = Some((
                    config.edge.program_path.clone(),
                    program.offers.len(),
                    program.affiliates.len(),
                    program.links().count(),
                ))
            }
            Err(tally_edge::ReloadError::Program(e)) => problems
                .extend(e.problems().into_iter().map(|p| format!("{}: {p}", config.edge.program_path.display()))),
            Err(e) => problems.push(e.to_string()),
        },
        // A config that cannot be read is not one with problems: there was nothing to check.
        Err(e @ tally_server::ConfigError::Read { .. }) => return Err(e.into()),
        Err(tally_server::ConfigError::Invalid(ps)) => {
            problems.extend(ps.into_iter().map(|p| format!("{}: {p}", path.display())))
        }
        Err(e) => problems.push(e.to_string()),
    }
    if format == OutputFormat::Json {
        let program = summary.as_ref().map(|(program, offers, affiliates, links)| {
            json!({ "path": program.display().to_string(), "offers": offers, "affiliates": affiliates, "links": links })
        });
        print_json(&json!({
            "ok": problems.is_empty(),
            "config": path.display().to_string(),
            "problems": problems,
            "program": program,
        }))?;
        return Ok(found(problems.is_empty()));
    }
    if let Some((program, offers, affiliates, links)) = summary {
        println!(
            "ok: {} ({offers} offers, {affiliates} affiliates, {links} links; program {})",
            path.display(),
            program.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    for p in &problems {
        eprintln!("{p}");
    }
    eprintln!("{} problem(s) found", problems.len());
    Ok(output::FOUND_DIFFERENCE)
}

fn open_reader(data_dir: &Path) -> anyhow::Result<LogReader> {
    Ok(LogReader::open_secondary(data_dir)?)
}

fn log_stats(data_dir: &Path, format: OutputFormat) -> anyhow::Result<ExitCode> {
    let reader = open_reader(data_dir)?;
    let stats = reader.stats(data_dir)?;
    let total: u64 = stats.events_by_kind.values().sum();
    if format == OutputFormat::Json {
        print_json(&json!({
            "ok": true,
            "first_seq": stats.first_seq,
            "last_seq": stats.last_seq,
            "events": total,
            "events_by_kind": stats.events_by_kind,
            "unreadable": stats.unreadable,
            "bytes_on_disk": stats.bytes_on_disk,
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    let or_dash = |s: Option<u64>| s.map(|s| s.to_string()).unwrap_or_else(|| "-".into());
    // One column for the figures, wide enough for the longest kind (`program_change`).
    println!("{:<18}{}", "first_seq", or_dash(stats.first_seq));
    println!("{:<18}{}", "last_seq", or_dash(stats.last_seq));
    println!("{:<18}{total}", "events");
    for (kind, n) in &stats.events_by_kind {
        println!("  {kind:<16}{n}");
    }
    if stats.unreadable > 0 {
        println!("  {:<16}{}", "unreadable", stats.unreadable);
    }
    println!("{:<18}{}", "bytes_on_disk", stats.bytes_on_disk);
    Ok(ExitCode::SUCCESS)
}

/// What `--anchor` came to: whether it holds, a name for the outcome, and the sentence the
/// text output prints.
fn anchor_outcome(anchor: &tally_log::Anchor, check: &tally_log::AnchorCheck) -> (bool, &'static str, String) {
    use tally_log::AnchorCheck;
    let seq = anchor.seq;
    match check {
        AnchorCheck::Matches => {
            (true, "matches", format!("anchor ok: the log up to sequence {seq} is unchanged since {anchor}"))
        }
        AnchorCheck::Differs { recomputed } => (
            false,
            "differs",
            format!(
                "anchor FAILED: the records up to sequence {seq} hash to {}, not to the anchor's head: the log before it was changed",
                hex(recomputed)
            ),
        ),
        AnchorCheck::NotABatchBoundary { before, after } => {
            let near: Vec<String> = [before, after].into_iter().flatten().map(|s| s.to_string()).collect();
            (
                false,
                "not_a_batch_boundary",
                format!(
                    "anchor FAILED: no batch ends at sequence {seq} (nearest batch ends: {}); anchors are the `head SEQ:HEX` lines `tally verify` prints",
                    near.join(", ")
                ),
            )
        }
        AnchorCheck::BeyondHead { head_seq } => (
            false,
            "beyond_head",
            format!("anchor FAILED: sequence {seq} is beyond the log's head {head_seq}"),
        ),
        AnchorCheck::Unreached { failed_at } => (
            false,
            "unreached",
            format!("anchor FAILED: the chain cannot be recomputed past sequence {failed_at}, before the anchor's {seq}"),
        ),
    }
}

fn verify(
    data_dir: &Path,
    anchor: Option<&tally_log::Anchor>,
    origins: bool,
    format: OutputFormat,
) -> anyhow::Result<ExitCode> {
    let reader = open_reader(data_dir)?;
    let mut progress = Progress::for_log(data_dir, "verify");
    let (report, check) = match anchor {
        None => (reader.verify_progress(|seq| progress.at(seq))?, None),
        Some(a) => {
            let (report, check) = reader.verify_anchor_progress(a, |seq| progress.at(seq))?;
            (report, Some(check))
        }
    };
    progress.finish();
    let head = hex(&report.head);
    let anchored = match (anchor, &check) {
        (Some(anchor), Some(check)) => Some((anchor, anchor_outcome(anchor, check))),
        _ => None,
    };
    let origins = if origins {
        let nodes = reader.verify_origins()?;
        if nodes.is_empty() {
            anyhow::bail!(
                "{} holds no merged events: --origins checks the log of a cluster's attribution tier",
                data_dir.display()
            );
        }
        Some(nodes)
    } else {
        None
    };
    // Every record of a merged log came from some edge.
    let foreign =
        origins.as_ref().map_or(0, |nodes| report.records.saturating_sub(nodes.iter().map(|n| n.records).sum()));
    let ok = report.is_ok()
        && anchored.as_ref().is_none_or(|(_, (holds, _, _))| *holds)
        && origins.as_ref().is_none_or(|nodes| nodes.iter().all(tally_log::OriginReport::is_ok))
        && (!report.is_ok() || foreign == 0);
    if format == OutputFormat::Json {
        let anchor = anchored.map(|(anchor, (holds, outcome, message))| {
            json!({ "anchor": anchor.to_string(), "ok": holds, "outcome": outcome, "message": message })
        });
        print_json(&json!({
            "ok": ok,
            "events": report.records,
            "batches": report.batches,
            "head_seq": report.head_seq,
            "head": head,
            "first_bad_seq": report.first_bad.as_ref().map(|(seq, _)| seq),
            "reason": report.first_bad.as_ref().map(|(_, why)| why),
            "anchor": anchor,
            "personal": { "present": report.personal.present, "erased": report.personal.erased },
            "origins": origins.as_ref().map(|nodes| nodes.iter().map(|n| json!({
                "node": n.node,
                "ok": n.is_ok(),
                "events": n.records,
                "last_seq": n.last_seq,
                "batches": n.batches,
                "head_seq": n.head_seq,
                "head": hex(&n.head),
                "unchained": n.unchained,
                "first_bad_seq": n.first_bad.as_ref().map(|(seq, _)| seq),
                "reason": n.first_bad.as_ref().map(|(_, why)| why),
            })).collect::<Vec<_>>()),
            "events_without_origin": origins.as_ref().map(|_| foreign),
        }))?;
        return Ok(found(ok));
    }
    match &report.first_bad {
        None => {
            println!("ok: {} events in {} batches verified", report.records, report.batches);
            println!("head {}:{head}", report.head_seq);
            let p = report.personal;
            if p.present + p.erased > 0 {
                println!("personal fields: held by {} records, erased from {}", p.present, p.erased);
            }
        }
        Some((seq, why)) => {
            println!("FAILED at sequence {seq}: {why}");
            println!("verified before it: {} events; last good head {}:{head}", report.records, report.head_seq);
        }
    }
    if let Some((_, (_, _, message))) = anchored {
        println!("{message}");
    }
    for n in origins.iter().flatten() {
        let head = format!("head {}:{}", n.head_seq, hex(&n.head));
        match &n.first_bad {
            None if n.unchained > 0 => println!(
                "node {}: ok: events 1..={} ({}); {head}; {} after it wait for their batch's chain entry",
                n.node, n.last_seq, n.records, n.unchained
            ),
            None => println!("node {}: ok: events 1..={} ({}); {head}", n.node, n.last_seq, n.records),
            Some((seq, why)) => println!("node {}: FAILED at its sequence {seq}: {why}; last good {head}", n.node),
        }
    }
    if foreign > 0 && report.is_ok() {
        println!("FAILED: {foreign} events of the merged log came from no edge");
    }
    Ok(found(ok))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::io::{Error, ErrorKind, Write};

    use super::is_broken_pipe;

    /// A writer whose reader has gone away.
    struct Closed;

    impl Write for Closed {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(Error::from(ErrorKind::BrokenPipe))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_broken_pipe_is_found_under_any_encoder_and_context() {
        let io = anyhow::Error::from(Closed.write_all(b"x").unwrap_err()).context("writing rows");
        assert!(is_broken_pipe(&io));
        let json = anyhow::Error::from(serde_json::to_writer(Closed, &1).unwrap_err());
        assert!(is_broken_pipe(&json));
        let mut w = csv::WriterBuilder::new().buffer_capacity(1).from_writer(Closed);
        let csv = w.write_record(["a", "b"]).and_then(|()| w.flush().map_err(csv::Error::from)).unwrap_err();
        assert!(is_broken_pipe(&anyhow::Error::from(csv)));
    }

    #[test]
    fn other_errors_are_not_a_broken_pipe() {
        assert!(!is_broken_pipe(&anyhow::anyhow!("broken pipe, said the message")));
        assert!(!is_broken_pipe(&anyhow::Error::from(Error::from(ErrorKind::PermissionDenied))));
        let json = serde_json::from_str::<u8>("x").unwrap_err();
        assert!(!is_broken_pipe(&anyhow::Error::from(json)));
    }
}
