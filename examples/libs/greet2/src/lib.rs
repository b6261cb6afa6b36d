//! `greet` 2.0.0: the same functions (the counter adopted from 1.x), and one more,
//! `greet_two`.
#![no_std]

extern crate alloc;

pvm::library!();

include!("../../greet/src/common.rs");

/// New in 2.0.0.
#[no_mangle]
pub extern "C" fn greet_two() -> u64 {
    2
}
