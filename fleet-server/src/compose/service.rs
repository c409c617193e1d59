//! One Compose service → the parts of a [`ServiceSpec`](fleet_proto::ServiceSpec).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use fleet_proto::release::{
    Dependency, DependencyCondition, GpuKind, GpuSelect, HardwareRequest, HealthCheck,
    NetworkAttachment, NetworkMode, PortMapping, Probe, Protocol, ResourceLimits, RestartPolicy,
    SecretMount, SecurityOptions, Ulimit, UpdateStrategy, VolumeMount, VolumeSource,
};
use fleet_proto::ServiceName;

use super::fleet::{self, FleetKeys};
use super::read::{self, agree, child, item, Problems, Sourced};
use super::units;
use super::yaml::{Node, Value};
use super::{Draft, ImageUse, Parts, Sources};

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
    /// Every service name in the file, for depends_on.
    pub(crate) services: &'a BTreeSet<&'a str>,
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
        "expose" => "expose is informational in Compose, and services on the release network reach every port of each other anyway; remove it",
        "extends" => "extends is not supported: share blocks with YAML anchors instead (x-common: &common, then <<: *common in the service)",
        "platform" => "the agent pulls the image variant for the device's own architecture from the multi-arch index; remove platform",
        "pull_policy" => "devices always run the image by the digest the server resolved; remove pull_policy",
        "profiles" => "every service of a release runs; put optional services into another release",
        "scale" => "one container per service per device; remove scale",
        "stop_grace_period" => "not supported yet: the agent stops containers with its configured grace period (10 s by default)",
        "stop_signal" => "not supported yet: containers are stopped with SIGTERM, then SIGKILL after the grace period",
        "hostname" | "domainname" | "dns" | "dns_search" | "dns_opt" | "extra_hosts" | "mac_address" => "not supported yet: name resolution comes from the release network (service names) and the device",
        "sysctls" | "ipc" | "pid" | "uts" | "userns_mode" | "cgroup" | "cgroup_parent" | "init" | "isolation" | "runtime" | "storage_opt" | "device_cgroup_rules" => "not supported yet by the agent",
        "cpu_quota" | "cpu_period" | "cpu_count" | "cpu_percent" | "cpu_rt_runtime" | "cpu_rt_period" | "mem_swappiness" | "oom_kill_disable" | "oom_score_adj" | "blkio_config" => "not supported yet: use cpus, cpu_shares, cpuset, mem_limit, mem_reservation, memswap_limit and pids_limit",
        "stdin_open" | "tty" | "attach" => "services on a device run unattended: there is no terminal to attach",
        "annotations" | "develop" | "credential_spec" | "volumes_from" | "provider" | "use_api_socket" | "post_start" | "pre_stop" | "label_file" | "models" => "not supported",
        _ => return None,
    })
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
    fleet: FleetKeys,
}

/// The `healthcheck` section before it meets `x-fleet.health`.
#[derive(Debug, Clone, PartialEq)]
struct Healthcheck {
    /// `None`: no test given (only timings, or nothing).
    probe: Option<Probe>,
    interval: Option<Duration>,
    timeout: Option<Duration>,
    retries: Option<u32>,
    start_period: Option<Duration>,
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
            "depends_on" => self.depends_on = depends_on(p, &at, v, self.top.services, &self.path),
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
        };
        (image, parts, sources)
    }
}

/// `healthcheck` and `x-fleet.health` together: one probe, timings from `healthcheck`.
fn combine_health(
    p: &mut Problems,
    hc: Option<Sourced<Healthcheck>>,
    agent: Option<Sourced<Probe>>,
) -> Option<HealthCheck> {
    // Docker's defaults.
    let build = |probe: Probe, h: Option<&Healthcheck>| HealthCheck {
        probe,
        interval: h.and_then(|h| h.interval).unwrap_or(Duration::from_secs(30)),
        timeout: h.and_then(|h| h.timeout).unwrap_or(Duration::from_secs(30)),
        retries: h.and_then(|h| h.retries).unwrap_or(3),
        start_period: h.and_then(|h| h.start_period).unwrap_or(Duration::ZERO),
    };
    match (hc, agent) {
        (None, None) => None,
        (None, Some(a)) => Some(build(a.value, None)),
        (Some(h), Some(a)) => {
            if h.value.probe.is_some() {
                p.add(&a.path, None, format!("a service has one health check: {} already sets a test; remove one of them", h.path));
                return None;
            }
            Some(build(a.value, Some(&h.value)))
        }
        (Some(h), None) => match &h.value.probe {
            Some(probe) => Some(build(probe.clone(), Some(&h.value))),
            None => {
                let timed = h.value.interval.is_some()
                    || h.value.timeout.is_some()
                    || h.value.retries.is_some()
                    || h.value.start_period.is_some();
                if timed {
                    p.add_line(&h.path, h.line, "timings without a test: the agent keeps the image's HEALTHCHECK exactly as built, timings included; repeat the test here (test: [\"CMD\", ...]) to change them");
                }
                None
            }
        },
    }
}

/// `command` / `entrypoint`: a list, or a string split like a shell would.
fn words(p: &mut Problems, path: &str, node: &Node) -> Option<Vec<String>> {
    match &node.value {
        Value::Seq(_) => read::strings(p, path, node),
        Value::Null => None,
        _ => {
            let text = read::string(p, path, node)?;
            units::split_words(&text).map_err(|e| p.add(path, Some(node), e)).ok()
        }
    }
}

fn environment(p: &mut Problems, path: &str, node: &Node) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    let no_value = |name: &str| {
        format!("{name} has no value: the device has no shell environment to take it from; give it a value ({name}: value, or ${{VAR:-default}})")
    };
    let mut put = |p: &mut Problems, at: &str, n: &Node, name: &str, value: String| {
        if name.is_empty() || name.contains('=') || name.contains(char::is_whitespace) {
            p.add(at, Some(n), format!("{name:?} is not a variable name"));
        } else if env.insert(name.to_owned(), value).is_some() {
            p.add(at, Some(n), format!("{name} is set twice"));
        }
    };
    match &node.value {
        Value::Map(entries) => {
            for (name, value) in entries {
                let at = child(path, name);
                match value.scalar_text() {
                    Some(v) => put(p, &at, value, name, v),
                    None if value.is_null() => p.add(&at, Some(value), no_value(name)),
                    None => p.add(
                        &at,
                        Some(value),
                        format!("expected a string, found {}", value.kind()),
                    ),
                }
            }
        }
        Value::Seq(items) => {
            for (i, it) in items.iter().enumerate() {
                let at = item(path, i);
                let Some(text) = read::string(p, &at, it) else { continue };
                match text.split_once('=') {
                    Some((name, value)) => put(p, &at, it, name, value.to_owned()),
                    None => p.add(&at, Some(it), no_value(&text)),
                }
            }
        }
        Value::Null => {}
        _ => p.add(
            path,
            Some(node),
            format!("expected a mapping (KEY: value) or a list (KEY=value), found {}", node.kind()),
        ),
    }
    env
}

fn labels(p: &mut Problems, path: &str, node: &Node) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut put = |p: &mut Problems, at: &str, n: &Node, key: &str, value: String| {
        if key.starts_with("io.fleet.") || key == "io.fleet" {
            p.add(at, Some(n), format!("label {key:?}: io.fleet.* labels belong to the agent, which sets them on every container"));
        } else if key.is_empty() {
            p.add(at, Some(n), "a label needs a name");
        } else if out.insert(key.to_owned(), value).is_some() {
            p.add(at, Some(n), format!("label {key} is set twice"));
        }
    };
    match &node.value {
        Value::Map(entries) => {
            for (key, value) in entries {
                let at = child(path, key);
                match value.scalar_text() {
                    Some(v) => put(p, &at, value, key, v),
                    None if value.is_null() => put(p, &at, value, key, String::new()),
                    None => p.add(
                        &at,
                        Some(value),
                        format!("expected a string, found {}", value.kind()),
                    ),
                }
            }
        }
        Value::Seq(items) => {
            for (i, it) in items.iter().enumerate() {
                let at = item(path, i);
                let Some(text) = read::string(p, &at, it) else { continue };
                let (key, value) = text.split_once('=').unwrap_or((&text, ""));
                put(p, &at, it, key, value.to_owned());
            }
        }
        Value::Null => {}
        _ => p.add(
            path,
            Some(node),
            format!("expected a mapping or a list of key=value, found {}", node.kind()),
        ),
    }
    out
}

pub(crate) fn is_volume_name(name: &str) -> bool {
    name.len() <= 255
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn absolute(p: &mut Problems, path: &str, node: &Node, what: &str, s: &str) -> bool {
    let ok = s.starts_with('/');
    if !ok {
        p.add(path, Some(node), format!("{what} {s:?} is not an absolute path"));
    }
    ok
}

/// A named volume, which Compose requires to be declared at the top level.
fn named(
    p: &mut Problems,
    path: &str,
    node: &Node,
    declared: &BTreeMap<String, Option<String>>,
    name: &str,
) -> Option<VolumeSource> {
    // The declared key: into_release turns it into the name on the device.
    match declared.get(name) {
        Some(_) => Some(VolumeSource::Named(name.to_owned())),
        None => {
            p.add(path, Some(node), format!("volume {name:?} is not declared; add it under the top-level volumes: ({name}: {{}})"));
            None
        }
    }
}

fn host_path(p: &mut Problems, path: &str, node: &Node, source: &str) -> Option<VolumeSource> {
    if source.starts_with('/') {
        Some(VolumeSource::HostPath(source.to_owned()))
    } else {
        p.add(path, Some(node), format!("host path {source:?} is relative: it would name a directory on your machine, which does not exist on the device; use an absolute path on the device or a named volume"));
        None
    }
}

fn volumes(
    p: &mut Problems,
    path: &str,
    node: &Node,
    declared: &BTreeMap<String, Option<String>>,
) -> Vec<(VolumeMount, String)> {
    let Some(items) = node.as_seq() else {
        p.add(path, Some(node), format!("expected a list of mounts, found {}", node.kind()));
        return vec![];
    };
    let mut out = Vec::new();
    for (i, it) in items.iter().enumerate() {
        let at = item(path, i);
        let mount = if it.as_map().is_some() {
            long_volume(p, &at, it, declared)
        } else {
            short_volume(p, &at, it, declared)
        };
        if let Some(m) = mount {
            out.push((m, at));
        }
    }
    out
}

/// `name:/path[:ro]`, `/host:/path[:ro|rw]`.
fn short_volume(
    p: &mut Problems,
    path: &str,
    node: &Node,
    declared: &BTreeMap<String, Option<String>>,
) -> Option<VolumeMount> {
    let text = read::nonempty(p, path, node)?;
    let parts: Vec<&str> = text.split(':').collect();
    let (source, target, mode) = match parts.as_slice() {
        [target] => {
            p.add(path, Some(node), format!("anonymous volume {target:?}: its data would be lost at the next update; name it (data:{target}, declared under the top-level volumes) or use tmpfs for scratch space"));
            return None;
        }
        [source, target] => (*source, *target, ""),
        [source, target, mode] => (*source, *target, *mode),
        _ => {
            p.add(path, Some(node), format!("{text:?} is not SOURCE:TARGET[:MODE]"));
            return None;
        }
    };
    let mut read_only = false;
    for opt in mode.split(',').filter(|o| !o.is_empty()) {
        match opt {
            "ro" => read_only = true,
            "rw" => read_only = false,
            // Docker Desktop file-sharing hints: no effect on Linux.
            "cached" | "delegated" | "consistent" => {}
            other => p.add(
                path,
                Some(node),
                format!("mount option {other:?} is not supported; use ro or rw"),
            ),
        }
    }
    if !absolute(p, path, node, "target", target) {
        return None;
    }
    let source = if source.starts_with(['.', '~']) || source.contains('/') {
        host_path(p, path, node, source)?
    } else {
        named(p, path, node, declared, source)?
    };
    Some(VolumeMount { source, target: target.to_owned(), read_only })
}

fn long_volume(
    p: &mut Problems,
    path: &str,
    node: &Node,
    declared: &BTreeMap<String, Option<String>>,
) -> Option<VolumeMount> {
    let entries = node.as_map()?;
    let (mut kind, mut source, mut target, mut read_only, mut size) =
        (None, None, None, false, 0u64);
    for (key, v) in entries {
        let at = child(path, key);
        match key.as_str() {
            "type" => kind = read::string(p, &at, v).map(|k| (k, at.clone())),
            "source" => source = read::nonempty(p, &at, v),
            "target" => target = read::nonempty(p, &at, v).filter(|t| absolute(p, &at, v, "target", t)),
            "read_only" => read_only = read::boolean(p, &at, v).unwrap_or(false),
            "tmpfs" => {
                let Some(fields) = read::map(p, &at, v) else { continue };
                for (f, fv) in fields {
                    let fat = child(&at, f);
                    match f.as_str() {
                        "size" => size = read::byte_size(p, &fat, fv).unwrap_or(0),
                        other => p.add(&fat, Some(fv), format!("tmpfs.{other} is not supported yet; tmpfs takes size")),
                    }
                }
            }
            "bind" => {
                let Some(fields) = read::map(p, &at, v) else { continue };
                for (f, fv) in fields {
                    let fat = child(&at, f);
                    match (f.as_str(), read::boolean(&mut Problems::default(), &fat, fv)) {
                        ("create_host_path", Some(false)) => {}
                        ("create_host_path", _) => p.add(&fat, Some(fv), "the agent does not create host paths: the path must already exist on the device; set create_host_path: false"),
                        (other, _) => p.add(&fat, Some(fv), format!("bind.{other} is not supported")),
                    }
                }
            }
            "volume" => p.add(&at, Some(v), "volume options (nocopy, subpath) are not supported yet"),
            "consistency" => {}
            other => p.add(&at, Some(v), format!("unknown mount key {other:?}; use type, source, target, read_only and tmpfs.size")),
        }
    }
    let Some((kind, kind_at)) = kind else {
        p.add(path, Some(node), "a long-form mount needs type: volume, bind or tmpfs");
        return None;
    };
    let Some(target) = target else {
        if !entries.iter().any(|(k, _)| k == "target") {
            p.add(path, Some(node), "a mount needs a target path in the container");
        }
        return None;
    };
    let source = match (kind.as_str(), source) {
        ("tmpfs", None) => VolumeSource::Tmpfs { size_bytes: size },
        ("tmpfs", Some(_)) => {
            p.add(&child(path, "source"), Some(node), "a tmpfs has no source");
            return None;
        }
        ("volume", Some(s)) => named(p, path, node, declared, &s)?,
        ("bind", Some(s)) => host_path(p, path, node, &s)?,
        ("volume", None) => {
            p.add(path, Some(node), "anonymous volume: its data would be lost at the next update; give a source naming a declared volume");
            return None;
        }
        ("bind", None) => {
            p.add(path, Some(node), "a bind mount needs the host path as source");
            return None;
        }
        (other, _) => {
            p.add(
                &kind_at,
                Some(node),
                format!("mount type {other:?} is not supported; use volume, bind or tmpfs"),
            );
            return None;
        }
    };
    if size != 0 && kind != "tmpfs" {
        p.add(&child(path, "tmpfs"), Some(node), "tmpfs options apply to type: tmpfs only");
    }
    Some(VolumeMount { source, target, read_only })
}

/// `/run` or `/run:size=64m,rw`.
fn tmpfs(p: &mut Problems, path: &str, node: &Node, text: &str) -> Option<VolumeMount> {
    let (target, options) = text.split_once(':').unwrap_or((text, ""));
    if !absolute(p, path, node, "tmpfs", target) {
        return None;
    }
    let mut size_bytes = 0;
    let mut read_only = false;
    for opt in options.split(',').filter(|o| !o.is_empty()) {
        if let Some(size) = opt.strip_prefix("size=") {
            match units::byte_size(size) {
                Ok(s) => size_bytes = s,
                Err(e) => p.add(path, Some(node), e),
            }
        } else if opt == "ro" {
            read_only = true;
        } else if opt != "rw" {
            p.add(
                path,
                Some(node),
                format!("tmpfs option {opt:?} is not supported yet; tmpfs takes size= (and ro/rw)"),
            );
        }
    }
    Some(VolumeMount {
        source: VolumeSource::Tmpfs { size_bytes },
        target: target.to_owned(),
        read_only,
    })
}

/// A port or a `low-high` range.
fn port_range(text: &str) -> Option<(u16, u16)> {
    let (a, b) = text.split_once('-').unwrap_or((text, text));
    let (a, b): (u16, u16) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (a >= 1 && a <= b).then_some((a, b))
}

fn host_ip(p: &mut Problems, path: &str, node: &Node, ip: &str) -> Option<bool> {
    match ip.trim_start_matches('[').trim_end_matches(']') {
        "" | "0.0.0.0" => Some(false),
        "127.0.0.1" => Some(true),
        other => {
            p.add(path, Some(node), format!("host address {other:?} is not supported: publish on every interface (no address) or on loopback (127.0.0.1); device addresses differ from device to device"));
            None
        }
    }
}

fn protocol(p: &mut Problems, path: &str, node: &Node, proto: &str) -> Option<Protocol> {
    match proto.to_ascii_lowercase().as_str() {
        "" | "tcp" => Some(Protocol::Tcp),
        "udp" => Some(Protocol::Udp),
        other => {
            p.add(path, Some(node), format!("protocol {other:?} is not supported; use tcp or udp"));
            None
        }
    }
}

/// Expands `host` and `container` ranges of equal length into mappings.
fn expand(
    p: &mut Problems,
    path: &str,
    node: &Node,
    (host, container): ((u16, u16), (u16, u16)),
    (protocol, loopback_only): (Protocol, bool),
    total: usize,
) -> Vec<PortMapping> {
    let (hn, cn) = (usize::from(host.1 - host.0) + 1, usize::from(container.1 - container.0) + 1);
    if hn != cn {
        let why = if cn == 1 {
            "a host port range for one container port picks a free port when the container starts; give one host port".to_owned()
        } else {
            format!("the host range has {hn} ports and the container range {cn}; they must match")
        };
        p.add(path, Some(node), why);
        return vec![];
    }
    if total + hn > MAX_PORTS_PER_SERVICE {
        p.add(
            path,
            Some(node),
            format!("{hn} ports would make more than {MAX_PORTS_PER_SERVICE} for this service"),
        );
        return vec![];
    }
    (0..hn)
        .map(|i| {
            // Below 65536: both ranges were parsed as u16 and have the same length.
            let off = i as u16;
            PortMapping {
                host_port: host.0 + off,
                container_port: container.0 + off,
                protocol,
                loopback_only,
            }
        })
        .collect()
}

fn ports(p: &mut Problems, path: &str, node: &Node) -> Vec<(PortMapping, String)> {
    let Some(items) = node.as_seq() else {
        p.add(path, Some(node), format!("expected a list of ports, found {}", node.kind()));
        return vec![];
    };
    let mut out: Vec<(PortMapping, String)> = Vec::new();
    for (i, it) in items.iter().enumerate() {
        let at = item(path, i);
        let mapped = if it.as_map().is_some() {
            long_port(p, &at, it, out.len())
        } else {
            short_port(p, &at, it, out.len())
        };
        out.extend(mapped.into_iter().map(|m| (m, at.clone())));
    }
    out
}

/// `[HOST_IP:]HOST:CONTAINER[/PROTOCOL]`, ports or ranges.
fn short_port(p: &mut Problems, path: &str, node: &Node, total: usize) -> Vec<PortMapping> {
    let Some(text) = read::nonempty(p, path, node) else { return vec![] };
    let (spec, proto) = text.rsplit_once('/').unwrap_or((&text, ""));
    let Some(protocol) = protocol(p, path, node, proto) else { return vec![] };
    // An IPv6 address is bracketed: [::1]:8080:80.
    let (ip, rest) = match spec.strip_prefix('[').and_then(|s| s.split_once("]:")) {
        Some((ip, rest)) => (Some(ip), rest),
        None => (None, spec),
    };
    let parts: Vec<&str> = rest.split(':').collect();
    let (ip, host, container) = match (ip, parts.as_slice()) {
        (_, [container]) => {
            p.add(path, Some(node), format!("{text:?} publishes container port {container} on a random host port, which differs per device; give a host port, e.g. \"{container}:{container}\""));
            return vec![];
        }
        (None, [host, container]) => ("", *host, *container),
        (None, [ip, host, container]) => (*ip, *host, *container),
        (Some(ip), [host, container]) => (ip, *host, *container),
        _ => {
            p.add(path, Some(node), format!("{text:?} is not [HOST_IP:]HOST:CONTAINER[/PROTOCOL]"));
            return vec![];
        }
    };
    let Some(loopback_only) = host_ip(p, path, node, ip) else { return vec![] };
    if host.is_empty() {
        p.add(path, Some(node), format!("{text:?} has no host port: it would get a random one, which differs per device; give a host port"));
        return vec![];
    }
    match (port_range(host), port_range(container)) {
        (Some(h), Some(c)) => expand(p, path, node, (h, c), (protocol, loopback_only), total),
        _ => {
            p.add(
                path,
                Some(node),
                format!("{text:?}: ports are numbers from 1 to 65535 (or ranges low-high)"),
            );
            vec![]
        }
    }
}

fn long_port(p: &mut Problems, path: &str, node: &Node, total: usize) -> Vec<PortMapping> {
    let Some(entries) = node.as_map() else { return vec![] };
    let (mut target, mut published, mut proto, mut loopback_only) =
        (None, None, Protocol::Tcp, Some(false));
    for (key, v) in entries {
        let at = child(path, key);
        match key.as_str() {
            "target" => target = read::number::<u16>(p, &at, v, 1),
            "published" => {
                published = read::string(p, &at, v).and_then(|s| {
                    port_range(&s).or_else(|| {
                        p.add(&at, Some(v), format!("{s:?} is not a port or a range low-high"));
                        None
                    })
                })
            }
            "protocol" => {
                proto = read::string(p, &at, v)
                    .and_then(|s| protocol(p, &at, v, &s))
                    .unwrap_or(Protocol::Tcp)
            }
            "host_ip" => {
                loopback_only = read::string(p, &at, v).and_then(|s| host_ip(p, &at, v, &s))
            }
            // Informational in Compose outside Swarm.
            "mode" | "name" | "app_protocol" => {}
            other => p.add(
                &at,
                Some(v),
                format!("unknown port key {other:?}; use target, published, protocol and host_ip"),
            ),
        }
    }
    let Some(loopback_only) = loopback_only else { return vec![] };
    match (target, published) {
        (Some(t), Some(h)) => expand(p, path, node, (h, (t, t)), (proto, loopback_only), total),
        (Some(t), None) if !entries.iter().any(|(k, _)| k == "published") => {
            p.add(path, Some(node), format!("no published port: container port {t} would get a random host port, which differs per device; add published: {t}"));
            vec![]
        }
        (None, _) if !entries.iter().any(|(k, _)| k == "target") => {
            p.add(path, Some(node), "a port needs target (the container port)");
            vec![]
        }
        _ => vec![],
    }
}

fn network_mode(p: &mut Problems, path: &str, node: &Node) -> Option<NetworkMode> {
    let mode = read::string(p, path, node)?;
    match mode.as_str() {
        "host" => Some(NetworkMode::Host),
        "none" => Some(NetworkMode::None),
        "bridge" | "default" => Some(NetworkMode::Release),
        m if m.starts_with("service:") || m.starts_with("container:") => {
            p.add(path, Some(node), "sharing another container's network namespace is not supported yet; use the release network (services reach each other by name) or host");
            None
        }
        other => {
            p.add(path, Some(node), format!("network_mode {other:?} is not supported; use host, none or bridge (the release network, the default)"));
            None
        }
    }
}

fn healthcheck(p: &mut Problems, path: &str, node: &Node) -> Option<Healthcheck> {
    let entries = read::map(p, path, node)?;
    let mut h = Healthcheck {
        probe: None,
        interval: None,
        timeout: None,
        retries: None,
        start_period: None,
    };
    let mut disabled = None;
    for (key, v) in entries {
        let at = child(path, key);
        match key.as_str() {
            "test" => h.probe = test(p, &at, v),
            "interval" => h.interval = read::duration(p, &at, v),
            "timeout" => h.timeout = read::duration(p, &at, v),
            "retries" => h.retries = read::number::<u32>(p, &at, v, 0),
            "start_period" => h.start_period = read::duration(p, &at, v),
            "disable" => disabled = read::boolean(p, &at, v).map(|d| (d, at.clone())),
            "start_interval" => p.add(&at, Some(v), "start_interval is not supported yet; checks run every interval from the start"),
            other => p.add(&at, Some(v), format!("unknown healthcheck key {other:?}; use test, interval, timeout, retries, start_period or disable")),
        }
    }
    if let Some((true, at)) = disabled {
        if h.probe.as_ref().is_some_and(|t| *t != Probe::Disabled) {
            p.add(&at, None, "disable: true contradicts the test given here; remove one");
            return None;
        }
        h.probe = Some(Probe::Disabled);
    }
    Some(h)
}

/// `["CMD", ...]`, `["CMD-SHELL", "..."]`, `["NONE"]`, or a string (CMD-SHELL).
fn test(p: &mut Problems, path: &str, node: &Node) -> Option<Probe> {
    if node.as_seq().is_none() {
        let line = read::nonempty(p, path, node)?;
        return Some(Probe::CmdShell(line));
    }
    let words = read::strings(p, path, node)?;
    match words.split_first() {
        Some((first, rest)) if first == "CMD" && !rest.is_empty() => {
            Some(Probe::Cmd(rest.to_vec()))
        }
        Some((first, [line])) if first == "CMD-SHELL" => Some(Probe::CmdShell(line.clone())),
        Some((first, [])) if first == "NONE" => Some(Probe::Disabled),
        Some((first, _)) if first == "CMD" => {
            p.add(path, Some(node), "[\"CMD\"] needs the command to run after it");
            None
        }
        Some((first, _)) if first == "CMD-SHELL" => {
            p.add(path, Some(node), "[\"CMD-SHELL\", \"...\"] takes exactly one command line");
            None
        }
        Some((first, _)) if first == "NONE" => {
            p.add(path, Some(node), "[\"NONE\"] takes nothing after it");
            None
        }
        _ => {
            p.add(path, Some(node), "a test list starts with CMD, CMD-SHELL or NONE, e.g. [\"CMD\", \"curl\", \"-f\", \"http://localhost/\"]");
            None
        }
    }
}

fn restart(p: &mut Problems, path: &str, node: &Node) -> Option<RestartPolicy> {
    let text = match &node.value {
        // An unquoted `no` is a string in YAML 1.2; `false` is what older YAML made of it.
        Value::Bool(false) => "no".to_owned(),
        _ => read::string(p, path, node)?,
    };
    match text.as_str() {
        "no" => Some(RestartPolicy::No),
        "always" => Some(RestartPolicy::Always),
        "unless-stopped" => Some(RestartPolicy::UnlessStopped),
        "on-failure" => Some(RestartPolicy::OnFailure { max_retries: 0 }),
        t => match t.strip_prefix("on-failure:").map(|n| n.parse::<u32>()) {
            Some(Ok(max_retries)) => Some(RestartPolicy::OnFailure { max_retries }),
            _ => {
                p.add(path, Some(node), format!("{t:?} is not a restart policy; use no, always, on-failure[:N] or unless-stopped"));
                None
            }
        },
    }
}

fn capabilities(p: &mut Problems, path: &str, node: &Node) -> Vec<String> {
    let caps = read::strings(p, path, node).unwrap_or_default();
    caps.into_iter()
        .enumerate()
        .filter(|(i, c)| {
            let ok = !c.is_empty()
                && c.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
            if !ok {
                p.add(
                    &item(path, *i),
                    None,
                    format!("{c:?} is not a capability name like SYS_NICE or NET_ADMIN"),
                );
            }
            ok
        })
        .map(|(_, c)| c)
        .collect()
}

/// `security_opt`: only `no-new-privileges[:true|false]` (and `=`) is a decision a release may
/// make; seccomp, AppArmor and SELinux profiles belong to the device's configuration.
fn security_opt(p: &mut Problems, path: &str, node: &Node) -> bool {
    let mut no_new_privileges = false;
    for (i, opt) in read::strings(p, path, node).unwrap_or_default().iter().enumerate() {
        match opt.split_once([':', '=']) {
            None if opt == "no-new-privileges" => no_new_privileges = true,
            Some(("no-new-privileges", "true")) => no_new_privileges = true,
            Some(("no-new-privileges", "false")) => no_new_privileges = false,
            _ => p.add(
                &item(path, i),
                None,
                format!("{opt:?} is not supported: security_opt takes only no-new-privileges[:true|false]; seccomp, apparmor and label profiles are set on the device"),
            ),
        }
    }
    no_new_privileges
}

/// `/dev/x[:/dev/y[:rwm]]` → a device request by host path.
fn devices(p: &mut Problems, path: &str, node: &Node) -> Vec<Sourced<HardwareRequest>> {
    let Some(items) = read::strings(p, path, node) else { return vec![] };
    let seq = node.as_seq().unwrap_or_default();
    let mut out = Vec::new();
    for (i, text) in items.iter().enumerate() {
        let at = item(path, i);
        let it = &seq[i];
        let parts: Vec<&str> = text.split(':').collect();
        let (host, container, perms) = match parts.as_slice() {
            [h] => (*h, "", ""),
            [h, c] if c.starts_with('/') => (*h, *c, ""),
            [h, perms] => (*h, "", *perms),
            [h, c, perms] => (*h, *c, *perms),
            _ => ("", "", ""),
        };
        if !host.starts_with('/') {
            let why = if text.contains('=') {
                "CDI device names are not supported; give the device node's host path (/dev/...)"
                    .to_owned()
            } else {
                format!(
                    "{text:?} is not HOST_PATH[:CONTAINER_PATH[:PERMISSIONS]] with absolute paths"
                )
            };
            p.add(&at, Some(it), why);
            continue;
        }
        if !container.is_empty() && !container.starts_with('/')
            || !perms.chars().all(|c| matches!(c, 'r' | 'w' | 'm'))
        {
            p.add(&at, Some(it), format!("{text:?} is not HOST_PATH[:CONTAINER_PATH[:PERMISSIONS]] (permissions of r, w and m)"));
            continue;
        }
        out.push(Sourced::new(
            HardwareRequest::Device {
                host_path: host.to_owned(),
                container_path: container.to_owned(),
                permissions: perms.to_owned(),
            },
            &at,
            it,
        ));
    }
    out
}

/// `deploy.resources.reservations.devices`: NVIDIA GPUs only.
fn reserved_devices(p: &mut Problems, path: &str, node: &Node) -> Vec<Sourced<HardwareRequest>> {
    let Some(items) = node.as_seq() else {
        p.add(
            path,
            Some(node),
            format!("expected a list of device reservations, found {}", node.kind()),
        );
        return vec![];
    };
    let mut out = Vec::new();
    for (i, it) in items.iter().enumerate() {
        let at = item(path, i);
        let Some(fields) = read::map(p, &at, it) else { continue };
        let (mut gpu, mut select, mut ok) = (false, None::<(GpuSelect, String)>, true);
        for (key, v) in fields {
            let fat = child(&at, key);
            match key.as_str() {
                "capabilities" => {
                    let caps = read::strings(p, &fat, v).unwrap_or_default();
                    gpu = caps.iter().any(|c| c == "gpu");
                    if !gpu {
                        p.add(&fat, Some(v), "only GPU reservations (capabilities: [gpu]) are supported; request other hardware under x-fleet.hardware");
                        ok = false;
                    }
                }
                "driver" => {
                    if read::string(p, &fat, v).is_some_and(|d| d != "nvidia") {
                        p.add(&fat, Some(v), "only the nvidia driver is supported here; for Jetson or DRI GPUs use x-fleet.hardware (gpu: jetson / gpu: dri)");
                        ok = false;
                    }
                }
                "count" | "device_ids" => {
                    if let Some((_, first)) = &select {
                        p.add(
                            &fat,
                            Some(v),
                            format!("count and device_ids exclude each other ({first} is set)"),
                        );
                        ok = false;
                        continue;
                    }
                    let s = if key == "count" {
                        fleet::count(p, &fat, v)
                    } else {
                        read::strings(p, &fat, v).map(GpuSelect::Ids)
                    };
                    match s {
                        Some(s) => select = Some((s, fat)),
                        None => ok = false,
                    }
                }
                "options" => {
                    p.add(&fat, Some(v), "driver options are not supported");
                    ok = false;
                }
                other => {
                    p.add(
                        &fat,
                        Some(v),
                        format!(
                            "unknown key {other:?}; use capabilities, driver, count and device_ids"
                        ),
                    );
                    ok = false;
                }
            }
        }
        if !gpu && ok {
            p.add(&at, Some(it), "a device reservation needs capabilities: [gpu]");
            ok = false;
        }
        if ok {
            // No count and no ids: every GPU, as Docker does.
            let select = select.map_or(GpuSelect::All, |(s, _)| s);
            out.push(Sourced::new(HardwareRequest::Gpu { kind: GpuKind::Nvidia, select }, &at, it));
        }
    }
    out
}

/// A service's `secrets`: `- NAME` (the file /run/secrets/NAME) or `- {source, target, uid,
/// gid, mode}`, each naming a top-level secret. `source` becomes the secret's name in the
/// Fleet secret store (the top-level `name:`, if given). Compose writes uid and gid as strings
/// and mode in octal: a string is read as octal ("0440", "0o440", "440"), a YAML number as the
/// number it is (0o440 is 288), as `docker compose` does.
fn secrets(
    p: &mut Problems,
    at: &str,
    node: &Node,
    declared: &BTreeMap<String, String>,
    service: &str,
) -> Vec<(SecretMount, String)> {
    let Some(items) = node.as_seq() else {
        p.add(
            at,
            Some(node),
            format!(
                "expected a list of secret names or {{source, target, uid, gid, mode}}, found {}",
                node.kind()
            ),
        );
        return vec![];
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let item_at = read::item(at, i);
        let (key, key_at, mut mount) = match &item.value {
            Value::Str(name) => (
                name.clone(),
                item_at.clone(),
                SecretMount {
                    source: String::new(),
                    target: name.clone(),
                    uid: None,
                    gid: None,
                    mode: 0,
                },
            ),
            Value::Map(fields) => {
                let mut mount = SecretMount {
                    source: String::new(),
                    target: String::new(),
                    uid: None,
                    gid: None,
                    mode: 0,
                };
                let mut source = None;
                for (field, value) in fields {
                    let field_at = child(&item_at, field);
                    match field.as_str() {
                        "source" => source = read::nonempty(p, &field_at, value).map(|s| (s, field_at)),
                        "target" => mount.target = read::nonempty(p, &field_at, value).unwrap_or_default(),
                        "uid" => mount.uid = id_number(p, &field_at, value),
                        "gid" => mount.gid = id_number(p, &field_at, value),
                        "mode" => mount.mode = file_mode(p, &field_at, value).unwrap_or(0),
                        other => p.add(&field_at, Some(value), format!("unknown secret key {other:?}; a service's secret is {{source, target, uid, gid, mode}}")),
                    }
                }
                let Some((source, source_at)) = source else {
                    p.add(
                        &item_at,
                        Some(item),
                        "a secret needs source: (the name of a top-level secret)",
                    );
                    continue;
                };
                if mount.target.is_empty() {
                    mount.target = source.clone();
                }
                (source, source_at, mount)
            }
            _ => {
                p.add(
                    &item_at,
                    Some(item),
                    format!(
                        "expected a secret name or {{source, target, uid, gid, mode}}, found {}",
                        item.kind()
                    ),
                );
                continue;
            }
        };
        let Some(store_name) = declared.get(&key) else {
            p.add(&key_at, Some(item), format!("service {service} uses secret {key:?}, which is not declared; add it under the top-level secrets: ({key}: {{}}) and set its value with `fleetctl secret set {key} < file`"));
            continue;
        };
        mount.source = store_name.clone();
        out.push((mount, item_at));
    }
    out
}

/// A uid or gid: a whole number, also as a string ("103", as Compose writes it).
fn id_number(p: &mut Problems, at: &str, node: &Node) -> Option<u32> {
    read::number::<u32>(p, at, node, 0)
}

/// A file mode: a string in octal ("0440", "0o440"), or a YAML number taken as it is.
fn file_mode(p: &mut Problems, at: &str, node: &Node) -> Option<u32> {
    let mode = match &node.value {
        Value::Int(n) => u32::try_from(*n).ok(),
        Value::Str(s) => {
            let digits = s.trim();
            let digits =
                digits.strip_prefix("0o").or_else(|| digits.strip_prefix("0O")).unwrap_or(digits);
            u32::from_str_radix(digits, 8).ok()
        }
        _ => None,
    };
    match mode {
        Some(m) if m <= 0o777 => Some(m),
        Some(m) => {
            p.add(
                at,
                Some(node),
                format!("mode {m:#o} is more than permission bits (at most 0777)"),
            );
            None
        }
        None => {
            p.add(
                at,
                Some(node),
                format!(
                    "expected a file mode in octal such as 0440, found {}",
                    read::describe(node)
                ),
            );
            None
        }
    }
}

/// A service's `networks`: a list of declared network names, or a mapping of them to `{}` or
/// `{aliases: [...]}`.
fn networks(
    p: &mut Problems,
    path: &str,
    node: &Node,
    declared: &BTreeSet<String>,
) -> Vec<NetworkAttachment> {
    let mut out: Vec<NetworkAttachment> = Vec::new();
    let mut add = |p: &mut Problems, at: &str, n: &Node, name: &str, aliases: Vec<String>| {
        if name != fleet_proto::release::DEFAULT_NETWORK && !declared.contains(name) {
            p.add(at, Some(n), format!("network {name:?} is not declared; add it under the top-level networks: ({name}: {{}})"));
        } else if out.iter().any(|a| a.name == name) {
            p.add(at, Some(n), format!("network {name:?} is listed twice"));
        } else {
            out.push(NetworkAttachment { name: name.to_owned(), aliases });
        }
    };
    match &node.value {
        Value::Seq(items) => {
            for (i, it) in items.iter().enumerate() {
                let at = item(path, i);
                if let Some(name) = read::nonempty(p, &at, it) {
                    add(p, &at, it, &name, vec![]);
                }
            }
        }
        Value::Map(entries) => {
            for (name, value) in entries {
                let at = child(path, name);
                let mut aliases = vec![];
                if let Some(fields) = value.as_map() {
                    for (key, v) in fields {
                        let field_at = child(&at, key);
                        match key.as_str() {
                            "aliases" => {
                                for (a, alias) in read::strings(p, &field_at, v).unwrap_or_default().into_iter().enumerate() {
                                    if fleet_proto::release::is_dns_label(&alias) {
                                        aliases.push(alias);
                                    } else {
                                        p.add(&item(&field_at, a), Some(v), format!("{alias:?} is not a DNS name (letters, digits and -, at most 63)"));
                                    }
                                }
                            }
                            "ipv4_address" | "ipv6_address" | "link_local_ips" | "mac_address" | "priority" | "gw_priority" | "driver_opts" => p.add(&field_at, Some(v), "fixed addresses and endpoint options are not supported: services find each other by name on the release network"),
                            other => p.add(&field_at, Some(v), format!("unknown network attachment key {other:?}; use aliases")),
                        }
                    }
                } else if !value.is_null() {
                    p.add(
                        &at,
                        Some(value),
                        format!("expected {{}} or a mapping with aliases, found {}", value.kind()),
                    );
                }
                add(p, &at, value, name, aliases);
            }
        }
        _ => p.add(
            path,
            Some(node),
            format!("expected a list of network names or a mapping of them, found {}", node.kind()),
        ),
    }
    out
}

fn depends_on(
    p: &mut Problems,
    path: &str,
    node: &Node,
    services: &BTreeSet<&str>,
    own: &str,
) -> Vec<(Dependency, String)> {
    let mut out = Vec::new();
    let mut add =
        |p: &mut Problems, at: &str, n: &Node, name: &str, condition: DependencyCondition| {
            if !services.contains(name) {
                p.add(at, Some(n), format!("no service named {name:?} in this file"));
            } else if child("services", name) == own {
                p.add(at, Some(n), "a service cannot depend on itself");
            } else if let Ok(service) = ServiceName::new(name) {
                out.push((Dependency { service, condition }, at.to_owned()));
            }
        };
    match &node.value {
        Value::Seq(items) => {
            for (i, it) in items.iter().enumerate() {
                let at = item(path, i);
                if let Some(name) = read::nonempty(p, &at, it) {
                    add(p, &at, it, &name, DependencyCondition::Started);
                }
            }
        }
        Value::Map(entries) => {
            for (name, spec) in entries {
                let at = child(path, name);
                let mut condition = Some(DependencyCondition::Started);
                if let Some(fields) = spec.as_map() {
                    for (key, v) in fields {
                        let fat = child(&at, key);
                        match key.as_str() {
                            "condition" => {
                                condition = match read::string(p, &fat, v).as_deref() {
                                    Some("service_started") => Some(DependencyCondition::Started),
                                    Some("service_healthy") => Some(DependencyCondition::Healthy),
                                    Some("service_completed_successfully") => {
                                        p.add(&fat, Some(v), "one-shot services are not supported yet: every service of a release runs continuously (run setup steps in the image's entrypoint)");
                                        None
                                    }
                                    Some(other) => {
                                        p.add(&fat, Some(v), format!("{other:?} is not a condition; use service_started or service_healthy"));
                                        None
                                    }
                                    None => None,
                                }
                            }
                            "required" if read::boolean(&mut Problems::default(), &fat, v) == Some(true) => {}
                            "required" => p.add(&fat, Some(v), "optional dependencies are not supported: every service of a release runs"),
                            "restart" => p.add(&fat, Some(v), "restarting dependents is not supported yet"),
                            other => p.add(&fat, Some(v), format!("unknown key {other:?}; use condition")),
                        }
                    }
                } else if !spec.is_null() {
                    p.add(
                        &at,
                        Some(spec),
                        format!("expected a mapping with condition, found {}", spec.kind()),
                    );
                    condition = None;
                }
                if let Some(c) = condition {
                    add(p, &at, spec, name, c);
                }
            }
        }
        _ => p.add(
            path,
            Some(node),
            format!("expected a list of service names or a mapping, found {}", node.kind()),
        ),
    }
    out
}

/// `pids_limit: 100`; `-1` or `0` mean no limit.
fn pids(p: &mut Problems, path: &str, node: &Node) -> Option<Sourced<Option<u32>>> {
    let n = read::integer(p, path, node)?;
    match n {
        -1 | 0 => Some(Sourced::new(None, path, node)),
        n => match u32::try_from(n) {
            Ok(n) => Some(Sourced::new(Some(n), path, node)),
            Err(_) => {
                p.add(path, Some(node), format!("{n} is not a process limit"));
                None
            }
        },
    }
}

/// `nofile: 1024` or `nofile: { soft, hard }`.
fn ulimits(p: &mut Problems, path: &str, node: &Node) -> Vec<Ulimit> {
    let Some(entries) = read::map(p, path, node) else { return vec![] };
    let mut out = Vec::new();
    for (name, v) in entries {
        let at = child(path, name);
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase()) {
            p.add(&at, Some(v), format!("{name:?} is not a ulimit name like nofile or memlock"));
            continue;
        }
        let limits = if let Some(fields) = v.as_map() {
            let (mut soft, mut hard) = (None, None);
            for (key, fv) in fields {
                let fat = child(&at, key);
                match key.as_str() {
                    "soft" => soft = read::number::<i64>(p, &fat, fv, -1),
                    "hard" => hard = read::number::<i64>(p, &fat, fv, -1),
                    other => {
                        p.add(&fat, Some(fv), format!("unknown key {other:?}; use soft and hard"))
                    }
                }
            }
            match (soft, hard) {
                (Some(s), Some(h)) => Some((s, h)),
                _ => {
                    if !fields.iter().any(|(k, _)| k == "soft")
                        || !fields.iter().any(|(k, _)| k == "hard")
                    {
                        p.add(&at, Some(v), "give both soft and hard");
                    }
                    None
                }
            }
        } else {
            read::number::<i64>(p, &at, v, -1).map(|n| (n, n))
        };
        let Some((soft, hard)) = limits else { continue };
        // -1 is "unlimited" for both.
        if hard != -1 && (soft == -1 || soft > hard) {
            p.add(&at, Some(v), format!("soft limit {soft} is above the hard limit {hard}"));
            continue;
        }
        out.push(Ulimit { name: name.clone(), soft, hard });
    }
    out
}
