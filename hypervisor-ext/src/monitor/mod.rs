//! The monitor: one pVM in one host process. `boot` builds it from an image, `run` is the vCPU
//! loop (exits, signals, pause), `lifecycle` is its end (the registry, the family's wait);
//! hypercall handlers are in `guest_calls` and `fork`.
mod boot;
mod lifecycle;
mod run;

use std::os::fd::RawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use kvm_bindings::CpuId;
use kvm_ioctls::{Kvm, VcpuFd, VmFd};

pub(crate) use boot::Prebuilt;
pub use boot::{parse_mem_size, parse_size, MemSizeError};

use crate::arch;
use crate::control::ControlSocket;
use crate::family::{Family, FamilyError, Ids, Limits};
use crate::ipc::Ipc;
use crate::ledger::LedgerError;
use crate::loader::LoadError;
use crate::outcome::Outcome;
use crate::registry::RegistryError;
use crate::sys;
use crate::vstate::memory::{GuestMemory, MemoryError};
use crate::vstate::space::Space;
use crate::vstate::vcpu::CaptureSetup;
use crate::vstate::KvmError;

/// Bench record kind: parent's pause in fork (fork hypercall to resuming the guest).
pub const BENCH_PARENT_PAUSE: u64 = 1;
/// Bench record kind: child ready (parent's fork hypercall to the child's first hypercall).
pub const BENCH_CHILD_READY: u64 = 2;

/// How much more readily the kernel's OOM killer picks a monitor than other processes (of
/// -1000..1000).
const OOM_SCORE_ADJ: i32 = 500;

/// Guest RAM when `--mem` is not given.
pub const DEFAULT_MEM_SIZE: u64 = 64 << 20;

/// Errors building or running a pVM (the monitor's failures, not the guest's).
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    /// KVM is unavailable or refused an operation.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// The image cannot be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Guest memory could not be set up.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Machine setup failed.
    #[error(transparent)]
    Arch(#[from] arch::ArchError),
    /// The monitor could not be confined.
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
    /// The arguments do not fit in the boot block.
    #[error("arguments too long: {len} bytes, at most {max} fit")]
    ArgsTooLong {
        /// Bytes needed.
        len: usize,
        /// Bytes available.
        max: usize,
    },
    /// The guest memory size is unusable.
    #[error(transparent)]
    MemSize(#[from] MemSizeError),
    /// Networking could not start.
    #[error(transparent)]
    Net(#[from] crate::net::NetError),
    /// The monitor cannot run on the CPUs asked for.
    #[error("cannot run on CPUs {cpus}: {source}")]
    Placement {
        /// The CPUs.
        cpus: String,
        /// The error.
        source: std::io::Error,
    },
    /// KVM_RUN failed.
    #[error("KVM_RUN failed: {0}")]
    Run(kvm_ioctls::Error),
    /// The registry cannot be used.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// Family bookkeeping failed.
    #[error(transparent)]
    Family(#[from] FamilyError),
    /// A limit on pVMs or their memory is reached.
    #[error(transparent)]
    Limit(#[from] LedgerError),
    /// The libraries the operator allows cannot be set up.
    #[error(transparent)]
    Libraries(#[from] crate::dl::DlSetupError),
    /// The control socket cannot be made.
    #[error("cannot make the control socket: {0}")]
    Control(#[from] std::io::Error),
    /// KVM reported an exit the monitor does not handle.
    #[error("unexpected vCPU exit: {0}")]
    UnexpectedExit(String),
}

/// What to run.
#[derive(Clone, Debug)]
pub struct MonitorConfig {
    /// Guest RAM in bytes.
    pub mem_size: u64,
    /// Arguments: argv[0] (the image or pVM name) and the app's arguments.
    pub args: Vec<String>,
    /// The runtime directory for the registry.
    pub run_dir: PathBuf,
    /// Limits on pVM counts and memory.
    pub limits: Limits,
    /// Where to write fork timing records for `pvmctl bench fork`, if anywhere.
    pub bench_fd: Option<RawFd>,
    /// Confine the monitor: close the descriptors it inherited and install its seccomp
    /// allow-list once the pVM is built. Off only to measure what the filter costs, to debug, or
    /// to build a pVM inside another program (the in-process boot benchmark).
    pub confine: bool,
    /// The libraries the pVM may load.
    pub libs: crate::dl::LibConfig,
    /// What the family may do on the network (nothing when no port is published).
    pub net: crate::net::NetConfig,
    /// The console is a detached family's log file: keep it bounded (`console_log`).
    pub console_log: bool,
    /// The host CPUs the family runs on (`--cpuset-cpus`, `--cpu-spread`); anywhere if none.
    pub placement: Option<crate::placement::Placement>,
}

/// Boot timestamps (a boot-timer in the Firecracker sense).
#[derive(Clone, Copy, Debug)]
pub struct BootTimes {
    /// Just before KVM_CREATE_VM.
    pub create_vm: Instant,
    /// When the guest's first hypercall reached the monitor.
    pub first_hypercall: Option<Instant>,
}

impl BootTimes {
    /// KVM_CREATE_VM to the guest's first hypercall, once it happened.
    pub fn to_first_hypercall(self) -> Option<Duration> {
        self.first_hypercall.map(|t| t - self.create_vm)
    }
}

/// One pVM: its KVM VM, vCPU and guest memory, and its place in its family. Fields drop in
/// order: vCPU and VM before memory.
pub struct Monitor {
    pub(crate) vcpu: VcpuFd,
    pub(crate) vm: VmFd,
    pub(crate) mem: GuestMemory,
    pub(crate) kvm: Kvm,
    pub(crate) cpuid: CpuId,
    /// The guest address space: page tables and memory slots.
    pub(crate) space: Space,
    /// The operator's control socket (made when the pVM starts running).
    pub(crate) control: Option<ControlSocket>,
    /// What capturing the vCPU for a fork needs, found at the first fork.
    pub(crate) capture_setup: Option<CaptureSetup>,
    pub(crate) family: Family,
    pub(crate) ipc: Ipc,
    /// Its libraries.
    pub(crate) libs: crate::dl::Libraries,
    /// A library update under way.
    pub(crate) update: Option<crate::update::Update>,
    /// Its channel to the family's network backend.
    pub(crate) net: Option<crate::net::Network>,
    /// The console is a bounded log file.
    pub(crate) console_log: bool,
    /// Signals the guest handles, one bit per number.
    pub(crate) handled_signals: u64,
    pub(crate) bench_fd: Option<RawFd>,
    /// Set in a forked child until its first hypercall: when the parent's fork hypercall came.
    pub(crate) fork_started_ns: Option<u64>,
    /// The host CPUs it runs on, if the operator chose them.
    pub(crate) placement: Option<crate::placement::Placement>,
    times: BootTimes,
}

/// What the vCPU loop must do after signals arrived.
pub(crate) enum Attention {
    /// Nothing (or only a pause, now over).
    None,
    /// A signal was given to the guest: a blocking hypercall returns `EINTR`.
    Guest,
    /// A signal ends the pVM.
    End(Outcome),
}

/// CLOCK_MONOTONIC in nanoseconds (comparable between the processes of a family).
pub fn monotonic_ns() -> u64 {
    sys::monotonic_ns()
}

impl Monitor {
    /// The family's published ports as bound: (host address, guest port).
    pub fn published(&self) -> Vec<crate::net::Published> {
        self.net.as_ref().map(|n| n.published.clone()).unwrap_or_default()
    }

    /// Boot timestamps.
    pub fn boot_times(&self) -> BootTimes {
        self.times
    }

    /// This pVM's ids.
    pub fn ids(&self) -> Ids {
        self.family.ids
    }

    /// Writes a timing record for `pvmctl bench fork`.
    pub(crate) fn bench_record(&self, kind: u64, t0: u64, t1: u64) {
        if let Some(fd) = self.bench_fd {
            let mut rec = [0u8; 32];
            rec[0..8].copy_from_slice(&kind.to_le_bytes());
            rec[8..16].copy_from_slice(&u64::from(self.family.ids.id).to_le_bytes());
            rec[16..24].copy_from_slice(&t0.to_le_bytes());
            rec[24..32].copy_from_slice(&t1.to_le_bytes());
            // SAFETY: the bench passed this fd for the life of the pVM and nothing closes it.
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
            // One write of 32 bytes to a pipe is atomic, so records of a family never mix.
            let _ = sys::write_all(fd, &rec);
        }
    }
}
