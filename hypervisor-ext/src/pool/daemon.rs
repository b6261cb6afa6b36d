//! The pool process: starts, keeps `size` members ready, and is stopped by being killed.
use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::member::{self, Setup};
use super::{io_err, Job, PoolError, StatusMsg, LOCK, POOL_NAME, SOCKET, STATE, STATUS_LEN};
use crate::rundir::RunDir;
use crate::sys::{self, Forked, LockHolder, Open};

/// How long `pool start` waits for the pool's first members.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the pool reaps the members that ended (a run taken and over) when nothing else
/// wakes it.
const REAP_INTERVAL: Duration = Duration::from_secs(1);
/// Members in a row that may fail to build before the pool stops trying for a while.
const MAX_FAILURES: u32 = 3;
/// How long after a member took a run the pool waits to build the next one while another member
/// is still ready: a VM build takes a few milliseconds of CPU (and KVM's locks), which a run
/// booting on a host of few CPUs would otherwise share.
const REFILL_DELAY: Duration = Duration::from_millis(20);
/// How long the pool waits before it tries again after [`MAX_FAILURES`].
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// How a pool is set up.
#[derive(Clone, Copy, Debug)]
pub struct PoolConfig {
    /// Members kept ready.
    pub size: usize,
    /// Guest RAM of their VMs (a run asking for another `--mem` boots its VM itself).
    pub mem_size: u64,
}

/// What a running pool says about itself.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Status {
    /// The pool process (the holder of its lock).
    pub pid: u32,
    /// Members it keeps ready.
    pub size: usize,
    /// Guest RAM of their VMs.
    pub mem_size: u64,
    /// Members built and waiting.
    pub ready: usize,
    /// Members building their VM.
    pub building: usize,
    /// Runs members took since the pool started.
    pub served: u64,
    /// Members that failed to build their VM, and the last reason.
    pub failed: u64,
    /// Why the last member failed.
    pub last_error: Option<String>,
}

/// Starts a pool for `run_dir` in the background; returns its pid once `size` members are
/// ready. `job` is what members run for their clients.
pub fn start(run_dir: &Path, config: PoolConfig, job: Job) -> Result<u32, PoolError> {
    let dir = RunDir::open(run_dir)?;
    let lock = dir
        .open_file(LOCK, Open::Create)
        .map_err(io_err("open the pool's lock"))?;
    if let Ok(LockHolder::Process(pid)) = sys::process_lock_holder(lock.as_fd()) {
        return Err(PoolError::AlreadyRunning(pid));
    }
    let exe = sys::exe_identity().map_err(io_err("identify this pvmctl"))?;
    let (from_pool, to_starter) = sys::pipe(false).map_err(io_err("make a pipe"))?;
    // SAFETY: pvmctl is single-threaded here.
    match unsafe { sys::fork() }.map_err(io_err("fork the pool"))? {
        Forked::Child => {
            drop(from_pool);
            let pool = Pool {
                dir,
                lock,
                config,
                exe,
                job,
                members: HashMap::new(),
                status: Status::default(),
                failures: 0,
                written: None,
                last_taken: None,
            };
            pool.run(to_starter)
        }
        Forked::Parent(pid) => {
            drop(to_starter);
            let mut said = [0u8; STATUS_LEN];
            let ready = sys::wait_readable(from_pool.as_fd(), START_TIMEOUT.as_nanos() as i64)
                .map_err(io_err("wait for the pool"))?;
            if !ready || !sys::read_exact(from_pool.as_fd(), &mut said).unwrap_or(false) {
                return Err(PoolError::Build(
                    "the pool ended or took too long before its members were ready".into(),
                ));
            }
            match StatusMsg::decode(&said) {
                Some((_, StatusMsg::Ready)) => Ok(pid),
                Some((_, StatusMsg::Failed(why))) => Err(PoolError::Build(why)),
                _ => Err(PoolError::Build("the pool said something unexpected".into())),
            }
        }
    }
}

/// The pool of `run_dir`, if one runs: what it last said, with the pid of its lock's holder.
pub fn status(run_dir: &Path) -> Result<Option<Status>, PoolError> {
    status_in(&RunDir::open(run_dir)?)
}

fn status_in(dir: &RunDir) -> Result<Option<Status>, PoolError> {
    let lock = match dir.open_file(LOCK, Open::Read) {
        Ok(fd) => fd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("open the pool's lock")(e)),
    };
    let pid = match sys::process_lock_holder(lock.as_fd()).map_err(io_err("ask who holds the pool's lock"))? {
        LockHolder::Process(pid) => pid,
        _ => return Ok(None),
    };
    let said: Status = dir
        .open_file(STATE, Open::Read)
        .ok()
        .and_then(|fd| {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::fs::File::from(fd), &mut text).ok()?;
            serde_json::from_str(&text).ok()
        })
        .unwrap_or_default();
    Ok(Some(Status { pid, ..said }))
}

/// Stops the pool of `run_dir`: kills it (its idle members die with it; runs it handed out go
/// on), waits until it is gone, removes its socket and state file. `false` when none ran (what a
/// pool killed otherwise left is removed then).
pub fn stop(run_dir: &Path) -> Result<bool, PoolError> {
    let dir = RunDir::open(run_dir)?;
    let running = status_in(&dir)?;
    if let Some(status) = &running {
        match sys::pidfd_open(status.pid) {
            Ok(pidfd) => {
                // Checked after the pidfd was opened: a recycled pid shows as another name.
                if !crate::registry::process_named(status.pid, POOL_NAME) {
                    return Err(PoolError::NotAPool(status.pid));
                }
                match sys::pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL) {
                    Err(e) if e.raw_os_error() != Some(libc::ESRCH) => {
                        return Err(io_err("kill the pool")(e))
                    }
                    _ => {}
                }
            }
            // Gone meanwhile.
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
            Err(e) => return Err(io_err("open the pool process")(e)),
        }
    }
    let lock = match dir.open_file(LOCK, Open::ReadWrite) {
        Ok(fd) => fd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io_err("open the pool's lock")(e)),
    };
    // Holding the lock, nothing starts meanwhile. A pool just killed frees it when it is gone;
    // without one, a pool starting now keeps it, and its files stay.
    let locked = if running.is_some() {
        sys::lock_process_wait(lock.as_fd())
            .map_err(io_err("wait for the pool to end"))
            .map(|()| true)?
    } else {
        sys::lock_process(lock.as_fd()).is_ok()
    };
    if locked {
        for name in [SOCKET, STATE] {
            let _ = dir.remove(name);
        }
    }
    Ok(running.is_some())
}

/// A member the pool counts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Member {
    Building,
    Ready,
}

/// The pool process's state.
struct Pool {
    dir: RunDir,
    lock: OwnedFd,
    config: PoolConfig,
    exe: (u64, u64),
    job: Job,
    members: HashMap<u32, Member>,
    status: Status,
    /// Members in a row that failed to build.
    failures: u32,
    /// The status last written to [`STATE`].
    written: Option<Status>,
    /// When a member last took a run.
    last_taken: Option<Instant>,
}

impl Pool {
    /// The pool's life: lock, listen, keep members ready, reap; tells the starter on
    /// `to_starter` once the first members are ready (or why not).
    fn run(mut self, to_starter: OwnedFd) -> ! {
        sys::new_session();
        // Neither the starter's terminal nor its pipes: a test reading `pool start`'s output
        // must see its end when `pool start` exits. Nor its working directory (a member takes
        // its client's).
        sys::detach_stdio();
        let _ = std::env::set_current_dir("/");
        let _ = sys::set_name(POOL_NAME);
        let fail = |why: String| -> ! {
            StatusMsg::Failed(why).send(to_starter.as_fd());
            sys::exit_now(1)
        };
        if sys::lock_process(self.lock.as_fd()).is_err() {
            fail("another pool took this runtime directory meanwhile".into());
        }
        let mut listener = match self.listen() {
            Ok(l) => Some(l),
            Err(e) => fail(format!("cannot listen on {SOCKET}: {e}")),
        };
        // Once for every member this pool forks.
        crate::monitor::Prebuilt::ask_cpuid_ahead();
        let (from_members, to_pool) = match sys::pipe(false) {
            Ok(p) => p,
            Err(e) => fail(format!("cannot make a pipe: {e}")),
        };
        self.status.pid = sys::getpid();
        self.status.size = self.config.size;
        self.status.mem_size = self.config.mem_size;
        let mut starter = Some(to_starter);
        let mut retry_at: Option<Instant> = None;
        loop {
            if retry_at.is_some_and(|t| Instant::now() >= t) {
                retry_at = None;
                self.failures = 0;
                if listener.is_none() {
                    listener = self.listen().ok();
                }
            }
            // Refill at once when no member is ready (a client may be waiting), else once the
            // last take is a little in the past.
            let refill =
                self.count(Member::Ready) == 0 || self.last_taken.is_none_or(|t| t.elapsed() >= REFILL_DELAY);
            if let Some(l) = listener.as_ref().filter(|_| refill) {
                while self.members.len() < self.config.size && self.failures < MAX_FAILURES {
                    self.spawn(l, &to_pool);
                }
            }
            self.write_state();
            let ready = self.count(Member::Ready);
            if let Some(to) = starter.take_if(|_| ready == self.config.size) {
                StatusMsg::Ready.send(to.as_fd());
            }
            if self.failures >= MAX_FAILURES {
                if let Some(to) = starter.take() {
                    // Never started: nothing of it stays.
                    let _ = self.dir.remove(SOCKET);
                    let _ = self.dir.remove(STATE);
                    let why = self.status.last_error.clone().unwrap_or_default();
                    StatusMsg::Failed(why).send(to.as_fd());
                    sys::exit_now(1);
                }
                retry_at.get_or_insert_with(|| Instant::now() + RETRY_AFTER);
                // Nobody would answer a client: stop listening until the next try, so that runs
                // boot cold at once instead of waiting for an answer first.
                if self.members.is_empty() && listener.take().is_some() {
                    let _ = self.dir.remove(SOCKET);
                }
            }
            let wait = match (retry_at, self.last_taken) {
                (Some(t), _) => t.saturating_duration_since(Instant::now()).min(REAP_INTERVAL),
                (None, Some(t)) if self.members.len() < self.config.size => {
                    REFILL_DELAY.saturating_sub(t.elapsed())
                }
                _ => REAP_INTERVAL,
            };
            let _ = sys::wait_readable(from_members.as_fd(), wait.as_nanos() as i64);
            self.read_messages(&from_members);
            self.reap();
        }
    }

    /// Listens on [`SOCKET`] (in place of whatever was there: the lock makes it ours).
    fn listen(&self) -> std::io::Result<OwnedFd> {
        let _ = self.dir.remove(SOCKET);
        sys::unix_listener(self.dir.fd(), SOCKET, true)
    }

    fn count(&self, which: Member) -> usize {
        self.members.values().filter(|m| **m == which).count()
    }

    /// Forks a member.
    fn spawn(&mut self, listener: &OwnedFd, to_pool: &OwnedFd) {
        let setup = || -> std::io::Result<Setup> {
            Ok(Setup {
                dir: self.dir.try_clone()?,
                listener: listener.try_clone()?,
                status: to_pool.try_clone()?,
                pool: sys::getpid(),
                exe: self.exe,
                mem_size: self.config.mem_size,
                job: self.job,
            })
        };
        let setup = match setup() {
            Ok(s) => s,
            Err(e) => return self.failed(e.to_string()),
        };
        // SAFETY: the pool is single-threaded.
        match unsafe { sys::fork() } {
            Ok(Forked::Child) => member::run(setup),
            Ok(Forked::Parent(pid)) => {
                self.members.insert(pid, Member::Building);
            }
            Err(e) => self.failed(format!("cannot fork a member: {e}")),
        }
    }

    fn failed(&mut self, why: String) {
        self.failures += 1;
        self.status.failed += 1;
        self.status.last_error = Some(why);
    }

    /// Takes the members' status records.
    fn read_messages(&mut self, from_members: &OwnedFd) {
        let mut buf = [0u8; STATUS_LEN * 16];
        while sys::wait_readable(from_members.as_fd(), 0).unwrap_or(false) {
            let Ok(n) = sys::read(from_members.as_fd(), &mut buf) else {
                return;
            };
            if n == 0 {
                return;
            }
            for record in buf[..n].chunks(STATUS_LEN) {
                // Records of processes the pool does not count (any more) are ignored.
                let Some((pid, msg)) = StatusMsg::decode(record) else {
                    continue;
                };
                let Some(member) = self.members.get_mut(&pid) else {
                    continue;
                };
                match msg {
                    StatusMsg::Ready => {
                        *member = Member::Ready;
                        self.failures = 0;
                    }
                    StatusMsg::Taken => {
                        self.members.remove(&pid);
                        self.status.served += 1;
                        self.last_taken = Some(Instant::now());
                    }
                    StatusMsg::Failed(why) => {
                        self.members.remove(&pid);
                        self.failed(why);
                    }
                }
            }
        }
    }

    /// Reaps the children that ended: members that took a run and finished it, and members
    /// that died idle or building (which are replaced).
    fn reap(&mut self) {
        while let Ok(Some((pid, status))) = sys::waitpid(None, true) {
            match self.members.remove(&pid) {
                Some(Member::Building) => self.failed(format!("a member ended while building ({status:?})")),
                Some(Member::Ready) | None => {}
            }
        }
    }

    /// Writes what `pvmctl pool status` shows when it changed (replacing the file whole).
    fn write_state(&mut self) {
        self.status.ready = self.count(Member::Ready);
        self.status.building = self.count(Member::Building);
        if self.written.as_ref() == Some(&self.status) {
            return;
        }
        let Ok(text) = serde_json::to_vec(&self.status) else {
            return;
        };
        let tmp = format!("{STATE}.tmp");
        let _ = self.dir.remove(&tmp);
        if let Ok(fd) = self.dir.open_file(&tmp, Open::Exclusive) {
            if sys::write_all(fd.as_fd(), &text).is_ok() && sys::rename_at(self.dir.fd(), &tmp, STATE).is_ok()
            {
                self.written = Some(self.status.clone());
            }
        }
    }
}
