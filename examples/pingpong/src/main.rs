//! Two pVMs bounce a byte N times (default 10000) over a pair of pipes; the parent prints the
//! round-trip time. `--no-spin` makes every wait sleep in the monitor at once; `--samples`
//! prints every round trip too, for `pvmctl bench`.
//!
//! Round trips are timed with `pvm::time::time_each` (the TSC, no exit, calibrated against the
//! host clock).
#![no_std]
#![no_main]

extern crate alloc;

use pvm::ipc;
use pvm::Fork;

pvm::main!(main);

/// One error type for the fork and the pipes: `?` works on both.
fn main() -> Result<(), pvm::Error> {
    let mut rounds = 10_000usize;
    let mut size = 1usize;
    let mut print_samples = false;
    for arg in pvm::args().skip(1) {
        match arg {
            "--no-spin" => ipc::set_spin(0),
            "--samples" => print_samples = true,
            a if a.starts_with("--size=") => size = a[7..].parse().unwrap_or(1),
            a => rounds = a.parse().unwrap_or(rounds),
        }
    }
    let (mut ping_r, mut ping_w) = ipc::pipe()?;
    let (mut pong_r, mut pong_w) = ipc::pipe()?;
    let mut buf = alloc::vec![0u8; size];
    match pvm::fork()? {
        Fork::Child => {
            drop(ping_w);
            drop(pong_r);
            for _ in 0..rounds {
                ping_r.read_exact(&mut buf)?;
                pong_w.write_all(&buf)?;
            }
            pvm::exit(0)
        }
        Fork::Parent(child) => {
            drop(ping_r);
            drop(pong_w);
            let samples = pvm::time::time_each(rounds, |i| {
                buf[0] = i as u8;
                ping_w.write_all(&buf)?;
                pong_r.read_exact(&mut buf)?;
                if buf[0] != i as u8 {
                    pvm::eprintln!("pingpong: round {i} came back wrong");
                    pvm::exit(1);
                }
                Ok::<(), ipc::Error>(())
            })?;
            let median = samples[rounds / 2];
            let p99 = samples[(rounds * 99 / 100).min(rounds - 1)];
            let mean = samples.iter().sum::<u64>() / rounds as u64;
            let status = child.wait()?;
            pvm::println!(
                "pingpong: {rounds} round trips of {size} byte(s): median {median} ns, p99 {p99} ns, mean {mean} ns; peer {status}"
            );
            if print_samples {
                pvm::time::print_samples(&samples);
            }
            Ok(())
        }
    }
}
