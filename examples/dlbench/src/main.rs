//! The guest side of `pvmctl bench dynlink`, on a library the operator allows as `bench` (one
//! that exports `f0(u64) -> u64`):
//!
//! - `load N`: times `pvm::dl::open` + one symbol lookup, and `close`, N times (each a full
//!   load and link: the last close unloads);
//! - `call N`: times N calls through a handle and N calls of the same function through a plain
//!   function pointer (what a handle adds);
//! - `serve`: calls through a handle in a loop (for update pauses), `hold`: holds it open.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;

use core::hint::black_box;

use pvm::dl;
use pvm::time::{cycles, Instant};

pvm::main!(main);

type F = extern "C" fn(u64) -> u64;

fn main() -> i32 {
    let mut args = pvm::args().skip(1);
    let what = args.next().unwrap_or("");
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100);
    let samples = args.next() == Some("--samples");
    match what {
        "load" => load(n, samples),
        "call" => call(n),
        "serve" => serve(),
        "hold" => hold(),
        _ => {
            pvm::eprintln!("usage: dlbench load N [--samples] | call N | serve | hold");
            2
        }
    }
}

/// Times `n` loads (open + one lookup) and closes, separately; with `samples`, prints every
/// one after each summary (for `pvmctl bench`).
fn load(n: usize, samples_too: bool) -> i32 {
    let mut opens = Vec::with_capacity(n);
    let mut closes = Vec::with_capacity(n);
    let clock = Instant::now();
    let tsc0 = cycles();
    for i in 0..n + 3 {
        let t0 = cycles();
        let l = match dl::open("bench") {
            Ok(l) => l,
            Err(e) => {
                pvm::eprintln!("dlbench: {e}");
                return 1;
            }
        };
        // SAFETY: the bench library exports f0 with this type.
        let f = unsafe { l.sym::<F>("f0") };
        black_box(&f);
        let t1 = cycles();
        if let Err(e) = l.close() {
            pvm::eprintln!("dlbench: {e}");
            return 1;
        }
        let t2 = cycles();
        // The first three warm up.
        if i >= 3 {
            opens.push(t1 - t0);
            closes.push(t2 - t1);
        }
    }
    let ns_per_cycle = clock.elapsed().as_nanos() as f64 / (cycles() - tsc0).max(1) as f64;
    for (what, samples) in [("load", &mut opens), ("close", &mut closes)] {
        samples.sort_unstable();
        let ns = |c: u64| (c as f64 * ns_per_cycle) as u64;
        let p99 = samples[(n * 99).div_ceil(100).max(1) - 1];
        pvm::println!("{what}: median {} ns, p99 {} ns", ns(samples[n / 2]), ns(p99));
        if samples_too {
            let all: Vec<u64> = samples.iter().map(|&c| ns(c)).collect();
            pvm::time::print_samples(&all);
        }
    }
    0
}

/// Nanoseconds per iteration of `f` run `n` times (TSC, calibrated against the host clock).
fn per_call(n: usize, mut f: impl FnMut(u64) -> u64) -> f64 {
    let clock = Instant::now();
    let t0 = cycles();
    let mut acc = 0u64;
    for i in 0..n as u64 {
        acc = acc.wrapping_add(f(black_box(i)));
    }
    let tsc = cycles() - t0;
    black_box(acc);
    let ns = clock.elapsed().as_nanos() as f64;
    let per_cycle = ns / tsc.max(1) as f64;
    tsc as f64 * per_cycle / n as f64
}

fn call(n: usize) -> i32 {
    let l = match dl::open("bench") {
        Ok(l) => l,
        Err(e) => {
            pvm::eprintln!("dlbench: {e}");
            return 1;
        }
    };
    // SAFETY: the bench library exports f0 with this type.
    let handle = unsafe { l.sym::<F>("f0").expect("f0") };
    // SAFETY: the address of f0, called as the function it is (no update runs here).
    let direct: F = unsafe { core::mem::transmute::<usize, F>(handle.addr()) };
    let direct = black_box(direct);
    // Interleaved, several times: the minimum of each is the least disturbed.
    let (mut h, mut d) = (f64::MAX, f64::MAX);
    for _ in 0..5 {
        h = h.min(per_call(n, |x| handle.call(x)));
        d = d.min(per_call(n, |x| direct(x)));
    }
    pvm::println!("call: handle {h:.3} ns, direct {d:.3} ns");
    0
}

fn serve() -> i32 {
    let l = dl::open("bench").expect("the bench library");
    // SAFETY: the bench library exports f0 with this type.
    let f = unsafe { l.sym::<F>("f0").expect("f0") };
    pvm::println!("ready");
    let mut x = 0u64;
    loop {
        x = f.call(x);
    }
}

fn hold() -> i32 {
    let l = dl::open("bench").expect("the bench library");
    pvm::println!("ready {}", l.handle());
    pvm::pause()
}
