//! Variable routes: set, unset, list; a device's resolved values with where each came from.
//! [`crate::ops::variables`] does the work; these map HTTP to it and back.

use axum::extract::{Path, State};
use axum::{Extension, Json};
use fleet_proto::UnixMillis;

use super::problem::{Body, Query};
use super::wire;
use super::{Api, Problem};
use crate::auth::Caller;
use crate::ops;
use fleet_api::{Page, ResolvedView, VariableChange, VariableList, VariableRequest};

/// `?group=&device=&service=` of the list and of unset, with paging.
pub type VariableFilter = ops::variables::Filter;

pub(super) async fn set(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Body(request): Body<VariableRequest>,
) -> Result<Json<VariableChange>, Problem> {
    let changed =
        ops::variables::set(&api.fleet(), &caller, name, request, UnixMillis::now()).await?;
    Ok(Json(variable_change(changed)))
}

pub(super) async fn unset(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(filter): Query<VariableFilter>,
) -> Result<Json<VariableChange>, Problem> {
    let changed =
        ops::variables::unset(&api.fleet(), &caller, name, filter.scope(), UnixMillis::now())
            .await?;
    Ok(Json(variable_change(changed)))
}

fn variable_change(c: ops::variables::VariableChanged) -> VariableChange {
    VariableChange {
        variable: c.variable.map(Into::into),
        scope: c.scope.into(),
        retargeted: c.retargeted,
        unchanged: c.unchanged,
        warnings: c.warnings,
    }
}

pub(super) async fn list(
    State(api): State<Api>,
    Query(filter): Query<VariableFilter>,
) -> Result<Json<VariableList>, Problem> {
    Ok(Json(match ops::variables::list(&api.store, &filter)? {
        ops::variables::Listed::Resolved(items) => VariableList::Resolved(Page {
            items: items
                .into_iter()
                .map(|(service, r)| ResolvedView { service, resolved: r.into() })
                .collect(),
            next: None,
        }),
        ops::variables::Listed::Stored(items, next) => {
            VariableList::Stored(Page { items: wire::all(items), next })
        }
    }))
}
