//! `pvmctl run`'s side: hand the run to a pool member if one answers, else say "cold".
use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::proto::{Reply, Request, MAX_BODY, REPLY_LEN};
use super::SOCKET;
use crate::sys;

/// How long `pvmctl run` waits for a member to accept before it boots cold. A member building
/// its VM takes a few milliseconds; a pool whose members all fail would otherwise hold the run.
const ACCEPT_TIMEOUT: Duration = Duration::from_millis(250);

/// The signals `pvmctl run` passes on to its warm monitor: those a cold monitor would get as
/// the same process (Ctrl-C, `kill`, a closed terminal).
const FORWARDED: [i32; 6] = [
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGTERM,
];

/// A pidfd of the member (-1: not known yet).
static MEMBER: AtomicI32 = AtomicI32::new(-1);
/// Signals that came before the member was known, one bit per number.
static EARLY: AtomicU64 = AtomicU64::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let fd = MEMBER.load(Ordering::SeqCst);
    if fd < 0 {
        EARLY.fetch_or(1 << sig, Ordering::SeqCst);
        return;
    }
    // SAFETY: the pidfd stays open while the handler is installed (until the process exits).
    let pidfd = unsafe { BorrowedFd::borrow_raw(fd) };
    let _ = sys::pidfd_send_signal(pidfd, sig);
}

/// How a launch went.
#[derive(Debug, PartialEq, Eq)]
pub enum Launch {
    /// No member took the run: boot cold.
    Cold,
    /// A member ran it; this is the run's exit status.
    Ended(u8),
    /// The member that ran it (this pid) ended without an exit status: killed.
    Lost(u32),
}

/// Offers the run (`argv`, this process's environment, console and working directory) to the
/// pool of `run_dir`, and if a member takes it, waits for its end, passing signals on.
pub fn launch(run_dir: &Path, argv: &[OsString]) -> Launch {
    let Ok(sock) = sys::unix_connect(&run_dir.join(SOCKET)) else {
        return Launch::Cold;
    };
    // Only a pool of our own user gets our console and environment.
    match sys::peer_credentials(sock.as_fd()) {
        Ok((_, uid)) if uid == sys::geteuid() => {}
        _ => return Launch::Cold,
    }
    let (Ok(exe), Ok(cwd)) = (sys::exe_identity(), sys::cwd_fd()) else {
        return Launch::Cold;
    };
    let request = Request {
        exe,
        umask: sys::umask(),
        argv: argv.iter().map(|a| a.as_bytes().to_vec()).collect(),
        env: std::env::vars_os()
            .map(|(k, v)| {
                let mut pair = k.as_bytes().to_vec();
                pair.push(b'=');
                pair.extend_from_slice(v.as_bytes());
                pair
            })
            .collect(),
    }
    .encode();
    if request.len() > MAX_BODY {
        return Launch::Cold;
    }
    for sig in FORWARDED {
        sys::set_signal_handler(sig, forward);
    }
    let fds = [sys::stdio(0), sys::stdio(1), sys::stdio(2), cwd.as_fd()];
    let sent = sys::send_all_with_fds(sock.as_fd(), &request, &fds);
    let pid = match sent.ok().and_then(|()| accepted(&sock)) {
        Some(pid) => pid,
        None => return cold(sock),
    };
    let Ok(pidfd) = sys::pidfd_open(pid) else {
        return wait_end(&sock, pid);
    };
    MEMBER.store(pidfd.as_raw_fd(), Ordering::SeqCst);
    // Kept open for the handler until this process exits.
    std::mem::forget(pidfd);
    let early = EARLY.swap(0, Ordering::SeqCst);
    for sig in FORWARDED.into_iter().filter(|s| early & (1 << s) != 0) {
        forward(sig);
    }
    wait_end(&sock, pid)
}

/// The member's pid once it accepted; `None` if it refused, or none answered in time.
fn accepted(sock: &OwnedFd) -> Option<u32> {
    let deadline = Instant::now() + ACCEPT_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match sys::wait_readable(sock.as_fd(), left.as_nanos() as i64) {
            Ok(true) => break,
            Ok(false) => return None,
            Err(_) if !left.is_zero() => {}
            Err(_) => return None,
        }
    }
    match read_reply(sock)? {
        Reply::Accepted(pid) => Some(pid),
        _ => None,
    }
}

fn read_reply(sock: &OwnedFd) -> Option<Reply> {
    let mut b = [0u8; REPLY_LEN];
    match sys::read_exact(sock.as_fd(), &mut b) {
        Ok(true) => Reply::decode(&b),
        _ => None,
    }
}

/// No member took the run: closes the connection (a member that accepts late sees it closed
/// and does not run it), puts the signals back as they were, and hands over any that came.
fn cold(sock: OwnedFd) -> Launch {
    drop(sock);
    for sig in FORWARDED {
        sys::default_signal(sig);
    }
    let early = EARLY.swap(0, Ordering::SeqCst);
    for sig in FORWARDED.into_iter().filter(|s| early & (1 << s) != 0) {
        let _ = sys::kill(sys::getpid(), sig);
    }
    Launch::Cold
}

/// Waits for the member's exit status.
fn wait_end(sock: &OwnedFd, pid: u32) -> Launch {
    match read_reply(sock) {
        Some(Reply::Exited(code)) => Launch::Ended(code),
        _ => Launch::Lost(pid),
    }
}
