//! The test environment is what later tests rely on: a Docker engine speaking API 1.41, a
//! registry serving every test image by digest, and images that behave as their names say.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::{ContainerCreateBody, HealthStatusEnum, HostConfig};
use bollard::query_parameters::{
    CreateImageOptionsBuilder, InspectContainerOptions, RemoveContainerOptionsBuilder,
    StartContainerOptions,
};
use bollard::Docker;
use fleet_e2e::{eventually, TestEnv};
use futures_util::TryStreamExt;

const LABEL: &str = "io.fleet.e2e";

async fn pull(docker: &Docker, reference: &str) {
    docker
        .create_image(
            Some(CreateImageOptionsBuilder::default().from_image(reference).build()),
            None,
            None,
        )
        .try_collect::<Vec<_>>()
        .await
        .unwrap_or_else(|e| panic!("pull {reference}: {e}"));
}

async fn run(docker: &Docker, name: &str, reference: &str, host: HostConfig) -> String {
    let _ = docker
        .remove_container(name, Some(RemoveContainerOptionsBuilder::default().force(true).build()))
        .await;
    let body = ContainerCreateBody {
        image: Some(reference.to_owned()),
        labels: Some(HashMap::from([(LABEL.to_owned(), "environment".to_owned())])),
        host_config: Some(host),
        ..Default::default()
    };
    let opts =
        bollard::query_parameters::CreateContainerOptionsBuilder::default().name(name).build();
    let id = docker.create_container(Some(opts), body).await.unwrap().id;
    docker.start_container(&id, None::<StartContainerOptions>).await.unwrap();
    id
}

async fn remove(docker: &Docker, id: &str) {
    docker
        .remove_container(id, Some(RemoveContainerOptionsBuilder::default().force(true).build()))
        .await
        .unwrap();
}

#[tokio::test]
async fn the_engine_speaks_api_1_41_or_newer() {
    let env = TestEnv::load();
    let docker = env.docker().await;
    let version = docker.version().await.unwrap();
    let api = version.api_version.unwrap();
    let (major, minor) = api.split_once('.').unwrap();
    assert!((major.parse::<u32>().unwrap(), minor.parse::<u32>().unwrap()) >= (1, 41), "API {api}");
    assert_eq!(api, env.docker_api_version);
}

#[tokio::test]
async fn every_test_image_pulls_by_digest_with_the_recorded_digest() {
    let env = TestEnv::load();
    let docker = env.docker().await;
    assert_eq!(env.images.len(), 10, "five images in two versions");
    for (key, image) in &env.images {
        assert!(image.reference.ends_with(&format!("@{}", image.digest)), "{key}");
        assert!(image.reference.starts_with(&env.registry), "{key} comes from the local registry");
        pull(&docker, &image.reference).await;
        let inspect = docker.inspect_image(&image.reference).await.unwrap();
        let digests = inspect.repo_digests.unwrap_or_default();
        assert!(digests.contains(&image.reference), "{key}: {digests:?}");
    }
}

#[tokio::test]
async fn the_test_images_behave_as_named() {
    let env = TestEnv::load();
    let docker = env.docker().await;
    let mut started = Vec::new();
    for key in ["web:1", "web:2", "unhealthy:1", "crash:1", "memhog:1"] {
        let image = env.image(key);
        pull(&docker, &image.reference).await;
        let host = if key.starts_with("memhog") {
            HostConfig { memory: Some(32 << 20), memory_swap: Some(32 << 20), ..Default::default() }
        } else {
            HostConfig::default()
        };
        let name = format!("fleet-e2e-env-{}", key.replace(':', "-"));
        started.push((key, run(&docker, &name, &image.reference, host).await));
    }
    for (key, id) in &started {
        let docker = &docker;
        let state =
            eventually(&format!("{key} to settle"), Duration::from_secs(30), || async move {
                let state = docker
                    .inspect_container(id, None::<InspectContainerOptions>)
                    .await
                    .ok()?
                    .state?;
                let health = state.health.as_ref().and_then(|h| h.status);
                let settled = match *key {
                    "web:1" | "web:2" => health == Some(HealthStatusEnum::HEALTHY),
                    "unhealthy:1" => health == Some(HealthStatusEnum::UNHEALTHY),
                    _ => state.running == Some(false) && state.exit_code.is_some(),
                };
                settled.then_some(state)
            })
            .await;
        match *key {
            "crash:1" => assert_eq!(state.exit_code, Some(1), "crash exits 1"),
            "memhog:1" => {
                assert_eq!(state.oom_killed, Some(true), "memhog is OOM-killed under 32 MiB")
            }
            _ => assert_eq!(state.running, Some(true), "{key} keeps running"),
        }
    }
    for (_, id) in started {
        remove(&docker, &id).await;
    }
}
