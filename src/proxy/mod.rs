//! The client-facing proxy: routes (`handlers`) with their `Caller` (`authenticate`), the
//! request (`request`), the exchange with a backend `upstream` chose (`exchange`, `stream`,
//! run so the client cannot cancel it: `detach`), settling it (`settle`), framing its stream (`framing`) and
//! reading its usage (`observe`).

mod authenticate;
mod detach;
pub mod exchange;
pub mod framing;
pub mod handlers;
pub mod observe;
pub mod own_usage;
pub mod request;
pub mod settle;
pub mod stream;
