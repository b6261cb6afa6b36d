//! `pvmctl new NAME`: a guest app crate that is an ordinary cargo crate: `cargo build`,
//! `cargo check` and an editor work in it (its `.cargo/config.toml` holds the guest settings),
//! and `pvmctl run DIR` runs it.
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

/// Arguments of `pvmctl new`.
#[derive(Args)]
pub struct NewArgs {
    /// The crate's name, and the directory made for it.
    #[arg(value_parser = crate_name)]
    name: String,
    /// The `pvm-runtime` crate to depend on [default: the one of the checkout this pvmctl was
    /// built from].
    #[arg(long, value_name = "DIR")]
    runtime: Option<PathBuf>,
}

/// Why `pvmctl new` could not make the crate.
#[derive(Debug, thiserror::Error)]
pub enum NewError {
    /// Not a name cargo takes.
    #[error("{0:?} is not a crate name: use letters, digits, '-' and '_', starting with a letter")]
    Name(String),
    /// The directory exists.
    #[error("{0} exists already")]
    Exists(PathBuf),
    /// No runtime to depend on.
    #[error("no pvm-runtime crate at {0}: pass --runtime DIR (pvm-runtime of a pvm checkout)")]
    Runtime(PathBuf),
    /// Writing a file failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The settings a guest app is built with (the same as `examples/.cargo/config.toml` and
/// `guest_build::GUEST_RUSTFLAGS`).
const CARGO_CONFIG: &str = r#"# How a pvm guest app is built: a static executable at the pvm image base, linked with the
# runtime's pvm.ld, without the C runtime, for the baseline x86-64 CPU. `pvmctl run .` builds with
# the same settings.
[build]
target = "x86_64-unknown-linux-gnu"
rustflags = [
    "-C", "relocation-model=static",
    "-C", "target-feature=+crt-static",
    "-C", "target-cpu=x86-64",
    "-C", "link-arg=-nostdlib",
    "-C", "link-arg=-static",
    "-C", "link-arg=-Wl,--build-id=none",
    "-C", "link-arg=-Tpvm.ld",
]
"#;

const MAIN: &str = r#"//! A pVM app: `cargo build` builds it, `pvmctl run .` runs it.
#![no_std]
#![no_main]

extern crate alloc;

pvm::main!(main);

fn main() -> Result<(), pvm::Error> {
    let who = pvm::args().nth(1).unwrap_or("world");
    pvm::println!("hello, {who}, from pVM {}", pvm::id());
    Ok(())
}
"#;

/// A crate name (a command-line error otherwise).
fn crate_name(name: &str) -> Result<String, String> {
    if valid(name) {
        Ok(name.to_string())
    } else {
        Err(NewError::Name(name.to_string()).to_string())
    }
}

fn valid(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && name.len() <= 64
}

/// The runtime this pvmctl was built with, if its checkout is still there.
fn default_runtime() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../pvm-runtime")
}

/// `pvmctl new NAME`.
pub fn new(args: NewArgs) -> Result<ExitCode, NewError> {
    let dir = PathBuf::from(&args.name);
    if dir.exists() {
        return Err(NewError::Exists(dir));
    }
    let runtime = args.runtime.unwrap_or_else(default_runtime);
    let runtime = runtime
        .canonicalize()
        .ok()
        .filter(|r| r.join("Cargo.toml").is_file())
        .ok_or(NewError::Runtime(runtime))?;
    let manifest = format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2021"
publish = false

[dependencies]
pvm = {{ package = "pvm-runtime", path = "{runtime}" }}

# A freestanding guest: no host test harness.
[[bin]]
name = "{name}"
path = "src/main.rs"
test = false
bench = false

# A guest has no unwinder: panics print their message and end the pVM (status 101).
[profile.dev]
panic = "abort"

[profile.release]
panic = "abort"

# Its own workspace, even inside another one.
[workspace]
"#,
        name = args.name,
        runtime = runtime.display()
    );
    let files: [(&str, &str); 4] = [
        ("Cargo.toml", &manifest),
        (".cargo/config.toml", CARGO_CONFIG),
        ("src/main.rs", MAIN),
        (".gitignore", "/target\n"),
    ];
    for (path, text) in files {
        let path = dir.join(path);
        let write = |p: &Path| {
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(p, text)
        };
        write(&path).map_err(|source| NewError::Write { path, source })?;
    }
    println!(
        "made {dir}: `cd {dir} && cargo build` builds it (an editor checks it too), `pvmctl run {dir}` runs it",
        dir = dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crate_names() {
        assert!(valid("app") && valid("my-app_2"));
        assert!(!valid("") && !valid("2app") && !valid("a/b") && !valid("../x") && !valid("a b"));
    }
}
