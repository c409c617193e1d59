//! The agent's own versions on the device (A/B slots with a trial).
//!
//! * Versions live in `<data_dir>/bin/<version>/fleet-agent`; the binary the package installed
//!   (`/usr/bin/fleet-agent`, what systemd and the tests start) is never overwritten: it is the
//!   floor a device can always fall back to.
//! * `<data_dir>/slots.json` says which version is committed and which is on trial (see
//!   [`decide`] for the rules). It is replaced atomically, so every switch is one rename.
//! * Every `fleet-agent run` starts in the installed binary, which decides first
//!   ([`launch`]): it runs on, or replaces itself (`exec`, same process id, so systemd's
//!   `Type=notify` and watchdog follow) with the version's binary. A trial counts its starts
//!   there; a trial out of starts or time is reverted right there, without the server.
//! * A trial commits itself from the daemon once it has converged (adopting the running
//!   containers, never restarting them) and, with a link configured, connected to the server.
//!   It stops itself at its deadline otherwise, so the next start reverts it.
//! * An update never stops application containers and never touches the port proxy, a process
//!   of its own: the services keep serving through the swap.
//! * A rollback to the version the package installed (the server's [`AgentTarget::installed`])
//!   lets the committed slot go and relaunches: the floor needs no download and no trial.
//! * A version on trial logs into its slot too ([`trial_log`]); when it is reverted, its last
//!   lines are reported with the reason.
//!
//! Crash safety: the binary is written aside, synced and renamed into its slot before the
//! state names it; the state names a trial before anything runs it; a kill between any two
//! steps leaves either the old state (the new slot is an unused file, removed at the next
//! commit) or the trial, which runs or is reverted by the rules above.

pub mod decide;
pub mod trial_log;

use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fleet_proto::{AgentTarget, UnixMillis};

pub use decide::{Run, Slots};

/// Starts a trial gets before it is reverted.
pub const MAX_STARTS: u32 = 3;
/// How long a trial has to commit by default.
pub const DEFAULT_TRIAL: Duration = Duration::from_secs(120);
/// Largest agent binary accepted.
const MAX_BINARY_BYTES: u64 = 128 << 20;
/// Set on the process a [`launch`] replaced itself with: the version it runs as (so it does not
/// decide, and count a start, a second time).
const LAUNCHED_ENV: &str = "FLEET_AGENT_SLOT";
/// Longest single registry request of a download; a slower link resumes where it stopped.
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(600);
/// Set on a slot's process: the installed binary's path, to fall back to.
const INSTALLED_ENV: &str = "FLEET_AGENT_INSTALLED";

/// Why a version cannot be installed, or the slots cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    /// The version cannot name a slot.
    #[error("{0}")]
    BadVersion(String),
    /// Another version is on trial.
    #[error("agent {version} is on trial; wait until it commits or is reverted")]
    TrialInProgress {
        /// The version on trial.
        version: String,
    },
    /// Not newer than the version running (and no downgrade was allowed).
    #[error("agent {version} is not newer than the running {running} (allow a downgrade to install it anyway)")]
    NotNewer {
        /// The version offered.
        version: String,
        /// The version running.
        running: String,
    },
    /// Not an executable for this device.
    #[error("{}: {why}", path.display())]
    NotForThisDevice {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// Not enough disk for the slot.
    #[error("not enough disk in {} for agent {version}: needs {need} bytes, {free} free", dir.display())]
    NoSpace {
        /// The slots' directory.
        dir: PathBuf,
        /// The version.
        version: String,
        /// Bytes needed.
        need: u64,
        /// Bytes free.
        free: u64,
    },
    /// The binary could not be downloaded or did not match its digest.
    #[error("agent download: {0}")]
    Download(#[from] fleet_oci::RegistryError),
    /// A file could not be read or written.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SlotError {
    let path = path.to_path_buf();
    move |source| SlotError::Io { action, path, source }
}

/// The slots' state file.
pub fn state_path(data_dir: &Path) -> PathBuf {
    data_dir.join("slots.json")
}

/// The binary of `version`'s slot.
pub fn slot_binary(data_dir: &Path, version: &str) -> PathBuf {
    data_dir.join("bin").join(version).join("fleet-agent")
}

/// The slots' state; none saved yet: the installed binary, nothing on trial.
pub fn load(data_dir: &Path) -> Result<Slots, SlotError> {
    let path = state_path(data_dir);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| SlotError::Io {
            action: "parse",
            path,
            source: io::Error::new(io::ErrorKind::InvalidData, e),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Slots::default()),
        Err(e) => Err(io_err("read", &path)(e)),
    }
}

/// Saves the state: written aside, synced, renamed over the old one, directory synced.
pub fn save(data_dir: &Path, slots: &Slots) -> Result<(), SlotError> {
    // The very first start decides before the daemon made its data directory.
    std::fs::create_dir_all(data_dir).map_err(io_err("create", data_dir))?;
    let path = state_path(data_dir);
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(slots).map_err(|e| SlotError::Io {
        action: "encode",
        path: path.clone(),
        source: io::Error::other(e),
    })?;
    let mut file = std::fs::File::create(&tmp).map_err(io_err("create", &tmp))?;
    file.write_all(&bytes).and_then(|()| file.sync_all()).map_err(io_err("write", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(io_err("rename", &tmp))?;
    sync_dir(data_dir);
    Ok(())
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// The version this process runs as: its slot's, or the installed binary's own.
pub fn running_version() -> String {
    std::env::var(LAUNCHED_ENV)
        .ok()
        .filter(|v| v != "installed")
        .unwrap_or_else(|| crate::AGENT_VERSION.to_owned())
}

/// The version on trial and its deadline, if this process is it.
pub fn this_trial(data_dir: &Path) -> Option<(String, UnixMillis)> {
    let me = std::env::var(LAUNCHED_ENV).ok()?;
    let trial = load(data_dir).ok()?.trial?;
    (trial.version == me).then_some((trial.version, trial.deadline))
}

/// What the device reports about its agent versions, with `running` the version running.
pub fn versions(data_dir: &Path, running: String) -> fleet_proto::report::AgentVersions {
    let slots = load(data_dir).unwrap_or_default();
    fleet_proto::report::AgentVersions {
        running,
        committed: slots.committed,
        trial: slots.trial.map(|t| t.version),
        failed_log: slots.last_failure.as_ref().map(|f| f.log.clone()).unwrap_or_default(),
        installed: slots.package.clone(),
        failed: slots.last_failure.map(|f| fleet_proto::report::AgentUpdateFailure {
            version: f.version,
            reason: f.reason,
            at: f.at,
        }),
    }
}

/// First thing `fleet-agent run` does: decides which version runs and, if that is another
/// binary, replaces this process with it (returning only if that fails). A process that was
/// launched this way does not decide again.
pub fn launch(data_dir: &Path) {
    if std::env::var_os(LAUNCHED_ENV).is_none() {
        // This is the installed binary.
        decide_and_exec(data_dir, Some(crate::AGENT_VERSION));
    }
}

/// After the daemon stopped for a self-update: decides again (the new version's first start)
/// and replaces this process with the version that wins.
pub fn relaunch(data_dir: &Path) {
    fault("slot-switch");
    decide_and_exec(data_dir, None);
}

/// `package`: the installed binary's version, when it is the one deciding.
fn decide_and_exec(data_dir: &Path, package: Option<&str>) {
    let slots = match load(data_dir) {
        Ok(slots) => slots,
        Err(e) => {
            // The floor: the installed binary runs when the state cannot be read.
            tracing::error!(error = %e, "cannot read the agent's slots; running the installed binary");
            return exec_installed();
        }
    };
    let loaded = slots.clone();
    let slots = match package {
        Some(installed) => slots.under_package(installed),
        None => slots,
    };
    let now = UnixMillis::now();
    let (run, mut next) = slots.at_start(now, MAX_STARTS);
    if let (Some(failure), Some(trial)) = (&mut next.last_failure, &slots.trial) {
        if next.trial.is_none() && failure.version == trial.version {
            // Reverted just now: what the trial logged says why.
            failure.log = trial_log::tail(data_dir, &trial.version);
        }
    }
    // Compared with what was read, so that the package's version is saved too (it is how a
    // later start knows the package changed, and what the device reports as its floor).
    if next != loaded {
        if let Err(e) = save(data_dir, &next) {
            tracing::error!(error = %e, "cannot record the agent's start; running the installed binary");
            return exec_installed();
        }
    }
    if let (Some(failed), None) = (&next.last_failure, &next.trial) {
        if slots.trial.as_ref().is_some_and(|t| t.version == failed.version) {
            tracing::error!(version = %failed.version, reason = %failed.reason, "agent update failed; reverted");
        }
    }
    let Run::Slot(version) = run else { return exec_installed() };
    let binary = slot_binary(data_dir, &version);
    let trial = next.trial.as_ref().filter(|t| t.version == version).map(|t| t.deadline);
    if trial.is_some() {
        fault("slot-start");
    }
    tracing::info!(%version, binary = %binary.display(), trial = trial.is_some(), "running the agent's slot");
    let error = exec(&binary, &version);
    // Only reached when the exec failed: a trial that cannot even start is reverted now.
    let reason = format!("cannot start {}: {error}", binary.display());
    tracing::error!(%version, %reason, "running the installed binary instead");
    if trial.is_some() {
        let _ = save(data_dir, &next.reverted(&version, reason, UnixMillis::now()));
    }
    exec_installed()
}

/// Runs the installed binary: returns at once if this is it, replaces this process otherwise
/// (a slot's binary relaunching after its trial was reverted).
fn exec_installed() {
    let Some(installed) = std::env::var_os(INSTALLED_ENV) else { return };
    tracing::info!(binary = ?installed, "running the installed binary");
    let e = exec(Path::new(&installed), "installed");
    tracing::error!(error = %e, "cannot run the installed binary; this version runs on");
}

fn exec(binary: &Path, version: &str) -> io::Error {
    use std::os::unix::process::CommandExt;
    let mut command = std::process::Command::new(binary);
    command.args(std::env::args_os().skip(1)).env(LAUNCHED_ENV, version);
    if version == "installed" {
        command.env_remove(INSTALLED_ENV);
    } else if std::env::var_os(INSTALLED_ENV).is_none() {
        // The installed binary hands its own path on, for a later fall back.
        if let Ok(me) = std::env::current_exe() {
            command.env(INSTALLED_ENV, me);
        }
    }
    command.exec()
}

/// Installs the binary at `source` as `version`, on trial for `trial`. Refuses a version that
/// is not newer than the running one (unless `allow_downgrade`), a file that is not an
/// executable for this device, a full disk, and a second trial. Nothing changes on refusal.
pub fn install(
    data_dir: &Path,
    source: &Path,
    version: &str,
    trial: Duration,
    allow_downgrade: bool,
) -> Result<Slots, SlotError> {
    install_file(data_dir, source, version, trial, allow_downgrade, false)
}

/// Records the agent version the server wants (from an accepted desired state).
pub fn set_target(data_dir: &Path, target: Option<AgentTarget>) -> Result<(), SlotError> {
    let slots = load(data_dir)?;
    if slots.target == target {
        return Ok(());
    }
    save(data_dir, &Slots { target, ..slots })
}

/// Records that `version` cannot be installed here (e.g. a binary for another machine), so it
/// is not downloaded again; the device reports it as a failed agent update.
pub fn record_failure(data_dir: &Path, version: &str, reason: String) -> Result<(), SlotError> {
    let slots = load(data_dir)?;
    let failure = decide::Failure {
        version: version.to_owned(),
        reason,
        at: UnixMillis::now(),
        log: Vec::new(),
    };
    let _ = std::fs::remove_dir_all(data_dir.join("bin").join(version));
    save(data_dir, &Slots { last_failure: Some(failure), ..slots })
}

/// Downloads the wanted version's binary from the registry (resuming an earlier partial
/// download), checks it against the digest the signed desired state names, and installs it
/// on trial. Blocking: run it off the runtime's threads.
pub fn fetch_and_install(
    data_dir: &Path,
    target: &AgentTarget,
    credential: Option<&fleet_proto::RegistryCredential>,
) -> Result<(), SlotError> {
    fleet_proto::version::check(&target.version).map_err(SlotError::BadVersion)?;
    if target.size > MAX_BINARY_BYTES {
        return Err(SlotError::NotForThisDevice {
            path: PathBuf::from(&target.repository),
            why: format!("{} bytes, more than {MAX_BINARY_BYTES}", target.size),
        });
    }
    let dir = data_dir.join("bin").join(&target.version);
    std::fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
    let download = dir.join("fleet-agent.download");
    let have = std::fs::metadata(&download).map(|m| m.len()).unwrap_or(0);
    let free = free_bytes(&dir).map_err(io_err("inspect", &dir))?;
    let need = target.size.saturating_sub(have) + (16 << 20);
    if free < need {
        return Err(SlotError::NoSpace { dir, version: target.version.clone(), need, free });
    }
    let client = fleet_oci::RegistryClient::new(
        &format!("fleet-agent/{}", crate::AGENT_VERSION),
        DOWNLOAD_TIMEOUT,
    );
    tracing::info!(version = %target.version, from = %target.repository, resume_at = have, "downloading an agent version");
    client.download_blob(
        &target.repository,
        &target.digest,
        target.size,
        &download,
        credential,
        &|_| {},
    )?;
    let deadline = Duration::from_secs(target.deadline_secs);
    // The server decided on the version (it refuses downgrades unless told): no local check.
    install_file(data_dir, &download, &target.version, deadline, true, true)?;
    Ok(())
}

/// [`install`]; with `take`, `source` is a verified download in the slot's directory, moved
/// into place instead of copied.
fn install_file(
    data_dir: &Path,
    source: &Path,
    version: &str,
    trial: Duration,
    allow_downgrade: bool,
    take: bool,
) -> Result<Slots, SlotError> {
    fleet_proto::version::check(version).map_err(SlotError::BadVersion)?;
    let slots = load(data_dir)?;
    if let Some(t) = &slots.trial {
        return Err(SlotError::TrialInProgress { version: t.version.clone() });
    }
    let running = running_version();
    let newer =
        fleet_proto::version::compare(version, &running) == Some(std::cmp::Ordering::Greater);
    if !newer && !allow_downgrade {
        return Err(SlotError::NotNewer { version: version.to_owned(), running });
    }
    let size = check_executable(source)?;
    let dir = data_dir.join("bin");
    std::fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
    let free = free_bytes(&dir).map_err(io_err("inspect", &dir))?;
    // The slot (unless the file is already there) and a margin for the state and logs written
    // while it runs.
    let need = if take { 0 } else { size } + (16 << 20);
    if free < need {
        return Err(SlotError::NoSpace { dir, version: version.to_owned(), need, free });
    }
    let target = slot_binary(data_dir, version);
    let slot_dir = target.parent().unwrap_or(&dir).to_path_buf();
    std::fs::create_dir_all(&slot_dir).map_err(io_err("create", &slot_dir))?;
    let part = target.with_extension("part");
    if take {
        std::fs::rename(source, &part).map_err(io_err("move", source))?;
    } else {
        copy_synced(source, &part)?;
    }
    fault("slot-copy");
    std::fs::set_permissions(&part, std::fs::Permissions::from_mode(0o755))
        .map_err(io_err("make executable", &part))?;
    std::fs::rename(&part, &target).map_err(io_err("rename", &part))?;
    sync_dir(&slot_dir);
    fault("slot-install");
    let now = UnixMillis::now();
    let deadline = UnixMillis(now.0 + u64::try_from(trial.as_millis()).unwrap_or(u64::MAX));
    let next = slots.installed(version, now, deadline);
    save(data_dir, &next)?;
    tracing::info!(%version, size, "agent version installed; on trial at the next start");
    Ok(next)
}

/// Commits the trial of `version` (this process) and removes slots no longer kept.
pub fn commit(data_dir: &Path, version: &str) -> Result<(), SlotError> {
    fault("slot-commit");
    let slots = load(data_dir)?;
    let next = slots.committed(version);
    if next == slots {
        return Ok(());
    }
    save(data_dir, &next)?;
    remove_unkept(data_dir, &next);
    Ok(())
}

/// Lets the committed slot go when the server wants the installed binary back
/// ([`Slots::to_return`]); the caller relaunches, and the installed binary runs. Nothing is
/// done (`Ok(false)`) otherwise.
pub fn return_to_installed(data_dir: &Path) -> Result<bool, SlotError> {
    let slots = load(data_dir)?;
    if !slots.to_return() {
        return Ok(false);
    }
    let next = slots.returned();
    save(data_dir, &next)?;
    remove_unkept(data_dir, &next);
    Ok(true)
}

/// Removes the slots `slots` does not keep.
fn remove_unkept(data_dir: &Path, slots: &Slots) {
    let keep = slots.kept();
    if let Ok(entries) = std::fs::read_dir(data_dir.join("bin")) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            if !keep.iter().any(|k| name.to_str() == Some(k)) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// Test-only: aborts the process at `step` when `FLEET_AGENT_FAULT` names it (builds with the
/// `fault-injection` feature only), so the e2e tests kill an agent update at every step.
fn fault(step: &str) {
    #[cfg(feature = "fault-injection")]
    if std::env::var("FLEET_AGENT_FAULT").is_ok_and(|f| f == step) {
        eprintln!("fleet-agent: FLEET_AGENT_FAULT={step}: aborting");
        std::process::abort();
    }
    #[cfg(not(feature = "fault-injection"))]
    let _ = step;
}

fn copy_synced(from: &Path, to: &Path) -> Result<(), SlotError> {
    let mut src = std::fs::File::open(from).map_err(io_err("open", from))?;
    let mut dst = std::fs::File::create(to).map_err(io_err("create", to))?;
    io::copy(&mut (&mut src).take(MAX_BINARY_BYTES + 1), &mut dst)
        .and_then(|_| dst.sync_all())
        .map_err(io_err("copy into", to))
}

fn free_bytes(dir: &Path) -> io::Result<u64> {
    let st = nix::sys::statvfs::statvfs(dir).map_err(io::Error::from)?;
    #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
    Ok(u64::from(st.blocks_available()) * u64::from(st.fragment_size()))
}

/// Checks that `path` is an ELF executable for this device's architecture; returns its size.
pub fn check_executable(path: &Path) -> Result<u64, SlotError> {
    let bad = |why: String| SlotError::NotForThisDevice { path: path.to_path_buf(), why };
    let mut file = std::fs::File::open(path).map_err(io_err("open", path))?;
    let size = file.metadata().map_err(io_err("inspect", path))?.len();
    if size > MAX_BINARY_BYTES {
        return Err(bad(format!("{size} bytes, more than {MAX_BINARY_BYTES}")));
    }
    let mut head = Vec::with_capacity(fleet_oci::elf::ELF_HEAD_BYTES);
    (&mut file)
        .take(fleet_oci::elf::ELF_HEAD_BYTES as u64)
        .read_to_end(&mut head)
        .map_err(io_err("read", path))?;
    let platform = fleet_oci::elf::platform_of(&head).map_err(bad)?;
    let here = fleet_oci::Platform::current();
    if platform != here {
        return Err(bad(format!(
            "built for {}, this device is {} ({})",
            platform,
            here,
            std::env::consts::ARCH
        )));
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_refuses_what_cannot_run_here_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path();
        let script = data.join("script");
        std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
        let err = install(data, &script, "99.0.0", DEFAULT_TRIAL, false).unwrap_err();
        assert!(err.to_string().contains("not an ELF executable"), "{err}");
        let err = install(data, &script, "../x", DEFAULT_TRIAL, false).unwrap_err();
        assert!(matches!(err, SlotError::BadVersion(_)), "{err}");
        // An ELF header for this build's machine (the tests also run for aarch64 under QEMU,
        // where the host's /bin/true is for another machine), and one for another machine.
        let machine = match std::env::consts::ARCH {
            "x86_64" => 62,
            "aarch64" => 183,
            _ => 40,
        };
        let elf = |machine: u16| {
            let mut head = vec![0u8; 64];
            head[..4].copy_from_slice(b"\x7fELF");
            head[4] = if cfg!(target_pointer_width = "64") { 2 } else { 1 };
            head[5] = 1;
            head[16] = 2;
            head[18..20].copy_from_slice(&machine.to_le_bytes());
            head
        };
        let other = data.join("other");
        std::fs::write(&other, elf(if machine == 183 { 62 } else { 183 })).unwrap();
        let err = install(data, &other, "99.0.0", DEFAULT_TRIAL, false).unwrap_err();
        assert!(
            err.to_string().contains("for machine") || err.to_string().contains("built for linux/"),
            "{err}"
        );
        let mine = data.join("mine");
        std::fs::write(&mine, elf(machine)).unwrap();
        let me = mine.as_path();
        let err = install(data, me, "0.0.1", DEFAULT_TRIAL, false).unwrap_err();
        assert!(matches!(err, SlotError::NotNewer { .. }), "{err}");
        assert!(!state_path(data).exists() && !data.join("bin/99.0.0").exists());

        let slots = install(data, me, "99.0.0", DEFAULT_TRIAL, false).unwrap();
        assert_eq!(slots.trial.as_ref().unwrap().version, "99.0.0");
        assert_eq!(load(data).unwrap(), slots);
        let mode = std::fs::metadata(slot_binary(data, "99.0.0")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        let err = install(data, me, "99.1.0", DEFAULT_TRIAL, false).unwrap_err();
        assert!(matches!(err, SlotError::TrialInProgress { .. }), "{err}");

        // Committed: the slot stays, a stale one goes.
        std::fs::create_dir_all(data.join("bin/stale")).unwrap();
        commit(data, "99.0.0").unwrap();
        assert_eq!(load(data).unwrap().committed.as_deref(), Some("99.0.0"));
        assert!(slot_binary(data, "99.0.0").exists() && !data.join("bin/stale").exists());
    }
}
