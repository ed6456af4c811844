//! The PostgreSQL ledger's schema (`migrations/postgres`) on a real server: it is created
//! from nothing (and applying it again changes nothing), money is exact, a replayed usage
//! record changes nothing, and what must never change refuses to, as on SQLite.

use sqlx::Row;
use sqlx::postgres::{PgPool, PgPoolOptions};

use crate::helpers::postgres::Postgres;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// The database's refusal of `sql`, as text.
async fn refusal(pool: &PgPool, sql: &'static str) -> String {
    match sqlx::query(sql).execute(pool).await {
        Ok(done) => panic!("{sql}: allowed ({} rows)", done.rows_affected()),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn the_postgres_schema_is_created_and_keeps_what_must_never_change() {
    let server = tokio::task::spawn_blocking(Postgres::start).await.unwrap();
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&server.url)
        .await
        .unwrap();
    MIGRATOR.run(&pool).await.unwrap();
    MIGRATOR.run(&pool).await.unwrap();

    for sql in [
        "INSERT INTO accounts (name, created_at) VALUES ('acme', 1)",
        "INSERT INTO api_keys (account_id, prefix, secret_hash, created_at)
         VALUES (1, 'tg-abcdefgh', '\\x00ff', 1)",
        "INSERT INTO price_versions (model, chip, effective_from, input_per_1k, output_per_1k,
             per_request, recorded_at)
         VALUES ('m', 'c', 0, 0.00000001, 0.00000003, 0, 1),
                ('m', 'c', 10, 1, 1, 0, 1)",
        "INSERT INTO usage_records (request_id, account_id, key_id, model, chip, endpoint,
             stream, status, http_status, prompt_tokens, completion_tokens, cached_tokens,
             usage_source, price_version_id, cost, blocked, started_at, ended_at, latency_ms)
         VALUES ('req_1', 1, 1, 'm', 'c', 'chat', false, 'ok', 200, 7, 11, 0, 'reported', 1,
             0.0000000004, false, 5, 6, 1)",
        "INSERT INTO invoices (id, account_id, period, document, finalized_at)
         VALUES ('inv_1_202611', 1, '2026-11', '{}', 1)",
        "INSERT INTO topups (account_id, amount, idempotency_key, created_at)
         VALUES (1, 100.00, 'k', 1)",
    ] {
        sqlx::query(sql).execute(&pool).await.unwrap();
    }
    // Exact money, read back as written.
    let cost: String = sqlx::query("SELECT cost::text FROM usage_records")
        .fetch_one(&pool)
        .await
        .unwrap()
        .get(0);
    assert_eq!(cost, "0.0000000004");
    // A replayed record changes nothing.
    let replay = sqlx::query(
        "INSERT INTO usage_records (request_id, account_id, key_id, model, chip, endpoint,
             stream, status, http_status, prompt_tokens, completion_tokens, cached_tokens,
             usage_source, price_version_id, cost, blocked, started_at, ended_at, latency_ms)
         VALUES ('req_1', 1, 1, 'm', 'c', 'chat', false, 'ok', 200, 999, 999, 0, 'reported',
             1, 9, false, 5, 6, 1)
         ON CONFLICT (request_id) DO NOTHING",
    )
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(replay.rows_affected(), 0);
    // A name is unique: a conflict, as the store maps it.
    let err = sqlx::query("INSERT INTO accounts (name, created_at) VALUES ('acme', 2)")
        .execute(&pool)
        .await
        .unwrap_err();
    assert!(
        err.as_database_error()
            .is_some_and(|d| d.is_unique_violation()),
        "{err}"
    );

    let refused = [
        (
            "UPDATE price_versions SET input_per_1k = 2 WHERE id = 1",
            "immutable",
        ),
        (
            "DELETE FROM price_versions WHERE id = 1",
            "cannot be deleted",
        ),
        ("UPDATE usage_records SET cost = 0", "immutable"),
        ("UPDATE invoices SET document = '[]'", "immutable"),
        ("DELETE FROM invoices", "cannot be deleted"),
        ("UPDATE topups SET amount = 1000", "immutable"),
        ("DELETE FROM topups", "cannot be deleted"),
    ];
    for (sql, why) in refused {
        let message = refusal(&pool, sql).await;
        assert!(message.contains(why), "{sql}: {message}");
    }
    // A version that priced nothing may go.
    let deleted = sqlx::query("DELETE FROM price_versions WHERE id = 2")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(deleted.rows_affected(), 1);
    pool.close().await;
}
