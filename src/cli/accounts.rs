//! `tollgate accounts` and `tollgate keys`.

use chrono::{Duration, Utc};
use clap::Subcommand;

use crate::auth::cache::KeyCache;
use crate::config::Config;
use crate::domain::keys::{self, KeyPatch, KeyView, NewKeyRequest};
use crate::store;
use crate::store::accounts::{Account, BillingMode};
use crate::store::keys::KeyLimits;
use crate::store::signal::ChangeSignal;
use rust_decimal::Decimal;

use super::{audited, emit};

#[derive(Subcommand)]
pub enum AccountsCommand {
    /// Open an account (postpaid without a limit unless told otherwise).
    Create {
        name: String,
        /// Spends its top-ups only.
        #[arg(long, conflicts_with = "credit_limit")]
        prepaid: bool,
        /// Postpaid: the most it may owe, in CNY.
        #[arg(long, value_parser = plain_amount)]
        credit_limit: Option<Decimal>,
        #[arg(long)]
        json: bool,
    },
    /// Credit an account; the idempotency key makes a retry credit once.
    Topup {
        name: String,
        /// CNY, e.g. 100.00.
        #[arg(long, value_parser = plain_amount)]
        amount: Decimal,
        #[arg(long)]
        idempotency_key: String,
        #[arg(long, default_value = "")]
        note: String,
        #[arg(long)]
        json: bool,
    },
    /// Issue a credit note (money given back) or a debit note (money charged after the
    /// fact): counted in the balance at once, listed on this month's invoice, never an
    /// edit of records or of a final invoice. The idempotency key makes a retry issue once.
    Note {
        name: String,
        /// `credit` or `debit`.
        #[arg(long)]
        kind: String,
        /// CNY, to the fen, e.g. 12.50.
        #[arg(long, value_parser = plain_amount)]
        amount: Decimal,
        /// The month it corrects, e.g. 2026-11.
        #[arg(long)]
        period: String,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        idempotency_key: String,
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

/// An amount of money as a plain decimal (`100.00`; no exponent or separators).
pub(super) fn plain_amount(text: &str) -> Result<Decimal, String> {
    crate::billing::money::parse_plain(text.trim())
        .ok_or_else(|| format!("'{text}' is not a plain decimal amount, e.g. 100.00"))
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

pub(super) async fn accounts(config: &Config, command: AccountsCommand) -> anyhow::Result<()> {
    let db = store::open(config).await?;
    let line = |a: &Account| format!("{}\t{}\t{}", a.id, a.name, a.created_at);
    match command {
        AccountsCommand::Create {
            name,
            prepaid,
            credit_limit,
            json,
        } => {
            let mode = if prepaid {
                BillingMode::Prepaid
            } else {
                BillingMode::Postpaid
            };
            let account = crate::domain::accounts::open(&db, &name, mode, credit_limit).await?;
            audited(&db, crate::domain::accounts::opened(&account)).await?;
            let welcome = config.billing.welcome_grant.as_ref();
            let granted = crate::domain::grants::welcome(&db, None, account.id, welcome).await?;
            if let Some(grant) = granted {
                audited(&db, crate::domain::grants::issued(&grant)).await?;
            }
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
            let account = crate::domain::accounts::named(&db, &name).await?;
            let (topup, created) =
                crate::domain::accounts::top_up(&db, account.id, amount, &idempotency_key, &note)
                    .await?;
            if created {
                audited(&db, crate::domain::accounts::credited(&topup)).await?;
            }
            ChangeSignal::new(&db, &config.database.url, "accounts")
                .announce()
                .await;
            let what = if created {
                "credited"
            } else {
                "already credited (same idempotency key)"
            };
            emit(json, &topup, || {
                format!("{} CNY {what} to '{name}'", topup.amount)
            })
        }
        AccountsCommand::Note {
            name,
            kind,
            amount,
            period,
            reason,
            idempotency_key,
            json,
        } => {
            let account = crate::domain::accounts::named(&db, &name).await?;
            let asked = crate::domain::accounts::NoteRequest {
                note: crate::domain::accounts::Note::parse(&kind)?,
                amount,
                period: &period,
                reason: &reason,
                actor: &crate::domain::audit_log::Actor::cli().name,
                idempotency_key: &idempotency_key,
            };
            let zone = config.billing.zone();
            let (note, created) =
                crate::domain::accounts::issue_note(&db, account.id, zone, &asked).await?;
            if created {
                audited(&db, crate::domain::accounts::noted(&note)).await?;
            }
            ChangeSignal::new(&db, &config.database.url, "accounts")
                .announce()
                .await;
            let what = if created {
                "issued"
            } else {
                "already issued (same idempotency key)"
            };
            emit(json, &note, || {
                format!("{} of {} CNY {what} to '{name}'", note.kind, note.amount)
            })
        }
        AccountsCommand::List { json } => {
            let list = store::accounts::list(&db).await?;
            emit(json, &list, || {
                let rows = list.iter().map(line);
                std::iter::once("id\tname\tcreated_at".to_string())
                    .chain(rows)
                    .collect::<Vec<_>>()
                    .join("\n")
            })
        }
        AccountsCommand::Show { name, json } => {
            let account = crate::domain::accounts::named(&db, &name).await?;
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

/// The columns of `key_line`, for lists.
const KEY_HEADER: &str = "id\tprefix\tstate\taccount\tname";

fn key_line(k: &KeyView) -> String {
    let state = serde_json::to_value(k.state).unwrap_or_default();
    let state = state.as_str().unwrap_or_default();
    format!(
        "{}\t{}\t{state}\t{}\t{}",
        k.id, k.prefix, k.account_id, k.name
    )
}

pub(super) async fn keys(config: &Config, command: KeysCommand) -> anyhow::Result<()> {
    let db = store::open(config).await?;
    // Used to announce changes: gateways on this ledger drop their cached keys at once.
    let cache = KeyCache::new(ChangeSignal::new(&db, &config.database.url, "keys"));
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
            let issued = keys::issue(&db, &cache, request).await?;
            audited(&db, keys::change("key.create", None, &issued.view)).await?;
            if !json {
                eprintln!(
                    "key {} issued for account '{account}'; it is shown only this once",
                    issued.view.prefix
                );
            }
            emit(json, &issued, || issued.key.clone())
        }
        KeysCommand::List { account, json } => {
            let account_id = crate::domain::accounts::id_of(&db, account.as_deref()).await?;
            let views = keys::list(&db, account_id).await?;
            emit(json, &views, || {
                let rows = views.iter().map(key_line);
                std::iter::once(KEY_HEADER.to_string())
                    .chain(rows)
                    .collect::<Vec<_>>()
                    .join("\n")
            })
        }
        KeysCommand::Show { id, json } => {
            let view = keys::view(&db, keys::get(&db, id).await?).await?;
            emit(json, &view, || key_line(&view))
        }
        KeysCommand::Update {
            id,
            name,
            limits,
            json,
        } => {
            let before = keys::view(&db, keys::get(&db, id).await?).await?;
            let view = keys::update(&db, &cache, id, limits.patch(name)?).await?;
            audited(&db, keys::change("key.update", Some(&before), &view)).await?;
            emit(json, &view, || key_line(&view))
        }
        KeysCommand::Revoke { id, json } => {
            let before = keys::view(&db, keys::get(&db, id).await?).await?;
            let view = keys::revoke(&db, &cache, id).await?;
            audited(&db, keys::change("key.revoke", Some(&before), &view)).await?;
            emit(json, &view, || key_line(&view))
        }
        KeysCommand::Rotate {
            id,
            grace_secs,
            json,
        } => {
            let grace = keys::grace(grace_secs.unwrap_or(config.admin.rotation_grace_secs))?;
            let before = keys::view(&db, keys::get(&db, id).await?).await?;
            let issued = keys::rotate(&db, &cache, id, grace).await?;
            audited(&db, keys::change("key.rotate", Some(&before), &issued.view)).await?;
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
