//! Conversions: the pixel and the S2S postback. Parameters are read in every dialect
//! (`tally_protocol::params`), the postback is authenticated (`tally_protocol::auth`), the
//! conversion is built against one snapshot of the program, and the answer goes out only
//! after its event is committed.

use std::net::SocketAddr;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use tally_log::LogError;
use tally_model::program::Advertiser;
use tally_model::{Conversion, ConversionSource, Currency, Customer, Event, Program};
use tally_protocol::auth::{AuthError, Authenticated};
use tally_protocol::headers::cookie_click_id;
use tally_protocol::params::{self, Field, FieldError, RawParams};

use crate::metrics::{ConvOutcome, ConvSource};
use crate::respond::{method_not_allowed, respond_error, with_body, Body, EdgeError};
use crate::{now_ms, Edge};

/// The 43-byte transparent 1×1 GIF.
pub const PIXEL_GIF: [u8; 43] = [
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff,
    0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x02,
    0x02, 0x44, 0x01, 0x00, 0x3b,
];

/// Turns validated parameters into a conversion event, judged by `program` (the one snapshot
/// the request reads, so a reload between authenticating and building cannot mix programs).
/// `advertiser` is who a postback authenticated as; `None` for a browser's report.
///
/// A report that names no offer takes it from its coupon when it has no click; with a click
/// it is logged with offer and goal empty (unless a goal is named) and attribution takes the
/// offer from the click: the edge keeps no index of clicks, and the click may have been
/// taken by another edge node.
fn build_conversion(
    program: &Program,
    raw: &RawParams,
    source: ConversionSource,
    ip: String,
    advertiser: Option<&Advertiser>,
    customer_secret: &[u8; 32],
) -> Result<Conversion, EdgeError> {
    let p = params::validate(raw).map_err(EdgeError::Field)?;
    let offer_id = match (&p.offer, p.click_id) {
        (Some(o), _) => Some(o.as_str()),
        (None, Some(_)) => None,
        (None, None) => {
            // `validate` lets no report through without an offer, a click or a coupon.
            let coupon = program.coupon(&p.coupon).ok_or_else(|| {
                EdgeError::Field(FieldError::invalid(Field::Coupon, format!("unknown coupon \"{}\"", p.coupon)))
            })?;
            Some(coupon.offer.as_str())
        }
    };
    let (offer, goal, currency) = match offer_id {
        Some(id) => {
            let offer = program.offer(id).ok_or_else(|| {
                EdgeError::Field(FieldError::invalid(Field::Offer, format!("unknown offer \"{id}\"")))
            })?;
            if let Some(a) = advertiser.filter(|a| a.id != offer.advertiser) {
                return Err(EdgeError::Field(FieldError::invalid(
                    Field::Offer,
                    format!("offer {} is not advertiser {}'s", offer.id, a.id),
                )));
            }
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
            if let Some(c) = p.currency.filter(|&c| c != offer.currency) {
                return Err(EdgeError::Field(FieldError::invalid(
                    Field::Currency,
                    format!("offer {} is paid in {}, got {c}", offer.id, offer.currency),
                )));
            }
            (offer.id.clone(), goal, offer.currency)
        }
        None => {
            let currency = click_only_currency(program, advertiser, p.currency, p.amount.is_some())?;
            (String::new(), p.goal.clone().unwrap_or_default(), currency)
        }
    };
    let amount = p
        .amount
        .as_deref()
        .map(|a| tally_model::parse_reported_minor(a, currency).map_err(|e| FieldError::invalid(Field::Amount, e)))
        .transpose()
        .map_err(EdgeError::Field)?;
    let conversion = Conversion {
        ts_ms: now_ms(),
        source,
        click_id: p.click_id,
        coupon: p.coupon,
        offer,
        goal,
        txid: p.txid,
        amount,
        currency,
        status: p.status,
        subs: p.subs,
        ip,
        advertiser: advertiser.map(|a| a.id.clone()).unwrap_or_default(),
        customer: (!p.customer.is_empty()).then(|| Customer::new(customer_secret, &p.customer)),
    };
    Ok(conversion)
}

/// The currency of a report that names no offer: the one it names, else the one every offer
/// it could be about is paid in (the advertiser's, or the program's for a browser). An amount
/// is read in it (its minor unit decides what `12.5` means), and attribution refuses a sale
/// in another currency than the click's offer's. With offers in several currencies an
/// amount needs its currency named.
fn click_only_currency(
    program: &Program,
    advertiser: Option<&Advertiser>,
    named: Option<Currency>,
    has_amount: bool,
) -> Result<Currency, EdgeError> {
    if let Some(c) = named {
        return Ok(c);
    }
    let mut offers = program.offers.values().filter(|o| advertiser.is_none_or(|a| a.id == o.advertiser));
    let Some(first) = offers.next() else {
        return Err(EdgeError::Field(FieldError::invalid(
            Field::Offer,
            match advertiser {
                Some(a) => format!("advertiser {} has no offers", a.id),
                None => "the program has no offers".to_owned(),
            },
        )));
    };
    if has_amount && offers.any(|o| o.currency != first.currency) {
        return Err(EdgeError::Field(FieldError {
            field: Field::Currency.name(),
            reason: "missing field: currency (the report names no offer, and the offers it may be about are paid in \
                     several currencies)"
                .to_owned(),
        }));
    }
    Ok(first.currency)
}

pub(crate) async fn pixel(edge: &Edge, req: &Request<Incoming>, peer: SocketAddr) -> Response<Body> {
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
    // The program snapshot is released before the wait on the log: a reload must not wait.
    let built = build_conversion(&edge.program.load(), &raw, ConversionSource::Pixel, ip, None, &edge.customer_secret);
    let result = match built {
        Ok(conversion) => append_conversion(edge, conversion).await.map_err(EdgeError::Unavailable),
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
            if let EdgeError::Field(f) = &e {
                // A merchant's tag that sends a bad field loses every conversion: say which.
                tally_telemetry::warn_limited!(field = f.field, reason = %f.reason, offer = raw.get(Field::Offer).unwrap_or(""), "pixel refused");
            }
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

pub(crate) async fn postback(edge: &Edge, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
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
                // Null when the report named only its click: attribution takes them from it.
                "offer": (!conversion.offer.is_empty()).then_some(&conversion.offer),
                "goal": (!conversion.goal.is_empty()).then_some(&conversion.goal),
                "conversion_status": conversion.status.as_str(),
                "click_id": conversion.click_id.map(|c| c.to_string()),
            });
            with_body(200, "application/json", body.to_string().into())
        }
        Err(e) => {
            edge.metrics.conversion(ConvSource::postback, outcome_of(&e));
            // An advertiser whose postbacks are all refused is losing conversions: say why,
            // rate-limited, naming the field, never a credential. Refusals once the advertiser
            // is known are logged where it is, with it; these are the ones before (no or an
            // unknown offer, a bad body).
            if let EdgeError::Field(f) = &e {
                if f.field == Field::Offer.name() {
                    tally_telemetry::warn_limited!(field = f.field, reason = %f.reason, "postback refused");
                }
            }
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
        Method::POST => read_body(edge, &parts.headers, body).await?,
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
    let ip = edge.config.ip.render(edge.config.ip.client_ip(peer.ip(), &parts.headers), now);
    let conversion = {
        // One program snapshot authenticates and builds the conversion; scoped so it is
        // released before waiting on the log.
        let program = edge.program.load();
        // With an offer, its advertiser's credentials; with only the click (Everflow's and
        // Voluum's advertisers send nothing more), any advertiser's: the credential says who
        // reports, and attribution credits the click only if its offer is that advertiser's.
        let offer = match params.get(Field::Offer) {
            Some(id) => Some(program.offer(id).ok_or_else(|| {
                EdgeError::Field(FieldError::invalid(Field::Offer, format!("unknown offer \"{id}\"")))
            })?),
            None => None,
        };
        let candidates: Vec<&Advertiser> = match offer {
            Some(o) => {
                vec![program.advertiser_of(o).ok_or_else(|| EdgeError::Internal("offer has no advertiser".into()))?]
            }
            None => program.advertisers.values().collect(),
        };
        let offer_id = offer.map_or("", |o| o.id.as_str());
        let mut found = tally_protocol::auth::authenticate_any(
            candidates.iter().copied(),
            &parts.headers,
            params.get(Field::Token),
            &raw_signed,
            now / 1000,
            edge.config.signature_max_age.as_secs(),
        )
        .map_err(|e| {
            let advertiser = candidates.first().filter(|_| offer.is_some()).map_or("", |a| a.id.as_str());
            tally_telemetry::warn_limited!(advertiser = %advertiser, offer = %offer_id, reason = e.reason(), "postback refused");
            EdgeError::Auth(e)
        })?;
        if found.len() > 1 {
            return Err(EdgeError::Field(FieldError {
                field: Field::Offer.name(),
                reason: "missing field: offer (this credential belongs to several advertisers)".to_owned(),
            }));
        }
        let (advertiser, auth) = found.pop().ok_or(EdgeError::Auth(AuthError::Wrong))?;
        let mut conversion = build_conversion(
            &program,
            &params,
            ConversionSource::Postback,
            ip,
            Some(advertiser),
            &edge.customer_secret,
        )
        .inspect_err(|e| {
            if let EdgeError::Field(f) = e {
                tally_telemetry::warn_limited!(
                    advertiser = %advertiser.id,
                    offer = %offer_id,
                    field = f.field,
                    reason = %f.reason,
                    "postback refused"
                );
            }
        })?;
        if let (Authenticated::Signature { mac, .. }, true) = (&auth, conversion.txid.is_empty()) {
            // A signature covers the time and the exact request, so a second request with it
            // is a replay (captured, or a sender's retry): the transaction ID derived from it
            // makes attribution pay it once, as it would a repeated txid, and the answer say
            // `duplicate`.
            conversion.txid = signature_txid(mac);
        }
        conversion
    };
    append_conversion(edge, conversion).await.map_err(EdgeError::Unavailable)
}

/// A POST body's parameters (form-encoded, or a flat JSON object), and its raw bytes (what a
/// signature covers).
async fn read_body(edge: &Edge, headers: &http::HeaderMap, body: Incoming) -> Result<(Bytes, RawParams), EdgeError> {
    let limit = edge.config.postback_max_body_bytes;
    // A declared Content-Length over the limit is refused before reading: otherwise the
    // client holds the connection until the body timeout, sending nothing.
    if usize::try_from(hyper::body::Body::size_hint(&body).lower()).map_or(true, |n| n > limit) {
        return Err(EdgeError::BodyTooLarge);
    }
    // hyper's header timeout ends where the body starts: without this deadline a client
    // trickling a body (slow POST) holds its connection slot forever.
    let collect = tokio::time::timeout(edge.config.body_read_timeout, Limited::new(body, limit).collect());
    let bytes = match collect.await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            return Err(EdgeError::BodyTooLarge)
        }
        Ok(Err(e)) => return Err(EdgeError::BadBody(e.to_string())),
        Err(_) => return Err(EdgeError::BodyTimeout),
    };
    let is_json = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("application/json"));
    let params = if is_json { json_params(&bytes)? } else { RawParams::from_pairs(form_urlencoded::parse(&bytes)) };
    Ok((bytes, params))
}

/// `/t/convert`: a conversion from the JavaScript tag (`/t.js`) on the merchant's page, as a
/// POST (form body; the tag's `fetch` or `sendBeacon`) from the merchant's origin. Judged as a
/// pixel (a browser's report: no credentials), recorded with source `tag`; answered in JSON
/// the page may read (CORS for the calling origin, with credentials, so a same-site
/// deployment's `tally_cid` cookie can stand in for the click ID).
pub(crate) async fn tag_conversion(edge: &Edge, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let origin = req.headers().get(http::header::ORIGIN).cloned();
    let mut resp = match *req.method() {
        Method::OPTIONS => {
            let mut r = with_body(204, "text/plain; charset=utf-8", Bytes::new());
            let h = r.headers_mut();
            h.insert(http::header::ACCESS_CONTROL_ALLOW_METHODS, http::HeaderValue::from_static("POST"));
            h.insert(http::header::ACCESS_CONTROL_ALLOW_HEADERS, http::HeaderValue::from_static("content-type"));
            h.insert(http::header::ACCESS_CONTROL_MAX_AGE, http::HeaderValue::from_static("86400"));
            r
        }
        Method::POST => tag_conversion_inner(edge, req, peer).await,
        _ => method_not_allowed("POST, OPTIONS", true),
    };
    let h = resp.headers_mut();
    match origin {
        // Any origin: the answer says only accepted or duplicate, and the report needs a
        // click ID either way; the caller's origin (not `*`) so the browser may send cookies.
        Some(o) => {
            h.insert(http::header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
            h.insert(http::header::ACCESS_CONTROL_ALLOW_CREDENTIALS, http::HeaderValue::from_static("true"));
        }
        None => {
            h.insert(http::header::ACCESS_CONTROL_ALLOW_ORIGIN, http::HeaderValue::from_static("*"));
        }
    }
    h.insert(http::header::VARY, http::HeaderValue::from_static("Origin"));
    resp
}

async fn tag_conversion_inner(edge: &Edge, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let result = async {
        let (_, mut raw) = read_body(edge, &parts.headers, body).await?;
        if let Some(cid) = cookie_click_id(&parts.headers) {
            raw.set_if_absent(Field::ClickId, cid.to_owned());
        }
        let ip = edge.config.ip.render(edge.config.ip.client_ip(peer.ip(), &parts.headers), now_ms());
        let conversion =
            build_conversion(&edge.program.load(), &raw, ConversionSource::Tag, ip, None, &edge.customer_secret)?;
        append_conversion(edge, conversion).await.map_err(EdgeError::Unavailable)
    }
    .await;
    match result {
        Ok((appended, _)) => {
            let (outcome, status) = match appended.duplicate_of {
                Some(_) => (ConvOutcome::duplicate, "duplicate"),
                None => (ConvOutcome::accepted, "accepted"),
            };
            edge.metrics.conversion(ConvSource::tag, outcome);
            with_body(200, "application/json", serde_json::json!({ "status": status }).to_string().into())
        }
        Err(e) => {
            edge.metrics.conversion(ConvSource::tag, outcome_of(&e));
            if let EdgeError::Field(f) = &e {
                tally_telemetry::warn_limited!(field = f.field, reason = %f.reason, "tag conversion refused");
            }
            respond_error(e, true)
        }
    }
}

/// The transaction ID of a signed postback that names none: `sig:` and the first 16 bytes of
/// its signature in hex.
fn signature_txid(mac: &[u8]) -> String {
    format!("sig:{}", hex::encode(mac.get(..16).unwrap_or(mac)))
}

/// Commits a conversion, learning whether it repeats an earlier report (its
/// [`Conversion::repeat_key`]: same offer, goal, txid and status), so the answer can say
/// `duplicate`. Repeats are logged too, so the log holds every report; paying a transaction
/// once is attribution's job, by its own key (offer, goal, txid).
async fn append_conversion(edge: &Edge, conversion: Conversion) -> Result<(tally_log::Appended, Conversion), LogError> {
    // Conversions are rare next to clicks; a clone keeps this simple.
    let record =
        tally_model::encode(&Event::Conversion(conversion.clone())).map_err(|e| LogError::Write(e.to_string()))?;
    let appended = match conversion.repeat_key() {
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
