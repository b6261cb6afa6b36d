//! Resolving what the user named: an image file, or a guest crate directory to build first.
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use hypervisor_ext::loader::{Image, LoadError};

use crate::guest_build;

/// Errors resolving an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The path does not exist.
    #[error("{0}: no such file or directory")]
    NotFound(PathBuf),
    /// A directory without a Cargo.toml.
    #[error("{0} is a directory but not a guest crate (no Cargo.toml)")]
    NotACrate(PathBuf),
    /// cargo could not be started.
    #[error("cannot run cargo to build {dir}: {source}")]
    Cargo {
        /// The crate directory.
        dir: PathBuf,
        /// Why cargo did not start.
        source: std::io::Error,
    },
    /// cargo failed (its messages were shown).
    #[error("building the guest crate in {0} failed")]
    BuildFailed(PathBuf),
    /// The crate built no executable.
    #[error("{0} builds no executable")]
    NoBinary(PathBuf),
    /// The crate builds several executables.
    #[error("{dir} builds several executables ({names}); run one of them by path")]
    ManyBinaries {
        /// The crate directory.
        dir: PathBuf,
        /// Their names.
        names: String,
    },
    /// The image is not loadable.
    #[error(transparent)]
    Load(#[from] LoadError),
}

/// Opens `path` as an image; a directory is built as a guest crate first.
pub fn resolve(path: &Path) -> Result<Image, ImageError> {
    if !path.exists() {
        return Err(ImageError::NotFound(path.into()));
    }
    if path.is_dir() {
        let exe = build_crate(path)?;
        return Ok(Image::open(&exe)?);
    }
    Ok(Image::open(path)?)
}

/// Builds the guest crate in `dir` (release) and returns its executable.
fn build_crate(dir: &Path) -> Result<PathBuf, ImageError> {
    if !dir.join("Cargo.toml").is_file() {
        return Err(ImageError::NotACrate(dir.into()));
    }
    let cargo = std::env::var_os("CARGO").map_or_else(|| PathBuf::from("cargo"), PathBuf::from);
    let mut child = guest_build::cargo_command(&cargo, dir)
        .args(["--message-format", "json-render-diagnostics"])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|source| ImageError::Cargo {
            dir: dir.into(),
            source,
        })?;
    let manifest = dir.join("Cargo.toml").canonicalize().ok();
    let mut exes = Vec::new();
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if msg["reason"] != "compiler-artifact" {
                continue;
            }
            let Some(exe) = msg["executable"].as_str() else {
                continue;
            };
            // Only the package in `dir` counts when `dir` is a member of a larger workspace.
            let from_dir = msg["manifest_path"]
                .as_str()
                .map(|p| Path::new(p).canonicalize().ok());
            if manifest.is_some() && from_dir.is_some_and(|m| m != manifest) && !is_workspace_root(dir) {
                continue;
            }
            exes.push(PathBuf::from(exe));
        }
    }
    let status = child.wait().map_err(|source| ImageError::Cargo {
        dir: dir.into(),
        source,
    })?;
    if !status.success() {
        return Err(ImageError::BuildFailed(dir.into()));
    }
    match exes.len() {
        0 => Err(ImageError::NoBinary(dir.into())),
        1 => Ok(exes.remove(0)),
        _ => Err(ImageError::ManyBinaries {
            dir: dir.into(),
            names: exes
                .iter()
                .filter_map(|e| e.file_name()?.to_str())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

fn is_workspace_root(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("Cargo.toml")).is_ok_and(|s| s.contains("[workspace]"))
}
