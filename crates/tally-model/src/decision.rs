//! Operators' decisions on the ledger: approve a commission before its hold ends, reject it,
//! adjust its amount, or pay a manual bonus. Each is an `OperatorDecision` event naming who
//! made it, so replay reproduces it and `--explain` shows it; attribution judges it against
//! the ledger as it stands at that point of the log.

use serde::{Deserialize, Serialize};

/// Longest reason or note kept with a decision.
pub const MAX_REASON_LEN: usize = 500;

/// One decision. Entries are named as the ledger names them (`"1234"`, `"1234.1"`); amounts
/// are decimal strings in the currency of the entry (or the bonus's offer), never floats.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum Decision {
    /// A pending commission (in its hold, or awaiting the merchant) becomes approved now.
    Approve {
        entry: String,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        note: String,
    },
    /// A pending commission is rejected; an approved one is taken back by a clawback.
    Reject { entry: String, reason: String },
    /// A pending or approved commission's amount becomes `amount` (a partial refund, a
    /// correction).
    Adjust { entry: String, amount: String, reason: String },
    /// A manual bonus to an affiliate, in the offer's currency, approved at once.
    Bonus { affiliate: String, offer: String, amount: String, reason: String },
    /// A payout run: every approved entry not yet paid, made by an event up to `up_to`
    /// (`YYYY-MM-DD`, that whole UTC day, or an RFC 3339 UTC time, inclusive), of the chosen
    /// affiliates (all when `affiliates` and `group` are empty) is marked paid under the
    /// payout ID, per affiliate and currency whose balance reaches its minimum.
    Payout {
        payout: String,
        up_to: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        affiliates: Vec<String>,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        group: String,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        note: String,
    },
    /// Undoes a payout run (the bank returned it, it was made in error): its entries are
    /// unpaid again, for a later run.
    VoidPayout { payout: String, reason: String },
}

/// Longest payout ID.
pub const MAX_PAYOUT_ID: usize = 64;

/// The end (exclusive, ms) of the window `up_to` names: a day's end, or just after a time.
pub fn up_to_end_ms(up_to: &str) -> Option<u64> {
    let t = crate::time::parse_time(up_to)?;
    Some(if up_to.contains(['T', 't']) { t + 1 } else { t + crate::time::DAY_MS })
}

impl Decision {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_json(text: &str) -> Result<Decision, String> {
        serde_json::from_str(text).map_err(|e| e.to_string())
    }

    /// The entry it is about, if it is about one.
    pub fn entry(&self) -> Option<&str> {
        match self {
            Decision::Approve { entry, .. } | Decision::Reject { entry, .. } | Decision::Adjust { entry, .. } => {
                Some(entry)
            }
            Decision::Bonus { .. } | Decision::Payout { .. } | Decision::VoidPayout { .. } => None,
        }
    }

    pub fn action(&self) -> &'static str {
        match self {
            Decision::Approve { .. } => "approve",
            Decision::Reject { .. } => "reject",
            Decision::Adjust { .. } => "adjust",
            Decision::Bonus { .. } => "bonus",
            Decision::Payout { .. } => "payout",
            Decision::VoidPayout { .. } => "void_payout",
        }
    }

    /// What is wrong with it on its face (not against the ledger): a missing reason, one too
    /// long or with control characters.
    pub fn problem(&self) -> Option<String> {
        if let Decision::Payout { payout, .. } | Decision::VoidPayout { payout, .. } = self {
            if payout.is_empty()
                || payout.len() > MAX_PAYOUT_ID
                || !payout.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                return Some(format!(
                    "payout: \"{payout}\" is not a payout ID (1-{MAX_PAYOUT_ID} of A-Z a-z 0-9 - _ .)"
                ));
            }
        }
        if let Decision::Payout { up_to, .. } = self {
            if up_to_end_ms(up_to).is_none() {
                return Some(format!(
                    "up_to: \"{up_to}\" is not a date (YYYY-MM-DD) or UTC time (YYYY-MM-DDTHH:MM:SSZ)"
                ));
            }
        }
        let text = match self {
            Decision::Approve { note, .. } | Decision::Payout { note, .. } => note,
            Decision::Reject { reason, .. }
            | Decision::Adjust { reason, .. }
            | Decision::Bonus { reason, .. }
            | Decision::VoidPayout { reason, .. } => {
                if reason.trim().is_empty() {
                    return Some("reason: say why (it is kept in the ledger)".into());
                }
                reason
            }
        };
        if text.len() > MAX_REASON_LEN || text.chars().any(char::is_control) {
            return Some(format!("reason: at most {MAX_REASON_LEN} bytes, no control characters"));
        }
        None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn decisions_round_trip_and_check_their_reason() {
        let d = Decision::Adjust { entry: "12".into(), amount: "5.00".into(), reason: "partial refund".into() };
        let json = d.to_json();
        assert_eq!(json, r#"{"action":"adjust","entry":"12","amount":"5.00","reason":"partial refund"}"#);
        assert_eq!(Decision::from_json(&json).unwrap(), d);
        assert_eq!(d.problem(), None);
        assert!(Decision::Reject { entry: "1".into(), reason: " ".into() }.problem().unwrap().contains("say why"));
        assert!(Decision::Approve { entry: "1".into(), note: "a\nb".into() }.problem().is_some());
        assert!(Decision::from_json(r#"{"action":"approve","entry":"1","extra":1}"#).is_err());
        assert!(Decision::from_json(r#"{"action":"pay","entry":"1"}"#).is_err());
    }

    #[test]
    fn payouts_check_their_id_date_and_reason() {
        let run = |payout: &str, up_to: &str| Decision::Payout {
            payout: payout.into(),
            up_to: up_to.into(),
            affiliates: vec![],
            group: String::new(),
            note: String::new(),
        };
        assert_eq!(run("2026-11", "2026-11-30").problem(), None);
        assert_eq!(run("p1", "2026-11-30T23:59:59Z").problem(), None);
        assert!(run("", "2026-11-30").problem().unwrap().contains("payout"));
        assert!(run("a b", "2026-11-30").problem().unwrap().contains("not a payout ID"));
        assert!(run("p1", "30.11.2026").problem().unwrap().contains("up_to"));
        let void = Decision::VoidPayout { payout: "p1".into(), reason: String::new() };
        assert!(void.problem().unwrap().contains("say why"));
        assert_eq!(up_to_end_ms("1970-01-02"), Some(2 * crate::time::DAY_MS));
        assert_eq!(up_to_end_ms("1970-01-01T00:00:01Z"), Some(1001));
        let json = run("p1", "2026-11-30").to_json();
        assert_eq!(json, r#"{"action":"payout","payout":"p1","up_to":"2026-11-30"}"#);
        assert_eq!(Decision::from_json(&json).unwrap(), run("p1", "2026-11-30"));
    }
}
