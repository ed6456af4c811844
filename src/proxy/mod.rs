//! The client-facing proxy: routes (`handlers`) with their `Caller` (`authenticate`),
//! choosing a backend (`upstreams`), the
//! exchange with it (`exchange`, `stream`) over `client`, framing its stream (`framing`) and reading its
//! usage (`observe`).

mod authenticate;
pub mod client;
mod detach;
pub mod exchange;
pub mod framing;
pub mod handlers;
pub mod observe;
pub mod own_usage;
mod pool;
pub mod request;
pub mod stream;
pub mod upstreams;
