//! A key-value server pVM whose request handler lives in a library, `libkv`, that the operator
//! can replace while it serves (`pvmctl lib update ID kv NEW`): the data stays.
//!
//! ```text
//! pvmctl run --lib kv=examples/libs/kv-v1 examples/kv -- [--clients N] [--requests N]
//! ```
//!
//! With `--port P` (and `pvmctl run --publish HOST_PORT:P`) the server speaks the Redis
//! protocol on TCP instead (see `tcp.rs`): `redis-cli -p HOST_PORT`, `redis-benchmark -p
//! HOST_PORT` work against it; commands run in libkv's `kv_exec` (version 2 adds `INCR` and
//! `STATS`). It serves until SIGUSR1. `--workers N` forks N pVMs that serve from the one
//! listener (pre-fork); each has its own copy of the store as it was at the fork (a cache-like
//! mode, for measuring how the network path scales; `--family` updates swap them all).
//!
//! The root pVM is the server: it loads `kv`, forks N client pVMs (its family), and answers
//! their requests, which travel over message queues (`kv.req`, and one `kv.reply.I` per client).
//! Each client writes keys and reads them back, checking every answer, and asks `STATS` (a
//! command only libkv 2 knows) now and then. About once a second the server prints what it
//! served and what `STATS` answers. With `--requests N` each client stops after N requests;
//! without, they run until the server gets SIGUSR1 (or is stopped). At the end each client
//! prints `client I: requests=N failures=F` and the server exits with status 1 if any request
//! failed.
#![no_std]
#![no_main]

extern crate alloc;

mod tcp;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use pvm::dl;
use pvm::ipc::{MessageQueue, SharedMem};
use pvm::signal::{self, Signal};
use pvm::Fork;

pvm::main!(main);

/// Largest request or answer.
const MSG: usize = 256;
/// Bytes before a message's payload: the client number (2) and the request's sequence (4).
const HEADER: usize = 6;
/// A client asks STATS once per this many requests.
const STATS_EVERY: u64 = 500;

type Handle = unsafe extern "C" fn(*const u8, usize, *mut u8, usize) -> usize;

static STOP: AtomicBool = AtomicBool::new(false);

fn on_usr1(_: Signal) {
    STOP.store(true, Ordering::SeqCst);
}

struct Options {
    clients: u16,
    requests: u64,
    port: Option<u16>,
    workers: u16,
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        clients: 2,
        requests: 0,
        port: None,
        workers: 0,
    };
    let mut args = pvm::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| format!("{name} needs a number"))
        };
        match a {
            "--clients" => o.clients = value(a)?.clamp(1, 64) as u16,
            "--requests" => o.requests = value(a)?,
            "--workers" => o.workers = value(a)?.min(64) as u16,
            "--port" => {
                o.port = Some(
                    u16::try_from(value(a)?)
                        .ok()
                        .filter(|&p| p != 0)
                        .ok_or("--port needs a port number")?,
                )
            }
            other => {
                return Err(format!(
                    "unknown argument {other:?} (--clients N, --requests N, --port P, --workers N)"
                ))
            }
        }
    }
    Ok(o)
}

fn main() -> i32 {
    let o = match options() {
        Ok(o) => o,
        Err(e) => {
            pvm::eprintln!("kv: {e}");
            return 2;
        }
    };
    let lib = match dl::open("kv") {
        Ok(l) => l,
        Err(e) => {
            pvm::eprintln!("kv: cannot load libkv: {e}");
            return 1;
        }
    };
    if let Some(port) = o.port {
        // SAFETY: libkv exports kv_exec with this signature.
        let exec = match unsafe { lib.sym::<tcp::Exec>("kv_exec") } {
            Ok(h) => h,
            Err(e) => {
                pvm::eprintln!("kv: libkv has no kv_exec: {e}");
                return 1;
            }
        };
        let _ = signal::on(Signal::Usr1, on_usr1);
        return tcp::serve(port, &lib, exec, o.workers);
    }
    // SAFETY: libkv exports kv_handle with this signature.
    let handle = match unsafe { lib.sym::<Handle>("kv_handle") } {
        Ok(h) => h,
        Err(e) => {
            pvm::eprintln!("kv: libkv has no kv_handle: {e}");
            return 1;
        }
    };
    // Queues and the stop flag exist before the clients are forked.
    let req = MessageQueue::open_with("kv.req", 256, MSG).expect("request queue");
    let replies: Vec<MessageQueue> = (0..o.clients)
        .map(|i| MessageQueue::open_with(&format!("kv.reply.{i}"), 4, MSG).expect("reply queue"))
        .collect();
    let ctl = SharedMem::create("kv.ctl", 4096).expect("control region");
    let _ = signal::on(Signal::Usr1, on_usr1);
    for i in 0..o.clients {
        match pvm::fork() {
            Ok(Fork::Child) => pvm::exit(client(i, o.requests, &req, &replies[i as usize], &ctl)),
            Ok(Fork::Parent(_)) => {}
            Err(e) => {
                pvm::eprintln!("kv: cannot fork client {i}: {e}");
                return 1;
            }
        }
    }
    pvm::println!(
        "kv: serving {} clients with libkv {}",
        o.clients,
        lib.version().as_deref().unwrap_or("?")
    );
    server(&lib, handle, &req, &replies, &ctl, o.clients)
}

fn server(
    lib: &dl::Library,
    handle: dl::Symbol<Handle>,
    req: &MessageQueue,
    replies: &[MessageQueue],
    ctl: &SharedMem,
    clients: u16,
) -> i32 {
    let stop = ctl.atomic_u64(0).expect("stop flag");
    let failures = ctl.atomic_u64(8).expect("failure count");
    let mut buf = [0u8; MSG];
    let mut out = [0u8; MSG];
    let mut done = 0;
    let mut served: u64 = 0;
    let mut last = pvm::time::Instant::now();
    let mut version = lib.version();
    while done < clients {
        if STOP.load(Ordering::SeqCst) {
            stop.store(1, Ordering::SeqCst);
        }
        let n = match req.receive(&mut buf) {
            Ok(n) => n,
            Err(pvm::ipc::Error::Interrupted) => continue,
            Err(e) => {
                pvm::eprintln!("kv: receive failed: {e}");
                return 1;
            }
        };
        if n < HEADER {
            continue;
        }
        let client = u16::from_le_bytes([buf[0], buf[1]]) as usize;
        let payload = &buf[HEADER..n];
        if payload == b"BYE" {
            done += 1;
            continue;
        }
        out[..HEADER].copy_from_slice(&buf[..HEADER]);
        // SAFETY: both buffers are valid for the lengths given.
        let len = unsafe {
            handle.call(
                payload.as_ptr(),
                payload.len(),
                out[HEADER..].as_mut_ptr(),
                MSG - HEADER,
            )
        };
        if let Some(reply) = replies.get(client) {
            let _ = reply.send(&out[..HEADER + len]);
        }
        served += 1;
        if served.is_multiple_of(1024) && last.elapsed().as_millis() >= 1000 {
            last = pvm::time::Instant::now();
            let now = lib.version();
            if now != version {
                pvm::println!("kv: now serving with libkv {}", now.as_deref().unwrap_or("?"));
                version = now;
            }
            let mut stats = [0u8; MSG];
            let q = b"STATS";
            // SAFETY: as above.
            let n = unsafe { handle.call(q.as_ptr(), q.len(), stats.as_mut_ptr(), MSG) };
            pvm::println!(
                "kv: served {served} requests; STATS -> {}",
                core::str::from_utf8(&stats[..n]).unwrap_or("?")
            );
        }
    }
    let failed = failures.load(Ordering::SeqCst);
    pvm::println!("kv: served {served} requests, {failed} failed");
    // The clients' pVMs: wait for each.
    while pvm::wait_any().is_ok() {}
    i32::from(failed != 0)
}

fn client(i: u16, requests: u64, req: &MessageQueue, reply: &MessageQueue, ctl: &SharedMem) -> i32 {
    let stop = ctl.atomic_u64(0).expect("stop flag");
    let failures_total = ctl.atomic_u64(8).expect("failure count");
    let counter = AtomicU64::new(0);
    let mut failures = 0u64;
    let mut stats_supported = None;
    let mut msg = [0u8; MSG];
    let mut ans = [0u8; MSG];
    let ask = |payload: &[u8], msg: &mut [u8; MSG], ans: &mut [u8; MSG]| -> Option<usize> {
        let seq = counter.fetch_add(1, Ordering::Relaxed) as u32;
        msg[..2].copy_from_slice(&i.to_le_bytes());
        msg[2..HEADER].copy_from_slice(&seq.to_le_bytes());
        msg[HEADER..HEADER + payload.len()].copy_from_slice(payload);
        req.send(&msg[..HEADER + payload.len()]).ok()?;
        let n = loop {
            match reply.receive(ans) {
                Ok(n) => break n,
                Err(pvm::ipc::Error::Interrupted) => continue,
                Err(_) => return None,
            }
        };
        // An answer to another request than this one would be a lost or repeated request.
        (n >= HEADER && ans[2..HEADER] == seq.to_le_bytes()).then_some(n - HEADER)
    };
    let mut n: u64 = 0;
    while (requests == 0 || n < requests) && stop.load(Ordering::SeqCst) == 0 {
        let key = format!("c{i}.k{}", n % 100);
        let value = format!("v{n}");
        let set = format!("SET {key} {value}");
        let get = format!("GET {key}");
        let ok_set =
            ask(set.as_bytes(), &mut msg, &mut ans).is_some_and(|l| &ans[HEADER..HEADER + l] == b"OK");
        let ok_get = ask(get.as_bytes(), &mut msg, &mut ans)
            .is_some_and(|l| &ans[HEADER..HEADER + l] == value.as_bytes());
        if !ok_set || !ok_get {
            failures += 1;
            if failures <= 3 {
                pvm::println!("client {i}: request {n} failed");
            }
        }
        if n.is_multiple_of(STATS_EVERY) {
            let now =
                ask(b"STATS", &mut msg, &mut ans).map(|l| ans[HEADER..HEADER + l].starts_with(b"keys="));
            if now != stats_supported {
                pvm::println!(
                    "client {i}: STATS {}",
                    if now == Some(true) { "works" } else { "unknown" }
                );
                stats_supported = now;
            }
        }
        n += 1;
    }
    failures_total.fetch_add(failures, Ordering::SeqCst);
    pvm::println!("client {i}: requests={} failures={failures}", 2 * n);
    msg[..2].copy_from_slice(&i.to_le_bytes());
    msg[HEADER..HEADER + 3].copy_from_slice(b"BYE");
    let _ = req.send(&msg[..HEADER + 3]);
    0
}
