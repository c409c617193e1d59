//! Releases: list, show, create (from a Compose file, its images resolved in their registries,
//! or from canonical JSON). A release is immutable once stored, and signed when it is.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use fleet_api::{FieldProblem, ReleaseRequest};
use fleet_proto::{ReleaseId, ReleaseSpec, UnixMillis};
use serde::Deserialize;

use super::{blocking, Error, Fleet};
use crate::audit::AuditEntry;
use crate::auth::Caller;
use crate::compose::{self, ComposeProblem};
use crate::releases::{ImageInfo, ImageResolver, ReleaseRecord};
use crate::store::{Page, Store};
use crate::variables::VarIndex;

/// `?app=` of the release list, with paging (the REST API reads it from the query string).
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
// An unknown parameter (`?ap=`) is refused, not ignored into a wider answer.
#[serde(deny_unknown_fields)]
pub struct ReleaseFilter {
    /// Only this application's releases.
    pub app: Option<String>,
    /// Page size (default 100, at most 1000).
    pub limit: Option<usize>,
    /// The `next` of the page before (empty: the first page).
    pub after: Option<String>,
}

/// A page of releases, one app's when `filter.app` says so.
pub fn list(store: &Store, filter: &ReleaseFilter) -> Result<Page<ReleaseRecord>, Error> {
    let limit = filter.limit.unwrap_or(100).clamp(1, 1000);
    match &filter.app {
        // Ids start with `app@`, so one app's releases are a contiguous range.
        Some(app) => {
            let after = filter.after.clone().unwrap_or_else(|| format!("{app}@"));
            let mut page = store.releases_page(Some(&after), limit)?;
            let prefix = format!("{app}@");
            let before = page.items.len();
            page.items.retain(|r| r.id().as_str().starts_with(&prefix));
            if page.items.len() < before {
                page.next = None;
            }
            Ok(page)
        }
        None => Ok(store.releases_page(filter.after.as_deref(), limit)?),
    }
}

/// Release `id`.
pub fn show(store: &Store, id: &str) -> Result<ReleaseRecord, Error> {
    store.release(id)?.ok_or_else(|| Error::NotFound {
        what: "release",
        id: id.to_owned(),
        hint: "`fleetctl release ls` lists them".to_owned(),
    })
}

fn refused(summary: impl Into<String>, problems: Vec<FieldProblem>) -> Error {
    Error::Invalid { summary: summary.into(), problems }
}

/// Creates the release `request` describes, resolving a Compose file's images with `resolver`.
pub async fn create(
    fleet: &Fleet,
    resolver: &Arc<dyn ImageResolver>,
    caller: &Caller,
    request: ReleaseRequest,
    now: UnixMillis,
) -> Result<ReleaseRecord, Error> {
    let id = ReleaseId::new(format!("{}@{}", request.app, request.version)).map_err(|e| {
        refused(
            "the release was refused",
            vec![FieldProblem { path: "app, version".into(), reason: e.to_string() }],
        )
    })?;
    if request.app == crate::releases::AGENT_APP {
        return Err(refused(
            "the release was refused",
            vec![FieldProblem {
                path: "app".into(),
                reason: format!(
                    "{} is the agent's own name: make agent releases with `fleetctl release create-agent VERSION --binary PLATFORM=FILE`",
                    crate::releases::AGENT_APP
                ),
            }],
        ));
    }
    let (spec, images) = match (&request.compose, &request.spec) {
        (Some(compose), None) => {
            let names = (request.app.as_str(), request.version.as_str());
            from_compose(&fleet.store, resolver, names, compose, &request.profiles).await?
        }
        (None, Some(spec)) => {
            if spec.id != id || spec.app != request.app || spec.version != request.version {
                return Err(refused(
                    "the release was refused",
                    vec![FieldProblem {
                        path: "spec.id".into(),
                        reason: format!("the spec says {}, the request {id}", spec.id),
                    }],
                ));
            }
            (spec.clone(), Vec::new())
        }
        _ => {
            return Err(Error::BadRequest(
                "give the release as either `compose` (the Compose file's text) or `spec` (canonical JSON)".to_owned(),
            ))
        }
    };
    if let Err(problems) = spec.validate() {
        let errors =
            problems.into_iter().map(|p| FieldProblem { path: p.path, reason: p.reason }).collect();
        return Err(refused(format!("release {id} is invalid"), errors));
    }
    let (fleet, caller) = (fleet.clone(), caller.clone());
    blocking(move || fleet.store.update_durable(|tx| {
        if tx.release(id.as_str())?.is_some() {
            return Err(Error::conflict(format!(
                "release {id} already exists; releases are immutable: give this one a new version"
            )));
        }
        // Every secret a service mounts must have a value somewhere, or no device could run
        // the release.
        let stored: BTreeSet<String> = tx.secrets()?.into_iter().map(|r| r.name).collect();
        let mut unknown = Vec::new();
        for service in &spec.services {
            for (i, m) in service.secrets.iter().enumerate() {
                if !stored.contains(&m.source) {
                    unknown.push(FieldProblem {
                        path: format!("services.{}.secrets[{i}]", service.name),
                        reason: format!(
                            "no secret {}; set it with `fleetctl secret set {} < file`",
                            m.source, m.source
                        ),
                    });
                }
            }
        }
        if !unknown.is_empty() {
            return Err(refused(
                format!("release {id} mounts secrets that have no value at any scope; nothing was stored"),
                unknown,
            ));
        }
        let record = ReleaseRecord::new(
            spec.clone(),
            fleet.pki.signing_key(),
            request.compose.clone(),
            images.clone(),
            now,
            &caller.name,
        );
        tx.put_release(&record);
        let services: Vec<String> =
            spec.services.iter().map(|s| format!("{} {}", s.name, s.image)).collect();
        tx.audit(AuditEntry::new(
            now,
            &caller.name,
            "release.create",
            id.to_string(),
            services.join(", "),
        ));
        Ok(record)
    }))
    .await
}

/// Converts a Compose file, resolving every image through the registry (concurrently).
async fn from_compose(
    store: &Store,
    resolver: &Arc<dyn ImageResolver>,
    (app, version): (&str, &str),
    compose: &str,
    profiles: &[String],
) -> Result<(ReleaseSpec, Vec<ImageInfo>), Error> {
    let to_problems = |problems: Vec<ComposeProblem>| {
        problems.into_iter().map(|p| FieldProblem { path: p.path, reason: p.reason }).collect()
    };
    if compose.len() > compose::MAX_COMPOSE_BYTES {
        return Err(Error::TooLarge {
            what: "the Compose file",
            size: compose.len(),
            max: compose::MAX_COMPOSE_BYTES,
        });
    }
    // The stored release is the fleet-wide render; devices get theirs from their variables
    // (crate::variables), so a reference must resolve with the fleet's values alone.
    let fleet_vars = VarIndex::new(store.variables()?, &[]).fleet_common();
    let parsed = compose::Compose::parse_for(compose.as_bytes(), &fleet_vars, profiles).map_err(|p| {
        let hinted = p
            .into_iter()
            .map(|mut p| {
                if let Some(name) = unset_variable(&p.reason) {
                    p.reason = format!("{}, or set a fleet-wide value first: `fleetctl var set {name} VALUE` (group and device values then override it per device)", p.reason);
                }
                p
            })
            .collect();
        refused("the Compose file was refused; nothing was stored", to_problems(hinted))
    })?;
    let uses = parsed.images();
    let mut lookups = tokio::task::JoinSet::new();
    let distinct: BTreeSet<String> = uses.iter().map(|u| u.reference.clone()).collect();
    for reference in distinct {
        let resolver = resolver.clone();
        lookups.spawn_blocking(move || {
            let found = resolver.resolve(&reference);
            (reference, found)
        });
    }
    let mut resolved = BTreeMap::new();
    let mut failed = BTreeMap::new();
    while let Some(joined) = lookups.join_next().await {
        let (reference, found) = joined.map_err(Error::internal)?;
        match found {
            Ok(r) => {
                resolved.insert(reference, r);
            }
            Err(why) => {
                failed.insert(reference, why);
            }
        }
    }
    if !failed.is_empty() {
        let errors = uses
            .iter()
            .filter_map(|u| {
                failed
                    .get(&u.reference)
                    .map(|why| FieldProblem { path: u.path.clone(), reason: why.clone() })
            })
            .collect();
        return Err(refused(
            "images of the Compose file do not resolve in their registries; nothing was stored",
            errors,
        ));
    }
    let digests = resolved.iter().map(|(k, v)| (k.clone(), v.image.clone())).collect();
    let spec = parsed
        .into_release(app, version, &digests)
        .map_err(|p| refused("the Compose file was refused; nothing was stored", to_problems(p)))?;
    let images = uses
        .into_iter()
        .filter_map(|u| {
            resolved.get(&u.reference).map(|r| ImageInfo {
                service: u.service.to_string(),
                reference: u.reference.clone(),
                resolved: r.clone(),
            })
        })
        .collect();
    Ok((spec, images))
}

/// The name in an interpolation error about an unset variable without a default.
fn unset_variable(reason: &str) -> Option<&str> {
    let rest = reason.strip_prefix("variable ")?;
    let (name, tail) = rest.split_once(' ')?;
    tail.starts_with("is not set; give a default").then_some(name)
}

#[cfg(test)]
mod tests {
    use fleet_oci::guard::Allowlist;

    use super::*;
    use crate::registry::RegistryResolver;

    /// The refusal reaches the operator as a problem on the image's field, naming the key
    /// that would allow it.
    #[tokio::test]
    async fn a_compose_file_naming_a_registry_off_the_list_is_refused_by_its_image_field() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let allowlist = Allowlist::new(&["registry.example.com"]).unwrap();
        let resolver: Arc<dyn ImageResolver> =
            Arc::new(RegistryResolver::new(Vec::new(), None, allowlist));
        let compose = "services:\n  web:\n    image: 169.254.169.254/latest/meta-data:1\n";
        let err = from_compose(&store, &resolver, ("site", "1"), compose, &[]).await.unwrap_err();
        let Error::Invalid { problems, .. } = err else { panic!("{err:?}") };
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].path, "services.web.image");
        assert!(
            problems[0]
                .reason
                .contains("registry 169.254.169.254 is not one of the allowed registries")
                && problems[0].reason.contains("allowed_registries"),
            "{}",
            problems[0].reason
        );
    }

    /// The Compose reference implementation's own cycle (service1 → service2 → service3 →
    /// service1) is refused, the cycle named; nothing is stored.
    #[tokio::test]
    async fn a_compose_file_with_a_dependency_cycle_is_refused_naming_the_cycle() {
        let h = crate::test_support::harness();
        let image = format!("127.0.0.1:5000/demo/app@sha256:{}", "c".repeat(64));
        let compose = format!(
            "services:\n  service1:\n    image: {image}\n    depends_on: [service2]\n  service2:\n    image: {image}\n    depends_on: [service3]\n  service3:\n    image: {image}\n    depends_on: [service1]\n"
        );
        let request = ReleaseRequest {
            app: "cyclic".into(),
            version: "1".into(),
            compose: Some(compose),
            spec: None,
            profiles: Vec::new(),
        };
        let admin = Caller { name: "admin".into(), role: fleet_api::Role::Admin };
        let err = create(&h.api.fleet(), &h.api.resolver, &admin, request, UnixMillis::now())
            .await
            .unwrap_err();
        let Error::Invalid { problems, .. } = err else { panic!("{err:?}") };
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(
            problems[0].reason,
            "dependency cycle: service1 → service2 → service3 → service1"
        );
        assert!(h.api.store.release("cyclic@1").unwrap().is_none());
    }
}
