//! The guest side of `pvmctl bench fork`: touches MIB of memory, then forks ITERATIONS times a
//! child that exits at once, waiting for each; prints the wall time of the loop.
#![no_std]
#![no_main]

extern crate alloc;

use pvm::Fork;

pvm::main!(main);

fn main() -> i32 {
    let mut args = pvm::args().skip(1).map(|a| a.parse::<u64>().ok());
    let (Some(Some(iterations)), Some(Some(mib))) = (args.next(), args.next()) else {
        pvm::eprintln!("usage: forkbench ITERATIONS MIB");
        return 2;
    };
    let mut memory = alloc::vec![0u8; (mib as usize) << 20];
    for (i, page) in memory.chunks_mut(4096).enumerate() {
        page[0] = i as u8;
    }
    let start = pvm::time::Instant::now();
    for _ in 0..iterations {
        match pvm::fork() {
            Ok(Fork::Child) => pvm::exit(0),
            Ok(Fork::Parent(child)) => match child.wait() {
                Ok(status) if status.success() => {}
                other => {
                    pvm::eprintln!("forkbench: child ended badly: {other:?}");
                    return 1;
                }
            },
            Err(e) => {
                pvm::eprintln!("forkbench: fork failed: {e}");
                return 1;
            }
        }
    }
    let nanos = start.elapsed().as_nanos();
    pvm::println!("forkbench: {iterations} forks of {mib} MiB in {nanos} ns");
    core::hint::black_box(&memory);
    0
}
