//! `memcpy`, `memmove`, `memset`, `memcmp`, `bcmp`: the freestanding target's compiler_builtins
//! does not export them. Written with string instructions: a Rust loop could be compiled back
//! into a call to the very function it implements.
use core::arch::asm;

/// # Safety
/// As C's `memcpy`: `dest` and `src` valid for `n` bytes and not overlapping.
#[no_mangle]
pub unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees both ranges; DF is clear per the SysV ABI.
    unsafe {
        asm!("rep movsb", inout("rcx") n => _, inout("rdi") dest => _, inout("rsi") src => _,
             options(nostack, preserves_flags));
    }
    dest
}

/// # Safety
/// As C's `memmove`: `dest` and `src` valid for `n` bytes; they may overlap.
#[no_mangle]
pub unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dest as usize).wrapping_sub(src as usize) >= n {
        // dest is below src or the ranges are disjoint: copying forwards is safe.
        // SAFETY: forwarded caller guarantee.
        return unsafe { memcpy(dest, src, n) };
    }
    // SAFETY: dest overlaps the tail of src: copy backwards from the last byte, then restore DF.
    unsafe {
        asm!("std", "rep movsb", "cld",
             inout("rcx") n => _, inout("rdi") dest.add(n - 1) => _, inout("rsi") src.add(n - 1) => _,
             options(nostack));
    }
    dest
}

/// # Safety
/// As C's `memset`: `dest` valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memset(dest: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees the range.
    unsafe {
        asm!("rep stosb", inout("rcx") n => _, inout("rdi") dest => _, in("al") c as u8,
             options(nostack, preserves_flags));
    }
    dest
}

/// # Safety
/// As C's `memcmp`: both pointers valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    if n == 0 {
        return 0;
    }
    let (end_a, end_b): (*const u8, *const u8);
    // SAFETY: the caller guarantees both ranges. `repe cmpsb` stops after the first differing
    // byte or after n bytes; either way the last compared pair sits right before rsi/rdi.
    unsafe {
        asm!("repe cmpsb", inout("rcx") n => _, inout("rsi") a => end_a, inout("rdi") b => end_b,
             options(nostack, readonly));
        i32::from(*end_a.sub(1)) - i32::from(*end_b.sub(1))
    }
}

/// # Safety
/// As C's `bcmp`: both pointers valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract.
    unsafe { memcmp(a, b, n) }
}
