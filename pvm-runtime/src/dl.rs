//! Libraries loaded into the running pVM: `pvm::dl`.
//!
//! ```ignore
//! let kv = pvm::dl::open("kv")?;
//! // SAFETY: libkv exports `kv_get` with this signature.
//! let get = unsafe { kv.sym::<extern "C" fn(u64) -> u64>("kv_get")? };
//! let v = get.call(42);
//! ```
//!
//! The operator says which libraries a pVM may load (`pvmctl run --lib NAME=FILE`, `--lib-dir`);
//! the monitor checks, links and maps them (the guest never writes code). A [`Symbol`] is a
//! *handle*: a call goes through a slot the runtime owns, so the handle stays valid when the
//! operator replaces the library with a new version (`pvmctl lib update`): the runtime rebinds
//! every slot at a safe point, when no call into the library is in flight, and hands the
//! library's state from the old version to the new one through their hooks
//! (`pvm_state_save`/`pvm_state_restore`). Looking a symbol up costs no exit (the monitor wrote
//! an index the guest reads); a call costs an indirect call and a counter.
//!
//! The rule that makes updates safe: call into a library only through its handles. A function
//! pointer taken out of a library and called later bypasses the count of calls in flight.
use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::{Cell, UnsafeCell};
use core::fmt;
use core::marker::PhantomData;
use core::sync::atomic::{compiler_fence, AtomicBool, AtomicU64, Ordering};

use pvm_abi::{
    dl_abort, dl_op, errno, layout, symbol_hash, DlCloseArgs, DlInfo, DlOpenArgs, DlUpdateArgs, GuestStatus,
    Hypercall, LibSymbol, STATE_RESTORE_SYMBOL, STATE_SAVE_SYMBOL,
};

use crate::hypercall::raw;

/// Most libraries open at once (the monitor's library slots).
const MAX_LIBS: usize = layout::MAX_LIBS as usize;
/// Room for the monitor's message when a call fails.
const MESSAGE_SIZE: usize = 256;

/// What kind of failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The operator allows no library of that name.
    NotFound,
    /// The library's digest is not in the operator's trust store.
    NotTrusted,
    /// The library is malformed or refused (W+X, TLS, text relocations, unresolved symbols...).
    Invalid,
    /// Every library slot is taken.
    NoRoom,
    /// Not a library name (1 to 64 bytes of `[A-Za-z0-9._-]`).
    BadName,
    /// The library is in use (another library imports from it, or an update is under way).
    Busy,
    /// The library does not export that symbol.
    MissingSymbol,
    /// The library was closed.
    Closed,
    /// The monitor failed (a negated errno).
    Host(i64),
}

/// Why a `pvm::dl` call failed, with the monitor's explanation when it gave one.
#[derive(Clone)]
pub struct Error {
    kind: ErrorKind,
    message: Option<String>,
}

impl Error {
    fn new(kind: ErrorKind) -> Error {
        Error { kind, message: None }
    }

    fn from_errno(result: i64) -> Error {
        Error::new(match -result {
            errno::ENOENT => ErrorKind::NotFound,
            errno::EACCES => ErrorKind::NotTrusted,
            errno::ENOEXEC => ErrorKind::Invalid,
            errno::EAGAIN => ErrorKind::NoRoom,
            errno::EINVAL => ErrorKind::BadName,
            errno::EBUSY => ErrorKind::Busy,
            errno::EBADF => ErrorKind::Closed,
            _ => ErrorKind::Host(result),
        })
    }

    /// What kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The monitor's explanation (empty if none).
    pub fn message(&self) -> &str {
        self.message.as_deref().unwrap_or("")
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(m) = &self.message {
            return f.write_str(m);
        }
        match self.kind {
            ErrorKind::NotFound => f.write_str("no such library is allowed for this pVM"),
            ErrorKind::NotTrusted => f.write_str("the library is not trusted"),
            ErrorKind::Invalid => f.write_str("the library is malformed or refused"),
            ErrorKind::NoRoom => f.write_str("no room for another library"),
            ErrorKind::BadName => f.write_str("not a library name"),
            ErrorKind::Busy => f.write_str("the library is in use"),
            ErrorKind::MissingSymbol => f.write_str("the library does not export that symbol"),
            ErrorKind::Closed => f.write_str("the library was closed"),
            ErrorKind::Host(code) => write!(f, "monitor error {code}"),
        }
    }
}

impl core::error::Error for Error {}

/// A call slot: where a handle's calls go (rebound at updates).
struct Slot {
    addr: Cell<usize>,
    name: String,
}

/// The runtime's record of one open library.
struct Record {
    /// Open (`refs` > 0).
    open: Cell<bool>,
    /// `open` calls not yet closed.
    refs: Cell<u32>,
    /// Bumped when the library is closed: handles made before no longer call.
    generation: Cell<u32>,
    /// Calls in flight through its handles.
    active: Cell<u32>,
    /// Where the current version is.
    info: Cell<DlInfo>,
    /// Its handles' slots (never freed: a slot is reused for the same name after a reopen).
    slots: UnsafeCell<Vec<&'static Slot>>,
}

/// The records. One vCPU, and signal handlers and updates run only at hypercall returns and
/// handle returns, never in the middle of these functions: plain cells suffice.
struct Records([Record; MAX_LIBS]);

// SAFETY: a pVM has one vCPU and no preemption: the records are only ever touched by one flow
// of control at a time (see `Records`).
unsafe impl Sync for Records {}

static RECORDS: Records = Records(
    [const {
        Record {
            open: Cell::new(false),
            refs: Cell::new(0),
            generation: Cell::new(0),
            active: Cell::new(0),
            info: Cell::new(DlInfo {
                handle: 0,
                base: 0,
                symbols: 0,
                nsymbols: 0,
                version: 0,
                version_len: 0,
            }),
            slots: UnsafeCell::new(Vec::new()),
        }
    }; MAX_LIBS],
);

impl Record {
    /// Runs `f` on the slots (which must not reach this function again).
    fn with_slots<R>(&self, f: impl FnOnce(&mut Vec<&'static Slot>) -> R) -> R {
        // SAFETY: see `Records`; `f` is this module's code, which never nests the call, so no
        // other reference to the vector is live meanwhile.
        f(unsafe { &mut *self.slots.get() })
    }
}

/// The symbols of a library version: its index, read-only in the library's code window.
fn index(info: &DlInfo) -> &'static [LibSymbol] {
    if info.nsymbols == 0 {
        return &[];
    }
    // SAFETY: the monitor wrote `nsymbols` records at `symbols`, read-only to the guest, mapped
    // while the library (version) is loaded.
    unsafe { core::slice::from_raw_parts(info.symbols as *const LibSymbol, info.nsymbols as usize) }
}

/// Looks `name` up in a version's index (no exit: the index is in guest memory).
fn lookup(info: &DlInfo, name: &str) -> Option<usize> {
    let recs = index(info);
    let hash = symbol_hash(name.as_bytes());
    let first = recs.partition_point(|r| r.hash < hash);
    recs[first..].iter().take_while(|r| r.hash == hash).find_map(|r| {
        // SAFETY: the monitor wrote the name's bytes in the same read-only index.
        let bytes = unsafe { core::slice::from_raw_parts(r.name as *const u8, r.name_len as usize) };
        (bytes == name.as_bytes()).then_some(r.addr as usize)
    })
}

fn version_of(info: &DlInfo) -> Option<&'static str> {
    if info.version == 0 {
        return None;
    }
    // SAFETY: the monitor wrote the version's bytes in the library's read-only index.
    let bytes = unsafe { core::slice::from_raw_parts(info.version as *const u8, info.version_len as usize) };
    core::str::from_utf8(bytes).ok()
}

/// A library open in this pVM.
pub struct Library {
    rec: &'static Record,
    generation: u32,
}

/// Loads library `name` (one the operator allowed), or takes another reference to it if it is
/// loaded already.
pub fn open(name: &str) -> Result<Library, Error> {
    let mut message = [0u8; MESSAGE_SIZE];
    let mut args = DlOpenArgs {
        name: name.as_ptr() as u64,
        name_len: name.len() as u64,
        msg: message.as_mut_ptr() as u64,
        msg_cap: MESSAGE_SIZE as u64,
        ..Default::default()
    };
    raw(Hypercall::DlOpen, &mut args as *mut DlOpenArgs as u64);
    crate::signal::dispatch();
    if args.result < 0 {
        let mut e = Error::from_errno(args.result);
        let len = (args.msg_len as usize).min(MESSAGE_SIZE);
        if len > 0 {
            e.message = Some(String::from_utf8_lossy(&message[..len]).into_owned());
        }
        return Err(e);
    }
    let records = &RECORDS.0;
    let rec = match records
        .iter()
        .find(|r| r.open.get() && r.info.get().handle == args.info.handle)
    {
        Some(rec) => rec,
        None => {
            let Some(rec) = records.iter().find(|r| !r.open.get()) else {
                // More records than the monitor has slots cannot be: give the reference back.
                close_handle(args.info.handle);
                return Err(Error::new(ErrorKind::NoRoom));
            };
            rec.open.set(true);
            rec.refs.set(0);
            rec.active.set(0);
            rec.info.set(args.info);
            rec
        }
    };
    rec.refs.set(rec.refs.get() + 1);
    Ok(Library {
        rec,
        generation: rec.generation.get(),
    })
}

fn close_handle(handle: u64) -> i64 {
    let mut args = DlCloseArgs { handle, result: 0 };
    raw(Hypercall::DlClose, &mut args as *mut DlCloseArgs as u64);
    crate::signal::dispatch();
    args.result
}

impl Library {
    /// A handle on the function (or static) `name` the library exports.
    ///
    /// # Safety
    /// `F` must be the symbol's true type: a function pointer type (`extern "C" fn(...) -> ...`)
    /// matching how the library defines it. Nothing can check this (as with `dlsym`).
    pub unsafe fn sym<F: Copy>(&self, name: &str) -> Result<Symbol<F>, Error> {
        const {
            assert!(
                size_of::<F>() == size_of::<usize>(),
                "F must be a function pointer type"
            )
        };
        if self.rec.generation.get() != self.generation {
            return Err(Error::new(ErrorKind::Closed));
        }
        let addr = lookup(&self.rec.info.get(), name).ok_or(Error::new(ErrorKind::MissingSymbol))?;
        let slot = self
            .rec
            .with_slots(|slots| match slots.iter().find(|s| s.name == name) {
                Some(s) => *s,
                None => {
                    let s: &'static Slot = Box::leak(Box::new(Slot {
                        addr: Cell::new(addr),
                        name: String::from(name),
                    }));
                    slots.push(s);
                    s
                }
            });
        slot.addr.set(addr);
        Ok(Symbol {
            slot,
            rec: self.rec,
            generation: self.generation,
            _f: PhantomData,
        })
    }

    /// Whether the library (its current version) exports `name`.
    pub fn has(&self, name: &str) -> bool {
        lookup(&self.rec.info.get(), name).is_some()
    }

    /// The library's version, if it declares one (copied: a later update replaces it).
    pub fn version(&self) -> Option<String> {
        version_of(&self.rec.info.get()).map(String::from)
    }

    /// The monitor's handle of the library (it changes when the library is updated).
    pub fn handle(&self) -> u64 {
        self.rec.info.get().handle
    }

    /// Drops this reference; the last one unloads the library, and its handles stop working
    /// (a call through one panics).
    pub fn close(self) -> Result<(), Error> {
        if self.rec.generation.get() != self.generation {
            return Err(Error::new(ErrorKind::Closed));
        }
        let refs = self.rec.refs.get();
        let result = close_handle(self.rec.info.get().handle);
        if result < 0 {
            return Err(Error::from_errno(result));
        }
        self.rec.refs.set(refs - 1);
        if refs == 1 {
            self.rec.open.set(false);
            self.rec.generation.set(self.rec.generation.get().wrapping_add(1));
        }
        Ok(())
    }
}

impl fmt::Debug for Library {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Library")
            .field("handle", &self.handle())
            .field("version", &self.version())
            .finish()
    }
}

/// A handle on a library's function: calls go through it, to whatever version is loaded.
pub struct Symbol<F> {
    slot: &'static Slot,
    rec: &'static Record,
    generation: u32,
    _f: PhantomData<F>,
}

impl<F> Clone for Symbol<F> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<F> Copy for Symbol<F> {}

impl<F> fmt::Debug for Symbol<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Symbol").field("name", &self.slot.name).finish()
    }
}

#[cold]
#[inline(never)]
fn closed(name: &str) -> ! {
    panic!("call through a handle of a closed library ({name})")
}

// The status page word where the monitor says an update is ready.
const DL_UPDATE_AT: usize = layout::STATUS_ADDR as usize + core::mem::offset_of!(GuestStatus, dl_update);

#[inline(always)]
fn update_pending() -> bool {
    // SAFETY: the status page is mapped user read-write for the pVM's life; the monitor writes
    // it only while the vCPU is stopped.
    unsafe { core::ptr::read_volatile(DL_UPDATE_AT as *const u64) != 0 }
}

impl<F> Symbol<F> {
    /// The address calls go to now (it changes when the library is updated). Calling it
    /// directly bypasses the count of calls in flight: only a handle's own calls are safe
    /// across updates.
    pub fn addr(&self) -> usize {
        self.slot.addr.get()
    }

    #[inline(always)]
    fn enter(&self) -> usize {
        if self.rec.generation.get() != self.generation {
            closed(&self.slot.name);
        }
        self.rec.active.set(self.rec.active.get() + 1);
        compiler_fence(Ordering::SeqCst);
        self.slot.addr.get()
    }

    #[inline(always)]
    fn leave(&self) {
        compiler_fence(Ordering::SeqCst);
        let n = self.rec.active.get() - 1;
        self.rec.active.set(n);
        if n == 0 && update_pending() {
            poll_update();
        }
    }
}

macro_rules! callable {
    ($($a:ident: $t:ident),*) => {
        impl<R, $($t),*> Symbol<extern "C" fn($($t),*) -> R> {
            /// Calls the function, through the handle.
            #[inline(always)]
            pub fn call(&self, $($a: $t),*) -> R {
                let addr = self.enter();
                // SAFETY: `sym`'s caller promised the symbol has this type; the monitor keeps
                // the version at `addr` mapped while calls are in flight (updates wait for none).
                let func: extern "C" fn($($t),*) -> R = unsafe { core::mem::transmute::<usize, _>(addr) };
                let r = func($($a),*);
                self.leave();
                r
            }
        }

        impl<R, $($t),*> Symbol<unsafe extern "C" fn($($t),*) -> R> {
            /// Calls the function, through the handle.
            ///
            /// # Safety
            /// What the library's function requires of its caller.
            #[inline(always)]
            pub unsafe fn call(&self, $($a: $t),*) -> R {
                let addr = self.enter();
                // SAFETY: as above; the function's own contract is the caller's.
                let r = unsafe {
                    let func: unsafe extern "C" fn($($t),*) -> R = core::mem::transmute::<usize, _>(addr);
                    func($($a),*)
                };
                self.leave();
                r
            }
        }
    };
}

callable!();
callable!(a: A);
callable!(a: A, b: B);
callable!(a: A, b: B, c: C);
callable!(a: A, b: B, c: C, d: D);
callable!(a: A, b: B, c: C, d: D, e: E);
callable!(a: A, b: B, c: C, d: D, e: E, f: G);

// ---- updates -------------------------------------------------------------------------------

/// An update is running (its hooks may make hypercalls, which poll again).
static UPDATING: AtomicBool = AtomicBool::new(false);
/// A hook panicked (set by the panic handler before it escapes).
static HOOK_PANICKED: AtomicBool = AtomicBool::new(false);
/// Stack pointer of the running hook call, where an escape goes back to (0: no hook running).
static HOOK_SP: AtomicU64 = AtomicU64::new(0);

// `pvm_hook_call(f, a, b)` calls `f(a, b)` and returns `(its result, 0)`; `pvm_hook_escape`, from
// anywhere inside that call (the panic handler, or the monitor moving the vCPU there when a hook
// runs too long), returns from `pvm_hook_call` with `(0, 1)` instead. The callee-saved registers
// are restored from the stack `pvm_hook_call` left; everything the hook did with the stack above
// is dropped (no destructors run: memory it allocated leaks).
core::arch::global_asm!(
    ".pushsection .text.pvm_hook,\"ax\",@progbits",
    ".global pvm_hook_call",
    "pvm_hook_call:",
    "    push rbp",
    "    push rbx",
    "    push r12",
    "    push r13",
    "    push r14",
    "    push r15",
    "    sub rsp, 8",
    "    mov [rip + {sp}], rsp",
    "    mov rax, rdi",
    "    mov rdi, rsi",
    "    mov rsi, rdx",
    "    call rax",
    "    xor edx, edx",
    "2:",
    "    mov qword ptr [rip + {sp}], 0",
    "    add rsp, 8",
    "    pop r15",
    "    pop r14",
    "    pop r13",
    "    pop r12",
    "    pop rbx",
    "    pop rbp",
    "    ret",
    ".global pvm_hook_escape",
    "pvm_hook_escape:",
    "    mov rsp, [rip + {sp}]",
    "    cld",
    "    xor eax, eax",
    "    mov edx, 1",
    "    jmp 2b",
    ".popsection",
    sp = sym HOOK_SP,
);

#[repr(C)]
struct HookResult {
    value: u64,
    escaped: u64,
}

extern "C" {
    fn pvm_hook_call(f: usize, a: usize, b: usize) -> HookResult;
    fn pvm_hook_escape() -> !;
}

/// Leaves a running hook (its panic): back to the update, which rolls back. Returns if no hook
/// is running.
pub(crate) fn escape_hook_on_panic() {
    if HOOK_SP.load(Ordering::SeqCst) != 0 {
        HOOK_PANICKED.store(true, Ordering::SeqCst);
        // SAFETY: a hook call is running: `pvm_hook_escape` returns from it.
        unsafe { pvm_hook_escape() }
    }
}

/// Calls a hook `f(a, b)`: its result, or `Err(reason)` if it panicked or was stopped.
fn call_hook(f: usize, a: usize, b: usize) -> Result<u64, u64> {
    HOOK_PANICKED.store(false, Ordering::SeqCst);
    // SAFETY: `f` is a hook the library exports with the documented C signature (two pointer
    // arguments at most; extra ones are ignored by the ABI).
    let r = unsafe { pvm_hook_call(f, a, b) };
    if r.escaped == 0 {
        Ok(r.value)
    } else if HOOK_PANICKED.load(Ordering::SeqCst) {
        Err(dl_abort::HOOK_PANICKED)
    } else {
        Err(dl_abort::HOOK_TIMEOUT)
    }
}

fn update_call(op: u64, handle: u64, reason: u64, detail: u64) -> DlUpdateArgs {
    let mut args = DlUpdateArgs {
        op,
        handle,
        reason,
        detail,
        escape: pvm_hook_escape as *const () as u64,
        ..Default::default()
    };
    raw(Hypercall::DlUpdate, &mut args as *mut DlUpdateArgs as u64);
    args
}

/// [`poll_update`] if an update is announced (one load otherwise).
#[inline(always)]
pub(crate) fn poll_if_pending() {
    if update_pending() {
        poll_update();
    }
}

/// Runs the update the monitor announced, if its library is idle (no call in flight): the
/// safe point. Called after hypercalls, when a handle's call returns with none left, and when
/// an IPC wait starts.
pub(crate) fn poll_update() {
    let pending = {
        // SAFETY: as in `update_pending`.
        unsafe { core::ptr::read_volatile(DL_UPDATE_AT as *const u64) }
    };
    if pending == 0 || UPDATING.load(Ordering::SeqCst) {
        return;
    }
    let handle = pending - 1;
    let Some(rec) = RECORDS
        .0
        .iter()
        .find(|r| r.open.get() && r.info.get().handle == handle)
    else {
        // Not a library this runtime has open (closed meanwhile): decline.
        let _ = update_call(dl_op::ABORT, handle, dl_abort::NOT_OPEN, 0);
        return;
    };
    if rec.active.get() != 0 {
        return;
    }
    UPDATING.store(true, Ordering::SeqCst);
    run_update(rec, handle);
    UPDATING.store(false, Ordering::SeqCst);
}

fn run_update(rec: &'static Record, handle: u64) {
    let begin = update_call(dl_op::BEGIN, handle, 0, 0);
    if begin.result < 0 {
        return;
    }
    let old = rec.info.get();
    let new = begin.info;
    let abort = |reason, detail| {
        let _ = update_call(dl_op::ABORT, handle, reason, detail);
    };
    // Every handle must find its symbol in the new version. (Hooks must not make handles.)
    if let Some(i) = rec.with_slots(|slots| slots.iter().position(|s| lookup(&new, &s.name).is_none())) {
        return abort(dl_abort::MISSING_SYMBOL, i as u64);
    }
    // The state goes from the old version to the new one.
    let save = lookup(&old, STATE_SAVE_SYMBOL);
    let restore = lookup(&new, STATE_RESTORE_SYMBOL);
    if save.is_some() && restore.is_none() {
        return abort(dl_abort::HOOKS_MISMATCH, 0);
    }
    let state = match save.map(|f| call_hook(f, 0, 0)) {
        None => 0,
        Some(Ok(state)) => state as usize,
        Some(Err(reason)) => return abort(reason, 0),
    };
    if let Some(f) = restore {
        let mut from = [0u8; 65];
        if let Some(v) = version_of(&old) {
            let n = v.len().min(64);
            from[..n].copy_from_slice(&v.as_bytes()[..n]);
        }
        match call_hook(f, state, from.as_ptr() as usize) {
            Ok(0) => {}
            Ok(code) => return abort(dl_abort::RESTORE_FAILED, code),
            Err(reason) => return abort(reason, 0),
        }
    }
    let commit = update_call(dl_op::COMMIT, handle, 0, 0);
    if commit.result < 0 {
        // The monitor gave up on the update meanwhile (its time limit): the old version stays.
        return;
    }
    rec.with_slots(|slots| {
        for slot in slots.iter() {
            if let Some(addr) = lookup(&new, &slot.name) {
                slot.addr.set(addr);
            }
        }
    });
    rec.info.set(new);
    crate::signal::dispatch();
}
