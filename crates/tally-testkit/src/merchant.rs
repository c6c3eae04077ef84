//! A fake merchant site for browser tests and the README's demo: an affiliate's page with
//! links to Tally, and a shop (landing page with the tag, a product page, a checkout, a
//! thank-you page that converts). One plain HTTP/1.1 server on 127.0.0.1 serves all of them by
//! path; tests reach it under several host names (`aff.example`, `shop.example`, …, mapped to
//! 127.0.0.1 in the browser) so the affiliate, the shop and Tally are different sites.
//!
//! Pages:
//! - `/aff`: the affiliate's blog: `#deal` links to `{tracker}/c/{link}?sub1=blog`, `#deep` to
//!   the same link with a deep link (`url=`) to the shop's product page.
//! - `/landing`, `/p/42`: shop pages carrying the tag (`{tag}/t.js`); `#checkout` leads on.
//! - `/checkout`: `#buy` goes to `/thanks?order=ORDER-1&amount=49.90`.
//! - `/thanks?order=…&amount=…[&via=tag|pixel|cookie-pixel]`: converts. `via=tag` (default)
//!   queues `tally.convert` before the tag loads and writes its answer into `#result`
//!   (`tag unavailable` if the tag does not load); `via=pixel` embeds `/px.gif` with the
//!   click ID the tag stored; `via=cookie-pixel` embeds `/px.gif` with no click ID (it counts
//!   only if the browser sends Tally's own cookie). `#after` is filled by a script after the
//!   tag's, to show the page kept working.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Where the pages send the browser.
#[derive(Debug, Clone)]
pub struct MerchantSites {
    /// Tally's base URL for clicks (`http://track.example:PORT`).
    pub tracker: String,
    /// Tally's base URL for the tag and conversions on the shop's pages (the same as
    /// `tracker`, or a subdomain of the shop in a same-site deployment).
    pub tag: String,
    /// The shop's base URL (`http://shop.example:PORT`), for deep links.
    pub shop: String,
    /// The affiliate link code the blog links to.
    pub link: String,
}

/// The running site; stops when dropped.
#[derive(Debug)]
pub struct FakeMerchant {
    pub port: u16,
    sites: Arc<OnceLock<MerchantSites>>,
    stop: Arc<AtomicBool>,
}

impl FakeMerchant {
    /// Binds `127.0.0.1:port` (0: any free port) and starts answering; pages are served once
    /// [`FakeMerchant::serve`] says where they point (until then, `503`). Two steps because a
    /// test needs the shop's port to configure Tally, and Tally's to build the pages.
    pub fn bind(port: u16) -> std::io::Result<FakeMerchant> {
        let listener = TcpListener::bind(("127.0.0.1", port))?;
        let port = listener.local_addr()?.port();
        let sites: Arc<OnceLock<MerchantSites>> = Arc::new(OnceLock::new());
        let stop = Arc::new(AtomicBool::new(false));
        let (stopping, serving) = (Arc::clone(&stop), Arc::clone(&sites));
        std::thread::Builder::new().name("fake-merchant".into()).spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let sites = Arc::clone(&serving);
                std::thread::spawn(move || {
                    let _ = answer(stream, sites.get());
                });
            }
        })?;
        Ok(FakeMerchant { port, sites, stop })
    }

    /// Serves the pages, pointing where `sites` says. The first call wins.
    pub fn serve(&self, sites: MerchantSites) {
        let _ = self.sites.set(sites);
    }
}

impl Drop for FakeMerchant {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn answer(stream: TcpStream, sites: Option<&MerchantSites>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    let target = request_line.split_whitespace().nth(1).unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let (status, body) = match sites.map(|s| page(s, path, query)) {
        Some(Some(html)) => ("200 OK", html),
        Some(None) => ("404 Not Found", "<!doctype html><title>not found</title><p>not found</p>".to_owned()),
        None => ("503 Service Unavailable", "<!doctype html><title>starting</title><p>starting</p>".to_owned()),
    };
    let mut out = stream;
    write!(
        out,
        "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    out.flush()
}

fn param(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

/// Text safe inside HTML and inside a single-quoted JavaScript string.
fn escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_' | ',' | ' ' => vec![c],
            _ => format!("&#{};", c as u32).chars().collect(),
        })
        .collect()
}

fn html(title: &str, body: &str) -> String {
    format!("<!doctype html><html><head><meta charset=utf-8><title>{title}</title></head><body>{body}</body></html>")
}

fn page(s: &MerchantSites, path: &str, query: &str) -> Option<String> {
    let tag_script = format!("<script src=\"{}/t.js\" async></script>", s.tag);
    Some(match path {
        "/" => html(
            "Tally demo",
            "<h1>Tally demo</h1><p>Start at the <a href=\"/aff\">affiliate's blog</a>, follow the link, buy \
             something, and watch the commission appear in <code>tally commissions</code>.</p>",
        ),
        "/aff" => {
            let deep =
                form_urlencoded::byte_serialize(format!("{}/p/42?color=red", s.shop).as_bytes()).collect::<String>();
            html(
                "Spring Deals Blog",
                &format!(
                    "<h1>Spring Deals Blog</h1>\
                     <p><a id=deal href=\"{t}/c/{l}?sub1=blog\">Spring shoes at the shop</a></p>\
                     <p><a id=deep href=\"{t}/c/{l}?sub1=blog-deep&amp;url={deep}\">These red ones</a></p>",
                    t = s.tracker,
                    l = s.link
                ),
            )
        }
        "/landing" | "/p/42" => html(
            "Shop",
            &format!(
                "<h1>Shop</h1><p id=page>{}</p><p><a id=checkout href=\"/checkout\">Checkout</a></p>{tag_script}",
                escape(path)
            ),
        ),
        "/checkout" => html(
            "Checkout",
            "<h1>Checkout</h1><p><a id=buy href=\"/thanks?order=ORDER-1&amp;amount=49.90\">Buy for 49.90</a></p>",
        ),
        "/thanks" => {
            let order = escape(&param(query, "order").unwrap_or_default());
            let amount = escape(&param(query, "amount").unwrap_or_default());
            let via = param(query, "via").unwrap_or_else(|| "tag".into());
            let txid = if order.is_empty() { String::new() } else { format!("txid: '{order}', ") };
            let report = match via.as_str() {
                "pixel" => format!(
                    "<p id=result>pixel</p><script>document.write('<img id=px width=1 height=1 src=\"{t}/px.gif?offer=shoes&amp;txid={order}&amp;amount={amount}&amp;cid=' + encodeURIComponent((window.localStorage.getItem('_tally_cid') && JSON.parse(window.localStorage.getItem('_tally_cid')).id) || '') + '\">')</script>",
                    t = s.tag
                ),
                "cookie-pixel" => format!(
                    "<p id=result>cookie-pixel</p><img id=px width=1 height=1 src=\"{t}/px.gif?offer=shoes&amp;txid={order}&amp;amount={amount}\">",
                    t = s.tag
                ),
                _ => format!(
                    "<p id=result>pending</p>\
                     <script>window.tallyq = window.tallyq || [];\
                     tallyq.push(['convert', {{{txid}amount: '{amount}', currency: 'USD'}}, function (r) {{ document.getElementById('result').textContent = r.status; }}]);</script>\
                     <script src=\"{t}/t.js\" async onerror=\"document.getElementById('result').textContent = 'tag unavailable'\"></script>\
                     <noscript><img src=\"{t}/px.gif?offer=shoes&amp;txid={order}&amp;amount={amount}\" width=1 height=1 alt=\"\"></noscript>",
                    t = s.tag
                ),
            };
            html(
                "Thank you",
                &format!("<h1>Thank you</h1><p>Order {order}, {amount}</p>{report}<p id=after></p><script>document.getElementById('after').textContent = 'page works';</script>"),
            )
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_keeps_pages_and_scripts_whole() {
        assert_eq!(escape("ORDER-1"), "ORDER-1");
        assert_eq!(escape("a'b<c>\"d&"), "a&#39;b&#60;c&#62;&#34;d&#38;");
    }
}
