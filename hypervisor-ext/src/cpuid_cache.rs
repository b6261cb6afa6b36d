//! The host KVM's supported CPUID, kept in the runtime directory for the host's boot.
//!
//! `KVM_GET_SUPPORTED_CPUID` makes the kernel execute CPUID for every leaf it reports, and where
//! the host is itself a VM each one traps to the outer hypervisor: ~1.4 ms of CPU per cold boot
//! here, on the helper thread that also compiles the seccomp filter, which on a 2-CPU host often
//! shares a CPU with the boot itself. KVM's answer is fixed while its module is loaded, so the
//! first cold boot of a host's boot writes it to `<run-dir>/cpuid` and later ones read it.
//!
//! The file is keyed to the host's boot (`/proc/sys/kernel/random/boot_id`) and the KVM device
//! path; anything else (another boot, another device, a file cut short or too long, a count over
//! KVM's limit) is a miss, and the boot asks KVM and writes the file again (written whole
//! beside it, then renamed over it). The runtime directory is the user's own and private
//! (`rundir.rs`), and a wrong entry changes only what the guest is told its CPU supports: KVM
//! checks what a guest enables (XCR0, MSRs) against the host, not against this list. A KVM
//! module reloaded with other parameters within one boot keeps the old answer: remove the file
//! (or reboot). A process also keeps the answer in memory, and the processes it forks inherit
//! it: a warm pool asks once when it starts (`pool/daemon.rs`), for all its members.
use std::io::Read;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::{Mutex, PoisonError};

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::Kvm;

use crate::rundir::RunDir;
use crate::sys::{self, Open};
use crate::vstate::{vcpu, KvmError};

/// What this process (or the process it was forked from) was told, with the device it asked.
static KNOWN: Mutex<Option<(String, CpuId)>> = Mutex::new(None);

/// The CPUID KVM at `device` supports: from this process's memory, else from the file in `dir`
/// for this boot, else from KVM (`kvm`), then kept in both.
pub fn supported(kvm: &Kvm, device: &str, dir: Option<&Path>) -> Result<CpuId, KvmError> {
    let mut known = KNOWN.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((asked, cpuid)) = known.as_ref() {
        if asked == device {
            return Ok(cpuid.clone());
        }
    }
    // The file's directory and this boot's id, once for the read and the write.
    let file = dir.and_then(|d| Some((RunDir::open(d).ok()?, boot_id()?)));
    let cpuid = match file.as_ref().and_then(|(d, boot)| load(d, boot, device)) {
        Some(cpuid) => cpuid,
        None => {
            let cpuid = vcpu::supported_cpuid(kvm)?;
            if let Some((d, boot)) = &file {
                store(d, boot, device, &cpuid);
            }
            cpuid
        }
    };
    *known = Some((device.to_string(), cpuid.clone()));
    Ok(cpuid)
}

/// The file's name in the runtime directory.
const FILE: &str = "cpuid";
/// Its first bytes (the format's version is in the name: `1`).
const MAGIC: &[u8; 8] = b"pvmcpu1\n";
/// The length of a boot id (a UUID in text).
const BOOT_ID_LEN: usize = 36;
/// Longest device path kept.
const MAX_DEVICE_LEN: usize = 4096;
/// The bytes of one entry: function, index, flags, eax, ebx, ecx, edx (seven `u32`s).
const ENTRY_LEN: usize = 7 * 4;

/// The cached CPUID for `device`, if `dir` has one for `boot`.
fn load(dir: &RunDir, boot: &[u8; BOOT_ID_LEN], device: &str) -> Option<CpuId> {
    let fd = dir.open_file(FILE, Open::Read).ok()?;
    let mut bytes = Vec::new();
    let limit = (header_len(device) + KVM_MAX_CPUID_ENTRIES * ENTRY_LEN + 1) as u64;
    std::fs::File::from(fd).take(limit).read_to_end(&mut bytes).ok()?;
    decode(&bytes, boot, device)
}

/// Writes `cpuid` for `device` and `boot` into `dir`, replacing what was there. Best effort: a
/// boot that cannot write it asks KVM again next time.
fn store(dir: &RunDir, boot: &[u8; BOOT_ID_LEN], device: &str, cpuid: &CpuId) {
    let Some(bytes) = encode(boot, device, cpuid) else {
        return;
    };
    let tmp = format!("{FILE}.{}", sys::getpid());
    let written = dir
        .open_file(&tmp, Open::Exclusive)
        .and_then(|fd| sys::write_all(fd.as_fd(), &bytes))
        .and_then(|_| sys::rename_at(dir.fd(), &tmp, FILE));
    if written.is_err() {
        let _ = dir.remove(&tmp);
    }
}

/// This boot's id.
fn boot_id() -> Option<[u8; BOOT_ID_LEN]> {
    let text = sys::read_file(Path::new("/proc/sys/kernel/random/boot_id")).ok()?;
    text.get(..BOOT_ID_LEN)?.try_into().ok()
}

fn header_len(device: &str) -> usize {
    MAGIC.len() + BOOT_ID_LEN + 4 + device.len() + 4
}

/// The file's bytes: magic, boot id, device path (length, bytes), entry count, entries.
fn encode(boot: &[u8; BOOT_ID_LEN], device: &str, cpuid: &CpuId) -> Option<Vec<u8>> {
    let entries = cpuid.as_slice();
    if device.len() > MAX_DEVICE_LEN || entries.len() > KVM_MAX_CPUID_ENTRIES {
        return None;
    }
    let mut out = Vec::with_capacity(header_len(device) + entries.len() * ENTRY_LEN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(boot);
    out.extend_from_slice(&(device.len() as u32).to_le_bytes());
    out.extend_from_slice(device.as_bytes());
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for e in entries {
        for word in [e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx] {
            out.extend_from_slice(&word.to_le_bytes());
        }
    }
    Some(out)
}

/// The entries of `bytes` if it is a whole file of [`encode`] for this boot and device.
fn decode(bytes: &[u8], boot: &[u8; BOOT_ID_LEN], device: &str) -> Option<CpuId> {
    let mut rest = bytes;
    let mut take = |n: usize| -> Option<&[u8]> {
        let (head, tail) = rest.split_at_checked(n)?;
        rest = tail;
        Some(head)
    };
    let word = |b: &[u8]| -> Option<u32> { Some(u32::from_le_bytes(b.try_into().ok()?)) };
    if take(MAGIC.len())? != MAGIC || take(BOOT_ID_LEN)? != boot {
        return None;
    }
    let device_len = word(take(4)?)? as usize;
    if device_len != device.len() || take(device_len)? != device.as_bytes() {
        return None;
    }
    let count = word(take(4)?)? as usize;
    if count == 0 || count > KVM_MAX_CPUID_ENTRIES {
        return None;
    }
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        let e = take(ENTRY_LEN)?;
        let w = |i: usize| word(&e[i * 4..i * 4 + 4]);
        entries.push(kvm_cpuid_entry2 {
            function: w(0)?,
            index: w(1)?,
            flags: w(2)?,
            eax: w(3)?,
            ebx: w(4)?,
            ecx: w(5)?,
            edx: w(6)?,
            ..Default::default()
        });
    }
    if !rest.is_empty() {
        return None;
    }
    CpuId::from_entries(&entries).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOOT: &[u8; BOOT_ID_LEN] = b"0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";

    fn sample() -> CpuId {
        let entries: Vec<kvm_cpuid_entry2> = (0..5)
            .map(|i| kvm_cpuid_entry2 {
                function: i,
                index: i * 2,
                flags: 1,
                eax: 0x1000 + i,
                ebx: 0x2000 + i,
                ecx: 0x3000 + i,
                edx: 0x4000 + i,
                ..Default::default()
            })
            .collect();
        CpuId::from_entries(&entries).unwrap()
    }

    #[test]
    fn an_entry_list_comes_back_for_its_boot_and_device_only() {
        let bytes = encode(BOOT, "/dev/kvm", &sample()).unwrap();
        assert_eq!(
            decode(&bytes, BOOT, "/dev/kvm").unwrap().as_slice(),
            sample().as_slice()
        );
        let mut other_boot = *BOOT;
        other_boot[0] = b'1';
        assert!(decode(&bytes, &other_boot, "/dev/kvm").is_none());
        assert!(decode(&bytes, BOOT, "/dev/kvm2").is_none());
    }

    #[test]
    fn a_damaged_file_is_a_miss() {
        let bytes = encode(BOOT, "/dev/kvm", &sample()).unwrap();
        // Every truncation, and a byte too many.
        for n in 0..bytes.len() {
            assert!(decode(&bytes[..n], BOOT, "/dev/kvm").is_none(), "cut at {n}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer, BOOT, "/dev/kvm").is_none());
        // Counts of zero and past KVM's limit.
        let count_at = MAGIC.len() + BOOT_ID_LEN + 4 + "/dev/kvm".len();
        for count in [0u32, KVM_MAX_CPUID_ENTRIES as u32 + 1, u32::MAX] {
            let mut bad = bytes.clone();
            bad[count_at..count_at + 4].copy_from_slice(&count.to_le_bytes());
            assert!(decode(&bad, BOOT, "/dev/kvm").is_none(), "count {count}");
        }
        let mut magic = bytes;
        magic[0] ^= 1;
        assert!(decode(&magic, BOOT, "/dev/kvm").is_none());
    }

    #[test]
    fn a_stored_list_is_loaded_in_the_same_directory() {
        let path = std::env::temp_dir().join(format!("pvm-cpuid-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        let dir = RunDir::open(&path).unwrap();
        assert!(load(&dir, BOOT, "/dev/kvm").is_none());
        store(&dir, BOOT, "/dev/kvm", &sample());
        assert_eq!(
            load(&dir, BOOT, "/dev/kvm").unwrap().as_slice(),
            sample().as_slice()
        );
        assert!(load(&dir, BOOT, "/dev/other").is_none());
        let _ = std::fs::remove_dir_all(&path);
    }
}
