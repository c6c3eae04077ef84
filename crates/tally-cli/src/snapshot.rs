//! `tally snapshot --data-dir DIR --out DIR2`: a point-in-time copy of a data directory that
//! every read command (`verify`, `export`, `commissions`, `report`, `replay`) accepts as a
//! data directory, for handing to an auditor.
//!
//! What is copied, in this order, so that nothing in the copy is newer than the log in it
//! (attribution only ever runs behind the log):
//! 1. `attribution-snapshots/<position>/` — the worker's periodic snapshots, immutable once
//!    made: hard links when on the same filesystem, else copies; one that disappears while
//!    being copied (pruned) is skipped;
//! 2. `attribution/` — the attribution state;
//! 3. the log itself, at the top of the directory.
//!
//! The two databases are each copied by a RocksDB checkpoint when nobody holds them, or
//! through a secondary instance when a server or worker does (see `tally_log::snapshot`).

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

/// Where the log's copy is staged before its files move up into `--out` (a checkpoint must
/// be made into a directory that does not exist yet).
const LOG_STAGING: &str = ".log-staging";

pub fn snapshot(data_dir: &Path, out: &Path) -> anyhow::Result<ExitCode> {
    if !data_dir.join("CURRENT").exists() {
        anyhow::bail!("--data-dir {}: no Tally log here (no RocksDB CURRENT file)", data_dir.display());
    }
    match std::fs::read_dir(out) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                anyhow::bail!("--out {}: exists and is not empty; give a new or empty directory", out.display());
            }
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("--out {}", out.display())),
    }
    std::fs::create_dir_all(out).with_context(|| format!("--out {}: cannot create it", out.display()))?;
    let made = take(data_dir, out);
    if made.is_err() {
        // Leave nothing half-made that a later command could mistake for a snapshot.
        let _ = std::fs::remove_dir_all(out);
        let _ = std::fs::create_dir_all(out);
    }
    let summary = made?;
    println!("snapshot of {} in {}", data_dir.display(), out.display());
    println!("log            {} (up to sequence {})", summary.log.as_str(), summary.log_seq);
    match summary.attribution {
        Some((method, position)) => println!("attribution    {} (at position {position})", method.as_str()),
        None => println!("attribution    none (no worker has run on this data directory)"),
    }
    println!("attribution snapshots {} copied, {} skipped (removed while copying)", summary.copied, summary.skipped);
    Ok(ExitCode::SUCCESS)
}

struct Summary {
    log: tally_log::SnapshotMethod,
    log_seq: u64,
    attribution: Option<(tally_log::SnapshotMethod, u64)>,
    copied: usize,
    skipped: usize,
}

fn take(data_dir: &Path, out: &Path) -> anyhow::Result<Summary> {
    let (copied, skipped) = copy_attribution_snapshots(
        &tally_attribution::snapshots::dir(data_dir),
        &tally_attribution::snapshots::dir(out),
    )?;
    let state = tally_attribution::state_dir(data_dir);
    let attribution = if state.join("CURRENT").exists() {
        let method = tally_attribution::snapshot_state_to(&state, &tally_attribution::state_dir(out))
            .context("cannot snapshot the attribution state")?;
        Some(method)
    } else {
        None
    };
    let staging = out.join(LOG_STAGING);
    let log = tally_log::snapshot_to(data_dir, &staging).context("cannot snapshot the log")?;
    for entry in std::fs::read_dir(&staging).with_context(|| format!("{}", staging.display()))? {
        let entry = entry?;
        let to = out.join(entry.file_name());
        std::fs::rename(entry.path(), &to).with_context(|| format!("cannot move {} into place", to.display()))?;
    }
    std::fs::remove_dir(&staging).with_context(|| format!("{}", staging.display()))?;

    // Read the copy back: it must open like a data directory, and attribution must not be
    // ahead of the log in it.
    let reader = tally_log::LogReader::open_secondary(out)?;
    let log_seq = reader.last_seq()?.unwrap_or(0);
    let attribution = match attribution {
        Some(method) => {
            let position =
                tally_attribution::LedgerReader::open(&tally_attribution::state_dir(out))?.checkpoint().position;
            if position > log_seq {
                anyhow::bail!("inconsistent snapshot: attribution at {position} is ahead of the log's {log_seq}");
            }
            Some((method, position))
        }
        None => None,
    };
    Ok(Summary { log, log_seq, attribution, copied, skipped })
}

/// Copies every `<20-digit position>/` directory; returns (copied, skipped because it
/// vanished mid-copy). Other names (a snapshot still being written under a temporary
/// name) are not snapshots yet and are left out.
fn copy_attribution_snapshots(from: &Path, to: &Path) -> anyhow::Result<(usize, usize)> {
    let entries = match std::fs::read_dir(from) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok((0, 0)),
        Err(e) => return Err(e).with_context(|| format!("{}", from.display())),
    };
    let (mut copied, mut skipped) = (0, 0);
    for entry in entries {
        let entry = entry?;
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
            Err(e) => return Err(e).with_context(|| format!("cannot copy {}", entry.path().display())),
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
