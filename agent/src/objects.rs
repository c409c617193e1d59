//! The engine objects a release needs besides its containers: its bridge networks and its named
//! volumes. Pure decisions over what the engine shows; [`crate::reconcile`] does the I/O.
//!
//! * **Networks** belong to one app on one device: `<device>_<app>_<name>` (Compose's
//!   `<project>_<name>` with the device in front, so that several agents sharing one engine, as
//!   the simulator and the tests do, never share a network), labelled with the agent, device,
//!   app and network name. Every service on the release network joins
//!   `default` unless it lists its own, and answers there to its service name and its aliases,
//!   so services reach each other by name exactly as under Compose. Networks the release in
//!   force does not use are removed once an update has gone through (or rolled back).
//! * **Volumes** are created by the engine when a container first mounts them, labelled with
//!   the agent, device, app and volume name; they outlive every container, so data survives
//!   updates and rollbacks. They are deleted only by an explicit purge, and only those of apps
//!   the device no longer runs.
//! * **Ownership**: a network of another device or app, a network of that name that is not
//!   Fleet's, or a volume holding another app's data is a clash, refused before anything
//!   changes. (Agents of the same app sharing one engine share its volumes, as containers of
//!   one Compose project would.)
//!
//! Which host paths a release may bind-mount is an acceptance rule ([`crate::accept`]).

use std::collections::BTreeMap;

use fleet_proto::release::VolumeSource;
use fleet_proto::{DeviceId, ReleaseSpec};

use crate::runtime::labels;
// Defined beside the engine trait that returns it; named here too, where it is judged.
pub use crate::runtime::EngineObject;

/// The engine name of release network `network` of `app` on `device`.
pub fn network_name(device: &DeviceId, app: &str, network: &str) -> String {
    format!("{device}_{app}_{network}")
}

/// The labels of an object the agent creates for `app` on `device`: `kind` is
/// [`labels::NETWORK`] or [`labels::VOLUME`], `name` its name within the app.
pub fn object_labels(
    device: &DeviceId,
    app: &str,
    kind: &str,
    name: &str,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        (labels::MANAGED_BY.to_owned(), labels::MANAGED_BY_VALUE.to_owned()),
        (labels::DEVICE.to_owned(), device.to_string()),
        (labels::APP.to_owned(), app.to_owned()),
        (kind.to_owned(), name.to_owned()),
    ])
}

/// Every network `release` needs: engine name → labels to create it with.
pub fn wanted_networks(
    device: &DeviceId,
    release: &ReleaseSpec,
) -> BTreeMap<String, BTreeMap<String, String>> {
    release
        .services
        .iter()
        .flat_map(|s| s.release_networks())
        .map(|n| {
            (
                network_name(device, &release.app, &n.name),
                object_labels(device, &release.app, labels::NETWORK, &n.name),
            )
        })
        .collect()
}

/// The named volumes `release` mounts (engine names).
pub fn wanted_volumes(release: &ReleaseSpec) -> Vec<&str> {
    let mut names: Vec<&str> = release
        .services
        .iter()
        .flat_map(|s| s.volumes.iter())
        .filter_map(|v| match &v.source {
            VolumeSource::Named(n) => Some(n.as_str()),
            _ => None,
        })
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

/// Networks and volumes `release` would use that are not its app's on this device: each
/// problem names the object and its owner. Unlabelled volumes are adopted (data a team brings
/// from `docker compose`); an unlabelled network of the same name is not (its settings are
/// unknown, and containers that are not Fleet's may be on it).
pub fn clashes(
    device: &DeviceId,
    release: &ReleaseSpec,
    networks: &[EngineObject],
    volumes: &[EngineObject],
) -> Vec<String> {
    let mut problems = Vec::new();
    let owner = |o: &EngineObject| {
        format!(
            "app {} on device {}",
            o.label(labels::APP).unwrap_or("?"),
            o.label(labels::DEVICE).unwrap_or("?")
        )
    };
    for name in wanted_networks(device, release).keys() {
        let Some(found) = networks.iter().find(|n| &n.name == name) else { continue };
        if !found.is_fleets() {
            problems.push(format!("network {name} already exists on this engine and is not Fleet's; remove or rename it (docker network rm {name})"));
        } else if found.label(labels::APP) != Some(release.app.as_str())
            || found.label(labels::DEVICE) != Some(device.as_str())
        {
            problems.push(format!("network {name} belongs to {}", owner(found)));
        }
    }
    for name in wanted_volumes(release) {
        let Some(found) = volumes.iter().find(|v| v.name == name) else { continue };
        if found.is_fleets() && found.label(labels::APP).is_some_and(|a| a != release.app) {
            problems.push(format!("volume {name} holds the data of {}; give this app's volume another name, or purge the other app's data (fleetctl device purge)", owner(found)));
        }
    }
    problems
}

/// This device's networks that the release in force (`None`: no release) does not use.
pub fn stale_networks<'a>(
    device: &DeviceId,
    release: Option<&ReleaseSpec>,
    networks: &'a [EngineObject],
) -> Vec<&'a str> {
    let wanted = release.map(|r| wanted_networks(device, r)).unwrap_or_default();
    networks
        .iter()
        .filter(|n| n.is_fleets() && n.label(labels::DEVICE) == Some(device.as_str()))
        .filter(|n| !wanted.contains_key(&n.name))
        .map(|n| n.name.as_str())
        .collect()
}

/// This device's volumes that a purge deletes: those of apps other than `keep` (the apps of
/// the release in force and of the one being rolled out). Volumes of a kept app stay even when
/// its current release no longer mounts them: the app is still on the device, and a rollback
/// may want them.
pub fn purgeable_volumes<'a>(
    device: &DeviceId,
    keep: &[&str],
    volumes: &'a [EngineObject],
) -> Vec<&'a str> {
    volumes
        .iter()
        .filter(|v| v.is_fleets() && v.label(labels::DEVICE) == Some(device.as_str()))
        .filter(|v| !v.label(labels::APP).is_some_and(|a| keep.contains(&a)))
        .map(|v| v.name.as_str())
        .collect()
}

#[cfg(test)]
mod tests {
    use fleet_proto::release::{NetworkAttachment, NetworkMode, VolumeMount};
    use fleet_proto::{ImageRef, ReleaseId, ServiceName, ServiceSpec};

    use super::*;

    fn device() -> DeviceId {
        DeviceId::new("robot-1").unwrap()
    }

    fn service(name: &str) -> ServiceSpec {
        let image =
            ImageRef::parse(&format!("r.example/{name}@sha256:{}", "a".repeat(64))).unwrap();
        ServiceSpec::new(ServiceName::new(name).unwrap(), image)
    }

    fn release(app: &str, services: Vec<ServiceSpec>) -> ReleaseSpec {
        ReleaseSpec {
            id: ReleaseId::new(format!("{app}@1")).unwrap(),
            app: app.to_owned(),
            version: "1".to_owned(),
            services,
        }
    }

    fn named(name: &str) -> VolumeMount {
        VolumeMount {
            source: VolumeSource::Named(name.to_owned()),
            target: "/data".to_owned(),
            read_only: false,
        }
    }

    fn object(name: &str, app: &str, kind: &str) -> EngineObject {
        EngineObject { name: name.to_owned(), labels: object_labels(&device(), app, kind, name) }
    }

    #[test]
    fn every_release_network_service_joins_default_or_its_own_networks() {
        let mut mqtt = service("mqtt");
        mqtt.networks = vec![
            NetworkAttachment { name: "default".into(), aliases: vec![] },
            NetworkAttachment { name: "backend".into(), aliases: vec!["broker".into()] },
        ];
        let mut lidar = service("lidar");
        lidar.network_mode = NetworkMode::Host;
        let r = release("iot", vec![mqtt, service("gateway"), lidar]);
        let wanted = wanted_networks(&device(), &r);
        assert_eq!(
            wanted.keys().collect::<Vec<_>>(),
            ["robot-1_iot_backend", "robot-1_iot_default"]
        );
        assert_eq!(wanted["robot-1_iot_backend"][labels::NETWORK], "backend");
        assert_eq!(wanted["robot-1_iot_backend"][labels::APP], "iot");
    }

    #[test]
    fn networks_and_volumes_of_another_app_clash_and_unlabelled_volumes_are_adopted() {
        let mut s = service("db");
        s.volumes = vec![named("iot_data"), named("legacy")];
        let r = release("iot", vec![s]);
        let networks = [object("robot-1_iot_default", "other", labels::NETWORK)];
        let volumes = [
            object("iot_data", "other", labels::VOLUME),
            EngineObject { name: "legacy".into(), labels: BTreeMap::new() },
        ];
        let problems = clashes(&device(), &r, &networks, &volumes);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("network robot-1_iot_default belongs to app other"));
        assert!(problems[1].contains("volume iot_data holds the data of app other"));
        // The app's own objects are no clash; an unlabelled network is.
        let own = [object("robot-1_iot_default", "iot", labels::NETWORK)];
        assert!(
            clashes(&device(), &r, &own, &[object("iot_data", "iot", labels::VOLUME)]).is_empty()
        );
        let foreign =
            [EngineObject { name: "robot-1_iot_default".into(), labels: BTreeMap::new() }];
        assert!(clashes(&device(), &r, &foreign, &[])[0].contains("not Fleet's"));
    }

    #[test]
    fn stale_networks_are_this_devices_networks_the_release_does_not_use() {
        let r = release("iot", vec![service("gateway")]);
        let mut elsewhere = object("iot_old", "iot", labels::NETWORK);
        elsewhere.labels.insert(labels::DEVICE.into(), "robot-2".into());
        let networks = [
            object("robot-1_iot_default", "iot", labels::NETWORK),
            object("robot-1_iot_backend", "iot", labels::NETWORK),
            object("robot-1_shop_default", "shop", labels::NETWORK),
            elsewhere,
            EngineObject { name: "bridge".into(), labels: BTreeMap::new() },
        ];
        assert_eq!(
            stale_networks(&device(), Some(&r), &networks),
            ["robot-1_iot_backend", "robot-1_shop_default"]
        );
        assert_eq!(stale_networks(&device(), None, &networks).len(), 3);
    }

    #[test]
    fn a_purge_deletes_only_volumes_of_apps_the_device_no_longer_runs() {
        let volumes = [
            object("iot_data", "iot", labels::VOLUME),
            object("iot_unused_now", "iot", labels::VOLUME),
            object("shop_db", "shop", labels::VOLUME),
            EngineObject { name: "mine".into(), labels: BTreeMap::new() },
        ];
        assert_eq!(purgeable_volumes(&device(), &["iot"], &volumes), ["shop_db"]);
        assert_eq!(purgeable_volumes(&device(), &["iot", "shop"], &volumes), [] as [&str; 0]);
        assert_eq!(purgeable_volumes(&device(), &[], &volumes).len(), 3);
    }
}
