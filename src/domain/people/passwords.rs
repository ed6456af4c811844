//! Passwords: hashed with argon2id (its recommended parameters: 19 MiB, 2 passes), each
//! with its own salt, into a PHC string; checked on a blocking thread, since one hash takes
//! tens of milliseconds of CPU.

use std::sync::LazyLock;

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};

use crate::error::Error;

pub const MIN_PASSWORD_CHARS: usize = 10;
const MAX_PASSWORD_BYTES: usize = 1024;

/// A password long enough to resist guessing and short enough to hash cheaply.
pub fn check_password(password: &str) -> Result<(), Error> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(Error::invalid(
            format!("a password has at least {MIN_PASSWORD_CHARS} characters"),
            "password",
        ));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(Error::invalid(
            format!("a password has at most {MAX_PASSWORD_BYTES} bytes"),
            "password",
        ));
    }
    Ok(())
}

/// The argon2id PHC string of `password` with a fresh salt, after `check_password`.
pub async fn hash_password(password: &str) -> Result<String, Error> {
    check_password(password)?;
    let password = password.to_owned();
    tokio::task::spawn_blocking(move || hash_now(&password))
        .await
        .map_err(|e| Error::Internal(e.into()))?
}

fn hash_now(password: &str) -> Result<String, Error> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|hash| hash.to_string())
        .map_err(|e| Error::Internal(anyhow::anyhow!("cannot hash a password: {e}")))
}

/// Hashed once, so that an unknown email costs as much time as a wrong password.
static DECOY: LazyLock<String> =
    LazyLock::new(|| hash_now("a password no one has").expect("argon2 hashes with its defaults"));

/// Whether `password` is the one `hash` was made from; with no hash (an unknown user), a
/// decoy is checked instead so that the answer takes as long.
pub async fn verify_password(password: &str, hash: Option<&str>) -> bool {
    let password = password.to_owned();
    let hash = hash.map(str::to_owned);
    tokio::task::spawn_blocking(move || {
        let decoy = hash.is_none();
        let hash = hash.unwrap_or_else(|| DECOY.clone());
        let Ok(parsed) = PasswordHash::new(&hash) else {
            return false;
        };
        let matches = Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        matches && !decoy
    })
    .await
    .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_hash_is_argon2id_salted_and_verifies_only_its_password() {
        let one = hash_password("correct horse battery").await.unwrap();
        let two = hash_password("correct horse battery").await.unwrap();
        assert!(one.starts_with("$argon2id$v=19$"), "{one}");
        assert_ne!(one, two, "each hash has its own salt");
        assert!(verify_password("correct horse battery", Some(&one)).await);
        assert!(!verify_password("correct horse batterx", Some(&one)).await);
        assert!(!verify_password("correct horse battery", None).await);
        assert!(!verify_password("anything", Some("not a hash")).await);
    }

    #[test]
    fn short_and_huge_passwords_are_refused() {
        assert!(check_password("short").is_err());
        assert!(check_password(&"x".repeat(2000)).is_err());
        assert!(check_password("ten chars!").is_ok());
        // Characters, not bytes: ten Chinese characters are enough.
        assert!(check_password("一二三四五六七八九十").is_ok());
    }
}
