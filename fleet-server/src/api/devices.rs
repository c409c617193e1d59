//! Device routes: the registry, enrollment and revocation, labels and notes, pins, direct
//! assignment, commands and events.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use fleet_proto::{
    topic, Command, CommandResult, DeviceId, Message, ReleaseId, TopicKind, UnixMillis,
};
use rumqttc::QoS;
use serde::Deserialize;

use super::fleet::retarget_members;
use super::problem::{Body, Query};
use super::variables::{internal, send};
use super::wire;
use super::{Api, Paging, Problem};
use crate::audit::AuditEntry;
use crate::auth::Caller;
use crate::desired::{self, DesiredError, Moved, Releases};
use crate::devices::{CertificateInfo, DeviceRecord, PinRecord};
use crate::groups::{self, Selector};
use crate::pki::{EnrollKey, DEFAULT_DEVICE_VALIDITY_DAYS, SERVER_IDENTITY};
use crate::preflight;
use crate::releases::ReleaseRecord;
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
    Problem::not_found(format!("no device {id}; `fleetctl device ls` lists known devices"))
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
    let mut errors = Vec::new();
    for (k, v) in &change.labels {
        if let Err(why) = groups::check_label_key(k) {
            errors.push(super::FieldProblem { path: format!("labels.{k}"), reason: why });
        }
        if let Some(Err(why)) = v.as_deref().map(groups::check_label_value) {
            errors.push(super::FieldProblem { path: format!("labels.{k}"), reason: why });
        }
    }
    if change.notes.as_ref().is_some_and(|n| n.len() > 4096) {
        errors.push(super::FieldProblem {
            path: "notes".into(),
            reason: "at most 4096 bytes".into(),
        });
    }
    if !errors.is_empty() {
        return Err(Problem::invalid("the change was refused; nothing was changed", errors));
    }
    let now = UnixMillis::now();
    let (changed, outgoing) = api.store.update_durable(|tx| {
        let was = tx.device(&id)?.ok_or_else(|| not_found(&id))?;
        let mut record = was.clone();
        let mut said = Vec::new();
        for (k, v) in &change.labels {
            match v {
                Some(v) => {
                    record.labels.insert(k.clone(), v.clone());
                    said.push(format!("{k}={v}"));
                }
                None => {
                    record.labels.remove(k);
                    said.push(format!("{k}-"));
                }
            }
        }
        if let Some(notes) = &change.notes {
            record.notes.clone_from(notes);
            said.push("notes changed".to_owned());
        }
        tx.put_device(&record);
        // New labels can put the device in other groups, and so give it other variables and
        // secrets: it is re-targeted in this change if its release renders differently. A
        // relabel that leaves its release undecidable (a variable or secret its new groups do
        // not provide) is refused like `var set`: storing the labels would leave the device
        // running a release its labels no longer describe, and any later re-target (a
        // rollout, a var set) would fail on it far from the cause. The 422 names what is
        // missing, so the way on is to set it for the device first and relabel again.
        let (retargeted, outgoing) = if record.labels == was.labels {
            (Vec::new(), Vec::new())
        } else {
            // Same variables, secrets and groups on both sides: only the labels differ.
            let before = Releases::snapshot(&*tx).map_err(internal)?;
            let moved = vec![Moved { was, now: record.clone() }];
            let verb = format!("changing the labels of {id} ({})", said.join(" "));
            retarget_members(tx, &api, &verb, before, moved, now, &format!("set the missing values for the device first (`fleetctl var set NAME VALUE --device {id}`, `fleetctl secret set NAME --device {id} < file`), or give it labels whose groups provide them"))?
        };
        if !retargeted.is_empty() {
            said.push("re-targeted (its groups changed what it renders)".to_owned());
        }
        tx.audit(AuditEntry::new(
            now,
            &caller.name,
            "device.change",
            id.to_string(),
            said.join(" "),
        ));
        // A re-target wrote the record again with its new generation.
        let device = tx.device(&id)?.unwrap_or(record);
        Ok::<_, Problem>((DeviceChanged { device: device.into(), retargeted }, outgoing))
    })?;
    send(&api, outgoing, now);
    Ok(Json(changed))
}

pub(super) async fn enroll(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Body(request): Body<EnrollRequest>,
) -> Result<Response, Problem> {
    let id = device_id(&id)?;
    if id.as_str() == SERVER_IDENTITY {
        return Err(Problem::bad_request(format!(
            "device id: `{SERVER_IDENTITY}` is reserved for the server's own broker identity; pick another id"
        )));
    }
    for (k, v) in &request.labels {
        if let Err(why) = groups::check_label_key(k).and_then(|()| groups::check_label_value(v)) {
            return Err(Problem::bad_request(format!("label {k}: {why}")));
        }
    }
    let key = EnrollKey::verify(&id, &request.public_key, &request.proof)
        .map_err(|e| Problem::bad_request(e.to_string()))?;
    let now = UnixMillis::now();
    let issued = api.store.update(|tx| {
        let previous = tx.device(&id)?;
        if previous.as_ref().is_some_and(|d| d.enrolled_at.is_some() && d.revoked_at.is_none()) {
            return Err(Problem::conflict(format!(
                "device {id} is already enrolled; revoke it first (`fleetctl device revoke {id}`) to issue a new bundle"
            )));
        }
        let issued = api
            .pki
            .issue_device(&id, &key, request.valid_days.unwrap_or(DEFAULT_DEVICE_VALIDITY_DAYS))
            .map_err(Problem::internal)?;
        let certificate =
            CertificateInfo { serial: issued.serial.clone(), not_after: issued.not_after };
        let mut record =
            DeviceRecord::enrolled(id.clone(), request.labels.clone(), certificate, now);
        // A re-enrolled device keeps the history of its revoked certificates.
        if let Some(previous) = previous {
            record.revoked_certificates = previous.revoked_certificates;
        }
        tx.put_device(&record);
        tx.audit(AuditEntry::new(
            now,
            &caller.name,
            "device.enroll",
            id.to_string(),
            format!("certificate serial {}", issued.serial),
        ));
        Ok((record, issued.cert_pem))
    })?;
    let (record, certificate_pem) = issued;
    tracing::info!(device = %id, "device enrolled");
    Ok((
        StatusCode::CREATED,
        Json(EnrollResponse {
            device: record.into(),
            certificate_pem,
            ca_pem: api.pki.ca_pem().to_owned(),
            server_keys: vec![api.pki.signing_key().public().to_hex()],
            broker: api.device_broker.to_string(),
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
    let now = UnixMillis::now();
    let (record, changed) = api.store.update_durable(|tx| {
        let record = tx.device(&id)?.ok_or_else(|| not_found(&id))?;
        if record.revoked_at.is_some() {
            return Ok::<_, Problem>((record, false));
        }
        let record = record.revoke(now);
        tx.put_device(&record);
        tx.audit(AuditEntry::new(now, &caller.name, "device.revoke", id.to_string(), ""));
        Ok((record, true))
    })?;
    if changed {
        super::write_crl(&api.store, &api.pki).map_err(Problem::internal)?;
        (api.crl_changed)();
        tracing::warn!(device = %id, "device revoked; its messages are dropped and the revocation list is updated");
    }
    Ok(Json(record.into()))
}

/// Looks up an enrolled, unrevoked device, or answers why not.
pub(super) fn active(record: Option<DeviceRecord>, id: &DeviceId) -> Result<DeviceRecord, Problem> {
    match record {
        Some(d) if d.refusal().is_none() => Ok(d),
        Some(d) => {
            Err(Problem::conflict(format!("device {id}: {}", d.refusal().unwrap_or("not active"))))
        }
        None => Err(not_found(id)),
    }
}

/// Publishes a desired state decided (and stored) by this request. If the broker cannot take
/// it now, the rollout driver sends it again on its next tick: the change is recorded either
/// way, so the request succeeded.
fn send_now(api: &Api, out: desired::Outgoing, now: UnixMillis) -> Result<(), Problem> {
    let device = out.device.clone();
    if let Err(e) = api.publisher.send_now(out, now) {
        tracing::warn!(%device, error = %e, "desired state queued for resending");
        api.driver.resend_later(device);
    }
    Ok(())
}

fn desired_problem(e: DesiredError) -> Problem {
    match e {
        DesiredError::UnknownRelease { .. } => Problem::not_found(e.to_string()),
        DesiredError::Store(e) => Problem::from(e),
        DesiredError::Integrity(e) => Problem::internal(e),
        DesiredError::Render { .. } => {
            let errors = e
                .problems()
                .into_iter()
                .map(|(path, reason)| super::FieldProblem { path, reason })
                .collect();
            Problem::invalid(
                format!(
                    "{e}; nothing was changed (`fleetctl var ls --device ID` shows its variables)"
                ),
                errors,
            )
        }
        DesiredError::MissingSecret { .. } => {
            let errors = e
                .problems()
                .into_iter()
                .map(|(path, reason)| super::FieldProblem { path, reason })
                .collect();
            Problem::invalid(format!("{e}; nothing was changed"), errors)
        }
        DesiredError::Secret(e) => Problem::internal(e),
    }
}

pub(super) async fn put_desired(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Body(request): Body<DesiredRequest>,
) -> Result<Json<DesiredResponse>, Problem> {
    let id = device_id(&id)?;
    if let Some(release) = &request.release {
        if let Err(problems) = release.validate() {
            let errors = problems
                .iter()
                .map(|p| super::FieldProblem { path: p.path.clone(), reason: p.reason.clone() })
                .collect();
            return Err(Problem::invalid(format!("release {} is invalid", release.id), errors));
        }
    }
    let now = UnixMillis::now();
    let (record, outgoing) = api.store.update_durable(|tx| {
        let mut record = active(tx.device(&id)?, &id)?;
        if let Some(release) = &request.release {
            match tx.release(release.id.as_str())? {
                Some(stored) if stored.spec != *release => {
                    return Err(Problem::conflict(format!(
                        "release {} already exists with other content; releases are immutable: give this one a new version",
                        release.id
                    )))
                }
                Some(_) => {}
                None => {
                    let stored = ReleaseRecord::new(
                        release.clone(),
                        api.pki.signing_key(),
                        None,
                        Vec::new(),
                        now,
                        &caller.name,
                    );
                    tx.put_release(&stored);
                    tx.audit(AuditEntry::new(now, &caller.name, "release.create", release.id.to_string(), "given as JSON"));
                }
            }
        }
        record.assigned_release = request.release.as_ref().map(|r| r.id.to_string());
        let outgoing = desired::retarget(tx, &api.pki, &mut Releases::default(), &mut record, now, false)
            .map_err(desired_problem)?;
        tx.put_device(&record);
        tx.audit(AuditEntry::new(
            now,
            &caller.name,
            "device.assign",
            id.to_string(),
            format!("release {}", record.assigned_release.as_deref().unwrap_or("none")),
        ));
        Ok((record, outgoing))
    })?;
    if let Some(out) = outgoing {
        send_now(&api, out, now)?;
        tracing::info!(device = %record.id, generation = record.desired_generation, release = ?record.desired_release, "desired state published");
    }
    Ok(Json(DesiredResponse { generation: record.desired_generation, device: record.into() }))
}

pub(super) async fn pin(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Body(request): Body<PinRequest>,
) -> Result<Json<Device>, Problem> {
    let id = device_id(&id)?;
    let release = ReleaseId::new(request.release.clone())
        .map_err(|e| Problem::bad_request(format!("release: {e}")))?;
    let reason = request.reason.trim().to_owned();
    if reason.is_empty() {
        return Err(Problem::bad_request(
            "a pin needs a reason (--reason \"bench debugging of the lidar driver\"): the next engineer must know why the robot is held",
        ));
    }
    let now = UnixMillis::now();
    if request.until.is_some_and(|u| u <= now.0) {
        return Err(Problem::bad_request("until: the expiry is in the past"));
    }
    let (record, outgoing) = api.store.update_durable(|tx| {
        let mut record = active(tx.device(&id)?, &id)?;
        let stored = tx.release(release.as_str())?.ok_or_else(|| {
            Problem::not_found(format!("release {release} is not known (`fleetctl release ls`)"))
        })?;
        if !request.force {
            let check = preflight::check(&record, api.store.inventory(&id)?.as_ref(), &stored, now);
            if !check.satisfiable() {
                return Err(Problem::conflict(format!(
                    "{id} cannot run {release}: {}; nothing was sent (pin anyway with --force)",
                    check.unsatisfiable.join("; ")
                )));
            }
        }
        record.pin = Some(PinRecord {
            release: release.clone(),
            reason: reason.clone(),
            pinned_by: caller.name.clone(),
            pinned_at: now,
            until: request.until.map(UnixMillis),
        });
        let outgoing =
            desired::retarget(tx, &api.pki, &mut Releases::default(), &mut record, now, false)
                .map_err(desired_problem)?;
        tx.put_device(&record);
        let until = request
            .until
            .map_or(String::new(), |u| format!(" until {}", crate::units::utc(UnixMillis(u))));
        tx.audit(AuditEntry::new(
            now,
            &caller.name,
            "device.pin",
            id.to_string(),
            format!("pinned to {release}{until}: {reason}"),
        ));
        Ok((record, outgoing))
    })?;
    if let Some(out) = outgoing {
        send_now(&api, out, now)?;
    }
    Ok(Json(record.into()))
}

pub(super) async fn unpin(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Device>, Problem> {
    let id = device_id(&id)?;
    let now = UnixMillis::now();
    let (record, outgoing) = api.store.update_durable(|tx| {
        let mut record = active(tx.device(&id)?, &id)?;
        let Some(pin) = record.pin.take() else {
            return Ok((record, None));
        };
        let outgoing =
            desired::retarget(tx, &api.pki, &mut Releases::default(), &mut record, now, false)
                .map_err(desired_problem)?;
        tx.put_device(&record);
        tx.audit(AuditEntry::new(
            now,
            &caller.name,
            "device.unpin",
            id.to_string(),
            format!("was pinned to {} by {}: {}", pin.release, pin.pinned_by, pin.reason),
        ));
        Ok::<_, Problem>((record, outgoing))
    })?;
    if let Some(out) = outgoing {
        send_now(&api, out, now)?;
    }
    api.driver.wake();
    Ok(Json(record.into()))
}

pub(super) async fn command(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Body(request): Body<CommandRequest>,
) -> Result<Json<CommandResult>, Problem> {
    let id = device_id(&id)?;
    let record = active(api.store.device(&id)?, &id)?;
    let timeout = std::time::Duration::from_secs(request.timeout_secs.unwrap_or(30).clamp(1, 3600));
    let now = UnixMillis::now();
    let command_id = u64::from_be_bytes(crate::pki::random::<8>().map_err(Problem::internal)?);
    let command = Command {
        id: command_id,
        device: record.id.clone(),
        issued_at: now,
        deadline: UnixMillis(now.0 + u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX)),
        action: request.action,
    };
    api.store.update(|tx| {
        tx.audit(AuditEntry::new(
            now,
            &caller.name,
            "device.command",
            id.to_string(),
            format!("{:?} (command {command_id})", command.action),
        ));
        Ok::<_, Problem>(())
    })?;
    let answer = api.waiters.wait_for(command_id);
    let payload = Message::Command(api.pki.signing_key().sign(&command)).encode();
    if let Err(e) =
        api.mqtt.try_publish(topic(&record.id, TopicKind::Cmd), QoS::AtLeastOnce, false, payload)
    {
        api.waiters.forget(command_id);
        return Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot publish to the MQTT broker right now ({e}); try again"),
        ));
    }
    tracing::info!(device = %record.id, command = command_id, action = ?command.action, "command sent");
    match tokio::time::timeout(timeout, answer).await {
        Ok(Ok(result)) => Ok(Json(result)),
        _ => {
            api.waiters.forget(command_id);
            Err(Problem::new(
                StatusCode::GATEWAY_TIMEOUT,
                format!("device {} did not answer command {command_id} within {} s (is it online? `fleetctl device show {}`); it will not run it after that", record.id, timeout.as_secs(), record.id),
            ))
        }
    }
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
