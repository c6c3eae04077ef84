//! Periodic snapshots of the attribution state, kept so that a replay of a window starting
//! mid-log can begin from a state that was correct at that point instead of re-deriving
//! everything before it.
//!
//! A snapshot is a RocksDB checkpoint of the committed state (table files hard-linked, so
//! cheap) in `{data_dir}/attribution-snapshots/{position, 20 digits}`, where position is the
//! last event applied. It is written under a temporary name and renamed, so a directory with
//! a numeric name is always complete, and it is never modified afterwards: only read (by
//! [`State::open_snapshot`]) or deleted when it falls out of the retention.

use std::path::{Path, PathBuf};

use crate::state::State;
use crate::AttributionError;

/// Where the snapshots of a data directory live.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("attribution-snapshots")
}

/// How often to snapshot and how many to keep.
#[derive(Debug, Clone)]
pub struct SnapshotPolicy {
    pub dir: PathBuf,
    /// Take a snapshot each time the position crosses a multiple of this many events.
    pub every: u64,
    /// The newest this many are kept.
    pub keep: usize,
}

fn io(dir: &Path, e: std::io::Error) -> AttributionError {
    AttributionError::Open { dir: dir.to_path_buf(), reason: e.to_string() }
}

/// The complete snapshots in `dir`, oldest first, as `(position, path)`.
pub fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>, AttributionError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(dir, e)),
    };
    let mut out = Vec::new();
    for item in rd {
        let item = item.map_err(|e| io(dir, e))?;
        let name = item.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.len() == 20 && name.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(position) = name.parse() {
                out.push((position, item.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The newest snapshot whose position is below `seq`: replay can start there and apply
/// `position + 1 ..`.
pub fn latest_before(dir: &Path, seq: u64) -> Result<Option<(u64, PathBuf)>, AttributionError> {
    Ok(list(dir)?.into_iter().rev().find(|(p, _)| *p < seq))
}

/// Snapshots the committed `state` (at `position`) and prunes beyond `keep`.
pub fn take(state: &State, policy: &SnapshotPolicy, position: u64) -> Result<PathBuf, AttributionError> {
    std::fs::create_dir_all(&policy.dir).map_err(|e| io(&policy.dir, e))?;
    let fin = policy.dir.join(format!("{position:020}"));
    if fin.exists() {
        return Ok(fin);
    }
    let tmp = policy.dir.join(format!(".tmp-{position}"));
    if tmp.exists() {
        // Left by a worker killed mid-snapshot.
        std::fs::remove_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
    }
    state.snapshot_to(&tmp)?;
    #[cfg(feature = "test-util")]
    crate::testing::crash_point("snapshot_before_rename");
    std::fs::rename(&tmp, &fin).map_err(|e| io(&fin, e))?;
    let all = list(&policy.dir)?;
    let excess = all.len().saturating_sub(policy.keep.max(1));
    for (_, old) in all.into_iter().take(excess) {
        if let Err(e) = std::fs::remove_dir_all(&old) {
            tracing::warn!(dir = %old.display(), error = %e, "cannot remove an old attribution snapshot");
        }
    }
    Ok(fin)
}
