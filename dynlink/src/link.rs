//! Relocating a parsed library for one place in one pVM: the RELRO and writable parts as they
//! must lie in memory, every relocation applied, every import resolved (or the link refused,
//! naming what is missing). The shared part needs nothing: no relocation writes it.
use crate::library::{Kind, Library};

/// Why a library cannot be linked.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LinkError {
    /// Imports that neither the app nor a loaded library defines.
    #[error(
        "unresolved symbol{}: {} (export it from the app with pvm::export!, or load the library \
         that defines it first)",
        if .0.len() == 1 { "" } else { "s" },
        .0.join(", ")
    )]
    Unresolved(Vec<String>),
    /// The base is not page-aligned.
    #[error("library base {0:#x} is not page-aligned")]
    Misaligned(u64),
}

/// A library relocated for one base: the bytes of its private parts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Linked {
    /// The RELRO part, `[shared_end, relro_end)` of the layout.
    pub relro: Vec<u8>,
    /// The writable part, `[data_start, data_end)` of the layout.
    pub data: Vec<u8>,
}

impl Library<'_> {
    /// Relocates the library for `base` (its code part at `base`, its writable part at `base +
    /// data_start`), resolving each import with `resolve` (None: not defined anywhere).
    /// Definitions of the library itself bind locally.
    pub fn link(&self, base: u64, mut resolve: impl FnMut(&str) -> Option<u64>) -> Result<Linked, LinkError> {
        if !base.is_multiple_of(pvm_abi::layout::PAGE_SIZE) {
            return Err(LinkError::Misaligned(base));
        }
        let layout = self.layout();
        let mut relro = vec![0u8; (layout.relro_end - layout.shared_end) as usize];
        let mut data = vec![0u8; (layout.data_end - layout.data_start) as usize];
        self.copy_part(&mut relro, layout.shared_end);
        self.copy_part(&mut data, layout.data_start);

        let symbols = self.symbols();
        let mut values = Vec::with_capacity(symbols.len());
        let mut missing = Vec::new();
        for sym in symbols {
            values.push(match sym.value {
                Some(v) => base.wrapping_add(v),
                None => match resolve(sym.name) {
                    Some(addr) => addr,
                    None if sym.weak => 0,
                    None => {
                        missing.push(sym.name.to_string());
                        0
                    }
                },
            });
        }
        if !missing.is_empty() {
            missing.sort();
            missing.dedup();
            return Err(LinkError::Unresolved(missing));
        }
        for r in self.relocs() {
            let value = match r.kind {
                Kind::Relative => base.wrapping_add_signed(r.addend),
                Kind::Symbol(i) => values[i].wrapping_add_signed(r.addend),
            };
            // Parsing checked that each target lies in the RELRO or writable part.
            let (part, start) = if r.offset >= layout.data_start {
                (&mut data, layout.data_start)
            } else {
                (&mut relro, layout.shared_end)
            };
            let at = (r.offset - start) as usize;
            part[at..at + 8].copy_from_slice(&value.to_le_bytes());
        }
        Ok(Linked { relro, data })
    }
}
