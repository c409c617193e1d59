//! `x-fleet`: the service's keys, the top-level defaults, hardware requests, agent probes.

use super::*;

#[test]
fn x_fleet_keys_map_and_top_level_defaults_apply() {
    let yaml = "x-fleet:\n  update: stop-first\n  health_deadline: 2m\nservices:\n  a:\n    image: x\n  b:\n    image: y\n    x-fleet:\n      update: start-first\n      realtime_priority: 80\n      health: {http: {port: 8080, path: /healthz}}\n";
    let r = release(yaml);
    assert_eq!(r.services[0].update, UpdateStrategy::StopFirst);
    assert_eq!(r.services[0].health_deadline, Duration::from_secs(120));
    assert_eq!(r.services[1].update, UpdateStrategy::StartFirst, "the service's own key wins");
    assert_eq!(r.services[1].health_deadline, Duration::from_secs(120));
    assert_eq!(r.services[1].resources.realtime_priority, Some(80));
    assert_eq!(
        r.services[1].healthcheck.as_ref().unwrap().probe,
        Probe::Http { port: 8080, path: "/healthz".into() }
    );
}

#[test]
fn x_fleet_hardware_forms_map_to_requests() {
    let s = svc(r#"x-fleet:
  hardware:
    - serial: { by-id: usb-FTDI_FT232R_A50285BI-if00-port0 }
      path: /dev/ttyUSB0
    - serial: { usb: "0403:6001:A50285BI" }
      path: /dev/ttyUSB1
    - serial: /dev/serial/by-path/platform-usb-0:1.3:1.0-port0
      path: /dev/gps
    - gpio: gpiochip0
    - i2c: 1
    - spi: "0.1"
    - spi: { bus: 1, chip_select: 0 }
    - video: { name: "HD Pro Webcam C920" }
    - video: { by-id: usb-046d_C920-video-index0 }
    - gpu: jetson
    - gpu: { nvidia: { count: 2 } }
    - can: can0
    - device: /dev/hailo0
  optional_hardware:
    - device: /dev/ttyAMA0
      path: /dev/console-uart
      permissions: rw"#);
    let serial = |port, path: &str| HardwareRequest::Serial { port, container_path: path.into() };
    assert_eq!(
        s.hardware,
        [
            serial(
                SerialSelector::ById("usb-FTDI_FT232R_A50285BI-if00-port0".into()),
                "/dev/ttyUSB0"
            ),
            serial(
                SerialSelector::Usb {
                    vendor: "0403".into(),
                    product: "6001".into(),
                    serial: Some("A50285BI".into())
                },
                "/dev/ttyUSB1"
            ),
            serial(SerialSelector::ByPath("platform-usb-0:1.3:1.0-port0".into()), "/dev/gps"),
            HardwareRequest::Gpio { chip: "gpiochip0".into() },
            HardwareRequest::I2c { bus: 1 },
            HardwareRequest::Spi { bus: 0, chip_select: 1 },
            HardwareRequest::Spi { bus: 1, chip_select: 0 },
            HardwareRequest::Video { device: "HD Pro Webcam C920".into() },
            HardwareRequest::Video { device: "/dev/v4l/by-id/usb-046d_C920-video-index0".into() },
            HardwareRequest::Gpu { kind: GpuKind::Jetson, select: GpuSelect::All },
            HardwareRequest::Gpu { kind: GpuKind::Nvidia, select: GpuSelect::Count(2) },
            HardwareRequest::Can { interface: "can0".into() },
            HardwareRequest::Device {
                host_path: "/dev/hailo0".into(),
                container_path: "".into(),
                permissions: "".into()
            },
        ]
    );
    assert_eq!(
        s.optional_hardware,
        [HardwareRequest::Device {
            host_path: "/dev/ttyAMA0".into(),
            container_path: "/dev/console-uart".into(),
            permissions: "rw".into()
        }]
    );
}

#[test]
fn x_fleet_refuses_unknown_keys_and_malformed_requests() {
    let at = "services.s.x-fleet";
    assert!(refused("x-fleet: {updates: stop-first}", &format!("{at}.updates"))
        .contains("unknown x-fleet key"));
    assert!(refused("x-fleet: {update: rolling}", &format!("{at}.update")).contains("start-first"));
    assert!(refused("x-fleet: {health_deadline: 0s}", &format!("{at}.health_deadline"))
        .contains("longer than zero"));
    assert!(refused("x-fleet: {realtime_priority: 120}", &format!("{at}.realtime_priority"))
        .contains("1..=99"));
    assert!(refused("x-fleet: {hardware: [{serial: {by-id: x}}]}", &format!("{at}.hardware[0]"))
        .contains("path: /dev/ttyUSB0"));
    assert!(refused(
        "x-fleet: {hardware: [{serial: /dev/ttyUSB0, path: /dev/ttyUSB0}]}",
        &format!("{at}.hardware[0].serial")
    )
    .contains("stable identity"));
    assert!(refused("x-fleet: {hardware: [{spi: 0.1}]}", &format!("{at}.hardware[0].spi"))
        .contains("quote"));
    assert!(refused("x-fleet: {hardware: [{gpu: amd}]}", &format!("{at}.hardware[0].gpu"))
        .contains("nvidia, jetson or dri"));
    assert!(refused("x-fleet: {hardware: [{gpio: a, i2c: 1}]}", &format!("{at}.hardware[0].i2c"))
        .contains("one request per list item"));
    assert!(refused("x-fleet: {hardware: [{lidar: x}]}", &format!("{at}.hardware[0].lidar"))
        .contains("unknown key"));
    assert!(refused(
        "x-fleet: {hardware: [{gpio: a, path: /x}]}",
        &format!("{at}.hardware[0].path")
    )
    .contains("serial and device"));
    assert!(refused("x-fleet: {hardware: [{i2c: 1}, {i2c: 1}]}", &format!("{at}.hardware[1]"))
        .contains("already requested"));
    assert!(refused("x-fleet: {health: {grpc: {port: 1}}}", &format!("{at}.health.grpc"))
        .contains("unknown probe"));
    assert!(refused(
        "healthcheck: {test: [\"CMD\", \"x\"]}\nx-fleet: {health: {tcp: {port: 5432}}}",
        &format!("{at}.health")
    )
    .contains("one health check"));
}

#[test]
fn x_fleet_at_the_top_level_takes_defaults_only() {
    let yaml = "x-fleet:\n  hardware: [{i2c: 1}]\nservices:\n  s:\n    image: x\n";
    assert!(refused_file(yaml, "x-fleet.hardware").contains("belongs to the service"));
}

#[test]
fn agent_probes_take_their_timings_from_the_healthcheck_section() {
    let h = svc("healthcheck: {interval: 5s, retries: 2}\nx-fleet: {health: {tcp: {port: 5432}}}")
        .healthcheck
        .unwrap();
    assert_eq!(h.probe, Probe::Tcp { port: 5432 });
    assert_eq!((h.interval, h.retries), (Duration::from_secs(5), 2));
}
