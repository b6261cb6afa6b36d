//! `pvmctl bench`: pvm measured against Linux baselines taken in the same run.
//!
//! `pvmctl bench boot` times, interleaved per iteration so that machine noise hits all rows alike:
//! (a) `pvmctl run <noop>` as a child process (fork + exec + wait), (b) the same boot in-process
//! (`Monitor::new` + `run`), and (c) fork + exec + wait of a minimal static Linux executable.
use std::ffi::{CString, OsStr};
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand};
use hypervisor_ext::loader::{Image, LoadError};
use hypervisor_ext::{Limits, Monitor, MonitorConfig, MonitorError, Outcome, DEFAULT_MEM_SIZE};

/// Benchmarks.
#[derive(Subcommand)]
pub enum BenchCommand {
    /// Boot latency: `pvmctl run` of a guest that exits at once, against fork + exec of a static
    /// Linux executable, measured in the same run.
    Boot(BootArgs),
    /// Fork latency: a pVM's fork (parent pause, child ready, sustained rate) with 1 and 64 MiB
    /// touched, against Linux fork() of the same footprint, measured in the same run.
    Fork(crate::bench_fork::ForkArgs),
    /// Density: N idle forked pVMs (creation time, host memory, private memory per monitor).
    Density(crate::bench_fork::DensityArgs),
    /// IPC: pVM pipe round trips (spinning and not), pipe throughput and signal round trips,
    /// against Linux pipes, POSIX message queues and signals, measured in the same run.
    Ipc(crate::bench_ipc::IpcArgs),
    /// Security: what the seccomp filter costs (confined against --unconfined) and how fast
    /// Ctrl-C, kill and pause act on a guest spinning at CPL3, against a Linux process.
    Security(crate::bench_ipc::RoundsArgs),
    /// Libraries: load + link into a live pVM (cold and warm) against Linux's dlopen, the pause
    /// of an online update, and a call through a handle against a direct call.
    Dynlink(crate::bench_ipc::RoundsArgs),
    /// Network: redis-benchmark against the kv example and against redis-server, a bulk
    /// stream and a 1-byte round trip against Linux loopback, measured in the same run.
    Net(crate::bench_ipc::RoundsArgs),
}

/// Arguments of `pvmctl bench boot`.
#[derive(Args)]
pub struct BootArgs {
    /// Measured iterations of each row (at least 50, for a meaningful p99).
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = parse_iterations)]
    iterations: usize,
    /// Guest image to boot; it must exit 0 (default: the example guest `noop`).
    #[arg(long, value_name = "PATH")]
    image: Option<PathBuf>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// Fewest iterations accepted.
const MIN_ITERATIONS: usize = 50;
/// Unrecorded iterations run first (page cache, KVM module state, CPU frequency).
const WARMUP_ITERATIONS: usize = 5;
/// The target: `pvmctl run` of a no-op guest within this factor of a Linux fork + exec.
const TARGET_RATIO: f64 = 2.0;
/// Exit status of a child whose `execv` failed.
const EXEC_FAILED: i32 = 127;

/// Errors of benchmarks.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
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
    ForkBench(#[from] crate::bench_fork::ForkBenchError),
    /// `bench ipc` failed.
    #[error(transparent)]
    IpcBench(#[from] crate::bench_ipc::IpcBenchError),
    /// `bench security` failed.
    #[error(transparent)]
    SecurityBench(#[from] crate::bench_security::SecurityBenchError),
    /// `bench dynlink` failed.
    #[error(transparent)]
    DynlinkBench(#[from] crate::bench_dynlink::DynlinkBenchError),
    /// `bench net` failed.
    #[error(transparent)]
    NetBench(#[from] crate::bench_net::NetBenchError),
}

/// How a child process ended (a decoded `waitpid` status).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildStatus {
    /// It exited with this status.
    Exited(i32),
    /// A signal killed it.
    Signaled(i32),
    /// Any other wait status.
    Other(i32),
}

impl ChildStatus {
    pub(crate) fn from_wait_status(status: libc::c_int) -> ChildStatus {
        if libc::WIFEXITED(status) {
            ChildStatus::Exited(libc::WEXITSTATUS(status))
        } else if libc::WIFSIGNALED(status) {
            ChildStatus::Signaled(libc::WTERMSIG(status))
        } else {
            ChildStatus::Other(status)
        }
    }
}

impl fmt::Display for ChildStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChildStatus::Exited(EXEC_FAILED) => write!(f, "exited with status {EXEC_FAILED} (exec failed?)"),
            ChildStatus::Exited(code) => write!(f, "exited with status {code}"),
            ChildStatus::Signaled(sig) => write!(f, "was killed by signal {sig}"),
            ChildStatus::Other(status) => write!(f, "ended with wait status {status:#x}"),
        }
    }
}

/// Runs a benchmark.
pub fn bench(cmd: BenchCommand) -> Result<ExitCode, BenchError> {
    match cmd {
        BenchCommand::Boot(args) => boot(args),
        BenchCommand::Fork(args) => crate::bench_fork::fork(args),
        BenchCommand::Density(args) => crate::bench_fork::density(args),
        BenchCommand::Ipc(args) => crate::bench_ipc::ipc(args),
        BenchCommand::Security(args) => crate::bench_security::security(args),
        BenchCommand::Dynlink(args) => crate::bench_dynlink::dynlink(args),
        BenchCommand::Net(args) => crate::bench_net::net(args),
    }
}

/// The rows of `bench boot`, in table order.
const ROW_RUN: usize = 0;
const ROW_BOOT: usize = 1;
const ROW_MONITOR: usize = 2;
const ROW_EXEC: usize = 3;
const ROW_NAMES: [&str; 4] = [
    "(a) pvmctl run noop (fork+exec+wait)",
    "(b) monitor: KVM_CREATE_VM to first hypercall",
    "    monitor: build + run + teardown",
    "(c) linux: static exit(0) (fork+exec+wait)",
];

/// A count of iterations, at least `min` (a command-line error otherwise).
pub(crate) fn parse_at_least(text: &str, min: usize) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if n >= min => Ok(n),
        Ok(n) => Err(format!(
            "{n} is too few: at least {min} are needed for a meaningful p99"
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// `--iterations` of `bench boot`.
fn parse_iterations(text: &str) -> Result<usize, String> {
    parse_at_least(text, MIN_ITERATIONS)
}

fn boot(args: BootArgs) -> Result<ExitCode, BenchError> {
    // A missing default guest is said below, like a missing --image.
    let image_path = args
        .image
        .unwrap_or_else(|| guest_path("noop").unwrap_or_else(|GuestMissing(p)| p));
    if !image_path.exists() {
        return Err(BenchError::ImageMissing(image_path));
    }
    let image = Image::open(&image_path)?;
    // A private registry, so that the benchmark's pVMs do not show in the user's `pvmctl ps`.
    let run_dir = std::env::temp_dir().join(format!("pvm-bench-{}", std::process::id()));
    let config = MonitorConfig {
        mem_size: DEFAULT_MEM_SIZE,
        args: vec!["noop".into()],
        run_dir: run_dir.clone(),
        limits: Limits::default(),
        // In this process: its descriptors and its later forks must stay usable, so row (b) is
        // measured without the seccomp filter (row (a), `pvmctl run`, has it).
        confine: false,
        bench_fd: None,
        libs: Default::default(),
        net: Default::default(),
        console_log: false,
    };
    let exe = std::env::current_exe().map_err(BenchError::CurrentExe)?;
    let devnull = File::options()
        .write(true)
        .open("/dev/null")
        .map_err(|source| BenchError::Io {
            action: "open",
            path: "/dev/null".into(),
            source,
        })?;
    let run_child = Child::new(
        &exe,
        &[
            exe.as_os_str(),
            OsStr::new("run"),
            OsStr::new("--run-dir"),
            run_dir.as_os_str(),
            image_path.as_os_str(),
        ],
        &devnull,
    )?;
    let exit0 = TempExecutable::create(&exit0_elf())?;
    let exec_child = Child::new(exit0.path(), &[exit0.path().as_os_str()], &devnull)?;

    eprintln!(
        "pvmctl bench boot: {WARMUP_ITERATIONS} warm-up + {} measured iterations of (a), (b), (c)...",
        args.iterations
    );
    // Nothing buffered may be inherited by the children (they exec at once, but be safe).
    let _ = io::stdout().flush();
    let mut samples: [Vec<Duration>; 4] = std::array::from_fn(|_| Vec::with_capacity(args.iterations));
    for i in 0..WARMUP_ITERATIONS + args.iterations {
        let run = run_child.run()?;
        let (boot, monitor) = boot_in_process(&image, &config)?;
        let exec = exec_child.run()?;
        if i >= WARMUP_ITERATIONS {
            samples[ROW_RUN].push(run);
            samples[ROW_BOOT].push(boot);
            samples[ROW_MONITOR].push(monitor);
            samples[ROW_EXEC].push(exec);
        }
    }
    drop(exit0);
    let _ = fs::remove_dir_all(&run_dir);

    let rows: Vec<(&str, Stats)> = ROW_NAMES
        .iter()
        .zip(&samples)
        .map(|(name, s)| (*name, Stats::new(s)))
        .collect();
    let report = Report {
        host: HostInfo::get(),
        image: image_path,
        iterations: args.iterations,
        median_ratio: rows[ROW_RUN].1.median_us / rows[ROW_EXEC].1.median_us,
        p99_ratio: rows[ROW_RUN].1.p99_us / rows[ROW_EXEC].1.p99_us,
        rows,
    };
    if args.json {
        println!("{}", report.json());
    } else {
        print!("{}", report.table());
    }
    Ok(ExitCode::SUCCESS)
}

/// Boots `image` in this process: (KVM_CREATE_VM to first hypercall, build + run + teardown).
fn boot_in_process(image: &Image, config: &MonitorConfig) -> Result<(Duration, Duration), BenchError> {
    let start = Instant::now();
    let mut monitor = Monitor::new(image, config)?;
    let outcome = monitor.run()?;
    let boot = monitor.boot_times().to_first_hypercall();
    monitor.unregister();
    drop(monitor);
    let total = start.elapsed();
    if outcome != Outcome::Exited(0) {
        return Err(BenchError::UnexpectedOutcome {
            image: image.path.clone(),
            outcome,
        });
    }
    let boot = boot.ok_or_else(|| BenchError::NoBootTime(image.path.clone()))?;
    Ok((boot, total))
}

/// A program run with fork + execv + waitpid, its output sent to /dev/null. Everything the child
/// needs is prepared here, so that it makes only async-signal-safe calls between fork and exec.
pub(crate) struct Child {
    path: CString,
    /// Keeps the strings `argv` points into alive.
    _args: Vec<CString>,
    /// NULL-terminated.
    argv: Vec<*const libc::c_char>,
    devnull: RawFd,
    program: PathBuf,
    command: String,
}

impl Child {
    /// `devnull` must stay open as long as the `Child` is used.
    pub(crate) fn new(program: &Path, args: &[&OsStr], devnull: &File) -> Result<Child, BenchError> {
        let cstring = |s: &OsStr| CString::new(s.as_bytes()).map_err(|_| BenchError::NulInPath(s.into()));
        let path = cstring(program.as_os_str())?;
        let args = args.iter().map(|a| cstring(a)).collect::<Result<Vec<_>, _>>()?;
        let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        let command = args
            .iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ");
        Ok(Child {
            path,
            _args: args,
            argv,
            devnull: devnull.as_raw_fd(),
            program: program.into(),
            command,
        })
    }

    /// Runs the program to its end; the time from just before fork to waitpid's return.
    pub(crate) fn run(&self) -> Result<Duration, BenchError> {
        let start = Instant::now();
        // SAFETY: the child only calls async-signal-safe functions (dup2, execv, _exit) on data
        // prepared before the fork, then either execs or exits without unwinding or flushing.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: in the forked child: `devnull` is an open descriptor (its CLOEXEC flag is
            // not copied by dup2), `path` and `argv` are valid NUL-terminated C strings and a
            // NULL-terminated array; `_exit` ends the child if execv returns.
            unsafe {
                libc::dup2(self.devnull, libc::STDOUT_FILENO);
                libc::dup2(self.devnull, libc::STDERR_FILENO);
                libc::execv(self.path.as_ptr(), self.argv.as_ptr());
                libc::_exit(EXEC_FAILED);
            }
        }
        if pid < 0 {
            return Err(self.process_error("fork"));
        }
        let mut status: libc::c_int = 0;
        loop {
            // SAFETY: waits for our own child; `status` is a valid out-pointer.
            let r = unsafe { libc::waitpid(pid, &mut status, 0) };
            if r == pid {
                break;
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(BenchError::Process {
                    call: "waitpid",
                    program: self.program.clone(),
                    source: err,
                });
            }
        }
        let elapsed = start.elapsed();
        match ChildStatus::from_wait_status(status) {
            ChildStatus::Exited(0) => Ok(elapsed),
            status => Err(BenchError::ChildFailed {
                command: self.command.clone(),
                status,
            }),
        }
    }

    fn process_error(&self, call: &'static str) -> BenchError {
        BenchError::Process {
            call,
            program: self.program.clone(),
            source: io::Error::last_os_error(),
        }
    }
}

/// Where a minimal static executable is loaded.
const EXIT0_BASE: u64 = 0x40_0000;
const ELF_HEADER_SIZE: usize = 64;
const PROGRAM_HEADER_SIZE: usize = 56;
/// `xor edi, edi; mov eax, 60 (exit); syscall`.
const EXIT0_CODE: [u8; 9] = [0x31, 0xff, 0xb8, 0x3c, 0x00, 0x00, 0x00, 0x0f, 0x05];

/// The smallest useful static x86-64 Linux executable: it calls exit(0). One R+X PT_LOAD segment
/// maps the whole file at [`EXIT0_BASE`]; the code follows the headers.
fn exit0_elf() -> Vec<u8> {
    let code_offset = ELF_HEADER_SIZE + PROGRAM_HEADER_SIZE;
    let size = (code_offset + EXIT0_CODE.len()) as u64;
    let mut elf = Vec::with_capacity(code_offset + EXIT0_CODE.len());
    // e_ident: magic, ELFCLASS64, ELFDATA2LSB, EV_CURRENT, ELFOSABI_SYSV, padding.
    elf.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    elf.extend_from_slice(&[0; 8]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // e_type: ET_EXEC
    elf.extend_from_slice(&62u16.to_le_bytes()); // e_machine: EM_X86_64
    elf.extend_from_slice(&1u32.to_le_bytes()); // e_version
    elf.extend_from_slice(&(EXIT0_BASE + code_offset as u64).to_le_bytes()); // e_entry
    elf.extend_from_slice(&(ELF_HEADER_SIZE as u64).to_le_bytes()); // e_phoff
    elf.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    elf.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    elf.extend_from_slice(&(ELF_HEADER_SIZE as u16).to_le_bytes()); // e_ehsize
    elf.extend_from_slice(&(PROGRAM_HEADER_SIZE as u16).to_le_bytes()); // e_phentsize
    elf.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    elf.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    elf.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    elf.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
    debug_assert_eq!(elf.len(), ELF_HEADER_SIZE);
    elf.extend_from_slice(&1u32.to_le_bytes()); // p_type: PT_LOAD
    elf.extend_from_slice(&5u32.to_le_bytes()); // p_flags: PF_R | PF_X
    elf.extend_from_slice(&0u64.to_le_bytes()); // p_offset
    elf.extend_from_slice(&EXIT0_BASE.to_le_bytes()); // p_vaddr
    elf.extend_from_slice(&EXIT0_BASE.to_le_bytes()); // p_paddr
    elf.extend_from_slice(&size.to_le_bytes()); // p_filesz
    elf.extend_from_slice(&size.to_le_bytes()); // p_memsz
    elf.extend_from_slice(&0x1000u64.to_le_bytes()); // p_align
    debug_assert_eq!(elf.len(), code_offset);
    elf.extend_from_slice(&EXIT0_CODE);
    elf
}

/// An executable file in the temporary directory, deleted on drop.
struct TempExecutable {
    path: PathBuf,
}

impl TempExecutable {
    fn create(bytes: &[u8]) -> Result<TempExecutable, BenchError> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "pvmctl-bench-exit0-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let file = TempExecutable {
            path: std::env::temp_dir().join(name),
        };
        let io_error = |action, source| BenchError::Io {
            action,
            path: file.path.clone(),
            source,
        };
        // The file is closed before it is executed (else execv fails with ETXTBSY).
        fs::write(&file.path, bytes).map_err(|e| io_error("write", e))?;
        fs::set_permissions(&file.path, fs::Permissions::from_mode(0o755))
            .map_err(|e| io_error("chmod", e))?;
        Ok(file)
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempExecutable {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Summary of one row, in microseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Stats {
    pub(crate) median_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) min_us: f64,
    pub(crate) mean_us: f64,
}

impl Stats {
    /// `samples` must not be empty.
    pub(crate) fn new(samples: &[Duration]) -> Stats {
        let mut us: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e6).collect();
        us.sort_by(f64::total_cmp);
        let n = us.len();
        if n == 0 {
            return Stats {
                median_us: f64::NAN,
                p99_us: f64::NAN,
                min_us: f64::NAN,
                mean_us: f64::NAN,
            };
        }
        let median_us = if n % 2 == 1 {
            us[n / 2]
        } else {
            (us[n / 2 - 1] + us[n / 2]) / 2.0
        };
        // Nearest rank: the smallest value with at least 99% of the samples at or below it.
        let rank = (n * 99).div_ceil(100).max(1);
        Stats {
            median_us,
            p99_us: us[rank - 1],
            min_us: us[0],
            mean_us: us.iter().sum::<f64>() / n as f64,
        }
    }
}

/// The median of `values` (the mean of the middle two for an even count); NaN if empty.
pub(crate) fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// `value` with 3 significant digits.
pub(crate) fn sig3(value: f64) -> String {
    if !value.is_finite() || value <= 0.0 {
        return format!("{value}");
    }
    let decimals = |v: f64| (2 - v.log10().floor() as i32).max(0) as usize;
    let d = decimals(value);
    let rounded: f64 = format!("{value:.d$}").parse().unwrap_or(value);
    // Rounding can add a digit (9.996 -> 10.00).
    let d = decimals(rounded);
    format!("{rounded:.d$}")
}

/// `value` rounded to 3 decimals (nanoseconds, for microsecond values).
pub(crate) fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

/// A duration given in microseconds, in us, ms or s with 3 significant digits.
pub(crate) fn format_us(us: f64) -> String {
    if us >= 999_500.0 {
        format!("{} s", sig3(us / 1e6))
    } else if us >= 999.5 {
        format!("{} ms", sig3(us / 1e3))
    } else {
        format!("{} us", sig3(us))
    }
}

/// The machine the benchmark ran on.
pub(crate) struct HostInfo {
    /// Seconds since the Unix epoch.
    pub(crate) unix_time: u64,
    /// "YYYY-MM-DD HH:MM:SS UTC".
    pub(crate) date: String,
    pub(crate) hostname: String,
    pub(crate) kernel: String,
    pub(crate) cpu: String,
}

impl HostInfo {
    pub(crate) fn get() -> HostInfo {
        let unix_time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let (hostname, kernel) = uname();
        let cpu = fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .filter_map(|l| l.split_once(':'))
                    .find(|(key, _)| key.trim() == "model name")
                    .map(|(_, value)| value.trim().to_string())
            })
            .unwrap_or_else(|| "unknown CPU".into());
        HostInfo {
            unix_time,
            date: utc_date(unix_time),
            hostname,
            kernel,
            cpu,
        }
    }
}

/// (node name, kernel release), or "unknown" for both if uname fails.
fn uname() -> (String, String) {
    // SAFETY: `utsname` is plain old data: all zeroes is a valid value.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `uts` is a valid, writable utsname.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return ("unknown".into(), "unknown".into());
    }
    let field = |chars: &[libc::c_char]| {
        let bytes: Vec<u8> = chars.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    (field(&uts.nodename), field(&uts.release))
}

/// `unix_time` as "YYYY-MM-DD HH:MM:SS UTC" (proleptic Gregorian calendar).
fn utc_date(unix_time: u64) -> String {
    let days = (unix_time / 86_400) as i64;
    let secs = unix_time % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// The results of `bench boot`.
struct Report<'a> {
    host: HostInfo,
    image: PathBuf,
    iterations: usize,
    rows: Vec<(&'a str, Stats)>,
    /// (a) / (c), of the medians.
    median_ratio: f64,
    /// (a) / (c), of the p99s.
    p99_ratio: f64,
}

/// How a benchmark reports a target.
pub(crate) fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "NOT met"
    }
}

/// An example guest a benchmark needs is missing.
#[derive(Debug, thiserror::Error)]
#[error("guest {0} does not exist: build the example guests with `cargo build` (pvmctl's build script builds them), or name their directory with $PVM_GUEST_DIR")]
pub(crate) struct GuestMissing(PathBuf);

/// Where a benchmark's guests are, found when it runs: `$PVM_GUEST_DIR` (and
/// `$PVM_GUEST_LIB_DIR` for libraries), else `guests/` (`guest-libs/`) next to the pvmctl
/// executable (an installed pvmctl), else where pvmctl's build put them.
fn guest_dir(var: &str, beside: &str, built: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os(var).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let installed = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join(beside)))
        .filter(|d| d.is_dir());
    installed.unwrap_or_else(|| PathBuf::from(built))
}

/// The example guest `name` a benchmark runs.
pub(crate) fn guest_path(name: &str) -> Result<PathBuf, GuestMissing> {
    let path = guest_dir("PVM_GUEST_DIR", "guests", env!("PVM_GUEST_DIR")).join(name);
    if path.exists() {
        Ok(path)
    } else {
        Err(GuestMissing(path))
    }
}

/// The example library `libNAME.so` a benchmark loads.
pub(crate) fn guest_lib_path(name: &str) -> Result<PathBuf, GuestMissing> {
    let path =
        guest_dir("PVM_GUEST_LIB_DIR", "guest-libs", env!("PVM_GUEST_LIB_DIR")).join(format!("lib{name}.so"));
    if path.exists() {
        Ok(path)
    } else {
        Err(GuestMissing(path))
    }
}

/// Appends the "targets" section of a benchmark report: one aligned line per
/// (target, measured value, met).
pub(crate) fn write_targets(out: &mut String, targets: &[(String, String, bool)], value_width: usize) {
    use std::fmt::Write as _;
    *out += "\ntargets:\n";
    let width = targets.iter().map(|(name, ..)| name.len()).max().unwrap_or(0);
    for (name, value, met) in targets {
        let _ = writeln!(out, "  {name:width$}  {value:>value_width$}  {}", verdict(*met));
    }
}

impl Report<'_> {
    fn verdict(ratio: f64) -> &'static str {
        verdict(ratio <= TARGET_RATIO)
    }

    fn table(&self) -> String {
        let h = &self.host;
        let mut out = format!(
            "pvmctl bench boot, {} (unix time {}), host {}: Linux {}, {}\n\
             N = {} measured iterations per row after {WARMUP_ITERATIONS} warm-up, interleaved a,b,c; \
             image {}\n\n",
            h.date,
            h.unix_time,
            h.hostname,
            h.kernel,
            h.cpu,
            self.iterations,
            self.image.display()
        );
        let width = self.rows.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
        out += &format!(
            "{:width$}  {:>9}  {:>9}  {:>9}  {:>9}\n",
            "", "median", "p99", "min", "mean"
        );
        for (name, s) in &self.rows {
            out += &format!(
                "{name:width$}  {:>9}  {:>9}  {:>9}  {:>9}\n",
                format_us(s.median_us),
                format_us(s.p99_us),
                format_us(s.min_us),
                format_us(s.mean_us)
            );
        }
        out += &format!(
            "\n(a)/(c): median {}x, p99 {}x\n\
             target (a) <= {TARGET_RATIO}x (c): {} on medians, {} on p99s\n",
            sig3(self.median_ratio),
            sig3(self.p99_ratio),
            Self::verdict(self.median_ratio),
            Self::verdict(self.p99_ratio)
        );
        out
    }

    fn json(&self) -> serde_json::Value {
        let h = &self.host;
        let rows: Vec<_> = self
            .rows
            .iter()
            .map(|(name, s)| {
                serde_json::json!({
                    "name": name.trim(),
                    "median_us": round3(s.median_us),
                    "p99_us": round3(s.p99_us),
                    "min_us": round3(s.min_us),
                    "mean_us": round3(s.mean_us),
                })
            })
            .collect();
        serde_json::json!({
            "benchmark": "boot",
            "date": h.date,
            "unix_time": h.unix_time,
            "hostname": h.hostname,
            "kernel": h.kernel,
            "cpu": h.cpu,
            "image": self.image.display().to_string(),
            "iterations": self.iterations,
            "warmup_iterations": WARMUP_ITERATIONS,
            "rows": rows,
            "ratios": {
                "run_over_exec_median": round3(self.median_ratio),
                "run_over_exec_p99": round3(self.p99_ratio),
            },
            "target": {
                "description": "(a) pvmctl run <= 2x (c) linux fork+exec",
                "max_ratio": TARGET_RATIO,
                "met_median": self.median_ratio <= TARGET_RATIO,
                "met_p99": self.p99_ratio <= TARGET_RATIO,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use goblin::elf::{header, program_header, Elf};

    #[test]
    fn exit0_elf_parses() {
        let bytes = exit0_elf();
        let elf = Elf::parse(&bytes).expect("goblin parses the generated ELF");
        assert!(elf.is_64);
        assert!(elf.little_endian);
        assert_eq!(elf.header.e_type, header::ET_EXEC);
        assert_eq!(elf.header.e_machine, header::EM_X86_64);
        assert_eq!(elf.entry, EXIT0_BASE + 120);
        assert_eq!(elf.program_headers.len(), 1);
        let ph = &elf.program_headers[0];
        assert_eq!(ph.p_type, program_header::PT_LOAD);
        assert_eq!(ph.p_flags, program_header::PF_R | program_header::PF_X);
        assert_eq!(ph.p_vaddr, EXIT0_BASE);
        assert_eq!(ph.p_filesz, bytes.len() as u64);
        assert_eq!(&bytes[120..], &EXIT0_CODE);
    }

    #[test]
    fn exit0_elf_runs_and_exits_0() {
        let exe = TempExecutable::create(&exit0_elf()).expect("write the executable");
        let devnull = File::options()
            .write(true)
            .open("/dev/null")
            .expect("open /dev/null");
        let child = Child::new(exe.path(), &[exe.path().as_os_str()], &devnull).expect("prepare");
        child.run().expect("runs and exits 0");
        let path = exe.path().to_path_buf();
        drop(exe);
        assert!(!path.exists());
    }

    #[test]
    fn failing_child_is_reported() {
        let devnull = File::options()
            .write(true)
            .open("/dev/null")
            .expect("open /dev/null");
        let missing = Path::new("/nonexistent/pvmctl-bench-test");
        let child = Child::new(missing, &[missing.as_os_str()], &devnull).expect("prepare");
        match child.run() {
            Err(BenchError::ChildFailed { status, .. }) => {
                assert_eq!(status, ChildStatus::Exited(EXEC_FAILED))
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn stats() {
        let samples: Vec<Duration> = (1..=100).rev().map(Duration::from_micros).collect();
        let s = Stats::new(&samples);
        assert_eq!(s.median_us, 50.5);
        assert_eq!(s.p99_us, 99.0);
        assert_eq!(s.min_us, 1.0);
        assert_eq!(s.mean_us, 50.5);
        let s = Stats::new(&samples[..51]);
        assert_eq!(s.median_us, 75.0);
        assert_eq!(s.p99_us, 100.0);
    }

    #[test]
    fn formatting() {
        assert_eq!(format_us(587.4), "587 us");
        assert_eq!(format_us(58.74), "58.7 us");
        assert_eq!(format_us(5.874), "5.87 us");
        assert_eq!(format_us(999.7), "1.00 ms");
        assert_eq!(format_us(1234.0), "1.23 ms");
        assert_eq!(format_us(9996.0), "10.0 ms");
        assert_eq!(format_us(123_456.0), "123 ms");
        assert_eq!(format_us(2_500_000.0), "2.50 s");
        assert_eq!(sig3(3.456), "3.46");
    }

    #[test]
    fn dates() {
        assert_eq!(utc_date(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc_date(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc_date(1_700_000_000), "2023-11-14 22:13:20 UTC");
    }

    #[test]
    fn too_few_iterations() {
        assert_eq!(parse_iterations("50"), Ok(50));
        assert!(parse_iterations("10").unwrap_err().contains("too few"));
        assert!(parse_iterations("x").is_err());
    }
}
