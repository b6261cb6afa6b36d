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
//! `IPC_BASE + i * IPC_SLOT_SIZE`; slots `LIB_SLOTS + 3 * i + p` are the parts `p` of library
//! `i` (shared, RELRO, data: the first two read-only to KVM, in the code window mapped read +
//! execute; the data in the data window, read-write and not executable). A forked child
//! re-registers all of them in its new VM ([`Space::register_all`]): the kernel then shares RAM
//! and the private library parts copy-on-write, and the shared mappings as they are.
use std::ptr::NonNull;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use pvm_abi::layout;

use super::memory::{GuestMemory, GuestRange, GuestView};
use super::KvmError;
use crate::arch::{self, PageTables, Perm};
use crate::loader::{self, Image};

/// Memory slot of guest RAM.
pub const RAM_SLOT: u32 = 0;

/// Most regions of the IPC window (one slot each).
pub const MAX_REGIONS: usize = (layout::IPC_SIZE / layout::IPC_SLOT_SIZE) as usize;

/// First memory slot of the libraries.
const LIB_SLOTS: u32 = RAM_SLOT + 1 + MAX_REGIONS as u32;
/// Memory slots per library (shared part, RELRO, data).
pub const PARTS_PER_LIB: usize = 3;
/// Most libraries of one pVM.
pub const MAX_LIBS: usize = layout::MAX_LIBS as usize;

/// KVM_MEM_READONLY: guest writes to the slot exit instead of landing.
const KVM_MEM_READONLY: u32 = 1 << 1;

/// One memory slot of a library: `size` bytes at guest-physical `gpa`, from `host`.
#[derive(Clone, Copy, Debug)]
pub struct LibPart {
    /// Guest-physical (and virtual) address.
    pub gpa: u64,
    /// Size (a whole number of pages).
    pub size: u64,
    /// Host mapping (owned by the library; it outlives the slot).
    pub host: NonNull<u8>,
    /// Read-only to the guest (and to KVM).
    pub read_only: bool,
}

// SAFETY: a description of a mapping (an address), not access to it: its owner (a `Prepared`
// library, which moves with it from the update's helper thread) keeps the mapping alive.
unsafe impl Send for LibPart {}

/// Registers the parts of library `index` in `vm` (checked: each inside the library's slot of
/// the code or data window, page-aligned); on failure, none stays registered. The caller
/// records them ([`Space::adopt_library`]) and keeps their mappings alive while registered.
pub fn register_library(vm: &VmFd, index: usize, parts: &[LibPart]) -> Result<(), SpaceError> {
    if index >= MAX_LIBS || parts.len() > PARTS_PER_LIB {
        return Err(SpaceError::LibraryPart(index));
    }
    let code = lib_code_base(index)..lib_code_base(index) + layout::LIB_SLOT_SIZE;
    let data = code.start + layout::LIB_DATA_OFFSET..code.end + layout::LIB_DATA_OFFSET;
    for part in parts {
        let end = part
            .gpa
            .checked_add(part.size)
            .ok_or(SpaceError::LibraryPart(index))?;
        let inside = |r: &std::ops::Range<u64>| part.gpa >= r.start && end <= r.end;
        let aligned = part.gpa % layout::PAGE_SIZE == 0 && part.size % layout::PAGE_SIZE == 0;
        if part.size == 0 || !aligned || !(inside(&code) || inside(&data)) {
            return Err(SpaceError::LibraryPart(index));
        }
    }
    for (p, part) in parts.iter().enumerate() {
        let slot = LIB_SLOTS + (index * PARTS_PER_LIB + p) as u32;
        let flags = if part.read_only { KVM_MEM_READONLY } else { 0 };
        if let Err(e) = set_slot_flags(vm, slot, flags, part.gpa, part.size, part.host.as_ptr() as u64) {
            for (q, done) in parts.iter().enumerate().take(p) {
                let _ = set_slot(vm, LIB_SLOTS + (index * PARTS_PER_LIB + q) as u32, done.gpa, 0, 0);
            }
            return Err(SpaceError::Kvm(e.errno()));
        }
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
    /// A library's part is outside its slot, misaligned, or the slot is taken.
    #[error("library slot {0} is taken, or a part of it is outside the slot or misaligned")]
    LibraryPart(usize),
    /// KVM refused the slot (errno).
    #[error("KVM refused the memory slot (errno {0})")]
    Kvm(i32),
}

/// The guest address space of one pVM.
pub struct Space {
    cr3: u64,
    regions: Vec<Option<Region>>,
    libs: Vec<[Option<LibPart>; PARTS_PER_LIB]>,
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
    unsafe { vm.set_user_memory_region(region) }
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
            libs: vec![[None; PARTS_PER_LIB]; MAX_LIBS],
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

    /// A free library slot, if any.
    pub fn free_library_slot(&self, taken: impl Fn(usize) -> bool) -> Option<usize> {
        (0..MAX_LIBS).find(|&i| self.libs[i].iter().all(Option::is_none) && !taken(i))
    }

    /// Registers the parts of library `index` (at most [`PARTS_PER_LIB`], inside its slot of
    /// the code or data window). On failure nothing stays registered.
    pub fn add_library(&mut self, vm: &VmFd, index: usize, parts: &[LibPart]) -> Result<(), SpaceError> {
        if self.libs.get(index).is_none_or(|p| p.iter().any(Option::is_some)) {
            return Err(SpaceError::LibraryPart(index));
        }
        register_library(vm, index, parts)?;
        self.adopt_library(index, parts);
        Ok(())
    }

    /// Records parts of library `index` that [`register_library`] registered (a helper thread
    /// did, while the vCPU ran).
    pub fn adopt_library(&mut self, index: usize, parts: &[LibPart]) {
        if let Some(slots) = self.libs.get_mut(index) {
            for (p, part) in parts.iter().enumerate().take(PARTS_PER_LIB) {
                slots[p] = Some(*part);
            }
        }
    }

    /// Removes the memory slots of library `index` (its mappings may be unmapped afterwards).
    pub fn remove_library(&mut self, vm: &VmFd, index: usize) {
        let Some(parts) = self.libs.get_mut(index) else {
            return;
        };
        for (p, part) in parts.iter_mut().enumerate() {
            if let Some(part) = part.take() {
                let slot = LIB_SLOTS + (index * PARTS_PER_LIB + p) as u32;
                let _ = set_slot(vm, slot, part.gpa, 0, 0);
            }
        }
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
        for (index, parts) in self.libs.iter().enumerate() {
            for (p, part) in parts.iter().enumerate() {
                if let Some(part) = part {
                    let slot = LIB_SLOTS + (index * PARTS_PER_LIB + p) as u32;
                    let flags = if part.read_only { KVM_MEM_READONLY } else { 0 };
                    set_slot_flags(vm, slot, flags, part.gpa, part.size, part.host.as_ptr() as u64)
                        .map_err(KvmError::ioctl("KVM_SET_USER_MEMORY_REGION (library)"))?;
                }
            }
        }
        Ok(())
    }
}
