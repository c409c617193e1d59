//! A planned service becomes the engine's container config: [`container_body`] is pure (and
//! unit-tested field by field); [`DockerRuntime::create_container`] sends it and joins the
//! release networks the engine could not join at create.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use fleet_proto::policy::Namespace;
use fleet_proto::release::{
    NetworkMode, Probe, Protocol, RestartPolicy, VolumeMount, VolumeSource,
};

use super::engine::{encode, encode_name, EngineError, Request};
use super::model::{
    ContainerCreateBody, Created, DeviceMapping as EngineDevice, DeviceRequest, EndpointSettings,
    HealthConfig, HostConfig, Mount, MountTmpfsOptions, MountType, MountVolumeOptions,
    NetworkConnect, NetworkingConfig, PortBinding as EngineBinding, PortMap,
    RestartPolicy as EngineRestart, RestartPolicyName, Ulimit,
};
use super::{DockerRuntime, ANSWER_LIMIT};
use crate::runtime::{ContainerRuntime, CreateRequest, NetworkJoin, RuntimeError};

impl DockerRuntime {
    pub(super) async fn create_container(
        &self,
        req: &CreateRequest,
    ) -> Result<String, RuntimeError> {
        let image = req.spec.image.pull_ref();
        let request = Request::post(format!("/containers/create?name={}", encode(&req.name)))
            .json(&container_body(req));
        let created: Created =
            self.engine.call(request, ANSWER_LIMIT).await.map_err(|e| match e {
                // The only object a create refers to that can be missing is the image (named
                // volumes are created on demand): say which, so the caller pulls it again.
                EngineError::Status { status: 404, .. } => {
                    RuntimeError::NotFound { what: format!("image {image}") }
                }
                e => self.fail("create", &format!("container {}", req.name), e),
            })?;
        for warning in created.warnings.iter().flatten().filter(|w| !w.is_empty()) {
            tracing::warn!(container = %req.name, %warning, "engine warned on create");
        }
        // Engine API 1.41 (Docker 20.10) joins one network at create; the others are joined
        // before the container starts, so it never runs with only part of its networks.
        for join in req.networks.iter().skip(1) {
            let connect =
                NetworkConnect { container: &created.id, endpoint_config: endpoint(join) };
            let request =
                Request::post(format!("/networks/{}/connect", encode_name(&join.network)))
                    .json(&connect);
            if let Err(e) = self.engine.call::<()>(request, ANSWER_LIMIT).await {
                let _ = self.remove(&created.id).await;
                return Err(self.fail(
                    "connect",
                    &format!("container {} to network {}", req.name, join.network),
                    e,
                ));
            }
        }
        Ok(created.id)
    }
}

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// `None` for an empty list: the engine's default, not "none at all".
fn nonempty(list: Vec<String>) -> Option<Vec<String>> {
    (!list.is_empty()).then_some(list)
}

fn bytes_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

/// Port bindings by `port/proto`, from the override when given, else from the spec.
fn port_map(req: &CreateRequest) -> BTreeMap<String, Vec<EngineBinding>> {
    let binding = |ip: Option<IpAddr>, port: u16| EngineBinding {
        host_ip: ip.map(|ip| ip.to_string()),
        // No host port: the engine picks a free one.
        host_port: (port != 0).then(|| port.to_string()),
    };
    let mut map: BTreeMap<String, Vec<EngineBinding>> = BTreeMap::new();
    match &req.port_override {
        Some(overrides) => {
            for o in overrides {
                // A PortBinding has no protocol: publish each protocol the spec uses for this
                // container port (TCP when the spec does not publish it at all).
                let mut protocols: BTreeSet<Protocol> = req
                    .spec
                    .ports
                    .iter()
                    .filter(|p| p.container_port == o.container_port)
                    .map(|p| p.protocol)
                    .collect();
                if protocols.is_empty() {
                    protocols.insert(Protocol::Tcp);
                }
                for proto in protocols {
                    map.entry(format!("{}/{}", o.container_port, protocol_name(proto)))
                        .or_default()
                        .push(binding(Some(o.host_ip), o.host_port));
                }
            }
        }
        None => {
            for p in &req.spec.ports {
                let ip = p.loopback_only.then_some(IpAddr::V4(Ipv4Addr::LOCALHOST));
                map.entry(format!("{}/{}", p.container_port, protocol_name(p.protocol)))
                    .or_default()
                    .push(binding(ip, p.host_port));
            }
        }
    }
    map
}

/// The endpoint of a container on one network: the names it answers to there.
fn endpoint(join: &NetworkJoin) -> EndpointSettings {
    EndpointSettings { aliases: Some(join.aliases.clone()) }
}

fn mount(v: &VolumeMount, req: &CreateRequest) -> Mount {
    let base = Mount {
        target: Some(v.target.clone()),
        read_only: Some(v.read_only),
        ..Default::default()
    };
    match &v.source {
        VolumeSource::Named(name) => Mount {
            typ: Some(MountType::Volume),
            source: Some(name.clone()),
            // Applied only when the engine creates the volume: marks it as the agent's, the
            // app's and the device's, which purges and clash checks read.
            volume_options: Some(MountVolumeOptions {
                labels: Some(crate::runtime::volume_labels(req, name).into_iter().collect()),
            }),
            ..base
        },
        // A mount (not a `Binds` entry): a missing host path is an error instead of an empty
        // root-owned directory the engine would create in its place.
        VolumeSource::HostPath(path) => {
            Mount { typ: Some(MountType::Bind), source: Some(path.clone()), ..base }
        }
        VolumeSource::Tmpfs { size_bytes } => Mount {
            typ: Some(MountType::Tmpfs),
            tmpfs_options: (*size_bytes > 0)
                .then(|| MountTmpfsOptions { size_bytes: Some(bytes_i64(*size_bytes)) }),
            ..base
        },
    }
}

/// The engine's create body for a request. Pure, so the mapping is unit-tested.
fn container_body(req: &CreateRequest) -> ContainerCreateBody {
    let spec = &req.spec;
    let res = &spec.resources;
    let sec = &spec.security;
    let opts = &spec.options;
    let hw = &req.hardware;

    let ports = port_map(req);
    let exposed: Vec<String> = ports.keys().cloned().collect();
    let port_bindings: PortMap = ports.into_iter().map(|(k, v)| (k, Some(v))).collect();

    let mut mounts: Vec<Mount> = spec.volumes.iter().map(|v| mount(v, req)).collect();
    // Pseudo-terminals cannot be mapped with `devices` (the container gets its own devpts):
    // the node is bind-mounted and allowed by a cgroup rule instead.
    mounts.extend(hw.binds.iter().map(|b| Mount {
        target: Some(b.container_path.clone()),
        source: Some(b.host_path.clone()),
        typ: Some(MountType::Bind),
        ..Default::default()
    }));
    // Real-time control loops need CAP_SYS_NICE besides the rtprio ulimit to switch to
    // SCHED_FIFO/RR; admission control has already checked that the device allows it.
    let mut cap_add = sec.cap_add.clone();
    if res.realtime_priority.is_some()
        && !cap_add.iter().any(|c| c.trim_start_matches("CAP_") == "SYS_NICE")
    {
        cap_add.push("SYS_NICE".to_owned());
    }
    let mut group_add = spec.group_add.clone();
    for g in &hw.group_add {
        if !group_add.contains(g) {
            group_add.push(g.clone());
        }
    }
    let device_requests: Option<Vec<DeviceRequest>> = hw.gpus.as_ref().map(|g| {
        vec![DeviceRequest {
            driver: Some("nvidia".to_owned()),
            count: g.device_ids.is_empty().then_some(g.count),
            device_ids: (!g.device_ids.is_empty()).then(|| g.device_ids.clone()),
            capabilities: Some(vec![g.capabilities.clone()]),
        }]
    });
    let mut env = spec.env.clone();
    env.extend(hw.env.iter().map(|(k, v)| (k.clone(), v.clone())));

    let healthcheck = spec.healthcheck.as_ref().and_then(|h| {
        let test = match &h.probe {
            // Keep the image's HEALTHCHECK exactly as built.
            Probe::Image => return None,
            Probe::Cmd(argv) => {
                std::iter::once("CMD".to_owned()).chain(argv.iter().cloned()).collect()
            }
            Probe::CmdShell(line) => vec!["CMD-SHELL".to_owned(), line.clone()],
            // The agent probes these itself; the image's own check is switched off so that one
            // judge, not two, decides the service's health.
            // Disabled: the image's check is off too, and running counts as healthy.
            Probe::Http { .. } | Probe::Tcp { .. } | Probe::Disabled => {
                return Some(HealthConfig {
                    test: Some(vec!["NONE".to_owned()]),
                    ..Default::default()
                })
            }
        };
        Some(HealthConfig {
            test: Some(test),
            interval: Some(nanos(h.interval)),
            timeout: Some(nanos(h.timeout)),
            retries: Some(i64::from(h.retries)),
            start_period: Some(nanos(h.start_period)),
        })
    });

    let restart_policy = match spec.restart {
        RestartPolicy::No => {
            EngineRestart { name: Some(RestartPolicyName::No), maximum_retry_count: None }
        }
        RestartPolicy::Always => {
            EngineRestart { name: Some(RestartPolicyName::Always), maximum_retry_count: None }
        }
        RestartPolicy::OnFailure { max_retries } => EngineRestart {
            name: Some(RestartPolicyName::OnFailure),
            maximum_retry_count: Some(i64::from(max_retries)),
        },
        RestartPolicy::UnlessStopped => EngineRestart {
            name: Some(RestartPolicyName::UnlessStopped),
            maximum_retry_count: None,
        },
    };

    let mut ulimits: Vec<Ulimit> = res
        .ulimits
        .iter()
        // realtime_priority is the dedicated field for rtprio; it wins over a stray ulimit.
        .filter(|u| !(res.realtime_priority.is_some() && u.name == "rtprio"))
        .map(|u| Ulimit { name: Some(u.name.clone()), soft: Some(u.soft), hard: Some(u.hard) })
        .collect();
    if let Some(p) = res.realtime_priority {
        ulimits.push(Ulimit {
            name: Some("rtprio".to_owned()),
            soft: Some(i64::from(p)),
            hard: Some(i64::from(p)),
        });
    }

    let devices: Vec<EngineDevice> = hw
        .devices
        .iter()
        .map(|d| EngineDevice {
            path_on_host: Some(d.host_path.clone()),
            path_in_container: Some(d.container_path.clone()),
            cgroup_permissions: Some(d.permissions.clone()),
        })
        .collect();

    // Host namespaces besides the network, as admission allowed them ([policy]).
    let host_namespace = |ns| spec.host_namespaces.contains(&ns).then(|| "host".to_owned());
    let network_mode = match (spec.network_mode, req.networks.first()) {
        (NetworkMode::Release, Some(first)) => first.network.as_str(),
        // A request built without its networks (never by the reconciler): the engine's bridge.
        (NetworkMode::Release, None) => "bridge",
        (NetworkMode::Host, _) => "host",
        (NetworkMode::None, _) => "none",
    };
    let networking_config = req.networks.first().map(|first| NetworkingConfig {
        endpoints_config: Some(HashMap::from([(first.network.clone(), endpoint(first))])),
    });

    let host_config = HostConfig {
        network_mode: Some(network_mode.to_owned()),
        port_bindings: (!port_bindings.is_empty()).then_some(port_bindings),
        mounts: (!mounts.is_empty()).then_some(mounts),
        restart_policy: Some(restart_policy),
        memory: res.memory_bytes.map(bytes_i64),
        memory_reservation: res.memory_reservation_bytes.map(bytes_i64),
        memory_swap: res.memory_swap_bytes.map(bytes_i64),
        nano_cpus: res.cpu_millis.map(|m| i64::from(m) * 1_000_000),
        cpuset_cpus: res.cpuset.clone(),
        pids_limit: res.pids.map(i64::from),
        ulimits: (!ulimits.is_empty()).then_some(ulimits),
        shm_size: res.shm_bytes.map(bytes_i64),
        privileged: Some(sec.privileged),
        cap_add: (!cap_add.is_empty()).then_some(cap_add),
        cap_drop: (!sec.cap_drop.is_empty()).then(|| sec.cap_drop.clone()),
        readonly_rootfs: Some(sec.read_only_rootfs),
        security_opt: spec.no_new_privileges.then(|| vec!["no-new-privileges".to_owned()]),
        cpu_shares: spec.cpu_shares.map(i64::from),
        devices: (!devices.is_empty()).then_some(devices),
        device_cgroup_rules: (!hw.cgroup_rules.is_empty()).then(|| hw.cgroup_rules.clone()),
        device_requests,
        // Admission refused a service whose own runtime differs from its hardware's.
        runtime: opts.runtime.clone().or_else(|| hw.runtime.clone()),
        cpu_realtime_runtime: hw.cpu_rt_runtime_us,
        group_add: (!group_add.is_empty()).then_some(group_add),
        pid_mode: host_namespace(Namespace::Pid),
        ipc_mode: host_namespace(Namespace::Ipc),
        uts_mode: host_namespace(Namespace::Uts),
        init: opts.init.then_some(true),
        extra_hosts: nonempty(
            opts.extra_hosts.iter().map(|h| format!("{}:{}", h.name, h.address)).collect(),
        ),
        dns: nonempty(opts.dns.clone()),
        dns_search: nonempty(opts.dns_search.clone()),
        dns_options: nonempty(opts.dns_options.clone()),
        sysctls: (!opts.sysctls.is_empty())
            .then(|| opts.sysctls.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
        cpu_period: opts.cpu_period_us.map(i64::from),
        cpu_quota: opts.cpu_quota_us.map(i64::from),
        oom_score_adj: opts.oom_score_adj.map(i64::from),
        blkio_weight: opts.blkio_weight,
    };

    ContainerCreateBody {
        image: Some(spec.image.pull_ref()),
        labels: Some(req.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
        entrypoint: spec.entrypoint.clone(),
        cmd: (!spec.command.is_empty()).then(|| spec.command.clone()),
        env: (!env.is_empty()).then(|| env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        working_dir: spec.working_dir.clone(),
        user: sec.user.clone(),
        hostname: opts.hostname.clone(),
        domainname: opts.domainname.clone(),
        tty: opts.tty.then_some(true),
        open_stdin: opts.stdin_open.then_some(true),
        stop_signal: opts.stop_signal.clone(),
        // Whole seconds, rounded up: the engine's own stops and restarts give the same grace
        // as the agent's.
        stop_timeout: opts
            .stop_grace
            .map(|g| i64::try_from(super::whole_seconds(g)).unwrap_or(i64::MAX)),
        exposed_ports: (!exposed.is_empty()).then_some(exposed),
        healthcheck,
        host_config: Some(host_config),
        networking_config,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;

    use fleet_proto::release::{HealthCheck, PortMapping, ResourceLimits, Ulimit};

    use super::*;
    use crate::runtime::{labels, DeviceMapping, PortBinding};

    fn request() -> CreateRequest {
        let mut spec = fleet_proto::samples::release().services[0].clone();
        spec.hardware.clear();
        CreateRequest {
            name: "fleet-robot-7-web-abc".to_owned(),
            labels: BTreeMap::from([
                (labels::DEVICE.to_owned(), "robot-7".to_owned()),
                (labels::MANAGED_BY.to_owned(), labels::MANAGED_BY_VALUE.to_owned()),
            ]),
            spec,
            port_override: None,
            hardware: Default::default(),
            networks: vec![],
        }
    }

    #[test]
    fn a_container_joins_its_first_release_network_at_create_under_its_names() {
        let mut req = request();
        req.labels.insert(labels::APP.to_owned(), "robot-stack".to_owned());
        req.networks = vec![
            NetworkJoin {
                network: "robot-7_robot-stack_default".to_owned(),
                aliases: vec!["web".to_owned(), "ui".to_owned()],
            },
            NetworkJoin {
                network: "robot-7_robot-stack_backend".to_owned(),
                aliases: vec!["web".to_owned()],
            },
        ];
        let body = container_body(&req);
        let host = body.host_config.unwrap();
        assert_eq!(host.network_mode.as_deref(), Some("robot-7_robot-stack_default"));
        let endpoints = body.networking_config.unwrap().endpoints_config.unwrap();
        // One network at create (API 1.41); the second is connected before the start.
        assert_eq!(endpoints.len(), 1);
        assert_eq!(
            endpoints["robot-7_robot-stack_default"].aliases.as_deref(),
            Some(&["web".to_owned(), "ui".to_owned()][..])
        );
        // The engine creates the named volume with the app's and the volume's labels.
        let mounts = host.mounts.unwrap();
        let vol = mounts[0].volume_options.as_ref().unwrap().labels.clone().unwrap();
        assert_eq!(vol[labels::APP], "robot-stack");
        assert_eq!(vol[labels::VOLUME], "maps");
    }

    /// The engine options each fixture robot's hardware becomes: what `docker run` flags a
    /// robotics engineer would have written by hand.
    #[test]
    fn hardware_mappings_become_the_exact_engine_create_options() {
        use crate::hardware::{fixtures, map::map_service};
        use fleet_proto::release::{GpuKind, GpuSelect, HardwareRequest, SerialSelector};
        let body_for = |hw: &crate::hardware::HostHardware, requests: Vec<HardwareRequest>| {
            let mut req = request();
            req.spec.hardware = requests;
            req.spec.group_add = vec!["audio".to_owned()];
            req.hardware = map_service(&req.spec, hw, "services[0]").unwrap();
            container_body(&req)
        };
        // x86 with an NVIDIA card: `--gpus all` / `--gpus 1` / `--gpus device=0`.
        let x86 = fixtures::x86_nvidia();
        let gpu = |select| vec![HardwareRequest::Gpu { kind: GpuKind::Nvidia, select }];
        let all = body_for(&x86, gpu(GpuSelect::All)).host_config.unwrap();
        let caps = Some(vec![vec!["gpu".to_owned(), "compute".to_owned(), "utility".to_owned()]]);
        assert_eq!(
            all.device_requests,
            Some(vec![DeviceRequest {
                driver: Some("nvidia".to_owned()),
                count: Some(-1),
                device_ids: None,
                capabilities: caps.clone(),
            }])
        );
        assert_eq!(all.devices, None, "the toolkit maps the nodes itself");
        assert_eq!(all.runtime, None);
        let by_id = body_for(&x86, gpu(GpuSelect::Ids(vec!["0".to_owned()]))).host_config.unwrap();
        assert_eq!(
            by_id.device_requests,
            Some(vec![DeviceRequest {
                driver: Some("nvidia".to_owned()),
                count: None,
                device_ids: Some(vec!["0".to_owned()]),
                capabilities: caps,
            }])
        );
        // Jetson: `--runtime nvidia` and the toolkit's variables.
        let jetson = body_for(
            &fixtures::jetson_orin(),
            vec![HardwareRequest::Gpu { kind: GpuKind::Jetson, select: GpuSelect::All }],
        );
        assert_eq!(jetson.host_config.as_ref().unwrap().runtime.as_deref(), Some("nvidia"));
        assert_eq!(jetson.host_config.as_ref().unwrap().device_requests, None);
        let env = jetson.env.unwrap();
        assert!(env.contains(&"NVIDIA_VISIBLE_DEVICES=all".to_owned()), "{env:?}");
        assert!(env.contains(&"NVIDIA_DRIVER_CAPABILITIES=all".to_owned()), "{env:?}");
        // A Pi's FTDI adapter by its stable name: `--device /dev/ttyUSB0:/dev/lidar:rwm
        // --group-add 20`, the spec's own groups kept.
        let pi = body_for(
            &fixtures::rpi5(),
            vec![HardwareRequest::Serial {
                port: SerialSelector::ById(fixtures::FTDI_BY_ID.to_owned()),
                container_path: "/dev/lidar".to_owned(),
            }],
        )
        .host_config
        .unwrap();
        assert_eq!(
            pi.devices,
            Some(vec![EngineDevice {
                path_on_host: Some("/dev/ttyUSB0".to_owned()),
                path_in_container: Some("/dev/lidar".to_owned()),
                cgroup_permissions: Some("rwm".to_owned()),
            }])
        );
        assert_eq!(pi.group_add, Some(vec!["audio".to_owned(), "20".to_owned()]));
        assert_eq!(pi.device_cgroup_rules, None);
        // A pseudo-terminal: bind mount plus cgroup rule, never `devices`.
        let pty = body_for(
            &fixtures::with_pty(fixtures::bare_vm(), "usb-Fake_GPS_1234-if00", 7),
            vec![HardwareRequest::Serial {
                port: SerialSelector::ById("usb-Fake_GPS_1234-if00".to_owned()),
                container_path: "/dev/ttyUSB0".to_owned(),
            }],
        )
        .host_config
        .unwrap();
        assert_eq!(pty.devices, None);
        assert_eq!(pty.device_cgroup_rules, Some(vec!["c 136:7 rwm".to_owned()]));
        let bind =
            pty.mounts.unwrap().into_iter().find(|m| m.typ == Some(MountType::Bind)).unwrap();
        assert_eq!(bind.source.as_deref(), Some("/dev/pts/7"));
        assert_eq!(bind.target.as_deref(), Some("/dev/ttyUSB0"));
    }

    #[test]
    fn host_namespaces_reach_the_engine_and_only_those_asked_for() {
        let mut req = request();
        let host = container_body(&req).host_config.unwrap();
        assert_eq!((host.pid_mode, host.ipc_mode, host.uts_mode), (None, None, None));
        req.spec.host_namespaces = vec![Namespace::Pid, Namespace::Uts];
        let host = container_body(&req).host_config.unwrap();
        assert_eq!(host.pid_mode.as_deref(), Some("host"));
        assert_eq!(host.ipc_mode, None);
        assert_eq!(host.uts_mode.as_deref(), Some("host"));
    }

    #[test]
    fn realtime_hardening_and_cpu_weight_reach_the_engine() {
        let mut req = request();
        req.spec.resources.realtime_priority = Some(80);
        req.spec.resources.cpuset = Some("3".to_owned());
        req.spec.no_new_privileges = true;
        req.spec.cpu_shares = Some(2048);
        let host = container_body(&req).host_config.unwrap();
        assert_eq!(
            host.cap_add,
            Some(vec!["SYS_NICE".to_owned()]),
            "rtprio alone cannot switch to SCHED_FIFO"
        );
        let rtprio =
            host.ulimits.unwrap().into_iter().find(|u| u.name.as_deref() == Some("rtprio"));
        assert_eq!(rtprio.map(|u| (u.soft, u.hard)), Some((Some(80), Some(80))));
        assert_eq!(host.cpuset_cpus.as_deref(), Some("3"));
        assert_eq!(host.security_opt, Some(vec!["no-new-privileges".to_owned()]));
        assert_eq!(host.cpu_shares, Some(2048));
        assert_eq!(
            host.cpu_realtime_runtime, None,
            "no real-time budget without RT group scheduling"
        );
        req.hardware.cpu_rt_runtime_us = Some(475_000);
        assert_eq!(container_body(&req).host_config.unwrap().cpu_realtime_runtime, Some(475_000));
    }

    #[test]
    fn create_body_carries_the_spec_onto_the_engine_fields() {
        let mut req = request();
        req.spec.entrypoint = Some(vec!["/bin/sh".to_owned()]);
        req.hardware.devices.push(DeviceMapping {
            host_path: "/dev/ttyUSB0".to_owned(),
            container_path: "/dev/lidar".to_owned(),
            permissions: "rwm".to_owned(),
        });
        let body = container_body(&req);
        let host = body.host_config.clone().unwrap();
        assert_eq!(body.image.as_deref(), Some(req.spec.image.pull_ref().as_str()));
        assert_eq!(body.cmd, Some(vec!["httpd".to_owned(), "-f".to_owned()]));
        assert_eq!(body.entrypoint, Some(vec!["/bin/sh".to_owned()]));
        assert_eq!(body.env, Some(vec!["PORT=8080".to_owned(), "RUST_LOG=info".to_owned()]));
        assert_eq!(body.working_dir.as_deref(), Some("/srv"));
        assert_eq!(body.labels.unwrap()[labels::DEVICE], "robot-7");
        assert_eq!(host.memory, Some(256 << 20));
        assert_eq!(host.memory_reservation, Some(128 << 20));
        assert_eq!(host.nano_cpus, Some(1_500_000_000));
        assert_eq!(host.pids_limit, Some(200));
        assert_eq!(host.shm_size, Some(64 << 20));
        assert_eq!(host.network_mode.as_deref(), Some("bridge"));
        assert_eq!(host.restart_policy.unwrap().name, Some(RestartPolicyName::Always));
        let dev = &host.devices.unwrap()[0];
        assert_eq!(dev.path_on_host.as_deref(), Some("/dev/ttyUSB0"));
        assert_eq!(dev.path_in_container.as_deref(), Some("/dev/lidar"));
        let mounts = host.mounts.unwrap();
        assert_eq!(mounts[0].typ, Some(MountType::Volume));
        assert_eq!(mounts[0].source.as_deref(), Some("maps"));
        let vol_labels = mounts[0].volume_options.as_ref().unwrap().labels.clone().unwrap();
        assert_eq!(vol_labels[labels::DEVICE], "robot-7");
        assert_eq!(mounts[1].typ, Some(MountType::Tmpfs));
        assert_eq!(mounts[1].tmpfs_options.as_ref().unwrap().size_bytes, Some(16 << 20));
        let bindings = host.port_bindings.unwrap();
        let b = bindings["8080/tcp"].as_ref().unwrap();
        assert_eq!(b[0].host_port.as_deref(), Some("8080"));
        assert_eq!(b[0].host_ip, None, "published on all interfaces");
        assert_eq!(body.exposed_ports, Some(vec!["8080/tcp".to_owned()]));
    }

    #[test]
    fn port_override_replaces_the_spec_ports_and_keeps_their_protocol() {
        let mut req = request();
        req.spec.ports = vec![PortMapping {
            host_port: 53,
            container_port: 5353,
            protocol: Protocol::Udp,
            loopback_only: false,
        }];
        req.port_override = Some(vec![PortBinding {
            container_port: 5353,
            host_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            host_port: 0,
        }]);
        let bindings = container_body(&req).host_config.unwrap().port_bindings.unwrap();
        assert_eq!(bindings.len(), 1);
        let b = bindings["5353/udp"].as_ref().unwrap();
        assert_eq!(b[0].host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(b[0].host_port, None, "port 0 lets the engine choose");
    }

    #[test]
    fn loopback_only_ports_bind_to_127_0_0_1() {
        let mut req = request();
        req.spec.ports[0].loopback_only = true;
        let bindings = container_body(&req).host_config.unwrap().port_bindings.unwrap();
        assert_eq!(bindings["8080/tcp"].as_ref().unwrap()[0].host_ip.as_deref(), Some("127.0.0.1"));
    }

    #[test]
    fn health_probes_map_to_docker_healthchecks_or_none() {
        let mut req = request();
        let check = |probe| HealthCheck {
            probe,
            interval: Duration::from_secs(2),
            timeout: Duration::from_millis(500),
            retries: 4,
            start_period: Duration::from_secs(1),
        };
        req.spec.healthcheck = Some(check(Probe::Cmd(vec!["probe".to_owned(), "-q".to_owned()])));
        let hc = container_body(&req).healthcheck.unwrap();
        assert_eq!(hc.test, Some(vec!["CMD".to_owned(), "probe".to_owned(), "-q".to_owned()]));
        assert_eq!(hc.interval, Some(2_000_000_000));
        assert_eq!(hc.timeout, Some(500_000_000));
        assert_eq!(hc.retries, Some(4));
        assert_eq!(hc.start_period, Some(1_000_000_000));

        req.spec.healthcheck = Some(check(Probe::CmdShell("curl -f localhost".to_owned())));
        let hc = container_body(&req).healthcheck.unwrap();
        assert_eq!(hc.test, Some(vec!["CMD-SHELL".to_owned(), "curl -f localhost".to_owned()]));

        req.spec.healthcheck = Some(check(Probe::Image));
        assert_eq!(container_body(&req).healthcheck, None, "the image's HEALTHCHECK stays");

        req.spec.healthcheck = Some(check(Probe::Tcp { port: 80 }));
        assert_eq!(
            container_body(&req).healthcheck.unwrap().test,
            Some(vec!["NONE".to_owned()]),
            "the agent probes TCP itself"
        );

        req.spec.healthcheck = Some(check(Probe::Disabled));
        assert_eq!(
            container_body(&req).healthcheck.unwrap().test,
            Some(vec!["NONE".to_owned()]),
            "a disabled check switches the image's HEALTHCHECK off"
        );
    }

    #[test]
    fn container_options_reach_the_engine_fields_and_unset_ones_stay_out() {
        use fleet_proto::release::{ContainerOptions, HostEntry};
        let mut req = request();
        let plain = container_body(&req);
        let json = serde_json::to_value(&plain).unwrap();
        for absent in ["Hostname", "Tty", "OpenStdin", "StopSignal", "StopTimeout"] {
            assert!(json.get(absent).is_none(), "{absent} in {json}");
        }
        for absent in ["Init", "ExtraHosts", "Dns", "Sysctls", "CpuQuota", "OomScoreAdj"] {
            assert!(json["HostConfig"].get(absent).is_none(), "{absent} in {json}");
        }
        req.spec.options = ContainerOptions {
            init: true,
            tty: true,
            stdin_open: true,
            stop_signal: Some("SIGINT".to_owned()),
            stop_grace: Some(Duration::from_millis(2500)),
            hostname: Some("robot-7".to_owned()),
            domainname: Some("fleet.example".to_owned()),
            extra_hosts: vec![HostEntry {
                name: "plc".to_owned(),
                address: "192.168.1.20".to_owned(),
            }],
            dns: vec!["10.0.0.53".to_owned()],
            dns_search: vec!["lab.example".to_owned()],
            dns_options: vec!["ndots:2".to_owned()],
            sysctls: BTreeMap::from([("net.core.somaxconn".to_owned(), "1024".to_owned())]),
            cpu_period_us: Some(100_000),
            cpu_quota_us: Some(50_000),
            oom_score_adj: Some(300),
            blkio_weight: Some(200),
            runtime: Some("runsc".to_owned()),
        };
        let body = container_body(&req);
        assert_eq!(body.hostname.as_deref(), Some("robot-7"));
        assert_eq!(body.domainname.as_deref(), Some("fleet.example"));
        assert_eq!((body.tty, body.open_stdin), (Some(true), Some(true)));
        assert_eq!(body.stop_signal.as_deref(), Some("SIGINT"));
        assert_eq!(body.stop_timeout, Some(3), "2.5 s rounds up, never down");
        let host = body.host_config.unwrap();
        assert_eq!(host.init, Some(true));
        assert_eq!(host.extra_hosts, Some(vec!["plc:192.168.1.20".to_owned()]));
        assert_eq!(host.dns, Some(vec!["10.0.0.53".to_owned()]));
        assert_eq!(host.dns_search, Some(vec!["lab.example".to_owned()]));
        assert_eq!(host.dns_options, Some(vec!["ndots:2".to_owned()]));
        assert_eq!(host.sysctls.unwrap()["net.core.somaxconn"], "1024");
        assert_eq!((host.cpu_period, host.cpu_quota), (Some(100_000), Some(50_000)));
        assert_eq!((host.oom_score_adj, host.blkio_weight), (Some(300), Some(200)));
        assert_eq!(host.runtime.as_deref(), Some("runsc"));
    }

    #[test]
    fn extra_groups_join_the_container_user() {
        let mut req = request();
        assert_eq!(container_body(&req).host_config.unwrap().group_add, None);
        req.spec.group_add = vec!["dialout".to_owned(), "44".to_owned()];
        assert_eq!(
            container_body(&req).host_config.unwrap().group_add,
            Some(vec!["dialout".to_owned(), "44".to_owned()])
        );
    }

    #[test]
    fn restart_policies_and_realtime_priority_map_to_engine_names() {
        let mut req = request();
        req.spec.restart = RestartPolicy::OnFailure { max_retries: 5 };
        req.spec.resources = ResourceLimits {
            realtime_priority: Some(80),
            ulimits: vec![
                Ulimit { name: "rtprio".to_owned(), soft: 1, hard: 1 },
                Ulimit { name: "memlock".to_owned(), soft: -1, hard: -1 },
            ],
            ..Default::default()
        };
        let host = container_body(&req).host_config.unwrap();
        let policy = host.restart_policy.unwrap();
        assert_eq!(policy.name, Some(RestartPolicyName::OnFailure));
        assert_eq!(policy.maximum_retry_count, Some(5));
        let ulimits = host.ulimits.unwrap();
        let rtprio: Vec<_> =
            ulimits.iter().filter(|u| u.name.as_deref() == Some("rtprio")).collect();
        assert_eq!(rtprio.len(), 1, "{ulimits:?}");
        assert_eq!((rtprio[0].soft, rtprio[0].hard), (Some(80), Some(80)));
        assert_eq!(host.memory, None, "no limit means no limit");
    }
}
