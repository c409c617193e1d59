#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use fleet_proto::release::*;
use fleet_proto::{ImageRef, ReleaseSpec, ServiceSpec};

use super::*;

/// A deterministic digest per reference: what the registry resolver would hand back.
pub(crate) fn fake_images(compose: &Compose) -> BTreeMap<String, ImageRef> {
    compose
        .images()
        .into_iter()
        .map(|u| {
            let name = u.reference.split('@').next().unwrap();
            let slash = name.rfind('/').map_or(0, |i| i + 1);
            let repo = match name[slash..].find(':') {
                Some(i) => &name[..slash + i],
                None => name,
            };
            let mut hex = String::new();
            for salt in 0..4u8 {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                (salt, &u.reference).hash(&mut h);
                hex.push_str(&format!("{:016x}", h.finish()));
            }
            let image =
                ImageRef::parse(&format!("{}@sha256:{hex}", repo.to_ascii_lowercase())).unwrap();
            (u.reference, image)
        })
        .collect()
}

fn parse(yaml: &str) -> Result<Compose, Vec<ComposeProblem>> {
    Compose::parse(yaml.as_bytes(), &BTreeMap::new())
}

fn release(yaml: &str) -> ReleaseSpec {
    let compose = parse(yaml).unwrap_or_else(|e| panic!("refused: {e:#?}"));
    let images = fake_images(&compose);
    compose.into_release("app", "1.0", &images).unwrap_or_else(|e| panic!("invalid: {e:#?}"))
}

/// The first service of a file with one service `s`.
fn svc(body: &str) -> ServiceSpec {
    let yaml = format!("services:\n  s:\n    image: busybox:1.36\n{}", indent(body, 4));
    release(&yaml).services.remove(0)
}

fn indent(body: &str, n: usize) -> String {
    body.lines().map(|l| format!("{}{l}\n", " ".repeat(n))).collect()
}

fn problems(yaml: &str) -> Vec<ComposeProblem> {
    match parse(yaml) {
        Err(p) => p,
        Ok(c) => {
            let images = fake_images(&c);
            c.into_release("app", "1.0", &images).err().unwrap_or_default()
        }
    }
}

/// The reason of the problem at `path` in a one-service file; panics when there is none.
fn refused(body: &str, path: &str) -> String {
    let yaml = format!("services:\n  s:\n    image: busybox:1.36\n{}", indent(body, 4));
    refused_file(&yaml, path)
}

fn refused_file(yaml: &str, path: &str) -> String {
    let found = problems(yaml);
    found
        .iter()
        .find(|p| p.path == path)
        .unwrap_or_else(|| panic!("no problem at {path}; got {found:#?}"))
        .reason
        .clone()
}

#[test]
fn a_minimal_file_converts_with_device_friendly_defaults() {
    let r = release("services:\n  web:\n    image: nginx:1.27\n");
    assert_eq!(r.id.as_str(), "app@1.0");
    let web = &r.services[0];
    assert_eq!(web.name.as_str(), "web");
    assert_eq!(web.image.repository(), "nginx");
    assert_eq!(web.restart, RestartPolicy::Always);
    assert_eq!(web.update, UpdateStrategy::StartFirst);
    assert_eq!(web.health_deadline, Duration::from_secs(60));
    assert_eq!(web.network_mode, NetworkMode::Release);
}

#[test]
fn images_are_listed_with_their_paths_for_resolution() {
    let c =
        parse("services:\n  a:\n    image: x/a:1\n  b:\n    image: ${REG:-r.io}/b:2\n").unwrap();
    let uses = c.images();
    assert_eq!(uses.len(), 2);
    assert_eq!(uses[1].path, "services.b.image");
    assert_eq!(uses[1].reference, "r.io/b:2");
    assert_eq!(uses[1].service.as_str(), "b");
}

#[test]
fn an_unresolved_image_is_a_problem_at_its_path() {
    let c = parse("services:\n  a:\n    image: x/a:1\n").unwrap();
    let err = c.into_release("app", "1", &BTreeMap::new()).unwrap_err();
    assert_eq!(err[0].path, "services.a.image");
}

#[test]
fn bad_app_or_version_is_refused_with_a_clear_message() {
    let c = parse("services:\n  a:\n    image: x/a:1\n").unwrap();
    let images = fake_images(&c);
    let err = c.clone().into_release("my app", "1.0", &images).unwrap_err();
    assert!(err[0].reason.contains("' '"), "{err:?}");
    let err = c.clone().into_release("app", "1@2", &images).unwrap_err();
    assert_eq!(err[0].path, "version");
    let err = c.into_release("", "1", &images).unwrap_err();
    assert_eq!(err[0].path, "app");
}

#[test]
fn every_problem_is_reported_not_just_the_first() {
    let found = problems(
        "services:\n  a:\n    build: .\n    image: x\n    env_file: .env\n  b:\n    image: y\n    ports: [\"80\"]\n",
    );
    let paths: Vec<&str> = found.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(paths, ["services.a.build", "services.a.env_file", "services.b.ports[0]"]);
    assert!(found.iter().all(|p| p.line.is_some()), "{found:#?}");
    assert_eq!(found[0].to_string(), format!("services.a.build: {}", found[0].reason));
}

#[test]
fn a_build_section_is_refused_with_its_path() {
    assert!(refused("build: .", "services.s.build").contains("build and push it"));
}

#[test]
fn env_file_is_refused_because_the_file_is_not_on_the_device() {
    assert!(refused("env_file: .env", "services.s.env_file")
        .contains("put the variables under environment"));
}

#[test]
fn unknown_and_unsupported_service_keys_are_refused_with_reasons() {
    assert!(refused("container_name: web", "services.s.container_name").contains("side by side"));
    assert!(refused("logging: {driver: json-file}", "services.s.logging").contains("logs"));
    assert!(refused("secrets: [db]", "services.s.secrets[0]").contains("not declared"));
    assert!(refused("frobnicate: 1", "services.s.frobnicate").contains("COMPOSE.md"));
}

#[test]
fn a_service_without_image_is_refused() {
    assert!(refused_file("services:\n  s:\n    command: x\n", "services.s").contains("no image"));
}

#[test]
fn service_names_must_be_dns_labels() {
    assert!(refused_file("services:\n  my.svc:\n    image: x\n", "services[\"my.svc\"]")
        .contains("DNS"));
}

#[test]
fn top_level_keys_outside_the_subset_are_refused_and_informational_ones_ignored() {
    let yaml = "version: \"3.8\"\nname: demo\nx-anything: {a: 1}\nnetworks: {front: {}}\nsecrets: {db: {file: ./db}}\nconfigs: {}\ninclude: [a.yaml]\nservices:\n  s:\n    image: x\n";
    assert!(refused_file(yaml, "secrets.db.file").contains("fleetctl secret set db < file"));
    assert!(refused_file(yaml, "configs").contains("not supported yet"));
    assert!(refused_file(yaml, "include").contains("self-contained"));
    assert_eq!(problems(yaml).len(), 3);
}

fn secrets_of(yaml: &str) -> Vec<(String, Vec<SecretMount>)> {
    release(yaml).services.iter().map(|s| (s.name.to_string(), s.secrets.clone())).collect()
}

fn mount(source: &str, target: &str, uid: Option<u32>, gid: Option<u32>, mode: u32) -> SecretMount {
    SecretMount { source: source.into(), target: target.into(), uid, gid, mode }
}

#[test]
fn secrets_come_from_the_store_in_short_and_long_syntax() {
    let yaml = "services:\n  db:\n    image: x\n    secrets:\n      - db_password\n      - source: tls\n        target: /etc/ssl/key.pem\n        uid: \"103\"\n        gid: 104\n        mode: 0440\n      - {source: api, mode: \"0o400\"}\n      - {source: api, target: api2, mode: \"600\"}\n      - {source: api, target: api3, mode: 0o440}\nsecrets:\n  db_password: {}\n  tls: {external: true}\n  api: {name: robot-api-key}\n";
    let got = secrets_of(yaml);
    assert_eq!(
        got[0].1,
        [
            mount("db_password", "db_password", None, None, 0),
            // Unquoted 0440 is octal, as docker compose reads it.
            mount("tls", "/etc/ssl/key.pem", Some(103), Some(104), 0o440),
            // name: maps the Compose key to the store's name; the file keeps the key's name.
            mount("robot-api-key", "api", None, None, 0o400),
            mount("robot-api-key", "api2", None, None, 0o600),
            // A YAML 1.2 octal number is the number it is.
            mount("robot-api-key", "api3", None, None, 0o440),
        ]
    );
    assert_eq!(got[0].1[0].container_path(), "/run/secrets/db_password");
    assert_eq!(got[0].1[0].file_mode(), 0o444);
}

#[test]
fn unquoted_octal_modes_reach_the_converter_as_text() {
    // serde-saphyr with leading_zero_numbers_as_strings: `0440` stays "0440", so it is read
    // as octal and never as decimal 440 (0o670).
    let node = yaml::parse(b"mode: 0440\nplain: 440\n").unwrap();
    let map = node.as_map().unwrap();
    assert_eq!(map[0].1.as_str(), Some("0440"));
    assert_eq!(map[1].1.value, Value::Int(440));
}

#[test]
fn secret_values_in_the_file_undeclared_names_and_bad_fields_are_refused_with_paths() {
    let top = |decl: &str| {
        format!("services:\n  s:\n    image: x\n    secrets: [k]\nsecrets:\n  k: {decl}\n")
    };
    let why = refused_file(&top("{file: ./k.txt}"), "secrets.k.file");
    assert!(
        why.contains("never go in the Compose file")
            && why.contains("fleetctl secret set k < file"),
        "{why}"
    );
    assert!(refused_file(&top("{environment: K}"), "secrets.k.environment")
        .contains("fleetctl secret set"));
    assert!(refused_file(&top("{external: false}"), "secrets.k.external").contains("file:"));
    assert!(refused_file(&top("{name: \"a/b\"}"), "secrets.k.name").contains("not a secret name"));
    assert!(refused_file(&top("{driver: x}"), "secrets.k.driver").contains("not supported"));
    let why = refused("secrets: [nope]", "services.s.secrets[0]");
    assert!(
        why.contains("service s") && why.contains("\"nope\"") && why.contains("not declared"),
        "{why}"
    );
    let with = |items: &str| {
        format!("services:\n  s:\n    image: x\n    secrets: {items}\nsecrets:\n  k: {{}}\n")
    };
    assert!(refused_file(&with("[{target: x}]"), "services.s.secrets[0]").contains("source"));
    assert!(refused_file(&with("[{source: k, mode: \"0999\"}]"), "services.s.secrets[0].mode")
        .contains("octal"));
    assert!(refused_file(&with("[{source: k, mode: 0o1777}]"), "services.s.secrets[0].mode")
        .contains("0777"));
    assert!(refused_file(&with("[{source: k, uid: root}]"), "services.s.secrets[0].uid")
        .contains("whole number"));
    assert!(refused_file(&with("[{source: k, frob: 1}]"), "services.s.secrets[0].frob")
        .contains("unknown"));
    // The spec's own rules, translated back to the file's path.
    assert!(!refused_file(&with("[{source: k, target: ../etc/passwd}]"), "services.s.secrets[0]")
        .is_empty());
    assert!(!refused_file(&with("[k, {source: k}]"), "services.s.secrets[1]").is_empty());
}

#[test]
fn a_root_that_is_not_a_mapping_or_has_no_services_is_refused() {
    assert!(refused_file("- a\n- b\n", "(file)").contains("a list"));
    assert!(refused_file("hello", "(file)").contains("a string"));
    assert!(refused_file("", "(file)").contains("null"));
    assert!(refused_file("volumes: {}\n", "services").contains("at least one"));
    assert!(refused_file("services: {}\n", "services").contains("at least one"));
}

#[test]
fn command_and_entrypoint_strings_are_split_and_lists_kept() {
    let s = svc("command: sh -c 'echo \"a b\"; sleep 5'\nentrypoint: [\"/init\", \"--\"]");
    assert_eq!(s.command, ["sh", "-c", "echo \"a b\"; sleep 5"]);
    assert_eq!(s.entrypoint, Some(vec!["/init".to_owned(), "--".to_owned()]));
    assert_eq!(svc("command: [\"serve\", 8080]").command, ["serve", "8080"]);
    assert_eq!(
        svc("entrypoint: \"\"").entrypoint,
        Some(vec![]),
        "an empty entrypoint clears the image's"
    );
    assert!(refused("command: \"echo 'oops\"", "services.s.command").contains("unterminated"));
}

#[test]
fn environment_as_map_or_list_becomes_the_env() {
    let s = svc("environment:\n  A: 1\n  B: \"two\"\n  C: true\n  D: \"\"");
    assert_eq!(s.env["A"], "1");
    assert_eq!(s.env["C"], "true");
    assert_eq!(s.env["D"], "");
    let s = svc("environment:\n  - A=1\n  - B=x=y\n  - C=");
    assert_eq!(s.env["B"], "x=y");
    assert_eq!(s.env["C"], "");
}

#[test]
fn an_environment_variable_without_a_value_is_refused() {
    assert!(refused("environment:\n  - TOKEN", "services.s.environment[0]")
        .contains("no shell environment"));
    assert!(refused("environment:\n  TOKEN:", "services.s.environment.TOKEN")
        .contains("no shell environment"));
    assert!(
        refused("environment:\n  - A=1\n  - A=2", "services.s.environment[1]").contains("twice")
    );
}

#[test]
fn labels_as_map_or_list_and_fleet_labels_refused() {
    let s = svc("labels:\n  traefik.enable: \"true\"\n  team: robots");
    assert_eq!(s.labels["traefik.enable"], "true");
    assert_eq!(svc("labels: [\"a=b\", \"flag\"]").labels["flag"], "");
    assert!(refused("labels:\n  io.fleet.release: x", "services.s.labels[\"io.fleet.release\"]")
        .contains("belong to the agent"));
}

#[test]
fn working_dir_user_and_security_keys_map() {
    let s = svc("working_dir: /srv\nuser: 1000\nprivileged: true\nread_only: true\ncap_add: [SYS_NICE]\ncap_drop: [ALL]\ngroup_add: [dialout, 44]");
    assert_eq!(s.working_dir.as_deref(), Some("/srv"));
    assert_eq!(s.security.user.as_deref(), Some("1000"));
    assert!(s.security.privileged && s.security.read_only_rootfs);
    assert_eq!(s.security.cap_add, ["SYS_NICE"]);
    assert_eq!(s.security.cap_drop, ["ALL"]);
    assert_eq!(s.group_add, ["dialout", "44"]);
    assert!(refused("cap_add: [sys nice]", "services.s.cap_add[0]").contains("capability"));
    assert!(refused("working_dir: srv", "services.s.working_dir").contains("absolute"));
}

#[test]
fn volumes_in_short_syntax_map_to_named_and_host_mounts() {
    let yaml = "services:\n  s:\n    image: x\n    volumes:\n      - data:/var/lib/data\n      - /proc:/host/proc:ro\n      - /srv/cfg:/cfg:rw\n      - logs:/logs:ro,cached\nvolumes:\n  data:\n  logs:\n    name: app-logs\n";
    let v = &release(yaml).services[0].volumes;
    assert_eq!(
        v[0],
        VolumeMount {
            source: VolumeSource::Named("app_data".into()),
            target: "/var/lib/data".into(),
            read_only: false
        }
    );
    assert_eq!(
        v[1],
        VolumeMount {
            source: VolumeSource::HostPath("/proc".into()),
            target: "/host/proc".into(),
            read_only: true
        }
    );
    assert!(!v[2].read_only);
    assert_eq!(v[3].source, VolumeSource::Named("app-logs".into()));
    assert!(v[3].read_only);
}

#[test]
fn services_join_declared_networks_with_aliases_and_default_alone_otherwise() {
    let yaml = "services:\n  mqtt:\n    image: x\n    networks:\n      default:\n      backend: {aliases: [broker, mosquitto]}\n  gateway:\n    image: x\n    networks: [backend]\n  ui:\n    image: x\nnetworks:\n  backend: {driver: bridge}\n";
    let r = release(yaml);
    let by_name = |n: &str| r.services.iter().find(|s| s.name.as_str() == n).unwrap();
    let mqtt = by_name("mqtt");
    assert_eq!(
        mqtt.networks,
        [
            NetworkAttachment { name: "default".into(), aliases: vec![] },
            NetworkAttachment {
                name: "backend".into(),
                aliases: vec!["broker".into(), "mosquitto".into()]
            },
        ]
    );
    assert_eq!(by_name("gateway").networks[0].name, "backend");
    // No networks key: the release's default network, as under Compose.
    assert!(by_name("ui").networks.is_empty());
    assert_eq!(by_name("ui").release_networks()[0].name, "default");
}

#[test]
fn network_mistakes_are_refused_with_their_paths() {
    assert!(refused("networks: [front]", "services.s.networks[0]").contains("not declared"));
    assert!(refused(
        "networks: {default: {aliases: [\"a b\"]}}",
        "services.s.networks.default.aliases[0]"
    )
    .contains("DNS"));
    assert!(refused(
        "networks: {default: {ipv4_address: 10.0.0.2}}",
        "services.s.networks.default.ipv4_address"
    )
    .contains("by name"));
    assert!(refused("network_mode: host\nnetworks: [default]", "services.s.networks")
        .contains("exclude each other"));
    let file = |top: &str| format!("services:\n  s:\n    image: x\nnetworks:\n  {top}\n");
    assert!(refused_file(&file("n: {external: true}"), "networks.n.external").contains("owns"));
    assert!(refused_file(&file("n: {driver: macvlan}"), "networks.n.driver").contains("bridge"));
    assert!(refused_file(&file("\"-n\": {}"), "networks.-n").contains("network name"));
}

#[test]
fn named_volumes_belong_to_the_app_unless_named_exactly() {
    let yaml = "services:\n  s:\n    image: x\n    volumes: [\"data:/d\", \"shared:/s\"]\nvolumes:\n  data: {}\n  shared: {name: site-maps}\n";
    let r = Compose::parse(yaml.as_bytes(), &BTreeMap::new()).unwrap();
    let images = fake_images(&r);
    let v = r.into_release("robot", "2", &images).unwrap().services[0].volumes.clone();
    assert_eq!(v[0].source, VolumeSource::Named("robot_data".into()));
    assert_eq!(v[1].source, VolumeSource::Named("site-maps".into()));
}

#[test]
fn relative_host_paths_undeclared_and_anonymous_volumes_are_refused() {
    assert!(refused("volumes: [\"./conf:/etc/app\"]", "services.s.volumes[0]")
        .contains("does not exist on the device"));
    assert!(refused("volumes: [\"~/x:/x\"]", "services.s.volumes[0]").contains("relative"));
    assert!(refused("volumes: [\"data:/data\"]", "services.s.volumes[0]").contains("not declared"));
    assert!(refused("volumes: [\"/data\"]", "services.s.volumes[0]").contains("anonymous"));
    assert!(refused("volumes: [\"/a:rel\"]", "services.s.volumes[0]").contains("absolute"));
    assert!(refused("volumes: [\"/a:/b:z\"]", "services.s.volumes[0]").contains("\"z\""));
}

#[test]
fn volumes_in_long_syntax_map_volume_bind_and_tmpfs() {
    let yaml = "services:\n  s:\n    image: x\n    volumes:\n      - {type: volume, source: data, target: /data}\n      - {type: bind, source: /dev/shm, target: /dev/shm, read_only: true, bind: {create_host_path: false}}\n      - {type: tmpfs, target: /cache, tmpfs: {size: 64m}}\nvolumes: {data: {}}\n";
    let v = &release(yaml).services[0].volumes;
    assert_eq!(v[0].source, VolumeSource::Named("app_data".into()));
    assert_eq!(v[1].source, VolumeSource::HostPath("/dev/shm".into()));
    assert!(v[1].read_only);
    assert_eq!(v[2].source, VolumeSource::Tmpfs { size_bytes: 64 << 20 });
    assert!(refused(
        "volumes: [{type: npipe, source: x, target: /x}]",
        "services.s.volumes[0].type"
    )
    .contains("volume, bind or tmpfs"));
}

#[test]
fn bind_mounts_default_create_host_path_is_refused_only_when_asked_for() {
    let reason = refused(
        "volumes: [{type: bind, source: /x, target: /x, bind: {create_host_path: true}}]",
        "services.s.volumes[0].bind.create_host_path",
    );
    assert!(reason.contains("must already exist"));
}

#[test]
fn tmpfs_strings_and_lists_become_tmpfs_mounts() {
    let s = svc("tmpfs:\n  - /run:size=64m\n  - /tmp");
    assert_eq!(
        s.volumes[0],
        VolumeMount {
            source: VolumeSource::Tmpfs { size_bytes: 64 << 20 },
            target: "/run".into(),
            read_only: false
        }
    );
    assert_eq!(s.volumes[1].source, VolumeSource::Tmpfs { size_bytes: 0 });
    assert_eq!(svc("tmpfs: /run").volumes.len(), 1);
    assert!(refused("tmpfs: /run:noexec", "services.s.tmpfs").contains("noexec"));
    assert!(refused("tmpfs: [/a, /a]", "services.s.tmpfs[1]").contains("already mounted"));
}

#[test]
fn top_level_volume_drivers_and_external_volumes_are_refused() {
    let yaml = "services:\n  s:\n    image: x\nvolumes:\n  a: {driver: local}\n  b: {external: true}\n  c: {driver_opts: {type: nfs}}\n  d: {driver: rexray}\n";
    assert!(refused_file(yaml, "volumes.b.external").contains("agent creates"));
    assert!(refused_file(yaml, "volumes.c.driver_opts").contains("not supported yet"));
    assert!(refused_file(yaml, "volumes.d.driver").contains("not supported yet"));
    assert_eq!(problems(yaml).len(), 3, "driver: local is the default and fine");
}

fn port(host: u16, container: u16, protocol: Protocol, loopback_only: bool) -> PortMapping {
    PortMapping { host_port: host, container_port: container, protocol, loopback_only }
}

#[test]
fn ports_in_every_short_form() {
    let s = svc("ports:\n  - 8080:80\n  - \"127.0.0.1:9090:90\"\n  - 5353:53/udp\n  - \"0.0.0.0:443:443/tcp\"\n  - \"8000-8002:9000-9002\"");
    assert_eq!(
        s.ports,
        [
            port(8080, 80, Protocol::Tcp, false),
            port(9090, 90, Protocol::Tcp, true),
            port(5353, 53, Protocol::Udp, false),
            port(443, 443, Protocol::Tcp, false),
            port(8000, 9000, Protocol::Tcp, false),
            port(8001, 9001, Protocol::Tcp, false),
            port(8002, 9002, Protocol::Tcp, false),
        ]
    );
}

#[test]
fn ports_in_long_form() {
    let s = svc("ports:\n  - target: 80\n    published: 8080\n    protocol: udp\n    host_ip: 127.0.0.1\n    mode: host\n  - {target: 81, published: \"8181\"}");
    assert_eq!(
        s.ports,
        [port(8080, 80, Protocol::Udp, true), port(8181, 81, Protocol::Tcp, false)]
    );
}

#[test]
fn a_container_only_port_is_refused_asking_for_a_host_port() {
    assert!(refused("ports: [\"80\"]", "services.s.ports[0]").contains("give a host port"));
    assert!(refused("ports: [80]", "services.s.ports[0]").contains("give a host port"));
    assert!(refused("ports: [{target: 80}]", "services.s.ports[0]").contains("published: 80"));
    assert!(refused("ports: [\"127.0.0.1::80\"]", "services.s.ports[0]").contains("no host port"));
}

#[test]
fn port_addresses_protocols_and_mismatched_ranges_are_refused() {
    assert!(refused("ports: [\"192.168.1.5:80:80\"]", "services.s.ports[0]").contains("loopback"));
    assert!(refused("ports: [\"[::1]:80:80\"]", "services.s.ports[0]").contains("\"::1\""));
    assert!(refused("ports: [\"80:80/sctp\"]", "services.s.ports[0]").contains("sctp"));
    assert!(refused("ports: [\"8000-8001:80\"]", "services.s.ports[0]").contains("one host port"));
    assert!(refused("ports: [\"8000-8002:80-81\"]", "services.s.ports[0]").contains("must match"));
    assert!(refused("ports: [\"70000:80\"]", "services.s.ports[0]").contains("1 to 65535"));
    assert!(refused("ports: [\"0:80\"]", "services.s.ports[0]").contains("1 to 65535"));
}

#[test]
fn huge_port_ranges_are_refused_before_expansion() {
    assert!(
        refused("ports: [\"1-65535:1-65535\"]", "services.s.ports[0]").contains("more than 1024")
    );
}

#[test]
fn the_same_host_port_in_two_services_is_reported_at_the_compose_path() {
    let yaml = "services:\n  a:\n    image: x\n    ports: [\"8080:80\"]\n  b:\n    image: y\n    ports: [\"9000-9001:9000-9001\", \"8080:81\"]\n";
    assert!(
        refused_file(yaml, "services.b.ports[1]").contains("already published by service \"a\"")
    );
}

#[test]
fn host_namespaces_are_carried_for_the_device_to_judge() {
    use fleet_proto::policy::Namespace;
    assert_eq!(
        svc("pid: host\nipc: host\nuts: host").host_namespaces,
        [Namespace::Pid, Namespace::Ipc, Namespace::Uts]
    );
    assert_eq!(svc("ipc: private").host_namespaces, []);
    assert!(refused("pid: \"service:db\"", "services.s.pid").contains("not supported yet"));
    assert!(refused("ipc: shareable", "services.s.ipc").contains("use host or private"));
    assert!(refused("uts: private", "services.s.uts").contains("use host,"));
}

#[test]
fn network_modes_map_and_shared_namespaces_are_refused() {
    assert_eq!(svc("network_mode: host").network_mode, NetworkMode::Host);
    assert_eq!(svc("network_mode: none").network_mode, NetworkMode::None);
    assert_eq!(svc("network_mode: bridge").network_mode, NetworkMode::Release);
    assert!(refused("network_mode: \"service:db\"", "services.s.network_mode")
        .contains("not supported yet"));
    assert!(refused("network_mode: host\nports: [\"80:80\"]", "services.s.ports[0]")
        .contains("already exposes"));
}

#[test]
fn healthchecks_in_every_form() {
    let check = |body: &str| svc(body).healthcheck.unwrap();
    let h = check("healthcheck:\n  test: [\"CMD\", \"curl\", \"-f\", \"http://localhost\"]\n  interval: 10s\n  timeout: 2s\n  retries: 5\n  start_period: 1m");
    assert_eq!(h.probe, Probe::Cmd(vec!["curl".into(), "-f".into(), "http://localhost".into()]));
    assert_eq!(
        (h.interval, h.timeout, h.retries, h.start_period),
        (Duration::from_secs(10), Duration::from_secs(2), 5, Duration::from_secs(60))
    );
    assert_eq!(
        check("healthcheck:\n  test: [\"CMD-SHELL\", \"pg_isready\"]").probe,
        Probe::CmdShell("pg_isready".into())
    );
    let shell = check("healthcheck:\n  test: curl -f localhost || exit 1");
    assert_eq!(shell.probe, Probe::CmdShell("curl -f localhost || exit 1".into()));
    assert_eq!((shell.interval, shell.retries), (Duration::from_secs(30), 3), "Docker's defaults");
    assert_eq!(check("healthcheck:\n  test: [\"NONE\"]").probe, Probe::Disabled);
    assert_eq!(check("healthcheck:\n  disable: true").probe, Probe::Disabled);
    assert_eq!(svc("healthcheck:\n  disable: false").healthcheck, None);
}

#[test]
fn malformed_healthchecks_are_refused() {
    assert!(refused("healthcheck:\n  test: [\"CMD\"]", "services.s.healthcheck.test")
        .contains("needs the command"));
    assert!(refused("healthcheck:\n  test: [\"curl\"]", "services.s.healthcheck.test")
        .contains("starts with CMD"));
    assert!(refused(
        "healthcheck:\n  test: [\"CMD-SHELL\", \"a\", \"b\"]",
        "services.s.healthcheck.test"
    )
    .contains("exactly one"));
    assert!(
        refused("healthcheck:\n  interval: 10", "services.s.healthcheck.interval").contains("10s")
    );
    assert!(refused("healthcheck:\n  interval: 5s", "services.s.healthcheck")
        .contains("without a test"));
    assert!(refused(
        "healthcheck:\n  test: [\"CMD\", \"x\"]\n  disable: true",
        "services.s.healthcheck.disable"
    )
    .contains("contradicts"));
}

#[test]
fn restart_policies_map() {
    assert_eq!(svc("restart: \"no\"").restart, RestartPolicy::No);
    assert_eq!(
        svc("restart: no").restart,
        RestartPolicy::No,
        "unquoted no is a string in YAML 1.2"
    );
    assert_eq!(svc("restart: always").restart, RestartPolicy::Always);
    assert_eq!(svc("restart: unless-stopped").restart, RestartPolicy::UnlessStopped);
    assert_eq!(svc("restart: on-failure").restart, RestartPolicy::OnFailure { max_retries: 0 });
    assert_eq!(svc("restart: on-failure:5").restart, RestartPolicy::OnFailure { max_retries: 5 });
    assert!(refused("restart: sometimes", "services.s.restart").contains("on-failure[:N]"));
}

#[test]
fn devices_become_device_requests() {
    let s = svc("devices:\n  - /dev/ttyACM0\n  - /dev/ttyUSB0:/dev/gps\n  - /dev/video0:/dev/video0:r\n  - /dev/dri:rw");
    assert_eq!(
        s.hardware,
        [
            HardwareRequest::Device {
                host_path: "/dev/ttyACM0".into(),
                container_path: "".into(),
                permissions: "".into()
            },
            HardwareRequest::Device {
                host_path: "/dev/ttyUSB0".into(),
                container_path: "/dev/gps".into(),
                permissions: "".into()
            },
            HardwareRequest::Device {
                host_path: "/dev/video0".into(),
                container_path: "/dev/video0".into(),
                permissions: "r".into()
            },
            HardwareRequest::Device {
                host_path: "/dev/dri".into(),
                container_path: "".into(),
                permissions: "rw".into()
            },
        ]
    );
    assert!(refused("devices: [\"nvidia.com/gpu=all\"]", "services.s.devices[0]").contains("CDI"));
    assert!(refused("devices: [\"/dev/x:/dev/y:rwx\"]", "services.s.devices[0]")
        .contains("permissions"));
    let both = svc("privileged: true\ndevices: [/dev/ttyACM0]");
    assert!(
        both.security.privileged && both.hardware.len() == 1,
        "privileged with devices is fine"
    );
}

#[test]
fn depends_on_as_list_or_map_with_conditions() {
    let yaml = "services:\n  db:\n    image: postgres\n  cache:\n    image: redis\n  web:\n    image: app\n    depends_on:\n      db: {condition: service_healthy}\n      cache:\n        condition: service_started\n        required: true\n";
    let web = &release(yaml).services[2];
    assert_eq!(web.depends_on[0].condition, DependencyCondition::Healthy);
    assert_eq!(web.depends_on[1].service.as_str(), "cache");
    let yaml =
        "services:\n  db:\n    image: postgres\n  web:\n    image: app\n    depends_on: [db]\n";
    assert_eq!(release(yaml).services[1].depends_on[0].condition, DependencyCondition::Started);
}

#[test]
fn depends_on_refuses_unknown_services_self_and_one_shot_conditions() {
    let yaml = "services:\n  db:\n    image: postgres\n  web:\n    image: app\n    depends_on:\n      ghost: {}\n      web: {}\n      db: {condition: service_completed_successfully}\n";
    assert!(refused_file(yaml, "services.web.depends_on.ghost").contains("no service named"));
    assert!(refused_file(yaml, "services.web.depends_on.web").contains("itself"));
    assert!(refused_file(yaml, "services.web.depends_on.db.condition").contains("one-shot"));
}

#[test]
fn resources_from_service_keys_and_deploy_limits() {
    let s = svc("cpus: 0.5\ncpuset: \"2-3\"\nmem_limit: 512m\nmem_reservation: 256m\nmemswap_limit: 1g\npids_limit: 100\nshm_size: 64mb\nulimits:\n  nofile: {soft: 1024, hard: 4096}\n  memlock: -1\n  rtprio: 99");
    let r = &s.resources;
    assert_eq!(r.cpu_millis, Some(500));
    assert_eq!(r.cpuset.as_deref(), Some("2-3"));
    assert_eq!(r.memory_bytes, Some(512 << 20));
    assert_eq!(r.memory_reservation_bytes, Some(256 << 20));
    assert_eq!(r.memory_swap_bytes, Some(1 << 30));
    assert_eq!(r.pids, Some(100));
    assert_eq!(r.shm_bytes, Some(64 << 20));
    assert_eq!(r.ulimits[0], Ulimit { name: "nofile".into(), soft: 1024, hard: 4096 });
    assert_eq!(r.ulimits[1], Ulimit { name: "memlock".into(), soft: -1, hard: -1 });
    let d = svc("deploy:\n  resources:\n    limits: {cpus: \"1.5\", memory: 1G, pids: 50}\n    reservations: {memory: 128M}").resources;
    assert_eq!(
        (d.cpu_millis, d.memory_bytes, d.pids, d.memory_reservation_bytes),
        (Some(1500), Some(1 << 30), Some(50), Some(128 << 20))
    );
    assert_eq!(svc("memswap_limit: -1\npids_limit: -1").resources.memory_swap_bytes, None);
}

#[test]
fn a_limit_set_twice_must_agree() {
    assert!(
        svc("mem_limit: 512m\ndeploy: {resources: {limits: {memory: 512M}}}")
            .resources
            .memory_bytes
            == Some(512 << 20)
    );
    let reason = refused(
        "mem_limit: 512m\ndeploy: {resources: {limits: {memory: 1g}}}",
        "services.s.deploy.resources.limits.memory",
    );
    assert!(reason.contains("contradicts services.s.mem_limit"), "{reason}");
    assert!(refused(
        "cpus: 1\ndeploy: {resources: {limits: {cpus: 2}}}",
        "services.s.deploy.resources.limits.cpus"
    )
    .contains("contradicts"));
}

#[test]
fn validation_problems_come_back_with_compose_paths() {
    assert!(refused("mem_limit: 128m\nmem_reservation: 256m", "services.s.mem_reservation")
        .contains("exceeds the limit"));
    assert!(refused("cpuset: \"3-1\"", "services.s.cpuset").contains("CPU list"));
    assert!(
        refused("mem_limit: 1g\nmemswap_limit: 512m", "services.s.memswap_limit").contains("below")
    );
}

#[test]
fn bad_sizes_cpus_and_ulimits_are_refused() {
    assert!(refused("mem_limit: lots", "services.s.mem_limit").contains("byte size"));
    assert!(refused("cpus: 0", "services.s.cpus").contains("never run"));
    assert!(refused("ulimits: {nofile: {soft: 10, hard: 5}}", "services.s.ulimits.nofile")
        .contains("above the hard"));
    assert!(refused("ulimits: {nofile: {soft: 10}}", "services.s.ulimits.nofile").contains("both"));
}

#[test]
fn nvidia_gpu_reservations_become_gpu_requests() {
    let gpu = |body: &str| svc(body).hardware;
    let base = "deploy:\n  resources:\n    reservations:\n      devices:\n        - ";
    assert_eq!(
        gpu(&format!("{base}{{driver: nvidia, count: 1, capabilities: [gpu]}}")),
        [HardwareRequest::Gpu { kind: GpuKind::Nvidia, select: GpuSelect::Count(1) }]
    );
    assert_eq!(
        gpu(&format!("{base}{{driver: nvidia, count: all, capabilities: [gpu, utility]}}")),
        [HardwareRequest::Gpu { kind: GpuKind::Nvidia, select: GpuSelect::All }]
    );
    assert_eq!(
        gpu(&format!("{base}{{device_ids: [\"0\", \"3\"], capabilities: [gpu]}}")),
        [HardwareRequest::Gpu {
            kind: GpuKind::Nvidia,
            select: GpuSelect::Ids(vec!["0".into(), "3".into()])
        }]
    );
    assert_eq!(
        gpu("gpus: all"),
        [HardwareRequest::Gpu { kind: GpuKind::Nvidia, select: GpuSelect::All }]
    );
    let at = "services.s.deploy.resources.reservations.devices[0]";
    assert!(refused(
        &format!("{base}{{driver: amd, capabilities: [gpu]}}"),
        &format!("{at}.driver")
    )
    .contains("nvidia"));
    assert!(refused(&format!("{base}{{capabilities: [tpu]}}"), &format!("{at}.capabilities"))
        .contains("GPU"));
    assert!(refused(
        &format!("{base}{{count: 1, device_ids: [\"0\"], capabilities: [gpu]}}"),
        &format!("{at}.device_ids")
    )
    .contains("exclude"));
}

#[test]
fn other_deploy_keys_are_refused_with_reasons() {
    assert!(refused("deploy: {replicas: 3}", "services.s.deploy.replicas")
        .contains("one container per service"));
    assert!(refused(
        "deploy: {update_config: {parallelism: 1}}",
        "services.s.deploy.update_config"
    )
    .contains("x-fleet.update"));
    assert!(refused(
        "deploy: {restart_policy: {condition: any}}",
        "services.s.deploy.restart_policy"
    )
    .contains("restart key"));
    assert!(refused("deploy: {placement: {}}", "services.s.deploy.placement").contains("rollout"));
    assert_eq!(
        svc("deploy: {replicas: 1}").name.as_str(),
        "s",
        "one replica is what a device runs anyway"
    );
}

#[test]
fn no_new_privileges_and_cpu_shares_are_taken_other_security_options_refused() {
    let s = svc("security_opt: [\"no-new-privileges:true\"]\ncpu_shares: 512");
    assert!(s.no_new_privileges);
    assert_eq!(s.cpu_shares, Some(512));
    assert!(svc("security_opt: [no-new-privileges]").no_new_privileges);
    assert!(!svc("security_opt: [\"no-new-privileges=false\"]").no_new_privileges);
    assert!(!svc("cpus: 1").no_new_privileges, "off unless asked");
    let reason = refused("security_opt: [\"seccomp:unconfined\"]", "services.s.security_opt[0]");
    assert!(
        reason.contains("seccomp, apparmor and label profiles are set on the device"),
        "{reason}"
    );
    let reason = refused("cpu_shares: 1000000", "services.s.cpu_shares");
    assert!(reason.contains("262144"), "{reason}");
}

#[test]
fn expose_is_checked_then_dropped_and_one_replicated_replica_is_what_a_device_runs() {
    let s = svc("expose: [\"80\", 443, \"8000-8010/tcp\", \"53/udp\"]");
    assert!(s.ports.is_empty(), "expose publishes nothing");
    assert!(refused("expose: [\"http\"]", "services.s.expose[0]").contains("container port"));
    assert!(refused("expose: [\"90-80\"]", "services.s.expose[0]").contains("range"));
    assert_eq!(svc("deploy: {mode: replicated, replicas: 1}").name.as_str(), "s");
    assert!(refused("deploy: {mode: global}", "services.s.deploy.mode")
        .contains("one container per service"));
}

#[test]
fn profiles_select_which_services_run_and_services_without_one_always_do() {
    let yaml = "services:\n  core:\n    image: busybox:1.36\n  lidar:\n    image: busybox:1.36\n    profiles: [lidar, sensors]\n  debug:\n    image: busybox:1.36\n    profiles: [debug]\n    depends_on: [lidar]\n";
    let names = |profiles: &[&str]| -> Vec<String> {
        let profiles: Vec<String> = profiles.iter().map(|p| (*p).to_owned()).collect();
        let compose = Compose::parse_for(yaml.as_bytes(), &BTreeMap::new(), &profiles)
            .unwrap_or_else(|e| panic!("{profiles:?}: {e:#?}"));
        let images = fake_images(&compose);
        let spec = compose.into_release("app", "1.0", &images).unwrap();
        spec.services.iter().map(|s| s.name.to_string()).collect()
    };
    assert_eq!(names(&[]), ["core"], "services with profiles need one selected");
    assert_eq!(names(&["sensors"]), ["core", "lidar"]);
    assert_eq!(names(&["lidar", "debug"]), ["core", "lidar", "debug"], "in file order");

    // debug depends on lidar, which its profile alone does not bring: refused, saying which.
    let problems = Compose::parse_for(yaml.as_bytes(), &BTreeMap::new(), &["debug".to_owned()])
        .map(drop)
        .unwrap_err();
    let reason =
        &problems.iter().find(|p| p.path == "services.debug.depends_on[0]").unwrap().reason;
    assert!(
        reason.contains("runs only with profile lidar or sensors")
            && reason.contains("--profile lidar"),
        "{reason}"
    );
    // A typo in a selected profile is refused rather than silently running less.
    let problems = Compose::parse_for(yaml.as_bytes(), &BTreeMap::new(), &["lidr".to_owned()])
        .map(drop)
        .unwrap_err();
    let reason = &problems.iter().find(|p| p.path == "profiles").unwrap().reason;
    assert_eq!(
        reason,
        "no service has profile \"lidr\" (the file's profiles: debug, lidar, sensors)"
    );
    assert!(refused("profiles: [\"-x\"]", "services.s.profiles[0]").contains("not a profile name"));
}

mod file_syntax;
mod fleet_keys;
mod options;
