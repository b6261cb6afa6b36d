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
use std::os::fd::{AsFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use kvm_ioctls::VmFd;
use pvm_abi::{errno, layout};

use crate::rundir::RunDir;
use crate::sys::{self, FutexWake, Open};
use crate::vstate::space::{self, Space, SpaceError};

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

enum Handle {
    /// An end of a pipe.
    Pipe {
        region: usize,
        end: End,
        /// Read end of a host pipe whose write end every holder of the peer end keeps: it
        /// hangs up when the peer end is closed everywhere.
        peer_alive: OwnedFd,
        /// Write end of the host pipe the peer watches the same way (held, never written).
        _alive: OwnedFd,
        /// Offset of the ring in the region (a connection's send ring is its second).
        at: usize,
        /// Rung with every notify when the peer is the network backend (it sleeps in epoll).
        doorbell: Option<Arc<OwnedFd>>,
        /// Rung by the network backend when it wakes this side (what `NetPoll` sleeps on).
        wakeup: Option<Arc<OwnedFd>>,
        /// The ring's capacity.
        capacity: u64,
    },
    /// A named message queue.
    Queue { region: usize },
    /// A named shared-memory region.
    Shm { region: usize },
    /// A TCP listener of the network backend.
    Listener { id: u64 },
}

impl Handle {
    fn region(&self) -> Option<usize> {
        match self {
            Handle::Pipe { region, .. } | Handle::Queue { region } | Handle::Shm { region } => Some(*region),
            Handle::Listener { .. } => None,
        }
    }
}

/// What kind of named object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Named {
    /// A message queue: (capacity, largest message) when creating.
    Queue { capacity: u64, msg_size: u64 },
    /// A shared-memory region: its size when creating.
    Shm { size: u64 },
}

/// What opening a named object gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Opened {
    /// The handle.
    pub handle: u64,
    /// Guest address.
    pub addr: u64,
    /// Queue capacity or region size.
    pub size: u64,
    /// Largest queue message (0 for a region).
    pub msg_size: u64,
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

/// How long one futex sleep lasts at most, so that a signal arriving between the caller's check
/// and the sleep, or a peer dying without a wake-up, is seen soon.
const SLEEP_SLICE_NS: i64 = 10_000_000;

/// Sleep slices after which a sleeper goes back to its guest to look again, even unwoken: a peer
/// that scribbled over the ring's waiter flags or counts (so that nobody wakes the sleeper) only
/// delays it by this much (100 ms), never hangs it.
const SLICES_BEFORE_RECHECK: u32 = 10;

/// Sleeps on the shared futex `word` while it holds `seq`, for at most [`SLEEP_SLICE_NS`]:
/// Ok(Some(())) woken or changed, Ok(None) timed out or interrupted.
fn futex_wait(word: &AtomicU32, seq: u32, interrupted: &impl Fn() -> bool) -> Result<Option<()>, i64> {
    if interrupted() {
        return Ok(None);
    }
    match sys::futex_wait(word, seq, SLEEP_SLICE_NS) {
        Ok(FutexWake::Changed) => Ok(Some(())),
        Ok(FutexWake::TimedOut) => Ok(None),
        Err(_) => Err(-errno::EIO),
    }
}

/// `size` rounded up to whole pages (`u64::MAX` if that overflows: too large for any region).
fn page_round(size: u64) -> u64 {
    size.checked_next_multiple_of(layout::PAGE_SIZE)
        .unwrap_or(u64::MAX)
}

fn host_pipe() -> Result<(OwnedFd, OwnedFd), i64> {
    sys::pipe(true).map_err(|_| -errno::EAGAIN)
}

impl Ipc {
    /// Creates a region of `size` bytes (at most one IPC slot) backed by a new memfd.
    fn create_region(
        &mut self,
        vm: &VmFd,
        space: &mut Space,
        size: u64,
    ) -> Result<(usize, NonNull<u8>), i64> {
        let memfd = sys::memfd(size).map_err(|_| -errno::ENOMEM)?;
        self.map_region(vm, space, memfd, size)
    }

    /// Maps `size` bytes of `file` shared, adds them to the address space as a region, and
    /// returns the region's index and host address.
    fn map_region(
        &mut self,
        vm: &VmFd,
        space: &mut Space,
        file: OwnedFd,
        size: u64,
    ) -> Result<(usize, NonNull<u8>), i64> {
        if size == 0 || size > layout::IPC_SLOT_SIZE {
            return Err(-errno::EINVAL);
        }
        let host = sys::map_file_shared(file.as_fd(), size as usize).map_err(|_| -errno::ENOMEM)?;
        let index = match space.add(vm, host, size) {
            Ok((index, _)) => index,
            Err(e) => {
                // SAFETY: the mapping was just made and no slot uses it.
                unsafe { sys::unmap(host, size as usize) };
                return Err(match e {
                    SpaceError::Full => -errno::EAGAIN,
                    SpaceError::Size(_) => -errno::EINVAL,
                    SpaceError::Kvm(_) => -errno::EIO,
                });
            }
        };
        if self.regions.len() <= index {
            self.regions.resize_with(index + 1, || None);
        }
        self.regions[index] = Some(Region {
            size,
            host,
            _memfd: file,
            refs: 0,
        });
        Ok((index, host))
    }

    /// Opens (or creates, with `create`) the named object `key` of the family with key
    /// `family_key`, whose objects live in `dir` as files named `KIND.KEY@FAMILYKEY`. A key held
    /// by another family that `family_alive` is refused (`EPERM`): objects never cross
    /// families. Files are opened through the verified directory: a planted symbolic link, FIFO
    /// or another user's file is refused, never followed.
    #[allow(clippy::too_many_arguments)]
    pub fn open_named(
        &mut self,
        vm: &VmFd,
        space: &mut Space,
        dir: &RunDir,
        family_key: u64,
        family_alive: &dyn Fn(u64) -> bool,
        key: &[u8],
        create: bool,
        what: Named,
    ) -> Result<Opened, i64> {
        let valid = |b: &u8| b.is_ascii_alphanumeric() || b"._-".contains(b);
        if key.is_empty() || key.len() as u64 > pvm_abi::MAX_KEY_LEN || !key.iter().all(valid) {
            return Err(-errno::EINVAL);
        }
        let kind = match what {
            Named::Queue { .. } => "mq",
            Named::Shm { .. } => "shm",
        };
        let key = std::str::from_utf8(key).map_err(|_| -errno::EINVAL)?;
        let prefix = format!("{kind}.{key}@");
        let ours = format!("{family_key:016x}");
        let names = dir.names().map_err(|_| -errno::EIO)?;
        for owner in names.iter().filter_map(|n| n.strip_prefix(&prefix)) {
            if owner == ours {
                continue;
            }
            // Another family's: refused while that family lives; the key is free once it is
            // gone (its root was killed before it could clean up).
            match u64::from_str_radix(owner, 16) {
                Ok(key) if !family_alive(key) => {
                    let _ = dir.remove(&format!("{prefix}{owner}"));
                }
                _ => return Err(-errno::EPERM),
            }
        }
        let name = format!("{prefix}{ours}");
        let refused = |e: std::io::Error| match e.raw_os_error() {
            Some(libc::ENOENT) => -errno::ENOENT,
            Some(libc::ELOOP) | Some(libc::EPERM) | Some(libc::EINVAL) | Some(libc::EACCES) => -errno::EPERM,
            _ => -errno::EIO,
        };
        let (file, fresh) = match dir.open_file(&name, Open::ReadWrite) {
            Ok(f) => (f, false),
            Err(e) if !create || e.raw_os_error() != Some(libc::ENOENT) => return Err(refused(e)),
            Err(_) => match dir.open_file(&name, Open::Exclusive) {
                Ok(f) => (f, true),
                // Another pVM of the family created it meanwhile.
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                    (dir.open_file(&name, Open::ReadWrite).map_err(refused)?, false)
                }
                Err(e) => return Err(refused(e)),
            },
        };
        let (size, capacity, msg_size) = if fresh {
            let (size, capacity, msg_size) = match what {
                Named::Queue { capacity, msg_size } if pvm_ipc::valid_queue(capacity, msg_size) => (
                    page_round(pvm_ipc::queue_region_size(capacity, msg_size)),
                    capacity,
                    msg_size,
                ),
                Named::Shm { size } if size > 0 && size <= layout::IPC_SLOT_SIZE => {
                    (page_round(size), size, 0)
                }
                _ => {
                    let _ = dir.remove(&name);
                    return Err(-errno::EINVAL);
                }
            };
            if size > layout::IPC_SLOT_SIZE || sys::set_len(file.as_fd(), size).is_err() {
                let _ = dir.remove(&name);
                return Err(-errno::EINVAL);
            }
            (size, capacity, msg_size)
        } else {
            let len = sys::fstat(file.as_fd()).map_err(|_| -errno::EIO)?.st_size as u64;
            (len, 0, 0)
        };
        let (index, host) = self.map_region(vm, space, file, size)?;
        let (capacity, msg_size) = match what {
            Named::Queue { .. } if fresh => {
                // SAFETY: a fresh, zeroed, page-aligned region of the queue's size.
                unsafe { pvm_ipc::Queue::init(host.as_ptr(), capacity, msg_size) };
                (capacity, msg_size)
            }
            Named::Queue { .. } => {
                // An existing queue: its geometry comes from its header, which any pVM of the
                // family may have scribbled over; it must match the file.
                // SAFETY: the header lies at the start of the mapping; fields are atomic.
                let h = unsafe { &*(host.as_ptr() as *const pvm_ipc::QueueHeader) };
                let (c, m) = (
                    h.capacity.load(Ordering::Acquire),
                    h.msg_size.load(Ordering::Acquire),
                );
                if !pvm_ipc::valid_queue(c, m) || page_round(pvm_ipc::queue_region_size(c, m)) != size {
                    self.drop_unused(vm, space, index);
                    return Err(-errno::EINVAL);
                }
                (c, m)
            }
            Named::Shm { .. } => (size, 0),
        };
        let handle = match what {
            Named::Queue { .. } => Handle::Queue { region: index },
            Named::Shm { .. } => Handle::Shm { region: index },
        };
        let handle = self.add_handle(handle);
        Ok(Opened {
            handle,
            addr: space::region_gpa(index),
            size: capacity,
            msg_size,
        })
    }

    /// The futex word of `side` of queue `handle`.
    fn queue_word(&self, handle: u64, side: u64) -> Option<&AtomicU32> {
        let Some(Handle::Queue { region }) = self.handle(handle) else {
            return None;
        };
        let offset = if side == pvm_abi::mq_side::RECV {
            pvm_ipc::QUEUE_RECV_SEQ_OFFSET
        } else {
            pvm_ipc::QUEUE_SEND_SEQ_OFFSET
        };
        self.word(*region, offset)
    }

    /// Sleeps while `side`'s futex word of queue `handle` still holds `seq`, or until
    /// `interrupted()`; Ok(true) when woken or changed, Ok(false) when interrupted.
    pub fn queue_wait(
        &self,
        handle: u64,
        side: u64,
        seq: u32,
        interrupted: impl Fn() -> bool,
    ) -> Result<bool, i64> {
        let word = self.queue_word(handle, side).ok_or(-errno::EBADF)?;
        for _ in 0..SLICES_BEFORE_RECHECK {
            match futex_wait(word, seq, &interrupted)? {
                Some(()) => return Ok(true),
                None if interrupted() => return Ok(false),
                None => {}
            }
        }
        Ok(true)
    }

    /// Wakes every sleeper of `side` of queue `handle`.
    pub fn queue_wake(&self, handle: u64, side: u64) -> i64 {
        let Some(word) = self.queue_word(handle, side) else {
            return -errno::EBADF;
        };
        sys::futex_wake(word);
        0
    }

    fn drop_unused(&mut self, vm: &VmFd, space: &mut Space, index: usize) {
        if self.regions[index].as_ref().is_some_and(|r| r.refs == 0) {
            space.remove(vm, index);
            if let Some(r) = self.regions[index].take() {
                // SAFETY: the slot using the mapping is gone; nothing else refers to it.
                unsafe { sys::unmap(r.host, r.size as usize) };
            }
        }
    }

    fn add_handle(&mut self, handle: Handle) -> u64 {
        if let Some(r) = handle.region().and_then(|i| self.regions[i].as_mut()) {
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
    pub fn create_pipe(
        &mut self,
        vm: &VmFd,
        space: &mut Space,
        capacity: u64,
    ) -> Result<(u64, u64, u64), i64> {
        if !pvm_ipc::valid_pipe_capacity(capacity) {
            return Err(-errno::EINVAL);
        }
        let (reader_alive_r, reader_alive_w) = host_pipe()?;
        let (writer_alive_r, writer_alive_w) = host_pipe()?;
        let (index, host) = self.create_region(vm, space, pvm_ipc::PIPE_DATA_OFFSET as u64 + capacity)?;
        // SAFETY: the region is fresh (zeroed by the memfd), page-aligned and large enough.
        unsafe { pvm_ipc::Pipe::init(host.as_ptr(), capacity) };
        let r = self.add_handle(Handle::Pipe {
            region: index,
            end: End::Read,
            peer_alive: writer_alive_r,
            _alive: reader_alive_w,
            at: 0,
            doorbell: None,
            wakeup: None,
            capacity,
        });
        let w = self.add_handle(Handle::Pipe {
            region: index,
            end: End::Write,
            peer_alive: reader_alive_r,
            _alive: writer_alive_w,
            at: 0,
            doorbell: None,
            wakeup: None,
            capacity,
        });
        Ok((r, w, space::region_gpa(index)))
    }

    /// A handle for listener `id` of the network backend.
    pub fn add_listener(&mut self, id: u64) -> u64 {
        self.add_handle(Handle::Listener { id })
    }

    /// The backend's id of listener `handle`.
    pub fn listener(&self, handle: u64) -> Option<u64> {
        match self.handle(handle)? {
            Handle::Listener { id } => Some(*id),
            _ => None,
        }
    }

    /// Installs a TCP connection the backend handed over: its region, and a pipe end on each
    /// ring (reading the receive ring, writing the send ring); returns (read handle, write
    /// handle, guest address of the region).
    pub fn add_connection(
        &mut self,
        vm: &VmFd,
        space: &mut Space,
        conn: crate::net::Conn,
    ) -> Result<(u64, u64, u64), i64> {
        let capacity = conn.capacity;
        if capacity != pvm_ipc::NET_RING_CAPACITY {
            return Err(-errno::EIO);
        }
        let fds = conn.fds;
        let size = pvm_ipc::net_region_size(capacity);
        let (index, _) = self.map_region(vm, space, fds.region, size)?;
        let doorbell = Some(Arc::new(fds.doorbell));
        let wakeup = Some(Arc::new(fds.wakeup));
        let r = self.add_handle(Handle::Pipe {
            region: index,
            end: End::Read,
            peer_alive: fds.rx_peer_alive,
            _alive: fds.rx_alive,
            at: 0,
            doorbell: doorbell.clone(),
            wakeup: wakeup.clone(),
            capacity,
        });
        let w = self.add_handle(Handle::Pipe {
            region: index,
            end: End::Write,
            peer_alive: fds.tx_peer_alive,
            _alive: fds.tx_alive,
            at: pvm_ipc::net_tx_offset(capacity) as usize,
            doorbell,
            wakeup,
            capacity,
        });
        Ok((r, w, space::region_gpa(index)))
    }

    /// Which of `events` (`pvm_abi::poll_events`) pipe or connection end `handle` is ready
    /// for: READ (bytes, or no writer left), WRITE (room, or no reader left), HUP (the peer
    /// end is gone); INVALID if it is no such end (listeners are the network's to answer).
    pub fn readiness(&self, handle: u64, events: u64) -> u64 {
        use pvm_abi::poll_events::{HUP, INVALID, READ, WRITE};
        let Some(Handle::Pipe {
            region,
            end,
            at,
            capacity,
            peer_alive,
            ..
        }) = self.handle(handle)
        else {
            return INVALID;
        };
        let Some(r) = self.regions.get(*region).and_then(Option::as_ref) else {
            return INVALID;
        };
        if *at as u64 + pvm_ipc::PIPE_DATA_OFFSET as u64 + capacity > r.size {
            return INVALID;
        }
        // SAFETY: the ring lies inside the region's live shared mapping (checked above); every
        // value read from it is checked (`Pipe` reports a corrupt ring, never reads outside).
        let ring = unsafe { pvm_ipc::Pipe::attach(r.host.as_ptr().add(*at), *capacity) };
        let (want, level) = match end {
            End::Read => (READ, ring.readable()),
            End::Write => (WRITE, ring.writable()),
        };
        if events & want == 0 {
            return 0;
        }
        match level {
            Ok(0) if sys::hung_up(peer_alive.as_fd()) => want | HUP,
            Ok(0) => 0,
            Ok(_) => want,
            // A scribbled ring: the guest's own operation reports it.
            Err(_) => want | HUP,
        }
    }

    /// The descriptors the network backend rings for `handle`'s side (what a poll sleeps on).
    pub fn wakeup(&self, handle: u64) -> Option<&OwnedFd> {
        match self.handle(handle)? {
            Handle::Pipe { wakeup, .. } => wakeup.as_deref(),
            _ => None,
        }
    }

    /// The futex word at `offset` in region `index`.
    fn word(&self, index: usize, offset: usize) -> Option<&AtomicU32> {
        let region = self.regions.get(index)?.as_ref()?;
        if offset + 4 > region.size as usize || !offset.is_multiple_of(4) {
            return None;
        }
        // SAFETY: an aligned word inside the region's shared mapping, which lives as long as the
        // region (and so as long as `&self`); guests and monitors access it only atomically.
        Some(unsafe { sys::futex_word(region.host.as_ptr().add(offset).cast()) })
    }

    /// The futex words (this end sleeps on, this end wakes) of pipe `handle`.
    fn pipe_words(&self, handle: u64) -> Option<(&AtomicU32, &AtomicU32, &OwnedFd)> {
        let Some(Handle::Pipe {
            region,
            end,
            peer_alive,
            at,
            ..
        }) = self.handle(handle)
        else {
            return None;
        };
        let (data, space) = (pvm_ipc::PIPE_DATA_SEQ_OFFSET, pvm_ipc::PIPE_SPACE_SEQ_OFFSET);
        let (mine, theirs) = if *end == End::Read {
            (data, space)
        } else {
            (space, data)
        };
        Some((
            self.word(*region, at + mine)?,
            self.word(*region, at + theirs)?,
            peer_alive,
        ))
    }

    fn handle(&self, handle: u64) -> Option<&Handle> {
        self.handles.get(usize::try_from(handle).ok()?)?.as_ref()
    }

    /// Wakes the peer of pipe `handle` (sleeping on its futex word). Returns 0 or `-EBADF`.
    pub fn notify(&self, handle: u64) -> i64 {
        let Some((_, theirs, _)) = self.pipe_words(handle) else {
            return -errno::EBADF;
        };
        sys::futex_wake(theirs);
        if let Some(Handle::Pipe {
            doorbell: Some(bell), ..
        }) = self.handle(handle)
        {
            sys::ring(bell.as_fd());
        }
        0
    }

    /// Sleeps while this end's futex word of pipe `handle` holds `seq`, until the peer is gone,
    /// or until `interrupted()`.
    pub fn wait(&self, handle: u64, seq: u32, interrupted: impl Fn() -> bool) -> Result<Woken, i64> {
        let (mine, _, peer_alive) = self.pipe_words(handle).ok_or(-errno::EBADF)?;
        let peer_gone = || sys::hung_up(peer_alive.as_fd());
        for _ in 0..SLICES_BEFORE_RECHECK {
            if peer_gone() {
                return Ok(Woken::PeerGone);
            }
            match futex_wait(mine, seq, &interrupted)? {
                Some(()) => return Ok(Woken::Notified),
                None if interrupted() => return Ok(Woken::Interrupted),
                // A timeout: look at the peer's liveness again (a SIGKILLed peer wakes nobody).
                None => {}
            }
        }
        Ok(Woken::Notified)
    }

    /// Closes `handle`; a region no handle uses any more is removed from `vm` and unmapped.
    pub fn close(&mut self, vm: &VmFd, space: &mut Space, handle: u64) -> i64 {
        let Some(h) = usize::try_from(handle)
            .ok()
            .and_then(|i| self.handles.get_mut(i))
            .and_then(Option::take)
        else {
            return -errno::EBADF;
        };
        let Some(index) = h.region() else {
            return 0;
        };
        let pipe_at = match &h {
            Handle::Pipe { at, .. } => Some(*at),
            _ => None,
        };
        drop(h);
        // Sleepers on a pipe look again (and see whether their peer is gone).
        for offset in [pvm_ipc::PIPE_DATA_SEQ_OFFSET, pvm_ipc::PIPE_SPACE_SEQ_OFFSET] {
            if let Some(word) = pipe_at.and_then(|at| self.word(index, at + offset)) {
                sys::futex_wake(word);
            }
        }
        if let Some(r) = self.regions[index].as_mut() {
            r.refs = r.refs.saturating_sub(1);
        }
        self.drop_unused(vm, space, index);
        0
    }
}
