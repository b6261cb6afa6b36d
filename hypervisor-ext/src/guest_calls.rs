//! Hypercalls for IPC and guest-visible signals.
use pvm_abi::{
    errno, layout, signal, GuestStatus, Hypercall, IpcWaitArgs, KillArgs, MqWaitArgs, NamedArgs, PipeArgs,
    SigActionArgs,
};

use crate::ipc::{Named, Woken};
use crate::monitor::{Attention, Monitor};
use crate::outcome::{Crash, Outcome};
use crate::registry::State;
use crate::signals;
use crate::vstate::memory::Access;

/// Signals a guest may handle.
const HANDLEABLE: [u64; 6] = [
    signal::HUP,
    signal::INT,
    signal::USR1,
    signal::USR2,
    signal::TERM,
    signal::CHLD,
];

fn bad(call: Hypercall) -> Crash {
    Crash::BadHypercall {
        addr: call.address(),
        reason: "argument struct outside guest memory",
    }
}

const PENDING_AT: u64 = layout::STATUS_ADDR + std::mem::offset_of!(GuestStatus, pending_signals) as u64;

impl Monitor {
    /// [`Hypercall::PipeCreate`].
    pub(crate) fn pipe_create(&mut self, arg: u64) -> Result<(), Crash> {
        let mut args: PipeArgs = self
            .mem
            .read_obj(arg, Access::Guest)
            .map_err(|_| bad(Hypercall::PipeCreate))?;
        match self.ipc.create_pipe(&self.vm, args.capacity) {
            Ok((r, w, ring)) => {
                args.read_handle = r;
                args.write_handle = w;
                args.ring = ring;
                args.result = 0;
            }
            Err(e) => args.result = e,
        }
        self.mem
            .write_obj(arg, &args, Access::Guest)
            .map_err(|_| bad(Hypercall::PipeCreate))
    }

    /// [`Hypercall::IpcWait`]: sleeps until the peer notifies or is gone, or a signal arrives.
    pub(crate) fn ipc_wait(&mut self, arg: u64) -> Result<Option<Outcome>, Crash> {
        let mut args: IpcWaitArgs = self
            .mem
            .read_obj(arg, Access::Guest)
            .map_err(|_| bad(Hypercall::IpcWait))?;
        args.result = loop {
            if self.guest_signals_pending() {
                // Delivered while the guest was spinning: its handlers run first.
                break -errno::EINTR;
            }
            match self.ipc.wait(args.handle, args.seq as u32, signals::attention) {
                Ok(Woken::Notified) => break 0,
                Ok(Woken::PeerGone) => break -errno::EPIPE,
                Err(e) => break e,
                Ok(Woken::Interrupted) => match self.attend() {
                    Attention::End(outcome) => return Ok(Some(outcome)),
                    Attention::Guest => break -errno::EINTR,
                    Attention::None => {}
                },
            }
        };
        self.mem
            .write_obj(arg, &args, Access::Guest)
            .map_err(|_| bad(Hypercall::IpcWait))?;
        Ok(None)
    }

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

    /// [`Hypercall::SigAction`].
    pub(crate) fn sig_action(&mut self, arg: u64) -> Result<(), Crash> {
        let mut args: SigActionArgs = self
            .mem
            .read_obj(arg, Access::Guest)
            .map_err(|_| bad(Hypercall::SigAction))?;
        args.result = if HANDLEABLE.contains(&args.signal) {
            if args.handled != 0 {
                self.handled_signals |= 1 << args.signal;
            } else {
                self.handled_signals &= !(1 << args.signal);
            }
            0
        } else {
            -errno::EINVAL
        };
        self.mem
            .write_obj(arg, &args, Access::Guest)
            .map_err(|_| bad(Hypercall::SigAction))
    }

    /// The directory of the family's named objects.
    fn named_dir(&self) -> std::path::PathBuf {
        self.family.registry.dir().join("ipc")
    }

    /// [`Hypercall::MqOpen`] and [`Hypercall::ShmOpen`].
    pub(crate) fn open_named(&mut self, arg: u64, call: Hypercall) -> Result<(), Crash> {
        let mut args: NamedArgs = self.mem.read_obj(arg, Access::Guest).map_err(|_| bad(call))?;
        let mut key = [0u8; pvm_abi::MAX_KEY_LEN as usize];
        let len = args.key_len.min(pvm_abi::MAX_KEY_LEN + 1);
        let read = if len as usize <= key.len() {
            self.mem
                .read_bytes(args.key, &mut key[..len as usize], Access::Guest)
                .ok()
        } else {
            None
        };
        let what = match call {
            Hypercall::MqOpen => Named::Queue {
                capacity: args.capacity,
                msg_size: args.msg_size,
            },
            _ => Named::Shm { size: args.capacity },
        };
        let opened = match read {
            None => Err(-errno::EINVAL),
            Some(()) => {
                let dir = self.named_dir();
                self.ipc.open_named(
                    &self.vm,
                    &dir,
                    self.family.ids.family,
                    &key[..len as usize],
                    args.create != 0,
                    what,
                )
            }
        };
        match opened {
            Ok(o) => {
                args.handle = o.handle;
                args.addr = o.addr;
                args.size = o.size;
                args.msg_size_out = o.msg_size;
                args.result = 0;
            }
            Err(e) => args.result = e,
        }
        self.mem
            .write_obj(arg, &args, Access::Guest)
            .map_err(|_| bad(call))
    }

    /// [`Hypercall::MqWait`].
    pub(crate) fn mq_wait(&mut self, arg: u64) -> Result<Option<Outcome>, Crash> {
        let mut args: MqWaitArgs = self
            .mem
            .read_obj(arg, Access::Guest)
            .map_err(|_| bad(Hypercall::MqWait))?;
        args.result = loop {
            if self.guest_signals_pending() {
                break -errno::EINTR;
            }
            match self
                .ipc
                .queue_wait(args.handle, args.side, args.seq as u32, signals::attention)
            {
                Ok(true) => break 0,
                Err(e) => break e,
                Ok(false) => match self.attend() {
                    Attention::End(outcome) => return Ok(Some(outcome)),
                    Attention::Guest => break -errno::EINTR,
                    Attention::None => {}
                },
            }
        };
        self.mem
            .write_obj(arg, &args, Access::Guest)
            .map_err(|_| bad(Hypercall::MqWait))?;
        Ok(None)
    }

    /// [`Hypercall::Kill`]: only within the family (KylinX's rule); the signal travels as the
    /// host signal of the same number to the target's monitor.
    pub(crate) fn kill(&mut self, arg: u64) -> Result<(), Crash> {
        let mut args: KillArgs = self
            .mem
            .read_obj(arg, Access::Guest)
            .map_err(|_| bad(Hypercall::Kill))?;
        args.result = self.kill_in_family(args.id, args.signal);
        self.mem
            .write_obj(arg, &args, Access::Guest)
            .map_err(|_| bad(Hypercall::Kill))
    }

    fn kill_in_family(&self, id: u64, sig: u64) -> i64 {
        if !HANDLEABLE.contains(&sig) && sig != signal::KILL {
            return -errno::EINVAL;
        }
        let Ok(id) = u32::try_from(id) else {
            return -errno::ESRCH;
        };
        let ids = self.family.ids;
        // Our own children and parent are of our family by construction (a child just forked
        // may not have registered yet); anyone else must show our family in the registry.
        let close_kin = id == ids.id || id == ids.parent || self.family.has_child(id);
        if !close_kin {
            match self.family.registry.read(id) {
                Some(e) if e.state == State::Exited => return -errno::ESRCH,
                Some(e) if e.family == ids.family => {}
                Some(_) => return -errno::EPERM,
                None => return -errno::ESRCH,
            }
        }
        // SAFETY: kill has no memory-safety preconditions; the target is a live pVM of our
        // family (or ourselves).
        if unsafe { libc::kill(id as i32, sig as i32) } != 0 {
            return -errno::ESRCH;
        }
        0
    }
}
