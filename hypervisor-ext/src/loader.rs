//! Guest image loading: parse and validate a static x86-64 ELF executable, check its ABI note,
//! enforce W^X, and copy its segments into guest memory.
use std::path::{Path, PathBuf};

use goblin::elf::{header, program_header, Elf};
use pvm_abi::{layout, ABI_VERSION, NOTE_NAME, NOTE_TYPE_ABI_VERSION};

use crate::arch::Perm;
use crate::vstate::memory::{Access, GuestMemory, MemoryError};

/// Why an image cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The image path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file does not start with the ELF magic.
    #[error("{0} is not an ELF file")]
    NotElf(PathBuf),
    /// The ELF headers are malformed.
    #[error("{path} is a malformed ELF file: {source}")]
    Malformed {
        /// The image path.
        path: PathBuf,
        /// What goblin found wrong.
        source: goblin::error::Error,
    },
    /// Not a 64-bit little-endian x86-64 image.
    #[error("{path} is not an x86-64 64-bit image (machine {machine}, class {class})")]
    WrongArch {
        /// The image path.
        path: PathBuf,
        /// ELF e_machine.
        machine: String,
        /// "ELF32" or "ELF64".
        class: &'static str,
    },
    /// Not a static executable (ET_EXEC).
    #[error("{path} is not a static executable (ELF type {kind}); build it with the pvm guest settings (relocation-model=static)")]
    NotExecutable {
        /// The image path.
        path: PathBuf,
        /// ELF e_type.
        kind: String,
    },
    /// No pvm ABI note: not linked against the pvm runtime.
    #[error("{0} is not a pvm guest: it has no pvm ABI note (link it against the `pvm` runtime crate)")]
    MissingAbiNote(PathBuf),
    /// The ABI note names another version.
    #[error("{path} was built for pvm ABI version {found}, this monitor speaks version {expected}: rebuild it against this pvm")]
    AbiMismatch {
        /// The image path.
        path: PathBuf,
        /// Version in the image.
        found: u32,
        /// Version of this monitor.
        expected: u32,
    },
    /// The export table (`pvm::export!`) is malformed.
    #[error("{path}: {source}")]
    Exports {
        /// The image path.
        path: PathBuf,
        /// What is wrong with it.
        source: pvm_dynlink::ExportsError,
    },
    /// A segment is both writable and executable.
    #[error("{path}: segment at {vaddr:#x} is writable and executable; pvm enforces W^X")]
    WriteExecute {
        /// The image path.
        path: PathBuf,
        /// Segment address.
        vaddr: u64,
    },
    /// A segment lies (partly) in the monitor's reserved area.
    #[error(
        "{path}: segment at {vaddr:#x}+{memsz:#x} overlaps the monitor's reserved area (below {limit:#x})"
    )]
    ReservedOverlap {
        /// The image path.
        path: PathBuf,
        /// Segment address.
        vaddr: u64,
        /// Segment size in memory.
        memsz: u64,
        /// First address available to images.
        limit: u64,
    },
    /// A segment does not fit in guest memory (below the stack).
    #[error("{path}: image needs memory up to {end:#x} but only {limit:#x} is available below the stack with --mem {mem_mib} MiB")]
    TooLarge {
        /// The image path.
        path: PathBuf,
        /// End of the highest segment.
        end: u64,
        /// Highest address available to the image.
        limit: u64,
        /// Guest memory size in MiB.
        mem_mib: u64,
    },
    /// Segment file contents lie outside the file, or filesz > memsz, or segments overlap.
    #[error("{path}: malformed segment at {vaddr:#x}: {what}")]
    BadSegment {
        /// The image path.
        path: PathBuf,
        /// Segment address.
        vaddr: u64,
        /// What is wrong.
        what: &'static str,
    },
    /// No loadable segment, or the entry point is not in an executable segment.
    #[error("{path}: entry point {entry:#x} is not inside an executable segment")]
    BadEntry {
        /// The image path.
        path: PathBuf,
        /// e_entry.
        entry: u64,
    },
    /// Copying into guest memory failed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
}

/// One loadable segment, page-aligned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// First page.
    pub start: u64,
    /// End of the last page (exclusive).
    pub end: u64,
    /// Permissions.
    pub perm: Perm,
    file_range: std::ops::Range<usize>,
    vaddr: u64,
}

/// A validated guest image, not yet copied into memory.
pub struct Image {
    /// Where the image came from.
    pub path: PathBuf,
    /// Entry point.
    pub entry: u64,
    /// Loadable segments, sorted by address, page-aligned, non-overlapping.
    pub segments: Vec<Segment>,
    /// What the app exports to the libraries it loads (`pvm::export!`).
    pub exports: Vec<pvm_dynlink::Export>,
    bytes: Vec<u8>,
}

fn page_down(x: u64) -> u64 {
    x & !(layout::PAGE_SIZE - 1)
}

fn page_up(x: u64) -> Option<u64> {
    Some(x.checked_add(layout::PAGE_SIZE - 1)? & !(layout::PAGE_SIZE - 1))
}

/// Highest address an image may use in a pVM with `mem_size` bytes of RAM.
pub fn image_limit(mem_size: u64) -> u64 {
    mem_size - layout::STACK_SIZE - layout::STACK_GUARD_SIZE
}

impl Image {
    /// Reads and validates the image at `path`.
    pub fn open(path: &Path) -> Result<Image, LoadError> {
        let bytes = crate::sys::read_file(path).map_err(|source| LoadError::Read {
            path: path.into(),
            source,
        })?;
        Image::parse(path, bytes)
    }

    /// Validates an image held in memory; `path` is only used in messages.
    pub fn parse(path: &Path, bytes: Vec<u8>) -> Result<Image, LoadError> {
        let path = path.to_path_buf();
        if bytes.len() < 4 || &bytes[..4] != header::ELFMAG {
            return Err(LoadError::NotElf(path));
        }
        let elf = Elf::parse(&bytes).map_err(|source| LoadError::Malformed {
            path: path.clone(),
            source,
        })?;
        let h = &elf.header;
        if h.e_machine != header::EM_X86_64 || !elf.is_64 || !elf.little_endian {
            return Err(LoadError::WrongArch {
                machine: header::machine_to_str(h.e_machine).to_string(),
                class: if elf.is_64 { "ELF64" } else { "ELF32" },
                path,
            });
        }
        if h.e_type != header::ET_EXEC {
            return Err(LoadError::NotExecutable {
                kind: header::et_to_str(h.e_type).to_string(),
                path,
            });
        }
        check_abi_note(&path, &elf, &bytes)?;

        let mut segments = Vec::new();
        for ph in elf
            .program_headers
            .iter()
            .filter(|ph| ph.p_type == program_header::PT_LOAD)
        {
            let bad = |what| LoadError::BadSegment {
                path: path.clone(),
                vaddr: ph.p_vaddr,
                what,
            };
            let perm = Perm {
                write: ph.is_write(),
                exec: ph.is_executable(),
                user: true,
            };
            if perm.write && perm.exec {
                return Err(LoadError::WriteExecute {
                    path,
                    vaddr: ph.p_vaddr,
                });
            }
            if ph.p_filesz > ph.p_memsz {
                return Err(bad("file size larger than memory size"));
            }
            let file_end = ph
                .p_offset
                .checked_add(ph.p_filesz)
                .ok_or_else(|| bad("file range overflows"))?;
            if file_end > bytes.len() as u64 {
                return Err(bad("contents lie beyond the end of the file"));
            }
            let end = ph
                .p_vaddr
                .checked_add(ph.p_memsz)
                .and_then(page_up)
                .ok_or_else(|| bad("address range overflows"))?;
            if ph.p_memsz == 0 {
                continue;
            }
            segments.push(Segment {
                start: page_down(ph.p_vaddr),
                end,
                perm,
                file_range: ph.p_offset as usize..file_end as usize,
                vaddr: ph.p_vaddr,
            });
        }
        segments.sort_by_key(|s| s.start);
        for pair in segments.windows(2) {
            if pair[1].start < pair[0].end {
                return Err(LoadError::BadSegment {
                    path,
                    vaddr: pair[1].vaddr,
                    what: "shares a page with another segment",
                });
            }
        }
        for s in &segments {
            if s.start < layout::IMAGE_BASE {
                return Err(LoadError::ReservedOverlap {
                    path,
                    vaddr: s.vaddr,
                    memsz: s.end - s.start,
                    limit: layout::IMAGE_BASE,
                });
            }
        }
        let entry = h.e_entry;
        if !segments
            .iter()
            .any(|s| s.perm.exec && (s.start..s.end).contains(&entry))
        {
            return Err(LoadError::BadEntry { path, entry });
        }
        let exports = match pvm_dynlink::exports_of(&elf, &bytes) {
            Ok(e) => e,
            Err(source) => return Err(LoadError::Exports { path, source }),
        };
        Ok(Image {
            path,
            entry,
            segments,
            exports,
            bytes,
        })
    }

    /// End of the highest segment (page-aligned): the heap starts here.
    pub fn end(&self) -> u64 {
        self.segments.last().map_or(layout::IMAGE_BASE, |s| s.end)
    }

    /// Checks the image fits below the stack of a pVM with `mem_size` bytes of RAM.
    pub fn check_fits(&self, mem_size: u64) -> Result<(), LoadError> {
        let limit = image_limit(mem_size);
        if self.end() > limit {
            return Err(LoadError::TooLarge {
                path: self.path.clone(),
                end: self.end(),
                limit,
                mem_mib: mem_size >> 20,
            });
        }
        Ok(())
    }

    /// Copies the segments' file contents into guest memory (the rest of each segment is RAM
    /// that is still zero).
    pub fn load(&self, mem: &GuestMemory) -> Result<(), LoadError> {
        self.check_fits(mem.size())?;
        for s in &self.segments {
            mem.write_bytes(s.vaddr, &self.bytes[s.file_range.clone()], Access::Monitor)?;
        }
        Ok(())
    }
}

fn check_abi_note(path: &Path, elf: &Elf<'_>, bytes: &[u8]) -> Result<(), LoadError> {
    let notes = elf.iter_note_headers(bytes).into_iter().flatten();
    let mut found = None;
    for note in notes {
        let Ok(note) = note else {
            continue;
        };
        if note.name.trim_end_matches('\0') == NOTE_NAME && note.n_type == NOTE_TYPE_ABI_VERSION {
            found = note
                .desc
                .get(..4)
                .map(|d| u32::from_le_bytes([d[0], d[1], d[2], d[3]]));
            break;
        }
    }
    match found {
        None => Err(LoadError::MissingAbiNote(path.into())),
        Some(v) if v != ABI_VERSION => Err(LoadError::AbiMismatch {
            path: path.into(),
            found: v,
            expected: ABI_VERSION,
        }),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_non_elf_and_truncated() {
        let p = Path::new("x");
        assert!(matches!(
            Image::parse(p, b"#!/bin/sh\n".to_vec()),
            Err(LoadError::NotElf(_))
        ));
        assert!(matches!(Image::parse(p, vec![]), Err(LoadError::NotElf(_))));
        let mut truncated = header::ELFMAG.to_vec();
        truncated.extend_from_slice(&[2, 1, 1]);
        assert!(matches!(
            Image::parse(p, truncated),
            Err(LoadError::Malformed { .. })
        ));
    }
}
