//! Builds the example guests (the nested `examples/` workspace, and its libraries'
//! `examples/libs/`) as part of the normal build, and tells pvmctl's tests where they are
//! (`PVM_GUEST_DIR`, `PVM_GUEST_LIB_DIR`).
use std::path::{Path, PathBuf};
use std::{env, fs};

#[allow(dead_code)]
#[path = "src/guest_build.rs"]
mod guest_build;

/// Reruns this script when a file under `dir` changes, but not for build outputs: cargo scans a
/// directory named in `rerun-if-changed` whole, `target/` included, so only files are named
/// (a new source file is found through the file that declares it).
fn watch(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.file_name().is_some_and(|n| n == "target") {
            continue;
        }
        if path.is_dir() {
            watch(&path);
        } else {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
}

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest
        .parent()
        .expect("pvmctl lives in the workspace root")
        .to_path_buf();
    let examples = root.join("examples");
    for dir in ["examples", "pvm-runtime", "abi", "ipc"] {
        watch(&root.join(dir));
    }
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let target_dir = out.join("guests");
    let cargo = PathBuf::from(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    let status = guest_build::cargo_command(&cargo, &examples)
        .args(["--workspace", "--target-dir"])
        .arg(&target_dir)
        .status()
        .expect("run cargo for the example guests");
    if !status.success() {
        panic!(
            "building the example guests in {} failed ({status})",
            examples.display()
        );
    }
    let bins = target_dir.join(guest_build::GUEST_TARGET).join("release");
    println!("cargo:rustc-env=PVM_GUEST_DIR={}", bins.display());

    // The example libraries: a workspace of their own (other settings), its own target dir.
    let libs = examples.join("libs");
    let lib_target_dir = out.join("guest-libs");
    let status = guest_build::cargo_lib_command(&cargo, &libs)
        .args(["--workspace", "--target-dir"])
        .arg(&lib_target_dir)
        .status()
        .expect("run cargo for the example libraries");
    if !status.success() {
        panic!(
            "building the example libraries in {} failed ({status})",
            libs.display()
        );
    }
    let lib_dir = lib_target_dir.join(guest_build::GUEST_TARGET).join("release");
    println!("cargo:rustc-env=PVM_GUEST_LIB_DIR={}", lib_dir.display());
}
