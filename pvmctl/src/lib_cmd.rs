//! `pvmctl lib`: the trust store (`trust`, `untrust`, `trusted`), the libraries pVMs have
//! loaded (`list`), and online updates (`update`).
use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use hypervisor_ext::control::{self, Request, Response, Session};
use hypervisor_ext::dl::LibStatus;
use hypervisor_ext::registry::{Entry, Registry, RegistryError, State};
use hypervisor_ext::trust::{self, TrustError, TrustRef};

use crate::image::{self, Artifact, ImageError};
use crate::run::RunDir;

/// `pvmctl lib` subcommands.
#[derive(Subcommand)]
pub enum LibCommand {
    /// Trust library files: pVMs may load them (their SHA-256 goes into the trust store,
    /// $PVM_TRUST_STORE or ~/.config/pvm/trusted).
    Trust {
        /// Library files, or library crate directories (built first).
        #[arg(required = true, value_name = "FILE|DIR")]
        files: Vec<PathBuf>,
    },
    /// Stop trusting libraries: pVMs can no longer load them (loaded copies stay).
    Untrust {
        /// Library files, digests (hex) or the names they were trusted under.
        #[arg(required = true, value_name = "FILE|DIGEST|NAME")]
        targets: Vec<String>,
    },
    /// List the trusted libraries.
    Trusted,
    /// List the libraries pVMs have loaded: version, digest, how many pVMs share its pages.
    List(ListArgs),
    /// Replace a library loaded in running pVMs with a new version, keeping its state: the
    /// switch happens when no call into the library is in flight; any failure rolls back.
    Update(UpdateArgs),
}

/// Arguments of `pvmctl lib list`.
#[derive(Args)]
pub struct ListArgs {
    /// One JSON array instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    run_dir: RunDir,
    /// pVM ids or names (default: every pVM).
    #[arg(value_name = "ID|NAME")]
    targets: Vec<String>,
}

/// Arguments of `pvmctl lib update`.
#[derive(Args)]
pub struct UpdateArgs {
    /// Update the library in every pVM of the target's family that has it loaded.
    #[arg(long)]
    family: bool,
    /// Seconds a pVM has to reach a safe point (no call into the library in flight).
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    timeout: f64,
    /// Accept a version lower than the loaded one.
    #[arg(long)]
    allow_downgrade: bool,
    #[command(flatten)]
    run_dir: RunDir,
    /// The pVM (id or name).
    #[arg(value_name = "ID|NAME")]
    target: String,
    /// The library's name in the pVM.
    library: String,
    /// The new version: a library file, or a library crate directory (built first).
    #[arg(value_name = "FILE|DIR")]
    file: PathBuf,
}

/// Errors of `pvmctl lib`.
#[derive(Debug, thiserror::Error)]
pub enum LibError {
    /// The trust store cannot be used.
    #[error(transparent)]
    Trust(#[from] TrustError),
    /// A library file cannot be found or built.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// A file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not a regular file.
    #[error("{0} is not a regular file")]
    NotAFile(PathBuf),
    /// The registry cannot be read.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// No pVM by that id or name.
    #[error("no pVM {0}")]
    NoPvm(String),
    /// A bad timeout.
    #[error("--timeout must be a positive number of seconds")]
    Timeout,
}

fn open_file(path: &PathBuf) -> Result<File, LibError> {
    let file = File::open(path).map_err(|source| LibError::Read {
        path: path.clone(),
        source,
    })?;
    let meta = file.metadata().map_err(|source| LibError::Read {
        path: path.clone(),
        source,
    })?;
    if !meta.is_file() {
        return Err(LibError::NotAFile(path.clone()));
    }
    Ok(file)
}

/// Runs a `pvmctl lib` subcommand.
pub fn lib(cmd: LibCommand) -> Result<ExitCode, LibError> {
    match cmd {
        LibCommand::Trust { files } => trust_files(&files),
        LibCommand::Untrust { targets } => untrust(&targets),
        LibCommand::Trusted => trusted(),
        LibCommand::List(args) => list(args),
        LibCommand::Update(args) => update(args),
    }
}

fn store() -> Result<TrustRef, LibError> {
    Ok(TrustRef::open(&trust::default_path())?)
}

fn trust_files(files: &[PathBuf]) -> Result<ExitCode, LibError> {
    let store = store()?;
    for path in files {
        let file = image::resolve_file(path, Artifact::Library)?;
        let bytes = std::fs::read(&file).map_err(|source| LibError::Read {
            path: file.clone(),
            source,
        })?;
        // Refuse what no pVM could load anyway, with the reason.
        if let Err(e) = pvm_dynlink::Library::parse(&bytes) {
            eprintln!("pvmctl: warning: {}: {e} (trusted anyway)", file.display());
        }
        let digest = trust::digest(&bytes);
        let name = file
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let added = store.add(&digest, &name)?;
        println!(
            "{}  {} ({})",
            trust::hex(&digest),
            file.display(),
            if added { "trusted" } else { "already trusted" }
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn untrust(targets: &[String]) -> Result<ExitCode, LibError> {
    let store = store()?;
    let mut failed = false;
    for target in targets {
        let path = PathBuf::from(target);
        let digest = if let Some(d) = trust::parse_hex(target) {
            Some(d)
        } else if path.is_file() {
            Some(trust::digest(&std::fs::read(&path).map_err(|source| {
                LibError::Read {
                    path: path.clone(),
                    source,
                }
            })?))
        } else {
            None
        };
        let removed = store.remove(|e| Some(e.digest) == digest || e.name == *target)?;
        if removed.is_empty() {
            eprintln!("pvmctl: error: {target} is not trusted");
            failed = true;
        }
        for e in removed {
            println!("{}  {} (untrusted)", trust::hex(&e.digest), e.name);
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn trusted() -> Result<ExitCode, LibError> {
    let store = store()?;
    for e in store.entries()? {
        println!("{}  {}", trust::hex(&e.digest), e.name);
    }
    Ok(ExitCode::SUCCESS)
}

/// How long a `lib list` query may take per pVM.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// The libraries of every live pVM that answers.
fn loaded(registry: &Registry, entries: &[Entry]) -> BTreeMap<u32, Vec<LibStatus>> {
    let mut out = BTreeMap::new();
    for e in entries.iter().filter(|e| e.state != State::Exited) {
        if let Ok(Response::Libraries { libraries, .. }) =
            control::request(registry.dir().path(), e.id, &Request::Libraries, QUERY_TIMEOUT)
        {
            out.insert(e.id, libraries);
        }
    }
    out
}

/// What the update did not reach of `children` (the child pVMs its targets reported at their
/// safe point) and may hold `library`: children that are neither targets, nor ended, nor
/// known to be without the library (asked now). A child not registered yet but alive is one
/// being forked.
fn unreached(registry: &Registry, library: &str, targets: &[u32], children: &[u32]) -> Vec<u32> {
    let others: Vec<u32> = children
        .iter()
        .copied()
        .filter(|c| !targets.contains(c))
        .collect();
    if others.is_empty() {
        return others;
    }
    let entries = registry.list().unwrap_or_default();
    others
        .into_iter()
        .filter(|&c| match entries.iter().find(|e| e.id == c) {
            Some(e) if e.state == State::Exited => false,
            Some(_) => !matches!(
                control::request(registry.dir().path(), c, &Request::Libraries, QUERY_TIMEOUT),
                Ok(Response::Libraries { libraries, .. }) if libraries.iter().all(|l| l.name != library)
            ),
            None => process_alive(c),
        })
        .collect()
}

/// Whether process `pid` exists and has not ended (a zombie has).
fn process_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name's closing parenthesis.
    let state = stat
        .iter()
        .rposition(|&b| b == b')')
        .and_then(|i| stat.get(i + 2).copied());
    !matches!(state, Some(b'Z' | b'X') | None)
}

/// One `lib list` row.
#[derive(serde::Serialize)]
struct Row {
    id: u32,
    #[serde(flatten)]
    lib: LibStatus,
    shared_by: usize,
}

fn list(args: ListArgs) -> Result<ExitCode, LibError> {
    let registry = Registry::open(args.run_dir.path())?;
    let entries = registry.list()?;
    let mut wanted: Vec<u32> = Vec::new();
    for t in &args.targets {
        let found = crate::ctl::resolve(&entries, t);
        if found.is_empty() {
            return Err(LibError::NoPvm(t.clone()));
        }
        wanted.extend(found.iter().map(|e| e.id));
    }
    let all = loaded(&registry, &entries);
    let mut sharers: BTreeMap<&str, usize> = BTreeMap::new();
    for libs in all.values() {
        for l in libs {
            *sharers.entry(l.digest.as_str()).or_default() += 1;
        }
    }
    let rows: Vec<Row> = all
        .iter()
        .filter(|(id, _)| wanted.is_empty() || wanted.contains(id))
        .flat_map(|(id, libs)| {
            libs.iter().map(|l| Row {
                id: *id,
                lib: l.clone(),
                shared_by: sharers.get(l.digest.as_str()).copied().unwrap_or(1),
            })
        })
        .collect();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows).unwrap_or_default());
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:>8}  {:<12} {:<10} {:<12} {:>9} {:>8} {:>8}  FILE",
        "ID", "LIBRARY", "VERSION", "SHA256", "SHARED-BY", "SHARED", "PRIVATE"
    );
    for r in rows {
        println!(
            "{:>8}  {:<12} {:<10} {:<12} {:>9} {:>7}K {:>7}K  {}",
            r.id,
            r.lib.name,
            r.lib.version.as_deref().unwrap_or("-"),
            &r.lib.digest[..12.min(r.lib.digest.len())],
            r.shared_by,
            r.lib.shared_bytes / 1024,
            r.lib.private_bytes / 1024,
            r.lib.file
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn update(args: UpdateArgs) -> Result<ExitCode, LibError> {
    if !(args.timeout > 0.0 && args.timeout.is_finite()) {
        return Err(LibError::Timeout);
    }
    let path = image::resolve_file(&args.file, Artifact::Library)?;
    let file = open_file(&path)?;
    let registry = Registry::open(args.run_dir.path())?;
    let entries = registry.list()?;
    let found = crate::ctl::resolve(&entries, &args.target);
    if found.is_empty() {
        return Err(LibError::NoPvm(args.target));
    }
    let mut targets: Vec<u32> = found.iter().map(|e| e.id).collect();
    if args.family {
        let keys: Vec<u64> = found.iter().map(|e| e.family_key).collect();
        let family: Vec<Entry> = entries
            .iter()
            .filter(|e| keys.contains(&e.family_key) && e.state != State::Exited)
            .cloned()
            .collect();
        targets = loaded(&registry, &family)
            .into_iter()
            .filter(|(_, libs)| libs.iter().any(|l| l.name == args.library))
            .map(|(id, _)| id)
            .collect();
        if targets.is_empty() {
            eprintln!(
                "pvmctl: error: no pVM of that family has library {} loaded",
                args.library
            );
            return Ok(ExitCode::FAILURE);
        }
    }
    let timeout_ms = (args.timeout * 1000.0) as u64;
    let request = Request::Update {
        library: args.library.clone(),
        file: path.display().to_string(),
        allow_downgrade: args.allow_downgrade,
        timeout_ms,
        // Several pVMs: all or none.
        two_phase: targets.len() > 1,
    };
    // The answer comes when the update is over: the safe point's time, the hooks', and margin.
    let wait = Duration::from_millis(timeout_ms + 5_000);
    let dir = registry.dir().path();
    // Phase one: every pVM prepares and gets ready (concurrently: each connection is open).
    let mut sessions = Vec::new();
    let mut failed = false;
    for &id in &targets {
        match Session::open(dir, id).and_then(|s| s.send(&request, Some(file.as_fd())).map(|()| s)) {
            Ok(s) => sessions.push(s),
            Err(e) => {
                eprintln!("pvmctl: error: {e}");
                failed = true;
            }
        }
    }
    let mut answers = Vec::new();
    let mut children = Vec::new();
    for s in sessions {
        let answer = s.receive(wait);
        match &answer {
            Ok(Response::Ready { children: c, .. }) => children.extend_from_slice(c),
            Ok(Response::Updated { .. }) => {}
            _ => failed = true,
        }
        answers.push((s, answer));
    }
    if !failed {
        // All or none: a pVM the update missed (forked as it began) would keep the old version.
        let missed = unreached(&registry, &args.library, &targets, &children);
        if !missed.is_empty() {
            eprintln!(
                "pvmctl: error: pVM {} of the family started as the update began and was not part \
                 of it: nothing switched; run the update again",
                missed.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
            );
            failed = true;
        }
    }
    // Phase two (several pVMs): all switch, or none.
    let mut finals = Vec::new();
    for (s, answer) in answers {
        let answer = match answer {
            Ok(Response::Ready { .. }) => {
                let decided = s.send(&Request::Decide { commit: !failed }, None);
                decided.and_then(|()| s.receive(wait))
            }
            other => other,
        };
        finals.push((s.id(), answer));
    }
    let mut ok = !failed;
    for (id, answer) in finals {
        match answer {
            Ok(Response::Updated {
                id,
                library,
                from,
                to,
                pause_us,
            }) => println!(
                "pVM {id}: {library} {} -> {} (paused {pause_us} us)",
                from.as_deref().unwrap_or("-"),
                to.as_deref().unwrap_or("-")
            ),
            Ok(Response::Error { message }) => {
                eprintln!("pvmctl: error: {message}");
                ok = false;
            }
            Ok(other) => {
                eprintln!("pvmctl: error: pVM {id} answered {other:?}");
                ok = false;
            }
            Err(e) => {
                eprintln!("pvmctl: error: {e}");
                ok = false;
            }
        }
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

#[cfg(test)]
mod tests {
    use super::process_alive;

    #[test]
    fn a_zombie_or_missing_process_is_not_alive() {
        assert!(process_alive(std::process::id()));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        // Ended but not waited for: a zombie, until it is.
        let pid = child.id();
        while std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
        {
            std::thread::yield_now();
        }
        assert!(!process_alive(pid));
        child.wait().unwrap();
        assert!(!process_alive(pid));
    }
}
