//! KVM state of a pVM, one file per concern (as Firecracker's `vstate`): the VM and its memory
//! slots, the vCPU, and guest memory.
pub mod memory;
pub mod space;
pub mod vcpu;
pub mod vm;

use kvm_ioctls::Kvm;

/// The KVM device, unless `PVM_KVM_DEVICE` names another path (e.g. where a container mounts it).
pub const DEFAULT_KVM_DEVICE: &str = "/dev/kvm";

/// Errors opening or talking to KVM.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// The KVM device does not exist.
    #[error("{0} not found: this host has no KVM (enable virtualization and load kvm_intel or kvm_amd)")]
    Missing(String),
    /// The KVM device exists but this user may not open it.
    #[error("permission denied opening {0}: add your user to the kvm group (sudo usermod -aG kvm $USER) and log in again")]
    Permission(String),
    /// Opening the KVM device failed otherwise.
    #[error("cannot use {path} as the KVM device: {source}")]
    Open {
        /// The device path.
        path: String,
        /// The error.
        source: kvm_ioctls::Error,
    },
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

/// Most attempts of a KVM call that a signal keeps interrupting.
const EINTR_ATTEMPTS: u32 = 10_000;

/// Runs a KVM call that fails with `EINTR` when a signal arrives meanwhile (`KVM_CREATE_VM`,
/// `KVM_CREATE_VCPU` and memory slots check for pending signals while they set up), again until
/// it is not interrupted: the monitor's signal handlers have no `SA_RESTART` (blocking calls
/// must see signals), and a SIGCHLD or a Ctrl-C during a boot or a fork must not fail it (the
/// handler has recorded the signal; the vCPU loop acts on it). Such a call has no effect when
/// interrupted.
pub(crate) fn retry_interrupted<T>(
    mut call: impl FnMut() -> Result<T, kvm_ioctls::Error>,
) -> Result<T, kvm_ioctls::Error> {
    let mut attempts = 1;
    loop {
        match call() {
            Err(e) if e.errno() == libc::EINTR && attempts < EINTR_ATTEMPTS => attempts += 1,
            result => return result,
        }
    }
}

/// The KVM device to open: `$PVM_KVM_DEVICE`, else `/dev/kvm`.
pub fn kvm_device() -> String {
    std::env::var("PVM_KVM_DEVICE").unwrap_or_else(|_| DEFAULT_KVM_DEVICE.to_string())
}

/// Opens the KVM device (`/dev/kvm` or `$PVM_KVM_DEVICE`), turning the common failures into
/// errors that say how to fix them.
pub fn open_kvm() -> Result<Kvm, KvmError> {
    open_kvm_at(kvm_device())
}

/// [`open_kvm`] of the device at `path`.
pub fn open_kvm_at(path: String) -> Result<Kvm, KvmError> {
    let Ok(cpath) = std::ffi::CString::new(path.clone()) else {
        return Err(KvmError::Missing(path));
    };
    Kvm::new_with_path(cpath).map_err(|e| match e.errno() {
        libc::ENOENT | libc::ENXIO | libc::ENODEV | libc::ENOTDIR => KvmError::Missing(path),
        libc::EACCES | libc::EPERM => KvmError::Permission(path),
        _ => KvmError::Open { path, source: e },
    })
}
