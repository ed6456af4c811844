//! Pure billing logic: price tables, the price book, exact cost, money bounds, billing
//! periods, usage records and their sums, invoices and cost reports. No I/O beyond reading price files and
//! no import of the store: the price ledger and the sums live in `store`, which returns
//! these types.

pub mod cost;
pub mod discounts;
pub mod grants;
pub mod invoice;
pub mod money;
pub mod period;
pub mod price_book;
pub mod prices;
pub mod record;
pub mod report;
pub mod report_html;
pub mod totals;

pub use cost::{Cost, Quantities, TokenCounts, Units, cost_of};
pub use price_book::{Buyer, PriceBook, PriceTiers};
pub use prices::{PriceEntry, PriceVersion};
pub use totals::Totals;
