//! The webhooks' outbox (`migrations/*/..._webhooks.sql`): events made from the audit log
//! (its cursor moved in the same transaction) or from thresholds fired (their state row
//! in the same transaction), one delivery per endpoint, leased by the replica that sends
//! it, every attempt kept.

use serde::Serialize;

use super::{Db, Result, on};

/// An event to store, with the endpoints it goes to.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub id: String,
    pub kind: String,
    pub account_id: Option<i64>,
    pub payload: String,
    pub endpoints: Vec<String>,
}

/// An audit log entry, as events are made of it.
#[derive(Debug, Clone)]
pub struct Audited {
    pub id: i64,
    pub at_ms: i64,
    pub account_id: Option<i64>,
    pub action: String,
    pub target: String,
    pub after: Option<String>,
}

macro_rules! insert_event {
    ($tx:expr, $event:expr, $now:expr) => {{
        let event = $event;
        sqlx::query(
            "INSERT INTO webhook_events (id, type, account_id, payload, created_at)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&event.id)
        .bind(&event.kind)
        .bind(event.account_id)
        .bind(&event.payload)
        .bind($now)
        .execute(&mut *$tx)
        .await?;
        for endpoint in &event.endpoints {
            sqlx::query(
                "INSERT INTO webhook_deliveries (event_id, endpoint, state, next_at)
                 VALUES ($1, $2, 'pending', $3)",
            )
            .bind(&event.id)
            .bind(endpoint)
            .bind($now)
            .execute(&mut *$tx)
            .await?;
        }
    }};
}

/// Turns the audit log's entries after the cursor, up to those made at `until_ms` (later
/// ones may still be committing with smaller ids), into events (`make`: `None` for an
/// entry that makes none), and moves the cursor past them, all in one transaction: each
/// entry makes its events once, whichever replica does it. How many events were made.
pub async fn from_audit_log(
    db: &Db,
    until_ms: i64,
    now_ms: i64,
    mut make: impl FnMut(&Audited) -> Option<Outgoing>,
) -> Result<usize> {
    const READ: &str = "SELECT id, at, account_id, action, target, after FROM audit_log
         WHERE id > $1 AND at <= $2 ORDER BY id LIMIT 500";
    type Row = (i64, i64, Option<i64>, String, String, Option<String>);
    let mut made = 0;
    macro_rules! produce {
        ($tx:expr, $last:expr) => {{
            let last: i64 = $last;
            let rows: Vec<Row> = sqlx::query_as(READ)
                .bind(last)
                .bind(until_ms)
                .fetch_all(&mut *$tx)
                .await?;
            let mut moved = last;
            for (id, at_ms, account_id, action, target, after) in rows {
                moved = id;
                let entry = Audited {
                    id,
                    at_ms,
                    account_id,
                    action,
                    target,
                    after,
                };
                if let Some(event) = make(&entry).filter(|e| !e.endpoints.is_empty()) {
                    insert_event!($tx, &event, now_ms);
                    made += 1;
                }
            }
            if moved != last {
                sqlx::query("UPDATE alert_cursor SET last_id = $1 WHERE id = 1")
                    .bind(moved)
                    .execute(&mut *$tx)
                    .await?;
            }
        }};
    }
    match db {
        Db::Sqlite(pool) => {
            let mut tx = pool.begin().await?;
            // A write first: the transaction holds the ledger's write lock from here.
            sqlx::query("UPDATE alert_cursor SET last_id = last_id WHERE id = 1")
                .execute(&mut *tx)
                .await?;
            let last: i64 = sqlx::query_scalar("SELECT last_id FROM alert_cursor WHERE id = 1")
                .fetch_one(&mut *tx)
                .await?;
            produce!(tx, last);
            tx.commit().await?;
        }
        Db::Postgres(pool) => {
            let mut tx = pool.begin().await?;
            let last: i64 =
                sqlx::query_scalar("SELECT last_id FROM alert_cursor WHERE id = 1 FOR UPDATE")
                    .fetch_one(&mut *tx)
                    .await?;
            produce!(tx, last);
            tx.commit().await?;
        }
    }
    Ok(made)
}

/// The account (if any) of each audit log entry after the cursor, up to those made at
/// `until_ms`: none when there is nothing new; else whose names the events need.
pub async fn pending_accounts(db: &Db, until_ms: i64) -> Result<Vec<Option<i64>>> {
    Ok(on!(db, |pool| {
        sqlx::query_scalar(
            "SELECT account_id FROM audit_log
             WHERE id > (SELECT last_id FROM alert_cursor WHERE id = 1) AND at <= $1
             ORDER BY id LIMIT 500",
        )
        .bind(until_ms)
        .fetch_all(pool)
        .await?
    }))
}

/// The rules of `account_id` that fired and were not re-armed.
pub async fn fired(db: &Db, account_id: i64) -> Result<Vec<String>> {
    Ok(on!(db, |pool| {
        sqlx::query_scalar("SELECT rule FROM alert_states WHERE account_id = $1")
            .bind(account_id)
            .fetch_all(pool)
            .await?
    }))
}

/// Fires rule `rule` of `account_id` with `event`, unless it fired already (another
/// replica, just now): whether this call did.
pub async fn fire(
    db: &Db,
    account_id: i64,
    rule: &str,
    event: &Outgoing,
    now_ms: i64,
) -> Result<bool> {
    const STATE: &str = "INSERT INTO alert_states (account_id, rule, fired_at) VALUES ($1, $2, $3)
         ON CONFLICT (account_id, rule) DO NOTHING";
    let fired = on!(db, |pool| {
        let mut tx = pool.begin().await?;
        let taken = sqlx::query(STATE)
            .bind(account_id)
            .bind(rule)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            == 1;
        if taken && !event.endpoints.is_empty() {
            insert_event!(tx, event, now_ms);
        }
        tx.commit().await?;
        taken
    });
    Ok(fired)
}

/// Re-arms rule `rule` of `account_id`: its condition no longer holds.
pub async fn rearm(db: &Db, account_id: i64, rule: &str) -> Result<()> {
    on!(db, |pool| {
        sqlx::query("DELETE FROM alert_states WHERE account_id = $1 AND rule = $2")
            .bind(account_id)
            .bind(rule)
            .execute(pool)
            .await?;
    });
    Ok(())
}

/// A delivery leased for sending.
#[derive(Debug, Clone)]
pub struct Due {
    pub event_id: String,
    pub endpoint: String,
    pub attempts: i64,
    pub payload: String,
}

/// Leases up to `limit` deliveries due at `now_ms` (pending, not leased or their lease
/// run out) to `owner` until `until_ms`.
pub async fn lease(
    db: &Db,
    owner: &str,
    now_ms: i64,
    until_ms: i64,
    limit: i64,
) -> Result<Vec<Due>> {
    let pick = match db {
        Db::Sqlite(_) => "",
        Db::Postgres(_) => "FOR UPDATE SKIP LOCKED",
    };
    let sql = format!(
        "UPDATE webhook_deliveries SET lease_owner = $1, lease_until = $2
         WHERE (event_id, endpoint) IN (
             SELECT event_id, endpoint FROM webhook_deliveries
             WHERE state = 'pending' AND next_at <= $3
               AND (lease_until IS NULL OR lease_until < $3)
             ORDER BY next_at LIMIT $4 {pick})
         RETURNING event_id, endpoint, attempts"
    );
    let leased: Vec<(String, String, i64)> = on!(db, |pool| {
        sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(owner)
            .bind(until_ms)
            .bind(now_ms)
            .bind(limit)
            .fetch_all(pool)
            .await?
    });
    let mut due = Vec::with_capacity(leased.len());
    for (event_id, endpoint, attempts) in leased {
        let payload: String = on!(db, |pool| {
            sqlx::query_scalar("SELECT payload FROM webhook_events WHERE id = $1")
                .bind(&event_id)
                .fetch_one(pool)
                .await?
        });
        due.push(Due {
            event_id,
            endpoint,
            attempts,
            payload,
        });
    }
    Ok(due)
}

/// What one attempt came to.
#[derive(Debug, Clone)]
pub struct Outcome<'a> {
    pub at_ms: i64,
    pub status: Option<u16>,
    pub error: Option<&'a str>,
    pub ms: i64,
    /// Acknowledged (2xx).
    pub delivered: bool,
    /// When to try again; `None` with `delivered` false: given up.
    pub retry_at_ms: Option<i64>,
}

/// Keeps an attempt of `due` and moves its delivery on (delivered, retried later, or
/// given up), if `owner` still holds its lease.
pub async fn attempted(db: &Db, due: &Due, owner: &str, outcome: &Outcome<'_>) -> Result<()> {
    let state = match (outcome.delivered, outcome.retry_at_ms) {
        (true, _) => "delivered",
        (false, Some(_)) => "pending",
        (false, None) => "failed",
    };
    on!(db, |pool| {
        let mut tx = pool.begin().await?;
        let moved = sqlx::query(
            "UPDATE webhook_deliveries
             SET state = $3, attempts = attempts + 1, next_at = coalesce($4, next_at),
                 delivered_at = $5, lease_owner = NULL, lease_until = NULL
             WHERE event_id = $1 AND endpoint = $2 AND lease_owner = $6 AND state = 'pending'",
        )
        .bind(&due.event_id)
        .bind(&due.endpoint)
        .bind(state)
        .bind(outcome.retry_at_ms)
        .bind(outcome.delivered.then_some(outcome.at_ms))
        .bind(owner)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if moved == 1 {
            sqlx::query(
                "INSERT INTO webhook_attempts (event_id, endpoint, at, status, error, ms)
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&due.event_id)
            .bind(&due.endpoint)
            .bind(outcome.at_ms)
            .bind(outcome.status.map(i64::from))
            .bind(outcome.error)
            .bind(outcome.ms)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
    });
    Ok(())
}

#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    pub at_ms: i64,
    pub status: Option<i64>,
    pub error: Option<String>,
    pub ms: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    pub event_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub account_id: Option<i64>,
    pub endpoint: String,
    pub state: String,
    pub attempts: i64,
    pub next_at_ms: i64,
    pub delivered_at_ms: Option<i64>,
    pub created_at_ms: i64,
    pub tries: Vec<Attempt>,
}

/// The newest deliveries (of `state`, if given), each with its attempts, oldest first.
pub async fn deliveries(db: &Db, state: Option<&str>, limit: i64) -> Result<Vec<Delivery>> {
    type Row = (
        String,
        String,
        Option<i64>,
        String,
        String,
        i64,
        i64,
        Option<i64>,
        i64,
    );
    let rows: Vec<Row> = on!(db, |pool| {
        sqlx::query_as(
            "SELECT d.event_id, e.type, e.account_id, d.endpoint, d.state, d.attempts,
                    d.next_at, d.delivered_at, e.created_at
             FROM webhook_deliveries d JOIN webhook_events e ON e.id = d.event_id
             WHERE ($1 = '' OR d.state = $1)
             ORDER BY e.created_at DESC, d.event_id DESC, d.endpoint LIMIT $2",
        )
        .bind(state.unwrap_or_default())
        .bind(limit)
        .fetch_all(pool)
        .await?
    });
    let mut out = Vec::with_capacity(rows.len());
    for (event_id, kind, account_id, endpoint, state, attempts, next_at, delivered, created) in rows
    {
        let tries: Vec<(i64, Option<i64>, Option<String>, i64)> = on!(db, |pool| {
            sqlx::query_as(
                "SELECT at, status, error, ms FROM webhook_attempts
                 WHERE event_id = $1 AND endpoint = $2 ORDER BY at",
            )
            .bind(&event_id)
            .bind(&endpoint)
            .fetch_all(pool)
            .await?
        });
        out.push(Delivery {
            event_id,
            kind,
            account_id,
            endpoint,
            state,
            attempts,
            next_at_ms: next_at,
            delivered_at_ms: delivered,
            created_at_ms: created,
            tries: tries
                .into_iter()
                .map(|(at_ms, status, error, ms)| Attempt {
                    at_ms,
                    status,
                    error,
                    ms,
                })
                .collect(),
        });
    }
    Ok(out)
}
