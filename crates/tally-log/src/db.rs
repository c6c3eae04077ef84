//! The database layer: RocksDB options, column families, opening, and the commit signal
//! readers in this process wait on. Everything else in the crate sits on this: the commit
//! core and the writer above it, readers, snapshots and test tools beside them.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, Options};

use crate::keys::{ALL_CFS, CF_BUS, CF_PRIVACY, CF_PROGRAM};
use crate::LogError;

pub(crate) type Db = Arc<rocksdb::DB>;

/// The options every column family of the log is opened with.
pub(crate) fn db_options() -> Options {
    let mut opts = Options::default();
    opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    opts.set_bottommost_compression_type(rocksdb::DBCompressionType::Zstd);
    opts.set_keep_log_file_num(4);
    opts
}

/// The log's column families every reader opens.
pub(crate) fn cf_descriptors() -> Vec<ColumnFamilyDescriptor> {
    ALL_CFS.iter().map(|name| ColumnFamilyDescriptor::new(*name, db_options())).collect()
}

/// The families a reader of the log in `dir` opens: every reader's, and `bus` and `program`
/// when the log has them (logs written before they existed do not, and a secondary cannot
/// create one).
pub(crate) fn reader_descriptors(dir: &Path) -> Vec<ColumnFamilyDescriptor> {
    let mut d = cf_descriptors();
    let existing = rocksdb::DB::list_cf(&db_options(), dir).unwrap_or_default();
    for name in [CF_BUS, CF_PROGRAM] {
        if existing.iter().any(|n| n == name) {
            d.push(ColumnFamilyDescriptor::new(name, db_options()));
        }
    }
    d
}

/// Every column family the primary opens: the readers', `privacy`, `bus` and `program`.
fn primary_descriptors() -> Vec<ColumnFamilyDescriptor> {
    let mut d = cf_descriptors();
    for name in [CF_PRIVACY, CF_BUS, CF_PROGRAM] {
        d.push(ColumnFamilyDescriptor::new(name, db_options()));
    }
    d
}

/// `descriptors`, plus any other column family the database in `dir` already has: RocksDB
/// opens a database for writing only with all of its column families. Logs written before
/// December 2026 have a `meta` family (consumer checkpoints, never used); it is opened,
/// left as it is, and never read.
pub(crate) fn with_existing(
    dir: &Path,
    options: &Options,
    mut descriptors: Vec<ColumnFamilyDescriptor>,
) -> Vec<ColumnFamilyDescriptor> {
    let existing = rocksdb::DB::list_cf(options, dir).unwrap_or_default();
    for name in existing {
        if name != rocksdb::DEFAULT_COLUMN_FAMILY_NAME && !descriptors.iter().any(|d| d.name() == name) {
            descriptors.push(ColumnFamilyDescriptor::new(name, Options::default()));
        }
    }
    descriptors
}

pub(crate) fn cf<'a>(db: &'a Db, name: &str) -> Result<&'a ColumnFamily, LogError> {
    db.cf_handle(name).ok_or_else(|| LogError::Corrupt(format!("column family {name} missing")))
}

/// Opens (creating if needed) the log's database in `dir` for writing. Also returns the
/// options, kept for their statistics object (RocksDB's stall counter lives there).
pub(crate) fn open_primary(dir: &Path) -> Result<(rocksdb::DB, Options), LogError> {
    std::fs::create_dir_all(dir).map_err(|e| open_error(dir, e))?;
    let mut opts = db_options();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    // One writer thread and small records: a larger memtable means fewer, bigger flushes.
    opts.set_write_buffer_size(64 << 20);
    opts.set_max_background_jobs(2);
    opts.set_bytes_per_sync(1 << 20);
    // Every family's memtable must flush before RocksDB may delete a WAL file, and `chain`
    // (8 bytes a record) and `privacy` (a few writes a day) fill theirs slowly: left alone,
    // they held every WAL file until RocksDB's own bound (4 × all write buffers, 2 GiB with
    // four families), a gigabyte of WAL after five million clicks. Past this size RocksDB
    // flushes the families that hold the oldest file.
    opts.set_max_total_wal_size(256 << 20);
    // Tickers only (no histograms or timers): the write-stall counter for
    // tally_log_rocksdb_stall_seconds_total, at the cost of a few per-core counters.
    opts.enable_statistics();
    opts.set_statistics_level(rocksdb::statistics::StatsLevel::ExceptHistogramOrTimers);
    let descriptors = with_existing(dir, &opts, primary_descriptors());
    let db = rocksdb::DB::open_cf_descriptors(&opts, dir, descriptors).map_err(|e| open_error(dir, e))?;
    Ok((db, opts))
}

/// Opens a log no one else holds, for tools that change it in place (test tools).
#[cfg(feature = "test-util")]
pub(crate) fn open_existing(dir: &Path) -> Result<rocksdb::DB, LogError> {
    let mut opts = db_options();
    opts.create_missing_column_families(true);
    let descriptors = with_existing(dir, &opts, primary_descriptors());
    rocksdb::DB::open_cf_descriptors(&opts, dir, descriptors).map_err(|e| open_error(dir, e))
}

pub(crate) fn open_error(path: &Path, e: impl std::fmt::Display) -> LogError {
    LogError::Open { path: path.display().to_string(), reason: e.to_string() }
}

/// What readers in this process can wait on: the newest committed sequence number, set and
/// signalled by the commit core after every commit.
pub(crate) struct Committed {
    pub(crate) seq: Mutex<u64>,
    pub(crate) cond: Condvar,
}

/// A directory of its own for a RocksDB secondary instance (its info log and manifest), in
/// the system's temp directory, removed when dropped. Keep it in a field declared after the
/// database: fields drop in order, and a database writes its info log as it closes, which
/// recreated the directory when it was removed first (hundreds were left in `/tmp`).
#[derive(Debug)]
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    /// Creates `{temp}/{prefix}-{pid}-{nanos}`.
    pub fn create(prefix: &str) -> std::io::Result<ScratchDir> {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let dir = std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(ScratchDir(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
