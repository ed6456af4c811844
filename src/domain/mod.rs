//! Domain services: what the admin API and the CLI both do, over the store and billing:
//! accounts, keys, usage, invoices, reports, prices and the ledger's audit. They neither
//! parse HTTP nor render it.

pub mod accounts;
pub mod audit;
pub mod audit_log;
pub mod grants;
pub mod invoices;
pub mod keys;
pub mod overview;
pub mod people;
pub mod prices;
pub mod reports;
pub mod reservations;
pub mod retention;
pub mod tasks;
pub mod usage;
pub mod usage_export;
pub mod usage_import;
