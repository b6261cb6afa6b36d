//! pvm's benchmarks: pvm measured against Linux (or peer) baselines taken in the same run.
//!
//! `pvmctl bench` is the entry point: pvmctl parses [`BenchCommand`] and calls [`bench`]. Every
//! benchmark prints a table (or `--json`), and can write its samples as CSV (`--csv FILE`) and
//! draw pvm and the baseline side by side as an SVG chart (`--svg FILE`), see [`figures`].
//!
//! Host calls go through rustix where it has them (signals to processes and groups, waits,
//! pipes, mappings, clocks, CPU affinity, uname). Raw libc is left only where rustix has no call
//! a std program may use, each at its use: `fork` and what a forked child does before it execs
//! or exits, signal handlers and masks, `tgkill`, POSIX message queues and
//! `dlopen` (the Linux baselines themselves).
use std::io;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::OnceLock;

use clap::Subcommand;
use hypervisor_ext::loader::LoadError;
use hypervisor_ext::{MonitorError, Outcome};

mod boot;
mod child;
mod dynlink;
pub mod figures;
mod fork;
mod host;
mod ipc;
mod net;
mod security;
mod stats;

pub(crate) use child::{Child, ChildStatus};
pub(crate) use host::HostInfo;
pub(crate) use stats::{
    format_us, median, parse_at_least, round3, rounds_text, sig3, verdict, write_targets, Stats,
};

/// Benchmarks.
#[derive(Subcommand)]
pub enum BenchCommand {
    /// Boot latency: `pvmctl run` of a guest that exits at once, against fork + exec of a static
    /// Linux executable, measured in the same run.
    Boot(boot::BootArgs),
    /// Fork latency: a pVM's fork (parent pause, child ready, sustained rate) with 1 and 64 MiB
    /// touched, against Linux fork() of the same footprint, measured in the same run.
    Fork(crate::fork::ForkArgs),
    /// Density: N idle forked pVMs (creation time, host memory, private memory per monitor).
    Density(crate::fork::DensityArgs),
    /// IPC: pVM pipe round trips (spinning and not), pipe throughput and signal round trips,
    /// against Linux pipes, POSIX message queues and signals, measured in the same run.
    Ipc(crate::ipc::RoundsArgs),
    /// Security: what the seccomp filter costs (confined against --unconfined) and how fast
    /// Ctrl-C, kill and pause act on a guest spinning at CPL3, against a Linux process.
    Security(crate::ipc::RoundsArgs),
    /// Libraries: load + link into a live pVM (cold and warm) against Linux's dlopen, the pause
    /// of an online update, and a call through a handle against a direct call.
    Dynlink(crate::ipc::RoundsArgs),
    /// Network: redis-benchmark against the kv example and against redis-server, a bulk
    /// stream and a 1-byte round trip against Linux loopback, measured in the same run.
    Net(crate::ipc::RoundsArgs),
}

/// Errors of benchmarks.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The warm pool of `bench boot` failed (what pvmctl or the pool said).
    #[error("the bench's warm pool: {0}")]
    Pool(String),
    /// The guest image does not exist.
    #[error(
        "guest image {0} does not exist: build the example guests with `cargo build` \
         (pvmctl's build script builds them) or pass --image PATH"
    )]
    ImageMissing(PathBuf),
    /// The guest image cannot be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The monitor failed.
    #[error(transparent)]
    Monitor(#[from] MonitorError),
    /// The in-process pVM did not exit with status 0.
    #[error("the in-process pVM of {image} ended with {outcome:?}, expected Exited(0)")]
    UnexpectedOutcome {
        /// The image.
        image: PathBuf,
        /// How it ended.
        outcome: Outcome,
    },
    /// The pVM exited without the monitor recording its first hypercall.
    #[error("the in-process pVM of {0} exited but recorded no first hypercall")]
    NoBootTime(PathBuf),
    /// The path of the running pvmctl is unknown.
    #[error("cannot find the pvmctl executable: {0}")]
    CurrentExe(#[source] io::Error),
    /// A path cannot be passed to execv.
    #[error("{0} contains a NUL byte")]
    NulInPath(PathBuf),
    /// A file operation failed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done ("write", "open"...).
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A process operation (fork, waitpid) failed.
    #[error("{call} failed for {program}: {source}")]
    Process {
        /// The system call.
        call: &'static str,
        /// The program being run.
        program: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A child did not exit with status 0.
    #[error("`{command}` {status}, expected exit status 0")]
    ChildFailed {
        /// The command line.
        command: String,
        /// How it ended.
        status: ChildStatus,
    },
    /// `bench fork` or `bench density` failed.
    #[error(transparent)]
    ForkBench(#[from] crate::fork::ForkBenchError),
    /// `bench ipc` failed.
    #[error(transparent)]
    IpcBench(#[from] crate::ipc::IpcBenchError),
    /// `bench security` failed.
    #[error(transparent)]
    SecurityBench(#[from] crate::security::SecurityBenchError),
    /// `bench dynlink` failed.
    #[error(transparent)]
    DynlinkBench(#[from] crate::dynlink::DynlinkBenchError),
    /// `bench net` failed.
    #[error(transparent)]
    NetBench(#[from] crate::net::NetBenchError),
    /// `--csv` or `--svg` failed.
    #[error(transparent)]
    Figures(#[from] figures::FigureError),
}

/// A private scratch directory for one benchmark run (mode 0700, as a runtime directory must
/// be), removed with everything in it when dropped, on every path out. On a tmpfs (`/dev/shm`,
/// where there is one) if `tmpfs`: where pvm's default runtime directory is on most hosts.
pub(crate) fn scratch(what: &str, tmpfs: bool) -> Result<tempfile::TempDir, BenchError> {
    let base = match std::path::Path::new(hypervisor_ext::registry::SHM) {
        shm if tmpfs && shm.is_dir() => shm.to_path_buf(),
        _ => std::env::temp_dir(),
    };
    use std::os::unix::fs::PermissionsExt;
    tempfile::Builder::new()
        .prefix(&format!("pvm-bench-{what}-"))
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir_in(&base)
        .map_err(|source| BenchError::Io {
            action: "make a directory in",
            path: base,
            source,
        })
}

/// Where pvmctl's build put the example guests and libraries: the last place a benchmark looks
/// for them (see [`guest_path`]).
#[derive(Clone, Debug)]
pub struct BuiltGuests {
    /// The guest executables.
    pub guests: PathBuf,
    /// The guest libraries (`libNAME.so`).
    pub libs: PathBuf,
}

static BUILT_GUESTS: OnceLock<BuiltGuests> = OnceLock::new();

/// Runs a benchmark.
pub fn bench(cmd: BenchCommand, built: BuiltGuests) -> Result<ExitCode, BenchError> {
    // One command per process: the first value is the one.
    let _ = BUILT_GUESTS.set(built);
    match cmd {
        BenchCommand::Boot(args) => boot::boot(args),
        BenchCommand::Fork(args) => crate::fork::fork(args),
        BenchCommand::Density(args) => crate::fork::density(args),
        BenchCommand::Ipc(args) => crate::ipc::ipc(args),
        BenchCommand::Security(args) => crate::security::security(args),
        BenchCommand::Dynlink(args) => crate::dynlink::dynlink(args),
        BenchCommand::Net(args) => crate::net::net(args),
    }
}

/// An example guest a benchmark needs is missing.
#[derive(Debug, thiserror::Error)]
#[error("guest {0} does not exist: build the example guests with `cargo build` (pvmctl's build script builds them), or name their directory with $PVM_GUEST_DIR")]
pub struct GuestMissing(PathBuf);

/// Where a benchmark's guests are, found when it runs: `$PVM_GUEST_DIR` (and
/// `$PVM_GUEST_LIB_DIR` for libraries), else `guests/` (`guest-libs/`) next to the pvmctl
/// executable (an installed pvmctl), else where pvmctl's build put them.
fn guest_dir(var: &str, beside: &str, built: fn(&BuiltGuests) -> &PathBuf) -> PathBuf {
    if let Some(dir) = std::env::var_os(var).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let installed = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join(beside)))
        .filter(|d| d.is_dir());
    installed
        .or_else(|| BUILT_GUESTS.get().map(|b| built(b).clone()))
        .unwrap_or_else(|| PathBuf::from(beside))
}

/// The example guest `name` a benchmark runs.
pub(crate) fn guest_path(name: &str) -> Result<PathBuf, GuestMissing> {
    let path = guest_dir("PVM_GUEST_DIR", "guests", |b| &b.guests).join(name);
    if path.exists() {
        Ok(path)
    } else {
        Err(GuestMissing(path))
    }
}

/// The example library `libNAME.so` a benchmark loads.
pub(crate) fn guest_lib_path(name: &str) -> Result<PathBuf, GuestMissing> {
    let path = guest_dir("PVM_GUEST_LIB_DIR", "guest-libs", |b| &b.libs).join(format!("lib{name}.so"));
    if path.exists() {
        Ok(path)
    } else {
        Err(GuestMissing(path))
    }
}
