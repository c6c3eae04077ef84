//! Outgoing notifications of commissions: postback URL templates (per link, affiliate or group,
//! a GET with the networks' macros) and JSON webhooks (per program, signed in the Standard
//! Webhooks format). Attribution turns a commission's creation and each change of its status
//! into [`Notification`]s, one per receiver, in the same write as the entry; the dispatcher
//! delivers them. Pure: parsing, rendering, signing.

use serde::{Deserialize, Serialize};

use crate::program::encode_macro_value;

/// The macros a postback URL may carry, in the names networks use.
pub const POSTBACK_MACROS: &[&str] = &[
    "click_id",
    "sub1",
    "offer",
    "goal",
    "affiliate",
    "amount",
    "payout",
    "currency",
    "status",
    "txid",
    "entry",
    "event",
];

/// What notifications are sent for.
pub const EVENTS: &[&str] = &["commission.created", "commission.updated"];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Macro(&'static str),
}

/// A postback URL with `{macro}` placeholders, checked once at load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostbackTemplate {
    parts: Vec<Part>,
}

impl PostbackTemplate {
    /// An absolute http(s) URL without userinfo, its macros after the host, each one of
    /// [`POSTBACK_MACROS`].
    pub fn parse(s: &str) -> Result<PostbackTemplate, String> {
        let mut parts = Vec::new();
        let mut rest = s;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_owned()));
            }
            let after = &rest[open + 1..];
            let close = after.find('}').ok_or_else(|| format!("unclosed '{{' in \"{s}\""))?;
            let name = &after[..close];
            let known = POSTBACK_MACROS
                .iter()
                .find(|m| **m == name)
                .ok_or_else(|| format!("unknown macro {{{name}}} (postbacks know {})", POSTBACK_MACROS.join(", ")))?;
            parts.push(Part::Macro(known));
            rest = &after[close + 1..];
        }
        if rest.contains('}') {
            return Err(format!("stray '}}' in \"{s}\""));
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_owned()));
        }
        let template = PostbackTemplate { parts };
        check_url(&template.render(|_| "x"))?;
        if s.bytes().any(|b| b.is_ascii_control() || b == b' ' || b == b'\\') {
            return Err("must not contain spaces, backslashes or control characters".to_owned());
        }
        match template.parts.first() {
            Some(Part::Literal(first)) => {
                let authority = first.find("://").map(|i| i + 3).unwrap_or(0);
                if template.parts.len() > 1 && !first[authority..].contains(['/', '?', '#']) {
                    return Err("macros may only appear after the host".to_owned());
                }
            }
            _ => return Err("must start with http:// or https://".to_owned()),
        }
        Ok(template)
    }

    /// Fills the macros, each value percent-encoded.
    pub fn render<'a>(&self, value: impl Fn(&str) -> &'a str) -> String {
        let mut out = String::with_capacity(160);
        for p in &self.parts {
            match p {
                Part::Literal(l) => out.push_str(l),
                Part::Macro(m) => out.push_str(&encode_macro_value(value(m))),
            }
        }
        out
    }
}

/// An absolute http(s) URL with a host and no userinfo: where a notification may go.
pub fn check_url(s: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(s).map_err(|e| format!("not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err("must be an absolute http(s) URL".to_owned());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry userinfo".to_owned());
    }
    Ok(url)
}

/// What a commission looks like to a receiver: the fields of its ledger entry that a
/// network or a merchant's system acts on, amounts as exact decimal strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommissionFacts {
    pub entry: String,
    pub kind: String,
    pub status: String,
    pub reason: String,
    pub affiliate: String,
    pub offer: String,
    pub goal: String,
    pub click_id: String,
    pub sub1: String,
    pub coupon: String,
    pub txid: String,
    /// The sale amount, empty if none.
    pub amount: String,
    /// The commission.
    pub payout: String,
    pub currency: String,
    /// The payout run that paid it, empty if unpaid.
    pub paid_in: String,
}

impl CommissionFacts {
    /// A postback macro's value.
    pub fn macro_value<'a>(&'a self, name: &str, event: &'a str) -> &'a str {
        match name {
            "click_id" => &self.click_id,
            "sub1" => &self.sub1,
            "offer" => &self.offer,
            "goal" => &self.goal,
            "affiliate" => &self.affiliate,
            "amount" => &self.amount,
            "payout" => &self.payout,
            "currency" => &self.currency,
            "status" => &self.status,
            "txid" => &self.txid,
            "entry" => &self.entry,
            "event" => event,
            _ => "",
        }
    }
}

/// Where a notification goes and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Target {
    /// `GET url`, the macros already filled.
    Postback { url: String },
    /// `POST url` with the JSON body, signed with the named secret.
    Webhook { id: String, url: String, secret: String, body: String },
}

/// One delivery to make: what attribution writes to its outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// Unique and stable: the same log gives the same keys, so a receiver can drop repeats
    /// (sent as `Idempotency-Key`, and as the webhook's `webhook-id`).
    pub key: String,
    /// `commission.created` or `commission.updated`.
    pub event: String,
    /// Who it is for: the affiliate (postbacks) or the webhook's ID.
    pub receiver: String,
    /// The event time of the change, ms.
    pub ts_ms: u64,
    pub target: Target,
}

impl Notification {
    /// The host (and port) its URL names, as written: what a dispatcher limits and breaks
    /// circuits per. Best effort on a URL that does not parse (its attempt is refused).
    pub fn host(&self) -> &str {
        let url = match &self.target {
            Target::Postback { url } | Target::Webhook { url, .. } => url.as_str(),
        };
        let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
        rest.split(['/', '?', '#']).next().unwrap_or_default()
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_json(s: &str) -> Result<Notification, String> {
        serde_json::from_str(s).map_err(|e| e.to_string())
    }
}

/// The JSON body of a webhook: `{"type", "timestamp", "data": {the commission}}`, the
/// envelope Standard Webhooks suggests.
pub fn webhook_body(event: &str, ts_ms: u64, facts: &CommissionFacts) -> String {
    #[derive(Serialize)]
    struct Body<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        timestamp: String,
        data: &'a CommissionFacts,
    }
    let body = Body { kind: event, timestamp: crate::time::format_ts(ts_ms), data: facts };
    serde_json::to_string(&body).unwrap_or_default()
}

/// The `webhook-signature` header value for a message: `v1,` and the base64 HMAC-SHA256, under
/// the secret, of `{id}.{timestamp}.{body}` (Standard Webhooks). A secret written `whsec_…`
/// is the base64 of the key; any other is the key's bytes.
pub fn webhook_signature(secret: &str, id: &str, timestamp: u64, body: &str) -> Result<String, String> {
    use base64::Engine as _;
    use hmac::Mac as _;
    let key = match secret.strip_prefix("whsec_") {
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| format!("a whsec_ secret must be base64 ({e})"))?,
        None => secret.as_bytes().to_vec(),
    };
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).map_err(|e| e.to_string())?;
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body.as_bytes());
    Ok(format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_notification_names_the_host_and_port_of_its_url() {
        let n = |url: &str| Notification {
            key: "k".into(),
            event: "commission.created".into(),
            receiver: "aff1".into(),
            ts_ms: 0,
            target: Target::Postback { url: url.into() },
        };
        assert_eq!(n("https://net.example/pb?cid=1").host(), "net.example");
        assert_eq!(n("http://127.0.0.1:8080?cid=1").host(), "127.0.0.1:8080");
        assert_eq!(n("http://u:p@net.example#x").host(), "u:p@net.example");
        assert_eq!(n("http://[::1]:9/p").host(), "[::1]:9");
        assert_eq!(n("net.example/pb").host(), "net.example", "best effort without a scheme");
        let hook = Notification {
            target: Target::Webhook {
                id: "crm".into(),
                url: "https://crm.example:8443/hooks".into(),
                secret: "s".into(),
                body: "{}".into(),
            },
            ..n("")
        };
        assert_eq!(hook.host(), "crm.example:8443");
    }

    #[test]
    fn postback_templates_fill_and_encode_their_macros_and_refuse_bad_ones() {
        let t = PostbackTemplate::parse("https://net.example/pb?cid={click_id}&p={payout}&s={status}").unwrap();
        let facts = CommissionFacts {
            click_id: "01ABC".into(),
            payout: "4.00".into(),
            status: "approved".into(),
            ..serde_json::from_str(&serde_json::to_string(&empty()).unwrap()).unwrap()
        };
        assert_eq!(
            t.render(|m| facts.macro_value(m, "commission.created")),
            "https://net.example/pb?cid=01ABC&p=4.00&s=approved"
        );
        let t = PostbackTemplate::parse("https://net.example/pb?sub={sub1}").unwrap();
        let facts = CommissionFacts { sub1: "a b&c=d".into(), ..empty() };
        assert_eq!(t.render(|m| facts.macro_value(m, "")), "https://net.example/pb?sub=a%20b%26c%3Dd");
        for (bad, why) in [
            ("ftp://net.example/{click_id}", "http(s)"),
            ("https://{affiliate}.example/", "after the host"),
            ("https://net.example/?x={nope}", "unknown macro {nope}"),
            ("https://user:pw@net.example/", "userinfo"),
            ("https://net.example/?x={click_id", "unclosed"),
            ("https://net.example/ x", "spaces"),
            ("/relative?{click_id}", "not a URL"),
        ] {
            let e = PostbackTemplate::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    fn empty() -> CommissionFacts {
        CommissionFacts {
            entry: String::new(),
            kind: String::new(),
            status: String::new(),
            reason: String::new(),
            affiliate: String::new(),
            offer: String::new(),
            goal: String::new(),
            click_id: String::new(),
            sub1: String::new(),
            coupon: String::new(),
            txid: String::new(),
            amount: String::new(),
            payout: String::new(),
            currency: String::new(),
            paid_in: String::new(),
        }
    }

    /// The example of the Standard Webhooks specification's reference libraries.
    #[test]
    fn webhook_signatures_match_the_standard_webhooks_test_vector() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = r#"{"test": 2432232314}"#;
        let sig = webhook_signature(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body).unwrap();
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert!(webhook_signature("whsec_***", "i", 1, "b").is_err());
    }
}
