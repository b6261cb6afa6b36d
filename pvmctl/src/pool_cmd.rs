//! `pvmctl pool`: the warm pool of pre-built monitors that `pvmctl run` uses, and the launch
//! path that offers a run to it before any argument parsing.
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use hypervisor_ext::parse_mem_size;
use hypervisor_ext::pool::{self, Launch, PoolConfig, PoolError};

use crate::run::RunDir;

/// Members a pool keeps ready unless told.
const DEFAULT_SIZE: usize = 2;
/// Most members a pool may keep ready.
const MAX_SIZE: usize = 64;

/// `pvmctl pool` commands.
#[derive(Subcommand)]
pub enum PoolCommand {
    /// Start the pool of this runtime directory in the background; returns once its members
    /// are ready. `pvmctl run` then hands its runs to them (`run --cold` does not).
    Start(StartArgs),
    /// Stop the pool: its idle members end with it; pVMs it already started go on.
    Stop(RunDirOnly),
    /// Show whether a pool runs, and how many members are ready.
    Status(StatusArgs),
}

/// Arguments of `pvmctl pool start`.
#[derive(Args)]
pub struct StartArgs {
    /// Members kept ready (each holds an idle VM: a few hundred KiB of host memory).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_SIZE, value_parser = parse_pool_size)]
    size: usize,
    /// Guest RAM of the members' VMs: runs with this `--mem` start warm, others build their VM
    /// themselves (still without starting pvmctl).
    #[arg(long, value_name = "SIZE", default_value = crate::run::DEFAULT_MEM, value_parser = parse_mem_size)]
    mem: u64,
    #[command(flatten)]
    run_dir: RunDir,
}

/// Parses `--size`: 1 to [`MAX_SIZE`].
fn parse_pool_size(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if (1..=MAX_SIZE).contains(&n) => Ok(n),
        _ => Err(format!("{text:?} is not a pool size (1 to {MAX_SIZE})")),
    }
}

/// The runtime directory only.
#[derive(Args)]
pub struct RunDirOnly {
    #[command(flatten)]
    run_dir: RunDir,
}

/// Arguments of `pvmctl pool status`.
#[derive(Args)]
pub struct StatusArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    run_dir: RunDir,
}

/// Errors of `pvmctl pool`.
#[derive(Debug, thiserror::Error)]
pub enum PoolCmdError {
    /// The pool failed.
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// `stop` found no pool.
    #[error("no pool runs for {0}")]
    NotRunning(PathBuf),
}

/// Runs a `pvmctl pool` command.
pub fn pool(cmd: PoolCommand) -> Result<ExitCode, PoolCmdError> {
    match cmd {
        PoolCommand::Start(args) => {
            let config = PoolConfig {
                size: args.size,
                mem_size: args.mem,
            };
            let job = pool::Job {
                prepare: crate::prepare_run,
                run: crate::pvmctl_main,
            };
            let pid = pool::start(&args.run_dir.path(), config, job)?;
            println!("{pid}");
        }
        PoolCommand::Stop(args) => {
            if !pool::stop(&args.run_dir.path())? {
                return Err(PoolCmdError::NotRunning(args.run_dir.path()));
            }
        }
        PoolCommand::Status(args) => {
            let status = pool::status(&args.run_dir.path())?;
            if args.json {
                println!("{}", serde_json::to_string(&status).unwrap_or_default());
            } else {
                match status {
                    None => println!("no pool"),
                    Some(s) => {
                        println!(
                            "pool {}: {} of {} ready ({} building), {} MiB each; {} runs served",
                            s.pid,
                            s.ready,
                            s.size,
                            s.building,
                            s.mem_size >> 20,
                            s.served
                        );
                        if let Some(why) = s.last_error {
                            println!("last failure ({} in all): {why}", s.failed);
                        }
                    }
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `pvmctl run ...` handed to the pool of its runtime directory, before pvmctl parses anything:
/// `Some(status)` when a member ran it, `None` to boot cold (no pool, `--cold`, a member that
/// refused, or pvmctl's bench descriptor, which only this process has).
pub fn try_warm(args: &[OsString]) -> Option<u8> {
    // `pvmctl [--run-dir DIR] run [OPTIONS] IMAGE [-- ARGS]`, `--run-dir` also after `run`
    // (or `--run-dir=DIR`); the guest's arguments, after `--`, are not looked at.
    let mut run_dir = None;
    let mut is_run = false;
    let mut words = args.iter().skip(1).take_while(|a| *a != "--");
    while let Some(arg) = words.next() {
        if arg == "--run-dir" {
            run_dir = Some(PathBuf::from(words.next()?));
        } else if let Some(dir) = arg.to_str().and_then(|a| a.strip_prefix("--run-dir=")) {
            run_dir = Some(PathBuf::from(dir));
        } else if !is_run {
            if arg != "run" {
                return None;
            }
            is_run = true;
        } else if arg == "--cold" || arg == "--help" || arg == "-h" {
            return None;
        }
    }
    if !is_run {
        return None;
    }
    if std::env::var_os("PVM_BENCH_FD").is_some() {
        return None;
    }
    let run_dir = run_dir.unwrap_or_else(hypervisor_ext::registry::default_dir);
    match pool::launch(&run_dir, args) {
        Launch::Cold => None,
        Launch::Ended(code) => Some(code),
        Launch::Lost(pid) => {
            eprintln!("pvmctl: pVM {pid} was killed (its monitor ended without an exit status)");
            Some(EXIT_KILLED)
        }
    }
}

/// Exit status of a warm run whose monitor was killed outright: what a shell reports for a
/// process killed by SIGKILL, as a cold `pvmctl run` killed so would end.
const EXIT_KILLED: u8 = 128 + 9;
