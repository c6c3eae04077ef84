//! The dispatcher against real receivers on 127.0.0.1: one that fails each delivery's first
//! attempt, one that never answers, and (with private addresses not allowed) one that must
//! never be reached. Webhook signatures are checked by a Standard Webhooks verification
//! written here from the specification, not Tally's code.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use hmac::Mac as _;
use tally_attribution::deliveries::{DeliveryStatus, DeliveryStore};
use tally_attribution::State;
use tally_delivery::{run, DeliveryConfig};
use tally_model::Event;
use tally_testkit::{ClickBuilder, ConversionBuilder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A request as the receiver saw it.
#[derive(Debug, Clone)]
struct Seen {
    head: String,
    body: String,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// A receiver: answers 500 to the first request of each idempotency key and 200 after, or
/// (`hang`) reads and never answers.
async fn receiver(hang: bool) -> (SocketAddr, Arc<Mutex<Vec<Seen>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else { return };
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = s.read(&mut chunk).await else { return };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    let Some((head, body)) = text.split_once("\r\n\r\n") else { continue };
                    let seen = Seen { head: head.to_owned(), body: body.to_owned() };
                    let want: usize = seen.header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
                    if body.len() < want {
                        continue;
                    }
                    if hang {
                        log.lock().unwrap().push(seen);
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        return;
                    }
                    let key = seen.header("idempotency-key").unwrap_or("").to_owned();
                    let first = !log.lock().unwrap().iter().any(|s| s.header("idempotency-key") == Some(key.as_str()));
                    log.lock().unwrap().push(seen);
                    let status = if first { "500 Internal Server Error" } else { "200 OK" };
                    let _ = s.write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes()).await;
                    buf.clear();
                }
            });
        }
    });
    (addr, seen)
}

/// A committed attribution state in `data/attribution` whose program sends postbacks of
/// aff1 to `postback`, of aff2 to `hanging`, and every change to a webhook at `webhook`.
fn state(data: &std::path::Path, postback: SocketAddr, hanging: SocketAddr, webhook: SocketAddr) -> usize {
    let program = format!(
        r#"
[[advertisers]]
id = "acme"
postback_tokens = ["acme-token"]

[[affiliates]]
id = "aff1"
postback_url = "http://{postback}/pb?cid={{click_id}}&payout={{payout}}&status={{status}}"
[[affiliates]]
id = "aff2"
postback_url = "http://{hanging}/pb?cid={{click_id}}"

[[webhooks]]
id = "crm"
url = "http://{webhook}/hooks"
secret = "crm-key"

[[offers]]
id = "shop"
advertiser = "acme"
destination = "https://shop.example/?c={{click_id}}"
currency = "USD"

  [[offers.goals]]
  id = "sale"
  payout = {{ kind = "fixed", amount = "3.00" }}
"#
    );
    let state = committed(data, &program, &["aff1", "aff1", "aff2"]);
    state.outbox_after(None, usize::MAX).unwrap().len()
}

/// A committed attribution state in `data/attribution`: `program`, then a click and a sale
/// on offer `shop` for each of `affiliates`.
fn committed(data: &std::path::Path, program: &str, affiliates: &[&str]) -> State {
    let mut state = State::open(&tally_attribution::state_dir(data), false).unwrap();
    let t0 = tally_testkit::generate::T0;
    let mut events = vec![tally_testkit::generate::program_event(t0, program)];
    for (i, aff) in affiliates.iter().enumerate() {
        let click = ClickBuilder::new().at(t0).nonce(i as u64).offer("shop").affiliate(aff).build();
        let id = click.click_id;
        events.push(Event::Click(click));
        events
            .push(ConversionBuilder::new().at(t0).offer("shop").goal("sale").click(id).txid(&format!("T{i}")).event());
    }
    for (i, e) in events.iter().enumerate() {
        tally_attribution::apply(&mut state, i as u64 + 1, e).unwrap();
    }
    state.commit().unwrap();
    state
}

/// The Standard Webhooks check: base64 HMAC-SHA256 of `id.timestamp.body` under the secret's
/// base64-decoded key, any `v1,` signature of the header matching.
fn verify(secret: &str, id: &str, ts: &str, body: &str, header: &str) -> bool {
    let key = base64::engine::general_purpose::STANDARD.decode(secret.trim_start_matches("whsec_")).unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.{body}").as_bytes());
    let want = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    header.split(' ').any(|s| s.strip_prefix("v1,") == Some(want.as_str()))
}

fn config(allow_private: bool) -> DeliveryConfig {
    DeliveryConfig {
        allow_private,
        timeout: Duration::from_millis(300),
        first_retry: Duration::from_millis(50),
        max_retry: Duration::from_millis(200),
        poll: Duration::from_millis(20),
        ..DeliveryConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_item_is_delivered_at_least_once_signed_and_keyed_while_a_hanging_receiver_waits() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    let (postback, pb_seen) = receiver(false).await;
    let (hanging, hang_seen) = receiver(true).await;
    let (webhook, wh_seen) = receiver(false).await;
    let items = state(&data, postback, hanging, webhook);
    assert_eq!(items, 6, "3 postbacks, 3 webhooks");
    let store = Arc::new(DeliveryStore::open(&tally_attribution::deliveries_dir(&data)).unwrap());
    let secrets: tally_delivery::SecretLookup = Arc::new(|n: &str| (n == "crm-key").then(|| SECRET.to_owned()));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics = tally_delivery::DeliveryMetrics::default();
    let task = tokio::spawn(run(data.clone(), config(true), secrets, Arc::clone(&store), metrics, None, async {
        let _ = stopped.await;
    }));

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let all = store.list(None, 100, |_| true).unwrap();
        let delivered = all.iter().filter(|(_, d)| d.status == DeliveryStatus::Delivered).count();
        let timed_out = all.iter().any(|(_, d)| d.last_error.contains("no answer"));
        if delivered == 5 && timed_out {
            break;
        }
        assert!(Instant::now() < deadline, "{all:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Each key was tried twice at the failing-first receivers (one 500, one 200), and the
    // receiver saw the same idempotency key both times: it can drop the repeat.
    let pb = pb_seen.lock().unwrap().clone();
    let keys: BTreeMap<String, usize> = pb.iter().fold(BTreeMap::new(), |mut m, s| {
        *m.entry(s.header("idempotency-key").unwrap().to_owned()).or_default() += 1;
        m
    });
    assert_eq!(keys.values().copied().collect::<Vec<_>>(), [2, 2], "{keys:?}");
    assert!(
        pb[0].head.starts_with("GET /pb?cid=") && pb[0].head.contains("&payout=3.00&status=approved"),
        "{}",
        pb[0].head
    );
    let wh = wh_seen.lock().unwrap().clone();
    assert_eq!(wh.len(), 6, "3 webhooks, each twice");
    for s in &wh {
        assert!(s.head.starts_with("POST /hooks "), "{}", s.head);
        let (id, ts, sig) = (
            s.header("webhook-id").unwrap(),
            s.header("webhook-timestamp").unwrap(),
            s.header("webhook-signature").unwrap(),
        );
        assert_eq!(Some(id), s.header("idempotency-key"));
        assert!(verify(SECRET, id, ts, &s.body, sig), "{s:?}");
        assert!(!verify("whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", id, ts, &s.body, sig));
        assert!(s.body.starts_with(r#"{"type":"commission.created""#), "{}", s.body);
    }
    // The hanging receiver: asked, timed out, to be asked again later; nothing else waited.
    let all = store.list(None, 100, |_| true).unwrap();
    let hung: Vec<_> = all.iter().filter(|(_, d)| d.status != DeliveryStatus::Delivered).collect();
    assert_eq!(hung.len(), 1, "{all:#?}");
    assert!(!hang_seen.lock().unwrap().is_empty());
    let d = &hung[0].1;
    assert_eq!(d.status, DeliveryStatus::Pending);
    assert!(d.attempts >= 1 && d.last_error.contains("no answer within 300 ms"), "{d:?}");
    let _ = stop.send(());
    task.await.unwrap().unwrap();

    // A restarted dispatcher takes nothing twice: the floor is past every item.
    let again = store.floor().unwrap();
    assert!(again.is_some());
    let keys_now: BTreeSet<Vec<u8>> = store.list(None, 100, |_| true).unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys_now.len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receivers_on_private_addresses_are_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    let (postback, pb_seen) = receiver(false).await;
    let (webhook, wh_seen) = receiver(false).await;
    state(&data, postback, postback, webhook);
    let store = Arc::new(DeliveryStore::open(&tally_attribution::deliveries_dir(&data)).unwrap());
    let secrets: tally_delivery::SecretLookup = Arc::new(|_: &str| Some(SECRET.to_owned()));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics = tally_delivery::DeliveryMetrics::default();
    let task = tokio::spawn(run(data.clone(), config(false), secrets, Arc::clone(&store), metrics, None, async {
        let _ = stopped.await;
    }));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let all = store.list(None, 100, |_| true).unwrap();
        if all.len() == 6 && all.iter().all(|(_, d)| d.status == DeliveryStatus::Failed) {
            assert!(
                all.iter().all(|(_, d)| d.attempts == 1 && d.last_error.contains("not a public address")),
                "{all:#?}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "{all:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(pb_seen.lock().unwrap().is_empty() && wh_seen.lock().unwrap().is_empty(), "a private receiver was reached");
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

/// A receiver that answers 200 at once, counting requests.
async fn prompt_receiver() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
    let seen = Arc::clone(&count);
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else { return };
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let mut chunk = [0u8; 4096];
                // Postbacks are GETs without bodies: a read ends at the blank line.
                while let Ok(n) = s.read(&mut chunk).await {
                    if n == 0 {
                        return;
                    }
                    seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, count)
}

/// A backlog larger than a receiver's queue goes out in one go: the dispatcher looks again
/// as soon as a look started deliveries, not after `poll` (an hour here), and the first look
/// comes at once. Before, a receiver got 64 deliveries per `poll` at most.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_reaches_a_prompt_receiver_without_waiting_a_poll_per_queue() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    let (addr, count) = prompt_receiver().await;
    let program = format!(
        "[[advertisers]]\nid = \"acme\"\npostback_tokens = [\"t\"]\n[[affiliates]]\nid = \"aff1\"\npostback_url = \"http://{addr}/pb?cid={{click_id}}\"\n[[offers]]\nid = \"shop\"\nadvertiser = \"acme\"\ndestination = \"https://shop.example/?c={{click_id}}\"\ncurrency = \"USD\"\n  [[offers.goals]]\n  id = \"sale\"\n  payout = {{ kind = \"fixed\", amount = \"3.00\" }}\n"
    );
    let n = 300;
    drop(committed(&data, &program, &vec!["aff1"; n]));

    let store = Arc::new(DeliveryStore::open(&tally_attribution::deliveries_dir(&data)).unwrap());
    let config = DeliveryConfig { poll: Duration::from_secs(3600), ..config(true) };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run(
        data.clone(),
        config,
        Arc::new(|_: &str| None),
        Arc::clone(&store),
        tally_delivery::DeliveryMetrics::default(),
        None,
        async {
            let _ = stopped.await;
        },
    ));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let delivered = store
            .list(None, 1_000, |_| true)
            .unwrap()
            .iter()
            .filter(|(_, d)| d.status == DeliveryStatus::Delivered)
            .count();
        if delivered == n {
            break;
        }
        assert!(Instant::now() < deadline, "{delivered} of {n} delivered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(count.load(std::sync::atomic::Ordering::Relaxed), n, "each once");
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}
