//! A TCP echo server: every byte a client sends comes back, until the client closes its side.
//!
//! `pvmctl run --publish 7007:7 examples/netecho -- [--port P] [--workers N] [--conns K]`
//! listens on guest port P (default 7); with `--workers N` it forks N pVMs that all accept from
//! the one listener (pre-fork, as nginx or Apache do) and waits for them; with `--conns K`
//! each server exits after K connections (else it serves for ever). Each served connection
//! prints `served PEER BYTES` from the pVM that served it. With `--sink` a server reads what a
//! client sends without echoing it and, at its end of file, answers the byte count in decimal
//! (a throughput sink for `pvmctl bench net`). `--client ADDR:PORT MESSAGE` is the other side:
//! it connects (the operator must allow it: `pvmctl run --connect ADDR:PORT`), sends MESSAGE
//! and prints `got ECHO`.
#![no_std]
#![no_main]

extern crate alloc;

use pvm::net::{Error, TcpListener, TcpStream};
use pvm::Fork;

pvm::main!(main);

fn serve(listener: &TcpListener, conns: Option<u64>, sink: bool) -> Result<(), Error> {
    let mut served = 0;
    while conns.is_none_or(|k| served < k) {
        let (mut stream, peer) = listener.accept()?;
        // A client that resets or vanishes ends its own connection, not the server.
        let done = if sink {
            drain(&mut stream)
        } else {
            echo(&mut stream)
        };
        match done {
            Ok(bytes) => pvm::println!("served {peer} {bytes} by pVM {}", pvm::id()),
            Err(e) => pvm::println!("served {peer} until: {e} by pVM {}", pvm::id()),
        }
        served += 1;
    }
    Ok(())
}

/// Reads until end of file, then answers the count; returns it.
fn drain(stream: &mut TcpStream) -> Result<u64, Error> {
    let mut buf = [0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    let text = alloc::format!("{total}");
    stream.write_all(text.as_bytes())?;
    Ok(total)
}

/// Echoes until end of file; returns the bytes echoed.
fn echo(stream: &mut TcpStream) -> Result<u64, Error> {
    let mut buf = [0u8; 16 * 1024];
    let mut total = 0;
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(total);
        }
        stream.write_all(&buf[..n])?;
        total += n as u64;
    }
}

/// `--client ADDR:PORT MESSAGE`: sends MESSAGE to an echo server, half-closes, prints what
/// came back.
fn client(addr: &str) -> Result<(), Error> {
    let message = pvm::args().nth(3).unwrap_or("hello");
    let Ok(addr) = addr.parse() else {
        pvm::eprintln!("netecho: {addr:?} is not ADDR:PORT");
        pvm::exit(2);
    };
    let mut stream = match TcpStream::connect(addr) {
        Ok(s) => s,
        Err(e) => {
            pvm::eprintln!("netecho: cannot connect to {addr}: {e}");
            pvm::exit(1);
        }
    };
    stream.write_all(message.as_bytes())?;
    stream.shutdown(pvm::net::Shutdown::Write);
    let mut got = alloc::vec::Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    pvm::println!("got {}", core::str::from_utf8(&got).unwrap_or("?"));
    Ok(())
}

fn main() -> Result<(), Error> {
    let (mut port, mut workers, mut conns, mut sink) = (7u16, 0u32, None, false);
    let mut args = pvm::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--sink" {
            sink = true;
            continue;
        }
        if a == "--client" {
            return client(args.next().unwrap_or(""));
        }
        let value = args.next().and_then(|v| v.parse::<u64>().ok());
        match (a, value) {
            ("--port", Some(v)) => port = v as u16,
            ("--workers", Some(v)) => workers = v as u32,
            ("--conns", Some(v)) => conns = Some(v),
            _ => {
                pvm::eprintln!("usage: netecho [--port P] [--workers N] [--conns K] [--sink]");
                pvm::exit(2);
            }
        }
    }
    let listener = match TcpListener::bind(port) {
        Ok(l) => l,
        Err(e) => {
            pvm::eprintln!("netecho: cannot listen on port {port}: {e}");
            pvm::exit(1);
        }
    };
    pvm::println!("listening on guest port {port}");
    if workers == 0 {
        return serve(&listener, conns, sink);
    }
    for _ in 0..workers {
        match pvm::fork() {
            Ok(Fork::Child) => {
                let code = match serve(&listener, conns, sink) {
                    Ok(()) => 0,
                    Err(e) => {
                        pvm::eprintln!("netecho worker {}: {e}", pvm::id());
                        1
                    }
                };
                pvm::exit(code);
            }
            Ok(Fork::Parent(_)) => {}
            Err(e) => {
                pvm::eprintln!("netecho: fork: {e:?}");
                pvm::exit(1);
            }
        }
    }
    pvm::println!("{workers} workers");
    let mut failed = 0;
    for _ in 0..workers {
        match pvm::wait_any() {
            Ok((_, status)) if status.success() => {}
            _ => failed += 1,
        }
    }
    pvm::exit(if failed == 0 { 0 } else { 1 })
}
