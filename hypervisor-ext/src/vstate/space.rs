//! The guest address space, with one owner: which ranges the guest sees and how (its page
//! tables and the matching [`GuestView`] come from one list of ranges), and which KVM memory
//! slot backs each guest-physical range (guest RAM, and the regions added while the pVM runs).
//!
//! The page tables are built once, at boot, and never edited afterwards: a window that will hold
//! regions later (the IPC window) is mapped whole at boot, unbacked, and a region added at run
//! time is only a new memory slot inside it. (On PVM's shadow paging, host edits of a running
//! guest's page tables go stale; on hardware KVM they would need a TLB shootdown.)
//!
//! Memory slots: slot 0 is guest RAM; slot `1 + i` is region `i` of the IPC window, at
//! `IPC_BASE + i * IPC_SLOT_SIZE`; in a pVM that may load libraries, two more slots cover the
//! library windows whole ([`LibWindows`]): the code window (read-only to KVM, mapped read +
//! execute in the page tables) and the data window (read-write, not executable). Their host
//! memory is a reservation that libraries fill and empty in place (`mmap` over it): loading or
//! replacing a library changes no memory slot (on PVM, deleting a slot costs 80-170 us and
//! drops the shadow page tables), and the guest reading a part no library fills ends it with a
//! report. A forked child re-registers all of them in its new VM ([`Space::register_all`]):
//! the kernel then shares RAM and the private library parts copy-on-write, and the shared
//! mappings as they are.
use std::ptr::NonNull;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use pvm_abi::layout;

use super::memory::{GuestMemory, GuestRange, GuestView};
use super::KvmError;
use crate::arch::{self, PageTables, Perm};
use crate::loader::{self, Image};
use crate::sys;

/// Memory slot of guest RAM.
pub const RAM_SLOT: u32 = 0;

/// Most regions of the IPC window (one slot each).
pub const MAX_REGIONS: usize = (layout::IPC_SIZE / layout::IPC_SLOT_SIZE) as usize;

/// Memory slot of the library code window.
const LIB_CODE_SLOT: u32 = RAM_SLOT + 1 + MAX_REGIONS as u32;
/// Memory slot of the library data window.
const LIB_DATA_SLOT: u32 = LIB_CODE_SLOT + 1;
/// Most libraries of one pVM.
pub const MAX_LIBS: usize = layout::MAX_LIBS as usize;

/// KVM_MEM_READONLY: guest writes to the slot exit instead of landing.
const KVM_MEM_READONLY: u32 = 1 << 1;

/// Host memory of the library windows: two reservations of `LIB_WINDOW_SIZE` bytes, one per
/// window, registered as one memory slot each.
#[derive(Clone, Copy, Debug)]
pub struct LibWindows {
    code: NonNull<u8>,
    data: NonNull<u8>,
}

// SAFETY: the addresses of two reservations the monitor holds for its life; a value of this
// type only computes addresses in them (a helper thread fills a slot the guest does not use).
unsafe impl Send for LibWindows {}

impl LibWindows {
    /// Host address of guest address `gpa` in the windows, with `len` bytes after it inside
    /// the same window.
    pub fn host(&self, gpa: u64, len: u64) -> Option<NonNull<u8>> {
        let end = gpa.checked_add(len)?;
        let inside = |base: u64| gpa >= base && end <= base + layout::LIB_WINDOW_SIZE;
        let (host, base) = if inside(layout::LIB_CODE_BASE) {
            (self.code, layout::LIB_CODE_BASE)
        } else if inside(layout::LIB_DATA_BASE) {
            (self.data, layout::LIB_DATA_BASE)
        } else {
            return None;
        };
        // SAFETY: `gpa - base` is inside the window, so inside its reservation.
        Some(unsafe { host.add((gpa - base) as usize) })
    }
}

/// Registers the library windows' two memory slots (both deleted on failure).
fn register_windows(vm: &VmFd, w: &LibWindows) -> Result<(), kvm_ioctls::Error> {
    let size = layout::LIB_WINDOW_SIZE;
    set_slot_flags(
        vm,
        LIB_CODE_SLOT,
        KVM_MEM_READONLY,
        layout::LIB_CODE_BASE,
        size,
        w.code.as_ptr() as u64,
    )?;
    if let Err(e) = set_slot(
        vm,
        LIB_DATA_SLOT,
        layout::LIB_DATA_BASE,
        size,
        w.data.as_ptr() as u64,
    ) {
        let _ = set_slot(vm, LIB_CODE_SLOT, layout::LIB_CODE_BASE, 0, 0);
        return Err(e);
    }
    Ok(())
}

/// Guest address of library slot `index`'s code part.
pub fn lib_code_base(index: usize) -> u64 {
    layout::LIB_CODE_BASE + index as u64 * layout::LIB_SLOT_SIZE
}
/// A region added at run time: `size` bytes of a host mapping at `host`, in a slot of the IPC
/// window.
#[derive(Clone, Copy, Debug)]
struct Region {
    size: u64,
    host: NonNull<u8>,
}

/// Why a region cannot be added.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpaceError {
    /// Every slot of the window is in use.
    #[error("every slot of the IPC window is in use")]
    Full,
    /// The region is empty or larger than a slot.
    #[error("a region of {0} bytes does not fit a slot")]
    Size(u64),
    /// KVM refused the slot (errno).
    #[error("KVM refused the memory slot (errno {0})")]
    Kvm(i32),
}

/// The guest address space of one pVM.
pub struct Space {
    cr3: u64,
    regions: Vec<Option<Region>>,
    libs: Option<LibWindows>,
}

/// Guest address of IPC region `index`.
pub fn region_gpa(index: usize) -> u64 {
    layout::IPC_BASE + index as u64 * layout::IPC_SLOT_SIZE
}

fn set_slot(vm: &VmFd, slot: u32, gpa: u64, size: u64, host: u64) -> Result<(), kvm_ioctls::Error> {
    set_slot_flags(vm, slot, 0, gpa, size, host)
}

fn set_slot_flags(
    vm: &VmFd,
    slot: u32,
    flags: u32,
    gpa: u64,
    size: u64,
    host: u64,
) -> Result<(), kvm_ioctls::Error> {
    let region = kvm_userspace_memory_region {
        slot,
        flags,
        guest_phys_addr: gpa,
        memory_size: size,
        userspace_addr: host,
    };
    // SAFETY: every slot set here lies in a mapping that outlives it: guest RAM (dropped after
    // the VM), a region's or a library part's mapping (its slot is deleted, size 0, before it is
    // unmapped); slots never overlap (RAM below IPC_BASE, one IPC slot per IPC_SLOT_SIZE, library
    // parts inside their library's LIB_SLOT_SIZE in the code or data window). Deleting touches
    // no memory.
    super::retry_interrupted(|| unsafe { vm.set_user_memory_region(region) })
}

impl Space {
    /// Lays out the address space of a pVM with `image` in `mem`: writes the page tables (W^X
    /// per segment; the reserved area supervisor-only; the hypercall window; the whole IPC
    /// window, unbacked) and gives `mem` the guest's view of itself, both from one list of
    /// ranges.
    pub fn build(mem: &mut GuestMemory, image: &Image) -> Result<Space, arch::ArchError> {
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
        pt.map(
            layout::IPC_BASE,
            layout::IPC_BASE,
            layout::IPC_SIZE,
            Perm::USER_RW,
        )?;
        // The library windows, backed later library by library: code read + execute (never
        // writable), data read-write (never executable).
        pt.map(
            layout::LIB_CODE_BASE,
            layout::LIB_CODE_BASE,
            layout::LIB_WINDOW_SIZE,
            Perm::USER_RX,
        )?;
        pt.map(
            layout::LIB_DATA_BASE,
            layout::LIB_DATA_BASE,
            layout::LIB_WINDOW_SIZE,
            Perm::USER_RW,
        )?;
        let cr3 = pt.root();
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
        mem.set_view(view);
        Ok(Space {
            cr3,
            regions: Vec::new(),
            libs: None,
        })
    }

    /// The page-table root (for CR3).
    pub fn cr3(&self) -> u64 {
        self.cr3
    }

    /// Registers guest RAM as slot 0 at guest-physical `[RESERVED_START, size)`. Page 0 is left
    /// out on purpose: it is the hypercall window, and an access there exits as MMIO.
    pub fn register_ram(vm: &VmFd, mem: &GuestMemory) -> Result<(), KvmError> {
        set_slot(
            vm,
            RAM_SLOT,
            layout::RESERVED_START,
            mem.size() - layout::RESERVED_START,
            mem.host_base() + layout::RESERVED_START,
        )
        .map_err(KvmError::ioctl("KVM_SET_USER_MEMORY_REGION"))
    }

    /// Removes guest RAM's slot and registers it again: KVM discards every shadow page it built
    /// for it (a pool member's warm-up guest, whose page tables were guest RAM).
    pub fn reregister_ram(vm: &VmFd, mem: &GuestMemory) -> Result<(), KvmError> {
        set_slot(vm, RAM_SLOT, layout::RESERVED_START, 0, 0)
            .map_err(KvmError::ioctl("KVM_SET_USER_MEMORY_REGION (remove)"))?;
        Self::register_ram(vm, mem)
    }

    /// Adds a region of `size` bytes mapped at `host` to the IPC window of `vm`; returns its
    /// index and guest address. The mapping must outlive the region ([`Space::remove`]).
    pub fn add(&mut self, vm: &VmFd, host: NonNull<u8>, size: u64) -> Result<(usize, u64), SpaceError> {
        if size == 0 || size > layout::IPC_SLOT_SIZE {
            return Err(SpaceError::Size(size));
        }
        let index = match self.regions.iter().position(Option::is_none) {
            Some(i) => i,
            None if self.regions.len() < MAX_REGIONS => {
                self.regions.push(None);
                self.regions.len() - 1
            }
            None => return Err(SpaceError::Full),
        };
        let gpa = region_gpa(index);
        set_slot(vm, RAM_SLOT + 1 + index as u32, gpa, size, host.as_ptr() as u64)
            .map_err(|e| SpaceError::Kvm(e.errno()))?;
        self.regions[index] = Some(Region { size, host });
        Ok((index, gpa))
    }

    /// Removes region `index` from `vm` (its mapping may be unmapped afterwards).
    pub fn remove(&mut self, vm: &VmFd, index: usize) {
        if self.regions.get_mut(index).and_then(Option::take).is_some() {
            let _ = set_slot(vm, RAM_SLOT + 1 + index as u32, region_gpa(index), 0, 0);
        }
    }

    /// Reserves the library windows' host memory and registers their memory slots (once: a
    /// pVM that may load libraries, at boot).
    pub fn enable_libraries(&mut self, vm: &VmFd) -> Result<LibWindows, SpaceError> {
        if let Some(w) = self.libs {
            return Ok(w);
        }
        let size = layout::LIB_WINDOW_SIZE as usize;
        let code =
            sys::reserve(size).map_err(|e| SpaceError::Kvm(e.raw_os_error().unwrap_or(libc::ENOMEM)))?;
        let data = match sys::reserve(size) {
            Ok(d) => d,
            Err(e) => {
                // SAFETY: our own fresh reservation, no slot over it.
                unsafe { sys::unmap(code, size) };
                return Err(SpaceError::Kvm(e.raw_os_error().unwrap_or(libc::ENOMEM)));
            }
        };
        let windows = LibWindows { code, data };
        self.libs = Some(windows);
        if let Err(e) = register_windows(vm, &windows) {
            self.libs = None;
            // SAFETY: our own reservations; their slots were deleted (or never made).
            unsafe {
                sys::unmap(code, size);
                sys::unmap(data, size);
            }
            return Err(SpaceError::Kvm(e.errno()));
        }
        Ok(windows)
    }

    /// The library windows, if this pVM may load libraries.
    pub fn libraries(&self) -> Option<LibWindows> {
        self.libs
    }

    /// Registers guest RAM and every region in a new VM (a forked child's).
    pub fn register_all(&self, vm: &VmFd, mem: &GuestMemory) -> Result<(), KvmError> {
        Self::register_ram(vm, mem)?;
        for (index, region) in self.regions.iter().enumerate() {
            if let Some(r) = region {
                set_slot(
                    vm,
                    RAM_SLOT + 1 + index as u32,
                    region_gpa(index),
                    r.size,
                    r.host.as_ptr() as u64,
                )
                .map_err(KvmError::ioctl("KVM_SET_USER_MEMORY_REGION (IPC region)"))?;
            }
        }
        if let Some(w) = &self.libs {
            register_windows(vm, w)
                .map_err(KvmError::ioctl("KVM_SET_USER_MEMORY_REGION (library window)"))?;
        }
        Ok(())
    }
}
