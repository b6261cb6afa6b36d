//! Allocates and touches the number of MiB given as its argument, then checks every byte.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;

pvm::main!(main);

fn main() -> i32 {
    let Some(Ok(mib)) = pvm::args().nth(1).map(str::parse::<usize>) else {
        pvm::eprintln!("usage: memtest MIB");
        return 2;
    };
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    for i in 0..mib {
        blocks.push(alloc::vec![i as u8; 1 << 20]);
    }
    let ok = blocks
        .iter()
        .enumerate()
        .all(|(i, b)| b.iter().all(|&x| x == i as u8));
    pvm::println!(
        "touched {mib} MiB of {} MiB: {}",
        pvm::mem_size() >> 20,
        if ok { "ok" } else { "CORRUPT" }
    );
    if ok {
        0
    } else {
        1
    }
}
