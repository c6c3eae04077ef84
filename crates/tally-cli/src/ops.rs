//! Operations plumbing of the binary: the tracing subscriber (with a filter the admin API can
//! change at run time), the admin API's hooks into attribution stats, and `tally health`.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::Context;
use serde_json::{json, Value};
use tally_attribution::report::{report, GroupBy, ReportRow};
use tally_attribution::{ledger, State};
use tally_edge::admin::{HookError, LogLevel, StatsFn};
use tally_edge::config::LogFormat;
use tally_edge::Config;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

/// The installed subscriber's filter handle and the filter's text.
struct Filter {
    handle: reload::Handle<EnvFilter, Registry>,
    current: Mutex<String>,
}

static FILTER: OnceLock<Filter> = OnceLock::new();

/// Installs the global subscriber: `TALLY_LOG` or `logging.level` as the filter (reloadable),
/// pretty or JSON lines on stderr. A second call (tests, `attribute` after `serve`) is a no-op.
pub fn init_tracing(config: &Config) {
    let text = std::env::var("TALLY_LOG").ok().filter(|v| EnvFilter::try_new(v).is_ok());
    let text = text.unwrap_or_else(|| config.log_level.clone());
    let filter = EnvFilter::try_new(&text).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    // Colours only for a person at a terminal, not for journald or a log shipper.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = match config.log_format {
        LogFormat::Json => tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr).boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer().with_ansi(ansi).with_writer(std::io::stderr).boxed(),
    };
    if tracing_subscriber::registry().with(filter).with(fmt).try_init().is_ok() {
        let _ = FILTER.set(Filter { handle, current: Mutex::new(text) });
    }
}

/// The admin API's view of the filter.
#[derive(Debug)]
pub struct RuntimeLevel;

impl LogLevel for RuntimeLevel {
    fn get(&self) -> String {
        FILTER.get().and_then(|f| f.current.lock().ok().map(|c| c.clone())).unwrap_or_default()
    }

    fn set(&self, text: &str) -> Result<(), String> {
        let f = FILTER.get().ok_or("no reloadable subscriber is installed")?;
        // Bounded so a request cannot hand the subscriber an enormous filter.
        if text.is_empty() || text.len() > 512 {
            return Err("must be 1-512 characters, e.g. \"info\" or \"info,tally_edge=debug\"".into());
        }
        let filter = EnvFilter::try_new(text).map_err(|e| format!("not a tracing filter: {e}"))?;
        f.handle.reload(filter).map_err(|e| e.to_string())?;
        if let Ok(mut c) = f.current.lock() {
            *c = text.to_owned();
        }
        Ok(())
    }
}

/// `GET /admin/stats`: the attribution stats of `data_dir` per offer and per affiliate,
/// read through a secondary instance (the worker, in this process or another, keeps
/// writing).
pub fn stats_hook(data_dir: PathBuf) -> Arc<StatsFn> {
    Arc::new(move |from: Option<&str>, to: Option<&str>| stats(&data_dir, from, to))
}

fn stats(data_dir: &Path, from: Option<&str>, to: Option<&str>) -> Result<Value, HookError> {
    let day = |name: &str, v: Option<&str>, default: u32| match v {
        None => Ok(default),
        Some(s) => ledger::parse_day(s)
            .ok_or_else(|| HookError::new(400, format!("{name}: \"{s}\" is not a date like 2026-11-23"))),
    };
    let (from, to) = (day("from", from, 0)?, day("to", to, u32::MAX)?);
    if from > to {
        return Err(HookError::new(400, "from is after to"));
    }
    let state = State::open_reader(&tally_attribution::state_dir(data_dir))
        .map_err(|e| HookError::new(503, format!("attribution state unavailable: {e}")))?;
    let rows = |by| {
        report(&state, by, from, to)
            .map(|rows| rows.iter().map(row_json).collect::<Vec<_>>())
            .map_err(|e| HookError::new(500, format!("cannot read stats: {e}")))
    };
    let day_or_null = |d: u32, edge: u32| if d == edge { Value::Null } else { ledger::format_day(d).into() };
    Ok(json!({
        "from": day_or_null(from, 0),
        "to": day_or_null(to, u32::MAX),
        "attributed_through_seq": state.checkpoint().position,
        "by_offer": rows(GroupBy::Offer)?,
        "by_affiliate": rows(GroupBy::Affiliate)?,
    }))
}

fn row_json(r: &ReportRow) -> Value {
    // Money as exact decimal strings, as everywhere else.
    let money = |v: i64| match r.currency {
        Some(c) => tally_model::format_minor(v, c),
        None => v.to_string(),
    };
    json!({
        "key": r.key,
        "currency": r.currency.map(|c| c.code().to_owned()),
        "clicks": r.clicks,
        "unique_clicks": r.unique_clicks,
        "non_human_clicks": r.non_human_clicks,
        "conversions": r.conversions,
        "revenue": money(r.revenue),
        "payout": money(r.payout),
        "epc": r.epc().map(money),
    })
}

/// `tally health --url http://HOST:PORT/PATH`: exits 0 when the URL answers 200 within the
/// timeout. The container image has no curl; this is its HEALTHCHECK.
pub fn health(url: &str, timeout: Duration) -> anyhow::Result<ExitCode> {
    let rest = url.strip_prefix("http://").context("--url: only http:// URLs are supported")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        anyhow::bail!("--url: \"{url}\" is not a URL like http://127.0.0.1:9464/healthz");
    }
    let addr = authority
        .to_socket_addrs()
        .with_context(|| format!("--url: cannot resolve {authority} (give HOST:PORT)"))?
        .next()
        .with_context(|| format!("--url: {authority} resolves to no address"))?;
    match probe(addr, authority, path, timeout) {
        Ok(200) => {
            println!("healthy: {url} answered 200");
            Ok(ExitCode::SUCCESS)
        }
        Ok(status) => {
            eprintln!("unhealthy: {url} answered {status}");
            Ok(ExitCode::FAILURE)
        }
        Err(e) => {
            eprintln!("unhealthy: {url}: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn probe(addr: std::net::SocketAddr, host: &str, path: &str, timeout: Duration) -> std::io::Result<u16> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: tally-health\r\n\r\n")?;
    // The status line is all we need; it fits in the first read.
    let mut buf = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        let k = s.read(&mut buf[n..])?;
        if k == 0 {
            break;
        }
        n += k;
    }
    let line = String::from_utf8_lossy(&buf[..n]);
    line.split(' ')
        .nth(1)
        .and_then(|c| c.get(..3))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {line:?}")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn health_refuses_what_is_not_an_http_url() {
        for bad in ["https://127.0.0.1:1/healthz", "127.0.0.1:1", "http:///healthz", "http://127.0.0.1:1/a b"] {
            assert!(health(bad, Duration::from_millis(200)).is_err(), "{bad}");
        }
    }

    #[test]
    fn health_fails_when_nothing_listens() {
        // Bind then drop: the port is free and (almost surely) refused.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let code = health(&format!("http://127.0.0.1:{port}/healthz"), Duration::from_millis(500)).unwrap();
        assert_eq!(code, ExitCode::FAILURE);
    }
}
