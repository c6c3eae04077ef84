//! The `[log]` section of `tally.toml`: where the data directory is and how the writer
//! commits. The application crate composes it with the other sections; this module owns its
//! keys, defaults and validation.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{LogOptions, SyncPolicy};

/// `[log]` as written in the file. Every key has a default; unknown keys are errors.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// The data directory (log, attribution state, link overlay), relative to the config file.
    pub data_dir: String,
    /// `none` (WAL written: survives a killed process) or `batch` (fsync per group commit).
    pub sync: String,
    pub queue_capacity: usize,
    pub max_batch: usize,
    pub linger_us: u64,
    pub commit_on_park: bool,
}

impl Default for LogSection {
    fn default() -> Self {
        let d = LogOptions::default();
        LogSection {
            data_dir: "data".into(),
            sync: d.sync.as_str().into(),
            queue_capacity: d.queue_capacity,
            max_batch: d.max_batch,
            linger_us: d.linger.as_micros() as u64,
            commit_on_park: d.commit_on_park,
        }
    }
}

impl LogSection {
    /// The data directory (relative paths resolved against `base`, the config file's
    /// directory) and the writer's options. Every bad value is pushed onto `problems`, named
    /// by its key; what is returned then holds defaults in its place.
    pub fn validate(&self, base: &Path, problems: &mut Vec<String>) -> (PathBuf, LogOptions) {
        let sync = SyncPolicy::parse(&self.sync).unwrap_or_else(|| {
            problems.push(format!("log.sync: expected none or batch, got \"{}\"", self.sync));
            SyncPolicy::default()
        });
        if self.queue_capacity == 0 {
            problems.push("log.queue_capacity: must be at least 1".into());
        }
        if self.max_batch == 0 || self.max_batch > 65_536 {
            problems.push(format!("log.max_batch: must be 1-65536, got {}", self.max_batch));
        }
        if self.linger_us > 100_000 {
            problems.push(format!("log.linger_us: must be at most 100000 (100 ms), got {}", self.linger_us));
        }
        if self.data_dir.is_empty() {
            problems.push("log.data_dir: must not be empty".into());
        }
        let options = LogOptions {
            sync,
            queue_capacity: self.queue_capacity,
            max_batch: self.max_batch,
            linger: Duration::from_micros(self.linger_us),
            commit_on_park: self.commit_on_park,
        };
        (base.join(&self.data_dir), options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_the_writer_defaults() {
        let mut problems = Vec::new();
        let (dir, options) = LogSection::default().validate(Path::new("/etc/tally"), &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(dir, Path::new("/etc/tally/data"));
        let d = LogOptions::default();
        assert_eq!((options.sync, options.queue_capacity, options.max_batch), (d.sync, d.queue_capacity, d.max_batch));
        assert_eq!((options.linger, options.commit_on_park), (d.linger, d.commit_on_park));
    }

    #[test]
    fn every_bad_value_is_named() {
        let bad = LogSection {
            data_dir: String::new(),
            sync: "sometimes".into(),
            queue_capacity: 0,
            max_batch: 0,
            linger_us: 1_000_000,
            commit_on_park: true,
        };
        let mut problems = Vec::new();
        bad.validate(Path::new("."), &mut problems);
        let all = problems.join("\n");
        for key in ["log.data_dir", "log.sync", "log.queue_capacity", "log.max_batch", "log.linger_us"] {
            assert!(all.contains(key), "{key} not reported in:\n{all}");
        }
    }
}
