//! API key secrets: `tg-` + 43 base62 characters (256 bits), stored as SHA-256 with a
//! visible prefix. The secret is shown once and redacted everywhere else.

use std::fmt;

use rand::Rng;
use rand::distr::Alphanumeric;
use sha2::{Digest, Sha256};

use crate::error::Error;

const PREFIX: &str = "tg-";
const RANDOM_CHARS: usize = 43;
/// Characters of the key kept in clear as its public prefix.
const VISIBLE: usize = 11;

/// A key secret. `Debug` and `Display` show only its public prefix.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn generate() -> ApiKey {
        let random: String = rand::rng()
            .sample_iter(Alphanumeric)
            .take(RANDOM_CHARS)
            .map(char::from)
            .collect();
        ApiKey(format!("{PREFIX}{random}"))
    }

    /// Accepts only well-formed keys, so garbage never reaches the database.
    pub fn parse(text: &str) -> Result<ApiKey, Error> {
        let well_formed = text.strip_prefix(PREFIX).is_some_and(|r| {
            r.len() == RANDOM_CHARS && r.bytes().all(|b| b.is_ascii_alphanumeric())
        });
        if well_formed {
            Ok(ApiKey(text.to_string()))
        } else {
            Err(Error::InvalidKey(
                "malformed API key: tollgate keys look like tg- followed by 43 letters and digits",
            ))
        }
    }

    pub fn hash(&self) -> [u8; 32] {
        Sha256::digest(self.0.as_bytes()).into()
    }

    /// The public part, safe to store and show: `tg-` and the next 8 characters.
    pub fn prefix(&self) -> &str {
        &self.0[..VISIBLE]
    }

    /// The secret itself: only for showing once at creation.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey({}…)", self.prefix())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_debug_hides_the_secret() {
        let key = ApiKey::generate();
        assert_eq!(ApiKey::parse(key.expose_secret()).unwrap(), key);
        let shown = format!("{key:?}");
        assert!(!shown.contains(&key.expose_secret()[VISIBLE..]), "{shown}");
        assert_ne!(ApiKey::generate(), key);
    }

    #[test]
    fn malformed_keys_are_refused() {
        for bad in [
            "",
            "tg-",
            "sk-abc",
            "tg-短",
            &format!("tg-{}", "a".repeat(44)),
        ] {
            assert!(ApiKey::parse(bad).is_err(), "{bad}");
        }
    }
}
