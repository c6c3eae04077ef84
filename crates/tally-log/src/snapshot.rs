//! Point-in-time copies of a RocksDB directory, for `tally snapshot`: the log's here, and the
//! attribution state's through the same [`copy_db`].
//!
//! Two ways, chosen by whether another process holds the database:
//! - **checkpoint** — nobody holds it: open it as the primary and take a RocksDB checkpoint
//!   (hard links to the immutable table files, instant, consistent by construction);
//! - **logical copy** — a server holds it (its `LOCK` is taken): open a secondary instance,
//!   catch up with the primary once, and copy every column family into a fresh database.
//!   A secondary changes only when told to catch up, so everything copied after that one
//!   catch-up is the same point in time, and a batch written with one `WriteBatch` is either
//!   wholly in the copy or not at all.

use std::path::Path;

use rocksdb::{checkpoint::Checkpoint, ColumnFamilyDescriptor, IteratorMode, Options, WriteBatch, WriteOptions};

use crate::db::{open_error, with_existing, ScratchDir};
use crate::LogError;

/// How [`copy_db`] made its copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotMethod {
    Checkpoint,
    LogicalCopy,
}

impl SnapshotMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotMethod::Checkpoint => "checkpoint",
            SnapshotMethod::LogicalCopy => "logical copy",
        }
    }
}

/// Bytes gathered into one write of a logical copy.
const COPY_BATCH_BYTES: usize = 4 << 20;

/// Copies the database at `src` into `out`, which must not exist yet. `options` and
/// `descriptors` must describe the database as its owner opens it.
pub fn copy_db(
    src: &Path,
    out: &Path,
    options: &dyn Fn() -> Options,
    descriptors: &dyn Fn() -> Vec<ColumnFamilyDescriptor>,
) -> Result<SnapshotMethod, LogError> {
    copy_db_progress(src, out, options, descriptors, &mut |_| {})
}

/// [`copy_db`], calling `progress(key)` with the last 8-byte key of the first column family
/// copied, now and then, while a logical copy runs (a checkpoint takes no time worth
/// showing). For the log, those keys are the events' sequence numbers.
pub fn copy_db_progress(
    src: &Path,
    out: &Path,
    options: &dyn Fn() -> Options,
    descriptors: &dyn Fn() -> Vec<ColumnFamilyDescriptor>,
    progress: &mut dyn FnMut(u64),
) -> Result<SnapshotMethod, LogError> {
    if !src.join("CURRENT").exists() {
        return Err(open_error(src, "no RocksDB database here (no CURRENT file)"));
    }
    if out.exists() {
        return Err(open_error(out, "snapshot target already exists"));
    }
    let opts = options();
    match rocksdb::DB::open_cf_descriptors(&opts, src, with_existing(src, &opts, descriptors())) {
        Ok(db) => {
            let write = |e: rocksdb::Error| LogError::Write(format!("checkpoint into {}: {e}", out.display()));
            Checkpoint::new(&db).and_then(|c| c.create_checkpoint(out)).map_err(write)?;
            Ok(SnapshotMethod::Checkpoint)
        }
        // Another process (a server, a worker) owns it: copy through a secondary instead.
        Err(e) if e.to_string().contains("LOCK") => {
            logical_copy(src, out, options, descriptors, progress)?;
            Ok(SnapshotMethod::LogicalCopy)
        }
        Err(e) => Err(open_error(src, e)),
    }
}

fn logical_copy(
    src: &Path,
    out: &Path,
    options: &dyn Fn() -> Options,
    descriptors: &dyn Fn() -> Vec<ColumnFamilyDescriptor>,
    progress: &mut dyn FnMut(u64),
) -> Result<(), LogError> {
    let scratch = ScratchDir::create("tally-snapshot").map_err(|e| open_error(&std::env::temp_dir(), e))?;
    let secondary_dir = scratch.path();
    // `scratch` outlives the closure, so both databases are closed before it goes.
    (|| {
        let mut opts = options();
        // A secondary must keep every file open: the primary may delete ones it compacts away.
        opts.set_max_open_files(-1);
        let source = rocksdb::DB::open_cf_descriptors_as_secondary(&opts, src, secondary_dir, descriptors())
            .map_err(|e| open_error(src, e))?;
        source.try_catch_up_with_primary().map_err(|e| LogError::Read(e.to_string()))?;

        let mut opts = options();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let names: Vec<String> = descriptors().iter().map(|d| d.name().to_owned()).collect();
        let target = rocksdb::DB::open_cf_descriptors(&opts, out, descriptors()).map_err(|e| open_error(out, e))?;
        // No WAL: the copy is flushed to table files below before it counts as made.
        let mut wo = WriteOptions::default();
        wo.disable_wal(true);
        let write = |e: rocksdb::Error| LogError::Write(format!("copy into {}: {e}", out.display()));
        for name in &names {
            let missing = || LogError::Corrupt(format!("column family {name} missing"));
            let (from, to) = (source.cf_handle(name).ok_or_else(missing)?, target.cf_handle(name).ok_or_else(missing)?);
            let mut batch = WriteBatch::default();
            for item in source.iterator_cf(from, IteratorMode::Start) {
                let (k, v) = item.map_err(|e| LogError::Read(e.to_string()))?;
                batch.put_cf(to, &k, v);
                if batch.size_in_bytes() >= COPY_BATCH_BYTES {
                    target.write_opt(std::mem::take(&mut batch), &wo).map_err(write)?;
                    // The first family is the one worth showing (the log's events).
                    if let Some(seq) = crate::keys::parse_seq_key(&k).filter(|_| *name == names[0]) {
                        progress(seq);
                    }
                }
            }
            target.write_opt(batch, &wo).map_err(write)?;
            target.flush_cf(to).map_err(write)?;
        }
        Ok(())
    })()
}

/// Snapshots the log in `data_dir` into `out` (which must not exist): a database that
/// [`crate::LogReader::open_secondary`] and [`crate::Log::open`] accept like the original.
///
/// The copy holds no visitor day keys (the `privacy` family): a snapshot is what auditors
/// get, and with a day's key whoever holds it could test a guessed IP and user agent against
/// that day's visitor keys (decision 0041). Serving a restored copy creates new day keys, so
/// a visitor seen before and after the restore on its day counts as two unique clicks.
pub fn snapshot_to(data_dir: &Path, out: &Path) -> Result<SnapshotMethod, LogError> {
    snapshot_to_progress(data_dir, out, &mut |_| {})
}

/// [`snapshot_to`], calling `progress(seq)` as a logical copy goes (see [`copy_db_progress`]).
pub fn snapshot_to_progress(
    data_dir: &Path,
    out: &Path,
    progress: &mut dyn FnMut(u64),
) -> Result<SnapshotMethod, LogError> {
    // A logical copy copies what a reader opens (`program` and `bus` included: a restored
    // edge rebuilds its program from the one, a merged log's origins are in the other); a
    // checkpoint copies every family.
    let families = || crate::db::reader_descriptors(data_dir);
    let method = copy_db_progress(data_dir, out, &crate::db::db_options, &families, progress)?;
    if method == SnapshotMethod::Checkpoint {
        let opts = crate::db::db_options();
        let descriptors = crate::db::with_existing(out, &opts, crate::db::cf_descriptors());
        let mut db = rocksdb::DB::open_cf_descriptors(&opts, out, descriptors).map_err(|e| open_error(out, e))?;
        if db.cf_handle(crate::keys::CF_PRIVACY).is_some() {
            db.drop_cf(crate::keys::CF_PRIVACY)
                .map_err(|e| LogError::Write(format!("dropping day keys from {}: {e}", out.display())))?;
        }
    }
    Ok(method)
}
