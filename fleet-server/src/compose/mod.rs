//! Compose file → canonical [`ReleaseSpec`]: the documented subset of the Compose
//! Specification plus Fleet's `x-fleet` extensions. The user-facing reference is
//! `fleet-server/COMPOSE.md`.
//!
//! Two phases, no I/O in either:
//! 1. [`Compose::parse`] reads the bytes, interpolates variables and checks everything that can
//!    be checked without the registry, returning every problem found with its Compose path.
//! 2. The server resolves [`Compose::images`] to digests (concurrently, through the registry),
//!    then [`Compose::into_release`] builds the release and runs [`ReleaseSpec::validate`],
//!    reporting its problems with Compose paths too.
//!
//! Invariants: anything outside the subset is refused with its path and why, never silently
//! dropped (only `x-*` extension blocks, `name` and `version` are ignored, on purpose); hostile
//! input is refused within bounded time and memory (see [`yaml`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use fleet_proto::release::{
    Dependency, HardwareRequest, HealthCheck, NetworkAttachment, NetworkMode, PortMapping,
    ResourceLimits, RestartPolicy, SecurityOptions, UpdateStrategy, VolumeMount, VolumeSource,
};
use fleet_proto::{ImageRef, ReleaseId, ReleaseSpec, ServiceName, ServiceSpec, SpecError};

mod fleet;
mod interpolate;
mod read;
mod service;
mod units;
mod yaml;

use read::{child, Problems};
use yaml::{Node, Value};

/// Compose files larger than this are refused before parsing (real ones are a few KiB).
pub const MAX_COMPOSE_BYTES: usize = 1 << 20;

/// One problem with its path in the Compose file, e.g.
/// `services.web.deploy.resources.limits.memory`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComposeProblem {
    /// Where: a Compose path (`services.web.ports[1]`), or `line L, column C` for a YAML
    /// syntax error, or `app` / `version` for the release's own name.
    pub path: String,
    /// What is wrong and, where it helps, what to write instead.
    pub reason: String,
    /// The line in the file, when known (1-based).
    pub line: Option<u64>,
}

impl fmt::Display for ComposeProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

impl std::error::Error for ComposeProblem {}

/// One image reference as written (after interpolation) and where it is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageUse {
    /// The service using it.
    pub service: ServiceName,
    /// Its Compose path, `services.web.image`.
    pub path: String,
    /// The reference, e.g. `eclipse-mosquitto:2.0` or `ghcr.io/acme/app@sha256:...`.
    pub reference: String,
}

/// A parsed, checked Compose file whose images are not resolved yet.
#[derive(Debug, Clone)]
pub struct Compose {
    services: Vec<Draft>,
    /// Declared volumes: key → exact name on the device (`name:`), or `None` for `<app>_<key>`.
    volumes: BTreeMap<String, Option<String>>,
}

/// A service with everything but its resolved image.
#[derive(Debug, Clone)]
struct Draft {
    image: ImageUse,
    parts: Parts,
    sources: Sources,
}

/// [`ServiceSpec`] without its name and image.
#[derive(Debug, Clone)]
struct Parts {
    entrypoint: Option<Vec<String>>,
    command: Vec<String>,
    env: BTreeMap<String, String>,
    working_dir: Option<String>,
    labels: BTreeMap<String, String>,
    volumes: Vec<VolumeMount>,
    ports: Vec<PortMapping>,
    network_mode: NetworkMode,
    healthcheck: Option<HealthCheck>,
    restart: RestartPolicy,
    update: UpdateStrategy,
    health_deadline: Duration,
    hardware: Vec<HardwareRequest>,
    resources: ResourceLimits,
    security: SecurityOptions,
    depends_on: Vec<Dependency>,
    group_add: Vec<String>,
    optional_hardware: Vec<HardwareRequest>,
    telemetry: bool,
    no_new_privileges: bool,
    cpu_shares: Option<u32>,
    networks: Vec<NetworkAttachment>,
    secrets: Vec<fleet_proto::SecretMount>,
    host_namespaces: Vec<fleet_proto::policy::Namespace>,
    options: fleet_proto::release::ContainerOptions,
}

/// The Compose path each converted element came from, to translate
/// [`ReleaseSpec::validate`]'s `services[i]...` paths back into the file's terms.
#[derive(Debug, Clone, Default)]
struct Sources {
    service: String,
    ports: Vec<String>,
    volumes: Vec<String>,
    depends_on: Vec<String>,
    secrets: Vec<String>,
    /// Spec field (`resources.cpu_millis`) → Compose path it was set from.
    fields: BTreeMap<&'static str, String>,
}

impl Compose {
    /// Parses and checks everything that can be checked without the registry. `vars` are the
    /// variables for `${VAR}` interpolation. Returns every problem found, not just the first.
    pub fn parse(
        bytes: &[u8],
        vars: &BTreeMap<String, String>,
    ) -> Result<Compose, Vec<ComposeProblem>> {
        Compose::parse_for(bytes, vars, &[])
    }

    /// [`Compose::parse`] with the Compose `profiles` to run: a service with a `profiles` key
    /// is part of the release only if one of its profiles is selected; a service without one
    /// always is. A selected profile no service has is refused (a typo would silently drop
    /// services otherwise).
    pub fn parse_for(
        bytes: &[u8],
        vars: &BTreeMap<String, String>,
        profiles: &[String],
    ) -> Result<Compose, Vec<ComposeProblem>> {
        if bytes.len() > MAX_COMPOSE_BYTES {
            return Err(vec![ComposeProblem {
                path: "(file)".to_owned(),
                reason: format!(
                    "the file is {} bytes; at most {MAX_COMPOSE_BYTES} are accepted",
                    bytes.len()
                ),
                line: None,
            }]);
        }
        let mut root = yaml::parse(bytes).map_err(|e| {
            let path = match (e.line, e.column) {
                (Some(l), Some(c)) => format!("line {l}, column {c}"),
                _ => "(file)".to_owned(),
            };
            vec![ComposeProblem { path, reason: e.message, line: e.line }]
        })?;
        let mut p = Problems::default();
        interpolate_tree(&mut p, "", &mut root, vars, true);
        let (services, volumes) = top_level(&mut p, &root, profiles);
        if p.is_empty() {
            Ok(Compose { services, volumes })
        } else {
            Err(p.list)
        }
    }

    /// The image references as written (after interpolation), with where they are used, in
    /// file order, one per service.
    pub fn images(&self) -> Vec<ImageUse> {
        self.services.iter().map(|d| d.image.clone()).collect()
    }

    /// Builds the canonical release `{app}@{version}`, given each reference's resolved
    /// [`ImageRef`] (keyed by [`ImageUse::reference`]), and validates it. Problems carry
    /// Compose paths.
    pub fn into_release(
        self,
        app: &str,
        version: &str,
        images: &BTreeMap<String, ImageRef>,
    ) -> Result<ReleaseSpec, Vec<ComposeProblem>> {
        let mut problems = Vec::new();
        let mut problem = |path: &str, reason: String| {
            problems.push(ComposeProblem { path: path.to_owned(), reason, line: None })
        };
        for (what, value) in [("app", app), ("version", version)] {
            if value.is_empty() {
                problem(what, format!("the release's {what} is empty"));
            } else if value.contains('@') {
                problem(
                    what,
                    format!(
                        "{value:?} contains '@', which separates app and version in the release id"
                    ),
                );
            }
        }
        let id = ReleaseId::new(format!("{app}@{version}"));
        if let Err(e) = &id {
            problem("version", format!("{e}: app and version make the release id {app}@{version}"));
        }
        let mut services = Vec::with_capacity(self.services.len());
        let mut sources = Vec::with_capacity(self.services.len());
        for mut draft in self.services {
            // Compose's naming: a volume is the app's own (`<app>_<key>`) unless `name:` says
            // otherwise, so two apps never share data by accident.
            for m in &mut draft.parts.volumes {
                if let VolumeSource::Named(key) = &mut m.source {
                    *key = match self.volumes.get(key.as_str()) {
                        Some(Some(exact)) => exact.clone(),
                        _ => format!("{app}_{key}"),
                    };
                }
            }
            match images.get(&draft.image.reference) {
                Some(image) => {
                    services
                        .push(draft.parts.into_spec(draft.image.service.clone(), image.clone()));
                    sources.push(draft.sources);
                }
                None => problem(
                    &draft.image.path,
                    format!("image {:?} was not resolved to a digest", draft.image.reference),
                ),
            }
        }
        let Ok(id) = id else { return Err(problems) };
        if !problems.is_empty() {
            return Err(problems);
        }
        let release =
            ReleaseSpec { id, app: app.to_owned(), version: version.to_owned(), services };
        match release.validate() {
            Ok(()) => Ok(release),
            Err(errors) => Err(errors.iter().map(|e| translate(e, &sources)).collect()),
        }
    }
}

impl Parts {
    fn into_spec(self, name: ServiceName, image: ImageRef) -> ServiceSpec {
        ServiceSpec {
            name,
            image,
            entrypoint: self.entrypoint,
            command: self.command,
            env: self.env,
            working_dir: self.working_dir,
            labels: self.labels,
            volumes: self.volumes,
            ports: self.ports,
            network_mode: self.network_mode,
            healthcheck: self.healthcheck,
            restart: self.restart,
            update: self.update,
            health_deadline: self.health_deadline,
            hardware: self.hardware,
            resources: self.resources,
            security: self.security,
            depends_on: self.depends_on,
            group_add: self.group_add,
            optional_hardware: self.optional_hardware,
            telemetry: self.telemetry,
            no_new_privileges: self.no_new_privileges,
            cpu_shares: self.cpu_shares,
            networks: self.networks,
            secrets: self.secrets,
            host_namespaces: self.host_namespaces,
            options: self.options,
        }
    }
}

/// `services[1].ports[0].host_port` → the Compose path that port came from.
fn translate(e: &SpecError, sources: &[Sources]) -> ComposeProblem {
    let fallback = || ComposeProblem { path: e.path.clone(), reason: e.reason.clone(), line: None };
    let Some(rest) = e.path.strip_prefix("services[") else { return fallback() };
    let Some((index, rest)) = rest.split_once(']') else { return fallback() };
    let Some(src) = index.parse::<usize>().ok().and_then(|i| sources.get(i)) else {
        return fallback();
    };
    let rest = rest.strip_prefix('.').unwrap_or(rest);
    let indexed = |list: &[String], field: &str| -> Option<String> {
        let tail = rest.strip_prefix(field)?.strip_prefix('[')?;
        let i: usize = tail.split_once(']')?.0.parse().ok()?;
        list.get(i).cloned()
    };
    let path = indexed(&src.ports, "ports")
        .or_else(|| indexed(&src.volumes, "volumes"))
        .or_else(|| indexed(&src.depends_on, "depends_on"))
        .or_else(|| indexed(&src.secrets, "secrets"))
        .or_else(|| {
            src.fields
                .iter()
                .filter(|(field, _)| rest.starts_with(*field))
                .max_by_key(|(field, _)| field.len())
                .map(|(_, path)| path.clone())
        })
        .unwrap_or_else(|| src.service.clone());
    ComposeProblem { path, reason: e.reason.clone(), line: None }
}

/// Interpolates every string value in place. Extension blocks (`x-*` other than `x-fleet`)
/// are skipped: they are ignored anyway, and their anchors are interpolated where merged.
fn interpolate_tree(
    p: &mut Problems,
    path: &str,
    node: &mut Node,
    vars: &BTreeMap<String, String>,
    extension_level: bool,
) {
    let line = node.line;
    match &mut node.value {
        // Over the budget already: refused once (below), the rest stays as written.
        Value::Str(_) if p.expanded > interpolate::MAX_EXPANDED_BYTES => {}
        Value::Str(s) => match interpolate::interpolate(s, vars) {
            Ok(done) if p.expanded + done.len() > interpolate::MAX_EXPANDED_BYTES => {
                p.add_line(path, Some(line), interpolate::too_large().0);
                p.poisoned.push(path.to_owned());
                p.expanded = usize::MAX / 2;
            }
            Ok(done) => {
                p.expanded += done.len();
                *s = done;
            }
            Err(e) => {
                p.add_line(path, Some(line), e.0);
                p.poisoned.push(path.to_owned());
            }
        },
        Value::Seq(items) => {
            for (i, it) in items.iter_mut().enumerate() {
                interpolate_tree(p, &read::item(path, i), it, vars, false);
            }
        }
        Value::Map(entries) => {
            // Extension keys are ignored at the top level and in a service's own mapping.
            let services_level =
                path.strip_prefix("services.").is_some_and(|r| !r.contains(['.', '[']));
            for (key, value) in entries.iter_mut() {
                if (extension_level || services_level) && key.starts_with("x-") && key != "x-fleet"
                {
                    continue;
                }
                let at = child(path, key);
                interpolate_tree(p, &at, value, vars, false);
            }
        }
        Value::Null | Value::Bool(_) | Value::Int(_) | Value::Float(_) => {}
    }
}

/// Refusals of top-level keys, with why.
fn top_level_refusal(key: &str) -> Option<&'static str> {
    Some(match key {
        "configs" => "configs as files are not supported yet; bake the file into the image or use environment",
        "include" => "include is not supported: a release is one self-contained file (use YAML anchors to share blocks)",
        "models" => "models are not supported",
        _ => return None,
    })
}

type TopLevelOut = (Vec<Draft>, BTreeMap<String, Option<String>>);

fn top_level(p: &mut Problems, root: &Node, profiles: &[String]) -> TopLevelOut {
    let Some(entries) = root.as_map() else {
        p.add(
            "(file)",
            Some(root),
            format!(
                "a Compose file is a mapping with a services key at the top; this one is {}",
                root.kind()
            ),
        );
        return (vec![], BTreeMap::new());
    };
    let mut services_node = None;
    let mut volumes = BTreeMap::new();
    let mut networks = BTreeSet::new();
    let mut secrets = BTreeMap::new();
    let mut defaults = fleet::FleetKeys::default();
    for (key, value) in entries {
        match key.as_str() {
            "services" => services_node = Some(value),
            // Obsolete (version) and informational (name, the project name): the release's
            // app and version come from `fleetctl release create <app> <version>`.
            "name" | "version" => {}
            "volumes" => volumes = declared_volumes(p, value),
            "networks" => networks = declared_networks(p, value),
            "secrets" => secrets = declared_secrets(p, value),
            "x-fleet" => defaults = fleet::fleet_keys(p, key, value, true),
            k if k.starts_with("x-") => {}
            k => match top_level_refusal(k) {
                Some(why) => p.add(k, Some(value), why),
                None => p.add(&child("", k), Some(value), format!("unknown top-level key {k:?}; a Compose file for Fleet has services, volumes, networks, x-fleet and x-* blocks (see COMPOSE.md)")),
            },
        }
    }
    let Some(services_node) = services_node else {
        p.add("services", Some(root), "no services: a release needs at least one service");
        return (vec![], volumes);
    };
    let Some(services) = services_node.as_map() else {
        p.add(
            "services",
            Some(services_node),
            format!(
                "expected a mapping of service names to services, found {}",
                services_node.kind()
            ),
        );
        return (vec![], volumes);
    };
    if services.is_empty() {
        p.add("services", Some(services_node), "no services: a release needs at least one service");
    }
    let selected = select_profiles(p, services, profiles);
    let services: Vec<&(String, Node)> =
        services.iter().filter(|(name, _)| !selected.inactive.contains_key(name)).collect();
    if services.is_empty() {
        p.add("services", Some(services_node), "no service runs with the selected profiles: services without profiles always run, the others when one of theirs is selected (--profile NAME)");
    }
    let names: BTreeSet<&str> = services.iter().map(|(k, _)| k.as_str()).collect();
    let top = service::TopLevel {
        inactive: &selected.inactive,
        volumes: &volumes,
        networks: &networks,
        secrets: &secrets,
        services: &names,
        defaults: &defaults,
    };
    let drafts =
        services.iter().filter_map(|(name, node)| service::service(p, name, node, &top)).collect();
    (drafts, volumes)
}

/// Which services the selected profiles leave out.
struct Selected {
    /// Service → its profiles, for the services that do not run.
    inactive: BTreeMap<String, Vec<String>>,
}

/// Reads every service's `profiles` and decides which run with `selected`; refuses a selected
/// profile no service has.
fn select_profiles(p: &mut Problems, services: &[(String, Node)], selected: &[String]) -> Selected {
    let mut known = BTreeSet::new();
    let mut inactive = BTreeMap::new();
    for (name, node) in services {
        let Some(value) = node.as_map().and_then(|m| m.iter().find(|(k, _)| k == "profiles"))
        else {
            continue;
        };
        let at = child(&child("services", name), "profiles");
        let Some(theirs) = read::strings(p, &at, &value.1) else { continue };
        for (i, profile) in theirs.iter().enumerate() {
            let ok = profile.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
                && profile.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
            if !ok {
                p.add(&read::item(&at, i), Some(&value.1), format!("{profile:?} is not a profile name (letters, digits, _, . and -, starting with a letter or digit)"));
            }
            known.insert(profile.clone());
        }
        if !theirs.is_empty() && !theirs.iter().any(|t| selected.contains(t)) {
            inactive.insert(name.clone(), theirs);
        }
    }
    for profile in selected {
        if !known.contains(profile) {
            let have: Vec<&str> = known.iter().map(String::as_str).collect();
            let have = if have.is_empty() { "none".to_owned() } else { have.join(", ") };
            p.add(
                "profiles",
                None,
                format!("no service has profile {profile:?} (the file's profiles: {have})"),
            );
        }
    }
    Selected { inactive }
}

/// Why a secret's value never comes from the Compose file.
const SECRET_VALUES_ELSEWHERE: &str = "values never go in the Compose file or the image: `fleetctl secret set NAME < file` stores it encrypted on the server, and each device gets it sealed to its own key; declare the secret as NAME: {} (or external: true)";

/// Top-level `secrets`: every key is a secret whose value comes from the Fleet secret store,
/// under the key's name or the one `name:` gives. Returns key → store name.
fn declared_secrets(p: &mut Problems, node: &Node) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if node.is_null() {
        return out;
    }
    let Some(entries) = read::map(p, "secrets", node) else { return out };
    for (key, decl) in entries {
        let at = child("secrets", key);
        if !fleet_proto::release::is_object_name(key) {
            p.add(&at, Some(decl), format!("{key:?} is not a secret name (letters, digits, _, . and -, starting with a letter or digit, at most 64)"));
            continue;
        }
        let mut store_name = key.clone();
        if let Some(fields) = decl.as_map() {
            for (field, value) in fields {
                let field_at = child(&at, field);
                match field.as_str() {
                    "file" | "environment" | "content" => p.add(&field_at, Some(value), format!("a secret's {field} is refused: {}", SECRET_VALUES_ELSEWHERE.replace("NAME", key))),
                    "external" => match read::boolean(p, &field_at, value) {
                        Some(true) | None => {}
                        Some(false) => p.add(&field_at, Some(value), format!("external: false would need file: or environment:, which Fleet refuses: {}", SECRET_VALUES_ELSEWHERE.replace("NAME", key))),
                    },
                    "name" => {
                        if let Some(name) = read::nonempty(p, &field_at, value) {
                            if fleet_proto::release::is_object_name(&name) {
                                store_name = name;
                            } else {
                                p.add(&field_at, Some(value), format!("{name:?} is not a secret name (letters, digits, _, . and -, starting with a letter or digit, at most 64)"));
                            }
                        }
                    }
                    "driver" | "driver_opts" | "template_driver" | "labels" => p.add(&field_at, Some(value), format!("secret {field} is not supported: every secret comes from the Fleet secret store")),
                    other => p.add(&field_at, Some(value), format!("unknown secret key {other:?}; a secret declaration is {{}}, external: true or name: STORE_NAME")),
                }
            }
        } else if !decl.is_null() {
            p.add(&at, Some(decl), format!("expected {{}} or a mapping, found {}", decl.kind()));
        }
        out.insert(key.clone(), store_name);
    }
    out
}

/// Top-level `networks`: the release's own bridge networks, by name. The agent creates each as
/// `<device>_<app>_<name>` on the device; `default` exists without being declared.
fn declared_networks(p: &mut Problems, node: &Node) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if node.is_null() {
        return out;
    }
    let Some(entries) = read::map(p, "networks", node) else { return out };
    for (name, decl) in entries {
        let at = child("networks", name);
        if !fleet_proto::release::is_object_name(name) {
            p.add(&at, Some(decl), format!("{name:?} is not a network name (letters, digits, _, . and -, starting with a letter or digit, at most 64)"));
            continue;
        }
        if let Some(fields) = decl.as_map() {
            for (key, value) in fields {
                let field_at = child(&at, key);
                match key.as_str() {
                    "driver" if value.as_str() == Some("bridge") => {}
                    "driver" | "driver_opts" | "ipam" | "enable_ipv6" | "attachable" => p.add(&field_at, Some(value), "network drivers and their options are not supported: every release network is a bridge the agent creates on the device"),
                    "external" | "name" => p.add(&field_at, Some(value), "external and renamed networks are not supported: the agent creates and owns each release network as <device>_<app>_<name>, so apps never share one by accident"),
                    "internal" | "labels" => p.add(&field_at, Some(value), format!("network {key} is not supported yet")),
                    other => p.add(&field_at, Some(value), format!("unknown network key {other:?}; a network declaration is {{}} (or driver: bridge)")),
                }
            }
        } else if !decl.is_null() {
            p.add(&at, Some(decl), format!("expected {{}} or a mapping, found {}", decl.kind()));
        }
        out.insert(name.clone());
    }
    out
}

/// Top-level `volumes`: named volume declarations, key → the exact name on the device when
/// `name:` gives one (`None`: `<app>_<key>`).
fn declared_volumes(p: &mut Problems, node: &Node) -> BTreeMap<String, Option<String>> {
    let mut out = BTreeMap::new();
    if node.is_null() {
        return out;
    }
    let Some(entries) = read::map(p, "volumes", node) else { return out };
    for (name, decl) in entries {
        let at = child("volumes", name);
        if !service::is_volume_name(name) {
            p.add(&at, Some(decl), format!("{name:?} is not a volume name (letters, digits, _, . and -, starting with a letter or digit)"));
            continue;
        }
        let mut engine_name = None;
        if let Some(fields) = decl.as_map() {
            for (key, value) in fields {
                let field_at = child(&at, key);
                match key.as_str() {
                    "name" => {
                        if let Some(n) = read::string(p, &field_at, value) {
                            if service::is_volume_name(&n) {
                                engine_name = Some(n);
                            } else {
                                p.add(&field_at, Some(value), format!("{n:?} is not a volume name"));
                            }
                        }
                    }
                    "driver" if value.as_str() == Some("local") => {}
                    "driver" | "driver_opts" => p.add(&field_at, Some(value), "volume drivers and driver options (NFS, bind-backed volumes) are not supported yet: the agent creates local volumes; bind-mount a host path in the service instead"),
                    "external" => p.add(&field_at, Some(value), "external volumes are not supported: the agent creates and owns the volumes of a release on each device"),
                    "labels" => p.add(&field_at, Some(value), "volume labels are not supported yet: the agent labels the volumes it creates itself"),
                    other => p.add(&field_at, Some(value), format!("unknown volume key {other:?}; a volume declaration may have name only")),
                }
            }
        } else if !decl.is_null() {
            p.add(
                &at,
                Some(decl),
                format!("expected {{}} or a mapping with name, found {}", decl.kind()),
            );
        }
        out.insert(name.clone(), engine_name);
    }
    out
}

#[cfg(test)]
mod tests;
