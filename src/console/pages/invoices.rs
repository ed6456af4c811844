//! Invoices: an account's invoice per month, draft (from the rollups so far) or final (as
//! stored), its lines per model × chip and unit, downloads as JSON and CSV (the admin API's
//! bytes), and finalizing (operators, once the period and its grace are over).

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{Duration, Utc};
use serde::Deserialize;

use super::{operators_only, render_form, visible_account};
use crate::billing::invoice::{Invoice, InvoiceStatus};
use crate::billing::period::Month;
use crate::console::frame::{Frame, count, exact, money, time};
use crate::console::web::{Failure, Posted, Signed};
use crate::domain::accounts;
use crate::domain::audit_log::{self, Change};
use crate::domain::invoices::{Ledger, invoice_id, parse_id};
use crate::error::Error;
use crate::state::AppState;
use crate::store::accounts::Account;

#[derive(Template)]
#[template(path = "invoices.html")]
struct InvoicesPage {
    frame: Frame,
    /// Accounts to choose from (an operator who has not chosen one).
    accounts: Vec<(i64, String)>,
    account: Option<String>,
    months: Vec<(String, String, bool)>,
    invoice: Option<InvoiceView>,
    may_finalize: bool,
    error: Option<String>,
}

struct InvoiceView {
    id: String,
    period: String,
    final_: bool,
    lines: Vec<[String; 7]>,
    total: String,
    total_exact: String,
    /// Each credit or debit note: its catalogue kind, what it says, its amount.
    notes: Vec<(&'static str, String, String)>,
    due: String,
    generated: String,
}

#[derive(Deserialize)]
pub struct InvoicesQuery {
    account: Option<i64>,
    period: Option<String>,
}

fn ledger<'a>(
    state: &'a AppState,
    db: &'a crate::store::Db,
    prices: &'a crate::billing::PriceBook,
) -> Ledger<'a> {
    Ledger {
        db,
        prices,
        zone: state.config().billing.zone(),
        finalize_grace: Duration::seconds(state.config().billing.finalize_grace_secs),
    }
}

pub async fn show(
    State(state): State<AppState>,
    signed: Signed,
    Query(q): Query<InvoicesQuery>,
) -> Result<Response, Failure> {
    let account = visible_account(&state, &signed, q.account).await?;
    page(&state, &signed, account, q.period.as_deref(), None).await
}

async fn page(
    state: &AppState,
    signed: &Signed,
    account: Option<Account>,
    period: Option<&str>,
    error: Option<String>,
) -> Result<Response, Failure> {
    let zone = state.config().billing.zone();
    let now = Month::containing(Utc::now(), zone);
    let month = match period {
        Some(p) => Month::parse(p).map_err(|e| Failure::from(Error::invalid(e, "period")))?,
        None => now,
    };
    let mut months = Vec::new();
    let mut m = now;
    for _ in 0..12 {
        let label = format!("{:04}-{:02}", m.year, m.month);
        let query = match &account {
            Some(a) => format!("account={}&period={label}", a.id),
            None => format!("period={label}"),
        };
        months.push((label, query, m == month));
        m = m.previous();
    }
    let db = state.usage_db().await?;
    let prices = state.prices();
    let invoice = match &account {
        None => None,
        Some(account) => {
            let document = ledger(state, db, &prices).get(account, month).await?;
            let invoice = document.invoice()?;
            Some(InvoiceView {
                id: invoice.id.clone(),
                period: invoice.period.clone(),
                final_: invoice.status == InvoiceStatus::Final,
                lines: lines(&invoice),
                total: money(invoice.total),
                total_exact: exact(invoice.total_exact),
                notes: notes(&invoice),
                due: money(invoice.amount_due.unwrap_or(invoice.total)),
                generated: time(invoice.generated_at, accounts::zone_of(account, zone)),
            })
        }
    };
    let accounts = if account.is_none() {
        accounts::list(db)
            .await?
            .into_iter()
            .map(|a| (a.id, a.name))
            .collect()
    } else {
        Vec::new()
    };
    let page = InvoicesPage {
        frame: Frame::signed(signed, "nav.invoices"),
        accounts,
        account: account.map(|a| a.name),
        months,
        invoice,
        may_finalize: signed.session.person.role.is_operator(),
        error,
    };
    render_form(&page, &page.error)
}

/// An invoice's reserved hours, credit and debit notes and grants applied as the page and
/// the document show them.
fn notes(invoice: &Invoice) -> Vec<(&'static str, String, String)> {
    let reserved = invoice.reserved.iter().map(|r| {
        let what = format!("{} · {} h × {}", r.deployment, r.hours, exact(r.per_hour));
        ("invoice.reserved", what, money(r.amount))
    });
    let notes = invoice.adjustments.iter().map(|a| {
        let kind = match a.kind.as_str() {
            "debit_note" => "invoice.debit_note",
            _ => "invoice.credit_note",
        };
        let what = format!("#{} · {} · {}", a.id, a.period, a.reason);
        (kind, what, money(a.amount))
    });
    let grants = invoice.grants.iter().map(|g| {
        let what = format!("#{} · {} · {}", g.grant_id, g.kind, g.reason);
        ("invoice.grant", what, money(g.amount))
    });
    reserved.chain(notes).chain(grants).collect()
}

/// An invoice's lines as the page and the document show them.
fn lines(invoice: &Invoice) -> Vec<[String; 7]> {
    invoice
        .lines
        .iter()
        .map(|l| {
            let mut chip = l.chip.clone();
            for part in [&l.deployment, &l.prompt_tier].into_iter().flatten() {
                chip = format!("{chip} · {part}");
            }
            [
                l.model.clone(),
                chip,
                l.unit.as_str().to_owned(),
                count(l.quantity as i64),
                format!("{} / {}", exact(l.unit_price), count(i64::from(l.per))),
                exact(l.amount_exact),
                money(l.amount),
            ]
        })
        .collect()
}

/// The invoice as a document of its own (the `.html` download): no script, its style in
/// it, so that it prints and reads from a disk as it does here.
#[derive(Template)]
#[template(path = "invoice_document.html")]
struct InvoiceDocument<'a> {
    t: &'static crate::console::i18n::Words,
    lang_tag: &'static str,
    invoice: &'a Invoice,
    account: String,
    display_name: String,
    final_: bool,
    lines: Vec<[String; 7]>,
    total: String,
    total_exact: String,
    notes: Vec<(&'static str, String, String)>,
    due: String,
    generated: String,
}

/// The invoice `id` (`inv_<account>_<yyyymm>`), if the person may see its account.
async fn visible_invoice(
    state: &AppState,
    signed: &Signed,
    id: &str,
) -> Result<(Account, Month), Failure> {
    let (account_id, month) = parse_id(id)?;
    if !signed.session.person.sees(account_id) {
        return Err(Failure::not_found());
    }
    Ok((accounts::get(state.db(), account_id).await?, month))
}

/// `inv_….json` or `inv_….csv`: the invoice as the admin API serves it; `inv_….html`: a
/// document of its own.
pub async fn download(
    State(state): State<AppState>,
    signed: Signed,
    Path(file): Path<String>,
) -> Result<Response, Failure> {
    let Some((id, kind)) = file.rsplit_once('.') else {
        return Err(Failure::not_found());
    };
    if !["json", "csv", "html"].contains(&kind) {
        return Err(Failure::not_found());
    }
    let (account, month) = visible_invoice(&state, &signed, id).await?;
    let db = state.usage_db().await?;
    let prices = state.prices();
    let document = ledger(&state, db, &prices).get(&account, month).await?;
    let disposition = format!("attachment; filename=\"{file}\"");
    let (content_type, body) = match kind {
        "csv" => ("text/csv; charset=utf-8", document.to_csv()?),
        "json" => ("application/json", document.to_json()?),
        _ => {
            let invoice = document.invoice()?;
            let html = InvoiceDocument {
                t: signed.prefs.t(),
                lang_tag: signed.prefs.lang.tag(),
                invoice: &invoice,
                account: account.name.clone(),
                display_name: account.display_name.clone(),
                final_: invoice.status == InvoiceStatus::Final,
                lines: lines(&invoice),
                total: money(invoice.total),
                total_exact: exact(invoice.total_exact),
                notes: notes(&invoice),
                due: money(invoice.amount_due.unwrap_or(invoice.total)),
                generated: time(
                    invoice.generated_at,
                    accounts::zone_of(&account, state.config().billing.zone()),
                ),
            }
            .render()
            .map_err(|e| Failure::from(Error::Internal(e.into())))?;
            // Its own style sheet, inline; still no script and no framing.
            let policy = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'";
            return Ok((
                [
                    (header::CONTENT_TYPE, "text/html; charset=utf-8".to_owned()),
                    (header::CONTENT_DISPOSITION, disposition),
                    (header::CONTENT_SECURITY_POLICY, policy.to_owned()),
                ],
                html,
            )
                .into_response());
        }
    };
    Ok((
        [
            (header::CONTENT_TYPE, content_type.to_owned()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        body,
    )
        .into_response())
}

#[derive(Deserialize)]
pub struct NoFields {}

pub async fn finalize(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Posted { signed, .. }: Posted<NoFields>,
) -> Result<Response, Failure> {
    operators_only(&signed)?;
    let (account, month) = visible_invoice(&state, &signed, &id).await?;
    let db = state.usage_db().await?;
    let prices = state.prices();
    let period = format!("{:04}-{:02}", month.year, month.month);
    match ledger(&state, db, &prices).finalize(&account, month).await {
        Ok(_) => {
            let change = Change::event(
                "invoice.finalize",
                format!("invoice:{}", invoice_id(account.id, month)),
                Some(account.id),
            );
            audit_log::record(db, &signed.actor(), change).await?;
            Ok(Redirect::to(&format!(
                "/console/invoices?account={}&period={period}",
                account.id
            ))
            .into_response())
        }
        Err(e @ Error::Conflict(_)) => {
            page(
                &state,
                &signed,
                Some(account),
                Some(&period),
                Some(e.to_string()),
            )
            .await
        }
        Err(e) => Err(e.into()),
    }
}
