//! Leases on the limited host resources pVMs share: a place among the host's live pVMs
//! (`--max-pvms`), one among the family's (`--max-family`), and guest memory out of the budget
//! of all the user's pVMs (`--max-mem-total`). A plain counter leaks a unit for every monitor
//! killed with SIGKILL; these leases cannot.
//!
//! A ledger is a file: the host's is `<run-dir>/ledger`, a family's a memfd its root creates and
//! every member inherits. A lease is an open-file-description (OFD) lock on a range of it, whose
//! length is the pVM's memory in MiB (at least 1), at a position of its own. An OFD lock belongs
//! to one open file description and vanishes when the last descriptor of it is closed, however
//! its holders end: the set of locks *is* the set of live leases, and the kernel answers for it
//! (`F_OFD_GETLK`).
//!
//! Admission runs under the ledger's mutex (another OFD lock, waited for at most a second): it
//! checks a cached count and memory sum kept in the file's first bytes, takes the lease, and
//! updates the cache; a monitor that ends gives its lease back the same way. The cache can only
//! overcount (a monitor killed with SIGKILL never gives back): when it says "full", the ledger is
//! recounted from its locks before anyone is refused. A parent takes its child's lease on fresh
//! descriptions before it forks; the child keeps them and closes its copies of the parent's; the
//! parent closes its copies of the child's. So each lease is held by one monitor.
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::rundir::RunDir;
use crate::sys::{self, Open};

/// File name of the host ledger in the runtime directory.
pub const LEDGER_FILE: &str = "ledger";

/// The mutex byte (a lock only: no data lives there).
const MUTEX: u64 = 1 << 40;
/// Where leases start; lease `slot` is at `LEASES + slot * STRIDE`.
const LEASES: u64 = 1 << 41;
/// Room per lease: more MiB than the largest guest (64 GiB).
const STRIDE: u64 = 1 << 20;
/// Lease positions.
const SLOTS: u64 = 1 << 23;
/// Bytes of the cached counters at the start of the file: live leases, MiB they hold.
const CACHE_SIZE: usize = 16;

/// Errors of the ledger.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The host already runs as many pVMs as its limit.
    #[error("the host runs {0} pVMs already, the limit (--max-pvms)")]
    HostFull(u32),
    /// The family already has as many pVMs as its limit.
    #[error("the family has {0} pVMs already, the limit (--max-family)")]
    FamilyFull(u32),
    /// The user's pVMs hold so much guest memory that this one does not fit.
    #[error("{want} MiB of guest memory do not fit in the {budget} MiB budget of your pVMs, of which {held} MiB are held (--max-mem-total)")]
    Memory {
        /// MiB asked for.
        want: u64,
        /// MiB held by live pVMs.
        held: u64,
        /// The budget in MiB.
        budget: u64,
    },
    /// A ledger file cannot be used.
    #[error("resource ledger: {0}")]
    Io(#[from] io::Error),
}

/// What a lease holds, and the limits it is taken under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Want {
    /// Most live pVMs on the host.
    pub per_host: u32,
    /// Most live pVMs in the family.
    pub per_family: u32,
    /// Guest memory of the pVM, in MiB.
    pub mem_mib: u64,
    /// Most guest memory of all the user's live pVMs, in MiB.
    pub budget_mib: u64,
}

/// What a ledger's live leases hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Live leases (pVMs).
    pub pvms: u64,
    /// MiB of guest memory they hold.
    pub mem_mib: u64,
}

/// A lease held in one ledger: its own open file description and its range.
#[derive(Debug)]
struct Held {
    fd: OwnedFd,
    start: u64,
    len: u64,
}

/// One pVM's lease: a place on the host with its memory, and a place in its family.
#[derive(Debug)]
pub struct Lease {
    host: Held,
    family: Held,
}

/// A family's ledger (a memfd every member inherits).
#[derive(Debug)]
pub struct FamilyLedger {
    memfd: OwnedFd,
}

impl FamilyLedger {
    /// A new ledger for a new family.
    pub fn new() -> io::Result<FamilyLedger> {
        Ok(FamilyLedger {
            memfd: sys::memfd(CACHE_SIZE as u64)?,
        })
    }
}

/// Holds a ledger's mutex until dropped.
struct Mutex<'a>(BorrowedFd<'a>);

/// Longest wait for the mutex (held for a few system calls: only a holder stopped midway, by
/// SIGSTOP or a debugger, makes it wait this long): then admission fails instead of hanging.
const MUTEX_PATIENCE_NS: u64 = 1_000_000_000;

impl<'a> Mutex<'a> {
    fn lock(fd: BorrowedFd<'a>) -> io::Result<Mutex<'a>> {
        let start = sys::monotonic_ns();
        while !sys::lock_range(fd, MUTEX, 1)? {
            if sys::monotonic_ns().saturating_sub(start) > MUTEX_PATIENCE_NS {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "its mutex has been held for a second (by a stopped monitor?)",
                ));
            }
            sys::yield_now();
        }
        Ok(Mutex(fd))
    }
}

impl Drop for Mutex<'_> {
    fn drop(&mut self) {
        let _ = sys::unlock_range(self.0, MUTEX, 1);
    }
}

fn read_cache(fd: BorrowedFd<'_>) -> io::Result<Usage> {
    let bytes = sys::read_prefix(fd, CACHE_SIZE)?;
    let word = |i: usize| {
        bytes
            .get(i..i + 8)
            .map_or(0, |w| u64::from_le_bytes(w.try_into().unwrap_or([0; 8])))
    };
    Ok(Usage {
        pvms: word(0),
        mem_mib: word(8),
    })
}

fn write_cache(fd: BorrowedFd<'_>, usage: Usage) -> io::Result<()> {
    let mut bytes = [0u8; CACHE_SIZE];
    bytes[..8].copy_from_slice(&usage.pvms.to_le_bytes());
    bytes[8..].copy_from_slice(&usage.mem_mib.to_le_bytes());
    sys::write_at(fd, &bytes, 0)
}

/// Counts the live leases of the ledger open as `fd` by asking the kernel for the locks in its
/// lease area: a lock found splits the area in two, each asked again (2n + 1 questions for n
/// leases). Leases are only taken under the mutex (which the caller holds), so none appears
/// meanwhile, and one that stays is found exactly once: the count never misses a live lease
/// (one ending meanwhile may still be counted: an overcount only refuses).
fn recount(fd: BorrowedFd<'_>) -> io::Result<Usage> {
    let mut usage = Usage::default();
    let mut todo = vec![(LEASES, SLOTS * STRIDE)];
    while let Some((start, len)) = todo.pop() {
        let Some((at, held)) = sys::other_lock_in(fd, start, len)? else {
            continue;
        };
        let end = start + len;
        // A lease lies inside one stride; anything else (len 0: to the end of the file) is not
        // a lease of ours, but is stepped over all the same.
        let lock_end = if held == 0 {
            end
        } else {
            at.saturating_add(held).min(end)
        };
        if (LEASES..LEASES + SLOTS * STRIDE).contains(&at) && held > 0 && held <= STRIDE {
            usage.pvms += 1;
            usage.mem_mib += held;
        }
        let at = at.max(start);
        if at > start {
            todo.push((start, at - start));
        }
        if lock_end < end {
            todo.push((lock_end, end - lock_end));
        }
    }
    Ok(usage)
}

/// Takes a lease of `len` bytes in the ledger open as `fd` if `fits(usage)`, under its mutex.
fn take(fd: OwnedFd, len: u64, fits: impl Fn(Usage) -> Result<(), LedgerError>) -> Result<Held, LedgerError> {
    let mutex = Mutex::lock(fd.as_fd())?;
    let mut usage = read_cache(fd.as_fd())?;
    if fits(usage).is_err() {
        // The cache overcounts after SIGKILLs: the locks are the truth.
        usage = recount(fd.as_fd())?;
        write_cache(fd.as_fd(), usage)?;
        fits(usage)?;
    }
    // A position of our own, picked at random (collisions are rare; look further on one).
    let first = sys::monotonic_ns().wrapping_mul(0x9e37_79b9_7f4a_7c15) % SLOTS;
    let mut taken = None;
    for i in 0..SLOTS {
        let start = LEASES + (first + i) % SLOTS * STRIDE;
        if sys::lock_range(fd.as_fd(), start, len)? {
            taken = Some(start);
            break;
        }
    }
    let start = taken.ok_or_else(|| io::Error::from_raw_os_error(libc::ENOSPC))?;
    usage.pvms += 1;
    usage.mem_mib += len;
    write_cache(fd.as_fd(), usage)?;
    drop(mutex);
    Ok(Held { fd, start, len })
}

impl Held {
    /// Gives the lease back: the cache first (under the mutex), then the lock.
    fn release(self) {
        if let Ok(_mutex) = Mutex::lock(self.fd.as_fd()) {
            if let Ok(usage) = read_cache(self.fd.as_fd()) {
                let _ = write_cache(
                    self.fd.as_fd(),
                    Usage {
                        pvms: usage.pvms.saturating_sub(1),
                        mem_mib: usage.mem_mib.saturating_sub(self.len),
                    },
                );
            }
            let _ = sys::unlock_range(self.fd.as_fd(), self.start, self.len);
        }
        // Closing the description releases whatever is left.
    }
}

/// Creates the host ledger if needed and checks it is a regular file of this user (a root does
/// this once; forks then open it without the checks).
pub fn verify(dir: &RunDir) -> io::Result<()> {
    dir.open_file(LEDGER_FILE, Open::Create).map(drop)
}

/// The two open file descriptions a lease holds its locks on (the host's ledger, the family's),
/// fresh ones of its own (locks belong to a description): opened ahead of a fork, they take
/// ~20 us off the parent's pause.
pub struct LeaseFiles {
    host: OwnedFd,
    family: OwnedFd,
}

impl LeaseFiles {
    /// Opens them.
    pub fn open(dir: &RunDir, family: &FamilyLedger) -> io::Result<LeaseFiles> {
        Ok(LeaseFiles {
            host: dir.open_trusted(LEDGER_FILE)?,
            family: sys::reopen(family.memfd.as_fd())?,
        })
    }
}

impl Lease {
    /// Takes a lease for a new pVM: a place on the host with its memory, and one in its family.
    /// On failure nothing is held.
    pub fn acquire(dir: &RunDir, family: &FamilyLedger, want: Want) -> Result<Lease, LedgerError> {
        Self::acquire_on(LeaseFiles::open(dir, family)?, want)
    }

    /// [`Lease::acquire`] on descriptions opened ahead.
    pub fn acquire_on(files: LeaseFiles, want: Want) -> Result<Lease, LedgerError> {
        let mem = want.mem_mib.clamp(1, STRIDE);
        let budget = want.budget_mib;
        let host = take(files.host, mem, |u| {
            if u.pvms >= u64::from(want.per_host) {
                Err(LedgerError::HostFull(want.per_host))
            } else if u.mem_mib.saturating_add(mem) > budget {
                Err(LedgerError::Memory {
                    want: mem,
                    held: u.mem_mib,
                    budget,
                })
            } else {
                Ok(())
            }
        })?;
        let family = match take(files.family, 1, |u| {
            if u.pvms >= u64::from(want.per_family) {
                Err(LedgerError::FamilyFull(want.per_family))
            } else {
                Ok(())
            }
        }) {
            Ok(held) => held,
            Err(e) => {
                host.release();
                return Err(e);
            }
        };
        Ok(Lease { host, family })
    }

    /// Gives the lease back (the pVM ended, or its fork failed). Dropping a lease without this
    /// only closes this process's descriptors: the right thing for the parent's copies of a
    /// forked child's lease.
    pub fn release(self) {
        self.family.release();
        self.host.release();
    }
}

/// What the live leases of the runtime directory `path` hold, counted from the locks (not from
/// the cache).
pub fn usage_of(path: &std::path::Path) -> Result<Usage, crate::rundir::RunDirError> {
    let dir = RunDir::open(path)?;
    let io_err = |source| crate::rundir::RunDirError::Io {
        path: path.join(LEDGER_FILE),
        source,
    };
    match dir.open_file(LEDGER_FILE, Open::Read) {
        Ok(fd) => recount(fd.as_fd()).map_err(io_err),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Usage::default()),
        Err(e) => Err(io_err(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> RunDir {
        let p = std::env::temp_dir().join(format!("pvm-ledger-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        RunDir::open(&p).unwrap()
    }

    fn want(per_host: u32, per_family: u32, mem_mib: u64, budget_mib: u64) -> Want {
        Want {
            per_host,
            per_family,
            mem_mib,
            budget_mib,
        }
    }

    fn usage(dir: &RunDir) -> (u64, u64) {
        let u = usage_of(dir.path()).unwrap();
        (u.pvms, u.mem_mib)
    }

    #[test]
    fn limits_hold_and_leases_given_back_or_dropped_make_room() {
        let _forks = sys::fork_test_lock();
        let dir = scratch("limits");
        let fam = FamilyLedger::new().unwrap();
        let a = Lease::acquire(&dir, &fam, want(2, 8, 64, 1024)).unwrap();
        let b = Lease::acquire(&dir, &fam, want(2, 8, 64, 1024)).unwrap();
        assert!(matches!(
            Lease::acquire(&dir, &fam, want(2, 8, 64, 1024)),
            Err(LedgerError::HostFull(2))
        ));
        assert_eq!(usage(&dir), (2, 128));
        a.release();
        let c = Lease::acquire(&dir, &fam, want(2, 8, 64, 1024)).unwrap();
        // A lease dropped without giving it back (its holder was killed): the cache overcounts,
        // the recount finds the room.
        drop(c);
        let c = Lease::acquire(&dir, &fam, want(2, 8, 64, 1024)).unwrap();
        assert!(matches!(
            Lease::acquire(&dir, &fam, want(9, 2, 64, 1024)),
            Err(LedgerError::FamilyFull(2))
        ));
        // Memory: 128 MiB held of 256; 192 more do not fit, 128 do.
        assert!(matches!(
            Lease::acquire(&dir, &fam, want(9, 9, 192, 256)),
            Err(LedgerError::Memory {
                want: 192,
                held: 128,
                budget: 256
            })
        ));
        let d = Lease::acquire(&dir, &fam, want(9, 9, 128, 256)).unwrap();
        assert_eq!(usage(&dir), (3, 256));
        b.release();
        drop((c, d));
        assert_eq!(usage(&dir), (0, 0));
    }

    #[test]
    fn files_opened_ahead_hold_nothing_until_a_lease_is_taken_on_them() {
        let _forks = sys::fork_test_lock();
        let dir = scratch("ahead");
        let fam = FamilyLedger::new().unwrap();
        let spare = LeaseFiles::open(&dir, &fam).unwrap();
        let unused = LeaseFiles::open(&dir, &fam).unwrap();
        assert_eq!(usage(&dir), (0, 0), "open descriptions are no lease");
        let held = Lease::acquire_on(spare, want(1, 8, 64, 1024)).unwrap();
        assert_eq!(usage(&dir), (1, 64));
        // The limit applies to leases taken on files opened ahead as to any.
        assert!(matches!(
            Lease::acquire_on(unused, want(1, 8, 64, 1024)),
            Err(LedgerError::HostFull(1))
        ));
        held.release();
        assert_eq!(usage(&dir), (0, 0));
    }

    #[test]
    fn a_lease_survives_in_a_forked_child_and_dies_with_it() {
        let _forks = sys::fork_test_lock();
        let dir = scratch("fork");
        let fam = FamilyLedger::new().unwrap();
        let lease = Lease::acquire(&dir, &fam, want(4, 4, 32, 1024)).unwrap();
        let (r, w) = sys::pipe(false).unwrap();
        // SAFETY: the child only closes descriptors, reads a pipe and exits.
        match unsafe { sys::fork() }.unwrap() {
            sys::Forked::Child => {
                drop(w);
                let mut b = [0u8; 1];
                let _ = rustix::io::read(&r, &mut b);
                sys::exit_now(0);
            }
            sys::Forked::Parent(child) => {
                drop(r);
                // The parent's copy goes; the child's keeps the lease.
                drop(lease);
                assert_eq!(usage(&dir), (1, 32));
                drop(w);
                sys::waitpid(Some(child), false).unwrap();
                assert_eq!(usage(&dir), (0, 0));
            }
        }
    }
}
