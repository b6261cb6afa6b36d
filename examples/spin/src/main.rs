//! Says it is running, then computes forever: a pVM only a host signal stops. With
//! `--ignore-term` it handles TERM by going on (only KILL stops it, as `pvmctl stop` must find).
//! `--print BYTES` prints that much console output (lines of 1000 bytes) and exits instead.
#![no_std]
#![no_main]

pvm::main!(main);

fn ignore(_: pvm::signal::Signal) {}

fn main() {
    if pvm::args().nth(1) == Some("--print") {
        let total: usize = pvm::args().nth(2).and_then(|n| n.parse().ok()).unwrap_or(0);
        let line = [b'x'; 999];
        let line = core::str::from_utf8(&line).unwrap_or("");
        for _ in 0..total.div_ceil(1000) {
            pvm::println!("{line}");
        }
        return;
    }
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
