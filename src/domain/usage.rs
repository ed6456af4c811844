//! Usage: the records for audits, filtered and paged, and a key's usage this billing month,
//! priced exactly.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use rust_decimal::Decimal;

use crate::billing::period::Month;
use crate::billing::{PriceBook, Totals, invoice};
use crate::error::Error;
use crate::store::listing::UsageFilter;
use crate::store::usage::StoredRecord;
use crate::store::{self, Db};

/// The most records one page holds.
pub const MAX_PAGE: i64 = 1000;

/// One page of records, newest first, and the cursor of the next page if there may be one.
pub async fn page(
    db: &Db,
    filter: &UsageFilter,
    limit: i64,
) -> Result<(Vec<StoredRecord>, Option<String>), Error> {
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(Error::invalid(
            format!("limit must be between 1 and {MAX_PAGE}"),
            "limit",
        ));
    }
    let records = store::listing::list(db, filter, limit).await?;
    let next = (records.len() as i64 == limit)
        .then(|| records.last().map(|r| format!("{}_{}", r.started_at, r.id)))
        .flatten();
    Ok((records, next))
}

/// The position a page's `next_cursor` names: (started at, id) of its last record.
pub fn parse_cursor(cursor: &str) -> Result<(i64, i64), Error> {
    cursor
        .split_once('_')
        .and_then(|(at, id)| Some((at.parse().ok()?, id.parse().ok()?)))
        .ok_or_else(|| {
            Error::invalid(
                "cursor must be a next_cursor this listing returned",
                "cursor",
            )
        })
}

/// A key's usage (its lineage's) in the current billing month.
pub struct MonthToDate {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub requests: i64,
    pub prompt_tokens: i64,
    pub cached_tokens: i64,
    pub cache_write_tokens: i64,
    pub completion_tokens: i64,
    /// Exact, in CNY.
    pub cost: Decimal,
}

/// The usage this month in `zone` of the key lineage `lineage_id` (a key and the keys it
/// was rotated from or to), priced with `prices`.
pub async fn month_to_date(
    db: &Db,
    prices: &PriceBook,
    zone: Tz,
    lineage_id: i64,
) -> Result<MonthToDate, Error> {
    let (start, end) = Month::containing(Utc::now(), zone).bounds(zone);
    let scope = store::rollups::Scope::Lineage(lineage_id);
    let totals = store::rollups::totals(
        db,
        scope,
        store::to_ms(start),
        store::to_ms(end),
        store::rollups::By {
            zone: Some(zone),
            ..Default::default()
        },
    )
    .await?;
    let sum = |f: fn(&Totals) -> i64| totals.iter().map(f).fold(0i64, i64::saturating_add);
    Ok(MonthToDate {
        start,
        end,
        requests: sum(|t| t.requests),
        prompt_tokens: sum(|t| t.prompt_tokens),
        cached_tokens: sum(|t| t.cached_tokens),
        cache_write_tokens: sum(|t| t.cache_write_tokens),
        completion_tokens: sum(|t| t.completion_tokens),
        cost: invoice::cost_of_sums(&totals, prices)?,
    })
}

/// One line of a record's cost: `quantity` of `unit` at `price` per `per` is `amount`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CostLine {
    pub unit: crate::billing::cost::Unit,
    pub quantity: u64,
    pub price: Decimal,
    pub per: u32,
    pub amount: Decimal,
}

/// How `record`'s cost comes from its counts and `price` (the version it names): a line
/// per billed unit and their exact sum, which is the record's cost (the same formula).
pub fn arithmetic(
    record: &StoredRecord,
    price: &crate::billing::PriceVersion,
) -> Result<(Vec<CostLine>, Decimal), Error> {
    use crate::billing::cost::{Quantities, amount, unit_price};
    let count = |n: i64| n.max(0).unsigned_abs();
    let completed = record.status == "ok";
    let units = crate::billing::Units {
        images: count(record.images),
        tasks: count(record.tasks),
        compute_ms: count(record.compute_ms),
        uploads: count(record.uploads),
    };
    let quantities = Quantities {
        tokens: crate::billing::TokenCounts {
            prompt: count(record.prompt_tokens),
            completion: count(record.completion_tokens),
            cached: count(record.cached_tokens),
            cache_write: count(record.cache_write_tokens),
            reasoning: count(record.reasoning_tokens),
        },
        requests: u64::from(completed),
        units: if completed { units } else { Default::default() },
    };
    let mut lines = Vec::new();
    let mut total = Decimal::ZERO;
    for (unit, quantity) in quantities.by_unit() {
        let price = unit_price(price, unit);
        if quantity == 0 || price.is_zero() {
            continue;
        }
        let amount = amount(quantity, price, unit.per())?;
        total = crate::billing::money::add(total, amount)?;
        lines.push(CostLine {
            unit,
            quantity,
            price,
            per: unit.per(),
            amount,
        });
    }
    Ok((lines, total.normalize()))
}
