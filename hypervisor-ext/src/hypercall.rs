//! Hypercall handlers. Each reads its argument struct once through the checked translation,
//! validates every field, and writes OUT fields back; nothing here trusts guest memory.
use pvm_abi::{errno, fd, layout, ClockArgs, ExceptionFrame, ExitArgs, Hypercall, WriteArgs};

use crate::outcome::Crash;
use crate::vstate::memory::{Access, GuestMemory};

/// Largest console write served by one hypercall; the guest loops for more.
pub const MAX_WRITE: u64 = 64 * 1024;

/// A decoded hypercall: the number and its 8-byte argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Call {
    /// Which hypercall.
    pub nr: Hypercall,
    /// The stored value (usually the guest address of the argument struct).
    pub arg: u64,
}

/// Decodes an MMIO store at guest-physical `addr` with `data` into a hypercall.
pub fn decode(addr: u64, data: &[u8]) -> Result<Call, Crash> {
    if (layout::IPC_BASE..layout::IPC_BASE + layout::IPC_SIZE).contains(&addr) {
        return Err(Crash::BadHypercall {
            addr,
            reason: "access to a part of the IPC window no region backs",
        });
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

/// [`Hypercall::Write`]: copies guest bytes to the host's stdout or stderr.
pub fn write(mem: &GuestMemory, arg: u64) -> Result<(), Crash> {
    let bad_args = Crash::BadHypercall {
        addr: Hypercall::Write.address(),
        reason: "argument struct outside guest memory",
    };
    let mut args: WriteArgs = mem.read_obj(arg, Access::Guest).map_err(|_| bad_args.clone())?;
    args.result = write_to_host(mem, &args);
    mem.write_obj(arg, &args, Access::Guest).map_err(|_| bad_args)
}

fn write_to_host(mem: &GuestMemory, args: &WriteArgs) -> i64 {
    let host_fd = match args.fd {
        fd::STDOUT => libc::STDOUT_FILENO,
        fd::STDERR => libc::STDERR_FILENO,
        _ => return -errno::EINVAL,
    };
    let len = args.len.min(MAX_WRITE);
    let Ok(src) = mem.translate(args.buf, len, Access::Guest) else {
        return -errno::EFAULT;
    };
    let mut done = 0usize;
    while done < len as usize {
        // SAFETY: `src` is valid for `len` bytes (checked by translate); the vCPU is stopped
        // while the monitor handles its hypercall, so the bytes do not change under the call.
        let n = unsafe { libc::write(host_fd, src.as_ptr().add(done).cast(), len as usize - done) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return if done > 0 { done as i64 } else { -errno::EIO };
        }
        done += n as usize;
    }
    done as i64
}

/// [`Hypercall::Clock`]: the host's monotonic clock.
pub fn clock(mem: &GuestMemory, arg: u64, nanos: u64) -> Result<(), Crash> {
    mem.write_obj(arg, &ClockArgs { nanos }, Access::Guest)
        .map_err(|_| Crash::BadHypercall {
            addr: Hypercall::Clock.address(),
            reason: "argument struct outside guest memory",
        })
}

/// [`Hypercall::Exit`]: the exit code.
pub fn exit(mem: &GuestMemory, arg: u64) -> Result<i32, Crash> {
    let args: ExitArgs = mem
        .read_obj(arg, Access::Guest)
        .map_err(|_| Crash::BadHypercall {
            addr: Hypercall::Exit.address(),
            reason: "argument struct outside guest memory",
        })?;
    Ok(args.code as i32)
}

/// [`Hypercall::Exception`]: the frame a ring-0 stub built. Only frames on the monitor's ring-0
/// stacks are accepted, so guest code cannot make the monitor read elsewhere.
pub fn exception_frame(mem: &GuestMemory, arg: u64) -> Result<ExceptionFrame, Crash> {
    let bad = Crash::BadHypercall {
        addr: Hypercall::Exception.address(),
        reason: "exception frame not on a ring-0 stack",
    };
    let lo = layout::RING0_STACK_ADDR;
    let hi = layout::DF_STACK_ADDR + layout::DF_STACK_SIZE;
    let size = size_of::<ExceptionFrame>() as u64;
    if arg < lo || arg.checked_add(size).is_none_or(|end| end > hi) {
        return Err(bad);
    }
    mem.read_obj(arg, Access::Monitor).map_err(|_| bad)
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

    #[test]
    fn hostile_write_arguments_get_errors_not_crashes() {
        let mem = GuestMemory::new(layout::MIN_MEM_SIZE).unwrap();
        let at = layout::IMAGE_BASE;
        for (fd, buf, len, want) in [
            (fd::STDOUT, 0, 16, -errno::EFAULT),
            (fd::STDOUT, layout::IDT_ADDR, 16, -errno::EFAULT),
            (fd::STDOUT, u64::MAX - 3, 16, -errno::EFAULT),
            (fd::STDOUT, mem.size() - 16, u64::MAX, -errno::EFAULT),
            (99, at, 1, -errno::EINVAL),
            (fd::STDOUT, at, 0, 0),
        ] {
            mem.write_obj(
                at,
                &WriteArgs {
                    fd,
                    buf,
                    len,
                    result: 0,
                },
                Access::Guest,
            )
            .unwrap();
            write(&mem, at).unwrap();
            let back: WriteArgs = mem.read_obj(at, Access::Guest).unwrap();
            assert_eq!(back.result, want, "fd {fd} buf {buf:#x} len {len:#x}");
        }
        assert!(write(&mem, layout::GDT_ADDR).is_err());
        assert!(write(&mem, mem.size() - 8).is_err());
        assert!(exception_frame(&mem, at).is_err());
        assert!(exception_frame(&mem, layout::RING0_STACK_ADDR).is_ok());
    }
}
