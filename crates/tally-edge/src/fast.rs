//! The click fast path: plain `GET`/`HEAD /c/{link}` requests on a public connection are
//! parsed with `httparse` (hyper's own parser) and answered here; the first request that is
//! anything else hands the connection, with the bytes already read, to hyper for good.
//!
//! Why: measured on the 2-CPU bench machine, hyper's connection machinery took about 5,000
//! of a click's 16,000 instructions on the HTTP thread (callgrind: a bare hyper server
//! answering a fixed 302 runs 7,600 instructions a request, the same answer from an
//! `httparse` loop 2,400), and the HTTP thread is what bounds throughput. Clicks are nearly
//! all of the traffic and all alike: a bodiless GET with a handful of headers.
//!
//! What the fast path takes, it answers exactly as hyper did (same status, headers in the
//! same order, `Date`, `Content-Length`); the shared click logic is
//! [`crate::click::prepare`]. Everything it does not take goes to hyper untouched:
//! other paths and methods, HTTP/1.0, a `Connection` header with options other than
//! `keep-alive` and `close`, any `Content-Length`, `Transfer-Encoding`, `Expect`, `Upgrade`
//! or `TE` header, a request target with characters
//! outside RFC 3986's, heads that fail to parse or do not fit `max_header_bytes`, more
//! headers than the parser's array holds. hyper then answers with its own errors (400, 431)
//! and limits, exactly as before.
//!
//! Kept from hyper: the header-read timeout (armed when the connection starts waiting for a
//! head, including keep-alive idle time; a head not complete by then closes the connection),
//! pipelined requests (answered in order), and graceful shutdown (idle connections close at
//! once; a request in flight is answered with `connection: close`).

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::{Buf, Bytes, BytesMut};
use http::Response;
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use tally_model::program::Redirect;
use tally_protocol::headers::{is_header_value, ClickHeaders};

use crate::click::{self, ClickRequest, Prepared};
use crate::metrics::Route;
use crate::respond::{self, Body, EdgeError};
use crate::Edge;

/// Headers the fast path's parser has room for; a request with more (and a configured
/// `max_headers` above this) goes to hyper. On the stack and never initialised up front.
const MAX_FAST_HEADERS: usize = 128;
/// Spare room ensured before each read, so a request head arrives in one read.
const READ_CHUNK: usize = 4096;

/// Serves one public connection: clicks here, and from the first other request on, hyper
/// through `fallback` (given the connection with the unconsumed bytes in front).
pub(crate) async fn serve<F, Fut>(
    edge: Arc<Edge>,
    mut stream: TcpStream,
    peer: SocketAddr,
    mut stop: watch::Receiver<bool>,
    fallback: F,
) where
    F: FnOnce(Rewind) -> Fut,
    Fut: Future<Output = ()>,
{
    let timeout = edge.config.header_read_timeout;
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut out: Vec<u8> = Vec::with_capacity(512);
    // One timer for the connection's life, moved lazily (see `timer.rs` for why).
    let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
    loop {
        let deadline = tokio::time::Instant::now() + timeout;
        let (consumed, is_head, wants_close, prepared, started) = loop {
            let started = Instant::now();
            match step(&edge, &buf, peer) {
                Step::Click { consumed, is_head, close, prepared } => {
                    break (consumed, is_head, close, prepared, started)
                }
                Step::Fallback => return fallback(Rewind::new(buf.freeze(), stream)).await,
                Step::NeedMore => {}
            }
            if buf.is_empty() && stopping(&stop) {
                return;
            }
            if buf.capacity() - buf.len() < READ_CHUNK / 4 {
                buf.reserve(READ_CHUNK);
            }
            let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            if timer.deadline() > deadline {
                timer.as_mut().reset(deadline);
            }
            tokio::select! {
                biased;
                r = tokio::io::AsyncReadExt::read_buf(&mut stream, &mut buf) => match r {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                },
                () = timer.as_mut() => {
                    if tokio::time::Instant::now() >= deadline {
                        tracing::debug!("request head not received in time; closing");
                        return;
                    }
                    // An earlier request's deadline: move on to this one's.
                    timer.as_mut().reset(deadline);
                }
                _ = stop.changed(), if buf.is_empty() => return,
            }
        };
        buf.advance(consumed);
        let close = wants_close || stopping(&stop);
        out.clear();
        let status = match prepared {
            Prepared::Click { status, location, cookie, submitted, human } => {
                click::await_commit(&edge, submitted, human).await;
                if is_header_value(location.as_bytes()) {
                    write_redirect(&mut out, status, &location, cookie.as_deref(), close);
                    status.code()
                } else {
                    // Unreachable for validated templates and deep links, as in `redirect`.
                    let answer =
                        respond::respond_error(EdgeError::Internal("destination is not a valid header".into()), false);
                    write_response(&mut out, answer, is_head, close).await
                }
            }
            Prepared::Answer(answer) => write_response(&mut out, answer, is_head, close).await,
        };
        edge.metrics.request(Route::click, status, started.elapsed().as_secs_f64());
        if stream.write_all(&out).await.is_err() || close {
            return;
        }
    }
}

fn stopping(stop: &watch::Receiver<bool>) -> bool {
    // A closed channel means the server is gone: stop too.
    stop.has_changed().unwrap_or(true)
}

enum Step {
    /// The head is not complete yet.
    NeedMore,
    /// A request the fast path does not take: hyper gets the connection.
    Fallback,
    /// A click, prepared (recorded and its answer known) from the first `consumed` bytes;
    /// `close` if the client asked to close the connection after it.
    Click { consumed: usize, is_head: bool, close: bool, prepared: Prepared },
}

/// Parses the head at the front of `buf` and, for a click, does everything up to the wait
/// on the log. Synchronous, so the parser's header array never lives in the connection's
/// future.
fn step(edge: &Edge, buf: &[u8], peer: SocketAddr) -> Step {
    if buf.is_empty() {
        return Step::NeedMore;
    }
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FAST_HEADERS];
    let room = edge.config.max_headers.clamp(1, MAX_FAST_HEADERS);
    let mut req = httparse::Request::new(&mut []);
    let consumed = match req.parse_with_uninit_headers(buf, &mut slots[..room]) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < edge.config.max_header_bytes => return Step::NeedMore,
        // Too big, malformed, too many headers: hyper answers these as it always has.
        Ok(httparse::Status::Partial) | Err(_) => return Step::Fallback,
    };
    let is_head = match req.method {
        Some("GET") => false,
        Some("HEAD") => true,
        _ => return Step::Fallback,
    };
    let (Some(target), Some(1)) = (req.path, req.version) else { return Step::Fallback };
    let Some(rest) = target.strip_prefix("/c/") else { return Step::Fallback };
    if !target.bytes().all(is_target_byte) {
        return Step::Fallback;
    }
    if req.headers.iter().any(|h| FALLBACK_HEADERS.iter().any(|n| h.name.eq_ignore_ascii_case(n))) {
        return Step::Fallback;
    }
    // Browsers send `Connection: keep-alive` on HTTP/1.1; `close` is answered as hyper does
    // (`connection: close`, then the connection closes). Any other option is hyper's.
    let mut close = false;
    for h in req.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("connection")) {
        for option in h.value.split(|&b| b == b',') {
            let option = option.trim_ascii();
            if option.eq_ignore_ascii_case(b"close") {
                close = true;
            } else if !option.eq_ignore_ascii_case(b"keep-alive") {
                return Step::Fallback;
            }
        }
    }
    let (code, query) = rest.split_once('?').unwrap_or((rest, ""));
    let headers = ClickHeaders::scan(req.headers.iter().map(|h| (h.name, h.value)));
    let ip = &edge.config.ip;
    let client_ip = if ip.trusts(peer.ip()) {
        let forwarded: Vec<&[u8]> =
            req.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("x-forwarded-for")).map(|h| h.value).collect();
        ip.client_ip_from(peer.ip(), forwarded.into_iter())
    } else {
        peer.ip()
    };
    let prepared = click::prepare(edge, code, ClickRequest { is_head, query, headers, client_ip });
    Step::Click { consumed, is_head, close, prepared }
}

/// Headers whose semantics the fast path leaves to hyper: connection management, request
/// bodies, protocol switches. (`Connection` is looked at separately.)
const FALLBACK_HEADERS: [&str; 5] = ["content-length", "transfer-encoding", "expect", "upgrade", "te"];

/// A byte of an origin-form request target by RFC 3986 (unreserved, percent, sub-delims,
/// `:`, `@`, `/`, `?`). Anything else (a fragment, quotes, braces, non-ASCII) goes to
/// hyper, whose URI parser decides about it as before.
fn is_target_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=:@/?".contains(&b)
}

const REFERRER_POLICY: &str = "no-referrer-when-downgrade";

/// A click's redirect, byte for byte what hyper sent for [`respond::redirect`]'s response.
fn write_redirect(out: &mut Vec<u8>, status: Redirect, location: &str, cookie: Option<&str>, close: bool) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.status_text().as_bytes());
    out.extend_from_slice(b"\r\nlocation: ");
    out.extend_from_slice(location.as_bytes());
    out.extend_from_slice(b"\r\ncache-control: no-store\r\nreferrer-policy: ");
    out.extend_from_slice(REFERRER_POLICY.as_bytes());
    if let Some(c) = cookie.filter(|c| is_header_value(c.as_bytes())) {
        out.extend_from_slice(b"\r\nset-cookie: ");
        out.extend_from_slice(c.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    finish_head(out, 0, close);
}

/// Any other answer: its status, headers and body, as hyper writes a full response.
async fn write_response(out: &mut Vec<u8>, answer: Response<Body>, is_head: bool, close: bool) -> u16 {
    let (parts, body) = answer.into_parts();
    // A `Full` body is one frame, there at once.
    let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    let status = parts.status;
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    finish_head(out, body.len(), close);
    if !is_head {
        out.extend_from_slice(&body);
    }
    status.as_u16()
}

/// `content-length`, `connection: close` when the server is stopping, `date`, and the end of
/// the head.
fn finish_head(out: &mut Vec<u8>, content_length: usize, close: bool) {
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(itoa::Buffer::new().format(content_length).as_bytes());
    out.extend_from_slice(b"\r\ndate: ");
    http_date(out);
    out.extend_from_slice(b"\r\n\r\n");
}

/// Appends the current `Date` value, formatted once a second per thread (as hyper does).
fn http_date(out: &mut Vec<u8>) {
    thread_local! {
        static CACHED: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    CACHED.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            *c = (secs, httpdate::fmt_http_date(now));
        }
        out.extend_from_slice(c.1.as_bytes());
    });
}

/// A connection handed to hyper: the bytes the fast path read and did not consume, then
/// the socket.
pub(crate) struct Rewind {
    pre: Bytes,
    inner: TcpStream,
}

impl Rewind {
    pub(crate) fn new(pre: Bytes, inner: TcpStream) -> Rewind {
        Rewind { pre, inner }
    }
}

impl AsyncRead for Rewind {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.pre.is_empty() {
            let n = self.pre.len().min(buf.remaining());
            buf.put_slice(&self.pre[..n]);
            self.pre.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn targets_outside_rfc3986_go_to_hyper() {
        assert!("/c/demo?sub1=a%20b&url=https://x.example/p?q=1".bytes().all(is_target_byte));
        for bad in ["/c/demo#frag", "/c/de\"mo", "/c/{x}", "/c/a|b", "/c/a\\b", "/c/a^b", "/c/a`b"] {
            assert!(!bad.bytes().all(is_target_byte), "{bad}");
        }
    }

    #[test]
    fn the_redirect_head_is_hypers() {
        let mut out = Vec::new();
        write_redirect(&mut out, Redirect::Found, "https://m.example/?cid=1", Some("tally_cid=1; Path=/"), false);
        let text = String::from_utf8(out).unwrap();
        let (head, date) = text.split_once("date: ").unwrap();
        assert_eq!(
            head,
            "HTTP/1.1 302 Found\r\nlocation: https://m.example/?cid=1\r\ncache-control: no-store\r\n\
             referrer-policy: no-referrer-when-downgrade\r\nset-cookie: tally_cid=1; Path=/\r\ncontent-length: 0\r\n"
        );
        assert!(date.ends_with(" GMT\r\n\r\n") && date.len() == 29 + 4, "{date:?}");

        let mut out = Vec::new();
        write_redirect(&mut out, Redirect::Found, "https://m.example/", None, true);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("no-referrer-when-downgrade\r\nconnection: close\r\ncontent-length: 0\r\n"), "{text}");
        assert!(!text.contains("set-cookie"));
    }

    #[tokio::test]
    async fn other_answers_keep_their_headers_and_drop_the_body_for_head() {
        let answer = || respond::with_body(404, "text/plain; charset=utf-8", Bytes::from_static(b"unknown link\n"));
        let mut out = Vec::new();
        assert_eq!(write_response(&mut out, answer(), false, false).await, 404);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\ncontent-type: text/plain; charset=utf-8\r\n"), "{text}");
        assert!(text.contains("cache-control: no-store\r\ncontent-length: 13\r\ndate: "), "{text}");
        assert!(text.ends_with("\r\n\r\nunknown link\n"), "{text}");

        let mut out = Vec::new();
        write_response(&mut out, answer(), true, false).await;
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("content-length: 13\r\n") && text.ends_with("\r\n\r\n"), "{text}");
    }
}
