//! Line-buffered console: bytes collect in a buffer per stream and leave in one hypercall per
//! line (or per full buffer), so printing costs no exit per character. A library prints through
//! the app's buffers (`pvm_write`), so lines of both never mix.
#[cfg(not(feature = "library"))]
pub use app::*;
#[cfg(feature = "library")]
pub use library::*;

#[cfg(not(feature = "library"))]
mod app {
    use core::fmt::{self, Write};

    use spinning_top::Spinlock;

    use crate::hypercall::{self, fd};

    const BUF_SIZE: usize = 4096;

    struct Stream {
        fd: u64,
        len: usize,
        buf: [u8; BUF_SIZE],
    }

    impl Stream {
        const fn new(fd: u64) -> Self {
            Stream {
                fd,
                len: 0,
                buf: [0; BUF_SIZE],
            }
        }

        fn flush(&mut self) {
            let mut done = 0;
            while done < self.len {
                let n = hypercall::write(self.fd, &self.buf[done..self.len]);
                if n <= 0 {
                    // The console is gone or refused the bytes: drop them rather than spin.
                    break;
                }
                done += n as usize;
            }
            self.len = 0;
        }
    }

    impl Stream {
        fn write_bytes(&mut self, bytes: &[u8]) {
            for &b in bytes {
                if self.len == BUF_SIZE {
                    self.flush();
                }
                self.buf[self.len] = b;
                self.len += 1;
                if b == b'\n' {
                    self.flush();
                }
            }
        }
    }

    impl Write for Stream {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            self.write_bytes(s.as_bytes());
            Ok(())
        }
    }

    static STDOUT: Spinlock<Stream> = Spinlock::new(Stream::new(fd::STDOUT));
    static STDERR: Spinlock<Stream> = Spinlock::new(Stream::new(fd::STDERR));

    #[doc(hidden)]
    pub fn _print(stream: u64, args: fmt::Arguments<'_>) {
        if stream == fd::STDERR {
            // Keep the order of interleaved stdout and stderr output.
            flush();
            let mut err = STDERR.lock();
            let _ = err.write_fmt(args);
            err.flush();
        } else {
            let _ = STDOUT.lock().write_fmt(args);
        }
    }

    /// Writes raw bytes to console stream `stream` (for libraries, through `pvm_write`); returns
    /// their number, or `-EINVAL` for a stream that is not stdout or stderr.
    pub(crate) fn write_bytes(stream: u64, bytes: &[u8]) -> i64 {
        match stream {
            fd::STDOUT => STDOUT.lock().write_bytes(bytes),
            fd::STDERR => {
                flush();
                let mut err = STDERR.lock();
                err.write_bytes(bytes);
                err.flush();
            }
            _ => return -hypercall::errno::EINVAL,
        }
        bytes.len() as i64
    }

    /// Writes out any buffered console output.
    pub fn flush() {
        STDOUT.lock().flush();
        STDERR.lock().flush();
    }

    /// Prints from the panic handler: never waits for a lock a panicking print may hold.
    pub(crate) fn print_panic(args: fmt::Arguments<'_>) {
        if let Some(mut out) = STDOUT.try_lock() {
            out.flush();
        }
        let mut line = Stream::new(fd::STDERR);
        let _ = line.write_fmt(args);
        line.flush();
    }
}

#[cfg(feature = "library")]
mod library {
    use core::fmt::{self, Write};

    extern "C" {
        fn pvm_write(fd: u64, buf: *const u8, len: usize) -> i64;
    }

    struct AppConsole(u64);

    impl Write for AppConsole {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            // SAFETY: `pvm_write` is the app runtime's export; `s` is valid for its length.
            unsafe { pvm_write(self.0, s.as_ptr(), s.len()) };
            Ok(())
        }
    }

    #[doc(hidden)]
    pub fn _print(stream: u64, args: fmt::Arguments<'_>) {
        let _ = AppConsole(stream).write_fmt(args);
    }

    /// The app's runtime buffers and flushes the console: nothing to do here.
    pub fn flush() {}
}
