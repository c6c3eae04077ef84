//! The program's managed part: affiliates, groups, coupons and links as the admin API
//! creates, updates and disables them, one [`Edit`] at a time.
//!
//! The program in force is the program file (the *base*: advertisers, offers and goals, and
//! any affiliates, groups, coupons and links written there) with the [`Managed`] entities on
//! top: a managed entity replaces the file's entity with the same ID (or link or coupon code).
//! An [`Edit`] is what one API call or one bulk import changed; it is logged as a
//! `ProgramEdit` event and applied in log order, so replay rebuilds the same [`Managed`] and
//! the same program. Edits only put entities (create or replace); an entity is never deleted,
//! since ledger entries name it, but `active = false` disables it.
//!
//! The spec types here are also the program file's own tables (`[[affiliates]]`,
//! `[[groups]]`, `[[coupons]]`, `[[links]]`), and the admin API's JSON: one shape everywhere.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::shards::Shards;

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

/// An affiliate (publisher, ambassador, partner).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AffiliateSpec {
    pub id: String,
    #[serde(default)]
    pub name: String,
    /// The group whose terms apply where the affiliate has none of its own; empty: none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
    /// A disabled affiliate's links answer as unknown, its coupons credit nobody, and its
    /// conversions are rejected (`affiliate_disabled`).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub active: bool,
    /// The affiliate's own terms, before its group's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub terms: Vec<TermsSpec>,
    /// API tokens that read this affiliate's own data (links, stats, commissions) on the
    /// public listener: their hashes, never the tokens.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<TokenSpec>,
    /// Where to tell the affiliate about its commissions: a URL template with macros
    /// (`tally_model::delivery::POSTBACK_MACROS`), fetched with GET on each commission's
    /// creation and status change; empty: its group's, if any.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub postback_url: String,
}

/// An affiliate's API token, as the program keeps it: an ID to name it by, a label, and the
/// BLAKE3 hash (hex) of the token, which is shown once, when it is made, and kept nowhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TokenSpec {
    pub id: String,
    #[serde(default)]
    pub name: String,
    pub hash: String,
}

/// Affiliates sharing terms, so thousands of ambassadors need no per-affiliate override.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct GroupSpec {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub terms: Vec<TermsSpec>,
    /// The smallest balance a payout run pays the group's affiliates, per currency code
    /// (`{"USD": "50.00"}`), replacing the program's `payout_minimum`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub payout_minimum: BTreeMap<String, String>,
    /// The postback URL of the group's affiliates that have none of their own.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub postback_url: String,
}

/// Terms for one offer (and one goal of it, or all its goals): each key given replaces the
/// goal's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TermsSpec {
    pub offer: String,
    /// The goal these terms are for; empty: every goal of the offer.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub goal: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payout: Option<PayoutSpec>,
    /// Conversions credited per day to one affiliate (the goal's `affiliate_daily_cap`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_cap: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_days: Option<u32>,
}

/// A payout as written: `{ kind = "fixed", amount = "2.50" }`, `{ kind = "revshare", bps =
/// 800 }` or `{ kind = "tiered", tiers = [...] }`; amounts in the offer's currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PayoutSpec {
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bps: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tiers: Option<Vec<TierSpec>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TierSpec {
    pub from: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bps: Option<u32>,
}

/// A coupon code that credits an affiliate with no click.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CouponSpec {
    pub code: String,
    pub offer: String,
    pub affiliate: String,
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub active: bool,
}

/// A tracking link: `/c/{code}` credits `affiliate` on `offer`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct LinkSpec {
    pub code: String,
    pub offer: String,
    pub affiliate: String,
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub active: bool,
    /// Where to tell the affiliate about commissions credited through this link's clicks,
    /// as the affiliate's `postback_url` (same macros); empty: the affiliate's, else its
    /// group's.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub postback_url: String,
}

/// What one change puts: entities created or replaced, in the program file's section names.
/// Its JSON is what a `ProgramEdit` event records.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Edit {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<GroupSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub affiliates: Vec<AffiliateSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub coupons: Vec<CouponSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<LinkSpec>,
}

impl Edit {
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entities it puts.
    pub fn len(&self) -> usize {
        self.groups.len() + self.affiliates.len() + self.coupons.len() + self.links.len()
    }

    /// `"2 affiliates, 1 link"`: what it changes, for logs and `--explain`.
    pub fn summary(&self) -> String {
        let parts: Vec<String> = [
            (self.groups.len(), "group"),
            (self.affiliates.len(), "affiliate"),
            (self.coupons.len(), "coupon"),
            (self.links.len(), "link"),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}{}", if *n == 1 { "" } else { "s" }))
        .collect();
        if parts.is_empty() {
            "nothing".to_owned()
        } else {
            parts.join(", ")
        }
    }

    pub fn to_json(&self) -> String {
        // Serialising plain structs of strings and numbers cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Each entity it puts as (kind byte, key, JSON): `g` groups, `a` affiliates, `c` coupons
    /// (keyed by the code in upper case), `l` links; what a store keeps per entity, so that
    /// applying an edit writes only what it changed ([`Managed::put_keyed`] reads them back).
    pub fn keyed(&self) -> Vec<(u8, String, String)> {
        let mut out = Vec::with_capacity(self.len());
        out.extend(self.groups.iter().map(|g| (b'g', g.id.clone(), spec_json(g))));
        out.extend(self.affiliates.iter().map(|a| (b'a', a.id.clone(), spec_json(a))));
        out.extend(self.coupons.iter().map(|c| (b'c', c.code.to_ascii_uppercase(), spec_json(c))));
        out.extend(self.links.iter().map(|l| (b'l', l.code.clone(), spec_json(l))));
        out
    }

    pub fn from_json(text: &str) -> Result<Edit, String> {
        serde_json::from_str(text).map_err(|e| e.to_string())
    }
}

/// Every managed entity in force: the fold of every [`Edit`] in log order. Coupons are keyed
/// by their code in ASCII upper case (codes are matched ignoring case). The maps are
/// [`Shards`]: a copy is cheap and an edit copies only what it touches.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "ManagedForm", from = "ManagedForm")]
pub struct Managed {
    pub groups: Shards<GroupSpec>,
    pub affiliates: Shards<AffiliateSpec>,
    pub coupons: Shards<CouponSpec>,
    pub links: Shards<LinkSpec>,
    /// The sum (mod 2^256, four limbs) of every entity's hash: the digest, kept up to date
    /// entity by entity.
    sum: [u64; 4],
}

/// How [`Managed`] is written: each kind's entities in key order.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManagedForm {
    #[serde(default)]
    groups: BTreeMap<String, GroupSpec>,
    #[serde(default)]
    affiliates: BTreeMap<String, AffiliateSpec>,
    #[serde(default)]
    coupons: BTreeMap<String, CouponSpec>,
    #[serde(default)]
    links: BTreeMap<String, LinkSpec>,
}

impl From<Managed> for ManagedForm {
    fn from(m: Managed) -> ManagedForm {
        fn sorted<V: Clone>(s: &Shards<V>) -> BTreeMap<String, V> {
            s.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        }
        ManagedForm {
            groups: sorted(&m.groups),
            affiliates: sorted(&m.affiliates),
            coupons: sorted(&m.coupons),
            links: sorted(&m.links),
        }
    }
}

impl From<ManagedForm> for Managed {
    fn from(f: ManagedForm) -> Managed {
        let mut m = Managed::default();
        m.apply(&Edit {
            groups: f.groups.into_values().collect(),
            affiliates: f.affiliates.into_values().collect(),
            coupons: f.coupons.into_values().collect(),
            links: f.links.into_values().collect(),
        });
        m
    }
}

/// One entity's share of the digest: BLAKE3 of its kind, key and JSON, as four limbs.
fn entity_hash(kind: u8, key: &str, json: &str) -> [u64; 4] {
    let mut h = blake3::Hasher::new();
    h.update(&[kind, 0]);
    h.update(key.as_bytes());
    h.update(&[0]);
    h.update(json.as_bytes());
    let bytes = h.finalize();
    let mut limbs = [0u64; 4];
    for (i, limb) in limbs.iter_mut().enumerate() {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes.as_bytes()[i * 8..i * 8 + 8]);
        *limb = u64::from_le_bytes(b);
    }
    limbs
}

/// `a + b` (or `a - b`) mod 2^256, limbs little-endian.
fn add_limbs(a: &mut [u64; 4], b: &[u64; 4], subtract: bool) {
    let mut carry = false;
    for i in 0..4 {
        let (x, c1) = if subtract { a[i].overflowing_sub(b[i]) } else { a[i].overflowing_add(b[i]) };
        let (y, c2) = if subtract { x.overflowing_sub(u64::from(carry)) } else { x.overflowing_add(u64::from(carry)) };
        a[i] = y;
        carry = c1 || c2;
    }
}

impl Managed {
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty() && self.affiliates.is_empty() && self.coupons.is_empty() && self.links.is_empty()
    }

    /// Entities in all.
    pub fn len(&self) -> usize {
        self.groups.len() + self.affiliates.len() + self.coupons.len() + self.links.len()
    }

    /// Puts every entity of `edit`, later ones replacing earlier ones with the same key.
    pub fn apply(&mut self, edit: &Edit) {
        fn put<V: Clone + Serialize>(sum: &mut [u64; 4], map: &mut Shards<V>, kind: u8, key: String, v: &V) {
            if let Some(old) = map.get(&key) {
                add_limbs(sum, &entity_hash(kind, &key, &spec_json(old)), true);
            }
            add_limbs(sum, &entity_hash(kind, &key, &spec_json(v)), false);
            map.insert(key, v.clone());
        }
        for g in &edit.groups {
            put(&mut self.sum, &mut self.groups, b'g', g.id.clone(), g);
        }
        for a in &edit.affiliates {
            put(&mut self.sum, &mut self.affiliates, b'a', a.id.clone(), a);
        }
        for c in &edit.coupons {
            put(&mut self.sum, &mut self.coupons, b'c', c.code.to_ascii_uppercase(), c);
        }
        for l in &edit.links {
            put(&mut self.sum, &mut self.links, b'l', l.code.clone(), l);
        }
    }

    /// Puts one entity as [`Edit::keyed`] gave it.
    pub fn put_keyed(&mut self, kind: u8, json: &str) -> Result<(), String> {
        let mut edit = Edit::default();
        let e = |e: serde_json::Error| e.to_string();
        match kind {
            b'g' => edit.groups.push(serde_json::from_str(json).map_err(e)?),
            b'a' => edit.affiliates.push(serde_json::from_str(json).map_err(e)?),
            b'c' => edit.coupons.push(serde_json::from_str(json).map_err(e)?),
            b'l' => edit.links.push(serde_json::from_str(json).map_err(e)?),
            other => return Err(format!("unknown entity kind {other}")),
        }
        self.apply(&edit);
        Ok(())
    }

    /// The edit that turns `self` into `target` (entities new or different in `target`, in
    /// key order). Entities are never removed, so this is all it takes for a node to catch
    /// up with another's managed program.
    pub fn diff(&self, target: &Managed) -> Edit {
        fn changed<V: PartialEq + Clone>(from: &Shards<V>, to: &Shards<V>) -> Vec<V> {
            to.sorted().into_iter().filter(|(k, v)| from.get(k) != Some(*v)).map(|(_, v)| v.clone()).collect()
        }
        Edit {
            groups: changed(&self.groups, &target.groups),
            affiliates: changed(&self.affiliates, &target.affiliates),
            coupons: changed(&self.coupons, &target.coupons),
            links: changed(&self.links, &target.links),
        }
    }

    /// A content digest: the same entities give the same digest however they arrived (so
    /// nodes that applied the same edits twice agree), kept up to date by [`Managed::apply`]
    /// as a sum of per-entity BLAKE3 hashes, so an edit of one entity costs one hash.
    pub fn digest(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        h.update(b"tally-managed-v2\n");
        for limb in self.sum {
            h.update(&limb.to_le_bytes());
        }
        *h.finalize().as_bytes()
    }
}

/// A spec as JSON (serialising plain structs of strings and numbers cannot fail).
fn spec_json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn affiliate(id: &str, group: &str) -> AffiliateSpec {
        AffiliateSpec {
            id: id.into(),
            name: String::new(),
            group: group.into(),
            active: true,
            terms: vec![],
            tokens: vec![],
            postback_url: String::new(),
        }
    }

    #[test]
    fn edits_apply_in_order_and_diff_recovers_them() {
        let mut m = Managed::default();
        let first = Edit { affiliates: vec![affiliate("a", ""), affiliate("b", "")], ..Edit::default() };
        m.apply(&first);
        let mut later = m.clone();
        later.apply(&Edit { affiliates: vec![affiliate("a", "gold")], ..Edit::default() });
        assert_eq!(later.affiliates.get("a").unwrap().group, "gold");
        let d = m.diff(&later);
        assert_eq!(d.affiliates, vec![affiliate("a", "gold")]);
        let mut caught_up = m.clone();
        caught_up.apply(&d);
        assert_eq!(caught_up, later);
        assert_eq!(caught_up.digest(), later.digest());
        assert_ne!(m.digest(), later.digest());
    }

    #[test]
    fn coupons_are_keyed_ignoring_case() {
        let mut m = Managed::default();
        let c = |code: &str| CouponSpec { code: code.into(), offer: "o".into(), affiliate: "a".into(), active: true };
        m.apply(&Edit { coupons: vec![c("spring")], ..Edit::default() });
        m.apply(&Edit { coupons: vec![c("SPRING")], ..Edit::default() });
        assert_eq!(m.coupons.len(), 1);
        assert_eq!(m.coupons.get("SPRING").unwrap().code, "SPRING");
    }

    #[test]
    fn edits_round_trip_through_json_and_name_what_they_change() {
        let e = Edit {
            affiliates: vec![AffiliateSpec {
                terms: vec![TermsSpec {
                    offer: "shoes".into(),
                    goal: String::new(),
                    payout: Some(PayoutSpec {
                        kind: "fixed".into(),
                        amount: Some("2.50".into()),
                        bps: None,
                        tiers: None,
                    }),
                    daily_cap: None,
                    hold_days: Some(7),
                }],
                ..affiliate("a", "g")
            }],
            links: vec![LinkSpec {
                code: "l".into(),
                offer: "o".into(),
                affiliate: "a".into(),
                active: false,
                postback_url: "https://net.example/pb?cid={click_id}".into(),
            }],
            ..Edit::default()
        };
        let json = e.to_json();
        assert_eq!(Edit::from_json(&json).unwrap(), e);
        assert!(json.contains("\"active\":false"), "{json}");
        assert!(!json.contains("\"active\":true"), "defaults are left out: {json}");
        assert_eq!(e.summary(), "1 affiliate, 1 link");
        let mut m = Managed::default();
        for (kind, _, json) in e.keyed() {
            m.put_keyed(kind, &json).unwrap();
        }
        let mut direct = Managed::default();
        direct.apply(&e);
        assert_eq!(m, direct, "entities stored one by one read back as the edit");
        assert!(m.put_keyed(b'x', "{}").is_err());
        assert!(Edit::from_json(r#"{"affiliates":[{"id":"a","colour":"red"}]}"#).unwrap_err().contains("colour"));
    }
}
