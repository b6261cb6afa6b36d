//! The kv server on a published TCP port, speaking the Redis protocol: one pVM serves every
//! client from an event loop (`pvm::net::poll`), as Redis does; each command runs in libkv
//! (`kv_exec`), so `pvmctl lib update` swaps the handler while clients are connected.
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use pvm::dl;
use pvm::net::{self, PollEntry, TcpListener, TcpStream, READABLE, WRITABLE};

#[path = "../../libs/kv-store/src/resp.rs"]
#[allow(dead_code)]
mod resp;

use resp::Parsed;

/// `kv_exec`'s signature.
pub type Exec = unsafe extern "C" fn(*const u8, usize, *mut u8, usize) -> usize;

/// Largest reply to one command.
const MAX_REPLY: usize = 1 << 20;
/// Bytes read per call.
const READ_CHUNK: usize = 16 * 1024;
/// Unanswered input a client may pile up before the server stops reading from it.
const MAX_PENDING_OUT: usize = 4 << 20;

struct Client {
    stream: TcpStream,
    input: Vec<u8>,
    output: Vec<u8>,
    sent: usize,
    /// The client closed its side, or sent what cannot be parsed: close once answered.
    closing: bool,
}

impl Client {
    fn pending(&self) -> usize {
        self.output.len() - self.sent
    }

    /// Runs every whole request in the input.
    fn run(&mut self, exec: &dl::Symbol<Exec>, args: &mut Vec<u8>, reply: &mut [u8]) -> u64 {
        let mut done = 0;
        let mut used = 0;
        loop {
            match resp::parse(&self.input[used..]) {
                Parsed::Incomplete => break,
                Parsed::Invalid(why) => {
                    self.output.extend_from_slice(b"-ERR Protocol error: ");
                    self.output.extend_from_slice(why.as_bytes());
                    self.output.extend_from_slice(b"\r\n");
                    self.closing = true;
                    used = self.input.len();
                    break;
                }
                Parsed::Request(words, n) => {
                    used += n;
                    if words.is_empty() {
                        continue;
                    }
                    if words[0].eq_ignore_ascii_case(b"QUIT") {
                        self.output.extend_from_slice(b"+OK\r\n");
                        self.closing = true;
                        used = self.input.len();
                        break;
                    }
                    resp::encode_args(&words, args);
                    // SAFETY: both buffers are valid for the lengths given.
                    let len =
                        unsafe { exec.call(args.as_ptr(), args.len(), reply.as_mut_ptr(), reply.len()) };
                    self.output.extend_from_slice(&reply[..len.min(reply.len())]);
                    done += 1;
                }
            }
        }
        self.input.drain(..used);
        done
    }

    /// Reads what is there; false once the client is done sending.
    fn read(&mut self) -> Result<(), net::Error> {
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    self.closing = true;
                    return Ok(());
                }
                Ok(n) => self.input.extend_from_slice(&chunk[..n]),
                Err(net::Error::WouldBlock) => return Ok(()),
                Err(e) => return Err(e),
            }
            if self.pending() > MAX_PENDING_OUT {
                return Ok(());
            }
        }
    }

    /// Writes what it can.
    fn write(&mut self) -> Result<(), net::Error> {
        while self.sent < self.output.len() {
            match self.stream.write(&self.output[self.sent..]) {
                Ok(n) => self.sent += n,
                Err(net::Error::WouldBlock) => break,
                Err(e) => return Err(e),
            }
        }
        if self.sent == self.output.len() {
            self.output.clear();
            self.sent = 0;
        }
        Ok(())
    }
}

/// Serves the Redis protocol on guest port `port` until SIGUSR1; returns the exit status. With
/// `workers` > 0 the root forks that many pVMs that all serve from the one listener (pre-fork)
/// and waits for them; each worker has its own copy of the store, as it was at the fork.
pub fn serve(port: u16, lib: &dl::Library, exec: dl::Symbol<Exec>, workers: u16) -> i32 {
    let mut listener = match TcpListener::bind(port) {
        Ok(l) => l,
        Err(e) => {
            pvm::eprintln!("kv: cannot listen on port {port}: {e}");
            return 1;
        }
    };
    listener.set_nonblocking(true);
    pvm::println!(
        "kv: serving the Redis protocol on guest port {port} with libkv {}",
        lib.version().as_deref().unwrap_or("?")
    );
    if workers > 0 {
        for _ in 0..workers {
            match pvm::fork() {
                Ok(pvm::Fork::Child) => pvm::exit(event_loop(&listener, lib, &exec)),
                Ok(pvm::Fork::Parent(_)) => {}
                Err(e) => {
                    pvm::eprintln!("kv: cannot fork a worker: {e}");
                    return 1;
                }
            }
        }
        pvm::println!("kv: {workers} workers");
        let mut failed = 0;
        while let Ok((_, status)) = pvm::wait_any() {
            failed += u32::from(!status.success());
        }
        return i32::from(failed != 0);
    }
    event_loop(&listener, lib, &exec)
}

/// One server's loop over its clients and the listener, until SIGUSR1.
fn event_loop(listener: &TcpListener, lib: &dl::Library, exec: &dl::Symbol<Exec>) -> i32 {
    let mut clients: Vec<Client> = Vec::new();
    let mut args = Vec::new();
    let mut reply = alloc::vec![0u8; MAX_REPLY];
    let mut ready: Vec<(usize, u32)> = Vec::new();
    let mut served: u64 = 0;
    let mut version = lib.version();
    while !crate::STOP.load(Ordering::SeqCst) {
        {
            let mut entries = Vec::with_capacity(clients.len() + 1);
            entries.push(PollEntry::listener(listener));
            for c in &clients {
                let mut interest = 0;
                if !c.closing && c.pending() <= MAX_PENDING_OUT {
                    interest |= READABLE;
                }
                if c.pending() > 0 {
                    interest |= WRITABLE;
                }
                entries.push(PollEntry::stream(&c.stream, interest));
            }
            match net::poll(&mut entries, None) {
                Ok(_) => {}
                Err(net::Error::Interrupted) => continue,
                Err(e) => {
                    pvm::eprintln!("kv: poll: {e}");
                    return 1;
                }
            }
            ready.clear();
            ready.extend(
                entries
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| e.ready != 0)
                    .map(|(i, e)| (i, e.ready)),
            );
        }
        for &(i, bits) in &ready {
            if i == 0 {
                loop {
                    match listener.accept() {
                        Ok((mut stream, _)) => {
                            stream.set_nonblocking(true);
                            clients.push(Client {
                                stream,
                                input: Vec::new(),
                                output: Vec::new(),
                                sent: 0,
                                closing: false,
                            });
                        }
                        Err(net::Error::WouldBlock) => break,
                        Err(e) => {
                            pvm::eprintln!("kv: accept: {e}");
                            break;
                        }
                    }
                }
                continue;
            }
            let Some(c) = clients.get_mut(i - 1) else { continue };
            if bits & READABLE != 0 && c.read().is_err() {
                c.closing = true;
                c.output.clear();
                c.sent = 0;
                continue;
            }
            served += c.run(exec, &mut args, &mut reply);
            if c.write().is_err() {
                c.closing = true;
                c.output.clear();
                c.sent = 0;
            }
        }
        // Answered and done: gone (dropping the stream closes the connection).
        clients.retain(|c| !(c.closing && c.pending() == 0));
        let now = lib.version();
        if now != version {
            pvm::println!("kv: now serving with libkv {}", now.as_deref().unwrap_or("?"));
            version = now;
        }
    }
    pvm::println!("kv: served {served} commands");
    0
}
