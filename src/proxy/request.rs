//! A client's request body, read within the size limit and parsed once.

use axum::body::Body;
use bytes::Bytes;
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
        let mut body = self.body.clone();
        body.insert(
            "model".into(),
            Value::String(upstream.upstream_model.clone()),
        );
        if self.injects_usage(upstream) {
            let options = body
                .entry("stream_options")
                .or_insert_with(|| Value::Object(Map::new()));
            if !options.is_object() {
                *options = Value::Object(Map::new());
            }
            options
                .as_object_mut()
                .expect("made an object above")
                .insert("include_usage".into(), Value::Bool(true));
        }
        serde_json::to_vec(&body)
            .expect("a JSON map always serializes")
            .into()
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
