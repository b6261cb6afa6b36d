//! A small guest library: arithmetic, a counter in its own data, output through the app's
//! console, an allocation on the app's heap, and a call back into the app.
#![no_std]

extern crate alloc;

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

pvm::library!();

static CALLS: AtomicU64 = AtomicU64::new(0);

extern "C" {
    /// Exported by the app (`pvm::export!`).
    fn app_double(x: u64) -> u64;
}

/// `a + b`.
#[no_mangle]
pub extern "C" fn greet_add(a: u64, b: u64) -> u64 {
    CALLS.fetch_add(1, Ordering::Relaxed);
    a + b
}

/// How many times `greet_add` ran (state in the library's data part).
#[no_mangle]
pub extern "C" fn greet_calls() -> u64 {
    CALLS.load(Ordering::Relaxed)
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

/// Panics (a library's panic ends the pVM like the app's).
#[no_mangle]
pub extern "C" fn greet_panic() {
    panic!("greet was asked to panic");
}
