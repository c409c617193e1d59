//! The file as YAML: interpolation, anchors and merge keys, syntax errors, hostile inputs.

use super::*;

#[test]
fn interpolation_applies_to_every_string_value() {
    let vars: BTreeMap<String, String> =
        [("TAG", "1.2"), ("PORT", "8080")].into_iter().map(|(k, v)| (k.into(), v.into())).collect();
    let yaml = "services:\n  s:\n    image: app:${TAG}\n    ports: [\"${PORT}:80\"]\n    environment: {PRICE: \"$$5\", MODE: \"${MODE:-prod}\"}\n    cpus: ${CPUS:-0.5}\n";
    let c = Compose::parse(yaml.as_bytes(), &vars).unwrap();
    assert_eq!(c.images()[0].reference, "app:1.2");
    let images = fake_images(&c);
    let s = c.into_release("a", "1", &images).unwrap().services.remove(0);
    assert_eq!(s.ports[0].host_port, 8080);
    assert_eq!(s.env["PRICE"], "$5");
    assert_eq!(s.env["MODE"], "prod");
    assert_eq!(s.resources.cpu_millis, Some(500));
}

#[test]
fn interpolation_that_would_blow_the_file_up_is_refused_once_with_its_path() {
    // 64 KiB of value referenced 100 times in one string, and in many strings: both refused
    // without building gigabytes.
    let vars: BTreeMap<String, String> =
        [("A".to_owned(), "a".repeat(64 << 10))].into_iter().collect();
    let one =
        format!("services:\n  s:\n    image: app:1\n    command: [\"{}\"]\n", "$A".repeat(100));
    let found = Compose::parse(one.as_bytes(), &vars).unwrap_err();
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].reason.contains("larger than 4 MiB"), "{found:?}");
    let env: String = (0..100).map(|i| format!("      V{i}: $A\n")).collect();
    let many = format!("services:\n  s:\n    image: app:1\n    environment:\n{env}");
    let found = Compose::parse(many.as_bytes(), &vars).unwrap_err();
    assert_eq!(found.len(), 1, "refused once, not per string: {found:?}");
    assert!(found[0].path.starts_with("services.s.environment.V"), "{found:?}");
}

#[test]
fn an_unset_variable_is_a_problem_with_its_path_and_name() {
    let found = problems("services:\n  s:\n    image: app:${TAG}\n    environment:\n      SITE: ${SITE}\n    ports: [\"${PORT}:80\"]\n");
    let reasons: Vec<String> = found.iter().map(ToString::to_string).collect();
    assert_eq!(
        reasons,
        [
            "services.s.image: variable TAG is not set; give a default with ${TAG:-value}",
            "services.s.environment.SITE: variable SITE is not set; give a default with ${SITE:-value}",
            "services.s.ports[0]: variable PORT is not set; give a default with ${PORT:-value}",
        ],
        "one problem each, not a second one about the uninterpolated value"
    );
}

#[test]
fn extension_blocks_are_not_interpolated_but_their_merged_copies_are() {
    let yaml = "x-unused: {a: \"${NOPE}\"}\nx-common: &common\n  environment: {A: \"${A:-1}\"}\nservices:\n  s:\n    <<: *common\n    image: x\n    x-notes: \"${ALSO_NOPE}\"\n";
    assert_eq!(release(yaml).services[0].env["A"], "1");
}

#[test]
fn anchors_and_merge_keys_work_as_in_compose() {
    let yaml = r#"
x-common: &default
  restart: unless-stopped
  environment:
    TZ: Europe/Berlin
  labels:
    team: robots
services:
  a:
    <<: *default
    image: a
  b:
    <<: *default
    image: b
    restart: always
"#;
    let r = release(yaml);
    assert_eq!(r.services[0].restart, RestartPolicy::UnlessStopped);
    assert_eq!(r.services[0].env["TZ"], "Europe/Berlin");
    assert_eq!(r.services[1].restart, RestartPolicy::Always, "explicit keys win over merged ones");
    assert_eq!(r.services[1].labels["team"], "robots");
}

#[test]
fn yaml_syntax_errors_carry_a_line_and_column() {
    let err = parse("services:\n  a:\n    image: x\n  a:\n    image: y\n").unwrap_err();
    assert_eq!(err[0].path, "line 4, column 3");
    assert!(err[0].reason.contains("duplicate key \"a\""), "{err:?}");
    assert_eq!(err[0].line, Some(4));
    let err = parse("services:\n\ta: 1\n").unwrap_err();
    assert!(err[0].path.starts_with("line 2"), "{err:?}");
}

#[test]
fn hostile_inputs_are_refused_quickly() {
    let started = std::time::Instant::now();
    let big = vec![b'#'; MAX_COMPOSE_BYTES + 1];
    assert!(parse(std::str::from_utf8(&big).unwrap()).unwrap_err()[0].reason.contains("at most"));
    assert!(Compose::parse(b"services: \xff\n", &BTreeMap::new()).unwrap_err()[0]
        .reason
        .contains("UTF-8"));
    let deep = format!("services: {}1{}", "[".repeat(10_000), "]".repeat(10_000));
    assert!(parse(&deep).is_err());
    let mut bomb = String::from("x-a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n");
    for (prev, name) in ["a", "b", "c", "d", "e", "f", "g", "h"]
        .iter()
        .zip(["b", "c", "d", "e", "f", "g", "h", "i"])
    {
        bomb.push_str(&format!("x-{name}: &{name} [{}]\n", vec![format!("*{prev}"); 10].join(",")));
    }
    bomb.push_str("services:\n  s:\n    image: x\n    command: *i\n");
    assert!(parse(&bomb).is_err());
    let long = format!(
        "services:\n  s:\n    image: x\n    environment:\n      A: \"{}\"\n",
        "a".repeat(900_000)
    );
    assert_eq!(release(&long).services[0].env["A"].len(), 900_000);
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
}
