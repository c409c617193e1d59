//! Dashboard sessions: an API token is presented once at login and becomes a signed cookie;
//! every form carries a CSRF token bound to that cookie (pure, but for the key).
//!
//! The cookie is `NAME.EXPIRES.MAC`: the token's name, when the session ends (ms since epoch),
//! and an HMAC over both and the token's stored secret hash under a key only this server holds
//! (`web-session.key` in its data directory). So:
//! - the token's secret never rests in the browser (the cookie cannot be replayed as a token),
//!   and nothing is stored per session;
//! - every request looks the token up again: revoking or expiring it ends its sessions at
//!   once, and re-issuing a token of the same name (a new secret hash) invalidates the old ones;
//! - a session lasts [`SESSION_MS`] at most, whatever the token's own lifetime.
//!
//! The cookie is `HttpOnly` and `SameSite=Strict` (and `Secure` behind TLS); each form also
//! carries an HMAC of the cookie ([`SessionKey::csrf`]), checked before any change.

use fleet_proto::UnixMillis;

use crate::auth::{AuthError, Caller, TokenRecord};

/// The cookie's name.
pub const COOKIE: &str = "fleet_session";
/// How long a session lasts.
pub const SESSION_MS: u64 = 12 * 3600 * 1000;
/// The form field that carries the CSRF token.
pub const CSRF_FIELD: &str = "_csrf";

/// The key sessions and CSRF tokens are signed with.
#[derive(Clone)]
pub struct SessionKey {
    key: ring::hmac::Key,
}

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey")
    }
}

/// Why a session cookie was not accepted. None of these say which part was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// Not a cookie this server made, or made for another token.
    #[error("the session is not valid; log in again")]
    Invalid,
    /// Older than [`SESSION_MS`].
    #[error("the session ended; log in again")]
    Ended,
    /// The token behind it no longer works.
    #[error(transparent)]
    Token(#[from] AuthError),
}

impl SessionKey {
    /// A key from its bytes' HMAC key.
    pub fn new(key: ring::hmac::Key) -> SessionKey {
        SessionKey { key }
    }

    /// The cookie value of a session for the token `record`, started at `now`.
    pub fn issue(&self, record: &TokenRecord, now: UnixMillis) -> String {
        let expires = now.0.saturating_add(SESSION_MS);
        let mac = ring::hmac::sign(&self.key, &message(&record.name, expires, record));
        format!("{}.{expires}.{}", record.name, fleet_proto::hex::encode(mac.as_ref()))
    }

    /// Who a cookie value belongs to at `now`; `token` looks a token record up by name.
    pub fn verify(
        &self,
        cookie: &str,
        token: impl FnOnce(&str) -> Option<TokenRecord>,
        now: UnixMillis,
    ) -> Result<Caller, SessionError> {
        let mut parts = cookie.split('.');
        let (Some(name), Some(expires), Some(mac), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(SessionError::Invalid);
        };
        let expires: u64 = expires.parse().map_err(|_| SessionError::Invalid)?;
        let mac = fleet_proto::hex::decode(mac).ok_or(SessionError::Invalid)?;
        let record = token(name).ok_or(SessionError::Invalid)?;
        ring::hmac::verify(&self.key, &message(name, expires, &record), &mac)
            .map_err(|_| SessionError::Invalid)?;
        if now.0 >= expires {
            return Err(SessionError::Ended);
        }
        if record.revoked_at.is_some() {
            return Err(AuthError::Revoked { name: record.name }.into());
        }
        if let Some(at) = record.expires_at.filter(|at| now >= *at) {
            return Err(AuthError::Expired { name: record.name, at: at.0 }.into());
        }
        Ok(Caller { name: record.name, role: record.role })
    }

    /// The CSRF token of the session with cookie value `cookie`.
    pub fn csrf(&self, cookie: &str) -> String {
        let mut m = b"fleet web csrf v1\0".to_vec();
        m.extend_from_slice(cookie.as_bytes());
        fleet_proto::hex::encode(ring::hmac::sign(&self.key, &m).as_ref())
    }

    /// Whether `presented` is the CSRF token of the session `cookie` (constant time).
    pub fn csrf_ok(&self, cookie: &str, presented: &str) -> bool {
        let Some(tag) = fleet_proto::hex::decode(presented) else { return false };
        let mut m = b"fleet web csrf v1\0".to_vec();
        m.extend_from_slice(cookie.as_bytes());
        ring::hmac::verify(&self.key, &m, &tag).is_ok()
    }
}

fn message(name: &str, expires: u64, record: &TokenRecord) -> Vec<u8> {
    format!("fleet web session v1\0{name}\0{expires}\0{}", record.secret_sha256).into_bytes()
}

/// The `Set-Cookie` value that starts a session (`secure`: served over TLS).
pub fn set_cookie(value: &str, secure: bool) -> String {
    let max_age = SESSION_MS / 1000;
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}")
}

/// The `Set-Cookie` value that ends it.
pub fn clear_cookie(secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}")
}

/// The session cookie's value among a request's `Cookie` headers.
pub fn cookie_value<'h>(headers: impl IntoIterator<Item = &'h str>) -> Option<&'h str> {
    headers
        .into_iter()
        .flat_map(|h| h.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
        .filter(|v| !v.is_empty())
}

/// Where to go after logging in: a path on this site, never another site (`//host`,
/// `/\host` and absolute URLs become `/`).
pub fn local_path(next: &str) -> &str {
    let ok = next.starts_with('/')
        && !next.starts_with("//")
        && !next.starts_with("/\\")
        && !next.chars().any(|c| c.is_control());
    if ok {
        next
    } else {
        "/"
    }
}

#[cfg(test)]
mod tests {
    use fleet_api::Role;

    use super::*;
    use crate::auth;

    fn key() -> SessionKey {
        SessionKey::new(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[7; 32]))
    }

    fn token(name: &str) -> TokenRecord {
        auth::issue(name, Role::Operator, "admin", UnixMillis(0), None, &[1; 32]).0
    }

    #[test]
    fn a_session_names_its_token_until_it_ends() {
        let (key, record) = (key(), token("alice"));
        let cookie = key.issue(&record, UnixMillis(1000));
        assert!(cookie.starts_with("alice."), "{cookie}");
        assert!(!cookie.contains(&record.secret_sha256), "the cookie holds no secret");
        let caller = key.verify(&cookie, |_| Some(record.clone()), UnixMillis(2000)).unwrap();
        assert_eq!((caller.name.as_str(), caller.role), ("alice", Role::Operator));
        let later = UnixMillis(1000 + SESSION_MS);
        assert_eq!(key.verify(&cookie, |_| Some(record.clone()), later), Err(SessionError::Ended));
    }

    #[test]
    fn forged_or_stale_sessions_are_refused() {
        let (key, record) = (key(), token("alice"));
        let cookie = key.issue(&record, UnixMillis(0));
        let now = UnixMillis(1);
        let lookup = |r: &TokenRecord| {
            let r = r.clone();
            move |_: &str| Some(r)
        };
        // Another name, a later expiry, another key, garbage.
        let renamed = cookie.replacen("alice", "admin", 1);
        assert_eq!(key.verify(&renamed, lookup(&record), now), Err(SessionError::Invalid));
        let (name, rest) = cookie.split_once('.').unwrap();
        let mac = rest.split_once('.').unwrap().1;
        let extended = format!("{name}.{}.{mac}", u64::MAX);
        assert_eq!(key.verify(&extended, lookup(&record), now), Err(SessionError::Invalid));
        let other = SessionKey::new(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[8; 32]));
        assert_eq!(other.verify(&cookie, lookup(&record), now), Err(SessionError::Invalid));
        for junk in ["", "alice", "alice.1", "alice.x.00", "a.1.zz", "a.1.00.00"] {
            assert_eq!(
                key.verify(junk, lookup(&record), now),
                Err(SessionError::Invalid),
                "{junk}"
            );
        }
        // The token is gone, revoked, expired, or re-issued with a new secret.
        assert_eq!(key.verify(&cookie, |_| None, now), Err(SessionError::Invalid));
        let revoked = TokenRecord { revoked_at: Some(UnixMillis(0)), ..record.clone() };
        assert!(matches!(
            key.verify(&cookie, lookup(&revoked), now),
            Err(SessionError::Token(AuthError::Revoked { .. }))
        ));
        let expired = TokenRecord { expires_at: Some(now), ..record.clone() };
        assert!(matches!(
            key.verify(&cookie, lookup(&expired), now),
            Err(SessionError::Token(AuthError::Expired { .. }))
        ));
        let reissued = auth::issue("alice", Role::Admin, "admin", now, None, &[2; 32]).0;
        assert_eq!(key.verify(&cookie, lookup(&reissued), now), Err(SessionError::Invalid));
    }

    #[test]
    fn csrf_tokens_belong_to_one_session() {
        let key = key();
        let (a, b) =
            (key.issue(&token("alice"), UnixMillis(0)), key.issue(&token("bob"), UnixMillis(0)));
        assert!(key.csrf_ok(&a, &key.csrf(&a)));
        assert!(!key.csrf_ok(&b, &key.csrf(&a)));
        assert!(!key.csrf_ok(&a, ""));
        assert!(!key.csrf_ok(&a, "not hex"));
    }

    #[test]
    fn cookies_are_found_and_set_strictly() {
        assert_eq!(cookie_value(["a=1; fleet_session=xyz; b=2"]), Some("xyz"));
        assert_eq!(cookie_value(["a=1", "fleet_session=v"]), Some("v"));
        assert_eq!(cookie_value(["fleet_session="]), None);
        assert_eq!(cookie_value(["xfleet_session=v"]), None);
        let set = set_cookie("v", false);
        for part in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
            assert!(set.contains(part), "{set}");
        }
        assert!(!set.contains("Secure"));
        assert!(set_cookie("v", true).ends_with("; Secure"));
        assert!(clear_cookie(false).contains("Max-Age=0"));
    }

    #[test]
    fn after_login_only_local_paths() {
        assert_eq!(local_path("/devices?state=failed"), "/devices?state=failed");
        for bad in ["//evil.example", "/\\evil.example", "https://evil.example", "", "/a\nb"] {
            assert_eq!(local_path(bad), "/", "{bad:?}");
        }
    }
}
