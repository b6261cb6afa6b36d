//! Chaos: a family under fork and IPC load (`examples/chaos`) while random monitors of it get
//! SIGKILL, anywhere: in the vCPU loop, blocked in a hypercall, in the middle of a fork (either
//! side), while a forked child builds its VM, and the teardown helpers. Afterwards nothing may be
//! left (processes, registry entries, named objects, leases), the survivors must have kept
//! working, and every parent must have got a status for every child.
//!
//! The bounded run here lasts `PVM_CHAOS_SECONDS` (default 3); a longer one:
//! `PVM_CHAOS_SECONDS=300 cargo test --release --test chaos -- --nocapture`. `PVM_CHAOS_SEED`
//! repeats a run's choices (its seed is printed).
mod common;

use std::time::{Duration, Instant};

use common::*;

/// A small xorshift generator: the test's choices, repeatable from the printed seed.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::env::var("PVM_CHAOS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
                    | 1
            });
        eprintln!("chaos seed {seed} (PVM_CHAOS_SEED={seed} repeats it)");
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

fn chaos_seconds() -> u64 {
    std::env::var("PVM_CHAOS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
}

/// SIGKILLs random processes of the family (never those in `spare`) for `seconds`; returns how
/// many.
fn kill_randomly(test: &str, spare: &[u32], seconds: u64, rng: &mut Rng) -> usize {
    let dir = run_dir(test);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut kills = 0;
    while Instant::now() < deadline {
        // Every process of the family: monitors in any state, forked children still building
        // their VMs, teardown helpers (they all hold the runtime directory open).
        let pids: Vec<u32> = processes_using(&dir)
            .into_iter()
            .filter(|p| !spare.contains(p))
            .collect();
        if !pids.is_empty() {
            let victim = pids[rng.below(pids.len() as u64) as usize];
            // SAFETY: kill has no memory-safety preconditions; the pid is positive.
            if unsafe { libc::kill(victim as i32, libc::SIGKILL) } == 0 {
                kills += 1;
            }
        }
        // Pacing of the load, not synchronisation: kills land at random points of the work.
        std::thread::sleep(Duration::from_micros(rng.below(20_000)));
    }
    kills
}

/// Starts the chaos family with `workers` workers; returns it, the root's id and the workers'
/// ids (once all registered, so that all get the final USR1).
fn start_family(test: &str, workers: usize) -> (Running, u32, Vec<u32>) {
    let mut family = Running::start(test, &["--max-family", "64"], "chaos", &[&workers.to_string()]);
    family.expect(&format!("root: {workers} workers started"));
    // The family's root: the `pvmctl run` process, or in a warm run the pool member it handed
    // the run to.
    let rows = ps_until(test, false, |rows| rows.iter().any(|r| r["parent"] == 0));
    let root = rows
        .iter()
        .find(|r| r["parent"] == 0)
        .and_then(|r| r["id"].as_u64())
        .expect("the root is listed") as u32;
    let rows = ps_until(test, false, |rows| {
        rows.iter().filter(|r| r["parent"] == root).count() >= workers
    });
    let mut ids: Vec<u32> = rows
        .iter()
        .filter(|r| r["parent"] == root)
        .filter_map(|r| r["id"].as_u64().map(|id| id as u32))
        .collect();
    ids.sort_unstable();
    (family, root, ids)
}

#[test]
fn random_sigkills_under_fork_and_ipc_load_leave_nothing_behind() {
    sigkills_under_load("chaos");
}

/// The same in a warm run: the pool and its idle members are fair game too (the run it handed
/// out must not care), and what is left of the pool is stopped before the leak check.
#[test]
fn random_sigkills_of_a_warm_family_and_of_its_pool_leave_nothing_behind() {
    let test = "chaos-warm";
    ctl(test, &["pool", "start", "--size", "2"]).expect_status(0);
    sigkills_under_load(test);
}

fn sigkills_under_load(test: &str) {
    let mut rng = Rng::new();
    // Two workers are spared, so that some survive to show they kept working; the other two,
    // their children and everyone's teardown helpers are fair game.
    let (family, root, workers) = start_family(test, 4);
    let spare = [root, workers[0], workers[1]];
    let kills = kill_randomly(test, &spare, chaos_seconds(), &mut rng);
    ctl(test, &["kill", "-s", "USR1", "--family", &root.to_string()]).expect_status(0);
    let out = family.finish();
    out.expect_status(0).expect_no_host_panic();
    let root_line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("root: reaped"))
        .unwrap_or_else(|| panic!("{out:#?}"));
    assert!(root_line.starts_with("root: reaped 4 workers"), "{root_line}");
    assert!(root_line.ends_with(", 0 errors"), "{out:#?}");
    let mut forks = 0;
    let mut survivors = 0;
    for line in out.stdout.lines().filter(|l| l.starts_with("worker ")) {
        survivors += 1;
        // A surviving worker: every child it forked, it reaped, with an expected status.
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words.len(), 8, "{line}");
        let (forked, reaped, errors) = (words[3], words[5], words[7]);
        assert_eq!(forked, reaped, "{line}");
        assert_eq!(errors, "0", "{out:#?}");
        forks += forked.parse::<u64>().unwrap_or(0);
    }
    eprintln!("chaos: {kills} SIGKILLs; {survivors} surviving workers forked {forks} children; {root_line}");
    assert!(kills > 0, "nothing was killed");
    assert!(
        survivors >= 2 && forks > 0,
        "the spared workers kept working: {out:#?}"
    );
    // A pool the kills spared (a warm run's) goes now; `stop` says whether one was left.
    let _ = ctl(test, &["pool", "stop"]);
    assert_no_leaks(test);
}

#[test]
fn a_family_whose_root_is_killed_leaves_nothing_once_killed_and_listed() {
    let test = "chaos-root";
    let mut rng = Rng::new();
    // One worker is spared, so that the root is still there to be killed.
    let (family, root, workers) = start_family(test, 3);
    let worker = workers[0];
    kill_randomly(test, &[root, worker], 1, &mut rng);
    // The root goes too: its family lives on, orphaned, until the operator kills it by the
    // family's id (the root's, which no entry has any more).
    ctl(test, &["kill", "-s", "KILL", &root.to_string()]).expect_status(0);
    let dir = run_dir(test);
    let deadline = Instant::now() + TIME_LIMIT;
    while !processes_using(&dir).is_empty() {
        assert!(Instant::now() < deadline, "the orphaned family is still there");
        ctl(test, &["kill", "-s", "KILL", "--family", &root.to_string()]);
    }
    // Only now: the orphans held pvmctl's output open.
    let out = family.finish();
    assert_eq!(out.status, None, "killed by SIGKILL: {out:#?}");
    // What the dead root could not clean up, the next listing does: stale entries and the
    // family's named objects.
    // (A pVM that ended while its parent was being killed is listed until that parent's exit
    // has made it init's: moments.)
    let rows = ps_until(test, true, |rows| rows.is_empty());
    assert!(rows.is_empty(), "{rows:#?}");
    assert_no_leaks(test);
}
