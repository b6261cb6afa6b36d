//! Exits with the code given as its first argument; with `--via-exit`, through `pvm::exit`
//! from a nested call instead of returning from main.
#![no_std]
#![no_main]

pvm::main!(main);

fn main() -> i32 {
    let mut args = pvm::args().skip(1);
    let code: i32 = match args.next().map(str::parse) {
        Some(Ok(code)) => code,
        _ => {
            pvm::eprintln!("usage: exit CODE [--via-exit]");
            return 2;
        }
    };
    if args.next() == Some("--via-exit") {
        leave(code);
    }
    code
}

#[inline(never)]
fn leave(code: i32) -> ! {
    pvm::print!("leaving with {code} (buffered, no newline)");
    pvm::exit(code)
}
