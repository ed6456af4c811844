//! Spending limits per account. Admission holds the request's worst-case cost against what
//! the account has available (top-ups - charges + credit); settlement releases the hold and
//! charges the real cost. Holds are taken under one lock, so concurrent requests can never
//! overspend by more than one request's worst case exceeding its hold.

use std::collections::HashMap;
use std::sync::Mutex;

use rust_decimal::Decimal;

use crate::billing::PriceBook;
use crate::billing::invoice::cost_of_sums;
use crate::error::ApiError;
use crate::metering::Ledger;
use crate::store::{self, Db};

#[derive(Debug, Clone, Copy)]
struct Funds {
    /// Top-ups minus the costs of settled requests.
    balance: Decimal,
    /// How far below zero the balance may go; `None`: no limit.
    allowance: Option<Decimal>,
    /// Worst cases held by requests in flight.
    held: Decimal,
}

/// What admission held for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold {
    pub account_id: i64,
    pub amount: Decimal,
}

pub struct Spending {
    /// Account id → funds, loaded from the ledger on first use. Held only for arithmetic.
    funds: Mutex<HashMap<i64, Funds>>,
    /// Flushed before a balance is read from the database.
    ledger: Ledger,
}

/// The account's balance from the ledger: top-ups minus the costs of all its records.
pub async fn balance(db: &Db, prices: &PriceBook, account_id: i64) -> Result<Decimal, ApiError> {
    let topped_up = store::accounts::topped_up(db, account_id).await?;
    let totals = store::usage::totals(
        db,
        store::usage::Scope::Account(account_id),
        0,
        i64::MAX,
        false,
    )
    .await?;
    Ok((topped_up - cost_of_sums(&totals, prices)?).normalize())
}

impl Spending {
    pub fn new(ledger: Ledger) -> Spending {
        Spending {
            funds: Mutex::default(),
            ledger,
        }
    }

    /// Whether the account has a limit at all (no need to estimate a cost otherwise).
    pub async fn limited(
        &self,
        db: &Db,
        prices: &PriceBook,
        account_id: i64,
    ) -> Result<bool, ApiError> {
        self.load(db, prices, account_id).await?;
        let funds = self.funds.lock().expect("not poisoned");
        Ok(funds
            .get(&account_id)
            .is_some_and(|f| f.allowance.is_some()))
    }

    async fn load(&self, db: &Db, prices: &PriceBook, account_id: i64) -> Result<(), ApiError> {
        if self
            .funds
            .lock()
            .expect("not poisoned")
            .contains_key(&account_id)
        {
            return Ok(());
        }
        let account = store::accounts::get(db, account_id)
            .await?
            .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("account {account_id} vanished")))?;
        self.ledger.flush().await?;
        let balance = balance(db, prices, account_id).await?;
        // Another request may have loaded it meanwhile; its state is as fresh and may hold.
        self.funds
            .lock()
            .expect("not poisoned")
            .entry(account_id)
            .or_insert(Funds {
                balance,
                allowance: account.allowance(),
                held: Decimal::ZERO,
            });
        Ok(())
    }

    /// Holds `worst_case` for a request, or refuses with 402.
    pub async fn hold(
        &self,
        db: &Db,
        prices: &PriceBook,
        account_id: i64,
        worst_case: Decimal,
    ) -> Result<Option<Hold>, ApiError> {
        self.load(db, prices, account_id).await?;
        let mut funds = self.funds.lock().expect("not poisoned");
        let f = funds.get_mut(&account_id).expect("loaded above");
        let Some(allowance) = f.allowance else {
            return Ok(None);
        };
        let available = f.balance + allowance - f.held;
        if available < worst_case {
            return Err(ApiError::InsufficientQuota(format!(
                "this account cannot cover the request: {} CNY available, up to {} CNY needed; top up or lower max_tokens",
                available.max(Decimal::ZERO).round_dp(6).normalize(),
                worst_case.round_dp(6).normalize()
            )));
        }
        f.held += worst_case;
        Ok(Some(Hold {
            account_id,
            amount: worst_case,
        }))
    }

    /// Releases the hold and charges `cost` (also for accounts without a limit, whose balance
    /// is kept for display).
    pub fn settle(&self, account_id: i64, hold: Option<Hold>, cost: Decimal) {
        let mut funds = self.funds.lock().expect("not poisoned");
        if let Some(f) = funds.get_mut(&account_id) {
            if let Some(hold) = hold {
                f.held -= hold.amount;
            }
            f.balance -= cost;
        }
    }

    /// A top-up arrived.
    pub fn credit(&self, account_id: i64, amount: Decimal) {
        if let Some(f) = self
            .funds
            .lock()
            .expect("not poisoned")
            .get_mut(&account_id)
        {
            f.balance += amount;
        }
    }

    /// The account's billing settings changed: reload them, keeping holds in flight.
    pub fn set_allowance(&self, account_id: i64, allowance: Option<Decimal>) {
        if let Some(f) = self
            .funds
            .lock()
            .expect("not poisoned")
            .get_mut(&account_id)
        {
            f.allowance = allowance;
        }
    }

    /// Another process changed accounts (a top-up, billing settings): recompute the loaded
    /// accounts from the ledger, keeping what requests in flight hold.
    pub async fn refresh(&self, db: &Db, prices: &PriceBook) -> Result<(), ApiError> {
        let ids: Vec<i64> = self
            .funds
            .lock()
            .expect("not poisoned")
            .keys()
            .copied()
            .collect();
        self.ledger.flush().await?;
        for id in ids {
            let Some(account) = store::accounts::get(db, id).await? else {
                continue;
            };
            let balance = balance(db, prices, id).await?;
            if let Some(f) = self.funds.lock().expect("not poisoned").get_mut(&id) {
                f.balance = balance;
                f.allowance = account.allowance();
            }
        }
        Ok(())
    }

    /// What requests in flight hold now.
    pub fn held(&self, account_id: i64) -> Decimal {
        self.funds
            .lock()
            .expect("not poisoned")
            .get(&account_id)
            .map(|f| f.held)
            .unwrap_or_default()
    }
}
