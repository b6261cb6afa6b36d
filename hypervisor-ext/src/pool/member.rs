//! A pool member: a monitor process that builds its VM ahead ([`Prebuilt`]), waits for one
//! `pvmctl run`, and then becomes that run: the client's console, working directory, umask and
//! environment, and pvmctl's own code on the client's arguments. Used once: a member that took
//! a request never waits for another.
use std::cell::RefCell;
use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStringExt;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};

use super::proto::{Refusal, Reply, Request, HEADER_LEN, REQUEST_FDS};
use super::{Job, StatusMsg, EXIT_ERROR, MEMBER_NAME};
use crate::monitor::Prebuilt;
use crate::rundir::RunDir;
use crate::sys;

/// How long a member waits for a connected client's request before it waits for another.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

thread_local! {
    /// The VM this process built ahead, until its monitor takes it (on the one thread a
    /// member has when it runs).
    static PREBUILT: RefCell<Option<Prebuilt>> = const { RefCell::new(None) };
}
/// The connection to the `pvmctl run` this member serves (-1: none), and the process it belongs
/// to (a forked child of the member has a copy of the number, not the connection).
static CLIENT: AtomicI32 = AtomicI32::new(-1);
static CLIENT_OWNER: AtomicU32 = AtomicU32::new(0);

/// The VM built ahead for this process, if it is a pool member that has not used it yet.
pub(crate) fn take_prebuilt() -> Option<Prebuilt> {
    PREBUILT.with(|p| p.borrow_mut().take())
}

/// The connection to this process's `pvmctl run`, if it is a member serving one.
pub(crate) fn client_fd() -> Option<RawFd> {
    let fd = CLIENT.load(Ordering::SeqCst);
    (fd >= 0 && CLIENT_OWNER.load(Ordering::SeqCst) == sys::getpid()).then_some(fd)
}

/// Tells this process's `pvmctl run`, if it is a member serving one, that the run ended with
/// `code` (the console flushed first, so that all of it is out before the status), and lets the
/// connection go: call right before exiting. Elsewhere (a cold run, a forked child) it does
/// nothing.
pub fn report_exit(code: i32) {
    if client_fd().is_none() {
        return;
    }
    {
        use std::io::Write;
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
    }
    let fd = CLIENT.swap(-1, Ordering::SeqCst);
    if fd < 0 {
        return;
    }
    // SAFETY: the connection this process accepted and left open for this; nothing else owns it.
    let conn = unsafe { OwnedFd::from_raw_fd(fd) };
    // Closing it must not kill us any more; the client exits once it has the status.
    let _ = sys::no_signal_on_io(conn.as_fd());
    let _ = sys::write_all(conn.as_fd(), &Reply::Exited(code as u8).encode());
}

/// What a member gets from the pool when it is forked.
pub(super) struct Setup {
    /// The pool's runtime directory (held until taken: it shows the member as the pool's).
    pub dir: RunDir,
    /// The pool's listening socket.
    pub listener: OwnedFd,
    /// Where to tell the pool how it is (the write end of the pool's status pipe).
    pub status: OwnedFd,
    /// The pool's pid (the member's parent).
    pub pool: u32,
    /// The pool's pvmctl build.
    pub exe: (u64, u64),
    /// Guest RAM of the VM to build.
    pub mem_size: u64,
    /// What to run for a client.
    pub job: Job,
}

/// The member's life, in the child the pool just forked: build, wait, serve one run, exit.
pub(super) fn run(setup: Setup) -> ! {
    // An idle member dies with its pool; one that took a run does not (below).
    if sys::set_parent_death_signal(Some(libc::SIGKILL)).is_err() || sys::getppid() != setup.pool {
        sys::exit_now(1);
    }
    let _ = sys::set_name(MEMBER_NAME);
    sys::single_malloc_arena();
    // Built, with the image area faulted in and the first entry's costs paid.
    // The pool asked KVM for its CPUID before forking this process (`Prebuilt::ask_cpuid_ahead`).
    let built = Prebuilt::new(setup.mem_size, None).and_then(|mut p| {
        p.prefill_image_area();
        p.warm_up()?;
        Ok(p)
    });
    match built {
        Ok(p) => {
            PREBUILT.with(|slot| *slot.borrow_mut() = Some(p));
        }
        Err(e) => {
            StatusMsg::Failed(e.to_string()).send(setup.status.as_fd());
            sys::exit_now(1);
        }
    }
    (setup.job.prepare)();
    fault_in_ahead();
    StatusMsg::Ready.send(setup.status.as_fd());
    let (conn, request, fds) = loop {
        let Ok(conn) = sys::accept_blocking(setup.listener.as_fd()) else {
            sys::exit_now(1);
        };
        if let Some(taken) = receive(&setup, conn) {
            break taken;
        }
    };
    // Ours now: no longer the pool's to kill, and the pool makes another member.
    if sys::set_parent_death_signal(None).is_err() {
        sys::exit_now(1);
    }
    StatusMsg::Taken.send(setup.status.as_fd());
    // The pool's descriptors go: this process is a run now, not a member.
    let Setup {
        job,
        dir,
        listener,
        status,
        ..
    } = setup;
    drop((dir, listener, status));
    // A `pvmctl run` killed outright (SIGKILL) ends its pVM as a cold one would, with it. A
    // client that gave up waiting has closed its end already: then the answer cannot be sent
    // (or the close kills us), and the run is the cold one the client started instead.
    let accepted = sys::kill_on_hangup(conn.as_fd())
        .and_then(|()| sys::write_all(conn.as_fd(), &Reply::Accepted(sys::getpid()).encode()));
    if accepted.is_err() {
        sys::exit_now(1);
    }
    let code = match adopt(&request, &fds) {
        Ok(()) => {
            drop(fds);
            let fd = conn.into_raw_fd();
            CLIENT_OWNER.store(sys::getpid(), Ordering::SeqCst);
            CLIENT.store(fd, Ordering::SeqCst);
            sys::close_in_forked_children(fd);
            let argv = request.argv.into_iter().map(OsString::from_vec).collect();
            (job.run)(argv)
        }
        Err(e) => {
            let _ = sys::write_all(
                fds[2].as_fd(),
                format!("pvmctl: error: the warm pool's monitor cannot take the run: {e}\n").as_bytes(),
            );
            let _ = sys::write_all(conn.as_fd(), &Reply::Exited(EXIT_ERROR).encode());
            sys::exit_now(i32::from(EXIT_ERROR));
        }
    };
    report_exit(i32::from(code));
    sys::exit_now(i32::from(code))
}

/// Heap the allocator gets faulted in ahead: more than a run allocates before its guest starts.
const HEAP_AHEAD: usize = 256 << 10;
/// In pieces this large (below the allocator's threshold for a mapping of their own, which it
/// would give back when freed).
const HEAP_PIECE: usize = 16 << 10;
/// Stack faulted in ahead.
const STACK_AHEAD: usize = 128 << 10;

/// Takes ahead the page faults a run would take on its way to the guest (~40 of ~5 us each
/// where the host is itself a VM, measured): the allocator's heap, the stack, the vDSO's data,
/// the executable's code and data, and this process's copies of the pages it shares
/// copy-on-write with the pool. (The guest's first image pages: `Prebuilt::prefill_image_area`.)
fn fault_in_ahead() {
    let pieces: Vec<Vec<u8>> = (0..HEAP_AHEAD / HEAP_PIECE)
        .map(|_| vec![1u8; HEAP_PIECE])
        .collect();
    // Freed, they stay the allocator's: what the run allocates next is there already.
    drop(std::hint::black_box(pieces));
    grow_stack();
    // The vDSO's data pages (the clock).
    let _ = std::time::Instant::now();
    let ram = PREBUILT.with(|p| p.borrow().as_ref().map(Prebuilt::ram_range));
    sys::populate_own_memory(ram.unwrap_or(0..0));
}

/// Writes [`STACK_AHEAD`] bytes of stack below the caller's.
#[inline(never)]
fn grow_stack() {
    let mut stack = [1u8; STACK_AHEAD];
    std::hint::black_box(&mut stack);
}

/// Reads the request of the client on `conn`, and accepts it if this member may serve it
/// (answering either way); `None` when it is refused or unreadable (the member stays idle).
fn receive(setup: &Setup, conn: OwnedFd) -> Option<(OwnedFd, Request, Vec<OwnedFd>)> {
    let refuse = |conn: &OwnedFd, why: Refusal| {
        let _ = sys::write_all(conn.as_fd(), &Reply::Refused(why).encode());
        None
    };
    // Another user's pVM never runs in a monitor of ours, nor ours in theirs (the client checks
    // the pool's user the same way).
    match sys::peer_credentials(conn.as_fd()) {
        Ok((_, uid)) if uid == sys::geteuid() => {}
        _ => return refuse(&conn, Refusal::OtherUser),
    }
    if !sys::wait_readable(conn.as_fd(), REQUEST_TIMEOUT.as_nanos() as i64).unwrap_or(false) {
        return None;
    }
    let mut header = [0u8; HEADER_LEN];
    let (n, fds) = sys::recv_with_fds_max(conn.as_fd(), &mut header, REQUEST_FDS).ok()?;
    if n == 0 {
        return None;
    }
    if n < HEADER_LEN && !sys::read_exact(conn.as_fd(), &mut header[n..]).unwrap_or(false) {
        return None;
    }
    let Ok(len) = Request::body_len(&header) else {
        return refuse(&conn, Refusal::Malformed);
    };
    let mut body = vec![0u8; len];
    if !sys::read_exact(conn.as_fd(), &mut body).unwrap_or(false) {
        return None;
    }
    let Ok(request) = Request::decode(&body) else {
        return refuse(&conn, Refusal::Malformed);
    };
    if fds.len() != REQUEST_FDS {
        return refuse(&conn, Refusal::Malformed);
    }
    if request.exe != setup.exe {
        return refuse(&conn, Refusal::OtherBuild);
    }
    if request.argv.get(1).map(Vec::as_slice) != Some(b"run".as_slice()) {
        return refuse(&conn, Refusal::NotRun);
    }
    Some((conn, request, fds))
}

/// Takes on the client's console, working directory, umask and environment.
fn adopt(request: &Request, fds: &[OwnedFd]) -> std::io::Result<()> {
    let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
    sys::set_stdio([borrowed[0], borrowed[1], borrowed[2]])?;
    sys::set_cwd(borrowed[3])?;
    sys::set_umask(request.umask);
    // Single-threaded (the CPUID thread was joined): changing the environment is sound.
    for (key, _) in std::env::vars_os() {
        std::env::remove_var(key);
    }
    for pair in &request.env {
        // `set_var` refuses (panics on) a NUL anywhere, or an empty key.
        if pair.contains(&0) {
            continue;
        }
        if let Some(eq) = pair.iter().position(|&b| b == b'=').filter(|&i| i > 0) {
            let key = OsString::from_vec(pair[..eq].to_vec());
            let value = OsString::from_vec(pair[eq + 1..].to_vec());
            std::env::set_var(key, value);
        }
    }
    Ok(())
}
