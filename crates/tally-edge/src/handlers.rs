//! hyper's front end of the public listener: one function per route. Clicks that reach hyper
//! (HTTP/1.0, `Connection` options, bodies, other methods) share the click logic of
//! [`crate::click`] with the fast path; conversions are [`crate::conversion`]'s.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{Method, Request, Response};
use hyper::body::Incoming;
use tally_protocol::headers::ClickHeaders;

use crate::click::{self, ClickRequest, Prepared};
use crate::conversion::{pixel, postback, tag_conversion};
use crate::metrics::Route;
use crate::respond::{healthz, method_not_allowed, readyz, redirect, respond_error, Body, EdgeError};
use crate::Edge;

/// Entry point for every request.
pub async fn route(edge: Arc<Edge>, peer: SocketAddr, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let path = req.uri().path();
    let (route, resp) = if let Some(code) = path.strip_prefix("/c/") {
        (Route::click, click(&edge, &req, peer, code).await)
    } else if path == "/v1/affiliate" || path.starts_with("/v1/affiliate/") {
        (Route::affiliate_api, crate::portal::route(&edge, req).await)
    } else {
        match path {
            "/px.gif" => (Route::pixel, Box::pin(pixel(&edge, &req, peer)).await),
            "/postback" => (Route::postback, Box::pin(postback(&edge, req, peer)).await),
            "/t.js" => (Route::tag, crate::tag::script(req.method(), req.headers(), false)),
            crate::tag::VERSIONED_PATH => (Route::tag, crate::tag::script(req.method(), req.headers(), true)),
            "/t/convert" => (Route::tag, Box::pin(tag_conversion(&edge, req, peer)).await),
            "/healthz" => (Route::healthz, healthz()),
            "/readyz" => (Route::readyz, readyz(&edge)),
            _ => (Route::other, respond_error(EdgeError::NotFound("not found"), false)),
        }
    };
    edge.metrics.request(route, resp.status().as_u16(), started.elapsed().as_secs_f64());
    Ok(resp)
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
    match click::prepare(edge, code, request) {
        Prepared::Click { status, location, cookie, submitted, human } => {
            click::await_commit(edge, submitted, human).await;
            redirect(status, location, cookie)
        }
        Prepared::Answer(answer) => answer,
    }
}
