//! The runtime directory: where every monitor of a user meets the others (registry entries, the
//! resource ledger, named IPC objects). Nothing in it is trusted blindly: the directory is
//! verified when opened (a directory, not a symbolic link, owned by this user, no access for
//! anyone else), and from then on used only through its descriptor: every file in it is opened
//! with `openat` relative to that descriptor, never following a symbolic link and never
//! blocking on a FIFO, and checked to be a regular file of this user.
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::sys::{self, Open};

/// Why a runtime directory is refused.
#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    /// It cannot be created or opened.
    #[error("runtime directory {path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Its last component is a symbolic link.
    #[error("runtime directory {0} is a symbolic link: pvm uses only a real directory of yours (remove the link, or pass another --run-dir)")]
    Symlink(PathBuf),
    /// It is not a directory.
    #[error("runtime directory {0} is not a directory")]
    NotDirectory(PathBuf),
    /// Another user owns it.
    #[error("runtime directory {path} belongs to user {owner}, not to you (user {me}): another user may have planted it; remove it or pass another --run-dir")]
    Owner {
        /// The directory.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// This user.
        me: u32,
    },
    /// Others may read, write or enter it.
    #[error("runtime directory {path} has mode {mode:03o}: it must be private to you (chmod 700 {path})")]
    Mode {
        /// The directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

/// A verified runtime directory (or a subdirectory of one).
#[derive(Debug)]
pub struct RunDir {
    fd: OwnedFd,
    path: PathBuf,
}

/// Checks that `fd` is a directory of this user that nobody else may access.
fn verify_dir(fd: BorrowedFd<'_>, path: &Path) -> Result<(), RunDirError> {
    let st = sys::fstat(fd).map_err(|source| RunDirError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if !sys::is_dir(&st) {
        return Err(RunDirError::NotDirectory(path.to_path_buf()));
    }
    let me = sys::geteuid();
    if st.st_uid != me {
        return Err(RunDirError::Owner {
            path: path.to_path_buf(),
            owner: st.st_uid,
            me,
        });
    }
    if st.st_mode & 0o077 != 0 {
        return Err(RunDirError::Mode {
            path: path.to_path_buf(),
            mode: st.st_mode & 0o7777,
        });
    }
    Ok(())
}

fn open_error(path: &Path, source: io::Error) -> RunDirError {
    let is_link = || std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    match source.raw_os_error() {
        // With O_NOFOLLOW | O_DIRECTORY, a symbolic link's open fails with ELOOP or ENOTDIR.
        Some(libc::ELOOP | libc::ENOTDIR) if is_link() => RunDirError::Symlink(path.to_path_buf()),
        Some(libc::ENOTDIR) => RunDirError::NotDirectory(path.to_path_buf()),
        _ => RunDirError::Io {
            path: path.to_path_buf(),
            source,
        },
    }
}

impl RunDir {
    /// Opens the runtime directory `path`, creating it (and missing parents) with mode 0700.
    pub fn open(path: &Path) -> Result<RunDir, RunDirError> {
        if let Err(source) = sys::mkdir_all(path) {
            // An existing symbolic link or file makes mkdir fail: open says what it is.
            if source.kind() != io::ErrorKind::AlreadyExists {
                return Err(open_error(path, source));
            }
        }
        let fd = sys::open_dir(path).map_err(|e| open_error(path, e))?;
        verify_dir(fd.as_fd(), path)?;
        Ok(RunDir {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// Opens subdirectory `name`, creating it with mode 0700, verified like the directory.
    pub fn subdir(&self, name: &str) -> Result<RunDir, RunDirError> {
        let path = self.path.join(name);
        sys::mkdir_at(self.fd.as_fd(), name).map_err(|source| RunDirError::Io {
            path: path.clone(),
            source,
        })?;
        let fd = sys::open_at(self.fd.as_fd(), name, Open::Dir).map_err(|e| open_error(&path, e))?;
        verify_dir(fd.as_fd(), &path)?;
        Ok(RunDir { fd, path })
    }

    /// A second handle on the directory.
    pub fn try_clone(&self) -> io::Result<RunDir> {
        Ok(RunDir {
            fd: self.fd.try_clone()?,
            path: self.path.clone(),
        })
    }

    /// The directory's path (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens file `name`: never through a symbolic link, never a FIFO or device (`EINVAL`), never
    /// another user's file (`EPERM`).
    pub fn open_file(&self, name: &str, how: Open) -> io::Result<OwnedFd> {
        let fd = sys::open_at(self.fd.as_fd(), name, how)?;
        let st = sys::fstat(fd.as_fd())?;
        if !sys::is_file(&st) {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        if st.st_uid != sys::geteuid() {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        Ok(fd)
    }

    /// Opens (creating it) file `name` read-write, never through a symbolic link, but without
    /// checking it is a regular file of this user: for a file this monitor (or its family)
    /// created and checked before, on a path where a fork's few system calls count.
    pub fn open_trusted(&self, name: &str) -> io::Result<OwnedFd> {
        sys::open_at(self.fd.as_fd(), name, Open::Create)
    }

    /// The names in the directory.
    pub fn names(&self) -> io::Result<Vec<String>> {
        sys::list_dir(self.fd.as_fd())
    }

    /// Removes file `name` (a symbolic link is removed, never followed).
    pub fn remove(&self, name: &str) -> io::Result<()> {
        sys::unlink_at(self.fd.as_fd(), name)
    }

    /// Whether `name` currently names the file open as `fd` (same device and inode). Looks the
    /// name up without opening it: a process that opens and closes a file it holds a POSIX lock
    /// on loses the lock.
    pub fn names_file(&self, name: &str, fd: BorrowedFd<'_>) -> bool {
        match (sys::stat_at(self.fd.as_fd(), name), sys::fstat(fd)) {
            (Ok(a), Ok(b)) => a.st_dev == b.st_dev && a.st_ino == b.st_ino,
            _ => false,
        }
    }

    /// The directory's descriptor.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("pvm-rundir-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        let _ = std::fs::remove_file(&p);
        p
    }

    #[test]
    fn a_fresh_directory_is_private_and_accepted() {
        let p = scratch("fresh");
        let dir = RunDir::open(&p).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        dir.subdir("ipc").unwrap();
        let _ = std::fs::remove_dir_all(&p);
    }

    #[test]
    fn open_directories_symlinks_and_foreign_files_are_refused() {
        let p = scratch("open");
        std::fs::create_dir(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(
            RunDir::open(&p),
            Err(RunDirError::Mode { mode: 0o777, .. })
        ));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).unwrap();
        let dir = RunDir::open(&p).unwrap();

        let link = scratch("link");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        assert!(matches!(RunDir::open(&link), Err(RunDirError::Symlink(_))));

        // A symbolic link planted where a file is expected is not followed.
        let target = p.join("target");
        std::fs::write(&target, b"secret").unwrap();
        std::os::unix::fs::symlink(&target, p.join("planted")).unwrap();
        let err = dir.open_file("planted", Open::ReadWrite).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP));
        // A FIFO is refused without blocking.
        let rw = rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR;
        rustix::fs::mkfifoat(rustix::fs::CWD, p.join("fifo"), rw).unwrap();
        let err = dir.open_file("fifo", Open::Read).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
        assert!(dir.open_file("target", Open::Read).is_ok());
        let _ = std::fs::remove_file(&link);
        let _ = std::fs::remove_dir_all(&p);
    }
}
