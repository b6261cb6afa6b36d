//! Fork scenarios the integration tests check; the first argument names one.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;
use core::arch::asm;

use pvm::{ExitStatus, Fork};
use pvm_abi::{ForkArgs, Hypercall};

pvm::main!(main);

fn main() -> i32 {
    let mut args = pvm::args().skip(1);
    let what = args.next().unwrap_or("");
    let n: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    match what {
        "basic" => basic(),
        "diverge" => diverge(),
        "registers" => registers(),
        "nested" => nested(),
        "statuses" => statuses(),
        "wait-any" => wait_any(n),
        "limit" => limit(),
        "touch" => touch(n),
        "idle" => idle(n),
        "chain" => chain(),
        "chatter" => chatter(n),
        "orphans" => orphans(n),
        "wait-interrupted" => wait_interrupted(),
        _ => {
            pvm::eprintln!(
                "usage: forktest basic|diverge|registers|nested|statuses|wait-any N|limit|touch MIB|idle N"
            );
            2
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

fn wait(child: pvm::Child) -> ExitStatus {
    match child.wait() {
        Ok(s) => s,
        Err(e) => {
            pvm::println!("wait failed: {e}");
            pvm::exit(91)
        }
    }
}

/// fork returns twice: 0 in the child, the child's id in the parent; ids line up.
fn basic() -> i32 {
    let me = pvm::id();
    match fork() {
        Fork::Child => {
            pvm::println!(
                "child: id {} parent {} family {}",
                pvm::id(),
                pvm::parent_id(),
                pvm::family_id()
            );
            pvm::exit(7)
        }
        Fork::Parent(child) => {
            let id = child.id();
            pvm::println!(
                "parent: id {me} parent {} family {} child {id}",
                pvm::parent_id(),
                pvm::family_id()
            );
            pvm::println!("parent: child {id} {}", wait(child));
            0
        }
    }
}

static mut GLOBAL: u64 = 1;

/// Writes after the fork stay on their side, in both directions, for heap, stack and globals.
fn diverge() -> i32 {
    let mut heap = alloc::vec![1u64; 4096];
    let mut stack = [1u64; 64];
    match fork() {
        Fork::Child => {
            // Let the parent write first (it does within microseconds); see ARCHITECTURE.md.
            let start = pvm::time::Instant::now();
            while start.elapsed().as_millis() < 5 {
                core::hint::spin_loop();
            }
            // SAFETY: single-threaded guest; no other reference to GLOBAL exists.
            let global = unsafe { core::ptr::read_volatile(&raw const GLOBAL) };
            let seen = (heap[100], stack[10], global);
            pvm::println!("child sees {seen:?}");
            heap.fill(3);
            stack.fill(3);
            // SAFETY: as above.
            unsafe { core::ptr::write_volatile(&raw mut GLOBAL, 3) };
            pvm::exit(if seen == (1, 1, 1) { 0 } else { 1 })
        }
        Fork::Parent(child) => {
            heap.fill(2);
            stack.fill(2);
            // SAFETY: as above.
            unsafe { core::ptr::write_volatile(&raw mut GLOBAL, 2) };
            let status = wait(child);
            // SAFETY: as above.
            let global = unsafe { core::ptr::read_volatile(&raw const GLOBAL) };
            let seen = (heap[100], core::hint::black_box(&stack)[10], global);
            pvm::println!("parent sees {seen:?} after the child {status}");
            if seen == (2, 2, 2) && status.success() {
                0
            } else {
                1
            }
        }
    }
}

/// All 16 XMM registers, MXCSR and the x87 control word hold values across the fork hypercall,
/// and a floating-point computation spanning the fork ends the same on both sides.
fn registers() -> i32 {
    let pattern: [u64; 32] =
        core::array::from_fn(|i| 0x0123_4567_89ab_cdef_u64.rotate_left(i as u32 * 5) ^ i as u64);
    let mut after = [0u64; 32];
    let mut args = ForkArgs::default();
    let mxcsr_in: u32 = 0x1f80 | (0b10 << 13); // round up
    let mut mxcsr_out: u32 = 0;
    let fcw_in: u16 = 0x037f & !0x0300 | 0x0200; // x87 precision: double
    let mut fcw_out: u16 = 0;
    // Partial sums before the fork, finished after it.
    let mut acc = 0.0f64;
    for k in 1..=1000 {
        acc += 1.0 / (k as f64 * k as f64);
    }
    // SAFETY: loads the XMM registers, MXCSR and FCW from locals, makes the fork hypercall
    // (a store to the hypercall window, with `args` as its argument struct) and stores the
    // registers back; every clobbered register is declared.
    unsafe {
        asm!(
            "ldmxcsr [{mxin}]",
            "fldcw [{fcwin}]",
            "movdqu xmm0, [{src}]", "movdqu xmm1, [{src} + 16]", "movdqu xmm2, [{src} + 32]",
            "movdqu xmm3, [{src} + 48]", "movdqu xmm4, [{src} + 64]", "movdqu xmm5, [{src} + 80]",
            "movdqu xmm6, [{src} + 96]", "movdqu xmm7, [{src} + 112]", "movdqu xmm8, [{src} + 128]",
            "movdqu xmm9, [{src} + 144]", "movdqu xmm10, [{src} + 160]", "movdqu xmm11, [{src} + 176]",
            "movdqu xmm12, [{src} + 192]", "movdqu xmm13, [{src} + 208]", "movdqu xmm14, [{src} + 224]",
            "movdqu xmm15, [{src} + 240]",
            "mov qword ptr [{hc}], {arg}",
            "movdqu [{dst}], xmm0", "movdqu [{dst} + 16], xmm1", "movdqu [{dst} + 32], xmm2",
            "movdqu [{dst} + 48], xmm3", "movdqu [{dst} + 64], xmm4", "movdqu [{dst} + 80], xmm5",
            "movdqu [{dst} + 96], xmm6", "movdqu [{dst} + 112], xmm7", "movdqu [{dst} + 128], xmm8",
            "movdqu [{dst} + 144], xmm9", "movdqu [{dst} + 160], xmm10", "movdqu [{dst} + 176], xmm11",
            "movdqu [{dst} + 192], xmm12", "movdqu [{dst} + 208], xmm13", "movdqu [{dst} + 224], xmm14",
            "movdqu [{dst} + 240], xmm15",
            "stmxcsr [{mxout}]",
            "fnstcw [{fcwout}]",
            "ldmxcsr [{mxdef}]",
            "fldcw [{fcwdef}]",
            src = in(reg) pattern.as_ptr(),
            dst = in(reg) after.as_mut_ptr(),
            hc = in(reg) Hypercall::Fork.address(),
            arg = in(reg) &mut args as *mut ForkArgs as u64,
            mxin = in(reg) &mxcsr_in,
            mxout = in(reg) &mut mxcsr_out,
            mxdef = in(reg) &0x1f80u32,
            fcwin = in(reg) &fcw_in,
            fcwout = in(reg) &mut fcw_out,
            fcwdef = in(reg) &0x037fu16,
            out("xmm0") _, out("xmm1") _, out("xmm2") _, out("xmm3") _, out("xmm4") _, out("xmm5") _,
            out("xmm6") _, out("xmm7") _, out("xmm8") _, out("xmm9") _, out("xmm10") _, out("xmm11") _,
            out("xmm12") _, out("xmm13") _, out("xmm14") _, out("xmm15") _,
        );
    }
    for k in 1001..=2000 {
        acc += 1.0 / (k as f64 * k as f64);
    }
    let side = if args.result == 0 { "child" } else { "parent" };
    let ok = after == pattern && mxcsr_out == mxcsr_in && fcw_out == fcw_in;
    // 2 decimal digits are stable whatever the rounding of the last bits.
    let acc_ok = (acc - 1.644_434_3).abs() < 1e-6;
    pvm::println!(
        "{side}: xmm {} mxcsr {mxcsr_out:#x} fcw {fcw_out:#x} sum {acc:.6}",
        if after == pattern { "kept" } else { "LOST" }
    );
    if args.result == 0 {
        pvm::exit(if ok && acc_ok { 0 } else { 1 });
    }
    if args.result < 0 {
        return 90;
    }
    let status = wait(pvm::Child::from_id(args.result as u64));
    pvm::println!("parent: child {status}");
    if ok && acc_ok && status.success() {
        0
    } else {
        1
    }
}

/// A grandchild: ids and statuses through two generations.
fn nested() -> i32 {
    let root = pvm::id();
    match fork() {
        Fork::Child => {
            let child = pvm::id();
            match fork() {
                Fork::Child => {
                    pvm::println!(
                        "grandchild: id {} parent {} family {}",
                        pvm::id(),
                        pvm::parent_id(),
                        pvm::family_id()
                    );
                    pvm::exit(5)
                }
                Fork::Parent(grandchild) => {
                    let gid = grandchild.id();
                    let status = wait(grandchild);
                    pvm::println!(
                        "child: id {child} parent {} grandchild {gid} {status}",
                        pvm::parent_id()
                    );
                    pvm::exit(if status == ExitStatus::Exited(5) { 6 } else { 1 })
                }
            }
        }
        Fork::Parent(child) => {
            let id = child.id();
            let status = wait(child);
            pvm::println!("root: id {root} child {id} {status}");
            0
        }
    }
}

/// Children that exit, crash and wait to be killed; the parent reports each.
fn statuses() -> i32 {
    let mut children = Vec::new();
    for kind in ["exit", "crash", "killed"] {
        match fork() {
            Fork::Child => match kind {
                "exit" => pvm::exit(42),
                "crash" => {
                    // SAFETY: deliberately writes address 0, which is never mapped.
                    unsafe { core::ptr::write_volatile(core::ptr::null_mut::<u64>(), 1) };
                    pvm::exit(0)
                }
                _ => {
                    pvm::println!("waiting to be killed: {}", pvm::id());
                    pvm::pause()
                }
            },
            Fork::Parent(child) => children.push((kind, child)),
        }
    }
    for (kind, child) in children {
        pvm::println!("{kind}: {}", wait(child));
    }
    0
}

/// wait_any collects every child, whatever the order they end in.
fn wait_any(n: u64) -> i32 {
    let mut ids = Vec::new();
    for i in 0..n {
        match fork() {
            Fork::Child => pvm::exit(10 + i as i32),
            Fork::Parent(child) => ids.push(child.id()),
        }
    }
    let mut codes = Vec::new();
    for _ in 0..n {
        match pvm::wait_any() {
            Ok((id, ExitStatus::Exited(code))) if ids.contains(&id) => codes.push(code),
            other => {
                pvm::println!("unexpected: {other:?}");
                return 1;
            }
        }
    }
    codes.sort();
    pvm::println!("codes {codes:?}, then {:?}", pvm::wait_any().err());
    0
}

/// Forks idle children until the family limit answers; the parent keeps running.
fn limit() -> i32 {
    let mut children = Vec::new();
    let error = loop {
        match pvm::fork() {
            Ok(Fork::Child) => pvm::pause(),
            Ok(Fork::Parent(child)) => children.push(child),
            Err(e) => break e,
        }
    };
    pvm::println!("forked {} children, then: {error}", children.len());
    pvm::println!("still running after the refused fork");
    pvm::pause()
}

/// Fork with MIB of touched memory: the child checks every page and changes it, the parent
/// checks nothing changed on its side.
fn touch(mib: u64) -> i32 {
    let mut memory = alloc::vec![0u8; (mib as usize) << 20];
    for (i, page) in memory.chunks_mut(4096).enumerate() {
        page[0] = i as u8;
        page[4095] = !(i as u8);
    }
    let intact = |m: &[u8]| {
        m.chunks(4096)
            .enumerate()
            .all(|(i, p)| p[0] == i as u8 && p[4095] == !(i as u8))
    };
    match fork() {
        Fork::Child => {
            let ok = intact(&memory);
            memory.fill(0xee);
            pvm::exit(if ok { 0 } else { 1 })
        }
        Fork::Parent(child) => {
            let status = wait(child);
            pvm::println!(
                "touch {mib} MiB: child {status}, parent memory {}",
                if intact(&memory) { "intact" } else { "CHANGED" }
            );
            0
        }
    }
}

/// N idle children; the parent reports and idles too.
fn idle(n: u64) -> i32 {
    for _ in 0..n {
        if let Fork::Child = fork() {
            pvm::pause();
        }
    }
    pvm::println!("idle: {n} children forked");
    pvm::pause()
}

/// Root -> child -> grandchild; the root waits for the child, the others idle. Killing the
/// child must leave the grandchild running (an orphan, collected by the family's root).
fn chain() -> i32 {
    match fork() {
        Fork::Child => {
            if let Fork::Child = fork() {
                pvm::println!("grandchild ready: {}", pvm::id());
                pvm::pause();
            }
            pvm::println!("child ready: {}", pvm::id());
            pvm::pause()
        }
        Fork::Parent(child) => {
            let id = child.id();
            pvm::println!("chain: child {id} {}", wait(child));
            pvm::pause()
        }
    }
}

/// N children print long lines at the same time: the console must never mix two lines.
fn chatter(n: u64) -> i32 {
    let mut children = Vec::new();
    for c in 0..n {
        match fork() {
            Fork::Child => {
                let pad = "x".repeat(300);
                for i in 0..40 {
                    pvm::println!("chatter {c} {i} {pad}");
                }
                pvm::exit(0)
            }
            Fork::Parent(child) => children.push(child),
        }
    }
    for child in children {
        if !wait(child).success() {
            return 1;
        }
    }
    0
}

/// N idle children, then the root exits: its family outlives it.
fn orphans(n: u64) -> i32 {
    for _ in 0..n {
        if let Fork::Child = fork() {
            pvm::pause();
        }
    }
    pvm::println!("orphans: {n} children forked, root exits");
    0
}

static USR1_SEEN: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);

/// A handled signal interrupts a blocked wait once: the handler runs, the wait goes on.
fn wait_interrupted() -> i32 {
    use core::sync::atomic::Ordering;
    use pvm::signal::{self, Signal};
    if signal::on(Signal::Usr1, |_| {
        USR1_SEEN.fetch_add(1, Ordering::SeqCst);
    })
    .is_err()
    {
        return 1;
    }
    let parent = pvm::id();
    let child = match fork() {
        Fork::Child => {
            let _ = signal::kill(parent, Signal::Usr1);
            // Outlast the parent's interrupted wait by a little.
            let start = pvm::time::Instant::now();
            while start.elapsed().as_millis() < 20 {}
            pvm::exit(3)
        }
        Fork::Parent(child) => child.id(),
    };
    let mut interrupted = 0;
    let status = loop {
        match pvm::Child::from_id(child).wait() {
            Ok(s) => break s,
            Err(pvm::process::Error::Interrupted) => interrupted += 1,
            Err(e) => {
                pvm::println!("wait-interrupted: {e}");
                return 1;
            }
        }
        if interrupted > 1000 {
            pvm::println!("wait-interrupted: interrupted forever");
            return 1;
        }
    };
    pvm::println!(
        "wait-interrupted: handler ran {} time(s), then {status:?}",
        USR1_SEEN.load(Ordering::SeqCst)
    );
    0
}
