//! Summed usage: what invoices, reports and balances are priced from. The store sums
//! records into these; billing prices them.

use super::cost::{Quantities, TokenCounts, Units};

/// Sums of the records of one (account, key lineage, model, chip, price version[, slot]):
/// enough to price them exactly, since cost is linear in the counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Totals {
    pub account_id: i64,
    /// The key lineage (the id of its first key).
    pub lineage_id: i64,
    pub model: String,
    pub chip: String,
    /// The private deployment the requests went to; empty for shared models.
    pub deployment: String,
    pub price_version_id: i64,
    /// Start (ms) of the time slot, when grouped by slot: a UTC hour, or a 15-minute slot
    /// where an hour crosses a bucket's edge (`store::rollups::By::slots`).
    pub slot_ms: Option<i64>,
    pub requests: i64,
    /// Requests that completed (they carry the per-request price).
    pub ok_requests: i64,
    pub prompt_tokens: i64,
    pub cached_tokens: i64,
    pub cache_write_tokens: i64,
    pub completion_tokens: i64,
    /// Part of `completion_tokens`.
    pub reasoning_tokens: i64,
    pub images: i64,
    pub tasks: i64,
    pub compute_ms: i64,
    pub uploads: i64,
}

impl Totals {
    /// What these records bill, by unit.
    pub fn quantities(&self) -> Quantities {
        let count = |n: i64| n.max(0).unsigned_abs();
        Quantities {
            tokens: TokenCounts {
                prompt: count(self.prompt_tokens),
                completion: count(self.completion_tokens),
                cached: count(self.cached_tokens),
                cache_write: count(self.cache_write_tokens),
                reasoning: count(self.reasoning_tokens),
            },
            requests: count(self.ok_requests),
            units: Units {
                images: count(self.images),
                tasks: count(self.tasks),
                compute_ms: count(self.compute_ms),
                uploads: count(self.uploads),
            },
        }
    }
}
