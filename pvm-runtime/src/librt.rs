//! The runtime of a pVM library (the `library` feature): the app's heap, console and exit,
//! imported (the monitor resolves them against the app's exports when it links the library),
//! a panic handler that reports through the app, and [`library!`](crate::library!).
use core::alloc::{GlobalAlloc, Layout};
use core::fmt::Write;

extern "C" {
    fn pvm_alloc(size: usize, align: usize) -> *mut u8;
    fn pvm_dealloc(ptr: *mut u8, size: usize, align: usize);
    fn pvm_realloc(ptr: *mut u8, size: usize, align: usize, new_size: usize) -> *mut u8;
    fn pvm_exit(code: i32) -> !;
    fn pvm_panic(msg: *const u8, len: usize) -> !;
}

/// The app's heap: a library's allocations and the app's are one heap, so a `Box` may cross
/// between them and a library's state outlives the library's version (see `pvm::dl`).
struct AppHeap;

// SAFETY: forwards to the app's allocator, which upholds GlobalAlloc's contract.
unsafe impl GlobalAlloc for AppHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as GlobalAlloc::alloc's caller promised.
        unsafe { pvm_alloc(layout.size(), layout.align()) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as GlobalAlloc::dealloc's caller promised.
        unsafe { pvm_dealloc(ptr, layout.size(), layout.align()) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as GlobalAlloc::realloc's caller promised.
        unsafe { pvm_realloc(ptr, layout.size(), layout.align(), new_size) }
    }
}

#[global_allocator]
static HEAP: AppHeap = AppHeap;

/// Ends the pVM with `code` (the app's console flushed first).
pub fn exit(code: i32) -> ! {
    // SAFETY: the app runtime's export.
    unsafe { pvm_exit(code) }
}

/// A fixed buffer for the panic message (a panic must not allocate).
struct Message {
    buf: [u8; 512],
    len: usize,
}

impl Write for Message {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let mut m = Message {
        buf: [0; 512],
        len: 0,
    };
    let _ = match info.location() {
        Some(loc) => write!(
            m,
            "{}:{}:{}: {}",
            loc.file(),
            loc.line(),
            loc.column(),
            info.message()
        ),
        None => write!(m, "{}", info.message()),
    };
    // SAFETY: the app runtime's export; the message is valid for its length.
    unsafe { pvm_panic(m.buf.as_ptr(), m.len) }
}

/// The bytes of a NUL-terminated version string (for [`library!`](crate::library!)).
pub const fn version_bytes<const N: usize>(version: &str) -> [u8; N] {
    let mut out = [0u8; N];
    let bytes = version.as_bytes();
    let mut i = 0;
    while i < bytes.len() && i + 1 < N {
        out[i] = bytes[i];
        i += 1;
    }
    out
}

/// Declares the library's version (its crate's by default), which `pvmctl lib list` shows and
/// `pvmctl lib update` compares: `pvm::library!();` or `pvm::library!("2.1.0");`.
#[macro_export]
macro_rules! library {
    () => {
        $crate::library!(env!("CARGO_PKG_VERSION"));
    };
    ($version:expr) => {
        #[no_mangle]
        #[used]
        #[doc(hidden)]
        pub static pvm_library_version: [u8; $version.len() + 1] =
            $crate::librt::version_bytes::<{ $version.len() + 1 }>($version);
    };
}
