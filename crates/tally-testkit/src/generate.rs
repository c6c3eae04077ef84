//! The one generator of plausible logs, shared by the attribution model check, the worker and
//! replay tests, and the attribution benchmark: clicks (repeat visits carrying a prior cookie,
//! non-human ones), conversions (joined to recent or days-old clicks, unknown clicks,
//! coupon-only, repeated transactions), refunds and chargebacks, and program changes.
//!
//! What the traffic looks like is a [`Shape`]; when events happen is a [`Schedule`]. The
//! benchmark's shape ([`Shape::bench`]) with its SplitMix64 stream reproduces the log its
//! printed ledger digest was taken on, so every draw the benchmark makes must stay where it
//! is: features only the tests use are knobs that draw nothing when they are 0.

use std::collections::VecDeque;

use rand::rngs::StdRng;
use rand::RngCore;
use tally_model::{
    click_flags, Click, ClickId, Conversion, ConversionSource, ConversionStatus, Currency, Event, ProgramChange,
};

use crate::rng::Rng;

/// A day in milliseconds.
pub const DAY: u64 = 86_400_000;
/// 2025-11-01T00:00:00Z: a month start, so month-boundary tests are easy to read.
pub const T0: u64 = 1_761_955_200_000;

const USER_AGENTS: [&str; 8] = [
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (Linux; Android 13; SM-S911B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/24.0 Chrome/117.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/124.0.6367.88 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/123.0.0.0 Safari/537.36",
];
const REFERRERS: [&str; 5] = [
    "",
    "https://blog.example/best-running-shoes",
    "https://www.google.com/",
    "https://news.example/deals/today",
    "https://m.facebook.com/",
];
const SOURCES: [&str; 5] = ["", "newsletter", "facebook", "google", "tiktok"];

/// An offer the traffic goes to: its weight among new visits, and its goals.
#[derive(Debug, Clone)]
pub struct OfferShape {
    pub id: &'static str,
    /// An ISO 4217 code.
    pub currency: &'static str,
    pub weight: u64,
    pub goals: Vec<GoalShape>,
}

/// A goal with its weight among its offer's conversions; `revshare` goals get an amount.
#[derive(Debug, Clone)]
pub struct GoalShape {
    pub id: &'static str,
    pub weight: u64,
    pub revshare: bool,
}

/// A coupon code reported on `offer` (an index into [`Shape::offers`]), whether or not the
/// program knows it for that offer: mismatches are what the tests want to see.
#[derive(Debug, Clone)]
pub struct CouponShape {
    pub code: &'static str,
    pub offer: u8,
    pub weight: u64,
}

/// Shares of conversions, per mille; what is left joins a click the log saw.
#[derive(Debug, Clone, Copy)]
pub struct ConversionMix {
    /// A refund or chargeback of an earlier transaction.
    pub reversal: u64,
    /// The same transaction reported again.
    pub duplicate: u64,
    /// A click ID the log never saw (another node's, mistyped, or forged).
    pub unknown_click: u64,
    /// A coupon and no click.
    pub coupon: u64,
    /// Neither click nor coupon.
    pub no_click: u64,
    /// A reversal of a transaction never reported, without a transaction ID, or for a goal
    /// the program does not have.
    pub orphan_reversal: u64,
}

/// What the traffic looks like. Probabilities are per mille.
#[derive(Debug, Clone)]
pub struct Shape {
    pub offers: Vec<OfferShape>,
    pub affiliates: Vec<String>,
    /// Distinct sub1 values over all affiliates; each uses `subs_per_affiliate` of them.
    pub sub1_values: u64,
    pub subs_per_affiliate: u64,
    pub coupons: Vec<CouponShape>,
    /// A click that repeats a recent visit (same visitor, offer, affiliate).
    pub repeat_visit: u64,
    /// A repeat visit that still carries the cookie of the visit's last click.
    pub prior_click: u64,
    /// `click_flags` values and their weights (include 0 for human clicks).
    pub flags: Vec<(u16, u64)>,
    /// Recent clicks remembered (conversions mostly join these).
    pub recent_clicks: usize,
    /// Every n-th click is also kept in a second ring of `recent_clicks`, so some
    /// conversions join clicks days old (some expired or outside their window).
    pub old_sample_every: u64,
    pub old_click: u64,
    /// Recent visits a returning visitor may repeat.
    pub recent_visits: usize,
    /// Recent transactions that duplicates and reversals refer to.
    pub recent_txids: usize,
    pub conversions: ConversionMix,
    /// A reversal that is a chargeback rather than a refund.
    pub chargeback: u64,
    /// A fixed-payout conversion that reports an amount anyway.
    pub amount_on_fixed: u64,
    /// A revenue-share conversion in another currency than its offer's.
    pub currency_mismatch: u64,
    // The benchmark has these at 0, which draws nothing.
    /// A fixed-payout conversion whose amount is in another currency.
    pub fixed_currency_mismatch: u64,
    /// A revenue-share conversion without an amount.
    pub missing_amount: u64,
    /// A goal the program does not have.
    pub unknown_goal: u64,
    /// A new transaction without a transaction ID (never deduplicated).
    pub empty_txid: u64,
    /// A joined conversion reported on another offer than its click's.
    pub click_offer_mismatch: u64,
    /// A conversion with a click that also names a coupon.
    pub coupon_with_click: u64,
    /// A repeated transaction ID reported for another goal of the offer (not a repeat).
    pub duplicate_other_goal: u64,
    /// Customers conversions are drawn from (`customer=`, for recurring commissions); 0:
    /// conversions name none (and no draw is made, so other shapes' streams are unchanged).
    pub customers: u64,
}

impl Shape {
    /// The attribution benchmark's traffic, for [`crate::fixtures::bench_program`]: three
    /// offers, `affiliates` affiliates (`aff0000`...) of very different sizes.
    pub fn bench(affiliates: u64) -> Shape {
        let goal = |id, weight, revshare| GoalShape { id, weight, revshare };
        Shape {
            offers: vec![
                OfferShape {
                    id: "shoes",
                    currency: "USD",
                    weight: 50,
                    goals: vec![goal("sale", 60, true), goal("lead", 30, false), goal("tiered", 10, false)],
                },
                OfferShape { id: "hotels", currency: "EUR", weight: 25, goals: vec![goal("booking", 100, false)] },
                OfferShape {
                    id: "apps",
                    currency: "USD",
                    weight: 25,
                    goals: vec![goal("install", 70, false), goal("purchase", 30, true)],
                },
            ],
            affiliates: (0..affiliates).map(|a| format!("aff{a:04}")).collect(),
            sub1_values: 1_000,
            subs_per_affiliate: 20,
            coupons: vec![
                CouponShape { code: "SPRING", offer: 0, weight: 500 },
                CouponShape { code: "TRAVEL10", offer: 1, weight: 500 },
            ],
            repeat_visit: 150,
            prior_click: 333,
            flags: vec![(click_flags::PREFETCH, 15), (click_flags::UNFURLER, 10), (click_flags::HEAD, 5), (0, 970)],
            recent_clicks: 100_000,
            old_sample_every: 64,
            old_click: 250,
            recent_visits: 4_096,
            recent_txids: 50_000,
            conversions: ConversionMix {
                reversal: 20,
                duplicate: 30,
                unknown_click: 30,
                coupon: 20,
                no_click: 0,
                orphan_reversal: 0,
            },
            chargeback: 100,
            amount_on_fixed: 300,
            currency_mismatch: 5,
            fixed_currency_mismatch: 0,
            missing_amount: 0,
            unknown_goal: 0,
            empty_txid: 0,
            click_offer_mismatch: 0,
            coupon_with_click: 0,
            duplicate_other_goal: 0,
            customers: 0,
        }
    }

    /// Small, dense traffic for the attribution fixtures (`attribution-rules.toml`,
    /// `attribution-model.toml`): two offers, three affiliates, short memories, and every
    /// way a conversion can fail to pay at a few per cent.
    pub fn small() -> Shape {
        let goal = |id| GoalShape { id, weight: 1, revshare: id == "sale" };
        Shape {
            offers: vec![
                OfferShape {
                    id: "shoes",
                    currency: "USD",
                    weight: 1,
                    goals: vec![goal("sale"), goal("lead"), goal("tiered")],
                },
                OfferShape { id: "hotels", currency: "EUR", weight: 1, goals: vec![goal("booking")] },
            ],
            affiliates: ["aff1", "aff2", "aff3"].map(String::from).to_vec(),
            sub1_values: 3,
            subs_per_affiliate: 2,
            coupons: vec![
                CouponShape { code: "SPRING", offer: 0, weight: 6 },
                // The program's codes are case-sensitive.
                CouponShape { code: "spring", offer: 0, weight: 2 },
                CouponShape { code: "SPRING", offer: 1, weight: 1 },
                CouponShape { code: "NOPE", offer: 1, weight: 1 },
            ],
            repeat_visit: 300,
            prior_click: 500,
            flags: vec![(click_flags::PREFETCH, 60), (click_flags::HEAD | click_flags::UNFURLER, 50), (0, 890)],
            recent_clicks: 32,
            old_sample_every: 4,
            old_click: 250,
            recent_visits: 16,
            recent_txids: 10_000,
            conversions: ConversionMix {
                reversal: 200,
                duplicate: 100,
                unknown_click: 70,
                coupon: 100,
                no_click: 70,
                orphan_reversal: 40,
            },
            chargeback: 500,
            amount_on_fixed: 900,
            currency_mismatch: 30,
            fixed_currency_mismatch: 30,
            missing_amount: 100,
            unknown_goal: 30,
            empty_txid: 30,
            click_offer_mismatch: 20,
            coupon_with_click: 150,
            duplicate_other_goal: 300,
            customers: 0,
        }
    }
}

/// When events happen.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// `clicks` clicks with `conversions` spread evenly among them, event time moving
    /// evenly over `span_ms`: the benchmark's schedule, which draws nothing.
    Interleaved { clicks: u64, conversions: u64, span_ms: u64 },
    /// `events` events, each a click, a conversion or a program change by `weights`;
    /// event time moves by up to `step_ms`, or with `jump` per mille by up to `jump_ms`, so
    /// holds pass, windows close and clicks expire within a few hundred events.
    Drawn { events: u64, weights: [u64; 3], step_ms: u64, jump: u64, jump_ms: u64 },
}

impl Schedule {
    /// `events` events: half clicks, 3% program changes, mostly minutes apart, sometimes days.
    pub fn drawn(events: u64) -> Schedule {
        Schedule::Drawn { events, weights: [500, 470, 30], step_ms: 3_600_000, jump: 50, jump_ms: 12 * DAY }
    }
}

/// What the generator produced, by kind (the benchmark prints it).
#[derive(Debug, Default, Clone)]
pub struct Mix {
    pub clicks: u64,
    pub non_human: u64,
    pub repeat_visits: u64,
    pub prior_click: u64,
    pub conversions: u64,
    pub recent_click: u64,
    pub old_click: u64,
    pub unknown_click: u64,
    pub coupon: u64,
    pub duplicate: u64,
    pub refund: u64,
    pub currency_mismatch: u64,
    pub program_changes: u64,
}

/// A fixed-capacity ring of the most recent items.
#[derive(Debug)]
struct Ring<T> {
    items: VecDeque<T>,
    cap: usize,
}

impl<T> Ring<T> {
    fn new(cap: usize) -> Ring<T> {
        Ring { items: VecDeque::with_capacity(cap), cap }
    }

    fn push(&mut self, item: T) {
        if self.items.len() == self.cap {
            self.items.pop_front();
        }
        self.items.push_back(item);
    }

    /// A random item, biased towards the newest when `recent`.
    fn sample<S: RngCore>(&self, rng: &mut Rng<S>, recent: bool) -> Option<&T> {
        let n = self.items.len() as u64;
        if n == 0 {
            return None;
        }
        let back = if recent { rng.skewed(n) } else { rng.below(n) };
        self.items.get((n - 1 - back) as usize)
    }
}

/// A click as far as later events need it: a repeat visit copies it, a conversion joins it.
#[derive(Debug, Clone, Copy)]
struct Visit {
    id: ClickId,
    offer: u8,
    affiliate: u16,
    sub1: u16,
    visitor: u32,
}

/// A transaction a duplicate report or a reversal can refer to.
#[derive(Debug, Clone, Copy)]
struct Txn {
    no: u64,
    offer: u8,
    goal: u8,
    click: Option<ClickId>,
}

/// A shape's weights gathered once, not per event (the benchmark draws millions).
#[derive(Debug)]
struct Weights {
    offers: Vec<u64>,
    goals: Vec<Vec<u64>>,
    flags: Vec<u64>,
    coupons: Vec<u64>,
}

impl Weights {
    fn of(s: &Shape) -> Weights {
        Weights {
            offers: s.offers.iter().map(|o| o.weight).collect(),
            goals: s.offers.iter().map(|o| o.goals.iter().map(|g| g.weight).collect()).collect(),
            flags: s.flags.iter().map(|f| f.1).collect(),
            coupons: s.coupons.iter().map(|c| c.weight).collect(),
        }
    }
}

/// The events of a [`Shape`] on a [`Schedule`], starting with the first of `programs` at
/// [`T0`]; an iterator, so the benchmark can write millions without holding them.
#[derive(Debug)]
pub struct Generator<S = StdRng> {
    shape: Shape,
    weights: Weights,
    schedule: Schedule,
    programs: Vec<String>,
    rng: Rng<S>,
    recent: Ring<Visit>,
    old: Ring<Visit>,
    visits: Ring<Visit>,
    txids: Ring<Txn>,
    next_txid: u64,
    mix: Mix,
    emitted: u64,
    now: u64,
}

impl<S: RngCore> Generator<S> {
    pub fn new(shape: Shape, schedule: Schedule, programs: &[&str], rng: Rng<S>) -> Generator<S> {
        assert!(!programs.is_empty(), "the log starts with a program");
        Generator {
            recent: Ring::new(shape.recent_clicks),
            old: Ring::new(shape.recent_clicks),
            visits: Ring::new(shape.recent_visits),
            txids: Ring::new(shape.recent_txids),
            weights: Weights::of(&shape),
            shape,
            schedule,
            programs: programs.iter().map(|p| (*p).to_owned()).collect(),
            rng,
            next_txid: 0,
            mix: Mix::default(),
            emitted: 0,
            now: T0,
        }
    }

    pub fn mix(&self) -> &Mix {
        &self.mix
    }

    fn click(&mut self, ts_ms: u64) -> Event {
        let s = &self.shape;
        let rng = &mut self.rng;
        let repeat = if rng.per_mille(s.repeat_visit) { self.visits.sample(rng, true).copied() } else { None };
        let (offer, affiliate, sub1, visitor, prior) = match repeat {
            Some(v) => {
                self.mix.repeat_visits += 1;
                let prior = rng.per_mille(s.prior_click).then_some(v.id);
                (v.offer, v.affiliate, v.sub1, v.visitor, prior)
            }
            None => {
                let offer = rng.weighted(&self.weights.offers) as u8;
                let affiliate = rng.skewed(s.affiliates.len() as u64) as u16;
                let sub1 = ((u64::from(affiliate) * 37 + rng.skewed(s.subs_per_affiliate) * 53) % s.sub1_values) as u16;
                // A long tail of one-time visitors and a core that comes back.
                let visitor =
                    if rng.per_mille(300) { rng.below(20_000) } else { 20_000 + rng.below(50_000_000) } as u32;
                (offer, affiliate, sub1, visitor, None)
            }
        };
        self.mix.prior_click += u64::from(prior.is_some());
        let id = ClickId::new(ts_ms, 1, rng.next_u64());
        let flags = s.flags[rng.weighted(&self.weights.flags)].0;
        self.mix.non_human += u64::from(flags != 0);
        let v = u64::from(visitor).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let ip = format!("{}.{}.{}.{}", 1 + (v >> 56) % 223, (v >> 48) & 0xff, (v >> 40) & 0xff, (v >> 32) & 0xff);
        let user_agent = USER_AGENTS[(v % USER_AGENTS.len() as u64) as usize];
        let campaign = rng.below(50);
        let visit = Visit { id, offer, affiliate, sub1, visitor };
        self.recent.push(visit);
        self.visits.push(visit);
        self.mix.clicks += 1;
        if self.mix.clicks.is_multiple_of(s.old_sample_every) {
            self.old.push(visit);
        }
        // Field order is draw order: source, then deep link, then referrer.
        let mut click = Click {
            click_id: id,
            ts_ms,
            link: format!("l{affiliate}o{offer}"),
            offer: s.offers[usize::from(offer)].id.into(),
            affiliate: s.affiliates[usize::from(affiliate)].clone(),
            subs: [
                format!("s{sub1:03}"),
                format!("cmp-{campaign}"),
                if campaign.is_multiple_of(3) { "email".into() } else { String::new() },
                String::new(),
                String::new(),
            ],
            source: (*rng.pick(&SOURCES)).into(),
            deep_link: if rng.per_mille(50) {
                format!("https://shop.example/p/{}", rng.below(10_000))
            } else {
                String::new()
            },
            user_agent: user_agent.into(),
            referrer: (*rng.pick(&REFERRERS)).into(),
            ip,
            flags,
            prior_click: prior,
            visitor: 0,
            signals: Default::default(),
        };
        // The key older formats decode to, so figures match logs written before format 3.
        click.visitor = tally_model::legacy_visitor_key(&click.offer, &click.affiliate, &click.ip, &click.user_agent);
        Event::Click(click)
    }

    fn goal_of(&mut self, offer: u8) -> u8 {
        self.rng.weighted(&self.weights.goals[usize::from(offer)]) as u8
    }

    fn reversal_status(&mut self) -> ConversionStatus {
        if self.rng.per_mille(self.shape.chargeback) {
            ConversionStatus::Chargeback
        } else {
            ConversionStatus::Refunded
        }
    }

    fn conversion(&mut self, ts_ms: u64) -> Event {
        self.mix.conversions += 1;
        let m = self.shape.conversions;
        let offers = self.shape.offers.len() as u64;
        let reversal_below = m.reversal;
        let duplicate_below = reversal_below + m.duplicate;
        let unknown_below = duplicate_below + m.unknown_click;
        let coupon_below = unknown_below + m.coupon;
        let no_click_below = coupon_below + m.no_click;
        let orphan_below = no_click_below + m.orphan_reversal;
        let r = self.rng.below(1_000);
        if r < duplicate_below {
            if let Some(t) = self.txids.sample(&mut self.rng, false).copied() {
                let reversal = r < reversal_below;
                // Drawn for duplicates too, where it does not matter, to keep the stream in step.
                let chargeback = self.rng.per_mille(self.shape.chargeback);
                let status = match (reversal, chargeback) {
                    (false, _) => ConversionStatus::Approved,
                    (true, true) => ConversionStatus::Chargeback,
                    (true, false) => ConversionStatus::Refunded,
                };
                if reversal {
                    self.mix.refund += 1;
                } else {
                    self.mix.duplicate += 1;
                }
                let click = if reversal { None } else { t.click };
                let goal = if !reversal && self.rng.per_mille(self.shape.duplicate_other_goal) {
                    self.goal_of(t.offer)
                } else {
                    t.goal
                };
                return self.conversion_event(ts_ms, t.offer, Some(goal), click, format!("T{:010}", t.no), status, "");
            }
        }
        let (mut offer, click, mut coupon) = if r < unknown_below {
            self.mix.unknown_click += 1;
            let offer = self.rng.below(offers) as u8;
            let age = self.rng.below(DAY);
            (offer, Some(ClickId::new(ts_ms.saturating_sub(age), 2, self.rng.next_u64())), "")
        } else if r < coupon_below {
            self.mix.coupon += 1;
            let c = &self.shape.coupons[self.rng.weighted(&self.weights.coupons)];
            (c.offer, None, c.code)
        } else if r < no_click_below {
            (self.rng.below(offers) as u8, None, "")
        } else if r < orphan_below {
            self.mix.refund += 1;
            let offer = self.rng.below(offers) as u8;
            let goal = self.goal_of(offer);
            let (goal, txid) = match self.rng.below(3) {
                0 => (None, format!("T{:010}", self.next_txid.saturating_sub(1))),
                1 => (Some(goal), String::new()),
                _ => (Some(goal), "T-never-reported".to_owned()),
            };
            let status = self.reversal_status();
            return self.conversion_event(ts_ms, offer, goal, None, txid, status, "");
        } else {
            let old = self.rng.per_mille(self.shape.old_click);
            let ring = if old { &self.old } else { &self.recent };
            match ring.sample(&mut self.rng, !old).copied() {
                Some(v) => {
                    if old {
                        self.mix.old_click += 1;
                    } else {
                        self.mix.recent_click += 1;
                    }
                    (v.offer, Some(v.id), "")
                }
                None => (0, None, ""),
            }
        };
        if click.is_some() && self.rng.per_mille(self.shape.click_offer_mismatch) {
            offer = ((u64::from(offer) + 1) % offers) as u8;
        }
        // A coupon beside a click: it credits only when the click does not, and only if the
        // program knows it for this offer.
        if coupon.is_empty() && self.rng.per_mille(self.shape.coupon_with_click) {
            coupon = self.shape.coupons[self.rng.weighted(&self.weights.coupons)].code;
        }
        let goal = self.goal_of(offer);
        let goal = (!self.rng.per_mille(self.shape.unknown_goal)).then_some(goal);
        let txid = if self.rng.per_mille(self.shape.empty_txid) {
            String::new()
        } else {
            let no = self.next_txid;
            self.next_txid += 1;
            if let Some(goal) = goal {
                self.txids.push(Txn { no, offer, goal, click });
            }
            format!("T{no:010}")
        };
        self.conversion_event(ts_ms, offer, goal, click, txid, ConversionStatus::Approved, coupon)
    }

    /// `goal` `None`: a goal the program does not have.
    #[allow(clippy::too_many_arguments)]
    fn conversion_event(
        &mut self,
        ts_ms: u64,
        offer: u8,
        goal: Option<u8>,
        click_id: Option<ClickId>,
        txid: String,
        status: ConversionStatus,
        coupon: &str,
    ) -> Event {
        let s = &self.shape;
        let o = &s.offers[usize::from(offer)];
        let (goal, revshare) = match goal {
            Some(g) => {
                let g = &o.goals[usize::from(g)];
                (g.id, g.revshare)
            }
            None => ("no-such-goal", false),
        };
        let mut currency = o.currency;
        let mut mismatch = revshare && self.rng.per_mille(s.currency_mismatch);
        let with_amount =
            if revshare { !self.rng.per_mille(s.missing_amount) } else { self.rng.per_mille(s.amount_on_fixed) };
        let amount = with_amount.then(|| 500 + self.rng.skewed(50_000) as i64);
        mismatch |= !revshare && amount.is_some() && self.rng.per_mille(s.fixed_currency_mismatch);
        if mismatch {
            self.mix.currency_mismatch += 1;
            currency = if currency == "USD" { "GBP" } else { "USD" };
        }
        let customer = (s.customers > 0).then(|| {
            let id = format!("cust{}", self.rng.below(s.customers));
            tally_model::Customer::new(&crate::build::CUSTOMER_SECRET, &id)
        });
        Event::Conversion(Conversion {
            ts_ms,
            source: if coupon.is_empty() { ConversionSource::Postback } else { ConversionSource::Pixel },
            click_id,
            coupon: coupon.into(),
            offer: o.id.into(),
            goal: goal.into(),
            txid,
            amount,
            // Shapes name valid ISO 4217 codes.
            currency: Currency::from_code(currency).unwrap_or_else(|e| panic!("currency {currency}: {e}")),
            status,
            subs: Default::default(),
            ip: String::new(),
            advertiser: String::new(),
            customer,
        })
    }

    fn program_change(&mut self, ts_ms: u64) -> Event {
        let source = if self.emitted == 0 {
            &self.programs[0]
        } else {
            self.mix.program_changes += 1;
            &self.programs[self.rng.below(self.programs.len() as u64) as usize]
        };
        program_event(ts_ms, source)
    }
}

impl<S: RngCore> Iterator for Generator<S> {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        let event = if self.emitted == 0 {
            self.program_change(T0)
        } else {
            match self.schedule {
                Schedule::Interleaved { clicks, conversions, span_ms } => {
                    let total = 1 + clicks + conversions;
                    let ts = T0 + (u128::from(self.emitted) * u128::from(span_ms) / u128::from(total)) as u64;
                    // After click c, `(c + 1) * conversions / clicks` conversions are due.
                    let due = u128::from(self.mix.clicks) * u128::from(conversions) / u128::from(clicks.max(1));
                    if u128::from(self.mix.conversions) < due {
                        self.conversion(ts)
                    } else if self.mix.clicks < clicks {
                        self.click(ts)
                    } else {
                        return None;
                    }
                }
                Schedule::Drawn { events, weights, step_ms, jump, jump_ms } => {
                    if self.emitted > events {
                        return None;
                    }
                    self.now +=
                        if self.rng.per_mille(jump) { self.rng.below(jump_ms) } else { self.rng.below(step_ms) };
                    let now = self.now;
                    match self.rng.weighted(&weights) {
                        0 => self.click(now),
                        1 => self.conversion(now),
                        _ => self.program_change(now),
                    }
                }
            }
        };
        self.emitted += 1;
        Some(event)
    }
}

/// A program change to `source` at `ts_ms`, with the digest the edge would log.
pub fn program_event(ts_ms: u64, source: &str) -> Event {
    Event::ProgramChange(ProgramChange {
        ts_ms,
        digest: blake3::hash(source.as_bytes()).to_hex().to_string(),
        source: source.into(),
    })
}

/// `n` events of [`Shape::small`] after an initial program change, switching between
/// `programs` at random: what the attribution model check, worker and replay tests run.
pub fn log(seed: u64, n: usize, programs: &[&str]) -> Vec<Event> {
    Generator::new(Shape::small(), Schedule::drawn(n as u64), programs, Rng::new(seed)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(events: &[Event]) -> Vec<u8> {
        let mut out = Vec::new();
        for e in events {
            // A fixed salt: the salt of personal fields is drawn at random by `encode`.
            tally_model::encode_salted(e, [0; tally_model::record::SALT_LEN], &mut out).unwrap();
        }
        out
    }

    #[test]
    fn the_same_seed_gives_the_same_bytes() {
        let programs = ["a", "b"];
        let a = bytes(&log(42, 2_000, &programs));
        assert_eq!(a, bytes(&log(42, 2_000, &programs)));
        assert_ne!(a, bytes(&log(43, 2_000, &programs)));
        let bench = |seed| {
            let schedule = Schedule::Interleaved { clicks: 5_000, conversions: 500, span_ms: 3 * DAY };
            bytes(&Generator::new(Shape::bench(100), schedule, &programs, Rng::new(seed)).collect::<Vec<_>>())
        };
        assert_eq!(bench(1), bench(1));
        assert_ne!(bench(1), bench(2));
    }

    #[test]
    fn schedules_give_the_events_asked_for() {
        let events = log(1, 500, &["a"]);
        assert_eq!(events.len(), 501);
        assert!(matches!(&events[0], Event::ProgramChange(p) if p.source == "a" && p.ts_ms == T0));
        assert!(events.windows(2).all(|w| w[0].ts_ms() <= w[1].ts_ms()));

        let schedule = Schedule::Interleaved { clicks: 1_000, conversions: 300, span_ms: DAY };
        let mut g = Generator::new(Shape::bench(10), schedule, &["p"], Rng::new(1));
        let events: Vec<Event> = g.by_ref().collect();
        assert_eq!(events.len(), 1 + 1_000 + 300);
        assert_eq!((g.mix().clicks, g.mix().conversions), (1_000, 300));
        assert!(matches!(events[1], Event::Click(_)) && matches!(events.last(), Some(Event::Conversion(_))));
        assert!(events.iter().all(|e| e.ts_ms() >= T0 && e.ts_ms() < T0 + DAY));
    }
}
