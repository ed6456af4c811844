//! One JSON object a backend sent (a stream's event, a whole answer, a task's poll), read in
//! one pass (`parse`) into a tree that borrows its strings from the text and keeps each
//! object's members in a list, found by name without hashing (an object has a handful). A
//! `serde_json::Map` allocated every key and string and hashed every key of every event:
//! a third of a stream's instructions. Maps parsed already (a task's poll) are read
//! through the same tree (`Object::of`).

mod parse;

use std::borrow::Cow;
use std::ops::Range;

use serde_json::{Map, Number, Value};

use parse::Parser;
#[cfg(test)]
pub(crate) use parse::break_bytes;

/// A JSON object: its members in the order sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Object<'a> {
    members: Vec<(Cow<'a, str>, Json<'a>)>,
}

/// A JSON value whose strings are borrowed from the text (unless they have escapes).
#[derive(Debug, Clone, PartialEq)]
pub enum Json<'a> {
    Null,
    Bool(bool),
    Number(Number),
    String(Cow<'a, str>),
    Array(Vec<Json<'a>>),
    Object(Object<'a>),
}

impl<'a> Object<'a> {
    /// `text` if it is one JSON object (whitespace around it aside).
    pub fn parse(text: &'a str) -> Option<Object<'a>> {
        Parser::new(text.as_bytes(), Some(text)).whole_object(&[])
    }

    /// A whole answer's top level, its long parts (OpenAI's `choices` and `data`,
    /// DashScope's `output`) checked for syntax only and read as `null`: what an answer
    /// with its usage needs, whatever its length.
    pub fn head(body: &'a [u8]) -> Option<Object<'a>> {
        let long = &["choices", "data", "output"];
        Parser::new(body, None).whole_object(long)
    }

    /// The members of the JSON object `body` (checked whole: syntax, UTF-8, nothing after
    /// it), each name with its value's span, the values passed over without being built,
    /// as serde_json reads a `RawValue`.
    pub fn spans(body: &'a [u8], each: impl FnMut(Cow<'a, str>, Range<usize>)) -> Option<()> {
        let text = std::str::from_utf8(body).ok()?;
        Parser::new(body, Some(text)).member_spans(each)
    }

    /// A map parsed already.
    pub fn of(map: &'a Map<String, Value>) -> Object<'a> {
        let members = map
            .iter()
            .map(|(name, value)| (Cow::Borrowed(name.as_str()), Json::of(value)));
        Object {
            members: members.collect(),
        }
    }

    /// Every member in the order sent, a name sent twice included: a reader that assigns
    /// what it finds as it goes ends with the last value, the one a map would keep.
    pub fn in_order(&self) -> impl Iterator<Item = (&str, &Json<'a>)> {
        self.members
            .iter()
            .map(|(name, value)| (name.as_ref(), value))
    }

    /// The member called `name` (the last, if it was sent twice).
    pub fn get(&self, name: &str) -> Option<&Json<'a>> {
        let mut members = self.members.iter().rev();
        members.find(|(n, _)| n == name).map(|(_, value)| value)
    }

    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// A member that is a string.
    pub fn str(&self, name: &str) -> Option<&str> {
        self.get(name)?.as_str()
    }

    /// The objects in `choices`.
    pub fn choices(&self) -> impl Iterator<Item = &Object<'a>> {
        self.get("choices").into_iter().flat_map(Json::objects)
    }

    /// The whole object as a map: for the rare frame that must be rewritten.
    pub fn to_map(&self) -> Map<String, Value> {
        let mut map = Map::with_capacity(self.members.len());
        for (name, value) in &self.members {
            map.insert(name.clone().into_owned(), value.to_value());
        }
        map
    }
}

impl<'a> Json<'a> {
    /// A value parsed already.
    pub fn of(value: &'a Value) -> Json<'a> {
        match value {
            Value::Null => Json::Null,
            Value::Bool(b) => Json::Bool(*b),
            Value::Number(n) => Json::Number(n.clone()),
            Value::String(s) => Json::String(Cow::Borrowed(s)),
            Value::Array(items) => Json::Array(items.iter().map(Json::of).collect()),
            Value::Object(map) => Json::Object(Object::of(map)),
        }
    }

    /// A member, if this is an object.
    pub fn get(&self, name: &str) -> Option<&Json<'a>> {
        self.as_object()?.get(name)
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Json::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Json::Number(n) => n.as_u64(),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Json::Null)
    }

    pub fn as_array(&self) -> Option<&[Json<'a>]> {
        match self {
            Json::Array(items) => Some(items),
            _ => None,
        }
    }

    pub fn as_object(&self) -> Option<&Object<'a>> {
        match self {
            Json::Object(object) => Some(object),
            _ => None,
        }
    }

    /// The objects in this array (anything else in it is passed over).
    pub fn objects(&self) -> impl Iterator<Item = &Object<'a>> {
        self.as_array()
            .into_iter()
            .flatten()
            .filter_map(Json::as_object)
    }

    pub fn to_value(&self) -> Value {
        match self {
            Json::Null => Value::Null,
            Json::Bool(b) => Value::Bool(*b),
            Json::Number(n) => Value::Number(n.clone()),
            Json::String(s) => Value::String(s.clone().into_owned()),
            Json::Array(items) => Value::Array(items.iter().map(Json::to_value).collect()),
            Json::Object(object) => Value::Object(object.to_map()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_head_reads_the_long_part_as_null_but_there() {
        let body = br#"{"id":"x","choices":[{"message":{"content":"hi"},"finish_reason":"stop"}],
            "usage":{"prompt_tokens":3,"completion_tokens":1},"m\u0073g":"ok"}"#;
        let head = Object::head(body).unwrap();
        assert!(head.has("choices") && head.choices().next().is_none());
        assert_eq!(head.get("choices"), Some(&Json::Null));
        assert_eq!(
            head.get("usage").map(Json::to_value),
            Some(json!({"prompt_tokens": 3, "completion_tokens": 1}))
        );
        assert_eq!(head.str("msg"), Some("ok"));
        let whole = Object::parse(std::str::from_utf8(body).unwrap()).unwrap();
        let choices: Vec<_> = whole.choices().collect();
        assert_eq!(choices.len(), 1);
        assert_eq!(choices[0].str("finish_reason"), Some("stop"));
        // What is left unread is still checked.
        assert!(Object::head(br#"{"choices":[1,}"#).is_none());
    }

    #[test]
    fn only_one_json_object_is_read() {
        for body in [
            "[1,2]",
            "\"text\"",
            "{\"choices\":[1,}",
            "{\"a\":1} trailing",
            "{\"a\":1}{\"b\":2}",
            "",
        ] {
            assert!(Object::parse(body).is_none(), "{body}");
            assert!(Object::head(body.as_bytes()).is_none(), "{body}");
        }
        assert!(Object::parse(" {\"a\":[{\"b\":\"\\u00e9\"}]} \n").is_some());
        assert!(Object::head(b"{\"a\":\"\xff\"}").is_none(), "not UTF-8");
        // What is left unread is only checked for syntax, as before this view: a backend
        // that cut a character in two in its answer's text is still metered.
        assert!(Object::head(b"{\"choices\":[\"\xe6\x88\"]}").is_some());
    }

    #[test]
    fn text_and_a_parsed_map_read_the_same() {
        let text = r#"{"id":"c1","object":"chat.completion.chunk","created":7,
            "choices":[{"index":0,"delta":{"content":"h\u00e9"},"finish_reason":null},3,
                       {"index":1,"delta":{},"finish_reason":""}],
            "usage":null,"blocked":true,"n":"a\"b","x":[1.5,-2,{"y":[]}],"id":"c2"}"#;
        let map = serde_json::from_str::<Map<String, Value>>(text).unwrap();
        let (parsed, of_map) = (Object::parse(text).unwrap(), Object::of(&map));
        // Both members called `id` are there in the text's order; a map kept one.
        let ids = |object: &Object| object.in_order().filter(|(name, _)| *name == "id").count();
        assert_eq!((ids(&parsed), ids(&of_map)), (2, 1));
        for object in [&parsed, &of_map] {
            assert_eq!(object.to_map(), map);
            // A name sent twice reads as its last value.
            assert_eq!(object.str("id"), Some("c2"));
            assert_eq!(object.str("n"), Some("a\"b"));
            assert_eq!(object.get("created").and_then(Json::as_u64), Some(7));
            assert!(object.get("usage").unwrap().is_null());
            assert_eq!(object.get("blocked").and_then(Json::as_bool), Some(true));
            assert_eq!(object.str("created"), None);
            assert!(!object.has("model"));
            let choices: Vec<_> = object.choices().collect();
            assert_eq!(choices.len(), 2, "the 3 is not a choice");
            let delta = choices[0].get("delta").unwrap();
            assert_eq!(delta.get("content").and_then(Json::as_str), Some("hé"));
            assert_eq!(choices[1].str("finish_reason"), Some(""));
        }
    }
}
