//! What per-device variables cost a rollout: resolving a device's variables and rendering its
//! release, per device, for 10,000 devices. Run with
//! `cargo run --release -p fleet-server --example render_cost`.

#![allow(clippy::unwrap_used, clippy::needless_range_loop)]

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use fleet_proto::{ImageRef, UnixMillis};
use fleet_server::compose::Compose;
use fleet_server::groups::{Group, Selector};
use fleet_server::releases::{ImageInfo, ResolvedImage};
use fleet_server::variables::{render, DeviceVars, Scope, VarIndex, VariableRecord};

const DEVICES: usize = 10_000;

const COMPOSE: &str = "services:\n  web:\n    image: reg.example/web:1\n    ports: [\"${PORT:-8080}:80\"]\n    environment:\n      SITE: ${SITE:-none}\n      LOG: ${LOG_LEVEL:-info}\n    deploy:\n      resources:\n        limits: { memory: 64M, cpus: \"0.5\" }\n  worker:\n    image: reg.example/worker:1\n    command: [\"run\", \"--site\", \"${SITE:-none}\"]\n  db:\n    image: reg.example/db:1\n    volumes: [\"data:/var/lib/db\"]\nvolumes:\n  data: {}\n";

fn var(name: &str, value: &str, scope: Scope) -> VariableRecord {
    VariableRecord {
        name: name.into(),
        value: value.into(),
        scope,
        updated_at: UnixMillis(1),
        updated_by: "bench".into(),
    }
}

fn main() {
    let parsed = Compose::parse(COMPOSE.as_bytes(), &BTreeMap::new()).unwrap();
    let mut digests = BTreeMap::new();
    let mut images = Vec::new();
    for (i, used) in parsed.images().into_iter().enumerate() {
        let image = ImageRef::parse(&format!("reg.example/x@sha256:{}", format!("{i}").repeat(64)))
            .unwrap();
        digests.insert(used.reference.clone(), image.clone());
        images.push(ImageInfo {
            service: used.service.to_string(),
            reference: used.reference,
            resolved: ResolvedImage {
                image,
                media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                platforms: vec![],
            },
        });
    }
    let spec = parsed.into_release("bench", "1", &digests).unwrap();
    let groups: Vec<Group> = (0..20)
        .map(|g| Group {
            name: format!("site-{g:02}"),
            selector: Selector::parse(&format!("site=s{g}")).unwrap(),
            description: String::new(),
            created_at: UnixMillis(1),
            created_by: "bench".into(),
        })
        .collect();
    let labels: Vec<BTreeMap<String, String>> = (0..DEVICES)
        .map(|d| BTreeMap::from([("site".to_owned(), format!("s{}", d % 20))]))
        .collect();
    let ids: Vec<String> = (0..DEVICES).map(|d| format!("robot-{d}")).collect();

    // 1. No variables, a release without ${...}: the fast path.
    let empty = VarIndex::new(vec![], &groups);
    let t = Instant::now();
    for d in 0..DEVICES {
        let vars = empty.device_vars(&ids[d], &labels[d]);
        assert!(vars.is_empty());
        std::hint::black_box(spec.clone());
    }
    report("no variables, nothing to interpolate (fast path)", t);

    // 2. Fleet + 20 site groups + a service value; renders cached per distinct variable set.
    let mut vars = vec![var("LOG_LEVEL", "debug", Scope::default())];
    for g in &groups {
        vars.push(var("SITE", &g.name, Scope { group: Some(g.name.clone()), ..Scope::default() }));
        vars.push(var(
            "TOKEN",
            "x",
            Scope {
                group: Some(g.name.clone()),
                service: Some("worker".into()),
                ..Scope::default()
            },
        ));
    }
    let index = VarIndex::new(vars.clone(), &groups);
    let mut cache: HashMap<DeviceVars, fleet_proto::ReleaseSpec> = HashMap::new();
    let t = Instant::now();
    for d in 0..DEVICES {
        let v = index.device_vars(&ids[d], &labels[d]);
        let out = match cache.get(&v) {
            Some(s) => s.clone(),
            None => {
                let s = render(&spec, Some(COMPOSE), &images, &v).unwrap();
                cache.insert(v, s.clone());
                s
            }
        };
        std::hint::black_box(out);
    }
    report(
        &format!(
            "fleet + group + group/service variables, {} distinct renders cached",
            cache.len()
        ),
        t,
    );

    // 3. Worst case: every device has its own value, so every device is rendered (parse,
    //    interpolate, convert, validate).
    for d in 0..DEVICES {
        vars.push(var(
            "PORT",
            &(10_000 + d).to_string(),
            Scope { device: Some(ids[d].clone()), ..Scope::default() },
        ));
    }
    let index = VarIndex::new(vars, &groups);
    let t = Instant::now();
    for d in 0..DEVICES {
        let v = index.device_vars(&ids[d], &labels[d]);
        std::hint::black_box(render(&spec, Some(COMPOSE), &images, &v).unwrap());
    }
    report("a device value on every device: every device rendered", t);
}

fn report(what: &str, t: Instant) {
    let total = t.elapsed();
    println!(
        "{what}: {:.1} ms for {DEVICES} devices, {:.2} us per device",
        total.as_secs_f64() * 1e3,
        total.as_secs_f64() * 1e6 / DEVICES as f64
    );
}
