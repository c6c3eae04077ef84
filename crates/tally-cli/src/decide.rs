//! `tally decide`: operators' decisions on the ledger (approve early, reject, adjust, bonus),
//! sent to the server's admin API, which logs each as an event and answers with what
//! attribution did. Only the server writes its log, so the decision goes through it.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::output::{print_json, OutputFormat};

/// Where the admin API is and who acts.
#[derive(Debug, clap::Args)]
pub struct AdminArgs {
    /// The admin listener.
    #[arg(long, env = "TALLY_ADMIN_URL", default_value = "http://127.0.0.1:9464")]
    pub admin: String,
    /// A file holding the admin token (as admin.token_file); else TALLY_ADMIN_TOKEN.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Who decides, as the ledger records it (default: $USER).
    #[arg(long)]
    pub actor: Option<String>,
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,
}

#[derive(Debug, clap::Subcommand)]
pub enum DecideCommand {
    /// Approve a pending commission now (in its hold, or awaiting the merchant).
    Approve {
        /// The ledger entry ID (as `tally commissions` prints it).
        entry: String,
        #[arg(long, default_value = "")]
        note: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Reject a pending commission, or take back an approved one (a clawback).
    Reject {
        entry: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Set a pending or approved commission's amount (a decimal in its currency).
    Adjust {
        entry: String,
        #[arg(long)]
        amount: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Run a payout: every approved, unpaid entry up to --up-to is marked paid under the
    /// payout ID, per affiliate and currency whose balance reaches its minimum.
    Payout {
        /// The last day (YYYY-MM-DD, UTC, inclusive) or time (RFC 3339 UTC) it pays.
        #[arg(long)]
        up_to: String,
        /// The payout ID (1-64 of A-Z a-z 0-9 - _ .); default: --up-to.
        #[arg(long, default_value = "")]
        id: String,
        /// Only this affiliate (repeatable).
        #[arg(long = "affiliate")]
        affiliates: Vec<String>,
        /// Only this group's affiliates.
        #[arg(long, default_value = "")]
        group: String,
        #[arg(long, default_value = "")]
        note: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Void a payout run: its entries are unpaid again.
    VoidPayout {
        /// The payout ID.
        payout: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Pay an affiliate a manual bonus in an offer's currency, approved at once.
    Bonus {
        #[arg(long)]
        affiliate: String,
        #[arg(long)]
        offer: String,
        #[arg(long)]
        amount: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

pub fn run(command: DecideCommand) -> anyhow::Result<ExitCode> {
    let (path, body, admin) = match command {
        DecideCommand::Approve { entry, note, admin } => {
            (format!("/admin/commissions/{entry}/approve"), json!({ "note": note }), admin)
        }
        DecideCommand::Reject { entry, reason, admin } => {
            (format!("/admin/commissions/{entry}/reject"), json!({ "reason": reason }), admin)
        }
        DecideCommand::Adjust { entry, amount, reason, admin } => {
            (format!("/admin/commissions/{entry}/adjust"), json!({ "amount": amount, "reason": reason }), admin)
        }
        DecideCommand::Payout { up_to, id, affiliates, group, note, admin } => (
            "/admin/payouts".to_owned(),
            json!({ "payout": id, "up_to": up_to, "affiliates": affiliates, "group": group, "note": note }),
            admin,
        ),
        DecideCommand::VoidPayout { payout, reason, admin } => {
            if payout.is_empty() || payout.contains(|c: char| !(c.is_ascii_alphanumeric() || "-_.".contains(c))) {
                bail!("payout: \"{payout}\" is not a payout ID (1-64 of A-Z a-z 0-9 - _ .)");
            }
            (format!("/admin/payouts/{payout}/void"), json!({ "reason": reason }), admin)
        }
        DecideCommand::Bonus { affiliate, offer, amount, reason, admin } => (
            "/admin/bonuses".to_owned(),
            json!({ "affiliate": affiliate, "offer": offer, "amount": amount, "reason": reason }),
            admin,
        ),
    };
    if path.contains(|c: char| c.is_whitespace() || c == '?' || c == '#') {
        bail!("entry: give an entry ID like 1234 or 1234.1");
    }
    let (status, answer) = admin.post(&path, "application/json", &body.to_string())?;
    let applied = status == 200;
    match admin.format {
        OutputFormat::Json => print_json(&json!({ "ok": applied, "status": status, "answer": answer }))?,
        OutputFormat::Text => match status {
            200 => {
                println!("{}", answer["decision"]["rule"].as_str().unwrap_or(""));
                if let Some(e) = answer["entry"].as_object() {
                    let field = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
                    println!("entry {}: {} {} {}", field("id"), field("status"), field("amount"), field("currency"));
                }
                println!("logged at sequence {}", answer["seq"]);
            }
            202 => println!("logged at sequence {}; attribution has not applied it yet", answer["seq"]),
            409 => eprintln!("not applied: {}", answer["error"].as_str().unwrap_or("")),
            _ => eprintln!("refused ({status}): {}", answer["error"].as_str().unwrap_or(&answer.to_string())),
        },
    }
    Ok(match status {
        200 | 202 => ExitCode::SUCCESS,
        409 => ExitCode::from(1),
        _ => ExitCode::from(2),
    })
}

impl AdminArgs {
    /// POSTs `body` to the admin API with the token and actor these arguments give; the
    /// status and the JSON answer.
    pub fn post(&self, path: &str, content_type: &str, body: &str) -> anyhow::Result<(u16, Value)> {
        let token = match &self.token_file {
            Some(f) => {
                std::fs::read_to_string(f).with_context(|| format!("--token-file: cannot read {}", f.display()))?
            }
            None => std::env::var("TALLY_ADMIN_TOKEN")
                .context("the admin token: give --token-file or set TALLY_ADMIN_TOKEN")?,
        };
        let actor = self.actor.clone().or_else(|| std::env::var("USER").ok()).unwrap_or_else(|| "cli".to_owned());
        post(&self.admin, path, token.trim(), &actor, content_type, body)
    }
}

/// POSTs `body` to the admin API at `base` (http://host:port); the status and the JSON answer.
fn post(
    base: &str,
    path: &str,
    token: &str,
    actor: &str,
    content_type: &str,
    body: &str,
) -> anyhow::Result<(u16, Value)> {
    let authority = base
        .strip_prefix("http://")
        .map(|a| a.trim_end_matches('/'))
        .filter(|a| !a.is_empty() && !a.contains('/'))
        .with_context(|| format!("--admin: \"{base}\" is not like http://127.0.0.1:9464"))?;
    let addr = authority
        .to_socket_addrs()
        .with_context(|| format!("--admin: cannot resolve {authority}"))?
        .next()
        .with_context(|| format!("--admin: {authority} resolves to no address"))?;
    let timeout = Duration::from_secs(15);
    let mut s =
        TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("cannot reach the admin API at {base}"))?;
    s.set_read_timeout(Some(timeout))?;
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Bearer {token}\r\nX-Tally-Actor: {actor}\r\n\
         Content-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).context("reading the admin API's answer")?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").context("the admin API's answer has no body")?;
    let status =
        head.split(' ').nth(1).and_then(|c| c.parse().ok()).with_context(|| format!("not an HTTP answer: {head:?}"))?;
    Ok((status, serde_json::from_str(body).unwrap_or(Value::String(body.to_owned()))))
}
