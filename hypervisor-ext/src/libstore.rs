//! The shared parts of libraries, one copy per host: `<run-dir>/lib/<sha256 of the library
//! file>`, a read-only file holding the library's code and read-only data as they lie in memory
//! (the same for every pVM: no relocation writes them), which every monitor that loads the
//! library maps `MAP_SHARED`, read-only, in its place in the library code window. The host keeps
//! one copy in its page cache, however many pVMs (and families) use the library.
//!
//! Nothing in the directory is trusted: a monitor opens a file only through the verified
//! runtime directory (no links followed, the user's own regular file), and before mapping it
//! compares its bytes with the shared part it computed itself from the library it checked. A
//! file that differs (another writer, a crash mid-write) is replaced, never used.
//!
//! A monitor holds a read lock (open-file-description) on each file it maps; a file nobody
//! holds is removed by [`sweep`] (when a library is unloaded, and by `pvmctl ps`).
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::ptr::NonNull;

use crate::rundir::RunDir;
use crate::sys::{self, Open, Populate};
use crate::trust::{hex, Digest};

/// The store's subdirectory of the runtime directory.
pub const STORE_DIR: &str = "lib";

/// A library's shared part, mapped read-only from its store file (and locked while mapped).
#[derive(Debug)]
pub struct SharedPart {
    host: NonNull<u8>,
    len: usize,
    /// Held open for the read lock (and so for the mapping's life).
    _fd: OwnedFd,
}

// SAFETY: the mapping is read-only and owned by this value; nothing aliases it mutably.
unsafe impl Send for SharedPart {}

impl SharedPart {
    /// Maps the shared part `image` of the library with digest `digest` from the store `dir` at
    /// `at` (the library's place in a window reservation), creating (or replacing) its file when
    /// missing or different.
    pub fn get(dir: &RunDir, digest: &Digest, image: &[u8], at: NonNull<u8>) -> io::Result<SharedPart> {
        let name = hex(digest);
        if image.is_empty() {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        match Self::open_existing(dir, &name, image, at)? {
            Some(part) => Ok(part),
            None => Self::create(dir, &name, image, at),
        }
    }

    fn open_existing(
        dir: &RunDir,
        name: &str,
        image: &[u8],
        at: NonNull<u8>,
    ) -> io::Result<Option<SharedPart>> {
        let fd = match dir.open_file(name, Open::Read) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            // Not a regular file of ours (EINVAL, EPERM) or a link (ELOOP): replace it.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EPERM | libc::ELOOP)) => {
                let _ = dir.remove(name);
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        // Locked first, then checked: a sweeper that removes it meanwhile only costs sharing.
        if !sys::share_lock_range(fd.as_fd(), 0, 0)? {
            return Ok(None);
        }
        let st = sys::fstat(fd.as_fd())?;
        if st.st_size as u64 != image.len() as u64 {
            let _ = dir.remove(name);
            return Ok(None);
        }
        // SAFETY: `at` is the library's own place in a window reservation (the caller's).
        unsafe { sys::map_fixed_file_read(at, image.len(), fd.as_fd(), Populate::Now)? };
        let part = SharedPart {
            host: at,
            len: image.len(),
            _fd: fd,
        };
        // SAFETY: the mapping is `len` bytes long and readable.
        let mapped = unsafe { std::slice::from_raw_parts(part.host.as_ptr(), part.len) };
        if mapped != image {
            tracing::warn!(
                file = name,
                "library store file differs from the library: replaced"
            );
            drop(part);
            let _ = dir.remove(name);
            return Ok(None);
        }
        Ok(Some(part))
    }

    /// Writes the file under a temporary name and publishes it under its name for the next
    /// monitors, then maps what this monitor wrote (nothing to compare). If another monitor
    /// published the same library meanwhile, this one uses that file instead (checked), so the
    /// host keeps one copy: replacing it would leave the first monitor with an unlinked copy of
    /// its own for its whole life.
    fn create(dir: &RunDir, name: &str, image: &[u8], at: NonNull<u8>) -> io::Result<SharedPart> {
        for _ in 0..PUBLISH_ATTEMPTS {
            let tmp = format!(".{name}.{}.tmp", sys::getpid());
            let _ = dir.remove(&tmp);
            let fd = sys::open_at(dir.fd(), &tmp, Open::ExclusiveReadOnly)?;
            let written = sys::write_at(fd.as_fd(), image, 0)
                .and_then(|()| sys::share_lock_range(fd.as_fd(), 0, 0).map(drop))
                .and_then(|()| sys::rename_at_noreplace(dir.fd(), &tmp, name));
            match written {
                Ok(()) => {
                    // SAFETY: `at` is the library's own place in a window reservation (the
                    // caller's). Only the guest's touches fault pages in (a few, not all).
                    unsafe { sys::map_fixed_file_read(at, image.len(), fd.as_fd(), Populate::OnTouch)? };
                    return Ok(SharedPart {
                        host: at,
                        len: image.len(),
                        _fd: fd,
                    });
                }
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                    let _ = dir.remove(&tmp);
                    // Published meanwhile: theirs, if it checks out (a bad one is removed, and
                    // this monitor tries again).
                    if let Some(theirs) = Self::open_existing(dir, name, image, at)? {
                        return Ok(theirs);
                    }
                }
                Err(e) => {
                    let _ = dir.remove(&tmp);
                    return Err(e);
                }
            }
        }
        // Another writer keeps putting bad files under the name: give up loading.
        Err(io::Error::from_raw_os_error(libc::EAGAIN))
    }
}

/// How many times a monitor publishes a store file when others keep taking the name.
const PUBLISH_ATTEMPTS: usize = 4;

impl Drop for SharedPart {
    fn drop(&mut self) {
        // SAFETY: our own place; the guest no longer uses the library.
        unsafe { sys::map_fixed_none(self.host, self.len) };
    }
}

/// Removes the store file of `digest` if no monitor maps it (a library this monitor just let
/// go). Best effort.
pub fn release(dir: &RunDir, digest: &Digest) {
    let name = hex(digest);
    if let Ok(fd) = dir.open_file(&name, Open::Read) {
        if matches!(sys::other_lock_in(fd.as_fd(), 0, 0), Ok(None)) && dir.names_file(&name, fd.as_fd()) {
            let _ = dir.remove(&name);
        }
    }
}

/// Removes the store files no monitor maps (and temporary files left by a monitor that died
/// while writing one). Best effort.
pub fn sweep(dir: &RunDir) {
    let Ok(names) = dir.names() else { return };
    for name in names {
        if name.ends_with(".tmp") {
            // Another monitor's file in the making, unless its pid is gone.
            let pid = name.rsplit('.').nth(1).and_then(|p| p.parse::<u32>().ok());
            if pid.is_some_and(|p| sys::proc_stat(p).is_err()) {
                let _ = dir.remove(&name);
            }
            continue;
        }
        let Ok(fd) = dir.open_file(&name, Open::Read) else {
            continue;
        };
        // Nobody's read lock on it (the file is read-only, so the question is asked, not a
        // write lock taken): no monitor maps it.
        if matches!(sys::other_lock_in(fd.as_fd(), 0, 0), Ok(None)) && dir.names_file(&name, fd.as_fd()) {
            let _ = dir.remove(&name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_monitor_that_loses_the_race_to_publish_uses_the_winners_file() {
        let _forks = sys::fork_test_lock();
        let path = std::env::temp_dir().join(format!("pvm-libstore-race-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        let dir = RunDir::open(&path).unwrap();
        let image = vec![0x90u8; 8192];
        let d = crate::trust::digest(b"race");
        let place = sys::reserve(2 * 8192).unwrap();
        // SAFETY: offsets inside the reservation.
        let (pa, pb) = unsafe { (place, place.add(8192)) };
        // Both found no file and write their own; the first publishes.
        let a = SharedPart::create(&dir, &hex(&d), &image, pa).unwrap();
        let b = SharedPart::create(&dir, &hex(&d), &image, pb).unwrap();
        // One file, mapped by both; nobody maps an unlinked copy.
        let names: Vec<String> = std::fs::read_dir(&path)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, [hex(&d)], "no second copy, no temporary file");
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let store: Vec<&str> = maps
            .lines()
            .filter(|l| l.contains(path.to_str().unwrap()))
            .collect();
        assert_eq!(store.len(), 2, "{store:#?}");
        assert!(store.iter().all(|l| !l.ends_with("(deleted)")), "{store:#?}");
        let inode = |l: &str| l.split_whitespace().nth(4).map(str::to_string);
        assert_eq!(inode(store[0]), inode(store[1]), "the same file: {store:#?}");
        drop((a, b));
        let _ = std::fs::remove_dir_all(&path);
    }

    #[test]
    fn one_file_per_digest_checked_replaced_and_swept() {
        let _forks = sys::fork_test_lock();
        let path = std::env::temp_dir().join(format!("pvm-libstore-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        let dir = RunDir::open(&path).unwrap();
        let image = vec![0x90u8; 8192];
        let d = crate::trust::digest(b"lib");
        let place = sys::reserve(3 * 8192).unwrap();
        // SAFETY: offsets inside the reservation.
        let (pa, pb, pc) = unsafe { (place, place.add(8192), place.add(2 * 8192)) };
        let a = SharedPart::get(&dir, &d, &image, pa).unwrap();
        let b = SharedPart::get(&dir, &d, &image, pb).unwrap();
        let file = path.join(hex(&d));
        // Held: a sweep keeps it.
        sweep(&dir);
        assert!(file.exists());
        drop((a, b));
        // A tampered file is replaced, not used.
        std::fs::remove_file(&file).unwrap();
        std::fs::write(&file, vec![0xccu8; 8192]).unwrap();
        let c = SharedPart::get(&dir, &d, &image, pc).unwrap();
        // SAFETY: the mapping is 8192 readable bytes.
        let mapped = unsafe { std::slice::from_raw_parts(pc.as_ptr(), 8192) };
        assert_eq!(mapped, &image[..]);
        assert_eq!(std::fs::read(&file).unwrap(), image, "the file was replaced");
        drop(c);
        sweep(&dir);
        assert!(!file.exists(), "nobody holds it: swept");
        let _ = std::fs::remove_dir_all(&path);
    }
}
