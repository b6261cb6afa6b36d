//! Pipes between pVMs of a family: a byte stream through a ring in memory both pVMs map.
//!
//! A pipe made before a fork is inherited, both ends, as on Unix; drop the end a side does not
//! use. Reads see end-of-file once every writer is closed or its pVM gone; writes fail with
//! `BrokenPipe` once every reader is (noticed when the ring is full). Data moves without exits:
//! a side that finds the ring empty (or full) spins for a bounded time ([`set_spin`]), then
//! sleeps in its monitor, and the other side wakes it only then.
use core::sync::atomic::{AtomicU64, Ordering};

use pvm_abi::{errno, Hypercall, IpcWaitArgs, PipeArgs};
use pvm_ipc::{Pipe, RingError, PIPE_DEFAULT_CAPACITY};

use crate::hypercall::raw;

/// Why an IPC call failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// Non-blocking, and it would block.
    WouldBlock,
    /// Every reader of the pipe is gone.
    BrokenPipe,
    /// A signal handler ran while waiting.
    Interrupted,
    /// The pipe ended (every writer gone) before `read_exact` was satisfied.
    UnexpectedEof,
    /// The ring holds values no correct peer writes: a pVM scribbled over it.
    Corrupted,
    /// No IPC region left (or a bad capacity).
    Unavailable,
    /// The monitor refused the call (a negated errno).
    Host(i64),
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::WouldBlock => f.write_str("operation would block"),
            Error::BrokenPipe => f.write_str("broken pipe"),
            Error::Interrupted => f.write_str("interrupted by a signal"),
            Error::UnexpectedEof => f.write_str("unexpected end of file"),
            Error::Corrupted => f.write_str("channel corrupted by a peer"),
            Error::Unavailable => f.write_str("no IPC region available"),
            Error::Host(e) => write!(f, "monitor error {e}"),
        }
    }
}

impl From<RingError> for Error {
    fn from(_: RingError) -> Self {
        Error::Corrupted
    }
}

/// TSC cycles a waiter spins before it sleeps in the monitor.
static SPIN_CYCLES: AtomicU64 = AtomicU64::new(DEFAULT_SPIN_CYCLES);
/// Default spin: about 100 us on a 2-3 GHz machine, far above a peer's response time when it
/// is running, small enough not to burn a core for an idle peer.
pub const DEFAULT_SPIN_CYCLES: u64 = 250_000;

/// Sets how long (in TSC cycles) a waiting reader or writer spins before it sleeps in its
/// monitor; 0: never spin.
pub fn set_spin(cycles: u64) {
    SPIN_CYCLES.store(cycles, Ordering::Relaxed);
}

fn rdtsc() -> u64 {
    // SAFETY: rdtsc has no memory effects and is allowed at CPL3 (CR4.TSD is clear).
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Sleeps in the monitor until the peer of `handle` acts: Ok(true) woken, Ok(false) peer gone.
fn wait(handle: u64) -> Result<bool, Error> {
    let mut args = IpcWaitArgs { handle, result: 0 };
    raw(Hypercall::IpcWait, &mut args as *mut IpcWaitArgs as u64);
    match -args.result {
        0 => Ok(true),
        errno::EPIPE => Ok(false),
        errno::EINTR => {
            crate::signal::dispatch();
            Err(Error::Interrupted)
        }
        _ => Err(Error::Host(args.result)),
    }
}

fn notify(handle: u64) {
    raw(Hypercall::IpcNotify, handle);
}

/// Creates a pipe with the default capacity (64 KiB).
pub fn pipe() -> Result<(Reader, Writer), Error> {
    pipe_with_capacity(PIPE_DEFAULT_CAPACITY)
}

/// Creates a pipe whose ring holds `capacity` bytes (a power of two, 4 KiB to 1 MiB).
pub fn pipe_with_capacity(capacity: u64) -> Result<(Reader, Writer), Error> {
    let mut args = PipeArgs {
        capacity,
        ..Default::default()
    };
    raw(Hypercall::PipeCreate, &mut args as *mut PipeArgs as u64);
    crate::signal::dispatch();
    if args.result < 0 {
        return Err(Error::Unavailable);
    }
    let base = args.ring as *mut u8;
    // SAFETY: the monitor mapped `PIPE_DATA_OFFSET + capacity` bytes at `ring` in the IPC
    // window, and keeps them mapped while a handle of this pVM uses the region.
    let (r, w) = unsafe { (Pipe::attach(base, capacity), Pipe::attach(base, capacity)) };
    Ok((
        Reader {
            handle: args.read_handle,
            ring: r,
            nonblocking: false,
        },
        Writer {
            handle: args.write_handle,
            ring: w,
            nonblocking: false,
        },
    ))
}

/// Spins until `ready()` or the spin budget is spent; returns whether it became ready.
fn spin(ready: impl Fn() -> Result<bool, Error>) -> Result<bool, Error> {
    let budget = SPIN_CYCLES.load(Ordering::Relaxed);
    if budget == 0 {
        return ready();
    }
    let start = rdtsc();
    loop {
        if ready()? {
            return Ok(true);
        }
        if rdtsc().wrapping_sub(start) > budget {
            return Ok(false);
        }
        core::hint::spin_loop();
    }
}

/// The read end of a pipe.
pub struct Reader {
    handle: u64,
    ring: Pipe,
    nonblocking: bool,
}

impl Reader {
    /// With `true`, reads on an empty pipe fail with [`Error::WouldBlock`] instead of waiting.
    pub fn set_nonblocking(&mut self, nonblocking: bool) {
        self.nonblocking = nonblocking;
    }

    /// Reads what is there (waiting for at least one byte); 0 means end of file.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let n = self.ring.read(buf)?;
            if n > 0 {
                if self.ring.header().writer_sleeping.load(Ordering::SeqCst) != 0 {
                    notify(self.handle);
                }
                return Ok(n);
            }
            if self.nonblocking {
                return Err(Error::WouldBlock);
            }
            if spin(|| Ok(self.ring.readable()? > 0))? {
                continue;
            }
            let header = self.ring.header();
            header.reader_sleeping.store(1, Ordering::SeqCst);
            if self.ring.readable()? > 0 {
                header.reader_sleeping.store(0, Ordering::SeqCst);
                continue;
            }
            let woken = wait(self.handle);
            header.reader_sleeping.store(0, Ordering::SeqCst);
            if !woken? {
                // Every writer is gone: what they wrote before is still there.
                return Ok(self.ring.read(buf)?);
            }
        }
    }

    /// Reads exactly `buf.len()` bytes.
    pub fn read_exact(&mut self, mut buf: &mut [u8]) -> Result<(), Error> {
        while !buf.is_empty() {
            match self.read(buf)? {
                0 => return Err(Error::UnexpectedEof),
                n => buf = &mut buf[n..],
            }
        }
        Ok(())
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        raw(Hypercall::IpcClose, self.handle);
    }
}

/// The write end of a pipe.
pub struct Writer {
    handle: u64,
    ring: Pipe,
    nonblocking: bool,
}

impl Writer {
    /// With `true`, writes to a full pipe fail with [`Error::WouldBlock`] instead of waiting.
    pub fn set_nonblocking(&mut self, nonblocking: bool) {
        self.nonblocking = nonblocking;
    }

    /// Writes what fits (waiting for room for at least one byte); returns how much.
    pub fn write(&mut self, buf: &[u8]) -> Result<usize, Error> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let n = self.ring.write(buf)?;
            if n > 0 {
                if self.ring.header().reader_sleeping.load(Ordering::SeqCst) != 0 {
                    notify(self.handle);
                }
                return Ok(n);
            }
            if self.nonblocking {
                return Err(Error::WouldBlock);
            }
            if spin(|| Ok(self.ring.writable()? > 0))? {
                continue;
            }
            let header = self.ring.header();
            header.writer_sleeping.store(1, Ordering::SeqCst);
            if self.ring.writable()? > 0 {
                header.writer_sleeping.store(0, Ordering::SeqCst);
                continue;
            }
            let woken = wait(self.handle);
            header.writer_sleeping.store(0, Ordering::SeqCst);
            if !woken? {
                return Err(Error::BrokenPipe);
            }
        }
    }

    /// Writes all of `buf`.
    pub fn write_all(&mut self, mut buf: &[u8]) -> Result<(), Error> {
        while !buf.is_empty() {
            let n = self.write(buf)?;
            buf = &buf[n..];
        }
        Ok(())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        raw(Hypercall::IpcClose, self.handle);
    }
}
