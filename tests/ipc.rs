//! IPC within a family on real KVM: pipes across fork, EOF and broken pipe, signals and their
//! default actions, family isolation, peer death, hostile arguments and ring corruption.
mod common;

use common::*;

fn ipctest(test: &str, scenario: &str) -> Output {
    let out = run_guest(test, &[], "ipctest", &[scenario]);
    out.expect_no_host_panic();
    out
}

#[test]
fn a_pipe_across_fork_streams_in_order_then_ends() {
    let out = ipctest("ipc-pipe", "pipe");
    out.expect_status(0);
    assert!(
        out.stdout
            .contains("pipe: read 300000 bytes in order, then end of file; writer Ok(Exited(0))"),
        "{out:#?}"
    );
}

#[test]
fn writing_with_every_reader_gone_is_a_broken_pipe() {
    let out = ipctest("ipc-broken", "broken");
    out.expect_status(0);
    assert!(
        out.stdout.contains("broken: wrote 4096 bytes, then BrokenPipe"),
        "{out:#?}"
    );
}

#[test]
fn non_blocking_ends_say_would_block() {
    let out = ipctest("ipc-nonblock", "nonblock");
    out.expect_status(0);
    assert!(
        out.stdout
            .contains("nonblock: empty read Err(WouldBlock); wrote 8192 then WouldBlock"),
        "{out:#?}"
    );
}

#[test]
fn a_blocked_read_returns_interrupted_after_the_handler_ran() {
    let out = ipctest("ipc-interrupt", "interrupt");
    out.expect_status(0);
    assert!(
        out.stdout
            .contains("interrupt: read Err(Interrupted), handler ran 1 time(s)"),
        "{out:#?}"
    );
    assert!(out.stdout.contains("interrupt: child Ok(Exited(0))"), "{out:#?}");
}

#[test]
fn an_unhandled_signal_takes_its_default_action() {
    let out = ipctest("ipc-default", "default-action");
    out.expect_status(0);
    assert!(
        out.stdout
            .contains("default-action: sent Ok(()), child Ok(Killed(12))"),
        "{out:#?}"
    );
}

#[test]
fn chld_is_ignored_by_default_and_handled_on_request() {
    let out = ipctest("ipc-chld", "chld");
    out.expect_status(0);
    assert!(out.stdout.contains("chld: unhandled CHLD ignored"), "{out:#?}");
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("chld: handler ran"))
        .unwrap();
    assert!(!line.starts_with("chld: handler ran 0 "), "{line}");
    assert!(line.ends_with("Exited(5)))"), "{line}");
}

#[test]
fn pvmctl_kill_delivers_a_guest_visible_signal() {
    let test = "ipc-pvmctl-term";
    let mut pvm = Running::start(test, &[], "ipctest", &["handled-term"]);
    let id = pvm.expect("handled-term: ready ");
    ctl(test, &["kill", "-s", "TERM", &id]).expect_status(0);
    pvm.expect("handled-term: TERM handled, exiting normally");
    pvm.finish().expect_status(0);
}

#[test]
fn signals_to_another_family_are_refused() {
    let test = "ipc-isolation";
    let mut other = Running::start(test, &[], "forktest", &["idle", "0"]);
    other.expect("idle: 0 children forked");
    let target = other.id().to_string();
    let out = run_guest(test, &[], "ipctest", &["kill-other", &target]);
    out.expect_status(0);
    assert!(
        out.stdout.contains("kill-other: Err(PermissionDenied)"),
        "{out:#?}"
    );
    assert!(
        out.stdout.contains("kill-other: nonexistent Err(NoSuchPvm)"),
        "{out:#?}"
    );
    // The other family was not touched.
    let rows = ps_json(test, false);
    assert!(
        rows.iter()
            .any(|r| r["id"].as_u64() == Some(u64::from(other.id()))),
        "{rows:#?}"
    );
    ctl(test, &["kill", &target]).expect_status(0);
    other.finish().expect_status(143);
}

#[test]
fn a_reader_sees_end_of_file_when_its_writer_is_killed() {
    let test = "ipc-peer-death-reader";
    let mut family = Running::start(test, &[], "ipctest", &["peer-death-reader"]);
    let writer: i32 = family.expect("writer ready: ").parse().unwrap();
    family.expect("reader got 10 bytes, waiting for more");
    // SAFETY: kills a monitor process of this test.
    assert_eq!(unsafe { libc::kill(writer, libc::SIGKILL) }, 0);
    assert_eq!(
        family.expect("reader: "),
        "read returned 0 after the writer died; Ok(Killed(9))"
    );
    family.finish().expect_status(0);
}

#[test]
fn a_writer_sees_a_broken_pipe_when_its_reader_is_killed() {
    let test = "ipc-peer-death-writer";
    let mut family = Running::start(test, &[], "ipctest", &["peer-death-writer"]);
    let reader: i32 = family.expect("reader ready: ").parse().unwrap();
    family.expect("writer filled the pipe, waiting for room");
    // SAFETY: kills a monitor process of this test.
    assert_eq!(unsafe { libc::kill(reader, libc::SIGKILL) }, 0);
    assert_eq!(
        family.expect("writer: "),
        "Err(BrokenPipe) after the reader died; Ok(Killed(9))"
    );
    family.finish().expect_status(0);
}

#[test]
fn a_scribbled_ring_corrupts_only_its_channel() {
    let out = ipctest("ipc-scribble", "scribble");
    out.expect_status(0);
    assert!(out.stdout.contains("scribble: read Err(Corrupted)"), "{out:#?}");
}

#[test]
fn hostile_ipc_arguments_get_errors() {
    let out = ipctest("ipc-hostile", "hostile");
    out.expect_status(0);
    for line in [
        "hostile: capacity 5000 Some(Unavailable)",
        "hostile: capacity 2 MiB Some(Unavailable)",
        "hostile: wait on a bad handle -9",
        "hostile: 512 pipes, then Unavailable",
        "hostile: a pipe again after closing them all",
    ] {
        assert!(out.stdout.contains(line), "{line}: {out:#?}");
    }
}

#[test]
fn pingpong_bounces_with_and_without_spinning() {
    for opts in [&["300"][..], &["100", "--no-spin"][..]] {
        let out = run_guest("ipc-pingpong", &[], "pingpong", opts);
        out.expect_status(0);
        let rounds = opts[0];
        assert!(
            out.stdout
                .starts_with(&format!("pingpong: {rounds} round trips of 1 byte(s): median ")),
            "{out:#?}"
        );
        assert!(out.stdout.contains("peer exited with code 0"), "{out:#?}");
    }
}

#[test]
fn message_queues_keep_boundaries_order_and_limits() {
    let out = ipctest("ipc-mq", "mq");
    out.expect_status(0);
    for line in [
        "mq: empty Some(WouldBlock)",
        "mq: full Some(WouldBlock)",
        "mq: too large Some(TooLarge)",
        r#"mq: received ["a", "bb", "ccc", "dddd"]"#,
        r#"mq: "from the child"; child Ok(Exited(0))"#,
        "mq: missing Some(NotFound)",
        "mq: bad key Some(Invalid)",
        "mq: capacity 1 Some(Invalid)",
    ] {
        assert!(out.stdout.contains(line), "{line}: {out:#?}");
    }
}

#[test]
fn a_scribbled_queue_cell_fails_blocked_senders_and_receivers_instead_of_spinning() {
    for (scenario, line) in [
        ("mq-scribble", "mq-scribble: blocking send Err(Corrupted)"),
        ("mq-scribble-recv", "mq-scribble: blocking receive Err(Corrupted)"),
    ] {
        let out = ipctest(&format!("ipc-{scenario}"), scenario);
        out.expect_status(0);
        assert!(out.stdout.contains(line), "{line}: {out:#?}");
    }
}

#[test]
fn a_peer_paused_mid_send_makes_the_receiver_sleep_not_fail() {
    let out = ipctest("ipc-mq-paused", "mq-paused");
    out.expect_status(0);
    for line in [
        "mq-paused: the receiver slept while the cell was held: true",
        r#"mq-paused: received ["paused", "second"]; child Ok(Exited(0))"#,
    ] {
        assert!(out.stdout.contains(line), "{line}: {out:#?}");
    }
}

#[test]
fn shared_memory_opened_by_key_is_one_region_for_the_family() {
    let out = ipctest("ipc-shm", "shm");
    out.expect_status(0);
    assert!(
        out.stdout.contains("shm: 4096 bytes, counter Some(40000)"),
        "{out:#?}"
    );
}

#[test]
fn pipeline_feeds_workers_through_a_queue() {
    let test = "ipc-pipeline";
    let out = run_guest(test, &[], "pipeline", &["120", "3"]);
    out.expect_status(0);
    assert!(out.stdout.contains("consumer (pVM "), "{out:#?}");
    assert!(out.stdout.contains("120 results,"), "{out:#?}");
    assert!(out.stdout.contains(", correct"), "{out:#?}");
    assert!(
        out.stdout.contains("producer: consumer Ok(Exited(0))"),
        "{out:#?}"
    );
    // The family's named objects went with it.
    let ipc_dir = run_dir(test).join("ipc");
    let left: Vec<_> = std::fs::read_dir(&ipc_dir)
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn queues_and_shared_memory_of_another_family_are_refused() {
    let test = "ipc-named-isolation";
    let mut holder = Running::start(test, &[], "ipctest", &["hold"]);
    holder.expect("hold: ready ");
    let out = run_guest(test, &[], "ipctest", &["open-other"]);
    out.expect_status(0);
    assert!(
        out.stdout.contains("open-other: queue Some(PermissionDenied)"),
        "{out:#?}"
    );
    assert!(
        out.stdout.contains("open-other: shm Some(PermissionDenied)"),
        "{out:#?}"
    );
    ctl(test, &["kill", &holder.id().to_string()]).expect_status(0);
    holder.finish().expect_status(143);
}

#[test]
fn a_new_root_with_a_recycled_pid_is_not_the_old_family() {
    // Defect: a family was identified by its root's pid; once a detached family's root was
    // gone, a new root given the same pid (pids are recycled) could signal the old family's
    // pVMs and open its objects.
    let test = "ipc-pid-reuse";
    let mut family = Running::start(test, &["--detach-family"], "ipctest", &["hold-child"]);
    let child: u32 = family.expect("hold-child: ").parse().expect("an id");
    // The root ends, its family lives on (its output stays open: the child holds it).
    let root = family.child.wait().expect("wait for the root");
    assert_eq!(root.code(), Some(0));
    let old_root = child_parent(test, child);
    // Make the next pid the old root's (as root: /proc/sys/kernel/ns_last_pid), until a new
    // pvmctl run gets it.
    let image = guest("ipctest");
    let mut got = None;
    for _ in 0..50 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (old_root - 1).to_string())
            .expect("this test recycles a pid through /proc/sys/kernel/ns_last_pid (run as root)");
        let run = pvmctl(test)
            .arg("run")
            .arg(&image)
            .args(["--", "reuse", &child.to_string()])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start pvmctl");
        let pid = run.id();
        let out = finish(run);
        if pid == old_root {
            got = Some(out);
            break;
        }
    }
    let out = got.expect("no new pvmctl got the old root's pid in 50 tries");
    out.expect_status(0).expect_no_host_panic();
    assert!(
        out.stdout
            .contains(&format!("reuse: family {old_root} kill Err(PermissionDenied)")),
        "{out:#?}"
    );
    assert!(
        out.stdout.contains("reuse: queue Some(PermissionDenied)"),
        "{out:#?}"
    );
    ctl(test, &["kill", "-s", "KILL", &child.to_string()]).expect_status(0);
}

/// The parent id `ps` shows for pVM `id`.
fn child_parent(test: &str, id: u32) -> u32 {
    let rows = ps_json(test, false);
    rows.iter()
        .find(|r| r["id"] == id)
        .and_then(|r| r["parent"].as_u64())
        .unwrap_or_else(|| panic!("no pVM {id}: {rows:#?}")) as u32
}

#[test]
fn poll_watches_pipe_ends_too() {
    let test = "ipc-poll";
    let out = ipctest(test, "poll");
    out.expect_status(0);
    for want in [
        "poll: at once 0, after the timeout 0 (waited true), then 1: a 0 b 1",
        "poll: writer with room 1 true",
        "poll: reader at end of file 1 true",
    ] {
        assert!(out.stdout.contains(want), "{want}: {out:#?}");
    }
    assert_no_leaks(test);
}

#[test]
fn a_family_on_one_host_cpu_does_not_spin() {
    let budget = |test: &str, opts: &[&str]| {
        let out = run_guest(test, opts, "ipctest", &["spin-budget"]);
        out.expect_status(0);
        out.stdout
            .lines()
            .find_map(|l| l.strip_prefix("spin budget: "))
            .and_then(|l| l.strip_suffix(" cycles"))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no budget printed: {out:#?}"))
    };
    let cpus = hypervisor_ext::placement::allowed_cpus().unwrap();
    let one = cpus[0].to_string();
    // One CPU: a spinning waiter would only keep its peer from running.
    assert_eq!(budget("spin-one-cpu", &["--cpuset-cpus", &one]), 0);
    if cpus.len() >= 2 {
        let two = format!("{},{}", cpus[0], cpus[1]);
        // Two: the default spin.
        assert!(budget("spin-two-cpus", &["--cpuset-cpus", &two, "--cpu-spread"]) > 0);
    }
}
