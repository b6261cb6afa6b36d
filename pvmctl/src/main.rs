//! `pvmctl`: the pvm toolstack.
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod ctl;
mod guest_build;
mod image;
mod lib_cmd;
mod new;
mod run;
mod signal;

/// Exit status when pvmctl itself fails (bad image, KVM unavailable...), as container runtimes do.
pub const EXIT_PVMCTL_ERROR: u8 = 125;

#[derive(Parser)]
#[command(
    name = "pvmctl",
    version,
    about = "Run and manage process-like VMs (pVMs) on KVM"
)]
struct Cli {
    /// Runtime directory of the pVM registry, before or after the command [default:
    /// $PVM_RUN_DIR, $XDG_RUNTIME_DIR/pvm, /run/pvm for root if /run is a tmpfs, /dev/shm/pvm-UID]
    #[arg(long, global = true, value_name = "DIR")]
    run_dir: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Make a guest app crate: an ordinary cargo crate (`cargo build` and editors work in it)
    /// that `pvmctl run DIR` runs.
    New(new::NewArgs),
    /// Boot a guest image (or build and boot a guest crate directory) as a pVM.
    Run(run::RunArgs),
    /// List pVMs: id, parent, family, name, state, uptime, memory (private and shared).
    Ps(ctl::PsArgs),
    /// Send a signal to pVMs (default TERM: they end, their parent's wait sees "killed").
    Kill(ctl::KillArgs),
    /// Stop pVMs' vCPUs until `pvmctl resume`.
    Pause(ctl::PauseArgs),
    /// Resume paused pVMs.
    #[command(alias = "unpause")]
    Resume(ctl::PauseArgs),
    /// Show the console log of a family started with `run -d` (`-f`: follow it).
    Logs(ctl::LogsArgs),
    /// Stop pVMs: TERM, then KILL if they have not ended after the timeout; waits until they
    /// are gone.
    Stop(ctl::StopArgs),
    /// Trust, list and update the libraries pVMs load at run time.
    #[command(subcommand)]
    Lib(lib_cmd::LibCommand),
    /// Measure pvm against Linux baselines.
    #[command(subcommand)]
    Bench(pvm_bench::BenchCommand),
}

fn main() -> ExitCode {
    // Logging costs start-up time (a filter to parse, a subscriber to set up): only when asked.
    if std::env::var_os("PVM_LOG").is_some_and(|v| !v.is_empty()) {
        use std::io::IsTerminal;
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_env("PVM_LOG"))
            .with_writer(std::io::stderr)
            // Colour for a person at a terminal, plain text for pipes and files.
            .with_ansi(std::io::stderr().is_terminal())
            .init();
    }
    let cli = Cli::parse_from(signal::rewrite_shorthand(std::env::args_os().collect()));
    if let Some(dir) = &cli.run_dir {
        // Single-threaded still: every command (and the monitors it starts) reads it there.
        std::env::set_var("PVM_RUN_DIR", dir);
    }
    let result: Result<ExitCode, Box<dyn std::error::Error>> = match cli.command {
        Command::New(args) => new::new(args).map_err(Into::into),
        Command::Run(args) => run::run(args).map_err(Into::into),
        Command::Ps(args) => ctl::ps(args).map_err(Into::into),
        Command::Kill(args) => ctl::kill(args).map_err(Into::into),
        Command::Pause(args) => ctl::pause(args, true).map_err(Into::into),
        Command::Resume(args) => ctl::pause(args, false).map_err(Into::into),
        Command::Stop(args) => ctl::stop(args).map_err(Into::into),
        Command::Logs(args) => ctl::logs(args).map_err(Into::into),
        Command::Lib(cmd) => lib_cmd::lib(cmd).map_err(Into::into),
        Command::Bench(cmd) => pvm_bench::bench(
            cmd,
            pvm_bench::BuiltGuests {
                guests: env!("PVM_GUEST_DIR").into(),
                libs: env!("PVM_GUEST_LIB_DIR").into(),
            },
        )
        .map_err(Into::into),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pvmctl: error: {e}");
            ExitCode::from(EXIT_PVMCTL_ERROR)
        }
    }
}
