//! Builders for the events tests make by hand: defaults that every fixture program accepts
//! (offer `shoes`, affiliate `aff1`, link `l1`, USD, at [`T0`]), so a test sets only the
//! fields its property is about.

use tally_model::{Click, ClickId, Conversion, ConversionSource, ConversionStatus, Currency, Event};

use crate::generate::T0;

/// A human click at [`T0`] on `shoes` from `aff1` through link `l1`, with no sub IDs.
#[derive(Debug, Clone)]
pub struct ClickBuilder {
    click: Click,
    /// Set by [`ClickBuilder::id`]; otherwise the ID is made from the timestamp and `nonce`.
    id: Option<ClickId>,
    nonce: u64,
}

impl Default for ClickBuilder {
    fn default() -> ClickBuilder {
        ClickBuilder::new()
    }
}

impl ClickBuilder {
    pub fn new() -> ClickBuilder {
        ClickBuilder {
            click: Click {
                click_id: ClickId::new(T0, 1, 0),
                ts_ms: T0,
                link: "l1".into(),
                offer: "shoes".into(),
                affiliate: "aff1".into(),
                subs: Default::default(),
                source: String::new(),
                deep_link: String::new(),
                user_agent: "Mozilla/5.0".into(),
                referrer: String::new(),
                ip: String::new(),
                flags: 0,
                prior_click: None,
                visitor: 0,
                signals: Default::default(),
            },
            id: None,
            nonce: 0,
        }
    }

    /// Event time; the click ID's timestamp follows it unless [`ClickBuilder::id`] is set.
    pub fn at(mut self, ts_ms: u64) -> Self {
        self.click.ts_ms = ts_ms;
        self
    }

    /// Tells clicks at the same millisecond apart.
    pub fn nonce(mut self, nonce: u64) -> Self {
        self.nonce = nonce;
        self
    }

    pub fn id(mut self, id: ClickId) -> Self {
        self.id = Some(id);
        self
    }

    pub fn link(mut self, link: &str) -> Self {
        self.click.link = link.into();
        self
    }

    pub fn offer(mut self, offer: &str) -> Self {
        self.click.offer = offer.into();
        self
    }

    pub fn affiliate(mut self, affiliate: &str) -> Self {
        self.click.affiliate = affiliate.into();
        self
    }

    /// `sub1`..`sub5` by number (1 to 5).
    pub fn sub(mut self, n: usize, value: &str) -> Self {
        self.click.subs[n - 1] = value.into();
        self
    }

    pub fn source(mut self, source: &str) -> Self {
        self.click.source = source.into();
        self
    }

    pub fn deep_link(mut self, url: &str) -> Self {
        self.click.deep_link = url.into();
        self
    }

    pub fn user_agent(mut self, user_agent: &str) -> Self {
        self.click.user_agent = user_agent.into();
        self
    }

    pub fn referrer(mut self, referrer: &str) -> Self {
        self.click.referrer = referrer.into();
        self
    }

    pub fn ip(mut self, ip: &str) -> Self {
        self.click.ip = ip.into();
        self
    }

    /// `tally_model::click_flags` bits.
    pub fn flags(mut self, flags: u16) -> Self {
        self.click.flags = flags;
        self
    }

    pub fn prior(mut self, prior: impl Into<Option<ClickId>>) -> Self {
        self.click.prior_click = prior.into();
        self
    }

    pub fn build(self) -> Click {
        let mut click = self.click;
        click.click_id = self.id.unwrap_or_else(|| ClickId::new(click.ts_ms, 1, self.nonce));
        // The key older formats decode to: tests count unique visitors by IP and user agent.
        click.visitor = tally_model::legacy_visitor_key(&click.offer, &click.affiliate, &click.ip, &click.user_agent);
        click
    }

    pub fn event(self) -> Event {
        Event::Click(self.build())
    }
}

/// An approved postback at [`T0`] for goal `sale` of `shoes`, in USD, with no click, coupon,
/// transaction ID or amount.
#[derive(Debug, Clone)]
pub struct ConversionBuilder(Conversion);

impl Default for ConversionBuilder {
    fn default() -> ConversionBuilder {
        ConversionBuilder::new()
    }
}

impl ConversionBuilder {
    pub fn new() -> ConversionBuilder {
        ConversionBuilder(Conversion {
            ts_ms: T0,
            source: ConversionSource::Postback,
            click_id: None,
            coupon: String::new(),
            offer: "shoes".into(),
            goal: "sale".into(),
            txid: String::new(),
            amount: None,
            currency: usd(),
            status: ConversionStatus::Approved,
            subs: Default::default(),
            ip: String::new(),
            advertiser: String::new(),
            customer: None,
        })
    }

    pub fn at(mut self, ts_ms: u64) -> Self {
        self.0.ts_ms = ts_ms;
        self
    }

    pub fn source(mut self, source: ConversionSource) -> Self {
        self.0.source = source;
        self
    }

    pub fn click(mut self, click: impl Into<Option<ClickId>>) -> Self {
        self.0.click_id = click.into();
        self
    }

    pub fn coupon(mut self, coupon: &str) -> Self {
        self.0.coupon = coupon.into();
        self
    }

    pub fn offer(mut self, offer: &str) -> Self {
        self.0.offer = offer.into();
        self
    }

    pub fn goal(mut self, goal: &str) -> Self {
        self.0.goal = goal.into();
        self
    }

    pub fn txid(mut self, txid: &str) -> Self {
        self.0.txid = txid.into();
        self
    }

    /// In minor units of the currency.
    pub fn amount(mut self, amount: impl Into<Option<i64>>) -> Self {
        self.0.amount = amount.into();
        self
    }

    /// An ISO 4217 code; panics on anything else (a test's typo, not its subject).
    pub fn currency(mut self, code: &str) -> Self {
        self.0.currency = Currency::from_code(code).unwrap_or_else(|e| panic!("currency {code}: {e}"));
        self
    }

    pub fn status(mut self, status: ConversionStatus) -> Self {
        self.0.status = status;
        self
    }

    /// The merchant's `sub1`..`sub5` by number (1 to 5).
    pub fn sub(mut self, n: usize, value: &str) -> Self {
        self.0.subs[n - 1] = value.into();
        self
    }

    pub fn ip(mut self, ip: &str) -> Self {
        self.0.ip = ip.into();
        self
    }

    /// The advertiser whose credential sent the report.
    pub fn advertiser(mut self, advertiser: &str) -> Self {
        self.0.advertiser = advertiser.into();
        self
    }

    /// The customer who bought, keyed as an edge keys it under [`CUSTOMER_SECRET`].
    pub fn customer(mut self, id: &str) -> Self {
        self.0.customer = Some(tally_model::Customer::new(&CUSTOMER_SECRET, id));
        self
    }

    pub fn build(self) -> Conversion {
        self.0
    }

    pub fn event(self) -> Event {
        Event::Conversion(self.0)
    }
}

/// The customer key the builders use: tests' logs have their own, but a conversion built
/// here only needs one that is the same for the same customer.
pub const CUSTOMER_SECRET: [u8; 32] = [0x42; 32];

fn usd() -> Currency {
    Currency::from_code("USD").unwrap_or_else(|e| panic!("USD: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_click_id_follows_the_time_unless_given() {
        let c = ClickBuilder::new().at(T0 + 5).nonce(3).build();
        assert_eq!(c.click_id, ClickId::new(T0 + 5, 1, 3));
        let id = ClickId::new(1, 2, 3);
        assert_eq!(ClickBuilder::new().id(id).at(T0 + 5).build().click_id, id);
    }

    #[test]
    fn defaults_round_trip_through_the_record_format() {
        for event in [
            ClickBuilder::new().sub(1, "s1").prior(ClickId::new(T0, 1, 9)).event(),
            ConversionBuilder::new().txid("T1").amount(1_250).currency("EUR").event(),
        ] {
            assert_eq!(tally_model::decode(&tally_model::encode(&event).unwrap()).unwrap(), event);
        }
    }
}
