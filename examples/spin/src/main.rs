//! Says it is running, then computes forever: a pVM only a host signal stops. With
//! `--ignore-term` it handles TERM by going on (only KILL stops it, as `pvmctl stop` must find).
#![no_std]
#![no_main]

pvm::main!(main);

fn ignore(_: pvm::signal::Signal) {}

fn main() {
    let ignore_term = pvm::args().nth(1) == Some("--ignore-term");
    if ignore_term && pvm::signal::on(pvm::signal::Signal::Term, ignore).is_err() {
        pvm::exit(3);
    }
    pvm::println!("spinning");
    let mut x = 0u64;
    loop {
        x = core::hint::black_box(x.wrapping_add(1));
        if ignore_term && x.is_multiple_of(1 << 20) {
            // Handlers run when the guest looks: now and then.
            pvm::signal::dispatch();
        }
    }
}
