//! The console's people and their sessions: who may sign in (an argon2id hash, never a
//! password), with which role over which account, and each signed-in browser's session,
//! found by the SHA-256 of its cookie, never by the cookie itself.

use chrono::{DateTime, Utc};

use super::{Db, Read, Result, StoreError, from_ms, on, to_ms};

/// A console user as stored (the hash stays in the store and `domain::people`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    pub id: i64,
    pub email: String,
    pub password_hash: String,
    /// `operator`, `owner`, `member` or `viewer`.
    pub role: String,
    /// `None` for operators only.
    pub account_id: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub disabled_at: Option<DateTime<Utc>>,
}

fn user_from_row(row: &impl Read) -> Result<UserRow> {
    Ok(UserRow {
        id: row.read("id")?,
        email: row.read("email")?,
        password_hash: row.read("password_hash")?,
        role: row.read("role")?,
        account_id: row.read("account_id")?,
        created_at: from_ms(row.read("created_at")?),
        disabled_at: row.read::<Option<i64>>("disabled_at")?.map(from_ms),
    })
}

pub struct NewUser<'a> {
    pub email: &'a str,
    pub password_hash: &'a str,
    pub role: &'a str,
    pub account_id: Option<i64>,
}

/// Creates a user; a taken email is a conflict naming it.
pub async fn create(db: &Db, user: NewUser<'_>) -> Result<UserRow> {
    let now = to_ms(Utc::now());
    let row = on!(db, |pool| {
        sqlx::query(
            "INSERT INTO console_users (email, password_hash, role, account_id, created_at)
             VALUES ($1, $2, $3, $4, $5) RETURNING *",
        )
        .bind(user.email)
        .bind(user.password_hash)
        .bind(user.role)
        .bind(user.account_id)
        .bind(now)
        .fetch_one(pool)
        .await
        .map(|row| user_from_row(&row))
    });
    row.map_err(|e| match StoreError::from(e) {
        StoreError::Conflict(_) => {
            StoreError::Conflict(format!("a console user '{}' already exists", user.email))
        }
        other => other,
    })?
}

pub async fn by_email(db: &Db, email: &str) -> Result<Option<UserRow>> {
    on!(db, |pool| {
        let row = sqlx::query("SELECT * FROM console_users WHERE email = $1")
            .bind(email)
            .fetch_optional(pool)
            .await?;
        row.as_ref().map(user_from_row).transpose()
    })
}

pub async fn get(db: &Db, id: i64) -> Result<Option<UserRow>> {
    on!(db, |pool| {
        let row = sqlx::query("SELECT * FROM console_users WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await?;
        row.as_ref().map(user_from_row).transpose()
    })
}

/// The users of one account, or every user; oldest first.
pub async fn list(db: &Db, account_id: Option<i64>) -> Result<Vec<UserRow>> {
    on!(db, |pool| {
        let rows = sqlx::query(
            "SELECT * FROM console_users WHERE $1 IS NULL OR account_id = $1 ORDER BY id",
        )
        .bind(account_id)
        .fetch_all(pool)
        .await?;
        rows.iter().map(user_from_row).collect()
    })
}

pub async fn set_password(db: &Db, id: i64, password_hash: &str) -> Result<()> {
    on!(db, |pool| {
        sqlx::query("UPDATE console_users SET password_hash = $1 WHERE id = $2")
            .bind(password_hash)
            .bind(id)
            .execute(pool)
            .await?;
    });
    Ok(())
}

/// Disables (`Some`) or enables (`None`) a user.
pub async fn set_disabled(db: &Db, id: i64, at: Option<DateTime<Utc>>) -> Result<()> {
    on!(db, |pool| {
        sqlx::query("UPDATE console_users SET disabled_at = $1 WHERE id = $2")
            .bind(at.map(to_ms))
            .bind(id)
            .execute(pool)
            .await?;
    });
    Ok(())
}

/// A signed-in browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    pub user_id: i64,
    /// The token every form of this session carries.
    pub csrf: String,
    pub created_at: DateTime<Utc>,
    pub seen_at: DateTime<Utc>,
}

pub async fn start_session(
    db: &Db,
    token_hash: &[u8],
    user_id: i64,
    csrf: &str,
    address: &str,
) -> Result<()> {
    let now = to_ms(Utc::now());
    on!(db, |pool| {
        sqlx::query(
            "INSERT INTO console_sessions (token_hash, user_id, csrf, created_at, seen_at, address)
             VALUES ($1, $2, $3, $4, $4, $5)",
        )
        .bind(token_hash)
        .bind(user_id)
        .bind(csrf)
        .bind(now)
        .bind(address)
        .execute(pool)
        .await?;
    });
    Ok(())
}

/// The session with this token hash, and its user.
pub async fn session(db: &Db, token_hash: &[u8]) -> Result<Option<(SessionRow, UserRow)>> {
    on!(db, |pool| {
        let row = sqlx::query(
            "SELECT s.csrf, s.created_at AS session_created_at, s.seen_at, u.*
             FROM console_sessions s JOIN console_users u ON u.id = s.user_id
             WHERE s.token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(pool)
        .await?;
        row.as_ref()
            .map(|row| {
                let user = user_from_row(row)?;
                let session = SessionRow {
                    user_id: user.id,
                    csrf: row.read("csrf")?,
                    created_at: from_ms(row.read("session_created_at")?),
                    seen_at: from_ms(row.read("seen_at")?),
                };
                Ok((session, user))
            })
            .transpose()
    })
}

/// Notes that the session was used now (its idle expiry starts again).
pub async fn touch_session(db: &Db, token_hash: &[u8], at: DateTime<Utc>) -> Result<()> {
    on!(db, |pool| {
        sqlx::query("UPDATE console_sessions SET seen_at = $1 WHERE token_hash = $2")
            .bind(to_ms(at))
            .bind(token_hash)
            .execute(pool)
            .await?;
    });
    Ok(())
}

pub async fn end_session(db: &Db, token_hash: &[u8]) -> Result<()> {
    on!(db, |pool| {
        sqlx::query("DELETE FROM console_sessions WHERE token_hash = $1")
            .bind(token_hash)
            .execute(pool)
            .await?;
    });
    Ok(())
}

/// Ends every session of `user_id` but the one hashed `keep` (if any); returns how many.
pub async fn end_sessions_of(db: &Db, user_id: i64, keep: Option<&[u8]>) -> Result<u64> {
    let keep = keep.unwrap_or_default();
    Ok(on!(db, |pool| {
        sqlx::query("DELETE FROM console_sessions WHERE user_id = $1 AND token_hash <> $2")
            .bind(user_id)
            .bind(keep)
            .execute(pool)
            .await?
            .rows_affected()
    }))
}

/// Removes sessions last seen before `idle_before` or started before `started_before`.
pub async fn end_expired(
    db: &Db,
    idle_before: DateTime<Utc>,
    started_before: DateTime<Utc>,
) -> Result<u64> {
    Ok(on!(db, |pool| {
        sqlx::query("DELETE FROM console_sessions WHERE seen_at < $1 OR created_at < $2")
            .bind(to_ms(idle_before))
            .bind(to_ms(started_before))
            .execute(pool)
            .await?
            .rows_affected()
    }))
}

/// When `subject` (an email's or an address's throttle key) gave a wrong password after
/// `since`, oldest first.
pub async fn failures_since(db: &Db, subject: &str, since: DateTime<Utc>) -> Result<Vec<i64>> {
    Ok(on!(db, |pool| {
        sqlx::query_scalar(
            "SELECT at FROM sign_in_failures WHERE subject = $1 AND at > $2 ORDER BY at",
        )
        .bind(subject)
        .bind(to_ms(since))
        .fetch_all(pool)
        .await?
    }))
}

/// Counts a wrong password at `at` against each of `subjects`.
pub async fn add_failure(db: &Db, subjects: &[&str], at: DateTime<Utc>) -> Result<()> {
    for subject in subjects {
        on!(db, |pool| {
            sqlx::query("INSERT INTO sign_in_failures (subject, at) VALUES ($1, $2)")
                .bind(*subject)
                .bind(to_ms(at))
                .execute(pool)
                .await?;
        });
    }
    Ok(())
}

/// Forgets the wrong passwords of `subject`.
pub async fn forget_failures(db: &Db, subject: &str) -> Result<()> {
    on!(db, |pool| {
        sqlx::query("DELETE FROM sign_in_failures WHERE subject = $1")
            .bind(subject)
            .execute(pool)
            .await?;
    });
    Ok(())
}

/// Removes the wrong passwords given before `before`.
pub async fn sweep_failures(db: &Db, before: DateTime<Utc>) -> Result<u64> {
    Ok(on!(db, |pool| {
        sqlx::query("DELETE FROM sign_in_failures WHERE at < $1")
            .bind(to_ms(before))
            .execute(pool)
            .await?
            .rows_affected()
    }))
}
