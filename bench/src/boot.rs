//! `pvmctl bench boot` times, interleaved per iteration so that machine noise hits all rows alike:
//! (a) `pvmctl run <noop>` as a child process (fork + exec + wait), warm (a monitor of a pool the
//! bench starts in its own runtime directory, ready before each run) and cold (`--cold`), (b) the
//! same boot in-process (`Monitor::new` + `run`), and (c) fork + exec + wait of a minimal static
//! Linux executable.
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use hypervisor_ext::loader::Image;
use hypervisor_ext::{Limits, Monitor, MonitorConfig, Outcome, DEFAULT_MEM_SIZE};

use crate::child::Child;
use crate::figures::{Bar, FigureArgs, Figures, Group, Kind, Samples};
use crate::{
    format_us, guest_path, parse_at_least, round3, sig3, verdict, BenchError, GuestMissing, HostInfo, Stats,
};

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
    #[command(flatten)]
    figures: FigureArgs,
}

/// Fewest iterations accepted.
const MIN_ITERATIONS: usize = 50;
/// Unrecorded iterations run first (page cache, KVM module state, CPU frequency).
const WARMUP_ITERATIONS: usize = 5;
/// The target (issue 11): a warm `pvmctl run` of a no-op guest (a monitor from a pool) within
/// this factor of a Linux fork + exec.
const TARGET_RATIO: f64 = 2.0;
/// The target (issue 11) for a cold start (no pool).
const COLD_TARGET_RATIO: f64 = 5.0;

/// The rows of `bench boot`, in table order.
const ROW_WARM: usize = 0;
const ROW_RUN: usize = 1;
const ROW_BOOT: usize = 2;
const ROW_MONITOR: usize = 3;
const ROW_EXEC: usize = 4;
const ROWS: usize = 5;
const ROW_NAMES: [&str; ROWS] = [
    "(a) pvmctl run noop, warm (fork+exec+wait)",
    "(a) pvmctl run --cold noop (fork+exec+wait)",
    "(b) monitor: KVM_CREATE_VM to first hypercall",
    "    monitor: build + run + teardown",
    "(c) linux: static exit(0) (fork+exec+wait)",
];

/// The pool's members in the bench: two (as `pool start` makes by default), both ready before
/// each warm run.
const POOL_SIZE: &str = "2";
/// How long the bench waits for its pool to be ready again.
const POOL_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// `--iterations` of `bench boot`.
fn parse_iterations(text: &str) -> Result<usize, String> {
    parse_at_least(text, MIN_ITERATIONS)
}

pub(crate) fn boot(args: BootArgs) -> Result<ExitCode, BenchError> {
    // A missing default guest is said below, like a missing --image.
    let image_path = args
        .image
        .unwrap_or_else(|| guest_path("noop").unwrap_or_else(|GuestMissing(p)| p));
    if !image_path.exists() {
        return Err(BenchError::ImageMissing(image_path));
    }
    let image = Image::open(&image_path)?;
    // A private registry, so that the benchmark's pVMs do not show in the user's `pvmctl ps`.
    let scratch = crate::scratch("boot", true)?;
    let run_dir = scratch.path().to_path_buf();
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
        placement: None,
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
    let warm_child = Child::new(
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
    let cold_child = Child::new(
        &exe,
        &[
            exe.as_os_str(),
            OsStr::new("run"),
            OsStr::new("--cold"),
            OsStr::new("--run-dir"),
            run_dir.as_os_str(),
            image_path.as_os_str(),
        ],
        &devnull,
    )?;
    let pool = Pool::start(&exe, &run_dir)?;
    let exit0 = TempExecutable::create(&exit0_elf())?;
    let exec_child = Child::new(exit0.path(), &[exit0.path().as_os_str()], &devnull)?;

    eprintln!(
        "pvmctl bench boot: {WARMUP_ITERATIONS} warm-up + {} measured iterations of (a), (b), (c)...",
        args.iterations
    );
    // Nothing buffered may be inherited by the children (they exec at once, but be safe).
    let _ = io::stdout().flush();
    let mut samples: [Vec<Duration>; ROWS] = std::array::from_fn(|_| Vec::with_capacity(args.iterations));
    for i in 0..WARMUP_ITERATIONS + args.iterations {
        // A member ready, and no refill running meanwhile: the warm run as a user meets it, and
        // no pool work in the other rows.
        pool.wait_ready()?;
        let warm = warm_child.run()?;
        pool.wait_ready()?;
        let run = cold_child.run()?;
        let (boot, monitor) = boot_in_process(&image, &config)?;
        let exec = exec_child.run()?;
        if i >= WARMUP_ITERATIONS {
            samples[ROW_WARM].push(warm);
            samples[ROW_RUN].push(run);
            samples[ROW_BOOT].push(boot);
            samples[ROW_MONITOR].push(monitor);
            samples[ROW_EXEC].push(exec);
        }
    }
    let served = pool.stop()?;
    drop(exit0);
    drop(scratch);

    let rows: Vec<(&str, Stats)> = ROW_NAMES
        .iter()
        .zip(&samples)
        .map(|(name, s)| (*name, Stats::new(s)))
        .collect();
    let ratio = |row: usize| {
        (
            rows[row].1.median_us / rows[ROW_EXEC].1.median_us,
            rows[row].1.p99_us / rows[ROW_EXEC].1.p99_us,
        )
    };
    let report = Report {
        host: HostInfo::get(),
        image: image_path,
        iterations: args.iterations,
        warm_ratio: ratio(ROW_WARM),
        cold_ratio: ratio(ROW_RUN),
        warm_served: served,
        rows,
    };
    if args.json {
        println!("{}", report.json());
    } else {
        print!("{}", report.table());
    }
    figures(&report, &samples).write(&args.figures)?;
    Ok(ExitCode::SUCCESS)
}

/// The chart's rows (`pvmctl run` against fork + exec, and the in-process boot alone) and every
/// sample.
fn figures(report: &Report<'_>, samples: &[Vec<Duration>; ROWS]) -> Figures {
    let bar = |row: usize| Some(Bar::of_samples(&samples[row]));
    let group = |label: &str, pvm: usize, linux: Option<usize>| Group {
        label: label.into(),
        kind: Kind::Latency,
        pvm: bar(pvm),
        baseline: linux.and_then(bar),
    };
    Figures {
        bench: "boot",
        title: format!(
            "pvmctl bench boot, {}, {} iterations",
            report.host.date, report.iterations
        ),
        sides: ("pVM", "Linux"),
        groups: vec![
            group("warm run noop / exec exit(0)", ROW_WARM, Some(ROW_EXEC)),
            group("cold run noop / exec exit(0)", ROW_RUN, Some(ROW_EXEC)),
            group("in-process: to 1st hypercall", ROW_BOOT, None),
            group("in-process: build+run+teardown", ROW_MONITOR, None),
        ],
        samples: ROW_NAMES
            .iter()
            .zip(samples)
            .enumerate()
            .map(|(row, (name, s))| {
                let side = if row == ROW_EXEC { "linux" } else { "pvm" };
                Samples::of_durations(*name, side, 1, s)
            })
            .collect(),
    }
}

/// The bench's warm pool (`pvmctl pool start` in the bench's runtime directory), stopped when
/// dropped.
struct Pool {
    run_dir: PathBuf,
}

impl Pool {
    fn start(exe: &Path, run_dir: &Path) -> Result<Pool, BenchError> {
        let out = std::process::Command::new(exe)
            .args(["pool", "start", "--size", POOL_SIZE, "--run-dir"])
            .arg(run_dir)
            .stdout(std::process::Stdio::null())
            .output()
            .map_err(|source| BenchError::Io {
                action: "run",
                path: exe.to_path_buf(),
                source,
            })?;
        if !out.status.success() {
            return Err(BenchError::Pool(
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ));
        }
        Ok(Pool {
            run_dir: run_dir.to_path_buf(),
        })
    }

    /// Waits until every member is ready (polling: this is the bench, not a test).
    fn wait_ready(&self) -> Result<(), BenchError> {
        let deadline = Instant::now() + POOL_READY_TIMEOUT;
        loop {
            match hypervisor_ext::pool::status(&self.run_dir) {
                Ok(Some(s)) if s.ready == s.size && s.building == 0 => return Ok(()),
                Ok(Some(_)) if Instant::now() < deadline => {}
                Ok(Some(s)) => {
                    return Err(BenchError::Pool(format!(
                        "not ready after {POOL_READY_TIMEOUT:?}: {}",
                        s.last_error.unwrap_or_default()
                    )))
                }
                Ok(None) => return Err(BenchError::Pool("the pool is gone".into())),
                Err(e) => return Err(BenchError::Pool(e.to_string())),
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Stops it; returns how many runs it served.
    fn stop(self) -> Result<u64, BenchError> {
        let served = hypervisor_ext::pool::status(&self.run_dir)
            .map_err(|e| BenchError::Pool(e.to_string()))?
            .map_or(0, |s| s.served);
        Ok(served)
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let _ = hypervisor_ext::pool::stop(&self.run_dir);
    }
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
struct TempExecutable(tempfile::TempPath);

impl TempExecutable {
    fn create(bytes: &[u8]) -> Result<TempExecutable, BenchError> {
        let dir = std::env::temp_dir();
        let io_error = |action, path: &Path, source| BenchError::Io {
            action,
            path: path.to_path_buf(),
            source,
        };
        let mut file = tempfile::Builder::new()
            .prefix("pvmctl-bench-exit0-")
            .permissions(fs::Permissions::from_mode(0o755))
            .tempfile_in(&dir)
            .map_err(|e| io_error("create a file in", &dir, e))?;
        file.write_all(bytes)
            .map_err(|e| io_error("write", file.path(), e))?;
        // Closed before it is executed (else execv fails with ETXTBSY).
        Ok(TempExecutable(file.into_temp_path()))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

/// The results of `bench boot`.
struct Report<'a> {
    host: HostInfo,
    image: PathBuf,
    iterations: usize,
    rows: Vec<(&'a str, Stats)>,
    /// (a) warm / (c), of the medians and of the p99s.
    warm_ratio: (f64, f64),
    /// (a) cold / (c), of the medians and of the p99s.
    cold_ratio: (f64, f64),
    /// Runs the pool's members took (every warm run, warm-up included, if all went warm).
    warm_served: u64,
}

impl Report<'_> {
    fn verdict(ratio: f64, target: f64) -> &'static str {
        verdict(ratio <= target)
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
        let (w, c) = (self.warm_ratio, self.cold_ratio);
        out += &format!(
            "\n(a) warm/(c): median {}x, p99 {}x; (a) cold/(c): median {}x, p99 {}x\n\
             target, warm start <= {TARGET_RATIO}x (c): {} on medians, {} on p99s \
             ({} of {} warm runs went to a pool member)\n\
             target, cold start <= {COLD_TARGET_RATIO}x (c): {} on medians, {} on p99s\n",
            sig3(w.0),
            sig3(w.1),
            sig3(c.0),
            sig3(c.1),
            Self::verdict(w.0, TARGET_RATIO),
            Self::verdict(w.1, TARGET_RATIO),
            self.warm_served,
            self.iterations + WARMUP_ITERATIONS,
            Self::verdict(c.0, COLD_TARGET_RATIO),
            Self::verdict(c.1, COLD_TARGET_RATIO)
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
                "warm_run_over_exec_median": round3(self.warm_ratio.0),
                "warm_run_over_exec_p99": round3(self.warm_ratio.1),
                "run_over_exec_median": round3(self.cold_ratio.0),
                "run_over_exec_p99": round3(self.cold_ratio.1),
            },
            "warm_runs_served_by_the_pool": self.warm_served,
            "target": {
                "description": "(a) pvmctl run, cold, <= 5x (c) linux fork+exec",
                "max_ratio": COLD_TARGET_RATIO,
                "met_median": self.cold_ratio.0 <= COLD_TARGET_RATIO,
                "met_p99": self.cold_ratio.1 <= COLD_TARGET_RATIO,
            },
            "warm_target": {
                "description": "(a) pvmctl run, warm (a pool member), <= 2x (c) linux fork+exec",
                "max_ratio": TARGET_RATIO,
                "met_median": self.warm_ratio.0 <= TARGET_RATIO,
                "met_p99": self.warm_ratio.1 <= TARGET_RATIO,
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
    fn too_few_iterations() {
        assert_eq!(parse_iterations("50"), Ok(50));
        assert!(parse_iterations("10").unwrap_err().contains("too few"));
        assert!(parse_iterations("x").is_err());
    }
}
