//! Libraries in live pVMs on real KVM: load, call, close; refusals; sharing between pVMs; fork;
//! online updates and every way one rolls back.
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// Trusts `files` in the test's trust store.
fn trust(test: &str, files: &[&Path]) {
    let mut args = vec!["lib", "trust"];
    let paths: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    args.extend(paths.iter().map(String::as_str));
    ctl(test, &args).expect_status(0);
}

fn lib_opt(name: &str, file: &Path) -> String {
    format!("--lib={name}={}", file.display())
}

/// Builds C `source` into a library with pvm's linker script (and `extra` cc flags).
fn c_library(test: &str, name: &str, source: &str, extra: &[&str]) -> PathBuf {
    let dir = run_dir(test).join("c");
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join(format!("{name}.c"));
    let out = dir.join(format!("lib{name}.so"));
    std::fs::write(&src, source).unwrap();
    let script = examples_dir().join("../pvm-runtime/pvmlib.ld");
    let ok = Command::new("cc")
        .args(["-O2", "-fPIC", "-shared", "-nostdlib", "-o"])
        .arg(&out)
        .arg(&src)
        .arg(format!("-Wl,-T,{}", script.display()))
        .args(extra)
        .status()
        .expect("a C compiler (cc) builds the test libraries")
        .success();
    assert!(ok, "cc failed for {name}");
    out
}

/// Rewrites `file` with `edit` applied to its bytes (a copy in the test's directory).
fn patched(test: &str, file: &Path, name: &str, edit: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let mut bytes = std::fs::read(file).unwrap();
    edit(&mut bytes);
    let out = run_dir(test).join(name);
    std::fs::write(&out, bytes).unwrap();
    out
}

/// Offset of the flags of program header `index` (64-bit ELF).
fn phdr_flags(bytes: &[u8], index: usize) -> usize {
    let phoff = u64::from_le_bytes(bytes[0x20..0x28].try_into().unwrap()) as usize;
    let size = u16::from_le_bytes([bytes[0x36], bytes[0x37]]) as usize;
    phoff + index * size + 4
}

fn kv(out: &str, key: &str) -> Option<String> {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::to_string)
}

#[test]
fn a_library_loads_links_calls_and_closes() {
    let t = "dl-basic";
    let greet = guest_lib("greet");
    trust(t, &[&greet]);
    let out = run_guest(t, &[&lib_opt("greet", &greet)], "dltest", &["basic"]);
    out.expect_status(0).expect_no_host_panic();
    let o = &out.stdout;
    assert_eq!(kv(o, "version").as_deref(), Some("1.0.0"), "{out:#?}");
    assert_eq!(kv(o, "add").as_deref(), Some("42"));
    assert_eq!(
        kv(o, "calls").as_deref(),
        Some("2"),
        "state in the library's data"
    );
    assert!(
        o.contains("hello from libgreet 1.0.0: 10 numbers"),
        "library output: {o}"
    );
    assert_eq!(
        kv(o, "hello").as_deref(),
        Some("55"),
        "the app's heap from the library"
    );
    assert_eq!(
        kv(o, "via-app").as_deref(),
        Some("42"),
        "a call back into the app's export"
    );
    assert_eq!(kv(o, "missing").as_deref(), Some("refused"));
    assert_eq!(kv(o, "same-handle").as_deref(), Some("true"));
    assert_eq!(
        kv(o, "after-one-close").as_deref(),
        Some("2"),
        "still loaded after one close"
    );
    assert_eq!(
        kv(o, "reopened-calls").as_deref(),
        Some("0"),
        "unloaded at the last close"
    );
    assert_no_leaks(t);
}

#[test]
fn a_closed_handle_stops_the_pvm_with_a_clear_message() {
    let t = "dl-closed";
    let greet = guest_lib("greet");
    trust(t, &[&greet]);
    let out = run_guest(
        t,
        &[&lib_opt("greet", &greet)],
        "dltest",
        &["closed-call", "greet"],
    );
    out.expect_status(101).expect_no_host_panic();
    assert!(
        out.stderr
            .contains("call through a handle of a closed library (greet_calls)"),
        "{out:#?}"
    );
    assert_no_leaks(t);
}

#[test]
fn a_forked_child_keeps_its_libraries_with_private_data() {
    let t = "dl-fork";
    let greet = guest_lib("greet");
    trust(t, &[&greet]);
    let out = run_guest(t, &[&lib_opt("greet", &greet)], "dltest", &["fork"]);
    out.expect_status(0).expect_no_host_panic();
    assert_eq!(kv(&out.stdout, "child-calls").as_deref(), Some("3"), "{out:#?}");
    assert_eq!(
        kv(&out.stdout, "parent-calls").as_deref(),
        Some("1"),
        "copy-on-write data"
    );
    assert_eq!(kv(&out.stdout, "child").as_deref(), Some("exited with code 0"));
    assert_no_leaks(t);
}

/// Runs `dltest open greet` with `--lib greet=FILE` (or other options): the open's outcome.
fn open_with(t: &str, opts: &[&str], name: &str) -> Output {
    let out = run_guest(t, opts, "dltest", &["open", name]);
    out.expect_no_host_panic();
    out
}

fn expect_refused(out: &Output, kind: &str, reason: &str) {
    out.expect_status(1);
    assert_eq!(kv(&out.stdout, "open-error").as_deref(), Some(kind), "{out:#?}");
    let message = kv(&out.stdout, "open-message").unwrap_or_default();
    assert!(
        message.contains(reason),
        "message {message:?} should say {reason:?}"
    );
}

#[test]
fn bad_libraries_are_refused_with_the_reason_and_the_pvm_goes_on() {
    let t = "dl-refusals";
    let greet = guest_lib("greet");
    // Untrusted: nothing trusted yet.
    expect_refused(
        &open_with(t, &[&lib_opt("greet", &greet)], "greet"),
        "not-trusted",
        "is not trusted",
    );
    trust(t, &[&greet]);
    // Tampered after it was trusted: another digest.
    let tampered = patched(t, &greet, "tampered.so", |b| {
        let last = b.len() - 1;
        b[last] ^= 0xff;
    });
    expect_refused(
        &open_with(t, &[&lib_opt("greet", &tampered)], "greet"),
        "not-trusted",
        "is not trusted",
    );
    // Every malformed one below is trusted, so the loader's own checks are what refuse it.
    let cases: Vec<(&str, PathBuf, &str)> = vec![
        (
            "wx",
            patched(t, &greet, "wx.so", |b| {
                // Program header 1 is the code (pvmlib.ld's order): make it R+W+X.
                let at = phdr_flags(b, 1);
                b[at] = 7;
            }),
            "writable and executable",
        ),
        (
            "textrel",
            c_library(
                t,
                "textrel",
                "extern int counter; int get(void) { return counter; }",
                &["-fno-PIC", "-mcmodel=large", "-Wl,-z,notext"],
            ),
            "text relocations",
        ),
        (
            "unresolved",
            c_library(
                t,
                "unresolved",
                "extern long no_such_function(long); long f(long x) { return no_such_function(x); }",
                &[],
            ),
            "unresolved symbol: no_such_function",
        ),
        (
            "truncated",
            patched(t, &greet, "truncated.so", |b| b.truncate(b.len() / 3)),
            "not a valid ELF file",
        ),
        (
            "tls",
            c_library(t, "tls", "__thread int t; int get(void) { return t; }", &[]),
            "thread-local storage",
        ),
        (
            "noscript",
            {
                let dir = run_dir(t).join("c");
                std::fs::create_dir_all(&dir).unwrap();
                let src = dir.join("plain.c");
                std::fs::write(&src, "static int n; int bump(void) { return ++n; }").unwrap();
                let out = dir.join("libplain.so");
                assert!(Command::new("cc")
                    .args(["-O2", "-fPIC", "-shared", "-nostdlib", "-o"])
                    .arg(&out)
                    .arg(&src)
                    .status()
                    .unwrap()
                    .success());
                out
            },
            "pvmlib.ld",
        ),
    ];
    for (name, file, reason) in &cases {
        trust(t, &[file]);
        let out = open_with(t, &[&lib_opt("greet", file)], "greet");
        out.expect_status(1);
        let kind = kv(&out.stdout, "open-error");
        assert_eq!(kind.as_deref(), Some("invalid"), "{name}: {out:#?}");
        let message = kv(&out.stdout, "open-message").unwrap_or_default();
        assert!(
            message.contains(reason),
            "{name}: {message:?} should say {reason:?}"
        );
    }
    // Names the operator did not allow, and names that are paths.
    expect_refused(
        &open_with(t, &[&lib_opt("greet", &greet)], "other"),
        "not-found",
        "no library \"other\" is allowed",
    );
    expect_refused(
        &open_with(
            t,
            &[&format!("--lib-dir={}", greet.parent().unwrap().display())],
            "../greet",
        ),
        "bad-name",
        "library name",
    );
    // The directory form finds libgreet.so by its name.
    let out = open_with(
        t,
        &[&format!("--lib-dir={}", greet.parent().unwrap().display())],
        "greet",
    );
    out.expect_status(0);
    assert_eq!(kv(&out.stdout, "opened").as_deref(), Some("1.0.0"));
    assert_no_leaks(t);
}

/// The mappings of `pid` whose file is `file`: (Rss, Pss) in KiB.
fn mapping_memory(pid: u32, file: &Path) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let name = file.display().to_string();
    let mut lines = text.lines();
    let mut found = None;
    while let Some(line) = lines.next() {
        if !line.ends_with(&name) {
            continue;
        }
        let (mut rss, mut pss) = (0, 0);
        for l in lines.by_ref() {
            let num = |l: &str| l.split_whitespace().nth(1).and_then(|n| n.parse::<u64>().ok());
            if l.starts_with("Rss:") {
                rss = num(l)?;
            } else if l.starts_with("Pss:") {
                pss = num(l)?;
            } else if l.starts_with("VmFlags") {
                break;
            }
        }
        found = Some((rss, pss));
    }
    found
}

#[test]
fn two_pvms_share_one_copy_of_a_librarys_code() {
    let t = "dl-share";
    let greet = guest_lib("greet");
    trust(t, &[&greet]);
    let opt = lib_opt("greet", &greet);
    let mut a = Running::start(t, &[&opt], "dltest", &["hold"]);
    let mut b = Running::start(t, &[&opt], "dltest", &["hold"]);
    a.expect("ready");
    b.expect("ready");
    // One file holds the shared part; both monitors map it.
    let store: Vec<PathBuf> = std::fs::read_dir(run_dir(t).join("lib"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(store.len(), 1, "one shared copy: {store:?}");
    let (ra, pa) = mapping_memory(a.id(), &store[0]).expect("pVM a maps the shared part");
    let (rb, pb) = mapping_memory(b.id(), &store[0]).expect("pVM b maps the shared part");
    assert!(ra > 0 && rb > 0, "the code is resident: {ra} {rb}");
    // Proportional share: each pays half of the pages both use.
    assert!(
        pa < ra && pb < rb,
        "shared pages count half: Rss {ra}/{rb}, Pss {pa}/{pb}"
    );
    let list = ctl(t, &["lib", "list", "--json"]);
    list.expect_status(0);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&list.stdout).unwrap();
    assert_eq!(rows.len(), 2, "{rows:#?}");
    for r in &rows {
        assert_eq!(r["shared_by"], 2, "{r:#?}");
        assert_eq!(r["version"], "1.0.0");
        assert_eq!(r["name"], "greet");
    }
    ctl(t, &["kill", &a.id().to_string(), &b.id().to_string()]).expect_status(0);
    a.finish();
    b.finish();
    assert_no_leaks(t);
}

/// `pvmctl lib update` of `target`'s library `lib` to `file`.
fn update(t: &str, target: u32, lib: &str, file: &Path, extra: &[&str]) -> Output {
    let id = target.to_string();
    let file = file.display().to_string();
    let mut args = vec!["lib", "update"];
    args.extend_from_slice(extra);
    args.extend([id.as_str(), lib, file.as_str()]);
    let out = ctl(t, &args);
    out.expect_no_host_panic();
    out
}

/// The version `lib list` shows for `id`'s library `lib`.
fn listed_version(t: &str, id: u32, lib: &str) -> String {
    let out = ctl(t, &["lib", "list", "--json", &id.to_string()]);
    out.expect_status(0);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out.stdout).unwrap();
    rows.iter()
        .find(|r| r["name"] == lib)
        .map(|r| r["version"].as_str().unwrap_or("-").to_string())
        .unwrap_or_default()
}

#[test]
fn an_update_switches_a_serving_pvm_and_keeps_its_handles() {
    let t = "dl-update";
    let (v1, v2) = (guest_lib("greet"), guest_lib("greet2"));
    trust(t, &[&v1, &v2]);
    let mut pvm = Running::start(t, &[&lib_opt("greet", &v1)], "dltest", &["serve"]);
    assert_eq!(pvm.expect("serving version="), "1.0.0");
    let out = update(t, pvm.id(), "greet", &v2, &[]);
    out.expect_status(0);
    assert!(out.stdout.contains("greet 1.0.0 -> 2.0.0 (paused"), "{out:#?}");
    assert_eq!(
        pvm.expect("now version="),
        "2.0.0",
        "the handles call the new version"
    );
    assert_eq!(listed_version(t, pvm.id(), "greet"), "2.0.0");
    // A downgrade is refused unless asked for.
    let out = update(t, pvm.id(), "greet", &v1, &[]);
    out.expect_status(1);
    assert!(out.stderr.contains("older than the loaded 2.0.0"), "{out:#?}");
    update(t, pvm.id(), "greet", &v1, &["--allow-downgrade"]).expect_status(0);
    assert_eq!(pvm.expect("now version="), "1.0.0");
    ctl(t, &["kill", &pvm.id().to_string()]).expect_status(0);
    pvm.finish();
    assert_no_leaks(t);
}

/// A C "greet 3.0.0" whose `pvm_state_restore` has `body`; it exports greet_add like greet.
fn greet3(t: &str, name: &str, restore_body: &str) -> PathBuf {
    let source = format!(
        r#"
extern void pvm_panic(const char *msg, unsigned long len) __attribute__((noreturn));
const char pvm_library_version[] = "3.0.0";
unsigned long greet_add(unsigned long a, unsigned long b) {{ return a + b; }}
int pvm_state_restore(void *state, const char *from) {{ {restore_body} }}
"#
    );
    c_library(t, name, &source, &[])
}

#[test]
fn every_failed_update_rolls_back_and_the_pvm_keeps_serving() {
    let t = "dl-rollback";
    let v1 = guest_lib("greet");
    let no_add = c_library(
        t,
        "noadd",
        "const char pvm_library_version[] = \"3.0.0\"; int pvm_state_restore(void *s, const char *f) { return 0; } int other(void) { return 1; }",
        &[],
    );
    let no_restore = c_library(
        t,
        "norestore",
        "const char pvm_library_version[] = \"3.0.0\"; unsigned long greet_add(unsigned long a, unsigned long b) { return a + b; }",
        &[],
    );
    let fails = greet3(t, "fails", "return 7;");
    let panics = greet3(t, "panics", "pvm_panic(\"restore refused\", 15);");
    let loops = greet3(t, "loops", "for (;;) { __asm__ volatile(\"\"); }");
    let untrusted = greet3(t, "untrusted", "return 0;");
    let garbage = run_dir(t).join("garbage.so");
    std::fs::write(&garbage, b"\x7fELF garbage").unwrap();
    trust(t, &[&v1, &no_add, &no_restore, &fails, &panics, &loops, &garbage]);

    let mut pvm = Running::start(t, &[&lib_opt("greet", &v1)], "dltest", &["serve"]);
    assert_eq!(pvm.expect("serving version="), "1.0.0");
    let cases: [(&Path, &str); 7] = [
        (&no_add, "lacks a symbol the pVM holds a handle on"),
        (&no_restore, "cannot restore it"),
        (&fails, "pvm_state_restore failed (7)"),
        (&panics, "a state hook panicked"),
        (&loops, "ran longer than 1000 ms and was stopped"),
        (&untrusted, "is not trusted"),
        (&garbage, "not a valid ELF file"),
    ];
    for (file, reason) in cases {
        let out = update(t, pvm.id(), "greet", file, &[]);
        out.expect_status(1);
        assert!(out.stderr.contains(reason), "{}: {out:#?}", file.display());
        assert_eq!(
            listed_version(t, pvm.id(), "greet"),
            "1.0.0",
            "{}",
            file.display()
        );
    }
    // Still serving the old version, right answers (the serve loop checks each one).
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        !pvm.seen.iter().any(|l| l.starts_with("wrong answer")),
        "{:#?}",
        pvm.seen
    );
    assert_eq!(listed_version(t, pvm.id(), "greet"), "1.0.0");
    assert!(
        pvm.child.try_wait().unwrap().is_none(),
        "the pVM survived every failed update"
    );
    ctl(t, &["kill", &pvm.id().to_string()]).expect_status(0);
    let out = pvm.finish();
    assert!(
        out.stderr.contains("library panicked at restore refused"),
        "{out:#?}"
    );
    assert_no_leaks(t);
}

#[test]
fn an_update_waits_for_the_safe_point_and_gives_up_in_time() {
    let t = "dl-busy";
    let (v1, v2) = (guest_lib("greet"), guest_lib("greet2"));
    trust(t, &[&v1, &v2]);
    let mut pvm = Running::start(t, &[&lib_opt("greet", &v1)], "dltest", &["busy"]);
    pvm.expect("busy");
    let start = Instant::now();
    let out = update(t, pvm.id(), "greet", &v2, &["--timeout", "0.5"]);
    out.expect_status(1);
    assert!(out.stderr.contains("no safe point within 500 ms"), "{out:#?}");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "gave up before the call returned"
    );
    // The call in flight finished on the old version.
    assert_eq!(pvm.expect("done version="), "1.0.0");
    pvm.finish().expect_status(0);
    assert_no_leaks(t);
}

#[test]
fn a_family_update_switches_every_pvm_or_none() {
    let t = "dl-family";
    let (v1, v2) = (guest_lib("greet"), guest_lib("greet2"));
    trust(t, &[&v1, &v2]);
    let mut pvm = Running::start(t, &[&lib_opt("greet", &v1)], "dltest", &["family-busy"]);
    pvm.expect("child busy");
    assert_eq!(pvm.expect("serving version="), "1.0.0");
    let root = pvm.id();
    // The child holds a call in flight: it cannot switch, so neither does the root.
    let out = update(t, root, "greet", &v2, &["--family", "--timeout", "0.5"]);
    out.expect_status(1);
    assert!(out.stderr.contains("no safe point within 500 ms"), "{out:#?}");
    assert!(
        out.stderr.contains("called off"),
        "the root rolled back: {out:#?}"
    );
    assert!(!out.stdout.contains("->"), "nobody switched: {out:#?}");
    assert_eq!(listed_version(t, root, "greet"), "1.0.0");
    // Once the child's call returned, the whole family switches.
    assert_eq!(pvm.expect("child done version="), "1.0.0");
    let out = update(t, root, "greet", &v2, &["--family"]);
    out.expect_status(0);
    assert_eq!(out.stdout.matches("greet 1.0.0 -> 2.0.0").count(), 2, "{out:#?}");
    assert_eq!(pvm.expect("now version="), "2.0.0");
    let list = ctl(t, &["lib", "list", "--json"]);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&list.stdout).unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r["version"] == "2.0.0"), "{rows:#?}");
    ctl(t, &["kill", "--family", &root.to_string()]).expect_status(0);
    pvm.finish();
    assert_no_leaks(t);
}

/// `key=N` in `line`.
fn field(line: &str, key: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
}

#[test]
fn the_kv_server_survives_a_hundred_swaps_under_load_without_losing_a_request() {
    let t = "dl-kv";
    let (v1, v2) = (guest_lib("kv_v1"), guest_lib("kv_v2"));
    trust(t, &[&v1, &v2]);
    let mut pvm = Running::start(t, &[&lib_opt("kv", &v1)], "kv", &["--clients", "2"]);
    pvm.expect("kv: serving 2 clients with libkv 1.0.0");
    // Both clients run (and so are registered): the family update reaches all three pVMs. (An
    // update that begins while a client is being forked is refused as a whole: see
    // `lib_cmd::unreached`.)
    pvm.expect("client 0: STATS unknown");
    pvm.expect("client 1: STATS unknown");
    let root = pvm.id();
    for i in 0..100 {
        let (file, version) = if i % 2 == 0 {
            (&v2, "2.0.0")
        } else {
            (&v1, "1.0.0")
        };
        let out = update(t, root, "kv", file, &["--family", "--allow-downgrade"]);
        out.expect_status(0);
        assert_eq!(
            out.stdout.matches(&format!("-> {version}")).count(),
            3,
            "swap {i}: the server and both clients switch: {out:#?}"
        );
    }
    // After an even number of swaps: version 1 again. Then the new command for the last time.
    update(t, root, "kv", &v2, &["--family"]).expect_status(0);
    ctl(t, &["kill", "-s", "USR1", &root.to_string()]).expect_status(0);
    let out = pvm.finish();
    out.expect_status(0).expect_no_host_panic();
    let mut requests = 0;
    for i in 0..2 {
        let line = out
            .stdout
            .lines()
            .find(|l| l.starts_with(&format!("client {i}: requests=")))
            .unwrap_or_else(|| panic!("client {i} reported: {out:#?}"));
        assert_eq!(field(line, "failures"), Some(0), "{line}");
        requests += field(line, "requests").unwrap_or(0);
    }
    assert!(requests > 1000, "the clients kept sending: {requests}");
    let summary = out
        .stdout
        .lines()
        .find(|l| l.starts_with("kv: served"))
        .unwrap_or_default();
    assert!(out.stdout.contains(", 0 failed"), "{summary}");
    assert_no_leaks(t);
}

#[test]
fn a_library_imports_from_one_loaded_before_it_which_then_cannot_be_swapped_alone() {
    let t = "dl-pair";
    let base = c_library(
        t,
        "base",
        "const char pvm_library_version[] = \"1.0.0\"; unsigned long base_value(void) { return 41; }",
        &[],
    );
    let user = c_library(
        t,
        "user",
        "extern unsigned long base_value(void); unsigned long user_value(void) { return base_value() + 1; }",
        &[],
    );
    trust(t, &[&base, &user]);
    // Loaded the other way round, the user's import has nowhere to resolve.
    let out = run_guest(
        t,
        &[&lib_opt("base", &base), &lib_opt("user", &user)],
        "dltest",
        &["open", "user"],
    );
    out.expect_status(1);
    assert!(out.stdout.contains("unresolved symbol: base_value"), "{out:#?}");
    let mut pvm = Running::start(
        t,
        &[&lib_opt("base", &base), &lib_opt("user", &user)],
        "dltest",
        &["pair", "base", "user"],
    );
    assert_eq!(pvm.expect("user-value="), "42", "a call through the import");
    let out = update(t, pvm.id(), "base", &base, &[]);
    out.expect_status(1);
    assert!(out.stderr.contains("base is imported by user"), "{out:#?}");
    ctl(t, &["kill", &pvm.id().to_string()]).expect_status(0);
    pvm.finish();
    assert_no_leaks(t);
}

#[test]
fn a_static_app_exports_what_pvm_export_names_and_the_runtime_exports() {
    let bytes = std::fs::read(guest("dltest")).unwrap();
    let exports = pvm_dynlink::app_exports(&bytes).unwrap();
    let names: Vec<&str> = exports.iter().map(|e| e.name.as_str()).collect();
    for want in [
        "app_double",
        "pvm_alloc",
        "pvm_dealloc",
        "pvm_write",
        "pvm_exit",
        "pvm_panic",
        "memcpy",
    ] {
        assert!(names.contains(&want), "{want} exported: {names:?}");
    }
    let image = pvm_abi::layout::IMAGE_BASE;
    assert!(
        exports.iter().all(|e| e.addr >= image),
        "addresses in the image: {exports:?}"
    );
    // An app without `pvm::export!` still has the runtime's.
    let hello = pvm_dynlink::app_exports(&std::fs::read(guest("hello")).unwrap()).unwrap();
    assert!(hello.iter().any(|e| e.name == "pvm_alloc") && !hello.iter().any(|e| e.name == "app_double"));
}
