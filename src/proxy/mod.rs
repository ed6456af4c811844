//! The client-facing proxy: routes (`handlers`) with their `Caller` (`authenticate`), the
//! request (`request`), the exchange with a backend `upstream` chose (`exchange`, `stream`,
//! run so the client cannot cancel it: `detach`) and settling it (`settle`). What the
//! backend's wire format means is `crate::dialect`'s: its upstream's `wire()`.

pub mod answer;
mod authenticate;
mod detach;
pub mod exchange;
mod extract;
pub mod handlers;
mod multipart;
pub mod own_usage;
pub mod request;
pub mod settle;
pub mod stream;
pub mod tasks;
mod upload;

/// Where they were before dialects had a home of their own.
pub use crate::dialect::{framing, observe};
