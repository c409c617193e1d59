//! How a refused or failed operation ([`crate::ops::Error`]) answers over HTTP.

use super::problem::Problem;
use crate::ops::Error;

impl From<Error> for Problem {
    fn from(e: Error) -> Problem {
        match e {
            Error::NotFound { .. } => Problem::not_found(e.to_string()),
            Error::Conflict { detail } => Problem::conflict(detail),
            Error::Invalid { summary, problems } => Problem::invalid(summary, problems),
            Error::Store(e) => e.into(),
            Error::Internal(detail) => Problem::internal(detail),
        }
    }
}
