//! Guest RAM: one private anonymous mapping, shared copy-on-write with a forked monitor by the
//! host kernel. Every access the monitor makes to guest memory goes through [`GuestMemory::translate`].
use std::ptr::NonNull;

use pvm_abi::{layout, Plain};

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
    #[error("guest range {addr:#x}+{len:#x} is outside the pVM's memory")]
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
    /// An address or length that came from the guest: only the app's part of RAM (image, heap,
    /// stack), never the reserved area holding page tables, GDT, IDT and stubs. So a hypercall
    /// can never be used to write what the guest itself may not write.
    Guest,
}

/// Guest RAM, mapped in the monitor and registered with KVM as memory slot 0 (guest-physical
/// `[RESERVED_START, size)`; page 0 stays unbacked: it is the hypercall window).
pub struct GuestMemory {
    base: NonNull<u8>,
    size: u64,
}

impl GuestMemory {
    /// Maps `size` bytes of zeroed, private, anonymous memory (small pages until
    /// [`GuestMemory::advise_huge_pages`]).
    pub fn new(size: u64) -> Result<GuestMemory, MemoryError> {
        let map_err = |source| MemoryError::Map { size, source };
        let len = usize::try_from(size).map_err(|_| map_err(std::io::ErrorKind::InvalidInput.into()))?;
        // SAFETY: a fresh anonymous mapping with no address hint; it aliases nothing. Private (not
        // MAP_SHARED) so that fork() shares it copy-on-write; NORESERVE so untouched RAM costs nothing.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(map_err(std::io::Error::last_os_error()));
        }
        let base = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| map_err(std::io::ErrorKind::Other.into()))?;
        Ok(GuestMemory { base, size })
    }

    /// Advises transparent huge pages for the whole 2 MiB chunks inside `[start, end)`. A huge
    /// page costs a 2 MiB clear on first touch but makes fork copy one entry instead of 512:
    /// worth it for the heap of a big app, not for the few pages every pVM touches at boot.
    pub fn advise_huge_pages(&self, start: u64, end: u64) {
        let large = layout::LARGE_PAGE_SIZE;
        let start = start.div_ceil(large) * large;
        let end = end.min(self.size) / large * large;
        if start < end {
            // SAFETY: advising a page-aligned range inside our own mapping; failure (THP disabled)
            // is harmless.
            unsafe {
                libc::madvise(
                    self.base.as_ptr().add(start as usize).cast(),
                    (end - start) as usize,
                    libc::MADV_HUGEPAGE,
                )
            };
        }
    }

    /// Faults in `[start, end)` (page-aligned) ahead of use with one call: cheaper than a page
    /// fault per page where faults are expensive (a host that is itself a VM). Best effort.
    pub fn populate(&self, start: u64, end: u64) {
        let end = end.min(self.size);
        if start < end {
            // SAFETY: a range inside our own mapping; MADV_POPULATE_WRITE only faults pages in.
            unsafe {
                libc::madvise(
                    self.base.as_ptr().add(start as usize).cast(),
                    (end - start) as usize,
                    libc::MADV_POPULATE_WRITE,
                )
            };
        }
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
        let lowest = match access {
            Access::Monitor => layout::RESERVED_START,
            Access::Guest => layout::IMAGE_BASE,
        };
        let end = addr
            .checked_add(len)
            .ok_or(MemoryError::OutOfBounds { addr, len })?;
        if addr < lowest || end > self.size {
            return Err(MemoryError::OutOfBounds { addr, len });
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

    /// Reads a plain struct from guest memory (a copy: later guest writes do not affect it).
    pub fn read_obj<T: Plain>(&self, addr: u64, access: Access) -> Result<T, MemoryError> {
        let src = self.translate(addr, size_of::<T>() as u64, access)?;
        // SAFETY: translate checked the range; T is Plain, so any bytes form a valid T, and an
        // unaligned read is used because the guest chooses the address.
        Ok(unsafe { std::ptr::read_unaligned(src.as_ptr().cast::<T>()) })
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
        // SAFETY: unmapping the mapping created in new(); no reference into it outlives self.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.size as usize) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translation_checks_bounds_and_policy() {
        let mem = GuestMemory::new(layout::MIN_MEM_SIZE).unwrap();
        let top = mem.size();
        assert!(mem.translate(layout::IMAGE_BASE, 16, Access::Guest).is_ok());
        assert!(mem.translate(top - 8, 8, Access::Guest).is_ok());
        assert!(mem.translate(top - 8, 9, Access::Guest).is_err());
        assert!(mem.translate(u64::MAX - 4, 16, Access::Guest).is_err());
        assert!(mem.translate(layout::IDT_ADDR, 16, Access::Guest).is_err());
        assert!(mem.translate(layout::IDT_ADDR, 16, Access::Monitor).is_ok());
        assert!(mem.translate(0, 8, Access::Monitor).is_err());
    }

    #[test]
    fn objects_round_trip() {
        let mem = GuestMemory::new(layout::MIN_MEM_SIZE).unwrap();
        let args = pvm_abi::WriteArgs {
            fd: 1,
            buf: 2,
            len: 3,
            result: -4,
        };
        mem.write_obj(layout::IMAGE_BASE + 3, &args, Access::Guest)
            .unwrap();
        let back: pvm_abi::WriteArgs = mem.read_obj(layout::IMAGE_BASE + 3, Access::Guest).unwrap();
        assert_eq!((back.fd, back.buf, back.len, back.result), (1, 2, 3, -4));
    }
}
