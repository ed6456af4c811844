//! What the ledger keeps about one request.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Cost, TokenCounts, Units};

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
    /// The backend reported more than what the account's spending hold covers (a backend
    /// that ignored the `max_tokens` it was sent, or a tokenizer far from the estimate):
    /// billed for the hold's tokens; the reported counts are its `reported` (and its
    /// `error` says why).
    Capped,
    /// The backend reported more tokens than one request can have
    /// (`metering.max_reported_tokens`): billed for tollgate's estimate instead; the
    /// reported counts are its `reported` (and its `error` says why).
    Suspect,
    /// Nothing to count: the request produced no tokens.
    None,
    /// Brought in by `tollgate usage import` (another gateway's history, a backend's own
    /// logs): the counts the file gave, priced by tollgate.
    Imported,
}

impl UsageSource {
    pub fn as_str(self) -> &'static str {
        match self {
            UsageSource::Reported => "reported",
            UsageSource::Estimated => "estimated",
            UsageSource::Capped => "capped",
            UsageSource::Suspect => "suspect",
            UsageSource::None => "none",
            UsageSource::Imported => "imported",
        }
    }
}

/// A backend passed over before the one a record names (same model, another chip or
/// address), and why: kept only for requests that did not go to their first candidate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub chip: String,
    pub outcome: AttemptOutcome,
}

/// Why a backend did not take a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// It was at its own request limit (`upstreams[].rpm`): nothing was sent.
    AtItsLimit,
    /// It refused the connection.
    Refused,
}

impl AttemptOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::AtItsLimit => "at_its_limit",
            AttemptOutcome::Refused => "refused",
        }
    }
}

/// The counts as they came (the backend's report, or tollgate's estimate when it reported
/// none), kept beside a record whose billed counts differ (capped, suspect).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reported {
    pub tokens: TokenCounts,
    #[serde(default, skip_serializing_if = "Units::is_zero")]
    pub units: Units,
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
    /// The endpoint as records name it: a kind (`chat`, `images`, ...) or a route's own
    /// name (`dialect::Call::records`).
    pub endpoint: Cow<'static, str>,
    pub stream: bool,
    pub status: Status,
    pub http_status: u16,
    pub error: Option<String>,
    pub tokens: TokenCounts,
    /// Images, tasks and compute time, for requests that completed (none in journals
    /// written before they were counted).
    #[serde(default, skip_serializing_if = "Units::is_zero")]
    pub units: Units,
    pub usage_source: UsageSource,
    pub price_version_id: i64,
    pub cost: Cost,
    pub blocked: bool,
    pub moderation: Option<String>,
    #[serde(with = "journal_time")]
    pub started_at: DateTime<Utc>,
    #[serde(with = "journal_time")]
    pub ended_at: DateTime<Utc>,
    pub latency_ms: i64,
    pub ttft_ms: Option<i64>,
    /// The backends passed over before this one; empty for almost every request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<Attempt>,
    /// The counts as they came, when they are not what is billed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported: Option<Reported>,
}

/// Timestamps in the journal: nanoseconds since the epoch, exact and cheap to write
/// (RFC 3339 text was almost half the cost of encoding a record). Lines written before
/// carry RFC 3339 text, and are still read.
pub(crate) mod journal_time {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
        match at.timestamp_nanos_opt() {
            Some(nanos) => serializer.serialize_i64(nanos),
            None => at.serialize(serializer), // beyond 1677..2262
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<DateTime<Utc>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Nanos(i64),
            Text(DateTime<Utc>),
        }
        Ok(match Written::deserialize(deserializer)? {
            Written::Nanos(nanos) => DateTime::from_timestamp_nanos(nanos),
            Written::Text(at) => at,
        })
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct At(#[serde(with = "journal_time")] DateTime<Utc>);

    #[test]
    fn journal_timestamps_are_exact_and_older_text_still_reads() {
        let at = Utc.timestamp_opt(1_796_000_000, 123_456_789).unwrap();
        let line = serde_json::to_string(&At(at)).unwrap();
        assert_eq!(line, "1796000000123456789");
        assert_eq!(serde_json::from_str::<At>(&line).unwrap(), At(at));
        let older = serde_json::to_string(&at).unwrap();
        assert_eq!(serde_json::from_str::<At>(&older).unwrap(), At(at));
        let far = Utc.with_ymd_and_hms(2300, 1, 1, 0, 0, 0).unwrap();
        let line = serde_json::to_string(&At(far)).unwrap();
        assert_eq!(serde_json::from_str::<At>(&line).unwrap(), At(far));
    }
}
