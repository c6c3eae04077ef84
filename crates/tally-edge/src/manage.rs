//! The admin API's program management: affiliates, groups, coupons and links, one at a time
//! and in bulk. Every change goes through [`Edge::edit_program`]: validated with the whole
//! program, logged as one `ProgramEdit` naming its actor, then in force.
//!
//! | request | does |
//! |---|---|
//! | `GET /admin/{kind}?after=&limit=&active=&group=&affiliate=` | a page of entities, in key order |
//! | `GET /admin/{kind}/{key}` | one |
//! | `POST /admin/{kind}` | creates one (201); 409 if the key exists |
//! | `PUT /admin/{kind}/{key}` | creates (201) or replaces (200) one |
//! | `PATCH /admin/{kind}/{key}` | changes the fields given (200) |
//! | `POST /admin/{kind}/{key}/disable`, `.../enable` | affiliates, coupons, links |
//! | `POST /admin/import?type=&dry_run=` | CSV, JSON Lines or JSON, all rows or none |
//!
//! `{kind}` is `affiliates`, `groups`, `coupons` or `links`; the key is an ID, or a code for
//! coupons and links.

use std::collections::HashMap;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};
use tally_model::managed::{AffiliateSpec, CouponSpec, GroupSpec, LinkSpec};
use tally_model::{Edit, Program};

use crate::admin::{edit_error, error, json_response};
use crate::respond::Body;
use crate::{Edge, EditError};

/// Largest import body: 100,000 affiliates with a link and a coupon each fit in a fifth.
const MAX_IMPORT: usize = 64 << 20;
/// A page of a list, at most.
const MAX_PAGE: usize = 10_000;
const DEFAULT_PAGE: usize = 1_000;

/// What the admin API manages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    Affiliates,
    Groups,
    Coupons,
    Links,
}

impl Kind {
    pub(crate) fn parse(s: &str) -> Option<Kind> {
        match s {
            "affiliates" => Some(Kind::Affiliates),
            "groups" => Some(Kind::Groups),
            "coupons" => Some(Kind::Coupons),
            "links" => Some(Kind::Links),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Affiliates => "affiliates",
            Kind::Groups => "groups",
            Kind::Coupons => "coupons",
            Kind::Links => "links",
        }
    }

    fn singular(self) -> &'static str {
        match self {
            Kind::Affiliates => "affiliate",
            Kind::Groups => "group",
            Kind::Coupons => "coupon",
            Kind::Links => "link",
        }
    }

    fn key_field(self) -> &'static str {
        match self {
            Kind::Affiliates | Kind::Groups => "id",
            Kind::Coupons | Kind::Links => "code",
        }
    }

    /// Coupon codes are matched ignoring case, so they are keyed in upper case.
    fn key_of(self, key: &str) -> String {
        match self {
            Kind::Coupons => key.to_ascii_uppercase(),
            _ => key.to_owned(),
        }
    }
}

/// One entity as written: its spec.
#[derive(Debug, Clone)]
enum Spec {
    Affiliate(AffiliateSpec),
    Group(GroupSpec),
    Coupon(CouponSpec),
    Link(LinkSpec),
}

impl Spec {
    fn from_json(kind: Kind, v: Value) -> Result<Spec, String> {
        fn de<T: DeserializeOwned>(v: Value) -> Result<T, String> {
            serde_json::from_value(v).map_err(|e| e.to_string())
        }
        Ok(match kind {
            Kind::Affiliates => Spec::Affiliate(de(v)?),
            Kind::Groups => Spec::Group(de(v)?),
            Kind::Coupons => Spec::Coupon(de(v)?),
            Kind::Links => Spec::Link(de(v)?),
        })
    }

    fn to_json(&self) -> Value {
        match self {
            Spec::Affiliate(s) => json!(s),
            Spec::Group(s) => json!(s),
            Spec::Coupon(s) => json!(s),
            Spec::Link(s) => json!(s),
        }
    }

    fn key(&self) -> &str {
        match self {
            Spec::Affiliate(s) => &s.id,
            Spec::Group(s) => &s.id,
            Spec::Coupon(s) => &s.code,
            Spec::Link(s) => &s.code,
        }
    }

    fn put_into(self, edit: &mut Edit) {
        match self {
            Spec::Affiliate(s) => edit.affiliates.push(s),
            Spec::Group(s) => edit.groups.push(s),
            Spec::Coupon(s) => edit.coupons.push(s),
            Spec::Link(s) => edit.links.push(s),
        }
    }

    fn set_active(&mut self, active: bool) -> bool {
        match self {
            Spec::Affiliate(s) => s.active = active,
            Spec::Coupon(s) => s.active = active,
            Spec::Link(s) => s.active = active,
            Spec::Group(_) => return false,
        }
        true
    }
}

/// The entity `key` of `kind` in `program`, from its file or the API.
fn current(program: &Program, kind: Kind, key: &str) -> Option<Spec> {
    match kind {
        Kind::Affiliates => program.affiliates.get(key).map(|a| Spec::Affiliate(a.spec.clone())),
        Kind::Groups => program.groups.get(key).map(|g| Spec::Group(g.spec.clone())),
        Kind::Coupons => program.any_coupon(key).map(|c| {
            Spec::Coupon(CouponSpec {
                code: c.code.clone(),
                offer: c.offer.clone(),
                affiliate: c.affiliate.clone(),
                active: c.active,
            })
        }),
        Kind::Links => program.any_link(key).map(|l| {
            Spec::Link(LinkSpec {
                code: l.code.clone(),
                offer: l.offer.id.clone(),
                affiliate: l.affiliate.clone(),
                active: l.active,
                postback_url: l.postback_url.clone(),
            })
        }),
    }
}

/// Every key of `kind` in `program`, in order.
fn keys(program: &Program, kind: Kind) -> Vec<String> {
    let mut keys: Vec<String> = match kind {
        Kind::Affiliates => program.affiliates.keys().cloned().collect(),
        Kind::Groups => return program.groups.keys().cloned().collect(),
        Kind::Coupons => program.coupons().map(|c| c.code.clone()).collect(),
        Kind::Links => program.links().map(|l| l.code.clone()).collect(),
    };
    keys.sort_unstable();
    keys
}

/// An entity's JSON: its spec, whether it is in force (`enabled`, for those that can be
/// disabled) and whether the API manages it (else the program file does).
fn item(edge: &Edge, program: &Program, kind: Kind, key: &str) -> Value {
    match current(program, kind, key) {
        Some(spec) => item_of(program, kind, key, spec, &LegacyLinks::load(edge, kind)),
        None => Value::Null,
    }
}

/// The links the API added before program edits existed, in `links.toml`: read once per
/// answer (a page of links would otherwise read the file once a link).
struct LegacyLinks(Option<crate::Overlay>);

impl LegacyLinks {
    fn load(edge: &Edge, kind: Kind) -> LegacyLinks {
        LegacyLinks(
            (kind == Kind::Links)
                .then(|| crate::Overlay::load(&crate::Overlay::path(&edge.config.data_dir)).ok())
                .flatten(),
        )
    }

    fn has(&self, code: &str) -> bool {
        self.0.as_ref().is_some_and(|o| o.links.contains_key(code))
    }
}

fn item_of(program: &Program, kind: Kind, key: &str, spec: Spec, legacy: &LegacyLinks) -> Value {
    let mut v = spec.to_json();
    let managed = match kind {
        Kind::Affiliates => program.managed.affiliates.contains_key(key),
        Kind::Groups => program.managed.groups.contains_key(key),
        Kind::Coupons => program.managed.coupons.contains_key(&kind.key_of(key)),
        Kind::Links => program.managed.links.contains_key(key) || legacy.has(key),
    };
    if let Value::Object(m) = &mut v {
        // The spec leaves `active` out when true; an API reader wants it spelled out.
        match &spec {
            Spec::Affiliate(a) => {
                m.insert("active".into(), json!(a.active));
                // A token's hash is no business of a reader: its ID and name name it.
                if !a.tokens.is_empty() {
                    let tokens: Vec<Value> = a.tokens.iter().map(|t| json!({ "id": t.id, "name": t.name })).collect();
                    m.insert("tokens".into(), json!(tokens));
                }
            }
            Spec::Coupon(c) => {
                m.insert("active".into(), json!(c.active));
                m.insert("enabled".into(), json!(program.coupon(key).is_some()));
            }
            Spec::Link(l) => {
                m.insert("active".into(), json!(l.active));
                m.insert("enabled".into(), json!(program.link(key).is_some()));
            }
            Spec::Group(_) => {}
        }
        m.insert("managed_by_api".into(), json!(managed));
    }
    v
}

/// Who makes a change: `X-Tally-Actor` (1-64 printable ASCII characters), else `admin`.
pub(crate) fn actor(req: &Request<Incoming>) -> Result<String, Box<Response<Body>>> {
    match req.headers().get("x-tally-actor") {
        None => Ok("admin".to_owned()),
        Some(v) => match v.to_str() {
            Ok(s) if (1..=64).contains(&s.len()) && s.bytes().all(|b| (0x20..0x7f).contains(&b)) => Ok(s.to_owned()),
            _ => Err(Box::new(error(400, "X-Tally-Actor: give 1-64 printable ASCII characters naming who acts"))),
        },
    }
}

/// Routes `/admin/{kind}...` and `/admin/import`; `None` when the path is not one of them.
pub(crate) async fn route(edge: &Edge, req: Request<Incoming>, segments: &[&str]) -> Option<Response<Body>> {
    let method = req.method().clone();
    if segments == ["import"] {
        return Some(if method == Method::POST { import(edge, req).await } else { not_allowed(&method) });
    }
    let kind = Kind::parse(segments.first()?)?;
    let resp = match (&method, &segments[1..]) {
        (&Method::GET, []) => list(edge, kind, req.uri().query().unwrap_or("")),
        (&Method::POST, []) => match (actor(&req), read_object(req, crate::admin::MAX_BODY).await) {
            (Ok(actor), Ok(body)) => create(edge, kind, &actor, body).await,
            (Err(r), _) | (_, Err(r)) => *r,
        },
        (&Method::GET, [key]) => {
            let program = edge.program();
            match item(edge, &program, kind, key) {
                Value::Null => not_found(kind, key),
                v => json_response(200, &json!({ kind.singular(): v, "program_digest": program.digest })),
            }
        }
        (&Method::PUT | &Method::PATCH, [key]) => {
            let key = (*key).to_owned();
            let patch = method == Method::PATCH;
            match (actor(&req), read_object(req, crate::admin::MAX_BODY).await) {
                (Ok(actor), Ok(body)) => replace(edge, kind, &actor, key, body, patch).await,
                (Err(r), _) | (_, Err(r)) => *r,
            }
        }
        (&Method::POST, [key, "tokens"]) if kind == Kind::Affiliates => {
            let key = (*key).to_owned();
            match (actor(&req), read_object(req, crate::admin::MAX_BODY).await) {
                (Ok(actor), Ok(body)) => new_token(edge, &actor, key, body).await,
                (Err(r), _) | (_, Err(r)) => *r,
            }
        }
        (&Method::DELETE, [key, "tokens", id]) if kind == Kind::Affiliates => match actor(&req) {
            Ok(actor) => revoke_token(edge, &actor, (*key).to_owned(), (*id).to_owned()).await,
            Err(r) => *r,
        },
        (_, [_, "tokens"] | [_, "tokens", _]) if kind == Kind::Affiliates => not_allowed(&method),
        (&Method::POST, [key, action @ ("disable" | "enable")]) if kind != Kind::Groups => match actor(&req) {
            Ok(actor) => set_active(edge, kind, &actor, (*key).to_owned(), *action == "enable").await,
            Err(r) => *r,
        },
        (_, [] | [_] | [_, "disable" | "enable"]) => not_allowed(&method),
        _ => return None,
    };
    Some(resp)
}

fn not_allowed(method: &Method) -> Response<Body> {
    error(405, &format!("method {method} not allowed here"))
}

fn not_found(kind: Kind, key: &str) -> Response<Body> {
    error(404, &format!("no {} \"{key}\"", kind.singular()))
}

async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Bytes, Box<Response<Body>>> {
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(Box::new(error(413, &format!("request body too large (at most {limit} bytes)"))))
        }
        Err(e) => Err(Box::new(error(400, &format!("cannot read body: {e}")))),
    }
}

async fn read_object(req: Request<Incoming>, limit: usize) -> Result<Map<String, Value>, Box<Response<Body>>> {
    let body = read_body(req, limit).await?;
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(Box::new(error(400, "bad JSON body: expected an object"))),
        Err(e) => Err(Box::new(error(400, &format!("bad JSON body: {e}")))),
    }
}

fn list(edge: &Edge, kind: Kind, query: &str) -> Response<Body> {
    let (mut after, mut limit, mut active, mut group, mut affiliate) = (None, DEFAULT_PAGE, None, None, None);
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "after" => after = Some(v.into_owned()),
            "limit" => match v.parse::<usize>() {
                Ok(n) if (1..=MAX_PAGE).contains(&n) => limit = n,
                _ => return error(400, &format!("limit: give 1-{MAX_PAGE}, not \"{v}\"")),
            },
            "active" => match v.as_ref() {
                "true" => active = Some(true),
                "false" => active = Some(false),
                _ => return error(400, &format!("active: give true or false, not \"{v}\"")),
            },
            "group" if kind == Kind::Affiliates => group = Some(v.into_owned()),
            "affiliate" if matches!(kind, Kind::Coupons | Kind::Links) => affiliate = Some(v.into_owned()),
            other => return error(400, &format!("unknown parameter \"{other}\" for {}", kind.name())),
        }
    }
    let program = edge.program();
    let legacy = LegacyLinks::load(edge, kind);
    let mut items = Vec::new();
    let mut next = None;
    let mut total = 0usize;
    for key in keys(&program, kind) {
        let Some(spec) = current(&program, kind, &key) else { continue };
        // Filtered on the spec: only the page's entities become JSON.
        let (is_active, in_group, owner) = match &spec {
            Spec::Affiliate(a) => (a.active, a.group.as_str(), ""),
            Spec::Group(_) => (true, "", ""),
            Spec::Coupon(c) => (c.active, "", c.affiliate.as_str()),
            Spec::Link(l) => (l.active, "", l.affiliate.as_str()),
        };
        let keep = active.is_none_or(|a| is_active == a)
            && group.as_deref().is_none_or(|g| in_group == g)
            && affiliate.as_deref().is_none_or(|a| owner == a);
        if !keep {
            continue;
        }
        total += 1;
        if after.as_deref().is_some_and(|a| key.as_str() <= a) {
            continue;
        }
        if items.len() == limit {
            next = next.or_else(|| items.last().and_then(|v: &Value| v[kind.key_field()].as_str().map(str::to_owned)));
            continue;
        }
        items.push(item_of(&program, kind, &key, spec, &legacy));
    }
    json_response(200, &json!({ "program_digest": program.digest, kind.name(): items, "next": next, "total": total }))
}

/// The response to a change that went in.
fn changed(edge: &Edge, kind: Kind, key: &str, status: u16, program: &Program, seq: u64) -> Response<Body> {
    tracing::info!(kind = kind.singular(), key, digest = %program.digest, seq, "program edited through the admin API");
    json_response(
        status,
        &json!({ kind.singular(): item(edge, program, kind, key), "program_digest": program.digest, "seq": seq }),
    )
}

async fn create(edge: &Edge, kind: Kind, actor: &str, body: Map<String, Value>) -> Response<Body> {
    let spec = match Spec::from_json(kind, Value::Object(body)) {
        Ok(s) => s,
        Err(e) => return error(400, &format!("bad {}: {e}", kind.singular())),
    };
    let key = spec.key().to_owned();
    if !valid_key(kind, &key) {
        return error(400, &format!("{}: use 1-64 letters, digits, '-', '_' or '.'", kind.key_field()));
    }
    let k = key.clone();
    let result = edge
        .edit_program(actor, move |program| {
            if current(program, kind, &k).is_some() {
                return Err(EditError::Conflict(format!(
                    "{} \"{k}\" exists; PUT or PATCH /admin/{}/{k} changes it",
                    kind.singular(),
                    kind.name()
                )));
            }
            let mut edit = Edit::default();
            spec.put_into(&mut edit);
            Ok(edit)
        })
        .await;
    match result {
        Ok((program, seq)) => changed(edge, kind, &key, 201, &program, seq),
        Err(e) => edit_error(e),
    }
}

fn valid_key(kind: Kind, key: &str) -> bool {
    match kind {
        Kind::Coupons => {
            !key.is_empty()
                && key.len() <= tally_model::program::MAX_ID_LEN
                && key.bytes().all(|b| b.is_ascii_graphic())
        }
        _ => tally_model::program::is_valid_id(key),
    }
}

/// `PUT` (the body is the whole entity) or `PATCH` (the fields given replace the entity's).
async fn replace(
    edge: &Edge,
    kind: Kind,
    actor: &str,
    key: String,
    mut body: Map<String, Value>,
    patch: bool,
) -> Response<Body> {
    match body.get(kind.key_field()) {
        None => {
            body.insert(kind.key_field().into(), json!(key));
        }
        Some(v) if v.as_str().map(|s| kind.key_of(s)) == Some(kind.key_of(&key)) => {}
        Some(v) => {
            return error(
                400,
                &format!("{}: {v} is not the {} in the path, \"{key}\"", kind.key_field(), kind.singular()),
            )
        }
    }
    if !valid_key(kind, &key) {
        return error(400, &format!("{}: use 1-64 letters, digits, '-', '_' or '.'", kind.key_field()));
    }
    if !patch {
        if let Err(e) = Spec::from_json(kind, Value::Object(body.clone())) {
            return error(400, &format!("bad {}: {e}", kind.singular()));
        }
    }
    let created = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = created.clone();
    let k = key.clone();
    let result = edge
        .edit_program(actor, move |program| {
            let before = current(program, kind, &k);
            flag.store(before.is_none(), std::sync::atomic::Ordering::Relaxed);
            let merged = match (patch, before) {
                (true, None) => return Err(EditError::NotFound(format!("no {} \"{k}\"", kind.singular()))),
                (true, Some(before)) => {
                    let mut v = before.to_json();
                    if let Value::Object(m) = &mut v {
                        m.extend(body);
                    }
                    v
                }
                (false, _) => Value::Object(body),
            };
            let spec = Spec::from_json(kind, merged)
                .map_err(|e| EditError::Invalid(vec![format!("{}[{k}]: {e}", kind.name())]))?;
            let mut edit = Edit::default();
            spec.put_into(&mut edit);
            keep_what_rows_cannot_say(program, &mut edit, false);
            Ok(edit)
        })
        .await;
    match result {
        Ok((program, seq)) => {
            let status = if created.load(std::sync::atomic::Ordering::Relaxed) { 201 } else { 200 };
            changed(edge, kind, &key, status, &program, seq)
        }
        Err(e) => edit_error(e),
    }
}

async fn set_active(edge: &Edge, kind: Kind, actor: &str, key: String, active: bool) -> Response<Body> {
    let k = key.clone();
    let result = edge
        .edit_program(actor, move |program| {
            let Some(mut spec) = current(program, kind, &k) else {
                return Err(EditError::NotFound(format!("no {} \"{k}\"", kind.singular())));
            };
            spec.set_active(active);
            let mut edit = Edit::default();
            spec.put_into(&mut edit);
            Ok(edit)
        })
        .await;
    match result {
        Ok((program, seq)) => changed(edge, kind, &key, 200, &program, seq),
        Err(e) => edit_error(e),
    }
}

// ---- affiliates' API tokens -----------------------------------------------------------------

fn affiliate_spec(program: &Program, id: &str) -> Result<AffiliateSpec, EditError> {
    program
        .affiliates
        .get(id)
        .map(|a| a.spec.clone())
        .ok_or_else(|| EditError::NotFound(format!("no affiliate \"{id}\"")))
}

/// `POST /admin/affiliates/{id}/tokens` `{"name"}`: a new token for the affiliate API, shown
/// in this answer only (the program keeps its hash).
async fn new_token(edge: &Edge, actor: &str, id: String, body: Map<String, Value>) -> Response<Body> {
    let name = match body.get("name") {
        None => String::new(),
        Some(Value::String(n)) if n.len() <= 100 && !n.chars().any(char::is_control) => n.clone(),
        Some(_) => return error(400, "name: a label of at most 100 characters"),
    };
    if let Some(k) = body.keys().find(|k| *k != "name") {
        return error(400, &format!("unknown field \"{k}\"; give name"));
    }
    let token = crate::portal::new_token();
    let hash = crate::portal::token_hash(&token);
    let token_id = format!("t{}", &hash[..12]);
    let (a, tid) = (id.clone(), token_id.clone());
    let result = edge
        .edit_program(actor, move |program| {
            let mut spec = affiliate_spec(program, &a)?;
            spec.tokens.push(tally_model::managed::TokenSpec { id: tid, name, hash });
            Ok(Edit { affiliates: vec![spec], ..Edit::default() })
        })
        .await;
    match result {
        Ok((program, seq)) => {
            tracing::info!(affiliate = %id, token = %token_id, seq, "affiliate API token made");
            json_response(
                201,
                &json!({
                    "token": token,
                    "id": token_id,
                    "affiliate": item(edge, &program, Kind::Affiliates, &id),
                    "program_digest": program.digest,
                    "seq": seq,
                    "note": "the token is shown here only; keep it secret",
                }),
            )
        }
        Err(e) => edit_error(e),
    }
}

/// `DELETE /admin/affiliates/{id}/tokens/{token_id}`: revokes a token at once.
async fn revoke_token(edge: &Edge, actor: &str, id: String, token_id: String) -> Response<Body> {
    let (a, tid) = (id.clone(), token_id.clone());
    let result = edge
        .edit_program(actor, move |program| {
            let mut spec = affiliate_spec(program, &a)?;
            let before = spec.tokens.len();
            spec.tokens.retain(|t| t.id != tid);
            if spec.tokens.len() == before {
                return Err(EditError::NotFound(format!("affiliate \"{a}\" has no token \"{tid}\"")));
            }
            Ok(Edit { affiliates: vec![spec], ..Edit::default() })
        })
        .await;
    match result {
        Ok((program, seq)) => {
            tracing::info!(affiliate = %id, token = %token_id, seq, "affiliate API token revoked");
            changed(edge, Kind::Affiliates, &id, 200, &program, seq)
        }
        Err(e) => edit_error(e),
    }
}

// ---- bulk import ---------------------------------------------------------------------------

/// Where each imported entity came from, to name its row in a problem.
#[derive(Debug, Default)]
struct Rows {
    at: HashMap<(Kind, String), usize>,
}

/// One problem with an import: the row (line of a CSV or JSON Lines body, counting the
/// header; index of a JSON array entry) when it is known.
fn problem(row: Option<usize>, what: impl Into<String>) -> Value {
    json!({ "row": row, "problem": what.into() })
}

/// The rows of an import, parsed: the edit and every problem found on the way.
#[derive(Debug, Default)]
struct Parsed {
    edit: Edit,
    rows: Rows,
    problems: Vec<Value>,
}

impl Parsed {
    fn put(&mut self, row: usize, spec: Spec) {
        let kind = match spec {
            Spec::Affiliate(_) => Kind::Affiliates,
            Spec::Group(_) => Kind::Groups,
            Spec::Coupon(_) => Kind::Coupons,
            Spec::Link(_) => Kind::Links,
        };
        let key = kind.key_of(spec.key());
        if let Some(first) = self.rows.at.get(&(kind, key.clone())) {
            let p = format!(
                "{} \"{}\" is also on row {first}: one row per {}",
                kind.singular(),
                spec.key(),
                kind.singular()
            );
            self.problems.push(problem(Some(row), p));
            return;
        }
        self.rows.at.insert((kind, key), row);
        spec.put_into(&mut self.edit);
    }
}

impl Rows {
    /// A problem of the composed program (`affiliates[x].group: ...`), with the row of the
    /// entity it names when the import has it.
    fn program_problem(&self, text: String) -> Value {
        let row = text.split_once('[').and_then(|(section, rest)| {
            let kind = Kind::parse(section)?;
            let key = rest.split_once(']')?.0;
            self.at.get(&(kind, kind.key_of(key))).copied()
        });
        problem(row, text)
    }
}

/// `POST /admin/import`: CSV (`Content-Type: text/csv`, `?type=` names what its rows are),
/// JSON Lines (`application/x-ndjson`: one object a line, with `"type"`), or JSON (an object
/// with the program file's sections). Validated as a whole with the program: every problem
/// is reported with its row and nothing is put, or everything is, as one `ProgramEdit`.
/// `?dry_run=true` validates only.
async fn import(edge: &Edge, req: Request<Incoming>) -> Response<Body> {
    let (mut kind, mut dry_run, mut reassign) = (None, false, false);
    for (k, v) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "type" => match Kind::parse(&v) {
                Some(t) => kind = Some(t),
                None => return error(400, &format!("type: give affiliates, groups, coupons or links, not \"{v}\"")),
            },
            "dry_run" | "reassign" => match (v.as_ref(), k.as_ref()) {
                ("true" | "1", "dry_run") => dry_run = true,
                ("true" | "1", _) => reassign = true,
                ("false" | "0", _) => {}
                _ => return error(400, &format!("{k}: give true or false, not \"{v}\"")),
            },
            other => return error(400, &format!("unknown parameter \"{other}\"; use type, dry_run and reassign")),
        }
    }
    let content_type = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
        .unwrap_or_default();
    let actor = match actor(&req) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    let body = match read_body(req, MAX_IMPORT).await {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let parsed = match content_type.as_str() {
        "text/csv" => match kind {
            Some(kind) => parse_csv(kind, &body),
            None => {
                return error(
                    400,
                    "type: a CSV import names what its rows are: ?type=affiliates (or groups, coupons, links)",
                )
            }
        },
        "application/x-ndjson" | "application/jsonl" | "application/json-lines" => parse_jsonl(&body),
        "application/json" => parse_json(&body),
        other => {
            return error(
                415,
                &format!(
                    "Content-Type \"{other}\": send text/csv (with ?type=), application/x-ndjson, or application/json"
                ),
            )
        }
    };
    let Parsed { mut edit, rows, mut problems } = parsed;
    keep_what_rows_cannot_say(&edge.program(), &mut edit, content_type == "text/csv");
    if edit.is_empty() && problems.is_empty() {
        return error(400, "nothing to import: the body has no rows");
    }
    // Checked against the program even when some rows did not parse, so one answer names
    // every bad row.
    let program = edge.program();
    if !reassign {
        problems.extend(reassignments(&program, &edit, &rows));
    }
    let checked = {
        let edit = edit.clone();
        tokio::task::spawn_blocking(move || program.with_edit(&edit).map(|p| p.digest)).await
    };
    let digest = match checked {
        Ok(Ok(d)) => Some(d),
        Ok(Err(e)) => {
            problems.extend(e.problems().into_iter().map(|p| rows.program_problem(p)));
            None
        }
        Err(e) => return error(500, &format!("import check failed: {e}")),
    };
    let counts = json!({
        "groups": edit.groups.len(),
        "affiliates": edit.affiliates.len(),
        "coupons": edit.coupons.len(),
        "links": edit.links.len(),
    });
    let refused = |mut problems: Vec<Value>| {
        problems.sort_by_key(|p| p["row"].as_u64().unwrap_or(u64::MAX));
        json_response(
            400,
            &json!({
                "error": format!("import refused: {} problem(s); nothing was imported", problems.len()),
                "problems": problems,
            }),
        )
    };
    if !problems.is_empty() {
        return refused(problems);
    }
    if dry_run {
        return json_response(
            200,
            &json!({ "dry_run": true, "valid": true, "would_put": counts, "program_digest": digest }),
        );
    }
    let summary = edit.summary();
    match edge.edit_program(&actor, move |_| Ok(edit)).await {
        Ok((program, seq)) => {
            tracing::info!(actor, what = %summary, seq, digest = %program.digest, "import through the admin API");
            json_response(200, &json!({ "put": counts, "seq": seq, "program_digest": program.digest }))
        }
        // The program changed between the check and the edit (a reload, another edit).
        Err(EditError::Invalid(ps)) => refused(ps.into_iter().map(|p| rows.program_problem(p)).collect()),
        Err(e) => edit_error(e),
    }
}

/// An affiliate put again keeps its API tokens unless the new spec names some (tokens are
/// made and revoked by their own endpoints), and, from a CSV (whose columns cannot say
/// them), its terms. From a CSV, an empty `postback_url` cell keeps an affiliate's, group's
/// or link's URL: an empty cell cannot tell "none" from "as it is", and a sheet of links
/// (or of affiliates with their links) should not wipe URLs it never listed.
fn keep_what_rows_cannot_say(program: &Program, edit: &mut Edit, csv: bool) {
    for a in &mut edit.affiliates {
        let Some(old) = program.affiliates.get(&a.id) else { continue };
        if a.tokens.is_empty() {
            a.tokens = old.spec.tokens.clone();
        }
        if csv && a.terms.is_empty() {
            a.terms = old.spec.terms.clone();
        }
        if csv && a.postback_url.is_empty() {
            a.postback_url = old.spec.postback_url.clone();
        }
    }
    if csv {
        for l in edit.links.iter_mut().filter(|l| l.postback_url.is_empty()) {
            if let Some(old) = program.any_link(&l.code) {
                l.postback_url = old.postback_url.clone();
            }
        }
    }
}

/// Links and coupons the import would move to another affiliate: refused unless asked for
/// (`?reassign=true`), since a code typed twice would silently take another affiliate's sales.
fn reassignments(program: &Program, edit: &Edit, rows: &Rows) -> Vec<Value> {
    let mut out = Vec::new();
    let mut check = |kind: Kind, code: &str, affiliate: &str, owner: Option<&str>| {
        if let Some(owner) = owner.filter(|o| *o != affiliate) {
            out.push(problem(
                rows.at.get(&(kind, kind.key_of(code))).copied(),
                format!(
                    "{}[{code}]: belongs to affiliate \"{owner}\", not \"{affiliate}\" (import with ?reassign=true to move it)",
                    kind.name()
                ),
            ));
        }
    };
    for l in &edit.links {
        check(Kind::Links, &l.code, &l.affiliate, program.any_link(&l.code).map(|x| x.affiliate.as_str()));
    }
    for c in &edit.coupons {
        check(Kind::Coupons, &c.code, &c.affiliate, program.any_coupon(&c.code).map(|x| x.affiliate.as_str()));
    }
    out
}

/// The CSV columns each kind takes; the first is required.
fn columns(kind: Kind) -> &'static [&'static str] {
    match kind {
        // `offer` with `link` and/or `coupon` gives the affiliate a link and a coupon on the
        // same row: one spreadsheet of ambassadors.
        Kind::Affiliates => &["id", "name", "group", "active", "offer", "link", "coupon", "postback_url"],
        Kind::Groups => &["id", "name", "postback_url"],
        Kind::Coupons => &["code", "offer", "affiliate", "active"],
        Kind::Links => &["code", "offer", "affiliate", "active", "postback_url"],
    }
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "" | "true" | "yes" | "1" => Some(true),
        "false" | "no" | "0" => Some(false),
        _ => None,
    }
}

fn parse_csv(kind: Kind, body: &[u8]) -> Parsed {
    let mut out = Parsed::default();
    let mut reader = csv::ReaderBuilder::new().has_headers(true).trim(csv::Trim::All).from_reader(body);
    let headers = match reader.headers() {
        Ok(h) => h.clone(),
        Err(e) => {
            out.problems.push(problem(Some(1), format!("header: {e}")));
            return out;
        }
    };
    let allowed = columns(kind);
    let mut index = HashMap::new();
    for (i, h) in headers.iter().enumerate() {
        if !allowed.contains(&h) {
            out.problems.push(problem(
                Some(1),
                format!("header: unknown column \"{h}\" for {}; columns are {}", kind.name(), allowed.join(", ")),
            ));
        } else if index.insert(h.to_owned(), i).is_some() {
            out.problems.push(problem(Some(1), format!("header: column \"{h}\" twice")));
        }
    }
    if !index.contains_key(allowed[0]) {
        out.problems.push(problem(Some(1), format!("header: needs a \"{}\" column", allowed[0])));
    }
    if !out.problems.is_empty() {
        return out;
    }
    for (i, record) in reader.records().enumerate() {
        // Rows count lines as a spreadsheet shows them: the header is row 1.
        let row = record.as_ref().ok().and_then(|r| r.position()).map_or(i + 2, |p| p.line() as usize);
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                out.problems.push(problem(Some(row), e.to_string()));
                continue;
            }
        };
        let get = |c: &str| index.get(c).and_then(|&i| record.get(i)).unwrap_or("").to_owned();
        let key = get(allowed[0]);
        if key.is_empty() {
            out.problems.push(problem(Some(row), format!("{}: empty", allowed[0])));
            continue;
        }
        let Some(active) = parse_bool(&get("active")) else {
            out.problems.push(problem(Some(row), format!("active: \"{}\" is not true or false", get("active"))));
            continue;
        };
        match kind {
            Kind::Affiliates => {
                let (offer, link, coupon) = (get("offer"), get("link"), get("coupon"));
                if offer.is_empty() && !(link.is_empty() && coupon.is_empty()) {
                    out.problems.push(problem(Some(row), "offer: a row with a link or a coupon names its offer"));
                    continue;
                }
                out.put(
                    row,
                    Spec::Affiliate(AffiliateSpec {
                        id: key.clone(),
                        name: get("name"),
                        group: get("group"),
                        active,
                        terms: vec![],
                        tokens: vec![],
                        postback_url: get("postback_url"),
                    }),
                );
                if !link.is_empty() {
                    out.put(
                        row,
                        Spec::Link(LinkSpec {
                            code: link,
                            offer: offer.clone(),
                            affiliate: key.clone(),
                            active: true,
                            postback_url: String::new(),
                        }),
                    );
                }
                if !coupon.is_empty() {
                    out.put(row, Spec::Coupon(CouponSpec { code: coupon, offer, affiliate: key, active: true }));
                }
            }
            Kind::Groups => out.put(
                row,
                Spec::Group(GroupSpec {
                    id: key,
                    name: get("name"),
                    terms: vec![],
                    payout_minimum: Default::default(),
                    postback_url: get("postback_url"),
                }),
            ),
            Kind::Coupons => out.put(
                row,
                Spec::Coupon(CouponSpec { code: key, offer: get("offer"), affiliate: get("affiliate"), active }),
            ),
            Kind::Links => out.put(
                row,
                Spec::Link(LinkSpec {
                    code: key,
                    offer: get("offer"),
                    affiliate: get("affiliate"),
                    active,
                    postback_url: get("postback_url"),
                }),
            ),
        }
    }
    out
}

fn parse_jsonl(body: &[u8]) -> Parsed {
    let mut out = Parsed::default();
    let text = match std::str::from_utf8(body) {
        Ok(t) => t,
        Err(e) => {
            out.problems.push(problem(None, format!("the body is not UTF-8: {e}")));
            return out;
        }
    };
    for (i, line) in text.lines().enumerate() {
        let row = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let mut v = match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(m)) => m,
            Ok(_) => {
                out.problems.push(problem(Some(row), "expected a JSON object"));
                continue;
            }
            Err(e) => {
                out.problems.push(problem(Some(row), format!("bad JSON: {e}")));
                continue;
            }
        };
        let kind = match v.remove("type") {
            Some(Value::String(t)) => match Kind::parse(&format!("{t}s")).or_else(|| Kind::parse(&t)) {
                Some(k) => k,
                None => {
                    out.problems
                        .push(problem(Some(row), format!("type: \"{t}\" is not affiliate, group, coupon or link")));
                    continue;
                }
            },
            _ => {
                out.problems
                    .push(problem(Some(row), "type: each line names its type (affiliate, group, coupon or link)"));
                continue;
            }
        };
        match Spec::from_json(kind, Value::Object(v)) {
            Ok(spec) => out.put(row, spec),
            Err(e) => out.problems.push(problem(Some(row), format!("bad {}: {e}", kind.singular()))),
        }
    }
    out
}

fn parse_json(body: &[u8]) -> Parsed {
    let mut out = Parsed::default();
    let edit: Edit = match serde_json::from_slice(body) {
        Ok(e) => e,
        Err(e) => {
            out.problems
                .push(problem(None, format!("bad JSON body (an object of groups, affiliates, coupons, links): {e}")));
            return out;
        }
    };
    // Entries are numbered from 1 within their section.
    let Edit { groups, affiliates, coupons, links } = edit;
    for (i, s) in groups.into_iter().enumerate() {
        out.put(i + 1, Spec::Group(s));
    }
    for (i, s) in affiliates.into_iter().enumerate() {
        out.put(i + 1, Spec::Affiliate(s));
    }
    for (i, s) in coupons.into_iter().enumerate() {
        out.put(i + 1, Spec::Coupon(s));
    }
    for (i, s) in links.into_iter().enumerate() {
        out.put(i + 1, Spec::Link(s));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn csv_rows_are_numbered_as_a_spreadsheet_shows_them_and_repeats_are_named() {
        let body = "id,name,group,offer,link,coupon\nann,Ann,gold,shoes,ann-l,ANN10\nbob,Bob,gold,,,\nann,Again,,,,\ncid,,,,cid-l,\n";
        let p = parse_csv(Kind::Affiliates, body.as_bytes());
        assert_eq!(p.edit.affiliates.len(), 2);
        assert_eq!((p.edit.links.len(), p.edit.coupons.len()), (1, 1));
        let problems: Vec<(u64, String)> = p
            .problems
            .iter()
            .map(|v| (v["row"].as_u64().unwrap(), v["problem"].as_str().unwrap().to_owned()))
            .collect();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(problems[0].0, 4);
        assert!(problems[0].1.contains("also on row 2"), "{problems:?}");
        assert_eq!(problems[1].0, 5);
        assert!(problems[1].1.contains("names its offer"), "{problems:?}");
        assert_eq!(p.rows.at[&(Kind::Coupons, "ANN10".into())], 2);
    }

    #[test]
    fn csv_headers_are_checked_before_any_row() {
        let p = parse_csv(Kind::Links, b"code,offer,owner\nx,shoes,aff1\n");
        assert!(p.edit.is_empty());
        assert!(p.problems[0]["problem"].as_str().unwrap().contains("unknown column \"owner\""));
        let p = parse_csv(Kind::Links, b"offer,affiliate\nshoes,aff1\n");
        assert!(p.problems[0]["problem"].as_str().unwrap().contains("needs a \"code\" column"));
    }

    #[test]
    fn json_lines_name_their_type_and_bad_lines_their_line() {
        let body = "{\"type\":\"group\",\"id\":\"gold\"}\n\n{\"type\":\"affiliate\",\"id\":\"a\",\"group\":\"gold\"}\n{\"id\":\"b\"}\n{\"type\":\"affiliate\",\"id\":\"c\",\"colour\":1}\nnot json\n";
        let p = parse_jsonl(body.as_bytes());
        assert_eq!((p.edit.groups.len(), p.edit.affiliates.len()), (1, 1));
        let rows: Vec<u64> = p.problems.iter().map(|v| v["row"].as_u64().unwrap()).collect();
        assert_eq!(rows, vec![4, 5, 6], "{:?}", p.problems);
        assert!(p.problems[1]["problem"].as_str().unwrap().contains("colour"));
    }

    #[test]
    fn program_problems_find_their_row() {
        let p = parse_csv(Kind::Coupons, b"code,offer,affiliate\nspring,shoes,nobody\n");
        let v = p.rows.program_problem("coupons[spring].affiliate: unknown affiliate \"nobody\"".into());
        assert_eq!(v["row"], 2);
        assert_eq!(p.rows.program_problem("time_zone: bad".into())["row"], Value::Null);
    }

    #[test]
    fn csv_links_take_a_postback_url_and_an_empty_cell_keeps_the_old_one() {
        let file = include_str!("../../../tests/fixtures/program-good.toml");
        let link = |code: &str, url: &str| LinkSpec {
            code: code.into(),
            offer: "shoes".into(),
            affiliate: "aff1".into(),
            active: true,
            postback_url: url.into(),
        };
        let edit = Edit { links: vec![link("demo", "https://old.example/pb")], ..Edit::default() };
        let program = Program::from_toml(file).unwrap().with_edit(&edit).unwrap();
        let body =
            "code,offer,affiliate,postback_url\ndemo,shoes,aff1,\nnew,shoes,aff1,https://new.example/pb?c={click_id}\n";
        let mut p = parse_csv(Kind::Links, body.as_bytes());
        assert!(p.problems.is_empty(), "{:?}", p.problems);
        keep_what_rows_cannot_say(&program, &mut p.edit, true);
        let urls: Vec<&str> = p.edit.links.iter().map(|l| l.postback_url.as_str()).collect();
        assert_eq!(urls, ["https://old.example/pb", "https://new.example/pb?c={click_id}"]);
        // An affiliate's row naming the link keeps it too.
        let mut p = parse_csv(Kind::Affiliates, b"id,offer,link\naff1,shoes,demo\n");
        keep_what_rows_cannot_say(&program, &mut p.edit, true);
        assert_eq!(p.edit.links[0].postback_url, "https://old.example/pb");
        // JSON says what it means: a link without the field has none.
        let mut e = Edit { links: vec![link("demo", "")], ..Edit::default() };
        keep_what_rows_cannot_say(&program, &mut e, false);
        assert_eq!(e.links[0].postback_url, "");
        let current = current(&program, Kind::Links, "demo").unwrap();
        assert_eq!(current.to_json()["postback_url"], "https://old.example/pb", "PATCH and disable keep it");
    }
}
