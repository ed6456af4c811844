//! The money invariant, checked on the ledger itself: for an account, once every record is
//! in the database, its running totals (`account_funds`) are the sums of its top-ups and
//! notes and of its records' costs (with those of records retired), `balance = top-ups +
//! credit notes − debit notes − reserved hours − Σ record costs net of grants`, each grant's
//! remainder its amount less its uses (never below 0), `held ≥ 0`, and the figures
//! admission counts with (in memory beside SQLite, `account_funds` in PostgreSQL: the
//! balance and what open grants hold) equal the ledger's.

use rust_decimal::Decimal;
use tollgate::store::{self, listing::UsageFilter};

use super::TestApp;

/// An account's money, as the ledger and admission see it.
#[derive(Debug)]
pub struct Figures {
    pub charged: Decimal,
    /// What grants paid of `charged`.
    pub granted: Decimal,
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
    // Every grant: its remainder is its amount less its uses; their uses are `granted`;
    // the open ones' remainders are the pool.
    let grants = store::grants::of_account(db, account_id).await.unwrap();
    let granted = store::grants::used_total(db, account_id).await.unwrap();
    let mut pool = Decimal::ZERO;
    let mut used_all = Decimal::ZERO;
    for grant in &grants {
        let (used, tokens) = store::grants::uses_of(db, grant.id).await.unwrap();
        used_all += used;
        assert!(
            grant.remaining >= Decimal::ZERO,
            "grant {} below 0",
            grant.id
        );
        match (grant.tokens, grant.remaining_tokens) {
            // A token grant: its tokens are what it paid for and what it has left.
            (Some(all), Some(left)) => {
                assert!(left >= 0, "grant {}", grant.id);
                assert_eq!(left + tokens, all, "grant {}'s tokens", grant.id);
            }
            _ => assert_eq!(grant.remaining + used, grant.amount, "grant {}", grant.id),
        }
        if grant.state == "open" {
            pool += grant.remaining;
        }
    }
    assert_eq!(used_all, granted, "Σ grants' uses");
    assert_eq!(
        (funds.granted.normalize(), funds.grant_pool.normalize()),
        (granted.normalize(), pool.normalize()),
        "running granted and pool = Σ grant uses, Σ open grants' remainders"
    );
    assert!(granted <= charged, "grants paid {granted} of {charged}");
    let balance = tollgate::limits::spending::balance(db, account_id)
        .await
        .unwrap();
    assert_eq!(
        balance,
        (topups + credits - debits - reserved - (charged - granted)).normalize(),
        "balance = top-ups + credit notes − debit notes − reserved hours − Σ costs net of grants"
    );
    assert_eq!(topped_up, topups + credits - debits - reserved);
    let held = app.state.spending().held(account_id).await.unwrap();
    assert!(held >= Decimal::ZERO, "held is {held}");
    // Admission's figures: the ledger's at once, or (after token grants paid for records,
    // which admission hears of by the accounts' change signal) within a few seconds.
    let ledger = ((balance + pool).normalize(), held.normalize());
    let patience = match grants.iter().any(|g| g.tokens.is_some()) {
        true => 50,
        false => 0,
    };
    for tries in 0.. {
        let running = app.state.spending().running(account_id).await.unwrap();
        let Some((running, running_held)) = running else {
            break;
        };
        let running = (running.normalize(), running_held.normalize());
        if running == ledger {
            break;
        }
        assert!(
            tries < patience,
            "admission's running figures {running:?} are the ledger's {ledger:?} (the balance and the grants' pool)"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Figures {
        charged,
        granted,
        balance,
        held,
        records: records.len(),
    }
}
