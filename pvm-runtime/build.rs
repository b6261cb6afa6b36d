//! Writes the guest linker scripts to OUT_DIR and puts OUT_DIR on the link search path, so an
//! app links with `-C link-arg=-Tpvm.ld` (see examples/.cargo/config.toml) and a library with
//! `-C link-arg=-Tpvmlib.ld` (examples/libs/.cargo/config.toml).
use std::{env, fs, path::PathBuf};

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    for script in ["pvm.ld", "pvmlib.ld"] {
        let text = fs::read_to_string(script).expect("read a linker script");
        fs::write(out.join(script), text).expect("write a linker script to OUT_DIR");
        println!("cargo:rerun-if-changed={script}");
    }
    println!("cargo:rustc-link-search={}", out.display());
}
