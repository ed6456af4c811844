//! A usage record as a journal line, written by hand: every request encodes one, and
//! serde's derived encoding spent most of its time escaping the field names, which
//! never change. The bytes are exactly what `serde_json::to_vec(record)` gives (the tests
//! hold it to that), so lines read back through the record's derived `Deserialize` as
//! before; each value is still written by serde_json.

use serde::Serialize;

use crate::billing::TokenCounts;
use crate::billing::record::UsageRecord;

/// Appends `record` as one JSON object to `out`. Every field is named below (no `..`), so
/// a field added to `UsageRecord` does not compile until it is written here too.
pub fn encode(out: &mut Vec<u8>, record: &UsageRecord) -> serde_json::Result<()> {
    let UsageRecord {
        request_id,
        account_id,
        key_id,
        model,
        chip,
        deployment,
        endpoint,
        stream,
        status,
        http_status,
        error,
        tokens,
        units,
        usage_source,
        price_version_id,
        cost,
        blocked,
        moderation,
        started_at,
        ended_at,
        latency_ms,
        ttft_ms,
        attempts,
        reported,
    } = record;
    let mut line = Fields { out, first: true };
    line.field("request_id", request_id)?;
    line.field("account_id", account_id)?;
    line.field("key_id", key_id)?;
    line.field("model", model)?;
    line.field("chip", chip)?;
    line.field("deployment", deployment)?;
    line.field("endpoint", endpoint)?;
    line.field("stream", stream)?;
    line.field("status", status)?;
    line.field("http_status", http_status)?;
    line.field("error", error)?;
    line.name("tokens");
    write_tokens(line.out, tokens);
    if !units.is_zero() {
        line.field("units", units)?;
    }
    line.field("usage_source", usage_source)?;
    line.field("price_version_id", price_version_id)?;
    line.field("cost", cost)?;
    line.field("blocked", blocked)?;
    line.field("moderation", moderation)?;
    line.field("started_at", &Nanos(*started_at))?;
    line.field("ended_at", &Nanos(*ended_at))?;
    line.field("latency_ms", latency_ms)?;
    line.field("ttft_ms", ttft_ms)?;
    if !attempts.is_empty() {
        line.field("attempts", attempts)?;
    }
    if let Some(reported) = reported {
        line.field("reported", reported)?;
    }
    line.out.push(b'}');
    Ok(())
}

/// An object being written: its members so far.
struct Fields<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl Fields<'_> {
    /// `"name":value`, after a comma unless it is the first. Names are plain ASCII, so
    /// they need no escaping.
    fn field<T: Serialize + ?Sized>(&mut self, name: &str, value: &T) -> serde_json::Result<()> {
        self.name(name);
        serde_json::to_writer(&mut *self.out, value)
    }

    /// `"name":`, after a comma unless it is the first: the value is written next.
    fn name(&mut self, name: &str) {
        self.out.push(if self.first { b'{' } else { b',' });
        self.first = false;
        self.out.push(b'"');
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b"\":");
    }
}

/// Token counts, as their derived `Serialize` writes them (names need no escaping).
fn write_tokens(out: &mut Vec<u8>, tokens: &TokenCounts) {
    let TokenCounts {
        prompt,
        completion,
        cached,
        cache_write,
        reasoning,
    } = *tokens;
    let mut digits = itoa::Buffer::new();
    for (name, count) in [
        (&b"{\"prompt\":"[..], prompt),
        (b",\"completion\":", completion),
        (b",\"cached\":", cached),
        (b",\"cache_write\":", cache_write),
        (b",\"reasoning\":", reasoning),
    ] {
        out.extend_from_slice(name);
        out.extend_from_slice(digits.format(count).as_bytes());
    }
    out.push(b'}');
}

/// A timestamp as the record's `journal_time` writes it.
struct Nanos(chrono::DateTime<chrono::Utc>);

impl Serialize for Nanos {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        crate::billing::record::journal_time::serialize(&self.0, serializer)
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use rust_decimal::Decimal;

    use super::*;
    use crate::billing::record::{Attempt, AttemptOutcome, Reported, Status, UsageSource};
    use crate::billing::{TokenCounts, Units};

    fn plain() -> UsageRecord {
        UsageRecord {
            request_id: "req_0190a1b2c3d4e5f60718293a4b5c6d7e".into(),
            account_id: 7,
            key_id: 12,
            model: "deepseek-r1".into(),
            chip: "nvidia".into(),
            deployment: None,
            endpoint: "chat".into(),
            stream: false,
            status: Status::Ok,
            http_status: 200,
            error: None,
            tokens: TokenCounts {
                prompt: 12,
                completion: 30,
                cached: 0,
                cache_write: 0,
                reasoning: 0,
            },
            units: Units::default(),
            usage_source: UsageSource::Reported,
            price_version_id: 3,
            cost: Decimal::new(50712, 7),
            blocked: false,
            moderation: None,
            started_at: chrono::Utc
                .timestamp_opt(1_796_000_000, 123_456_789)
                .unwrap(),
            ended_at: chrono::Utc.timestamp_opt(1_796_000_001, 5).unwrap(),
            latency_ms: 1000,
            ttft_ms: None,
            attempts: Vec::new(),
            reported: None,
        }
    }

    fn encoded(record: &UsageRecord) -> String {
        let mut out = Vec::new();
        encode(&mut out, record).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_line_is_byte_for_byte_what_serde_writes() {
        let mut every = plain();
        every.request_id = "imported \"quoted\" \\ id\n\u{1}".into();
        every.model = "通义千问-max".into();
        every.deployment = Some("east-1".into());
        every.endpoint = "images".into();
        every.stream = true;
        every.status = Status::Partial;
        every.error = Some("cut \u{7f} short \u{2028}".into());
        every.tokens.cached = 4;
        every.tokens.cache_write = 2;
        every.tokens.reasoning = 9;
        every.units = Units {
            images: 2,
            tasks: 1,
            compute_ms: 1500,
            uploads: 3,
        };
        every.usage_source = UsageSource::Capped;
        every.cost = Decimal::new(-120, 0);
        every.blocked = true;
        every.moderation = Some("{\"sensitive\":true}".into());
        every.ttft_ms = Some(-1);
        every.attempts = vec![Attempt {
            chip: "ascend".into(),
            outcome: AttemptOutcome::Refused,
        }];
        every.reported = Some(Reported {
            tokens: every.tokens,
            units: Units::default(),
        });
        // Beyond what nanoseconds since 1970 hold in an i64: written as text.
        let mut far = plain();
        far.ended_at = chrono::Utc.with_ymd_and_hms(2300, 1, 1, 0, 0, 0).unwrap();
        far.cost = Decimal::MAX;
        for record in [plain(), every, far] {
            let serde = serde_json::to_string(&record).unwrap();
            assert_eq!(encoded(&record), serde);
            let back: UsageRecord = serde_json::from_str(&encoded(&record)).unwrap();
            assert_eq!(back, record);
        }
    }
}
