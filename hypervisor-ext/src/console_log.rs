//! The console of a detached pVM family (`pvmctl run -d`): a file per family root in the
//! runtime directory, `<run-dir>/logs/<id>.log`, that every pVM of the family appends to, kept
//! under [`LOG_LIMIT`] bytes (it starts over when it reaches it, saying so), and that `pvmctl
//! logs` reads. Files are opened through the verified runtime directory (no links followed, the
//! user's own regular files); they stay after the family ends, for `logs`.
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use crate::rundir::RunDir;
use crate::sys::{self, Open};

/// Largest console log.
pub const LOG_LIMIT: u64 = 8 << 20;

/// The log directory's name in the runtime directory.
const LOGS: &str = "logs";

fn name(id: u32) -> String {
    format!("{id}.log")
}

/// Creates (or empties) the console log of pVM `id` in the runtime directory `run_dir`.
pub fn create(run_dir: &Path, id: u32) -> Result<OwnedFd, crate::RunDirError> {
    let dir = RunDir::open(run_dir)?.subdir(LOGS)?;
    let fd = dir
        .open_file(&name(id), Open::Create)
        .map_err(|source| crate::RunDirError::Io {
            path: run_dir.join(LOGS).join(name(id)),
            source,
        })?;
    let _ = sys::set_len(fd.as_fd(), 0);
    Ok(fd)
}

/// Opens the console log of pVM `id` for reading.
pub fn open(run_dir: &Path, id: u32) -> io::Result<OwnedFd> {
    let dir = RunDir::open(run_dir)
        .and_then(|d| d.subdir(LOGS))
        .map_err(|e| io::Error::new(io::ErrorKind::NotFound, e.to_string()))?;
    dir.open_file(&name(id), Open::Read)
}

/// Makes `log` this process's standard output and error (appending), standard input
/// `/dev/null`, and the process a session of its own (no terminal's signals reach it).
pub fn detach_onto(log: &OwnedFd) -> io::Result<()> {
    sys::set_append(log.as_fd())?;
    sys::detach_stdin_stdout();
    sys::dup_onto_stdout_stderr(log.as_fd())?;
    sys::new_session();
    Ok(())
}

/// Keeps the log under [`LOG_LIMIT`]: called after console output; starts the file over,
/// with a line saying so, when it reached the limit.
pub fn keep_bounded() {
    let out = sys::stdio(1);
    if sys::fstat(out).is_ok_and(|st| st.st_size as u64 >= LOG_LIMIT) && sys::set_len(out, 0).is_ok() {
        let _ = sys::write_all(
            out,
            format!("[pvm: the console log reached {LOG_LIMIT} bytes and started over]\n").as_bytes(),
        );
    }
}
