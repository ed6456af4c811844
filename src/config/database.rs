//! The ledger: which database (SQLite or PostgreSQL), how durable its commits are, and
//! how the usage journal is imported.

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite://PATH` (created on first run), or `postgres://USER@HOST:PORT/DB` for one
    /// ledger shared by many replicas.
    pub url: String,
    /// SQLite `synchronous` (and the usage journal's): whether each commit waits for the disk.
    pub synchronous: Synchronous,
    /// With PostgreSQL: this replica's own directory for its usage journal, the spool that
    /// records wait in until PostgreSQL has them. One replica per directory.
    pub spool: PathBuf,
    /// With PostgreSQL: connections in this replica's pool.
    pub max_connections: u32,
}

/// Which database holds the ledger, from the scheme of `database.url`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl DatabaseConfig {
    pub fn backend(&self) -> Backend {
        if self.url.starts_with("postgres://") || self.url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            Backend::Sqlite
        }
    }
}

/// Whether a commit waits for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Synchronous {
    /// Each commit waits for an `fdatasync`: survives power loss.
    #[default]
    Full,
    /// Commits reach the operating system only: survives process crashes.
    Normal,
}

impl Synchronous {
    /// The SQLite pragma value.
    pub fn as_str(self) -> &'static str {
        match self {
            Synchronous::Full => "full",
            Synchronous::Normal => "normal",
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: "sqlite://tollgate.db".into(),
            synchronous: Synchronous::Full,
            spool: PathBuf::from("tollgate-spool"),
            max_connections: 16,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerConfig {
    /// How long committed records may wait in the journal before they are imported into
    /// the database. Readers of usage in the gateway (usage API, invoices, balances)
    /// import first. The longer the wait, the larger the batches: the rollups are
    /// upserted once per group of a batch, which on PostgreSQL costs more than the record
    /// itself when a batch's records share few groups (bench/README.md).
    pub import_delay_ms: u64,
    /// Records in the journal that start an import before the delay is up.
    pub import_max: usize,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            import_delay_ms: 100,
            import_max: 2048,
        }
    }
}
