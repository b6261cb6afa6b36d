//! Which host CPUs a family's monitors run on: `pvmctl run --cpuset-cpus LIST [--cpu-spread]`.
//!
//! With a set alone, every process of the family (monitors, the network backend, helpers) may
//! run on any CPU of it and the host scheduler places them, as `docker run --cpuset-cpus` does.
//! With `--cpu-spread`, each pVM's monitor is pinned to one CPU of the set, as Xen pins a
//! domain's vCPUs: the root to the first, and a pVM's k-th child (from 0) to the CPU k + 1
//! places after its parent's, wrapping. A parent and its first child therefore run on different
//! CPUs whenever the set has two; that makes a measurement between them repeatable (the host
//! scheduler otherwise puts the two on one core or on two from run to run, and a pipe round trip
//! differs by about 8x between the two placements on this kind of machine).
//!
//! The monitor's vCPU is its only thread that runs the guest, so pinning the process pins the
//! pVM. Pinning is a request to the host scheduler, not isolation: other processes may share
//! those CPUs.
use std::io;

use crate::sys;

/// The highest CPU number accepted (the kernel's default `CONFIG_NR_CPUS` bound for a cpu set).
pub const MAX_CPU: usize = 1023;

/// Errors of a CPU list.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CpuListError {
    /// Not a list of CPU numbers and ranges.
    #[error("{0:?} is not a CPU list (numbers and ranges, like 0-3,6)")]
    Syntax(String),
    /// A range runs backwards.
    #[error("{0}-{1} is an empty range")]
    EmptyRange(usize, usize),
    /// A CPU number is too large.
    #[error("CPU {0} is past the last possible CPU ({MAX_CPU})")]
    TooLarge(usize),
    /// A CPU this process may not run on.
    #[error("CPU {cpu} is not available here (this process may run on {allowed})")]
    Unavailable {
        /// The CPU.
        cpu: usize,
        /// The CPUs allowed, as a list.
        allowed: String,
    },
}

/// Parses a CPU list such as `0-3,6` (the `cpuset` syntax of Linux and Docker): the CPUs in
/// order of first appearance, without repeats.
pub fn parse_cpu_list(text: &str) -> Result<Vec<usize>, CpuListError> {
    let syntax = || CpuListError::Syntax(text.to_string());
    let number = |s: &str| -> Result<usize, CpuListError> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(syntax());
        }
        let n: usize = s.parse().map_err(|_| CpuListError::TooLarge(usize::MAX))?;
        if n > MAX_CPU {
            return Err(CpuListError::TooLarge(n));
        }
        Ok(n)
    };
    let mut cpus = Vec::new();
    for part in text.split(',') {
        let part = part.trim();
        let (lo, hi) = match part.split_once('-') {
            Some((lo, hi)) => (number(lo)?, number(hi)?),
            None => {
                let n = number(part)?;
                (n, n)
            }
        };
        if hi < lo {
            return Err(CpuListError::EmptyRange(lo, hi));
        }
        for cpu in lo..=hi {
            if !cpus.contains(&cpu) {
                cpus.push(cpu);
            }
        }
    }
    Ok(cpus)
}

/// A CPU list in the `0-3,6` form.
pub fn format_cpu_list(cpus: &[usize]) -> String {
    let mut sorted = cpus.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        while i + 1 < sorted.len() && sorted[i + 1] == sorted[i] + 1 {
            i += 1;
        }
        parts.push(if sorted[i] == start {
            start.to_string()
        } else {
            format!("{start}-{}", sorted[i])
        });
        i += 1;
    }
    parts.join(",")
}

/// The CPUs this process may run on.
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    sys::cpu_affinity()
}

/// Where a family's monitors run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    cpus: Vec<usize>,
    spread: bool,
    /// This pVM's place in `cpus` (spread only).
    index: usize,
    /// Children this pVM has forked (spread only).
    children: usize,
}

impl Placement {
    /// The family runs on `cpus` (not empty; each must be available to this process), each pVM
    /// pinned to one of them if `spread`.
    pub fn new(cpus: Vec<usize>, spread: bool) -> Result<Placement, CpuListError> {
        let allowed = allowed_cpus().unwrap_or_default();
        if let Some(&cpu) = cpus.iter().find(|c| !allowed.is_empty() && !allowed.contains(c)) {
            return Err(CpuListError::Unavailable {
                cpu,
                allowed: format_cpu_list(&allowed),
            });
        }
        if cpus.is_empty() {
            return Err(CpuListError::Syntax(String::new()));
        }
        Ok(Placement {
            cpus,
            spread,
            index: 0,
            children: 0,
        })
    }

    /// The CPUs of the family.
    pub fn cpus(&self) -> &[usize] {
        &self.cpus
    }

    /// The root, before anything else is started: this process (and so every process it forks,
    /// the network backend included) runs on the family's set.
    pub(crate) fn enter_family(&self) -> io::Result<()> {
        sys::set_cpu_affinity(&self.cpus)
    }

    /// The root, once its helpers are forked: with `--cpu-spread`, on the first CPU only.
    pub(crate) fn settle_root(&self) -> io::Result<()> {
        if self.spread {
            sys::set_cpu_affinity(&self.cpus[..1])
        } else {
            Ok(())
        }
    }

    /// Before a fork: the place of the next child in the set (spread only).
    pub(crate) fn next_child(&self) -> Option<usize> {
        self.spread
            .then(|| (self.index + 1 + self.children) % self.cpus.len())
    }

    /// In the parent, after a fork succeeded.
    pub(crate) fn forked(&mut self) {
        self.children += 1;
    }

    /// In the child: it takes its place `index` (from [`Self::next_child`]) and has no children.
    pub(crate) fn become_child(&mut self, index: usize) -> io::Result<()> {
        self.index = index;
        self.children = 0;
        sys::set_cpu_affinity(&self.cpus[index..=index])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse() {
        assert_eq!(parse_cpu_list("0"), Ok(vec![0]));
        assert_eq!(parse_cpu_list("0-3,6"), Ok(vec![0, 1, 2, 3, 6]));
        assert_eq!(parse_cpu_list("1,0,1"), Ok(vec![1, 0]));
        assert_eq!(parse_cpu_list("3-1"), Err(CpuListError::EmptyRange(3, 1)));
        assert_eq!(parse_cpu_list("1024"), Err(CpuListError::TooLarge(1024)));
        for bad in ["", "a", "1,", "-1", "1-", "0x1", "1 2"] {
            assert!(
                matches!(parse_cpu_list(bad), Err(CpuListError::Syntax(_))),
                "{bad:?}"
            );
        }
        assert_eq!(format_cpu_list(&[6, 0, 1, 2, 3]), "0-3,6");
        assert_eq!(format_cpu_list(&[1]), "1");
    }

    #[test]
    fn children_spread_after_their_parent() {
        let mut root = Placement {
            cpus: vec![4, 5, 6],
            spread: true,
            index: 0,
            children: 0,
        };
        let mut places = Vec::new();
        for _ in 0..4 {
            places.push(root.next_child().expect("spread"));
            root.forked();
        }
        assert_eq!(places, [1, 2, 0, 1]);
        let shared = Placement {
            spread: false,
            ..root
        };
        assert_eq!(shared.next_child(), None);
    }
}
