//! Spending limits per account. Admission holds the request's worst-case cost against what
//! the account has available (top-ups - charges + credit); the request's record then
//! charges the real cost, which never exceeds the hold (the record bills at most the tokens
//! the hold covers: `TokenCounts::capped`), and the hold is released. One seam, one file
//! per ledger backend: holds in this process's memory for SQLite (`local`), holds in
//! PostgreSQL shared by every replica (`postgres`).

mod local;
mod postgres;

use rust_decimal::Decimal;

use crate::billing::TokenCounts;
use crate::config::LimitsConfig;
use crate::error::Error;
use crate::metering::Ledger;
use crate::store::health::Health;
use crate::store::{self, Db};

/// What admission held for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold {
    pub account_id: i64,
    pub amount: Decimal,
    /// The tokens `amount` pays for: the most the request's record may bill.
    pub tokens: TokenCounts,
}

pub enum Spending {
    Local(local::LocalSpending),
    Postgres(postgres::PgSpending),
}

/// The account's balance from the ledger: top-ups minus the costs of its records, read
/// from their running totals (one row, whatever the account's history).
pub async fn balance(db: &Db, account_id: i64) -> Result<Decimal, Error> {
    Ok(store::funds::of(db, account_id).await?.balance()?)
}

fn out_of_range() -> Error {
    Error::Unavailable(
        "this account's balance is out of range and cannot be computed; ask the operator to check its top-ups and limits".into(),
    )
}

/// The 402 of a request its account cannot cover.
fn refusal(available: Decimal, worst_case: Decimal) -> Error {
    Error::InsufficientQuota(format!(
        "this account cannot cover the request: {} CNY available, up to {} CNY needed; top up or lower max_tokens",
        available.max(Decimal::ZERO).round_dp(6).normalize(),
        worst_case.round_dp(6).normalize()
    ))
}

impl Spending {
    /// Holds for the ledger `db`: shared in PostgreSQL, or in memory beside SQLite.
    /// `replica` names this gateway in the holds it takes.
    /// `health` says whether the database answers: while it does not, holds in PostgreSQL
    /// are not tried (a 503 at once, or the postpaid fallback).
    pub fn new(
        db: &Db,
        ledger: Ledger,
        config: &LimitsConfig,
        replica: &str,
        health: &Health,
    ) -> Spending {
        match db {
            Db::Sqlite(_) => Spending::Local(local::LocalSpending::new(ledger)),
            Db::Postgres(pool) => Spending::Postgres(postgres::PgSpending::new(
                pool,
                config,
                replica,
                health.clone(),
            )),
        }
    }

    /// Whether the account has a limit at all (no need to estimate a cost otherwise).
    pub async fn limited(&self, db: &Db, account_id: i64) -> Result<bool, Error> {
        match self {
            Spending::Local(s) => s.limited(db, account_id).await,
            Spending::Postgres(s) => s.limited(db, account_id).await,
        }
    }

    /// Holds `worst_case` (the cost of `tokens`) for request `request_id`, or refuses with
    /// 402. `lasts` is how long a hold whose gateway died may stay before it is voided
    /// (`None`: `limits.hold_expiry_secs`; a task's lasts as long as the task may).
    #[allow(clippy::too_many_arguments)]
    pub async fn hold(
        &self,
        db: &Db,
        request_id: &str,
        account_id: i64,
        worst_case: Decimal,
        tokens: TokenCounts,
        lasts: Option<std::time::Duration>,
    ) -> Result<Option<Hold>, Error> {
        match self {
            Spending::Local(s) => s.hold(db, request_id, account_id, worst_case, tokens).await,
            Spending::Postgres(s) => {
                s.hold(request_id, account_id, worst_case, tokens, lasts)
                    .await
            }
        }
    }

    /// The record of `request_id`, costing `cost`, is committed: its hold is released and
    /// the cost charged, once however often this is called. (In PostgreSQL that happens as
    /// the record is inserted, once by its request id.)
    pub fn settle(&self, request_id: &str, account_id: i64, hold: Option<Hold>, cost: Decimal) {
        match self {
            Spending::Local(s) => s.settle(request_id, account_id, hold.is_some(), cost),
            Spending::Postgres(_) => {}
        }
    }

    /// The request ends without a record: its hold is given back unused (once).
    pub fn release(&self, request_id: &str, account_id: i64, hold: Option<Hold>) {
        match self {
            Spending::Local(s) => s.settle(request_id, account_id, hold.is_some(), Decimal::ZERO),
            Spending::Postgres(s) => {
                if hold.is_some() {
                    s.void(request_id);
                }
            }
        }
    }

    /// Top-up `topup_id` of `amount` arrived through this process, committed.
    pub fn credit(&self, account_id: i64, topup_id: i64, amount: Decimal) {
        match self {
            Spending::Local(s) => s.credit(account_id, topup_id, amount),
            Spending::Postgres(_) => {} // in the ledger already
        }
    }

    /// The account's billing settings changed through this process.
    pub fn set_allowance(&self, account_id: i64, allowance: Option<Decimal>) {
        match self {
            Spending::Local(s) => s.set_allowance(account_id, allowance),
            Spending::Postgres(s) => s.set_allowance(account_id),
        }
    }

    /// Another process changed accounts (a top-up, billing settings).
    pub async fn refresh(&self, db: &Db) -> Result<(), Error> {
        match self {
            Spending::Local(s) => s.refresh(db).await,
            Spending::Postgres(s) => {
                s.forget_allowances();
                Ok(())
            }
        }
    }

    /// Whether admission can hold now (for `/readyz`).
    pub fn responsive(&self) -> bool {
        match self {
            Spending::Local(s) => s.responsive(),
            Spending::Postgres(_) => true,
        }
    }

    /// What requests in flight hold now.
    pub async fn held(&self, account_id: i64) -> Result<Decimal, Error> {
        match self {
            Spending::Local(s) => Ok(s.held(account_id)),
            Spending::Postgres(s) => s.held(account_id).await,
        }
    }

    /// The account's balance and held amount as admission counts with them (`None`: not
    /// loaded in this process yet): kept as running figures, they must always equal what
    /// the ledger's records say (an audit, and the tests, compare them).
    pub async fn running(&self, account_id: i64) -> Result<Option<(Decimal, Decimal)>, Error> {
        match self {
            Spending::Local(s) => Ok(s.running(account_id)),
            Spending::Postgres(s) => s.running(account_id).await,
        }
    }

    /// Holds this gateway took that are neither posted nor voided yet.
    pub async fn pending(&self) -> Result<u64, Error> {
        match self {
            Spending::Local(s) => Ok(s.pending()),
            Spending::Postgres(s) => s.pending().await,
        }
    }

    /// Voids the expired holds whose records can no longer come (`store::holds::
    /// void_abandoned`): this replica's own once its spool (whose oldest record is
    /// `spool_age` old) cannot hold them, and dead replicas' once this one has been
    /// `steady`ly in touch with the database; one replica at a time. Nothing to do for
    /// holds in memory.
    pub async fn reconcile(
        &self,
        spool_age: std::time::Duration,
        steady: bool,
    ) -> Result<u64, Error> {
        match self {
            Spending::Local(_) => Ok(0),
            Spending::Postgres(s) => s.reconcile(spool_age, steady).await,
        }
    }
}
