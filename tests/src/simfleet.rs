pub use fleet_sim::fleet::*;

/// The image the simulated engine runs as number `n` (its behaviour is what the agent is
/// started with: `start_agent(id, &[(app_image(1), ImageBehavior::Healthy), ...])`).
pub fn app_image(n: u8) -> fleet_proto::ImageRef {
    let digest = format!("{n:x}").repeat(64);
    fleet_proto::ImageRef::parse(&format!("127.0.0.1:5000/demo/app@sha256:{digest}")).unwrap()
}

/// Release `app@VERSION`: one service `web` on `image`, healthy within `health_deadline`.
pub fn app_release(
    version: &str,
    image: fleet_proto::ImageRef,
    health_deadline: std::time::Duration,
) -> fleet_proto::ReleaseSpec {
    use fleet_proto::{ReleaseId, ServiceName, ServiceSpec};
    fleet_proto::ReleaseSpec {
        id: ReleaseId::new(format!("app@{version}")).unwrap(),
        app: "app".into(),
        version: version.into(),
        services: vec![ServiceSpec {
            health_deadline,
            ..ServiceSpec::new(ServiceName::new("web").unwrap(), image)
        }],
    }
}
