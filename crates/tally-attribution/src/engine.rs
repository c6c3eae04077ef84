//! The pure core: [`apply`] one event to the state, returning the ledger entries it created
//! or changed. Time comes only from event timestamps: the watermark is the largest event
//! time seen so far, so live attribution, replay and tests give the same results for the
//! same log. All reads and writes go through [`State`], whose overlay makes a group of
//! applied events commit atomically with the checkpoint.
//!
//! The rules, in the order they are applied to an approved (or pending) conversion report:
//! 0. a report that named only its click takes the click's offer and the named or default
//!    goal (`resolve_offer`); an unknown or expired click, or one of another advertiser's
//!    offer than the credential that sent the report, leaves it `unattributed`;
//! 1. the program in force (the last `ProgramChange` before the event) must know the offer
//!    and goal, else `unattributed`;
//! 2. dedup on (offer, goal, txid): the first report of a transaction claims it whatever its
//!    outcome; any later one is a `duplicate` paying zero;
//! 3. join: the click ID if it is known, not expired, on the same offer and inside the
//!    offer's window (first-click offers credit the earliest click of the visitor's cookie
//!    chain still inside the window); otherwise the coupon, mapped to its affiliate;
//!    otherwise `unattributed` with the reason the click failed;
//! 4. a sale amount in another currency than the offer's is `rejected` (no exchange rates);
//!    then daily caps (UTC day of the conversion), goal-wide then per affiliate: over-cap reports
//!    are `rejected_cap`, paying zero;
//! 5. payout: the affiliate's override if any, else the goal's; tiers by the conversion's
//!    rank among the affiliate's credited conversions for the goal in its calendar month;
//!    revenue shares round half to even to the minor unit;
//! 6. hold: `pending` until the watermark reaches conversion time + hold days, then
//!    `approved` (holds due at an event's time are approved before that event applies). A
//!    report the merchant sent `pending` waits with no timer for its `approved` report
//!    (`confirm`), then holds the same way; a `rejected` first report is booked unpaid
//!    before caps;
//! 7. milestones: the conversion that brings the month's credited count to a milestone's
//!    count earns its bonus, once per affiliate, goal and month.
//!
//! A refund, chargeback or (after an earlier report) merchant's rejection of a pending
//! commission rejects it; of an approved one, adds a
//! negative clawback entry. Reversals lower the monthly count (later conversions may fall
//! in a lower tier) but never free cap room or take back a bonus already earned.

use std::collections::BTreeMap;
use std::sync::Arc;

use tally_model::program::{
    AttributionModel, BrowserPolicy, BrowserReports, Goal, Offer, Payout, Rate, Recurring, TermsFrom,
};
use tally_model::{
    format_minor, parse_minor, ClickId, ClickView, Conversion, ConversionSource, ConversionStatus, Currency,
    CustomerKey, Decision, Edit, Event, Program,
};

use crate::clicks::{ClickFacts, ClickFactsRef, FirstClick};
use crate::keys;
use crate::ledger::{
    Adjustment, Entry, EntryId, Kind, Payment, Reason, Source, StatsKeyRef, Status, BROWSER_REVIEW_NOTE,
};
use crate::state::State;
use crate::stats::RowDelta;
use crate::AttributionError;
use tally_model::time::{day_of, format_day, month_of_day, DAY_MS};

/// What one event did to the ledger: entries created or changed, in the order it happened.
#[derive(Debug, Default)]
pub struct Outputs {
    pub entries: Vec<Entry>,
    /// True when a program change in the log failed to parse and was ignored.
    pub bad_program: bool,
}

/// Applies the event at `seq`. Events must come in log order, each exactly once per state.
pub fn apply(state: &mut State, seq: u64, event: &Event) -> Result<Outputs, AttributionError> {
    if let Event::Click(c) = event {
        return apply_click(state, seq, &ClickIn::of(&ClickView::from(c)));
    }
    step(state, seq, event.ts_ms(), |state, out| {
        match event {
            Event::Click(_) => {}
            Event::Conversion(c) => {
                let resolved = match resolve_offer(state, c)? {
                    Ok(resolved) => resolved,
                    Err(reason) => {
                        let digest = state.program.as_ref().map(|p| p.digest.clone()).unwrap_or_default();
                        let mut e = base_entry(seq, c, &digest);
                        e.reason = reason;
                        if c.status.is_reversal() {
                            e.kind = Kind::Reversal;
                        }
                        finish(state, e, out);
                        return Ok(());
                    }
                };
                let by_click = c.offer.is_empty();
                let c = resolved.as_ref();
                let reverses = match c.status {
                    ConversionStatus::Refunded | ConversionStatus::Chargeback => true,
                    // A merchant's rejection reverses the transaction's earlier report; as
                    // its first report, it is booked as a rejected conversion.
                    ConversionStatus::Rejected => !c.txid.is_empty() && state.dedup(&transaction_key(c))?.is_some(),
                    ConversionStatus::Approved | ConversionStatus::Pending => false,
                };
                if reverses {
                    reversal(state, seq, c, out)?;
                } else {
                    conversion(state, seq, c, by_click, out)?;
                }
            }
            // A new base, with the managed entities in force on top.
            Event::ProgramChange(p) => match Program::compose(&p.source, state.managed.clone()) {
                Ok(program) => {
                    state.set_program(Arc::new(program));
                }
                Err(e) => {
                    // The edge validates programs before logging them, so this means the log
                    // was written by a newer build. Keep the rules in force; say so loudly.
                    tracing::error!(seq, error = %e, "program change in the log does not parse; keeping the previous rules");
                    out.bad_program = true;
                }
            },
            Event::Decision(d) => match Decision::from_json(&d.decision) {
                Ok(decision) => operator_decision(state, seq, d.ts_ms, &d.actor, &decision, out)?,
                Err(e) => {
                    tracing::error!(seq, error = %e, "operator decision in the log does not parse; ignored");
                    out.bad_program = true;
                }
            },
            Event::ProgramEdit(p) => {
                let edit = match Edit::from_json(&p.edit) {
                    Ok(edit) => edit,
                    Err(e) => {
                        tracing::error!(seq, error = %e, "program edit in the log does not parse; keeping the previous rules");
                        out.bad_program = true;
                        return Ok(());
                    }
                };
                state.apply_edit(&edit);
                let Some(program) = state.program.clone() else { return Ok(()) };
                match program.with_edit(&edit) {
                    Ok(program) => {
                        if program.digest != p.digest {
                            tracing::warn!(seq, logged = %p.digest, computed = %program.digest, "program edit gives another digest here than on the edge that logged it");
                        }
                        // One copy of the entities: the program's (they share all but the
                        // shards the edit touched anyway).
                        state.managed = Arc::clone(&program.managed);
                        state.set_program(Arc::new(program));
                    }
                    Err(e) => {
                        tracing::error!(seq, error = %e, "program edit in the log does not validate; keeping the previous rules");
                        out.bad_program = true;
                    }
                }
            }
        }
        Ok(())
    })
}

/// [`apply`] for a click at `seq` given as what attribution reads of it.
pub fn apply_click(state: &mut State, seq: u64, c: &ClickIn<'_>) -> Result<Outputs, AttributionError> {
    step(state, seq, c.ts_ms, |state, _| click(state, c))
}

/// What attribution reads of a click: built from a decoded [`Click`] or a [`ClickView`]
/// read in place, or handed over by the [`crate::pipeline`], whose decode thread computes
/// the visitor key while the click's text is at hand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClickIn<'a> {
    pub click_id: ClickId,
    pub ts_ms: u64,
    pub offer: &'a str,
    pub affiliate: &'a str,
    pub sub1: &'a str,
    pub human: bool,
    pub prior_click: Option<ClickId>,
    /// The click's visitor key (see [`tally_model::Click::visitor`]): stored by the edge, so
    /// unique clicks never depend on personal fields, which may have been erased.
    pub visitor: u128,
    /// The link code clicked: its commissions notify the link's own postback URL, if any.
    pub link: &'a str,
}

impl<'a> ClickIn<'a> {
    pub fn of(c: &ClickView<'a>) -> ClickIn<'a> {
        ClickIn {
            click_id: c.click_id,
            ts_ms: c.ts_ms,
            offer: c.offer,
            affiliate: c.affiliate,
            sub1: c.subs[0],
            human: c.is_human(),
            prior_click: c.prior_click,
            visitor: u128::from(c.visitor),
            link: c.link,
        }
    }
}

/// The checks and bookkeeping around every event: order, the watermark and holds due
/// before it, the position after it.
fn step(
    state: &mut State,
    seq: u64,
    ts_ms: u64,
    f: impl FnOnce(&mut State, &mut Outputs) -> Result<(), AttributionError>,
) -> Result<Outputs, AttributionError> {
    let expected = state.checkpoint.position + 1;
    if seq != expected {
        return Err(AttributionError::OutOfOrder { expected, got: seq });
    }
    let mut out = Outputs::default();
    advance(state, seq, ts_ms, &mut out)?;
    f(state, &mut out)?;
    state.checkpoint.position = seq;
    Ok(out)
}

/// Moves the watermark to `ts` (never back) and approves every hold now due.
fn advance(state: &mut State, seq: u64, ts: u64, out: &mut Outputs) -> Result<(), AttributionError> {
    let cp = &mut state.checkpoint;
    cp.watermark_ms = cp.watermark_ms.max(ts);
    if let Some(reach) = state.reach_ms {
        cp.horizon_ms = cp.horizon_ms.max(cp.watermark_ms.saturating_sub(reach));
    }
    let watermark = cp.watermark_ms;
    while let Some(&(at, id)) = state.holds.first() {
        if at > watermark {
            break;
        }
        state.remove_hold(at, id);
        let Some(mut e) = state.entry(id)? else { continue };
        if e.status == Status::Pending {
            e.status = Status::Approved;
            e.approved_seq = Some(seq);
            state.put_entry(e.clone());
            out.entries.push(e);
        }
    }
    Ok(())
}

/// The day number of `ts_ms` in the calendar of the program in force (UTC without one).
fn local_day(state: &State, ts_ms: u64) -> u32 {
    state.program.as_ref().map_or_else(|| day_of(ts_ms), |p| p.calendar.day_of(ts_ms))
}

/// The stats day of `ts_ms`: [`local_day`], unless the state counts stats in another
/// calendar (a report in another time zone). Caps and months never use this.
fn stats_day(state: &State, ts_ms: u64) -> u32 {
    match &state.stats_calendar {
        Some(c) => c.day_of(ts_ms),
        None => local_day(state, ts_ms),
    }
}

fn window_ms(offer: &Offer) -> u64 {
    u64::from(offer.window_days) * DAY_MS
}

fn click(state: &mut State, c: &ClickIn<'_>) -> Result<(), AttributionError> {
    let human = c.human;
    let sub1 = c.sub1;
    let offer = state.program.as_ref().and_then(|p| p.offer(c.offer).cloned());
    let first = match c.prior_click {
        Some(prior_id) if offer.as_ref().is_some_and(|o| o.model == AttributionModel::FirstClick) => {
            match live_click(state, &prior_id)? {
                Some(prior) if prior.offer == c.offer => {
                    let root = prior.first.clone().unwrap_or(FirstClick {
                        click_id: prior_id,
                        ts_ms: prior.ts_ms,
                        affiliate: prior.affiliate.clone(),
                        sub1: prior.sub1.clone(),
                    });
                    let window = offer.as_deref().map(window_ms).unwrap_or(0);
                    (c.ts_ms.saturating_sub(root.ts_ms) <= window).then_some(root)
                }
                _ => None,
            }
        }
        _ => None,
    };
    state.put_click(
        c.click_id,
        &ClickFactsRef {
            ts_ms: c.ts_ms,
            offer: c.offer,
            affiliate: c.affiliate,
            sub1,
            human,
            first: first.as_ref(),
            link: c.link,
        },
    );
    let day = stats_day(state, c.ts_ms);
    // Visitor sets of days before the horizon are deleted (when, depends on commit timing), so
    // a click that late is never counted unique: the answer must not depend on deletion.
    let live_day = day >= stats_day(state, state.checkpoint.horizon_ms);
    let unique = human && live_day && state.first_visit(day, c.visitor)?;
    let currency = offer.as_ref().map(|o| o.currency);
    let row = state.stats_mut(StatsKeyRef { day, offer: c.offer, affiliate: c.affiliate, sub1 });
    if human {
        row.clicks += 1;
        row.unique_clicks += u64::from(unique);
    } else {
        row.non_human_clicks += 1;
    }
    row.set_currency_if_none(currency);
    Ok(())
}

/// A click from the index, unless it is older than the expiry horizon. The horizon, not
/// the physical deletion, decides, so results do not depend on when deletion ran.
fn live_click(state: &State, id: &ClickId) -> Result<Option<ClickFacts>, AttributionError> {
    let horizon = state.checkpoint.horizon_ms;
    Ok(state.click(id)?.filter(|c| c.ts_ms >= horizon))
}

/// The start of an entry for conversion `c` at `seq`; callers fill in the outcome.
fn base_entry(seq: u64, c: &Conversion, program: &str) -> Entry {
    Entry {
        id: EntryId::of_event(seq),
        kind: Kind::Commission,
        status: Status::Unattributed,
        reason: Reason::None,
        ts_ms: c.ts_ms,
        offer: c.offer.clone(),
        goal: c.goal.clone(),
        affiliate: String::new(),
        click_id: c.click_id,
        coupon: String::new(),
        sub1: String::new(),
        txid: c.txid.clone(),
        sale_amount: c.amount,
        amount: 0,
        currency: c.currency,
        rule: String::new(),
        program: program.to_owned(),
        approve_at_ms: None,
        approved_seq: None,
        refers_to: None,
        reversed_by: None,
        confirmed_by: None,
        source: c.source.into(),
        adjustments: Vec::new(),
        payments: Vec::new(),
        link: String::new(),
    }
}

/// The key that claims a *transaction* for the ledger: offer, goal, txid (length-prefixed,
/// so no separator can be forged), without the status. The first report of a transaction
/// claims it, whatever its outcome; later reports of it are booked as `duplicate`, paid
/// zero, and a reversal (refund, chargeback) finds the entry to reverse by it. The `dedup`
/// column family of the state maps these keys to the claiming entry. Not to be confused with `Conversion::repeat_key`, the log's key for
/// a report sent again (with status), which only shapes the edge's answer.
fn transaction_key(c: &Conversion) -> Vec<u8> {
    let mut k = Vec::with_capacity(12 + c.offer.len() + c.goal.len() + c.txid.len());
    for part in [&c.offer, &c.goal, &c.txid] {
        k.extend_from_slice(&(part.len() as u32).to_be_bytes());
        k.extend_from_slice(part.as_bytes());
    }
    k
}

/// The key that binds a customer of `offer` to the affiliate its first credited sale
/// credited, in the `dedup` family beside the transaction keys: it maps to that sale's
/// entry, which holds the affiliate, the click or coupon and the time the binding began.
fn customer_binding_key(offer: &str, customer: &CustomerKey) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + 4 + offer.len() + 16);
    k.push(0xfe); // never the first byte of the other keys of the family (see below)
    k.extend_from_slice(&(offer.len() as u32).to_be_bytes());
    k.extend_from_slice(offer.as_bytes());
    k.extend_from_slice(&customer.0);
    k
}

/// The key a report that named no offer claims its transaction by besides
/// [`transaction_key`]: advertiser, click and txid. A later report of the transaction that
/// names no offer either (a refund, a confirmation) finds it by this key even once its click
/// has expired, when the offer could no longer be taken from the click.
fn transaction_key_by_click(c: &Conversion, click: ClickId) -> Vec<u8> {
    let mut k = Vec::with_capacity(48 + c.advertiser.len() + c.txid.len());
    k.push(0xff); // never the first byte of a `transaction_key` (a length below 2^24)
    for part in [c.advertiser.as_bytes(), click.as_bytes(), c.txid.as_bytes()] {
        k.extend_from_slice(&(part.len() as u32).to_be_bytes());
        k.extend_from_slice(part);
    }
    k
}

/// A report with its offer and goal as the rules see them: as reported, or, for a report
/// that named only its click, the click's offer and the goal named (else the offer's
/// default goal in the program in force). A report that named no offer and whose click is
/// not known (or has expired, or belongs to another advertiser's offer) is not credited:
/// the reason says why.
fn resolve_offer<'c>(
    state: &State,
    c: &'c Conversion,
) -> Result<Result<std::borrow::Cow<'c, Conversion>, Reason>, AttributionError> {
    if !c.offer.is_empty() {
        return Ok(Ok(std::borrow::Cow::Borrowed(c)));
    }
    let Some(id) = c.click_id else {
        return Ok(Err(Reason::UnknownOffer));
    };
    let mut resolved = c.clone();
    if !c.txid.is_empty() {
        if let Some(original) = state.dedup(&transaction_key_by_click(c, id))? {
            if let Some(o) = state.entry(original)? {
                resolved.offer = o.offer;
                resolved.goal = o.goal;
                return Ok(Ok(std::borrow::Cow::Owned(resolved)));
            }
        }
    }
    let click = match live_click(state, &id)? {
        Some(click) => click,
        None if id.timestamp_ms() < state.checkpoint.horizon_ms => return Ok(Err(Reason::ExpiredClick)),
        None => return Ok(Err(Reason::UnknownClick)),
    };
    let offer = state.program.as_ref().and_then(|p| p.offer(&click.offer));
    if let Some(o) = offer {
        if !c.advertiser.is_empty() && o.advertiser != c.advertiser {
            return Ok(Err(Reason::ClickAdvertiserMismatch));
        }
        if resolved.goal.is_empty() {
            resolved.goal = o.default_goal().to_owned();
        }
    }
    resolved.offer = click.offer;
    Ok(Ok(std::borrow::Cow::Owned(resolved)))
}

fn finish(state: &mut State, entry: Entry, out: &mut Outputs) {
    state.put_entry(entry.clone());
    out.entries.push(entry);
}

/// Resolves the program, offer and goal in force, or records why not.
fn rules<'a>(
    program: &'a Option<Arc<Program>>,
    c: &Conversion,
    entry: &mut Entry,
) -> Option<(&'a Arc<Offer>, &'a Goal)> {
    let Some(p) = program else {
        entry.reason = Reason::NoProgram;
        return None;
    };
    let Some(offer) = p.offer(&c.offer) else {
        entry.reason = Reason::UnknownOffer;
        return None;
    };
    let Some(goal) = offer.goal(&c.goal) else {
        entry.reason = Reason::UnknownGoal;
        return None;
    };
    entry.currency = offer.currency;
    Some((offer, goal))
}

/// Who gets the credit, and through what: a click (of a link) or a coupon.
struct Credit {
    affiliate: String,
    click_id: Option<ClickId>,
    sub1: String,
    coupon: String,
    /// The credited click's link code; empty without a click.
    link: String,
}

fn join(
    state: &State,
    program: &Program,
    offer: &Offer,
    c: &Conversion,
) -> Result<Result<Credit, Reason>, AttributionError> {
    let mut failure = Reason::NoClick;
    if let Some(id) = c.click_id {
        match live_click(state, &id)? {
            None if id.timestamp_ms() < state.checkpoint.horizon_ms => failure = Reason::ExpiredClick,
            None => failure = Reason::UnknownClick,
            Some(click) if click.offer != offer.id => failure = Reason::ClickOfferMismatch,
            Some(click) => {
                let window = window_ms(offer);
                let in_window = |ts: u64| c.ts_ms.saturating_sub(ts) <= window;
                let first = click.first.as_ref().filter(|_| offer.model == AttributionModel::FirstClick);
                match first {
                    Some(f) if in_window(f.ts_ms) => {
                        // The first click's link is not in `FirstClick` (stored facts keep
                        // their shape); inside the window, its own facts are still indexed.
                        let link = live_click(state, &f.click_id)?.map(|k| k.link).unwrap_or_default();
                        return Ok(Ok(Credit {
                            affiliate: f.affiliate.clone(),
                            click_id: Some(f.click_id),
                            sub1: f.sub1.clone(),
                            coupon: String::new(),
                            link,
                        }));
                    }
                    _ if in_window(click.ts_ms) => {
                        return Ok(Ok(Credit {
                            affiliate: click.affiliate,
                            click_id: Some(id),
                            sub1: click.sub1,
                            coupon: String::new(),
                            link: click.link,
                        }));
                    }
                    _ => failure = Reason::OutsideWindow,
                }
            }
        }
    }
    if !c.coupon.is_empty() {
        return Ok(match program.any_coupon(&c.coupon) {
            Some(coupon) if coupon.offer == offer.id && coupon.active => Ok(Credit {
                affiliate: coupon.affiliate.clone(),
                click_id: None,
                sub1: String::new(),
                coupon: coupon.code.clone(),
                link: String::new(),
            }),
            Some(coupon) if coupon.offer == offer.id && c.click_id.is_none() => Err(Reason::CouponDisabled),
            Some(_) if c.click_id.is_none() => Err(Reason::CouponOfferMismatch),
            None if c.click_id.is_none() => Err(Reason::UnknownCoupon),
            _ => Err(failure),
        });
    }
    Ok(Err(failure))
}

/// `amount * bps / 10_000`, rounded half to even (banker's rounding), exactly.
pub fn revshare(amount: i64, bps: u32) -> i64 {
    let n = i128::from(amount) * i128::from(bps);
    let (q, r) = (n.div_euclid(10_000), n.rem_euclid(10_000));
    let q = match r.cmp(&5_000) {
        std::cmp::Ordering::Greater => q + 1,
        std::cmp::Ordering::Equal => q + (q & 1),
        std::cmp::Ordering::Less => q,
    };
    // |amount * bps / 10_000| <= |amount| since bps <= 10_000.
    i64::try_from(q).unwrap_or(if q < 0 { i64::MIN } else { i64::MAX })
}

/// `by_click`: the report named no offer (see [`resolve_offer`]).
fn conversion(
    state: &mut State,
    seq: u64,
    c: &Conversion,
    by_click: bool,
    out: &mut Outputs,
) -> Result<(), AttributionError> {
    let program = state.program.clone();
    let digest = program.as_ref().map(|p| p.digest.clone()).unwrap_or_default();
    let mut e = base_entry(seq, c, &digest);
    let Some((offer, goal)) = rules(&program, c, &mut e) else {
        finish(state, e, out);
        return Ok(());
    };
    let Some(program) = program.as_deref() else { return Ok(()) };

    // A browser's report the goal does not trust is booked, unpaid, before it can claim its
    // transaction: the merchant's postback of the same order must still be paid.
    if c.source.is_browser() {
        if let Some((reason, rule)) = browser_refusal(goal, offer, c) {
            e.status = Status::Rejected;
            e.reason = reason;
            e.rule = rule;
            if let Some(id) = c.click_id {
                // Whom it would have credited, for reports; nothing is paid.
                if let Some(click) = live_click(state, &id)?.filter(|k| k.offer == offer.id) {
                    e.affiliate = click.affiliate;
                    e.sub1 = click.sub1;
                    e.link = click.link;
                }
            }
            finish(state, e, out);
            return Ok(());
        }
    }

    if !c.txid.is_empty() {
        let key = transaction_key(c);
        if let Some(original) = state.dedup(&key)? {
            e.status = Status::Duplicate;
            e.reason = Reason::RepeatedTransaction;
            e.refers_to = Some(original);
            if let Some(o) = state.entry(original)? {
                e.affiliate = o.affiliate.clone();
                e.click_id = o.click_id;
                e.link = o.link.clone();
                // Only the merchant's server confirms: a browser could confirm anything it saw.
                let awaiting =
                    o.status == Status::Pending && matches!(o.reason, Reason::MerchantPending | Reason::BrowserReview);
                if c.status == ConversionStatus::Approved && c.source == ConversionSource::Postback && awaiting {
                    let hold_days = program.terms(offer, goal, &o.affiliate).hold_days;
                    confirm(state, seq, o, hold_days, &mut e, out)?;
                }
            }
            finish(state, e, out);
            return Ok(());
        }
        state.put_dedup(key, e.id);
        if let (Some(click), true) = (c.click_id, by_click) {
            state.put_dedup(transaction_key_by_click(c, click), e.id);
        }
    }

    // Recurring commissions: a customer some affiliate referred earlier pays that affiliate
    // while the goal's recurring terms hold, whatever click or coupon this report names.
    let binding_key = c.customer.as_ref().map(|k| customer_binding_key(&c.offer, &k.key));
    let bound = match &binding_key {
        Some(k) => match state.dedup(k)? {
            Some(id) => state.entry(id)?,
            None => None,
        },
        None => None,
    };
    let recurring = bound.as_ref().filter(|b| goal.recurring.holds(&program.calendar, b.ts_ms, c.ts_ms));
    // A recurring sale is credited as the customer's first sale was: its click (and so its
    // link's postback URL) or its coupon.
    let credit = match recurring {
        Some(b) => Ok(Credit {
            affiliate: b.affiliate.clone(),
            click_id: b.click_id,
            sub1: b.sub1.clone(),
            coupon: b.coupon.clone(),
            link: b.link.clone(),
        }),
        None => join(state, program, offer, c)?,
    };
    let credit = match credit {
        Ok(credit) => credit,
        Err(reason) => {
            e.reason = match (&bound, reason) {
                (Some(b), Reason::NoClick) if goal.recurring != Recurring::Off => {
                    e.rule = format!(
                        "goal {}: recurring {} from entry {} ({}) has ended",
                        goal.id,
                        goal.recurring.describe(),
                        b.id,
                        format_day(program.calendar.day_of(b.ts_ms))
                    );
                    Reason::RecurringEnded
                }
                (_, reason) => reason,
            };
            finish(state, e, out);
            return Ok(());
        }
    };
    e.affiliate = credit.affiliate;
    e.click_id = credit.click_id;
    e.sub1 = credit.sub1;
    e.coupon = credit.coupon;
    e.link = credit.link;
    if program.affiliates.get(&e.affiliate).is_some_and(|a| !a.active) {
        e.status = Status::Rejected;
        e.reason = Reason::AffiliateDisabled;
        e.rule = format!("affiliate {} is disabled", e.affiliate);
        finish(state, e, out);
        return Ok(());
    }

    let currency = offer.currency;
    if c.amount.is_some() && c.currency != currency {
        // No exchange rates in the rules: a sale in another currency is neither paid nor
        // counted as revenue. (The edge refuses these; a program change of the offer's
        // currency can still produce them.)
        e.status = Status::Rejected;
        e.reason = Reason::CurrencyMismatch;
        e.rule = format!("goal {}: sale reported in {}, offer pays in {currency}", goal.id, c.currency);
        finish(state, e, out);
        return Ok(());
    }

    if c.status == ConversionStatus::Rejected {
        e.status = Status::Rejected;
        e.reason = Reason::MerchantRejected;
        e.rule = format!("goal {}: the merchant reported it rejected", goal.id);
        finish(state, e, out);
        return Ok(());
    }

    // The customer's first credited sale of the offer binds it to the affiliate credited,
    // for good: whether a later sale pays it is the later goal's recurring terms' call.
    if let (Some(key), None) = (binding_key, &bound) {
        state.put_dedup(key, e.id);
    }
    let recurring_text = recurring.map(|b| {
        format!(
            "recurring {} from entry {} ({}); ",
            goal.recurring.describe(),
            b.id,
            format_day(program.calendar.day_of(b.ts_ms))
        )
    });

    let terms = program.terms(offer, goal, &e.affiliate);
    let day = local_day(state, c.ts_ms);
    let goal_cap_key = keys::cap(day, &c.offer, &c.goal, "");
    let aff_cap_key = keys::cap(day, &c.offer, &c.goal, &e.affiliate);
    let caps = [
        (goal.daily_cap, &goal_cap_key, Reason::DailyCap, "daily cap"),
        (terms.daily_cap, &aff_cap_key, Reason::AffiliateDailyCap, "affiliate daily cap"),
    ];
    for (cap, key, reason, what) in caps {
        let Some(cap) = cap else { continue };
        if state.counter(key)? >= i64::from(cap) {
            e.status = Status::RejectedCap;
            e.reason = reason;
            e.rule = format!("goal {}: {what} {cap}", goal.id);
            finish(state, e, out);
            return Ok(());
        }
    }

    let payout = terms.payout;
    let mut source = recurring_text.unwrap_or_default();
    match terms.payout_from {
        TermsFrom::Goal => source.push_str(&format!("goal {}", goal.id)),
        TermsFrom::Affiliate(a) => source.push_str(&format!("override {a}")),
        TermsFrom::Group(g) => source.push_str(&format!("group {g}")),
    }
    let month = month_of_day(day);
    let mkey = keys::month(month, &c.offer, &c.goal, &e.affiliate);
    let rank = state.counter(&mkey)?.saturating_add(1);
    let (rate, tier) = payout.rate_for(u32::try_from(rank.max(1)).unwrap_or(u32::MAX));
    let tier_text = match (tier, payout) {
        (Some(t), Payout::Tiered { tiers }) => {
            format!(" tier {t} (from {}, rank {rank})", tiers.get(t - 1).map(|x| x.from).unwrap_or(0))
        }
        _ => String::new(),
    };
    match rate {
        Rate::Fixed { amount } => {
            e.amount = amount;
            e.rule = format!("{source}{tier_text}: fixed {}", format_minor(amount, currency));
        }
        Rate::RevShare { bps } => match c.amount {
            None => {
                e.status = Status::Rejected;
                e.reason = Reason::MissingAmount;
                e.rule = format!("{source}{tier_text}: revshare {bps} bps of no sale amount");
                finish(state, e, out);
                return Ok(());
            }
            Some(sale) => {
                e.amount = revshare(sale, bps);
                e.rule = format!("{source}{tier_text}: revshare {bps} bps of {}", format_minor(sale, currency));
            }
        },
    }
    e.currency = currency;

    state.add_counter(&goal_cap_key, 1)?;
    state.add_counter(&aff_cap_key, 1)?;
    let count = state.add_counter(&mkey, 1)?;
    let hold_ms = u64::from(terms.hold_days) * DAY_MS;
    let approve_at = c.ts_ms.saturating_add(hold_ms);
    if hold_ms == 0 {
        e.status = Status::Approved;
        e.approved_seq = Some(seq);
    } else {
        e.status = Status::Pending;
        e.approve_at_ms = Some(approve_at);
    }
    // Milestone bonuses follow the hold whatever the merchant says: a bonus, once earned,
    // is never taken back (module docs).
    let bonus_template = e.clone();
    let review = c.source.is_browser() && goal.browser.reports == BrowserReports::PendingReview;
    if c.status == ConversionStatus::Pending || review {
        // Waits for the merchant's approval (no hold timer runs until then).
        e.status = Status::Pending;
        e.approve_at_ms = None;
        e.approved_seq = None;
        if c.status == ConversionStatus::Pending {
            e.reason = Reason::MerchantPending;
            e.rule.push_str("; awaiting the merchant's approval");
        } else {
            e.reason = Reason::BrowserReview;
            e.rule.push_str(BROWSER_REVIEW_NOTE);
        }
    } else if hold_ms != 0 {
        state.add_hold(approve_at, e.id);
    }
    let revenue = c.amount.unwrap_or(0);
    let day = stats_day(state, c.ts_ms);
    let row = state.stats_mut(StatsKeyRef { day, offer: &c.offer, affiliate: &e.affiliate, sub1: &e.sub1 });
    add_conversion(row, 1, revenue, e.amount, currency);

    let mut bonuses = Vec::new();
    for (i, m) in goal.milestones.iter().enumerate() {
        if i64::from(m.count) != count {
            continue;
        }
        let fired = keys::milestone(month, &c.offer, &c.goal, &e.affiliate, m.count);
        if state.counter(&fired)? != 0 {
            continue;
        }
        state.add_counter(&fired, 1)?;
        let mut b = bonus_template.clone();
        b.id = EntryId { seq, sub: u8::try_from(i + 1).unwrap_or(u8::MAX) };
        b.kind = Kind::Bonus;
        b.amount = m.bonus;
        b.sale_amount = None;
        b.refers_to = Some(e.id);
        b.rule =
            format!("goal {}: milestone {} in {month}: bonus {}", goal.id, m.count, format_minor(m.bonus, currency));
        if b.status == Status::Pending {
            state.add_hold(approve_at, b.id);
        }
        let row = state.stats_mut(StatsKeyRef { day, offer: &c.offer, affiliate: &e.affiliate, sub1: &e.sub1 });
        add_conversion(row, 0, 0, b.amount, currency);
        bonuses.push(b);
    }
    finish(state, e, out);
    for b in bonuses {
        finish(state, b, out);
    }
    Ok(())
}

/// The merchant's approval of `original`, a commission it reported pending: from here the
/// goal's hold runs as for any commission, counted from the conversion's time (so one
/// already past it is approved now). `e`, the approving report's own entry, pays nothing.
fn confirm(
    state: &mut State,
    seq: u64,
    mut original: Entry,
    hold_days: u32,
    e: &mut Entry,
    out: &mut Outputs,
) -> Result<(), AttributionError> {
    let hold_ms = u64::from(hold_days) * DAY_MS;
    let approve_at = original.ts_ms.saturating_add(hold_ms);
    original.reason = Reason::None;
    original.confirmed_by = Some(seq);
    if hold_ms != 0 {
        original.approve_at_ms = Some(approve_at);
    }
    let due = approve_at <= state.checkpoint.watermark_ms;
    if due {
        original.status = Status::Approved;
        original.approved_seq = Some(seq);
    } else {
        state.add_hold(approve_at, original.id);
    }
    e.kind = Kind::Confirmation;
    e.status = Status::Approved;
    e.reason = Reason::None;
    e.approved_seq = Some(seq);
    e.rule = if due {
        format!("merchant approved pending commission {}: approved", original.id)
    } else {
        format!("merchant approved pending commission {}: held until {approve_at} ms", original.id)
    };
    state.put_entry(original.clone());
    out.entries.push(original);
    Ok(())
}

/// Why the goal does not pay this browser's report, if it does not: postbacks only, no txid
/// where one is required, or an amount over the browser limit.
fn browser_refusal(goal: &Goal, offer: &Offer, c: &Conversion) -> Option<(Reason, String)> {
    let BrowserPolicy { reports, max_amount, require_txid } = goal.browser;
    if reports == BrowserReports::PostbackOnly {
        return Some((
            Reason::BrowserReportRefused,
            format!("goal {}: postbacks only, a browser's report is not paid", goal.id),
        ));
    }
    if require_txid && c.txid.is_empty() {
        return Some((Reason::NoTransactionId, format!("goal {}: a browser's report needs a txid", goal.id)));
    }
    match (max_amount, c.amount) {
        (Some(max), Some(a)) if a > max => Some((
            Reason::BrowserAmountOverLimit,
            format!("goal {}: a browser may report a sale of at most {}", goal.id, format_minor(max, offer.currency)),
        )),
        _ => None,
    }
}

/// Wrapping, as every sum of rows (see `stats::Row::add_counts`).
fn add_conversion(row: &mut RowDelta, conversions: i64, revenue: i64, payout: i64, currency: Currency) {
    row.conversions = row.conversions.wrapping_add(conversions);
    row.revenue = row.revenue.wrapping_add(revenue);
    row.payout = row.payout.wrapping_add(payout);
    row.set_currency(currency);
}

fn reversal(state: &mut State, seq: u64, c: &Conversion, out: &mut Outputs) -> Result<(), AttributionError> {
    let program = state.program.clone();
    let digest = program.as_ref().map(|p| p.digest.clone()).unwrap_or_default();
    let mut e = base_entry(seq, c, &digest);
    e.kind = Kind::Reversal;
    if rules(&program, c, &mut e).is_none() {
        finish(state, e, out);
        return Ok(());
    }
    if c.txid.is_empty() {
        e.reason = Reason::NoTransactionId;
        finish(state, e, out);
        return Ok(());
    }
    let Some(original_id) = state.dedup(&transaction_key(c))? else {
        e.reason = Reason::NoOriginal;
        finish(state, e, out);
        return Ok(());
    };
    let Some(mut original) = state.entry(original_id)? else {
        e.reason = Reason::NoOriginal;
        finish(state, e, out);
        return Ok(());
    };
    e.refers_to = Some(original_id);
    e.affiliate = original.affiliate.clone();
    e.click_id = original.click_id;
    e.sub1 = original.sub1.clone();
    e.coupon = original.coupon.clone();
    e.link = original.link.clone();
    e.currency = original.currency;
    let why = match c.status {
        ConversionStatus::Chargeback => Reason::Chargeback,
        ConversionStatus::Rejected => Reason::MerchantRejected,
        _ => Reason::Refunded,
    };
    if original.reversed_by.is_some() {
        e.status = Status::Duplicate;
        e.reason = Reason::AlreadyReversed;
        finish(state, e, out);
        return Ok(());
    }
    match original.status {
        Status::Pending => {
            if let Some(at) = original.approve_at_ms {
                state.remove_hold(at, original.id);
            }
            original.status = Status::Rejected;
            original.reason = why;
            e.status = Status::Approved;
            e.reason = why;
            e.rule = format!("{} of pending commission {original_id}: rejected", why.as_str());
        }
        Status::Approved => {
            e.kind = Kind::Clawback;
            e.status = Status::Approved;
            e.reason = why;
            e.amount = original.amount.saturating_neg();
            e.approved_seq = Some(seq);
            e.rule = format!(
                "{} of approved commission {original_id}: clawback {}",
                why.as_str(),
                format_minor(e.amount, original.currency)
            );
        }
        _ => {
            e.status = Status::Rejected;
            e.reason = Reason::NothingToReverse;
            finish(state, e, out);
            return Ok(());
        }
    }
    original.reversed_by = Some(seq);
    take_back_counts(state, &original)?;
    finish(state, original, out);
    finish(state, e, out);
    Ok(())
}

/// An operator's decision (module docs of `tally_model::decision`). Its own entry (`decision`
/// for approve, reject of a pending commission and adjust; a `clawback` for the reject of an
/// approved one; a `bonus`) names who decided what and why; a decision that cannot apply to
/// the ledger as it stands is booked `rejected` (`not_applicable`), changing nothing. One
/// naming an entry that does not exist, or a bonus on an offer or affiliate the program does
/// not know, makes no entry (the admin API refuses those before logging them).
fn operator_decision(
    state: &mut State,
    seq: u64,
    ts_ms: u64,
    actor: &str,
    d: &Decision,
    out: &mut Outputs,
) -> Result<(), AttributionError> {
    let digest = state.program.as_ref().map(|p| p.digest.clone()).unwrap_or_default();
    if let Decision::Bonus { affiliate, offer, amount, reason } = d {
        let known = state.program.as_ref().and_then(|p| {
            let o = p.offer(offer)?;
            p.affiliates.contains_key(affiliate).then_some(o.currency)
        });
        let Some(currency) = known else {
            tracing::warn!(seq, offer = %offer, affiliate = %affiliate, "bonus for an offer or affiliate the program does not know: no entry");
            return Ok(());
        };
        let Ok(amount) = parse_minor(amount, currency, false) else {
            tracing::warn!(seq, amount = %amount, "bonus amount does not parse in the offer's currency: no entry");
            return Ok(());
        };
        let e = Entry {
            kind: Kind::Bonus,
            status: Status::Approved,
            affiliate: affiliate.clone(),
            offer: offer.clone(),
            amount,
            currency,
            approved_seq: Some(seq),
            rule: format!("bonus by {actor}: {reason}"),
            ..decision_entry(seq, ts_ms, &digest, currency)
        };
        let row = state.stats_mut(StatsKeyRef { day: stats_day(state, ts_ms), offer, affiliate, sub1: "" });
        add_conversion(row, 0, 0, amount, currency);
        finish(state, e, out);
        return Ok(());
    }
    match d {
        Decision::Payout { payout, up_to, affiliates, group, note } => {
            let run = PayoutRun { payout, up_to, affiliates, group, note };
            return payout_run(state, seq, ts_ms, actor, &digest, &run, out);
        }
        Decision::VoidPayout { payout, reason } => {
            return void_payout(state, seq, ts_ms, actor, &digest, payout, reason, out)
        }
        _ => {}
    }
    let Some(target_id) = d.entry().and_then(EntryId::parse) else {
        tracing::warn!(seq, entry = ?d.entry(), "operator decision names no valid entry: no entry");
        return Ok(());
    };
    let Some(mut target) = state.entry(target_id)? else {
        tracing::warn!(seq, entry = %target_id, "operator decision on an entry not in the ledger: no entry");
        return Ok(());
    };
    let mut e = Entry {
        refers_to: Some(target_id),
        affiliate: target.affiliate.clone(),
        offer: target.offer.clone(),
        goal: target.goal.clone(),
        click_id: target.click_id,
        coupon: target.coupon.clone(),
        sub1: target.sub1.clone(),
        txid: target.txid.clone(),
        link: target.link.clone(),
        approved_seq: Some(seq),
        ..decision_entry(seq, ts_ms, &digest, target.currency)
    };
    let payable = matches!(target.kind, Kind::Commission | Kind::Bonus) && target.reversed_by.is_none();
    let what = format!("{} {target_id}", target.kind.as_str());
    let refuse = |mut e: Entry, why: String, state: &mut State, out: &mut Outputs| {
        e.status = Status::Rejected;
        e.reason = Reason::NotApplicable;
        e.approved_seq = None;
        e.rule = format!("{} by {actor} not applied: {why}", d.action());
        finish(state, e, out);
    };
    let state_of = |t: &Entry| match (t.status, t.reversed_by) {
        (_, Some(r)) => format!("{} (reversed by {r})", t.status.as_str()),
        (s, None) => s.as_str().to_owned(),
    };
    match d {
        Decision::Approve { note, .. } => {
            if !(payable && target.status == Status::Pending) {
                refuse(e, format!("{what} is {}, not pending", state_of(&target)), state, out);
                return Ok(());
            }
            let awaiting = target.approve_at_ms.is_none() && target.confirmed_by.is_none();
            if awaiting {
                // Awaiting the merchant (or a browser's report under review): the operator
                // confirms it in the merchant's place.
                target.confirmed_by = Some(seq);
            } else if let Some(at) = target.approve_at_ms {
                state.remove_hold(at, target.id);
            }
            target.status = Status::Approved;
            target.reason = Reason::None;
            target.approved_seq = Some(seq);
            e.rule = format!(
                "{what} approved early by {actor}{}",
                if note.is_empty() { String::new() } else { format!(": {note}") }
            );
        }
        Decision::Reject { reason, .. } => match target.status {
            Status::Pending if payable => {
                if let Some(at) = target.approve_at_ms {
                    state.remove_hold(at, target.id);
                }
                target.status = Status::Rejected;
                target.reason = Reason::OperatorRejected;
                target.reversed_by = Some(seq);
                e.reason = Reason::OperatorRejected;
                e.rule = format!("{what} rejected by {actor}: {reason}");
                take_back_counts(state, &target)?;
            }
            Status::Approved if payable => {
                target.reversed_by = Some(seq);
                e.kind = Kind::Clawback;
                e.reason = Reason::OperatorRejected;
                e.amount = target.amount.saturating_neg();
                e.rule = format!(
                    "{what} rejected by {actor}: {reason}; clawback {}",
                    format_minor(e.amount, target.currency)
                );
                take_back_counts(state, &target)?;
            }
            _ => {
                refuse(e, format!("{what} is {}: nothing to reject", state_of(&target)), state, out);
                return Ok(());
            }
        },
        Decision::Adjust { amount, reason, .. } => {
            if !(payable && matches!(target.status, Status::Pending | Status::Approved)) {
                refuse(e, format!("{what} is {}: nothing to adjust", state_of(&target)), state, out);
                return Ok(());
            }
            if let Some(p) = target.paid_in() {
                let why = format!("{what} was paid in payout {p}: reject it (a clawback) or pay a bonus instead");
                refuse(e, why, state, out);
                return Ok(());
            }
            let new = match parse_minor(amount, target.currency, false) {
                Ok(a) => a,
                Err(err) => {
                    refuse(e, format!("amount \"{amount}\": {err}"), state, out);
                    return Ok(());
                }
            };
            let before = target.amount;
            target.adjustments.push(Adjustment { seq, before });
            target.amount = new;
            e.rule = format!(
                "{what} adjusted from {} to {} by {actor}: {reason}",
                format_minor(before, target.currency),
                format_minor(new, target.currency)
            );
            let row = state.stats_mut(StatsKeyRef {
                day: stats_day(state, target.ts_ms),
                offer: &target.offer,
                affiliate: &target.affiliate,
                sub1: &target.sub1,
            });
            add_conversion(row, 0, 0, new.saturating_sub(before), target.currency);
        }
        Decision::Bonus { .. } | Decision::Payout { .. } | Decision::VoidPayout { .. } => {}
    }
    finish(state, target, out);
    finish(state, e, out);
    Ok(())
}

/// The key that claims a payout ID for the payout run that used it, in the `dedup` family
/// beside transaction keys (which start with a zero byte) and customer bindings (`0xfe`).
fn payout_key(payout: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + payout.len());
    k.push(0xfd);
    k.extend_from_slice(payout.as_bytes());
    k
}

/// What a payout run decision names.
struct PayoutRun<'a> {
    payout: &'a str,
    up_to: &'a str,
    affiliates: &'a [String],
    group: &'a str,
    note: &'a str,
}

/// A payout run (`tally_model::Decision::Payout`): the ledger's approved, unpaid entries
/// made up to the run's end, of the affiliates it names (by list or group; all if neither),
/// summed per affiliate and currency; each sum that is positive and reaches the affiliate's
/// minimum (`Program::payout_minimum_for`) is paid: its entries get a [`Payment`] mark.
/// The rest wait for a later run. The run's own entry, kind `payout` with the payout ID as
/// `txid`, pays nothing and says what was paid; a payout ID is used once, ever.
fn payout_run(
    state: &mut State,
    seq: u64,
    ts_ms: u64,
    actor: &str,
    digest: &str,
    run: &PayoutRun<'_>,
    out: &mut Outputs,
) -> Result<(), AttributionError> {
    let Some(program) = state.program.clone() else {
        tracing::warn!(seq, "payout run with no program in force: no entry");
        return Ok(());
    };
    let fallback = program.offers.values().next().map(|o| o.currency);
    let key = payout_key(run.payout);
    let earlier = state.dedup(&key)?;
    let mut lines: BTreeMap<(String, Currency), (i64, Vec<Entry>)> = BTreeMap::new();
    let end = tally_model::decision::up_to_end_ms(run.up_to);
    if let (None, Some(end)) = (earlier, end) {
        let chosen = |a: &str| {
            (run.affiliates.is_empty() || run.affiliates.iter().any(|x| x == a))
                && (run.group.is_empty()
                    || program.affiliates.get(a).and_then(|x| x.group.as_deref()) == Some(run.group))
        };
        state.for_each_entry(|e| {
            if e.payable() && e.ts_ms < end && chosen(&e.affiliate) {
                let line = lines.entry((e.affiliate.clone(), e.currency)).or_default();
                line.0 = line.0.saturating_add(e.amount);
                line.1.push(e.clone());
            }
        })?;
    }
    let currency = lines.keys().next().map(|(_, c)| *c).or(fallback);
    let Some(currency) = currency else {
        tracing::warn!(seq, "payout run with a program that has no offer: no entry");
        return Ok(());
    };
    let mut e = Entry {
        kind: Kind::Payout,
        txid: run.payout.to_owned(),
        approved_seq: Some(seq),
        ..decision_entry(seq, ts_ms, digest, currency)
    };
    let not_applied = |e: &mut Entry, why: String| {
        e.status = Status::Rejected;
        e.reason = Reason::NotApplicable;
        e.approved_seq = None;
        e.rule = format!("payout {} by {actor} not applied: {why}", run.payout);
    };
    if let Some(first) = earlier {
        not_applied(&mut e, format!("payout ID {} was used by entry {first}", run.payout));
        finish(state, e, out);
        return Ok(());
    }
    if end.is_none() {
        not_applied(&mut e, format!("up_to \"{}\" is not a date or time", run.up_to));
        finish(state, e, out);
        return Ok(());
    }
    state.put_dedup(key, e.id);
    let (mut paid_lines, mut paid_entries, mut below) = (0u64, 0u64, 0u64);
    let mut totals: BTreeMap<Currency, i64> = BTreeMap::new();
    for ((affiliate, cur), (total, entries)) in lines {
        if total <= 0 || total < program.payout_minimum_for(&affiliate, cur) {
            below += 1;
            continue;
        }
        paid_lines += 1;
        let sum = totals.entry(cur).or_default();
        *sum = sum.saturating_add(total);
        for mut paid in entries {
            paid.payments.push(Payment { seq, payout: run.payout.to_owned() });
            paid_entries += 1;
            finish(state, paid, out);
        }
    }
    let totals = totals.iter().map(|(c, v)| format!("{c} {}", format_minor(*v, *c))).collect::<Vec<_>>().join(", ");
    e.rule = format!(
        "payout {} by {actor} up to {}: {paid_lines} balance(s) paid in {paid_entries} entries{}{}{}",
        run.payout,
        run.up_to,
        if totals.is_empty() { String::new() } else { format!(" ({totals})") },
        if below == 0 { String::new() } else { format!("; {below} below the minimum or not positive, carried over") },
        if run.note.is_empty() { String::new() } else { format!("; {}", run.note) },
    );
    finish(state, e, out);
    Ok(())
}

/// The void of a payout run: the entries it paid are unpaid again (a void [`Payment`]
/// mark), the run's entry is `reversed_by` the void, and the void's own entry, a `decision`,
/// refers to it.
#[allow(clippy::too_many_arguments)]
fn void_payout(
    state: &mut State,
    seq: u64,
    ts_ms: u64,
    actor: &str,
    digest: &str,
    payout: &str,
    reason: &str,
    out: &mut Outputs,
) -> Result<(), AttributionError> {
    let run = match state.dedup(&payout_key(payout))? {
        Some(id) => state.entry(id)?,
        None => None,
    };
    let Some(mut run) = run else {
        tracing::warn!(seq, payout = %payout, "void of a payout run not in the ledger: no entry");
        return Ok(());
    };
    let mut e = Entry {
        refers_to: Some(run.id),
        txid: payout.to_owned(),
        approved_seq: Some(seq),
        ..decision_entry(seq, ts_ms, digest, run.currency)
    };
    if run.status != Status::Approved || run.reversed_by.is_some() {
        e.status = Status::Rejected;
        e.reason = Reason::NotApplicable;
        e.approved_seq = None;
        let why = match run.reversed_by {
            Some(r) => format!("it was voided by {r}"),
            None => "it paid nothing".to_owned(),
        };
        e.rule = format!("void of payout {payout} by {actor} not applied: {why}");
        finish(state, e, out);
        return Ok(());
    }
    let mut unpaid = Vec::new();
    state.for_each_entry(|x| {
        if x.paid_in() == Some(payout) {
            unpaid.push(x.clone());
        }
    })?;
    e.rule = format!("payout {payout} voided by {actor}: {reason}; {} entries unpaid again", unpaid.len());
    for mut x in unpaid {
        x.payments.push(Payment { seq, payout: String::new() });
        finish(state, x, out);
    }
    run.reversed_by = Some(seq);
    finish(state, run, out);
    finish(state, e, out);
    Ok(())
}

/// The entry of an operator's decision at `seq`, before what it decided is filled in.
fn decision_entry(seq: u64, ts_ms: u64, program: &str, currency: Currency) -> Entry {
    Entry {
        id: EntryId::of_event(seq),
        kind: Kind::Decision,
        status: Status::Approved,
        reason: Reason::None,
        ts_ms,
        offer: String::new(),
        goal: String::new(),
        affiliate: String::new(),
        click_id: None,
        coupon: String::new(),
        sub1: String::new(),
        txid: String::new(),
        sale_amount: None,
        amount: 0,
        currency,
        rule: String::new(),
        program: program.to_owned(),
        approve_at_ms: None,
        approved_seq: None,
        refers_to: None,
        reversed_by: None,
        confirmed_by: None,
        source: Source::Operator,
        adjustments: Vec::new(),
        payments: Vec::new(),
        link: String::new(),
    }
}

/// What a rejected commission no longer counts: its month's rank (later conversions may fall
/// in a lower tier) and its stats (conversion, revenue, payout), as a refund takes them back.
fn take_back_counts(state: &mut State, target: &Entry) -> Result<(), AttributionError> {
    if target.kind != Kind::Commission {
        let row = state.stats_mut(StatsKeyRef {
            day: stats_day(state, target.ts_ms),
            offer: &target.offer,
            affiliate: &target.affiliate,
            sub1: &target.sub1,
        });
        add_conversion(row, 0, 0, target.amount.saturating_neg(), target.currency);
        return Ok(());
    }
    // The month as the program in force names it. Had the program's time zone changed since
    // the commission was credited, a conversion within hours of a month's end could be
    // counted in one month and taken back from the other (README, The program file: time_zone).
    let day = local_day(state, target.ts_ms);
    let mkey = keys::month(month_of_day(day), &target.offer, &target.goal, &target.affiliate);
    state.add_counter(&mkey, -1)?;
    // Credited conversions are in the offer's currency, so their sale amount was revenue.
    let revenue = target.sale_amount.unwrap_or(0);
    let row = state.stats_mut(StatsKeyRef {
        day: stats_day(state, target.ts_ms),
        offer: &target.offer,
        affiliate: &target.affiliate,
        sub1: &target.sub1,
    });
    add_conversion(row, -1, revenue.saturating_neg(), target.amount.saturating_neg(), target.currency);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::revshare;

    #[test]
    fn revshare_rounds_half_to_even() {
        // 8% of 100.00 = 8.00
        assert_eq!(revshare(10_000, 800), 800);
        // 1% of 0.50 = 0.005 -> 0.00 (0 is even); of 1.50 = 0.015 -> 0.02 (2 is even)
        assert_eq!(revshare(50, 100), 0);
        assert_eq!(revshare(150, 100), 2);
        // 0.025 -> 0.02, 0.035 -> 0.04
        assert_eq!(revshare(250, 100), 2);
        assert_eq!(revshare(350, 100), 4);
        // below and above the half
        assert_eq!(revshare(149, 100), 1);
        assert_eq!(revshare(151, 100), 2);
        // negative amounts mirror positive ones
        assert_eq!(revshare(-150, 100), -2);
        assert_eq!(revshare(-250, 100), -2);
        assert_eq!(revshare(i64::MAX, 10_000), i64::MAX);
        assert_eq!(revshare(i64::MAX, 0), 0);
    }
}
