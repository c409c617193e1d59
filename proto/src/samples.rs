//! One representative value of every message, shared by the golden-bytes fixtures, the
//! documentation and other crates' tests. Changing a sample changes the golden fixtures: add a
//! new sample instead.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::command::{Command, CommandAction, CommandOutcome, CommandResult};
use crate::desired::{DesiredState, Pin, RegistryCredential, SealedSecret};
use crate::event::{Event, EventKind, Severity};
use crate::ids::{DeviceId, ReleaseId, ServiceName};
use crate::inventory::*;
use crate::policy::{DevicePolicy, Namespace};
use crate::release::*;
use crate::report::*;
use crate::seal::{SealKey, SEAL_OVERHEAD};
use crate::sign::{ServerKey, Signed};
use crate::status::{Presence, Status};
use crate::telemetry::{Point, TelemetryAck, TelemetryBatch, Value};
use crate::time::UnixMillis;

const T0: UnixMillis = UnixMillis(1_790_000_000_000);

fn s(v: &str) -> String {
    v.to_owned()
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (s(k), s(v))).collect()
}

fn service(name: &str) -> ServiceName {
    ServiceName::new(name).expect("sample service names are valid")
}

/// The sample device, `robot-7`.
pub fn device() -> DeviceId {
    DeviceId::new("robot-7").expect("sample device id is valid")
}

/// The sample release id, `robot-stack@1.4.2`.
pub fn release_id() -> ReleaseId {
    ReleaseId::new("robot-stack@1.4.2").expect("sample release id is valid")
}

/// A fixed server signing key for fixtures (never use a fixed seed outside tests).
pub fn server_key() -> ServerKey {
    ServerKey::from_seed(&[42; 32])
}

/// A two-service release exercising most fields.
pub fn release() -> ReleaseSpec {
    let web = ServiceSpec {
        name: service("web"),
        image: ImageRef::parse(
            "127.0.0.1:5000/fleet-test/web:1@sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        )
        .expect("sample image is valid"),
        entrypoint: None,
        command: vec![s("httpd"), s("-f")],
        env: map(&[("PORT", "8080"), ("RUST_LOG", "info")]),
        working_dir: Some(s("/srv")),
        labels: map(&[("team", "perception")]),
        volumes: vec![
            VolumeMount { source: VolumeSource::Named(s("maps")), target: s("/data/maps"), read_only: false },
            VolumeMount { source: VolumeSource::Tmpfs { size_bytes: 16 << 20 }, target: s("/tmp"), read_only: false },
        ],
        ports: vec![PortMapping { host_port: 8080, container_port: 8080, protocol: Protocol::Tcp, loopback_only: false }],
        network_mode: NetworkMode::Release,
        healthcheck: Some(HealthCheck {
            probe: Probe::Http { port: 8080, path: s("/health") },
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            retries: 3,
            start_period: Duration::from_secs(2),
        }),
        restart: RestartPolicy::Always,
        update: UpdateStrategy::StartFirst,
        health_deadline: Duration::from_secs(60),
        hardware: vec![HardwareRequest::Gpu { kind: GpuKind::Jetson, select: GpuSelect::All }],
        resources: ResourceLimits {
            memory_bytes: Some(256 << 20),
            memory_reservation_bytes: Some(128 << 20),
            memory_swap_bytes: Some(256 << 20),
            cpu_millis: Some(1500),
            cpuset: None,
            pids: Some(200),
            ulimits: vec![Ulimit { name: s("nofile"), soft: 4096, hard: 8192 }],
            realtime_priority: None,
            shm_bytes: Some(64 << 20),
        },
        security: SecurityOptions::default(),
        depends_on: vec![],
        group_add: vec![],
        optional_hardware: vec![],
        telemetry: false,
        no_new_privileges: false,
        cpu_shares: None,
        networks: vec![NetworkAttachment { name: s("default"), aliases: vec![s("ui")] }],
        secrets: vec![SecretMount { source: s("tls-key"), target: s("server.key"), uid: Some(1000), gid: None, mode: 0o400 }],
        host_namespaces: vec![],
        options: Default::default(),
    };
    let lidar = ServiceSpec {
        name: service("lidar"),
        image: ImageRef::parse(
            "registry.example.com/robots/lidar-driver@sha256:60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752",
        )
        .expect("sample image is valid"),
        entrypoint: Some(vec![s("/usr/bin/lidar")]),
        command: vec![],
        env: BTreeMap::new(),
        working_dir: None,
        labels: BTreeMap::new(),
        volumes: vec![],
        ports: vec![],
        network_mode: NetworkMode::Host,
        healthcheck: Some(HealthCheck {
            probe: Probe::Cmd(vec![s("lidar"), s("--self-test")]),
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            retries: 2,
            start_period: Duration::ZERO,
        }),
        restart: RestartPolicy::OnFailure { max_retries: 5 },
        update: UpdateStrategy::StopFirst,
        health_deadline: Duration::from_secs(30),
        hardware: vec![
            HardwareRequest::Serial {
                port: SerialSelector::ById(s("usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0")),
                container_path: s("/dev/ttyUSB0"),
            },
            HardwareRequest::Gpio { chip: s("pinctrl-bcm2711") },
            HardwareRequest::I2c { bus: 1 },
        ],
        resources: ResourceLimits {
            cpuset: Some(s("2-3")),
            realtime_priority: Some(80),
            ..ResourceLimits::default()
        },
        security: SecurityOptions {
            privileged: false,
            cap_add: vec![s("SYS_NICE")],
            cap_drop: vec![s("NET_RAW")],
            read_only_rootfs: true,
            user: Some(s("1000:20")),
        },
        depends_on: vec![Dependency { service: service("web"), condition: DependencyCondition::Healthy }],
        group_add: vec![],
        optional_hardware: vec![],
        telemetry: false,
        no_new_privileges: false,
        cpu_shares: None,
        networks: vec![],
        secrets: vec![],
        host_namespaces: vec![],
        // A driver that parks the sensor on SIGINT and needs time to do it.
        options: ContainerOptions {
            init: true,
            stop_signal: Some("SIGINT".to_owned()),
            stop_grace: Some(Duration::from_secs(20)),
            extra_hosts: vec![HostEntry {
                name: "plc".to_owned(),
                address: "192.168.1.20".to_owned(),
            }],
            ..Default::default()
        },
    };
    ReleaseSpec {
        id: release_id(),
        app: s("robot-stack"),
        version: s("1.4.2"),
        services: vec![web, lidar],
    }
}

/// Desired state for `robot-7`, generation 3, pinned.
pub fn desired() -> DesiredState {
    DesiredState {
        device: device(),
        generation: 3,
        release: Some(release()),
        pin: Some(Pin {
            release: release_id(),
            reason: s("bench debugging of the lidar driver"),
            pinned_by: s("ana"),
            until: Some(UnixMillis(T0.0 + 86_400_000)),
        }),
        issued_at: T0,
        registry_credentials: vec![RegistryCredential {
            registry: s("registry.example.com"),
            username: s("robot-7"),
            password: s("not-a-real-password"),
        }],
        // Fixed bytes standing in for a sealed value (real sealing is randomised).
        secrets: vec![SealedSecret {
            name: s("tls-key"),
            digest: s("5d41402abc4b2a76b9719d911017c592"),
            sealed: vec![0xa5; SEAL_OVERHEAD + 8],
        }],
        sealed_registry_credentials: vec![0x5a; SEAL_OVERHEAD + 40],
        agent: Some(crate::desired::AgentTarget {
            version: s("0.2.0"),
            repository: s("registry.example.com/fleet/agent"),
            digest: s("sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"),
            size: 6_177_600,
            deadline_secs: 120,
            installed: false,
        }),
    }
}

/// [`desired`] signed with [`server_key`].
pub fn signed_desired() -> Signed {
    server_key().sign(&desired())
}

/// The inventory of a Raspberry-Pi-like robot.
pub fn inventory() -> Inventory {
    Inventory {
        arch: s("aarch64"),
        os: OsInfo {
            id: s("debian"),
            version: s("12"),
            pretty_name: s("Debian GNU/Linux 12 (bookworm)"),
        },
        kernel: s("6.1.0-rpi7-rpi-v8"),
        engine: Some(EngineInfo {
            name: s("docker"),
            version: s("20.10.24"),
            api_version: s("1.41"),
        }),
        cpus: CpuInfo { count: 4, model: s("Cortex-A72"), online: s("0-3"), isolated: s("2-3") },
        memory_bytes: 8 << 30,
        disks: vec![Disk { mount: s("/"), total_bytes: 64 << 30, available_bytes: 40 << 30 }],
        serial: vec![SerialPort {
            dev_path: s("/dev/ttyUSB0"),
            by_id: vec![s("usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0")],
            by_path: vec![s("platform-fd500000.pcie-pci-0000:01:00.0-usb-0:1.3:1.0-port0")],
            usb: Some(UsbIds {
                vendor: s("0403"),
                product: s("6001"),
                serial: Some(s("A50285BI")),
                manufacturer: Some(s("FTDI")),
                product_name: Some(s("FT232R USB UART")),
            }),
        }],
        gpio: vec![GpioChip { name: s("gpiochip0"), label: s("pinctrl-bcm2711"), lines: 58 }],
        i2c: vec![I2cBus { bus: 1, name: s("bcm2835 (i2c@7e804000)") }],
        spi: vec![SpiDevice { bus: 0, chip_select: 0 }],
        video: vec![VideoDevice {
            dev_path: s("/dev/video0"),
            name: s("HD Pro Webcam C920"),
            by_id: vec![s("usb-046d_HD_Pro_Webcam_C920_8A5F1E2F-video-index0")],
            by_path: vec![],
        }],
        can: vec![s("can0")],
        gpus: vec![],
        accelerators: vec![Accelerator { kind: s("hailo"), dev_path: s("/dev/hailo0") }],
        policy: Some(DevicePolicy {
            allowed_capabilities: vec![s("NET_ADMIN")],
            allowed_devices: vec![s("/dev/mtd0")],
            allow_host_namespaces: vec![Namespace::Network, Namespace::Ipc],
            allowed_host_paths: vec![s("/srv/maps")],
            ..DevicePolicy::default()
        }),
    }
}

/// A report in the middle of an update, with the inventory attached.
pub fn report() -> StateReport {
    StateReport {
        device: device(),
        reported_at: T0,
        accepted_generation: 3,
        in_force: Some(InForce {
            release: release_id(),
            source: ReleaseSource::Server { generation: 2 },
        }),
        services: vec![ServiceStatus {
            name: service("web"),
            release: release_id(),
            image_digest: s(
                "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            ),
            container_id: Some(s("4f1c2e")),
            state: ContainerState::Running,
            health: Health::Healthy,
            restarts: 1,
            exit_code: None,
            last_error: None,
        }],
        update: UpdateStatus {
            phase: UpdatePhase::Pulling,
            target_generation: Some(3),
            pull: Some(PullProgress { bytes_done: 1 << 20, bytes_total: Some(4 << 20) }),
            deferred: None,
            last_outcome: Some(UpdateOutcome {
                generation: 2,
                finished_at: UnixMillis(T0.0 - 60_000),
                result: UpdateResult::RolledBack {
                    reason: s("service web not healthy within 60s"),
                    service: Some(service("web")),
                    log_tail: vec![s("listening on :8080"), s("panic: config missing")],
                },
            }),
        },
        inventory: Some(inventory()),
        seal_key: Some(SealKey([0x11; 32])),
        agent: Some(AgentVersions {
            running: s("0.2.0"),
            committed: Some(s("0.2.0")),
            trial: None,
            failed: Some(AgentUpdateFailure {
                version: s("0.3.0"),
                reason: s("it did not commit in 3 starts"),
                at: UnixMillis(T0.0 - 30_000),
            }),
            failed_log: vec![s(
                "ERROR fleet_agent::link: cannot connect: broker refused the certificate",
            )],
            installed: Some(s("0.1.0")),
        }),
        seal_key_proof: Some(format!("3045022100{}0220{}", "ab".repeat(32), "cd".repeat(32))),
    }
}

/// A telemetry batch of three points.
pub fn telemetry() -> TelemetryBatch {
    TelemetryBatch {
        device: device(),
        first_seq: 1000,
        dropped_total: 2,
        points: vec![
            Point {
                at: T0,
                metric: s("host.cpu.percent"),
                value: Value::F64(12.5),
                labels: BTreeMap::new(),
            },
            Point {
                at: T0,
                metric: s("host.disk.available_bytes"),
                value: Value::I64(40 << 30),
                labels: map(&[("mount", "/")]),
            },
            Point {
                at: T0,
                metric: s("app.motor.enabled"),
                value: Value::Bool(true),
                labels: map(&[("service", "lidar")]),
            },
        ],
    }
}

/// Acknowledgement of [`telemetry`].
pub fn telemetry_ack() -> TelemetryAck {
    TelemetryAck { first: 1000, last: 1002 }
}

/// A rollback event.
pub fn event() -> Event {
    Event {
        device: device(),
        at: T0,
        severity: Severity::Error,
        kind: EventKind::UpdateRolledBack,
        message: s("release robot-stack@1.4.3 rolled back: web not healthy within 60s"),
        fields: map(&[("generation", "4"), ("service", "web")]),
    }
}

/// An online status.
pub fn status() -> Status {
    Status { device: device(), presence: Presence::Online, agent_version: s("0.1.0"), since: T0 }
}

/// A fetch-logs command.
pub fn command() -> Command {
    Command {
        id: 77,
        device: device(),
        issued_at: T0,
        deadline: UnixMillis(T0.0 + 300_000),
        action: CommandAction::FetchLogs { service: service("web"), tail: 50 },
    }
}

/// [`command`] signed with [`server_key`].
pub fn signed_command() -> Signed {
    server_key().sign(&command())
}

/// The result of [`command`].
pub fn command_result() -> CommandResult {
    CommandResult {
        id: 77,
        device: device(),
        finished_at: UnixMillis(T0.0 + 1200),
        outcome: CommandOutcome::Done { output: vec![s("GET /health 200"), s("GET /version 200")] },
    }
}
