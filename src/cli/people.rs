//! `tollgate users`: the console's people. A password is read from a file or standard
//! input, never from the command line (where `ps` would show it).

use std::io::BufRead;
use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;

use crate::config::Config;
use crate::domain::accounts;
use crate::domain::audit_log::{self, Actor, Change};
use crate::domain::people::{self, Person, Role};
use crate::store;

use super::emit;

#[derive(Subcommand)]
pub enum UsersCommand {
    /// Create a console user. The password is the first line of --password-file, or of
    /// standard input.
    Create {
        #[arg(long)]
        email: String,
        #[arg(long, value_parser = ["operator", "owner", "member", "viewer"])]
        role: String,
        /// The account an owner, member or viewer belongs to (by name).
        #[arg(long)]
        account: Option<String>,
        #[arg(long)]
        password_file: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// List console users.
    List {
        /// Only this account's.
        #[arg(long)]
        account: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Disable a user: their sessions end and they cannot sign in.
    Disable { email: String },
    /// Let a disabled user sign in again.
    Enable { email: String },
}

fn read_password(file: Option<&PathBuf>) -> anyhow::Result<String> {
    let mut line = String::new();
    match file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            line = text.lines().next().unwrap_or_default().to_owned();
        }
        None => {
            std::io::stdin().lock().read_line(&mut line)?;
        }
    }
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

fn line(p: &Person) -> String {
    let account = p.account_id.map_or("-".into(), |a| a.to_string());
    let state = if p.disabled { "disabled" } else { "active" };
    format!(
        "{}\t{}\t{}\taccount {account}\t{state}",
        p.id,
        p.email,
        p.role.as_str()
    )
}

pub(super) async fn run(config: &Config, command: UsersCommand) -> anyhow::Result<()> {
    let db = store::open(config).await?;
    match command {
        UsersCommand::Create {
            email,
            role,
            account,
            password_file,
            json,
        } => {
            let role = Role::parse(&role)?;
            let account_id = accounts::id_of(&db, account.as_deref()).await?;
            let password = read_password(password_file.as_ref())?;
            let person = people::create(&db, &email, &password, role, account_id).await?;
            audit_log::record(
                &db,
                &Actor::cli(),
                Change::created(
                    "user.create",
                    format!("user:{}", person.id),
                    person.account_id,
                    &person,
                ),
            )
            .await?;
            emit(json, &person, || format!("created {}", line(&person)))
        }
        UsersCommand::List { account, json } => {
            let account_id = accounts::id_of(&db, account.as_deref()).await?;
            let list = people::list(&db, account_id).await?;
            emit(json, &list, || {
                list.iter().map(line).collect::<Vec<_>>().join("\n")
            })
        }
        UsersCommand::Disable { email } => set_disabled(&db, &email, true).await,
        UsersCommand::Enable { email } => set_disabled(&db, &email, false).await,
    }
}

async fn set_disabled(db: &store::Db, email: &str, disabled: bool) -> anyhow::Result<()> {
    let email = people::check_email(email)?;
    let row = store::people::by_email(db, &email)
        .await?
        .with_context(|| format!("no console user '{email}'"))?;
    let before = people::get(db, row.id).await?;
    let after = people::set_disabled(db, row.id, disabled).await?;
    let action = if disabled {
        "user.disable"
    } else {
        "user.enable"
    };
    audit_log::record(
        db,
        &Actor::cli(),
        Change::updated(
            action,
            format!("user:{}", after.id),
            after.account_id,
            &before,
            &after,
        ),
    )
    .await?;
    println!("{}", line(&after));
    Ok(())
}
