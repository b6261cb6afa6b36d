//! The monitor's side of each hypercall ([`Host`]), grouped by concern: console and clock,
//! processes (fork in `fork.rs`, wait, pause, exceptions), signals, IPC. Arguments arrive
//! checked by the dispatcher (`hypercall.rs`).
use std::os::fd::AsFd;

use pvm_abi::{errno, layout, DlInfo, ExceptionFrame, GuestStatus};

use crate::family::{Collected, KillTarget};
use crate::hypercall::{Accepted, Flow, Host, Reaped, Stream, UpdateStep};
use crate::ipc::{Named, Opened, Woken};
use crate::monitor::{Attention, Monitor};
use crate::outcome::{report_line, Crash, Exception, Outcome};
use crate::signals;
use crate::sys;
use crate::vstate::memory::{Access, GuestMemory};

const PENDING_AT: u64 = layout::STATUS_ADDR + std::mem::offset_of!(GuestStatus, pending_signals) as u64;

impl Monitor {
    /// Whether signals given to the guest wait for its handlers (then it must not sleep).
    pub(crate) fn guest_signals_pending(&self) -> bool {
        // The guest may write this page: any value just means "run your handlers first".
        self.mem
            .read_obj::<u64>(PENDING_AT, Access::Monitor)
            .is_ok_and(|p| p != 0)
    }

    /// Adds `mask` to the guest's pending signals (in its status page).
    pub(crate) fn deliver_to_guest(&mut self, mask: u64) {
        let pending: u64 = self.mem.read_obj(PENDING_AT, Access::Monitor).unwrap_or(0);
        let _ = self.mem.write_obj(PENDING_AT, &(pending | mask), Access::Monitor);
        tracing::debug!(pending = format_args!("{:#x}", pending | mask), "delivered");
    }

    /// Sleeps in `sleep` until it gives an answer; a signal the guest handles makes it `EINTR`,
    /// one that ends the pVM ends it.
    fn blocking(&mut self, mut sleep: impl FnMut(&mut Monitor) -> Result<Option<i64>, i64>) -> Flow<i64> {
        loop {
            if self.guest_signals_pending() {
                // Delivered while the guest was spinning: its handlers run first.
                return Flow::Continue(-errno::EINTR);
            }
            match sleep(self) {
                Ok(Some(r)) | Err(r) => return Flow::Continue(r),
                Ok(None) => match self.attend() {
                    Attention::End(outcome) => return Flow::End(outcome),
                    Attention::Guest => return Flow::Continue(-errno::EINTR),
                    Attention::None => {}
                },
            }
        }
    }

    /// Installs a connection the network backend handed over (its region and two pipe ends).
    fn install(&mut self, conn: crate::net::Conn) -> Result<Accepted, i64> {
        let (capacity, peer) = (conn.capacity, conn.peer);
        let (read_handle, write_handle, ring) = self.ipc.add_connection(&self.vm, &mut self.space, conn)?;
        Ok(Accepted {
            read_handle,
            write_handle,
            ring,
            capacity,
            peer,
        })
    }

    /// Whether `addr` lies in the stack guard page.
    pub(crate) fn in_stack_guard(&self, addr: u64) -> bool {
        let guard = crate::loader::image_limit(self.mem.size());
        (guard..guard + layout::STACK_GUARD_SIZE).contains(&addr)
    }
}

impl Host for Monitor {
    fn memory(&self) -> &GuestMemory {
        &self.mem
    }

    fn id(&self) -> u32 {
        self.family.ids.id
    }

    fn parent_id(&self) -> u32 {
        self.family.ids.parent
    }

    fn has_child(&self, id: u32) -> bool {
        self.family.has_child(id)
    }

    fn has_children(&self) -> bool {
        !self.family.children.is_empty()
    }

    fn console(&self, stream: Stream, bytes: &[u8]) -> i64 {
        let fd = match stream {
            Stream::Stdout => sys::stdio(1),
            Stream::Stderr => sys::stdio(2),
        };
        let written = match sys::write_all(fd, bytes) {
            Ok(n) => n as i64,
            Err(_) => -errno::EIO,
        };
        if self.console_log {
            crate::console_log::keep_bounded();
        }
        written
    }

    fn clock(&mut self) -> u64 {
        sys::monotonic_ns()
    }

    fn exception(&mut self, frame: ExceptionFrame) -> Outcome {
        let cr2 = self.vcpu.get_sregs().map(|s| s.cr2).unwrap_or(0);
        let fault_addr = if frame.vector == 14 { cr2 } else { 0 };
        Outcome::Crashed(Crash::Exception(Exception {
            vector: frame.vector,
            error_code: frame.error_code,
            rip: frame.rip,
            rsp: frame.rsp,
            fault_addr,
            in_stack_guard: frame.vector == 14 && self.in_stack_guard(fault_addr),
            via_idt: true,
        }))
    }

    fn fork(&mut self) -> i64 {
        self.fork_pvm()
    }

    /// Blocks in `waitpid` (a signal interrupts it: one the guest handles makes it return
    /// `EINTR`, one that ends the pVM ends it).
    fn wait(&mut self, child: Option<u32>, nohang: bool) -> Flow<Result<Option<Reaped>, i64>> {
        if !nohang {
            // Waiting anyway: the next fork's lease descriptions and pipe now, not in its pause.
            self.family.prepare_fork();
        }
        loop {
            if !nohang && self.guest_signals_pending() {
                return Flow::Continue(Err(-errno::EINTR));
            }
            let (pid, status) = match sys::waitpid(child, nohang) {
                Ok(None) => return Flow::Continue(Ok(None)),
                Ok(Some(reaped)) => reaped,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => match self.attend() {
                    Attention::End(outcome) => return Flow::End(outcome),
                    Attention::Guest => return Flow::Continue(Err(-errno::EINTR)),
                    Attention::None => continue,
                },
                Err(_) => return Flow::Continue(Err(-errno::ECHILD)),
            };
            match self.family.collect(pid, status) {
                Collected::Child(id, record, _) => return Flow::Continue(Ok(Some((id, record)))),
                Collected::Orphan(id, text) => report_line(format_args!("pvm {id} (orphan) {text}")),
                Collected::Other => {}
            }
            if child.is_some_and(|c| !self.family.has_child(c)) {
                return Flow::Continue(Err(-errno::ECHILD));
            }
        }
    }

    fn pause(&mut self) -> Flow<()> {
        loop {
            if self.guest_signals_pending() {
                tracing::debug!("pause: guest has pending signals");
                return Flow::Continue(());
            }
            tracing::debug!("pause: sleeping");
            signals::sleep_until(signals::attention);
            match self.attend() {
                Attention::End(outcome) => return Flow::End(outcome),
                Attention::Guest => return Flow::Continue(()),
                Attention::None => {}
            }
        }
    }

    fn pipe_create(&mut self, capacity: u64) -> Result<(u64, u64, u64), i64> {
        self.ipc.create_pipe(&self.vm, &mut self.space, capacity)
    }

    fn ipc_wait(&mut self, handle: u64, seq: u32) -> Flow<i64> {
        tracing::trace!(handle, "ipc: waiting on a pipe");
        self.blocking(|m| match m.ipc.wait(handle, seq, signals::attention)? {
            Woken::Notified => Ok(Some(0)),
            Woken::PeerGone => Ok(Some(-errno::EPIPE)),
            Woken::Interrupted => Ok(None),
        })
    }

    fn ipc_notify(&mut self, handle: u64) {
        self.ipc.notify(handle);
    }

    fn ipc_close(&mut self, handle: u64) {
        self.ipc.close(&self.vm, &mut self.space, handle);
    }

    fn sig_action(&mut self, sig: u64, handled: bool) {
        if handled {
            self.handled_signals |= 1 << sig;
        } else {
            self.handled_signals &= !(1 << sig);
        }
    }

    /// Only within the family (KylinX's rule); the signal travels as the host signal of the same
    /// number to the target's monitor.
    fn kill(&mut self, target: KillTarget, sig: i32) -> i64 {
        self.family.signal(target, sig)
    }

    fn open_named(&mut self, what: Named, key: &str, create: bool) -> Result<Opened, i64> {
        let dir = self.family.registry.dir().subdir("ipc").map_err(|e| {
            tracing::warn!(error = %e, "named objects unavailable");
            -errno::EIO
        })?;
        let registry = &self.family.registry;
        let alive = |key: u64| registry.family_alive(key);
        self.ipc.open_named(
            &self.vm,
            &mut self.space,
            &dir,
            self.family.ids.family_key,
            &alive,
            key.as_bytes(),
            create,
            what,
        )
    }

    fn mq_wait(&mut self, handle: u64, side: u64, seq: u32) -> Flow<i64> {
        tracing::trace!(handle, side, "ipc: waiting on a queue");
        self.blocking(
            |m| match m.ipc.queue_wait(handle, side, seq, signals::attention)? {
                true => Ok(Some(0)),
                false => Ok(None),
            },
        )
    }

    fn mq_wake(&mut self, handle: u64, side: u64) {
        self.ipc.queue_wake(handle, side);
    }

    fn dl_open(&mut self, name: &str) -> Result<DlInfo, (i64, String)> {
        let opened = self.libs.open(name).map_err(|e| (-e.errno(), e.to_string()));
        self.mem.set_extra(self.libs.extra());
        opened
    }

    fn dl_close(&mut self, handle: u64) -> i64 {
        // The parts leave the guest's view before their memory goes.
        let closed = self.libs.close(handle, |extra| self.mem.set_extra(extra));
        match closed {
            Ok(()) => 0,
            Err(e) => e,
        }
    }

    fn dl_update(&mut self, step: UpdateStep) -> Result<Option<DlInfo>, i64> {
        self.update_step(step)
    }

    /// Only a published port: a pVM with no network has none (`EACCES`).
    fn net_listen(&mut self, port: u16) -> Result<u64, i64> {
        let net = self.net.as_mut().ok_or(-errno::EACCES)?;
        let id = net.listen(port)?;
        Ok(self.ipc.add_listener(id))
    }

    /// Waits for the backend's answer (a signal interrupts it: one the guest handles makes it
    /// `EINTR`, one that ends the pVM ends it; the attempt's connection is then dropped).
    fn net_connect(&mut self, addr: std::net::SocketAddr) -> Flow<Result<Accepted, i64>> {
        if self.guest_signals_pending() {
            return Flow::Continue(Err(-errno::EINTR));
        }
        let got = match self.net.as_mut() {
            Some(n) => n.connect(addr, signals::attention),
            // No network: nothing is allowed.
            None => Err(-errno::EACCES),
        };
        match got {
            Ok(Some(conn)) => Flow::Continue(self.install(conn)),
            Ok(None) => match self.attend() {
                Attention::End(outcome) => Flow::End(outcome),
                _ => Flow::Continue(Err(-errno::EINTR)),
            },
            Err(e) => Flow::Continue(Err(e)),
        }
    }

    /// Readiness from the rings themselves (the monitor maps them) and, for listeners, from the
    /// connections the backend handed over; sleeps on the backend's channel (a connection
    /// comes) and the connections' wakeup eventfds (the backend woke this side), in slices
    /// that look at signals (and, for pipes between pVMs, which ring no eventfd, at the rings).
    fn net_poll(
        &mut self,
        items: &mut [pvm_abi::PollItem],
        timeout_ns: Option<u64>,
    ) -> Flow<Result<u64, i64>> {
        use pvm_abi::poll_events::{HUP, READ};
        /// Longest sleep between looks at signals.
        const SLICE_NS: u64 = 10_000_000;
        /// Longest sleep when a pipe between pVMs is polled (its peer rings no eventfd).
        const PIPE_SLICE_NS: u64 = 1_000_000;
        let deadline = timeout_ns.map(|t| sys::monotonic_ns().saturating_add(t));
        let mut watched = false;
        loop {
            if let Some(n) = self.net.as_mut() {
                if n.drain().is_err() {
                    self.net = None;
                }
            }
            let mut ready = 0;
            for it in items.iter_mut() {
                it.revents = match self.ipc.listener(it.handle) {
                    Some(_) if it.events & READ == 0 => 0,
                    Some(id) => match &self.net {
                        Some(n) if n.has_ready(id) => READ,
                        Some(_) => 0,
                        // The backend is gone: an accept reports it.
                        None => READ | HUP,
                    },
                    None => self.ipc.readiness(it.handle, it.events),
                };
                if it.revents != 0 {
                    ready += 1;
                }
            }
            let now = sys::monotonic_ns();
            if ready > 0 || deadline.is_some_and(|d| now >= d) {
                return Flow::Continue(Ok(ready));
            }
            if self.guest_signals_pending() {
                return Flow::Continue(Err(-errno::EINTR));
            }
            if !watched {
                watched = true;
                for it in items.iter().filter(|it| it.events & READ != 0) {
                    if let (Some(id), Some(n)) = (self.ipc.listener(it.handle), self.net.as_mut()) {
                        if n.watch(id).is_err() {
                            self.net = None;
                            break;
                        }
                    }
                }
            }
            let mut pipes = false;
            let slept = {
                let mut fds: Vec<std::os::fd::BorrowedFd<'_>> = Vec::new();
                if let Some(n) = &self.net {
                    fds.push(n.channel());
                }
                for it in items.iter() {
                    match self.ipc.wakeup(it.handle) {
                        Some(fd) => fds.push(fd.as_fd()),
                        None if self.ipc.listener(it.handle).is_none() => pipes = true,
                        None => {}
                    }
                }
                let slice = if pipes { PIPE_SLICE_NS } else { SLICE_NS };
                let left = deadline.map_or(slice, |d| d.saturating_sub(now).min(slice));
                let slept = sys::wait_any_readable(&fds, left);
                for fd in fds.iter().skip(usize::from(self.net.is_some())) {
                    sys::clear_doorbell(*fd);
                }
                slept
            };
            if slept.is_err() {
                match self.attend() {
                    Attention::End(outcome) => return Flow::End(outcome),
                    Attention::Guest => return Flow::Continue(Err(-errno::EINTR)),
                    Attention::None => {}
                }
            }
        }
    }

    /// Waits for the backend's answer (a signal interrupts it: one the guest handles makes it
    /// `EINTR`, one that ends the pVM ends it; the request stays for the next accept).
    fn net_accept(&mut self, handle: u64, nonblock: bool) -> Flow<Result<Accepted, i64>> {
        let Some(id) = self.ipc.listener(handle) else {
            return Flow::Continue(Err(-errno::EBADF));
        };
        tracing::trace!(listener = id, nonblock, "net: accept");
        loop {
            if !nonblock && self.guest_signals_pending() {
                return Flow::Continue(Err(-errno::EINTR));
            }
            let got = match self.net.as_mut() {
                Some(n) => n.accept(id, nonblock, signals::attention),
                None => Err(-errno::ENETDOWN),
            };
            match got {
                Ok(Some(conn)) => return Flow::Continue(self.install(conn)),
                Ok(None) => match self.attend() {
                    Attention::End(outcome) => return Flow::End(outcome),
                    Attention::Guest => return Flow::Continue(Err(-errno::EINTR)),
                    Attention::None => {}
                },
                Err(e) => return Flow::Continue(Err(e)),
            }
        }
    }
}
