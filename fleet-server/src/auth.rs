//! API tokens and roles (pure, apart from the random secret).
//!
//! A token is presented as `Bearer NAME.SECRET`. The server keeps only the SHA-256 of the
//! secret (secrets are 32 random bytes, so a fast hash is enough: there is nothing to brute
//! force), compares it in constant time, and knows the token's role, expiry and revocation.
//! The bootstrap admin token in `<data>/admin-token` is a bare secret with the name `admin`.
//!
//! Roles nest: a viewer reads; an operator also changes the fleet (releases, groups, pins,
//! rollouts, commands); an admin also enrolls and revokes devices, manages tokens and takes
//! backups.

use fleet_proto::UnixMillis;
use serde::{Deserialize, Serialize};

/// The name of the bootstrap token from `<data>/admin-token`.
pub const BOOTSTRAP_NAME: &str = "admin";

// Roles are part of the API contract; the records keep the API's enum.
pub use fleet_api::Role;

/// A token as the server keeps it: never the secret itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Unique name; audit entries carry it.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// SHA-256 of the secret, hex.
    pub secret_sha256: String,
    /// When it was created.
    pub created_at: UnixMillis,
    /// Which token created it.
    pub created_by: String,
    /// When it stops working, if ever.
    pub expires_at: Option<UnixMillis>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<UnixMillis>,
}

/// Who is calling, once their token checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's name.
    pub name: String,
    /// Its role.
    pub role: Role,
}

/// Why a presented token was not accepted. Messages never contain the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer` header.
    #[error("no token: pass --token or set FLEET_TOKEN (the server wrote its admin token to <data>/admin-token at first start)")]
    Missing,
    /// The token is not one the server issued, or its secret is wrong.
    #[error("unknown or wrong token; check --token / FLEET_TOKEN (`fleetctl token ls` lists the names of valid tokens)")]
    Unknown,
    /// The token expired.
    #[error("token {name:?} expired at {at} ms since epoch; ask an admin for a new one (`fleetctl token create`)")]
    Expired {
        /// Its name.
        name: String,
        /// When it expired.
        at: u64,
    },
    /// The token was revoked.
    #[error("token {name:?} was revoked; ask an admin for a new one (`fleetctl token create`)")]
    Revoked {
        /// Its name.
        name: String,
    },
}

/// Splits a presented `NAME.SECRET` into its parts; a bare secret (no dot) is the bootstrap
/// token's.
pub fn split_token(presented: &str) -> (&str, &str) {
    match presented.rsplit_once('.') {
        Some((name, secret)) if !name.is_empty() => (name, secret),
        _ => (BOOTSTRAP_NAME, presented),
    }
}

/// Checks a presented secret against a token record at `now`.
pub fn check(record: &TokenRecord, secret: &str, now: UnixMillis) -> Result<Caller, AuthError> {
    if !constant_time_eq(sha256_hex(secret).as_bytes(), record.secret_sha256.as_bytes()) {
        return Err(AuthError::Unknown);
    }
    if record.revoked_at.is_some() {
        return Err(AuthError::Revoked { name: record.name.clone() });
    }
    if let Some(at) = record.expires_at {
        if now >= at {
            return Err(AuthError::Expired { name: record.name.clone(), at: at.0 });
        }
    }
    Ok(Caller { name: record.name.clone(), role: record.role })
}

/// Checks a token name: 1-64 of `a-z 0-9 - _` (it is part of the token and of audit lines).
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_".contains(&b));
    if !ok {
        return Err(format!(
            "token name {name:?}: use 1-64 of lowercase letters, digits, '-' and '_'"
        ));
    }
    if name == BOOTSTRAP_NAME {
        return Err(format!("token name {name:?} is reserved for the bootstrap admin token"));
    }
    Ok(())
}

/// A new token: its record and the string to hand to the user (shown once).
pub fn issue(
    name: &str,
    role: Role,
    created_by: &str,
    now: UnixMillis,
    expires_at: Option<UnixMillis>,
    secret: &[u8; 32],
) -> (TokenRecord, String) {
    let secret = fleet_proto::hex::encode(secret);
    let record = TokenRecord {
        name: name.to_owned(),
        role,
        secret_sha256: sha256_hex(&secret),
        created_at: now,
        created_by: created_by.to_owned(),
        expires_at,
        revoked_at: None,
    };
    (record, format!("{name}.{secret}"))
}

/// The bootstrap admin token's record, from the secret in `<data>/admin-token`.
pub fn bootstrap(secret: &str) -> TokenRecord {
    TokenRecord {
        name: BOOTSTRAP_NAME.to_owned(),
        role: Role::Admin,
        secret_sha256: sha256_hex(secret),
        created_at: UnixMillis(0),
        created_by: "fleet-server (first start)".to_owned(),
        expires_at: None,
        revoked_at: None,
    }
}

/// SHA-256 of `s`, lowercase hex.
pub fn sha256_hex(s: &str) -> String {
    fleet_proto::hex::encode(ring::digest::digest(&ring::digest::SHA256, s.as_bytes()).as_ref())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(role: Role, expires: Option<u64>) -> (TokenRecord, String) {
        issue("ci-bot", role, "admin", UnixMillis(10), expires.map(UnixMillis), &[7; 32])
    }

    #[test]
    fn an_issued_token_checks_out_with_its_role_and_only_its_secret() {
        let (record, presented) = token(Role::Operator, None);
        let (name, secret) = split_token(&presented);
        assert_eq!(name, "ci-bot");
        assert!(!record.secret_sha256.contains(secret), "only the hash is kept");
        let caller = check(&record, secret, UnixMillis(11)).unwrap();
        assert_eq!(caller, Caller { name: "ci-bot".into(), role: Role::Operator });
        assert_eq!(check(&record, "0000", UnixMillis(11)), Err(AuthError::Unknown));
    }

    #[test]
    fn expired_and_revoked_tokens_are_refused_with_their_name() {
        let (record, presented) = token(Role::Viewer, Some(100));
        let secret = split_token(&presented).1;
        assert!(check(&record, secret, UnixMillis(99)).is_ok());
        assert_eq!(
            check(&record, secret, UnixMillis(100)),
            Err(AuthError::Expired { name: "ci-bot".into(), at: 100 })
        );
        let revoked = TokenRecord { revoked_at: Some(UnixMillis(50)), ..record };
        assert_eq!(
            check(&revoked, secret, UnixMillis(60)),
            Err(AuthError::Revoked { name: "ci-bot".into() })
        );
    }

    #[test]
    fn a_bare_secret_is_the_bootstrap_admin_token() {
        let record = bootstrap("abc123");
        let (name, secret) = split_token("abc123");
        assert_eq!(name, BOOTSTRAP_NAME);
        assert_eq!(check(&record, secret, UnixMillis(1)).unwrap().role, Role::Admin);
    }

    #[test]
    fn roles_nest_and_names_are_checked() {
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
        assert_eq!("operator".parse::<Role>(), Ok(Role::Operator));
        assert!("root".parse::<Role>().is_err());
        assert!(check_name("ci-bot_2").is_ok());
        for bad in ["", "CI", "a.b", "admin", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
