//! `GET /admin/v1/reports/cost`: usage and exact cost over a time range, grouped, as JSON,
//! CSV or a self-contained HTML page. `tollgate report` prints the same.

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use super::{QueryParams, Viewer};
use crate::domain::reports;
use crate::server::ApiError;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/admin/v1/reports/cost", get(cost))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CostQuery {
    from: Option<String>,
    to: Option<String>,
    group_by: Option<String>,
    format: Option<String>,
}

async fn cost(
    State(state): State<AppState>,
    _: Viewer,
    QueryParams(q): QueryParams<CostQuery>,
) -> Result<Response, ApiError> {
    let request = reports::ReportRequest {
        from: q.from.as_deref(),
        to: q.to.as_deref(),
        group_by: q.group_by.as_deref().unwrap_or("model,chip"),
        scope: crate::store::rollups::Scope::All,
    };
    let report = reports::build(
        state.usage_db().await?,
        &state.prices(),
        state.config().billing.zone(),
        request,
    )
    .await?;
    let (content_type, body) = reports::render(&report, q.format.as_deref().unwrap_or("json"))?;
    Ok(([(header::CONTENT_TYPE, content_type)], body).into_response())
}
