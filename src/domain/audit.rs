//! The ledger's audit (`tollgate ledger verify`): every figure kept as a running total (an
//! account's money, the hourly rollups of usage) is recomputed from the rows it totals and
//! compared, account by account. What an operator
//! runs before trusting a month; a difference is a bug (or tampering) to look into.

use rust_decimal::Decimal;
use serde::Serialize;

use crate::error::Error;
use crate::store::{self, Db};

/// One figure whose running total is not the sum of what it totals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Difference {
    pub account_id: i64,
    pub account: String,
    /// `topped_up`, `spent`, `granted`, `grant_pool` or `held`, or `running_totals` when they
    /// are missing.
    pub figure: &'static str,
    /// The running total (`None`: missing).
    pub running: Option<Decimal>,
    /// What the rows sum to.
    pub summed: Decimal,
}

/// An hourly rollup that is not what its records sum to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RollupDifference {
    pub account_id: i64,
    pub account: String,
    #[serde(flatten)]
    pub mismatch: store::rollups::Mismatch,
}

/// What the audit found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Verified {
    pub accounts: usize,
    /// Running totals that differ.
    pub differences: Vec<Difference>,
    /// Rollups that differ.
    pub rollups: Vec<RollupDifference>,
}

impl Verified {
    /// How many figures differ from what they total.
    pub fn found(&self) -> usize {
        self.differences.len() + self.rollups.len()
    }
}

/// Recomputes every account's running totals and hourly rollups from the ledger in `db`
/// (each in one snapshot) and returns the differences.
pub async fn verify(db: &Db) -> Result<Verified, Error> {
    let accounts = store::accounts::list(db).await?;
    let mut verified = Verified {
        accounts: accounts.len(),
        ..Verified::default()
    };
    for account in accounts {
        let audit = store::funds::audit(db, account.id).await?;
        let difference = |figure, running, summed| Difference {
            account_id: account.id,
            account: account.name.clone(),
            figure,
            running,
            summed,
        };
        let found = &mut verified.differences;
        match audit.running {
            None => found.push(difference("running_totals", None, audit.summed.spent)),
            Some(running) => {
                for (figure, running, summed) in [
                    ("topped_up", running.topped_up, audit.summed.topped_up),
                    ("spent", running.spent, audit.summed.spent),
                    ("granted", running.granted, audit.summed.granted),
                    ("grant_pool", running.grant_pool, audit.summed.grant_pool),
                ] {
                    if running != summed {
                        found.push(difference(figure, Some(running), summed));
                    }
                }
            }
        }
        if let Some((running, summed)) = audit.held
            && running != summed
        {
            found.push(difference("held", Some(running), summed));
        }
        for mismatch in store::rollups::audit(db, account.id).await? {
            verified.rollups.push(RollupDifference {
                account_id: account.id,
                account: account.name.clone(),
                mismatch,
            });
        }
    }
    Ok(verified)
}
