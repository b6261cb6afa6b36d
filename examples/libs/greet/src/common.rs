// The functions of libgreet, shared by its versions (`include!`d by greet and greet2).

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::ffi::c_void;
use core::sync::atomic::{AtomicPtr, AtomicU64, Ordering};


/// What survives an update: on the app's heap, so the next version can adopt it.
#[repr(C)]
pub struct State {
    /// `greet_add` calls so far.
    pub calls: AtomicU64,
}

static STATE: AtomicPtr<State> = AtomicPtr::new(core::ptr::null_mut());

fn state() -> &'static State {
    let mut p = STATE.load(Ordering::Acquire);
    if p.is_null() {
        p = Box::into_raw(Box::new(State {
            calls: AtomicU64::new(0),
        }));
        STATE.store(p, Ordering::Release);
    }
    // SAFETY: set once to a leaked Box (ours, or the previous version's, adopted).
    unsafe { &*p }
}

/// Hands the state to the next version (and keeps using it: saving changes nothing).
#[no_mangle]
pub extern "C" fn pvm_state_save() -> *mut c_void {
    (state() as *const State).cast_mut().cast()
}

/// Adopts the previous version's state.
#[no_mangle]
pub extern "C" fn pvm_state_restore(saved: *mut c_void, _from: *const u8) -> i32 {
    if !saved.is_null() {
        STATE.store(saved.cast(), Ordering::Release);
    }
    0
}

extern "C" {
    /// Exported by the app (`pvm::export!`).
    fn app_double(x: u64) -> u64;
}

/// `a + b`.
#[no_mangle]
pub extern "C" fn greet_add(a: u64, b: u64) -> u64 {
    state().calls.fetch_add(1, Ordering::Relaxed);
    a + b
}

/// How many times `greet_add` ran (state in the library's data part).
#[no_mangle]
pub extern "C" fn greet_calls() -> u64 {
    state().calls.load(Ordering::Relaxed)
}

/// Prints a greeting; returns the sum of `1..=n` computed in a vector on the app's heap.
#[no_mangle]
pub extern "C" fn greet_hello(n: u64) -> u64 {
    let v: Vec<u64> = (1..=n).collect();
    pvm::println!(
        "hello from libgreet {}: {} numbers",
        env!("CARGO_PKG_VERSION"),
        v.len()
    );
    v.iter().sum()
}

/// The app's `app_double(x)`, called from the library.
#[no_mangle]
pub extern "C" fn greet_via_app(x: u64) -> u64 {
    // SAFETY: the app exports `app_double` with this signature.
    unsafe { app_double(x) }
}

/// Sends `n` on the family's message queue `greet.q`, opened here (its key is this library's
/// read-only data: the monitor reads it there): 0, or -1.
#[no_mangle]
pub extern "C" fn greet_queue(n: u64) -> i64 {
    match pvm::ipc::MessageQueue::open("greet.q", 4) {
        Ok(q) if q.send(&n.to_le_bytes()).is_ok() => 0,
        _ => -1,
    }
}

/// Keeps a call in flight for `ms` milliseconds (the library is busy: no safe point for an
/// update meanwhile).
#[no_mangle]
pub extern "C" fn greet_busy(ms: u64) {
    let start = pvm::time::Instant::now();
    while start.elapsed().as_millis() < u128::from(ms) {
        core::hint::spin_loop();
    }
}

/// Panics (a library's panic ends the pVM like the app's).
#[no_mangle]
pub extern "C" fn greet_panic() {
    panic!("greet was asked to panic");
}
