//! Per-key limits: requests per minute and tokens per minute, each one pure function
//! (`gcra`, `bucket`: state, time and quota in; verdict and state out), and the
//! `x-ratelimit-*` headers that report them. Where the state is kept is the store: this
//! process (`local`, over `requests` and `tokens`), or Redis for every replica (`redis`,
//! whose Lua does the same arithmetic), wrapped with the local counts as its fallback while
//! Redis is down (`shared`). A refusal is a verdict (`Error::RateLimited` with its
//! headers); the HTTP edge writes the 429.

pub mod bucket;
pub mod gcra;
mod local;
pub mod plans;
pub mod redis;
pub mod requests;
mod shared;
mod slices;
pub mod spending;
pub mod tokens;
pub mod windows;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::auth::Caller;
use crate::billing::TokenCounts;
use crate::config::{LimitStoreKind, LimitsConfig, PlanHolder, RedisConfig};
use crate::error::Error;
use local::LocalCounts;
use plans::{History, Holder, Plans, Ticket};
pub use requests::{RequestLimits, RequestQuota};
use shared::Shared;
pub use tokens::{TokenLimits, TokenQuota};
use windows::{Unit, Verdict};

pub struct Limits {
    config: LimitsConfig,
    /// The counts of this process: the store, or the shared store's fallback.
    local: LocalCounts,
    /// `Some` with `limits.store = "redis"`: counted in Redis for every replica.
    shared: Option<Shared>,
    /// Replicas alive now (heartbeats in the ledger): the fallback gives each replica its
    /// share of a key's limit.
    replicas: AtomicU32,
    /// Reads of a key's own usage, per key (`limits.usage_rpm`), in this process.
    usage_reads: RequestLimits,
    /// Polls of asynchronous tasks, per key (`limits.poll_rpm`), in this process.
    task_polls: RequestLimits,
    /// Quota plans over rolling windows, per account or key.
    plans: Plans,
}

/// A plan as a key reads it at `GET /v1/usage`.
#[derive(Debug, serde::Serialize)]
pub struct PlanView {
    pub name: String,
    pub per: PlanHolder,
    pub windows: Vec<WindowView>,
}

#[derive(Debug, serde::Serialize)]
pub struct WindowView {
    pub window: String,
    pub unit: &'static str,
    pub limit: u64,
    pub remaining: u64,
    /// Until the window counts nothing.
    pub reset_seconds: u64,
}

/// One count of a request against a key's limits: refused if either quota has a
/// `retry_after`.
#[derive(Debug, Clone, Copy)]
pub struct Counted {
    pub requests: RequestQuota,
    /// `None` when the key has no token limit (or the request was refused before it).
    pub tokens: Option<TokenQuota>,
}

/// What admission granted a request: reported in its headers, settled at its end.
#[derive(Debug, Clone, Copy)]
pub struct Admission {
    pub requests: RequestQuota,
    /// The key's tpm and the tokens reserved, when the key has a token limit.
    pub tokens: Option<(TokenQuota, u64, u64)>,
    /// Counted in Redis (settled there), not in this process.
    in_redis: bool,
    /// The account's plan, where its count was kept (its tokens are counted at the end).
    plan: Option<Ticket>,
    /// The plan's token window with the least left, when it has less than the key's tpm.
    plan_tokens: Option<TokenQuota>,
}

impl Admission {
    /// The quotas the `x-ratelimit-*` headers report: the tightest of the key's limits and
    /// its plan's windows.
    pub fn shown(&self) -> (RequestQuota, Option<TokenQuota>) {
        let tokens = self.plan_tokens.or(self.tokens.map(|(quota, _, _)| quota));
        (self.requests, tokens)
    }
}

impl Admission {
    /// Nothing counted and nothing reserved: what settling a task's end needs (its
    /// submission was the request the limits counted).
    pub fn nothing() -> Admission {
        Admission {
            requests: RequestQuota {
                limit: 0,
                remaining: 0,
                reset: Duration::ZERO,
                retry_after: None,
            },
            tokens: None,
            in_redis: false,
            plan: None,
            plan_tokens: None,
        }
    }
}

impl Limits {
    /// Limits counted where `config.store` says; Redis's failures count in `errors`.
    /// `history` reads a plan holder's past usage from the ledger.
    pub fn new(
        config: LimitsConfig,
        redis: &RedisConfig,
        errors: prometheus::IntCounter,
        history: History,
    ) -> anyhow::Result<Limits> {
        let shared = match config.store {
            LimitStoreKind::Local => None,
            LimitStoreKind::Redis => Some(Shared::new(redis, errors)?),
        };
        Ok(Limits {
            plans: Plans::new(&config.plans, history),
            config,
            local: LocalCounts::default(),
            shared,
            replicas: AtomicU32::new(1),
            usage_reads: RequestLimits::new(),
            task_polls: RequestLimits::new(),
        })
    }

    /// How many replicas are alive (at least 1), for the fallback's shares.
    pub fn set_live_replicas(&self, n: u32) {
        self.replicas.store(n.max(1), Ordering::Relaxed);
    }

    pub fn live_replicas(&self) -> u32 {
        self.replicas.load(Ordering::Relaxed)
    }

    /// Whether limits are counted by the fallback now (Redis configured and not answering).
    pub fn in_fallback(&self) -> bool {
        self.shared.as_ref().is_some_and(Shared::in_fallback)
    }

    /// Counts a request of key lineage `id` where the limits are kept: in this process, or
    /// shared in Redis (with its fallback); whether it was counted in Redis comes with it.
    async fn count(
        &self,
        id: i64,
        rpm: u32,
        tpm: Option<u64>,
        reserve: u64,
        look: bool,
    ) -> Result<(Counted, bool), Error> {
        match &self.shared {
            Some(shared) => {
                let share = self.live_replicas();
                shared
                    .count(&self.local, share, id, rpm, tpm, reserve, look)
                    .await
            }
            None if look => Ok((self.local.peek(id, rpm, tpm), false)),
            None => Ok((self.local.admit(id, rpm, tpm, reserve), false)),
        }
    }

    /// Counts a request to a backend with its own limit (`upstreams[].rpm`) where every
    /// replica sees it: in Redis with `limits.store = "redis"`. `None` where the count is
    /// this process's (no Redis, or Redis not answering): the backend's own counter then.
    pub async fn admit_backend(&self, name: &str, rpm: u32) -> Option<Result<(), Duration>> {
        self.shared.as_ref()?.admit_backend(name, rpm).await
    }

    pub fn rpm(&self, caller: &Caller) -> u32 {
        caller.key.limits.rpm.unwrap_or(self.config.default_rpm)
    }

    pub fn tpm(&self, caller: &Caller) -> Option<u64> {
        caller.key.limits.tpm.or(self.config.default_tpm)
    }

    /// Counts the request against the key's limits; 429 (with the headers) when over.
    /// `worst` gives the most the request can use (`ClientRequest::worst_case`); it is
    /// asked only when the key has a token limit.
    pub async fn admit(
        &self,
        caller: &Caller,
        worst: impl FnOnce() -> TokenCounts,
    ) -> Result<Admission, Error> {
        let tpm = self.tpm(caller);
        let reserve = match tpm {
            Some(_) => {
                let worst = worst();
                worst.prompt.saturating_add(worst.completion)
            }
            None => 0,
        };
        let (counted, in_redis) = self
            .count(caller.limit_id(), self.rpm(caller), tpm, reserve, false)
            .await?;
        let requests = counted.requests;
        if let Some(wait) = requests.retry_after {
            let mut headers = HeaderMap::new();
            put_headers(&mut headers, &requests, None);
            return Err(throttled(
                "requests per minute",
                requests.limit.into(),
                wait,
                headers,
            ));
        }
        let tokens = match (tpm, counted.tokens) {
            (Some(tpm), Some(tokens)) => {
                if let Some(wait) = tokens.retry_after {
                    let mut headers = HeaderMap::new();
                    put_headers(&mut headers, &requests, Some(&tokens));
                    return Err(throttled("tokens per minute", tokens.limit, wait, headers));
                }
                Some((tokens, tpm, reserve))
            }
            _ => None,
        };
        let mut admission = Admission {
            requests,
            tokens,
            in_redis,
            plan: None,
            plan_tokens: None,
        };
        if let Some(index) = self.plans.of(&caller.key.account) {
            let holder = self.holder(index, caller);
            let shared = self.shared.as_ref();
            let counted = self
                .plans
                .count(shared, self.live_replicas(), index, holder, false)
                .await;
            let refused = match counted {
                Ok((true, verdicts, ticket)) => {
                    admission.plan = Some(ticket);
                    self.show_tightest(&mut admission, index, &verdicts);
                    None
                }
                Ok((false, verdicts, _)) => Some(self.over_quota(index, &verdicts)),
                Err(e) => Some(e),
            };
            if let Some(refused) = refused {
                // The tokens reserved for it go back.
                self.settle(caller, &admission, 0);
                return Err(refused);
            }
        }
        Ok(admission)
    }

    /// Puts the plan's tightest windows in the admission's headers where they have less
    /// left than the key's rpm and tpm.
    fn show_tightest(&self, admission: &mut Admission, index: usize, verdicts: &[Verdict]) {
        let windows = &self.plans.plan(index).windows;
        let tightest = |unit: Unit| {
            windows
                .iter()
                .zip(verdicts)
                .filter(|(w, _)| w.unit == unit)
                .min_by_key(|(_, v)| v.remaining)
        };
        let micros = |us: i64| Duration::from_micros(us.max(0) as u64);
        if let Some((w, v)) = tightest(Unit::Requests)
            && v.remaining < u64::from(admission.requests.remaining)
        {
            admission.requests = RequestQuota {
                limit: u32::try_from(w.limit).unwrap_or(u32::MAX),
                remaining: v.remaining as u32,
                reset: micros(v.reset_us),
                retry_after: None,
            };
        }
        if let Some((w, v)) = tightest(Unit::Tokens)
            && admission
                .tokens
                .is_none_or(|(t, _, _)| v.remaining < t.remaining)
        {
            admission.plan_tokens = Some(TokenQuota {
                limit: w.limit,
                remaining: v.remaining,
                reset: micros(v.reset_us),
                retry_after: None,
            });
        }
    }

    /// The 429 of a plan's window without room: the one that frees up last names itself.
    fn over_quota(&self, index: usize, verdicts: &[Verdict]) -> Error {
        let plan = self.plans.plan(index);
        let (window, verdict) = plan
            .windows
            .iter()
            .zip(verdicts)
            .max_by_key(|(_, v)| v.retry_us)
            .expect("a plan has a window");
        let mut headers = HeaderMap::new();
        let micros = |us: i64| Duration::from_micros(us.max(0) as u64);
        let quota = RequestQuota {
            limit: u32::try_from(window.limit).unwrap_or(u32::MAX),
            remaining: 0,
            reset: micros(verdict.reset_us),
            retry_after: None,
        };
        let (unit, header) = match window.unit {
            Unit::Requests => ("requests", "requests"),
            Unit::Tokens => ("tokens", "tokens"),
        };
        match window.unit {
            Unit::Requests => put_headers(&mut headers, &quota, None),
            Unit::Tokens => {
                let tokens = TokenQuota {
                    limit: window.limit,
                    remaining: 0,
                    reset: quota.reset,
                    retry_after: None,
                };
                let mut all = HeaderMap::new();
                put_headers(&mut all, &quota, Some(&tokens));
                for (name, value) in &all {
                    if name.as_str().ends_with(header) {
                        headers.insert(name.clone(), value.clone());
                    }
                }
            }
        }
        let (name, limit, span) = (&plan.name, window.limit, window.label());
        retry_later(micros(verdict.retry_us), headers, |seconds| {
            format!(
                "quota of {limit} {unit} per {span} reached for plan '{name}'; retry after {seconds}s"
            )
        })
    }

    /// Counts a read of the key's own usage (`GET /v1/usage`) against its own per-key
    /// limit, `limits.usage_rpm` (each read makes the ledger import first, so it is not
    /// free); it spends nothing of the key's rpm. 429 (with the headers) when over.
    pub fn admit_usage_read(&self, caller: &Caller) -> Result<RequestQuota, Error> {
        let rpm = self.config.usage_rpm;
        side_count(&self.usage_reads, caller, rpm, "usage reads per minute")
    }

    /// Counts a poll of an asynchronous task against the key's `limits.poll_rpm` (apart
    /// from its rpm, which counted the submission). 429 when over.
    pub fn admit_poll(&self, caller: &Caller) -> Result<RequestQuota, Error> {
        let rpm = self.config.poll_rpm;
        side_count(&self.task_polls, caller, rpm, "task polls per minute")
    }

    /// Gives back (or takes) the difference between the reservation and the real usage,
    /// where it was counted (in Redis, in the background: the response does not wait).
    pub fn settle(&self, caller: &Caller, admission: &Admission, used: u64) {
        if let Some(ticket) = admission.plan {
            self.plans.spend(self.shared.as_ref(), ticket, used);
        }
        let Some((_, tpm, reserved)) = admission.tokens else {
            return;
        };
        let id = caller.limit_id();
        match (&self.shared, admission.in_redis) {
            (Some(shared), true) => shared.settle(id, tpm, reserved, used),
            _ => self.local.settle(id, tpm, reserved, used),
        }
    }

    /// The key's quotas now, without consuming anything (for `GET /v1/usage`).
    pub async fn peek(&self, caller: &Caller) -> Result<(RequestQuota, Option<TokenQuota>), Error> {
        let (rpm, tpm) = (self.rpm(caller), self.tpm(caller));
        let (counted, _) = self.count(caller.limit_id(), rpm, tpm, 0, true).await?;
        Ok((counted.requests, counted.tokens))
    }

    /// The caller's plan and what is left of each of its windows now, counting nothing
    /// (for `GET /v1/usage`): (plan, [(window, unit, limit, remaining, reset)]).
    pub async fn peek_plan(&self, caller: &Caller) -> Result<Option<PlanView>, Error> {
        let Some(index) = self.plans.of(&caller.key.account) else {
            return Ok(None);
        };
        let holder = self.holder(index, caller);
        let shared = self.shared.as_ref();
        let (_, verdicts, _) = self
            .plans
            .count(shared, self.live_replicas(), index, holder, true)
            .await?;
        let plan = self.plans.plan(index);
        let windows = plan.windows.iter().zip(verdicts);
        Ok(Some(PlanView {
            name: plan.name.clone(),
            per: plan.per,
            windows: windows
                .map(|(w, v)| WindowView {
                    window: w.label(),
                    unit: match w.unit {
                        Unit::Requests => "requests",
                        Unit::Tokens => "tokens",
                    },
                    limit: w.limit,
                    remaining: v.remaining,
                    reset_seconds: Duration::from_micros(v.reset_us.max(0) as u64).as_secs(),
                })
                .collect(),
        }))
    }

    fn holder(&self, index: usize, caller: &Caller) -> Holder {
        match self.plans.plan(index).per {
            PlanHolder::Account => Holder::Account(caller.account_id),
            PlanHolder::Key => Holder::Key {
                account: caller.account_id,
                lineage: caller.limit_id(),
            },
        }
    }

    /// Forgets state that a fresh limiter would have anyway; run periodically.
    pub fn sweep(&self) {
        self.local.sweep();
        if let Some(shared) = &self.shared {
            shared.sweep();
        }
        self.usage_reads.sweep();
        self.task_polls.sweep();
        self.plans.sweep();
    }
}

/// One count against a per-key limit beside the key's rpm.
fn side_count(
    limiter: &RequestLimits,
    caller: &Caller,
    rpm: u32,
    what: &str,
) -> Result<RequestQuota, Error> {
    let requests = limiter.check(caller.limit_id(), rpm);
    match requests.retry_after {
        None => Ok(requests),
        Some(wait) => Err(throttled(
            what,
            requests.limit.into(),
            wait,
            HeaderMap::new(),
        )),
    }
}

fn throttled(what: &str, limit: u64, wait: Duration, headers: HeaderMap) -> Error {
    retry_later(wait, headers, |seconds| {
        format!("rate limit of {limit} {what} reached for this API key; retry after {seconds}s")
    })
}

/// A 429 whose `Retry-After` is `wait` in whole seconds (rounded up, at least 1), with
/// `headers` and the message `say` makes of those seconds.
pub fn retry_later(
    wait: Duration,
    mut headers: HeaderMap,
    say: impl FnOnce(u64) -> String,
) -> Error {
    let seconds = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
    headers.insert("retry-after", HeaderValue::from(seconds));
    Error::RateLimited {
        message: say(seconds),
        headers: Box::new(headers),
    }
}

/// Writes the `x-ratelimit-*` headers (OpenAI's names and reset format).
pub fn put_headers(headers: &mut HeaderMap, requests: &RequestQuota, tokens: Option<&TokenQuota>) {
    // Names built once (a `&str` name is checked on every insert).
    const LIMIT_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-limit-requests");
    const REMAINING_REQUESTS: HeaderName =
        HeaderName::from_static("x-ratelimit-remaining-requests");
    const RESET_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-reset-requests");
    const LIMIT_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-limit-tokens");
    const REMAINING_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-tokens");
    const RESET_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-reset-tokens");
    headers.insert(LIMIT_REQUESTS, HeaderValue::from(requests.limit));
    headers.insert(REMAINING_REQUESTS, HeaderValue::from(requests.remaining));
    headers.insert(RESET_REQUESTS, reset_value(requests.reset));
    if let Some(tokens) = tokens {
        headers.insert(LIMIT_TOKENS, HeaderValue::from(tokens.limit));
        headers.insert(REMAINING_TOKENS, HeaderValue::from(tokens.remaining));
        headers.insert(RESET_TOKENS, reset_value(tokens.reset));
    }
}

/// `250ms`, `6s`, `1m30s`: whole units, rounded up. Written with `itoa` into a buffer on
/// the stack: `format!` allocated a string of its own before the value's (with it, the
/// headers took 2,100 instructions a response; now 1,600).
fn reset_value(d: Duration) -> HeaderValue {
    let mut digits = itoa::Buffer::new();
    let mut text = [0u8; 48];
    let mut len = 0;
    let mut put = |bytes: &[u8]| {
        text[len..len + bytes.len()].copy_from_slice(bytes);
        len += bytes.len();
    };
    if d < Duration::from_secs(1) {
        let ms = d.subsec_millis() + u32::from(!d.subsec_nanos().is_multiple_of(1_000_000));
        put(digits.format(ms).as_bytes());
        put(b"ms");
    } else {
        let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
        if secs >= 60 {
            put(digits.format(secs / 60).as_bytes());
            put(b"m");
        }
        put(digits
            .format(if secs < 60 { secs } else { secs % 60 })
            .as_bytes());
        put(b"s");
    }
    HeaderValue::from_bytes(&text[..len]).expect("digits and letters")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resets_read_like_openais() {
        assert_eq!(reset_value(Duration::from_millis(250)), "250ms");
        assert_eq!(reset_value(Duration::from_millis(5400)), "6s");
        assert_eq!(reset_value(Duration::from_secs(90)), "1m30s");
        assert_eq!(reset_value(Duration::ZERO), "0ms");
        assert_eq!(reset_value(Duration::from_nanos(1)), "1ms");
        assert_eq!(reset_value(Duration::from_nanos(999_999_999)), "1000ms");
        assert_eq!(reset_value(Duration::from_secs(1)), "1s");
        assert_eq!(reset_value(Duration::from_millis(59_001)), "1m0s");
        assert_eq!(reset_value(Duration::from_secs(120)), "2m0s");
    }
}
