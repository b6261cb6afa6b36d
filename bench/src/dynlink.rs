//! `pvmctl bench dynlink`: libraries in live pVMs against Linux's dynamic loader.
//!
//! One C source (a few hundred small functions and a table of pointers to them: code, read-only
//! data and relocations, about 100 KiB built) is compiled twice with `cc -O2 -fPIC -shared`: as
//! an ordinary host library, and as a pvm library (`-nostdlib`, `pvmlib.ld`). Then, in the same
//! run:
//!
//! - load + link: `pvm::dl::open` + one lookup in a pVM, then `close` (the guest times both;
//!   each open a full load: the last close unloads), cold (the first user of the library on the
//!   host: its shared part is written to the store) and warm (another pVM holds it: the shared
//!   part is mapped and compared), against `dlopen(RTLD_NOW)` + `dlsym`, then `dlclose`, of the
//!   host build by a C program (`BASELINE_C`); the runtime directory on a tmpfs when the host has one (as pvm's default,
//!   `$XDG_RUNTIME_DIR` or `/run`, is on systemd hosts);
//! - update pause: `pvmctl lib update` of a pVM calling the library in a loop (the pause is
//!   what the monitor measures from the safe point to the commit; no state hooks);
//! - a call through a `dl` handle against a direct call of the same function in the pVM, and a
//!   direct call of the host build on the host.
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Duration;

use hypervisor_ext::control::{self, Request, Response, Session};
use hypervisor_ext::trust::{self, TrustRef};

use crate::figures::{Bar, Figures, Group, Kind, Samples};
use crate::ipc::RoundsArgs;
use crate::{format_us, guest_path, median, write_targets, BenchError, HostInfo, Stats};

/// Errors of `bench dynlink` (wrapped in [`BenchError`]).
#[derive(Debug, thiserror::Error)]
pub enum DynlinkBenchError {
    /// An example guest is missing.
    #[error(transparent)]
    GuestMissing(#[from] crate::GuestMissing),
    /// The C compiler is missing or failed.
    #[error("cannot build the benchmark library with cc: {0}")]
    Compiler(String),
    /// A step failed.
    #[error("{what}: {detail}")]
    Step {
        /// What was being done.
        what: &'static str,
        /// What went wrong.
        detail: String,
    },
}

fn step(what: &'static str) -> impl FnOnce(String) -> BenchError {
    move |detail| DynlinkBenchError::Step { what, detail }.into()
}

/// Functions in the generated library.
const FUNCTIONS: usize = 600;
/// Load + link target (the issue's; KylinX: "a few ms").
const LOAD_TARGET_US: f64 = 300.0;
/// Update pause target (p99).
const PAUSE_TARGET_US: f64 = 300.0;
/// Handle call overhead target.
const CALL_TARGET_NS: f64 = 1.0;
/// Loads per round, per row.
const LOADS: usize = 100;
/// Updates per round.
const UPDATES: usize = 30;
/// Calls per measurement.
const CALLS: usize = 2_000_000;

/// The generated library source: `f0(x)` is `x + 1` (the call benchmark's function); the others
/// and the pointer table make the size and the relocations of a real library.
fn source() -> String {
    use std::fmt::Write as _;
    let mut s = String::from("const char pvm_library_version[] = \"1.0.0\";\n");
    s.push_str("unsigned long f0(unsigned long x) { return x + 1; }\n");
    for i in 1..FUNCTIONS {
        let _ = writeln!(
            s,
            "unsigned long f{i}(unsigned long x) {{ x ^= x >> {a}; x *= {m}UL; x += {i}; \
             if (x & {b}) x = (x << 3) ^ (x >> 7); return x * {i}UL + (x >> {c}); }}",
            a = 1 + i % 31,
            b = 1 << (i % 17),
            c = 1 + i % 13,
            m = 0x9e37_79b9_7f4a_7c15u64.wrapping_add(i as u64)
        );
    }
    s.push_str("typedef unsigned long (*fn_t)(unsigned long);\nconst fn_t table[] = {");
    for i in 0..FUNCTIONS {
        let _ = write!(s, "f{i},");
    }
    s.push_str("};\nunsigned long by_index(unsigned long i, unsigned long x) { return table[i % ");
    let _ = write!(s, "{FUNCTIONS}]");
    s.push_str("(x); }\n");
    s
}

/// Compiles `source` (in `dir`) with `cc -O2` and `flags` into `dir/out`.
fn cc(dir: &Path, source: &str, out: &str, flags: &[&str]) -> Result<PathBuf, BenchError> {
    let path = dir.join(out);
    let status = Command::new("cc")
        .arg("-O2")
        .args(flags)
        .arg("-o")
        .arg(&path)
        .arg(dir.join(source))
        .status()
        .map_err(|e| DynlinkBenchError::Compiler(e.to_string()))?;
    if !status.success() {
        return Err(DynlinkBenchError::Compiler(format!("cc exited with {status}")).into());
    }
    Ok(path)
}

/// The Linux baseline, a C program of its own: `LIB LOADS CALLS` times `dlopen(RTLD_NOW)` +
/// `dlsym`, then `dlclose`, `LOADS` times (a line `load OPEN_NS CLOSE_NS` each), then the best
/// of 5 runs of `CALLS` direct calls of `f0` (a line `call NS_PER_CALL`). A process of its own,
/// dynamically linked as a C program that loads libraries is: pvmctl itself may be a static
/// build, whose libc cannot load a library.
const BASELINE_C: &str = r#"#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static long long ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}
typedef unsigned long (*fn_t)(unsigned long);
int main(int argc, char **argv) {
    if (argc != 4) return 2;
    long loads = atol(argv[2]), calls = atol(argv[3]);
    for (long i = 0; i < loads; i++) {
        long long t0 = ns();
        void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
        if (!h) { fprintf(stderr, "%s\n", dlerror()); return 1; }
        void *volatile sym = dlsym(h, "f0");
        (void)sym;
        long long t1 = ns();
        dlclose(h);
        long long t2 = ns();
        printf("load %lld %lld\n", t1 - t0, t2 - t1);
    }
    void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!h) { fprintf(stderr, "%s\n", dlerror()); return 1; }
    fn_t f = (fn_t)dlsym(h, "f0");
    __asm__ volatile("" : "+r"(f));
    double best = 1e18;
    for (int r = 0; r < 5; r++) {
        long long t0 = ns();
        unsigned long acc = 0;
        for (long i = 0; i < calls; i++) acc += f((unsigned long)i);
        __asm__ volatile("" : : "r"(acc));
        double per = (double)(ns() - t0) / (double)calls;
        if (per < best) best = per;
    }
    printf("call %.4f\n", best);
    return 0;
}
"#;

/// The Linux baseline's samples of one run of `baseline` on `lib`: load + link and close
/// times, and nanoseconds per direct call.
type LinuxRun = (Vec<Duration>, Vec<Duration>, f64);

/// Runs the Linux baseline (`BASELINE_C`, built as `baseline`) on `lib`.
fn linux_baseline(baseline: &Path, lib: &Path, loads: usize) -> Result<LinuxRun, BenchError> {
    let out = Command::new(baseline)
        .arg(lib)
        .arg(loads.to_string())
        .arg(CALLS.to_string())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| step("run the dlopen baseline")(e.to_string()))?;
    if !out.status.success() {
        return Err(step("the dlopen baseline")(format!(
            "it exited with {}",
            out.status
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let (mut opens, mut closes, mut call_ns) = (Vec::new(), Vec::new(), None);
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("load"), Some(open), Some(close)) => {
                let ns = |w: &str| w.parse().map(Duration::from_nanos);
                let bad = |_| step("the dlopen baseline")(format!("bad line {line:?}"));
                opens.push(ns(open).map_err(bad)?);
                closes.push(ns(close).map_err(bad)?);
            }
            (Some("call"), Some(ns), None) => call_ns = ns.parse().ok(),
            _ => return Err(step("the dlopen baseline")(format!("bad line {line:?}"))),
        }
    }
    match call_ns {
        Some(ns) if opens.len() == loads => Ok((opens, closes, ns)),
        _ => Err(step("the dlopen baseline")(format!(
            "{} of {loads} loads, then no call time",
            opens.len()
        ))),
    }
}

/// `pvmctl run --lib bench=LIB dlbench -- ARGS` to its end; its stdout.
fn run_dlbench(exe: &Path, env: &Env, args: &[&str]) -> Result<String, BenchError> {
    let out = env
        .pvmctl(exe)
        .arg("run")
        .arg(format!("--lib=bench={}", env.lib.display()))
        .arg(&env.guest)
        .arg("--")
        .args(args)
        .output()
        .map_err(|e| step("pvmctl run dlbench")(e.to_string()))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(step("dlbench")(format!(
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(text)
}

/// `pvmctl run ... dlbench -- MODE` in the background, once it printed `ready`.
fn start_dlbench(exe: &Path, env: &Env, mode: &str) -> Result<Child, BenchError> {
    let mut child = env
        .pvmctl(exe)
        .arg("run")
        .arg(format!("--lib=bench={}", env.lib.display()))
        .arg(&env.guest)
        .arg("--")
        .arg(mode)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| step("pvmctl run dlbench")(e.to_string()))?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    if !line.starts_with("ready") {
        let _ = child.kill();
        let _ = child.wait();
        return Err(step("dlbench")(format!("printed {line:?} instead of ready")));
    }
    Ok(child)
}

/// The private places of one run.
struct Env {
    dir: PathBuf,
    run_dir: PathBuf,
    trust: PathBuf,
    lib: PathBuf,
    guest: PathBuf,
}

impl Env {
    fn pvmctl(&self, exe: &Path) -> Command {
        let mut cmd = Command::new(exe);
        cmd.env("PVM_RUN_DIR", &self.run_dir)
            .env("PVM_TRUST_STORE", &self.trust)
            .env_remove("PVM_LOG");
        cmd
    }
}

/// The samples (`pvm_abi::samples`) dlbench printed after its `SECTION:` summary line, in us.
fn section_samples(out: &str, section: &str) -> Vec<f64> {
    let mut current = "";
    let mut us = Vec::new();
    for line in out.lines() {
        if let Some((name, _)) = line.split_once(": median") {
            current = name;
        } else if current == section {
            let _ = pvm_abi::samples::parse(line, |ns| us.push(ns as f64 / 1e3));
        }
    }
    us
}

fn parse_ns(text: &str, key: &str) -> Option<f64> {
    text.split(key)
        .nth(1)?
        .split_whitespace()
        .next()?
        .trim_end_matches(',')
        .parse()
        .ok()
}

/// `pvmctl bench dynlink`.
pub fn dynlink(args: RoundsArgs) -> Result<ExitCode, BenchError> {
    let exe = std::env::current_exe().map_err(BenchError::CurrentExe)?;
    let dir = crate::scratch("dynlink", false)?;
    // The runtime directory where pvm's default puts it: a tmpfs ($XDG_RUNTIME_DIR, /run) when
    // there is one (/dev/shm stands for it), else the temporary directory.
    let run_dir = crate::scratch("dynlink-run", true)?;
    run(&exe, dir.path(), run_dir.path(), &args)
}

fn run(exe: &Path, dir: &Path, run_dir: &Path, args: &RoundsArgs) -> Result<ExitCode, BenchError> {
    std::fs::write(dir.join("bench.c"), source()).map_err(|e| step("write bench.c")(e.to_string()))?;
    std::fs::write(dir.join("pvmlib.ld"), include_str!("../../pvm-runtime/pvmlib.ld"))
        .map_err(|e| step("write pvmlib.ld")(e.to_string()))?;
    std::fs::write(dir.join("baseline.c"), BASELINE_C)
        .map_err(|e| step("write baseline.c")(e.to_string()))?;
    let host_lib = cc(dir, "bench.c", "libbench-host.so", &["-fPIC", "-shared"])?;
    let baseline = cc(dir, "baseline.c", "dlopen-baseline", &["-ldl"])?;
    let script = format!("-Wl,-T,{}", dir.join("pvmlib.ld").display());
    let lib = cc(
        dir,
        "bench.c",
        "libbench.so",
        &["-fPIC", "-shared", "-nostdlib", &script],
    )?;
    let size = std::fs::metadata(&lib).map(|m| m.len()).unwrap_or(0);
    let env = Env {
        dir: dir.to_path_buf(),
        run_dir: run_dir.to_path_buf(),
        trust: dir.join("trust").join("trusted"),
        lib,
        guest: guest_path("dlbench").map_err(DynlinkBenchError::from)?,
    };
    let store = TrustRef::open(&env.trust).map_err(|e| step("trust store")(e.to_string()))?;
    let bytes = std::fs::read(&env.lib).map_err(|e| step("read the library")(e.to_string()))?;
    store
        .add(&trust::digest(&bytes), "libbench.so")
        .map_err(|e| step("trust the library")(e.to_string()))?;
    let _ = &env.dir;

    eprintln!(
        "pvmctl bench dynlink: {} rounds ({size} byte library)...",
        args.rounds
    );
    let loads = LOADS.to_string();
    let calls = CALLS.to_string();
    let (mut cold, mut warm, mut linux) = (Vec::new(), Vec::new(), Vec::new());
    let (mut closes, mut linux_closes) = (Vec::new(), Vec::new());
    // Every load and close the guest timed, per run, in us.
    let (mut cold_raw, mut warm_raw, mut close_raw) = (Vec::new(), Vec::new(), Vec::new());
    let (mut pauses, mut handle_ns, mut direct_ns) = (Vec::new(), Vec::new(), Vec::new());
    let mut native_ns = f64::MAX;
    for _ in 0..args.rounds {
        // Cold: nobody else has the library.
        let out = run_dlbench(exe, &env, &["load", &loads, "--samples"])?;
        cold_raw.push(section_samples(&out, "load"));
        close_raw.push(section_samples(&out, "close"));
        cold.push((
            parse_ns(&out, "median").unwrap_or(f64::NAN),
            parse_ns(&out, "p99").unwrap_or(f64::NAN),
        ));
        let close_line = out.lines().find(|l| l.starts_with("close:")).unwrap_or("");
        closes.push((
            parse_ns(close_line, "median").unwrap_or(f64::NAN),
            parse_ns(close_line, "p99").unwrap_or(f64::NAN),
        ));
        // Warm: another pVM holds it.
        let mut holder = start_dlbench(exe, &env, "hold")?;
        let out = run_dlbench(exe, &env, &["load", &loads, "--samples"]);
        let _ = holder.kill();
        let _ = holder.wait();
        let out = out?;
        warm_raw.push(section_samples(&out, "load"));
        warm.push((
            parse_ns(&out, "median").unwrap_or(f64::NAN),
            parse_ns(&out, "p99").unwrap_or(f64::NAN),
        ));
        let (opens, closed, call_ns) = linux_baseline(&baseline, &host_lib, LOADS)?;
        linux.extend(opens);
        linux_closes.extend(closed);
        native_ns = native_ns.min(call_ns);
        // Calls.
        let out = run_dlbench(exe, &env, &["call", &calls])?;
        handle_ns.push(parse_ns(&out, "handle").unwrap_or(f64::NAN));
        direct_ns.push(parse_ns(&out, "direct").unwrap_or(f64::NAN));
        // Update pauses.
        let mut server = start_dlbench(exe, &env, "serve")?;
        let file = std::fs::File::open(&env.lib).map_err(|e| step("open the library")(e.to_string()))?;
        let request = Request::Update {
            library: "bench".into(),
            file: env.lib.display().to_string(),
            allow_downgrade: false,
            timeout_ms: 5000,
            two_phase: false,
        };
        for _ in 0..UPDATES {
            use std::os::fd::AsFd;
            let answer = Session::open(&env.run_dir, server.id())
                .and_then(|s| s.send(&request, Some(file.as_fd())).map(|()| s))
                .and_then(|s| s.receive(Duration::from_secs(10)));
            match answer {
                Ok(Response::Updated { pause_us, .. }) => pauses.push(Duration::from_micros(pause_us)),
                other => {
                    let _ = server.kill();
                    let _ = server.wait();
                    return Err(step("update")(format!("{other:?}")));
                }
            }
        }
        let _ = control::request(
            &env.run_dir,
            server.id(),
            &Request::Status,
            Duration::from_secs(1),
        );
        let _ = server.kill();
        let _ = server.wait();
    }

    let host = HostInfo::get();
    let pvm_runs = [
        ("load + link + lookup, cold", &cold, &cold_raw),
        ("load + link + lookup, warm", &warm, &warm_raw),
        ("close", &closes, &close_raw),
    ];
    figures(
        &host,
        args.rounds,
        &pvm_runs,
        [&linux, &linux_closes],
        &pauses,
        [&handle_ns, &direct_ns],
    )
    .write(&args.figures)?;
    let ns = |v: f64| Duration::from_nanos(v.max(0.0) as u64);
    let cold_med = Stats::new(&cold.iter().map(|c| ns(c.0)).collect::<Vec<_>>());
    let cold_p99 = Stats::new(&cold.iter().map(|c| ns(c.1)).collect::<Vec<_>>());
    let warm_med = Stats::new(&warm.iter().map(|c| ns(c.0)).collect::<Vec<_>>());
    let warm_p99 = Stats::new(&warm.iter().map(|c| ns(c.1)).collect::<Vec<_>>());
    let linux = Stats::new(&linux);
    let linux_close = Stats::new(&linux_closes);
    let close_med = Stats::new(&closes.iter().map(|c| ns(c.0)).collect::<Vec<_>>());
    let close_p99 = Stats::new(&closes.iter().map(|c| ns(c.1)).collect::<Vec<_>>());
    let pauses = Stats::new(&pauses);
    let (handle, direct) = (median(&handle_ns), median(&direct_ns));
    let overhead = handle - direct;
    if args.json {
        let json = serde_json::json!({
            "bench": "dynlink",
            "unix_time": host.unix_time,
            "host": { "name": host.hostname, "kernel": host.kernel, "cpu": host.cpu },
            "rounds": args.rounds,
            "library_bytes": size,
            "load_cold_median_us": cold_med.median_us, "load_cold_p99_us": cold_p99.median_us,
            "load_warm_median_us": warm_med.median_us, "load_warm_p99_us": warm_p99.median_us,
            "linux_dlopen_median_us": linux.median_us, "linux_dlopen_p99_us": linux.p99_us,
            "close_median_us": close_med.median_us, "close_p99_us": close_p99.median_us,
            "linux_dlclose_median_us": linux_close.median_us, "linux_dlclose_p99_us": linux_close.p99_us,
            "run_dir": env.run_dir.display().to_string(),
            "update_pause_median_us": pauses.median_us, "update_pause_p99_us": pauses.p99_us,
            "call_handle_ns": handle, "call_direct_ns": direct, "call_native_ns": native_ns,
        });
        println!("{json}");
        return Ok(ExitCode::SUCCESS);
    }
    use std::fmt::Write as _;
    let mut out = format!(
        "pvmctl bench dynlink, {} (unix time {}), host {}: Linux {}, {}\n\
         library: {size} bytes ({FUNCTIONS} functions and a table of pointers to them), built \
         for pvm and for the host from one C source; {} rounds\n\n",
        host.date, host.unix_time, host.hostname, host.kernel, host.cpu, args.rounds
    );
    let _ = writeln!(
        out,
        "  {:44} {:>11} {:>11} {:>11} {:>11} {:>7}",
        "load + link + one lookup", "pVM", "p99", "Linux", "p99", "ratio"
    );
    for (name, med, p99) in [
        ("cold (first user on the host)", cold_med, cold_p99),
        ("warm (another pVM shares it)", warm_med, warm_p99),
    ] {
        let _ = writeln!(
            out,
            "  {name:44} {:>11} {:>11} {:>11} {:>11} {:>7.2}",
            format_us(med.median_us),
            format_us(p99.median_us),
            format_us(linux.median_us),
            format_us(linux.p99_us),
            med.median_us / linux.median_us
        );
    }
    let _ = writeln!(
        out,
        "  {:44} {:>11} {:>11} {:>11} {:>11} {:>7.2}",
        "close (unload)",
        format_us(close_med.median_us),
        format_us(close_p99.median_us),
        format_us(linux_close.median_us),
        format_us(linux_close.p99_us),
        close_med.median_us / linux_close.median_us
    );
    let _ = writeln!(out, "  (runtime directory: {})", env.run_dir.display());
    let _ = writeln!(
        out,
        "\n  update pause ({} updates, no state hooks)    median {}, p99 {}",
        pauses_count(args.rounds),
        format_us(pauses.median_us),
        format_us(pauses.p99_us)
    );
    let _ = writeln!(
        out,
        "  call through a handle: {handle:.3} ns; direct call in the pVM: {direct:.3} ns; \
         direct call on the host: {native_ns:.3} ns; handle overhead {overhead:.3} ns"
    );
    let targets = vec![
        (
            format!("load + link (cold) <= {LOAD_TARGET_US} us"),
            format_us(cold_med.median_us),
            cold_med.median_us <= LOAD_TARGET_US,
        ),
        (
            format!("update pause p99 <= {PAUSE_TARGET_US} us"),
            format_us(pauses.p99_us),
            pauses.p99_us <= PAUSE_TARGET_US,
        ),
        (
            format!("handle call overhead <= {CALL_TARGET_NS} ns"),
            format!("{overhead:.3} ns"),
            overhead <= CALL_TARGET_NS,
        ),
    ];
    write_targets(&mut out, &targets, 10);
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}

/// A row the guest timed: its name, each run's (median, p99) in ns, each run's samples in us.
type GuestRuns<'a> = (&'a str, &'a Vec<(f64, f64)>, &'a Vec<Vec<f64>>);

/// The chart's rows: loads (cold, warm) and close against Linux's dlopen and dlclose, the update
/// pause, and a call through a handle against a direct call. The guest times its loads in a
/// batch and prints each run's median and p99 (ns); the host times each dlopen and each pause.
fn figures(
    host: &HostInfo,
    rounds: u32,
    pvm_runs: &[GuestRuns<'_>; 3],
    [dlopen, dlclose]: [&[Duration]; 2],
    pauses: &[Duration],
    [handle_ns, direct_ns]: [&[f64]; 2],
) -> Figures {
    let mut groups = Vec::new();
    let mut samples = Vec::new();
    for (i, (name, runs, raw)) in pvm_runs.iter().enumerate() {
        let medians: Vec<f64> = runs.iter().map(|r| r.0 / 1e3).collect();
        let p99s: Vec<f64> = runs.iter().map(|r| r.1 / 1e3).collect();
        let linux = if i == 2 { dlclose } else { dlopen };
        groups.push(Group {
            label: name.replace(" + link + lookup", ""),
            kind: Kind::Latency,
            pvm: Some(Bar {
                median: median(&medians),
                p99: Some(median(&p99s)),
                dots: raw.iter().flatten().copied().collect(),
            }),
            baseline: Some(Bar::of_samples(linux)),
        });
        for (metric, values) in [("run_median_us", medians), ("run_p99_us", p99s)] {
            samples.extend(Samples::per_round(name, "pvm", metric, &values));
        }
        for (r, run) in raw.iter().enumerate() {
            samples.push(Samples {
                row: (*name).into(),
                side: "pvm",
                round: r as u32 + 1,
                metric: "us",
                values: run.clone(),
            });
        }
    }
    samples.push(Samples::of_durations("dlopen + dlsym", "linux", 1, dlopen));
    samples.push(Samples::of_durations("dlclose", "linux", 1, dlclose));
    groups.push(Group {
        label: "update pause".into(),
        kind: Kind::Latency,
        pvm: Some(Bar::of_samples(pauses)),
        baseline: None,
    });
    samples.push(Samples::of_durations("update pause", "pvm", 1, pauses));
    let us = |ns: &[f64]| ns.iter().map(|n| n / 1e3).collect::<Vec<_>>();
    groups.push(Group {
        label: "call: handle (vs direct)".into(),
        kind: Kind::Latency,
        pvm: Some(Bar::of_figures(&us(handle_ns))),
        baseline: Some(Bar::of_figures(&us(direct_ns))),
    });
    for (side, values) in [("pvm", handle_ns), ("direct", direct_ns)] {
        let row = "call through a handle (pvm) or direct";
        samples.extend(Samples::per_round(row, side, "run_mean_ns", values));
    }
    Figures {
        bench: "dynlink",
        title: format!(
            "pvmctl bench dynlink, {}, {}",
            host.date,
            crate::rounds_text(rounds)
        ),
        sides: ("pVM", "Linux (dlopen, dlclose) or a direct call"),
        groups,
        samples,
    }
}

fn pauses_count(rounds: u32) -> usize {
    rounds as usize * UPDATES
}
