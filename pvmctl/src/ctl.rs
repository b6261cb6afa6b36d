//! `pvmctl ps`, `kill`, `pause`, `resume`: the registry read and acted on.
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use hypervisor_ext::control::{self, Request, Response};
use hypervisor_ext::registry::{Entry, Registry, RegistryError, SignalError, State};
use serde::Serialize;

use crate::run::RunDir;

/// Arguments of `pvmctl ps`.
#[derive(Args)]
pub struct PsArgs {
    /// One JSON array for scripts instead of a table.
    #[arg(long)]
    json: bool,
    /// Include pVMs that ended and wait to be collected by their parent.
    #[arg(short = 'a', long)]
    all: bool,
    /// Only the ids, one per line (for scripts: `pvmctl stop $(pvmctl ps -q)`).
    #[arg(short = 'q', long)]
    quiet: bool,
    #[command(flatten)]
    run_dir: RunDir,
}

/// Arguments of `pvmctl kill`.
#[derive(Args)]
pub struct KillArgs {
    /// Signal to send, by name (TERM, SIGTERM, term) or number (15): TERM (default), INT, HUP,
    /// KILL, USR1, USR2 reach the pVM; STOP pauses it and CONT resumes it.
    #[arg(short = 's', long, default_value = "TERM", value_parser = crate::signal::parse)]
    signal: i32,
    /// Signal every pVM of the targets' families.
    #[arg(long)]
    family: bool,
    #[command(flatten)]
    run_dir: RunDir,
    /// pVM ids or names.
    #[arg(required = true, value_name = "ID|NAME")]
    targets: Vec<String>,
}

/// Arguments of `pvmctl pause` and `pvmctl resume`.
#[derive(Args)]
pub struct PauseArgs {
    #[command(flatten)]
    run_dir: RunDir,
    /// pVM ids or names.
    #[arg(required = true, value_name = "ID|NAME")]
    targets: Vec<String>,
}

/// Arguments of `pvmctl stop`.
#[derive(Args)]
pub struct StopArgs {
    /// Seconds to wait after TERM before KILL.
    #[arg(short = 't', long = "time", value_name = "SECS", default_value_t = 10)]
    timeout: u64,
    #[command(flatten)]
    run_dir: RunDir,
    /// pVM ids or names (each with its family).
    #[arg(required = true, value_name = "ID|NAME")]
    targets: Vec<String>,
}

/// Arguments of `pvmctl logs`.
#[derive(Args)]
pub struct LogsArgs {
    /// Keep printing what the family writes until its root has ended.
    #[arg(short = 'f', long)]
    follow: bool,
    #[command(flatten)]
    run_dir: RunDir,
    /// The id or name of a family's root started with `run -d`.
    #[arg(value_name = "ID|NAME")]
    target: String,
}

/// How long `pause` and `resume` wait for a pVM's answer.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(2);

/// Errors of the registry commands.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The registry cannot be read.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// Writing the output failed.
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

/// One `ps` row.
#[derive(Serialize)]
struct Row {
    id: u32,
    parent: u32,
    family: u32,
    name: String,
    state: &'static str,
    uptime_ms: u64,
    mem_private_kib: u64,
    mem_shared_kib: u64,
    mem_pss_kib: u64,
    mem_size: u64,
    image: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    exit_status: Option<i32>,
    /// The family's published ports.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ports: Vec<String>,
}

/// The process state letter of `pid` from /proc.
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

/// Private, shared and proportional memory of `pid` in KiB, from the host's accounting.
fn memory(pid: u32) -> (u64, u64, u64) {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) else {
        return (0, 0, 0);
    };
    let field = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (
        field("Private_Clean:") + field("Private_Dirty:"),
        field("Shared_Clean:") + field("Shared_Dirty:"),
        field("Pss:"),
    )
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn row(e: Entry) -> Row {
    let state = match (e.state, proc_state(e.id)) {
        (State::Exited, _) | (_, Some('Z') | Some('X') | None) => "exited",
        (State::Paused, _) | (_, Some('T') | Some('t')) => "paused",
        (_, Some('R')) => "running",
        _ => "blocked",
    };
    let (private, shared, pss) = if state == "exited" {
        (0, 0, 0)
    } else {
        memory(e.id)
    };
    Row {
        id: e.id,
        parent: e.parent,
        family: e.family,
        name: e.name,
        state,
        uptime_ms: now_ms().saturating_sub(e.started_ms),
        mem_private_kib: private,
        mem_shared_kib: shared,
        mem_pss_kib: pss,
        mem_size: e.mem_size,
        image: e.image,
        exit_status: e.exit_status,
        ports: e.ports,
    }
}

fn human_kib(kib: u64) -> String {
    match kib {
        k if k >= 10 * 1024 * 1024 => format!("{}G", k / (1024 * 1024)),
        k if k >= 10 * 1024 => format!("{}M", k / 1024),
        k if k >= 1024 => format!("{:.1}M", k as f64 / 1024.0),
        k => format!("{k}K"),
    }
}

fn human_ms(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        s if s >= 86_400 => format!("{}d{}h", s / 86_400, s % 86_400 / 3600),
        s if s >= 3600 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{:.1}s", ms as f64 / 1000.0),
    }
}

/// `pvmctl ps`; a reader that goes away early (`| head`) is no error.
pub fn ps(args: PsArgs) -> Result<ExitCode, CtlError> {
    match print_ps(args) {
        Err(CtlError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        other => other,
    }
}

fn print_ps(args: PsArgs) -> Result<ExitCode, CtlError> {
    let registry = Registry::open(args.run_dir.path())?;
    let entries = registry.list()?;
    // What families killed before their root could clean up left behind.
    registry.sweep_named_objects(&entries);
    let rows: Vec<Row> = entries
        .into_iter()
        .map(row)
        .filter(|r| args.all || r.state != "exited")
        .collect();
    let mut out = std::io::stdout().lock();
    if args.quiet {
        for r in &rows {
            writeln!(out, "{}", r.id)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    if args.json {
        serde_json::to_writer_pretty(&mut out, &rows).map_err(std::io::Error::other)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    let dash = |n: u32| if n == 0 { "-".to_string() } else { n.to_string() };
    let table: Vec<[String; 10]> = rows
        .iter()
        .map(|r| {
            [
                r.id.to_string(),
                dash(r.parent),
                r.family.to_string(),
                r.name.clone(),
                r.state.to_string(),
                human_ms(r.uptime_ms),
                human_kib(r.mem_private_kib),
                human_kib(r.mem_shared_kib),
                if r.ports.is_empty() {
                    "-".to_string()
                } else {
                    r.ports.join(",")
                },
                r.image.clone(),
            ]
        })
        .collect();
    let header = [
        "ID", "PARENT", "FAMILY", "NAME", "STATE", "UPTIME", "PRIVATE", "SHARED", "PORTS", "IMAGE",
    ];
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &table {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else if (5..8).contains(&i) || i < 3 {
                s.push_str(&format!("{cell:>w$}  "));
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        s
    };
    writeln!(out, "{}", line(&header.map(String::from)))?;
    for r in &table {
        writeln!(out, "{}", line(r))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The live entries `target` names (an id, or every pVM with that name).
pub(crate) fn resolve<'a>(entries: &'a [Entry], target: &str) -> Vec<&'a Entry> {
    let live = entries.iter().filter(|e| e.state != State::Exited);
    match target.parse::<u32>() {
        Ok(id) => live.filter(|e| e.id == id).collect(),
        Err(_) => live.filter(|e| e.name == target).collect(),
    }
}

/// Sends `sig` to the pVMs the targets name; reports the ones that do not exist.
fn signal_targets(
    run_dir: &RunDir,
    targets: &[String],
    family: bool,
    sig: i32,
) -> Result<(Vec<u32>, bool), CtlError> {
    let registry = Registry::open(run_dir.path())?;
    let entries = registry.list()?;
    let mut ids = Vec::new();
    let mut missing = false;
    for target in targets {
        let mut found = resolve(&entries, target);
        if family && found.is_empty() {
            // A family outlives its root: its id still names it.
            if let Ok(fam) = target.parse::<u32>() {
                found = entries
                    .iter()
                    .filter(|e| e.family == fam && e.state != State::Exited)
                    .collect();
            }
        }
        if found.is_empty() {
            eprintln!("pvmctl: error: no pVM {target}");
            missing = true;
            continue;
        }
        for e in found {
            if family {
                ids.extend(
                    entries
                        .iter()
                        .filter(|m| m.family_key == e.family_key && m.state != State::Exited)
                        .map(|m| m.id),
                );
            } else {
                ids.push(e.id);
            }
        }
    }
    ids.sort_unstable();
    ids.dedup();
    let mut sent = Vec::new();
    for id in ids {
        // Through a pidfd, and only to the verified monitor of a live entry.
        match registry.signal(id, sig, |_| true) {
            Ok(()) => sent.push(id),
            // It ended meanwhile (e.g. its family's root stopped it first).
            Err(SignalError::NoSuchPvm) => {}
            Err(e) => {
                eprintln!("pvmctl: error: cannot signal pVM {id}: {e}");
                missing = true;
            }
        }
    }
    Ok((sent, missing))
}

fn status(failed: bool) -> ExitCode {
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// `pvmctl kill`: STOP and CONT are `pause` and `resume`.
pub fn kill(args: KillArgs) -> Result<ExitCode, CtlError> {
    if args.signal == libc::SIGSTOP || args.signal == libc::SIGCONT {
        let pause_args = PauseArgs {
            run_dir: args.run_dir,
            targets: args.targets,
        };
        return pause(pause_args, args.signal == libc::SIGSTOP);
    }
    let (_, failed) = signal_targets(&args.run_dir, &args.targets, args.family, args.signal)?;
    Ok(status(failed))
}

/// `pvmctl stop`: TERM to each target's family, KILL to what is left after the timeout; waits
/// until every one is gone (its registry entry, and its monitor).
pub fn stop(args: StopArgs) -> Result<ExitCode, CtlError> {
    let (sent, mut failed) = signal_targets(&args.run_dir, &args.targets, true, libc::SIGTERM)?;
    let registry = Registry::open(args.run_dir.path())?;
    let alive = |registry: &Registry| -> Result<Vec<u32>, CtlError> {
        let entries = registry.list()?;
        Ok(sent
            .iter()
            .copied()
            .filter(|id| entries.iter().any(|e| e.id == *id && e.state != State::Exited))
            .collect())
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(args.timeout);
    let mut left = alive(&registry)?;
    while !left.is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        left = alive(&registry)?;
    }
    for &id in &left {
        match registry.signal(id, libc::SIGKILL, |_| true) {
            Ok(()) | Err(SignalError::NoSuchPvm) => {}
            Err(e) => {
                eprintln!("pvmctl: error: cannot kill pVM {id}: {e}");
                failed = true;
            }
        }
    }
    // A SIGKILLed monitor cannot remove its entry: listing removes what it left.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !alive(&registry)?.is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    for id in sent {
        println!("{id}");
    }
    Ok(status(failed))
}

/// `pvmctl logs`: the console log of a family started with `run -d` (still running or not).
pub fn logs(args: LogsArgs) -> Result<ExitCode, CtlError> {
    use std::io::Read;
    let dir = args.run_dir.path();
    let registry = Registry::open(&dir)?;
    let entries = registry.list()?;
    let id = match resolve(&entries, &args.target).first() {
        Some(e) => e.family,
        None => match args.target.parse::<u32>() {
            Ok(id) => id,
            Err(_) => {
                eprintln!("pvmctl: error: no pVM {}", args.target);
                return Ok(ExitCode::FAILURE);
            }
        },
    };
    let mut log = match hypervisor_ext::console_log::open(&dir, id) {
        Ok(fd) => std::fs::File::from(fd),
        Err(_) => {
            eprintln!(
                "pvmctl: error: no console log for {}: was it started with `run -d`?",
                args.target
            );
            return Ok(ExitCode::FAILURE);
        }
    };
    let mut out = std::io::stdout().lock();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = log.read(&mut buf)?;
        if n > 0 {
            out.write_all(&buf[..n])?;
            continue;
        }
        out.flush()?;
        let running = registry
            .list()?
            .iter()
            .any(|e| e.id == id && e.state != State::Exited);
        if !args.follow || !running {
            // One more look: what it wrote before it ended.
            let n = log.read(&mut buf)?;
            out.write_all(&buf[..n])?;
            if n == 0 {
                return Ok(ExitCode::SUCCESS);
            }
            continue;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `pvmctl pause` / `pvmctl resume`: asks the monitors through their control sockets; each
/// answers once its registry entry says so, so that a `ps` (or a `resume`) right after shows the
/// new state.
pub fn pause(args: PauseArgs, pause: bool) -> Result<ExitCode, CtlError> {
    let registry = Registry::open(args.run_dir.path())?;
    let entries = registry.list()?;
    let (request, want) = if pause {
        (Request::Pause, State::Paused)
    } else {
        (Request::Resume, State::Running)
    };
    let mut failed = false;
    for target in &args.targets {
        let found = resolve(&entries, target);
        if found.is_empty() {
            eprintln!("pvmctl: error: no pVM {target}");
            failed = true;
        }
        for e in found {
            if e.state == want {
                let already = if pause { "already paused" } else { "not paused" };
                eprintln!("pvmctl: error: pVM {} is {already}", e.id);
                failed = true;
                continue;
            }
            // Through the pVM's control socket: the answer comes once it is done.
            match control::request(registry.dir().path(), e.id, &request, CONTROL_TIMEOUT) {
                Ok(Response::Done { state, .. }) if state == want => {}
                Ok(Response::Done { state, .. }) => {
                    eprintln!("pvmctl: error: pVM {} is {state:?}", e.id);
                    failed = true;
                }
                Ok(Response::Error { message }) => {
                    eprintln!("pvmctl: error: pVM {}: {message}", e.id);
                    failed = true;
                }
                Ok(other) => {
                    eprintln!("pvmctl: error: pVM {} answered {other:?}", e.id);
                    failed = true;
                }
                Err(err) => {
                    eprintln!("pvmctl: error: {err}");
                    failed = true;
                }
            }
        }
    }
    Ok(status(failed))
}
