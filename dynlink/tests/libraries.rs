//! Parsing, checking and linking real shared objects, built here with the system C compiler and
//! pvm's linker script (`pvm-runtime/pvmlib.ld`), and refusing broken or hostile ones.
use std::path::{Path, PathBuf};
use std::process::Command;

use pvm_abi::layout::{LIB_DATA_OFFSET, PAGE_SIZE};
use pvm_dynlink::{Library, LinkError, ParseError};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../pvm-runtime/pvmlib.ld")
}

/// Compiles C `source` into a shared object with `flags` (and pvmlib.ld unless `no_script`).
/// Under Miri, which cannot run a compiler, reads the one a native run of these tests built.
fn build(name: &str, source: &str, flags: &[&str], use_script: bool) -> Vec<u8> {
    if cfg!(miri) {
        return prebuilt(&format!("lib{name}.so"));
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dynlink-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join(format!("{name}.c"));
    let out = dir.join(format!("lib{name}.so"));
    std::fs::write(&src, source).unwrap();
    let mut cmd = Command::new("cc");
    cmd.args(["-O2", "-shared", "-nostdlib", "-o"])
        .arg(&out)
        .arg(&src)
        .args(flags);
    if use_script {
        cmd.arg(format!("-Wl,-T,{}", script().display()));
    }
    let status = cmd.status().expect("a C compiler (cc) is needed for these tests");
    assert!(status.success(), "cc failed for {name}");
    std::fs::read(&out).unwrap()
}

const GOOD: &str = r#"
extern long pvm_write(unsigned long fd, const void *p, unsigned long len);
extern void *pvm_alloc(unsigned long size, unsigned long align);
const char pvm_library_version[] = "1.4.2";
static int counter = 7;
static const char *const names[] = {"x", "yy", "zzz"};
const char *const *volatile names_ptr = names;
int bump(int by) { counter += by; return counter; }
long hello(int i) { return pvm_write(1, names_ptr[i], 2); }
void *get(void) { return pvm_alloc(16, 8); }
"#;

/// `file` as a native run of these tests left it in `$CARGO_TARGET_TMPDIR/dynlink-tests`: for
/// Miri, named by `PVM_DYNLINK_TEST_LIBS` (`.ci/run` sets it after that run).
fn prebuilt(file: &str) -> Vec<u8> {
    let dir = std::env::var_os("PVM_DYNLINK_TEST_LIBS").expect(
        "under Miri these tests read the libraries a native `cargo test -p pvm-dynlink` built: \
         set PVM_DYNLINK_TEST_LIBS to its target/tmp/dynlink-tests",
    );
    let path = Path::new(&dir).join(file);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn resolver(name: &str) -> Option<u64> {
    match name {
        "pvm_write" => Some(0x20_1000),
        "pvm_alloc" => Some(0x20_2000),
        _ => None,
    }
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
}

#[test]
fn linker_script_matches_the_abi_layout() {
    let text = std::fs::read_to_string(script()).unwrap();
    assert!(
        text.contains(&format!(". = {LIB_DATA_OFFSET:#x};")),
        "pvmlib.ld must put data at LIB_DATA_OFFSET"
    );
}

#[test]
fn a_c_library_parses_links_and_resolves() {
    let bytes = build("good", GOOD, &["-fPIC"], true);
    let lib = Library::parse(&bytes).unwrap();
    assert_eq!(lib.version(), Some("1.4.2"));
    let exports: Vec<_> = lib.exports().map(|(n, _)| n.to_string()).collect();
    for name in ["bump", "hello", "get", "names_ptr", "pvm_library_version"] {
        assert!(exports.iter().any(|e| e == name), "{name} exported: {exports:?}");
    }
    let layout = lib.layout();
    assert!(layout.shared_end > 0 && layout.shared_end % PAGE_SIZE == 0);
    assert!(layout.relro_end > layout.shared_end, "a RELRO part (GOT)");
    assert_eq!(layout.data_start, LIB_DATA_OFFSET);

    let base = 0x10_4000_0000;
    let linked = lib.link(base, resolver).unwrap();
    // Every relocation landed: its target holds its value.
    let mut checked = 0;
    for r in lib.relocs() {
        let (part, start) = if r.offset >= layout.data_start {
            (&linked.data, layout.data_start)
        } else {
            (&linked.relro, layout.shared_end)
        };
        let got = u64_at(part, (r.offset - start) as usize);
        let want = match r.kind {
            pvm_dynlink::Kind::Relative => base.wrapping_add_signed(r.addend),
            pvm_dynlink::Kind::Symbol(i) => {
                let sym = &lib.symbols()[i];
                match sym.value {
                    Some(v) => base + v,
                    None => resolver(sym.name).unwrap(),
                }
                .wrapping_add_signed(r.addend)
            }
        };
        assert_eq!(got, want, "relocation at {:#x}", r.offset);
        checked += 1;
    }
    assert!(
        checked >= 3,
        "GOT entries for pvm_write, pvm_alloc and the names table"
    );
    // The shared part depends on the file only.
    assert_eq!(lib.shared_image(), lib.shared_image());
    assert_eq!(lib.shared_image().len() as u64, layout.shared_end);
}

#[test]
fn unresolved_imports_are_named() {
    let bytes = build("good2", GOOD, &["-fPIC"], true);
    let lib = Library::parse(&bytes).unwrap();
    let err = lib.link(0x10_4000_0000, |_| None).unwrap_err();
    assert_eq!(
        err,
        LinkError::Unresolved(vec!["pvm_alloc".into(), "pvm_write".into()])
    );
    assert!(err.to_string().contains("pvm_alloc, pvm_write"));
    assert_eq!(
        lib.link(0x10_4000_0800, resolver).unwrap_err(),
        LinkError::Misaligned(0x10_4000_0800)
    );
}

#[test]
fn a_library_without_pvmlib_ld_is_refused_with_a_hint() {
    let bytes = build("noscript", GOOD, &["-fPIC"], false);
    let err = Library::parse(&bytes).unwrap_err();
    assert!(matches!(err, ParseError::Layout { .. }), "{err}");
    assert!(err.to_string().contains("pvmlib.ld"));
}

#[test]
fn tls_is_refused() {
    let src = "__thread int t; int get(void) { return t; }";
    let bytes = build("tls", src, &["-fPIC"], true);
    assert!(matches!(Library::parse(&bytes), Err(ParseError::Tls(_))));
}

#[test]
fn constructors_are_refused() {
    let src = "static int x; __attribute__((constructor)) static void init(void) { x = 1; } int get(void) { return x; }";
    let bytes = build("ctor", src, &["-fPIC"], true);
    assert!(matches!(Library::parse(&bytes), Err(ParseError::Initializers(_))));
}

#[test]
fn ifuncs_are_refused() {
    let src = "static int impl(void) { return 1; } static void *pick(void) { return impl; } int f(void) __attribute__((ifunc(\"pick\")));";
    let bytes = build("ifunc", src, &["-fPIC"], true);
    let err = Library::parse(&bytes).unwrap_err();
    assert!(
        matches!(
            err,
            ParseError::Ifunc(_)
                | ParseError::UnsupportedRelocation {
                    kind: "IRELATIVE",
                    ..
                }
        ),
        "{err}"
    );
}

/// Offset of program header `index`'s field at `field` (64-bit ELF).
fn phdr_field(bytes: &[u8], index: usize, field: usize) -> usize {
    let phoff = u64_at(bytes, 0x20) as usize;
    let phentsize = u16::from_le_bytes([bytes[0x36], bytes[0x37]]) as usize;
    phoff + index * phentsize + field
}

#[test]
fn writable_and_executable_segments_are_refused() {
    let mut bytes = build("wx", GOOD, &["-fPIC"], true);
    // Segment 1 is the text (PHDRS order in pvmlib.ld): make it R+W+X.
    let flags = phdr_field(&bytes, 1, 4);
    bytes[flags] = 7;
    assert!(matches!(
        Library::parse(&bytes),
        Err(ParseError::WritableExecutable { .. })
    ));
}

#[test]
fn a_relocation_into_the_shared_part_is_a_text_relocation() {
    let bytes = build("textrel", GOOD, &["-fPIC"], true);
    let lib = Library::parse(&bytes).unwrap();
    assert!(!lib.relocs().is_empty());
    // Point the first relocation of the file's .rela.dyn (r_offset is its first field) at the
    // code (offset 0x1000).
    let rela = goblin::elf::Elf::parse(&bytes)
        .unwrap()
        .dynamic
        .unwrap()
        .info
        .rela;
    let mut bytes = bytes.clone();
    bytes[rela..rela + 8].copy_from_slice(&0x1000u64.to_le_bytes());
    assert!(matches!(
        Library::parse(&bytes),
        Err(ParseError::TextRelocation { offset: 0x1000, .. })
    ));
}

#[test]
fn text_relocation_flags_are_refused() {
    let mut bytes = build("dtflags", GOOD, &["-fPIC"], true);
    // Rewrite the DT_NULL ending the dynamic section into DT_TEXTREL (22).
    let lib_dyn = {
        let elf = goblin::elf::Elf::parse(&bytes).unwrap();
        let p = elf
            .program_headers
            .iter()
            .find(|p| p.p_type == goblin::elf::program_header::PT_DYNAMIC)
            .unwrap();
        let dyns = &elf.dynamic.as_ref().unwrap().dyns;
        let null = dyns.iter().position(|d| d.d_tag == 0).unwrap_or(dyns.len());
        p.p_offset as usize + null * 16
    };
    bytes[lib_dyn..lib_dyn + 8].copy_from_slice(&22u64.to_le_bytes());
    let err = Library::parse(&bytes).unwrap_err();
    assert_eq!(err, ParseError::TextRelocations);
}

#[test]
fn truncated_and_garbage_files_are_refused() {
    let bytes = build("trunc", GOOD, &["-fPIC"], true);
    for len in [0, 4, 63, 64, 200, bytes.len() / 2, bytes.len() - 1] {
        assert!(Library::parse(&bytes[..len]).is_err(), "truncated to {len}");
    }
    assert!(matches!(
        Library::parse(b"#!/bin/sh\necho hi\n"),
        Err(ParseError::Malformed(_))
    ));
}

#[test]
fn executables_are_not_libraries() {
    if cfg!(miri) {
        let bytes = prebuilt("exe");
        assert!(matches!(
            Library::parse(&bytes),
            Err(ParseError::NotSharedObject(_))
        ));
        return;
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dynlink-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("exe.c");
    std::fs::write(&src, "void _start(void) { for (;;) {} }").unwrap();
    let out = dir.join("exe");
    let ok = Command::new("cc")
        .args(["-static", "-nostdlib", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let bytes = std::fs::read(&out).unwrap();
    assert!(matches!(
        Library::parse(&bytes),
        Err(ParseError::NotSharedObject(_))
    ));
}

/// The exports and relocations as the parser sees them, for comparing two builds.
fn summary(lib: &Library<'_>) -> (Vec<(String, u64)>, usize) {
    let mut exports: Vec<_> = lib.exports().map(|(n, v)| (n.to_string(), v)).collect();
    exports.sort();
    (exports, lib.relocs().len())
}

#[test]
fn the_dynamic_part_is_all_the_loader_reads() {
    // The loader reads the dynamic section, not section headers: a library without them (as
    // `sstrip` leaves it) loads the same.
    let bytes = build("noshdr", GOOD, &["-fPIC"], true);
    let full = summary(&Library::parse(&bytes).unwrap());
    let mut stripped = bytes.clone();
    stripped[0x28..0x30].fill(0); // e_shoff
    stripped[0x3c..0x40].fill(0); // e_shnum, e_shstrndx
    assert_eq!(summary(&Library::parse(&stripped).unwrap()), full);
    // Symbol counts come from the hash table: the GNU one, or the SysV one alone.
    let sysv = build("sysv", GOOD, &["-fPIC", "-Wl,--hash-style=sysv"], true);
    assert_eq!(summary(&Library::parse(&sysv).unwrap()), full);
    // A hash table that points past the file is refused, not read.
    let lib = goblin::elf::Elf::parse(&bytes).unwrap();
    let hash = lib.dynamic.as_ref().unwrap().info.gnu_hash.unwrap() as usize;
    let mut broken = bytes.clone();
    broken[hash..hash + 4].copy_from_slice(&u32::MAX.to_le_bytes()); // nbuckets
    assert!(matches!(Library::parse(&broken), Err(ParseError::Malformed(_))));
}
