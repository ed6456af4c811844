//! A backend's answer framed in each way HTTP/1.1 allows (a length, chunks with extensions
//! and a trailer, the connection's end, informational answers first) is read and metered
//! the same by tollgate's own client, streamed or not, on connections it reuses; an
//! answer cut off is an upstream error at no cost.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::helpers::{self, TestApp, chat};

const MODEL: &str = "qwen2.5-72b-instruct";

const ANSWER: &str = r#"{"id":"chatcmpl-w","object":"chat.completion","created":1,"model":"qwen2.5-72b-instruct","choices":[{"index":0,"message":{"role":"assistant","content":"framed"},"finish_reason":"stop"}],"usage":{"prompt_tokens":7,"completion_tokens":5,"total_tokens":12}}"#;

/// The stream's events: two pieces of text, the usage, and the end.
fn events() -> Vec<String> {
    let delta = |text: &str| {
        json!({"id": "chatcmpl-w", "object": "chat.completion.chunk", "created": 1, "model": MODEL,
               "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]})
    };
    let usage = json!({"id": "chatcmpl-w", "object": "chat.completion.chunk", "created": 1,
                       "model": MODEL, "choices": [],
                       "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}});
    [delta("fra"), delta("med"), usage]
        .iter()
        .map(|e| format!("data: {e}\n\n"))
        .chain(["data: [DONE]\n\n".to_string()])
        .collect()
}

/// `pieces` as a chunked body: an extension on the first chunk, a trailer at the end.
fn chunked(pieces: &[String]) -> String {
    let mut body = String::new();
    for (i, piece) in pieces.iter().enumerate() {
        let extension = if i == 0 { ";note=first" } else { "" };
        body += &format!("{:x}{extension}\r\n{piece}\r\n", piece.len());
    }
    body + "0\r\nx-trailer: end\r\n\r\n"
}

/// What the backend sends for the framing a request names, and whether it then closes.
fn answer(framing: &str) -> (String, bool) {
    let json = "content-type: application/json";
    let sse = "content-type: text/event-stream";
    let (half, rest) = ANSWER.split_at(ANSWER.len() / 2);
    let length =
        |head: &str, body: &str| format!("{head}\r\ncontent-length: {}\r\n\r\n{body}", body.len());
    match framing {
        "length" => (length(&format!("HTTP/1.1 200 OK\r\n{json}"), ANSWER), false),
        "chunks" => {
            let body = chunked(&[half.to_string(), rest.to_string()]);
            (
                format!("HTTP/1.1 200 OK\r\n{json}\r\ntransfer-encoding: chunked\r\n\r\n{body}"),
                false,
            )
        }
        "close" => (format!("HTTP/1.0 200 OK\r\n{json}\r\n\r\n{ANSWER}"), true),
        "informational" => {
            let first =
                "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\n";
            (
                first.to_string() + &length(&format!("HTTP/1.1 200 OK\r\n{json}"), ANSWER),
                false,
            )
        }
        "stream-chunks" => {
            let body = chunked(&events());
            (
                format!("HTTP/1.1 200 OK\r\n{sse}\r\ntransfer-encoding: chunked\r\n\r\n{body}"),
                false,
            )
        }
        "stream-close" => (
            format!("HTTP/1.1 200 OK\r\n{sse}\r\n\r\n{}", events().concat()),
            true,
        ),
        "cut" => {
            let head = format!(
                "HTTP/1.1 200 OK\r\n{json}\r\ncontent-length: {}\r\n\r\n",
                ANSWER.len() + 50
            );
            (head + ANSWER, true)
        }
        other => panic!("no framing {other}"),
    }
}

/// A backend that reads each request and answers it as the `frame:` word in its body says,
/// counting the connections it accepts.
async fn backend() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(socket));
        }
    });
    (addr, accepted)
}

async fn serve(mut socket: TcpStream) {
    let mut seen = Vec::new();
    loop {
        let end = loop {
            if let Some(at) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            seen.reserve(4096);
            if !matches!(socket.read_buf(&mut seen).await, Ok(n) if n > 0) {
                return;
            }
        };
        let head = String::from_utf8_lossy(&seen[..end]).to_lowercase();
        let length: usize = (head.split("content-length: ").nth(1))
            .and_then(|rest| rest.split("\r\n").next()?.parse().ok())
            .unwrap_or(0);
        while seen.len() < end + length {
            seen.reserve(4096);
            if !matches!(socket.read_buf(&mut seen).await, Ok(n) if n > 0) {
                return;
            }
        }
        let body = String::from_utf8_lossy(&seen[end..end + length]).into_owned();
        seen.drain(..end + length);
        let framing = body
            .split("frame:")
            .nth(1)
            .and_then(|r| r.split('"').next());
        let (wire, close) = answer(framing.unwrap_or("length"));
        if socket.write_all(wire.as_bytes()).await.is_err() || close {
            return;
        }
    }
}

#[tokio::test]
async fn answers_framed_every_way_are_metered_the_same_and_a_cut_one_costs_nothing() {
    let (wire, accepted) = backend().await;
    let app =
        TestApp::spawn_with(|c| helpers::point_model_at(c, MODEL, &format!("http://{wire}/v1")))
            .await;
    let mut costs = Vec::new();
    for framing in [
        "length",
        "chunks",
        "close",
        "informational",
        "stream-chunks",
        "stream-close",
    ] {
        let stream = framing.starts_with("stream");
        // Twice: the second request goes on the connection the first left, where it was kept.
        for round in 0..2 {
            let body = chat(Some(MODEL), &format!("frame:{framing}"), stream, json!({}));
            let response = app.post("/v1/chat/completions", &body).await;
            assert_eq!(response.status(), 200, "{framing}");
            let id = helpers::request_id(&response);
            let text = response.text().await.unwrap();
            let said = if stream {
                let deltas = text.lines().filter_map(|l| l.strip_prefix("data: "));
                let deltas = deltas.filter_map(|d| serde_json::from_str::<Value>(d).ok());
                deltas
                    .filter_map(|e| {
                        e["choices"][0]["delta"]["content"]
                            .as_str()
                            .map(String::from)
                    })
                    .collect::<String>()
            } else {
                let answer: Value = serde_json::from_str(&text).unwrap();
                answer["choices"][0]["message"]["content"]
                    .as_str()
                    .unwrap()
                    .to_string()
            };
            assert_eq!(said, "framed", "{framing}, round {round}: {text}");
            let record = app.record(&id).await;
            assert_eq!(
                (record.status.as_str(), record.usage_source.as_str()),
                ("ok", "reported"),
                "{framing}"
            );
            assert_eq!(
                (record.prompt_tokens, record.completion_tokens),
                (7, 5),
                "{framing}"
            );
            costs.push(record.cost);
        }
    }
    assert!(costs[0] > rust_decimal::Decimal::ZERO);
    // Connections are reused, streams' included (read to their end after `[DONE]`): a new
    // one is opened only after each of the four answers that close theirs, the last of
    // which is followed by none here.
    assert_eq!(accepted.load(Ordering::SeqCst), 4);
    assert!(costs.iter().all(|c| *c == costs[0]), "{costs:?}");
    // Cut off before its length: refused, recorded at no cost, and the next answer is whole.
    let cut = chat(Some(MODEL), "frame:cut", false, json!({}));
    let response = app.post("/v1/chat/completions", &cut).await;
    let record = app.record_of(&response).await;
    assert_eq!(response.status(), 502);
    let error: Value = response.json().await.unwrap();
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cut off"),
        "{error}"
    );
    assert_eq!(
        (record.status.as_str(), record.cost),
        ("upstream_error", rust_decimal::Decimal::ZERO)
    );
    let whole = app
        .post(
            "/v1/chat/completions",
            &chat(Some(MODEL), "frame:length", false, json!({})),
        )
        .await;
    assert_eq!(whole.status(), 200);
}
