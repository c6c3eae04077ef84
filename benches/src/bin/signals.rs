//! Click signals: what classifying a click's request costs, and the databases the load
//! benchmark serves with.
//!
//! - `signals fixture DIR` writes `City.mmdb` and `ASN.mmdb` into DIR: GeoLite2-shaped
//!   databases of `NETWORKS` (default 1,000,000) IPv4 networks with records of GeoLite2's
//!   size (`tally_testkit::mmdb::city_like`, `asn_like`). `benches/load.sh` with
//!   `SIGNALS=on` serves them.
//! - `signals micro` times `Classifier::observe` over 4,096 browser-like requests (the
//!   load benchmark's user agents, addresses spread over IPv4): with the built-in lists only,
//!   with the City database, and with City and ASN. Figures are nanoseconds per click on
//!   this thread, printed, never asserted; compare them with `benches/load.sh`'s
//!   `cpu_us/req` for the edge's whole cost per click.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Instant;

use tally_signals::{Classifier, Request, SignalsConfig};
use tally_testkit::{mmdb, Rng};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The user agents the load benchmark sends (`benches/load.sh`, `REQUESTS=browser`).
const AGENTS: [&str; 8] = [
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (Linux; Android 13; SM-S908B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/24.0 Chrome/117.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/21E236 [FBAN/FBIOS;FBAV/460.0.0.38.108;FBBV/590000000;FBDV/iPhone15,2;FBMD/iPhone;FBSN/iOS;FBSV/17.4;FBSS/3;FBCR/;FBID/phone;FBLC/en_US;FBOP/80]",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.51",
];

fn networks() -> usize {
    std::env::var("NETWORKS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000)
}

fn fixture(dir: &Path) {
    let n = networks();
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    for (name, bytes) in [("City.mmdb", mmdb::city_like(n, 1)), ("ASN.mmdb", mmdb::asn_like(n, 1))] {
        let path = dir.join(name);
        std::fs::write(&path, &bytes).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        println!("{}: {n} networks, {:.1} MiB", path.display(), bytes.len() as f64 / (1 << 20) as f64);
    }
}

fn micro() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    fixture(dir.path());
    let mut rng = Rng::new(7);
    let ips: Vec<IpAddr> =
        (0..4096).map(|_| IpAddr::V4(Ipv4Addr::from(rng.below(223 << 24) as u32 + (1 << 24)))).collect();
    let requests: Vec<Request<'_>> = ips
        .iter()
        .enumerate()
        .map(|(i, ip)| Request {
            ip: *ip,
            user_agent: AGENTS[i % AGENTS.len()],
            accept_language: "en-GB,en;q=0.9",
            ch_mobile: if i % 3 == 0 { "?1" } else { "?0" },
            ch_platform: "",
        })
        .collect();
    let config = |geo: bool, asn: bool| SignalsConfig {
        geoip_database: geo.then(|| dir.path().join("City.mmdb")),
        asn_database: asn.then(|| dir.path().join("ASN.mmdb")),
        ..SignalsConfig::default()
    };
    // The same requests with every user agent different (a build number appended): what a
    // click costs when its user agent is not in the thread's cache.
    let unique: Vec<String> = (0..200_000).map(|i| format!("{} Build/{i}", AGENTS[i % AGENTS.len()])).collect();
    let c = Classifier::builtin();
    let start = Instant::now();
    for (i, ua) in unique.iter().enumerate() {
        black_box(c.observe(black_box(&Request { user_agent: ua, ..requests[i % requests.len()] })));
    }
    let miss = start.elapsed().as_nanos() as f64 / unique.len() as f64;
    println!("Classifier::observe, ns per click (median of 5 passes over 4,096 requests x 50):");
    println!("  {:<22} {miss:>7.0} ns   (200,000 distinct user agents: none cached)", "built-in, all new UAs");
    for (name, geo, asn) in
        [("built-in lists only", false, false), ("+ City", true, false), ("+ City + ASN", true, true)]
    {
        let c = Classifier::load(&config(geo, asn)).unwrap_or_else(|e| panic!("{e}"));
        let mut known = 0usize;
        let mut passes: Vec<f64> = (0..5)
            .map(|_| {
                let start = Instant::now();
                for _ in 0..50 {
                    for r in &requests {
                        let o = black_box(c.observe(black_box(r)));
                        known += usize::from(!o.country.is_empty());
                    }
                }
                start.elapsed().as_nanos() as f64 / (50 * requests.len()) as f64
            })
            .collect();
        passes.sort_by(f64::total_cmp);
        println!(
            "  {name:<22} {:>7.0} ns   (country known for {:.0}%)",
            passes[2],
            known as f64 * 100.0 / (250.0 * 4096.0)
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("fixture") if args.len() == 3 => fixture(Path::new(&args[2])),
        Some("micro") => micro(),
        _ => {
            eprintln!("usage: signals fixture DIR | signals micro   (env NETWORKS, default 1000000)");
            std::process::exit(2);
        }
    }
}
