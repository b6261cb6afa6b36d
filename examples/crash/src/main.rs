//! Crashes in the way its first argument names, to show how pvm reports CPU exceptions.
#![no_std]
#![no_main]

use core::arch::asm;

pvm::main!(main);

fn main() -> i32 {
    let kind = pvm::args().nth(1).unwrap_or("");
    pvm::println!("crashing: {kind}");
    match kind {
        "divide" => divide_by_zero(),
        "ud2" => {
            // SAFETY: deliberately executes an invalid opcode.
            unsafe { asm!("ud2") }
        }
        "gp" => {
            // SAFETY: deliberately executes a privileged instruction at CPL3 (#GP).
            unsafe { asm!("hlt") }
        }
        "null" => {
            // SAFETY: deliberately reads address 0, which is never mapped.
            let v = unsafe { core::ptr::read_volatile(core::ptr::null::<u64>()) };
            pvm::println!("read {v}");
        }
        "null-write" => {
            // SAFETY: deliberately writes address 0, which is never mapped.
            unsafe { core::ptr::write_volatile(core::ptr::null_mut::<u64>(), 1) };
        }
        "write-text" => {
            let text = main as *const () as *mut u8;
            // SAFETY: deliberately writes to the read-only text segment.
            unsafe { core::ptr::write_volatile(text, 0xcc) };
        }
        "stack-overflow" => {
            pvm::println!("depth {}", recurse(0));
        }
        "bad-hypercall" => {
            // SAFETY: deliberately stores to an unassigned hypercall number.
            unsafe { core::ptr::write_volatile((pvm_abi_hypercall_va() + 8 * 200) as *mut u64, 0) };
        }
        "load-hypercall" => {
            // SAFETY: deliberately loads from the hypercall window, which only takes stores.
            let v = unsafe { core::ptr::read_volatile(pvm_abi_hypercall_va() as *const u64) };
            pvm::println!("loaded {v}");
        }
        "hostile-write" => {
            // Pointers outside the app's memory: the monitor answers with an error code.
            for (addr, len) in [
                (0u64, 16u64),
                (0x2000, 16),
                (u64::MAX - 3, 16),
                (pvm::mem_size() - 4, 64),
            ] {
                // SAFETY: the slice is never read by the guest, only passed to the monitor,
                // which checks it.
                let buf = unsafe { core::slice::from_raw_parts(addr as *const u8, len as usize) };
                pvm::println!("write({addr:#x}, {len}) = {}", pvm::hypercall::write(1, buf));
            }
            return 0;
        }
        _ => {
            pvm::eprintln!(
                "usage: crash divide|ud2|gp|null|null-write|write-text|stack-overflow|bad-hypercall|load-hypercall|hostile-write"
            );
            return 2;
        }
    }
    pvm::println!("survived {kind}?");
    0
}

fn pvm_abi_hypercall_va() -> u64 {
    pvm::hypercall::Hypercall::Write.address() - 8
}

#[inline(never)]
fn divide_by_zero() {
    let zero = core::hint::black_box(0u64);
    // SAFETY: deliberately divides by zero with the raw instruction (#DE); Rust's `/` would
    // panic before reaching the CPU.
    unsafe { asm!("div {0}", in(reg) zero, inout("rax") 1u64 => _, inout("rdx") 0u64 => _) }
}

#[inline(never)]
fn recurse(depth: u64) -> u64 {
    let frame = core::hint::black_box([depth; 512]);
    if core::hint::black_box(true) {
        recurse(depth + 1) + frame[7]
    } else {
        depth
    }
}
