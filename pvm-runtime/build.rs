//! Writes the guest linker script `pvm.ld` to OUT_DIR and puts OUT_DIR on the link search path,
//! so a guest links with `-C link-arg=-Tpvm.ld` (see examples/.cargo/config.toml).
use std::{env, fs, path::PathBuf};

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    fs::write(out.join("pvm.ld"), include_str!("pvm.ld")).expect("write pvm.ld to OUT_DIR");
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed=pvm.ld");
}
