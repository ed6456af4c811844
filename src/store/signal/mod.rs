//! Change signals between processes sharing one ledger: a key, a price or an account
//! changed, so cached copies must go. One seam, one file per ledger backend: a file beside
//! the SQLite ledger, or a version row and `NOTIFY` in PostgreSQL.

mod file;
mod postgres;

use crate::store::Db;

/// What changed: each topic is signalled on its own.
pub type Topic = &'static str;

/// Announces changes of one topic to every process sharing the ledger, and tells whether
/// one happened since a stamp was taken.
#[derive(Debug, Clone)]
pub enum ChangeSignal {
    File(file::FileSignal),
    Postgres(postgres::PgSignal),
}

/// Where a signal stood; a different stamp means something changed in between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stamp {
    /// No other process can change anything (an in-memory database).
    Never,
    /// The identity of the signal file (a new file on every change).
    File(u64, u64, i64, i64),
    /// The topic's version in the ledger.
    Version(i64),
}

impl ChangeSignal {
    /// The signal of `topic` for the ledger `db`, whose URL is `url`.
    pub fn new(db: &Db, url: &str, topic: Topic) -> ChangeSignal {
        match db {
            Db::Sqlite(_) => ChangeSignal::File(file::FileSignal::for_database(url, topic)),
            Db::Postgres(pool) => ChangeSignal::Postgres(postgres::PgSignal::new(pool, topic)),
        }
    }

    /// The signal of `topic` beside the SQLite ledger at `url` (for the ledger writer,
    /// which has no pool).
    pub fn beside_sqlite(url: &str, topic: Topic) -> ChangeSignal {
        ChangeSignal::File(file::FileSignal::for_database(url, topic))
    }

    /// Tells every process of a change. Call after the change is committed; returns once
    /// this process sees its own announcement (a bound on how long the others take).
    pub async fn announce(&self) {
        match self {
            ChangeSignal::File(f) => f.announce(),
            ChangeSignal::Postgres(p) => p.announce().await,
        }
    }

    /// Where the signal stands now; cheap (a `stat`, or an atomic read).
    pub fn stamp(&self) -> Stamp {
        match self {
            ChangeSignal::File(f) => f.stamp(),
            ChangeSignal::Postgres(p) => p.stamp(),
        }
    }
}
