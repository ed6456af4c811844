//! Metering: token estimates, and the batching durable writer that commits usage records
//! (`billing::record`) to the journal and the ledger.

pub mod estimate;
pub mod writer;

pub use writer::{Ledger, LedgerError, LedgerWriter};
