//! Spending holds in PostgreSQL, shared by every replica on the ledger (`store::holds`): a
//! hold is one conditional update there, so however many replicas admit requests at once,
//! an account never goes below its allowance. This process only caches which accounts
//! have a limit (dropped when accounts change anywhere).

use std::collections::HashMap;
use std::time::Duration;

use chrono::Utc;
use parking_lot::Mutex;
use rust_decimal::Decimal;
use sqlx::PgPool;

use super::{Hold, refusal};
use crate::billing::TokenCounts;
use crate::config::{LimitsConfig, PostpaidFallback};
use crate::error::Error;
use crate::store::accounts::BillingMode;
use crate::store::health::Health;
use crate::store::holds::{self, NewHold};
use crate::store::{self, Db};

pub struct PgSpending {
    pool: PgPool,
    /// Names this process in the holds it takes (host and process id).
    replica: String,
    expiry: chrono::Duration,
    fallback: PostpaidFallback,
    /// Account id → how it is billed and its allowance (`None`: no limit).
    accounts: Mutex<HashMap<i64, (BillingMode, Option<Decimal>)>>,
    /// Whether the database answers: while it does not, no hold is tried.
    health: Health,
}

impl PgSpending {
    pub fn new(pool: &PgPool, config: &LimitsConfig, replica: &str, health: Health) -> PgSpending {
        PgSpending {
            health,
            pool: pool.clone(),
            replica: replica.to_owned(),
            expiry: chrono::Duration::seconds(config.hold_expiry_secs as i64),
            fallback: config.postpaid_when_ledger_down,
            accounts: Mutex::default(),
        }
    }

    async fn account(
        &self,
        db: &Db,
        account_id: i64,
    ) -> Result<(BillingMode, Option<Decimal>), Error> {
        if let Some(known) = self.accounts.lock().get(&account_id) {
            return Ok(*known);
        }
        // Boxed: only an account's first request reads it, and every request's future would
        // otherwise have room for the read.
        Box::pin(self.read_account(db, account_id)).await
    }

    /// Reads an account's billing mode and allowance from the ledger, and keeps them.
    async fn read_account(
        &self,
        db: &Db,
        account_id: i64,
    ) -> Result<(BillingMode, Option<Decimal>), Error> {
        if !self.health.is_up() {
            return Err(Error::Unavailable(
                "this account's spending limit cannot be checked now; retry shortly".into(),
            ));
        }
        let account = store::accounts::get(db, account_id)
            .await?
            .ok_or_else(|| Error::Internal(anyhow::anyhow!("account {account_id} vanished")))?;
        let known = (account.billing_mode, account.allowance());
        self.accounts.lock().insert(account_id, known);
        Ok(known)
    }

    pub async fn limited(&self, db: &Db, account_id: i64) -> Result<bool, Error> {
        Ok(self.account(db, account_id).await?.1.is_some())
    }

    pub async fn hold(
        &self,
        request_id: &str,
        account_id: i64,
        worst_case: Decimal,
        tokens: TokenCounts,
        lasts: Option<std::time::Duration>,
    ) -> Result<Option<Hold>, Error> {
        let lasts = lasts
            .and_then(|d| chrono::Duration::from_std(d).ok())
            .unwrap_or(self.expiry);
        let hold = NewHold {
            request_id,
            account_id,
            amount: worst_case,
            replica: &self.replica,
            expires_at: Utc::now() + lasts,
        };
        let reserved = match self.health.is_up() {
            true => holds::reserve(&self.pool, &hold).await,
            false => Err(anyhow::anyhow!("the database does not answer").into()),
        };
        match reserved {
            Ok(true) => Ok(Some(Hold {
                account_id,
                amount: worst_case,
                tokens,
            })),
            Ok(false) => {
                let available = holds::available(&self.pool, account_id).await?;
                Err(refusal(available.unwrap_or_default(), worst_case))
            }
            Err(e) => {
                tracing::warn!(account_id, error = %e, "a spending hold cannot be taken");
                let mode = self.accounts.lock().get(&account_id).map(|a| a.0);
                match (mode, self.fallback) {
                    (Some(BillingMode::Postpaid), PostpaidFallback::Admit) => Ok(None),
                    _ => Err(Error::Unavailable(
                        "this account's spending limit cannot be checked now; retry shortly".into(),
                    )),
                }
            }
        }
    }

    /// Voids the hold of `request_id`, in the background (the request is over).
    pub fn void(&self, request_id: &str) {
        let (pool, request_id) = (self.pool.clone(), request_id.to_owned());
        tokio::spawn(async move {
            if let Err(e) = holds::void(&pool, &request_id).await {
                tracing::warn!(%request_id, error = %e, "cannot void a hold now; it expires");
            }
        });
    }

    /// The account's billing changed: it is read again on its next request.
    pub fn set_allowance(&self, account_id: i64) {
        self.accounts.lock().remove(&account_id);
    }

    pub fn forget_allowances(&self) {
        self.accounts.lock().clear();
    }

    pub async fn running(&self, account_id: i64) -> Result<Option<(Decimal, Decimal)>, Error> {
        Ok(holds::funds(&self.pool, account_id).await?)
    }

    pub async fn held(&self, account_id: i64) -> Result<Decimal, Error> {
        Ok(holds::held(&self.pool, account_id).await?)
    }

    pub async fn pending(&self) -> Result<u64, Error> {
        Ok(holds::pending_of(&self.pool, &self.replica).await?.max(0) as u64)
    }

    pub async fn reconcile(&self, spool_age: Duration, steady: bool) -> Result<u64, Error> {
        let now = Utc::now();
        let abandoned = holds::Abandoned {
            now,
            replica: &self.replica,
            spooled_since: now - chrono::Duration::from_std(spool_age).unwrap_or_default(),
            others: steady,
        };
        let voided = holds::void_abandoned(&self.pool, &abandoned).await?;
        if let Some(n) = voided.filter(|n| *n > 0) {
            tracing::warn!(
                holds = n,
                "expired spending holds of dead replicas voided (their records never came)"
            );
        }
        Ok(voided.unwrap_or(0))
    }
}
