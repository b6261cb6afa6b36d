//! A producer feeds forked workers through a message queue; a consumer collects the results
//! from a second queue. `pipeline [JOBS] [WORKERS]` (default 200 jobs, 3 workers).
//!
//! Each job is a number n; a worker answers with the number of primes below n. The consumer,
//! a pVM of its own, adds the answers up and checks them against its own count.
#![no_std]
#![no_main]

use pvm::ipc::{Error, MessageQueue};
use pvm::Fork;

pvm::main!(main);

fn primes_below(n: u64) -> u64 {
    (2..n)
        .filter(|&k| (2..k).take_while(|d| d * d <= k).all(|d| k % d != 0))
        .count() as u64
}

fn job(i: u64) -> u64 {
    1000 + i * 37 % 2000
}

fn main() -> Result<(), Error> {
    let mut args = pvm::args().skip(1).map(|a| a.parse::<u64>().ok());
    let jobs = args.next().flatten().unwrap_or(200);
    let workers = args.next().flatten().unwrap_or(3);
    let work = MessageQueue::open_with("pipeline.work", 64, 8)?;
    let results = MessageQueue::open_with("pipeline.results", 64, 16)?;

    // The consumer: a pVM that collects every result.
    let consumer = match pvm::fork() {
        Ok(Fork::Child) => {
            let mut total = 0u64;
            let mut by_worker = [0u64; 16];
            let mut buf = [0u8; 16];
            for _ in 0..jobs {
                results.receive(&mut buf)?;
                let primes = u64::from_le_bytes(buf[..8].try_into().unwrap_or_default());
                let worker = u64::from_le_bytes(buf[8..].try_into().unwrap_or_default()) as usize;
                total += primes;
                by_worker[worker % 16] += 1;
            }
            let expected: u64 = (0..jobs).map(|i| primes_below(job(i))).sum();
            pvm::println!(
                "consumer (pVM {}): {jobs} results, {total} primes in all, {}",
                pvm::id(),
                if total == expected { "correct" } else { "WRONG" }
            );
            for (w, n) in by_worker.iter().enumerate().take(workers as usize) {
                pvm::println!("consumer: worker {w} did {n} jobs");
            }
            pvm::exit(if total == expected { 0 } else { 1 })
        }
        Ok(Fork::Parent(child)) => child,
        Err(e) => {
            pvm::eprintln!("pipeline: fork failed: {e}");
            pvm::exit(1)
        }
    };

    let mut pool = [const { None }; 16];
    for (w, slot) in pool.iter_mut().enumerate().take(workers.min(16) as usize) {
        match pvm::fork() {
            Ok(Fork::Child) => {
                let mut buf = [0u8; 8];
                loop {
                    work.receive(&mut buf)?;
                    let n = u64::from_le_bytes(buf);
                    if n == 0 {
                        pvm::exit(0);
                    }
                    let mut answer = [0u8; 16];
                    answer[..8].copy_from_slice(&primes_below(n).to_le_bytes());
                    answer[8..].copy_from_slice(&(w as u64).to_le_bytes());
                    results.send(&answer)?;
                }
            }
            Ok(Fork::Parent(child)) => *slot = Some(child),
            Err(e) => pvm::eprintln!("pipeline: fork of worker {w} failed: {e}"),
        }
    }
    pvm::println!("producer (pVM {}): {jobs} jobs for {workers} workers", pvm::id());
    for i in 0..jobs {
        work.send(&job(i).to_le_bytes())?;
    }
    for _ in 0..workers {
        work.send(&0u64.to_le_bytes())?;
    }
    for child in pool.iter_mut().filter_map(Option::take) {
        let _ = child.wait();
    }
    let status = consumer.wait();
    pvm::println!("producer: consumer {status:?}");
    Ok(())
}
