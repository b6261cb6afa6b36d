//! The exports of a static guest image: the [`ExportRecord`]s `pvm::export!` writes into its
//! `.pvm.exports` section (a static image has no dynamic symbol table to read instead).
use goblin::elf::program_header::PT_LOAD;
use goblin::elf::Elf;
use pvm_abi::{ExportRecord, EXPORTS_SECTION};

/// Most exports an image may have.
pub const MAX_EXPORTS: usize = 4096;
/// Longest export name.
pub const MAX_NAME_LEN: u64 = 256;

/// Why an image's export table cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExportsError {
    /// Not an ELF file goblin can read.
    #[error("not a valid ELF file: {0}")]
    Malformed(String),
    /// The section is not a whole number of records, or too large.
    #[error("the {EXPORTS_SECTION} section is malformed ({0})")]
    BadTable(&'static str),
    /// A record's name or address is not in the image.
    #[error("export record {index} is malformed ({what})")]
    BadRecord {
        /// Which record.
        index: usize,
        /// What is wrong.
        what: &'static str,
    },
}

/// One export: a name and its address in the image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Export {
    /// The name.
    pub name: String,
    /// The address.
    pub addr: u64,
}

/// Reads the exports of the static image `bytes` (none if it has no export section).
pub fn app_exports(bytes: &[u8]) -> Result<Vec<Export>, ExportsError> {
    let elf = Elf::parse(bytes).map_err(|e| ExportsError::Malformed(e.to_string()))?;
    exports_of(&elf, bytes)
}

/// [`app_exports`] of an image already parsed as `elf` (the image loader's, so a boot parses
/// it once).
pub fn exports_of(elf: &Elf<'_>, bytes: &[u8]) -> Result<Vec<Export>, ExportsError> {
    let Some(section) = elf
        .section_headers
        .iter()
        .find(|s| elf.shdr_strtab.get_at(s.sh_name) == Some(EXPORTS_SECTION))
    else {
        return Ok(Vec::new());
    };
    let record = size_of::<ExportRecord>() as u64;
    if section.sh_size % record != 0 {
        return Err(ExportsError::BadTable("not a whole number of records"));
    }
    if section.sh_size / record > MAX_EXPORTS as u64 {
        return Err(ExportsError::BadTable("too many records"));
    }
    let table = section
        .sh_offset
        .checked_add(section.sh_size)
        .and_then(|end| bytes.get(section.sh_offset as usize..end as usize))
        .ok_or(ExportsError::BadTable("outside the file"))?;
    let loads: Vec<_> = elf
        .program_headers
        .iter()
        .filter(|p| p.p_type == PT_LOAD)
        .map(|p| (p.p_vaddr, p.p_memsz, p.p_offset, p.p_filesz))
        .collect();
    // The file bytes at `vaddr`, `len` long, if the image loads them from the file.
    let file_bytes = |vaddr: u64, len: u64| {
        loads.iter().find_map(|&(va, _, off, filesz)| {
            let end = vaddr.checked_add(len)?;
            if vaddr >= va && end <= va + filesz {
                bytes.get((off + vaddr - va) as usize..(off + end - va) as usize)
            } else {
                None
            }
        })
    };
    let mut out = Vec::with_capacity(table.len() / record as usize);
    for (index, chunk) in table.chunks_exact(record as usize).enumerate() {
        let field = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&chunk[i * 8..i * 8 + 8]);
            u64::from_le_bytes(b)
        };
        let (name, name_len, addr) = (field(0), field(1), field(2));
        let bad = |what| ExportsError::BadRecord { index, what };
        if name_len == 0 || name_len > MAX_NAME_LEN {
            return Err(bad("name length"));
        }
        let name = file_bytes(name, name_len).ok_or(bad("name outside the image"))?;
        let name = std::str::from_utf8(name).map_err(|_| bad("name is not UTF-8"))?;
        if !loads
            .iter()
            .any(|&(va, memsz, _, _)| addr >= va && addr < va.saturating_add(memsz))
        {
            return Err(bad("address outside the image"));
        }
        out.push(Export {
            name: name.to_string(),
            addr,
        });
    }
    Ok(out)
}
