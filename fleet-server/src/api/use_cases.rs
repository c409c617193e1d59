//! Where the API meets the use cases ([`crate::ops`]): the state they share, taken from
//! [`Api`], and how a refused or failed operation answers over HTTP.

use axum::http::StatusCode;

use super::problem::{FieldProblem, Problem};
use super::Api;
use crate::desired::DesiredError;
use crate::ops::{self, Error};
use crate::rollout::driver::{CommandError, PlanError};

impl From<Error> for Problem {
    fn from(e: Error) -> Problem {
        match e {
            Error::NotFound { .. }
            | Error::UnknownDevice { .. }
            | Error::UnknownRelease { .. }
            | Error::NotSet { .. } => Problem::not_found(e.to_string()),
            Error::BadRequest(detail) => Problem::bad_request(detail),
            Error::Conflict { detail, problems } => {
                Problem { errors: problems, ..Problem::conflict(detail) }
            }
            Error::Invalid { summary, problems } => Problem::invalid(summary, problems),
            Error::BrokerUnavailable { .. } => {
                Problem::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
            Error::RegistryFailed(_) => Problem::new(StatusCode::BAD_GATEWAY, e.to_string()),
            Error::NoAnswer { .. } => Problem::new(StatusCode::GATEWAY_TIMEOUT, e.to_string()),
            Error::TooLarge { .. } => Problem::new(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()),
            Error::Plan(e) => plan_problem(e),
            Error::Desired(e) => desired_problem(e),
            Error::RolloutCommand(e) => match e {
                CommandError::NotFound(_) => Problem::not_found(e.to_string()),
                CommandError::State(e) => Problem::conflict(e.to_string()),
                CommandError::Desired(e) => Problem::internal(e),
            },
            Error::Store(e) => e.into(),
            Error::Internal(detail) => Problem::internal(detail),
        }
    }
}

fn plan_problem(e: PlanError) -> Problem {
    const REFUSED: &str = "the rollout was refused; nothing was sent";
    match e {
        PlanError::Store(e) => Problem::from(e),
        PlanError::UnknownRelease { .. }
        | PlanError::UnknownGroup { .. }
        | PlanError::UnknownDevices { .. } => Problem::not_found(e.to_string()),
        PlanError::Busy { .. } | PlanError::Unsatisfiable { .. } | PlanError::NoDevices { .. } => {
            Problem::conflict(e.to_string())
        }
        PlanError::Field { field, reason } => {
            Problem::invalid(REFUSED, vec![FieldProblem { path: field.to_owned(), reason }])
        }
        PlanError::Spec(e) => Problem::invalid(
            REFUSED,
            vec![FieldProblem { path: "rollout".into(), reason: e.to_string() }],
        ),
    }
}

/// One device's desired state could not be decided.
fn desired_problem(e: DesiredError) -> Problem {
    let problems = |e: &DesiredError| {
        e.problems().into_iter().map(|(path, reason)| FieldProblem { path, reason }).collect()
    };
    match e {
        DesiredError::UnknownRelease { .. } => Problem::not_found(e.to_string()),
        DesiredError::Store(e) => Problem::from(e),
        DesiredError::Integrity(e) => Problem::internal(e),
        DesiredError::Render { .. } => Problem::invalid(
            format!("{e}; nothing was changed (`fleetctl var ls --device ID` shows its variables)"),
            problems(&e),
        ),
        DesiredError::MissingSecret { .. } | DesiredError::AgentBinary { .. } => {
            Problem::invalid(format!("{e}; nothing was changed"), problems(&e))
        }
        DesiredError::Secret(e) => Problem::internal(e),
    }
}

impl Api {
    /// What operations that change desired state need.
    pub(crate) fn fleet(&self) -> ops::Fleet {
        ops::Fleet {
            store: self.store.clone(),
            pki: self.pki.clone(),
            publisher: self.publisher.clone(),
            driver: self.driver.clone(),
        }
    }
}
