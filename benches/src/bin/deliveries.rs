//! Outgoing deliveries: how many notifications a second the dispatcher delivers to a
//! receiver on 127.0.0.1 that answers at once, alone and beside a receiver that never answers
//! (whose deliveries hold their per-receiver queue and time out).
//!
//! ```text
//! deliveries            N = 20000 commissions (NOTIFICATIONS=...), one postback each
//! ```
//!
//! Everything on this machine: the receivers are tokio tasks answering raw HTTP/1.1.

use std::sync::atomic::{AtomicU64, Ordering};
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
    let config = DeliveryConfig {
        allow_private: true,
        timeout: Duration::from_secs(2),
        poll: Duration::from_millis(20),
        ..DeliveryConfig::default()
    };
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

fn main() -> Res<()> {
    let n: u64 = std::env::var("NOTIFICATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        measure(n, 0).await?;
        measure(n, 10).await
    })
}
