//! The smallest useful pVM: greets, echoes its arguments, uses the heap.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;

pvm::main!(main);

fn main() {
    let mut args = pvm::args();
    let name = args.next().unwrap_or("?");
    pvm::println!(
        "Hello from pVM {} ({name}, {} MiB)!",
        pvm::id(),
        pvm::mem_size() >> 20
    );
    let rest: Vec<&str> = args.collect();
    if !rest.is_empty() {
        pvm::println!("args: {}", rest.join(" "));
    }
}
