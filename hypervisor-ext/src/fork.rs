//! Fork of a pVM: the monitor process forks itself.
//!
//! The vCPU's pending exit (the Fork hypercall's store) is completed and its whole state
//! captured; then the monitor calls the host's `fork()`. Guest RAM is a private anonymous
//! mapping, so the kernel shares it copy-on-write between the two monitors. KVM file
//! descriptors belong to the process that created them (every ioctl on them fails with EIO in
//! the child), so the child creates a fresh VM over the inherited memory (same host addresses,
//! same memory slot), a fresh vCPU with the parent's CPUID, restores the captured state and
//! runs: the guest resumes after its hypercall in both pVMs, with the child's id in the parent
//! and 0 in the child. The monitor is single-threaded when it forks.
use std::io::Write;

use pvm_abi::{errno, layout, GuestStatus};

use crate::control::ControlSocket;
use crate::ledger::{Lease, LedgerError};
use crate::monitor::{Monitor, MonitorError, BENCH_PARENT_PAUSE};
use crate::outcome::{Crash, Outcome};
use crate::registry::{Entry, State};
use crate::signals;
use crate::sys::{self, Forked};
use crate::vstate::memory::Access;
use crate::vstate::vcpu::{self, CaptureSetup, VcpuState};
use crate::vstate::{vm, KvmError};

impl Monitor {
    /// [`pvm_abi::Hypercall::Fork`]: returns in both monitors, the child's id in the parent, 0
    /// in the child, or a negated errno (the parent keeps running): `EAGAIN` at a pVM limit,
    /// `ENOMEM` past the memory budget or when the host refuses, `EIO` otherwise.
    pub(crate) fn fork_pvm(&mut self) -> i64 {
        let t0 = sys::monotonic_ns();
        // An update's helper thread finishes first: the monitor forks single-threaded.
        self.settle_update();
        // The child's lease is taken first, on descriptions the child inherits and the parent
        // closes: whatever happens next, it is held by one process at most.
        // With the child's outcome pipe (both made ahead when the monitor last waited).
        let (lease, (from_child, to_parent)) = match self.family.admit_fork(self.mem.size()) {
            Ok(admitted) => admitted,
            Err(LedgerError::Memory { .. }) => return -errno::ENOMEM,
            Err(LedgerError::Io(e)) => {
                tracing::warn!(error = %e, "fork: resource ledger unavailable");
                return -errno::EIO;
            }
            Err(_) => return -errno::EAGAIN,
        };
        let state = match self.prepare_fork() {
            Ok(state) => state,
            Err(e) => {
                tracing::warn!(error = %e, "fork failed before forking");
                lease.release();
                return -errno::EIO;
            }
        };
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
        let child_cpu = self.placement.as_ref().and_then(|p| p.next_child());
        let inherited = signals::snapshot();
        // Signals wait until both sides are consistent again (in the child: until its VM runs).
        let held = signals::hold();
        // SAFETY: the monitor is single-threaded here (the only helper thread, started in
        // Monitor::new, was joined), so the child starts with consistent locks and heap.
        match unsafe { sys::fork() } {
            Err(e) => {
                drop(held);
                lease.release();
                if e.raw_os_error() == Some(libc::ENOMEM) {
                    -errno::ENOMEM
                } else {
                    -errno::EAGAIN
                }
            }
            Ok(Forked::Child) => {
                signals::forget_inherited(inherited);
                drop(from_child);
                let started = self.become_child(&state, to_parent, lease, t0, child_cpu);
                drop(held);
                if let Err(e) = started {
                    // The parent already has our id; tell it (and the user) how we ended.
                    let id = sys::getpid();
                    crate::outcome::report_line(format_args!(
                        "pvm {id}: the forked child could not start: {e}"
                    ));
                    let outcome = Outcome::Crashed(Crash::Internal { what: e.to_string() });
                    self.family.report_outcome(&outcome);
                    crate::teardown::exit_deferring_teardown(outcome.exit_status());
                }
                0
            }
            Ok(Forked::Parent(child)) => {
                drop(held);
                drop(to_parent);
                // The child holds its lease now; our copies go.
                drop(lease);
                if let Some(p) = &mut self.placement {
                    p.forked();
                }
                self.family.add_child(child, from_child);
                tracing::debug!(
                    child,
                    pause_us = (sys::monotonic_ns() - t0) / 1000,
                    "fork: child forked"
                );
                self.bench_record(BENCH_PARENT_PAUSE, t0, sys::monotonic_ns());
                i64::from(child)
            }
        }
    }

    /// Completes the pending exit and captures the vCPU state.
    fn prepare_fork(&mut self) -> Result<VcpuState, MonitorError> {
        let setup = match self.capture_setup.take() {
            Some(setup) => setup,
            None => CaptureSetup::probe(&self.kvm, &self.vcpu)?,
        };
        vcpu::complete_pending_exit(&mut self.vcpu, setup.sync_regs())?;
        let state = VcpuState::capture(&setup, &self.vcpu);
        self.capture_setup = Some(setup);
        Ok(state?)
    }

    /// In the child: a new VM and vCPU over the inherited memory, the captured state, a new
    /// identity and registry entry.
    fn become_child(
        &mut self,
        state: &VcpuState,
        to_parent: std::fs::File,
        lease: Lease,
        t0: u64,
        cpu: Option<usize>,
    ) -> Result<(), MonitorError> {
        let id = sys::getpid();
        // Its own CPU first (`--cpu-spread`): everything after runs there.
        if let (Some(p), Some(index)) = (&mut self.placement, cpu) {
            if let Err(e) = p.become_child(index) {
                tracing::warn!(error = %e, "fork: the child stays on its parent's CPUs");
            }
        }
        // The parent's entry (inherited, still locked by the parent) is the template of ours.
        let template = self.family.entry.as_ref().map(|h| h.entry.clone());
        self.control = None;
        self.family.become_child(id, to_parent, lease);
        signals::disarm_kick();
        let new_vm = vm::create_vm(&self.kvm)?;
        self.space.register_all(&new_vm, &self.mem)?;
        let mut new_vcpu = vcpu::create_vcpu(&new_vm)?;
        new_vcpu
            .set_cpuid2(&self.cpuid)
            .map_err(KvmError::ioctl("KVM_SET_CPUID2"))?;
        state.restore(&mut new_vcpu)?;
        // The inherited fds are useless here (EIO); dropping them closes them and unmaps the
        // old kvm_run page without any ioctl.
        drop(std::mem::replace(&mut self.vcpu, new_vcpu));
        drop(std::mem::replace(&mut self.vm, new_vm));
        // A library update under way is the parent's: its new version leaves this VM.
        self.forget_update();
        // Our own channel to the network backend (the inherited one stays the parent's). Without
        // one this pVM has no network: its calls get ENETDOWN.
        if let Some(net) = &mut self.net {
            if let Err(e) = net.after_fork() {
                tracing::warn!(error = %e, "the forked child has no network");
                self.net = None;
            }
        }
        signals::arm_kick(&mut self.vcpu);
        // Our own control socket (the parent's stays the parent's).
        self.control =
            Some(ControlSocket::create(self.family.registry.dir(), id).map_err(MonitorError::Control)?);

        // The guest learns its ids from the fork's answer (`ForkArgs`), not from the boot
        // block: rewriting that would copy one more page of the parent's into every child.
        let ids = self.family.ids;
        // Signals pending for the parent's handlers, and the parent's library update, are not
        // the child's. (Written only if set: an untouched page stays shared with the parent.)
        let status: GuestStatus = self.mem.read_obj(layout::STATUS_ADDR, Access::Monitor)?;
        if status.pending_signals != 0 || status.dl_update != 0 {
            self.mem
                .write_obj(layout::STATUS_ADDR, &GuestStatus::default(), Access::Monitor)?;
        }
        let template = template.unwrap_or_else(|| Entry {
            id,
            parent: 0,
            family: ids.family,
            family_key: ids.family_key,
            name: String::new(),
            image: String::new(),
            mem_size: self.mem.size(),
            started_ms: 0,
            state: State::Running,
            exit_status: None,
            outcome: None,
            ports: Vec::new(),
        });
        let entry = self.family.registry.register(Entry {
            id,
            parent: ids.parent,
            family: ids.family,
            family_key: ids.family_key,
            state: State::Running,
            exit_status: None,
            outcome: None,
            ..template
        })?;
        self.family.entry = Some(entry);
        self.fork_started_ns = Some(t0);
        Ok(())
    }
}
