//! The KVM VM.
use kvm_ioctls::{Kvm, VmFd};

use super::KvmError;

/// Creates a VM (its memory slots are the address space's: `Space::register_all`).
pub fn create_vm(kvm: &Kvm) -> Result<VmFd, KvmError> {
    kvm.create_vm().map_err(KvmError::ioctl("KVM_CREATE_VM"))
}
