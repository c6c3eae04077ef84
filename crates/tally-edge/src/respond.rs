//! Building answers: the one mapping of edge errors to HTTP statuses ([`respond_error`]),
//! bodies with their content type, redirects, and the health answers. Both front ends (the
//! click fast path and hyper) and the admin listener answer through here.

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION, RETRY_AFTER, SET_COOKIE};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;
use tally_log::LogError;
use tally_model::program::Redirect;
use tally_protocol::params::FieldError;

use crate::Edge;

pub type Body = Full<Bytes>;

const NO_STORE: HeaderValue = HeaderValue::from_static("no-store");

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

pub(crate) fn method_not_allowed(allow: &'static str, json: bool) -> Response<Body> {
    let mut r = respond_error(EdgeError::MethodNotAllowed(allow), json);
    r.headers_mut().insert(http::header::ALLOW, HeaderValue::from_static(allow));
    r
}

/// A redirect (`302` unless the offer says otherwise) to `location`. The header values take
/// the strings' buffers (validated as `from_str` does, without its copy).
pub(crate) fn redirect(status: Redirect, location: String, cookie: Option<String>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::new()));
    match HeaderValue::from_maybe_shared(Bytes::from(location)) {
        Ok(v) => {
            *r.status_mut() = StatusCode::from_u16(status.code()).unwrap_or(StatusCode::FOUND);
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
