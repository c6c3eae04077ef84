//! A seeded generator of plausible logs: clicks (some with a prior cookie), conversions
//! (joined, unknown, coupon-only, repeated), refunds and chargebacks, non-human clicks and
//! program changes, with event time moving forward by minutes to days.

use tally_model::{
    click_flags, Click, ClickId, Conversion, ConversionSource, ConversionStatus, Currency, Event, ProgramChange,
};

/// A day in milliseconds.
pub const DAY: u64 = 86_400_000;
/// 2025-11-01T00:00:00Z: a month start, so month-boundary tests are easy to read.
pub const T0: u64 = 1_761_955_200_000;

/// The tests' seeded generator: `rand`'s `StdRng`, so a seed names a log exactly, with the
/// few draws the generator needs.
#[derive(Debug)]
pub struct Rng(rand::rngs::StdRng);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(rand::SeedableRng::seed_from_u64(seed))
    }

    pub fn next_u64(&mut self) -> u64 {
        rand::RngCore::next_u64(&mut self.0)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        rand::Rng::random_range(&mut self.0, 0..n.max(1))
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

fn program_event(ts_ms: u64, source: &str) -> Event {
    Event::ProgramChange(ProgramChange {
        ts_ms,
        digest: blake3::hash(source.as_bytes()).to_hex().to_string(),
        source: source.into(),
    })
}

/// `n` events after an initial program change, alternating between `programs` at random.
pub fn log(seed: u64, n: usize, programs: &[&str]) -> Vec<Event> {
    let mut rng = Rng::new(seed);
    let mut now = T0;
    let mut events = vec![program_event(now, programs[0])];
    let mut clicks: Vec<(ClickId, &str)> = Vec::new();
    let mut txids: Vec<(String, &str, &str)> = Vec::new();
    let offers: [(&str, &[&str], &str); 2] =
        [("shoes", &["sale", "lead", "tiered"], "USD"), ("hotels", &["booking"], "EUR")];
    let affiliates = ["aff1", "aff2", "aff3"];
    for i in 0..n {
        // Mostly minutes apart, sometimes days: holds pass, windows close, clicks expire.
        now += if rng.chance(5) { rng.below(12 * DAY) } else { rng.below(3_600_000) };
        let roll = rng.below(100);
        let event = if roll < 45 {
            let (offer, _, _) = *rng.pick(&offers);
            let prior =
                (rng.chance(30) && !clicks.is_empty()).then(|| clicks[rng.below(clicks.len() as u64) as usize].0);
            let id = ClickId::new(now, 1, i as u64);
            clicks.push((id, offer));
            let affiliate = *rng.pick(&affiliates);
            Event::Click(Click {
                click_id: id,
                ts_ms: now,
                link: "l1".into(),
                offer: offer.into(),
                affiliate: affiliate.into(),
                subs: [format!("s{}", rng.below(3)), String::new(), String::new(), String::new(), String::new()],
                source: String::new(),
                deep_link: String::new(),
                user_agent: format!("UA{}", rng.below(4)),
                referrer: String::new(),
                ip: format!("198.51.100.{}", rng.below(8)),
                flags: if rng.chance(10) { click_flags::PREFETCH } else { 0 },
                prior_click: prior,
            })
        } else if roll < 80 {
            let (offer, goals, currency) = *rng.pick(&offers);
            let mut goal = (*rng.pick(goals)).to_owned();
            if rng.chance(3) {
                goal = "nope".into();
            }
            let click_id = match rng.below(10) {
                0 => None,
                1 => Some(ClickId::new(now, 7, rng.next_u64())),
                _ => clicks.iter().rev().filter(|(_, o)| *o == offer).nth(rng.below(8) as usize).map(|(id, _)| *id),
            };
            let txid = if rng.chance(15) && !txids.is_empty() {
                txids[rng.below(txids.len() as u64) as usize].0.clone()
            } else if rng.chance(3) {
                String::new()
            } else {
                format!("T{i}")
            };
            if !txid.is_empty() {
                txids.push((txid.clone(), offer, if goal == "nope" { "sale" } else { goals[0] }));
            }
            let coupon =
                if rng.chance(15) { (*rng.pick(&["SPRING", "spring", "NOPE"])).to_owned() } else { String::new() };
            Event::Conversion(Conversion {
                ts_ms: now,
                source: ConversionSource::Postback,
                click_id,
                coupon,
                offer: offer.into(),
                goal,
                txid,
                amount: if rng.chance(90) { Some(rng.below(100_000) as i64) } else { None },
                currency: Currency::from_code(if rng.chance(97) { currency } else { "GBP" })
                    .unwrap_or_else(|_| unreachable!()),
                status: ConversionStatus::Approved,
                subs: Default::default(),
                ip: String::new(),
            })
        } else if roll < 92 && !txids.is_empty() {
            let (txid, offer, goal) = txids[rng.below(txids.len() as u64) as usize].clone();
            let currency = if offer == "hotels" { "EUR" } else { "USD" };
            Event::Conversion(Conversion {
                ts_ms: now,
                source: ConversionSource::Postback,
                click_id: None,
                coupon: String::new(),
                offer: offer.into(),
                goal: goal.into(),
                txid: if rng.chance(5) { "UNKNOWN".into() } else { txid },
                amount: None,
                currency: Currency::from_code(currency).unwrap_or_else(|_| unreachable!()),
                status: if rng.chance(50) { ConversionStatus::Refunded } else { ConversionStatus::Chargeback },
                subs: Default::default(),
                ip: String::new(),
            })
        } else if roll < 95 {
            program_event(now, programs[rng.below(programs.len() as u64) as usize])
        } else {
            let id = ClickId::new(now, 2, i as u64);
            Event::Click(Click {
                click_id: id,
                ts_ms: now,
                link: "l1".into(),
                offer: "shoes".into(),
                affiliate: "aff1".into(),
                subs: Default::default(),
                source: String::new(),
                deep_link: String::new(),
                user_agent: "Slackbot-LinkExpanding 1.0".into(),
                referrer: String::new(),
                ip: String::new(),
                flags: click_flags::HEAD | click_flags::UNFURLER,
                prior_click: None,
            })
        };
        events.push(event);
    }
    events
}
