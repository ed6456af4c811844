//! The request side's unit tests: body patching, parsing and bounds.

use super::*;

/// A body parsed as an OpenAI route of `endpoint` would parse it.
fn parse(endpoint: Endpoint, raw: Bytes) -> Result<ClientRequest, ApiError> {
    ClientRequest::parse(crate::dialect::named("openai").unwrap(), endpoint, raw)
}

/// A body parsed as the first route of `dialect` that sends requests would parse it.
fn parse_as(dialect: &str, raw: Bytes) -> Result<ClientRequest, ApiError> {
    let wire = crate::dialect::named(dialect).unwrap();
    let call = wire.routes().iter().find_map(|route| match route.does {
        crate::dialect::Does::Send(call, _) => Some(call),
        _ => None,
    });
    ClientRequest::parse(wire, call.unwrap(), raw)
}

fn patched(body: &str, include_usage: bool) -> String {
    let request = parse(Endpoint::Chat, Bytes::from(body.to_owned())).unwrap();
    String::from_utf8(request.patched("up-model", include_usage, None).to_vec()).unwrap()
}

#[test]
fn the_model_is_replaced_in_place_and_everything_else_passes_through() {
    assert_eq!(
        patched(
            r#"{"messages":[{"role":"user","content":"hi"}],"model":"m","n":1}"#,
            false
        ),
        r#"{"messages":[{"role":"user","content":"hi"}],"model":"up-model","n":1}"#
    );
    assert_eq!(
        patched(r#"{"input":"x"}"#, false),
        r#"{"input":"x","model":"up-model"}"#
    );
}

#[test]
fn values_pass_through_as_written() {
    // Numbers beyond f64, escapes and spacing inside values are not rewritten.
    assert_eq!(
        patched(
            "{ \"seed\" : 123456789012345678901234567890 , \"s\\u00e9\": \"\\u00e9\\n\", \"model\": \"m\",\n \"x\": [1, 2.50]}",
            false
        ),
        "{\"seed\":123456789012345678901234567890,\"sé\":\"\\u00e9\\n\",\"model\":\"up-model\",\"x\":[1, 2.50]}"
    );
}

#[test]
fn a_body_with_nothing_to_change_goes_as_it_came_without_a_copy() {
    let raw = Bytes::from_static(b"{ \"model\": \"up-model\", \"messages\": [] }");
    let request = parse(Endpoint::Chat, raw.clone()).unwrap();
    let sent = request.patched("up-model", false, None);
    assert_eq!((sent.as_ptr(), sent.len()), (raw.as_ptr(), raw.len()));
    // Any change, or a name sent twice, and the body is written anew.
    let changed = [
        request.patched("other", false, None),
        request.patched("up-model", true, None),
        request.patched("up-model", false, Some(16)),
    ];
    for body in changed {
        assert_ne!(body.as_ptr(), raw.as_ptr());
    }
    let twice = Bytes::from_static(br#"{"model":"a","model":"up-model"}"#);
    let request = parse(Endpoint::Chat, twice).unwrap();
    let sent = request.patched("up-model", false, None);
    assert_eq!(&sent[..], br#"{"model":"up-model"}"#);
}

#[test]
fn a_repeated_name_keeps_its_first_place_and_last_value() {
    assert_eq!(
        patched(r#"{"n":1,"model":"a","n":2}"#, false),
        r#"{"n":2,"model":"up-model"}"#
    );
}

#[test]
fn nesting_is_counted_outside_strings_only() {
    let deep = |levels: usize| {
        format!(
            r#"{{"s":"[[{{\"[","v":{}1{}}}"#,
            "[".repeat(levels),
            "]".repeat(levels)
        )
    };
    assert!(!nests_deeper(deep(127).as_bytes(), MAX_DEPTH));
    assert!(nests_deeper(deep(128).as_bytes(), MAX_DEPTH));
    // A string that ends in an escaped backslash ends at the quote after it.
    let after_backslash = |levels: usize| {
        format!(
            r#"{{"s":"x\\","v":{}1{}}}"#,
            "[".repeat(levels),
            "]".repeat(levels)
        )
    };
    assert!(!nests_deeper(after_backslash(127).as_bytes(), MAX_DEPTH));
    assert!(nests_deeper(after_backslash(128).as_bytes(), MAX_DEPTH));
    // Brackets inside strings, escaped quotes among them, count for nothing.
    let in_strings = format!(
        r#"{{"s":"{}\"{}","t":"\\"}}"#,
        "[".repeat(300),
        "{".repeat(300)
    );
    assert!(!nests_deeper(in_strings.as_bytes(), MAX_DEPTH));
    let refused = parse(Endpoint::Chat, Bytes::from(deep(500)));
    assert!(matches!(refused, Err(ApiError::InvalidJson(m)) if m.contains("deeper than 128")));
    assert!(parse(Endpoint::Chat, Bytes::from(deep(100))).is_ok());
}

#[test]
fn many_members_keep_their_order_and_repeats_keep_the_last_value() {
    let names: Vec<String> = (0..40).map(|i| format!("k{i}")).collect();
    let mut body: Vec<String> = names.iter().map(|n| format!("\"{n}\":1")).collect();
    body.push(r#""k3":2"#.into());
    body.push(r#""k39":3"#.into());
    let sent = format!("{{{}}}", body.join(","));
    let request = parse(Endpoint::Chat, Bytes::from(sent)).unwrap();
    assert_eq!(request.value("k3"), Some(Value::from(2)));
    assert_eq!(request.value("k39"), Some(Value::from(3)));
    assert_eq!(request.value("k40"), None);
    let upstream: Map<String, Value> =
        serde_json::from_slice(&request.patched("up-model", false, None)).unwrap();
    let order: Vec<&String> = upstream.keys().collect();
    assert_eq!(order.len(), 41);
    assert!(order[..40].iter().zip(&names).all(|(a, b)| *a == b));
    assert_eq!(upstream["k3"], 2);
}

#[test]
fn include_usage_is_added_to_what_the_client_sent() {
    assert_eq!(
        patched(r#"{"model":"m","stream":true}"#, true),
        r#"{"model":"up-model","stream":true,"stream_options":{"include_usage":true}}"#
    );
    assert_eq!(
        patched(
            r#"{"stream_options":{"include_usage":false,"x":1},"model":"m"}"#,
            true
        ),
        r#"{"stream_options":{"include_usage":true,"x":1},"model":"up-model"}"#
    );
    assert_eq!(
        patched(r#"{"stream_options":{"x":1}}"#, true),
        r#"{"stream_options":{"x":1,"include_usage":true},"model":"up-model"}"#
    );
    assert_eq!(
        patched(r#"{"stream_options":"odd"}"#, true),
        r#"{"stream_options":{"include_usage":true},"model":"up-model"}"#
    );
}

#[test]
fn bodies_that_are_not_one_object_are_refused_with_the_reason() {
    let refused = |body: &[u8]| match parse(Endpoint::Chat, Bytes::copy_from_slice(body)) {
        Err(ApiError::InvalidJson(message)) => message,
        other => panic!("{other:?}"),
    };
    assert_eq!(refused(b"[1]"), "the body must be a JSON object");
    assert_eq!(refused(b"\"x\""), "the body must be a JSON object");
    assert!(refused(b"{\"a\":1} {}").contains("trailing"));
    let invalid_utf8 = refused(b"{\"a\":\"\xff\"}");
    assert!(invalid_utf8.contains("unicode"), "{invalid_utf8}");
    assert!(refused(b"{\"a\":[1,}").contains("line 1"));
}

#[test]
fn the_fields_tollgate_reads_are_parsed() {
    let request = parse(
        Endpoint::Chat,
        Bytes::from_static(
            br#"{"model":"m","stream":true,"stream_options":{"include_usage":true},
                 "messages":[{"role":"user","content":"hello world"}],"max_tokens":7}"#,
        ),
    )
    .unwrap();
    assert_eq!(request.model().unwrap(), "m");
    assert!(request.stream && request.wants_stream_usage);
    assert_eq!(request.max_tokens, Some(7));
    assert_eq!(request.prompt().estimate(), 3 + 3 + 2);
    assert!(request.prompt_bound() >= request.prompt().estimate());
    let bad = parse(Endpoint::Chat, Bytes::from_static(br#"{"stream":1}"#));
    assert!(matches!(bad, Err(ApiError::InvalidRequest { .. })));
}

#[test]
fn client_numbers_are_bounded_at_parse_time() {
    let parse = |body: &str| super::tests::parse(Endpoint::Chat, Bytes::from(body.to_owned()));
    let huge = parse(r#"{"max_tokens":18446744073709551615}"#).unwrap();
    assert_eq!(huge.max_tokens, Some(MAX_COMPLETION_TOKENS));
    let beyond = parse(r#"{"max_completion_tokens":99999999999999999999999}"#).unwrap();
    assert_eq!(beyond.max_tokens, Some(MAX_COMPLETION_TOKENS));
    assert_eq!(parse(r#"{"n":3}"#).unwrap().choices, 3);
    for bad in [
        r#"{"max_tokens":-1}"#,
        r#"{"max_tokens":0}"#,
        r#"{"max_tokens":1.5}"#,
        r#"{"max_tokens":"100"}"#,
        r#"{"n":0}"#,
        r#"{"n":129}"#,
        r#"{"n":18446744073709551616}"#,
    ] {
        let err = parse(bad).unwrap_err();
        assert!(
            matches!(err, ApiError::InvalidRequest { .. }),
            "{bad}: {err}"
        );
    }
}

#[test]
fn the_prompt_bound_is_never_below_the_tokenizer() {
    let bodies = [
        r#"{"messages":[{},{},{}]}"#,
        r#"{"messages":[{"role":"user","content":"你好，世界 \u00e9\n"},{"role":"user","name":"x","content":"a"}]}"#,
        r#"{"input":["hello world","aaaaaaaaaaaaaaaaaaaaaaaaaaaa"]}"#,
    ];
    for body in bodies {
        let endpoint = if body.contains("input") {
            Endpoint::Embeddings
        } else {
            Endpoint::Chat
        };
        let request = parse(endpoint, Bytes::from(body.to_owned())).unwrap();
        assert!(
            request.prompt_bound() >= request.prompt().estimate(),
            "{body}"
        );
    }
}

fn json() -> impl proptest::strategy::Strategy<Value = Value> {
    use proptest::prelude::*;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            proptest::collection::btree_map(any::<String>(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]
    /// Whatever object a client sends, compact or pretty, the backend gets the same
    /// object with only `model` (and, if asked, `include_usage`) changed.
    #[test]
    fn the_upstream_body_is_the_clients_object_with_model_replaced(
        members in proptest::collection::btree_map(proptest::prelude::any::<String>(), json(), 0..8),
        pretty in proptest::prelude::any::<bool>(),
    ) {
        // Members tollgate checks (a request with odd ones is refused): not part of this test.
        let checked = ["stream", "n", "max_tokens", "max_completion_tokens"];
        let sent: Map<String, Value> = members
            .into_iter()
            .filter(|(name, _)| !checked.contains(&name.as_str()))
            .collect();
        let text = if pretty {
            serde_json::to_string_pretty(&sent).unwrap()
        } else {
            serde_json::to_string(&sent).unwrap()
        };
        let request = parse(Endpoint::Chat, Bytes::from(text.clone())).unwrap();
        let upstream: Map<String, Value> =
            serde_json::from_slice(&request.patched("up-model", false, None)).unwrap();
        // Read back the way the backend would read what the client sent (serde_json's
        // float parsing is not exact; the bytes themselves pass through unchanged).
        let mut expected: Map<String, Value> = serde_json::from_str(&text).unwrap();
        expected.insert("model".into(), Value::from("up-model"));
        proptest::prop_assert_eq!(upstream, expected);
    }
}

#[test]
fn dashscope_keeps_its_limits_in_parameters() {
    let body = r#"{"model":"qwen-plus","input":{"prompt":"hi"},"parameters":{"n":2,"seed":7}}"#;
    let request = parse_as("dashscope", Bytes::from(body)).unwrap();
    assert_eq!((request.max_tokens, request.choices), (None, 2));
    assert_eq!(request.worst_case(100).completion, 200);
    let sent = request.patched("qwen-plus-2025", false, Some(40));
    assert_eq!(
        std::str::from_utf8(&sent).unwrap(),
        r#"{"model":"qwen-plus-2025","input":{"prompt":"hi"},"parameters":{"n":2,"seed":7,"max_tokens":40}}"#
    );
    let body = r#"{"model":"m","input":{},"parameters":{"max_tokens":5}}"#;
    let request = parse_as("dashscope", Bytes::from(body)).unwrap();
    assert_eq!(request.max_tokens, Some(5));
}
