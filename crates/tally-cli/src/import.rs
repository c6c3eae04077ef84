//! `tally import`: a spreadsheet or JSON Lines file of affiliates, groups, coupons or links,
//! sent to the running server's bulk import (`POST /admin/import`), which checks it as a
//! whole and logs it as one program edit, or refuses it naming every bad row.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::decide::AdminArgs;
use crate::output::{print_json, OutputFormat};

/// What a CSV file's rows are.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ImportType {
    Affiliates,
    Groups,
    Coupons,
    Links,
}

impl ImportType {
    fn name(self) -> &'static str {
        match self {
            ImportType::Affiliates => "affiliates",
            ImportType::Groups => "groups",
            ImportType::Coupons => "coupons",
            ImportType::Links => "links",
        }
    }
}

pub fn import(
    file: &Path,
    kind: Option<ImportType>,
    dry_run: bool,
    reassign: bool,
    admin: &AdminArgs,
) -> anyhow::Result<ExitCode> {
    let ext = file.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let content_type = match ext.as_str() {
        "csv" => "text/csv",
        "jsonl" | "ndjson" => "application/x-ndjson",
        "json" => "application/json",
        other => bail!("{}: \"{other}\" is not .csv, .jsonl, .ndjson or .json", file.display()),
    };
    if content_type == "text/csv" && kind.is_none() {
        bail!("--type: a CSV file's rows are affiliates, groups, coupons or links: say which");
    }
    let body = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let mut query = Vec::new();
    if let Some(k) = kind {
        query.push(format!("type={}", k.name()));
    }
    if dry_run {
        query.push("dry_run=true".to_owned());
    }
    if reassign {
        query.push("reassign=true".to_owned());
    }
    let path = if query.is_empty() { "/admin/import".to_owned() } else { format!("/admin/import?{}", query.join("&")) };
    let (status, answer) = admin.post(&path, content_type, &body)?;
    if admin.format == OutputFormat::Json {
        print_json(&json!({ "ok": status == 200, "status": status, "answer": answer }))?;
    } else {
        match status {
            200 if dry_run => println!("valid: would put {}", counts(&answer["would_put"])),
            200 => println!("imported: {} (log sequence {})", counts(&answer["put"]), answer["seq"]),
            400 if answer["problems"].is_array() => {
                eprintln!("{}", answer["error"].as_str().unwrap_or("import refused"));
                for p in answer["problems"].as_array().into_iter().flatten() {
                    match p["row"].as_u64() {
                        Some(row) => eprintln!("  row {row}: {}", p["problem"].as_str().unwrap_or(&p.to_string())),
                        None => eprintln!("  {}", p["problem"].as_str().unwrap_or(&p.to_string())),
                    }
                }
            }
            _ => eprintln!("refused ({status}): {}", answer["error"].as_str().unwrap_or(&answer.to_string())),
        }
    }
    Ok(match status {
        200 => ExitCode::SUCCESS,
        400 if answer["problems"].is_array() => ExitCode::from(1),
        _ => ExitCode::from(2),
    })
}

fn counts(v: &Value) -> String {
    ["affiliates", "groups", "links", "coupons"]
        .iter()
        .filter_map(|k| v[*k].as_u64().filter(|n| *n > 0).map(|n| format!("{n} {k}")))
        .collect::<Vec<_>>()
        .join(", ")
}
