//! Attribution throughput and memory benchmark.
//!
//! Generates a deterministic log (by default 10,000,000 clicks and 200,000 conversions
//! over 40 days of event time), then attributes it from scratch with one `Worker` on one
//! thread, the way `tally` replays a log into a fresh state.
//!
//! ```text
//! attribution gen DIR    write the log into DIR (a Tally data directory)
//! attribution run DIR    attribute DIR's log into a fresh DIR/attribution, measure
//! attribution replay DIR replay DIR's log (as `tally replay` does) and compare with the
//!                        ledger `run` left; `FROM=SEQ` replays a window from a snapshot
//! attribution [all]      gen into a temp dir, then `run` and `replay` in child processes
//! ```
//!
//! `run` is meant to be its own process so its peak RSS (VmHWM) is attribution's alone, not
//! the generator's. Sizes come from the environment: `CLICKS` (default 10_000_000),
//! `CONVERSIONS` (200_000), `DAYS` (40), `SEED`; `DIR` names the data directory for `all`
//! (kept afterwards when given).
//!
//! Targets: at least 500,000 events/s and a peak RSS under 512 MiB for the `run` phase;
//! replay at least as fast as live attribution and at least 500,000 events/s.

use std::collections::{BTreeMap, VecDeque};
use std::error::Error;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use tally_attribution::{state_dir, AttributionMetrics, Worker, WorkerOptions};
use tally_log::{Log, LogMetrics, LogOptions, LogReader, Pending};
use tally_model::{
    click_flags, Click, ClickId, Conversion, ConversionSource, ConversionStatus, Currency, Event, ProgramChange,
};

type Res<T> = Result<T, Box<dyn Error>>;

// The same allocator as the `tally` binary, so the figures match what it would do.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TARGET_EVENTS_PER_SEC: f64 = 500_000.0;
const TARGET_PEAK_RSS_MIB: f64 = 512.0;

const DAY_MS: u64 = 86_400_000;
/// 2025-11-01T00:00:00Z.
const T0: u64 = 1_761_955_200_000;
/// Appends kept in flight while writing (below the log's default queue capacity of 65,536).
const IN_FLIGHT: usize = 16_384;
const AFFILIATES: u64 = 1_000;
/// Distinct sub1 values over all affiliates; each affiliate uses `SUBS_PER_AFFILIATE` of them.
const SUB1_VALUES: u64 = 1_000;
const SUBS_PER_AFFILIATE: u64 = 20;
/// Recent clicks remembered by the generator (conversions mostly refer to these).
const RECENT_CLICKS: usize = 100_000;
/// Every `OLD_SAMPLE_EVERY`-th click is also kept in a second ring of `RECENT_CLICKS`, so
/// some conversions refer to clicks days old (some expired or outside their window).
const OLD_SAMPLE_EVERY: u64 = 64;
/// Recent click "visits" that a returning visitor may repeat (same visitor, offer, affiliate).
const RECENT_VISITS: usize = 4_096;
/// Recent transactions that duplicates and refunds refer to.
const RECENT_TXIDS: usize = 50_000;

// ---- deterministic randomness ------------------------------------------------------------------

/// SplitMix64: tiny, fast and good enough for synthetic traffic.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// True with probability `per_mille / 1000`.
    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1_000) < per_mille
    }

    /// In `0..n`, skewed towards 0 (the minimum of three uniform draws): a few big
    /// affiliates and popular sub IDs, a long tail of small ones.
    fn skewed(&mut self, n: u64) -> u64 {
        self.below(n).min(self.below(n)).min(self.below(n))
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// A fixed-capacity ring of the most recent items.
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

    /// A random item, biased towards the newest half when `recent`.
    fn sample(&self, rng: &mut Rng, recent: bool) -> Option<&T> {
        let n = self.items.len() as u64;
        if n == 0 {
            return None;
        }
        let back = if recent { rng.skewed(n) } else { rng.below(n) };
        self.items.get((n - 1 - back) as usize)
    }
}

// ---- the program -------------------------------------------------------------------------------

const OFFERS: [&str; 3] = ["shoes", "hotels", "apps"];
const CURRENCIES: [&str; 3] = ["USD", "EUR", "USD"];

/// Goals of each offer with their relative weight among that offer's conversions, and
/// whether the payout is a revenue share (so the conversion needs an amount).
const GOALS: [&[(&str, u64, bool)]; 3] = [
    &[("sale", 60, true), ("lead", 30, false), ("tiered", 10, false)],
    &[("booking", 100, false)],
    &[("install", 70, false), ("purchase", 30, true)],
];

fn program_toml() -> String {
    let mut s = String::from(include_str!("../../../tests/fixtures/bench-program.toml"));
    for a in 0..AFFILIATES {
        s.push_str(&format!("\n[[affiliates]]\nid = \"aff{a:04}\"\n"));
    }
    s
}

// ---- traffic -----------------------------------------------------------------------------------

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

/// A click as far as later events need it: a repeat visit copies it, a conversion joins it.
#[derive(Clone, Copy)]
struct Visit {
    id: ClickId,
    offer: u8,
    affiliate: u16,
    sub1: u16,
    visitor: u32,
}

/// A transaction a duplicate report or a refund can refer to.
#[derive(Clone, Copy)]
struct Txn {
    no: u64,
    offer: u8,
    goal: u8,
    click: Option<ClickId>,
}

#[derive(Default)]
struct Mix {
    clicks: u64,
    non_human: u64,
    repeat_visits: u64,
    prior_click: u64,
    conversions: u64,
    recent_click: u64,
    old_click: u64,
    unknown_click: u64,
    coupon: u64,
    duplicate: u64,
    refund: u64,
    currency_mismatch: u64,
}

struct Generator {
    rng: Rng,
    recent: Ring<Visit>,
    old: Ring<Visit>,
    visits: Ring<Visit>,
    txids: Ring<Txn>,
    next_txid: u64,
    mix: Mix,
}

impl Generator {
    fn new(seed: u64) -> Generator {
        Generator {
            rng: Rng(seed),
            recent: Ring::new(RECENT_CLICKS),
            old: Ring::new(RECENT_CLICKS),
            visits: Ring::new(RECENT_VISITS),
            txids: Ring::new(RECENT_TXIDS),
            next_txid: 0,
            mix: Mix::default(),
        }
    }

    fn click(&mut self, ts_ms: u64) -> Event {
        let rng = &mut self.rng;
        let repeat = if rng.chance(150) { self.visits.sample(rng, true).copied() } else { None };
        let (offer, affiliate, sub1, visitor, prior) = match repeat {
            Some(v) => {
                self.mix.repeat_visits += 1;
                // A third of returning visitors still carry the cookie of their last click.
                let prior = rng.chance(333).then_some(v.id);
                (v.offer, v.affiliate, v.sub1, v.visitor, prior)
            }
            None => {
                let offer = match rng.below(100) {
                    0..50 => 0u8,
                    50..75 => 1,
                    _ => 2,
                };
                let affiliate = rng.skewed(AFFILIATES) as u16;
                let sub1 = ((u64::from(affiliate) * 37 + rng.skewed(SUBS_PER_AFFILIATE) * 53) % SUB1_VALUES) as u16;
                // A long tail of one-time visitors and a core that comes back.
                let visitor = if rng.chance(300) { rng.below(20_000) } else { 20_000 + rng.below(50_000_000) } as u32;
                (offer, affiliate, sub1, visitor, None)
            }
        };
        self.mix.prior_click += u64::from(prior.is_some());
        let id = ClickId::new(ts_ms, 1, rng.next_u64());
        let flags = match rng.below(1_000) {
            0..15 => click_flags::PREFETCH,
            15..25 => click_flags::UNFURLER,
            25..30 => click_flags::HEAD,
            _ => 0,
        };
        self.mix.non_human += u64::from(flags != 0);
        let v = u64::from(visitor).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let ip = format!("{}.{}.{}.{}", 1 + (v >> 56) % 223, (v >> 48) & 0xff, (v >> 40) & 0xff, (v >> 32) & 0xff);
        let user_agent = USER_AGENTS[(v % USER_AGENTS.len() as u64) as usize];
        let campaign = rng.below(50);
        let visit = Visit { id, offer, affiliate, sub1, visitor };
        self.recent.push(visit);
        self.visits.push(visit);
        self.mix.clicks += 1;
        if self.mix.clicks.is_multiple_of(OLD_SAMPLE_EVERY) {
            self.old.push(visit);
        }
        Event::Click(Click {
            click_id: id,
            ts_ms,
            link: format!("l{affiliate}o{offer}"),
            offer: OFFERS[usize::from(offer)].into(),
            affiliate: format!("aff{affiliate:04}"),
            subs: [
                format!("s{sub1:03}"),
                format!("cmp-{campaign}"),
                if campaign.is_multiple_of(3) { "email".into() } else { String::new() },
                String::new(),
                String::new(),
            ],
            source: (*rng.pick(&SOURCES)).into(),
            deep_link: if rng.chance(50) {
                format!("https://shop.example/p/{}", rng.below(10_000))
            } else {
                String::new()
            },
            user_agent: user_agent.into(),
            referrer: (*rng.pick(&REFERRERS)).into(),
            ip,
            flags,
            prior_click: prior,
        })
    }

    fn goal_of(&mut self, offer: u8) -> u8 {
        let goals = GOALS[usize::from(offer)];
        let mut r = self.rng.below(goals.iter().map(|g| g.1).sum());
        for (i, g) in goals.iter().enumerate() {
            if r < g.1 {
                return i as u8;
            }
            r -= g.1;
        }
        0
    }

    fn conversion(&mut self, ts_ms: u64) -> Event {
        self.mix.conversions += 1;
        let r = self.rng.below(1_000);
        if r < 50 {
            if let Some(t) = self.txids.sample(&mut self.rng, false).copied() {
                // ~2% refunds/chargebacks, ~3% repeated reports of a transaction.
                let reversal = r < 20;
                let status = match (reversal, self.rng.chance(100)) {
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
                return self.conversion_event(ts_ms, t.offer, t.goal, click, t.no, status, "");
            }
        }
        let (offer, click, coupon) = if r < 80 {
            // A click ID the log never saw (another node's, mistyped, or forged).
            self.mix.unknown_click += 1;
            let offer = self.rng.below(3) as u8;
            let age = self.rng.below(DAY_MS);
            (offer, Some(ClickId::new(ts_ms.saturating_sub(age), 2, self.rng.next_u64())), "")
        } else if r < 100 {
            self.mix.coupon += 1;
            if self.rng.chance(500) {
                (0, None, "SPRING")
            } else {
                (1, None, "TRAVEL10")
            }
        } else {
            let old = self.rng.chance(250);
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
        let goal = self.goal_of(offer);
        let no = self.next_txid;
        self.next_txid += 1;
        self.txids.push(Txn { no, offer, goal, click });
        self.conversion_event(ts_ms, offer, goal, click, no, ConversionStatus::Approved, coupon)
    }

    #[allow(clippy::too_many_arguments)]
    fn conversion_event(
        &mut self,
        ts_ms: u64,
        offer: u8,
        goal: u8,
        click_id: Option<ClickId>,
        txid: u64,
        status: ConversionStatus,
        coupon: &str,
    ) -> Event {
        let (goal, _, revshare) = GOALS[usize::from(offer)][usize::from(goal)];
        let mut currency = CURRENCIES[usize::from(offer)];
        if revshare && self.rng.chance(5) {
            self.mix.currency_mismatch += 1;
            currency = if currency == "USD" { "GBP" } else { "USD" };
        }
        let amount = (revshare || self.rng.chance(300)).then(|| 500 + self.rng.skewed(50_000) as i64);
        Event::Conversion(Conversion {
            ts_ms,
            source: if coupon.is_empty() { ConversionSource::Postback } else { ConversionSource::Pixel },
            click_id,
            coupon: coupon.into(),
            offer: OFFERS[usize::from(offer)].into(),
            goal: goal.into(),
            txid: format!("T{txid:010}"),
            amount,
            // The codes above are all valid ISO 4217 codes.
            currency: Currency::from_code(currency).unwrap_or_else(|e| panic!("currency {currency}: {e}")),
            status,
            subs: Default::default(),
            ip: String::new(),
        })
    }
}

// ---- measurements ------------------------------------------------------------------------------

/// User + system CPU seconds of this process (all threads), from /proc/self/stat. Printed
/// beside the rate: cores busy below 2 shows the threads waiting on each other, and CPU per
/// event what a change adds or saves. Both move with the VM's speed too (seen: 20% apart
/// between runs of one build minutes apart), so compare builds in alternating runs.
fn cpu_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let mut f = rest.split_whitespace().skip(11);
    let ticks: u64 = f.next()?.parse::<u64>().ok()? + f.next()?.parse::<u64>().ok()?;
    // USER_HZ is 100 on every Linux architecture we build for.
    Some(ticks as f64 / 100.0)
}

/// A `/proc/self/status` field in kB (VmHWM: peak RSS; VmRSS: current RSS).
fn proc_status_kb(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?;
    line[field.len() + 1..].trim().trim_end_matches("kB").trim().parse().ok()
}

fn mib_of_kb(kb: Option<u64>) -> f64 {
    kb.map_or(f64::NAN, |k| k as f64 / 1024.0)
}

fn dir_size(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn env_u64(name: &str, default: u64) -> Res<u64> {
    match std::env::var(name) {
        Ok(v) => Ok(v.replace('_', "").parse().map_err(|e| format!("{name}={v}: {e}"))?),
        Err(_) => Ok(default),
    }
}

// ---- phases ------------------------------------------------------------------------------------

/// Appends one record, keeping at most `IN_FLIGHT` appends waiting.
fn append(log: &Log, inflight: &mut VecDeque<Pending>, record: Vec<u8>) -> Res<()> {
    if inflight.len() >= IN_FLIGHT {
        if let Some(p) = inflight.pop_front() {
            p.wait()?;
        }
    }
    inflight.push_back(log.submit(record)?);
    Ok(())
}

fn generate(dir: &Path) -> Res<()> {
    let clicks = env_u64("CLICKS", 10_000_000)?;
    let conversions = env_u64("CONVERSIONS", 200_000)?;
    let days = env_u64("DAYS", 40)?;
    let seed = env_u64("SEED", 0x7A11_7A11)?;
    if clicks == 0 {
        return Err("CLICKS must be at least 1".into());
    }
    if dir.join("CURRENT").exists() {
        return Err(format!("{} already holds a log; remove it or pick another DIR", dir.display()).into());
    }
    std::fs::create_dir_all(dir)?;
    let total = 1 + clicks + conversions;
    let span = days * DAY_MS;
    let ts = |i: u64| T0 + (u128::from(i) * u128::from(span) / u128::from(total)) as u64;
    println!(
        "gen: {clicks} clicks + {conversions} conversions over {days} days into {} (seed {seed:#x})",
        dir.display()
    );

    let started = Instant::now();
    let log = Log::open(dir, LogOptions::default(), LogMetrics::default())?;
    let source = program_toml();
    let digest = blake3::hash(source.as_bytes()).to_hex().to_string();
    let program = Event::ProgramChange(ProgramChange { ts_ms: T0, digest, source });
    log.submit(tally_model::encode(&program)?)?.wait()?;

    let mut g = Generator::new(seed);
    let mut inflight = VecDeque::with_capacity(IN_FLIGHT);
    let mut i = 1u64;
    let mut done_conversions = 0u64;
    let mut bytes = 0u64;
    let mut last_report = Instant::now();
    for c in 0..clicks {
        let record = tally_model::encode(&g.click(ts(i)))?;
        bytes += record.len() as u64;
        append(&log, &mut inflight, record)?;
        i += 1;
        // Interleave conversions evenly: after click c, `(c + 1) * conversions / clicks` are due.
        let due = u128::from(c + 1) * u128::from(conversions) / u128::from(clicks);
        while u128::from(done_conversions) < due {
            let record = tally_model::encode(&g.conversion(ts(i)))?;
            bytes += record.len() as u64;
            append(&log, &mut inflight, record)?;
            i += 1;
            done_conversions += 1;
        }
        if last_report.elapsed().as_secs() >= 10 {
            last_report = Instant::now();
            eprintln!("gen: {i}/{total} events, {:.0}s", started.elapsed().as_secs_f64());
        }
    }
    for p in inflight {
        p.wait()?;
    }
    let last = log.last_committed();
    log.close();
    let secs = started.elapsed().as_secs_f64();
    let m = &g.mix;
    println!(
        "gen: appended {last} events ({:.0} MiB of records) in {secs:.1}s: {:.0} events/s (generate + encode + append, sync=none)",
        mib(bytes),
        last as f64 / secs
    );
    println!(
        "gen: clicks {} (non-human {}, repeat visits {}, with prior_click {}); conversions {} (recent click {}, \
         old click {}, unknown click {}, coupon {}, duplicate txid {}, refund/chargeback {}, currency mismatch {})",
        m.clicks,
        m.non_human,
        m.repeat_visits,
        m.prior_click,
        m.conversions,
        m.recent_click,
        m.old_click,
        m.unknown_click,
        m.coupon,
        m.duplicate,
        m.refund,
        m.currency_mismatch
    );
    println!("gen: log size on disk {:.0} MiB", mib(dir_size(dir)));
    println!("gen: peak RSS {:.0} MiB (generator + log writer)", mib_of_kb(proc_status_kb("VmHWM")));
    Ok(())
}

fn run(dir: &Path) -> Res<()> {
    let state = state_dir(dir);
    if state.exists() {
        std::fs::remove_dir_all(&state)?;
    }
    let rss_start = proc_status_kb("VmRSS");
    let reader = LogReader::open_secondary(dir)?;
    // COMMIT_EVERY overrides the worker's default batch between commits, to measure its effect.
    let mut options = WorkerOptions::default();
    if let Some(n) = std::env::var("COMMIT_EVERY").ok().and_then(|v| v.parse().ok()) {
        options.commit_every = n;
    }
    // Snapshots as `tally serve` takes them by default, so `replay` can start mid-log.
    // SNAPSHOT_EVERY=0 turns them off, to measure what they cost.
    let every = std::env::var("SNAPSHOT_EVERY").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    options.snapshots = (every > 0).then(|| tally_attribution::SnapshotPolicy {
        dir: tally_attribution::snapshots::dir(dir),
        every,
        keep: 16,
    });
    let snaps = tally_attribution::snapshots::dir(dir);
    if snaps.exists() {
        std::fs::remove_dir_all(&snaps)?;
    }
    println!("run: commit_every {}", options.commit_every);
    let mut worker = Worker::open(&state, options, AttributionMetrics::default())?;

    let started = Instant::now();
    let cpu_start = cpu_secs();
    let events = worker.catch_up(&reader, None)?;
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_secs().zip(cpu_start).map(|(end, start)| end - start);
    let peak = proc_status_kb("VmHWM");
    let rss_end = proc_status_kb("VmRSS");
    let rate = events as f64 / secs;
    println!("run: attributed {events} events from scratch on one thread in {secs:.2}s");
    println!(
        "run: {rate:.0} events/s ({:.2}x the {TARGET_EVENTS_PER_SEC:.0}/s target: {})",
        rate / TARGET_EVENTS_PER_SEC,
        if rate >= TARGET_EVENTS_PER_SEC { "met" } else { "MISSED" }
    );
    if let Some(cpu) = cpu {
        println!(
            "run: CPU {cpu:.1}s on all threads: {:.2} µs per event, {:.2} cores busy",
            cpu * 1e6 / events.max(1) as f64,
            cpu / secs
        );
    }
    let peak_mib = mib_of_kb(peak);
    println!(
        "run: peak RSS (VmHWM) {peak_mib:.0} MiB (target < {TARGET_PEAK_RSS_MIB:.0} MiB: {}); RSS at start {:.0} MiB, \
         at end {:.0} MiB",
        if peak_mib < TARGET_PEAK_RSS_MIB { "met" } else { "MISSED" },
        mib_of_kb(rss_start),
        mib_of_kb(rss_end)
    );
    println!("run: position {}, pending holds {}", worker.position(), worker.state().pending_holds());

    let t = Instant::now();
    let mut entries = 0u64;
    let mut by_status: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    let mut by_reason: BTreeMap<&str, u64> = BTreeMap::new();
    for e in worker.state().entries() {
        let e = e?;
        entries += 1;
        *by_status.entry((e.kind.as_str(), e.status.as_str())).or_default() += 1;
        let reason = match e.reason.as_str() {
            "" => "(none)",
            r => r,
        };
        *by_reason.entry(reason).or_default() += 1;
    }
    let digest = worker.state().ledger_digest()?;
    println!("run: ledger entries {entries} (counted and digested in {:.2}s)", t.elapsed().as_secs_f64());
    let list = |m: Vec<String>| m.join(", ");
    println!("run:   by kind/status: {}", list(by_status.iter().map(|((k, s), n)| format!("{k}/{s} {n}")).collect()));
    println!("run:   by reason: {}", list(by_reason.iter().map(|(r, n)| format!("{r} {n}")).collect()));
    println!("run: ledger digest {digest}");
    drop(worker);
    println!("run: attribution state on disk {:.1} MiB ({})", mib(dir_size(&state)), state.display());
    println!("run: log on disk {:.0} MiB", mib(dir_size(dir).saturating_sub(dir_size(&state))));

    if std::env::var("BASELINE").map_or(true, |v| v != "0") {
        // What reading and decoding the log alone costs: the floor under attribution's rate.
        let t = Instant::now();
        let mut n = 0u64;
        let mut from = 1;
        loop {
            let batch = reader.read_range(from, 16_384)?;
            let Some((last, _)) = batch.last() else { break };
            from = last + 1;
            for (_, bytes) in &batch {
                std::hint::black_box(tally_model::decode(bytes)?);
                n += 1;
            }
        }
        let secs = t.elapsed().as_secs_f64();
        println!("baseline: read + decode only: {n} events in {secs:.2}s: {:.0} events/s", n as f64 / secs);
    }
    Ok(())
}

/// Replays the log of `dir` against the ledger `run` left there, as `tally replay` does.
fn replay(dir: &Path) -> Res<()> {
    let rss_start = proc_status_kb("VmRSS");
    let mut options = tally_audit::ReplayOptions::default();
    if let Some(from) = std::env::var("FROM").ok().and_then(|v| v.parse().ok()) {
        options.from = Some(tally_audit::Bound::Seq(from));
    }
    let r = tally_audit::replay(dir, &options, &mut |_, _, _| {})?;
    let peak = mib_of_kb(proc_status_kb("VmHWM"));
    let rate = r.events_per_second();
    let start = match &r.snapshot {
        Some(_) => format!("from the snapshot at {}", r.started_after),
        None => "from the first event".to_owned(),
    };
    println!("replay: window {}..={}, {} events applied {start} in {:.2}s", r.from, r.to, r.events, r.seconds);
    println!(
        "replay: {rate:.0} events/s ({:.2}x the {TARGET_EVENTS_PER_SEC:.0}/s target: {})",
        rate / TARGET_EVENTS_PER_SEC,
        if rate >= TARGET_EVENTS_PER_SEC { "met" } else { "MISSED" }
    );
    println!(
        "replay: peak RSS (VmHWM) {peak:.0} MiB; RSS at start {:.0} MiB, at end {:.0} MiB",
        mib_of_kb(rss_start),
        mib_of_kb(proc_status_kb("VmRSS"))
    );
    println!(
        "replay: compared {} entries: matched {}, missing {}, extra {}, differing {}",
        r.compared,
        r.matched,
        r.missing(),
        r.extra(),
        r.differing()
    );
    println!("replay: digest replay {} / live {}", r.digest_replayed, r.digest_live);
    if !r.is_ok() {
        return Err("the replay does not reproduce the live ledger".into());
    }
    Ok(())
}

/// `gen` into `dir`, then `run` in a child process (for a clean peak RSS).
fn all(dir: Option<PathBuf>) -> Res<()> {
    let (dir, _temp) = match dir {
        Some(d) => (d, None),
        None => {
            let t = tempfile::Builder::new().prefix("tally-attribution-bench-").tempdir_in("/tmp")?;
            (t.path().join("data"), Some(t))
        }
    };
    generate(&dir)?;
    for phase in ["run", "replay"] {
        let status = Command::new(std::env::current_exe()?).arg(phase).arg(&dir).status()?;
        if !status.success() {
            return Err(format!("{phase} phase failed: {status}").into());
        }
    }
    Ok(())
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir_arg = |i: usize| args.get(i).map(PathBuf::from).or_else(|| std::env::var_os("DIR").map(PathBuf::from));
    match args.first().map(String::as_str) {
        Some("gen") => generate(&dir_arg(1).ok_or("usage: attribution gen DIR")?),
        Some("run") => run(&dir_arg(1).ok_or("usage: attribution run DIR")?),
        Some("replay") => replay(&dir_arg(1).ok_or("usage: attribution replay DIR")?),
        None | Some("all") => all(dir_arg(1)),
        Some(other) => {
            Err(format!("unknown mode {other:?}; usage: attribution [gen DIR | run DIR | replay DIR | all [DIR]]")
                .into())
        }
    }
}
