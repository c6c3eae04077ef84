//! Point-in-time copies of a whole data directory (`tally snapshot`), which every read
//! command (`verify`, `export`, `commissions`, `report`, `replay`) accepts as a data
//! directory: what an operator hands an auditor.
//!
//! What is copied, in this order, so that nothing in the copy is newer than the log in it
//! (attribution only ever runs behind the log):
//! 1. `attribution-snapshots/<position>/` — the worker's periodic snapshots, immutable once
//!    made: hard links when on the same filesystem, else copies; one that disappears while
//!    being copied (pruned) is skipped;
//! 2. `attribution/` — the attribution state;
//! 3. the log itself, at the top of the directory;
//! 4. the files the server keeps beside the log (`beside`, e.g. the links the admin API
//!    added, `links.toml`), after the log: such a file is written before the program
//!    change that records it is logged, so one copied after the log is never older than the
//!    log's last program; a restored server that finds it newer logs it as a change.
//!
//! The two databases are each copied by a RocksDB checkpoint when nobody holds them, or
//! through a secondary instance when a server or worker does (see `tally_log::snapshot`).
//! Nothing is written to the data directory copied from.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use crate::AuditError;

/// Where the log's copy is staged before its files move up into the target (a checkpoint
/// must be made into a directory that does not exist yet).
const LOG_STAGING: &str = ".log-staging";

fn io(path: &Path, source: std::io::Error) -> AuditError {
    AuditError::Io { path: path.to_path_buf(), source }
}

/// What [`take`] made.
#[derive(Debug, Clone)]
pub struct Summary {
    /// How the log was copied, and the last sequence in the copy.
    pub log: tally_log::SnapshotMethod,
    pub log_seq: u64,
    /// How the attribution state was copied and its position; `None` when no worker has run.
    pub attribution: Option<(tally_log::SnapshotMethod, u64)>,
    /// Periodic attribution snapshots copied, and skipped because they vanished (pruned).
    pub copied: usize,
    pub skipped: usize,
    /// The files of `beside` that existed and were copied.
    pub files: Vec<String>,
}

/// Copies `data_dir` into `out` (which must exist and be empty) as of one point in time,
/// with the files named in `beside` that exist at its top; see the module doc for the order.
/// `progress(seq)` is called now and then while the log is copied record by record (when a
/// server holds it).
pub fn take(
    data_dir: &Path,
    out: &Path,
    beside: &[&str],
    progress: &mut dyn FnMut(u64),
) -> Result<Summary, AuditError> {
    let (copied, skipped) = copy_attribution_snapshots(
        &tally_attribution::snapshots::dir(data_dir),
        &tally_attribution::snapshots::dir(out),
    )?;
    let state = tally_attribution::state_dir(data_dir);
    let attribution = if state.join("CURRENT").exists() {
        let method = tally_attribution::snapshot_state_to(&state, &tally_attribution::state_dir(out))?;
        Some(method)
    } else {
        None
    };
    let staging = out.join(LOG_STAGING);
    let log = tally_log::snapshot::snapshot_to_progress(data_dir, &staging, progress)?;
    for entry in std::fs::read_dir(&staging).map_err(|e| io(&staging, e))? {
        let entry = entry.map_err(|e| io(&staging, e))?;
        let to = out.join(entry.file_name());
        std::fs::rename(entry.path(), &to).map_err(|e| io(&to, e))?;
    }
    std::fs::remove_dir(&staging).map_err(|e| io(&staging, e))?;
    let mut files = Vec::new();
    for name in beside {
        let from = data_dir.join(name);
        match std::fs::copy(&from, out.join(name)) {
            Ok(_) => files.push((*name).to_owned()),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(io(&from, e)),
        }
    }

    // Read the copy back: it must open like a data directory, and attribution must not be
    // ahead of the log in it.
    let reader = tally_log::LogReader::open_secondary(out)?;
    let log_seq = reader.last_seq()?.unwrap_or(0);
    let attribution = match attribution {
        Some(method) => {
            let position =
                tally_attribution::LedgerReader::open(&tally_attribution::state_dir(out))?.checkpoint().position;
            if position > log_seq {
                return Err(AuditError::Inconsistent(format!(
                    "attribution at {position} is ahead of the log's {log_seq}"
                )));
            }
            Some((method, position))
        }
        None => None,
    };
    Ok(Summary { log, log_seq, attribution, copied, skipped, files })
}

/// Copies every `<20-digit position>/` directory; returns (copied, skipped because it
/// vanished mid-copy). Other names (a snapshot still being written under a temporary
/// name) are not snapshots yet and are left out.
fn copy_attribution_snapshots(from: &Path, to: &Path) -> Result<(usize, usize), AuditError> {
    let entries = match std::fs::read_dir(from) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok((0, 0)),
        Err(e) => return Err(io(from, e)),
    };
    let (mut copied, mut skipped) = (0, 0);
    for entry in entries {
        let entry = entry.map_err(|e| io(from, e))?;
        let name = entry.file_name();
        let is_position = name.to_str().is_some_and(|n| n.len() == 20 && n.bytes().all(|b| b.is_ascii_digit()));
        if !is_position {
            continue;
        }
        let target = to.join(&name);
        match copy_tree(&entry.path(), &target) {
            Ok(()) => copied += 1,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                let _ = std::fs::remove_dir_all(&target);
                skipped += 1;
            }
            Err(e) => return Err(io(&entry.path(), e)),
        }
    }
    Ok((copied, skipped))
}

/// Hard-links (or, across filesystems, copies) every file of `from` into a new `to`.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let (src, dst): (PathBuf, PathBuf) = (entry.path(), to.join(entry.file_name()));
        if entry.file_type()?.is_dir() {
            copy_tree(&src, &dst)?;
        } else if let Err(e) = std::fs::hard_link(&src, &dst) {
            if e.kind() == ErrorKind::NotFound {
                return Err(e);
            }
            std::fs::copy(&src, &dst)?;
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn only_finished_position_directories_are_copied() {
        let tmp = tempfile::tempdir().unwrap();
        let from = tmp.path().join("from");
        let done = from.join("00000000000000000042");
        std::fs::create_dir_all(done.join("sub")).unwrap();
        std::fs::write(done.join("CURRENT"), b"x").unwrap();
        std::fs::write(done.join("sub").join("f"), b"y").unwrap();
        std::fs::create_dir_all(from.join("00000000000000000099.tmp")).unwrap();
        let to = tmp.path().join("to");
        assert_eq!(copy_attribution_snapshots(&from, &to).unwrap(), (1, 0));
        assert_eq!(std::fs::read(to.join("00000000000000000042").join("sub").join("f")).unwrap(), b"y");
        assert!(!to.join("00000000000000000099.tmp").exists());
        // No snapshots directory at all is not an error.
        assert_eq!(copy_attribution_snapshots(&tmp.path().join("none"), &to).unwrap(), (0, 0));
    }

    #[test]
    fn a_snapshot_that_vanishes_is_reported_as_not_found() {
        let tmp = tempfile::tempdir().unwrap();
        let err = copy_tree(&tmp.path().join("gone"), &tmp.path().join("to")).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
    }
}
