//! The messages between a monitor and its family's network backend: one JSON object per
//! datagram on a `SOCK_SEQPACKET` channel, descriptors attached (`SCM_RIGHTS`). Each monitor has
//! its own channel (a forked child makes its own and hands it over with [`ToBackend::Join`]).
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use serde::{Deserialize, Serialize};

use crate::sys;

/// Largest message.
const MAX_MESSAGE: usize = 1024;

/// A monitor's request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToBackend {
    /// The channel that comes with this message is a new monitor's (a forked child's).
    Join,
    /// The guest listens on `port`: answered [`ToMonitor::Listening`] or [`ToMonitor::Refused`].
    Listen {
        /// Matches the answer.
        seq: u64,
        /// The guest port.
        port: u16,
    },
    /// Connect to `addr`: answered [`ToMonitor::Connection`] (its `listener`
    /// [`CONNECTED`]) or [`ToMonitor::Refused`].
    Connect {
        /// Matches the answer.
        seq: u64,
        /// The server.
        addr: SocketAddr,
    },
    /// The next connection of `listener`: answered [`ToMonitor::Connection`] when one comes
    /// (at once with `nonblock`: or [`ToMonitor::Refused`] with `EAGAIN`).
    Accept {
        /// Matches the answer.
        seq: u64,
        /// From [`ToMonitor::Listening`].
        listener: u64,
        /// Answer at once.
        nonblock: bool,
    },
}

/// The backend's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToMonitor {
    /// The guest may accept from `listener`.
    Listening {
        /// The request's.
        seq: u64,
        /// The backend's listener.
        listener: u64,
    },
    /// A client connected; its seven descriptors come with the message, in [`ConnFds`] order.
    Connection {
        /// The request's.
        seq: u64,
        /// The listener it came to.
        listener: u64,
        /// Each ring's capacity.
        capacity: u64,
        /// The client.
        peer: SocketAddr,
    },
    /// The request failed: a negated `pvm_abi::errno`.
    Refused {
        /// The request's.
        seq: u64,
        /// Why.
        errno: i64,
    },
}

/// The `listener` of a [`ToMonitor::Connection`] a connect made.
pub const CONNECTED: u64 = u64::MAX;

/// A connection's descriptors as a monitor gets them.
#[derive(Debug)]
pub struct ConnFds {
    /// The region: the receive ring, then the send ring (`pvm_ipc::net_tx_offset`).
    pub region: OwnedFd,
    /// Hangs up when the backend stops writing the receive ring (the client closed its side).
    pub rx_peer_alive: OwnedFd,
    /// Held while a guest reader of the receive ring exists.
    pub rx_alive: OwnedFd,
    /// Hangs up when the backend stops reading the send ring (the client is gone).
    pub tx_peer_alive: OwnedFd,
    /// Held while a guest writer of the send ring exists.
    pub tx_alive: OwnedFd,
    /// Rung to wake the backend (an eventfd).
    pub doorbell: OwnedFd,
    /// Rung by the backend when it wakes the guest side (an eventfd a poll sleeps on).
    pub wakeup: OwnedFd,
}

impl ConnFds {
    /// The descriptors in the order they travel.
    pub fn borrowed(&self) -> [BorrowedFd<'_>; 7] {
        [
            self.region.as_fd(),
            self.rx_peer_alive.as_fd(),
            self.rx_alive.as_fd(),
            self.tx_peer_alive.as_fd(),
            self.tx_alive.as_fd(),
            self.doorbell.as_fd(),
            self.wakeup.as_fd(),
        ]
    }

    fn from_vec(fds: Vec<OwnedFd>) -> Option<ConnFds> {
        let [region, rx_peer_alive, rx_alive, tx_peer_alive, tx_alive, doorbell, wakeup]: [OwnedFd; 7] =
            fds.try_into().ok()?;
        Some(ConnFds {
            region,
            rx_peer_alive,
            rx_alive,
            tx_peer_alive,
            tx_alive,
            doorbell,
            wakeup,
        })
    }
}

/// Sends `message` on `chan` with `fds`.
pub fn send(chan: BorrowedFd<'_>, message: &impl Serialize, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let text = serde_json::to_vec(message).map_err(io::Error::other)?;
    sys::send_with_fds(chan, &text, fds).map(drop)
}

/// What a receive found.
pub enum Received<T> {
    /// A message and its descriptors.
    Message(T, Vec<OwnedFd>),
    /// Nothing yet.
    Nothing,
    /// The other end is gone.
    Closed,
}

/// Receives one message from `chan` without waiting. A malformed one is an error.
pub fn receive<T: for<'de> Deserialize<'de>>(chan: BorrowedFd<'_>) -> io::Result<Received<T>> {
    let mut buf = [0u8; MAX_MESSAGE];
    match sys::recv_with_fds_max(chan, &mut buf, sys::MAX_NET_FDS) {
        Ok((0, _)) => Ok(Received::Closed),
        Ok((n, fds)) => {
            let message = serde_json::from_slice(&buf[..n]).map_err(io::Error::other)?;
            Ok(Received::Message(message, fds))
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Received::Nothing),
        Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) => Ok(Received::Closed),
        Err(e) => Err(e),
    }
}

/// The descriptors of a [`ToMonitor::Connection`], if they are all there.
pub fn connection_fds(fds: Vec<OwnedFd>) -> Option<ConnFds> {
    ConnFds::from_vec(fds)
}
