//! Merchant integration proven in a real browser: headless Chromium, driven over WebDriver
//! (chromedriver, `fantoccini`), visits the fake merchant site (`tally_testkit::merchant`)
//! and a real Tally server in this process. Chromium's host-resolver rules map
//! `aff.example`, `shop.example`, `track.example` and `track.shop.example` to 127.0.0.1, so
//! the affiliate, the shop and the tracker are different sites as they are in production
//! (a site is scheme and registrable domain; ports do not separate sites).
//!
//! Needs `chromium` and `chromedriver` (Debian packages `chromium`, `chromium-driver`;
//! `scripts/test` installs them). `TALLY_CHROMIUM` and `TALLY_CHROMEDRIVER` name other binaries.
#![allow(clippy::unwrap_used)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use tally_testkit::merchant::{FakeMerchant, MerchantSites};
use tally_testkit::{events, ledger, ledger_with, of_type, Env, TestServer};

/// The hosts Chromium resolves to 127.0.0.1.
const HOSTS: [&str; 4] = ["aff.example", "shop.example", "track.example", "track.shop.example"];

/// chromedriver on a free port; killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn binary(var: &str, candidates: &[&str]) -> String {
    if let Ok(b) = std::env::var(var) {
        return b;
    }
    for c in candidates {
        if std::path::Path::new(c).exists() {
            return (*c).to_owned();
        }
    }
    panic!(
        "{} not found (looked in {candidates:?}): install Debian's chromium and chromium-driver (scripts/test does), \
         or set {var}",
        candidates[0]
    )
}

fn start_driver() -> Driver {
    let bin = binary("TALLY_CHROMEDRIVER", &["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]);
    let port = free_port();
    let child = Command::new(bin)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
    Driver { child, url }
}

/// How the browser treats third-party cookies.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ThirdPartyCookies {
    Allowed,
    Blocked,
}

async fn browser(driver: &Driver, cookies: ThirdPartyCookies) -> Client {
    let chromium = binary("TALLY_CHROMIUM", &["/usr/bin/chromium", "/usr/bin/chromium-browser"]);
    let rules = HOSTS.iter().map(|h| format!("MAP {h} 127.0.0.1")).collect::<Vec<_>>().join(", ");
    let mut prefs = json!({});
    if cookies == ThirdPartyCookies::Blocked {
        // "Block third-party cookies" in the settings (both the current and the older key).
        prefs = json!({ "profile.cookie_controls_mode": 1, "profile.block_third_party_cookies": true });
    }
    let caps = json!({
        "goog:chromeOptions": {
            "binary": chromium,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--no-first-run", "--disable-extensions", "--disable-background-networking",
                format!("--host-resolver-rules={rules}"),
            ],
            "prefs": prefs,
        }
    });
    let Value::Object(caps) = caps else { unreachable!() };
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector).capabilities(caps).connect(&driver.url).await.expect("a Chromium session")
}

/// A Tally whose `shoes` offer sends clicks to the fake shop on `shop_port`; `edit` changes
/// the example program further, `advertiser_extra` is added to the `acme` advertiser.
fn tally_for(shop_port: u16, edit: impl Fn(String) -> String, advertiser_extra: &str) -> (Env, TestServer) {
    let env = Env::new("");
    let program = std::fs::read_to_string(env.program()).unwrap();
    let program = program
        .replace(
            "destination = \"https://shop.example/landing?cid={click_id}&aff={aff_id}&s1={sub1}\"",
            &format!(
                "destination = \"http://shop.example:{shop_port}/landing?cid={{click_id}}&aff={{aff_id}}&s1={{sub1}}\""
            ),
        )
        .replace("name = \"ACME Shoes\"", &format!("name = \"ACME Shoes\"\n{advertiser_extra}"));
    assert!(program.contains(&format!("shop.example:{shop_port}")), "the example program's destination changed");
    std::fs::write(env.program(), edit(program)).unwrap();
    let server = env.serve();
    (env, server)
}

fn sites(tracker: &str, tag: &str, shop_port: u16) -> MerchantSites {
    MerchantSites {
        tracker: tracker.to_owned(),
        tag: tag.to_owned(),
        shop: format!("http://shop.example:{shop_port}"),
        link: "demo".into(),
    }
}

/// Waits until `f` returns `Some`, polling every 50 ms for up to 20 s.
async fn until<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn text(c: &Client, id: &str) -> String {
    c.find(Locator::Id(id)).await.unwrap().text().await.unwrap()
}

/// The text of `#id` once it is no longer `pending` (the tag answered, or failed to load).
async fn settled(c: &Client, id: &str) -> String {
    until(&format!("#{id} to settle"), || async {
        let t = text(c, id).await;
        (t != "pending").then_some(t)
    })
    .await
}

/// Waits for the page's load event (its images have loaded or failed by then).
async fn loaded(c: &Client) {
    until("the page to load", || async {
        let state = c.execute("return document.readyState", vec![]).await.ok()?;
        (state == json!("complete")).then_some(())
    })
    .await;
}

/// The click ID the tag keeps in the shop's storage.
async fn stored_click_id(c: &Client) -> Option<String> {
    let v = c.execute("return window.localStorage.getItem('_tally_cid')", vec![]).await.unwrap();
    let s: Value = serde_json::from_str(v.as_str()?).ok()?;
    s["id"].as_str().map(str::to_owned)
}

/// Affiliate page → redirect → landing (the tag stores the click ID) → checkout → thank-you
/// page: the conversion is recorded, attributed to the affiliate, in the ledger `tally
/// commissions` prints. Third-party cookies are blocked: the click ID travels in the shop's
/// own storage, not in a cookie of the tracker's. A reload of the thank-you page pays once.
#[test]
fn a_click_on_the_affiliates_page_becomes_a_commission_with_third_party_cookies_blocked() {
    // The shop's port goes into Tally's program, Tally's port into the shop's pages.
    let shop = FakeMerchant::bind(0).unwrap();
    let (env, server) = tally_for(shop.port, |p| p, "");
    let tracker = format!("http://track.example:{}", server.addr.port());
    shop.serve(sites(&tracker, &tracker, shop.port));
    let shop_port = shop.port;
    let driver = start_driver();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = browser(&driver, ThirdPartyCookies::Blocked).await;
        c.goto(&format!("http://aff.example:{shop_port}/aff")).await.unwrap();
        c.find(Locator::Id("deal")).await.unwrap().click().await.unwrap();
        let landed = until("the landing page", || async {
            let url = c.current_url().await.ok()?;
            (url.host_str() == Some("shop.example") && url.path() == "/landing").then_some(url)
        })
        .await;
        let cid = landed.query_pairs().find(|(k, _)| k == "cid").map(|(_, v)| v.into_owned()).unwrap();
        let stored = until("the tag to store the click ID", || stored_click_id(&c)).await;
        assert_eq!(stored, cid);
        // A first-party cookie on the shop's site as well.
        let cookie = c.get_named_cookie("_tally_cid").await.unwrap();
        assert_eq!(cookie.value(), cid);

        c.find(Locator::Id("checkout")).await.unwrap().click().await.unwrap();
        c.find(Locator::Id("buy")).await.unwrap().click().await.unwrap();
        assert_eq!(settled(&c, "result").await, "accepted");
        assert_eq!(text(&c, "after").await, "page works");
        // The thank-you page reloaded: the same order is a duplicate, paid once.
        c.refresh().await.unwrap();
        assert_eq!(settled(&c, "result").await, "duplicate");
        c.close().await.unwrap();

        let entries = ledger_with(&env.data(), "ORDER-1");
        let paid: Vec<&Value> = entries.iter().filter(|e| e["txid"] == "ORDER-1").collect();
        let commission = paid.iter().find(|e| e["status"] == "pending").unwrap();
        assert_eq!(
            (commission["affiliate"].as_str(), commission["offer"].as_str(), commission["amount"].as_str()),
            (Some("aff1"), Some("shoes"), Some("3.99")),
            "8% of 49.90, held 14 days: {entries:#?}"
        );
        assert_eq!(commission["click_id"], cid.as_str());
        wait_for_entries(&env, 2);
        let paid: Vec<Value> = ledger(&env.data()).into_iter().filter(|e| e["txid"] == "ORDER-1").collect();
        assert_eq!(paid.iter().filter(|e| e["status"] == "duplicate").count(), 1, "{paid:#?}");
        // Recorded as the tag's, with the browser's click ID.
        let convs = of_type(&events(&env.data()), "conversion").into_iter().cloned().collect::<Vec<_>>();
        assert!(convs.iter().all(|c| c["conversion_source"] == "tag" && c["click_id"] == cid.as_str()), "{convs:#?}");
    });
    drop(server);
}

fn wait_for_entries(env: &Env, n: usize) {
    tally_testkit::wait_for(&format!("{n} entries for ORDER-1"), || {
        ledger(&env.data()).iter().filter(|e| e["txid"] == "ORDER-1").count() >= n
    });
}

/// A shop and a Tally wired together, with a Chromium session on them.
struct Stack {
    env: Env,
    server: std::sync::Mutex<Option<TestServer>>,
    shop: FakeMerchant,
    driver: Driver,
    rt: tokio::runtime::Runtime,
}

impl Stack {
    /// Tally answering as `tracker_host` (and serving the tag there), its program changed by
    /// `edit` and the `acme` advertiser extended by `advertiser_extra`.
    fn start(tracker_host: &str, edit: impl Fn(String) -> String, advertiser_extra: &str) -> Stack {
        let shop = FakeMerchant::bind(0).unwrap();
        let (env, server) = tally_for(shop.port, edit, advertiser_extra);
        let tracker = format!("http://{tracker_host}:{}", server.addr.port());
        shop.serve(sites(&tracker, &tracker, shop.port));
        let server = std::sync::Mutex::new(Some(server));
        Stack { env, server, shop, driver: start_driver(), rt: tokio::runtime::Runtime::new().unwrap() }
    }

    fn url(&self, host: &str, path: &str) -> String {
        format!("http://{host}:{}{path}", self.shop.port)
    }

    /// Follows the affiliate's link `#id` to the shop and waits for the tag to keep the click
    /// ID; returns the page's URL and the click ID.
    async fn land(&self, c: &Client, id: &str) -> (url::Url, String) {
        c.goto(&self.url("aff.example", "/aff")).await.unwrap();
        c.find(Locator::Id(id)).await.unwrap().click().await.unwrap();
        let landed = until("the shop", || async {
            let url = c.current_url().await.ok()?;
            (url.host_str() == Some("shop.example")).then_some(url)
        })
        .await;
        let cid = until("the tag to store the click ID", || stored_click_id(c)).await;
        (landed, cid)
    }

    /// Stops Tally as SIGTERM does; its port refuses connections from then on.
    fn stop_tally(&self) {
        let server = self.server.lock().unwrap().take();
        assert!(server.is_some_and(|mut s| s.stop()));
    }

    /// A request to Tally, as the merchant's server would send it.
    fn postback(&self, path: &str) -> Value {
        let server = self.server.lock().unwrap();
        let r = server.as_ref().unwrap().get(path);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        r.json()
    }

    /// The conversions in the log once there are `n` (a pixel's request may still be in
    /// flight when its page has loaded), or after 10 s, whatever there are.
    fn conversions_at_least(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut convs = self.conversions();
        while convs.len() < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            convs = self.conversions();
        }
        convs
    }

    fn conversions(&self) -> Vec<Value> {
        of_type(&events(&self.env.data()), "conversion").into_iter().cloned().collect()
    }
}

/// A deep link reaches the product page with the click ID, the tag keeps it, and the sale
/// is credited to the click. Without a txid, a reload of the thank-you page does not report
/// again: the tag sends the same report from the same page once per tab.
#[test]
fn a_deep_link_keeps_the_click_id_and_a_reload_without_txid_reports_once() {
    let s = Stack::start("track.example", |p| p, "");
    s.rt.block_on(async {
        let c = browser(&s.driver, ThirdPartyCookies::Allowed).await;
        let (landed, cid) = s.land(&c, "deep").await;
        assert_eq!(landed.path(), "/p/42");
        let query: Vec<(String, String)> = landed.query_pairs().into_owned().collect();
        assert_eq!(query[0], ("color".into(), "red".into()), "the deep link's own query comes first: {landed}");
        assert!(query.contains(&("cid".into(), cid.clone())), "{landed}");
        assert!(query.contains(&("s1".into(), "blog-deep".into())), "{landed}");

        c.goto(&s.url("shop.example", "/thanks?amount=20.00")).await.unwrap();
        assert_eq!(settled(&c, "result").await, "accepted");
        c.refresh().await.unwrap();
        assert_eq!(settled(&c, "result").await, "already_sent");
        // A shop that reports with the pixel, the click ID taken from what the tag kept.
        c.goto(&s.url("shop.example", "/thanks?order=PX-2&amount=5.00&via=pixel")).await.unwrap();
        loaded(&c).await;
        c.close().await.unwrap();
    });
    let convs = s.conversions_at_least(2);
    assert_eq!(convs.len(), 2, "{convs:#?}");
    let pixel = &convs[1];
    assert_eq!((pixel["conversion_source"].as_str(), pixel["txid"].as_str()), (Some("pixel"), Some("PX-2")));
    assert_eq!(pixel["click_id"], convs[0]["click_id"]);
    assert_eq!((convs[0]["amount"].as_str(), convs[0]["txid"].as_str()), (Some("20.00"), Some("")));
    let entries = tally_testkit::ledger_with_click(&s.env.data(), convs[0]["click_id"].as_str().unwrap());
    let sale = entries.iter().find(|e| e["kind"] == "commission").unwrap();
    assert_eq!((sale["affiliate"].as_str(), sale["amount"].as_str()), (Some("aff1"), Some("1.60")), "{entries:#?}");
}

/// Tally down while the shop's pages load: a browser that has the tag cached runs it and
/// its report fails quietly; one that cannot load the tag keeps the queued call. Either way
/// the page goes on working.
#[test]
fn the_shop_keeps_working_when_tally_is_down() {
    let s = Stack::start("track.example", |p| p, "");
    s.rt.block_on(async {
        let cached = browser(&s.driver, ThirdPartyCookies::Allowed).await;
        let (_, cid) = s.land(&cached, "deal").await;
        assert_eq!(cid.len(), 26);
        s.stop_tally();
        cached.goto(&s.url("shop.example", "/checkout")).await.unwrap();
        cached.find(Locator::Id("buy")).await.unwrap().click().await.unwrap();
        assert_eq!(settled(&cached, "result").await, "unreachable");
        assert_eq!(text(&cached, "after").await, "page works");
        cached.close().await.unwrap();

        // A new profile: no cached tag.
        let fresh = browser(&s.driver, ThirdPartyCookies::Allowed).await;
        fresh.goto(&s.url("shop.example", "/thanks?order=DOWN-1&amount=5.00")).await.unwrap();
        assert_eq!(settled(&fresh, "result").await, "tag unavailable");
        assert_eq!(text(&fresh, "after").await, "page works");
        assert_eq!(fresh.title().await.unwrap(), "Thank you");
        // The queued call is still there, for a tag that loads later.
        let queued =
            fresh.execute("return Array.isArray(window.tallyq) ? window.tallyq.length : -1", vec![]).await.unwrap();
        assert_eq!(queued, json!(1));
        fresh.close().await.unwrap();
    });
}

/// Same-site deployment: Tally behind the shop's own subdomain (`track.shop.example`) with
/// `cookie_domain = "shop.example"` sets its cookie on the shop's site, so a plain pixel on
/// the thank-you page (no tag, no click ID in the page) is credited even with third-party
/// cookies blocked. The same pixel against Tally on another site (`track.example`) is not:
/// its cookie is a third-party one there, and `SameSite=Lax` keeps it off cross-site images.
#[test]
fn a_same_site_tracker_keeps_its_cookie_first_party() {
    for (tracker, domain, counted) in
        [("track.shop.example", "cookie_domain = \"shop.example\"", true), ("track.example", "", false)]
    {
        let s = Stack::start(tracker, |p| p, domain);
        s.rt.block_on(async {
            let c = browser(&s.driver, ThirdPartyCookies::Blocked).await;
            let (_, cid) = s.land(&c, "deal").await;
            if counted {
                let cookie = c.get_named_cookie("tally_cid").await.unwrap();
                // Set by track.shop.example for the whole site, so the shop's pages carry it.
                assert_eq!(cookie.value(), cid, "{tracker}");
                assert_eq!(cookie.domain().map(|d| d.trim_start_matches('.')), Some("shop.example"), "{tracker}");
            }
            c.goto(&s.url("shop.example", "/thanks?order=PX-1&amount=10.00&via=cookie-pixel")).await.unwrap();
            // The image has loaded (or failed) once the page's load event fired.
            loaded(&c).await;
            c.close().await.unwrap();
            let convs = s.conversions();
            if counted {
                let convs = s.conversions_at_least(1);
                assert_eq!(convs.len(), 1, "{tracker}: {convs:#?}");
                assert_eq!(
                    (convs[0]["click_id"].as_str(), convs[0]["conversion_source"].as_str()),
                    (Some(cid.as_str()), Some("pixel"))
                );
            } else {
                assert!(convs.is_empty(), "{tracker}: a cross-site pixel carried Tally's cookie: {convs:#?}");
            }
        });
    }
}

/// The goal's browser policy, in a real browser: with `postback_only` the tag's report is
/// booked unpaid and the merchant's postback of the order is paid; with `pending_review` the
/// tag's report is credited but pending until the merchant's postback approves it.
#[test]
fn browser_policies_wait_for_the_merchants_postback() {
    for (policy, status, reason) in
        [("postback_only", "rejected", "browser_report_refused"), ("pending_review", "pending", "browser_review")]
    {
        let s = Stack::start(
            "track.example",
            |p| p.replacen("  hold_days = 14\n", &format!("  hold_days = 14\n  browser_reports = \"{policy}\"\n"), 1),
            "",
        );
        let cid = s.rt.block_on(async {
            let c = browser(&s.driver, ThirdPartyCookies::Allowed).await;
            let (_, cid) = s.land(&c, "deal").await;
            // What the shop's checkout keeps with the order, for its server's postback.
            let kept = c.execute("return window.tally.clickId()", vec![]).await.unwrap();
            assert_eq!(kept, json!(cid));
            c.goto(&s.url("shop.example", "/checkout")).await.unwrap();
            c.find(Locator::Id("buy")).await.unwrap().click().await.unwrap();
            // The browser's report is recorded either way.
            assert_eq!(settled(&c, "result").await, "accepted", "{policy}");
            c.close().await.unwrap();
            cid
        });
        let entries = ledger_with(&s.env.data(), "ORDER-1");
        let tag = entries.iter().find(|e| e["txid"] == "ORDER-1").unwrap();
        assert_eq!(
            (tag["status"].as_str(), tag["reason"].as_str(), tag["source"].as_str()),
            (Some(status), Some(reason), Some("tag")),
            "{policy}"
        );

        let answer =
            s.postback(&format!("/postback?cid={cid}&txid=ORDER-1&amount=49.90&token={}", tally_testkit::TOKEN));
        assert_eq!(answer["status"], "accepted", "{policy}");
        tally_testkit::wait_for("the postback to be attributed", || {
            ledger(&s.env.data()).iter().filter(|e| e["txid"] == "ORDER-1").count() == 2
        });
        let entries: Vec<Value> = ledger(&s.env.data()).into_iter().filter(|e| e["txid"] == "ORDER-1").collect();
        let by_postback = entries.iter().find(|e| e["source"] == "postback").unwrap();
        let tag = entries.iter().find(|e| e["source"] == "tag").unwrap();
        match policy {
            "postback_only" => {
                assert_eq!(
                    (by_postback["kind"].as_str(), by_postback["status"].as_str(), by_postback["amount"].as_str()),
                    (Some("commission"), Some("pending"), Some("3.99"))
                );
                assert_eq!(tag["status"], "rejected");
            }
            _ => {
                assert_eq!(
                    (by_postback["kind"].as_str(), by_postback["refers_to"].as_str()),
                    (Some("confirmation"), tag["id"].as_str())
                );
                // Approved by the merchant: now on the goal's 14-day hold.
                assert_eq!(
                    (tag["status"].as_str(), tag["reason"].as_str(), tag["amount"].as_str()),
                    (Some("pending"), Some(""), Some("3.99"))
                );
                assert!(!tag["approve_at_ms"].as_str().unwrap_or("").is_empty(), "{tag:#?}");
            }
        }
    }
}
