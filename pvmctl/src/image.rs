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
    /// The crate built no executable (or library).
    #[error("{0} builds no {1}")]
    NoBinary(PathBuf, &'static str),
    /// The crate builds several executables (or libraries).
    #[error("{dir} builds several {what} ({names}); name one of them by path")]
    ManyBinaries {
        /// What it builds.
        what: &'static str,
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
    Ok(Image::open(&resolve_file(path, Artifact::App)?)?)
}

/// What a guest crate builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Artifact {
    /// An app (a static executable).
    App,
    /// A library (a cdylib).
    Library,
}

impl Artifact {
    fn what(self) -> &'static str {
        match self {
            Artifact::App => "executable",
            Artifact::Library => "library (cdylib)",
        }
    }
}

/// The file `path` names: itself, or what the guest crate in the directory `path` builds.
pub fn resolve_file(path: &Path, artifact: Artifact) -> Result<PathBuf, ImageError> {
    // One stat: whether it is there, and a directory.
    let Ok(meta) = std::fs::metadata(path) else {
        return Err(ImageError::NotFound(path.into()));
    };
    if meta.is_dir() {
        return build_crate(path, artifact);
    }
    Ok(path.into())
}

/// Builds the guest crate in `dir` (release) and returns its executable or library.
fn build_crate(dir: &Path, artifact: Artifact) -> Result<PathBuf, ImageError> {
    if !dir.join("Cargo.toml").is_file() {
        return Err(ImageError::NotACrate(dir.into()));
    }
    let cargo = std::env::var_os("CARGO").map_or_else(|| PathBuf::from("cargo"), PathBuf::from);
    let mut cmd = match artifact {
        Artifact::App => guest_build::cargo_command(&cargo, dir),
        Artifact::Library => guest_build::cargo_lib_command(&cargo, dir),
    };
    let mut child = cmd
        .args(["--message-format", "json-render-diagnostics"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| ImageError::Cargo {
            dir: dir.into(),
            source,
        })?;
    let progress = child
        .stderr
        .take()
        .map(|err| std::thread::spawn(move || relay_progress(err)));
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
            let file = match artifact {
                Artifact::App => msg["executable"].as_str().map(str::to_string),
                Artifact::Library => {
                    let cdylib = msg["target"]["kind"]
                        .as_array()
                        .is_some_and(|k| k.iter().any(|k| k == "cdylib"));
                    let so = msg["filenames"]
                        .as_array()
                        .and_then(|f| f.iter().filter_map(|f| f.as_str()).find(|f| f.ends_with(".so")));
                    so.filter(|_| cdylib).map(str::to_string)
                }
            };
            let Some(exe) = file else {
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
    if let Some(p) = progress {
        let _ = p.join();
    }
    if !status.success() {
        return Err(ImageError::BuildFailed(dir.into()));
    }
    match exes.len() {
        0 => Err(ImageError::NoBinary(dir.into(), artifact.what())),
        1 => Ok(exes.remove(0)),
        _ => Err(ImageError::ManyBinaries {
            what: artifact.what(),
            dir: dir.into(),
            names: exes
                .iter()
                .filter_map(|e| e.file_name()?.to_str())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// Passes cargo's messages on to stderr once it does something (compiles, downloads, warns,
/// fails); a build with nothing to do stays silent (no `Finished` line before every run).
fn relay_progress(err: impl std::io::Read) {
    let mut held = Vec::new();
    let mut relaying = false;
    for line in BufReader::new(err).lines().map_while(Result::ok) {
        let quiet = ["Finished ", "Blocking waiting for file lock"];
        if !relaying && quiet.iter().any(|q| line.trim_start().starts_with(q)) {
            held.push(line);
            continue;
        }
        if !relaying {
            relaying = true;
            for l in held.drain(..) {
                eprintln!("{l}");
            }
        }
        eprintln!("{line}");
    }
}

fn is_workspace_root(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("Cargo.toml")).is_ok_and(|s| s.contains("[workspace]"))
}
