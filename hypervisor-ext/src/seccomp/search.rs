//! Lays out a seccomp filter that finds the system call by binary search.
//!
//! seccompiler compiles an allow-list into one linear chain: a comparison per allowed call, in
//! number order, each followed by that call's argument rules. Installing such a filter costs
//! the kernel a walk of the chain for every system call number (it runs the filter once per
//! number to build its action cache), and every filtered call at run time walks it again. For
//! the monitor's list (~80 calls, 647 instructions) installing took 260-335 us; laid out as a
//! search (584 instructions) it takes 110-160 us (medians of 200 interleaved installs).
//!
//! This module keeps seccompiler's code for what each call's arguments must meet: it compiles
//! every call's rules on their own and takes that block from seccompiler's output, checking its
//! shape. It only replaces the dispatch: after the architecture check, a binary search over the
//! sorted call numbers (`JGE` at each node, exact `JEQ` at the leaves) jumps to the call's
//! block, or answers at the leaf for a call without rules. A number not on the list meets no
//! `JEQ` and gets the mismatch action, as before. A call may also have an answer of its own
//! whatever its arguments (the monitor's `clone3`: ENOSYS), given at its leaf: one filter
//! where there used to be two (each filter installed costs the kernel ~25 us of fixed work,
//! more on a loaded machine). The
//! tests below run both layouts in a BPF interpreter on every call number and on arguments at
//! and around every constant the rules compare with, and require the same answer.
use std::collections::BTreeMap;

use seccompiler::{
    sock_filter, BackendError, BpfProgram, SeccompAction, SeccompFilter, SeccompRule, TargetArch,
};

// Classic BPF opcodes (linux/bpf_common.h) used by the dispatch.
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JMP_JA: u16 = 0x05;
const BPF_JMP_JEQ_K: u16 = 0x15;
const BPF_JMP_JGE_K: u16 = 0x35;
const BPF_RET_K: u16 = 0x06;
/// Where `seccomp_data.nr` is.
const NR_OFFSET: u32 = 0;
/// At most this many calls are compared one by one at a leaf of the search.
const LEAF: usize = 4;
/// The kernel's limit on a filter's length (`BPF_MAXINSNS`).
const MAX_LEN: usize = 4096;

/// Why a filter could not be laid out.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// seccompiler refused the rules.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// A call number that is not a `seccomp_data.nr`.
    #[error("system call number {0} is out of range")]
    Number(i64),
    /// seccompiler's output is not shaped as this module expects (a new version of it).
    #[error("seccompiler's program for system call {0} is not laid out as expected")]
    Layout(i64),
    /// seccompiler's program without rules is not its architecture check then the mismatch
    /// action (a new version of it).
    #[error("seccompiler's empty program is not laid out as expected")]
    Prologue,
    /// Longer than the kernel takes.
    #[error("the filter has {0} instructions; the kernel takes at most {MAX_LEN}")]
    TooLong(usize),
    /// A call both has rules and an answer of its own.
    #[error("system call {0} has both rules and an answer of its own")]
    Twice(i64),
}

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// seccompiler's program for `rules`, with these actions.
fn linear(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    mismatch: &SeccompAction,
    matched: &SeccompAction,
    arch: TargetArch,
) -> Result<BpfProgram, SearchError> {
    Ok(SeccompFilter::new(rules, mismatch.clone(), matched.clone(), arch)?.try_into()?)
}

/// Where the search sends a call it found: to the block of its rules, or to an answer.
enum Found {
    /// The answer, whatever the arguments.
    Answer(sock_filter),
    /// The call's rules (seccompiler's block for it alone).
    Block(BpfProgram),
}

/// The filter for `rules`: `matched` when a call's rules hold (or it has none), the call's own
/// action for a call of `answers` (whatever its arguments), `mismatch` for any other call,
/// argument or architecture.
pub fn compile(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    answers: &BTreeMap<i64, SeccompAction>,
    mismatch: SeccompAction,
    matched: SeccompAction,
    arch: TargetArch,
) -> Result<BpfProgram, SearchError> {
    let refuse = stmt(BPF_RET_K, u32::from(mismatch.clone()));
    let accept = stmt(BPF_RET_K, u32::from(matched.clone()));
    // seccompiler's program with no rules: its architecture check, then `refuse`.
    let mut out = linear(BTreeMap::new(), &mismatch, &matched, arch)?;
    if out.pop().as_ref() != Some(&refuse) {
        return Err(SearchError::Prologue);
    }
    let prologue = out.len();
    out.push(stmt(BPF_LD_W_ABS, NR_OFFSET));
    // Each call with rules gets a block: seccompiler's program for that call alone, after its
    // prologue and its load of the number. It starts with `JEQ nr` and ends in `refuse`; its
    // jumps are relative and stay inside it, so it can be placed anywhere. A call without
    // rules needs none: its leaf answers `accept`.
    let number = |nr: i64| u32::try_from(nr).map_err(|_| SearchError::Number(nr));
    let mut calls = Vec::with_capacity(rules.len() + answers.len());
    for (&nr, action) in answers {
        if rules.contains_key(&nr) {
            return Err(SearchError::Twice(nr));
        }
        calls.push((
            number(nr)?,
            Found::Answer(stmt(BPF_RET_K, u32::from(action.clone()))),
        ));
    }
    for (nr, chain) in rules {
        let number = number(nr)?;
        if chain.is_empty() {
            calls.push((number, Found::Answer(accept.clone())));
            continue;
        }
        let program = linear([(nr, chain)].into(), &mismatch, &matched, arch)?;
        let shaped = program.len() > prologue + 2
            && program[..=prologue] == out[..=prologue]
            && program[prologue + 1] == jump(BPF_JMP_JEQ_K, number, 0, 1)
            && program.last() == Some(&refuse);
        if !shaped {
            return Err(SearchError::Layout(nr));
        }
        calls.push((number, Found::Block(program[prologue + 1..].to_vec())));
    }
    calls.sort_unstable_by_key(|(nr, _)| *nr);
    // The search, with its jumps to blocks noted (instruction, call) and patched below.
    let mut to_block = Vec::with_capacity(calls.len());
    let leaves = Leaves {
        calls: &calls,
        refuse: &refuse,
    };
    leaves.search(&mut out, 0, calls.len(), &mut to_block);
    let mut starts = vec![0; calls.len()];
    for (i, (_, found)) in calls.iter().enumerate() {
        if let Found::Block(block) = found {
            starts[i] = out.len();
            out.extend_from_slice(block);
        }
    }
    for (at, call) in to_block {
        out[at].k = offset(at, starts[call])?;
    }
    if out.len() > MAX_LEN {
        return Err(SearchError::TooLong(out.len()));
    }
    Ok(out)
}

/// A forward jump's operand: from the instruction at `from` to the one at `to`.
fn offset(from: usize, to: usize) -> Result<u32, SearchError> {
    to.checked_sub(from + 1)
        .and_then(|d| u32::try_from(d).ok())
        .ok_or(SearchError::TooLong(to))
}

/// The calls (sorted by number, unique; with their answers or blocks) and the answer for a
/// number that is none of them.
struct Leaves<'a> {
    calls: &'a [(u32, Found)],
    refuse: &'a sock_filter,
}

impl Leaves<'_> {
    /// Emits the search over `calls[lo..hi]`, given that the number in the accumulator, if
    /// allowed, is one of theirs.
    fn search(&self, out: &mut BpfProgram, lo: usize, hi: usize, to_block: &mut Vec<(usize, usize)>) {
        if hi - lo <= LEAF {
            for (i, (nr, found)) in self.calls.iter().enumerate().take(hi).skip(lo) {
                out.push(jump(BPF_JMP_JEQ_K, *nr, 0, 1));
                match found {
                    Found::Block(_) => {
                        to_block.push((out.len(), i));
                        out.push(stmt(BPF_JMP_JA, 0));
                    }
                    Found::Answer(answer) => out.push(answer.clone()),
                }
            }
            out.push(self.refuse.clone());
            return;
        }
        let mid = lo + (hi - lo) / 2;
        // `nr >= calls[mid]`: the jump that follows, to the upper half; else the lower half,
        // which comes right after it.
        out.push(jump(BPF_JMP_JGE_K, self.calls[mid].0, 0, 1));
        let to_upper = out.len();
        out.push(stmt(BPF_JMP_JA, 0));
        self.search(out, lo, mid, to_block);
        out[to_upper].k = (out.len() - to_upper - 1) as u32;
        self.search(out, mid, hi, to_block);
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    const BPF_ALU_AND_K: u16 = 0x54;
    const BPF_JMP_JGT_K: u16 = 0x25;

    /// What `program` answers for `data`, and how many instructions it ran: a classic BPF
    /// interpreter of the instructions seccompiler and this module emit.
    pub fn run(program: &[sock_filter], data: &libc::seccomp_data) -> (u32, usize) {
        let mut words = [0u32; 16];
        words[0] = data.nr as u32;
        words[1] = data.arch;
        words[2] = data.instruction_pointer as u32;
        words[3] = (data.instruction_pointer >> 32) as u32;
        for (i, arg) in data.args.iter().enumerate() {
            words[4 + 2 * i] = *arg as u32;
            words[5 + 2 * i] = (arg >> 32) as u32;
        }
        let (mut a, mut pc, mut ran) = (0u32, 0usize, 0usize);
        loop {
            let i = &program[pc];
            pc += 1;
            ran += 1;
            let taken = |cond: bool| usize::from(if cond { i.jt } else { i.jf });
            match i.code {
                BPF_LD_W_ABS => a = words[i.k as usize / 4],
                BPF_ALU_AND_K => a &= i.k,
                BPF_JMP_JA => pc += i.k as usize,
                BPF_JMP_JEQ_K => pc += taken(a == i.k),
                BPF_JMP_JGT_K => pc += taken(a > i.k),
                BPF_JMP_JGE_K => pc += taken(a >= i.k),
                BPF_RET_K => return (i.k, ran),
                code => panic!("instruction {code:#x} at {}", pc - 1),
            }
        }
    }

    /// Every constant an argument is compared with or masked by in `program`.
    fn constants(program: &[sock_filter]) -> Vec<u32> {
        let mut k: Vec<u32> = program
            .iter()
            .filter(|i| i.code != BPF_LD_W_ABS && i.code != BPF_RET_K && i.code != BPF_JMP_JA)
            .flat_map(|i| [i.k, i.k.wrapping_sub(1), i.k.wrapping_add(1)])
            .chain([0, 1, u32::MAX, i32::MAX as u32, 1 << 31])
            .collect();
        k.sort_unstable();
        k.dedup();
        k
    }

    /// A small deterministic generator (xorshift64).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn pick(&mut self, from: &[u32]) -> u32 {
            from[(self.next() % from.len() as u64) as usize]
        }
    }

    /// Requires `rules` and `answers` laid out by [`compile`] to answer as seccompiler's chain
    /// for `rules` does, and with its own action for a call of `answers` (on the architecture),
    /// on every call number below 1024, on x32's and out-of-range numbers, on another
    /// architecture, and on arguments built from the rules' own constants; returns the longest
    /// dispatch run.
    pub fn same_answers(
        rules: BTreeMap<i64, Vec<SeccompRule>>,
        answers: &BTreeMap<i64, SeccompAction>,
        mismatch: SeccompAction,
        matched: SeccompAction,
    ) -> usize {
        let arch: TargetArch = std::env::consts::ARCH.try_into().unwrap();
        let reference = linear(rules.clone(), &mismatch, &matched, arch).unwrap();
        let ours = compile(rules.clone(), answers, mismatch.clone(), matched, arch).unwrap();
        let pool = constants(&reference);
        let audit_arch = ours[1].k;
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let numbers =
            (0..1024u32)
                .chain(0x4000_0000..0x4000_0200)
                .chain([0x7fff_ffff, 0x8000_0000, u32::MAX]);
        let mut checked = 0;
        for nr in numbers {
            let tries = if rules.contains_key(&i64::from(nr)) || answers.contains_key(&i64::from(nr)) {
                3000
            } else {
                3
            };
            for t in 0..tries {
                let mut data = libc::seccomp_data {
                    nr: nr as i32,
                    arch: if t == 1 { audit_arch ^ 1 } else { audit_arch },
                    instruction_pointer: rng.next(),
                    args: [0; 6],
                };
                for arg in &mut data.args {
                    let low = u64::from(rng.pick(&pool));
                    let high = match rng.next() % 4 {
                        0 => u64::from(rng.pick(&pool)),
                        1 => rng.next() >> 32,
                        _ => 0,
                    };
                    *arg = high << 32 | low;
                }
                let want = match answers.get(&i64::from(nr)) {
                    Some(action) if data.arch == audit_arch => u32::from(action.clone()),
                    Some(_) => u32::from(mismatch.clone()),
                    None => run(&reference, &data).0,
                };
                let (got, _) = run(&ours, &data);
                assert_eq!(
                    got, want,
                    "call {nr:#x}, arch {:#x}, args {:x?}",
                    data.arch, data.args
                );
                checked += 1;
            }
        }
        assert!(checked > 0);
        // The longest path to a call's block: a refused number's whole run.
        (0..1024u32)
            .filter(|nr| !rules.contains_key(&i64::from(*nr)) && !answers.contains_key(&i64::from(*nr)))
            .map(|nr| {
                let data = libc::seccomp_data {
                    nr: nr as i32,
                    arch: audit_arch,
                    instruction_pointer: 0,
                    args: [0; 6],
                };
                run(&ours, &data).1
            })
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn small_and_edge_lists_answer_as_seccompilers_chain() {
        use seccompiler::{SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition as Cond};
        let kill = || SeccompAction::KillProcess;
        let allow = || SeccompAction::Allow;
        // No call, one call, and calls at the ends of the number range.
        let none = BTreeMap::new();
        same_answers(BTreeMap::new(), &none, kill(), allow());
        same_answers([(0, vec![])].into(), &none, kill(), allow());
        same_answers(
            [(0, vec![]), (1023, vec![]), (i64::from(u32::MAX), vec![])].into(),
            &none,
            SeccompAction::Errno(38),
            allow(),
        );
        // Calls with answers of their own, alone, and among rule-less calls at a leaf.
        let enosys = || SeccompAction::Errno(38);
        same_answers(BTreeMap::new(), &[(435, enosys())].into(), kill(), allow());
        same_answers(
            [(434, vec![]), (436, vec![])].into(),
            &[(435, enosys()), (0, SeccompAction::Trap)].into(),
            kill(),
            allow(),
        );
        // Every operator, both widths, on a list long enough to need several levels.
        let ops = [
            Op::Eq,
            Op::Ne,
            Op::Gt,
            Op::Ge,
            Op::Lt,
            Op::Le,
            Op::MaskedEq(0xf0f0_0000_00ff),
        ];
        let mut rules = BTreeMap::new();
        for (i, op) in ops.iter().enumerate() {
            for (j, len) in [Len::Dword, Len::Qword].into_iter().enumerate() {
                let nr = (i * 37 + j * 5) as i64;
                let value = 0x1_0000_0010 * (i as u64 + 1) + j as u64;
                let rule = |arg| {
                    SeccompRule::new(vec![Cond::new(arg, len.clone(), op.clone(), value).unwrap()]).unwrap()
                };
                rules.insert(nr, vec![rule(0), rule(3)]);
            }
        }
        // The answers among calls with rules, across levels of the search.
        let answers = [(1, enosys()), (40, SeccompAction::Log), (500, enosys())].into();
        same_answers(rules, &answers, kill(), allow());
    }

    #[test]
    fn a_refused_number_is_found_in_a_few_steps() {
        let rules: BTreeMap<i64, Vec<SeccompRule>> = (0..200).map(|n| (n * 3, vec![])).collect();
        let longest = same_answers(
            rules,
            &BTreeMap::new(),
            SeccompAction::KillProcess,
            SeccompAction::Allow,
        );
        // Architecture check and load (5), 2 per level (ceil(log2(200 / LEAF)) = 6 levels),
        // a leaf (2 per call, then refuse).
        assert!(longest <= 5 + 2 * 6 + 2 * LEAF + 1, "{longest} instructions");
    }

    #[test]
    fn numbers_out_of_range_are_refused() {
        let arch: TargetArch = std::env::consts::ARCH.try_into().unwrap();
        let none = BTreeMap::new();
        let kill = || SeccompAction::KillProcess;
        let err = compile([(-1, vec![])].into(), &none, kill(), SeccompAction::Allow, arch).unwrap_err();
        assert!(matches!(err, SearchError::Number(-1)), "{err}");
        let answers = [(-2, SeccompAction::Errno(38))].into();
        let err = compile(BTreeMap::new(), &answers, kill(), SeccompAction::Allow, arch).unwrap_err();
        assert!(matches!(err, SearchError::Number(-2)), "{err}");
    }

    #[test]
    fn a_call_with_rules_and_an_answer_is_refused() {
        let arch: TargetArch = std::env::consts::ARCH.try_into().unwrap();
        let answers = [(7, SeccompAction::Errno(38))].into();
        let err = compile(
            [(7, vec![])].into(),
            &answers,
            SeccompAction::KillProcess,
            SeccompAction::Allow,
            arch,
        )
        .unwrap_err();
        assert!(matches!(err, SearchError::Twice(7)), "{err}");
    }
}
