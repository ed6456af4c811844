//! An SRE scrapes tollgate with a real Prometheus and imports the shipped dashboards: the
//! metrics say exactly what happened, promtool accepts them and every dashboard query, and
//! every metric a dashboard uses exists.

use crate::helpers;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use helpers::{TestApp, chat};
use serde_json::{Value, json};

/// One sample: metric name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => {
                    let labels = rest
                        .trim_end_matches('}')
                        .split("\",")
                        .filter(|p| !p.is_empty())
                        .map(|pair| {
                            let (k, v) = pair.split_once('=').unwrap();
                            (k.to_string(), v.trim_matches('"').to_string())
                        });
                    (name.to_string(), labels.collect())
                }
                None => (series.to_string(), BTreeMap::new()),
            };
            (name, labels, value.parse().unwrap())
        })
        .collect()
}

/// The sum of the samples of `name` whose labels include all of `want`.
fn value(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(n, labels, _)| {
            n == name
                && want
                    .iter()
                    .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| v)
        .sum()
}

/// Traffic touching every metric: plain and streamed requests, an estimate, rejections.
async fn traffic(app: &TestApp) {
    for _ in 0..2 {
        let body = chat(
            None,
            "hi",
            false,
            json!({"prompt_tokens": 100, "completion_tokens": 50, "cached_tokens": 20}),
        );
        assert_eq!(
            app.post("/maas/megrez-7b-instruct/nvidia/chat/completions", &body)
                .await
                .status(),
            200
        );
    }
    let body = chat(
        None,
        "hi",
        true,
        json!({"prompt_tokens": 10, "completion_tokens": 5}),
    );
    let stream = app
        .post("/maas/megrez-7b-instruct/chip3/chat/completions", &body)
        .await;
    stream.text().await.unwrap();
    let body = chat(
        Some("megrez-7b-instruct"),
        "hi",
        false,
        json!({"usage": false}),
    );
    assert_eq!(app.post("/v1/chat/completions", &body).await.status(), 200);
    let bad_key = app
        .client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth("tg-nope")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(bad_key.status(), 401);
    let unknown = chat(Some("no-such-model"), "hi", false, json!({}));
    assert_eq!(
        app.post("/v1/chat/completions", &unknown).await.status(),
        404
    );
}

async fn scrape(app: &TestApp) -> String {
    let response = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

#[tokio::test]
async fn metrics_say_exactly_what_was_sent() {
    let app = TestApp::spawn().await;
    traffic(&app).await;
    let samples = parse(&scrape(&app).await);
    let nvidia = [("model", "megrez-7b-instruct"), ("chip", "nvidia")];
    let requests = |route: &str, chip: &str| {
        value(
            &samples,
            "tollgate_requests_total",
            &[("route", route), ("chip", chip), ("status", "ok")],
        )
    };
    assert_eq!(requests("chat_mxn", "nvidia"), 2.0);
    assert_eq!(requests("chat_mxn", "chip3"), 1.0);
    assert_eq!(
        requests("chat_model", "chip3"),
        1.0,
        "the model route went to the cheapest chip"
    );
    let tokens = |kind: &str, source: &str| {
        let mut want = nvidia.to_vec();
        want.extend([("kind", kind), ("source", source)]);
        value(&samples, "tollgate_tokens_total", &want)
    };
    assert_eq!(
        (
            tokens("prompt", "reported"),
            tokens("completion", "reported"),
            tokens("cached", "reported")
        ),
        (200.0, 100.0, 40.0)
    );
    assert!(
        value(
            &samples,
            "tollgate_tokens_total",
            &[("source", "estimated"), ("kind", "completion")]
        ) > 0.0
    );
    // (160 x 0.0012 + 40 x 0.0003 + 100 x 0.0024) / 1000 per the sample nvidia price.
    let cost = value(&samples, "tollgate_cost_cny_total", &nvidia);
    assert!((cost - 0.000444).abs() < 1e-12, "{cost}");
    assert_eq!(
        value(
            &samples,
            "tollgate_rejected_requests_total",
            &[("reason", "unauthorized")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &samples,
            "tollgate_rejected_requests_total",
            &[("reason", "not_found")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &samples,
            "tollgate_time_to_first_token_seconds_count",
            &[("chip", "chip3")]
        ),
        1.0
    );
    assert_eq!(
        value(&samples, "tollgate_request_duration_seconds_count", &[]),
        4.0
    );
    assert_eq!(
        value(&samples, "tollgate_upstream_latency_seconds_count", &[]),
        4.0,
        "one response head per request"
    );
    assert_eq!(value(&samples, "tollgate_active_streams", &[]), 0.0);
    assert!(
        value(
            &samples,
            "tollgate_key_cache_lookups_total",
            &[("result", "hit")]
        ) >= 3.0
    );
    assert!(value(&samples, "tollgate_ledger_batch_records_sum", &[]) >= 4.0);
    // Committed records wait in the journal for up to `ledger.import_delay_ms`.
    assert!(value(&samples, "tollgate_ledger_queue_depth", &[]) <= 4.0);
    let text = scrape(&app).await;
    assert!(!text.contains(&app.key[11..]), "no key in metrics");
    for (_, labels, _) in &samples {
        assert!(
            labels.keys().all(|k| [
                "route", "model", "chip", "status", "kind", "source", "reason", "result", "le"
            ]
            .contains(&k.as_str())),
            "unbounded label in {labels:?}"
        );
    }
}

fn promtool() -> PathBuf {
    let found = Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "promtool is missing: .ci/run installs it (Debian package 'prometheus')"
    );
    PathBuf::from("promtool")
}

#[tokio::test]
async fn promtool_accepts_the_metrics() {
    let app = TestApp::spawn().await;
    traffic(&app).await;
    let text = scrape(&app).await;
    let mut child = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool lint: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn collect_exprs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", Value::String(e)) => out.push(e.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn every_dashboard_query_is_valid_promql_on_exported_metrics() {
    let app = TestApp::spawn().await;
    traffic(&app).await;
    let exported: BTreeSet<String> = scrape(&app)
        .await
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap().to_string())
        .collect();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards");
    let mut exprs = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let dashboard: Value =
            serde_json::from_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap()).unwrap();
        collect_exprs(&dashboard, &mut exprs);
    }
    assert!(
        exprs.len() >= 15,
        "three dashboards' queries: {}",
        exprs.len()
    );
    let mut rules = String::from("groups:\n  - name: dashboards\n    rules:\n");
    for (i, expr) in exprs.iter().enumerate() {
        rules.push_str(&format!(
            "      - record: tollgate:dashboard_{i}\n        expr: {}\n",
            serde_json::to_string(expr).unwrap()
        ));
        for name in expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("tollgate_"))
        {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .fold(name, |n, s| n.strip_suffix(s).unwrap_or(n));
            assert!(
                exported.contains(family),
                "dashboard uses {name}, which tollgate does not export"
            );
        }
    }
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), rules).unwrap();
    let out = Command::new(promtool())
        .args(["check", "rules"])
        .arg(file.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_tollgate() {
    let found = Command::new("prometheus")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "prometheus is missing: .ci/run installs it (Debian package 'prometheus')"
    );
    let app = TestApp::spawn().await;
    traffic(&app).await;
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(&config, format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: tollgate\n    static_configs:\n      - targets: ['{}']\n", app.addr)).unwrap();
    let mut server = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let query = format!("http://127.0.0.1:{port}/api/v1/query?query=sum(tollgate_requests_total)");
    let mut answer = Value::Null;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Ok(response) = app.client.get(&query).send().await
            && let Ok(body) = response.json::<Value>().await
            && body["data"]["result"]
                .as_array()
                .is_some_and(|r| !r.is_empty())
        {
            answer = body;
            break;
        }
    }
    server.kill().unwrap();
    server.wait().unwrap();
    assert_eq!(
        answer["data"]["result"][0]["value"][1], "4",
        "Prometheus saw the 4 requests: {answer}"
    );
}

#[tokio::test]
async fn health_and_readiness_answer() {
    let app = TestApp::spawn().await;
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(
        (health.status().as_u16(), health.text().await.unwrap()),
        (200, "ok".to_string())
    );
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    assert_eq!(
        ready.json::<Value>().await.unwrap(),
        json!({
            "database": true,
            "ledger_writer": true,
            "spending": true,
            "degraded": false,
            "spooled": 0,
            "spool_age_seconds": 0.0
        })
    );
}

#[tokio::test]
async fn metrics_can_require_a_bearer_token() {
    let secrets = tempfile::tempdir().unwrap();
    let token = secrets.path().join("metrics-token");
    std::fs::write(&token, "scrape-secret\n").unwrap();
    let app = TestApp::spawn_with(|c| c.metrics.bearer_token_file = Some(token)).await;
    assert_eq!(
        app.client
            .get(app.url("/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let wrong = app
        .client
        .get(app.url("/metrics"))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let right = app
        .client
        .get(app.url("/metrics"))
        .bearer_auth("scrape-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 200);
}

#[tokio::test]
async fn a_fresh_gateway_exports_every_fixed_series_at_zero() {
    let app = TestApp::spawn().await;
    let samples = parse(&scrape(&app).await);
    for reason in tollgate::metrics::REJECTION_REASONS {
        let series = samples.iter().find(|(n, labels, _)| {
            n == "tollgate_rejected_requests_total"
                && labels.get("reason").map(String::as_str) == Some(reason)
        });
        assert_eq!(series.map(|s| s.2), Some(0.0), "rejected {reason}");
    }
    for name in [
        "tollgate_refused_connections_total",
        "tollgate_client_connections",
    ] {
        assert!(samples.iter().any(|(n, _, _)| n == name), "{name}");
    }
}

#[tokio::test]
async fn usage_beyond_belief_is_billed_as_estimated_and_breaks_no_aggregate() {
    let app = TestApp::spawn().await;
    let route = "/maas/megrez-7b-instruct/nvidia/chat/completions";
    let mut ids = Vec::new();
    for completion in [i64::MAX as u64, u64::MAX] {
        let knobs = json!({"prompt_tokens": 5, "completion_tokens": completion});
        let response = app.post(route, &chat(None, "hi", false, knobs)).await;
        assert_eq!(response.status(), 200);
        let record = app.record_of(&response).await;
        assert_eq!(record.usage_source, "suspect");
        assert!(record.completion_tokens < 1000, "{record:?}");
        assert!(record.error.unwrap().contains(&completion.to_string()));
        // The counts as the backend reported them are kept beside the billed ones.
        let reported = record.reported.expect("the reported counts are kept");
        assert_eq!(
            (reported.tokens.prompt, reported.tokens.completion),
            (5, completion)
        );
        ids.push(record.request_id);
    }
    let admin = app.admin_token(tollgate::admin::Role::Admin);
    let month = chrono::Utc::now()
        .with_timezone(&chrono_tz::Asia::Shanghai)
        .format("%Y-%m");
    for path in [
        "/admin/v1/accounts".to_string(),
        "/admin/v1/accounts/1".to_string(),
        "/admin/v1/reports/cost?group_by=account".to_string(),
        format!("/admin/v1/invoices?account=acme&period={month}"),
    ] {
        let (status, body) = app.admin(reqwest::Method::GET, &path, &admin, None).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    let usage = app
        .client
        .get(app.url("/v1/usage"))
        .bearer_auth(&app.key)
        .send()
        .await
        .unwrap();
    assert_eq!(usage.status(), 200);
    let samples = parse(&scrape(&app).await);
    let suspect = value(
        &samples,
        "tollgate_usage_adjusted_total",
        &[("chip", "nvidia"), ("reason", "suspect")],
    );
    assert_eq!(suspect, 2.0);
}
