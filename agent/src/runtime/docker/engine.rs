//! HTTP/1.1 to the engine's unix socket: one connection per request, the answer's status, and
//! its body whole (bounded) or as it streams.
//!
//! The Engine API needs little of HTTP: requests with a JSON body or none, answers with a
//! `Content-Length`, chunked, or ended by the connection closing. Writing that here, with the
//! parser the agent already links (httparse), instead of a general client (bollard over hyper)
//! takes about 0.7 MB off the shipped agent (BENCHMARKS.md, "Agent footprint"): a general
//! client decodes every answer into the engine's whole model, most of which the agent never reads.
//!
//! Invariants:
//! * Every request is bounded in time: connecting, sending and receiving the answer's head take
//!   at most the request's timeout, and a whole body ([`Engine::call`]) too; a streamed body
//!   ([`Engine::stream`]) runs as long as the engine sends it.
//! * Everything the engine sends is bounded in size: the head ([`MAX_HEAD`]), a chunk-size line,
//!   a whole body (the caller's limit), an error message ([`MAX_ERROR_BODY`]), one streamed JSON
//!   value ([`MAX_STREAM_VALUE`]).
//! * A status outside 2xx (and 304, the engine's "already so") is an [`EngineError::Status`]
//!   carrying the engine's own message, so callers match on the status, never on text.
//! * `Connection: close` on every request: the body of an answer without a length ends when the
//!   engine closes, and no connection is ever reused in an unknown state.

use std::path::PathBuf;
use std::time::Duration;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// The most header bytes an answer may have.
const MAX_HEAD: usize = 64 * 1024;
/// The most bytes of an error answer kept for its message.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// The largest single JSON value in a stream (one pull progress line, one event).
const MAX_STREAM_VALUE: usize = 1 << 20;
/// The longest line of chunked framing (a chunk size and its extensions, a trailer).
const MAX_FRAMING_LINE: usize = 4096;

/// Why a request to the engine failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The socket could not be reached, or the connection broke.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// No answer within the request's timeout.
    #[error("no answer within {} s", .0.as_secs())]
    Timeout(Duration),
    /// The engine answered with an error status and this message.
    #[error("{message} (HTTP {status})")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The engine's `message`, or the body's text.
        message: String,
    },
    /// The answer was not what the API defines (not HTTP, not the JSON expected, too large).
    #[error("{0}")]
    Protocol(String),
}

impl EngineError {
    /// The engine's HTTP status, if it answered with one.
    pub fn status(&self) -> Option<u16> {
        match self {
            EngineError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether the engine could not be talked to at all (as opposed to refusing).
    pub fn is_connection(&self) -> bool {
        matches!(self, EngineError::Io(_) | EngineError::Timeout(_))
    }
}

/// A request: method, path with query (without the API version prefix), JSON body, and the
/// registry credential header a pull may need.
#[derive(Debug)]
pub struct Request<'a> {
    method: &'static str,
    path: String,
    body: Option<Vec<u8>>,
    registry_auth: Option<&'a str>,
    timeout: Option<Duration>,
}

impl<'a> Request<'a> {
    /// `GET path`.
    pub fn get(path: impl Into<String>) -> Request<'a> {
        Request::new("GET", path)
    }

    /// `POST path` without a body.
    pub fn post(path: impl Into<String>) -> Request<'a> {
        Request::new("POST", path)
    }

    /// `DELETE path`.
    pub fn delete(path: impl Into<String>) -> Request<'a> {
        Request::new("DELETE", path)
    }

    fn new(method: &'static str, path: impl Into<String>) -> Request<'a> {
        Request { method, path: path.into(), body: None, registry_auth: None, timeout: None }
    }

    /// With `value` as its JSON body.
    pub fn json(mut self, value: &impl serde::Serialize) -> Request<'a> {
        // Serialising the agent's own plain structs cannot fail.
        self.body = Some(serde_json::to_vec(value).unwrap_or_default());
        self
    }

    /// With the `X-Registry-Auth` header (already encoded).
    pub fn registry_auth(mut self, encoded: &'a str) -> Request<'a> {
        self.registry_auth = Some(encoded);
        self
    }

    /// With a longer timeout than the engine's default (a stop that waits out a grace period).
    pub fn timeout(mut self, timeout: Duration) -> Request<'a> {
        self.timeout = Some(timeout);
        self
    }
}

/// The engine at a unix socket, spoken to at one API version.
#[derive(Debug, Clone)]
pub struct Engine {
    socket: PathBuf,
    /// `1.41`: every path is prefixed with `/v1.41`; empty before negotiation.
    version: String,
    timeout: Duration,
}

impl Engine {
    /// The engine at `socket`, with `timeout` for each request; no API version prefix yet.
    pub fn new(socket: impl Into<PathBuf>, timeout: Duration) -> Engine {
        Engine { socket: socket.into(), version: String::new(), timeout }
    }

    /// The same engine spoken to at API `version` (`1.41`).
    pub fn at_version(self, version: String) -> Engine {
        Engine { version, ..self }
    }

    /// The API version paths are prefixed with; empty before negotiation.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Sends `request` and reads the whole answer (at most `limit` bytes) as JSON.
    pub async fn call<T: DeserializeOwned>(
        &self,
        request: Request<'_>,
        limit: usize,
    ) -> Result<T, EngineError> {
        let bytes = self.call_bytes(request, limit).await?;
        // `204 No Content` and `304` decode as `null` into `()` or an `Option`.
        let bytes: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
        serde_json::from_slice(bytes).map_err(|e| {
            EngineError::Protocol(format!("the engine's answer is not as expected: {e}"))
        })
    }

    /// Sends `request` and reads the whole answer's body (at most `limit` bytes).
    pub async fn call_bytes(
        &self,
        request: Request<'_>,
        limit: usize,
    ) -> Result<Vec<u8>, EngineError> {
        let timeout = request.timeout.unwrap_or(self.timeout);
        let exchange = async {
            let mut answer = self.send(request).await?;
            answer.body.read_to_end(limit).await
        };
        tokio::time::timeout(timeout, exchange).await.map_err(|_| EngineError::Timeout(timeout))?
    }

    /// Sends `request` and hands back the answer once its head is in; its body streams.
    pub async fn stream(&self, request: Request<'_>) -> Result<Answer, EngineError> {
        let timeout = request.timeout.unwrap_or(self.timeout);
        tokio::time::timeout(timeout, self.send(request))
            .await
            .map_err(|_| EngineError::Timeout(timeout))?
    }

    async fn send(&self, request: Request<'_>) -> Result<Answer, EngineError> {
        let stream = UnixStream::connect(&self.socket).await?;
        let mut stream = BufReader::new(stream);
        let head = request_head(&self.version, &request);
        stream.get_mut().write_all(head.as_bytes()).await?;
        if let Some(body) = &request.body {
            stream.get_mut().write_all(body).await?;
        }
        let (status, framing, content_type) = read_head(&mut stream).await?;
        let mut body = Body { stream, framing, done: false };
        if !(200..300).contains(&status) && status != 304 {
            let text = body.read_to_end(MAX_ERROR_BODY).await.unwrap_or_default();
            return Err(EngineError::Status { status, message: error_message(&text) });
        }
        Ok(Answer { content_type, body })
    }
}

/// The request line and headers.
fn request_head(version: &str, request: &Request<'_>) -> String {
    let prefix = if version.is_empty() { String::new() } else { format!("/v{version}") };
    let mut head = format!(
        "{} {prefix}{} HTTP/1.1\r\nHost: docker\r\nUser-Agent: fleet-agent/{}\r\nConnection: close\r\n",
        request.method,
        request.path,
        env!("CARGO_PKG_VERSION"),
    );
    if let Some(body) = &request.body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    } else if request.method == "POST" {
        head.push_str("Content-Length: 0\r\n");
    }
    if let Some(auth) = request.registry_auth {
        head.push_str(&format!("X-Registry-Auth: {auth}\r\n"));
    }
    head.push_str("\r\n");
    head
}

/// The engine's explanation in an error answer: `{"message": ...}`, else the text itself.
fn error_message(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Message {
        message: String,
    }
    match serde_json::from_slice::<Message>(body) {
        Ok(m) => m.message,
        Err(_) => String::from_utf8_lossy(body).trim().to_owned(),
    }
}

/// How an answer's body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// After this many bytes.
    Length(u64),
    /// Chunked: at the zero-size chunk; `u64` is what is left of the current chunk.
    Chunked(u64),
    /// When the engine closes the connection.
    Close,
}

/// Reads the status line and headers: the status, how the body is framed, its content type.
async fn read_head(
    stream: &mut BufReader<UnixStream>,
) -> Result<(u16, Framing, Option<String>), EngineError> {
    let mut head = Vec::new();
    loop {
        let before = head.len();
        let n = (&mut *stream)
            .take((MAX_HEAD - before) as u64 + 1)
            .read_until(b'\n', &mut head)
            .await?;
        if n == 0 {
            return Err(EngineError::Protocol(
                "the engine closed the connection without an answer".into(),
            ));
        }
        if head.len() > MAX_HEAD {
            return Err(EngineError::Protocol(format!(
                "the answer's head is over {MAX_HEAD} bytes"
            )));
        }
        if head.ends_with(b"\r\n\r\n") || head.ends_with(b"\n\n") {
            break;
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(&head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) | Err(_) => {
            return Err(EngineError::Protocol("the engine's answer is not HTTP".into()))
        }
    }
    let status = response.code.unwrap_or(0);
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_owned())
    };
    let framing = if header("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
    {
        Framing::Chunked(0)
    } else if let Some(length) = header("content-length") {
        Framing::Length(length.parse().map_err(|_| {
            EngineError::Protocol(format!("the answer's Content-Length {length:?} is not a number"))
        })?)
    } else if status == 204 || status == 304 {
        Framing::Length(0)
    } else {
        Framing::Close
    };
    Ok((status, framing, header("content-type")))
}

/// An answer whose head is in.
#[derive(Debug)]
pub struct Answer {
    /// The body's `Content-Type`, if the engine said.
    pub content_type: Option<String>,
    /// The body.
    pub body: Body,
}

/// An answer's body, read as the engine sends it.
#[derive(Debug)]
pub struct Body {
    stream: BufReader<UnixStream>,
    framing: Framing,
    done: bool,
}

impl Body {
    /// The next bytes of the body, `None` at its end.
    pub async fn chunk(&mut self) -> Result<Option<Vec<u8>>, EngineError> {
        if self.done {
            return Ok(None);
        }
        let want = match self.framing {
            Framing::Length(0) => {
                self.done = true;
                return Ok(None);
            }
            Framing::Length(left) => left,
            Framing::Chunked(0) => match self.next_chunk_size().await? {
                0 => {
                    self.read_trailers().await?;
                    self.done = true;
                    return Ok(None);
                }
                size => size,
            },
            Framing::Chunked(left) => left,
            Framing::Close => u64::MAX,
        };
        let mut buf = vec![0; usize::try_from(want.min(64 * 1024)).unwrap_or(64 * 1024)];
        let n = self.stream.read(&mut buf).await?;
        buf.truncate(n);
        match &mut self.framing {
            Framing::Close if n == 0 => {
                self.done = true;
                return Ok(None);
            }
            Framing::Close => {}
            _ if n == 0 => {
                return Err(EngineError::Protocol(
                    "the engine closed the connection mid-answer".into(),
                ))
            }
            Framing::Length(left) => *left -= n as u64,
            Framing::Chunked(left) => {
                *left = want - n as u64;
                if *left == 0 {
                    self.expect_crlf().await?;
                }
            }
        }
        Ok(Some(buf))
    }

    /// The whole body, refused past `limit` bytes.
    pub async fn read_to_end(&mut self, limit: usize) -> Result<Vec<u8>, EngineError> {
        let mut all = Vec::new();
        while let Some(chunk) = self.chunk().await? {
            if all.len() + chunk.len() > limit {
                return Err(EngineError::Protocol(format!(
                    "the engine's answer is over {limit} bytes"
                )));
            }
            all.extend_from_slice(&chunk);
        }
        Ok(all)
    }

    /// The body as a stream of JSON values (one per line, as the engine streams events and pull
    /// progress), each decoded as `T`.
    pub fn json_values<T: DeserializeOwned>(self) -> JsonValues<T> {
        JsonValues { body: self, buffer: Vec::new(), _value: std::marker::PhantomData }
    }

    async fn framing_line(&mut self) -> Result<String, EngineError> {
        let mut line = Vec::new();
        (&mut self.stream).take(MAX_FRAMING_LINE as u64).read_until(b'\n', &mut line).await?;
        if !line.ends_with(b"\n") {
            return Err(EngineError::Protocol("the answer's chunked framing is broken".into()));
        }
        Ok(String::from_utf8_lossy(&line).trim().to_owned())
    }

    async fn next_chunk_size(&mut self) -> Result<u64, EngineError> {
        let line = self.framing_line().await?;
        let size = line.split(';').next().unwrap_or_default().trim();
        let size = u64::from_str_radix(size, 16)
            .map_err(|_| EngineError::Protocol(format!("the chunk size {size:?} is not hex")))?;
        self.framing = Framing::Chunked(size);
        Ok(size)
    }

    async fn expect_crlf(&mut self) -> Result<(), EngineError> {
        match self.framing_line().await?.as_str() {
            "" => Ok(()),
            _ => Err(EngineError::Protocol("a chunk is longer than its size".into())),
        }
    }

    async fn read_trailers(&mut self) -> Result<(), EngineError> {
        // Trailers end at an empty line; the engine sends none, but a proxy might.
        for _ in 0..64 {
            if self.framing_line().await?.is_empty() {
                return Ok(());
            }
        }
        Err(EngineError::Protocol("the answer has too many trailers".into()))
    }
}

/// JSON values streamed one after another (whitespace or newlines between them).
#[derive(Debug)]
pub struct JsonValues<T> {
    body: Body,
    buffer: Vec<u8>,
    _value: std::marker::PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> JsonValues<T> {
    /// The next value, `None` when the stream ended cleanly.
    pub async fn next(&mut self) -> Option<Result<T, EngineError>> {
        loop {
            let mut values = serde_json::Deserializer::from_slice(&self.buffer).into_iter::<T>();
            match values.next() {
                Some(Ok(value)) => {
                    let used = values.byte_offset();
                    self.buffer.drain(..used);
                    return Some(Ok(value));
                }
                Some(Err(e)) if !e.is_eof() => {
                    self.buffer.clear();
                    return Some(Err(EngineError::Protocol(format!("a streamed value: {e}"))));
                }
                // Incomplete (or only whitespace so far): read on.
                Some(Err(_)) | None => {}
            }
            if self.buffer.len() > MAX_STREAM_VALUE {
                self.buffer.clear();
                return Some(Err(EngineError::Protocol(format!(
                    "a streamed value is over {MAX_STREAM_VALUE} bytes"
                ))));
            }
            match self.body.chunk().await {
                Ok(Some(chunk)) => self.buffer.extend_from_slice(&chunk),
                Ok(None) if self.buffer.iter().all(u8::is_ascii_whitespace) => return None,
                Ok(None) => {
                    self.buffer.clear();
                    return Some(Err(EngineError::Protocol("the stream ended mid-value".into())));
                }
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// What a query value keeps unencoded: RFC 3986's unreserved characters.
const QUERY_VALUE: &AsciiSet =
    &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');
/// What a name in a path keeps besides: an image reference's `/`, `:` and `@`, which the engine
/// routes as part of the name.
const PATH_NAME: &AsciiSet = &QUERY_VALUE.remove(b'/').remove(b':').remove(b'@');

/// Percent-encodes a query value.
pub fn encode(value: &str) -> String {
    utf8_percent_encode(value, QUERY_VALUE).to_string()
}

/// Percent-encodes a container, network, volume or image name for a path.
pub fn encode_name(name: &str) -> String {
    utf8_percent_encode(name, PATH_NAME).to_string()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use tokio::net::UnixListener;

    use super::*;

    /// An engine that answers each connection with the next of `answers` (sent in pieces of
    /// `piece` bytes, so values and framing straddle reads), and keeps each request it read.
    fn fake_engine(
        answers: Vec<Vec<u8>>,
        piece: usize,
    ) -> (tempfile::TempDir, Engine, tokio::task::JoinHandle<Vec<String>>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("engine.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let mut requests = Vec::new();
            for answer in answers {
                let (mut conn, _) = listener.accept().await.unwrap();
                let mut request = vec![0; 65536];
                let n = conn.read(&mut request).await.unwrap();
                requests.push(String::from_utf8_lossy(&request[..n]).into_owned());
                // The client may hang up early (an answer it refuses): go on to the next.
                for part in answer.chunks(piece) {
                    if conn.write_all(part).await.is_err() {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
            }
            requests
        });
        (dir, Engine::new(path, Duration::from_secs(5)).at_version("1.41".into()), server)
    }

    fn chunked(parts: &[&str]) -> Vec<u8> {
        let mut out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for p in parts {
            out.extend_from_slice(format!("{:x}\r\n{p}\r\n", p.len()).as_bytes());
        }
        out.extend_from_slice(b"0\r\n\r\n");
        out
    }

    #[derive(Debug, serde::Deserialize, PartialEq)]
    struct Item {
        n: u32,
    }

    #[tokio::test]
    async fn a_request_carries_its_version_body_and_auth_and_the_answer_decodes_by_length() {
        let answer = b"HTTP/1.1 201 Created\r\nContent-Length: 8\r\n\r\n{\"n\": 7}".to_vec();
        let (_dir, engine, server) = fake_engine(vec![answer], 3);
        let request = Request::post("/containers/create?name=web")
            .json(&serde_json::json!({"Image": "x"}))
            .registry_auth("e30=");
        let item: Item = engine.call(request, 1024).await.unwrap();
        assert_eq!(item, Item { n: 7 });
        let sent = &server.await.unwrap()[0];
        assert!(sent.starts_with("POST /v1.41/containers/create?name=web HTTP/1.1\r\n"), "{sent}");
        assert!(
            sent.contains("Content-Length: 13\r\n") && sent.contains("X-Registry-Auth: e30=\r\n")
        );
        assert!(sent.ends_with("\r\n\r\n{\"Image\":\"x\"}"), "{sent}");
    }

    #[tokio::test]
    async fn chunked_and_close_delimited_bodies_are_read_whole_and_bounded() {
        let close = b"HTTP/1.1 200 OK\r\n\r\n{\"n\":1}".to_vec();
        let (_dir, engine, _) =
            fake_engine(vec![chunked(&["{\"n\"", ":2}"]), close, chunked(&["x"; 20])], 5);
        let item: Item = engine.call(Request::get("/a"), 1024).await.unwrap();
        assert_eq!(item, Item { n: 2 });
        let item: Item = engine.call(Request::get("/b"), 1024).await.unwrap();
        assert_eq!(item, Item { n: 1 });
        let err = engine.call_bytes(Request::get("/c"), 10).await.unwrap_err();
        assert!(err.to_string().contains("over 10 bytes"), "{err}");
    }

    #[tokio::test]
    async fn an_error_status_carries_the_engines_message_and_304_is_success() {
        let missing = b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 35\r\n\r\n{\"message\":\"No such container: x\"}\n".to_vec();
        let not_modified = b"HTTP/1.1 304 Not Modified\r\n\r\n".to_vec();
        let (_dir, engine, _) = fake_engine(vec![missing, not_modified], 7);
        let err = engine.call::<()>(Request::post("/containers/x/start"), 1024).await.unwrap_err();
        assert_eq!(err.status(), Some(404));
        assert_eq!(err.to_string(), "No such container: x (HTTP 404)");
        engine.call::<()>(Request::post("/containers/x/start"), 1024).await.unwrap();
    }

    #[tokio::test]
    async fn streamed_values_split_across_chunks_come_out_one_by_one() {
        let answer = chunked(&["{\"n\":1}\r\n{\"n\"", ":2}\n", "\n{\"n\":3}\n"]);
        let (_dir, engine, _) = fake_engine(vec![answer], 4);
        let mut values =
            engine.stream(Request::get("/events")).await.unwrap().body.json_values::<Item>();
        for n in 1..=3 {
            assert_eq!(values.next().await.unwrap().unwrap(), Item { n });
        }
        assert!(values.next().await.is_none());
    }

    #[tokio::test]
    async fn a_stream_cut_mid_value_or_garbage_is_an_error_not_an_end() {
        let cut = b"HTTP/1.1 200 OK\r\n\r\n{\"n\":1}{\"n\"".to_vec();
        let garbage = chunked(&["nope\n"]);
        let (_dir, engine, _) = fake_engine(vec![cut, garbage], 64);
        let mut values =
            engine.stream(Request::get("/a")).await.unwrap().body.json_values::<Item>();
        assert_eq!(values.next().await.unwrap().unwrap(), Item { n: 1 });
        assert!(values.next().await.unwrap().is_err());
        let mut values =
            engine.stream(Request::get("/b")).await.unwrap().body.json_values::<Item>();
        assert!(values.next().await.unwrap().is_err());
    }

    #[tokio::test]
    async fn an_engine_that_never_answers_times_out_and_a_missing_socket_is_a_connection_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("silent.sock");
        let _listener = UnixListener::bind(&path).unwrap();
        let engine = Engine::new(&path, Duration::from_millis(100));
        let err = engine.call::<()>(Request::get("/version"), 1024).await.unwrap_err();
        assert!(matches!(err, EngineError::Timeout(_)) && err.is_connection(), "{err:?}");
        let engine = Engine::new(dir.path().join("absent.sock"), Duration::from_secs(1));
        let err = engine.call::<()>(Request::get("/version"), 1024).await.unwrap_err();
        assert!(matches!(err, EngineError::Io(_)) && err.is_connection(), "{err:?}");
    }

    #[test]
    fn names_keep_an_image_references_separators_and_query_values_do_not() {
        assert_eq!(encode_name("reg:5000/fleet/web@sha256:ab"), "reg:5000/fleet/web@sha256:ab");
        assert_eq!(encode_name("we b?#"), "we%20b%3F%23");
        assert_eq!(encode(r#"{"label":["a=b"]}"#), "%7B%22label%22%3A%5B%22a%3Db%22%5D%7D");
        assert_eq!(encode("1.5-x_~"), "1.5-x_~");
    }

    #[tokio::test]
    async fn an_oversized_head_or_a_broken_chunk_is_refused() {
        let mut huge = b"HTTP/1.1 200 OK\r\n".to_vec();
        huge.extend(std::iter::repeat_n(b"X-Pad: aaaaaaaaaaaaaaaa\r\n".as_slice(), 4000).flatten());
        huge.extend_from_slice(b"\r\n");
        let broken = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec();
        let (_dir, engine, _) = fake_engine(vec![huge, broken], 1 << 16);
        let err = engine.call_bytes(Request::get("/a"), 1024).await.unwrap_err();
        assert!(err.to_string().contains("head is over"), "{err}");
        let err = engine.call_bytes(Request::get("/b"), 1024).await.unwrap_err();
        assert!(err.to_string().contains("not hex"), "{err}");
    }
}
