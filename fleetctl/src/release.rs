//! `fleetctl release`: create (from a Compose file or canonical JSON), create agent releases
//! (one binary per platform), list and show releases.

use std::path::PathBuf;

use base64::Engine as _;
use clap::Subcommand;
use fleet_api::client::encode_component;
use fleet_api::{AgentBinaryUpload, AgentReleaseRequest, Release, ReleaseRequest};

use crate::client::{all_pages, print_json, Client, Failure};
use crate::show::{table, utc};

#[derive(Debug, Subcommand)]
pub enum ReleaseVerb {
    /// Create a release from a Compose file; every image tag is resolved to a digest.
    ///
    /// Example: fleetctl release create robot-stack 1.4.2 -f compose.yaml
    /// (`-f -` reads standard input; a .json file is taken as the canonical release.)
    Create {
        /// Application name.
        app: String,
        /// Version.
        version: String,
        /// The Compose file (see fleet-server/COMPOSE.md for the supported subset).
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// A Compose profile to run (repeatable): services with `profiles` run only when one of
        /// theirs is given; services without always run (example: --profile lidar).
        #[arg(long = "profile", value_name = "NAME")]
        profiles: Vec<String>,
    },
    /// Create agent release fleet-agent@VERSION from one binary per platform: the server checks
    /// each is an executable for its platform and VERSION is newer than every agent release,
    /// pushes them to the fleet's registry and signs the release. Roll it out like any release.
    ///
    /// Example: fleetctl release create-agent 0.2.0 --binary linux/arm64=dist/arm64/fleet-agent
    /// --binary linux/arm/v7=dist/armv7/fleet-agent --binary linux/amd64=dist/amd64/fleet-agent
    CreateAgent {
        /// The agent version (semver, newer than every agent release).
        version: String,
        /// PLATFORM=PATH: linux/arm64, linux/arm/v7 or linux/amd64 and its fleet-agent binary.
        #[arg(long = "binary", value_name = "PLATFORM=PATH", required = true)]
        binaries: Vec<String>,
        /// How long a device has to commit the new version before it reverts by itself.
        #[arg(long, value_name = "DURATION", default_value = "120s")]
        deadline: String,
    },
    /// List releases (example: fleetctl release ls --app robot-stack).
    Ls {
        /// Only this application's.
        #[arg(long)]
        app: Option<String>,
    },
    /// Show a release (example: fleetctl release show robot-stack@1.4.2 --compose).
    Show {
        /// Release id (app@version).
        id: String,
        /// Print the Compose file it was made from.
        #[arg(long)]
        compose: bool,
    },
}

pub fn release(json: bool, client: &Client, verb: &ReleaseVerb) -> Result<(), Failure> {
    match verb {
        ReleaseVerb::Create { app, version, file, profiles } => {
            let text = if file.as_os_str() == "-" {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                    .map_err(|e| Failure::usage(format!("standard input: {e}")))?;
                s
            } else {
                std::fs::read_to_string(file)
                    .map_err(|e| Failure::usage(format!("cannot read {}: {e}", file.display())))?
            };
            let request = if file.extension().is_some_and(|e| e == "json") {
                let spec = serde_json::from_str(&text).map_err(|e| {
                    Failure::usage(format!("{}: not a release as JSON: {e}", file.display()))
                })?;
                if !profiles.is_empty() {
                    return Err(Failure::usage("--profile selects services of a Compose file; a release as JSON lists its services already"));
                }
                ReleaseRequest {
                    app: app.clone(),
                    version: version.clone(),
                    compose: None,
                    spec: Some(spec),
                    profiles: Vec::new(),
                }
            } else {
                ReleaseRequest {
                    app: app.clone(),
                    version: version.clone(),
                    compose: Some(text),
                    spec: None,
                    profiles: profiles.clone(),
                }
            };
            eprintln!("resolving image tags to digests...");
            let r: Release = client.post("/api/v1/releases", &request)?;
            if json {
                print_json(&r);
            } else {
                println!("created release {}", r.id());
                for i in &r.images {
                    let platforms: Vec<String> = i
                        .resolved
                        .platforms
                        .iter()
                        .map(|p| {
                            format!("{}/{}", p.os, p.architecture)
                                + &p.variant.as_ref().map(|v| format!("/{v}")).unwrap_or_default()
                        })
                        .collect();
                    println!(
                        "  {:<16} {} -> {} [{}]",
                        i.service,
                        i.reference,
                        i.resolved.image.digest(),
                        platforms.join(", ")
                    );
                }
                eprintln!("next: `fleetctl rollout plan {} --target GROUP`", r.id());
            }
        }
        ReleaseVerb::CreateAgent { version, binaries, deadline } => {
            let mut uploads = Vec::new();
            let mut total = 0;
            for arg in binaries {
                let (platform, path) = arg.split_once('=').ok_or_else(|| {
                    Failure::usage(format!(
                        "--binary {arg}: give PLATFORM=PATH, e.g. linux/arm64=dist/fleet-agent"
                    ))
                })?;
                let bytes = std::fs::read(path).map_err(|e| {
                    Failure::usage(format!("--binary {arg}: cannot read {path}: {e}"))
                })?;
                total += bytes.len();
                uploads.push(AgentBinaryUpload {
                    platform: platform.to_owned(),
                    base64: base64::engine::general_purpose::STANDARD.encode(bytes),
                });
            }
            let request = AgentReleaseRequest {
                version: version.clone(),
                binaries: uploads,
                deadline: Some(deadline.clone()),
            };
            eprintln!(
                "uploading {} binaries ({:.1} MB); the server checks them and pushes them to its registry...",
                binaries.len(),
                total as f64 / 1e6
            );
            let r: Release = client.post("/api/v1/agent-releases", &request)?;
            if json {
                print_json(&r);
            } else {
                println!("created agent release {}", r.id());
                if let Some(agent) = &r.agent {
                    for b in &agent.binaries {
                        println!("  {:<14} {}  {} B", b.platform, b.digest, b.size);
                    }
                    println!("  in {} (index {})", agent.repository, agent.index);
                }
                eprintln!(
                    "next: `fleetctl rollout plan {} --target GROUP --waves 1,10%,100%`",
                    r.id()
                );
            }
        }
        ReleaseVerb::Ls { app } => {
            let query: Vec<String> =
                app.iter().map(|a| format!("app={}", encode_component(a))).collect();
            let releases: Vec<Release> = all_pages(client, "/api/v1/releases", &query)?;
            if json {
                print_json(&releases);
            } else if releases.is_empty() {
                eprintln!("no releases yet: `fleetctl release create APP VERSION -f compose.yaml`");
            } else {
                let rows: Vec<Vec<String>> = releases
                    .iter()
                    .map(|r| {
                        let services: Vec<String> = match &r.agent {
                            Some(agent) => {
                                agent.binaries.iter().map(|b| b.platform.clone()).collect()
                            }
                            None => r.spec.services.iter().map(|s| s.name.to_string()).collect(),
                        };
                        vec![
                            r.id().to_string(),
                            utc(r.created_at),
                            r.created_by.clone(),
                            services.join(","),
                        ]
                    })
                    .collect();
                table(&["RELEASE", "CREATED", "BY", "SERVICES / PLATFORMS"], &rows);
            }
        }
        ReleaseVerb::Show { id, compose } => {
            let r: Release = client.get(&format!("/api/v1/releases/{}", encode_component(id)))?;
            if json {
                print_json(&r);
            } else if *compose {
                print!(
                    "{}",
                    r.compose
                        .as_deref()
                        .unwrap_or("# this release was given as JSON, not as a Compose file\n")
                );
            } else {
                println!(
                    "release  {}  (created {} by {})",
                    r.id(),
                    utc(r.created_at),
                    r.created_by
                );
                for s in &r.spec.services {
                    println!("  {:<16} {}", s.name.to_string(), s.image);
                }
                if let Some(agent) = &r.agent {
                    println!(
                        "  agent binaries in {} (index {}), trial deadline {} s",
                        agent.repository, agent.index, agent.deadline_secs
                    );
                    for b in &agent.binaries {
                        println!("  {:<16} {}  {} B", b.platform, b.digest, b.size);
                    }
                }
            }
        }
    }
    Ok(())
}
