//! `tally deliveries`: the delivery log of outgoing postbacks and webhooks, read off the data
//! directory (beside a running server), and redelivery through the server's admin API (the
//! server's dispatcher is the log's only writer).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use serde_json::json;
use tally_attribution::deliveries::{Delivery, DeliveryStore};
use tally_model::delivery::Target;

use crate::decide::AdminArgs;
use crate::output::{print_json, OutputFormat};

#[derive(Debug, clap::Subcommand)]
pub enum DeliveriesCommand {
    /// The delivery log, in outbox order.
    List {
        #[arg(long, env = "TALLY_DATA_DIR")]
        data_dir: PathBuf,
        /// pending, delivered or failed.
        #[arg(long)]
        status: Option<String>,
        /// An affiliate or a webhook ID.
        #[arg(long)]
        receiver: Option<String>,
        #[arg(long, value_enum, default_value_t)]
        format: OutputFormat,
    },
    /// Send a delivery again now (failed, or delivered but lost by the receiver), with the
    /// same idempotency key.
    Redeliver {
        /// The delivery's key (tally-SEQ-N).
        key: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

pub fn run(command: DeliveriesCommand) -> anyhow::Result<ExitCode> {
    match command {
        DeliveriesCommand::List { data_dir, status, receiver, format } => {
            if let Some(s) = status.as_deref().filter(|s| !["pending", "delivered", "failed"].contains(s)) {
                anyhow::bail!("--status: \"{s}\" is not pending, delivered or failed");
            }
            let dir = tally_attribution::deliveries_dir(&data_dir);
            anyhow::ensure!(
                dir.join("CURRENT").exists(),
                "no delivery log in {} (nothing was ever delivered)",
                dir.display()
            );
            let store =
                DeliveryStore::open_read_only(&dir).with_context(|| format!("cannot open {}", dir.display()))?;
            let keep = |d: &Delivery| {
                status.as_deref().is_none_or(|s| d.status.as_str() == s)
                    && receiver.as_deref().is_none_or(|r| d.notification.receiver == r)
            };
            let all = store.list(None, usize::MAX, keep)?;
            if format == OutputFormat::Json {
                let rows: Vec<_> = all.iter().map(|(_, d)| row(d)).collect();
                print_json(&json!({ "deliveries": rows }))?;
            } else {
                for (_, d) in &all {
                    let n = &d.notification;
                    println!(
                        "{}  {}  {}  {} attempt(s)  {}  {}",
                        n.key,
                        d.status.as_str(),
                        n.receiver,
                        d.attempts,
                        n.event,
                        if d.last_error.is_empty() { String::new() } else { format!("({})", d.last_error) }
                    );
                }
                if all.is_empty() {
                    println!("no deliveries");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        DeliveriesCommand::Redeliver { key, admin } => {
            if !key.starts_with("tally-") || key.contains(|c: char| !(c.is_ascii_alphanumeric() || c == '-')) {
                anyhow::bail!("key: \"{key}\" is not a delivery key (like tally-1234-0)");
            }
            let (status, answer) = admin.post(&format!("/admin/deliveries/{key}/redeliver"), "application/json", "")?;
            if admin.format == OutputFormat::Json {
                print_json(&json!({ "ok": status == 200, "status": status, "answer": answer }))?;
            } else if status == 200 {
                println!("{key}: due again now");
            } else {
                eprintln!("refused ({status}): {}", answer["error"].as_str().unwrap_or(&answer.to_string()));
            }
            Ok(if status == 200 { ExitCode::SUCCESS } else { ExitCode::from(2) })
        }
    }
}

fn row(d: &Delivery) -> serde_json::Value {
    let n = &d.notification;
    let (kind, url) = match &n.target {
        Target::Postback { url } => ("postback", url.as_str()),
        Target::Webhook { url, .. } => ("webhook", url.as_str()),
    };
    json!({
        "key": n.key, "event": n.event, "receiver": n.receiver, "kind": kind, "url": url,
        "status": d.status.as_str(), "attempts": d.attempts, "last_status": d.last_status,
        "last_error": d.last_error, "last_latency_ms": d.last_latency_ms,
    })
}
