//! `http1` against what it must do, and against hyper's client reading the same bytes.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

/// What reading an answer gave: status, headers, body, and whether the connection could
/// carry another request.
type Read = (StatusCode, HeaderMap, Vec<u8>, bool);

/// Reads `wire` as the answer to a `method`, handed over `split` bytes at a time; the
/// backend closes the connection after the last byte when `closes`.
fn read(wire: &[u8], method: &Method, split: usize, closes: bool) -> Result<Read, WireError> {
    let mut pieces = wire.chunks(split.max(1));
    let mut buf = BytesMut::new();
    let head = loop {
        if let Some(head) = take_head(&mut buf, method)? {
            break head;
        }
        match pieces.next() {
            Some(piece) => buf.extend_from_slice(piece),
            None => return Err(WireError::Closed),
        }
    };
    let mut decoder = Decoder::new(head.body);
    let mut body = Vec::new();
    loop {
        match decoder.step(&mut buf)? {
            Step::Data(data) => body.extend_from_slice(&data),
            Step::End => break,
            Step::More => match pieces.next() {
                Some(piece) => buf.extend_from_slice(piece),
                None if closes => match decoder.closed()? {
                    Step::End => break,
                    step => panic!("{step:?} at the close"),
                },
                None => return Err(WireError::Closed),
            },
        }
    }
    let reusable = head.keep_alive && decoder.ended() && buf.is_empty();
    Ok((head.status, head.headers, body, reusable))
}

fn post(headers: &[(&str, &str)], body: &'static [u8]) -> String {
    let mut request = Request::post("/v1/chat/completions?x=1");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let head = request_head(&request.body(Bytes::from_static(body)).unwrap());
    String::from_utf8(head).unwrap()
}

#[test]
fn a_request_head_has_the_callers_headers_in_order_and_the_bodys_length() {
    let head = post(&[("host", "b:9"), ("x-a", "1"), ("x-a", "2")], b"{}");
    assert_eq!(
        head,
        "POST /v1/chat/completions?x=1 HTTP/1.1\r\nhost: b:9\r\nx-a: 1\r\nx-a: 2\r\ncontent-length: 2\r\n\r\n"
    );
    // A length or a coding of the caller's is not sent: the body is whole.
    let head = post(
        &[("content-length", "99"), ("transfer-encoding", "chunked")],
        b"abc",
    );
    assert_eq!(
        head,
        "POST /v1/chat/completions?x=1 HTTP/1.1\r\ncontent-length: 3\r\n\r\n"
    );
    assert!(post(&[], b"").ends_with("content-length: 0\r\n\r\n"));
    let get = Request::get("/v1/tasks/7").body(Bytes::new()).unwrap();
    assert_eq!(request_head(&get), b"GET /v1/tasks/7 HTTP/1.1\r\n\r\n");
}

#[test]
fn an_answer_is_framed_as_rfc_9112_says() {
    let post = Method::POST;
    let ok = |wire: &str| read(wire.as_bytes(), &post, usize::MAX, true).unwrap();
    let (status, headers, body, reusable) =
        ok("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\ncontent-length: 2\r\n\r\nhi");
    assert_eq!(
        (status, body.as_slice(), reusable),
        (StatusCode::OK, &b"hi"[..], true)
    );
    assert_eq!(headers["content-type"], "text/plain");
    // Chunks, with an extension, spaces after a size and a trailer.
    let (_, _, body, reusable) = ok(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n1 \t\r\n!\r\n0\r\nx-t: 1\r\n\r\n",
    );
    assert_eq!((body.as_slice(), reusable), (&b"hello!"[..], true));
    // Sizes with leading zeros, up to what a u64 holds.
    let (_, _, body, _) = ok(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n00000000000000000002\r\nhi\r\n0\r\n\r\n",
    );
    assert_eq!(body, b"hi");
    // No length: the body ends with the connection, which is not reused.
    let (_, _, body, reusable) = ok("HTTP/1.1 200 OK\r\n\r\nto the end");
    assert_eq!((body.as_slice(), reusable), (&b"to the end"[..], false));
    // A coding other than chunked last: to the close as well.
    let (_, _, body, reusable) =
        ok("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\nzz");
    assert_eq!((body.as_slice(), reusable), (&b"zz"[..], false));
    // Chunks and a length: the chunks win, and the connection is not trusted after.
    let (_, _, body, reusable) = ok(
        "HTTP/1.1 200 OK\r\nContent-Length: 9\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\n",
    );
    assert_eq!((body.as_slice(), reusable), (&b"a"[..], false));
    // Repeats of one length are one length.
    let (_, _, body, _) =
        ok("HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\nContent-Length: 2\r\n\r\nab");
    assert_eq!(body, b"ab");
    // Informational answers are passed over.
    let (status, _, body, _) = ok(
        "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: x\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 1\r\n\r\nk",
    );
    assert_eq!((status, body.as_slice()), (StatusCode::CREATED, &b"k"[..]));
    // No body after 204, 304, or for HEAD, whatever the headers say.
    for (wire, method) in [
        (
            "HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n",
            &post,
        ),
        ("HTTP/1.1 304 Not Modified\r\n\r\n", &post),
        (
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
            &Method::HEAD,
        ),
    ] {
        let (_, _, body, reusable) = read(wire.as_bytes(), method, usize::MAX, false).unwrap();
        assert_eq!((body.len(), reusable), (0, true), "{wire}");
    }
    // Keep-alive: HTTP/1.1 unless `close`; HTTP/1.0 only if asked.
    for (wire, reused) in [
        (
            "HTTP/1.1 200 OK\r\nConnection: Close\r\ncontent-length: 0\r\n\r\n",
            false,
        ),
        (
            "HTTP/1.1 200 OK\r\nconnection: upgrade, close\r\ncontent-length: 0\r\n\r\n",
            false,
        ),
        ("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n", false),
        (
            "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n",
            true,
        ),
    ] {
        assert_eq!(ok(wire).3, reused, "{wire}");
    }
    // Bytes after the body: the connection is not reused.
    assert!(!ok("HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nab").3);
}

#[test]
fn answers_that_break_the_rules_are_refused() {
    for wire in [
        "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nab",
        "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 1 2\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: \r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n",
        "HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n",
        "HTTP/1.1 2000 OK\r\n\r\n",
        "HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\r\n",
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nx\r\n",
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n10000000000000000\r\n",
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\nA\r\n0\r\n\r\n",
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\nAB\r\n0\r\n\r\n",
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1;a\nb\r\nA\r\n0\r\n\r\n",
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1 2\r\nA\r\n0\r\n\r\n",
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\rx",
    ] {
        let read = read(wire.as_bytes(), &Method::POST, usize::MAX, true);
        assert!(
            matches!(read, Err(WireError::Invalid(_))),
            "{wire:?}: {read:?}"
        );
    }
    // Cut off: before the head ends, or the body.
    for wire in [
        "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nab",
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nab\r\n",
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n",
    ] {
        let read = read(wire.as_bytes(), &Method::POST, usize::MAX, true);
        assert!(matches!(read, Err(WireError::Closed)), "{wire:?}: {read:?}");
    }
    // A head too long, or with too many headers; chunk extensions past their limit.
    let long = format!("HTTP/1.1 200 OK\r\nx: {}\r\n\r\n", "a".repeat(MAX_HEAD));
    let many = format!(
        "HTTP/1.1 200 OK\r\n{}\r\n",
        "x: 1\r\n".repeat(MAX_HEADERS + 1)
    );
    let extended = format!(
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n{}0\r\n\r\n",
        format!("1;{}\r\na\r\n", "e".repeat(1000)).repeat(20)
    );
    for wire in [long, many, extended] {
        let read = read(wire.as_bytes(), &Method::POST, 4096, true);
        assert!(matches!(read, Err(WireError::Invalid(_))), "{read:?}");
    }
}

#[test]
fn a_stream_may_have_any_number_of_chunks_but_not_of_extensions() {
    let wire = |chunk: &str, n: usize| {
        let mut wire = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_string();
        wire.push_str(&chunk.repeat(n));
        wire.push_str("0\r\n\r\n");
        wire
    };
    // Ten thousand events: far more line ends and sizes than extensions may take.
    let events = wire("9\r\ndata: x\n\n\r\n", 10_000);
    let (_, _, body, reusable) = read(events.as_bytes(), &Method::POST, 4096, false).unwrap();
    assert_eq!((body.len(), reusable), (90_000, true));
    // Extensions and trailers share 16 KB.
    // (13 bytes of extension a chunk.)
    let extended = wire("1;e=0123456789\r\na\r\n", 1_200);
    assert!(read(extended.as_bytes(), &Method::POST, 4096, false).is_ok());
    let extended = wire("1;e=0123456789\r\na\r\n", 1_300);
    let refused = read(extended.as_bytes(), &Method::POST, 4096, false);
    assert!(matches!(refused, Err(WireError::Invalid(_))), "{refused:?}");
    let trailer = format!("x-t: {}\r\n", "t".repeat(100)).repeat(200);
    let trailed =
        format!("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n{trailer}\r\n");
    let refused = read(trailed.as_bytes(), &Method::POST, 4096, false);
    assert!(matches!(refused, Err(WireError::Invalid(_))), "{refused:?}");
}

#[test]
fn an_answer_reads_the_same_whatever_pieces_it_comes_in() {
    let wire = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
        1b;ext=\"v\"\r\ndata: {\"choices\":[]}\n\n12345\r\n0\r\nx-trailer: 1\r\n\r\n";
    let whole = read(wire, &Method::POST, usize::MAX, false).unwrap();
    assert_eq!(whole.2, b"data: {\"choices\":[]}\n\n12345");
    for split in 1..wire.len() {
        assert_eq!(
            read(wire, &Method::POST, split, false).unwrap(),
            whole,
            "{split}"
        );
    }
}

/// An answer for the comparison with hyper: a status line, headers that frame the body
/// in every way (and in wrong ways), and a body.
fn random_answer(rng: &mut StdRng) -> Vec<u8> {
    let mut wire = Vec::new();
    let version = if rng.random_bool(0.1) { "1.0" } else { "1.1" };
    if rng.random_bool(0.1) {
        wire.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
    }
    let status = [200, 200, 201, 204, 304, 400, 429, 500, 503][rng.random_range(0..9)];
    wire.extend_from_slice(format!("HTTP/{version} {status} Whatever\r\n").as_bytes());
    let body: Vec<u8> = (0..rng.random_range(0..40))
        .map(|_| b"ab{}\" \r\n0"[rng.random_range(0..9)])
        .collect();
    let chunked = rng.random_bool(0.5);
    let mut headers = vec!["content-type: text/event-stream".to_string()];
    if chunked {
        let coding = [
            "chunked",
            "Chunked",
            "gzip, chunked",
            "chunked, gzip",
            "chunked ",
        ];
        headers.push(format!(
            "transfer-encoding: {}",
            coding[rng.random_range(0..5)]
        ));
    }
    if !chunked || rng.random_bool(0.1) {
        match rng.random_range(0..8) {
            0 => {}
            1 => headers.push(format!("content-length: {}, {}", body.len(), body.len())),
            2 => headers.push(format!("content-length: {}", body.len() + 1)),
            3 => headers.push("content-length: x".into()),
            _ => headers.push(format!("content-length: {}", body.len())),
        }
    }
    if rng.random_bool(0.2) {
        headers.push("connection: close".into());
    }
    for header in headers {
        wire.extend_from_slice(header.as_bytes());
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b"\r\n");
    if !chunked {
        wire.extend_from_slice(&body);
        return wire;
    }
    let mut rest = body.as_slice();
    while !rest.is_empty() {
        let n = rng.random_range(1..=rest.len());
        let size = match rng.random_range(0..6) {
            0 => format!("{n:X}"),
            1 => format!("000{n:x}"),
            2 => format!("{n:x} ;name=value"),
            3 => format!("{n:x};e"),
            _ => format!("{n:x}"),
        };
        wire.extend_from_slice(size.as_bytes());
        wire.extend_from_slice(b"\r\n");
        wire.extend_from_slice(&rest[..n]);
        wire.extend_from_slice(b"\r\n");
        rest = &rest[n..];
    }
    wire.extend_from_slice(if rng.random_bool(0.2) {
        b"0\r\nx-trailer: yes\r\n\r\n"
    } else {
        b"0\r\n\r\n"
    });
    wire
}

/// Reads `wire` with hyper's client, as tollgate's backends were read before `http1`.
async fn read_with_hyper(wire: Vec<u8>) -> Option<(StatusCode, HeaderMap, Vec<u8>)> {
    use http_body_util::{BodyExt, Full};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (client, mut server) = tokio::io::duplex(1 << 16);
    let serve = tokio::spawn(async move {
        let mut request = [0u8; 1024];
        let _ = server.read(&mut request).await;
        let _ = server.write_all(&wire).await;
        // The backend closes its end.
    });
    let io = hyper_util::rt::TokioIo::new(client);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.ok()?;
    tokio::spawn(conn);
    let request = Request::post("/").body(Full::new(Bytes::from_static(b"{}")));
    let answer = sender.send_request(request.unwrap()).await;
    let _ = serve.await;
    let (head, body) = answer.ok()?.into_parts();
    let body = body.collect().await.ok()?.to_bytes();
    Some((head.status, head.headers, body.to_vec()))
}

#[tokio::test]
async fn answers_whole_and_broken_read_as_hyper_reads_them() {
    let mut rng = StdRng::seed_from_u64(29);
    let (mut agreed, mut refused) = (0, 0);
    for case in 0..3000 {
        let mut wire = random_answer(&mut rng);
        if case % 2 == 1 {
            crate::dialect::json::break_bytes(&mut rng, &mut wire);
        }
        let ours = read(&wire, &Method::POST, rng.random_range(1..64), true)
            .ok()
            .map(|(status, headers, body, _)| (status, headers, body));
        let theirs = read_with_hyper(wire.clone()).await;
        assert_eq!(
            ours,
            theirs,
            "case {case}: {:?}",
            String::from_utf8_lossy(&wire)
        );
        match ours {
            Some(_) => agreed += 1,
            None => refused += 1,
        }
    }
    // Both kinds were tried.
    assert!(
        agreed > 1000 && refused > 300,
        "{agreed} read, {refused} refused"
    );
}
