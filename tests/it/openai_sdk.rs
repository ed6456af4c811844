//! The official OpenAI Python SDK, pointed at tollgate, does not notice the difference, even
//! on a chip that streams bare JSON (`helpers::python` runs it).

use crate::helpers;

use helpers::{TestApp, expected_cost};

#[tokio::test(flavor = "multi_thread")]
async fn the_official_openai_sdk_works_on_every_base_url_and_each_call_is_recorded() {
    let app = TestApp::spawn().await;
    let results = helpers::python::run("sdk_client.py", &app).await;

    for case in [
        "v1_plain",
        "maas_v1_stream",
        "mxn_bare_json_stream",
        "mxn_plain",
        "usage_asked",
    ] {
        let result = &results[case];
        assert_eq!(
            result["text"], "我是无问天权。",
            "{case}: the text the SDK assembled"
        );
        let record = app.record(result["request_id"].as_str().unwrap()).await;
        assert_eq!(
            (record.status.as_str(), record.usage_source.as_str()),
            ("ok", "reported"),
            "{case}"
        );
        assert_eq!(
            (record.prompt_tokens, record.completion_tokens),
            (22, 18),
            "{case}"
        );
        let (input, output) = match record.chip.as_str() {
            "chip3" => ("0.0006", "0.0012"),
            "nvidia" => ("0.0012", "0.0024"),
            _ => ("0.0010", "0.0020"),
        };
        assert_eq!(
            record.cost,
            expected_cost(22, 0, 18, input, input, output),
            "{case}"
        );
    }
    assert_eq!(results["mxn_bare_json_stream"]["chunks"], 4);
    // Routed by the cheapest policy to chip3, which streams bare JSON.
    assert_eq!(
        app.record(results["maas_v1_stream"]["request_id"].as_str().unwrap())
            .await
            .chip,
        "chip3"
    );
    assert_eq!(results["usage_asked"]["usage"]["total_tokens"], 40);

    assert_eq!(results["inband_error"]["raised"], "APIError");
    assert_eq!(
        results["inband_error"]["message"],
        "model overloaded, please retry"
    );
    assert_eq!(results["backend_401"]["status"], 502);
    assert!(
        results["models"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m == "megrez-7b-instruct")
    );
}
