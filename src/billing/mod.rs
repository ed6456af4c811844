//! Pure billing logic: price tables, the price book and exact cost. No I/O beyond reading
//! price files; the price ledger itself lives in `store::prices`.

pub mod cost;
pub mod prices;

pub use cost::{Cost, TokenCounts, cost_of, cost_of_totals};
pub use prices::{PriceBook, PriceEntry, PriceVersion};
