//! Raw hypercalls: one 8-byte store into the hypercall window (see `pvm_abi`).
pub use pvm_abi::{errno, fd, Hypercall};
use pvm_abi::{ExitArgs, WriteArgs};

/// Makes hypercall `nr` with `arg` (usually the address of its argument struct).
#[inline(always)]
pub fn raw(nr: Hypercall, arg: u64) {
    // SAFETY: the store targets the hypercall window, which the monitor maps in every pVM and
    // which traps to the monitor instead of touching memory. The asm is not `nomem`: the monitor
    // reads IN fields and writes OUT fields of the struct `arg` points to, so the compiler must
    // treat the call as reading and writing memory.
    unsafe {
        core::arch::asm!(
            "mov qword ptr [{addr}], {arg}",
            addr = in(reg) nr.address(),
            arg = in(reg) arg,
            options(nostack, preserves_flags),
        );
    }
}

/// Writes `buf` to console stream `fd`; returns the bytes written or a negated errno.
pub fn write(fd: u64, buf: &[u8]) -> i64 {
    let mut args = WriteArgs {
        fd,
        buf: buf.as_ptr() as u64,
        len: buf.len() as u64,
        result: 0,
    };
    raw(Hypercall::Write, &mut args as *mut WriteArgs as u64);
    args.result
}

/// Terminates the pVM with `code`.
pub fn exit(code: i32) -> ! {
    let args = ExitArgs { code: code as i64 };
    raw(Hypercall::Exit, &args as *const ExitArgs as u64);
    // The monitor never resumes a pVM after Exit; if it did, stop here rather than run on.
    loop {
        core::hint::spin_loop();
    }
}
