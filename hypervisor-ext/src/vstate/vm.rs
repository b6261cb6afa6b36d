//! The KVM VM.
use kvm_ioctls::{Kvm, VmFd};

use super::KvmError;

/// Creates a VM (its memory slots are the address space's: `Space::register_all`).
pub fn create_vm(kvm: &Kvm) -> Result<VmFd, KvmError> {
    super::retry_interrupted(|| kvm.create_vm()).map_err(KvmError::ioctl("KVM_CREATE_VM"))
}

/// A second handle on `vm` (for a helper thread that adds memory slots while the vCPU runs).
pub fn duplicate(kvm: &Kvm, vm: &VmFd) -> Result<VmFd, KvmError> {
    use std::os::fd::{AsRawFd, BorrowedFd, IntoRawFd};
    // SAFETY: `vm` is open for the duration of this call.
    let fd = unsafe { BorrowedFd::borrow_raw(vm.as_raw_fd()) }
        .try_clone_to_owned()
        .map_err(|e| {
            KvmError::ioctl("dup of the VM descriptor")(kvm_ioctls::Error::new(
                e.raw_os_error().unwrap_or(libc::EIO),
            ))
        })?;
    // SAFETY: a fresh duplicate of a VM descriptor, owned by nothing else from here on.
    unsafe { kvm.create_vmfd_from_rawfd(fd.into_raw_fd()) }.map_err(KvmError::ioctl("KVM_GET_VCPU_MMAP_SIZE"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    extern "C" fn ignore(_: libc::c_int) {}

    /// KVM_CREATE_VM fails with EINTR when a signal arrives meanwhile (KVM checks for pending
    /// signals while it sets the VM up); the monitor has handlers without SA_RESTART, so a
    /// SIGCHLD or a Ctrl-C during a boot or a fork must not fail it.
    #[test]
    fn a_vm_is_created_under_a_storm_of_signals() {
        let kvm = crate::vstate::open_kvm().expect("/dev/kvm");
        crate::sys::set_signal_handler(libc::SIGURG, ignore);
        let tid = rustix::thread::gettid();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let storm = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    // SAFETY: tgkill to this process's test thread with a handled signal.
                    unsafe {
                        libc::syscall(
                            libc::SYS_tgkill,
                            libc::getpid(),
                            tid.as_raw_nonzero().get(),
                            libc::SIGURG,
                        )
                    };
                }
            })
        };
        let results: Vec<_> = (0..50).map(|_| create_vm(&kvm).map(drop)).collect();
        stop.store(true, Ordering::Relaxed);
        storm.join().unwrap();
        let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
        assert!(
            failed.is_empty(),
            "{} of 50 failed: {:?}",
            failed.len(),
            failed.first()
        );
    }
}
