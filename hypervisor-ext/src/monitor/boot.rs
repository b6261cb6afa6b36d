//! Building a pVM: guest memory, the image, the address space, the VM and vCPU, the registry
//! entry and the lease; then the monitor confines itself.
use std::time::Instant;

use kvm_bindings::CpuId;
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use pvm_abi::{layout, BootInfo, ABI_VERSION, BOOT_MAGIC};

use super::{BootTimes, Monitor, MonitorConfig, MonitorError, OOM_SCORE_ADJ};
use crate::arch;
use crate::family::{Family, FamilyError, Ids};
use crate::ipc::Ipc;
use crate::ledger::{FamilyLedger, Lease, LedgerError};
use crate::loader::{self, Image};
use crate::registry::{Entry, Registry, State, MONITOR_NAME};
use crate::sys;
use crate::vstate::memory::{Access, GuestMemory};
use crate::vstate::space::Space;
use crate::vstate::vcpu::{self, EntryState};
use crate::vstate::{self, vm};

/// A `--mem` value that cannot be used. Sizes are said in the unit the user typed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MemSizeError {
    /// Not a number with an optional unit.
    #[error("invalid memory size {0:?}: use a number with an optional unit K, M, G, T (or KiB, MiB, GiB, TiB; powers of 1024), e.g. 64M")]
    Syntax(String),
    /// Too small for the reserved area, an image and the stack.
    #[error("memory size {size} is too small: a pVM needs at least {min}")]
    TooSmall {
        /// The size as typed.
        size: String,
        /// The minimum, in the unit typed.
        min: String,
    },
    /// Larger than pvm supports or than the host has.
    #[error(
        "memory size {size} is too large: at most {max} (the smaller of pvm's limit and this host's RAM)"
    )]
    TooLarge {
        /// The size as typed.
        size: String,
        /// The maximum, in the unit typed.
        max: String,
    },
    /// Not a whole number of 2 MiB pages.
    #[error("memory size {0} is not a multiple of 2 MiB")]
    Unaligned(String),
}

/// The units sizes take (powers of 1024): how each is written back, its spellings (longest
/// first), its shift.
const UNITS: [(&str, &[&str], u32); 5] = [
    ("T", &["TIB", "TB", "T"], 40),
    ("G", &["GIB", "GB", "G"], 30),
    ("M", &["MIB", "MB", "M"], 20),
    ("K", &["KIB", "KB", "K"], 10),
    ("", &["B", ""], 0),
];

/// Where the unit suffix of `text` starts, and its shift (0 for plain bytes).
fn unit_of(text: &str) -> (usize, u32) {
    let t = text.trim();
    let upper = t.to_ascii_uppercase();
    for (_, names, shift) in UNITS {
        if let Some(name) = names
            .iter()
            .find(|n| upper.ends_with(*n) && upper.len() > n.len())
        {
            return (t.len() - name.len(), shift);
        }
    }
    (t.len(), 0)
}

/// `bytes` in the unit of `typed` (rounded down), or the largest smaller unit that does not
/// round it to 0 (a host's 23.5 GiB said to someone who typed `1T` is `23G`).
fn in_unit_of(typed: &str, bytes: u64) -> String {
    let (_, typed_shift) = unit_of(typed);
    for (unit, _, shift) in UNITS {
        if shift > 0 && shift <= typed_shift && bytes >> shift > 0 {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    format!("{bytes} bytes")
}

/// Parses a size such as `64M`, `64MiB`, `1G`, `4096K` or `8388608` (bytes).
pub fn parse_size(text: &str) -> Result<u64, MemSizeError> {
    let syntax = || MemSizeError::Syntax(text.to_string());
    let t = text.trim();
    let (digits_end, shift) = unit_of(t);
    let n: u64 = t[..digits_end].trim().parse().map_err(|_| syntax())?;
    n.checked_mul(1 << shift).ok_or_else(syntax)
}

/// Parses a guest memory size (see [`parse_size`]) and checks pvm can use it.
pub fn parse_mem_size(text: &str) -> Result<u64, MemSizeError> {
    let size = parse_size(text)?;
    check_mem_size(size).map_err(|e| match e {
        MemSizeError::TooSmall { .. } => MemSizeError::TooSmall {
            size: text.trim().to_string(),
            min: in_unit_of(text, layout::MIN_MEM_SIZE),
        },
        MemSizeError::TooLarge { .. } => MemSizeError::TooLarge {
            size: text.trim().to_string(),
            max: in_unit_of(text, max_mem_size()),
        },
        MemSizeError::Unaligned(_) => MemSizeError::Unaligned(text.trim().to_string()),
        other => other,
    })?;
    Ok(size)
}

/// The largest guest RAM: pvm's limit or the host's RAM.
fn max_mem_size() -> u64 {
    layout::MAX_MEM_SIZE.min(sys::host_ram())
}

/// Checks that `size` bytes of guest RAM are usable.
pub fn check_mem_size(size: u64) -> Result<(), MemSizeError> {
    let mib = |b: u64| format!("{}M", b >> 20);
    if size < layout::MIN_MEM_SIZE {
        return Err(MemSizeError::TooSmall {
            size: format!("{size} bytes"),
            min: mib(layout::MIN_MEM_SIZE),
        });
    }
    let max = max_mem_size();
    if size > max {
        return Err(MemSizeError::TooLarge {
            size: format!("{size} bytes"),
            max: mib(max),
        });
    }
    if !size.is_multiple_of(layout::LARGE_PAGE_SIZE) {
        return Err(MemSizeError::Unaligned(format!("{size} bytes")));
    }
    Ok(())
}

impl Monitor {
    /// Builds the root pVM of a new family for `image`, ready to run. The monitor owns its
    /// process from here on: confined (see [`MonitorConfig::confine`]), descriptors it did not
    /// open (but the bench's) are closed first, and the filter is installed once it is built.
    pub fn new(image: &Image, config: &MonitorConfig) -> Result<Monitor, MonitorError> {
        // A warm pool member's VM, if this process is one and it fits (see `pool`).
        let mut prebuilt = crate::pool::take_prebuilt().filter(|p| p.fits(config.mem_size));
        if config.confine {
            let mut keep: Vec<i32> = config.bench_fd.into_iter().collect();
            keep.extend(crate::pool::client_fd());
            keep.extend(prebuilt.iter().flat_map(Prebuilt::fds));
            sys::close_fds_except(3, &keep);
        }
        // One malloc arena: the CPUID thread would otherwise get its own, whose pages every
        // forked child copies (glibc resets arena locks in the child after fork).
        sys::single_malloc_arena();
        // What `ps` and the registry's checks know a monitor by.
        let _ = sys::set_name(MONITOR_NAME);
        check_mem_size(config.mem_size)?;
        image.check_fits(config.mem_size)?;
        let placed = |p: &crate::placement::Placement, r: std::io::Result<()>| {
            r.map_err(|source| MonitorError::Placement {
                cpus: crate::placement::format_cpu_list(p.cpus()),
                source,
            })
        };
        if let Some(p) = &config.placement {
            placed(p, p.enter_family())?;
        }
        // The family's network backend is forked now, while this process is small and
        // single-threaded, and the published ports are bound before the guest runs.
        let net = if config.net.publish.is_empty() && config.net.connect.is_empty() {
            None
        } else {
            // The backend keeps nothing of a VM built ahead (its descriptors, guest RAM).
            Some(crate::net::start(&config.net, config.confine, || {
                drop(prebuilt.take())
            })?)
        };
        if let Some(p) = &config.placement {
            placed(p, p.settle_root())?;
        }
        // The boot timer starts here: at KVM_CREATE_VM for a cold boot, at the take of the VM a
        // pool member built ahead for a warm one. KVM comes first: without it nothing else
        // matters, and its error says how to fix it.
        let create_vm = Instant::now();
        let mut prebuilt = match prebuilt {
            Some(p) => p,
            None => Prebuilt::new(config.mem_size, Some(&config.run_dir))?,
        };
        let registry = Registry::open(&config.run_dir)?;
        let id = sys::getpid();
        let ids = Ids {
            id,
            parent: 0,
            family: id,
            family_key: sys::random_u64().map_err(|e| MonitorError::Family(FamilyError::Setup(e)))?,
        };
        let ledger = FamilyLedger::new().map_err(|e| MonitorError::Family(FamilyError::Setup(e)))?;
        let app_code = image
            .segments
            .iter()
            .filter(|s| s.perm.exec)
            .map(|s| (s.start, s.end))
            .collect();
        let libs = crate::dl::Libraries::new(&config.libs, registry.dir(), image.exports.clone(), app_code)?;
        let mut family = Family::new(ids, config.limits, registry, ledger);
        crate::ledger::verify(family.registry.dir()).map_err(LedgerError::Io)?;
        let lease = Lease::acquire(
            family.registry.dir(),
            &family.ledger,
            family.want(config.mem_size),
        )?;
        family.lease = Some(lease);
        let seccomp = if config.confine {
            Some(match prebuilt.seccomp.take() {
                Some(f) => f,
                None => crate::seccomp::program()?,
            })
        } else {
            None
        };
        let monitor = Self::build(image, config, prebuilt, create_vm, family, libs, net)?;
        tracing::debug!(
            id = monitor.family.ids.id,
            mem = config.mem_size,
            image = %image.path.display(),
            "boot: pVM built"
        );
        if let Some(filter) = seccomp {
            // Built: from here on, only the calls a running monitor needs.
            crate::seccomp::install(&filter)?;
        }
        Ok(monitor)
    }

    fn build(
        image: &Image,
        config: &MonitorConfig,
        prebuilt: Prebuilt,
        create_vm: Instant,
        mut family: Family,
        mut libs: crate::dl::Libraries,
        net: Option<crate::net::Network>,
    ) -> Result<Monitor, MonitorError> {
        let ids = family.ids;
        // The family's CPUs (under --cpu-spread this monitor is already on one of them).
        let host_cpus = match &config.placement {
            Some(p) => p.cpus().len(),
            None => sys::cpu_count().unwrap_or(0),
        };
        let Prebuilt {
            kvm,
            vm,
            mut vcpu,
            mut mem,
            cpuid,
            sync_regs,
            ..
        } = prebuilt;
        // Huge pages for the heap, away from the chunks touched at boot (reserved area, image, stack).
        mem.advise_huge_pages(image.end(), loader::image_limit(config.mem_size));
        let mut space = Self::fill(&mut mem, image, &config.args, ids, host_cpus)?;
        if libs.allowed() {
            // A pVM that may load libraries gets its library windows now (two memory slots).
            let windows = space.enable_libraries(&vm).map_err(|e| {
                MonitorError::Kvm(crate::vstate::KvmError::Ioctl {
                    op: "KVM_SET_USER_MEMORY_REGION (library windows)",
                    source: kvm_ioctls::Error::new(match e {
                        crate::vstate::space::SpaceError::Kvm(errno) => errno,
                        _ => libc::EINVAL,
                    }),
                })
            })?;
            libs.set_windows(windows);
        }
        // The system state set ahead (`Prebuilt::new`) has the root where the tables put it.
        debug_assert_eq!(space.cr3(), arch::PAGE_TABLE_ROOT);
        let entry = EntryState {
            rip: image.entry,
            rsp: mem.size(),
            rdi: layout::BOOT_INFO_ADDR,
        };
        vcpu::set_entry_regs(&mut vcpu, &entry, sync_regs)?;
        let entry = family.registry.register(Entry {
            id: ids.id,
            parent: 0,
            family: ids.family,
            family_key: ids.family_key,
            name: config.args.first().cloned().unwrap_or_default(),
            // As given, made absolute (`canonicalize` would read every component's link).
            image: std::path::absolute(&image.path)
                .unwrap_or_else(|_| image.path.clone())
                .display()
                .to_string(),
            mem_size: config.mem_size,
            started_ms: 0,
            state: State::Running,
            exit_status: None,
            outcome: None,
            ports: net.as_ref().map(|n| n.describe()).unwrap_or_default(),
        })?;
        family.entry = Some(entry);
        Ok(Monitor {
            vcpu,
            vm,
            mem,
            kvm,
            cpuid,
            space,
            control: None,
            capture_setup: None,
            family,
            ipc: Ipc::default(),
            libs,
            update: None,
            net,
            console_log: config.console_log,
            handled_signals: 0,
            bench_fd: config.bench_fd,
            fork_started_ns: None,
            placement: config.placement.clone(),
            times: BootTimes {
                create_vm,
                first_hypercall: None,
            },
        })
    }

    /// Fills guest memory: the image, page tables, boot info (the descriptor tables are there
    /// already, `Prebuilt::create`); returns the address space.
    fn fill(
        mem: &mut GuestMemory,
        image: &Image,
        args: &[String],
        ids: Ids,
        host_cpus: usize,
    ) -> Result<Space, MonitorError> {
        mem.populate(layout::IMAGE_BASE, image.end());
        image.load(mem)?;
        let space = Space::build(mem, image)?;
        write_boot_info(mem, image, args, ids, host_cpus)?;
        Ok(space)
    }
}

/// Where [`Prebuilt::warm_up`]'s guest is: the start of the image area, which a member faults
/// in ahead.
const WARM_UP_CODE: u64 = layout::IMAGE_BASE;

/// Pages of page tables faulted in ahead: a pVM's take 12 (the 2 MiB chunks of the reserved
/// area, the image and the stack, the hypercall window, the IPC and library windows), a few more
/// with a larger image.
const PAGE_TABLE_PAGES: u64 = 16;

/// Bytes of the image area a pool member faults in ahead ([`Prebuilt::prefill_image_area`]).
const IMAGE_PREFILL: u64 = 256 << 10;

/// What a root pVM needs that does not depend on its image or arguments: the KVM handle, the VM
/// with its RAM slot, the vCPU with its CPUID and system state (segments, descriptor tables,
/// control registers, FPU), guest RAM with the pages every boot touches already there and the
/// descriptor tables written, the seccomp filter compiled, the process set up (open-file limit,
/// OOM score, subreaper). A cold boot builds it on the spot; a warm pool member builds it ahead
/// and waits.
pub(crate) struct Prebuilt {
    // Drop order: vCPU and VM before memory.
    vcpu: VcpuFd,
    vm: VmFd,
    mem: GuestMemory,
    kvm: Kvm,
    cpuid: CpuId,
    /// The KVM device it was built on.
    device: String,
    /// The process that built it.
    owner: u32,
    /// The monitor's seccomp filter, compiled (installed once the pVM is built).
    seccomp: Option<crate::seccomp::Filter>,
    /// KVM takes the entry registers through `kvm_run` (`vcpu::syncs_regs`).
    sync_regs: bool,
}

impl Prebuilt {
    /// Builds it for `mem_size` bytes of guest RAM. The supported CPUID comes from a second
    /// thread while this one builds the VM; it is joined before this returns (and so long
    /// before the monitor runs or forks).
    pub(crate) fn new(mem_size: u64, cache: Option<&std::path::Path>) -> Result<Prebuilt, MonitorError> {
        check_mem_size(mem_size)?;
        let device = vstate::kvm_device();
        let kvm = vstate::open_kvm_at(device.clone())?;
        let mem = GuestMemory::new(mem_size)?;
        // The seccomp filter is compiled there too, after the query.
        let (helper, built) = std::thread::scope(|s| {
            let helper = s.spawn(|| {
                let cpuid = crate::cpuid_cache::supported(&kvm, &device, cache);
                (cpuid, crate::seccomp::program())
            });
            let built = Self::create(&kvm, &mem);
            (
                helper
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                built,
            )
        });
        let (vm, vcpu) = built?;
        let (cpuid, seccomp) = helper;
        let cpuid = cpuid?;
        vcpu::set_cpuid(&vcpu, &cpuid)?;
        // After the CPUID: KVM sizes the FPU state from it.
        vcpu::set_system_state(&vcpu, arch::PAGE_TABLE_ROOT)?;
        let sync_regs = vcpu::syncs_regs(&kvm);
        Self::prepare_process()?;
        Ok(Prebuilt {
            vcpu,
            vm,
            mem,
            kvm,
            cpuid,
            device,
            owner: sys::getpid(),
            seccomp: seccomp.ok(),
            sync_regs,
        })
    }

    /// Asks KVM for its supported CPUID now, for this process and the processes it forks (a
    /// warm pool, before it forks its members: each would otherwise ask, ~1.4 ms of CPU here).
    /// A failure is left for the members to report.
    pub(crate) fn ask_cpuid_ahead() {
        let device = vstate::kvm_device();
        if let Ok(kvm) = vstate::open_kvm_at(device.clone()) {
            let _ = crate::cpuid_cache::supported(&kvm, &device, None);
        }
    }

    /// What a root monitor's process needs whatever it runs.
    fn prepare_process() -> Result<(), MonitorError> {
        sys::raise_fd_limit();
        // When the host runs out of memory, guests go first: a pVM's memory is what its user
        // asked for, the host's other processes are not.
        sys::prefer_oom_kill(OOM_SCORE_ADJ);
        // The root collects the family's orphans, as init would.
        sys::set_child_subreaper().map_err(|e| MonitorError::Family(FamilyError::Setup(e)))
    }

    /// Creates the VM with its memory slot and the vCPU, and brings in the pages every pVM
    /// touches at boot: descriptor tables, boot block and page tables, the top of the stack.
    fn create(kvm: &Kvm, mem: &GuestMemory) -> Result<(VmFd, VcpuFd), MonitorError> {
        let vm = vm::create_vm(kvm)?;
        Space::register_ram(&vm, mem)?;
        let vcpu = vcpu::create_vcpu(&vm)?;
        mem.populate(layout::RESERVED_START, layout::STATUS_ADDR + layout::PAGE_SIZE);
        mem.populate(layout::BOOT_INFO_ADDR, layout::BOOT_INFO_ADDR + layout::PAGE_SIZE);
        mem.populate(
            layout::PAGE_TABLES_ADDR,
            layout::PAGE_TABLES_ADDR + PAGE_TABLE_PAGES * layout::PAGE_SIZE,
        );
        mem.populate(mem.size() - 4 * layout::PAGE_SIZE, mem.size());
        arch::write_descriptor_tables(mem)?;
        Ok((vm, vcpu))
    }

    /// Whether it can be a pVM of `mem_size` bytes in this process, on the KVM device this
    /// process would open now (`$PVM_KVM_DEVICE` may have changed since it was built). A VM
    /// belongs to the process that created it: a forked child (`run -d`) cannot use it.
    pub(crate) fn fits(&self, mem_size: u64) -> bool {
        self.mem.size() == mem_size && vstate::kvm_device() == self.device && sys::getpid() == self.owner
    }

    /// Faults in the first [`IMAGE_PREFILL`] bytes of the image area (a pool member, ahead:
    /// most images fit; a larger one has the rest faulted in when it is loaded).
    pub(crate) fn prefill_image_area(&self) {
        self.mem
            .populate(layout::IMAGE_BASE, layout::IMAGE_BASE + IMAGE_PREFILL);
    }

    /// Runs the vCPU once, ahead, on a warm-up guest of one instruction (an MMIO store), so that
    /// the first entry's costs are paid before a run is waiting: KVM's first load of the vCPU,
    /// its clock and MMU set-up (~0.1 ms here, measured). Then everything it touched is put
    /// back as `new` left it: the system state, the pages it used (zero again), and KVM's
    /// shadow page tables (discarded with the RAM slot, which is registered again).
    pub(crate) fn warm_up(&mut self) -> Result<(), MonitorError> {
        use kvm_ioctls::VcpuExit;
        let root = arch::write_warm_up_guest(&self.mem, WARM_UP_CODE)?;
        vcpu::set_system_state(&self.vcpu, root)?;
        let entry = EntryState {
            rip: WARM_UP_CODE,
            rsp: 0,
            rdi: 0,
        };
        vcpu::set_entry_regs(&mut self.vcpu, &entry, false)?;
        match self.vcpu.run() {
            Ok(VcpuExit::MmioWrite(layout::HYPERCALL_GPA, _)) => {}
            Ok(other) => {
                return Err(MonitorError::UnexpectedExit(format!(
                    "{other:?} (the warm-up guest)"
                )))
            }
            Err(e) => return Err(MonitorError::Run(e)),
        }
        vcpu::complete_pending_exit(&mut self.vcpu, false)?;
        vcpu::set_system_state(&self.vcpu, arch::PAGE_TABLE_ROOT)?;
        let zero = [0u8; arch::WARM_UP_GUEST_SIZE as usize];
        self.mem.write_bytes(WARM_UP_CODE, &zero, Access::Monitor)?;
        Space::reregister_ram(&self.vm, &self.mem)?;
        Ok(())
    }

    /// Where guest RAM is in this process.
    pub(crate) fn ram_range(&self) -> std::ops::Range<usize> {
        let base = self.mem.host_base() as usize;
        base..base + self.mem.size() as usize
    }

    /// Its descriptors (kept when the monitor closes what it inherited).
    pub(crate) fn fds(&self) -> [i32; 3] {
        use std::os::fd::AsRawFd;
        [self.kvm.as_raw_fd(), self.vm.as_raw_fd(), self.vcpu.as_raw_fd()]
    }
}

fn write_boot_info(
    mem: &GuestMemory,
    image: &Image,
    args: &[String],
    ids: Ids,
    host_cpus: usize,
) -> Result<(), MonitorError> {
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
        host_cpus: host_cpus as u64,
    };
    mem.write_obj(layout::BOOT_INFO_ADDR, &info, Access::Monitor)?;
    mem.write_bytes(info.args_addr, &bytes, Access::Monitor)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pool member's warm-up runs its guest and leaves the VM as `Prebuilt::new` built it:
    /// the same system state, the pages it used zero, a vCPU that can run again.
    #[test]
    fn a_warm_up_leaves_the_vm_as_it_was_built() {
        let mut p = Prebuilt::new(layout::MIN_MEM_SIZE, None).expect("a VM on /dev/kvm");
        let before = p.vcpu.get_sregs().unwrap();
        p.prefill_image_area();
        for round in 0..2 {
            p.warm_up().unwrap_or_else(|e| panic!("warm-up {round}: {e}"));
            assert_eq!(
                p.vcpu.get_sregs().unwrap(),
                before,
                "system state after warm-up {round}"
            );
            let mut used = vec![1u8; arch::WARM_UP_GUEST_SIZE as usize];
            p.mem
                .read_bytes(WARM_UP_CODE, &mut used, Access::Monitor)
                .unwrap();
            assert!(
                used.iter().all(|&b| b == 0),
                "warm-up {round} left bytes in guest RAM"
            );
        }
    }

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
        assert_eq!(parse_mem_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_mem_size("64 mb"), Ok(64 << 20));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert_eq!(parse_size("2KiB"), Ok(2048));
        assert_eq!(parse_size("512"), Ok(512));
        // Refused in the unit typed.
        let too_large = parse_mem_size("1T").unwrap_err().to_string();
        let max = max_mem_size();
        let want = if max >= 1 << 40 {
            format!("{}T", max >> 40)
        } else {
            format!("{}G", max >> 30)
        };
        assert!(
            too_large.starts_with(&format!("memory size 1T is too large: at most {want} (")),
            "{too_large}"
        );
        let e = parse_mem_size("100000G").unwrap_err().to_string();
        assert!(
            e.contains("100000G is too large: at most ") && e.contains("G ("),
            "{e}"
        );
        let e = parse_mem_size("2M").unwrap_err().to_string();
        assert_eq!(e, "memory size 2M is too small: a pVM needs at least 8M");
    }
}
