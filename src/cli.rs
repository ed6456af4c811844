//! The command line: `serve`, `demo`, `simulate`, `accounts`, `keys`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use chrono::{Duration, Utc};
use clap::{Parser, Subcommand};

use crate::admin::{AdminAuth, Role};
use crate::auth::cache::KeyCache;
use crate::auth::lifecycle::{self, KeyPatch, KeyView, NewKeyRequest};
use crate::billing::PriceBook;
use crate::billing::period::Month;
use crate::config::Config;
use crate::store;
use crate::store::accounts::{Account, BillingMode};
use crate::store::keys::KeyLimits;
use crate::store::signal::ChangeSignal;
use crate::{Application, sim};
use rust_decimal::Decimal;

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
pub enum PricesCommand {
    /// Append the versions of pricing/*.toml not yet in the price ledger; running gateways
    /// pick them up within a second.
    Sync,
    /// Every price version, current and past.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum InvoicesCommand {
    /// An account's invoice for a month (final if finalized, else the draft so far).
    Show {
        #[arg(long)]
        account: String,
        /// YYYY-MM, in the billing timezone.
        #[arg(long)]
        period: String,
        #[arg(long, value_enum, default_value = "json")]
        format: FormatArg,
    },
    /// Freeze an invoice once its period (and billing.finalize_grace_secs) is over.
    Finalize {
        #[arg(long)]
        account: String,
        #[arg(long)]
        period: String,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FormatArg {
    Json,
    Csv,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum RoleArg {
    Admin,
    Viewer,
}

#[derive(Subcommand)]
pub enum AccountsCommand {
    /// Open an account (postpaid without a limit unless told otherwise).
    Create {
        name: String,
        /// Spends its top-ups only.
        #[arg(long, conflicts_with = "credit_limit")]
        prepaid: bool,
        /// Postpaid: the most it may owe, in CNY.
        #[arg(long)]
        credit_limit: Option<Decimal>,
        #[arg(long)]
        json: bool,
    },
    /// Credit an account; the idempotency key makes a retry credit once.
    Topup {
        name: String,
        /// CNY, e.g. 100.00.
        #[arg(long)]
        amount: Decimal,
        #[arg(long)]
        idempotency_key: String,
        #[arg(long, default_value = "")]
        note: String,
        #[arg(long)]
        json: bool,
    },
    /// List accounts.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one account.
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
}

/// Limits given on the command line; "default" ("all" for models, "never" for expiry)
/// clears a setting.
#[derive(clap::Args, Default)]
pub struct LimitArgs {
    /// Requests per minute, or "default".
    #[arg(long)]
    rpm: Option<String>,
    /// Tokens per minute, or "default".
    #[arg(long)]
    tpm: Option<String>,
    /// Comma-separated models the key may call, or "all".
    #[arg(long)]
    models: Option<String>,
    /// Days until the key expires, or "never".
    #[arg(long)]
    expires_in_days: Option<String>,
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Issue a key for an account; the secret is printed once and never again.
    Create {
        #[arg(long)]
        account: String,
        #[arg(long, default_value = "")]
        name: String,
        #[command(flatten)]
        limits: LimitArgs,
        #[arg(long)]
        json: bool,
    },
    /// List keys (of one account).
    List {
        #[arg(long)]
        account: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show one key's metadata.
    Show {
        id: i64,
        #[arg(long)]
        json: bool,
    },
    /// Change a key's name, expiry or limits; applies to the next request.
    Update {
        id: i64,
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        limits: LimitArgs,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key; applies to the next request.
    Revoke {
        id: i64,
        #[arg(long)]
        json: bool,
    },
    /// Issue a new secret; the old one keeps working for the grace period.
    Rotate {
        id: i64,
        /// Seconds the old secret stays valid (default: admin.rotation_grace_secs).
        #[arg(long)]
        grace_secs: Option<i64>,
        #[arg(long)]
        json: bool,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TOLLGATE_LOG")
                .unwrap_or_else(|_| "tollgate=info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime starts");
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve => serve(Config::load(&cli.config)?).await,
        Command::Demo { listen, db } => demo(&listen, &db).await,
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
        Command::Accounts(command) => accounts(&Config::load(&cli.config)?, command).await,
        Command::Keys(command) => keys(&Config::load(&cli.config)?, command).await,
        Command::Prices(command) => prices(&Config::load(&cli.config)?, command).await,
        Command::Invoices(command) => invoices(&Config::load(&cli.config)?, command).await,
        Command::Report {
            from,
            to,
            group_by,
            format,
        } => {
            let config = Config::load(&cli.config)?;
            let db = store::connect(&config.database).await?;
            let prices = PriceBook::new(store::prices::all(&db).await?);
            let request = crate::admin::reports::ReportRequest {
                from: from.as_deref(),
                to: to.as_deref(),
                group_by: &group_by,
            };
            let report =
                crate::admin::reports::build(&db, &prices, config.billing.zone(), request).await?;
            print!("{}", crate::admin::reports::render(&report, &format)?.1);
            Ok(())
        }
        Command::AdminToken { role, ttl, subject } => {
            let config = Config::load(&cli.config)?;
            let auth = AdminAuth::from_config(&config.admin)?.with_context(|| {
                format!(
                    "set {} to the admin secret (at least 32 characters)",
                    config.admin.jwt_secret_env
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

async fn prices(config: &Config, command: PricesCommand) -> anyhow::Result<()> {
    let db = store::connect(&config.database).await?;
    match command {
        PricesCommand::Sync => {
            let added = crate::app::sync_prices(config, &db).await?;
            println!("{added} new price version(s) recorded");
        }
        PricesCommand::List { json } => {
            let versions = store::prices::all(&db).await?;
            let book = PriceBook::new(versions.clone());
            let list: Vec<_> = versions
                .iter()
                .map(|v| crate::admin::prices::describe(v, &book))
                .collect();
            emit(json, &list, || {
                let line = |v: &serde_json::Value| {
                    let field = |k: &str| {
                        v[k].as_str()
                            .map(String::from)
                            .unwrap_or_else(|| v[k].to_string())
                    };
                    let keys = [
                        "id",
                        "model",
                        "chip",
                        "effective_from",
                        "input_per_1k",
                        "cached_input_per_1k",
                        "output_per_1k",
                        "per_request",
                        "in_force",
                    ];
                    keys.map(field).join("\t")
                };
                list.iter().map(line).collect::<Vec<_>>().join("\n")
            })?;
        }
    }
    Ok(())
}

async fn invoices(config: &Config, command: InvoicesCommand) -> anyhow::Result<()> {
    use crate::admin::invoices::{Document, Ledger};
    let db = store::connect(&config.database).await?;
    let prices = PriceBook::new(store::prices::all(&db).await?);
    let ledger = Ledger {
        db: &db,
        prices: &prices,
        zone: config.billing.zone(),
        finalize_grace: Duration::seconds(config.billing.finalize_grace_secs),
    };
    match command {
        InvoicesCommand::Show {
            account,
            period,
            format,
        } => {
            let account = crate::admin::accounts::named(&db, &account).await?;
            let document = ledger.get(&account, Month::parse(&period)?).await?;
            match format {
                FormatArg::Json => println!("{}", document.to_json()?),
                FormatArg::Csv => print!("{}", document.to_csv()?),
            }
        }
        InvoicesCommand::Finalize { account, period } => {
            let account = crate::admin::accounts::named(&db, &account).await?;
            println!(
                "{}",
                Document::Final(ledger.finalize(&account, Month::parse(&period)?).await?)
                    .to_json()?
            );
        }
    }
    Ok(())
}

async fn accounts(config: &Config, command: AccountsCommand) -> anyhow::Result<()> {
    let db = store::connect(&config.database).await?;
    let line = |a: &Account| format!("{}\t{}\t{}", a.id, a.name, a.created_at);
    match command {
        AccountsCommand::Create {
            name,
            prepaid,
            credit_limit,
            json,
        } => {
            crate::config::check_name(&name)?;
            anyhow::ensure!(
                credit_limit.is_none_or(|c| !c.is_sign_negative()),
                "--credit-limit must not be negative"
            );
            let account = crate::admin::accounts::create_account(&db, &name).await?;
            let mode = if prepaid {
                BillingMode::Prepaid
            } else {
                BillingMode::Postpaid
            };
            store::accounts::set_billing(&db, account.id, mode, credit_limit).await?;
            let account = crate::admin::accounts::named(&db, &name).await?;
            emit(json, &account, || {
                format!("account '{}' created (id {})", account.name, account.id)
            })
        }
        AccountsCommand::Topup {
            name,
            amount,
            idempotency_key,
            note,
            json,
        } => {
            anyhow::ensure!(amount > Decimal::ZERO, "--amount must be positive");
            let account = crate::admin::accounts::named(&db, &name).await?;
            let (topup, created) =
                store::accounts::top_up(&db, account.id, amount, &idempotency_key, &note).await?;
            anyhow::ensure!(
                topup.amount == amount,
                "idempotency key '{idempotency_key}' was used for a top-up of {}",
                topup.amount
            );
            ChangeSignal::for_database(&config.database.url, "accounts").announce();
            let what = if created {
                "credited"
            } else {
                "already credited (same idempotency key)"
            };
            emit(json, &topup, || {
                format!("{} CNY {what} to '{name}'", topup.amount)
            })
        }
        AccountsCommand::List { json } => {
            let list = store::accounts::list(&db).await?;
            emit(json, &list, || {
                list.iter().map(line).collect::<Vec<_>>().join("\n")
            })
        }
        AccountsCommand::Show { name, json } => {
            let account = crate::admin::accounts::named(&db, &name).await?;
            emit(json, &account, || line(&account))
        }
    }
}

impl LimitArgs {
    /// As a patch: an absent flag keeps the setting, "default"/"all"/"never" clears it.
    fn patch(self, name: Option<String>) -> anyhow::Result<KeyPatch> {
        fn setting<T: std::str::FromStr>(
            flag: &str,
            value: Option<String>,
            clear: &str,
        ) -> anyhow::Result<Option<Option<T>>> {
            let parse = |v: String| {
                if v == clear {
                    return Ok(None);
                }
                v.parse().map(Some).map_err(|_| {
                    anyhow::anyhow!("--{flag}: '{v}' is neither a number nor '{clear}'")
                })
            };
            value.map(parse).transpose()
        }
        let days: Option<Option<i64>> = setting("expires-in-days", self.expires_in_days, "never")?;
        Ok(KeyPatch {
            name,
            rpm: setting("rpm", self.rpm, "default")?,
            tpm: setting("tpm", self.tpm, "default")?,
            allowed_models: self.models.map(|m| {
                (m != "all").then(|| m.split(',').map(|s| s.trim().to_string()).collect())
            }),
            expires_at: days.map(|d| d.map(|d| Utc::now() + Duration::days(d))),
        })
    }
}

fn key_line(k: &KeyView) -> String {
    let state = serde_json::to_value(k.state).unwrap_or_default();
    let state = state.as_str().unwrap_or_default();
    format!(
        "{}\t{}\t{state}\taccount {}\t{}",
        k.id, k.prefix, k.account_id, k.name
    )
}

async fn keys(config: &Config, command: KeysCommand) -> anyhow::Result<()> {
    let db = store::connect(&config.database).await?;
    // Used to announce changes: gateways on this ledger drop their cached keys at once.
    let cache = KeyCache::new(ChangeSignal::for_database(&config.database.url, "keys"));
    match command {
        KeysCommand::Create {
            account,
            name,
            limits,
            json,
        } => {
            let patch = limits.patch(None)?;
            let request = NewKeyRequest {
                account: account.clone(),
                name,
                expires_at: patch.expires_at.flatten(),
                limits: KeyLimits {
                    rpm: patch.rpm.flatten(),
                    tpm: patch.tpm.flatten(),
                    allowed_models: patch.allowed_models.flatten(),
                },
            };
            let issued = lifecycle::issue(&db, &cache, request).await?;
            if !json {
                eprintln!(
                    "key {} issued for account '{account}'; it is shown only this once",
                    issued.view.prefix
                );
            }
            emit(json, &issued, || issued.key.clone())
        }
        KeysCommand::List { account, json } => {
            let account_id = crate::admin::accounts::id_of(&db, account.as_deref()).await?;
            let views = lifecycle::list(&db, account_id).await?;
            emit(json, &views, || {
                views.iter().map(key_line).collect::<Vec<_>>().join("\n")
            })
        }
        KeysCommand::Show { id, json } => {
            let view = lifecycle::view(&db, lifecycle::get(&db, id).await?).await?;
            emit(json, &view, || key_line(&view))
        }
        KeysCommand::Update {
            id,
            name,
            limits,
            json,
        } => {
            let view = lifecycle::update(&db, &cache, id, limits.patch(name)?).await?;
            emit(json, &view, || key_line(&view))
        }
        KeysCommand::Revoke { id, json } => {
            let view = lifecycle::revoke(&db, &cache, id).await?;
            emit(json, &view, || key_line(&view))
        }
        KeysCommand::Rotate {
            id,
            grace_secs,
            json,
        } => {
            let grace = Duration::seconds(grace_secs.unwrap_or(config.admin.rotation_grace_secs));
            let issued = lifecycle::rotate(&db, &cache, id, grace).await?;
            if !json {
                eprintln!(
                    "key {} replaces key {id}; the old secret works until {}",
                    issued.view.prefix,
                    Utc::now() + grace
                );
            }
            emit(json, &issued, || issued.key.clone())
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let app = Application::build(config).await?;
    tracing::info!(addr = %app.local_addr(), "tollgate listening");
    app.run_until_stopped(shutdown_signal()).await
}

/// The demo's configuration: `src/demo.toml` with the simulator's address filled in.
pub fn demo_config(sim: SocketAddr, listen: &str, db: &std::path::Path) -> anyhow::Result<Config> {
    let text = include_str!("demo.toml")
        .replace("{sim}", &sim.to_string())
        .replace("{listen}", listen)
        .replace("{db}", &db.display().to_string());
    Config::from_toml(&text, std::iter::empty())
}

async fn demo(listen: &str, db: &std::path::Path) -> anyhow::Result<()> {
    let (sim_addr, _sim) = sim::spawn("127.0.0.1:0".parse()?).await?;
    let config = demo_config(sim_addr, listen, db)?;
    let app = Application::build(config).await?;
    let state = app.state();
    if store::accounts::find_by_name(state.db(), "demo")
        .await?
        .is_none()
    {
        store::accounts::create(state.db(), "demo").await?;
    }
    let request = NewKeyRequest {
        account: "demo".into(),
        name: "demo".into(),
        ..Default::default()
    };
    let key = lifecycle::issue(state.db(), state.keys(), request)
        .await?
        .key;
    let admin = match state.admin_auth() {
        Some(auth) => format!(
            "admin token (1 h): {}",
            auth.mint("demo", Role::Admin, std::time::Duration::from_secs(3600))?
        ),
        None => {
            "admin API: off; export TOLLGATE_ADMIN_SECRET (32+ characters) to turn it on".into()
        }
    };
    let addr = app.local_addr();
    println!(
        "tollgate demo on http://{addr}  (simulated backends on http://{sim_addr}, ledger {})\n\
         demo API key (shown once): {key}\n\n\
         try:\n  \
         curl -s http://{addr}/v1/models -H 'Authorization: Bearer {key}'\n  \
         curl -s http://{addr}/maas/megrez-7b-instruct/chip3/chat/completions -H 'Authorization: Bearer {key}' \\\n    \
         -H 'Content-Type: application/json' -d '{{\"messages\":[{{\"role\":\"user\",\"content\":\"你是谁\"}}],\"stream\":true}}'\n  \
         python: OpenAI(base_url=\"http://{addr}/v1/\", api_key=\"{key}\")\n\
         {admin}\n\
         Ctrl-C stops it.",
        db.display(),
    );
    app.run_until_stopped(shutdown_signal()).await
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutting down: draining in-flight requests");
}
