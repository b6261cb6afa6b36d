//! A family under fork and IPC load, for the chaos test (`tests/chaos.rs`), which SIGKILLs random
//! monitors meanwhile. The root forks WORKERS workers and reaps them; each worker forks children
//! in a loop, reads what each writes through a pipe, has them send to the family's queue, and
//! waits for them. A child ends `Exited(7)`, or `Killed(9)` when the test killed it: any other
//! status, or lost data from a child that exited normally, is an error. USR1 tells everyone to
//! finish: each worker prints `worker ID: forked F reaped R errors E` and exits 0, the root
//! prints `root: reaped N workers, K killed, E errors`.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicBool, Ordering};

use pvm::ipc::{self, Error as IpcError, MessageQueue};
use pvm::process::Error;
use pvm::signal::{self, Signal};
use pvm::{Child, ExitStatus, Fork};

pvm::main!(main);

/// What a child writes through its pipe.
const CHUNK: [u8; 256] = [0x5a; 256];
const CHUNKS: usize = 16;
const CHILD_CODE: i32 = 7;

static STOP: AtomicBool = AtomicBool::new(false);

fn main() -> i32 {
    let workers: usize = pvm::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(4);
    if signal::on(Signal::Usr1, |_| STOP.store(true, Ordering::SeqCst)).is_err() {
        return 2;
    }
    // The family's queue, so that pVMs killed mid-send meet pVMs mid-receive.
    let queue = match MessageQueue::open_with("chaos", 64, 64) {
        Ok(q) => q,
        Err(e) => {
            pvm::println!("root: queue: {e}");
            return 1;
        }
    };
    let mut started = 0;
    for _ in 0..workers {
        match pvm::fork() {
            Ok(Fork::Child) => pvm::exit(worker(queue)),
            Ok(Fork::Parent(_)) => started += 1,
            Err(e) => pvm::println!("root: fork: {e}"),
        }
    }
    drop(queue);
    pvm::println!("root: {started} workers started");
    let (mut reaped, mut killed, mut errors) = (0, 0, 0);
    while reaped < started {
        match pvm::wait_any() {
            Ok((_, ExitStatus::Exited(0))) => reaped += 1,
            Ok((_, ExitStatus::Killed(9))) => {
                reaped += 1;
                killed += 1
            }
            Ok((id, status)) => {
                reaped += 1;
                errors += 1;
                pvm::println!("root: worker {id} ended {status:?}");
            }
            Err(Error::Interrupted) => {}
            Err(e) => {
                pvm::println!("root: wait: {e}");
                errors += 1;
                break;
            }
        }
    }
    pvm::println!("root: reaped {reaped} workers, {killed} killed, {errors} errors");
    0
}

/// Waits for `id`, through signals.
fn wait(id: u64) -> Option<ExitStatus> {
    loop {
        match Child::from_id(id).wait() {
            Ok(status) => return Some(status),
            Err(Error::Interrupted) => {}
            Err(_) => return None,
        }
    }
}

fn worker(mut queue: MessageQueue) -> i32 {
    queue.set_nonblocking(true);
    let (mut forked, mut reaped, mut errors) = (0u64, 0u64, 0u64);
    let mut buf = [0u8; 64];
    while !STOP.load(Ordering::SeqCst) {
        let Ok((mut r, mut w)) = ipc::pipe_with_capacity(4096) else {
            errors += 1;
            break;
        };
        let child = match pvm::fork() {
            Ok(Fork::Child) => {
                drop(r);
                for _ in 0..CHUNKS {
                    if w.write_all(&CHUNK).is_err() {
                        break; // Our reader was killed.
                    }
                }
                let _ = queue.send(b"hello from a child");
                pvm::exit(CHILD_CODE)
            }
            Ok(Fork::Parent(child)) => child.id(),
            // At a limit, or out of memory: try again.
            Err(_) => continue,
        };
        forked += 1;
        drop(w);
        let mut got = 0usize;
        let mut chunk = [0u8; 512];
        loop {
            match r.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => {
                    errors += u64::from(chunk[..n].iter().any(|&b| b != 0x5a));
                    got += n;
                }
                Err(IpcError::Interrupted) => {}
                Err(_) => {
                    errors += 1;
                    break;
                }
            }
        }
        let status = wait(child);
        reaped += u64::from(status.is_some());
        match status {
            Some(ExitStatus::Exited(CHILD_CODE)) if got == CHUNK.len() * CHUNKS => {}
            Some(ExitStatus::Killed(9)) => {}
            other => {
                errors += 1;
                pvm::println!(
                    "worker {}: child {child} ended {other:?} after {got} bytes",
                    pvm::id()
                );
            }
        }
        let _ = queue.receive(&mut buf);
    }
    pvm::println!(
        "worker {}: forked {forked} reaped {reaped} errors {errors}",
        pvm::id()
    );
    0
}
