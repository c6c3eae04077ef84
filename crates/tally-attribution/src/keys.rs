//! The state store's typed keys: every key of `{data_dir}/attribution` is built and read
//! here. Fixed-width parts are big-endian, so RocksDB's bytewise order is the order the state
//! iterates in: the ledger in log order, holds by due time, stats and visitor sets by day,
//! click runs by click ID (time first).
//!
//! | column family | key | layout |
//! |---|---|---|
//! | `ledger` | [`entry`] | entry's event seq (u64 BE) ‖ sub-entry number (u8) |
//! | `dedup` | a transaction key (the engine's) | variable; value: [`entry`] |
//! | `holds` | [`hold`] | due time in ms (u64 BE) ‖ [`entry`] |
//! | `stats` | [`day`] | UTC day number (u32 BE) |
//! | `unique` | [`visitors`] | UTC day number (u32 BE) ‖ commit position (u64 BE) |
//! | `clicks` | [`click_run`] | the run's first click ID (16 bytes, time first) |
//! | `counters` | [`cap`], [`month`], [`milestone`] | text parts separated by NUL |
//! | `meta` | [`META_CHECKPOINT`], [`META_PROGRAM`], [`META_FORMAT`]; [`META_MANAGED`] + kind + key; [`META_OUTBOX`] + seq + number | fixed names; one per managed entity; one per notification |

use tally_model::ClickId;

use crate::ledger::EntryId;

pub(crate) const META_CHECKPOINT: &[u8] = b"checkpoint";
pub(crate) const META_PROGRAM: &[u8] = b"program";
/// The program's managed entities, one key each: this prefix, the kind byte (`g`, `a`, `c`,
/// `l`) and the entity's key; the value its JSON. A program edit writes only what it put.
pub(crate) const META_MANAGED: &[u8] = b"managed/";

pub(crate) fn managed(kind: u8, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(META_MANAGED.len() + 1 + key.len());
    k.extend_from_slice(META_MANAGED);
    k.push(kind);
    k.extend_from_slice(key.as_bytes());
    k
}
pub(crate) const META_FORMAT: &[u8] = b"format";

/// The outbox: notifications to deliver (`tally_model::delivery`), in log order: this
/// prefix, the sequence number of the event that made them and their number within it.
/// Written in the commit of the entry's change; only ever added to.
pub(crate) const META_OUTBOX: &[u8] = b"outbox/";

pub(crate) fn outbox(seq: u64, n: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(META_OUTBOX.len() + 12);
    k.extend_from_slice(META_OUTBOX);
    k.extend_from_slice(&seq.to_be_bytes());
    k.extend_from_slice(&n.to_be_bytes());
    k
}

/// A ledger entry's key.
pub(crate) fn entry(id: EntryId) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[..8].copy_from_slice(&id.seq.to_be_bytes());
    k[8] = id.sub;
    k
}

pub(crate) fn parse_entry(k: &[u8]) -> Option<EntryId> {
    let k: &[u8; 9] = k.try_into().ok()?;
    let seq = u64::from_be_bytes(k[..8].try_into().ok()?);
    Some(EntryId { seq, sub: k[8] })
}

/// A hold's key: due at `at_ms`, on entry `id`.
pub(crate) fn hold(at_ms: u64, id: EntryId) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[..8].copy_from_slice(&at_ms.to_be_bytes());
    k[8..].copy_from_slice(&entry(id));
    k
}

pub(crate) fn parse_hold(k: &[u8]) -> Option<(u64, EntryId)> {
    let at = u64::from_be_bytes(k.get(..8)?.try_into().ok()?);
    Some((at, parse_entry(k.get(8..)?)?))
}

/// A day's key (stats rows; the prefix of its visitor sets).
pub(crate) fn day(day: u32) -> [u8; 4] {
    day.to_be_bytes()
}

pub(crate) fn parse_day(k: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(k.try_into().ok()?))
}

/// The visitor set that the commit at `position` added to `day`.
pub(crate) fn visitors(day_number: u32, position: u64) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&day(day_number));
    k[4..].copy_from_slice(&position.to_be_bytes());
    k
}

/// The last possible visitor-set key of `day`: the end of a range that drops whole days.
pub(crate) fn visitors_end(day_number: u32) -> [u8; 12] {
    let mut k = [0xffu8; 12];
    k[..4].copy_from_slice(&day(day_number));
    k
}

/// A click run's key: its first click ID.
pub(crate) fn click_run(first: &ClickId) -> [u8; 16] {
    *first.as_bytes()
}

pub(crate) fn parse_click_run(k: &[u8]) -> Option<ClickId> {
    Some(ClickId::from_bytes(k.try_into().ok()?))
}

/// A daily cap counter: credited conversions of `offer`/`goal` on `day`, for `affiliate`
/// (empty for the goal-wide cap).
pub(crate) fn cap(day: u32, offer: &str, goal: &str, affiliate: &str) -> Vec<u8> {
    format!("cap\0{day}\0{offer}\0{goal}\0{affiliate}").into_bytes()
}

/// An affiliate's monthly rank counter (tiers and milestones).
pub(crate) fn month(month: u32, offer: &str, goal: &str, affiliate: &str) -> Vec<u8> {
    format!("month\0{month}\0{offer}\0{goal}\0{affiliate}").into_bytes()
}

/// Set once a milestone bonus of `count` has been paid to `affiliate` in `month`.
pub(crate) fn milestone(month: u32, offer: &str, goal: &str, affiliate: &str, count: u32) -> Vec<u8> {
    format!("milestone\0{month}\0{offer}\0{goal}\0{affiliate}\0{count}").into_bytes()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn entry_id() -> impl Strategy<Value = EntryId> {
        (any::<u64>(), any::<u8>()).prop_map(|(seq, sub)| EntryId { seq, sub })
    }

    proptest! {
        #[test]
        fn entries_sort_in_log_order_and_round_trip(a in entry_id(), b in entry_id()) {
            prop_assert_eq!((a.seq, a.sub).cmp(&(b.seq, b.sub)), entry(a).cmp(&entry(b)));
            prop_assert_eq!(parse_entry(&entry(a)), Some(a));
        }

        #[test]
        fn holds_sort_by_due_time_then_entry_and_round_trip(at in any::<u64>(), a in entry_id(), bt in any::<u64>(), b in entry_id()) {
            prop_assert_eq!((at, a.seq, a.sub).cmp(&(bt, b.seq, b.sub)), hold(at, a).cmp(&hold(bt, b)));
            prop_assert_eq!(parse_hold(&hold(at, a)), Some((at, a)));
        }

        #[test]
        fn days_and_visitor_sets_sort_by_day_then_position(d in any::<u32>(), p in any::<u64>(), e in any::<u32>(), q in any::<u64>()) {
            prop_assert_eq!(d.cmp(&e), day(d).cmp(&day(e)));
            prop_assert_eq!(parse_day(&day(d)), Some(d));
            prop_assert_eq!((d, p).cmp(&(e, q)), visitors(d, p).cmp(&visitors(e, q)));
            prop_assert!(visitors(d, p).starts_with(&day(d)));
            prop_assert!(visitors(d, p) <= visitors_end(d));
        }

        #[test]
        fn click_runs_sort_by_click_time_and_round_trip(t in 0u64..(1 << 48), n in any::<u16>(), r in any::<u64>(), u in 0u64..(1 << 48)) {
            let (a, b) = (ClickId::new(t, n, r), ClickId::new(u, n, r));
            if t != u {
                prop_assert_eq!(t.cmp(&u), click_run(&a).cmp(&click_run(&b)));
            }
            prop_assert_eq!(parse_click_run(&click_run(&a)), Some(a));
        }
    }

    #[test]
    fn foreign_keys_do_not_parse() {
        assert_eq!(parse_entry(b"short"), None);
        assert_eq!(parse_entry(&[0u8; 10]), None);
        assert_eq!(parse_hold(&[0u8; 8]), None);
        assert_eq!(parse_day(&[0u8; 5]), None);
        assert_eq!(parse_click_run(&[0u8; 15]), None);
    }

    #[test]
    fn counter_keys_keep_their_parts_apart() {
        // The bytes are the stored format: they must not change.
        assert_eq!(cap(20_000, "shoes", "lead", ""), b"cap\x0020000\x00shoes\x00lead\x00".to_vec());
        assert_ne!(cap(1, "a", "b", ""), cap(1, "a", "b", "c"));
        assert_eq!(month(671, "o", "g", "aff1"), b"month\x00671\x00o\x00g\x00aff1".to_vec());
        assert_eq!(milestone(671, "o", "g", "a", 10), b"milestone\x00671\x00o\x00g\x00a\x0010".to_vec());
    }
}
