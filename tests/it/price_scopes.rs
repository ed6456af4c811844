//! Prices narrower than a model × chip, on the ledger under test: a private deployment is
//! reached only by its owners' keys and billed at its own price; a tiered price bills a
//! request in the tier of its billed prompt, and its hold covers the dearest tier the
//! prompt may reach; an account's own price applies to it alone, from its effective time.

use serde_json::{Value, json};
use tollgate::store;

use crate::helpers::{self, TestApp, chat, dec};
use crate::spending::{set_billing, top_up};

const DEPLOYMENT: &str = "/maas/deployment/mif-demo0001/chat/completions";

/// The sample price table the tests' configuration reads.
fn sample_prices() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/pricing/sample/sample.toml"
    ))
    .unwrap()
}

#[tokio::test]
async fn a_deployment_bills_its_owner_at_its_own_price_and_is_unknown_to_others() {
    let app = TestApp::spawn().await;
    let knobs = json!({"prompt_tokens": 1000, "completion_tokens": 333});
    let response = app
        .post(DEPLOYMENT, &chat(None, "hi", false, knobs.clone()))
        .await;
    assert_eq!(response.status(), 200);
    let record = app.record_of(&response).await;
    // Its own price (pricing/sample): 0.0009 in, 0.0018 out per 1,000; not the 0.0012 /
    // 0.0024 of megrez on nvidia.
    assert_eq!(record.deployment.as_deref(), Some("mif-demo0001"));
    assert_eq!(record.cost, dec("0.0009") + dec("0.0005994"));
    let version = app
        .state
        .prices()
        .version(record.price_version_id)
        .cloned()
        .unwrap();
    assert_eq!(version.entry.deployment.as_deref(), Some("mif-demo0001"));

    // Another account's key: as unknown as a deployment that does not exist.
    store::accounts::create(app.state.db(), "other")
        .await
        .unwrap();
    let other = helpers::issue_key(&app.state, "other", None).await.secret;
    let (status, body) = app
        .post_as(DEPLOYMENT, &other, &chat(None, "hi", false, knobs))
        .await;
    assert_eq!(status, 404, "{body}");
    let (_, unknown) = app
        .post_as(
            "/maas/deployment/mif-nope0001/chat/completions",
            &other,
            &chat(None, "hi", false, json!({})),
        )
        .await;
    let message = |body: &Value| {
        body["error"]["message"]
            .as_str()
            .unwrap()
            .replace("mif-nope0001", "ID")
            .replace("mif-demo0001", "ID")
    };
    assert_eq!(
        message(&body),
        message(&unknown),
        "nothing tells them apart"
    );

    // /v1/models lists it for its owners only.
    let listed = |key: String| {
        let app = &app;
        async move {
            let models: Value = (app.client.get(app.url("/v1/models")).bearer_auth(key))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            (models["data"].as_array().unwrap().iter())
                .any(|m| m["id"] == "mif-demo0001" && m["model"] == "megrez-7b-instruct")
        }
    };
    assert!(listed(app.key.clone()).await);
    assert!(!listed(other).await);

    // A dimension of the usage listing, reports and invoices.
    let admin = app.admin_token(tollgate::admin::Role::Admin);
    let usage = app
        .get_json(
            "/admin/v1/usage?account=acme&deployment=mif-demo0001",
            &admin,
        )
        .await;
    assert_eq!(usage["data"].as_array().unwrap().len(), 1);
    let shared = app
        .post(
            "/maas/megrez-7b-instruct/nvidia/chat/completions",
            &chat(
                None,
                "hi",
                false,
                json!({"prompt_tokens": 1000, "completion_tokens": 0}),
            ),
        )
        .await;
    assert_eq!(shared.status(), 200);
    let report = app
        .get_json("/admin/v1/reports/cost?group_by=deployment", &admin)
        .await;
    let rows = report["rows"].as_array().unwrap();
    let cost_of = |group: &str| {
        rows.iter()
            .find(|r| r["group"][0] == group)
            .map(|r| dec(r["cost_exact"].as_str().unwrap()))
    };
    assert_eq!(cost_of("mif-demo0001"), Some(record.cost));
    assert_eq!(cost_of("-"), Some(dec("0.0012")));
    let month = chrono::Utc::now()
        .with_timezone(&chrono_tz::Asia::Shanghai)
        .format("%Y-%m");
    let invoice = app
        .get_json(
            &format!("/admin/v1/invoices?account=acme&period={month}"),
            &admin,
        )
        .await;
    let lines = invoice["lines"].as_array().unwrap();
    assert!(
        (lines.iter()).any(|l| l["deployment"] == "mif-demo0001" && l["unit"] == "output_tokens"),
        "{invoice}"
    );
    assert_eq!(
        dec(invoice["total_exact"].as_str().unwrap()),
        record.cost + dec("0.0012")
    );
}

#[tokio::test]
async fn a_deployment_without_its_own_price_is_not_served_unless_the_operator_says_so() {
    let prices = tempfile::tempdir().unwrap();
    let sample = sample_prices();
    // The sample without the deployment's own entries.
    let without: Vec<&str> = (sample.split("\n\n"))
        .filter(|entry| !entry.contains("deployment = \"mif-demo0001\""))
        .collect();
    let without = without.join("\n\n");
    std::fs::write(prices.path().join("p.toml"), without).unwrap();
    let dir = prices.path().to_path_buf();
    let config_dir = tempfile::tempdir().unwrap();
    let mut config = helpers::test_config("127.0.0.1:9".parse().unwrap(), &config_dir);
    config.pricing.dir = dir.clone();
    let refused = tollgate::Application::build(config).await.err().unwrap();
    assert!(
        format!("{refused:#}").contains("deployment mif-demo0001 has no price"),
        "{refused:#}"
    );
    let app = TestApp::spawn_with(|c| {
        c.pricing.dir = dir;
        for up in c.upstreams.iter_mut().filter(|u| u.deployment.is_some()) {
            up.pair_price = true;
        }
    })
    .await;
    let knobs = json!({"prompt_tokens": 1000, "completion_tokens": 0});
    let response = app.post(DEPLOYMENT, &chat(None, "hi", false, knobs)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        app.record_of(&response).await.cost,
        dec("0.0012"),
        "its pair's price"
    );
}

/// qwen-plus from June 2026 (pricing/sample), as DashScope sells it: 0.0008 / 0.002 CNY
/// per 1,000 input / output tokens up to 128k input tokens, 0.0024 / 0.02 up to 256k,
/// 0.0048 / 0.048 up to 1M.
#[tokio::test]
async fn a_prompt_is_billed_in_its_tier_to_the_last_digit() {
    let app = TestApp::spawn().await;
    let cost = |prompt: u64| {
        let app = &app;
        async move {
            let knobs = json!({"prompt_tokens": prompt, "completion_tokens": 333});
            let body = chat(Some("qwen-plus"), "hi", false, knobs);
            let response = app.post("/v1/chat/completions", &body).await;
            assert_eq!(response.status(), 200);
            let record = app.record_of(&response).await;
            let version = app.state.prices().version(record.price_version_id).cloned();
            (record.cost, version.unwrap().entry.tier.label())
        }
    };
    assert_eq!(
        cost(128_000).await,
        (dec("0.1024") + dec("0.000666"), "≤128k".into())
    );
    // 200,001 × 0.0024 / 1,000 + 333 × 0.02 / 1,000
    assert_eq!(
        cost(200_001).await,
        (dec("0.4800024") + dec("0.00666"), "128k–256k".into())
    );
    assert_eq!(
        cost(300_000).await,
        (dec("1.44") + dec("0.015984"), "256k–1000k".into())
    );
}

#[tokio::test]
async fn a_hold_covers_the_dearest_tier_the_prompt_may_reach() {
    let app = TestApp::spawn().await;
    set_billing(&app, json!({"billing_mode": "prepaid"})).await;
    assert_eq!(top_up(&app, "t-1", json!("1")).await.0, 201);
    let ask = |text: String| {
        let mut body = chat(Some("qwen-plus"), &text, false, json!({}));
        body["max_tokens"] = json!(100);
        body
    };
    // A short prompt reaches the first tier only: held and served.
    let response = app.post("/v1/chat/completions", &ask("hi".into())).await;
    assert_eq!(response.status(), 200);
    // A 300 KB prompt may be billed at the 256k–1M tier: 300,000 × 0.0048 / 1,000 is more
    // than the balance, though its first tier would cost 0.24.
    let response = app
        .post("/v1/chat/completions", &ask("a".repeat(300_000)))
        .await;
    assert_eq!(response.status(), 402);
    let body: Value = response.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("up to 1.44"), "{message}");
    helpers::money::assert_invariant(&app, 1).await;
}

#[tokio::test]
async fn an_account_price_or_discount_applies_to_it_alone_from_its_effective_time() {
    let prices = tempfile::tempdir().unwrap();
    let sample = sample_prices();
    let own = r#"
[[prices]]
model = "megrez-7b-instruct"
chip = "nvidia"
account = "acme"
effective_from = 2026-03-01T00:00:00+08:00
input_per_1k = "0.001"
output_per_1k = "0.002"

[[prices]]
model = "megrez-7b-instruct"
chip = "nvidia"
account = "acme"
effective_from = 2099-01-01T00:00:00+08:00
input_per_1k = "0.0001"
output_per_1k = "0.0002"

[[prices]]
model = "megrez-7b-instruct"
chip = "*"
account = "third"
effective_from = 2026-02-01T00:00:00+08:00
discount_percent = "20"
"#;
    std::fs::write(prices.path().join("p.toml"), format!("{sample}{own}")).unwrap();
    let dir = prices.path().to_path_buf();
    let app = TestApp::spawn_with(|c| c.pricing.dir = dir).await;
    store::accounts::create(app.state.db(), "other")
        .await
        .unwrap();
    let other = helpers::issue_key(&app.state, "other", None).await.secret;
    let route = "/maas/megrez-7b-instruct/nvidia/chat/completions";
    let knobs = json!({"prompt_tokens": 1000, "completion_tokens": 1000});
    let response = app
        .post(route, &chat(None, "hi", false, knobs.clone()))
        .await;
    let record = app.record_of(&response).await;
    assert_eq!(record.cost, dec("0.003"), "acme's own price in force");
    let version = app
        .state
        .prices()
        .version(record.price_version_id)
        .cloned()
        .unwrap();
    assert_eq!(version.entry.account.as_deref(), Some("acme"));
    let (status, body) = app
        .post_as(route, &other, &chat(None, "hi", false, knobs))
        .await;
    assert_eq!(status, 200, "{body}");
    let others = app.latest_record().await;
    assert_ne!(others.account_id, record.account_id);
    assert_eq!(
        others.cost,
        dec("0.0036"),
        "the list price: 0.0012 + 0.0024"
    );
    // 20% off the list for a third account: its own versions, made from the discount.
    store::accounts::create(app.state.db(), "third")
        .await
        .unwrap();
    let third = helpers::issue_key(&app.state, "third", None).await.secret;
    let knobs = json!({"prompt_tokens": 1000, "completion_tokens": 1000});
    let (status, _) = app
        .post_as(route, &third, &chat(None, "hi", false, knobs))
        .await;
    assert_eq!(status, 200);
    let thirds = app.latest_record().await;
    assert_eq!(thirds.cost, dec("0.00288"), "(0.0012 + 0.0024) × 0.8");
    let version = app
        .state
        .prices()
        .version(thirds.price_version_id)
        .cloned()
        .unwrap();
    assert_eq!(
        (
            version.entry.account.as_deref(),
            version.entry.chip.as_str()
        ),
        (Some("third"), "nvidia")
    );
}

#[tokio::test]
async fn a_reserved_deployment_is_charged_once_per_started_hour_to_its_owner() {
    use chrono::{TimeDelta, Utc};
    let now = Utc::now();
    let from = now - TimeDelta::minutes(210);
    let app = TestApp::spawn_with(|c| {
        for up in c.upstreams.iter_mut().filter(|u| u.deployment.is_some()) {
            up.owners = vec!["acme".into()];
            up.reserved_from = Some(from);
            up.reserved_until = Some(now - TimeDelta::minutes(60));
        }
    })
    .await;
    let zone = app.state.config().billing.zone();
    let charge = |upstreams: Vec<tollgate::config::UpstreamConfig>| {
        let app = &app;
        async move {
            tollgate::domain::reservations::charge(
                app.state.db(),
                &upstreams,
                &app.state.prices(),
                app.state.spending(),
                zone,
                now,
            )
            .await
            .unwrap()
        }
    };
    let hours = || async {
        let all = store::accounts::all_funds(app.state.db(), 1).await.unwrap();
        let mut starts: Vec<_> = (all.into_iter())
            .filter(|t| t.kind == "reservation")
            .map(|t| (t.created_at, t.amount))
            .collect();
        starts.sort();
        starts
    };
    // Released an hour ago: the hours started at −3.5 h, −2.5 h and −1.5 h, each once,
    // however often (and by however many at once) it is charged.
    let upstreams = app.state.config().upstreams.clone();
    let runs = futures_util::future::join_all((0..4).map(|_| charge(upstreams.clone()))).await;
    assert!(runs.iter().map(|r| r.hours).sum::<usize>() <= 3);
    let charged = hours().await;
    let expected: Vec<_> = (0..3)
        .map(|h| (from + TimeDelta::hours(h), dec("-2.5")))
        .map(|(at, amount)| (tollgate::store::from_ms(tollgate::store::to_ms(at)), amount))
        .collect();
    assert_eq!(charged, expected);
    // Reserved again until now: the hour started at −0.5 h is charged too.
    let mut open = upstreams.clone();
    for up in open.iter_mut().filter(|u| u.deployment.is_some()) {
        up.reserved_until = None;
    }
    charge(open.clone()).await;
    charge(open).await;
    assert_eq!(hours().await.len(), 4);
    let figures = helpers::money::assert_invariant(&app, 1).await;
    assert_eq!(figures.balance, dec("-10"), "4 × 2.50, owed by the owner");
    // Its invoice(s) list the hours at their rate.
    let admin = app.admin_token(tollgate::admin::Role::Admin);
    let mut invoiced = 0;
    for month in [
        tollgate::billing::period::Month::containing(from, zone),
        tollgate::billing::period::Month::containing(now, zone),
    ] {
        let path = format!("/admin/v1/invoices?account=acme&period={month}");
        let invoice = app.get_json(&path, &admin).await;
        for line in invoice["reserved"].as_array().into_iter().flatten() {
            assert_eq!(line["deployment"], "mif-demo0001");
            assert_eq!(line["per_hour"], "2.5");
            invoiced += line["hours"].as_u64().unwrap();
        }
        if from.with_timezone(&zone).format("%Y-%m").to_string() == month.to_string() {
            break;
        }
    }
    assert_eq!(invoiced, 4);
}

/// A thinking model's reasoning tokens (part of its completion tokens) at the tier's own
/// reasoning rate: qwen-plus from December at 0.008 CNY per 1,000 reasoning tokens up to
/// 128k input tokens and 0.024 up to 256k, the rest of the completion at the output rate;
/// a model without a reasoning rate bills them as output. Records and rollups keep the
/// count, and the invoice has a line of reasoning tokens.
#[tokio::test]
async fn reasoning_tokens_are_billed_at_their_tiers_reasoning_rate() {
    let prices = tempfile::tempdir().unwrap();
    let thinking = r#"
[[prices]]
model = "qwen-plus"
chip = "*"
effective_from = 2026-12-01T00:00:00+08:00
tiers = [
  { up_to_prompt_tokens = 128000, input_per_1k = "0.0008", output_per_1k = "0.002", reasoning_per_1k = "0.008" },
  { up_to_prompt_tokens = 256000, input_per_1k = "0.0024", output_per_1k = "0.02", reasoning_per_1k = "0.024" },
]
"#;
    let sample = sample_prices();
    std::fs::write(prices.path().join("p.toml"), format!("{sample}{thinking}")).unwrap();
    let dir = prices.path().to_path_buf();
    let app = TestApp::spawn_with(|c| c.pricing.dir = dir).await;
    let send = |model: &'static str, prompt: u64| {
        let app = &app;
        async move {
            let knobs = json!({"prompt_tokens": prompt, "completion_tokens": 3000, "reasoning_tokens": 2000});
            let route = match model {
                "qwen-plus" => "/v1/chat/completions",
                _ => "/maas/megrez-7b-instruct/nvidia/chat/completions",
            };
            let body = chat(Some(model), "hi", false, knobs);
            let response = app.post(route, &body).await;
            assert_eq!(response.status(), 200);
            app.record_of(&response).await
        }
    };
    // 1,000 × 0.0008 + 1,000 × 0.002 + 2,000 × 0.008, per 1,000.
    let record = send("qwen-plus", 1000).await;
    assert_eq!(
        (record.cost, record.reasoning_tokens),
        (dec("0.0188"), 2000)
    );
    // 200,001 × 0.0024 + 1,000 × 0.02 + 2,000 × 0.024, per 1,000.
    let record = send("qwen-plus", 200_001).await;
    assert_eq!(record.cost, dec("0.4800024") + dec("0.02") + dec("0.048"));
    // megrez has no reasoning rate: its 3,000 completion tokens at 0.0024.
    let record = send("megrez-7b-instruct", 1000).await;
    assert_eq!(
        (record.cost, record.reasoning_tokens),
        (dec("0.0012") + dec("0.0072"), 2000)
    );
    // The invoice prices the rollups' reasoning tokens the same way.
    app.state.ledger().flush().await.unwrap();
    let month = tollgate::billing::period::Month::containing(chrono::Utc::now(), chrono_tz::UTC);
    let path = format!(
        "/admin/v1/invoices/inv_1_{}",
        month.to_string().replace('-', "")
    );
    let admin = app.admin_token(tollgate::admin::Role::Admin);
    let invoice = app.get_json(&path, &admin).await;
    let reasoning: Vec<(&str, &str, u64)> = (invoice["lines"].as_array().unwrap().iter())
        .filter(|l| l["unit"] == "reasoning_tokens")
        .map(|l| {
            (
                l["model"].as_str().unwrap(),
                l["unit_price"].as_str().unwrap(),
                l["quantity"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        reasoning,
        [
            ("megrez-7b-instruct", "0.0024", 2000),
            ("qwen-plus", "0.008", 2000),
            ("qwen-plus", "0.024", 2000)
        ]
    );
    assert_eq!(invoice["total_exact"], "0.5752024");
    helpers::money::assert_invariant(&app, 1).await;
    app.stop().await;
}
