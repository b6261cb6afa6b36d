//! `pvmctl bench fork` and `pvmctl bench density`.
//!
//! `bench fork` runs the guest `forkbench` (N forks of a child that exits at once, each waited
//! for, with 1 or 64 MiB touched) under `pvmctl run`, with a pipe passed as `PVM_BENCH_FD`: every
//! monitor of the family writes a 32-byte timing record per fork into it (parent pause, child
//! ready). Each pVM run is followed by the same measurement of Linux `fork()` of this process
//! with the same footprint, so that machine noise hits both alike; the Linux fork + exit + wait
//! of this small process comes last.
//!
//! `bench density` runs `forktest idle N` (a root that forks N children that all idle in a
//! hypercall) and reads the host's accounting: MemAvailable before and after, and each child
//! monitor's `/proc/PID/smaps_rollup`.
use std::collections::VecDeque;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use clap::Args;
use hypervisor_ext::registry::{Registry, RegistryError};
use hypervisor_ext::{monotonic_ns, BENCH_CHILD_READY, BENCH_PARENT_PAUSE};

use crate::figures::{Bar, FigureArgs, Figures, Group, Kind, Samples};
use crate::{format_us, round3, sig3, BenchError, Child, ChildStatus, HostInfo, Stats};

/// Arguments of `pvmctl bench fork`.
#[derive(Args)]
pub struct ForkArgs {
    /// Forks measured per row (at least 100, for a meaningful p99).
    #[arg(long, value_name = "N", default_value_t = 200, value_parser = parse_iterations)]
    iterations: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    figures: FigureArgs,
}

/// Arguments of `pvmctl bench density`.
#[derive(Args)]
pub struct DensityArgs {
    /// Idle children to fork; repeat the option for several runs.
    #[arg(
        long = "count",
        value_name = "N",
        default_values_t = [100u32, 1000],
        value_parser = clap::value_parser!(u32).range(1..=1_000_000)
    )]
    counts: Vec<u32>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    figures: FigureArgs,
}

/// Errors of `bench fork` and `bench density` (wrapped in [`BenchError`]).
#[derive(Debug, thiserror::Error)]
pub enum ForkBenchError {
    /// An example guest is missing.
    #[error(transparent)]
    GuestMissing(#[from] crate::GuestMissing),
    /// A system call of the benchmark itself failed.
    #[error("{call} failed: {source}")]
    Sys {
        /// The call.
        call: &'static str,
        /// The error.
        source: io::Error,
    },
    /// Reading a child's output or the timing records failed.
    #[error("reading the {what} failed: {source}")]
    Read {
        /// What was read.
        what: &'static str,
        /// The error.
        source: io::Error,
    },
    /// A thread reading a pipe panicked.
    #[error("the thread reading the {0} panicked")]
    ReaderPanicked(&'static str),
    /// The record stream does not end on a record boundary.
    #[error("the timing records are {len} bytes, not a multiple of {RECORD_SIZE}")]
    TruncatedRecords {
        /// Bytes received.
        len: usize,
    },
    /// A record of an unknown kind.
    #[error("timing record {index} has unknown kind {kind}")]
    UnknownRecordKind {
        /// Its position in the stream.
        index: usize,
        /// The kind found.
        kind: u64,
    },
    /// A record that ends before it starts.
    #[error("timing record {index} ends at {t1} ns, before its start at {t0} ns")]
    RecordBackwards {
        /// Its position in the stream.
        index: usize,
        /// Start.
        t0: u64,
        /// End.
        t1: u64,
    },
    /// Too few or too many records of a kind.
    #[error("forkbench with {mib} MiB: {got} {kind} records, expected {expected}")]
    RecordCount {
        /// The footprint.
        mib: u64,
        /// "parent pause" or "child ready".
        kind: &'static str,
        /// Records received.
        got: usize,
        /// Forks made.
        expected: usize,
    },
    /// forkbench did not print its summary line (or printed another one).
    #[error(
        "forkbench with {mib} MiB did not print `forkbench: {forks} forks of {mib} MiB in X ns`; \
         its output:\n{output}"
    )]
    NoSummary {
        /// The footprint.
        mib: u64,
        /// Forks asked for.
        forks: usize,
        /// What it printed (stdout and stderr).
        output: String,
    },
    /// A child of the Linux baseline did not exit with status 0.
    #[error("a Linux fork() child with {mib} MiB touched {status}, expected exit status 0")]
    LinuxChild {
        /// The footprint.
        mib: u64,
        /// How it ended.
        status: ChildStatus,
    },
    /// A child of the Linux baseline sent no timestamp.
    #[error("a Linux fork() child with {mib} MiB touched sent no timestamp")]
    NoTimestamp {
        /// The footprint.
        mib: u64,
    },
    /// /proc/meminfo cannot be read.
    #[error("cannot read /proc/meminfo: {0}")]
    MemInfo(#[source] io::Error),
    /// /proc/meminfo has no MemAvailable line.
    #[error("/proc/meminfo has no MemAvailable line")]
    NoMemAvailable,
    /// The density run's root cannot be started.
    #[error("cannot start `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The error.
        source: io::Error,
    },
    /// The family did not report ready in time.
    #[error(
        "`{command}` did not print `{expected}` within {}; its process group was killed; \
         last output:\n{output}",
        format_us(timeout.as_secs_f64() * 1e6)
    )]
    ReadyTimeout {
        /// The command line.
        command: String,
        /// The line waited for.
        expected: String,
        /// How long.
        timeout: Duration,
        /// The last lines of its stdout and stderr.
        output: String,
    },
    /// The root ended before the family reported ready.
    #[error("`{command}` {status} before printing `{expected}`; last output:\n{output}")]
    EndedEarly {
        /// The command line.
        command: String,
        /// The line waited for.
        expected: String,
        /// How it ended.
        status: ChildStatus,
        /// The last lines of its stdout and stderr.
        output: String,
    },
    /// The registry cannot be read.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The registry does not list the expected number of children.
    #[error("the registry lists {found} forked children of the family, expected {expected}")]
    ChildCount {
        /// Children forked.
        expected: u32,
        /// Entries with a parent.
        found: usize,
    },
    /// A child monitor's smaps_rollup cannot be read.
    #[error("cannot read /proc/{pid}/smaps_rollup of a child monitor: {source}")]
    Smaps {
        /// The child monitor.
        pid: u32,
        /// The error.
        source: io::Error,
    },
    /// A child monitor's smaps_rollup lacks a field.
    #[error("/proc/{pid}/smaps_rollup has no Pss or Private_Clean/Private_Dirty line")]
    SmapsFormat {
        /// The child monitor.
        pid: u32,
    },
    /// The family did not end after SIGTERM.
    #[error(
        "the family of root {root} did not end within {} of SIGTERM to the root; \
         its process group was killed",
        format_us(timeout.as_secs_f64() * 1e6)
    )]
    StopTimeout {
        /// The root monitor.
        root: u32,
        /// How long.
        timeout: Duration,
    },
    /// The root did not end as a pVM stopped by SIGTERM does.
    #[error(
        "after SIGTERM the root monitor {status}, expected exit status {expected}; last output:\n{output}"
    )]
    StopStatus {
        /// How it ended.
        status: ChildStatus,
        /// 128 + SIGTERM.
        expected: i32,
        /// The last lines of its stdout and stderr.
        output: String,
    },
    /// Entries are left in the registry after the family ended.
    #[error("registry {dir} still lists pVMs {ids:?} after the family ended")]
    RegistryNotEmpty {
        /// The runtime directory.
        dir: PathBuf,
        /// The ids left.
        ids: Vec<u32>,
    },
}

impl ForkBenchError {
    fn sys(call: &'static str) -> ForkBenchError {
        ForkBenchError::Sys {
            call,
            source: io::Error::last_os_error(),
        }
    }
}

/// Fewest forks per row.
const MIN_ITERATIONS: usize = 100;

/// `--iterations` of `bench fork`.
fn parse_iterations(text: &str) -> Result<usize, String> {
    crate::parse_at_least(text, MIN_ITERATIONS)
}
/// Footprints measured, in MiB of touched memory.
const FOOTPRINTS_MIB: [u64; 2] = [1, 64];
/// Guest RAM of the forkbench pVM.
const FORKBENCH_MEM: &str = "256M";
/// Forks of the unrecorded warm-up pVM run (1 MiB).
const WARMUP_FORKS: usize = 10;
/// Unrecorded Linux forks before each Linux row.
const LINUX_WARMUP_FORKS: usize = 5;
/// Size of one timing record: kind, pVM id, t0, t1 (little-endian u64s).
const RECORD_SIZE: usize = 32;
const PAGE_SIZE: usize = 4096;
/// Target (issue 11): child ready p50 at 1 MiB.
const CHILD_READY_MAX_US: f64 = 1000.0;
/// Target (issue 11): parent pause p50 within this factor of Linux fork()'s of the same
/// footprint.
const PARENT_PAUSE_MAX_RATIO: f64 = 1.5;
/// Target (issue 11): sustained fork + exit + wait rate with 1 MiB.
const MIN_FORKS_PER_SEC: f64 = 850.0;

/// Most time from spawn to the family's ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// Most time from the ready line to every child registered.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Registry polling period while waiting for the last children to register.
const SETTLE_POLL: Duration = Duration::from_millis(1);
/// Most time from SIGTERM to the family's end (and the teardown of the root's VM).
const STOP_TIMEOUT: Duration = Duration::from_secs(120);
/// Target: host memory per idle pVM.
const MAX_HOST_KIB_PER_PVM: f64 = 1024.0;
/// Target (issue 11): private memory per child monitor.
const MAX_PRIVATE_KIB: f64 = 96.0;
/// Target: this many idle children.
const TARGET_COUNT: u32 = 1000;
/// Output lines kept for error messages.
const OUTPUT_TAIL_LINES: usize = 30;

/// The example guest `name`, which must exist.
fn guest(name: &str) -> Result<PathBuf, ForkBenchError> {
    Ok(crate::guest_path(name)?)
}

// ---------------------------------------------------------------------------------------------
// Timing records and the forkbench summary line.

/// What a timing record measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RecordKind {
    /// The parent's fork hypercall received -> the parent resumes the guest.
    ParentPause,
    /// The parent's fork hypercall received -> the child's first hypercall.
    ChildReady,
}

/// One timing record written by a monitor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Record {
    kind: RecordKind,
    /// The writing pVM's id.
    id: u64,
    /// CLOCK_MONOTONIC, ns.
    t0: u64,
    t1: u64,
}

impl Record {
    fn duration(&self) -> Duration {
        Duration::from_nanos(self.t1 - self.t0)
    }
}

/// Decodes a stream of 32-byte records: kind, pVM id, t0, t1 as little-endian u64s.
fn decode_records(bytes: &[u8]) -> Result<Vec<Record>, ForkBenchError> {
    let chunks = bytes.chunks_exact(RECORD_SIZE);
    if !chunks.remainder().is_empty() {
        return Err(ForkBenchError::TruncatedRecords { len: bytes.len() });
    }
    chunks
        .enumerate()
        .map(|(index, chunk)| {
            let word = |i: usize| {
                let mut w = [0u8; 8];
                w.copy_from_slice(&chunk[i * 8..i * 8 + 8]);
                u64::from_le_bytes(w)
            };
            let kind = match word(0) {
                BENCH_PARENT_PAUSE => RecordKind::ParentPause,
                BENCH_CHILD_READY => RecordKind::ChildReady,
                kind => return Err(ForkBenchError::UnknownRecordKind { index, kind }),
            };
            let (t0, t1) = (word(2), word(3));
            if t1 < t0 {
                return Err(ForkBenchError::RecordBackwards { index, t0, t1 });
            }
            Ok(Record {
                kind,
                id: word(1),
                t0,
                t1,
            })
        })
        .collect()
}

/// forkbench's last line: `forkbench: N forks of M MiB in X ns`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct LoopSummary {
    forks: u64,
    mib: u64,
    ns: u64,
}

/// Finds forkbench's summary line in its output.
fn parse_summary(output: &str) -> Option<LoopSummary> {
    output.lines().find_map(|line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["forkbench:", forks, "forks", "of", mib, "MiB", "in", ns, "ns"] => Some(LoopSummary {
                forks: forks.parse().ok()?,
                mib: mib.parse().ok()?,
                ns: ns.parse().ok()?,
            }),
            _ => None,
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Pipes and processes.

/// A pipe (read end, write end), both close-on-exec.
fn pipe() -> Result<(File, File), ForkBenchError> {
    let (r, w) =
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(|e| ForkBenchError::Sys {
            call: "pipe2",
            source: e.into(),
        })?;
    Ok((File::from(r), File::from(w)))
}

/// Clears close-on-exec on `file`, so that exec'd children inherit it.
fn set_inheritable(file: &File) -> Result<(), ForkBenchError> {
    rustix::io::fcntl_setfd(file, rustix::io::FdFlags::empty()).map_err(|e| ForkBenchError::Sys {
        call: "fcntl(F_SETFD)",
        source: e.into(),
    })
}

/// A thread reading `file` to its end.
fn read_all(mut file: File) -> JoinHandle<io::Result<Vec<u8>>> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map(|_| bytes)
    })
}

fn join_reader(
    handle: JoinHandle<io::Result<Vec<u8>>>,
    what: &'static str,
) -> Result<Vec<u8>, ForkBenchError> {
    handle
        .join()
        .map_err(|_| ForkBenchError::ReaderPanicked(what))?
        .map_err(|source| ForkBenchError::Read { what, source })
}

/// `waitpid(pid)`, retried on EINTR.
fn wait_pid(pid: libc::pid_t) -> Result<ChildStatus, ForkBenchError> {
    let status = crate::child::wait_child(pid as u32, false)
        .map_err(|source| ForkBenchError::Sys {
            call: "waitpid",
            source,
        })?
        .unwrap_or_default();
    Ok(ChildStatus::from_wait_status(status))
}

// ---------------------------------------------------------------------------------------------
// bench fork: the pVM side.

/// One forkbench run's measurements.
struct PvmRun {
    parent_pause: Vec<Duration>,
    child_ready: Vec<Duration>,
    summary: LoopSummary,
}

/// Runs `pvmctl run forkbench -- forks mib` with a timing-record pipe.
fn pvm_run(exe: &Path, run_dir: &Path, forks: usize, mib: u64) -> Result<PvmRun, BenchError> {
    let forkbench = guest("forkbench")?;
    let (records_r, records_w) = pipe()?;
    let (output_r, output_w) = pipe()?;
    // The monitors write records to the write end: inherited through exec and fork. No other
    // thread of ours runs now (the readers of the previous run were joined), so setting the
    // environment variable that `Child` passes on is safe.
    set_inheritable(&records_w)?;
    std::env::set_var("PVM_BENCH_FD", records_w.as_raw_fd().to_string());
    let (forks_arg, mib_arg) = (forks.to_string(), mib.to_string());
    let child = Child::new(
        exe,
        &[
            exe.as_os_str(),
            OsStr::new("run"),
            OsStr::new("--mem"),
            OsStr::new(FORKBENCH_MEM),
            OsStr::new("--run-dir"),
            run_dir.as_os_str(),
            forkbench.as_os_str(),
            OsStr::new("--"),
            OsStr::new(&forks_arg),
            OsStr::new(&mib_arg),
        ],
        &output_w,
    );
    let records_reader = read_all(records_r);
    let output_reader = read_all(output_r);
    let ran = child.and_then(|child| child.run());
    // Our copies of the write ends go; the readers see EOF once every monitor is gone.
    drop(records_w);
    drop(output_w);
    let records = join_reader(records_reader, "timing records");
    let output = join_reader(output_reader, "output of pvmctl run");
    std::env::remove_var("PVM_BENCH_FD");
    let output = String::from_utf8_lossy(&output?).into_owned();
    if let Err(e) = ran {
        eprint!("{output}");
        return Err(e);
    }
    let records = decode_records(&records?)?;
    let summary = parse_summary(&output)
        .filter(|s| s.forks == forks as u64 && s.mib == mib)
        .ok_or_else(|| ForkBenchError::NoSummary {
            mib,
            forks,
            output: output.clone(),
        })?;
    let of_kind = |kind| -> Vec<Duration> {
        records
            .iter()
            .filter(|r| r.kind == kind)
            .map(Record::duration)
            .collect()
    };
    let parent_pause = of_kind(RecordKind::ParentPause);
    let child_ready = of_kind(RecordKind::ChildReady);
    for (kind, got) in [
        ("parent pause", parent_pause.len()),
        ("child ready", child_ready.len()),
    ] {
        if got != forks {
            return Err(ForkBenchError::RecordCount {
                mib,
                kind,
                got,
                expected: forks,
            }
            .into());
        }
    }
    Ok(PvmRun {
        parent_pause,
        child_ready,
        summary,
    })
}

// ---------------------------------------------------------------------------------------------
// bench fork: the Linux side.

/// A private anonymous mapping, unmapped on drop.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    /// Maps `mib` MiB and writes a byte into every 4 KiB page.
    fn touched(mib: u64) -> Result<Mapping, ForkBenchError> {
        let len = (mib as usize) << 20;
        use rustix::mm::{MapFlags, ProtFlags};
        // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
        let ptr = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE,
            )
        }
        .map_err(|e| ForkBenchError::Sys {
            call: "mmap",
            source: e.into(),
        })?;
        let mapping = Mapping { ptr: ptr.cast(), len };
        for offset in (0..len).step_by(PAGE_SIZE) {
            // SAFETY: `offset` is inside the writable mapping of `len` bytes.
            unsafe { mapping.ptr.add(offset).write_volatile(offset as u8 | 1) };
        }
        Ok(mapping)
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping created in `touched`, which nothing references.
        let _ = unsafe { rustix::mm::munmap(self.ptr.cast(), self.len) };
    }
}

/// Reads one u64 written by a forked child; None at EOF.
fn read_u64(fd: libc::c_int) -> Result<Option<u64>, ForkBenchError> {
    let mut buf = [0u8; 8];
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: reads into the unfilled tail of a local buffer.
        let r = unsafe { libc::read(fd, buf[got..].as_mut_ptr().cast(), buf.len() - got) };
        if r == 0 {
            return Ok(None);
        }
        if r < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(ForkBenchError::Read {
                what: "timestamp of a Linux fork() child",
                source: err,
            });
        }
        got += r as usize;
    }
    Ok(Some(u64::from_ne_bytes(buf)))
}

/// Linux fork() of this process with `mib` MiB touched: (parent pause, child ready) per fork.
fn linux_fork(mib: u64, forks: usize) -> Result<(Vec<Duration>, Vec<Duration>), ForkBenchError> {
    let mapping = Mapping::touched(mib)?;
    let (from_child, to_parent) = pipe()?;
    let to_parent = to_parent.as_raw_fd();
    let mut parent_pause = Vec::with_capacity(forks);
    let mut child_ready = Vec::with_capacity(forks);
    for i in 0..LINUX_WARMUP_FORKS + forks {
        let t0 = monotonic_ns();
        // SAFETY: the child only calls async-signal-safe functions (clock_gettime, write,
        // _exit) on data prepared before the fork, and exits without unwinding.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let t1 = monotonic_ns().to_ne_bytes();
            // SAFETY: in the forked child: writes a local buffer to the inherited pipe, exits.
            unsafe {
                libc::write(to_parent, t1.as_ptr().cast(), t1.len());
                libc::_exit(0);
            }
        }
        let t_after = monotonic_ns();
        if pid < 0 {
            return Err(ForkBenchError::sys("fork"));
        }
        let t1 = read_u64(from_child.as_raw_fd());
        let status = wait_pid(pid)?;
        if status != ChildStatus::Exited(0) {
            return Err(ForkBenchError::LinuxChild { mib, status });
        }
        let t1 = t1?.ok_or(ForkBenchError::NoTimestamp { mib })?;
        if i >= LINUX_WARMUP_FORKS {
            parent_pause.push(Duration::from_nanos(t_after - t0));
            child_ready.push(Duration::from_nanos(t1.saturating_sub(t0)));
        }
    }
    drop(mapping);
    Ok((parent_pause, child_ready))
}

/// Linux fork + exit + wait of this process (no extra memory): wall time per fork.
fn linux_fork_exit_wait(forks: usize) -> Result<Vec<Duration>, ForkBenchError> {
    let mut samples = Vec::with_capacity(forks);
    for i in 0..LINUX_WARMUP_FORKS + forks {
        let start = Instant::now();
        // SAFETY: the child calls only _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: ends the forked child at once, without unwinding or flushing.
            unsafe { libc::_exit(0) };
        }
        if pid < 0 {
            return Err(ForkBenchError::sys("fork"));
        }
        let status = wait_pid(pid)?;
        let elapsed = start.elapsed();
        if status != ChildStatus::Exited(0) {
            return Err(ForkBenchError::LinuxChild { mib: 0, status });
        }
        if i >= LINUX_WARMUP_FORKS {
            samples.push(elapsed);
        }
    }
    Ok(samples)
}

// ---------------------------------------------------------------------------------------------
// bench fork: the run and its report.

/// Measurements of one footprint.
struct Footprint {
    mib: u64,
    pvm_child_ready: Stats,
    pvm_parent_pause: Stats,
    linux_child_ready: Stats,
    linux_parent_pause: Stats,
    /// forkbench's loop: forks and total ns.
    pvm_loop: LoopSummary,
    /// The samples: pVM child ready, pVM parent pause, Linux child ready, Linux parent pause.
    samples: [Vec<Duration>; 4],
}

impl Footprint {
    fn pvm_per_fork_us(&self) -> f64 {
        self.pvm_loop.ns as f64 / 1e3 / self.pvm_loop.forks as f64
    }

    fn pvm_forks_per_s(&self) -> f64 {
        self.pvm_loop.forks as f64 / (self.pvm_loop.ns as f64 / 1e9)
    }

    fn parent_pause_ratio(&self) -> f64 {
        self.pvm_parent_pause.median_us / self.linux_parent_pause.median_us
    }
}

/// Runs `pvmctl bench fork`.
pub fn fork(args: ForkArgs) -> Result<ExitCode, BenchError> {
    let n = args.iterations;
    guest("forkbench")?;
    let exe = std::env::current_exe().map_err(BenchError::CurrentExe)?;
    // A private registry, so that the benchmark's pVMs do not show in the user's `pvmctl ps`.
    let scratch = crate::scratch("fork", true)?;
    let run_dir = scratch.path().to_path_buf();
    eprintln!(
        "pvmctl bench fork: warm-up, then {n} forks per row: pVM and Linux with {}, then Linux \
         fork+exit+wait...",
        FOOTPRINTS_MIB.map(|m| format!("{m} MiB")).join(", ")
    );
    let result = (|| {
        pvm_run(&exe, &run_dir, WARMUP_FORKS, FOOTPRINTS_MIB[0])?;
        let mut footprints = Vec::new();
        for mib in FOOTPRINTS_MIB {
            let pvm = pvm_run(&exe, &run_dir, n, mib)?;
            let (linux_pause, linux_ready) = linux_fork(mib, n)?;
            footprints.push(Footprint {
                mib,
                pvm_child_ready: Stats::new(&pvm.child_ready),
                pvm_parent_pause: Stats::new(&pvm.parent_pause),
                linux_child_ready: Stats::new(&linux_ready),
                linux_parent_pause: Stats::new(&linux_pause),
                pvm_loop: pvm.summary,
                samples: [pvm.child_ready, pvm.parent_pause, linux_ready, linux_pause],
            });
        }
        let exit_wait = linux_fork_exit_wait(n)?;
        Ok::<_, BenchError>((footprints, exit_wait))
    })();
    drop(scratch);
    let (footprints, exit_wait) = result?;
    let total: Duration = exit_wait.iter().sum();
    let report = ForkReport {
        host: HostInfo::get(),
        iterations: n,
        footprints,
        linux_exit_wait: Stats::new(&exit_wait),
        linux_forks_per_s: exit_wait.len() as f64 / total.as_secs_f64(),
    };
    if args.json {
        println!("{}", report.json());
    } else {
        print!("{}", report.table());
    }
    report.figures(&exit_wait).write(&args.figures)?;
    Ok(ExitCode::SUCCESS)
}

/// The results of `bench fork`.
struct ForkReport {
    host: HostInfo,
    iterations: usize,
    /// In [`FOOTPRINTS_MIB`] order (1 MiB first).
    footprints: Vec<Footprint>,
    linux_exit_wait: Stats,
    linux_forks_per_s: f64,
}

/// A row of the `bench fork` table.
enum RowValue<'a> {
    /// A distribution of samples.
    Samples(&'a Stats),
    /// One number: the mean per fork of a loop, in us.
    PerFork(f64),
}

impl ForkReport {
    /// The chart's rows (child ready and parent pause per footprint, the sustained rates) and
    /// every fork's times.
    fn figures(&self, linux_exit_wait: &[Duration]) -> Figures {
        let mut groups = Vec::new();
        let mut samples = Vec::new();
        for (what, pvm, linux) in [("child ready", 0, 2), ("parent pause", 1, 3)] {
            for f in &self.footprints {
                groups.push(Group {
                    label: format!("{what}, {} MiB", f.mib),
                    kind: Kind::Latency,
                    pvm: Some(Bar::of_samples(&f.samples[pvm])),
                    baseline: Some(Bar::of_samples(&f.samples[linux])),
                });
                let row = format!("{what}, {} MiB", f.mib);
                samples.push(Samples::of_durations(row.clone(), "pvm", 1, &f.samples[pvm]));
                samples.push(Samples::of_durations(row, "linux", 1, &f.samples[linux]));
            }
        }
        for f in &self.footprints {
            groups.push(Group {
                label: format!("fork+exit+wait, {} MiB", f.mib),
                kind: Kind::Rate("forks/s"),
                pvm: Some(Bar::of_figures(&[f.pvm_forks_per_s()])),
                baseline: Some(Bar::of_figures(&[self.linux_forks_per_s])),
            });
            samples.push(Samples {
                row: format!("fork+exit+wait, {} MiB (loop)", f.mib),
                side: "pvm",
                round: 1,
                metric: "forks_per_s",
                values: vec![f.pvm_forks_per_s()],
            });
        }
        samples.push(Samples::of_durations(
            "fork+exit+wait",
            "linux",
            1,
            linux_exit_wait,
        ));
        Figures {
            bench: "fork",
            title: format!(
                "pvmctl bench fork, {}, {} forks per row",
                self.host.date, self.iterations
            ),
            sides: ("pVM", "Linux"),
            groups,
            samples,
        }
    }

    fn rows(&self) -> Vec<(String, RowValue<'_>)> {
        let mut rows = Vec::new();
        for (what, pvm, linux) in [
            (
                "child ready",
                (|f: &Footprint| &f.pvm_child_ready) as fn(&Footprint) -> &Stats,
                (|f: &Footprint| &f.linux_child_ready) as fn(&Footprint) -> &Stats,
            ),
            (
                "parent pause",
                |f: &Footprint| &f.pvm_parent_pause,
                |f: &Footprint| &f.linux_parent_pause,
            ),
        ] {
            for f in &self.footprints {
                rows.push((format!("{what}, {} MiB: pVM", f.mib), RowValue::Samples(pvm(f))));
                rows.push((
                    format!("{what}, {} MiB: linux", f.mib),
                    RowValue::Samples(linux(f)),
                ));
            }
        }
        for f in &self.footprints {
            rows.push((
                format!("fork+exit+wait, {} MiB: pVM (loop mean)", f.mib),
                RowValue::PerFork(f.pvm_per_fork_us()),
            ));
        }
        rows.push((
            "fork+exit+wait: linux (this process)".into(),
            RowValue::Samples(&self.linux_exit_wait),
        ));
        rows
    }

    /// (name, pVM/Linux of medians, of p99s); for the loops, of means.
    fn ratios(&self) -> Vec<(String, f64, Option<f64>)> {
        let mut ratios = Vec::new();
        for f in &self.footprints {
            ratios.push((
                format!("child ready, {} MiB", f.mib),
                f.pvm_child_ready.median_us / f.linux_child_ready.median_us,
                Some(f.pvm_child_ready.p99_us / f.linux_child_ready.p99_us),
            ));
        }
        for f in &self.footprints {
            ratios.push((
                format!("parent pause, {} MiB", f.mib),
                f.parent_pause_ratio(),
                Some(f.pvm_parent_pause.p99_us / f.linux_parent_pause.p99_us),
            ));
        }
        for f in &self.footprints {
            ratios.push((
                format!("fork+exit+wait, {} MiB (means)", f.mib),
                f.pvm_per_fork_us() / self.linux_exit_wait.mean_us,
                None,
            ));
        }
        ratios
    }

    /// (description, value as text, met).
    fn targets(&self) -> Vec<(String, String, bool)> {
        let mut targets = Vec::new();
        if let Some(f) = self.footprints.first() {
            let p50 = f.pvm_child_ready.median_us;
            targets.push((
                format!(
                    "child ready p50 at {} MiB <= {}",
                    f.mib,
                    format_us(CHILD_READY_MAX_US)
                ),
                format_us(p50),
                p50 <= CHILD_READY_MAX_US,
            ));
        }
        for f in &self.footprints {
            let ratio = f.parent_pause_ratio();
            targets.push((
                format!(
                    "parent pause p50 at {} MiB <= {PARENT_PAUSE_MAX_RATIO}x Linux fork()",
                    f.mib
                ),
                format!("{}x", sig3(ratio)),
                ratio <= PARENT_PAUSE_MAX_RATIO,
            ));
        }
        if let Some(f) = self.footprints.first() {
            let rate = f.pvm_forks_per_s();
            targets.push((
                format!(
                    "sustained fork+exit+wait at {} MiB >= {MIN_FORKS_PER_SEC} forks/s",
                    f.mib
                ),
                format!("{} forks/s", sig3(rate)),
                rate >= MIN_FORKS_PER_SEC,
            ));
        }
        targets
    }

    fn table(&self) -> String {
        let h = &self.host;
        let mut out = format!(
            "pvmctl bench fork, {} (unix time {}), host {}: Linux {}, {}\n\
             N = {} forks per row. pVM: `pvmctl run --mem {FORKBENCH_MEM} forkbench -- N MIB`, times \
             from the monitors' records; linux: fork() of this process with MIB MiB touched \
             (4 KiB pages).\n\
             Order: warm-up pVM run ({WARMUP_FORKS} forks), then per MiB pVM then linux, then \
             linux fork+exit+wait.\n\n",
            h.date, h.unix_time, h.hostname, h.kernel, h.cpu, self.iterations
        );
        let rows = self.rows();
        let width = rows.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
        let _ = writeln!(
            out,
            "{:width$}  {:>9}  {:>9}  {:>9}  {:>9}",
            "", "median", "p99", "min", "mean"
        );
        for (name, value) in &rows {
            let _ = match value {
                RowValue::Samples(s) => writeln!(
                    out,
                    "{name:width$}  {:>9}  {:>9}  {:>9}  {:>9}",
                    format_us(s.median_us),
                    format_us(s.p99_us),
                    format_us(s.min_us),
                    format_us(s.mean_us)
                ),
                RowValue::PerFork(us) => writeln!(
                    out,
                    "{name:width$}  {:>9}  {:>9}  {:>9}  {:>9}",
                    "-",
                    "-",
                    "-",
                    format_us(*us)
                ),
            };
        }
        out += "\nsustained fork+exit+wait:";
        for f in &self.footprints {
            let _ = write!(out, " pVM {} MiB {} forks/s;", f.mib, sig3(f.pvm_forks_per_s()));
        }
        let _ = writeln!(out, " linux {} forks/s", sig3(self.linux_forks_per_s));
        let ratios = self.ratios();
        let width = ratios.iter().map(|(name, ..)| name.len()).max().unwrap_or(0);
        let _ = writeln!(out, "\n{:width$}  {:>8}  {:>8}", "pVM / linux", "median", "p99");
        for (name, median, p99) in &ratios {
            let p99 = p99.map_or_else(|| "-".to_string(), |r| format!("{}x", sig3(r)));
            let _ = writeln!(
                out,
                "{name:width$}  {:>8}  {:>8}",
                format!("{}x", sig3(*median)),
                p99
            );
        }
        crate::write_targets(&mut out, &self.targets(), 14);
        out
    }

    fn json(&self) -> serde_json::Value {
        let h = &self.host;
        let rows: Vec<_> = self
            .rows()
            .into_iter()
            .map(|(name, value)| match value {
                RowValue::Samples(s) => serde_json::json!({
                    "name": name,
                    "median_us": round3(s.median_us),
                    "p99_us": round3(s.p99_us),
                    "min_us": round3(s.min_us),
                    "mean_us": round3(s.mean_us),
                }),
                RowValue::PerFork(us) => serde_json::json!({
                    "name": name,
                    "mean_us": round3(us),
                }),
            })
            .collect();
        let sustained: Vec<_> = self
            .footprints
            .iter()
            .map(|f| {
                serde_json::json!({
                    "mib": f.mib,
                    "forks": f.pvm_loop.forks,
                    "loop_ns": f.pvm_loop.ns,
                    "per_fork_us": round3(f.pvm_per_fork_us()),
                    "forks_per_s": round3(f.pvm_forks_per_s()),
                })
            })
            .collect();
        let ratios: Vec<_> = self
            .ratios()
            .into_iter()
            .map(|(name, median, p99)| {
                serde_json::json!({
                    "name": name,
                    "median": round3(median),
                    "p99": p99.map(round3),
                })
            })
            .collect();
        let targets: Vec<_> = self
            .targets()
            .into_iter()
            .map(|(name, value, met)| serde_json::json!({ "target": name, "value": value, "met": met }))
            .collect();
        serde_json::json!({
            "benchmark": "fork",
            "date": h.date,
            "unix_time": h.unix_time,
            "hostname": h.hostname,
            "kernel": h.kernel,
            "cpu": h.cpu,
            "iterations": self.iterations,
            "warmup_forks": WARMUP_FORKS,
            "guest_mem": FORKBENCH_MEM,
            "rows": rows,
            "sustained_pvm": sustained,
            "sustained_linux_forks_per_s": round3(self.linux_forks_per_s),
            "ratios": ratios,
            "targets": targets,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// bench density.

/// MemAvailable of /proc/meminfo, in KiB.
fn parse_mem_available(meminfo: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let rest = line.strip_prefix("MemAvailable:")?;
        rest.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

fn mem_available_kib() -> Result<u64, ForkBenchError> {
    let text = fs::read_to_string("/proc/meminfo").map_err(ForkBenchError::MemInfo)?;
    parse_mem_available(&text).ok_or(ForkBenchError::NoMemAvailable)
}

/// (Private_Clean + Private_Dirty, Pss) of a smaps_rollup, in KiB.
fn parse_smaps_rollup(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| -> Option<u64> {
        text.lines().find_map(|line| {
            let rest = line.strip_prefix(name)?;
            rest.trim().trim_end_matches("kB").trim().parse().ok()
        })
    };
    Some((
        field("Private_Clean:")? + field("Private_Dirty:")?,
        field("Pss:")?,
    ))
}

fn smaps_rollup(pid: u32) -> Result<(u64, u64), ForkBenchError> {
    let text = fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .map_err(|source| ForkBenchError::Smaps { pid, source })?;
    parse_smaps_rollup(&text).ok_or(ForkBenchError::SmapsFormat { pid })
}

/// Median, p99 (nearest rank, as [`Stats`]), min, max and mean of KiB values.
#[derive(Clone, Copy, Debug, PartialEq)]
struct KibStats {
    median: f64,
    p99: u64,
    min: u64,
    max: u64,
    mean: f64,
}

impl KibStats {
    /// `values` must not be empty.
    fn new(values: &[u64]) -> KibStats {
        let mut v = values.to_vec();
        v.sort_unstable();
        let n = v.len();
        if n == 0 {
            return KibStats {
                median: f64::NAN,
                p99: 0,
                min: 0,
                max: 0,
                mean: f64::NAN,
            };
        }
        let median = if n % 2 == 1 {
            v[n / 2] as f64
        } else {
            (v[n / 2 - 1] + v[n / 2]) as f64 / 2.0
        };
        let rank = (n * 99).div_ceil(100).max(1);
        KibStats {
            median,
            p99: v[rank - 1],
            min: v[0],
            max: v[n - 1],
            mean: v.iter().sum::<u64>() as f64 / n as f64,
        }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "median": self.median,
            "p99": self.p99,
            "min": self.min,
            "max": self.max,
            "mean": round3(self.mean),
        })
    }
}

/// One density run's measurements.
struct DensityRun {
    count: u32,
    /// Spawn to the ready line.
    creation: Duration,
    /// Spawn to every child registered (built), seen by polling the registry.
    settled: Duration,
    mem_before_kib: u64,
    mem_after_kib: u64,
    private_kib: KibStats,
    pss_kib: KibStats,
    /// Each child monitor's private memory, KiB.
    private_values: Vec<u64>,
    /// SIGTERM to the root's exit.
    stop: Duration,
    /// SIGTERM to the last process of the family (teardown helpers included) gone.
    teardown: Duration,
}

impl DensityRun {
    fn creation_per_pvm(&self) -> Duration {
        self.creation / self.count
    }

    /// MemAvailable delta / (N + 1), KiB.
    fn host_kib_per_pvm(&self) -> f64 {
        (self.mem_before_kib as f64 - self.mem_after_kib as f64) / f64::from(self.count + 1)
    }
}

/// What the reader of the root's stdout reports.
enum Event {
    Line(String, Instant),
    Eof,
}

/// The last lines of a child's output, for error messages.
type Tail = Arc<Mutex<VecDeque<String>>>;

fn push_tail(tail: &Tail, line: String) {
    let mut lines = tail.lock().unwrap_or_else(|e| e.into_inner());
    if lines.len() == OUTPUT_TAIL_LINES {
        lines.pop_front();
    }
    lines.push_back(line);
}

fn tail_text(tail: &Tail) -> String {
    let lines = tail.lock().unwrap_or_else(|e| e.into_inner());
    lines.iter().map(|l| format!("  {l}\n")).collect()
}

/// The spawned `pvmctl run`: on drop (any failure), its process group is killed, the root
/// reaped and the private runtime directory removed.
struct FamilyGuard {
    child: std::process::Child,
    run_dir: PathBuf,
    reaped: bool,
}

impl FamilyGuard {
    fn root(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL to the whole process group (the root leads it), then reaps the root.
    fn kill(&mut self) -> Option<ChildStatus> {
        let _ = crate::child::signal_group(self.root(), libc::SIGKILL);
        self.wait().ok()
    }

    fn wait(&mut self) -> Result<ChildStatus, ForkBenchError> {
        let status = self.child.wait().map_err(|source| ForkBenchError::Sys {
            call: "waitpid",
            source,
        })?;
        self.reaped = true;
        Ok(ChildStatus::from_wait_status(status.into_raw()))
    }
}

impl Drop for FamilyGuard {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.kill();
        }
        let _ = fs::remove_dir_all(&self.run_dir);
    }
}

/// Reaps the processes of group `pgid` that were reparented to us (we are a subreaper): the
/// root's teardown helper. Polls, up to `deadline`; true when none is left.
fn reap_group(pgid: libc::pid_t, deadline: Instant) -> bool {
    loop {
        let mut status = 0;
        // SAFETY: waitpid with WNOHANG writes the status into a local.
        let r = unsafe { libc::waitpid(-pgid, &mut status, libc::WNOHANG) };
        if r < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return true; // ECHILD: none left.
        }
        if r == 0 {
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Forks `count` idle pVMs, measures them, and stops them.
fn density_run(exe: &Path, forktest: &Path, count: u32) -> Result<DensityRun, BenchError> {
    let run_dir = std::env::temp_dir().join(format!("pvm-bench-density-{}-{count}", std::process::id()));
    let _ = fs::remove_dir_all(&run_dir);
    let expected = format!("idle: {count} children forked");
    let mut cmd = Command::new(exe);
    cmd.arg("run")
        .arg("--run-dir")
        .arg(&run_dir)
        .arg("--max-family")
        .arg((count + 1).to_string())
        .arg("--max-pvms")
        .arg((count + 16).to_string())
        // Idle pVMs touch ~1 MiB each: the default budget (the host's RAM, counted at --mem per
        // pVM) would stop this long before it shows density.
        .arg("--max-mem-total")
        .arg("1024G")
        .arg(forktest)
        .args(["--", "idle", &count.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let command = format!(
        "{} {}",
        exe.display(),
        cmd.get_args()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mem_before_kib = mem_available_kib()?;
    let start = Instant::now();
    let mut child = cmd.spawn().map_err(|source| ForkBenchError::Spawn {
        command: command.clone(),
        source,
    })?;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let mut family = FamilyGuard {
        child,
        run_dir: run_dir.clone(),
        reaped: false,
    };
    let root = family.root();
    let tail: Tail = Arc::default();
    let (tx, events) = mpsc::channel();
    if let Some(stdout) = stdout {
        let tail = tail.clone();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let at = Instant::now();
                push_tail(&tail, line.clone());
                if tx.send(Event::Line(line, at)).is_err() {
                    break;
                }
            }
            let _ = tx.send(Event::Eof);
        });
    }
    if let Some(stderr) = stderr {
        let tail = tail.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                push_tail(&tail, line);
            }
        });
    }

    // Ready: the root prints its line after its last fork returned.
    let deadline = start + READY_TIMEOUT;
    let ready_at = loop {
        match events.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Event::Line(line, at)) if line.trim_end() == expected => break at,
            Ok(Event::Line(..)) => {}
            Ok(Event::Eof) | Err(RecvTimeoutError::Disconnected) => {
                // The root is gone (or closed its stdout): collect how it ended.
                let status = family.kill().unwrap_or(ChildStatus::Other(-1));
                return Err(ForkBenchError::EndedEarly {
                    command,
                    expected,
                    status,
                    output: tail_text(&tail),
                }
                .into());
            }
            Err(RecvTimeoutError::Timeout) => {
                family.kill();
                return Err(ForkBenchError::ReadyTimeout {
                    command,
                    expected,
                    timeout: READY_TIMEOUT,
                    output: tail_text(&tail),
                }
                .into());
            }
        }
    };
    let creation = ready_at - start;
    // The root's last forks returned, but their children may still be building their VMs: they
    // register once they are built. Wait for all of them before measuring memory.
    let registry = Registry::open(&run_dir).map_err(ForkBenchError::from)?;
    let settle_deadline = Instant::now() + SETTLE_TIMEOUT;
    while registry.list().map_or(0, |l| l.len()) < count as usize + 1 && Instant::now() < settle_deadline {
        thread::sleep(SETTLE_POLL);
    }
    let settled = start.elapsed();
    let mem_after_kib = mem_available_kib()?;
    let children: Vec<u32> = registry
        .list()
        .map_err(ForkBenchError::from)?
        .iter()
        .filter(|e| e.parent != 0)
        .map(|e| e.id)
        .collect();
    if children.len() != count as usize {
        return Err(ForkBenchError::ChildCount {
            expected: count,
            found: children.len(),
        }
        .into());
    }
    let mut private = Vec::with_capacity(children.len());
    let mut pss = Vec::with_capacity(children.len());
    for &pid in &children {
        let (p, s) = smaps_rollup(pid)?;
        private.push(p);
        pss.push(s);
    }

    // Stop: SIGTERM to the root, which forwards it to its family and waits for it.
    let stop_start = Instant::now();
    crate::child::signal(root, libc::SIGTERM).map_err(|source| ForkBenchError::Sys {
        call: "kill(SIGTERM)",
        source,
    })?;
    let deadline = stop_start + STOP_TIMEOUT;
    loop {
        match events.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Event::Line(..)) => {}
            Ok(Event::Eof) | Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {
                family.kill();
                return Err(ForkBenchError::StopTimeout {
                    root,
                    timeout: STOP_TIMEOUT,
                }
                .into());
            }
        }
    }
    let status = family.wait()?;
    let stop = stop_start.elapsed();
    let torn_down = reap_group(root as libc::pid_t, deadline);
    let teardown = stop_start.elapsed();
    let expected_status = 128 + libc::SIGTERM;
    if status != ChildStatus::Exited(expected_status) {
        return Err(ForkBenchError::StopStatus {
            status,
            expected: expected_status,
            output: tail_text(&tail),
        }
        .into());
    }
    if !torn_down {
        return Err(ForkBenchError::StopTimeout {
            root,
            timeout: STOP_TIMEOUT,
        }
        .into());
    }
    let left: Vec<u32> = registry
        .list()
        .map_err(ForkBenchError::from)?
        .iter()
        .map(|e| e.id)
        .collect();
    if !left.is_empty() {
        return Err(ForkBenchError::RegistryNotEmpty {
            dir: run_dir,
            ids: left,
        }
        .into());
    }
    drop(family);
    Ok(DensityRun {
        count,
        creation,
        mem_before_kib,
        mem_after_kib,
        private_kib: KibStats::new(&private),
        pss_kib: KibStats::new(&pss),
        private_values: private.clone(),
        settled,
        stop,
        teardown,
    })
}

/// Runs `pvmctl bench density`.
pub fn density(args: DensityArgs) -> Result<ExitCode, BenchError> {
    let forktest = guest("forktest")?;
    let exe = std::env::current_exe().map_err(BenchError::CurrentExe)?;
    // Orphans of the measured families (the root's VM-teardown helper) come to us, so that we
    // can wait for the teardown to end before the next run reads MemAvailable.
    rustix::process::set_child_subreaper(Some(rustix::process::getpid())).map_err(|e| {
        ForkBenchError::Sys {
            call: "prctl(PR_SET_CHILD_SUBREAPER)",
            source: e.into(),
        }
    })?;
    let mut runs = Vec::new();
    for &count in &args.counts {
        eprintln!("pvmctl bench density: {count} idle pVMs...");
        let run = density_run(&exe, &forktest, count).map_err(|e| {
            eprintln!("pvmctl bench density: N={count} failed: {e}");
            e.to_string()
        });
        runs.push((count, run));
    }
    let report = DensityReport {
        host: HostInfo::get(),
        runs,
    };
    if args.json {
        println!("{}", report.json());
    } else {
        print!("{}", report.table());
    }
    report.figures().write(&args.figures)?;
    Ok(if report.runs.iter().all(|(_, r)| r.is_ok()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The results of `bench density`.
struct DensityReport {
    host: HostInfo,
    /// Per count: the measurements, or the error text.
    runs: Vec<(u32, Result<DensityRun, String>)>,
}

impl DensityReport {
    /// The chart's rows: per count, each child monitor's private memory and the host memory
    /// per pVM (no baseline: a Linux process is not an isolated VM), and creation per pVM.
    fn figures(&self) -> Figures {
        let mut groups = Vec::new();
        let mut samples = Vec::new();
        for run in self.ok_runs() {
            let private: Vec<f64> = run.private_values.iter().map(|&k| k as f64).collect();
            groups.push(Group {
                label: format!("private per monitor, N={}", run.count),
                kind: Kind::Amount("KiB"),
                pvm: Some(Bar {
                    median: run.private_kib.median,
                    p99: Some(run.private_kib.p99 as f64),
                    dots: private.clone(),
                }),
                baseline: None,
            });
            groups.push(Group {
                label: format!("host per pVM, N={}", run.count),
                kind: Kind::Amount("KiB"),
                pvm: Some(Bar::of_figures(&[run.host_kib_per_pvm()])),
                baseline: None,
            });
            groups.push(Group {
                label: format!("creation per pVM, N={}", run.count),
                kind: Kind::Latency,
                pvm: Some(Bar::of_samples(&[run.creation_per_pvm()])),
                baseline: None,
            });
            let row = |what: &str| format!("{what}, N={}", run.count);
            samples.push(Samples {
                row: row("private per child monitor"),
                side: "pvm",
                round: 1,
                metric: "kib",
                values: private,
            });
            samples.push(Samples {
                row: row("host memory per pVM"),
                side: "pvm",
                round: 1,
                metric: "kib",
                values: vec![run.host_kib_per_pvm()],
            });
            samples.push(Samples::of_durations(
                row("creation per pVM"),
                "pvm",
                1,
                &[run.creation_per_pvm()],
            ));
        }
        Figures {
            bench: "density",
            title: format!("pvmctl bench density, {}", self.host.date),
            sides: ("pVM", ""),
            groups,
            samples,
        }
    }

    fn ok_runs(&self) -> impl Iterator<Item = &DensityRun> {
        self.runs.iter().filter_map(|(_, r)| r.as_ref().ok())
    }

    /// (description, value as text, met).
    fn targets(&self) -> Vec<(String, String, bool)> {
        let mut targets = Vec::new();
        for run in self.ok_runs() {
            let kib = run.host_kib_per_pvm();
            targets.push((
                format!(
                    "N={}: host memory per idle pVM <= {} KiB",
                    run.count, MAX_HOST_KIB_PER_PVM
                ),
                format!("{} KiB", sig3(kib)),
                kib <= MAX_HOST_KIB_PER_PVM,
            ));
        }
        for run in self.ok_runs() {
            for (what, value) in [
                ("p50", run.private_kib.median),
                ("p99", run.private_kib.p99 as f64),
            ] {
                targets.push((
                    format!(
                        "N={}: private per child monitor ({what}) <= {MAX_PRIVATE_KIB} KiB",
                        run.count
                    ),
                    format!("{value} KiB"),
                    value <= MAX_PRIVATE_KIB,
                ));
            }
        }
        let reached = self.ok_runs().any(|r| r.count >= TARGET_COUNT);
        targets.push((
            format!("N={TARGET_COUNT} idle pVMs reached"),
            if reached { "yes" } else { "no" }.into(),
            reached,
        ));
        targets
    }

    fn table(&self) -> String {
        let h = &self.host;
        let mut out = format!(
            "pvmctl bench density, {} (unix time {}), host {}: Linux {}, {}\n\
             guest `forktest idle N` (a root forks N children; all idle in a hypercall). created: \
             spawn of `pvmctl run` to the root's ready line (per pVM: / N); all up: to every child \
             registered; host/pVM: MemAvailable delta / (N+1); \
             private = Private_Clean+Private_Dirty, PSS: /proc/PID/smaps_rollup of each child \
             monitor; stop: SIGTERM to the root's exit (teardown: to the last VM torn down)\n\n",
            h.date, h.unix_time, h.hostname, h.kernel, h.cpu
        );
        let _ = writeln!(
            out,
            "{:>6}  {:>9}  {:>9}  {:>9}  {:>12}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}",
            "N",
            "created",
            "per pVM",
            "all up",
            "host/pVM",
            "priv p50",
            "priv p99",
            "PSS p50",
            "PSS p99",
            "stop",
            "teardown"
        );
        for (count, run) in &self.runs {
            match run {
                Ok(r) => {
                    let _ = writeln!(
                        out,
                        "{:>6}  {:>9}  {:>9}  {:>9}  {:>12}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}",
                        count,
                        format_us(r.creation.as_secs_f64() * 1e6),
                        format_us(r.creation_per_pvm().as_secs_f64() * 1e6),
                        format_us(r.settled.as_secs_f64() * 1e6),
                        format!("{} KiB", sig3(r.host_kib_per_pvm())),
                        format!("{} KiB", r.private_kib.median),
                        format!("{} KiB", r.private_kib.p99),
                        format!("{} KiB", r.pss_kib.median),
                        format!("{} KiB", r.pss_kib.p99),
                        format_us(r.stop.as_secs_f64() * 1e6),
                        format_us(r.teardown.as_secs_f64() * 1e6),
                    );
                }
                Err(e) => {
                    let _ = writeln!(out, "{count:>6}  FAILED: {e}");
                }
            }
        }
        for r in self.ok_runs() {
            let _ = writeln!(
                out,
                "N={}: MemAvailable {} -> {} KiB; private per child min {} max {} mean {} KiB; \
                 PSS per child min {} max {} mean {} KiB",
                r.count,
                r.mem_before_kib,
                r.mem_after_kib,
                r.private_kib.min,
                r.private_kib.max,
                sig3(r.private_kib.mean),
                r.pss_kib.min,
                r.pss_kib.max,
                sig3(r.pss_kib.mean)
            );
        }
        crate::write_targets(&mut out, &self.targets(), 10);
        out
    }

    fn json(&self) -> serde_json::Value {
        let h = &self.host;
        let runs: Vec<_> = self
            .runs
            .iter()
            .map(|(count, run)| match run {
                Ok(r) => serde_json::json!({
                    "count": count,
                    "ok": true,
                    "creation_total_us": round3(r.creation.as_secs_f64() * 1e6),
                    "creation_per_pvm_us": round3(r.creation_per_pvm().as_secs_f64() * 1e6),
                    "all_registered_us": round3(r.settled.as_secs_f64() * 1e6),
                    "mem_available_before_kib": r.mem_before_kib,
                    "mem_available_after_kib": r.mem_after_kib,
                    "host_kib_per_pvm": round3(r.host_kib_per_pvm()),
                    "private_kib_per_child": r.private_kib.json(),
                    "pss_kib_per_child": r.pss_kib.json(),
                    "stop_us": round3(r.stop.as_secs_f64() * 1e6),
                    "teardown_us": round3(r.teardown.as_secs_f64() * 1e6),
                }),
                Err(e) => serde_json::json!({ "count": count, "ok": false, "error": e }),
            })
            .collect();
        let targets: Vec<_> = self
            .targets()
            .into_iter()
            .map(|(name, value, met)| serde_json::json!({ "target": name, "value": value, "met": met }))
            .collect();
        serde_json::json!({
            "benchmark": "density",
            "date": h.date,
            "unix_time": h.unix_time,
            "hostname": h.hostname,
            "kernel": h.kernel,
            "cpu": h.cpu,
            "runs": runs,
            "targets": targets,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: u64, id: u64, t0: u64, t1: u64) -> Vec<u8> {
        [kind, id, t0, t1].iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    #[test]
    fn records_decode() {
        let mut bytes = record(BENCH_PARENT_PAUSE, 4517, 1_000, 1_600);
        bytes.extend(record(BENCH_CHILD_READY, 4520, 1_000, 2_500_000));
        let records = decode_records(&bytes).expect("valid records");
        assert_eq!(
            records,
            [
                Record {
                    kind: RecordKind::ParentPause,
                    id: 4517,
                    t0: 1_000,
                    t1: 1_600
                },
                Record {
                    kind: RecordKind::ChildReady,
                    id: 4520,
                    t0: 1_000,
                    t1: 2_500_000
                },
            ]
        );
        assert_eq!(records[0].duration(), Duration::from_nanos(600));
        assert!(decode_records(&[]).expect("empty").is_empty());
    }

    #[test]
    fn bad_records_are_refused() {
        let bytes = record(BENCH_PARENT_PAUSE, 1, 5, 6);
        assert!(matches!(
            decode_records(&bytes[..31]),
            Err(ForkBenchError::TruncatedRecords { len: 31 })
        ));
        assert!(matches!(
            decode_records(&record(7, 1, 5, 6)),
            Err(ForkBenchError::UnknownRecordKind { index: 0, kind: 7 })
        ));
        let mut bytes = record(BENCH_CHILD_READY, 1, 5, 6);
        bytes.extend(record(BENCH_CHILD_READY, 1, 9, 8));
        assert!(matches!(
            decode_records(&bytes),
            Err(ForkBenchError::RecordBackwards {
                index: 1,
                t0: 9,
                t1: 8
            })
        ));
    }

    #[test]
    fn summary_line_parses() {
        let output = "pvm 12 (family 12) exited with status 0\n\
                      forkbench: 200 forks of 64 MiB in 47404109 ns\n";
        assert_eq!(
            parse_summary(output),
            Some(LoopSummary {
                forks: 200,
                mib: 64,
                ns: 47_404_109
            })
        );
        assert_eq!(parse_summary("forkbench: 200 forks of 64 MiB in ns\n"), None);
        assert_eq!(parse_summary("forkbench: 200 forks of 64 GiB in 5 ns\n"), None);
        assert_eq!(
            parse_summary("forkbench: 200 forks of 64 MiB in 5 ns extra\n"),
            None
        );
        assert_eq!(parse_summary("usage: forkbench ITERATIONS MIB\n"), None);
    }

    #[test]
    fn proc_files_parse() {
        let meminfo = "MemTotal:       24578048 kB\nMemFree:        23000000 kB\n\
                       MemAvailable:   23456789 kB\n";
        assert_eq!(parse_mem_available(meminfo), Some(23_456_789));
        assert_eq!(parse_mem_available("MemTotal: 1 kB\n"), None);
        let smaps = "00400000-7fff0000 ---p 00000000 00:00 0 [rollup]\n\
                     Rss:                1200 kB\nPss:                 300 kB\n\
                     Pss_Anon:             40 kB\nPss_File:            260 kB\n\
                     Shared_Clean:       1100 kB\nShared_Dirty:          24 kB\n\
                     Private_Clean:         4 kB\nPrivate_Dirty:        72 kB\n";
        assert_eq!(parse_smaps_rollup(smaps), Some((76, 300)));
        assert_eq!(parse_smaps_rollup("Rss: 1 kB\n"), None);
    }

    #[test]
    fn kib_stats() {
        let values: Vec<u64> = (1..=100).rev().collect();
        let s = KibStats::new(&values);
        assert_eq!(s.median, 50.5);
        assert_eq!(s.p99, 99);
        assert_eq!((s.min, s.max), (1, 100));
        assert_eq!(s.mean, 50.5);
    }

    #[test]
    fn linux_baseline_runs() {
        let (pause, ready) = linux_fork(1, 3).expect("fork baseline");
        assert_eq!((pause.len(), ready.len()), (3, 3));
        assert_eq!(linux_fork_exit_wait(3).expect("fork+exit+wait").len(), 3);
    }

    #[test]
    fn too_few_iterations() {
        assert_eq!(parse_iterations("100"), Ok(100));
        assert!(parse_iterations("99").unwrap_err().contains("too few"));
    }
}
