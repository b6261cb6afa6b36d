//! x86-64 machine setup: page tables with W^X, GDT/TSS, IDT and the ring-0 exception stubs,
//! and the initial special registers for a CPL3 guest in 64-bit mode.
use kvm_bindings::{kvm_segment, kvm_sregs};
use pvm_abi::{exception_has_error_code, layout, Hypercall, EXCEPTION_VECTORS};

use crate::vstate::memory::{Access, GuestMemory, MemoryError};

/// Errors of machine setup.
#[derive(Debug, thiserror::Error)]
pub enum ArchError {
    /// The reserved page-table area is exhausted.
    #[error("guest page tables do not fit in the reserved area")]
    PageTablesFull,
    /// Two ranges of the address space overlap.
    #[error("overlapping ranges in the guest address space")]
    Overlap,
    /// Writing a structure into guest memory failed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
}

/// Page permissions of a mapped range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Perm {
    /// Writable.
    pub write: bool,
    /// Executable.
    pub exec: bool,
    /// Accessible at CPL3.
    pub user: bool,
}

impl Perm {
    /// User read-only data.
    pub const USER_RO: Perm = Perm {
        write: false,
        exec: false,
        user: true,
    };
    /// User read-write data.
    pub const USER_RW: Perm = Perm {
        write: true,
        exec: false,
        user: true,
    };
    /// User code (read + execute).
    pub const USER_RX: Perm = Perm {
        write: false,
        exec: true,
        user: true,
    };
    /// Supervisor read-write data.
    pub const KERNEL_RW: Perm = Perm {
        write: true,
        exec: false,
        user: false,
    };
    /// Supervisor read-only data.
    pub const KERNEL_RO: Perm = Perm {
        write: false,
        exec: false,
        user: false,
    };
    /// Supervisor code.
    pub const KERNEL_RX: Perm = Perm {
        write: false,
        exec: true,
        user: false,
    };
}

const PTE_PRESENT: u64 = 1 << 0;
const PTE_WRITE: u64 = 1 << 1;
const PTE_USER: u64 = 1 << 2;
const PTE_ACCESSED: u64 = 1 << 5;
const PTE_DIRTY: u64 = 1 << 6;
const PTE_LARGE: u64 = 1 << 7;
const PTE_NX: u64 = 1 << 63;
const PTE_ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
/// Entries in a table of any level.
const ENTRIES: usize = 512;

/// Where every pVM's PML4 is (the first page [`PageTables::new`] takes): the CR3 a vCPU's
/// system state can be given before its image is known.
pub const PAGE_TABLE_ROOT: u64 = layout::PAGE_TABLES_ADDR;

/// Builds 4-level page tables in the reserved area, using 2 MiB pages where a range covers a
/// whole aligned 2 MiB chunk. Upper levels allow everything; the leaf decides permissions.
pub struct PageTables<'m> {
    mem: &'m GuestMemory,
    next: u64,
    root: u64,
    /// The entries `map` writes into one table at a time.
    run: Box<[u64; ENTRIES]>,
}

impl<'m> PageTables<'m> {
    /// Starts empty tables (a zeroed PML4) at the bottom of the page-table area.
    pub fn new(mem: &'m GuestMemory) -> Result<Self, ArchError> {
        let mut pt = PageTables {
            mem,
            next: PAGE_TABLE_ROOT,
            root: 0,
            run: Box::new([0; ENTRIES]),
        };
        pt.root = pt.alloc()?;
        Ok(pt)
    }

    /// Guest-physical address of the PML4 (the value for CR3).
    pub fn root(&self) -> u64 {
        self.root
    }

    fn alloc(&mut self) -> Result<u64, ArchError> {
        if self.next + layout::PAGE_SIZE > layout::IMAGE_BASE {
            return Err(ArchError::PageTablesFull);
        }
        let page = self.next;
        self.next += layout::PAGE_SIZE;
        self.mem
            .write_bytes(page, &[0u8; layout::PAGE_SIZE as usize], Access::Monitor)?;
        Ok(page)
    }

    fn entry(&self, table: u64, index: u64) -> Result<u64, ArchError> {
        Ok(self.mem.read_obj::<u64>(table + index * 8, Access::Monitor)?)
    }

    fn set_entry(&self, table: u64, index: u64, value: u64) -> Result<(), ArchError> {
        Ok(self.mem.write_obj(table + index * 8, &value, Access::Monitor)?)
    }

    /// Writes the first `n` entries of `run` into `table` from entry `first` on, with one copy.
    fn set_entries(&self, table: u64, first: u64, n: usize) -> Result<(), ArchError> {
        Ok(self
            .mem
            .write_slice(table + first * 8, &self.run[..n], Access::Monitor)?)
    }

    /// The table an entry of `table` points to, created on first use.
    fn next_level(&mut self, table: u64, index: u64) -> Result<u64, ArchError> {
        let e = self.entry(table, index)?;
        if e & PTE_PRESENT != 0 {
            return Ok(e & PTE_ADDR_MASK);
        }
        let child = self.alloc()?;
        self.set_entry(
            table,
            index,
            child | PTE_PRESENT | PTE_WRITE | PTE_USER | PTE_ACCESSED,
        )?;
        Ok(child)
    }

    /// Maps `[va, va+len)` to `[pa, pa+len)` with `perm`. All three must be page-aligned, and
    /// the range must not overlap one mapped before.
    pub fn map(&mut self, va: u64, pa: u64, len: u64, perm: Perm) -> Result<(), ArchError> {
        // Accessed and dirty preset: the CPU (or KVM's shadow MMU) then never writes them, so
        // page-table pages stay shared copy-on-write with a forked child instead of being copied.
        let mut flags = PTE_PRESENT | PTE_ACCESSED | PTE_DIRTY;
        if perm.write {
            flags |= PTE_WRITE;
        }
        if perm.user {
            flags |= PTE_USER;
        }
        if !perm.exec {
            flags |= PTE_NX;
        }
        // Each turn fills the consecutive entries of one table: a 2 MiB page wherever an aligned
        // 2 MiB fits, else 4 KiB pages up to the next 2 MiB boundary (one table's reach). A
        // window of 1 GiB is one write of a whole table, not 512.
        let (mut va, mut pa, end) = (va, pa, va + len);
        while va < end {
            let pdpt = self.next_level(self.root, (va >> 39) & 511)?;
            let pd = self.next_level(pdpt, (va >> 30) & 511)?;
            let large = layout::LARGE_PAGE_SIZE;
            let (table, index, size, leaf) = if va % large == 0 && pa % large == 0 && end - va >= large {
                (pd, (va >> 21) & 511, large, flags | PTE_LARGE)
            } else {
                let pt = self.next_level(pd, (va >> 21) & 511)?;
                (pt, (va >> 12) & 511, layout::PAGE_SIZE, flags)
            };
            let n = ((end - va) / size).min(ENTRIES as u64 - index);
            for (i, e) in (0..n).zip(self.run.iter_mut()) {
                *e = (pa + i * size) | leaf;
            }
            self.set_entries(table, index, n as usize)?;
            va += n * size;
            pa += n * size;
        }
        Ok(())
    }
}

/// GDT selectors.
pub mod selector {
    /// Ring-0 code (exception stubs).
    pub const KERNEL_CODE: u16 = 0x08;
    /// Ring-3 code (the app), RPL 3.
    pub const USER_CODE: u16 = 0x18 | 3;
    /// Ring-3 data and stack, RPL 3.
    pub const USER_DATA: u16 = 0x20 | 3;
    /// The TSS.
    pub const TSS: u16 = 0x28;
}

const GDT_ENTRIES: u64 = 7; // null, 4 segments, 16-byte TSS descriptor
const TSS_SIZE: u64 = 104;
/// Each exception stub occupies this many bytes; the common tail follows the last stub.
const STUB_SIZE: u64 = 16;

fn tss_base() -> u64 {
    layout::GDT_ADDR + layout::TSS_OFFSET
}

/// `mov [rax], rax`: with rax = 0, a store to the hypercall window (guest-physical 0).
const STORE_TO_RAX: [u8; 3] = [0x48, 0x89, 0x00];

/// Bytes of guest RAM a [`write_warm_up_guest`] at `code` uses: its code page and four tables.
pub const WARM_UP_GUEST_SIZE: u64 = 5 * layout::PAGE_SIZE;

/// Writes a guest of one instruction at `code` (a 2 MiB-aligned address in guest RAM), for a
/// pool member's warm-up run: `mov [rax], rax`, which with rax = 0 exits as an MMIO store to
/// guest-physical 0. Its four page tables follow the code page: `code`'s 2 MiB read and execute
/// at CPL3, page 0 for the store, and the reserved area (descriptor tables, ring-0 stacks)
/// supervisor-only, as a pVM's own tables map it. Returns the root, for CR3. The caller zeroes
/// the [`WARM_UP_GUEST_SIZE`] bytes afterwards.
pub fn write_warm_up_guest(mem: &GuestMemory, code: u64) -> Result<u64, ArchError> {
    let [pml4, pdpt, pd, pt] = [1, 2, 3, 4].map(|i| code + i * layout::PAGE_SIZE);
    let table = PTE_PRESENT | PTE_WRITE | PTE_USER;
    let w = |addr: u64, value: u64| mem.write_obj(addr, &value, Access::Monitor);
    mem.write_bytes(code, &STORE_TO_RAX, Access::Monitor)?;
    w(pml4, pdpt | table)?;
    w(pdpt, pd | table)?;
    w(pd, pt | table)?;
    w(
        pd + (code / layout::LARGE_PAGE_SIZE) * 8,
        code | PTE_PRESENT | PTE_USER | PTE_LARGE,
    )?;
    w(pt, table)?;
    let mut page = layout::RESERVED_START;
    while page < layout::BOOT_INFO_ADDR {
        w(
            pt + (page / layout::PAGE_SIZE) * 8,
            page | PTE_PRESENT | PTE_WRITE,
        )?;
        page += layout::PAGE_SIZE;
    }
    Ok(pml4)
}

/// Writes the GDT with its TSS, the TSS, the IDT and the exception stubs into the reserved area.
pub fn write_descriptor_tables(mem: &GuestMemory) -> Result<(), ArchError> {
    let tss = tss_base();
    let mut gdt = [
        0,
        0x00af_9a00_0000_ffff, // ring-0 code, long mode
        0x00cf_9200_0000_ffff, // ring-0 data
        0x00af_fa00_0000_ffff, // ring-3 code, long mode
        0x00cf_f200_0000_ffff, // ring-3 data
        0,                     // TSS, low half (below)
        tss >> 32,             // TSS, high half: base[63:32]
    ];
    let limit = TSS_SIZE - 1;
    gdt[5] = (limit & 0xffff)
        | ((tss & 0xff_ffff) << 16)
        | (0x8b << 40) // present, DPL0, 64-bit TSS (busy, as after LTR)
        | (((limit >> 16) & 0xf) << 48)
        | (((tss >> 24) & 0xff) << 56);
    for (i, e) in gdt.iter().enumerate() {
        mem.write_obj(layout::GDT_ADDR + 8 * i as u64, e, Access::Monitor)?;
    }

    // TSS: RSP0 for exceptions raised at CPL3, IST1 for #DF; no I/O bitmap.
    let mut t = [0u8; TSS_SIZE as usize];
    let rsp0 = layout::RING0_STACK_ADDR + layout::RING0_STACK_SIZE;
    let ist1 = layout::DF_STACK_ADDR + layout::DF_STACK_SIZE;
    t[4..12].copy_from_slice(&rsp0.to_le_bytes());
    t[36..44].copy_from_slice(&ist1.to_le_bytes());
    t[102..104].copy_from_slice(&(TSS_SIZE as u16).to_le_bytes());
    mem.write_bytes(tss, &t, Access::Monitor)?;

    // IDT: one interrupt gate per exception vector, each to its stub.
    for v in 0..EXCEPTION_VECTORS {
        let handler = layout::STUBS_ADDR + v * STUB_SIZE;
        let ist: u64 = if v == 8 { 1 } else { 0 };
        let low = (handler & 0xffff)
            | (u64::from(selector::KERNEL_CODE) << 16)
            | (ist << 32)
            | (0x8e << 40) // present, DPL0, 64-bit interrupt gate
            | (((handler >> 16) & 0xffff) << 48);
        let high = handler >> 32;
        mem.write_obj(layout::IDT_ADDR + 16 * v, &low, Access::Monitor)?;
        mem.write_obj(layout::IDT_ADDR + 16 * v + 8, &high, Access::Monitor)?;
    }
    mem.write_bytes(layout::STUBS_ADDR, &exception_stubs(), Access::Monitor)?;
    Ok(())
}

/// Machine code of the ring-0 exception stubs (integer-only: SSE at CPL0 kills a PVM guest, and
/// ring-0 code is emulated there, so the path is a handful of instructions).
///
/// Stub `v` (at `STUBS_ADDR + 16 * v`): `push 0` when the CPU pushes no error code, `push v`,
/// `jmp common`. Common tail: `movabs rax, <Exception hypercall address>; mov [rax], rsp;
/// jmp $`. The store hands the monitor the address of the [`pvm_abi::ExceptionFrame`] just built.
pub fn exception_stubs() -> Vec<u8> {
    let common = EXCEPTION_VECTORS * STUB_SIZE;
    let mut code = Vec::with_capacity((common + 32) as usize);
    for v in 0..EXCEPTION_VECTORS {
        let start = code.len();
        if !exception_has_error_code(v) {
            code.extend_from_slice(&[0x6a, 0x00]); // push 0
        }
        code.extend_from_slice(&[0x6a, v as u8]); // push imm8 (v < 32: no sign extension)
        let rel = common as i64 - (code.len() as i64 + 5);
        code.push(0xe9); // jmp rel32
        code.extend_from_slice(&(rel as i32).to_le_bytes());
        code.resize(start + STUB_SIZE as usize, 0xcc); // pad with int3
    }
    code.extend_from_slice(&[0x48, 0xb8]); // movabs rax, imm64
    code.extend_from_slice(&Hypercall::Exception.address().to_le_bytes());
    code.extend_from_slice(&[0x48, 0x89, 0x20]); // mov [rax], rsp
    code.extend_from_slice(&[0xeb, 0xfe]); // jmp $ (never reached: the monitor stops the pVM)
    code
}

fn segment(selector: u16, type_: u8, dpl: u8, code: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl,
        db: u8::from(!code),
        s: 1,
        l: u8::from(code),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

const CR0_PE: u64 = 1 << 0;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const EFER_NXE: u64 = 1 << 11;

/// Sets `sregs` up for 64-bit mode at CPL3 with the given page-table root, SSE enabled
/// (CR0.MP set, EM/TS clear, CR4.OSFXSR|OSXMMEXCPT) and the reserved-area descriptor tables.
pub fn setup_sregs(sregs: &mut kvm_sregs, cr3: u64) {
    let code = segment(selector::USER_CODE, 0xb, 3, true);
    let data = segment(selector::USER_DATA, 0x3, 3, false);
    sregs.cs = code;
    sregs.ss = data;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.tr = kvm_segment {
        base: tss_base(),
        limit: (TSS_SIZE - 1) as u32,
        selector: selector::TSS,
        type_: 0xb,
        present: 1,
        dpl: 0,
        db: 0,
        s: 0,
        l: 0,
        g: 0,
        avl: 0,
        unusable: 0,
        padding: 0,
    };
    sregs.gdt.base = layout::GDT_ADDR;
    sregs.gdt.limit = (GDT_ENTRIES * 8 - 1) as u16;
    sregs.idt.base = layout::IDT_ADDR;
    sregs.idt.limit = (EXCEPTION_VECTORS * 16 - 1) as u16;
    sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
    sregs.cr3 = cr3;
    sregs.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
    sregs.efer = EFER_LME | EFER_LMA | EFER_NXE;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stubs_have_fixed_size_and_jump_to_common() {
        let code = exception_stubs();
        let common = (EXCEPTION_VECTORS * STUB_SIZE) as usize;
        assert_eq!(code.len(), common + 2 + 8 + 3 + 2);
        for v in 0..EXCEPTION_VECTORS as usize {
            let stub = &code[v * 16..v * 16 + 16];
            let jmp_at = if exception_has_error_code(v as u64) { 2 } else { 4 };
            assert_eq!(stub[jmp_at], 0xe9, "vector {v}");
            let rel = i32::from_le_bytes(stub[jmp_at + 1..jmp_at + 5].try_into().unwrap());
            assert_eq!(v * 16 + jmp_at + 5 + rel as usize, common, "vector {v}");
            assert_eq!(stub[jmp_at - 1], v as u8);
        }
    }

    #[test]
    fn page_tables_use_large_pages_when_aligned() {
        let mem = GuestMemory::new(8 * layout::LARGE_PAGE_SIZE).unwrap();
        let mut pt = PageTables::new(&mem).unwrap();
        pt.map(
            layout::IMAGE_BASE,
            layout::IMAGE_BASE,
            2 * layout::LARGE_PAGE_SIZE,
            Perm::USER_RW,
        )
        .unwrap();
        pt.map(
            layout::STUBS_ADDR,
            layout::STUBS_ADDR,
            layout::PAGE_SIZE,
            Perm::KERNEL_RX,
        )
        .unwrap();
        // PML4 + PDPT + PD + one PT for the small page.
        assert_eq!(pt.next, layout::PAGE_TABLES_ADDR + 4 * layout::PAGE_SIZE);
        let pd = layout::PAGE_TABLES_ADDR + 2 * layout::PAGE_SIZE;
        let e: u64 = mem.read_obj(pd + 8, Access::Monitor).unwrap();
        let flags = PTE_PRESENT | PTE_ACCESSED | PTE_DIRTY | PTE_WRITE | PTE_USER | PTE_LARGE | PTE_NX;
        assert_eq!(e, layout::IMAGE_BASE | flags);
    }

    /// `map` as it was, an entry at a time: the reference for the batched one.
    fn map_one_by_one(pt: &mut PageTables<'_>, va: u64, pa: u64, len: u64, perm: Perm) {
        let mut flags = PTE_PRESENT | PTE_ACCESSED | PTE_DIRTY;
        flags |= if perm.write { PTE_WRITE } else { 0 };
        flags |= if perm.user { PTE_USER } else { 0 };
        flags |= if perm.exec { 0 } else { PTE_NX };
        let (mut va, mut pa, end) = (va, pa, va + len);
        while va < end {
            let pdpt = pt.next_level(pt.root, (va >> 39) & 511).unwrap();
            let pd = pt.next_level(pdpt, (va >> 30) & 511).unwrap();
            let large = layout::LARGE_PAGE_SIZE;
            if va % large == 0 && pa % large == 0 && end - va >= large {
                pt.set_entry(pd, (va >> 21) & 511, pa | flags | PTE_LARGE)
                    .unwrap();
                va += large;
                pa += large;
            } else {
                let t = pt.next_level(pd, (va >> 21) & 511).unwrap();
                pt.set_entry(t, (va >> 12) & 511, pa | flags).unwrap();
                va += layout::PAGE_SIZE;
                pa += layout::PAGE_SIZE;
            }
        }
    }

    #[test]
    fn batched_entries_make_the_same_tables_as_one_at_a_time() {
        let (page, large) = (layout::PAGE_SIZE, layout::LARGE_PAGE_SIZE);
        // Unaligned starts and ends, a physical address off the 2 MiB grid, runs across table
        // and PDPT boundaries, and the layout's 1 GiB windows.
        let ranges = [
            (layout::STUBS_ADDR, layout::STUBS_ADDR, page, Perm::KERNEL_RX),
            (layout::IMAGE_BASE, layout::IMAGE_BASE, 3 * page, Perm::USER_RX),
            (
                layout::IMAGE_BASE + 3 * page,
                layout::IMAGE_BASE + 3 * page,
                3 * large,
                Perm::USER_RW,
            ),
            (16 * large + page, 16 * large + page, 5 * large, Perm::USER_RW),
            (511 * large, 511 * large, 3 * large, Perm::USER_RO),
            (40 * large, 60 * large + page, 2 * large + 5 * page, Perm::USER_RW),
            (layout::HYPERCALL_VA, layout::HYPERCALL_GPA, page, Perm::USER_RW),
            (
                layout::IPC_BASE,
                layout::IPC_BASE,
                layout::IPC_SIZE,
                Perm::USER_RW,
            ),
            (
                layout::LIB_CODE_BASE,
                layout::LIB_CODE_BASE,
                layout::LIB_WINDOW_SIZE,
                Perm::USER_RX,
            ),
        ];
        let batched = GuestMemory::new(8 * large).unwrap();
        let single = GuestMemory::new(8 * large).unwrap();
        let (mut a, mut b) = (
            PageTables::new(&batched).unwrap(),
            PageTables::new(&single).unwrap(),
        );
        for &(va, pa, len, perm) in &ranges {
            a.map(va, pa, len, perm).unwrap();
            map_one_by_one(&mut b, va, pa, len, perm);
        }
        assert_eq!(a.next, b.next, "tables allocated");
        let len = (a.next - layout::PAGE_TABLES_ADDR) as usize;
        let (mut x, mut y) = (vec![0u8; len], vec![0u8; len]);
        batched
            .read_bytes(layout::PAGE_TABLES_ADDR, &mut x, Access::Monitor)
            .unwrap();
        single
            .read_bytes(layout::PAGE_TABLES_ADDR, &mut y, Access::Monitor)
            .unwrap();
        assert!(x == y, "the tables differ");
    }
}
