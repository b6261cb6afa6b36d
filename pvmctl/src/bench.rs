//! `pvmctl bench`: placeholder being written.
use std::process::ExitCode;

/// Benchmarks.
#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// Boot latency.
    Boot,
}

/// Errors of benchmarks.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {}

/// Runs a benchmark.
pub fn bench(_cmd: BenchCommand) -> Result<ExitCode, crate::run::RunError> {
    Ok(ExitCode::SUCCESS)
}
