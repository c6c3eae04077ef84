//! The `[attribution]` section of `tally.toml`: where the worker runs and how often it
//! commits and snapshots. The application crate composes it with the other sections.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{SnapshotPolicy, WorkerOptions};

/// `[attribution]` as written in the file. Every key has a default; unknown keys are errors.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AttributionSection {
    pub in_process: bool,
    pub commit_every: usize,
    pub sync: bool,
    pub snapshot_every: u64,
    pub snapshots_keep: usize,
}

impl Default for AttributionSection {
    fn default() -> Self {
        AttributionSection {
            in_process: true,
            commit_every: 65_536,
            sync: false,
            snapshot_every: 1_000_000,
            snapshots_keep: 16,
        }
    }
}

/// The validated section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttributionConfig {
    /// Run the worker inside the server; false when `tally attribute` runs it instead.
    pub in_process: bool,
    pub commit_every: usize,
    pub sync: bool,
    /// Snapshot the attribution state every this many events (0 = never), for replays of
    /// windows that start mid-log.
    pub snapshot_every: u64,
    pub snapshots_keep: usize,
}

impl AttributionSection {
    /// Every bad value is pushed onto `problems`, named by its key.
    pub fn validate(&self, problems: &mut Vec<String>) -> AttributionConfig {
        if self.commit_every == 0 || self.commit_every > 1_000_000 {
            problems.push(format!("attribution.commit_every: must be 1-1000000, got {}", self.commit_every));
        }
        if self.snapshot_every > 0 && self.snapshots_keep == 0 {
            problems.push("attribution.snapshots_keep: must be at least 1 when snapshot_every is set, got 0".into());
        }
        AttributionConfig {
            in_process: self.in_process,
            commit_every: self.commit_every,
            sync: self.sync,
            snapshot_every: self.snapshot_every,
            snapshots_keep: self.snapshots_keep,
        }
    }
}

impl AttributionConfig {
    /// The worker's options for the data directory `data_dir`.
    pub fn worker_options(&self, data_dir: &Path) -> WorkerOptions {
        let snapshots = (self.snapshot_every > 0).then(|| SnapshotPolicy {
            dir: crate::snapshots::dir(data_dir),
            every: self.snapshot_every,
            keep: self.snapshots_keep,
        });
        WorkerOptions { commit_every: self.commit_every, sync: self.sync, snapshots, ..WorkerOptions::default() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bad_value_is_named_and_the_defaults_are_valid() {
        let mut problems = Vec::new();
        let ok = AttributionSection::default().validate(&mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        assert!(ok.in_process);
        let bad = AttributionSection { commit_every: 0, snapshots_keep: 0, ..AttributionSection::default() };
        bad.validate(&mut problems);
        let all = problems.join("\n");
        assert!(all.contains("attribution.commit_every") && all.contains("attribution.snapshots_keep"), "{all}");
    }

    #[test]
    fn snapshots_go_under_the_data_directory_only_when_asked_for() {
        let dir = Path::new("/var/lib/tally");
        let mut problems = Vec::new();
        let on = AttributionSection::default().validate(&mut problems).worker_options(dir);
        let policy = on.snapshots.expect("snapshots are on by default");
        assert_eq!(policy.dir, crate::snapshots::dir(dir));
        assert_eq!((policy.every, policy.keep), (1_000_000, 16));
        let off = AttributionSection { snapshot_every: 0, ..AttributionSection::default() };
        assert!(off.validate(&mut problems).worker_options(dir).snapshots.is_none());
    }
}
