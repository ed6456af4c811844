//! LangChain's OpenAI chat model (`langchain-openai`) as the client, on four of tollgate's
//! base URLs (OpenAI-style, GenStudio's model × chip, Zhipu's, DashScope's compatible
//! mode), invoked and streamed:
//! the text and usage LangChain assembles are the backend's, and each call has one record
//! at its exact cost.

use crate::helpers;

use helpers::{TestApp, expected_cost};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn langchain_works_on_every_base_url_and_each_call_is_billed_exactly() {
    let app = TestApp::spawn().await;
    let results = helpers::python::run("langchain_client.py", &app).await;
    for case in ["v1", "mxn", "zhipu", "dashscope_compatible"] {
        for case in [case.to_string(), format!("{case}_stream")] {
            let result = &results[&case];
            assert_eq!(result["text"], "我是无问天权。", "{case}: {result}");
            assert_eq!(
                result["usage"],
                json!({"input": 22, "output": 18}),
                "{case}"
            );
        }
    }
    app.state.ledger().flush().await.unwrap();
    let records = tollgate::store::listing::list(app.state.db(), &Default::default(), 100)
        .await
        .unwrap();
    assert_eq!(records.len(), 8, "one record per call");
    for (model, chip, input, output) in [
        // The cheapest chip of megrez (chip3), the one the M×N base URL names, glm-4-plus,
        // qwen-plus: sample prices.
        ("megrez-7b-instruct", "chip3", "0.0006", "0.0012"),
        ("megrez-7b-instruct", "nvidia", "0.0012", "0.0024"),
        ("glm-4-plus", "zhipu", "0.005", "0.005"),
        ("qwen-plus", "aliyun", "0.0008", "0.002"),
    ] {
        let of_model: Vec<_> = records
            .iter()
            .filter(|r| r.model == model && r.chip == chip)
            .collect();
        assert_eq!(of_model.len(), 2, "{model}: invoked and streamed");
        assert_eq!(of_model.iter().filter(|r| r.stream).count(), 1, "{model}");
        for record in of_model {
            assert_eq!((record.prompt_tokens, record.completion_tokens), (22, 18));
            assert_eq!(
                record.cost,
                expected_cost(22, 0, 18, input, input, output),
                "{model}"
            );
        }
    }
}
