//! A key's secret appears once, where it is issued, and nowhere else: not in the database,
//! the logs (at debug level), nor any response. And the CLI, from another process, revokes a
//! key in front of a running gateway from the very next request on.

use crate::helpers;

use helpers::binary::{cli, serve, write_config};
use helpers::{chat, client};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_key_leaves_no_trace_beyond_its_prefix_and_cli_revocation_is_immediate() {
    let (sim, _) = tollgate::sim::spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), sim);
    let account: Value =
        serde_json::from_str(&cli(&config, &["accounts", "create", "acme", "--json"])).unwrap();
    assert_eq!(account["name"], "acme");
    let issued: Value = serde_json::from_str(&cli(
        &config,
        &[
            "keys",
            "create",
            "--account",
            "acme",
            "--rpm",
            "50",
            "--json",
        ],
    ))
    .unwrap();
    let canary = issued["key"].as_str().unwrap().to_string();
    let prefix = issued["prefix"].as_str().unwrap();
    let secret_part = &canary[prefix.len()..];
    let gateway = serve(&config, "debug");
    let base = format!("http://{}", gateway.addr);
    let http = client();
    let mut seen = String::new();

    let mut near_miss = canary.clone();
    near_miss.pop();
    near_miss.push(if canary.ends_with('x') { 'y' } else { 'x' });
    let calls = [
        (
            "/maas/megrez-7b-instruct/nvidia/chat/completions",
            canary.as_str(),
            chat(None, "hi", false, json!({})),
        ),
        (
            "/maas/megrez-7b-instruct/chip3/chat/completions",
            canary.as_str(),
            chat(None, "hi", true, json!({})),
        ),
        (
            "/v1/chat/completions",
            canary.as_str(),
            chat(Some("no-such-model"), "hi", false, json!({})),
        ),
        (
            "/v1/chat/completions",
            canary.as_str(),
            json!("not an object"),
        ),
        (
            "/v1/chat/completions",
            near_miss.as_str(),
            chat(Some("megrez-7b-instruct"), "hi", false, json!({})),
        ),
        (
            "/maas/megrez-7b-instruct/nvidia/chat/completions",
            canary.as_str(),
            chat(None, "hi", false, json!({"fault": "genstudio_401"})),
        ),
    ];
    for (path, key, body) in calls {
        let response = http
            .post(format!("{base}{path}"))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap();
        let headers = format!("{:?}", response.headers());
        seen.push_str(&format!("{headers}\n{}\n", response.text().await.unwrap()));
    }
    // Anthropic's SDK sends the key as `x-api-key`: the same secrecy, right key or not.
    for (key, stream) in [(&canary, false), (&canary, true), (&near_miss, false)] {
        let body = json!({"model": "glm-4.6", "max_tokens": 16, "stream": stream,
            "messages": [{"role": "user", "content": "hi"}]});
        let response = http
            .post(format!("{base}/v1/messages"))
            .header("x-api-key", key.as_str())
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        assert_eq!(status == 200, key == &canary, "{status}");
        let headers = format!("{:?}", response.headers());
        seen.push_str(&format!("{headers}\n{}\n", response.text().await.unwrap()));
    }
    for path in ["/v1/models", "/v1/usage"] {
        let response = http
            .get(format!("{base}{path}"))
            .bearer_auth(&canary)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        seen.push_str(&response.text().await.unwrap());
    }
    let token = cli(&config, &["admin-token", "--role", "admin", "--ttl", "5m"]);
    for path in ["/admin/v1/keys", "/admin/v1/usage"] {
        let response = http
            .get(format!("{base}{path}"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        seen.push_str(&response.text().await.unwrap());
    }
    seen.push_str(&cli(&config, &["keys", "list", "--json"]));
    seen.push_str(&cli(
        &config,
        &["keys", "show", &issued["id"].to_string(), "--json"],
    ));

    // Revoked by another process, refused on the very next request.
    let revoked: Value = serde_json::from_str(&cli(
        &config,
        &["keys", "revoke", &issued["id"].to_string(), "--json"],
    ))
    .unwrap();
    assert_eq!(revoked["state"], "revoked");
    let response = http
        .get(format!("{base}/v1/models"))
        .bearer_auth(&canary)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    seen.push_str(&response.text().await.unwrap());

    let mut gateway = gateway;
    gateway.child.kill().unwrap();
    gateway.child.wait().unwrap();
    let log = gateway.log.lock().unwrap().clone();
    assert!(log.contains("DEBUG"), "the log was captured at debug level");
    assert!(!log.contains(secret_part), "the log holds the key");
    assert!(!seen.contains(secret_part), "a response holds the key");
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file()
            && path
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("ledger")
        {
            let bytes = std::fs::read(&path).unwrap();
            let found = bytes
                .windows(secret_part.len())
                .any(|w| w == secret_part.as_bytes());
            assert!(!found, "{} holds the key", path.display());
        }
    }
    assert!(seen.contains(prefix), "the prefix is what operators see");
}
