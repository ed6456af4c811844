//! What the ledger keeps about one request.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::billing::{Cost, TokenCounts};
use crate::config::Endpoint;

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The backend answered in full.
    Ok,
    /// The stream stopped early (cut, stalled); billed for what was delivered.
    Partial,
    /// The client left before the end; billed for the backend's usage if it was obtained.
    ClientDisconnected,
    /// The backend returned an error, over HTTP or in-band.
    UpstreamError,
    /// The backend did not answer in time.
    Timeout,
    /// No backend could be reached.
    Unreachable,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Partial => "partial",
            Status::ClientDisconnected => "client_disconnected",
            Status::UpstreamError => "upstream_error",
            Status::Timeout => "timeout",
            Status::Unreachable => "unreachable",
        }
    }
}

/// Where a record's token counts came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UsageSource {
    /// The backend's `usage` object.
    Reported,
    /// Counted by tollgate's tokenizer because the backend reported none.
    Estimated,
    /// Nothing to count: the request produced no tokens.
    None,
}

impl UsageSource {
    pub fn as_str(self) -> &'static str {
        match self {
            UsageSource::Reported => "reported",
            UsageSource::Estimated => "estimated",
            UsageSource::None => "none",
        }
    }
}

/// Serialized only to the usage journal (see `store::journal`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageRecord {
    pub request_id: String,
    pub account_id: i64,
    pub key_id: i64,
    pub model: String,
    pub chip: String,
    pub deployment: Option<String>,
    pub endpoint: Endpoint,
    pub stream: bool,
    pub status: Status,
    pub http_status: u16,
    pub error: Option<String>,
    pub tokens: TokenCounts,
    pub usage_source: UsageSource,
    pub price_version_id: i64,
    pub cost: Cost,
    pub blocked: bool,
    pub moderation: Option<String>,
    pub started_at: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
    pub latency_ms: i64,
    pub ttft_ms: Option<i64>,
}
