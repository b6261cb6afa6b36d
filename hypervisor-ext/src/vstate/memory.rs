//! Guest RAM: one private anonymous mapping, shared copy-on-write with a forked monitor by the
//! host kernel. Every access the monitor makes to guest memory goes through
//! [`GuestMemory::translate`], which checks an access made for the guest against what the
//! guest itself may do (its [`GuestView`]): a hypercall can read only what the guest can read
//! and write only what it can write, so it can never be used to write the guest's code or
//! read-only data, or the page tables, descriptor tables and stubs the guest cannot reach.
use std::ptr::NonNull;

use pvm_abi::{layout, Plain};

use crate::sys;

/// Errors of guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The host refused the mapping.
    #[error("cannot map {size} bytes of guest memory: {source}")]
    Map {
        /// Requested size.
        size: u64,
        /// The mmap error.
        source: std::io::Error,
    },
    /// An address range is not inside the memory the access may touch.
    #[error("guest range {addr:#x}+{len:#x} is outside what the access may touch")]
    OutOfBounds {
        /// First guest-physical address.
        addr: u64,
        /// Length in bytes.
        len: u64,
    },
}

/// Who an access is made for; decides which guest-physical range it may touch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// The monitor's own bookkeeping: anything in guest RAM (reserved area included).
    Monitor,
    /// A read for the guest (a buffer or struct it passed): only what it may read itself.
    GuestRead,
    /// A write for the guest (an OUT field): only what it may write itself.
    GuestWrite,
}

/// How the guest may access a range of its RAM (what its page tables say at CPL3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestRange {
    /// First address.
    pub start: u64,
    /// End (exclusive).
    pub end: u64,
    /// The guest may write it (it may read every range of the view).
    pub writable: bool,
}

/// What the guest may access at CPL3: sorted, disjoint ranges (anything else it may not).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestView {
    ranges: Vec<GuestRange>,
}

impl GuestView {
    /// A view of `ranges` (any order; overlapping ones are a bug of the caller and refused).
    pub fn new(mut ranges: Vec<GuestRange>) -> Option<GuestView> {
        ranges.retain(|r| r.start < r.end);
        ranges.sort_by_key(|r| r.start);
        if ranges.windows(2).any(|w| w[0].end > w[1].start) {
            return None;
        }
        Some(GuestView { ranges })
    }

    /// Whether the guest may access all of `[start, end)` (`write`: for writing).
    fn allows(&self, start: u64, end: u64, write: bool) -> bool {
        let mut at = start;
        let first = self.ranges.partition_point(|r| r.end <= start);
        for r in &self.ranges[first..] {
            if at >= end {
                break;
            }
            if r.start > at || (write && !r.writable) {
                return false;
            }
            at = r.end;
        }
        at >= end
    }
}

/// Guest memory outside RAM the guest may read (and maybe write) through a hypercall: a
/// loaded library's parts, filled in a library window (`vstate/space.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extra {
    /// First guest address.
    pub start: u64,
    /// End (exclusive).
    pub end: u64,
    /// Host address of `start` (mapped, readable, as long as the range is listed).
    pub host: NonNull<u8>,
    /// The guest may write it.
    pub writable: bool,
}

/// Guest RAM, mapped in the monitor and registered with KVM as memory slot 0 (guest-physical
/// `[RESERVED_START, size)`; page 0 stays unbacked: it is the hypercall window); and the
/// filled parts of the library windows, for hypercall buffers there.
pub struct GuestMemory {
    base: NonNull<u8>,
    size: u64,
    view: GuestView,
    extra: Vec<Extra>,
}

impl GuestMemory {
    /// Maps `size` bytes of zeroed, private, anonymous memory (small pages until
    /// [`GuestMemory::advise_huge_pages`]). The guest may access nothing of it until
    /// [`GuestMemory::set_view`].
    pub fn new(size: u64) -> Result<GuestMemory, MemoryError> {
        let map_err = |source| MemoryError::Map { size, source };
        let len = usize::try_from(size).map_err(|_| map_err(std::io::ErrorKind::InvalidInput.into()))?;
        // Private (not MAP_SHARED) so that fork() shares it copy-on-write; NORESERVE so untouched
        // RAM costs nothing.
        let base = sys::map_private(len).map_err(map_err)?;
        Ok(GuestMemory {
            base,
            size,
            view: GuestView::default(),
            extra: Vec::new(),
        })
    }

    /// Sets the filled parts of the library windows (whenever a library is loaded, closed or
    /// replaced). Each must stay mapped while it is listed.
    pub fn set_extra(&mut self, mut extra: Vec<Extra>) {
        extra.retain(|e| e.start < e.end);
        extra.sort_by_key(|e| e.start);
        self.extra = extra;
    }

    /// Sets what the guest may access (from the same ranges its page tables are built from).
    pub fn set_view(&mut self, view: GuestView) {
        self.view = view;
    }

    fn advise(&self, start: u64, end: u64, advice: sys::Advice) {
        if start < end && end <= self.size {
            // SAFETY: a page-aligned range inside our own mapping.
            unsafe {
                sys::advise(
                    self.base.as_ptr().add(start as usize),
                    (end - start) as usize,
                    advice,
                )
            };
        }
    }

    /// Advises transparent huge pages for the whole 2 MiB chunks inside `[start, end)`. A huge
    /// page costs a 2 MiB clear on first touch but makes fork copy one entry instead of 512:
    /// worth it for the heap of a big app, not for the few pages every pVM touches at boot.
    pub fn advise_huge_pages(&self, start: u64, end: u64) {
        let large = layout::LARGE_PAGE_SIZE;
        let start = start.div_ceil(large) * large;
        let end = end.min(self.size) / large * large;
        self.advise(start, end, sys::Advice::HugePages);
    }

    /// Faults in `[start, end)` (page-aligned) ahead of use with one call: cheaper than a page
    /// fault per page where faults are expensive (a host that is itself a VM). Best effort.
    pub fn populate(&self, start: u64, end: u64) {
        self.advise(start, end.min(self.size), sys::Advice::PopulateWrite);
    }

    /// Size of guest RAM in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Host address of guest-physical address 0 (for KVM memory slots).
    pub fn host_base(&self) -> u64 {
        self.base.as_ptr() as u64
    }

    /// The one bounds-checked translation from a guest-physical range to a host pointer.
    pub fn translate(&self, addr: u64, len: u64, access: Access) -> Result<NonNull<u8>, MemoryError> {
        let out = MemoryError::OutOfBounds { addr, len };
        let end = addr
            .checked_add(len)
            .ok_or(MemoryError::OutOfBounds { addr, len })?;
        if addr >= self.size {
            // Outside RAM: only inside one filled part of a library window.
            let e = self
                .extra
                .iter()
                .find(|e| addr >= e.start && end <= e.end)
                .ok_or(MemoryError::OutOfBounds { addr, len })?;
            // The monitor itself never needs these (and a read-only part must not be written).
            if access == Access::Monitor || (access == Access::GuestWrite && !e.writable) {
                return Err(out);
            }
            // SAFETY: [addr, end) is inside the part, mapped at `host` while it is listed.
            return Ok(unsafe { e.host.add((addr - e.start) as usize) });
        }
        if addr < layout::RESERVED_START || end > self.size {
            return Err(out);
        }
        let allowed = match access {
            Access::Monitor => true,
            Access::GuestRead => self.view.allows(addr, end, false),
            Access::GuestWrite => self.view.allows(addr, end, true),
        };
        if !allowed {
            return Err(out);
        }
        // SAFETY: addr < size, so the offset stays inside the mapping.
        Ok(unsafe { self.base.add(addr as usize) })
    }

    /// Copies `data` into guest memory at `addr`.
    pub fn write_bytes(&self, addr: u64, data: &[u8], access: Access) -> Result<(), MemoryError> {
        let dst = self.translate(addr, data.len() as u64, access)?;
        // SAFETY: translate checked that [addr, addr+len) is inside the mapping; the source is a
        // host slice, which cannot overlap guest RAM.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), dst.as_ptr(), data.len()) };
        Ok(())
    }

    /// Copies `buf.len()` bytes of guest memory at `addr` into `buf`.
    pub fn read_bytes(&self, addr: u64, buf: &mut [u8], access: Access) -> Result<(), MemoryError> {
        let src = self.translate(addr, buf.len() as u64, access)?;
        // SAFETY: translate checked the range; the destination is a host buffer.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    /// A view of guest bytes for the duration of a hypercall (the vCPU is stopped, so the guest
    /// does not change them meanwhile; no other pVM can write private guest RAM).
    pub fn slice(&self, addr: u64, len: u64, access: Access) -> Result<&[u8], MemoryError> {
        let src = self.translate(addr, len, access)?;
        // SAFETY: translate checked the range; the mapping lives as long as `self`.
        Ok(unsafe { std::slice::from_raw_parts(src.as_ptr(), len as usize) })
    }

    /// Reads a plain struct from guest memory (a copy: later guest writes do not affect it).
    pub fn read_obj<T: Plain>(&self, addr: u64, access: Access) -> Result<T, MemoryError> {
        let src = self.translate(addr, size_of::<T>() as u64, access)?;
        // SAFETY: translate checked the range; T is Plain, so any bytes form a valid T, and an
        // unaligned read is used because the guest chooses the address.
        Ok(unsafe { std::ptr::read_unaligned(src.as_ptr().cast::<T>()) })
    }

    /// Writes consecutive plain values into guest memory with one copy.
    pub fn write_slice<T: Plain>(&self, addr: u64, values: &[T], access: Access) -> Result<(), MemoryError> {
        let len = std::mem::size_of_val(values);
        let dst = self.translate(addr, len as u64, access)?;
        // SAFETY: translate checked [addr, addr+len); T is Plain, so its bytes are all it is; the
        // source is a host slice, which cannot overlap guest RAM.
        unsafe { std::ptr::copy_nonoverlapping(values.as_ptr().cast::<u8>(), dst.as_ptr(), len) };
        Ok(())
    }

    /// Writes a plain struct into guest memory.
    pub fn write_obj<T: Plain>(&self, addr: u64, value: &T, access: Access) -> Result<(), MemoryError> {
        let dst = self.translate(addr, size_of::<T>() as u64, access)?;
        // SAFETY: translate checked the range; unaligned write because the guest picks the address.
        unsafe { std::ptr::write_unaligned(dst.as_ptr().cast::<T>(), *value) };
        Ok(())
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping created in new(); no reference into it outlives self,
        // and the monitor drops the VM (its memory slots) before the memory.
        unsafe { sys::unmap(self.base, self.size as usize) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemory {
        let mut mem = GuestMemory::new(layout::MIN_MEM_SIZE).unwrap();
        let top = mem.size();
        let view = GuestView::new(vec![
            GuestRange {
                start: layout::BOOT_INFO_ADDR,
                end: layout::BOOT_INFO_ADDR + layout::PAGE_SIZE,
                writable: false,
            },
            GuestRange {
                start: layout::IMAGE_BASE,
                end: layout::IMAGE_BASE + 0x1000,
                writable: false,
            },
            GuestRange {
                start: layout::IMAGE_BASE + 0x1000,
                end: top,
                writable: true,
            },
        ])
        .unwrap();
        mem.set_view(view);
        mem
    }

    #[test]
    fn translation_checks_bounds_and_the_guests_own_permissions() {
        let mem = mem();
        let top = mem.size();
        let rw = layout::IMAGE_BASE + 0x1000;
        assert!(mem.translate(rw, 16, Access::GuestWrite).is_ok());
        assert!(mem.translate(top - 8, 8, Access::GuestWrite).is_ok());
        assert!(mem.translate(top - 8, 9, Access::GuestRead).is_err());
        assert!(mem.translate(u64::MAX - 4, 16, Access::GuestRead).is_err());
        assert!(mem.translate(layout::IDT_ADDR, 16, Access::GuestRead).is_err());
        assert!(mem.translate(layout::IDT_ADDR, 16, Access::Monitor).is_ok());
        assert!(mem.translate(0, 8, Access::Monitor).is_err());
        // Read-only for the guest: readable for it, never written for it.
        assert!(mem.translate(layout::IMAGE_BASE, 16, Access::GuestRead).is_ok());
        assert!(mem.translate(layout::IMAGE_BASE, 16, Access::GuestWrite).is_err());
        assert!(mem.translate(rw - 8, 16, Access::GuestWrite).is_err());
        assert!(mem.translate(rw - 8, 16, Access::GuestRead).is_ok());
        // The boot block: the guest's own read-only strings.
        assert!(mem
            .translate(layout::BOOT_INFO_ADDR + 100, 8, Access::GuestRead)
            .is_ok());
        assert!(mem
            .translate(layout::BOOT_INFO_ADDR + 100, 8, Access::GuestWrite)
            .is_err());
        // Spanning a hole.
        assert!(mem
            .translate(layout::BOOT_INFO_ADDR, layout::IMAGE_BASE, Access::GuestRead)
            .is_err());
        assert!(GuestView::new(vec![
            GuestRange {
                start: 0x1000,
                end: 0x3000,
                writable: true
            },
            GuestRange {
                start: 0x2000,
                end: 0x4000,
                writable: true
            },
        ])
        .is_none());
    }

    #[test]
    fn objects_round_trip() {
        let mem = mem();
        let at = layout::IMAGE_BASE + 0x1003;
        let args = pvm_abi::WriteArgs {
            fd: 1,
            buf: 2,
            len: 3,
            result: -4,
        };
        mem.write_obj(at, &args, Access::GuestWrite).unwrap();
        let back: pvm_abi::WriteArgs = mem.read_obj(at, Access::GuestRead).unwrap();
        assert_eq!((back.fd, back.buf, back.len, back.result), (1, 2, 3, -4));
    }
}
