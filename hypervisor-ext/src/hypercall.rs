//! Hypercalls: decoding a vCPU exit into a call, and the one dispatcher that reads the call's
//! argument struct, checks every field, runs the handler and writes the OUT fields back.
//!
//! Nothing here trusts the guest. An argument struct with OUT fields must lie in memory the
//! guest may write itself (checked before the handler runs, so a call never half-happens); one
//! with IN fields only, in memory it may read. A struct outside that is the guest's crash
//! ([`bad_args`], status 134): there is nowhere to write an error. Every other field is checked
//! here before a handler sees it: buffers against what the guest may read, ids and signals and
//! keys against what they may name; handlers ([`Host`]) get only checked values.
use pvm_abi::{
    dl_op, errno, fd, layout, mq_side, signal, ClockArgs, DlCloseArgs, DlInfo, DlOpenArgs, DlUpdateArgs,
    ExceptionFrame, ExitArgs, ForkArgs, Hypercall, IpcWaitArgs, KillArgs, MqWaitArgs, NamedArgs,
    NetAcceptArgs, NetConnectArgs, NetListenArgs, NetPollArgs, PipeArgs, Plain, PollItem, SigActionArgs,
    WaitArgs, WriteArgs, WAIT_NOHANG,
};

use crate::family::{KillTarget, OutcomeRecord};
use crate::ipc::{Named, Opened};
use crate::outcome::{Crash, Outcome};
use crate::vstate::memory::{Access, GuestMemory};

/// Largest console write served by one hypercall; the guest loops for more.
pub const MAX_WRITE: u64 = 64 * 1024;

/// Signals a guest may handle.
pub const HANDLEABLE: [u64; 6] = [
    signal::HUP,
    signal::INT,
    signal::USR1,
    signal::USR2,
    signal::TERM,
    signal::CHLD,
];

/// A decoded hypercall: the number and its 8-byte argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Call {
    /// Which hypercall.
    pub nr: Hypercall,
    /// The stored value (usually the guest address of the argument struct).
    pub arg: u64,
}

/// Why an access to `addr` exited, if it lies in a window the monitor backs part by part.
pub fn unbacked(addr: u64) -> Option<&'static str> {
    let within = |base: u64, size: u64| (base..base + size).contains(&addr);
    if within(layout::IPC_BASE, layout::IPC_SIZE) {
        Some("access to a part of the IPC window no region backs")
    } else if within(layout::LIB_CODE_BASE, layout::LIB_WINDOW_SIZE) {
        Some("access to a part of the library code window no library backs (or a store to library code)")
    } else if within(layout::LIB_DATA_BASE, layout::LIB_WINDOW_SIZE) {
        Some("access to a part of the library data window no library backs")
    } else {
        None
    }
}

/// Decodes an MMIO store at guest-physical `addr` with `data` into a hypercall.
pub fn decode(addr: u64, data: &[u8]) -> Result<Call, Crash> {
    if let Some(reason) = unbacked(addr) {
        return Err(Crash::BadHypercall { addr, reason });
    }
    let offset = addr.wrapping_sub(layout::HYPERCALL_GPA);
    if offset >= layout::PAGE_SIZE {
        return Err(Crash::BadHypercall {
            addr,
            reason: "access outside the hypercall window",
        });
    }
    let Ok(bytes) = <[u8; 8]>::try_from(data) else {
        return Err(Crash::BadHypercall {
            addr,
            reason: "hypercalls are 8-byte stores",
        });
    };
    if !offset.is_multiple_of(8) {
        return Err(Crash::BadHypercall {
            addr,
            reason: "misaligned hypercall store",
        });
    }
    let nr = Hypercall::from_nr(offset / 8).ok_or(Crash::BadHypercall {
        addr,
        reason: "unknown hypercall number",
    })?;
    Ok(Call {
        nr,
        arg: u64::from_le_bytes(bytes),
    })
}

/// The one bad-argument error: an argument struct the guest could not itself access as the
/// call needs.
pub fn bad_args(nr: Hypercall) -> Crash {
    Crash::BadHypercall {
        addr: nr.address(),
        reason: "argument struct outside the guest's memory, or read-only for it",
    }
}

/// A handler's result when the pVM may end during it (a signal while it blocks).
#[derive(Debug, PartialEq, Eq)]
pub enum Flow<T> {
    /// Back to the guest with this.
    Continue(T),
    /// The pVM ends.
    End(Outcome),
}

/// A console stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// What a `Wait` found: the child and how it ended.
pub type Reaped = (u32, OutcomeRecord);

/// A step of a library update ([`Hypercall::DlUpdate`]), decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpdateStep {
    /// The runtime is at the safe point; `escape` is its hook escape.
    Begin {
        /// The library being replaced.
        handle: u64,
        /// Where to send the vCPU if a hook runs too long.
        escape: u64,
    },
    /// Commit the new version.
    Commit {
        /// The library being replaced.
        handle: u64,
    },
    /// Keep the old version.
    Abort {
        /// The library being replaced.
        handle: u64,
        /// A `pvm_abi::dl_abort` value.
        reason: u64,
        /// Its detail.
        detail: u64,
    },
}

/// A connection [`Host::net_accept`] installed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Accepted {
    /// The receive ring's read end.
    pub read_handle: u64,
    /// The send ring's write end.
    pub write_handle: u64,
    /// Guest address of the region (the receive ring; the send ring follows).
    pub ring: u64,
    /// Each ring's capacity.
    pub capacity: u64,
    /// The client.
    pub peer: std::net::SocketAddr,
}

/// The monitor side of each hypercall, given checked arguments only. `Monitor` implements it;
/// the fuzz target implements it with a fake that checks what it is given.
pub trait Host {
    /// Guest memory.
    fn memory(&self) -> &GuestMemory;
    /// This pVM's id.
    fn id(&self) -> u32;
    /// Its parent's id (0 for a family's root).
    fn parent_id(&self) -> u32;
    /// Whether `id` is a child not yet waited for.
    fn has_child(&self, id: u32) -> bool;
    /// Whether this pVM has any child not yet waited for.
    fn has_children(&self) -> bool;
    /// Writes console bytes (at most [`MAX_WRITE`]); bytes written or a negated errno.
    fn console(&self, stream: Stream, bytes: &[u8]) -> i64;
    /// The host's monotonic clock in nanoseconds.
    fn clock(&mut self) -> u64;
    /// A CPU exception the guest did not survive (a frame from a ring-0 stack).
    fn exception(&mut self, frame: ExceptionFrame) -> Outcome;
    /// Forks: the child's id in the parent, 0 in the child, or a negated errno.
    fn fork(&mut self) -> i64;
    /// Waits for `child` (None: any); `Ok(None)` with `nohang` when none has ended.
    fn wait(&mut self, child: Option<u32>, nohang: bool) -> Flow<Result<Option<Reaped>, i64>>;
    /// Sleeps until a signal.
    fn pause(&mut self) -> Flow<()>;
    /// Creates a pipe of a valid capacity: (read handle, write handle, ring address).
    fn pipe_create(&mut self, capacity: u64) -> Result<(u64, u64, u64), i64>;
    /// Sleeps on pipe `handle` while its futex word holds `seq`.
    fn ipc_wait(&mut self, handle: u64, seq: u32) -> Flow<i64>;
    /// Wakes the peer of pipe `handle`.
    fn ipc_notify(&mut self, handle: u64);
    /// Closes IPC `handle`.
    fn ipc_close(&mut self, handle: u64);
    /// Handles (or restores the default action of) a handleable signal.
    fn sig_action(&mut self, sig: u64, handled: bool);
    /// Sends a valid signal to a checked target.
    fn kill(&mut self, target: KillTarget, sig: i32) -> i64;
    /// Opens or creates the named object with a valid key.
    fn open_named(&mut self, what: Named, key: &str, create: bool) -> Result<Opened, i64>;
    /// Sleeps on `side` of queue `handle` while its futex word holds `seq`.
    fn mq_wait(&mut self, handle: u64, side: u64, seq: u32) -> Flow<i64>;
    /// Wakes the sleepers of `side` of queue `handle`.
    fn mq_wake(&mut self, handle: u64, side: u64);
    /// Loads library `name` (a valid name), or takes another reference: where it is, or a
    /// negated errno and why in words.
    fn dl_open(&mut self, name: &str) -> Result<DlInfo, (i64, String)>;
    /// Drops a reference to library `handle`: 0 or a negated errno.
    fn dl_close(&mut self, handle: u64) -> i64;
    /// One step of an update: the new version at `Begin`, nothing after the others.
    fn dl_update(&mut self, step: UpdateStep) -> Result<Option<DlInfo>, i64>;
    /// Listens on guest port `port` (not 0): the listener's handle, or a negated errno.
    fn net_listen(&mut self, port: u16) -> Result<u64, i64>;
    /// The next connection of listener `handle` (at once with `nonblock`).
    fn net_accept(&mut self, handle: u64, nonblock: bool) -> Flow<Result<Accepted, i64>>;
    /// Connects to `addr` (a valid address and port): the connection, or a negated errno.
    fn net_connect(&mut self, addr: std::net::SocketAddr) -> Flow<Result<Accepted, i64>>;
    /// Fills each item's `revents` (only READ, WRITE, HUP and INVALID bits), waiting at most
    /// `timeout_ns` (None: for ever) until one is ready: how many are.
    fn net_poll(&mut self, items: &mut [PollItem], timeout_ns: Option<u64>) -> Flow<Result<u64, i64>>;
}

/// Reads the argument struct (which the guest must be able to write: it has OUT fields), runs
/// `handle` on it, writes it back unless the pVM ended.
fn with_args<H: Host, T: Plain>(
    host: &mut H,
    call: Call,
    handle: impl FnOnce(&mut H, &mut T) -> Flow<()>,
) -> Result<Option<Outcome>, Crash> {
    let mut args: T = host
        .memory()
        .read_obj(call.arg, Access::GuestWrite)
        .map_err(|_| bad_args(call.nr))?;
    if let Flow::End(outcome) = handle(host, &mut args) {
        return Ok(Some(outcome));
    }
    host.memory()
        .write_obj(call.arg, &args, Access::GuestWrite)
        .map_err(|_| bad_args(call.nr))?;
    Ok(None)
}

/// The one check of a pVM id a guest passes to `Kill`: 0, values that do not fit a positive
/// pid (which `kill(2)` would read as a process group or "everyone"), are refused here.
pub fn kill_target(host: &impl Host, id: u64) -> Result<KillTarget, i64> {
    let id = u32::try_from(id)
        .ok()
        .filter(|&i| i > 0 && i32::try_from(i).is_ok())
        .ok_or(-errno::ESRCH)?;
    Ok(if id == host.id() {
        KillTarget::Myself
    } else if host.has_child(id) {
        KillTarget::Child(id)
    } else {
        KillTarget::Registered(id)
    })
}

/// The one check of a pVM id a guest passes to `Wait`: 0 is any child (if there is one),
/// anything else must be a child not yet waited for.
pub fn wait_target(host: &impl Host, id: u64) -> Result<Option<u32>, i64> {
    let no_child = -errno::ECHILD;
    if id == 0 {
        return if host.has_children() {
            Ok(None)
        } else {
            Err(no_child)
        };
    }
    match u32::try_from(id) {
        Ok(id) if host.has_child(id) => Ok(Some(id)),
        _ => Err(no_child),
    }
}

/// The one check of a named object's key: 1 to [`pvm_abi::MAX_KEY_LEN`] bytes of
/// `[A-Za-z0-9._-]`, readable by the guest; `EFAULT` if it is not, `EINVAL` if it is not a key.
pub fn read_key(mem: &GuestMemory, addr: u64, len: u64) -> Result<String, i64> {
    if len == 0 || len > pvm_abi::MAX_KEY_LEN {
        return Err(-errno::EINVAL);
    }
    let bytes = mem
        .slice(addr, len, Access::GuestRead)
        .map_err(|_| -errno::EFAULT)?;
    let valid = |b: &u8| b.is_ascii_alphanumeric() || b"._-".contains(b);
    if !bytes.iter().all(valid) || bytes == b"." || bytes == b".." {
        return Err(-errno::EINVAL);
    }
    Ok(bytes.iter().map(|&b| b as char).collect())
}

/// Runs one hypercall: `Ok(Some(outcome))` when the pVM ends, `Err` for a bad hypercall (the
/// guest's crash).
pub fn dispatch<H: Host>(host: &mut H, call: Call) -> Result<Option<Outcome>, Crash> {
    use Flow::{Continue, End};
    match call.nr {
        Hypercall::Write => with_args(host, call, |h, a: &mut WriteArgs| {
            let stream = match a.fd {
                fd::STDOUT => Some(Stream::Stdout),
                fd::STDERR => Some(Stream::Stderr),
                _ => None,
            };
            let len = a.len.min(MAX_WRITE);
            a.result = match stream {
                None => -errno::EINVAL,
                Some(stream) => match h.memory().slice(a.buf, len, Access::GuestRead) {
                    Ok(bytes) => h.console(stream, bytes),
                    Err(_) => -errno::EFAULT,
                },
            };
            Continue(())
        }),
        Hypercall::Exit => {
            let args: ExitArgs = host
                .memory()
                .read_obj(call.arg, Access::GuestRead)
                .map_err(|_| bad_args(call.nr))?;
            Ok(Some(Outcome::Exited(args.code as i32)))
        }
        Hypercall::Exception => {
            // Only a frame on the monitor's ring-0 stacks: guest code cannot make the monitor
            // read elsewhere (and can only report its own crash with a stale frame).
            let lo = layout::RING0_STACK_ADDR;
            let hi = layout::DF_STACK_ADDR + layout::DF_STACK_SIZE;
            let size = size_of::<ExceptionFrame>() as u64;
            let bad = Crash::BadHypercall {
                addr: call.nr.address(),
                reason: "exception frame not on a ring-0 stack",
            };
            if call.arg < lo || call.arg.checked_add(size).is_none_or(|end| end > hi) {
                return Err(bad);
            }
            let frame: ExceptionFrame = host
                .memory()
                .read_obj(call.arg, Access::Monitor)
                .map_err(|_| bad)?;
            Ok(Some(host.exception(frame)))
        }
        Hypercall::Fork => with_args(host, call, |h, a: &mut ForkArgs| {
            a.result = h.fork();
            a.id = u64::from(h.id());
            a.parent_id = u64::from(h.parent_id());
            Continue(())
        }),
        Hypercall::Wait => with_args(host, call, |h, a: &mut WaitArgs| {
            a.kind = pvm_abi::wait_kind::NONE;
            a.result = 0;
            let target = match wait_target(h, a.id) {
                Ok(t) => t,
                Err(e) => {
                    a.result = e;
                    return Continue(());
                }
            };
            match h.wait(target, a.flags & WAIT_NOHANG != 0) {
                End(o) => return End(o),
                Continue(Err(e)) => a.result = e,
                Continue(Ok(None)) => {}
                Continue(Ok(Some((child, r)))) => {
                    a.child = u64::from(child);
                    a.kind = r.kind;
                    a.code = r.code;
                    a.fault_addr = r.fault_addr;
                    a.rip = r.rip;
                }
            }
            Continue(())
        }),
        Hypercall::Clock => with_args(host, call, |h, a: &mut ClockArgs| {
            a.nanos = h.clock();
            Continue(())
        }),
        Hypercall::Pause => match host.pause() {
            End(o) => Ok(Some(o)),
            Continue(()) => Ok(None),
        },
        Hypercall::PipeCreate => with_args(host, call, |h, a: &mut PipeArgs| {
            a.result = if !pvm_ipc::valid_pipe_capacity(a.capacity) {
                -errno::EINVAL
            } else {
                match h.pipe_create(a.capacity) {
                    Ok((r, w, ring)) => {
                        (a.read_handle, a.write_handle, a.ring) = (r, w, ring);
                        0
                    }
                    Err(e) => e,
                }
            };
            Continue(())
        }),
        Hypercall::IpcWait => with_args(host, call, |h, a: &mut IpcWaitArgs| {
            match h.ipc_wait(a.handle, a.seq as u32) {
                End(o) => return End(o),
                Continue(r) => a.result = r,
            }
            Continue(())
        }),
        // Fire-and-forget calls: a bad handle is the guest's own problem, nothing to report.
        Hypercall::IpcNotify => {
            host.ipc_notify(call.arg);
            Ok(None)
        }
        Hypercall::IpcClose => {
            host.ipc_close(call.arg);
            Ok(None)
        }
        Hypercall::SigAction => with_args(host, call, |h, a: &mut SigActionArgs| {
            a.result = if HANDLEABLE.contains(&a.signal) {
                h.sig_action(a.signal, a.handled != 0);
                0
            } else {
                -errno::EINVAL
            };
            Continue(())
        }),
        Hypercall::Kill => with_args(host, call, |h, a: &mut KillArgs| {
            a.result = if !HANDLEABLE.contains(&a.signal) && a.signal != signal::KILL {
                -errno::EINVAL
            } else {
                match kill_target(h, a.id) {
                    Ok(target) => h.kill(target, a.signal as i32),
                    Err(e) => e,
                }
            };
            Continue(())
        }),
        Hypercall::MqOpen | Hypercall::ShmOpen => with_args(host, call, |h, a: &mut NamedArgs| {
            let what = if call.nr == Hypercall::MqOpen {
                Named::Queue {
                    capacity: a.capacity,
                    msg_size: a.msg_size,
                }
            } else {
                Named::Shm { size: a.capacity }
            };
            let opened = read_key(h.memory(), a.key, a.key_len)
                .and_then(|key| h.open_named(what, &key, a.create != 0));
            match opened {
                Ok(o) => {
                    (a.handle, a.addr, a.size, a.msg_size_out) = (o.handle, o.addr, o.size, o.msg_size);
                    a.result = 0;
                }
                Err(e) => a.result = e,
            }
            Continue(())
        }),
        Hypercall::MqWait => with_args(host, call, |h, a: &mut MqWaitArgs| {
            a.result = if a.side > mq_side::SEND {
                -errno::EINVAL
            } else {
                match h.mq_wait(a.handle, a.side, a.seq as u32) {
                    End(o) => return End(o),
                    Continue(r) => r,
                }
            };
            Continue(())
        }),
        Hypercall::MqWake => {
            host.mq_wake(call.arg >> 1, call.arg & 1);
            Ok(None)
        }
        Hypercall::DlOpen => with_args(host, call, |h, a: &mut DlOpenArgs| {
            a.msg_len = 0;
            a.info = DlInfo::default();
            let opened = read_key(h.memory(), a.name, a.name_len)
                .map_err(|e| (e, "a library name is 1 to 64 bytes of [A-Za-z0-9._-]".to_string()))
                .and_then(|name| h.dl_open(&name));
            match opened {
                Ok(info) => {
                    a.info = info;
                    a.result = 0;
                }
                Err((e, message)) => {
                    a.result = e;
                    // The message goes only where the guest may write (else it is dropped).
                    let len = (message.len() as u64).min(a.msg_cap);
                    if a.msg != 0
                        && h.memory()
                            .write_bytes(a.msg, &message.as_bytes()[..len as usize], Access::GuestWrite)
                            .is_ok()
                    {
                        a.msg_len = len;
                    }
                }
            }
            Continue(())
        }),
        Hypercall::NetListen => with_args(host, call, |h, a: &mut NetListenArgs| {
            a.handle = 0;
            a.result = match u16::try_from(a.port) {
                Ok(port) if port != 0 => match h.net_listen(port) {
                    Ok(handle) => {
                        a.handle = handle;
                        0
                    }
                    Err(e) => e,
                },
                _ => -errno::EINVAL,
            };
            Continue(())
        }),
        Hypercall::NetAccept => with_args(host, call, |h, a: &mut NetAcceptArgs| {
            let listener = a.listener;
            let flags = a.flags;
            *a = NetAcceptArgs {
                listener,
                flags,
                ..Default::default()
            };
            if flags & !pvm_abi::net_flags::NONBLOCK != 0 {
                a.result = -errno::EINVAL;
                return Continue(());
            }
            match h.net_accept(listener, flags & pvm_abi::net_flags::NONBLOCK != 0) {
                End(o) => return End(o),
                Continue(Err(e)) => a.result = e,
                Continue(Ok(c)) => {
                    (a.read_handle, a.write_handle, a.ring, a.capacity) =
                        (c.read_handle, c.write_handle, c.ring, c.capacity);
                    a.peer_ip = match c.peer.ip() {
                        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                        std::net::IpAddr::V6(v6) => v6.octets(),
                    };
                    a.peer_port = u64::from(c.peer.port());
                }
            }
            Continue(())
        }),
        Hypercall::NetConnect => with_args(host, call, |h, a: &mut NetConnectArgs| {
            let (ip, port) = (a.ip, a.port);
            *a = NetConnectArgs {
                ip,
                port,
                ..Default::default()
            };
            let port = match u16::try_from(port) {
                Ok(p) if p != 0 => p,
                _ => {
                    a.result = -errno::EINVAL;
                    return Continue(());
                }
            };
            let ip = std::net::Ipv6Addr::from(ip);
            let ip = ip
                .to_ipv4_mapped()
                .map_or(std::net::IpAddr::V6(ip), std::net::IpAddr::V4);
            match h.net_connect(std::net::SocketAddr::new(ip, port)) {
                End(o) => return End(o),
                Continue(Err(e)) => a.result = e,
                Continue(Ok(c)) => {
                    (a.read_handle, a.write_handle, a.ring, a.capacity) =
                        (c.read_handle, c.write_handle, c.ring, c.capacity);
                }
            }
            Continue(())
        }),
        Hypercall::NetPoll => with_args(host, call, |h, a: &mut NetPollArgs| {
            a.ready = 0;
            if a.count > pvm_abi::MAX_POLL_ITEMS {
                a.result = -errno::EINVAL;
                return Continue(());
            }
            let item = size_of::<PollItem>() as u64;
            let len = a.count * item;
            // The items are read and written back where the guest may write.
            let mut items: Vec<PollItem> = match h.memory().slice(a.items, len, Access::GuestWrite) {
                Ok(bytes) => bytes
                    .chunks_exact(item as usize)
                    .map(|c| {
                        let word =
                            |i: usize| u64::from_le_bytes(c[8 * i..8 * i + 8].try_into().unwrap_or_default());
                        PollItem {
                            handle: word(0),
                            events: word(1) & (pvm_abi::poll_events::READ | pvm_abi::poll_events::WRITE),
                            revents: 0,
                        }
                    })
                    .collect(),
                Err(_) => {
                    a.result = -errno::EFAULT;
                    return Continue(());
                }
            };
            let timeout = (a.timeout_ns != pvm_abi::POLL_FOREVER).then_some(a.timeout_ns);
            match h.net_poll(&mut items, timeout) {
                End(o) => return End(o),
                Continue(Err(e)) => a.result = e,
                Continue(Ok(n)) => {
                    let mut bytes = Vec::with_capacity(len as usize);
                    for it in &items {
                        for w in [it.handle, it.events, it.revents] {
                            bytes.extend_from_slice(&w.to_le_bytes());
                        }
                    }
                    a.result = match h.memory().write_bytes(a.items, &bytes, Access::GuestWrite) {
                        Ok(()) => {
                            a.ready = n;
                            0
                        }
                        Err(_) => -errno::EFAULT,
                    };
                }
            }
            Continue(())
        }),
        Hypercall::DlClose => with_args(host, call, |h, a: &mut DlCloseArgs| {
            a.result = h.dl_close(a.handle);
            Continue(())
        }),
        Hypercall::DlUpdate => with_args(host, call, |h, a: &mut DlUpdateArgs| {
            let step = match a.op {
                dl_op::BEGIN => Some(UpdateStep::Begin {
                    handle: a.handle,
                    escape: a.escape,
                }),
                dl_op::COMMIT => Some(UpdateStep::Commit { handle: a.handle }),
                dl_op::ABORT => Some(UpdateStep::Abort {
                    handle: a.handle,
                    reason: a.reason,
                    detail: a.detail,
                }),
                _ => None,
            };
            a.info = DlInfo::default();
            a.result = match step.map(|s| h.dl_update(s)) {
                None => -errno::EINVAL,
                Some(Ok(info)) => {
                    a.info = info.unwrap_or_default();
                    0
                }
                Some(Err(e)) => e,
            };
            Continue(())
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_checks_window_width_alignment_and_number() {
        let arg = 0x20_1000u64.to_le_bytes();
        assert_eq!(
            decode(layout::HYPERCALL_GPA + 8, &arg),
            Ok(Call {
                nr: Hypercall::Write,
                arg: 0x20_1000
            })
        );
        assert!(decode(layout::HYPERCALL_GPA + 8, &arg[..4]).is_err());
        assert!(decode(layout::HYPERCALL_GPA + 9, &arg).is_err());
        assert!(decode(layout::HYPERCALL_GPA + 8 * 500, &arg).is_err());
        assert!(decode(layout::HYPERCALL_GPA + layout::PAGE_SIZE, &arg).is_err());
    }
}
