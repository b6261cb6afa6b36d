//! The monitor's seccomp-bpf allow-list: once a pVM is built, its monitor may make only these
//! system calls, with these arguments; any other kills the monitor (`SIGSYS`, reported by its
//! parent as "made a system call outside its seccomp allow-list", and by the kernel's audit log
//! with the call's number). A forked monitor inherits the filter; `no_new_privs` is set first.
//!
//! Read it against `sys.rs` (every host call the monitor makes outside KVM's ioctls), the KVM
//! ioctls of `vstate/`, and what Rust's std and glibc do underneath (allocation, locks, stdio,
//! `fork`). Each line says which code needs the call. Not on the list, among others: `execve`,
//! network sockets and `connect`, `ptrace`, `process_vm_*`, `mount`/`unshare`/`setns`, `bpf`,
//! `perf_event_open`, `kill` of a process group, executable mappings, and every ioctl but
//! KVM's.
use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition as Cond,
    SeccompRule,
};

mod search;

/// Why the filter could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// Building the BPF program failed.
    #[error("cannot build the seccomp filter: {0}")]
    Build(#[from] search::SearchError),
    /// `no_new_privs` could not be set.
    #[error("cannot set no_new_privs: {0}")]
    NoNewPrivs(#[source] std::io::Error),
    /// The kernel refused it.
    #[error("cannot install the seccomp filter: {0}")]
    Install(#[from] seccompiler::Error),
}

impl From<seccompiler::BackendError> for SeccompError {
    fn from(e: seccompiler::BackendError) -> Self {
        Self::Build(e.into())
    }
}

/// `_IOC` of Linux's asm-generic ioctl.h: the number of an ioctl.
const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
    const KVMIO: u64 = 0xAE;
    (dir << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
}
const NONE: u64 = 0;
const WRITE: u64 = 1;
const READ: u64 = 2;

/// The KVM ioctls a running monitor makes (`vstate/`, `ipc.rs`): the vCPU loop, capture and
/// restore of vCPU state for fork, creating the child's VM, vCPU and memory slots, IPC slots.
fn kvm_ioctls() -> Vec<u64> {
    use kvm_bindings::*;
    use std::mem::size_of;
    vec![
        ioc(NONE, 0x01, 0),                                         // KVM_CREATE_VM (fork)
        ioc(READ | WRITE, 0x02, size_of::<kvm_msr_list>()),         // KVM_GET_MSR_INDEX_LIST (first fork)
        ioc(NONE, 0x03, 0),                                         // KVM_CHECK_EXTENSION (first fork)
        ioc(NONE, 0x04, 0),                                         // KVM_GET_VCPU_MMAP_SIZE (fork)
        ioc(NONE, 0x41, 0),                                         // KVM_CREATE_VCPU (fork)
        ioc(WRITE, 0x46, size_of::<kvm_userspace_memory_region>()), // KVM_SET_USER_MEMORY_REGION
        ioc(NONE, 0x80, 0),                                         // KVM_RUN
        ioc(READ, 0x81, size_of::<kvm_regs>()),                     // KVM_GET_REGS
        ioc(WRITE, 0x82, size_of::<kvm_regs>()),                    // KVM_SET_REGS
        ioc(READ, 0x83, size_of::<kvm_sregs>()),                    // KVM_GET_SREGS
        ioc(WRITE, 0x84, size_of::<kvm_sregs>()),                   // KVM_SET_SREGS
        ioc(READ | WRITE, 0x88, size_of::<kvm_msrs>()),             // KVM_GET_MSRS
        ioc(WRITE, 0x89, size_of::<kvm_msrs>()),                    // KVM_SET_MSRS
        ioc(READ, 0x8c, size_of::<kvm_fpu>()),                      // KVM_GET_FPU
        ioc(WRITE, 0x8d, size_of::<kvm_fpu>()),                     // KVM_SET_FPU
        ioc(WRITE, 0x90, size_of::<kvm_cpuid2>()),                  // KVM_SET_CPUID2 (fork)
        ioc(READ, 0x9f, size_of::<kvm_vcpu_events>()),              // KVM_GET_VCPU_EVENTS
        ioc(WRITE, 0xa0, size_of::<kvm_vcpu_events>()),             // KVM_SET_VCPU_EVENTS
        ioc(READ, 0xa1, size_of::<kvm_debugregs>()),                // KVM_GET_DEBUGREGS
        ioc(WRITE, 0xa2, size_of::<kvm_debugregs>()),               // KVM_SET_DEBUGREGS
        ioc(READ, 0xa4, size_of::<kvm_xsave>()),                    // KVM_GET_XSAVE
        ioc(WRITE, 0xa5, size_of::<kvm_xsave>()),                   // KVM_SET_XSAVE
        ioc(READ, 0xa6, size_of::<kvm_xcrs>()),                     // KVM_GET_XCRS
        ioc(WRITE, 0xa7, size_of::<kvm_xcrs>()),                    // KVM_SET_XCRS
    ]
}

fn cond(arg: u8, len: Len, op: Op, value: u64) -> Result<Cond, SeccompError> {
    Ok(Cond::new(arg, len, op, value)?)
}

/// A rule: all of `conditions` hold.
fn rule(conditions: Vec<Cond>) -> Result<SeccompRule, SeccompError> {
    Ok(SeccompRule::new(conditions)?)
}

/// One rule per allowed value of argument `arg`.
fn one_of(arg: u8, len: Len, values: &[u64]) -> Result<Vec<SeccompRule>, SeccompError> {
    values
        .iter()
        .map(|&v| rule(vec![cond(arg, len.clone(), Op::Eq, v)?]))
        .collect()
}

/// Rules for `kill`: one positive pid (never 0, a group or everyone), one of `signals`.
fn kill_rules(signals: &[u64]) -> Result<Vec<SeccompRule>, SeccompError> {
    signals
        .iter()
        .map(|&sig| {
            rule(vec![
                cond(0, Len::Dword, Op::Gt, 0)?,
                cond(0, Len::Dword, Op::Le, i32::MAX as u64)?,
                cond(1, Len::Dword, Op::Eq, sig)?,
            ])
        })
        .collect()
}

/// A rule: argument `arg` has none of the bits of `mask`.
fn without_bits(arg: u8, mask: u64) -> Result<Vec<SeccompRule>, SeccompError> {
    Ok(vec![rule(vec![cond(arg, Len::Qword, Op::MaskedEq(mask), 0)?])?])
}

/// Signals a monitor sends: the guest-visible ones (a guest's `Kill`, a root passing on what
/// stopped it) and KILL.
const SENT_SIGNALS: [i32; 7] = [
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGKILL,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGTERM,
    libc::SIGCHLD,
];

/// The allow-list: system call number to the rules its arguments must meet (none: any).
fn rules() -> Result<BTreeMap<i64, Vec<SeccompRule>>, SeccompError> {
    let any = Vec::new;
    let signals: Vec<u64> = SENT_SIGNALS.iter().map(|&s| s as u64).collect();
    let fcntl_cmds = [
        libc::F_GETFD,         // std checks descriptors it closes (debug builds)
        libc::F_SETFD,         // musl's open() sets FD_CLOEXEC again after O_CLOEXEC
        libc::F_GETFL,         // rustix reads a directory's flags before listing it
        libc::F_GETLK,         // registry: who holds an entry (sys::process_lock_holder)
        libc::F_SETLK,         // registry: an entry's lock (sys::lock_process, rustix)
        libc::F_OFD_SETLK,     // ledger: leases and its mutex (sys::lock_range, unlock_range)
        libc::F_OFD_GETLK,     // ledger: recounting its leases (sys::other_lock_in)
        libc::F_SETOWN,        // control socket: SIGIO to this monitor (sys::sigio_on_input)
        libc::F_SETFL,         // control socket: O_ASYNC (sys::sigio_on_input, rustix)
        libc::F_DUPFD_CLOEXEC, // dl: second handles on the trust and library stores (try_clone)
    ]
    .map(|c| c as u64);
    let madvice = [
        libc::MADV_DONTNEED, // glibc's free() trimming
        libc::MADV_HUGEPAGE, // GuestMemory::advise_huge_pages
        libc::MADV_POPULATE_WRITE,
    ]
    .map(|a| a as u64);
    let thread = (libc::CLONE_VM
        | libc::CLONE_FS
        | libc::CLONE_FILES
        | libc::CLONE_SIGHAND
        | libc::CLONE_THREAD
        | libc::CLONE_SYSVSEM
        | libc::CLONE_SETTLS
        | libc::CLONE_PARENT_SETTID
        | libc::CLONE_CHILD_CLEARTID) as u64;
    let clone_flags = [
        // fork() (glibc): sys::fork, a pVM's fork
        (libc::CLONE_CHILD_CLEARTID | libc::CLONE_CHILD_SETTID | libc::SIGCHLD) as u64,
        // the deferred-teardown helper: sys::clone_helper
        (libc::CLONE_VM | libc::CLONE_FILES) as u64,
        // a thread (glibc's pthread_create, after clone3 answered ENOSYS): a library update's
        // helper (update.rs)
        thread,
        // the same thread made by musl's pthread_create (the lean build)
        thread | libc::CLONE_DETACHED as u64,
    ];
    let mut r: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    // KVM: the vCPU loop, fork's capture/restore/new VM, IPC memory slots. Nothing else.
    r.insert(libc::SYS_ioctl, one_of(1, Len::Dword, &kvm_ioctls())?);
    // Memory: the allocator, IPC regions (sys::map_file_shared), kvm_run of a new vCPU, guest
    // RAM advice. Never executable.
    r.insert(libc::SYS_mmap, without_bits(2, libc::PROT_EXEC as u64)?);
    r.insert(libc::SYS_mprotect, without_bits(2, libc::PROT_EXEC as u64)?);
    r.insert(libc::SYS_munmap, any()); // sys::unmap, the allocator, a dropped vCPU's kvm_run
    r.insert(libc::SYS_mremap, any()); // the allocator (realloc)
    r.insert(libc::SYS_brk, any()); // the allocator
    r.insert(libc::SYS_madvise, one_of(2, Len::Dword, &madvice)?);
    // Processes: a pVM's fork, the teardown helper, waits, signals to verified pVMs only.
    r.insert(libc::SYS_clone, one_of(0, Len::Qword, &clone_flags)?);
    // musl's fork() (the lean build): what glibc's clone above does, with no flags to filter.
    r.insert(libc::SYS_fork, any());
    r.insert(libc::SYS_set_tid_address, any()); // musl, in a forked child
                                                // glibc, in a forked child and a new thread.
    r.insert(libc::SYS_set_robust_list, any());
    // clone3's flags are in memory the filter cannot read: it is answered ENOSYS (`ANSWERS`),
    // and glibc then uses clone, filtered above.
    r.insert(libc::SYS_rseq, any()); // glibc, in a new thread
    r.insert(libc::SYS_sigaltstack, any()); // std, in a new thread (its stack-overflow guard)
    r.insert(libc::SYS_sched_getaffinity, any()); // glibc, in a new thread (read-only)

    // placement.rs: a forked child pins itself to its CPU (`--cpu-spread`); pid 0 is the caller
    // only, never another process.
    r.insert(libc::SYS_sched_setaffinity, one_of(0, Len::Dword, &[0])?);
    // std names a new thread.
    r.insert(
        libc::SYS_prctl,
        one_of(0, Len::Dword, &[libc::PR_SET_NAME as u64])?,
    );
    // abort() (glibc: tgkill; musl: tkill); the update helper kicks the vCPU thread
    // (sys::signal_thread). The signal is the second argument of tkill, the third of tgkill.
    let thread_signals = [libc::SIGABRT as u64, libc::SIGIO as u64];
    r.insert(libc::SYS_tgkill, one_of(2, Len::Dword, &thread_signals)?);
    r.insert(libc::SYS_tkill, one_of(1, Len::Dword, &thread_signals)?);
    // A library update's deadlines (sys::Timer).
    r.insert(libc::SYS_timer_create, any());
    r.insert(libc::SYS_timer_settime, any());
    r.insert(libc::SYS_timer_delete, any());
    r.insert(libc::SYS_wait4, any()); // sys::waitpid: Wait, the root's family wait
    r.insert(libc::SYS_pidfd_open, any()); // registry signals, teardown helper
    r.insert(libc::SYS_pidfd_send_signal, one_of(1, Len::Dword, &signals)?); // Registry::signal
    r.insert(libc::SYS_kill, kill_rules(&signals)?); // sys::kill: self, own children
    r.insert(libc::SYS_getpid, any());
    r.insert(libc::SYS_gettid, any());
    r.insert(libc::SYS_geteuid, any()); // rundir: owner checks
    r.insert(libc::SYS_exit, any()); // the teardown helper
    r.insert(libc::SYS_exit_group, any());
    // Signals: handlers (re-installed in a forked child), masks and sleeps (signals.rs).
    r.insert(libc::SYS_rt_sigaction, any());
    r.insert(libc::SYS_rt_sigprocmask, any());
    r.insert(libc::SYS_rt_sigsuspend, any());
    r.insert(libc::SYS_rt_sigreturn, any());
    // Waiting: IPC futexes (sys::futex_wait/wake), std's locks, liveness polls (sys::hung_up),
    // the teardown helper's wait (sys::wait_gone_raw). rustix polls with `ppoll`; no `poll`.
    r.insert(libc::SYS_futex, any());
    r.insert(libc::SYS_ppoll, any());
    r.insert(libc::SYS_sched_yield, any()); // registry and ledger: retries (sys::yield_now)
    r.insert(libc::SYS_clock_gettime, any()); // sys::monotonic_ns (when the vDSO falls back)
    r.insert(libc::SYS_getrandom, any()); // std's hash seeds
    r.insert(libc::SYS_getcwd, any()); // std's panic message (a monitor's bug, still reported)

    // Descriptors and files: the runtime directory (rundir.rs: openat relative to its verified
    // descriptor), registry entries, the ledger, named IPC objects, memfds of IPC regions, the
    // outcome pipes, /proc reads (a pVM's name, the OOM count, the kernel's lock list).
    r.insert(libc::SYS_openat, any());
    r.insert(libc::SYS_open, any()); // rustix opens paths with `open`
    r.insert(libc::SYS_close, any());
    r.insert(libc::SYS_read, any());
    r.insert(libc::SYS_write, any()); // the console, reports, outcome records
    r.insert(libc::SYS_pread64, any());
    r.insert(libc::SYS_pwrite64, any());
    r.insert(libc::SYS_lseek, any());
    r.insert(libc::SYS_fstat, any());
    r.insert(libc::SYS_newfstatat, any());
    r.insert(libc::SYS_stat, any()); // musl's stat() (the lean build)
    r.insert(libc::SYS_lstat, any()); // musl's lstat()
    r.insert(libc::SYS_statx, any());
    r.insert(libc::SYS_getdents64, any());
    r.insert(libc::SYS_mkdirat, any()); // rundir: the ipc subdirectory
    r.insert(libc::SYS_unlinkat, any()); // reaped entries, a family's named objects, library store
    r.insert(libc::SYS_renameat, any()); // library store files (libstore.rs), written then renamed
    r.insert(libc::SYS_renameat2, any());
    r.insert(libc::SYS_ftruncate, any()); // entries rewritten, memfd sizes
    r.insert(libc::SYS_memfd_create, any()); // IPC regions
    r.insert(libc::SYS_pipe2, any()); // outcome pipes, pipe liveness
    r.insert(libc::SYS_fcntl, one_of(1, Len::Dword, &fcntl_cmds)?);
    // The control socket (control.rs): a Unix socket only (a forked child makes its own),
    // listened on, its connections accepted and their peers' credentials read. No `connect`:
    // a monitor never opens a connection.
    r.insert(libc::SYS_socket, one_of(0, Len::Dword, &[libc::AF_UNIX as u64])?);
    r.insert(libc::SYS_bind, any());
    r.insert(libc::SYS_listen, any());
    r.insert(libc::SYS_accept4, any());
    // A request's passed file (sys::recv_with_fds). The channel to the family's network
    // backend (net/): requests, a forked child's own channel (a Unix socket pair) sent with
    // `SCM_RIGHTS`; connections received with theirs.
    r.insert(libc::SYS_recvmsg, any());
    r.insert(libc::SYS_sendmsg, any());
    r.insert(
        libc::SYS_socketpair,
        one_of(0, Len::Dword, &[libc::AF_UNIX as u64])?,
    );
    r.insert(
        libc::SYS_getsockopt,
        vec![rule(vec![
            cond(1, Len::Dword, Op::Eq, libc::SOL_SOCKET as u64)?,
            cond(2, Len::Dword, Op::Eq, libc::SO_PEERCRED as u64)?,
        ])?],
    );
    Ok(r)
}

/// The monitor's calls answered with an error whatever their arguments, instead of allowed or
/// killing: `clone3` (std's and glibc's threads try it first, and fall back to `clone` on
/// ENOSYS).
fn answers() -> BTreeMap<i64, SeccompAction> {
    [(libc::SYS_clone3, SeccompAction::Errno(libc::ENOSYS as u32))].into()
}

/// A compiled filter (compile before forking a process that installs it: compiling allocates).
pub struct Filter {
    program: BpfProgram,
}

/// Compiles the monitor's filter.
pub fn program() -> Result<Filter, SeccompError> {
    compile(rules()?, &answers())
}

/// Compiles `allow_list`, with `answers` for their calls, and anything else killing the
/// process, laid out as a binary search over the call numbers (`search.rs`): one filter, as
/// each one installed costs the kernel a fixed amount of work besides its length.
fn compile(
    allow_list: BTreeMap<i64, Vec<SeccompRule>>,
    answers: &BTreeMap<i64, SeccompAction>,
) -> Result<Filter, SeccompError> {
    let arch: seccompiler::TargetArch = std::env::consts::ARCH
        .try_into()
        .map_err(search::SearchError::from)?;
    Ok(Filter {
        program: search::compile(
            allow_list,
            answers,
            SeccompAction::KillProcess,
            SeccompAction::Allow,
            arch,
        )?,
    })
}

/// The network backend's allow-list (`net/backend.rs`): its epoll loop over the family's TCP
/// sockets, the monitors' channels (Unix sockets, descriptors passed both ways), the rings'
/// memory files and mappings, liveness pipes and eventfds, futex wakes, TCP connects (to
/// addresses the operator allows: the backend checks). Not on it: opening files, sockets but
/// TCP ones, `bind`, `listen` (the published ports were bound before), `execve`, `kill`,
/// `ptrace`, executable mappings, any ioctl.
fn backend_rules() -> Result<BTreeMap<i64, Vec<SeccompRule>>, SeccompError> {
    let any = Vec::new;
    let mut r: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    // Memory: the allocator, the rings' mappings (never executable).
    let prot_exec = libc::PROT_EXEC as u64;
    r.insert(libc::SYS_mmap, without_bits(2, prot_exec)?);
    r.insert(libc::SYS_mprotect, without_bits(2, prot_exec)?);
    r.insert(libc::SYS_munmap, any());
    r.insert(libc::SYS_mremap, any());
    r.insert(libc::SYS_madvise, any());
    r.insert(libc::SYS_brk, any());
    r.insert(libc::SYS_memfd_create, any()); // a connection's region (sys::memfd)
    r.insert(libc::SYS_ftruncate, any());
    // The loop: epoll, eventfds (doorbells, wakeups), liveness pipes, futex wakes of guests.
    r.insert(libc::SYS_epoll_create1, any());
    r.insert(libc::SYS_epoll_ctl, any());
    r.insert(libc::SYS_epoll_wait, any());
    r.insert(libc::SYS_epoll_pwait, any());
    r.insert(libc::SYS_eventfd2, any());
    r.insert(libc::SYS_pipe2, any());
    r.insert(libc::SYS_futex, any());
    r.insert(libc::SYS_sched_yield, any());
    r.insert(libc::SYS_clock_gettime, any());
    r.insert(libc::SYS_read, any());
    r.insert(libc::SYS_write, any()); // eventfds, stderr (tracing)
    r.insert(libc::SYS_close, any());
    r.insert(
        libc::SYS_fcntl,
        one_of(
            1,
            Len::Dword,
            // F_SETFD: musl's F_DUPFD_CLOEXEC sets FD_CLOEXEC again (the lean build)
            &[
                libc::F_DUPFD_CLOEXEC as u64,
                libc::F_GETFD as u64,
                libc::F_SETFD as u64,
            ],
        )?,
    );
    // Sockets: accepting clients, moving bytes, the monitors' channels.
    r.insert(libc::SYS_accept4, any());
    r.insert(libc::SYS_readv, any()); // sys::recv_into_runs: a socket into a ring, in place
    r.insert(libc::SYS_recvfrom, any());
    r.insert(libc::SYS_sendto, any());
    r.insert(libc::SYS_recvmsg, any());
    r.insert(libc::SYS_sendmsg, any());
    r.insert(libc::SYS_shutdown, any());
    // Connections the operator allows (`--connect`): TCP sockets only, and how they ended.
    r.insert(
        libc::SYS_socket,
        vec![
            rule(vec![
                cond(0, Len::Dword, Op::Eq, libc::AF_INET as u64)?,
                cond(1, Len::Dword, Op::MaskedEq(0xf), libc::SOCK_STREAM as u64)?,
            ])?,
            rule(vec![
                cond(0, Len::Dword, Op::Eq, libc::AF_INET6 as u64)?,
                cond(1, Len::Dword, Op::MaskedEq(0xf), libc::SOCK_STREAM as u64)?,
            ])?,
        ],
    );
    r.insert(libc::SYS_connect, any());
    r.insert(
        libc::SYS_getsockopt,
        vec![rule(vec![
            cond(1, Len::Dword, Op::Eq, libc::SOL_SOCKET as u64)?,
            cond(2, Len::Dword, Op::Eq, libc::SO_ERROR as u64)?,
        ])?],
    );
    r.insert(
        libc::SYS_setsockopt,
        vec![rule(vec![
            cond(1, Len::Dword, Op::Eq, libc::IPPROTO_TCP as u64)?,
            cond(2, Len::Dword, Op::Eq, libc::TCP_NODELAY as u64)?,
        ])?],
    );
    // The end, signals std may handle, and what std's panic report reads.
    r.insert(libc::SYS_exit, any());
    r.insert(libc::SYS_exit_group, any());
    r.insert(libc::SYS_rt_sigreturn, any());
    r.insert(libc::SYS_rt_sigprocmask, any());
    r.insert(libc::SYS_sigaltstack, any());
    r.insert(libc::SYS_getpid, any());
    r.insert(libc::SYS_gettid, any());
    r.insert(libc::SYS_getrandom, any());
    r.insert(libc::SYS_getcwd, any());
    Ok(r)
}

/// The network backend's filter (it starts no thread: `clone3` kills it, as anything else
/// off its list).
pub fn backend_program() -> Result<Filter, SeccompError> {
    compile(backend_rules()?, &BTreeMap::new())
}

/// Confines this process: `no_new_privs`, then the filter. Threads started later (a library
/// update's helper) and forked children inherit it.
pub fn install(filter: &Filter) -> Result<(), SeccompError> {
    crate::sys::set_no_new_privs().map_err(SeccompError::NoNewPrivs)?;
    seccompiler::apply_filter(&filter.program)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys;

    /// A raw system call with integer arguments (pointers in them are null or point to a static
    /// string): what the filter sees, without any wrapper in the way.
    fn raw(nr: i64, a: [i64; 6]) -> i64 {
        // SAFETY: the callers below pass only integers, null, or a static C string.
        unsafe { libc::syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]) }
    }

    /// Runs `body` in a forked child under the filter; returns how the child ended.
    fn confined(body: fn()) -> sys::WaitStatus {
        confined_by(program().unwrap(), body)
    }

    /// Runs `body` in a forked child under `program`.
    fn confined_by(program: Filter, body: fn()) -> sys::WaitStatus {
        let _forks = sys::fork_test_lock();
        // SAFETY: the child makes raw system calls only (no allocation, no locks) and exits.
        match unsafe { sys::fork() }.unwrap() {
            sys::Forked::Child => {
                if install(&program).is_err() {
                    sys::exit_now(99);
                }
                body();
                sys::exit_now(0);
            }
            sys::Forked::Parent(child) => sys::waitpid(Some(child), false).unwrap().unwrap().1,
        }
    }

    #[test]
    fn the_lists_laid_out_as_a_search_answer_as_seccompilers_chain() {
        let lists = [
            (rules(), answers(), "monitor"),
            (backend_rules(), BTreeMap::new(), "network backend"),
        ];
        for (rules, answers, what) in lists {
            let longest = search::tests::same_answers(
                rules.unwrap(),
                &answers,
                SeccompAction::KillProcess,
                SeccompAction::Allow,
            );
            // A refused call is found in a handful of steps, not after every allowed one.
            assert!(longest <= 24, "{what}: {longest} instructions");
        }
    }

    #[test]
    fn clone3_is_answered_enosys_for_the_monitor_and_kills_the_backend() {
        // The monitor's threads fall back to clone; the backend makes none.
        let monitor = confined(|| {
            let r = raw(libc::SYS_clone3, [0; 6]);
            let errno = std::io::Error::last_os_error().raw_os_error();
            if r != -1 || errno != Some(libc::ENOSYS) {
                sys::exit_now(1);
            }
        });
        assert_eq!((monitor.signal(), monitor.code()), (None, 0));
        let backend = confined_by(backend_program().unwrap(), || {
            raw(libc::SYS_clone3, [0; 6]);
        });
        assert_eq!(backend.signal(), Some(libc::SIGSYS));
    }

    #[test]
    fn calls_on_the_list_work() {
        let ok = confined(|| {
            let mut fds = [0i32; 2];
            let fds_at = fds.as_mut_ptr() as i64;
            if raw(libc::SYS_pipe2, [fds_at, libc::O_CLOEXEC as i64, 0, 0, 0, 0]) != 0
                || raw(libc::SYS_getpid, [0; 6]) <= 0
                || raw(
                    libc::SYS_kill,
                    [raw(libc::SYS_getpid, [0; 6]), libc::SIGCHLD as i64, 0, 0, 0, 0],
                ) != 0
            {
                sys::exit_now(1);
            }
        });
        assert_eq!((ok.signal(), ok.code()), (None, 0));
    }

    #[test]
    fn calls_off_the_list_kill_the_monitor() {
        let cases: [(&str, fn()); 9] = [
            ("socket", || {
                raw(
                    libc::SYS_socket,
                    [libc::AF_INET as i64, libc::SOCK_STREAM as i64, 0, 0, 0, 0],
                );
            }),
            ("execve", || {
                raw(libc::SYS_execve, [c"/bin/sh".as_ptr() as i64, 0, 0, 0, 0, 0]);
            }),
            ("ptrace", || {
                raw(libc::SYS_ptrace, [libc::PTRACE_TRACEME as i64, 0, 0, 0, 0, 0]);
            }),
            // Arguments filtered: an ioctl that is not KVM's, an executable mapping, signals to
            // a process group or everyone, a signal a monitor never sends, a prctl. (Harmless if
            // the filter let them through: no such group; CHLD is ignored.)
            ("ioctl TIOCSTI", || {
                raw(libc::SYS_ioctl, [0, libc::TIOCSTI as i64, 0, 0, 0, 0]);
            }),
            ("mmap PROT_EXEC", || {
                let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as i64;
                raw(
                    libc::SYS_mmap,
                    [0, 4096, (libc::PROT_READ | libc::PROT_EXEC) as i64, flags, -1, 0],
                );
            }),
            ("kill of a group", || {
                raw(libc::SYS_kill, [-999_999, libc::SIGCHLD as i64, 0, 0, 0, 0]);
            }),
            ("kill 0", || {
                raw(libc::SYS_kill, [0, libc::SIGCHLD as i64, 0, 0, 0, 0]);
            }),
            ("prctl", || {
                raw(libc::SYS_prctl, [libc::PR_SET_DUMPABLE as i64, 0, 0, 0, 0, 0]);
            }),
            ("connect", || {
                raw(libc::SYS_connect, [0, 0, 0, 0, 0, 0]);
            }),
        ];
        for (what, body) in cases {
            assert_eq!(
                confined(body).signal(),
                Some(libc::SIGSYS),
                "{what} was not refused"
            );
        }
        let stop = confined(|| {
            raw(
                libc::SYS_kill,
                [raw(libc::SYS_getpid, [0; 6]), libc::SIGSTOP as i64, 0, 0, 0, 0],
            );
        });
        assert_eq!(stop.signal(), Some(libc::SIGSYS), "SIGSTOP was not refused");
    }

    #[test]
    fn the_network_backend_moves_bytes_and_nothing_else() {
        let ok = confined_by(backend_program().unwrap(), || {
            let mut fds = [0i32; 2];
            let fds_at = fds.as_mut_ptr() as i64;
            if raw(libc::SYS_pipe2, [fds_at, libc::O_CLOEXEC as i64, 0, 0, 0, 0]) != 0
                || raw(libc::SYS_eventfd2, [0, libc::EFD_CLOEXEC as i64, 0, 0, 0, 0]) < 0
                || raw(
                    libc::SYS_epoll_create1,
                    [libc::EPOLL_CLOEXEC as i64, 0, 0, 0, 0, 0],
                ) < 0
            {
                sys::exit_now(1);
            }
        });
        assert_eq!((ok.signal(), ok.code()), (None, 0));
        let cases: [(&str, fn()); 6] = [
            ("socket AF_UNIX", || {
                raw(
                    libc::SYS_socket,
                    [libc::AF_UNIX as i64, libc::SOCK_STREAM as i64, 0, 0, 0, 0],
                );
            }),
            ("socket SOCK_RAW", || {
                raw(
                    libc::SYS_socket,
                    [libc::AF_INET as i64, libc::SOCK_RAW as i64, 0, 0, 0, 0],
                );
            }),
            ("openat", || {
                raw(
                    libc::SYS_openat,
                    [libc::AT_FDCWD as i64, c"/etc/passwd".as_ptr() as i64, 0, 0, 0, 0],
                );
            }),
            ("execve", || {
                raw(libc::SYS_execve, [c"/bin/sh".as_ptr() as i64, 0, 0, 0, 0, 0]);
            }),
            ("kill", || {
                raw(libc::SYS_kill, [1, 0, 0, 0, 0, 0]);
            }),
            ("setsockopt SO_REUSEPORT", || {
                raw(
                    libc::SYS_setsockopt,
                    [0, libc::SOL_SOCKET as i64, libc::SO_REUSEPORT as i64, 0, 0, 0],
                );
            }),
        ];
        for (what, body) in cases {
            assert_eq!(
                confined_by(backend_program().unwrap(), body).signal(),
                Some(libc::SIGSYS),
                "{what} was not refused"
            );
        }
    }
}
