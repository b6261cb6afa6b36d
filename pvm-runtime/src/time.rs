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

/// The CPU's cycle counter (TSC): reading it costs no exit, so it times short intervals; its
/// rate is the host's TSC rate (see [`time_each`] for nanoseconds).
pub fn cycles() -> u64 {
    // SAFETY: rdtsc has no memory effects and is allowed at CPL3 (CR4.TSD is clear).
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Prints `samples` (nanoseconds) for `pvmctl bench` in the format of [`pvm_abi::samples`]: a
/// benchmark guest calls it after its summary line.
pub fn print_samples(samples: &[u64]) {
    use core::fmt::Write as _;
    for chunk in samples.chunks(pvm_abi::samples::PER_LINE) {
        let mut line = alloc::string::String::from(pvm_abi::samples::TAG);
        for s in chunk {
            let _ = write!(line, " {s}");
        }
        crate::println!("{line}");
    }
}

/// Runs `f(0..rounds)` and times each call with the cycle counter, converted to nanoseconds by
/// calibrating against the host clock over the whole run (two hypercalls in all). Returns the
/// samples sorted.
pub fn time_each<E>(
    rounds: usize,
    mut f: impl FnMut(usize) -> Result<(), E>,
) -> Result<alloc::vec::Vec<u64>, E> {
    let mut samples = alloc::vec::Vec::with_capacity(rounds);
    let clock0 = Instant::now();
    let tsc0 = cycles();
    for i in 0..rounds {
        let t = cycles();
        f(i)?;
        samples.push(cycles() - t);
    }
    let tsc = cycles().wrapping_sub(tsc0).max(1);
    let nanos = clock0.elapsed().as_nanos() as u64;
    for s in &mut samples {
        *s = (u128::from(*s) * u128::from(nanos) / u128::from(tsc)) as u64;
    }
    samples.sort_unstable();
    Ok(samples)
}
