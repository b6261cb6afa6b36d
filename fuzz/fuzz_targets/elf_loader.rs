//! Fuzzing of the guest image loader (`hypervisor_ext::loader`): arbitrary bytes as an image
//! (seeded with real guest images). Checked: nothing panics, and an image the loader accepts
//! keeps every promise the monitor builds on: segments page-aligned, sorted, disjoint, above the
//! reserved area, never writable and executable, the entry point in an executable segment; if it
//! fits a pVM's memory, loading it writes only inside its segments.
#![no_main]

use std::path::Path;

use hypervisor_ext::loader::{image_limit, Image};
use hypervisor_ext::vstate::memory::{Access, GuestMemory};
use libfuzzer_sys::fuzz_target;
use pvm_abi::layout;

fuzz_target!(|bytes: &[u8]| {
    let Ok(image) = Image::parse(Path::new("fuzz"), bytes.to_vec()) else {
        return;
    };
    let mut prev_end = layout::IMAGE_BASE;
    for s in &image.segments {
        assert!(s.start.is_multiple_of(layout::PAGE_SIZE) && s.end.is_multiple_of(layout::PAGE_SIZE));
        assert!(
            s.start >= prev_end && s.start < s.end,
            "segments sorted and disjoint"
        );
        assert!(!(s.perm.write && s.perm.exec), "W^X");
        prev_end = s.end;
    }
    assert!(image
        .segments
        .iter()
        .any(|s| s.perm.exec && (s.start..s.end).contains(&image.entry)));
    let mem_size = layout::MIN_MEM_SIZE;
    if image.check_fits(mem_size).is_err() {
        assert!(image.end() > image_limit(mem_size));
        return;
    }
    MEMORY.with(|mem| {
        image.load(mem).expect("an image that fits loads");
        // Nothing outside the segments was written (RAM is zero between runs): look at the
        // pages from below the image to past its end.
        let mut page = vec![0u8; layout::PAGE_SIZE as usize];
        let mut at = layout::IMAGE_BASE - 16 * layout::PAGE_SIZE;
        while at < (image.end() + 16 * layout::PAGE_SIZE).min(image_limit(mem_size)) {
            if !image.segments.iter().any(|s| (s.start..s.end).contains(&at)) {
                mem.read_bytes(at, &mut page, Access::Monitor)
                    .expect("inside RAM");
                assert!(
                    page.iter().all(|&b| b == 0),
                    "load wrote outside its segments at {at:#x}"
                );
            }
            at += layout::PAGE_SIZE;
        }
        // Zero again for the next run.
        for s in &image.segments {
            let zeros = vec![0u8; (s.end - s.start) as usize];
            mem.write_bytes(s.start, &zeros, Access::Monitor)
                .expect("inside RAM");
        }
    });
});

thread_local! {
    static MEMORY: GuestMemory = GuestMemory::new(layout::MIN_MEM_SIZE).expect("map guest RAM");
}
