//! tollgate: a metering and billing gateway for LLM APIs.
//!
//! A request's path through the crate:
//! 1. `proxy::handlers` matches the route; `auth` turns the bearer key into a `Caller`
//!    (through an in-memory cache), and `limits` admits it under its rpm and tpm.
//! 2. `proxy::request` reads the body within its limit; `upstream` orders the
//!    backends that may serve it (the M×N pair, a deployment, or the model's routing policy).
//! 3. `proxy::exchange` runs the call (over `upstream::client` and its `pool`) so that the
//!    client cannot cancel it (`proxy::detach`): `proxy::stream` relays streams through
//!    `proxy::framing`, and `proxy::observe` reads usage on the way.
//! 4. `billing` prices the tokens exactly with the price version in force; `metering`
//!    commits the record through the group-committing `Ledger` writer thread (an append
//!    to `store::journal`, imported into SQLite by `store::usage` soon after), and only
//!    then is the end of the response released to the client.
//!
//! `metrics` holds every Prometheus metric; `ops` serves `/metrics`, `/healthz`, `/readyz`.
//! `admin` serves `/admin/v1` (accounts, keys, usage) behind JWT.
//! `sim` is a simulated backend speaking each documented wire format, for the demo and tests.

pub mod admin;
pub mod app;
pub mod auth;
pub mod billing;
pub mod cli;
pub mod config;
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
