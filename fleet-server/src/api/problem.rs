//! Errors as the API sends them: RFC 9457 problem details (`application/problem+json`), with
//! the status that fits, a one-line `detail` that says what was wrong and what to do, and, for
//! validation failures, every problem with its field path.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::store::StoreError;

pub use fleet_api::FieldProblem;

/// A refused or failed request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// HTTP status.
    pub status: u16,
    /// A short, fixed title per kind (`Not Found`, `Conflict`, ...).
    pub title: String,
    /// What went wrong and what to do next.
    pub detail: String,
    /// Per-field problems, for validation failures.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldProblem>,
}

impl Problem {
    /// A problem with `status` and `detail`.
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Problem {
        Problem {
            status: status.as_u16(),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            detail: detail.into(),
            errors: Vec::new(),
        }
    }

    /// 400: the request itself is wrong.
    pub fn bad_request(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, detail)
    }

    /// 422 with every field problem.
    pub fn invalid(detail: impl Into<String>, errors: Vec<FieldProblem>) -> Problem {
        Problem { errors, ..Problem::new(StatusCode::UNPROCESSABLE_ENTITY, detail) }
    }

    /// 404.
    pub fn not_found(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, detail)
    }

    /// 409: the request conflicts with the fleet's state.
    pub fn conflict(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::CONFLICT, detail)
    }

    /// 500, logged: the server's own failure.
    pub fn internal(e: impl std::fmt::Display) -> Problem {
        tracing::error!(error = %e, "API request failed");
        Problem::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

impl From<StoreError> for Problem {
    fn from(e: StoreError) -> Problem {
        Problem::internal(error_chain(&e))
    }
}

/// An error and its causes on one line.
pub use fleet_proto::errors::chain as error_chain;

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        (status, [(header::CONTENT_TYPE, "application/problem+json")], body).into_response()
    }
}

/// A JSON body whose rejection is a problem naming the field (axum's own answers in plain
/// text).
#[derive(Debug, Clone)]
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Body(v)),
            // `body_text` is the message with its cause once (the error chain repeats it).
            Err(JsonRejection::JsonDataError(e)) => {
                Err(Problem::invalid(format!("request body: {}", e.body_text()), Vec::new()))
            }
            Err(e) => Err(Problem::bad_request(format!(
                "request body: {} (send JSON with content-type: application/json)",
                e.body_text()
            ))),
        }
    }
}

/// A JSON body that may be left out (no bytes at all); one that is sent must be valid, and its
/// rejection is a problem as for [`Body`].
#[derive(Debug, Clone)]
pub struct OptionalBody<T>(pub Option<T>);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for OptionalBody<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        let (parts, body) = req.into_parts();
        let bytes = axum::body::to_bytes(body, MAX_OPTIONAL_BODY)
            .await
            .map_err(|e| Problem::bad_request(format!("request body: {e}")))?;
        if bytes.is_empty() {
            return Ok(OptionalBody(None));
        }
        let req = Request::from_parts(parts, axum::body::Body::from(bytes));
        Body::<T>::from_request(req, state).await.map(|Body(v)| OptionalBody(Some(v)))
    }
}

/// The largest optional body read (they are small: a reason).
const MAX_OPTIONAL_BODY: usize = 64 * 1024;

/// Query parameters whose rejection is a problem.
#[derive(Debug, Clone)]
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Query(v)),
            Err(e @ QueryRejection::FailedToDeserializeQueryString(_)) => {
                Err(Problem::bad_request(format!("query: {}", e.body_text())))
            }
            Err(e) => Err(Problem::bad_request(e.body_text())),
        }
    }
}
