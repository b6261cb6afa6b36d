//! Structure-aware fuzzing of the shared-memory channels of `pvm-ipc`: a region holding a pipe
//! ring and one holding a message queue, driven by a sequence of operations: the pipe's
//! reader and writer, the queue's senders and receivers (several views of one region, as
//! several pVMs would have), peers pausing in the middle of a send or receive and resuming,
//! and hostile writes of arbitrary values anywhere in either region, headers included.
//!
//! Checked: nothing panics and every call returns (libFuzzer's `-timeout` catches a hang);
//! lengths returned stay within the buffers; the readiness peeks agree with the operations
//! (a waiting caller trusts them: a disagreement would make it spin forever); and, while no
//! hostile write has hit a region, its channel behaves exactly like a model of it (bytes in
//! order for the pipe, FIFO messages with full/empty and the states paused peers create for
//! the queue). Once a region was hit, only the first checks apply to it.
#![no_main]

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use pvm_ipc::{
    queue_cell_size, queue_region_size, Pipe, Queue, RingError, PIPE_DATA_OFFSET, QUEUE_CELLS_OFFSET,
};

#[derive(Arbitrary, Debug)]
struct Input {
    /// Pipe capacity: 4 KiB << (this % 2).
    pipe_size: u8,
    /// Queue capacity: 2 << (this % 4).
    queue_cap: u8,
    /// Largest message: 1 + this % 64.
    msg_size: u8,
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Field {
    EnqueuePos,
    DequeuePos,
    Head,
    Tail,
    QueueCapacity,
    QueueMsgSize,
    PipeCapacity,
    Waiters,
}

#[derive(Arbitrary, Debug)]
enum Op {
    PipeWrite {
        len: u16,
        fill: u8,
    },
    PipeRead {
        len: u16,
    },
    PipePeek,
    /// The network backend's way: bytes received straight into the free runs, then committed.
    PipeFillInPlace {
        len: u16,
        fill: u8,
    },
    /// The network backend's way: bytes sent straight from the data runs, then consumed.
    PipeDrainInPlace {
        len: u16,
    },
    Send {
        peer: u8,
        len: u8,
        fill: u8,
    },
    Receive {
        peer: u8,
        short_buf: bool,
    },
    Peek {
        peer: u8,
    },
    /// A sender claims the next cell and pauses before publishing it.
    PauseSend,
    /// The `which`-th paused sender publishes its message.
    ResumeSend {
        which: u8,
        len: u8,
        fill: u8,
    },
    /// A receiver claims the next message and pauses before releasing the cell.
    PauseReceive,
    /// The `which`-th paused receiver releases its cell.
    ResumeReceive {
        which: u8,
    },
    /// Hostile: `width` bytes of `value` at `offset` of the queue's (or pipe's) region.
    Scribble {
        queue: bool,
        offset: u32,
        value: u64,
        width: u8,
    },
    /// Hostile: a header field set to a value near (or far from) its current one.
    ScribbleField {
        field: Field,
        delta: i64,
        far: bool,
    },
    /// Hostile: the sequence number of the cell of the next send (or receive) position plus
    /// `delta`, or of cell `cell` set to `value`.
    ScribbleSeq {
        receiver: bool,
        delta: i16,
    },
    ScribbleCell {
        cell: u16,
        value: u64,
    },
}

/// A zeroed, page-aligned allocation.
struct Region {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl Region {
    fn new(size: usize) -> Region {
        let layout = std::alloc::Layout::from_size_align(size, 4096).expect("layout");
        // SAFETY: a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null());
        Region { ptr, layout }
    }

    fn len(&self) -> usize {
        self.layout.size()
    }

    /// Writes `bytes` at `offset` (clamped into the region), as a hostile peer would.
    fn scribble(&self, offset: usize, bytes: &[u8]) {
        let offset = offset % (self.len() - bytes.len() + 1);
        for (i, b) in bytes.iter().enumerate() {
            // SAFETY: inside the region (clamped above).
            unsafe { std::ptr::write_volatile(self.ptr.add(offset + i), *b) };
        }
    }

    /// The 8-byte word at `offset` (8-aligned, inside).
    fn word(&self, offset: usize) -> &AtomicU64 {
        assert!(offset.is_multiple_of(8) && offset + 8 <= self.len());
        // SAFETY: aligned and inside the region, which outlives the borrow.
        unsafe { &*(self.ptr.add(offset) as *const AtomicU64) }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) };
    }
}

/// What an untouched queue holds: positions `[D, E)`, each a message or a send in progress,
/// and the positions paused receivers still hold.
#[derive(Default)]
struct QueueModel {
    enq: u64,
    deq: u64,
    slots: VecDeque<Option<Vec<u8>>>,
    /// (position, message) of paused receivers.
    held: Vec<(u64, Vec<u8>)>,
    /// Positions of paused senders.
    pending: Vec<u64>,
}

impl QueueModel {
    /// Whether a send would find its cell free: the position a lap earlier was received and
    /// released.
    fn can_send(&self, cap: u64) -> bool {
        let lap_before = self.enq.wrapping_sub(cap);
        self.enq - self.deq < cap && !self.held.iter().any(|(p, _)| *p == lap_before)
    }

    /// The next message, if it is published.
    fn can_receive(&self) -> bool {
        matches!(self.slots.front(), Some(Some(_)))
    }
}

fn offset_of_field(field: Field) -> (bool, usize) {
    use std::mem::offset_of;
    match field {
        Field::EnqueuePos => (true, offset_of!(pvm_ipc::QueueHeader, enqueue_pos)),
        Field::DequeuePos => (true, offset_of!(pvm_ipc::QueueHeader, dequeue_pos)),
        Field::QueueCapacity => (true, offset_of!(pvm_ipc::QueueHeader, capacity)),
        Field::QueueMsgSize => (true, offset_of!(pvm_ipc::QueueHeader, msg_size)),
        Field::Waiters => (true, offset_of!(pvm_ipc::QueueHeader, recv_waiters)),
        Field::Head => (false, offset_of!(pvm_ipc::PipeRing, head)),
        Field::Tail => (false, offset_of!(pvm_ipc::PipeRing, tail)),
        Field::PipeCapacity => (false, offset_of!(pvm_ipc::PipeRing, capacity)),
    }
}

fuzz_target!(|input: Input| run(input));

fn run(input: Input) {
    let pipe_cap = 4096u64 << (input.pipe_size % 2);
    let cap = 2u64 << (input.queue_cap % 4);
    let msg_size = 1 + u64::from(input.msg_size % 64);
    let pipe_region = Region::new(PIPE_DATA_OFFSET + pipe_cap as usize);
    let queue_region = Region::new(queue_region_size(cap, msg_size) as usize);
    // SAFETY: zeroed, aligned regions of the right sizes, which outlive the views (declared
    // after them, dropped before).
    let (pipe, peers) = unsafe {
        Pipe::init(pipe_region.ptr, pipe_cap);
        Queue::init(queue_region.ptr, cap, msg_size);
        let peer = || Queue::attach(queue_region.ptr, cap, msg_size);
        (Pipe::attach(pipe_region.ptr, pipe_cap), [peer(), peer(), peer()])
    };
    let cell = |pos: u64| QUEUE_CELLS_OFFSET + ((pos % cap) * queue_cell_size(msg_size)) as usize;

    let mut pipe_model: VecDeque<u8> = VecDeque::new();
    let mut queue_model = QueueModel::default();
    let (mut pipe_hit, mut queue_hit) = (false, false);

    for op in input.ops {
        match op {
            Op::PipeWrite { len, fill } => {
                let len = usize::from(len) % (2 * pipe_cap as usize + 1);
                let data: Vec<u8> = (0..len).map(|i| fill.wrapping_add(i as u8)).collect();
                let room = pipe.writable();
                let wrote = pipe.write(&data);
                match (room, wrote) {
                    (Ok(room), Ok(n)) => {
                        assert!(n <= len);
                        assert_eq!(n as u64, room.min(len as u64), "write vs writable");
                    }
                    (Err(RingError::Corrupted), Err(RingError::Corrupted)) => {}
                    other => panic!("writable and write disagree: {other:?}"),
                }
                if !pipe_hit {
                    let n = wrote.expect("an untouched pipe is not corrupted");
                    assert_eq!(n as u64, (pipe_cap - pipe_model.len() as u64).min(len as u64));
                    pipe_model.extend(&data[..n]);
                }
            }
            Op::PipeRead { len } => {
                let len = usize::from(len) % (2 * pipe_cap as usize + 1);
                let mut buf = vec![0u8; len];
                let ready = pipe.readable();
                let got = pipe.read(&mut buf);
                match (ready, got) {
                    (Ok(ready), Ok(n)) => {
                        assert!(n <= len);
                        assert_eq!(n as u64, ready.min(len as u64), "read vs readable");
                    }
                    (Err(RingError::Corrupted), Err(RingError::Corrupted)) => {}
                    other => panic!("readable and read disagree: {other:?}"),
                }
                if !pipe_hit {
                    let n = got.expect("an untouched pipe is not corrupted");
                    assert_eq!(n, pipe_model.len().min(len));
                    for b in &buf[..n] {
                        assert_eq!(Some(*b), pipe_model.pop_front(), "bytes out of order");
                    }
                }
            }
            Op::PipePeek => {
                let (r, w) = (pipe.readable(), pipe.writable());
                assert_eq!(r.is_ok(), w.is_ok());
                if let (Ok(r), Ok(w)) = (r, w) {
                    assert_eq!(r + w, pipe_cap);
                }
                if !pipe_hit {
                    assert_eq!(r, Ok(pipe_model.len() as u64));
                }
            }
            Op::PipeFillInPlace { len, fill } => {
                let data_at = pipe_region.ptr as usize + PIPE_DATA_OFFSET;
                let room = pipe.writable();
                match pipe.free_runs() {
                    Ok(runs) => {
                        // What a receive may write is inside the data area, and is the room.
                        for (p, l) in runs {
                            assert!(p as usize >= data_at && p as usize + l <= data_at + pipe_cap as usize);
                        }
                        assert_eq!(Ok((runs[0].1 + runs[1].1) as u64), room);
                        let mut n = usize::from(len).min(runs[0].1 + runs[1].1);
                        let mut written = Vec::new();
                        for (p, l) in runs {
                            let k = n.min(l);
                            for i in 0..k {
                                let b = fill.wrapping_add(written.len() as u8);
                                // SAFETY: inside the run (checked above).
                                unsafe { std::ptr::write_volatile(p.add(i), b) };
                                written.push(b);
                            }
                            n -= k;
                        }
                        let committed = pipe.commit(written.len() as u64);
                        if !pipe_hit {
                            assert_eq!(committed, Ok(()));
                            pipe_model.extend(&written);
                        }
                    }
                    Err(RingError::Corrupted) => assert!(room.is_err(), "free_runs vs writable"),
                }
            }
            Op::PipeDrainInPlace { len } => {
                let data_at = pipe_region.ptr as usize + PIPE_DATA_OFFSET;
                let ready = pipe.readable();
                match pipe.data_runs() {
                    Ok(runs) => {
                        for (p, l) in runs {
                            assert!(p as usize >= data_at && p as usize + l <= data_at + pipe_cap as usize);
                        }
                        assert_eq!(Ok((runs[0].1 + runs[1].1) as u64), ready);
                        let mut n = usize::from(len).min(runs[0].1 + runs[1].1);
                        let mut sent = Vec::new();
                        for (p, l) in runs {
                            let k = n.min(l);
                            for i in 0..k {
                                // SAFETY: inside the run (checked above).
                                sent.push(unsafe { std::ptr::read_volatile(p.add(i)) });
                            }
                            n -= k;
                        }
                        let consumed = pipe.consume(sent.len() as u64);
                        if !pipe_hit {
                            assert_eq!(consumed, Ok(()));
                            for b in &sent {
                                assert_eq!(Some(*b), pipe_model.pop_front(), "bytes out of order");
                            }
                        }
                    }
                    Err(RingError::Corrupted) => assert!(ready.is_err(), "data_runs vs readable"),
                }
            }
            Op::Send { peer, len, fill } => {
                let q = &peers[usize::from(peer) % peers.len()];
                let len = usize::from(len) % (msg_size as usize + 2);
                let msg: Vec<u8> = (0..len).map(|i| fill ^ i as u8).collect();
                let can = q.can_send();
                let sent = q.send(&msg);
                if len as u64 > msg_size {
                    assert_eq!(sent, Err(RingError::Corrupted), "an oversized message");
                } else {
                    assert_eq!(can, sent, "can_send and send disagree");
                }
                if !queue_hit && len as u64 <= msg_size {
                    assert_eq!(sent, Ok(queue_model.can_send(cap)), "send vs model");
                    if sent == Ok(true) {
                        queue_model.enq += 1;
                        queue_model.slots.push_back(Some(msg));
                    }
                }
            }
            Op::Receive { peer, short_buf } => {
                let q = &peers[usize::from(peer) % peers.len()];
                let mut buf = vec![
                    0u8;
                    if short_buf {
                        msg_size as usize / 2
                    } else {
                        msg_size as usize
                    }
                ];
                let can = q.can_receive();
                let got = q.receive(&mut buf);
                match (can, got) {
                    (Ok(true), Ok(Some(n))) => assert!(n <= buf.len() && n as u64 <= msg_size),
                    // A message whose length does not fit (corrupt, or the buffer is short).
                    (Ok(true), Err(RingError::Corrupted)) => {}
                    (Ok(false), Ok(None)) => {}
                    (Err(RingError::Corrupted), Err(RingError::Corrupted)) => {}
                    other => panic!("can_receive and receive disagree: {other:?}"),
                }
                if !queue_hit {
                    assert_eq!(can, Ok(queue_model.can_receive()), "can_receive vs model");
                    if can == Ok(true) {
                        let want = queue_model.slots.pop_front().flatten().expect("published");
                        queue_model.deq += 1;
                        if want.len() <= buf.len() {
                            assert_eq!(got, Ok(Some(want.len())));
                            assert_eq!(&buf[..want.len()], &want[..], "message contents");
                        } else {
                            assert_eq!(got, Err(RingError::Corrupted), "a message over the buffer");
                        }
                    }
                }
            }
            Op::Peek { peer } => {
                let q = &peers[usize::from(peer) % peers.len()];
                let (s, r) = (q.can_send(), q.can_receive());
                if !queue_hit {
                    assert_eq!(s, Ok(queue_model.can_send(cap)));
                    assert_eq!(r, Ok(queue_model.can_receive()));
                }
            }
            Op::PauseSend => {
                // Only what a correct sender does: claim a free cell.
                if queue_hit || !queue_model.can_send(cap) {
                    continue;
                }
                let h = peers[0].header();
                let pos = queue_model.enq;
                assert_eq!(
                    h.enqueue_pos
                        .compare_exchange(pos, pos + 1, Ordering::AcqRel, Ordering::Acquire),
                    Ok(pos)
                );
                queue_model.enq += 1;
                queue_model.slots.push_back(None);
                queue_model.pending.push(pos);
            }
            Op::ResumeSend { which, len, fill } => {
                if queue_hit || queue_model.pending.is_empty() {
                    continue;
                }
                let pos = queue_model
                    .pending
                    .remove(usize::from(which) % queue_model.pending.len());
                let len = usize::from(len) % (msg_size as usize + 1);
                let msg: Vec<u8> = (0..len).map(|i| fill ^ i as u8).collect();
                let at = cell(pos);
                queue_region.scribble(at + 8, &(len as u32).to_ne_bytes());
                queue_region.scribble(at + 16, &msg);
                queue_region.word(at).store(pos + 1, Ordering::Release);
                let slot = (pos - queue_model.deq) as usize;
                queue_model.slots[slot] = Some(msg);
            }
            Op::PauseReceive => {
                if queue_hit || !queue_model.can_receive() {
                    continue;
                }
                let h = peers[0].header();
                let pos = queue_model.deq;
                assert_eq!(
                    h.dequeue_pos
                        .compare_exchange(pos, pos + 1, Ordering::AcqRel, Ordering::Acquire),
                    Ok(pos)
                );
                let msg = queue_model.slots.pop_front().flatten().expect("published");
                queue_model.deq += 1;
                queue_model.held.push((pos, msg));
            }
            Op::ResumeReceive { which } => {
                if queue_hit || queue_model.held.is_empty() {
                    continue;
                }
                let (pos, msg) = queue_model
                    .held
                    .remove(usize::from(which) % queue_model.held.len());
                let at = cell(pos);
                // The paused receiver reads what it claimed, then releases the cell.
                let mut len = [0u8; 4];
                for (i, b) in len.iter_mut().enumerate() {
                    // SAFETY: inside the cell, inside the region.
                    *b = unsafe { std::ptr::read_volatile(queue_region.ptr.add(at + 8 + i)) };
                }
                assert_eq!(u32::from_ne_bytes(len) as usize, msg.len());
                queue_region.word(at).store(pos + cap, Ordering::Release);
            }
            Op::Scribble {
                queue,
                offset,
                value,
                width,
            } => {
                let width = [1, 2, 4, 8][usize::from(width % 4)];
                let bytes = &value.to_le_bytes()[..width];
                if queue {
                    queue_region.scribble(offset as usize, bytes);
                    queue_hit = true;
                } else {
                    pipe_region.scribble(offset as usize, bytes);
                    pipe_hit = true;
                }
            }
            Op::ScribbleField { field, delta, far } => {
                let (queue, offset) = offset_of_field(field);
                let region = if queue { &queue_region } else { &pipe_region };
                let w = region.word(offset & !7);
                let delta = if far { delta as u64 } else { (delta % 64) as u64 };
                w.store(w.load(Ordering::Relaxed).wrapping_add(delta), Ordering::Relaxed);
                if queue {
                    queue_hit = true;
                } else {
                    pipe_hit = true;
                }
            }
            Op::ScribbleSeq { receiver, delta } => {
                let h = peers[0].header();
                let (pos, expect) = if receiver {
                    let p = h.dequeue_pos.load(Ordering::Relaxed);
                    (p, p.wrapping_add(1))
                } else {
                    let p = h.enqueue_pos.load(Ordering::Relaxed);
                    (p, p)
                };
                queue_region
                    .word(cell(pos))
                    .store(expect.wrapping_add(delta as u64), Ordering::Relaxed);
                queue_hit = true;
            }
            Op::ScribbleCell { cell: c, value } => {
                queue_region
                    .word(cell(u64::from(c)))
                    .store(value, Ordering::Relaxed);
                queue_hit = true;
            }
        }
    }
}
