//! `pvmctl`: the pvm toolstack.
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The lean build's allocator (`cargo lean`, on musl): musl's own malloc maps and unmaps a
/// page at a time where glibc's reuses its heap, a system call each on the paths of a boot and
/// a fork. dlmalloc is the allocator Rust's own std uses where there is no libc one; see `main`
/// for fork.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOC: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

mod ctl;
mod guest_build;
mod image;
mod lib_cmd;
mod new;
mod pool_cmd;
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

thread_local! {
    /// `run`'s argument parser, built ahead by a warm pool member (`prepare_run`).
    static RUN_PARSER: std::cell::RefCell<Option<clap::Command>> = const { std::cell::RefCell::new(None) };
}

/// Builds `run`'s argument parser ahead (a pool member, before it waits for a run): clap's
/// building is most of its ~0.15 ms.
pub fn prepare_run() {
    RUN_PARSER.with(|p| *p.borrow_mut() = Some(<RunCli as clap::CommandFactory>::command()));
}

/// `pvmctl run` alone, parsed without building the parsers of every other command (clap builds
/// the whole tree before it parses, ~0.15 ms here, on the path of every run, warm or cold).
#[derive(Parser)]
#[command(
    name = "pvmctl run",
    version,
    about = "Boot a guest image (or build and boot a guest crate directory) as a pVM"
)]
struct RunCli {
    /// Runtime directory of the pVM registry [default: $PVM_RUN_DIR, $XDG_RUNTIME_DIR/pvm,
    /// /run/pvm for root if /run is a tmpfs, /dev/shm/pvm-UID]
    #[arg(long, value_name = "DIR")]
    run_dir: Option<std::path::PathBuf>,
    #[command(flatten)]
    args: run::RunArgs,
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
    /// Keep monitors built ahead so that `pvmctl run` starts warm (start, stop, status).
    #[command(subcommand)]
    Pool(pool_cmd::PoolCommand),
    /// Measure pvm against Linux baselines.
    #[command(subcommand)]
    Bench(pvm_bench::BenchCommand),
}

fn main() -> ExitCode {
    // dlmalloc's lock is taken around fork (pthread_atfork), as glibc's and musl's mallocs do
    // theirs: a thread that allocates while another forks cannot leave the child a held lock.
    #[cfg(target_env = "musl")]
    // SAFETY: called first, while this process has one thread (dlmalloc asks for it before any
    // allocation; std's start-up allocated on this same thread, which holds no lock now).
    unsafe {
        dlmalloc::enable_alloc_after_fork()
    };
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // `pvmctl run` goes to a warm monitor of the pool when one runs, before any parsing.
    if let Some(code) = pool_cmd::try_warm(&args) {
        return ExitCode::from(code);
    }
    ExitCode::from(pvmctl_main(args))
}

/// pvmctl on `args` (`argv[0]` included); its exit status. A warm pool member runs this for
/// its client.
pub fn pvmctl_main(args: Vec<std::ffi::OsString>) -> u8 {
    // Logging costs start-up time (a filter to parse, a subscriber to set up): only when asked.
    if std::env::var_os("PVM_LOG").is_some_and(|v| !v.is_empty()) {
        use std::io::IsTerminal;
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_env("PVM_LOG"))
            .with_writer(std::io::stderr)
            // Colour for a person at a terminal, plain text for pipes and files.
            .with_ansi(std::io::stderr().is_terminal())
            .try_init();
    }
    if args.get(1).is_some_and(|a| a == "run") {
        // The plain forms without clap; the rest with it.
        if let Some(plain) = run::RunArgs::plain(&args[2..]) {
            return finish(run::run(plain).map_err(Into::into));
        }
        let argv = std::iter::once(std::ffi::OsString::from("pvmctl run")).chain(args.into_iter().skip(2));
        let mut cmd = RUN_PARSER
            .with(|p| p.borrow_mut().take())
            .unwrap_or_else(<RunCli as clap::CommandFactory>::command);
        let parsed = cmd
            .try_get_matches_from_mut(argv)
            .and_then(|m| <RunCli as clap::FromArgMatches>::from_arg_matches(&m));
        return match parsed {
            Ok(cli) => {
                if let Some(dir) = &cli.run_dir {
                    std::env::set_var("PVM_RUN_DIR", dir);
                }
                finish(run::run(cli.args).map_err(Into::into))
            }
            Err(e) => clap_exit(&e),
        };
    }
    let cli = match Cli::try_parse_from(signal::rewrite_shorthand(args)) {
        Ok(cli) => cli,
        Err(e) => return clap_exit(&e),
    };
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
        Command::Pool(cmd) => pool_cmd::pool(cmd).map_err(Into::into),
        Command::Bench(cmd) => pvm_bench::bench(
            cmd,
            pvm_bench::BuiltGuests {
                guests: env!("PVM_GUEST_DIR").into(),
                libs: env!("PVM_GUEST_LIB_DIR").into(),
            },
        )
        .map_err(Into::into),
    };
    finish(result)
}

/// Prints a command-line error or the help clap made; its exit status. Help and version go to
/// stdout with status 0; usage errors to stderr with 2.
fn clap_exit(e: &clap::Error) -> u8 {
    let _ = e.print();
    u8::try_from(e.exit_code()).unwrap_or(EXIT_PVMCTL_ERROR)
}

/// A command's exit status, printing its error if it failed.
fn finish(result: Result<ExitCode, Box<dyn std::error::Error>>) -> u8 {
    match result {
        Ok(code) => exit_code(code),
        Err(e) => {
            eprintln!("pvmctl: error: {e}");
            EXIT_PVMCTL_ERROR
        }
    }
}

/// The number of an `ExitCode` the commands return (they return only these).
fn exit_code(code: ExitCode) -> u8 {
    if code == ExitCode::SUCCESS {
        0
    } else if code == ExitCode::from(2) {
        2
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    /// What clap makes of `pvmctl run REST`.
    fn with_clap(rest: &[&str]) -> run::RunArgs {
        let argv = std::iter::once("pvmctl run").chain(rest.iter().copied());
        RunCli::try_parse_from(argv).expect("clap parses it").args
    }

    fn os(rest: &[&str]) -> Vec<OsString> {
        rest.iter().map(OsString::from).collect()
    }

    #[test]
    fn the_plain_run_forms_parse_as_clap_parses_them() {
        let plain: [&[&str]; 6] = [
            &["app"],
            &["--cold", "app"],
            &["app", "--"],
            &["dir/app", "--", "a", "-b", "--c", "--", ""],
            &["--cold", "./app", "--", "x y"],
            &["app", "--", "--cold"],
        ];
        for rest in plain {
            let fast = run::RunArgs::plain(&os(rest)).unwrap_or_else(|| panic!("{rest:?} is plain"));
            assert_eq!(format!("{fast:?}"), format!("{:?}", with_clap(rest)), "{rest:?}");
        }
    }

    #[test]
    fn other_run_forms_go_to_clap() {
        let others: [&[&str]; 9] = [
            &[],
            &["--cold"],
            &["--help"],
            &["-d", "app"],
            &["--mem", "8M", "app"],
            &["app", "extra"],
            &["app", "--cold"],
            &["-app"],
            &[""],
        ];
        for rest in others {
            assert!(run::RunArgs::plain(&os(rest)).is_none(), "{rest:?}");
        }
        // Not UTF-8: clap says so.
        use std::os::unix::ffi::OsStringExt;
        let bad = vec![
            OsString::from("app"),
            OsString::from("--"),
            OsString::from_vec(vec![0xff]),
        ];
        assert!(run::RunArgs::plain(&bad).is_none());
    }
}
