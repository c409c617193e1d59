//! The executor against the simulated engine: updates, health-gated rollback, stop-first
//! ordering, adoption and recovery — the behaviours, in milliseconds. Time is paused: retry
//! delays, health polls and deadlines advance the clock instead of waiting for it.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use fleet_agent::plan::container_name;
use fleet_agent::reconcile::{ExecOptions, Reconciler};
use fleet_agent::runtime::sim::{ImageBehavior, SimRuntime};
use fleet_agent::runtime::ContainerRuntime;
use fleet_agent::state::{AgentState, Origin};
use fleet_proto::release::{Dependency, DependencyCondition, Probe, UpdateStrategy};
use fleet_proto::report::{ContainerState, UpdatePhase, UpdateResult};
use fleet_proto::{samples, DeviceId, ImageRef, ReleaseId, ReleaseSpec};

fn device() -> DeviceId {
    DeviceId::new("sim-1").unwrap()
}

fn image(name: &str, n: u8) -> ImageRef {
    ImageRef::parse(&format!("127.0.0.1:5000/t/{name}@sha256:{}", format!("{n:02x}").repeat(32)))
        .unwrap()
}

/// Two start-first services on the given images.
fn release(version: &str, web: &ImageRef, worker: &ImageRef) -> ReleaseSpec {
    let mut r = samples::release();
    r.id = ReleaseId::new(format!("app@{version}")).unwrap();
    r.version = version.into();
    for s in &mut r.services {
        s.secrets.clear(); // secrets come sealed from a server, not in these tests
        s.hardware.clear();
        s.ports.clear();
        s.depends_on.clear();
        s.update = UpdateStrategy::StartFirst;
        s.health_deadline = Duration::from_secs(5);
        if let Some(h) = &mut s.healthcheck {
            h.probe = Probe::Image;
        }
    }
    r.services[0].image = web.clone();
    r.services[1].image = worker.clone();
    r
}

struct Fixture {
    rt: Arc<SimRuntime>,
    rec: Reconciler<SimRuntime>,
    _dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let rt = Arc::new(SimRuntime::new());
    for (name, n, b) in [
        ("web", 1, ImageBehavior::Healthy),
        ("web", 2, ImageBehavior::Healthy),
        ("worker", 1, ImageBehavior::Healthy),
        ("worker", 2, ImageBehavior::Healthy),
        ("bad", 3, ImageBehavior::NeverHealthy),
        ("crash", 4, ImageBehavior::CrashAtStart),
        ("slow", 5, ImageBehavior::StaysStarting),
    ] {
        rt.publish_image(&image(name, n), b, 1000);
    }
    let opts = ExecOptions {
        retry_delay: Duration::from_millis(1),
        health_poll: Duration::from_millis(1),
        stable_for: Duration::ZERO,
        #[cfg(feature = "fault-injection")]
        fault: None,
        ..ExecOptions::default()
    };
    let rec = Reconciler::new(rt.clone(), device(), AgentState::open(dir.path()).unwrap(), opts);
    Fixture { rt, rec, _dir: dir }
}

async fn running_names(rt: &SimRuntime) -> Vec<String> {
    let mut names: Vec<String> = rt
        .list(&device())
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.state == ContainerState::Running)
        .map(|c| c.name)
        .collect();
    names.sort();
    names
}

fn names_of(r: &ReleaseSpec) -> Vec<String> {
    let mut names: Vec<String> =
        r.services.iter().map(|s| container_name(&device(), s, false)).collect();
    names.sort();
    names
}

#[tokio::test(start_paused = true)]
async fn fresh_device_runs_the_release() {
    let f = fixture();
    let v1 = release("1", &image("web", 1), &image("worker", 1));
    let out = f.rec.apply(Origin::Server { generation: 1 }, Some(v1.clone())).await.unwrap();
    assert_eq!(out.result, UpdateResult::Applied);
    assert_eq!(running_names(&f.rt).await, names_of(&v1));
    assert_eq!(f.rec.state().proven().unwrap().unwrap().release, Some(v1));
}

#[tokio::test(start_paused = true)]
async fn update_replaces_containers_and_removes_the_old_ones() {
    let f = fixture();
    let v1 = release("1", &image("web", 1), &image("worker", 1));
    let v2 = release("2", &image("web", 2), &image("worker", 2));
    f.rec.apply(Origin::Server { generation: 1 }, Some(v1)).await.unwrap();
    let out = f.rec.apply(Origin::Server { generation: 2 }, Some(v2.clone())).await.unwrap();
    assert_eq!(out.result, UpdateResult::Applied);
    let all = f.rt.list(&device()).await.unwrap();
    assert_eq!(all.len(), 2, "old containers removed: {all:?}");
    assert_eq!(running_names(&f.rt).await, names_of(&v2));
}

#[tokio::test(start_paused = true)]
async fn rollback_when_new_release_never_healthy() {
    let f = fixture();
    let v1 = release("1", &image("web", 1), &image("worker", 1));
    let bad = release("2", &image("web", 2), &image("bad", 3));
    f.rec.apply(Origin::Server { generation: 1 }, Some(v1.clone())).await.unwrap();
    let out = f.rec.apply(Origin::Server { generation: 2 }, Some(bad)).await.unwrap();
    let UpdateResult::RolledBack { reason, service, log_tail } = out.result else {
        panic!("{out:?}")
    };
    assert!(reason.contains("failed its health check"), "{reason}");
    assert_eq!(service.unwrap().as_str(), "lidar");
    assert!(!log_tail.is_empty());
    assert_eq!(running_names(&f.rt).await, names_of(&v1));
    assert_eq!(f.rt.list(&device()).await.unwrap().len(), 2, "failed containers removed");
    // The failed generation is not retried.
    let calls = f.rt.calls().len();
    assert_eq!(f.rec.converge().await.unwrap(), None);
    assert_eq!(f.rt.calls().len(), calls, "no engine call for a rolled-back generation");
}

/// Services that do not depend on each other are created and started together: one that never
/// turns healthy does not hold back the other. A dependent still waits for what it depends on.
#[tokio::test(start_paused = true)]
async fn independent_services_start_together_and_a_dependent_waits_for_its_dependency() {
    let started = |calls: &[String], name: &str| {
        calls.iter().any(|c| c.starts_with("start ") && c.contains(name))
    };
    let f = fixture();
    // web stays "starting" until its deadline; lidar does not depend on it.
    let v1 = release("1", &image("slow", 5), &image("worker", 1));
    let lidar = container_name(&device(), &v1.services[1], false);
    let out = f.rec.apply(Origin::Server { generation: 1 }, Some(v1.clone())).await.unwrap();
    assert!(matches!(out.result, UpdateResult::RolledBack { .. }), "{out:?}");
    assert!(started(&f.rt.calls(), &lidar), "started beside web: {:?}", f.rt.calls());

    let f = fixture();
    let mut v1 = v1;
    v1.services[1].depends_on = vec![Dependency {
        service: v1.services[0].name.clone(),
        condition: DependencyCondition::Healthy,
    }];
    let out = f.rec.apply(Origin::Server { generation: 1 }, Some(v1)).await.unwrap();
    assert!(matches!(out.result, UpdateResult::RolledBack { .. }), "{out:?}");
    let calls = f.rt.calls();
    assert!(!calls.iter().any(|c| c.contains(&lidar)), "lidar waits for web: {calls:?}");
}

/// A service that crashes fails the update at once, not after a sibling's health wait.
#[tokio::test(start_paused = true)]
async fn a_crash_fails_the_update_without_waiting_out_a_siblings_health_deadline() {
    let f = fixture();
    let mut v1 = release("1", &image("crash", 4), &image("slow", 5));
    v1.services[1].health_deadline = Duration::from_secs(600);
    let t0 = tokio::time::Instant::now();
    let out = f.rec.apply(Origin::Server { generation: 1 }, Some(v1)).await.unwrap();
    let UpdateResult::RolledBack { reason, .. } = out.result else { panic!("{out:?}") };
    assert!(reason.contains("exited with code 1"), "{reason}");
    assert!(t0.elapsed() < Duration::from_secs(60), "took {:?}", t0.elapsed());
}

/// A runtime the engine does not list is refused before anything changes, naming what it has.
#[tokio::test(start_paused = true)]
async fn a_runtime_the_engine_lacks_is_refused_before_anything_changes() {
    let f = fixture();
    f.rt.set_runtimes(&["runc"]);
    let v1 = release("1", &image("web", 1), &image("worker", 1));
    f.rec.apply(Origin::Server { generation: 1 }, Some(v1.clone())).await.unwrap();
    let mut v2 = release("2", &image("web", 2), &image("worker", 2));
    v2.services[1].options.runtime = Some("nvidia".to_owned());
    let calls = f.rt.calls().len();
    let out = f.rec.apply(Origin::Server { generation: 2 }, Some(v2.clone())).await.unwrap();
    let UpdateResult::Failed { reason } = out.result else { panic!("{out:?}") };
    assert!(
        reason.starts_with("unsatisfiable on this device: services[1].options.runtime"),
        "{reason}"
    );
    assert!(reason.contains("has no runtime nvidia (it has runc)"), "{reason}");
    assert_eq!(running_names(&f.rt).await, names_of(&v1), "v1 untouched");
    assert!(
        f.rt.calls()[calls..].iter().all(|c| !c.starts_with("create") && !c.starts_with("stop")),
        "{:?}",
        &f.rt.calls()[calls..]
    );
    f.rt.set_runtimes(&["nvidia", "runc"]);
    let out = f.rec.apply(Origin::Server { generation: 3 }, Some(v2.clone())).await.unwrap();
    assert_eq!(out.result, UpdateResult::Applied);
}

#[tokio::test(start_paused = true)]
async fn rollback_when_new_release_crashes_at_start() {
    let f = fixture();
    let v1 = release("1", &image("web", 1), &image("worker", 1));
    let crash = release("2", &image("crash", 4), &image("worker", 1));
    f.rec.apply(Origin::Server { generation: 1 }, Some(v1.clone())).await.unwrap();
    let out = f.rec.apply(Origin::Server { generation: 2 }, Some(crash)).await.unwrap();
    let UpdateResult::RolledBack { reason, log_tail, .. } = out.result else { panic!("{out:?}") };
    assert!(reason.contains("exited with code 1"), "{reason}");
    assert!(log_tail.iter().any(|l| l.contains("simulated crash")));
    assert_eq!(running_names(&f.rt).await, names_of(&v1));
}

#[tokio::test(start_paused = true)]
async fn missing_digest_fails_without_touching_the_running_release() {
    let f = fixture();
    let v1 = release("1", &image("web", 1), &image("worker", 1));
    let missing = release("2", &image("web", 9), &image("worker", 1));
    f.rec.apply(Origin::Server { generation: 1 }, Some(v1.clone())).await.unwrap();
    let before = f.rt.calls().len();
    let out = f.rec.apply(Origin::Server { generation: 2 }, Some(missing)).await.unwrap();
    let UpdateResult::Failed { reason } = out.result else { panic!("{out:?}") };
    assert!(reason.contains("manifest unknown"), "{reason}");
    assert_eq!(f.rt.calls().len(), before, "no container was touched");
    assert_eq!(running_names(&f.rt).await, names_of(&v1));
}

#[tokio::test(start_paused = true)]
async fn stop_first_stops_the_old_container_before_the_new_one_starts() {
    let f = fixture();
    let mut v1 = release("1", &image("web", 1), &image("worker", 1));
    let mut v2 = release("2", &image("web", 1), &image("worker", 2));
    v1.services[1].update = UpdateStrategy::StopFirst;
    v2.services[1].update = UpdateStrategy::StopFirst;
    f.rec.apply(Origin::Server { generation: 1 }, Some(v1.clone())).await.unwrap();
    f.rec.apply(Origin::Server { generation: 2 }, Some(v2.clone())).await.unwrap();
    let (old, new) = (
        container_name(&device(), &v1.services[1], false),
        container_name(&device(), &v2.services[1], false),
    );
    let calls = f.rt.calls();
    let stop_old = calls.iter().position(|c| *c == format!("stop {old}")).unwrap();
    let start_new = calls.iter().position(|c| *c == format!("start {new}")).unwrap();
    assert!(stop_old < start_new, "{calls:?}");
}

#[tokio::test(start_paused = true)]
async fn restart_with_unchanged_release_adopts_containers() {
    let f = fixture();
    let v1 = release("1", &image("web", 1), &image("worker", 1));
    f.rec.apply(Origin::Server { generation: 1 }, Some(v1)).await.unwrap();
    let ids: Vec<String> = f.rt.list(&device()).await.unwrap().into_iter().map(|c| c.id).collect();
    let calls = f.rt.calls().len();
    assert_eq!(f.rec.converge().await.unwrap(), None);
    assert_eq!(f.rt.calls().len(), calls, "nothing recreated");
    let after: Vec<String> =
        f.rt.list(&device()).await.unwrap().into_iter().map(|c| c.id).collect();
    assert_eq!(ids, after);
}

#[tokio::test(start_paused = true)]
async fn a_container_lost_by_the_engine_is_recreated_on_converge() {
    let f = fixture();
    let v1 = release("1", &image("web", 1), &image("worker", 1));
    f.rec.apply(Origin::Server { generation: 1 }, Some(v1.clone())).await.unwrap();
    f.rt.forget_container(&container_name(&device(), &v1.services[0], false));
    f.rec.converge().await.unwrap();
    assert_eq!(running_names(&f.rt).await, names_of(&v1));
}

#[tokio::test(start_paused = true)]
async fn other_devices_containers_are_never_touched() {
    let f = fixture();
    let other = Reconciler::new(
        f.rt.clone(),
        DeviceId::new("sim-2").unwrap(),
        AgentState::open(tempfile::tempdir().unwrap().path()).unwrap(),
        ExecOptions {
            health_poll: Duration::from_millis(1),
            stable_for: Duration::ZERO,
            #[cfg(feature = "fault-injection")]
            fault: None,
            ..ExecOptions::default()
        },
    );
    let v1 = release("1", &image("web", 1), &image("worker", 1));
    other.apply(Origin::Server { generation: 1 }, Some(v1.clone())).await.unwrap();
    f.rec.apply(Origin::Server { generation: 1 }, None).await.unwrap();
    assert_eq!(f.rt.list(&DeviceId::new("sim-2").unwrap()).await.unwrap().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_held_lock_defers_the_switch_but_not_the_download_and_force_overrides_it() {
    use fleet_agent::lock::UpdateLocks;
    use fleet_agent::reconcile::StepError;
    use fleet_proto::UnixMillis;

    let dir = tempfile::tempdir().unwrap();
    let rt = Arc::new(SimRuntime::new());
    for (name, n) in [("web", 1), ("web", 2), ("worker", 1), ("worker", 2)] {
        rt.publish_image(&image(name, n), ImageBehavior::Healthy, 1000);
    }
    let locks = UpdateLocks::new(dir.path().join("locks"), Duration::from_secs(60));
    let opts = ExecOptions {
        health_poll: Duration::from_millis(1),
        stable_for: Duration::ZERO,
        #[cfg(feature = "fault-injection")]
        fault: None,
        ..ExecOptions::default()
    };
    let rec = Reconciler::new(
        rt.clone(),
        device(),
        AgentState::open(&dir.path().join("state")).unwrap(),
        opts,
    )
    .with_locks(locks.clone());
    let v1 = release("1", &image("web", 1), &image("worker", 1));
    let v2 = release("2", &image("web", 2), &image("worker", 2));
    rec.apply(Origin::Server { generation: 1 }, Some(v1.clone())).await.unwrap();

    let taken =
        locks.acquire("mission", Some(Duration::from_secs(60)), None, UnixMillis::now()).unwrap();
    let err = rec.apply(Origin::Server { generation: 2 }, Some(v2.clone())).await.unwrap_err();
    assert!(matches!(&err, StepError::Deferred { holder, .. } if holder == "mission"), "{err}");
    assert!(
        rt.calls().iter().any(|c| c.starts_with("pull") && c.contains(&image("web", 2).pull_ref())),
        "downloaded while locked"
    );
    assert_eq!(running_names(&rt).await, names_of(&v1), "nothing switched");
    // The report says why: deferred, by whom, until when.
    let status = rec.status();
    assert_eq!(status.phase, UpdatePhase::Deferred);
    assert_eq!(status.deferred.as_ref().map(|d| d.holder.as_str()), Some("mission"));

    // An expired lease no longer defers (its holder renews it into the past).
    let past = UnixMillis(UnixMillis::now().0 - 5_000);
    locks.acquire("mission", Some(Duration::from_secs(1)), Some(&taken.token), past).unwrap();
    rec.converge().await.unwrap();
    assert_eq!(running_names(&rt).await, names_of(&v2));
    assert_eq!(rec.status().phase, UpdatePhase::Idle);
    assert_eq!(rec.status().deferred, None);

    // Force goes past a held lock.
    locks.acquire("mission", Some(Duration::from_secs(60)), None, UnixMillis::now()).unwrap();
    rec.apply_forced(Origin::Server { generation: 3 }, Some(v1.clone()), true).await.unwrap();
    assert_eq!(running_names(&rt).await, names_of(&v1));
}

#[tokio::test(start_paused = true)]
async fn an_update_whose_images_would_go_below_the_disk_reserve_fails_before_downloading() {
    let f = fixture();
    let v1 = release("1", &image("web", 1), &image("worker", 1));
    // Two 400 MB images (as their manifests say) and the default 500 MB reserve: 1300 MB.
    let (big_web, big_worker) = (image("web", 6), image("worker", 6));
    f.rt.publish_image(&big_web, ImageBehavior::Healthy, 400_000_000);
    f.rt.publish_image(&big_worker, ImageBehavior::Healthy, 400_000_000);
    let v2 = release("2", &big_web, &big_worker);
    f.rec.apply(Origin::Server { generation: 1 }, Some(v1.clone())).await.unwrap();
    f.rt.set_free_disk(Some(1_000_000_000));
    let before = f.rt.calls().len();
    let out = f.rec.apply(Origin::Server { generation: 2 }, Some(v2.clone())).await.unwrap();
    let UpdateResult::Failed { reason } = out.result else { panic!("{out:?}") };
    assert_eq!(
        reason,
        "not enough disk to download the release: needs 1300 MB free (800 MB of images + 500 MB reserve), 1000 MB free"
    );
    assert_eq!(f.rt.calls().len(), before, "nothing pulled, nothing touched");
    assert_eq!(running_names(&f.rt).await, names_of(&v1));
    // Space freed: the next converge (resync) proceeds.
    f.rt.set_free_disk(Some(1_400_000_000));
    f.rec.converge().await.unwrap();
    assert_eq!(running_names(&f.rt).await, names_of(&v2));
}

#[tokio::test(start_paused = true)]
async fn an_engine_outage_mid_update_is_retried_not_rolled_back() {
    let f = fixture();
    let v1 = release("1", &image("web", 1), &image("worker", 1));
    let v2 = release("2", &image("web", 2), &image("worker", 2));
    f.rec.apply(Origin::Server { generation: 1 }, Some(v1)).await.unwrap();
    f.rt.set_unreachable(true);
    let err = f.rec.apply(Origin::Server { generation: 2 }, Some(v2.clone())).await.unwrap_err();
    assert!(err.to_string().contains("unreachable"), "{err}");
    assert_eq!(f.rec.state().failed().unwrap(), None, "an outage does not condemn the release");
    f.rt.set_unreachable(false);
    f.rec.converge().await.unwrap();
    assert_eq!(running_names(&f.rt).await, names_of(&v2));
}

#[tokio::test(start_paused = true)]
async fn the_update_status_says_what_the_update_is_doing_while_it_runs() {
    let f = fixture();
    let rec = Arc::new(f.rec);
    let mut bad = release("2", &image("slow", 5), &image("worker", 1));
    bad.services[0].health_deadline = Duration::from_millis(500);
    let update = tokio::spawn({
        let rec = rec.clone();
        async move { rec.apply(Origin::Server { generation: 7 }, Some(bad)).await }
    });
    // The slow image keeps the update in its health wait until its deadline.
    let mut during = None;
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let s = rec.status();
        if s.phase == UpdatePhase::WaitingHealthy {
            during = Some(s);
            break;
        }
    }
    let during = during.expect("the status showed the health wait");
    assert_eq!(during.target_generation, Some(7));
    assert_eq!(during.pull, None, "pull progress is cleared once the downloads are done");
    let outcome = update.await.unwrap().unwrap();
    assert!(matches!(outcome.result, UpdateResult::RolledBack { .. }));
    let after = rec.status();
    assert_eq!((after.phase, after.target_generation), (UpdatePhase::Idle, None));
}

/// A host with one FTDI adapter at `dev` (its by-id link pointing there).
fn host_with_adapter(dev: Option<&str>) -> fleet_agent::hardware::HostHardware {
    use fleet_agent::hardware::{DeviceNode, HostHardware};
    use fleet_proto::inventory::{SerialPort, UsbIds};
    let mut hw = HostHardware::default();
    hw.inventory.memory_bytes = 8 << 30;
    hw.inventory.cpus.online = "0-3".into();
    if let Some(dev) = dev {
        let minor = dev.trim_start_matches("/dev/ttyUSB").parse().unwrap();
        hw.inventory.serial.push(SerialPort {
            dev_path: dev.into(),
            by_id: vec!["usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0".into()],
            by_path: vec![],
            usb: Some(UsbIds {
                vendor: "0403".into(),
                product: "6001".into(),
                serial: Some("A50285BI".into()),
                manufacturer: None,
                product_name: None,
            }),
        });
        hw.nodes.insert(dev.into(), DeviceNode { major: 188, minor, gid: 20 });
        hw.links.insert(
            "/dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0".into(),
            dev.into(),
        );
    }
    hw
}

/// `web` needs the FTDI adapter by its by-id name; `worker` needs nothing.
fn lidar_release(version: &str) -> ReleaseSpec {
    use fleet_proto::release::{HardwareRequest, SerialSelector};
    let mut r = release(version, &image("web", 1), &image("worker", 1));
    r.services[0].hardware = vec![HardwareRequest::Serial {
        port: SerialSelector::ById("usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0".into()),
        container_path: "/dev/lidar".into(),
    }];
    r
}

#[tokio::test(start_paused = true)]
async fn a_device_back_under_a_new_node_recreates_only_the_service_that_uses_it() {
    let mut f = fixture();
    f.rec = f.rec.with_hardware(host_with_adapter(Some("/dev/ttyUSB0")), Default::default());
    let v1 = lidar_release("1");
    let origin = Origin::Server { generation: 1 };
    assert_eq!(f.rec.apply(origin, Some(v1.clone())).await.unwrap().result, UpdateResult::Applied);
    let first = running_names(&f.rt).await;
    let web = first.iter().find(|n| n.contains("-web-")).unwrap().clone();
    let mapped = f.rt.hardware_of(&web).unwrap();
    assert_eq!(mapped.devices[0].host_path, "/dev/ttyUSB0");
    assert_eq!(mapped.devices[0].container_path, "/dev/lidar");
    assert_eq!(mapped.group_add, vec!["20".to_owned()]);
    assert_ne!(web, container_name(&device(), &v1.services[0], false), "hardware is hashed");

    // Unplugged: the release in force cannot be mapped; its containers are left as they are.
    f.rec.set_hardware(host_with_adapter(None));
    assert_eq!(f.rec.converge().await.unwrap(), None);
    assert_eq!(running_names(&f.rt).await, first);

    // Back as ttyUSB1: web is re-created with the new node, worker is untouched.
    f.rec.set_hardware(host_with_adapter(Some("/dev/ttyUSB1")));
    f.rec.converge().await.unwrap();
    let second = running_names(&f.rt).await;
    assert_eq!(second.len(), 2, "{second:?}");
    let new_web = second.iter().find(|n| n.contains("-web-")).unwrap();
    assert_ne!(*new_web, web);
    assert_eq!(f.rt.hardware_of(new_web).unwrap().devices[0].host_path, "/dev/ttyUSB1");
    let worker = |names: &[String]| names.iter().find(|n| n.contains("-worker-")).cloned();
    assert_eq!(worker(&second), worker(&first), "the other service keeps its container");
}

#[tokio::test(start_paused = true)]
async fn a_release_needing_absent_hardware_fails_before_anything_changes_and_is_retried() {
    let mut f = fixture();
    f.rec = f.rec.with_hardware(host_with_adapter(None), Default::default());
    let v1 = release("1", &image("web", 1), &image("worker", 1));
    f.rec.apply(Origin::Server { generation: 1 }, Some(v1)).await.unwrap();
    let before = running_names(&f.rt).await;
    let calls = f.rt.calls().len();

    let v2 = lidar_release("2");
    let out = f.rec.apply(Origin::Server { generation: 2 }, Some(v2)).await.unwrap();
    let UpdateResult::Failed { reason } = out.result else { panic!("{out:?}") };
    assert_eq!(
        reason,
        "unsatisfiable on this device: services[0].hardware[0]: serial by-id usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0 not present"
    );
    assert_eq!(f.rt.calls().len(), calls, "no engine call changed anything");
    assert_eq!(running_names(&f.rt).await, before);
    assert!(f.rec.state().failed().unwrap().is_none(), "not marked failed: it may fit later");

    // The adapter is plugged in: the next converge applies the release.
    f.rec.set_hardware(host_with_adapter(Some("/dev/ttyUSB0")));
    let out = f.rec.converge().await.unwrap().unwrap();
    assert_eq!(out.result, UpdateResult::Applied);
}

// --- Release networks and volumes ---------------------------------------------------------------

/// `release` of another app, `app`, with its web service mounting the named volume `data`.
fn app_release(app: &str, version: &str, web: &ImageRef) -> ReleaseSpec {
    let mut r = release(version, web, &image("worker", 1));
    r.app = app.into();
    r.id = ReleaseId::new(format!("{app}@{version}")).unwrap();
    r.services[0].volumes = vec![fleet_proto::release::VolumeMount {
        source: fleet_proto::release::VolumeSource::Named(format!("{app}_data")),
        target: "/data".into(),
        read_only: false,
    }];
    r
}

#[tokio::test(start_paused = true)]
async fn services_join_their_apps_network_under_their_names_and_old_networks_go() {
    let f = fixture();
    let v1 = app_release("iot", "1", &image("web", 1));
    f.rec.apply(Origin::Server { generation: 1 }, Some(v1.clone())).await.unwrap();
    let web = container_name(&device(), &v1.services[0], false);
    let joined = f.rt.networks_of(&web);
    assert_eq!(joined.len(), 1);
    assert_eq!(joined[0].network, "sim-1_iot_default");
    // The service name first, then the Compose aliases (the sample's web answers to "ui").
    assert_eq!(joined[0].aliases, ["web", "ui"]);
    let nets: Vec<String> = f.rt.networks().await.unwrap().into_iter().map(|n| n.name).collect();
    assert_eq!(nets, ["sim-1_iot_default"]);

    // The device moves to another app: its network replaces the old one, which is removed
    // once the update went through. The old app's volume stays (no purge was asked for).
    let shop = app_release("shop", "1", &image("web", 2));
    let out = f.rec.apply(Origin::Server { generation: 2 }, Some(shop)).await.unwrap();
    assert_eq!(out.result, UpdateResult::Applied);
    let nets: Vec<String> = f.rt.networks().await.unwrap().into_iter().map(|n| n.name).collect();
    assert_eq!(nets, ["sim-1_shop_default"]);
    let vols: Vec<String> = f.rt.volumes().await.unwrap().into_iter().map(|v| v.name).collect();
    assert_eq!(vols, ["iot_data", "shop_data"]);

    // A purge deletes only the volumes of apps the device no longer runs.
    assert_eq!(f.rec.purge_volumes().await.unwrap(), ["iot_data"]);
    let vols: Vec<String> = f.rt.volumes().await.unwrap().into_iter().map(|v| v.name).collect();
    assert_eq!(vols, ["shop_data"]);
    assert!(f.rec.purge_volumes().await.unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_volume_of_another_app_is_a_clash_refused_before_anything_changes() {
    let f = fixture();
    let shop = app_release("shop", "1", &image("web", 1));
    f.rec.apply(Origin::Server { generation: 1 }, Some(shop)).await.unwrap();
    let before = running_names(&f.rt).await;
    // An app whose Compose file names its volume exactly like the other app's.
    let mut iot = app_release("iot", "1", &image("web", 2));
    iot.services[0].volumes[0].source =
        fleet_proto::release::VolumeSource::Named("shop_data".into());
    let out = f.rec.apply(Origin::Server { generation: 2 }, Some(iot)).await.unwrap();
    let UpdateResult::Failed { reason } = out.result else { panic!("{:?}", out.result) };
    assert!(reason.contains("volume shop_data holds the data of app shop"), "{reason}");
    assert_eq!(running_names(&f.rt).await, before, "the running release is untouched");
}
