//! The pvm ABI: the one definition of the contract between a pVM guest and its monitor.
//!
//! Both sides compile this crate: the guest runtime (`pvm`, freestanding) and the host monitor
//! (`hypervisor-ext`). It holds the guest memory layout, the hypercall numbers and their argument
//! structs, the boot-info block and the ABI version a guest image carries in an ELF note.
//!
//! # Hypercall convention
//! A hypercall is one 8-byte store to `HYPERCALL_VA + 8 * nr` (an unbacked guest-physical page,
//! so the store exits to the monitor as MMIO on PVM and on hardware KVM alike). The stored value
//! is the guest address of the call's argument struct (or, where the call's doc says so, the
//! value itself). Every field of an argument struct is marked IN (read by the monitor) or OUT
//! (written by the monitor before the guest resumes). The monitor reads the struct once through
//! its checked translation and never trusts any field.
#![no_std]

/// Version of this ABI. A guest image carries it in a `.note.pvm` ELF note; the monitor refuses
/// an image without the note or with another version.
pub const ABI_VERSION: u32 = 10;

/// Owner name of the pvm ELF note (with its terminating NUL, as ELF notes store it).
pub const NOTE_NAME: &str = "pvm";
/// Note type of the ABI-version note; its descriptor is the `u32` ABI version, little-endian.
pub const NOTE_TYPE_ABI_VERSION: u32 = 1;

/// A plain-data type: `#[repr(C)]`, every bit pattern valid, no padding, no pointers the reader
/// would follow. The monitor copies such structs out of and into guest memory.
///
/// # Safety
/// Implement only for `#[repr(C)]` structs whose fields are all integers (or arrays of them)
/// with no padding bytes.
pub unsafe trait Plain: Copy + Default {}

// SAFETY: integers are plain data.
unsafe impl Plain for u64 {}
// SAFETY: integers are plain data.
unsafe impl Plain for i64 {}
// SAFETY: integers are plain data.
unsafe impl Plain for u32 {}

/// Guest memory layout. Guest virtual addresses equal guest physical addresses for guest RAM
/// (an identity map), except the hypercall window.
/// How a benchmark guest hands its raw samples to `pvmctl bench` on its console: lines of
/// [`TAG`](samples::TAG) followed by at most [`PER_LINE`](samples::PER_LINE) decimal
/// nanosecond values separated by spaces, printed after the guest's summary line (so printing
/// costs nothing measured).
pub mod samples {
    /// The first word of a samples line.
    pub const TAG: &str = "pvm-samples-ns:";
    /// Values per line (one console write each).
    pub const PER_LINE: usize = 512;

    /// The values of `line` if it is a samples line; `None` for any other line, or if a value
    /// is not a decimal number.
    pub fn parse(line: &str, mut each: impl FnMut(u64)) -> Option<()> {
        let rest = line.strip_prefix(TAG)?;
        for word in rest.split_ascii_whitespace() {
            each(word.parse().ok()?);
        }
        Some(())
    }
}

pub mod layout {
    /// Size of a small page.
    pub const PAGE_SIZE: u64 = 0x1000;
    /// Size of a large page (one page-directory entry).
    pub const LARGE_PAGE_SIZE: u64 = 0x20_0000;

    /// The hypercall window (one page, user-accessible, never backed by RAM). It sits at the top
    /// of the lower canonical half; guest-physically it is page 0, which no memory slot covers.
    pub const HYPERCALL_VA: u64 = 0x7fff_ffff_f000;
    /// Guest-physical address of the hypercall window.
    pub const HYPERCALL_GPA: u64 = 0;

    /// Start of the monitor-reserved area (GDT, TSS, IDT, exception stubs, ring-0 stacks,
    /// boot info, page tables). Page 0 stays unmapped so that null dereferences fault.
    pub const RESERVED_START: u64 = 0x1000;
    /// GDT and TSS (supervisor only).
    pub const GDT_ADDR: u64 = 0x1000;
    /// Offset of the TSS inside the GDT page.
    pub const TSS_OFFSET: u64 = 0x800;
    /// IDT (supervisor only).
    pub const IDT_ADDR: u64 = 0x2000;
    /// Ring-0 exception stubs (supervisor, read + execute).
    pub const STUBS_ADDR: u64 = 0x3000;
    /// Ring-0 stack for exceptions raised at CPL3 (TSS.RSP0): grows down from its top.
    pub const RING0_STACK_ADDR: u64 = 0x4000;
    /// Size of the ring-0 stack.
    pub const RING0_STACK_SIZE: u64 = 0x3000;
    /// The guest status page (user read-write): a [`crate::GuestStatus`].
    pub const STATUS_ADDR: u64 = 0x8000;
    /// Separate stack for #DF (TSS.IST1), so a bad RSP0 can still be reported.
    pub const DF_STACK_ADDR: u64 = 0x7000;
    /// Size of the #DF stack.
    pub const DF_STACK_SIZE: u64 = 0x1000;
    /// Boot info block followed by the argument strings (user, read-only).
    pub const BOOT_INFO_ADDR: u64 = 0x10000;
    /// Bytes available for the boot info block and the arguments.
    pub const BOOT_INFO_SIZE: u64 = 0x10000;
    /// Page tables, allocated by the monitor from here up to `IMAGE_BASE` (never mapped).
    pub const PAGE_TABLES_ADDR: u64 = 0x20000;
    /// Lowest address a guest image may load at; everything below is reserved.
    pub const IMAGE_BASE: u64 = 0x20_0000;

    /// Size of the guest's main stack, at the top of guest RAM.
    pub const STACK_SIZE: u64 = 0x10_0000;
    /// An unmapped guard page sits right below the stack, so an overflow faults.
    pub const STACK_GUARD_SIZE: u64 = PAGE_SIZE;

    /// Smallest guest RAM the monitor accepts: the reserved area, 2 MiB for the image and heap,
    /// the guard page and the stack, rounded to large pages.
    pub const MIN_MEM_SIZE: u64 = 4 * LARGE_PAGE_SIZE;
    /// Largest guest RAM the monitor accepts.
    pub const MAX_MEM_SIZE: u64 = 64 << 30;

    /// The IPC window: shared regions (pipes, queues, shared memory) are mapped here, each in
    /// its own memory slot. The page tables map the whole window at boot; a part no region
    /// backs exits to the monitor like any unbacked address.
    pub const IPC_BASE: u64 = MAX_MEM_SIZE;
    /// Size of the IPC window.
    pub const IPC_SIZE: u64 = 1 << 30;
    /// Each region starts at a multiple of this in the window (and is at most this large).
    pub const IPC_SLOT_SIZE: u64 = LARGE_PAGE_SIZE;

    /// The library code window: a loaded library's read-only and executable segments (and its
    /// RELRO) at `LIB_CODE_BASE + i * LIB_SLOT_SIZE`, user read + execute, never writable.
    pub const LIB_CODE_BASE: u64 = IPC_BASE + IPC_SIZE;
    /// Size of the library code window (and of the data window).
    pub const LIB_WINDOW_SIZE: u64 = 1 << 30;
    /// The library data window: library `i`'s writable segment at `LIB_DATA_BASE + i *
    /// LIB_SLOT_SIZE`, user read + write, not executable. Libraries are linked with their
    /// writable segment this far above their code (`pvmlib.ld`), so code reaches data
    /// RIP-relatively.
    pub const LIB_DATA_BASE: u64 = LIB_CODE_BASE + LIB_DATA_OFFSET;
    /// Distance from a library's code to its data.
    pub const LIB_DATA_OFFSET: u64 = LIB_WINDOW_SIZE;
    /// Room of one library in each window.
    pub const LIB_SLOT_SIZE: u64 = 16 << 20;
    /// Most libraries one pVM holds.
    pub const MAX_LIBS: u64 = LIB_WINDOW_SIZE / LIB_SLOT_SIZE;

    // The layout is checked at compile time.
    const _: () = assert!(DF_STACK_ADDR + DF_STACK_SIZE <= STATUS_ADDR);
    const _: () = assert!(STATUS_ADDR + PAGE_SIZE <= BOOT_INFO_ADDR);
    const _: () = assert!(BOOT_INFO_ADDR + BOOT_INFO_SIZE <= PAGE_TABLES_ADDR);
    const _: () = assert!(PAGE_TABLES_ADDR < IMAGE_BASE);
    const _: () = assert!(MIN_MEM_SIZE >= IMAGE_BASE + LARGE_PAGE_SIZE + STACK_SIZE + STACK_GUARD_SIZE);
    const _: () = assert!(LIB_DATA_BASE + LIB_WINDOW_SIZE <= HYPERCALL_VA);
    const _: () = assert!(LIB_SLOT_SIZE.is_multiple_of(LARGE_PAGE_SIZE));
}

const _: () = assert!(core::mem::size_of::<BootInfo>() == 104);

/// Hypercall numbers.
#[repr(u64)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hypercall {
    /// Write bytes to the console. Argument: the address of a [`WriteArgs`].
    Write = 1,
    /// Terminate the pVM. Argument: the address of an [`ExitArgs`]. Does not return.
    Exit = 2,
    /// Report a CPU exception. Issued by the monitor's ring-0 stubs, never by guest code.
    /// Argument: the address of the [`ExceptionFrame`] on the ring-0 stack. Does not return.
    Exception = 3,
    /// Clone this pVM. Argument: the address of a [`ForkArgs`]. Returns twice.
    Fork = 4,
    /// Wait for a child pVM to end. Argument: the address of a [`WaitArgs`].
    Wait = 5,
    /// Read the host's monotonic clock. Argument: the address of a [`ClockArgs`].
    Clock = 6,
    /// Sleep until a signal arrives (nothing to do but be killed, for now). Argument: ignored.
    Pause = 7,
    /// Create a pipe. Argument: the address of a [`PipeArgs`].
    PipeCreate = 8,
    /// Sleep until the peer of a pipe handle signals progress (its futex word in the ring moves
    /// from `seq`), or is gone. Argument: the address of an [`IpcWaitArgs`].
    IpcWait = 9,
    /// Wake the peer of an IPC handle (it sleeps in [`Hypercall::IpcWait`]). Argument: the
    /// handle itself.
    IpcNotify = 10,
    /// Close an IPC handle. Argument: the handle itself.
    IpcClose = 11,
    /// Handle a signal or restore its default action. Argument: the address of a
    /// [`SigActionArgs`].
    SigAction = 12,
    /// Send a signal to a pVM of the same family. Argument: the address of a [`KillArgs`].
    Kill = 13,
    /// Open (or create) a named message queue of the family. Argument: the address of a
    /// [`NamedArgs`].
    MqOpen = 14,
    /// Sleep until a queue's futex word changes (or a signal). Argument: the address of an
    /// [`MqWaitArgs`].
    MqWait = 15,
    /// Wake the sleepers of one side of a queue. Argument: `handle << 1 | side`.
    MqWake = 16,
    /// Open (or create) a named shared-memory region of the family. Argument: the address of
    /// a [`NamedArgs`].
    ShmOpen = 17,
    /// Load (or take another reference to) a library the operator allows. Argument: the
    /// address of a [`DlOpenArgs`].
    DlOpen = 18,
    /// Drop a reference to a loaded library (unloaded at the last). Argument: the address of a
    /// [`DlCloseArgs`].
    DlClose = 19,
    /// One step of a library update the monitor asked for (see [`GuestStatus::dl_update`]).
    /// Argument: the address of a [`DlUpdateArgs`].
    DlUpdate = 20,
    /// Listen on a TCP port the operator published (`pvmctl run --publish`). Argument: the
    /// address of a [`NetListenArgs`].
    NetListen = 21,
    /// Take the next connection a listener's clients made. Argument: the address of a
    /// [`NetAcceptArgs`].
    NetAccept = 22,
    /// Wait until one of a set of network handles (listeners, connection ends; pipe ends too) is
    /// ready, or a timeout. Argument: the address of a [`NetPollArgs`].
    NetPoll = 23,
    /// Connect to a TCP server the operator allows (`pvmctl run --connect`). Argument: the
    /// address of a [`NetConnectArgs`].
    NetConnect = 24,
}

impl Hypercall {
    /// All hypercalls, for decoding.
    pub const ALL: [Hypercall; 24] = [
        Hypercall::Write,
        Hypercall::Exit,
        Hypercall::Exception,
        Hypercall::Fork,
        Hypercall::Wait,
        Hypercall::Clock,
        Hypercall::Pause,
        Hypercall::PipeCreate,
        Hypercall::IpcWait,
        Hypercall::IpcNotify,
        Hypercall::IpcClose,
        Hypercall::SigAction,
        Hypercall::Kill,
        Hypercall::MqOpen,
        Hypercall::MqWait,
        Hypercall::MqWake,
        Hypercall::ShmOpen,
        Hypercall::DlOpen,
        Hypercall::DlClose,
        Hypercall::DlUpdate,
        Hypercall::NetListen,
        Hypercall::NetAccept,
        Hypercall::NetPoll,
        Hypercall::NetConnect,
    ];

    /// Size of the argument struct the call's argument points to; None when the argument is a
    /// value (a handle) or ignored. The one place that says which struct each call takes.
    pub const fn arg_size(self) -> Option<usize> {
        use core::mem::size_of;
        Some(match self {
            Hypercall::Write => size_of::<WriteArgs>(),
            Hypercall::Exit => size_of::<ExitArgs>(),
            Hypercall::Exception => size_of::<ExceptionFrame>(),
            Hypercall::Fork => size_of::<ForkArgs>(),
            Hypercall::Wait => size_of::<WaitArgs>(),
            Hypercall::Clock => size_of::<ClockArgs>(),
            Hypercall::PipeCreate => size_of::<PipeArgs>(),
            Hypercall::IpcWait => size_of::<IpcWaitArgs>(),
            Hypercall::SigAction => size_of::<SigActionArgs>(),
            Hypercall::Kill => size_of::<KillArgs>(),
            Hypercall::MqOpen | Hypercall::ShmOpen => size_of::<NamedArgs>(),
            Hypercall::MqWait => size_of::<MqWaitArgs>(),
            Hypercall::DlOpen => size_of::<DlOpenArgs>(),
            Hypercall::DlClose => size_of::<DlCloseArgs>(),
            Hypercall::DlUpdate => size_of::<DlUpdateArgs>(),
            Hypercall::NetListen => size_of::<NetListenArgs>(),
            Hypercall::NetAccept => size_of::<NetAcceptArgs>(),
            Hypercall::NetPoll => size_of::<NetPollArgs>(),
            Hypercall::NetConnect => size_of::<NetConnectArgs>(),
            Hypercall::Pause | Hypercall::IpcNotify | Hypercall::IpcClose | Hypercall::MqWake => return None,
        })
    }

    /// Decodes a hypercall number.
    pub fn from_nr(nr: u64) -> Option<Hypercall> {
        Self::ALL.into_iter().find(|h| *h as u64 == nr)
    }

    /// Guest virtual address a guest stores to in order to make this hypercall.
    pub const fn address(self) -> u64 {
        layout::HYPERCALL_VA + 8 * self as u64
    }
}

/// Error codes a hypercall reports in its `result` field (negated, as Linux does).
pub mod errno {
    /// An address or length the guest passed is outside its memory.
    pub const EFAULT: i64 = 14;
    /// An argument is invalid (unknown descriptor, bad flag...).
    pub const EINVAL: i64 = 22;
    /// The host failed to perform the operation.
    pub const EIO: i64 = 5;
    /// A limit was reached (pVMs per family or per host, IPC regions); try again later. For a
    /// non-blocking IPC call: it would block.
    pub const EAGAIN: i64 = 11;
    /// The sleep was interrupted by a signal the guest handles.
    pub const EINTR: i64 = 4;
    /// The peer of an IPC handle is gone (no writer left for a reader: end of file; no reader
    /// left for a writer: broken pipe).
    pub const EPIPE: i64 = 32;
    /// Not allowed (a pVM of another family).
    pub const EPERM: i64 = 1;
    /// No such pVM.
    pub const ESRCH: i64 = 3;
    /// Bad handle.
    pub const EBADF: i64 = 9;
    /// No such named object.
    pub const ENOENT: i64 = 2;
    /// The host is out of memory.
    pub const ENOMEM: i64 = 12;
    /// No such child pVM (or none at all) to wait for.
    pub const ECHILD: i64 = 10;
    /// A library is not trusted (its digest is not in the operator's trust store).
    pub const EACCES: i64 = 13;
    /// A library is malformed or refused (W+X, TLS, text relocations, unresolved symbols...).
    pub const ENOEXEC: i64 = 8;
    /// A library is in use (another library imports from it, or an update is under way).
    pub const EBUSY: i64 = 16;
    /// The pVM's network backend is gone (or the pVM has no network).
    pub const ENETDOWN: i64 = 100;
    /// A listener already exists for that port in this pVM.
    pub const EADDRINUSE: i64 = 98;
    /// Nothing listens at the address connected to.
    pub const ECONNREFUSED: i64 = 111;
    /// The connection attempt timed out.
    pub const ETIMEDOUT: i64 = 110;
    /// No route to the address.
    pub const ENETUNREACH: i64 = 101;
}

/// Console stream a [`WriteArgs`] targets.
pub mod fd {
    /// Standard output of the pVM.
    pub const STDOUT: u64 = 1;
    /// Standard error of the pVM.
    pub const STDERR: u64 = 2;
}

/// Arguments of [`Hypercall::Write`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct WriteArgs {
    /// IN: [`fd::STDOUT`] or [`fd::STDERR`].
    pub fd: u64,
    /// IN: guest address of the bytes.
    pub buf: u64,
    /// IN: number of bytes.
    pub len: u64,
    /// OUT: bytes written, or a negated [`errno`] value.
    pub result: i64,
}
// SAFETY: repr(C), four 8-byte integers, no padding.
unsafe impl Plain for WriteArgs {}

/// Arguments of [`Hypercall::Exit`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ExitArgs {
    /// IN: the exit code; the host process status is its low 8 bits, as on Unix.
    pub code: i64,
}
// SAFETY: repr(C), one 8-byte integer.
unsafe impl Plain for ExitArgs {}

/// Arguments of [`Hypercall::Fork`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ForkArgs {
    /// OUT: in the parent the child's id (> 0); in the child 0; on failure a negated [`errno`]
    /// (`EAGAIN`: a pVM limit is reached; `ENOMEM`: the host is out of memory; `EIO`: other).
    pub result: i64,
    /// OUT: this pVM's id after the call (the child's own in the child). The boot block keeps
    /// the root's ids: rewriting it would copy a page of the parent's into every child.
    pub id: u64,
    /// OUT: this pVM's parent's id after the call (0 for a family's root).
    pub parent_id: u64,
}
// SAFETY: repr(C), three 8-byte integers.
unsafe impl Plain for ForkArgs {}

/// How a child pVM ended, in [`WaitArgs::kind`].
pub mod wait_kind {
    /// `WAIT_NOHANG` was given and no child has ended yet.
    pub const NONE: u64 = 0;
    /// The child exited; `code` is its exit code.
    pub const EXITED: u64 = 1;
    /// The child crashed; `code` is the CPU exception vector, `fault_addr` and `rip` say where
    /// (vector 256: a bad hypercall or a KVM error, no address).
    pub const CRASHED: u64 = 2;
    /// The child was stopped by a signal; `code` is the signal number.
    pub const KILLED: u64 = 3;
}

/// [`WaitArgs::flags`]: return at once with [`wait_kind::NONE`] if no child has ended.
pub const WAIT_NOHANG: u64 = 1;

/// Arguments of [`Hypercall::Wait`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct WaitArgs {
    /// IN: the child's id, or 0 for any child.
    pub id: u64,
    /// IN: [`WAIT_NOHANG`] or 0.
    pub flags: u64,
    /// OUT: the child that ended.
    pub child: u64,
    /// OUT: a [`wait_kind`] value.
    pub kind: u64,
    /// OUT: exit code, exception vector or signal number (see [`wait_kind`]).
    pub code: i64,
    /// OUT: faulting address of a page fault.
    pub fault_addr: u64,
    /// OUT: faulting instruction of a crash.
    pub rip: u64,
    /// OUT: 0, or a negated [`errno`] (`ECHILD`: no such child).
    pub result: i64,
}
// SAFETY: repr(C), eight 8-byte integers, no padding.
unsafe impl Plain for WaitArgs {}

/// Arguments of [`Hypercall::Clock`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ClockArgs {
    /// OUT: nanoseconds of the host's CLOCK_MONOTONIC.
    pub nanos: u64,
}
// SAFETY: repr(C), one 8-byte integer.
unsafe impl Plain for ClockArgs {}

/// Arguments of [`Hypercall::PipeCreate`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PipeArgs {
    /// IN: ring capacity in bytes, a power of two from 4 KiB to 1 MiB.
    pub capacity: u64,
    /// OUT: handle of the read end.
    pub read_handle: u64,
    /// OUT: handle of the write end.
    pub write_handle: u64,
    /// OUT: guest address of the ring (a `pvm_ipc::PipeRing` header, its data a page later).
    pub ring: u64,

    /// OUT: 0 or a negated [`errno`] (`EINVAL` bad capacity, `EAGAIN` no region left).
    pub result: i64,
}
// SAFETY: repr(C), five 8-byte integers.
unsafe impl Plain for PipeArgs {}

/// Arguments of [`Hypercall::IpcWait`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct IpcWaitArgs {
    /// IN: the handle whose peer to wait for.
    pub handle: u64,
    /// IN: this end's futex word in the ring as the guest last read it.
    pub seq: u64,
    /// OUT: 0 (woken: look again), or a negated [`errno`]: `EPIPE` (the peer end is closed
    /// everywhere), `EINTR` (a handled signal arrived), `EBADF`.
    pub result: i64,
}
// SAFETY: repr(C), three 8-byte integers.
unsafe impl Plain for IpcWaitArgs {}

/// Longest key of a named queue or shared-memory region.
pub const MAX_KEY_LEN: u64 = 64;

/// Arguments of [`Hypercall::MqOpen`] and [`Hypercall::ShmOpen`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NamedArgs {
    /// IN: guest address of the key (1 to [`MAX_KEY_LEN`] bytes of `[A-Za-z0-9._-]`).
    pub key: u64,
    /// IN: key length.
    pub key_len: u64,
    /// IN: 1 to create the object if it does not exist, 0 to only open it.
    pub create: u64,
    /// IN (when creating): a queue's capacity in messages (a power of two), or a region's size.
    pub capacity: u64,
    /// IN (when creating a queue): the largest message.
    pub msg_size: u64,
    /// OUT: the handle.
    pub handle: u64,
    /// OUT: guest address of the queue or region.
    pub addr: u64,
    /// OUT: the queue's capacity or the region's size.
    pub size: u64,
    /// OUT: a queue's largest message.
    pub msg_size_out: u64,
    /// OUT: 0 or a negated [`errno`]: `EPERM` (the key belongs to another family), `ENOENT`
    /// (no such object and `create` is 0), `EINVAL` (bad key or geometry), `EAGAIN` (no region
    /// left).
    pub result: i64,
}
// SAFETY: repr(C), ten 8-byte integers.
unsafe impl Plain for NamedArgs {}

/// Which side of a queue waits or is woken.
pub mod mq_side {
    /// Receivers (waiting for messages).
    pub const RECV: u64 = 0;
    /// Senders (waiting for room).
    pub const SEND: u64 = 1;
}

/// Arguments of [`Hypercall::MqWait`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MqWaitArgs {
    /// IN: the queue handle.
    pub handle: u64,
    /// IN: [`mq_side`].
    pub side: u64,
    /// IN: the side's futex word as the guest last read it.
    pub seq: u64,
    /// OUT: 0 (look again), `-EINTR`, `-EBADF`.
    pub result: i64,
}
// SAFETY: repr(C), four 8-byte integers.
unsafe impl Plain for MqWaitArgs {}

/// Arguments of [`Hypercall::DlOpen`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DlOpenArgs {
    /// IN: guest address of the library's name (1 to [`MAX_KEY_LEN`] bytes of
    /// `[A-Za-z0-9._-]`): one the operator allowed (`pvmctl run --lib NAME=FILE` or a file
    /// `libNAME.so` in `--lib-dir`).
    pub name: u64,
    /// IN: name length.
    pub name_len: u64,
    /// IN: guest address of a buffer for a message saying why the call failed (0: none).
    pub msg: u64,
    /// IN: its size.
    pub msg_cap: u64,
    /// OUT: length of the message written (at most `msg_cap`).
    pub msg_len: u64,
    /// OUT: where the library is.
    pub info: DlInfo,
    /// OUT: 0 or a negated [`errno`]: `ENOENT` (no such library allowed), `EACCES` (not
    /// trusted), `ENOEXEC` (malformed or refused), `EAGAIN` (no room for another library),
    /// `EINVAL` (bad name), `EIO`.
    pub result: i64,
}
// SAFETY: repr(C), 8-byte integers and a DlInfo (8-byte integers), no padding.
unsafe impl Plain for DlOpenArgs {}

/// Where a loaded library is (OUT fields of [`DlOpenArgs`] and [`DlUpdateArgs`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DlInfo {
    /// The library's handle (its slot).
    pub handle: u64,
    /// Its base address (code part; the data part is `LIB_DATA_OFFSET` above).
    pub base: u64,
    /// Guest address of its symbol index: `nsymbols` [`LibSymbol`]s sorted by hash.
    pub symbols: u64,
    /// Entries in the index.
    pub nsymbols: u64,
    /// Guest address of its version string (not NUL-terminated), 0 if it has none.
    pub version: u64,
    /// Length of the version string.
    pub version_len: u64,
}
// SAFETY: repr(C), six 8-byte integers.
unsafe impl Plain for DlInfo {}

/// Arguments of [`Hypercall::DlClose`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DlCloseArgs {
    /// IN: the handle.
    pub handle: u64,
    /// OUT: 0 or a negated [`errno`]: `EBADF` (no such library), `EBUSY` (another library
    /// imports from it, or it is being updated).
    pub result: i64,
}
// SAFETY: repr(C), two 8-byte integers.
unsafe impl Plain for DlCloseArgs {}

/// Arguments of [`Hypercall::NetListen`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NetListenArgs {
    /// IN: the guest port (one the operator published).
    pub port: u64,
    /// OUT: the listener's handle (closed with [`Hypercall::IpcClose`]).
    pub handle: u64,
    /// OUT: 0 or a negated [`errno`]: `EACCES` (the port is not published), `EADDRINUSE`
    /// (this pVM listens on it already), `ENETDOWN` (no network), `EAGAIN` (no handle left).
    pub result: i64,
}
// SAFETY: repr(C), three 8-byte integers.
unsafe impl Plain for NetListenArgs {}

/// Flags of [`NetAcceptArgs::flags`].
pub mod net_flags {
    /// Do not wait: `EAGAIN` when no connection is there.
    pub const NONBLOCK: u64 = 1;
}

/// Arguments of [`Hypercall::NetAccept`]. A connection is two pipes in one region: the
/// receive ring (the host writes what the client sent, the guest reads) at `ring`, and the send
/// ring (the guest writes, the host sends) at `ring + pvm_ipc::net_tx_offset(capacity)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NetAcceptArgs {
    /// IN: the listener's handle.
    pub listener: u64,
    /// IN: [`net_flags`].
    pub flags: u64,
    /// OUT: handle of the receive ring's read end.
    pub read_handle: u64,
    /// OUT: handle of the send ring's write end.
    pub write_handle: u64,
    /// OUT: guest address of the receive ring (the send ring follows it).
    pub ring: u64,
    /// OUT: capacity of each ring.
    pub capacity: u64,
    /// OUT: the client's address, IPv6 (an IPv4 client as `::ffff:a.b.c.d`).
    pub peer_ip: [u8; 16],
    /// OUT: the client's port.
    pub peer_port: u64,
    /// OUT: 0 or a negated [`errno`]: `EBADF` (not a listener), `EAGAIN` (none yet, with
    /// `NONBLOCK`; or no handle or region left), `EINTR` (a signal), `ENETDOWN` (the network
    /// backend is gone).
    pub result: i64,
}
// SAFETY: repr(C), 8-byte integers and a 16-byte array at an 8-byte boundary: no padding.
unsafe impl Plain for NetAcceptArgs {}

/// Arguments of [`Hypercall::NetConnect`]. The connection's rings are as
/// [`NetAcceptArgs`]'s.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NetConnectArgs {
    /// IN: the server's address, IPv6 (IPv4 as `::ffff:a.b.c.d`).
    pub ip: [u8; 16],
    /// IN: its port.
    pub port: u64,
    /// OUT: handle of the receive ring's read end.
    pub read_handle: u64,
    /// OUT: handle of the send ring's write end.
    pub write_handle: u64,
    /// OUT: guest address of the receive ring (the send ring follows it).
    pub ring: u64,
    /// OUT: capacity of each ring.
    pub capacity: u64,
    /// OUT: 0 or a negated [`errno`]: `EACCES` (not an address the operator allows),
    /// `ECONNREFUSED`, `ETIMEDOUT`, `ENETUNREACH`, `EINTR` (a signal), `ENETDOWN` (no network
    /// backend), `EAGAIN` (no handle or region left).
    pub result: i64,
}
// SAFETY: repr(C), a 16-byte array then 8-byte integers: no padding.
unsafe impl Plain for NetConnectArgs {}

/// Readiness bits of a [`PollItem`].
pub mod poll_events {
    /// A listener has a connection; a read end has bytes (or its writers are gone).
    pub const READ: u64 = 1;
    /// A write end has room (or its readers are gone).
    pub const WRITE: u64 = 2;
    /// The peer end is gone (with READ or WRITE).
    pub const HUP: u64 = 4;
    /// Not a handle this pVM has (in `revents`).
    pub const INVALID: u64 = 8;
}

/// One handle of a [`NetPollArgs`] set.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PollItem {
    /// IN: a listener, or a pipe or connection end.
    pub handle: u64,
    /// IN: [`poll_events`] bits wanted (READ, WRITE).
    pub events: u64,
    /// OUT: [`poll_events`] bits ready.
    pub revents: u64,
}
// SAFETY: repr(C), three 8-byte integers.
unsafe impl Plain for PollItem {}

/// Most items one [`Hypercall::NetPoll`] takes.
pub const MAX_POLL_ITEMS: u64 = 4096;

/// Wait for ever in [`NetPollArgs::timeout_ns`].
pub const POLL_FOREVER: u64 = u64::MAX;

/// Arguments of [`Hypercall::NetPoll`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NetPollArgs {
    /// IN: guest address of `count` [`PollItem`]s (their `revents` are written).
    pub items: u64,
    /// IN: how many, at most [`MAX_POLL_ITEMS`].
    pub count: u64,
    /// IN: how long to wait at most, in nanoseconds ([`POLL_FOREVER`]; 0: do not wait).
    pub timeout_ns: u64,
    /// OUT: how many items are ready.
    pub ready: u64,
    /// OUT: 0 or a negated [`errno`]: `EINVAL` (too many items), `EFAULT` (items outside
    /// memory the guest may write), `EINTR` (a signal).
    pub result: i64,
}
// SAFETY: repr(C), five 8-byte integers.
unsafe impl Plain for NetPollArgs {}

/// Steps of an update, in [`DlUpdateArgs::op`].
pub mod dl_op {
    /// The runtime is at the safe point (no call into the old version in flight): the monitor
    /// answers with the new version's [`crate::DlInfo`]; the pVM is in the update's pause
    /// from here until [`COMMIT`] or [`ABORT`].
    pub const BEGIN: u64 = 1;
    /// Every handle is rebound and the state handed over: the new version replaces the old.
    pub const COMMIT: u64 = 2;
    /// Something failed: the old version stays, the new one is dropped.
    pub const ABORT: u64 = 3;
}

/// Why the runtime aborts an update, in [`DlUpdateArgs::reason`].
pub mod dl_abort {
    /// The new version lacks a symbol a handle is bound to (`detail`: the handle's index).
    pub const MISSING_SYMBOL: u64 = 1;
    /// The new version's state-restore hook returned an error (`detail`: its value).
    pub const RESTORE_FAILED: u64 = 3;
    /// A hook panicked.
    pub const HOOK_PANICKED: u64 = 4;
    /// A hook ran past the time limit (the monitor stopped it).
    pub const HOOK_TIMEOUT: u64 = 5;
    /// The old version saves state the new one has no hook to restore.
    pub const HOOKS_MISMATCH: u64 = 6;
    /// The runtime has no such library open (it was closed meanwhile).
    pub const NOT_OPEN: u64 = 7;
}

/// Arguments of [`Hypercall::DlUpdate`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DlUpdateArgs {
    /// IN: a [`dl_op`] value.
    pub op: u64,
    /// IN: the handle of the library being replaced.
    pub handle: u64,
    /// IN (ABORT): a [`dl_abort`] value.
    pub reason: u64,
    /// IN (ABORT): detail for the reason.
    pub detail: u64,
    /// IN (BEGIN): guest address of the runtime's hook escape (where the monitor sends the
    /// vCPU when a hook runs too long), in the app's code.
    pub escape: u64,
    /// OUT (BEGIN): the new version.
    pub info: DlInfo,
    /// OUT: 0 or a negated [`errno`]: `EINVAL` (no such update, or a step out of order).
    pub result: i64,
}
// SAFETY: repr(C), 8-byte integers and a DlInfo (8-byte integers), no padding.
unsafe impl Plain for DlUpdateArgs {}

/// Signal numbers, as on Linux x86-64.
pub mod signal {
    /// Hangup.
    pub const HUP: u64 = 1;
    /// Interrupt (Ctrl-C).
    pub const INT: u64 = 2;
    /// Kill (cannot be handled).
    pub const KILL: u64 = 9;
    /// User signal 1.
    pub const USR1: u64 = 10;
    /// User signal 2.
    pub const USR2: u64 = 12;
    /// Terminate.
    pub const TERM: u64 = 15;
    /// A child pVM ended (ignored unless handled).
    pub const CHLD: u64 = 17;
}

/// Arguments of [`Hypercall::SigAction`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SigActionArgs {
    /// IN: the signal number (not KILL).
    pub signal: u64,
    /// IN: 1 if the guest handles it, 0 for the default action.
    pub handled: u64,
    /// OUT: 0 or `-EINVAL`.
    pub result: i64,
}
// SAFETY: repr(C), three 8-byte integers.
unsafe impl Plain for SigActionArgs {}

/// The guest status page at [`layout::STATUS_ADDR`], shared by guest and monitor while the
/// vCPU is stopped (single vCPU: never concurrently).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GuestStatus {
    /// Signals that arrived for handlers the guest registered, one bit per number: set by the
    /// monitor, taken by the guest (an atomic swap with 0), so delivery costs no extra exit.
    pub pending_signals: u64,
    /// A library update is ready: the handle of the library to replace, plus one (0: none).
    /// Set by the monitor; the runtime answers with [`Hypercall::DlUpdate`] as soon as no call
    /// into that library is in flight (checked when such a call returns and after hypercalls).
    pub dl_update: u64,
}
// SAFETY: repr(C), two 8-byte integers.
unsafe impl Plain for GuestStatus {}

/// Arguments of [`Hypercall::Kill`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct KillArgs {
    /// IN: the target pVM's id.
    pub id: u64,
    /// IN: the signal number.
    pub signal: u64,
    /// OUT: 0 or a negated [`errno`] (`EPERM`: another family; `ESRCH`: no such pVM;
    /// `EINVAL`: bad signal).
    pub result: i64,
}
// SAFETY: repr(C), three 8-byte integers.
unsafe impl Plain for KillArgs {}

/// What a ring-0 exception stub leaves on its stack before [`Hypercall::Exception`]: the vector
/// and error code it pushed (0 for vectors without one) under the CPU's interrupt frame.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ExceptionFrame {
    /// Exception vector (0 = #DE, 6 = #UD, 13 = #GP, 14 = #PF ...).
    pub vector: u64,
    /// Error code pushed by the CPU, or 0.
    pub error_code: u64,
    /// Faulting instruction pointer.
    pub rip: u64,
    /// Code segment at the fault.
    pub cs: u64,
    /// Flags at the fault.
    pub rflags: u64,
    /// Stack pointer at the fault.
    pub rsp: u64,
    /// Stack segment at the fault.
    pub ss: u64,
}
// SAFETY: repr(C), seven 8-byte integers, no padding.
unsafe impl Plain for ExceptionFrame {}

/// Magic value at the start of [`BootInfo`] ("pvmboot\0").
pub const BOOT_MAGIC: u64 = u64::from_le_bytes(*b"pvmboot\0");

/// What the monitor tells a guest at boot; at [`layout::BOOT_INFO_ADDR`], its address is also
/// passed in `rdi` to the entry point. The argument strings follow the struct.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct BootInfo {
    /// [`BOOT_MAGIC`].
    pub magic: u64,
    /// [`ABI_VERSION`] of the monitor.
    pub abi_version: u64,
    /// Host-unique id of the pVM booted (a forked child learns its own from [`ForkArgs`]).
    pub pvm_id: u64,
    /// Id of the booted pVM's parent: 0, it is a family's root (as [`BootInfo::pvm_id`]).
    pub parent_id: u64,
    /// Id of the family (its root's id).
    pub family_id: u64,
    /// Size of guest RAM in bytes.
    pub mem_size: u64,
    /// First byte of the heap (page-aligned, after the image).
    pub heap_start: u64,
    /// End of the heap (exclusive; the stack guard page starts here).
    pub heap_end: u64,
    /// Initial stack pointer's page end (the top of guest RAM).
    pub stack_top: u64,
    /// Number of arguments (argv[0] is the image name).
    pub argc: u64,
    /// Guest address of the argument bytes: `argc` strings, each followed by a NUL byte.
    pub args_addr: u64,
    /// Length in bytes of the argument bytes.
    pub args_len: u64,
    /// Host CPUs the family's monitors may run on (`pvmctl run --cpuset-cpus`, else the root
    /// monitor's affinity at boot); 0 if unknown. With one, two pVMs never run at the same time,
    /// so a waiter that spins only delays the peer it waits for: the runtime does not spin.
    pub host_cpus: u64,
}
// SAFETY: repr(C), thirteen 8-byte integers, no padding.
unsafe impl Plain for BootInfo {}

/// The section of a guest image listing what it exports to the libraries it loads (a table of
/// [`ExportRecord`]s, written by `pvm::export!`; the image has no dynamic symbol table).
pub const EXPORTS_SECTION: &str = ".pvm.exports";

/// One export of a guest image: a name (UTF-8, not NUL-terminated) and an address, both in the
/// image (a static, non-PIE link resolves them: the table needs no relocation).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExportRecord {
    /// Address of the name's bytes.
    pub name: u64,
    /// Length of the name.
    pub name_len: u64,
    /// Address of the exported function or data.
    pub addr: u64,
    /// A hash of the export's signature, 0 when unchecked.
    pub sig: u64,
}
// SAFETY: repr(C), four 8-byte integers.
unsafe impl Plain for ExportRecord {}

/// The symbol a library exports to name its version (a NUL-terminated string, e.g. `"1.2.0"`;
/// `pvm::library!` writes it); shown by `pvmctl lib list` and compared by `lib update`.
pub const LIB_VERSION_SYMBOL: &str = "pvm_library_version";
/// The optional state hand-over hooks of a library being replaced: the old version's
/// `pvm_state_save() -> *mut c_void` and the new version's
/// `pvm_state_restore(state: *mut c_void, from_version: *const u8) -> i32` (0 = adopted).
pub const STATE_SAVE_SYMBOL: &str = "pvm_state_save";
/// See [`STATE_SAVE_SYMBOL`].
pub const STATE_RESTORE_SYMBOL: &str = "pvm_state_restore";

/// One entry of a loaded library's symbol index, which the monitor writes (sorted by `hash`,
/// read-only to the guest) after the library's RELRO, so the guest looks symbols up without an
/// exit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LibSymbol {
    /// [`symbol_hash`] of the name.
    pub hash: u64,
    /// Guest address of the name's bytes (in the library's string table).
    pub name: u64,
    /// Length of the name.
    pub name_len: u64,
    /// Guest address of the symbol.
    pub addr: u64,
}
// SAFETY: repr(C), four 8-byte integers.
unsafe impl Plain for LibSymbol {}

/// The hash of a symbol name in a [`LibSymbol`] index (64-bit FNV-1a).
pub const fn symbol_hash(name: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < name.len() {
        hash ^= name[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    hash
}

/// Exception vectors with a CPU-pushed error code.
pub const fn exception_has_error_code(vector: u64) -> bool {
    matches!(vector, 8 | 10 | 11 | 12 | 13 | 14 | 17 | 21 | 29 | 30)
}

/// Number of exception vectors the monitor installs stubs for.
pub const EXCEPTION_VECTORS: u64 = 32;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hypercall_numbers_round_trip() {
        for h in Hypercall::ALL {
            assert_eq!(Hypercall::from_nr(h as u64), Some(h));
        }
        assert_eq!(Hypercall::from_nr(0), None);
        assert_eq!(Hypercall::from_nr(999), None);
    }
}
