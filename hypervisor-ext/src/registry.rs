//! The registry of running pVMs: no daemon, one JSON entry per pVM in the runtime directory.
//!
//! A monitor creates `<id>.json` and holds a POSIX (`fcntl`) write lock on it for its whole
//! life. Such a lock belongs to the process, vanishes when it dies however it dies, is not
//! inherited by fork, and the kernel says which process holds it (`F_GETLK`). It is also
//! dropped when its process closes *any* descriptor of the file, so a monitor never opens its
//! own entry again: listings skip it.
//!
//! Nothing read from the directory is trusted: an entry counts as a live pVM only if its file
//! name, its `id` field, and the pid holding its lock all agree, and that process is a pvm
//! monitor (named [`MONITOR_NAME`]). An entry in state `exited` stays until the pVM's reaper
//! (its parent, or the family's root for orphans) collects the status, as a zombie does. An
//! unlocked entry in another state is stale (its monitor was killed with SIGKILL and nobody
//! reaped it): a lister removes it, under the entry's own lock, so that it never removes the
//! entry of a monitor registering under a recycled pid. Signals to a pVM found here go through a
//! pidfd opened *before* the entry is verified, so a pid recycled meanwhile gets nothing.
use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::rundir::{RunDir, RunDirError};
use crate::sys::{self, LockHolder, Open};

/// What a pvm monitor calls itself (`/proc/PID/comm`), so that an entry can only name one.
pub const MONITOR_NAME: &CStr = c"pvm-monitor";

/// Attempts to register before giving up on an entry that keeps being removed or held (a
/// lister cleaning a stale entry holds it for a moment).
const MAX_REGISTER_TRIES: u32 = 1000;

/// Largest entry file read (entries are a few hundred bytes).
const MAX_ENTRY_SIZE: usize = 64 * 1024;

/// Errors of the registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The runtime directory is unusable.
    #[error(transparent)]
    Dir(#[from] RunDirError),
    /// The runtime directory cannot be read.
    #[error("cannot read the runtime directory {path}: {source}")]
    List {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// An entry cannot be written.
    #[error("registry entry {path}: {source}")]
    Entry {
        /// The entry file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
}

/// Why a signal to a registered pVM was not sent.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignalError {
    /// No live pVM has that id.
    #[error("no such pVM")]
    NoSuchPvm,
    /// The pVM exists but the caller may not signal it.
    #[error("permission denied")]
    NotAllowed,
    /// The host refused (errno).
    #[error("the host refused the signal (errno {0})")]
    Host(i32),
}

/// Lifecycle state recorded in an entry (`ps` refines `running` into running/blocked from /proc).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// The vCPU runs (or waits in a hypercall).
    Running,
    /// Stopped by `pvmctl pause`.
    Paused,
    /// The pVM ended; its status waits for its reaper.
    Exited,
}

/// What the registry records about one pVM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// pVM id (its monitor's host pid).
    pub id: u32,
    /// Parent pVM id, 0 for a family's root.
    pub parent: u32,
    /// Family id (the root's id; for people, pids are reused).
    pub family: u32,
    /// The family's unique key (random, never reused): what family checks compare.
    pub family_key: u64,
    /// Name (argv[0] of the guest).
    pub name: String,
    /// Image path.
    pub image: String,
    /// Guest RAM in bytes.
    pub mem_size: u64,
    /// Start time, milliseconds since the Unix epoch.
    pub started_ms: u64,
    /// Lifecycle state.
    pub state: State,
    /// Host exit status once exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_status: Option<i32>,
    /// How it ended, in words, once exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// The family's published ports, `HOST_ADDR:PORT->GUEST_PORT/tcp`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
}

/// The registry in a runtime directory.
#[derive(Debug)]
pub struct Registry {
    dir: RunDir,
}

/// A live entry, owned and locked by its monitor.
#[derive(Debug)]
pub struct EntryHandle {
    file: OwnedFd,
    path: PathBuf,
    /// The recorded data.
    pub entry: Entry,
}

/// Where entries live unless told otherwise: `$PVM_RUN_DIR`, else `$XDG_RUNTIME_DIR/pvm`, else
/// a directory on a tmpfs (see [`choose_dir`]).
pub fn default_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PVM_RUN_DIR").filter(|d| !d.is_empty()) {
        return dir.into();
    }
    let xdg = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty());
    choose_dir(sys::geteuid(), xdg.as_deref().map(Path::new), |p| {
        sys::is_tmpfs(Path::new(p))
    })
}

/// The shared memory tmpfs every Linux system mounts.
pub const SHM: &str = "/dev/shm";

/// The runtime directory without `$PVM_RUN_DIR`: `$XDG_RUNTIME_DIR/pvm` (a tmpfs of the user's
/// own); for root `/run/pvm` when `/run` is a tmpfs; else `/dev/shm/pvm-<uid>` when that is a
/// tmpfs; else `/run/pvm` (root) or `/tmp/pvm-<uid>`. A tmpfs because every pVM writes its
/// entry, its control socket and its lease there when it starts or forks, and libraries' shared
/// code lives there: on a disk file system each costs more (the control socket and the entry
/// took ~15-25 us more each per fork on this machine's ext4 `/run`).
pub fn choose_dir(uid: u32, xdg_runtime_dir: Option<&Path>, is_tmpfs: impl Fn(&str) -> bool) -> PathBuf {
    if let Some(dir) = xdg_runtime_dir {
        return dir.join("pvm");
    }
    if uid == 0 && is_tmpfs("/run") {
        return "/run/pvm".into();
    }
    if is_tmpfs(SHM) {
        return format!("{SHM}/pvm-{uid}").into();
    }
    if uid == 0 {
        "/run/pvm".into()
    } else {
        format!("/tmp/pvm-{uid}").into()
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn file_name(id: u32) -> String {
    format!("{id}.json")
}

/// The id an entry's file name gives, if it is one.
fn id_of(name: &str) -> Option<u32> {
    let digits = name.strip_suffix(".json")?;
    // Canonical decimal only: "007.json" or "+7.json" are not entries.
    let id: u32 = digits.parse().ok()?;
    (id > 0 && file_name(id) == name).then_some(id)
}

/// The pVM id of control socket file `name` (`ID.sock`, canonical decimal only).
fn socket_id_of(name: &str) -> Option<u32> {
    let id: u32 = name.strip_suffix(".sock")?.parse().ok()?;
    (id > 0 && crate::control::socket_name(id) == name).then_some(id)
}

/// What /proc says of process `pid` (a zombie included): whether it is named `name`, and its
/// parent's pid.
fn proc_stat(pid: u32, name: &CStr) -> Option<(bool, u32)> {
    let stat = sys::proc_stat(pid).ok()?;
    // "PID (COMM) STATE PPID ...": the name is between the first '(' and the last ')'.
    let open = stat.iter().position(|&b| b == b'(')?;
    let close = stat.iter().rposition(|&b| b == b')')?;
    if open >= close {
        return None;
    }
    let named = &stat[open + 1..close] == name.to_bytes();
    let rest = std::str::from_utf8(stat.get(close + 1..)?).ok()?;
    let ppid = rest.split_whitespace().nth(1)?.parse().ok()?;
    Some((named, ppid))
}

/// Whether process `pid` exists (a zombie counts) and is named `name` (read after opening a
/// pidfd of `pid`: a recycled pid then shows as another name or as gone).
pub(crate) fn process_named(pid: u32, name: &CStr) -> bool {
    proc_stat(pid, name).is_some_and(|(named, _)| named)
}

/// Whether process `pid` exists (a zombie counts) and is a pvm monitor.
fn is_monitor(pid: u32) -> bool {
    process_named(pid, MONITOR_NAME)
}

/// Whether pVM `pid` ended and a monitor can still collect its status (its parent, or its
/// family's root): an ended pVM whose reaper is gone (its parent is now init) is stale.
fn awaits_reaper(pid: u32) -> bool {
    proc_stat(pid, MONITOR_NAME).is_some_and(|(monitor, ppid)| monitor && is_monitor(ppid))
}

/// What reading an entry file found.
enum Found {
    /// A live pVM, or one that exited and waits for its reaper.
    Valid(Entry),
    /// Nobody holds it and its monitor is gone: it may be removed.
    Stale,
    /// Not a valid entry (unreadable, malformed, mismatched, or held by someone who is not the
    /// pVM it names): ignored, never removed.
    Invalid,
}

impl Registry {
    /// Opens (creating it, mode 0700) and verifies the runtime directory `dir`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Registry, RegistryError> {
        Ok(Registry {
            dir: RunDir::open(dir.as_ref())?,
        })
    }

    /// The runtime directory.
    pub fn dir(&self) -> &RunDir {
        &self.dir
    }

    /// Creates and locks the entry of a starting pVM (this process).
    pub fn register(&self, mut entry: Entry) -> Result<EntryHandle, RegistryError> {
        let name = file_name(entry.id);
        let path = self.dir.path().join(&name);
        let err = |source| RegistryError::Entry {
            path: path.clone(),
            source,
        };
        entry.started_ms = now_ms();
        // A stale entry of a recycled pid may exist, and a lister may be removing it under its
        // lock right now: take the lock, then make sure the name still leads to our file.
        let mut tries = 0;
        let file = loop {
            tries += 1;
            let file = self.dir.open_file(&name, Open::Create).map_err(err)?;
            let locked = sys::lock_process(file.as_fd());
            if locked.is_ok() && self.dir.names_file(&name, file.as_fd()) {
                break file;
            }
            if tries >= MAX_REGISTER_TRIES {
                let busy = std::io::Error::from_raw_os_error(libc::EBUSY);
                return Err(err(locked.err().unwrap_or(busy)));
            }
            sys::yield_now();
        };
        let mut handle = EntryHandle {
            file,
            path: path.clone(),
            entry,
        };
        handle.write().map_err(err)?;
        Ok(handle)
    }

    /// Reads an entry file and judges it.
    fn examine(&self, name: &str, id: u32) -> Found {
        let Ok(file) = self.dir.open_file(name, Open::Read) else {
            return Found::Invalid;
        };
        let holder = sys::process_lock_holder(file.as_fd());
        let Ok(text) = sys::read_prefix(file.as_fd(), MAX_ENTRY_SIZE) else {
            return Found::Invalid;
        };
        let Ok(entry) = serde_json::from_slice::<Entry>(&text) else {
            return Found::Invalid;
        };
        if entry.id != id {
            return Found::Invalid;
        }
        match holder {
            // Held by the pVM it names: live (or exiting, its teardown still holding it).
            Ok(LockHolder::Process(p)) if p == id && is_monitor(id) => Found::Valid(entry),
            Ok(LockHolder::Nobody) if entry.state == State::Exited && awaits_reaper(id) => {
                Found::Valid(entry)
            }
            Ok(LockHolder::Nobody) => Found::Stale,
            _ => Found::Invalid,
        }
    }

    /// Removes a stale entry under its own lock, so that a monitor registering under a recycled
    /// pid (which takes the same lock) never loses its fresh entry.
    fn remove_stale(&self, name: &str, id: u32) {
        let Ok(file) = self.dir.open_file(name, Open::ReadWrite) else {
            return;
        };
        if sys::lock_process(file.as_fd()).is_err() || !self.dir.names_file(name, file.as_fd()) {
            return;
        }
        // Still stale under the lock? (Its content may have changed meanwhile.)
        let stale = sys::read_prefix(file.as_fd(), MAX_ENTRY_SIZE)
            .ok()
            .and_then(|t| serde_json::from_slice::<Entry>(&t).ok())
            .is_some_and(|e| e.id == id && !(e.state == State::Exited && awaits_reaper(id)));
        if stale {
            let _ = self.dir.remove(name);
            let _ = self.dir.remove(&crate::control::socket_name(id));
        }
        // Dropping `file` releases the lock.
    }

    /// Valid entries of live or not-yet-reaped pVMs, sorted by id, except this process's own
    /// (a monitor must not open its own entry: closing it would drop its lock). Stale entries
    /// are removed on the way; invalid ones are ignored.
    pub fn list(&self) -> Result<Vec<Entry>, RegistryError> {
        let names = self.dir.names().map_err(|source| RegistryError::List {
            path: self.dir.path().to_path_buf(),
            source,
        })?;
        let me = sys::getpid();
        let mut entries = Vec::new();
        for name in &names {
            let Some(id) = id_of(name) else { continue };
            if id == me {
                continue;
            }
            match self.examine(name, id) {
                Found::Valid(entry) => entries.push(entry),
                Found::Stale => self.remove_stale(name, id),
                Found::Invalid => {}
            }
        }
        self.remove_orphan_sockets(&names, me);
        entries.sort_by_key(|e| e.id);
        Ok(entries)
    }

    /// Removes the control sockets of monitors that are gone without an entry: a forked child
    /// killed between making its socket and its entry, or a reaper killed between removing
    /// them (`remove` takes the socket first now; stale entries take their sockets with them).
    /// A socket stays while a monitor of its id lives (a child makes its socket before its
    /// entry) or its entry is there. (A process that is not a monitor never has one: a warm
    /// pool member makes its socket once it is the run's monitor.)
    fn remove_orphan_sockets(&self, names: &[String], me: u32) {
        for name in names {
            let Some(id) = socket_id_of(name) else { continue };
            if id != me && !names.contains(&file_name(id)) && !is_monitor(id) {
                let _ = self.dir.remove(name);
            }
        }
    }

    /// The valid entry of pVM `id` (never this process's own).
    pub fn lookup(&self, id: u32) -> Option<Entry> {
        if id == 0 || id == sys::getpid() {
            return None;
        }
        match self.examine(&file_name(id), id) {
            Found::Valid(entry) => Some(entry),
            _ => None,
        }
    }

    /// What the entry of `id` says, unverified: for a reaper about its own reaped child (whose
    /// lock is gone with it). Never this process's own entry.
    pub fn read_reaped(&self, id: u32) -> Option<Entry> {
        if id == 0 || id == sys::getpid() {
            return None;
        }
        let file = self.dir.open_file(&file_name(id), Open::Read).ok()?;
        let text = sys::read_prefix(file.as_fd(), MAX_ENTRY_SIZE).ok()?;
        serde_json::from_slice::<Entry>(&text).ok().filter(|e| e.id == id)
    }

    /// Removes the named IPC objects (`ipc/KIND.KEY@FAMILYKEY`) of families with no pVM left
    /// in `entries` (a full listing, not made by a monitor: its own entry is not in a listing):
    /// what a root killed with SIGKILL could not clean up. Returns how many it removed.
    pub fn sweep_named_objects(&self, entries: &[Entry]) -> usize {
        // Shared parts of libraries no monitor maps any more (their last user was killed).
        if let Ok(store) = self.dir.subdir(crate::libstore::STORE_DIR) {
            crate::libstore::sweep(&store);
        }
        let Ok(ipc) = self.dir.subdir("ipc") else {
            return 0;
        };
        let mut removed = 0;
        for name in ipc.names().unwrap_or_default() {
            let owner = name
                .rsplit_once('@')
                .and_then(|(_, k)| u64::from_str_radix(k, 16).ok());
            let dead = |key: u64| !entries.iter().any(|e| e.family_key == key);
            // Looked at again right before: a family may have started since `entries` was read.
            if owner.is_some_and(|key| dead(key) && !self.family_alive(key)) && ipc.remove(&name).is_ok() {
                removed += 1;
            }
        }
        removed
    }

    /// Whether the family with key `family_key` has a live pVM (other than this one).
    pub fn family_alive(&self, family_key: u64) -> bool {
        self.list().is_ok_and(|l| {
            l.iter()
                .any(|e| e.family_key == family_key && e.state != State::Exited)
        })
    }

    /// Removes the control socket of `id` (a process just reaped, which left no entry).
    pub fn remove_socket(&self, id: u32) {
        if id != 0 {
            let _ = self.dir.remove(&crate::control::socket_name(id));
        }
    }

    /// Removes entry `id` and its control socket (its pVM was reaped, or is this one, ending):
    /// the socket first, so that a kill in between leaves a stale entry, which a listing
    /// removes, rather than a socket without one.
    pub fn remove(&self, id: u32) {
        self.remove_socket(id);
        if id != 0 {
            let _ = self.dir.remove(&file_name(id));
        }
    }

    /// Sends `sig` to live pVM `id` if `allowed(entry)`: the pidfd is opened first and the entry
    /// verified after, so a pid recycled in between is never signalled.
    pub fn signal(&self, id: u32, sig: i32, allowed: impl Fn(&Entry) -> bool) -> Result<(), SignalError> {
        let pidfd = sys::pidfd_open(id).map_err(|_| SignalError::NoSuchPvm)?;
        let entry = self.lookup(id).ok_or(SignalError::NoSuchPvm)?;
        if entry.state == State::Exited {
            return Err(SignalError::NoSuchPvm);
        }
        if !allowed(&entry) {
            return Err(SignalError::NotAllowed);
        }
        match sys::pidfd_send_signal(pidfd.as_fd(), sig) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Err(SignalError::NoSuchPvm),
            Err(e) => Err(SignalError::Host(e.raw_os_error().unwrap_or(libc::EIO))),
        }
    }
}

impl EntryHandle {
    fn write(&mut self) -> io::Result<()> {
        let mut text = serde_json::to_vec(&self.entry).map_err(io::Error::other)?;
        text.push(b'\n');
        sys::rewrite(self.file.as_fd(), &text)
    }

    /// Records a new state.
    pub fn set_state(&mut self, state: State) -> io::Result<()> {
        self.entry.state = state;
        self.write()
    }

    /// Records the end of the pVM.
    pub fn set_exited(&mut self, exit_status: i32, outcome: String) -> io::Result<()> {
        self.entry.state = State::Exited;
        self.entry.exit_status = Some(exit_status);
        self.entry.outcome = Some(outcome);
        self.write()
    }

    /// The entry's file (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_runtime_directory_is_on_a_tmpfs_where_one_exists() {
        let only = |fs: &'static [&'static str]| move |p: &str| fs.contains(&p);
        let xdg = Path::new("/run/user/1000");
        assert_eq!(
            choose_dir(1000, Some(xdg), only(&[])),
            Path::new("/run/user/1000/pvm")
        );
        assert_eq!(choose_dir(0, None, only(&["/run", SHM])), Path::new("/run/pvm"));
        // /run on a disk (as on this machine): the shared-memory tmpfs instead.
        assert_eq!(choose_dir(0, None, only(&[SHM])), Path::new("/dev/shm/pvm-0"));
        assert_eq!(
            choose_dir(1000, None, only(&[SHM])),
            Path::new("/dev/shm/pvm-1000")
        );
        // No tmpfs at all: the old places.
        assert_eq!(choose_dir(0, None, only(&[])), Path::new("/run/pvm"));
        assert_eq!(choose_dir(1000, None, only(&[])), Path::new("/tmp/pvm-1000"));
        assert!(sys::is_tmpfs(Path::new(SHM)) || !Path::new(SHM).exists());
    }

    fn entry(id: u32) -> Entry {
        Entry {
            id,
            parent: 0,
            family: id,
            family_key: 7,
            name: "t".into(),
            image: "/x".into(),
            mem_size: 1,
            started_ms: 0,
            state: State::Running,
            exit_status: None,
            outcome: None,
            ports: Vec::new(),
        }
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pvm-registry-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn file_names_are_canonical_ids() {
        assert_eq!(id_of("42.json"), Some(42));
        for bad in [
            "042.json",
            "+42.json",
            "0.json",
            "42.json.new",
            "x.json",
            ".json",
            "99999999999.json",
        ] {
            assert_eq!(id_of(bad), None, "{bad}");
        }
    }

    #[test]
    fn own_stale_and_forged_entries() {
        let dir = scratch("entries");
        let reg = Registry::open(&dir).unwrap();
        let me = std::process::id();
        let mut handle = reg.register(entry(me)).unwrap();
        handle.set_state(State::Paused).unwrap();
        // A monitor's own entry is never listed (opening it would drop its lock).
        assert!(reg.list().unwrap().is_empty());
        assert!(reg.lookup(me).is_none());
        // An entry nobody holds is stale and removed; one whose id disagrees with its name or
        // that is not JSON is ignored and kept.
        let write = |name: &str, e: &Entry| {
            std::fs::write(dir.join(name), serde_json::to_vec(e).unwrap()).unwrap();
        };
        write("999999999.json", &entry(999_999_999));
        write("12345.json", &entry(54321));
        std::fs::write(dir.join("777.json"), b"not json").unwrap();
        assert!(reg.list().unwrap().is_empty());
        assert!(!dir.join("999999999.json").exists());
        assert!(dir.join("12345.json").exists() && dir.join("777.json").exists());
        // Our own lock survived all that reading.
        assert!(reg.dir.names_file(&file_name(me), handle.file.as_fd()));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn control_sockets_of_gone_monitors_without_entries_are_removed() {
        // Defect: a forked child killed between making its control socket and its entry (or a
        // reaper killed between removing them) left the socket for good (found by tests/chaos.rs).
        let dir = scratch("sockets");
        let reg = Registry::open(&dir).unwrap();
        let me = std::process::id();
        // A process that is gone: a child, reaped.
        let gone = std::process::Command::new("true").spawn().unwrap();
        let gone_id = gone.id();
        let _ = { gone }.wait();
        let touch = |name: String| std::fs::write(dir.join(name), b"").unwrap();
        touch(crate::control::socket_name(gone_id));
        // Kept: this process's own, one with its entry (held by us, so valid), and names that
        // are not canonical sockets.
        touch(crate::control::socket_name(me));
        touch("0042.sock".into());
        touch("pool.sock".into());
        touch("12345.sock".into());
        std::fs::write(dir.join("12345.json"), b"not json").unwrap();
        let _handle = reg.register(entry(me)).unwrap();
        reg.list().unwrap();
        assert!(!dir.join(crate::control::socket_name(gone_id)).exists());
        let kept = [
            crate::control::socket_name(me),
            "0042.sock".into(),
            "pool.sock".into(),
            "12345.sock".into(),
        ];
        for kept in kept {
            assert!(dir.join(&kept).exists(), "{kept}");
        }
        assert_eq!(socket_id_of("42.sock"), Some(42));
        assert_eq!(socket_id_of("0.sock"), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
