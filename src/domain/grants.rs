//! Credit grants: money given to an account, paid or promotional, with an effective and an
//! expiry time and a priority, that its usage burns before its balance
//! (`billing::grants`, in the ledger's insert: `store::grants`). Issued once per
//! idempotency key through the admin API, the CLI, or on opening an account
//! (`billing.welcome_grant`); opened and closed on time by the upkeep (`upkeep`), what is
//! left at expiry released.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use crate::config::WelcomeGrant;
use crate::domain::accounts;
use crate::domain::audit_log::Change;
use crate::error::Error;
use crate::limits::spending::Spending;
use crate::store::grants::{Grant, NewGrant};
use crate::store::{self, Db};

/// What a grant says.
pub struct GrantRequest<'a> {
    /// CNY; absent for a token grant.
    pub amount: Option<Decimal>,
    /// A token grant: this many prompt and completion tokens of `model`.
    pub tokens: Option<u64>,
    pub model: Option<&'a str>,
    /// `paid` or `promotional`.
    pub kind: &'a str,
    /// 0 (burned first) to 100; 50 when absent.
    pub priority: Option<i32>,
    /// Now when absent.
    pub effective_at: Option<DateTime<Utc>>,
    /// Never when absent.
    pub expires_at: Option<DateTime<Utc>>,
    pub reason: &'a str,
    pub actor: &'a str,
    pub idempotency_key: &'a str,
}

/// Issues a grant to `account_id` once per idempotency key: admission (`spending`, in this
/// process; others hear of it by the accounts' change signal) counts it at once if it is
/// effective (else from its effective time). Returns it and whether this call issued
/// it; the same key with another grant is 409.
pub async fn issue(
    db: &Db,
    spending: Option<&Spending>,
    account_id: i64,
    asked: &GrantRequest<'_>,
) -> Result<(Grant, bool), Error> {
    let (amount, tokens) = match (asked.amount, asked.tokens, asked.model) {
        (Some(amount), None, None) => {
            accounts::check_fen(amount)?;
            (amount, None)
        }
        (None, Some(n), Some(model)) if (1..=i64::MAX as u64).contains(&n) => {
            if model.is_empty() || model.len() > 200 {
                return Err(Error::invalid(
                    "model names the model whose tokens it pays for",
                    "model",
                ));
            }
            (Decimal::ZERO, Some((model, n as i64)))
        }
        (None, Some(_), Some(_)) => {
            return Err(Error::invalid("tokens must be at least 1", "tokens"));
        }
        (None, None, _) | (None, Some(_), None) => {
            return Err(Error::invalid(
                "a grant is an amount (CNY), or tokens of a model",
                if asked.tokens.is_some() {
                    "model"
                } else {
                    "amount"
                },
            ));
        }
        (Some(_), _, _) => {
            return Err(Error::invalid(
                "a grant is an amount or tokens of a model, not both",
                "tokens",
            ));
        }
    };
    if !["paid", "promotional"].contains(&asked.kind) {
        return Err(Error::invalid(
            "kind must be \"paid\" or \"promotional\"",
            "kind",
        ));
    }
    let priority = asked.priority.unwrap_or(50);
    if !(0..=100).contains(&priority) {
        return Err(Error::invalid(
            "priority must be from 0 (burned first) to 100",
            "priority",
        ));
    }
    let now = Utc::now();
    let effective_at = asked.effective_at.unwrap_or(now);
    if asked.expires_at.is_some_and(|e| e <= effective_at.max(now)) {
        return Err(Error::invalid(
            "expires_at must be after the grant is effective and in the future",
            "expires_at",
        ));
    }
    let (reason, key) = accounts::reason_and_key(asked.reason, asked.idempotency_key)?;
    let new = NewGrant {
        account_id,
        amount,
        tokens,
        kind: asked.kind,
        priority,
        effective_at,
        expires_at: asked.expires_at,
        reason,
        actor: asked.actor,
        key,
    };
    let (grant, created) = store::grants::create(db, &new).await?;
    let same = grant.amount == amount
        && grant.tokens == tokens.map(|(_, n)| n)
        && grant.kind == asked.kind
        && grant.priority == priority;
    if !created && !same {
        return Err(Error::Conflict(format!(
            "Idempotency-Key '{key}' was used for a {} grant of {}",
            grant.kind, grant.amount
        )));
    }
    if let (true, Some(spending)) = (created, spending) {
        spending.refresh(db).await?;
    }
    Ok((grant, created))
}

/// The grant `billing.welcome_grant` gives a newly opened account, if one is configured.
pub async fn welcome(
    db: &Db,
    spending: Option<&Spending>,
    account_id: i64,
    welcome: Option<&WelcomeGrant>,
) -> Result<Option<Grant>, Error> {
    let Some(welcome) = welcome else {
        return Ok(None);
    };
    let expires_at = welcome
        .expires_after_days
        .map(|days| Utc::now() + chrono::Duration::days(i64::from(days)));
    let asked = GrantRequest {
        amount: Some(welcome.amount.0),
        tokens: None,
        model: None,
        kind: &welcome.kind,
        priority: Some(welcome.priority),
        effective_at: None,
        expires_at,
        reason: &welcome.reason,
        actor: "billing.welcome_grant",
        idempotency_key: "welcome",
    };
    let (grant, _) = issue(db, spending, account_id, &asked).await?;
    Ok(Some(grant))
}

/// The account's grants, newest first, with what each has left.
pub async fn of_account(db: &Db, account_id: i64) -> Result<Vec<Grant>, Error> {
    Ok(store::grants::of_account(db, account_id).await?)
}

/// The audit log's entry for a grant issued.
pub fn issued(grant: &Grant) -> Change<'_, (), Grant> {
    let id = grant.account_id;
    Change::created(
        "account.grant",
        format!("grant:{}", grant.id),
        Some(id),
        grant,
    )
}

/// Opens the grants effective by now and closes the expired ones (releasing what they
/// hold), and tells admission; returns when the next grant opens or expires (ms).
pub async fn upkeep(db: &Db, spending: &Spending) -> Result<Option<i64>, Error> {
    let moved = store::grants::due(db, Utc::now()).await?;
    if !moved.is_empty() {
        spending.refresh(db).await?;
    }
    Ok(store::grants::next_due(db).await?)
}
