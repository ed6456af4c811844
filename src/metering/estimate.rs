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

/// Bytes of text one estimate tokenizes at most; the rest is counted at the rate of what
/// was tokenized. Tokenizing is slow on some texts (a long run of one letter takes over a
/// microsecond a byte), so this bounds the time an estimate takes.
pub const SAMPLE_BYTES: usize = 128 << 10;

/// Tokens of `text` (see `SAMPLE_BYTES` for long texts). Slow for long texts: call it off
/// the async workers.
pub fn count_text(text: &str) -> u64 {
    let mut budget = SAMPLE_BYTES;
    count_within(text, &mut budget)
}

/// Tokenizes `text` while `budget` bytes last, and extrapolates the rest.
fn count_within(text: &str, budget: &mut usize) -> u64 {
    if text.is_empty() {
        return 0;
    }
    let mut end = text.len().min(*budget);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    *budget -= end;
    if end == 0 {
        // Nothing left to tokenize: bytes bound tokens for a byte-level BPE.
        return text.len() as u64;
    }
    let counted = tokenizer().encode_ordinary(&text[..end]).len() as u128;
    if end == text.len() {
        return counted as u64;
    }
    let whole = counted * text.len() as u128;
    u64::try_from(whole.div_ceil(end as u128)).unwrap_or(u64::MAX)
}

/// Tokens an image in a prompt is counted as (an `image_url` part, by URL or base64): a
/// high-detail 1024 × 1024 image in OpenAI's accounting (765), rounded up. Reservations,
/// holds and estimates all use it; the backend's reported usage is what is billed.
pub const IMAGE_TOKENS: u64 = 1024;

/// The `image_url` parts of a message's content.
pub fn images_in(content: Option<&Value>) -> u64 {
    content
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|part| part.get("type").and_then(Value::as_str) == Some("image_url"))
        .count() as u64
}

/// Counts tokens of a prompt's parts within one `SAMPLE_BYTES` budget.
pub struct Counter {
    budget: usize,
}

impl Default for Counter {
    fn default() -> Self {
        Counter {
            budget: SAMPLE_BYTES,
        }
    }
}

impl Counter {
    /// Tokens of `text`.
    pub fn text(&mut self, text: &str) -> u64 {
        count_within(text, &mut self.budget)
    }

    /// Tokens of the text in a content value (`collect_text`).
    pub fn content(&mut self, value: Option<&Value>) -> u64 {
        let mut text = String::new();
        collect_text(value, &mut text);
        self.text(&text)
    }

    /// Chat messages in OpenAI's accounting: each costs its text plus 3 tokens of framing
    /// (and `IMAGE_TOKENS` per image), and the reply is primed with 3 more.
    pub fn messages(&mut self, messages: Option<&Value>) -> u64 {
        let Some(messages) = messages.and_then(Value::as_array) else {
            return 0;
        };
        let mut tokens = 3u64;
        for message in messages {
            tokens = tokens.saturating_add(3);
            let mut text = String::new();
            collect_text(message.get("content"), &mut text);
            if let Some(name) = message.get("name").and_then(Value::as_str) {
                text.push_str(name);
                tokens = tokens.saturating_add(1);
            }
            if let Some(calls) = message.get("tool_calls") {
                text.push_str(&calls.to_string());
            }
            let images = images_in(message.get("content"));
            tokens = tokens
                .saturating_add(self.text(&text))
                .saturating_add(images.saturating_mul(IMAGE_TOKENS));
        }
        tokens
    }
}

/// Prompt tokens of an OpenAI-shaped request body, following OpenAI's accounting for chat
/// (`Counter::messages`; tool definitions count as their JSON text). At most
/// `SAMPLE_BYTES` of the prompt are tokenized. Bodies of a dialect's own shape are counted
/// by that dialect (`dialect::Wire::prompt_tokens`).
pub fn prompt_tokens(endpoint: Endpoint, body: &serde_json::Map<String, Value>) -> u64 {
    let mut count = Counter::default();
    match endpoint {
        Endpoint::Chat => {
            let tools = ["tools", "functions"]
                .into_iter()
                .filter_map(|name| body.get(name))
                .map(|tools| count.text(&tools.to_string()))
                .fold(0u64, u64::saturating_add);
            count.messages(body.get("messages")).saturating_add(tools)
        }
        Endpoint::Images => count.content(body.get("prompt")),
        Endpoint::Embeddings => count.content(body.get("input")),
        Endpoint::Rerank => {
            let mut text = String::new();
            collect_text(body.get("query"), &mut text);
            text.push('\n');
            collect_text(body.get("documents"), &mut text);
            count.text(&text)
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
    fn long_texts_are_sampled_and_extrapolated_quickly() {
        let text = "a".repeat(4 << 20);
        let tokens = count_text(&text);
        // Extrapolated from the sample; never above the byte count.
        assert!(tokens > 0 && tokens <= text.len() as u64, "{tokens}");
        let sample = count_text(&text[..SAMPLE_BYTES]);
        assert_eq!(tokens, sample * 32);
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
