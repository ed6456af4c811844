//! Invoices: one per account per month, drafted from the ledger on each read; a finalized
//! invoice is stored once and served byte for byte ever after.

use chrono::{Duration, Utc};
use chrono_tz::Tz;

use crate::billing::PriceBook;
use crate::billing::invoice::{self, Invoice, InvoiceStatus};
use crate::billing::period::Month;
use crate::error::Error;
use crate::store::accounts::Account;
use crate::store::{self, Db};

/// Where invoices come from: the ledger, its prices, and the billing timezone.
pub struct Ledger<'a> {
    pub db: &'a Db,
    pub prices: &'a PriceBook,
    pub zone: Tz,
    /// Finalizing waits this long after the period ends, for requests still running then.
    pub finalize_grace: Duration,
}

/// An invoice as served: a finalized one is the stored text itself.
pub enum Document {
    Draft(Box<Invoice>),
    Final(String),
}

pub fn invoice_id(account_id: i64, month: Month) -> String {
    format!("inv_{account_id}_{:04}{:02}", month.year, month.month)
}

pub fn parse_id(id: &str) -> Result<(i64, Month), Error> {
    let not_found = || Error::NotFound(format!("invoice '{id}' does not exist"));
    let rest = id.strip_prefix("inv_").ok_or_else(not_found)?;
    let (account, yyyymm) = rest.split_once('_').ok_or_else(not_found)?;
    // Digits only, so that the slices below fall on character boundaries.
    if yyyymm.len() != 6 || !yyyymm.bytes().all(|b| b.is_ascii_digit()) {
        return Err(not_found());
    }
    let month =
        Month::parse(&format!("{}-{}", &yyyymm[..4], &yyyymm[4..])).map_err(|_| not_found())?;
    Ok((account.parse().map_err(|_| not_found())?, month))
}

impl Ledger<'_> {
    /// The draft of `account`'s invoice for `month`, from the records so far.
    pub async fn draft(
        &self,
        account: &Account,
        month: Month,
        status: InvoiceStatus,
    ) -> Result<Invoice, Error> {
        let (start, end) = month.bounds(self.zone);
        let scope = store::rollups::Scope::Account(account.id);
        let totals = store::rollups::totals(
            self.db,
            scope,
            store::to_ms(start),
            store::to_ms(end),
            store::rollups::By {
                zone: Some(self.zone),
                ..Default::default()
            },
        )
        .await?;
        let empty = Invoice {
            id: invoice_id(account.id, month),
            account_id: account.id,
            account: account.name.clone(),
            period: month.to_string(),
            timezone: self.zone.name().to_string(),
            period_start: start,
            period_end: end,
            status,
            currency: "CNY".into(),
            lines: Vec::new(),
            total_exact: Default::default(),
            total: Default::default(),
            reserved: Vec::new(),
            adjustments: Vec::new(),
            grants: Vec::new(),
            amount_due: None,
            generated_at: Utc::now(),
        };
        let notes = store::accounts::notes_between(self.db, account.id, start, end).await?;
        let adjustments = (notes.into_iter())
            .map(|n| invoice::Adjustment {
                id: n.id,
                kind: n.kind,
                period: n.period.unwrap_or_default(),
                reason: n.note,
                amount: -n.amount,
            })
            .collect();
        let hours = store::accounts::reservations_between(self.db, account.id, start, end).await?;
        let reserved = invoice::reserved_lines(hours.into_iter().map(|h| (h.note, -h.amount)))?;
        let used = store::grants::used_between(self.db, account.id, start, end).await?;
        let mut grants = Vec::with_capacity(used.len());
        if !used.is_empty() {
            let of_account = store::grants::of_account(self.db, account.id).await?;
            for (id, applied) in used {
                let grant = of_account.iter().find(|g| g.id == id);
                let (kind, reason) =
                    grant.map_or_else(Default::default, |g| (g.kind.clone(), g.reason.clone()));
                grants.push(invoice::GrantLine::new(id, kind, reason, applied));
            }
        }
        let invoice = empty.with_lines(invoice::lines(&totals, self.prices)?)?;
        Ok(invoice.with_charges(reserved, adjustments, grants)?)
    }

    /// The finalized invoice if there is one, else the draft.
    pub async fn get(&self, account: &Account, month: Month) -> Result<Document, Error> {
        match store::invoices::document(self.db, &invoice_id(account.id, month)).await? {
            Some(text) => Ok(Document::Final(text)),
            None => Ok(Document::Draft(Box::new(
                self.draft(account, month, InvoiceStatus::Draft).await?,
            ))),
        }
    }

    /// Freezes the invoice (once the period and its grace are over) and returns its text.
    pub async fn finalize(&self, account: &Account, month: Month) -> Result<String, Error> {
        let id = invoice_id(account.id, month);
        if let Some(text) = store::invoices::document(self.db, &id).await? {
            return Ok(text);
        }
        let (_, end) = month.bounds(self.zone);
        let ready_at = end + self.finalize_grace;
        if Utc::now() < ready_at {
            return Err(Error::Conflict(format!(
                "invoice {id} can be finalized from {} (period end plus billing.finalize_grace_secs)",
                ready_at.to_rfc3339()
            )));
        }
        let invoice = self.draft(account, month, InvoiceStatus::Final).await?;
        let text = serde_json::to_string(&invoice).map_err(anyhow::Error::from)?;
        store::invoices::insert(self.db, &id, account.id, &invoice.period, &text).await?;
        let stored = store::invoices::document(self.db, &id).await?;
        Ok(stored.expect("just stored"))
    }
}

impl Document {
    /// The invoice itself (a final one read back from its stored text).
    pub fn invoice(&self) -> Result<Invoice, Error> {
        match self {
            Document::Draft(invoice) => Ok((**invoice).clone()),
            Document::Final(text) => Ok(serde_json::from_str(text).map_err(anyhow::Error::from)?),
        }
    }

    pub fn to_csv(&self) -> Result<String, Error> {
        match self {
            Document::Draft(invoice) => Ok(invoice.to_csv()),
            Document::Final(text) => {
                let invoice: Invoice = serde_json::from_str(text).map_err(anyhow::Error::from)?;
                Ok(invoice.to_csv())
            }
        }
    }

    pub fn to_json(&self) -> Result<String, Error> {
        match self {
            Document::Draft(invoice) => {
                Ok(serde_json::to_string(invoice).map_err(anyhow::Error::from)?)
            }
            Document::Final(text) => Ok(text.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_odd_ones_are_not_found() {
        let month = Month::parse("2026-11").unwrap();
        assert_eq!(parse_id(&invoice_id(7, month)).unwrap(), (7, month));
        for odd in [
            "inv_1_aaa€",
            "inv_1_20€1",
            "inv_1_€€",
            "inv_x_202611",
            "inv_1_2026111",
            "inv_1",
        ] {
            assert!(matches!(parse_id(odd), Err(Error::NotFound(_))), "{odd}");
        }
    }
}
