//! The vCPU: initial state, capture and restore of its state for fork.

use kvm_bindings::{
    kvm_debugregs, kvm_fpu, kvm_msr_entry, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId,
    Msrs, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Cap, Kvm, SyncReg, VcpuFd, VmFd};

use super::KvmError;
use crate::arch;

/// Where the vCPU starts (its system state set before, [`set_system_state`]).
pub struct EntryState {
    /// Instruction pointer.
    pub rip: u64,
    /// Stack pointer.
    pub rsp: u64,
    /// First argument register.
    pub rdi: u64,
}

/// The CPUID the host's KVM supports, given to the guest as is. Slow where the host is itself
/// virtualized (every CPUID leaf the kernel probes exits to the outer hypervisor): ask through
/// `cpuid_cache::supported`, which asks once per host boot.
pub fn supported_cpuid(kvm: &Kvm) -> Result<CpuId, KvmError> {
    kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(KvmError::ioctl("KVM_GET_SUPPORTED_CPUID"))
}

/// Creates vCPU 0 (set it up with [`set_cpuid`] and [`set_entry_state`] before running it).
pub fn create_vcpu(vm: &VmFd) -> Result<VcpuFd, KvmError> {
    super::retry_interrupted(|| vm.create_vcpu(0)).map_err(KvmError::ioctl("KVM_CREATE_VCPU"))
}

/// Gives `vcpu` its CPUID: first, since KVM sizes the FPU/XSAVE state from it.
pub fn set_cpuid(vcpu: &VcpuFd, cpuid: &CpuId) -> Result<(), KvmError> {
    vcpu.set_cpuid2(cpuid).map_err(KvmError::ioctl("KVM_SET_CPUID2"))
}

/// Gives `vcpu` (its CPUID set) the system state of a guest entered at CPL3 in 64-bit mode,
/// with its page tables at `cr3`: segments, descriptor tables, control registers, FPU
/// defaults. The same for every pVM (the page tables are always at one address), so a pool
/// member sets it ahead; [`set_entry_regs`] gives the image's entry point.
pub fn set_system_state(vcpu: &VcpuFd, cr3: u64) -> Result<(), KvmError> {
    let mut sregs = vcpu.get_sregs().map_err(KvmError::ioctl("KVM_GET_SREGS"))?;
    arch::setup_sregs(&mut sregs, cr3);
    vcpu.set_sregs(&sregs).map_err(KvmError::ioctl("KVM_SET_SREGS"))?;
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(KvmError::ioctl("KVM_SET_FPU"))
}

/// Whether KVM takes the registers through `kvm_run` (`KVM_CAP_SYNC_REGS` with general
/// registers): then the first KVM_RUN applies them, without an ioctl of their own.
pub fn syncs_regs(kvm: &Kvm) -> bool {
    offered_sync_regs(kvm) & SyncReg::Register as u64 != 0
}

/// The registers KVM hands over through `kvm_run` (`KVM_CAP_SYNC_REGS`'s mask; 0 without it).
fn offered_sync_regs(kvm: &Kvm) -> u64 {
    u64::try_from(kvm.check_extension_int(Cap::SyncRegs)).unwrap_or(0)
}

/// Gives `vcpu` the registers it enters the guest with: in `kvm_run`, marked dirty for the next
/// KVM_RUN to apply when `sync` ([`syncs_regs`]; KVM checks them then as KVM_SET_REGS would),
/// else with KVM_SET_REGS.
pub fn set_entry_regs(vcpu: &mut VcpuFd, entry: &EntryState, sync: bool) -> Result<(), KvmError> {
    let regs = kvm_regs {
        rip: entry.rip,
        rsp: entry.rsp,
        rdi: entry.rdi,
        rflags: 0x2,
        ..Default::default()
    };
    if sync {
        vcpu.sync_regs_mut().regs = regs;
        vcpu.set_sync_dirty_reg(SyncReg::Register);
        Ok(())
    } else {
        vcpu.set_regs(&regs).map_err(KvmError::ioctl("KVM_SET_REGS"))
    }
}

/// The state `KVM_CAP_SYNC_REGS` hands back in `kvm_run` when a `KVM_RUN` returns: regs, sregs
/// and vCPU events, the three a fork would otherwise read with three ioctls.
const SYNC_REGS: [SyncReg; 3] = [SyncReg::Register, SyncReg::SystemRegister, SyncReg::VcpuEvents];

/// Lets KVM finish the exit the vCPU is in (the MMIO store of a hypercall), so that the captured
/// state resumes after the instruction: KVM_RUN with `immediate_exit` set completes it and
/// returns EINTR without entering the guest. With `sync`, that same KVM_RUN also stores the
/// registers, system registers and events in `kvm_run` ([`VcpuState::capture`] reads them
/// there); only for this run, so that the vCPU loop's exits do not pay for the copy.
pub fn complete_pending_exit(vcpu: &mut VcpuFd, sync: bool) -> Result<(), KvmError> {
    if sync {
        for reg in SYNC_REGS {
            vcpu.set_sync_valid_reg(reg);
        }
    }
    vcpu.set_kvm_immediate_exit(1);
    let r = vcpu.run().map(|_| ());
    vcpu.set_kvm_immediate_exit(0);
    if sync {
        for reg in SYNC_REGS {
            vcpu.clear_sync_valid_reg(reg);
        }
    }
    match r {
        Err(e) if e.errno() != libc::EINTR => Err(KvmError::Ioctl {
            op: "KVM_RUN (complete exit)",
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Everything a vCPU needs to resume elsewhere (a forked pVM's new vCPU).
pub struct VcpuState {
    regs: kvm_regs,
    sregs: kvm_sregs,
    fpu: Option<kvm_fpu>,
    xsave: Option<Box<kvm_xsave>>,
    xcrs: Option<kvm_xcrs>,
    msrs: Msrs,
    events: kvm_vcpu_events,
    debug_regs: kvm_debugregs,
    /// KVM takes regs, sregs and events through `kvm_run` (`KVM_CAP_SYNC_REGS`): the restore
    /// hands them over there, applied by the new vCPU's first KVM_RUN, instead of three ioctls.
    sync_regs: bool,
}

/// What capturing a vCPU needs to know about the host, found once per family (a forked child
/// inherits it): the MSRs to carry, which optional state KVM offers, and the state a guest at
/// CPL3 cannot change, read once.
///
/// The guest's code runs at CPL3 (on PVM always; on hardware KVM the app runs at CPL3 and only
/// pvm's own exception stubs at CPL0, which touch neither): it cannot execute `xsetbv` or move
/// to a debug register, so XCR0 and the debug registers stay what the monitor set at boot. (DR6
/// changes on a debug exception, which ends the pVM.) They are read at the first fork and
/// reused; the registers, system registers and events come with the KVM_RUN that completes the
/// fork's exit when KVM has `KVM_CAP_SYNC_REGS` (else three ioctls), and the MSRs (the TSC moves)
/// and the XSAVE area (the guest's FPU and vector registers) are read at every fork.
#[derive(Clone, Debug)]
pub struct CaptureSetup {
    /// MSRs that can be read back: the host's MSR index list less those KVM refuses to read.
    msrs: Vec<u32>,
    /// KVM_GET/SET_XSAVE with the 4 KiB `kvm_xsave` holds the whole XSAVE state (and then the
    /// legacy FPU ioctls are redundant).
    xsave: bool,
    /// XCR0 and friends, if KVM_GET/SET_XCRS are available.
    xcrs: Option<kvm_xcrs>,
    /// The debug registers.
    debug_regs: kvm_debugregs,
    /// KVM stores regs, sregs and events in `kvm_run` on request (`KVM_CAP_SYNC_REGS`).
    sync_regs: bool,
}

impl CaptureSetup {
    /// Probes the host with `vcpu`.
    pub fn probe(kvm: &Kvm, vcpu: &VcpuFd) -> Result<CaptureSetup, KvmError> {
        let list = kvm
            .get_msr_index_list()
            .map_err(KvmError::ioctl("KVM_GET_MSR_INDEX_LIST"))?;
        let mut indices: Vec<u32> = list.as_slice().to_vec();
        let mut readable = Vec::with_capacity(indices.len());
        while !indices.is_empty() {
            let mut msrs = msrs_for(&indices)?;
            let n = vcpu
                .get_msrs(&mut msrs)
                .map_err(KvmError::ioctl("KVM_GET_MSRS"))?;
            readable.extend_from_slice(&indices[..n]);
            // KVM stops at the first MSR it cannot read: skip it and go on.
            indices.drain(..(n + 1).min(indices.len()));
        }
        let sync_mask = SYNC_REGS.iter().fold(0u64, |m, r| m | *r as u64);
        let offered = offered_sync_regs(kvm);
        Ok(CaptureSetup {
            msrs: readable,
            xsave: kvm.check_extension(Cap::Xsave) && kvm.check_extension_int(Cap::Xsave2) <= 4096,
            xcrs: if kvm.check_extension(Cap::Xcrs) {
                Some(vcpu.get_xcrs().map_err(KvmError::ioctl("KVM_GET_XCRS"))?)
            } else {
                None
            },
            debug_regs: vcpu
                .get_debug_regs()
                .map_err(KvmError::ioctl("KVM_GET_DEBUGREGS"))?,
            sync_regs: offered & sync_mask == sync_mask,
        })
    }

    /// Whether [`complete_pending_exit`] should ask KVM for the registers.
    pub fn sync_regs(&self) -> bool {
        self.sync_regs
    }
}

fn msrs_for(indices: &[u32]) -> Result<Msrs, KvmError> {
    let entries: Vec<kvm_msr_entry> = indices
        .iter()
        .map(|&index| kvm_msr_entry {
            index,
            ..Default::default()
        })
        .collect();
    Msrs::from_entries(&entries).map_err(|_| KvmError::Ioctl {
        op: "building the MSR list",
        source: kvm_ioctls::Error::new(libc::E2BIG),
    })
}

impl VcpuState {
    /// Captures the state of a vCPU whose pending exit was completed (with `setup.sync_regs()`,
    /// by [`complete_pending_exit`] asked to sync). Every ioctl costs ~8 us where the host is
    /// itself virtualized, so nothing is read twice or read at all when it cannot have changed
    /// (see [`CaptureSetup`]): with XSAVE the legacy FPU state is part of it.
    pub fn capture(setup: &CaptureSetup, vcpu: &VcpuFd) -> Result<VcpuState, KvmError> {
        let mut msrs = msrs_for(&setup.msrs)?;
        let n = vcpu
            .get_msrs(&mut msrs)
            .map_err(KvmError::ioctl("KVM_GET_MSRS"))?;
        if n != setup.msrs.len() {
            return Err(KvmError::Ioctl {
                op: "KVM_GET_MSRS (short read)",
                source: kvm_ioctls::Error::new(libc::EIO),
            });
        }
        let (fpu, xsave) = if setup.xsave {
            (
                None,
                Some(Box::new(
                    vcpu.get_xsave().map_err(KvmError::ioctl("KVM_GET_XSAVE"))?,
                )),
            )
        } else {
            (
                Some(vcpu.get_fpu().map_err(KvmError::ioctl("KVM_GET_FPU"))?),
                None,
            )
        };
        let (regs, sregs, events) = if setup.sync_regs {
            let synced = vcpu.sync_regs();
            (synced.regs, synced.sregs, synced.events)
        } else {
            (
                vcpu.get_regs().map_err(KvmError::ioctl("KVM_GET_REGS"))?,
                vcpu.get_sregs().map_err(KvmError::ioctl("KVM_GET_SREGS"))?,
                vcpu.get_vcpu_events()
                    .map_err(KvmError::ioctl("KVM_GET_VCPU_EVENTS"))?,
            )
        };
        Ok(VcpuState {
            regs,
            sregs,
            fpu,
            xsave,
            xcrs: setup.xcrs,
            msrs,
            events,
            debug_regs: setup.debug_regs,
            sync_regs: setup.sync_regs,
        })
    }

    /// Restores the state into a fresh vCPU (after its CPUID was set), checking every call. With
    /// `KVM_CAP_SYNC_REGS`, regs, sregs and events go into `kvm_run` marked dirty, and the
    /// vCPU's first KVM_RUN applies them (after the MSRs, XSAVE, XCRs and debug registers set
    /// here, which none of them depends on; KVM checks them then as the ioctls would, and a
    /// refusal fails that KVM_RUN).
    pub fn restore(&self, vcpu: &mut VcpuFd) -> Result<(), KvmError> {
        if self.sync_regs {
            let synced = vcpu.sync_regs_mut();
            synced.regs = self.regs;
            synced.sregs = self.sregs;
            synced.events = self.events;
            for reg in SYNC_REGS {
                vcpu.set_sync_dirty_reg(reg);
            }
        } else {
            vcpu.set_sregs(&self.sregs)
                .map_err(KvmError::ioctl("KVM_SET_SREGS"))?;
            vcpu.set_regs(&self.regs)
                .map_err(KvmError::ioctl("KVM_SET_REGS"))?;
        }
        if let Some(fpu) = &self.fpu {
            vcpu.set_fpu(fpu).map_err(KvmError::ioctl("KVM_SET_FPU"))?;
        }
        if let Some(xsave) = &self.xsave {
            // SAFETY: captured with KVM_GET_XSAVE from a vCPU of the same host whose XSAVE state
            // fits the 4 KiB struct (CaptureSetup::xsave), so the kernel reads within it.
            unsafe { vcpu.set_xsave(xsave) }.map_err(KvmError::ioctl("KVM_SET_XSAVE"))?;
        }
        if let Some(xcrs) = &self.xcrs {
            vcpu.set_xcrs(xcrs).map_err(KvmError::ioctl("KVM_SET_XCRS"))?;
        }
        self.restore_msrs(vcpu)?;
        if !self.sync_regs {
            vcpu.set_vcpu_events(&self.events)
                .map_err(KvmError::ioctl("KVM_SET_VCPU_EVENTS"))?;
        }
        vcpu.set_debug_regs(&self.debug_regs)
            .map_err(KvmError::ioctl("KVM_SET_DEBUGREGS"))?;
        Ok(())
    }

    /// KVM_SET_MSRS stops at the first MSR it refuses and returns how many it set: skip the
    /// refused one (logged) and set the rest.
    fn restore_msrs(&self, vcpu: &VcpuFd) -> Result<(), KvmError> {
        let mut rest: &[kvm_msr_entry] = self.msrs.as_slice();
        while !rest.is_empty() {
            let msrs = Msrs::from_entries(rest).map_err(|_| KvmError::Ioctl {
                op: "building the MSR list",
                source: kvm_ioctls::Error::new(libc::E2BIG),
            })?;
            let n = vcpu.set_msrs(&msrs).map_err(KvmError::ioctl("KVM_SET_MSRS"))?;
            if n < rest.len() {
                tracing::debug!(
                    msr = format_args!("{:#x}", rest[n].index),
                    "KVM refused to restore an MSR"
                );
            }
            rest = &rest[(n + 1).min(rest.len())..];
        }
        Ok(())
    }
}
