//! Reports in another time zone: stats re-derived from the raw log, with days counted in the
//! zone asked for.
//!
//! The live stats are kept by days of the program's calendar (its `time_zone`), the days
//! caps reset on, so they cannot be re-bucketed into another zone afterwards. This re-runs
//! attribution over the log into an in-memory state that counts stats rows by the other
//! calendar (`State::count_stats_in`); the ledger it computes on the way is the ledger, and
//! is dropped. One caveat: a visitor key is the same within a program day, so a visitor
//! who clicks on both sides of a program-day boundary that falls inside one day of the zone
//! asked for counts as two unique clicks there.

use std::path::Path;

use tally_attribution::report::{report, GroupBy, ReportRow};
use tally_attribution::{apply, State};
use tally_log::LogReader;
use tally_model::time::Calendar;
use tally_model::Event;

use crate::AuditError;

/// Events applied between purges of what the in-memory state no longer needs.
const PURGE_EVERY: u64 = 1 << 16;

/// The report of days `from..=to` of `calendar`, grouped `by`, from every event in the log
/// of `data_dir`. `progress(seq)` is called after each batch.
pub fn report_in_zone(
    data_dir: &Path,
    calendar: Calendar,
    by: GroupBy,
    from: u32,
    to: u32,
    mut progress: impl FnMut(u64),
) -> Result<Vec<ReportRow>, AuditError> {
    let reader = LogReader::open_secondary(data_dir)?;
    let last = reader.last_seq()?.unwrap_or(0);
    let mut state = State::in_memory();
    state.count_stats_in(calendar);
    let mut since_purge = 0u64;
    tally_attribution::pipeline::for_each_batch(&reader, 1, last, |batch: &Vec<(u64, Event)>| {
        for (seq, event) in batch {
            apply(&mut state, *seq, event)?;
        }
        since_purge += batch.len() as u64;
        if since_purge >= PURGE_EVERY {
            since_purge = 0;
            state.commit()?;
        }
        if let Some((seq, _)) = batch.last() {
            progress(*seq);
        }
        Ok::<(), AuditError>(())
    })?;
    Ok(report(&state, by, from, to)?)
}
