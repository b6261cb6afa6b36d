//! The KVM VM.
use kvm_ioctls::{Kvm, VmFd};

use super::KvmError;

/// Creates a VM (its memory slots are the address space's: `Space::register_all`).
pub fn create_vm(kvm: &Kvm) -> Result<VmFd, KvmError> {
    kvm.create_vm().map_err(KvmError::ioctl("KVM_CREATE_VM"))
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
