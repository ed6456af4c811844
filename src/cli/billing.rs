//! `tollgate prices` and `tollgate invoices`.

use chrono::Duration;
use clap::Subcommand;

use crate::billing::PriceBook;
use crate::billing::period::Month;
use crate::config::Config;
use crate::store;

use super::emit;

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

pub(super) async fn prices(config: &Config, command: PricesCommand) -> anyhow::Result<()> {
    let db = store::open(config).await?;
    match command {
        PricesCommand::Sync => {
            let added = crate::domain::prices::sync(config, &db).await?;
            println!("{added} new price version(s) recorded");
        }
        PricesCommand::List { json } => {
            let versions = store::prices::all(&db).await?;
            let book = PriceBook::new(versions.clone());
            let list: Vec<_> = versions
                .iter()
                .map(|v| crate::domain::prices::describe(v, &book))
                .collect();
            emit(json, &list, || {
                // The version and whom it prices, its rates (every one a price entry may
                // name), in force.
                let columns = || {
                    let scope = ["id", "model", "chip", "deployment", "account"];
                    let tier = [
                        "prompt_tokens_over",
                        "prompt_tokens_up_to",
                        "effective_from",
                    ];
                    (scope.into_iter().chain(tier))
                        .chain(crate::billing::prices::RATES)
                        .chain(["in_force"])
                };
                let line = |v: &serde_json::Value| {
                    let field = |k: &str| match &v[k] {
                        serde_json::Value::String(text) => text.clone(),
                        serde_json::Value::Null => "-".into(),
                        other => other.to_string(),
                    };
                    columns().map(field).collect::<Vec<_>>().join("\t")
                };
                let header = columns().collect::<Vec<_>>().join("\t");
                std::iter::once(header.to_string())
                    .chain(list.iter().map(line))
                    .collect::<Vec<_>>()
                    .join("\n")
            })?;
        }
    }
    Ok(())
}

pub(super) async fn invoices(config: &Config, command: InvoicesCommand) -> anyhow::Result<()> {
    use crate::domain::invoices::{Document, Ledger};
    let db = store::open(config).await?;
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
            let account = crate::domain::accounts::named(&db, &account).await?;
            let document = ledger
                .get(&account, Month::parse(&period).map_err(anyhow::Error::msg)?)
                .await?;
            match format {
                FormatArg::Json => println!("{}", document.to_json()?),
                FormatArg::Csv => print!("{}", document.to_csv()?),
            }
        }
        InvoicesCommand::Finalize { account, period } => {
            let account = crate::domain::accounts::named(&db, &account).await?;
            let month = Month::parse(&period).map_err(anyhow::Error::msg)?;
            let text = ledger.finalize(&account, month).await?;
            let change = crate::domain::audit_log::Change::event(
                "invoice.finalize",
                format!(
                    "invoice:{}",
                    crate::domain::invoices::invoice_id(account.id, month)
                ),
                Some(account.id),
            );
            super::audited(&db, change).await?;
            println!("{}", Document::Final(text).to_json()?);
        }
    }
    Ok(())
}
