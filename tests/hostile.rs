//! The hostile-guest suite: a guest made to attack its monitor (`examples/hostile`), a faulty
//! host (a hostile runtime directory), and the limits under a fork bomb. Every case must be
//! contained: the hostile pVM gets an error or dies with a clear report, other processes and the
//! host are unaffected, and nothing leaks (processes, run-dir files, registry entries, leases).
mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Instant;

use common::*;

fn hostile(test: &str, opts: &[&str], args: &[&str]) -> Output {
    let out = run_guest(test, opts, "hostile", args);
    out.expect_no_host_panic();
    out
}

/// The `RESULT` of each `PREFIX CASE: RESULT` line.
fn results<'a>(out: &'a Output, prefix: &str) -> Vec<(&'a str, &'a str)> {
    out.stdout
        .lines()
        .filter_map(|l| l.strip_prefix(prefix)?.split_once(": "))
        .collect()
}

const BAD_HYPERCALL: &str = "Crashed { vector: 256, fault_addr: 0, rip: 0 }";

#[test]
fn argument_structs_the_guest_cannot_access_crash_only_that_guest() {
    let test = "hostile-args";
    let out = hostile(test, &[], &["args"]);
    out.expect_status(0);
    let cases = results(&out, "args ");
    // 19 hypercalls x 13 places: the reserved area, outside RAM, the windows, the guard page.
    assert_eq!(cases.len(), 19 * 13, "{out:#?}");
    for (case, status) in cases {
        assert_eq!(status, BAD_HYPERCALL, "args {case}");
    }
    assert!(out.stderr.contains("bad hypercall"), "{out:#?}");
    assert_no_leaks(test);
}

#[test]
fn out_fields_never_write_the_guests_code_rodata_or_boot_block() {
    // Defect: OUT fields were written into the guest's read-only text and rodata (W^X bypass).
    let test = "hostile-readonly";
    let out = hostile(test, &[], &["readonly"]);
    out.expect_status(0);
    assert!(!out.stdout.contains("WRITTEN"), "{out:#?}");
    let cases = results(&out, "readonly ");
    assert_eq!(cases.len(), 3 * 13 + 1, "{out:#?}");
    for (case, status) in cases {
        if case == "Exit rodata" {
            assert_eq!(status, "Exited(42)", "an IN-only struct may be read-only");
        } else {
            assert_eq!(status, BAD_HYPERCALL, "readonly {case}");
        }
    }
    assert!(out.stdout.contains("readonly: rodata intact true"), "{out:#?}");
    assert_no_leaks(test);
}

#[test]
fn buffers_in_the_boot_block_are_the_guests_own() {
    // Defect: `MessageQueue::open(pvm::args().nth(1)?)` failed with Invalid.
    let test = "hostile-boot";
    let out = hostile(test, &[], &["boot-buffers", "key-from-args"]);
    out.expect_status(0);
    assert!(out.stdout.starts_with("key-from-args\n"), "{out:#?}");
    assert!(out.stdout.contains("boot-buffers write: 13"), "{out:#?}");
    assert!(out.stdout.contains("boot-buffers queue: Ok(())"), "{out:#?}");
    assert_no_leaks(test);
}

#[test]
fn buffers_and_keys_the_guest_cannot_read_get_errors() {
    let test = "hostile-buffers";
    let out = hostile(test, &[], &["buffers"]);
    out.expect_status(0);
    for (case, result) in results(&out, "buffers write ") {
        let want = match case {
            "huge-len" => "65536", // clamped to one call's maximum, from the guest's own heap
            "fd-3" | "fd-max" => "-22",
            _ => "-14",
        };
        assert_eq!(result, want, "write {case}");
    }
    let keys = results(&out, "buffers key ");
    assert_eq!(keys.len(), 20, "{out:#?}");
    for (case, result) in keys {
        let want = if ["null", "gdt", "end"].iter().any(|c| case.ends_with(c)) {
            "-14"
        } else {
            "-22"
        };
        assert_eq!(result, want, "key {case}");
    }
    assert!(out.stdout.contains("buffers: alive"), "{out:#?}");
    assert_no_leaks(test);
}

#[test]
fn ids_that_name_no_pvm_of_the_family_reach_no_host_process() {
    // Defect: a root's `kill` of id 0 (its "parent") became the host's kill(0, sig): every
    // process of pvmctl's process group got the signal. Here a sentinel leads the group and
    // pvmctl runs in it: neither may be touched, whatever id the guest names.
    let test = "hostile-ids";
    let mut sentinel = Command::new("sleep")
        .arg("600")
        .process_group(0)
        .spawn()
        .expect("start the sentinel");
    let group = sentinel.id();
    let mut cmd = pvmctl(test);
    cmd.arg("run")
        .arg(guest("hostile"))
        .args(["--", "ids", &group.to_string()])
        .process_group(group as i32)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = finish(cmd.spawn().expect("start pvmctl"));
    let sentinel_alive = sentinel.try_wait().expect("look at the sentinel").is_none();
    let _ = sentinel.kill();
    let _ = sentinel.wait();
    assert!(
        sentinel_alive,
        "the sentinel in pvmctl's process group was killed: {out:#?}"
    );
    out.expect_status(0).expect_no_host_panic();
    let kills = results(&out, "ids kill ");
    assert_eq!(kills.len(), 8, "{out:#?}");
    for (case, result) in kills {
        assert_eq!(result, "-3", "kill {case}: ESRCH");
    }
    for (case, result) in results(&out, "ids signal ")
        .into_iter()
        .chain(results(&out, "ids sigaction "))
    {
        assert_eq!(result, "-22", "signal {case}: EINVAL");
    }
    for (case, result) in results(&out, "ids wait ") {
        assert_eq!(result, "-10", "wait {case}: ECHILD");
    }
    assert!(out.stdout.contains("ids: alive"), "{out:#?}");
    assert_no_leaks(test);
}

#[test]
fn bogus_handles_sides_and_geometries_get_errors() {
    let test = "hostile-handles";
    let out = hostile(test, &[], &["handles"]);
    out.expect_status(0);
    for (case, result) in results(&out, "handles ") {
        let want = match case {
            "closed" | "max" | "2^32" | "12345" => "ipc-wait -9 mq-wait -9",
            "regions" => "511 pipes, then Unavailable",
            "regions after close" => "Ok(())",
            _ => "-22",
        };
        assert_eq!(result, want, "handles {case}");
    }
    assert!(out.stdout.contains("handles: alive"), "{out:#?}");
    assert_no_leaks(test);
}

#[test]
fn stores_and_loads_outside_the_protocol_crash_only_that_guest() {
    let test = "hostile-window";
    let out = hostile(test, &[], &["window"]);
    out.expect_status(0);
    let cases = results(&out, "window ");
    assert_eq!(cases.len(), 6, "{out:#?}");
    for (case, status) in cases {
        if case == "past-window" {
            // The first non-canonical address: a general protection fault.
            assert!(status.starts_with("Crashed { vector: 13"), "{case}: {status}");
        } else {
            assert_eq!(status, BAD_HYPERCALL, "window {case}");
        }
    }
    assert_no_leaks(test);
}

/// Runs the fork bomb under `opts` until every pVM was refused once; returns how many pVMs it
/// reached and what refused the last ones.
fn fork_bomb(test: &str, opts: &[&str]) -> (usize, String) {
    let mut family = Running::start(test, opts, "hostile", &["forkbomb"]);
    let mut forked = 0;
    let mut refused = 0;
    let mut why = String::new();
    // Every pVM forks until refused, then sleeps: at the end, pVMs = forks + 1 = refusals. (A
    // parent prints "forked" after its child may have printed "refused": the counts are only
    // final once ps shows as many pVMs as refusals, none still to print its line.)
    loop {
        let line = family.expect("forkbomb ");
        if line == "forked" {
            forked += 1;
        } else if let Some(reason) = line.strip_prefix("refused: ") {
            refused += 1;
            why = reason.to_string();
        }
        assert!(forked < 1000, "the fork bomb is not stopping");
        if refused == forked + 1 && ps_json(test, false).len() == refused {
            break;
        }
    }
    // TERM to the root alone: it passes it on to its family, and `pvmctl run` returns once they
    // are all gone.
    ctl(test, &["kill", &family.id().to_string()]).expect_status(0);
    family.finish().expect_status(143);
    assert_no_leaks(test);
    (forked + 1, why)
}

#[test]
fn a_fork_bomb_stops_at_the_host_limit() {
    // Defect: under --max-pvms 8 a fork bomb reached 64 pVMs (entries of live monitors were
    // deleted as stale, so the recount undercounted).
    let (pvms, why) = fork_bomb("bomb-host", &["--max-pvms", "8", "--max-family", "1000"]);
    assert_eq!((pvms, why.as_str()), (8, "pVM limit reached"));
}

#[test]
fn a_fork_bomb_stops_at_the_family_limit() {
    let (pvms, why) = fork_bomb("bomb-family", &["--max-family", "6"]);
    assert_eq!((pvms, why.as_str()), (6, "pVM limit reached"));
}

#[test]
fn a_fork_bomb_stops_at_the_memory_budget() {
    let (pvms, why) = fork_bomb(
        "bomb-memory",
        &["--mem", "64M", "--max-mem-total", "320M", "--max-family", "1000"],
    );
    assert_eq!(pvms, 5);
    assert!(why.contains("memory"), "{why}");
}

#[test]
fn a_guest_exhausting_its_memory_ends_alone_with_a_report() {
    let test = "hostile-exhaust";
    let out = hostile(test, &["--mem", "16M"], &["exhaust"]);
    out.expect_status(101);
    assert!(out.stderr.contains("pVM panicked"), "{out:#?}");
    assert!(out.stdout.contains("exhaust: 4 MiB"), "{out:#?}");
    assert!(
        out.stderr.contains("memory allocation of 1048576 bytes failed"),
        "{out:#?}"
    );
    assert_no_leaks(test);
}

#[test]
fn a_guest_spinning_at_cpl3_obeys_pause_kill_and_ctrl_c() {
    let test = "hostile-spin";
    let latency = |what: &str, t: Instant| eprintln!("{what}: {:.2} ms", t.elapsed().as_secs_f64() * 1e3);
    // pause / resume, then kill.
    let mut spin = Running::start(test, &[], "spin", &[]);
    spin.expect("spinning");
    let id = spin.id().to_string();
    let t = Instant::now();
    ctl(test, &["pause", &id]).expect_status(0);
    latency("pause confirmed", t);
    let rows = ps_json(test, false);
    assert_eq!(rows[0]["state"], "paused", "{rows:#?}");
    ctl(test, &["resume", &id]).expect_status(0);
    let t = Instant::now();
    ctl(test, &["kill", &id]).expect_status(0);
    spin.finish().expect_status(143);
    latency("kill to exit", t);
    // Ctrl-C: SIGINT to pvmctl itself.
    let mut spin = Running::start(test, &[], "spin", &[]);
    spin.expect("spinning");
    let t = Instant::now();
    Command::new("kill")
        .args(["-INT", &spin.id().to_string()])
        .status()
        .expect("send SIGINT");
    spin.finish().expect_status(130);
    latency("Ctrl-C to exit", t);
    assert_no_leaks(test);
}

#[test]
fn hostile_runtime_directories_are_refused() {
    // Defect: a runtime directory owned by another user or open to others was accepted.
    let base = run_dir("hostile-rundir");
    let refused = |dir: &std::path::Path, why: &str| {
        let out = Command::new(pvmctl_bin())
            .arg("run")
            .arg("--run-dir")
            .arg(dir)
            .arg(guest("hello"))
            .output()
            .expect("run pvmctl");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{}: {stderr}", dir.display());
        assert!(stderr.contains(why), "{}: {stderr}", dir.display());
        let ps = Command::new(pvmctl_bin())
            .args(["ps", "--run-dir"])
            .arg(dir)
            .output()
            .expect("run pvmctl ps");
        assert_ne!(ps.status.code(), Some(0), "ps accepted {}", dir.display());
    };
    for mode in [0o777, 0o770, 0o705] {
        let dir = base.join(format!("mode-{mode:o}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
        refused(&dir, &format!("mode {mode:o}"));
    }
    let link = base.join("link");
    let real = base.join("real");
    std::fs::create_dir_all(&real).unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o700)).unwrap();
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&real, &link).unwrap();
    refused(&link, "symbolic link");
    // Another user's directory: made with chown as root; as anyone else, `/` is one.
    // SAFETY: geteuid has no preconditions.
    let other = if unsafe { libc::geteuid() } == 0 {
        let dir = base.join("other");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
        dir
    } else {
        "/".into()
    };
    refused(&other, "belongs to user");
}

#[test]
fn a_damaged_or_planted_cpuid_cache_is_replaced_and_never_followed() {
    // The supported CPUID is kept in the runtime directory for the host's boot: a file that is
    // not one this boot wrote is a miss (the boot asks KVM and writes it again), and a link
    // planted in its place is replaced, never written through.
    let test = "hostile-cpuid-cache";
    let cache = run_dir(test).join("cpuid");
    let _ = std::fs::remove_file(&cache);
    run_guest(test, &["--cold"], "hello", &[]).expect_status(0);
    let written = std::fs::read(&cache).expect("the first cold boot writes the cache");
    assert!(written.len() > 64, "{} bytes", written.len());
    // Read back by the next boot: a hit leaves the file as it was (a miss would rename a new
    // file over it).
    use std::os::unix::fs::MetadataExt;
    let inode = std::fs::metadata(&cache).unwrap().ino();
    run_guest(test, &["--cold"], "hello", &[]).expect_status(0);
    assert_eq!(
        std::fs::metadata(&cache).unwrap().ino(),
        inode,
        "the cache was not used"
    );
    assert_eq!(std::fs::read(&cache).unwrap(), written);
    // What a boot writes: the same header (format, boot id, device) and length each time (the
    // entries may differ in the APIC id of the CPU that asked).
    let header = MAGIC_AND_BOOT_ID_LEN;
    let rewritten = |damaged: &[u8]| {
        let now = std::fs::read(&cache).unwrap();
        assert_ne!(now, damaged, "left as it was");
        assert_eq!((now.len(), &now[..header]), (written.len(), &written[..header]));
    };
    // Cut short, garbage, another boot's (one byte of the boot id changed): each is replaced.
    let mut other_boot = written.clone();
    other_boot[header - 1] ^= 1;
    for damaged in [
        written[..written.len() - 3].to_vec(),
        vec![0xa5; 4096],
        other_boot,
    ] {
        std::fs::write(&cache, &damaged).unwrap();
        run_guest(test, &["--cold"], "hello", &[]).expect_status(0);
        rewritten(&damaged);
    }
    // A link to a file elsewhere: the file is left alone, the link replaced.
    let target = run_dir(test).with_extension("elsewhere");
    std::fs::write(&target, b"not a cache").unwrap();
    std::fs::remove_file(&cache).unwrap();
    std::os::unix::fs::symlink(&target, &cache).unwrap();
    run_guest(test, &["--cold"], "hello", &[]).expect_status(0);
    assert_eq!(std::fs::read(&target).unwrap(), b"not a cache");
    assert!(!std::fs::symlink_metadata(&cache)
        .unwrap()
        .file_type()
        .is_symlink());
    rewritten(b"not a cache");
    let _ = std::fs::remove_file(&target);
}

/// The cache file's format line and boot id (`hypervisor-ext/src/cpuid_cache.rs`).
const MAGIC_AND_BOOT_ID_LEN: usize = 8 + 36;

#[test]
fn a_symlink_planted_for_a_named_object_is_never_followed() {
    // Defect: a guest's shared memory mapped the target of a planted link and wrote into it.
    let test = "hostile-symlink";
    let dir = run_dir(test);
    let target = dir.join("precious");
    std::fs::write(&target, b"precious data").unwrap();
    let mut family = Running::start(test, &[], "hostile", &["shm-on-signal", "victim"]);
    family.expect("shm-on-signal ready");
    let root = family.id();
    let entry: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(format!("{root}.json"))).unwrap()).unwrap();
    let ipc = dir.join("ipc");
    std::fs::create_dir_all(&ipc).unwrap();
    std::fs::set_permissions(&ipc, std::fs::Permissions::from_mode(0o700)).unwrap();
    // Where this build names the family's object, and where older builds did.
    let mut names = vec![format!("shm.victim@{root}")];
    if let Some(key) = entry["family_key"].as_u64() {
        names.push(format!("shm.victim@{key:016x}"));
    }
    for name in &names {
        std::os::unix::fs::symlink(&target, ipc.join(name)).unwrap();
    }
    ctl(test, &["kill", "-s", "USR1", &root.to_string()]).expect_status(0);
    let created = family.expect("shm-on-signal create: ");
    let opened = family.expect("shm-on-signal open: ");
    let out = family.finish();
    out.expect_status(0).expect_no_host_panic();
    assert_eq!(std::fs::read(&target).unwrap(), b"precious data", "{out:#?}");
    assert_eq!(created, "Err(PermissionDenied)", "{out:#?}");
    assert_eq!(opened, "Err(PermissionDenied)", "{out:#?}");
    for name in &names {
        let _ = std::fs::remove_file(ipc.join(name));
    }
    std::fs::remove_file(&target).unwrap();
    assert_no_leaks(test);
}

/// Holds a POSIX write lock on `file` for as long as it is open (in this test process).
fn lock(file: &std::fs::File) {
    use std::os::fd::AsRawFd;
    // SAFETY: a zeroed flock is valid; l_len 0 locks the whole file.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    // SAFETY: F_SETLK on an open descriptor with a valid flock.
    assert_eq!(unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &fl) }, 0);
}

#[test]
fn forged_registry_entries_are_neither_listed_nor_signalled() {
    // Defect: an entry naming the pid of an ordinary process, kept locked by anyone, was listed
    // by `ps`, and `pvmctl kill NAME` killed that process.
    let test = "hostile-forged";
    let dir = run_dir(test);
    let mut victim = Command::new("sleep").arg("600").spawn().expect("start a victim");
    let forge = |id: u32, name: &str| {
        let entry = serde_json::json!({
            "id": id, "parent": 0, "family": id, "family_key": 1, "name": name, "image": "/bin/sleep",
            "mem_size": 67108864u64, "started_ms": 0, "state": "running"
        });
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(dir.join(format!("{id}.json")))
            .unwrap();
        f.write_all(entry.to_string().as_bytes()).unwrap();
        lock(&f);
        f
    };
    // Locked by this test process, naming the victim; and naming this (non-monitor) process.
    let _held = [
        forge(victim.id(), "forged"),
        forge(std::process::id(), "forged-self"),
    ];
    let rows = ps_json(test, true);
    assert!(rows.is_empty(), "forged entries listed: {rows:#?}");
    for target in ["forged", "forged-self", &victim.id().to_string()] {
        let out = ctl(test, &["kill", "-s", "KILL", target]);
        out.expect_status(1);
        assert!(out.stderr.contains("no pVM"), "{out:#?}");
    }
    let _ = ctl(test, &["kill", "-s", "KILL", "--family", "forged"]);
    // A SIGKILL is final once sent: if pvmctl had sent one, this TERM would not be the signal
    // the victim dies of.
    Command::new("kill")
        .args(["-TERM", &victim.id().to_string()])
        .status()
        .expect("send TERM");
    let status = victim.wait().expect("wait for the victim");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(libc::SIGTERM),
        "pvmctl kill reached an ordinary process"
    );
}

/// A memory cgroup of `limit` bytes, made for one test (as root: cgroup v1's memory controller,
/// or v2's), removed when dropped.
struct MemoryCgroup {
    dir: std::path::PathBuf,
}

impl MemoryCgroup {
    fn new(name: &str, limit: u64) -> MemoryCgroup {
        let v1 = std::path::Path::new("/sys/fs/cgroup/memory");
        let v2 = std::path::Path::new("/sys/fs/cgroup");
        let v2_memory = std::fs::read_to_string(v2.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"));
        let (dir, limit_file) = if v1.join("memory.limit_in_bytes").exists() {
            (v1.join(name), "memory.limit_in_bytes")
        } else if v2_memory {
            (v2.join(name), "memory.max")
        } else {
            panic!("this test needs a memory cgroup it can create (cgroup v1 or v2 with the memory controller, as root)");
        };
        let _ = std::fs::remove_dir(&dir);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("create {} (run as root): {e}", dir.display()));
        std::fs::write(dir.join(limit_file), limit.to_string()).expect("set the memory limit");
        let _ = std::fs::write(dir.join("memory.swappiness"), "0");
        MemoryCgroup { dir }
    }

    fn add(&self, pid: u32) {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string()).expect("move into the cgroup");
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

#[test]
fn a_monitor_the_kernels_oom_killer_ends_is_reported_as_such() {
    // Defect: an OOM-killed monitor left no report line.
    let test = "hostile-oom";
    let cgroup = MemoryCgroup::new(&format!("pvm-test-oom-{}", std::process::id()), 160 << 20);
    let mut family = Running::start(
        test,
        &["--mem", "512M", "--max-mem-total", "4G"],
        "hostile",
        &["oom-on-signal", "320"],
    );
    family.expect("oom-on-signal ready");
    cgroup.add(family.id());
    ctl(test, &["kill", "-s", "USR1", &family.id().to_string()]).expect_status(0);
    let status = family.expect("oom-on-signal child: ");
    let out = family.finish();
    out.expect_status(0).expect_no_host_panic();
    assert_eq!(status, "Killed(9)", "{out:#?}");
    assert!(out.stderr.contains("OOM killer"), "{out:#?}");
    assert!(!out.stdout.contains("child touched"), "{out:#?}");
    drop(cgroup);
    assert_no_leaks(test);
}

#[test]
fn monitors_run_confined_without_inherited_descriptors() {
    use std::os::fd::AsRawFd;
    let test = "hostile-confined";
    // A descriptor pvmctl inherits (not close-on-exec): the monitor must not keep it.
    let leaked = std::fs::File::open("/etc/hostname").expect("open a file");
    // SAFETY: dup of an open descriptor; the copy is closed below.
    let inherited = unsafe { libc::dup(leaked.as_raw_fd()) };
    assert!(inherited > 2);
    let mut family = Running::start(test, &[], "forktest", &["idle", "2"]);
    // SAFETY: closes our copy (the child has its own).
    unsafe { libc::close(inherited) };
    family.expect("idle: 2 children forked");
    let rows = ps_until(test, false, |rows| rows.len() == 3);
    assert_eq!(rows.len(), 3, "{rows:#?}");
    for row in &rows {
        let id = row["id"].as_u64().unwrap();
        let status = std::fs::read_to_string(format!("/proc/{id}/status")).unwrap();
        assert!(
            status.contains("\nSeccomp:\t2\n"),
            "pVM {id} is not under its filter:\n{status}"
        );
        assert!(status.contains("\nNoNewPrivs:\t1\n"), "pVM {id}:\n{status}");
        assert!(status.starts_with("Name:\tpvm-monitor\n"), "pVM {id}:\n{status}");
        let fds = fd_targets(u32::try_from(id).expect("a pid"));
        assert!(
            !fds.iter().any(|f| f == "/etc/hostname"),
            "pVM {id} kept an inherited descriptor: {fds:#?}"
        );
    }
    ctl(test, &["kill", "--family", &family.id().to_string()]).expect_status(0);
    family.finish().expect_status(143);
    assert_no_leaks(test);
}

/// One request line over a raw connection to pVM `id`'s control socket; the answer line.
fn control_raw(test: &str, id: u32, request: &[u8]) -> String {
    use std::io::{BufRead, BufReader};
    let path = run_dir(test).join(format!("{id}.sock"));
    let mut conn = std::os::unix::net::UnixStream::connect(path).expect("connect to the control socket");
    conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("a read timeout");
    conn.write_all(request).expect("send");
    let mut answer = String::new();
    BufReader::new(conn).read_line(&mut answer).expect("an answer");
    answer
}

#[test]
fn hostile_control_connections_get_errors_and_the_pvm_runs_on() {
    let test = "hostile-control";
    let mut spin = Running::start(test, &[], "spin", &[]);
    spin.expect("spinning");
    let id = spin.id();
    let status = control_raw(test, id, b"{\"request\":\"status\"}\n");
    assert_eq!(
        status.trim(),
        format!("{{\"answer\":\"done\",\"id\":{id},\"state\":\"running\"}}")
    );
    for (what, request) in [
        ("garbage", b"garbage\n".to_vec()),
        ("an unknown request", b"{\"request\":\"format_disk\"}\n".to_vec()),
        ("too long", vec![b'x'; 10_000]),
        ("nothing", Vec::new()),
    ] {
        let answer = control_raw(test, id, &request);
        assert!(answer.contains("\"answer\":\"error\""), "{what}: {answer}");
    }
    // A crowd of connections that say nothing: answered (or dropped) one by one.
    let path = run_dir(test).join(format!("{id}.sock"));
    let crowd: Vec<_> = (0..20)
        .map(|_| std::os::unix::net::UnixStream::connect(&path).expect("connect"))
        .collect();
    drop(crowd);
    // The pVM is still served and still obeys.
    ctl(test, &["pause", &id.to_string()]).expect_status(0);
    let paused = control_raw(test, id, b"{\"request\":\"status\"}\n");
    assert!(paused.contains("\"state\":\"paused\""), "{paused}");
    ctl(test, &["resume", &id.to_string()]).expect_status(0);
    ctl(test, &["kill", &id.to_string()]).expect_status(0);
    spin.finish().expect_status(143);
    assert_no_leaks(test);
}

#[test]
fn a_paused_pvm_shows_paused_while_its_control_socket_is_busy() {
    let test = "hostile-busy-paused";
    let mut spin = Running::start(test, &[], "spin", &[]);
    spin.expect("spinning");
    let id = spin.id();
    ctl(test, &["pause", &id.to_string()]).expect_status(0);
    let state = || {
        let rows = ps_json(test, false);
        let row = rows
            .iter()
            .find(|r| r["id"] == id)
            .unwrap_or_else(|| panic!("{rows:#?}"));
        row["state"].as_str().unwrap_or_default().to_string()
    };
    assert_eq!(state(), "paused");
    // A connection that says nothing holds the monitor until it gives up on it (it closes it):
    // all that time the pVM is still paused, and its entry must say so (a `resume` reads it).
    let path = run_dir(test).join(format!("{id}.sock"));
    let mut silent = std::os::unix::net::UnixStream::connect(&path).expect("connect");
    silent.set_nonblocking(true).unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + TIME_LIMIT;
    loop {
        seen.push(state());
        match std::io::Read::read(&mut silent, &mut [0u8; 64]) {
            Ok(_) => break,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => break,
        }
        assert!(
            Instant::now() < deadline,
            "the monitor never closed the silent connection"
        );
    }
    assert!(seen.iter().all(|s| s == "paused"), "states seen: {seen:?}");
    ctl(test, &["resume", &id.to_string()]).expect_status(0);
    ctl(test, &["kill", &id.to_string()]).expect_status(0);
    spin.finish().expect_status(143);
    assert_no_leaks(test);
}

#[test]
fn a_control_socket_not_held_by_the_pvms_monitor_is_refused() {
    let test = "hostile-impostor";
    let mut spin = Running::start(test, &[], "spin", &[]);
    spin.expect("spinning");
    let id = spin.id();
    let path = run_dir(test).join(format!("{id}.sock"));
    std::fs::remove_file(&path).expect("remove the socket");
    let impostor = std::os::unix::net::UnixListener::bind(&path).expect("plant a socket");
    let out = ctl(test, &["pause", &id.to_string()]);
    out.expect_status(1);
    assert!(out.stderr.contains("not by its monitor"), "{out:#?}");
    drop(impostor);
    std::fs::remove_file(&path).expect("remove the planted socket");
    ctl(test, &["kill", &id.to_string()]).expect_status(0);
    spin.finish().expect_status(143);
    assert_no_leaks(test);
}

#[test]
fn hostile_library_calls_get_errors_and_library_memory_keeps_its_permissions() {
    let test = "hostile-dl";
    let greet = guest_lib("greet");
    ctl(test, &["lib", "trust", greet.to_str().unwrap()]).expect_status(0);
    let lib = format!("--lib=greet={}", greet.display());
    let out = hostile(test, &[&lib], &["dl", "greet"]);
    out.expect_status(0);
    let cases = results(&out, "dl ");
    assert!(cases.len() >= 27, "{out:#?}");
    let (efault, einval, enoent, ebadf) = ("-14", "-22", "-2", "-9");
    for (case, result) in cases {
        let want: &str = match case {
            "open name-null"
            | "open name-gdt"
            | "open name-beyond"
            | "open name-wrap"
            | "open name-lib-window" => efault,
            "open name-empty" | "open name-huge" | "open name-path" => einval,
            c if c.starts_with("open msg-") => "-2 len 0 intact true",
            "open unknown" => "-2 message true",
            c if c.starts_with("close") => ebadf,
            c if c.starts_with("update") => einval,
            "write-code" | "exec-data" => {
                assert!(result.starts_with("Crashed { vector: 14"), "dl {case}: {result}");
                continue;
            }
            "read-code" => "Exited(0)",
            "read-hole" => BAD_HYPERCALL,
            _ => continue,
        };
        assert_eq!(result, want, "dl {case}");
    }
    let _ = enoent;
    assert!(
        out.stderr.contains("an empty part of a library window"),
        "{out:#?}"
    );
    assert!(out.stdout.contains("dl: alive"), "{out:#?}");
    assert_no_leaks(test);
}

#[test]
fn a_runtime_that_gives_a_bad_hook_escape_gets_no_update() {
    let test = "hostile-dl-escape";
    let (v1, v2) = (guest_lib("greet"), guest_lib("greet2"));
    ctl(
        test,
        &["lib", "trust", v1.to_str().unwrap(), v2.to_str().unwrap()],
    )
    .expect_status(0);
    let lib = format!("--lib=greet={}", v1.display());
    let mut pvm = Running::start(test, &[&lib], "hostile", &["dl-escape", "greet"]);
    pvm.expect("dl-escape ready");
    let out = ctl(
        test,
        &[
            "lib",
            "update",
            &pvm.id().to_string(),
            "greet",
            v2.to_str().unwrap(),
        ],
    );
    out.expect_status(1);
    assert!(out.stderr.contains("no valid hook escape"), "{out:#?}");
    assert_eq!(pvm.expect("dl-escape begin: "), "-22");
    assert_eq!(pvm.expect("dl-escape version: "), "1.0.0");
    pvm.finish().expect_status(0);
    assert_no_leaks(test);
}

#[test]
fn hostile_network_calls_get_errors_and_the_network_goes_on() {
    let test = "hostile-net";
    let out = hostile(test, &["--publish=127.0.0.1:0:7"], &["net"]);
    out.expect_status(0);
    let want = |case: &str| -> &str {
        match case {
            "listen 0" | "listen 65536" | "listen max" => "-22",
            "listen 8" => "-13",
            "listen 7" => "0",
            "accept max" | "accept 2^32" | "accept closed" => "-9",
            "accept flags" => "-22",
            "accept none yet" => "-11",
            "poll too many" => "-22",
            "poll beyond memory" | "poll read-only items" | "poll wrap" => "-14",
            // The bad handle is INVALID; the listener has no client (and is never writable);
            // bits beyond READ and WRITE are ignored; old revents are overwritten.
            "poll garbage" => "0 ready=1 revents=0x8,0x0",
            "connect port 0" | "connect port max" => "-22",
            "connect not allowed" => "-13",
            other => panic!("unexpected case {other:?}"),
        }
    };
    let cases = results(&out, "net ");
    assert_eq!(cases.len(), 18, "{out:#?}");
    for (case, result) in cases {
        assert_eq!(result, want(case), "net {case}");
    }
    assert!(out.stdout.contains("net: alive 0"), "{out:#?}");
    assert_no_leaks(test);
}

#[test]
fn a_guest_scribbling_over_its_connection_rings_ends_only_that_connection() {
    use std::io::{Read, Write};
    let test = "hostile-net-scribble";
    let mut pvm = Running::start(test, &["--publish=127.0.0.1:0:7"], "hostile", &["net-scribble"]);
    let rows = ps_until(test, false, |rows| !rows.is_empty());
    let port: u16 = rows[0]["ports"][0]
        .as_str()
        .and_then(|p| p.split_once("->"))
        .and_then(|(h, _)| h.rsplit_once(':'))
        .and_then(|(_, p)| p.parse().ok())
        .expect("the published port");
    let mut first = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    first.set_read_timeout(Some(TIME_LIMIT)).unwrap();
    pvm.expect("net-scribble: scribbled");
    // The backend reads the corrupt indices, ends that connection: end of file, or a reset.
    let _ = first.write_all(b"anyone?");
    let mut rest = Vec::new();
    match first.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "nothing came from a scribbled ring: {rest:?}"),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
    }
    // And serves the next client of the family.
    let mut second = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    second.set_read_timeout(Some(TIME_LIMIT)).unwrap();
    second.write_all(b"still here").unwrap();
    let mut echo = [0u8; 10];
    second.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"still here");
    pvm.expect("net-scribble: child Exited(0)");
    pvm.finish().expect_status(0);
    assert_no_leaks(test);
}
