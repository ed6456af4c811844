//! The request side of a dialect: what it reads of a client's body before sending it on
//! (`Wire::model_at`, `limits_in`, `results`, `prompt_members`). The body is seen through
//! `Members`, its top level as the client sent it; counts are read by `whole_number`,
//! which every dialect shares.

use serde_json::Value;

use crate::error::Error;

/// A request body's top level, as sent.
pub trait Members {
    /// A member's JSON text.
    fn member(&self, name: &str) -> Option<&str>;

    /// A member, parsed.
    fn value(&self, name: &str) -> Option<Value> {
        serde_json::from_str(self.member(name)?).ok()
    }
}

/// Where a body names its model.
#[derive(Debug, Clone, Copy)]
pub struct ModelAt {
    /// The top-level member.
    pub member: &'static str,
    /// A member inside it, if the model is there (an SD task's checkpoint).
    pub inside: Option<&'static str>,
    /// How errors name it.
    pub shown: &'static str,
}

impl ModelAt {
    pub const fn member(name: &'static str) -> ModelAt {
        ModelAt {
            member: name,
            inside: None,
            shown: name,
        }
    }
}

/// The most results (answers, images) one request may ask for.
pub const MAX_RESULTS: u64 = 128;

/// The members that carry a chat or embedding body's prompt (OpenAI's).
pub const PROMPT_MEMBERS: &[&str] = &[
    "messages",
    "input",
    "query",
    "documents",
    "prompt",
    "tools",
    "functions",
];

/// A value that must be a whole number of at least `min` (or absent, or `null`), given as
/// its JSON text. Digits beyond `u64` are a very large number, not an error.
pub fn whole_number(
    text: Option<&str>,
    name: &'static str,
    min: u64,
) -> Result<Option<u64>, Error> {
    match text {
        None | Some("null") => Ok(None),
        Some(text) => match text.parse::<u64>() {
            Ok(n) if n >= min => Ok(Some(n)),
            Ok(_) => Err(Error::invalid(
                format!("'{name}' must be at least {min}"),
                name,
            )),
            Err(_) if text.bytes().all(|b| b.is_ascii_digit()) => Ok(Some(u64::MAX)),
            Err(_) => Err(Error::invalid(
                format!("'{name}' must be a whole number"),
                name,
            )),
        },
    }
}

/// `whole_number` of a parsed value.
pub fn count_of(value: Option<&Value>, name: &'static str, min: u64) -> Result<Option<u64>, Error> {
    whole_number(value.map(Value::to_string).as_deref(), name, min)
}

/// A count the body holds at its top level, or inside `limits_in`'s member.
pub fn limit(
    body: &dyn Members,
    limits_in: Option<&'static str>,
    name: &'static str,
) -> Result<Option<u64>, Error> {
    match limits_in {
        Some(outer) => count_of(
            body.value(outer).as_ref().and_then(|l| l.get(name)),
            name,
            1,
        ),
        None => whole_number(body.member(name), name, 1),
    }
}
