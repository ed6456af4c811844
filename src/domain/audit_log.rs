//! The audit log of changes: who (an actor: a console user, an admin token's subject, the
//! CLI), what (an action on a target, with the thing as it was before and after, as JSON),
//! when and from where. The console, the admin API and the CLI write an entry after each
//! change they make; operators read it (`store::audit_log`). Secrets never go in: a key is
//! logged as its view, which holds only its prefix.

use serde::Serialize;

use crate::error::Error;
use crate::store::audit_log::{Entry, NewEntry};
use crate::store::{self, Db};

/// Who made a change, and from where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub name: String,
    pub address: String,
}

impl Actor {
    pub fn console(email: &str, address: &str) -> Actor {
        Actor {
            name: format!("console:{email}"),
            address: address.to_owned(),
        }
    }

    pub fn admin(subject: &str, address: &str) -> Actor {
        let subject = if subject.is_empty() { "-" } else { subject };
        Actor {
            name: format!("admin:{subject}"),
            address: address.to_owned(),
        }
    }

    pub fn cli() -> Actor {
        Actor {
            name: "cli".into(),
            address: String::new(),
        }
    }
}

/// One change: `action` (e.g. `key.revoke`) on `target` (e.g. `key:12`) of `account_id`.
pub struct Change<'a, B: Serialize, A: Serialize> {
    pub action: &'a str,
    pub target: String,
    pub account_id: Option<i64>,
    pub before: Option<&'a B>,
    pub after: Option<&'a A>,
}

impl<'a, A: Serialize> Change<'a, (), A> {
    /// Something made: `after` is what it is.
    pub fn created(action: &'a str, target: String, account_id: Option<i64>, after: &'a A) -> Self {
        Change {
            action,
            target,
            account_id,
            before: None,
            after: Some(after),
        }
    }
}

impl<'a> Change<'a, (), ()> {
    /// Something done that changes no thing's fields (a sign-in, a finalized invoice).
    pub fn event(action: &'a str, target: String, account_id: Option<i64>) -> Self {
        Change {
            action,
            target,
            account_id,
            before: None,
            after: None,
        }
    }
}

impl<'a, T: Serialize> Change<'a, T, T> {
    /// A thing changed from `before` to `after`.
    pub fn updated(
        action: &'a str,
        target: String,
        account_id: Option<i64>,
        before: &'a T,
        after: &'a T,
    ) -> Self {
        Change {
            action,
            target,
            account_id,
            before: Some(before),
            after: Some(after),
        }
    }
}

/// Writes `change` by `actor` to the log.
pub async fn record<B: Serialize, A: Serialize>(
    db: &Db,
    actor: &Actor,
    change: Change<'_, B, A>,
) -> Result<(), Error> {
    let before = json(change.before)?;
    let after = json(change.after)?;
    store::audit_log::append(
        db,
        NewEntry {
            actor: &actor.name,
            address: &actor.address,
            account_id: change.account_id,
            action: change.action,
            target: &change.target,
            before: before.as_deref(),
            after: after.as_deref(),
        },
    )
    .await?;
    Ok(())
}

fn json<T: Serialize>(value: Option<&T>) -> Result<Option<String>, Error> {
    value
        .map(serde_json::to_string)
        .transpose()
        .map_err(|e| Error::Internal(e.into()))
}

/// The most entries one page holds.
pub const PAGE: i64 = 100;

/// A page of the log, newest first, of one account or all, before entry `before_id`.
pub async fn page(
    db: &Db,
    account_id: Option<i64>,
    before_id: Option<i64>,
) -> Result<Vec<Entry>, Error> {
    Ok(store::audit_log::page(db, account_id, before_id, PAGE).await?)
}
