//! Finalized invoices, stored as the exact document served.

use chrono::Utc;
use sqlx::Row;

use super::{Db, Result, to_ms};

/// The stored document of a finalized invoice.
pub async fn document(db: &Db, id: &str) -> Result<Option<String>> {
    let row = sqlx::query("SELECT document FROM invoices WHERE id = ?")
        .bind(id)
        .fetch_optional(db)
        .await?;
    Ok(row.map(|r| r.get("document")))
}

/// Stores a finalized invoice. If another finalization won a race, its document stands.
pub async fn insert(
    db: &Db,
    id: &str,
    account_id: i64,
    period: &str,
    document: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO invoices (id, account_id, period, document, finalized_at) VALUES (?, ?, ?, ?, ?)
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(id)
    .bind(account_id)
    .bind(period)
    .bind(document)
    .bind(to_ms(Utc::now()))
    .execute(db)
    .await?;
    Ok(())
}
