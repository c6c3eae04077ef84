//! Reading and decoding the log on a thread of its own, so the thread that applies events
//! does nothing else: reading and decoding take about as long as applying, and a replay or
//! a catch-up has both cores to use.
//!
//! What the decode thread hands over is a [`Batch`]: full [`Event`]s for readers that need
//! every field (audit replay), or a [`ClickBatch`] with only what attribution reads of a
//! click, copied out of the record into one buffer, and its visitor key already hashed.
//! Spent batches go back to the decode thread to be cleared and refilled, so in the steady
//! state a `ClickBatch` allocates nothing.

use tally_log::LogReader;
use tally_model::{ClickId, Event, EventView};

use crate::engine::ClickIn;
use crate::AttributionError;

/// Events per message between the threads.
const BATCH: usize = 4096;
/// Batches in flight: enough for the decode thread to keep working through a commit on the
/// apply thread (8 × 4096 events, half a commit; 2 left it idle a tenth of the run), a few
/// MiB.
const DEPTH: usize = 8;

/// Decoded events as the decode thread hands them over.
pub trait Batch: Default + Send {
    /// Decodes the record at `seq` onto the end of the batch.
    fn push(&mut self, seq: u64, record: &[u8]) -> Result<(), AttributionError>;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Empties the batch for reuse, keeping its memory.
    fn clear(&mut self);
}

impl Batch for Vec<(u64, Event)> {
    fn push(&mut self, seq: u64, record: &[u8]) -> Result<(), AttributionError> {
        let event = tally_model::decode(record).map_err(|error| AttributionError::Record { seq, error })?;
        Vec::push(self, (seq, event));
        Ok(())
    }

    fn len(&self) -> usize {
        Vec::len(self)
    }

    fn clear(&mut self) {
        Vec::clear(self);
    }
}

/// Events for attribution: clicks reduced to what [`crate::engine::apply_click`] reads,
/// other events whole.
#[derive(Debug, Default)]
pub struct ClickBatch {
    /// The text of the batch's clicks (offer, affiliate, sub1, link), end to end.
    text: String,
    items: Vec<(u64, Item)>,
}

#[derive(Debug)]
enum Item {
    Click(Slots),
    /// Boxed: other events are rare, and a click's slot is a quarter of an event's size.
    Event(Box<Event>),
}

/// A click in a [`ClickBatch`]: its text as ranges of the batch's `text`.
#[derive(Debug)]
struct Slots {
    click_id: ClickId,
    ts_ms: u64,
    offer: (u32, u32),
    affiliate: (u32, u32),
    sub1: (u32, u32),
    human: bool,
    prior_click: Option<ClickId>,
    visitor: u128,
    link: (u32, u32),
}

/// An event of a [`ClickBatch`].
#[derive(Debug)]
pub enum Decoded<'a> {
    Click(ClickIn<'a>),
    Event(&'a Event),
}

impl ClickBatch {
    /// The batch's events in log order.
    pub fn iter(&self) -> impl Iterator<Item = Result<(u64, Decoded<'_>), AttributionError>> + '_ {
        self.items.iter().map(move |(seq, item)| match item {
            Item::Event(e) => Ok((*seq, Decoded::Event(e))),
            Item::Click(s) => {
                let text = |(a, b): (u32, u32)| {
                    self.text
                        .get(a as usize..b as usize)
                        .ok_or_else(|| AttributionError::Corrupt(format!("pipeline batch text at {seq}")))
                };
                Ok((
                    *seq,
                    Decoded::Click(ClickIn {
                        click_id: s.click_id,
                        ts_ms: s.ts_ms,
                        offer: text(s.offer)?,
                        affiliate: text(s.affiliate)?,
                        sub1: text(s.sub1)?,
                        human: s.human,
                        prior_click: s.prior_click,
                        visitor: s.visitor,
                        link: text(s.link)?,
                    }),
                ))
            }
        })
    }

    fn put(&mut self, s: &str) -> Result<(u32, u32), AttributionError> {
        let start = self.text.len();
        self.text.push_str(s);
        match (u32::try_from(start), u32::try_from(self.text.len())) {
            (Ok(a), Ok(b)) => Ok((a, b)),
            // 4096 clicks of at most a few KiB each: far below 4 GiB.
            _ => Err(AttributionError::Corrupt("pipeline batch text over 4 GiB".into())),
        }
    }
}

impl Batch for ClickBatch {
    fn push(&mut self, seq: u64, record: &[u8]) -> Result<(), AttributionError> {
        let view = tally_model::decode_view(record).map_err(|error| AttributionError::Record { seq, error })?;
        let item = match view {
            EventView::Click(c) => Item::Click(Slots {
                click_id: c.click_id,
                ts_ms: c.ts_ms,
                offer: self.put(c.offer)?,
                affiliate: self.put(c.affiliate)?,
                sub1: self.put(c.subs[0])?,
                human: c.is_human(),
                prior_click: c.prior_click,
                visitor: u128::from(c.visitor),
                link: self.put(c.link)?,
            }),
            EventView::Owned(e) => Item::Event(Box::new(e)),
        };
        self.items.push((seq, item));
        Ok(())
    }

    fn len(&self) -> usize {
        self.items.len()
    }

    fn clear(&mut self) {
        self.text.clear();
        self.items.clear();
    }
}

/// Calls `apply` with the decoded events `from..=to` of `reader`, in order, in batches; stops
/// at the first error (a log read, a record that does not decode, or `apply`'s own). Returns
/// the number of events passed to `apply`.
pub fn for_each_batch<B: Batch, E: From<AttributionError>>(
    reader: &LogReader,
    from: u64,
    to: u64,
    mut apply: impl FnMut(&B) -> Result<(), E>,
) -> Result<u64, E> {
    std::thread::scope(|scope| {
        let (tx, rx) = crossbeam_channel::bounded::<Result<B, AttributionError>>(DEPTH);
        // Applied batches come back to be cleared and refilled here: clearing frees what a
        // batch owns (a decoded click owns a dozen strings) on the thread that allocated it,
        // off the apply thread.
        let (spent_tx, spent_rx) = crossbeam_channel::bounded::<B>(DEPTH);
        scope.spawn(move || {
            let fresh = || match spent_rx.try_recv() {
                Ok(mut b) => {
                    b.clear();
                    b
                }
                Err(_) => B::default(),
            };
            let mut batch = fresh();
            for item in reader.iter_from(from) {
                let pushed = item.map_err(AttributionError::from).and_then(|(seq, bytes)| {
                    if seq > to {
                        return Ok(false);
                    }
                    batch.push(seq, &bytes).map(|()| true)
                });
                match pushed {
                    Ok(false) => break,
                    Ok(true) => {
                        if batch.len() == BATCH && tx.send(Ok(std::mem::replace(&mut batch, fresh()))).is_err() {
                            return;
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tally_model::{click_flags, Click, ClickView, Conversion, ConversionSource, ConversionStatus, Currency};

    fn click(i: u64, flags: u16) -> Click {
        Click {
            click_id: ClickId::new(1_700_000_000_000 + i, 1, i),
            ts_ms: 1_700_000_000_000 + i,
            link: "demo".into(),
            offer: format!("offer{i}"),
            affiliate: "aff-é".into(),
            subs: [format!("s{i}"), "x".into(), String::new(), String::new(), String::new()],
            source: String::new(),
            deep_link: String::new(),
            user_agent: "Mozilla/5.0".into(),
            referrer: String::new(),
            ip: "203.0.113.0".into(),
            flags,
            prior_click: i.is_multiple_of(2).then(|| ClickId::new(1, 1, 1)),
            visitor: i * 7919,
            signals: Default::default(),
        }
    }

    /// A click batch gives back each click as `ClickIn::of` its record would, and other
    /// events whole, in order, also after being cleared and refilled.
    #[test]
    fn a_click_batch_hands_over_what_attribution_reads() {
        let conversion = Event::Conversion(Conversion {
            ts_ms: 1_700_000_000_500,
            source: ConversionSource::Postback,
            click_id: None,
            coupon: String::new(),
            offer: "offer1".into(),
            goal: "sale".into(),
            txid: "T".into(),
            amount: None,
            currency: Currency::from_code("USD").unwrap(),
            status: ConversionStatus::Approved,
            subs: Default::default(),
            ip: String::new(),
            advertiser: String::new(),
            customer: None,
        });
        let events = [
            Event::Click(click(1, 0)),
            conversion.clone(),
            Event::Click(click(2, click_flags::HEAD)),
            Event::Click(click(3, 0)),
        ];
        let mut batch = ClickBatch::default();
        for round in 0..2 {
            batch.clear();
            for (i, e) in events.iter().enumerate() {
                batch.push(10 + i as u64, &tally_model::encode(e).unwrap()).unwrap();
            }
            assert_eq!(Batch::len(&batch), 4, "round {round}");
            let got: Vec<(u64, Decoded<'_>)> = batch.iter().collect::<Result<_, _>>().unwrap();
            for ((seq, d), (i, e)) in got.iter().zip(events.iter().enumerate()) {
                assert_eq!(*seq, 10 + i as u64);
                match (d, e) {
                    (Decoded::Click(c), Event::Click(k)) => {
                        assert_eq!(*c, ClickIn::of(&ClickView::from(k)));
                    }
                    (Decoded::Event(got), want) => assert_eq!(*got, want),
                    _ => panic!("{d:?} for {e:?}"),
                }
            }
        }
    }

    #[test]
    fn a_bad_record_is_named_by_its_sequence_number() {
        let mut bytes = tally_model::encode(&Event::Click(click(1, 0))).unwrap();
        // The checksum's last byte (a click's personal trailer follows it).
        let last = tally_model::record::chained_len(&bytes) - 1;
        bytes[last] ^= 1;
        let mut batch = ClickBatch::default();
        match batch.push(7, &bytes) {
            Err(AttributionError::Record { seq: 7, .. }) => {}
            other => panic!("{other:?}"),
        }
        assert!(Batch::is_empty(&batch));
        let mut full: Vec<(u64, Event)> = Vec::new();
        assert!(matches!(Batch::push(&mut full, 7, &bytes), Err(AttributionError::Record { seq: 7, .. })));
    }
}
