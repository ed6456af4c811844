//! A client's request body, read within the size limit and parsed once.

use axum::body::Body;
use bytes::Bytes;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};

use super::upstreams::Upstream;
use crate::config::Endpoint;
use crate::error::ApiError;

#[derive(Debug)]
pub struct ClientRequest {
    pub endpoint: Endpoint,
    pub body: Map<String, Value>,
    pub stream: bool,
    /// The client asked for the usage-only chunk (`stream_options.include_usage`).
    pub wants_stream_usage: bool,
}

impl ClientRequest {
    /// Reads at most `limit` bytes (413 beyond, even for chunked bodies without a length)
    /// and parses a JSON object (400 otherwise).
    pub async fn read(endpoint: Endpoint, body: Body, limit: usize) -> Result<Self, ApiError> {
        let bytes = read_limited(body, limit).await?;
        let value: Value =
            serde_json::from_slice(&bytes).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
        let Value::Object(body) = value else {
            return Err(ApiError::InvalidJson(
                "the body must be a JSON object".into(),
            ));
        };
        let stream = match body.get("stream") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(ApiError::invalid(
                    "'stream' must be true or false",
                    "stream",
                ));
            }
        };
        if stream && endpoint != Endpoint::Chat {
            return Err(ApiError::invalid(
                "streaming is only supported for chat completions",
                "stream",
            ));
        }
        let wants_stream_usage = body
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        Ok(ClientRequest {
            endpoint,
            body,
            stream,
            wants_stream_usage,
        })
    }

    /// The `model` field, required when the route does not name the model.
    pub fn model(&self) -> Result<&str, ApiError> {
        match self.body.get("model") {
            Some(Value::String(m)) if !m.is_empty() => Ok(m),
            None => Err(ApiError::invalid("'model' is required", "model")),
            Some(_) => Err(ApiError::invalid(
                "'model' must be a non-empty string",
                "model",
            )),
        }
    }

    /// Whether tollgate adds `include_usage` for this upstream (and must then hide the
    /// usage-only chunk from a client that did not ask for it).
    pub fn injects_usage(&self, upstream: &Upstream) -> bool {
        self.stream && upstream.stream_options && !self.wants_stream_usage
    }

    /// The body sent to `upstream`: the backend's model name, and usage requested in
    /// streams where the backend supports it. Everything else passes through.
    pub fn upstream_body(&self, upstream: &Upstream) -> Bytes {
        patched_body(
            &self.body,
            &upstream.upstream_model,
            self.injects_usage(upstream),
        )
    }
}

/// `body` with `model` set, and `stream_options.include_usage` set if asked.
fn patched_body(body: &Map<String, Value>, model: &str, include_usage: bool) -> Bytes {
    let mut patches = vec![("model", Patch::Value(Value::String(model.to_owned())))];
    if include_usage {
        let include_usage = ("include_usage", Patch::Value(Value::Bool(true)));
        let options = match body.get("stream_options") {
            Some(Value::Object(options)) => Patch::Object(Patched {
                map: options,
                patches: vec![include_usage],
            }),
            _ => Patch::Value(serde_json::json!({"include_usage": true})),
        };
        patches.push(("stream_options", options));
    }
    let body = Patched { map: body, patches };
    serde_json::to_vec(&body)
        .expect("a JSON map always serializes")
        .into()
}

/// A JSON object with some keys' values replaced (in place) or added (at the end),
/// serialized without copying the rest: a request body can carry a long conversation.
struct Patched<'a> {
    map: &'a Map<String, Value>,
    patches: Vec<(&'static str, Patch<'a>)>,
}

enum Patch<'a> {
    Value(Value),
    Object(Patched<'a>),
}

impl Serialize for Patch<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Patch::Value(value) => value.serialize(serializer),
            Patch::Object(object) => object.serialize(serializer),
        }
    }
}

impl Serialize for Patched<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let patch = |key: &str| self.patches.iter().find(|(k, _)| *k == key);
        let mut out = serializer.serialize_map(None)?;
        for (key, value) in self.map {
            match patch(key) {
                Some((_, patched)) => out.serialize_entry(key, patched)?,
                None => out.serialize_entry(key, value)?,
            }
        }
        for (key, patched) in &self.patches {
            if !self.map.contains_key(*key) {
                out.serialize_entry(key, patched)?;
            }
        }
        out.end()
    }
}

async fn read_limited(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if too_large {
            ApiError::PayloadTooLarge(limit)
        } else {
            ApiError::InvalidJson(format!("could not read the request body: {e}"))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patched(body: &str, include_usage: bool) -> String {
        let body: Map<String, Value> = serde_json::from_str(body).unwrap();
        String::from_utf8(patched_body(&body, "up-model", include_usage).to_vec()).unwrap()
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
}
