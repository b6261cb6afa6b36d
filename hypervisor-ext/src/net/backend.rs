//! The network backend of one family: a host process (forked by the root monitor before it
//! builds its VM) that owns the family's TCP sockets and moves their bytes through rings in
//! shared memory, so that a guest's reads and writes make no exits while data flows.
//!
//! Each connection is one region (a memfd the backend and the monitors of the pVMs holding the
//! connection map) with two pipe rings (`pvm_ipc::Pipe`): the receive ring, which the backend
//! writes with what the client sent, and the send ring, which the backend drains to the client.
//! The backend keeps the ring protocol of any pipe end: it wakes a guest that sleeps (futex on
//! the ring's sequence word) and raises its own `*_sleeping` flags before it sleeps, so that the
//! guest rings its doorbell (an eventfd, through its monitor's notify). Liveness travels as for
//! pipes: host pipes whose write ends the holders of each end keep, hanging up when an end is
//! gone everywhere (a guest killed with SIGKILL included).
//!
//! The backend waits in epoll for: its monitors' channels, the listeners, the client sockets,
//! the doorbells and the liveness pipes. Before it sleeps it looks at its rings for a while
//! (spinning), so that under load neither side sleeps. It ends when no monitor is left.
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{fence, Ordering};

use pvm_abi::errno;
use pvm_ipc::Pipe;

use super::proto::{self, ConnFds, Received, ToBackend, ToMonitor};
use crate::sys::{self, Epoll, Interest, Moved};

/// How long the backend keeps looking at its rings after the last byte moved before it sleeps.
const SPIN_NS: u64 = 50_000;
/// Accepted connections no guest took yet, per listener; more are refused (closed).
const MAX_QUEUED: usize = 128;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Channel = 1,
    Listener = 2,
    Socket = 3,
    Doorbell = 4,
    /// The receive ring's guest readers are gone.
    Readers = 5,
    /// The send ring's guest writers are gone.
    Writers = 6,
    /// A connect in progress.
    Connecting = 7,
}

/// Readable: what every registration but a connect's waits for.
const READ: Interest = Interest {
    read: true,
    write: false,
};

/// Puts `item` in the first free place of `slots`; its index.
fn place<T>(slots: &mut Vec<Option<T>>, item: T) -> usize {
    match slots.iter().position(Option::is_none) {
        Some(i) => {
            slots[i] = Some(item);
            i
        }
        None => {
            slots.push(Some(item));
            slots.len() - 1
        }
    }
}

/// The index [`place`] would give.
fn next_place<T>(slots: &[Option<T>]) -> usize {
    slots.iter().position(Option::is_none).unwrap_or(slots.len())
}

fn token(kind: Kind, index: usize) -> u64 {
    (kind as u64) << 32 | index as u64
}

fn untoken(t: u64) -> (u64, usize) {
    (t >> 32, (t & 0xffff_ffff) as usize)
}

/// A published port.
struct Listener {
    fd: OwnedFd,
    guest_port: u16,
    /// Accept requests waiting: (channel, seq).
    waiters: VecDeque<(usize, u64)>,
    /// Accepted connections no guest took yet.
    queued: VecDeque<(OwnedFd, SocketAddr)>,
}

/// One client connection.
struct Conn {
    sock: OwnedFd,
    region: NonNull<u8>,
    region_len: usize,
    rx: Pipe,
    tx: Pipe,
    doorbell: OwnedFd,
    /// Rung when the backend wakes the guest side (a guest polling sleeps on it).
    wakeup: OwnedFd,
    /// Hangs up when the guest readers of the receive ring are gone.
    readers: OwnedFd,
    /// Hangs up when the guest writers of the send ring are gone.
    writers: OwnedFd,
    /// Held while the backend writes the receive ring (dropped at the client's end of file).
    rx_writing: Option<OwnedFd>,
    /// Held while the backend reads the send ring (dropped when the client is gone).
    tx_reading: Option<OwnedFd>,
    readers_gone: bool,
    writers_gone: bool,
    /// The client sent its end of file (or failed).
    client_done: bool,
    /// The send side was shut down (after the guest's writers left and the ring drained).
    shut: bool,
    /// The last send would have blocked.
    send_blocked: bool,
    interest: Interest,
}

impl Drop for Conn {
    fn drop(&mut self) {
        // SAFETY: the backend's own mapping of the region; the rings are not used after this.
        unsafe { sys::unmap(self.region, self.region_len) };
    }
}

/// A connect a monitor asked for, in progress.
struct Connecting {
    sock: OwnedFd,
    chan: usize,
    seq: u64,
    addr: SocketAddr,
}

struct Backend {
    epoll: Epoll,
    /// Servers the family may connect to.
    allowed: Vec<SocketAddr>,
    connecting: Vec<Option<Connecting>>,
    channels: Vec<Option<OwnedFd>>,
    listeners: Vec<Listener>,
    conns: Vec<Option<Conn>>,
    max_conns: usize,
}

/// Runs the backend on `listeners` (guest port of each) for the monitor at the other end of
/// `channel`; returns when every monitor is gone.
pub fn run(listeners: Vec<(OwnedFd, u16)>, channel: OwnedFd, max_conns: usize, allowed: Vec<SocketAddr>) {
    let Ok(epoll) = Epoll::new() else { return };
    let mut b = Backend {
        epoll,
        allowed,
        connecting: Vec::new(),
        channels: Vec::new(),
        listeners: Vec::new(),
        conns: Vec::new(),
        max_conns,
    };
    for (i, (fd, guest_port)) in listeners.into_iter().enumerate() {
        if b.epoll.add(fd.as_fd(), token(Kind::Listener, i), READ).is_err() {
            return;
        }
        b.listeners.push(Listener {
            fd,
            guest_port,
            waiters: VecDeque::new(),
            queued: VecDeque::new(),
        });
    }
    if b.add_channel(channel).is_err() {
        return;
    }
    b.serve();
}

impl Backend {
    fn add_channel(&mut self, fd: OwnedFd) -> std::io::Result<()> {
        let i = next_place(&self.channels);
        self.epoll.add(fd.as_fd(), token(Kind::Channel, i), READ)?;
        place(&mut self.channels, fd);
        Ok(())
    }

    fn serve(&mut self) {
        let mut tokens = Vec::new();
        let mut last_progress = sys::monotonic_ns();
        loop {
            if self.channels.iter().all(Option::is_none) {
                return;
            }
            let spinning = sys::monotonic_ns().saturating_sub(last_progress) < SPIN_NS;
            if !spinning {
                // About to sleep: guests must ring the doorbell from now on.
                self.set_sleeping(true);
                fence(Ordering::SeqCst);
                if self.pump_all() {
                    last_progress = sys::monotonic_ns();
                    self.set_sleeping(false);
                    continue;
                }
            }
            if self
                .epoll
                .wait(&mut tokens, if spinning { 0 } else { -1 })
                .is_err()
            {
                return;
            }
            if !spinning {
                self.set_sleeping(false);
                last_progress = sys::monotonic_ns();
            }
            for &t in &tokens {
                self.event(t);
            }
            if self.pump_all() {
                last_progress = sys::monotonic_ns();
            } else if spinning {
                // Nothing moved: let the clients (and the guests) have the CPU first.
                sys::yield_now();
            }
        }
    }

    /// Raises (or lowers) the backend's sleeping flags on every ring it serves.
    fn set_sleeping(&self, sleeping: bool) {
        let v = u32::from(sleeping);
        for c in self.conns.iter().flatten() {
            c.rx.header().writer_sleeping.store(v, Ordering::SeqCst);
            c.tx.header().reader_sleeping.store(v, Ordering::SeqCst);
        }
    }

    fn event(&mut self, t: u64) {
        let (kind, i) = untoken(t);
        match kind {
            k if k == Kind::Channel as u64 => self.channel(i),
            k if k == Kind::Listener as u64 => self.accept(i),
            k if k == Kind::Connecting as u64 => self.connected(i),
            k if k == Kind::Doorbell as u64 => {
                if let Some(c) = self.conns.get(i).and_then(Option::as_ref) {
                    sys::clear_doorbell(c.doorbell.as_fd());
                }
            }
            k if k == Kind::Readers as u64 || k == Kind::Writers as u64 => {
                if let Some(c) = self.conns.get_mut(i).and_then(Option::as_mut) {
                    let fd = if k == Kind::Readers as u64 {
                        c.readers_gone = true;
                        c.readers.as_fd()
                    } else {
                        c.writers_gone = true;
                        c.writers.as_fd()
                    };
                    self.epoll.delete(fd);
                }
            }
            // Socket readiness: the pump looks.
            _ => {}
        }
    }

    /// Requests from channel `i`.
    fn channel(&mut self, i: usize) {
        loop {
            let Some(chan) = self.channels.get(i).and_then(Option::as_ref) else {
                return;
            };
            match proto::receive::<ToBackend>(chan.as_fd()) {
                Ok(Received::Nothing) => return,
                Ok(Received::Message(m, fds)) => self.request(i, m, fds),
                Ok(Received::Closed) | Err(_) => {
                    // The monitor is gone (or spoke nonsense): forget it and its waits.
                    if let Some(fd) = self.channels[i].take() {
                        self.epoll.delete(fd.as_fd());
                    }
                    for l in &mut self.listeners {
                        l.waiters.retain(|&(c, _)| c != i);
                    }
                    for slot in &mut self.connecting {
                        if slot.as_ref().is_some_and(|c| c.chan == i) {
                            if let Some(c) = slot.take() {
                                self.epoll.delete(c.sock.as_fd());
                            }
                        }
                    }
                    return;
                }
            }
        }
    }

    /// Answers request `seq` of channel `chan` with the error `errno` (negated).
    fn refuse(&self, chan: usize, seq: u64, errno: i64) {
        self.reply(chan, &ToMonitor::Refused { seq, errno }, &[]);
    }

    fn reply(&self, chan: usize, message: &ToMonitor, fds: &[std::os::fd::BorrowedFd<'_>]) {
        if let Some(c) = self.channels.get(chan).and_then(Option::as_ref) {
            let _ = proto::send(c.as_fd(), message, fds);
        }
    }

    fn request(&mut self, chan: usize, m: ToBackend, fds: Vec<OwnedFd>) {
        match m {
            ToBackend::Join => {
                if let Some(fd) = fds.into_iter().next() {
                    let _ = self.add_channel(fd);
                }
            }
            ToBackend::Listen { seq, port } => {
                let answer = match self.listeners.iter().position(|l| l.guest_port == port) {
                    Some(l) => ToMonitor::Listening {
                        seq,
                        listener: l as u64,
                    },
                    None => ToMonitor::Refused {
                        seq,
                        errno: -errno::EACCES,
                    },
                };
                self.reply(chan, &answer, &[]);
            }
            ToBackend::Connect { seq, addr } => self.connect(chan, seq, addr),
            ToBackend::Accept {
                seq,
                listener,
                nonblock,
            } => {
                let Some(l) = usize::try_from(listener)
                    .ok()
                    .filter(|&l| l < self.listeners.len())
                else {
                    self.refuse(chan, seq, -errno::EBADF);
                    return;
                };
                self.listeners[l].waiters.push_back((chan, seq));
                self.accept(l);
                if nonblock {
                    let w = &mut self.listeners[l].waiters;
                    if let Some(p) = w.iter().position(|&(c, s)| c == chan && s == seq) {
                        w.remove(p);
                        self.refuse(chan, seq, -errno::EAGAIN);
                    }
                }
            }
        }
    }

    /// Starts connecting to `addr` for channel `chan`, if the operator allows it.
    fn connect(&mut self, chan: usize, seq: u64, addr: SocketAddr) {
        let allowed = self
            .allowed
            .iter()
            .any(|a| *a == addr || (a.port() == addr.port() && unmapped(a) == unmapped(&addr)));
        if !allowed {
            self.refuse(chan, seq, -errno::EACCES);
            return;
        }
        if self.live_conns() >= self.max_conns {
            self.refuse(chan, seq, -errno::EAGAIN);
            return;
        }
        match sys::tcp_connect(unmapped_addr(addr)) {
            Ok((sock, true)) => self.finish_connect(chan, seq, sock, addr),
            Ok((sock, false)) => {
                let i = next_place(&self.connecting);
                let write = Interest {
                    read: false,
                    write: true,
                };
                if self
                    .epoll
                    .add(sock.as_fd(), token(Kind::Connecting, i), write)
                    .is_err()
                {
                    self.refuse(chan, seq, -errno::EAGAIN);
                    return;
                }
                place(
                    &mut self.connecting,
                    Connecting {
                        sock,
                        chan,
                        seq,
                        addr,
                    },
                );
            }
            Err(e) => self.refuse(chan, seq, connect_errno(&e)),
        }
    }

    /// A connect in progress ended one way or the other.
    fn connected(&mut self, i: usize) {
        let Some(c) = self.connecting.get_mut(i).and_then(Option::take) else {
            return;
        };
        self.epoll.delete(c.sock.as_fd());
        match sys::socket_error(c.sock.as_fd()) {
            Ok(None) => self.finish_connect(c.chan, c.seq, c.sock, c.addr),
            Ok(Some(e)) | Err(e) => self.refuse(c.chan, c.seq, connect_errno(&e)),
        }
    }

    /// Hands a connected socket to the monitor that asked.
    fn finish_connect(&mut self, chan: usize, seq: u64, sock: OwnedFd, addr: SocketAddr) {
        match self.open_conn(sock) {
            Ok((_, fds)) => {
                let message = ToMonitor::Connection {
                    seq,
                    listener: proto::CONNECTED,
                    capacity: pvm_ipc::NET_RING_CAPACITY,
                    peer: addr,
                };
                self.reply(chan, &message, &fds.borrowed());
            }
            Err(_) => self.refuse(chan, seq, -errno::EAGAIN),
        }
    }

    fn live_conns(&self) -> usize {
        self.conns.iter().flatten().count()
    }

    /// Takes the listener's pending connections and hands them to its waiters. A client past
    /// the family's connection limit (live and queued) is refused: closed at once.
    fn accept(&mut self, l: usize) {
        loop {
            let queued: usize = self.listeners.iter().map(|l| l.queued.len()).sum();
            let full = self.live_conns() + queued >= self.max_conns;
            let listener = &mut self.listeners[l];
            match sys::tcp_accept(listener.fd.as_fd()) {
                Ok(Some((sock, peer))) => {
                    if full || listener.queued.len() >= MAX_QUEUED {
                        tracing::debug!(%peer, "connection refused: at the connection limit");
                        drop(sock);
                    } else {
                        listener.queued.push_back((sock, peer));
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
        while !self.listeners[l].waiters.is_empty() && !self.listeners[l].queued.is_empty() {
            let (Some((chan, seq)), Some((sock, peer))) = (
                self.listeners[l].waiters.pop_front(),
                self.listeners[l].queued.pop_front(),
            ) else {
                return;
            };
            match self.open_conn(sock) {
                Ok((index, fds)) => {
                    let message = ToMonitor::Connection {
                        seq,
                        listener: l as u64,
                        capacity: pvm_ipc::NET_RING_CAPACITY,
                        peer,
                    };
                    self.reply(chan, &message, &fds.borrowed());
                    // The monitor has its copies now (or is gone: then the pipes hang up).
                    drop(fds);
                    let _ = index;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot set up a connection");
                    self.listeners[l].waiters.push_front((chan, seq));
                    return;
                }
            }
        }
    }

    /// Sets up the rings of a new connection: its index and the monitor's descriptors.
    fn open_conn(&mut self, sock: OwnedFd) -> std::io::Result<(usize, ConnFds)> {
        let cap = pvm_ipc::NET_RING_CAPACITY;
        let len = pvm_ipc::net_region_size(cap);
        let region = sys::memfd(len)?;
        let host = sys::map_file_shared(region.as_fd(), len as usize)?;
        let tx_at = pvm_ipc::net_tx_offset(cap) as usize;
        // SAFETY: the fresh memfd is zeroed, page-aligned, and holds both rings.
        let (rx, tx) = unsafe {
            Pipe::init(host.as_ptr(), cap);
            Pipe::init(host.as_ptr().add(tx_at), cap);
            (
                Pipe::attach(host.as_ptr(), cap),
                Pipe::attach(host.as_ptr().add(tx_at), cap),
            )
        };
        let mapped = Mapped(host, len as usize);
        let (rx_peer_alive, rx_writing) = sys::pipe(true)?;
        let (readers, rx_alive) = sys::pipe(true)?;
        let (tx_peer_alive, tx_reading) = sys::pipe(true)?;
        let (writers, tx_alive) = sys::pipe(true)?;
        let doorbell = sys::eventfd()?;
        let monitor_bell = doorbell.try_clone()?;
        let wakeup = sys::eventfd()?;
        let monitor_wakeup = wakeup.try_clone()?;
        let index = next_place(&self.conns);
        for (fd, kind) in [
            (sock.as_fd(), Kind::Socket),
            (doorbell.as_fd(), Kind::Doorbell),
            (readers.as_fd(), Kind::Readers),
            (writers.as_fd(), Kind::Writers),
        ] {
            self.epoll.add(fd, token(kind, index), READ)?;
        }
        let conn = Conn {
            sock,
            region: mapped.take(),
            region_len: len as usize,
            rx,
            tx,
            doorbell,
            wakeup,
            readers,
            writers,
            rx_writing: Some(rx_writing),
            tx_reading: Some(tx_reading),
            readers_gone: false,
            writers_gone: false,
            client_done: false,
            shut: false,
            send_blocked: false,
            interest: READ,
        };
        place(&mut self.conns, conn);
        Ok((
            index,
            ConnFds {
                region,
                rx_peer_alive,
                rx_alive,
                tx_peer_alive,
                tx_alive,
                doorbell: monitor_bell,
                wakeup: monitor_wakeup,
            },
        ))
    }

    /// Moves what can move on every connection; whether anything did.
    fn pump_all(&mut self) -> bool {
        let mut progress = false;
        for i in 0..self.conns.len() {
            let Some(c) = self.conns[i].as_mut() else { continue };
            progress |= pump(c);
            if c.finished() {
                if let Some(c) = self.conns[i].take() {
                    for fd in [
                        c.sock.as_fd(),
                        c.doorbell.as_fd(),
                        c.readers.as_fd(),
                        c.writers.as_fd(),
                    ] {
                        self.epoll.delete(fd);
                    }
                }
                continue;
            }
            let want = Interest {
                read: !c.client_done && !c.readers_gone && c.rx.writable().unwrap_or(0) > 0,
                write: c.send_blocked,
            };
            if want != c.interest
                && self
                    .epoll
                    .modify(c.sock.as_fd(), token(Kind::Socket, i), want)
                    .is_ok()
            {
                c.interest = want;
            }
        }
        progress
    }
}

/// The guest's error for a failed connect.
fn connect_errno(e: &std::io::Error) -> i64 {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => -errno::ECONNREFUSED,
        Some(libc::ETIMEDOUT) => -errno::ETIMEDOUT,
        Some(libc::ENETUNREACH | libc::EHOSTUNREACH) => -errno::ENETUNREACH,
        _ => -errno::ECONNREFUSED,
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn unmapped(a: &SocketAddr) -> std::net::IpAddr {
    match a.ip() {
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
        ip => ip,
    }
}

fn unmapped_addr(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(unmapped(&a), a.port())
}

/// A fresh mapping, unmapped unless taken.
struct Mapped(NonNull<u8>, usize);

impl Mapped {
    fn take(self) -> NonNull<u8> {
        let p = self.0;
        std::mem::forget(self);
        p
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: a mapping this backend made and nothing else uses.
        unsafe { sys::unmap(self.0, self.1) };
    }
}

/// Wakes a guest sleeping on `seq` (its futex word in the ring, or a poll on `wakeup`) after
/// progress.
fn wake(sleeping: &std::sync::atomic::AtomicU32, seq: &std::sync::atomic::AtomicU32, wakeup: &OwnedFd) {
    // The index store before the flag load: pairs with the guest's fence (ipc/tests/loom_wake.rs).
    fence(Ordering::SeqCst);
    if sleeping.load(Ordering::SeqCst) != 0 {
        seq.fetch_add(1, Ordering::SeqCst);
        sys::futex_wake(seq);
        sys::ring(wakeup.as_fd());
    }
}

impl Conn {
    /// Nothing left to move either way.
    fn finished(&self) -> bool {
        let receiving_done = self.client_done || self.readers_gone;
        let sending_done = self.tx_reading.is_none() || (self.shut && self.writers_gone);
        receiving_done && sending_done
    }

    /// The client is gone for sending: the guest's writers get a broken pipe.
    fn send_failed(&mut self) {
        self.tx_reading = None;
        let h = self.tx.header();
        h.reader_closed.store(1, Ordering::SeqCst);
        h.space_seq.fetch_add(1, Ordering::SeqCst);
        sys::futex_wake(&h.space_seq);
        sys::ring(self.wakeup.as_fd());
    }

    /// The client sent its end of file: the guest's readers get it once the ring is drained.
    fn client_ended(&mut self) {
        self.client_done = true;
        self.rx_writing = None;
        let h = self.rx.header();
        h.writer_closed.store(1, Ordering::SeqCst);
        h.data_seq.fetch_add(1, Ordering::SeqCst);
        sys::futex_wake(&h.data_seq);
        sys::ring(self.wakeup.as_fd());
    }
}

/// Moves bytes both ways on `c` until nothing moves; whether anything did.
fn pump(c: &mut Conn) -> bool {
    let mut progress = false;
    loop {
        let mut moved = false;
        // Client -> receive ring, received in place.
        if !c.client_done && !c.readers_gone {
            match c.rx.free_runs() {
                Ok([(_, 0), (_, 0)]) => {}
                Ok(runs) => match sys::recv_into_runs(c.sock.as_fd(), &runs) {
                    Ok(Moved::Bytes(0)) | Err(_) => c.client_ended(),
                    Ok(Moved::Bytes(n)) => {
                        // At most the free space: only the backend writes this ring.
                        if c.rx.commit(n as u64).is_err() {
                            c.client_ended();
                        }
                        let h = c.rx.header();
                        wake(&h.reader_sleeping, &h.data_seq, &c.wakeup);
                        moved = true;
                    }
                    Ok(Moved::WouldBlock) => {}
                },
                // A guest scribbled over the ring: the connection ends for it.
                Err(_) => c.client_ended(),
            }
        }
        // Send ring -> client, sent in place.
        if c.tx_reading.is_some() {
            match c.tx.data_runs() {
                Ok([(_, 0), (_, 0)]) => {
                    if c.writers_gone && !c.shut {
                        sys::shutdown_write(c.sock.as_fd());
                        c.shut = true;
                    }
                }
                Ok(runs) => {
                    let n = runs[0].1 + runs[1].1;
                    match sys::send_from_runs(c.sock.as_fd(), &runs) {
                        Ok(Moved::Bytes(sent)) => {
                            c.send_blocked = sent < n;
                            if c.tx.consume(sent as u64).is_err() {
                                c.send_failed();
                            }
                            let h = c.tx.header();
                            wake(&h.writer_sleeping, &h.space_seq, &c.wakeup);
                            moved = sent > 0;
                        }
                        Ok(Moved::WouldBlock) => c.send_blocked = true,
                        Err(_) => c.send_failed(),
                    }
                }
                Err(_) => c.send_failed(),
            }
        }
        if !moved {
            return progress;
        }
        progress = true;
    }
}
