//! A click, whichever front end read it: the fast path ([`crate::fast`]) for plain
//! `GET`/`HEAD /c/…` requests and hyper ([`crate::handlers`]) for the rest both call
//! [`prepare`], then await [`await_commit`], then send the redirect [`prepare`] chose.

use http::Response;
use tally_log::LogError;
use tally_model::program::Redirect;
use tally_model::routing::Facts;
use tally_model::{click_flags, ClickId, ClickView, Signals};
use tally_protocol::click_query::{bounded, ClickMacros, ClickQuery};
use tally_protocol::headers::{click_cookie, ClickHeaders};

use crate::metrics::UnrecordedCause;
use crate::respond::{redirect, respond_error, Body, EdgeError};
use crate::Edge;

const MAX_UA: usize = 512;
const MAX_REFERRER: usize = 1024;
/// A click record's starting buffer: room for a browser's user agent without growing.
const RECORD_CAPACITY: usize = 512;
/// Waits for a click's commit and counts it, recorded or not. The redirect goes out either
/// way: a person is waiting.
pub(crate) async fn await_commit(edge: &Edge, submitted: Result<tally_log::Pending, LogError>, human: bool) {
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

/// What [`prepare`] leaves for the wait on the log.
pub(crate) enum Prepared {
    /// The redirect's status, `Location` and cookie, the record handed to the log, and
    /// whether the click looks human.
    Click {
        status: Redirect,
        location: String,
        cookie: Option<String>,
        submitted: Result<tally_log::Pending, LogError>,
        human: bool,
    },
    /// Nothing to record (an unknown link): the answer as it is.
    Answer(Response<Body>),
}

/// Everything a click does up to the wait on the log, in a plain function: the handlers'
/// futures then hold only what crosses the wait (they are built and moved on every click).
pub(crate) fn prepare(edge: &Edge, code: &str, req: ClickRequest<'_>) -> Prepared {
    let program = edge.program.load();
    let Some(link) = program.link(code) else {
        return Prepared::Answer(match &edge.config.fallback_url {
            Some(url) => redirect(Redirect::Found, url.clone(), None),
            None => respond_error(EdgeError::NotFound("unknown link"), false),
        });
    };
    let offer = &link.offer;
    let now = crate::now_ms();
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
    // Classified from the client's address before the privacy policy truncates it (a /24
    // finds the wrong country often enough to matter); only what it answered is stored.
    let classifier = edge.classifier.load();
    let observed = classifier.observe(&tally_signals::Request {
        ip: req.client_ip,
        user_agent,
        accept_language: headers.accept_language,
        ch_mobile: headers.ch_mobile,
        ch_platform: headers.ch_platform,
    });
    if observed.bot {
        flags |= click_flags::UNFURLER;
    }
    if observed.datacenter {
        flags |= click_flags::DATACENTER;
    }
    let cid = click_id.encode();
    let cid = std::str::from_utf8(&cid).unwrap_or_default();
    let mut signals = Signals {
        country: observed.country,
        region: observed.region,
        asn: observed.asn,
        device: observed.device,
        os: observed.os,
        browser: observed.browser,
        language: observed.language.as_str(),
        route: "",
    };
    let mut seconds = itoa::Buffer::new();
    let macros = ClickMacros { click_id: cid, signals, timestamp: seconds.format(now / 1000), query: req.query };
    // The offer's routing rules, first that holds; the weighted pick is the click ID's
    // random bits, so it follows from the click.
    let routed = if offer.routes.is_empty() {
        None
    } else {
        let (hour, weekday) = if offer.routes_use_time { program.calendar.hour_and_weekday(now) } else { (0, 0) };
        tally_model::routing::choose(&offer.routes, &Facts { signals, hour, weekday }, click_id.random())
    };
    let destination = query.destination(offer, &link.affiliate, &macros, routed.map(|r| &r.template));
    if destination.flags & click_flags::DEEP_LINK_USED == 0 {
        // A followed deep link is the affiliate's choice, not the rule's: no route then.
        signals.route = routed.map_or("", |r| &r.label);
    }
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
    // Unique clicks are counted by this pseudonym, not by the personal fields, which may be
    // erased later (see `privacy`).
    let day_key = edge.day_keys.get(&edge.log, program.calendar.day_of(now));
    let visitor = tally_model::visitor_key(&day_key, &offer.id, &link.affiliate, &ip, user_agent);
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
        visitor,
        signals,
    };
    let mut record = Vec::with_capacity(RECORD_CAPACITY);
    let submitted = match tally_model::encode_click_into(&click, rand::random(), &mut record) {
        Ok(()) => edge.appender.submit(record),
        Err(e) => Err(LogError::Write(e.to_string())),
    };
    let human = flags & click_flags::NON_HUMAN == 0;
    let cookie = edge.config.cookies.then(|| {
        let secure = offer.cookie.secure.unwrap_or(edge.config.cookie_secure);
        click_cookie(cid, offer.window_days, &offer.cookie.attributes, secure)
    });
    // The program snapshot is released when this returns, before the wait on the log: a
    // reload must not wait for us.
    Prepared::Click { status: offer.redirect, location, cookie, submitted, human }
}
