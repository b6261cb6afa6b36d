//! The key-value store behind `libkv` (both versions link it): the store, kept across updates,
//! and the command interpreter.
//!
//! Commands, one per request, as text: `PING`, `SET key value`, `GET key`, `DEL key`,
//! `EXISTS key`, `COUNT`; version 2 adds `INCR key` and `STATS`. Answers are text too (`OK`,
//! the value, `(nil)`, a number, `ERR ...`).
//!
//! The state handed from one version to the next is a [`Store`] on the app's heap: both
//! versions compile this crate, so they agree on its layout; its `magic` and `layout` fields
//! let a new version refuse a state it does not know (the update then rolls back).
#![no_std]

extern crate alloc;

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::ffi::c_void;
use core::fmt::Write;
use core::sync::atomic::{AtomicPtr, Ordering};

/// `Store::magic`.
pub const MAGIC: u64 = u64::from_le_bytes(*b"pvm-kv\0\0");
/// `Store::layout`: bump when the store's fields change.
pub const LAYOUT: u64 = 1;

/// Everything libkv keeps.
#[repr(C)]
pub struct Store {
    /// [`MAGIC`].
    pub magic: u64,
    /// [`LAYOUT`].
    pub layout: u64,
    /// The data.
    pub map: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Requests handled, over every version.
    pub handled: u64,
}

pub mod resp;

static STORE: AtomicPtr<Store> = AtomicPtr::new(core::ptr::null_mut());

fn store() -> &'static mut Store {
    let mut p = STORE.load(Ordering::Acquire);
    if p.is_null() {
        p = Box::into_raw(Box::new(Store {
            magic: MAGIC,
            layout: LAYOUT,
            map: BTreeMap::new(),
            handled: 0,
        }));
        STORE.store(p, Ordering::Release);
    }
    // SAFETY: a leaked Box, ours or adopted from the previous version; one vCPU, and a
    // request is handled to its end before the next one (and before an update: the safe
    // point), so no other reference to it is live.
    unsafe { &mut *p }
}

/// `pvm_state_save`: the store, left in place (saving changes nothing, so a rollback keeps
/// serving from it).
pub fn save() -> *mut c_void {
    (store() as *mut Store).cast()
}

/// `pvm_state_restore`: adopts the previous version's store if it is one this version knows;
/// 1 (refused: the update rolls back) otherwise.
///
/// # Safety
/// `saved` is null or what the previous version's `pvm_state_save` returned.
pub unsafe fn restore(saved: *mut c_void) -> i32 {
    if saved.is_null() {
        return 0;
    }
    let s = saved.cast::<Store>();
    // SAFETY: as the caller promised, a live Store (or at least its two leading words).
    let (magic, layout) = unsafe { ((*s).magic, (*s).layout) };
    if magic != MAGIC || layout != LAYOUT {
        return 1;
    }
    STORE.store(s, Ordering::Release);
    0
}

/// `n` in decimal, as a stored value.
fn decimal(n: i64) -> Vec<u8> {
    let mut text = Out {
        buf: &mut [0u8; 24],
        len: 0,
    };
    let _ = write!(text, "{n}");
    let len = text.len;
    text.buf[..len].to_vec()
}

/// A bounded writer into the answer buffer.
struct Out<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl Write for Out<'_> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

impl Out<'_> {
    fn bytes(&mut self, b: &[u8]) {
        let n = b.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&b[..n]);
        self.len += n;
    }
}

/// Handles one request (`req`), writing the answer into `out`; returns its length. `v2`:
/// version 2's commands too; `version`: the library's version, for `STATS`.
pub fn handle(req: &[u8], out: &mut [u8], v2: bool, version: &str) -> usize {
    let s = store();
    s.handled += 1;
    let mut o = Out { buf: out, len: 0 };
    let mut words = req.splitn(3, |&b| b == b' ');
    let cmd = words.next().unwrap_or_default();
    let (a, b) = (words.next(), words.next());
    match (cmd, a, b) {
        (b"PING", None, None) => o.bytes(b"PONG"),
        (b"SET", Some(k), Some(v)) => {
            s.map.insert(k.to_vec(), v.to_vec());
            o.bytes(b"OK");
        }
        (b"GET", Some(k), None) => match s.map.get(k) {
            Some(v) => o.bytes(v),
            None => o.bytes(b"(nil)"),
        },
        (b"DEL", Some(k), None) => {
            let _ = write!(o, "{}", u8::from(s.map.remove(k).is_some()));
        }
        (b"EXISTS", Some(k), None) => {
            let _ = write!(o, "{}", u8::from(s.map.contains_key(k)));
        }
        (b"COUNT", None, None) => {
            let _ = write!(o, "{}", s.map.len());
        }
        (b"INCR", Some(k), None) if v2 => {
            let cur = s
                .map
                .get(k)
                .and_then(|v| core::str::from_utf8(v).ok()?.parse::<i64>().ok());
            match (cur, s.map.contains_key(k)) {
                (None, true) => o.bytes(b"ERR value is not an integer"),
                (n, _) => {
                    let n = n.unwrap_or(0) + 1;
                    s.map.insert(k.to_vec(), decimal(n));
                    let _ = write!(o, "{n}");
                }
            }
        }
        (b"STATS", None, None) if v2 => {
            let _ = write!(o, "keys={} handled={} libkv={version}", s.map.len(), s.handled);
        }
        _ => {
            o.bytes(b"ERR unknown command '");
            o.bytes(cmd);
            o.bytes(b"'");
        }
    }
    o.len
}

/// Runs one Redis command (`req`: its arguments, as `resp::encode_args` wrote them), writing
/// the RESP reply into `out`; returns its length. `v2`: version 2's commands too (`INCR`,
/// `STATS`); `version`: the library's version.
pub fn exec(req: &[u8], out: &mut [u8], v2: bool, version: &str) -> usize {
    use resp::Reply;
    let s = store();
    s.handled += 1;
    let mut r = Reply::new(out);
    let Some(args) = resp::decode_args(req) else {
        r.error(b"ERR malformed request");
        return r.len();
    };
    let Some((cmd, rest)) = args.split_first() else {
        r.error(b"ERR empty request");
        return r.len();
    };
    let mut name = [0u8; 16];
    let n = cmd.len().min(name.len());
    name[..n].copy_from_slice(&cmd[..n]);
    name[..n].make_ascii_uppercase();
    let wrong = |r: &mut Reply<'_>| {
        r.raw(b"-ERR wrong number of arguments for '");
        r.raw(cmd);
        r.raw(b"' command\r\n");
    };
    match (&name[..n], rest) {
        (b"PING", []) => r.simple(b"PONG"),
        (b"PING", [m]) | (b"ECHO", [m]) => r.bulk(Some(m)),
        (b"SET", [k, v]) => {
            s.map.insert(k.to_vec(), v.to_vec());
            r.simple(b"OK");
        }
        (b"GET", [k]) => r.bulk(s.map.get(*k).map(Vec::as_slice)),
        (b"DEL", keys) if !keys.is_empty() => {
            let n = keys.iter().filter(|k| s.map.remove(**k).is_some()).count();
            r.integer(n as i64);
        }
        (b"EXISTS", keys) if !keys.is_empty() => {
            let n = keys.iter().filter(|k| s.map.contains_key(**k)).count();
            r.integer(n as i64);
        }
        (b"MGET", keys) if !keys.is_empty() => {
            r.array(keys.len());
            for k in keys {
                r.bulk(s.map.get(*k).map(Vec::as_slice));
            }
        }
        (b"MSET", kv) if !kv.is_empty() && kv.len() % 2 == 0 => {
            for pair in kv.chunks_exact(2) {
                s.map.insert(pair[0].to_vec(), pair[1].to_vec());
            }
            r.simple(b"OK");
        }
        (b"DBSIZE", []) => r.integer(s.map.len() as i64),
        (b"INCR", [k]) if v2 => {
            let cur = match s.map.get(*k) {
                None => Some(0),
                Some(v) => core::str::from_utf8(v).ok().and_then(|t| t.parse::<i64>().ok()),
            };
            match cur.and_then(|c| c.checked_add(1)) {
                None => r.error(b"ERR value is not an integer or out of range"),
                Some(n) => {
                    s.map.insert(k.to_vec(), decimal(n));
                    r.integer(n);
                }
            }
        }
        (b"STATS", []) if v2 => {
            let mut text = Out {
                buf: &mut [0u8; 128],
                len: 0,
            };
            let _ = write!(text, "keys={} handled={} libkv={version}", s.map.len(), s.handled);
            let len = text.len;
            r.bulk(Some(&text.buf[..len]));
        }
        // What redis-benchmark and redis-cli ask about the server: no persistence here.
        (b"CONFIG", [sub, param]) if sub.eq_ignore_ascii_case(b"GET") => {
            r.array(2);
            r.bulk(Some(param));
            r.bulk(Some(if param.eq_ignore_ascii_case(b"appendonly") {
                b"no"
            } else {
                b""
            }));
        }
        (b"COMMAND", _) => r.array(0),
        (b"PING" | b"ECHO" | b"SET" | b"GET" | b"DEL" | b"EXISTS" | b"MGET" | b"MSET" | b"DBSIZE", _) => {
            wrong(&mut r)
        }
        (b"INCR" | b"STATS", _) if v2 => wrong(&mut r),
        _ => {
            r.raw(b"-ERR unknown command '");
            r.raw(cmd);
            r.raw(b"'\r\n");
        }
    }
    if r.overflowed() {
        let mut r = Reply::new(out);
        r.error(b"ERR reply too large");
        return r.len();
    }
    r.len()
}

/// The signature of [`handle`] and [`exec`].
pub type Command = fn(&[u8], &mut [u8], bool, &str) -> usize;

/// Runs `command` on the caller's buffers (what libkv's C-ABI exports do).
///
/// # Safety
/// `req` valid for `len` bytes, `out` for `cap`.
pub unsafe fn on_buffers(
    command: Command,
    (req, len): (*const u8, usize),
    (out, cap): (*mut u8, usize),
    v2: bool,
    version: &str,
) -> usize {
    // SAFETY: as the caller promised.
    let (req, out) = unsafe {
        (
            core::slice::from_raw_parts(req, len),
            core::slice::from_raw_parts_mut(out, cap),
        )
    };
    command(req, out, v2, version)
}

/// Defines libkv's exports: `kv_handle` and the state hooks (`v2`: version 2's commands).
#[macro_export]
macro_rules! exports {
    ($v2:expr) => {
        /// Handles one request (`len` bytes at `req`), writes the answer (at most `cap` bytes)
        /// at `out`; returns its length.
        ///
        /// # Safety
        /// `req` valid for `len` bytes, `out` for `cap`.
        #[no_mangle]
        pub unsafe extern "C" fn kv_handle(req: *const u8, len: usize, out: *mut u8, cap: usize) -> usize {
            // SAFETY: as the caller promised.
            unsafe {
                $crate::on_buffers(
                    $crate::handle,
                    (req, len),
                    (out, cap),
                    $v2,
                    env!("CARGO_PKG_VERSION"),
                )
            }
        }

        /// Runs one Redis command (`len` bytes at `req`, as `resp::encode_args` writes them),
        /// writes the RESP reply (at most `cap` bytes) at `out`; returns its length.
        ///
        /// # Safety
        /// `req` valid for `len` bytes, `out` for `cap`.
        #[no_mangle]
        pub unsafe extern "C" fn kv_exec(req: *const u8, len: usize, out: *mut u8, cap: usize) -> usize {
            // SAFETY: as the caller promised.
            unsafe {
                $crate::on_buffers(
                    $crate::exec,
                    (req, len),
                    (out, cap),
                    $v2,
                    env!("CARGO_PKG_VERSION"),
                )
            }
        }

        /// Hands the store to the next version.
        #[no_mangle]
        pub extern "C" fn pvm_state_save() -> *mut core::ffi::c_void {
            $crate::save()
        }

        /// Adopts the previous version's store.
        ///
        /// # Safety
        /// `saved` is what the previous version's `pvm_state_save` returned.
        #[no_mangle]
        pub unsafe extern "C" fn pvm_state_restore(saved: *mut core::ffi::c_void, _from: *const u8) -> i32 {
            // SAFETY: as the caller promised.
            unsafe { $crate::restore(saved) }
        }
    };
}
