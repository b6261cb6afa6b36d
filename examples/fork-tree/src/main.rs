//! Forks N workers (default 4). Each worker computes on its own copy of the parent's memory;
//! the example checks that writes after the fork stay on their side, both ways, and the parent
//! prints how every worker ended.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec;
use alloc::vec::Vec;

use pvm::{ExitStatus, Fork};

pvm::main!(main);

const WORDS: usize = 128 * 1024; // 1 MiB of u64
const BEFORE_FORK: u64 = 0x1111;
/// The parent writes `PARENT_MARK + i` everywhere right after forking worker `i`.
const PARENT_MARK: u64 = 0x2222_0000;

fn main() -> i32 {
    let n: u64 = pvm::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(4);
    pvm::println!("fork-tree: pVM {} forks {n} workers", pvm::id());
    let mut data = vec![BEFORE_FORK; WORDS];
    let mut workers = Vec::new();
    for i in 1..=n {
        match pvm::fork() {
            Ok(Fork::Child) => worker(i, &mut data),
            Ok(Fork::Parent(child)) => {
                // Written right after the fork, while the worker's monitor is still building its
                // VM: a worker that saw this value would share our memory.
                data.fill(PARENT_MARK + i);
                workers.push((i, child));
            }
            Err(e) => {
                pvm::eprintln!("fork-tree: fork of worker {i} failed: {e}");
                break;
            }
        }
    }
    let mut failures = 0;
    for (i, child) in workers {
        let id = child.id();
        match child.wait() {
            Ok(ExitStatus::Exited(0)) => pvm::println!("worker {i} (pVM {id}): exited with code 0"),
            Ok(status) => {
                failures += 1;
                pvm::println!("worker {i} (pVM {id}): {status}");
            }
            Err(e) => {
                failures += 1;
                pvm::println!("worker {i} (pVM {id}): wait failed: {e}");
            }
        }
    }
    if data.iter().all(|&w| w == PARENT_MARK + n) {
        pvm::println!("parent: none of the workers' writes reached my memory");
    } else {
        pvm::println!("parent: ISOLATION BROKEN: a worker's write reached my memory");
        failures += 1;
    }
    pvm::println!("fork-tree: {} workers, {failures} failed", n);
    if failures == 0 {
        0
    } else {
        1
    }
}

fn worker(i: u64, data: &mut [u64]) -> ! {
    // Give the parent time to write its mark for this fork (it does so within microseconds of the fork); waiting only
    // makes the check below stronger, it cannot make it fail.
    let start = pvm::time::Instant::now();
    while start.elapsed().as_millis() < 5 {
        core::hint::spin_loop();
    }
    let saw_parent = data.iter().any(|&w| w == PARENT_MARK + i);
    let mine = 0x1_0000 + i;
    data.fill(mine);
    // Private work on private memory: a checksum of our own pattern.
    let sum: u64 = data.iter().fold(0u64, |acc, &w| acc.wrapping_add(w));
    let ok = sum == mine.wrapping_mul(data.len() as u64);
    pvm::println!(
        "worker {i}: pVM {} (parent {}, family {}): sum {sum:#x} {}, parent's writes {}",
        pvm::id(),
        pvm::parent_id(),
        pvm::family_id(),
        if ok { "ok" } else { "WRONG" },
        if saw_parent {
            "VISIBLE (isolation broken)"
        } else {
            "invisible"
        }
    );
    pvm::exit(if ok && !saw_parent { 0 } else { 1 })
}
