//! Prices: the tables in `pricing/` appended to the price ledger, and versions described
//! for listing.

use anyhow::bail;
use chrono::Utc;
use serde_json::{Value, json};

use crate::billing::{PriceBook, PriceVersion, prices};
use crate::config::Config;
use crate::store::signal::ChangeSignal;
use crate::store::{self, Db};

/// Reads the price tables, checks them against the upstreams, and appends new versions to
/// the price ledger. Returns how many versions were added.
pub async fn sync(config: &Config, db: &Db) -> anyhow::Result<usize> {
    let entries = read(config)?;
    record(config, db, &entries).await
}

/// The price tables, read (accounts' discounts made into their prices) and checked
/// against the upstreams; nothing recorded yet.
pub fn read(config: &Config) -> anyhow::Result<Vec<prices::PriceEntry>> {
    let entries = crate::billing::discounts::apply(prices::load_dir(&config.pricing.dir)?)?;
    check_price_tables(config, &entries)?;
    Ok(entries)
}

/// Appends the versions of `entries` not yet in the price ledger (recorded versions never
/// change); returns how many were added.
pub async fn record(
    config: &Config,
    db: &Db,
    entries: &[prices::PriceEntry],
) -> anyhow::Result<usize> {
    let added = store::prices::sync(db, entries).await?;
    if added > 0 {
        tracing::info!(added, "new price versions recorded");
        ChangeSignal::new(db, &config.database.url, "prices")
            .announce()
            .await;
    }
    Ok(added)
}

/// A version as listed: its prices, and whether it is the one in force now.
pub fn describe(version: &PriceVersion, book: &PriceBook) -> Value {
    let e = &version.entry;
    let in_force = book.is_in_force(version, Utc::now());
    json!({
        "id": version.id, "model": e.model, "chip": e.chip, "deployment": e.deployment,
        "account": e.account, "prompt_tokens_over": e.tier.over,
        "prompt_tokens_up_to": e.tier.up_to, "effective_from": e.effective_from,
        "input_per_1k": e.input_per_1k, "cached_input_per_1k": version.cached_input_per_1k(),
        "cache_write_per_1k": version.cache_write_per_1k(),
        "output_per_1k": e.output_per_1k, "reasoning_per_1k": version.reasoning_per_1k(),
        "per_request": e.per_request,
        "per_image": e.per_image, "per_task": e.per_task, "per_second": e.per_second,
        "per_upload": e.per_upload, "per_hour": e.per_hour, "currency": "CNY",
        "in_force": in_force,
    })
}

/// Every price must name a served model, and a chip of it (or `*`).
fn check_price_tables(config: &Config, entries: &[prices::PriceEntry]) -> anyhow::Result<()> {
    for e in entries {
        let chips: std::collections::BTreeSet<&str> = config
            .upstreams
            .iter()
            .filter(|u| u.model == e.model)
            .map(|u| u.chip.as_str())
            .collect();
        if chips.is_empty() {
            tracing::warn!(model = %e.model, "price table names a model no upstream serves");
        } else if e.chip != "*" && !chips.contains(&e.chip.as_str()) {
            bail!(
                "pricing: unknown chip '{}' for model '{}' (configured chips: {})",
                e.chip,
                e.model,
                chips.into_iter().collect::<Vec<_>>().join(", ")
            );
        }
    }
    Ok(())
}
