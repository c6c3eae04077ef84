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
            Decision::Bonus { .. } => None,
        }
    }

    pub fn action(&self) -> &'static str {
        match self {
            Decision::Approve { .. } => "approve",
            Decision::Reject { .. } => "reject",
            Decision::Adjust { .. } => "adjust",
            Decision::Bonus { .. } => "bonus",
        }
    }

    /// What is wrong with it on its face (not against the ledger): a missing reason, one too
    /// long or with control characters.
    pub fn problem(&self) -> Option<String> {
        let text = match self {
            Decision::Approve { note, .. } => note,
            Decision::Reject { reason, .. } | Decision::Adjust { reason, .. } | Decision::Bonus { reason, .. } => {
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
}
