//! `pvmctl bench security`: what confinement costs, and how fast the operator's controls act on
//! a guest that never cooperates.
//!
//! - The seccomp filter's cost: the same guests run confined (the default) and `--unconfined`,
//!   interleaved round by round: a hypercall round trip (one exit and the monitor's `KVM_RUN`),
//!   a message-queue round trip without spinning (futex sleeps and wakes: several system calls
//!   per trip), and fork + exit + wait of a 1 MiB pVM (hundreds of system calls).
//! - Control of a guest spinning at CPL3: how long Ctrl-C (SIGINT to `pvmctl run`), `kill`
//!   (SIGTERM) and `pause` take to act, against the same signals to a spinning Linux process.
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use crate::figures::{Bar, Figures, Group, Kind, Samples};
use crate::ipc::RoundsArgs;
use crate::{format_us, guest_path, write_targets, BenchError, HostInfo, Stats};

/// Errors of `bench security` (wrapped in [`BenchError`]).
#[derive(Debug, thiserror::Error)]
pub enum SecurityBenchError {
    /// An example guest is missing.
    #[error(transparent)]
    GuestMissing(#[from] crate::GuestMissing),
    /// A command could not be run.
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        /// The command.
        command: String,
        /// The error.
        source: std::io::Error,
    },
    /// A guest did not print what was expected.
    #[error("`{command}` printed no {what}: {output}")]
    Output {
        /// The command.
        command: String,
        /// What was looked for.
        what: &'static str,
        /// What it printed.
        output: String,
    },
}

/// The cost target: confined within 5% of unconfined (medians).
const COST_TARGET: f64 = 1.05;
/// The control target from the containment issue: signals act on a spinning guest within 50 ms.
const CONTROL_TARGET_US: f64 = 50_000.0;
/// Iterations of each control measurement.
const CONTROL_ITERATIONS: usize = 20;

/// The chart's rows: each guest confined (pVM) against --unconfined (baseline), and the control
/// of a spinning guest against a spinning Linux process; every run's time.
fn figures(
    host: &HostInfo,
    rounds: u32,
    costs: &[Cost],
    controls: &[(&str, Vec<Duration>, Vec<Duration>)],
) -> Figures {
    let mut groups = Vec::new();
    let mut samples = Vec::new();
    for c in costs {
        groups.push(Group {
            label: format!("{} (vs unconfined)", c.name),
            kind: Kind::Latency,
            pvm: Some(Bar::of_samples(&c.confined)),
            baseline: Some(Bar::of_samples(&c.unconfined)),
        });
        for (i, (a, b)) in c.confined.iter().zip(&c.unconfined).enumerate() {
            let round = i as u32 + 1;
            samples.push(Samples::of_durations(c.name, "pvm", round, &[*a]));
            samples.push(Samples::of_durations(c.name, "unconfined", round, &[*b]));
        }
    }
    for (name, pvm, linux) in controls {
        groups.push(Group {
            label: format!("{name} (vs Linux)"),
            kind: Kind::Latency,
            pvm: Some(Bar::of_samples(pvm)),
            baseline: Some(Bar::of_samples(linux)),
        });
        samples.push(Samples::of_durations(*name, "pvm", 1, pvm));
        samples.push(Samples::of_durations(*name, "linux", 1, linux));
    }
    Figures {
        bench: "security",
        title: format!(
            "pvmctl bench security, {}, {}",
            host.date,
            crate::rounds_text(rounds)
        ),
        sides: ("pVM", "baseline (unconfined pVM, or a Linux process)"),
        groups,
        samples,
    }
}

/// One confined-versus-unconfined measurement.
struct Cost {
    name: &'static str,
    /// `ipcbench`/`forkbench` arguments.
    guest: &'static str,
    args: &'static [&'static str],
    confined: Vec<Duration>,
    unconfined: Vec<Duration>,
}

fn spawn_error(command: &str) -> impl FnOnce(std::io::Error) -> BenchError + '_ {
    move |source| {
        SecurityBenchError::Spawn {
            command: command.to_string(),
            source,
        }
        .into()
    }
}

/// Runs `pvmctl run [--unconfined] GUEST -- ARGS` and returns its stdout.
fn run_guest(
    exe: &Path,
    run_dir: &Path,
    guest: &Path,
    args: &[&str],
    confined: bool,
) -> Result<(String, String), BenchError> {
    let mut cmd = Command::new(exe);
    cmd.arg("run").arg("--run-dir").arg(run_dir);
    if !confined {
        cmd.arg("--unconfined");
    }
    cmd.arg(guest).arg("--").args(args);
    let command = format!("{cmd:?}");
    let out = cmd.output().map_err(spawn_error(&command))?;
    Ok((command, String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// The per-operation time a guest printed: `median N ns` (ipcbench) or `N forks ... in T ns`
/// (forkbench, divided by N).
fn parse_time(output: &str) -> Option<Duration> {
    for line in output.lines() {
        if let Some(rest) = line.split("median ").nth(1) {
            let ns: u64 = rest.split_whitespace().next()?.parse().ok()?;
            return Some(Duration::from_nanos(ns));
        }
        if let Some(rest) = line.strip_prefix("forkbench: ") {
            let words: Vec<&str> = rest.split_whitespace().collect();
            let n: u64 = words.first()?.parse().ok()?;
            let ns: u64 = words.get(words.len().checked_sub(2)?)?.parse().ok()?;
            return Some(Duration::from_nanos(ns / n.max(1)));
        }
    }
    None
}

/// Time from sending `sig` to `child` until it is gone.
fn time_to_exit(child: &mut Child, sig: i32) -> Duration {
    let t = Instant::now();
    let _ = crate::child::signal(child.id(), sig);
    let _ = child.wait();
    t.elapsed()
}

/// Starts `pvmctl run spin` and waits until the guest spins.
fn start_spinner(exe: &Path, run_dir: &Path, spin: &Path) -> Result<Child, BenchError> {
    let command = format!("{} run {}", exe.display(), spin.display());
    let mut child = Command::new(exe)
        .arg("run")
        .arg("--run-dir")
        .arg(run_dir)
        .arg(spin)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(spawn_error(&command))?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    if line.trim() != "spinning" {
        let _ = child.kill();
        let _ = child.wait();
        return Err(SecurityBenchError::Output {
            command,
            what: "\"spinning\" line",
            output: line,
        }
        .into());
    }
    Ok(child)
}

/// A spinning Linux process, with the default actions for INT and TERM (a shell started in the
/// background would inherit them ignored, and could not restore them).
fn start_linux_spinner() -> Result<Child, BenchError> {
    use std::os::unix::process::CommandExt;
    let command = "sh -c 'while :; do :; done'";
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "while :; do :; done"]);
    // SAFETY: between fork and exec the child only resets two signal dispositions
    // (async-signal-safe).
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            libc::signal(libc::SIGTERM, libc::SIG_DFL);
            Ok(())
        });
    }
    cmd.spawn().map_err(spawn_error(command))
}

/// Time from the pause signal until the monitor's registry entry says "paused".
fn time_to_pause(run_dir: &Path, child: &Child) -> Duration {
    let entry = run_dir.join(format!("{}.json", child.id()));
    let t = Instant::now();
    let _ = crate::child::signal(child.id(), hypervisor_ext::signals::pause_signal());
    while t.elapsed() < Duration::from_secs(5) {
        if std::fs::read_to_string(&entry).is_ok_and(|e| e.contains("\"paused\"")) {
            break;
        }
        std::hint::spin_loop();
    }
    t.elapsed()
}

/// `pvmctl bench security`.
pub fn security(args: RoundsArgs) -> Result<ExitCode, BenchError> {
    let exe = std::env::current_exe().map_err(BenchError::CurrentExe)?;
    let scratch = crate::scratch("security", true)?;
    let run_dir = scratch.path().to_path_buf();
    let ipcbench = guest_path("ipcbench").map_err(SecurityBenchError::from)?;
    let forkbench = guest_path("forkbench").map_err(SecurityBenchError::from)?;
    let spin = guest_path("spin").map_err(SecurityBenchError::from)?;
    let mut costs = [
        Cost {
            name: "hypercall round trip",
            guest: "ipcbench",
            args: &["hypercall", "2000"],
            confined: Vec::new(),
            unconfined: Vec::new(),
        },
        Cost {
            name: "queue round trip, no spin",
            guest: "ipcbench",
            args: &["mq", "300", "--no-spin"],
            confined: Vec::new(),
            unconfined: Vec::new(),
        },
        Cost {
            name: "fork+exit+wait, 1 MiB",
            guest: "forkbench",
            args: &["100", "1"],
            confined: Vec::new(),
            unconfined: Vec::new(),
        },
    ];
    eprintln!("pvmctl bench security: {} rounds...", args.rounds);
    for _ in 0..args.rounds {
        for cost in &mut costs {
            let guest: &PathBuf = if cost.guest == "forkbench" {
                &forkbench
            } else {
                &ipcbench
            };
            for confined in [true, false] {
                let (command, out) = run_guest(&exe, &run_dir, guest, cost.args, confined)?;
                let time = parse_time(&out).ok_or_else(|| SecurityBenchError::Output {
                    command,
                    what: "time",
                    output: out.clone(),
                })?;
                if confined {
                    cost.confined.push(time);
                } else {
                    cost.unconfined.push(time);
                }
            }
        }
    }
    // Control of a spinning guest, against a spinning Linux process.
    let mut controls: [(&str, Vec<Duration>, Vec<Duration>); 3] = [
        ("Ctrl-C (SIGINT) to exit", Vec::new(), Vec::new()),
        ("kill (SIGTERM) to exit", Vec::new(), Vec::new()),
        ("pause to paused", Vec::new(), Vec::new()),
    ];
    for _ in 0..CONTROL_ITERATIONS {
        for (i, sig) in [libc::SIGINT, libc::SIGTERM].into_iter().enumerate() {
            let mut pvm = start_spinner(&exe, &run_dir, &spin)?;
            controls[i].1.push(time_to_exit(&mut pvm, sig));
            let mut linux = start_linux_spinner()?;
            controls[i].2.push(time_to_exit(&mut linux, sig));
        }
        let mut pvm = start_spinner(&exe, &run_dir, &spin)?;
        controls[2].1.push(time_to_pause(&run_dir, &pvm));
        time_to_exit(&mut pvm, libc::SIGKILL);
        let mut linux = start_linux_spinner()?;
        let t = Instant::now();
        let _ = crate::child::signal(linux.id(), libc::SIGSTOP);
        // A stopped process shows `T` in /proc.
        let stat = format!("/proc/{}/stat", linux.id());
        while !std::fs::read_to_string(&stat)
            .is_ok_and(|s| s.rsplit(") ").next().is_some_and(|r| r.starts_with('T')))
        {
            std::hint::spin_loop();
        }
        controls[2].2.push(t.elapsed());
        time_to_exit(&mut linux, libc::SIGKILL);
    }
    drop(scratch);

    let host = HostInfo::get();
    let cost_rows: Vec<(&str, Stats, Stats, f64)> = costs
        .iter()
        .map(|c| {
            let (a, b) = (Stats::new(&c.confined), Stats::new(&c.unconfined));
            (c.name, a, b, a.median_us / b.median_us)
        })
        .collect();
    let control_rows: Vec<(&str, Stats, Stats)> = controls
        .iter()
        .map(|(name, pvm, linux)| (*name, Stats::new(pvm), Stats::new(linux)))
        .collect();
    figures(&host, args.rounds, &costs, &controls).write(&args.figures)?;
    if args.json {
        let json = serde_json::json!({
            "bench": "security",
            "unix_time": host.unix_time,
            "host": { "name": host.hostname, "kernel": host.kernel, "cpu": host.cpu },
            "rounds": args.rounds,
            "seccomp_cost": cost_rows.iter().map(|(name, a, b, ratio)| serde_json::json!({
                "name": name,
                "confined_median_us": a.median_us, "confined_p99_us": a.p99_us,
                "unconfined_median_us": b.median_us, "unconfined_p99_us": b.p99_us,
                "ratio": ratio,
            })).collect::<Vec<_>>(),
            "control": control_rows.iter().map(|(name, p, l)| serde_json::json!({
                "name": name,
                "pvm_median_us": p.median_us, "pvm_p99_us": p.p99_us,
                "linux_median_us": l.median_us, "linux_p99_us": l.p99_us,
            })).collect::<Vec<_>>(),
        });
        println!("{json}");
        return Ok(ExitCode::SUCCESS);
    }
    use std::fmt::Write as _;
    let mut out = format!(
        "pvmctl bench security, {} (unix time {}), host {}: Linux {}, {}\n\n\
         seccomp filter cost: {} rounds, each running every guest confined and --unconfined \
         (per-run medians; median and p99 over runs)\n",
        host.date, host.unix_time, host.hostname, host.kernel, host.cpu, args.rounds
    );
    let _ = writeln!(
        out,
        "  {:28} {:>11} {:>11} {:>11} {:>11} {:>7}",
        "", "confined", "p99", "unconfined", "p99", "ratio"
    );
    for (name, a, b, ratio) in &cost_rows {
        let _ = writeln!(
            out,
            "  {name:28} {:>11} {:>11} {:>11} {:>11} {ratio:>7.3}",
            format_us(a.median_us),
            format_us(a.p99_us),
            format_us(b.median_us),
            format_us(b.p99_us)
        );
    }
    let _ = writeln!(
        out,
        "\ncontrol of a guest spinning at CPL3 (N = {CONTROL_ITERATIONS}), against a spinning Linux process"
    );
    let _ = writeln!(
        out,
        "  {:28} {:>11} {:>11} {:>11} {:>11}",
        "", "pVM", "p99", "Linux", "p99"
    );
    for (name, p, l) in &control_rows {
        let _ = writeln!(
            out,
            "  {name:28} {:>11} {:>11} {:>11} {:>11}",
            format_us(p.median_us),
            format_us(p.p99_us),
            format_us(l.median_us),
            format_us(l.p99_us)
        );
    }
    let mut targets: Vec<(String, String, bool)> = cost_rows
        .iter()
        .map(|(name, _, _, ratio)| {
            (
                format!("{name}: confined <= {COST_TARGET}x unconfined"),
                format!("{ratio:.3}x"),
                *ratio <= COST_TARGET,
            )
        })
        .collect();
    targets.extend(control_rows.iter().map(|(name, p, _)| {
        (
            format!("{name}: p99 <= 50 ms"),
            format_us(p.p99_us),
            p.p99_us <= CONTROL_TARGET_US,
        )
    }));
    write_targets(&mut out, &targets, 10);
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}
