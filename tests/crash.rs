//! CPU exceptions and bad hypercalls: each is reported with the right vector, address and
//! instruction, the exit status says what happened, and nothing hangs.
mod common;

use common::*;
use goblin::elf::Elf;

/// The function symbol of `image` containing `addr`.
fn symbol_at(image: &str, addr: u64) -> String {
    let bytes = std::fs::read(guest(image)).unwrap();
    let elf = Elf::parse(&bytes).unwrap();
    elf.syms
        .iter()
        .filter(|s| s.is_function() && s.st_value <= addr && addr < s.st_value + s.st_size)
        .filter_map(|s| elf.strtab.get_at(s.st_name))
        .next()
        .unwrap_or("?")
        .to_string()
}

/// Runs `crash KIND`, checks the status and the report, and returns (message, rip).
fn crash(kind: &str, status: i32, message: &str) -> (String, u64) {
    let out = run_guest(&format!("crash-{kind}"), &[], "crash", &[kind]);
    out.expect_status(status).expect_no_host_panic();
    assert_eq!(out.stdout, format!("crashing: {kind}\n"));
    let report = out
        .stderr
        .lines()
        .find(|l| l.contains(" crashed: "))
        .unwrap_or_else(|| panic!("{out:#?}"));
    assert!(report.starts_with("pvm "), "{report}");
    let msg = report.split(" crashed: ").nth(1).unwrap().to_string();
    assert!(
        msg.starts_with(message),
        "{kind}: got {msg:?}, want {message:?}..."
    );
    let rip = msg
        .rsplit("at rip 0x")
        .next()
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .unwrap_or_else(|| panic!("no rip in {msg:?}"));
    (msg, rip)
}

#[test]
fn divide_error_is_vector_0_in_the_dividing_function() {
    let (_, rip) = crash("divide", 136, "divide error at rip 0x");
    assert!(
        symbol_at("crash", rip).contains("divide_by_zero"),
        "{}",
        symbol_at("crash", rip)
    );
}

#[test]
fn invalid_opcode_is_reported() {
    let (_, rip) = crash("ud2", 132, "invalid opcode at rip 0x");
    assert!(
        symbol_at("crash", rip).contains("crash4main"),
        "{}",
        symbol_at("crash", rip)
    );
}

#[test]
fn general_protection_fault_is_reported() {
    let (_, rip) = crash("gp", 139, "general protection fault");
    assert!(symbol_at("crash", rip).contains("crash4main"));
}

#[test]
fn null_read_and_write_are_page_faults_at_0() {
    crash("null", 139, "page fault reading 0x0 at rip 0x");
    crash("null-write", 139, "page fault writing 0x0 at rip 0x");
}

#[test]
fn writing_text_is_a_page_fault_on_the_text_address() {
    let (msg, rip) = crash("write-text", 139, "page fault writing 0x2");
    let addr = u64::from_str_radix(
        msg.split_whitespace().nth(3).unwrap().trim_start_matches("0x"),
        16,
    )
    .unwrap();
    assert!(symbol_at("crash", addr).contains("crash4main"), "{msg}");
    assert!(symbol_at("crash", rip).contains("crash4main"), "{msg}");
}

#[test]
fn stack_overflow_hits_the_guard_page() {
    let (msg, rip) = crash("stack-overflow", 139, "stack overflow (page fault writing 0x");
    assert!(msg.contains("in the stack guard page"), "{msg}");
    assert!(symbol_at("crash", rip).contains("recurse"), "{msg}");
}

#[test]
fn unknown_hypercall_and_hypercall_load_stop_the_pvm() {
    let (msg, _) = crash_no_rip("bad-hypercall");
    assert!(msg.contains("unknown hypercall number"), "{msg}");
    let (msg, _) = crash_no_rip("load-hypercall");
    assert!(msg.contains("hypercalls are stores"), "{msg}");
}

fn crash_no_rip(kind: &str) -> (String, i32) {
    let out = run_guest(&format!("crash-{kind}"), &[], "crash", &[kind]);
    out.expect_status(134).expect_no_host_panic();
    let msg = out
        .stderr
        .lines()
        .find_map(|l| l.split(" crashed: ").nth(1))
        .unwrap_or_else(|| panic!("{out:#?}"));
    (msg.to_string(), out.status.unwrap())
}

#[test]
fn hostile_write_pointers_get_efault_and_the_pvm_lives_on() {
    let out = run_guest("hostile-write", &[], "crash", &["hostile-write"]);
    out.expect_status(0).expect_no_host_panic();
    let results: Vec<&str> = out
        .stdout
        .lines()
        .skip(1)
        .map(|l| l.rsplit(" = ").next().unwrap())
        .collect();
    assert_eq!(results, ["-14", "-14", "-14", "-14"], "{out:#?}");
}
