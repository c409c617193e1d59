//! The one client of the REST API (feature `client`): a base URL and a bearer token, requests
//! by method and path, answers as `(status, JSON)` or typed. Blocking (ureq): async callers use
//! `spawn_blocking`. `fleetctl`, `fleet-sim` and the e2e tests all talk to the server through
//! it; every error names the method, the URL and the reason.

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// The most a typed answer may hold (a page of a thousand devices with their reports).
const ANSWER_LIMIT: u64 = 1 << 30;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No HTTP answer: the server is not there, the connection broke, TLS failed.
    #[error("{method} {url}: {reason}")]
    Unreachable {
        /// The method.
        method: String,
        /// The URL.
        url: String,
        /// Why (the transport's words).
        reason: String,
    },
    /// The server answered with a status that is not a success.
    #[error("{method} {url}: {status}: {}", detail(.body))]
    Refused {
        /// The method.
        method: String,
        /// The URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The answer (problem details as a rule; `null` if it was not JSON).
        body: Value,
    },
    /// A success whose body is not what was expected.
    #[error("{method} {url}: unexpected answer: {reason}")]
    Decode {
        /// The method.
        method: String,
        /// The URL.
        url: String,
        /// Why it does not decode.
        reason: String,
    },
}

/// What a path segment or query value keeps unescaped: RFC 3986's unreserved characters
/// (and `@`, which release ids `app@version` use and servers take as is).
const COMPONENT: &AsciiSet =
    &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~').remove(b'@');

/// Percent-encodes `s` as one path segment or query value (`a/b c` is `a%2Fb%20c`).
pub fn encode_component(s: &str) -> String {
    utf8_percent_encode(s, COMPONENT).to_string()
}

/// A problem details' `detail` (or a bare `error`), if the body has one.
pub fn detail(body: &Value) -> &str {
    body.get("detail")
        .or_else(|| body.get("error"))
        .and_then(Value::as_str)
        .unwrap_or("no reason given")
}

/// A status as HTTP prints it: `404 Not Found`.
pub fn status_line(status: u16) -> String {
    match ureq::http::StatusCode::from_u16(status) {
        Ok(s) => s.to_string(),
        Err(_) => status.to_string(),
    }
}

/// What a request carries.
#[derive(Debug, Clone, Copy)]
enum Payload<'a> {
    None,
    Json(&'a Value),
    Bytes(&'a [u8]),
}

/// A client of one server with one token.
#[derive(Debug, Clone)]
pub struct ApiClient {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl ApiClient {
    /// A client of the server at `base` (`http://127.0.0.1:8080`; a trailing `/` is dropped)
    /// presenting `token`, if any.
    pub fn new(base: &str, token: Option<String>) -> ApiClient {
        let agent = ureq::Agent::config_builder().http_status_as_error(false).build().new_agent();
        ApiClient { base: base.trim_end_matches('/').to_owned(), token, agent }
    }

    /// The server's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `method path` with `body` as JSON (none: an empty body): the status and the answer as
    /// JSON (`null` if it is not JSON). Only a transport failure is an error.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), ApiError> {
        let payload = body.map_or(Payload::None, Payload::Json);
        let mut response = self.request(method, path, payload)?;
        let status = response.status().as_u16();
        Ok((status, response.body_mut().read_json().unwrap_or_default()))
    }

    /// GET `path`, typed.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiError> {
        self.send::<(), T>("GET", path, None)
    }

    /// POST `body` to `path`, typed.
    pub fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ApiError> {
        self.send("POST", path, Some(body))
    }

    /// PUT `body` to `path`, typed.
    pub fn put<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ApiError> {
        self.send("PUT", path, Some(body))
    }

    /// PATCH `path` with `body`, typed.
    pub fn patch<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ApiError> {
        self.send("PATCH", path, Some(body))
    }

    /// DELETE `path`, typed.
    pub fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiError> {
        self.send::<(), T>("DELETE", path, None)
    }

    /// `method path` with `body` as JSON; a status that is not a success is
    /// [`ApiError::Refused`] with the server's answer.
    pub fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ApiError> {
        let json = body
            .map(serde_json::to_value)
            .transpose()
            .map_err(|e| self.error(method, path, e.to_string()))?;
        self.typed(method, path, json.as_ref().map_or(Payload::None, Payload::Json))
    }

    /// PUTs `bytes` as is (`application/octet-stream`), e.g. a secret's value, typed.
    pub fn put_bytes<T: DeserializeOwned>(&self, path: &str, bytes: &[u8]) -> Result<T, ApiError> {
        self.typed("PUT", path, Payload::Bytes(bytes))
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn error(&self, method: &str, path: &str, reason: String) -> ApiError {
        ApiError::Decode { method: method.to_owned(), url: self.url(path), reason }
    }

    fn typed<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        payload: Payload<'_>,
    ) -> Result<T, ApiError> {
        let mut response = self.request(method, path, payload)?;
        let status = response.status();
        if !status.is_success() {
            return Err(ApiError::Refused {
                method: method.to_owned(),
                url: self.url(path),
                status: status.as_u16(),
                body: response.body_mut().read_json().unwrap_or_default(),
            });
        }
        response
            .body_mut()
            .with_config()
            .limit(ANSWER_LIMIT)
            .read_json()
            .map_err(|e| self.error(method, path, e.to_string()))
    }

    fn request(
        &self,
        method: &str,
        path: &str,
        payload: Payload<'_>,
    ) -> Result<ureq::http::Response<ureq::Body>, ApiError> {
        let url = self.url(path);
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}")).unwrap_or_default();
        let a = &self.agent;
        let sent = match (method, payload) {
            ("PUT", Payload::Bytes(bytes)) => a
                .put(&url)
                .header("authorization", &auth)
                .header("content-type", "application/octet-stream")
                .send(bytes),
            ("GET", _) => a.get(&url).header("authorization", &auth).call(),
            ("DELETE", _) => a.delete(&url).header("authorization", &auth).call(),
            ("PUT", Payload::Json(b)) => a.put(&url).header("authorization", &auth).send_json(b),
            ("PATCH", Payload::Json(b)) => {
                a.patch(&url).header("authorization", &auth).send_json(b)
            }
            (_, Payload::Json(b)) => a.post(&url).header("authorization", &auth).send_json(b),
            (_, Payload::Bytes(bytes)) => a.post(&url).header("authorization", &auth).send(bytes),
            (_, Payload::None) => a.post(&url).header("authorization", &auth).send_empty(),
        };
        sent.map_err(|e| ApiError::Unreachable {
            method: method.to_owned(),
            url,
            reason: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_are_percent_encoded_except_unreserved_and_at() {
        assert_eq!(encode_component("robot-stack@1.4_2~x"), "robot-stack@1.4_2~x");
        assert_eq!(encode_component("a/b c&d=e?"), "a%2Fb%20c%26d%3De%3F");
        assert_eq!(encode_component("ü"), "%C3%BC");
    }
}
