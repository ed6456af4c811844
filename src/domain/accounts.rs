//! Accounts: opening one, finding one by name, its money (balance, held, available), its
//! credit limit, its top-ups and the credit and debit notes that correct it.

use rust_decimal::Decimal;
use serde::Serialize;

use crate::billing::money;
use crate::config::check_name;
use crate::domain::audit_log::Change;
use crate::error::Error;
use crate::limits::spending::Spending;
use crate::store::accounts::{Account, BillingMode, Topup};
use crate::store::{self, Db};

/// An account with its money: balance = top-ups - charges; available adds the credit and
/// subtracts what requests in flight hold (`null`: no limit).
#[derive(Serialize)]
pub struct AccountView {
    #[serde(flatten)]
    pub account: Account,
    /// The account's own money: top-ups and notes less what grants did not pay.
    pub balance: Decimal,
    /// What its open credit grants still hold (spent before the balance).
    pub grants: Decimal,
    pub held: Decimal,
    pub available: Option<Decimal>,
    pub currency: &'static str,
}

/// `account` with its money, from the ledger in `db` (imported up to now) and what
/// `spending` holds for requests in flight.
pub async fn view(db: &Db, spending: &Spending, account: Account) -> Result<AccountView, Error> {
    let funds = store::funds::of(db, account.id).await?;
    let balance = funds.balance()?;
    let held = spending.held(account.id).await?.normalize();
    let available = match account.allowance() {
        Some(a) => Some(money::sub(money::add(funds.spendable()?, a)?, held)?.normalize()),
        None => None,
    };
    Ok(AccountView {
        account,
        balance,
        grants: funds.grant_pool.normalize(),
        held,
        available,
        currency: "CNY",
    })
}

/// A credit limit within `money`'s bounds (400 naming `credit_limit` otherwise).
pub fn check_credit(credit_limit: Option<Decimal>) -> Result<(), Error> {
    match credit_limit {
        Some(limit) => money::check_amount(limit, "credit_limit")
            .map_err(|e| Error::invalid(e, "credit_limit")),
        None => Ok(()),
    }
}

/// Credits `amount` once per idempotency `key`: the top-up and whether this call made it (a
/// retry returns the first one); the same key with another amount is 409.
pub async fn top_up(
    db: &Db,
    account_id: i64,
    amount: Decimal,
    key: &str,
    note: &str,
) -> Result<(Topup, bool), Error> {
    if amount <= Decimal::ZERO {
        return Err(Error::invalid(
            "amount must be a positive decimal string, e.g. \"100.00\"",
            "amount",
        ));
    }
    money::check_amount(amount, "amount").map_err(|e| Error::invalid(e, "amount"))?;
    if key.is_empty() || key.len() > 200 {
        return Err(Error::invalid(
            "an idempotency key of 1-200 characters is required",
            "idempotency_key",
        ));
    }
    let (topup, created) = store::accounts::top_up(db, account_id, amount, key, note).await?;
    if !created && topup.amount != amount {
        return Err(Error::Conflict(format!(
            "Idempotency-Key '{key}' was used for a top-up of {}",
            topup.amount
        )));
    }
    Ok((topup, created))
}

/// Creates an account; 409 if the name is taken (the database's unique name decides, so
/// two at once cannot both pass).
pub async fn create(db: &Db, name: &str) -> Result<Account, Error> {
    Ok(store::accounts::create(db, name).await?)
}

/// Opens an account named `name`, billed as `mode` with `credit_limit`: the name and the
/// limit checked (400 naming them), 409 if the name is taken.
pub async fn open(
    db: &Db,
    name: &str,
    mode: BillingMode,
    credit_limit: Option<Decimal>,
) -> Result<Account, Error> {
    check_name(name).map_err(|e| Error::invalid(format!("name: {e}"), "name"))?;
    check_credit(credit_limit)?;
    let account = create(db, name).await?;
    set_billing(db, account.id, Some(mode), Some(credit_limit)).await
}

/// Changes how account `id` is billed: `None` keeps a setting, `Some(None)` removes the
/// credit limit. Returns the account as it is now.
pub async fn set_billing(
    db: &Db,
    id: i64,
    mode: Option<BillingMode>,
    credit_limit: Option<Option<Decimal>>,
) -> Result<Account, Error> {
    let account = get(db, id).await?;
    let mode = mode.unwrap_or(account.billing_mode);
    let credit = credit_limit.unwrap_or(account.credit_limit);
    check_credit(credit)?;
    store::accounts::set_billing(db, id, mode, credit).await?;
    get(db, id).await
}

/// The time zone `account`'s figures are shown in: its own, else `default` (the billing
/// time zone).
pub fn zone_of(account: &Account, default: chrono_tz::Tz) -> chrono_tz::Tz {
    account
        .time_zone
        .as_deref()
        .and_then(|z| z.parse().ok())
        .unwrap_or(default)
}

/// A display name (any script, up to 100 characters) and a time zone (an IANA name, or
/// empty for the billing time zone) as stored, or 400 naming the wrong one.
pub fn check_profile<'a>(
    display_name: &'a str,
    time_zone: &'a str,
) -> Result<(&'a str, Option<&'a str>), Error> {
    let display_name = display_name.trim();
    if display_name.chars().count() > 100 || display_name.chars().any(char::is_control) {
        return Err(Error::invalid(
            "display_name has at most 100 characters and no control characters",
            "display_name",
        ));
    }
    let zone = match time_zone.trim() {
        "" => None,
        name if name.parse::<chrono_tz::Tz>().is_ok() => Some(name),
        name => {
            return Err(Error::invalid(
                format!("time_zone '{name}' is not an IANA time zone, e.g. Asia/Shanghai"),
                "time_zone",
            ));
        }
    };
    Ok((display_name, zone))
}

/// The audit log's entry for an account opened.
pub fn opened(account: &Account) -> Change<'_, (), Account> {
    Change::created(
        "account.create",
        format!("account:{}", account.id),
        Some(account.id),
        account,
    )
}

/// A correction after the fact: a credit note gives money back, a debit note charges
/// money missed. Neither changes a record or a final invoice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Note {
    Credit,
    Debit,
}

impl Note {
    pub fn parse(text: &str) -> Result<Note, Error> {
        match text {
            "credit" | "credit_note" => Ok(Note::Credit),
            "debit" | "debit_note" => Ok(Note::Debit),
            _ => Err(Error::invalid("kind must be credit or debit", "kind")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Note::Credit => "credit_note",
            Note::Debit => "debit_note",
        }
    }
}

/// What a note says: how much (CNY, to the fen), about which month, why, and who issued it.
pub struct NoteRequest<'a> {
    pub note: Note,
    pub amount: Decimal,
    pub period: &'a str,
    pub reason: &'a str,
    pub actor: &'a str,
    pub idempotency_key: &'a str,
}

/// Issues a credit or debit note to `account_id` once per idempotency key: its balance
/// (and every replica's holds) count it at once, and the invoice of the month it is
/// issued in lists it. Returns the note and whether this call issued it; the same key
/// with another note is 409.
pub async fn issue_note(
    db: &Db,
    account_id: i64,
    zone: chrono_tz::Tz,
    asked: &NoteRequest<'_>,
) -> Result<(Topup, bool), Error> {
    let amount = asked.amount;
    check_fen(amount)?;
    let period = crate::billing::period::Month::parse(asked.period)
        .map_err(|e| Error::invalid(e, "period"))?;
    if period > crate::billing::period::Month::containing(chrono::Utc::now(), zone) {
        return Err(Error::invalid("period is in the future", "period"));
    }
    let (reason, key) = reason_and_key(asked.reason, asked.idempotency_key)?;
    let signed = match asked.note {
        Note::Credit => amount,
        Note::Debit => -amount,
    };
    let period = period.to_string();
    let new = store::accounts::NewFunds {
        account_id,
        kind: asked.note.as_str(),
        amount: signed,
        key,
        note: reason,
        period: Some(&period),
        actor: asked.actor,
        at: None,
    };
    let (note, created) = store::accounts::add_funds(db, &new).await?;
    let same = note.kind == asked.note.as_str() && note.amount == signed;
    if !created && !same {
        return Err(Error::Conflict(format!(
            "Idempotency-Key '{key}' was used for a {} of {}",
            note.kind, note.amount
        )));
    }
    Ok((note, created))
}

/// A positive amount in CNY to the fen, within the bounds of exact money (notes, grants).
pub fn check_fen(amount: Decimal) -> Result<(), Error> {
    if amount <= Decimal::ZERO || amount.normalize().scale() > 2 {
        return Err(Error::invalid(
            "amount must be a positive amount in CNY with at most two decimals, e.g. \"12.50\"",
            "amount",
        ));
    }
    money::check_amount(amount, "amount").map_err(|e| Error::invalid(e, "amount"))
}

/// A money move's reason (1-500 characters, trimmed) and idempotency key (1-200 bytes).
pub fn reason_and_key<'a>(reason: &'a str, key: &'a str) -> Result<(&'a str, &'a str), Error> {
    let reason = reason.trim();
    if reason.is_empty() || reason.chars().count() > 500 {
        return Err(Error::invalid(
            "a reason of 1-500 characters is required",
            "reason",
        ));
    }
    if key.is_empty() || key.len() > 200 {
        return Err(Error::invalid(
            "an idempotency key of 1-200 characters is required",
            "idempotency_key",
        ));
    }
    Ok((reason, key))
}

/// The audit log's entry for a credit or debit note issued.
pub fn noted(note: &Topup) -> Change<'_, (), Topup> {
    let id = note.account_id;
    let action = match note.kind.as_str() {
        "debit_note" => "account.debit_note",
        _ => "account.credit_note",
    };
    Change::created(action, format!("account:{id}"), Some(id), note)
}

/// The audit log's entry for a top-up credited.
pub fn credited(topup: &Topup) -> Change<'_, (), Topup> {
    let id = topup.account_id;
    Change::created("account.top_up", format!("account:{id}"), Some(id), topup)
}

/// Sets account `id`'s display name (any script, up to 100 characters) and time zone (an
/// IANA name; empty: the billing time zone). Returns the account as it is now.
pub async fn set_profile(
    db: &Db,
    id: i64,
    display_name: &str,
    time_zone: &str,
) -> Result<Account, Error> {
    let (display_name, zone) = check_profile(display_name, time_zone)?;
    get(db, id).await?;
    store::accounts::set_profile(db, id, display_name, zone).await?;
    get(db, id).await
}

/// Every account, oldest first.
pub async fn list(db: &Db) -> Result<Vec<Account>, Error> {
    Ok(store::accounts::list(db).await?)
}

/// Account `id`, or 404.
pub async fn get(db: &Db, id: i64) -> Result<Account, Error> {
    store::accounts::get(db, id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("account {id} does not exist")))
}

/// The account named `name`, or 404.
pub async fn named(db: &Db, name: &str) -> Result<Account, Error> {
    store::accounts::find_by_name(db, name)
        .await?
        .ok_or_else(|| Error::NotFound(format!("account '{name}' does not exist")))
}

/// The id of the account named `name`, if a name is given.
pub async fn id_of(db: &Db, name: Option<&str>) -> Result<Option<i64>, Error> {
    match name {
        Some(name) => Ok(Some(named(db, name).await?.id)),
        None => Ok(None),
    }
}
