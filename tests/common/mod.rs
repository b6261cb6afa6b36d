//! Shared helpers of the integration tests: run `pvmctl` on real KVM with a time limit.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Longest a pVM in a test may run; past it the test fails as hung.
pub const TIME_LIMIT: Duration = Duration::from_secs(60);

/// Fails loudly when KVM is unavailable: these tests never skip.
pub fn require_kvm() {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        panic!("pvm's tests need /dev/kvm (read-write), and opening it failed: {e}");
    }
}

/// Path of a built example guest.
pub fn guest(name: &str) -> PathBuf {
    Path::new(env!("PVM_GUEST_DIR")).join(name)
}

/// The workspace's examples directory.
pub fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("examples")
}

/// A private runtime directory for one test (the test process's pid keeps runs apart).
/// (mode 0700: pvm refuses a runtime directory others may access).
pub fn run_dir(test: &str) -> PathBuf {
    use std::os::unix::fs::DirBuilderExt;
    let dir = std::env::temp_dir().join(format!("pvm-test-{}-{test}", std::process::id()));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .expect("create test runtime dir");
    dir
}

/// The `pvmctl` under test: this build's, or the one `PVM_TEST_PVMCTL` names (to check that a
/// regression test fails on an older build: `PVM_TEST_PVMCTL=/old/pvmctl cargo test`).
pub fn pvmctl_bin() -> PathBuf {
    std::env::var_os("PVM_TEST_PVMCTL")
        .filter(|p| !p.is_empty())
        .map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_pvmctl")), PathBuf::from)
}

/// The test's own library trust store (in its runtime directory).
pub fn trust_store(test: &str) -> PathBuf {
    run_dir(test).join("trust").join("trusted")
}

/// Path of a built example library (`libNAME.so` of examples/libs).
pub fn guest_lib(name: &str) -> PathBuf {
    Path::new(env!("PVM_GUEST_LIB_DIR")).join(format!("lib{name}.so"))
}

/// `pvmctl` with a private runtime dir and trust store.
pub fn pvmctl(test: &str) -> Command {
    require_kvm();
    let mut cmd = Command::new(pvmctl_bin());
    cmd.env("PVM_RUN_DIR", run_dir(test))
        .env("PVM_TRUST_STORE", trust_store(test))
        .env_remove("PVM_LOG");
    cmd
}

/// What a finished pvmctl printed and returned.
#[derive(Debug)]
pub struct Output {
    /// Exit status (None: killed by a signal).
    pub status: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Output {
    /// Asserts the exit status, showing the output on failure.
    pub fn expect_status(&self, want: i32) -> &Self {
        assert_eq!(
            self.status,
            Some(want),
            "unexpected exit status; output: {self:#?}"
        );
        self
    }

    /// Asserts that stderr holds no trace of a Rust panic in pvmctl itself.
    pub fn expect_no_host_panic(&self) -> &Self {
        for bad in ["thread 'main' panicked", "RUST_BACKTRACE", "stack backtrace"] {
            assert!(!self.stderr.contains(bad), "pvmctl panicked: {self:#?}");
        }
        self
    }
}

/// Waits for `child` at most [`TIME_LIMIT`], then collects its output (read while it runs, so
/// a chatty guest cannot block on a full pipe).
pub fn finish(child: Child) -> Output {
    finish_within(child, TIME_LIMIT)
}

/// How long a whole `pvmctl bench` may take in a test: its measurements run for a set number of
/// operations, ~35 s for `bench net --rounds 1` on a 2-CPU machine alone, up to ~60 s beside
/// the other tests, so [`TIME_LIMIT`] (which catches a hung guest) would fail a slow one.
pub const BENCH_TIME_LIMIT: Duration = Duration::from_secs(240);

/// [`finish`] with a time limit of its own.
pub fn finish_within(mut child: Child, limit: Duration) -> Output {
    fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<String> {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_string(&mut text);
            }
            text
        })
    }
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for pvmctl") {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("pvmctl did not finish within {limit:?}: the pVM hung");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stdout = out.join().expect("stdout reader");
    let stderr = err.join().expect("stderr reader");
    Output {
        status: status.code(),
        stdout,
        stderr,
    }
}

/// Runs `pvmctl ARGS` to the end (with the time limit).
pub fn pvmctl_run(test: &str, args: &[&str]) -> Output {
    pvmctl_run_within(test, args, TIME_LIMIT)
}

/// [`pvmctl_run`] with a time limit of its own.
pub fn pvmctl_run_within(test: &str, args: &[&str], limit: Duration) -> Output {
    let child = pvmctl(test)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pvmctl");
    finish_within(child, limit)
}

/// Runs an example guest: `pvmctl run [OPTS] GUEST -- ARGS`.
pub fn run_guest(test: &str, opts: &[&str], guest_name: &str, args: &[&str]) -> Output {
    let image = guest(guest_name);
    let image = image.to_str().expect("utf-8 path");
    let mut all = vec!["run"];
    all.extend_from_slice(opts);
    all.push(image);
    all.push("--");
    all.extend_from_slice(args);
    pvmctl_run(test, &all)
}

/// A pVM family running in the background, its stdout read line by line.
pub struct Running {
    /// The `pvmctl run` process (the family's root monitor).
    pub child: Child,
    lines: mpsc::Receiver<String>,
    /// Every line read so far.
    pub seen: Vec<String>,
    unclaimed: Vec<String>,
}

impl Running {
    /// Starts `pvmctl run [OPTS] GUEST -- ARGS` in the background.
    pub fn start(test: &str, opts: &[&str], guest_name: &str, args: &[&str]) -> Running {
        let image = guest(guest_name);
        let mut cmd = pvmctl(test);
        cmd.arg("run").args(opts).arg(image).arg("--").args(args);
        Running::spawn(cmd)
    }

    /// Starts `cmd` (a `pvmctl run`) in the background.
    pub fn spawn(mut cmd: Command) -> Running {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
            unclaimed: Vec::new(),
        }
    }

    /// Waits (at most [`TIME_LIMIT`]) for a line starting with `prefix` that no earlier call
    /// returned (lines of a family come in any order); returns the rest of it.
    pub fn expect(&mut self, prefix: &str) -> String {
        if let Some(i) = self.unclaimed.iter().position(|l| l.starts_with(prefix)) {
            return self.unclaimed.remove(i)[prefix.len()..].to_string();
        }
        let deadline = Instant::now() + TIME_LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return rest.to_string();
                    }
                    self.unclaimed.push(line);
                }
                Err(_) => {
                    let _ = self.child.kill();
                    panic!("no line starting with {prefix:?}; saw {:#?}", self.seen);
                }
            }
        }
    }

    /// The family root's pVM id (its monitor is the `pvmctl run` process).
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the end; returns the status and the rest of stdout and the whole stderr.
    pub fn finish(mut self) -> Output {
        let child = std::mem::replace(&mut self.child, placeholder());
        let mut out = finish(child);
        let mut rest: Vec<String> = std::mem::take(&mut self.seen);
        rest.extend(self.lines.iter());
        out.stdout = rest.join("\n");
        out
    }
}

/// A process that has already been waited for (the `Running` whose child `finish` took).
fn placeholder() -> Child {
    let mut child = Command::new("true")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start true");
    let _ = child.wait();
    child
}

impl Drop for Running {
    /// A test that failed midway leaves no family running: TERM to the root (which passes it
    /// to its family), then KILL if it does not end.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs a registry command (`ps`, `kill`, ...) against the test's runtime directory.
pub fn ctl(test: &str, args: &[&str]) -> Output {
    pvmctl_run(test, args)
}

/// `pvmctl ps --json [--all]` parsed.
pub fn ps_json(test: &str, all: bool) -> Vec<serde_json::Value> {
    let mut args = vec!["ps", "--json"];
    if all {
        args.push("--all");
    }
    let out = ctl(test, &args);
    out.expect_status(0);
    serde_json::from_str::<Vec<serde_json::Value>>(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:#?}"))
}

/// `ps --json` until `done(rows)` holds (the pVMs reach the state a test waits for), at most
/// [`TIME_LIMIT`]; returns the last rows either way, for the test to assert on.
pub fn ps_until(
    test: &str,
    all: bool,
    done: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + TIME_LIMIT;
    loop {
        let rows = ps_json(test, all);
        if done(&rows) || Instant::now() > deadline {
            return rows;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Waits (at most [`TIME_LIMIT`]) until no process holds anything in `test`'s runtime directory
/// open (monitors and their teardown helpers are gone), then asserts that nothing was left
/// behind: no registry entry, no named IPC object, no lease in the resource ledger.
pub fn assert_no_leaks(test: &str) {
    let dir = run_dir(test);
    let deadline = Instant::now() + TIME_LIMIT;
    loop {
        let holders = processes_using(&dir);
        if holders.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "processes still hold {} open: {holders:?}",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let left: Vec<String> = std::fs::read_dir(&dir)
        .expect("read the runtime dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json") || n.ends_with(".sock"))
        .collect();
    assert!(
        left.is_empty(),
        "registry entries or control sockets left in {}: {left:?}",
        dir.display()
    );
    let ipc: Vec<String> = std::fs::read_dir(dir.join("ipc"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(ipc.is_empty(), "named IPC objects left: {ipc:?}");
    // Shared library parts nobody maps are swept by `ps`: none may stay.
    ctl(test, &["ps"]).expect_status(0);
    let libs: Vec<String> = std::fs::read_dir(dir.join("lib"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(libs.is_empty(), "shared library parts left: {libs:?}");
    let usage = hypervisor_ext::ledger_usage(&dir).expect("read the resource ledger");
    assert_eq!(
        (usage.pvms, usage.mem_mib),
        (0, 0),
        "leases left in the resource ledger"
    );
}

/// Pids of the processes with a descriptor (or working directory) inside `dir`.
pub fn processes_using(dir: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    for proc_entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = proc_entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let fds = std::fs::read_dir(proc_entry.path().join("fd"));
        let uses = fds
            .into_iter()
            .flatten()
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target.starts_with(dir)));
        if uses {
            pids.push(pid);
        }
    }
    pids
}

/// Where the descriptors of process `pid` point (`/proc/PID/fd`).
pub fn fd_targets(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("descriptors of {pid}: {e}"))
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .map(|t| t.display().to_string())
        .collect()
}

/// The network backend of the family whose root is `root` (its child named `pvm-net`).
pub fn backend_of(root: u32) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (name, rest) = stat.split_once(") ")?;
        let ppid: u32 = rest.split_whitespace().nth(1)?.parse().ok()?;
        (name.ends_with("(pvm-net") && ppid == root).then_some(pid)
    })
}
