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

use pvm_abi::{errno, layout, BootInfo, ForkArgs, GuestStatus, Hypercall};

use crate::family::{outcome_pipe, FamilyError};
use crate::monitor::{monotonic_ns, Monitor, MonitorError, BENCH_PARENT_PAUSE};
use crate::outcome::{Crash, Outcome};
use crate::registry::{Entry, State};
use crate::signals;
use crate::vstate::memory::Access;
use crate::vstate::vcpu::{self, CaptureSetup, VcpuState};
use crate::vstate::{vm, KvmError};

impl Monitor {
    /// [`Hypercall::Fork`]. Returns in both monitors; a failure is reported to the guest as a
    /// negative result and the parent keeps running.
    pub(crate) fn fork(&mut self, arg: u64) -> Result<(), Crash> {
        let t0 = monotonic_ns();
        let bad = || Crash::BadHypercall {
            addr: Hypercall::Fork.address(),
            reason: "argument struct outside guest memory",
        };
        let mut args: ForkArgs = self.mem.read_obj(arg, Access::Guest).map_err(|_| bad())?;
        args.result = self.fork_process(t0);
        self.mem.write_obj(arg, &args, Access::Guest).map_err(|_| bad())?;
        if args.result > 0 {
            self.bench_record(BENCH_PARENT_PAUSE, t0, monotonic_ns());
        }
        Ok(())
    }

    /// Forks; returns the child's id in the parent, 0 in the child, or a negated errno.
    fn fork_process(&mut self, t0: u64) -> i64 {
        if !self.family.admit_fork() {
            return -errno::EAGAIN;
        }
        let prepared = self.prepare_fork().and_then(|state| {
            let pipe = outcome_pipe().map_err(|e| MonitorError::Family(FamilyError::Setup(e)))?;
            Ok((state, pipe))
        });
        let (state, (from_child, to_parent)) = match prepared {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "fork failed before forking");
                self.family.unadmit_fork();
                return -errno::EIO;
            }
        };
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
        let inherited = signals::snapshot();
        // Signals wait until both sides are consistent again (in the child: until its VM runs).
        let held = signals::hold();
        // SAFETY: the monitor is single-threaded here (the only helper thread, started in
        // Monitor::new, was joined), so the child starts with consistent locks and heap.
        let pid = unsafe { libc::fork() };
        match pid {
            -1 => {
                let err = std::io::Error::last_os_error().raw_os_error();
                drop(held);
                self.family.unadmit_fork();
                if err == Some(libc::ENOMEM) {
                    -errno::ENOMEM
                } else {
                    -errno::EAGAIN
                }
            }
            0 => {
                signals::forget_inherited(inherited);
                drop(from_child);
                let started = self.become_child(&state, to_parent, t0);
                drop(held);
                if let Err(e) = started {
                    // The parent already has our id; tell it (and the user) how we ended.
                    let id = std::process::id();
                    crate::outcome::report_line(format_args!(
                        "pvm {id}: the forked child could not start: {e}"
                    ));
                    let outcome = Outcome::Crashed(Crash::Internal { what: e.to_string() });
                    self.family.report_outcome(&outcome);
                    crate::teardown::exit_deferring_teardown(outcome.exit_status());
                }
                0
            }
            child => {
                drop(held);
                drop(to_parent);
                self.family.add_child(child as u32, from_child);
                i64::from(child)
            }
        }
    }

    /// Completes the pending exit and captures the vCPU state.
    fn prepare_fork(&mut self) -> Result<VcpuState, MonitorError> {
        vcpu::complete_pending_exit(&mut self.vcpu)?;
        let setup = match self.capture_setup.take() {
            Some(setup) => setup,
            None => CaptureSetup::probe(&self.kvm, &self.vcpu)?,
        };
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
        t0: u64,
    ) -> Result<(), MonitorError> {
        let id = std::process::id();
        // The parent's entry (inherited, still locked by the parent) is the template of ours.
        let template = self.family.entry.as_ref().map(|h| h.entry.clone());
        self.family.become_child(id, to_parent);
        signals::disarm_kick();
        let new_vm = vm::create_vm(&self.kvm, &self.mem)?;
        let new_vcpu = vcpu::create_vcpu(&new_vm)?;
        new_vcpu
            .set_cpuid2(&self.cpuid)
            .map_err(KvmError::ioctl("KVM_SET_CPUID2"))?;
        state.restore(&new_vcpu)?;
        // The inherited fds are useless here (EIO); dropping them closes them and unmaps the
        // old kvm_run page without any ioctl.
        drop(std::mem::replace(&mut self.vcpu, new_vcpu));
        drop(std::mem::replace(&mut self.vm, new_vm));
        signals::arm_kick(&mut self.vcpu);
        self.ipc.register_all(&self.vm).map_err(MonitorError::Ipc)?;

        let ids = self.family.ids;
        for (offset, value) in [
            (std::mem::offset_of!(BootInfo, pvm_id), ids.id),
            (std::mem::offset_of!(BootInfo, parent_id), ids.parent),
            (std::mem::offset_of!(BootInfo, family_id), ids.family),
        ] {
            self.mem.write_obj(
                layout::BOOT_INFO_ADDR + offset as u64,
                &u64::from(value),
                Access::Monitor,
            )?;
        }
        // Signals pending for the parent's handlers are not the child's. (Written only if set:
        // an untouched page stays shared with the parent.)
        let status: GuestStatus = self.mem.read_obj(layout::STATUS_ADDR, Access::Monitor)?;
        if status.pending_signals != 0 {
            self.mem
                .write_obj(layout::STATUS_ADDR, &GuestStatus::default(), Access::Monitor)?;
        }
        let template = template.unwrap_or_else(|| Entry {
            id,
            parent: 0,
            family: ids.family,
            name: String::new(),
            image: String::new(),
            mem_size: self.mem.size(),
            started_ms: 0,
            state: State::Running,
            exit_status: None,
            outcome: None,
        });
        let entry = self.family.registry.register(Entry {
            id,
            parent: ids.parent,
            family: ids.family,
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
