//! TCP for pVMs: the host terminates TCP, the guest sees byte streams.
//!
//! A pVM serves clients on the ports its operator published (`pvmctl run --publish
//! [HOST_IP:]PORT[:GUEST_PORT]`): [`TcpListener::bind`] takes a published guest port (anything
//! else is [`Error::PermissionDenied`]), [`TcpListener::accept`] the next client. The family's
//! network backend, a host process, owns the sockets; a [`TcpStream`] is two rings in memory
//! the backend maps too, so reads and writes make no exits while data flows (a side that finds
//! nothing to do spins, then sleeps in its monitor, as pipes do). Listeners and streams are
//! inherited across `fork`, as on Unix: pre-forked workers accept from one listener.
use core::net::{IpAddr, Ipv6Addr, SocketAddr};

use pvm_abi::{errno, net_flags, Hypercall, NetAcceptArgs, NetListenArgs};

use crate::hypercall::raw;
use crate::ipc::{self, Reader, Writer};

/// Why a network call failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The port is not one the operator published for this pVM's family.
    PermissionDenied,
    /// Non-blocking, and it would block.
    WouldBlock,
    /// A signal handler ran while waiting.
    Interrupted,
    /// The family's network backend is gone.
    NetworkDown,
    /// The client closed its side, or the stream was shut down for writing.
    BrokenPipe,
    /// No handle or region left for another connection.
    Unavailable,
    /// Not a listener, or a bad port.
    Invalid,
    /// The rings hold values no correct peer writes.
    Corrupted,
    /// The monitor refused the call (a negated errno).
    Host(i64),
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::PermissionDenied => {
                f.write_str("permission denied: the port is not published (pvmctl run --publish)")
            }
            Error::WouldBlock => f.write_str("operation would block"),
            Error::Interrupted => f.write_str("interrupted by a signal"),
            Error::NetworkDown => f.write_str("the network backend is gone"),
            Error::BrokenPipe => f.write_str("broken pipe: the client is gone or the stream is shut down"),
            Error::Unavailable => f.write_str("no room for another connection"),
            Error::Invalid => f.write_str("not a listener, or an invalid port"),
            Error::Corrupted => f.write_str("connection rings corrupted"),
            Error::Host(e) => write!(f, "monitor error {e}"),
        }
    }
}

impl core::error::Error for Error {}

impl From<ipc::Error> for Error {
    fn from(e: ipc::Error) -> Error {
        match e {
            ipc::Error::WouldBlock => Error::WouldBlock,
            ipc::Error::BrokenPipe | ipc::Error::UnexpectedEof => Error::BrokenPipe,
            ipc::Error::Interrupted => Error::Interrupted,
            ipc::Error::Corrupted => Error::Corrupted,
            ipc::Error::Unavailable => Error::Unavailable,
            ipc::Error::Host(e) => Error::Host(e),
            _ => Error::Invalid,
        }
    }
}

fn from_errno(result: i64) -> Error {
    match -result {
        errno::EACCES => Error::PermissionDenied,
        errno::EAGAIN => Error::WouldBlock,
        errno::EINTR => Error::Interrupted,
        errno::ENETDOWN => Error::NetworkDown,
        errno::EBADF | errno::EINVAL => Error::Invalid,
        _ => Error::Host(result),
    }
}

/// A TCP listener on a published port.
pub struct TcpListener {
    handle: u64,
    port: u16,
    nonblocking: bool,
}

impl TcpListener {
    /// Listens on guest port `port`, which the operator must have published.
    pub fn bind(port: u16) -> Result<TcpListener, Error> {
        let mut args = NetListenArgs {
            port: u64::from(port),
            ..Default::default()
        };
        raw(Hypercall::NetListen, &mut args as *mut NetListenArgs as u64);
        if args.result < 0 {
            return Err(from_errno(args.result));
        }
        Ok(TcpListener {
            handle: args.handle,
            port,
            nonblocking: false,
        })
    }

    /// The guest port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// With `true`, [`TcpListener::accept`] fails with [`Error::WouldBlock`] instead of waiting.
    pub fn set_nonblocking(&mut self, nonblocking: bool) {
        self.nonblocking = nonblocking;
    }

    /// The next client: its stream and address. Waits for one unless non-blocking; a signal
    /// whose handler runs makes it [`Error::Interrupted`].
    pub fn accept(&self) -> Result<(TcpStream, SocketAddr), Error> {
        loop {
            let mut args = NetAcceptArgs {
                listener: self.handle,
                flags: if self.nonblocking { net_flags::NONBLOCK } else { 0 },
                ..Default::default()
            };
            raw(Hypercall::NetAccept, &mut args as *mut NetAcceptArgs as u64);
            if args.result == -errno::EINTR && !crate::signal::poll() {
                // Only a library update interrupted the wait: wait on.
                continue;
            }
            if args.result < 0 {
                return Err(from_errno(args.result));
            }
            let ip = Ipv6Addr::from(args.peer_ip);
            let ip = ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4);
            let peer = SocketAddr::new(ip, args.peer_port as u16);
            // SAFETY: the monitor mapped the connection's region (both rings) at `ring` and
            // keeps it while the two handles are open.
            let (reader, writer) = unsafe {
                ipc::ends_at(
                    args.read_handle,
                    args.write_handle,
                    args.ring,
                    pvm_ipc::net_tx_offset(args.capacity),
                    args.capacity,
                )
            };
            let stream = TcpStream {
                reader: Some(reader),
                writer: Some(writer),
                peer,
            };
            return Ok((stream, peer));
        }
    }
}

impl Drop for TcpListener {
    fn drop(&mut self) {
        raw(Hypercall::IpcClose, self.handle);
    }
}

/// Which side of a stream to shut down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shutdown {
    /// No more reads.
    Read,
    /// No more writes: the client reads end of file once what was written is sent.
    Write,
    /// Both.
    Both,
}

/// A TCP connection: what the client sends arrives in [`TcpStream::read`], what the guest
/// writes goes to the client.
pub struct TcpStream {
    reader: Option<Reader>,
    writer: Option<Writer>,
    peer: SocketAddr,
}

impl TcpStream {
    /// The client's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// With `true`, reads and writes that would wait fail with [`Error::WouldBlock`].
    pub fn set_nonblocking(&mut self, nonblocking: bool) {
        if let Some(r) = &mut self.reader {
            r.set_nonblocking(nonblocking);
        }
        if let Some(w) = &mut self.writer {
            w.set_nonblocking(nonblocking);
        }
    }

    /// Reads what the client sent (waiting for at least a byte); 0 is end of file (the client
    /// shut down its side, or this stream's reading side was shut down).
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        match &mut self.reader {
            Some(r) => Ok(r.read(buf)?),
            None => Ok(0),
        }
    }

    /// Writes what fits (waiting for room for at least a byte).
    pub fn write(&mut self, buf: &[u8]) -> Result<usize, Error> {
        match &mut self.writer {
            Some(w) => Ok(w.write(buf)?),
            None => Err(Error::BrokenPipe),
        }
    }

    /// Writes all of `buf`.
    pub fn write_all(&mut self, mut buf: &[u8]) -> Result<(), Error> {
        while !buf.is_empty() {
            let n = self.write(buf)?;
            buf = &buf[n..];
        }
        Ok(())
    }

    /// Shuts down one side, or both.
    pub fn shutdown(&mut self, how: Shutdown) {
        if matches!(how, Shutdown::Read | Shutdown::Both) {
            self.reader = None;
        }
        if matches!(how, Shutdown::Write | Shutdown::Both) {
            self.writer = None;
        }
    }
}
