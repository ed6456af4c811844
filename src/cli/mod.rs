//! The command line: parsing and dispatch. The commands live by concern: `accounts`
//! (accounts and keys), `billing` (prices, invoices, reports), `grants`, `people` (console users),
//! `serve` (serve, demo), `usage`.

mod accounts;
mod billing;
mod grants;
mod people;
mod serve;
mod usage;

pub use accounts::{AccountsCommand, KeysCommand, LimitArgs};
pub use billing::{FormatArg, InvoicesCommand, PricesCommand};
pub use serve::{demo_config, shutdown_signal};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::auth::jwt::{AdminAuth, Role};
use crate::billing::PriceBook;
use crate::config::Config;
use crate::sim;
use crate::store;
use people::UsersCommand;
use usage::UsageCommand;

#[derive(Parser)]
#[command(
    name = "tollgate",
    version,
    about = "Metering and billing gateway for LLM APIs"
)]
pub struct Cli {
    /// Configuration file.
    #[arg(
        long,
        global = true,
        default_value = "tollgate.toml",
        env = "TOLLGATE_CONFIG"
    )]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the gateway.
    Serve,
    /// Run the gateway in front of simulated backends, with a demo account and key.
    Demo {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// SQLite file for the demo ledger.
        #[arg(long, default_value = "tollgate-demo.db")]
        db: PathBuf,
    },
    /// Run only the simulated backend (profiles openai, genstudio, bare, internlm).
    Simulate {
        #[arg(long, default_value = "127.0.0.1:9100")]
        listen: SocketAddr,
    },
    /// Manage accounts.
    #[command(subcommand)]
    Accounts(AccountsCommand),
    /// Manage API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Credit grants: money an account's usage burns before its balance.
    #[command(subcommand)]
    Grants(grants::GrantsCommand),
    /// Price tables and the price ledger.
    #[command(subcommand)]
    Prices(PricesCommand),
    /// Monthly invoices.
    #[command(subcommand)]
    Invoices(InvoicesCommand),
    /// A cost report over a time range, grouped (printed to standard output).
    Report {
        /// Start: 2026-11-01 (local midnight, billing timezone) or RFC 3339; default: this month.
        #[arg(long)]
        from: Option<String>,
        /// End (exclusive), same forms; default: the end of this month.
        #[arg(long)]
        to: Option<String>,
        /// Any of account,key,model,chip and day or hour.
        #[arg(long, default_value = "model,chip")]
        group_by: String,
        #[arg(long, default_value = "csv", value_parser = ["csv", "json", "html"])]
        format: String,
    },
    /// The ledger itself.
    #[command(subcommand)]
    Ledger(LedgerCommand),
    /// Usage records.
    #[command(subcommand)]
    Usage(UsageCommand),
    /// The console's users (`/console/`).
    #[command(subcommand)]
    Users(UsersCommand),
    /// Mint an admin JWT with the configured HS256 secret (for bootstrap and scripts).
    AdminToken {
        #[arg(long, value_enum, default_value = "admin")]
        role: RoleArg,
        /// Lifetime: 90s, 30m, 12h, 7d.
        #[arg(long, default_value = "1h")]
        ttl: String,
        #[arg(long, default_value = "cli")]
        subject: String,
    },
}

#[derive(Subcommand)]
pub enum LedgerCommand {
    /// Recompute every running total (each account's top-ups, spent and, on PostgreSQL,
    /// held) from the rows it totals; print each difference and exit non-zero if any.
    Verify {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum RoleArg {
    Admin,
    Viewer,
}

pub fn main() -> ExitCode {
    crate::store::sqlite::skip_memory_count();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TOLLGATE_LOG")
                .unwrap_or_else(|_| "tollgate=info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // `serve` reads its config first: the runtime's size is one of its settings.
    let config = match cli.command {
        Command::Serve => match Config::load(&cli.config) {
            Ok(config) => Some(config),
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::FAILURE;
            }
        },
        _ => None,
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = config.as_ref().map(|c| c.server.worker_threads)
        && threads > 0
    {
        runtime.worker_threads(threads);
    }
    let runtime = runtime
        .enable_all()
        .build()
        .expect("a tokio runtime starts");
    match runtime.block_on(run(cli, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, config: Option<Config>) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve => serve::serve(config.expect("serve's config is loaded first")).await,
        Command::Demo { listen, db } => serve::demo(&listen, &db).await,
        Command::Simulate { listen } => {
            let (addr, task) = sim::spawn(listen).await?;
            println!(
                "simulated backend on http://{addr} (profiles: openai, genstudio, bare, internlm)"
            );
            tokio::select! {
                _ = task => {}
                () = shutdown_signal() => {}
            }
            Ok(())
        }
        Command::Accounts(command) => {
            accounts::accounts(&Config::load(&cli.config)?, command).await
        }
        Command::Keys(command) => accounts::keys(&Config::load(&cli.config)?, command).await,
        Command::Grants(command) => grants::grants(&Config::load(&cli.config)?, command).await,
        Command::Prices(command) => billing::prices(&Config::load(&cli.config)?, command).await,
        Command::Invoices(command) => billing::invoices(&Config::load(&cli.config)?, command).await,
        Command::Report {
            from,
            to,
            group_by,
            format,
        } => {
            let config = Config::load(&cli.config)?;
            let db = store::open(&config).await?;
            let prices = PriceBook::new(store::prices::all(&db).await?);
            let request = crate::domain::reports::ReportRequest {
                from: from.as_deref(),
                to: to.as_deref(),
                group_by: &group_by,
                scope: store::rollups::Scope::All,
            };
            let report =
                crate::domain::reports::build(&db, &prices, config.billing.zone(), request).await?;
            print!("{}", crate::domain::reports::render(&report, &format)?.1);
            Ok(())
        }
        Command::Ledger(LedgerCommand::Verify { json }) => {
            let config = Config::load(&cli.config)?;
            let db = store::open(&config).await?;
            let verified = crate::domain::audit::verify(&db).await?;
            emit(json, &verified, || {
                let mut text = format!("{} accounts verified", verified.accounts);
                for d in &verified.differences {
                    let running = d.running.map_or("missing".into(), |r| r.to_string());
                    text += &format!(
                        "\naccount {} ({}): {} is {running}, its rows sum to {}",
                        d.account_id, d.account, d.figure, d.summed
                    );
                }
                for d in &verified.rollups {
                    let m = &d.mismatch;
                    let g = &m.group;
                    let counts = |c: Option<store::rollups::Counts>| {
                        c.map_or("nothing".into(), |c| format!("{c:?}"))
                    };
                    text += &format!(
                        "\naccount {} ({}): the {} rollup of {} (key lineage {}, {} × {}, deployment '{}', {}, {}, price version {}) holds {}, its records sum to {}",
                        d.account_id,
                        d.account,
                        g.rollup,
                        store::from_ms(g.start).to_rfc3339(),
                        g.lineage_id,
                        g.model,
                        g.chip,
                        g.deployment,
                        g.endpoint,
                        g.status,
                        g.price_version_id,
                        counts(m.stored),
                        counts(m.summed),
                    );
                }
                text
            })?;
            match verified.found() {
                0 => Ok(()),
                n => anyhow::bail!("{n} running totals or rollups differ from the rows they total"),
            }
        }
        Command::Usage(command) => usage::run(&cli.config, command).await,
        Command::Users(command) => people::run(&Config::load(&cli.config)?, command).await,
        Command::AdminToken { role, ttl, subject } => {
            let config = Config::load(&cli.config)?;
            let auth = AdminAuth::from_config(&config.admin)?.with_context(|| {
                format!(
                    "set {} to the admin secret (at least 32 characters)",
                    config.admin.secret_source()
                )
            })?;
            let role = match role {
                RoleArg::Admin => Role::Admin,
                RoleArg::Viewer => Role::Viewer,
            };
            println!("{}", auth.mint(&subject, role, parse_ttl(&ttl)?)?);
            Ok(())
        }
    }
}

/// `90s`, `30m`, `12h`, `7d`.
fn parse_ttl(text: &str) -> anyhow::Result<std::time::Duration> {
    let bad = || anyhow::anyhow!("'{text}' is not a duration like 30m");
    let (number, unit) = text.split_at(text.len().saturating_sub(1));
    let n: u64 = number.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(bad()),
    };
    Ok(std::time::Duration::from_secs(secs))
}

/// Writes a change made from the command line to the audit log.
async fn audited<B: serde::Serialize, A: serde::Serialize>(
    db: &store::Db,
    change: crate::domain::audit_log::Change<'_, B, A>,
) -> anyhow::Result<()> {
    let actor = crate::domain::audit_log::Actor::cli();
    Ok(crate::domain::audit_log::record(db, &actor, change).await?)
}

/// Prints `value` as JSON for scripts, or `text` for people.
fn emit(
    json: bool,
    value: &impl serde::Serialize,
    text: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(value)?);
    } else {
        println!("{}", text());
    }
    Ok(())
}
