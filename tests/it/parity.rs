//! Streamed equals unstreamed: the same answer, sent by a backend of each dialect and
//! stream shape once whole and once streamed (its bytes split at random boundaries), is
//! recorded with the same prompt, cached and completion tokens, status, usage source and
//! cost, and those are the counts the backend reported. The answers are the simulator's own
//! for random counts, fetched from it first and then replayed byte for byte.

use crate::helpers;

use helpers::{TestApp, request_id};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

/// A backend shape: where the gateway takes the request, and where the simulator that
/// speaks it answers.
struct Shape {
    name: &'static str,
    gateway: &'static str,
    backend: &'static str,
    model: &'static str,
    /// DashScope's native API: its own body, and streams asked for by a header.
    dashscope: bool,
    /// The upstream sends `stream_options.include_usage` (its backend then reports usage
    /// on a last chunk of its own).
    include_usage: bool,
    /// The backend reports cached prompt tokens (the simulator's DashScope-native answers
    /// carry no cached count).
    reports_cached: bool,
}

const SHAPES: [Shape; 6] = [
    Shape {
        name: "GenStudio SSE",
        gateway: "/maas/megrez-7b-instruct/nvidia/chat/completions",
        backend: "genstudio/chat/completions",
        model: "megrez-7b-instruct",
        dashscope: false,
        include_usage: false,
        reports_cached: true,
    },
    Shape {
        name: "OpenAI with include_usage",
        gateway: "/maas/megrez-7b-instruct/amd/chat/completions",
        backend: "openai/chat/completions",
        model: "megrez-7b-instruct",
        dashscope: false,
        include_usage: true,
        reports_cached: true,
    },
    Shape {
        name: "chip3 bare JSON",
        gateway: "/maas/megrez-7b-instruct/chip3/chat/completions",
        backend: "bare/chat/completions",
        model: "megrez-7b-instruct",
        dashscope: false,
        include_usage: false,
        reports_cached: true,
    },
    Shape {
        name: "InternLM",
        gateway: "/maas/internlm3-latest/ascend/chat/completions",
        backend: "internlm/chat/completions",
        model: "internlm3-latest",
        dashscope: false,
        include_usage: false,
        reports_cached: true,
    },
    Shape {
        name: "Zhipu",
        gateway: "/api/paas/v4/chat/completions",
        backend: "zhipu/chat/completions",
        model: "glm-4-plus",
        dashscope: false,
        include_usage: false,
        reports_cached: true,
    },
    Shape {
        name: "DashScope native",
        gateway: "/api/v1/services/aigc/text-generation/generation",
        backend: "dashscope/services/aigc/text-generation/generation",
        model: "qwen-plus",
        dashscope: true,
        include_usage: false,
        reports_cached: false,
    },
];

fn body(shape: &Shape, stream: bool, knobs: Value) -> Value {
    let messages = json!([{"role": "user", "content": "你好"}]);
    if shape.dashscope {
        return json!({"model": shape.model, "input": {"messages": messages},
            "parameters": {"result_format": "message", "incremental_output": true},
            "x_sim": knobs});
    }
    let mut body = json!({"model": shape.model, "messages": messages, "stream": stream,
        "x_sim": knobs});
    if stream && shape.include_usage {
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

/// Sends `body` to `url` as a client of `shape` would, streamed or not.
async fn send(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    shape: &Shape,
    stream: bool,
    body: &Value,
) -> reqwest::Response {
    let mut request = client.post(url).bearer_auth(key).json(body);
    if shape.dashscope && stream {
        request = request.header("X-DashScope-SSE", "enable");
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn the_same_answer_costs_the_same_streamed_or_not_in_every_shape() {
    let app = TestApp::spawn().await;
    let mut rng = SmallRng::seed_from_u64(7);
    for shape in &SHAPES {
        for round in 0..5 {
            let prompt: u64 = rng.random_range(1..6000);
            let cached = if round % 2 == 0 {
                0
            } else {
                rng.random_range(0..=prompt)
            };
            let completion: u64 = rng.random_range(1..3000);
            let knobs = json!({"prompt_tokens": prompt, "cached_tokens": cached,
                "completion_tokens": completion, "chunks": rng.random_range(1..7)});
            let backend = format!("http://{}/{}", app.sim, shape.backend);
            let mut records = Vec::new();
            for stream in [false, true] {
                // The backend's answer, as it sends it ...
                let answer = send(
                    &app.client,
                    &backend,
                    "sk-backend",
                    shape,
                    stream,
                    &body(shape, stream, knobs.clone()),
                )
                .await;
                assert_eq!(answer.status(), 200, "{}", shape.name);
                let raw = answer.text().await.unwrap();
                // ... replayed to the gateway, split anywhere.
                let split = rng.random_range(1..40);
                let replay = json!({"raw": raw, "split": split});
                let response = send(
                    &app.client,
                    &app.url(shape.gateway),
                    &app.key,
                    shape,
                    stream,
                    &body(shape, stream, replay),
                )
                .await;
                assert_eq!(response.status(), 200, "{} stream {stream}", shape.name);
                let id = request_id(&response);
                response.text().await.unwrap();
                let record = app.record(&id).await;
                assert_eq!(record.stream, stream);
                records.push((record, split));
            }
            let [(whole, _), (streamed, split)] = &records[..] else {
                unreachable!()
            };
            let what = format!(
                "{} round {round} ({prompt}/{cached}/{completion} tokens, stream split {split})",
                shape.name
            );
            let facts = |r: &tollgate::store::usage::StoredRecord| {
                (
                    r.status.clone(),
                    r.usage_source.clone(),
                    r.prompt_tokens,
                    r.cached_tokens,
                    r.completion_tokens,
                    r.cost,
                )
            };
            assert_eq!(facts(streamed), facts(whole), "{what}");
            assert_eq!(
                (whole.status.as_str(), whole.usage_source.as_str()),
                ("ok", "reported"),
                "{what}"
            );
            assert_eq!(
                (whole.prompt_tokens, whole.completion_tokens),
                (prompt as i64, completion as i64),
                "{what}"
            );
            let reported = if shape.reports_cached { cached } else { 0 };
            assert_eq!(whole.cached_tokens, reported as i64, "{what}");
        }
    }
}
