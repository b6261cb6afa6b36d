//! Building guest crates: the settings every pvm guest is built with, shared by `pvmctl run DIR`
//! and pvmctl's build script (which builds the examples). Only std here: build.rs includes it.
use std::path::Path;
use std::process::Command;

/// The only target guests are built for (a freestanding layout, see examples/.cargo/config.toml).
pub const GUEST_TARGET: &str = "x86_64-unknown-linux-gnu";

/// rustflags for guests: a static non-PIE executable at the pvm image base, linked with the
/// runtime's `pvm.ld`, for the baseline x86-64 CPU (PVM's CPUID lacks SSE3 and up).
pub const GUEST_RUSTFLAGS: &[&str] = &[
    "-Crelocation-model=static",
    "-Ctarget-feature=+crt-static",
    "-Ctarget-cpu=x86-64",
    "-Clink-arg=-nostdlib",
    "-Clink-arg=-static",
    "-Clink-arg=-Wl,--build-id=none",
    "-Clink-arg=-Tpvm.ld",
];

/// A `cargo build --release` of the guest crate or workspace in `dir`, with the guest settings
/// forced (so any crate depending on `pvm` builds, with or without a `.cargo/config.toml`) and
/// the variables an outer cargo exports removed (they would override the guest settings).
pub fn cargo_command(cargo: &Path, dir: &Path) -> Command {
    let mut cmd = Command::new(cargo);
    // Cargo finds config files from the current directory, not from --manifest-path.
    cmd.current_dir(dir)
        .args(["build", "--release", "--target", GUEST_TARGET])
        .args([
            "--config",
            "profile.release.panic=\"abort\"",
            "--config",
            "profile.dev.panic=\"abort\"",
        ])
        // With --target given, RUSTFLAGS reach only the guest, not build scripts or proc macros.
        .env("RUSTFLAGS", GUEST_RUSTFLAGS.join(" "));
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// rustflags for guest libraries: a shared object for the baseline x86-64 CPU, without the C
/// runtime, laid out by the runtime's `pvmlib.ld` (code and read-only data first, writable data
/// at +1 GiB).
pub const LIB_RUSTFLAGS: &[&str] = &[
    "-Ctarget-cpu=x86-64",
    "-Clink-arg=-nostdlib",
    "-Clink-arg=-Wl,--build-id=none",
    "-Clink-arg=-Tpvmlib.ld",
];

/// A `cargo build --release` of the guest library crate or workspace in `dir` (a cdylib
/// depending on `pvm` with its `library` feature), with the library settings forced.
pub fn cargo_lib_command(cargo: &Path, dir: &Path) -> Command {
    let mut cmd = cargo_command(cargo, dir);
    cmd.env("RUSTFLAGS", LIB_RUSTFLAGS.join(" "));
    cmd
}
