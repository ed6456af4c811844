//! Pure billing logic: price tables, the price book, exact cost, billing periods,
//! invoices and cost reports. No I/O beyond reading
//! price files; the price ledger itself lives in `store::prices`.

pub mod cost;
pub mod invoice;
pub mod money;
pub mod period;
pub mod prices;
pub mod report;
pub mod report_html;

pub use cost::{Cost, TokenCounts, cost_of};
pub use prices::{PriceBook, PriceEntry, PriceVersion};
