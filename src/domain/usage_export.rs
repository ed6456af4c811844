//! `tollgate usage export`: the records that started in a period, oldest first, as JSON
//! lines or CSV, read a page at a time through the time index (so any period fits in
//! memory). A JSON line holds every stored field, times in RFC 3339 and the account by
//! name: `tollgate usage import` takes it back (re-pricing it by the importing ledger's
//! prices), and analytics tools read it as it is.

use std::collections::HashMap;
use std::io::Write;

use chrono::SecondsFormat;
use serde::Serialize;

use crate::billing::invoice::csv_field;
use crate::store::usage::StoredRecord;
use crate::store::{self, Db};

/// Records read per page.
const PAGE: i64 = 10_000;

/// How records are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object a line.
    Jsonl,
    /// A header line, then one line a record.
    Csv,
}

/// One exported record.
#[derive(Serialize)]
struct Exported<'a> {
    request_id: &'a str,
    account: &'a str,
    key_id: i64,
    model: &'a str,
    chip: &'a str,
    deployment: Option<&'a str>,
    endpoint: &'a str,
    stream: bool,
    status: &'a str,
    http_status: i64,
    error: Option<&'a str>,
    prompt_tokens: i64,
    cached_tokens: i64,
    cache_write_tokens: i64,
    completion_tokens: i64,
    /// Part of `completion_tokens` (JSON lines only, where not 0).
    #[serde(skip_serializing_if = "is_zero")]
    reasoning_tokens: i64,
    images: i64,
    tasks: i64,
    compute_ms: i64,
    uploads: i64,
    usage_source: &'a str,
    price_version_id: i64,
    cost: String,
    blocked: bool,
    moderation: Option<&'a str>,
    started_at: String,
    ended_at: String,
    latency_ms: i64,
    ttft_ms: Option<i64>,
}

/// The CSV header: `Exported`'s fields.
pub const CSV_HEADER: &str = "request_id,account,key_id,model,chip,deployment,endpoint,stream,\
status,http_status,error,prompt_tokens,cached_tokens,cache_write_tokens,completion_tokens,images,tasks,\
compute_ms,uploads,usage_source,price_version_id,cost,blocked,moderation,started_at,\
ended_at,latency_ms,ttft_ms";

fn exported<'a>(r: &'a StoredRecord, account: &'a str) -> Exported<'a> {
    let time = |ms| store::from_ms(ms).to_rfc3339_opts(SecondsFormat::Millis, true);
    Exported {
        request_id: &r.request_id,
        account,
        key_id: r.key_id,
        model: &r.model,
        chip: &r.chip,
        deployment: r.deployment.as_deref(),
        endpoint: &r.endpoint,
        stream: r.stream,
        status: &r.status,
        http_status: r.http_status,
        error: r.error.as_deref(),
        prompt_tokens: r.prompt_tokens,
        cached_tokens: r.cached_tokens,
        cache_write_tokens: r.cache_write_tokens,
        completion_tokens: r.completion_tokens,
        reasoning_tokens: r.reasoning_tokens,
        images: r.images,
        tasks: r.tasks,
        compute_ms: r.compute_ms,
        uploads: r.uploads,
        usage_source: &r.usage_source,
        price_version_id: r.price_version_id,
        cost: r.cost.normalize().to_string(),
        blocked: r.blocked,
        moderation: r.moderation.as_deref(),
        started_at: time(r.started_at),
        ended_at: time(r.ended_at),
        latency_ms: r.latency_ms,
        ttft_ms: r.ttft_ms,
    }
}

fn csv_line(e: &Exported) -> String {
    let text = |t: Option<&str>| t.map(csv_field).unwrap_or_default();
    let number = |n: Option<i64>| n.map(|n| n.to_string()).unwrap_or_default();
    [
        csv_field(e.request_id),
        csv_field(e.account),
        e.key_id.to_string(),
        csv_field(e.model),
        csv_field(e.chip),
        text(e.deployment),
        csv_field(e.endpoint),
        e.stream.to_string(),
        csv_field(e.status),
        e.http_status.to_string(),
        text(e.error),
        e.prompt_tokens.to_string(),
        e.cached_tokens.to_string(),
        e.cache_write_tokens.to_string(),
        e.completion_tokens.to_string(),
        e.images.to_string(),
        e.tasks.to_string(),
        e.compute_ms.to_string(),
        e.uploads.to_string(),
        csv_field(e.usage_source),
        e.price_version_id.to_string(),
        e.cost.clone(),
        e.blocked.to_string(),
        text(e.moderation),
        e.started_at.clone(),
        e.ended_at.clone(),
        e.latency_ms.to_string(),
        number(e.ttft_ms),
    ]
    .join(",")
}

/// `record` of `account` as one CSV line (no line end), as `export` writes it.
pub fn csv_record(record: &StoredRecord, account: &str) -> String {
    csv_line(&exported(record, account))
}

/// Writes the records of `db` that started in `[from_ms, to_ms)` to `out` in `format`;
/// returns how many.
pub async fn export(
    db: &Db,
    (from_ms, to_ms): (i64, i64),
    format: Format,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<u64> {
    let accounts: HashMap<i64, String> = store::accounts::list(db)
        .await?
        .into_iter()
        .map(|a| (a.id, a.name))
        .collect();
    if format == Format::Csv {
        writeln!(out, "{CSV_HEADER}")?;
    }
    let mut written = 0u64;
    let mut after = None;
    loop {
        let page = store::usage::oldest_first(db, (from_ms, to_ms), after, PAGE).await?;
        for r in &page {
            let account = accounts.get(&r.account_id).map_or("", String::as_str);
            let e = exported(r, account);
            match format {
                Format::Jsonl => {
                    serde_json::to_writer(&mut *out, &e)?;
                    out.write_all(b"\n")?;
                }
                Format::Csv => writeln!(out, "{}", csv_line(&e))?,
            }
        }
        written += page.len() as u64;
        match page.last() {
            Some(last) if page.len() as i64 == PAGE => after = Some((last.started_at, last.id)),
            _ => break,
        }
    }
    out.flush()?;
    Ok(written)
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}
