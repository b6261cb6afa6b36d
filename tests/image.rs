//! Images and options pvmctl must refuse, each with a clear one-line error and no panic.
mod common;

use std::path::PathBuf;

use common::*;

/// Writes `bytes` as an image file in the test's runtime dir.
fn image_file(test: &str, bytes: &[u8]) -> PathBuf {
    let path = run_dir(&format!("{test}-image")).join("image");
    std::fs::write(&path, bytes).unwrap();
    path
}

fn hello_bytes() -> Vec<u8> {
    std::fs::read(guest("hello")).unwrap()
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

/// File offset of the program header of the `n`th PT_LOAD segment.
fn load_phdr(b: &[u8], n: usize) -> usize {
    let phoff = u64_at(b, 0x20) as usize;
    let count = u16::from_le_bytes([b[0x38], b[0x39]]) as usize;
    (0..count)
        .map(|i| phoff + 56 * i)
        .filter(|&p| b[p..p + 4] == [1, 0, 0, 0])
        .nth(n)
        .unwrap()
}

/// File offset of the pvm ABI note's descriptor.
fn note_desc(b: &[u8]) -> usize {
    let header = [4u8, 0, 0, 0, 4, 0, 0, 0, 1, 0, 0, 0, b'p', b'v', b'm', 0];
    b.windows(16).position(|w| w == header).unwrap() + 16
}

/// Runs the image and expects pvmctl's own failure status with `message` in its error.
fn refused(test: &str, bytes: &[u8], opts: &[&str], message: &str) {
    let path = image_file(test, bytes);
    let mut args = vec!["run"];
    args.extend_from_slice(opts);
    args.push(path.to_str().unwrap());
    let out = pvmctl_run(test, &args);
    out.expect_status(125).expect_no_host_panic();
    assert!(out.stderr.starts_with("pvmctl: error: "), "{out:#?}");
    assert!(
        out.stderr.contains(message),
        "{test}: want {message:?} in {out:#?}"
    );
    assert_eq!(out.stderr.lines().count(), 1, "{out:#?}");
}

#[test]
fn missing_file() {
    let out = pvmctl_run("missing", &["run", "/nonexistent/pvm-image"]);
    out.expect_status(125).expect_no_host_panic();
    assert!(
        out.stderr
            .contains("/nonexistent/pvm-image: no such file or directory"),
        "{out:#?}"
    );
}

#[test]
fn not_elf() {
    refused("not-elf", b"#!/bin/sh\necho hi\n", &[], "is not an ELF file");
    refused("empty", b"", &[], "is not an ELF file");
}

#[test]
fn truncated_elf() {
    refused("truncated", &hello_bytes()[..40], &[], "malformed ELF");
}

#[test]
fn not_x86_64() {
    let mut b = hello_bytes();
    b[0x12] = 183; // EM_AARCH64
    refused("aarch64", &b, &[], "not an x86-64 64-bit image");
}

#[test]
fn not_a_static_executable() {
    let mut b = hello_bytes();
    b[0x10] = 3; // ET_DYN
    refused("et-dyn", &b, &[], "not a static executable");
}

#[test]
fn host_binary_is_refused() {
    let path = std::fs::read(env!("CARGO_BIN_EXE_pvmctl")).unwrap();
    refused("host-binary", &path, &[], "");
}

#[test]
fn abi_note_missing_or_mismatched() {
    let mut b = hello_bytes();
    let desc = note_desc(&b);
    b[desc - 4..desc - 1].copy_from_slice(b"xyz");
    refused("no-note", &b, &[], "has no pvm ABI note");
    let mut b = hello_bytes();
    b[desc..desc + 4].copy_from_slice(&99u32.to_le_bytes());
    let message = format!(
        "built for pvm ABI version 99, this monitor speaks version {}",
        pvm_abi::ABI_VERSION
    );
    refused("abi-99", &b, &[], &message);
}

#[test]
fn writable_and_executable_segment() {
    let mut b = hello_bytes();
    let text = load_phdr(&b, 0);
    b[text + 4] = 7; // PF_R | PF_W | PF_X
    refused("wx", &b, &[], "is writable and executable; pvm enforces W^X");
}

#[test]
fn segment_in_the_reserved_area() {
    let mut b = hello_bytes();
    let text = load_phdr(&b, 0);
    b[text + 16..text + 24].copy_from_slice(&0x1000u64.to_le_bytes()); // p_vaddr
    refused("reserved", &b, &[], "overlaps the monitor's reserved area");
}

#[test]
fn segment_outside_guest_memory() {
    let mut b = hello_bytes();
    let data = load_phdr(&b, 2);
    b[data + 16..data + 24].copy_from_slice(&(1u64 << 36).to_le_bytes()); // p_vaddr: 64 GiB
    refused(
        "outside",
        &b,
        &[],
        "only 0x3eff000 is available below the stack with --mem 64 MiB",
    );
}

#[test]
fn segment_contents_beyond_the_file() {
    let mut b = hello_bytes();
    let data = load_phdr(&b, 2);
    b[data + 8..data + 16].copy_from_slice(&(1u64 << 40).to_le_bytes()); // p_offset
    refused("beyond-file", &b, &[], "contents lie beyond the end of the file");
}

#[test]
fn image_larger_than_mem() {
    // Grow the data segment's bss to 24 MiB: it runs with 64 MiB and is refused with 16 MiB.
    let mut b = hello_bytes();
    let data = load_phdr(&b, 2);
    b[data + 40..data + 48].copy_from_slice(&(24u64 << 20).to_le_bytes()); // p_memsz
    let path = image_file("big-image", &b);
    pvmctl_run("big-image-ok", &["run", path.to_str().unwrap()]).expect_status(0);
    refused("big-image", &b, &["--mem", "16M"], "image needs memory up to");
}

#[test]
fn bad_mem_sizes() {
    let hello = guest("hello");
    for (mem, message) in [
        ("1M", "too small"),
        ("100000G", "too large"),
        ("lots", "invalid memory size"),
        ("65M", "not a multiple of 2 MiB"),
    ] {
        let out = pvmctl_run("bad-mem", &["run", "--mem", mem, hello.to_str().unwrap()]);
        out.expect_status(2).expect_no_host_panic();
        assert!(out.stderr.contains(message), "--mem {mem}: {out:#?}");
    }
}
