//! Host signals of a monitor: how they reach the vCPU loop.
//!
//! Handlers only store to atomics and set `kvm_run.immediate_exit` (the race-free kick of
//! Firecracker): inside KVM_RUN the signal makes it return EINTR, and about to enter it makes it
//! return at once. Blocking waits (waitpid, poll, sigsuspend) check the atomics with the signals
//! blocked and sleep with them unblocked atomically, so no signal is lost in between.
//!
//! Guest-visible signals (HUP, INT, USR1, USR2, TERM, CHLD) are host signals of the same number
//! sent to the monitor: by `pvmctl kill -s`, by another pVM's `Kill` hypercall, or by the kernel
//! (SIGCHLD). The monitor gives a signal its guest handles to the guest; otherwise it applies
//! the default action (CHLD: ignore; the others: end the pVM).
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};

use kvm_ioctls::VcpuFd;

use crate::sys::{self, SigSet};

/// The `immediate_exit` byte of the running vCPU, for the handler.
static IMMEDIATE_EXIT: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
/// Guest-visible signals received and not yet taken, one bit per number.
static PENDING: AtomicU64 = AtomicU64::new(0);
/// A pause request arrived and no resume since.
static PAUSE_REQUESTED: AtomicBool = AtomicBool::new(false);
/// A connection waits on the control socket (SIGIO).
static CONTROL: AtomicBool = AtomicBool::new(false);

/// Host signal `pvmctl pause` sends a monitor.
pub fn pause_signal() -> libc::c_int {
    libc::SIGRTMIN() + 1
}

/// Host signal `pvmctl resume` sends a monitor.
pub fn resume_signal() -> libc::c_int {
    libc::SIGRTMIN() + 2
}

/// Guest-visible signals.
pub const GUEST_SIGNALS: [libc::c_int; 6] = [
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGTERM,
    libc::SIGCHLD,
];

/// Every signal a monitor handles (fixed size: this is on the fork and sleep paths): the guest's,
/// pause and resume, and SIGIO (a connection on the control socket).
pub fn all_signals() -> [libc::c_int; GUEST_SIGNALS.len() + 3] {
    let [a, b, c, d, e, f] = GUEST_SIGNALS;
    [a, b, c, d, e, f, pause_signal(), resume_signal(), libc::SIGIO]
}

fn kick() {
    let p = IMMEDIATE_EXIT.load(Ordering::SeqCst);
    if !p.is_null() {
        // SAFETY: p points into the kvm_run mapping of the vCPU registered by `arm_kick`, which
        // stays mapped until the pointer is replaced or cleared. A byte store is async-signal-safe.
        unsafe { std::ptr::write_volatile(p, 1) };
    }
}

extern "C" fn on_signal(sig: libc::c_int) {
    if sig == pause_signal() {
        PAUSE_REQUESTED.store(true, Ordering::SeqCst);
    } else if sig == resume_signal() {
        PAUSE_REQUESTED.store(false, Ordering::SeqCst);
    } else if sig == libc::SIGIO {
        CONTROL.store(true, Ordering::SeqCst);
    } else if (1..64).contains(&sig) {
        PENDING.fetch_or(1 << sig, Ordering::SeqCst);
    }
    kick();
}

/// Installs the handlers and makes them kick `vcpu`.
pub fn arm_kick(vcpu: &mut VcpuFd) {
    let run = vcpu.get_kvm_run();
    IMMEDIATE_EXIT.store(std::ptr::addr_of_mut!(run.immediate_exit), Ordering::SeqCst);
    for sig in all_signals() {
        // The handler only performs atomic stores; no SA_RESTART, so a blocking KVM_RUN,
        // waitpid or poll returns EINTR.
        sys::set_signal_handler(sig, on_signal);
    }
}

/// Forgets the vCPU registered by [`arm_kick`] (call before dropping it).
pub fn disarm_kick() {
    IMMEDIATE_EXIT.store(std::ptr::null_mut(), Ordering::SeqCst);
}

/// Takes the guest-visible signals received so far (one bit per number).
pub fn take() -> u64 {
    PENDING.swap(0, Ordering::SeqCst)
}

/// Puts signals back (a sleep that was not theirs to handle).
pub fn put_back(mask: u64) {
    PENDING.fetch_or(mask, Ordering::SeqCst);
}

/// Whether a guest-visible signal or a pause request waits for the vCPU loop.
pub fn attention() -> bool {
    attention_without_pause() || PAUSE_REQUESTED.load(Ordering::SeqCst)
}

/// Whether a guest-visible signal or a control connection waits for the vCPU loop.
pub fn attention_without_pause() -> bool {
    PENDING.load(Ordering::SeqCst) != 0 || CONTROL.load(Ordering::SeqCst)
}

/// Whether a pause was requested and not yet resumed.
pub fn pause_requested() -> bool {
    PAUSE_REQUESTED.load(Ordering::SeqCst)
}

/// Asks for a pause (`true`) or ends one (a control request, as the pause signals do).
pub fn request_pause(pause: bool) {
    PAUSE_REQUESTED.store(pause, Ordering::SeqCst);
}

/// Takes the note that a control connection waits.
pub fn take_control() -> bool {
    CONTROL.swap(false, Ordering::SeqCst)
}

/// What was pending in the monitor when it forked (see [`forget_inherited`]).
#[derive(Clone, Copy, Debug)]
pub struct Inherited {
    pending: u64,
    pause: bool,
}

/// Notes what is pending, right before a fork.
pub fn snapshot() -> Inherited {
    Inherited {
        pending: PENDING.load(Ordering::SeqCst),
        pause: PAUSE_REQUESTED.load(Ordering::SeqCst),
    }
}

/// In a forked child: forgets what was pending in the parent at fork time (as on Unix, those
/// signals are not the child's), but not what was sent to the child since.
pub fn forget_inherited(inherited: Inherited) {
    PENDING.fetch_and(!inherited.pending, Ordering::SeqCst);
    // Connections on the parent's socket are the parent's.
    CONTROL.store(false, Ordering::SeqCst);
    if inherited.pause {
        PAUSE_REQUESTED.store(false, Ordering::SeqCst);
    }
}

/// The monitor's signals held back (blocked) until dropped: they stay pending in the kernel and
/// are handled right after. Used around a fork, so that a signal sent to a child whose monitor is
/// still building its VM does not interrupt those ioctls (EINTR) but waits for the vCPU loop.
pub struct Held {
    old: SigSet,
}

/// Holds the monitor's signals back.
pub fn hold() -> Held {
    Held {
        old: SigSet::of(&all_signals()).block(),
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.old.set_mask();
    }
}

/// Sleeps until `done()` holds, checked with the monitor's signals blocked and rechecked after
/// each one (`sigsuspend` unblocks them atomically), so none arriving in between is lost.
pub fn sleep_until(done: impl Fn() -> bool) {
    let held = hold();
    while !done() {
        held.old.suspend();
    }
}
