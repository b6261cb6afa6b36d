//! How a pVM ended, and how that maps to a host exit status.
use std::fmt;

/// Prints one line to stderr in a single write, so that the lines of a family's monitors,
/// which share stderr, never mix mid-line (`eprintln!` may write a line in pieces).
pub fn report_line(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut text = line.to_string();
    text.push('\n');
    let _ = std::io::stderr().write_all(text.as_bytes());
}

/// CPU exception vectors with names.
fn vector_name(vector: u64) -> &'static str {
    match vector {
        0 => "divide error",
        1 => "debug exception",
        2 => "NMI",
        3 => "breakpoint",
        4 => "overflow",
        5 => "bound range exceeded",
        6 => "invalid opcode",
        7 => "device not available",
        8 => "double fault",
        10 => "invalid TSS",
        11 => "segment not present",
        12 => "stack-segment fault",
        13 => "general protection fault",
        14 => "page fault",
        16 => "x87 floating-point error",
        17 => "alignment check",
        18 => "machine check",
        19 => "SIMD floating-point exception",
        _ => "CPU exception",
    }
}

/// A CPU exception the guest did not survive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exception {
    /// Vector (0 = #DE, 6 = #UD, 13 = #GP, 14 = #PF ...).
    pub vector: u64,
    /// Error code (0 where the CPU pushes none).
    pub error_code: u64,
    /// Faulting instruction.
    pub rip: u64,
    /// Stack pointer at the fault.
    pub rsp: u64,
    /// Faulting address (CR2), for page faults.
    pub fault_addr: u64,
    /// Whether the faulting address lies in the stack guard page.
    pub in_stack_guard: bool,
    /// Delivered through the IDT (false: the CPU gave up, a triple fault).
    pub via_idt: bool,
}

impl fmt::Display for Exception {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.via_idt {
            write!(f, "triple fault after ")?;
        }
        if self.vector == 14 {
            let access = if self.error_code & 0x10 != 0 {
                "executing"
            } else if self.error_code & 0x2 != 0 {
                "writing"
            } else {
                "reading"
            };
            if self.in_stack_guard {
                write!(
                    f,
                    "stack overflow (page fault {access} {:#x} in the stack guard page)",
                    self.fault_addr
                )?;
            } else {
                write!(f, "page fault {access} {:#x}", self.fault_addr)?;
            }
        } else if matches!(self.vector, 10..=13 | 17) && self.error_code != 0 {
            write!(
                f,
                "{} (error code {:#x})",
                vector_name(self.vector),
                self.error_code
            )?;
        } else {
            write!(f, "{}", vector_name(self.vector))?;
        }
        write!(f, " at rip {:#x}", self.rip)
    }
}

/// Why the monitor stopped a pVM that did not exit by itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Crash {
    /// A CPU exception.
    Exception(Exception),
    /// The guest made a hypercall the monitor does not accept.
    BadHypercall {
        /// Guest-physical address of the access.
        addr: u64,
        /// What was wrong.
        reason: &'static str,
    },
    /// KVM could not run the guest (e.g. an instruction its emulator does not handle).
    Internal {
        /// What KVM said.
        what: String,
    },
}

impl fmt::Display for Crash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Crash::Exception(e) => e.fmt(f),
            Crash::BadHypercall { addr, reason } => write!(f, "bad hypercall at {addr:#x}: {reason}"),
            Crash::Internal { what } => write!(f, "KVM could not run it: {what}"),
        }
    }
}

/// How a pVM ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The guest exited with this code.
    Exited(i32),
    /// The guest crashed.
    Crashed(Crash),
    /// The monitor was told to stop by a host signal.
    Signaled(i32),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Exited(code) => write!(f, "exited with status {}", code & 0xff),
            Outcome::Crashed(crash) => write!(f, "crashed: {crash}"),
            Outcome::Signaled(sig) => write!(f, "killed by signal {sig}"),
        }
    }
}

impl Outcome {
    /// The host exit status, Unix-style: the exit code's low 8 bits; for a crash 128 + the
    /// signal a Linux process would have died of (SIGFPE for #DE, SIGILL for #UD, SIGTRAP for
    /// breakpoints, SIGBUS for alignment, SIGSEGV otherwise, SIGABRT for bad hypercalls and
    /// KVM errors); for a stop signal 128 + the signal.
    pub fn exit_status(&self) -> i32 {
        match self {
            Outcome::Exited(code) => code & 0xff,
            Outcome::Crashed(Crash::Exception(e)) => {
                128 + match e.vector {
                    0 | 16 | 19 => libc::SIGFPE,
                    6 => libc::SIGILL,
                    1 | 3 => libc::SIGTRAP,
                    17 => libc::SIGBUS,
                    _ => libc::SIGSEGV,
                }
            }
            Outcome::Crashed(_) => 128 + libc::SIGABRT,
            Outcome::Signaled(sig) => 128 + sig,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pf(error_code: u64, addr: u64, guard: bool) -> Exception {
        Exception {
            vector: 14,
            error_code,
            rip: 0x201a3c,
            rsp: 0,
            fault_addr: addr,
            in_stack_guard: guard,
            via_idt: true,
        }
    }

    #[test]
    fn messages_name_the_fault() {
        assert_eq!(
            pf(0x6, 0, false).to_string(),
            "page fault writing 0x0 at rip 0x201a3c"
        );
        assert_eq!(
            pf(0x4, 0x10, false).to_string(),
            "page fault reading 0x10 at rip 0x201a3c"
        );
        assert!(pf(0x6, 0x3eff000, true).to_string().starts_with("stack overflow"));
        let ud = Exception {
            vector: 6,
            error_code: 0,
            ..pf(0, 0, false)
        };
        assert_eq!(ud.to_string(), "invalid opcode at rip 0x201a3c");
    }

    #[test]
    fn exit_status_is_unix_like() {
        assert_eq!(Outcome::Exited(3).exit_status(), 3);
        assert_eq!(Outcome::Exited(256 + 7).exit_status(), 7);
        assert_eq!(
            Outcome::Crashed(Crash::Exception(pf(6, 0, false))).exit_status(),
            139
        );
        let de = Exception {
            vector: 0,
            ..pf(0, 0, false)
        };
        assert_eq!(Outcome::Crashed(Crash::Exception(de)).exit_status(), 136);
        assert_eq!(Outcome::Signaled(libc::SIGINT).exit_status(), 130);
    }
}
