//! The Engine API's JSON, only the fields the agent sends or reads (field names as the API
//! spells them; everything else in an answer is skipped unread).
//!
//! Sent: [`ContainerCreateBody`] and what it holds, network create and connect. Read: container
//! inspect and list, events, one-shot stats, pull progress, images, networks, volumes, version
//! and info. Every read field is optional or defaulted: engines differ (Docker 20.10 to 29,
//! Podman's compatible API) in what they fill in, and a missing field must not fail a call.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize, Serializer};

// ---- sent: a container's create body ----

/// `POST /containers/create`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerCreateBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<HashMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domainname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tty: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_stdin: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// Seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_timeout: Option<i64>,
    /// `port/proto` keys; the API wants them as an object of empty objects.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "as_empty_objects")]
    pub exposed_ports: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<HealthConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_config: Option<HostConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub networking_config: Option<NetworkingConfig>,
}

fn as_empty_objects<S: Serializer>(keys: &Option<Vec<String>>, s: S) -> Result<S::Ok, S::Error> {
    let empty = serde_json::Map::new();
    s.collect_map(keys.iter().flatten().map(|k| (k, &empty)))
}

/// The container's healthcheck; durations in nanoseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retries: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_period: Option<i64>,
}

/// Published ports by `port/proto`.
pub type PortMap = HashMap<String, Option<Vec<PortBinding>>>;

/// One host address a container port is published on (in create and in inspect).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PortBinding {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub host_ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub host_port: Option<String>,
}

/// What the engine does to the container's process: resources, security, mounts, namespaces.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct HostConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_mode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port_bindings: Option<PortMap>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mounts: Option<Vec<Mount>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<RestartPolicy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_reservation: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_swap: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nano_cpus: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpuset_cpus: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pids_limit: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ulimits: Option<Vec<Ulimit>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shm_size: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub privileged: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cap_add: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cap_drop: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub readonly_rootfs: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub security_opt: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_shares: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub devices: Option<Vec<DeviceMapping>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_cgroup_rules: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_requests: Option<Vec<DeviceRequest>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_realtime_runtime: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_add: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid_mode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipc_mode: Option<String>,
    #[serde(rename = "UTSMode", skip_serializing_if = "Option::is_none")]
    pub uts_mode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init: Option<bool>,
    /// `name:address` lines for `/etc/hosts`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extra_hosts: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns_search: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns_options: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sysctls: Option<HashMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_period: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_quota: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oom_score_adj: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blkio_weight: Option<u16>,
}

/// A volume, bind or tmpfs mount.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Mount {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(rename = "Type", skip_serializing_if = "Option::is_none")]
    pub typ: Option<MountType>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume_options: Option<MountVolumeOptions>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tmpfs_options: Option<MountTmpfsOptions>,
}

/// The kinds of mount the agent makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MountType {
    Bind,
    Volume,
    Tmpfs,
}

/// Applied when the engine creates the named volume.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct MountVolumeOptions {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<HashMap<String, String>>,
}

/// A tmpfs's size.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct MountTmpfsOptions {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<i64>,
}

/// A GPU request (`--gpus`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DeviceRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<i64>,
    #[serde(rename = "DeviceIDs", skip_serializing_if = "Option::is_none")]
    pub device_ids: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Vec<Vec<String>>>,
}

/// A device node (`--device`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DeviceMapping {
    pub path_on_host: Option<String>,
    pub path_in_container: Option<String>,
    pub cgroup_permissions: Option<String>,
}

/// A resource limit (`--ulimit`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Ulimit {
    pub name: Option<String>,
    pub soft: Option<i64>,
    pub hard: Option<i64>,
}

/// The engine's restart policy.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RestartPolicy {
    pub name: Option<RestartPolicyName>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maximum_retry_count: Option<i64>,
}

/// The engine's restart policy names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicyName {
    No,
    Always,
    UnlessStopped,
    OnFailure,
}

/// The networks a container joins at create (one, on API 1.41).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkingConfig {
    pub endpoints_config: Option<HashMap<String, EndpointSettings>>,
}

/// A container's endpoint on one network: the names it answers to there.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct EndpointSettings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aliases: Option<Vec<String>>,
}

// ---- sent: networks ----

/// `POST /networks/create`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkCreate<'a> {
    pub name: &'a str,
    pub driver: &'a str,
    /// Refuse a second network of the same name (409) on engines before API 1.44, which
    /// otherwise create it; newer engines always refuse and ignore this.
    pub check_duplicate: bool,
    pub labels: &'a BTreeMap<String, String>,
}

/// `POST /networks/{id}/connect`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkConnect<'a> {
    pub container: &'a str,
    pub endpoint_config: EndpointSettings,
}

// ---- read ----

/// `GET /version` (only what the agent reports and negotiates with).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Version {
    pub version: Option<String>,
    pub api_version: Option<String>,
}

/// `GET /info`: where the engine keeps its data, and the runtimes it has.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Info {
    pub docker_root_dir: Option<String>,
    /// By name; what each holds (its path, options) is not read.
    pub runtimes: Option<HashMap<String, serde::de::IgnoredAny>>,
}

/// `POST /containers/create`'s answer.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Created {
    pub id: String,
    pub warnings: Option<Vec<String>>,
}

/// One entry of `GET /containers/json`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ContainerSummary {
    pub id: Option<String>,
}

/// `GET /containers/{id}/json`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ContainerInspect {
    pub id: Option<String>,
    pub name: Option<String>,
    /// The local image id.
    pub image: Option<String>,
    pub restart_count: Option<i64>,
    pub state: Option<ContainerStateView>,
    pub config: Option<ContainerConfigView>,
    pub network_settings: Option<NetworkSettings>,
}

/// The container's state as inspect tells it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ContainerStateView {
    /// `created`, `running`, `paused`, `restarting`, `removing`, `exited`, `dead` (or empty
    /// on old engines, which then say it with the booleans).
    pub status: Option<String>,
    pub running: Option<bool>,
    pub paused: Option<bool>,
    pub restarting: Option<bool>,
    #[serde(rename = "OOMKilled")]
    pub oom_killed: Option<bool>,
    pub dead: Option<bool>,
    pub exit_code: Option<i64>,
    pub started_at: Option<String>,
    pub health: Option<HealthView>,
}

/// The engine's healthcheck verdict.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct HealthView {
    /// `none`, `starting`, `healthy`, `unhealthy`.
    pub status: Option<String>,
}

/// The container's configuration as inspect tells it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ContainerConfigView {
    /// The reference given at create.
    pub image: Option<String>,
    pub labels: Option<HashMap<String, String>>,
    /// Seconds a stop waits before SIGKILL, if the container was created with its own.
    pub stop_timeout: Option<i64>,
}

/// Where the container is reachable.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct NetworkSettings {
    pub networks: Option<HashMap<String, NetworkEndpoint>>,
    pub ports: Option<PortMap>,
}

/// The container on one network.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct NetworkEndpoint {
    #[serde(rename = "IPAddress")]
    pub ip_address: Option<String>,
}

/// One event of `GET /events`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct EventMessage {
    #[serde(rename = "Action")]
    pub action: Option<String>,
    #[serde(rename = "Actor")]
    pub actor: Option<EventActor>,
    #[serde(rename = "timeNano")]
    pub time_nano: Option<i64>,
}

/// What an event is about.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct EventActor {
    #[serde(rename = "ID")]
    pub id: Option<String>,
    #[serde(rename = "Attributes")]
    pub attributes: Option<HashMap<String, String>>,
}

/// `GET /containers/{id}/stats?stream=false&one-shot=true` (snake_case in the API).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ContainerStatsResponse {
    pub cpu_stats: Option<CpuStats>,
    pub memory_stats: Option<MemoryStats>,
    pub pids_stats: Option<PidsStats>,
    pub networks: Option<HashMap<String, NetworkStats>>,
}

/// Cumulative CPU time.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct CpuStats {
    pub cpu_usage: Option<CpuUsage>,
}

/// CPU time in nanoseconds.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct CpuUsage {
    pub total_usage: Option<u64>,
}

/// Memory use, its limit and the cgroup's counters.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct MemoryStats {
    pub usage: Option<u64>,
    pub limit: Option<u64>,
    pub stats: Option<HashMap<String, u64>>,
}

/// Processes in the container.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct PidsStats {
    pub current: Option<u64>,
}

/// Bytes through one interface.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct NetworkStats {
    pub rx_bytes: Option<u64>,
    pub tx_bytes: Option<u64>,
}

/// One line of `POST /images/create` (pull progress).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct CreateImageInfo {
    pub id: Option<String>,
    pub status: Option<String>,
    /// Set when the pull failed part-way; the stream then ends.
    pub error: Option<String>,
    #[serde(rename = "errorDetail")]
    pub error_detail: Option<ErrorDetail>,
    #[serde(rename = "progressDetail")]
    pub progress_detail: Option<ProgressDetail>,
}

/// Why a pull failed, in its stream.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ErrorDetail {
    pub message: Option<String>,
}

/// A layer's progress.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ProgressDetail {
    pub current: Option<i64>,
    pub total: Option<i64>,
}

/// One entry of `GET /images/json`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ImageSummary {
    pub repo_digests: Option<Vec<String>>,
}

/// One entry of `GET /networks`, or a volume of `GET /volumes`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct NamedObject {
    pub name: Option<String>,
    pub labels: Option<HashMap<String, String>>,
}

/// `GET /volumes`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct VolumeList {
    pub volumes: Option<Vec<NamedObject>>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    #[test]
    fn a_create_body_uses_the_apis_names_and_leaves_out_what_is_unset() {
        let body = ContainerCreateBody {
            image: Some("reg/web@sha256:x".into()),
            exposed_ports: Some(vec!["8080/tcp".into()]),
            host_config: Some(HostConfig {
                uts_mode: Some("host".into()),
                restart_policy: Some(RestartPolicy {
                    name: Some(RestartPolicyName::UnlessStopped),
                    maximum_retry_count: None,
                }),
                mounts: Some(vec![Mount { typ: Some(MountType::Tmpfs), ..Default::default() }]),
                device_requests: Some(vec![DeviceRequest {
                    device_ids: Some(vec!["0".into()]),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(&body).unwrap(),
            json!({
                "Image": "reg/web@sha256:x",
                "ExposedPorts": { "8080/tcp": {} },
                "HostConfig": {
                    "UTSMode": "host",
                    "RestartPolicy": { "Name": "unless-stopped" },
                    "Mounts": [{ "Type": "tmpfs" }],
                    "DeviceRequests": [{ "DeviceIDs": ["0"] }],
                },
            })
        );
    }

    #[test]
    fn answers_decode_with_fields_missing_null_or_unknown() {
        let inspect: ContainerInspect = serde_json::from_value(json!({
            "Id": "abc",
            "State": { "Status": "exited", "ExitCode": 137, "OOMKilled": true, "Health": null },
            "Config": { "Labels": null, "Unknown": [1, 2] },
            "NetworkSettings": { "Ports": { "80/tcp": null }, "Networks": { "n": { "IPAddress": "" } } },
            "Platform": "linux",
        }))
        .unwrap();
        let state = inspect.state.unwrap();
        assert_eq!(
            (state.status.as_deref(), state.exit_code, state.oom_killed),
            (Some("exited"), Some(137), Some(true))
        );
        let event: EventMessage = serde_json::from_value(json!({
            "Type": "container", "Action": "die", "timeNano": 5,
            "Actor": { "ID": "abc", "Attributes": { "exitCode": "1" } },
        }))
        .unwrap();
        assert_eq!(event.actor.unwrap().attributes.unwrap()["exitCode"], "1");
        let progress: CreateImageInfo =
            serde_json::from_value(json!({ "errorDetail": { "message": "manifest unknown" }, "error": "manifest unknown" }))
                .unwrap();
        assert_eq!(progress.error.as_deref(), Some("manifest unknown"));
    }
}
