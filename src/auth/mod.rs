//! Who is calling: API key secrets (`keys`), the in-memory
//! cache (`cache`), admin tokens (`jwt`), and the check of a presented key (the HTTP extractor that calls it is
//! `proxy::authenticate`).

pub mod cache;
pub mod jwt;
pub mod keys;

use std::sync::Arc;

use chrono::Utc;
use subtle::ConstantTimeEq;

use crate::error::Error;
use crate::store::keys::KeyState;
use crate::store::{self, Db};
use cache::KeyCache;
pub use keys::ApiKey;

/// An authenticated caller: the key's row (hash and metadata), never the secret.
#[derive(Debug, Clone)]
pub struct Caller {
    pub key_id: i64,
    pub account_id: i64,
    pub key: Arc<store::keys::KeyRow>,
}

impl Caller {
    /// What rate limits count against: the key's lineage, shared by a rotated key's old
    /// and new secrets.
    pub fn limit_id(&self) -> i64 {
        self.key.lineage_id
    }

    /// Whether the key's allow-list (if any) includes `model`.
    pub fn may_call(&self, model: &str) -> bool {
        self.key
            .limits
            .allowed_models
            .as_ref()
            .is_none_or(|models| models.iter().any(|m| m == model))
    }

    /// 403 unless the key may call `model`.
    pub fn check_model(&self, model: &str) -> Result<(), Error> {
        if self.may_call(model) {
            Ok(())
        } else {
            Err(Error::Forbidden(format!(
                "this API key is not allowed to call model '{model}'"
            )))
        }
    }
}

/// Looks the key up by its hash (cache first) and checks that it is live. Also says whether
/// the cache had it.
pub async fn authenticate(keys: &KeyCache, db: &Db, key: &ApiKey) -> Result<(Caller, bool), Error> {
    let hash = key.hash();
    let (row, hit) = keys.lookup(db, &hash).await?;
    let row = row
        .filter(|row| bool::from(row.secret_hash.as_slice().ct_eq(&hash)))
        .ok_or(Error::InvalidKey("invalid API key"))?;
    match row.state(Utc::now()) {
        KeyState::Revoked => Err(Error::InvalidKey("this API key has been revoked")),
        KeyState::Expired => Err(Error::InvalidKey("this API key has expired")),
        KeyState::Active | KeyState::Rotating => {
            let caller = Caller {
                key_id: row.id,
                account_id: row.account_id,
                key: row,
            };
            Ok((caller, hit))
        }
    }
}
