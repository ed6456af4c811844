//! A private deployment's reserved hours, billed as the platforms bill reserved
//! instances: from its upstream's `reserved_from` (to `reserved_until`, if released), every
//! started hour costs its own price's `per_hour` in force at the hour's start, used or
//! not, charged to its first owner. Each hour is charged once per deployment and hour (its
//! idempotency key), whichever replica or run gets there first, and counted by balances and
//! holds at once (`store::accounts::add_funds`).

use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;

use crate::billing::period::Month;
use crate::billing::{Buyer, PriceBook};
use crate::config::UpstreamConfig;
use crate::error::Error;
use crate::limits::spending::Spending;
use crate::store::{self, Db};

/// The hours charged: their rows, for the caller to count.
#[derive(Debug, Default)]
pub struct Charged {
    pub hours: usize,
}

/// Charges every reserved hour of `upstreams`' deployments started by `now` and not yet
/// charged.
pub async fn charge(
    db: &Db,
    upstreams: &[UpstreamConfig],
    prices: &PriceBook,
    spending: &Spending,
    zone: Tz,
    now: DateTime<Utc>,
) -> Result<Charged, Error> {
    let mut charged = Charged::default();
    for up in upstreams {
        let (Some(deployment), Some(from)) = (&up.deployment, up.reserved_from) else {
            continue;
        };
        let Some(owner) = up.owners.first() else {
            continue;
        };
        let Some(account) = store::accounts::find_by_name(db, owner).await? else {
            tracing::warn!(%deployment, %owner, "reserved hours not charged: no such account");
            continue;
        };
        let end = up.reserved_until.map_or(now, |until| until.min(now));
        let mut hour = match store::accounts::last_reserved_hour(db, account.id, deployment).await?
        {
            Some(last) => last + TimeDelta::hours(1),
            None => from,
        };
        let buyer = Buyer {
            account: Some(owner),
            deployment: Some(deployment),
            pair_price: false,
        };
        while hour < end {
            let per_hour = prices
                .for_buyer(&up.model, &up.chip, buyer, hour)
                .map(|tiers| tiers.first().entry.per_hour)
                .unwrap_or_default();
            if !per_hour.is_zero() {
                let key = format!("reservation:{deployment}:{}", store::to_ms(hour));
                let period = Month::containing(hour, zone).to_string();
                let new = store::accounts::NewFunds {
                    account_id: account.id,
                    kind: "reservation",
                    amount: -per_hour,
                    key: &key,
                    note: deployment,
                    period: Some(&period),
                    actor: "tollgate",
                    at: Some(hour),
                };
                let (row, created) = store::accounts::add_funds(db, &new).await?;
                if created {
                    spending.credit(account.id, row.id, row.amount);
                    charged.hours += 1;
                }
            }
            hour += TimeDelta::hours(1);
        }
    }
    Ok(charged)
}
