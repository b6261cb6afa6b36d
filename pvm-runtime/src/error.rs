//! One error type for an app (not for libraries, which have no process calls): every `pvm` API's error converts into [`Error`] (with `?`), which
//! implements `core::error::Error` and says what failed in words.
use core::fmt;

/// Any error of a `pvm` API.
#[derive(Clone, Debug)]
pub enum Error {
    /// Of `pvm::fork`, `wait` and the other process calls.
    Process(crate::process::Error),
    /// Of pipes, queues and shared memory.
    Ipc(crate::ipc::Error),
    /// Of signal handling.
    Signal(crate::signal::Error),
    /// Of TCP.
    Net(crate::net::Error),
    /// Of libraries.
    Dl(crate::dl::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Process(e) => write!(f, "process: {e}"),
            Error::Ipc(e) => write!(f, "ipc: {e}"),
            Error::Signal(e) => write!(f, "signal: {e}"),
            Error::Net(e) => write!(f, "net: {e}"),
            Error::Dl(e) => write!(f, "dl: {e}"),
        }
    }
}

impl core::error::Error for Error {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Error::Process(e) => Some(e),
            Error::Ipc(e) => Some(e),
            Error::Signal(e) => Some(e),
            Error::Net(e) => Some(e),
            Error::Dl(e) => Some(e),
        }
    }
}

impl From<crate::process::Error> for Error {
    fn from(e: crate::process::Error) -> Error {
        Error::Process(e)
    }
}

impl From<crate::ipc::Error> for Error {
    fn from(e: crate::ipc::Error) -> Error {
        Error::Ipc(e)
    }
}

impl From<crate::signal::Error> for Error {
    fn from(e: crate::signal::Error) -> Error {
        Error::Signal(e)
    }
}

impl From<crate::net::Error> for Error {
    fn from(e: crate::net::Error) -> Error {
        Error::Net(e)
    }
}

impl From<crate::dl::Error> for Error {
    fn from(e: crate::dl::Error) -> Error {
        Error::Dl(e)
    }
}
