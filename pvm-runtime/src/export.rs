//! What the app exports to the libraries it loads. A static guest image has no dynamic symbol
//! table; instead [`export!`](crate::export!) writes [`Export`] records into the image's
//! `.pvm.exports` section (`pvm_abi::EXPORTS_SECTION`), which the monitor reads when it links a
//! library. The runtime exports its own C-ABI surface: the `mem*` functions (libraries built
//! `-nostdlib` import them), `rust_eh_personality` and `_Unwind_Resume`, the heap (`pvm_alloc`,
//! `pvm_dealloc`, `pvm_realloc`: libraries and the app share one heap), the console
//! (`pvm_write`), `pvm_exit`, `pvm_panic` (a library's panic) and `pvm_poll` (signal handlers
//! and updates after a library's own hypercalls).
use core::alloc::{GlobalAlloc, Layout};

/// One record of the export table: the layout of `pvm_abi::ExportRecord`, with pointers the
/// static link resolves.
#[repr(C)]
pub struct Export {
    name: *const u8,
    name_len: usize,
    addr: *const (),
    sig: u64,
}

const _: () = assert!(size_of::<Export>() == size_of::<pvm_abi::ExportRecord>());

// SAFETY: a record is immutable data: a pointer to a static name and an address, never written.
unsafe impl Sync for Export {}

impl Export {
    /// The record for `name` at `addr`.
    pub const fn new(name: &'static str, addr: *const ()) -> Export {
        Export {
            name: name.as_ptr(),
            name_len: name.len(),
            addr,
            sig: 0,
        }
    }
}

/// Exports functions (or statics) of the app to the libraries it loads, under their own names:
/// `pvm::export!(on_request, stats);`. Export `extern "C"` functions with `#[repr(C)]` types:
/// that is the only ABI a library and the app are sure to share.
#[macro_export]
macro_rules! export {
    ($($name:ident),* $(,)?) => {
        $(
            const _: () = {
                #[link_section = ".pvm.exports"]
                #[used]
                static EXPORT: $crate::export::Export =
                    $crate::export::Export::new(stringify!($name), $name as *const ());
            };
        )*
    };
}

/// Allocates `size` bytes aligned to `align` from the app's heap (null on failure).
///
/// # Safety
/// As `GlobalAlloc::alloc`: `size` non-zero, `align` a power of two.
#[no_mangle]
pub unsafe extern "C" fn pvm_alloc(size: usize, align: usize) -> *mut u8 {
    match Layout::from_size_align(size, align) {
        // SAFETY: as the caller promised.
        Ok(layout) => unsafe { crate::rt::heap().alloc(layout) },
        Err(_) => core::ptr::null_mut(),
    }
}

/// Frees what [`pvm_alloc`] gave.
///
/// # Safety
/// As `GlobalAlloc::dealloc`: `ptr` from `pvm_alloc` with this `size` and `align`.
#[no_mangle]
pub unsafe extern "C" fn pvm_dealloc(ptr: *mut u8, size: usize, align: usize) {
    if let Ok(layout) = Layout::from_size_align(size, align) {
        // SAFETY: as the caller promised.
        unsafe { crate::rt::heap().dealloc(ptr, layout) }
    }
}

/// Resizes what [`pvm_alloc`] gave (null on failure, the old block then untouched).
///
/// # Safety
/// As `GlobalAlloc::realloc`.
#[no_mangle]
pub unsafe extern "C" fn pvm_realloc(ptr: *mut u8, size: usize, align: usize, new_size: usize) -> *mut u8 {
    match Layout::from_size_align(size, align) {
        // SAFETY: as the caller promised.
        Ok(layout) => unsafe { crate::rt::heap().realloc(ptr, layout, new_size) },
        Err(_) => core::ptr::null_mut(),
    }
}

/// Writes `len` bytes at `buf` to the pVM's stdout (`fd` 1) or stderr (2), line-buffered as the
/// app's own output; returns `len` or a negated errno.
///
/// # Safety
/// `buf` valid for `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn pvm_write(fd: u64, buf: *const u8, len: usize) -> i64 {
    // SAFETY: as the caller promised.
    let bytes = unsafe { core::slice::from_raw_parts(buf, len) };
    crate::console::write_bytes(fd, bytes)
}

/// Ends the pVM with `code` (the console flushed first).
#[no_mangle]
pub extern "C" fn pvm_exit(code: i32) -> ! {
    crate::exit(code)
}

/// A library's panic: reported like the app's (exit status 101), except in a library's update
/// hook, where it rolls the update back instead (see `pvm::dl`).
///
/// # Safety
/// `msg` valid for `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn pvm_panic(msg: *const u8, len: usize) -> ! {
    // SAFETY: as the caller promised.
    let bytes = unsafe { core::slice::from_raw_parts(msg, len) };
    let text = core::str::from_utf8(bytes).unwrap_or("(not UTF-8)");
    crate::console::print_panic(format_args!("library panicked at {text}\n"));
    crate::dl::escape_hook_on_panic();
    crate::hypercall::exit(101)
}

crate::export!(
    memcpy,
    memmove,
    memset,
    memcmp,
    bcmp,
    rust_eh_personality,
    pvm_alloc,
    pvm_dealloc,
    pvm_realloc,
    pvm_write,
    pvm_exit,
    pvm_panic,
    pvm_poll,
    _Unwind_Resume,
);

use crate::mem::{bcmp, memcmp, memcpy, memmove, memset};
use crate::rt::{_Unwind_Resume, rust_eh_personality};
use crate::signal::pvm_poll;
