//! Personal data on the edge: the day keys of visitor pseudonyms, and the privacy
//! operations (erasure, retention) run beside serving.
//!
//! Every click carries a visitor key (a keyed hash of offer, affiliate, IP and user agent)
//! so attribution counts unique clicks without reading personal fields, which may be erased
//! later. The key of a day of the program's calendar is random and kept by the log only
//! while that day's personal fields are (see `tally_log`'s `privacy`). Clicks look it up
//! here, in memory; [`DayKeys::prepare`] loads yesterday's, today's and tomorrow's off the
//! runtime's threads, so a click only reads the database for a day nobody prepared (the
//! program's time zone changed a moment ago).

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tally_log::{Erasure, ErasureReport, Log, RetentionReport};
use tally_model::Program;

use crate::secrets::{Secrets, SecretsConfig};
use crate::ReloadError;

/// The name, in the secrets store, of the customer key (`TALLY_SECRET_CUSTOMER_KEY`).
pub const CUSTOMER_KEY_SECRET: &str = "customer-key";

/// The key of customer pseudonyms on this edge's conversions (`tally_model::CustomerKey`):
/// derived from the secret [`CUSTOMER_KEY_SECRET`] when the store has it, else the log's
/// own random key. Every edge of a cluster must have the same one, and so must a log
/// restored from a snapshot (which leaves the log's key behind): a customer whose
/// pseudonym changed is a new customer to lifetime commissions. Blocking.
pub fn customer_secret(secrets: &SecretsConfig, log: &Log) -> Result<[u8; 32], ReloadError> {
    let store = Secrets::load(secrets)?;
    match store.get(CUSTOMER_KEY_SECRET) {
        Some(value) if value.trim().len() < 16 => Err(ReloadError::Read {
            path: format!("secret {CUSTOMER_KEY_SECRET}"),
            reason: "shorter than 16 characters: use a long random value (openssl rand -hex 32)".into(),
        }),
        Some(value) => Ok(blake3::derive_key("tally customer key v1", value.trim().as_bytes())),
        None => Ok(log.customer_key()?),
    }
}

/// The day keys in use: at most a handful of days.
pub(crate) struct DayKeys {
    keys: ArcSwap<Vec<(u32, [u8; 32])>>,
}

impl DayKeys {
    pub(crate) fn new() -> DayKeys {
        DayKeys { keys: ArcSwap::from_pointee(Vec::new()) }
    }

    /// The key of `day`. If the log cannot give one (its database refuses writes), a random
    /// key for this process: unique clicks of that day may then count a visitor twice,
    /// which is better than a pseudonym anyone could recompute.
    pub(crate) fn get(&self, log: &Log, day: u32) -> [u8; 32] {
        if let Some((_, k)) = self.keys.load().iter().find(|(d, _)| *d == day) {
            return *k;
        }
        let key = log.day_key(day).unwrap_or_else(|e| {
            tally_telemetry::error_limited!(error = %e, day, "cannot store a visitor day key; using one for this process");
            rand::random()
        });
        self.insert(day, key);
        key
    }

    fn insert(&self, day: u32, key: [u8; 32]) {
        self.keys.rcu(|keys| {
            let mut keys: Vec<_> = keys.iter().filter(|(d, _)| *d != day).copied().collect();
            keys.push((day, key));
            // Keep the newest few days: clicks only ever need today's (and near midnight,
            // a neighbour's).
            keys.sort_unstable_by_key(|(d, _)| std::cmp::Reverse(*d));
            keys.truncate(4);
            keys
        });
    }

    /// Loads the keys of yesterday, today and tomorrow in `program`'s calendar. Blocking.
    pub(crate) fn prepare(&self, log: &Log, program: &Program, now_ms: u64) {
        let today = program.calendar.day_of(now_ms);
        for day in [today.saturating_sub(1), today, today + 1] {
            match log.day_key(day) {
                Ok(key) => self.insert(day, key),
                Err(e) => tally_telemetry::error_limited!(error = %e, day, "cannot load a visitor day key"),
            }
        }
    }
}

/// How often the privacy task looks at the day keys and at retention.
const TICK: Duration = Duration::from_secs(60);
/// How often retention runs when configured.
const RETENTION_EVERY: Duration = Duration::from_secs(3600);

impl crate::Edge {
    /// Erases the personal fields `what` names (see [`Erasure`]). Reads the whole log, on a
    /// blocking thread.
    pub async fn erase(self: &Arc<Self>, what: Erasure) -> Result<ErasureReport, tally_log::LogError> {
        let log = self.log.clone();
        let report = tokio::task::spawn_blocking(move || log.erase(&what))
            .await
            .map_err(|e| tally_log::LogError::Write(format!("erasure stopped: {e}")))??;
        tracing::info!(erased = report.erased, scanned = report.scanned, "erased personal fields on request");
        self.metrics.personal_erased(report.erased);
        Ok(report)
    }

    /// Erases the personal fields of events older than `days` days, on a blocking thread.
    pub async fn apply_retention(self: &Arc<Self>, days: u32) -> Result<RetentionReport, tally_log::LogError> {
        let log = self.log.clone();
        let cutoff = crate::now_ms().saturating_sub(u64::from(days) * 86_400_000);
        let report = tokio::task::spawn_blocking(move || log.apply_retention(cutoff))
            .await
            .map_err(|e| tally_log::LogError::Write(format!("retention stopped: {e}")))??;
        if report.records.erased > 0 || report.day_keys_deleted > 0 {
            tracing::info!(
                erased = report.records.erased,
                day_keys_deleted = report.day_keys_deleted,
                floor = report.floor,
                "retention erased personal fields"
            );
        }
        self.metrics.personal_erased(report.records.erased);
        Ok(report)
    }

    /// Runs for the server's life: keeps the day keys of the days around now loaded and,
    /// with `privacy.retention_days` set, erases what is past retention once an hour.
    pub async fn privacy_task(self: Arc<Self>) {
        let mut last_retention: Option<tokio::time::Instant> = None;
        loop {
            let edge = Arc::clone(&self);
            let _ = tokio::task::spawn_blocking(move || {
                edge.day_keys.prepare(&edge.log, &edge.program.load(), crate::now_ms());
            })
            .await;
            let days = self.config.retention_days;
            if days > 0 && last_retention.is_none_or(|t| t.elapsed() >= RETENTION_EVERY) {
                last_retention = Some(tokio::time::Instant::now());
                if let Err(e) = self.apply_retention(days).await {
                    tally_telemetry::error_limited!(error = %e, "retention pass failed; retrying in an hour");
                }
            }
            tokio::time::sleep(TICK).await;
        }
    }
}
