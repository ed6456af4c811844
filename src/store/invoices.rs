//! Finalized invoices, stored as the exact document served.

use chrono::Utc;

use super::{Db, Result, on, to_ms};

/// The stored document of a finalized invoice.
pub async fn document(db: &Db, id: &str) -> Result<Option<String>> {
    Ok(on!(db, |pool| {
        sqlx::query_scalar("SELECT document FROM invoices WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await?
    }))
}

/// Stores a finalized invoice. If another finalization won a race, its document stands.
pub async fn insert(
    db: &Db,
    id: &str,
    account_id: i64,
    period: &str,
    document: &str,
) -> Result<()> {
    on!(db, |pool| {
        sqlx::query(
            "INSERT INTO invoices (id, account_id, period, document, finalized_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(id)
        .bind(account_id)
        .bind(period)
        .bind(document)
        .bind(to_ms(Utc::now()))
        .execute(pool)
        .await?;
    });
    Ok(())
}
