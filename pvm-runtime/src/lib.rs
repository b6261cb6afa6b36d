//! `pvm`: the guest runtime of a pVM.
//!
//! A pVM app is a `#![no_std] #![no_main]` Rust binary that links this crate and names its main
//! function with [`main!`]. The runtime provides the entry point, a heap (`alloc` works), a
//! line-buffered console ([`println!`], [`eprintln!`]), [`exit`], arguments ([`args`]) and a panic
//! handler that prints the message and exits with status 101.
//!
//! A pVM *library* (a `#![no_std]` cdylib loaded at run time with [`dl`]) links this crate with
//! the `library` feature: it then uses the app's heap, console and exit (imported when the
//! library is linked), and has the console macros, [`ipc`], [`time`] and [`library!`], but no
//! entry point, processes, signal handlers or libraries of its own.
//!
//! ```ignore
//! #![no_std]
//! #![no_main]
//! pvm::main!(main);
//! fn main() {
//!     pvm::println!("hello from pVM {}", pvm::id());
//! }
//! ```
#![no_std]

extern crate alloc;

mod console;
#[cfg(not(feature = "library"))]
pub mod dl;
#[cfg(not(feature = "library"))]
mod error;
#[cfg(not(feature = "library"))]
#[doc(hidden)]
pub mod export;
pub mod hypercall;
pub mod ipc;
#[cfg(feature = "library")]
#[doc(hidden)]
pub mod librt;
#[cfg(not(feature = "library"))]
mod mem;
pub mod net;
#[cfg(not(feature = "library"))]
pub mod process;
#[cfg(not(feature = "library"))]
#[doc(hidden)]
pub mod rt;
pub mod signal;
pub mod time;

pub use console::{_print, flush};
#[cfg(not(feature = "library"))]
pub use error::Error;
#[cfg(feature = "library")]
pub use librt::exit;
#[cfg(not(feature = "library"))]
pub use process::{family_id, fork, id, parent_id, pause, wait_any, Child, ExitStatus, Fork};
#[cfg(not(feature = "library"))]
pub use rt::{args, exit, mem_size, Termination};

/// Declares the app's main function: `pvm::main!(main);`.
#[cfg(not(feature = "library"))]
///
/// `main` may return `()` (exit status 0), an `i32` (the exit status) or a `Result<(), E>` with
/// `E: Display`, e.g. [`pvm::Error`](Error), into which every `pvm` error converts (an `Err` is
/// printed to the console's stderr and gives exit status 1).
#[macro_export]
macro_rules! main {
    ($main:path) => {
        #[doc(hidden)]
        #[no_mangle]
        pub fn __pvm_main() -> i32 {
            $crate::Termination::report($main())
        }
    };
}

/// Prints to the pVM's standard output. Output is line-buffered: a line costs one hypercall.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::_print($crate::hypercall::fd::STDOUT, format_args!($($arg)*)) };
}

/// Prints a line to the pVM's standard output.
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => { $crate::_print($crate::hypercall::fd::STDOUT, format_args!("{}\n", format_args!($($arg)*))) };
}

/// Prints to the pVM's standard error.
#[macro_export]
macro_rules! eprint {
    ($($arg:tt)*) => { $crate::_print($crate::hypercall::fd::STDERR, format_args!($($arg)*)) };
}

/// Prints a line to the pVM's standard error.
#[macro_export]
macro_rules! eprintln {
    () => { $crate::eprint!("\n") };
    ($($arg:tt)*) => { $crate::_print($crate::hypercall::fd::STDERR, format_args!("{}\n", format_args!($($arg)*))) };
}
