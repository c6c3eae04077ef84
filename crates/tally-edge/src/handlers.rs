//! Request handlers. One function, [`respond_error`], maps edge errors to HTTP statuses.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION, RETRY_AFTER, SET_COOKIE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use tally_log::LogError;
use tally_model::{click_flags, ClickId, ClickView, Conversion, ConversionSource, Event};

use crate::metrics::{ConvOutcome, ConvSource, Route, UnrecordedCause};
use crate::Edge;
use tally_protocol::click_query::{bounded, ClickQuery};
use tally_protocol::headers::{click_cookie, cookie_click_id, ClickHeaders};
use tally_protocol::params::{self, Field, FieldError, RawParams};

pub type Body = Full<Bytes>;

/// The 43-byte transparent 1×1 GIF.
pub const PIXEL_GIF: [u8; 43] = [
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff,
    0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x02,
    0x02, 0x44, 0x01, 0x00, 0x3b,
];

const MAX_UA: usize = 512;
const MAX_REFERRER: usize = 1024;
/// A click record's starting buffer: room for a browser's user agent without growing.
const RECORD_CAPACITY: usize = 512;
const NO_STORE: HeaderValue = HeaderValue::from_static("no-store");

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Everything that can go wrong answering a request, and its status.
#[derive(Debug)]
pub(crate) enum EdgeError {
    NotFound(&'static str),
    MethodNotAllowed(&'static str),
    Field(FieldError),
    Auth(tally_protocol::auth::AuthError),
    BodyTooLarge,
    /// The body did not arrive within `body_read_timeout`.
    BodyTimeout,
    BadBody(String),
    /// The log could not take the event; retrying later can succeed.
    Unavailable(LogError),
    Internal(String),
}

pub(crate) fn respond_error(e: EdgeError, json: bool) -> Response<Body> {
    let (status, reason, field): (u16, String, Option<&str>) = match e {
        EdgeError::NotFound(what) => (404, what.to_owned(), None),
        EdgeError::MethodNotAllowed(allow) => (405, format!("method not allowed; use {allow}"), None),
        EdgeError::Field(f) => (400, f.reason, Some(f.field)),
        EdgeError::Auth(a) => (a.status(), a.reason().to_owned(), None),
        EdgeError::BodyTooLarge => (413, "request body too large".to_owned(), None),
        EdgeError::BodyTimeout => (408, "request body not received in time".to_owned(), None),
        EdgeError::BadBody(why) => (400, format!("bad request body: {why}"), None),
        EdgeError::Unavailable(e) => (503, format!("temporarily unavailable: {e}"), None),
        EdgeError::Internal(why) => (500, format!("internal error: {why}"), None),
    };
    let mut resp = if json {
        let mut v = serde_json::json!({ "status": "error", "error": reason });
        if let Some(f) = field {
            v["field"] = serde_json::Value::from(f);
        }
        with_body(status, "application/json", v.to_string().into())
    } else {
        with_body(status, "text/plain; charset=utf-8", format!("{reason}\n").into())
    };
    if status == 503 {
        resp.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

pub(crate) fn with_body(status: u16, content_type: &'static str, body: Bytes) -> Response<Body> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut().insert(CACHE_CONTROL, NO_STORE);
    r
}

/// Entry point for every request.
pub async fn route(edge: Arc<Edge>, peer: SocketAddr, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let path = req.uri().path();
    let (route, resp) = if let Some(code) = path.strip_prefix("/c/") {
        (Route::click, click(&edge, &req, peer, code).await)
    } else {
        match path {
            "/px.gif" => (Route::pixel, Box::pin(pixel(&edge, &req, peer)).await),
            "/postback" => (Route::postback, Box::pin(postback(&edge, req, peer)).await),
            "/healthz" => (Route::healthz, healthz()),
            "/readyz" => (Route::readyz, readyz(&edge)),
            _ => (Route::other, respond_error(EdgeError::NotFound("not found"), false)),
        }
    };
    edge.metrics.request(route, resp.status().as_u16(), started.elapsed().as_secs_f64());
    Ok(resp)
}

fn method_not_allowed(allow: &'static str, json: bool) -> Response<Body> {
    let mut r = respond_error(EdgeError::MethodNotAllowed(allow), json);
    r.headers_mut().insert(http::header::ALLOW, HeaderValue::from_static(allow));
    r
}

/// A click through hyper: recorded, then answered once its record is committed (or could
/// not be). The fast path ([`crate::fast`]) answers most clicks without hyper; this one
/// takes the rest (HTTP/1.0, `Connection` headers, bodies, methods other than GET and HEAD).
async fn click(edge: &Edge, req: &Request<Incoming>, peer: SocketAddr, code: &str) -> Response<Body> {
    let is_head = req.method() == Method::HEAD;
    if !is_head && req.method() != Method::GET {
        return method_not_allowed("GET, HEAD", false);
    }
    let request = ClickRequest {
        is_head,
        query: req.uri().query().unwrap_or(""),
        headers: ClickHeaders::of_map(req.headers()),
        client_ip: edge.config.ip.client_ip(peer.ip(), req.headers()),
    };
    match prepare_click(edge, code, request) {
        Prepared::Click { location, cookie, submitted, human } => {
            await_click(edge, submitted, human).await;
            redirect(location, cookie)
        }
        Prepared::Answer(answer) => answer,
    }
}

/// Waits for a click's commit and counts it, recorded or not. The redirect goes out either
/// way: a person is waiting.
pub(crate) async fn await_click(edge: &Edge, submitted: Result<tally_log::Pending, LogError>, human: bool) {
    let appended = match submitted {
        Ok(pending) => pending.await,
        Err(e) => Err(e),
    };
    match appended {
        Ok(_) => edge.metrics.click_recorded(human),
        Err(e) => {
            let cause = match e {
                LogError::QueueFull => UnrecordedCause::queue_full,
                LogError::Closed => UnrecordedCause::closed,
                _ => UnrecordedCause::write_error,
            };
            edge.metrics.click_unrecorded(cause);
        }
    }
}

/// What a click handler reads from its request, whichever parser read it.
pub(crate) struct ClickRequest<'a> {
    pub(crate) is_head: bool,
    /// The raw query string, without the `?`.
    pub(crate) query: &'a str,
    pub(crate) headers: ClickHeaders<'a>,
    /// The client's address, after the trusted-proxy rule.
    pub(crate) client_ip: std::net::IpAddr,
}

/// What [`prepare_click`] leaves for the wait on the log.
pub(crate) enum Prepared {
    /// The redirect's `Location` and cookie, the record handed to the log, and whether the
    /// click looks human.
    Click { location: String, cookie: Option<String>, submitted: Result<tally_log::Pending, LogError>, human: bool },
    /// Nothing to record (an unknown link): the answer as it is.
    Answer(Response<Body>),
}

/// Everything a click does up to the wait on the log, in a plain function: the handlers'
/// futures then hold only what crosses the wait (they are built and moved on every click).
pub(crate) fn prepare_click(edge: &Edge, code: &str, req: ClickRequest<'_>) -> Prepared {
    let program = edge.program.load();
    let Some(link) = program.link(code) else {
        return Prepared::Answer(match &edge.config.fallback_url {
            Some(url) => redirect(url.clone(), None),
            None => respond_error(EdgeError::NotFound("unknown link"), false),
        });
    };
    let offer = &link.offer;
    let now = now_ms();
    let click_id = ClickId::mint(now, edge.config.node_id);
    let query = ClickQuery::parse(req.query);
    let headers = req.headers;
    let mut flags = query.flags;
    let user_agent = bounded(headers.user_agent, MAX_UA, &mut flags);
    if req.is_head {
        flags |= click_flags::HEAD;
    }
    if headers.prefetch {
        flags |= click_flags::PREFETCH;
    }
    if tally_protocol::bots::is_unfurler(user_agent) {
        flags |= click_flags::UNFURLER;
    }
    let cid = click_id.encode();
    let cid = std::str::from_utf8(&cid).unwrap_or_default();
    let destination = query.destination(offer, &link.affiliate, cid);
    flags |= destination.flags;
    if destination.flags & click_flags::DEEP_LINK_REJECTED != 0 {
        edge.metrics.deep_link_rejected();
    }
    let location = destination.location;
    let ip = edge.config.ip.render(req.client_ip, now);
    let subs = &query.subs;
    // Whatever the browser sends is untrusted: a cookie that is not a click ID is no prior
    // click, never an error. With cookies off the operator asked us not to track by cookie,
    // so none is read either.
    let prior_click = headers.cookie_click_id.filter(|_| edge.config.cookies).and_then(|c| ClickId::parse(c).ok());
    // The record is encoded from borrowed fields (the same bytes as an owned `Click`): no
    // copy of the link, offer, affiliate, sub IDs, user agent or referrer.
    let click = ClickView {
        click_id,
        ts_ms: now,
        link: &link.code,
        offer: &offer.id,
        affiliate: &link.affiliate,
        subs: [&subs[0], &subs[1], &subs[2], &subs[3], &subs[4]],
        source: &query.source,
        deep_link: &destination.followed,
        user_agent,
        referrer: bounded(headers.referrer, MAX_REFERRER, &mut 0),
        ip: &ip,
        flags,
        prior_click,
    };
    let mut record = Vec::with_capacity(RECORD_CAPACITY);
    let submitted = match tally_model::encode_click_into(&click, &mut record) {
        Ok(()) => edge.appender.submit(record),
        Err(e) => Err(LogError::Write(e.to_string())),
    };
    let human = flags & click_flags::NON_HUMAN == 0;
    let cookie = edge.config.cookies.then(|| click_cookie(cid, offer.window_days, edge.config.cookie_secure));
    // The program snapshot is released when this returns, before the wait on the log: a
    // reload must not wait for us.
    Prepared::Click { location, cookie, submitted, human }
}

/// A `302` to `location`. The header values take the strings' buffers (validated as
/// `from_str` does, without its copy).
pub(crate) fn redirect(location: String, cookie: Option<String>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::new()));
    match HeaderValue::from_maybe_shared(Bytes::from(location)) {
        Ok(v) => {
            *r.status_mut() = StatusCode::FOUND;
            r.headers_mut().insert(LOCATION, v);
        }
        // Unreachable for validated templates and deep links; refuse rather than redirect
        // somewhere we did not check.
        Err(_) => return respond_error(EdgeError::Internal("destination is not a valid header".into()), false),
    }
    r.headers_mut().insert(CACHE_CONTROL, NO_STORE);
    r.headers_mut().insert(http::header::REFERRER_POLICY, HeaderValue::from_static("no-referrer-when-downgrade"));
    if let Some(c) = cookie.and_then(|c| HeaderValue::from_maybe_shared(Bytes::from(c)).ok()) {
        r.headers_mut().insert(SET_COOKIE, c);
    }
    r
}

/// Turns validated parameters into a conversion event, consulting the program.
fn build_conversion(
    edge: &Edge,
    raw: &RawParams,
    source: ConversionSource,
    ip: String,
) -> Result<(Conversion, Arc<tally_model::program::Offer>), EdgeError> {
    let p = params::validate(raw).map_err(EdgeError::Field)?;
    let program = edge.program.load();
    let offer = program
        .offer(&p.offer)
        .cloned()
        .ok_or_else(|| EdgeError::Field(FieldError::invalid(Field::Offer, format!("unknown offer \"{}\"", p.offer))))?;
    let goal = match &p.goal {
        Some(g) if offer.goal(g).is_none() => {
            return Err(EdgeError::Field(FieldError::invalid(
                Field::Goal,
                format!("offer {} has no goal \"{g}\"", offer.id),
            )))
        }
        Some(g) => g.clone(),
        None => offer.default_goal().to_owned(),
    };
    if let Some(c) = p.currency {
        if c != offer.currency {
            return Err(EdgeError::Field(FieldError::invalid(
                Field::Currency,
                format!("offer {} is paid in {}, got {c}", offer.id, offer.currency),
            )));
        }
    }
    let amount = p
        .amount
        .as_deref()
        .map(|a| tally_model::parse_minor(a, offer.currency, false).map_err(|e| FieldError::invalid(Field::Amount, e)))
        .transpose()
        .map_err(EdgeError::Field)?;
    let conversion = Conversion {
        ts_ms: now_ms(),
        source,
        click_id: p.click_id,
        coupon: p.coupon,
        offer: offer.id.clone(),
        goal,
        txid: p.txid,
        amount,
        currency: offer.currency,
        status: p.status,
        subs: p.subs,
        ip,
    };
    Ok((conversion, offer))
}

async fn pixel(edge: &Edge, req: &Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    // GET only: a HEAD is a probe, not a page view, and must not record a conversion.
    if req.method() != Method::GET {
        return method_not_allowed("GET", false);
    }
    let mut raw = RawParams::from_query(req.uri().query().unwrap_or(""));
    if let Some(cid) = cookie_click_id(req.headers()) {
        raw.set_if_absent(Field::ClickId, cid.to_owned());
    }
    let now = now_ms();
    let ip = edge.config.ip.render(edge.config.ip.client_ip(peer.ip(), req.headers()), now);
    let result = match build_conversion(edge, &raw, ConversionSource::Pixel, ip) {
        Ok((conversion, _)) => append_conversion(edge, conversion).await.map_err(EdgeError::Unavailable),
        Err(e) => Err(e),
    };
    match result {
        Ok((appended, _)) => {
            let outcome = if appended.duplicate_of.is_some() { ConvOutcome::duplicate } else { ConvOutcome::accepted };
            edge.metrics.conversion(ConvSource::pixel, outcome);
            with_body(200, "image/gif", Bytes::from_static(&PIXEL_GIF))
        }
        Err(e) => {
            edge.metrics.conversion(ConvSource::pixel, outcome_of(&e));
            respond_error(e, false)
        }
    }
}

fn outcome_of(e: &EdgeError) -> ConvOutcome {
    match e {
        EdgeError::Auth(_) => ConvOutcome::unauthorized,
        EdgeError::Unavailable(_) | EdgeError::Internal(_) => ConvOutcome::shed,
        _ => ConvOutcome::invalid,
    }
}

async fn postback(edge: &Edge, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let result = postback_inner(edge, req, peer).await;
    match result {
        Ok((appended, conversion)) => {
            let (outcome, status) = match appended.duplicate_of {
                Some(_) => (ConvOutcome::duplicate, "duplicate"),
                None => (ConvOutcome::accepted, "accepted"),
            };
            edge.metrics.conversion(ConvSource::postback, outcome);
            let body = serde_json::json!({
                "status": status,
                "seq": appended.seq,
                "duplicate_of": appended.duplicate_of,
                "event": "conversion",
                "offer": conversion.offer,
                "goal": conversion.goal,
                "conversion_status": conversion.status.as_str(),
                "click_id": conversion.click_id.map(|c| c.to_string()),
            });
            with_body(200, "application/json", body.to_string().into())
        }
        Err(e) => {
            edge.metrics.conversion(ConvSource::postback, outcome_of(&e));
            if let EdgeError::MethodNotAllowed(allow) = e {
                return method_not_allowed(allow, true);
            }
            respond_error(e, true)
        }
    }
}

async fn postback_inner(
    edge: &Edge,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<(tally_log::Appended, Conversion), EdgeError> {
    let (parts, body) = req.into_parts();
    let query = parts.uri.query().unwrap_or("").to_owned();
    let (raw_signed, mut params) = match parts.method {
        Method::GET => (Bytes::from(query.clone()), RawParams::from_query(&query)),
        Method::POST => {
            let limit = edge.config.postback_max_body_bytes;
            // A declared Content-Length over the limit is refused before reading: otherwise
            // the client holds the connection until the body timeout, sending nothing.
            if usize::try_from(hyper::body::Body::size_hint(&body).lower()).map_or(true, |n| n > limit) {
                return Err(EdgeError::BodyTooLarge);
            }
            // hyper's header timeout ends where the body starts: without this deadline a
            // client trickling a body (slow POST) holds its connection slot forever.
            let collect = tokio::time::timeout(edge.config.body_read_timeout, Limited::new(body, limit).collect());
            let bytes = match collect.await {
                Ok(Ok(b)) => b.to_bytes(),
                Ok(Err(e)) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
                    return Err(EdgeError::BodyTooLarge)
                }
                Ok(Err(e)) => return Err(EdgeError::BadBody(e.to_string())),
                Err(_) => return Err(EdgeError::BodyTimeout),
            };
            let is_json = parts
                .headers
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("application/json"));
            let params =
                if is_json { json_params(&bytes)? } else { RawParams::from_pairs(form_urlencoded::parse(&bytes)) };
            (bytes, params)
        }
        _ => return Err(EdgeError::MethodNotAllowed("GET, POST")),
    };
    // A token in the query is accepted for POST too: it is a credential, not a field.
    if parts.method == Method::POST {
        if let Some(t) = RawParams::from_query(&query).get(Field::Token) {
            params.set_if_absent(Field::Token, t.to_owned());
        }
    }
    // Authenticate before reporting field problems, so unauthenticated callers learn
    // nothing beyond "which offer" and nothing is stored.
    let now = now_ms();
    {
        // Scoped so the program snapshot is released before waiting on the log.
        let offer_id = params.get(Field::Offer).ok_or(EdgeError::Field(FieldError::missing(Field::Offer)))?;
        let program = edge.program.load();
        let offer = program.offer(offer_id).ok_or_else(|| {
            EdgeError::Field(FieldError::invalid(Field::Offer, format!("unknown offer \"{offer_id}\"")))
        })?;
        let advertiser =
            program.advertiser_of(offer).ok_or_else(|| EdgeError::Internal("offer has no advertiser".into()))?;
        tally_protocol::auth::authenticate(
            advertiser,
            &parts.headers,
            params.get(Field::Token),
            &raw_signed,
            now / 1000,
            edge.config.signature_max_age.as_secs(),
        )
        .map_err(EdgeError::Auth)?;
    }
    let ip = edge.config.ip.render(edge.config.ip.client_ip(peer.ip(), &parts.headers), now);
    let (conversion, _) = build_conversion(edge, &params, ConversionSource::Postback, ip)?;
    append_conversion(edge, conversion).await.map_err(EdgeError::Unavailable)
}

/// Commits a conversion, learning whether it repeats an earlier report (same offer, goal,
/// txid and status). Repeats are logged too, so the log holds every report; attribution
/// never pays one twice.
async fn append_conversion(edge: &Edge, conversion: Conversion) -> Result<(tally_log::Appended, Conversion), LogError> {
    // Conversions are rare next to clicks; a clone keeps this simple.
    let record =
        tally_model::encode(&Event::Conversion(conversion.clone())).map_err(|e| LogError::Write(e.to_string()))?;
    let appended = match conversion.dedup_key() {
        Some(key) => edge.appender.submit_unique(record, &key)?.await?,
        None => tally_log::Appended { seq: edge.appender.submit(record)?.await?, duplicate_of: None },
    };
    Ok((appended, conversion))
}

/// A flat JSON object of strings and numbers, as some networks post.
fn json_params(body: &[u8]) -> Result<RawParams, EdgeError> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| EdgeError::BadBody(e.to_string()))?;
    let obj = value.as_object().ok_or_else(|| EdgeError::BadBody("expected a JSON object".into()))?;
    let pairs = obj.iter().filter_map(|(k, v)| {
        let s = match v {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Bool(b) => b.to_string(),
            _ => return None,
        };
        Some((std::borrow::Cow::Borrowed(k.as_str()), std::borrow::Cow::Owned(s)))
    });
    Ok(RawParams::from_pairs(pairs))
}

pub(crate) fn healthz() -> Response<Body> {
    with_body(200, "text/plain; charset=utf-8", Bytes::from_static(b"ok\n"))
}

pub(crate) fn readyz(edge: &Edge) -> Response<Body> {
    if edge.log.is_writable() {
        with_body(200, "text/plain; charset=utf-8", Bytes::from_static(b"ready\n"))
    } else {
        let mut r = with_body(503, "text/plain; charset=utf-8", Bytes::from_static(b"log not writable\n"));
        r.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("1"));
        r
    }
}
