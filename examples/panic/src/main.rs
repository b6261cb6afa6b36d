//! Panics with a message built at run time.
#![no_std]
#![no_main]

pvm::main!(main);

fn main() {
    pvm::println!("about to panic");
    let n = pvm::args().count();
    panic!("deliberate panic with {} argument(s)", n);
}
