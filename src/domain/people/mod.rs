//! The console's people: who signs in (an email, an argon2id hash of a password, a role
//! over an account), what each role may do, and their sessions (`sessions`), with sign-in
//! throttled per email and per address (`throttle`). Shared by the console and the CLI.

mod passwords;
pub mod sessions;
pub mod throttle;

use serde::Serialize;

use crate::error::Error;
use crate::store::people::{NewUser, UserRow};
use crate::store::{self, Db};

pub use passwords::{check_password, hash_password, verify_password};

/// What a console user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Runs the gateway: every account, people, the audit log, health.
    Operator,
    /// Manages one account's keys and people.
    Owner,
    /// Uses one account's keys: reads, and issues keys of its own.
    Member,
    /// Reads one account.
    Viewer,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Operator, Role::Owner, Role::Member, Role::Viewer];

    pub fn parse(text: &str) -> Result<Role, Error> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == text)
            .ok_or_else(|| {
                Error::invalid(
                    format!("role '{text}' is not operator, owner, member or viewer"),
                    "role",
                )
            })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::Owner => "owner",
            Role::Member => "member",
            Role::Viewer => "viewer",
        }
    }

    /// Sees and acts on every account.
    pub fn is_operator(self) -> bool {
        self == Role::Operator
    }

    /// May issue keys.
    pub fn issues_keys(self) -> bool {
        self != Role::Viewer
    }

    /// May revoke, rotate and change keys, and add people to the account.
    pub fn manages_account(self) -> bool {
        matches!(self, Role::Operator | Role::Owner)
    }
}

/// A console user, without the password hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Person {
    pub id: i64,
    pub email: String,
    pub role: Role,
    /// The account an owner, member or viewer belongs to; `None` for operators.
    pub account_id: Option<i64>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub disabled: bool,
}

impl Person {
    fn from_row(row: &UserRow) -> Result<Person, Error> {
        Ok(Person {
            id: row.id,
            email: row.email.clone(),
            role: Role::parse(&row.role)?,
            account_id: row.account_id,
            created_at: row.created_at,
            disabled: row.disabled_at.is_some(),
        })
    }

    /// Whether this person may see account `id`.
    pub fn sees(&self, account_id: i64) -> bool {
        self.role.is_operator() || self.account_id == Some(account_id)
    }
}

/// An email as stored: trimmed, lower case, one `@` with something on both sides.
pub fn check_email(email: &str) -> Result<String, Error> {
    let email = email.trim().to_lowercase();
    let well_formed = email.len() <= 254
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && email.split_once('@').is_some_and(|(user, host)| {
            !user.is_empty() && !host.is_empty() && !host.contains('@')
        });
    if well_formed {
        Ok(email)
    } else {
        Err(Error::invalid(
            "email must look like name@example.com",
            "email",
        ))
    }
}

/// Creates a console user: operators belong to no account, everyone else to one.
pub async fn create(
    db: &Db,
    email: &str,
    password: &str,
    role: Role,
    account_id: Option<i64>,
) -> Result<Person, Error> {
    let email = check_email(email)?;
    match (role, account_id) {
        (Role::Operator, Some(_)) => {
            return Err(Error::invalid(
                "an operator sees every account: give no account",
                "account",
            ));
        }
        (Role::Owner | Role::Member | Role::Viewer, None) => {
            return Err(Error::invalid(
                format!("a {} belongs to an account: name it", role.as_str()),
                "account",
            ));
        }
        _ => {}
    }
    let hash = hash_password(password).await?;
    let row = store::people::create(
        db,
        NewUser {
            email: &email,
            password_hash: &hash,
            role: role.as_str(),
            account_id,
        },
    )
    .await?;
    Person::from_row(&row)
}

/// The people of one account, or everyone.
pub async fn list(db: &Db, account_id: Option<i64>) -> Result<Vec<Person>, Error> {
    store::people::list(db, account_id)
        .await?
        .iter()
        .map(Person::from_row)
        .collect()
}

/// Person `id`, or 404.
pub async fn get(db: &Db, id: i64) -> Result<Person, Error> {
    let row = store::people::get(db, id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("console user {id} does not exist")))?;
    Person::from_row(&row)
}

/// Disables (or enables again) person `id`; a disabled person's sessions end.
pub async fn set_disabled(db: &Db, id: i64, disabled: bool) -> Result<Person, Error> {
    get(db, id).await?;
    let at = disabled.then(chrono::Utc::now);
    store::people::set_disabled(db, id, at).await?;
    if disabled {
        store::people::end_sessions_of(db, id, None).await?;
    }
    get(db, id).await
}

/// Sets person `email`'s password (an operator's reset, or the demo's fresh logins),
/// creating the person with `role` and `account_id` if there is none; their sessions end.
pub async fn set_up(
    db: &Db,
    email: &str,
    password: &str,
    role: Role,
    account_id: Option<i64>,
) -> Result<Person, Error> {
    let email = check_email(email)?;
    match store::people::by_email(db, &email).await? {
        None => create(db, &email, password, role, account_id).await,
        Some(row) => {
            let hash = hash_password(password).await?;
            store::people::set_password(db, row.id, &hash).await?;
            store::people::end_sessions_of(db, row.id, None).await?;
            Person::from_row(&row)
        }
    }
}
