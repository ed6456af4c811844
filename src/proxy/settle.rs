//! How a request ends: what is known about it (`Exchange`), how it ended (`Outcome`), and
//! settling it: its outcome priced into the ledger record (the estimate counted off the
//! async workers when needed, never more billed than its hold covers), the key's
//! reservation and the account's hold settled, and the record committed before the
//! response is let go.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use super::request::ClientRequest;
use crate::auth::Caller;
use crate::billing::record::{Attempt, Reported, Status, UsageRecord, UsageSource};
use crate::billing::{PriceTiers, Quantities, TokenCounts, Units, cost_of};
use crate::dialect::observe::Observed;
use crate::limits::Admission;
use crate::limits::spending::Hold;
use crate::metering::LedgerError;
use crate::metering::estimate;
use crate::server::ApiError;
use crate::state::AppState;
use crate::upstream::Upstream;
/// Everything known about a request before it goes upstream.
pub struct Exchange {
    pub request_id: String,
    /// Which kind of client route it came by (a metric label).
    pub route: &'static str,
    pub caller: Caller,
    pub request: ClientRequest,
    /// Backends to try, in order; later ones only if earlier ones refuse the connection.
    pub candidates: Vec<Arc<Upstream>>,
    pub started: Instant,
    pub started_at: DateTime<Utc>,
    /// What the limits granted; settled against the real usage at the end.
    pub admission: Admission,
    /// What the account's spending limit holds for this request; released at the end.
    pub hold: Option<Hold>,
    /// tollgate's count of the prompt when it is known already (a task's, counted at its
    /// submission; `request` is then not the submission).
    pub prompt_estimate: Option<u64>,
}

/// How a request ended, before it is priced.
pub struct Outcome {
    pub status: Status,
    pub http_status: u16,
    pub error: Option<String>,
    pub observed: Observed,
    pub ttft: Option<Duration>,
}

impl Outcome {
    /// Whether the request produced anything billable: it completed, or text reached the
    /// client.
    pub fn produced(&self) -> bool {
        self.status == Status::Ok || !self.observed.delivered_text.is_empty()
    }

    /// A whole answer (200), with what was seen of it.
    pub fn completed(observed: Observed) -> Outcome {
        Outcome {
            status: Status::Ok,
            http_status: 200,
            error: None,
            observed,
            ttft: None,
        }
    }

    pub fn failed(status: Status, error: &ApiError) -> Outcome {
        Outcome {
            status,
            http_status: error.status().as_u16(),
            error: Some(error.to_string()),
            observed: Observed::default(),
            ttft: None,
        }
    }
}

/// The backend chosen for a request, the price it is billed at (the version of the tier
/// its billed prompt falls in), and the backends passed over before it.
pub struct Served {
    pub upstream: Arc<Upstream>,
    pub price: Arc<PriceTiers>,
    pub passed_over: Vec<Attempt>,
}

impl Served {
    pub fn new(upstream: Arc<Upstream>, price: Arc<PriceTiers>) -> Served {
        Served {
            upstream,
            price,
            passed_over: Vec::new(),
        }
    }
}

/// Prices the outcome, settles the key's token reservation, and commits the record.
pub(super) async fn commit(
    state: &AppState,
    ex: &Exchange,
    served: &Served,
    outcome: Outcome,
) -> Result<(), LedgerError> {
    let ttft = outcome.ttft;
    let max_reported = state.config().metering.max_reported_tokens;
    let estimate = ex.estimate_if_needed(&outcome, max_reported).await;
    // In a block: the record is not kept in this function's future while it waits.
    let (cost, committing) = {
        let record = ex.record(served, outcome, estimate, max_reported);
        let duration = ex.started.elapsed();
        let pair = served.upstream.metrics(state.metrics());
        state
            .metrics()
            .observe(pair, ex.route, &record, duration, ttft);
        let used = record
            .tokens
            .prompt
            .saturating_add(record.tokens.completion);
        state.limits().settle(&ex.caller, &ex.admission, used);
        (record.cost, state.ledger().commit(record))
    };
    let committed = committing.await;
    match &committed {
        // Charged once its record is in the journal: a ledger read after a flush then
        // holds it (`LocalSpending`'s reads count on that).
        Ok(()) => (state.spending()).settle(&ex.request_id, ex.caller.account_id, ex.hold, cost),
        Err(e) => {
            tracing::error!(request_id = %ex.request_id, error = %e, "usage record not written")
        }
    }
    committed
}

/// Commits the outcome's record, and only then lets `response` go. If the record cannot be
/// written the client gets a 503 instead: nothing is served unbilled.
pub(super) async fn finish(
    state: &AppState,
    ex: &Exchange,
    served: &Served,
    outcome: Outcome,
    response: Response,
) -> Response {
    match commit(state, ex, served, outcome).await {
        Ok(()) => response,
        Err(_) => {
            // Not recorded, not charged: the hold goes back.
            (state.spending()).release(&ex.request_id, ex.caller.account_id, ex.hold);
            ApiError::Unavailable(
                "the usage of this request could not be recorded; it was not billed".into(),
            )
            .into_response()
        }
    }
}

/// Ends a request that failed with `error`: its record (as `status`) committed, then the
/// error answered.
pub(super) async fn fail(
    state: &AppState,
    ex: &Exchange,
    served: &Served,
    status: Status,
    error: ApiError,
) -> Response {
    let outcome = Outcome::failed(status, &error);
    finish(state, ex, served, outcome, error.into_response()).await
}

impl Exchange {
    /// A new request id: `req_` and a UUIDv7, time-ordered to the millisecond, its 74
    /// random bits from the thread's generator (uuid's own `now_v7` asks the kernel for
    /// them on every call). Its hex is written into a buffer on the stack: `format!`'s
    /// machinery took 880 instructions a request.
    pub fn new_id(at: DateTime<Utc>) -> String {
        let millis = u64::try_from(at.timestamp_millis()).unwrap_or_default();
        let id = uuid::Builder::from_unix_timestamp_millis(millis, &rand::random()).into_uuid();
        let mut text = String::with_capacity(36);
        text.push_str("req_");
        text.push_str(id.simple().encode_lower(&mut uuid::Uuid::encode_buffer()));
        text
    }

    /// Returns the key's token reservation and the account's spending hold unused, for a
    /// request that ends without a record.
    pub fn release(&self, state: &AppState) {
        state.limits().settle(&self.caller, &self.admission, 0);
        state
            .spending()
            .release(&self.request_id, self.caller.account_id, self.hold);
    }

    /// The `max_tokens` a backend is sent when the client set none: what the spending
    /// hold covers per answer. `None` without a hold (nothing to protect) or without completions.
    pub fn completion_limit(&self) -> Option<u64> {
        let hold = self.hold?;
        self.request
            .call
            .endpoint
            .completes()
            .then(|| hold.tokens.completion / self.request.choices.max(1))
    }

    /// tollgate's own count of the request's tokens, when the record will need it (no usage
    /// reported, or usage beyond belief), counted on a blocking thread: tokenizing a long
    /// prompt takes far longer than an async worker may be held.
    pub async fn estimate_if_needed(
        &self,
        outcome: &Outcome,
        max_reported: u64,
    ) -> Option<TokenCounts> {
        let needed = match outcome.observed.usage {
            Some(usage) => is_suspect(usage, max_reported),
            None => outcome.produced(),
        };
        if !needed {
            return None;
        }
        let prompt = self.request.prompt();
        let known = self.prompt_estimate;
        let delivered = outcome.observed.delivered_text.clone();
        let count = move || TokenCounts {
            prompt: known.unwrap_or_else(|| prompt.estimate()),
            completion: estimate::count_text(&delivered),
            ..TokenCounts::default()
        };
        match tokio::task::spawn_blocking(count).await {
            Ok(tokens) => Some(tokens),
            Err(e) => {
                tracing::error!(request_id = %self.request_id, error = %e, "token estimate failed");
                Some(TokenCounts {
                    prompt: self.request.prompt_bound(),
                    completion: outcome.observed.delivered_text.len() as u64,
                    ..TokenCounts::default()
                })
            }
        }
    }

    /// Prices an outcome into the ledger record. `estimate` is `estimate_if_needed`'s.
    /// What is billed: the reported usage; the estimate when none was reported or the
    /// reported one is beyond `max_reported`; and never more than the spending hold covers.
    pub fn record(
        &self,
        served: &Served,
        outcome: Outcome,
        estimate: Option<TokenCounts>,
        max_reported: u64,
    ) -> UsageRecord {
        let produced = outcome.produced();
        let Outcome {
            status,
            http_status,
            mut error,
            observed,
            ttft,
        } = outcome;
        let estimate = estimate.unwrap_or_default();
        let (mut tokens, mut usage_source) = match observed.usage {
            Some(tokens) if is_suspect(tokens, max_reported) => {
                error.get_or_insert_with(|| {
                    usage_note(
                        "the backend reported",
                        tokens,
                        "more than one request can have",
                    )
                });
                (estimate, UsageSource::Suspect)
            }
            Some(tokens) => (tokens, UsageSource::Reported),
            None if produced => (estimate, UsageSource::Estimated),
            None => (TokenCounts::default(), UsageSource::None),
        };
        let came = observed.usage.unwrap_or(tokens);
        if let Some(hold) = self.hold {
            let capped = tokens.capped(hold.tokens);
            if capped != tokens {
                let who = match usage_source {
                    UsageSource::Reported => "the backend reported",
                    _ => "tollgate estimated",
                };
                error.get_or_insert_with(|| {
                    usage_note(who, tokens, "more than the spending hold covers")
                });
                if usage_source == UsageSource::Reported {
                    usage_source = UsageSource::Capped;
                }
                tokens = capped;
            }
        }
        let completed = status == Status::Ok;
        // The images it made (an image generation's), or those it was sent (a vision
        // model's input), and its tasks: billed only when it completed.
        let mut units = if completed {
            Units {
                images: observed
                    .units
                    .images
                    .saturating_add(self.request.input_images),
                ..observed.units
            }
        } else {
            Units::default()
        };
        let came = Reported {
            tokens: came,
            units,
        };
        // The tier its billed prompt falls in: the hold covered the dearest it could reach.
        let price = served.price.for_prompt(tokens.prompt);
        let mut cost = cost_of(price, tokens, units, completed).unwrap_or_else(|_| {
            // Only prices beyond the bounds checked at start-up get here.
            tracing::error!(request_id = %self.request_id, "cost out of range; billed nothing");
            Decimal::ZERO
        });
        // Whatever it made (images, a task's usage), a record never costs more than its
        // hold: the rest is not billed, and the note keeps what was reported.
        if let Some(hold) = self.hold
            && cost > hold.amount
        {
            let asked = Quantities {
                tokens,
                requests: u64::from(completed),
                units,
            };
            let billed = asked.within(price, hold.amount);
            if let Ok((billed, billed_cost)) = billed.and_then(|b| Ok((b, b.cost(price)?))) {
                let note = format!(
                    "{} prompt ({} cached) and {} completion tokens, {} images and {} ms of compute costing {} CNY were reported, more than the spending hold of {} CNY covers",
                    tokens.prompt,
                    tokens.cached,
                    tokens.completion,
                    units.images,
                    units.compute_ms,
                    cost,
                    hold.amount
                );
                error.get_or_insert(note);
                if matches!(usage_source, UsageSource::Reported | UsageSource::None) {
                    usage_source = UsageSource::Capped;
                }
                (tokens, units, cost) = (billed.tokens, billed.units, billed_cost);
            }
        }
        let reported = (came.tokens != tokens || came.units != units).then_some(came);
        let ended_at = Utc::now();
        let up = &served.upstream;
        UsageRecord {
            request_id: self.request_id.clone(),
            account_id: self.caller.account_id,
            key_id: self.caller.key_id,
            model: up.model.clone(),
            chip: up.chip.clone(),
            deployment: up.deployment.clone(),
            endpoint: Cow::Borrowed(self.request.call.records),
            stream: self.request.stream,
            status,
            http_status,
            error,
            tokens,
            units,
            usage_source,
            price_version_id: price.id,
            cost,
            blocked: observed.blocked,
            moderation: observed.moderation,
            started_at: self.started_at,
            ended_at,
            latency_ms: self.started.elapsed().as_millis() as i64,
            ttft_ms: ttft.map(|t| t.as_millis() as i64),
            attempts: served.passed_over.clone(),
            reported,
        }
    }
}

/// Reported usage beyond what one request can have.
fn is_suspect(tokens: TokenCounts, max_reported: u64) -> bool {
    tokens.prompt > max_reported || tokens.completion > max_reported
}

/// The note a record keeps of counts it did not bill as they were.
fn usage_note(who: &str, tokens: TokenCounts, why: &str) -> String {
    format!(
        "{who} {} prompt ({} cached) and {} completion tokens, {why}",
        tokens.prompt, tokens.cached, tokens.completion
    )
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn request_ids_are_req_and_a_uuid_v7_of_their_millisecond() {
        let at = Utc.timestamp_opt(1_796_000_000, 123_456_789).unwrap();
        let id = Exchange::new_id(at);
        let hex = id.strip_prefix("req_").unwrap();
        assert_eq!(hex.len(), 32);
        assert!(
            hex.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
        let uuid = uuid::Uuid::parse_str(hex).unwrap();
        assert_eq!(uuid.get_version_num(), 7);
        let (secs, nanos) = uuid.get_timestamp().unwrap().to_unix();
        assert_eq!((secs, nanos), (1_796_000_000, 123_000_000));
        assert_ne!(Exchange::new_id(at), id);
    }
}
