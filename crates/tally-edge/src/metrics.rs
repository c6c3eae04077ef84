//! The edge's metrics. Every label is a closed enum (route, status class, outcome, cause), so
//! cardinality is bounded and no label value ever comes from a request: no link codes, URLs,
//! IDs or IPs. Handles are created once here; the hot path only increments them.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Route {
    click,
    pixel,
    postback,
    healthz,
    readyz,
    metrics,
    other,
    /// The admin API (`/admin/...` on the admin listener).
    admin,
    /// `/t.js` and `/t/convert`: the JavaScript tag and its conversions.
    tag,
    /// `/v1/affiliate/...`: the affiliate API.
    affiliate_api,
}

const ROUTES: [Route; 10] = [
    Route::click,
    Route::pixel,
    Route::postback,
    Route::healthz,
    Route::readyz,
    Route::metrics,
    Route::other,
    Route::admin,
    Route::tag,
    Route::affiliate_api,
];

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum StatusClass {
    S2xx,
    S3xx,
    S4xx,
    S5xx,
}

// Written by hand: the derive cannot produce names that start with a digit.
impl EncodeLabelValue for StatusClass {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(match self {
            StatusClass::S2xx => "2xx",
            StatusClass::S3xx => "3xx",
            StatusClass::S4xx => "4xx",
            StatusClass::S5xx => "5xx",
        })
    }
}

const CLASSES: [StatusClass; 4] = [StatusClass::S2xx, StatusClass::S3xx, StatusClass::S4xx, StatusClass::S5xx];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    route: Route,
    status_class: StatusClass,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: Route,
}

/// Why a click was redirected but not recorded.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum UnrecordedCause {
    queue_full,
    write_error,
    closed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabel {
    cause: UnrecordedCause,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
enum Database {
    geoip,
    asn,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DatabaseLabel {
    database: Database,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum ClickKind {
    human,
    non_human,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClickLabels {
    kind: ClickKind,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum ConvSource {
    pixel,
    postback,
    tag,
}

/// What happened to a reported conversion.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum ConvOutcome {
    /// Committed to the log.
    accepted,
    /// Committed to the log, and a repeat of an earlier report (same offer, goal, txid and
    /// status): answered as such, never paid twice.
    duplicate,
    /// Bad input: answered 4xx, nothing stored.
    invalid,
    /// Bad or missing credentials: answered 401/403, nothing stored.
    unauthorized,
    /// The log could not take it (queue full, write error, shutting down): answered 503.
    shed,
}

const CONV_OUTCOMES: [ConvOutcome; 5] =
    [ConvOutcome::accepted, ConvOutcome::duplicate, ConvOutcome::invalid, ConvOutcome::unauthorized, ConvOutcome::shed];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConvLabels {
    source: ConvSource,
    outcome: ConvOutcome,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum ReloadOutcome {
    ok,
    error,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabel {
    outcome: ReloadOutcome,
}

/// Pre-resolved handles for everything the edge counts.
#[derive(Debug, Clone)]
pub struct EdgeMetrics {
    requests: Vec<Counter>,
    durations: Vec<Histogram>,
    clicks: [Counter; 2],
    unrecorded: [Counter; 3],
    deep_link_rejected: Counter,
    personal_erased: Counter,
    conversions: Vec<Counter>,
    reloads: [Counter; 2],
    pub connections_open: Gauge,
    pub connections_total: Counter,
    pub program_links: Gauge,
    /// The build time of the GeoIP and ASN databases in force (0: none).
    databases_built: [Gauge; 2],
}

impl EdgeMetrics {
    /// Records which databases a classifier put in force has.
    pub fn signals(&self, classifier: &tally_signals::Classifier) {
        let (geo, asn) = classifier.databases_built();
        self.databases_built[0].set(geo.map_or(0, |t| i64::try_from(t).unwrap_or(i64::MAX)));
        self.databases_built[1].set(asn.map_or(0, |t| i64::try_from(t).unwrap_or(i64::MAX)));
    }

    pub fn new(registry: &mut Registry) -> EdgeMetrics {
        let r = registry.sub_registry_with_prefix("tally");

        let requests = Family::<HttpLabels, Counter>::default();
        r.register("http_requests", "HTTP requests answered, by route and status class", requests.clone());
        let durations = Family::<RouteLabel, Histogram>::new_with_constructor(|| {
            // 50 µs .. ~1.6 s
            Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
        });
        r.register_with_unit(
            "http_request_duration",
            "Time from request parsed to response ready, by route",
            Unit::Seconds,
            durations.clone(),
        );
        let clicks = Family::<ClickLabels, Counter>::default();
        r.register("clicks_recorded", "Clicks committed to the log, by human or non-human", clicks.clone());
        let unrecorded = Family::<CauseLabel, Counter>::default();
        r.register(
            "clicks_unrecorded",
            "Clicks that were redirected but could not be recorded, by cause",
            unrecorded.clone(),
        );
        let deep_link_rejected = Counter::default();
        r.register(
            "clicks_deep_link_rejected",
            "Clicks whose deep link was refused (the offer's default destination was used)",
            deep_link_rejected.clone(),
        );
        let personal_erased = Counter::default();
        r.register(
            "personal_fields_erased",
            "Records whose personal fields (IP, user agent, referrer) were erased, by request or retention",
            personal_erased.clone(),
        );
        let conversions = Family::<ConvLabels, Counter>::default();
        r.register("conversions", "Conversions reported, by source and outcome", conversions.clone());
        let reloads = Family::<ReloadLabel, Counter>::default();
        r.register("program_reloads", "Program reloads, by outcome", reloads.clone());
        let connections_open = Gauge::default();
        r.register("http_connections_open", "HTTP connections open now", connections_open.clone());
        let connections_total = Counter::default();
        r.register("http_connections", "HTTP connections accepted", connections_total.clone());
        let program_links = Gauge::default();
        r.register("program_links", "Links in the loaded program", program_links.clone());
        let databases_built = Family::<DatabaseLabel, Gauge>::default();
        r.register_with_unit(
            "signals_database_built_timestamp",
            "When the GeoIP and ASN databases in force were built (their metadata); 0 when none is configured",
            Unit::Seconds,
            databases_built.clone(),
        );

        let mut req_handles = Vec::new();
        for route in ROUTES {
            for status_class in CLASSES {
                req_handles.push(requests.get_or_create(&HttpLabels { route, status_class }).clone());
            }
        }
        let durations = ROUTES.iter().map(|&route| durations.get_or_create(&RouteLabel { route }).clone()).collect();
        let mut conv = Vec::new();
        for source in [ConvSource::pixel, ConvSource::postback, ConvSource::tag] {
            for outcome in CONV_OUTCOMES {
                conv.push(conversions.get_or_create(&ConvLabels { source, outcome }).clone());
            }
        }
        EdgeMetrics {
            requests: req_handles,
            durations,
            clicks: [ClickKind::human, ClickKind::non_human]
                .map(|kind| clicks.get_or_create(&ClickLabels { kind }).clone()),
            unrecorded: [UnrecordedCause::queue_full, UnrecordedCause::write_error, UnrecordedCause::closed]
                .map(|cause| unrecorded.get_or_create(&CauseLabel { cause }).clone()),
            deep_link_rejected,
            personal_erased,
            conversions: conv,
            reloads: [ReloadOutcome::ok, ReloadOutcome::error]
                .map(|outcome| reloads.get_or_create(&ReloadLabel { outcome }).clone()),
            connections_open,
            connections_total,
            program_links,
            databases_built: [Database::geoip, Database::asn]
                .map(|database| databases_built.get_or_create(&DatabaseLabel { database }).clone()),
        }
    }

    pub fn request(&self, route: Route, status: u16, seconds: f64) {
        let class = match status {
            200..=299 => 0,
            300..=399 => 1,
            400..=499 => 2,
            _ => 3,
        };
        let r = route as usize;
        self.requests[r * CLASSES.len() + class].inc();
        self.durations[r].observe(seconds);
    }

    pub fn click_recorded(&self, human: bool) {
        self.clicks[usize::from(!human)].inc();
    }

    pub fn click_unrecorded(&self, cause: UnrecordedCause) {
        self.unrecorded[cause as usize].inc();
    }

    pub fn unrecorded_total(&self) -> u64 {
        self.unrecorded.iter().map(Counter::get).sum()
    }

    pub fn deep_link_rejected(&self) {
        self.deep_link_rejected.inc();
    }

    pub fn personal_erased(&self, records: u64) {
        self.personal_erased.inc_by(records);
    }

    pub fn conversion(&self, source: ConvSource, outcome: ConvOutcome) {
        self.conversions[source as usize * CONV_OUTCOMES.len() + outcome as usize].inc();
    }

    pub fn reload(&self, outcome: ReloadOutcome) {
        self.reloads[outcome as usize].inc();
    }
}
