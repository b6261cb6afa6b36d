//! `pvmctl bench ipc`: pVM pipes and signals against Linux pipes, POSIX message queues and
//! signals, measured in the same run.
//!
//! The pVM side runs the example guests under `pvmctl run` (a private runtime directory, a
//! timeout per run) and parses the line each prints:
//! - `pingpong -- 10000` and `pingpong -- 2000 --no-spin`: 1-byte round trips between a parent
//!   and a forked child over two pipes;
//! - `ipcbench -- stream 512` and `ipcbench -- stream 128 --no-spin`: a child writes in 64 KiB
//!   writes through a pipe with a 1 MiB ring, the parent reads;
//! - `ipcbench -- signal 500`: USR1 bounced between parent and child (kill, handler, kill back).
//!
//! The guests time themselves with the TSC, calibrated against the host clock over the run.
//! The Linux side is two processes forked from this one (the child makes raw system calls only):
//! pipe round trips, pipe throughput, POSIX message queue round trips and SIGUSR1 round trips,
//! timed with `clock_gettime(CLOCK_MONOTONIC)` in the parent.
//!
//! Each round runs every measurement once, pVM and Linux interleaved, so that machine noise hits
//! both alike. A row reports the median of the rounds' medians and the worst of their p99s
//! (throughput: the median of the rounds' GB/s); every round's values are in the JSON output.
use std::ffi::CString;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use clap::Args;
use hypervisor_ext::monotonic_ns;

use crate::figures::{Bar, Figures, Group, Kind, Samples};
use crate::{format_us, median, round3, sig3, BenchError, ChildStatus, HostInfo, Stats};

/// Arguments of `pvmctl bench ipc` and `bench security`.
#[derive(Args)]
pub struct RoundsArgs {
    /// Rounds: each runs every measurement once (pVM and baseline, or confined and not).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 5,
        value_parser = clap::value_parser!(u32).range(1..=1000)
    )]
    pub(crate) rounds: u32,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
    #[command(flatten)]
    pub(crate) figures: crate::figures::FigureArgs,
}

/// Errors of `bench ipc` (wrapped in [`BenchError`]).
#[derive(Debug, thiserror::Error)]
pub enum IpcBenchError {
    /// An example guest is missing.
    #[error(transparent)]
    GuestMissing(#[from] crate::GuestMissing),
    /// `pvmctl run` cannot be started.
    #[error("cannot start `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The error.
        source: io::Error,
    },
    /// `pvmctl run` did not end in time.
    #[error(
        "`{command}` did not end within {}; its process group was killed; its output:\n{output}",
        format_us(timeout.as_secs_f64() * 1e6)
    )]
    Timeout {
        /// The command line.
        command: String,
        /// How long it had.
        timeout: Duration,
        /// What it printed (stdout, then stderr).
        output: String,
    },
    /// `pvmctl run` did not exit with status 0.
    #[error("`{command}` {status}, expected exit status 0; its output:\n{output}")]
    Failed {
        /// The command line.
        command: String,
        /// How it ended.
        status: ChildStatus,
        /// What it printed (stdout, then stderr).
        output: String,
    },
    /// Reading a child's output or waiting for it failed.
    #[error("reading the {what} of `{command}` failed: {source}")]
    Read {
        /// What was read.
        what: &'static str,
        /// The command line.
        command: String,
        /// The error.
        source: io::Error,
    },
    /// A thread reading a child's output or waiting for it ended without reporting.
    #[error("a thread reading the output of `{0}` ended without reporting")]
    ReaderLost(String),
    /// The guest did not print its result line (or printed one for other parameters).
    #[error("`{command}` did not print `{expected}`; its output:\n{output}")]
    NoResult {
        /// The command line.
        command: String,
        /// The line expected, with placeholders.
        expected: String,
        /// What it printed (stdout, then stderr).
        output: String,
    },
    /// The pingpong child pVM did not exit with status 0.
    #[error("`{command}`: the peer pVM ended with {peer}, expected exited with code 0")]
    PeerFailed {
        /// The command line.
        command: String,
        /// The peer's status as the guest printed it.
        peer: String,
    },
    /// A system call of a Linux baseline failed.
    #[error("{call} failed in the Linux {what} baseline: {source}")]
    Sys {
        /// The call.
        call: &'static str,
        /// The baseline.
        what: &'static str,
        /// The error.
        source: io::Error,
    },
    /// The child of a Linux baseline did not exit with status 0.
    #[error("the child of the Linux {what} baseline {status}, expected exit status 0")]
    LinuxChild {
        /// The baseline.
        what: &'static str,
        /// How it ended.
        status: ChildStatus,
    },
    /// The child of a Linux baseline ended (end of file, or SIGCHLD) before its part was done.
    #[error("the child of the Linux {what} baseline ended early, at round {round}")]
    LinuxChildGone {
        /// The baseline.
        what: &'static str,
        /// The round (or byte count, for the stream) reached.
        round: usize,
    },
    /// A Linux round trip returned another byte than the one sent.
    #[error("the Linux {what} baseline's round {round} came back as {got:#04x}, expected {sent:#04x}")]
    LinuxCorrupt {
        /// The baseline.
        what: &'static str,
        /// The round.
        round: usize,
        /// The byte sent.
        sent: u8,
        /// The byte received.
        got: u8,
    },
}

/// Most time a `pvmctl run` may take before its process group is killed.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);
/// After the kill, how long to wait for its output.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// Most time a Linux message-queue receive may block (the peer died).
const MQ_TIMEOUT_S: i64 = 60;

/// pVM pipe round trips with the default adaptive spinning, and with spinning off.
const PVM_PIPE_ROUNDS: usize = 10_000;
const PVM_PIPE_NO_SPIN_ROUNDS: usize = 2_000;
/// MiB streamed through a pVM pipe, with spinning on and off.
const PVM_STREAM_MIB: u64 = 512;
const PVM_STREAM_NO_SPIN_MIB: u64 = 128;
/// pVM signal round trips.
const PVM_SIGNAL_ROUNDS: usize = 500;
/// Linux pipe and message-queue round trips.
const LINUX_PIPE_ROUNDS: usize = 10_000;
const LINUX_MQ_ROUNDS: usize = 10_000;
/// MiB streamed through a Linux pipe.
const LINUX_STREAM_MIB: u64 = 512;
/// Linux signal round trips.
const LINUX_SIGNAL_ROUNDS: usize = 5_000;
/// Write and read size of the throughput rows.
const CHUNK: usize = 64 * 1024;
/// Message-queue attributes.
const MQ_MSGSIZE: usize = 64;
const MQ_MAXMSG: libc::c_long = 10;

/// Target: pVM pipe round trip (adaptive spin) median at most this times Linux's.
const PIPE_SPIN_MAX_RATIO: f64 = 0.1;
/// Target: pVM pipe round trip (spinning off) median at most this times Linux's.
const PIPE_NO_SPIN_MAX_RATIO: f64 = 2.0;
/// Target: pVM pipe throughput at least this times Linux's.
const STREAM_MIN_RATIO: f64 = 3.0;
/// Target: pVM one-way signal delivery median at most this times Linux's.
const SIGNAL_MAX_RATIO: f64 = 1.0;
/// pVM message-queue round trips per run, with and without spinning.
const PVM_MQ_ROUNDS: usize = 10_000;
const PVM_MQ_NO_SPIN_ROUNDS: usize = 2_000;

use crate::verdict;

/// The example guest `name`, which must exist.
fn guest(name: &str) -> Result<PathBuf, IpcBenchError> {
    Ok(crate::guest_path(name)?)
}

// ---------------------------------------------------------------------------------------------
// The guests' result lines.

/// `pingpong: N round trips of S byte(s): median X ns, p99 Y ns, mean Z ns; peer STATUS`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PingpongLine {
    rounds: u64,
    size: u64,
    median_ns: u64,
    p99_ns: u64,
    mean_ns: u64,
    /// The child pVM's wait result, as printed (`exited with code 0` when all went well).
    peer: String,
}

/// The numbers of `line` where `template` has `#`, if it has as many words as `template` and
/// every other word is the same.
fn template_numbers(line: &str, template: &str) -> Option<Vec<u64>> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let expected: Vec<&str> = template.split_whitespace().collect();
    if words.len() != expected.len() {
        return None;
    }
    let mut numbers = Vec::new();
    for (word, want) in words.iter().zip(&expected) {
        if *want == "#" {
            numbers.push(word.parse().ok()?);
        } else if word != want {
            return None;
        }
    }
    Some(numbers)
}

const PINGPONG_TEMPLATE: &str = "pingpong: # round trips of # byte(s): median # ns, p99 # ns, mean # ns";
const STREAM_TEMPLATE: &str = "ipcbench stream: # bytes in # ns";
const SIGNAL_TEMPLATE: &str = "ipcbench signal: # round trips: median # ns, p99 # ns";
const MQ_TEMPLATE: &str = "ipcbench mq: # round trips: median # ns, p99 # ns";

fn parse_pingpong(output: &str) -> Option<PingpongLine> {
    output.lines().find_map(|line| {
        let (head, peer) = line.split_once("; peer ")?;
        match template_numbers(head, PINGPONG_TEMPLATE)?.as_slice() {
            &[rounds, size, median_ns, p99_ns, mean_ns] => Some(PingpongLine {
                rounds,
                size,
                median_ns,
                p99_ns,
                mean_ns,
                peer: peer.trim().to_string(),
            }),
            _ => None,
        }
    })
}

/// `ipcbench stream: B bytes in T ns`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct StreamLine {
    bytes: u64,
    ns: u64,
}

fn parse_stream(output: &str) -> Option<StreamLine> {
    output
        .lines()
        .find_map(|line| match template_numbers(line, STREAM_TEMPLATE)?.as_slice() {
            &[bytes, ns] => Some(StreamLine { bytes, ns }),
            _ => None,
        })
}

/// `ipcbench signal: N round trips: median X ns, p99 Y ns`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SignalLine {
    rounds: u64,
    median_ns: u64,
    p99_ns: u64,
}

fn parse_signal(output: &str) -> Option<SignalLine> {
    parse_round_trips(output, SIGNAL_TEMPLATE)
}

/// `ipcbench mq: N round trips: median X ns, p99 Y ns` (the same shape as the signal line).
fn parse_mq(output: &str) -> Option<SignalLine> {
    parse_round_trips(output, MQ_TEMPLATE)
}

fn parse_round_trips(output: &str, template: &str) -> Option<SignalLine> {
    output
        .lines()
        .find_map(|line| match template_numbers(line, template)?.as_slice() {
            &[rounds, median_ns, p99_ns] => Some(SignalLine {
                rounds,
                median_ns,
                p99_ns,
            }),
            _ => None,
        })
}

// ---------------------------------------------------------------------------------------------
// Measurements.

/// One run's latency distribution, in ns.
#[derive(Clone, Debug, Default, PartialEq)]
struct Latency {
    median_ns: f64,
    p99_ns: f64,
    /// Every sample (a pVM guest's come sorted).
    samples_ns: Vec<f64>,
}

impl Latency {
    fn from_samples(samples: &[Duration]) -> Latency {
        let s = Stats::new(samples);
        Latency {
            median_ns: s.median_us * 1e3,
            p99_ns: s.p99_us * 1e3,
            samples_ns: samples.iter().map(|d| d.as_nanos() as f64).collect(),
        }
    }

    /// A guest's summary line's figures, and the samples it printed after it ([`pvm_abi::samples`]):
    /// there must be one per round trip.
    fn from_guest(
        out: &GuestOutput,
        median_ns: u64,
        p99_ns: u64,
        rounds: usize,
    ) -> Result<Latency, IpcBenchError> {
        let mut samples_ns = Vec::with_capacity(rounds);
        let well_formed = out
            .stdout
            .lines()
            .filter(|l| l.starts_with(pvm_abi::samples::TAG))
            .all(|l| pvm_abi::samples::parse(l, |ns| samples_ns.push(ns as f64)).is_some());
        if !well_formed || samples_ns.len() != rounds {
            return Err(IpcBenchError::NoResult {
                command: out.command.clone(),
                expected: format!("{rounds} samples after `{}`", pvm_abi::samples::TAG),
                output: out.all.clone(),
            });
        }
        Ok(Latency {
            median_ns: median_ns as f64,
            p99_ns: p99_ns as f64,
            samples_ns,
        })
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "median_us": round3(self.median_ns / 1e3),
            "p99_us": round3(self.p99_ns / 1e3),
        })
    }
}

/// One run's transfer.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Throughput {
    bytes: u64,
    ns: u64,
}

impl Throughput {
    /// Decimal GB per second.
    fn gbps(&self) -> f64 {
        self.bytes as f64 / self.ns.max(1) as f64
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({ "bytes": self.bytes, "ns": self.ns, "gb_per_s": round3(self.gbps()) })
    }
}

/// The runs of one measurement: stops at the first failure.
struct Series<T> {
    runs: Vec<T>,
    error: Option<IpcBenchError>,
}

impl<T> Default for Series<T> {
    fn default() -> Self {
        Series {
            runs: Vec::new(),
            error: None,
        }
    }
}

impl<T> Series<T> {
    /// Runs `measure` unless an earlier run failed.
    fn record(&mut self, what: &str, measure: impl FnOnce() -> Result<T, IpcBenchError>) {
        if self.error.is_some() {
            return;
        }
        match measure() {
            Ok(value) => self.runs.push(value),
            Err(e) => {
                eprintln!("pvmctl bench ipc: {what} failed: {e}");
                self.error = Some(e);
            }
        }
    }
}

/// What a row reports of a latency series: the median of the runs' medians, the worst p99.
#[derive(Clone, Debug, PartialEq)]
struct LatencySummary {
    median_ns: f64,
    p99_ns: f64,
    /// Every run's median, in run order.
    medians_ns: Vec<f64>,
    /// Every run's p99, in run order.
    p99s_ns: Vec<f64>,
    /// Every run's samples, in run order.
    samples_ns: Vec<Vec<f64>>,
}

impl LatencySummary {
    /// None if there are no runs.
    fn new(runs: &[Latency]) -> Option<LatencySummary> {
        if runs.is_empty() {
            return None;
        }
        let medians_ns: Vec<f64> = runs.iter().map(|r| r.median_ns).collect();
        Some(LatencySummary {
            median_ns: median(&medians_ns),
            p99_ns: runs.iter().map(|r| r.p99_ns).fold(f64::MIN, f64::max),
            medians_ns,
            p99s_ns: runs.iter().map(|r| r.p99_ns).collect(),
            samples_ns: runs.iter().map(|r| r.samples_ns.clone()).collect(),
        })
    }

    /// Halved: one way of a round trip.
    fn halved(self) -> LatencySummary {
        LatencySummary {
            median_ns: self.median_ns / 2.0,
            p99_ns: self.p99_ns / 2.0,
            medians_ns: self.medians_ns.iter().map(|m| m / 2.0).collect(),
            p99s_ns: self.p99s_ns.iter().map(|m| m / 2.0).collect(),
            samples_ns: self
                .samples_ns
                .iter()
                .map(|run| run.iter().map(|n| n / 2.0).collect())
                .collect(),
        }
    }
}

/// What a row reports of a throughput series: the median of the runs' GB/s.
#[derive(Clone, Debug, PartialEq)]
struct ThroughputSummary {
    gbps: f64,
    /// Every run's GB/s, in run order.
    runs_gbps: Vec<f64>,
}

impl ThroughputSummary {
    fn new(runs: &[Throughput]) -> Option<ThroughputSummary> {
        if runs.is_empty() {
            return None;
        }
        let runs_gbps: Vec<f64> = runs.iter().map(Throughput::gbps).collect();
        Some(ThroughputSummary {
            gbps: median(&runs_gbps),
            runs_gbps,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// pVM runs.

/// What the waiting and reading threads of a `pvmctl run` report.
enum Event {
    Exit(io::Result<ExitStatus>),
    Stdout(io::Result<Vec<u8>>),
    Stderr(io::Result<Vec<u8>>),
}

/// Output of a `pvmctl run` that exited with status 0.
struct GuestOutput {
    command: String,
    stdout: String,
    /// stdout, then stderr: for error messages.
    all: String,
}

/// Runs `pvmctl run --run-dir RUN_DIR GUEST -- ARGS` in its own process group; kills the group
/// if it has not ended within [`RUN_TIMEOUT`].
fn run_guest(
    exe: &Path,
    run_dir: &Path,
    guest: &Path,
    opts: &[String],
    args: &[&str],
) -> Result<GuestOutput, IpcBenchError> {
    let mut cmd = Command::new(exe);
    cmd.arg("run")
        .arg("--run-dir")
        .arg(run_dir)
        .args(opts)
        .arg(guest)
        .arg("--")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let name = guest.file_name().unwrap_or(guest.as_os_str()).to_string_lossy();
    let opts_text: String = opts.iter().map(|o| format!("{o} ")).collect();
    let command = format!("pvmctl run {opts_text}{name} -- {}", args.join(" "));
    let mut child = cmd.spawn().map_err(|source| IpcBenchError::Spawn {
        command: command.clone(),
        source,
    })?;
    let pgid = child.id() as libc::pid_t;
    let (tx, events) = mpsc::channel();
    let reader = |pipe: Option<Box<dyn Read + Send>>, wrap: fn(io::Result<Vec<u8>>) -> Event| {
        let tx = tx.clone();
        thread::spawn(move || {
            let mut bytes = Vec::new();
            let result = match pipe {
                Some(mut pipe) => pipe.read_to_end(&mut bytes).map(|_| bytes),
                None => Ok(bytes),
            };
            let _ = tx.send(wrap(result));
        });
    };
    reader(
        child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>),
        Event::Stdout,
    );
    reader(
        child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>),
        Event::Stderr,
    );
    thread::spawn(move || {
        let _ = tx.send(Event::Exit(child.wait()));
    });

    let mut deadline = Instant::now() + RUN_TIMEOUT;
    let mut timed_out = false;
    let (mut status, mut stdout, mut stderr) = (None, None, None);
    while status.is_none() || stdout.is_none() || stderr.is_none() {
        match events.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Event::Exit(r)) => status = Some(r),
            Ok(Event::Stdout(r)) => stdout = Some(r),
            Ok(Event::Stderr(r)) => stderr = Some(r),
            Err(RecvTimeoutError::Timeout) if !timed_out => {
                // The group is the one created for this child (it leads it), and its processes
                // are all ours to end.
                let _ = crate::child::signal_group(pgid as u32, libc::SIGKILL);
                timed_out = true;
                deadline = Instant::now() + KILL_GRACE;
            }
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    let text = |r: &Option<io::Result<Vec<u8>>>| match r {
        Some(Ok(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
        _ => String::new(),
    };
    let out_text = text(&stdout);
    let all = format!("{out_text}{}", text(&stderr));
    if timed_out {
        return Err(IpcBenchError::Timeout {
            command,
            timeout: RUN_TIMEOUT,
            output: all,
        });
    }
    let read_error = |what, source| IpcBenchError::Read {
        what,
        command: command.clone(),
        source,
    };
    let status = match status {
        Some(Ok(status)) => ChildStatus::from_wait_status(status.into_raw()),
        Some(Err(e)) => return Err(read_error("exit status", e)),
        None => return Err(IpcBenchError::ReaderLost(command)),
    };
    for (what, result) in [("stdout", stdout), ("stderr", stderr)] {
        match result {
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(read_error(what, e)),
            None => return Err(IpcBenchError::ReaderLost(command)),
        }
    }
    if status != ChildStatus::Exited(0) {
        return Err(IpcBenchError::Failed {
            command,
            status,
            output: all,
        });
    }
    Ok(GuestOutput {
        command,
        stdout: out_text,
        all,
    })
}

/// The paths `run_guest` needs.
struct PvmEnv {
    exe: PathBuf,
    run_dir: PathBuf,
    pingpong: PathBuf,
    ipcbench: PathBuf,
}

/// Where the two sides of a round trip run. Left to the host scheduler, two processes that
/// wake each other land on one core in some runs and on two in others, and a pipe round trip
/// differs several times between the two; pinned, each row measures one placement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    /// Where the host scheduler puts them.
    Free,
    /// Both on this CPU.
    SameCore(usize),
    /// The parent (the root pVM, or this process) on the first, the child on the second.
    CrossCore(usize, usize),
}

impl Place {
    /// The pinned placements measured: both sides on the first CPU this process may use, and
    /// across the first two (when there are two).
    fn pinned() -> [Option<Place>; 2] {
        let cpus = hypervisor_ext::placement::allowed_cpus().unwrap_or_default();
        [
            cpus.first().map(|&c| Place::SameCore(c)),
            (cpus.len() >= 2).then(|| Place::CrossCore(cpus[0], cpus[1])),
        ]
    }

    /// `pvmctl run` options that place the family so.
    fn run_opts(self) -> Vec<String> {
        match self {
            Place::Free => Vec::new(),
            Place::SameCore(cpu) => vec!["--cpuset-cpus".into(), cpu.to_string()],
            Place::CrossCore(a, b) => vec!["--cpuset-cpus".into(), format!("{a},{b}"), "--cpu-spread".into()],
        }
    }

    /// (the parent's CPU, the child's), if pinned.
    fn cpus(self) -> Option<(usize, usize)> {
        match self {
            Place::Free => None,
            Place::SameCore(c) => Some((c, c)),
            Place::CrossCore(a, b) => Some((a, b)),
        }
    }
}

/// Pins this thread to one CPU until dropped, then restores what it could run on.
struct PinnedHere {
    before: rustix::thread::CpuSet,
}

impl PinnedHere {
    fn new(cpu: usize) -> Result<PinnedHere, IpcBenchError> {
        let sys = |source: rustix::io::Errno| IpcBenchError::Sys {
            call: "sched_setaffinity",
            what: "pinning",
            source: source.into(),
        };
        let before = rustix::thread::sched_getaffinity(None).map_err(sys)?;
        rustix::thread::sched_setaffinity(None, &cpu_set(cpu)).map_err(sys)?;
        Ok(PinnedHere { before })
    }
}

impl Drop for PinnedHere {
    fn drop(&mut self) {
        let _ = rustix::thread::sched_setaffinity(None, &self.before);
    }
}

/// The set of one CPU.
fn cpu_set(cpu: usize) -> rustix::thread::CpuSet {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    set
}

impl PvmEnv {
    /// `pingpong -- ROUNDS [--no-spin]`.
    fn pipe(&self, rounds: usize, spin: bool, place: Place) -> Result<Latency, IpcBenchError> {
        let rounds_arg = rounds.to_string();
        let mut args = vec![rounds_arg.as_str(), "--samples"];
        if !spin {
            args.push("--no-spin");
        }
        let out = run_guest(&self.exe, &self.run_dir, &self.pingpong, &place.run_opts(), &args)?;
        let line = parse_pingpong(&out.stdout)
            .filter(|l| l.rounds == rounds as u64 && l.size == 1)
            .ok_or_else(|| IpcBenchError::NoResult {
                command: out.command.clone(),
                expected: format!(
                    "pingpong: {rounds} round trips of 1 byte(s): median X ns, p99 Y ns, mean Z ns; peer S"
                ),
                output: out.all.clone(),
            })?;
        if line.peer != "exited with code 0" {
            return Err(IpcBenchError::PeerFailed {
                command: out.command,
                peer: line.peer,
            });
        }
        Latency::from_guest(&out, line.median_ns, line.p99_ns, rounds)
    }

    /// `ipcbench -- stream MIB [--no-spin]`.
    fn stream(&self, mib: u64, spin: bool) -> Result<Throughput, IpcBenchError> {
        let mib_arg = mib.to_string();
        let mut args = vec!["stream", mib_arg.as_str()];
        if !spin {
            args.push("--no-spin");
        }
        let out = run_guest(&self.exe, &self.run_dir, &self.ipcbench, &[], &args)?;
        let bytes = mib << 20;
        let line = parse_stream(&out.stdout)
            .filter(|l| l.bytes == bytes)
            .ok_or_else(|| IpcBenchError::NoResult {
                command: out.command.clone(),
                expected: format!("ipcbench stream: {bytes} bytes in T ns"),
                output: out.all.clone(),
            })?;
        Ok(Throughput {
            bytes: line.bytes,
            ns: line.ns,
        })
    }

    /// `ipcbench -- signal ROUNDS`: round trips.
    fn mq(&self, rounds: usize, spin: bool) -> Result<Latency, IpcBenchError> {
        let rounds_arg = rounds.to_string();
        let mut args = vec!["mq", rounds_arg.as_str(), "--samples"];
        if !spin {
            args.push("--no-spin");
        }
        let out = run_guest(&self.exe, &self.run_dir, &self.ipcbench, &[], &args)?;
        let line = parse_mq(&out.stdout)
            .filter(|l| l.rounds == rounds as u64)
            .ok_or_else(|| IpcBenchError::NoResult {
                command: out.command.clone(),
                expected: format!("ipcbench mq: {rounds} round trips: median X ns, p99 Y ns"),
                output: out.all.clone(),
            })?;
        Latency::from_guest(&out, line.median_ns, line.p99_ns, rounds)
    }

    fn signal(&self, rounds: usize) -> Result<Latency, IpcBenchError> {
        let rounds_arg = rounds.to_string();
        let out = run_guest(
            &self.exe,
            &self.run_dir,
            &self.ipcbench,
            &[],
            &["signal", &rounds_arg, "--samples"],
        )?;
        let line = parse_signal(&out.stdout)
            .filter(|l| l.rounds == rounds as u64)
            .ok_or_else(|| IpcBenchError::NoResult {
                command: out.command.clone(),
                expected: format!("ipcbench signal: {rounds} round trips: median X ns, p99 Y ns"),
                output: out.all.clone(),
            })?;
        Latency::from_guest(&out, line.median_ns, line.p99_ns, rounds)
    }
}

// ---------------------------------------------------------------------------------------------
// Linux baselines: two processes, the child forked from this one.

fn sys_error(call: &'static str, what: &'static str) -> IpcBenchError {
    IpcBenchError::Sys {
        call,
        what,
        source: io::Error::last_os_error(),
    }
}

/// A pipe (read end, write end), both close-on-exec.
fn pipe(what: &'static str) -> Result<(File, File), IpcBenchError> {
    let (r, w) =
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(|e| IpcBenchError::Sys {
            call: "pipe2",
            what,
            source: e.into(),
        })?;
    Ok((File::from(r), File::from(w)))
}

/// A forked child of a baseline: killed and reaped on drop unless waited for.
struct Forked {
    pid: libc::pid_t,
    what: &'static str,
    /// How it ended, once reaped.
    status: Option<ChildStatus>,
}

impl Forked {
    /// Forks; the child runs `child`, which must make only async-signal-safe calls and must not
    /// allocate, and then exits with its return value without unwinding or flushing.
    fn spawn(what: &'static str, child: impl FnOnce() -> libc::c_int) -> Result<Forked, IpcBenchError> {
        // SAFETY: the child runs `child` (raw system calls on data prepared before the fork, as
        // the caller guarantees) and ends with _exit: it never returns into this process's code.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let code = child();
            // SAFETY: ends the forked child at once, without unwinding or running destructors.
            unsafe { libc::_exit(code) };
        }
        if pid < 0 {
            return Err(sys_error("fork", what));
        }
        Ok(Forked {
            pid,
            what,
            status: None,
        })
    }

    /// `waitpid`, retried on EINTR: how it ended, or None (`nohang`, still running).
    fn wait_flags(&mut self, nohang: bool) -> Result<Option<ChildStatus>, IpcBenchError> {
        if self.status.is_some() {
            return Ok(self.status);
        }
        let status =
            crate::child::wait_child(self.pid as u32, nohang).map_err(|source| IpcBenchError::Sys {
                call: "waitpid",
                what: self.what,
                source,
            })?;
        self.status = status.map(ChildStatus::from_wait_status);
        Ok(self.status)
    }

    /// How it ended, if it has.
    fn try_wait(&mut self) -> Result<Option<ChildStatus>, IpcBenchError> {
        self.wait_flags(true)
    }

    /// Waits for the child; it must exit with status 0.
    fn wait(mut self) -> Result<(), IpcBenchError> {
        match self.wait_flags(false)? {
            Some(ChildStatus::Exited(0)) => Ok(()),
            Some(status) => Err(IpcBenchError::LinuxChild {
                what: self.what,
                status,
            }),
            None => Err(IpcBenchError::LinuxChildGone {
                what: self.what,
                round: 0,
            }),
        }
    }
}

impl Drop for Forked {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = crate::child::signal(self.pid as u32, libc::SIGKILL);
            let _ = self.wait_flags(false);
        }
    }
}

/// Writes all of `buf` to `fd`, retrying on EINTR; false on any other failure.
fn write_all_raw(fd: RawFd, buf: &[u8]) -> bool {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: writes from the unwritten tail of a valid buffer.
        let r = unsafe { libc::write(fd, buf[done..].as_ptr().cast(), buf.len() - done) };
        if r > 0 {
            done += r as usize;
        } else if r == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return false;
        }
    }
    true
}

/// Reads up to `buf.len()` bytes from `fd`, retrying on EINTR: the count (0 at end of file).
fn read_raw(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: reads into a valid, writable buffer of `buf.len()` bytes.
        let r = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if r >= 0 {
            return Ok(r as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// 1-byte round trips over two pipes; the parent times each with CLOCK_MONOTONIC.
fn linux_pipe(rounds: usize, place: Place) -> Result<Latency, IpcBenchError> {
    const WHAT: &str = "pipe round trip";
    let _pinned = place
        .cpus()
        .map(|(parent, _)| PinnedHere::new(parent))
        .transpose()?;
    let child_cpus = place.cpus().map(|(_, child)| cpu_set(child));
    let (ping_r, ping_w) = pipe(WHAT)?;
    let (pong_r, pong_w) = pipe(WHAT)?;
    let (ping_r_fd, ping_w_fd, pong_r_fd, pong_w_fd) = (
        ping_r.as_raw_fd(),
        ping_w.as_raw_fd(),
        pong_r.as_raw_fd(),
        pong_w.as_raw_fd(),
    );
    let mut samples = Vec::with_capacity(rounds);
    let child = Forked::spawn(WHAT, || {
        // On its own CPU, if placed (a system call on a set made before the fork).
        if let Some(set) = &child_cpus {
            if rustix::thread::sched_setaffinity(None, set).is_err() {
                return 1;
            }
        }
        // SAFETY: in the forked child: closes its copies of the parent's ends, so that either
        // side sees end of file when the other goes.
        unsafe {
            libc::close(ping_w_fd);
            libc::close(pong_r_fd);
        }
        let mut byte = [0u8; 1];
        for _ in 0..rounds {
            if !matches!(read_raw(ping_r_fd, &mut byte), Ok(1)) || !write_all_raw(pong_w_fd, &byte) {
                return 1;
            }
        }
        0
    })?;
    drop(ping_r);
    drop(pong_w);
    let mut byte = [0u8; 1];
    for round in 0..rounds {
        let sent = round as u8;
        let t0 = monotonic_ns();
        if !write_all_raw(ping_w.as_raw_fd(), &[sent]) {
            return Err(sys_error("write", WHAT));
        }
        match read_raw(pong_r.as_raw_fd(), &mut byte) {
            Ok(1) => {}
            Ok(_) => return Err(IpcBenchError::LinuxChildGone { what: WHAT, round }),
            Err(source) => {
                return Err(IpcBenchError::Sys {
                    call: "read",
                    what: WHAT,
                    source,
                })
            }
        }
        let t1 = monotonic_ns();
        if byte[0] != sent {
            return Err(IpcBenchError::LinuxCorrupt {
                what: WHAT,
                round,
                sent,
                got: byte[0],
            });
        }
        samples.push(Duration::from_nanos(t1 - t0));
    }
    child.wait()?;
    Ok(Latency::from_samples(&samples))
}

/// The child writes `mib` MiB in 64 KiB writes into a pipe (default capacity), the parent reads
/// in 64 KiB reads: from just after the fork to end of file.
fn linux_stream(mib: u64) -> Result<Throughput, IpcBenchError> {
    const WHAT: &str = "pipe throughput";
    let total = (mib as usize) << 20;
    let (r, w) = pipe(WHAT)?;
    let (r_fd, w_fd) = (r.as_raw_fd(), w.as_raw_fd());
    let chunk = vec![0x5au8; CHUNK];
    let mut buf = vec![0u8; CHUNK];
    let child = Forked::spawn(WHAT, || {
        // SAFETY: in the forked child: closes its copy of the read end.
        unsafe { libc::close(r_fd) };
        let mut sent = 0;
        while sent < total {
            if !write_all_raw(w_fd, &chunk) {
                return 1;
            }
            sent += chunk.len();
        }
        0
    })?;
    let start = monotonic_ns();
    drop(w);
    let mut got = 0usize;
    loop {
        match read_raw(r_fd, &mut buf) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(source) => {
                return Err(IpcBenchError::Sys {
                    call: "read",
                    what: WHAT,
                    source,
                })
            }
        }
    }
    let ns = monotonic_ns() - start;
    child.wait()?;
    if got != total {
        return Err(IpcBenchError::LinuxChildGone {
            what: WHAT,
            round: got,
        });
    }
    Ok(Throughput {
        bytes: got as u64,
        ns,
    })
}

/// A POSIX message queue, closed and unlinked on drop.
struct MessageQueue {
    mqd: libc::mqd_t,
    name: CString,
}

impl MessageQueue {
    /// Creates a new queue (O_CREAT | O_EXCL) of [`MQ_MAXMSG`] messages of [`MQ_MSGSIZE`] bytes.
    fn create(name: String) -> Result<MessageQueue, IpcBenchError> {
        const WHAT: &str = "message queue";
        let name = CString::new(name).map_err(|_| IpcBenchError::Sys {
            call: "mq_open",
            what: WHAT,
            source: io::ErrorKind::InvalidInput.into(),
        })?;
        // SAFETY: mq_attr is plain old data: all zeroes is a valid value.
        let mut attr: libc::mq_attr = unsafe { std::mem::zeroed() };
        attr.mq_maxmsg = MQ_MAXMSG;
        attr.mq_msgsize = MQ_MSGSIZE as libc::c_long;
        // SAFETY: `name` is a NUL-terminated string; with O_CREAT, mq_open reads a mode and a
        // pointer to a valid mq_attr, both passed.
        let mqd = unsafe {
            libc::mq_open(
                name.as_ptr(),
                libc::O_CREAT | libc::O_EXCL | libc::O_RDWR,
                0o600 as libc::mode_t,
                &attr as *const libc::mq_attr,
            )
        };
        if mqd < 0 {
            return Err(sys_error("mq_open", WHAT));
        }
        Ok(MessageQueue { mqd, name })
    }
}

impl Drop for MessageQueue {
    fn drop(&mut self) {
        // SAFETY: closes the descriptor this queue owns and unlinks the name it created.
        unsafe {
            libc::mq_close(self.mqd);
            libc::mq_unlink(self.name.as_ptr());
        }
    }
}

/// 1-byte messages bounced between two queues; the parent times each round trip.
fn linux_mq(rounds: usize) -> Result<Latency, IpcBenchError> {
    const WHAT: &str = "message queue";
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let tag = format!(
        "/pvmctl-bench-ipc-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let ping = MessageQueue::create(format!("{tag}-ping"))?;
    let pong = MessageQueue::create(format!("{tag}-pong"))?;
    let (ping_q, pong_q) = (ping.mqd, pong.mqd);
    let child = Forked::spawn(WHAT, || {
        let mut msg = [0u8; MQ_MSGSIZE];
        for _ in 0..rounds {
            // SAFETY: receives into a local buffer of the queue's message size, and sends
            // the 1-byte message back; both descriptors were inherited across fork.
            let ok = unsafe {
                libc::mq_receive(ping_q, msg.as_mut_ptr().cast(), msg.len(), std::ptr::null_mut()) == 1
                    && libc::mq_send(pong_q, msg.as_ptr().cast(), 1, 0) == 0
            };
            if !ok {
                return 1;
            }
        }
        0
    })?;
    // The parent's receives give up after MQ_TIMEOUT_S: the child may have died.
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Realtime);
    let deadline = libc::timespec {
        tv_sec: (now.tv_sec + MQ_TIMEOUT_S) as _, // time_t: i64 in glibc and musl alike
        tv_nsec: now.tv_nsec,
    };
    let mut samples = Vec::with_capacity(rounds);
    let mut msg = [0u8; MQ_MSGSIZE];
    for round in 0..rounds {
        let sent = round as u8;
        let t0 = monotonic_ns();
        // SAFETY: sends 1 byte from a local.
        if unsafe { libc::mq_send(ping_q, [sent].as_ptr().cast(), 1, 0) } != 0 {
            return Err(sys_error("mq_send", WHAT));
        }
        // SAFETY: receives into a local buffer of the queue's message size; `deadline` is a
        // valid timespec.
        let got = unsafe {
            libc::mq_timedreceive(
                pong_q,
                msg.as_mut_ptr().cast(),
                msg.len(),
                std::ptr::null_mut(),
                &deadline,
            )
        };
        let t1 = monotonic_ns();
        if got != 1 {
            return Err(sys_error("mq_timedreceive", WHAT));
        }
        if msg[0] != sent {
            return Err(IpcBenchError::LinuxCorrupt {
                what: WHAT,
                round,
                sent,
                got: msg[0],
            });
        }
        samples.push(Duration::from_nanos(t1 - t0));
    }
    child.wait()?;
    drop((ping, pong));
    Ok(Latency::from_samples(&samples))
}

/// Counts the SIGUSR1 handlers run, in this process and (its own copy) in the forked child.
static USR1_COUNT: AtomicU32 = AtomicU32::new(0);

extern "C" fn on_usr1(_: libc::c_int) {
    USR1_COUNT.fetch_add(1, Ordering::SeqCst);
}

/// How long the parent of the signal baseline waits for a reply before it checks its child.
const SIGNAL_POLL: libc::timespec = libc::timespec {
    tv_sec: 1,
    tv_nsec: 0,
};

/// A signal set holding only `sig`.
fn sigset_of(sig: libc::c_int) -> libc::sigset_t {
    // SAFETY: sigset_t is plain old data: all zeroes is a valid value.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: initialises a local signal set.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
    }
    set
}

/// Whether a SIGUSR1 is pending for this thread or process.
fn usr1_pending() -> bool {
    // SAFETY: sigset_t is plain old data: all zeroes is a valid value.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: sigpending writes into a valid set; sigismember reads it.
    unsafe { libc::sigpending(&mut set) == 0 && libc::sigismember(&set, libc::SIGUSR1) == 1 }
}

/// The SIGUSR1 handler installed and SIGUSR1 blocked in this thread; restored on drop.
struct SignalSetup {
    old_action: libc::sigaction,
    old_mask: libc::sigset_t,
}

impl SignalSetup {
    /// Blocks SIGUSR1 in this thread and installs the handler: (the setup, the mask to wait
    /// with, which lets SIGUSR1 in).
    fn install(what: &'static str) -> Result<(SignalSetup, libc::sigset_t), IpcBenchError> {
        let usr1 = sigset_of(libc::SIGUSR1);
        // SAFETY: sigaction and sigset_t are plain old data: all zeroes is a valid value.
        let (mut action, mut old_action, mut old_mask) = unsafe {
            (
                std::mem::zeroed::<libc::sigaction>(),
                std::mem::zeroed::<libc::sigaction>(),
                std::mem::zeroed::<libc::sigset_t>(),
            )
        };
        // SAFETY: initialises a local signal set.
        unsafe { libc::sigemptyset(&mut action.sa_mask) };
        action.sa_sigaction = on_usr1 as extern "C" fn(libc::c_int) as libc::sighandler_t;
        // Block first, so that no signal reaches a handler outside the waits.
        // SAFETY: changes this thread's mask with valid sets.
        if unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &usr1, &mut old_mask) } != 0 {
            return Err(sys_error("pthread_sigmask", what));
        }
        // SAFETY: installs an async-signal-safe handler (one atomic add) with a valid action.
        if unsafe { libc::sigaction(libc::SIGUSR1, &action, &mut old_action) } != 0 {
            let err = sys_error("sigaction(SIGUSR1)", what);
            // SAFETY: restores this thread's mask.
            unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old_mask, std::ptr::null_mut()) };
            return Err(err);
        }
        let mut wait_mask = old_mask;
        // SAFETY: edits a local signal set.
        unsafe { libc::sigdelset(&mut wait_mask, libc::SIGUSR1) };
        Ok((SignalSetup { old_action, old_mask }, wait_mask))
    }
}

impl Drop for SignalSetup {
    fn drop(&mut self) {
        let usr1 = sigset_of(libc::SIGUSR1);
        let zero = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: consumes any SIGUSR1 still pending (a reply left when a run failed: it would
        // end this process once the old action is back), then restores the action and mask
        // saved by `install`.
        unsafe {
            while libc::sigtimedwait(&usr1, std::ptr::null_mut(), &zero) == libc::SIGUSR1 {}
            libc::sigaction(libc::SIGUSR1, &self.old_action, std::ptr::null_mut());
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.old_mask, std::ptr::null_mut());
        }
    }
}

/// SIGUSR1 bounced between this thread and a forked child: each side runs its handler while
/// waiting with SIGUSR1 let in (sigsuspend; the parent ppoll with the same mask and a timeout,
/// to notice a dead child), SIGUSR1 being blocked outside the waits so that none is lost, then
/// sends it back. The parent times each round trip (two deliveries).
fn linux_signal(rounds: usize) -> Result<Latency, IpcBenchError> {
    const WHAT: &str = "signal round trip";
    // The child signals this thread (tgkill): a process-directed signal could go to another
    // thread of ours, which does not block it.
    let parent_pid = std::process::id() as libc::pid_t;
    let parent_tid = rustix::thread::gettid().as_raw_nonzero().get();
    let (setup, wait_mask) = SignalSetup::install(WHAT)?;
    USR1_COUNT.store(0, Ordering::SeqCst);
    // The child inherits the handler, the blocked mask and a zero count.
    let mut child = Forked::spawn(WHAT, || {
        let mut seen = 0;
        for _ in 0..rounds {
            while USR1_COUNT.load(Ordering::SeqCst) == seen {
                // SAFETY: waits with a valid mask; returns after a handler ran.
                unsafe { libc::sigsuspend(&wait_mask) };
            }
            seen = USR1_COUNT.load(Ordering::SeqCst);
            // SAFETY: tgkill has no memory-safety preconditions.
            if unsafe { libc::syscall(libc::SYS_tgkill, parent_pid, parent_tid, libc::SIGUSR1) } != 0 {
                return 1;
            }
        }
        0
    })?;
    let mut samples = Vec::with_capacity(rounds);
    let mut seen = 0;
    for round in 0..rounds {
        let t0 = monotonic_ns();
        crate::child::signal(child.pid as u32, libc::SIGUSR1).map_err(|source| IpcBenchError::Sys {
            call: "kill",
            what: WHAT,
            source,
        })?;
        while USR1_COUNT.load(Ordering::SeqCst) == seen {
            // SAFETY: no descriptors; waits with a valid mask and timeout, like sigsuspend.
            let r = unsafe { libc::ppoll(std::ptr::null_mut(), 0, &SIGNAL_POLL, &wait_mask) };
            // Timed out: fail if the child has ended and no reply of its is pending.
            if r == 0 && child.try_wait()?.is_some() && !usr1_pending() {
                return match child.wait() {
                    Ok(()) => Err(IpcBenchError::LinuxChildGone { what: WHAT, round }),
                    Err(e) => Err(e),
                };
            }
        }
        let t1 = monotonic_ns();
        seen = USR1_COUNT.load(Ordering::SeqCst);
        samples.push(Duration::from_nanos(t1 - t0));
    }
    child.wait()?;
    drop(setup);
    Ok(Latency::from_samples(&samples))
}

// ---------------------------------------------------------------------------------------------
// The run and its report.

/// Every series measured.
#[derive(Default)]
struct Measurements {
    pvm_pipe: Series<Latency>,
    pvm_pipe_no_spin: Series<Latency>,
    /// Pinned: [same core, across two cores].
    pvm_pipe_pinned: [Series<Latency>; 2],
    pvm_pipe_no_spin_pinned: [Series<Latency>; 2],
    linux_pipe_pinned: [Series<Latency>; 2],
    pvm_stream: Series<Throughput>,
    pvm_stream_no_spin: Series<Throughput>,
    pvm_signal: Series<Latency>,
    pvm_mq: Series<Latency>,
    pvm_mq_no_spin: Series<Latency>,
    linux_pipe: Series<Latency>,
    linux_stream: Series<Throughput>,
    linux_mq: Series<Latency>,
    linux_signal: Series<Latency>,
}

impl Measurements {
    fn errors(&self) -> impl Iterator<Item = &IpcBenchError> {
        [
            &self.pvm_pipe.error,
            &self.pvm_pipe_no_spin.error,
            &self.pvm_pipe_pinned[0].error,
            &self.pvm_pipe_pinned[1].error,
            &self.pvm_pipe_no_spin_pinned[0].error,
            &self.pvm_pipe_no_spin_pinned[1].error,
            &self.linux_pipe_pinned[0].error,
            &self.linux_pipe_pinned[1].error,
            &self.pvm_stream.error,
            &self.pvm_stream_no_spin.error,
            &self.pvm_signal.error,
            &self.pvm_mq.error,
            &self.pvm_mq_no_spin.error,
            &self.linux_pipe.error,
            &self.linux_stream.error,
            &self.linux_mq.error,
            &self.linux_signal.error,
        ]
        .into_iter()
        .flatten()
    }
}

/// Runs `pvmctl bench ipc`.
pub fn ipc(args: RoundsArgs) -> Result<ExitCode, BenchError> {
    let scratch = crate::scratch("ipc", true)?;
    let env = PvmEnv {
        exe: std::env::current_exe().map_err(BenchError::CurrentExe)?,
        // A private registry, so that the benchmark's pVMs do not show in the user's `pvmctl ps`.
        run_dir: scratch.path().to_path_buf(),
        pingpong: guest("pingpong")?,
        ipcbench: guest("ipcbench")?,
    };
    let rounds = args.rounds;
    let places = Place::pinned();
    let mut m = Measurements::default();
    for round in 1..=rounds {
        eprintln!("pvmctl bench ipc: round {round}/{rounds}: pipe round trips, throughput, message queue, signals...");
        m.pvm_pipe.record("pVM pipe round trip", || {
            env.pipe(PVM_PIPE_ROUNDS, true, Place::Free)
        });
        m.pvm_pipe_no_spin.record("pVM pipe round trip --no-spin", || {
            env.pipe(PVM_PIPE_NO_SPIN_ROUNDS, false, Place::Free)
        });
        m.linux_pipe.record("Linux pipe round trip", || {
            linux_pipe(LINUX_PIPE_ROUNDS, Place::Free)
        });
        for (i, place) in places.into_iter().enumerate() {
            let Some(place) = place else { continue };
            m.pvm_pipe_pinned[i].record("pVM pipe round trip, pinned", || {
                env.pipe(PVM_PIPE_ROUNDS, true, place)
            });
            m.pvm_pipe_no_spin_pinned[i].record("pVM pipe round trip --no-spin, pinned", || {
                env.pipe(PVM_PIPE_NO_SPIN_ROUNDS, false, place)
            });
            m.linux_pipe_pinned[i].record("Linux pipe round trip, pinned", || {
                linux_pipe(LINUX_PIPE_ROUNDS, place)
            });
        }
        m.pvm_stream
            .record("pVM pipe throughput", || env.stream(PVM_STREAM_MIB, true));
        m.pvm_stream_no_spin.record("pVM pipe throughput --no-spin", || {
            env.stream(PVM_STREAM_NO_SPIN_MIB, false)
        });
        m.linux_stream
            .record("Linux pipe throughput", || linux_stream(LINUX_STREAM_MIB));
        m.pvm_mq
            .record("pVM message queue round trip", || env.mq(PVM_MQ_ROUNDS, true));
        m.pvm_mq_no_spin
            .record("pVM message queue round trip --no-spin", || {
                env.mq(PVM_MQ_NO_SPIN_ROUNDS, false)
            });
        m.linux_mq
            .record("Linux message queue round trip", || linux_mq(LINUX_MQ_ROUNDS));
        m.pvm_signal
            .record("pVM signal round trip", || env.signal(PVM_SIGNAL_ROUNDS));
        m.linux_signal
            .record("Linux signal round trip", || linux_signal(LINUX_SIGNAL_ROUNDS));
    }
    drop(scratch);
    let report = IpcReport {
        host: HostInfo::get(),
        rounds,
        m,
        places,
    };
    if args.json {
        println!("{}", report.json());
    } else {
        print!("{}", report.table());
    }
    report.figures().write(&args.figures)?;
    Ok(if report.m.errors().next().is_none() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A summary of the runs that succeeded.
enum Summary {
    Latency(LatencySummary),
    Throughput(ThroughputSummary),
}

impl Summary {
    fn runs(&self) -> usize {
        match self {
            Summary::Latency(s) => s.medians_ns.len(),
            Summary::Throughput(s) => s.runs_gbps.len(),
        }
    }
}

/// One side of a table row.
enum Side {
    /// The runs that succeeded, and the error that stopped the series if one did.
    Measured(Summary, Option<String>),
    /// The first run failed.
    Failed(String),
}

impl Side {
    fn new(summary: Option<Summary>, error: &Option<IpcBenchError>) -> Side {
        let error = error.as_ref().map(ToString::to_string);
        match (summary, error) {
            (Some(summary), error) => Side::Measured(summary, error),
            (None, Some(error)) => Side::Failed(error),
            (None, None) => Side::Failed("no runs".into()),
        }
    }

    fn latency(series: &Series<Latency>, halve: bool) -> Side {
        let summary = LatencySummary::new(&series.runs).map(|s| if halve { s.halved() } else { s });
        Side::new(summary.map(Summary::Latency), &series.error)
    }

    fn throughput(series: &Series<Throughput>) -> Side {
        Side::new(
            ThroughputSummary::new(&series.runs).map(Summary::Throughput),
            &series.error,
        )
    }

    /// The error of a series that failed.
    fn error(&self) -> Option<&str> {
        match self {
            Side::Measured(_, error) => error.as_deref(),
            Side::Failed(error) => Some(error),
        }
    }

    /// The (main, p99) cells; `*` marks a series of which a run failed.
    fn cells(&self) -> (String, String) {
        match self {
            Side::Measured(summary, error) => {
                let mark = if error.is_some() { "*" } else { "" };
                match summary {
                    Summary::Latency(s) => (
                        format!("{}{mark}", format_ns(s.median_ns)),
                        format!("{}{mark}", format_ns(s.p99_ns)),
                    ),
                    Summary::Throughput(s) => (format!("{} GB/s{mark}", sig3(s.gbps)), "-".into()),
                }
            }
            Side::Failed(_) => ("FAILED".into(), "-".into()),
        }
    }

    /// The runs' values, in run order.
    fn per_run(&self) -> String {
        match self {
            Side::Measured(Summary::Latency(s), _) => s
                .medians_ns
                .iter()
                .map(|&m| format_ns(m))
                .collect::<Vec<_>>()
                .join(", "),
            Side::Measured(Summary::Throughput(s), _) => s
                .runs_gbps
                .iter()
                .map(|&g| format!("{} GB/s", sig3(g)))
                .collect::<Vec<_>>()
                .join(", "),
            Side::Failed(_) => "FAILED".into(),
        }
    }

    fn json(&self) -> serde_json::Value {
        match self {
            Side::Measured(summary, error) => {
                let mut value = match summary {
                    Summary::Latency(s) => serde_json::json!({
                        "median_us": round3(s.median_ns / 1e3),
                        "p99_us": round3(s.p99_ns / 1e3),
                        "run_medians_us": s.medians_ns.iter().map(|m| round3(m / 1e3)).collect::<Vec<_>>(),
                    }),
                    Summary::Throughput(s) => serde_json::json!({
                        "gb_per_s": round3(s.gbps),
                        "runs_gb_per_s": s.runs_gbps.iter().map(|&g| round3(g)).collect::<Vec<_>>(),
                    }),
                };
                value["runs"] = summary.runs().into();
                value["error"] = error.clone().into();
                value
            }
            Side::Failed(e) => serde_json::json!({ "runs": 0, "error": e }),
        }
    }
}

/// (median ratio, p99 ratio) of pVM over Linux; for throughput, GB/s over GB/s and no p99.
fn ratios(pvm: &Side, linux: &Side) -> Option<(f64, Option<f64>)> {
    match (pvm, linux) {
        (Side::Measured(Summary::Latency(p), _), Side::Measured(Summary::Latency(l), _)) => {
            Some((p.median_ns / l.median_ns, Some(p.p99_ns / l.p99_ns)))
        }
        (Side::Measured(Summary::Throughput(p), _), Side::Measured(Summary::Throughput(l), _)) => {
            Some((p.gbps / l.gbps, None))
        }
        _ => None,
    }
}

/// A duration given in ns: in ns below 1 us, else as [`format_us`].
fn format_ns(ns: f64) -> String {
    if ns.is_finite() && ns < 999.5 {
        format!("{} ns", sig3(ns))
    } else {
        format_us(ns / 1e3)
    }
}

/// A row of the table.
struct Row {
    name: &'static str,
    /// The pVM command, or what the pVM side is.
    pvm_how: String,
    linux_how: String,
    pvm: Side,
    linux: Side,
}

/// A target: (description, row index, the bound on the pVM/Linux median ratio, at most?).
struct Target {
    name: String,
    row: usize,
    bound: f64,
    at_most: bool,
}

/// The results of `bench ipc`.
struct IpcReport {
    host: HostInfo,
    rounds: u32,
    m: Measurements,
    /// Where the pinned rows ran: [both on one core, across two] (none where the CPUs lack).
    places: [Option<Place>; 2],
}

/// The pinned rows: [same core, two cores] x [adaptive spin, spinning off].
const PINNED_ROWS: [[&str; 2]; 2] = [
    [
        "pipe round trip, 1 B, same core (pVM: adaptive spin)",
        "pipe round trip, 1 B, same core (pVM: spinning off)",
    ],
    [
        "pipe round trip, 1 B, two cores (pVM: adaptive spin)",
        "pipe round trip, 1 B, two cores (pVM: spinning off)",
    ],
];

/// Row indices of the targets.
const ROW_PIPE: usize = 0;
const ROW_PIPE_NO_SPIN: usize = 1;
const ROW_STREAM: usize = 2;
const ROW_MQ: usize = 4;
const ROW_SIGNAL_ONE_WAY: usize = 7;

impl IpcReport {
    fn rows(&self) -> Vec<Row> {
        let m = &self.m;
        let mut rows = vec![
            Row {
                name: "pipe round trip, 1 B (pVM: adaptive spin)",
                pvm_how: format!("pingpong -- {PVM_PIPE_ROUNDS}"),
                linux_how: format!("two pipes, N = {LINUX_PIPE_ROUNDS}"),
                pvm: Side::latency(&m.pvm_pipe, false),
                linux: Side::latency(&m.linux_pipe, false),
            },
            Row {
                name: "pipe round trip, 1 B (pVM: spinning off)",
                pvm_how: format!("pingpong -- {PVM_PIPE_NO_SPIN_ROUNDS} --no-spin"),
                linux_how: format!("two pipes, N = {LINUX_PIPE_ROUNDS} (the same runs)"),
                pvm: Side::latency(&m.pvm_pipe_no_spin, false),
                linux: Side::latency(&m.linux_pipe, false),
            },
            Row {
                name: "pipe throughput, 64 KiB writes (pVM: adaptive spin)",
                pvm_how: format!("ipcbench -- stream {PVM_STREAM_MIB} (1 MiB ring)"),
                linux_how: format!("{LINUX_STREAM_MIB} MiB, 64 KiB reads, default 64 KiB pipe"),
                pvm: Side::throughput(&m.pvm_stream),
                linux: Side::throughput(&m.linux_stream),
            },
            Row {
                name: "pipe throughput, 64 KiB writes (pVM: spinning off)",
                pvm_how: format!("ipcbench -- stream {PVM_STREAM_NO_SPIN_MIB} --no-spin (1 MiB ring)"),
                linux_how: format!("{LINUX_STREAM_MIB} MiB (the same runs)"),
                pvm: Side::throughput(&m.pvm_stream_no_spin),
                linux: Side::throughput(&m.linux_stream),
            },
            Row {
                name: "message queue round trip, 1 B (pVM: adaptive spin)",
                pvm_how: format!("ipcbench -- mq {PVM_MQ_ROUNDS}"),
                linux_how: format!(
                    "two POSIX mqueues (msgsize {MQ_MSGSIZE}, maxmsg {MQ_MAXMSG}), N = {LINUX_MQ_ROUNDS}"
                ),
                pvm: Side::latency(&m.pvm_mq, false),
                linux: Side::latency(&m.linux_mq, false),
            },
            Row {
                name: "message queue round trip, 1 B (pVM: spinning off)",
                pvm_how: format!("ipcbench -- mq {PVM_MQ_NO_SPIN_ROUNDS} --no-spin"),
                linux_how: "the same runs".into(),
                pvm: Side::latency(&m.pvm_mq_no_spin, false),
                linux: Side::latency(&m.linux_mq, false),
            },
            Row {
                name: "signal round trip (kill, handler, kill back)",
                pvm_how: format!("ipcbench -- signal {PVM_SIGNAL_ROUNDS}"),
                linux_how: format!("SIGUSR1, handler + sigsuspend, N = {LINUX_SIGNAL_ROUNDS}"),
                pvm: Side::latency(&m.pvm_signal, false),
                linux: Side::latency(&m.linux_signal, false),
            },
            Row {
                name: "signal delivery, one way (round trip / 2)",
                pvm_how: "the signal round trips / 2".into(),
                linux_how: "the signal round trips / 2".into(),
                pvm: Side::latency(&m.pvm_signal, true),
                linux: Side::latency(&m.linux_signal, true),
            },
        ];
        // Pinned: the same round trips with both sides on one CPU, and across two.
        for (i, place) in self.places.into_iter().enumerate() {
            let Some((parent, child)) = place.and_then(Place::cpus) else {
                continue;
            };
            let opts = place.map(|p| p.run_opts().join(" ")).unwrap_or_default();
            let linux_how =
                format!("two pipes, N = {LINUX_PIPE_ROUNDS}, parent on CPU {parent}, child on CPU {child}");
            rows.push(Row {
                name: PINNED_ROWS[i][0],
                pvm_how: format!("pingpong -- {PVM_PIPE_ROUNDS}, {opts}"),
                linux_how: linux_how.clone(),
                pvm: Side::latency(&m.pvm_pipe_pinned[i], false),
                linux: Side::latency(&m.linux_pipe_pinned[i], false),
            });
            rows.push(Row {
                name: PINNED_ROWS[i][1],
                pvm_how: format!("pingpong -- {PVM_PIPE_NO_SPIN_ROUNDS} --no-spin, {opts}"),
                linux_how: format!("{linux_how} (the same runs)"),
                pvm: Side::latency(&m.pvm_pipe_no_spin_pinned[i], false),
                linux: Side::latency(&m.linux_pipe_pinned[i], false),
            });
        }
        rows
    }

    /// The targets: on the rows where the host scheduler places both sides, and the pipe's
    /// again on each pinned placement (whose verdict does not depend on where the scheduler
    /// happened to put the two sides).
    fn targets(rows: &[Row]) -> Vec<Target> {
        let mut targets = vec![
            Target {
                name: format!("pipe round trip (adaptive spin) median <= {PIPE_SPIN_MAX_RATIO}x Linux"),
                row: ROW_PIPE,
                bound: PIPE_SPIN_MAX_RATIO,
                at_most: true,
            },
            Target {
                name: format!("pipe round trip (spinning off) median <= {PIPE_NO_SPIN_MAX_RATIO}x Linux"),
                row: ROW_PIPE_NO_SPIN,
                bound: PIPE_NO_SPIN_MAX_RATIO,
                at_most: true,
            },
            Target {
                name: format!("pipe throughput (adaptive spin) >= {STREAM_MIN_RATIO}x Linux"),
                row: ROW_STREAM,
                bound: STREAM_MIN_RATIO,
                at_most: false,
            },
            Target {
                name: format!("message queue round trip (adaptive spin) median <= {SIGNAL_MAX_RATIO}x Linux"),
                row: ROW_MQ,
                bound: SIGNAL_MAX_RATIO,
                at_most: true,
            },
            Target {
                name: format!("signal delivery (one way) median <= {SIGNAL_MAX_RATIO}x Linux"),
                row: ROW_SIGNAL_ONE_WAY,
                bound: SIGNAL_MAX_RATIO,
                at_most: true,
            },
        ];
        for (place, [spin, no_spin]) in ["same core", "two cores"].into_iter().zip(PINNED_ROWS) {
            let index = |name: &str| rows.iter().position(|r| r.name == name);
            // On one core nothing spins (the runtime knows), so only the sleeping bound applies.
            if place == "two cores" {
                if let Some(row) = index(spin) {
                    targets.push(Target {
                        name: format!(
                            "pipe round trip, {place} (adaptive spin) median <= {PIPE_SPIN_MAX_RATIO}x Linux"
                        ),
                        row,
                        bound: PIPE_SPIN_MAX_RATIO,
                        at_most: true,
                    });
                }
            }
            if let Some(row) = index(no_spin) {
                targets.push(Target {
                    name: format!(
                        "pipe round trip, {place} (spinning off) median <= {PIPE_NO_SPIN_MAX_RATIO}x Linux"
                    ),
                    row,
                    bound: PIPE_NO_SPIN_MAX_RATIO,
                    at_most: true,
                });
            }
        }
        targets
    }

    /// The chart's rows and the CSV's figures: each run's median and p99 (the guests time
    /// thousands of round trips and print their summary), or its GB/s.
    fn figures(&self) -> Figures {
        let label = |name: &str| {
            let (what, how) = name.split_once(" (").unwrap_or((name, ""));
            let what = what.replace(", 1 B", "").replace(", 64 KiB writes", "");
            match how {
                h if h.contains("spinning off") => format!("{what}, no spin"),
                h if h.contains("adaptive") => format!("{what}, spin"),
                _ => what,
            }
        };
        let bar = |s: &Side| match s {
            Side::Measured(Summary::Latency(l), _) => Some(Bar {
                median: l.median_ns / 1e3,
                p99: Some(l.p99_ns / 1e3),
                dots: l.samples_ns.iter().flatten().map(|n| n / 1e3).collect(),
            }),
            Side::Measured(Summary::Throughput(t), _) => Some(Bar::of_figures(&t.runs_gbps)),
            Side::Failed(_) => None,
        };
        let mut groups = Vec::new();
        let mut samples = Vec::new();
        for r in self.rows() {
            let kind = match r.pvm {
                Side::Measured(Summary::Throughput(_), _) => Kind::Rate("GB/s"),
                _ => Kind::Latency,
            };
            groups.push(Group {
                label: label(r.name),
                kind,
                pvm: bar(&r.pvm),
                baseline: bar(&r.linux),
            });
            for (side, s) in [("pvm", &r.pvm), ("linux", &r.linux)] {
                let runs: Vec<(&'static str, Vec<f64>)> = match s {
                    Side::Measured(Summary::Latency(l), _) => vec![
                        ("run_median_us", l.medians_ns.iter().map(|n| n / 1e3).collect()),
                        ("run_p99_us", l.p99s_ns.iter().map(|n| n / 1e3).collect()),
                    ],
                    Side::Measured(Summary::Throughput(t), _) => vec![("gb_per_s", t.runs_gbps.clone())],
                    Side::Failed(_) => continue,
                };
                for (metric, values) in runs {
                    samples.extend(Samples::per_round(r.name, side, metric, &values));
                }
                if let Side::Measured(Summary::Latency(l), _) = s {
                    for (i, run) in l.samples_ns.iter().enumerate() {
                        samples.push(Samples {
                            row: r.name.into(),
                            side,
                            round: i as u32 + 1,
                            metric: "us",
                            values: run.iter().map(|n| n / 1e3).collect(),
                        });
                    }
                }
            }
        }
        Figures {
            bench: "ipc",
            title: format!(
                "pvmctl bench ipc, {}, {}",
                self.host.date,
                crate::rounds_text(self.rounds)
            ),
            sides: ("pVM", "Linux"),
            groups,
            samples,
        }
    }

    /// (description, the ratio if measured, met, whether a run of either side failed).
    fn target_results(&self, rows: &[Row]) -> Vec<(String, Option<f64>, bool, bool)> {
        Self::targets(rows)
            .into_iter()
            .map(|t| {
                let row = rows.get(t.row);
                let ratio = row.and_then(|r| ratios(&r.pvm, &r.linux)).map(|r| r.0);
                let met = ratio.is_some_and(|r| if t.at_most { r <= t.bound } else { r >= t.bound });
                let partial = row.is_some_and(|r| r.pvm.error().is_some() || r.linux.error().is_some());
                (t.name, ratio, met, partial)
            })
            .collect()
    }

    fn table(&self) -> String {
        let h = &self.host;
        let mut out = format!(
            "pvmctl bench ipc, {} (unix time {}), host {}: Linux {}, {}\n\
             R = {} rounds; each round runs every measurement once, pVM and Linux interleaved.\n\
             Latency: median = median of the R runs' medians, p99 = worst of the R runs' p99s \
             (each run: N round trips).\n\
             Throughput: median of the R runs' GB/s (decimal), from the reader's start to end of file.\n\
             pVM: `pvmctl run <guest> -- ARGS`, timed by the guest (TSC calibrated to the host \
             clock); Linux: this process and a forked child, timed with CLOCK_MONOTONIC.\n\n",
            h.date, h.unix_time, h.hostname, h.kernel, h.cpu, self.rounds
        );
        let rows = self.rows();
        let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(0);
        let _ = writeln!(
            out,
            "{:width$}  {:>11}  {:>9}  {:>12}  {:>9}  {:>15}  {:>9}",
            "", "pVM median", "pVM p99", "Linux median", "Linux p99", "pVM/Linux median", "p99"
        );
        for row in &rows {
            let (pm, pp) = row.pvm.cells();
            let (lm, lp) = row.linux.cells();
            let (rm, rp) = match ratios(&row.pvm, &row.linux) {
                Some((m, p)) => (
                    format!("{}x", sig3(m)),
                    p.map_or_else(|| "-".into(), |p| format!("{}x", sig3(p))),
                ),
                None => ("-".into(), "-".into()),
            };
            let _ = writeln!(
                out,
                "{:width$}  {pm:>11}  {pp:>9}  {lm:>12}  {lp:>9}  {rm:>16}  {rp:>9}",
                row.name
            );
        }
        out += "\nhow each row was measured (pVM | Linux):\n";
        for row in &rows {
            let _ = writeln!(out, "  {:width$}  {} | {}", row.name, row.pvm_how, row.linux_how);
        }
        out += "\nper run, in order (latency: the run's median; throughput: GB/s):\n";
        for row in &rows {
            let _ = writeln!(out, "  {:width$}  pVM: {}", row.name, row.pvm.per_run());
            let _ = writeln!(out, "  {:width$}  Linux: {}", "", row.linux.per_run());
        }
        // A series feeds several rows: each error once, with the rows it stopped.
        let mut failed: Vec<(&str, &str, Vec<&str>)> = Vec::new();
        for row in &rows {
            for (side, value) in [("pVM", &row.pvm), ("Linux", &row.linux)] {
                let Some(error) = value.error() else { continue };
                match failed.iter_mut().find(|(s, e, _)| *s == side && *e == error) {
                    Some((.., names)) => names.push(row.name),
                    None => failed.push((side, error, vec![row.name])),
                }
            }
        }
        if !failed.is_empty() {
            out += "\nfailures (a series stops at its first failed run; * marks values over the runs \
                    before it):\n";
            for (side, error, names) in failed {
                let _ = writeln!(out, "  {side} {}:\n    {}", names.join("; "), error.trim_end());
            }
        }
        out += "\ntargets (on medians):\n";
        let targets = self.target_results(&rows);
        let width = targets.iter().map(|(name, ..)| name.len()).max().unwrap_or(0);
        for (name, ratio, met, partial) in &targets {
            let mark = if *partial { "*" } else { "" };
            let value = ratio.map_or_else(|| "not measured".into(), |r| format!("{}x{mark}", sig3(r)));
            let _ = writeln!(out, "  {name:width$}  {value:>12}  {}", verdict(*met));
        }
        out
    }

    fn json(&self) -> serde_json::Value {
        let h = &self.host;
        let rows = self.rows();
        let json_rows: Vec<_> = rows
            .iter()
            .map(|r| {
                let ratio = ratios(&r.pvm, &r.linux)
                    .map(|(m, p)| serde_json::json!({ "median": round3(m), "p99": p.map(round3) }));
                serde_json::json!({
                    "name": r.name,
                    "pvm_how": r.pvm_how,
                    "linux_how": r.linux_how,
                    "pvm": r.pvm.json(),
                    "linux": r.linux.json(),
                    "pvm_over_linux": ratio,
                })
            })
            .collect();
        let m = &self.m;
        let lat =
            |s: &Series<Latency>| -> Vec<serde_json::Value> { s.runs.iter().map(Latency::json).collect() };
        let thr = |s: &Series<Throughput>| -> Vec<serde_json::Value> {
            s.runs.iter().map(Throughput::json).collect()
        };
        let targets: Vec<_> = self
            .target_results(&rows)
            .into_iter()
            .map(|(name, ratio, met, partial)| {
                serde_json::json!({
                    "target": name,
                    "ratio": ratio.map(round3),
                    "met": met,
                    "a_run_failed": partial,
                })
            })
            .collect();
        serde_json::json!({
            "benchmark": "ipc",
            "date": h.date,
            "unix_time": h.unix_time,
            "hostname": h.hostname,
            "kernel": h.kernel,
            "cpu": h.cpu,
            "rounds": self.rounds,
            "method": "per row: median of the rounds' medians, worst of the rounds' p99s; \
                       throughput: median of the rounds' GB/s (decimal)",
            "rows": json_rows,
            "runs": {
                "pvm_pipe_round_trip": lat(&m.pvm_pipe),
                "pvm_pipe_round_trip_no_spin": lat(&m.pvm_pipe_no_spin),
                "pvm_pipe_round_trip_same_core": lat(&m.pvm_pipe_pinned[0]),
                "pvm_pipe_round_trip_two_cores": lat(&m.pvm_pipe_pinned[1]),
                "pvm_pipe_round_trip_no_spin_same_core": lat(&m.pvm_pipe_no_spin_pinned[0]),
                "pvm_pipe_round_trip_no_spin_two_cores": lat(&m.pvm_pipe_no_spin_pinned[1]),
                "linux_pipe_round_trip_same_core": lat(&m.linux_pipe_pinned[0]),
                "linux_pipe_round_trip_two_cores": lat(&m.linux_pipe_pinned[1]),
                "pvm_pipe_throughput": thr(&m.pvm_stream),
                "pvm_pipe_throughput_no_spin": thr(&m.pvm_stream_no_spin),
                "pvm_signal_round_trip": lat(&m.pvm_signal),
                "linux_pipe_round_trip": lat(&m.linux_pipe),
                "linux_pipe_throughput": thr(&m.linux_stream),
                "linux_mq_round_trip": lat(&m.linux_mq),
                "linux_signal_round_trip": lat(&m.linux_signal),
            },
            "errors": m.errors().map(ToString::to_string).collect::<Vec<_>>(),
            "targets": targets,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pingpong_line_parses() {
        let output = "pingpong: 10000 round trips of 1 byte(s): median 310 ns, p99 518 ns, mean 1432 ns; \
                      peer exited with code 0\n";
        assert_eq!(
            parse_pingpong(output),
            Some(PingpongLine {
                rounds: 10_000,
                size: 1,
                median_ns: 310,
                p99_ns: 518,
                mean_ns: 1432,
                peer: "exited with code 0".into(),
            })
        );
        let failed_peer = "noise\npingpong: 5 round trips of 1 byte(s): median 1 ns, p99 2 ns, mean 3 ns; \
                           peer Ok(Killed(Term))\n";
        assert_eq!(
            parse_pingpong(failed_peer).map(|l| l.peer),
            Some("Ok(Killed(Term))".into())
        );
        assert_eq!(
            parse_pingpong("pingpong: 5 round trips of 1 byte(s): median 1 ns, p99 2 ns, mean 3 ns\n"),
            None
        );
        assert_eq!(
            parse_pingpong(
                "pingpong: 5 round trips of 1 byte(s): median x ns, p99 2 ns, mean 3 ns; peer Ok\n"
            ),
            None
        );
        assert_eq!(parse_pingpong("pingpong: round 3 came back wrong\n"), None);
    }

    #[test]
    fn stream_line_parses() {
        let output = "pvm 3 (family 3) exited with status 0\nipcbench stream: 67108864 bytes in 5060258 ns\n";
        assert_eq!(
            parse_stream(output),
            Some(StreamLine {
                bytes: 67_108_864,
                ns: 5_060_258
            })
        );
        assert_eq!(parse_stream("ipcbench stream: 5 bytes in ns\n"), None);
        assert_eq!(parse_stream("ipcbench stream: 5 bytes in 7 us\n"), None);
        assert_eq!(parse_stream("ipcbench: BrokenPipe\n"), None);
        let t = Throughput {
            bytes: 2_000_000_000,
            ns: 1_000_000_000,
        };
        assert_eq!(t.gbps(), 2.0);
    }

    #[test]
    fn signal_line_parses() {
        let output = "ipcbench signal: 500 round trips: median 239668 ns, p99 1314201 ns\n";
        assert_eq!(
            parse_signal(output),
            Some(SignalLine {
                rounds: 500,
                median_ns: 239_668,
                p99_ns: 1_314_201
            })
        );
        assert_eq!(
            parse_signal("ipcbench signal: 500 round trips: median 1 ns\n"),
            None
        );
        assert_eq!(
            parse_signal("usage: ipcbench stream MIB [--no-spin] | signal N\n"),
            None
        );
    }

    #[test]
    fn summaries() {
        let runs = [
            Latency {
                median_ns: 300.0,
                p99_ns: 900.0,
                ..Default::default()
            },
            Latency {
                median_ns: 100.0,
                p99_ns: 2000.0,
                ..Default::default()
            },
            Latency {
                median_ns: 200.0,
                p99_ns: 400.0,
                ..Default::default()
            },
        ];
        let s = LatencySummary::new(&runs).expect("runs");
        assert_eq!(
            s,
            LatencySummary {
                median_ns: 200.0,
                p99_ns: 2000.0,
                medians_ns: vec![300.0, 100.0, 200.0],
                p99s_ns: vec![900.0, 2000.0, 400.0],
                samples_ns: vec![Vec::new(); 3],
            }
        );
        assert_eq!(s.clone().halved().median_ns, 100.0);
        assert_eq!(s.halved().medians_ns, [150.0, 50.0, 100.0]);
        assert_eq!(LatencySummary::new(&[]), None);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        let t = ThroughputSummary::new(&[Throughput { bytes: 10, ns: 10 }, Throughput { bytes: 30, ns: 10 }])
            .expect("runs");
        assert_eq!((t.gbps, t.runs_gbps), (2.0, vec![1.0, 3.0]));
        assert_eq!(format_ns(310.0), "310 ns");
        assert_eq!(format_ns(45_300.0), "45.3 us");
    }

    #[test]
    fn ratios_and_targets() {
        let lat = |median_ns, p99_ns| {
            Side::Measured(
                Summary::Latency(LatencySummary {
                    median_ns,
                    p99_ns,
                    medians_ns: vec![median_ns],
                    p99s_ns: vec![p99_ns],
                    samples_ns: vec![vec![median_ns, p99_ns]],
                }),
                None,
            )
        };
        assert_eq!(
            ratios(&lat(100.0, 400.0), &lat(50.0, 100.0)),
            Some((2.0, Some(4.0)))
        );
        let report = IpcReport {
            host: HostInfo::get(),
            rounds: 0,
            m: Measurements::default(),
            places: [None; 2],
        };
        let rows = report.rows();
        assert!(rows[ROW_PIPE].name.starts_with("pipe round trip"));
        assert!(rows[ROW_PIPE_NO_SPIN].name.contains("spinning off"));
        assert!(rows[ROW_STREAM].name.starts_with("pipe throughput"));
        assert!(rows[ROW_SIGNAL_ONE_WAY].name.contains("one way"));
        // Nothing measured: every target is unmet, and the table still renders.
        assert!(report
            .target_results(&rows)
            .iter()
            .all(|(_, r, met, _)| r.is_none() && !met));
    }

    #[test]
    fn a_failed_run_is_reported_with_the_runs_before_it() {
        let mut m = Measurements::default();
        for (pvm, linux) in [(300.0, 6000.0), (320.0, 50_000.0)] {
            m.pvm_pipe.record("test", || {
                Ok(Latency {
                    median_ns: pvm,
                    p99_ns: pvm * 2.0,
                    ..Default::default()
                })
            });
            m.linux_pipe.record("test", || {
                Ok(Latency {
                    median_ns: linux,
                    p99_ns: linux * 2.0,
                    ..Default::default()
                })
            });
        }
        m.pvm_pipe
            .record("test", || Err(IpcBenchError::ReaderLost("pingpong".into())));
        m.pvm_pipe
            .record("test", || panic!("a series stops at its first failure"));
        m.pvm_signal
            .record("test", || Err(IpcBenchError::ReaderLost("ipcbench".into())));
        assert_eq!(m.pvm_pipe.runs.len(), 2);
        let report = IpcReport {
            host: HostInfo::get(),
            rounds: 3,
            m,
            places: [None; 2],
        };
        let rows = report.rows();
        assert_eq!(rows[ROW_PIPE].pvm.cells(), ("310 ns*".into(), "640 ns*".into()));
        assert_eq!(rows[ROW_PIPE].linux.cells(), ("28.0 us".into(), "100 us".into()));
        assert!(matches!(rows[ROW_SIGNAL_ONE_WAY].pvm, Side::Failed(_)));
        let targets = report.target_results(&rows);
        let (_, ratio, met, partial) = &targets[0];
        assert_eq!((*ratio, *met, *partial), (Some(310.0 / 28_000.0), true, true));
        assert_eq!(targets[3].1, None);
        let table = report.table();
        assert!(table.contains("failures"), "{table}");
        let json = report.json();
        assert_eq!(json["rows"][ROW_PIPE]["pvm"]["runs"], 2);
        assert_eq!(json["errors"].as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn linux_baselines_run() {
        let pipe = linux_pipe(200, Place::Free).expect("pipe round trips");
        assert!(pipe.median_ns > 0.0 && pipe.p99_ns >= pipe.median_ns);
        // Pinned, and this thread's CPUs are given back afterwards.
        let before = hypervisor_ext::placement::allowed_cpus().expect("affinity");
        for place in Place::pinned().into_iter().flatten() {
            let pipe = linux_pipe(200, place).expect("pinned pipe round trips");
            assert!(pipe.median_ns > 0.0);
            assert_eq!(
                hypervisor_ext::placement::allowed_cpus().expect("affinity"),
                before
            );
        }
        let stream = linux_stream(4).expect("pipe throughput");
        assert_eq!(stream.bytes, 4 << 20);
        let mq = linux_mq(200).expect("message queue round trips");
        assert!(mq.median_ns > 0.0);
        let signal = linux_signal(200).expect("signal round trips");
        assert!(signal.median_ns > 0.0 && signal.p99_ns >= signal.median_ns);
    }
}
