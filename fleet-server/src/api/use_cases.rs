//! Where the API meets the use cases ([`crate::ops`]): the state they share, taken from
//! [`Api`], and how a refused or failed operation answers over HTTP.

use super::problem::Problem;
use super::Api;
use crate::ops::{self, Error};

impl From<Error> for Problem {
    fn from(e: Error) -> Problem {
        match e {
            Error::NotFound { .. } | Error::NotSet { .. } => Problem::not_found(e.to_string()),
            Error::BadRequest(detail) => Problem::bad_request(detail),
            Error::Conflict { detail, problems } => {
                Problem { errors: problems, ..Problem::conflict(detail) }
            }
            Error::Invalid { summary, problems } => Problem::invalid(summary, problems),
            Error::Store(e) => e.into(),
            Error::Internal(detail) => Problem::internal(detail),
        }
    }
}

impl Api {
    /// What operations that change desired state need.
    pub(super) fn fleet(&self) -> ops::Fleet {
        ops::Fleet {
            store: self.store.clone(),
            pki: self.pki.clone(),
            publisher: self.publisher.clone(),
            driver: self.driver.clone(),
        }
    }
}
