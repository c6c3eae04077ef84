//! A small driver for the attribution engine: builds events, applies them in log order and
//! reads back the entries they produced.
#![allow(dead_code, unused_imports, clippy::unwrap_used)]

pub use tally_testkit::generate;

use tally_attribution::{apply, Entry, EntryId, State};
use tally_model::{Click, ClickId, Conversion, ConversionStatus, Event};
use tally_testkit::{ClickBuilder, ConversionBuilder};

pub use tally_testkit::generate::{DAY, T0};

pub use tally_testkit::fixtures::{program_variant, ATTRIBUTION_RULES as PROGRAM};

pub struct Driver {
    pub state: State,
    pub seq: u64,
    pub now: u64,
    nonce: u64,
    /// Every event applied, in order.
    pub events: Vec<Event>,
}

impl Driver {
    /// An in-memory state with `PROGRAM` in force from sequence 1.
    pub fn new() -> Driver {
        let mut d = Driver::bare(State::in_memory());
        d.program(PROGRAM);
        d
    }

    pub fn bare(state: State) -> Driver {
        let seq = state.checkpoint().position;
        Driver { state, seq, now: T0, nonce: 0, events: Vec::new() }
    }

    pub fn apply(&mut self, event: Event) -> Vec<Entry> {
        self.seq += 1;
        self.events.push(event.clone());
        apply(&mut self.state, self.seq, &event).unwrap().entries
    }

    pub fn program(&mut self, source: &str) {
        self.apply(generate::program_event(self.now, source));
    }

    /// Moves event time forward by `ms`.
    pub fn wait(&mut self, ms: u64) {
        self.now += ms;
    }

    pub fn click_event(&mut self, offer: &str, affiliate: &str, prior: Option<ClickId>) -> Click {
        self.nonce += 1;
        ClickBuilder::new()
            .at(self.now)
            .nonce(self.nonce)
            .offer(offer)
            .affiliate(affiliate)
            .sub(1, &format!("s-{affiliate}"))
            .ip(&format!("203.0.113.{}", self.nonce % 250))
            .prior(prior)
            .build()
    }

    pub fn click(&mut self, offer: &str, affiliate: &str) -> ClickId {
        let c = self.click_event(offer, affiliate, None);
        let id = c.click_id;
        self.apply(Event::Click(c));
        id
    }

    pub fn click_after(&mut self, offer: &str, affiliate: &str, prior: ClickId) -> ClickId {
        let c = self.click_event(offer, affiliate, Some(prior));
        let id = c.click_id;
        self.apply(Event::Click(c));
        id
    }

    pub fn conversion_event(
        &self,
        offer: &str,
        goal: &str,
        cid: Option<ClickId>,
        txid: &str,
        amount: Option<i64>,
        status: ConversionStatus,
    ) -> Conversion {
        ConversionBuilder::new()
            .at(self.now)
            .click(cid)
            .offer(offer)
            .goal(goal)
            .txid(txid)
            .amount(amount)
            .currency(if offer == "hotels" { "EUR" } else { "USD" })
            .status(status)
            .build()
    }

    /// An approved conversion; returns its own entry (and any bonuses after it).
    pub fn convert(&mut self, offer: &str, goal: &str, cid: Option<ClickId>, txid: &str, amount: Option<i64>) -> Entry {
        let c = self.conversion_event(offer, goal, cid, txid, amount, ConversionStatus::Approved);
        self.apply(Event::Conversion(c));
        self.own_entry()
    }

    pub fn reverse(&mut self, offer: &str, goal: &str, txid: &str, status: ConversionStatus) -> Vec<Entry> {
        let c = self.conversion_event(offer, goal, None, txid, None, status);
        self.apply(Event::Conversion(c))
    }

    /// The entry of the last applied event.
    pub fn own_entry(&self) -> Entry {
        self.entry(EntryId::of_event(self.seq))
    }

    pub fn entry(&self, id: EntryId) -> Entry {
        self.state.entry(id).unwrap().unwrap_or_else(|| panic!("no entry {id}"))
    }

    /// Asserts that the events applied so far, replayed into a fresh in-memory state, give
    /// the same ledger; returns it.
    pub fn assert_replay_matches(&self) -> Vec<Entry> {
        let mut again = State::in_memory();
        for (i, e) in self.events.iter().enumerate() {
            apply(&mut again, i as u64 + 1, e).unwrap();
        }
        let live: Vec<Entry> = self.state.entries().map(Result::unwrap).collect();
        let replayed: Vec<Entry> = again.entries().map(Result::unwrap).collect();
        assert_eq!(live, replayed);
        live
    }

    /// A no-op event (a non-human click) that only moves the watermark to `now`.
    pub fn tick(&mut self) -> Vec<Entry> {
        let mut c = self.click_event("shoes", "aff1", None);
        c.flags = tally_model::click_flags::HEAD;
        self.apply(Event::Click(c))
    }
}
