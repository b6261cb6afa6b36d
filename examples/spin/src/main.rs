//! Says it is running, then computes forever: a pVM only a host signal stops.
#![no_std]
#![no_main]

pvm::main!(main);

fn main() {
    pvm::println!("spinning");
    let mut x = 0u64;
    loop {
        x = core::hint::black_box(x.wrapping_add(1));
    }
}
