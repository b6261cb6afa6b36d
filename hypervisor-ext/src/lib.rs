//! The pvm monitor: runs one pVM in one host process.
//!
//! [`Monitor::new`] maps guest RAM, loads a validated image ([`loader::Image`]), writes the page
//! tables and descriptor tables ([`arch`]), creates the KVM VM and vCPU ([`vstate`]);
//! [`Monitor::run`] runs the vCPU loop, dispatching hypercalls ([`hypercall`]) until the guest
//! exits, crashes, or a host signal stops it ([`Outcome`]).
pub mod arch;
pub mod family;
mod fork;
mod guest_calls;
pub mod hypercall;
pub mod ipc;
pub mod loader;
pub mod monitor;
pub mod outcome;
pub mod registry;
pub mod signals;
pub mod teardown;
pub mod vstate;

pub use family::{Ids, Limits};
pub use monitor::{
    monotonic_ns, parse_mem_size, Monitor, MonitorConfig, MonitorError, BENCH_CHILD_READY,
    BENCH_PARENT_PAUSE, DEFAULT_MEM_SIZE,
};
pub use outcome::{Crash, Exception, Outcome};
