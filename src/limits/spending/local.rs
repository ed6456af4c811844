//! Spending holds in this process's memory, for the SQLite ledger (one gateway per
//! ledger): the account's figures are loaded from the ledger once and kept here. Holds are
//! taken under one lock, so however many requests run at once and however long their
//! answers, an account never goes below its allowance. Each hold is kept by its request
//! id and settled once, whoever settles it and however often (a task's poll and its
//! expiry may both try). Arithmetic is checked: an out-of-range amount is an error for
//! that account.

use foldhash::HashMap;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use rust_decimal::Decimal;

use super::{Hold, out_of_range};
use crate::billing::{TokenCounts, money};
use crate::error::Error;
use crate::metering::Ledger;
use crate::store::{self, Db};

#[derive(Debug, Clone)]
struct Funds {
    /// Top-ups minus the costs of settled requests, plus what open grants hold (a grant's
    /// burn moves money from the one to the other, so settling charges the whole cost).
    balance: Decimal,
    /// How far below zero the balance may go; `None`: no limit.
    allowance: Option<Decimal>,
    /// Worst cases held by requests in flight.
    held: Decimal,
    /// The top-ups `balance` includes: every one up to the newest in the ledger's figures
    /// it was read from (SQLite commits them in the order of their ids), and those credited
    /// here since, which may arrive in any order. A top-up the figures had already (read
    /// just after it committed) is not counted twice.
    topups: Included,
}

#[derive(Debug, Clone, Default)]
struct Included {
    through: i64,
    since: Vec<i64>,
}

impl Included {
    fn has(&self, id: i64) -> bool {
        id <= self.through || self.since.contains(&id)
    }
}

/// What the lock guards: the accounts' funds and the holds that make up their `held`.
#[derive(Default)]
struct Book {
    /// Account id → funds, loaded from the ledger on first use.
    funds: HashMap<i64, Funds>,
    /// Request id → (account id, amount) of each hold not yet settled.
    holds: HashMap<String, (i64, Decimal)>,
    /// Top-ups (id, amount) credited while their account was not loaded: applied by its
    /// load if the figures it read were older.
    early_credits: HashMap<i64, Vec<(i64, Decimal)>>,
    /// Accounts whose figures are being read from the ledger (loaded or refreshed): how
    /// many reads, and the charges settled meanwhile (request id, cost), whose records the
    /// read may or may not hold.
    reading: HashMap<i64, (u32, Vec<(String, Decimal)>)>,
}

impl Book {
    fn begin_read(&mut self, account_id: i64) {
        self.reading.entry(account_id).or_default().0 += 1;
    }

    fn end_read(&mut self, account_id: i64) {
        if let Some(entry) = self.reading.get_mut(&account_id) {
            entry.0 -= 1;
            if entry.0 == 0 {
                self.reading.remove(&account_id);
            }
        }
    }

    /// The charges settled during the read whose records its snapshot does not hold:
    /// those of `ids` it found absent, and any settled after `ids` were taken (counted as
    /// absent: at worst charged twice until the next read, never not at all).
    fn missing(&self, account_id: i64, ids: &[String], present: &[bool]) -> Result<Decimal, Error> {
        let Some((_, charges)) = self.reading.get(&account_id) else {
            return Ok(Decimal::ZERO);
        };
        charges
            .iter()
            .enumerate()
            .filter(|(i, _)| !(*i < ids.len() && present.get(*i) == Some(&true)))
            .try_fold(Decimal::ZERO, |sum, (_, (_, cost))| money::add(sum, *cost))
            .map_err(|_| out_of_range())
    }
}

/// What a read of an account's figures found: what it can spend, its newest top-up, and
/// which of the charges settled meanwhile (by request id) its records hold.
struct Read {
    spendable: Decimal,
    last_topup: i64,
    ids: Vec<String>,
    present: Vec<bool>,
}

pub struct LocalSpending {
    /// Held only for arithmetic.
    book: Mutex<Book>,
    /// Holds taken and not yet settled.
    pending: AtomicU64,
    /// Flushed before a balance is read from the database.
    ledger: Ledger,
}

impl LocalSpending {
    pub fn new(ledger: Ledger) -> LocalSpending {
        LocalSpending {
            book: Mutex::default(),
            pending: AtomicU64::new(0),
            ledger,
        }
    }

    /// Whether the account has a limit at all (no need to estimate a cost otherwise).
    pub async fn limited(&self, db: &Db, account_id: i64) -> Result<bool, Error> {
        self.load(db, account_id).await?;
        let book = self.book.lock();
        Ok(book
            .funds
            .get(&account_id)
            .is_some_and(|f| f.allowance.is_some()))
    }

    async fn load(&self, db: &Db, account_id: i64) -> Result<(), Error> {
        if self.book.lock().funds.contains_key(&account_id) {
            return Ok(());
        }
        // Boxed: only an account's first request reads the ledger, and every request's
        // future would otherwise have room for the read.
        Box::pin(self.read_in(db, account_id)).await
    }

    /// Reads an account's funds from the ledger into the book.
    async fn read_in(&self, db: &Db, account_id: i64) -> Result<(), Error> {
        let account = store::accounts::get(db, account_id)
            .await?
            .ok_or_else(|| Error::Internal(anyhow::anyhow!("account {account_id} vanished")))?;
        self.book.lock().begin_read(account_id);
        let read = async {
            self.ledger.flush().await?;
            let read = self.read(db, account_id).await?;
            // Pending tasks keep their holds across restarts: the ledger says what they are.
            let tasks = store::tasks::holds_of(db, account_id).await?;
            Ok::<_, Error>((read, tasks))
        }
        .await;
        let mut book = self.book.lock();
        let loaded = Self::loaded(&mut book, account_id, account.allowance(), read);
        book.end_read(account_id);
        loaded
    }

    /// Puts an account read from the ledger in the book (under its lock, so that no
    /// charge settles between the reckoning and the entry).
    fn loaded(
        book: &mut Book,
        account_id: i64,
        allowance: Option<Decimal>,
        read: Result<(Read, Vec<(String, Decimal)>), Error>,
    ) -> Result<(), Error> {
        let (read, tasks) = read?;
        // Another request may have loaded it meanwhile; its state is as fresh and may hold.
        if book.funds.contains_key(&account_id) {
            return Ok(());
        }
        let held = tasks
            .iter()
            .try_fold(Decimal::ZERO, |sum, (_, held)| money::add(sum, *held))
            .map_err(|_| out_of_range())?;
        let missing = book.missing(account_id, &read.ids, &read.present)?;
        let balance = money::sub(read.spendable, missing).map_err(|_| out_of_range())?;
        let mut funds = Funds {
            balance,
            allowance,
            held,
            topups: Included {
                through: read.last_topup,
                since: Vec::new(),
            },
        };
        for (id, amount) in book.early_credits.remove(&account_id).unwrap_or_default() {
            if !funds.topups.has(id) {
                funds.balance = money::add(funds.balance, amount).map_err(|_| out_of_range())?;
                funds.topups.since.push(id);
            }
        }
        book.funds.insert(account_id, funds);
        for (request_id, amount) in tasks {
            book.holds.insert(request_id, (account_id, amount));
        }
        Ok(())
    }

    /// Reads what the account can spend from the ledger (after a flush: every charge
    /// settled before the read began has its record there), with which of the charges
    /// settled since its read began have their records in the same snapshot.
    async fn read(&self, db: &Db, account_id: i64) -> Result<Read, Error> {
        let Db::Sqlite(pool) = db else {
            return Err(Error::Internal(anyhow::anyhow!(
                "holds in memory are SQLite's"
            )));
        };
        let ids: Vec<String> = (self.book.lock().reading.get(&account_id))
            .map(|(_, charges)| charges.iter().map(|(id, _)| id.clone()).collect())
            .unwrap_or_default();
        let (funds, last_topup, present) = store::funds::snapshot(pool, account_id, &ids).await?;
        Ok(Read {
            spendable: funds.spendable()?,
            last_topup,
            ids,
            present,
        })
    }

    /// Holds `worst_case` (the cost of `tokens`) for a request, or refuses with 402.
    pub async fn hold(
        &self,
        db: &Db,
        request_id: &str,
        account_id: i64,
        worst_case: Decimal,
        tokens: TokenCounts,
    ) -> Result<Option<Hold>, Error> {
        self.load(db, account_id).await?;
        let mut book = self.book.lock();
        let book = &mut *book;
        if book.holds.contains_key(request_id) {
            return Err(Error::Internal(anyhow::anyhow!(
                "request {request_id} holds already"
            )));
        }
        let Some(f) = book.funds.get_mut(&account_id) else {
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
        book.holds
            .insert(request_id.to_owned(), (account_id, worst_case));
        self.pending.fetch_add(1, Ordering::Relaxed);
        Ok(Some(Hold {
            account_id,
            amount: worst_case,
            tokens,
        }))
    }

    /// Releases the hold of `request_id` and charges `cost` (also for accounts without a
    /// limit, whose balance is kept for display), once: a request whose hold was settled
    /// already (its record was charged then) changes nothing. An account whose figures
    /// leave the range of exact money is dropped, to be read again from the ledger (which
    /// then reports the error).
    pub fn settle(&self, request_id: &str, account_id: i64, held: bool, cost: Decimal) {
        let mut book = self.book.lock();
        let book = &mut *book;
        let released = match held {
            true => match book.holds.remove(request_id) {
                Some((_, amount)) => {
                    // A task's hold taken before a restart was not counted by this process.
                    let _ = self
                        .pending
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
                    amount
                }
                None => return, // settled before: released and charged then
            },
            false => Decimal::ZERO,
        };
        if let Some(f) = book.funds.get_mut(&account_id) {
            match (money::sub(f.held, released), money::sub(f.balance, cost)) {
                (Ok(held), Ok(balance)) => (f.held, f.balance) = (held, balance),
                _ => {
                    tracing::error!(account_id, "account figures out of range; reloading");
                    book.funds.remove(&account_id);
                }
            }
        }
        // A read of the account's figures under way may not see this record.
        if cost > Decimal::ZERO
            && let Some((_, charges)) = book.reading.get_mut(&account_id)
        {
            charges.push((request_id.to_owned(), cost));
        }
    }

    /// Top-up `topup_id` of `amount` arrived (committed to the ledger): counted unless the
    /// figures loaded from the ledger include it already.
    pub fn credit(&self, account_id: i64, topup_id: i64, amount: Decimal) {
        let mut book = self.book.lock();
        let Some(f) = book.funds.get_mut(&account_id) else {
            let early = book.early_credits.entry(account_id).or_default();
            early.push((topup_id, amount));
            return;
        };
        if !f.topups.has(topup_id) {
            match money::add(f.balance, amount) {
                Ok(balance) => {
                    f.balance = balance;
                    f.topups.since.push(topup_id);
                }
                Err(_) => {
                    tracing::error!(account_id, "account balance out of range; reloading");
                    book.funds.remove(&account_id);
                }
            }
        }
    }

    /// The account's billing settings changed: reload them, keeping holds in flight.
    pub fn set_allowance(&self, account_id: i64, allowance: Option<Decimal>) {
        if let Some(f) = self.book.lock().funds.get_mut(&account_id) {
            f.allowance = allowance;
        }
    }

    /// Another process changed accounts (a top-up, billing settings, a grant): recompute
    /// the loaded accounts from the ledger, keeping what requests in flight hold and every
    /// charge settled while they are read.
    pub async fn refresh(&self, db: &Db) -> Result<(), Error> {
        let ids: Vec<i64> = {
            let mut book = self.book.lock();
            let ids: Vec<i64> = book.funds.keys().copied().collect();
            for &id in &ids {
                book.begin_read(id);
            }
            ids
        };
        let mut refreshed = self.ledger.flush().await.map_err(Error::from);
        for &id in &ids {
            if refreshed.is_err() {
                break;
            }
            refreshed = self.refresh_one(db, id).await;
        }
        let mut book = self.book.lock();
        for id in ids {
            book.end_read(id);
        }
        refreshed
    }

    async fn refresh_one(&self, db: &Db, id: i64) -> Result<(), Error> {
        let Some(account) = store::accounts::get(db, id).await? else {
            return Ok(());
        };
        // A top-up credited here after the read is in the ledger already: read again.
        loop {
            let read = self.read(db, id).await?;
            let mut book = self.book.lock();
            let missing = book.missing(id, &read.ids, &read.present)?;
            let Some(f) = book.funds.get_mut(&id) else {
                return Ok(());
            };
            if f.topups.since.iter().all(|&t| t <= read.last_topup) {
                f.balance = money::sub(read.spendable, missing).map_err(|_| out_of_range())?;
                f.topups = Included {
                    through: read.last_topup,
                    since: Vec::new(),
                };
                f.allowance = account.allowance();
                return Ok(());
            }
        }
    }

    /// Whether admission can take the funds lock now (for `/readyz`): false if it is held
    /// far longer than its arithmetic ever takes.
    pub fn responsive(&self) -> bool {
        self.book
            .try_lock_for(std::time::Duration::from_millis(100))
            .is_some()
    }

    /// The account's balance and held amount, if loaded.
    pub fn running(&self, account_id: i64) -> Option<(Decimal, Decimal)> {
        let book = self.book.lock();
        book.funds.get(&account_id).map(|f| (f.balance, f.held))
    }

    /// What requests in flight hold now.
    pub fn held(&self, account_id: i64) -> Decimal {
        self.book
            .lock()
            .funds
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
