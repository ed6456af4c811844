//! The money invariant, checked on the ledger itself: for an account, once every record is
//! in the database, its running totals (`account_funds`) are the sums of its top-ups and
//! notes and of its records' costs (with those of records retired), `balance = top-ups +
//! credit notes − debit notes − reserved hours − Σ record costs`, `held ≥ 0`, and the figures
//! admission counts with (in memory beside SQLite, `account_funds` in PostgreSQL) equal the
//! ledger's.

use rust_decimal::Decimal;
use tollgate::store::{self, listing::UsageFilter};

use super::TestApp;

/// An account's money, as the ledger and admission see it.
#[derive(Debug)]
pub struct Figures {
    pub charged: Decimal,
    pub balance: Decimal,
    pub held: Decimal,
    /// Records of the account.
    pub records: usize,
}

/// Checks the invariant for `account_id` once `app` has shipped every record by itself,
/// and returns the figures.
pub async fn assert_invariant(app: &TestApp, account_id: i64) -> Figures {
    app.wait_until_shipped(std::time::Duration::from_secs(30))
        .await;
    let db = app.state.db();
    let topped_up = store::accounts::topped_up(db, account_id).await.unwrap();
    // Top-ups, credit notes, debit notes and reserved hours, each summed on its own.
    let moves = store::accounts::all_funds(db, account_id).await.unwrap();
    let sum = |kind: &str| -> Decimal {
        (moves.iter().filter(|m| m.kind == kind))
            .map(|m| m.amount.abs())
            .sum()
    };
    let (topups, credits, debits) = (sum("topup"), sum("credit_note"), sum("debit_note"));
    let reserved = sum("reservation");
    let filter = UsageFilter {
        account_id: Some(account_id),
        ..Default::default()
    };
    let records = store::listing::list(db, &filter, 1_000_000).await.unwrap();
    // Records retired from the ledger (`tollgate usage retire`) left their costs behind.
    let retired = store::retire::spent(db, account_id).await.unwrap();
    let charged: Decimal = retired + records.iter().map(|r| r.cost).sum::<Decimal>();
    // The running totals balances are read from are the sums of what they total.
    let funds = store::funds::of(db, account_id).await.unwrap();
    assert_eq!(
        (funds.topped_up.normalize(), funds.spent.normalize()),
        (topped_up.normalize(), charged.normalize()),
        "running totals = Σ top-ups, Σ record costs"
    );
    let balance = tollgate::limits::spending::balance(db, account_id)
        .await
        .unwrap();
    assert_eq!(
        balance,
        (topups + credits - debits - reserved - charged).normalize(),
        "balance = top-ups + credit notes − debit notes − reserved hours − Σ costs"
    );
    assert_eq!(topped_up, topups + credits - debits - reserved);
    let held = app.state.spending().held(account_id).await.unwrap();
    assert!(held >= Decimal::ZERO, "held is {held}");
    if let Some((running, running_held)) = app.state.spending().running(account_id).await.unwrap() {
        assert_eq!(
            (running.normalize(), running_held.normalize()),
            (balance, held.normalize()),
            "admission's running figures are the ledger's"
        );
    }
    Figures {
        charged,
        balance,
        held,
        records: records.len(),
    }
}
