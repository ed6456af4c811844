//! The integration suite, one binary: each module boots the real gateway (or the real
//! `tollgate` binary) against simulated backends on loopback, through `helpers`.

mod helpers;

mod admin_jwt;
mod admin_keys;
mod backend_limits;
mod bench_smoke;
mod billing_props;
mod comfyui;
mod config_checks;
mod dashscope;
mod durability;
mod errors;
mod faults;
mod fixtures;
mod framing;
mod hostile;
mod invoices;
mod key_secrecy;
mod langchain;
mod ledger_outage;
mod ledger_verify;
mod ledger_writer;
mod listings;
mod multimodal;
mod observability;
mod openai_sdk;
mod parity;
mod partitions;
mod postgres_ledger;
mod price_ledger;
mod prices_cli;
mod rate_limits;
mod read_plans;
mod replicas;
mod reports;
mod retention;
mod rollups;
mod routes;
mod sd;
mod spending;
mod streaming;
mod task_interleavings;
mod task_money;
mod usage_import;
mod zhipu;
