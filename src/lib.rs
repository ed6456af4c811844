//! tollgate: a metering and billing gateway for LLM APIs.
//!
//! A request's path through the crate:
//! 0. `server` accepts the connection (within the cap and its timeouts) and hands each
//!    request to the router `app` assembled.
//! 1. `proxy::handlers` matches the route (every dialect's route table, `dialect`);
//!    `proxy::authenticate` turns the key (bearer or `x-api-key`) into a `Caller` (`auth`,
//!    through an in-memory cache), and `limits` admits it under its rpm and tpm and holds
//!    its worst case against the account's spending limit.
//! 2. `proxy::request` reads the body within its limit and bounds its numbers, where the
//!    route's dialect says they are; `upstream` orders the backends that may serve it (the
//!    M×N pair, a deployment, or the model's routing policy) among those whose dialect
//!    takes the body's shape.
//! 3. `proxy::exchange` runs the call (over `upstream::client` and its `pool`) so that the
//!    client cannot cancel it (`proxy::detach`): `proxy::stream` relays streams through
//!    `dialect::framing`, and `dialect::observe` reads usage on the way, as the backend's
//!    `dialect` speaks it.
//! 4. `proxy::settle` prices the tokens exactly with the price version in force
//!    (`billing`), settles the limits, and `metering` commits the record through the
//!    group-committing `Ledger` writer thread (an append to `store::journal`, imported into
//!    SQLite by `store::usage` soon after); only then is the end of the response released.
//!
//! `state` holds what every request shares. `admin` serves `/admin/v1` behind JWT and the
//! CLI (`cli`) offers the same operations, both through the `domain` services, which know
//! nothing of HTTP: what they refuse is an `error::Error`, rendered once, OpenAI-shaped,
//! by `server::ApiError`.
//! `metrics` holds every Prometheus metric; `ops` serves `/metrics`, `/healthz`, `/readyz`.
//! `sim` is a simulated backend speaking each documented wire format, for the demo and tests.

/// Every binary built on this crate (the gateway, its bench, the tests) allocates with
/// jemalloc: its per-thread caches cost a request fewer CPU microseconds than glibc's
/// malloc, and a gateway holding many keys keeps a smaller resident set (bench/README.md,
/// "The cost of metering").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

pub mod admin;
pub mod alerts;
pub mod app;
pub mod auth;
pub mod billing;
pub mod cli;
pub mod config;
pub mod console;
pub mod deadline;
pub mod dialect;
pub mod domain;
pub mod error;
pub mod limits;
pub mod metering;
pub mod metrics;
pub mod ops;
pub mod proxy;
pub mod server;
pub mod sim;
pub mod state;
pub mod store;
pub mod upstream;

pub use app::Application;
pub use config::Config;
pub use state::AppState;
