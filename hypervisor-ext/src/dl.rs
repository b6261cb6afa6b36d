//! Libraries of one pVM, monitor side: which files the operator allows, loading one (trust,
//! parse, link, map) into a free library slot, closing it, and what a forked child inherits.
//!
//! Loading reads the file once, into memory, and everything after works on those bytes: the
//! digest checked against the trust store is the digest of what is parsed, relocated and mapped
//! (no check-then-reopen race). The shared part comes from the host-wide store (`libstore`), the
//! RELRO part and the writable part are private memory of this monitor, copy-on-write across
//! fork; each is mapped in place in the library's slot of the windows (`vstate/space.rs`), whose
//! page tables and memory slots exist from boot: loading changes neither.
//!
//! After its RELRO, the monitor writes the library's symbol index (`pvm_abi::LibSymbol`s sorted
//! by hash, then the names, then the version string), read-only to the guest: `pvm::dl` looks
//! symbols up there without an exit.
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Arc;

use pvm_abi::layout::{LIB_SLOT_SIZE, PAGE_SIZE};
use pvm_abi::{symbol_hash, DlInfo, LibSymbol};
use pvm_dynlink::{Export, Library, LinkError, ParseError, MAX_FILE_SIZE};

use crate::libstore::{self, SharedPart};
use crate::rundir::{RunDir, RunDirError};
use crate::sys::{self, Open};
use crate::trust::{self, Digest, TrustError, TrustRef};
use crate::vstate::memory::Extra;
use crate::vstate::space::{lib_code_base, LibWindows, MAX_LIBS};

/// Longest library name.
pub const MAX_NAME_LEN: usize = 64;

/// Whether `name` is a library name: 1 to 64 bytes of `[A-Za-z0-9._-]`, not `.` or `..` (the
/// rule of IPC keys: it never names a path).
pub fn valid_name(name: &str) -> bool {
    let ok = |b: u8| b.is_ascii_alphanumeric() || b"._-".contains(&b);
    !name.is_empty() && name.len() <= MAX_NAME_LEN && name.bytes().all(ok) && name != "." && name != ".."
}

/// The file a name stands for in a library directory.
pub fn file_in_dir(name: &str) -> String {
    format!("lib{name}.so")
}

/// What the operator allows a pVM to load.
#[derive(Clone, Debug)]
pub struct LibConfig {
    /// `--lib NAME=FILE`: names bound to files.
    pub libs: Vec<(String, PathBuf)>,
    /// `--lib-dir DIR`: any `libNAME.so` in it.
    pub lib_dir: Option<PathBuf>,
    /// The trust store ([`trust::default_path`] unless told otherwise).
    pub trust_store: PathBuf,
}

impl Default for LibConfig {
    /// No library allowed; the user's trust store.
    fn default() -> LibConfig {
        LibConfig {
            libs: Vec::new(),
            lib_dir: None,
            trust_store: trust::default_path(),
        }
    }
}

/// Why the libraries of a pVM cannot be set up (at `pvmctl run`).
#[derive(Debug, thiserror::Error)]
pub enum DlSetupError {
    /// A `--lib` name is not a name.
    #[error("invalid library name {0:?}: use 1 to {MAX_NAME_LEN} letters, digits, '.', '_' or '-'")]
    Name(String),
    /// A `--lib` file cannot be opened.
    #[error("--lib {name}={}: {source}", path.display())]
    File {
        /// The name.
        name: String,
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The `--lib-dir` cannot be opened.
    #[error("--lib-dir {}: {source}", path.display())]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The trust store cannot be used.
    #[error(transparent)]
    Trust(#[from] TrustError),
    /// The library store in the runtime directory cannot be used.
    #[error(transparent)]
    Store(#[from] RunDirError),
}

/// Why a library cannot be loaded. Each has the errno the guest sees and a message it may show.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The operator did not allow this name.
    #[error("no library {0:?} is allowed for this pVM (pvmctl run --lib NAME=FILE or --lib-dir DIR)")]
    NotAllowed(String),
    /// Reading the file failed.
    #[error("library {name}: cannot read {file}: {source}")]
    Read {
        /// The name.
        name: String,
        /// The file.
        file: String,
        /// Why.
        source: io::Error,
    },
    /// The digest is not in the trust store.
    #[error(
        "library {name} ({file}, sha256 {digest}) is not trusted: check it, then `pvmctl lib trust {file}`"
    )]
    Untrusted {
        /// The name.
        name: String,
        /// The file.
        file: String,
        /// Its digest in hex.
        digest: String,
    },
    /// The trust store cannot be read.
    #[error("library {name}: {source}")]
    Trust {
        /// The name.
        name: String,
        /// Why.
        source: TrustError,
    },
    /// Malformed or refused.
    #[error("library {name} ({file}): {source}")]
    Parse {
        /// The name.
        name: String,
        /// The file.
        file: String,
        /// What is wrong.
        source: ParseError,
    },
    /// Cannot be linked.
    #[error("library {name}: {source}")]
    Link {
        /// The name.
        name: String,
        /// What is missing.
        source: LinkError,
    },
    /// It names a library (DT_NEEDED) that is not loaded.
    #[error("library {name} needs {needed}, which is not loaded: load it first")]
    Needed {
        /// The name.
        name: String,
        /// What it needs.
        needed: String,
    },
    /// Every library slot is taken.
    #[error("no room for library {0}: {MAX_LIBS} libraries are loaded")]
    Full(String),
    /// The shared store failed.
    #[error("library {name}: the library store failed: {source}")]
    Store {
        /// The name.
        name: String,
        /// Why.
        source: io::Error,
    },
    /// Mapping its memory or its slots failed.
    #[error("library {name}: cannot map it: {what}")]
    Map {
        /// The name.
        name: String,
        /// Why.
        what: String,
    },
}

impl LoadError {
    /// The errno the guest sees.
    pub fn errno(&self) -> i64 {
        use pvm_abi::errno::*;
        match self {
            LoadError::NotAllowed(_) => ENOENT,
            LoadError::Read { .. } | LoadError::Store { .. } => EIO,
            LoadError::Untrusted { .. } | LoadError::Trust { .. } => EACCES,
            LoadError::Parse { .. } | LoadError::Link { .. } | LoadError::Needed { .. } => ENOEXEC,
            LoadError::Full(_) => EAGAIN,
            LoadError::Map { .. } => ENOMEM,
        }
    }
}

/// A private part of a library (RELRO or data) in its place in a library window: filled when
/// made, copy-on-write across fork, emptied (inaccessible again, memory freed) when dropped.
#[derive(Debug)]
struct Placed {
    host: NonNull<u8>,
    len: usize,
}

// SAFETY: the part is owned by this value alone (its place in the window is its library's).
unsafe impl Send for Placed {}

impl Placed {
    /// Private memory at `host` holding `bytes` (and zeroes to `len`), read-only if
    /// `read_only`.
    fn new(host: NonNull<u8>, bytes: &[&[u8]], len: usize, read_only: bool) -> io::Result<Placed> {
        // SAFETY: `host` is the library's own place in a window reservation (`LibWindows::host`),
        // unused by anything else.
        unsafe { sys::map_fixed_anon(host, len)? };
        let m = Placed { host, len };
        let mut at = 0;
        for b in bytes {
            // SAFETY: the parts fit in `len` (the caller sized it) and the memory is fresh.
            unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), m.host.as_ptr().add(at), b.len()) };
            at += b.len();
        }
        if read_only {
            // SAFETY: our own fresh memory; nothing writes it from here on.
            unsafe { sys::protect_read_only(m.host, m.len)? };
        }
        Ok(m)
    }
}

impl Drop for Placed {
    fn drop(&mut self) {
        // SAFETY: our own place; the guest no longer uses the library (it was closed or
        // replaced).
        unsafe { sys::map_fixed_none(self.host, self.len) };
    }
}

fn round_up(x: u64) -> u64 {
    x.div_ceil(PAGE_SIZE) * PAGE_SIZE
}

/// Times the steps of a load, for the debug log (`PVM_LOG=debug`).
struct StepClock {
    last: u64,
    laps: Vec<(&'static str, u64)>,
}

impl StepClock {
    fn start() -> StepClock {
        StepClock {
            last: sys::monotonic_ns(),
            laps: Vec::new(),
        }
    }

    fn lap(&mut self, step: &'static str) {
        let now = sys::monotonic_ns();
        self.laps.push((step, now - self.last));
        self.last = now;
    }
}

impl std::fmt::Display for StepClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (step, ns)) in self.laps.iter().enumerate() {
            write!(f, "{}{step} {} us", if i == 0 { "" } else { ", " }, ns / 1000)?;
        }
        Ok(())
    }
}

/// The operator's allowed files.
#[derive(Debug)]
struct Sources {
    files: BTreeMap<String, (OwnedFd, PathBuf)>,
    dir: Option<(OwnedFd, PathBuf)>,
    /// The last read's buffer, kept: a load reuses its pages instead of faulting new ones in.
    buffer: std::cell::RefCell<Vec<u8>>,
}

impl Sources {
    fn open(config: &LibConfig) -> Result<Sources, DlSetupError> {
        let mut files = BTreeMap::new();
        for (name, path) in &config.libs {
            if !valid_name(name) {
                return Err(DlSetupError::Name(name.clone()));
            }
            let fd = sys::open_read(path).map_err(|source| DlSetupError::File {
                name: name.clone(),
                path: path.clone(),
                source,
            })?;
            files.insert(name.clone(), (fd, path.clone()));
        }
        let dir = match &config.lib_dir {
            Some(path) => Some((
                sys::open_dir(path).map_err(|source| DlSetupError::Dir {
                    path: path.clone(),
                    source,
                })?,
                path.clone(),
            )),
            None => None,
        };
        Ok(Sources {
            files,
            dir,
            buffer: Default::default(),
        })
    }

    /// Keeps `bytes`' memory for the next read.
    fn give_back(&self, bytes: Vec<u8>) {
        *self.buffer.borrow_mut() = bytes;
    }

    /// Reads the file `name` stands for (at most one byte more than a library may have, so a
    /// larger file is refused by the parser, not cut short).
    fn read(&self, name: &str) -> Result<(Vec<u8>, String), LoadError> {
        let read_err = |file: &str, source| LoadError::Read {
            name: name.into(),
            file: file.into(),
            source,
        };
        let (fd, file) = if let Some((fd, path)) = self.files.get(name) {
            (
                fd.try_clone()
                    .map_err(|e| read_err(&path.display().to_string(), e))?,
                path.display().to_string(),
            )
        } else if let Some((dir, path)) = &self.dir {
            let file_name = file_in_dir(name);
            let file = path.join(&file_name).display().to_string();
            let fd = match sys::open_at(dir.as_fd(), &file_name, Open::Read) {
                Ok(fd) => fd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(LoadError::NotAllowed(name.into()))
                }
                Err(e) => return Err(read_err(&file, e)),
            };
            (fd, file)
        } else {
            return Err(LoadError::NotAllowed(name.into()));
        };
        let st = sys::fstat(fd.as_fd()).map_err(|e| read_err(&file, e))?;
        if !sys::is_file(&st) {
            return Err(read_err(&file, io::Error::from_raw_os_error(libc::EINVAL)));
        }
        let mut bytes = std::mem::take(&mut *self.buffer.borrow_mut());
        sys::read_whole_into(fd.as_fd(), MAX_FILE_SIZE + 1, &mut bytes).map_err(|e| read_err(&file, e))?;
        Ok((bytes, file))
    }
}

/// Everything linking a library needs, owned (a helper thread prepares an update with it).
pub(crate) struct LinkEnv {
    trust: TrustRef,
    store: RunDir,
    windows: LibWindows,
    /// Where imports resolve, in order: the app's exports, then the loaded libraries' (with
    /// the slot of the library, None for the app).
    sources: Vec<(SymbolIndex, Option<usize>)>,
    /// File names of the loaded libraries (what DT_NEEDED may name).
    files: BTreeSet<String>,
}

/// A library linked for one slot and in its place in the library windows.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub name: String,
    pub file: String,
    pub digest: Digest,
    pub version: Option<String>,
    pub index: usize,
    pub info: DlInfo,
    /// Its definitions, at their guest addresses.
    symbols: SymbolIndex,
    /// Library slots it imports from.
    pub deps: BTreeSet<usize>,
    /// Its code part in the code window: shared part, RELRO and symbol index.
    code: (u64, u64),
    /// Its data part in the data window, if it has one.
    data: Option<(u64, u64)>,
    /// Bytes of its shared part.
    pub shared_bytes: u64,
    /// Bytes of its private parts.
    pub private_bytes: u64,
    _shared: Option<SharedPart>,
    _relro: Placed,
    _data: Option<Placed>,
}

/// A symbol index in the format the guest reads (`LibSymbol` records sorted by hash, then the
/// names, then the version string), located at guest address `at`; the monitor keeps a copy to
/// resolve later libraries' imports against it. The app's exports are one too.
#[derive(Clone, Debug)]
pub(crate) struct SymbolIndex {
    bytes: Arc<[u8]>,
    count: usize,
    at: u64,
}

impl SymbolIndex {
    /// The index of `exports` (and `version`) for guest address `at`; also where the version
    /// string starts.
    fn build<'n>(
        exports: impl Iterator<Item = (&'n str, u64)>,
        version: Option<&str>,
        at: u64,
    ) -> (SymbolIndex, u64) {
        let mut recs: Vec<(u64, &str, u64)> =
            exports.map(|(n, a)| (symbol_hash(n.as_bytes()), n, a)).collect();
        recs.sort_unstable_by_key(|r| r.0);
        let record = size_of::<LibSymbol>();
        let names_len: usize = recs.iter().map(|r| r.1.len()).sum();
        let names_at = at + (recs.len() * record) as u64;
        let mut bytes = Vec::with_capacity(recs.len() * record + names_len + version.map_or(0, str::len));
        let mut name_at = names_at;
        for &(hash, name, addr) in &recs {
            for v in [hash, name_at, name.len() as u64, addr] {
                bytes.extend_from_slice(&v.to_le_bytes());
            }
            name_at += name.len() as u64;
        }
        for &(_, name, _) in &recs {
            bytes.extend_from_slice(name.as_bytes());
        }
        let version_at = names_at + names_len as u64;
        if let Some(v) = version {
            bytes.extend_from_slice(v.as_bytes());
        }
        let index = SymbolIndex {
            bytes: bytes.into(),
            count: recs.len(),
            at,
        };
        (index, version_at)
    }

    fn field(&self, i: usize, f: usize) -> u64 {
        let at = i * size_of::<LibSymbol>() + f * 8;
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.bytes[at..at + 8]);
        u64::from_le_bytes(b)
    }

    /// The address `name` has in this index.
    fn lookup(&self, name: &str) -> Option<u64> {
        let hash = symbol_hash(name.as_bytes());
        let (mut lo, mut hi) = (0, self.count);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.field(mid, 0) < hash {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        (lo..self.count)
            .take_while(|&i| self.field(i, 0) == hash)
            .find_map(|i| {
                let start = (self.field(i, 1) - self.at) as usize;
                let len = self.field(i, 2) as usize;
                (self.bytes.get(start..start + len) == Some(name.as_bytes())).then(|| self.field(i, 3))
            })
    }
}

impl LinkEnv {
    /// Reads, checks, links and maps library `name` (file bytes `bytes`) for slot `index`.
    pub fn prepare(&self, name: &str, file: &str, bytes: &[u8], index: usize) -> Result<Prepared, LoadError> {
        let mut clock = StepClock::start();
        let digest = trust::digest(bytes);
        clock.lap("digest");
        match self.trust.contains(&digest) {
            Ok(true) => {}
            Ok(false) => {
                return Err(LoadError::Untrusted {
                    name: name.into(),
                    file: file.into(),
                    digest: trust::hex(&digest),
                })
            }
            Err(source) => {
                return Err(LoadError::Trust {
                    name: name.into(),
                    source,
                })
            }
        }
        clock.lap("trust");
        let lib = Library::parse(bytes).map_err(|source| LoadError::Parse {
            name: name.into(),
            file: file.into(),
            source,
        })?;
        clock.lap("parse");
        for needed in lib.needed() {
            if !self.files.contains(needed) {
                return Err(LoadError::Needed {
                    name: name.into(),
                    needed: needed.clone(),
                });
            }
        }
        let base = lib_code_base(index);
        let mut deps = BTreeSet::new();
        let linked = lib
            .link(base, |sym| {
                self.sources.iter().find_map(|(index, from)| {
                    let addr = index.lookup(sym)?;
                    if let Some(slot) = from {
                        deps.insert(*slot);
                    }
                    Some(addr)
                })
            })
            .map_err(|source| LoadError::Link {
                name: name.into(),
                source,
            })?;
        clock.lap("link");
        let layout = lib.layout();

        let map_err = |what: String| LoadError::Map {
            name: name.into(),
            what,
        };

        // The RELRO part, then the index, in one private read-only mapping.
        let relro_len = linked.relro.len() as u64;
        let index_at = base + layout.shared_end + relro_len;
        let (symbols, version_at) =
            SymbolIndex::build(lib.exports().map(|(n, v)| (n, base + v)), lib.version(), index_at);
        let index_bytes = &symbols.bytes;
        let private_len = round_up(relro_len + index_bytes.len() as u64);
        if layout.shared_end + private_len > LIB_SLOT_SIZE {
            return Err(map_err(format!(
                "its code part and symbol index need {:#x} bytes, more than a library slot",
                layout.shared_end + private_len
            )));
        }
        let place = |gpa: u64, len: u64| {
            self.windows
                .host(gpa, len)
                .ok_or_else(|| map_err(format!("{gpa:#x}+{len:#x} is outside the library windows")))
        };
        let relro_at = place(base + layout.shared_end, private_len)?;
        let relro = Placed::new(
            relro_at,
            &[&linked.relro, index_bytes],
            private_len as usize,
            true,
        )
        .map_err(|e| map_err(e.to_string()))?;
        let data = if linked.data.is_empty() {
            None
        } else {
            Some(
                Placed::new(
                    place(base + layout.data_start, linked.data.len() as u64)?,
                    &[&linked.data],
                    linked.data.len(),
                    false,
                )
                .map_err(|e| map_err(e.to_string()))?,
            )
        };
        clock.lap("private parts");
        let image = lib.shared_image();
        let shared = if image.is_empty() {
            None
        } else {
            let at = place(base, image.len() as u64)?;
            Some(
                SharedPart::get(&self.store, &digest, &image, at).map_err(|source| LoadError::Store {
                    name: name.into(),
                    source,
                })?,
            )
        };

        clock.lap("shared part");
        tracing::debug!(library = name, steps = %clock, "library prepared");
        let version = lib.version().map(str::to_string);
        Ok(Prepared {
            name: name.into(),
            file: file.into(),
            digest,
            info: DlInfo {
                handle: index as u64,
                base,
                symbols: index_at,
                nsymbols: symbols.count as u64,
                version: if version.is_some() { version_at } else { 0 },
                version_len: version.as_ref().map_or(0, |v| v.len() as u64),
            },
            version,
            index,
            symbols: symbols.clone(),
            deps,
            code: (base, base + layout.shared_end + private_len),
            data: (!linked.data.is_empty()).then(|| {
                (
                    base + layout.data_start,
                    base + layout.data_start + linked.data.len() as u64,
                )
            }),
            shared_bytes: image.len() as u64,
            private_bytes: private_len + linked.data.len() as u64,
            _shared: shared,
            _relro: relro,
            _data: data,
        })
    }
}

/// A loaded library.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub lib: Prepared,
    /// Guest references (opens not yet closed).
    pub refs: u32,
    /// Load order (earlier libraries resolve first).
    seq: u64,
}

/// What `pvmctl lib list` shows of a loaded library.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LibStatus {
    /// The name the guest opened it by.
    pub name: String,
    /// Its handle (slot).
    pub handle: u64,
    /// Its version, if it declares one.
    pub version: Option<String>,
    /// SHA-256 of its file, in hex.
    pub digest: String,
    /// The file it was loaded from.
    pub file: String,
    /// The guest's references to it.
    pub refs: u32,
    /// Bytes of its shared part (one copy on the host).
    pub shared_bytes: u64,
    /// Bytes of its private parts in this pVM.
    pub private_bytes: u64,
}

/// The libraries of one pVM.
pub(crate) struct Libraries {
    sources: Sources,
    /// The trust store and the shared store (None when no library is allowed: nothing to load,
    /// nothing opened at boot).
    stores: Option<(TrustRef, RunDir)>,
    app: SymbolIndex,
    /// The app's code (where a runtime's hook escape may be).
    app_code: Vec<(u64, u64)>,
    loaded: Vec<Option<Loaded>>,
    seq: u64,
    /// A slot taken by an update under way.
    reserved: Option<usize>,
    /// Where libraries go (set once the VM exists).
    windows: Option<LibWindows>,
}

impl Libraries {
    /// Opens what the operator allows (before confinement), the trust store and the shared store
    /// in `run_dir`.
    pub fn new(
        config: &LibConfig,
        run_dir: &RunDir,
        app: Vec<Export>,
        app_code: Vec<(u64, u64)>,
    ) -> Result<Libraries, DlSetupError> {
        let sources = Sources::open(config)?;
        let stores = if sources.files.is_empty() && sources.dir.is_none() {
            None
        } else {
            Some((
                TrustRef::open(&config.trust_store)?,
                run_dir.subdir(libstore::STORE_DIR)?,
            ))
        };
        let (app, _) = SymbolIndex::build(app.iter().map(|e| (e.name.as_str(), e.addr)), None, 0);
        Ok(Libraries {
            sources,
            stores,
            app,
            app_code,
            loaded: (0..MAX_LIBS).map(|_| None).collect(),
            seq: 0,
            reserved: None,
            windows: None,
        })
    }

    /// The loaded library in slot `handle`.
    pub fn get(&self, handle: u64) -> Option<&Loaded> {
        usize::try_from(handle)
            .ok()
            .and_then(|i| self.loaded.get(i)?.as_ref())
    }

    /// The slot of the loaded library `name`.
    pub fn find(&self, name: &str) -> Option<usize> {
        self.loaded
            .iter()
            .position(|l| l.as_ref().is_some_and(|l| l.lib.name == name))
    }

    /// The environment to link a library in, without the library in slot `except` (one being
    /// replaced: the new version does not link against the old).
    pub fn env(&self, except: Option<usize>) -> io::Result<LinkEnv> {
        let mut sources = vec![(self.app.clone(), None)];
        let mut order: Vec<&Loaded> = self
            .loaded
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != except)
            .filter_map(|(_, l)| l.as_ref())
            .collect();
        order.sort_by_key(|l| l.seq);
        let mut files = BTreeSet::new();
        for l in order {
            sources.push((l.lib.symbols.clone(), Some(l.lib.index)));
            if let Some(f) = Path::new(&l.lib.file).file_name().and_then(|f| f.to_str()) {
                files.insert(f.to_string());
            }
            files.insert(file_in_dir(&l.lib.name));
        }
        let (trust, store) = self
            .stores
            .as_ref()
            .ok_or_else(|| io::Error::other("no library is allowed for this pVM"))?;
        let windows = self
            .windows
            .ok_or_else(|| io::Error::other("this pVM has no library windows"))?;
        Ok(LinkEnv {
            trust: trust.try_clone()?,
            store: store.try_clone()?,
            windows,
            sources,
            files,
        })
    }

    /// Whether the operator allows this pVM any library (it then gets library windows).
    pub fn allowed(&self) -> bool {
        self.stores.is_some()
    }

    /// The library windows the libraries go to.
    pub fn set_windows(&mut self, windows: LibWindows) {
        self.windows = Some(windows);
    }

    /// A free slot.
    fn free_slot(&self) -> Option<usize> {
        (0..MAX_LIBS).find(|&i| self.loaded[i].is_none() && Some(i) != self.reserved)
    }

    /// Whether `addr` is in the app's code.
    pub fn in_app_code(&self, addr: u64) -> bool {
        self.app_code
            .iter()
            .any(|&(start, end)| (start..end).contains(&addr))
    }

    /// Reads the file `name` stands for.
    pub fn read(&self, name: &str) -> Result<(Vec<u8>, String), LoadError> {
        self.sources.read(name)
    }

    /// [`pvm_abi::Hypercall::DlOpen`]: the library `name` (loaded now, or one more reference).
    pub fn open(&mut self, name: &str) -> Result<DlInfo, LoadError> {
        if let Some(i) = self.find(name) {
            let l = self.loaded[i]
                .as_mut()
                .ok_or_else(|| LoadError::NotAllowed(name.into()))?;
            l.refs = l.refs.saturating_add(1);
            return Ok(l.lib.info);
        }
        let mut clock = StepClock::start();
        let (bytes, file) = self.read(name)?;
        clock.lap("read");
        let index = self.free_slot().ok_or_else(|| LoadError::Full(name.into()))?;
        let env = self.env(None).map_err(|e| LoadError::Map {
            name: name.into(),
            what: e.to_string(),
        })?;
        clock.lap("environment");
        let prepared = env.prepare(name, &file, &bytes, index);
        self.sources.give_back(bytes);
        let lib = prepared?;
        clock.lap("prepare");
        tracing::debug!(library = name, steps = %clock, "library opened");
        Ok(self.record(lib, 1))
    }

    /// Records a library that is in its place in the windows.
    pub fn record(&mut self, lib: Prepared, refs: u32) -> DlInfo {
        let info = lib.info;
        self.seq += 1;
        tracing::info!(name = lib.name, handle = lib.index, version = ?lib.version, "library loaded");
        let index = lib.index;
        self.loaded[index] = Some(Loaded {
            lib,
            refs,
            seq: self.seq,
        });
        info
    }

    /// Which loaded libraries import from slot `index`.
    pub fn dependents(&self, index: usize) -> Vec<String> {
        self.loaded
            .iter()
            .flatten()
            .filter(|l| l.lib.deps.contains(&index))
            .map(|l| l.lib.name.clone())
            .collect()
    }

    /// [`pvm_abi::Hypercall::DlClose`]: drops a reference; the last one unloads the library
    /// (its place emptied, its memory freed, its shared part given back to the store).
    /// `unlisted` is given what stays of the guest's library memory before the library's memory
    /// goes (for `GuestMemory::set_extra`).
    pub fn close(&mut self, handle: u64, unlisted: impl FnOnce(Vec<Extra>)) -> Result<(), i64> {
        use pvm_abi::errno::{EBADF, EBUSY};
        let index = usize::try_from(handle).map_err(|_| -EBADF)?;
        let l = self
            .loaded
            .get_mut(index)
            .and_then(Option::as_mut)
            .ok_or(-EBADF)?;
        if l.refs > 1 {
            l.refs -= 1;
            return Ok(());
        }
        if !self.dependents(index).is_empty() {
            return Err(-EBUSY);
        }
        let mut clock = StepClock::start();
        let gone = self.unload(index);
        unlisted(self.extra());
        clock.lap("unload");
        let digest = gone.as_ref().map(|l| l.lib.digest);
        drop(gone);
        clock.lap("unmap");
        if let Some(d) = digest {
            self.release_store(&d);
        }
        clock.lap("store");
        tracing::debug!(handle, steps = %clock, "library closed");
        Ok(())
    }

    /// Lets the store remove the shared part of `digest` if no pVM maps it any more.
    pub fn release_store(&self, digest: &Digest) {
        if let Some((_, store)) = &self.stores {
            libstore::release(store, digest);
        }
    }

    /// Takes library `index` out of the pVM (dropping what this returns empties its place).
    pub fn unload(&mut self, index: usize) -> Option<Loaded> {
        let l = self.loaded.get_mut(index)?.take()?;
        tracing::info!(name = l.lib.name, handle = index, "library unloaded");
        Some(l)
    }

    /// The filled parts of the library windows, for hypercall buffers there
    /// (`GuestMemory::set_extra`).
    pub fn extra(&self) -> Vec<Extra> {
        let Some(w) = self.windows else { return Vec::new() };
        let mut out = Vec::new();
        for l in self.loaded.iter().flatten() {
            let parts = [(l.lib.code, false)]
                .into_iter()
                .chain(l.lib.data.map(|d| (d, true)));
            for ((start, end), writable) in parts {
                if let Some(host) = w.host(start, end - start) {
                    out.push(Extra {
                        start,
                        end,
                        host,
                        writable,
                    });
                }
            }
        }
        out
    }

    /// The loaded libraries, for `pvmctl lib list`.
    pub fn list(&self) -> Vec<LibStatus> {
        self.loaded
            .iter()
            .flatten()
            .map(|l| LibStatus {
                name: l.lib.name.clone(),
                handle: l.lib.index as u64,
                version: l.lib.version.clone(),
                digest: trust::hex(&l.lib.digest),
                file: l.lib.file.clone(),
                refs: l.refs,
                shared_bytes: l.lib.shared_bytes,
                private_bytes: l.lib.private_bytes,
            })
            .collect()
    }

    /// Reserves a slot for a new version of a library (until [`Libraries::release`]).
    pub fn reserve(&mut self) -> Option<usize> {
        let slot = self.free_slot()?;
        self.reserved = Some(slot);
        Some(slot)
    }

    /// Gives the reserved slot back.
    pub fn release(&mut self) {
        self.reserved = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_names_never_name_paths() {
        for ok in ["kv", "libkv.v2", "a-b_c", "x".repeat(64).as_str()] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "../kv",
            "k v",
            "x".repeat(65).as_str(),
            "kv\0",
        ] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn the_symbol_index_is_sorted_by_hash_and_finds_every_name() {
        let exports = [("alpha", 0x10), ("beta", 0x20), ("gamma", 0x30)];
        let (index, version_at) = SymbolIndex::build(exports.iter().copied(), Some("1.0"), 0x1000);
        let mut last = 0;
        for i in 0..3 {
            let hash = index.field(i, 0);
            assert!(hash >= last);
            last = hash;
            let start = (index.field(i, 1) - 0x1000) as usize;
            let text = std::str::from_utf8(&index.bytes[start..start + index.field(i, 2) as usize]).unwrap();
            assert_eq!(symbol_hash(text.as_bytes()), hash);
        }
        for (name, addr) in exports {
            assert_eq!(index.lookup(name), Some(addr));
        }
        assert_eq!(index.lookup("delta"), None);
        let v = (version_at - 0x1000) as usize;
        assert_eq!(&index.bytes[v..v + 3], b"1.0");
    }
}
