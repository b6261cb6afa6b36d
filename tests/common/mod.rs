//! Shared helpers of the integration tests: run `pvmctl` on real KVM with a time limit.
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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

/// A private runtime directory for one test.
pub fn run_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pvm-test-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create test runtime dir");
    dir
}

/// `pvmctl` with a private runtime dir.
pub fn pvmctl(test: &str) -> Command {
    require_kvm();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pvmctl"));
    cmd.env("PVM_RUN_DIR", run_dir(test)).env_remove("PVM_LOG");
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
pub fn finish(mut child: Child) -> Output {
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
        if start.elapsed() > TIME_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("pvmctl did not finish within {TIME_LIMIT:?}: the pVM hung");
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
    let child = pvmctl(test)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pvmctl");
    finish(child)
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
