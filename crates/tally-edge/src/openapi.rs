//! The admin API's OpenAPI description, served at `GET /admin/openapi.json`. The entities'
//! schemas are derived from the types the API reads (`tally_model::managed`); the answers'
//! from the types below, which describe the JSON the handlers write. The server's test
//! fetches this description and calls every operation in it, checking each answer's status
//! and body against it, so it cannot drift from the code.

use serde::Serialize;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use tally_model::managed::{
    AffiliateSpec, CouponSpec, Edit, GroupSpec, LinkSpec, PayoutSpec, TermsSpec, TierSpec, TokenSpec,
};

/// An error: what was wrong, and every problem when there are several.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problems: Option<Vec<String>>,
}

/// One problem of a refused import: its row (a CSV's or JSON Lines' line, header = 1; an
/// entry's position in a JSON section), when known.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImportProblem {
    pub row: Option<u64>,
    pub problem: String,
}

/// A refused import: nothing was imported.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImportRefused {
    pub error: String,
    pub problems: Vec<ImportProblem>,
}

/// Entities an import puts, by kind.
#[derive(Debug, Serialize, ToSchema)]
pub struct Counts {
    pub groups: u64,
    pub affiliates: u64,
    pub coupons: u64,
    pub links: u64,
}

/// An import that went in, as one program edit (`seq`).
#[derive(Debug, Serialize, ToSchema)]
pub struct ImportDone {
    pub put: Counts,
    pub seq: u64,
    pub program_digest: String,
}

/// A dry run that found nothing wrong.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImportChecked {
    pub dry_run: bool,
    pub valid: bool,
    pub would_put: Counts,
    pub program_digest: Option<String>,
}

/// What an import answers with `200`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum ImportOutcome {
    Done(ImportDone),
    Checked(ImportChecked),
}

/// How each entity is listed and returned: its spec, whether the API manages it (else the
/// program file), and for those that can be disabled, `active` as set and `enabled` (in
/// force: it and its affiliate are active).
macro_rules! entity_schemas {
    ($spec:ty, $item:ident, $list:ident, $one:ident, $change:ident, $plural:ident, $singular:ident $(, $extra:ident: $ety:ty)*) => {
        #[derive(Debug, Serialize, ToSchema)]
        pub struct $item {
            #[serde(flatten)]
            pub spec: $spec,
            pub managed_by_api: bool,
            #[serde(skip_serializing_if = "Option::is_none")]
            pub enabled: Option<bool>,
            $(
                #[serde(skip_serializing_if = "Option::is_none")]
                pub $extra: Option<$ety>,
            )*
        }

        /// A page in key order; `next` is the key to pass as `after` for the page after.
        #[derive(Debug, Serialize, ToSchema)]
        pub struct $list {
            pub program_digest: String,
            pub $plural: Vec<$item>,
            pub next: Option<String>,
            /// Entities that pass the filters, on every page.
            pub total: u64,
        }

        #[derive(Debug, Serialize, ToSchema)]
        pub struct $one {
            pub $singular: $item,
            pub program_digest: String,
        }

        /// A change in force: the entity as it now is, the program it made and the log
        /// sequence number of its `ProgramEdit`.
        #[derive(Debug, Serialize, ToSchema)]
        pub struct $change {
            pub $singular: $item,
            pub program_digest: String,
            pub seq: u64,
        }
    };
}

/// An API token as the admin API shows it: named, never shown again.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenInfo {
    pub id: String,
    pub name: String,
}

entity_schemas!(
    AffiliateSpec,
    AffiliateItem,
    AffiliateList,
    AffiliateOne,
    AffiliateChange,
    affiliates,
    affiliate,
    tokens: Vec<TokenInfo>
);
entity_schemas!(GroupSpec, GroupItem, GroupList, GroupOne, GroupChange, groups, group);
entity_schemas!(CouponSpec, CouponItem, CouponList, CouponOne, CouponChange, coupons, coupon);
entity_schemas!(LinkSpec, LinkItem, LinkList, LinkOne, LinkChange, links, link);

/// An offer as `GET /admin/program` lists it.
#[derive(Debug, Serialize, ToSchema)]
pub struct OfferInfo {
    pub id: String,
    pub currency: String,
    pub goals: Vec<String>,
}

/// Entities the admin API manages, by kind.
#[derive(Debug, Serialize, ToSchema)]
pub struct ManagedCounts {
    pub affiliates: u64,
    pub groups: u64,
    pub coupons: u64,
    pub links: u64,
}

/// The program in force.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProgramInfo {
    pub digest: String,
    pub path: String,
    pub advertisers: u64,
    pub time_zone: String,
    pub affiliates: u64,
    pub groups: u64,
    pub coupons: u64,
    pub links: u64,
    pub active_links: u64,
    pub managed: ManagedCounts,
    pub offers: Vec<OfferInfo>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Reloaded {
    pub changed: bool,
    pub digest: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LogLevelBody {
    pub level: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EraseBody {
    #[serde(default)]
    pub click_ids: Vec<String>,
    #[serde(default)]
    pub ips: Vec<String>,
    /// Merchants' customer IDs: those customers' conversions.
    #[serde(default)]
    pub customers: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EraseReport {
    pub scanned: u64,
    pub erased: u64,
    pub already_erased: u64,
    pub chained: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RetentionBody {
    pub days: Option<u32>,
}

/// The rows of `tally report` for the range, per offer and per affiliate.
#[derive(Debug, Serialize, ToSchema)]
pub struct Stats {
    #[schema(value_type = Vec<Object>)]
    pub by_offer: Vec<serde_json::Value>,
    #[schema(value_type = Vec<Object>)]
    pub by_affiliate: Vec<serde_json::Value>,
    pub attributed_through_seq: u64,
}

/// A page of ledger entries (each a row of `tally commissions --format jsonl`).
#[derive(Debug, Serialize, ToSchema)]
pub struct LedgerPage {
    #[schema(value_type = Vec<Object>)]
    pub entries: Vec<serde_json::Value>,
    /// The entry ID to pass as `after` for the next page.
    pub next: Option<String>,
    pub attributed_through_seq: u64,
}

/// An entry and the entries that refer to it (duplicates, reversals, decisions).
#[derive(Debug, Serialize, ToSchema)]
pub struct LedgerEntry {
    #[schema(value_type = Object)]
    pub entry: serde_json::Value,
    #[schema(value_type = Vec<Object>)]
    pub related: Vec<serde_json::Value>,
}

/// A decision attribution applied: its own entry, and the entry it changed as it now is.
#[derive(Debug, Serialize, ToSchema)]
pub struct DecisionApplied {
    pub seq: u64,
    pub applied: bool,
    #[schema(value_type = Object)]
    pub decision: serde_json::Value,
    #[schema(value_type = Option<Object>)]
    pub entry: Option<serde_json::Value>,
}

/// A decision logged, not yet applied (or applied elsewhere: an edge of a cluster).
#[derive(Debug, Serialize, ToSchema)]
pub struct DecisionLogged {
    pub seq: u64,
    pub applied: bool,
    pub note: Option<String>,
}

/// A decision that could not apply to the ledger as it stood: logged, booked
/// `not_applicable`, nothing changed.
#[derive(Debug, Serialize, ToSchema)]
pub struct DecisionRefused {
    pub error: String,
    pub seq: u64,
    #[schema(value_type = Object)]
    pub decision: serde_json::Value,
}

/// One affiliate's money in one currency.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BalanceRow {
    pub affiliate: String,
    pub currency: String,
    /// Approved and not yet paid.
    pub approved: String,
    /// In a hold, or awaiting the merchant or an operator.
    pub pending: String,
    /// Paid by payout runs (not voided).
    pub paid: String,
    /// The smallest balance a payout run pays (the group's, else the program's).
    pub minimum: String,
    /// Whether the next run would pay `approved`.
    pub payable: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Balances {
    pub balances: Vec<BalanceRow>,
}

/// A total in one currency.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PayoutTotal {
    pub currency: String,
    pub entries: u64,
    pub amount: String,
}

/// What a run paid one affiliate in one currency.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PayoutLine {
    pub affiliate: String,
    pub currency: String,
    pub entries: u64,
    pub amount: String,
}

/// A payout run.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PayoutRunBody {
    pub payout: String,
    /// Its ledger entry (kind `payout`).
    pub entry: String,
    /// `paid`, `voided` or `not_applied`.
    pub state: String,
    pub time: String,
    pub voided_by: Option<u64>,
    pub rule: String,
    /// Affiliates paid.
    pub affiliates: u64,
    pub totals: Vec<PayoutTotal>,
    /// Per affiliate and currency (one run, or an affiliate's own list).
    pub lines: Option<Vec<PayoutLine>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PayoutRuns {
    pub payouts: Vec<PayoutRunBody>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OnePayout {
    pub payout: PayoutRunBody,
}

/// An entry a run paid, on a statement.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StatementLine {
    pub entry: String,
    pub date: String,
    pub kind: String,
    pub offer: String,
    pub goal: String,
    pub txid: String,
    pub sale_amount: Option<String>,
    pub amount: String,
    pub currency: String,
    pub rule: String,
}

/// An affiliate's statement of one payout run (as CSV with `?format=csv`).
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StatementBody {
    pub payout: String,
    pub affiliate: String,
    pub paid_at: String,
    pub run_entry: String,
    pub voided_by: Option<u64>,
    pub entries: Vec<StatementLine>,
    pub totals: Vec<PayoutTotal>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OneStatement {
    pub statement: StatementBody,
}

/// One outgoing postback or webhook and what became of it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeliveryRow {
    /// Also its `Idempotency-Key` (and a webhook's `webhook-id`).
    pub key: String,
    /// `commission.created` or `commission.updated`.
    pub event: String,
    /// The affiliate (postbacks) or the webhook's ID.
    pub receiver: String,
    /// `postback` or `webhook`.
    pub kind: String,
    pub url: String,
    /// `pending`, `delivered` or `failed`.
    pub status: String,
    pub attempts: u32,
    pub created: String,
    pub next_attempt: Option<String>,
    pub delivered: Option<String>,
    pub last_status: Option<u16>,
    pub last_error: String,
    pub last_latency_ms: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryPage {
    pub deliveries: Vec<DeliveryRow>,
    /// The key to pass as `after` for the next page.
    pub next: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OneDelivery {
    pub delivery: DeliveryRow,
}

pub mod deliveries {
    #[allow(unused_imports)]
    use super::*;

    /// A page of the delivery log, in outbox order.
    #[utoipa::path(get, path = "/admin/deliveries", tag = "deliveries", operation_id = "list_deliveries",
        params(("status" = Option<String>, Query, description = "pending, delivered or failed"),
               ("receiver" = Option<String>, Query, description = "an affiliate or a webhook ID"),
               ("after" = Option<String>, Query, description = "the key after which the page starts"),
               ("limit" = Option<u32>, Query, description = "1-1000, default 100")),
        responses((status = 200, description = "done", body = DeliveryPage), (status = 400, description = "refused: the reason", body = ErrorBody)))]
    pub fn list() {}

    /// One delivery.
    #[utoipa::path(get, path = "/admin/deliveries/{key}", tag = "deliveries", operation_id = "get_delivery",
        params(("key" = String, Path, description = "the delivery's key (tally-SEQ-N)")),
        responses((status = 200, description = "done", body = OneDelivery), (status = 400, description = "not a key", body = ErrorBody),
                  (status = 404, description = "no such delivery", body = ErrorBody)))]
    pub fn get() {}

    /// Sends a delivery again: due now, whatever its status, with the same idempotency key.
    #[utoipa::path(post, path = "/admin/deliveries/{key}/redeliver", tag = "deliveries", operation_id = "redeliver",
        params(("key" = String, Path, description = "the delivery's key (tally-SEQ-N)")),
        responses((status = 200, description = "due now", body = OneDelivery), (status = 400, description = "not a key", body = ErrorBody),
                  (status = 404, description = "no such delivery", body = ErrorBody)))]
    pub fn redeliver() {}
}

pub mod payouts {
    #[allow(unused_imports)]
    use super::*;
    use crate::payouts::{PayoutBody, VoidBody};

    /// Balances per affiliate and currency.
    #[utoipa::path(get, path = "/admin/balances", tag = "payouts",
        params(("affiliate" = Option<String>, Query, description = "only this affiliate's")),
        responses((status = 200, description = "done", body = Balances), (status = 400, description = "refused: the reason", body = ErrorBody)))]
    pub fn balances() {}

    /// Payout runs, in order.
    #[utoipa::path(get, path = "/admin/payouts", tag = "payouts",
        responses((status = 200, description = "done", body = PayoutRuns)))]
    pub fn list() {}

    /// A payout run: approved, unpaid entries up to a date, paid per affiliate and currency whose balance reaches its minimum.
    #[utoipa::path(post, path = "/admin/payouts", tag = "payouts", request_body = PayoutBody,
        params(("X-Tally-Actor" = Option<String>, Header, description = "who decides")),
        responses((status = 200, description = "applied", body = DecisionApplied), (status = 202, description = "logged, not yet applied", body = DecisionLogged),
                  (status = 400, description = "refused: the reason", body = ErrorBody), (status = 409, description = "it cannot apply (the payout ID was used)", body = DecisionRefused)))]
    pub fn run() {}

    /// One payout run, with what it paid each affiliate.
    #[utoipa::path(get, path = "/admin/payouts/{id}", tag = "payouts",
        params(("id" = String, Path, description = "the payout ID")),
        responses((status = 200, description = "done", body = OnePayout), (status = 404, description = "no such payout", body = ErrorBody)))]
    pub fn get() {}

    /// Voids a payout run: its entries are unpaid again.
    #[utoipa::path(post, path = "/admin/payouts/{id}/void", tag = "payouts", request_body = VoidBody,
        params(("id" = String, Path, description = "the payout ID"), ("X-Tally-Actor" = Option<String>, Header, description = "who decides")),
        responses((status = 200, description = "applied", body = DecisionApplied), (status = 202, description = "logged, not yet applied", body = DecisionLogged),
                  (status = 400, description = "refused: the reason", body = ErrorBody), (status = 404, description = "no such payout", body = ErrorBody),
                  (status = 409, description = "it cannot apply (voided already)", body = DecisionRefused)))]
    pub fn void() {}

    /// An affiliate's statement of a payout run.
    #[utoipa::path(get, path = "/admin/payouts/{id}/statements/{affiliate}", tag = "payouts",
        params(("id" = String, Path, description = "the payout ID"), ("affiliate" = String, Path, description = "the affiliate"),
               ("format" = Option<String>, Query, description = "json (default) or csv")),
        responses((status = 200, description = "done", body = OneStatement), (status = 400, description = "refused: the reason", body = ErrorBody),
                  (status = 404, description = "no such payout", body = ErrorBody)))]
    pub fn statement() {}
}

pub mod ledger {
    #[allow(unused_imports)]
    use super::*;
    use crate::decisions::{AdjustBody, ApproveBody, BonusBody, RejectBody};

    /// A page of ledger entries, in ID order.
    #[utoipa::path(get, path = "/admin/commissions", tag = "ledger",
        params(
            ("affiliate" = Option<String>, Query, description = "only this affiliate's"),
            ("offer" = Option<String>, Query, description = "only this offer's"),
            ("status" = Option<String>, Query, description = "pending, approved, rejected, ..."),
            ("kind" = Option<String>, Query, description = "commission, bonus, clawback, reversal, confirmation, decision"),
            ("after" = Option<String>, Query, description = "the entry ID after which the page starts"),
            ("limit" = Option<u32>, Query, description = "1-10000, default 1000"),
        ),
        responses((status = 200, description = "done", body = LedgerPage), (status = 400, description = "refused: the reason (and every problem)", body = ErrorBody)))]
    pub fn list_commissions() {}

    /// One entry and what refers to it.
    #[utoipa::path(get, path = "/admin/commissions/{id}", tag = "ledger",
        params(("id" = String, Path, description = "the entry ID (1234 or 1234.1)")),
        responses((status = 200, description = "done", body = LedgerEntry), (status = 404, description = "no such entry", body = ErrorBody)))]
    pub fn get_commission() {}

    /// Approves a pending commission now (in its hold, or awaiting the merchant).
    #[utoipa::path(post, path = "/admin/commissions/{id}/approve", tag = "ledger", request_body = ApproveBody,
        params(("id" = String, Path, description = "the entry ID"), ("X-Tally-Actor" = Option<String>, Header, description = "who decides")),
        responses((status = 200, description = "applied", body = DecisionApplied), (status = 202, description = "logged, not yet applied", body = DecisionLogged),
                  (status = 404, description = "no such entry", body = ErrorBody), (status = 409, description = "it cannot apply", body = DecisionRefused)))]
    pub fn approve() {}

    /// Rejects a pending commission, or takes back an approved one (a clawback).
    #[utoipa::path(post, path = "/admin/commissions/{id}/reject", tag = "ledger", request_body = RejectBody,
        params(("id" = String, Path, description = "the entry ID"), ("X-Tally-Actor" = Option<String>, Header, description = "who decides")),
        responses((status = 200, description = "applied", body = DecisionApplied), (status = 202, description = "logged, not yet applied", body = DecisionLogged),
                  (status = 400, description = "refused: the reason", body = ErrorBody), (status = 404, description = "no such entry", body = ErrorBody),
                  (status = 409, description = "it cannot apply", body = DecisionRefused)))]
    pub fn reject() {}

    /// Sets a pending or approved commission's amount (a partial refund, a correction).
    #[utoipa::path(post, path = "/admin/commissions/{id}/adjust", tag = "ledger", request_body = AdjustBody,
        params(("id" = String, Path, description = "the entry ID"), ("X-Tally-Actor" = Option<String>, Header, description = "who decides")),
        responses((status = 200, description = "applied", body = DecisionApplied), (status = 202, description = "logged, not yet applied", body = DecisionLogged),
                  (status = 400, description = "refused: the reason", body = ErrorBody), (status = 404, description = "no such entry", body = ErrorBody),
                  (status = 409, description = "it cannot apply", body = DecisionRefused)))]
    pub fn adjust() {}

    /// A manual bonus to an affiliate, approved at once.
    #[utoipa::path(post, path = "/admin/bonuses", tag = "ledger", request_body = BonusBody,
        params(("X-Tally-Actor" = Option<String>, Header, description = "who decides")),
        responses((status = 200, description = "applied", body = DecisionApplied), (status = 202, description = "logged, not yet applied", body = DecisionLogged),
                  (status = 400, description = "refused: the reason", body = ErrorBody)))]
    pub fn bonus() {}
}

/// The operations of one kind of entity, as stub functions carrying their descriptions.
macro_rules! entity_paths {
    ($module:ident, $plural:literal, $key:literal, $spec:ty, $list:ty, $one:ty, $change:ty $(, $fname:literal, $fdesc:literal)?) => {
        pub mod $module {
            #[allow(unused_imports)]
            use super::*;

            /// A page of them, in key order.
            #[utoipa::path(get, operation_id = concat!("list_", $plural), path = concat!("/admin/", $plural), tag = $plural,
                params(
                    ("after" = Option<String>, Query, description = "the key after which the page starts (`next` of the page before)"),
                    ("limit" = Option<u32>, Query, description = "1-10000, default 1000"),
                    ("active" = Option<bool>, Query, description = "only active (or inactive) ones"),
                    $(($fname = Option<String>, Query, description = $fdesc),)?
                ),
                responses((status = 200, description = "done", body = $list), (status = 400, description = "refused: the reason (and every problem)", body = ErrorBody)))]
            pub fn list() {}

            /// Creates one; a key already in the program (file or API) is a conflict.
            #[utoipa::path(post, operation_id = concat!("create_", $plural), path = concat!("/admin/", $plural), tag = $plural, request_body = $spec,
                params(("X-Tally-Actor" = Option<String>, Header, description = "who acts, as the program edit records it")),
                responses((status = 201, description = "created", body = $change), (status = 400, description = "refused: the reason (and every problem)", body = ErrorBody), (status = 409, description = "the key exists", body = ErrorBody)))]
            pub fn create() {}

            /// One, from the program file or the API.
            #[utoipa::path(get, operation_id = concat!("get_", $plural), path = concat!("/admin/", $plural, "/{", $key, "}"), tag = $plural,
                params(($key = String, Path, description = "its key")),
                responses((status = 200, description = "done", body = $one), (status = 404, description = "no such entity", body = ErrorBody)))]
            pub fn get() {}

            /// Creates (`201`) or replaces (`200`) it with the body, the whole entity.
            #[utoipa::path(put, operation_id = concat!("put_", $plural), path = concat!("/admin/", $plural, "/{", $key, "}"), tag = $plural, request_body = $spec,
                params(($key = String, Path, description = "its key"),
                       ("X-Tally-Actor" = Option<String>, Header, description = "who acts")),
                responses((status = 200, description = "done", body = $change), (status = 201, description = "created", body = $change), (status = 400, description = "refused: the reason (and every problem)", body = ErrorBody)))]
            pub fn put() {}

            /// Changes the fields given; the others stay.
            #[utoipa::path(patch, operation_id = concat!("patch_", $plural), path = concat!("/admin/", $plural, "/{", $key, "}"), tag = $plural,
                request_body(content = Object, description = "any of the entity's fields"),
                params(($key = String, Path, description = "its key"),
                       ("X-Tally-Actor" = Option<String>, Header, description = "who acts")),
                responses((status = 200, description = "done", body = $change), (status = 400, description = "refused: the reason (and every problem)", body = ErrorBody), (status = 404, description = "no such entity", body = ErrorBody)))]
            pub fn patch() {}
        }
    };
}

macro_rules! toggle_paths {
    ($module:ident, $plural:literal, $key:literal, $change:ty) => {
        pub mod $module {
            #[allow(unused_imports)]
            use super::*;

            /// Disables it: links stop redirecting, coupons stop crediting, an affiliate's
            /// links, coupons and conversions with them.
            #[utoipa::path(post, operation_id = concat!("disable_", $plural), path = concat!("/admin/", $plural, "/{", $key, "}/disable"), tag = $plural,
                params(($key = String, Path, description = "its key"),
                       ("X-Tally-Actor" = Option<String>, Header, description = "who acts")),
                responses((status = 200, description = "done", body = $change), (status = 404, description = "no such entity", body = ErrorBody)))]
            pub fn disable() {}

            /// Enables it again.
            #[utoipa::path(post, operation_id = concat!("enable_", $plural), path = concat!("/admin/", $plural, "/{", $key, "}/enable"), tag = $plural,
                params(($key = String, Path, description = "its key"),
                       ("X-Tally-Actor" = Option<String>, Header, description = "who acts")),
                responses((status = 200, description = "done", body = $change), (status = 404, description = "no such entity", body = ErrorBody)))]
            pub fn enable() {}
        }
    };
}

entity_paths!(
    affiliates,
    "affiliates",
    "id",
    AffiliateSpec,
    AffiliateList,
    AffiliateOne,
    AffiliateChange,
    "group",
    "only this group's affiliates"
);
entity_paths!(groups, "groups", "id", GroupSpec, GroupList, GroupOne, GroupChange);
entity_paths!(
    coupons,
    "coupons",
    "code",
    CouponSpec,
    CouponList,
    CouponOne,
    CouponChange,
    "affiliate",
    "only this affiliate's coupons"
);
entity_paths!(
    links,
    "links",
    "code",
    LinkSpec,
    LinkList,
    LinkOne,
    LinkChange,
    "affiliate",
    "only this affiliate's links"
);
toggle_paths!(affiliate_toggles, "affiliates", "id", AffiliateChange);
toggle_paths!(coupon_toggles, "coupons", "code", CouponChange);
toggle_paths!(link_toggles, "links", "code", LinkChange);

/// A new affiliate API token: shown here only.
#[derive(Debug, Serialize, ToSchema)]
pub struct NewToken {
    pub token: String,
    pub id: String,
    pub affiliate: AffiliateItem,
    pub program_digest: String,
    pub seq: u64,
    pub note: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenName {
    #[serde(default)]
    pub name: String,
}

pub mod tokens {
    #[allow(unused_imports)]
    use super::*;

    /// Makes an API token for the affiliate API (`/v1/affiliate/...` on the public listener),
    /// scoped to this affiliate. The token is in this answer only; the program keeps its hash.
    #[utoipa::path(post, path = "/admin/affiliates/{id}/tokens", tag = "affiliates", request_body = TokenName,
        params(("id" = String, Path, description = "the affiliate"), ("X-Tally-Actor" = Option<String>, Header, description = "who acts")),
        responses((status = 201, description = "created", body = NewToken), (status = 400, description = "refused: the reason", body = ErrorBody),
                  (status = 404, description = "no such affiliate", body = ErrorBody)))]
    pub fn create_token() {}

    /// Revokes a token at once.
    #[utoipa::path(delete, path = "/admin/affiliates/{id}/tokens/{token_id}", tag = "affiliates",
        params(("id" = String, Path, description = "the affiliate"), ("token_id" = String, Path, description = "the token's ID"),
               ("X-Tally-Actor" = Option<String>, Header, description = "who acts")),
        responses((status = 200, description = "revoked", body = AffiliateChange), (status = 404, description = "no such affiliate or token", body = ErrorBody)))]
    pub fn revoke_token() {}
}

pub mod other {
    #[allow(unused_imports)]
    use super::*;

    /// Imports entities, all of them or none, as one program edit; every bad row is named.
    /// `text/csv` with `type`; `application/x-ndjson` (one entity a line, with `"type"`);
    /// `application/json` (the program file's sections).
    #[utoipa::path(post, path = "/admin/import", tag = "import",
        params(
            ("type" = Option<String>, Query, description = "a CSV's rows: affiliates, groups, coupons or links"),
            ("dry_run" = Option<bool>, Query, description = "check only"),
            ("reassign" = Option<bool>, Query, description = "allow moving links and coupons to another affiliate"),
            ("X-Tally-Actor" = Option<String>, Header, description = "who acts"),
        ),
        request_body(content(
            (String = "text/csv"),
            (String = "application/x-ndjson"),
            (Edit = "application/json"),
        )),
        responses((status = 200, description = "done", body = ImportOutcome), (status = 400, description = "refused: the reason (and every problem)", body = ImportRefused), (status = 415, description = "unsupported content type", body = ErrorBody)))]
    pub fn import() {}

    /// The program in force.
    #[utoipa::path(get, path = "/admin/program", tag = "program", responses((status = 200, description = "done", body = ProgramInfo)))]
    pub fn program() {}

    /// Re-reads the program file (as SIGHUP does); the API's entities stay on top.
    #[utoipa::path(post, path = "/admin/reload", tag = "program",
        responses((status = 200, description = "done", body = Reloaded), (status = 400, description = "refused: the reason (and every problem)", body = ErrorBody)))]
    pub fn reload() {}

    /// Attribution stats per offer and per affiliate for an inclusive range of days.
    #[utoipa::path(get, path = "/admin/stats", tag = "stats",
        params(("from" = Option<String>, Query, description = "YYYY-MM-DD"), ("to" = Option<String>, Query, description = "YYYY-MM-DD")),
        responses((status = 200, description = "done", body = Stats), (status = 400, description = "refused: the reason (and every problem)", body = ErrorBody), (status = 503, description = "not available yet", body = ErrorBody)))]
    pub fn stats() {}

    /// The tracing filter in force.
    #[utoipa::path(get, path = "/admin/log-level", tag = "operations", responses((status = 200, description = "done", body = LogLevelBody)))]
    pub fn log_level() {}

    /// Changes the tracing filter.
    #[utoipa::path(put, path = "/admin/log-level", tag = "operations", request_body = LogLevelBody,
        responses((status = 200, description = "done", body = LogLevelBody), (status = 400, description = "refused: the reason (and every problem)", body = ErrorBody)))]
    pub fn set_log_level() {}

    /// Erases personal fields by click ID and/or stored IP.
    #[utoipa::path(post, path = "/admin/erase", tag = "privacy", request_body = EraseBody,
        responses((status = 200, description = "done", body = EraseReport), (status = 400, description = "refused: the reason (and every problem)", body = ErrorBody)))]
    pub fn erase() {}

    /// A retention pass now.
    #[utoipa::path(post, path = "/admin/retention", tag = "privacy", request_body = RetentionBody,
        responses((status = 200, description = "done", body = EraseReport), (status = 400, description = "refused: the reason (and every problem)", body = ErrorBody)))]
    pub fn retention() {}

    /// This description.
    #[utoipa::path(get, path = "/admin/openapi.json", tag = "operations",
        responses((status = 200, description = "an OpenAPI 3.1 document", content_type = "application/json")))]
    pub fn openapi() {}
}

#[derive(Debug)]
struct BearerToken;

/// The affiliate API's answers.
pub mod affiliate_api {
    #[allow(unused_imports)]
    use super::*;

    #[derive(Debug, Serialize, ToSchema)]
    pub struct Me {
        pub id: String,
        pub name: String,
        pub group: String,
        pub active: bool,
    }

    #[derive(Debug, Serialize, ToSchema)]
    pub struct MeBody {
        pub affiliate: Me,
    }

    #[derive(Debug, Serialize, ToSchema)]
    pub struct MyLink {
        pub code: String,
        pub offer: String,
        pub active: bool,
        pub enabled: bool,
        /// Where the link answers on this listener: `/c/{code}`.
        pub path: String,
    }

    #[derive(Debug, Serialize, ToSchema)]
    pub struct MyLinks {
        pub links: Vec<MyLink>,
    }

    #[derive(Debug, Serialize, ToSchema)]
    pub struct MyCoupon {
        pub code: String,
        pub offer: String,
        pub active: bool,
        pub enabled: bool,
    }

    #[derive(Debug, Serialize, ToSchema)]
    pub struct MyCoupons {
        pub coupons: Vec<MyCoupon>,
    }

    #[derive(Debug, Serialize, ToSchema)]
    pub struct MyEntry {
        #[schema(value_type = Object)]
        pub entry: serde_json::Value,
    }

    #[derive(Debug, Serialize, ToSchema)]
    pub struct MyStats {
        pub from: Option<String>,
        pub to: Option<String>,
        pub attributed_through_seq: u64,
        #[schema(value_type = Vec<Object>)]
        pub rows: Vec<serde_json::Value>,
    }

    /// The token's affiliate.
    #[utoipa::path(get, path = "/v1/affiliate", tag = "affiliate",
        responses((status = 200, description = "done", body = MeBody), (status = 401, description = "no, a wrong or a revoked token", body = ErrorBody),
                  (status = 403, description = "the affiliate is disabled", body = ErrorBody), (status = 429, description = "too many requests", body = ErrorBody)))]
    pub fn me() {}

    /// Its links.
    #[utoipa::path(get, path = "/v1/affiliate/links", tag = "affiliate",
        responses((status = 200, description = "done", body = MyLinks), (status = 401, description = "no, a wrong or a revoked token", body = ErrorBody)))]
    pub fn links() {}

    /// Its coupons.
    #[utoipa::path(get, path = "/v1/affiliate/coupons", tag = "affiliate",
        responses((status = 200, description = "done", body = MyCoupons), (status = 401, description = "no, a wrong or a revoked token", body = ErrorBody)))]
    pub fn coupons() {}

    /// A page of its ledger entries, in ID order.
    #[utoipa::path(get, path = "/v1/affiliate/commissions", tag = "affiliate",
        params(("status" = Option<String>, Query, description = "pending, approved, ..."), ("kind" = Option<String>, Query, description = "commission, bonus, ..."),
               ("after" = Option<String>, Query, description = "the entry ID after which the page starts"), ("limit" = Option<u32>, Query, description = "1-1000, default 100")),
        responses((status = 200, description = "done", body = LedgerPage), (status = 400, description = "refused: the reason", body = ErrorBody),
                  (status = 401, description = "no, a wrong or a revoked token", body = ErrorBody)))]
    pub fn commissions() {}

    /// One of its entries; another affiliate's is answered as missing.
    #[utoipa::path(get, path = "/v1/affiliate/commissions/{id}", tag = "affiliate",
        params(("id" = String, Path, description = "the entry ID")),
        responses((status = 200, description = "done", body = MyEntry), (status = 404, description = "no such entry of this affiliate", body = ErrorBody)))]
    pub fn commission() {}

    /// Its stats rows for an inclusive range of days.
    #[utoipa::path(get, path = "/v1/affiliate/stats", tag = "affiliate",
        params(("from" = Option<String>, Query, description = "YYYY-MM-DD"), ("to" = Option<String>, Query, description = "YYYY-MM-DD")),
        responses((status = 200, description = "done", body = MyStats), (status = 400, description = "refused: the reason", body = ErrorBody)))]
    pub fn stats() {}

    /// Its balances per currency.
    #[utoipa::path(get, path = "/v1/affiliate/balances", tag = "affiliate",
        responses((status = 200, description = "done", body = Balances), (status = 401, description = "no, a wrong or a revoked token", body = ErrorBody)))]
    pub fn balances() {}

    /// The payout runs that paid it, with its lines.
    #[utoipa::path(get, path = "/v1/affiliate/payouts", tag = "affiliate",
        responses((status = 200, description = "done", body = PayoutRuns), (status = 401, description = "no, a wrong or a revoked token", body = ErrorBody)))]
    pub fn payouts() {}

    /// Its statement of a payout run that paid it.
    #[utoipa::path(get, path = "/v1/affiliate/payouts/{id}", tag = "affiliate",
        params(("id" = String, Path, description = "the payout ID"), ("format" = Option<String>, Query, description = "json (default) or csv")),
        responses((status = 200, description = "done", body = OneStatement), (status = 400, description = "refused: the reason", body = ErrorBody),
                  (status = 404, description = "no payout that paid this affiliate", body = ErrorBody)))]
    pub fn statement() {}

    /// This description (no token needed).
    #[utoipa::path(get, path = "/v1/affiliate/openapi.json", tag = "affiliate", security(()),
        responses((status = 200, description = "an OpenAPI 3.1 document", content_type = "application/json")))]
    pub fn openapi() {}
}

#[derive(Debug)]
struct AffiliateToken;

impl Modify for AffiliateToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme("affiliate_token", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
        }
    }
}

#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "Tally affiliate API",
        description = "Served on the public listener. Every request needs Authorization: Bearer <an affiliate token> and answers about that affiliate only."
    ),
    paths(
        affiliate_api::me, affiliate_api::links, affiliate_api::coupons, affiliate_api::commissions,
        affiliate_api::commission, affiliate_api::stats, affiliate_api::balances, affiliate_api::payouts,
        affiliate_api::statement, affiliate_api::openapi,
    ),
    components(schemas(ErrorBody)),
    modifiers(&AffiliateToken),
    security(("affiliate_token" = [])),
)]
pub struct AffiliateApi;

/// The affiliate API's description as JSON.
pub fn affiliate_document() -> String {
    let mut doc = AffiliateApi::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc.to_pretty_json().unwrap_or_default()
}

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme("admin_token", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
        }
    }
}

#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "Tally admin API",
        description = "Served on the admin listener (admin.listen). Every request needs Authorization: Bearer <admin.token>."
    ),
    paths(
        affiliates::list, affiliates::create, affiliates::get, affiliates::put, affiliates::patch,
        affiliate_toggles::disable, affiliate_toggles::enable,
        groups::list, groups::create, groups::get, groups::put, groups::patch,
        coupons::list, coupons::create, coupons::get, coupons::put, coupons::patch,
        coupon_toggles::disable, coupon_toggles::enable,
        links::list, links::create, links::get, links::put, links::patch,
        link_toggles::disable, link_toggles::enable,
        other::import, other::program, other::reload, other::stats, other::log_level, other::set_log_level,
        other::erase, other::retention, other::openapi,
        tokens::create_token, tokens::revoke_token,
        ledger::list_commissions, ledger::get_commission, ledger::approve, ledger::reject, ledger::adjust, ledger::bonus,
        payouts::balances, payouts::list, payouts::run, payouts::get, payouts::void, payouts::statement,
        deliveries::list, deliveries::get, deliveries::redeliver,
    ),
    components(schemas(AffiliateSpec, GroupSpec, CouponSpec, LinkSpec, TermsSpec, PayoutSpec, TierSpec, TokenSpec, Edit)),
    modifiers(&BearerToken),
    security(("admin_token" = [])),
)]
pub struct AdminApi;

/// The description as JSON.
pub fn document() -> String {
    let mut doc = AdminApi::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    let Ok(mut v) = serde_json::to_value(&doc) else { return String::new() };
    inline_flattened(&mut v);
    serde_json::to_string_pretty(&v).unwrap_or_default()
}

/// An entity as answered is its spec plus fields of the API's (`managed_by_api`); utoipa
/// writes that as `allOf` of the spec and the extra fields, but a spec refuses unknown fields
/// (`additionalProperties: false`, right for a request body), which makes that `allOf` match
/// nothing. Each such schema becomes one object with the properties of both.
fn inline_flattened(doc: &mut serde_json::Value) {
    let Some(schemas) = doc.pointer_mut("/components/schemas").and_then(|s| s.as_object_mut()) else { return };
    let snapshot = schemas.clone();
    for schema in schemas.values_mut() {
        let Some([first, extra]) = schema.get("allOf").and_then(|a| a.as_array()).map(Vec::as_slice) else { continue };
        let Some(spec) =
            first["$ref"].as_str().and_then(|r| snapshot.get(r.trim_start_matches("#/components/schemas/")))
        else {
            continue;
        };
        let mut properties = spec["properties"].as_object().cloned().unwrap_or_default();
        properties.extend(extra["properties"].as_object().cloned().unwrap_or_default());
        let mut required: Vec<serde_json::Value> = spec["required"].as_array().cloned().unwrap_or_default();
        required.extend(extra["required"].as_array().cloned().unwrap_or_default());
        let mut merged = serde_json::json!({ "type": "object", "properties": properties, "required": required });
        if let Some(d) = spec.get("description") {
            merged["description"] = d.clone();
        }
        *schema = merged;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    #[test]
    fn the_description_names_every_operation_with_its_schemas() {
        let doc: serde_json::Value = serde_json::from_str(&super::document()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        for (path, methods) in [
            ("/admin/affiliates", &["get", "post"][..]),
            ("/admin/affiliates/{id}", &["get", "put", "patch"]),
            ("/admin/links/{code}/disable", &["post"]),
            ("/admin/import", &["post"]),
            ("/admin/openapi.json", &["get"]),
        ] {
            for m in methods {
                assert!(paths[path][*m].is_object(), "{m} {path} in {:?}", paths.keys().collect::<Vec<_>>());
            }
        }
        assert!(paths.get("/admin/groups/{id}/disable").is_none(), "groups cannot be disabled");
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for s in ["AffiliateSpec", "TermsSpec", "AffiliateList", "ImportRefused", "Edit"] {
            assert!(schemas.contains_key(s), "{s}");
        }
        assert_eq!(doc["components"]["securitySchemes"]["admin_token"]["scheme"], "bearer");
    }
}
