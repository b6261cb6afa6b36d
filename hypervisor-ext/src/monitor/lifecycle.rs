//! The end of a pVM: its outcome recorded and reported, its lease given back, and for a
//! family's root, the wait for the whole family and the clean-up of its registry entry and named
//! objects.
use super::{Monitor, MonitorError};
use crate::control::ControlSocket;
use crate::family::{describe_record, Collected};
use crate::outcome::Outcome;
use crate::signals;
use crate::sys;

impl Monitor {
    /// Runs the pVM until it exits, crashes or a stop signal arrives; records the end in the
    /// registry and tells the parent pVM (if any).
    pub fn run(&mut self) -> Result<Outcome, MonitorError> {
        signals::arm_kick(&mut self.vcpu);
        // The control socket once SIGIO has its handler (a connection would end us otherwise).
        if self.control.is_none() {
            self.control = Some(ControlSocket::create(
                self.family.registry.dir(),
                self.family.ids.id,
            )?);
        }
        let outcome = self.run_loop();
        signals::disarm_kick();
        if self.update.is_some() {
            self.fail_update(crate::update::UpdateError::Ended);
        }
        let outcome = outcome?;
        tracing::debug!(id = self.family.ids.id, %outcome, "end: pVM ended");
        self.family.report_outcome(&outcome);
        if let Some(entry) = &mut self.family.entry {
            let _ = entry.set_exited(outcome.exit_status(), outcome.to_string());
        }
        // The pVM is over: its places and memory budget are free for others now, not after the
        // deferred teardown.
        if let Some(lease) = self.family.lease.take() {
            lease.release();
        }
        Ok(outcome)
    }

    /// For a family's root, after its own end: waits until every pVM of the family has ended,
    /// forwarding `forward` (the signal that stopped the root, if any) to them first. Returns
    /// what became of the pVMs nobody waited for (orphans, and children the root left).
    pub fn wait_for_family(&mut self, forward: Option<i32>) -> Vec<(u32, String)> {
        // The network backend (a child of the root) ends once no monitor of the family holds a
        // channel to it: this one lets go of its own first, or the wait below would not end.
        self.net = None;
        tracing::debug!(id = self.family.ids.id, "end: waiting for the family");
        if let Some(sig) = forward {
            self.family.signal_all(sig);
        }
        let mut reports = Vec::new();
        loop {
            let (pid, status) = match sys::waitpid(None, false) {
                Ok(Some(reaped)) => reaped,
                Ok(None) => continue,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {
                    if signals::take_control() {
                        self.serve_control(true);
                    }
                    let mask = signals::take();
                    for sig in signals::GUEST_SIGNALS.into_iter().filter(|&s| s != libc::SIGCHLD) {
                        if mask & (1 << sig) != 0 {
                            self.family.signal_all(sig);
                        }
                    }
                    continue;
                }
                Err(_) => break, // ECHILD: the family is gone.
            };
            match self.family.collect(pid, status) {
                Collected::Child(id, record, oom) => reports.push((id, describe_record(&record, oom))),
                Collected::Orphan(id, text) => reports.push((id, text)),
                Collected::Other => {}
            }
        }
        reports
    }

    /// Removes this pVM's registry entry and gives back its lease, but leaves the family's
    /// named objects (a root that ends while its family lives on).
    pub fn unregister_root_only(&mut self) {
        if self.family.entry.take().is_some() {
            self.family.registry.remove(self.family.ids.id);
        }
        if let Some(lease) = self.family.lease.take() {
            lease.release();
        }
    }

    /// Removes this pVM's registry entry (the root, when its family is gone) and the family's
    /// named objects.
    pub fn unregister(&mut self) {
        self.unregister_root_only();
        if self.family.ids.parent == 0 {
            let suffix = format!("@{:016x}", self.family.ids.family_key);
            if let Ok(dir) = self.family.registry.dir().subdir("ipc") {
                for name in dir.names().unwrap_or_default() {
                    if name.ends_with(&suffix) {
                        let _ = dir.remove(&name);
                    }
                }
            }
        }
    }
}
