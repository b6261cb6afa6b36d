//! Networking, monitor side: the ports the operator published, the family's network backend
//! (`backend.rs`, its own process) and this monitor's channel to it (`proto.rs`).
//!
//! Policy is default deny: a guest listens only on a published guest port (the backend holds
//! the bound host socket, bound before the guest runs); outbound connections are not offered
//! yet.
use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::str::FromStr;

use pvm_abi::errno;

mod backend;
pub mod proto;

use proto::{ConnFds, Received, ToBackend, ToMonitor};

use crate::sys::{self, Forked};

/// Live connections of one family, by default.
pub const DEFAULT_MAX_CONNS: usize = 1024;

/// How long one wait for the backend lasts before the caller looks at signals again.
const WAIT_SLICE_NS: i64 = 10_000_000;

/// A port the operator publishes: `[HOST_IP:]PORT[:GUEST_PORT]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Publish {
    /// Where the host listens (`127.0.0.1` unless given; port 0: any free port).
    pub host: SocketAddr,
    /// The port the guest listens on.
    pub guest_port: u16,
}

/// A `--publish` value that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid --publish {0:?}: use [HOST_IP:]PORT[:GUEST_PORT], e.g. 6379, 8080:80 or 0.0.0.0:8080:80 ([::1]:8080:80 for IPv6)")]
pub struct PublishError(String);

impl FromStr for Publish {
    type Err = PublishError;

    fn from_str(text: &str) -> Result<Publish, PublishError> {
        let bad = || PublishError(text.to_string());
        // An IPv6 address is in brackets: [ADDR]:PORT[:GUEST_PORT].
        let (ip, rest) = if let Some(r) = text.strip_prefix('[') {
            let (addr, rest) = r.split_once("]:").ok_or_else(bad)?;
            (Some(addr.parse::<IpAddr>().map_err(|_| bad())?), rest)
        } else {
            let parts: Vec<&str> = text.split(':').collect();
            match parts.as_slice() {
                [_] | [_, _] if parts.iter().all(|p| p.parse::<u16>().is_ok()) => (None, text),
                [ip, rest @ ..] if !rest.is_empty() => (
                    Some(ip.parse::<IpAddr>().map_err(|_| bad())?),
                    &text[ip.len() + 1..],
                ),
                _ => return Err(bad()),
            }
        };
        let ports: Vec<u16> = rest
            .split(':')
            .map(|p| p.parse::<u16>().map_err(|_| bad()))
            .collect::<Result<_, _>>()?;
        let (host_port, guest_port) = match ports.as_slice() {
            [p] => (*p, *p),
            [h, g] => (*h, *g),
            _ => return Err(bad()),
        };
        if guest_port == 0 {
            return Err(bad());
        }
        Ok(Publish {
            host: SocketAddr::new(ip.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)), host_port),
            guest_port,
        })
    }
}

/// What the operator allows a family on the network.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetConfig {
    /// Published ports.
    pub publish: Vec<Publish>,
    /// Servers the family may connect to.
    pub connect: Vec<SocketAddr>,
    /// Live connections of the family at most (more clients are refused).
    pub max_conns: usize,
}

/// Why networking could not start.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A published port cannot be bound.
    #[error("cannot publish {addr}: {source}")]
    Bind {
        /// The host address.
        addr: SocketAddr,
        /// Why (in use, not allowed, no such address).
        source: std::io::Error,
    },
    /// The backend could not be started.
    #[error("cannot start the network backend: {0}")]
    Backend(std::io::Error),
}

/// A published port as bound: (host address, guest port).
pub type Published = (SocketAddr, u16);

/// A connection as a monitor installs it.
#[derive(Debug)]
pub struct Conn {
    /// Its descriptors.
    pub fds: ConnFds,
    /// Each ring's capacity.
    pub capacity: u64,
    /// The client.
    pub peer: SocketAddr,
}

/// This monitor's side of the family network.
#[derive(Debug)]
pub struct Network {
    channel: OwnedFd,
    seq: u64,
    /// Accept requests sent and not answered (a signal ended the wait): (seq, listener).
    waiting: Vec<(u64, u64)>,
    /// Connections answered to such requests, for the next accept of their listener.
    ready: VecDeque<(u64, Conn)>,
    /// The published ports (for `pvmctl ps`).
    pub published: Vec<Published>,
}

/// Binds the published ports and starts the family's backend (a child process of this one,
/// which must be single-threaded), confined by its own seccomp allow-list with `confine`. The
/// backend runs `in_backend` first, to drop what it inherited and must not keep.
pub fn start(config: &NetConfig, confine: bool, in_backend: impl FnOnce()) -> Result<Network, NetError> {
    let mut listeners = Vec::new();
    let mut published = Vec::new();
    for p in &config.publish {
        let fd = sys::tcp_listen(p.host).map_err(|source| NetError::Bind { addr: p.host, source })?;
        let bound = sys::local_addr(fd.as_fd()).map_err(|source| NetError::Bind { addr: p.host, source })?;
        published.push((bound, p.guest_port));
        listeners.push((fd, p.guest_port));
    }
    let (mine, theirs) = sys::seqpacket_pair().map_err(NetError::Backend)?;
    // SAFETY: the caller is single-threaded (the monitor before it builds its VM).
    match unsafe { sys::fork() }.map_err(NetError::Backend)? {
        Forked::Child => {
            // What the caller's process holds that the backend must not (run first).
            in_backend();
            drop(mine);
            let _ = sys::set_name(BACKEND_NAME);
            // Not the console's: a family's output ends with its pVMs, not with the backend.
            sys::detach_stdin_stdout();
            if confine {
                // rustix reads the auxiliary vector (a prctl) when it first reads the clock:
                // before the filter, which has no prctl.
                let _ = sys::monotonic_ns();
                let confined = crate::seccomp::backend_program().and_then(|f| crate::seccomp::install(&f));
                if let Err(e) = confined {
                    tracing::error!(error = %e, "network backend");
                    sys::exit_now(1);
                }
            }
            let max = if config.max_conns == 0 {
                DEFAULT_MAX_CONNS
            } else {
                config.max_conns
            };
            backend::run(listeners, theirs, max, config.connect.clone());
            sys::exit_now(0);
        }
        Forked::Parent(_) => {}
    }
    Ok(Network {
        channel: mine,
        seq: 0,
        waiting: Vec::new(),
        ready: VecDeque::new(),
        published,
    })
}

/// The backend's process name.
pub const BACKEND_NAME: &std::ffi::CStr = c"pvm-net";

impl Network {
    /// The published ports as `ps` shows them: `HOST_ADDR:PORT->GUEST_PORT/tcp`.
    pub fn describe(&self) -> Vec<String> {
        self.published
            .iter()
            .map(|(host, guest)| format!("{host}->{guest}/tcp"))
            .collect()
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Waits for the answer to `seq`, keeping connections answered to earlier accepts; `None`
    /// when `interrupted()` first.
    fn answer(&mut self, seq: u64, interrupted: &impl Fn() -> bool) -> Result<Option<ToMonitor>, i64> {
        loop {
            match proto::receive::<ToMonitor>(self.channel.as_fd()) {
                Ok(Received::Message(m, fds)) => {
                    let s = match &m {
                        ToMonitor::Listening { seq, .. }
                        | ToMonitor::Connection { seq, .. }
                        | ToMonitor::Refused { seq, .. } => *seq,
                    };
                    if let ToMonitor::Connection {
                        listener,
                        capacity,
                        peer,
                        ..
                    } = &m
                    {
                        let fds = proto::connection_fds(fds).ok_or(-errno::ENETDOWN)?;
                        if *listener == proto::CONNECTED && s != seq {
                            // A connect a signal gave up on: nobody takes it.
                            self.waiting.retain(|&(w, _)| w != s);
                            continue;
                        }
                        let conn = Conn {
                            fds,
                            capacity: *capacity,
                            peer: *peer,
                        };
                        self.ready.push_back((*listener, conn));
                    }
                    self.waiting.retain(|&(w, _)| w != s);
                    if s == seq {
                        return Ok(Some(m));
                    }
                }
                Ok(Received::Nothing) => {
                    if interrupted() {
                        return Ok(None);
                    }
                    match sys::wait_readable(self.channel.as_fd(), WAIT_SLICE_NS) {
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(_) => return Err(-errno::ENETDOWN),
                    }
                }
                Ok(Received::Closed) | Err(_) => return Err(-errno::ENETDOWN),
            }
        }
    }

    /// Listens on guest port `port`: the listener's id, or a negated errno.
    pub fn listen(&mut self, port: u16) -> Result<u64, i64> {
        let seq = self.next_seq();
        proto::send(self.channel.as_fd(), &ToBackend::Listen { seq, port }, &[])
            .map_err(|_| -errno::ENETDOWN)?;
        match self.answer(seq, &|| false)? {
            Some(ToMonitor::Listening { listener, .. }) => Ok(listener),
            Some(ToMonitor::Refused { errno, .. }) => Err(errno),
            _ => Err(-errno::ENETDOWN),
        }
    }

    /// The next connection of `listener`: `Ok(None)` when `interrupted()` ended the wait (the
    /// request stays; its connection goes to the next accept).
    pub fn accept(
        &mut self,
        listener: u64,
        nonblock: bool,
        interrupted: impl Fn() -> bool,
    ) -> Result<Option<Conn>, i64> {
        let take = |ready: &mut VecDeque<(u64, Conn)>| {
            let i = ready.iter().position(|(l, _)| *l == listener)?;
            ready.remove(i).map(|(_, c)| c)
        };
        if let Some(c) = take(&mut self.ready) {
            return Ok(Some(c));
        }
        let seq = match self.waiting.iter().find(|&&(_, l)| l == listener) {
            // A request of an interrupted accept is still out: wait for its answer.
            Some(&(seq, _)) if !nonblock => seq,
            Some(_) => {
                // Non-blocking while one is out: whatever already came.
                let _ = self.answer(0, &|| true)?;
                return take(&mut self.ready).map(Some).ok_or(-errno::EAGAIN);
            }
            None => {
                let seq = self.next_seq();
                let request = ToBackend::Accept {
                    seq,
                    listener,
                    nonblock,
                };
                proto::send(self.channel.as_fd(), &request, &[]).map_err(|_| -errno::ENETDOWN)?;
                self.waiting.push((seq, listener));
                seq
            }
        };
        match self.answer(seq, &interrupted)? {
            None => Ok(None),
            Some(ToMonitor::Connection { .. }) => take(&mut self.ready).map(Some).ok_or(-errno::ENETDOWN),
            Some(ToMonitor::Refused { errno, .. }) => Err(errno),
            Some(ToMonitor::Listening { .. }) => Err(-errno::ENETDOWN),
        }
    }

    /// Connects to `addr` (the backend checks the operator allows it): `Ok(None)` when
    /// `interrupted()` ended the wait (the attempt is dropped when it answers).
    pub fn connect(&mut self, addr: SocketAddr, interrupted: impl Fn() -> bool) -> Result<Option<Conn>, i64> {
        let seq = self.next_seq();
        proto::send(self.channel.as_fd(), &ToBackend::Connect { seq, addr }, &[])
            .map_err(|_| -errno::ENETDOWN)?;
        self.waiting.push((seq, proto::CONNECTED));
        match self.answer(seq, &interrupted)? {
            None => Ok(None),
            Some(ToMonitor::Connection { .. }) => {
                let i = self.ready.iter().position(|(l, _)| *l == proto::CONNECTED);
                i.and_then(|i| self.ready.remove(i))
                    .map(|(_, c)| Some(c))
                    .ok_or(-errno::ENETDOWN)
            }
            Some(ToMonitor::Refused { errno, .. }) => Err(errno),
            Some(ToMonitor::Listening { .. }) => Err(-errno::ENETDOWN),
        }
    }

    /// Whether a connection of `listener` waits for an accept.
    pub fn has_ready(&self, listener: u64) -> bool {
        self.ready.iter().any(|(l, _)| *l == listener)
    }

    /// Takes what the backend already answered, without waiting.
    pub fn drain(&mut self) -> Result<(), i64> {
        self.answer(0, &|| true).map(drop)
    }

    /// Makes sure the backend tells this monitor of `listener`'s next connection (an accept
    /// request out, unless one is, or a connection is here already).
    pub fn watch(&mut self, listener: u64) -> Result<(), i64> {
        if self.has_ready(listener) || self.waiting.iter().any(|&(_, l)| l == listener) {
            return Ok(());
        }
        let seq = self.next_seq();
        let request = ToBackend::Accept {
            seq,
            listener,
            nonblock: false,
        };
        proto::send(self.channel.as_fd(), &request, &[]).map_err(|_| -errno::ENETDOWN)?;
        self.waiting.push((seq, listener));
        Ok(())
    }

    /// The channel (readable when the backend answered).
    pub fn channel(&self) -> std::os::fd::BorrowedFd<'_> {
        self.channel.as_fd()
    }

    /// In a forked child's monitor: a channel of its own (the parent keeps the one both
    /// inherited); requests of the parent's are the parent's.
    pub fn after_fork(&mut self) -> std::io::Result<()> {
        let (mine, theirs) = sys::seqpacket_pair()?;
        proto::send(self.channel.as_fd(), &ToBackend::Join, &[theirs.as_fd()])?;
        self.channel = mine;
        self.waiting.clear();
        self.ready.clear();
        Ok(())
    }
}
