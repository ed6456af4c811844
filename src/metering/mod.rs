//! Usage records, token estimates, and the batching durable writer that commits them.

pub mod estimate;
pub mod record;
pub mod writer;

pub use writer::{Ledger, LedgerError, LedgerWriter};
