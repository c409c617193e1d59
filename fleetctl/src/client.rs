//! Talking to the server: where it is, which token, and errors with the exit codes scripts
//! rely on (shared/CLI.md): 1 usage or input, 2 refused by the server, 3 the thing watched
//! ended unhealthy, 4 timed out, 5 server unreachable.

use std::path::PathBuf;

use fleet_api::client::{detail, encode_component, status_line, ApiClient, ApiError};
use fleet_api::Page;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A failure with the exit code scripts rely on.
#[derive(Debug)]
pub struct Failure {
    /// Exit code.
    pub code: u8,
    /// What to print.
    pub message: String,
}

impl Failure {
    /// Exit 1: the command line or a local input is wrong.
    pub fn usage(message: impl Into<String>) -> Failure {
        Failure { code: 1, message: message.into() }
    }
}

/// `~/.config/fleet/config.toml`, written by `fleetctl login`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Profile {
    /// The server URL.
    pub server: Option<String>,
    /// The token.
    pub token: Option<String>,
}

/// Where `fleetctl login` keeps the server and token.
pub fn profile_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("fleet").join("config.toml"))
}

/// Whether `url` names a server on this machine (`localhost`, `127.x.x.x`, `[::1]`).
pub fn is_loopback_url(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Reads the profile, if there is one.
pub fn read_profile() -> Profile {
    profile_path()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|text| toml::from_str(&text).ok())
        .unwrap_or_default()
}

/// The server and token to use: flags and environment first, then the profile, then the
/// server's own files when run where the server runs.
#[derive(Debug, Clone)]
pub struct Client {
    /// Base URL.
    pub server: String,
    api: ApiClient,
}

impl Client {
    /// A client for `server` (flag/env) and `token` (flag/env), falling back to the profile.
    pub fn new(server: Option<String>, token: Option<String>) -> Client {
        let profile = read_profile();
        let normalize = |s: String| s.trim_end_matches('/').to_owned();
        let profile_server = profile.server.map(normalize);
        let server = server
            .map(normalize)
            .or_else(|| profile_server.clone())
            .unwrap_or_else(|| "http://127.0.0.1:8080".to_owned());
        let token = token.or_else(|| {
            // A stored token goes only where it came from: the profile's to the profile's
            // server, the local server's admin token to a server on this machine.
            let profile_token =
                profile.token.filter(|_| profile_server.as_deref() == Some(server.as_str()));
            profile_token.or_else(|| {
                is_loopback_url(&server)
                    .then(|| std::fs::read_to_string("fleet-data/admin-token").ok())
                    .flatten()
                    .map(|t| t.trim().to_owned())
            })
        });
        Client { api: ApiClient::new(&server, token), server }
    }

    /// GET `path`.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, Failure> {
        self.send::<(), T>("GET", path, None)
    }

    /// POST `body` to `path`.
    pub fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, Failure> {
        self.send("POST", path, Some(body))
    }

    /// Sends a request; answers that are not 2xx become failures with the server's reason.
    pub fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, Failure> {
        self.api.send(method, path, body).map_err(|e| self.failure(e))
    }

    /// PUTs `bytes` as is (application/octet-stream), e.g. a secret's value.
    pub fn put_bytes<T: DeserializeOwned>(&self, path: &str, bytes: &[u8]) -> Result<T, Failure> {
        self.api.put_bytes(path, bytes).map_err(|e| self.failure(e))
    }

    /// An API error as what to print and the exit code.
    fn failure(&self, e: ApiError) -> Failure {
        match e {
            ApiError::Unreachable { reason, .. } => Failure {
                code: 5,
                message: format!(
                    "cannot reach the fleet server at {}: {reason}\n  is it running? start one with `fleet-server`, or point --server / FLEET_SERVER at yours (`fleetctl login --server URL` remembers it)",
                    self.server
                ),
            },
            ApiError::Refused { status, body, .. } => {
                let mut message = format!("{} ({})", detail(&body), status_line(status));
                if let Some(errors) = body.get("errors").and_then(|e| e.as_array()) {
                    for e in errors {
                        let path = e.get("path").and_then(|p| p.as_str()).unwrap_or("");
                        let reason = e.get("reason").and_then(|p| p.as_str()).unwrap_or("");
                        message.push_str(&format!("\n  {path}: {reason}"));
                    }
                }
                let code = if (400..500).contains(&status) { 2 } else { 5 };
                Failure { code, message }
            }
            ApiError::Decode { url, reason, .. } => Failure {
                code: 5,
                message: format!(
                    "unexpected answer from {url}: {reason} (is --server a Fleet server of the same version?)"
                ),
            },
        }
    }
}

/// Prints complete objects as JSON for scripts: nothing else goes to stdout.
pub fn print_json<T: Serialize>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("fleetctl: cannot print JSON: {e}"),
    }
}

/// Every page of a list route.
pub fn all_pages<T: DeserializeOwned>(
    client: &Client,
    path: &str,
    query: &[String],
) -> Result<Vec<T>, Failure> {
    let mut items = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut q = query.to_vec();
        q.push("limit=1000".to_owned());
        if let Some(a) = &after {
            q.push(format!("after={}", encode_component(a)));
        }
        let page: Page<T> = client.get(&format!("{path}?{}", q.join("&")))?;
        items.extend(page.items);
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(items),
        }
    }
}

/// How many devices a change re-targeted (its answer's `retargeted` list).
pub fn retargeted(answer: &serde_json::Value) -> usize {
    answer["retargeted"].as_array().map_or(0, Vec::len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_servers_on_this_machine_count_as_loopback() {
        for url in [
            "http://127.0.0.1:8080",
            "http://localhost:9000/",
            "https://[::1]:8443",
            "127.0.0.2:80",
        ] {
            assert!(is_loopback_url(url), "{url}");
        }
        for url in [
            "https://fleet.example.com",
            "http://127.0.0.1.evil.example:8080",
            "http://localhost.example",
            "http://10.0.0.5:8080",
            "http://[2001:db8::1]:80",
        ] {
            assert!(!is_loopback_url(url), "{url}");
        }
    }
}
