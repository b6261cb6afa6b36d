//! The pvm monitor: runs one pVM in one host process.
//!
//! [`Monitor::new`] maps guest RAM, loads a validated image ([`loader::Image`]), writes the page
//! tables and descriptor tables (`arch`), creates the KVM VM and vCPU ([`vstate`]);
//! [`Monitor::run`] runs the vCPU loop, dispatching hypercalls ([`hypercall`]) until the guest
//! exits, crashes, or a host signal stops it ([`Outcome`]). Host system calls go through `sys`
//! (read it against the seccomp allow-list in `seccomp`); the runtime directory is verified by
//! `rundir`; limits are leases in `ledger`.
mod arch;
pub mod console_log;
pub mod control;
mod cpuid_cache;
pub mod dl;
mod family;
mod fork;
mod guest_calls;
pub mod hypercall;
mod ipc;
mod ledger;
mod libstore;
pub mod loader;
mod monitor;
pub mod net;
pub mod outcome;
pub mod placement;
pub mod pool;
pub mod registry;
mod rundir;
mod seccomp;
pub mod signals;
mod sys;
pub mod teardown;
pub mod trust;
mod update;
pub mod vstate;

/// The host system calls pvmctl makes itself (`run -d` forks and waits for its child), from
/// `sys`, the one module that makes host calls (the rest of it is the monitor's own and stays
/// private).
pub mod host {
    pub use crate::sys::{fork, kill, waitpid, Forked, WaitStatus};
}

pub use family::{default_mem_total, Ids, KillTarget, Limits, OutcomeRecord};
pub use ipc::{Named, Opened};
pub use ledger::{usage_of as ledger_usage, LedgerError, Usage};
pub use monitor::{
    monotonic_ns, parse_mem_size, parse_size, Monitor, MonitorConfig, MonitorError, BENCH_CHILD_READY,
    BENCH_PARENT_PAUSE, DEFAULT_MEM_SIZE,
};
pub use outcome::{Crash, Exception, Outcome};
pub use rundir::RunDirError;
