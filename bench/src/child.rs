//! Programs the benchmarks run as child processes, and how they ended.
use std::ffi::{CString, OsStr};
use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::BenchError;

/// Sends `sig` to process `pid` (one process, never a group; any signal, real-time ones too).
pub(crate) fn signal(pid: u32, sig: i32) -> io::Result<()> {
    hypervisor_ext::host::kill(pid, sig)
}

/// Sends `sig` to every process of group `pgid` (the monitor never signals a group, so this is
/// the benches' own).
pub(crate) fn signal_group(pgid: u32, sig: i32) -> io::Result<()> {
    let pgid = i32::try_from(pgid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::ESRCH))?;
    let sig = rustix::process::Signal::from_named_raw(sig)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    Ok(rustix::process::kill_process_group(pgid, sig)?)
}

/// `waitpid` for child `pid`, retried on EINTR: its raw wait status, or None with `nohang`
/// while it runs.
pub(crate) fn wait_child(pid: u32, nohang: bool) -> io::Result<Option<i32>> {
    loop {
        match hypervisor_ext::host::waitpid(Some(pid), nohang) {
            Ok(reaped) => return Ok(reaped.map(|(_, status)| status.0)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Exit status of a child whose `execv` failed.
pub(crate) const EXEC_FAILED: i32 = 127;

/// How a child process ended (a decoded `waitpid` status).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildStatus {
    /// It exited with this status.
    Exited(i32),
    /// A signal killed it.
    Signaled(i32),
    /// Any other wait status.
    Other(i32),
}

impl ChildStatus {
    pub(crate) fn from_wait_status(status: libc::c_int) -> ChildStatus {
        if libc::WIFEXITED(status) {
            ChildStatus::Exited(libc::WEXITSTATUS(status))
        } else if libc::WIFSIGNALED(status) {
            ChildStatus::Signaled(libc::WTERMSIG(status))
        } else {
            ChildStatus::Other(status)
        }
    }
}

impl fmt::Display for ChildStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChildStatus::Exited(EXEC_FAILED) => write!(f, "exited with status {EXEC_FAILED} (exec failed?)"),
            ChildStatus::Exited(code) => write!(f, "exited with status {code}"),
            ChildStatus::Signaled(sig) => write!(f, "was killed by signal {sig}"),
            ChildStatus::Other(status) => write!(f, "ended with wait status {status:#x}"),
        }
    }
}

/// A program run with fork + execv + waitpid, its output sent to /dev/null. Everything the child
/// needs is prepared here, so that it makes only async-signal-safe calls between fork and exec.
pub(crate) struct Child {
    path: CString,
    /// Keeps the strings `argv` points into alive.
    _args: Vec<CString>,
    /// NULL-terminated.
    argv: Vec<*const libc::c_char>,
    devnull: RawFd,
    program: PathBuf,
    command: String,
}

impl Child {
    /// `devnull` must stay open as long as the `Child` is used.
    pub(crate) fn new(program: &Path, args: &[&OsStr], devnull: &File) -> Result<Child, BenchError> {
        let cstring = |s: &OsStr| CString::new(s.as_bytes()).map_err(|_| BenchError::NulInPath(s.into()));
        let path = cstring(program.as_os_str())?;
        let args = args.iter().map(|a| cstring(a)).collect::<Result<Vec<_>, _>>()?;
        let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        let command = args
            .iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ");
        Ok(Child {
            path,
            _args: args,
            argv,
            devnull: devnull.as_raw_fd(),
            program: program.into(),
            command,
        })
    }

    /// Runs the program to its end; the time from just before fork to waitpid's return.
    pub(crate) fn run(&self) -> Result<Duration, BenchError> {
        let start = Instant::now();
        // SAFETY: the child only calls async-signal-safe functions (dup2, execv, _exit) on data
        // prepared before the fork, then either execs or exits without unwinding or flushing.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: in the forked child: `devnull` is an open descriptor (its CLOEXEC flag is
            // not copied by dup2), `path` and `argv` are valid NUL-terminated C strings and a
            // NULL-terminated array; `_exit` ends the child if execv returns.
            unsafe {
                libc::dup2(self.devnull, libc::STDOUT_FILENO);
                libc::dup2(self.devnull, libc::STDERR_FILENO);
                libc::execv(self.path.as_ptr(), self.argv.as_ptr());
                libc::_exit(EXEC_FAILED);
            }
        }
        if pid < 0 {
            return Err(self.process_error("fork"));
        }
        let status = wait_child(pid as u32, false)
            .map_err(|source| BenchError::Process {
                call: "waitpid",
                program: self.program.clone(),
                source,
            })?
            .unwrap_or_default();
        let elapsed = start.elapsed();
        match ChildStatus::from_wait_status(status) {
            ChildStatus::Exited(0) => Ok(elapsed),
            status => Err(BenchError::ChildFailed {
                command: self.command.clone(),
                status,
            }),
        }
    }

    fn process_error(&self, call: &'static str) -> BenchError {
        BenchError::Process {
            call,
            program: self.program.clone(),
            source: io::Error::last_os_error(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_child_is_reported() {
        let devnull = File::options()
            .write(true)
            .open("/dev/null")
            .expect("open /dev/null");
        let missing = Path::new("/nonexistent/pvmctl-bench-test");
        let child = Child::new(missing, &[missing.as_os_str()], &devnull).expect("prepare");
        match child.run() {
            Err(BenchError::ChildFailed { status, .. }) => {
                assert_eq!(status, ChildStatus::Exited(EXEC_FAILED))
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
