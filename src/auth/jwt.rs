//! Admin tokens: JWTs signed HS256 with a secret from the environment, or RS256 by an
//! identity provider whose public key is configured. Signature, `exp`, `nbf`, `iss` and
//! `aud` are always checked; the algorithm must be one of those two, as configured.

use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use jsonwebtoken::{
    Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, decode_header, encode,
};
use serde::{Deserialize, Serialize};

use crate::config::AdminConfig;
use crate::error::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything.
    Admin,
    /// Read-only: usage, invoices, reports, and listings.
    Viewer,
}

/// Spec claims default when absent so that validation, which requires them, can name the
/// missing one (the library reads this struct before it validates).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    #[serde(default)]
    pub sub: String,
    pub role: Role,
    #[serde(default)]
    pub iss: String,
    #[serde(default)]
    pub aud: String,
    #[serde(default)]
    pub iat: i64,
    #[serde(default)]
    pub nbf: i64,
    #[serde(default)]
    pub exp: i64,
}

/// Verifies admin tokens (and mints them, with the HS256 secret).
pub struct AdminAuth {
    hs256: Option<(EncodingKey, DecodingKey)>,
    rs256: Option<DecodingKey>,
    config: AdminConfig,
}

impl AdminAuth {
    /// From the configuration; `None` when no key is configured (admin API off).
    pub fn from_config(config: &AdminConfig) -> anyhow::Result<Option<AdminAuth>> {
        let hs256 = config
            .jwt_secret()?
            .map(|secret| {
                anyhow::ensure!(
                    secret.len() >= 32,
                    "{} must hold at least 32 characters for HS256",
                    config.secret_source()
                );
                Ok((
                    EncodingKey::from_secret(secret.as_bytes()),
                    DecodingKey::from_secret(secret.as_bytes()),
                ))
            })
            .transpose()?;
        let rs256 = config
            .jwt_public_key_file
            .as_ref()
            .map(|file| -> anyhow::Result<DecodingKey> {
                let pem = std::fs::read(file)
                    .with_context(|| format!("cannot read {}", file.display()))?;
                DecodingKey::from_rsa_pem(&pem)
                    .with_context(|| format!("{} is not an RSA public key in PEM", file.display()))
            })
            .transpose()?;
        if hs256.is_none() && rs256.is_none() {
            return Ok(None);
        }
        Ok(Some(AdminAuth {
            hs256,
            rs256,
            config: config.clone(),
        }))
    }

    /// Checks a bearer token and returns its claims.
    pub fn verify(&self, token: &str) -> Result<Claims, Error> {
        let invalid = |why: &str| Error::AdminUnauthorized(format!("invalid admin token: {why}"));
        let header = decode_header(token).map_err(|_| invalid("malformed"))?;
        let key = match header.alg {
            Algorithm::HS256 => self.hs256.as_ref().map(|(_, d)| d),
            Algorithm::RS256 => self.rs256.as_ref(),
            _ => None,
        }
        .ok_or_else(|| invalid("algorithm not accepted"))?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.leeway = self.config.leeway_secs;
        decode::<Claims>(token, key, &validation)
            .map(|data| data.claims)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                match e.kind() {
                    ErrorKind::ExpiredSignature => invalid("expired"),
                    ErrorKind::ImmatureSignature => invalid("not valid yet"),
                    ErrorKind::InvalidIssuer => invalid("wrong issuer"),
                    ErrorKind::InvalidAudience => invalid("wrong audience"),
                    ErrorKind::InvalidSignature => invalid("bad signature"),
                    ErrorKind::MissingRequiredClaim(claim) => {
                        invalid(&format!("missing claim '{claim}'"))
                    }
                    _ => invalid("malformed"),
                }
            })
    }

    /// A token for `role`, valid from now for `ttl`, signed with the HS256 secret.
    pub fn mint(&self, subject: &str, role: Role, ttl: Duration) -> anyhow::Result<String> {
        let (key, _) = self.hs256.as_ref().with_context(|| {
            format!(
                "minting needs the HS256 secret in {}",
                self.config.secret_source()
            )
        })?;
        let now = Utc::now().timestamp();
        let claims = Claims {
            sub: subject.to_string(),
            role,
            iss: self.config.issuer.clone(),
            aud: self.config.audience.clone(),
            iat: now,
            nbf: now,
            exp: now + ttl.as_secs() as i64,
        };
        Ok(encode(&Header::new(Algorithm::HS256), &claims, key)?)
    }
}
