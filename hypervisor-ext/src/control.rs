//! The operator's control channel to one pVM: a Unix stream socket `<run-dir>/<id>.sock` its
//! monitor listens on, carrying one request and its answer per connection, as one JSON line
//! each ([`Request`], [`Response`]: the protocol, defined here once for the monitor and
//! `pvmctl`). A request may carry one open file with it (`SCM_RIGHTS`: the new version of a
//! library for [`Request::Update`], opened by `pvmctl` with the operator's rights, so the
//! monitor opens no path it is given). Most answers come at once; an update's comes when the
//! update is over (committed or rolled back), the connection held open meanwhile.
//!
//! A monitor has one thread, busy in `KVM_RUN`: the socket is in async mode (`O_ASYNC`), so a
//! connection raises SIGIO, whose handler kicks the vCPU like any signal; the vCPU loop then
//! serves every pending connection and goes back to the guest. Only this user (or root) may
//! connect: the socket lives in the private runtime directory, and the monitor checks the
//! client's credentials (`SO_PEERCRED`); the client checks that the server is the monitor its
//! entry names. A connection gets [`REQUEST_TIMEOUT_MS`] to send its request, and a request is at
//! most [`MAX_MESSAGE`] bytes: a client that says nothing or too much stalls the vCPU for that
//! long at most.
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::dl::LibStatus;
use crate::registry::State;
use crate::rundir::RunDir;
use crate::sys;

/// Longest request or answer, in bytes.
pub const MAX_MESSAGE: usize = 4096;
/// How long a connected client has to send its request.
pub const REQUEST_TIMEOUT_MS: u64 = 100;

/// What an operator asks a pVM's monitor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    /// How the pVM is.
    Status,
    /// Stop running the guest until [`Request::Resume`].
    Pause,
    /// Run the guest again.
    Resume,
    /// The libraries the pVM has loaded.
    Libraries,
    /// Replace the loaded library `library` with the file sent along with the request.
    Update {
        /// The library's name (as the guest opened it).
        library: String,
        /// The new version's file, for messages and `lib list`.
        file: String,
        /// Accept a version lower than the loaded one.
        allow_downgrade: bool,
        /// How long the guest has to reach a safe point, in milliseconds.
        timeout_ms: u64,
        /// Part of an update of several pVMs, all or none: when this pVM is ready to switch
        /// (its handles rebound, its state handed over), answer [`Response::Ready`] and wait
        /// for [`Request::Decide`] on the same connection before switching.
        #[serde(default)]
        two_phase: bool,
    },
    /// The operator's decision on a two-phase update (on the update's connection).
    Decide {
        /// Switch (`true`) or roll back.
        commit: bool,
    },
}

/// A monitor's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum Response {
    /// The pVM, and its state once the request was carried out.
    Done {
        /// The pVM's id.
        id: u32,
        /// Its state now.
        state: State,
    },
    /// The pVM's libraries.
    Libraries {
        /// The pVM's id.
        id: u32,
        /// Its libraries.
        libraries: Vec<LibStatus>,
    },
    /// The library was replaced.
    Updated {
        /// The pVM's id.
        id: u32,
        /// The library.
        library: String,
        /// The old version's version string.
        from: Option<String>,
        /// The new version's.
        to: Option<String>,
        /// How long the guest was stopped for the switch (safe point to commit), in
        /// microseconds.
        pause_us: u64,
    },
    /// A two-phase update is ready to switch and waits for [`Request::Decide`].
    Ready {
        /// The pVM's id.
        id: u32,
        /// Its child pVMs not yet waited for (the operator checks that the update reached
        /// every one that may hold the library: one forked as the update began would not be
        /// registered yet when the family was listed).
        #[serde(default)]
        children: Vec<u32>,
    },
    /// The request was refused or failed.
    Error {
        /// Why, in words.
        message: String,
    },
}

/// Errors of a control request (client side).
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No monitor listens for that pVM.
    #[error("pVM {0} has no control socket (it ended, or runs a pvm without one)")]
    NoSocket(u32),
    /// The socket's other end is not the pVM's monitor.
    #[error("the control socket of pVM {id} is held by process {pid}, not by its monitor")]
    Impostor {
        /// The pVM.
        id: u32,
        /// Who answered.
        pid: u32,
    },
    /// The monitor did not answer in time.
    #[error("pVM {0} did not answer within the time limit")]
    Timeout(u32),
    /// The answer was not one.
    #[error("pVM {id} answered something that is not an answer: {text:?}")]
    Garbled {
        /// The pVM.
        id: u32,
        /// What came.
        text: String,
    },
    /// The connection failed.
    #[error("control socket of pVM {id}: {source}")]
    Io {
        /// The pVM.
        id: u32,
        /// The error.
        source: io::Error,
    },
}

/// The socket's file name for pVM `id`.
pub fn socket_name(id: u32) -> String {
    format!("{id}.sock")
}

/// A monitor's listening control socket.
#[derive(Debug)]
pub struct ControlSocket {
    listener: OwnedFd,
}

impl ControlSocket {
    /// Listens on `<dir>/<id>.sock` (replacing whatever has that name: a recycled pid's stale
    /// socket), with connections signalled as SIGIO to this process.
    pub fn create(dir: &RunDir, id: u32) -> io::Result<ControlSocket> {
        let name = socket_name(id);
        match dir.remove(&name) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener = sys::unix_listener(dir.fd(), &name, false)?;
        sys::sigio_on_input(listener.as_fd())?;
        Ok(ControlSocket { listener })
    }

    /// Serves every pending connection with `handle`, which answers each request (at once, or
    /// later through [`Incoming::defer`]); never blocks longer than a client's
    /// [`REQUEST_TIMEOUT_MS`].
    pub fn serve(&self, mut handle: impl FnMut(Incoming)) {
        let me = sys::geteuid();
        while let Ok(Some(conn)) = sys::accept(self.listener.as_fd()) {
            let refused = match sys::peer_credentials(conn.as_fd()) {
                Ok((_, uid)) if uid == me || uid == 0 => {
                    match read_line(conn.as_fd(), REQUEST_TIMEOUT_MS * 1_000_000, true) {
                        Ok((line, mut fds)) => match serde_json::from_slice::<Request>(&line) {
                            Ok(request) => {
                                handle(Incoming {
                                    request,
                                    file: fds.pop(),
                                    conn,
                                });
                                continue;
                            }
                            Err(e) => format!("not a request: {e}"),
                        },
                        Err(e) => format!("no request: {e}"),
                    }
                }
                Ok((_, uid)) => format!("user {uid} may not control this pVM"),
                Err(e) => format!("unknown peer: {e}"),
            };
            let _ = write_line(conn.as_fd(), &Response::Error { message: refused });
        }
    }
}

/// A request that came in, with its connection (answered when this is dropped, with an error,
/// if nothing else answered it).
#[derive(Debug)]
pub struct Incoming {
    /// The request.
    pub request: Request,
    /// The file sent along with it, if any.
    pub file: Option<OwnedFd>,
    conn: OwnedFd,
}

impl Incoming {
    /// Answers now.
    pub fn answer(self, response: &Response) {
        let _ = write_line(self.conn.as_fd(), response);
    }

    /// Keeps the connection to answer later.
    pub fn defer(self) -> Pending {
        Pending { conn: self.conn }
    }
}

/// A connection waiting for its answer (an update under way).
#[derive(Debug)]
pub struct Pending {
    conn: OwnedFd,
}

impl Pending {
    /// Answers (the client may have gone: then nobody hears it).
    pub fn answer(self, response: &Response) {
        let _ = write_line(self.conn.as_fd(), response);
    }

    /// Says `response` and waits at most `timeout_ns` for the operator's [`Request::Decide`]:
    /// `true` to commit; `false` for an abort, silence, a closed connection or anything else.
    pub fn ask(&self, response: &Response, timeout_ns: u64) -> bool {
        if write_line(self.conn.as_fd(), response).is_err() {
            return false;
        }
        matches!(
            read_line(self.conn.as_fd(), timeout_ns, false)
                .ok()
                .and_then(|(line, _)| serde_json::from_slice::<Request>(&line).ok()),
            Some(Request::Decide { commit: true })
        )
    }
}

/// Reads one line of at most [`MAX_MESSAGE`] bytes (or what comes before end of file),
/// waiting at most `timeout_ns` in all; with `take_fds`, also the descriptors sent along.
fn read_line(fd: BorrowedFd<'_>, timeout_ns: u64, take_fds: bool) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let deadline = sys::monotonic_ns().saturating_add(timeout_ns);
    let mut buf = Vec::new();
    let mut fds = Vec::new();
    loop {
        if let Some(end) = buf.iter().position(|&b| b == b'\n') {
            buf.truncate(end);
            return Ok((buf, fds));
        }
        if buf.len() > MAX_MESSAGE {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "message too long"));
        }
        let left = deadline.saturating_sub(sys::monotonic_ns());
        let readable = match sys::wait_readable(fd, left as i64) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => other?,
        };
        if left == 0 || !readable {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "nothing came in time"));
        }
        let mut chunk = [0u8; 512];
        let n = if take_fds {
            let (n, passed) = sys::recv_with_fds(fd, &mut chunk)?;
            fds.extend(passed);
            fds.truncate(sys::MAX_PASSED_FDS);
            n
        } else {
            sys::read(fd, &mut chunk)?
        };
        match n {
            0 => return Ok((buf, fds)),
            n => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn write_line(fd: BorrowedFd<'_>, value: &impl Serialize) -> io::Result<()> {
    let mut text = serde_json::to_vec(value).map_err(io::Error::other)?;
    text.push(b'\n');
    sys::write_all(fd, &text).map(drop)
}

/// Sends `request` to pVM `id` of the runtime directory `dir` and returns its answer (for
/// `pvmctl`): the socket's other end must be the process `id` itself.
pub fn request(dir: &Path, id: u32, request: &Request, timeout: Duration) -> Result<Response, ControlError> {
    request_with_file(dir, id, request, None, timeout)
}

/// [`request`], with an open file sent along.
pub fn request_with_file(
    dir: &Path,
    id: u32,
    request: &Request,
    file: Option<BorrowedFd<'_>>,
    timeout: Duration,
) -> Result<Response, ControlError> {
    let session = Session::open(dir, id)?;
    session.send(request, file)?;
    session.receive(timeout)
}

/// A connection to one pVM's control socket, for a conversation longer than one request and
/// its answer (a two-phase update).
#[derive(Debug)]
pub struct Session {
    id: u32,
    conn: OwnedFd,
}

impl Session {
    /// Connects to pVM `id` of the runtime directory `dir`: the socket's other end must be the
    /// process `id` itself.
    pub fn open(dir: &Path, id: u32) -> Result<Session, ControlError> {
        let io_err = |source| ControlError::Io { id, source };
        let conn = match sys::unix_connect(&dir.join(socket_name(id))) {
            Ok(c) => c,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ECONNREFUSED)) => {
                return Err(ControlError::NoSocket(id))
            }
            Err(e) => return Err(io_err(e)),
        };
        let (pid, _) = sys::peer_credentials(conn.as_fd()).map_err(io_err)?;
        if pid != id {
            return Err(ControlError::Impostor { id, pid });
        }
        Ok(Session { id, conn })
    }

    /// The pVM.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Sends a request (with an open file along).
    pub fn send(&self, request: &Request, file: Option<BorrowedFd<'_>>) -> Result<(), ControlError> {
        let io_err = |source| ControlError::Io { id: self.id, source };
        match file {
            Some(file) => {
                let mut text = serde_json::to_vec(request).map_err(|e| io_err(io::Error::other(e)))?;
                text.push(b'\n');
                sys::send_all_with_fds(self.conn.as_fd(), &text, &[file]).map_err(io_err)
            }
            None => write_line(self.conn.as_fd(), request).map_err(io_err),
        }
    }

    /// Waits at most `timeout` for the next answer.
    pub fn receive(&self, timeout: Duration) -> Result<Response, ControlError> {
        let id = self.id;
        let timeout_ns = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
        let (buf, _) = read_line(self.conn.as_fd(), timeout_ns, false).map_err(|e| match e.kind() {
            io::ErrorKind::TimedOut => ControlError::Timeout(id),
            _ => ControlError::Io { id, source: e },
        })?;
        serde_json::from_slice(&buf).map_err(|_| ControlError::Garbled {
            id,
            text: String::from_utf8_lossy(&buf).into_owned(),
        })
    }
}
