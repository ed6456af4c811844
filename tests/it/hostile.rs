//! Hostile clients on loopback: silent, half-sent and never-ending connections are closed
//! after their timeouts while normal clients keep being served; connections beyond the cap
//! are refused with a 503 and counted; malformed HTTP, odd URLs and huge prompts get clear
//! OpenAI-shaped errors and never take the gateway down.

use crate::helpers;

use std::time::{Duration, Instant};

use helpers::{TestApp, chat};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tollgate::admin::Role;

const ROUTE: &str = "/maas/megrez-7b-instruct/nvidia/chat/completions";

/// Reads until the peer closes (or `within` passes); returns what was read, or `None` if
/// the connection was still open then.
async fn read_until_closed(tcp: &mut TcpStream, within: Duration) -> Option<String> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&seen).into_owned()),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

/// The JSON body of a raw HTTP response.
fn body_of(response: &str) -> Value {
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {response}"))
}

async fn gauge(app: &TestApp, name: &str) -> f64 {
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_slow_connections_are_closed_on_time_and_never_hold_up_a_normal_client() {
    let app = TestApp::spawn_with(|c| {
        c.server.max_connections = 5_000;
        // Long enough that a slow machine still serves the normal client (and scrapes
        // the gauge) while every slow connection is held.
        c.server.header_timeout_ms = 8_000;
        c.server.keep_alive_timeout_ms = 6_000;
        c.server.body_idle_timeout_ms = 8_000;
        c.server.body_timeout_ms = 12_000;
    })
    .await;
    let mut held = Vec::new();
    // Silent: connect and send nothing.
    for _ in 0..300 {
        held.push(("silent", TcpStream::connect(app.addr).await.unwrap()));
    }
    // Slowloris: half a request head.
    for _ in 0..300 {
        let mut tcp = TcpStream::connect(app.addr).await.unwrap();
        tcp.write_all(format!("POST {ROUTE} HTTP/1.1\r\nHost: x\r\nX-Slow: ").as_bytes())
            .await
            .unwrap();
        held.push(("partial head", tcp));
    }
    // A chunked body that never ends.
    for _ in 0..300 {
        let mut tcp = TcpStream::connect(app.addr).await.unwrap();
        let head = format!(
            "POST {ROUTE} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{{\"mes\r\n",
            app.key
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        held.push(("endless body", tcp));
    }
    // Kept alive after one answer, then idle.
    for _ in 0..100 {
        let mut tcp = TcpStream::connect(app.addr).await.unwrap();
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        held.push(("kept alive", tcp));
    }

    // Meanwhile a normal client is served, request after request.
    let mut slowest = Duration::ZERO;
    for i in 0..20 {
        let sent = Instant::now();
        let response = app
            .post(ROUTE, &chat(None, "hi", i % 2 == 0, json!({})))
            .await;
        assert_eq!(response.status(), 200);
        response.bytes().await.unwrap();
        slowest = slowest.max(sent.elapsed());
    }
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    // Served while the slow connections were still held open, not after they closed.
    let open = gauge(&app, "tollgate_client_connections").await;
    assert!(open >= 900.0, "slow connections open meanwhile: {open}");
    println!("slowest normal request with 1,000 slow connections held: {slowest:?}");

    // Every slow connection is closed by the gateway, each after its own timeout.
    let mut closed_by_kind = std::collections::BTreeMap::new();
    for (kind, mut tcp) in held {
        let answer = read_until_closed(&mut tcp, Duration::from_secs(20))
            .await
            .unwrap_or_else(|| panic!("a {kind} connection was never closed"));
        if kind == "endless body" {
            assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
            assert_eq!(body_of(&answer)["error"]["code"], "request_timeout");
        }
        *closed_by_kind.entry(kind).or_insert(0) += 1;
    }
    assert_eq!(closed_by_kind["silent"], 300);
    assert_eq!(closed_by_kind["endless body"], 300);
    let mut remaining = gauge(&app, "tollgate_client_connections").await;
    for _ in 0..50 {
        if remaining <= 2.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        remaining = gauge(&app, "tollgate_client_connections").await;
    }
    assert!(remaining <= 2.0, "connections left open: {remaining}");
}

/// The keep-alive timeout counts from a connection's last answer: a connection that keeps
/// asking outlives it (its timer fires early and is moved on), and one that stops asking
/// is closed one timeout after its last answer, not sooner.
#[tokio::test]
async fn a_busy_connection_outlives_its_keep_alive_timeout_and_an_idle_one_is_closed_on_time() {
    let app = TestApp::spawn_with(|c| c.server.keep_alive_timeout_ms = 1_000).await;
    let mut tcp = TcpStream::connect(app.addr).await.unwrap();
    let mut buf = [0u8; 1024];
    let mut answered = Instant::now();
    // Six requests 0.4 s apart: 2.4 s, more than twice the timeout.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        answered = Instant::now();
    }
    read_until_closed(&mut tcp, Duration::from_secs(5))
        .await
        .expect("an idle connection is closed");
    let idle = answered.elapsed();
    assert!(
        idle >= Duration::from_millis(950) && idle < Duration::from_secs(3),
        "closed {idle:?} after its last answer"
    );
}

#[tokio::test]
async fn connections_beyond_the_cap_get_a_503_and_are_counted() {
    let app = TestApp::spawn_with(|c| c.server.max_connections = 8).await;
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(TcpStream::connect(app.addr).await.unwrap());
    }
    // Let the gateway accept them all.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut refused = TcpStream::connect(app.addr).await.unwrap();
    let answer = read_until_closed(&mut refused, Duration::from_secs(5))
        .await
        .expect("refused at once");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert_eq!(body_of(&answer)["error"]["code"], "service_unavailable");
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(gauge(&app, "tollgate_refused_connections_total").await >= 1.0);
    let response = app.post(ROUTE, &chat(None, "hi", false, json!({}))).await;
    assert_eq!(response.status(), 200, "served again once below the cap");
}

#[tokio::test]
async fn errors_hyper_and_axum_answer_by_themselves_are_openai_shaped() {
    let app = TestApp::spawn().await;
    let raw = |request: Vec<u8>| async move {
        let mut tcp = TcpStream::connect(app.addr).await.unwrap();
        tcp.write_all(&request).await.unwrap();
        read_until_closed(&mut tcp, Duration::from_secs(10))
            .await
            .expect("answered and closed")
    };
    let huge_header = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(70_000));
    let cases: [(&str, Vec<u8>, &str); 3] = [
        ("431", huge_header.into_bytes(), "HTTP/1.1 431"),
        ("414", long_uri.into_bytes(), "HTTP/1.1 414"),
        ("400", b"NOT HTTP AT ALL\r\n\r\n".to_vec(), "HTTP/1.1 400"),
    ];
    for (what, request, status) in cases {
        let answer = raw(request).await;
        assert!(answer.starts_with(status), "{what}: {answer:.200}");
        let body = body_of(&answer);
        assert!(
            body["error"]["message"].as_str().is_some(),
            "{what}: {body}"
        );
        assert_eq!(body["error"]["type"], "invalid_request_error", "{what}");
    }
    // axum's own: a route that does not take this method.
    let response = app
        .client
        .get(app.url("/v1/chat/completions"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "method_not_allowed", "{body}");
    // axum's rejection of a path parameter, on an admin route.
    let (status, body) = app
        .admin(
            reqwest::Method::GET,
            "/admin/v1/accounts/not-a-number",
            &app.admin_token(Role::Admin),
            None,
        )
        .await;
    assert_eq!(status, 400);
    assert!(body["error"]["message"].is_string(), "{body}");
    // An admin body that is not the JSON asked for.
    let response = app
        .client
        .post(app.url("/admin/v1/accounts"))
        .bearer_auth(app.admin_token(Role::Admin))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert!(response.json::<Value>().await.unwrap()["error"]["message"].is_string());
    assert_eq!(
        app.client
            .get(app.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn an_invoice_id_cut_inside_a_character_is_a_404_not_a_dropped_connection() {
    let app = TestApp::spawn().await;
    let viewer = app.admin_token(Role::Viewer);
    let admin = app.admin_token(Role::Admin);
    for (method, path, token) in [
        (
            reqwest::Method::GET,
            "/admin/v1/invoices/inv_1_aaa%E2%82%AC",
            &viewer,
        ),
        (
            reqwest::Method::GET,
            "/admin/v1/invoices/inv_1_20%E2%82%AC1",
            &viewer,
        ),
        (
            reqwest::Method::POST,
            "/admin/v1/invoices/inv_1_aaa%E2%82%AC/finalize",
            &admin,
        ),
    ] {
        let (status, body) = app.admin(method, path, token, None).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert_eq!(body["error"]["code"], "not_found");
    }
    let response = app.post(ROUTE, &chat(None, "hi", false, json!({}))).await;
    assert_eq!(response.status(), 200);
}

async fn set_billing_mode(app: &TestApp, mode: &str) {
    let (status, _) = app
        .admin(
            reqwest::Method::PATCH,
            "/admin/v1/accounts/1",
            &app.admin_token(Role::Admin),
            Some(json!({ "billing_mode": mode })),
        )
        .await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_prompts_are_refused_without_tokenizing_and_estimated_off_the_runtime() {
    let app = TestApp::spawn_with(|c| c.server.max_request_bytes = 8 << 20).await;
    let huge = "a".repeat(4_100_000);
    // A prepaid account with nothing on it: refused at admission (402), which bounds the
    // prompt by its bytes and tokenizes nothing.
    set_billing_mode(&app, "prepaid").await;
    let body = chat(None, &huge, false, json!({}));
    // Tokenizing these four on the async workers took 6.5 s each: a liveness bound far
    // above what the byte bound takes, and far below what tokenizing would.
    let refused = tokio::time::timeout(
        Duration::from_secs(5),
        futures_util::future::join_all((0..4).map(|_| app.post(ROUTE, &body))),
    )
    .await
    .expect("refusing never waits for a tokenizer");
    for response in refused {
        assert_eq!(response.status(), 402);
    }
    // Postpaid again, and a backend that reports no usage: the estimate of 4 MB of prompt
    // runs on a blocking thread while the gateway answers others.
    set_billing_mode(&app, "postpaid").await;
    let body = chat(None, &huge, false, json!({"usage": false}));
    let big = futures_util::future::join_all((0..4).map(|_| app.post(ROUTE, &body)));
    let health = async {
        for _ in 0..10 {
            // Liveness, not speed: blocked workers held /healthz for 13.8 s.
            let r = tokio::time::timeout(
                Duration::from_secs(3),
                app.client.get(app.url("/healthz")).send(),
            )
            .await
            .expect("the runtime answers while prompts are estimated")
            .unwrap();
            assert_eq!(r.status(), 200);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let (responses, ()) = tokio::join!(big, health);
    for response in responses {
        assert_eq!(response.status(), 200);
        let record = app.record_of(&response).await;
        assert_eq!(record.usage_source, "estimated");
        assert!(
            record.prompt_tokens > 0 && record.prompt_tokens <= 4_100_000 + 16,
            "bounded by the bytes: {}",
            record.prompt_tokens
        );
    }
}
