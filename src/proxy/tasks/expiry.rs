//! Tasks nobody polled to their end: before one expires tollgate polls it once itself and
//! bills a success (or records a failure); otherwise it expires with a `timeout` record at
//! no cost, and its result is never handed out.

use std::time::Duration;

use chrono::Utc;
use serde_json::Map;

use super::end::{end_once, end_task};
use super::{ask_once, upstream_of};
use crate::billing::record::Status;
use crate::dialect::TaskState;
use crate::dialect::observe::Observed;
use crate::proxy::settle::Outcome;
use crate::server::ApiError;
use crate::state::AppState;
use crate::store;

/// Ends tasks pending for longer than `limits.task_expiry_secs`. Each is polled once
/// first, so that a task the backend ran is billed though nobody polled it; one that has
/// not ended (or whose poll fails) expires with a `timeout` record at no cost, its result
/// never handed out. Run by the maintenance loop.
pub async fn expire(state: &AppState) -> Result<usize, ApiError> {
    let expiry = Duration::from_secs(state.config().limits.task_expiry_secs);
    let before = Utc::now() - chrono::Duration::from_std(expiry).unwrap_or_default();
    let mut expired = 0;
    for task in store::tasks::pending_before(state.db(), before, 500).await? {
        let Ok(upstream) = upstream_of(state, &task) else {
            continue; // no longer configured: kept pending, for an operator to see
        };
        let last_poll = ask_once(state, &upstream, &task, &Map::new()).await;
        if let Ok((_, answer)) = &last_poll
            && let Some(end @ (TaskState::Succeeded | TaskState::Failed)) =
                upstream.wire().task_state(answer)
        {
            end_task(state, &upstream, &task, answer, end).await?;
            continue;
        }
        let outcome = Outcome {
            status: Status::Timeout,
            http_status: 504,
            error: Some(format!(
                "the task was not polled to its end within {} s",
                expiry.as_secs()
            )),
            observed: Observed::default(),
            ttft: None,
        };
        if end_once(state, &upstream, &task, outcome, "expired")
            .await?
            .1
        {
            expired += 1;
            state.metrics().tasks_expired.inc();
        }
    }
    Ok(expired)
}

/// Expires tasks once a minute for as long as the app lives.
pub fn spawn_expiry(state: &AppState) {
    let app = std::sync::Arc::downgrade(&state.0);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            let Some(app) = app.upgrade() else { break };
            match expire(&AppState(app)).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(expired = n, "tasks not polled to their end expired"),
                Err(e) => tracing::warn!(error = %e, "cannot expire tasks now"),
            }
        }
    });
}
