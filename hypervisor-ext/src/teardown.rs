//! Exiting the monitor process without making its waiter wait for the VM's teardown.
//!
//! Destroying a KVM VM and its guest memory takes ~0.8 ms here, and the kernel does it in the
//! exiting process before its parent's `wait` returns. [`exit_deferring_teardown`] first clones
//! a helper that shares the monitor's address space and file table (`CLONE_VM | CLONE_FILES`),
//! so the monitor's exit drops no last reference: the parent learns the exit status at once, and
//! the helper, which waits on a pidfd for the monitor to be gone, does the teardown when it
//! exits itself (reparented to the subreaper or init, which reaps it).
use std::io::Write;

const HELPER_STACK: usize = 16 * 1024;

extern "C" fn teardown_helper(arg: *mut libc::c_void) -> libc::c_int {
    let mut pfd = libc::pollfd {
        fd: arg as usize as libc::c_int,
        events: libc::POLLIN,
        revents: 0,
    };
    // Raw syscalls only: this runs on a bare stack in a process sharing the monitor's memory.
    loop {
        // SAFETY: polls one valid pollfd on this stack.
        let r = unsafe { libc::syscall(libc::SYS_poll, &mut pfd as *mut libc::pollfd, 1, -1) };
        if r >= 0 {
            break;
        }
    }
    0
}

/// Flushes stdout/stderr and exits the process with `status`, leaving the VM teardown to a
/// helper process. Call only from a single-threaded monitor, with nothing left to do.
pub fn exit_deferring_teardown(status: i32) -> ! {
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: pidfd_open on our own pid has no memory-safety preconditions.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) } as libc::c_int;
    if pidfd >= 0 {
        // The stack is leaked on purpose: the helper uses it after this process is gone.
        let stack: &'static mut [u8] = Box::leak(vec![0u8; HELPER_STACK].into_boxed_slice());
        // SAFETY: the stack range is valid; rounding down keeps it inside and 16-byte aligned.
        let top = unsafe { stack.as_mut_ptr().add(HELPER_STACK) }.map_addr(|a| a & !15);
        // SAFETY: the helper runs `teardown_helper` on its own stack with raw syscalls only and
        // touches no Rust state; exit signal 0 (its reaper is whoever inherits it).
        let pid = unsafe {
            libc::clone(
                teardown_helper,
                top.cast(),
                libc::CLONE_VM | libc::CLONE_FILES,
                pidfd as usize as *mut libc::c_void,
            )
        };
        if pid > 0 {
            // The shared file table keeps stdio open in the helper: close it now, so readers of
            // our output see end-of-file when we exit, not when the teardown is done.
            for fd in 0..=2 {
                // SAFETY: closing the standard descriptors right before exit.
                unsafe { libc::close(fd) };
            }
        }
    }
    // SAFETY: _exit ends the process without running destructors; nothing is left to do.
    unsafe { libc::_exit(status) }
}
