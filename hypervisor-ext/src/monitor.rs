//! The monitor: builds a pVM from an image and runs its vCPU loop.
use std::time::{Duration, Instant};

use std::os::fd::RawFd;
use std::path::PathBuf;

use kvm_bindings::{kvm_vcpu_events, CpuId};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use pvm_abi::{layout, BootInfo, ABI_VERSION, BOOT_MAGIC};

use crate::arch::{self, PageTables, Perm};
use crate::family::{describe_record, Collected, Family, FamilyError, Ids, Limits};
use crate::hypercall;
use crate::ipc::Ipc;
use crate::ledger::{FamilyLedger, Lease, LedgerError};
use crate::loader::{self, Image, LoadError};
use crate::outcome::{Crash, Exception, Outcome};
use crate::registry::{Entry, Registry, RegistryError, State, MONITOR_NAME};
use crate::signals;
use crate::sys;
use crate::vstate::memory::{Access, GuestMemory, GuestRange, GuestView, MemoryError};
use crate::vstate::vcpu::{self, CaptureSetup, EntryState};
use crate::vstate::{self, vm, KvmError};

/// Bench record kind: parent's pause in fork (fork hypercall to resuming the guest).
pub const BENCH_PARENT_PAUSE: u64 = 1;
/// Bench record kind: child ready (parent's fork hypercall to the child's first hypercall).
pub const BENCH_CHILD_READY: u64 = 2;

/// How much more readily the kernel's OOM killer picks a monitor than other processes (of
/// -1000..1000).
const OOM_SCORE_ADJ: i32 = 500;

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
    /// The monitor could not be confined.
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
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
    /// A limit on pVMs or their memory is reached.
    #[error(transparent)]
    Limit(#[from] LedgerError),
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

/// Parses a size such as `64M`, `1G`, `4096K` or `8388608` (bytes).
pub fn parse_size(text: &str) -> Result<u64, MemSizeError> {
    let syntax = || MemSizeError::Syntax(text.to_string());
    let t = text.trim();
    let (digits, shift) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 10),
        Some((i, 'm' | 'M')) => (&t[..i], 20),
        Some((i, 'g' | 'G')) => (&t[..i], 30),
        _ => (t, 0),
    };
    let n: u64 = digits.parse().map_err(|_| syntax())?;
    n.checked_mul(1 << shift).ok_or_else(syntax)
}

/// Parses a guest memory size (see [`parse_size`]) and checks pvm can use it.
pub fn parse_mem_size(text: &str) -> Result<u64, MemSizeError> {
    let size = parse_size(text)?;
    check_mem_size(size)?;
    Ok(size)
}

/// Checks that `size` bytes of guest RAM are usable.
pub fn check_mem_size(size: u64) -> Result<(), MemSizeError> {
    if size < layout::MIN_MEM_SIZE {
        return Err(MemSizeError::TooSmall {
            size,
            min: layout::MIN_MEM_SIZE >> 20,
        });
    }
    let max = layout::MAX_MEM_SIZE.min(sys::host_ram());
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
    /// Limits on pVM counts and memory.
    pub limits: Limits,
    /// Where to write fork timing records for `pvmctl bench fork`, if anywhere.
    pub bench_fd: Option<RawFd>,
    /// Confine the monitor: close the descriptors it inherited and install its seccomp
    /// allow-list once the pVM is built. Off only to measure what the filter costs, to debug, or
    /// to build a pVM inside another program (the in-process boot benchmark).
    pub confine: bool,
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
    pub fn to_first_hypercall(self) -> Option<Duration> {
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
    sys::monotonic_ns()
}

impl Monitor {
    /// Builds the root pVM of a new family for `image`, ready to run. The monitor owns its
    /// process from here on: confined (see [`MonitorConfig::confine`]), descriptors it did not
    /// open (but the bench's) are closed first, and the filter is installed once it is built.
    pub fn new(image: &Image, config: &MonitorConfig) -> Result<Monitor, MonitorError> {
        if config.confine {
            sys::close_fds_from(3, config.bench_fd);
        }
        // One malloc arena: the CPUID thread would otherwise get its own, whose pages every
        // forked child copies (glibc resets arena locks in the child after fork).
        sys::single_malloc_arena();
        // What `ps` and the registry's checks know a monitor by.
        let _ = sys::set_name(MONITOR_NAME);
        check_mem_size(config.mem_size)?;
        image.check_fits(config.mem_size)?;
        let kvm = vstate::open_kvm()?;
        let registry = Registry::open(&config.run_dir)?;
        let id = sys::getpid();
        let ids = Ids {
            id,
            parent: 0,
            family: id,
            family_key: sys::random_u64().map_err(|e| MonitorError::Family(FamilyError::Setup(e)))?,
        };
        let ledger = FamilyLedger::new().map_err(|e| MonitorError::Family(FamilyError::Setup(e)))?;
        let mut family = Family::new(ids, config.limits, registry, ledger);
        crate::ledger::verify(family.registry.dir()).map_err(LedgerError::Io)?;
        let lease = Lease::acquire(
            family.registry.dir(),
            &family.ledger,
            family.want(config.mem_size),
        )?;
        family.lease = Some(lease);
        let monitor = Self::build(image, config, kvm, family)?;
        if config.confine {
            // Built: from here on, only the calls a running monitor needs.
            crate::seccomp::install(&crate::seccomp::program()?)?;
        }
        Ok(monitor)
    }

    fn build(
        image: &Image,
        config: &MonitorConfig,
        kvm: Kvm,
        mut family: Family,
    ) -> Result<Monitor, MonitorError> {
        let ids = family.ids;
        let mut mem = GuestMemory::new(config.mem_size)?;
        // Huge pages for the heap, away from the chunks touched at boot (reserved area, image, stack).
        mem.advise_huge_pages(image.end(), loader::image_limit(config.mem_size));
        let create_vm = Instant::now();
        // The supported CPUID comes from a second thread while this one builds the VM; the
        // thread is joined before the monitor runs (and long before any fork).
        let (cpuid, built) = std::thread::scope(|s| {
            let cpuid = s.spawn(|| vcpu::supported_cpuid(&kvm));
            let built = Self::build_vm(&kvm, &mut mem, image, &config.args, ids);
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
        let entry = family.registry.register(Entry {
            id: ids.id,
            parent: 0,
            family: ids.family,
            family_key: ids.family_key,
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
        family.entry = Some(entry);
        sys::raise_fd_limit();
        // When the host runs out of memory, guests go first: a pVM's memory is what its user
        // asked for, the host's other processes are not.
        sys::prefer_oom_kill(OOM_SCORE_ADJ);
        // The root collects the family's orphans, as init would.
        sys::set_child_subreaper().map_err(|e| MonitorError::Family(FamilyError::Setup(e)))?;
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
        mem: &mut GuestMemory,
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
        let (cr3, view) = build_address_space(mem, image)?;
        mem.set_view(view);
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
        // The pVM is over: its places and memory budget are free for others now, not after the
        // deferred teardown.
        if let Some(lease) = self.family.lease.take() {
            lease.release();
        }
        Ok(outcome)
    }

    /// For a family's root, after its own end: waits until every pVM of the family has ended,
    /// forwarding `forward` (the signal that stopped the root, if any) to them first. Returns
    /// what became of the pVMs nobody waited for (orphans, and children the root left).
    pub fn wait_for_family(&mut self, forward: Option<i32>) -> Vec<(u32, String)> {
        if let Some(sig) = forward {
            self.family.signal_all(sig);
        }
        let mut reports = Vec::new();
        loop {
            let (pid, status) = match sys::waitpid(None, false) {
                Ok(Some(reaped)) => reaped,
                Ok(None) => continue,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {
                    let mask = signals::take();
                    for sig in signals::GUEST_SIGNALS.into_iter().filter(|&s| s != libc::SIGCHLD) {
                        if mask & (1 << sig) != 0 {
                            self.family.signal_all(sig);
                        }
                    }
                    continue;
                }
                Err(_) => break, // ECHILD: the family is gone.
            };
            match self.family.collect(pid, status) {
                Collected::Child(id, record, oom) => reports.push((id, describe_record(&record, oom))),
                Collected::Orphan(id, text) => reports.push((id, text)),
                Collected::Other => {}
            }
        }
        reports
    }

    /// Removes this pVM's registry entry and gives back its lease, but leaves the family's
    /// named objects (a root that ends while its family lives on).
    pub fn unregister_root_only(&mut self) {
        if self.family.entry.take().is_some() {
            self.family.registry.remove(self.family.ids.id);
        }
        if let Some(lease) = self.family.lease.take() {
            lease.release();
        }
    }

    /// Removes this pVM's registry entry (the root, when its family is gone) and the family's
    /// named objects.
    pub fn unregister(&mut self) {
        self.unregister_root_only();
        if self.family.ids.parent == 0 {
            let suffix = format!("@{:016x}", self.family.ids.family_key);
            if let Ok(dir) = self.family.registry.dir().subdir("ipc") {
                for name in dir.names().unwrap_or_default() {
                    if name.ends_with(&suffix) {
                        let _ = dir.remove(&name);
                    }
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
            match hypercall::dispatch(self, call) {
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

    /// Writes a timing record for `pvmctl bench fork`.
    pub(crate) fn bench_record(&self, kind: u64, t0: u64, t1: u64) {
        if let Some(fd) = self.bench_fd {
            let mut rec = [0u8; 32];
            rec[0..8].copy_from_slice(&kind.to_le_bytes());
            rec[8..16].copy_from_slice(&u64::from(self.family.ids.id).to_le_bytes());
            rec[16..24].copy_from_slice(&t0.to_le_bytes());
            rec[24..32].copy_from_slice(&t1.to_le_bytes());
            // SAFETY: the bench passed this fd for the life of the pVM and nothing closes it.
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
            // One write of 32 bytes to a pipe is atomic, so records of a family never mix.
            let _ = sys::write_all(fd, &rec);
        }
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

/// Maps the reserved area, the image, the heap, the stack and the hypercall window; returns CR3
/// and what the guest may access at CPL3, both from the same list of ranges.
fn build_address_space(mem: &GuestMemory, image: &Image) -> Result<(u64, GuestView), arch::ArchError> {
    let heap_end = loader::image_limit(mem.size());
    let mut ranges = vec![
        (layout::GDT_ADDR, layout::IDT_ADDR, Perm::KERNEL_RW),
        (layout::IDT_ADDR, layout::STUBS_ADDR, Perm::KERNEL_RO),
        (layout::STUBS_ADDR, layout::RING0_STACK_ADDR, Perm::KERNEL_RX),
        (
            layout::RING0_STACK_ADDR,
            layout::DF_STACK_ADDR + layout::DF_STACK_SIZE,
            Perm::KERNEL_RW,
        ),
        (
            layout::STATUS_ADDR,
            layout::STATUS_ADDR + layout::PAGE_SIZE,
            Perm::USER_RW,
        ),
        (
            layout::BOOT_INFO_ADDR,
            layout::BOOT_INFO_ADDR + layout::BOOT_INFO_SIZE,
            Perm::USER_RO,
        ),
    ];
    ranges.extend(image.segments.iter().map(|s| (s.start, s.end, s.perm)));
    if heap_end > image.end() {
        ranges.push((image.end(), heap_end, Perm::USER_RW));
    }
    ranges.push((heap_end + layout::STACK_GUARD_SIZE, mem.size(), Perm::USER_RW));

    let mut pt = PageTables::new(mem)?;
    for &(start, end, perm) in &ranges {
        pt.map(start, start, end - start, perm)?;
    }
    pt.map(
        layout::HYPERCALL_VA,
        layout::HYPERCALL_GPA,
        layout::PAGE_SIZE,
        Perm::USER_RW,
    )?;
    // The whole IPC window, backed later region by region (each its own memory slot).
    let ipc_end = layout::IPC_BASE + layout::IPC_SIZE;
    pt.map(
        layout::IPC_BASE,
        layout::IPC_BASE,
        ipc_end - layout::IPC_BASE,
        Perm::USER_RW,
    )?;
    let view = GuestView::new(
        ranges
            .iter()
            .filter(|(_, _, perm)| perm.user)
            .map(|&(start, end, perm)| GuestRange {
                start,
                end,
                writable: perm.write,
            })
            .collect(),
    )
    .ok_or(arch::ArchError::Overlap)?;
    Ok((pt.root(), view))
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
