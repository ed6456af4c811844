//! `tollgate usage import`: usage records from elsewhere (another gateway's history, a
//! backend's own logs), one JSON object a line, written into the ledger as if served here:
//! each line checked (a known account, one of its keys, a model × chip with a price in
//! force at the record's time, plain counts), priced by that price version, and inserted
//! through the ledger writer's sink in batches, so that a request id already present is
//! skipped (an import run again adds nothing) and the accounts' running totals move with
//! the records. A record of a month whose invoice is final is refused: a final invoice
//! never changes. The first invalid line stops the import, naming its number; the batches
//! before it are in the ledger, and running the corrected file again skips them.

use std::collections::HashMap;
use std::io::BufRead;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

use crate::billing::period::Month;
use crate::billing::record::{Status, UsageRecord, UsageSource};
use crate::billing::{Buyer, PriceBook, TokenCounts, Units, cost_of};
use crate::config::MAX_REPORTED_TOKENS;
use crate::dialect;
use crate::store::{self, Db, Sink};

/// Records written per insert.
const BATCH: usize = 10_000;

/// One line of the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    request_id: String,
    /// Account name.
    account: String,
    /// One of the account's keys (its id).
    key_id: i64,
    model: String,
    chip: String,
    started_at: DateTime<Utc>,
    #[serde(default)]
    ended_at: Option<DateTime<Utc>>,
    /// `ok` (the default) or another record status: only `ok` bills units and requests.
    #[serde(default)]
    status: Option<Status>,
    #[serde(default)]
    endpoint: Option<String>,
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    cached_tokens: u64,
    /// Prompt tokens written to the backend's prompt cache.
    #[serde(default)]
    cache_write_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    /// Part of `completion_tokens`: a thinking model's reasoning.
    #[serde(default)]
    reasoning_tokens: u64,
    #[serde(default)]
    images: u64,
    #[serde(default)]
    tasks: u64,
    #[serde(default)]
    compute_ms: u64,
    #[serde(default)]
    uploads: u64,
    /// The private deployment the record was served by, if any.
    #[serde(default)]
    deployment: Option<String>,
    // What `tollgate usage export` writes besides: the record as the other ledger stored
    // it. Accepted, so that an export imports as it is, and not used (this ledger prices
    // and times the record itself).
    #[serde(default, rename = "stream")]
    _stream: Option<IgnoredAny>,
    #[serde(default, rename = "http_status")]
    _http_status: Option<IgnoredAny>,
    #[serde(default, rename = "error")]
    _error: Option<IgnoredAny>,
    #[serde(default, rename = "usage_source")]
    _usage_source: Option<IgnoredAny>,
    #[serde(default, rename = "price_version_id")]
    _price_version_id: Option<IgnoredAny>,
    #[serde(default, rename = "cost")]
    _cost: Option<IgnoredAny>,
    #[serde(default, rename = "blocked")]
    _blocked: Option<IgnoredAny>,
    #[serde(default, rename = "moderation")]
    _moderation: Option<IgnoredAny>,
    #[serde(default, rename = "latency_ms")]
    _latency_ms: Option<IgnoredAny>,
    #[serde(default, rename = "ttft_ms")]
    _ttft_ms: Option<IgnoredAny>,
}

/// What an import did.
#[derive(Debug, Default, Serialize)]
pub struct Imported {
    /// Lines read and valid.
    pub lines: u64,
    /// Records the ledger did not hold before.
    pub new_records: i64,
}

/// Why an import stopped.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("line {line}: {why}")]
    Invalid { line: u64, why: String },
    #[error(transparent)]
    Ledger(#[from] anyhow::Error),
}

/// What is known of the ledger while importing: accounts by name, each key's account.
struct Ledger {
    accounts: HashMap<String, i64>,
    keys: HashMap<i64, i64>,
    prices: PriceBook,
    zone: Tz,
    /// (account, month) → whether its invoice is final.
    final_months: HashMap<(i64, Month), bool>,
    /// Records that started before this are retired: no more come in.
    retired_before: Option<DateTime<Utc>>,
}

/// Imports the lines of `input` into the ledger `db` (whose sink is `sink`), months in
/// `zone`. A batch is written while the next is read and checked.
pub async fn import(
    db: &Db,
    sink: Arc<Sink>,
    zone: Tz,
    input: impl BufRead,
) -> Result<Imported, ImportError> {
    let mut ledger = Ledger {
        accounts: store::accounts::list(db)
            .await
            .map_err(anyhow::Error::from)?
            .into_iter()
            .map(|a| (a.name, a.id))
            .collect(),
        keys: store::keys::list(db, None)
            .await
            .map_err(anyhow::Error::from)?
            .into_iter()
            .map(|k| (k.id, k.account_id))
            .collect(),
        prices: PriceBook::new(store::prices::all(db).await.map_err(anyhow::Error::from)?),
        zone,
        final_months: HashMap::new(),
        retired_before: store::retire::retired_before(db)
            .await
            .map_err(anyhow::Error::from)?
            .map(store::from_ms),
    };
    let before = sink.count().await?;
    let mut imported = Imported::default();
    let mut batch = Vec::with_capacity(BATCH);
    let mut writing: Option<Writing> = None;
    let mut lines = Lines {
        imported: &mut imported,
        batch: &mut batch,
        writing: &mut writing,
        db,
        sink: &sink,
    };
    let read = lines.read(db, &mut ledger, input).await;
    // The batch in flight is in the ledger (or failed) before anything is said.
    finish(writing.take()).await?;
    read?;
    finish(Some(write(db.clone(), sink.clone(), batch))).await?;
    imported.new_records = sink.count().await? - before;
    Ok(imported)
}

/// Where the lines go: counted, into the batch, and each full batch to the sink.
struct Lines<'a> {
    imported: &'a mut Imported,
    batch: &'a mut Vec<UsageRecord>,
    writing: &'a mut Option<Writing>,
    db: &'a Db,
    sink: &'a Arc<Sink>,
}

impl Lines<'_> {
    /// Reads and checks the lines of `input`; a full batch is written once the one before
    /// it is in.
    async fn read(
        &mut self,
        db: &Db,
        ledger: &mut Ledger,
        input: impl BufRead,
    ) -> Result<(), ImportError> {
        for (n, text) in input.lines().enumerate() {
            let number = n as u64 + 1;
            let invalid = |why: String| ImportError::Invalid { line: number, why };
            let text = text.map_err(|e| anyhow::anyhow!("cannot read line {number}: {e}"))?;
            if text.trim().is_empty() {
                continue;
            }
            let line: Line = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
            let record = ledger.record(db, line).await.map_err(|e| match e {
                Refusal::Invalid(why) => invalid(why),
                Refusal::Ledger(e) => ImportError::Ledger(e),
            })?;
            self.batch.push(record);
            self.imported.lines += 1;
            if self.batch.len() == BATCH {
                finish(self.writing.take()).await?;
                let full = std::mem::replace(self.batch, Vec::with_capacity(BATCH));
                *self.writing = Some(write(self.db.clone(), self.sink.clone(), full));
            }
        }
        Ok(())
    }
}

/// A batch being written.
type Writing = tokio::task::JoinHandle<anyhow::Result<()>>;

/// Writes `batch` on a thread of its own (SQLite's sink blocks), in time order so that its
/// inserts touch the time indexes' pages one after another, into the months' partitions
/// (PostgreSQL, `store::partitions`). A request id stored already with another start
/// refuses the batch: that record is no replay of the stored one.
fn write(db: Db, sink: Arc<Sink>, mut batch: Vec<UsageRecord>) -> Writing {
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let (Some(first), Some(last)) = (
            batch.iter().map(|r| r.started_at).min(),
            batch.iter().map(|r| r.started_at).max(),
        ) else {
            return Ok(());
        };
        batch.sort_by_key(|r| (r.started_at, r.account_id));
        let records: Vec<&UsageRecord> = batch.iter().collect();
        let starts: Vec<(&str, i64)> = records
            .iter()
            .map(|r| (r.request_id.as_str(), store::to_ms(r.started_at)))
            .collect();
        let mut first_starts = HashMap::with_capacity(starts.len());
        for &(id, start) in &starts {
            if *first_starts.entry(id).or_insert(start) != start {
                anyhow::bail!(
                    "the ledger refused a batch: request id {id} is in it with two starts"
                );
            }
        }
        runtime.block_on(async {
            store::partitions::keep(&db, (store::to_ms(first), store::to_ms(last))).await?;
            if let Some(id) = store::partitions::stored_at_other_times(&db, &starts)
                .await?
                .first()
            {
                anyhow::bail!(
                    "the ledger refused a batch: request id {id} is recorded already, with another start"
                );
            }
            sink.insert(&records)
                .await
                .map_err(|e| anyhow::anyhow!("the ledger refused a batch: {e}"))
        })
    })
}

/// Waits for the batch being written, if any.
async fn finish(writing: Option<Writing>) -> anyhow::Result<()> {
    match writing {
        Some(writing) => writing.await?,
        None => Ok(()),
    }
}

enum Refusal {
    Invalid(String),
    Ledger(anyhow::Error),
}

impl Ledger {
    /// The record a valid line stands for, priced.
    async fn record(&mut self, db: &Db, line: Line) -> Result<UsageRecord, Refusal> {
        let invalid = |why: String| Err(Refusal::Invalid(why));
        if line.request_id.is_empty() || line.request_id.len() > 128 {
            return invalid("request_id must be 1 to 128 characters".into());
        }
        let Some(&account_id) = self.accounts.get(&line.account) else {
            return invalid(format!("no account named '{}'", line.account));
        };
        if self.keys.get(&line.key_id) != Some(&account_id) {
            return invalid(format!(
                "key {} is not a key of '{}'",
                line.key_id, line.account
            ));
        }
        if line
            .deployment
            .as_ref()
            .is_some_and(|d| d.is_empty() || d.len() > 128)
        {
            return invalid("deployment must be 1 to 128 characters".into());
        }
        let endpoint = match line.endpoint.as_deref() {
            None => "chat",
            Some(name) => match dialect::recorded_name(name) {
                Some(known) => known,
                None => {
                    return invalid(format!(
                        "no endpoint is called '{name}' (known: {})",
                        dialect::recorded_names().join(", ")
                    ));
                }
            },
        };
        let ended_at = line.ended_at.unwrap_or(line.started_at);
        if ended_at < line.started_at || ended_at > Utc::now() {
            return invalid("ended_at must be after started_at, and not in the future".into());
        }
        let counts = [
            line.prompt_tokens,
            line.completion_tokens,
            line.images,
            line.tasks,
            line.compute_ms,
            line.uploads,
        ];
        if counts.iter().any(|&c| c > MAX_REPORTED_TOKENS)
            || line.cached_tokens.saturating_add(line.cache_write_tokens) > line.prompt_tokens
            || line.reasoning_tokens > line.completion_tokens
        {
            return invalid(format!(
                "counts must be at most {MAX_REPORTED_TOKENS}, cached_tokens and cache_write_tokens together at most prompt_tokens, reasoning_tokens at most completion_tokens"
            ));
        }
        // Priced as the gateway would have: the deployment's own price (else its pair's),
        // the account's, the list price; in the tier of its prompt.
        let buyer = Buyer {
            account: Some(&line.account),
            deployment: line.deployment.as_deref(),
            pair_price: true,
        };
        let Some(tiers) = (self.prices).for_buyer(&line.model, &line.chip, buyer, line.started_at)
        else {
            return invalid(format!(
                "no price of {}/{} is in force at {}",
                line.model, line.chip, line.started_at
            ));
        };
        if let Some(retired) = self.retired_before
            && line.started_at < retired
        {
            return invalid(format!(
                "records before {} are retired: the period takes no new ones",
                retired.to_rfc3339()
            ));
        }
        let month = Month::containing(line.started_at, self.zone);
        if self.is_final(db, account_id, month).await? {
            return invalid(format!(
                "the invoice of '{}' for {month} is final: its usage cannot change",
                line.account
            ));
        }
        let status = line.status.unwrap_or(Status::Ok);
        let completed = status == Status::Ok;
        let tokens = TokenCounts {
            prompt: line.prompt_tokens,
            completion: line.completion_tokens,
            cached: line.cached_tokens,
            cache_write: line.cache_write_tokens,
            reasoning: line.reasoning_tokens,
        };
        let units = match completed {
            true => Units {
                images: line.images,
                tasks: line.tasks,
                compute_ms: line.compute_ms,
                uploads: line.uploads,
            },
            false => Units::default(),
        };
        let price = tiers.for_prompt(tokens.prompt).clone();
        let cost = cost_of(&price, tokens, units, completed)
            .map_err(|e| Refusal::Invalid(e.to_string()))?;
        let latency = (ended_at - line.started_at).num_milliseconds();
        Ok(UsageRecord {
            request_id: line.request_id,
            account_id,
            key_id: line.key_id,
            model: line.model,
            chip: line.chip,
            deployment: line.deployment,
            endpoint: std::borrow::Cow::Borrowed(endpoint),
            stream: false,
            status,
            http_status: if completed { 200 } else { 502 },
            error: None,
            tokens,
            units,
            usage_source: UsageSource::Imported,
            price_version_id: price.id,
            cost,
            blocked: false,
            moderation: None,
            started_at: line.started_at,
            ended_at,
            latency_ms: latency,
            ttft_ms: None,
            attempts: Vec::new(),
            reported: None,
        })
    }

    /// Whether `account_id`'s invoice of `month` is final (asked once per month).
    async fn is_final(&mut self, db: &Db, account_id: i64, month: Month) -> Result<bool, Refusal> {
        if let Some(&known) = self.final_months.get(&(account_id, month)) {
            return Ok(known);
        }
        let id = super::invoices::invoice_id(account_id, month);
        let document = store::invoices::document(db, &id)
            .await
            .map_err(|e| Refusal::Ledger(e.into()))?;
        self.final_months
            .insert((account_id, month), document.is_some());
        Ok(document.is_some())
    }
}
