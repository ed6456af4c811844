//! Spending holds are kept twice: in the gateway's memory beside SQLite
//! (`limits::spending::local`), and in PostgreSQL's own tables by its triggers
//! (`migrations/postgres/0002_spending_holds.sql` and after). The same random sequence of
//! requests (answered, streamed, capped at their hold, failed), top-ups (some repeated)
//! and billing changes (prepaid, postpaid with a credit limit, no limit), sent to a gateway
//! on each ledger, gets the same answers and leaves the same balance, charges, held amount
//! and records after every step; and each ledger keeps the money invariant throughout.

use crate::helpers;

use helpers::{TestApp, chat, dec, request_id};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tollgate::config::DatabaseConfig;

use crate::spending::{set_billing, top_up};

const ROUTE: &str = "/maas/megrez-7b-instruct/nvidia/chat/completions";

/// One step of the sequence, as both gateways are sent it.
#[derive(Debug, Clone)]
enum Step {
    Request {
        stream: bool,
        prompt: u64,
        completion: u64,
        max_tokens: Option<u64>,
        fault: Option<&'static str>,
    },
    TopUp {
        key: String,
        amount: &'static str,
    },
    Billing(Value),
}

fn random_step(rng: &mut SmallRng, n: usize) -> Step {
    match rng.random_range(0..10) {
        0 => Step::TopUp {
            // Now and then a key used before: credited once.
            key: format!("k{}", rng.random_range(0..n.max(1) * 2)),
            amount: ["0.001", "0.01", "0.05"][rng.random_range(0..3)],
        },
        1 => Step::Billing(match rng.random_range(0..3) {
            0 => json!({"billing_mode": "prepaid"}),
            1 => json!({"billing_mode": "postpaid", "credit_limit": "0.02"}),
            _ => json!({"billing_mode": "postpaid", "credit_limit": null}),
        }),
        _ => Step::Request {
            stream: rng.random_bool(0.5),
            prompt: rng.random_range(1..3000),
            completion: rng.random_range(1..3000),
            max_tokens: rng.random_bool(0.7).then(|| rng.random_range(1..3000)),
            fault: match rng.random_range(0..8) {
                0 => Some("http_500"),
                1 => Some("cut"),
                _ => None,
            },
        },
    }
}

/// Sends `step` to `app`; what the client saw (status, and the request id if any).
async fn send(app: &TestApp, step: &Step) -> (u16, Option<String>) {
    match step {
        Step::Request {
            stream,
            prompt,
            completion,
            max_tokens,
            fault,
        } => {
            let mut knobs = json!({"prompt_tokens": prompt, "completion_tokens": completion});
            if let Some(fault) = fault {
                knobs["fault"] = json!(fault);
            }
            let mut body = chat(None, "hi", *stream, knobs);
            if let Some(max) = max_tokens {
                body["max_tokens"] = json!(max);
            }
            let response = app.post(ROUTE, &body).await;
            let status = response.status().as_u16();
            let id = response
                .headers()
                .contains_key("x-request-id")
                .then(|| request_id(&response));
            // Read to the end: a stream's record is committed before its last bytes.
            let _ = response.bytes().await;
            (status, id)
        }
        Step::TopUp { key, amount } => {
            let (status, _) = top_up(app, key, json!(amount)).await;
            (status, None)
        }
        Step::Billing(patch) => {
            set_billing(app, patch.clone()).await;
            (200, None)
        }
    }
}

async fn app_on(database: DatabaseConfig) -> TestApp {
    TestApp::spawn_with(|c| c.database = database).await
}

#[tokio::test]
async fn the_same_sequence_moves_the_same_money_on_both_ledgers() {
    // The suite's PostgreSQL pass would run the same pair again.
    if helpers::ledger::is_postgres() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = tokio::task::spawn_blocking(helpers::postgres::Postgres::start)
        .await
        .unwrap();
    let sqlite = app_on(DatabaseConfig {
        url: format!("sqlite://{}", dir.path().join("ledger.db").display()),
        spool: dir.path().join("sqlite-spool"),
        ..DatabaseConfig::default()
    })
    .await;
    let postgres = app_on(DatabaseConfig {
        url: server.create_database("holds_parity"),
        spool: dir.path().join("pg-spool"),
        ..DatabaseConfig::default()
    })
    .await;
    let apps = [&sqlite, &postgres];
    for app in apps {
        set_billing(app, json!({"billing_mode": "prepaid"})).await;
        assert_eq!(top_up(app, "seed", json!("0.03")).await.0, 201);
    }
    let mut rng = SmallRng::seed_from_u64(26);
    let mut refused = 0;
    let mut charged = 0;
    for n in 0..80 {
        let step = random_step(&mut rng, n);
        let mut seen = Vec::new();
        for app in apps {
            let (status, id) = send(app, &step).await;
            app.wait_until_shipped(std::time::Duration::from_secs(30))
                .await;
            let figures = helpers::money::assert_invariant(app, 1).await;
            let cost = match &id {
                Some(id) => app.records_with(id).await.first().map(|r| {
                    (
                        r.cost,
                        r.prompt_tokens,
                        r.completion_tokens,
                        r.status.clone(),
                    )
                }),
                None => None,
            };
            seen.push((status, cost, figures.balance, figures.charged, figures.held));
        }
        assert_eq!(seen[0], seen[1], "step {n}: {step:?}");
        assert_eq!(
            seen[0].4,
            dec("0"),
            "step {n}: nothing held between requests"
        );
        refused += usize::from(seen[0].0 == 402);
        charged += usize::from(seen[0].1.as_ref().is_some_and(|c| !c.0.is_zero()));
    }
    // The sequence went both ways: requests were charged, and some were refused.
    assert!(
        charged > 10 && refused > 0,
        "{charged} charged, {refused} refused"
    );
    for app in [sqlite, postgres] {
        app.stop().await;
    }
}
