//! Rate and spending limits: the defaults for keys, where counts are kept (this process
//! or Redis) and what happens when Redis or the ledger does not answer.

use serde::Deserialize;

use super::plans::PlanConfig;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Requests per minute for keys without their own `rpm`.
    pub default_rpm: u32,
    /// Tokens per minute for keys without their own `tpm`; unlimited when absent.
    pub default_tpm: Option<u64>,
    /// Completion tokens reserved for a chat request that sets no `max_tokens`. For an
    /// account with a spending limit it is also the `max_tokens` its backend is sent.
    pub reserve_max_tokens: u64,
    /// Reads of `GET /v1/usage` per minute per key (apart from its rpm).
    pub usage_rpm: u32,
    /// Polls of asynchronous tasks per minute per key (apart from its rpm: the submission
    /// counted there).
    pub poll_rpm: u32,
    /// A task not polled to its end within this is expired: recorded as a `timeout`,
    /// at no cost (`GET /admin/v1/tasks` shows those still pending).
    pub task_expiry_secs: u64,
    /// With a PostgreSQL ledger: how long a spending hold stays pending before the
    /// reconciler voids it (its replica died before the request's record arrived).
    pub hold_expiry_secs: u64,
    /// With a PostgreSQL ledger that does not answer: whether a postpaid account with a
    /// credit limit is served unchecked (`admit`) or refused with 503 (`refuse`). Prepaid
    /// accounts are always refused: their money cannot be checked.
    pub postpaid_when_ledger_down: PostpaidFallback,
    /// Where rpm and tpm are counted: in this process (`local`), or in Redis (`redis`),
    /// shared by every replica.
    pub store: LimitStoreKind,
    /// Quota plans over rolling windows, given to accounts (`[[limits.plans]]`).
    pub plans: Vec<PlanConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LimitStoreKind {
    #[default]
    Local,
    Redis,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://HOST:PORT[/DB]` (with `limits.store = "redis"`).
    pub url: Option<String>,
    /// The longest a request waits for Redis before its limits are counted by the fallback.
    pub timeout_ms: u64,
    /// Starts every key tollgate writes (`{PREFIX:LINEAGE}:rpm`), so deployments can share
    /// one Redis.
    pub prefix: String,
    /// While Redis does not answer: `local` counts each key's limit divided by the live
    /// replicas in this process, `open` admits every request, `closed` refuses with 503.
    pub fallback: RedisFallback,
    /// The most requests of a key's rpm a replica takes from Redis at once and admits from
    /// memory (a key without a token limit). A slice is at most a second of the key's share
    /// per replica, and 1 for small limits; 1 here makes every request ask Redis.
    pub slice_max: u32,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: None,
            timeout_ms: 50,
            prefix: "tollgate".into(),
            fallback: RedisFallback::Local,
            slice_max: 100,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RedisFallback {
    #[default]
    Local,
    Open,
    Closed,
}

/// What a postpaid account with a credit limit gets while its limit cannot be checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PostpaidFallback {
    /// Served; billed afterwards as always (the record is spooled).
    #[default]
    Admit,
    /// Refused with 503 until the ledger answers.
    Refuse,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            default_rpm: 10,
            default_tpm: None,
            reserve_max_tokens: 4096,
            usage_rpm: 60,
            poll_rpm: 120,
            task_expiry_secs: 24 * 3600,
            hold_expiry_secs: 600,
            postpaid_when_ledger_down: PostpaidFallback::Admit,
            store: LimitStoreKind::Local,
            plans: Vec::new(),
        }
    }
}
