//! Console sessions: a sign-in gives the browser a random token (256 bits) in a cookie and
//! the ledger its SHA-256; each session has its own CSRF token, which every form carries.
//! A session ends when unused for `idle_minutes`, `session_hours` after sign-in, at sign-out
//! (of this browser or everywhere), when its person is disabled or changes the password.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use rand::Rng;
use rand::distr::Alphanumeric;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::throttle::Throttle;
use super::{Person, check_email, hash_password, verify_password};
use crate::config::ConsoleConfig;
use crate::error::Error;
use crate::store::{self, Db};

/// A session's lifetimes.
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    pub idle: TimeDelta,
    pub absolute: TimeDelta,
}

impl Lifetimes {
    pub fn from_config(config: &ConsoleConfig) -> Lifetimes {
        Lifetimes {
            idle: TimeDelta::minutes(config.idle_minutes.max(1).into()),
            absolute: TimeDelta::hours(config.session_hours.max(1).into()),
        }
    }

    /// Whether a session started at `created` and last seen at `seen` is still alive.
    pub fn alive(&self, created: DateTime<Utc>, seen: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        now < seen + self.idle && now < created + self.absolute
    }
}

/// A signed-in browser, as the console sees it.
#[derive(Debug, Clone)]
pub struct Session {
    pub person: Person,
    /// What each form of this session must carry back.
    pub csrf: String,
    token_hash: [u8; 32],
}

impl Session {
    /// Whether `token` is this session's CSRF token (compared in constant time).
    pub fn csrf_matches(&self, token: &str) -> bool {
        !token.is_empty() && bool::from(token.as_bytes().ct_eq(self.csrf.as_bytes()))
    }
}

/// A new session: the cookie's value (shown to the browser once) and the session.
pub struct SignedIn {
    pub token: String,
    pub session: Session,
}

fn random_token() -> String {
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(43)
        .map(char::from)
        .collect()
}

fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The message for every failed sign-in, so that it does not tell which part was wrong.
const WRONG: &str = "wrong email or password";

/// Signs in with `email` and `password` from `address`: refused while the email or the
/// address is throttled (429 with the wait), with one message for any wrong part (401).
pub async fn sign_in(
    db: &Db,
    throttle: &Throttle,
    email: &str,
    password: &str,
    address: &str,
) -> Result<SignedIn, Error> {
    let email = check_email(email).map_err(|_| Error::AdminUnauthorized(WRONG.into()))?;
    let keys = [format!("email:{email}"), format!("address:{address}")];
    let keys = [keys[0].as_str(), keys[1].as_str()];
    if let Some(wait) = throttle.closed(db, &keys, Utc::now()).await? {
        return Err(throttled(wait));
    }
    let row = store::people::by_email(db, &email).await?;
    let right = verify_password(password, row.as_ref().map(|r| r.password_hash.as_str())).await;
    let row = match row {
        Some(row) if right && row.disabled_at.is_none() => row,
        _ => {
            throttle.failed(db, &keys, Utc::now()).await?;
            return Err(Error::AdminUnauthorized(WRONG.into()));
        }
    };
    throttle.forget(db, keys[0]).await?;
    let person = Person::from_row(&row)?;
    let (token, csrf) = (random_token(), random_token());
    let token_hash = hash(&token);
    store::people::start_session(db, &token_hash, person.id, &csrf, address).await?;
    Ok(SignedIn {
        token,
        session: Session {
            person,
            csrf,
            token_hash,
        },
    })
}

fn throttled(wait: Duration) -> Error {
    let mut headers = http::HeaderMap::new();
    let secs = wait.as_secs().max(1);
    headers.insert(http::header::RETRY_AFTER, secs.into());
    Error::RateLimited {
        message: format!("too many wrong passwords: try again in {secs} s"),
        headers: Box::new(headers),
    }
}

/// How long after the last use a session's "seen" time is written again: a page view
/// does not write to the ledger each time.
const TOUCH_EVERY: TimeDelta = TimeDelta::seconds(60);

/// The session whose cookie is `token`, if it is alive (an expired one is removed).
pub async fn resume(db: &Db, lifetimes: Lifetimes, token: &str) -> Result<Option<Session>, Error> {
    if token.is_empty() || token.len() > 128 {
        return Ok(None);
    }
    let token_hash = hash(token);
    let Some((row, user)) = store::people::session(db, &token_hash).await? else {
        return Ok(None);
    };
    let now = Utc::now();
    if user.disabled_at.is_some() || !lifetimes.alive(row.created_at, row.seen_at, now) {
        store::people::end_session(db, &token_hash).await?;
        return Ok(None);
    }
    if now - row.seen_at >= TOUCH_EVERY {
        store::people::touch_session(db, &token_hash, now).await?;
    }
    Ok(Some(Session {
        person: Person::from_row(&user)?,
        csrf: row.csrf,
        token_hash,
    }))
}

/// Ends this browser's session.
pub async fn sign_out(db: &Db, session: &Session) -> Result<(), Error> {
    Ok(store::people::end_session(db, &session.token_hash).await?)
}

/// Ends every session of this person, this browser's too; returns how many ended.
pub async fn sign_out_everywhere(db: &Db, session: &Session) -> Result<u64, Error> {
    Ok(store::people::end_sessions_of(db, session.person.id, None).await?)
}

/// Changes the password after checking the current one; every other session of the
/// person ends.
pub async fn change_password(
    db: &Db,
    session: &Session,
    current: &str,
    new: &str,
) -> Result<(), Error> {
    let row = store::people::get(db, session.person.id)
        .await?
        .ok_or_else(|| Error::NotFound("this console user no longer exists".into()))?;
    if !verify_password(current, Some(&row.password_hash)).await {
        return Err(Error::invalid("the current password is wrong", "current"));
    }
    let hash = hash_password(new).await?;
    store::people::set_password(db, row.id, &hash).await?;
    store::people::end_sessions_of(db, row.id, Some(&session.token_hash)).await?;
    Ok(())
}

/// Removes the sessions that have expired (run now and then; `resume` refuses them
/// anyway) and the wrong passwords the throttle no longer counts.
pub async fn sweep(db: &Db, lifetimes: Lifetimes, throttle: &Throttle) -> Result<u64, Error> {
    let now = Utc::now();
    throttle.sweep(db, now).await?;
    Ok(store::people::end_expired(db, now - lifetimes.idle, now - lifetimes.absolute).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_dies_idle_or_old() {
        let life = Lifetimes {
            idle: TimeDelta::minutes(30),
            absolute: TimeDelta::hours(12),
        };
        let t0 = Utc::now();
        assert!(life.alive(t0, t0, t0 + TimeDelta::minutes(29)));
        assert!(!life.alive(t0, t0, t0 + TimeDelta::minutes(30)));
        let seen = t0 + TimeDelta::hours(11) + TimeDelta::minutes(59);
        assert!(life.alive(t0, seen, seen + TimeDelta::seconds(30)));
        assert!(!life.alive(t0, seen, t0 + TimeDelta::hours(12)));
    }

    #[test]
    fn tokens_are_long_random_and_csrf_compares_exactly() {
        let (a, b) = (random_token(), random_token());
        assert_eq!(a.len(), 43);
        assert_ne!(a, b);
        let session = Session {
            person: Person {
                id: 1,
                email: "a@x".into(),
                role: super::super::Role::Viewer,
                account_id: Some(1),
                created_at: Utc::now(),
                disabled: false,
            },
            csrf: a.clone(),
            token_hash: hash(&b),
        };
        assert!(session.csrf_matches(&a));
        assert!(!session.csrf_matches(&b));
        assert!(!session.csrf_matches(""));
        assert!(!session.csrf_matches(&a[..42]));
    }
}
