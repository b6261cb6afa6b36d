//! Shared-memory channel structures used by pVM guests (and described to monitors), no_std.
//!
//! A pipe is a byte ring in a shared region: a [`PipeRing`] header, then `capacity` bytes of
//! data one page later. The writer advances `head`, the reader `tail` (both count bytes since the
//! start, so `head - tail` is the fill level). The steady state makes no exits: each side spins
//! on the other's index for a while and only then sleeps in the monitor, after raising its
//! `*_sleeping` flag; the other side makes a notify hypercall only when it sees that flag.
//!
//! Everything in the region is writable by every pVM holding it, so every value read from it is
//! checked: a corrupt index makes the operation fail with [`RingError::Corrupted`] and never
//! leads outside the region.
#![no_std]

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Magic value of a pipe ring ("pvmpipe1").
pub const PIPE_MAGIC: u64 = u64::from_le_bytes(*b"pvmpipe1");

/// Offset of the data from the start of the region.
pub const PIPE_DATA_OFFSET: usize = 4096;

/// Smallest pipe capacity.
pub const PIPE_MIN_CAPACITY: u64 = 4096;
/// Largest pipe capacity.
pub const PIPE_MAX_CAPACITY: u64 = 1 << 20;
/// Default pipe capacity.
pub const PIPE_DEFAULT_CAPACITY: u64 = 64 * 1024;

/// Capacity of each ring of a TCP connection (the receive ring and the send ring).
pub const NET_RING_CAPACITY: u64 = 256 * 1024;

/// Offset of a connection's send ring from its receive ring (the start of its region).
pub const fn net_tx_offset(capacity: u64) -> u64 {
    PIPE_DATA_OFFSET as u64 + capacity
}

/// Size of a connection's region: two rings.
pub const fn net_region_size(capacity: u64) -> u64 {
    2 * net_tx_offset(capacity)
}

/// Whether `capacity` is a valid pipe capacity.
pub fn valid_pipe_capacity(capacity: u64) -> bool {
    capacity.is_power_of_two() && (PIPE_MIN_CAPACITY..=PIPE_MAX_CAPACITY).contains(&capacity)
}

/// Header of a pipe ring; the indices sit on their own cache lines.
#[repr(C, align(64))]
pub struct PipeRing {
    /// [`PIPE_MAGIC`].
    pub magic: AtomicU64,
    /// Data bytes (a power of two).
    pub capacity: AtomicU64,
    _pad0: [AtomicU64; 6],
    /// Bytes written since the pipe was created.
    pub head: AtomicU64,
    _pad1: [AtomicU64; 7],
    /// Bytes read since the pipe was created.
    pub tail: AtomicU64,
    _pad2: [AtomicU64; 7],
    /// The reader sleeps in the monitor (or is about to): a writer must notify.
    pub reader_sleeping: AtomicU32,
    /// The writer sleeps in the monitor (or is about to): a reader must notify.
    pub writer_sleeping: AtomicU32,
    /// Bumped by a writer that saw the reader sleeping (the reader's futex word).
    pub data_seq: AtomicU32,
    /// Bumped by a reader that saw the writer sleeping (the writer's futex word).
    pub space_seq: AtomicU32,
    /// Set by a writer that will write no more (a network connection whose client sent its
    /// end of file): a non-blocking read of an empty ring is then end of file, with no exit.
    pub writer_closed: AtomicU32,
    /// Set by a reader that will read no more (a client that is gone): writes fail.
    pub reader_closed: AtomicU32,
    _pad3: [AtomicU32; 10],
}

// Every byte of a header is in an atomic, padding included (the `_pad` fields are atomics and
// fill the struct to its size, so it has no implicit padding): a `&PipeRing` then asserts
// nothing about bytes a peer may write at any moment. With plain padding, forming the
// reference counts as a non-atomic read of those bytes, a data race with a peer's write (Miri
// found it: `hostile_tests`).
const _: () = assert!(core::mem::size_of::<PipeRing>() == 8 * 4 + 8 * 20 + 4 * 6 + 4 * 10);

/// Byte offset of [`PipeRing::data_seq`] in the region (the reader's monitor sleeps on it).
pub const PIPE_DATA_SEQ_OFFSET: usize = core::mem::offset_of!(PipeRing, data_seq);
/// Byte offset of [`PipeRing::space_seq`] in the region.
pub const PIPE_SPACE_SEQ_OFFSET: usize = core::mem::offset_of!(PipeRing, space_seq);

/// Why a ring operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingError {
    /// The header holds values no correct peer writes (a pVM scribbled over it).
    Corrupted,
}

/// A pipe ring as one side sees it: the header and the data, at addresses this side maps.
pub struct Pipe {
    ring: *const PipeRing,
    data: *mut u8,
    capacity: u64,
}

// SAFETY: a Pipe is only a view of shared memory; all header access is atomic and data access
// is ordered by the header's acquire/release indices.
unsafe impl Send for Pipe {}

impl Pipe {
    /// Initializes a ring in freshly zeroed memory of `PIPE_DATA_OFFSET + capacity` bytes.
    ///
    /// # Safety
    /// `base` must point to such memory, page-aligned, valid for the life of every view.
    pub unsafe fn init(base: *mut u8, capacity: u64) {
        // SAFETY: the caller guarantees `base` points to a zeroed, aligned header.
        let ring = unsafe { &*(base as *const PipeRing) };
        ring.capacity.store(capacity, Ordering::Relaxed);
        ring.magic.store(PIPE_MAGIC, Ordering::Release);
    }

    /// A view of the ring at `base` with `capacity` bytes of data.
    ///
    /// # Safety
    /// `base` must point to `PIPE_DATA_OFFSET + capacity` bytes of memory that stay mapped for
    /// the life of the view (other pVMs may write any of it at any time).
    pub unsafe fn attach(base: *mut u8, capacity: u64) -> Pipe {
        // SAFETY: the data starts inside the region the caller vouches for.
        let data = unsafe { base.add(PIPE_DATA_OFFSET) };
        Pipe {
            ring: base as *const PipeRing,
            data,
            capacity,
        }
    }

    fn ring(&self) -> &PipeRing {
        // SAFETY: `attach`'s caller guarantees the header stays mapped; every field is atomic.
        unsafe { &*self.ring }
    }

    /// The header.
    pub fn header(&self) -> &PipeRing {
        self.ring()
    }

    /// (head, tail, fill) after checking them against the capacity.
    fn indices(&self) -> Result<(u64, u64, u64), RingError> {
        let ring = self.ring();
        let head = ring.head.load(Ordering::Acquire);
        let tail = ring.tail.load(Ordering::Acquire);
        let fill = head.wrapping_sub(tail);
        if fill > self.capacity {
            return Err(RingError::Corrupted);
        }
        Ok((head, tail, fill))
    }

    /// Bytes ready to read.
    pub fn readable(&self) -> Result<u64, RingError> {
        self.indices().map(|(_, _, fill)| fill)
    }

    /// Free space.
    pub fn writable(&self) -> Result<u64, RingError> {
        self.indices().map(|(_, _, fill)| self.capacity - fill)
    }

    /// Where the ring's free space lies, as at most two `(address, length)` runs (the space
    /// wraps around the end of the data area): for a writer that fills it in place (a socket
    /// receive), then publishes what it wrote with [`Pipe::commit`]. Raw addresses: the memory
    /// is shared with peers that may write it.
    pub fn free_runs(&self) -> Result<[(*mut u8, usize); 2], RingError> {
        let (head, _, fill) = self.indices()?;
        let free = (self.capacity - fill) as usize;
        let at = (head % self.capacity) as usize;
        let first = free.min(self.capacity as usize - at);
        // SAFETY: `at < capacity`: inside the data area (as are both runs).
        let start = unsafe { self.data.add(at) };
        Ok([(start, first), (self.data, free - first)])
    }

    /// Publishes `n` bytes written into the free space [`Pipe::free_runs`] gave (no more than
    /// there was).
    pub fn commit(&self, n: u64) -> Result<(), RingError> {
        let (head, _, fill) = self.indices()?;
        if n > self.capacity - fill {
            return Err(RingError::Corrupted);
        }
        self.ring().head.store(head.wrapping_add(n), Ordering::SeqCst);
        Ok(())
    }

    /// Where the ring's data lies, as at most two `(address, length)` runs: for a reader that
    /// sends it in place, then takes what it sent with [`Pipe::consume`].
    pub fn data_runs(&self) -> Result<[(*const u8, usize); 2], RingError> {
        let (_, tail, fill) = self.indices()?;
        let at = (tail % self.capacity) as usize;
        let first = (fill as usize).min(self.capacity as usize - at);
        // SAFETY: `at < capacity`: inside the data area (as are both runs).
        let start = unsafe { self.data.add(at) };
        Ok([
            (start.cast_const(), first),
            (self.data.cast_const(), fill as usize - first),
        ])
    }

    /// Copies up to `buf.len()` bytes out of the ring; returns how many (0 when empty).
    pub fn read(&self, buf: &mut [u8]) -> Result<usize, RingError> {
        let (tail, n) = self.copy_out(buf)?;
        if n > 0 {
            self.ring()
                .tail
                .store(tail.wrapping_add(n as u64), Ordering::SeqCst);
        }
        Ok(n)
    }

    /// Copies up to `buf.len()` bytes out of the ring without taking them (see
    /// [`Pipe::consume`]); returns how many.
    pub fn peek(&self, buf: &mut [u8]) -> Result<usize, RingError> {
        Ok(self.copy_out(buf)?.1)
    }

    /// Takes `n` bytes a [`Pipe::peek`] saw (no more than are there).
    pub fn consume(&self, n: u64) -> Result<(), RingError> {
        let (_, tail, fill) = self.indices()?;
        if n > fill {
            return Err(RingError::Corrupted);
        }
        self.ring().tail.store(tail.wrapping_add(n), Ordering::SeqCst);
        Ok(())
    }

    /// Copies up to `buf.len()` readable bytes into `buf`: (tail, bytes copied).
    fn copy_out(&self, buf: &mut [u8]) -> Result<(u64, usize), RingError> {
        let (_, tail, fill) = self.indices()?;
        let n = (fill as usize).min(buf.len());
        if n == 0 {
            return Ok((tail, 0));
        }
        let at = (tail % self.capacity) as usize;
        let first = n.min(self.capacity as usize - at);
        // SAFETY: `at + first <= capacity` and `n - first < capacity`: both copies stay in the
        // data area; the acquire load of `head` ordered the writer's bytes before them.
        unsafe {
            core::ptr::copy_nonoverlapping(self.data.add(at), buf.as_mut_ptr(), first);
            core::ptr::copy_nonoverlapping(self.data, buf.as_mut_ptr().add(first), n - first);
        }
        Ok((tail, n))
    }

    /// Copies up to `buf.len()` bytes into the ring; returns how many (0 when full).
    pub fn write(&self, buf: &[u8]) -> Result<usize, RingError> {
        let (head, _, fill) = self.indices()?;
        let n = ((self.capacity - fill) as usize).min(buf.len());
        if n == 0 {
            return Ok(0);
        }
        let at = (head % self.capacity) as usize;
        let first = n.min(self.capacity as usize - at);
        // SAFETY: as in `read`, both copies stay in the data area; the release store of `head`
        // publishes them.
        unsafe {
            core::ptr::copy_nonoverlapping(buf.as_ptr(), self.data.add(at), first);
            core::ptr::copy_nonoverlapping(buf.as_ptr().add(first), self.data, n - first);
        }
        self.ring()
            .head
            .store(head.wrapping_add(n as u64), Ordering::SeqCst);
        Ok(n)
    }
}

/// Magic value of a message queue ("pvmmsgq1").
pub const QUEUE_MAGIC: u64 = u64::from_le_bytes(*b"pvmmsgq1");
/// Offset of the first cell from the start of the region.
pub const QUEUE_CELLS_OFFSET: usize = 4096;
/// Largest message a queue carries.
pub const QUEUE_MAX_MESSAGE: u64 = 4096 - 16;
/// Most messages a queue holds.
pub const QUEUE_MAX_CAPACITY: u64 = 1024;

/// Bytes of one cell for messages of up to `msg_size` bytes (sequence + length + data, rounded
/// to 16).
pub fn queue_cell_size(msg_size: u64) -> u64 {
    (16 + msg_size).div_ceil(16) * 16
}

/// Bytes of a region holding a queue of `capacity` messages of up to `msg_size` bytes.
pub fn queue_region_size(capacity: u64, msg_size: u64) -> u64 {
    QUEUE_CELLS_OFFSET as u64 + capacity * queue_cell_size(msg_size)
}

/// Fewest messages a queue holds: with one cell, Vyukov's sequence numbers cannot tell a full
/// cell (`seq = p + 1`) from a free one of the next lap (`p + C`), and a second send would
/// overwrite the first message.
pub const QUEUE_MIN_CAPACITY: u64 = 2;

/// Whether a queue geometry is valid.
pub fn valid_queue(capacity: u64, msg_size: u64) -> bool {
    capacity.is_power_of_two()
        && (QUEUE_MIN_CAPACITY..=QUEUE_MAX_CAPACITY).contains(&capacity)
        && (1..=QUEUE_MAX_MESSAGE).contains(&msg_size)
}

/// Header of a bounded multi-producer multi-consumer message queue (D. Vyukov's algorithm:
/// every cell carries a sequence number that says whose turn it is).
#[repr(C, align(64))]
pub struct QueueHeader {
    /// [`QUEUE_MAGIC`].
    pub magic: AtomicU64,
    /// Cells (a power of two).
    pub capacity: AtomicU64,
    /// Largest message.
    pub msg_size: AtomicU64,
    _pad0: [AtomicU64; 5],
    /// Next cell to fill.
    pub enqueue_pos: AtomicU64,
    _pad1: [AtomicU64; 7],
    /// Next cell to drain.
    pub dequeue_pos: AtomicU64,
    _pad2: [AtomicU64; 7],
    /// Receivers asleep (or about to be) in their monitors.
    pub recv_waiters: AtomicU32,
    /// Senders asleep (or about to be).
    pub send_waiters: AtomicU32,
    /// Bumped by a sender that saw sleeping receivers (the receivers' futex word).
    pub recv_seq: AtomicU32,
    /// Bumped by a receiver that saw sleeping senders (the senders' futex word).
    pub send_seq: AtomicU32,
    _pad3: [AtomicU64; 6],
}

// All atomic, no implicit padding: as for [`PipeRing`].
const _: () = assert!(core::mem::size_of::<QueueHeader>() == 8 * 5 + 8 * 19 + 4 * 4 + 8 * 6);

/// Byte offset of [`QueueHeader::recv_seq`] in the region (the monitor sleeps on it).
pub const QUEUE_RECV_SEQ_OFFSET: usize = core::mem::offset_of!(QueueHeader, recv_seq);
/// Byte offset of [`QueueHeader::send_seq`] in the region.
pub const QUEUE_SEND_SEQ_OFFSET: usize = core::mem::offset_of!(QueueHeader, send_seq);

/// How many times a queue operation (or peek) looks again after losing a race for a cell, or
/// after finding its position stale, before calling the queue corrupt (a correct peer never
/// makes it retry that often). Keeps the work of every call bounded, whatever peers write.
const MAX_RETRIES: u32 = 1 << 20;

/// What a side finds in the cell at its position (see the invariants on [`Queue`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Turn {
    /// The cell is ready for this side: claim it.
    Go,
    /// Not this side's turn yet: the queue is full (sender) or empty (receiver), or a peer
    /// holds the cell mid-operation. Only a peer's progress changes that: wait for it.
    Wait,
    /// The position was stale (the index has moved on since): look again at this position.
    Moved(u64),
}

/// A queue as one side sees it.
///
/// # Invariants (D. Vyukov's bounded MPMC queue, `C` = capacity, a power of two >= 2)
///
/// `enqueue_pos` (E) and `dequeue_pos` (D) count positions since creation; position `p` uses
/// cell `p % C`. The cell for position `p` goes through, in this order:
///
/// | `seq` | state |
/// |---|---|
/// | `p` | free for the sender of `p` (also: claimed by it, E > p, not yet published) |
/// | `p + 1` | holds the message of `p` (also: claimed by the receiver of `p`, D > p, not yet released) |
/// | `p + C` | free for the sender of `p + C`: the next lap |
///
/// Every sequence number only grows, and each index only grows, by one per claim (a successful
/// CAS from `p` to `p + 1`, made only after reading the `seq` that allows it). Positions are
/// loaded with acquire and claimed with acquire-release, so a side that loaded position `p`
/// sees at least the `seq` that allowed the claim of `p - C` (release sequence of the index),
/// never an older one. Hence, with `dif = seq - p` for a sender and `dif = seq - (p + 1)` for a
/// receiver (wrapping, as `i64`), what a correct peer can make a side see:
///
/// * sender at `p`: `0` free (go); `1 - C` full: the message of `p - C` not taken yet, or taken
///   by a receiver that has not released the cell (wait); `-C` a sender of the previous lap
///   claimed the cell and has not published (wait); `> 0` our `p` is stale: E has moved on (a
///   `seq` above `p` is only written after E passed `p`): reload E, and if it still reads `p`,
///   the cell is corrupt.
/// * receiver at `p`: `0` a message (go); `-1` empty, or a sender claimed the cell and has not
///   published (wait); `-C` the receiver of the previous lap claimed the cell and has not
///   released it (wait); `> 0` stale, as for the sender.
/// * anything else (below `-C`, or a negative value other than those) is a value no correct
///   peer writes: [`RingError::Corrupted`].
///
/// A peer paused mid-operation therefore reads as "wait" (full or empty), never as corruption,
/// and the peer that finishes the operation wakes the waiters. What a side cannot tell apart is
/// a hostile peer that writes a *reachable* state (say, a cell that looks claimed and never
/// published): that blocks the queue like a peer paused forever would, and the waiting side
/// sleeps (it does not spin). The geometry (capacity, message size) is the one given to
/// [`Queue::attach`], never re-read from the header, and a received length is checked against
/// it before any copy.
///
/// [`Queue::can_send`] and [`Queue::can_receive`] apply the same classification without side
/// effects: they are the readiness predicates of waiting callers, so a caller that waits while
/// the peek says "wait" and retries when it says "go" never disagrees with the operation for
/// longer than peers keep making progress.
pub struct Queue {
    header: *const QueueHeader,
    cells: *mut u8,
    capacity: u64,
    msg_size: u64,
    cell_size: u64,
}

// SAFETY: a view of shared memory; all shared state is atomic or ordered by the cells' sequence
// numbers.
unsafe impl Send for Queue {}

impl Queue {
    /// Initializes a queue in freshly zeroed memory of `queue_region_size(capacity, msg_size)`.
    ///
    /// # Safety
    /// `base` must point to such memory, page-aligned, valid for the life of every view, and
    /// the geometry must be valid ([`valid_queue`]).
    pub unsafe fn init(base: *mut u8, capacity: u64, msg_size: u64) {
        // SAFETY: the caller vouches for the region.
        let q = unsafe { Queue::attach(base, capacity, msg_size) };
        for i in 0..capacity {
            q.cell_seq(i).store(i, Ordering::Relaxed);
        }
        let h = q.header();
        h.capacity.store(capacity, Ordering::Relaxed);
        h.msg_size.store(msg_size, Ordering::Relaxed);
        h.magic.store(QUEUE_MAGIC, Ordering::Release);
    }

    /// A view of the queue at `base`.
    ///
    /// # Safety
    /// `base` must point to `queue_region_size(capacity, msg_size)` bytes that stay mapped for
    /// the life of the view (other pVMs may write any of it at any time), and the geometry
    /// must be valid ([`valid_queue`]).
    pub unsafe fn attach(base: *mut u8, capacity: u64, msg_size: u64) -> Queue {
        // SAFETY: the cells start inside the region the caller vouches for.
        let cells = unsafe { base.add(QUEUE_CELLS_OFFSET) };
        Queue {
            header: base as *const QueueHeader,
            cells,
            capacity,
            msg_size,
            cell_size: queue_cell_size(msg_size),
        }
    }

    /// The header.
    pub fn header(&self) -> &QueueHeader {
        // SAFETY: `attach`'s caller guarantees the header stays mapped; every field is atomic.
        unsafe { &*self.header }
    }

    /// Largest message.
    pub fn msg_size(&self) -> u64 {
        self.msg_size
    }

    /// Cells.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    fn cell(&self, pos: u64) -> *mut u8 {
        // SAFETY: `pos % capacity < capacity`: the cell lies inside the cells area.
        unsafe { self.cells.add(((pos % self.capacity) * self.cell_size) as usize) }
    }

    fn cell_seq(&self, pos: u64) -> &AtomicU64 {
        // SAFETY: the first 8 bytes of a cell, 16-aligned, only accessed atomically.
        unsafe { &*(self.cell(pos) as *const AtomicU64) }
    }

    /// Classifies the cell of position `pos` for the side advancing `index`: a sender
    /// (`receiver` false) or a receiver, by the invariants above.
    fn turn(&self, index: &AtomicU64, pos: u64, receiver: bool) -> Result<Turn, RingError> {
        let seq = self.cell_seq(pos).load(Ordering::Acquire);
        let expect = if receiver { pos.wrapping_add(1) } else { pos };
        let dif = seq.wrapping_sub(expect) as i64;
        // `C <= QUEUE_MAX_CAPACITY`, so it fits an i64 (the view's own copy, never re-read).
        let cap = self.capacity as i64;
        // The other "wait" value: full (sender) or empty (receiver).
        let next = if receiver { -1 } else { 1 - cap };
        if dif == 0 {
            Ok(Turn::Go)
        } else if dif == next || dif == -cap {
            Ok(Turn::Wait)
        } else if dif > 0 {
            // Only a claim of `pos` (which moved the index past it, and which our acquire load
            // of `seq` now sees) lets the cell's `seq` pass `expect`.
            match index.load(Ordering::Acquire) {
                now if now == pos => Err(RingError::Corrupted),
                now => Ok(Turn::Moved(now)),
            }
        } else {
            Err(RingError::Corrupted)
        }
    }

    /// The side advancing `index` peeks at its position until the answer is definite.
    fn peek(&self, index: &AtomicU64, receiver: bool) -> Result<bool, RingError> {
        let mut pos = index.load(Ordering::Acquire);
        for _ in 0..MAX_RETRIES {
            match self.turn(index, pos, receiver)? {
                Turn::Go => return Ok(true),
                Turn::Wait => return Ok(false),
                Turn::Moved(now) => pos = now,
            }
        }
        Err(RingError::Corrupted)
    }

    /// Whether a [`Queue::send`] now would find a free cell (`Ok(false)`: full, or a peer holds
    /// the next cell mid-operation: wait for a receiver). No side effects.
    pub fn can_send(&self) -> Result<bool, RingError> {
        self.peek(&self.header().enqueue_pos, false)
    }

    /// Whether a [`Queue::receive`] now would find a message (`Ok(false)`: empty, or a peer
    /// holds the next cell mid-operation: wait for a sender). No side effects.
    pub fn can_receive(&self) -> Result<bool, RingError> {
        self.peek(&self.header().dequeue_pos, true)
    }

    /// Claims the next position of the side advancing `index`: `Ok(Some(pos))` (the cell of
    /// `pos` is ours until we publish or release it), `Ok(None)` when it has to wait.
    fn claim(&self, index: &AtomicU64, receiver: bool) -> Result<Option<u64>, RingError> {
        let mut pos = index.load(Ordering::Acquire);
        for _ in 0..MAX_RETRIES {
            match self.turn(index, pos, receiver)? {
                Turn::Wait => return Ok(None),
                Turn::Moved(now) => pos = now,
                Turn::Go => match index.compare_exchange_weak(
                    pos,
                    pos.wrapping_add(1),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => return Ok(Some(pos)),
                    Err(now) => pos = now,
                },
            }
        }
        Err(RingError::Corrupted)
    }

    /// Puts one message in; `Ok(false)` when the queue is full (or a peer holds the next cell
    /// mid-operation): then [`Queue::can_send`] says `false` too until a peer makes progress.
    pub fn send(&self, msg: &[u8]) -> Result<bool, RingError> {
        if msg.len() as u64 > self.msg_size {
            return Err(RingError::Corrupted);
        }
        let Some(pos) = self.claim(&self.header().enqueue_pos, false)? else {
            return Ok(false);
        };
        let cell = self.cell(pos);
        // SAFETY: the cell is ours until we publish its sequence; the length and data fit it
        // (msg.len() <= msg_size).
        unsafe {
            core::ptr::write_volatile(cell.add(8) as *mut u32, msg.len() as u32);
            core::ptr::copy_nonoverlapping(msg.as_ptr(), cell.add(16), msg.len());
        }
        self.cell_seq(pos).store(pos.wrapping_add(1), Ordering::Release);
        Ok(true)
    }

    /// Takes one message out into `buf`; returns its length, or `Ok(None)` when empty (or a
    /// peer holds the next cell mid-operation): then [`Queue::can_receive`] says `false` too
    /// until a peer makes progress. A message whose length field is corrupt (above the message
    /// size or `buf`) is consumed and reported as [`RingError::Corrupted`].
    pub fn receive(&self, buf: &mut [u8]) -> Result<Option<usize>, RingError> {
        let Some(pos) = self.claim(&self.header().dequeue_pos, true)? else {
            return Ok(None);
        };
        let cell = self.cell(pos);
        // SAFETY: the length field lies inside the cell, which is ours until we release it.
        let len = unsafe { core::ptr::read_volatile(cell.add(8) as *const u32) } as usize;
        let ok = len as u64 <= self.msg_size && len <= buf.len();
        if ok {
            // SAFETY: `len` was checked against the cell's data area and the buffer just above.
            unsafe { core::ptr::copy_nonoverlapping(cell.add(16), buf.as_mut_ptr(), len) };
        }
        self.cell_seq(pos)
            .store(pos.wrapping_add(self.capacity), Ordering::Release);
        if ok {
            Ok(Some(len))
        } else {
            Err(RingError::Corrupted)
        }
    }
}

#[cfg(test)]
mod hostile_tests;

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec;

    use super::*;

    #[repr(C, align(4096))]
    struct Region([u8; PIPE_DATA_OFFSET + 4096]);

    fn region() -> std::boxed::Box<Region> {
        std::boxed::Box::new(Region([0; PIPE_DATA_OFFSET + 4096]))
    }

    #[test]
    fn bytes_go_through_in_order_across_the_wrap() {
        let mut r = region();
        let base = r.0.as_mut_ptr();
        // SAFETY: a zeroed, aligned region of the right size that outlives the views.
        let (w, rd) = unsafe {
            Pipe::init(base, 4096);
            (Pipe::attach(base, 4096), Pipe::attach(base, 4096))
        };
        let mut next = 0u8;
        let mut expect = 0u8;
        // Under Miri (slow: every byte is interpreted) 12 rounds still wrap three times.
        let rounds = if cfg!(miri) { 12 } else { 100 };
        for round in 0..rounds {
            let chunk: vec::Vec<u8> = (0..1000 + round)
                .map(|_| {
                    next = next.wrapping_add(1);
                    next
                })
                .collect();
            assert_eq!(w.write(&chunk).unwrap(), chunk.len());
            let mut out = vec![0u8; 4096];
            let n = rd.read(&mut out).unwrap();
            assert_eq!(n, chunk.len());
            for b in &out[..n] {
                expect = expect.wrapping_add(1);
                assert_eq!(*b, expect);
            }
        }
    }

    #[test]
    fn queue_keeps_messages_and_boundaries_under_contention() {
        // Fewer under Miri, which interprets every step (and checks every interleaving it runs).
        const PER_PRODUCER: u32 = if cfg!(miri) { 100 } else { 1000 };
        let cap = 16u64;
        let size = queue_region_size(cap, 64) as usize;
        let layout = std::alloc::Layout::from_size_align(size, 4096).unwrap();
        // SAFETY: a non-zero size; freed at the end, after the producers are joined.
        let region = hostile_tests::Shared(unsafe { std::alloc::alloc_zeroed(layout) });
        let base = move || region.get();
        // SAFETY: zeroed, page-aligned, big enough, freed only after every view is gone.
        unsafe { Queue::init(base(), cap, 64) };
        let producers: std::vec::Vec<_> = (0..3u8)
            .map(|p| {
                std::thread::spawn(move || {
                    // SAFETY: as above.
                    let q = unsafe { Queue::attach(base(), cap, 64) };
                    for i in 0..PER_PRODUCER {
                        let msg = [p, (i % 251) as u8, (i / 251) as u8];
                        while !q.send(&msg[..1 + (i % 3) as usize]).unwrap() {
                            std::thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        // SAFETY: as above.
        let q = unsafe { Queue::attach(base(), cap, 64) };
        let mut counts = [0u32; 3];
        let mut buf = [0u8; 64];
        while counts.iter().sum::<u32>() < 3 * PER_PRODUCER {
            match q.receive(&mut buf).unwrap() {
                Some(len) => {
                    assert!((1..=3).contains(&len));
                    counts[buf[0] as usize] += 1;
                }
                None => std::thread::yield_now(),
            }
        }
        for t in producers {
            t.join().unwrap();
        }
        assert_eq!(counts, [PER_PRODUCER; 3]);
        assert_eq!(q.receive(&mut buf).unwrap(), None);
        // A scribbled length is caught.
        assert!(q.send(&[1, 2, 3]).unwrap());
        let pos = q.header().dequeue_pos.load(Ordering::SeqCst);
        // SAFETY: writes the length field of the next cell, inside the region.
        unsafe { core::ptr::write_volatile(q.cell(pos).add(8) as *mut u32, 9999) };
        assert_eq!(q.receive(&mut buf), Err(RingError::Corrupted));
        assert!(
            valid_queue(16, 64)
                && !valid_queue(1, 64)
                && !valid_queue(3, 64)
                && !valid_queue(16, 0)
                && !valid_queue(16, 5000)
        );
        // SAFETY: allocated above with this layout; the producers were joined, and `q` (a view
        // without a destructor) is not used after this.
        unsafe { std::alloc::dealloc(base(), layout) };
    }

    #[test]
    fn full_and_empty_and_corruption() {
        let mut r = region();
        let base = r.0.as_mut_ptr();
        // SAFETY: as above.
        let p = unsafe {
            Pipe::init(base, 4096);
            Pipe::attach(base, 4096)
        };
        assert_eq!(p.read(&mut [0u8; 10]).unwrap(), 0);
        assert_eq!(p.write(&[7u8; 5000]).unwrap(), 4096);
        assert_eq!(p.write(&[7u8; 1]).unwrap(), 0);
        assert_eq!(p.writable().unwrap(), 0);
        // A peer scribbles: head far ahead of tail.
        p.header().head.store(1 << 40, Ordering::SeqCst);
        assert_eq!(p.read(&mut [0u8; 10]), Err(RingError::Corrupted));
        assert_eq!(p.write(&[1]), Err(RingError::Corrupted));
        assert!(valid_pipe_capacity(4096) && !valid_pipe_capacity(5000) && !valid_pipe_capacity(1 << 21));
    }
}
