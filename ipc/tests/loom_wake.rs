//! Loom models of the wake-up protocol every pipe end keeps (pvm-runtime's `transfer`, and the
//! network backend for its side of a connection): an end that finds nothing to do raises its
//! `*_sleeping` flag, reads its futex word, looks at the ring once more, and only then sleeps
//! while the word is unchanged; the other end, after moving its index, bumps the word and wakes
//! the sleeper if it sees the flag. Loom runs every interleaving the memory model allows: the
//! reader never stays asleep with a byte in the ring (loom reports a deadlock otherwise); and the
//! same for a message queue's receiver. (Without the waking side's fence loom finds the lost
//! wake-up: it treats SeqCst accesses as AcqRel, so the fence is what the proof rests on, and the
//! code has it.)
//!
//! The model keeps the protocol's orderings (SeqCst index stores and flag stores, a SeqCst
//! fence between the flag and the second look on the sleeping side, and between the index store
//! and the flag load on the waking side) and replaces the futex by a mutex and a condition
//! variable with the futex's contract: `wait(seq)` sleeps only while the word holds `seq`.
// Not under Miri: loom runs its own scheduler over every interleaving, a job Miri cannot speed
// up (Miri checks the real ring and queue code instead: `.ci/run`).
#![cfg(not(miri))]

use loom::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering::SeqCst};
use loom::sync::{Arc, Condvar, Mutex};
use loom::thread;

/// A futex word and its waiters.
struct Futex {
    word: AtomicU32,
    lock: Mutex<()>,
    cv: Condvar,
}

impl Futex {
    fn new() -> Futex {
        Futex {
            word: AtomicU32::new(0),
            lock: Mutex::new(()),
            cv: Condvar::new(),
        }
    }

    /// FUTEX_WAIT: sleeps while the word holds `seq`.
    fn wait(&self, seq: u32) {
        let mut g = self.lock.lock().unwrap();
        while self.word.load(SeqCst) == seq {
            g = self.cv.wait(g).unwrap();
        }
    }

    /// The waker's side: bump, then FUTEX_WAKE.
    fn bump_and_wake(&self) {
        let _g = self.lock.lock().unwrap();
        self.word.fetch_add(1, SeqCst);
        self.cv.notify_all();
    }
}

/// The shared part of a ring that the protocol uses.
struct Ring {
    head: AtomicU64,
    tail: AtomicU64,
    reader_sleeping: AtomicU32,
    data_seq: Futex,
}

/// The reader's `transfer`: take one byte, sleeping as the protocol says when there is none.
fn read_one(ring: &Ring) {
    loop {
        let (head, tail) = (ring.head.load(SeqCst), ring.tail.load(SeqCst));
        if head > tail {
            ring.tail.store(tail + 1, SeqCst);
            return;
        }
        ring.reader_sleeping.store(1, SeqCst);
        let seq = ring.data_seq.word.load(SeqCst);
        fence(SeqCst);
        if ring.head.load(SeqCst) > ring.tail.load(SeqCst) {
            ring.reader_sleeping.store(0, SeqCst);
            continue;
        }
        ring.data_seq.wait(seq);
        ring.reader_sleeping.store(0, SeqCst);
    }
}

/// The writer's `transfer`: publish one byte, then wake a sleeping reader.
fn write_one(ring: &Ring) {
    let head = ring.head.load(SeqCst);
    ring.head.store(head + 1, SeqCst);
    // Pairs with the reader's fence: either the reader's second look sees the byte, or this
    // load sees its flag. (Loom treats SeqCst accesses as AcqRel, but models fences.)
    fence(SeqCst);
    if ring.reader_sleeping.load(SeqCst) != 0 {
        ring.data_seq.bump_and_wake();
    }
}

#[test]
fn a_reader_is_never_left_asleep_with_bytes_in_the_ring() {
    loom::model(|| {
        let ring = Arc::new(Ring {
            head: AtomicU64::new(0),
            tail: AtomicU64::new(0),
            reader_sleeping: AtomicU32::new(0),
            data_seq: Futex::new(),
        });
        let writer = {
            let ring = ring.clone();
            thread::spawn(move || {
                write_one(&ring);
                write_one(&ring);
            })
        };
        read_one(&ring);
        read_one(&ring);
        writer.join().unwrap();
        assert_eq!(ring.tail.load(SeqCst), 2);
    });
}

/// The queue's side of the same protocol (pvm-runtime's `MessageQueue::sleep` and `notify`): a
/// count of sleepers instead of a flag, a cell published with release instead of an index.
struct Side {
    published: AtomicU64,
    taken: AtomicU64,
    waiters: AtomicU32,
    seq: Futex,
}

fn receive_one(q: &Side) {
    loop {
        let (p, t) = (q.published.load(SeqCst), q.taken.load(SeqCst));
        if p > t {
            q.taken.store(t + 1, SeqCst);
            return;
        }
        q.waiters.fetch_add(1, SeqCst);
        let seq = q.seq.word.load(SeqCst);
        fence(SeqCst);
        let ready = q.published.load(loom::sync::atomic::Ordering::Acquire) > q.taken.load(SeqCst);
        if !ready {
            q.seq.wait(seq);
        }
        q.waiters.fetch_sub(1, SeqCst);
    }
}

fn send_one(q: &Side) {
    let p = q.published.load(SeqCst);
    q.published.store(p + 1, loom::sync::atomic::Ordering::Release);
    fence(SeqCst);
    if q.waiters.load(SeqCst) != 0 {
        q.seq.bump_and_wake();
    }
}

#[test]
fn a_queue_receiver_is_never_left_asleep_with_a_message_published() {
    loom::model(|| {
        let q = Arc::new(Side {
            published: AtomicU64::new(0),
            taken: AtomicU64::new(0),
            waiters: AtomicU32::new(0),
            seq: Futex::new(),
        });
        let sender = {
            let q = q.clone();
            thread::spawn(move || {
                send_one(&q);
                send_one(&q);
            })
        };
        receive_one(&q);
        receive_one(&q);
        sender.join().unwrap();
        assert_eq!(q.taken.load(SeqCst), 2);
    });
}
