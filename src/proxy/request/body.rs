//! A request body taken apart at its top level only: its members and their spans, found
//! by one checking pass that builds no values; its nesting depth; read within the size
//! limit.

use std::collections::HashMap;
use std::ops::Range;

use axum::body::Body;
use bytes::Bytes;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::dialect::json::Object;
use crate::server::ApiError;

/// The deepest nesting of arrays and objects accepted in a body: what serde_json (and so
/// many backends) will parse. Checking it here gives the client a clear 400 rather than a
/// backend's refusal.
pub(super) const MAX_DEPTH: usize = 128;

/// Whether the JSON text `raw` (already checked) nests arrays and objects deeper than
/// `limit`. Values are skipped over, not parsed: one pass over the bytes, in which a
/// string's contents (most of a body: its messages) are passed over by `memchr` to the
/// next quote or backslash. A body with no more than `limit` opening brackets, strings
/// included, cannot nest deeper: most bodies are decided by counting them.
pub(super) fn nests_deeper(raw: &[u8], limit: usize) -> bool {
    if memchr::memchr2_iter(b'[', b'{', raw).nth(limit).is_none() {
        return false;
    }
    let mut depth = 0usize;
    let mut at = 0;
    while let Some(&byte) = raw.get(at) {
        at += 1;
        match byte {
            b'"' => loop {
                let Some(found) = raw
                    .get(at..)
                    .and_then(|rest| memchr::memchr2(b'"', b'\\', rest))
                else {
                    return false;
                };
                at += found + 1;
                if raw[at - 1] == b'"' {
                    break;
                }
                // A backslash: the byte after it is escaped.
                at += 1;
            },
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// The top-level members of a body, in order, each with its value's span. A name sent twice
/// keeps its first place and its last value, as a JSON parser's map would. Found by a scan
/// (a body has a handful of members), or through an index once there are more than
/// `INDEXED_FROM`, so that a body of many members costs no quadratic time.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Members {
    pub(super) list: Vec<(String, Range<usize>)>,
    index: Option<HashMap<String, usize>>,
    /// Whether a name was sent more than once.
    pub(super) repeated: bool,
}

const INDEXED_FROM: usize = 16;

impl Members {
    pub(super) fn position(&self, name: &str) -> Option<usize> {
        match &self.index {
            Some(index) => index.get(name).copied(),
            None => self.list.iter().position(|(n, _)| n == name),
        }
    }

    pub(super) fn get(&self, name: &str) -> Option<&Range<usize>> {
        self.position(name).map(|i| &self.list[i].1)
    }

    fn insert(&mut self, name: String, span: Range<usize>) {
        if let Some(i) = self.position(&name) {
            self.list[i].1 = span;
            self.repeated = true;
            return;
        }
        if let Some(index) = &mut self.index {
            index.insert(name.clone(), self.list.len());
        }
        self.list.push((name, span));
        if self.index.is_none() && self.list.len() > INDEXED_FROM {
            let index = self.list.iter().enumerate();
            self.index = Some(index.map(|(i, (n, _))| (n.clone(), i)).collect());
        }
    }
}

/// The members of the JSON object `raw`, each with its value's span. The whole text is
/// checked (syntax, UTF-8, nothing after the object), values without being built. What
/// is not one JSON object is read again by serde_json, whose error the client gets.
pub(super) fn top_level(raw: &[u8]) -> Result<Members, serde_json::Error> {
    let mut members = Members::default();
    let read = Object::spans(raw, |name, span| members.insert(name.into_owned(), span));
    match read {
        Some(()) => Ok(members),
        None => serde_top_level(raw),
    }
}

/// `top_level` by serde_json: each value a `RawValue`.
fn serde_top_level(raw: &[u8]) -> Result<Members, serde_json::Error> {
    struct Visit<'a>(&'a [u8]);
    impl<'de> Visitor<'de> for Visit<'de> {
        type Value = Members;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut members = Members::default();
            while let Some(name) = map.next_key::<String>()? {
                let value: &RawValue = map.next_value()?;
                let start = value.get().as_ptr() as usize - self.0.as_ptr() as usize;
                members.insert(name, start..start + value.get().len());
            }
            Ok(members)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(raw);
    let members = de.deserialize_map(Visit(raw))?;
    de.end()?;
    Ok(members)
}

/// Bodies up to this long are copied out of the connection's read buffer (`read_limited`).
const OWN_ALLOCATION_MAX: usize = 16 * 1024;

/// Reads at most `limit` bytes of a request body: 413 beyond (even for chunked bodies
/// without a length), 408 when it stops arriving.
///
/// A short body is returned in an allocation of its own. One that arrived in a single
/// read is a slice of hyper's read buffer (8 KB at first): kept for the whole exchange (a
/// stream can last minutes), it would keep that buffer alive, and hyper would allocate
/// another to read the connection's next bytes meanwhile. A longer body is about as long
/// as the buffer that holds it, or was copied out of several already.
pub(super) async fn read_limited(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let raw = read_all(body, limit).await?;
    Ok(if raw.len() <= OWN_ALLOCATION_MAX {
        Bytes::copy_from_slice(&raw)
    } else {
        raw
    })
}

async fn read_all(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let cause = |is: fn(&(dyn std::error::Error + 'static)) -> bool| {
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                if is(s) {
                    return true;
                }
                source = s.source();
            }
            false
        };
        if cause(|s| s.is::<http_body_util::LengthLimitError>()) {
            ApiError::PayloadTooLarge(limit)
        } else if cause(|s| s.is::<crate::server::BodyTimeout>()) {
            ApiError::RequestTimeout
        } else {
            ApiError::InvalidJson(format!("could not read the request body: {e}"))
        }
    })
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;
    use crate::dialect::json::break_bytes;

    /// The same members, spans and errors as serde_json's reading.
    fn agrees(raw: &[u8]) {
        let ours = top_level(raw).map_err(|e| e.to_string());
        let serde = serde_top_level(raw).map_err(|e| e.to_string());
        assert_eq!(ours, serde, "{:?}", String::from_utf8_lossy(raw));
        // Never one that serde_json refuses, whatever the fallback would say.
        let mut spans = Vec::new();
        if Object::spans(raw, |name, span| spans.push((name, span))).is_some() {
            assert!(serde.is_ok(), "{:?}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn bodies_are_taken_apart_as_serde_json_takes_them_apart() {
        let mut bodies: Vec<Vec<u8>> = [
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}"#,
            r#" { "model" : "m" , "max_tokens" : 5 } "#,
            r#"{"model":"a","model":"b","n":1}"#,
            r#"{"m\u006fdel":"x","\ud83d":1}"#,
            r#"{"a":"\ud83d"}"#,
            r#"{"a":1e400,"b":-0,"c":[1,{"d":"\u00e9"}]}"#,
            r#"{"a":[1,]}"#,
            r#"{"a":1,}"#,
            r#"{"a" 1}"#,
            r#"[1]"#,
            r#"{"a":1} x"#,
            r#"{"a":"\q"}"#,
            r#"{"a":"\u12G4"}"#,
            "",
            "{",
        ]
        .iter()
        .map(|body| body.as_bytes().to_vec())
        .collect();
        bodies.push(b"{\"a\":\"\xff\"}".to_vec());
        bodies.push(b"{\"\xe6\x88\":1}".to_vec());
        bodies.push(b"{\"a\":1}\xff".to_vec());
        bodies.push(format!("{{\"a\":{}1{}}}", "[".repeat(300), "]".repeat(300)).into_bytes());
        for body in &bodies {
            agrees(body);
        }
        let mut rng = StdRng::seed_from_u64(26);
        for _ in 0..20_000 {
            let mut body = bodies[0].clone();
            break_bytes(&mut rng, &mut body);
            agrees(&body);
        }
    }
}
