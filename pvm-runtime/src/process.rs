//! pVMs as processes: fork, wait, ids.
use core::fmt;

use pvm_abi::{errno, wait_kind, ForkArgs, Hypercall, WaitArgs, WAIT_NOHANG};

use crate::hypercall::raw;
use crate::rt::boot_info;

/// Why a process call failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// A pVM limit (per family or per host) is reached; the caller keeps running.
    LimitReached,
    /// The host is out of memory.
    OutOfMemory,
    /// No such child (or no child at all) to wait for.
    NoChild,
    /// A signal handler ran while waiting.
    Interrupted,
    /// The monitor failed; the code is a negated errno.
    Host(i64),
}

impl Error {
    fn from_result(r: i64) -> Error {
        match -r {
            errno::EAGAIN => Error::LimitReached,
            errno::ENOMEM => Error::OutOfMemory,
            errno::ECHILD => Error::NoChild,
            errno::EINTR => Error::Interrupted,
            _ => Error::Host(r),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::LimitReached => f.write_str("pVM limit reached"),
            Error::OutOfMemory => {
                f.write_str("out of memory (the host's, or the memory budget of your pVMs)")
            }
            Error::NoChild => f.write_str("no such child pVM"),
            Error::Interrupted => f.write_str("interrupted by a signal"),
            Error::Host(code) => write!(f, "monitor error {code}"),
        }
    }
}

impl core::error::Error for Error {}

/// How a child pVM ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this code.
    Exited(i32),
    /// It crashed: a CPU exception `vector` (256: a bad hypercall or a KVM error) at `rip`,
    /// touching `fault_addr` for a page fault.
    Crashed {
        /// Exception vector.
        vector: u64,
        /// Faulting address (page faults).
        fault_addr: u64,
        /// Faulting instruction.
        rip: u64,
    },
    /// A signal stopped it (`pvmctl kill`, or its family being stopped).
    Killed(i32),
}

impl ExitStatus {
    /// Exited with code 0.
    pub fn success(&self) -> bool {
        *self == ExitStatus::Exited(0)
    }

    fn from_args(a: &WaitArgs) -> ExitStatus {
        match a.kind {
            wait_kind::EXITED => ExitStatus::Exited(a.code as i32),
            wait_kind::CRASHED => ExitStatus::Crashed {
                vector: a.code as u64,
                fault_addr: a.fault_addr,
                rip: a.rip,
            },
            _ => ExitStatus::Killed(a.code as i32),
        }
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Exited(code) => write!(f, "exited with code {code}"),
            ExitStatus::Crashed { vector: 256, .. } => f.write_str("crashed (stopped by its monitor)"),
            ExitStatus::Crashed {
                vector: 14,
                fault_addr,
                rip,
            } => {
                write!(f, "crashed: page fault at {fault_addr:#x}, rip {rip:#x}")
            }
            ExitStatus::Crashed { vector, rip, .. } => {
                write!(f, "crashed: exception {vector} at rip {rip:#x}")
            }
            ExitStatus::Killed(sig) => write!(f, "killed by signal {sig}"),
        }
    }
}

/// A child pVM.
#[derive(Debug, PartialEq, Eq)]
pub struct Child {
    id: u64,
}

impl Child {
    /// The child's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The child with id `id` (for code that forked through the raw hypercall).
    pub fn from_id(id: u64) -> Child {
        Child { id }
    }

    /// Waits for the child to end.
    pub fn wait(self) -> Result<ExitStatus, Error> {
        wait_for(self.id, 0).map(|(_, status)| status.unwrap_or(ExitStatus::Killed(0)))
    }

    /// Whether the child has ended, without waiting: `Ok(None)` while it runs.
    pub fn try_wait(&self) -> Result<Option<ExitStatus>, Error> {
        wait_for(self.id, WAIT_NOHANG).map(|(_, status)| status)
    }
}

/// What [`fork`] returns on each side.
#[derive(Debug, PartialEq, Eq)]
pub enum Fork {
    /// In the parent, with the new child.
    Parent(Child),
    /// In the child.
    Child,
}

/// Clones this pVM: memory is shared copy-on-write, the child resumes here with
/// [`Fork::Child`], the parent with [`Fork::Parent`]. Buffered console output is flushed first,
/// so it is not printed twice.
pub fn fork() -> Result<Fork, Error> {
    crate::console::flush();
    let mut args = ForkArgs::default();
    raw(Hypercall::Fork, &mut args as *mut ForkArgs as u64);
    crate::signal::dispatch();
    match args.result {
        0 => {
            crate::rt::set_ids(args.id, args.parent_id);
            Ok(Fork::Child)
        }
        id if id > 0 => Ok(Fork::Parent(Child { id: id as u64 })),
        err => Err(Error::from_result(err)),
    }
}

fn wait_for(id: u64, flags: u64) -> Result<(u64, Option<ExitStatus>), Error> {
    let mut args = WaitArgs {
        id,
        flags,
        ..Default::default()
    };
    loop {
        raw(Hypercall::Wait, &mut args as *mut WaitArgs as u64);
        // A wait the monitor interrupted (EINTR) was for these handlers: run them, or every
        // later wait would be interrupted again at once. Interrupted only for a library
        // update (no handler ran): wait again.
        let handled = crate::signal::poll();
        if args.result != -errno::EINTR || handled {
            break;
        }
    }
    if args.result < 0 {
        return Err(Error::from_result(args.result));
    }
    if args.kind == wait_kind::NONE {
        return Ok((0, None));
    }
    Ok((args.child, Some(ExitStatus::from_args(&args))))
}

/// Waits for any child to end; returns its id and status.
pub fn wait_any() -> Result<(u64, ExitStatus), Error> {
    wait_for(0, 0).map(|(id, status)| (id, status.unwrap_or(ExitStatus::Killed(0))))
}

/// This pVM's host-unique id.
pub fn id() -> u64 {
    crate::rt::ids().0
}

/// The parent pVM's id; 0 for the root of a family.
pub fn parent_id() -> u64 {
    crate::rt::ids().1
}

/// The family's id (its root's id).
pub fn family_id() -> u64 {
    boot_info().family_id
}

/// Sleeps until a signal stops this pVM (e.g. `pvmctl kill`).
pub fn pause() -> ! {
    crate::console::flush();
    loop {
        raw(Hypercall::Pause, 0);
        crate::signal::dispatch();
    }
}
