//! Asynchronous tasks: recorded at submission, ended by the poll that first sees them end
//! (or by expiry). The row only says where a task stands; its money is in its usage
//! record, whose request id is the task's, so the ledger keeps one whatever races.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use super::{Db, Money, Read, Result, from_ms, on, to_ms};

/// A task the backend accepted.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Task {
    pub request_id: String,
    pub task_id: String,
    pub account_id: i64,
    pub key_id: i64,
    pub model: String,
    pub chip: String,
    pub endpoint: String,
    pub submitted_at: DateTime<Utc>,
    /// `pending`, `succeeded`, `failed` or `expired`.
    pub state: String,
    pub ended_at: Option<DateTime<Utc>>,
    /// The spending hold it keeps until it ends (0 for an account without a limit).
    pub held: Decimal,
    /// tollgate's count of its prompt at submission: billed if its end reports no usage.
    pub prompt_estimate: u64,
}

fn from_row(row: &impl Read) -> Result<Task> {
    Ok(Task {
        request_id: row.read("request_id")?,
        task_id: row.read("task_id")?,
        account_id: row.read("account_id")?,
        key_id: row.read("key_id")?,
        model: row.read("model")?,
        chip: row.read("chip")?,
        endpoint: row.read("endpoint")?,
        submitted_at: from_ms(row.read("submitted_at")?),
        state: row.read("state")?,
        ended_at: row.read::<Option<i64>>("ended_at")?.map(from_ms),
        held: row.money("held")?,
        prompt_estimate: row.read::<i64>("prompt_estimate")?.max(0).unsigned_abs(),
    })
}

pub async fn insert(db: &Db, task: &Task) -> Result<()> {
    on!(db, |pool| {
        sqlx::query(
            "INSERT INTO tasks (request_id, task_id, account_id, key_id, model, chip,
                endpoint, submitted_at, state, held, prompt_estimate)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', $9, $10)",
        )
        .bind(&task.request_id)
        .bind(&task.task_id)
        .bind(task.account_id)
        .bind(task.key_id)
        .bind(&task.model)
        .bind(&task.chip)
        .bind(&task.endpoint)
        .bind(to_ms(task.submitted_at))
        .bind(Money(task.held))
        .bind(i64::try_from(task.prompt_estimate).unwrap_or(i64::MAX))
        .execute(pool)
        .await?;
        Ok(())
    })
}

/// The task `task_id` submitted with a key of lineage `lineage` (a key and the secrets it
/// was rotated to): another key's task is not found.
pub async fn owned(db: &Db, task_id: &str, lineage: i64) -> Result<Option<Task>> {
    on!(db, |pool| {
        let row = sqlx::query(
            "SELECT t.* FROM tasks t JOIN api_keys k ON k.id = t.key_id
             WHERE t.task_id = $1 AND COALESCE(k.lineage_id, k.id) = $2
             ORDER BY t.submitted_at DESC LIMIT 1",
        )
        .bind(task_id)
        .bind(lineage)
        .fetch_optional(pool)
        .await?;
        row.as_ref().map(from_row).transpose()
    })
}

pub async fn by_request_id(db: &Db, request_id: &str) -> Result<Option<Task>> {
    on!(db, |pool| {
        let row = sqlx::query("SELECT * FROM tasks WHERE request_id = $1")
            .bind(request_id)
            .fetch_optional(pool)
            .await?;
        row.as_ref().map(from_row).transpose()
    })
}

/// Ends a pending task as `state`; whether this call ended it (a task ends once).
pub async fn end(db: &Db, request_id: &str, state: &str, at: DateTime<Utc>) -> Result<bool> {
    on!(db, |pool| {
        let done = sqlx::query(
            "UPDATE tasks SET state = $2, ended_at = $3
             WHERE request_id = $1 AND state = 'pending'",
        )
        .bind(request_id)
        .bind(state)
        .bind(to_ms(at))
        .execute(pool)
        .await?;
        Ok(done.rows_affected() == 1)
    })
}

/// Tasks in `state` (all when `None`), newest first, at most `limit`.
pub async fn list(db: &Db, state: Option<&str>, limit: i64) -> Result<Vec<Task>> {
    on!(db, |pool| {
        let rows = sqlx::query(
            "SELECT * FROM tasks WHERE ($1 IS NULL OR state = $1)
             ORDER BY submitted_at DESC LIMIT $2",
        )
        .bind(state)
        .bind(limit)
        .fetch_all(pool)
        .await?;
        rows.iter().map(from_row).collect()
    })
}

/// Account `account_id`'s tasks in `state` (all when `None`), newest first, at most
/// `limit`: a walk of the account's (account, submitted) index.
pub async fn of_account(
    db: &Db,
    account_id: i64,
    state: Option<&str>,
    limit: i64,
) -> Result<Vec<Task>> {
    on!(db, |pool| {
        let rows = sqlx::query(
            "SELECT * FROM tasks WHERE account_id = $1 AND ($2 IS NULL OR state = $2)
             ORDER BY submitted_at DESC LIMIT $3",
        )
        .bind(account_id)
        .bind(state)
        .bind(limit)
        .fetch_all(pool)
        .await?;
        rows.iter().map(from_row).collect()
    })
}

/// Pending tasks submitted before `before`, oldest first: those that expire.
pub async fn pending_before(db: &Db, before: DateTime<Utc>, limit: i64) -> Result<Vec<Task>> {
    on!(db, |pool| {
        let rows = sqlx::query(
            "SELECT * FROM tasks WHERE state = 'pending' AND submitted_at < $1
             ORDER BY submitted_at LIMIT $2",
        )
        .bind(to_ms(before))
        .bind(limit)
        .fetch_all(pool)
        .await?;
        rows.iter().map(from_row).collect()
    })
}

/// What each of an account's pending tasks holds, by request id.
pub async fn holds_of(db: &Db, account_id: i64) -> Result<Vec<(String, Decimal)>> {
    on!(db, |pool| {
        sqlx::query(
            "SELECT request_id, held FROM tasks WHERE account_id = $1 AND state = 'pending'",
        )
        .bind(account_id)
        .fetch_all(pool)
        .await?
        .iter()
        .map(|row| Ok((row.read("request_id")?, row.money("held")?)))
        .collect()
    })
}

/// Tasks not yet polled to their end.
pub async fn count_pending(db: &Db) -> Result<i64> {
    Ok(on!(db, |pool| {
        sqlx::query_scalar("SELECT COUNT(*) FROM tasks WHERE state = 'pending'")
            .fetch_one(pool)
            .await?
    }))
}
