//! The registry of running pVMs: no daemon, one JSON entry per pVM in a runtime directory.
//!
//! A monitor creates `<dir>/<id>.json` and holds a POSIX (`fcntl`) write lock on it for its
//! whole life. Such locks belong to the process and vanish when it dies, however it dies, and a
//! forked child does not inherit them: so an entry whose lock nobody holds belongs to a monitor
//! that is gone. An entry in state `exited` stays until the pVM's reaper (its parent, or the
//! family's root for orphans) collects the status, as a zombie process does; any other unlocked
//! entry is stale (its monitor was killed with SIGKILL) and readers remove it.
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use serde::{Deserialize, Serialize};

/// Errors of the registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The runtime directory cannot be created or read.
    #[error("runtime directory {path}: {source}")]
    Dir {
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
    /// Family id (the root's id).
    pub family: u32,
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
}

/// The number of pVMs registered in a runtime directory, in a shared page (`live.count`) that
/// every monitor using the directory maps, so that checking the host-wide limit at a fork costs
/// an atomic add instead of a directory scan. It can only overcount (a monitor killed with
/// SIGKILL never gives its unit back): when it says the limit is reached, the directory is
/// counted for real before a pVM is refused.
#[derive(Clone, Copy)]
pub struct HostCounter {
    live: &'static AtomicU32,
}

impl HostCounter {
    /// Counts one more pVM unless that would pass `max`.
    pub fn try_acquire(&self, max: u32, registry: &Registry) -> bool {
        let add = || {
            self.live
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < max).then_some(n + 1))
                .is_ok()
        };
        if add() {
            return true;
        }
        let actual = registry.list().map_or(max as usize, |l| l.len());
        self.live
            .store(actual.min(u32::MAX as usize) as u32, Ordering::SeqCst);
        add()
    }

    /// Counts one pVM less.
    pub fn release(&self) {
        let _ = self
            .live
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    }
}

/// The runtime directory.
#[derive(Clone, Debug)]
pub struct Registry {
    dir: PathBuf,
}

/// A live entry, owned and locked by its monitor.
#[derive(Debug)]
pub struct EntryHandle {
    file: File,
    path: PathBuf,
    /// The recorded data.
    pub entry: Entry,
}

/// Where entries live unless told otherwise: `$PVM_RUN_DIR`, else `$XDG_RUNTIME_DIR/pvm`, else
/// `/run/pvm` for root, else `/tmp/pvm-<uid>`.
pub fn default_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PVM_RUN_DIR").filter(|d| !d.is_empty()) {
        return dir.into();
    }
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return Path::new(&dir).join("pvm");
    }
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
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

/// Whether some process holds a write lock on `file`.
fn is_locked(file: &File) -> bool {
    // SAFETY: a zeroed flock is a valid argument; F_GETLK only writes into it.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_RDLCK as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    // SAFETY: F_GETLK on an open fd with a valid flock.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut fl) };
    r == 0 && fl.l_type != libc::F_UNLCK as i16
}

fn lock(file: &File) -> io::Result<()> {
    // SAFETY: a zeroed flock is valid; l_len 0 locks the whole file.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    // SAFETY: F_SETLK on an open fd with a valid flock.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &fl) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether process `pid` still exists (a zombie counts).
fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

impl Registry {
    /// Opens (creating it, mode 0700) the runtime directory `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Registry, RegistryError> {
        let dir = dir.into();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|source| RegistryError::Dir {
                path: dir.clone(),
                source,
            })?;
        Ok(Registry { dir })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, id: u32) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Creates and locks the entry of a starting pVM.
    pub fn register(&self, mut entry: Entry) -> Result<EntryHandle, RegistryError> {
        let path = self.path(entry.id);
        let err = |source| RegistryError::Entry {
            path: path.clone(),
            source,
        };
        entry.started_ms = now_ms();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .map_err(err)?;
        lock(&file).map_err(err)?;
        let mut handle = EntryHandle {
            file,
            path: path.clone(),
            entry,
        };
        handle.write().map_err(err)?;
        Ok(handle)
    }

    /// Number of entries (live or not yet reaped), by scanning the directory.
    pub fn count(&self) -> usize {
        fs::read_dir(&self.dir).map_or(0, |d| {
            d.flatten()
                .filter(|e| e.file_name().as_encoded_bytes().ends_with(b".json"))
                .count()
        })
    }

    /// Maps the directory's [`HostCounter`], creating it if needed.
    pub fn host_counter(&self) -> Result<HostCounter, RegistryError> {
        let path = self.dir.join("live.count");
        let err = |source| RegistryError::Entry {
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .map_err(err)?;
        if file.metadata().map_err(err)?.len() < 4096 {
            file.set_len(4096).map_err(err)?;
        }
        // SAFETY: maps one page of a regular file of at least that size; the mapping outlives
        // the fd (closed on return) and is never unmapped.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(err(io::Error::last_os_error()));
        }
        // SAFETY: the page is mapped for the rest of the process's life (and inherited by
        // fork), page-aligned, and only ever accessed atomically.
        let live = unsafe { &*(p as *const AtomicU32) };
        Ok(HostCounter { live })
    }

    /// Reads entry `id`, if present.
    pub fn read(&self, id: u32) -> Option<Entry> {
        read_entry(&self.path(id)).map(|(entry, _)| entry)
    }

    /// Removes entry `id` (its pVM was reaped).
    pub fn remove(&self, id: u32) {
        let _ = fs::remove_file(self.path(id));
    }

    /// All entries of live or not-yet-reaped pVMs, sorted by id. Stale entries (monitor gone
    /// without exiting, e.g. killed with SIGKILL) are removed on the way.
    pub fn list(&self) -> Result<Vec<Entry>, RegistryError> {
        let dir = fs::read_dir(&self.dir).map_err(|source| RegistryError::Dir {
            path: self.dir.clone(),
            source,
        })?;
        let mut entries = Vec::new();
        for item in dir.flatten() {
            let path = item.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let Some((entry, locked)) = read_entry(&path) else {
                continue;
            };
            // F_GETLK does not report a process's own locks: a monitor listing the registry
            // must not take its own entry for a stale one.
            let ours = entry.id == std::process::id();
            let alive = locked || ours || (entry.state == State::Exited && process_exists(entry.id));
            if alive {
                entries.push(entry);
            } else {
                let _ = fs::remove_file(&path);
            }
        }
        entries.sort_by_key(|e| e.id);
        Ok(entries)
    }
}

/// Reads an entry and whether its monitor still holds it. A torn read (the monitor rewriting
/// it) is retried.
fn read_entry(path: &Path) -> Option<(Entry, bool)> {
    for _ in 0..3 {
        let mut file = File::open(path).ok()?;
        let mut text = String::new();
        file.read_to_string(&mut text).ok()?;
        if let Ok(entry) = serde_json::from_str::<Entry>(&text) {
            return Some((entry, is_locked(&file)));
        }
        std::thread::yield_now();
    }
    None
}

impl EntryHandle {
    fn write(&mut self) -> io::Result<()> {
        let mut text = serde_json::to_vec(&self.entry).map_err(io::Error::other)?;
        text.push(b'\n');
        self.file.rewind()?;
        self.file.write_all(&text)?;
        self.file.set_len(text.len() as u64)
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

    /// The entry's file (for closing an inherited handle without touching the entry).
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u32) -> Entry {
        Entry {
            id,
            parent: 0,
            family: id,
            name: "t".into(),
            image: "/x".into(),
            mem_size: 1,
            started_ms: 0,
            state: State::Running,
            exit_status: None,
            outcome: None,
        }
    }

    #[test]
    fn entries_round_trip_and_stale_ones_vanish() {
        let dir = std::env::temp_dir().join(format!("pvm-registry-unit-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let reg = Registry::open(&dir).unwrap();
        let me = std::process::id();
        let mut handle = reg.register(entry(me)).unwrap();
        handle.set_state(State::Paused).unwrap();
        // Our own lock is invisible to F_GETLK from our own process, so check the content here
        // and the stale path with an entry no process holds.
        assert_eq!(reg.read(me).unwrap().state, State::Paused);
        fs::write(
            reg.path(999_999_999),
            serde_json::to_vec(&entry(999_999_999)).unwrap(),
        )
        .unwrap();
        assert_eq!(reg.count(), 2);
        let listed = reg.list().unwrap();
        assert!(listed.iter().all(|e| e.id != 999_999_999));
        assert!(listed.iter().any(|e| e.id == me), "our own entry is not stale");
        assert!(!reg.path(999_999_999).exists());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn host_counter_limits_and_recounts_when_full() {
        let dir = std::env::temp_dir().join(format!("pvm-registry-count-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let reg = Registry::open(&dir).unwrap();
        let counter = reg.host_counter().unwrap();
        assert!(counter.try_acquire(2, &reg));
        assert!(counter.try_acquire(2, &reg));
        // Full by the counter, but the directory holds no entry: the recount makes room.
        assert!(counter.try_acquire(2, &reg));
        // A second mapping (another monitor) sees the same count.
        let other = reg.host_counter().unwrap();
        other.release();
        assert!(counter.try_acquire(2, &reg));
        let _ = fs::remove_dir_all(&dir);
    }
}
