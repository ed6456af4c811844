//! The audit log (operators only): every change, newest first, by keyset pages.

use askama::Template;
use axum::extract::{Query, State};
use axum::response::Response;
use serde::Deserialize;

use super::{operators_only, render};
use crate::console::frame::{Frame, time};
use crate::console::web::{Failure, Signed};
use crate::domain::audit_log;
use crate::state::AppState;
use crate::store::audit_log::Entry;

struct EntryLine {
    at: String,
    entry: Entry,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    frame: Frame,
    entries: Vec<EntryLine>,
    older: Option<i64>,
}

#[derive(Deserialize)]
pub struct AuditQuery {
    before: Option<i64>,
    account: Option<i64>,
}

pub async fn show(
    State(state): State<AppState>,
    signed: Signed,
    Query(q): Query<AuditQuery>,
) -> Result<Response, Failure> {
    operators_only(&signed)?;
    let entries = audit_log::page(state.db(), q.account, q.before).await?;
    let zone = state.config().billing.zone();
    let older = (entries.len() as i64 == audit_log::PAGE)
        .then(|| entries.last().map(|e| e.id))
        .flatten();
    render(&AuditPage {
        frame: Frame::signed(&signed, "nav.audit"),
        entries: entries
            .into_iter()
            .map(|entry| EntryLine {
                at: time(entry.at, zone),
                entry,
            })
            .collect(),
        older,
    })
}
