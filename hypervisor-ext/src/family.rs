//! A pVM's place in its family: ids, limits, children, how their ends are collected, and which
//! pVMs a guest may name.
//!
//! Every pVM of a family is a host process forked (directly or not) from the family's root
//! monitor, so Unix process relations carry pVM relations: a pVM's children are its monitor's
//! child processes, `wait` is `waitpid`, and the root monitor is a subreaper that collects
//! orphans. Each child monitor writes an [`OutcomeRecord`] into a pipe to its parent before it
//! exits; a child that left none died of a host signal.
//!
//! A family is identified by a random key chosen by its root ([`Ids::family_key`]), not by the
//! root's pid: pids are recycled, and a new family whose root got the pid of a gone root must
//! not be taken for the old one (whose members may still run).
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};

use pvm_abi::wait_kind;

use crate::ledger::{FamilyLedger, Lease, LeaseFiles, LedgerError, Want};
use crate::outcome::{Crash, Outcome};
use crate::registry::{EntryHandle, Registry, SignalError};
use crate::sys;

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
    /// Its family (the root's id), for people.
    pub family: u32,
    /// Its family's unique key, for checks.
    pub family_key: u64,
}

/// Limits on pVMs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Live pVMs in one family, the root included.
    pub per_family: u32,
    /// Live pVMs on the host (of this runtime directory).
    pub per_host: u32,
    /// Guest memory of all live pVMs of the runtime directory, in bytes.
    pub mem_total: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            per_family: 1024,
            per_host: 4096,
            mem_total: default_mem_total(),
        }
    }
}

/// The default budget of guest memory across a user's pVMs: the host's RAM, so that together
/// they can never be promised more than the host has, whatever they touch.
pub fn default_mem_total() -> u64 {
    sys::host_ram()
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
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(w)
        };
        OutcomeRecord {
            kind: word(0),
            code: word(8) as i64,
            fault_addr: word(16),
            rip: word(24),
        }
    }

    /// The record for a child that left none: what its `waitpid` status says.
    pub fn from_wait_status(status: sys::WaitStatus) -> OutcomeRecord {
        match status.signal() {
            Some(sig) => OutcomeRecord {
                kind: wait_kind::KILLED,
                code: i64::from(sig),
                ..Default::default()
            },
            None => OutcomeRecord {
                kind: wait_kind::EXITED,
                code: i64::from(status.code()),
                ..Default::default()
            },
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
    let (r, w) = sys::pipe(false)?;
    Ok((File::from(r), File::from(w)))
}

/// A pVM id a guest passed, checked: what it may be signalled as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KillTarget {
    /// The pVM itself.
    Myself,
    /// A child not yet waited for (its pid cannot have been recycled: it is ours to reap).
    Child(u32),
    /// Any other pVM: valid only if the registry shows a live pVM of this family by that id.
    Registered(u32),
}

/// Family state of one monitor process.
pub struct Family {
    /// This pVM's ids.
    pub ids: Ids,
    /// Limits on pVMs.
    pub limits: Limits,
    /// The registry (and runtime directory).
    pub registry: Registry,
    /// The family's ledger (inherited from the root).
    pub ledger: FamilyLedger,
    /// This pVM's lease on host slots, family slots and memory.
    pub lease: Option<Lease>,
    /// This pVM's registry entry.
    pub entry: Option<EntryHandle>,
    /// Children not yet waited for.
    pub children: Vec<ChildRecord>,
    /// Write end of the pipe to the parent's monitor (children only).
    pub to_parent: Option<File>,
    /// The kernel's OOM-kill count when last looked at (see [`Family::collect`]).
    oom_kills: Option<u64>,
    /// What the next fork needs, made ahead (see [`Family::prepare_fork`]).
    spare: Option<ForkSpare>,
}

/// What a fork needs that can be made before it: the child's lease descriptions and its
/// outcome pipe.
pub struct ForkSpare {
    files: LeaseFiles,
    pipe: (File, File),
}

impl Family {
    /// The family of a new root pVM.
    pub fn new(ids: Ids, limits: Limits, registry: Registry, ledger: FamilyLedger) -> Family {
        Family {
            ids,
            limits,
            registry,
            ledger,
            lease: None,
            entry: None,
            children: Vec::new(),
            to_parent: None,
            oom_kills: None,
            spare: None,
        }
    }

    /// What a pVM of this family with `mem_size` bytes of guest memory asks the ledger for.
    pub fn want(&self, mem_size: u64) -> Want {
        Want {
            per_host: self.limits.per_host,
            per_family: self.limits.per_family,
            mem_mib: mem_size.div_ceil(1 << 20),
            budget_mib: self.limits.mem_total >> 20,
        }
    }

    /// The lease for a child about to be forked (held by nobody else until the fork).
    pub fn admit_fork(&mut self, mem_size: u64) -> Result<(Lease, (File, File)), LedgerError> {
        if self.oom_kills.is_none() {
            self.oom_kills = sys::oom_kill_count();
        }
        let ForkSpare { files, pipe } = match self.spare.take() {
            Some(spare) => spare,
            None => self.make_spare()?,
        };
        Ok((Lease::acquire_on(files, self.want(mem_size))?, pipe))
    }

    /// Makes what the next fork needs ahead, if it is not made yet: called where the monitor
    /// waits anyway (a `wait` that blocks), so a parent that forks, waits and forks again pays
    /// for neither in its pause. Best effort: the fork makes them itself otherwise.
    pub fn prepare_fork(&mut self) {
        if self.spare.is_none() {
            self.spare = self.make_spare().ok();
        }
    }

    fn make_spare(&self) -> std::io::Result<ForkSpare> {
        Ok(ForkSpare {
            files: LeaseFiles::open(self.registry.dir(), &self.ledger)?,
            pipe: outcome_pipe()?,
        })
    }

    /// In the parent after fork: remember the child.
    pub fn add_child(&mut self, id: u32, outcome: File) {
        self.children.push(ChildRecord { id, outcome });
    }

    /// In the child after fork: become pVM `id`, child of the previous one, holding `lease`.
    /// What was the parent's is not ours: its children's pipes and its lease are closed here
    /// (the parent keeps its own copies).
    pub fn become_child(&mut self, id: u32, to_parent: File, lease: Lease) {
        // Close the parent's children's pipes without freeing the list: freeing would write the
        // heap and so copy pages that are otherwise still shared with the parent.
        for child in &self.children {
            // SAFETY: the list is forgotten below, so nothing uses or closes this fd again.
            drop(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(child.outcome.as_raw_fd()) });
        }
        std::mem::forget(std::mem::take(&mut self.children));
        self.entry = None;
        self.lease = Some(lease);
        self.oom_kills = None;
        self.ids = Ids {
            id,
            parent: self.ids.id,
            ..self.ids
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
    /// outcome; for an orphan of the family (reaped by the root), its end in words; for any
    /// other process (a teardown helper), nothing. Leases need no giving back (see `ledger`).
    pub fn collect(&mut self, pid: u32, status: sys::WaitStatus) -> Collected {
        if let Some(i) = self.children.iter().position(|c| c.id == pid) {
            let mut child = self.children.swap_remove(i);
            let mut buf = [0u8; OutcomeRecord::SIZE];
            let (record, oom) = match child.outcome.read_exact(&mut buf) {
                Ok(()) => (OutcomeRecord::from_bytes(&buf), false),
                Err(_) => (OutcomeRecord::from_wait_status(status), self.oom_killed(status)),
            };
            if oom {
                // The guest's wait sees "killed by signal 9"; the operator learns why.
                crate::outcome::report_line(format_args!("pvm {pid}: {}", describe_record(&record, true)));
            }
            self.registry.remove(pid);
            return Collected::Child(pid, record, oom);
        }
        match self.registry.read_reaped(pid) {
            Some(entry) if entry.family_key == self.ids.family_key => {
                self.registry.remove(pid);
                let outcome = entry
                    .outcome
                    .unwrap_or_else(|| describe_wait_status(status, self.oom_killed(status)));
                Collected::Orphan(pid, outcome)
            }
            _ => {
                // A monitor killed before it wrote its entry (a child makes its control socket
                // first) leaves only its socket; any file of that name is the reaped process's.
                self.registry.remove_socket(pid);
                Collected::Other
            }
        }
    }

    /// Whether a child that left no record and died of SIGKILL was (most likely) ended by the
    /// kernel's OOM killer: it ran since this monitor last looked.
    fn oom_killed(&mut self, status: sys::WaitStatus) -> bool {
        if status.signal() != Some(libc::SIGKILL) {
            return false;
        }
        let now = sys::oom_kill_count();
        let before = std::mem::replace(&mut self.oom_kills, now);
        matches!((before, now), (Some(b), Some(n)) if n > b)
    }

    /// Whether `id` is a child not yet waited for.
    pub fn has_child(&self, id: u32) -> bool {
        self.children.iter().any(|c| c.id == id)
    }

    /// Sends `sig` to a checked target; registered pVMs only if they are of this family.
    pub fn signal(&self, target: KillTarget, sig: i32) -> i64 {
        use pvm_abi::errno;
        let result = match target {
            KillTarget::Myself => sys::kill(self.ids.id, sig).map_err(|_| SignalError::NoSuchPvm),
            KillTarget::Child(id) => sys::kill(id, sig).map_err(|_| SignalError::NoSuchPvm),
            KillTarget::Registered(id) => {
                let key = self.ids.family_key;
                self.registry.signal(id, sig, |e| e.family_key == key)
            }
        };
        match result {
            Ok(()) => 0,
            Err(SignalError::NoSuchPvm) => -errno::ESRCH,
            Err(SignalError::NotAllowed) => -errno::EPERM,
            Err(SignalError::Host(_)) => -errno::EIO,
        }
    }

    /// Sends `sig` to every other live pVM of the family (the root passing on what stopped it).
    pub fn signal_all(&self, sig: i32) {
        let key = self.ids.family_key;
        for e in self.registry.list().unwrap_or_default() {
            if e.family_key == key {
                let _ = self.registry.signal(e.id, sig, |e| e.family_key == key);
            }
        }
    }
}

/// What [`Family::collect`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Collected {
    /// One of our children ended (and whether the OOM killer most likely ended it).
    Child(u32, OutcomeRecord, bool),
    /// An orphan of the family ended (root only); how, in words.
    Orphan(u32, String),
    /// Not a pVM.
    Other,
}

/// An outcome record in words.
pub fn describe_record(r: &OutcomeRecord, oom: bool) -> String {
    match r.kind {
        wait_kind::EXITED => format!("exited with status {}", r.code),
        wait_kind::CRASHED if r.code == 256 => "crashed".to_string(),
        wait_kind::CRASHED => format!(
            "crashed (vector {}, address {:#x}, rip {:#x})",
            r.code, r.fault_addr, r.rip
        ),
        _ => describe_signal(r.code as i32, oom),
    }
}

fn describe_signal(sig: i32, oom: bool) -> String {
    if oom {
        format!("killed by signal {sig} (the kernel's OOM killer ran: the host is out of memory)")
    } else if sig == libc::SIGSYS {
        format!("killed by signal {sig} (its monitor made a system call outside its seccomp allow-list)")
    } else {
        format!("killed by signal {sig}")
    }
}

/// A `waitpid` status in words.
pub fn describe_wait_status(status: sys::WaitStatus, oom: bool) -> String {
    match status.signal() {
        Some(sig) => describe_signal(sig, oom),
        None => format!("exited with status {}", status.code()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_records_round_trip() {
        let r = OutcomeRecord {
            kind: wait_kind::CRASHED,
            code: 14,
            fault_addr: 0x1000,
            rip: 0x20_1234,
        };
        assert_eq!(OutcomeRecord::from_bytes(&r.to_bytes()), r);
        let killed = OutcomeRecord::from_wait_status(sys::WaitStatus(9));
        assert_eq!((killed.kind, killed.code), (wait_kind::KILLED, 9));
        let exited = OutcomeRecord::from_wait_status(sys::WaitStatus(3 << 8));
        assert_eq!((exited.kind, exited.code), (wait_kind::EXITED, 3));
        assert!(describe_record(&killed, true).contains("OOM"));
        assert!(describe_wait_status(sys::WaitStatus(31), false).contains("seccomp"));
    }
}
