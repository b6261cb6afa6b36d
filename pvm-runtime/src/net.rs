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

use pvm_abi::{errno, net_flags, Hypercall, NetAcceptArgs, NetConnectArgs, NetListenArgs};

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
    /// Nothing listens at the address connected to.
    ConnectionRefused,
    /// The connection attempt timed out.
    TimedOut,
    /// No route to the address.
    Unreachable,
    /// The monitor refused the call (a negated errno).
    Host(i64),
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::PermissionDenied => f.write_str(
                "permission denied: not a port the operator published (pvmctl run --publish) \
                 or a server it allows (--connect)",
            ),
            Error::WouldBlock => f.write_str("operation would block"),
            Error::Interrupted => f.write_str("interrupted by a signal"),
            Error::NetworkDown => f.write_str("the network backend is gone"),
            Error::BrokenPipe => f.write_str("broken pipe: the client is gone or the stream is shut down"),
            Error::Unavailable => f.write_str("no room for another connection"),
            Error::Invalid => f.write_str("not a listener, or an invalid port"),
            Error::Corrupted => f.write_str("connection rings corrupted"),
            Error::ConnectionRefused => f.write_str("connection refused"),
            Error::TimedOut => f.write_str("connection timed out"),
            Error::Unreachable => f.write_str("network unreachable"),
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

/// Whether a call that returned `result` was interrupted only for a library update (no signal
/// handler ran): then this is a safe point for it, and the caller makes the call again.
fn only_an_update(result: i64) -> bool {
    if result != -errno::EINTR || crate::signal::poll() {
        return false;
    }
    #[cfg(not(feature = "library"))]
    crate::dl::poll_if_pending();
    true
}

fn from_errno(result: i64) -> Error {
    match -result {
        errno::EACCES => Error::PermissionDenied,
        errno::EAGAIN => Error::WouldBlock,
        errno::EINTR => Error::Interrupted,
        errno::ENETDOWN => Error::NetworkDown,
        errno::EBADF | errno::EINVAL => Error::Invalid,
        errno::ECONNREFUSED => Error::ConnectionRefused,
        errno::ETIMEDOUT => Error::TimedOut,
        errno::ENETUNREACH => Error::Unreachable,
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

    /// Its address as the guest sees it: any address, the guest port (the host address clients
    /// use is the operator's: `pvmctl ps` shows it).
    pub fn local_addr(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), self.port)
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
            if only_an_update(args.result) {
                continue;
            }
            if args.result < 0 {
                return Err(from_errno(args.result));
            }
            let ip = Ipv6Addr::from(args.peer_ip);
            let ip = ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4);
            let peer = SocketAddr::new(ip, args.peer_port as u16);
            // SAFETY: the monitor mapped the connection's region at `ring`.
            let stream = unsafe {
                TcpStream::at(
                    args.read_handle,
                    args.write_handle,
                    args.ring,
                    args.capacity,
                    peer,
                )
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
    pub(crate) reader: Option<Reader>,
    writer: Option<Writer>,
    peer: SocketAddr,
}

impl TcpStream {
    /// The stream on the connection the monitor installed: its two handles, and its region
    /// at `ring` (the receive ring, then the send ring) of rings of `capacity` bytes.
    ///
    /// # Safety
    /// The monitor mapped the region there and keeps it while the two handles are open.
    unsafe fn at(
        read_handle: u64,
        write_handle: u64,
        ring: u64,
        capacity: u64,
        peer: SocketAddr,
    ) -> TcpStream {
        let tx = pvm_ipc::net_tx_offset(capacity);
        // SAFETY: as the caller promised.
        let (reader, writer) = unsafe { ipc::ends_at(read_handle, write_handle, ring, tx, capacity) };
        TcpStream {
            reader: Some(reader),
            writer: Some(writer),
            peer,
        }
    }

    /// Connects to `addr`, which the operator must allow (`pvmctl run --connect ADDR:PORT`;
    /// anything else is [`Error::PermissionDenied`]).
    pub fn connect(addr: SocketAddr) -> Result<TcpStream, Error> {
        let ip = match addr.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        loop {
            let mut args = NetConnectArgs {
                ip: ip.octets(),
                port: u64::from(addr.port()),
                ..Default::default()
            };
            raw(Hypercall::NetConnect, &mut args as *mut NetConnectArgs as u64);
            if only_an_update(args.result) {
                continue;
            }
            if args.result < 0 {
                return Err(from_errno(args.result));
            }
            // SAFETY: the monitor mapped the connection's region at `ring`.
            return Ok(unsafe {
                TcpStream::at(
                    args.read_handle,
                    args.write_handle,
                    args.ring,
                    args.capacity,
                    addr,
                )
            });
        }
    }

    /// The address of the other end (the client, or the server connected to).
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

/// Readiness bits of [`PollEntry`]: bytes to read (or end of file), a new client.
pub const READABLE: u32 = 1;
/// Readiness bits of [`PollEntry`]: room to write (or the client is gone).
pub const WRITABLE: u32 = 2;

/// What [`poll`] watches.
#[derive(Clone, Copy)]
pub enum Source<'a> {
    /// A listener: readable when a client waits to be accepted.
    Listener(&'a TcpListener),
    /// A stream: readable, writable.
    Stream(&'a TcpStream),
    /// The read end of a pipe between pVMs: readable.
    PipeReader(&'a Reader),
    /// The write end of a pipe between pVMs: writable.
    PipeWriter(&'a Writer),
}

/// One source of a [`poll`] and what it is ready for.
pub struct PollEntry<'a> {
    /// The source.
    pub source: Source<'a>,
    /// [`READABLE`] and/or [`WRITABLE`].
    pub interest: u32,
    /// What it is ready for (set by [`poll`]).
    pub ready: u32,
}

impl<'a> PollEntry<'a> {
    /// Watches a listener for clients.
    pub fn listener(l: &'a TcpListener) -> PollEntry<'a> {
        PollEntry {
            source: Source::Listener(l),
            interest: READABLE,
            ready: 0,
        }
    }

    /// Watches a pipe's read end for bytes (or its end).
    pub fn pipe_reader(r: &'a Reader) -> PollEntry<'a> {
        PollEntry {
            source: Source::PipeReader(r),
            interest: READABLE,
            ready: 0,
        }
    }

    /// Watches a pipe's write end for room.
    pub fn pipe_writer(w: &'a Writer) -> PollEntry<'a> {
        PollEntry {
            source: Source::PipeWriter(w),
            interest: WRITABLE,
            ready: 0,
        }
    }

    /// Watches a stream for `interest`.
    pub fn stream(s: &'a TcpStream, interest: u32) -> PollEntry<'a> {
        PollEntry {
            source: Source::Stream(s),
            interest,
            ready: 0,
        }
    }
}

/// When a poll last asked the monitor (TSC cycles): listeners get a look at least every
/// [`LISTENER_LOOK_CYCLES`] even while streams keep a poll busy without exits.
static LAST_HOST_POLL: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
/// About a millisecond.
const LISTENER_LOOK_CYCLES: u64 = 2_500_000;

/// Marks each stream and pipe entry ready from its rings (no exit); how many are.
fn look_at_streams(entries: &mut [PollEntry<'_>]) -> usize {
    let mut n = 0;
    for e in entries.iter_mut() {
        // None: the side is not watched; Some(None): a stream's side that was shut down.
        let (reader, writer): (Option<Option<&Reader>>, Option<Option<&Writer>>) = match e.source {
            Source::Listener(_) => continue,
            Source::Stream(s) => (Some(s.reader.as_ref()), Some(s.writer.as_ref())),
            Source::PipeReader(r) => (Some(Some(r)), None),
            Source::PipeWriter(w) => (None, Some(Some(w))),
        };
        let mut ready = 0;
        if e.interest & READABLE != 0 {
            match reader {
                Some(Some(r)) if r.parts().1.readable().map_or(true, |b| b > 0) => ready |= READABLE,
                // Shut down for reading: reads return end of file at once.
                Some(None) => ready |= READABLE,
                _ => {}
            }
        }
        if e.interest & WRITABLE != 0 {
            match writer {
                Some(Some(w)) if w.parts().1.writable().map_or(true, |b| b > 0) => ready |= WRITABLE,
                Some(None) => ready |= WRITABLE,
                _ => {}
            }
        }
        e.ready = ready;
        n += usize::from(ready != 0);
    }
    n
}

/// Raises (or lowers) this side's sleeping flags on the streams' rings: the backend then wakes
/// the monitor's poll when it moves bytes.
fn flag_sleeping(entries: &[PollEntry<'_>], on: bool) {
    use core::sync::atomic::Ordering;
    let v = u32::from(on);
    for e in entries {
        match e.source {
            Source::PipeReader(r) => r.parts().1.header().reader_sleeping.store(v, Ordering::SeqCst),
            Source::PipeWriter(w) => w.parts().1.header().writer_sleeping.store(v, Ordering::SeqCst),
            _ => {}
        }
        let Source::Stream(s) = e.source else { continue };
        if e.interest & READABLE != 0 {
            if let Some(r) = &s.reader {
                r.parts().1.header().reader_sleeping.store(v, Ordering::SeqCst);
            }
        }
        if e.interest & WRITABLE != 0 {
            if let Some(w) = &s.writer {
                w.parts().1.header().writer_sleeping.store(v, Ordering::SeqCst);
            }
        }
    }
}

/// Asks the monitor (one exit), waiting at most `timeout_ns` (None: for ever); merges what it
/// found into `entries`; how many are ready.
fn host_poll(entries: &mut [PollEntry<'_>], timeout_ns: Option<u64>) -> Result<usize, Error> {
    use alloc::vec::Vec;
    use pvm_abi::{poll_events, NetPollArgs, PollItem, POLL_FOREVER};
    let mut items = Vec::with_capacity(entries.len() * 2);
    let mut owner = Vec::with_capacity(entries.len() * 2);
    // Entry `i`'s `handle`, watched for `bit`.
    let mut watch = |i: usize, handle: u64, bit: u32| {
        let events = if bit == READABLE {
            poll_events::READ
        } else {
            poll_events::WRITE
        };
        items.push(PollItem {
            handle,
            events,
            revents: 0,
        });
        owner.push((i, bit));
    };
    for (i, e) in entries.iter().enumerate() {
        match e.source {
            Source::Listener(l) => watch(i, l.handle, READABLE),
            Source::PipeReader(r) => watch(i, r.parts().0, READABLE),
            Source::PipeWriter(w) => watch(i, w.parts().0, WRITABLE),
            Source::Stream(s) => {
                if let (true, Some(r)) = (e.interest & READABLE != 0, &s.reader) {
                    watch(i, r.parts().0, READABLE);
                }
                if let (true, Some(w)) = (e.interest & WRITABLE != 0, &s.writer) {
                    watch(i, w.parts().0, WRITABLE);
                }
            }
        }
    }
    loop {
        let mut args = NetPollArgs {
            items: items.as_mut_ptr() as u64,
            count: items.len() as u64,
            timeout_ns: timeout_ns.unwrap_or(POLL_FOREVER),
            ..Default::default()
        };
        raw(Hypercall::NetPoll, &mut args as *mut NetPollArgs as u64);
        LAST_HOST_POLL.store(crate::time::cycles(), core::sync::atomic::Ordering::Relaxed);
        if only_an_update(args.result) {
            continue;
        }
        if args.result < 0 {
            return Err(from_errno(args.result));
        }
        break;
    }
    for (it, &(i, bit)) in items.iter().zip(&owner) {
        if it.revents & (poll_events::READ | poll_events::WRITE) != 0 {
            entries[i].ready |= bit;
        }
    }
    Ok(entries.iter().filter(|e| e.ready != 0).count())
}

/// Waits until at least one entry is ready, or `timeout_ns` passed (None: for ever; Some(0):
/// do not wait); sets each entry's `ready`; returns how many are. Streams are looked at in
/// their rings first, spinning a while ([`crate::ipc::set_spin`]) before sleeping in the
/// monitor: a busy server makes no exits for its streams (listeners are looked at through the
/// monitor, at least every millisecond). A signal whose handler runs makes it
/// [`Error::Interrupted`].
pub fn poll(entries: &mut [PollEntry<'_>], timeout_ns: Option<u64>) -> Result<usize, Error> {
    use core::sync::atomic::{fence, Ordering};
    // A server that only polls and moves bytes is at a good point for a library update the
    // operator asked for.
    #[cfg(not(feature = "library"))]
    crate::dl::poll_if_pending();
    for e in entries.iter_mut() {
        e.ready = 0;
    }
    let listeners = entries.iter().any(|e| matches!(e.source, Source::Listener(_)));
    let streams = entries.iter().any(|e| !matches!(e.source, Source::Listener(_)));
    let start = crate::time::cycles();
    let budget = if timeout_ns == Some(0) {
        0
    } else {
        crate::ipc::spin_cycles()
    };
    if streams {
        loop {
            let n = look_at_streams(entries);
            let since = crate::time::cycles().wrapping_sub(LAST_HOST_POLL.load(Ordering::Relaxed));
            if n > 0 {
                if listeners && since > LISTENER_LOOK_CYCLES {
                    return host_poll(entries, Some(0));
                }
                return Ok(n);
            }
            if crate::time::cycles().wrapping_sub(start) >= budget {
                break;
            }
            core::hint::spin_loop();
        }
    }
    // Nothing yet: flags up, one more look, then the monitor waits.
    flag_sleeping(entries, true);
    fence(Ordering::SeqCst);
    if streams && look_at_streams(entries) > 0 {
        flag_sleeping(entries, false);
        return Ok(entries.iter().filter(|e| e.ready != 0).count());
    }
    let polled = host_poll(entries, timeout_ns);
    flag_sleeping(entries, false);
    polled
}
