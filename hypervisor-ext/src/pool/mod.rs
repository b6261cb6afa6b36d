//! The warm pool: monitors built ahead that `pvmctl run` hands its run to instead of booting
//! cold.
//!
//! `pvmctl pool start` starts one pool per runtime directory ([`start`]): a daemon
//! (`pvm-pool`) that keeps `size` members (`pvm-warm`) ready. A member is a fork of the pool
//! that has built the part of a pVM that depends on neither image nor arguments (the KVM VM
//! with its RAM slot, the vCPU with its CPUID, the pages every boot touches) and waits on the
//! pool's socket. `pvmctl run` connects ([`launch`]); the member checks the client is the same
//! user and the same pvmctl build, takes its console, working directory, umask and
//! environment, and runs pvmctl's own `run` on the client's arguments, so a warm run behaves as
//! a cold one does: the pVM's id is the member's pid, its registry entry, family, limits and
//! signals are the same; the client forwards the signals it gets and exits with the status the
//! member sends. Each member serves one run and is never reused, so no VM ever carries one
//! guest's state into another's. The pool refills itself; a member that took a run leaves the
//! pool's accounting. Killing the pool at any point leaves nothing running but the runs already
//! taken: idle members die with it (`PR_SET_PDEATHSIG`), and `run` boots cold when no member
//! answers. [`stop`] is that kill, then removing the socket.
mod client;
mod daemon;
mod member;
mod proto;

use std::ffi::{CStr, OsString};
use std::io;
use std::os::fd::BorrowedFd;

pub use client::{launch, Launch};
pub use daemon::{start, status, stop, PoolConfig, Status};
pub use member::report_exit;
pub(crate) use member::{client_fd, take_prebuilt};

use crate::sys;

/// The pool's socket in the runtime directory.
const SOCKET: &str = "pool.sock";
/// The file the pool holds a process-owned lock on for its life: whoever holds it is the pool.
const LOCK: &str = "pool.lock";
/// What the pool last said about itself (for `pvmctl pool status`; never trusted).
const STATE: &str = "pool.state";
/// The pool process's name.
const POOL_NAME: &CStr = c"pvm-pool";
/// An idle member's name (a member that took a run is a monitor, named as every monitor is).
const MEMBER_NAME: &CStr = c"pvm-warm";

/// Exit status of a run the pool failed to start (as pvmctl's own failures).
const EXIT_ERROR: u8 = 125;

/// What a member runs for a client.
#[derive(Clone, Copy)]
pub struct Job {
    /// Done ahead, once the member's VM is built (e.g. building the argument parser).
    pub prepare: fn(),
    /// pvmctl's main on the client's arguments; its exit status.
    pub run: fn(Vec<OsString>) -> u8,
}

/// Errors of the pool's commands.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The runtime directory is unusable.
    #[error(transparent)]
    RunDir(#[from] crate::RunDirError),
    /// A system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The error.
        source: io::Error,
    },
    /// A pool already serves this runtime directory.
    #[error("a pool already runs for this runtime directory (pid {0}); `pvmctl pool stop` ends it")]
    AlreadyRunning(u32),
    /// The pool could not build its first member.
    #[error("the pool cannot build a warm VM: {0}")]
    Build(String),
    /// The process holding the pool's lock is not a pool.
    #[error("process {0} holds the pool's lock but is not a pvm pool; not stopping it")]
    NotAPool(u32),
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> PoolError {
    move |source| PoolError::Io { what, source }
}

/// What a member tells its pool, on a pipe: fixed-size records, each written whole in one
/// `write` (smaller than `PIPE_BUF`, so records of several members never mix), so any read of
/// whole records returns whole records.
#[derive(Debug, PartialEq, Eq)]
enum StatusMsg {
    /// Built and waiting.
    Ready,
    /// Took a run: no longer the pool's.
    Taken,
    /// Could not build its VM: why.
    Failed(String),
}

/// Bytes of one status record: kind, three zero bytes, pid, text length (u16), text.
const STATUS_LEN: usize = 256;
const STATUS_TEXT: usize = STATUS_LEN - 10;

impl StatusMsg {
    fn encode(&self, pid: u32) -> [u8; STATUS_LEN] {
        let mut out = [0u8; STATUS_LEN];
        let (kind, text) = match self {
            StatusMsg::Ready => (1, ""),
            StatusMsg::Taken => (2, ""),
            StatusMsg::Failed(why) => (3, why.as_str()),
        };
        // Cut on a character boundary.
        let mut n = text.len().min(STATUS_TEXT);
        while !text.is_char_boundary(n) {
            n -= 1;
        }
        out[0] = kind;
        out[4..8].copy_from_slice(&pid.to_le_bytes());
        out[8..10].copy_from_slice(&(n as u16).to_le_bytes());
        out[10..10 + n].copy_from_slice(&text.as_bytes()[..n]);
        out
    }

    fn decode(b: &[u8]) -> Option<(u32, StatusMsg)> {
        let b: &[u8; STATUS_LEN] = b.try_into().ok()?;
        let pid = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        let n = usize::from(u16::from_le_bytes([b[8], b[9]])).min(STATUS_TEXT);
        let msg = match b[0] {
            1 => StatusMsg::Ready,
            2 => StatusMsg::Taken,
            3 => StatusMsg::Failed(String::from_utf8_lossy(&b[10..10 + n]).into_owned()),
            _ => return None,
        };
        Some((pid, msg))
    }

    /// Sends it for this process.
    fn send(&self, to: BorrowedFd<'_>) {
        let _ = sys::write_all(to, &self.encode(sys::getpid()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_records_round_trip_and_long_text_is_cut_on_a_character() {
        for msg in [
            StatusMsg::Ready,
            StatusMsg::Taken,
            StatusMsg::Failed("no /dev/kvm".into()),
        ] {
            assert_eq!(StatusMsg::decode(&msg.encode(77)), Some((77, msg)));
        }
        let long = "é".repeat(STATUS_LEN);
        let Some((_, StatusMsg::Failed(cut))) = StatusMsg::decode(&StatusMsg::Failed(long).encode(1)) else {
            panic!("not a failure record");
        };
        assert!(cut.len() <= STATUS_TEXT && cut.chars().all(|c| c == 'é'), "{cut}");
        assert_eq!(StatusMsg::decode(&[9u8; STATUS_LEN]), None);
        assert_eq!(StatusMsg::decode(&[1u8; 3]), None);
    }
}
