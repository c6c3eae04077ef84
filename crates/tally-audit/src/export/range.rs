//! The half-open range `from <= x < to` an export selects, so consecutive exports (`to X`,
//! then `from X`) tile without overlap or gap (docs/decisions/0030-export-ranges-half-open.md).
//!
//! A sequence bound compares with the event's sequence (for commissions, the sequence of the
//! conversion that made the entry); a time bound with its event time (`ts_ms`). A time bound
//! scans the whole log: event times follow the edges' clocks and are not ordered by sequence.

use crate::Bound;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Range {
    from: Option<Bound>,
    to: Option<Bound>,
}

impl Range {
    /// Everything.
    pub const ALL: Range = Range { from: None, to: None };

    /// `None` when the range is empty for certain: `from` is not before `to` (bounds of one
    /// kind; a sequence and a time cannot be compared until the events are read).
    pub fn new(from: Option<Bound>, to: Option<Bound>) -> Option<Range> {
        match (from, to) {
            (Some(Bound::Seq(a)), Some(Bound::Seq(b))) | (Some(Bound::Time(a)), Some(Bound::Time(b))) if a >= b => None,
            _ => Some(Range { from, to }),
        }
    }

    /// The first sequence number that can be in the range.
    pub fn first_seq(&self) -> u64 {
        match self.from {
            Some(Bound::Seq(s)) => s,
            _ => 1,
        }
    }

    /// Whether nothing at or after `seq` can be in the range, so a scan in sequence order can
    /// stop.
    pub fn ended(&self, seq: u64) -> bool {
        matches!(self.to, Some(Bound::Seq(to)) if seq >= to)
    }

    /// Whether the event (or entry) with sequence `seq` and event time `ts_ms` is in the range.
    pub fn contains(&self, seq: u64, ts_ms: u64) -> bool {
        let after_from = match self.from {
            None => true,
            Some(Bound::Seq(s)) => seq >= s,
            Some(Bound::Time(t)) => ts_ms >= t,
        };
        let before_to = match self.to {
            None => true,
            Some(Bound::Seq(s)) => seq < s,
            Some(Bound::Time(t)) => ts_ms < t,
        };
        after_from && before_to
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bounds_parse_sequences_dates_and_utc_times() {
        assert_eq!(Bound::parse("42"), Some(Bound::Seq(42)));
        assert_eq!(Bound::parse("1970-01-02"), Some(Bound::Time(86_400_000)));
        assert_eq!(Bound::parse("2026-11-23T14:05:09Z"), Some(Bound::Time(1_795_442_709_000)));
        assert_eq!(Bound::parse("2026-11-23T14:05:09.5Z"), Some(Bound::Time(1_795_442_709_500)));
        for bad in [
            "",
            "-1",
            "x",
            "2026-13-01",
            "2026-11-23T14:05:09",
            "2026-11-23T14:05:09+01:00",
            "2026-11-23T24:00:00Z",
            "2026-11-23T1:05:09Z",
            "2026-11-23T14:05:09.1234Z",
            "99999999999999999999999",
        ] {
            assert_eq!(Bound::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn ranges_are_half_open_and_empty_ones_are_refused() {
        let r = Range::new(Some(Bound::Seq(10)), Some(Bound::Seq(20))).unwrap();
        assert!(r.contains(10, 0) && r.contains(19, 0) && !r.contains(20, 0) && !r.contains(9, 0));
        assert!(r.ended(20) && !r.ended(19));
        assert_eq!(r.first_seq(), 10);
        let day = 86_400_000;
        let r = Range::new(Some(Bound::Time(day)), Some(Bound::Time(2 * day))).unwrap();
        assert!(r.contains(1, day) && !r.contains(1, 2 * day) && !r.contains(1, day - 1));
        assert!(!r.ended(u64::MAX) && r.first_seq() == 1);
        assert_eq!(Range::new(Some(Bound::Seq(5)), Some(Bound::Seq(5))), None);
        assert_eq!(Range::new(Some(Bound::Time(day)), Some(Bound::Time(1))), None);
        // Kinds that cannot be compared yet: the rows decide.
        assert!(Range::new(Some(Bound::Seq(5)), Some(Bound::Time(1))).is_some());
        assert!(Range::ALL.contains(1, 0) && !Range::ALL.ended(u64::MAX));
    }
}
