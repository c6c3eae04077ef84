//! Outgoing deliveries, in two parts.
//!
//! 1. The dispatcher alone: how many notifications a second it delivers to a receiver on
//!    127.0.0.1 that answers at once, alone and beside a receiver that never answers (whose
//!    deliveries hold their per-receiver queue and time out).
//! 2. Ingest beside a receiver: a real server (`tally_testkit::TestServer`: two runtime
//!    threads, the attribution worker and the dispatcher in it, as `tally serve` runs by
//!    default) takes clicks over keep-alive HTTP/1.1 while a thread posts conversions on
//!    earlier clicks, each making a commission whose postback goes to the affiliate's
//!    receiver. Rounds alternate between a receiver that answers at once and one that never
//!    answers, each on a fresh data directory; clicks/s, per-click p50/p99 and the process's
//!    CPU time per click are compared, and each round says what became of its deliveries, so
//!    the hanging receiver is seen being hit. `deliveries.timeout_ms` is 1 s rather than the
//!    default 10 s so that, within a round of a few seconds, its attempts time out, are
//!    rescheduled and open its circuit, as they would over a longer outage.
//!
//! ```text
//! deliveries            both parts
//! PART=dispatcher       part 1 only: N = 20000 commissions (NOTIFICATIONS=...), one postback each
//! PART=ingest           part 2 only; its knobs (defaults):
//!   INGEST_CLICKS=200000        clicks per round
//!   INGEST_THREADS=4            click connections (one thread each)
//!   INGEST_CONVERSION_EVERY=20  one conversion per this many clicks
//!   INGEST_ROUNDS=4             rounds per receiver, the order swapped every round
//!   INGEST_TIMEOUT_MS=1000      deliveries.timeout_ms
//! ```
//!
//! Everything on this machine and in this process: the receivers are tokio tasks answering
//! raw HTTP/1.1, and the load generator shares the cores with the server. The system
//! allocator, not the `tally` binary's mimalloc: absolute rates are below the binary's, the
//! ratio is the point.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tally_attribution::deliveries::{DeliveryStatus, DeliveryStore};
use tally_attribution::State;
use tally_delivery::{run, DeliveryConfig, DeliveryMetrics};
use tally_model::Event;
use tally_testkit::{ClickBuilder, ConversionBuilder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// A receiver: counts requests and answers 200 at once, or (`hang`) never answers.
async fn receiver(hang: bool, count: Arc<AtomicU64>) -> Res<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let count = Arc::clone(&count);
            tokio::spawn(async move {
                let mut buf = [0u8; 8192];
                loop {
                    // Requests are GETs without bodies: one read ends at the blank line.
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    count.fetch_add(1, Ordering::Relaxed);
                    if hang {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        return;
                    }
                    if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// A committed state whose `n` commissions each notify `fast` (aff1) or, one in `hang_every`,
/// `slow` (aff2).
fn state(data: &std::path::Path, n: u64, fast: &str, slow: &str, hang_every: u64) -> Res<()> {
    let program = format!(
        "[[advertisers]]\nid = \"acme\"\npostback_tokens = [\"t\"]\n[[affiliates]]\nid = \"aff1\"\npostback_url = \"http://{fast}/pb?cid={{click_id}}&p={{payout}}\"\n[[affiliates]]\nid = \"aff2\"\npostback_url = \"http://{slow}/pb?cid={{click_id}}\"\n[[offers]]\nid = \"shop\"\nadvertiser = \"acme\"\ndestination = \"https://shop.example/?c={{click_id}}\"\ncurrency = \"USD\"\n  [[offers.goals]]\n  id = \"sale\"\n  payout = {{ kind = \"fixed\", amount = \"3.00\" }}\n"
    );
    let mut state = State::open(&tally_attribution::state_dir(data), false)?;
    let t0 = tally_testkit::generate::T0;
    let mut seq = 0;
    let mut apply = |state: &mut State, e: &Event| -> Res<()> {
        seq += 1;
        tally_attribution::apply(state, seq, e)?;
        Ok(())
    };
    apply(&mut state, &tally_testkit::generate::program_event(t0, &program))?;
    for i in 0..n {
        let aff = if hang_every > 0 && i % hang_every == 0 { "aff2" } else { "aff1" };
        let click = ClickBuilder::new().at(t0).nonce(i).offer("shop").affiliate(aff).build();
        let id = click.click_id;
        apply(&mut state, &Event::Click(click))?;
        let c = ConversionBuilder::new().at(t0).offer("shop").goal("sale").click(id).txid(&format!("T{i}"));
        apply(&mut state, &c.event())?;
    }
    state.commit()?;
    Ok(())
}

async fn measure(n: u64, hang_every: u64) -> Res<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().to_path_buf();
    let (fast_count, slow_count) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let fast = receiver(false, Arc::clone(&fast_count)).await?;
    let slow = receiver(true, Arc::clone(&slow_count)).await?;
    let started = Instant::now();
    let d = data.clone();
    let (f, s) = (fast.clone(), slow.clone());
    tokio::task::spawn_blocking(move || state(&d, n, &f, &s, hang_every).map_err(|e| e.to_string())).await??;
    let built = started.elapsed();
    let to_fast = if hang_every > 0 { n - n.div_ceil(hang_every) } else { n };
    let store = Arc::new(DeliveryStore::open(&tally_attribution::deliveries_dir(&data))?);
    // `tally serve`'s defaults (the 250 ms poll among them), bar the private address.
    let config = DeliveryConfig { allow_private: true, timeout: Duration::from_secs(2), ..DeliveryConfig::default() };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let secrets: tally_delivery::SecretLookup = Arc::new(|_: &str| None);
    let task = tokio::spawn(run(data, config, secrets, Arc::clone(&store), DeliveryMetrics::default(), None, async {
        let _ = stopped.await;
    }));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(600);
    while fast_count.load(Ordering::Relaxed) < to_fast {
        if Instant::now() > deadline {
            return Err(format!("only {} of {to_fast} delivered", fast_count.load(Ordering::Relaxed)).into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = started.elapsed();
    let _ = stop.send(());
    task.await??;
    let delivered = store.list(None, usize::MAX, |d| d.status == DeliveryStatus::Delivered)?.len();
    println!(
        "{n} commissions ({} to a receiver that never answers): state built in {:.1}s; {to_fast} postbacks delivered in {:.2}s: {:.0}/s ({delivered} recorded delivered; the hanging receiver was asked {} times)",
        if hang_every > 0 { n.div_ceil(hang_every) } else { 0 },
        built.as_secs_f64(),
        took.as_secs_f64(),
        to_fast as f64 / took.as_secs_f64(),
        slow_count.load(Ordering::Relaxed),
    );
    Ok(())
}

/// The advertiser's postback token, as the secrets store gives it.
const TOKEN: &str = "bench-acme-token-0123456789";

/// The ingest part's knobs (environment variables, see the module docs).
#[derive(Debug, Clone, Copy)]
struct Ingest {
    clicks: usize,
    threads: usize,
    every: usize,
    rounds: usize,
    timeout_ms: u64,
}

fn knob<T: std::str::FromStr>(name: &str, default: T) -> Res<T> {
    match std::env::var(name) {
        Ok(v) => v.parse().map_err(|_| format!("{name}: not a valid value: {v:?}").into()),
        Err(_) => Ok(default),
    }
}

impl Ingest {
    fn from_env() -> Res<Ingest> {
        let i = Ingest {
            clicks: knob("INGEST_CLICKS", 200_000)?,
            threads: knob("INGEST_THREADS", 4)?,
            every: knob("INGEST_CONVERSION_EVERY", 20)?,
            rounds: knob("INGEST_ROUNDS", 4)?,
            timeout_ms: knob("INGEST_TIMEOUT_MS", 1000)?,
        };
        if i.threads == 0 || i.rounds == 0 || i.clicks < i.threads {
            return Err(
                "INGEST_THREADS and INGEST_ROUNDS must be at least 1, INGEST_CLICKS at least the threads".into()
            );
        }
        Ok(i)
    }
}

/// What one round measured.
#[derive(Debug)]
struct Round {
    clicks: usize,
    secs: f64,
    p50_us: u64,
    p99_us: u64,
    /// Conversions accepted, and of those, while clicks were still being sent.
    conversions: u64,
    during: u64,
    /// Requests the receiver got from the first click to the tallies.
    asked: u64,
    asked_secs: f64,
    /// `tally_deliveries_attempts_total` of postbacks by outcome (delivered, retry, failed,
    /// refused), and `tally_deliveries_taken_total`.
    attempts: [u64; 4],
    taken: u64,
    /// The delivery log once the server stopped: pending, delivered, failed.
    log: [usize; 3],
    stop_secs: f64,
    /// CPU time of this whole process (server, receiver and load generator) per click sent.
    cpu_us_per_click: f64,
}

fn connect(addr: std::net::SocketAddr) -> std::io::Result<tally_testkit::Conn> {
    let s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.set_nodelay(true)?;
    Ok(tally_testkit::Conn::from_stream(s))
}

/// `GET target` on a connection of its own.
fn get(addr: std::net::SocketAddr, target: &str) -> Res<tally_testkit::Resp> {
    Ok(connect(addr)?.try_send(format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())?)
}

/// The value of the series `series` (name and labels as exported) in OpenMetrics `text`, 0
/// when it is not there.
fn metric_f64(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).filter(|rest| rest.starts_with(' ')))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
}

fn metric(text: &str, series: &str) -> u64 {
    metric_f64(text, series) as u64
}

/// The click ID in a redirect's `cid=` parameter (the offer's destination puts it there).
fn click_id(r: &tally_testkit::Resp) -> Option<String> {
    let loc = r.header("location")?;
    let from = loc.find("cid=")? + 4;
    let id = loc[from..].split('&').next()?;
    (!id.is_empty()).then(|| id.to_owned())
}

/// A temp dir with `tally.toml`, `program.toml` (one affiliate, its postback URL at
/// `receiver`, one link `demo`) and `secrets.toml`.
fn ingest_env(receiver: &str, timeout_ms: u64) -> Res<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    let config = format!(
        "[log]\ndata_dir = \"data\"\n[program]\npath = \"program.toml\"\n[logging]\nlevel = \"error\"\n[secrets]\nfile = \"secrets.toml\"\n[deliveries]\nallow_private = true\ntimeout_ms = {timeout_ms}\n"
    );
    let program = format!(
        "[[advertisers]]\nid = \"acme\"\npostback_tokens = [\"acme-token\"]\n[[affiliates]]\nid = \"aff1\"\npostback_url = \"http://{receiver}/pb?cid={{click_id}}&payout={{payout}}&status={{status}}\"\n[[offers]]\nid = \"shop\"\nadvertiser = \"acme\"\ndestination = \"https://shop.example/?cid={{click_id}}\"\ncurrency = \"USD\"\n  [[offers.goals]]\n  id = \"sale\"\n  payout = {{ kind = \"fixed\", amount = \"3.00\" }}\n[[links]]\ncode = \"demo\"\noffer = \"shop\"\naffiliate = \"aff1\"\n"
    );
    std::fs::write(dir.path().join("tally.toml"), config)?;
    std::fs::write(dir.path().join("program.toml"), program)?;
    std::fs::write(dir.path().join("secrets.toml"), format!("acme-token = \"{TOKEN}\"\n"))?;
    Ok(dir)
}

/// One connection's clicks: their latencies in µs; every `every`-th click's ID goes to the
/// converter.
fn clicker(
    addr: std::net::SocketAddr,
    n: usize,
    every: usize,
    start: &std::sync::Barrier,
    convert: &std::sync::mpsc::Sender<String>,
) -> Res<Vec<u64>> {
    let mut conn = connect(addr)?;
    let mut latencies = Vec::with_capacity(n);
    let req = "GET /c/demo?sub1=bench HTTP/1.1\r\nHost: t\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36\r\n\r\n";
    start.wait();
    for i in 1..=n {
        let sent = Instant::now();
        let r = conn.try_send(req.as_bytes())?;
        latencies.push(sent.elapsed().as_micros() as u64);
        if r.status != 302 {
            return Err(format!("a click answered {}: {}", r.status, r.text()).into());
        }
        if every > 0 && i % every == 0 {
            let id = click_id(&r).ok_or("a click's redirect without cid=")?;
            // A converter gone has failed, and says why when joined.
            if convert.send(id).is_err() {
                break;
            }
        }
    }
    Ok(latencies)
}

/// Posts a conversion for each click ID received, over one connection: how many were accepted
/// in all and while `clicking`.
fn converter(
    addr: std::net::SocketAddr,
    ids: std::sync::mpsc::Receiver<String>,
    clicking: &AtomicBool,
) -> Res<(u64, u64)> {
    let mut conn = connect(addr)?;
    let (mut all, mut during) = (0, 0);
    for (i, cid) in ids.into_iter().enumerate() {
        let req = format!("GET /postback?cid={cid}&txid=B{i}&amount=50.00&token={TOKEN} HTTP/1.1\r\nHost: t\r\n\r\n");
        let r = conn.try_send(req.as_bytes())?;
        if r.status != 200 || !r.text().contains("\"accepted\"") {
            return Err(format!("a conversion answered {}: {}", r.status, r.text()).into());
        }
        all += 1;
        if clicking.load(Ordering::Relaxed) {
            during += 1;
        }
    }
    Ok((all, during))
}

/// A round: a fresh server whose affiliate's postbacks go to a receiver that answers at once,
/// or (`hang`) never; clicks and conversions through it; what became of the deliveries.
fn ingest_round(rt: &tokio::runtime::Runtime, hang: bool, k: Ingest) -> Res<Round> {
    let asked = Arc::new(AtomicU64::new(0));
    let recv = rt.block_on(receiver(hang, Arc::clone(&asked)))?;
    let dir = ingest_env(&recv, k.timeout_ms)?;
    let data = dir.path().join("data");
    let server = tally_testkit::TestServer::try_start(&dir.path().join("tally.toml"), &data)?;
    let (addr, admin) = (server.addr, server.admin);

    let per = k.clicks / k.threads;
    let start = Arc::new(std::sync::Barrier::new(k.threads + 1));
    let clicking = Arc::new(AtomicBool::new(true));
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let c = Arc::clone(&clicking);
    let conv = std::thread::spawn(move || converter(addr, rx, &c).map_err(|e| e.to_string()));
    let clickers: Vec<_> = (0..k.threads)
        .map(|_| {
            let (start, tx) = (Arc::clone(&start), tx.clone());
            std::thread::spawn(move || clicker(addr, per, k.every, &start, &tx).map_err(|e| e.to_string()))
        })
        .collect();
    drop(tx);
    let cpu = || -> Res<f64> { Ok(metric_f64(&get(admin, "/metrics")?.text(), "process_cpu_seconds_total")) };
    let cpu_before = cpu()?;
    start.wait();
    let began = Instant::now();
    let mut latencies = Vec::with_capacity(per * k.threads);
    for c in clickers {
        latencies.extend(c.join().map_err(|_| "a click thread panicked")??);
    }
    let secs = began.elapsed().as_secs_f64();
    let cpu_secs = cpu()? - cpu_before;
    clicking.store(false, Ordering::Relaxed);
    let (conversions, during) = conv.join().map_err(|_| "the conversion thread panicked")??;
    latencies.sort_unstable();
    let at = |q: f64| latencies.get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)));

    // Until every commission's postback is in the delivery log, so the round's tallies cover
    // all of them. Not until all are delivered: the dispatcher starts at most 64 deliveries to
    // one receiver per look (every 250 ms), fewer than the conversions made here.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut text;
    loop {
        text = get(admin, "/metrics")?.text();
        if metric(&text, "tally_deliveries_taken_total") >= conversions || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (asked_n, asked_secs) = (asked.load(Ordering::Relaxed), began.elapsed().as_secs_f64());
    let attempts = ["delivered", "retry", "failed", "refused"]
        .map(|o| metric(&text, &format!("tally_deliveries_attempts_total{{kind=\"postback\",outcome=\"{o}\"}}")));
    let taken = metric(&text, "tally_deliveries_taken_total");

    let stopping = Instant::now();
    drop(server);
    let stop_secs = stopping.elapsed().as_secs_f64();
    let store = DeliveryStore::open_read_only(&tally_attribution::deliveries_dir(&data))?;
    let mut log = [0; 3];
    for (_, d) in store.list(None, usize::MAX, |_| true)? {
        log[match d.status {
            DeliveryStatus::Pending => 0,
            DeliveryStatus::Delivered => 1,
            _ => 2,
        }] += 1;
    }
    Ok(Round {
        clicks: latencies.len(),
        secs,
        p50_us: at(0.5).copied().unwrap_or(0),
        p99_us: at(0.99).copied().unwrap_or(0),
        conversions,
        during,
        asked: asked_n,
        asked_secs,
        attempts,
        taken,
        log,
        stop_secs,
        cpu_us_per_click: cpu_secs * 1e6 / (per * k.threads) as f64,
    })
}

/// `n` with a comma between thousands.
fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn ingest(rt: &tokio::runtime::Runtime) -> Res<()> {
    let k = Ingest::from_env()?;
    println!(
        "ingest: {} clicks per round over {} connections, one conversion per {} clicks, postbacks to a receiver that answers at once (prompt) or never (hanging), deliveries.timeout_ms = {}; {} rounds each, alternating (prompt first in odd rounds, hanging first in even ones)",
        thousands(k.clicks as u64),
        k.threads,
        k.every,
        k.timeout_ms,
        k.rounds
    );
    let mut rounds: [Vec<Round>; 2] = [Vec::new(), Vec::new()];
    for i in 1..=k.rounds {
        // Prompt then hanging, then hanging then prompt: whatever a round's place costs (the
        // process warming up, the allocator's heap growing) falls on both alike.
        let order = if i % 2 == 1 { [false, true] } else { [true, false] };
        for hang in order {
            let r = ingest_round(rt, hang, k)?;
            println!(
                "round {i} {:<7} {} clicks in {:.2}s: {}/s (p50 {} µs, p99 {} µs, CPU {:.1} µs a click); {} conversions ({} during the clicks); receiver asked {} times in {:.1}s; attempts {} delivered, {} retry, {} failed, {} refused; {} taken into the delivery log: {} delivered, {} pending, {} failed; server stopped in {:.2}s",
                if hang { "hanging" } else { "prompt" },
                thousands(r.clicks as u64),
                r.secs,
                thousands((r.clicks as f64 / r.secs) as u64),
                r.p50_us,
                r.p99_us,
                r.cpu_us_per_click,
                thousands(r.conversions),
                thousands(r.during),
                thousands(r.asked),
                r.asked_secs,
                thousands(r.attempts[0]),
                thousands(r.attempts[1]),
                thousands(r.attempts[2]),
                thousands(r.attempts[3]),
                thousands(r.taken),
                thousands(r.log[1] as u64),
                thousands(r.log[0] as u64),
                thousands(r.log[2] as u64),
                r.stop_secs,
            );
            rounds[usize::from(hang)].push(r);
        }
    }
    let rate = |rs: &[Round]| median(rs.iter().map(|r| r.clicks as f64 / r.secs).collect());
    let p = |rs: &[Round], f: fn(&Round) -> u64| median(rs.iter().map(|r| f(r) as f64).collect()) as u64;
    let (prompt, hanging) = (rate(&rounds[0]), rate(&rounds[1]));
    println!(
        "ingest: {} clicks/s beside a prompt receiver, {} beside a hanging one ({:.2}x); p50 {} / {} µs, p99 {} / {} µs, CPU {:.1} / {:.1} µs a click (medians of {} rounds)",
        thousands(prompt as u64),
        thousands(hanging as u64),
        hanging / prompt,
        p(&rounds[0], |r| r.p50_us),
        p(&rounds[1], |r| r.p50_us),
        p(&rounds[0], |r| r.p99_us),
        p(&rounds[1], |r| r.p99_us),
        median(rounds[0].iter().map(|r| r.cpu_us_per_click).collect()),
        median(rounds[1].iter().map(|r| r.cpu_us_per_click).collect()),
        k.rounds
    );
    if let Some(r) = rounds[1].last() {
        println!(
            "the hanging receiver, last round: asked {} times; of {} postbacks, {} delivered, {} pending, {} failed ({} attempts timed out and wait for a retry)",
            thousands(r.asked),
            thousands(r.taken),
            thousands(r.log[1] as u64),
            thousands(r.log[0] as u64),
            thousands(r.log[2] as u64),
            thousands(r.attempts[1]),
        );
    }
    Ok(())
}

fn main() -> Res<()> {
    let part = std::env::var("PART").unwrap_or_default();
    if !["", "dispatcher", "ingest"].contains(&part.as_str()) {
        return Err(format!("PART: dispatcher or ingest (or unset for both), not {part:?}").into());
    }
    let n: u64 = std::env::var("NOTIFICATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    if part != "ingest" {
        rt.block_on(async {
            measure(n, 0).await?;
            measure(n, 10).await
        })?;
    }
    if part != "dispatcher" {
        ingest(&rt)?;
    }
    Ok(())
}
