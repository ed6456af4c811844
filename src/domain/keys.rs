//! The life of an API key: issue, change limits, rotate, revoke. Shared by the CLI and the
//! admin API; every change is announced to the key caches of all gateways on the ledger.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Deserializer, Serialize};

use crate::auth::ApiKey;
use crate::auth::cache::KeyCache;
use crate::config::MAX_ROTATION_GRACE_SECS;
use crate::error::Error;
use crate::store::keys::{KeyLimits, KeyRow, KeyState, NewKey};
use crate::store::{self, Db};

/// A key as operators see it: metadata and limits, never the secret.
#[derive(Debug, Clone, Serialize)]
pub struct KeyView {
    pub id: i64,
    pub account_id: i64,
    pub name: String,
    pub prefix: String,
    pub state: KeyState,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub rotated_to: Option<i64>,
    pub last_used_at: Option<DateTime<Utc>>,
    #[serde(flatten)]
    pub limits: KeyLimits,
}

/// A newly issued key: the secret is in here and nowhere else, ever.
#[derive(Debug, Serialize)]
pub struct Issued {
    /// The secret, to show once.
    pub key: String,
    #[serde(flatten)]
    pub view: KeyView,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKeyRequest {
    /// Account name.
    pub account: String,
    #[serde(default)]
    pub name: String,
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(flatten)]
    pub limits: KeyLimits,
}

/// A change to a key: absent fields stay, `null` clears (back to the default, or no expiry).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyPatch {
    pub name: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub expires_at: Option<Option<DateTime<Utc>>>,
    #[serde(default, deserialize_with = "present")]
    pub rpm: Option<Option<u32>>,
    #[serde(default, deserialize_with = "present")]
    pub tpm: Option<Option<u64>>,
    #[serde(default, deserialize_with = "present")]
    pub allowed_models: Option<Option<Vec<String>>>,
}

/// Tells a present `null` (Some(None)) from an absent field (None).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

pub async fn view(db: &Db, row: KeyRow) -> Result<KeyView, Error> {
    let last_used_at = store::keys::last_used(db, row.id).await?;
    Ok(KeyView {
        id: row.id,
        account_id: row.account_id,
        state: row.state(Utc::now()),
        name: row.name,
        prefix: row.prefix,
        created_at: row.created_at,
        expires_at: row.expires_at,
        revoked_at: row.revoked_at,
        rotated_to: row.rotated_to,
        last_used_at,
        limits: row.limits,
    })
}

/// Every key (of one account), oldest first.
pub async fn list(db: &Db, account_id: Option<i64>) -> Result<Vec<KeyView>, Error> {
    let mut views = Vec::new();
    for row in store::keys::list(db, account_id).await? {
        views.push(view(db, row).await?);
    }
    Ok(views)
}

pub async fn get(db: &Db, id: i64) -> Result<KeyRow, Error> {
    store::keys::get(db, id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("key {id} does not exist")))
}

fn check_limits(limits: &KeyLimits) -> Result<(), Error> {
    if limits.rpm == Some(0) || limits.tpm == Some(0) {
        return Err(Error::invalid(
            "rpm and tpm must be at least 1 (null means the default)",
            "rpm",
        ));
    }
    Ok(())
}

pub async fn issue(db: &Db, cache: &KeyCache, request: NewKeyRequest) -> Result<Issued, Error> {
    check_limits(&request.limits)?;
    let account = super::accounts::named(db, &request.account).await?;
    let secret = ApiKey::generate();
    let row = store::keys::insert(
        db,
        NewKey {
            account_id: account.id,
            name: &request.name,
            prefix: secret.prefix(),
            secret_hash: &secret.hash(),
            expires_at: request.expires_at,
            limits: request.limits,
        },
    )
    .await?;
    cache.changed().await;
    Ok(Issued {
        key: secret.expose_secret().to_string(),
        view: view(db, row).await?,
    })
}

pub async fn update(db: &Db, cache: &KeyCache, id: i64, patch: KeyPatch) -> Result<KeyView, Error> {
    let row = get(db, id).await?;
    let mut limits = row.limits.clone();
    if let Some(rpm) = patch.rpm {
        limits.rpm = rpm;
    }
    if let Some(tpm) = patch.tpm {
        limits.tpm = tpm;
    }
    if let Some(models) = patch.allowed_models {
        limits.allowed_models = models;
    }
    check_limits(&limits)?;
    let name = patch.name.unwrap_or(row.name);
    let expires_at = patch.expires_at.unwrap_or(row.expires_at);
    store::keys::update(db, id, &name, expires_at, &limits).await?;
    cache.changed().await;
    view(db, get(db, id).await?).await
}

pub async fn revoke(db: &Db, cache: &KeyCache, id: i64) -> Result<KeyView, Error> {
    get(db, id).await?;
    store::keys::revoke(db, id, Utc::now()).await?;
    cache.changed().await;
    view(db, get(db, id).await?).await
}

/// A rotation's grace period from seconds: 0 to `MAX_ROTATION_GRACE_SECS`, else 400 naming
/// `grace_secs`.
pub fn grace(secs: i64) -> Result<Duration, Error> {
    if !(0..=MAX_ROTATION_GRACE_SECS).contains(&secs) {
        return Err(Error::invalid(
            format!("grace_secs must be between 0 and {MAX_ROTATION_GRACE_SECS} (a year)"),
            "grace_secs",
        ));
    }
    Ok(Duration::seconds(secs))
}

/// A new secret with the same account, name, expiry and limits; the old one keeps working
/// for `grace`, then is revoked.
pub async fn rotate(db: &Db, cache: &KeyCache, id: i64, grace: Duration) -> Result<Issued, Error> {
    let old = get(db, id).await?;
    if matches!(old.state(Utc::now()), KeyState::Revoked | KeyState::Expired) {
        return Err(Error::invalid(
            format!("key {id} is no longer valid and cannot be rotated"),
            "id",
        ));
    }
    let secret = ApiKey::generate();
    let new = NewKey {
        account_id: old.account_id,
        name: &old.name,
        prefix: secret.prefix(),
        secret_hash: &secret.hash(),
        expires_at: old.expires_at,
        limits: old.limits.clone(),
    };
    let row = store::keys::rotate(db, id, new, Utc::now() + grace).await?;
    cache.changed().await;
    Ok(Issued {
        key: secret.expose_secret().to_string(),
        view: view(db, row).await?,
    })
}

/// The audit log's entry for `action` on a key, as its views (never the secret).
pub fn change<'a>(
    action: &'a str,
    before: Option<&'a KeyView>,
    after: &'a KeyView,
) -> crate::domain::audit_log::Change<'a, KeyView, KeyView> {
    crate::domain::audit_log::Change {
        action,
        target: format!("key:{}", before.unwrap_or(after).id),
        account_id: Some(after.account_id),
        before,
        after: Some(after),
    }
}
