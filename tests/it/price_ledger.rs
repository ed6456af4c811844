//! Price versions are append-only: records keep the version they were priced with, and a
//! recorded version can be neither edited nor (once used) deleted.

use crate::helpers;

use helpers::{TestApp, chat, dec};
use serde_json::json;
use tollgate::Application;

const ROUTE: &str = "/maas/megrez-7b-instruct/chip3/chat/completions";

fn entry(model: &str, effective_from: &str, input: &str) -> String {
    format!(
        "[[prices]]\nmodel = \"{model}\"\nchip = \"*\"\neffective_from = {effective_from}\ninput_per_1k = \"{input}\"\n"
    )
}

/// Every model of the test configuration priced, megrez at `input` from January.
fn table(input: &str) -> String {
    let demo = tollgate::cli::demo_config(
        "127.0.0.1:1".parse().unwrap(),
        "127.0.0.1:0",
        std::path::Path::new("unused.db"),
    )
    .unwrap();
    let mut models: Vec<String> = demo.upstreams.iter().map(|u| u.model.clone()).collect();
    models.sort();
    models.dedup();
    let mut text = String::new();
    for model in models {
        let price = if model == "megrez-7b-instruct" {
            input
        } else {
            "1"
        };
        text += &entry(&model, "2026-01-01T00:00:00Z", price);
    }
    text
}

#[tokio::test]
async fn a_new_price_version_prices_new_requests_and_old_records_keep_theirs() {
    let prices = tempfile::tempdir().unwrap();
    std::fs::write(prices.path().join("a.toml"), table("1")).unwrap();
    let dir = prices.path().to_path_buf();
    let database = helpers::ledger::fresh(prices.path(), Default::default());
    let app = TestApp::spawn_with(|c| {
        c.pricing.dir = dir.clone();
        c.database = database.clone();
        // The demo's deployment has no price in this table: billed at its pair's.
        for up in c.upstreams.iter_mut().filter(|u| u.deployment.is_some()) {
            up.pair_price = true;
        }
    })
    .await;
    let knobs = json!({"prompt_tokens": 1000, "completion_tokens": 0});
    let first = app
        .post(ROUTE, &chat(None, "hi", false, knobs.clone()))
        .await;
    let first = app.record_of(&first).await;
    assert_eq!(first.cost, dec("1"));

    // Same effective_from, other price: refused at start-up.
    std::fs::write(prices.path().join("a.toml"), table("2")).unwrap();
    let mut config = app.state.config().clone();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    let error = Application::build(config.clone())
        .await
        .err()
        .expect("an edited version is refused");
    assert!(format!("{error:#}").contains("immutable"), "{error:#}");

    // In the database too: no update, and no delete of a used version.
    let version = [first.price_version_id];
    let sql = "UPDATE price_versions SET input_per_1k = '0' WHERE id = $1";
    let update = helpers::ledger::execute(app.state.db(), sql, &version).await;
    assert!(update.unwrap_err().to_string().contains("immutable"));
    let sql = "DELETE FROM price_versions WHERE id = $1";
    let delete = helpers::ledger::execute(app.state.db(), sql, &version).await;
    assert!(delete.is_err(), "a used price version cannot be deleted");

    // A later version is appended; requests after it use it, the old record is unchanged.
    std::fs::write(prices.path().join("a.toml"), table("1")).unwrap();
    std::fs::write(
        prices.path().join("b.toml"),
        entry("megrez-7b-instruct", "2026-06-01T00:00:00Z", "2"),
    )
    .unwrap();
    app.stop().await;
    let app = TestApp::spawn_with(|c| {
        c.pricing.dir = dir.clone();
        c.database = database.clone();
        for up in c.upstreams.iter_mut().filter(|u| u.deployment.is_some()) {
            up.pair_price = true;
        }
    })
    .await;
    let second = app.post(ROUTE, &chat(None, "hi", false, knobs)).await;
    let second = app.record_of(&second).await;
    assert_eq!(second.cost, dec("2"));
    assert_ne!(second.price_version_id, first.price_version_id);
    assert_eq!(app.record(&first.request_id).await, first);
}
