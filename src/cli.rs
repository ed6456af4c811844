//! The command line: `serve`, `demo`, `simulate`, `accounts`, `keys`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use chrono::{Duration, Utc};
use clap::{Parser, Subcommand};
use serde_json::json;

use crate::auth::ApiKey;
use crate::config::Config;
use crate::store;
use crate::{Application, sim};

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
}

#[derive(Subcommand)]
pub enum AccountsCommand {
    /// Create an account.
    Create {
        name: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Issue a key for an account; the key is printed once and never again.
    Create {
        #[arg(long)]
        account: String,
        #[arg(long, default_value = "")]
        name: String,
        /// Days until the key expires (never, by default).
        #[arg(long)]
        expires_in_days: Option<i64>,
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
        Command::Accounts(AccountsCommand::Create { name, json }) => {
            let db = store::connect(&Config::load(&cli.config)?.database).await?;
            let account = store::accounts::create(&db, &name).await?;
            if json {
                println!(
                    "{}",
                    json!({"id": account.id, "name": account.name, "created_at": account.created_at})
                );
            } else {
                println!("account '{}' created (id {})", account.name, account.id);
            }
            Ok(())
        }
        Command::Keys(KeysCommand::Create {
            account,
            name,
            expires_in_days,
            json,
        }) => {
            let db = store::connect(&Config::load(&cli.config)?.database).await?;
            let expires_at = expires_in_days.map(|d| Utc::now() + Duration::days(d));
            let (key, id) = issue_key(&db, &account, &name, expires_at).await?;
            if json {
                println!(
                    "{}",
                    json!({"id": id, "account": account, "key": key.expose_secret(), "prefix": key.prefix()})
                );
            } else {
                println!("{}", key.expose_secret());
                eprintln!(
                    "key {} issued for account '{account}'; it is shown only this once",
                    key.prefix()
                );
            }
            Ok(())
        }
    }
}

/// Issues a key for the named account. Returns the secret (to show once) and the key id.
pub async fn issue_key(
    db: &store::Db,
    account: &str,
    name: &str,
    expires_at: Option<chrono::DateTime<Utc>>,
) -> anyhow::Result<(ApiKey, i64)> {
    let account = store::accounts::find_by_name(db, account)
        .await?
        .with_context(|| {
            format!("no account named '{account}'; create it with 'tollgate accounts create'")
        })?;
    let key = ApiKey::generate();
    let row = store::keys::insert(
        db,
        store::keys::NewKey {
            account_id: account.id,
            name,
            prefix: key.prefix(),
            secret_hash: &key.hash(),
            expires_at,
        },
    )
    .await?;
    Ok((key, row.id))
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
    let (key, _) = issue_key(state.db(), "demo", "demo", None).await?;
    let addr = app.local_addr();
    println!(
        "tollgate demo on http://{addr}  (simulated backends on http://{sim_addr}, ledger {})\n\
         demo API key (shown once): {key}\n\n\
         try:\n  \
         curl -s http://{addr}/v1/models -H 'Authorization: Bearer {key}'\n  \
         curl -s http://{addr}/maas/megrez-7b-instruct/chip3/chat/completions -H 'Authorization: Bearer {key}' \\\n    \
         -H 'Content-Type: application/json' -d '{{\"messages\":[{{\"role\":\"user\",\"content\":\"你是谁\"}}],\"stream\":true}}'\n  \
         python: OpenAI(base_url=\"http://{addr}/v1/\", api_key=\"{key}\")\n\
         Ctrl-C stops it.",
        db.display(),
        key = key.expose_secret()
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
