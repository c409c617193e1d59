//! Golden bytes: messages written by earlier builds must keep decoding.
//!
//! Each file under `golden/v1/` is a message encoded by the build that introduced it. The test
//! decodes every file and compares it with the sample it was made from, and checks that this
//! build still encodes the sample to the same bytes.
//!
//! Adding a message or a sample: run `FLEET_BLESS=1 cargo test -p fleet-proto --test golden`,
//! which writes fixtures that do not exist yet (it never overwrites one), and commit them.
//! Appending a field: the encode check of the affected fixtures fails by design. Keep those files
//! (they are now "bytes from an older build"), move their names to `DECODE_ONLY`, bless new
//! fixtures under new names, and make sure the old ones still decode to the sample with the new
//! field absent.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

use std::path::PathBuf;

use fleet_proto::{samples, Command, DesiredState, Message, TrustedKeys};

/// Fixtures kept only to prove old bytes decode (their encoding has since grown).
/// `desired`: written before `ServiceSpec` grew `group_add` and `optional_hardware`; it now
/// proves that those bytes decode with both fields empty. `desired-2`: written before it grew
/// `telemetry`; proves those bytes decode with it false. `desired-3`: written before it grew
/// `no_new_privileges` and `cpu_shares`; proves those bytes decode with them off and unset.
/// `desired-4`: written before it grew `networks`; those bytes decode with no networks (the
/// sample's web service is compared with its networks cleared). `desired-5`: written before
/// `ServiceSpec` grew `secrets` and `DesiredState` grew `secrets` and
/// `sealed_registry_credentials`; those bytes decode with all three empty. `desired-6` is the
/// current one. `report`: written before `StateReport` grew `seal_key`; it decodes with none.
/// `report-2`: written before it grew `agent`; it decodes with none. `desired-6`: written before
/// `DesiredState` grew `agent`; it decodes with none (`desired-7` is the current one).
/// `report-3`: written before `AgentVersions` grew `failed_log`; it decodes with none
/// (`report_fixtures_decode_with_appended_fields_empty`). `report-4`: written before it grew
/// `installed`, `desired-7` before `AgentTarget` grew `installed`: they decode with none and
/// false. `desired-8` was written before `ServiceSpec` grew `host_namespaces`, `report-5`
/// before `Inventory` grew `policy`: they decode with none. `report-6` was written before
/// `StateReport` grew `seal_key_proof`; it decodes with none. `desired-9` was written before
/// `ServiceSpec` grew `options`; it decodes with none set (`desired-10` and `report-7` are the
/// current ones).
const DECODE_ONLY: &[&str] = &[
    "desired",
    "desired-2",
    "desired-3",
    "desired-4",
    "desired-5",
    "desired-6",
    "report",
    "report-2",
    "report-3",
    "desired-7",
    "report-4",
    "desired-8",
    "report-5",
    "report-6",
    "desired-9",
];

fn cases() -> Vec<(&'static str, Message)> {
    vec![
        ("desired", Message::Desired(samples::signed_desired())),
        ("desired-2", Message::Desired(samples::signed_desired())),
        ("desired-3", Message::Desired(samples::signed_desired())),
        ("desired-4", Message::Desired(samples::signed_desired())),
        ("desired-5", Message::Desired(samples::signed_desired())),
        ("desired-6", Message::Desired(samples::signed_desired())),
        ("desired-7", Message::Desired(samples::signed_desired())),
        ("desired-8", Message::Desired(samples::signed_desired())),
        ("desired-9", Message::Desired(samples::signed_desired())),
        ("desired-10", Message::Desired(samples::signed_desired())),
        ("report", Message::Report(samples::report())),
        ("report-2", Message::Report(samples::report())),
        ("report-3", Message::Report(samples::report())),
        ("report-4", Message::Report(samples::report())),
        ("report-5", Message::Report(samples::report())),
        ("report-6", Message::Report(samples::report())),
        ("report-7", Message::Report(samples::report())),
        ("telemetry", Message::Telemetry(samples::telemetry())),
        ("telemetry-ack", Message::TelemetryAck(samples::telemetry_ack())),
        ("event", Message::Event(samples::event())),
        ("status", Message::Status(samples::status())),
        ("command", Message::Command(samples::signed_command())),
        ("command-result", Message::CommandResult(samples::command_result())),
    ]
}

/// A compressed telemetry batch from this build must keep decoding. Its bytes are not compared
/// with a new encoding: another version of the compressor may pack the same data differently.
#[test]
fn compressed_telemetry_fixture_still_decodes() {
    let path = fixture("telemetry-deflate");
    let sample = Message::Telemetry(samples::telemetry());
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(_) if std::env::var_os("FLEET_BLESS").is_some() => {
            let b = sample.encode_with(fleet_proto::Compression::Deflate);
            std::fs::write(&path, &b).unwrap();
            b
        }
        Err(e) => panic!("{}: {e}; bless it with FLEET_BLESS=1", path.display()),
    };
    assert_eq!(Message::decode(&bytes).unwrap(), sample);
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/v1").join(format!("{name}.bin"))
}

#[test]
fn golden_fixtures_still_decode_to_their_samples() {
    let bless = std::env::var_os("FLEET_BLESS").is_some();
    let mut missing = Vec::new();
    for (name, msg) in cases() {
        let path = fixture(name);
        let Ok(bytes) = std::fs::read(&path) else {
            if bless {
                std::fs::write(&path, msg.encode()).unwrap();
                eprintln!("blessed new fixture {}", path.display());
            } else {
                missing.push(name);
            }
            continue;
        };
        let decoded = Message::decode(&bytes)
            .unwrap_or_else(|e| panic!("fixture {name} no longer decodes: {e} ({e:?})"));
        if DECODE_ONLY.contains(&name) {
            // A signed payload's bytes have grown, so the envelopes differ; what must hold is
            // that the old payload still opens to the sample (golden_signed_payloads_still_verify).
            assert_eq!(decoded.kind(), msg.kind(), "fixture {name} decodes to another kind");
        } else {
            assert_eq!(decoded, msg, "fixture {name} decodes to something else");
            assert_eq!(
                msg.encode(),
                bytes,
                "sample {name} no longer encodes to its fixture's bytes; see the module docs"
            );
        }
    }
    assert!(
        missing.is_empty(),
        "fixtures missing: {missing:?}; run with FLEET_BLESS=1 to create them"
    );
}

#[test]
fn golden_signed_payloads_still_verify() {
    let trusted = TrustedKeys::new([samples::server_key().public()]);
    for name in [
        "desired",
        "desired-2",
        "desired-3",
        "desired-4",
        "desired-5",
        "desired-6",
        "desired-7",
        "desired-8",
        "desired-9",
        "desired-10",
    ] {
        let Message::Desired(desired) =
            Message::decode(&std::fs::read(fixture(name)).unwrap()).unwrap()
        else {
            panic!("{name} fixture holds another kind");
        };
        let mut expected = samples::desired();
        if name != "desired-10" {
            // Written before ServiceSpec grew `options`: they decode with none set.
            for svc in expected.release.iter_mut().flat_map(|r| r.services.iter_mut()) {
                svc.options = Default::default();
            }
        }
        if !matches!(name, "desired-7" | "desired-8" | "desired-9" | "desired-10") {
            // Written before DesiredState grew `agent`: it decodes with none.
            expected.agent = None;
        }
        if !matches!(name, "desired-6" | "desired-7" | "desired-8" | "desired-9" | "desired-10") {
            // Written before secrets: they decode with none.
            expected.secrets.clear();
            expected.sealed_registry_credentials.clear();
            for svc in expected.release.iter_mut().flat_map(|r| r.services.iter_mut()) {
                svc.secrets.clear();
            }
        }
        if !matches!(
            name,
            "desired-5" | "desired-6" | "desired-7" | "desired-8" | "desired-9" | "desired-10"
        ) {
            // Written before ServiceSpec grew `networks`: it decodes with none.
            for svc in expected.release.iter_mut().flat_map(|r| r.services.iter_mut()) {
                svc.networks.clear();
            }
        }
        assert_eq!(desired.open::<DesiredState>(&trusted).unwrap(), expected, "{name}");
    }
    let Message::Command(cmd) =
        Message::decode(&std::fs::read(fixture("command")).unwrap()).unwrap()
    else {
        panic!("command fixture holds another kind");
    };
    assert_eq!(cmd.open::<Command>(&trusted).unwrap(), samples::command());
}

#[test]
fn a_report_from_before_seal_keys_decodes_without_one() {
    let Message::Report(report) =
        Message::decode(&std::fs::read(fixture("report")).unwrap()).unwrap()
    else {
        panic!("report fixture holds another kind");
    };
    assert_eq!(
        report,
        fleet_proto::StateReport { seal_key: None, agent: None, ..report_before_policy() }
    );
}

#[test]
fn a_report_from_before_agent_slots_decodes_without_them() {
    let Message::Report(report) =
        Message::decode(&std::fs::read(fixture("report-2")).unwrap()).unwrap()
    else {
        panic!("report-2 fixture holds another kind");
    };
    assert_eq!(report, fleet_proto::StateReport { agent: None, ..report_before_policy() });
}

/// The sample report as bytes from before `Inventory` grew `policy` decode.
fn report_before_policy() -> fleet_proto::StateReport {
    let mut report = report_before_proofs();
    report.inventory.as_mut().unwrap().policy = None;
    report
}

/// The sample report as bytes from before `StateReport` grew `seal_key_proof` decode.
fn report_before_proofs() -> fleet_proto::StateReport {
    fleet_proto::StateReport { seal_key_proof: None, ..samples::report() }
}

#[test]
fn golden_fixture_header_layout_is_stable() {
    // version 1, kind number, then the body length: the first bytes a decoder reads.
    for (name, msg) in cases() {
        let bytes = std::fs::read(fixture(name)).unwrap();
        assert_eq!(bytes[0], 1, "{name}: protocol version");
        assert_eq!(bytes[1], msg.kind() as u8, "{name}: kind");
    }
}

#[test]
fn report_fixtures_decode_with_appended_fields_empty() {
    let Message::Report(report) =
        Message::decode(&std::fs::read(fixture("report-3")).unwrap()).unwrap()
    else {
        panic!("report-3 holds another kind");
    };
    let report_4 = |name| match Message::decode(&std::fs::read(fixture(name)).unwrap()).unwrap() {
        Message::Report(r) => r,
        _ => panic!("{name} holds another kind"),
    };
    assert_eq!(report_4("report-6"), report_before_proofs(), "report-6 decodes with no proof");
    let mut expected = report_before_policy();
    assert_eq!(report_4("report-5"), expected, "report-5 decodes with no policy");
    let agent = expected.agent.as_mut().unwrap();
    agent.installed = None;
    assert_eq!(report_4("report-4"), expected, "report-4 decodes with no installed version");
    expected.agent.as_mut().unwrap().failed_log.clear();
    assert_eq!(report, expected, "report-3 decodes with no failed_log");
}
