//! Parsing and checking a guest library (an x86-64 ELF shared object linked with `pvmlib.ld`).
//!
//! Everything a later step relies on is checked here, once, with an error that names the
//! problem: the file's kind, its segments (no W+X; read-only and executable parts in the code
//! part of a library slot, writable ones in the data part), its dynamic section (no text
//! relocations, no constructors, no TLS), its relocations (kinds pvm applies, targets in memory
//! the monitor writes: never the shared part) and its symbols.
use goblin::container::{Container, Ctx, Endian};
use goblin::elf::dynamic::{Dynamic, DF_TEXTREL, DT_NEEDED, DT_RELA, DT_TEXTREL};
use goblin::elf::header::{EI_CLASS, EI_DATA, ELFCLASS64, ELFDATA2LSB, EM_X86_64, ET_DYN};
use goblin::elf::program_header::{ProgramHeader, PF_W, PF_X, PT_LOAD, PT_TLS};
use goblin::elf::reloc::RelocSection;
use goblin::elf::reloc::{
    R_X86_64_64, R_X86_64_COPY, R_X86_64_DTPMOD64, R_X86_64_DTPOFF64, R_X86_64_GLOB_DAT, R_X86_64_IRELATIVE,
    R_X86_64_JUMP_SLOT, R_X86_64_NONE, R_X86_64_RELATIVE, R_X86_64_TPOFF64,
};
use goblin::elf::sym::Symtab;
use goblin::elf::sym::{STB_GLOBAL, STB_WEAK, STT_GNU_IFUNC, STT_TLS, STV_HIDDEN, STV_INTERNAL};
use goblin::elf::Elf;
use pvm_abi::layout::{LIB_DATA_OFFSET, LIB_SLOT_SIZE, PAGE_SIZE};
use pvm_abi::LIB_VERSION_SYMBOL;

/// Largest library file accepted (a slot's code part).
pub const MAX_FILE_SIZE: usize = LIB_SLOT_SIZE as usize;
/// Most symbols a library may define or import.
pub const MAX_SYMBOLS: usize = 1 << 16;
/// Longest version string.
pub const MAX_VERSION_LEN: usize = 64;

/// Why a file is not a library pvm can load. Each names what is wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    /// Not an ELF file, or one goblin cannot read.
    #[error("not a valid ELF file: {0}")]
    Malformed(String),
    /// An ELF file, but not a 64-bit little-endian x86-64 shared object.
    #[error("not an x86-64 shared object ({0}): build it as a cdylib, or with -shared -fPIC")]
    NotSharedObject(&'static str),
    /// Larger than a library slot.
    #[error("the file is {0} bytes; a library is at most {MAX_FILE_SIZE} bytes")]
    TooLarge(usize),
    /// No dynamic section: nothing to link.
    #[error("no dynamic section (PT_DYNAMIC): not a shared object")]
    NoDynamic,
    /// A segment both writable and executable.
    #[error("segment at {vaddr:#x} is writable and executable (W+X)")]
    WritableExecutable {
        /// Its address.
        vaddr: u64,
    },
    /// A segment where the pvm layout has no room for it.
    #[error(
        "segment at {vaddr:#x}+{memsz:#x} ({kind}) is outside the pvm library layout: read-only \
         and executable segments below {LIB_SLOT_SIZE:#x}, writable ones at {LIB_DATA_OFFSET:#x} \
         (link with pvmlib.ld)"
    )]
    Layout {
        /// Its address.
        vaddr: u64,
        /// Its size in memory.
        memsz: u64,
        /// Writable or not.
        kind: &'static str,
    },
    /// Two segments overlap, or a segment's bytes are not in the file.
    #[error("segment at {vaddr:#x} is malformed: {what}")]
    BadSegment {
        /// Its address.
        vaddr: u64,
        /// What is wrong.
        what: &'static str,
    },
    /// Thread-local storage (PT_TLS, TLS symbols or relocations): a pVM has no TLS for libraries.
    #[error("the library uses thread-local storage ({0}), which pvm libraries cannot")]
    Tls(String),
    /// The dynamic section asks for text relocations.
    #[error("the library needs text relocations (DT_TEXTREL): rebuild it with -fPIC")]
    TextRelocations,
    /// A relocation would write the library's shared (code or read-only) part.
    #[error(
        "relocation at {offset:#x} writes the shared part (code and read-only data below \
         {shared_end:#x}): rebuild with -fPIC and link with pvmlib.ld"
    )]
    TextRelocation {
        /// Where it writes.
        offset: u64,
        /// End of the shared part.
        shared_end: u64,
    },
    /// A relocation outside every segment, or overlapping a segment's end.
    #[error("relocation at {0:#x} is outside the library's memory")]
    RelocationOutside(u64),
    /// A relocation kind pvm does not apply.
    #[error("relocation kind {kind} at {offset:#x} is not supported (pvm applies RELATIVE, 64, GLOB_DAT and JUMP_SLOT)")]
    UnsupportedRelocation {
        /// Its name.
        kind: &'static str,
        /// Where.
        offset: u64,
    },
    /// A relocation names a symbol that is not in the symbol table.
    #[error("relocation at {0:#x} names a symbol that does not exist")]
    BadSymbolIndex(u64),
    /// GNU indirect functions (ifunc) need code run at load time.
    #[error("symbol {0:?} is an indirect function (ifunc), which pvm does not run")]
    Ifunc(String),
    /// Constructors or destructors: pvm runs no code at load time.
    #[error("the library has {0} (constructors or destructors); pvm runs no code at load time")]
    Initializers(&'static str),
    /// A defined symbol outside the library's segments.
    #[error("symbol {name:?} at {value:#x} is outside the library's segments")]
    SymbolOutside {
        /// Its name.
        name: String,
        /// Its address.
        value: u64,
    },
    /// More symbols than pvm takes.
    #[error("the library has more than {MAX_SYMBOLS} symbols")]
    TooManySymbols,
    /// The version symbol is not a short NUL-terminated string in the file.
    #[error("{LIB_VERSION_SYMBOL} is not a NUL-terminated UTF-8 string of at most {MAX_VERSION_LEN} bytes")]
    BadVersion,
}

/// A loadable segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Address relative to the library's base.
    pub vaddr: u64,
    /// Size in memory.
    pub memsz: u64,
    /// Offset of its bytes in the file.
    pub offset: u64,
    /// Bytes in the file (the rest is zero).
    pub filesz: u64,
    /// Executable.
    pub exec: bool,
    /// Writable.
    pub write: bool,
}

impl Segment {
    fn end(&self) -> u64 {
        self.vaddr + self.memsz
    }
}

/// Where a library's parts lie, relative to its base: `[0, shared_end)` shared, `[shared_end,
/// relro_end)` relocated read-only, `[data_start, data_end)` writable (all page-aligned).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// End of the shared part.
    pub shared_end: u64,
    /// End of the RELRO part (it starts at `shared_end`).
    pub relro_end: u64,
    /// Start of the writable part (at or above `LIB_DATA_OFFSET`).
    pub data_start: u64,
    /// End of the writable part.
    pub data_end: u64,
}

/// What a relocation writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// base + addend.
    Relative,
    /// symbol + addend (R_X86_64_64, GLOB_DAT, JUMP_SLOT: all 64-bit absolute).
    Symbol(usize),
}

/// A checked relocation: writes 8 bytes at `offset` (relative to the base, in the RELRO or
/// writable part).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reloc {
    /// Where.
    pub offset: u64,
    /// What.
    pub kind: Kind,
    /// Addend.
    pub addend: i64,
}

/// A symbol of the library's dynamic symbol table that relocations or lookups use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Symbol<'a> {
    /// Its name (in the file's bytes).
    pub name: &'a str,
    /// Defined here: its address relative to the base. None: an import.
    pub value: Option<u64>,
    /// Weak (an unresolved weak import is 0, not an error).
    pub weak: bool,
}

/// A parsed and checked guest library, borrowing the file's bytes.
pub struct Library<'a> {
    bytes: &'a [u8],
    segments: Vec<Segment>,
    layout: Layout,
    relocs: Vec<Reloc>,
    symbols: Vec<Symbol<'a>>,
    needed: Vec<String>,
    version: Option<String>,
}

impl std::fmt::Debug for Library<'_> {
    // Everything but the file's bytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Library")
            .field("len", &self.bytes.len())
            .field("version", &self.version)
            .field("layout", &self.layout)
            .field("segments", &self.segments.len())
            .field("relocs", &self.relocs.len())
            .field("symbols", &self.symbols.len())
            .finish()
    }
}

fn round_up(x: u64) -> u64 {
    x.div_ceil(PAGE_SIZE) * PAGE_SIZE
}

fn round_down(x: u64) -> u64 {
    x / PAGE_SIZE * PAGE_SIZE
}

fn reloc_name(kind: u32) -> &'static str {
    match kind {
        R_X86_64_COPY => "COPY",
        R_X86_64_IRELATIVE => "IRELATIVE",
        R_X86_64_DTPMOD64 => "DTPMOD64",
        R_X86_64_DTPOFF64 => "DTPOFF64",
        R_X86_64_TPOFF64 => "TPOFF64",
        2 => "PC32",
        10 => "32",
        11 => "32S",
        24 => "PC64",
        _ => "other",
    }
}

/// What a loader reads of an ELF shared object: its header, program headers and dynamic
/// section, and the tables the dynamic section points at. Section headers (and the static symbol
/// table, debug information and the rest they describe) are never read: a stripped library
/// loads as well, and a large one costs no more to parse than its dynamic part.
struct Dyn<'a> {
    phdrs: Vec<ProgramHeader>,
    dynamic: Dynamic,
    /// The dynamic string table's bytes.
    strtab: &'a [u8],
    dynsyms: Symtab<'a>,
    /// The RELA and PLT relocations, decoded once.
    relocs: Vec<goblin::elf::Reloc>,
    /// Where the first REL relocation (without addend) writes, if there is one.
    rel: Option<u64>,
}

fn malformed(e: impl std::fmt::Display) -> ParseError {
    ParseError::Malformed(e.to_string())
}

/// A little-endian `u32` at `at` in `bytes`.
fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// How many symbols the dynamic symbol table holds, from its GNU hash table: one past the last
/// symbol of the longest chain (the table has no count of its own).
fn gnu_hash_symbols(bytes: &[u8], at: usize) -> Result<usize, ParseError> {
    let bad = || malformed("DT_GNU_HASH is outside the file or inconsistent");
    let nbuckets = read_u32(bytes, at).ok_or_else(bad)? as usize;
    let symoffset = read_u32(bytes, at + 4).ok_or_else(bad)? as usize;
    let bloom = read_u32(bytes, at + 8).ok_or_else(bad)? as usize;
    let buckets = bloom
        .checked_mul(8)
        .and_then(|b| b.checked_add(at + 16))
        .ok_or_else(bad)?;
    let chains = nbuckets
        .checked_mul(4)
        .and_then(|b| b.checked_add(buckets))
        .ok_or_else(bad)?;
    if chains > bytes.len() {
        return Err(bad());
    }
    let last = (0..nbuckets)
        .filter_map(|i| read_u32(bytes, buckets + 4 * i))
        .max()
        .unwrap_or(0) as usize;
    if last < symoffset {
        return Ok(symoffset);
    }
    // Walk the last bucket's chain to its end (the entry with bit 0 set).
    let mut sym = last;
    loop {
        if sym > MAX_SYMBOLS {
            return Err(ParseError::TooManySymbols);
        }
        let hash = read_u32(bytes, chains + 4 * (sym - symoffset)).ok_or_else(bad)?;
        sym += 1;
        if hash & 1 != 0 {
            return Ok(sym);
        }
    }
}

impl<'a> Dyn<'a> {
    fn parse(bytes: &'a [u8]) -> Result<Dyn<'a>, ParseError> {
        let header = Elf::parse_header(bytes).map_err(malformed)?;
        if header.e_ident[EI_CLASS] != ELFCLASS64 || header.e_ident[EI_DATA] != ELFDATA2LSB {
            return Err(ParseError::NotSharedObject("not 64-bit little-endian"));
        }
        if header.e_machine != EM_X86_64 {
            return Err(ParseError::NotSharedObject("not x86-64"));
        }
        if header.e_type != ET_DYN {
            return Err(ParseError::NotSharedObject("not ET_DYN"));
        }
        // Section headers are not read, but where the header says they are, the file must reach:
        // a truncated file is refused even when its loadable part survived.
        let shdrs_end = u64::from(header.e_shnum)
            .checked_mul(u64::from(header.e_shentsize))
            .and_then(|len| len.checked_add(header.e_shoff));
        if shdrs_end.is_none_or(|end| end > bytes.len() as u64) {
            return Err(malformed(
                "the file is truncated (it ends before its section headers)",
            ));
        }
        let ctx = Ctx::new(Container::Big, Endian::Little);
        let phdrs = ProgramHeader::parse(bytes, header.e_phoff as usize, header.e_phnum as usize, ctx)
            .map_err(malformed)?;
        let dynamic = Dynamic::parse(bytes, &phdrs, ctx)
            .map_err(malformed)?
            .ok_or(ParseError::NoDynamic)?;
        let info = &dynamic.info;
        let strtab = info
            .strtab
            .checked_add(info.strsz)
            .and_then(|end| bytes.get(info.strtab..end))
            .filter(|t| !t.is_empty())
            .ok_or_else(|| malformed("the dynamic string table is outside the file"))?;
        let relocs = |at: usize, len: usize, rela: bool| {
            RelocSection::parse(bytes, at, len, rela, ctx).map_err(malformed)
        };
        let rela = relocs(info.rela, info.relasz, true)?;
        let rel = relocs(info.rel, info.relsz, false)?;
        let plt = relocs(info.jmprel, info.pltrelsz, info.pltrel == DT_RELA)?;
        let defined = match (info.gnu_hash, info.hash) {
            (Some(at), _) => gnu_hash_symbols(bytes, at as usize)?,
            // DT_HASH: nchain, the second word, is the symbol count.
            (None, Some(at)) => read_u32(bytes, at as usize + 4)
                .ok_or_else(|| malformed("DT_HASH is outside the file"))?
                as usize,
            (None, None) => 0,
        };
        let relocs: Vec<_> = rela.iter().chain(plt.iter()).collect();
        let referenced = relocs.iter().map(|r| r.r_sym + 1).max().unwrap_or(0);
        let count = defined.max(referenced);
        if count > MAX_SYMBOLS {
            return Err(ParseError::TooManySymbols);
        }
        let dynsyms = if count == 0 {
            Symtab::default()
        } else {
            Symtab::parse(bytes, info.symtab, count, ctx).map_err(malformed)?
        };
        Ok(Dyn {
            phdrs,
            dynamic,
            strtab,
            dynsyms,
            relocs,
            rel: rel.iter().next().map(|r| r.r_offset),
        })
    }

    /// The dynamic string table's string at `at`.
    fn name(&self, at: usize) -> Result<&'a str, ParseError> {
        let bad = || {
            malformed(format_args!(
                "string {at:#x} of the dynamic string table is not a NUL-terminated UTF-8 string in it"
            ))
        };
        let tail = self.strtab.get(at..).ok_or_else(bad)?;
        let end = tail.iter().position(|&b| b == 0).ok_or_else(bad)?;
        std::str::from_utf8(&tail[..end]).map_err(|_| bad())
    }
}

impl<'a> Library<'a> {
    /// Parses and checks `bytes` as a guest library.
    pub fn parse(bytes: &'a [u8]) -> Result<Library<'a>, ParseError> {
        if bytes.len() > MAX_FILE_SIZE {
            return Err(ParseError::TooLarge(bytes.len()));
        }
        let elf = Dyn::parse(bytes)?;
        let segments = Self::read_segments(&elf.phdrs, bytes.len() as u64)?;
        let info = &elf.dynamic.info;
        if info.textrel
            || info.flags & DF_TEXTREL != 0
            || elf.dynamic.dyns.iter().any(|d| d.d_tag == DT_TEXTREL)
        {
            return Err(ParseError::TextRelocations);
        }
        if info.init != 0 || info.init_arraysz != 0 {
            return Err(ParseError::Initializers("DT_INIT or DT_INIT_ARRAY"));
        }
        if info.fini != 0 || info.fini_arraysz != 0 {
            return Err(ParseError::Initializers("DT_FINI or DT_FINI_ARRAY"));
        }
        if let Some(offset) = elf.rel {
            return Err(ParseError::UnsupportedRelocation {
                kind: "REL (without addend)",
                offset,
            });
        }
        let layout = Self::compute_layout(&segments);
        let mut relocs = Vec::with_capacity(elf.relocs.len());
        for r in &elf.relocs {
            if let Some(reloc) = Self::reloc(r, elf.dynsyms.len(), &segments, &layout)? {
                relocs.push(reloc);
            }
        }
        // Keep only the symbols something uses: definitions (lookups) and imports relocations
        // name; `Kind::Symbol` indexes into the dynamic symbol table, so renumber them.
        let mut used = vec![u32::MAX; elf.dynsyms.len()];
        for r in &relocs {
            if let Kind::Symbol(i) = r.kind {
                used[i] = 0;
            }
        }
        let symbols = Self::read_symbols(&elf, &segments, &mut used)?;
        for r in &mut relocs {
            if let Kind::Symbol(i) = r.kind {
                r.kind = Kind::Symbol(used[i] as usize);
            }
        }
        let needed = elf
            .dynamic
            .dyns
            .iter()
            .filter(|d| d.d_tag == DT_NEEDED)
            .map(|d| elf.name(d.d_val as usize).map(str::to_string))
            .collect::<Result<_, _>>()?;
        let mut lib = Library {
            bytes,
            segments,
            layout,
            relocs,
            symbols,
            needed,
            version: None,
        };
        lib.version = lib.read_version()?;
        Ok(lib)
    }

    fn read_segments(phdrs: &[ProgramHeader], file_len: u64) -> Result<Vec<Segment>, ParseError> {
        if phdrs.iter().any(|p| p.p_type == PT_TLS) {
            return Err(ParseError::Tls("a PT_TLS segment".into()));
        }
        let mut segments = Vec::new();
        for p in phdrs.iter().filter(|p| p.p_type == PT_LOAD) {
            let seg = Segment {
                vaddr: p.p_vaddr,
                memsz: p.p_memsz,
                offset: p.p_offset,
                filesz: p.p_filesz,
                exec: p.p_flags & PF_X != 0,
                write: p.p_flags & PF_W != 0,
            };
            let bad = |what| ParseError::BadSegment {
                vaddr: seg.vaddr,
                what,
            };
            if seg.memsz == 0 {
                continue;
            }
            if seg.exec && seg.write {
                return Err(ParseError::WritableExecutable { vaddr: seg.vaddr });
            }
            if seg.filesz > seg.memsz {
                return Err(bad("more bytes in the file than in memory"));
            }
            if seg.offset.checked_add(seg.filesz).is_none_or(|e| e > file_len) {
                return Err(bad("its bytes extend past the end of the file"));
            }
            let (lo, hi, kind) = if seg.write {
                (LIB_DATA_OFFSET, LIB_DATA_OFFSET + LIB_SLOT_SIZE, "writable")
            } else {
                (0, LIB_SLOT_SIZE, "read-only")
            };
            if seg.vaddr < lo || seg.vaddr.checked_add(seg.memsz).is_none_or(|e| e > hi) {
                return Err(ParseError::Layout {
                    vaddr: seg.vaddr,
                    memsz: seg.memsz,
                    kind,
                });
            }
            segments.push(seg);
        }
        segments.sort_by_key(|s| s.vaddr);
        for w in segments.windows(2) {
            if w[0].end() > w[1].vaddr {
                return Err(ParseError::BadSegment {
                    vaddr: w[1].vaddr,
                    what: "it overlaps the segment before it",
                });
            }
        }
        if segments.is_empty() {
            return Err(ParseError::BadSegment {
                vaddr: 0,
                what: "the library has no loadable segment",
            });
        }
        Ok(segments)
    }

    /// The shared part ends at the page after the last executable segment: code and the
    /// read-only data before it never change from one pVM to another. Read-only segments after
    /// it are the RELRO part.
    fn compute_layout(segments: &[Segment]) -> Layout {
        let code_end = round_up(
            segments
                .iter()
                .filter(|s| !s.write)
                .map(Segment::end)
                .max()
                .unwrap_or(0),
        );
        let shared_end = round_up(
            segments
                .iter()
                .filter(|s| s.exec)
                .map(Segment::end)
                .max()
                .unwrap_or(0),
        );
        let data = segments.iter().filter(|s| s.write);
        let data_start = data
            .clone()
            .map(|s| round_down(s.vaddr))
            .min()
            .unwrap_or(LIB_DATA_OFFSET);
        let data_end = round_up(data.map(Segment::end).max().unwrap_or(LIB_DATA_OFFSET));
        Layout {
            shared_end,
            relro_end: code_end.max(shared_end),
            data_start,
            data_end,
        }
    }

    /// The definitions, and the symbols relocations use (`used[i]` is not `u32::MAX`): `used[i]`
    /// becomes the index of symbol `i` in what this returns.
    fn read_symbols(
        elf: &Dyn<'a>,
        segments: &[Segment],
        used: &mut [u32],
    ) -> Result<Vec<Symbol<'a>>, ParseError> {
        let mut out = Vec::new();
        for (i, sym) in elf.dynsyms.iter().enumerate() {
            let bind = sym.st_bind();
            let exported = (bind == STB_GLOBAL || bind == STB_WEAK)
                && sym.st_visibility() != STV_HIDDEN
                && sym.st_visibility() != STV_INTERNAL;
            let defined = sym.st_shndx != 0;
            let name = || elf.name(sym.st_name);
            if sym.st_type() == STT_TLS {
                return Err(ParseError::Tls(format!("symbol {:?}", name()?)));
            }
            if defined && exported && sym.st_type() == STT_GNU_IFUNC {
                return Err(ParseError::Ifunc(name()?.to_string()));
            }
            let definition = defined && exported && sym.st_name != 0;
            if !definition && used[i] == u32::MAX {
                continue;
            }
            let value = if definition {
                // A definition (absolute symbols, SHN_ABS, are refused with the others outside).
                let inside = segments
                    .iter()
                    .any(|s| sym.st_value >= s.vaddr && sym.st_value <= s.end());
                if !inside {
                    return Err(ParseError::SymbolOutside {
                        name: name()?.to_string(),
                        value: sym.st_value,
                    });
                }
                Some(sym.st_value)
            } else {
                None
            };
            used[i] = out.len() as u32;
            out.push(Symbol {
                name: name()?,
                value,
                weak: bind == STB_WEAK,
            });
        }
        Ok(out)
    }

    fn reloc(
        r: &goblin::elf::Reloc,
        nsyms: usize,
        segments: &[Segment],
        layout: &Layout,
    ) -> Result<Option<Reloc>, ParseError> {
        let offset = r.r_offset;
        let kind = match r.r_type {
            R_X86_64_NONE => return Ok(None),
            R_X86_64_RELATIVE => Kind::Relative,
            R_X86_64_64 | R_X86_64_GLOB_DAT | R_X86_64_JUMP_SLOT => {
                if r.r_sym == 0 || r.r_sym >= nsyms {
                    return Err(ParseError::BadSymbolIndex(offset));
                }
                Kind::Symbol(r.r_sym)
            }
            R_X86_64_DTPMOD64 | R_X86_64_DTPOFF64 | R_X86_64_TPOFF64 | 19..=23 => {
                return Err(ParseError::Tls(format!("relocation at {offset:#x}")));
            }
            other => {
                return Err(ParseError::UnsupportedRelocation {
                    kind: reloc_name(other),
                    offset,
                })
            }
        };
        let end = offset
            .checked_add(8)
            .ok_or(ParseError::RelocationOutside(offset))?;
        let Some(seg) = segments.iter().find(|s| offset >= s.vaddr && end <= s.end()) else {
            return Err(ParseError::RelocationOutside(offset));
        };
        if !seg.write && offset < layout.shared_end {
            return Err(ParseError::TextRelocation {
                offset,
                shared_end: layout.shared_end,
            });
        }
        Ok(Some(Reloc {
            offset,
            kind,
            addend: r.r_addend.unwrap_or(0),
        }))
    }

    fn read_version(&self) -> Result<Option<String>, ParseError> {
        let Some(value) = self
            .symbols
            .iter()
            .find(|s| s.name == LIB_VERSION_SYMBOL)
            .and_then(|s| s.value)
        else {
            return Ok(None);
        };
        let bytes = self
            .file_bytes_at(value, MAX_VERSION_LEN + 1)
            .ok_or(ParseError::BadVersion)?;
        let end = bytes.iter().position(|&b| b == 0).ok_or(ParseError::BadVersion)?;
        let text = std::str::from_utf8(&bytes[..end]).map_err(|_| ParseError::BadVersion)?;
        if text.is_empty() || text.chars().any(char::is_control) {
            return Err(ParseError::BadVersion);
        }
        Ok(Some(text.to_string()))
    }

    /// Up to `len` bytes of the file backing address `vaddr` (fewer at a segment's end).
    fn file_bytes_at(&self, vaddr: u64, len: usize) -> Option<&'a [u8]> {
        let seg = self
            .segments
            .iter()
            .find(|s| vaddr >= s.vaddr && vaddr < s.vaddr + s.filesz)?;
        let start = (seg.offset + (vaddr - seg.vaddr)) as usize;
        let end = (seg.offset + seg.filesz) as usize;
        let bytes = self.bytes; // The file outlives `self`.
        Some(&bytes[start..end.min(start + len)])
    }

    /// The loadable segments, by address.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Where the parts lie.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The checked relocations.
    pub fn relocs(&self) -> &[Reloc] {
        &self.relocs
    }

    /// The symbols relocations use and the ones it defines.
    pub fn symbols(&self) -> &[Symbol<'a>] {
        &self.symbols
    }

    /// What it defines for others: (name, address relative to the base).
    pub fn exports(&self) -> impl Iterator<Item = (&'a str, u64)> + '_ {
        self.symbols.iter().filter_map(|s| s.value.map(|v| (s.name, v)))
    }

    /// The symbols it needs from elsewhere (strong imports; weak ones may stay unresolved).
    pub fn imports(&self) -> impl Iterator<Item = &Symbol<'a>> {
        self.symbols.iter().filter(|s| s.value.is_none())
    }

    /// The libraries it names as needed (DT_NEEDED).
    pub fn needed(&self) -> &[String] {
        &self.needed
    }

    /// Its version ([`LIB_VERSION_SYMBOL`]), if it declares one.
    pub fn version(&self) -> Option<&str> {
        self.version.as_deref()
    }

    /// The shared part's bytes: the segments below [`Layout::shared_end`] as they lie in
    /// memory. It depends on the file only (no relocation writes it), so every pVM that loads
    /// the library may map one copy.
    pub fn shared_image(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.layout.shared_end as usize];
        self.copy_part(&mut out, 0);
        out
    }

    /// Copies the file bytes of every segment overlapping `[start, start + out.len())` into
    /// `out` (the rest stays as it was: zero).
    pub(crate) fn copy_part(&self, out: &mut [u8], start: u64) {
        let end = start + out.len() as u64;
        for seg in &self.segments {
            let lo = seg.vaddr.max(start);
            let hi = (seg.vaddr + seg.filesz).min(end);
            if lo < hi {
                let src = (seg.offset + (lo - seg.vaddr)) as usize;
                let len = (hi - lo) as usize;
                let dst = (lo - start) as usize;
                out[dst..dst + len].copy_from_slice(&self.bytes[src..src + len]);
            }
        }
    }
}
