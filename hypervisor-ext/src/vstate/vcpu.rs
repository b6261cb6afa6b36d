//! The vCPU: initial state, and a race-free kick (`immediate_exit` set from a signal handler).
use std::sync::atomic::{AtomicI32, AtomicPtr, Ordering};

use kvm_bindings::{kvm_fpu, kvm_regs, CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};

use super::KvmError;
use crate::arch;

/// Where the vCPU starts.
pub struct EntryState {
    /// Instruction pointer.
    pub rip: u64,
    /// Stack pointer.
    pub rsp: u64,
    /// First argument register.
    pub rdi: u64,
    /// Page-table root.
    pub cr3: u64,
}

/// The CPUID the host's KVM supports, given to the guest as is. Slow where the host is itself
/// virtualized (every CPUID leaf the kernel probes exits to the outer hypervisor), so the monitor
/// asks for it on a second thread while it builds the VM.
pub fn supported_cpuid(kvm: &Kvm) -> Result<CpuId, KvmError> {
    kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(KvmError::ioctl("KVM_GET_SUPPORTED_CPUID"))
}

/// Creates vCPU 0 (set it up with [`setup_vcpu`] before running it).
pub fn create_vcpu(vm: &VmFd) -> Result<VcpuFd, KvmError> {
    vm.create_vcpu(0).map_err(KvmError::ioctl("KVM_CREATE_VCPU"))
}

/// Gives `vcpu` the CPUID and the registers to enter the guest at CPL3 in 64-bit mode.
pub fn setup_vcpu(vcpu: &VcpuFd, cpuid: &CpuId, entry: &EntryState) -> Result<(), KvmError> {
    // CPUID first: KVM sizes the FPU/XSAVE state from it.
    vcpu.set_cpuid2(cpuid)
        .map_err(KvmError::ioctl("KVM_SET_CPUID2"))?;

    let mut sregs = vcpu.get_sregs().map_err(KvmError::ioctl("KVM_GET_SREGS"))?;
    arch::setup_sregs(&mut sregs, entry.cr3);
    vcpu.set_sregs(&sregs).map_err(KvmError::ioctl("KVM_SET_SREGS"))?;

    let regs = kvm_regs {
        rip: entry.rip,
        rsp: entry.rsp,
        rdi: entry.rdi,
        rflags: 0x2,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(KvmError::ioctl("KVM_SET_REGS"))?;

    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(KvmError::ioctl("KVM_SET_FPU"))
}

/// The `immediate_exit` byte of the running vCPU, for the signal handler.
static IMMEDIATE_EXIT: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
/// The last stop signal received (0 = none).
static PENDING_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_stop_signal(sig: libc::c_int) {
    PENDING_SIGNAL.store(sig, Ordering::SeqCst);
    let p = IMMEDIATE_EXIT.load(Ordering::SeqCst);
    if !p.is_null() {
        // SAFETY: p points into the kvm_run mapping of the vCPU registered by `arm_kick`, which
        // stays mapped until `disarm_kick` clears the pointer. A byte store is async-signal-safe.
        unsafe { std::ptr::write_volatile(p, 1) };
    }
}

/// Routes SIGINT, SIGTERM and SIGHUP to a handler that stops `vcpu`: if it is inside KVM_RUN the
/// signal interrupts it, and if it is about to enter, `immediate_exit` makes KVM_RUN return at
/// once. The vCPU loop then sees [`pending_signal`].
pub fn arm_kick(vcpu: &mut VcpuFd) {
    let run = vcpu.get_kvm_run();
    IMMEDIATE_EXIT.store(std::ptr::addr_of_mut!(run.immediate_exit), Ordering::SeqCst);
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: installs a handler that only performs atomic stores; no SA_RESTART so a
        // blocking KVM_RUN returns EINTR.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_stop_signal as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// Forgets the vCPU registered by [`arm_kick`] (call before dropping it).
pub fn disarm_kick() {
    IMMEDIATE_EXIT.store(std::ptr::null_mut(), Ordering::SeqCst);
}

/// The stop signal received since the pVM started, if any.
pub fn pending_signal() -> Option<i32> {
    match PENDING_SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        sig => Some(sig),
    }
}
