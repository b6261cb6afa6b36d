//! Every host system call the monitor makes outside KVM's ioctls (which go through `kvm-ioctls`),
//! in one place, so that the seccomp allow-list (`seccomp/`) can be read against it.
//!
//! Typed wrappers come from `rustix` (its `linux_raw` backend: the system call itself, not
//! glibc's wrapper, so the number the allow-list names is the one rustix issues). Raw `libc` is
//! used only where rustix 1.1 has no call, and each such function says why (`libc: ...`): `fork`
//! and `clone` (rustix offers them only to programs without std), signal handlers and masks
//! (same), `F_GETLK` and open-file-description locks (rustix's `fcntl_lock` takes a whole-file
//! process lock only, and cannot ask who holds one), `F_SETOWN`, `tgkill`, POSIX timers,
//! `close_range`, `mallopt`, and vectored transfers from and to memory shared with a guest
//! (rustix's take slices, which such memory cannot soundly be).
use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::AtomicU32;

use rustix::fs::{Mode, OFlags};
use rustix::process::{Pid, Signal};

pub use rustix::fs::Stat;

/// A pVM id as a host pid: positive and at most `i32::MAX`. Anything else (0, or a value that
/// would read as negative) names a process *group* or every process to `kill(2)`, never one
/// process, so it is refused here whatever the caller checked before.
pub fn pid(id: u32) -> io::Result<Pid> {
    i32::try_from(id)
        .ok()
        .and_then(Pid::from_raw)
        .filter(|p| p.as_raw_nonzero().get() > 0)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::ESRCH))
}

/// This process's id.
pub fn getpid() -> u32 {
    rustix::process::getpid().as_raw_nonzero().get() as u32
}

/// The effective user id.
pub fn geteuid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Which side of a [`fork`] this is.
pub enum Forked {
    /// The parent, with the child's pid.
    Parent(u32),
    /// The child.
    Child,
}

/// A descriptor every child forked through [`fork`] closes at once (-1: none).
static CLOSE_IN_CHILDREN: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

/// Makes every child this process forks through [`fork`] close `fd` first: a descriptor that
/// means "this process is alive" to whoever holds its other end (a warm pVM's connection to
/// its `pvmctl run`), which a child's copy would keep from hanging up.
pub fn close_in_forked_children(fd: RawFd) {
    CLOSE_IN_CHILDREN.store(fd, std::sync::atomic::Ordering::SeqCst);
}

/// `fork(2)`. libc: rustix offers fork only to programs that run without std.
///
/// # Safety
/// The process must be single-threaded, so that the child starts with consistent locks and heap.
pub unsafe fn fork() -> io::Result<Forked> {
    // SAFETY: the caller guarantees a single thread.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            // A warm pVM's connection is its parent's alone (its hang-up is not the child's).
            HANGUP_FD.store(-1, std::sync::atomic::Ordering::SeqCst);
            let fd = CLOSE_IN_CHILDREN.swap(-1, std::sync::atomic::Ordering::SeqCst);
            if fd >= 0 {
                // SAFETY: the descriptor registered by `close_in_forked_children`, which no
                // object of the child owns (its owner is the parent's alone).
                unsafe { rustix::io::close(fd) };
            }
            Ok(Forked::Child)
        }
        child => Ok(Forked::Parent(child as u32)),
    }
}

/// Clones a helper that shares this process's memory and file table (`CLONE_VM | CLONE_FILES`)
/// and runs `f(arg)` on `stack`, with exit signal 0 (whoever inherits it reaps it). libc: rustix
/// has no `clone`.
///
/// # Safety
/// `f` must run on the bare stack with raw system calls only (it shares the caller's memory and
/// must not touch Rust state), and `stack` must outlive the helper.
pub unsafe fn clone_helper(
    f: extern "C" fn(*mut libc::c_void) -> libc::c_int,
    stack: &'static mut [u8],
    arg: usize,
) -> io::Result<u32> {
    // SAFETY: the range is inside `stack`; rounding down keeps it inside and 16-byte aligned.
    let top = unsafe { stack.as_mut_ptr().add(stack.len()) }.map_addr(|a| a & !15);
    // SAFETY: as the caller promised above.
    let pid = unsafe { libc::clone(f, top.cast(), libc::CLONE_VM | libc::CLONE_FILES, arg as *mut _) };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(pid as u32)
}

/// Waits until the process `pidfd` refers to is gone (a pidfd reads ready then), retrying
/// after signals (any other error ends the wait), with nothing but the `ppoll` system call:
/// for a [`clone_helper`] on its bare stack. rustix's `linux_raw` backend issues it inline and
/// returns the error, where glibc's `syscall()` would store it in errno (thread-local storage,
/// which such a helper must not touch: its thread pointer is its parent's).
///
/// # Safety
/// `pidfd` must stay open until this returns.
pub unsafe fn wait_gone_raw(pidfd: RawFd) {
    use rustix::event::{poll, PollFd, PollFlags};
    // SAFETY: as the caller promised.
    let pidfd = unsafe { BorrowedFd::borrow_raw(pidfd) };
    let mut fds = [PollFd::new(&pidfd, PollFlags::IN)];
    // Any other error would repeat for ever: give up then (the last exit tears the VM down).
    while poll(&mut fds, None) == Err(rustix::io::Errno::INTR) {}
}

/// Ends this process at once, running no destructors. libc: rustix offers `exit_group` only to
/// programs without std.
pub fn exit_now(status: i32) -> ! {
    // SAFETY: _exit ends the process without running destructors; nothing is left to do.
    unsafe { libc::_exit(status) }
}

/// How a waited-for process ended: the raw `waitpid` status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitStatus(pub i32);

impl WaitStatus {
    /// The signal that ended it, if one did.
    pub fn signal(self) -> Option<i32> {
        libc::WIFSIGNALED(self.0).then(|| libc::WTERMSIG(self.0))
    }

    /// Its exit code (when no signal ended it).
    pub fn code(self) -> i32 {
        libc::WEXITSTATUS(self.0)
    }
}

/// `waitpid` for `pid` (any child: `None`): `Ok(None)` with `nohang` when none has ended;
/// `EINTR` when a signal interrupted it; `ECHILD` when there is nothing to wait for.
pub fn waitpid(pid: Option<u32>, nohang: bool) -> io::Result<Option<(u32, WaitStatus)>> {
    let pid = pid.map(self::pid).transpose()?;
    let opts = if nohang {
        rustix::process::WaitOptions::NOHANG
    } else {
        rustix::process::WaitOptions::empty()
    };
    Ok(rustix::process::waitpid(pid, opts)?
        .map(|(p, status)| (p.as_raw_nonzero().get() as u32, WaitStatus(status.as_raw()))))
}

/// A pidfd: a handle on one process that a recycled pid can never redirect.
pub fn pidfd_open(id: u32) -> io::Result<OwnedFd> {
    Ok(rustix::process::pidfd_open(
        pid(id)?,
        rustix::process::PidfdFlags::empty(),
    )?)
}

/// The signal numbered `sig`, if it is one the monitor sends (the guest-visible ones, KILL,
/// and the pause/resume signals of `pvmctl`).
pub fn signal(sig: i32) -> io::Result<Signal> {
    Signal::from_named_raw(sig)
        .or_else(|| {
            // SAFETY: SIGRTMIN..=SIGRTMAX are valid signal numbers that glibc does not reserve.
            (libc::SIGRTMIN()..=libc::SIGRTMAX())
                .contains(&sig)
                .then(|| unsafe { Signal::from_raw_unchecked(sig) })
        })
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Sends `sig` to the process `pidfd` refers to.
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, sig: i32) -> io::Result<()> {
    Ok(rustix::process::pidfd_send_signal(pidfd, signal(sig)?)?)
}

/// Sends `sig` to process `id` (a positive pid, never a group). Use it only on a pid that
/// cannot have been recycled: this process, or an unreaped child.
pub fn kill(id: u32, sig: i32) -> io::Result<()> {
    Ok(rustix::process::kill_process(pid(id)?, signal(sig)?)?)
}

/// Makes this process the reaper of its orphaned descendants.
pub fn set_child_subreaper() -> io::Result<()> {
    Ok(rustix::process::set_child_subreaper(Some(
        rustix::process::getpid(),
    ))?)
}

/// `PR_SET_NO_NEW_PRIVS`: neither this process nor its children can gain privileges (setuid
/// binaries, file capabilities), and unprivileged seccomp filters become possible.
pub fn set_no_new_privs() -> io::Result<()> {
    Ok(rustix::thread::set_no_new_privs(true)?)
}

/// Names this process (what `/proc/PID/comm` shows).
pub fn set_name(name: &CStr) -> io::Result<()> {
    Ok(rustix::thread::set_name(name)?)
}

/// Makes the kernel's OOM killer pick this process (and what it forks) before others of the
/// same size (`/proc/self/oom_score_adj`, which anyone may raise); never lowers it.
pub fn prefer_oom_kill(adj: i32) {
    let path = "/proc/self/oom_score_adj";
    let now: i32 = std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    if now < adj {
        let _ = std::fs::write(path, adj.to_string());
    }
}

/// Raises the soft open-file limit to the hard one.
pub fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let lim = getrlimit(Resource::Nofile);
    if lim.current < lim.maximum {
        let _ = setrlimit(
            Resource::Nofile,
            rustix::process::Rlimit {
                current: lim.maximum,
                maximum: lim.maximum,
            },
        );
    }
}

/// Closes every descriptor from `first` on except those of `keep`. libc: rustix 1.1 has no
/// `close_range` (and musl no wrapper: the raw call).
pub fn close_fds_except(first: RawFd, keep: &[RawFd]) {
    let close = |lo: RawFd, hi: RawFd| {
        if lo <= hi {
            // SAFETY: closes descriptors this process owns and no live object refers to (the
            // caller runs this before it opens anything past the standard ones, and keeps the
            // descriptors of the objects it already has).
            unsafe { libc::syscall(libc::SYS_close_range, lo as u32, hi as u32, 0u32) };
        }
    };
    let mut keep: Vec<RawFd> = keep.iter().copied().filter(|&k| k >= first).collect();
    keep.sort_unstable();
    let mut lo = first;
    for k in keep {
        close(lo, k - 1);
        lo = k + 1;
    }
    close(lo, RawFd::MAX);
}

/// Closes the standard descriptors (right before the process exits).
pub fn close_stdio() {
    for fd in 0..=2 {
        // SAFETY: closing 0-2 right before exit; nothing uses them afterwards (no `OwnedFd` owns
        // them: std's handles borrow them and are not used again).
        unsafe { rustix::io::close(fd) };
    }
}

/// One malloc arena for the whole process. libc: a glibc setting with no system call (the
/// lean build's allocator, dlmalloc on musl, has one heap already).
pub fn single_malloc_arena() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt has no memory-safety preconditions.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1)
    };
}

/// Bytes of RAM of the host.
pub fn host_ram() -> u64 {
    let info = rustix::system::sysinfo();
    info.totalram.saturating_mul(u64::from(info.mem_unit))
}

/// Lets another thread or process run.
pub fn yield_now() {
    rustix::thread::sched_yield();
}

/// `CLOCK_MONOTONIC` in nanoseconds (comparable between the processes of a family).
pub fn monotonic_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// 8 random bytes from the kernel.
pub fn random_u64() -> io::Result<u64> {
    let mut b = [0u8; 8];
    rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty())?;
    Ok(u64::from_le_bytes(b))
}

// ---- signals ------------------------------------------------------------------------------

/// Installs `handler` for `sig` without `SA_RESTART` (so blocking calls return `EINTR`).
pub fn set_signal_handler(sig: i32, handler: extern "C" fn(libc::c_int)) {
    let _ = sigaction(sig, handler, 0);
}

/// Installs `handler` for `sig` with `flags`. libc: rustix has no `sigaction` for programs that
/// use std.
fn sigaction(sig: i32, handler: extern "C" fn(libc::c_int), flags: i32) -> io::Result<()> {
    // SAFETY: a zeroed sigaction is valid; the handler is an `extern "C"` function that the
    // caller wrote to be async-signal-safe.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler as usize;
        sa.sa_flags = flags;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Puts back the default action of `sig`. libc: as [`set_signal_handler`].
pub fn default_signal(sig: i32) {
    // SAFETY: SIG_DFL is a valid disposition for any catchable signal.
    unsafe { libc::signal(sig, libc::SIG_DFL) };
}

/// A set of signals. libc: rustix has no signal sets for programs that use std.
#[derive(Clone, Copy)]
pub struct SigSet(libc::sigset_t);

impl SigSet {
    /// The set of `sigs`.
    pub fn of(sigs: &[i32]) -> SigSet {
        // SAFETY: a zeroed sigset_t is valid storage; sigemptyset/sigaddset fill it.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for &s in sigs {
                libc::sigaddset(&mut set, s);
            }
            SigSet(set)
        }
    }

    /// Blocks the set; returns the previous mask.
    pub fn block(&self) -> SigSet {
        // SAFETY: sigprocmask with valid sets on this (single-threaded) process.
        unsafe {
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigprocmask(libc::SIG_BLOCK, &self.0, &mut old);
            SigSet(old)
        }
    }

    /// Makes this set the mask.
    pub fn set_mask(&self) {
        // SAFETY: sigprocmask with a valid set.
        unsafe { libc::sigprocmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut()) };
    }

    /// Sleeps with this set as the mask until a handler has run.
    pub fn suspend(&self) {
        // SAFETY: sigsuspend with a valid set; it returns after a handler ran.
        unsafe { libc::sigsuspend(&self.0) };
    }
}

// ---- memory --------------------------------------------------------------------------------

/// Maps `len` bytes of zeroed private anonymous memory without reserving swap (guest RAM: a
/// forked monitor shares it copy-on-write).
pub fn map_private(len: usize) -> io::Result<NonNull<u8>> {
    use rustix::mm::{mmap_anonymous, MapFlags, ProtFlags};
    // SAFETY: a fresh mapping with no address hint aliases nothing.
    let p = unsafe {
        mmap_anonymous(
            std::ptr::null_mut(),
            len,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::PRIVATE | MapFlags::NORESERVE,
        )
    }?;
    NonNull::new(p.cast()).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))
}

/// Maps the first `len` bytes of `file` shared, read-write.
pub fn map_file_shared(file: BorrowedFd<'_>, len: usize) -> io::Result<NonNull<u8>> {
    use rustix::mm::{mmap, MapFlags, ProtFlags};
    // SAFETY: a fresh mapping with no address hint aliases nothing; the caller sized the file.
    let p = unsafe {
        mmap(
            std::ptr::null_mut(),
            len,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::SHARED,
            file,
            0,
        )
    }?;
    NonNull::new(p.cast()).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))
}

/// Makes `[addr, addr + len)` of a mapping read-only.
///
/// # Safety
/// The range must lie inside a mapping this process owns, and nothing may write it afterwards.
pub unsafe fn protect_read_only(addr: NonNull<u8>, len: usize) -> io::Result<()> {
    // SAFETY: as the caller promised.
    Ok(unsafe { rustix::mm::mprotect(addr.as_ptr().cast(), len, rustix::mm::MprotectFlags::READ) }?)
}

/// Reserves `len` bytes of address space: inaccessible, no memory behind it (the library
/// windows, filled part by part with the `map_fixed_*` functions).
pub fn reserve(len: usize) -> io::Result<NonNull<u8>> {
    use rustix::mm::{mmap_anonymous, MapFlags, ProtFlags};
    // SAFETY: a fresh mapping with no address hint aliases nothing.
    let p = unsafe {
        mmap_anonymous(
            std::ptr::null_mut(),
            len,
            ProtFlags::empty(),
            MapFlags::PRIVATE | MapFlags::NORESERVE,
        )
    }?;
    NonNull::new(p.cast()).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))
}

/// Replaces `[addr, addr + len)` with zeroed private memory, read-write.
///
/// # Safety
/// The range must lie in a reservation this process owns that nothing else uses.
pub unsafe fn map_fixed_anon(addr: NonNull<u8>, len: usize) -> io::Result<()> {
    use rustix::mm::{mmap_anonymous, MapFlags, ProtFlags};
    // SAFETY: as the caller promised (MAP_FIXED replaces only that range). Populated: the
    // caller fills it at once, and one call beats a fault per page.
    unsafe {
        mmap_anonymous(
            addr.as_ptr().cast(),
            len,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::PRIVATE | MapFlags::FIXED | MapFlags::NORESERVE | MapFlags::POPULATE,
        )
    }?;
    Ok(())
}

/// Whether a file mapping's pages are faulted in by the `mmap` call itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Populate {
    /// At once: the caller reads all of it now (one call beats a fault per page).
    Now,
    /// On first touch: the caller does not read it (only the guest does, a few pages of it).
    OnTouch,
}

/// Replaces `[addr, addr + len)` with the first `len` bytes of `file`, shared, read-only.
///
/// # Safety
/// As [`map_fixed_anon`].
pub unsafe fn map_fixed_file_read(
    addr: NonNull<u8>,
    len: usize,
    file: BorrowedFd<'_>,
    populate: Populate,
) -> io::Result<()> {
    use rustix::mm::{mmap, MapFlags, ProtFlags};
    let mut flags = MapFlags::SHARED | MapFlags::FIXED;
    if populate == Populate::Now {
        flags |= MapFlags::POPULATE;
    }
    // SAFETY: as the caller promised.
    unsafe { mmap(addr.as_ptr().cast(), len, ProtFlags::READ, flags, file, 0) }?;
    Ok(())
}

/// Returns `[addr, addr + len)` to the reservation: inaccessible, its memory freed.
///
/// # Safety
/// As [`map_fixed_anon`]; nothing may use the old contents afterwards.
pub unsafe fn map_fixed_none(addr: NonNull<u8>, len: usize) {
    use rustix::mm::{mmap_anonymous, MapFlags, ProtFlags};
    // SAFETY: as the caller promised.
    let _ = unsafe {
        mmap_anonymous(
            addr.as_ptr().cast(),
            len,
            ProtFlags::empty(),
            MapFlags::PRIVATE | MapFlags::FIXED | MapFlags::NORESERVE,
        )
    };
}

/// Unmaps a mapping made by one of the `map_*` functions.
///
/// # Safety
/// Nothing may use the range afterwards (no reference into it, no KVM memory slot over it).
pub unsafe fn unmap(addr: NonNull<u8>, len: usize) {
    // SAFETY: as the caller promised.
    let _ = unsafe { rustix::mm::munmap(addr.as_ptr().cast(), len) };
}

/// Advice for a range of a mapping.
#[derive(Clone, Copy, Debug)]
pub enum Advice {
    /// Back it with transparent huge pages.
    HugePages,
    /// Fault it in now, writable (a page shared copy-on-write is copied now).
    PopulateWrite,
    /// Fault it in now, for reading.
    PopulateRead,
}

/// `madvise`; failure is harmless (the advice is an optimisation) and ignored.
///
/// # Safety
/// The range must lie inside a mapping this process owns.
pub unsafe fn advise(addr: *mut u8, len: usize, advice: Advice) {
    let advice = match advice {
        Advice::HugePages => rustix::mm::Advice::LinuxHugepage,
        Advice::PopulateWrite => rustix::mm::Advice::LinuxPopulateWrite,
        Advice::PopulateRead => rustix::mm::Advice::LinuxPopulateRead,
    };
    // SAFETY: as the caller promised.
    let _ = unsafe { rustix::mm::madvise(addr.cast(), len, advice) };
}

/// Faults in this process's own memory ahead of work that would touch it page by page (a pool
/// member, before it waits for a run; each first touch costs a fault of ~5 us where the host is
/// itself a VM): the executable's code and read-only data for reading, and for writing its data
/// and bss, the heap, the stack and the allocator's other private writable mappings, so that the
/// pages it shares copy-on-write with its parent are copied now. `except` (guest RAM, whose
/// pages are the guest's to fault) is left alone. Best effort: a mapping that cannot be
/// populated is skipped.
pub fn populate_own_memory(except: std::ops::Range<usize>) {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return;
    };
    let exe = std::fs::read_link("/proc/self/exe").ok();
    for line in maps.lines() {
        let Some(m) = MapsLine::parse(line) else {
            continue;
        };
        let own_file = exe.as_deref().is_some_and(|e| std::path::Path::new(m.path) == e);
        let anonymous = m.path.is_empty() || m.path == "[heap]" || m.path == "[stack]";
        let excepted = m.start < except.end && except.start < m.end;
        let advice = if !m.private || !m.read || m.end <= m.start || excepted {
            continue;
        } else if m.write && (own_file || anonymous) {
            Advice::PopulateWrite
        } else if own_file {
            Advice::PopulateRead
        } else {
            continue;
        };
        // SAFETY: the range is one of this process's mappings, as the kernel listed it; the
        // advice only faults pages in (contents unchanged).
        unsafe { advise(m.start as *mut u8, m.end - m.start, advice) };
    }
}

/// A line of `/proc/self/maps`: its range, permissions and path (empty for anonymous memory).
struct MapsLine<'a> {
    start: usize,
    end: usize,
    read: bool,
    write: bool,
    private: bool,
    path: &'a str,
}

impl<'a> MapsLine<'a> {
    fn parse(line: &'a str) -> Option<MapsLine<'a>> {
        let mut fields = line.splitn(6, ' ');
        let (start, end) = fields.next()?.split_once('-')?;
        let perms = fields.next()?.as_bytes();
        // Offset, device, inode; then the path, after padding.
        let path = fields.nth(3).unwrap_or("").trim_start();
        Some(MapsLine {
            start: usize::from_str_radix(start, 16).ok()?,
            end: usize::from_str_radix(end, 16).ok()?,
            read: perms.first() == Some(&b'r'),
            write: perms.get(1) == Some(&b'w'),
            private: perms.get(3) == Some(&b'p'),
            path,
        })
    }
}

/// A new memory file of `size` bytes (an IPC region).
pub fn memfd(size: u64) -> io::Result<OwnedFd> {
    let fd = rustix::fs::memfd_create(c"pvm-ipc", rustix::fs::MemfdFlags::CLOEXEC)?;
    rustix::fs::ftruncate(&fd, size)?;
    Ok(fd)
}

/// A shared futex word (in a `MAP_SHARED` mapping other monitors map too).
///
/// # Safety
/// `word` must point to a 4-byte-aligned word of a live shared mapping.
pub unsafe fn futex_word<'a>(word: *const u32) -> &'a AtomicU32 {
    // SAFETY: as the caller promised; the kernel and other monitors access it atomically.
    unsafe { &*(word.cast::<AtomicU32>()) }
}

/// How a futex sleep ended.
pub enum FutexWake {
    /// Woken, or the word no longer held the value.
    Changed,
    /// The timeout passed or a signal interrupted the sleep.
    TimedOut,
}

/// Sleeps on a *shared* futex while `word` holds `value`, at most `timeout_ns`.
pub fn futex_wait(word: &AtomicU32, value: u32, timeout_ns: i64) -> io::Result<FutexWake> {
    use rustix::io::Errno;
    use rustix::thread::futex;
    let timeout = rustix::time::Timespec {
        tv_sec: 0,
        tv_nsec: timeout_ns,
    };
    match futex::wait(word, futex::Flags::empty(), value, Some(&timeout)) {
        Ok(()) | Err(Errno::AGAIN) => Ok(FutexWake::Changed),
        Err(Errno::TIMEDOUT) | Err(Errno::INTR) => Ok(FutexWake::TimedOut),
        Err(e) => Err(e.into()),
    }
}

/// Wakes every sleeper on the shared futex `word`.
pub fn futex_wake(word: &AtomicU32) {
    let _ = rustix::thread::futex::wake(word, rustix::thread::futex::Flags::empty(), i32::MAX as u32);
}

// ---- descriptors ---------------------------------------------------------------------------

/// A pipe whose ends are close-on-exec (and non-blocking with `nonblock`).
pub fn pipe(nonblock: bool) -> io::Result<(OwnedFd, OwnedFd)> {
    use rustix::pipe::PipeFlags;
    let flags = if nonblock {
        PipeFlags::CLOEXEC | PipeFlags::NONBLOCK
    } else {
        PipeFlags::CLOEXEC
    };
    Ok(rustix::pipe::pipe_with(flags)?)
}

/// Whether `fd` has hung up (every write end of its pipe, or the process of a pidfd, is gone),
/// without waiting.
pub fn hung_up(fd: BorrowedFd<'_>) -> bool {
    use rustix::event::{poll, PollFd, PollFlags};
    let mut fds = [PollFd::new(&fd, PollFlags::IN)];
    let zero = rustix::time::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    matches!(poll(&mut fds, Some(&zero)), Ok(n) if n > 0)
        && fds[0].revents().intersects(PollFlags::HUP | PollFlags::ERR)
}

/// Writes all of `buf` to `fd`, retrying after signals; returns how much was written before an
/// error, or the error if nothing was.
pub fn write_all(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match rustix::io::write(fd, &buf[done..]) {
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(_) if done > 0 => return Ok(done),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(done)
}

/// The standard input, output or error descriptor.
pub fn stdio(fd: RawFd) -> BorrowedFd<'static> {
    // Descriptors 0-2 stay open for the life of the process (only its exit closes them).
    match fd {
        0 => rustix::stdio::stdin(),
        2 => rustix::stdio::stderr(),
        _ => rustix::stdio::stdout(),
    }
}

// ---- the control socket ---------------------------------------------------------------------

/// A listening Unix stream socket bound to `name` in the directory `dir` (through
/// `/proc/self/fd/N/NAME`, so the verified directory, not a path looked up again, holds it);
/// close-on-exec, and non-blocking unless `blocking`.
pub fn unix_listener(dir: BorrowedFd<'_>, name: &str, blocking: bool) -> io::Result<OwnedFd> {
    use rustix::net::{bind, listen, socket_with, AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let flags = if blocking {
        SocketFlags::CLOEXEC
    } else {
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK
    };
    let sock = socket_with(AddressFamily::UNIX, SocketType::STREAM, flags, None)?;
    let path = format!("/proc/self/fd/{}/{name}", dir.as_raw_fd());
    bind(&sock, &SocketAddrUnix::new(path.as_str())?)?;
    listen(&sock, 16)?;
    Ok(sock)
}

/// A connection to the Unix stream socket at `path` (close-on-exec).
pub fn unix_connect(path: &std::path::Path) -> io::Result<OwnedFd> {
    use rustix::net::{connect, socket_with, AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let sock = socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    connect(&sock, &SocketAddrUnix::new(path)?)?;
    Ok(sock)
}

/// Makes input on `fd` (a connection on a listening socket) raise SIGIO in this process
/// (`F_SETOWN`, then `O_ASYNC`). libc for `F_SETOWN`: rustix has no call for it.
pub fn sigio_on_input(fd: BorrowedFd<'_>) -> io::Result<()> {
    signal_on_io(fd, None, OFlags::NONBLOCK)
}

/// Makes I/O on `fd` signal this process: `F_SETOWN` this process, `F_SETSIG` `sig` (SIGIO when
/// `None`), then `O_ASYNC` with `flags`. libc: rustix has neither `F_SETOWN` nor `F_SETSIG`.
fn signal_on_io(fd: BorrowedFd<'_>, sig: Option<i32>, flags: OFlags) -> io::Result<()> {
    /// `F_SETSIG` of linux/fcntl.h (the libc crate does not define it).
    const F_SETSIG: i32 = 10;
    let me = rustix::process::getpid().as_raw_nonzero().get();
    let own = [(libc::F_SETOWN, me)];
    let set_sig = sig.map(|s| (F_SETSIG, s));
    for (cmd, arg) in own.into_iter().chain(set_sig) {
        // SAFETY: an fcntl command with an integer argument on an open descriptor.
        if unsafe { libc::fcntl(fd.as_raw_fd(), cmd, arg) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(rustix::fs::fcntl_setfl(fd, OFlags::ASYNC | flags)?)
}

/// A pending connection on the non-blocking listener `fd`, if any (close-on-exec; it blocks).
pub fn accept(fd: BorrowedFd<'_>) -> io::Result<Option<OwnedFd>> {
    match rustix::net::accept_with(fd, rustix::net::SocketFlags::CLOEXEC) {
        Ok(conn) => Ok(Some(conn)),
        Err(rustix::io::Errno::AGAIN) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Sends all of `bytes` on the Unix stream socket `sock` with `fds` attached (`SCM_RIGHTS`).
pub fn send_all_with_fds(sock: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let n = send_with_fds(sock, bytes, fds)?;
    // The descriptors went with the first byte; the rest is plain data.
    write_all(sock, &bytes[n..]).map(drop)
}

/// Sends `bytes` on the Unix socket `sock` with `fds` attached (`SCM_RIGHTS`, at most
/// [`MAX_NET_FDS`]); returns how many bytes went (all of them on a datagram socket).
pub fn send_with_fds(sock: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
    use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_NET_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    loop {
        match sendmsg(
            sock,
            &[io::IoSlice::new(bytes)],
            &mut control,
            SendFlags::NOSIGNAL,
        ) {
            Err(rustix::io::Errno::INTR) => continue,
            other => return Ok(other?),
        }
    }
}

/// Receives into `buf` from the Unix socket `sock`, with the descriptors that came with the
/// bytes (`SCM_RIGHTS`, close-on-exec), at most [`MAX_PASSED_FDS`]: more are closed.
pub fn recv_with_fds(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    recv_with_fds_max(sock, buf, MAX_PASSED_FDS)
}

/// [`recv_with_fds`], keeping at most `max` descriptors (at most [`MAX_NET_FDS`]).
pub fn recv_with_fds_max(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    max: usize,
) -> io::Result<(usize, Vec<OwnedFd>)> {
    use rustix::net::{recvmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_NET_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = loop {
        match recvmsg(
            sock,
            &mut [io::IoSliceMut::new(buf)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT,
        ) {
            Err(rustix::io::Errno::INTR) => continue,
            other => break other?,
        }
    };
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(passed) = m {
            fds.extend(passed);
        }
    }
    fds.truncate(max.min(MAX_NET_FDS));
    Ok((msg.bytes, fds))
}

/// Most descriptors one control message may carry.
pub const MAX_PASSED_FDS: usize = 1;

/// Most descriptors one message between a monitor and its network backend carries (a
/// connection: its region, four liveness pipe ends and its two eventfds).
pub const MAX_NET_FDS: usize = 7;

// ---- the network backend ----------------------------------------------------------------------

/// A connected pair of Unix datagram-boundary sockets (`SOCK_SEQPACKET`), close-on-exec: a
/// monitor's channel to its network backend.
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
    Ok(socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// A non-blocking TCP socket of `addr`'s family.
fn tcp_socket(addr: &std::net::SocketAddr) -> io::Result<OwnedFd> {
    use rustix::net::{socket_with, AddressFamily, SocketFlags, SocketType};
    let family = if addr.is_ipv4() {
        AddressFamily::INET
    } else {
        AddressFamily::INET6
    };
    Ok(socket_with(
        family,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?)
}

/// A non-blocking TCP listener bound to `addr` (address reuse on, as servers do).
pub fn tcp_listen(addr: std::net::SocketAddr) -> io::Result<OwnedFd> {
    use rustix::net::{bind, listen, sockopt};
    let fd = tcp_socket(&addr)?;
    sockopt::set_socket_reuseaddr(&fd, true)?;
    bind(&fd, &addr)?;
    listen(&fd, 1024)?;
    Ok(fd)
}

/// A non-blocking TCP socket connecting to `addr`: (socket, connected already); when not yet,
/// it becomes writable once it is, and [`socket_error`] tells how it went.
pub fn tcp_connect(addr: std::net::SocketAddr) -> io::Result<(OwnedFd, bool)> {
    use rustix::net::{connect, sockopt};
    let fd = tcp_socket(&addr)?;
    let _ = sockopt::set_tcp_nodelay(&fd, true);
    match connect(&fd, &addr) {
        Ok(()) => Ok((fd, true)),
        Err(rustix::io::Errno::INPROGRESS) => Ok((fd, false)),
        Err(e) => Err(e.into()),
    }
}

/// The pending error of socket `fd` (`SO_ERROR`): how a non-blocking connect ended.
pub fn socket_error(fd: BorrowedFd<'_>) -> io::Result<Option<io::Error>> {
    Ok(rustix::net::sockopt::socket_error(fd)?.err().map(io::Error::from))
}

/// The address socket `fd` is bound to.
pub fn local_addr(fd: BorrowedFd<'_>) -> io::Result<std::net::SocketAddr> {
    let addr = rustix::net::getsockname(fd)?;
    std::net::SocketAddr::try_from(addr).map_err(|_| io::Error::from_raw_os_error(libc::EAFNOSUPPORT))
}

/// A pending TCP connection on the non-blocking listener `fd`, non-blocking itself, with the
/// client's address; None when there is none.
pub fn tcp_accept(fd: BorrowedFd<'_>) -> io::Result<Option<(OwnedFd, std::net::SocketAddr)>> {
    use rustix::net::{acceptfrom_with, sockopt, SocketFlags};
    loop {
        match acceptfrom_with(fd, SocketFlags::CLOEXEC | SocketFlags::NONBLOCK) {
            Ok((conn, addr)) => {
                // Small writes go out at once (request/response traffic).
                let _ = sockopt::set_tcp_nodelay(&conn, true);
                let peer = addr
                    .and_then(|a| std::net::SocketAddr::try_from(a).ok())
                    .unwrap_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
                return Ok(Some((conn, peer)));
            }
            Err(rustix::io::Errno::AGAIN) => return Ok(None),
            Err(rustix::io::Errno::INTR | rustix::io::Errno::CONNABORTED) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// What a non-blocking socket transfer did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Moved {
    /// This many bytes (0 from a receive: the peer closed its side).
    Bytes(usize),
    /// Nothing now: try when the socket is ready.
    WouldBlock,
}

/// Receives from the non-blocking socket `fd` straight into `runs` (memory shared with a
/// guest, given as raw runs: no Rust reference to it is formed). libc: rustix's `readv` takes
/// `IoSliceMut`s, that is `&mut [u8]`, which memory a guest may write at any moment cannot
/// soundly be (the promise of a `&mut` is that nothing else touches it).
pub fn recv_into_runs(fd: BorrowedFd<'_>, runs: &[(*mut u8, usize)]) -> io::Result<Moved> {
    let iov: Vec<libc::iovec> = runs
        .iter()
        .filter(|r| r.1 > 0)
        .map(|&(base, len)| libc::iovec {
            iov_base: base.cast(),
            iov_len: len,
        })
        .collect();
    moved(|| {
        // SAFETY: each iovec is a run of writable memory the caller vouches for; the kernel
        // writes at most their lengths.
        unsafe { libc::readv(fd.as_raw_fd(), iov.as_ptr(), iov.len() as libc::c_int) }
    })
}

/// What a non-blocking transfer `call` (a libc call: a count, or -1 and errno) did, retried
/// after signals.
fn moved(call: impl Fn() -> isize) -> io::Result<Moved> {
    loop {
        let n = call();
        if n >= 0 {
            return Ok(Moved::Bytes(n as usize));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EAGAIN) => return Ok(Moved::WouldBlock),
            Some(libc::EINTR) => continue,
            _ => return Err(e),
        }
    }
}

/// Sends from `runs` (memory shared with a guest, as raw runs) on the non-blocking socket
/// `fd`, without SIGPIPE. libc: as [`recv_into_runs`] (rustix's `sendmsg` takes `IoSlice`s,
/// `&[u8]`, whose bytes must not change while it is borrowed).
pub fn send_from_runs(fd: BorrowedFd<'_>, runs: &[(*const u8, usize)]) -> io::Result<Moved> {
    let mut iov: Vec<libc::iovec> = runs
        .iter()
        .filter(|r| r.1 > 0)
        .map(|&(base, len)| libc::iovec {
            iov_base: base.cast_mut().cast(),
            iov_len: len,
        })
        .collect();
    // SAFETY: msghdr is plain data; all zeroes is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = iov.len() as _; // size_t in glibc, int in musl
    moved(|| {
        // SAFETY: the header points at the iovecs above, each a readable run the caller
        // vouches for; the kernel only reads them.
        unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) }
    })
}

/// Shuts down the sending side of socket `fd` (the peer reads end of file).
pub fn shutdown_write(fd: BorrowedFd<'_>) {
    let _ = rustix::net::shutdown(fd, rustix::net::Shutdown::Write);
}

/// Points standard input and output at `/dev/null` (a helper process that must not hold the
/// console open). Best effort.
pub fn detach_stdin_stdout() {
    if let Ok(null) = rustix::fs::open(
        "/dev/null",
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    ) {
        let _ = rustix::stdio::dup2_stdin(&null);
        let _ = rustix::stdio::dup2_stdout(&null);
    }
}

/// Points standard input, output and error at `/dev/null` (a daemon's). Best effort.
pub fn detach_stdio() {
    detach_stdin_stdout();
    if let Ok(null) = rustix::fs::open("/dev/null", OFlags::WRONLY | OFlags::CLOEXEC, Mode::empty()) {
        let _ = rustix::stdio::dup2_stderr(&null);
    }
}

/// Sets `O_APPEND` on `fd` (writers sharing it never overwrite each other).
pub fn set_append(fd: BorrowedFd<'_>) -> io::Result<()> {
    use rustix::fs::OFlags;
    let flags = rustix::fs::fcntl_getfl(fd)?;
    Ok(rustix::fs::fcntl_setfl(fd, flags | OFlags::APPEND)?)
}

/// Makes `fd` this process's standard output and error.
pub fn dup_onto_stdout_stderr(fd: BorrowedFd<'_>) -> io::Result<()> {
    rustix::stdio::dup2_stdout(fd)?;
    rustix::stdio::dup2_stderr(fd)?;
    Ok(())
}

/// Starts a new session (no controlling terminal). Best effort.
pub fn new_session() {
    let _ = rustix::process::setsid();
}

/// A non-blocking event counter (`eventfd`): a doorbell one process rings and another polls.
pub fn eventfd() -> io::Result<OwnedFd> {
    use rustix::event::EventfdFlags;
    Ok(rustix::event::eventfd(
        0,
        EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK,
    )?)
}

/// Rings the doorbell `fd` (an [`eventfd`]).
pub fn ring(fd: BorrowedFd<'_>) {
    let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
}

/// Clears the doorbell `fd` (an [`eventfd`]).
pub fn clear_doorbell(fd: BorrowedFd<'_>) {
    let mut b = [0u8; 8];
    let _ = rustix::io::read(fd, &mut b);
}

/// An epoll instance (the network backend's one place to wait).
pub struct Epoll(OwnedFd);

/// What an epoll registration waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interest {
    /// Readable (or hung up).
    pub read: bool,
    /// Writable.
    pub write: bool,
}

impl Interest {
    fn flags(self) -> rustix::event::epoll::EventFlags {
        use rustix::event::epoll::EventFlags;
        let mut f = EventFlags::RDHUP;
        if self.read {
            f |= EventFlags::IN;
        }
        if self.write {
            f |= EventFlags::OUT;
        }
        f
    }
}

impl Epoll {
    /// A new instance.
    pub fn new() -> io::Result<Epoll> {
        Ok(Epoll(rustix::event::epoll::create(
            rustix::event::epoll::CreateFlags::CLOEXEC,
        )?))
    }

    /// Watches `fd` for `interest`, reporting `token`.
    pub fn add(&self, fd: BorrowedFd<'_>, token: u64, interest: Interest) -> io::Result<()> {
        use rustix::event::epoll::{self, EventData};
        Ok(epoll::add(
            &self.0,
            fd,
            EventData::new_u64(token),
            interest.flags(),
        )?)
    }

    /// Changes what `fd` is watched for.
    pub fn modify(&self, fd: BorrowedFd<'_>, token: u64, interest: Interest) -> io::Result<()> {
        use rustix::event::epoll::{self, EventData};
        Ok(epoll::modify(
            &self.0,
            fd,
            EventData::new_u64(token),
            interest.flags(),
        )?)
    }

    /// Stops watching `fd`.
    pub fn delete(&self, fd: BorrowedFd<'_>) {
        let _ = rustix::event::epoll::delete(&self.0, fd);
    }

    /// Waits at most `timeout_ms` (-1: for ever) and puts the ready tokens into `tokens`.
    pub fn wait(&self, tokens: &mut Vec<u64>, timeout_ms: i32) -> io::Result<()> {
        use rustix::event::epoll;
        tokens.clear();
        let mut events = [epoll::Event {
            flags: epoll::EventFlags::empty(),
            data: epoll::EventData::new_u64(0),
        }; 64];
        let timeout = (timeout_ms >= 0).then(|| rustix::time::Timespec {
            tv_sec: i64::from(timeout_ms / 1000),
            tv_nsec: i64::from(timeout_ms % 1000) * 1_000_000,
        });
        let n = match epoll::wait(&self.0, &mut events, timeout.as_ref()) {
            Ok(n) => n,
            Err(rustix::io::Errno::INTR) => 0,
            Err(e) => return Err(e.into()),
        };
        tokens.extend(events[..n].iter().map(|e| e.data.u64()));
        Ok(())
    }
}

/// This thread's id.
pub fn gettid() -> u32 {
    rustix::thread::gettid().as_raw_nonzero().get() as u32
}

/// Sends `sig` to thread `tid` of this process (a helper thread kicking the vCPU thread).
/// libc: rustix has no `tgkill` (it is on its `not_implemented::yet` list).
pub fn signal_thread(tid: u32, sig: i32) -> io::Result<()> {
    let me = rustix::process::getpid().as_raw_nonzero().get();
    // SAFETY: tgkill with integer arguments.
    if unsafe { libc::syscall(libc::SYS_tgkill, me, tid as libc::pid_t, sig) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A one-shot timer that signals SIGIO to the thread that made it (the vCPU thread: a deadline
/// reaches the vCPU loop even while the guest runs without exits). libc: rustix has no POSIX
/// timers (`timer_create`; its `timerfd` cannot signal a thread). Not inherited by a forked
/// child.
#[derive(Debug)]
pub struct Timer {
    id: libc::timer_t,
}

impl Timer {
    /// A disarmed timer.
    pub fn new() -> io::Result<Timer> {
        // SAFETY: a zeroed sigevent is a valid value; the fields set make it a thread-directed
        // signal to this thread.
        let mut ev: libc::sigevent = unsafe { std::mem::zeroed() };
        ev.sigev_notify = libc::SIGEV_THREAD_ID;
        ev.sigev_signo = libc::SIGIO;
        ev.sigev_notify_thread_id = gettid() as libc::c_int;
        let mut id: libc::timer_t = std::ptr::null_mut();
        // SAFETY: valid pointers to a sigevent and a timer id.
        if unsafe { libc::timer_create(libc::CLOCK_MONOTONIC, &mut ev, &mut id) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Timer { id })
    }

    /// Fires once, `ns` nanoseconds from now (replacing an earlier arming).
    pub fn arm(&self, ns: u64) -> io::Result<()> {
        let ns = ns.max(1);
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: (ns / 1_000_000_000) as _,
                tv_nsec: (ns % 1_000_000_000) as libc::c_long,
            },
        };
        // SAFETY: a timer this value owns and a valid itimerspec.
        if unsafe { libc::timer_settime(self.id, 0, &spec, std::ptr::null_mut()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        // SAFETY: a timer this value owns.
        unsafe { libc::timer_delete(self.id) };
    }
}

/// The (pid, uid) of the process at the other end of a Unix socket (`SO_PEERCRED`).
pub fn peer_credentials(fd: BorrowedFd<'_>) -> io::Result<(u32, u32)> {
    let cred = rustix::net::sockopt::socket_peercred(fd)?;
    Ok((cred.pid.as_raw_nonzero().get() as u32, cred.uid.as_raw()))
}

/// Waits at most `timeout_ns` for `fd` to be readable (a signal interrupts it: `Interrupted`).
pub fn wait_readable(fd: BorrowedFd<'_>, timeout_ns: i64) -> io::Result<bool> {
    use rustix::event::{poll, PollFd, PollFlags};
    let mut fds = [PollFd::new(&fd, PollFlags::IN)];
    let timeout = rustix::time::Timespec {
        tv_sec: timeout_ns / 1_000_000_000,
        tv_nsec: timeout_ns % 1_000_000_000,
    };
    match poll(&mut fds, Some(&timeout)) {
        Ok(n) => Ok(n > 0),
        // A signal: the caller decides (io::ErrorKind::Interrupted).
        Err(e) => Err(e.into()),
    }
}

/// Waits at most `timeout_ns` for any of `fds` to be readable (or hung up); a signal ends the
/// wait early (`Interrupted`).
pub fn wait_any_readable(fds: &[BorrowedFd<'_>], timeout_ns: u64) -> io::Result<()> {
    use rustix::event::{poll, PollFd, PollFlags};
    let mut set: Vec<PollFd<'_>> = fds.iter().map(|fd| PollFd::new(fd, PollFlags::IN)).collect();
    let timeout = rustix::time::Timespec {
        tv_sec: (timeout_ns / 1_000_000_000) as i64,
        tv_nsec: (timeout_ns % 1_000_000_000) as i64,
    };
    poll(&mut set, Some(&timeout))?;
    Ok(())
}

/// Reads what is there (0: end of file), retrying after signals.
pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match rustix::io::read(fd, &mut *buf) {
            Err(rustix::io::Errno::INTR) => {}
            other => return Ok(other?),
        }
    }
}

// ---- files and directories ------------------------------------------------------------------

/// How [`open_at`] opens a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Open {
    /// An existing directory.
    Dir,
    /// An existing file, read-only.
    Read,
    /// An existing file, read-write.
    ReadWrite,
    /// Create it (mode 0600) or open it if it exists, read-write.
    Create,
    /// Create it (mode 0600), failing if it exists.
    Exclusive,
    /// Create it with mode 0400 (read-only once closed), failing if it exists; opened
    /// read-write for its creator to fill.
    ExclusiveReadOnly,
}

/// Opens `name` in the directory `dir`, never following a symbolic link in its last component
/// and never blocking on a FIFO: the one way the monitor opens files in the runtime directory.
pub fn open_at(dir: BorrowedFd<'_>, name: &str, how: Open) -> io::Result<OwnedFd> {
    let base = OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY;
    let flags = match how {
        Open::Dir => OFlags::RDONLY | OFlags::DIRECTORY,
        Open::Read => OFlags::RDONLY,
        Open::ReadWrite => OFlags::RDWR,
        Open::Create => OFlags::RDWR | OFlags::CREATE,
        Open::Exclusive | Open::ExclusiveReadOnly => OFlags::RDWR | OFlags::CREATE | OFlags::EXCL,
    };
    let mode = match how {
        Open::ExclusiveReadOnly => Mode::RUSR,
        _ => Mode::RUSR | Mode::WUSR,
    };
    Ok(rustix::fs::openat(dir, name, base | flags, mode)?)
}

/// A new open file description of the file `fd` refers to, read-write (through
/// `/proc/self/fd`: the one way to get one for a memfd).
pub fn reopen(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    Ok(rustix::fs::open(
        path.as_str(),
        OFlags::RDWR | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Opens a directory by path, not following a symbolic link in its last component.
pub fn open_dir(path: &std::path::Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Creates directory `name` in `dir` with mode 0700 (`Ok(false)`: it existed).
pub fn mkdir_at(dir: BorrowedFd<'_>, name: &str) -> io::Result<bool> {
    match rustix::fs::mkdirat(dir, name, Mode::RWXU) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::EXIST) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Creates directory `path` (mode 0700) and its missing parents (mode 0700 too).
pub fn mkdir_all(path: &std::path::Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

/// Removes file `name` from `dir` (never following a link: the link itself is removed).
pub fn unlink_at(dir: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    Ok(rustix::fs::unlinkat(dir, name, rustix::fs::AtFlags::empty())?)
}

/// Renames `from` to `to` in `dir` (replacing `to`).
pub fn rename_at(dir: BorrowedFd<'_>, from: &str, to: &str) -> io::Result<()> {
    Ok(rustix::fs::renameat(dir, from, dir, to)?)
}

/// Renames `from` to `to` in `dir` unless `to` exists (`EEXIST` then): `renameat2` with
/// `RENAME_NOREPLACE`, atomic against another process doing the same.
pub fn rename_at_noreplace(dir: BorrowedFd<'_>, from: &str, to: &str) -> io::Result<()> {
    Ok(rustix::fs::renameat_with(
        dir,
        from,
        dir,
        to,
        rustix::fs::RenameFlags::NOREPLACE,
    )?)
}

/// Opens a file by path for reading (a library the operator named, before confinement).
pub fn open_read(path: &std::path::Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    )?)
}

/// `fstat`.
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<Stat> {
    Ok(rustix::fs::fstat(fd)?)
}

/// `fstatat` of `name` in `dir`, not following a symbolic link (and not opening the file).
pub fn stat_at(dir: BorrowedFd<'_>, name: &str) -> io::Result<Stat> {
    Ok(rustix::fs::statat(
        dir,
        name,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )?)
}

/// Whether a stat is of a directory.
pub fn is_dir(st: &Stat) -> bool {
    rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory
}

/// Whether a stat is of a regular file.
pub fn is_file(st: &Stat) -> bool {
    rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::RegularFile
}

/// The names in directory `dir` (without `.` and `..`), read through a duplicate of it.
pub fn list_dir(dir: BorrowedFd<'_>) -> io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir)? {
        let entry = entry?;
        if let Ok(name) = entry.file_name().to_str() {
            if name != "." && name != ".." {
                names.push(name.to_string());
            }
        }
    }
    Ok(names)
}

/// Reads at most `max` bytes of `fd` from offset 0.
pub fn read_prefix(fd: BorrowedFd<'_>, max: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; max];
    let mut done = 0;
    while done < max {
        match rustix::io::pread(fd, &mut buf[done..], done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    buf.truncate(done);
    Ok(buf)
}

/// Reads `fd` from offset 0 to its end, but at most `max` bytes (a larger file gives `max`
/// bytes: the caller refuses it), sized by its length rather than `max`.
pub fn read_whole(fd: BorrowedFd<'_>, max: usize) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    read_whole_into(fd, max, &mut buf)?;
    Ok(buf)
}

/// [`read_whole`] into `buf` (emptied first; its memory reused).
pub fn read_whole_into(fd: BorrowedFd<'_>, max: usize, buf: &mut Vec<u8>) -> io::Result<()> {
    buf.clear();
    let len = (fstat(fd)?.st_size.max(0) as usize).min(max);
    buf.reserve(len + 1);
    loop {
        if buf.len() >= max {
            return Ok(());
        }
        if buf.len() == buf.capacity() {
            buf.reserve((buf.len() + 1).min(max - buf.len()));
        }
        let at = buf.len() as u64;
        let want = (buf.capacity() - buf.len()).min(max - buf.len());
        match rustix::io::pread(fd, &mut buf.spare_capacity_mut()[..want], at) {
            Ok(([], _)) => return Ok(()),
            Ok((filled, _)) => {
                let n = filled.len();
                // SAFETY: pread initialised these `n` bytes of the spare capacity.
                unsafe { buf.set_len(buf.len() + n) };
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Replaces the contents of `fd` with `data`.
pub fn rewrite(fd: BorrowedFd<'_>, data: &[u8]) -> io::Result<()> {
    let mut done = 0;
    while done < data.len() {
        match rustix::io::pwrite(fd, &data[done..], done as u64) {
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(rustix::fs::ftruncate(fd, data.len() as u64)?)
}

/// Writes `data` at `offset` of `fd`.
pub fn write_at(fd: BorrowedFd<'_>, data: &[u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < data.len() {
        match rustix::io::pwrite(fd, &data[done..], offset + done as u64) {
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Sets the length of `fd`.
pub fn set_len(fd: BorrowedFd<'_>, len: u64) -> io::Result<()> {
    Ok(rustix::fs::ftruncate(fd, len)?)
}

// ---- /proc --------------------------------------------------------------------------------

/// `/proc/PID/stat` of process `pid` (a zombie's too).
pub fn proc_stat(pid: u32) -> io::Result<Vec<u8>> {
    std::fs::read(format!("/proc/{pid}/stat"))
}

/// The kernel's count of processes its OOM killer ended (`oom_kill` in `/proc/vmstat`).
pub fn oom_kill_count() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/vmstat").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
}

/// Reads a whole file (a guest image, before the monitor is confined).
pub fn read_file(path: &std::path::Path) -> io::Result<Vec<u8>> {
    std::fs::read(path)
}

// ---- record locks ----------------------------------------------------------------------------

/// Who holds a lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockHolder {
    /// Nobody (except maybe the caller: the kernel does not report a process's own POSIX locks).
    Nobody,
    /// A process-owned (POSIX) lock of this pid.
    Process(u32),
    /// An open-file-description lock (the kernel does not say whose), or a holder whose pid is
    /// not visible from here.
    Unknown,
}

// libc for the locks below but `lock_process`: rustix's `fcntl_lock` takes a whole-file
// process-owned lock only; `F_GETLK` and the open-file-description commands on byte ranges have
// no rustix call.
fn flock(l_type: i32, start: u64, len: u64) -> libc::flock {
    // SAFETY: a zeroed flock is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = l_type as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_start = start as libc::off_t;
    fl.l_len = len as libc::off_t;
    fl
}

fn fcntl_lock(fd: BorrowedFd<'_>, cmd: i32, fl: &mut libc::flock) -> io::Result<()> {
    // SAFETY: an fcntl lock command on an open descriptor with a valid flock, which the kernel
    // reads (and for the GETLK commands writes).
    if unsafe { libc::fcntl(fd.as_raw_fd(), cmd, fl as *mut libc::flock) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Takes a process-owned (POSIX) write lock on the whole of `fd`, without waiting. Such a lock
/// vanishes when the process dies and is not inherited by fork; it is *also released when the
/// process closes any descriptor of the file*, so the holder must never open the file again.
pub fn lock_process(fd: BorrowedFd<'_>) -> io::Result<()> {
    // `F_SETLK` of a write lock on bytes 0 to the end, for ever (`l_len` 0).
    Ok(rustix::fs::fcntl_lock(
        fd,
        rustix::fs::FlockOperation::NonBlockingLockExclusive,
    )?)
}

/// Who holds a process-owned lock on any part of `fd` (`F_GETLK`).
pub fn process_lock_holder(fd: BorrowedFd<'_>) -> io::Result<LockHolder> {
    let mut fl = flock(libc::F_WRLCK, 0, 0);
    fcntl_lock(fd, libc::F_GETLK, &mut fl)?;
    Ok(match (i32::from(fl.l_type), fl.l_pid) {
        (libc::F_UNLCK, _) => LockHolder::Nobody,
        (_, p) if p > 0 => LockHolder::Process(p as u32),
        _ => LockHolder::Unknown,
    })
}

/// Takes an open-file-description write lock on bytes `[start, start+len)` of `fd`, without
/// waiting (`Ok(false)`: someone else holds part of it). Such a lock belongs to the open file
/// description: every descriptor that shares it (a forked child's copy) keeps it alive, and it
/// vanishes when the last one is closed, however the holders end.
pub fn lock_range(fd: BorrowedFd<'_>, start: u64, len: u64) -> io::Result<bool> {
    match fcntl_lock(fd, libc::F_OFD_SETLK, &mut flock(libc::F_WRLCK, start, len)) {
        Ok(()) => Ok(true),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Takes an open-file-description *read* lock on `[start, start+len)` of `fd`, without waiting
/// (`Ok(false)`: someone holds a write lock there). Any number of descriptions may hold one;
/// a write lock ([`lock_range`]) succeeds only when none does.
pub fn share_lock_range(fd: BorrowedFd<'_>, start: u64, len: u64) -> io::Result<bool> {
    match fcntl_lock(fd, libc::F_OFD_SETLK, &mut flock(libc::F_RDLCK, start, len)) {
        Ok(()) => Ok(true),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Releases this description's open-file-description locks on `[start, start+len)`.
pub fn unlock_range(fd: BorrowedFd<'_>, start: u64, len: u64) -> io::Result<()> {
    fcntl_lock(fd, libc::F_OFD_SETLK, &mut flock(libc::F_UNLCK, start, len))
}

/// An open-file-description lock of *another* description overlapping `[start, start+len)`,
/// as `(start, len)` (`F_OFD_GETLK`: which one, if several, is the kernel's choice).
pub fn other_lock_in(fd: BorrowedFd<'_>, start: u64, len: u64) -> io::Result<Option<(u64, u64)>> {
    let mut fl = flock(libc::F_WRLCK, start, len);
    fcntl_lock(fd, libc::F_OFD_GETLK, &mut fl)?;
    if i32::from(fl.l_type) == libc::F_UNLCK {
        return Ok(None);
    }
    Ok(Some((fl.l_start as u64, fl.l_len as u64)))
}

/// The CPUs this process may run on (`sched_getaffinity`).
pub fn cpu_affinity() -> io::Result<Vec<usize>> {
    let set = rustix::thread::sched_getaffinity(None)?;
    Ok((0..rustix::thread::CpuSet::MAX_CPU)
        .filter(|&c| set.is_set(c))
        .collect())
}

/// How many CPUs this process may run on (`sched_getaffinity`; no list built, for boot).
pub fn cpu_count() -> io::Result<usize> {
    Ok(rustix::thread::sched_getaffinity(None)?.count() as usize)
}

/// Runs this process's calling thread (and what it forks or spawns later) on `cpus` only
/// (`sched_setaffinity` of the caller, never of another process).
pub fn set_cpu_affinity(cpus: &[usize]) -> io::Result<()> {
    let mut set = rustix::thread::CpuSet::new();
    for &cpu in cpus {
        if cpu >= rustix::thread::CpuSet::MAX_CPU {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        set.set(cpu);
    }
    Ok(rustix::thread::sched_setaffinity(None, &set)?)
}

/// Whether `path` is on a tmpfs (`statfs`); false when it cannot be asked.
pub fn is_tmpfs(path: &std::path::Path) -> bool {
    /// `TMPFS_MAGIC` of linux/magic.h.
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    // `f_type`'s integer type differs between architectures.
    #[allow(clippy::unnecessary_cast)]
    rustix::fs::statfs(path).is_ok_and(|st| st.f_type as i64 == TMPFS_MAGIC)
}

/// Held by unit tests that fork, and by those that count leases: a child forked by one test
/// holds copies of every descriptor of the test process (another test's leases included) until
/// it exits, so a test counting locks while another test's child lives would count that
/// child's copies.
#[cfg(test)]
pub(crate) fn fork_test_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

// ---- the warm pool ------------------------------------------------------------------------------

/// Makes the kernel send `sig` to this process when its parent dies (`None`: nothing).
pub fn set_parent_death_signal(sig: Option<i32>) -> io::Result<()> {
    Ok(rustix::process::set_parent_process_death_signal(
        sig.map(signal).transpose()?,
    )?)
}

/// The parent's pid (0 when it is outside this pid namespace).
pub fn getppid() -> u32 {
    rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get() as u32)
}

/// The device and inode of this process's executable: which build of pvmctl this is.
pub fn exe_identity() -> io::Result<(u64, u64)> {
    let st = rustix::fs::stat("/proc/self/exe")?;
    // `st_dev`'s integer type differs between architectures.
    #[allow(clippy::unnecessary_cast)]
    Ok((st.st_dev as u64, st.st_ino as u64))
}

/// This process's file mode creation mask.
pub fn umask() -> u32 {
    let mask = rustix::process::umask(Mode::from_bits_truncate(0o022));
    rustix::process::umask(mask);
    mask.bits()
}

/// Sets this process's file mode creation mask.
pub fn set_umask(mask: u32) {
    rustix::process::umask(rustix::fs::Mode::from_bits_truncate(mask));
}

/// The working directory, as a descriptor (`O_PATH`) another process can `fchdir` to.
pub fn cwd_fd() -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        ".",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Makes the directory `dir` the working directory.
pub fn set_cwd(dir: BorrowedFd<'_>) -> io::Result<()> {
    Ok(rustix::process::fchdir(dir)?)
}

/// Makes `fds` this process's standard input, output and error.
pub fn set_stdio(fds: [BorrowedFd<'_>; 3]) -> io::Result<()> {
    rustix::stdio::dup2_stdin(fds[0])?;
    rustix::stdio::dup2_stdout(fds[1])?;
    rustix::stdio::dup2_stderr(fds[2])?;
    Ok(())
}

/// The connection [`kill_on_hangup`] watches (-1: none).
static HANGUP_FD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

/// The signal the kernel raises for [`kill_on_hangup`]'s connection (no other use in a
/// monitor: pause and resume are `SIGRTMIN` + 1 and + 2).
fn hangup_signal() -> i32 {
    libc::SIGRTMIN() + 3
}

extern "C" fn on_hangup_signal(_: libc::c_int) {
    let fd = HANGUP_FD.load(std::sync::atomic::Ordering::SeqCst);
    // SAFETY: `fd` is the connection `kill_on_hangup` was given, open until `no_signal_on_io`
    // (which clears HANGUP_FD first) or the end of the process; it is only polled.
    if fd >= 0 && hung_up(unsafe { BorrowedFd::borrow_raw(fd) }) {
        let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    }
}

/// Makes this process die (`SIGKILL`) as soon as `fd`, a connected socket, hangs up. The kernel
/// raises a signal for any event on it; its handler checks for the hang-up. (`F_SETSIG` of
/// SIGKILL itself would also fire for input: even for the tail of data already read, whose
/// sender's notification can come after this process read it and armed this.)
pub fn kill_on_hangup(fd: BorrowedFd<'_>) -> io::Result<()> {
    HANGUP_FD.store(fd.as_raw_fd(), std::sync::atomic::Ordering::SeqCst);
    // The handler is async-signal-safe (an atomic load, ppoll, kill). SA_RESTART: it
    // interrupts nothing that it does not end.
    sigaction(hangup_signal(), on_hangup_signal, libc::SA_RESTART)?;
    signal_on_io(fd, Some(hangup_signal()), OFlags::empty())?;
    // A hang-up before it was armed raised nothing.
    on_hangup_signal(0);
    Ok(())
}

/// Undoes [`kill_on_hangup`]: no signal on `fd`'s events any more.
pub fn no_signal_on_io(fd: BorrowedFd<'_>) -> io::Result<()> {
    HANGUP_FD.store(-1, std::sync::atomic::Ordering::SeqCst);
    Ok(rustix::fs::fcntl_setfl(fd, OFlags::empty())?)
}

/// Reads exactly `buf.len()` bytes from `fd`, retrying after signals; `Ok(false)` on end of
/// file before the first byte, `UnexpectedEof` after it.
pub fn read_exact(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<bool> {
    let mut done = 0;
    while done < buf.len() {
        match rustix::io::read(fd, &mut buf[done..]) {
            Ok(0) if done == 0 => return Ok(false),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

/// A connection on the listening socket `fd`, waiting for one (close-on-exec).
pub fn accept_blocking(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    loop {
        match rustix::net::accept_with(fd, rustix::net::SocketFlags::CLOEXEC) {
            Err(rustix::io::Errno::INTR) => {}
            other => return Ok(other?),
        }
    }
}

/// Takes a process-owned write lock on the whole of `fd`, waiting for it.
pub fn lock_process_wait(fd: BorrowedFd<'_>) -> io::Result<()> {
    loop {
        match rustix::fs::fcntl_lock(fd, rustix::fs::FlockOperation::LockExclusive) {
            Err(rustix::io::Errno::INTR) => {}
            other => return Ok(other?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn maps_lines_parse() {
        let exe =
            MapsLine::parse("00401000-00753000 r-xp 00001000 fe:00 10010625        /tmp/pvm ctl").unwrap();
        assert_eq!((exe.start, exe.end), (0x40_1000, 0x75_3000));
        assert_eq!(
            (exe.read, exe.write, exe.private, exe.path),
            (true, false, true, "/tmp/pvm ctl")
        );
        let anon = MapsLine::parse("7f9c44f39000-7f9c44f6a000 rw-p 00000000 00:00 0 ").unwrap();
        assert_eq!((anon.write, anon.private, anon.path), (true, true, ""));
        let shared =
            MapsLine::parse("7f9c44f36000-7f9c44f39000 rw-s 00000000 00:10 1039   anon_inode:kvm-vcpu:0")
                .unwrap();
        assert!(!shared.private);
        assert!(MapsLine::parse("").is_none());
        assert!(MapsLine::parse("zz-00 r-xp").is_none());
    }

    /// How a child that armed [`kill_on_hangup`] on one end of a stream pair ends when the
    /// other end first sends a byte, then (`then_close`) hangs up or (else) lets it exit.
    fn armed_child_after(then_close: bool) -> WaitStatus {
        use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
        let _forks = fork_test_lock();
        let (ours, theirs) = socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        let (ready_r, ready_w) = pipe(false).unwrap();
        let (go_r, go_w) = pipe(false).unwrap();
        // SAFETY: the child makes system calls only, then exits.
        match unsafe { fork() }.unwrap() {
            Forked::Child => {
                drop((ours, ready_r, go_w));
                if kill_on_hangup(theirs.as_fd()).is_err() || write_all(ready_w.as_fd(), b"r").is_err() {
                    exit_now(2);
                }
                // Until told to go; a hang-up kills it meanwhile.
                let mut b = [0u8; 1];
                let _ = read_exact(go_r.as_fd(), &mut b);
                exit_now(0);
            }
            Forked::Parent(child) => {
                drop(theirs);
                let mut b = [0u8; 1];
                assert!(read_exact(ready_r.as_fd(), &mut b).unwrap());
                // Input after it armed: the kernel signals the child during this send.
                write_all(ours.as_fd(), b"x").unwrap();
                if then_close {
                    drop(ours);
                } else {
                    write_all(go_w.as_fd(), b"g").unwrap();
                }
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
                loop {
                    if let Some((_, status)) = waitpid(Some(child), true).unwrap() {
                        return status;
                    }
                    if std::time::Instant::now() > deadline {
                        let _ = kill(child, libc::SIGKILL);
                        panic!("the armed child did not end");
                    }
                    yield_now();
                }
            }
        }
    }

    #[test]
    fn kill_on_hangup_ignores_input_and_kills_on_hang_up() {
        // Input is not a hang-up (a launcher's request, whose notification may come after the
        // member read it and armed this, killed warm runs now and then).
        let status = armed_child_after(false);
        assert_eq!((status.signal(), status.code()), (None, 0));
        // A hang-up kills.
        assert_eq!(armed_child_after(true).signal(), Some(libc::SIGKILL));
    }
}
