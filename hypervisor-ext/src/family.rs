//! A pVM's place in its family: ids, limits, children and how their ends are collected.
//!
//! Every pVM of a family is a host process forked (directly or not) from the family's root
//! monitor, so Unix process relations carry pVM relations: a pVM's children are its monitor's
//! child processes, `wait` is `waitpid`, and the root monitor is a subreaper that collects
//! orphans. Each child monitor writes an [`OutcomeRecord`] into a pipe to its parent before it
//! exits; a child that left none died of a host signal.
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};

use pvm_abi::wait_kind;

use crate::outcome::{Crash, Outcome};
use crate::registry::{EntryHandle, HostCounter, Registry};

/// Errors of family bookkeeping.
#[derive(Debug, thiserror::Error)]
pub enum FamilyError {
    /// A host resource for the family could not be created.
    #[error("cannot set up the pVM family: {0}")]
    Setup(std::io::Error),
}

/// A pVM's ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ids {
    /// This pVM (its monitor's pid).
    pub id: u32,
    /// Its parent, 0 for a root.
    pub parent: u32,
    /// Its family (the root's id).
    pub family: u32,
}

/// Limits on the number of pVMs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Live pVMs in one family, the root included.
    pub per_family: u32,
    /// Live pVMs on the host (entries in the runtime directory).
    pub per_host: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            per_family: 1024,
            per_host: 4096,
        }
    }
}

/// The family's live-pVM counter, in a page shared by every monitor of the family (an anonymous
/// shared mapping made by the root and inherited by fork; it is not guest memory).
pub struct FamilyCounter {
    live: &'static AtomicU32,
}

impl FamilyCounter {
    /// A new counter for a root, which counts itself.
    pub fn new() -> Result<FamilyCounter, FamilyError> {
        // SAFETY: a fresh anonymous shared page; nothing else refers to it.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(FamilyError::Setup(std::io::Error::last_os_error()));
        }
        // SAFETY: the page is zeroed, aligned and never unmapped (it lives as long as the
        // process), so a 'static AtomicU32 at its start is valid and shared across fork.
        let live = unsafe { &*(p as *const AtomicU32) };
        live.store(1, Ordering::SeqCst);
        Ok(FamilyCounter { live })
    }

    /// Counts one more pVM unless that would pass `max`.
    pub fn try_acquire(&self, max: u32) -> bool {
        self.live
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < max).then_some(n + 1))
            .is_ok()
    }

    /// Counts one pVM less (it was reaped).
    pub fn release(&self) {
        let _ = self
            .live
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    }

    /// Live pVMs of the family.
    pub fn live(&self) -> u32 {
        self.live.load(Ordering::SeqCst)
    }
}

/// What a child monitor tells its parent about its end.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutcomeRecord {
    /// A [`wait_kind`] value.
    pub kind: u64,
    /// Exit code, exception vector (256 for non-exception crashes) or signal number.
    pub code: i64,
    /// Faulting address of a crash.
    pub fault_addr: u64,
    /// Faulting instruction of a crash.
    pub rip: u64,
}

impl OutcomeRecord {
    const SIZE: usize = 32;

    /// The record for `outcome`.
    pub fn of(outcome: &Outcome) -> OutcomeRecord {
        match outcome {
            Outcome::Exited(code) => OutcomeRecord {
                kind: wait_kind::EXITED,
                code: i64::from(*code),
                ..Default::default()
            },
            Outcome::Crashed(Crash::Exception(e)) => OutcomeRecord {
                kind: wait_kind::CRASHED,
                code: e.vector as i64,
                fault_addr: e.fault_addr,
                rip: e.rip,
            },
            Outcome::Crashed(_) => OutcomeRecord {
                kind: wait_kind::CRASHED,
                code: 256,
                ..Default::default()
            },
            Outcome::Signaled(sig) => OutcomeRecord {
                kind: wait_kind::KILLED,
                code: i64::from(*sig),
                ..Default::default()
            },
        }
    }

    fn to_bytes(self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[0..8].copy_from_slice(&self.kind.to_le_bytes());
        b[8..16].copy_from_slice(&self.code.to_le_bytes());
        b[16..24].copy_from_slice(&self.fault_addr.to_le_bytes());
        b[24..32].copy_from_slice(&self.rip.to_le_bytes());
        b
    }

    fn from_bytes(b: &[u8; Self::SIZE]) -> OutcomeRecord {
        let word = |i: usize| {
            u64::from_le_bytes([
                b[i],
                b[i + 1],
                b[i + 2],
                b[i + 3],
                b[i + 4],
                b[i + 5],
                b[i + 6],
                b[i + 7],
            ])
        };
        OutcomeRecord {
            kind: word(0),
            code: word(8) as i64,
            fault_addr: word(16),
            rip: word(24),
        }
    }

    /// The record for a child that left none: what its `waitpid` status says.
    pub fn from_wait_status(status: i32) -> OutcomeRecord {
        if libc::WIFSIGNALED(status) {
            OutcomeRecord {
                kind: wait_kind::KILLED,
                code: i64::from(libc::WTERMSIG(status)),
                ..Default::default()
            }
        } else {
            OutcomeRecord {
                kind: wait_kind::EXITED,
                code: i64::from(libc::WEXITSTATUS(status)),
                ..Default::default()
            }
        }
    }
}

/// A child pVM of this monitor, not yet waited for.
pub struct ChildRecord {
    /// Its id.
    pub id: u32,
    /// Read end of its outcome pipe.
    outcome: File,
}

/// A new pipe for a child's outcome: (read end for the parent, write end for the child).
pub fn outcome_pipe() -> std::io::Result<(File, File)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe {
        (
            File::from(OwnedFd::from_raw_fd(fds[0])),
            File::from(OwnedFd::from_raw_fd(fds[1])),
        )
    })
}

/// Family state of one monitor process.
pub struct Family {
    /// This pVM's ids.
    pub ids: Ids,
    /// Limits on pVM counts.
    pub limits: Limits,
    /// The family counter (shared).
    pub counter: FamilyCounter,
    /// The runtime directory.
    pub registry: Registry,
    /// The host-wide pVM counter of the runtime directory.
    pub host: HostCounter,
    /// This pVM's registry entry.
    pub entry: Option<EntryHandle>,
    /// Children not yet waited for.
    pub children: Vec<ChildRecord>,
    /// Write end of the pipe to the parent's monitor (children only).
    pub to_parent: Option<File>,
}

impl Family {
    /// Whether one more pVM may be forked; counts it if so.
    pub fn admit_fork(&self) -> bool {
        if !self.host.try_acquire(self.limits.per_host, &self.registry) {
            return false;
        }
        if !self.counter.try_acquire(self.limits.per_family) {
            self.host.release();
            return false;
        }
        true
    }

    /// Gives back what [`Family::admit_fork`] counted (the fork failed).
    pub fn unadmit_fork(&self) {
        self.counter.release();
        self.host.release();
    }

    /// In the parent after fork: remember the child.
    pub fn add_child(&mut self, id: u32, outcome: File) {
        self.children.push(ChildRecord { id, outcome });
    }

    /// In the child after fork: become pVM `id`, child of the previous one. The parent's
    /// children are not ours: their pipes are closed (the parent keeps its own copies).
    pub fn become_child(&mut self, id: u32, to_parent: File) {
        // Close the parent's children's pipes without freeing the list: freeing would write the
        // heap and so copy pages that are otherwise still shared with the parent.
        for child in &self.children {
            // SAFETY: closes this process's copy of an fd owned by the (forgotten) list.
            unsafe { libc::close(child.outcome.as_raw_fd()) };
        }
        std::mem::forget(std::mem::take(&mut self.children));
        self.entry = None;
        self.ids = Ids {
            id,
            parent: self.ids.id,
            family: self.ids.family,
        };
        self.to_parent = Some(to_parent);
    }

    /// Tells the parent (if any) how this pVM ended.
    pub fn report_outcome(&mut self, outcome: &Outcome) {
        if let Some(mut pipe) = self.to_parent.take() {
            let _ = pipe.write_all(&OutcomeRecord::of(outcome).to_bytes());
        }
    }

    /// Collects an ended process `pid` with `waitpid` status `status`: for a child of ours, its
    /// outcome; for an orphan of the family (reaped by the root), `None` after the bookkeeping;
    /// for any other process (a teardown helper), nothing.
    pub fn collect(&mut self, pid: u32, status: i32) -> Collected {
        if let Some(i) = self.children.iter().position(|c| c.id == pid) {
            let mut child = self.children.swap_remove(i);
            let mut buf = [0u8; OutcomeRecord::SIZE];
            let record = match child.outcome.read_exact(&mut buf) {
                Ok(()) => OutcomeRecord::from_bytes(&buf),
                Err(_) => OutcomeRecord::from_wait_status(status),
            };
            self.registry.remove(pid);
            self.unadmit_fork();
            return Collected::Child(pid, record);
        }
        match self.registry.read(pid) {
            Some(entry) if entry.family == self.ids.family => {
                self.registry.remove(pid);
                self.unadmit_fork();
                let outcome = entry.outcome.unwrap_or_else(|| describe_wait_status(status));
                Collected::Orphan(pid, outcome)
            }
            _ => Collected::Other,
        }
    }

    /// Whether `id` is a child not yet waited for.
    pub fn has_child(&self, id: u32) -> bool {
        self.children.iter().any(|c| c.id == id)
    }

    /// The outcome-pipe fds of the children (closed in a forked child).
    pub fn child_fds(&self) -> impl Iterator<Item = i32> + '_ {
        self.children.iter().map(|c| c.outcome.as_raw_fd())
    }
}

/// What [`Family::collect`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Collected {
    /// One of our children ended.
    Child(u32, OutcomeRecord),
    /// An orphan of the family ended (root only); how, in words.
    Orphan(u32, String),
    /// Not a pVM.
    Other,
}

/// An outcome record in words.
pub fn describe_record(r: &OutcomeRecord) -> String {
    match r.kind {
        wait_kind::EXITED => format!("exited with status {}", r.code),
        wait_kind::CRASHED if r.code == 256 => "crashed".to_string(),
        wait_kind::CRASHED => format!(
            "crashed (vector {}, address {:#x}, rip {:#x})",
            r.code, r.fault_addr, r.rip
        ),
        _ => format!("killed by signal {}", r.code),
    }
}

/// A `waitpid` status in words.
pub fn describe_wait_status(status: i32) -> String {
    if libc::WIFSIGNALED(status) {
        format!("killed by signal {}", libc::WTERMSIG(status))
    } else {
        format!("exited with status {}", libc::WEXITSTATUS(status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_enforces_its_limit_and_survives_fork() {
        let c = FamilyCounter::new().unwrap();
        assert!(c.try_acquire(3));
        assert!(c.try_acquire(3));
        assert!(!c.try_acquire(3));
        c.release();
        assert_eq!(c.live(), 2);
    }

    #[test]
    fn outcome_records_round_trip() {
        let r = OutcomeRecord {
            kind: wait_kind::CRASHED,
            code: 14,
            fault_addr: 0x1000,
            rip: 0x20_1234,
        };
        assert_eq!(OutcomeRecord::from_bytes(&r.to_bytes()), r);
        let killed = OutcomeRecord::from_wait_status(9);
        assert_eq!((killed.kind, killed.code), (wait_kind::KILLED, 9));
        let exited = OutcomeRecord::from_wait_status(3 << 8);
        assert_eq!((exited.kind, exited.code), (wait_kind::EXITED, 3));
    }
}
