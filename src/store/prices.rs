//! The price ledger: price table entries become immutable, numbered versions.

use std::str::FromStr;

use anyhow::Context;
use chrono::Utc;
use rust_decimal::Decimal;
use sqlx::Row;

use super::{Db, Result, from_ms, to_ms};
use crate::billing::{PriceEntry, PriceVersion};

fn from_row(row: &sqlx::sqlite::SqliteRow) -> Result<PriceVersion> {
    let money = |col: &str| -> Result<Decimal> {
        let text: String = row.get(col);
        Ok(Decimal::from_str(&text).with_context(|| format!("price_versions.{col} = '{text}'"))?)
    };
    let cached: Option<String> = row.get("cached_input_per_1k");
    Ok(PriceVersion {
        id: row.get("id"),
        entry: PriceEntry {
            model: row.get("model"),
            chip: row.get("chip"),
            effective_from: from_ms(row.get("effective_from")),
            input_per_1k: money("input_per_1k")?,
            cached_input_per_1k: cached
                .map(|c| Decimal::from_str(&c))
                .transpose()
                .context("price_versions.cached_input_per_1k")?,
            output_per_1k: money("output_per_1k")?,
            per_request: money("per_request")?,
        },
    })
}

/// Every version ever recorded.
pub async fn all(db: &Db) -> Result<Vec<PriceVersion>> {
    let rows = sqlx::query("SELECT * FROM price_versions ORDER BY id")
        .fetch_all(db)
        .await?;
    rows.iter().map(from_row).collect()
}

/// Appends the entries not yet in the ledger, in one transaction, and returns how many
/// were new. An entry whose (model, chip, effective_from) is recorded with other prices
/// is refused: a version is never changed, a new `effective_from` makes a new one.
pub async fn sync(db: &Db, entries: &[PriceEntry]) -> Result<usize> {
    let mut tx = db.begin().await?;
    let mut added = 0;
    for entry in entries {
        let existing = sqlx::query(
            "SELECT * FROM price_versions WHERE model = ? AND chip = ? AND effective_from = ?",
        )
        .bind(&entry.model)
        .bind(&entry.chip)
        .bind(to_ms(entry.effective_from))
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = existing {
            let recorded = from_row(&row)?;
            if !same_prices(&recorded.entry, entry) {
                return Err(super::StoreError::Conflict(format!(
                    "the price of {}/{} effective from {} is already recorded (version {}) with \
                     other values; price versions are immutable: add an entry with a later \
                     effective_from instead",
                    entry.model,
                    entry.chip,
                    entry.effective_from.to_rfc3339(),
                    recorded.id
                )));
            }
            continue;
        }
        sqlx::query(
            "INSERT INTO price_versions (model, chip, effective_from, input_per_1k,
                cached_input_per_1k, output_per_1k, per_request, recorded_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&entry.model)
        .bind(&entry.chip)
        .bind(to_ms(entry.effective_from))
        .bind(entry.input_per_1k.to_string())
        .bind(entry.cached_input_per_1k.map(|d| d.to_string()))
        .bind(entry.output_per_1k.to_string())
        .bind(entry.per_request.to_string())
        .bind(to_ms(Utc::now()))
        .execute(&mut *tx)
        .await?;
        added += 1;
    }
    tx.commit().await?;
    Ok(added)
}

/// Equal as numbers: "0.10" and "0.1" are the same price.
fn same_prices(a: &PriceEntry, b: &PriceEntry) -> bool {
    a.input_per_1k == b.input_per_1k
        && a.cached_input_per_1k == b.cached_input_per_1k
        && a.output_per_1k == b.output_per_1k
        && a.per_request == b.per_request
}
