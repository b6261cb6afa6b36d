//! The KVM VM and its memory slots.
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VmFd};
use pvm_abi::layout;

use super::memory::GuestMemory;
use super::KvmError;

/// Memory slot of guest RAM.
pub const RAM_SLOT: u32 = 0;

/// Creates a VM and registers guest RAM as slot 0 at guest-physical `[RESERVED_START, size)`.
/// Page 0 is left out on purpose: it is the hypercall window, and an access there exits as MMIO.
pub fn create_vm(kvm: &Kvm, mem: &GuestMemory) -> Result<VmFd, KvmError> {
    let vm = kvm.create_vm().map_err(KvmError::ioctl("KVM_CREATE_VM"))?;
    let region = kvm_userspace_memory_region {
        slot: RAM_SLOT,
        flags: 0,
        guest_phys_addr: layout::RESERVED_START,
        memory_size: mem.size() - layout::RESERVED_START,
        userspace_addr: mem.host_base() + layout::RESERVED_START,
    };
    // SAFETY: the region lies inside `mem`'s mapping, which outlives the VM (the monitor drops
    // the VM before the memory), and no other slot overlaps it.
    unsafe { vm.set_user_memory_region(region) }.map_err(KvmError::ioctl("KVM_SET_USER_MEMORY_REGION"))?;
    Ok(vm)
}
