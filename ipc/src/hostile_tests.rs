//! The queue and the pipe against hostile peers: every value a peer can write into the region
//! gives a legitimate answer or `Corrupted`, promptly, and the readiness peeks agree with the
//! operations (a waiting caller that trusted a peek which disagreed would spin forever).
extern crate std;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use std::vec::Vec;

use super::*;

/// A zeroed, page-aligned region, freed on drop.
struct Region {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl Region {
    fn new(size: usize) -> Region {
        let layout = std::alloc::Layout::from_size_align(size, 4096).unwrap();
        // SAFETY: a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null());
        Region { ptr, layout }
    }

    fn queue(cap: u64, msg: u64) -> (Region, Queue) {
        let r = Region::new(queue_region_size(cap, msg) as usize);
        // SAFETY: zeroed, aligned, big enough; the tests use the view only while they hold
        // the region.
        let q = unsafe {
            Queue::init(r.ptr, cap, msg);
            Queue::attach(r.ptr, cap, msg)
        };
        (r, q)
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) };
    }
}

const CAP: u64 = 4;
const MSG: u64 = 32;

/// Runs `f`, failing if it takes more than a second (a livelock or an unbounded loop).
fn prompt<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let v = f();
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{what} took {:?}",
        start.elapsed()
    );
    v
}

/// The peeks agree with the operations (single-threaded: nothing moves in between), and both
/// return promptly. Returns what `send` and `receive` gave. Old code had no peek; its runtime
/// predicate compared the header indexes, which disagreed with the cells.
fn check_agreement(q: &Queue) -> (Result<bool, RingError>, Result<Option<usize>, RingError>) {
    let can = prompt("can_send", || q.can_send());
    let sent = prompt("send", || q.send(b"probe"));
    match can {
        Ok(true) => assert_eq!(sent, Ok(true), "can_send said yes"),
        Ok(false) => assert_eq!(sent, Ok(false), "can_send said full"),
        Err(e) => assert_eq!(sent, Err(e)),
    }
    let can = prompt("can_receive", || q.can_receive());
    let mut buf = [0u8; MSG as usize];
    let got = prompt("receive", || q.receive(&mut buf));
    match can {
        // A message is there; its length field may still be corrupt.
        Ok(true) => assert!(matches!(got, Ok(Some(_)) | Err(RingError::Corrupted)), "{got:?}"),
        Ok(false) => assert_eq!(got, Ok(None), "can_receive said empty"),
        Err(e) => assert_eq!(got, Err(e)),
    }
    (sent, got)
}

#[test]
fn queue_peeks_follow_full_and_empty_across_laps() {
    let (_r, q) = Region::queue(CAP, MSG);
    let mut buf = [0u8; MSG as usize];
    for lap in 0..10u8 {
        assert_eq!(q.can_receive(), Ok(false));
        assert_eq!(q.receive(&mut buf), Ok(None));
        for i in 0..CAP as u8 {
            assert_eq!(q.can_send(), Ok(true));
            assert_eq!(q.send(&[lap, i]), Ok(true));
        }
        assert_eq!(q.can_send(), Ok(false));
        assert_eq!(q.send(b"x"), Ok(false));
        for i in 0..CAP as u8 {
            assert_eq!(q.can_receive(), Ok(true));
            assert_eq!(q.receive(&mut buf), Ok(Some(2)));
            assert_eq!(&buf[..2], &[lap, i]);
        }
    }
}

#[test]
fn capacity_one_is_refused() {
    // One cell cannot tell "full" from "free next lap".
    assert!(!valid_queue(1, 8) && valid_queue(2, 8) && !valid_queue(0, 8));
    assert!(!valid_queue(2048, 8) && valid_queue(1024, 8));
}

/// Every value of the next send cell's sequence number, relative to the position: only the
/// states a correct peer produces are answered as free/full, everything else is corruption.
#[test]
fn every_sender_cell_sequence_is_free_full_or_corrupted() {
    for start in [0u64, 5, u64::MAX - 1] {
        for dif in -40i64..40 {
            let (_r, q) = Region::queue(CAP, MSG);
            for h in [&q.header().enqueue_pos, &q.header().dequeue_pos] {
                h.store(start, Ordering::SeqCst);
            }
            for k in 0..CAP {
                let p = start.wrapping_add(k);
                q.cell_seq(p).store(p, Ordering::SeqCst);
            }
            q.cell_seq(start)
                .store(start.wrapping_add(dif as u64), Ordering::SeqCst);
            let want = match dif {
                0 => Ok(true),
                // Filled one lap earlier (or being taken), or claimed by a sender one lap
                // earlier and not yet published.
                d if d == 1 - CAP as i64 || d == -(CAP as i64) => Ok(false),
                _ => Err(RingError::Corrupted),
            };
            assert_eq!(q.can_send(), want, "start {start} dif {dif}");
            assert_eq!(check_agreement(&q).0, want, "start {start} dif {dif}");
        }
    }
}

/// The same for the next receive cell.
#[test]
fn every_receiver_cell_sequence_is_message_empty_or_corrupted() {
    for start in [0u64, 5, u64::MAX - 1] {
        for dif in -40i64..40 {
            let (_r, q) = Region::queue(CAP, MSG);
            let h = q.header();
            // One message at `start` (a sender at `start` published it).
            h.dequeue_pos.store(start, Ordering::SeqCst);
            h.enqueue_pos.store(start.wrapping_add(1), Ordering::SeqCst);
            for k in 1..CAP {
                let p = start.wrapping_add(k);
                q.cell_seq(p).store(p, Ordering::SeqCst);
            }
            // SAFETY: the length field of the cell, inside the region.
            unsafe { core::ptr::write_volatile(q.cell(start).add(8) as *mut u32, 3) };
            let expect = start.wrapping_add(1);
            q.cell_seq(start)
                .store(expect.wrapping_add(dif as u64), Ordering::SeqCst);
            let want = match dif {
                0 => Ok(true),
                // Empty (or a sender claimed it and has not published), or a receiver one lap
                // earlier has not released it.
                -1 => Ok(false),
                d if d == -(CAP as i64) => Ok(false),
                _ => Err(RingError::Corrupted),
            };
            assert_eq!(q.can_receive(), want, "start {start} dif {dif}");
            let mut buf = [0u8; MSG as usize];
            let got = prompt("receive", || q.receive(&mut buf));
            assert_eq!(got, want.map(|m| m.then_some(3)), "start {start} dif {dif}");
        }
    }
}

/// The exact state that livelocked the runtime: a cell sequence no peer writes, with the
/// header indexes saying "room" (or "a message"). The peek must not say ready.
#[test]
fn a_scribbled_cell_is_corrupted_not_ready() {
    let (_r, q) = Region::queue(CAP, MSG);
    q.cell_seq(0).store(0xdead_beef_dead_beef, Ordering::SeqCst);
    assert_eq!(q.send(b"a"), Err(RingError::Corrupted));
    assert_eq!(q.can_send(), Err(RingError::Corrupted));

    let (_r, q) = Region::queue(CAP, MSG);
    assert_eq!(q.send(b"a"), Ok(true));
    q.cell_seq(0).store(0xdead_beef_dead_beef, Ordering::SeqCst);
    assert_eq!(q.receive(&mut [0u8; MSG as usize]), Err(RingError::Corrupted));
    assert_eq!(q.can_receive(), Err(RingError::Corrupted));
}

#[test]
fn scribbled_indexes_are_corrupted_or_legitimate_and_prompt() {
    const FAR: u64 = 1 << 40;
    for (which, delta, corrupt) in [
        ("enqueue_pos", FAR, true),
        ("enqueue_pos", FAR.wrapping_neg(), true),
        ("enqueue_pos", 2 * CAP, true),
        ("enqueue_pos", 5u64.wrapping_neg(), true),
        ("dequeue_pos", FAR, true),
        ("dequeue_pos", FAR.wrapping_neg(), true),
        ("dequeue_pos", 2 * CAP, true),
        ("dequeue_pos", 5u64.wrapping_neg(), true),
        // Near moves land on states a correct peer could also produce (cells claimed by
        // paused peers): legitimate answers, but prompt ones.
        ("enqueue_pos", 1, false),
        ("dequeue_pos", 1, false),
        ("enqueue_pos", 1u64.wrapping_neg(), false),
    ] {
        let (_r, q) = Region::queue(CAP, MSG);
        let mut buf = [0u8; MSG as usize];
        // Some history: two laps, then two messages waiting.
        for _ in 0..2 * CAP {
            assert_eq!(q.send(b"hi"), Ok(true));
            assert_eq!(q.receive(&mut buf), Ok(Some(2)));
        }
        assert_eq!(q.send(b"m1"), Ok(true));
        assert_eq!(q.send(b"m2"), Ok(true));
        let h = q.header();
        let index = if which == "enqueue_pos" {
            &h.enqueue_pos
        } else {
            &h.dequeue_pos
        };
        index.fetch_add(delta, Ordering::SeqCst);
        // A few rounds: each call returns at once and the peeks agree with the operations.
        let mut saw_corrupted = false;
        for _ in 0..3 * CAP {
            let (s, r) = check_agreement(&q);
            saw_corrupted |= s.is_err() || r.is_err();
        }
        if corrupt {
            assert!(saw_corrupted, "{which} moved by {delta:#x}");
        }
    }
}

#[test]
fn a_scribbled_length_is_corrupted_and_the_queue_goes_on() {
    let (_r, q) = Region::queue(CAP, MSG);
    let mut buf = [0u8; MSG as usize];
    for bad in [MSG as u32 + 1, u32::MAX, 1 << 31] {
        assert_eq!(q.send(b"abc"), Ok(true));
        assert_eq!(q.send(b"next"), Ok(true));
        let pos = q.header().dequeue_pos.load(Ordering::SeqCst);
        // SAFETY: the length field of the next cell, inside the region.
        unsafe { core::ptr::write_volatile(q.cell(pos).add(8) as *mut u32, bad) };
        assert_eq!(q.receive(&mut buf), Err(RingError::Corrupted));
        assert_eq!(q.receive(&mut buf), Ok(Some(4)));
        assert_eq!(&buf[..4], b"next");
    }
    // A length that fits the queue but not the caller's buffer.
    assert_eq!(q.send(&[7u8; 20]), Ok(true));
    assert_eq!(q.receive(&mut [0u8; 10]), Err(RingError::Corrupted));
}

#[test]
fn a_changed_geometry_in_the_header_does_not_change_the_view() {
    let (_r, q) = Region::queue(CAP, MSG);
    let h = q.header();
    h.capacity.store(1 << 40, Ordering::SeqCst);
    h.msg_size.store(u64::MAX, Ordering::SeqCst);
    h.magic.store(0, Ordering::SeqCst);
    let mut buf = [0u8; MSG as usize];
    for round in 0..3 * CAP as u8 {
        assert_eq!(q.send(&[round; MSG as usize]), Ok(true));
        assert_eq!(q.send(&[round; MSG as usize + 1]), Err(RingError::Corrupted));
        assert_eq!(q.receive(&mut buf), Ok(Some(MSG as usize)));
        assert_eq!(buf, [round; MSG as usize]);
    }
    for _ in 0..CAP {
        assert_eq!(q.send(b"f"), Ok(true));
    }
    assert_eq!((q.can_send(), q.send(b"f")), (Ok(false), Ok(false)));
}

/// Claims the next cell of the side advancing `index` without finishing the operation: a
/// peer paused in the middle of a send or receive.
fn claim_and_pause(q: &Queue, receiver: bool) -> u64 {
    let h = q.header();
    let index = if receiver { &h.dequeue_pos } else { &h.enqueue_pos };
    q.claim(index, receiver).unwrap().expect("a cell to claim")
}

#[test]
fn a_sender_paused_mid_send_reads_as_empty_then_full_not_corrupted() {
    let (_r, q) = Region::queue(CAP, MSG);
    let mut buf = [0u8; MSG as usize];
    q.send(b"x").unwrap();
    q.receive(&mut buf).unwrap();
    let paused = claim_and_pause(&q, false);
    // Receivers wait for the paused sender's message, even once later ones are in.
    assert_eq!((q.can_receive(), q.receive(&mut buf)), (Ok(false), Ok(None)));
    for i in 1..CAP as u8 {
        assert_eq!(q.send(&[i]), Ok(true));
        assert_eq!((q.can_receive(), q.receive(&mut buf)), (Ok(false), Ok(None)));
    }
    // One lap later senders reach the held cell: full.
    assert_eq!((q.can_send(), q.send(b"y")), (Ok(false), Ok(false)));
    // The sender resumes: everything comes out in order.
    // SAFETY: the paused sender's cell, ours to fill.
    unsafe { core::ptr::write_volatile(q.cell(paused).add(8) as *mut u32, 1) };
    // SAFETY: as above.
    unsafe { *q.cell(paused).add(16) = 0 };
    q.cell_seq(paused).store(paused + 1, Ordering::Release);
    for i in 0..CAP as u8 {
        assert_eq!(q.receive(&mut buf), Ok(Some(1)));
        assert_eq!(buf[0], i);
    }
    assert_eq!(q.can_send(), Ok(true));
}

#[test]
fn a_receiver_paused_mid_receive_reads_as_full_then_empty_not_corrupted() {
    let (_r, q) = Region::queue(CAP, MSG);
    let mut buf = [0u8; MSG as usize];
    for i in 0..CAP as u8 {
        q.send(&[i]).unwrap();
    }
    let paused = claim_and_pause(&q, true);
    for i in 1..CAP as u8 {
        assert_eq!(q.receive(&mut buf), Ok(Some(1)));
        assert_eq!(buf[0], i);
    }
    // The header indexes say there is room for CAP - 1 messages, but the next cell is still
    // the paused receiver's: full (the old runtime predicate said "room" here and spun).
    let h = q.header();
    let used = h.enqueue_pos.load(Ordering::SeqCst) - h.dequeue_pos.load(Ordering::SeqCst);
    assert_eq!(used, 0);
    assert_eq!((q.can_send(), q.send(b"y")), (Ok(false), Ok(false)));
    // And one lap later the receivers reach it too: empty.
    assert_eq!((q.can_receive(), q.receive(&mut buf)), (Ok(false), Ok(None)));
    // The receiver resumes and releases the cell.
    q.cell_seq(paused).store(paused + CAP, Ordering::Release);
    assert_eq!((q.can_send(), q.send(b"y")), (Ok(true), Ok(true)));
    assert_eq!(q.receive(&mut buf), Ok(Some(1)));
}

/// A small xorshift generator (no dependencies in this crate).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A hostile thread writes random bytes and words anywhere in the region while a sender and a
/// receiver (and a pipe's writer and reader) run: every call returns, nothing panics, and the
/// whole test finishes (a watchdog fails it otherwise).
///
/// Not under Miri: a peer that writes bytes where a side reads words, or payload bytes while a
/// side copies them, is another process in a real system, but in one Rust program it is a data
/// race (mixed-size or non-atomic) by definition, and Miri stops at the first one. Miri runs
/// [`one_side_against_a_hostile_peer_stays_in_its_region`] instead.
#[test]
#[cfg_attr(
    miri,
    ignore = "a hostile peer inside the program races by definition: see below"
)]
fn operations_return_while_a_hostile_thread_scribbles() {
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for seed in 1..=4u64 {
            scribble_run(seed, Duration::from_millis(300), Hostile::Anything);
        }
        let _ = done_tx.send(());
    });
    match done_rx.recv_timeout(Duration::from_secs(60)) {
        Ok(()) => {}
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("the operations under a hostile writer did not finish: a hang or livelock")
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("a thread of the run panicked"),
    }
}

/// The same attack in the form the Rust memory model (and so Miri) can express: the hostile
/// peer writes the header's and the cells' control words, each with its own size, and it is
/// the only other side (against a sender and a pipe writer, then a receiver and a pipe
/// reader), so payload bytes are never copied by two parties at once. Under Miri this checks
/// that no value the peer writes leads a side to an access outside its region, a misaligned
/// or dangling reference, or a race on the header (forming `&PipeRing` once counted as a read
/// of its plain padding, which the peer writes).
#[test]
fn one_side_against_a_hostile_peer_stays_in_its_region() {
    for (seed, receiving) in [(1u64, false), (2, true), (3, false), (4, true)] {
        scribble_run(
            seed,
            Duration::from_millis(100),
            Hostile::ControlWords { receiving },
        );
    }
}

/// Calls a run makes under Miri (which runs until then, not for a time).
const MIRI_CALLS: u64 = 300;

/// How the hostile peer of [`scribble_run`] writes, and against whom.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Hostile {
    /// Any byte or word anywhere, against both sides of both channels.
    Anything,
    /// Header and cell-sequence words only, each with its own size, against one side of each
    /// channel: receivers (`receiving`) or senders.
    ControlWords { receiving: bool },
}

/// A region's address, shared by the threads of a run (the region outlives them all).
#[derive(Clone, Copy)]
pub(super) struct Shared(pub(super) *mut u8);

impl Shared {
    /// The address (a method, so that a closure captures the whole `Shared`, which is `Send`).
    pub(super) fn get(self) -> *mut u8 {
        self.0
    }
}

// SAFETY: only an address; what is done through it is atomic, or ordered by the protocols.
unsafe impl Send for Shared {}
// SAFETY: as above.
unsafe impl Sync for Shared {}

/// One hostile write: a word or a byte, at an offset and of a value chosen to hit the places
/// and values that matter most often.
fn scribble_once(rng: &mut Rng, queue: (Shared, usize), pipe: (Shared, usize)) {
    let r = rng.next();
    let (base, size) = if r & 1 == 0 { queue } else { pipe };
    let offset = match (r >> 1) % 4 {
        // The header's words.
        0 => rng.next() as usize % 256,
        // The first cells' words (the start of a pipe's data).
        1 => QUEUE_CELLS_OFFSET + rng.next() as usize % 384,
        _ => rng.next() as usize % size,
    } & !7;
    assert!(offset + 8 <= size);
    // SAFETY: an aligned word inside the region.
    let word = unsafe { &*(base.get().add(offset) as *const AtomicU64) };
    let value = match (r >> 4) % 4 {
        0 => rng.next(),
        1 => rng.next() % 64,
        // Near what is there already: plausible-looking values.
        _ => word
            .load(Ordering::Relaxed)
            .wrapping_add(rng.next() % 16)
            .wrapping_sub(8),
    };
    if r & 0x100 == 0 {
        word.store(value, Ordering::Relaxed);
    } else {
        let at = offset + (r >> 9) as usize % 8;
        // SAFETY: a byte inside the region.
        unsafe { &*(base.get().add(at) as *const AtomicU8) }.store(value as u8, Ordering::Relaxed);
    }
    if r.is_multiple_of(64) {
        std::thread::yield_now();
    }
}

/// One hostile write of a control word with that word's own size: a header field (or the
/// atomic padding between them), or a cell's sequence number.
fn scribble_control_word(rng: &mut Rng, queue: Shared, cap: u64, cell_size: u64, pipe: Shared) {
    let r = rng.next();
    let value = match (r >> 8) % 4 {
        0 => rng.next(),
        1 => rng.next() % 64,
        _ => 2,
    };
    // Header words: 8 bytes below 192 in both headers; 4 above in a pipe's, 4 up to 208 and
    // 8 after that in a queue's (see the size assertions on the headers).
    let (base, offset, wide) = match r % 4 {
        0 => {
            let at = 4 * (rng.next() as usize % 64);
            (pipe, at & if at < 192 { !7 } else { !3 }, at < 192)
        }
        1 => {
            let at = 4 * (rng.next() as usize % 64);
            let wide = !(192..208).contains(&at);
            (queue, at & if wide { !7 } else { !3 }, wide)
        }
        _ => {
            let cell = rng.next() % cap;
            (queue, QUEUE_CELLS_OFFSET + (cell * cell_size) as usize, true)
        }
    };
    let near = (r >> 16) & 1 == 1;
    if wide {
        // SAFETY: an 8-byte atomic field of the header, or a cell's sequence number.
        let word = unsafe { &*(base.get().add(offset) as *const AtomicU64) };
        let v = if near {
            word.load(Ordering::Relaxed)
                .wrapping_add(value % 16)
                .wrapping_sub(8)
        } else {
            value
        };
        word.store(v, Ordering::Relaxed);
    } else {
        // SAFETY: a 4-byte atomic field of the header.
        let word = unsafe { &*(base.get().add(offset) as *const AtomicU32) };
        word.store(value as u32, Ordering::Relaxed);
    }
    if r.is_multiple_of(16) {
        std::thread::yield_now();
    }
}

fn scribble_run(seed: u64, run: Duration, hostile: Hostile) {
    let cap = 8u64;
    let msg = 24u64;
    let qsize = queue_region_size(cap, msg) as usize;
    let psize = PIPE_DATA_OFFSET + 4096;
    // Threads hold raw addresses: the regions are freed when this returns, after every thread
    // of the run was joined.
    let (qregion, pregion) = (Region::new(qsize), Region::new(psize));
    let (qbase, pbase) = (Shared(qregion.ptr), Shared(pregion.ptr));
    // SAFETY: zeroed, aligned, big enough, freed only after the threads are gone.
    unsafe {
        Queue::init(qbase.get(), cap, msg);
        Pipe::init(pbase.get(), 4096);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let moved = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    // The hostile peer: mostly cells and indexes, sometimes anything. With odd seeds it writes
    // without a pause; with even ones in bursts, letting the channels work in between, and
    // now and then it resets both channels (with plain writes too) to start over.
    {
        let stop = stop.clone();
        threads.push(std::thread::spawn(move || {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let bursty = seed.is_multiple_of(2);
            let mut bursts = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let writes = if bursty {
                    let quiet = Instant::now();
                    let pause = Duration::from_micros(rng.next() % 400);
                    while quiet.elapsed() < pause {
                        core::hint::spin_loop();
                    }
                    bursts += 1;
                    if bursts.is_multiple_of(16) {
                        // SAFETY: the run's regions; a reset is writes like any other.
                        let (q, p) = unsafe {
                            (
                                Queue::attach(qbase.get(), cap, msg),
                                Pipe::attach(pbase.get(), 4096),
                            )
                        };
                        for w in [&q.header().enqueue_pos, &q.header().dequeue_pos] {
                            w.store(0, Ordering::SeqCst);
                        }
                        for k in 0..cap {
                            q.cell_seq(k).store(k, Ordering::SeqCst);
                        }
                        p.header().head.store(0, Ordering::SeqCst);
                        p.header().tail.store(0, Ordering::SeqCst);
                        continue;
                    }
                    1 + rng.next() % 3
                } else {
                    1
                };
                for _ in 0..writes {
                    match hostile {
                        Hostile::Anything => scribble_once(&mut rng, (qbase, qsize), (pbase, psize)),
                        Hostile::ControlWords { .. } => {
                            scribble_control_word(&mut rng, qbase, cap, queue_cell_size(msg), pbase)
                        }
                    }
                }
            }
        }));
    }
    let spawn_loop = |f: fn(Shared, &mut Rng) -> bool, base: Shared| {
        let stop = stop.clone();
        let calls = calls.clone();
        let moved = moved.clone();
        std::thread::spawn(move || {
            let mut rng = Rng((seed ^ base.get().addr() as u64) | 1);
            while !stop.load(Ordering::Relaxed) {
                let start = Instant::now();
                if f(base, &mut rng) {
                    moved.fetch_add(1, Ordering::Relaxed);
                }
                // Each call is bounded: MAX_RETRIES of a few loads, far below this.
                assert!(
                    start.elapsed() < Duration::from_secs(5),
                    "a call took {:?}",
                    start.elapsed()
                );
                calls.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    // Messages and writes are small under Miri (which runs each byte's copy step by step).
    fn len(rng: &mut Rng, max: usize) -> usize {
        rng.next() as usize % if cfg!(miri) { max.min(64) } else { max }
    }
    fn sender(base: Shared, rng: &mut Rng) -> bool {
        // SAFETY: the run's queue region.
        let q = unsafe { Queue::attach(base.get(), 8, 24) };
        let len = rng.next() as usize % 25;
        let _ = q.can_send();
        q.send(&[0x5a; 24][..len]) == Ok(true)
    }
    fn receiver(base: Shared, _: &mut Rng) -> bool {
        // SAFETY: the run's queue region.
        let q = unsafe { Queue::attach(base.get(), 8, 24) };
        let _ = q.can_receive();
        let mut buf = [0u8; 24];
        let got = q.receive(&mut buf);
        assert!(!matches!(got, Ok(Some(n)) if n > 24));
        matches!(got, Ok(Some(_)))
    }
    fn writer(base: Shared, rng: &mut Rng) -> bool {
        // SAFETY: the run's pipe region.
        let p = unsafe { Pipe::attach(base.get(), 4096) };
        let len = len(rng, 5000);
        let _ = p.writable();
        p.write(&std::vec![0xa5u8; len]).is_ok_and(|n| n > 0)
    }
    fn reader(base: Shared, rng: &mut Rng) -> bool {
        // SAFETY: the run's pipe region.
        let p = unsafe { Pipe::attach(base.get(), 4096) };
        let mut buf = std::vec![0u8; len(rng, 5000)];
        let _ = p.readable();
        let n = p.read(&mut buf);
        assert!(n.is_err() || n.is_ok_and(|n| n <= buf.len()));
        n.is_ok_and(|n| n > 0)
    }
    match hostile {
        Hostile::Anything => {
            threads.push(spawn_loop(sender, qbase));
            threads.push(spawn_loop(receiver, qbase));
            threads.push(spawn_loop(writer, pbase));
            threads.push(spawn_loop(reader, pbase));
        }
        Hostile::ControlWords { receiving: false } => {
            threads.push(spawn_loop(sender, qbase));
            threads.push(spawn_loop(writer, pbase));
        }
        Hostile::ControlWords { receiving: true } => {
            threads.push(spawn_loop(receiver, qbase));
            threads.push(spawn_loop(reader, pbase));
        }
    }
    if cfg!(miri) {
        // Miri's clock is virtual (it ticks with the steps interpreted): count calls instead.
        while calls.load(Ordering::Relaxed) <= MIRI_CALLS {
            std::thread::yield_now();
        }
    } else {
        std::thread::sleep(run);
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("no panic");
    }
    std::eprintln!(
        "seed {seed}: {} calls, {} moved data",
        calls.load(Ordering::Relaxed),
        moved.load(Ordering::Relaxed)
    );
    assert!(
        calls.load(Ordering::Relaxed) > MIRI_CALLS.min(100),
        "the operations ran"
    );
    drop((qregion, pregion));
}
