//! Prices and invoices from the command line, against a running gateway.

use crate::helpers;

use std::time::Duration;

use helpers::binary::{cli, serve, write_config};
use helpers::{chat, client};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_synced_price_reaches_the_running_gateway_and_invoices_come_from_the_cli() {
    let (sim, _) = tollgate::sim::spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), sim);
    cli(&config, &["accounts", "create", "acme"]);
    let key = cli(&config, &["keys", "create", "--account", "acme"]);
    let mut gateway = serve(&config, "tollgate=info");
    let http = client();
    let url = format!(
        "http://{}/maas/megrez-7b-instruct/chip3/chat/completions",
        gateway.addr
    );
    let body = chat(
        None,
        "hi",
        false,
        json!({"prompt_tokens": 1000, "completion_tokens": 0}),
    );
    let cost_of_one = || async {
        let response = http
            .post(&url)
            .bearer_auth(&key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let usage: Value = http
            .get(url.replace(
                "/maas/megrez-7b-instruct/chip3/chat/completions",
                "/v1/usage",
            ))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        usage["period"]["cost"]
            .as_str()
            .unwrap()
            .parse::<rust_decimal::Decimal>()
            .unwrap()
    };
    let before = cost_of_one().await;
    assert_eq!(
        before,
        "0.0006".parse().unwrap(),
        "1000 tokens at the sample 0.0006/1k"
    );

    let listed: Vec<Value> =
        serde_json::from_str(&cli(&config, &["prices", "list", "--json"])).unwrap();
    let initial = listed.len();
    let new_price = r#"
[[prices]]
model = "megrez-7b-instruct"
chip = "chip3"
effective_from = 2026-02-01T00:00:00Z
input_per_1k = "0.0100"
output_per_1k = "0.0200"
"#;
    std::fs::write(dir.path().join("pricing/zz-change.toml"), new_price).unwrap();
    assert_eq!(
        cli(&config, &["prices", "sync"]),
        "1 new price version(s) recorded"
    );
    assert_eq!(
        cli(&config, &["prices", "sync"]),
        "0 new price version(s) recorded",
        "syncing is idempotent"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = cost_of_one().await;
    assert_eq!(
        after - before,
        "0.01".parse().unwrap(),
        "the new version priced the second request"
    );

    let listed: Vec<Value> =
        serde_json::from_str(&cli(&config, &["prices", "list", "--json"])).unwrap();
    assert_eq!(listed.len(), initial + 1);
    let in_force: Vec<&Value> = listed
        .iter()
        .filter(|p| p["chip"] == "chip3" && p["in_force"] == true)
        .collect();
    assert_eq!(in_force.len(), 1);
    assert_eq!(in_force[0]["input_per_1k"], "0.0100");
    // Every rate a price may name is listed: a workflow's price per upload too.
    assert!(
        listed
            .iter()
            .any(|p| p["model"] == "wf-demo-txt2img" && p["per_upload"] == "0.001"),
        "{listed:?}"
    );
    let table = cli(&config, &["prices", "list"]);
    let header = table.lines().next().unwrap();
    assert!(
        header.starts_with("id\tmodel\tchip\tdeployment\taccount\tprompt_tokens_over")
            && header.ends_with("per_second\tper_upload\tper_hour\tin_force"),
        "{header}"
    );

    let period = chrono::Utc::now().format("%Y-%m").to_string();
    let csv = cli(
        &config,
        &[
            "invoices",
            "show",
            "--account",
            "acme",
            "--period",
            &period,
            "--format",
            "csv",
        ],
    );
    let last_two: Vec<&str> = csv.lines().rev().take(2).collect();
    assert!(
        last_two[1].contains(",TOTAL,") && last_two[0].contains(",AMOUNT_DUE,"),
        "{csv}"
    );
    let json: Value = serde_json::from_str(&cli(
        &config,
        &["invoices", "show", "--account", "acme", "--period", &period],
    ))
    .unwrap();
    assert_eq!(json["total_exact"], after.to_string());
    gateway.child.kill().unwrap();
    gateway.child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cli_top_up_opens_a_prepaid_account_on_the_running_gateway() {
    let (sim, _) = tollgate::sim::spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), sim);
    cli(&config, &["accounts", "create", "acme", "--prepaid"]);
    let key = cli(&config, &["keys", "create", "--account", "acme"]);
    let mut gateway = serve(&config, "tollgate=info");
    let http = client();
    let url = format!(
        "http://{}/maas/megrez-7b-instruct/chip3/chat/completions",
        gateway.addr
    );
    let call = || async {
        http.post(&url)
            .bearer_auth(&key)
            .json(&chat(None, "hi", false, json!({})))
            .send()
            .await
            .unwrap()
    };
    let refused = call().await;
    assert_eq!(refused.status(), 402, "a prepaid account starts empty");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["type"], "insufficient_quota");

    let args = [
        "accounts",
        "topup",
        "acme",
        "--amount",
        "1.00",
        "--idempotency-key",
        "pay-1",
    ];
    assert_eq!(cli(&config, &args), "1.00 CNY credited to 'acme'");
    assert!(cli(&config, &args).contains("already credited"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(call().await.status(), 200, "the gateway saw the top-up");
    gateway.child.kill().unwrap();
    gateway.child.wait().unwrap();
}
