//! The answer fixtures (`tests/fixtures/`) the platforms' documents show, replayed byte
//! for byte by the simulator, split anywhere: each is relayed as it came and metered from
//! its own `usage` (GenStudio's and InternLM's plain answers, a blocked answer,
//! embeddings, rerank), and GenStudio's 401 is relayed as a backend error that bills
//! nothing. The streamed fixtures are replayed in `streaming` and `framing`.

use crate::helpers;

use helpers::{TestApp, dec, expected_cost, fixture, request_id};
use serde_json::{Value, json};

/// A fixture's answer and what its record must say.
struct Case {
    file: &'static str,
    path: &'static str,
    body: Value,
    /// prompt, completion tokens.
    tokens: (i64, i64),
    cost: rust_decimal::Decimal,
    blocked: bool,
}

#[tokio::test]
async fn every_answer_fixture_is_relayed_and_metered_from_its_usage() {
    let app = TestApp::spawn().await;
    let chat =
        |model: &str| json!({"model": model, "messages": [{"role": "user", "content": "q"}]});
    let cases = [
        Case {
            file: "genstudio-chat.json",
            path: "/maas/megrez-7b-instruct/nvidia/chat/completions",
            body: chat("megrez-7b-instruct"),
            tokens: (22, 17),
            cost: expected_cost(22, 0, 17, "0.0012", "0.0003", "0.0024"),
            blocked: false,
        },
        Case {
            file: "genstudio-chat-blocked.json",
            path: "/maas/megrez-7b-instruct/nvidia/chat/completions",
            body: chat("megrez-7b-instruct"),
            tokens: (31, 0),
            cost: expected_cost(31, 0, 0, "0.0012", "0.0003", "0.0024"),
            blocked: true,
        },
        Case {
            file: "internlm-chat.json",
            path: "/maas/internlm3-latest/ascend/chat/completions",
            body: chat("internlm3-latest"),
            tokens: (64, 21),
            cost: expected_cost(64, 0, 21, "0.0008", "0.0008", "0.0016"),
            blocked: false,
        },
        Case {
            file: "embeddings.json",
            path: "/v1/embeddings",
            body: json!({"model": "bge-m3", "input": "hello"}),
            tokens: (9, 0),
            cost: dec("0.0000045"),
            blocked: false,
        },
        Case {
            file: "rerank.json",
            path: "/v1/rerank",
            body: json!({"model": "bge-reranker-v2-m3", "query": "q", "documents": ["a", "b"]}),
            tokens: (57, 0),
            // 57 tokens * 0.0002 / 1000 + 0.0001 per request
            cost: dec("0.0001114"),
            blocked: false,
        },
    ];
    for case in cases {
        let raw = fixture(case.file);
        let sent: Value = serde_json::from_str(&raw).unwrap();
        for split in [1, 7, 100_000] {
            let mut body = case.body.clone();
            body["x_sim"] = json!({"raw": raw, "split": split});
            let response = app.post(case.path, &body).await;
            assert_eq!(response.status(), 200, "{}", case.file);
            let id = request_id(&response);
            let relayed: Value = response.json().await.unwrap();
            for field in [
                "choices",
                "data",
                "results",
                "usage",
                "blocked",
                "moderation",
            ] {
                assert_eq!(relayed[field], sent[field], "{} relays {field}", case.file);
            }
            let record = app.record(&id).await;
            let what = format!("{} split {split}", case.file);
            assert_eq!(
                (record.status.as_str(), record.usage_source.as_str()),
                ("ok", "reported"),
                "{what}"
            );
            assert_eq!(
                (record.prompt_tokens, record.completion_tokens),
                case.tokens,
                "{what}"
            );
            assert_eq!(record.cost, case.cost, "{what}");
            assert_eq!(record.blocked, case.blocked, "{what}");
            // InternLM's verdict flags nothing: it is not kept (`multimodal` keeps one that does).
            assert_eq!(record.moderation, None, "{what}");
        }
    }
}

#[tokio::test]
async fn genstudios_401_is_relayed_as_a_backend_error_and_bills_nothing() {
    let app = TestApp::spawn().await;
    let raw = fixture("genstudio-error-401.json");
    let body = json!({"model": "megrez-7b-instruct",
        "messages": [{"role": "user", "content": "q"}],
        "x_sim": {"raw": raw, "raw_status": 401}});
    let response = app
        .post("/maas/megrez-7b-instruct/nvidia/chat/completions", &body)
        .await;
    assert_eq!(response.status(), 502);
    let id = request_id(&response);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], 60000, "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("Wrong Bearer Token")),
        "{error}"
    );
    let record = app.record(&id).await;
    assert_eq!(
        (record.status.as_str(), record.http_status),
        ("upstream_error", 502),
        "the record keeps the status the client got"
    );
    assert_eq!(record.cost, rust_decimal::Decimal::ZERO);
}
