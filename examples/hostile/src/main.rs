//! A hostile guest: it attacks its monitor through every hypercall with bad pointers, lengths,
//! ids, handles and keys, forks without end, and exhausts its memory. The integration tests
//! (`tests/hostile.rs`) run each scenario and check that it is contained: the guest gets an
//! error or dies with a clear report, nothing else is touched, nothing leaks.
//!
//! Output lines are `SCENARIO CASE: RESULT`, for the tests to parse.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;
use core::arch::asm;
use core::sync::atomic::{AtomicBool, Ordering};

use pvm::ipc::MessageQueue;
use pvm::signal::{self, Signal};
use pvm::{ExitStatus, Fork};
use pvm_abi::{
    dl_op, layout, DlCloseArgs, DlOpenArgs, DlUpdateArgs, ExitArgs, GuestStatus, Hypercall, IpcWaitArgs,
    KillArgs, MqWaitArgs, NamedArgs, PipeArgs, SigActionArgs, WaitArgs, WriteArgs,
};

pvm::main!(main);

/// What libgreet imports from its app (the `dl` scenarios load it).
#[no_mangle]
pub extern "C" fn app_double(x: u64) -> u64 {
    2 * x
}
pvm::export!(app_double);

fn main() -> i32 {
    let mut args = pvm::args().skip(1);
    let what = args.next().unwrap_or("");
    let arg = args.next().unwrap_or("");
    match what {
        "args" => bad_arg_structs(),
        "readonly" => readonly_out_fields(),
        "boot-buffers" => boot_buffers(arg),
        "buffers" => buffers(),
        "ids" => ids(arg.parse().unwrap_or(0)),
        "handles" => handles(),
        "window" => window(),
        "forkbomb" => forkbomb(),
        "exhaust" => exhaust(),
        "shm-on-signal" => shm_on_signal(arg),
        "oom-on-signal" => oom_on_signal(arg.parse().unwrap_or(256)),
        "dl" => dl(arg),
        "dl-escape" => dl_escape(arg),
        "net" => net(),
        "net-scribble" => net_scribble(),
        _ => {
            pvm::eprintln!(
                "usage: hostile args|readonly|boot-buffers ARG|buffers|ids SENTINEL_PID|handles|window|forkbomb|exhaust|shm-on-signal KEY|oom-on-signal MIB|dl LIB|dl-escape LIB|net|net-scribble"
            );
            return 2;
        }
    }
    0
}

/// A hypercall store, raw: any number, any argument.
fn call(nr: Hypercall, arg: u64) {
    pvm::hypercall::raw(nr, arg);
}

/// Runs `attack` in a forked child (which exits 0 if it survives); returns how the child ended.
fn in_child(attack: impl FnOnce()) -> ExitStatus {
    match pvm::fork() {
        Ok(Fork::Child) => {
            attack();
            pvm::exit(0)
        }
        Ok(Fork::Parent(child)) => child.wait().unwrap_or(ExitStatus::Killed(0)),
        Err(e) => {
            pvm::println!("fork failed: {e}");
            pvm::exit(90)
        }
    }
}

/// Read-only data of this image (`.rodata`): the guest cannot write it.
static RODATA: [u64; 16] = [0x5eed_5eed_5eed_5eed; 16];

fn rodata_intact() -> bool {
    (0..16).all(|i| {
        // SAFETY: reads a static.
        unsafe { core::ptr::read_volatile(&RODATA[i]) == 0x5eed_5eed_5eed_5eed }
    })
}

/// Every hypercall that takes an argument struct, given one where the guest could not access
/// it: the pVM dies with a "bad hypercall" report (vector 256 to its parent), nothing else.
fn bad_arg_structs() {
    // Every call that takes an argument struct (an exception frame is the stubs', not a
    // guest's).
    let calls = Hypercall::ALL
        .into_iter()
        .filter(|h| h.arg_size().is_some() && *h != Hypercall::Exception);
    let places = [
        ("null", 0),
        ("gdt", layout::GDT_ADDR),
        ("idt", layout::IDT_ADDR),
        ("stubs", layout::STUBS_ADDR),
        ("ring0-stack", layout::RING0_STACK_ADDR),
        ("page-tables", layout::PAGE_TABLES_ADDR),
        ("end", pvm::mem_size() - 4),
        ("beyond", pvm::mem_size() + 4096),
        ("wrap", u64::MAX - 7),
        ("ipc-window", layout::IPC_BASE),
        ("hypercall-window", layout::HYPERCALL_VA),
        ("guard", pvm::mem_size() - layout::STACK_SIZE - 64),
        ("lib-window", layout::LIB_CODE_BASE),
    ];
    for nr in calls {
        for (place, addr) in places {
            let status = in_child(|| call(nr, addr));
            pvm::println!("args {nr:?} {place}: {status:?}");
        }
    }
}

/// OUT fields aimed at the guest's own code, read-only data and boot block: W^X holds for
/// hypercalls too (the pVM dies with a bad-hypercall report; its text and rodata never change).
fn readonly_out_fields() {
    let text = readonly_out_fields as fn() as usize as u64;
    let rodata = RODATA.as_ptr() as u64;
    let boot = layout::BOOT_INFO_ADDR;
    for (place, addr) in [("text", text), ("rodata", rodata), ("boot", boot)] {
        for nr in [
            Hypercall::Clock,
            Hypercall::Fork,
            Hypercall::Wait,
            Hypercall::PipeCreate,
            Hypercall::SigAction,
            Hypercall::Kill,
            Hypercall::DlOpen,
            Hypercall::DlClose,
            Hypercall::DlUpdate,
            Hypercall::NetListen,
            Hypercall::NetAccept,
            Hypercall::NetPoll,
            Hypercall::NetConnect,
        ] {
            let status = in_child(|| {
                let before = first_word(text);
                call(nr, addr);
                // Still here: the call returned. Did it write where the guest cannot?
                if !rodata_intact() || first_word(text) != before {
                    pvm::println!("readonly {nr:?} {place}: WRITTEN");
                    pvm::exit(7);
                }
            });
            pvm::println!("readonly {nr:?} {place}: {status:?}");
        }
    }
    // An IN-only struct (Exit's) may be read-only: reading it is what the guest can do too.
    let status = in_child(|| {
        static CODE: ExitArgs = ExitArgs { code: 42 };
        call(Hypercall::Exit, &CODE as *const ExitArgs as u64);
    });
    pvm::println!("readonly Exit rodata: {status:?}");
    pvm::println!("readonly: rodata intact {}", rodata_intact());
}

fn first_word(addr: u64) -> u64 {
    // SAFETY: reads the first bytes of a function of this image (readable code).
    unsafe { core::ptr::read_volatile(addr as *const u64) }
}

/// Buffers the guest may read but not write (its boot block, holding its arguments) are valid
/// IN buffers: a key or console text from there works.
fn boot_buffers(arg: &'static str) {
    let mut w = WriteArgs {
        fd: 1,
        buf: arg.as_ptr() as u64,
        len: arg.len() as u64,
        result: 0,
    };
    call(Hypercall::Write, &mut w as *mut WriteArgs as u64);
    pvm::println!();
    pvm::println!("boot-buffers write: {}", w.result);
    let q = MessageQueue::open(arg, 4);
    pvm::println!("boot-buffers queue: {:?}", q.as_ref().map(|_| ()));
}

/// Console buffers and keys outside what the guest may read: errors, and the pVM lives on.
fn buffers() {
    let heap = alloc::boxed::Box::new([0u8; 64]);
    let heap_at = heap.as_ptr() as u64;
    for (case, fd, buf, len) in [
        ("null", 1, 0, 8),
        ("gdt", 1, layout::GDT_ADDR, 8),
        ("page-tables", 2, layout::PAGE_TABLES_ADDR, 64),
        ("end", 2, pvm::mem_size() - 4, 8),
        ("wrap", 2, u64::MAX - 3, 8),
        ("ipc-window", 2, layout::IPC_BASE, 8),
        ("huge-len", 2, heap_at, u64::MAX),
        ("fd-3", 3, heap_at, 8),
        ("fd-max", u64::MAX, heap_at, 8),
    ] {
        let mut w = WriteArgs {
            fd,
            buf,
            len,
            result: 0,
        };
        call(Hypercall::Write, &mut w as *mut WriteArgs as u64);
        pvm::println!("buffers write {case}: {}", w.result);
    }
    let good = b"k1";
    for (case, key, len) in [
        ("null", 0, 4),
        ("gdt", layout::GDT_ADDR, 4),
        ("end", pvm::mem_size() - 2, 4),
        ("len-0", good.as_ptr() as u64, 0),
        ("len-65", good.as_ptr() as u64, 65),
        ("len-max", good.as_ptr() as u64, u64::MAX),
        ("slash", b"a/b".as_ptr() as u64, 3),
        ("dotdot", b"..".as_ptr() as u64, 2),
        ("dot", b".".as_ptr() as u64, 1),
        ("nul", b"a\0b".as_ptr() as u64, 3),
    ] {
        for nr in [Hypercall::MqOpen, Hypercall::ShmOpen] {
            let mut a = NamedArgs {
                key,
                key_len: len,
                create: 1,
                capacity: 4,
                msg_size: 64,
                ..Default::default()
            };
            call(nr, &mut a as *mut NamedArgs as u64);
            pvm::println!("buffers key {nr:?} {case}: {}", a.result);
        }
    }
    pvm::println!("buffers: alive");
}

/// Ids and signals that name no pVM of the family: refused before any host process is named.
fn ids(sentinel: u64) {
    let me = pvm::id();
    for (case, id) in [
        ("zero", 0),
        ("init", 1),
        ("sentinel", sentinel),
        ("minus-one", u64::MAX),
        ("u32-max", u64::from(u32::MAX)),
        ("i32-max+1", 1 << 31),
        ("huge", 1 << 40),
        ("parent", pvm::parent_id()),
    ] {
        let mut k = KillArgs {
            id,
            signal: 15,
            result: 0,
        };
        call(Hypercall::Kill, &mut k as *mut KillArgs as u64);
        pvm::println!("ids kill {case}: {}", k.result);
    }
    for (case, sig) in [
        ("0", 0),
        ("stop", 19),
        ("segv", 11),
        ("64", 64),
        ("max", u64::MAX),
    ] {
        let mut k = KillArgs {
            id: me,
            signal: sig,
            result: 0,
        };
        call(Hypercall::Kill, &mut k as *mut KillArgs as u64);
        pvm::println!("ids signal {case}: {}", k.result);
        let mut a = SigActionArgs {
            signal: sig,
            handled: 1,
            result: 0,
        };
        call(Hypercall::SigAction, &mut a as *mut SigActionArgs as u64);
        pvm::println!("ids sigaction {case}: {}", a.result);
    }
    for (case, id) in [
        ("any", 0),
        ("init", 1),
        ("sentinel", sentinel),
        ("self", me),
        ("max", u64::MAX),
    ] {
        let mut w = WaitArgs {
            id,
            flags: pvm_abi::WAIT_NOHANG,
            ..Default::default()
        };
        call(Hypercall::Wait, &mut w as *mut WaitArgs as u64);
        pvm::println!("ids wait {case}: {}", w.result);
    }
    pvm::println!("ids: alive");
}

/// Bogus handles, sides and geometries: errors (or nothing, for the fire-and-forget calls).
fn handles() {
    let (r, w) = pvm::ipc::pipe().expect("a pipe");
    let q = MessageQueue::open("h", 4).expect("a queue");
    drop((r, w));
    for (case, handle) in [
        ("closed", 0),
        ("max", u64::MAX),
        ("2^32", 1 << 32),
        ("12345", 12345),
    ] {
        let mut a = IpcWaitArgs {
            handle,
            seq: 0,
            result: 0,
        };
        call(Hypercall::IpcWait, &mut a as *mut IpcWaitArgs as u64);
        call(Hypercall::IpcNotify, handle);
        call(Hypercall::IpcClose, handle);
        call(Hypercall::MqWake, handle << 1 | 1);
        let mut m = MqWaitArgs {
            handle,
            side: 0,
            seq: 0,
            result: 0,
        };
        call(Hypercall::MqWait, &mut m as *mut MqWaitArgs as u64);
        pvm::println!("handles {case}: ipc-wait {} mq-wait {}", a.result, m.result);
    }
    let mut m = MqWaitArgs {
        handle: 2,
        side: 7,
        seq: 0,
        result: 0,
    };
    call(Hypercall::MqWait, &mut m as *mut MqWaitArgs as u64);
    pvm::println!("handles side-7: {}", m.result);
    for capacity in [0, 3, 4095, 1 << 21, u64::MAX] {
        let mut p = PipeArgs {
            capacity,
            ..Default::default()
        };
        call(Hypercall::PipeCreate, &mut p as *mut PipeArgs as u64);
        pvm::println!("handles pipe capacity {capacity}: {}", p.result);
    }
    let key = b"geo";
    for (case, nr, capacity, msg_size) in [
        ("mq-cap-0", Hypercall::MqOpen, 0, 64),
        ("mq-cap-3", Hypercall::MqOpen, 3, 64),
        ("mq-cap-2048", Hypercall::MqOpen, 2048, 64),
        ("mq-msg-0", Hypercall::MqOpen, 4, 0),
        ("mq-msg-5000", Hypercall::MqOpen, 4, 5000),
        ("shm-0", Hypercall::ShmOpen, 0, 0),
        ("shm-3M", Hypercall::ShmOpen, 3 << 20, 0),
        ("shm-max", Hypercall::ShmOpen, u64::MAX, 0),
    ] {
        let mut a = NamedArgs {
            key: key.as_ptr() as u64,
            key_len: 3,
            create: 1,
            capacity,
            msg_size,
            ..Default::default()
        };
        call(nr, &mut a as *mut NamedArgs as u64);
        pvm::println!("handles {case}: {}", a.result);
    }
    // Every IPC region: then EAGAIN, and the pVM lives on; closing makes room again.
    let mut pipes = Vec::new();
    let err = loop {
        match pvm::ipc::pipe_with_capacity(4096) {
            Ok(p) => pipes.push(p),
            Err(e) => break e,
        }
    };
    pvm::println!("handles regions: {} pipes, then {err:?}", pipes.len());
    pipes.clear();
    pvm::println!("handles regions after close: {:?}", pvm::ipc::pipe().map(|_| ()));
    drop(q);
    pvm::println!("handles: alive");
}

/// Stores of other widths, loads, unknown numbers, misaligned stores, stores to the unbacked
/// parts of the IPC window: the pVM dies with a report; nothing else happens.
fn window() {
    type Attack = fn();
    let attacks: [(&str, Attack); 6] = [
        ("load", || {
            // SAFETY: a load from the hypercall window (deliberately illegal).
            let _v: u64 = unsafe { core::ptr::read_volatile(layout::HYPERCALL_VA as *const u64) };
        }),
        ("unknown-nr", || {
            // SAFETY: a store into the hypercall window (an unknown number).
            unsafe { store64(layout::HYPERCALL_VA + 8 * 300, 0) };
        }),
        ("misaligned", || {
            // SAFETY: as above, misaligned.
            unsafe { store64(layout::HYPERCALL_VA + 8 + 3, 0) };
        }),
        ("4-byte", || {
            // SAFETY: a 4-byte store into the hypercall window.
            unsafe {
                asm!("mov dword ptr [{a}], {v:e}", a = in(reg) layout::HYPERCALL_VA + 8, v = in(reg) 0u32, options(nostack))
            };
        }),
        ("ipc-hole", || {
            // SAFETY: a store to a part of the IPC window no region backs.
            unsafe { store64(layout::IPC_BASE + 0x1000_0000, 1) };
        }),
        ("past-window", || {
            // SAFETY: a store just past the hypercall window (unmapped).
            unsafe { store64(layout::HYPERCALL_VA + layout::PAGE_SIZE, 1) };
        }),
    ];
    for (case, attack) in attacks {
        pvm::println!("window {case}: {:?}", in_child(attack));
    }
}

/// # Safety
/// Stores to `addr`: only for deliberately illegal stores the monitor must contain.
unsafe fn store64(addr: u64, v: u64) {
    // SAFETY: the caller's.
    unsafe { asm!("mov qword ptr [{a}], {v}", a = in(reg) addr, v = in(reg) v, options(nostack)) };
}

/// Every pVM forks until refused, then sleeps: the family never holds more pVMs than the limits
/// allow. Prints one `forkbomb forked` line per fork and one `forkbomb refused` per pVM.
fn forkbomb() {
    loop {
        match pvm::fork() {
            Ok(Fork::Child) => continue,
            Ok(Fork::Parent(_)) => pvm::println!("forkbomb forked"),
            Err(e) => {
                pvm::println!("forkbomb refused: {e}");
                pvm::pause()
            }
        }
    }
}

/// Allocates until the heap is gone: the pVM ends (an allocation failure is a panic), alone.
fn exhaust() {
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut block = Vec::with_capacity(1 << 20);
        block.resize(1 << 20, 0xa5);
        blocks.push(block);
        if blocks.len().is_multiple_of(4) {
            pvm::println!("exhaust: {} MiB", blocks.len());
        }
    }
}

static GO: AtomicBool = AtomicBool::new(false);

/// Says "ready" and waits for USR1.
fn ready_then_wait(what: &str) {
    signal::on(Signal::Usr1, |_| GO.store(true, Ordering::SeqCst)).expect("a handler");
    pvm::println!("{what} ready");
    while !GO.load(Ordering::SeqCst) {
        call(Hypercall::Pause, 0);
        signal::dispatch();
    }
}

/// Says "ready", waits for USR1, then forks a child that touches `mib` MiB of its memory (the
/// test has put the family in a memory cgroup too small for that) and reports how it ended.
fn oom_on_signal(mib: usize) {
    ready_then_wait("oom-on-signal");
    let status = in_child(|| {
        let mut v: Vec<u8> = Vec::with_capacity(mib << 20);
        for i in 0..mib << 20 {
            v.push(i as u8);
        }
        pvm::println!("oom-on-signal: child touched {} MiB", v.len() >> 20);
    });
    pvm::println!("oom-on-signal child: {status:?}");
}

/// Says "ready", waits for USR1, then opens shared memory `key` (which the test may have planted
/// a symbolic link for) and writes into it.
fn shm_on_signal(key: &str) {
    ready_then_wait("shm-on-signal");
    let created = pvm::ipc::SharedMem::create(key, 4096);
    if let Ok(shm) = &created {
        let _ = shm.write(0, b"guest wrote here");
    }
    pvm::println!("shm-on-signal create: {:?}", created.as_ref().map(|_| ()));
    pvm::println!(
        "shm-on-signal open: {:?}",
        pvm::ipc::SharedMem::open(key).map(|_| ())
    );
}

/// The library hypercalls with bad names, buffers, handles and steps (errors), and stores and
/// loads where a library is or is not (the pVM dies with a report). `lib` is a library the
/// operator allowed.
fn dl(lib: &str) {
    let open = |name: u64, len: u64, msg: u64, cap: u64| {
        let mut a = DlOpenArgs {
            name,
            name_len: len,
            msg,
            msg_cap: cap,
            ..Default::default()
        };
        call(Hypercall::DlOpen, &mut a as *mut DlOpenArgs as u64);
        a
    };
    let mut msg = [0u8; 64];
    let msg_at = msg.as_mut_ptr() as u64;
    let good = b"nosuchlib";
    for (case, name, len) in [
        ("name-null", 0, 4),
        ("name-gdt", layout::GDT_ADDR, 4),
        ("name-beyond", pvm::mem_size() + 4096, 4),
        ("name-wrap", u64::MAX - 1, 4),
        ("name-empty", good.as_ptr() as u64, 0),
        ("name-huge", good.as_ptr() as u64, u64::MAX),
        ("name-path", b"../etc/passwd".as_ptr() as u64, 13),
        ("name-lib-window", layout::LIB_CODE_BASE, 4),
    ] {
        pvm::println!("dl open {case}: {}", open(name, len, msg_at, 64).result);
    }
    // The monitor's message goes only where the guest may write: not into rodata, the boot
    // block or the reserved area (then it is dropped; the call still answers).
    let text = dl as fn(&str) as usize as u64;
    for (case, at) in [
        ("msg-rodata", RODATA.as_ptr() as u64),
        ("msg-text", text),
        ("msg-boot", layout::BOOT_INFO_ADDR),
        ("msg-gdt", layout::GDT_ADDR),
        ("msg-beyond", pvm::mem_size() - 8),
    ] {
        let before = first_word(text);
        let a = open(good.as_ptr() as u64, good.len() as u64, at, 4096);
        let intact = rodata_intact() && first_word(text) == before;
        pvm::println!("dl open {case}: {} len {} intact {intact}", a.result, a.msg_len);
    }
    let a = open(good.as_ptr() as u64, good.len() as u64, msg_at, 64);
    pvm::println!("dl open unknown: {} message {}", a.result, a.msg_len > 0);
    for (case, handle) in [("0", 0), ("63", 63), ("64", 64), ("max", u64::MAX)] {
        let mut c = DlCloseArgs { handle, result: 0 };
        call(Hypercall::DlClose, &mut c as *mut DlCloseArgs as u64);
        pvm::println!("dl close {case}: {}", c.result);
    }
    for (case, op) in [
        ("begin", dl_op::BEGIN),
        ("commit", dl_op::COMMIT),
        ("abort", dl_op::ABORT),
        ("op-0", 0),
        ("op-max", u64::MAX),
    ] {
        let mut u = DlUpdateArgs {
            op,
            handle: 0,
            escape: 0x4141_4141,
            ..Default::default()
        };
        call(Hypercall::DlUpdate, &mut u as *mut DlUpdateArgs as u64);
        pvm::println!("dl update {case}: {}", u.result);
    }
    // A real library: its handle closes once; its code and read-only data are never writable.
    let l = pvm::dl::open(lib).expect("the allowed library");
    let base = l.handle() * layout::LIB_SLOT_SIZE + layout::LIB_CODE_BASE;
    type Attack = fn(u64);
    let attacks: [(&str, Attack); 4] = [
        ("write-code", |base| {
            // SAFETY: a store into the library's code (deliberately illegal).
            unsafe { store64(base + 0x1000, 0x9090_9090) };
        }),
        ("read-code", |base| {
            // SAFETY: a load of the library's code: allowed.
            let _v: u64 = unsafe { core::ptr::read_volatile((base + 0x1000) as *const u64) };
        }),
        ("read-hole", |base| {
            // SAFETY: a load from a slot of the code window no library backs.
            let _v: u64 =
                unsafe { core::ptr::read_volatile((base + 8 * layout::LIB_SLOT_SIZE) as *const u64) };
        }),
        ("exec-data", |base| {
            // SAFETY: a jump into the library's data window (not executable).
            let f: extern "C" fn() = unsafe { core::mem::transmute(base + layout::LIB_DATA_OFFSET) };
            f();
        }),
    ];
    for (case, attack) in attacks {
        pvm::println!("dl {case}: {:?}", in_child(|| attack(base)));
    }
    let handle = l.handle();
    l.close().expect("first close");
    let mut c = DlCloseArgs { handle, result: 0 };
    call(Hypercall::DlClose, &mut c as *mut DlCloseArgs as u64);
    pvm::println!("dl close twice: {}", c.result);
    pvm::println!("dl: alive");
}

/// Holds `lib` open and watches the status page without a hypercall (so the runtime never
/// answers an update itself); when the operator's update is announced, answers BEGIN with an
/// escape outside the app's code. The monitor must refuse it (and roll the update back).
fn dl_escape(lib: &str) {
    let l = pvm::dl::open(lib).expect("the allowed library");
    pvm::println!("dl-escape ready");
    let word = (layout::STATUS_ADDR + core::mem::offset_of!(GuestStatus, dl_update) as u64) as *const u64;
    // SAFETY: the status page is mapped read-write for the guest.
    while unsafe { core::ptr::read_volatile(word) } == 0 {
        core::hint::spin_loop();
    }
    let mut u = DlUpdateArgs {
        op: dl_op::BEGIN,
        handle: l.handle(),
        escape: 0x4141_4141,
        ..Default::default()
    };
    call(Hypercall::DlUpdate, &mut u as *mut DlUpdateArgs as u64);
    pvm::println!("dl-escape begin: {}", u.result);
    pvm::println!("dl-escape version: {}", l.version().unwrap_or_default());
}

/// Network calls with hostile arguments (run with guest port 7 published): each gets an error
/// (`net CASE: RESULT`), the pVM and its network go on (`net: alive`).
fn net() {
    use pvm_abi::{
        net_flags, poll_events, NetAcceptArgs, NetConnectArgs, NetListenArgs, NetPollArgs, PollItem,
    };
    let listen = |port: u64| {
        let mut a = NetListenArgs {
            port,
            ..Default::default()
        };
        call(Hypercall::NetListen, &mut a as *mut NetListenArgs as u64);
        (a.result, a.handle)
    };
    for (case, port) in [
        ("listen 0", 0),
        ("listen 65536", 65536),
        ("listen max", u64::MAX),
        ("listen 8", 8),
    ] {
        pvm::println!("net {case}: {}", listen(port).0);
    }
    let (r, listener) = listen(7);
    pvm::println!("net listen 7: {r}");
    let (pipe_r, pipe_w) = pvm::ipc::pipe().expect("a pipe");
    drop(pipe_w);
    let accept = |handle: u64, flags: u64| {
        let mut a = NetAcceptArgs {
            listener: handle,
            flags,
            ..Default::default()
        };
        call(Hypercall::NetAccept, &mut a as *mut NetAcceptArgs as u64);
        a.result
    };
    for (case, handle, flags) in [
        ("accept max", u64::MAX, net_flags::NONBLOCK),
        ("accept 2^32", 1 << 32, net_flags::NONBLOCK),
        ("accept closed", 12345, net_flags::NONBLOCK),
        ("accept flags", listener, 0xfe),
        ("accept none yet", listener, net_flags::NONBLOCK),
    ] {
        pvm::println!("net {case}: {}", accept(handle, flags));
    }
    drop(pipe_r);
    let poll = |items: u64, count: u64| {
        let mut a = NetPollArgs {
            items,
            count,
            timeout_ns: 0,
            ..Default::default()
        };
        call(Hypercall::NetPoll, &mut a as *mut NetPollArgs as u64);
        (a.result, a.ready)
    };
    let mut items = [
        PollItem {
            handle: u64::MAX,
            events: poll_events::READ,
            revents: 0,
        },
        PollItem {
            handle: listener,
            events: poll_events::READ | poll_events::WRITE | 0xff00,
            revents: 0xdead,
        },
    ];
    let at = items.as_mut_ptr() as u64;
    pvm::println!("net poll too many: {}", poll(at, pvm_abi::MAX_POLL_ITEMS + 1).0);
    pvm::println!("net poll beyond memory: {}", poll(pvm::mem_size() - 8, 2).0);
    pvm::println!("net poll read-only items: {}", poll(RODATA.as_ptr() as u64, 2).0);
    pvm::println!("net poll wrap: {}", poll(u64::MAX - 8, 2).0);
    let (r, ready) = poll(at, 2);
    pvm::println!(
        "net poll garbage: {r} ready={ready} revents={:#x},{:#x}",
        items[0].revents,
        items[1].revents
    );
    let connect = |port: u64| {
        let mut a = NetConnectArgs {
            ip: core::net::Ipv4Addr::LOCALHOST.to_ipv6_mapped().octets(),
            port,
            ..Default::default()
        };
        call(Hypercall::NetConnect, &mut a as *mut NetConnectArgs as u64);
        a.result
    };
    pvm::println!("net connect port 0: {}", connect(0));
    pvm::println!("net connect port max: {}", connect(u64::MAX));
    pvm::println!("net connect not allowed: {}", connect(22));
    // Still serving: another listen works.
    let (r, _) = listen(7);
    pvm::println!("net: alive {r}");
}

/// Takes a client of guest port 7 and writes garbage over both rings of its connection (indices
/// no correct peer writes), then lets a forked child serve the next client: the backend ends
/// the scribbled connection and goes on serving (`net-scribble: ...` lines).
fn net_scribble() {
    use pvm_abi::{NetAcceptArgs, NetListenArgs};
    let mut l = NetListenArgs {
        port: 7,
        ..Default::default()
    };
    call(Hypercall::NetListen, &mut l as *mut NetListenArgs as u64);
    let mut a = NetAcceptArgs {
        listener: l.handle,
        ..Default::default()
    };
    call(Hypercall::NetAccept, &mut a as *mut NetAcceptArgs as u64);
    if a.result != 0 {
        pvm::println!("net-scribble: accept {}", a.result);
        pvm::exit(1);
    }
    let head = core::mem::offset_of!(pvm_ipc::PipeRing, head) as u64;
    let tx = a.ring + pvm_ipc::net_tx_offset(a.capacity);
    for ring in [a.ring, tx] {
        // SAFETY: the connection's region is this guest's memory (the IPC window), writable.
        unsafe { core::ptr::write_volatile((ring + head) as *mut u64, u64::MAX / 3) };
    }
    pvm::println!("net-scribble: scribbled");
    let child = in_child(|| {
        let listener = pvm::net::TcpListener::bind(7).expect("listen");
        let (mut s, _) = listener.accept().expect("accept");
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).expect("read");
        s.write_all(&buf[..n]).expect("write");
        pvm::println!("net-scribble: child served");
    });
    pvm::println!("net-scribble: child {child:?}");
}
