//! `tollgate grants`: issue and list an account's credit grants.

use chrono::{DateTime, Duration, Utc};
use clap::Subcommand;
use rust_decimal::Decimal;

use crate::config::Config;
use crate::domain::audit_log::Actor;
use crate::domain::{accounts, grants};
use crate::store;
use crate::store::signal::ChangeSignal;

use super::{audited, emit};

#[derive(Subcommand)]
pub enum GrantsCommand {
    /// Give an account a credit grant, burned by its usage before its balance; the
    /// idempotency key makes a retry issue once.
    Create {
        /// The account's name.
        account: String,
        /// CNY, to the fen, e.g. 50.00.
        #[arg(long, value_parser = super::accounts::plain_amount, required_unless_present = "tokens")]
        amount: Option<Decimal>,
        /// A token grant instead: this many prompt and completion tokens of `--model`.
        #[arg(long, conflicts_with = "amount", requires = "model")]
        tokens: Option<u64>,
        #[arg(long, requires = "tokens")]
        model: Option<String>,
        #[arg(long, default_value = "promotional", value_parser = ["paid", "promotional"])]
        kind: String,
        /// 0 (burned first) to 100.
        #[arg(long, default_value_t = 50)]
        priority: i32,
        /// RFC 3339; default: now.
        #[arg(long)]
        effective_at: Option<DateTime<Utc>>,
        /// Days from its effective time to its expiry; default: it never expires.
        #[arg(long, conflicts_with = "expires_at")]
        expires_in_days: Option<u32>,
        /// RFC 3339.
        #[arg(long)]
        expires_at: Option<DateTime<Utc>>,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        idempotency_key: String,
        #[arg(long)]
        json: bool,
    },
    /// An account's grants, newest first, with what each has left.
    List {
        account: String,
        #[arg(long)]
        json: bool,
    },
}

pub(super) async fn grants(config: &Config, command: GrantsCommand) -> anyhow::Result<()> {
    let db = store::open(config).await?;
    match command {
        GrantsCommand::Create {
            account,
            amount,
            tokens,
            model,
            kind,
            priority,
            effective_at,
            expires_in_days,
            expires_at,
            reason,
            idempotency_key,
            json,
        } => {
            let found = accounts::named(&db, &account).await?;
            let from = effective_at.unwrap_or_else(Utc::now);
            let expires_at =
                expires_at.or_else(|| expires_in_days.map(|d| from + Duration::days(i64::from(d))));
            let asked = grants::GrantRequest {
                amount,
                tokens,
                model: model.as_deref(),
                kind: &kind,
                priority: Some(priority),
                effective_at,
                expires_at,
                reason: &reason,
                actor: &Actor::cli().name,
                idempotency_key: &idempotency_key,
            };
            let (grant, created) = grants::issue(&db, None, found.id, &asked).await?;
            if created {
                audited(&db, grants::issued(&grant)).await?;
            }
            ChangeSignal::new(&db, &config.database.url, "accounts")
                .announce()
                .await;
            let what = match created {
                true => "issued",
                false => "already issued (same idempotency key)",
            };
            let of = match (&grant.model, grant.tokens) {
                (Some(model), Some(n)) => format!("{n} tokens of {model}"),
                _ => format!("{} CNY", grant.amount),
            };
            emit(json, &grant, || {
                format!(
                    "{} grant {} of {of} {what} to '{account}'",
                    grant.kind, grant.id
                )
            })
        }
        GrantsCommand::List { account, json } => {
            let found = accounts::named(&db, &account).await?;
            let list = store::grants::of_account(&db, found.id).await?;
            emit(json, &list, || {
                let head = "id\tkind\tpriority\tamount\tremaining\tstate\teffective_at\texpires_at\treason";
                let left = |g: &crate::store::grants::Grant| match (&g.model, g.remaining_tokens) {
                    (Some(model), Some(n)) => (
                        format!("{} tokens of {model}", g.tokens.unwrap_or(0)),
                        n.to_string(),
                    ),
                    _ => (g.amount.to_string(), g.remaining.normalize().to_string()),
                };
                let rows = list.iter().map(|g| {
                    let expires = g.expires_at.map_or("never".into(), |e| e.to_rfc3339());
                    let (amount, remaining) = left(g);
                    format!(
                        "{}\t{}\t{}\t{amount}\t{remaining}\t{}\t{}\t{expires}\t{}",
                        g.id,
                        g.kind,
                        g.priority,
                        g.state,
                        g.effective_at.to_rfc3339(),
                        g.reason
                    )
                });
                std::iter::once(head.to_string())
                    .chain(rows)
                    .collect::<Vec<_>>()
                    .join("\n")
            })
        }
    }
}
