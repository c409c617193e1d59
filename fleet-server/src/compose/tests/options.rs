//! The keys that become a service's container options: each Compose form read, each bad value
//! refused at the key it came from.

use std::collections::BTreeMap;
use std::time::Duration;

use fleet_proto::release::{ContainerOptions, HostEntry};

use super::{refused, svc};

#[test]
fn process_naming_and_kernel_keys_become_the_services_options() {
    let s = svc(r#"init: true
tty: true
stdin_open: true
stop_signal: SIGINT
stop_grace_period: 1m30s
hostname: robot-7
domainname: fleet.example
extra_hosts:
  - "plc:192.168.1.20"
  - "db=10.0.0.5"
  - "v6:[fd00::1]"
  - "host.docker.internal:host-gateway"
dns: 10.0.0.53
dns_search: [lab.example, fleet.example]
dns_opt: [ndots:2, edns0]
sysctls:
  net.core.somaxconn: 1024
  net.ipv4.tcp_syncookies: "0"
cpu_period: 100000
cpu_quota: 50000
oom_score_adj: 500
blkio_config:
  weight: 300
runtime: nvidia
"#);
    let host = |name: &str, address: &str| HostEntry { name: name.into(), address: address.into() };
    assert_eq!(
        s.options,
        ContainerOptions {
            init: true,
            tty: true,
            stdin_open: true,
            stop_signal: Some("SIGINT".into()),
            stop_grace: Some(Duration::from_secs(90)),
            hostname: Some("robot-7".into()),
            domainname: Some("fleet.example".into()),
            extra_hosts: vec![
                host("plc", "192.168.1.20"),
                host("db", "10.0.0.5"),
                host("v6", "fd00::1"),
                host("host.docker.internal", "host-gateway"),
            ],
            dns: vec!["10.0.0.53".into()],
            dns_search: vec!["lab.example".into(), "fleet.example".into()],
            dns_options: vec!["ndots:2".into(), "edns0".into()],
            sysctls: BTreeMap::from([
                ("net.core.somaxconn".into(), "1024".into()),
                ("net.ipv4.tcp_syncookies".into(), "0".into()),
            ]),
            cpu_period_us: Some(100_000),
            cpu_quota_us: Some(50_000),
            oom_score_adj: Some(500),
            blkio_weight: Some(300),
            runtime: Some("nvidia".into()),
        }
    );
}

#[test]
fn the_list_and_map_forms_of_extra_hosts_and_sysctls_agree() {
    let list = svc("extra_hosts: [\"plc=192.168.1.20\"]\nsysctls: [\"net.core.somaxconn=1024\"]");
    let map = svc("extra_hosts:\n  plc: 192.168.1.20\nsysctls:\n  net.core.somaxconn: 1024");
    assert_eq!(list.options, map.options);
    assert_eq!(list.options.extra_hosts[0].address, "192.168.1.20");
}

#[test]
fn a_service_without_these_keys_has_no_options() {
    assert_eq!(svc("restart: always").options, ContainerOptions::default());
}

#[test]
fn bad_values_are_refused_at_their_key_with_the_rule() {
    let cases = [
        ("stop_signal: SIGNOPE", "services.s.stop_signal", "not a signal"),
        ("stop_grace_period: 2h", "services.s.stop_grace_period", "longer than the most"),
        ("hostname: -robot", "services.s.hostname", "not a host name"),
        ("extra_hosts: [plc]", "services.s.extra_hosts[0]", "HOST:IP"),
        ("extra_hosts: [\"plc:nowhere\"]", "services.s.extra_hosts", "not an IP address"),
        ("dns: [8.8.8]", "services.s.dns", "not an IP address"),
        ("sysctls: {vm.swappiness: 10}", "services.s.sysctls", "would change the whole device"),
        ("sysctls: [\"net.core.somaxconn\"]", "services.s.sysctls[0]", "NAME=VALUE"),
        ("cpu_period: 10", "services.s.cpu_period", "outside 1000 to 1000000"),
        ("cpus: 0.5\ncpu_quota: 50000", "services.s.cpu_quota", "cannot be set with cpus"),
        ("oom_score_adj: 5000", "services.s.oom_score_adj", "outside -1000 to 1000"),
        ("blkio_config: {weight: 5}", "services.s.blkio_config", "outside 10 to 1000"),
        (
            "blkio_config: {device_read_bps: [{path: /dev/sda, rate: 1mb}]}",
            "services.s.blkio_config.device_read_bps",
            "names the device's own disks",
        ),
        ("init: sometimes", "services.s.init", "true or false"),
    ];
    for (body, path, words) in cases {
        let reason = refused(body, path);
        assert!(reason.contains(words), "{body}: {reason}");
    }
}

#[test]
fn a_sysctl_for_the_hosts_network_is_refused_with_host_networking() {
    let reason =
        refused("network_mode: host\nsysctls: {net.core.somaxconn: 1024}", "services.s.sysctls");
    assert!(reason.contains("uses the host network"), "{reason}");
}

#[test]
fn keys_still_out_of_the_subset_say_what_to_use_instead() {
    assert!(
        refused("cpu_rt_runtime: 95000", "services.s.cpu_rt_runtime").contains("realtime_priority")
    );
    assert!(refused("cpu_count: 2", "services.s.cpu_count").contains("Windows"));
    assert!(refused("attach: false", "services.s.attach").contains("unattended"));
}
