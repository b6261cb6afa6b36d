//! The toolstack on running families: `pvmctl ps`, `kill`, `pause`, `resume`.
mod common;

use common::*;
use serde_json::Value;

fn ids(rows: &[Value]) -> Vec<u64> {
    rows.iter().map(|r| r["id"].as_u64().unwrap()).collect()
}

fn row(rows: &[Value], id: u64) -> &Value {
    rows.iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("no pVM {id} in {rows:#?}"))
}

#[test]
fn ps_lists_a_family_with_its_fields_and_a_fresh_child_mostly_shared() {
    let test = "ps-json";
    let mut family = Running::start(test, &["--name", "psfam"], "forktest", &["idle", "2"]);
    family.expect("idle: 2 children forked");
    let root = u64::from(family.id());
    // The last child may still be on its way into its idle hypercall.
    let rows = ps_until(test, false, |rows| {
        rows.len() == 3 && rows.iter().all(|r| r["state"] == "blocked")
    });
    assert_eq!(rows.len(), 3, "{rows:#?}");
    for r in &rows {
        assert_eq!(r["family"], root);
        assert_eq!(r["name"], "psfam");
        assert_eq!(r["state"], "blocked", "an idle pVM sleeps in a hypercall: {r:#}");
        assert!(r["image"].as_str().unwrap().ends_with("/forktest"), "{r:#}");
        assert_eq!(r["mem_size"], 64u64 << 20);
        assert!(r["uptime_ms"].as_u64().is_some());
        if r["id"] == root {
            assert_eq!(r["parent"], 0);
        } else {
            assert_eq!(r["parent"], root);
            // The promise of fork: a fresh child's guest memory is its parent's pages, shared.
            let (private, shared) = (
                r["mem_private_kib"].as_u64().unwrap(),
                r["mem_shared_kib"].as_u64().unwrap(),
            );
            assert!(
                shared > 4 * private,
                "a fresh child should be mostly shared: {r:#}"
            );
        }
    }
    let text = ctl(test, &["ps"]);
    text.expect_status(0);
    let header = text.stdout.lines().next().unwrap();
    for column in [
        "ID", "PARENT", "FAMILY", "NAME", "STATE", "UPTIME", "PRIVATE", "SHARED", "IMAGE",
    ] {
        assert!(header.contains(column), "{header}");
    }
    assert_eq!(text.stdout.lines().count(), 4, "{text:#?}");
    let image_col = header.find("IMAGE").unwrap();
    assert!(
        text.stdout
            .lines()
            .skip(1)
            .all(|l| l[image_col..].starts_with('/')),
        "columns align: {text:#?}"
    );
    ctl(test, &["kill", "--family", "psfam"]).expect_status(0);
    family.finish().expect_status(143);
    assert!(ps_json(test, true).is_empty());
}

#[test]
fn kill_of_a_child_leaves_the_rest_and_pause_resume_show_in_ps() {
    let test = "kill-child";
    let mut family = Running::start(test, &[], "forktest", &["idle", "2"]);
    family.expect("idle: 2 children forked");
    let root = u64::from(family.id());
    // Children register as they start, a little after their parent's fork returned.
    let rows = ps_until(test, false, |rows| rows.len() == 3);
    let victim = ids(&rows).into_iter().find(|&id| id != root).unwrap();
    ctl(test, &["kill", &victim.to_string()]).expect_status(0);
    // Its parent has not waited yet: like a zombie, it shows as exited only with --all.
    let left = ps_until(test, false, |rows| !ids(rows).contains(&victim));
    assert_eq!(left.len(), 2, "{left:#?}");
    assert_eq!(row(&ps_json(test, true), victim)["state"], "exited");

    ctl(test, &["pause", &root.to_string()]).expect_status(0);
    assert_eq!(row(&ps_json(test, false), root)["state"], "paused");
    ctl(test, &["resume", &root.to_string()]).expect_status(0);
    // Resumed, it goes back into its idle hypercall.
    let rows = ps_until(test, false, |rows| row(rows, root)["state"] == "blocked");
    assert_eq!(row(&rows, root)["state"], "blocked");

    ctl(test, &["kill", "--family", &root.to_string()]).expect_status(0);
    let out = family.finish();
    out.expect_status(143);
    assert!(ps_json(test, true).is_empty());
}

#[test]
fn kill_of_a_parent_leaves_its_child_running_as_an_orphan() {
    let test = "kill-parent";
    let mut family = Running::start(test, &[], "forktest", &["chain"]);
    let child: u64 = family.expect("child ready: ").parse().unwrap();
    let grandchild: u64 = family.expect("grandchild ready: ").parse().unwrap();
    ctl(test, &["kill", &child.to_string()]).expect_status(0);
    assert_eq!(
        family.expect("chain: child "),
        format!("{child} killed by signal 15")
    );
    let rows = ps_until(test, false, |rows| !ids(rows).contains(&child));
    assert!(!ids(&rows).contains(&child), "{rows:#?}");
    assert_eq!(
        row(&rows, grandchild)["state"],
        "blocked",
        "the orphan keeps running"
    );
    ctl(test, &["kill", "--family", &family.id().to_string()]).expect_status(0);
    let out = family.finish();
    out.expect_status(143);
    // The family's root collected the orphan and said so.
    assert!(
        out.stderr.contains(&format!(
            "pvm {grandchild} (family {})",
            family_id(&out, grandchild)
        )),
        "{out:#?}"
    );
    assert!(ps_json(test, true).is_empty());
}

fn family_id(out: &Output, grandchild: u64) -> String {
    out.stderr
        .lines()
        .find_map(|l| l.strip_prefix(&format!("pvm {grandchild} (family ")))
        .and_then(|rest| rest.split(')').next())
        .unwrap_or("?")
        .to_string()
}

#[test]
fn sigkill_of_monitors_leaves_no_stale_entries() {
    let test = "kill-9";
    let mut family = Running::start(test, &[], "forktest", &["idle", "2"]);
    family.expect("idle: 2 children forked");
    let root = u64::from(family.id());
    // Children register as they start, a little after their parent's fork returned.
    let rows = ps_until(test, false, |rows| rows.len() == 3);
    let child = ids(&rows).into_iter().find(|&id| id != root).unwrap();
    // SAFETY: signals a monitor process of this test.
    assert_eq!(unsafe { libc::kill(child as i32, libc::SIGKILL) }, 0);
    let rows = ps_until(test, true, |rows| !ids(rows).contains(&child));
    assert!(
        !ids(&rows).contains(&child),
        "a SIGKILLed monitor's entry must vanish: {rows:#?}"
    );
    // Now the root too: its remaining child is orphaned to the host, still listed and killable.
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(root as i32, libc::SIGKILL) }, 0);
    // (Not `finish`: the orphan still holds the family's stdout, so it is not at its end yet.)
    let status = family.child.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    let rows = ps_json(test, true);
    assert_eq!(rows.len(), 1, "only the orphan is left: {rows:#?}");
    assert_eq!(rows[0]["family"], root);
    // The root's entry is gone, so the family is named through the orphan.
    ctl(test, &["kill", "--family", &rows[0]["id"].to_string()]).expect_status(0);
    let rows = ps_until(test, true, |rows| rows.is_empty());
    assert!(rows.is_empty(), "{rows:#?}");
    assert_eq!(family.finish().status, None, "killed by SIGKILL");
}

#[test]
fn kill_of_a_missing_id_is_an_error_and_the_others_are_still_killed() {
    let test = "kill-missing";
    let mut family = Running::start(test, &["--name", "lonely"], "forktest", &["idle", "0"]);
    family.expect("idle: 0 children forked");
    let out = ctl(test, &["kill", "999999999", "lonely", "nosuchname"]);
    out.expect_status(1).expect_no_host_panic();
    assert!(out.stderr.contains("pvmctl: error: no pVM 999999999"), "{out:#?}");
    assert!(
        out.stderr.contains("pvmctl: error: no pVM nosuchname"),
        "{out:#?}"
    );
    family.finish().expect_status(143);
    let bad = ctl(test, &["kill", "-s", "FOO", "1"]);
    bad.expect_status(2);
    assert!(bad.stderr.contains("unknown signal"), "{bad:#?}");
}

#[test]
fn detach_family_returns_with_the_root_and_leaves_the_family_running() {
    let test = "detach";
    let mut family = Running::start(test, &["--detach-family"], "forktest", &["orphans", "2"]);
    family.expect("orphans: 2 children forked, root exits");
    let root = u64::from(family.id());
    // pvmctl run returns with the root's status although its children live on.
    let status = family.child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let rows = ps_until(test, false, |rows| rows.len() == 2);
    assert_eq!(rows.len(), 2, "{rows:#?}");
    assert!(
        rows.iter().all(|r| r["family"] == root && r["parent"] == root),
        "{rows:#?}"
    );
    ctl(test, &["kill", "--family", &rows[0]["id"].to_string()]).expect_status(0);
    let rows = ps_until(test, true, |rows| rows.is_empty());
    assert!(rows.is_empty(), "{rows:#?}");
    family.finish();
}

#[test]
fn the_cli_takes_what_docker_and_xl_users_type() {
    let test = "cli-habits";
    let dir = run_dir(test);
    let dir = dir.to_str().unwrap();
    let mut fam = Running::start(test, &["--name", "habits"], "forktest", &["idle", "1"]);
    fam.expect("idle: 1 children forked");
    let root = fam.id().to_string();
    let rows = ps_until(test, false, |rows| rows.len() == 2);
    // --run-dir before the command as after it; ps -q gives the ids alone.
    let out = pvmctl_run(test, &["--run-dir", dir, "ps", "-q"]);
    out.expect_status(0);
    let mut listed: Vec<u64> = out.stdout.lines().map(|l| l.parse().unwrap()).collect();
    listed.sort_unstable();
    let mut want = ids(&rows);
    want.sort_unstable();
    assert_eq!(listed, want);
    ctl(test, &["ps", "-a", "--run-dir", dir]).expect_status(0);
    // A name given on purpose is one family's.
    let out = run_guest(test, &["--name", "habits"], "hello", &[]);
    out.expect_status(125).expect_no_host_panic();
    assert!(
        out.stderr.contains("the name \"habits\" is in use by pVM"),
        "{out:#?}"
    );
    // STOP and CONT are pause and resume; pausing a paused pVM (or resuming a running one)
    // is an error; unpause is resume.
    ctl(test, &["kill", "-s", "STOP", &root]).expect_status(0);
    assert_eq!(row(&ps_json(test, false), fam.id().into())["state"], "paused");
    let out = ctl(test, &["pause", &root]);
    out.expect_status(1);
    assert!(out.stderr.contains("is already paused"), "{out:#?}");
    ctl(test, &["unpause", &root]).expect_status(0);
    let out = ctl(test, &["resume", &root]);
    out.expect_status(1);
    assert!(out.stderr.contains("is not paused"), "{out:#?}");
    ctl(test, &["kill", "-s", "SIGSTOP", "habits"]).expect_status(0);
    ctl(test, &["kill", "-s", "18", "habits"]).expect_status(0);
    // Signals with no meaning for a pVM are command-line errors, with the reason.
    let out = ctl(test, &["kill", "-s", "QUIT", &root]);
    out.expect_status(2);
    assert!(out.stderr.contains("no meaning for a pVM"), "{out:#?}");
    // The shell's `kill -9`.
    ctl(test, &["kill", "-9", "--family", &root]).expect_status(0);
    assert_eq!(fam.finish().status, None, "killed by SIGKILL");
    // Sizes as people type them, refused in the unit typed; other command-line errors exit 2.
    run_guest(test, &["--mem", "64MiB"], "hello", &[]).expect_status(0);
    let out = run_guest(test, &["--mem", "1T"], "hello", &[]);
    out.expect_status(2);
    assert!(
        out.stderr.contains("1T is too large: at most ") && out.stderr.contains("G ("),
        "{out:#?}"
    );
    ctl(test, &["bench", "boot", "--iterations", "10"]).expect_status(2);
    ctl(test, &["kill", "--no-such-flag", "1"]).expect_status(2);
    ctl(test, &["ps"]).expect_status(0);
    assert_no_leaks(test);
}

#[test]
fn stop_ends_a_family_with_term_then_kill_after_the_timeout() {
    let test = "cli-stop";
    // One pVM ends at TERM; one ignores it and needs KILL.
    let polite = Running::start(test, &["--name", "polite"], "spin", &[]);
    let mut stubborn = Running::start(test, &["--name", "stubborn"], "spin", &["--ignore-term"]);
    stubborn.expect("spinning");
    ps_until(test, false, |rows| rows.len() == 2);
    let start = std::time::Instant::now();
    let out = ctl(test, &["stop", "-t", "1", "polite", "stubborn"]);
    out.expect_status(0);
    assert!(
        start.elapsed() >= std::time::Duration::from_secs(1),
        "waited for the timeout"
    );
    assert_eq!(out.stdout.lines().count(), 2, "{out:#?}");
    assert_eq!(polite.finish().status, Some(143), "TERM");
    assert_eq!(stubborn.finish().status, None, "then KILL");
    assert!(ps_json(test, true).is_empty());
    assert_no_leaks(test);
}

#[test]
fn pvmctl_new_makes_an_ordinary_cargo_crate_that_runs() {
    let test = "cli-new";
    let dir = run_dir(test).join("work");
    std::fs::create_dir_all(&dir).unwrap();
    let out = pvmctl(test)
        .current_dir(&dir)
        .args(["new", "app"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // Plain cargo, as a user and an editor run it (none of the outer cargo's settings).
    let mut cargo = std::process::Command::new(std::env::var_os("CARGO").unwrap_or("cargo".into()));
    for var in [
        "CARGO_TARGET_DIR",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
    ] {
        cargo.env_remove(var);
    }
    let built = cargo
        .current_dir(dir.join("app"))
        .args(["build", "--quiet"])
        .output()
        .unwrap();
    assert!(built.status.success(), "cargo build: {built:?}");
    let exe = dir.join("app/target/x86_64-unknown-linux-gnu/debug/app");
    let out = run_guest(test, &[], exe.to_str().unwrap(), &["you"]);
    out.expect_status(0);
    assert!(out.stdout.contains("hello, you, from pVM"), "{out:#?}");
    // And `pvmctl run DIR` builds and runs it.
    let out = pvmctl_run(test, &["run", dir.join("app").to_str().unwrap()]);
    out.expect_status(0);
    assert!(out.stdout.contains("hello, world"), "{out:#?}");
    // A bad name, or a directory that exists, is refused.
    let again = pvmctl(test)
        .current_dir(&dir)
        .args(["new", "app"])
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(125));
    let bad = pvmctl(test)
        .current_dir(&dir)
        .args(["new", "../x"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2), "a command-line error");
    assert_no_leaks(test);
}

#[test]
fn run_d_returns_the_id_and_logs_shows_the_console() {
    let test = "cli-detach";
    let image = guest("forktest");
    let out = pvmctl_run(
        test,
        &[
            "run",
            "-d",
            "--name",
            "bg",
            image.to_str().unwrap(),
            "--",
            "idle",
            "0",
        ],
    );
    out.expect_status(0);
    let id: u32 = out
        .stdout
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("an id: {out:#?}"));
    let rows = ps_json(test, false);
    assert!(
        rows.iter().any(|r| r["id"] == id && r["name"] == "bg"),
        "{rows:#?}"
    );
    // Its console is in the log (the guest prints before it idles: wait for the line).
    let deadline = std::time::Instant::now() + TIME_LIMIT;
    loop {
        let out = ctl(test, &["logs", "bg"]);
        out.expect_status(0);
        if out.stdout.contains("idle: 0 children forked") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{out:#?}");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // `logs -f` follows until the family ends.
    let follow = pvmctl(test)
        .args(["logs", "-f", &id.to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    ctl(test, &["stop", "bg"]).expect_status(0);
    let out = finish(follow);
    out.expect_status(0);
    assert!(out.stdout.contains("idle: 0 children forked"), "{out:#?}");
    assert!(
        out.stdout.contains(&format!("pvm {id} stopped by signal TERM")),
        "{out:#?}"
    );
    // A guest that fails at once: `run -d` returns its id (with status 0 if it was seen
    // running, else its status and what it said); its log keeps the error either way.
    let out = pvmctl_run(
        test,
        &[
            "run",
            "-d",
            guest("netecho").to_str().unwrap(),
            "--",
            "--port",
            "8",
        ],
    );
    assert!(matches!(out.status, Some(0 | 1)), "{out:#?}");
    let failed = out.stdout.trim().to_string();
    let log = ctl(test, &["logs", "-f", &failed]);
    log.expect_status(0);
    assert!(
        log.stdout.contains("cannot listen on port 8: permission denied"),
        "{log:#?}"
    );
    let out = ctl(test, &["logs", "no-such-pvm"]);
    out.expect_status(1);
    assert_no_leaks(test);
}

#[test]
fn a_detached_console_log_stays_bounded() {
    let test = "cli-log-bound";
    let image = guest("spin");
    let out = pvmctl_run(
        test,
        &["run", "-d", image.to_str().unwrap(), "--", "--print", "9000000"],
    );
    assert!(matches!(out.status, Some(0)), "{out:#?}");
    let id = out.stdout.trim().to_string();
    // Follow it to its end, then look at the file itself.
    ctl(test, &["logs", "-f", &id]).expect_status(0);
    let log = run_dir(test).join("logs").join(format!("{id}.log"));
    let size = std::fs::metadata(&log).unwrap().len();
    assert!(size < hypervisor_ext::console_log::LOG_LIMIT, "{size} bytes");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("started over"), "{}", &text[..200.min(text.len())]);
    assert_no_leaks(test);
}

#[test]
fn bench_ipc_draws_its_results_as_an_svg_chart() {
    let test = "cli-bench-svg";
    let svg = run_dir(test).join("ipc.svg");
    let csv = run_dir(test).join("ipc.csv");
    let out = pvmctl_run_within(
        test,
        &[
            "bench",
            "ipc",
            "--rounds",
            "1",
            "--svg",
            svg.to_str().unwrap(),
            "--csv",
            csv.to_str().unwrap(),
        ],
        BENCH_TIME_LIMIT,
    );
    assert!(out.stdout.contains("targets"), "{out:#?}");
    let text = std::fs::read_to_string(&svg).expect("the chart");
    assert!(text.starts_with("<svg"), "an SVG document");
    for label in [
        "latency (lower is better)",
        "GB/s (higher is better)",
        "pipe round trip, spin",
        "signal round trip",
    ] {
        assert!(text.contains(label), "{label} in the chart");
    }
    // Bars: a pVM and a Linux one per row at least.
    assert!(text.matches("<rect").count() >= 16, "bars drawn");
    // The figures: a header, then per row, side and round the run's median and p99 and every
    // round trip (latency), or its GB/s (throughput).
    let csv = std::fs::read_to_string(&csv).expect("the CSV");
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("bench,row,side,round,sample,metric,value"));
    let rows: Vec<&str> = lines.collect();
    // (row, side, metric) -> how many lines.
    let mut counts = std::collections::BTreeMap::<(String, String, String), usize>::new();
    for line in &rows {
        // bench,"row",side,round,sample,metric,value (the row is quoted; it has commas).
        let (_, rest) = line.split_once(",\"").unwrap();
        let (row, rest) = rest.split_once("\",").unwrap();
        let fields: Vec<&str> = rest.split(',').collect();
        *counts
            .entry((row.to_string(), fields[0].to_string(), fields[3].to_string()))
            .or_default() += 1;
    }
    // Latency rows: 6, plus the pipe round trips pinned to one core and to two (spin and not).
    let cpus = hypervisor_ext::placement::allowed_cpus().unwrap().len().min(2);
    let latency_rows = 6 + 2 * cpus;
    let per_metric = |metric: &str| counts.iter().filter(|((_, _, m), _)| m == metric).count();
    assert_eq!(per_metric("run_median_us"), latency_rows * 2, "{counts:#?}");
    assert_eq!(per_metric("run_p99_us"), latency_rows * 2, "{counts:#?}");
    assert_eq!(per_metric("gb_per_s"), 2 * 2, "{counts:#?}");
    // Every latency row and side has its raw samples, pVM and Linux alike (hundreds at least).
    assert_eq!(per_metric("us"), latency_rows * 2, "{counts:#?}");
    assert!(
        counts
            .iter()
            .filter(|((_, _, m), _)| m == "us")
            .all(|(_, &n)| n >= 500),
        "{counts:#?}"
    );
    for pinned in ["same core", "two cores"].into_iter().take(cpus) {
        assert!(
            text.contains(&format!("pipe round trip, {pinned}, spin")),
            "{pinned} in the chart"
        );
    }
    assert!(rows.iter().all(|l| l.starts_with("ipc,")), "{csv}");
    assert!(rows.iter().all(|l| l
        .rsplit(',')
        .next()
        .is_some_and(|v| v.parse::<f64>().is_ok_and(|v| v > 0.0))));
}

#[test]
fn benches_find_their_guests_when_they_run() {
    let test = "cli-bench-guests";
    let dir = run_dir(test).join("guests");
    std::fs::create_dir_all(&dir).unwrap();
    // An empty guest directory: the error names where it looked.
    let out = pvmctl(test)
        .env("PVM_GUEST_DIR", &dir)
        .args(["bench", "ipc", "--rounds", "1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(
        stderr.contains(&dir.join("pingpong").display().to_string()),
        "{stderr}"
    );
    // The guests copied there (as an installation would have them): found and run.
    for g in ["pingpong", "ipcbench"] {
        std::fs::copy(guest(g), dir.join(g)).unwrap();
    }
    let out = pvmctl(test)
        .env("PVM_GUEST_DIR", &dir)
        .args(["bench", "ipc", "--rounds", "1", "--json"])
        .output()
        .unwrap();
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    assert!(json["rows"].as_array().is_some_and(|r| !r.is_empty()), "{json:#}");
}

/// The CPUs a monitor may run on (`Cpus_allowed_list` of /proc/PID/status).
fn cpus_of(id: u64) -> String {
    let status = std::fs::read_to_string(format!("/proc/{id}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn cpuset_cpus_confines_a_family_and_cpu_spread_pins_each_pvm() {
    let test = "cli-cpus";
    // The first two CPUs this test may use (one, on a one-CPU machine).
    let allowed = hypervisor_ext::placement::allowed_cpus().unwrap();
    let cpus = &allowed[..allowed.len().min(2)];
    let list = hypervisor_ext::placement::format_cpu_list(cpus);
    let cpu = |i: usize| cpus[i % cpus.len()].to_string();

    // A set alone: every monitor of the family may run on all of it.
    let mut family = Running::start(test, &["--cpuset-cpus", &list], "forktest", &["idle", "2"]);
    family.expect("idle: 2 children forked");
    let rows = ps_until(test, false, |rows| rows.len() == 3);
    for id in ids(&rows) {
        assert_eq!(cpus_of(id), list, "pVM {id}");
    }
    ctl(test, &["kill", "--family", &family.id().to_string()]).expect_status(0);
    family.finish();

    // Spread: the root on the first CPU, its k-th child k+1 places after it.
    let args = ["--cpuset-cpus", list.as_str(), "--cpu-spread"];
    let mut family = Running::start(test, &args, "forktest", &["idle", "3"]);
    family.expect("idle: 3 children forked");
    let root = u64::from(family.id());
    let rows = ps_until(test, false, |rows| rows.len() == 4);
    assert_eq!(cpus_of(root), cpu(0));
    let mut children: Vec<u64> = ids(&rows).into_iter().filter(|&id| id != root).collect();
    // Forked in pid order.
    children.sort_unstable();
    for (k, id) in children.into_iter().enumerate() {
        assert_eq!(cpus_of(id), cpu(k + 1), "child {k} ({id})");
    }
    ctl(test, &["kill", "--family", &root.to_string()]).expect_status(0);
    family.finish();

    // Errors: a CPU this process may not use (pvmctl's error), a malformed list and a spread
    // without a set (command-line errors).
    let noop = guest("noop");
    let out = ctl(test, &["run", "--cpuset-cpus", "1023", noop.to_str().unwrap()]);
    out.expect_status(125);
    assert!(out.stderr.contains("CPU 1023 is not available"), "{out:#?}");
    for bad in [
        vec!["run", "--cpuset-cpus", "2-1", "noop"],
        vec!["run", "--cpuset-cpus", "x", "noop"],
        vec!["run", "--cpu-spread", "noop"],
    ] {
        ctl(test, &bad).expect_status(2);
    }
}

#[test]
fn every_bench_writes_its_samples_as_csv_and_draws_a_chart() {
    let test = "cli-bench-figures";
    let dir = run_dir(test);
    for (bench, args) in [
        ("boot", vec!["--iterations", "50"]),
        ("fork", vec!["--iterations", "100"]),
        ("density", vec!["--count", "4"]),
        ("security", vec!["--rounds", "1"]),
        ("dynlink", vec!["--rounds", "1"]),
        ("net", vec!["--rounds", "1"]),
    ] {
        let svg = dir.join(format!("{bench}.svg"));
        let csv = dir.join(format!("{bench}.csv"));
        let mut all = vec!["bench", bench];
        all.extend(args);
        all.extend(["--svg", svg.to_str().unwrap(), "--csv", csv.to_str().unwrap()]);
        let out = pvmctl_run_within(test, &all, BENCH_TIME_LIMIT);
        out.expect_status(0);
        let chart = std::fs::read_to_string(&svg).unwrap_or_else(|e| panic!("{bench}: the chart: {e}"));
        assert!(chart.starts_with("<svg"), "{bench}: an SVG document");
        assert!(chart.contains("pvmctl bench"), "{bench}: titled");
        // The background and a bar at least.
        assert!(chart.matches("<rect").count() >= 2, "{bench}: bars drawn");
        let text = std::fs::read_to_string(&csv).unwrap_or_else(|e| panic!("{bench}: the CSV: {e}"));
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("bench,row,side,round,sample,metric,value"));
        let rows: Vec<&str> = lines.collect();
        assert!(!rows.is_empty(), "{bench}: samples");
        // pvm's side has samples of single operations (`us`), not only summaries.
        assert!(
            rows.iter().any(|l| l.contains(",pvm,") && l.contains(",us,")),
            "{bench}: pvm's samples"
        );
        for line in &rows {
            assert!(line.starts_with(&format!("{bench},")), "{bench}: {line}");
            let value = line.rsplit(',').next().unwrap();
            assert!(value.parse::<f64>().is_ok_and(f64::is_finite), "{bench}: {line}");
        }
    }
}
