//! IPC regions and handles of one pVM, monitor side.
//!
//! A region is a memfd mapped `MAP_SHARED` in the monitor and registered as its own KVM memory
//! slot inside the guest's IPC window (the guest page tables map the whole window at boot, so
//! adding a region changes no guest page table). A forked child inherits the mapping and the
//! memfd with the process and registers the same slots in its new VM: the region stays shared.
//!
//! A pipe is a ring in such a region (see `pvm_ipc`) plus two host pipes used only to sleep
//! and wake: the reader sleeps on `data` (the writer notifies into it), the writer on `space`.
//! Every monitor whose pVM holds a write end holds `data`'s write fd, and the kernel closes it
//! however that monitor ends: so a reader's sleep ends with a hangup exactly when no writer is
//! left anywhere (end of file), even if the writers were killed with SIGKILL, and likewise for
//! a writer when no reader is left (broken pipe). The monitor never reads the ring itself.
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use pvm_abi::{errno, layout};

use crate::vstate::vm::RAM_SLOT;

/// Most regions one pVM maps (the IPC window's slots).
pub const MAX_REGIONS: usize = (layout::IPC_SIZE / layout::IPC_SLOT_SIZE) as usize;

struct Region {
    size: u64,
    host: NonNull<u8>,
    _memfd: OwnedFd,
    /// Handles of this pVM that use the region.
    refs: u32,
}

/// Which end of a pipe a handle is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    Read,
    Write,
}

struct Handle {
    region: usize,
    _end: End,
    /// Where this end sleeps (read end of a host pipe).
    wait: OwnedFd,
    /// Where this end wakes its peer (write end of the other host pipe).
    notify: OwnedFd,
}

/// How a sleep on a handle ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Woken {
    /// The peer notified: look at the ring again.
    Notified,
    /// The peer end is closed everywhere.
    PeerGone,
    /// A signal interrupted the sleep.
    Interrupted,
}

/// The regions and handles of one pVM.
#[derive(Default)]
pub struct Ipc {
    regions: Vec<Option<Region>>,
    handles: Vec<Option<Handle>>,
}

fn slot_of(index: usize) -> u32 {
    RAM_SLOT + 1 + index as u32
}

/// Guest address of region `index`.
pub fn region_gpa(index: usize) -> u64 {
    layout::IPC_BASE + index as u64 * layout::IPC_SLOT_SIZE
}

fn last_errno() -> i64 {
    i64::from(
        std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO),
    )
}

fn host_pipe() -> Result<(OwnedFd, OwnedFd), i64> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
        return Err(-errno::EAGAIN);
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn register(vm: &VmFd, index: usize, region: &Region) -> Result<(), i64> {
    let mr = kvm_userspace_memory_region {
        slot: slot_of(index),
        flags: 0,
        guest_phys_addr: region_gpa(index),
        memory_size: region.size,
        userspace_addr: region.host.as_ptr() as u64,
    };
    // SAFETY: the mapping stays alive while the slot exists (the slot is removed before unmap),
    // and the slot lies in the IPC window, which no other slot overlaps.
    unsafe { vm.set_user_memory_region(mr) }.map_err(|_| -errno::EIO)
}

fn unregister(vm: &VmFd, index: usize) {
    let mr = kvm_userspace_memory_region {
        slot: slot_of(index),
        flags: 0,
        guest_phys_addr: region_gpa(index),
        memory_size: 0,
        userspace_addr: 0,
    };
    // SAFETY: deleting a slot (size 0) touches no memory.
    let _ = unsafe { vm.set_user_memory_region(mr) };
}

impl Ipc {
    /// Creates a region of `size` bytes (at most one IPC slot), registers it in `vm`, and
    /// returns its index and host address.
    fn create_region(&mut self, vm: &VmFd, size: u64) -> Result<(usize, NonNull<u8>), i64> {
        if size > layout::IPC_SLOT_SIZE {
            return Err(-errno::EINVAL);
        }
        let index = match self.regions.iter().position(Option::is_none) {
            Some(i) => i,
            None if self.regions.len() < MAX_REGIONS => {
                self.regions.push(None);
                self.regions.len() - 1
            }
            None => return Err(-errno::EAGAIN),
        };
        // SAFETY: memfd_create with a NUL-terminated name.
        let fd = unsafe { libc::memfd_create(c"pvm-ipc".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(-last_errno());
        }
        // SAFETY: fd was just created and is owned by nobody else.
        let memfd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: ftruncate on our own memfd.
        if unsafe { libc::ftruncate(memfd.as_raw_fd(), size as libc::off_t) } != 0 {
            return Err(-errno::ENOMEM);
        }
        // SAFETY: a fresh shared mapping of the whole memfd; nothing aliases it yet.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                memfd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(-errno::ENOMEM);
        }
        let host = NonNull::new(p.cast::<u8>()).ok_or(-errno::ENOMEM)?;
        let region = Region {
            size,
            host,
            _memfd: memfd,
            refs: 0,
        };
        if let Err(e) = register(vm, index, &region) {
            // SAFETY: unmapping the mapping just made.
            unsafe { libc::munmap(p, size as usize) };
            return Err(e);
        }
        self.regions[index] = Some(region);
        Ok((index, host))
    }

    fn add_handle(&mut self, handle: Handle) -> u64 {
        if let Some(r) = self.regions[handle.region].as_mut() {
            r.refs += 1;
        }
        match self.handles.iter().position(Option::is_none) {
            Some(i) => {
                self.handles[i] = Some(handle);
                i as u64
            }
            None => {
                self.handles.push(Some(handle));
                self.handles.len() as u64 - 1
            }
        }
    }

    /// Creates a pipe with `capacity` bytes of ring; returns (read handle, write handle, ring
    /// guest address) or a negated errno.
    pub fn create_pipe(&mut self, vm: &VmFd, capacity: u64) -> Result<(u64, u64, u64), i64> {
        if !pvm_ipc::valid_pipe_capacity(capacity) {
            return Err(-errno::EINVAL);
        }
        let (data_wait, data_notify) = host_pipe()?;
        let (space_wait, space_notify) = host_pipe()?;
        let (index, host) = self.create_region(vm, pvm_ipc::PIPE_DATA_OFFSET as u64 + capacity)?;
        // SAFETY: the region is fresh (zeroed by the memfd), page-aligned and large enough.
        unsafe { pvm_ipc::Pipe::init(host.as_ptr(), capacity) };
        let r = self.add_handle(Handle {
            region: index,
            _end: End::Read,
            wait: data_wait,
            notify: space_notify,
        });
        let w = self.add_handle(Handle {
            region: index,
            _end: End::Write,
            wait: space_wait,
            notify: data_notify,
        });
        Ok((r, w, region_gpa(index)))
    }

    fn handle(&self, handle: u64) -> Option<&Handle> {
        self.handles.get(usize::try_from(handle).ok()?)?.as_ref()
    }

    /// Wakes the peer of `handle`. Returns 0 or `-EBADF`.
    pub fn notify(&self, handle: u64) -> i64 {
        let Some(h) = self.handle(handle) else {
            return -errno::EBADF;
        };
        // SAFETY: writes one byte from a local to our own non-blocking pipe fd; a full pipe
        // (EAGAIN) already holds a wake-up, a closed peer (EPIPE) needs none.
        unsafe { libc::write(h.notify.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
        0
    }

    /// Sleeps until the peer of `handle` notifies or is gone, or `interrupted()` says a signal
    /// needs attention (checked with the signals blocked, so none is lost).
    pub fn wait(&self, handle: u64, interrupted: impl Fn() -> bool) -> Result<Woken, i64> {
        let h = self.handle(handle).ok_or(-errno::EBADF)?;
        let fd = h.wait.as_raw_fd();
        let revents = crate::signals::poll_unless(fd, interrupted);
        let Some(revents) = revents else {
            return Ok(Woken::Interrupted);
        };
        if revents & libc::POLLIN != 0 {
            let mut buf = [0u8; 64];
            // SAFETY: reads into a local buffer from our own non-blocking fd until it is empty.
            while unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
            return Ok(Woken::Notified);
        }
        Ok(Woken::PeerGone)
    }

    /// Closes `handle`; a region no handle uses any more is removed from `vm` and unmapped.
    pub fn close(&mut self, vm: &VmFd, handle: u64) -> i64 {
        let Some(h) = usize::try_from(handle)
            .ok()
            .and_then(|i| self.handles.get_mut(i))
            .and_then(Option::take)
        else {
            return -errno::EBADF;
        };
        let index = h.region;
        drop(h);
        let unused = self.regions[index].as_mut().is_some_and(|r| {
            r.refs -= 1;
            r.refs == 0
        });
        if unused {
            unregister(vm, index);
            if let Some(r) = self.regions[index].take() {
                // SAFETY: the slot using the mapping is gone; nothing else refers to it.
                unsafe { libc::munmap(r.host.as_ptr().cast(), r.size as usize) };
            }
        }
        0
    }

    /// Registers every region in a new VM (a forked child's).
    pub fn register_all(&self, vm: &VmFd) -> Result<(), i64> {
        for (index, region) in self.regions.iter().enumerate() {
            if let Some(region) = region {
                register(vm, index, region)?;
            }
        }
        Ok(())
    }
}
