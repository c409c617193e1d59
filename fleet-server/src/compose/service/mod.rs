//! One Compose service → the parts of a [`ServiceSpec`](fleet_proto::ServiceSpec).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use fleet_proto::policy::Namespace;
use fleet_proto::release::{
    ContainerOptions, Dependency, GpuKind, GpuSelect, HardwareRequest, NetworkAttachment,
    NetworkMode, PortMapping, ResourceLimits, RestartPolicy, SecretMount, SecurityOptions, Ulimit,
    UpdateStrategy, VolumeMount,
};
use fleet_proto::ServiceName;

use crate::compose::fleet::{self, FleetKeys};
use crate::compose::read::{self, agree, child, Problems, Sourced};
use crate::compose::yaml::{Node, Value};
use crate::compose::{Draft, ImageUse, Parts, Sources};

mod environment;
mod health;
mod lifecycle;
mod networking;
mod options;
mod resources;
mod secrets;
mod security;
mod volumes;

use environment::{environment, labels, words};
use health::{combine_health, healthcheck, Healthcheck};
use lifecycle::{depends_on, restart};
use networking::{host_namespace, network_mode, networks, ports};
use resources::{devices, pids, reserved_devices, ulimits};
use secrets::secrets;
use security::{capabilities, security_opt};
pub(crate) use volumes::is_volume_name;
use volumes::{tmpfs, volumes};

/// Ports one service may publish (ranges expanded). Docker runs a proxy per published port;
/// thousands of them are a mistake, not a plan.
pub(crate) const MAX_PORTS_PER_SERVICE: usize = 1024;

/// What the service converter needs from the rest of the file.
#[derive(Debug)]
pub(crate) struct TopLevel<'a> {
    /// Declared named volumes: key → the exact name on the device when `name:` gives one;
    /// otherwise the device name is `<app>_<key>`, decided in [`super::Compose::into_release`].
    pub(crate) volumes: &'a BTreeMap<String, Option<String>>,
    /// Declared networks (besides `default`, which always exists).
    pub(crate) networks: &'a BTreeSet<String>,
    /// Declared secrets: Compose key → name in the Fleet secret store.
    pub(crate) secrets: &'a BTreeMap<String, String>,
    /// Every service name in the file that runs with the selected profiles, for depends_on.
    pub(crate) services: &'a BTreeSet<&'a str>,
    /// Services the selected profiles leave out, with their profiles.
    pub(crate) inactive: &'a BTreeMap<String, Vec<String>>,
    /// Top-level `x-fleet` defaults.
    pub(crate) defaults: &'a FleetKeys,
}

/// Keys Fleet refuses, with why.
fn refusal(key: &str) -> Option<&'static str> {
    Some(match key {
        "build" => "devices pull prebuilt images: build and push it, then reference it by tag",
        "env_file" => "the file is on your machine, not the device: put the variables under environment",
        "container_name" => "the agent names containers itself so that old and new versions can run side by side during an update; remove it (other services reach this one by its service name)",
        "configs" => "configs as files are not supported yet; bake the file into the image or use environment",
        "logging" => "logging drivers are not configurable: the agent reads container logs itself (fleetctl logs)",
        "links" | "external_links" => "links are obsolete: services reach each other by service name on the release network; remove it",
        "extends" => "extends is not supported: share blocks with YAML anchors instead (x-common: &common, then <<: *common in the service)",
        "platform" => "the agent pulls the image variant for the device's own architecture from the multi-arch index; remove platform",
        "pull_policy" => "devices always run the image by the digest the server resolved; remove pull_policy",
        "scale" => "one container per service per device; remove scale",
        "mac_address" => "not supported: a container's address comes from the release network",
        "userns_mode" | "cgroup" | "cgroup_parent" | "isolation" | "storage_opt" | "device_cgroup_rules" => "not supported yet by the agent",
        "cpu_count" | "cpu_percent" => "a Windows container setting; on Linux use cpus, or cpu_quota with cpu_period",
        "cpu_rt_runtime" | "cpu_rt_period" => "not supported yet: ask for real-time scheduling with x-fleet.realtime_priority, and the agent gives the service a real-time budget where the kernel has one",
        "mem_swappiness" | "oom_kill_disable" => "not supported: use mem_limit and memswap_limit, and oom_score_adj to order what the kernel kills",
        "attach" => "services on a device run unattended: there is no terminal to attach",
        "annotations" | "develop" | "credential_spec" | "volumes_from" | "provider" | "use_api_socket" | "post_start" | "pre_stop" | "label_file" | "models" => "not supported",
        _ => return None,
    })
}

/// `expose: ["80", 443, "8000-8010/tcp"]`: ports or ranges, each checked, none mapped.
fn expose(p: &mut Problems, at: &str, v: &Node) {
    let Some(items) = read::strings(p, at, v) else { return };
    for (i, text) in items.iter().enumerate() {
        let ports = text.strip_suffix("/tcp").or_else(|| text.strip_suffix("/udp")).unwrap_or(text);
        let mut ends = ports.splitn(2, '-').map(str::parse::<u16>);
        let ok = match (ends.next(), ends.next()) {
            (Some(Ok(a)), None) => a > 0,
            (Some(Ok(a)), Some(Ok(b))) => a > 0 && a <= b,
            _ => false,
        };
        if !ok {
            let node = v.as_seq().and_then(|s| s.get(i));
            p.add(
                &read::item(at, i),
                node,
                format!("{text:?} is not a container port 1-65535 or a range like 8000-8010 (optionally /tcp or /udp)"),
            );
        }
    }
}

/// Converts `services.<name>`; `None` after recording why when it cannot be.
pub(crate) fn service(
    p: &mut Problems,
    name: &str,
    node: &Node,
    top: &TopLevel<'_>,
) -> Option<Draft> {
    let path = child("services", name);
    let service_name = match ServiceName::new(name) {
        Ok(n) => Some(n),
        Err(e) => {
            p.add(
                &path,
                Some(node),
                format!("{e} (the name is also the service's DNS name on the release network)"),
            );
            None
        }
    };
    let entries = read::map(p, &path, node)?;
    let mut c = Converter::new(p, path.clone(), top);
    for (key, value) in entries {
        c.key(key, value);
    }
    let (image, parts, sources) = c.finish(node);
    let (reference, image_path) = image?;
    Some(Draft {
        image: ImageUse { service: service_name?, path: image_path, reference },
        parts,
        sources,
    })
}

/// What one service has said so far; each Compose key fills in its part.
struct Converter<'p, 't> {
    p: &'p mut Problems,
    path: String,
    top: &'t TopLevel<'t>,
    image: Option<(String, String)>,
    entrypoint: Option<Vec<String>>,
    command: Vec<String>,
    env: BTreeMap<String, String>,
    working_dir: Option<String>,
    labels: BTreeMap<String, String>,
    volumes: Vec<(VolumeMount, String)>,
    ports: Vec<(PortMapping, String)>,
    network_mode: NetworkMode,
    network_mode_path: Option<String>,
    healthcheck: Option<Sourced<Healthcheck>>,
    restart: Option<RestartPolicy>,
    devices: Vec<Sourced<HardwareRequest>>,
    gpus: Vec<Sourced<HardwareRequest>>,
    security: SecurityOptions,
    depends_on: Vec<(Dependency, String)>,
    group_add: Vec<String>,
    // Resources, each possibly set in two places.
    cpus: [Option<Sourced<u32>>; 2],
    memory: [Option<Sourced<u64>>; 2],
    reservation: [Option<Sourced<u64>>; 2],
    pids: [Option<Sourced<Option<u32>>>; 2],
    swap: Option<Sourced<Option<u64>>>,
    cpuset: Option<Sourced<String>>,
    shm: Option<Sourced<u64>>,
    ulimits: Vec<Ulimit>,
    no_new_privileges: bool,
    cpu_shares: Option<u32>,
    networks: Vec<NetworkAttachment>,
    networks_path: Option<String>,
    secrets: Vec<(SecretMount, String)>,
    host_namespaces: Vec<Namespace>,
    options: ContainerOptions,
    /// Each option's spec field and the Compose path it was set at.
    option_sources: Vec<(&'static str, String)>,
    fleet: FleetKeys,
}

impl<'p, 't> Converter<'p, 't> {
    fn new(p: &'p mut Problems, path: String, top: &'t TopLevel<'t>) -> Self {
        Converter {
            p,
            path,
            top,
            image: None,
            entrypoint: None,
            command: vec![],
            env: BTreeMap::new(),
            working_dir: None,
            labels: BTreeMap::new(),
            volumes: vec![],
            ports: vec![],
            network_mode: NetworkMode::Release,
            network_mode_path: None,
            healthcheck: None,
            restart: None,
            devices: vec![],
            gpus: vec![],
            security: SecurityOptions::default(),
            depends_on: vec![],
            group_add: vec![],
            cpus: [None, None],
            memory: [None, None],
            reservation: [None, None],
            pids: [None, None],
            swap: None,
            cpuset: None,
            shm: None,
            ulimits: vec![],
            no_new_privileges: false,
            cpu_shares: None,
            networks: vec![],
            networks_path: None,
            secrets: vec![],
            host_namespaces: vec![],
            options: ContainerOptions::default(),
            option_sources: vec![],
            fleet: FleetKeys::default(),
        }
    }

    fn at(&self, key: &str) -> String {
        child(&self.path, key)
    }

    fn key(&mut self, key: &str, v: &Node) {
        let at = self.at(key);
        let p = &mut *self.p;
        match key {
            // Informational in Compose (Docker publishes nothing for it), and services on the
            // release network reach every port of each other anyway: checked, then dropped.
            "expose" => expose(p, &at, v),
            // Read when the file was parsed: it decided whether this service runs at all.
            "profiles" => {}
            "image" => {
                if let Some(s) = read::nonempty(p, &at, v) {
                    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
                        p.add(
                            &at,
                            Some(v),
                            format!("{s:?} is not an image reference (it holds whitespace)"),
                        );
                    } else {
                        self.image = Some((s, at));
                    }
                }
            }
            "command" => self.command = words(p, &at, v).unwrap_or_default(),
            "entrypoint" => self.entrypoint = words(p, &at, v),
            "environment" => self.env = environment(p, &at, v),
            "working_dir" => {
                self.working_dir = read::string(p, &at, v).filter(|d| {
                    let ok = d.starts_with('/');
                    if !ok {
                        p.add(&at, Some(v), format!("{d:?} is not an absolute path"));
                    }
                    ok
                })
            }
            "labels" => self.labels = labels(p, &at, v),
            "volumes" => self.volumes.extend(volumes(p, &at, v, self.top.volumes)),
            "tmpfs" => {
                for (item_at, text) in read::one_or_many(p, &at, v).unwrap_or_default() {
                    if let Some(m) = tmpfs(p, &item_at, v, &text) {
                        self.volumes.push((m, item_at));
                    }
                }
            }
            "ports" => self.ports = ports(p, &at, v),
            "secrets" => {
                let service = self.path.strip_prefix("services.").unwrap_or(&self.path);
                self.secrets = secrets(p, &at, v, self.top.secrets, service);
            }
            "networks" => {
                self.networks = networks(p, &at, v, self.top.networks);
                self.networks_path = Some(at);
            }
            "pid" | "ipc" | "uts" => {
                if let Some(ns) = host_namespace(p, &at, key, v) {
                    self.host_namespaces.push(ns);
                }
            }
            "network_mode" => {
                if let Some(mode) = network_mode(p, &at, v) {
                    self.network_mode = mode;
                    self.network_mode_path = Some(at);
                }
            }
            "healthcheck" => {
                self.healthcheck = healthcheck(p, &at, v).map(|h| Sourced::new(h, &at, v))
            }
            "restart" => self.restart = restart(p, &at, v),
            "cap_add" => self.security.cap_add = capabilities(p, &at, v),
            "cap_drop" => self.security.cap_drop = capabilities(p, &at, v),
            "privileged" => self.security.privileged = read::boolean(p, &at, v).unwrap_or(false),
            "read_only" => {
                self.security.read_only_rootfs = read::boolean(p, &at, v).unwrap_or(false)
            }
            "user" => self.security.user = read::nonempty(p, &at, v),
            "devices" => self.devices = devices(p, &at, v),
            "gpus" => {
                if v.as_str() == Some("all") {
                    self.gpus.push(Sourced::new(
                        HardwareRequest::Gpu { kind: GpuKind::Nvidia, select: GpuSelect::All },
                        &at,
                        v,
                    ));
                } else {
                    p.add(&at, Some(v), "only gpus: all is supported here; for a count or ids use deploy.resources.reservations.devices or x-fleet.hardware (gpu: { nvidia: { count: 1 } })");
                }
            }
            "group_add" => self.group_add = read::strings(p, &at, v).unwrap_or_default(),
            "depends_on" => {
                self.depends_on =
                    depends_on(p, &at, v, (self.top.services, self.top.inactive), &self.path);
            }
            "deploy" => self.deploy(&at, v),
            "cpus" => self.cpus[0] = read::cpus(p, &at, v).map(|c| Sourced::new(c, &at, v)),
            "cpuset" => self.cpuset = read::nonempty(p, &at, v).map(|c| Sourced::new(c, &at, v)),
            "mem_limit" => {
                self.memory[0] = read::byte_size(p, &at, v).map(|b| Sourced::new(b, &at, v))
            }
            "mem_reservation" => {
                self.reservation[0] = read::byte_size(p, &at, v).map(|b| Sourced::new(b, &at, v))
            }
            "memswap_limit" => {
                // -1: unlimited swap.
                self.swap = if matches!(v.value, Value::Int(-1)) || v.as_str() == Some("-1") {
                    Some(Sourced::new(None, &at, v))
                } else {
                    read::byte_size(p, &at, v).map(|b| Sourced::new(Some(b), &at, v))
                }
            }
            "pids_limit" => self.pids[0] = pids(p, &at, v),
            "shm_size" => self.shm = read::byte_size(p, &at, v).map(|b| Sourced::new(b, &at, v)),
            "ulimits" => self.ulimits = ulimits(p, &at, v),
            "security_opt" => self.no_new_privileges = security_opt(p, &at, v),
            // Docker's range: 2 to 262144 (0 means the default, 1024).
            "cpu_shares" => {
                self.cpu_shares = read::number::<u32>(p, &at, v, 2).filter(|s| {
                    let ok = *s <= 262_144;
                    if !ok {
                        p.add(
                            &at,
                            Some(v),
                            format!("{s} is above the kernel's maximum CPU weight 262144"),
                        );
                    }
                    ok
                })
            }
            "x-fleet" => self.fleet = fleet::fleet_keys(p, &at, v, false),
            k if k.starts_with("x-") => {}
            k if options::option(p, &at, k, v, &mut self.options, &mut self.option_sources) => {}
            k => match refusal(k) {
                Some(why) => p.add(&at, Some(v), why),
                None => p.add(
                    &at,
                    Some(v),
                    format!("{k:?} is not in Fleet's Compose subset (see fleet-server/COMPOSE.md)"),
                ),
            },
        }
    }

    fn deploy(&mut self, path: &str, node: &Node) {
        let p = &mut *self.p;
        let Some(entries) = read::map(p, path, node) else { return };
        for (key, v) in entries {
            let at = child(path, key);
            match key.as_str() {
                "resources" => {
                    let Some(sections) = read::map(p, &at, v) else { continue };
                    for (section, body) in sections {
                        let sat = child(&at, section);
                        let Some(fields) = read::map(p, &sat, body) else { continue };
                        for (field, fv) in fields {
                            let fat = child(&sat, field);
                            match (section.as_str(), field.as_str()) {
                                ("limits", "cpus") => self.cpus[1] = read::cpus(p, &fat, fv).map(|c| Sourced::new(c, &fat, fv)),
                                ("limits", "memory") => self.memory[1] = read::byte_size(p, &fat, fv).map(|b| Sourced::new(b, &fat, fv)),
                                ("limits", "pids") => self.pids[1] = pids(p, &fat, fv),
                                ("reservations", "memory") => self.reservation[1] = read::byte_size(p, &fat, fv).map(|b| Sourced::new(b, &fat, fv)),
                                ("reservations", "devices") => self.gpus.extend(reserved_devices(p, &fat, fv)),
                                ("reservations", "cpus") => p.add(&fat, Some(fv), "CPU reservations are not supported: limits.cpus caps CPU, cpuset pins it"),
                                ("reservations", "generic_resources") => p.add(&fat, Some(fv), "generic resources are a Swarm feature; request hardware under x-fleet.hardware"),
                                ("limits" | "reservations", other) => p.add(&fat, Some(fv), format!("{other:?} is not supported here; limits take cpus, memory and pids, reservations take memory and devices")),
                                (other, _) => p.add(&sat, Some(body), format!("unknown resources section {other:?}; use limits and reservations")),
                            }
                        }
                    }
                }
                "replicas" if read::integer(&mut Problems::default(), &at, v) == Some(1) => {}
                "mode" if v.as_str() == Some("replicated") => {}
                "replicas" | "mode" => p.add(&at, Some(v), "one container per service per device: replicas and modes do not apply (roll the release out to more devices instead)"),
                "update_config" | "rollback_config" => p.add(&at, Some(v), "Fleet's rollouts replace update_config: set the update strategy with x-fleet.update and the waves in the rollout"),
                "restart_policy" => p.add(&at, Some(v), "use the service's restart key (no, always, on-failure[:N], unless-stopped)"),
                "placement" => p.add(&at, Some(v), "placement is decided by the rollout's target (groups, labels, devices), not by the release"),
                "endpoint_mode" | "labels" => p.add(&at, Some(v), "a Swarm setting; it does not apply to devices"),
                other => p.add(&at, Some(v), format!("deploy.{other} is not supported; deploy takes resources only")),
            }
        }
    }

    /// Everything said; resolves contradictions and defaults.
    fn finish(mut self, node: &Node) -> (Option<(String, String)>, Parts, Sources) {
        let p = &mut *self.p;
        let path = self.path.clone();
        let mut sources = Sources { service: path.clone(), ..Sources::default() };
        let image = self.image.take();
        if image.is_none() {
            p.add(
                &path,
                Some(node),
                "no image: every service runs a prebuilt image (image: registry/name:tag)",
            );
        }
        let [c0, c1] = self.cpus;
        let cpus = agree(p, c0, c1);
        let [m0, m1] = self.memory;
        let memory = agree(p, m0, m1);
        let [r0, r1] = self.reservation;
        let reservation = agree(p, r0, r1);
        let [p0, p1] = self.pids;
        let pids = agree(p, p0, p1);
        let mut record = |field: &'static str, at: Option<&String>| {
            if let Some(at) = at {
                sources.fields.insert(field, at.clone());
            }
        };
        record("resources.cpu_millis", cpus.as_ref().map(|s| &s.path));
        record("resources.memory_reservation_bytes", reservation.as_ref().map(|s| &s.path));
        record("resources.memory_swap_bytes", self.swap.as_ref().map(|s| &s.path));
        record("resources.cpuset", self.cpuset.as_ref().map(|s| &s.path));
        for (field, at) in &self.option_sources {
            record(field, Some(at));
        }
        record(
            "resources.realtime_priority",
            self.fleet.realtime_priority.as_ref().map(|s| &s.path),
        );

        // x-fleet: the service's own keys win over the top-level defaults.
        let defaults = self.top.defaults;
        let update = self
            .fleet
            .update
            .as_ref()
            .or(defaults.update.as_ref())
            .map_or(UpdateStrategy::StartFirst, |u| u.value);
        let deadline = self.fleet.health_deadline.as_ref().or(defaults.health_deadline.as_ref());
        record("health_deadline", deadline.map(|d| &d.path));
        let health_deadline = deadline.map_or(Duration::from_secs(60), |d| d.value);

        let healthcheck = combine_health(p, self.healthcheck, self.fleet.health);

        // Hardware: devices, GPUs, then x-fleet's, each request once.
        let mut hardware = Vec::new();
        let mut seen: Vec<(HardwareRequest, String)> = Vec::new();
        for h in self
            .devices
            .into_iter()
            .chain(self.gpus)
            .chain(self.fleet.hardware)
            .chain(self.fleet.optional_hardware.iter().cloned())
        {
            if let Some((_, first)) = seen.iter().find(|(r, _)| *r == h.value) {
                p.add_line(
                    &h.path,
                    h.line,
                    format!("the same hardware is already requested at {first}"),
                );
                continue;
            }
            seen.push((h.value.clone(), h.path.clone()));
            hardware.push(h);
        }
        let optional: Vec<HardwareRequest> =
            self.fleet.optional_hardware.into_iter().map(|h| h.value).collect();
        let hardware: Vec<HardwareRequest> =
            hardware.into_iter().map(|h| h.value).filter(|h| !optional.contains(h)).collect();

        if let (NetworkMode::Host | NetworkMode::None, Some((_, first))) =
            (self.network_mode, self.ports.first())
        {
            let mode = if self.network_mode == NetworkMode::Host { "host" } else { "none" };
            let why = if mode == "host" {
                "network_mode host already exposes every port the service listens on: remove ports"
            } else {
                "network_mode none has no network to publish ports from: remove ports"
            };
            p.add(
                first,
                None,
                format!(
                    "{why} (network_mode {mode} is set at {})",
                    self.network_mode_path.clone().unwrap_or_default()
                ),
            );
        }
        if self.ports.len() > MAX_PORTS_PER_SERVICE {
            p.add(
                &child(&path, "ports"),
                None,
                format!(
                    "{} ports in all; at most {MAX_PORTS_PER_SERVICE} per service",
                    self.ports.len()
                ),
            );
        }

        if let (Some(at), Some(mode_at)) = (&self.networks_path, &self.network_mode_path) {
            if self.network_mode != NetworkMode::Release && !self.networks.is_empty() {
                p.add(at, None, format!("networks and network_mode {} exclude each other (set at {mode_at}): a host or none network has no release networks; remove one", if self.network_mode == NetworkMode::Host { "host" } else { "none" }));
            }
        }
        sources.ports = self.ports.iter().map(|(_, s)| s.clone()).collect();
        sources.volumes = self.volumes.iter().map(|(_, s)| s.clone()).collect();
        sources.depends_on = self.depends_on.iter().map(|(_, s)| s.clone()).collect();
        sources.secrets = self.secrets.iter().map(|(_, s)| s.clone()).collect();
        let mut targets: BTreeMap<&str, &str> = BTreeMap::new();
        for (m, at) in &self.volumes {
            if let Some(first) = targets.insert(&m.target, at) {
                p.add(at, None, format!("{} is already mounted by {first}", m.target));
            }
        }
        let parts = Parts {
            entrypoint: self.entrypoint,
            command: self.command,
            env: self.env,
            working_dir: self.working_dir,
            labels: self.labels,
            volumes: self.volumes.into_iter().map(|(m, _)| m).collect(),
            ports: self.ports.into_iter().map(|(m, _)| m).collect(),
            network_mode: self.network_mode,
            healthcheck,
            // Absent: always. Compose's default is "no", but a device runs unattended.
            restart: self.restart.unwrap_or(RestartPolicy::Always),
            update,
            health_deadline,
            hardware,
            resources: ResourceLimits {
                memory_bytes: memory.map(|m| m.value),
                memory_reservation_bytes: reservation.map(|r| r.value),
                memory_swap_bytes: self.swap.and_then(|s| s.value),
                cpu_millis: cpus.map(|c| c.value),
                cpuset: self.cpuset.map(|c| c.value),
                pids: pids.and_then(|p| p.value),
                ulimits: self.ulimits,
                realtime_priority: self.fleet.realtime_priority.map(|r| r.value),
                shm_bytes: self.shm.map(|s| s.value),
            },
            security: self.security,
            depends_on: self.depends_on.into_iter().map(|(d, _)| d).collect(),
            group_add: self.group_add,
            optional_hardware: optional,
            telemetry: self.fleet.telemetry,
            no_new_privileges: self.no_new_privileges,
            cpu_shares: self.cpu_shares,
            networks: self.networks,
            secrets: self.secrets.into_iter().map(|(m, _)| m).collect(),
            host_namespaces: self.host_namespaces,
            options: self.options,
        };
        (image, parts, sources)
    }
}
