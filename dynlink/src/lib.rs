//! Guest libraries, host side: parsing and checking an ELF shared object built for pvm
//! ([`Library::parse`]), relocating it for a place in one pVM ([`Library::link`]), and reading
//! the exports of a static guest image ([`app_exports`]). No KVM here: the monitor maps what
//! this crate produces.
//!
//! A pvm library is linked with `pvmlib.ld` (in `pvm-runtime/`): its read-only and executable
//! segments from 0 (the *code part*), its writable segment at `LIB_DATA_OFFSET` (the *data
//! part*). The code part splits into the *shared part*, everything up to the end of the last
//! executable segment, which no relocation may write, so one copy serves every pVM; and the
//! *RELRO part* after it, which the monitor relocates per pVM and the guest may only read.
mod exports;
mod library;
mod link;

pub use exports::{app_exports, exports_of, Export, ExportsError, MAX_EXPORTS};
pub use library::{
    Kind, Layout, Library, ParseError, Reloc, Segment, Symbol, MAX_FILE_SIZE, MAX_SYMBOLS, MAX_VERSION_LEN,
};
pub use link::{LinkError, Linked};
