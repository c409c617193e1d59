//! The little HTTP/1.1 the agent's local sockets speak (update locks, telemetry ingestion):
//! one request per connection, a bounded head, `Connection: close` answers with JSON bodies.
//! Small on purpose: a full HTTP stack would be most of the agent's code for two endpoints.

use std::fmt::Write as _;

use serde::Serialize;
use tokio::io::AsyncReadExt;

impl Request {
    /// A header's value (names compare case-insensitively).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// A parsed request line.
#[derive(Debug)]
pub(crate) struct Request {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) query: Option<String>,
    /// Header names (lower case) and values.
    pub(crate) headers: Vec<(String, String)>,
}

/// An answer: status, optional JSON body, and for 405 the methods that are allowed.
#[derive(Debug)]
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) body: Option<serde_json::Value>,
    pub(crate) allow: Option<&'static str>,
    /// `Retry-After` seconds (429, 503).
    pub(crate) retry_after: Option<u64>,
}

impl Response {
    /// `204 No Content`.
    pub(crate) fn no_content() -> Response {
        Response { status: 204, body: None, allow: None, retry_after: None }
    }

    pub(crate) fn json(status: u16, body: serde_json::Value) -> Response {
        Response { status, body: Some(body), allow: None, retry_after: None }
    }

    /// A JSON answer; serialising our own types cannot fail, but if it did the client gets a 500
    /// rather than the task panicking (as `json!` would).
    pub(crate) fn serialized(status: u16, value: &impl Serialize) -> Response {
        match serde_json::to_value(value) {
            Ok(body) => Response::json(status, body),
            Err(e) => Response::error(500, format!("cannot encode the answer: {e}")),
        }
    }

    pub(crate) fn error(status: u16, message: impl Into<String>) -> Response {
        Response::json(status, serde_json::json!({ "error": message.into() }))
    }

    pub(crate) fn method_not_allowed(method: &str, allow: &'static str) -> Response {
        Response {
            allow: Some(allow),
            ..Response::error(405, format!("method {method} not allowed here; use {allow}"))
        }
    }

    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let body = self.body.as_ref().map(ToString::to_string).unwrap_or_default();
        let mut head = format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        if let Some(allow) = self.allow {
            let _ = write!(head, "Allow: {allow}\r\n");
        }
        if let Some(secs) = self.retry_after {
            let _ = write!(head, "Retry-After: {secs}\r\n");
        }
        // RFC 9110: a 204 carries neither a body nor Content-Length.
        if self.status != 204 {
            let _ = write!(
                head,
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            );
        }
        head.push_str("Connection: close\r\n\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body.as_bytes());
        bytes
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        403 => "Forbidden",
        409 => "Conflict",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        429 => "Too Many Requests",
        503 => "Service Unavailable",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// Why a request head could not be read.
pub(crate) enum ReadError {
    /// The client closed without sending anything: nothing to answer.
    Closed,
    /// An answer to send instead of handling the request.
    Reply(Response),
}

/// Reads up to the blank line ending the request head, at most `max` bytes.
/// Returns the head and the bytes read after it (the start of the body).
pub(crate) async fn read_head(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    max: usize,
) -> Result<(Vec<u8>, Vec<u8>), ReadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await.map_err(|e| {
            ReadError::Reply(Response::error(400, format!("cannot read request: {e}")))
        })?;
        if n == 0 {
            return Err(if buf.is_empty() {
                ReadError::Closed
            } else {
                ReadError::Reply(Response::error(
                    400,
                    "connection closed before the end of the request head",
                ))
            });
        }
        // Search only where the terminator can be: the new bytes and the 3 before them.
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        let end = find_head_end(&buf[from..]).map(|end| from + end);
        if end.unwrap_or(buf.len()) > max {
            return Err(ReadError::Reply(Response::error(
                431,
                format!("request head is larger than {max} bytes"),
            )));
        }
        if let Some(end) = end {
            let rest = buf.split_off(end);
            return Ok((buf, rest));
        }
    }
}

/// The length of the head up to and including its blank line (CRLF CRLF, or LF LF from lenient
/// clients), if it is complete.
pub(crate) fn find_head_end(buf: &[u8]) -> Option<usize> {
    (0..buf.len()).find_map(|i| {
        let rest = &buf[i..];
        if rest.starts_with(b"\r\n\r\n") {
            Some(i + 4)
        } else if rest.starts_with(b"\n\n") {
            Some(i + 2)
        } else {
            None
        }
    })
}

/// Most headers a request may have.
const MAX_HEADERS: usize = 32;

/// Parses the request line and the headers with `httparse` (strict about the grammar), then
/// refuses what it lets through but we must not guess at: a header that is not UTF-8, and a
/// `Content-Length` given twice or not plain digits (`+5` parses as 5 in Rust).
pub(crate) fn parse_request(head: &[u8]) -> Result<Request, Response> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => {
            return Err(Response::error(400, "the request head is incomplete"))
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Response::error(431, format!("more than {MAX_HEADERS} headers")))
        }
        Err(httparse::Error::Version) => {
            return Err(Response::error(505, "only HTTP/1.1 and HTTP/1.0 are supported"))
        }
        Err(e) => {
            return Err(Response::error(
                400,
                format!("malformed request head ({e}); expected METHOD /path HTTP/1.1 and Name: value lines"),
            ))
        }
    }
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return Err(Response::error(400, "the request line is incomplete"));
    };
    if !target.starts_with('/') {
        return Err(Response::error(400, format!("request target {target:?} must start with /")));
    }
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, (!query.is_empty()).then(|| query.to_owned())),
        None => (target, None),
    };
    let mut headers = Vec::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value)
            .map_err(|_| Response::error(400, format!("header {} is not UTF-8", h.name)))?;
        headers.push((h.name.to_ascii_lowercase(), value.trim().to_owned()));
    }
    let lengths: Vec<&str> =
        headers.iter().filter(|(k, _)| k == "content-length").map(|(_, v)| v.as_str()).collect();
    if lengths.len() > 1 {
        return Err(Response::error(400, "Content-Length is given more than once"));
    }
    if let Some(len) =
        lengths.first().filter(|l| l.is_empty() || !l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(Response::error(400, format!("Content-Length {len:?} is not a number")));
    }
    Ok(Request { method: method.to_owned(), path: path.to_owned(), query, headers })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(head: &str) -> (u16, String) {
        let r = parse_request(head.as_bytes()).unwrap_err();
        (r.status, r.body.map(|b| b["error"].to_string()).unwrap_or_default())
    }

    #[test]
    fn a_well_formed_head_parses_and_every_ambiguity_is_refused() {
        let ok = parse_request(
            b"POST /write?precision=s HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n",
        )
        .unwrap();
        assert_eq!((ok.method.as_str(), ok.path.as_str()), ("POST", "/write"));
        assert_eq!(ok.query.as_deref(), Some("precision=s"));
        assert_eq!(ok.header("CONTENT-LENGTH"), Some("12"));
        // Lenient clients end lines with LF alone.
        assert_eq!(
            parse_request(b"GET /v1/locks HTTP/1.0\nHost: a\n\n").unwrap().path,
            "/v1/locks"
        );

        let twice = "POST /w HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 500\r\n\r\n";
        assert_eq!(refused(twice).0, 400);
        assert!(refused(twice).1.contains("more than once"));
        assert!(refused("POST /w HTTP/1.1\r\nContent-Length: +5\r\n\r\n")
            .1
            .contains("not a number"));
        assert_eq!(refused("POST /w HTTP/1.1\r\nno colon here\r\n\r\n").0, 400);
        assert_eq!(refused("GET /w HTTP/2.0\r\n\r\n").0, 505);
        assert_eq!(refused("GET http://x/ HTTP/1.1\r\n\r\n").0, 400);
        let many: String = (0..40).map(|i| format!("X-{i}: y\r\n")).collect();
        assert_eq!(refused(&format!("GET / HTTP/1.1\r\n{many}\r\n")).0, 431);
    }
}
