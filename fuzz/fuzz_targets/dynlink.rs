//! Fuzzing of the library loader and relocator (`pvm_dynlink`): arbitrary bytes as a guest
//! library (seeded with real ones), linked at a library slot with a resolver that knows some
//! names. Checked: nothing panics; a library the parser accepts keeps every promise the monitor
//! builds on: segments in the pvm layout, never writable and executable, the shared part
//! page-aligned and inside the code part, every relocation inside the RELRO or writable part
//! (never the shared part); linking writes exactly the parts' sizes, and an accepted link has
//! no unresolved strong import.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pvm_abi::layout::{LIB_CODE_BASE, LIB_DATA_OFFSET, LIB_SLOT_SIZE, PAGE_SIZE};
use pvm_dynlink::{Kind, Library};

fuzz_target!(|bytes: &[u8]| {
    let Ok(lib) = Library::parse(bytes) else {
        return;
    };
    let layout = lib.layout();
    assert!(layout.shared_end.is_multiple_of(PAGE_SIZE));
    assert!(layout.relro_end.is_multiple_of(PAGE_SIZE) && layout.relro_end >= layout.shared_end);
    assert!(layout.relro_end <= LIB_SLOT_SIZE, "code part inside the slot");
    assert!(layout.data_start >= LIB_DATA_OFFSET && layout.data_end <= LIB_DATA_OFFSET + LIB_SLOT_SIZE);
    for s in lib.segments() {
        assert!(!(s.write && s.exec), "W^X");
    }
    for r in lib.relocs() {
        let in_relro = r.offset >= layout.shared_end && r.offset + 8 <= layout.relro_end;
        let in_data = r.offset >= layout.data_start && r.offset + 8 <= layout.data_end;
        assert!(
            in_relro || in_data,
            "relocation at {:#x} outside the private parts",
            r.offset
        );
        if let Kind::Symbol(i) = r.kind {
            assert!(i < lib.symbols().len());
        }
    }
    assert_eq!(lib.shared_image().len() as u64, layout.shared_end);
    let base = LIB_CODE_BASE + 3 * LIB_SLOT_SIZE;
    let known = |name: &str| {
        name.len()
            .is_multiple_of(2)
            .then_some(0x20_0000 + name.len() as u64)
    };
    match lib.link(base, known) {
        Ok(linked) => {
            assert_eq!(linked.relro.len() as u64, layout.relro_end - layout.shared_end);
            assert_eq!(linked.data.len() as u64, layout.data_end - layout.data_start);
            for s in lib.imports().filter(|s| !s.weak) {
                assert!(known(&s.name).is_some(), "{} resolved", s.name);
            }
        }
        Err(pvm_dynlink::LinkError::Unresolved(names)) => assert!(!names.is_empty()),
        Err(e) => panic!("unexpected link error {e}"),
    }
});
