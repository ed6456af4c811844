//! What is sold and what runs: the prices in force and their history per model × chip
//! (everyone), the account's asynchronous tasks with their state and hold (everyone), and
//! the gateway's health (operators): replicas alive, the spool's backlog and age, the
//! Redis fallback, the ledger and what is pending.

use askama::Template;
use axum::extract::{Query, State};
use axum::response::Response;
use chrono::Utc;
use serde::Deserialize;

use super::{Zones, operators_only, render, visible_account};
use crate::billing::cost::{Unit, unit_price};
use crate::console::frame::{Frame, count, exact, money, time};
use crate::console::web::{Failure, Signed};
use crate::domain::tasks;
use crate::state::AppState;

#[derive(Template)]
#[template(path = "prices.html")]
struct PricesPage {
    frame: Frame,
    /// Model × chip, effective from, rates (unit, price / per), in force now.
    versions: Vec<(String, String, String, String, bool)>,
}

pub async fn prices(State(state): State<AppState>, signed: Signed) -> Result<Response, Failure> {
    let book = state.prices();
    let zone = state.config().billing.zone();
    let now = Utc::now();
    let units = [
        Unit::InputTokens,
        Unit::CachedInputTokens,
        Unit::CacheWriteTokens,
        Unit::OutputTokens,
        Unit::Requests,
        Unit::Images,
        Unit::Tasks,
        Unit::ComputeMs,
        Unit::Uploads,
    ];
    let versions = book
        .all()
        .into_iter()
        .map(|v| {
            let e = &v.entry;
            let rates = units
                .iter()
                .filter(|u| !unit_price(v, **u).is_zero())
                .map(|u| {
                    format!(
                        "{} {} / {}",
                        u.as_str(),
                        exact(unit_price(v, *u)),
                        count(i64::from(u.per()))
                    )
                })
                .collect::<Vec<_>>()
                .join(" · ");
            let in_force = book.is_in_force(v, now);
            (
                {
                    // Whom it prices beside the pair: a deployment, an account, a tier.
                    let mut pair = format!("{} × {}", e.model, e.chip);
                    let tier = Some(e.tier.label()).filter(|t| !t.is_empty());
                    for part in [&e.deployment, &e.account, &tier].into_iter().flatten() {
                        pair = format!("{pair} · {part}");
                    }
                    pair
                },
                format!("#{}", v.id),
                time(e.effective_from, zone),
                rates,
                in_force,
            )
        })
        .collect();
    render(&PricesPage {
        frame: Frame::signed(&signed, "nav.prices"),
        versions,
    })
}

#[derive(Template)]
#[template(path = "tasks.html")]
struct TasksPage {
    frame: Frame,
    state: String,
    tasks: Vec<[String; 8]>,
}

#[derive(Deserialize)]
pub struct TasksQuery {
    account: Option<i64>,
    #[serde(default)]
    state: String,
}

pub async fn tasks(
    State(state): State<AppState>,
    signed: Signed,
    Query(q): Query<TasksQuery>,
) -> Result<Response, Failure> {
    let account = visible_account(&state, &signed, q.account).await?;
    let zones = Zones::load(&state).await?;
    let wanted = (!q.state.is_empty()).then_some(q.state.as_str());
    let list = tasks::list(state.db(), account.map(|a| a.id), wanted, 100).await?;
    render(&TasksPage {
        frame: Frame::signed(&signed, "nav.tasks"),
        state: q.state.clone(),
        tasks: list
            .into_iter()
            .map(|task| {
                let zone = zones.of(task.account_id);
                [
                    task.request_id,
                    task.task_id,
                    format!("{} × {}", task.model, task.chip),
                    task.endpoint,
                    task.state,
                    time(task.submitted_at, zone),
                    task.ended_at.map_or("—".into(), |e| time(e, zone)),
                    money(task.held),
                ]
            })
            .collect(),
    })
}

#[derive(Template)]
#[template(path = "health.html")]
struct HealthPage {
    frame: Frame,
    facts: Vec<(&'static str, String, bool)>,
}

pub async fn health(State(state): State<AppState>, signed: Signed) -> Result<Response, Failure> {
    operators_only(&signed)?;
    let t = signed.prefs.t();
    let yes_no = |ok: bool| t.get(if ok { "yes" } else { "no" }).to_owned();
    let database = state.health().is_up();
    let ledger = state.ledger().is_running();
    let limits = state.limits();
    let spool_age = state.ledger().spool_age().as_secs_f64();
    let pending_holds = state.spending().pending().await.ok();
    let pending_tasks = crate::store::tasks::count_pending(state.db()).await.ok();
    let backend = match state.db() {
        crate::store::Db::Sqlite(_) => "SQLite",
        crate::store::Db::Postgres(_) => "PostgreSQL",
    };
    render(&HealthPage {
        frame: Frame::signed(&signed, "nav.health"),
        facts: vec![
            ("health.ledger", backend.to_owned(), true),
            ("health.database", yes_no(database), database),
            ("health.writer", yes_no(ledger), ledger),
            (
                "health.spooled",
                count(state.ledger().queue_depth() as i64),
                true,
            ),
            (
                "health.spool_age",
                format!("{spool_age:.1} s"),
                spool_age < 60.0,
            ),
            (
                "health.replicas",
                count(i64::from(limits.live_replicas())),
                true,
            ),
            (
                "health.redis_fallback",
                yes_no(limits.in_fallback()),
                !limits.in_fallback(),
            ),
            (
                "health.holds",
                pending_holds.map_or("—".into(), |n| count(n as i64)),
                true,
            ),
            (
                "health.tasks",
                pending_tasks.map_or("—".into(), count),
                true,
            ),
        ],
    })
}
