//! The fake merchant site of the browser tests, for people: an affiliate's page linking to a
//! running Tally, and a shop whose pages carry the tag. See the README's quickstart.
//!
//!   cargo run --release -p tally-testkit --bin demo-shop -- [--tracker URL] [--port N] [--link CODE]
//!
//! Defaults: Tally at http://127.0.0.1:8080 (scripts/run), the shop on 127.0.0.1:8090, link
//! `shop` (the example program's demo link, whose offer sends clicks to this shop).

use tally_testkit::merchant::{FakeMerchant, MerchantSites};

fn main() {
    let mut tracker = "http://127.0.0.1:8080".to_owned();
    let mut port: u16 = 8090;
    let mut link = "shop".to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next();
        match (flag.as_str(), value) {
            ("--tracker", Some(v)) => tracker = v.trim_end_matches('/').to_owned(),
            ("--port", Some(v)) => {
                port = v.parse().unwrap_or_else(|_| fail(&format!("--port: \"{v}\" is not a port number")))
            }
            ("--link", Some(v)) => link = v,
            (other, _) => fail(&format!("unknown or incomplete option {other}")),
        }
    }
    let shop = FakeMerchant::bind(port).unwrap_or_else(|e| fail(&format!("cannot listen on 127.0.0.1:{port}: {e}")));
    shop.serve(MerchantSites { tag: tracker.clone(), tracker, shop: format!("http://127.0.0.1:{port}"), link });
    println!("demo shop on http://127.0.0.1:{port}/ (start at http://127.0.0.1:{port}/aff); Ctrl-C stops it");
    loop {
        std::thread::park();
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("demo-shop: {msg}\nusage: demo-shop [--tracker URL] [--port N] [--link CODE]");
    std::process::exit(2)
}
