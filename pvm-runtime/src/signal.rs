//! Signals between pVMs of a family (and from `pvmctl kill -s`).
//!
//! A handled signal runs its handler at the next hypercall return (any call of this crate that
//! exits to the monitor, except console output) or while the pVM sleeps in the monitor: a
//! blocked pipe read then returns `Interrupted` after the handler ran. A signal without a
//! handler takes its default action: CHLD is ignored, the others end the pVM.
#[cfg(not(feature = "library"))]
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use pvm_abi::{errno, signal, Hypercall, KillArgs};
#[cfg(not(feature = "library"))]
use pvm_abi::{layout, SigActionArgs};

use crate::hypercall::raw;

/// A signal.
#[repr(u64)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// Hangup.
    Hup = signal::HUP,
    /// Interrupt (Ctrl-C).
    Int = signal::INT,
    /// Kill: cannot be handled.
    Kill = signal::KILL,
    /// User signal 1.
    Usr1 = signal::USR1,
    /// User signal 2.
    Usr2 = signal::USR2,
    /// Terminate.
    Term = signal::TERM,
    /// A child pVM ended.
    Chld = signal::CHLD,
}

impl Signal {
    const ALL: [Signal; 7] = [
        Signal::Hup,
        Signal::Int,
        Signal::Kill,
        Signal::Usr1,
        Signal::Usr2,
        Signal::Term,
        Signal::Chld,
    ];

    /// The signal with number `n`.
    pub fn from_number(n: u64) -> Option<Signal> {
        Self::ALL.into_iter().find(|s| *s as u64 == n)
    }
}

/// Why a signal call failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The target is in another family: pVMs signal only their own family.
    PermissionDenied,
    /// No such pVM (or it ended).
    NoSuchPvm,
    /// The signal cannot be handled (KILL) or sent.
    Invalid,
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Error::PermissionDenied => "permission denied: not in this family",
            Error::NoSuchPvm => "no such pVM",
            Error::Invalid => "invalid signal",
        })
    }
}

impl core::error::Error for Error {}

/// Handlers by signal number (0: none).
#[cfg(not(feature = "library"))]
static HANDLERS: [AtomicUsize; 64] = [const { AtomicUsize::new(0) }; 64];
#[cfg(not(feature = "library"))]
static DISPATCHING: AtomicBool = AtomicBool::new(false);

#[cfg(not(feature = "library"))]
fn action(sig: Signal, handled: bool) -> Result<(), Error> {
    let mut args = SigActionArgs {
        signal: sig as u64,
        handled: u64::from(handled),
        result: 0,
    };
    raw(Hypercall::SigAction, &mut args as *mut SigActionArgs as u64);
    if args.result < 0 {
        return Err(Error::Invalid);
    }
    Ok(())
}

/// Runs `handler` whenever `sig` arrives. (Not in a library: handlers are the app's.)
#[cfg(not(feature = "library"))]
pub fn on(sig: Signal, handler: fn(Signal)) -> Result<(), Error> {
    if sig == Signal::Kill {
        return Err(Error::Invalid);
    }
    HANDLERS[sig as usize].store(handler as usize, Ordering::SeqCst);
    action(sig, true)
}

/// Restores the default action of `sig`.
#[cfg(not(feature = "library"))]
pub fn default(sig: Signal) -> Result<(), Error> {
    action(sig, false)?;
    HANDLERS[sig as usize].store(0, Ordering::SeqCst);
    Ok(())
}

/// Sends `sig` to pVM `id`, which must be of this family (or this pVM itself).
pub fn kill(id: u64, sig: Signal) -> Result<(), Error> {
    let mut args = KillArgs {
        id,
        signal: sig as u64,
        result: 0,
    };
    raw(Hypercall::Kill, &mut args as *mut KillArgs as u64);
    let result = args.result;
    dispatch();
    match -result {
        0 => Ok(()),
        errno::EPERM => Err(Error::PermissionDenied),
        errno::ESRCH => Err(Error::NoSuchPvm),
        _ => Err(Error::Invalid),
    }
}

/// Runs the handlers of signals that arrived (also done after every hypercall this crate makes,
/// except console output, so call it only to run handlers while computing without hypercalls),
/// and a library update the operator asked for, if its library is idle.
pub fn dispatch() {
    poll();
}

/// What [`dispatch`] does; `true` if a signal handler ran (a blocking call the monitor
/// interrupted returns `Interrupted` then, and goes on sleeping otherwise).
#[cfg(not(feature = "library"))]
pub(crate) fn poll() -> bool {
    let ran = run_handlers();
    crate::dl::poll_update();
    ran
}

/// In a library, the app's runtime does it (`pvm_poll`): the handlers and updates are the app's.
#[cfg(feature = "library")]
pub(crate) fn poll() -> bool {
    extern "C" {
        fn pvm_poll() -> bool;
    }
    // SAFETY: `pvm_poll` is the app runtime's export, a plain C-ABI function.
    unsafe { pvm_poll() }
}

#[cfg(not(feature = "library"))]
fn run_handlers() -> bool {
    // SAFETY: the monitor maps the status page user read-write for the pVM's life; the monitor
    // only writes it while the vCPU is stopped, so an atomic view of the word is sound.
    let pending = unsafe { &*(layout::STATUS_ADDR as *const AtomicU64) };
    if pending.load(Ordering::SeqCst) == 0 || DISPATCHING.swap(true, Ordering::SeqCst) {
        return false;
    }
    let mask = pending.swap(0, Ordering::SeqCst);
    let mut ran = false;
    for (n, slot) in HANDLERS.iter().enumerate().skip(1) {
        if mask & (1 << n) == 0 {
            continue;
        }
        let h = slot.load(Ordering::SeqCst);
        if let (Some(sig), true) = (Signal::from_number(n as u64), h != 0) {
            // SAFETY: only `on` stores into HANDLERS, always a `fn(Signal)`.
            let handler: fn(Signal) = unsafe { core::mem::transmute::<usize, fn(Signal)>(h) };
            handler(sig);
            ran = true;
        }
    }
    DISPATCHING.store(false, Ordering::SeqCst);
    ran
}

/// The app's poll, for its libraries (see [`poll`]).
#[cfg(not(feature = "library"))]
#[no_mangle]
pub extern "C" fn pvm_poll() -> bool {
    poll()
}
