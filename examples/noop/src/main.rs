//! Does nothing and exits 0: the guest `pvmctl bench boot` measures.
#![no_std]
#![no_main]

pvm::main!(main);

fn main() {}
