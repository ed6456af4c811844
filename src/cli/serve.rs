//! `tollgate serve` and `tollgate demo`, and the shutdown signal they share.

use std::net::SocketAddr;

use crate::auth::jwt::Role;
use crate::config::Config;
use crate::domain::keys::{self, NewKeyRequest};
use crate::domain::people::{self, Role as PersonRole};
use crate::store;
use crate::{Application, sim};

pub(super) async fn serve(config: Config) -> anyhow::Result<()> {
    let app = Application::build(config).await?;
    tracing::info!(addr = %app.local_addr(), "tollgate listening");
    app.run_until_stopped(shutdown_signal()).await
}

/// The demo's configuration: `src/cli/demo.toml` with the simulator's address filled in.
pub fn demo_config(sim: SocketAddr, listen: &str, db: &std::path::Path) -> anyhow::Result<Config> {
    let text = include_str!("demo.toml")
        .replace("{sim}", &sim.to_string())
        .replace("{listen}", listen)
        .replace("{db}", &db.display().to_string());
    Config::from_toml(&text, std::iter::empty())
}

pub(super) async fn demo(listen: &str, db: &std::path::Path) -> anyhow::Result<()> {
    let (sim_addr, _sim) = sim::spawn("127.0.0.1:0".parse()?).await?;
    let config = demo_config(sim_addr, listen, db)?;
    let app = Application::build(config).await?;
    let state = app.state();
    let account_id = match store::accounts::find_by_name(state.db(), "demo").await? {
        Some(account) => account.id,
        None => store::accounts::create(state.db(), "demo").await?.id,
    };
    let request = NewKeyRequest {
        account: "demo".into(),
        name: "demo".into(),
        ..Default::default()
    };
    let key = keys::issue(state.db(), state.keys(), request).await?.key;
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
    // Fresh passwords each run: the demo ledger outlives the process.
    let password = || crate::auth::ApiKey::generate().expose_secret()[3..19].to_owned();
    let (operator_pw, customer_pw) = (password(), password());
    people::set_up(
        state.db(),
        "operator@demo.local",
        &operator_pw,
        PersonRole::Operator,
        None,
    )
    .await?;
    people::set_up(
        state.db(),
        "owner@demo.local",
        &customer_pw,
        PersonRole::Owner,
        Some(account_id),
    )
    .await?;
    let console = app.console_addr().unwrap_or(addr);
    println!(
        "console on http://{console}/console/\n  \
         operator: operator@demo.local / {operator_pw}\n  \
         customer (owner of the demo account): owner@demo.local / {customer_pw}\n"
    );
    println!(
        "tollgate demo on http://{addr}  (simulated backends on http://{sim_addr}, ledger {})\n\
         demo API key (shown once): {key}\n\n\
         try:\n  \
         curl -s http://{addr}/v1/models -H 'Authorization: Bearer {key}'\n  \
         curl -s http://{addr}/maas/megrez-7b-instruct/chip3/chat/completions -H 'Authorization: Bearer {key}' \\\n    \
         -H 'Content-Type: application/json' -d '{{\"messages\":[{{\"role\":\"user\",\"content\":\"你是谁\"}}],\"stream\":true}}'\n  \
         python: OpenAI(base_url=\"http://{addr}/v1/\", api_key=\"{key}\")\n  \
         python: dashscope.base_http_api_url = \"http://{addr}/api/v1\"; \
         Generation.call(model=\"qwen-plus\", prompt=\"你好\", api_key=\"{key}\")\n  \
         python: ZhipuAI(api_key=\"{key}\", base_url=\"http://{addr}/api/paas/v4\")\n\
         python: anthropic.Anthropic(api_key=\"{key}\", base_url=\"http://{addr}\"); \
         messages.create(model=\"glm-4.6\", max_tokens=256, messages=[...])\n\
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
