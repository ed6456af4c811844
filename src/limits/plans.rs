//! Quota plans (`[[limits.plans]]`): an account's requests and tokens over several rolling
//! windows at once (`windows`), counted for the whole account or for each of its keys. In
//! Redis for every replica with `limits.store = "redis"`; otherwise, and while Redis does
//! not answer (as `redis.fallback` says), in this process, each replica counting its share.
//! Wherever counts are missing (a new process, a Redis that lost them, a holder idle for a
//! whole window) they start from the ledger's hourly sums (`History`), so a restart does
//! not hand out a fresh month.

use foldhash::{HashMap, HashMapExt};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use parking_lot::Mutex;

use super::shared::Shared;
use super::windows::{self, Counts, Unit, Verdict, Window};
use crate::config::{PlanConfig, PlanHolder, RedisFallback};
use crate::error::Error;

/// Whose quotas are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Holder {
    Account(i64),
    /// A key's lineage (rotated keys share it), in its account.
    Key {
        account: i64,
        lineage: i64,
    },
}

impl Holder {
    fn tag(self) -> String {
        match self {
            Holder::Account(id) => format!("a{id}"),
            Holder::Key { lineage, .. } => format!("k{lineage}"),
        }
    }
}

/// The ledger's hourly sums for a holder since an instant (ms): `(hour start ms, requests,
/// prompt + completion tokens)`.
pub type History = Arc<
    dyn Fn(
            Holder,
            i64,
        ) -> Pin<Box<dyn Future<Output = anyhow::Result<Vec<(i64, u64, u64)>>> + Send>>
        + Send
        + Sync,
>;

/// A history with nothing in it: for a gateway without plans, and tests.
pub fn no_history() -> History {
    Arc::new(|_, _| Box::pin(async { Ok(Vec::new()) }))
}

pub struct Plan {
    pub name: String,
    pub per: PlanHolder,
    pub windows: Vec<Window>,
}

/// What a plan's count said, and where it was kept (the request's tokens are counted there
/// at its end).
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    pub plan: usize,
    pub holder: Holder,
    pub in_redis: bool,
}

pub struct Plans {
    plans: Vec<Plan>,
    by_account: HashMap<String, usize>,
    history: History,
    /// This process's counts: the store without Redis, the fallback with it.
    local: Mutex<HashMap<(usize, Holder), Vec<Counts>>>,
}

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

impl Plans {
    pub fn new(config: &[PlanConfig], history: History) -> Plans {
        let mut by_account = HashMap::new();
        let plans = config
            .iter()
            .enumerate()
            .map(|(i, plan)| {
                by_account.extend(plan.accounts.iter().map(|a| (a.clone(), i)));
                let windows = plan.quotas.iter().map(|q| Window {
                    unit: match q.tokens {
                        Some(_) => Unit::Tokens,
                        None => Unit::Requests,
                    },
                    limit: q.tokens.or(q.requests).unwrap_or(1),
                    span_us: q.window_secs().unwrap_or(60) as i64 * 1_000_000,
                });
                Plan {
                    name: plan.name.clone(),
                    per: plan.per,
                    windows: windows.collect(),
                }
            })
            .collect();
        Plans {
            plans,
            by_account,
            history,
            local: Mutex::default(),
        }
    }

    /// The plan of account `name` (its index), if it is on one.
    pub fn of(&self, account: &str) -> Option<usize> {
        self.by_account.get(account).copied()
    }

    pub fn plan(&self, index: usize) -> &Plan {
        &self.plans[index]
    }

    /// Counts one request of `holder` in plan `index`'s windows (or only looks): in Redis
    /// if it is configured and answers, else in this process at this replica's `share`.
    pub async fn count(
        &self,
        shared: Option<&Shared>,
        share: u32,
        index: usize,
        holder: Holder,
        look: bool,
    ) -> Result<(bool, Vec<Verdict>, Ticket), Error> {
        let plan = &self.plans[index];
        let ticket = |in_redis| Ticket {
            plan: index,
            holder,
            in_redis,
        };
        if let Some(shared) = shared {
            let keys = shared.quota_keys(&holder.tag(), &plan.name, &plan.windows);
            let mut counted = shared.quotas(&keys, &plan.windows, None, look).await;
            if let Some(None) = counted {
                let seeds = self.seeds(plan, holder, 1).await?;
                counted = shared
                    .quotas(&keys, &plan.windows, Some(&seeds), look)
                    .await;
            }
            if let Some(Some((admitted, verdicts))) = counted {
                return Ok((admitted, verdicts, ticket(true)));
            }
            match (shared.fallback(), look) {
                (RedisFallback::Closed, false) => {
                    return Err(Error::Unavailable(
                        "quotas cannot be checked now; retry shortly".into(),
                    ));
                }
                (RedisFallback::Open, false) => {
                    let (_, verdicts) = self.count_here(index, holder, share, true).await?;
                    return Ok((true, verdicts, ticket(false)));
                }
                _ => {}
            }
        }
        let (admitted, verdicts) = self.count_here(index, holder, share, look).await?;
        Ok((admitted, verdicts, ticket(false)))
    }

    /// Counts in this process against `share`'s part of every limit; a holder's counts
    /// start from the ledger (its part of them too).
    async fn count_here(
        &self,
        index: usize,
        holder: Holder,
        share: u32,
        look: bool,
    ) -> Result<(bool, Vec<Verdict>), Error> {
        let plan = &self.plans[index];
        let key = (index, holder);
        if !self.local.lock().contains_key(&key) {
            let seeds = self.seeds(plan, holder, share).await?;
            self.local.lock().entry(key).or_insert(seeds);
        }
        let windows: Vec<Window> = plan
            .windows
            .iter()
            .map(|w| Window {
                limit: (w.limit / u64::from(share.max(1))).max(1),
                ..*w
            })
            .collect();
        let mut local = self.local.lock();
        let counts = local
            .entry(key)
            .or_insert_with(|| vec![Counts::default(); windows.len()]);
        Ok(windows::admit(counts, &windows, now_us(), look))
    }

    /// Plan `plan`'s counts for `holder` from the ledger's hourly sums, each count divided
    /// by `share` (rounded up).
    async fn seeds(&self, plan: &Plan, holder: Holder, share: u32) -> Result<Vec<Counts>, Error> {
        let now = now_us();
        let longest = plan.windows.iter().map(|w| w.span_us).max().unwrap_or(0);
        let since_ms = (now - longest) / 1000 - 3_600_000;
        let hours = (self.history)(holder, since_ms).await.map_err(|e| {
            tracing::warn!(error = %e, "a plan's counts cannot be read from the ledger");
            Error::Unavailable("quotas cannot be checked now; retry shortly".into())
        })?;
        let share = u64::from(share.max(1));
        let hours: Vec<(i64, u64, u64)> = hours
            .into_iter()
            .map(|(ms, r, t)| (ms * 1000, r.div_ceil(share), t.div_ceil(share)))
            .collect();
        Ok(plan
            .windows
            .iter()
            .map(|w| windows::seed(w, &hours, now))
            .collect())
    }

    /// Counts `tokens` a request used in its plan's token windows, where its request was
    /// counted (in Redis in the background: the response does not wait).
    pub fn spend(&self, shared: Option<&Shared>, ticket: Ticket, tokens: u64) {
        let plan = &self.plans[ticket.plan];
        if tokens == 0 || plan.windows.iter().all(|w| w.unit != Unit::Tokens) {
            return;
        }
        match shared {
            Some(shared) if ticket.in_redis => {
                let keys = shared.quota_keys(&ticket.holder.tag(), &plan.name, &plan.windows);
                let (keys, windows): (Vec<String>, Vec<Window>) = keys
                    .into_iter()
                    .zip(&plan.windows)
                    .filter(|(_, w)| w.unit == Unit::Tokens)
                    .map(|(k, w)| (k, *w))
                    .unzip();
                shared.spend(keys, windows, tokens);
            }
            _ => {
                let mut local = self.local.lock();
                if let Some(counts) = local.get_mut(&(ticket.plan, ticket.holder)) {
                    windows::spend(counts, &plan.windows, now_us(), tokens);
                }
            }
        }
    }

    /// Forgets holders whose windows count nothing any more (they start from the ledger
    /// again, which holds nothing of theirs in any window).
    pub fn sweep(&self) {
        let now = now_us();
        self.local.lock().retain(|(index, _), counts| {
            let plan = &self.plans[*index];
            counts.iter_mut().zip(&plan.windows).any(|(c, w)| {
                c.forget(w, now);
                c.used() > 0
            })
        });
    }
}
