//! Device routes: the registry, enrollment and revocation, labels and notes, pins, direct
//! assignment, commands and events.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use fleet_proto::{CommandResult, DeviceId, UnixMillis};
use serde::Deserialize;

use super::problem::{Body, Query};
use super::wire;
use super::{Api, Paging, Problem};
use crate::auth::Caller;
use crate::devices::DeviceRecord;
use crate::groups::Selector;
use crate::ops;
use crate::rollout::driver::busy_devices;
use fleet_api::{
    CommandRequest, DesiredRequest, DesiredResponse, Device, DeviceChange, DeviceChanged,
    DeviceView, EnrollRequest, EnrollResponse, MetricsView, Page, PinRequest, PointView,
};

/// `?selector=&group=` of the device list, with paging.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
// An unknown parameter (`?grup=`) is refused, not ignored into a wider answer.
#[serde(deny_unknown_fields)]
pub struct DeviceFilter {
    /// Only devices whose labels match (with `group`: the group's devices that also match).
    #[schemars(regex(pattern = fleet_api::patterns::SELECTOR))]
    pub selector: Option<String>,
    /// Only devices of this group.
    #[schemars(regex(pattern = fleet_api::patterns::GROUP_NAME))]
    pub group: Option<String>,
    /// Page size (default 100, at most 1000).
    pub limit: Option<usize>,
    /// The `next` of the page before (empty: the first page).
    pub after: Option<String>,
}

// The error is the finished response; handlers return it as is.
pub(super) fn device_id(id: &str) -> Result<DeviceId, Problem> {
    DeviceId::new(id).map_err(|e| Problem::bad_request(format!("device id: {e}")))
}

pub(super) fn not_found(id: &DeviceId) -> Problem {
    ops::Error::UnknownDevice { id: id.clone() }.into()
}

pub(super) async fn list(
    State(api): State<Api>,
    Query(filter): Query<DeviceFilter>,
) -> Result<Json<Page<Device>>, Problem> {
    let paging = Paging { limit: filter.limit, after: filter.after.clone() };
    // Both given: the group's devices that also match the selector.
    let mut selector: Option<Selector> = None;
    if let Some(g) = &filter.group {
        let group = api.store.group(g)?.ok_or_else(|| {
            Problem::not_found(format!("no group {g} (`fleetctl group ls` lists them)"))
        })?;
        selector = Some(group.selector);
    }
    if let Some(s) = &filter.selector {
        let mut extra = Selector::parse(s).map_err(Problem::bad_request)?;
        selector = Some(match selector {
            Some(Selector(mut group)) => {
                group.append(&mut extra.0);
                Selector(group)
            }
            None => extra,
        });
    }
    let Some(selector) = selector else {
        return Ok(Json(wire::page(
            api.store.devices_page(paging.after.as_deref(), paging.limit())?,
        )));
    };
    // Filtered lists walk the registry in id order and page over the matches.
    let after = paging.after.clone().unwrap_or_default();
    let mut items: Vec<DeviceRecord> = api
        .store
        .devices()?
        .into_iter()
        .filter(|d| d.id.as_str() > after.as_str() && selector.matches(&d.labels))
        .take(paging.limit() + 1)
        .collect();
    let next = (items.len() > paging.limit()).then(|| {
        items.truncate(paging.limit());
        items.last().map(|d| d.id.to_string()).unwrap_or_default()
    });
    Ok(Json(Page { items: wire::all(items), next }))
}

pub(super) async fn show(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<Json<DeviceView>, Problem> {
    let id = device_id(&id)?;
    let device = api.store.device(&id)?.ok_or_else(|| not_found(&id))?;
    let groups = api
        .store
        .groups()?
        .into_iter()
        .filter(|g| g.selector.matches(&device.labels))
        .map(|g| g.name)
        .collect();
    let rollout = busy_devices(&api.store.rollouts()?).get(&id).map(|r| r.0);
    Ok(Json(DeviceView {
        inventory: api.store.inventory(&id)?,
        device: device.into(),
        groups,
        rollout,
    }))
}

pub(super) async fn change(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Body(change): Body<DeviceChange>,
) -> Result<Json<DeviceChanged>, Problem> {
    let id = device_id(&id)?;
    let (device, retargeted) =
        ops::devices::change(&api.fleet(), &caller, id, change, UnixMillis::now()).await?;
    Ok(Json(DeviceChanged { device: device.into(), retargeted }))
}

pub(super) async fn enroll(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Body(request): Body<EnrollRequest>,
) -> Result<Response, Problem> {
    let id = device_id(&id)?;
    let id_text = id.to_string();
    let enrolled =
        ops::devices::enroll(&api.fleet(), &caller, id, request, UnixMillis::now()).await?;
    Ok((
        StatusCode::CREATED,
        Json(EnrollResponse {
            device: enrolled.record.into(),
            certificate_pem: enrolled.certificate_pem,
            ca_pem: api.pki.ca_pem().to_owned(),
            server_keys: vec![api.pki.signing_key().public().to_hex()],
            broker: api.device_broker.to_string(),
            broker_password: api.broker_logins.as_ref().map(|l| l.password_for(id_text.as_str())),
        }),
    )
        .into_response())
}

pub(super) async fn revoke(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Device>, Problem> {
    let id = device_id(&id)?;
    let record =
        ops::devices::revoke(&api.fleet(), &*api.crl_changed, &caller, id, UnixMillis::now())
            .await?;
    Ok(Json(record.into()))
}

pub(super) async fn put_desired(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Body(request): Body<DesiredRequest>,
) -> Result<Json<DesiredResponse>, Problem> {
    let id = device_id(&id)?;
    let record =
        ops::devices::assign(&api.fleet(), &caller, id, request.release, UnixMillis::now()).await?;
    Ok(Json(DesiredResponse { generation: record.desired_generation, device: record.into() }))
}

pub(super) async fn pin(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Body(request): Body<PinRequest>,
) -> Result<Json<Device>, Problem> {
    let id = device_id(&id)?;
    Ok(Json(ops::devices::pin(&api.fleet(), &caller, id, request, UnixMillis::now()).await?.into()))
}

pub(super) async fn unpin(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(query): Query<fleet_api::UnpinQuery>,
) -> Result<Json<Device>, Problem> {
    let id = device_id(&id)?;
    let fleet = api.fleet();
    Ok(Json(ops::devices::unpin(&fleet, &caller, id, query.agent, UnixMillis::now()).await?.into()))
}

pub(super) async fn command(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Body(request): Body<CommandRequest>,
) -> Result<Json<CommandResult>, Problem> {
    let id = device_id(&id)?;
    let messaging = ops::devices::Messaging { mqtt: &api.mqtt, waiters: &api.waiters };
    Ok(Json(
        ops::devices::command(&api.fleet(), messaging, &caller, id, request, UnixMillis::now())
            .await?,
    ))
}

pub(super) async fn events(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<Json<Vec<fleet_proto::Event>>, Problem> {
    let id = device_id(&id)?;
    Ok(Json(api.store.events(&id, 100)?))
}

pub(super) async fn metrics(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<Json<MetricsView>, Problem> {
    let id = device_id(&id)?;
    if api.store.device(&id)?.is_none() {
        return Err(Problem::not_found(format!(
            "no device {id} (`fleetctl device ls` lists them)"
        )));
    }
    let st = api.store.telemetry_state(&id)?.unwrap_or_default();
    Ok(Json(MetricsView {
        device: id.to_string(),
        stored_total: st.stored_total,
        duplicates_total: st.duplicates_total,
        dropped_total: st.dropped_total,
        next_seq: st.high,
        kept: st.kept,
        last_batch_at: st.last_batch_at.map(|t| t.0),
        latest: st
            .latest
            .into_values()
            .map(|l| PointView {
                seq: l.seq,
                at: l.at.0,
                value: crate::telemetry::value_json(&l.value),
                metric: l.metric,
                labels: l.labels,
            })
            .collect(),
    }))
}

/// `?metric=&limit=&after=` of the history.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
// An unknown parameter (`?grup=`) is refused, not ignored into a wider answer.
#[serde(deny_unknown_fields)]
pub struct HistoryFilter {
    /// Only this metric's points.
    metric: Option<String>,
    /// Page size (default 1000, at most 10000).
    limit: Option<usize>,
    /// The `next` of the page before (a sequence number).
    #[schemars(regex(pattern = "^[0-9]{1,19}$"))]
    after: Option<String>,
}

pub(super) async fn metrics_history(
    State(api): State<Api>,
    Path(id): Path<String>,
    Query(filter): Query<HistoryFilter>,
) -> Result<Json<Page<PointView>>, Problem> {
    let id = device_id(&id)?;
    if api.store.device(&id)?.is_none() {
        return Err(Problem::not_found(format!(
            "no device {id} (`fleetctl device ls` lists them)"
        )));
    }
    let limit = filter.limit.unwrap_or(1000).clamp(1, 10_000);
    let mut after = match &filter.after {
        Some(a) => Some(a.parse::<u64>().map_err(|_| {
            Problem::bad_request(format!(
                "after: {a:?} is not a sequence number (use the `next` of the previous page)"
            ))
        })?),
        None => None,
    };
    // Scan in steps until `limit` points of the metric are found or the history ends.
    let mut items = vec![];
    let mut next = None;
    loop {
        let chunk = api.store.telemetry_points(&id, after, limit)?;
        let exhausted = chunk.len() < limit;
        for (seq, p) in chunk {
            after = Some(seq);
            if filter.metric.as_ref().is_some_and(|m| *m != p.metric) {
                continue;
            }
            items.push(PointView {
                seq,
                at: p.at.0,
                value: crate::telemetry::value_json(&p.value),
                metric: p.metric,
                labels: p.labels,
            });
            if items.len() == limit {
                break;
            }
        }
        if items.len() == limit {
            next = after.map(|a| a.to_string());
            break;
        }
        if exhausted {
            break;
        }
    }
    Ok(Json(Page { items, next }))
}
