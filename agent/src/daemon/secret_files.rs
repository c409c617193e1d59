//! The secret files releases mount: opened from a desired state and written (sealed records
//! first, so a reboot can write them again), written again at start (the directory is a
//! tmpfs), and removed once no stored release binds them.

use fleet_proto::{DesiredState, ReleaseSpec};

use super::Daemon;
use crate::accept::Rejection;
use crate::runtime::ContainerRuntime;

impl<R: ContainerRuntime> Daemon<R> {
    /// Opens the secrets `desired` carries and writes the files its release mounts; returns
    /// the release as the engine runs it (secret mounts as read-only binds of those files).
    /// Nothing is written unless every secret opened.
    pub(super) fn materialize_secrets(
        &self,
        desired: DesiredState,
    ) -> Result<(DesiredState, crate::secrets::Delivered, Option<ReleaseSpec>), Rejection> {
        let delivered = crate::secrets::deliver(&self.seal_key, &self.config.device_id, &desired)
            .map_err(Rejection::Secrets)?;
        let Some(release) = &desired.release else { return Ok((desired, delivered, None)) };
        let dir = &self.config.secrets_dir;
        let (effective, files) =
            crate::secrets::effective_release(dir, release, &crate::secrets::digests(&delivered));
        let cannot = |what: String| Rejection::Secrets(vec![what]);
        // Recorded (sealed) before anything is written: after a reboot the files come back
        // from these records.
        if !files.is_empty() {
            let state = self.reconciler.state();
            let kept = state.secret_records().map_err(|e| cannot(e.to_string()))?;
            let all = crate::secrets::merge(kept, crate::secrets::records(&files, &desired));
            state.set_secret_records(&all).map_err(|e| cannot(e.to_string()))?;
        }
        crate::secrets::write_files(dir, &files, &delivered).map_err(|e| {
            cannot(format!("cannot write the secret files under {}: {e}", dir.display()))
        })?;
        Ok((desired, delivered, Some(effective)))
    }

    /// Writes the secret files a reboot took away (the secrets directory is a tmpfs), from
    /// their sealed records, before the first converge starts the services that read them.
    pub(super) fn restore_secret_files(&self) {
        let records = match self.reconciler.state().secret_records() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the secret files' records; services that read secrets may not start");
                return;
            }
        };
        let (written, problems) = crate::secrets::restore(
            &self.config.secrets_dir,
            &self.seal_key,
            &self.config.device_id,
            &records,
        );
        if written > 0 {
            tracing::info!(written, dir = %self.config.secrets_dir.display(), "secret files written again");
        }
        for p in problems {
            tracing::error!(problem = %p, "a secret file cannot be written again");
        }
    }

    /// Removes secret files (and their records) no stored release (the one wanted, the one
    /// proven, the one before) binds any more.
    pub(super) fn collect_secret_files(&self) {
        let state = self.reconciler.state();
        // Never delete on a read error: a rollback may need the files.
        let (Ok(desired), Ok(proven), Ok(previous), Ok(records)) =
            (state.desired(), state.proven(), state.previous(), state.secret_records())
        else {
            return;
        };
        let keep: Vec<&ReleaseSpec> = [
            desired.as_ref().and_then(|d| d.release.as_ref()),
            proven.as_ref().and_then(|p| p.release.as_ref()),
            previous.as_ref().and_then(|p| p.release.as_ref()),
        ]
        .into_iter()
        .flatten()
        .collect();
        let dir = &self.config.secrets_dir;
        let used = crate::secrets::in_use(dir, &keep);
        let kept: Vec<_> =
            records.iter().filter(|r| used.contains(&r.file.path)).cloned().collect();
        if kept.len() != records.len() {
            if let Err(e) = state.set_secret_records(&kept) {
                tracing::warn!(error = %e, "cannot forget unused secret files; kept for now");
                return;
            }
        }
        let removed = crate::secrets::collect_garbage(dir, &keep);
        if removed > 0 {
            tracing::info!(removed, "removed secret files no release uses any more");
        }
    }
}
