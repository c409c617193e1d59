//! Entry points for the fuzz targets in `fuzz/` (run by `tests/fuzz`) into code that is
//! otherwise private to the crate. Not an API: hidden from the docs, and it changes with the
//! targets.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use crate::http1::{parse_request, read_head, ReadError};

/// What the agent's local sockets make of a connection's first bytes.
#[derive(Debug)]
pub enum RequestHead {
    /// The client sent nothing: there is nothing to answer.
    Closed,
    /// Refused with this status before any handler ran.
    Refused(u16),
    /// A request a handler would see.
    Parsed {
        /// The head, up to and including its blank line.
        head: Vec<u8>,
        /// What was read after the head (the start of the body).
        rest: Vec<u8>,
        /// The method.
        method: String,
        /// The target's path.
        path: String,
        /// The target's query, if any.
        query: Option<String>,
        /// Header names (lower case) and values.
        headers: Vec<(String, String)>,
    },
}

/// Reads a request head of at most `max` bytes from `input` and parses it, as the update-lock
/// and telemetry sockets do with each connection.
pub fn read_and_parse_request(mut input: &[u8], max: usize) -> RequestHead {
    // Reading from a slice never waits, so polling until ready needs no runtime.
    let mut read = pin!(read_head(&mut input, max));
    let mut cx = Context::from_waker(Waker::noop());
    let read = loop {
        if let Poll::Ready(r) = read.as_mut().poll(&mut cx) {
            break r;
        }
    };
    match read {
        Err(ReadError::Closed) => RequestHead::Closed,
        Err(ReadError::Reply(r)) => RequestHead::Refused(r.status),
        Ok((head, rest)) => match parse_request(&head) {
            Err(r) => RequestHead::Refused(r.status),
            Ok(req) => RequestHead::Parsed {
                head,
                rest,
                method: req.method,
                path: req.path,
                query: req.query,
                headers: req.headers,
            },
        },
    }
}
