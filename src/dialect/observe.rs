//! What tollgate learns from a backend's JSON: usage (the last non-empty one wins, never a
//! sum), the text delivered (for estimates), moderation verdicts and in-band errors.

use serde_json::Value;

use super::json::{Json, Object};
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
    pub fn observe(&mut self, v: &Object) {
        // One pass over the members, as in `parse_usage`; a name sent twice is its last value.
        let (mut usage, mut blocked, mut moderation) = (None, None, None);
        for (name, value) in v.in_order() {
            match name {
                "usage" => usage = Some(value),
                "blocked" => blocked = Some(value),
                "moderation" => moderation = Some(value),
                _ => {}
            }
        }
        if let Some(usage) = usage.and_then(parse_usage) {
            self.usage = Some(usage);
        }
        if blocked.and_then(Json::as_bool) == Some(true) {
            // Moderation ended the answer: what came before it is the whole answer.
            self.blocked = true;
            self.finished = true;
        }
        if let Some(moderation) = moderation
            && moderation.get("sensitive").and_then(Json::as_bool) == Some(true)
        {
            self.moderation = Some(moderation.to_value().to_string());
        }
        let mut choices = v.choices();
        self.finished |= choices.any(|c| c.str("finish_reason").is_some_and(|r| !r.is_empty()));
    }

    /// Adds the text of a chunk or response the client received.
    pub fn deliver(&mut self, v: &Object) {
        for choice in v.choices() {
            let Some(part) =
                (choice.get("delta").or_else(|| choice.get("message"))).and_then(Json::as_object)
            else {
                continue;
            };
            let out = &mut self.delivered_text;
            collect(part.get("content"), out);
            collect(part.get("reasoning_content"), out);
            for call in part.get("tool_calls").into_iter().flat_map(Json::objects) {
                collect(call.get("function").and_then(|f| f.get("arguments")), out);
            }
        }
    }
}

/// `collect_text` of a value: a string (what nearly every chunk holds) as it is.
pub fn collect(value: Option<&Json>, out: &mut String) {
    match value {
        Some(Json::String(text)) => out.push_str(text),
        Some(other) => collect_text(Some(&other.to_value()), out),
        None => {}
    }
}

/// Reads a `usage` object. `None` for `null`, `{}` or an object without token counts.
/// `cached_tokens` is part of `prompt_tokens`; reasoning tokens are part of
/// `completion_tokens`: neither is added again. Rerank reports only `total_tokens`.
pub fn parse_usage(usage: &Json) -> Option<TokenCounts> {
    let usage = usage.as_object()?;
    // One pass over the members (a name sent twice is its last value): this runs for
    // every answer and usage chunk.
    let (mut prompt, mut input, mut completion, mut output) = (None, None, None, None);
    let (mut total, mut cached, mut reasoning, mut output_reasoning) = (None, None, None, None);
    let nested = |details: &Json, name: &str| details.get(name).and_then(Json::as_u64);
    for (name, value) in usage.in_order() {
        match name {
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
pub fn as_error(v: &Object) -> Option<Value> {
    // Most answers and chunks are no error: one pass over the members tells (a name sent
    // twice is its last value).
    let (mut error, mut error_object, mut msg, mut results) = (false, false, false, false);
    for (name, value) in v.in_order() {
        match name {
            "error" => error = !value.is_null(),
            "object" => error_object = value.as_str() == Some("error"),
            "msg" => msg = value.as_str().is_some(),
            "choices" | "data" => results = true,
            _ => {}
        }
    }
    if !error && !error_object && (!msg || results) {
        return None;
    }
    let code = v.get("code").map_or(Value::Null, Json::to_value);
    let text = |key: &str| v.str(key).map(str::to_owned);
    let (message, kind, code, param) = match v.get("error").map(Json::to_value) {
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
        Some(Value::String(message)) => (message, "upstream_error".into(), code, None),
        Some(Value::Null) | None => {
            if error_object {
                (
                    text("message").unwrap_or_else(|| "the backend reported an error".into()),
                    text("type").unwrap_or_else(|| "upstream_error".into()),
                    code,
                    None,
                )
            } else if let (Some(msg), false) = (text("msg"), results) {
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
    use serde_json::{Map, json};

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn parse_usage(usage: &Value) -> Option<TokenCounts> {
        super::parse_usage(&Json::of(usage))
    }

    #[test]
    fn an_answer_head_is_read_for_usage_and_errors() {
        let body = br#"{"id":"x","choices":[{"message":{"content":"hi"},"finish_reason":"stop"}],
            "usage":{"prompt_tokens":3,"completion_tokens":1},"m\u0073g":"ok"}"#;
        let head = Object::head(body).unwrap();
        // `choices` still counts as present: a `msg` beside it is not an error.
        assert_eq!(as_error(&head), None);
        let mut seen = Observed::default();
        seen.observe(&head);
        assert_eq!(seen.usage.map(|u| (u.prompt, u.completion)), Some((3, 1)));
        let error = Object::head(br#"{"code":60000,"msg":"busy"}"#).unwrap();
        assert!(as_error(&error).is_some());
    }

    #[test]
    fn a_name_sent_twice_is_read_as_its_last_value() {
        let read = |text: &str| {
            let chunk = Object::parse(text).unwrap();
            let mut seen = Observed::default();
            seen.observe(&chunk);
            (
                seen.usage.map(|u| (u.prompt, u.completion)),
                as_error(&chunk).is_some(),
            )
        };
        let usage = r#""usage":{"prompt_tokens":1,"prompt_tokens":5,"completion_tokens":2}"#;
        assert_eq!(read(&format!("{{{usage}}}")), (Some((5, 2)), false));
        assert_eq!(read(&format!("{{{usage},\"usage\":null}}")), (None, false));
        assert_eq!(
            read(&format!("{{\"usage\":null,{usage}}}")),
            (Some((5, 2)), false)
        );
        let error = r#""error":{"message":"busy"}"#;
        assert_eq!(read(&format!("{{{error}}}")), (None, true));
        assert_eq!(read(&format!("{{{error},\"error\":null}}")), (None, false));
        assert_eq!(read(&format!("{{\"error\":null,{error}}}")), (None, true));
        let blocked = r#"{"blocked":true,"blocked":false,"choices":[]}"#;
        let mut seen = Observed::default();
        seen.observe(&Object::parse(blocked).unwrap());
        assert!(!seen.blocked);
    }

    #[test]
    fn a_chunk_says_when_the_answer_ends_and_what_it_delivered() {
        let text = r#"{"choices":[{"delta":{"content":"a","reasoning_content":"b",
            "tool_calls":[{"function":{"arguments":"{}"}}]}},
            {"message":{"content":[{"text":"c"},"d"]},"finish_reason":"stop"}],
            "moderation":{"sensitive":true,"category":"x"}}"#;
        let mut seen = Observed::default();
        let chunk = Object::parse(text).unwrap();
        seen.observe(&chunk);
        seen.deliver(&chunk);
        assert!(seen.finished);
        assert_eq!(seen.delivered_text, "ab{}c\nd");
        assert_eq!(
            seen.moderation.as_deref(),
            Some(r#"{"sensitive":true,"category":"x"}"#)
        );
        let mut unfinished = Observed::default();
        unfinished.observe(&Object::parse(r#"{"choices":[{"finish_reason":""}]}"#).unwrap());
        assert!(!unfinished.finished);
    }

    #[test]
    fn running_totals_are_replaced_not_summed() {
        let mut seen = Observed::default();
        for n in 1..=3 {
            let usage = obj(json!({"usage": {"prompt_tokens": 5, "completion_tokens": n}}));
            seen.observe(&Object::of(&usage));
        }
        seen.observe(&Object::of(&obj(json!({"usage": null}))));
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
        let error = obj(json!({"code": 60000, "msg": "Wrong Bearer Token"}));
        let err = as_error(&Object::of(&error)).unwrap();
        assert_eq!(err["error"]["code"], 60000);
        assert_eq!(err["error"]["message"], "Wrong Bearer Token");
        assert!(as_error(&Object::of(&obj(json!({"choices": [], "usage": null})))).is_none());
    }
}
