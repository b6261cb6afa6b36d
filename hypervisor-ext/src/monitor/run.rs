//! The vCPU loop: runs the guest, decodes its exits into hypercalls, acts on host signals and
//! pause requests, and turns faults into crash reports.
use std::time::Instant;

use kvm_bindings::kvm_vcpu_events;
use kvm_ioctls::VcpuExit;

use super::{monotonic_ns, Attention, Monitor, MonitorError, BENCH_CHILD_READY};
use crate::control::{Request, Response};
use crate::hypercall;
use crate::outcome::{Crash, Exception, Outcome};
use crate::registry::State;
use crate::signals;
use crate::vstate::KvmError;

impl Monitor {
    pub(super) fn run_loop(&mut self) -> Result<Outcome, MonitorError> {
        // Everything the monitor logs carries its pVM's id (a forked child starts its own span).
        let mut id = self.family.ids.id;
        let mut span = tracing::info_span!("pvm", id, family = self.family.ids.family).entered();
        loop {
            if self.family.ids.id != id {
                id = self.family.ids.id;
                drop(span);
                span = tracing::info_span!("pvm", id, family = self.family.ids.family).entered();
                tracing::debug!(parent = self.family.ids.parent, "forked child running");
            }
            // Clear the kick before looking at the signals, never after: a signal that comes
            // later sets it again and KVM_RUN returns at once; one handled here (often while the
            // monitor slept in a hypercall) costs no extra trip through KVM_RUN.
            self.vcpu.set_kvm_immediate_exit(0);
            if let Attention::End(outcome) = self.attend() {
                return Ok(outcome);
            }
            if let Some(rip) = self.take_escape() {
                self.redirect_vcpu(rip);
            }
            let call = match self.vcpu.run() {
                Ok(VcpuExit::MmioWrite(addr, data)) => hypercall::decode(addr, data),
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    data.fill(0xff);
                    Err(Crash::BadHypercall {
                        addr,
                        reason: hypercall::unbacked(addr).unwrap_or("hypercalls are stores, not loads"),
                    })
                }
                Ok(VcpuExit::Shutdown) => return Ok(Outcome::Crashed(self.triple_fault()?)),
                Ok(VcpuExit::InternalError) => {
                    let what = self.internal_error();
                    return Ok(Outcome::Crashed(Crash::Internal { what }));
                }
                Ok(VcpuExit::FailEntry(reason, _)) => {
                    let what = format!("VM entry failed (hardware reason {reason:#x})");
                    return Ok(Outcome::Crashed(Crash::Internal { what }));
                }
                Ok(VcpuExit::Intr) => continue,
                Ok(other) => return Err(MonitorError::UnexpectedExit(format!("{other:?}"))),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
                // KVM found no host memory behind a guest access: the guest touched an empty
                // part of a library window (its page tables map the windows whole).
                Err(e) if e.errno() == libc::EFAULT => {
                    let rip = self.vcpu.get_regs().map(|r| r.rip).unwrap_or(0);
                    let what = format!(
                        "access at rip {rip:#x} to guest memory the host does not back (an empty part of a library window)"
                    );
                    return Ok(Outcome::Crashed(Crash::Internal { what }));
                }
                Err(e) => return Err(MonitorError::Run(e)),
            };
            if self.times.first_hypercall.is_none() {
                self.times.first_hypercall = Some(Instant::now());
                tracing::debug!(
                    after_us = self.times.create_vm.elapsed().as_micros() as u64,
                    "boot: first hypercall (since KVM_CREATE_VM)"
                );
            }
            if let Some(t0) = self.fork_started_ns.take() {
                self.bench_record(BENCH_CHILD_READY, t0, monotonic_ns());
            }
            let call = match call {
                Ok(call) => call,
                Err(crash) => return Ok(Outcome::Crashed(crash)),
            };
            tracing::trace!(kind = ?call.nr, arg = format_args!("{:#x}", call.arg), "hypercall");
            match hypercall::dispatch(self, call) {
                Ok(None) => {}
                Ok(Some(outcome)) => return Ok(outcome),
                Err(crash) => return Ok(Outcome::Crashed(crash)),
            }
        }
    }

    /// `pvmctl pause`: the vCPU stays out of the guest until `pvmctl resume` (or a signal).
    fn pause(&mut self) {
        self.show_state(State::Paused);
        signals::sleep_until(|| !signals::pause_requested() || signals::attention_without_pause());
        // Woken for something else (a control connection, a signal), it is still paused: the
        // entry goes on saying so while that is served (a `resume` reads it).
        if !signals::pause_requested() {
            self.show_state(State::Running);
        }
    }

    /// Writes `state` into this pVM's registry entry (what `ps` shows).
    fn show_state(&mut self, state: State) {
        if let Some(entry) = &mut self.family.entry {
            let _ = entry.set_state(state);
        }
    }

    /// Acts on the signals and pause requests that arrived: ends the pVM (a signal whose
    /// default action ends it), gives handled signals to the guest, or pauses.
    pub(crate) fn attend(&mut self) -> Attention {
        let mut delivered = false;
        loop {
            if signals::take_control() {
                self.serve_control(false);
                // A kick may be the update's (its helper is done, or a deadline passed).
                delivered |= self.poll_update();
            }
            let mask = signals::take();
            if mask != 0 {
                tracing::debug!(
                    mask = format_args!("{mask:#x}"),
                    handled = format_args!("{:#x}", self.handled_signals),
                    "signals"
                );
            }
            let mut guest = 0u64;
            // Only the bits set (most calls, one per exit, see none).
            let mut bits = mask;
            while bits != 0 {
                let sig = bits.trailing_zeros() as i32;
                bits &= bits - 1;
                if self.handled_signals & (1 << sig) != 0 {
                    guest |= 1 << sig;
                } else if sig != libc::SIGCHLD {
                    return Attention::End(Outcome::Signaled(sig));
                }
            }
            if guest != 0 {
                self.deliver_to_guest(guest);
                delivered = true;
            }
            if signals::pause_requested() {
                self.pause();
                continue;
            }
            return if delivered {
                Attention::Guest
            } else {
                Attention::None
            };
        }
    }

    /// Serves the operator's pending control requests (`ended`: the guest is gone, only its
    /// status is left to tell). A pause takes effect when the caller goes on attending.
    pub(super) fn serve_control(&mut self, ended: bool) {
        let Some(control) = self.control.take() else {
            return;
        };
        let id = self.family.ids.id;
        control.serve(|incoming| {
            let response = match (&incoming.request, ended) {
                (Request::Status, true) => Response::Done {
                    id,
                    state: State::Exited,
                },
                (_, true) => Response::Error {
                    message: format!("pVM {id} has ended"),
                },
                (Request::Status, false) => Response::Done {
                    id,
                    state: if signals::pause_requested() {
                        State::Paused
                    } else {
                        State::Running
                    },
                },
                // The entry says so before the answer: `ps` (or a `resume`) right after the
                // command sees it. The vCPU is out of the guest now and pauses before it
                // enters again.
                (Request::Pause, false) => {
                    signals::request_pause(true);
                    self.show_state(State::Paused);
                    Response::Done {
                        id,
                        state: State::Paused,
                    }
                }
                (Request::Resume, false) => {
                    signals::request_pause(false);
                    self.show_state(State::Running);
                    Response::Done {
                        id,
                        state: State::Running,
                    }
                }
                (Request::Libraries, false) => Response::Libraries {
                    id,
                    libraries: self.libs.list(),
                },
                (Request::Update { .. }, false) => return self.start_update(incoming),
                (Request::Decide { .. }, false) => Response::Error {
                    message: format!("no update of pVM {id} waits for a decision"),
                },
            };
            incoming.answer(&response);
        });
        self.control = Some(control);
    }

    /// A triple fault: the exception could not be delivered (e.g. the ring-0 stack itself was
    /// unusable). The vCPU's registers still tell where it happened.
    fn triple_fault(&self) -> Result<Crash, MonitorError> {
        let regs = self.vcpu.get_regs().map_err(KvmError::ioctl("KVM_GET_REGS"))?;
        let sregs = self.vcpu.get_sregs().map_err(KvmError::ioctl("KVM_GET_SREGS"))?;
        let events: kvm_vcpu_events = self.vcpu.get_vcpu_events().unwrap_or_default();
        let vector = u64::from(events.exception.nr);
        let error_code = u64::from(events.exception.error_code);
        Ok(Crash::Exception(Exception {
            vector,
            error_code,
            rip: regs.rip,
            rsp: regs.rsp,
            fault_addr: sregs.cr2,
            in_stack_guard: vector == 14 && self.in_stack_guard(sregs.cr2),
            via_idt: false,
        }))
    }

    fn internal_error(&mut self) -> String {
        let run = self.vcpu.get_kvm_run();
        // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is the active field.
        let suberror = unsafe { run.__bindgen_anon_1.internal.suberror };
        let rip = self.vcpu.get_regs().map(|r| r.rip).unwrap_or(0);
        format!("KVM internal error, suberror {suberror}, at rip {rip:#x}")
    }
}
