//! The monitor: builds a pVM from an image and runs its vCPU loop.
use std::time::{Duration, Instant};

use kvm_bindings::kvm_vcpu_events;
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use pvm_abi::{layout, BootInfo, Hypercall, ABI_VERSION, BOOT_MAGIC};

use crate::arch::{self, PageTables, Perm};
use crate::hypercall;
use crate::loader::{self, Image, LoadError};
use crate::outcome::{Crash, Exception, Outcome};
use crate::vstate::memory::{Access, GuestMemory, MemoryError};
use crate::vstate::vcpu::{self, EntryState};
use crate::vstate::{self, vm, KvmError};

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

/// One pVM: its KVM VM, vCPU and guest memory. Fields drop in order: vCPU and VM before memory.
pub struct Monitor {
    vcpu: VcpuFd,
    _vm: VmFd,
    mem: GuestMemory,
    _kvm: Kvm,
    times: BootTimes,
}

impl Monitor {
    /// Builds a pVM for `image`, ready to run.
    pub fn new(image: &Image, config: &MonitorConfig) -> Result<Monitor, MonitorError> {
        check_mem_size(config.mem_size)?;
        image.check_fits(config.mem_size)?;
        let kvm = vstate::open_kvm()?;
        let mem = GuestMemory::new(config.mem_size)?;
        // Huge pages for the heap, away from the chunks touched at boot (reserved area, image, stack).
        mem.advise_huge_pages(image.end(), loader::image_limit(config.mem_size));
        let create_vm = Instant::now();
        // The supported CPUID comes from a second thread while this one builds the VM; the
        // thread is joined before the monitor runs (and long before any fork).
        let (cpuid, built) = std::thread::scope(|s| {
            let cpuid = s.spawn(|| vcpu::supported_cpuid(&kvm));
            let built = Self::build_vm(&kvm, &mem, image, &config.args);
            (
                cpuid
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                built,
            )
        });
        let (vm, vcpu, cr3) = built?;
        let entry = EntryState {
            rip: image.entry,
            rsp: mem.size(),
            rdi: layout::BOOT_INFO_ADDR,
            cr3,
        };
        vcpu::setup_vcpu(&vcpu, &cpuid?, &entry)?;
        Ok(Monitor {
            vcpu,
            _vm: vm,
            mem,
            _kvm: kvm,
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
    ) -> Result<(VmFd, VcpuFd, u64), MonitorError> {
        let vm = vm::create_vm(kvm, mem)?;
        let vcpu = vcpu::create_vcpu(&vm)?;
        image.load(mem)?;
        let cr3 = build_address_space(mem, image)?;
        arch::write_descriptor_tables(mem)?;
        write_boot_info(mem, image, args)?;
        Ok((vm, vcpu, cr3))
    }

    /// Boot timestamps.
    pub fn boot_times(&self) -> BootTimes {
        self.times
    }

    /// Runs the pVM until it exits, crashes or a stop signal (SIGINT, SIGTERM, SIGHUP) arrives.
    pub fn run(&mut self) -> Result<Outcome, MonitorError> {
        vcpu::arm_kick(&mut self.vcpu);
        let outcome = self.run_loop();
        vcpu::disarm_kick();
        outcome
    }

    fn run_loop(&mut self) -> Result<Outcome, MonitorError> {
        loop {
            if let Some(sig) = vcpu::pending_signal() {
                return Ok(Outcome::Signaled(sig));
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
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    self.vcpu.set_kvm_immediate_exit(0);
                    continue;
                }
                Err(e) => return Err(MonitorError::Run(e)),
            };
            if self.times.first_hypercall.is_none() {
                self.times.first_hypercall = Some(Instant::now());
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
            };
            match result {
                Ok(None) => {}
                Ok(Some(outcome)) => return Ok(outcome),
                Err(crash) => return Ok(Outcome::Crashed(crash)),
            }
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
    Ok(pt.root())
}

fn write_boot_info(mem: &GuestMemory, image: &Image, args: &[String]) -> Result<(), MonitorError> {
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
        pvm_id: u64::from(std::process::id()),
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
