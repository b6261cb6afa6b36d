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
    _pad0: [u64; 6],
    /// Bytes written since the pipe was created.
    pub head: AtomicU64,
    _pad1: [u64; 7],
    /// Bytes read since the pipe was created.
    pub tail: AtomicU64,
    _pad2: [u64; 7],
    /// The reader sleeps in the monitor (or is about to): a writer must notify.
    pub reader_sleeping: AtomicU32,
    /// The writer sleeps in the monitor (or is about to): a reader must notify.
    pub writer_sleeping: AtomicU32,
}

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

    /// Copies up to `buf.len()` bytes out of the ring; returns how many (0 when empty).
    pub fn read(&self, buf: &mut [u8]) -> Result<usize, RingError> {
        let (_, tail, fill) = self.indices()?;
        let n = (fill as usize).min(buf.len());
        if n == 0 {
            return Ok(0);
        }
        let at = (tail % self.capacity) as usize;
        let first = n.min(self.capacity as usize - at);
        // SAFETY: `at + first <= capacity` and `n - first < capacity`: both copies stay in the
        // data area; the acquire load of `head` ordered the writer's bytes before them.
        unsafe {
            core::ptr::copy_nonoverlapping(self.data.add(at), buf.as_mut_ptr(), first);
            core::ptr::copy_nonoverlapping(self.data, buf.as_mut_ptr().add(first), n - first);
        }
        self.ring()
            .tail
            .store(tail.wrapping_add(n as u64), Ordering::SeqCst);
        Ok(n)
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
        for round in 0..100 {
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
