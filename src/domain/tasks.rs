//! Asynchronous tasks (image and chat tasks a backend runs after the request): newest
//! first, of one account or of all.

use crate::error::Error;
use crate::store::tasks::Task;
use crate::store::{self, Db};

/// `state` is `pending`, `succeeded`, `failed` or `expired` (all when `None`).
pub async fn list(
    db: &Db,
    account_id: Option<i64>,
    state: Option<&str>,
    limit: i64,
) -> Result<Vec<Task>, Error> {
    if let Some(s) = state
        && !["pending", "succeeded", "failed", "expired"].contains(&s)
    {
        return Err(Error::invalid(
            "state must be pending, succeeded, failed or expired",
            "state",
        ));
    }
    Ok(match account_id {
        Some(id) => store::tasks::of_account(db, id, state, limit).await?,
        None => store::tasks::list(db, state, limit).await?,
    })
}
