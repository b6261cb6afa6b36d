//! Time from the host's monotonic clock (one hypercall per reading).
use core::time::Duration;

use pvm_abi::{ClockArgs, Hypercall};

/// A reading of the host's monotonic clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Instant(u64);

impl Instant {
    /// Now.
    pub fn now() -> Instant {
        let mut args = ClockArgs::default();
        crate::hypercall::raw(Hypercall::Clock, &mut args as *mut ClockArgs as u64);
        crate::signal::dispatch();
        Instant(args.nanos)
    }

    /// Time since `earlier` (zero if it is later).
    pub fn duration_since(&self, earlier: Instant) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }

    /// Time since this reading.
    pub fn elapsed(&self) -> Duration {
        Instant::now().duration_since(*self)
    }
}
