//! What tollgate learns from a backend's JSON: usage (the last non-empty one wins, never a
//! sum), the text delivered (for estimates), moderation verdicts and in-band errors.

use serde_json::{Map, Value};

use crate::billing::{TokenCounts, Units};
use crate::error::openai_error;
use crate::metering::estimate::collect_text;

/// Everything observed over one response, streamed or not.
#[derive(Debug, Default)]
pub struct Observed {
    /// The last non-empty `usage` seen. Some backends send running totals on every chunk,
    /// so a later one replaces an earlier one.
    pub usage: Option<TokenCounts>,
    /// Text that reached the client: the basis of an estimate when usage never arrives.
    pub delivered_text: String,
    /// A finish reason was seen: the backend says the answer is complete.
    pub finished: bool,
    pub blocked: bool,
    pub moderation: Option<String>,
    /// Images, tasks and compute time the answer reports (dialects that bill them).
    pub units: Units,
}

impl Observed {
    /// Notes usage, finish and moderation from a response or chunk.
    pub fn observe(&mut self, v: &Map<String, Value>) {
        // One pass over the members, as in `parse_usage`.
        for (name, value) in v {
            match name.as_str() {
                "usage" => {
                    if let Some(usage) = parse_usage(value) {
                        self.usage = Some(usage);
                    }
                }
                "blocked" if value.as_bool() == Some(true) => {
                    // Moderation ended the answer: what came before it is the whole answer.
                    self.blocked = true;
                    self.finished = true;
                }
                "moderation" if value.get("sensitive").and_then(Value::as_bool) == Some(true) => {
                    self.moderation = Some(value.to_string());
                }
                "choices" => {
                    let mut choices = value.as_array().into_iter().flatten();
                    self.finished |= choices.any(|c| {
                        c.get("finish_reason")
                            .and_then(Value::as_str)
                            .is_some_and(|r| !r.is_empty())
                    });
                }
                _ => {}
            }
        }
    }

    /// Adds the text of a chunk or response the client received.
    pub fn deliver(&mut self, v: &Map<String, Value>) {
        // One pass over each object, as in `observe`: this runs on every chunk.
        for choice in choices(v).filter_map(Value::as_object) {
            let (mut delta, mut message) = (None, None);
            for (name, value) in choice {
                match name.as_str() {
                    "delta" => delta = Some(value),
                    "message" => message = Some(value),
                    _ => {}
                }
            }
            let Some(part) = delta.or(message).and_then(Value::as_object) else {
                continue;
            };
            let (mut content, mut reasoning, mut calls) = (None, None, None);
            for (name, value) in part {
                match name.as_str() {
                    "content" => content = Some(value),
                    "reasoning_content" => reasoning = Some(value),
                    "tool_calls" => calls = value.as_array(),
                    _ => {}
                }
            }
            collect_text(content, &mut self.delivered_text);
            collect_text(reasoning, &mut self.delivered_text);
            for call in calls.into_iter().flatten() {
                let args = call.get("function").and_then(|f| f.get("arguments"));
                collect_text(args, &mut self.delivered_text);
            }
        }
    }
}

/// The top level of a non-streamed answer, parsed only as far as `Observed::observe` and
/// `as_error` read it: `choices` and `data` (the long part) are checked for syntax and
/// kept as `null`, other keys are checked and left out. `None` if `body` is not a JSON
/// object.
pub fn answer_head(body: &[u8]) -> Option<Map<String, Value>> {
    use std::borrow::Cow;

    use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};

    /// Keys whose values `observe` and `as_error` read.
    const READ: [&str; 9] = [
        "usage",
        "blocked",
        "moderation",
        "error",
        "object",
        "code",
        "msg",
        "message",
        "type",
    ];
    /// Keys whose presence `as_error` (and DashScope's `error`) reads.
    const PRESENT: [&str; 3] = ["choices", "data", "output"];

    /// A key, borrowed from the body unless it has escapes.
    struct Key<'de>(Cow<'de, str>);
    impl<'de> Deserialize<'de> for Key<'de> {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct Text;
            impl<'de> Visitor<'de> for Text {
                type Value = Key<'de>;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a key")
                }
                fn visit_borrowed_str<E>(self, key: &'de str) -> Result<Key<'de>, E> {
                    Ok(Key(Cow::Borrowed(key)))
                }
                fn visit_str<E>(self, key: &str) -> Result<Key<'de>, E> {
                    Ok(Key(Cow::Owned(key.to_owned())))
                }
            }
            deserializer.deserialize_str(Text)
        }
    }

    struct Head;
    impl<'de> Visitor<'de> for Head {
        type Value = Map<String, Value>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut head = Map::new();
            while let Some(Key(key)) = map.next_key()? {
                if READ.contains(&key.as_ref()) {
                    head.insert(key.into_owned(), map.next_value::<Value>()?);
                } else {
                    map.next_value::<IgnoredAny>()?;
                    if PRESENT.contains(&key.as_ref()) {
                        head.insert(key.into_owned(), Value::Null);
                    }
                }
            }
            Ok(head)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let head = de.deserialize_map(Head).ok()?;
    de.end().ok()?;
    Some(head)
}

fn choices(v: &Map<String, Value>) -> impl Iterator<Item = &Value> {
    v.get("choices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

/// Reads a `usage` object. `None` for `null`, `{}` or an object without token counts.
/// `cached_tokens` is part of `prompt_tokens`; reasoning tokens are part of
/// `completion_tokens`: neither is added again. Rerank reports only `total_tokens`.
pub fn parse_usage(usage: &Value) -> Option<TokenCounts> {
    let usage = usage.as_object()?;
    // One pass over the members: a lookup by name hashes the name (serde_json's maps keep
    // their order with SipHash), and this runs for every answer and usage chunk.
    let (mut prompt, mut input, mut completion, mut output) = (None, None, None, None);
    let (mut total, mut cached, mut reasoning, mut output_reasoning) = (None, None, None, None);
    let nested = |details: &Value, name: &str| details.get(name).and_then(Value::as_u64);
    for (name, value) in usage {
        match name.as_str() {
            "prompt_tokens" => prompt = value.as_u64(),
            "input_tokens" => input = value.as_u64(),
            "completion_tokens" => completion = value.as_u64(),
            "output_tokens" => output = value.as_u64(),
            "total_tokens" => total = value.as_u64(),
            "prompt_tokens_details" => cached = nested(value, "cached_tokens"),
            // OpenAI's `completion_tokens_details`, DashScope's `output_tokens_details`.
            "completion_tokens_details" => reasoning = nested(value, "reasoning_tokens"),
            "output_tokens_details" => output_reasoning = nested(value, "reasoning_tokens"),
            _ => {}
        }
    }
    let (prompt, completion) = (prompt.or(input), completion.or(output));
    if prompt.is_none() && completion.is_none() && total.is_none() {
        return None;
    }
    let (prompt, completion) = match (prompt, completion, total) {
        (Some(p), Some(c), _) => (p, c),
        (Some(p), None, Some(t)) => (p, t.saturating_sub(p)),
        (Some(p), None, None) => (p, 0),
        (None, Some(c), Some(t)) => (t.saturating_sub(c), c),
        (None, Some(c), None) => (0, c),
        (None, None, Some(t)) => (t, 0),
        (None, None, None) => unreachable!("checked above"),
    };
    let cached = cached.unwrap_or(0).min(prompt);
    let reasoning = reasoning.or(output_reasoning).unwrap_or(0).min(completion);
    Some(TokenCounts {
        prompt,
        completion,
        cached,
        cache_write: 0,
        reasoning,
    })
}

/// If `v` is an error object in any shape backends use, the same error in OpenAI's shape.
/// Shapes: OpenAI `{"error":{...}}`, flat `{"error":"msg","code":..}`,
/// vLLM/LMDeploy `{"object":"error","message":..}`, GenStudio `{"code":60000,"msg":..}`.
pub fn as_error(v: &Map<String, Value>) -> Option<Value> {
    // Most answers and chunks are no error: one pass over the members tells, where each
    // lookup by name below hashes the name.
    let (mut error, mut error_object, mut msg, mut results) = (false, false, false, false);
    for (name, value) in v {
        match name.as_str() {
            "error" => error = !value.is_null(),
            "object" => error_object = value.as_str() == Some("error"),
            "msg" => msg = value.is_string(),
            "choices" | "data" => results = true,
            _ => {}
        }
    }
    if !error && !error_object && (!msg || results) {
        return None;
    }
    let code = v.get("code").cloned().unwrap_or(Value::Null);
    let text = |key: &str| v.get(key).and_then(Value::as_str).map(str::to_owned);
    let (message, kind, code, param) = match v.get("error") {
        Some(Value::Object(inner)) => (
            inner
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("the backend reported an error")
                .to_owned(),
            inner
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("upstream_error")
                .to_owned(),
            inner.get("code").cloned().unwrap_or(Value::Null),
            inner
                .get("param")
                .and_then(Value::as_str)
                .map(str::to_owned),
        ),
        Some(Value::String(message)) => (message.clone(), "upstream_error".into(), code, None),
        Some(Value::Null) | None => {
            let is_error_object = text("object").as_deref() == Some("error");
            let has_choices = v.contains_key("choices") || v.contains_key("data");
            if is_error_object {
                (
                    text("message").unwrap_or_else(|| "the backend reported an error".into()),
                    text("type").unwrap_or_else(|| "upstream_error".into()),
                    code,
                    None,
                )
            } else if let (Some(msg), false) = (text("msg"), has_choices) {
                (msg, "upstream_error".into(), code, None)
            } else {
                return None;
            }
        }
        Some(other) => (other.to_string(), "upstream_error".into(), code, None),
    };
    Some(openai_error(&message, &kind, code, param.as_deref()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn an_answer_head_keeps_what_is_read_and_marks_the_long_part() {
        let body = br#"{"id":"x","choices":[{"message":{"content":"hi"},"finish_reason":"stop"}],
            "usage":{"prompt_tokens":3,"completion_tokens":1},"m\u0073g":"ok"}"#;
        let head = answer_head(body).unwrap();
        assert_eq!(
            Value::Object(head.clone()),
            json!({"choices": null,
                   "usage": {"prompt_tokens": 3, "completion_tokens": 1}, "msg": "ok"})
        );
        // `choices` still counts as present: a `msg` beside it is not an error.
        assert_eq!(as_error(&head), None);
        let error = answer_head(br#"{"code":60000,"msg":"busy"}"#).unwrap();
        assert!(as_error(&error).is_some());
        // Skipped values are still checked.
        assert!(answer_head(br#"{"id":[1,}"#).is_none());
        assert!(answer_head(br#"{"id":1} x"#).is_none());
    }

    #[test]
    fn an_answer_head_refuses_what_is_not_one_json_object() {
        for body in [
            &b"[1,2]"[..],
            b"\"text\"",
            b"{\"choices\":[1,}",
            b"{\"a\":1} trailing",
            b"",
        ] {
            assert_eq!(answer_head(body), None, "{}", String::from_utf8_lossy(body));
        }
        assert!(answer_head(b" {\"a\":[{\"b\":\"\\u00e9\"}]} \n").is_some());
    }

    #[test]
    fn running_totals_are_replaced_not_summed() {
        let mut seen = Observed::default();
        for n in 1..=3 {
            seen.observe(&obj(
                json!({"usage": {"prompt_tokens": 5, "completion_tokens": n}}),
            ));
        }
        seen.observe(&obj(json!({"usage": null})));
        assert_eq!(
            seen.usage,
            Some(TokenCounts {
                prompt: 5,
                completion: 3,
                cached: 0,
                cache_write: 0,
                reasoning: 0,
            })
        );
    }

    #[test]
    fn reasoning_tokens_are_read_from_either_shape_and_stay_inside_completion() {
        let dashscope = json!({"input_tokens": 10, "output_tokens": 50,
            "output_tokens_details": {"reasoning_tokens": 40}});
        assert_eq!(parse_usage(&dashscope).map(|u| u.reasoning), Some(40));
        let beyond = json!({"prompt_tokens": 10, "completion_tokens": 5,
            "completion_tokens_details": {"reasoning_tokens": 9}});
        assert_eq!(parse_usage(&beyond).map(|u| u.reasoning), Some(5));
    }

    #[test]
    fn cached_tokens_stay_inside_prompt_tokens() {
        let usage = json!({"prompt_tokens": 1200, "completion_tokens": 3, "total_tokens": 1203,
            "prompt_tokens_details": {"cached_tokens": 1024}, "completion_tokens_details": {"reasoning_tokens": 2}});
        assert_eq!(
            parse_usage(&usage),
            Some(TokenCounts {
                prompt: 1200,
                completion: 3,
                cached: 1024,
                cache_write: 0,
                reasoning: 2,
            })
        );
    }

    #[test]
    fn rerank_and_embedding_usage_is_read() {
        assert_eq!(
            parse_usage(&json!({"total_tokens": 57})).unwrap().prompt,
            57
        );
        let embed = parse_usage(&json!({"prompt_tokens": 9, "total_tokens": 9})).unwrap();
        assert_eq!((embed.prompt, embed.completion), (9, 0));
        assert_eq!(parse_usage(&json!({})), None);
    }

    #[test]
    fn genstudio_errors_keep_their_code() {
        let err = as_error(&obj(json!({"code": 60000, "msg": "Wrong Bearer Token"}))).unwrap();
        assert_eq!(err["error"]["code"], 60000);
        assert_eq!(err["error"]["message"], "Wrong Bearer Token");
        assert!(as_error(&obj(json!({"choices": [], "usage": null}))).is_none());
    }
}
