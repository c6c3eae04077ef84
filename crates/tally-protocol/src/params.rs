//! Conversion parameters from pixels and postbacks, in every dialect networks already send.
//!
//! Each of our fields has a canonical name and aliases (design brief §4). The canonical name
//! wins over an alias; among aliases, the one listed first wins. Unknown parameters are
//! ignored: networks append their own.

use tally_model::{ClickId, ConversionStatus, Currency};

/// A field of a conversion report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    ClickId,
    Coupon,
    Offer,
    Goal,
    TxId,
    Amount,
    Currency,
    Status,
    Sub(u8),
    Token,
    Customer,
}

impl Field {
    /// The canonical parameter name, used in error messages.
    pub fn name(self) -> &'static str {
        match self {
            Field::ClickId => "cid",
            Field::Coupon => "coupon",
            Field::Offer => "offer",
            Field::Goal => "goal",
            Field::TxId => "txid",
            Field::Amount => "amount",
            Field::Currency => "currency",
            Field::Status => "status",
            Field::Sub(1) => "sub1",
            Field::Sub(2) => "sub2",
            Field::Sub(3) => "sub3",
            Field::Sub(4) => "sub4",
            Field::Sub(_) => "sub5",
            Field::Token => "token",
            Field::Customer => "customer",
        }
    }

    fn slot(self) -> usize {
        match self {
            Field::ClickId => 0,
            Field::Coupon => 1,
            Field::Offer => 2,
            Field::Goal => 3,
            Field::TxId => 4,
            Field::Amount => 5,
            Field::Currency => 6,
            Field::Status => 7,
            Field::Token => 8,
            Field::Sub(n) => 8 + usize::from(n.clamp(1, 5)),
            Field::Customer => 14,
        }
    }
}

const SLOTS: usize = 15;

/// `(parameter name, field, rank)`; rank 0 is canonical, higher ranks lose to lower ones.
const NAMES: &[(&str, Field, u8)] = &[
    ("cid", Field::ClickId, 0),
    ("click_id", Field::ClickId, 1),
    ("clickid", Field::ClickId, 2),
    ("transaction_id", Field::ClickId, 3), // Everflow and TUNE call the click ID this
    ("subid", Field::ClickId, 4),          // Keitaro, Prosper202
    ("cnv_id", Field::ClickId, 5),         // Binom
    ("coupon", Field::Coupon, 0),
    ("coupon_code", Field::Coupon, 1),
    ("offer", Field::Offer, 0),
    ("offer_id", Field::Offer, 1),
    ("goal", Field::Goal, 0),
    ("event", Field::Goal, 1),
    ("et", Field::Goal, 2), // Voluum
    ("goal_id", Field::Goal, 3),
    ("event_id", Field::Goal, 4),
    ("txid", Field::TxId, 0),
    ("order_id", Field::TxId, 1),
    ("adv_sub", Field::TxId, 2),     // TUNE
    ("tid", Field::TxId, 3),         // Keitaro
    ("external_id", Field::TxId, 4), // Tapfiliate
    ("amount", Field::Amount, 0),
    ("sale_amount", Field::Amount, 1),
    ("revenue", Field::Amount, 2),
    ("payout", Field::Amount, 3), // Voluum/Binom: the sender's "payout" is our revenue
    ("currency", Field::Currency, 0),
    ("status", Field::Status, 0),
    ("token", Field::Token, 0),
    ("customer", Field::Customer, 0),
    ("customer_id", Field::Customer, 1), // Tapfiliate, Rewardful, FirstPromoter
    ("sub1", Field::Sub(1), 0),
    ("sub2", Field::Sub(2), 0),
    ("sub3", Field::Sub(3), 0),
    ("sub4", Field::Sub(4), 0),
    ("sub5", Field::Sub(5), 0),
    ("aff_sub", Field::Sub(1), 1), // TUNE
    ("aff_sub1", Field::Sub(1), 1),
    ("aff_sub2", Field::Sub(2), 1),
    ("aff_sub3", Field::Sub(3), 1),
    ("aff_sub4", Field::Sub(4), 1),
    ("aff_sub5", Field::Sub(5), 1),
    ("s1", Field::Sub(1), 2),
    ("s2", Field::Sub(2), 2),
    ("s3", Field::Sub(3), 2),
    ("s4", Field::Sub(4), 2),
    ("s5", Field::Sub(5), 2),
];

pub fn lookup(name: &str) -> Option<(Field, u8)> {
    NAMES.iter().find(|(n, _, _)| n.eq_ignore_ascii_case(name)).map(|&(_, f, r)| (f, r))
}

/// Raw values by field after alias resolution.
#[derive(Debug, Default)]
pub struct RawParams {
    values: [Option<(u8, String)>; SLOTS],
}

impl RawParams {
    pub fn from_pairs<'a>(
        pairs: impl Iterator<Item = (std::borrow::Cow<'a, str>, std::borrow::Cow<'a, str>)>,
    ) -> RawParams {
        let mut p = RawParams::default();
        for (k, v) in pairs {
            if let Some((field, rank)) = lookup(&k) {
                let slot = &mut p.values[field.slot()];
                if slot.as_ref().is_none_or(|(r, _)| rank < *r) {
                    *slot = Some((rank, v.into_owned()));
                }
            }
        }
        p
    }

    pub fn from_query(query: &str) -> RawParams {
        RawParams::from_pairs(form_urlencoded::parse(query.as_bytes()))
    }

    /// A non-empty value for `field`.
    pub fn get(&self, field: Field) -> Option<&str> {
        self.values[field.slot()].as_ref().map(|(_, v)| v.as_str()).filter(|v| !v.is_empty())
    }

    pub fn set_if_absent(&mut self, field: Field, value: String) {
        let slot = &mut self.values[field.slot()];
        if slot.as_ref().is_none_or(|(_, v)| v.is_empty()) {
            *slot = Some((u8::MAX, value));
        }
    }
}

/// A bad field in a conversion report: answered 400 naming the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: &'static str,
    pub reason: String,
}

impl FieldError {
    pub fn missing(field: Field) -> FieldError {
        FieldError { field: field.name(), reason: format!("missing field: {}", field.name()) }
    }

    pub fn invalid(field: Field, why: impl std::fmt::Display) -> FieldError {
        FieldError { field: field.name(), reason: format!("invalid field: {}: {why}", field.name()) }
    }
}

pub const MAX_TXID: usize = 128;
pub const MAX_COUPON: usize = 64;
pub const MAX_SUB: usize = 256;
pub const MAX_CUSTOMER: usize = 128;

/// Validated conversion fields (before the program is consulted for offer and goal).
#[derive(Debug)]
pub struct ConversionParams {
    pub click_id: Option<ClickId>,
    pub coupon: String,
    /// `None` when the report names only the click (or coupon): the offer is then the
    /// click's (attribution resolves it) or the coupon's (the edge does).
    pub offer: Option<String>,
    pub goal: Option<String>,
    pub txid: String,
    pub amount: Option<String>,
    pub currency: Option<Currency>,
    pub status: ConversionStatus,
    pub subs: [String; 5],
    /// The merchant's ID of the customer who bought, empty if not given: what recurring
    /// and lifetime commissions follow.
    pub customer: String,
}

pub fn validate(p: &RawParams) -> Result<ConversionParams, FieldError> {
    let offer = p.get(Field::Offer);
    if offer.is_some_and(|o| !tally_model::program::is_valid_id(o)) {
        return Err(FieldError::invalid(Field::Offer, "not an offer id"));
    }
    let goal = p.get(Field::Goal);
    if let Some(g) = goal {
        if !tally_model::program::is_valid_id(g) {
            return Err(FieldError::invalid(Field::Goal, "not a goal id"));
        }
    }
    let click_id = p
        .get(Field::ClickId)
        .map(|s| ClickId::parse(s).map_err(|e| FieldError::invalid(Field::ClickId, e)))
        .transpose()?;
    let coupon = bounded(p, Field::Coupon, MAX_COUPON)?;
    let txid = bounded(p, Field::TxId, MAX_TXID)?;
    let customer = bounded(p, Field::Customer, MAX_CUSTOMER)?;
    let currency = p
        .get(Field::Currency)
        .map(|c| Currency::from_code(c).map_err(|e| FieldError::invalid(Field::Currency, e)))
        .transpose()?;
    let status = match p.get(Field::Status) {
        None => ConversionStatus::Approved,
        Some(s) => ConversionStatus::parse(s).ok_or_else(|| {
            FieldError::invalid(
                Field::Status,
                "expected approved, pending, rejected, refunded or chargeback (or a synonym such as sale, lead, \
                 declined)",
            )
        })?,
    };
    if status.is_reversal() || status == ConversionStatus::Pending {
        // Merchants refund, reject or confirm an order by its ID; they rarely still hold the
        // click. What a later report changes is found by (offer, goal, txid), so a report
        // that changes an earlier one, or that a later one must find, needs the txid.
        if txid.is_empty() {
            return Err(FieldError {
                field: Field::TxId.name(),
                reason: format!("missing field: txid (a {} report names the transaction it is about)", status.as_str()),
            });
        }
    } else if click_id.is_none() && coupon.is_empty() && (customer.is_empty() || offer.is_none()) {
        // A customer alone is enough where the offer is named: a repeat purchase pays the
        // customer's referrer under recurring terms, with no click or coupon.
        return Err(if offer.is_none() {
            FieldError::missing(Field::Offer)
        } else {
            FieldError::missing(Field::ClickId)
        });
    }
    if offer.is_none() && click_id.is_none() && coupon.is_empty() {
        // Nothing to take the offer from.
        return Err(FieldError::missing(Field::Offer));
    }
    let mut subs: [String; 5] = Default::default();
    for (i, sub) in subs.iter_mut().enumerate() {
        *sub = bounded(p, Field::Sub(i as u8 + 1), MAX_SUB)?;
    }
    Ok(ConversionParams {
        click_id,
        coupon,
        offer: offer.map(str::to_owned),
        goal: goal.map(str::to_owned),
        txid,
        amount: p.get(Field::Amount).map(str::to_owned),
        currency,
        status,
        subs,
        customer,
    })
}

fn bounded(p: &RawParams, field: Field, max: usize) -> Result<String, FieldError> {
    let v = p.get(field).unwrap_or("");
    if v.len() > max {
        return Err(FieldError::invalid(field, format!("longer than {max} bytes")));
    }
    if v.chars().any(char::is_control) {
        return Err(FieldError::invalid(field, "contains control characters"));
    }
    Ok(v.to_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn dialects_map_to_our_fields() {
        let cid = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
        for q in [
            format!("transaction_id={cid}&offer_id=shoes&adv_sub=T1&sale_amount=9.99"),
            format!("subid={cid}&offer=shoes&tid=T1&revenue=9.99"),
            format!("cnv_id={cid}&offer=shoes&txid=T1&payout=9.99&et=sale"),
            format!("clickid={cid}&offer=shoes&external_id=T1&amount=9.99&aff_sub2=x"),
        ] {
            let v = validate(&RawParams::from_query(&q)).unwrap();
            assert_eq!(v.click_id.unwrap().to_string(), cid, "{q}");
            assert_eq!(
                (v.offer.as_deref(), v.txid.as_str(), v.amount.as_deref()),
                (Some("shoes"), "T1", Some("9.99")),
                "{q}"
            );
        }
    }

    #[test]
    fn canonical_names_beat_aliases_whatever_the_order() {
        let p = RawParams::from_query("payout=1.00&amount=2.00&revenue=3.00");
        assert_eq!(p.get(Field::Amount), Some("2.00"));
        let p = RawParams::from_query("revenue=3.00&payout=1.00");
        assert_eq!(p.get(Field::Amount), Some("3.00"));
    }

    #[test]
    fn each_bad_field_is_named() {
        let cid = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
        let long = "x".repeat(200);
        for (q, field) in [
            ("txid=T1".to_string(), "offer"),
            ("status=refunded&txid=T1".to_string(), "offer"),
            (format!("cid={cid}&offer=bad%20id"), "offer"),
            (format!("cid={cid}&status=pending"), "txid"),
            (format!("cid={cid}&status=declined"), "txid"),
            (format!("cid={cid}&offer=o&goal=a/b"), "goal"),
            ("offer=o".to_string(), "cid"),
            ("offer=o&cid=nope".to_string(), "cid"),
            (format!("cid={cid}&offer=o&currency=XYZ"), "currency"),
            (format!("cid={cid}&offer=o&status=maybe"), "status"),
            (format!("cid={cid}&offer=o&status=1"), "status"),
            (format!("cid={cid}&offer=o&txid={long}"), "txid"),
            (format!("cid={cid}&offer=o&sub3=a%0Db"), "sub3"),
            (format!("cid={cid}&offer=o&customer={}", "c".repeat(129)), "customer"),
            (format!("cid={cid}&offer=o&customer_id=a%0Ab"), "customer"),
            ("customer=c1".to_string(), "offer"),
        ] {
            let e = validate(&RawParams::from_query(&q)).unwrap_err();
            assert_eq!(e.field, field, "{q}: {e:?}");
            assert!(e.reason.contains(field), "{e:?}");
        }
    }

    #[test]
    fn a_reversal_needs_its_txid_not_its_click() {
        let v = validate(&RawParams::from_query("offer=o&txid=T1&status=refunded")).unwrap();
        assert_eq!((v.click_id, v.status), (None, ConversionStatus::Refunded));
        let e = validate(&RawParams::from_query("offer=o&status=chargeback")).unwrap_err();
        assert_eq!(e.field, "txid");
    }

    #[test]
    fn the_click_alone_is_enough() {
        let cid = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
        let v = validate(&RawParams::from_query(&format!("transaction_id={cid}&amount=12,34&event=sale"))).unwrap();
        assert_eq!((v.offer, v.goal.as_deref(), v.amount.as_deref()), (None, Some("sale"), Some("12,34")));
        let v = validate(&RawParams::from_query(&format!("cid={cid}&txid=T1&status=Lead"))).unwrap();
        assert_eq!((v.offer, v.status), (None, ConversionStatus::Pending));
        let v = validate(&RawParams::from_query(&format!("cid={cid}&txid=T1&status=refund"))).unwrap();
        assert_eq!((v.offer, v.status), (None, ConversionStatus::Refunded));
    }

    #[test]
    fn a_customer_with_an_offer_is_enough() {
        let v = validate(&RawParams::from_query("customer_id=C-7&offer=o&txid=T9&amount=5")).unwrap();
        assert_eq!((v.click_id, v.coupon.as_str(), v.customer.as_str()), (None, "", "C-7"));
        let v = validate(&RawParams::from_query("customer_id=C-7&customer=C-8&offer=o")).unwrap();
        assert_eq!(v.customer, "C-8", "the canonical name wins");
    }

    #[test]
    fn coupon_alone_is_enough() {
        let v = validate(&RawParams::from_query("coupon=SPRING10&offer=o")).unwrap();
        assert!(v.click_id.is_none());
        assert_eq!(v.coupon, "SPRING10");
    }
}
