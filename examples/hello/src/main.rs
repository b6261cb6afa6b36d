//! The smallest useful pVM: greets, echoes its arguments, uses the heap.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;

pvm::main!(main);

fn main() {
    pvm::println!("Hello from pVM {}!", pvm::id());
    let args: Vec<&str> = pvm::args().skip(1).collect();
    if !args.is_empty() {
        pvm::println!("args: {}", args.join(" "));
    }
}
