//! The price ledger: price table entries become immutable, numbered versions.

use chrono::Utc;

use super::{Db, Money, Read, Result, from_ms, on, to_ms};
use crate::billing::prices::PromptTier;
use crate::billing::{PriceEntry, PriceVersion};

fn from_row(row: &impl Read) -> Result<PriceVersion> {
    Ok(PriceVersion {
        id: row.read("id")?,
        entry: PriceEntry {
            model: row.read("model")?,
            chip: row.read("chip")?,
            effective_from: from_ms(row.read("effective_from")?),
            input_per_1k: row.money("input_per_1k")?,
            cached_input_per_1k: row.money_or_null("cached_input_per_1k")?,
            cache_write_per_1k: row.money_or_null("cache_write_per_1k")?,
            output_per_1k: row.money("output_per_1k")?,
            reasoning_per_1k: row.money_or_null("reasoning_per_1k")?,
            per_request: row.money("per_request")?,
            per_image: row.money("per_image")?,
            per_task: row.money("per_task")?,
            per_second: row.money("per_second")?,
            per_upload: row.money("per_upload")?,
            per_hour: row.money("per_hour")?,
            deployment: Some(row.read::<String>("deployment")?).filter(|d| !d.is_empty()),
            account: Some(row.read::<String>("account")?).filter(|a| !a.is_empty()),
            tiers: Vec::new(),
            discount_percent: None,
            tier: PromptTier {
                over: row.read::<i64>("prompt_tokens_over")? as u64,
                up_to: row
                    .read::<Option<i64>>("prompt_tokens_up_to")?
                    .map(|n| n as u64),
            },
        },
    })
}

/// PostgreSQL advisory lock held while price tables are synced.
const PRICE_SYNC_LOCK: i64 = 0x746f_6c6c_6761_7402;

/// Every version ever recorded.
pub async fn all(db: &Db) -> Result<Vec<PriceVersion>> {
    on!(db, |pool| {
        let rows = sqlx::query("SELECT * FROM price_versions ORDER BY id")
            .fetch_all(pool)
            .await?;
        rows.iter().map(from_row).collect()
    })
}

/// Appends the entries not yet in the ledger, in one transaction, and returns how many
/// versions were new. A price recorded at the same scope (model, chip, deployment, account)
/// and effective time must be the same, tier for tier: a version is never changed and a
/// tier never added or dropped; a new `effective_from` makes a new one.
pub async fn sync(db: &Db, entries: &[PriceEntry]) -> Result<usize> {
    // On PostgreSQL, replicas starting together sync one after the other, each seeing what
    // the others recorded (SQLite runs one writing transaction at a time anyway).
    let serialize = match db {
        Db::Postgres(_) => Some("SELECT pg_advisory_xact_lock($1)"),
        Db::Sqlite(_) => None,
    };
    // A discount is not a price until `discounts::apply` makes its prices.
    if let Some(e) = entries.iter().find(|e| e.discount_percent.is_some()) {
        return Err(super::StoreError::Conflict(format!(
            "the discount for {} was not made into prices; it cannot be recorded as one",
            e.scope()
        )));
    }
    // The tiers of one price, together.
    let mut sets: Vec<Vec<&PriceEntry>> = Vec::new();
    for entry in entries {
        match sets.iter_mut().find(|set| same_scope(set[0], entry)) {
            Some(set) => set.push(entry),
            None => sets.push(vec![entry]),
        }
    }
    on!(db, |pool| {
        let mut tx = pool.begin().await?;
        if let Some(lock) = serialize {
            sqlx::query(lock)
                .bind(PRICE_SYNC_LOCK)
                .execute(&mut *tx)
                .await?;
        }
        let mut added = 0;
        for set in &sets {
            let first = set[0];
            let rows = sqlx::query(
                "SELECT * FROM price_versions
                 WHERE model = $1 AND chip = $2 AND deployment = $3 AND account = $4
                   AND effective_from = $5
                 ORDER BY prompt_tokens_over",
            )
            .bind(&first.model)
            .bind(&first.chip)
            .bind(first.deployment.as_deref().unwrap_or(""))
            .bind(first.account.as_deref().unwrap_or(""))
            .bind(to_ms(first.effective_from))
            .fetch_all(&mut *tx)
            .await?;
            let recorded: Vec<PriceVersion> = rows.iter().map(from_row).collect::<Result<_>>()?;
            if !recorded.is_empty() {
                refuse_if_changed(&recorded, set)?;
                continue;
            }
            for entry in set {
                sqlx::query(
                    "INSERT INTO price_versions (model, chip, effective_from, input_per_1k,
                        cached_input_per_1k, output_per_1k, per_request, per_image, per_task,
                        per_second, per_upload, recorded_at, cache_write_per_1k, deployment,
                        account, prompt_tokens_over, prompt_tokens_up_to, per_hour,
                        reasoning_per_1k)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15,
                             $16, $17, $18, $19)",
                )
                .bind(&entry.model)
                .bind(&entry.chip)
                .bind(to_ms(entry.effective_from))
                .bind(Money(entry.input_per_1k))
                .bind(entry.cached_input_per_1k.map(Money))
                .bind(Money(entry.output_per_1k))
                .bind(Money(entry.per_request))
                .bind(Money(entry.per_image))
                .bind(Money(entry.per_task))
                .bind(Money(entry.per_second))
                .bind(Money(entry.per_upload))
                .bind(to_ms(Utc::now()))
                .bind(entry.cache_write_per_1k.map(Money))
                .bind(entry.deployment.as_deref().unwrap_or(""))
                .bind(entry.account.as_deref().unwrap_or(""))
                .bind(entry.tier.over as i64)
                .bind(entry.tier.up_to.map(|n| n as i64))
                .bind(Money(entry.per_hour))
                .bind(entry.reasoning_per_1k.map(Money))
                .execute(&mut *tx)
                .await?;
                added += 1;
            }
        }
        tx.commit().await?;
        Ok(added)
    })
}

/// Whether two entries are tiers of one price: same model, chip, deployment, account and
/// effective time.
fn same_scope(a: &PriceEntry, b: &PriceEntry) -> bool {
    (
        &a.model,
        &a.chip,
        &a.deployment,
        &a.account,
        a.effective_from,
    ) == (
        &b.model,
        &b.chip,
        &b.deployment,
        &b.account,
        b.effective_from,
    )
}

/// A recorded price may be synced again only with the same tiers and prices.
fn refuse_if_changed(recorded: &[PriceVersion], set: &[&PriceEntry]) -> Result<()> {
    let same = recorded.len() == set.len()
        && recorded
            .iter()
            .zip(set)
            .all(|(r, e)| r.entry.tier == e.tier && same_prices(&r.entry, e));
    if same {
        return Ok(());
    }
    let entry = set[0];
    Err(super::StoreError::Conflict(format!(
        "the price of {} effective from {} is already recorded (version {}) with other \
         values or tiers; price versions are immutable: add an entry with a later \
         effective_from instead",
        entry.scope(),
        entry.effective_from.to_rfc3339(),
        recorded[0].id
    )))
}

/// Equal as numbers: "0.10" and "0.1" are the same price.
fn same_prices(a: &PriceEntry, b: &PriceEntry) -> bool {
    a.input_per_1k == b.input_per_1k
        && a.cached_input_per_1k == b.cached_input_per_1k
        && a.cache_write_per_1k == b.cache_write_per_1k
        && a.output_per_1k == b.output_per_1k
        && a.reasoning_per_1k == b.reasoning_per_1k
        && a.per_request == b.per_request
        && a.per_image == b.per_image
        && a.per_task == b.per_task
        && a.per_second == b.per_second
        && a.per_upload == b.per_upload
        && a.per_hour == b.per_hour
}
