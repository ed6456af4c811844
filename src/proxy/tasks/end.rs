//! How a task ends, once: whoever sees it end (a poll, the expiry, another poll racing
//! them) goes through `end_once`, which checks under the task's lock that it is still
//! pending, writes its one record (priced at the price in force at its submission, its
//! hold released, at most the hold billed) and then marks it ended.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use tokio::sync::Mutex;

use super::task_call;
use crate::auth::Caller;
use crate::billing::record::Status;
use crate::billing::{TokenCounts, Units};
use crate::dialect::TaskState;
use crate::dialect::json::Object;
use crate::dialect::observe::Observed;
use crate::limits::Admission;
use crate::limits::spending::Hold;
use crate::proxy::request::ClientRequest;
use crate::proxy::settle::{Exchange, Outcome, Served, commit};
use crate::server::ApiError;
use crate::state::AppState;
use crate::store::{self, tasks::Task};
use crate::upstream::Upstream;

/// The hold a task keeps until it ends. Its tokens do not cap the task's record: a task's
/// usage is known only at its end, and is billed as reported.
pub(super) fn hold_of(task: &Task) -> Option<Hold> {
    (!task.held.is_zero()).then_some(Hold {
        account_id: task.account_id,
        amount: task.held,
        tokens: TokenCounts {
            prompt: u64::MAX,
            completion: u64::MAX,
            ..TokenCounts::default()
        },
    })
}

/// Polls of one task wait for each other here (a stripe of locks: no map to clean).
static STRIPES: [Mutex<()>; 64] = [const { Mutex::const_new(()) }; 64];

pub(super) fn stripe(request_id: &str) -> &'static Mutex<()> {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    request_id.hash(&mut hasher);
    &STRIPES[(hasher.finish() % STRIPES.len() as u64) as usize]
}

/// Writes the record of a task that ended, unless it is written already, then marks the
/// task ended; returns the task as it stands after. A success is billed for its usage and
/// one task; a failure costs nothing.
pub(super) async fn end_task(
    state: &AppState,
    upstream: &Arc<Upstream>,
    task: &Task,
    result: &Map<String, Value>,
    end: TaskState,
) -> Result<Task, ApiError> {
    let mut observed = Observed::default();
    let wire = upstream.wire();
    let (_, call) = task_call(task)?;
    let (status, error, word) = match end {
        TaskState::Succeeded => {
            let chunk = Object::of(result);
            wire.observe(&mut observed, &chunk);
            wire.deliver(&mut observed, &chunk);
            observed.units = Units {
                tasks: 1,
                ..wire.units(call.endpoint, result)
            };
            (Status::Ok, None, "succeeded")
        }
        _ => (
            Status::UpstreamError,
            Some("the task failed".to_string()),
            "failed",
        ),
    };
    let outcome = Outcome {
        status,
        http_status: 200,
        error,
        observed,
        ttft: None,
    };
    Ok(end_once(state, upstream, task, outcome, word).await?.0)
}

/// Ends `task` with `outcome` (its one record, then its row marked `word`), unless it has
/// ended already; returns the task as it stands after, and whether this call ended it.
/// Whoever ends a task (a poll, the
/// expiry, another poll racing them) does it here, one at a time, checking again under
/// the lock that it is still pending: its hold is released and its record written once.
pub(super) async fn end_once(
    state: &AppState,
    upstream: &Arc<Upstream>,
    task: &Task,
    outcome: Outcome,
    word: &str,
) -> Result<(Task, bool), ApiError> {
    let _one_at_a_time = stripe(&task.request_id).lock().await;
    let now = store::tasks::by_request_id(state.db(), &task.request_id)
        .await?
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("task {} vanished", task.request_id)))?;
    if now.state != "pending" {
        return Ok((now, false)); // another poll, or the expiry, ended it meanwhile
    }
    settle(state, upstream, task, outcome).await?;
    let ended_at = Utc::now();
    let ended = store::tasks::end(state.db(), &task.request_id, word, ended_at).await?;
    let task = Task {
        state: word.to_owned(),
        ended_at: Some(ended_at),
        ..now
    };
    Ok((task, ended))
}

/// Commits a task's one record: priced at the price in force when it was submitted, its
/// latency the task's whole life.
async fn settle(
    state: &AppState,
    upstream: &Arc<Upstream>,
    task: &Task,
    outcome: Outcome,
) -> Result<(), ApiError> {
    // The key that submitted it, revoked or rotated or not: its account pays.
    let key = store::keys::get(state.db(), task.key_id)
        .await?
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("key {} vanished", task.key_id)))?;
    let caller = Caller {
        key_id: key.id,
        account_id: key.account_id,
        key: Arc::new(key),
    };
    let buyer = upstream.buyer(&caller.key.account);
    let price = state
        .prices()
        .for_buyer(&task.model, &task.chip, buyer, task.submitted_at)
        .ok_or_else(|| ApiError::Unavailable("the task's price is not in the ledger".into()))?;
    let (_, call) = task_call(task)?;
    let ex = Exchange {
        request_id: task.request_id.clone(),
        route: call.records,
        caller,
        request: ClientRequest::parse(upstream.wire(), call, Bytes::from_static(b"{}"))?,
        candidates: vec![upstream.clone()],
        started: since(task.submitted_at),
        started_at: task.submitted_at,
        admission: Admission::nothing(),
        hold: hold_of(task),
        prompt_estimate: Some(task.prompt_estimate),
    };
    let served = Served::new(upstream.clone(), price);
    commit(state, &ex, &served, outcome).await.map_err(|_| {
        ApiError::Unavailable("the task's usage could not be recorded; poll it again".into())
    })
}

/// The `Instant` of a past wall-clock time, as near as this process can tell.
fn since(at: DateTime<Utc>) -> Instant {
    let ago = (Utc::now() - at).to_std().unwrap_or(Duration::ZERO);
    Instant::now().checked_sub(ago).unwrap_or_else(Instant::now)
}
