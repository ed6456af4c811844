//! Per-key limits: requests per minute (`requests`, GCRA via governor) and tokens per minute
//! (`tokens`, reservation and settlement), and the `x-ratelimit-*` headers that report them.

pub mod requests;
pub mod spending;
pub mod tokens;

use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue};

use crate::auth::Caller;
use crate::billing::TokenCounts;
use crate::config::LimitsConfig;
use crate::error::ApiError;
pub use requests::{RequestLimits, RequestQuota};
pub use tokens::{TokenLimits, TokenQuota};

pub struct Limits {
    config: LimitsConfig,
    requests: RequestLimits,
    tokens: TokenLimits,
    /// Reads of a key's own usage, per key (`limits.usage_rpm`).
    usage_reads: RequestLimits,
}

/// What admission granted a request: reported in its headers, settled at its end.
#[derive(Debug, Clone, Copy)]
pub struct Admission {
    pub requests: RequestQuota,
    /// The key's tpm and the tokens reserved, when the key has a token limit.
    pub tokens: Option<(TokenQuota, u64, u64)>,
}

impl Limits {
    pub fn new(config: LimitsConfig) -> Limits {
        Limits {
            config,
            requests: RequestLimits::new(),
            tokens: TokenLimits::new(),
            usage_reads: RequestLimits::new(),
        }
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
    pub fn admit(
        &self,
        caller: &Caller,
        worst: impl FnOnce() -> TokenCounts,
    ) -> Result<Admission, ApiError> {
        let requests = self.requests.check(caller.limit_id(), self.rpm(caller));
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
        let Some(tpm) = self.tpm(caller) else {
            return Ok(Admission {
                requests,
                tokens: None,
            });
        };
        let worst = worst();
        let reserve = worst.prompt.saturating_add(worst.completion);
        let tokens = self.tokens.reserve(caller.limit_id(), tpm, reserve);
        if let Some(wait) = tokens.retry_after {
            let mut headers = HeaderMap::new();
            put_headers(&mut headers, &requests, Some(&tokens));
            return Err(throttled("tokens per minute", tpm, wait, headers));
        }
        Ok(Admission {
            requests,
            tokens: Some((tokens, tpm, reserve)),
        })
    }

    /// Counts a read of the key's own usage (`GET /v1/usage`) against its own per-key
    /// limit, `limits.usage_rpm` (each read makes the ledger import first, so it is not
    /// free); it spends nothing of the key's rpm. 429 (with the headers) when over.
    pub fn admit_usage_read(&self, caller: &Caller) -> Result<RequestQuota, ApiError> {
        let requests = self
            .usage_reads
            .check(caller.limit_id(), self.config.usage_rpm);
        match requests.retry_after {
            None => Ok(requests),
            Some(wait) => {
                let limit = requests.limit.into();
                Err(throttled(
                    "usage reads per minute",
                    limit,
                    wait,
                    HeaderMap::new(),
                ))
            }
        }
    }

    /// Gives back (or takes) the difference between the reservation and the real usage.
    pub fn settle(&self, caller: &Caller, admission: &Admission, used: u64) {
        if let Some((_, tpm, reserved)) = admission.tokens {
            self.tokens.settle(caller.limit_id(), tpm, reserved, used);
        }
    }

    /// The key's quotas now, without consuming anything (for `GET /v1/usage`).
    pub fn peek(&self, caller: &Caller) -> (RequestQuota, Option<TokenQuota>) {
        let requests = self.requests.peek(caller.limit_id(), self.rpm(caller));
        let tokens = self
            .tpm(caller)
            .map(|tpm| self.tokens.peek(caller.limit_id(), tpm));
        (requests, tokens)
    }

    /// Forgets state that a fresh limiter would have anyway; run periodically.
    pub fn sweep(&self) {
        self.requests.sweep();
        self.tokens.sweep();
        self.usage_reads.sweep();
    }
}

fn throttled(what: &str, limit: u64, wait: Duration, mut headers: HeaderMap) -> ApiError {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    headers.insert("retry-after", HeaderValue::from(seconds.max(1)));
    ApiError::RateLimited {
        message: format!(
            "rate limit of {limit} {what} reached for this API key; retry after {}s",
            seconds.max(1)
        ),
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

/// `250ms`, `6s`, `1m30s`: whole units, rounded up.
fn reset_value(d: Duration) -> HeaderValue {
    let text = if d < Duration::from_secs(1) {
        format!(
            "{}ms",
            d.as_millis() + u128::from(!d.subsec_nanos().is_multiple_of(1_000_000))
        )
    } else {
        let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
        if secs < 60 {
            format!("{secs}s")
        } else {
            format!("{}m{}s", secs / 60, secs % 60)
        }
    };
    HeaderValue::from_str(&text).expect("ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resets_read_like_openais() {
        assert_eq!(reset_value(Duration::from_millis(250)), "250ms");
        assert_eq!(reset_value(Duration::from_millis(5400)), "6s");
        assert_eq!(reset_value(Duration::from_secs(90)), "1m30s");
    }
}
