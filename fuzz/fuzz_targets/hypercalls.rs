//! Structure-aware fuzzing of the hypercall dispatcher (`hypervisor_ext::hypercall`) against
//! fake guest memory and a fake host: every hypercall, its argument struct anywhere (the
//! guest's own memory of each kind, the reserved area, outside RAM), each field a small value,
//! an address of any kind, or anything; and the decoder with arbitrary exits.
//!
//! Checked: nothing panics; handlers get only checked values (ids that name a pVM or this one,
//! valid signals, sides, capacities and keys, console writes within the limit); the dispatcher
//! never writes memory the guest could not write itself: the reserved area (page tables, GDT,
//! IDT, stubs), the guest's read-only text, rodata and boot block stay as they were, and a
//! refused call (a "bad hypercall") writes nothing at all.
#![no_main]

use hypervisor_ext::hypercall::{
    self, Accepted, Call, Flow, Host, Reaped, Stream, UpdateStep, HANDLEABLE, MAX_WRITE,
};
use hypervisor_ext::vstate::memory::{Access, GuestMemory, GuestRange, GuestView};
use hypervisor_ext::{KillTarget, Named, Opened, Outcome, OutcomeRecord};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use pvm_abi::{layout, DlInfo, DlOpenArgs, ExceptionFrame, Hypercall};

const MEM: u64 = layout::MIN_MEM_SIZE;
const TEXT: (u64, u64) = (layout::IMAGE_BASE, layout::IMAGE_BASE + 0x10000);
const RODATA: (u64, u64) = (TEXT.1, TEXT.1 + 0x10000);
const HEAP: (u64, u64) = (RODATA.1, MEM - layout::STACK_SIZE - layout::STACK_GUARD_SIZE);
const STACK: (u64, u64) = (MEM - layout::STACK_SIZE, MEM);
const BOOT: (u64, u64) = (
    layout::BOOT_INFO_ADDR,
    layout::BOOT_INFO_ADDR + layout::BOOT_INFO_SIZE,
);
const STATUS: (u64, u64) = (layout::STATUS_ADDR, layout::STATUS_ADDR + layout::PAGE_SIZE);
const ME: u32 = 4242;

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Place {
    Boot,
    Status,
    Text,
    Rodata,
    Heap,
    Stack,
    Reserved,
    Guard,
    Beyond,
    IpcWindow,
}

impl Place {
    fn at(self, offset: u32) -> u64 {
        let (lo, hi) = match self {
            Place::Boot => BOOT,
            Place::Status => STATUS,
            Place::Text => TEXT,
            Place::Rodata => RODATA,
            Place::Heap => HEAP,
            Place::Stack => STACK,
            Place::Reserved => (layout::RESERVED_START, layout::IMAGE_BASE),
            Place::Guard => (HEAP.1, STACK.0),
            Place::Beyond => (MEM, MEM + 0x10000),
            Place::IpcWindow => (layout::IPC_BASE, layout::IPC_BASE + layout::IPC_SIZE),
        };
        // Near the end of the range often: straddling is where checks go wrong.
        let span = hi - lo;
        lo + (u64::from(offset) % (span + 16)).min(span + 15)
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Value {
    Small(u8),
    Addr(Place, u32),
    Any(u64),
}

impl Value {
    fn get(self) -> u64 {
        match self {
            Value::Small(v) => u64::from(v),
            Value::Addr(p, o) => p.at(o),
            Value::Any(v) => v,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Step {
    /// A hypercall whose argument struct (fields as given) sits at `place`.
    Call {
        nr: u8,
        place: Place,
        offset: u32,
        fields: [Value; 12],
        key: [u8; 8],
    },
    /// A raw exit to decode.
    Exit { addr: u64, data: Vec<u8> },
}

#[derive(Arbitrary, Debug)]
struct Input {
    steps: Vec<Step>,
    /// What the fake host answers, in turn.
    answers: Vec<i64>,
    children: Vec<u16>,
}

struct Fake<'m> {
    mem: &'m GuestMemory,
    children: Vec<u32>,
    answers: Vec<i64>,
    next: usize,
}

impl Fake<'_> {
    fn answer(&mut self) -> i64 {
        let a = self.answers.get(self.next).copied().unwrap_or(0);
        self.next += 1;
        a
    }
}

fn valid_key(key: &str) -> bool {
    (1..=64).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && key != "."
        && key != ".."
}

impl Host for Fake<'_> {
    fn memory(&self) -> &GuestMemory {
        self.mem
    }
    fn id(&self) -> u32 {
        ME
    }
    fn parent_id(&self) -> u32 {
        0
    }
    fn has_child(&self, id: u32) -> bool {
        self.children.contains(&id)
    }
    fn has_children(&self) -> bool {
        !self.children.is_empty()
    }
    fn console(&self, _: Stream, bytes: &[u8]) -> i64 {
        assert!(bytes.len() as u64 <= MAX_WRITE);
        bytes.len() as i64
    }
    fn clock(&mut self) -> u64 {
        self.answer() as u64
    }
    fn exception(&mut self, _: ExceptionFrame) -> Outcome {
        Outcome::Exited(134)
    }
    fn fork(&mut self) -> i64 {
        let a = self.answer();
        if a > 0 {
            self.children.push(a as u32);
        }
        a
    }
    fn wait(&mut self, child: Option<u32>, _nohang: bool) -> Flow<Result<Option<Reaped>, i64>> {
        let id = match child {
            Some(id) => {
                assert!(self.has_child(id), "wait for a non-child {id}");
                id
            }
            None => *self
                .children
                .first()
                .expect("wait for any child without children"),
        };
        self.children.retain(|&c| c != id);
        Flow::Continue(Ok(Some((id, OutcomeRecord::default()))))
    }
    fn pause(&mut self) -> Flow<()> {
        Flow::Continue(())
    }
    fn pipe_create(&mut self, capacity: u64) -> Result<(u64, u64, u64), i64> {
        assert!(pvm_ipc::valid_pipe_capacity(capacity));
        Ok((0, 1, layout::IPC_BASE))
    }
    fn ipc_wait(&mut self, _: u64, _: u32) -> Flow<i64> {
        Flow::Continue(self.answer())
    }
    fn ipc_notify(&mut self, _: u64) {}
    fn ipc_close(&mut self, _: u64) {}
    fn sig_action(&mut self, sig: u64, _: bool) {
        assert!(HANDLEABLE.contains(&sig), "sigaction of {sig}");
    }
    fn kill(&mut self, target: KillTarget, sig: i32) -> i64 {
        assert!(
            HANDLEABLE.contains(&(sig as u64)) || sig == 9,
            "kill with signal {sig}"
        );
        match target {
            KillTarget::Myself => {}
            KillTarget::Child(id) => assert!(self.has_child(id)),
            KillTarget::Registered(id) => {
                assert!(
                    id > 0 && id <= i32::MAX as u32 && id != ME && !self.has_child(id),
                    "kill {id}"
                )
            }
        }
        0
    }
    fn open_named(&mut self, _: Named, key: &str, _: bool) -> Result<Opened, i64> {
        assert!(valid_key(key), "key {key:?}");
        Ok(Opened {
            handle: 3,
            addr: layout::IPC_BASE,
            size: 4096,
            msg_size: 64,
        })
    }
    fn mq_wait(&mut self, _: u64, side: u64, _: u32) -> Flow<i64> {
        assert!(side <= 1, "mq side {side}");
        Flow::Continue(0)
    }
    fn mq_wake(&mut self, _: u64, side: u64) {
        assert!(side <= 1, "mq side {side}");
    }
    fn dl_open(&mut self, name: &str) -> Result<DlInfo, (i64, String)> {
        assert!(valid_key(name), "library name {name:?}");
        match self.answer() {
            a if a < 0 => Err((a, "x".repeat((-a) as usize % 300))),
            a => Ok(DlInfo {
                handle: a as u64,
                ..DlInfo::default()
            }),
        }
    }
    fn dl_close(&mut self, _: u64) -> i64 {
        self.answer()
    }
    fn dl_update(&mut self, step: UpdateStep) -> Result<Option<DlInfo>, i64> {
        if let UpdateStep::Begin { .. } = step {
            return Ok(Some(DlInfo::default()));
        }
        Ok(None)
    }
    fn net_listen(&mut self, port: u16) -> Result<u64, i64> {
        assert_ne!(port, 0, "listen on port 0");
        match self.answer() {
            a if a < 0 => Err(a),
            a => Ok(a as u64),
        }
    }
    fn net_poll(&mut self, items: &mut [pvm_abi::PollItem], _: Option<u64>) -> Flow<Result<u64, i64>> {
        assert!(items.len() as u64 <= pvm_abi::MAX_POLL_ITEMS);
        let mut ready = 0;
        for it in items.iter_mut() {
            assert_eq!(it.events & !3, 0, "only READ and WRITE reach the host");
            it.revents = it.events & self.answer() as u64;
            ready += u64::from(it.revents != 0);
        }
        Flow::Continue(Ok(ready))
    }
    fn net_connect(&mut self, addr: std::net::SocketAddr) -> Flow<Result<Accepted, i64>> {
        assert_ne!(addr.port(), 0, "connect to port 0");
        self.net_accept(0, false)
    }
    fn net_accept(&mut self, _: u64, _: bool) -> Flow<Result<Accepted, i64>> {
        Flow::Continue(match self.answer() {
            a if a < 0 => Err(a),
            a => Ok(Accepted {
                read_handle: a as u64,
                write_handle: a as u64 + 1,
                ring: layout::IPC_BASE,
                capacity: pvm_ipc::NET_RING_CAPACITY,
                peer: std::net::SocketAddr::from(([192, 0, 2, 1], a as u16)),
            }),
        })
    }
}

/// The guest's view: boot block and text and rodata read-only, status page, heap and stack
/// read-write; nothing else.
fn view() -> GuestView {
    let r = |(start, end): (u64, u64), writable| GuestRange { start, end, writable };
    GuestView::new(vec![
        r(STATUS, true),
        r(BOOT, false),
        r(TEXT, false),
        r(RODATA, false),
        r(HEAP, true),
        r(STACK, true),
    ])
    .expect("disjoint ranges")
}

/// The monitor's own pages, as they are now: GDT, IDT, stubs, the first page-table page.
fn protected(mem: &GuestMemory) -> Vec<u8> {
    let mut out = vec![0u8; 3 * layout::PAGE_SIZE as usize];
    mem.read_bytes(layout::GDT_ADDR, &mut out, Access::Monitor)
        .expect("inside RAM");
    let mut pt = vec![0u8; layout::PAGE_SIZE as usize];
    mem.read_bytes(layout::PAGE_TABLES_ADDR, &mut pt, Access::Monitor)
        .expect("inside RAM");
    out.extend_from_slice(&pt);
    out
}

const AROUND: u64 = 512;

/// Guest memory around `at` and where it starts.
fn around(mem: &GuestMemory, at: u64) -> (u64, Vec<u8>) {
    let lo = at.saturating_sub(AROUND).max(layout::RESERVED_START);
    let hi = at.saturating_add(AROUND).min(MEM);
    let mut buf = vec![0u8; hi.saturating_sub(lo) as usize];
    if lo < hi {
        mem.read_bytes(lo, &mut buf, Access::Monitor).expect("inside RAM");
    }
    (lo, buf)
}

/// Size of a hypercall's argument struct (0: its argument is a value).
fn struct_size(nr: Hypercall) -> u64 {
    nr.arg_size().unwrap_or(0) as u64
}

thread_local! {
    static MEMORY: GuestMemory = {
        let mut mem = GuestMemory::new(MEM).expect("map fake guest RAM");
        mem.set_view(view());
        mem
    };
}

fuzz_target!(|input: Input| {
    MEMORY.with(|mem| run(mem, input));
});

fn run(mem: &GuestMemory, input: Input) {
    let mut host = Fake {
        mem,
        children: input
            .children
            .iter()
            .map(|&c| u32::from(c) + 1)
            .filter(|&c| c != ME)
            .collect(),
        answers: input.answers,
        next: 0,
    };
    for step in input.steps.iter().take(64) {
        let call = match step {
            Step::Exit { addr, data } => match hypercall::decode(*addr, data) {
                Ok(call) => call,
                Err(_) => continue,
            },
            Step::Call {
                nr,
                place,
                offset,
                fields,
                key,
            } => {
                let Some(nr) = Hypercall::from_nr(u64::from(*nr % 21)) else {
                    continue;
                };
                let at = place.at(*offset);
                // The struct's contents, as the guest (or anyone) may have left them.
                for (i, f) in fields.iter().enumerate() {
                    let _ = host.mem.write_obj(at + 8 * i as u64, &f.get(), Access::Monitor);
                }
                // A key where the fields may point.
                let _ = host.mem.write_bytes(HEAP.0, key, Access::Monitor);
                let arg = if struct_size(nr) == 0 { fields[0].get() } else { at };
                Call { nr, arg }
            }
        };
        let before = protected(host.mem);
        let (lo, was) = around(host.mem, call.arg);
        // A DlOpen may also write its message where the guest said (and may write itself).
        let message = (call.nr == Hypercall::DlOpen)
            .then(|| host.mem.read_obj::<DlOpenArgs>(call.arg, Access::Monitor).ok())
            .flatten()
            .map(|a| (a.msg, a.msg.saturating_add(a.msg_cap)));
        let (msg_lo, msg_was) = message.map_or((0, Vec::new()), |(m, _)| around(host.mem, m));
        let result = hypercall::dispatch(&mut host, call);
        assert!(
            protected(host.mem) == before,
            "{call:?} wrote the monitor's pages"
        );
        if let Some((m, m_end)) = message {
            let (_, msg_now) = around(host.mem, m);
            for (i, (a, b)) in msg_was.iter().zip(&msg_now).enumerate() {
                let addr = msg_lo + i as u64;
                if a != b && !(call.arg..call.arg + struct_size(call.nr)).contains(&addr) {
                    assert!(
                        (m..m_end).contains(&addr),
                        "{call:?} wrote {addr:#x}, outside its message buffer"
                    );
                    assert!(
                        host.mem.translate(addr, 1, Access::GuestWrite).is_ok(),
                        "{call:?} wrote its message at {addr:#x}, which the guest may not write"
                    );
                }
            }
        }
        let (_, now) = around(host.mem, call.arg);
        let size = struct_size(call.nr);
        for (i, (a, b)) in was.iter().zip(&now).enumerate() {
            if a == b {
                continue;
            }
            let addr = lo + i as u64;
            if message.is_some_and(|(m, m_end)| (m..m_end).contains(&addr)) {
                continue; // The message buffer, checked above.
            }
            // Only the struct's own bytes change, only if the call went through, and only where
            // the guest may write itself.
            assert!(result.is_ok(), "a refused {call:?} wrote {addr:#x}");
            assert!(
                (call.arg..call.arg + size).contains(&addr),
                "{call:?} wrote {addr:#x}, outside its struct"
            );
            assert!(
                host.mem.translate(addr, 1, Access::GuestWrite).is_ok(),
                "{call:?} wrote {addr:#x}, which the guest may not write"
            );
        }
        if let Ok(Some(_)) = result {
            break;
        }
    }
}
