//! Allocates and touches the number of MiB given as its argument, then checks every byte.
//! `memtest scan MIB` instead allocates MIB MiB without writing them, checks they read as zero
//! (what a fresh VM's memory is), reports, and then fills them with a marker: a later pVM that
//! saw this one's memory would find the marker.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;

pvm::main!(main);

/// What `scan` leaves behind.
const MARKER: u64 = 0x5ca1_ab1e_dead_beef;

fn scan(mib: usize) -> i32 {
    let len = mib << 20;
    let Ok(layout) = core::alloc::Layout::from_size_align(len, 4096) else {
        return 2;
    };
    // SAFETY: a non-zero size; the block is released only when the pVM ends.
    let base = unsafe { alloc::alloc::alloc(layout) }.cast::<u64>();
    if base.is_null() {
        pvm::eprintln!("cannot allocate {mib} MiB");
        return 2;
    }
    let words = len / 8;
    // Read as memory the program never wrote (volatile: as a device's), then overwrite. The
    // first page is skipped: the allocator kept its own notes at the start of the free block.
    let first = 4096 / 8;
    // SAFETY: every index is inside the block just allocated.
    let dirty = (first..words).find(|&i| unsafe { core::ptr::read_volatile(base.add(i)) } != 0);
    for i in 0..words {
        // SAFETY: as above.
        unsafe { core::ptr::write_volatile(base.add(i), MARKER) };
    }
    match dirty {
        None => {
            pvm::println!("scanned {mib} MiB at {:#x}: all zero", base as usize);
            0
        }
        Some(i) => {
            pvm::println!("scanned {mib} MiB at {:#x}: NOT zero at word {i}", base as usize);
            1
        }
    }
}

fn main() -> i32 {
    if pvm::args().nth(1) == Some("scan") {
        return match pvm::args().nth(2).map(str::parse::<usize>) {
            Some(Ok(mib)) if mib > 0 => scan(mib),
            _ => {
                pvm::eprintln!("usage: memtest scan MIB");
                2
            }
        };
    }
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
