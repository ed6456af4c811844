//! Spending holds in this process's memory, for the SQLite ledger (one gateway per
//! ledger): the account's figures are loaded from the ledger once and kept here. Holds are
//! taken under one lock, so however many requests run at once and however long their
//! answers, an account never goes below its allowance. Arithmetic is checked: an
//! out-of-range amount is an error for that account.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use rust_decimal::Decimal;

use super::{Hold, balance, out_of_range};
use crate::billing::{PriceBook, TokenCounts, money};
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

pub struct LocalSpending {
    /// Account id → funds, loaded from the ledger on first use. Held only for arithmetic.
    funds: Mutex<HashMap<i64, Funds>>,
    /// Holds taken and not yet settled.
    pending: AtomicU64,
    /// Flushed before a balance is read from the database.
    ledger: Ledger,
}

impl LocalSpending {
    pub fn new(ledger: Ledger) -> LocalSpending {
        LocalSpending {
            funds: Mutex::default(),
            pending: AtomicU64::new(0),
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
        let funds = self.funds.lock();
        Ok(funds
            .get(&account_id)
            .is_some_and(|f| f.allowance.is_some()))
    }

    async fn load(&self, db: &Db, prices: &PriceBook, account_id: i64) -> Result<(), ApiError> {
        if self.funds.lock().contains_key(&account_id) {
            return Ok(());
        }
        let account = store::accounts::get(db, account_id)
            .await?
            .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("account {account_id} vanished")))?;
        self.ledger.flush().await?;
        let balance = balance(db, prices, account_id).await?;
        // Pending tasks keep their holds across restarts: the ledger says what they are.
        let held = store::tasks::held_by(db, account_id).await?;
        // Another request may have loaded it meanwhile; its state is as fresh and may hold.
        self.funds.lock().entry(account_id).or_insert(Funds {
            balance,
            allowance: account.allowance(),
            held,
        });
        Ok(())
    }

    /// Holds `worst_case` (the cost of `tokens`) for a request, or refuses with 402.
    pub async fn hold(
        &self,
        db: &Db,
        prices: &PriceBook,
        account_id: i64,
        worst_case: Decimal,
        tokens: TokenCounts,
    ) -> Result<Option<Hold>, ApiError> {
        self.load(db, prices, account_id).await?;
        let mut funds = self.funds.lock();
        let Some(f) = funds.get_mut(&account_id) else {
            return Err(out_of_range()); // dropped by an overflow since it was loaded
        };
        let Some(allowance) = f.allowance else {
            return Ok(None);
        };
        let available = money::add(f.balance, allowance)
            .and_then(|a| money::sub(a, f.held))
            .map_err(|_| out_of_range())?;
        if available < worst_case {
            return Err(super::refusal(available, worst_case));
        }
        f.held = money::add(f.held, worst_case).map_err(|_| out_of_range())?;
        self.pending.fetch_add(1, Ordering::Relaxed);
        Ok(Some(Hold {
            account_id,
            amount: worst_case,
            tokens,
        }))
    }

    /// Releases the hold and charges `cost` (also for accounts without a limit, whose balance
    /// is kept for display). An account whose figures leave the range of exact money is
    /// dropped, to be read again from the ledger (which then reports the error).
    pub fn settle(&self, account_id: i64, hold: Option<Hold>, cost: Decimal) {
        if hold.is_some() {
            // A task's hold taken before a restart was not counted by this process.
            let _ = self
                .pending
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        }
        let mut funds = self.funds.lock();
        if let Some(f) = funds.get_mut(&account_id) {
            let held = match hold {
                Some(hold) => money::sub(f.held, hold.amount),
                None => Ok(f.held),
            };
            match (held, money::sub(f.balance, cost)) {
                (Ok(held), Ok(balance)) => (f.held, f.balance) = (held, balance),
                _ => {
                    tracing::error!(account_id, "account figures out of range; reloading");
                    funds.remove(&account_id);
                }
            }
        }
    }

    /// A top-up arrived.
    pub fn credit(&self, account_id: i64, amount: Decimal) {
        let mut funds = self.funds.lock();
        if let Some(f) = funds.get_mut(&account_id) {
            match money::add(f.balance, amount) {
                Ok(balance) => f.balance = balance,
                Err(_) => {
                    tracing::error!(account_id, "account balance out of range; reloading");
                    funds.remove(&account_id);
                }
            }
        }
    }

    /// The account's billing settings changed: reload them, keeping holds in flight.
    pub fn set_allowance(&self, account_id: i64, allowance: Option<Decimal>) {
        if let Some(f) = self.funds.lock().get_mut(&account_id) {
            f.allowance = allowance;
        }
    }

    /// Another process changed accounts (a top-up, billing settings): recompute the loaded
    /// accounts from the ledger, keeping what requests in flight hold.
    pub async fn refresh(&self, db: &Db, prices: &PriceBook) -> Result<(), ApiError> {
        let ids: Vec<i64> = self.funds.lock().keys().copied().collect();
        self.ledger.flush().await?;
        for id in ids {
            let Some(account) = store::accounts::get(db, id).await? else {
                continue;
            };
            let balance = balance(db, prices, id).await?;
            if let Some(f) = self.funds.lock().get_mut(&id) {
                f.balance = balance;
                f.allowance = account.allowance();
            }
        }
        Ok(())
    }

    /// Whether admission can take the funds lock now (for `/readyz`): false if it is held
    /// far longer than its arithmetic ever takes.
    pub fn responsive(&self) -> bool {
        self.funds
            .try_lock_for(std::time::Duration::from_millis(100))
            .is_some()
    }

    /// What requests in flight hold now.
    pub fn held(&self, account_id: i64) -> Decimal {
        self.funds
            .lock()
            .get(&account_id)
            .map(|f| f.held)
            .unwrap_or_default()
    }
}

impl LocalSpending {
    /// Holds taken and not yet settled.
    pub fn pending(&self) -> u64 {
        self.pending.load(Ordering::Relaxed)
    }
}
