//! Booting guests through `pvmctl run`: output, arguments, exit codes, panics, memory, Ctrl-C.
mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use common::*;

#[test]
fn hello_prints_and_exits_zero() {
    let out = run_guest("hello", &[], "hello", &[]);
    out.expect_status(0).expect_no_host_panic();
    let line = out.stdout.lines().next().expect("a greeting");
    assert!(line.starts_with("Hello from pVM "), "{out:#?}");
    assert!(line.ends_with("(hello, 64 MiB)!"), "{out:#?}");
    // The pVM id is the host-unique id of its monitor, a number.
    let id = line["Hello from pVM ".len()..].split(' ').next().unwrap();
    assert!(id.parse::<u32>().is_ok_and(|n| n > 0), "{out:#?}");
    assert_eq!(out.stderr, "");
}

#[test]
fn arguments_and_name_reach_the_guest() {
    let out = run_guest(
        "args",
        &["--name", "greeter"],
        "hello",
        &["one", "two words", "-x", "--"],
    );
    out.expect_status(0);
    assert!(out.stdout.contains("(greeter, 64 MiB)!"), "{out:#?}");
    assert!(out.stdout.contains("args: one two words -x --\n"), "{out:#?}");
}

#[test]
fn exit_codes_pass_through() {
    for (code, want) in [("0", 0), ("3", 3), ("255", 255), ("256", 0), ("-1", 255)] {
        run_guest("exit", &[], "exit", &[code]).expect_status(want);
    }
}

#[test]
fn exit_from_a_nested_call_flushes_buffered_output() {
    let out = run_guest("exit-nested", &[], "exit", &["7", "--via-exit"]);
    out.expect_status(7);
    assert_eq!(out.stdout, "leaving with 7 (buffered, no newline)");
}

#[test]
fn panic_prints_message_and_location_and_exits_101() {
    let out = run_guest("panic", &[], "panic", &["x"]);
    out.expect_status(101).expect_no_host_panic();
    assert_eq!(out.stdout, "about to panic\n");
    assert!(
        out.stderr.contains("pVM panicked at panic/src/main.rs:"),
        "{out:#?}"
    );
    assert!(
        out.stderr.contains("deliberate panic with 2 argument(s)"),
        "{out:#?}"
    );
}

#[test]
fn mem_limits_what_the_guest_can_allocate() {
    let out = run_guest("mem-ok", &["--mem", "64M"], "memtest", &["40"]);
    out.expect_status(0);
    assert_eq!(out.stdout, "touched 40 MiB of 64 MiB: ok\n");
    let out = run_guest("mem-small", &["--mem", "16M"], "memtest", &["40"]);
    out.expect_status(101);
    assert!(
        out.stderr.contains("memory allocation of 1048576 bytes failed"),
        "{out:#?}"
    );
    let out = run_guest("mem-big", &["--mem", "1G"], "memtest", &["600"]);
    out.expect_status(0);
    assert_eq!(out.stdout, "touched 600 MiB of 1024 MiB: ok\n");
}

#[test]
fn run_builds_a_guest_crate_directory() {
    let dir = examples_dir().join("hello");
    let out = pvmctl_run("crate-dir", &["run", dir.to_str().unwrap(), "--", "built"]);
    out.expect_status(0);
    assert!(out.stdout.contains("args: built\n"), "{out:#?}");
    // Built already: the second run says nothing of cargo (no `Finished` line every time).
    let out = pvmctl_run("crate-dir", &["run", dir.to_str().unwrap(), "--", "again"]);
    out.expect_status(0);
    assert!(
        !out.stderr.contains("Finished") && !out.stderr.contains("Compiling"),
        "{out:#?}"
    );
}

#[test]
fn sigint_stops_a_spinning_pvm_promptly() {
    let image = guest("spin");
    let mut child = pvmctl("sigint")
        .args(["run", image.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pvmctl");
    // Wait until the guest runs (it prints before spinning), then interrupt it as Ctrl-C would.
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "spinning\n");
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let out = finish(child);
    out.expect_status(130).expect_no_host_panic();
    assert!(out.stderr.contains("stopped by signal INT"), "{out:#?}");
}

#[test]
fn missing_kvm_device_is_a_clear_error() {
    let image = guest("hello");
    let out = finish(
        pvmctl("no-kvm")
            .env("PVM_KVM_DEVICE", "/nonexistent/kvm")
            .args(["run", image.to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    out.expect_status(125).expect_no_host_panic();
    assert_eq!(
        out.stderr,
        "pvmctl: error: /nonexistent/kvm not found: this host has no KVM (enable virtualization and load kvm_intel or kvm_amd)\n"
    );
}

#[test]
fn kvm_permission_error_says_how_to_fix() {
    use std::os::unix::process::CommandExt;
    let image = guest("hello");
    let mut cmd = pvmctl("kvm-perm");
    cmd.args(["run", image.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: geteuid has no preconditions.
    let device = if unsafe { libc::geteuid() } == 0 {
        // Root may open anything: run pvmctl as `nobody`, who may not open the real device.
        cmd.uid(65534).gid(65534);
        "/dev/kvm".to_string()
    } else {
        // Nobody but root may open a file with mode 000.
        let dir = run_dir("kvm-perm-device");
        let device = dir.join("kvm");
        std::fs::write(&device, b"").unwrap();
        std::fs::set_permissions(&device, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
        cmd.env("PVM_KVM_DEVICE", &device);
        device.to_str().unwrap().to_string()
    };
    let out = finish(cmd.spawn().unwrap());
    out.expect_status(125).expect_no_host_panic();
    assert_eq!(
        out.stderr,
        format!(
            "pvmctl: error: permission denied opening {device}: add your user to the kvm group (sudo usermod -aG kvm $USER) and log in again\n"
        )
    );
}
