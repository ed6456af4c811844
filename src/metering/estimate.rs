//! Token estimates for when a backend reports no usage: a real BPE tokenizer (cl100k_base)
//! over the request's prompt and the text actually delivered, never over error text.

use std::sync::OnceLock;

use serde_json::Value;
use tiktoken_rs::CoreBPE;

use crate::config::Endpoint;

static TOKENIZER: OnceLock<CoreBPE> = OnceLock::new();

fn tokenizer() -> &'static CoreBPE {
    TOKENIZER
        .get_or_init(|| tiktoken_rs::cl100k_base().expect("cl100k_base ships with tiktoken-rs"))
}

/// Loads the tokenizer ahead of the first estimate (it takes a moment to build).
pub fn warm_up() {
    tokenizer();
}

pub fn count_text(text: &str) -> u64 {
    if text.is_empty() {
        return 0;
    }
    tokenizer().encode_ordinary(text).len() as u64
}

/// Prompt tokens of a request body, following OpenAI's accounting for chat: each message
/// costs its text plus 3 tokens of framing, and the reply is primed with 3 more.
pub fn prompt_tokens(endpoint: Endpoint, body: &serde_json::Map<String, Value>) -> u64 {
    match endpoint {
        Endpoint::Chat => {
            let Some(messages) = body.get("messages").and_then(Value::as_array) else {
                return 0;
            };
            let mut tokens = 3;
            for message in messages {
                tokens += 3;
                let mut text = String::new();
                collect_text(message.get("content"), &mut text);
                if let Some(name) = message.get("name").and_then(Value::as_str) {
                    text.push_str(name);
                    tokens += 1;
                }
                tokens += count_text(&text);
            }
            tokens
        }
        Endpoint::Embeddings => {
            let mut text = String::new();
            collect_text(body.get("input"), &mut text);
            count_text(&text)
        }
        Endpoint::Rerank => {
            let mut text = String::new();
            collect_text(body.get("query"), &mut text);
            text.push('\n');
            collect_text(body.get("documents"), &mut text);
            count_text(&text)
        }
    }
}

/// Appends every piece of text in a content value: a string, an array of strings, or an
/// array of `{"type":"text","text":...}` parts (one per line). A plain string is appended
/// as it is, so stream deltas concatenate into the text the client saw.
pub fn collect_text(value: Option<&Value>, out: &mut String) {
    match value {
        Some(Value::String(s)) => out.push_str(s),
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push('\n');
                }
                match item {
                    Value::Object(part) => collect_text(part.get("text"), out),
                    other => collect_text(Some(other), out),
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn counts_are_those_of_the_real_tokenizer() {
        assert_eq!(count_text("hello world"), 2);
        assert_eq!(count_text(""), 0);
    }

    #[test]
    fn chat_prompts_include_message_framing() {
        let body = json!({"messages": [
            {"role": "user", "content": "hello world"},
            {"role": "user", "content": [{"type": "text", "text": "hello world"}]}
        ]});
        // 3 priming + 2 * (3 framing + "hello world" = 2 tokens)
        assert_eq!(prompt_tokens(Endpoint::Chat, body.as_object().unwrap()), 13);
    }
}
