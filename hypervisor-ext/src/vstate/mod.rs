//! KVM state of a pVM, one file per concern (as Firecracker's `vstate`): the VM and its memory
//! slots, the vCPU, and guest memory.
pub mod memory;
pub mod vcpu;
pub mod vm;

use kvm_ioctls::Kvm;

/// Errors opening or talking to KVM.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// /dev/kvm does not exist.
    #[error(
        "/dev/kvm not found: this host has no KVM (enable virtualization and load kvm_intel or kvm_amd)"
    )]
    Missing,
    /// /dev/kvm exists but this user may not open it.
    #[error("permission denied opening /dev/kvm: add your user to the kvm group (sudo usermod -aG kvm $USER) and log in again")]
    Permission,
    /// Opening /dev/kvm failed otherwise.
    #[error("cannot open /dev/kvm: {0}")]
    Open(kvm_ioctls::Error),
    /// A KVM ioctl failed.
    #[error("KVM {op} failed: {source}")]
    Ioctl {
        /// What was being done.
        op: &'static str,
        /// The ioctl error.
        source: kvm_ioctls::Error,
    },
}

impl KvmError {
    /// Wraps an ioctl error with the operation it came from.
    pub fn ioctl(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> KvmError {
        move |source| KvmError::Ioctl { op, source }
    }
}

/// Opens /dev/kvm, turning the common failures into errors that say how to fix them.
pub fn open_kvm() -> Result<Kvm, KvmError> {
    Kvm::new().map_err(|e| match e.errno() {
        libc::ENOENT | libc::ENXIO | libc::ENODEV => KvmError::Missing,
        libc::EACCES | libc::EPERM => KvmError::Permission,
        _ => KvmError::Open(e),
    })
}
