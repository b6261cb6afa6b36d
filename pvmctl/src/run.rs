//! `pvmctl run`.
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use hypervisor_ext::{parse_mem_size, Monitor, MonitorConfig, MonitorError, Outcome};

use crate::image::{self, ImageError};

/// Arguments of `pvmctl run`.
#[derive(Args)]
pub struct RunArgs {
    /// Guest RAM, with an optional K, M or G suffix (a multiple of 2 MiB).
    #[arg(long, value_name = "SIZE", default_value = "64M", value_parser = parse_mem_size)]
    mem: u64,
    /// Name of the pVM (argv[0] in the guest; defaults to the image's file name).
    #[arg(long)]
    name: Option<String>,
    /// Guest image (a static ELF linked with the pvm runtime) or a guest crate directory.
    image: PathBuf,
    /// Arguments for the app, after `--`.
    #[arg(last = true)]
    args: Vec<String>,
}

/// Errors of `pvmctl run`.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The image could not be found, built or loaded.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The monitor failed.
    #[error(transparent)]
    Monitor(#[from] MonitorError),
}

/// Boots the image and runs it to the end; the exit status is the pVM's (see `Outcome::exit_status`).
pub fn run(args: RunArgs) -> Result<ExitCode, RunError> {
    let image = image::resolve(&args.image)?;
    let name = args.name.unwrap_or_else(|| {
        image
            .path
            .file_name()
            .map_or_else(|| "pvm".into(), |n| n.to_string_lossy().into_owned())
    });
    let mut argv = vec![name];
    argv.extend(args.args);
    let mut monitor = Monitor::new(
        &image,
        &MonitorConfig {
            mem_size: args.mem,
            args: argv,
        },
    )?;
    let outcome = monitor.run()?;
    let id = std::process::id();
    match &outcome {
        Outcome::Exited(_) => {}
        Outcome::Crashed(crash) => eprintln!("pvm {id} crashed: {crash}"),
        Outcome::Signaled(sig) => eprintln!("pvm {id} stopped by signal {}", signal_name(*sig)),
    }
    // The monitor (VM, vCPU, guest RAM) is still alive: its teardown happens after we are gone.
    hypervisor_ext::teardown::exit_deferring_teardown(outcome.exit_status())
}

fn signal_name(sig: i32) -> String {
    match sig {
        libc::SIGINT => "INT".into(),
        libc::SIGTERM => "TERM".into(),
        libc::SIGHUP => "HUP".into(),
        other => other.to_string(),
    }
}
