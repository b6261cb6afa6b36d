//! The guest side of `pvmctl bench ipc`:
//! - `stream MIB [--no-spin]`: a child writes MIB MiB in 64 KiB writes through a pipe, the
//!   parent reads it all; prints the throughput.
//! - `mq N [--no-spin]`: parent and child bounce a 1-byte message N times through two message
//!   queues; prints the round trip median and p99.
//! - `signal N`: parent and child bounce USR1 N times (kill, handler, kill back); prints the
//!   round trip (two deliveries) median and p99.
//! - `hypercall N`: N clock reads, one hypercall (exit to the monitor and back) each; prints the
//!   round trip median and p99.
//!
//! Times come from the TSC (no exit), calibrated against the host clock over the whole run.
//! `--samples` (after N) prints every round trip after the summary, for `pvmctl bench`.
#![no_std]
#![no_main]

extern crate alloc;

use core::sync::atomic::{AtomicU32, Ordering};

use pvm::ipc::{self, MessageQueue};
use pvm::signal::{self, Signal};
use pvm::Fork;

pvm::main!(main);

/// `--samples`: print every sample after the summary (for `pvmctl bench`).
static PRINT_SAMPLES: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Prints the median and p99 of sorted samples (and the samples, with `--samples`).
fn report(what: &str, samples: &[u64]) {
    let n = samples.len();
    pvm::println!(
        "ipcbench {what}: {n} round trips: median {} ns, p99 {} ns",
        samples[n / 2],
        samples[(n * 99 / 100).min(n - 1)]
    );
    if PRINT_SAMPLES.load(Ordering::Relaxed) {
        pvm::time::print_samples(samples);
    }
}

fn main() -> i32 {
    let mut args = pvm::args().skip(1);
    let what = args.next().unwrap_or("");
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(0);
    for flag in args {
        match flag {
            "--no-spin" => ipc::set_spin(0),
            "--samples" => PRINT_SAMPLES.store(true, Ordering::Relaxed),
            _ => {}
        }
    }
    let result = match (what, n) {
        ("stream", mib) if mib > 0 => stream(mib),
        ("signal", rounds) if rounds > 0 => signal_pingpong(rounds),
        ("mq", rounds) if rounds > 0 => mq_pingpong(rounds),
        ("hypercall", rounds) if rounds > 0 => hypercalls(rounds),
        _ => {
            pvm::eprintln!(
                "usage: ipcbench stream MIB [--no-spin] | signal N | mq N [--no-spin] | hypercall N"
            );
            return 2;
        }
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            pvm::eprintln!("ipcbench: {e}");
            1
        }
    }
}

fn stream(mib: usize) -> Result<(), ipc::Error> {
    let (mut r, mut w) = ipc::pipe_with_capacity(1 << 20)?;
    let chunk = alloc::vec![0x5au8; 64 * 1024];
    let total = mib << 20;
    match pvm::fork() {
        Ok(Fork::Child) => {
            drop(r);
            let mut sent = 0;
            while sent < total {
                w.write_all(&chunk)?;
                sent += chunk.len();
            }
            pvm::exit(0)
        }
        Ok(Fork::Parent(child)) => {
            drop(w);
            let mut buf = alloc::vec![0u8; 64 * 1024];
            let start = pvm::time::Instant::now();
            let mut got = 0usize;
            loop {
                let n = r.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                got += n;
            }
            let nanos = start.elapsed().as_nanos() as u64;
            let _ = child.wait();
            pvm::println!("ipcbench stream: {got} bytes in {nanos} ns");
            Ok(())
        }
        Err(_) => Err(ipc::Error::Unavailable),
    }
}

static GOT: AtomicU32 = AtomicU32::new(0);
static PEER_ENDED: AtomicU32 = AtomicU32::new(0);

fn on_chld(_: Signal) {
    PEER_ENDED.store(1, Ordering::SeqCst);
}

fn on_usr1(_: Signal) {
    GOT.fetch_add(1, Ordering::SeqCst);
}

/// Sleeps in the monitor until a USR1 handler ran since `seen`; returns the new count. Ends
/// the pVM if the peer (a child) ended meanwhile, rather than wait forever.
fn await_signal(seen: u32) -> u32 {
    loop {
        let now = GOT.load(Ordering::SeqCst);
        if now != seen {
            return now;
        }
        if PEER_ENDED.load(Ordering::SeqCst) != 0 {
            pvm::eprintln!("ipcbench: the peer ended");
            pvm::exit(1);
        }
        pvm::hypercall::raw(pvm::hypercall::Hypercall::Pause, 0);
        signal::dispatch();
    }
}

fn signal_pingpong(rounds: usize) -> Result<(), ipc::Error> {
    if signal::on(Signal::Usr1, on_usr1).is_err() || signal::on(Signal::Chld, on_chld).is_err() {
        return Err(ipc::Error::Unavailable);
    }
    let parent = pvm::id();
    match pvm::fork() {
        Ok(Fork::Child) => {
            let mut seen = 0;
            for _ in 0..rounds {
                seen = await_signal(seen);
                let _ = signal::kill(parent, Signal::Usr1);
            }
            pvm::exit(0)
        }
        Ok(Fork::Parent(child)) => {
            let mut seen = 0;
            let samples = pvm::time::time_each(rounds, |_| {
                signal::kill(child.id(), Signal::Usr1).map_err(|_| ipc::Error::BrokenPipe)?;
                seen = await_signal(seen);
                Ok::<(), ipc::Error>(())
            })?;
            let _ = child.wait();
            report("signal", &samples);
            Ok(())
        }
        Err(_) => Err(ipc::Error::Unavailable),
    }
}

fn mq_pingpong(rounds: usize) -> Result<(), ipc::Error> {
    let ping = MessageQueue::open_with("bench.ping", 16, 8)?;
    let pong = MessageQueue::open_with("bench.pong", 16, 8)?;
    let mut buf = [0u8; 8];
    match pvm::fork() {
        Ok(Fork::Child) => {
            for _ in 0..rounds {
                let n = ping.receive(&mut buf)?;
                pong.send(&buf[..n])?;
            }
            pvm::exit(0)
        }
        Ok(Fork::Parent(child)) => {
            let samples = pvm::time::time_each(rounds, |i| {
                ping.send(&[i as u8])?;
                pong.receive(&mut buf).map(|_| ())
            })?;
            let _ = child.wait();
            report("mq", &samples);
            Ok(())
        }
        Err(_) => Err(ipc::Error::Unavailable),
    }
}

/// The cheapest hypercall, N times: what one exit to the monitor and back costs.
fn hypercalls(rounds: usize) -> Result<(), ipc::Error> {
    let samples = pvm::time::time_each(rounds, |_| {
        core::hint::black_box(pvm::time::Instant::now());
        Ok::<(), ipc::Error>(())
    })?;
    report("hypercall", &samples);
    Ok(())
}
