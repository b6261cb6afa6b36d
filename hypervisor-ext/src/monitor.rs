//! The monitor: builds a pVM from an image and runs its vCPU loop.
use std::time::{Duration, Instant};

use kvm_bindings::kvm_vcpu_events;
use std::os::fd::RawFd;
use std::path::PathBuf;

use kvm_bindings::CpuId;
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use pvm_abi::{
    errno, layout, wait_kind, BootInfo, Hypercall, WaitArgs, ABI_VERSION, BOOT_MAGIC, WAIT_NOHANG,
};

use crate::arch::{self, PageTables, Perm};
use crate::family::{describe_record, Collected, Family, FamilyCounter, FamilyError, Ids, Limits};
use crate::hypercall;
use crate::ipc::Ipc;
use crate::loader::{self, Image, LoadError};
use crate::outcome::{Crash, Exception, Outcome};
use crate::registry::{Entry, HostCounter, Registry, RegistryError, State};
use crate::signals;
use crate::vstate::memory::{Access, GuestMemory, MemoryError};
use crate::vstate::vcpu::{self, CaptureSetup, EntryState};
use crate::vstate::{self, vm, KvmError};

/// Bench record kind: parent's pause in fork (fork hypercall to resuming the guest).
pub const BENCH_PARENT_PAUSE: u64 = 1;
/// Bench record kind: child ready (parent's fork hypercall to the child's first hypercall).
pub const BENCH_CHILD_READY: u64 = 2;

/// Guest RAM when `--mem` is not given.
pub const DEFAULT_MEM_SIZE: u64 = 64 << 20;

/// Errors building or running a pVM (the monitor's failures, not the guest's).
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    /// KVM is unavailable or refused an operation.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// The image cannot be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Guest memory could not be set up.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Machine setup failed.
    #[error(transparent)]
    Arch(#[from] arch::ArchError),
    /// The arguments do not fit in the boot block.
    #[error("arguments too long: {len} bytes, at most {max} fit")]
    ArgsTooLong {
        /// Bytes needed.
        len: usize,
        /// Bytes available.
        max: usize,
    },
    /// The guest memory size is unusable.
    #[error(transparent)]
    MemSize(#[from] MemSizeError),
    /// KVM_RUN failed.
    #[error("KVM_RUN failed: {0}")]
    Run(kvm_ioctls::Error),
    /// The registry cannot be used.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// Family bookkeeping failed.
    #[error(transparent)]
    Family(#[from] FamilyError),
    /// The host-wide pVM limit is reached.
    #[error("the host runs {0} pVMs already, the limit (--max-pvms)")]
    HostLimit(u32),
    /// The IPC regions could not be registered in a forked child's VM.
    #[error("cannot register the IPC regions in the new VM (errno {})", -.0)]
    Ipc(i64),
    /// KVM reported an exit the monitor does not handle.
    #[error("unexpected vCPU exit: {0}")]
    UnexpectedExit(String),
}

/// A `--mem` value that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MemSizeError {
    /// Not a number with an optional K/M/G suffix.
    #[error("invalid memory size {0:?}: use a number of bytes with an optional K, M or G suffix, e.g. 64M")]
    Syntax(String),
    /// Too small for the reserved area, an image and the stack.
    #[error("memory size {size} is too small: a pVM needs at least {min} MiB")]
    TooSmall {
        /// The size asked for.
        size: u64,
        /// Minimum in MiB.
        min: u64,
    },
    /// Larger than pvm supports or than the host has.
    #[error(
        "memory size {size} is too large: at most {max} MiB (the smaller of pvm's limit and this host's RAM)"
    )]
    TooLarge {
        /// The size asked for.
        size: u64,
        /// Maximum in MiB.
        max: u64,
    },
    /// Not a whole number of 2 MiB pages.
    #[error("memory size {0} is not a multiple of 2 MiB")]
    Unaligned(u64),
}

/// Parses a memory size such as `64M`, `1G`, `4096K` or `8388608`, and checks pvm can use it.
pub fn parse_mem_size(text: &str) -> Result<u64, MemSizeError> {
    let syntax = || MemSizeError::Syntax(text.to_string());
    let t = text.trim();
    let (digits, shift) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 10),
        Some((i, 'm' | 'M')) => (&t[..i], 20),
        Some((i, 'g' | 'G')) => (&t[..i], 30),
        _ => (t, 0),
    };
    let n: u64 = digits.parse().map_err(|_| syntax())?;
    let size = n.checked_mul(1 << shift).ok_or_else(syntax)?;
    check_mem_size(size)?;
    Ok(size)
}

fn host_ram() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    if pages <= 0 || page <= 0 {
        return u64::MAX;
    }
    (pages as u64).saturating_mul(page as u64)
}

/// Checks that `size` bytes of guest RAM are usable.
pub fn check_mem_size(size: u64) -> Result<(), MemSizeError> {
    if size < layout::MIN_MEM_SIZE {
        return Err(MemSizeError::TooSmall {
            size,
            min: layout::MIN_MEM_SIZE >> 20,
        });
    }
    let max = layout::MAX_MEM_SIZE.min(host_ram());
    if size > max {
        return Err(MemSizeError::TooLarge { size, max: max >> 20 });
    }
    if !size.is_multiple_of(layout::LARGE_PAGE_SIZE) {
        return Err(MemSizeError::Unaligned(size));
    }
    Ok(())
}

/// What to run.
#[derive(Clone, Debug)]
pub struct MonitorConfig {
    /// Guest RAM in bytes.
    pub mem_size: u64,
    /// Arguments: argv[0] (the image or pVM name) and the app's arguments.
    pub args: Vec<String>,
    /// The runtime directory for the registry.
    pub run_dir: PathBuf,
    /// Limits on pVM counts.
    pub limits: Limits,
    /// Where to write fork timing records for `pvmctl bench fork`, if anywhere.
    pub bench_fd: Option<RawFd>,
}

/// Boot timestamps (a boot-timer in the Firecracker sense).
#[derive(Clone, Copy, Debug)]
pub struct BootTimes {
    /// Just before KVM_CREATE_VM.
    pub create_vm: Instant,
    /// When the guest's first hypercall reached the monitor.
    pub first_hypercall: Option<Instant>,
}

impl BootTimes {
    /// KVM_CREATE_VM to the guest's first hypercall, once it happened.
    pub fn to_first_hypercall(&self) -> Option<Duration> {
        self.first_hypercall.map(|t| t - self.create_vm)
    }
}

/// One pVM: its KVM VM, vCPU and guest memory, and its place in its family. Fields drop in
/// order: vCPU and VM before memory.
pub struct Monitor {
    pub(crate) vcpu: VcpuFd,
    pub(crate) vm: VmFd,
    pub(crate) mem: GuestMemory,
    pub(crate) kvm: Kvm,
    pub(crate) cpuid: CpuId,
    /// What capturing the vCPU for a fork needs, found at the first fork.
    pub(crate) capture_setup: Option<CaptureSetup>,
    pub(crate) family: Family,
    pub(crate) ipc: Ipc,
    /// Signals the guest handles, one bit per number.
    pub(crate) handled_signals: u64,
    pub(crate) bench_fd: Option<RawFd>,
    /// Set in a forked child until its first hypercall: when the parent's fork hypercall came.
    pub(crate) fork_started_ns: Option<u64>,
    times: BootTimes,
}

/// What the vCPU loop must do after signals arrived.
pub(crate) enum Attention {
    /// Nothing (or only a pause, now over).
    None,
    /// A signal was given to the guest: a blocking hypercall returns `EINTR`.
    Guest,
    /// A signal ends the pVM.
    End(Outcome),
}

/// CLOCK_MONOTONIC in nanoseconds (comparable between the processes of a family).
pub fn monotonic_ns() -> u64 {
    // SAFETY: clock_gettime writes into the timespec.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: as above, with a valid clock id.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Monitor {
    /// Builds the root pVM of a new family for `image`, ready to run.
    pub fn new(image: &Image, config: &MonitorConfig) -> Result<Monitor, MonitorError> {
        // One malloc arena: the CPUID thread would otherwise get its own, whose pages every
        // forked child copies (glibc resets arena locks in the child after fork).
        // SAFETY: mallopt has no memory-safety preconditions.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
        check_mem_size(config.mem_size)?;
        image.check_fits(config.mem_size)?;
        let kvm = vstate::open_kvm()?;
        let registry = Registry::open(&config.run_dir)?;
        let host = registry.host_counter()?;
        if !host.try_acquire(config.limits.per_host, &registry) {
            return Err(MonitorError::HostLimit(config.limits.per_host));
        }
        let built = Self::build(image, config, kvm, registry, host);
        if built.is_err() {
            host.release();
        }
        built
    }

    fn build(
        image: &Image,
        config: &MonitorConfig,
        kvm: Kvm,
        registry: Registry,
        host: HostCounter,
    ) -> Result<Monitor, MonitorError> {
        let id = std::process::id();
        let ids = Ids {
            id,
            parent: 0,
            family: id,
        };
        let mem = GuestMemory::new(config.mem_size)?;
        // Huge pages for the heap, away from the chunks touched at boot (reserved area, image, stack).
        mem.advise_huge_pages(image.end(), loader::image_limit(config.mem_size));
        let create_vm = Instant::now();
        // The supported CPUID comes from a second thread while this one builds the VM; the
        // thread is joined before the monitor runs (and long before any fork).
        let (cpuid, built) = std::thread::scope(|s| {
            let cpuid = s.spawn(|| vcpu::supported_cpuid(&kvm));
            let built = Self::build_vm(&kvm, &mem, image, &config.args, ids);
            (
                cpuid
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                built,
            )
        });
        let (vm, vcpu, cr3) = built?;
        let cpuid = cpuid?;
        let entry = EntryState {
            rip: image.entry,
            rsp: mem.size(),
            rdi: layout::BOOT_INFO_ADDR,
            cr3,
        };
        vcpu::setup_vcpu(&vcpu, &cpuid, &entry)?;
        let entry = registry.register(Entry {
            id,
            parent: 0,
            family: id,
            name: config.args.first().cloned().unwrap_or_default(),
            image: image
                .path
                .canonicalize()
                .unwrap_or_else(|_| image.path.clone())
                .display()
                .to_string(),
            mem_size: config.mem_size,
            started_ms: 0,
            state: State::Running,
            exit_status: None,
            outcome: None,
        })?;
        raise_fd_limit();
        // The root collects the family's orphans, as init would.
        // SAFETY: prctl with an integer argument.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        let family = Family {
            ids,
            limits: config.limits,
            counter: FamilyCounter::new()?,
            registry,
            host,
            entry: Some(entry),
            children: Vec::new(),
            to_parent: None,
        };
        Ok(Monitor {
            vcpu,
            vm,
            mem,
            kvm,
            cpuid,
            capture_setup: None,
            family,
            ipc: Ipc::default(),
            handled_signals: 0,
            bench_fd: config.bench_fd,
            fork_started_ns: None,
            times: BootTimes {
                create_vm,
                first_hypercall: None,
            },
        })
    }

    /// Creates the VM with its memory slot and the vCPU, and fills guest memory (image, page
    /// tables, descriptor tables, boot info); returns them and the page-table root.
    fn build_vm(
        kvm: &Kvm,
        mem: &GuestMemory,
        image: &Image,
        args: &[String],
        ids: Ids,
    ) -> Result<(VmFd, VcpuFd, u64), MonitorError> {
        let vm = vm::create_vm(kvm, mem)?;
        let vcpu = vcpu::create_vcpu(&vm)?;
        // The pages every pVM touches at boot: descriptor tables, boot block and page tables,
        // the image, the top of the stack.
        mem.populate(layout::RESERVED_START, layout::STATUS_ADDR + layout::PAGE_SIZE);
        mem.populate(layout::BOOT_INFO_ADDR, layout::BOOT_INFO_ADDR + layout::PAGE_SIZE);
        mem.populate(
            layout::PAGE_TABLES_ADDR,
            layout::PAGE_TABLES_ADDR + 8 * layout::PAGE_SIZE,
        );
        mem.populate(layout::IMAGE_BASE, image.end());
        mem.populate(mem.size() - 4 * layout::PAGE_SIZE, mem.size());
        image.load(mem)?;
        let cr3 = build_address_space(mem, image)?;
        arch::write_descriptor_tables(mem)?;
        write_boot_info(mem, image, args, ids)?;
        Ok((vm, vcpu, cr3))
    }

    /// Boot timestamps.
    pub fn boot_times(&self) -> BootTimes {
        self.times
    }

    /// This pVM's ids.
    pub fn ids(&self) -> Ids {
        self.family.ids
    }

    /// Runs the pVM until it exits, crashes or a stop signal arrives; records the end in the
    /// registry and tells the parent pVM (if any).
    pub fn run(&mut self) -> Result<Outcome, MonitorError> {
        signals::arm_kick(&mut self.vcpu);
        let outcome = self.run_loop();
        signals::disarm_kick();
        let outcome = outcome?;
        self.family.report_outcome(&outcome);
        if let Some(entry) = &mut self.family.entry {
            let _ = entry.set_exited(outcome.exit_status(), outcome.to_string());
        }
        Ok(outcome)
    }

    /// For a family's root, after its own end: waits until every pVM of the family has ended,
    /// forwarding `forward` (the signal that stopped the root, if any) to them first. Returns
    /// what became of the pVMs nobody waited for (orphans, and children the root left).
    pub fn wait_for_family(&mut self, forward: Option<i32>) -> Vec<(u32, String)> {
        if let Some(sig) = forward {
            self.signal_family(sig);
        }
        let mut reports = Vec::new();
        loop {
            let mut status = 0;
            // SAFETY: waitpid writes the status into a local.
            let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
            if pid < 0 {
                if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                    let mask = signals::take();
                    for sig in signals::GUEST_SIGNALS.into_iter().filter(|&s| s != libc::SIGCHLD) {
                        if mask & (1 << sig) != 0 {
                            self.signal_family(sig);
                        }
                    }
                    continue;
                }
                break; // ECHILD: the family is gone.
            }
            match self.family.collect(pid as u32, status) {
                Collected::Child(id, record) => reports.push((id, describe_record(&record))),
                Collected::Orphan(id, text) => reports.push((id, text)),
                Collected::Other => {}
            }
        }
        reports
    }

    fn signal_family(&self, sig: i32) {
        let me = self.family.ids.id;
        for e in self.family.registry.list().unwrap_or_default() {
            if e.family == self.family.ids.family && e.id != me {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(e.id as i32, sig) };
            }
        }
    }

    /// Removes this pVM's registry entry but leaves the family's named objects (a root that
    /// ends while its family lives on).
    pub fn unregister_root_only(&mut self) {
        if self.family.entry.take().is_some() {
            self.family.registry.remove(self.family.ids.id);
            self.family.host.release();
        }
    }

    /// Removes this pVM's registry entry (the root, when its family is gone).
    pub fn unregister(&mut self) {
        self.unregister_root_only();
        // The family's named queues and shared memory end with it.
        if self.family.ids.parent == 0 {
            let suffix = format!("@{}", self.family.ids.family);
            let dir = self.family.registry.dir().join("ipc");
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if entry.file_name().to_str().is_some_and(|n| n.ends_with(&suffix)) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }

    fn run_loop(&mut self) -> Result<Outcome, MonitorError> {
        loop {
            // Clear the kick before looking at the signals, never after: a signal that comes
            // later sets it again and KVM_RUN returns at once; one handled here (often while the
            // monitor slept in a hypercall) costs no extra trip through KVM_RUN.
            self.vcpu.set_kvm_immediate_exit(0);
            if let Attention::End(outcome) = self.attend() {
                return Ok(outcome);
            }
            let call = match self.vcpu.run() {
                Ok(VcpuExit::MmioWrite(addr, data)) => hypercall::decode(addr, data),
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    data.fill(0xff);
                    Err(Crash::BadHypercall {
                        addr,
                        reason: "hypercalls are stores, not loads",
                    })
                }
                Ok(VcpuExit::Shutdown) => return Ok(Outcome::Crashed(self.triple_fault()?)),
                Ok(VcpuExit::InternalError) => {
                    let what = self.internal_error();
                    return Ok(Outcome::Crashed(Crash::Internal { what }));
                }
                Ok(VcpuExit::FailEntry(reason, _)) => {
                    let what = format!("VM entry failed (hardware reason {reason:#x})");
                    return Ok(Outcome::Crashed(Crash::Internal { what }));
                }
                Ok(VcpuExit::Intr) => continue,
                Ok(other) => return Err(MonitorError::UnexpectedExit(format!("{other:?}"))),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
                Err(e) => return Err(MonitorError::Run(e)),
            };
            if self.times.first_hypercall.is_none() {
                self.times.first_hypercall = Some(Instant::now());
            }
            if let Some(t0) = self.fork_started_ns.take() {
                self.bench_record(BENCH_CHILD_READY, t0, monotonic_ns());
            }
            let call = match call {
                Ok(call) => call,
                Err(crash) => return Ok(Outcome::Crashed(crash)),
            };
            tracing::trace!(?call, "hypercall");
            let result = match call.nr {
                Hypercall::Write => hypercall::write(&self.mem, call.arg).map(|()| None),
                Hypercall::Exit => {
                    hypercall::exit(&self.mem, call.arg).map(|code| Some(Outcome::Exited(code)))
                }
                Hypercall::Exception => self
                    .exception(call.arg)
                    .map(|e| Some(Outcome::Crashed(Crash::Exception(e)))),
                Hypercall::Fork => self.fork(call.arg).map(|()| None),
                Hypercall::Wait => self.wait(call.arg),
                Hypercall::Clock => hypercall::clock(&self.mem, call.arg, monotonic_ns()).map(|()| None),
                Hypercall::Pause => Ok(self.pause_hypercall()),
                Hypercall::PipeCreate => self.pipe_create(call.arg).map(|()| None),
                Hypercall::IpcWait => self.ipc_wait(call.arg),
                // Fire-and-forget calls: a bad handle is the guest's own problem, nothing to report.
                Hypercall::IpcNotify => {
                    self.ipc.notify(call.arg);
                    Ok(None)
                }
                Hypercall::IpcClose => {
                    self.ipc.close(&self.vm, call.arg);
                    Ok(None)
                }
                Hypercall::SigAction => self.sig_action(call.arg).map(|()| None),
                Hypercall::Kill => self.kill(call.arg).map(|()| None),
                Hypercall::MqOpen => self.open_named(call.arg, Hypercall::MqOpen).map(|()| None),
                Hypercall::ShmOpen => self.open_named(call.arg, Hypercall::ShmOpen).map(|()| None),
                Hypercall::MqWait => self.mq_wait(call.arg),
                Hypercall::MqWake => {
                    self.ipc.queue_wake(call.arg >> 1, call.arg & 1);
                    Ok(None)
                }
            };
            match result {
                Ok(None) => {}
                Ok(Some(outcome)) => return Ok(outcome),
                Err(crash) => return Ok(Outcome::Crashed(crash)),
            }
        }
    }

    /// `pvmctl pause`: the vCPU stays out of the guest until `pvmctl resume` (or a signal).
    fn pause(&mut self) {
        if let Some(entry) = &mut self.family.entry {
            let _ = entry.set_state(State::Paused);
        }
        signals::sleep_until(|| !signals::pause_requested() || signals::attention_without_pause());
        if let Some(entry) = &mut self.family.entry {
            let _ = entry.set_state(State::Running);
        }
    }

    /// Acts on the signals and pause requests that arrived: ends the pVM (a signal whose
    /// default action ends it), gives handled signals to the guest, or pauses.
    pub(crate) fn attend(&mut self) -> Attention {
        let mut delivered = false;
        loop {
            let mask = signals::take();
            if mask != 0 {
                tracing::debug!(
                    mask = format_args!("{mask:#x}"),
                    handled = format_args!("{:#x}", self.handled_signals),
                    "signals"
                );
            }
            let mut guest = 0u64;
            // Only the bits set (most calls, one per exit, see none).
            let mut bits = mask;
            while bits != 0 {
                let sig = bits.trailing_zeros() as i32;
                bits &= bits - 1;
                if self.handled_signals & (1 << sig) != 0 {
                    guest |= 1 << sig;
                } else if sig != libc::SIGCHLD {
                    return Attention::End(Outcome::Signaled(sig));
                }
            }
            if guest != 0 {
                self.deliver_to_guest(guest);
                delivered = true;
            }
            if signals::pause_requested() {
                self.pause();
                continue;
            }
            return if delivered {
                Attention::Guest
            } else {
                Attention::None
            };
        }
    }

    /// [`Hypercall::Pause`]: sleeps until a signal; returns the end of the pVM, if it is one.
    fn pause_hypercall(&mut self) -> Option<Outcome> {
        loop {
            if self.guest_signals_pending() {
                tracing::debug!("pause: guest has pending signals");
                return None;
            }
            tracing::debug!("pause: sleeping");
            signals::sleep_until(signals::attention);
            match self.attend() {
                Attention::End(outcome) => return Some(outcome),
                Attention::Guest => return None,
                Attention::None => {}
            }
        }
    }

    /// [`Hypercall::Wait`]: blocks in `waitpid` (a signal interrupts it: one the guest handles
    /// makes it return `EINTR`, one that ends the pVM ends it).
    fn wait(&mut self, arg: u64) -> Result<Option<Outcome>, Crash> {
        let bad = || Crash::BadHypercall {
            addr: Hypercall::Wait.address(),
            reason: "argument struct outside guest memory",
        };
        let mut args: WaitArgs = self.mem.read_obj(arg, Access::Guest).map_err(|_| bad())?;
        let nohang = args.flags & WAIT_NOHANG != 0;
        let target = args.id;
        args.kind = wait_kind::NONE;
        args.result = 0;
        loop {
            let known = if target == 0 {
                !self.family.children.is_empty()
            } else {
                self.family.has_child(target as u32)
            };
            if !known || target > i32::MAX as u64 {
                args.result = -errno::ECHILD;
                break;
            }
            if !nohang && self.guest_signals_pending() {
                args.result = -errno::EINTR;
                break;
            }
            let pid = if target == 0 { -1 } else { target as i32 };
            let mut status = 0;
            // SAFETY: waitpid writes the status into a local.
            let r = unsafe { libc::waitpid(pid, &mut status, if nohang { libc::WNOHANG } else { 0 }) };
            if r == 0 {
                break;
            }
            if r < 0 {
                if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                    args.result = -errno::ECHILD;
                    break;
                }
                match self.attend() {
                    Attention::End(outcome) => return Ok(Some(outcome)),
                    Attention::Guest => {
                        args.result = -errno::EINTR;
                        break;
                    }
                    Attention::None => continue,
                }
            }
            match self.family.collect(r as u32, status) {
                Collected::Child(id, record) => {
                    args.child = u64::from(id);
                    args.kind = record.kind;
                    args.code = record.code;
                    args.fault_addr = record.fault_addr;
                    args.rip = record.rip;
                    break;
                }
                Collected::Orphan(id, text) => {
                    crate::outcome::report_line(format_args!("pvm {id} (orphan) {text}"))
                }
                Collected::Other => {}
            }
        }
        self.mem.write_obj(arg, &args, Access::Guest).map_err(|_| bad())?;
        Ok(None)
    }

    /// Writes a timing record for `pvmctl bench fork`.
    pub(crate) fn bench_record(&self, kind: u64, t0: u64, t1: u64) {
        if let Some(fd) = self.bench_fd {
            let mut rec = [0u8; 32];
            rec[0..8].copy_from_slice(&kind.to_le_bytes());
            rec[8..16].copy_from_slice(&u64::from(self.family.ids.id).to_le_bytes());
            rec[16..24].copy_from_slice(&t0.to_le_bytes());
            rec[24..32].copy_from_slice(&t1.to_le_bytes());
            // SAFETY: writes a local buffer to an fd the bench passed us; one write of 32 bytes
            // to a pipe is atomic, so records of a family never mix.
            unsafe { libc::write(fd, rec.as_ptr().cast(), rec.len()) };
        }
    }

    fn in_stack_guard(&self, addr: u64) -> bool {
        let guard = loader::image_limit(self.mem.size());
        (guard..guard + layout::STACK_GUARD_SIZE).contains(&addr)
    }

    fn exception(&self, frame_addr: u64) -> Result<Exception, Crash> {
        let frame = hypercall::exception_frame(&self.mem, frame_addr)?;
        let cr2 = self.vcpu.get_sregs().map(|s| s.cr2).unwrap_or(0);
        let fault_addr = if frame.vector == 14 { cr2 } else { 0 };
        Ok(Exception {
            vector: frame.vector,
            error_code: frame.error_code,
            rip: frame.rip,
            rsp: frame.rsp,
            fault_addr,
            in_stack_guard: frame.vector == 14 && self.in_stack_guard(fault_addr),
            via_idt: true,
        })
    }

    /// A triple fault: the exception could not be delivered (e.g. the ring-0 stack itself was
    /// unusable). The vCPU's registers still tell where it happened.
    fn triple_fault(&self) -> Result<Crash, MonitorError> {
        let regs = self.vcpu.get_regs().map_err(KvmError::ioctl("KVM_GET_REGS"))?;
        let sregs = self.vcpu.get_sregs().map_err(KvmError::ioctl("KVM_GET_SREGS"))?;
        let events: kvm_vcpu_events = self.vcpu.get_vcpu_events().unwrap_or_default();
        let vector = u64::from(events.exception.nr);
        let error_code = u64::from(events.exception.error_code);
        Ok(Crash::Exception(Exception {
            vector,
            error_code,
            rip: regs.rip,
            rsp: regs.rsp,
            fault_addr: sregs.cr2,
            in_stack_guard: vector == 14 && self.in_stack_guard(sregs.cr2),
            via_idt: false,
        }))
    }

    fn internal_error(&mut self) -> String {
        let run = self.vcpu.get_kvm_run();
        // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is the active field.
        let suberror = unsafe { run.__bindgen_anon_1.internal.suberror };
        let rip = self.vcpu.get_regs().map(|r| r.rip).unwrap_or(0);
        format!("KVM internal error, suberror {suberror}, at rip {rip:#x}")
    }
}

/// A parent pVM holds one pipe per child: lift the soft open-file limit to the hard one, so a
/// family of a thousand pVMs does not run out of descriptors at the default 1024.
fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Maps the reserved area, the image, the heap, the stack and the hypercall window; returns CR3.
fn build_address_space(mem: &GuestMemory, image: &Image) -> Result<u64, arch::ArchError> {
    let mut pt = PageTables::new(mem)?;
    let identity =
        |pt: &mut PageTables<'_>, start: u64, end: u64, perm: Perm| pt.map(start, start, end - start, perm);
    identity(&mut pt, layout::GDT_ADDR, layout::IDT_ADDR, Perm::KERNEL_RW)?;
    identity(&mut pt, layout::IDT_ADDR, layout::STUBS_ADDR, Perm::KERNEL_RO)?;
    identity(
        &mut pt,
        layout::STUBS_ADDR,
        layout::RING0_STACK_ADDR,
        Perm::KERNEL_RX,
    )?;
    let stacks_end = layout::DF_STACK_ADDR + layout::DF_STACK_SIZE;
    identity(&mut pt, layout::RING0_STACK_ADDR, stacks_end, Perm::KERNEL_RW)?;
    let status_end = layout::STATUS_ADDR + layout::PAGE_SIZE;
    identity(&mut pt, layout::STATUS_ADDR, status_end, Perm::USER_RW)?;
    let boot_end = layout::BOOT_INFO_ADDR + layout::BOOT_INFO_SIZE;
    identity(&mut pt, layout::BOOT_INFO_ADDR, boot_end, Perm::USER_RO)?;
    for s in &image.segments {
        identity(&mut pt, s.start, s.end, s.perm)?;
    }
    let heap_end = loader::image_limit(mem.size());
    if heap_end > image.end() {
        identity(&mut pt, image.end(), heap_end, Perm::USER_RW)?;
    }
    identity(
        &mut pt,
        heap_end + layout::STACK_GUARD_SIZE,
        mem.size(),
        Perm::USER_RW,
    )?;
    pt.map(
        layout::HYPERCALL_VA,
        layout::HYPERCALL_GPA,
        layout::PAGE_SIZE,
        Perm::USER_RW,
    )?;
    // The whole IPC window, backed later region by region (each its own memory slot).
    let ipc_end = layout::IPC_BASE + layout::IPC_SIZE;
    identity(&mut pt, layout::IPC_BASE, ipc_end, Perm::USER_RW)?;
    Ok(pt.root())
}

fn write_boot_info(mem: &GuestMemory, image: &Image, args: &[String], ids: Ids) -> Result<(), MonitorError> {
    let header = size_of::<BootInfo>() as u64;
    let mut bytes = Vec::new();
    for a in args {
        bytes.extend_from_slice(a.as_bytes());
        bytes.push(0);
    }
    let max = (layout::BOOT_INFO_SIZE - header) as usize;
    if bytes.len() > max {
        return Err(MonitorError::ArgsTooLong {
            len: bytes.len(),
            max,
        });
    }
    let info = BootInfo {
        magic: BOOT_MAGIC,
        abi_version: u64::from(ABI_VERSION),
        pvm_id: u64::from(ids.id),
        parent_id: u64::from(ids.parent),
        family_id: u64::from(ids.family),
        mem_size: mem.size(),
        heap_start: image.end(),
        heap_end: loader::image_limit(mem.size()),
        stack_top: mem.size(),
        argc: args.len() as u64,
        args_addr: layout::BOOT_INFO_ADDR + header,
        args_len: bytes.len() as u64,
    };
    mem.write_obj(layout::BOOT_INFO_ADDR, &info, Access::Monitor)?;
    mem.write_bytes(info.args_addr, &bytes, Access::Monitor)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_sizes_parse_and_are_checked() {
        assert_eq!(parse_mem_size("64M"), Ok(64 << 20));
        assert_eq!(parse_mem_size("1g"), Ok(1 << 30));
        assert_eq!(parse_mem_size("16384K"), Ok(16 << 20));
        assert!(matches!(parse_mem_size("lots"), Err(MemSizeError::Syntax(_))));
        assert!(matches!(parse_mem_size(""), Err(MemSizeError::Syntax(_))));
        assert!(matches!(
            parse_mem_size("99999999999999999999G"),
            Err(MemSizeError::Syntax(_))
        ));
        assert!(matches!(parse_mem_size("1M"), Err(MemSizeError::TooSmall { .. })));
        assert!(matches!(parse_mem_size("65M"), Err(MemSizeError::Unaligned(_))));
        assert!(matches!(
            parse_mem_size("100000G"),
            Err(MemSizeError::TooLarge { .. })
        ));
    }
}
