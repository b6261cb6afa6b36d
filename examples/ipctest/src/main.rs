//! IPC scenarios the integration tests check; the first argument names one.
#![no_std]
#![no_main]

extern crate alloc;

use core::sync::atomic::{AtomicU32, Ordering};

use pvm::ipc::{self, Error, MessageQueue, SharedMem};
use pvm::signal::{self, Signal};
use pvm::Fork;

pvm::main!(main);

fn main() -> i32 {
    let mut args = pvm::args().skip(1);
    let what = args.next().unwrap_or("");
    let arg: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(0);
    let result = match what {
        "pipe" => pipe(),
        "broken" => broken(),
        "nonblock" => nonblock(),
        "interrupt" => interrupt(),
        "default-action" => default_action(),
        "chld" => chld(),
        "kill-other" => kill_other(arg),
        "peer-death-reader" => peer_death_reader(),
        "peer-death-writer" => peer_death_writer(),
        "scribble" => scribble(),
        "hostile" => hostile(),
        "handled-term" => handled_term(),
        "mq" => mq(),
        "mq-scribble" => mq_scribble(false),
        "mq-scribble-recv" => mq_scribble(true),
        "mq-paused" => mq_paused(),
        "shm" => shm(),
        "hold" => hold(),
        "open-other" => open_other(),
        "hold-child" => hold_child(),
        "reuse" => reuse(arg),
        "poll" => poll(),
        "spin-budget" => {
            pvm::println!("spin budget: {} cycles", ipc::spin_budget());
            Ok(())
        }
        _ => {
            pvm::eprintln!("usage: ipctest pipe|broken|nonblock|interrupt|default-action|chld|kill-other ID|peer-death-reader|peer-death-writer|scribble|hostile|handled-term|mq|mq-scribble|mq-scribble-recv|mq-paused|shm|hold|open-other|poll|spin-budget");
            return 2;
        }
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            pvm::println!("error: {e}");
            1
        }
    }
}

fn fork() -> Fork {
    match pvm::fork() {
        Ok(f) => f,
        Err(e) => {
            pvm::println!("fork failed: {e}");
            pvm::exit(90)
        }
    }
}

fn pattern(i: usize) -> u8 {
    (i * 7 + i / 251) as u8
}

/// 300 KB through a 64 KiB pipe from a child, then end of file.
fn pipe() -> Result<(), Error> {
    let (mut r, mut w) = ipc::pipe()?;
    const TOTAL: usize = 300_000;
    match fork() {
        Fork::Child => {
            drop(r);
            let data: alloc::vec::Vec<u8> = (0..TOTAL).map(pattern).collect();
            for chunk in data.chunks(7_777) {
                w.write_all(chunk)?;
            }
            pvm::exit(0)
        }
        Fork::Parent(child) => {
            drop(w);
            let mut got = 0usize;
            let mut buf = [0u8; 4096];
            loop {
                let n = r.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                for (k, b) in buf[..n].iter().enumerate() {
                    if *b != pattern(got + k) {
                        pvm::println!("pipe: wrong byte at {}", got + k);
                        pvm::exit(1);
                    }
                }
                got += n;
            }
            pvm::println!(
                "pipe: read {got} bytes in order, then end of file; writer {:?}",
                child.wait()
            );
            Ok(())
        }
    }
}

/// Every reader gone: the writer gets BrokenPipe once the ring is full.
fn broken() -> Result<(), Error> {
    let (r, mut w) = ipc::pipe_with_capacity(4096)?;
    match fork() {
        Fork::Child => {
            drop(r);
            let mut sent = 0usize;
            let err = loop {
                match w.write(&[1u8; 1000]) {
                    Ok(n) => sent += n,
                    Err(e) => break e,
                }
            };
            pvm::println!("broken: wrote {sent} bytes, then {err:?}");
            pvm::exit(0)
        }
        Fork::Parent(child) => {
            drop(r);
            drop(w);
            let _ = child.wait();
            Ok(())
        }
    }
}

fn nonblock() -> Result<(), Error> {
    let (mut r, mut w) = ipc::pipe_with_capacity(8192)?;
    r.set_nonblocking(true);
    w.set_nonblocking(true);
    let empty = r.read(&mut [0u8; 16]);
    let mut written = 0usize;
    let full = loop {
        match w.write(&[3u8; 3000]) {
            Ok(n) => written += n,
            Err(e) => break e,
        }
    };
    pvm::println!("nonblock: empty read {empty:?}; wrote {written} then {full:?}");
    Ok(())
}

static HANDLED: AtomicU32 = AtomicU32::new(0);

fn count(_: Signal) {
    HANDLED.fetch_add(1, Ordering::SeqCst);
}

/// A read blocked on an empty pipe returns Interrupted after the handler for the signal a
/// child sent ran.
fn interrupt() -> Result<(), Error> {
    let (mut r, w) = ipc::pipe()?;
    if signal::on(Signal::Usr1, count).is_err() {
        pvm::exit(3);
    }
    let parent = pvm::id();
    match fork() {
        Fork::Child => {
            let sent = signal::kill(parent, Signal::Usr1);
            drop(w);
            pvm::exit(if sent.is_ok() { 0 } else { 1 })
        }
        Fork::Parent(child) => {
            let result = r.read(&mut [0u8; 8]);
            pvm::println!(
                "interrupt: read {result:?}, handler ran {} time(s)",
                HANDLED.load(Ordering::SeqCst)
            );
            pvm::println!("interrupt: child {:?}", child.wait());
            drop(w);
            Ok(())
        }
    }
}

/// Signals without a handler take their default action: USR2 ends the child.
fn default_action() -> Result<(), Error> {
    match fork() {
        Fork::Child => pvm::pause(),
        Fork::Parent(child) => {
            let sent = signal::kill(child.id(), Signal::Usr2);
            pvm::println!("default-action: sent {sent:?}, child {:?}", child.wait());
            Ok(())
        }
    }
}

fn on_chld(_: Signal) {
    HANDLED.fetch_add(1, Ordering::SeqCst);
}

/// CHLD is ignored by default and runs a handler when one is set.
fn chld() -> Result<(), Error> {
    if let Fork::Child = fork() {
        pvm::exit(4);
    }
    let _ = pvm::wait_any();
    pvm::println!("chld: unhandled CHLD ignored");
    if signal::on(Signal::Chld, on_chld).is_err() {
        pvm::exit(3);
    }
    if let Fork::Child = fork() {
        pvm::exit(5);
    }
    let status = pvm::wait_any();
    // The CHLD may arrive just after the wait returned: poll until the handler ran.
    let start = pvm::time::Instant::now();
    while HANDLED.load(Ordering::SeqCst) == 0 && start.elapsed().as_secs() < 10 {
        signal::dispatch();
        let _ = pvm::time::Instant::now();
    }
    pvm::println!(
        "chld: handler ran {} time(s); {status:?}",
        HANDLED.load(Ordering::SeqCst)
    );
    Ok(())
}

/// Signalling a pVM of another family is refused.
fn kill_other(id: u64) -> Result<(), Error> {
    pvm::println!("kill-other: {:?}", signal::kill(id, Signal::Term));
    pvm::println!(
        "kill-other: nonexistent {:?}",
        signal::kill(999_999_999, Signal::Term)
    );
    Ok(())
}

/// The writer is killed (SIGKILL, by the test) while the reader waits: the reader sees EOF.
fn peer_death_reader() -> Result<(), Error> {
    let (mut r, mut w) = ipc::pipe()?;
    match fork() {
        Fork::Child => {
            drop(r);
            w.write_all(b"0123456789")?;
            pvm::println!("writer ready: {}", pvm::id());
            pvm::pause()
        }
        Fork::Parent(child) => {
            drop(w);
            let mut buf = [0u8; 10];
            r.read_exact(&mut buf)?;
            pvm::println!("reader got 10 bytes, waiting for more");
            let n = r.read(&mut buf)?;
            pvm::println!(
                "reader: read returned {n} after the writer died; {:?}",
                child.wait()
            );
            Ok(())
        }
    }
}

/// The reader is killed while the writer waits for room: the writer gets BrokenPipe.
fn peer_death_writer() -> Result<(), Error> {
    let (r, mut w) = ipc::pipe_with_capacity(4096)?;
    match fork() {
        Fork::Child => {
            drop(w);
            pvm::println!("reader ready: {}", pvm::id());
            let _keep = r;
            pvm::pause()
        }
        Fork::Parent(child) => {
            drop(r);
            w.write_all(&[9u8; 4096])?;
            pvm::println!("writer filled the pipe, waiting for room");
            let result = w.write(&[9u8; 10]);
            pvm::println!("writer: {result:?} after the reader died; {:?}", child.wait());
            Ok(())
        }
    }
}

/// A child scribbles over the ring's indices: the parent's read reports corruption; both
/// monitors go on.
fn scribble() -> Result<(), Error> {
    let (mut r, w) = ipc::pipe_with_capacity(4096)?;
    match fork() {
        Fork::Child => {
            // The ring header is at the start of the region, right where the reader looks.
            // SAFETY: deliberately corrupts the shared ring through its mapping.
            unsafe {
                let header = r_addr(&r) as *mut u64;
                core::ptr::write_volatile(header.add(8), u64::MAX / 3); // head
            }
            drop(w);
            pvm::exit(0)
        }
        Fork::Parent(child) => {
            let _ = child.wait();
            let result = r.read(&mut [0u8; 16]);
            pvm::println!("scribble: read {result:?}");
            drop(w);
            Ok(())
        }
    }
}

/// Where the ring of this pVM's first pipe is: the first region of the IPC window.
fn r_addr(_: &ipc::Reader) -> u64 {
    pvm_abi::layout::IPC_BASE
}

/// Bogus handles and capacities from the guest get errors; the pVM lives on.
fn hostile() -> Result<(), Error> {
    pvm::println!("hostile: capacity 5000 {:?}", ipc::pipe_with_capacity(5000).err());
    pvm::println!(
        "hostile: capacity 2 MiB {:?}",
        ipc::pipe_with_capacity(2 << 20).err()
    );
    let mut args = pvm_abi::IpcWaitArgs {
        handle: 12345,
        seq: 0,
        result: 0,
    };
    pvm::hypercall::raw(
        pvm::hypercall::Hypercall::IpcWait,
        &mut args as *mut pvm_abi::IpcWaitArgs as u64,
    );
    pvm::println!("hostile: wait on a bad handle {}", args.result);
    pvm::hypercall::raw(pvm::hypercall::Hypercall::IpcClose, 999);
    pvm::hypercall::raw(pvm::hypercall::Hypercall::IpcNotify, u64::MAX);
    // Many pipes: the window runs out and the call says so.
    let mut pipes = alloc::vec::Vec::new();
    let err = loop {
        match ipc::pipe_with_capacity(4096) {
            Ok(p) => pipes.push(p),
            Err(e) => break e,
        }
    };
    pvm::println!("hostile: {} pipes, then {err:?}", pipes.len());
    drop(pipes);
    let (_r, _w) = ipc::pipe()?;
    pvm::println!("hostile: a pipe again after closing them all");
    Ok(())
}

/// A TERM handler replaces the default action: `pvmctl kill -s TERM` runs it.
fn handled_term() -> Result<(), Error> {
    if signal::on(Signal::Term, count).is_err() {
        pvm::exit(3);
    }
    pvm::println!("handled-term: ready {}", pvm::id());
    while HANDLED.load(Ordering::SeqCst) == 0 {
        // Sleeps in the monitor; returns (at once, if the signal came meanwhile) so that the
        // handler runs.
        pause_once();
    }
    pvm::println!("handled-term: TERM handled, exiting normally");
    Ok(())
}

fn pause_once() {
    pvm::hypercall::raw(pvm::hypercall::Hypercall::Pause, 0);
    signal::dispatch();
}

/// A queue keeps message boundaries and order; full and empty are reported when non-blocking;
/// a forked child opens the same queue by key.
fn mq() -> Result<(), Error> {
    let mut q = MessageQueue::open_with("test.q", 4, 32)?;
    q.set_nonblocking(true);
    let mut buf = [0u8; 32];
    pvm::println!("mq: empty {:?}", q.receive(&mut buf).err());
    for m in [&b"a"[..], b"bb", b"ccc", b"dddd"] {
        q.send(m)?;
    }
    pvm::println!("mq: full {:?}", q.send(b"e").err());
    pvm::println!("mq: too large {:?}", q.send(&[0u8; 33]).err());
    let mut got = alloc::vec::Vec::new();
    for _ in 0..4 {
        let n = q.receive(&mut buf)?;
        got.push(alloc::string::String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    pvm::println!("mq: received {got:?}");
    match fork() {
        Fork::Child => {
            let q = MessageQueue::open_existing("test.q")?;
            q.send(b"from the child")?;
            pvm::exit(0)
        }
        Fork::Parent(child) => {
            q.set_nonblocking(false);
            let n = q.receive(&mut buf)?;
            pvm::println!(
                "mq: {:?}; child {:?}",
                core::str::from_utf8(&buf[..n]).unwrap_or("?"),
                child.wait()
            );
            pvm::println!(
                "mq: missing {:?}",
                MessageQueue::open_existing("no.such.queue").err()
            );
            pvm::println!("mq: bad key {:?}", MessageQueue::open("bad key!", 4).err());
            // One cell cannot tell full from free: refused.
            pvm::println!("mq: capacity 1 {:?}", MessageQueue::open("one.cell", 1).err());
            Ok(())
        }
    }
}

/// A child scribbles a value no correct peer writes over the sequence number of the queue's
/// next cell: the parent's blocking send (or, with `recv`, blocking receive of the message sent
/// before) reports corruption instead of spinning forever; the queue's next user does too.
fn mq_scribble(recv: bool) -> Result<(), Error> {
    let q = MessageQueue::open_with("test.scribble", 4, 32)?;
    if recv {
        q.send(b"first")?;
    }
    let base = q.region_addr();
    match fork() {
        Fork::Child => {
            // The first cell (position 0, the next to fill or drain) starts a page after the
            // header; its first word is its sequence number.
            // SAFETY: deliberately corrupts the shared queue through its mapping.
            unsafe {
                let seq = (base + pvm_ipc::QUEUE_CELLS_OFFSET as u64) as *mut u64;
                core::ptr::write_volatile(seq, 0xdead_beef_dead_beef);
            }
            pvm::exit(0)
        }
        Fork::Parent(child) => {
            let _ = child.wait();
            let what = if recv { "receive" } else { "send" };
            let result = if recv {
                q.receive(&mut [0u8; 32]).map(|_| ())
            } else {
                q.send(b"second")
            };
            pvm::println!("mq-scribble: blocking {what} {result:?}");
            Ok(())
        }
    }
}

/// A child plays a sender paused in the middle of a send (it claims the next cell and does not
/// publish it): the parent's blocking receive must sleep, not spin and not report corruption,
/// and get the message once the child finishes the send.
fn mq_paused() -> Result<(), Error> {
    let q = MessageQueue::open_with("test.paused", 4, 32)?;
    match fork() {
        Fork::Child => {
            let mine = MessageQueue::open_existing("test.paused")?;
            let base = mine.region_addr();
            // SAFETY: the queue's header at the start of its region, all atomics.
            let h = unsafe { &*(base as *const pvm_ipc::QueueHeader) };
            // Claim position 0 as a sender does, then "pause".
            if h.enqueue_pos
                .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                pvm::println!("mq-paused: the queue was not fresh");
                pvm::exit(1)
            }
            // Until the receiver sleeps in its monitor (it counts itself a waiter first).
            let start = pvm::time::Instant::now();
            let mut slept = false;
            while !slept && start.elapsed().as_secs() < 10 {
                slept = h.recv_waiters.load(Ordering::SeqCst) != 0;
            }
            pvm::println!("mq-paused: the receiver slept while the cell was held: {slept}");
            // Resume: fill and publish the claimed cell (seq = position + 1), then send another
            // message normally, which wakes the receiver.
            let cell = (base + pvm_ipc::QUEUE_CELLS_OFFSET as u64) as *mut u8;
            // SAFETY: the cell of position 0, which this pVM claimed.
            unsafe {
                core::ptr::write_volatile(cell.add(8) as *mut u32, 6);
                core::ptr::copy_nonoverlapping(b"paused".as_ptr(), cell.add(16), 6);
                (*(cell as *const core::sync::atomic::AtomicU64)).store(1, Ordering::Release);
            }
            mine.send(b"second")?;
            pvm::exit(0)
        }
        Fork::Parent(child) => {
            // Receive only once the child holds the cell: the header indexes then say "a
            // message" while the cell says "not yet" (the old runtime spun on that).
            // SAFETY: the queue's header at the start of its region, all atomics.
            let h = unsafe { &*(q.region_addr() as *const pvm_ipc::QueueHeader) };
            let start = pvm::time::Instant::now();
            while h.enqueue_pos.load(Ordering::SeqCst) == 0 && start.elapsed().as_secs() < 10 {
                core::hint::spin_loop();
            }
            let mut got = alloc::vec::Vec::new();
            let mut buf = [0u8; 32];
            for _ in 0..2 {
                let n = q.receive(&mut buf)?;
                got.push(alloc::string::String::from_utf8_lossy(&buf[..n]).into_owned());
            }
            pvm::println!("mq-paused: received {got:?}; child {:?}", child.wait());
            Ok(())
        }
    }
}

/// Four children add to a counter in shared memory they open by key.
fn shm() -> Result<(), Error> {
    let mem = SharedMem::create("test.counter", 100)?;
    let mut children = alloc::vec::Vec::new();
    for _ in 0..4 {
        match fork() {
            Fork::Child => {
                let mine = SharedMem::open("test.counter")?;
                let counter = mine.atomic_u64(0).ok_or(Error::Invalid)?;
                for _ in 0..10_000 {
                    counter.fetch_add(1, Ordering::SeqCst);
                }
                pvm::exit(0)
            }
            Fork::Parent(child) => children.push(child),
        }
    }
    for child in children {
        let _ = child.wait();
    }
    let total = mem.atomic_u64(0).map(|c| c.load(Ordering::SeqCst));
    pvm::println!("shm: {} bytes, counter {total:?}", mem.len());
    Ok(())
}

/// Holds a queue and a shared region under well-known keys, then idles.
fn hold() -> Result<(), Error> {
    let _q = MessageQueue::open("shared.key", 4)?;
    let _m = SharedMem::create("shared.mem", 4096)?;
    pvm::println!("hold: ready {}", pvm::id());
    pvm::pause()
}

/// Tries another family's objects.
fn open_other() -> Result<(), Error> {
    pvm::println!(
        "open-other: queue {:?}",
        MessageQueue::open("shared.key", 4).err()
    );
    pvm::println!("open-other: shm {:?}", SharedMem::open("shared.mem").err());
    Ok(())
}

/// The root forks a child that holds the family's objects, waits until it does, says the
/// child's id and ends (with `--detach-family`, the child lives on: its family outlives its root).
fn hold_child() -> Result<(), Error> {
    let (mut r, mut w) = ipc::pipe()?;
    match fork() {
        Fork::Child => {
            drop(r);
            let _q = MessageQueue::open("shared.key", 4)?;
            w.write_all(b"k")?;
            drop(w);
            pvm::pause()
        }
        Fork::Parent(child) => {
            drop(w);
            r.read_exact(&mut [0u8; 1])?;
            pvm::println!("hold-child: {}", child.id());
            Ok(())
        }
    }
}

/// Run by a root that may have got the pid of a gone root whose child `id` still runs: that
/// child is of another family all the same.
fn reuse(id: u64) -> Result<(), Error> {
    pvm::println!(
        "reuse: family {} kill {:?}",
        pvm::family_id(),
        signal::kill(id, Signal::Term)
    );
    pvm::println!(
        "reuse: queue {:?}",
        MessageQueue::open_existing("shared.key").err()
    );
    Ok(())
}

/// `pvm::net::poll` over pipe ends: nothing ready (at once, and after a timeout), then the
/// one a child writes to, then a writer with room, then a reader whose writers are gone.
fn poll() -> Result<(), Error> {
    use pvm::net::{self, PollEntry, READABLE};
    let (a_r, a_w) = ipc::pipe()?;
    let (b_r, mut b_w) = ipc::pipe()?;
    let (go_r, mut go_w) = ipc::pipe()?;
    let ready = |entries: &mut [PollEntry<'_>], timeout| match net::poll(entries, timeout) {
        Ok(n) => n,
        Err(e) => {
            pvm::println!("poll: error {e}");
            pvm::exit(1)
        }
    };
    match fork() {
        Fork::Child => {
            drop((a_r, b_r, go_w));
            let mut go_r = go_r;
            let mut byte = [0u8];
            go_r.read_exact(&mut byte)?;
            b_w.write_all(b"x")?;
            drop((a_w, b_w));
            pvm::exit(0)
        }
        Fork::Parent(child) => {
            drop(go_r);
            drop(b_w);
            let mut e = [PollEntry::pipe_reader(&a_r), PollEntry::pipe_reader(&b_r)];
            let now = ready(&mut e, Some(0));
            let start = pvm::time::Instant::now();
            let later = ready(&mut e, Some(5_000_000));
            let waited = start.elapsed().as_millis() >= 4;
            go_w.write_all(b"g")?;
            let n = ready(&mut e, None);
            pvm::println!(
                "poll: at once {now}, after the timeout {later} (waited {waited}), then {n}: a {} b {}",
                e[0].ready,
                e[1].ready
            );
            let mut w = [PollEntry::pipe_writer(&a_w)];
            let n = ready(&mut w, Some(0));
            pvm::println!("poll: writer with room {n} {}", w[0].ready == net::WRITABLE);
            drop(a_w);
            let _ = child.wait();
            // The child's copy of a's write end is gone too: the reader reads end of file.
            let mut e = [PollEntry::pipe_reader(&a_r)];
            let n = ready(&mut e, None);
            pvm::println!("poll: reader at end of file {n} {}", e[0].ready == READABLE);
            Ok(())
        }
    }
}
