//! Reading and decoding the log on a thread of its own, so the thread that applies events
//! does nothing else: reading and decoding take about as long as applying, and a replay or
//! a catch-up has both cores to use.

use tally_log::LogReader;
use tally_model::Event;

use crate::AttributionError;

/// Events per message between the threads.
const BATCH: usize = 4096;
/// Messages in flight: enough to ride over a slow read, little memory.
const DEPTH: usize = 2;

type Batch = Vec<(u64, Event)>;

/// Calls `apply` with the decoded events `from..=to` of `reader`, in order, in batches; stops
/// at the first error (a log read, a record that does not decode, or `apply`'s own). Returns
/// the number of events passed to `apply`.
pub fn for_each_batch<E: From<AttributionError>>(
    reader: &LogReader,
    from: u64,
    to: u64,
    mut apply: impl FnMut(&[(u64, Event)]) -> Result<(), E>,
) -> Result<u64, E> {
    std::thread::scope(|scope| {
        let (tx, rx) = crossbeam_channel::bounded::<Result<Batch, AttributionError>>(DEPTH);
        // Applied batches go back to be freed here: a decoded click owns a dozen strings, and
        // freeing them on the thread that allocated them is cheaper and off the apply thread.
        let (spent_tx, spent_rx) = crossbeam_channel::bounded::<Batch>(DEPTH);
        scope.spawn(move || {
            let mut batch = Vec::with_capacity(BATCH);
            for item in reader.iter_from(from) {
                let decoded = item.map_err(AttributionError::from).and_then(|(seq, bytes)| {
                    tally_model::decode(&bytes)
                        .map(|e| (seq, e))
                        .map_err(|error| AttributionError::Record { seq, error })
                });
                match decoded {
                    Ok((seq, _)) if seq > to => break,
                    Ok(pair) => {
                        batch.push(pair);
                        if batch.len() == BATCH {
                            while spent_rx.try_recv().is_ok() {}
                            if tx.send(Ok(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)))).is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        // Everything before the bad record is applied first, so the caller
                        // stops exactly at it.
                        if !batch.is_empty() && tx.send(Ok(std::mem::take(&mut batch))).is_err() {
                            return;
                        }
                        let _ = tx.send(Err(e));
                        return;
                    }
                }
            }
            if !batch.is_empty() {
                let _ = tx.send(Ok(batch));
            }
        });
        let mut applied = 0u64;
        for batch in rx {
            let batch = batch?;
            apply(&batch)?;
            applied += batch.len() as u64;
            // Full (the reader is done or behind): free it here instead.
            let _ = spent_tx.try_send(batch);
        }
        Ok(applied)
    })
}
