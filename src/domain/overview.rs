//! An account's month at a glance (or every account's, for operators): spend this month
//! against last month's, requests and the share that failed, spend by model × chip, spend
//! per day, and for a prepaid account its balance, holds and runway. Read from the rollups
//! and running totals only, so its cost does not grow with the records.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use rust_decimal::Decimal;

use super::accounts::{self, AccountView};
use super::reports;
use crate::billing::PriceBook;
use crate::billing::period::Month;
use crate::billing::report::{Dimension, Report};
use crate::error::Error;
use crate::limits::spending::Spending;
use crate::store::Db;
use crate::store::accounts::{Account, BillingMode};
use crate::store::rollups::Scope;

pub struct Overview {
    pub zone: Tz,
    pub month: Month,
    /// This month so far, by model × chip; its series holds the spend per day.
    pub this_month: Report,
    /// What all of last month cost.
    pub last_month: Decimal,
    /// A prepaid account's money, and how many days it lasts at this month's pace.
    pub funds: Option<Funds>,
}

pub struct Funds {
    pub view: AccountView,
    /// The newest top-ups.
    pub topups: Vec<crate::store::accounts::Topup>,
    /// Days the available money lasts at this month's average daily spend (`None`: no
    /// spend yet).
    pub runway_days: Option<Decimal>,
}

impl Overview {
    pub fn requests(&self) -> i64 {
        self.this_month.rows.iter().map(|r| r.requests).sum()
    }

    pub fn failed(&self) -> i64 {
        self.this_month
            .rows
            .iter()
            .map(|r| r.requests - r.ok_requests)
            .sum()
    }

    pub fn last_month_total(&self) -> Decimal {
        self.last_month
    }
}

/// The overview of `account` (every account when `None`) in `zone`, now.
pub async fn build(
    db: &Db,
    spending: &Spending,
    prices: &PriceBook,
    zone: Tz,
    account: Option<Account>,
    now: DateTime<Utc>,
) -> Result<Overview, Error> {
    let scope = account
        .as_ref()
        .map_or(Scope::All, |a| Scope::Account(a.id));
    let month = Month::containing(now, zone);
    let (start, end) = month.bounds(zone);
    let by_pair = vec![Dimension::Model, Dimension::Chip];
    let this_month = reports::build_between(db, prices, zone, scope, (start, end), by_pair).await?;
    let last = month.previous().bounds(zone);
    let (_, last_month) = reports::total_between(db, prices, zone, scope, last).await?;
    let funds = match account {
        Some(account) if account.billing_mode == BillingMode::Prepaid => {
            let view = accounts::view(db, spending, account).await?;
            let days = Decimal::from((now - start).num_seconds().max(1)) / Decimal::from(86_400);
            let per_day = this_month.total_exact / days;
            let runway_days = (per_day > Decimal::ZERO)
                .then(|| view.available.unwrap_or_default().max(Decimal::ZERO) / per_day)
                .map(|d| d.round_dp(1));
            let topups = crate::store::accounts::recent_topups(db, view.account.id, 10).await?;
            Some(Funds {
                view,
                topups,
                runway_days,
            })
        }
        _ => None,
    };
    Ok(Overview {
        zone,
        month,
        this_month,
        last_month,
        funds,
    })
}
