//! The operator's trust store: the SHA-256 digests of the library files pVMs may load.
//!
//! One text file per user, `$PVM_TRUST_STORE`, else `$XDG_CONFIG_HOME/pvm/trusted`, else
//! `~/.config/pvm/trusted`: a line per trusted file, `<sha256 in hex>  <file name>`, the format
//! `sha256sum` prints (the name is a reminder; only the digest counts), `#` starts a comment.
//! `pvmctl lib trust|untrust|trusted` edit and show it.
//!
//! A monitor checks a library's digest against the store when it loads the library (the store
//! is read then, so `lib trust` applies to running pVMs), over the very bytes it then parses
//! and maps. The store must be the user's own and writable by nobody else, as must its
//! directory; otherwise nothing in it counts.
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest as _, Sha256};

use crate::sys::{self, Open};

/// A SHA-256 digest.
pub type Digest = [u8; 32];

/// Largest trust store read.
const MAX_STORE_SIZE: usize = 1 << 20;

/// File name of the store in its directory.
pub const STORE_NAME: &str = "trusted";

/// Why the trust store cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// Another user could change what is trusted.
    #[error("the trust store {path} is not safe: {why} (it must be yours and writable only by you)")]
    Unsafe {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong.
        why: &'static str,
    },
    /// A line is not `<digest> <name>`.
    #[error("{path}:{line}: not `<sha256 hex> <name>`")]
    Malformed {
        /// The store.
        path: PathBuf,
        /// Its line number.
        line: usize,
    },
    /// Reading or writing it failed.
    #[error("trust store {path}: {source}")]
    Io {
        /// The store.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

/// The SHA-256 digest of `bytes`.
pub fn digest(bytes: &[u8]) -> Digest {
    Sha256::digest(bytes).into()
}

/// A digest in lowercase hex.
pub fn hex(d: &Digest) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses 64 hex digits.
pub fn parse_hex(text: &str) -> Option<Digest> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut d = [0u8; 32];
    for (i, byte) in d.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(d)
}

/// Where the store is unless `$PVM_TRUST_STORE` says otherwise.
pub fn default_path() -> PathBuf {
    if let Some(p) = std::env::var_os("PVM_TRUST_STORE").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("/etc"));
    config.join("pvm").join(STORE_NAME)
}

/// One trusted file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Its digest.
    pub digest: Digest,
    /// The name it was trusted under.
    pub name: String,
}

fn check_owner(st: &sys::Stat, path: &Path) -> Result<(), TrustError> {
    let me = sys::geteuid();
    if st.st_uid != me && st.st_uid != 0 {
        return Err(TrustError::Unsafe {
            path: path.into(),
            why: "owned by another user",
        });
    }
    if st.st_mode & 0o022 != 0 {
        return Err(TrustError::Unsafe {
            path: path.into(),
            why: "writable by group or others",
        });
    }
    Ok(())
}

fn parse(text: &str, path: &Path) -> Result<Vec<Entry>, TrustError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let (hex_part, name) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let digest = parse_hex(hex_part).ok_or(TrustError::Malformed {
            path: path.into(),
            line: i + 1,
        })?;
        out.push(Entry {
            digest,
            name: name.trim().trim_start_matches('*').to_string(),
        });
    }
    Ok(out)
}

/// The store as the monitor holds it: its directory, opened (and checked) before confinement,
/// and the file read through it when it changed (a check looks at its inode, size and
/// modification time, one `stat`, and reads it again only if one of them moved).
#[derive(Debug)]
pub struct TrustRef {
    dir: OwnedFd,
    path: PathBuf,
    cache: Arc<Mutex<Option<Cached>>>,
}

/// Which version of the store file: device, inode, size, modification time.
type FileVersion = (u64, u64, i64, i64, i64);

/// What a read of the store found, and which version of the file it read.
#[derive(Debug)]
struct Cached {
    key: FileVersion,
    digests: Vec<Digest>,
}

// The stat fields' types differ between targets: the casts are not all no-ops everywhere.
#[allow(clippy::unnecessary_cast)]
fn cache_key(st: &sys::Stat) -> FileVersion {
    (
        st.st_dev as u64,
        st.st_ino as u64,
        st.st_size as i64,
        st.st_mtime as i64,
        st.st_mtime_nsec as i64,
    )
}

impl TrustRef {
    /// Opens the directory of the store at `path` (creating it, mode 0700, if missing).
    pub fn open(path: &Path) -> Result<TrustRef, TrustError> {
        let io_err = |source| TrustError::Io {
            path: path.into(),
            source,
        };
        let dir_path = path.parent().unwrap_or(Path::new("/"));
        sys::mkdir_all(dir_path).map_err(io_err)?;
        let dir = sys::open_dir(dir_path).map_err(io_err)?;
        check_owner(&sys::fstat(dir.as_fd()).map_err(io_err)?, dir_path)?;
        Ok(TrustRef {
            dir,
            path: path.into(),
            cache: Arc::default(),
        })
    }

    /// A second handle on the same store (for a helper thread), sharing what was read.
    pub fn try_clone(&self) -> io::Result<TrustRef> {
        Ok(TrustRef {
            dir: self.dir.try_clone()?,
            path: self.path.clone(),
            cache: Arc::clone(&self.cache),
        })
    }

    fn file_name(&self) -> &str {
        self.path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or(STORE_NAME)
    }

    /// The store's path (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the store trusts now (nothing when it does not exist).
    pub fn entries(&self) -> Result<Vec<Entry>, TrustError> {
        self.read().map(|(entries, _)| entries)
    }

    /// The entries, and the version of the file they came from (None: no file).
    fn read(&self) -> Result<(Vec<Entry>, Option<FileVersion>), TrustError> {
        let io_err = |source| TrustError::Io {
            path: self.path.clone(),
            source,
        };
        let fd = match sys::open_at(self.dir.as_fd(), self.file_name(), Open::Read) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), None)),
            Err(e) => return Err(io_err(e)),
        };
        let st = sys::fstat(fd.as_fd()).map_err(io_err)?;
        if !sys::is_file(&st) {
            return Err(TrustError::Unsafe {
                path: self.path.clone(),
                why: "not a regular file",
            });
        }
        check_owner(&st, &self.path)?;
        let bytes = sys::read_prefix(fd.as_fd(), MAX_STORE_SIZE).map_err(io_err)?;
        Ok((
            parse(&String::from_utf8_lossy(&bytes), &self.path)?,
            Some(cache_key(&st)),
        ))
    }

    /// Whether `digest` is trusted.
    pub fn contains(&self, digest: &Digest) -> Result<bool, TrustError> {
        let mut cache = self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match sys::stat_at(self.dir.as_fd(), self.file_name()) {
            Ok(st) => {
                check_owner(&st, &self.path)?;
                if let Some(c) = cache.as_ref().filter(|c| c.key == cache_key(&st)) {
                    return Ok(c.digests.contains(digest));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(_) => {}
        }
        let (entries, key) = self.read()?;
        let digests: Vec<Digest> = entries.iter().map(|e| e.digest).collect();
        let found = digests.contains(digest);
        *cache = key.map(|key| Cached { key, digests });
        Ok(found)
    }

    /// Adds `digest` under `name` (if not there yet); `Ok(false)` if it was.
    pub fn add(&self, digest: &Digest, name: &str) -> Result<bool, TrustError> {
        let mut entries = self.entries()?;
        if entries.iter().any(|e| &e.digest == digest) {
            return Ok(false);
        }
        entries.push(Entry {
            digest: *digest,
            name: name.to_string(),
        });
        self.write(&entries)?;
        Ok(true)
    }

    /// Removes every entry whose digest is `digest` or whose name is `name`; returns them.
    pub fn remove(&self, matches: impl Fn(&Entry) -> bool) -> Result<Vec<Entry>, TrustError> {
        let (removed, kept): (Vec<_>, Vec<_>) = self.entries()?.into_iter().partition(|e| matches(e));
        if !removed.is_empty() {
            self.write(&kept)?;
        }
        Ok(removed)
    }

    /// Replaces the store with `entries` (a new file renamed over the old: readers see one or
    /// the other).
    fn write(&self, entries: &[Entry]) -> Result<(), TrustError> {
        let io_err = |source| TrustError::Io {
            path: self.path.clone(),
            source,
        };
        let name = self
            .path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or(STORE_NAME);
        let mut text =
            String::from("# Libraries pVMs may load: sha256 and file name (pvmctl lib trust/untrust).\n");
        for e in entries {
            text.push_str(&format!("{}  {}\n", hex(&e.digest), e.name));
        }
        let tmp = format!(".{name}.{}.tmp", sys::getpid());
        let _ = sys::unlink_at(self.dir.as_fd(), &tmp);
        let fd = sys::open_at(self.dir.as_fd(), &tmp, Open::Exclusive).map_err(io_err)?;
        sys::rewrite(fd.as_fd(), text.as_bytes()).map_err(io_err)?;
        drop(fd);
        sys::rename_at(self.dir.as_fd(), &tmp, name).map_err(io_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn digests_round_trip_through_hex() {
        let d = digest(b"abc");
        assert_eq!(
            hex(&d),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(parse_hex(&hex(&d)), Some(d));
        assert_eq!(parse_hex("zz"), None);
    }

    #[test]
    fn the_store_adds_lists_removes_and_refuses_unsafe_files() {
        let dir = std::env::temp_dir().join(format!("pvm-trust-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("trusted");
        let store = TrustRef::open(&path).unwrap();
        assert!(store.entries().unwrap().is_empty());
        let a = digest(b"a");
        let b = digest(b"b");
        assert!(store.add(&a, "liba.so").unwrap());
        assert!(!store.add(&a, "liba.so").unwrap());
        assert!(store.add(&b, "libb.so").unwrap());
        assert!(store.contains(&a).unwrap());
        // sha256sum's output format is accepted as it is.
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(&format!("{}  liba.so", hex(&a))));
        let removed = store.remove(|e| e.name == "liba.so").unwrap();
        assert_eq!(removed.len(), 1);
        assert!(!store.contains(&a).unwrap() && store.contains(&b).unwrap());

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(matches!(store.contains(&b), Err(TrustError::Unsafe { .. })));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "not a digest  x\n").unwrap();
        assert!(matches!(
            store.entries(),
            Err(TrustError::Malformed { line: 1, .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
