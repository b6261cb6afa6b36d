//! pVM fork on real KVM: return values, ids, memory isolation, register state, nesting,
//! wait statuses, limits, and fork with 1 and 64 MiB of touched memory.
mod common;

use common::*;

/// The numbers after each `key ` in `line`.
fn field(line: &str, key: &str) -> u64 {
    let rest = line
        .split(&format!("{key} "))
        .nth(1)
        .unwrap_or_else(|| panic!("no {key} in {line:?}"));
    rest.split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn fork_returns_twice_with_the_right_values_and_ids() {
    let out = run_guest("fork-basic", &[], "forktest", &["basic"]);
    out.expect_status(0).expect_no_host_panic();
    let parent = out.stdout.lines().find(|l| l.starts_with("parent: id")).unwrap();
    let child = out.stdout.lines().find(|l| l.starts_with("child: id")).unwrap();
    let root = field(parent, "id");
    assert_eq!(field(parent, "parent"), 0, "the root has no parent");
    assert_eq!(field(parent, "family"), root, "a root's family is itself");
    assert_eq!(
        field(child, "id"),
        field(parent, "child"),
        "fork returned the child's id to the parent"
    );
    assert_eq!(field(child, "parent"), root);
    assert_eq!(field(child, "family"), root);
    assert!(
        out.stdout.contains(&format!(
            "parent: child {} exited with code 7",
            field(child, "id")
        )),
        "{out:#?}"
    );
}

#[test]
fn memory_diverges_both_ways() {
    let out = run_guest("fork-diverge", &[], "forktest", &["diverge"]);
    out.expect_status(0);
    assert!(out.stdout.contains("child sees (1, 1, 1)"), "{out:#?}");
    assert!(
        out.stdout
            .contains("parent sees (2, 2, 2) after the child exited with code 0"),
        "{out:#?}"
    );
}

#[test]
fn registers_sse_x87_and_a_float_computation_survive_fork() {
    let out = run_guest("fork-registers", &[], "forktest", &["registers"]);
    out.expect_status(0);
    for side in ["parent", "child"] {
        assert!(
            out.stdout
                .contains(&format!("{side}: xmm kept mxcsr 0x5f80 fcw 0x27f sum 1.644434")),
            "{side}: {out:#?}"
        );
    }
    assert!(
        out.stdout.contains("parent: child exited with code 0"),
        "{out:#?}"
    );
}

#[test]
fn nested_fork_has_grandchildren_with_family_and_parent_ids() {
    let out = run_guest("fork-nested", &[], "forktest", &["nested"]);
    out.expect_status(0);
    let lines: Vec<&str> = out.stdout.lines().collect();
    let grandchild = lines.iter().find(|l| l.starts_with("grandchild:")).unwrap();
    let child = lines.iter().find(|l| l.starts_with("child:")).unwrap();
    let root = lines.iter().find(|l| l.starts_with("root:")).unwrap();
    assert_eq!(field(grandchild, "parent"), field(child, "id"));
    assert_eq!(field(grandchild, "family"), field(root, "id"));
    assert_eq!(field(child, "parent"), field(root, "id"));
    assert_eq!(field(child, "grandchild"), field(grandchild, "id"));
    assert!(child.ends_with("exited with code 5"), "{child}");
    assert!(root.ends_with("exited with code 6"), "{root}");
}

#[test]
fn wait_reports_exit_crash_and_kill() {
    let test = "fork-statuses";
    let mut family = Running::start(test, &[], "forktest", &["statuses"]);
    let victim = family.expect("waiting to be killed: ");
    ctl(test, &["kill", &victim]).expect_status(0);
    let exit = family.expect("exit: ");
    let crash = family.expect("crash: ");
    let killed = family.expect("killed: ");
    assert_eq!(exit, "exited with code 42");
    assert!(crash.starts_with("crashed: page fault at 0x0, rip 0x"), "{crash}");
    assert_eq!(killed, "killed by signal 15");
    let out = family.finish();
    out.expect_status(0);
    // The crashed child's monitor said why, as `pvmctl run` does for a root.
    assert!(
        out.stderr.contains("crashed: page fault writing 0x0 at rip 0x"),
        "{out:#?}"
    );
}

#[test]
fn wait_any_collects_every_child() {
    let out = run_guest("fork-wait-any", &[], "forktest", &["wait-any", "5"]);
    out.expect_status(0);
    assert!(
        out.stdout
            .contains("codes [10, 11, 12, 13, 14], then Some(NoChild)"),
        "{out:#?}"
    );
}

#[test]
fn fork_with_1_mib_and_64_mib_touched() {
    for mib in ["1", "64"] {
        let out = run_guest(
            &format!("fork-touch-{mib}"),
            &["--mem", "256M"],
            "forktest",
            &["touch", mib],
        );
        out.expect_status(0);
        assert!(
            out.stdout.contains(&format!(
                "touch {mib} MiB: child exited with code 0, parent memory intact"
            )),
            "{out:#?}"
        );
    }
}

#[test]
fn fork_tree_demo_shows_isolation_both_ways() {
    let out = run_guest("fork-tree", &[], "fork-tree", &["8"]);
    out.expect_status(0);
    assert_eq!(
        out.stdout.matches("parent's writes invisible").count(),
        8,
        "{out:#?}"
    );
    assert_eq!(out.stdout.matches("exited with code 0").count(), 8, "{out:#?}");
    assert!(
        out.stdout
            .contains("parent: none of the workers' writes reached my memory"),
        "{out:#?}"
    );
    assert!(out.stdout.contains("fork-tree: 8 workers, 0 failed"), "{out:#?}");
}

#[test]
fn fork_bomb_hits_the_family_limit_and_kill_family_cleans_up() {
    let test = "fork-limit";
    let mut family = Running::start(test, &["--max-family", "6"], "forktest", &["limit"]);
    assert_eq!(family.expect("forked "), "5 children, then: pVM limit reached");
    family.expect("still running after the refused fork");
    assert_eq!(ps_until(test, false, |rows| rows.len() == 6).len(), 6);
    let root = family.id().to_string();
    ctl(test, &["kill", "--family", &root]).expect_status(0);
    let out = family.finish();
    out.expect_status(143).expect_no_host_panic();
    assert!(ps_json(test, true).is_empty(), "the family left entries behind");
}

#[test]
fn console_lines_of_a_family_never_mix() {
    let out = run_guest("fork-chatter", &[], "forktest", &["chatter", "4"]);
    out.expect_status(0);
    let pad = "x".repeat(300);
    let mut count = 0;
    for line in out.stdout.lines() {
        let mut words = line.split(' ');
        assert_eq!(words.next(), Some("chatter"), "mixed line: {line:?}");
        let child: u32 = words.next().and_then(|w| w.parse().ok()).expect(line);
        let i: u32 = words.next().and_then(|w| w.parse().ok()).expect(line);
        assert!(child < 4 && i < 40, "{line}");
        assert_eq!(words.next(), Some(pad.as_str()), "mixed line: {line:?}");
        assert_eq!(words.next(), None, "mixed line: {line:?}");
        count += 1;
    }
    assert_eq!(count, 4 * 40);
}

#[test]
fn a_signal_interrupts_a_blocked_wait_once_and_its_handler_runs() {
    // Defect found by the chaos test: the runtime did not run the handlers a wait was
    // interrupted for, so every later wait was interrupted again at once.
    let out = run_guest("fork-wait-intr", &[], "forktest", &["wait-interrupted"]);
    out.expect_status(0).expect_no_host_panic();
    assert!(
        out.stdout
            .contains("wait-interrupted: handler ran 1 time(s), then Exited(3)"),
        "{out:#?}"
    );
}
