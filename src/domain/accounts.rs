//! Accounts: opening one, and finding one by name.

use crate::error::ApiError;
use crate::store::accounts::Account;
use crate::store::{self, Db};

/// Creates an account; 409 if the name is taken (the database's unique name decides, so
/// two at once cannot both pass).
pub async fn create(db: &Db, name: &str) -> Result<Account, ApiError> {
    Ok(store::accounts::create(db, name).await?)
}

/// The account named `name`, or 404.
pub async fn named(db: &Db, name: &str) -> Result<Account, ApiError> {
    store::accounts::find_by_name(db, name)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("account '{name}' does not exist")))
}

/// The id of the account named `name`, if a name is given.
pub async fn id_of(db: &Db, name: Option<&str>) -> Result<Option<i64>, ApiError> {
    match name {
        Some(name) => Ok(Some(named(db, name).await?.id)),
        None => Ok(None),
    }
}
