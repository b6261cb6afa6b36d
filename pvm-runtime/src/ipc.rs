//! Pipes between pVMs of a family: a byte stream through a ring in memory both pVMs map.
//!
//! A pipe made before a fork is inherited, both ends, as on Unix; drop the end a side does not
//! use. Reads see end-of-file once every writer is closed or its pVM gone; writes fail with
//! `BrokenPipe` once every reader is (noticed when the ring is full). Data moves without exits:
//! a side that finds the ring empty (or full) spins for a bounded time ([`set_spin`]), then
//! sleeps in its monitor, and the other side wakes it only then.
use core::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

use pvm_abi::{errno, mq_side, Hypercall, IpcWaitArgs, MqWaitArgs, NamedArgs, PipeArgs};
use pvm_ipc::{Pipe, Queue, RingError, PIPE_DEFAULT_CAPACITY};

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
    /// No object with that key in this family (and not asked to create it).
    NotFound,
    /// The key belongs to another family: objects never cross families.
    PermissionDenied,
    /// A bad key (1 to 64 bytes of `[A-Za-z0-9._-]`) or geometry.
    Invalid,
    /// The message does not fit the queue's largest message, or the buffer the message.
    TooLarge,
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
            Error::NotFound => f.write_str("no such queue or shared memory in this family"),
            Error::PermissionDenied => f.write_str("permission denied: the key belongs to another family"),
            Error::Invalid => f.write_str("invalid key or size"),
            Error::TooLarge => f.write_str("message too large"),
            Error::Host(e) => write!(f, "monitor error {e}"),
        }
    }
}

impl core::error::Error for Error {}

impl From<RingError> for Error {
    fn from(_: RingError) -> Self {
        Error::Corrupted
    }
}

/// The spin budget in TSC cycles ([`set_spin`]).
pub(crate) fn spin_cycles() -> u64 {
    SPIN_CYCLES.load(Ordering::Relaxed)
}

/// TSC cycles a waiter spins before it sleeps in the monitor.
static SPIN_CYCLES: AtomicU64 = AtomicU64::new(DEFAULT_SPIN_CYCLES);
/// Default spin: about 100 us on a 2-3 GHz machine, far above a peer's response time when it
/// is running, small enough not to burn a core for an idle peer.
pub const DEFAULT_SPIN_CYCLES: u64 = 250_000;

/// How long (in TSC cycles) a waiting reader or writer spins before it sleeps ([`set_spin`]).
pub fn spin_budget() -> u64 {
    spin_cycles()
}

/// Sets how long (in TSC cycles) a waiting reader or writer spins before it sleeps in its
/// monitor; 0: never spin. The default is [`DEFAULT_SPIN_CYCLES`], or 0 when the family runs on
/// one host CPU (`pvmctl run --cpuset-cpus 0`, or a one-CPU host), where spinning only delays
/// the peer.
pub fn set_spin(cycles: u64) {
    SPIN_CYCLES.store(cycles, Ordering::Relaxed);
}

/// Sleeps in the monitor while `word` (this end's futex word) holds `seq`: Ok(true) woken (look
/// again), Ok(false) the peer end is gone.
fn wait(handle: u64, seq: u32) -> Result<bool, Error> {
    let mut args = IpcWaitArgs {
        handle,
        seq: u64::from(seq),
        result: 0,
    };
    raw(Hypercall::IpcWait, &mut args as *mut IpcWaitArgs as u64);
    match -args.result {
        0 => Ok(true),
        errno::EPIPE => Ok(false),
        // Interrupted for a handler (which ran), or only for a library update: look again.
        errno::EINTR if crate::signal::poll() => Err(Error::Interrupted),
        errno::EINTR => Ok(true),
        _ => Err(Error::Host(args.result)),
    }
}

/// Wakes a peer sleeping on `word`: bump it, then one hypercall.
fn wake(handle: u64, word: &AtomicU32) {
    word.fetch_add(1, Ordering::SeqCst);
    raw(Hypercall::IpcNotify, handle);
    crate::signal::dispatch();
}

/// The two pipe ends of a connection the monitor installed: the read end of the ring at `ring`
/// and the write end of the ring `tx_offset` bytes after it, each of `capacity` bytes.
///
/// # Safety
/// The monitor mapped both rings there and keeps them mapped while the handles are open.
pub(crate) unsafe fn ends_at(
    read_handle: u64,
    write_handle: u64,
    ring: u64,
    tx_offset: u64,
    capacity: u64,
) -> (Reader, Writer) {
    let base = ring as *mut u8;
    // SAFETY: as the caller promised.
    let (r, w) = unsafe {
        (
            Pipe::attach(base, capacity),
            Pipe::attach(base.add(tx_offset as usize), capacity),
        )
    };
    (
        Reader {
            handle: read_handle,
            ring: r,
            nonblocking: false,
        },
        Writer {
            handle: write_handle,
            ring: w,
            nonblocking: false,
        },
    )
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

/// How many rounds in a row a blocking call may find its operation failing right after its
/// readiness predicate said "ready" (without sleeping in between) before it reports
/// [`Error::Corrupted`]. The predicates apply the operations' own checks, so with correct
/// peers a failure after "ready" means a peer took the room or the data first, which needs
/// the peer to make progress each time; only a peer rewriting the shared state on purpose
/// could keep it up, and this bounds the spinning it could cause.
const MAX_DISAGREEMENTS: u32 = 1 << 16;

/// Counts the rounds of a blocking call in which the predicate said "ready" at once (no
/// sleep) and the operation then failed: `Err(Corrupted)` at [`MAX_DISAGREEMENTS`].
struct Disagreements(u32);

impl Disagreements {
    /// The predicate said "ready" without a sleep, the operation will be tried again.
    fn ready_at_once(&mut self) -> Result<(), Error> {
        self.0 += 1;
        if self.0 >= MAX_DISAGREEMENTS {
            return Err(Error::Corrupted);
        }
        Ok(())
    }

    /// The caller slept and was woken: a peer made progress.
    fn slept(&mut self) {
        self.0 = 0;
    }
}

/// Spins until `ready()` or the spin budget is spent; returns whether it became ready.
fn spin(ready: impl Fn() -> Result<bool, Error>) -> Result<bool, Error> {
    // A waiting pVM is at a good point for a library update the operator asked for (a pVM that
    // talks over queues without ever sleeping makes no hypercall that would see it).
    #[cfg(not(feature = "library"))]
    crate::dl::poll_if_pending();
    let budget = SPIN_CYCLES.load(Ordering::Relaxed);
    if budget == 0 {
        return ready();
    }
    let start = crate::time::cycles();
    loop {
        if ready()? {
            return Ok(true);
        }
        if crate::time::cycles().wrapping_sub(start) > budget {
            return Ok(false);
        }
        core::hint::spin_loop();
    }
}

/// The words of the ring one end sleeps and is woken by.
struct End<'a> {
    /// Set while the end sleeps (or is about to).
    sleeping: &'a AtomicU32,
    /// The end's futex word.
    seq: &'a AtomicU32,
}

/// The wait protocol shared by both ends of a pipe: `step` moves bytes (0 when none can move);
/// after progress a sleeping peer is woken; otherwise the end spins while `ready` is false,
/// then raises its flag, checks once more and sleeps in the monitor. `Ok(None)`: the peer end
/// is gone everywhere.
///
/// `step` and `ready` cannot disagree for good: both come from one load of the same checked
/// indices (`Pipe::indices`), so for a given ring state `ready` is true exactly when `step`
/// moves at least one byte (`buf` is never empty here), and only this end moves its own index.
/// A disagreement needs a peer rewriting the indices between the two loads; the
/// [`Disagreements`] bound turns a peer that keeps doing so into `Corrupted` as well.
fn transfer(
    handle: u64,
    nonblocking: bool,
    me: End<'_>,
    peer: End<'_>,
    mut step: impl FnMut() -> Result<usize, RingError>,
    ready: impl Fn() -> Result<bool, Error>,
) -> Result<Option<usize>, Error> {
    let mut disagreements = Disagreements(0);
    loop {
        let n = step()?;
        if n > 0 {
            // The index store before the flag load, with a fence that pairs with the sleeping
            // side's: either its second look sees our bytes or we see its flag (the loom model
            // in ipc/tests/loom_wake.rs checks it).
            fence(Ordering::SeqCst);
            if peer.sleeping.load(Ordering::SeqCst) != 0 {
                wake(handle, peer.seq);
            }
            return Ok(Some(n));
        }
        if nonblocking {
            return Err(Error::WouldBlock);
        }
        if spin(&ready)? {
            disagreements.ready_at_once()?;
            continue;
        }
        me.sleeping.store(1, Ordering::SeqCst);
        let seq = me.seq.load(Ordering::SeqCst);
        // Our flag before the peer's index (read by `ready` with acquire): the fence pairs
        // with the peer's SeqCst index store and flag load, so one of us sees the other.
        fence(Ordering::SeqCst);
        if ready()? {
            me.sleeping.store(0, Ordering::SeqCst);
            disagreements.ready_at_once()?;
            continue;
        }
        let woken = wait(handle, seq);
        me.sleeping.store(0, Ordering::SeqCst);
        if !woken? {
            return Ok(None);
        }
        disagreements.slept();
    }
}

/// The read end of a pipe.
pub struct Reader {
    handle: u64,
    ring: Pipe,
    nonblocking: bool,
}

impl Reader {
    /// The monitor's handle and the ring (for polls).
    pub(crate) fn parts(&self) -> (u64, &Pipe) {
        (self.handle, &self.ring)
    }

    /// With `true`, reads on an empty pipe fail with [`Error::WouldBlock`] instead of waiting.
    pub fn set_nonblocking(&mut self, nonblocking: bool) {
        self.nonblocking = nonblocking;
    }

    /// Reads what is there (waiting for at least one byte); 0 means end of file.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        if buf.is_empty() {
            return Ok(0);
        }
        let h = self.ring.header();
        let me = End {
            sleeping: &h.reader_sleeping,
            seq: &h.data_seq,
        };
        let peer = End {
            sleeping: &h.writer_sleeping,
            seq: &h.space_seq,
        };
        let moved = match transfer(
            self.handle,
            self.nonblocking,
            me,
            peer,
            || self.ring.read(buf),
            || Ok(self.ring.readable()? > 0),
        ) {
            // A writer that said it is done (the network backend at a client's end of file):
            // end of file without asking the monitor.
            Err(Error::WouldBlock) if h.writer_closed.load(Ordering::SeqCst) != 0 => None,
            other => other?,
        };
        match moved {
            Some(n) => Ok(n),
            // Every writer is gone: what they wrote before is still there.
            None => Ok(self.ring.read(buf)?),
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
    /// The monitor's handle and the ring (for polls).
    pub(crate) fn parts(&self) -> (u64, &Pipe) {
        (self.handle, &self.ring)
    }

    /// With `true`, writes to a full pipe fail with [`Error::WouldBlock`] instead of waiting.
    pub fn set_nonblocking(&mut self, nonblocking: bool) {
        self.nonblocking = nonblocking;
    }

    /// Writes what fits (waiting for room for at least one byte); returns how much.
    pub fn write(&mut self, buf: &[u8]) -> Result<usize, Error> {
        if buf.is_empty() {
            return Ok(0);
        }
        let h = self.ring.header();
        if h.reader_closed.load(Ordering::SeqCst) != 0 {
            return Err(Error::BrokenPipe);
        }
        let me = End {
            sleeping: &h.writer_sleeping,
            seq: &h.space_seq,
        };
        let peer = End {
            sleeping: &h.reader_sleeping,
            seq: &h.data_seq,
        };
        let moved = transfer(
            self.handle,
            self.nonblocking,
            me,
            peer,
            || self.ring.write(buf),
            || Ok(self.ring.writable()? > 0),
        )?;
        moved.ok_or(Error::BrokenPipe)
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

/// Opens or creates a named object; returns the monitor's answer.
fn open_named(
    call: Hypercall,
    key: &str,
    create: bool,
    capacity: u64,
    msg_size: u64,
) -> Result<NamedArgs, Error> {
    let mut args = NamedArgs {
        key: key.as_ptr() as u64,
        key_len: key.len() as u64,
        create: u64::from(create),
        capacity,
        msg_size,
        ..Default::default()
    };
    raw(call, &mut args as *mut NamedArgs as u64);
    crate::signal::dispatch();
    match -args.result {
        0 => Ok(args),
        errno::EPERM => Err(Error::PermissionDenied),
        errno::ENOENT => Err(Error::NotFound),
        errno::EINVAL => Err(Error::Invalid),
        errno::EAGAIN => Err(Error::Unavailable),
        _ => Err(Error::Host(args.result)),
    }
}

/// Default largest message of a queue.
pub const DEFAULT_MESSAGE_SIZE: usize = 1024;

/// A named, bounded message queue shared by the pVMs of a family: messages keep their
/// boundaries; any number of pVMs send and receive.
pub struct MessageQueue {
    handle: u64,
    queue: Queue,
    nonblocking: bool,
}

impl MessageQueue {
    /// Opens the family's queue `key`, creating it with room for `capacity` messages (a power
    /// of two, 2 to 1024) of up to [`DEFAULT_MESSAGE_SIZE`] bytes if it does not exist.
    pub fn open(key: &str, capacity: usize) -> Result<MessageQueue, Error> {
        Self::open_with(key, capacity, DEFAULT_MESSAGE_SIZE)
    }

    /// Like [`MessageQueue::open`], with messages of up to `msg_size` bytes.
    pub fn open_with(key: &str, capacity: usize, msg_size: usize) -> Result<MessageQueue, Error> {
        let a = open_named(Hypercall::MqOpen, key, true, capacity as u64, msg_size as u64)?;
        Ok(Self::attach(a))
    }

    /// Opens the family's existing queue `key`.
    pub fn open_existing(key: &str) -> Result<MessageQueue, Error> {
        let a = open_named(Hypercall::MqOpen, key, false, 0, 0)?;
        Ok(Self::attach(a))
    }

    fn attach(a: NamedArgs) -> MessageQueue {
        // SAFETY: the monitor mapped the queue's region (of the geometry it returned, checked
        // against the file) at `addr`, and keeps it while our handle lives.
        let queue = unsafe { Queue::attach(a.addr as *mut u8, a.size, a.msg_size_out) };
        MessageQueue {
            handle: a.handle,
            queue,
            nonblocking: false,
        }
    }

    /// With `true`, sending to a full or receiving from an empty queue fails with
    /// [`Error::WouldBlock`] instead of waiting.
    pub fn set_nonblocking(&mut self, nonblocking: bool) {
        self.nonblocking = nonblocking;
    }

    /// Largest message.
    pub fn max_message(&self) -> usize {
        self.queue.msg_size() as usize
    }

    /// Guest address of the queue's region (its header; the cells start a page later). Every
    /// pVM of the family holding the queue maps it; the tests use it to play a hostile peer.
    pub fn region_addr(&self) -> u64 {
        self.queue.header() as *const pvm_ipc::QueueHeader as u64
    }

    /// The futex word of `side` and its count of sleepers.
    fn side(&self, side: u64) -> (&AtomicU32, &AtomicU32) {
        let h = self.queue.header();
        if side == mq_side::RECV {
            (&h.recv_waiters, &h.recv_seq)
        } else {
            (&h.send_waiters, &h.send_seq)
        }
    }

    /// After our operation made room (or a message): wakes `side`'s sleepers if there are any.
    fn notify(&self, side: u64) {
        let (waiters, word) = self.side(side);
        // The cell's sequence store (release, in `Queue`) before the waiters load: the fence
        // pairs with the one in `sleep`, so either the sleeper's predicate sees our cell or
        // we see its count.
        fence(Ordering::SeqCst);
        if waiters.load(Ordering::SeqCst) != 0 {
            word.fetch_add(1, Ordering::SeqCst);
            raw(Hypercall::MqWake, self.handle << 1 | side);
            crate::signal::dispatch();
        }
    }

    /// Sleeps on `side` unless `ready()` turns true meanwhile: `Ok(true)` slept (and was
    /// woken), `Ok(false)` ready without sleeping.
    fn sleep(&self, side: u64, ready: impl Fn() -> Result<bool, Error>) -> Result<bool, Error> {
        let (waiters, word) = self.side(side);
        waiters.fetch_add(1, Ordering::SeqCst);
        let seq = word.load(Ordering::SeqCst);
        // Pairs with the fence in `notify`.
        fence(Ordering::SeqCst);
        let result = match ready() {
            Ok(true) => Ok(false),
            Err(e) => Err(e),
            Ok(false) => {
                let mut args = MqWaitArgs {
                    handle: self.handle,
                    side,
                    seq: u64::from(seq),
                    result: 0,
                };
                raw(Hypercall::MqWait, &mut args as *mut MqWaitArgs as u64);
                match -args.result {
                    0 => Ok(true),
                    errno::EINTR if crate::signal::poll() => Err(Error::Interrupted),
                    errno::EINTR => Ok(true),
                    _ => Err(Error::Host(args.result)),
                }
            }
        };
        waiters.fetch_sub(1, Ordering::SeqCst);
        result
    }

    /// After an operation found the queue full (empty): waits until `ready()` (the queue's
    /// peek, which classifies the cell exactly as the operation does) says the operation can
    /// go, spinning first, then sleeping on `side`. A cell held by a peer paused mid-operation
    /// reads as "not ready": we sleep, and the peer that finishes wakes us.
    fn wait_ready(
        &self,
        side: u64,
        ready: impl Fn() -> Result<bool, Error>,
        disagreements: &mut Disagreements,
    ) -> Result<(), Error> {
        if spin(&ready)? || !self.sleep(side, &ready)? {
            disagreements.ready_at_once()
        } else {
            disagreements.slept();
            Ok(())
        }
    }

    /// Sends `msg` (waiting for room).
    pub fn send(&self, msg: &[u8]) -> Result<(), Error> {
        if msg.len() > self.max_message() {
            return Err(Error::TooLarge);
        }
        let mut disagreements = Disagreements(0);
        loop {
            if self.queue.send(msg)? {
                self.notify(mq_side::RECV);
                return Ok(());
            }
            if self.nonblocking {
                return Err(Error::WouldBlock);
            }
            self.wait_ready(mq_side::SEND, || Ok(self.queue.can_send()?), &mut disagreements)?;
        }
    }

    /// Receives one message into `buf` (waiting for one); returns its length.
    pub fn receive(&self, buf: &mut [u8]) -> Result<usize, Error> {
        if buf.len() < self.max_message() {
            return Err(Error::TooLarge);
        }
        let mut disagreements = Disagreements(0);
        loop {
            if let Some(n) = self.queue.receive(buf)? {
                self.notify(mq_side::SEND);
                return Ok(n);
            }
            if self.nonblocking {
                return Err(Error::WouldBlock);
            }
            self.wait_ready(
                mq_side::RECV,
                || Ok(self.queue.can_receive()?),
                &mut disagreements,
            )?;
        }
    }
}

impl Drop for MessageQueue {
    fn drop(&mut self) {
        raw(Hypercall::IpcClose, self.handle);
    }
}

/// A named region of memory mapped into every pVM of the family that opens it.
pub struct SharedMem {
    handle: u64,
    base: *mut u8,
    len: usize,
}

impl SharedMem {
    /// Creates (or opens, if the family has it already) the region `key` of `size` bytes
    /// (rounded up to pages, at most 2 MiB), zeroed when new.
    pub fn create(key: &str, size: usize) -> Result<SharedMem, Error> {
        let a = open_named(Hypercall::ShmOpen, key, true, size as u64, 0)?;
        Ok(SharedMem {
            handle: a.handle,
            base: a.addr as *mut u8,
            len: a.size as usize,
        })
    }

    /// Opens the family's existing region `key`.
    pub fn open(key: &str) -> Result<SharedMem, Error> {
        let a = open_named(Hypercall::ShmOpen, key, false, 0, 0)?;
        Ok(SharedMem {
            handle: a.handle,
            base: a.addr as *mut u8,
            len: a.size as usize,
        })
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the region is empty (never: regions are at least a page).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Start of the region. Other pVMs write it concurrently: access it with atomics or
    /// volatile copies ([`SharedMem::read`], [`SharedMem::write`], [`SharedMem::atomic_u64`]).
    pub fn as_ptr(&self) -> *mut u8 {
        self.base
    }

    /// The 8-byte word at `offset` (8-aligned, inside the region) as an atomic.
    pub fn atomic_u64(&self, offset: usize) -> Option<&AtomicU64> {
        if !offset.is_multiple_of(8) || offset.checked_add(8)? > self.len {
            return None;
        }
        // SAFETY: aligned and inside the mapped region, which lives as long as `self`.
        Some(unsafe { &*(self.base.add(offset) as *const AtomicU64) })
    }

    /// Copies `buf.len()` bytes at `offset` out of the region.
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> Result<(), Error> {
        if offset.checked_add(buf.len()).is_none_or(|end| end > self.len) {
            return Err(Error::Invalid);
        }
        for (i, b) in buf.iter_mut().enumerate() {
            // SAFETY: inside the region (checked above).
            *b = unsafe { core::ptr::read_volatile(self.base.add(offset + i)) };
        }
        Ok(())
    }

    /// Copies `data` into the region at `offset`.
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<(), Error> {
        if offset.checked_add(data.len()).is_none_or(|end| end > self.len) {
            return Err(Error::Invalid);
        }
        for (i, b) in data.iter().enumerate() {
            // SAFETY: inside the region (checked above).
            unsafe { core::ptr::write_volatile(self.base.add(offset + i), *b) };
        }
        Ok(())
    }
}

impl Drop for SharedMem {
    fn drop(&mut self) {
        raw(Hypercall::IpcClose, self.handle);
    }
}
