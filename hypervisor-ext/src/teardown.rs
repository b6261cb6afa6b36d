//! Exiting the monitor process without making its waiter wait for the VM's teardown.
//!
//! Destroying a KVM VM and its guest memory takes ~0.8 ms here, and the kernel does it in the
//! exiting process before its parent's `wait` returns. [`exit_deferring_teardown`] first clones
//! a helper that shares the monitor's address space and file table (`CLONE_VM | CLONE_FILES`),
//! so the monitor's exit drops no last reference: the parent learns the exit status at once, and
//! the helper, which waits on a pidfd for the monitor to be gone, does the teardown when it
//! exits itself (reparented to the subreaper or init, which reaps it).
use std::io::Write;
use std::os::fd::{AsRawFd, IntoRawFd, RawFd};

use crate::sys;

const HELPER_STACK: usize = 16 * 1024;

extern "C" fn teardown_helper(arg: *mut libc::c_void) -> libc::c_int {
    // Raw system calls only: this runs on a bare stack in a process that shares the monitor's
    // memory but is no thread of its runtime (its thread pointer is the monitor thread's), so
    // it must not touch libc or Rust state (errno, locks, the allocator): `sys::wait_gone_raw`
    // is one inline `ppoll`.
    // SAFETY: the pidfd the monitor opened and left open for this helper, which shares its
    // file table: open until the helper exits.
    unsafe { sys::wait_gone_raw(arg as usize as RawFd) };
    0
}

/// Flushes stdout/stderr and exits the process with `status`, leaving the VM teardown to a
/// helper process. Call only from a single-threaded monitor, with nothing left to do.
pub fn exit_deferring_teardown(status: i32) -> ! {
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // A warm run's `pvmctl run` learns the status now (before the helper shares our files).
    crate::pool::report_exit(status);
    if let Ok(pidfd) = sys::pidfd_open(sys::getpid()) {
        // The stack is leaked on purpose: the helper uses it after this process is gone.
        let stack: &'static mut [u8] = Box::leak(vec![0u8; HELPER_STACK].into_boxed_slice());
        let fd = pidfd.as_raw_fd();
        // SAFETY: the helper runs `teardown_helper` with raw system calls only on its own
        // leaked stack, and touches no Rust state.
        if unsafe { sys::clone_helper(teardown_helper, stack, fd as usize) }.is_ok() {
            // The helper shares our file table and polls the pidfd: keep it open.
            let _ = pidfd.into_raw_fd();
            // The shared file table keeps stdio open in the helper: close it now, so readers of
            // our output see end-of-file when we exit, not when the teardown is done.
            sys::close_stdio();
        }
    }
    sys::exit_now(status)
}
