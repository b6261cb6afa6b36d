//! Online update of a library (`pvmctl lib update`), monitor side.
//!
//! 1. **Prepare**, while the guest runs: the operator's request brings the new version's file
//!    (an open descriptor). A helper thread reads it once, checks its digest against the trust
//!    store, parses, relocates and maps it for a reserved library slot, and registers that
//!    slot's memory (the guest never touches it). Any failure ends the update here: the guest
//!    never knew.
//! 2. **Announce**: the vCPU thread marks the update in the guest's status page (`dl_update`)
//!    and interrupts a blocking hypercall once. The runtime answers at its safe point: no call
//!    into the library in flight (its handles count them), checked when such a call returns
//!    and after hypercalls.
//! 3. **Pause** (`DlUpdate` BEGIN to COMMIT or ABORT): the runtime rebinds every handle and
//!    hands the state over (old version's `pvm_state_save`, new version's `pvm_state_restore`).
//!    COMMIT makes the new version the library (the old one's memory is freed); ABORT, or any
//!    failure, keeps the old one and frees the new.
//!
//! Deadlines: the guest has `timeout_ms` from the request to reach the safe point, then
//! [`HOOK_TIMEOUT_MS`] for its hooks; a timer makes the monitor look even while the guest runs
//! without exits. A hook past its time is left: the vCPU is sent to the runtime's escape, which
//! returns to the update with the hook abandoned, and the update rolls back.
use std::cmp::Ordering;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{self, AtomicBool};
use std::sync::Arc;
use std::thread::JoinHandle;

use pvm_abi::{dl_abort, errno, layout, DlInfo, GuestStatus};
use pvm_dynlink::MAX_FILE_SIZE;

use crate::control::{Incoming, Pending, Request, Response};
use crate::dl::{LoadError, Prepared};
use crate::hypercall::UpdateStep;
use crate::monitor::Monitor;
use crate::signals;
use crate::sys;
use crate::vstate::memory::Access;
use crate::vstate::vcpu;

/// How long a library's state hooks may run together.
pub const HOOK_TIMEOUT_MS: u64 = 1000;

/// How much longer than the safe point's time a pVM ready to switch waits for the operator's
/// decision in a two-phase update (the other pVMs may need the whole time to get ready).
const DECISION_MARGIN_MS: u64 = 2000;

/// Where the status page says an update is ready.
const DL_UPDATE_AT: u64 = layout::STATUS_ADDR + std::mem::offset_of!(GuestStatus, dl_update) as u64;

/// Why an update did not happen.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// The new version cannot be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Its version is lower than the loaded one's.
    #[error("{library} {to} is older than the loaded {from}: refused (--allow-downgrade to force)")]
    Downgrade {
        /// The library.
        library: String,
        /// Loaded version.
        from: String,
        /// New version.
        to: String,
    },
    /// The helper thread failed.
    #[error("the update's helper failed: {0}")]
    Helper(String),
    /// The guest did not reach a safe point in time.
    #[error("no safe point within {0} ms: a call into the library stayed in flight (or the pVM made no hypercall)")]
    NoSafePoint(u64),
    /// The runtime rolled back.
    #[error("the pVM rolled back: {0}")]
    RolledBack(String),
    /// A two-phase update was called off.
    #[error("the update of the family was called off (another pVM could not switch); the old version stays")]
    Abandoned,
    /// The guest stopped answering during the switch.
    #[error("the pVM did not finish the switch; the old version stays")]
    Stuck,
    /// The pVM ended during the update.
    #[error("the pVM ended during the update")]
    Ended,
}

/// Where an update is.
enum Phase {
    /// The helper thread prepares the new version (and sets the flag when done).
    Preparing(JoinHandle<Result<Prepared, UpdateError>>, Arc<AtomicBool>),
    /// Ready, announced to the guest.
    Announced(Prepared),
    /// The guest is switching (its hooks run).
    Begun(Prepared),
    /// Between steps (never observed outside a step).
    Moving,
}

/// An update under way.
pub(crate) struct Update {
    library: String,
    old: usize,
    from: Option<String>,
    pending: Option<Pending>,
    phase: Phase,
    timer: Option<sys::Timer>,
    /// When the current phase's time is up.
    deadline_ns: u64,
    timeout_ms: u64,
    /// All or none with other pVMs: ask the operator before switching.
    two_phase: bool,
    begun_ns: u64,
    escape: u64,
    /// The vCPU must go to the escape before it runs again.
    escape_due: bool,
    /// The escape was taken: the runtime's ABORT should follow.
    escaped: bool,
}

/// Compares dotted version strings number by number (`None`: not comparable).
fn version_cmp(a: &str, b: &str) -> Option<Ordering> {
    let nums = |v: &str| -> Option<Vec<u64>> {
        v.split(['-', '+'])
            .next()?
            .split('.')
            .map(|p| p.parse().ok())
            .collect()
    };
    Some(nums(a)?.cmp(&nums(b)?))
}

fn abort_reason(reason: u64, detail: u64) -> String {
    match reason {
        dl_abort::MISSING_SYMBOL => {
            format!("the new version lacks a symbol the pVM holds a handle on (handle #{detail})")
        }
        dl_abort::RESTORE_FAILED => format!("the new version's pvm_state_restore failed ({detail})"),
        dl_abort::HOOK_PANICKED => "a state hook panicked".into(),
        dl_abort::HOOK_TIMEOUT => format!("a state hook ran longer than {HOOK_TIMEOUT_MS} ms and was stopped"),
        dl_abort::HOOKS_MISMATCH => {
            "the old version saves state (pvm_state_save) but the new one cannot restore it (no pvm_state_restore)"
                .into()
        }
        dl_abort::NOT_OPEN => "the pVM has no handle on the library any more".into(),
        other => format!("reason {other}"),
    }
}

impl Monitor {
    /// [`Request::Update`]: starts an update (the answer comes when it is over).
    pub(crate) fn start_update(&mut self, incoming: Incoming) {
        let Request::Update {
            library,
            file,
            allow_downgrade,
            timeout_ms,
            two_phase,
        } = incoming.request.clone()
        else {
            return;
        };
        let refuse = |incoming: Incoming, message: String| incoming.answer(&Response::Error { message });
        if self.update.is_some() {
            return refuse(incoming, "another update of this pVM is under way".into());
        }
        let Some(old) = self.libs.find(&library) else {
            return refuse(
                incoming,
                format!("pVM {} has no library {library:?} loaded", self.family.ids.id),
            );
        };
        let dependents = self.libs.dependents(old);
        if !dependents.is_empty() {
            return refuse(
                incoming,
                format!(
                    "{library} is imported by {}: update those first, or reload them",
                    dependents.join(", ")
                ),
            );
        }
        let Some(fd) = incoming.file.as_ref().and_then(|f| f.try_clone().ok()) else {
            return refuse(incoming, "no library file came with the request".into());
        };
        let Some(new_index) = self.libs.reserve() else {
            return refuse(incoming, "no free library slot for the new version".into());
        };
        let from = self.libs.get(old as u64).and_then(|l| l.lib.version.clone());
        let env = self.libs.env(Some(old));
        let timer = sys::Timer::new();
        let (env, timer) = match (env, timer) {
            (Ok(e), Ok(t)) => (e, t),
            (e, t) => {
                self.libs.release();
                let why = [e.err().map(|e| e.to_string()), t.err().map(|e| e.to_string())];
                return refuse(
                    incoming,
                    format!(
                        "cannot start the update: {}",
                        why.into_iter().flatten().collect::<Vec<_>>().join("; ")
                    ),
                );
            }
        };
        let main = sys::gettid();
        let (name, label, from_version) = (library.clone(), file.clone(), from.clone());
        let done = Arc::new(AtomicBool::new(false));
        let done_in_helper = Arc::clone(&done);
        // The helper must not take the monitor's signals: they are for the vCPU thread.
        let held = signals::hold();
        let spawned = std::thread::Builder::new()
            .name("pvm-update".into())
            .spawn(move || {
                let result = prepare(&env, &name, &label, fd, new_index, from_version, allow_downgrade);
                // Done (the thread only returns from here): the vCPU thread may join now.
                done_in_helper.store(true, atomic::Ordering::SeqCst);
                let _ = sys::signal_thread(main, libc::SIGIO);
                result
            });
        drop(held);
        let thread = match spawned {
            Ok(t) => t,
            Err(e) => {
                self.libs.release();
                return refuse(incoming, format!("cannot start the update's helper: {e}"));
            }
        };
        let now = sys::monotonic_ns();
        let _ = timer.arm(timeout_ms.saturating_mul(1_000_000));
        tracing::info!(library, file, "update: preparing");
        self.update = Some(Update {
            library,
            old,
            from,
            pending: Some(incoming.defer()),
            phase: Phase::Preparing(thread, done),
            timer: Some(timer),
            deadline_ns: now.saturating_add(timeout_ms.saturating_mul(1_000_000)),
            timeout_ms,
            two_phase,
            begun_ns: 0,
            escape: 0,
            escape_due: false,
            escaped: false,
        });
    }

    /// Moves the update on after a kick (the helper is done, or a deadline passed); `true` when
    /// the guest must be interrupted (a blocking hypercall returns `EINTR`) to see it.
    pub(crate) fn poll_update(&mut self) -> bool {
        let Some(u) = &mut self.update else { return false };
        let now = sys::monotonic_ns();
        match &u.phase {
            Phase::Preparing(_, done) if done.load(atomic::Ordering::SeqCst) => self.finish_preparing(),
            Phase::Announced(_) if now >= u.deadline_ns => {
                let ms = u.timeout_ms;
                self.fail_update(UpdateError::NoSafePoint(ms));
                false
            }
            Phase::Begun(_) if now >= u.deadline_ns && !u.escaped => {
                // A hook runs past its time: leave it.
                u.escape_due = true;
                u.deadline_ns = now + HOOK_TIMEOUT_MS * 1_000_000;
                if let Some(t) = &u.timer {
                    let _ = t.arm(HOOK_TIMEOUT_MS * 1_000_000);
                }
                false
            }
            Phase::Begun(_) if now >= u.deadline_ns => {
                // Escaped, and still no ABORT: give up on the new version.
                self.fail_update(UpdateError::Stuck);
                false
            }
            _ => false,
        }
    }

    /// The helper is done: announce the new version, or end the update with its error.
    fn finish_preparing(&mut self) -> bool {
        let Some(u) = &mut self.update else { return false };
        let Phase::Preparing(thread, _) = std::mem::replace(&mut u.phase, Phase::Moving) else {
            return false;
        };
        let prepared = match thread.join() {
            Ok(r) => r,
            Err(_) => Err(UpdateError::Helper("it panicked".into())),
        };
        match prepared {
            Err(e) => {
                self.fail_update(e);
                false
            }
            Ok(lib) => {
                let old = u.old as u64;
                u.phase = Phase::Announced(lib);
                let _ = self.mem.write_obj(DL_UPDATE_AT, &(old + 1), Access::Monitor);
                tracing::info!(library = u.library, "update: announced");
                true
            }
        }
    }

    /// Waits for the helper (before a fork: the monitor is single-threaded when it forks).
    pub(crate) fn settle_update(&mut self) {
        if let Some(Update {
            phase: Phase::Preparing(..),
            ..
        }) = &self.update
        {
            self.finish_preparing();
        }
    }

    /// In a forked child: the update is the parent's. Its new version leaves this VM.
    pub(crate) fn forget_update(&mut self) {
        if let Some(mut u) = self.update.take() {
            // Closing our copy of the connection leaves the parent's open.
            drop(u.pending.take());
            u.timer = None;
            // Our copy of its memory goes (the parent's stays).
            drop(std::mem::replace(&mut u.phase, Phase::Moving));
            self.libs.release();
        }
    }

    /// Ends the update without the new version and tells the operator why.
    pub(crate) fn fail_update(&mut self, error: UpdateError) {
        let Some(mut u) = self.update.take() else { return };
        match std::mem::replace(&mut u.phase, Phase::Moving) {
            // The new version's place is emptied.
            Phase::Announced(lib) | Phase::Begun(lib) => {
                let digest = lib.digest;
                drop(lib);
                self.libs.release_store(&digest);
            }
            // Only when the pVM ends mid-preparation.
            Phase::Preparing(thread, _) => drop(thread.join()),
            Phase::Moving => {}
        }
        let _ = self.mem.write_obj(DL_UPDATE_AT, &0u64, Access::Monitor);
        self.libs.release();
        tracing::info!(library = u.library, error = %error, "update: rolled back");
        if let Some(p) = u.pending.take() {
            p.answer(&Response::Error {
                message: format!("update of {} in pVM {}: {error}", u.library, self.family.ids.id),
            });
        }
    }

    /// Where the vCPU must go before it runs again (a hook past its time), if anywhere.
    pub(crate) fn take_escape(&mut self) -> Option<u64> {
        let u = self.update.as_mut()?;
        if !u.escape_due {
            return None;
        }
        u.escape_due = false;
        u.escaped = true;
        Some(u.escape)
    }

    /// Sends the vCPU to `rip` (the runtime's hook escape).
    pub(crate) fn redirect_vcpu(&mut self, rip: u64) {
        if vcpu::complete_pending_exit(&mut self.vcpu, false).is_err() {
            return;
        }
        if let Ok(mut regs) = self.vcpu.get_regs() {
            regs.rip = rip;
            let _ = self.vcpu.set_regs(&regs);
        }
    }

    /// [`pvm_abi::Hypercall::DlUpdate`].
    pub(crate) fn update_step(&mut self, step: UpdateStep) -> Result<Option<DlInfo>, i64> {
        let bad = Err(-errno::EINVAL);
        let Some(u) = &mut self.update else { return bad };
        match step {
            UpdateStep::Begin { handle, escape } => {
                if handle != u.old as u64 || !matches!(u.phase, Phase::Announced(_)) {
                    return bad;
                }
                if !self.libs.in_app_code(escape) {
                    // The runtime's escape must be the app's code: anything else could send the
                    // vCPU anywhere. Refuse the switch.
                    let _ = self.mem.write_obj(DL_UPDATE_AT, &0u64, Access::Monitor);
                    self.fail_update(UpdateError::RolledBack(
                        "the runtime gave no valid hook escape".into(),
                    ));
                    return Err(-errno::EINVAL);
                }
                let Phase::Announced(lib) = std::mem::replace(&mut u.phase, Phase::Moving) else {
                    return bad;
                };
                let info = lib.info;
                u.phase = Phase::Begun(lib);
                u.escape = escape;
                u.begun_ns = sys::monotonic_ns();
                u.deadline_ns = u.begun_ns + HOOK_TIMEOUT_MS * 1_000_000;
                if let Some(t) = &u.timer {
                    let _ = t.arm(HOOK_TIMEOUT_MS * 1_000_000);
                }
                let _ = self.mem.write_obj(DL_UPDATE_AT, &0u64, Access::Monitor);
                Ok(Some(info))
            }
            UpdateStep::Commit { handle } => {
                if handle != u.old as u64 || !matches!(u.phase, Phase::Begun(_)) {
                    return bad;
                }
                if u.two_phase {
                    // Ready: the operator switches every pVM of the update, or none.
                    let ready = Response::Ready {
                        id: self.family.ids.id,
                        children: self.family.children.iter().map(|c| c.id).collect(),
                    };
                    let wait_ns = (u.timeout_ms + DECISION_MARGIN_MS) * 1_000_000;
                    let commit = u.pending.as_ref().is_some_and(|p| p.ask(&ready, wait_ns));
                    if !commit {
                        self.fail_update(UpdateError::Abandoned);
                        return Err(-errno::EINVAL);
                    }
                }
                let Some(mut u) = self.update.take() else {
                    return bad;
                };
                let Phase::Begun(mut lib) = std::mem::replace(&mut u.phase, Phase::Moving) else {
                    return bad;
                };
                let old = self.libs.unload(u.old);
                let refs = old.as_ref().map_or(1, |l| l.refs);
                lib.name = u.library.clone();
                let to = lib.version.clone();
                self.libs.record(lib, refs);
                self.libs.release();
                // The guest's view of library memory changes before the old version's goes.
                self.mem.set_extra(self.libs.extra());
                let old_digest = old.as_ref().map(|l| l.lib.digest);
                drop(old);
                if let Some(d) = old_digest {
                    self.libs.release_store(&d);
                }
                // The pause: from the safe point (BEGIN) to here, the old version gone; the
                // guest resumes once this hypercall returns.
                let pause_us = sys::monotonic_ns().saturating_sub(u.begun_ns) / 1000;
                tracing::info!(library = u.library, pause_us, "update: committed");
                if let Some(p) = u.pending.take() {
                    p.answer(&Response::Updated {
                        id: self.family.ids.id,
                        library: u.library.clone(),
                        from: u.from.clone(),
                        to,
                        pause_us,
                    });
                }
                Ok(None)
            }
            UpdateStep::Abort {
                handle,
                reason,
                detail,
            } => {
                if handle != u.old as u64 || matches!(u.phase, Phase::Preparing(..)) {
                    return bad;
                }
                self.fail_update(UpdateError::RolledBack(abort_reason(reason, detail)));
                Ok(None)
            }
        }
    }
}

/// The helper thread's work: the new version, checked, linked and in its place in the windows.
fn prepare(
    env: &crate::dl::LinkEnv,
    name: &str,
    file: &str,
    fd: OwnedFd,
    index: usize,
    from: Option<String>,
    allow_downgrade: bool,
) -> Result<Prepared, UpdateError> {
    let read_err = |source| {
        UpdateError::Load(LoadError::Read {
            name: name.into(),
            file: file.into(),
            source,
        })
    };
    let st = sys::fstat(fd.as_fd()).map_err(read_err)?;
    if !sys::is_file(&st) {
        return Err(read_err(std::io::Error::from_raw_os_error(libc::EINVAL)));
    }
    let bytes = sys::read_whole(fd.as_fd(), MAX_FILE_SIZE + 1).map_err(read_err)?;
    let lib = env.prepare(name, file, &bytes, index)?;
    if let (Some(from), Some(to)) = (&from, &lib.version) {
        if !allow_downgrade && version_cmp(to, from) == Some(Ordering::Less) {
            return Err(UpdateError::Downgrade {
                library: name.into(),
                from: from.clone(),
                to: to.clone(),
            });
        }
    }
    Ok(lib)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_by_number() {
        assert_eq!(version_cmp("1.10.0", "1.9.3"), Some(Ordering::Greater));
        assert_eq!(version_cmp("2.0.0", "2.0.0"), Some(Ordering::Equal));
        assert_eq!(version_cmp("0.9", "1.0.0-rc1"), Some(Ordering::Less));
        assert_eq!(version_cmp("v2", "1"), None);
    }
}
