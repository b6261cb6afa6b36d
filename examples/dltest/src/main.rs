//! Exercises `pvm::dl` for the integration tests: one scenario per first argument, each
//! printing what it saw as `key=value` lines.
#![no_std]
#![no_main]

use pvm::dl::{self, ErrorKind};
use pvm::Fork;

pvm::main!(main);

/// Called back by libgreet (`greet_via_app`).
#[no_mangle]
pub extern "C" fn app_double(x: u64) -> u64 {
    2 * x
}
pvm::export!(app_double);

type Add = extern "C" fn(u64, u64) -> u64;
type Calls = extern "C" fn() -> u64;
type Hello = extern "C" fn(u64) -> u64;

fn main() -> i32 {
    let mut args = pvm::args().skip(1);
    let scenario = args.next().unwrap_or("basic");
    let lib = args.next().unwrap_or("greet");
    match scenario {
        "basic" => basic(lib),
        "open" => open_only(lib),
        "closed-call" => closed_call(lib),
        "fork" => fork(lib),
        "hold" => hold(lib),
        "serve" => serve(lib),
        "busy" => busy(lib),
        "family-busy" => family_busy(lib),
        "pair" => pair(lib, args.next().unwrap_or("user")),
        other => {
            pvm::eprintln!("unknown scenario {other}");
            2
        }
    }
}

fn open_or_report(lib: &str) -> Option<dl::Library> {
    match dl::open(lib) {
        Ok(l) => Some(l),
        Err(e) => {
            let kind = match e.kind() {
                ErrorKind::NotFound => "not-found",
                ErrorKind::NotTrusted => "not-trusted",
                ErrorKind::Invalid => "invalid",
                ErrorKind::NoRoom => "no-room",
                ErrorKind::BadName => "bad-name",
                _ => "other",
            };
            pvm::println!("open-error={kind}");
            pvm::println!("open-message={e}");
            None
        }
    }
}

fn basic(lib: &str) -> i32 {
    let Some(l) = open_or_report(lib) else { return 1 };
    pvm::println!("version={}", l.version().as_deref().unwrap_or("none"));
    // SAFETY: libgreet exports these with these signatures.
    let (add, calls, hello, via) = unsafe {
        (
            l.sym::<Add>("greet_add").unwrap(),
            l.sym::<Calls>("greet_calls").unwrap(),
            l.sym::<Hello>("greet_hello").unwrap(),
            l.sym::<Hello>("greet_via_app").unwrap(),
        )
    };
    pvm::println!("add={}", add.call(2, 40));
    add.call(1, 1);
    pvm::println!("calls={}", calls.call());
    pvm::println!("hello={}", hello.call(10));
    pvm::println!("via-app={}", via.call(21));
    // IPC from the library, with a key in its own read-only data.
    // SAFETY: libgreet exports greet_queue with this type.
    let send = unsafe { l.sym::<extern "C" fn(u64) -> i64>("greet_queue").unwrap() };
    pvm::println!("library-send={}", send.call(7));
    let q = pvm::ipc::MessageQueue::open_existing("greet.q").unwrap();
    let mut buf = [0u8; pvm::ipc::DEFAULT_MESSAGE_SIZE];
    let n = q.receive(&mut buf).unwrap();
    let mut word = [0u8; 8];
    word.copy_from_slice(&buf[..8.min(n)]);
    pvm::println!("queue={}", u64::from_le_bytes(word));
    // SAFETY: the type does not matter: the lookup fails.
    match unsafe { l.sym::<Calls>("no_such_symbol") } {
        Err(e) if e.kind() == ErrorKind::MissingSymbol => pvm::println!("missing=refused"),
        _ => pvm::println!("missing=found?"),
    }
    // A second open is another reference to the same library.
    let again = dl::open(lib).unwrap();
    pvm::println!("same-handle={}", again.handle() == l.handle());
    again.close().unwrap();
    pvm::println!("after-one-close={}", calls.call());
    l.close().unwrap();
    // Loaded again from scratch: fresh data.
    let l = dl::open(lib).unwrap();
    // SAFETY: as above.
    let calls = unsafe { l.sym::<Calls>("greet_calls").unwrap() };
    pvm::println!("reopened-calls={}", calls.call());
    l.close().unwrap();
    0
}

fn open_only(lib: &str) -> i32 {
    match open_or_report(lib) {
        Some(l) => {
            pvm::println!("opened={}", l.version().as_deref().unwrap_or("none"));
            0
        }
        None => 1,
    }
}

fn closed_call(lib: &str) -> i32 {
    let l = dl::open(lib).unwrap();
    // SAFETY: libgreet exports greet_calls.
    let calls = unsafe { l.sym::<Calls>("greet_calls").unwrap() };
    l.close().unwrap();
    pvm::println!("calling a closed handle");
    calls.call() as i32
}

fn fork(lib: &str) -> i32 {
    let l = dl::open(lib).unwrap();
    // SAFETY: libgreet exports these.
    let (add, calls) = unsafe {
        (
            l.sym::<Add>("greet_add").unwrap(),
            l.sym::<Calls>("greet_calls").unwrap(),
        )
    };
    add.call(1, 2);
    match pvm::fork().unwrap() {
        Fork::Child => {
            add.call(3, 4);
            add.call(5, 6);
            pvm::println!("child-calls={}", calls.call());
            0
        }
        Fork::Parent(child) => {
            let status = child.wait().unwrap();
            pvm::println!("child={status}");
            pvm::println!("parent-calls={}", calls.call());
            0
        }
    }
}

/// Opens the library and sleeps until stopped (for sharing and `pvmctl lib list`).
fn hold(lib: &str) -> i32 {
    let l = dl::open(lib).unwrap();
    // SAFETY: libgreet exports greet_add.
    let add = unsafe { l.sym::<Add>("greet_add").unwrap() };
    pvm::println!("ready add={}", add.call(1, 2));
    pvm::pause()
}

/// Keeps a call into the library in flight for 3 s, then reports the version.
fn busy(lib: &str) -> i32 {
    let l = dl::open(lib).unwrap();
    // SAFETY: libgreet exports greet_busy.
    let busy = unsafe { l.sym::<extern "C" fn(u64)>("greet_busy").unwrap() };
    pvm::println!("busy");
    busy.call(3000);
    pvm::println!("done version={}", l.version().as_deref().unwrap_or("none"));
    0
}

/// A family of two holding the library: the child keeps a call in flight for 3 s while the
/// root serves (a family update cannot switch the child meanwhile: all or none).
fn family_busy(lib: &str) -> i32 {
    let l = dl::open(lib).unwrap();
    match pvm::fork().unwrap() {
        Fork::Child => {
            // SAFETY: libgreet exports greet_busy.
            let busy = unsafe { l.sym::<extern "C" fn(u64)>("greet_busy").unwrap() };
            pvm::println!("child busy");
            busy.call(3000);
            pvm::println!("child done version={}", l.version().as_deref().unwrap_or("none"));
            pvm::pause()
        }
        Fork::Parent(_) => serve(lib),
    }
}

/// Opens `first`, then `second` (which imports from `first`), calls `second`'s `user_value`,
/// then sleeps until stopped.
fn pair(first: &str, second: &str) -> i32 {
    let a = open_or_report(first);
    let b = open_or_report(second);
    let (Some(_a), Some(b)) = (a, b) else { return 1 };
    // SAFETY: the second library exports user_value with this type.
    let value = unsafe { b.sym::<Calls>("user_value").unwrap() };
    pvm::println!("user-value={}", value.call());
    pvm::pause()
}

/// Calls the library in a loop, printing each time its version changes, until stopped.
fn serve(lib: &str) -> i32 {
    let l = dl::open(lib).unwrap();
    // SAFETY: libgreet exports greet_add.
    let add = unsafe { l.sym::<Add>("greet_add").unwrap() };
    let mut seen = l.version();
    pvm::println!("serving version={}", seen.as_deref().unwrap_or("none"));
    let mut n: u64 = 0;
    loop {
        if add.call(n, 1) != n + 1 {
            pvm::println!("wrong answer at {n}");
            return 1;
        }
        n += 1;
        if n.is_multiple_of(1024) {
            pvm::time::Instant::now();
            let v = l.version();
            if v != seen {
                pvm::println!("now version={}", v.as_deref().unwrap_or("none"));
                seen = v;
            }
        }
    }
}
