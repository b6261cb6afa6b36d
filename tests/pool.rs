//! The warm pool: `pvmctl run` through a pool member behaves as a cold run (the same checks run
//! in both modes), a member is used once so no guest sees another's memory, and killing the
//! pool, the launcher or the member leaves nothing behind.
mod common;

use std::time::{Duration, Instant};

use common::*;

/// Stops the test's pool when dropped (a failing test must not leave a daemon behind).
struct Pool(&'static str);

impl Pool {
    /// Starts a pool of `size` members in `test`'s runtime directory; `pool start` returns once
    /// they are ready and prints the pool's pid.
    fn start(test: &'static str, size: &str) -> (Pool, u32) {
        let out = ctl(test, &["pool", "start", "--size", size]);
        out.expect_status(0).expect_no_host_panic();
        let pid = out
            .stdout
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("a pid: {out:#?}"));
        (Pool(test), pid)
    }

    fn status(&self) -> serde_json::Value {
        let out = ctl(self.0, &["pool", "status", "--json"]);
        out.expect_status(0);
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:#?}"))
    }

    /// Runs served so far. The pool counts a run when its member's word reaches it, which may
    /// be after the run ended: this waits (at most [`TIME_LIMIT`]) while the count is below
    /// `expected`, then returns it (a count past it shows at once).
    fn served_as(&self, expected: u64) -> u64 {
        let deadline = Instant::now() + TIME_LIMIT;
        loop {
            let status = self.status();
            let served = status["served"].as_u64().unwrap_or_else(|| panic!("{status:#?}"));
            if served >= expected || Instant::now() > deadline {
                return served;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let _ = ctl(self.0, &["pool", "stop"]);
    }
}

/// The id of the live pVM named `name`.
fn id_of(test: &str, name: &str) -> u32 {
    let rows = ps_json(test, false);
    let id = rows
        .iter()
        .find(|r| r["name"] == name)
        .and_then(|r| r["id"].as_u64())
        .unwrap_or_else(|| panic!("no pVM {name}: {rows:#?}"));
    u32::try_from(id).expect("a pid")
}

/// Starts the `spin` guest named `name` (warm when a pool runs); returns it, once it spins,
/// with its pVM id.
fn spinning(test: &str, name: &str) -> (Running, u32) {
    let mut spin = Running::start(test, &["--name", name], "spin", &[]);
    spin.expect("spinning");
    let id = id_of(test, name);
    (spin, id)
}

/// Sends `sig` to process `pid`.
fn signal(pid: u32, sig: i32) {
    // SAFETY: kill has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0, "kill {pid}");
}

/// Waits (at most [`TIME_LIMIT`]) until process `pid` is gone (or a zombie).
fn wait_gone(pid: u32) {
    let deadline = Instant::now() + TIME_LIMIT;
    loop {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok();
        // The state is the field after the parenthesised name.
        let gone = state.as_deref().is_none_or(|s| {
            s.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X'))
        });
        if gone {
            return;
        }
        assert!(Instant::now() < deadline, "process {pid} still there");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// What every `pvmctl run` must do, cold or warm: console and arguments, exit status, crash
/// report, Ctrl-C, `ps`, and `run -d` with its log. Returns how many runs it made.
fn behaves_as_a_process(test: &str) -> u64 {
    let out = run_guest(test, &[], "hello", &["a", "b c"]);
    out.expect_status(0).expect_no_host_panic();
    assert!(out.stdout.contains("args: a b c\n"), "{out:#?}");
    run_guest(test, &[], "exit", &["7"]).expect_status(7);
    let out = run_guest(test, &[], "crash", &["null"]);
    out.expect_status(139);
    assert!(
        out.stderr.contains(" crashed: page fault reading 0x0 at rip 0x"),
        "{out:#?}"
    );
    // Usage errors are said by the run itself, as pvmctl's.
    let out = pvmctl_run(test, &["run", "--mem", "65M", guest("hello").to_str().unwrap()]);
    out.expect_status(2);
    assert!(out.stderr.contains("not a multiple of 2 MiB"), "{out:#?}");
    // Ctrl-C reaches the pVM, which `ps` lists while it runs.
    let mut spin = Running::start(test, &["--name", "spinner"], "spin", &[]);
    spin.expect("spinning");
    let rows = ps_json(test, false);
    assert!(rows.iter().any(|r| r["name"] == "spinner"), "{rows:#?}");
    signal(spin.child.id(), libc::SIGINT);
    let out = spin.finish();
    out.expect_status(130);
    assert!(out.stderr.contains("stopped by signal INT"), "{out:#?}");
    // `run -d` prints the id of a pVM that `logs` and `stop` find.
    let out = pvmctl_run(
        test,
        &[
            "run",
            "-d",
            "--name",
            "bg",
            guest("forktest").to_str().unwrap(),
            "--",
            "idle",
            "0",
        ],
    );
    out.expect_status(0);
    let id: u32 = out.stdout.trim().parse().unwrap_or_else(|_| panic!("{out:#?}"));
    let rows = ps_until(test, false, |rows| rows.iter().any(|r| r["id"] == id));
    assert!(
        rows.iter().any(|r| r["id"] == id && r["name"] == "bg"),
        "{rows:#?}"
    );
    let deadline = Instant::now() + TIME_LIMIT;
    while !ctl(test, &["logs", "bg"])
        .stdout
        .contains("idle: 0 children forked")
    {
        assert!(Instant::now() < deadline, "no log line");
        std::thread::sleep(Duration::from_millis(5));
    }
    ctl(test, &["stop", "bg"]).expect_status(0);
    6
}

#[test]
fn a_cold_run_behaves_as_a_process() {
    let test = "pool-cold";
    behaves_as_a_process(test);
    assert_no_leaks(test);
}

#[test]
fn a_warm_run_behaves_as_a_cold_one() {
    let test = "pool-warm";
    let (pool, _) = Pool::start(test, "2");
    let runs = behaves_as_a_process(test);
    // Every run went to a member (the usage error too: the member parses the arguments).
    assert_eq!(pool.served_as(runs), runs);
    // `--cold` does not.
    run_guest(test, &["--cold"], "exit", &["3"]).expect_status(3);
    assert_eq!(pool.served_as(runs), runs);
    drop(pool);
    assert_no_leaks(test);
}

#[test]
fn a_warm_pvm_sees_nothing_of_the_pvm_before_it() {
    let test = "pool-fresh";
    let (pool, _) = Pool::start(test, "1");
    // The first run checks its memory reads as zero, then fills it with a marker; the second
    // checks the same guest addresses. A member that reused its VM without clearing it would
    // show the first run's marker there.
    let first = run_guest(test, &[], "memtest", &["scan", "16"]);
    first.expect_status(0);
    let second = run_guest(test, &[], "memtest", &["scan", "16"]);
    second.expect_status(0);
    assert!(second.stdout.contains(": all zero"), "{second:#?}");
    let at = |out: &Output| out.stdout.split(" at ").nth(1).map(str::to_string);
    assert_eq!(at(&first), at(&second), "the runs checked different addresses");
    assert_eq!(pool.served_as(2), 2);
    drop(pool);
    assert_no_leaks(test);
}

#[test]
fn killing_the_pool_leaves_its_runs_running_and_nothing_else() {
    let test = "pool-killed";
    let (pool, pid) = Pool::start(test, "2");
    let (spin, id) = spinning(test, "survivor");
    assert_eq!(pool.served_as(1), 1);
    signal(pid, libc::SIGKILL);
    wait_gone(pid);
    // The idle members die with the pool: soon only the run it handed out uses the directory.
    let dir = run_dir(test);
    let deadline = Instant::now() + TIME_LIMIT;
    loop {
        let others: Vec<u32> = processes_using(&dir).into_iter().filter(|p| *p != id).collect();
        if others.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still using {}: {others:?}",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let out = ctl(test, &["pool", "status"]);
    out.expect_status(0);
    assert_eq!(out.stdout, "no pool\n");
    // A run now boots cold, through the pool's leftover socket.
    run_guest(test, &[], "exit", &["4"]).expect_status(4);
    // The run the pool handed out is whole: Ctrl-C still reaches it.
    signal(spin.child.id(), libc::SIGINT);
    spin.finish().expect_status(130);
    // A new pool takes the directory over.
    let (pool, _) = Pool::start(test, "1");
    run_guest(test, &[], "exit", &["5"]).expect_status(5);
    assert_eq!(pool.served_as(1), 1);
    drop(pool);
    assert_no_leaks(test);
}

#[test]
fn killing_a_warm_runs_launcher_kills_its_pvm() {
    let test = "pool-launcher";
    let (pool, _) = Pool::start(test, "1");
    let (spin, id) = spinning(test, "orphan");
    assert_ne!(
        id,
        spin.child.id(),
        "the pVM runs in a pool member, not in the launcher"
    );
    // SIGKILL cannot be passed on: the member sees its launcher's end and dies with it, as a
    // cold pVM dies with its `pvmctl run`.
    signal(spin.child.id(), libc::SIGKILL);
    let out = spin.finish();
    assert_eq!(out.status, None, "{out:#?}");
    wait_gone(id);
    // `ps` no longer lists it (and sweeps what the killed monitor left, as for a cold one).
    let rows = ps_json(test, true);
    assert!(rows.iter().all(|r| r["id"] != id), "{rows:#?}");
    drop(pool);
    assert_no_leaks(test);
}

#[test]
fn a_warm_pvm_killed_outright_ends_its_launcher() {
    let test = "pool-member-killed";
    let (pool, _) = Pool::start(test, "1");
    let (spin, id) = spinning(test, "victim");
    ctl(test, &["kill", "-9", &id.to_string()]).expect_status(0);
    let out = spin.finish();
    out.expect_status(137).expect_no_host_panic();
    assert!(out.stderr.contains(&format!("pVM {id} was killed")), "{out:#?}");
    let rows = ps_json(test, true);
    assert!(rows.iter().all(|r| r["id"] != id), "{rows:#?}");
    drop(pool);
    assert_no_leaks(test);
}

#[test]
fn a_pool_serves_only_the_pvmctl_build_that_started_it() {
    let test = "pool-build";
    let (pool, _) = Pool::start(test, "1");
    // Another build (here: a copy, another file) boots cold, with the same result. (`cp`, not
    // `fs::copy`: a child another test forks meanwhile would inherit our write descriptor and
    // make the exec fail with ETXTBSY.)
    let copy = run_dir(test).join("pvmctl-other-build");
    let copied = std::process::Command::new("cp")
        .arg(pvmctl_bin())
        .arg(&copy)
        .status()
        .unwrap();
    assert!(copied.success());
    let out = finish(
        std::process::Command::new(&copy)
            .env("PVM_RUN_DIR", run_dir(test))
            .args(["run", guest("exit").to_str().unwrap(), "--", "6"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    out.expect_status(6);
    assert_eq!(pool.served_as(0), 0, "the copy's run went to the pool");
    run_guest(test, &[], "exit", &["6"]).expect_status(6);
    assert_eq!(pool.served_as(1), 1, "this build's run did not go to the pool");
    std::fs::remove_file(&copy).unwrap();
    drop(pool);
    assert_no_leaks(test);
}

#[test]
fn pool_commands_say_what_is_wrong() {
    let test = "pool-cli";
    let out = ctl(test, &["pool", "stop"]);
    out.expect_status(125);
    assert!(
        out.stderr.starts_with("pvmctl: error: no pool runs for "),
        "{out:#?}"
    );
    let out = ctl(test, &["pool", "start", "--size", "0"]);
    out.expect_status(2);
    assert!(out.stderr.contains("not a pool size (1 to 64)"), "{out:#?}");
    let (pool, pid) = Pool::start(test, "2");
    let out = ctl(test, &["pool", "start"]);
    out.expect_status(125);
    assert!(
        out.stderr.contains(&format!(
            "a pool already runs for this runtime directory (pid {pid})"
        )),
        "{out:#?}"
    );
    let status = pool.status();
    assert_eq!(
        (status["pid"].as_u64(), status["ready"].as_u64()),
        (Some(u64::from(pid)), Some(2))
    );
    let out = ctl(test, &["pool", "status"]);
    assert!(
        out.stdout.starts_with(&format!("pool {pid}: 2 of 2 ready")),
        "{out:#?}"
    );
    // A pool whose VMs cannot be built says why and does not start.
    let out = finish(
        pvmctl("pool-cli-no-kvm")
            .env("PVM_KVM_DEVICE", "/nonexistent/kvm")
            .args(["pool", "start"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    out.expect_status(125);
    assert!(
        out.stderr
            .contains("the pool cannot build a warm VM: /nonexistent/kvm not found"),
        "{out:#?}"
    );
    drop(pool);
    assert_no_leaks(test);
    assert_no_leaks("pool-cli-no-kvm");
}

#[test]
fn a_warm_pvm_serves_a_published_port_and_its_backend_keeps_nothing_of_the_vm() {
    use std::io::{Read, Write};
    let test = "pool-net";
    let (pool, _) = Pool::start(test, "1");
    let mut pvm = Running::start(test, &["--publish=127.0.0.1:0:7"], "netecho", &["--conns", "1"]);
    pvm.expect("listening on guest port 7");
    assert_eq!(pool.served_as(1), 1);
    let rows = ps_json(test, false);
    let root = rows
        .iter()
        .find(|r| r["name"] == "netecho")
        .unwrap_or_else(|| panic!("{rows:#?}"));
    let id = root["id"].as_u64().expect("an id") as u32;
    let port: u16 = root["ports"][0]
        .as_str()
        .and_then(|p| p.split_once("->"))
        .and_then(|(host, _)| host.rsplit_once(':'))
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or_else(|| panic!("{root:#?}"));
    // The family's network backend, forked by the member after its VM was built ahead, holds
    // none of it: no KVM descriptor, no mapping of guest RAM's size.
    let backend = backend_of(id).expect("the family's backend runs");
    let fds = fd_targets(backend);
    assert!(fds.iter().all(|t| !t.contains("kvm")), "{fds:#?}");
    let maps = std::fs::read_to_string(format!("/proc/{backend}/maps")).unwrap();
    let guest_ram = maps.lines().find(|l| {
        let Some((range, _)) = l.split_once(' ') else {
            return false;
        };
        let Some((lo, hi)) = range.split_once('-') else {
            return false;
        };
        let size = u64::from_str_radix(hi, 16).unwrap_or(0) - u64::from_str_radix(lo, 16).unwrap_or(0);
        size == 64 << 20
    });
    assert_eq!(guest_ram, None, "{maps}");
    // And the port serves.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(TIME_LIMIT)).unwrap();
    s.write_all(b"warm").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut echoed = Vec::new();
    s.read_to_end(&mut echoed).unwrap();
    assert_eq!(echoed, b"warm");
    pvm.finish().expect_status(0);
    drop(pool);
    assert_no_leaks(test);
}

#[test]
fn a_pool_whose_builds_fail_stops_answering_until_they_work_again() {
    let test = "pool-failing";
    let dir = run_dir(test);
    // The pool's members open KVM through a link the test breaks and mends.
    let link = dir.join("kvm-link");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink("/dev/kvm", &link).unwrap();
    let out = finish(
        pvmctl(test)
            .env("PVM_KVM_DEVICE", &link)
            .args(["pool", "start", "--size", "1"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    out.expect_status(0);
    let pool = Pool(test);
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink("/nonexistent/kvm", &link).unwrap();
    // This run takes the one member (which builds a VM of its own on the runner's device);
    // the refills then fail.
    run_guest(test, &[], "exit", &["3"]).expect_status(3);
    assert_eq!(pool.served_as(1), 1);
    let deadline = Instant::now() + TIME_LIMIT;
    loop {
        let s = pool.status();
        if s["failed"].as_u64() >= Some(3) && s["ready"] == 0 && s["building"] == 0 {
            assert!(
                s["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("kvm-link not found")),
                "{s:#?}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "{s:#?}");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Nobody would answer: the pool no longer listens, and a run boots cold at once.
    assert!(!dir.join("pool.sock").exists());
    run_guest(test, &[], "exit", &["4"]).expect_status(4);
    assert_eq!(pool.served_as(1), 1);
    // Mended, the pool builds members again on its next try and serves.
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink("/dev/kvm", &link).unwrap();
    loop {
        if pool.status()["ready"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "{:#?}", pool.status());
        std::thread::sleep(Duration::from_millis(5));
    }
    run_guest(test, &[], "exit", &["5"]).expect_status(5);
    assert_eq!(pool.served_as(2), 2);
    drop(pool);
    std::fs::remove_file(&link).unwrap();
    assert_no_leaks(test);
}
