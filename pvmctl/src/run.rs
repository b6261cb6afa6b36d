//! `pvmctl run`.
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use hypervisor_ext::dl::LibConfig;
use hypervisor_ext::net::{NetConfig, Publish};
use hypervisor_ext::outcome::report_line;
use hypervisor_ext::placement::Placement;
use hypervisor_ext::{
    default_mem_total, parse_mem_size, parse_size, Limits, Monitor, MonitorConfig, MonitorError, Outcome,
};

use crate::image::{self, ImageError};

/// Guest RAM of `run` (and of the pool's members) unless `--mem` says otherwise.
pub const DEFAULT_MEM: &str = "64M";

/// Arguments of `pvmctl run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Guest RAM, with an optional K, M or G suffix (a multiple of 2 MiB).
    #[arg(long, value_name = "SIZE", default_value = DEFAULT_MEM, value_parser = parse_mem_size)]
    mem: u64,
    /// Name of the pVM (argv[0] in the guest; defaults to the image's file name). A name given
    /// here must be free: no live pVM of another family has it (its forked children share it).
    #[arg(long)]
    name: Option<String>,
    /// Most pVMs alive at once in this pVM's family (a fork past it fails with LimitReached).
    #[arg(long, value_name = "N", default_value_t = Limits::default().per_family)]
    max_family: u32,
    /// Most pVMs alive at once on this host (of this runtime directory).
    #[arg(long, value_name = "N", default_value_t = Limits::default().per_host)]
    max_pvms: u32,
    /// Most guest memory all live pVMs of this runtime directory may hold together (each counts
    /// its --mem from boot or fork until it ends) [default: the host's RAM].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_mem_total: Option<u64>,
    /// Run in the background: print the root pVM's id and return once it runs. Its family's
    /// console goes to a log file (bounded) that `pvmctl logs ID [-f]` shows.
    #[arg(short = 'd', long)]
    detach: bool,
    /// Return when the root pVM ends, leaving the rest of its family running (manage it with
    /// `pvmctl ps` and `pvmctl kill --family`). By default `pvmctl run` returns when the whole
    /// family is gone.
    #[arg(long)]
    detach_family: bool,
    /// Run the monitors without their seccomp allow-list (to measure what it costs, or to
    /// debug); never for untrusted guests.
    #[arg(long)]
    unconfined: bool,
    /// Allow the pVM to load library NAME (`pvm::dl::open("NAME")`) from FILE (a shared object,
    /// or a library crate directory, built first). Its digest must be trusted (`pvmctl lib
    /// trust`) when the pVM loads it. Repeatable.
    #[arg(long = "lib", value_name = "NAME=FILE", value_parser = parse_lib)]
    libs: Vec<(String, PathBuf)>,
    /// Allow the pVM to load any library `libNAME.so` of DIR (trusted ones only).
    #[arg(long, value_name = "DIR")]
    lib_dir: Option<PathBuf>,
    /// Publish a TCP port: the host listens on HOST_IP:PORT (127.0.0.1 unless given; 0.0.0.0
    /// for every interface; port 0 for any free one, printed) and the family's pVMs accept its
    /// clients on GUEST_PORT (default: PORT) with `pvm::net::TcpListener`. Repeatable.
    #[arg(long = "publish", short = 'p', value_name = "[HOST_IP:]PORT[:GUEST_PORT]")]
    publish: Vec<Publish>,
    /// Allow the family's pVMs to connect to ADDR:PORT (`pvm::net::TcpStream::connect`; an
    /// IPv6 address in brackets). Nothing else is allowed. Repeatable.
    #[arg(long = "connect", value_name = "ADDR:PORT")]
    connect: Vec<std::net::SocketAddr>,
    /// Most live connections of the family's published ports; more clients are refused.
    #[arg(long, value_name = "N", default_value_t = hypervisor_ext::net::DEFAULT_MAX_CONNS)]
    max_conns: usize,
    /// Run the family's monitors on these host CPUs only (a list such as 0-3,6, as `docker run
    /// --cpuset-cpus` and `taskset` take it); the host scheduler places each within the set.
    #[arg(long, value_name = "LIST", value_parser = parse_cpus)]
    cpuset_cpus: Option<CpuList>,
    /// Pin each pVM of the family to one CPU of --cpuset-cpus: the root to the first, a pVM's
    /// k-th child to the CPU k+1 places after its parent's (wrapping), so a parent and its first
    /// child run on different CPUs when the set has two.
    #[arg(long, requires = "cpuset_cpus")]
    cpu_spread: bool,
    /// Boot in this process even when a warm pool runs (`pvmctl pool start`). A warm run's
    /// monitor is a process of the pool: it runs in the pool's cgroup, with its resource
    /// limits and session; use this where the caller's own matter.
    #[arg(long)]
    cold: bool,
    #[command(flatten)]
    run_dir: RunDir,
    /// Guest image (a static ELF linked with the pvm runtime) or a guest crate directory.
    image: PathBuf,
    /// Arguments for the app, after `--`.
    #[arg(last = true)]
    args: Vec<String>,
}

/// The registry's runtime directory, for the commands that use it: the global `--run-dir`
/// (which `main` passes on as `PVM_RUN_DIR`), else the default.
#[derive(Args, Debug)]
pub struct RunDir {}

impl RunArgs {
    /// The arguments of the plain forms `IMAGE`, `--cold IMAGE`, each optionally followed by
    /// `-- ARGS`, without clap (building its parser is ~0.1 ms of a cold boot here): what clap
    /// makes of them, with every default. `None` for anything else (options, help, an image
    /// name that starts with `-` or is not UTF-8, a default that does not hold on this host),
    /// which clap then parses, or explains.
    pub fn plain(rest: &[std::ffi::OsString]) -> Option<RunArgs> {
        let mut words = rest.iter();
        let mut first = words.next()?;
        let cold = first == "--cold";
        if cold {
            first = words.next()?;
        }
        let image = first.to_str().filter(|i| !i.is_empty() && !i.starts_with('-'))?;
        let args = match words.next() {
            None => Vec::new(),
            Some(dashes) if dashes == "--" => words
                .map(|a| a.to_str().map(String::from))
                .collect::<Option<Vec<_>>>()?,
            Some(_) => return None,
        };
        let limits = Limits::default();
        Some(RunArgs {
            mem: parse_mem_size(DEFAULT_MEM).ok()?,
            name: None,
            max_family: limits.per_family,
            max_pvms: limits.per_host,
            max_mem_total: None,
            detach: false,
            detach_family: false,
            unconfined: false,
            libs: Vec::new(),
            lib_dir: None,
            publish: Vec::new(),
            connect: Vec::new(),
            max_conns: hypervisor_ext::net::DEFAULT_MAX_CONNS,
            cpuset_cpus: None,
            cpu_spread: false,
            cold,
            run_dir: RunDir {},
            image: PathBuf::from(image),
            args,
        })
    }
}

impl RunDir {
    /// The directory to use.
    pub fn path(&self) -> PathBuf {
        hypervisor_ext::registry::default_dir()
    }
}

/// The CPUs of `--cpuset-cpus` (one value: clap would read a bare `Vec` as many).
#[derive(Clone, Debug)]
struct CpuList(Vec<usize>);

/// Parses the CPU list of `--cpuset-cpus`.
fn parse_cpus(text: &str) -> Result<CpuList, String> {
    hypervisor_ext::placement::parse_cpu_list(text)
        .map(CpuList)
        .map_err(|e| e.to_string())
}

/// Parses `NAME=FILE` of `--lib`.
pub fn parse_lib(text: &str) -> Result<(String, PathBuf), String> {
    let (name, file) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not NAME=FILE"))?;
    if !hypervisor_ext::dl::valid_name(name) {
        return Err(format!(
            "{name:?} is not a library name (1 to 64 letters, digits, '.', '_' or '-')"
        ));
    }
    if file.is_empty() {
        return Err(format!("no file for library {name}"));
    }
    Ok((name.to_string(), PathBuf::from(file)))
}

/// Errors of `pvmctl run`.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The image could not be found, built or loaded.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The monitor failed.
    #[error(transparent)]
    Monitor(#[from] MonitorError),
    /// `--name` is taken.
    #[error("the name {name:?} is in use by pVM {id} (remove it, or choose another --name)")]
    NameInUse {
        /// The name.
        name: String,
        /// A live pVM that has it.
        id: u32,
    },
    /// The registry cannot be read.
    #[error(transparent)]
    Registry(#[from] hypervisor_ext::registry::RegistryError),
    /// `--cpuset-cpus` names a CPU this process may not use.
    #[error(transparent)]
    Cpus(#[from] hypervisor_ext::placement::CpuListError),
    /// `-d` could not put the pVM in the background.
    #[error("cannot run in the background: {0}")]
    Detach(std::io::Error),
}

/// Boots the image and runs it to the end: the root pVM's, and then, since it is the family's
/// root, until every pVM of its family has ended. Exit status: the root pVM's (see
/// `Outcome::exit_status`).
pub fn run(args: RunArgs) -> Result<ExitCode, RunError> {
    if let Some(name) = &args.name {
        // Names given on purpose are unique among live pVMs, so that `kill NAME` means one
        // family. (Two runs racing for one name can both pass: the check is not a lock.)
        let registry = hypervisor_ext::registry::Registry::open(args.run_dir.path())?;
        let entries = registry.list()?;
        if let Some(e) = entries
            .iter()
            .find(|e| &e.name == name && e.state != hypervisor_ext::registry::State::Exited)
        {
            return Err(RunError::NameInUse {
                name: name.clone(),
                id: e.id,
            });
        }
    }
    let image = image::resolve(&args.image)?;
    let mut libs = Vec::with_capacity(args.libs.len());
    for (name, path) in args.libs {
        libs.push((name, image::resolve_file(&path, image::Artifact::Library)?));
    }
    let name = args.name.unwrap_or_else(|| {
        image
            .path
            .file_name()
            .map_or_else(|| "pvm".into(), |n| n.to_string_lossy().into_owned())
    });
    let mut argv = vec![name];
    argv.extend(args.args);
    let config = MonitorConfig {
        mem_size: args.mem,
        args: argv,
        run_dir: args.run_dir.path(),
        limits: Limits {
            per_family: args.max_family,
            per_host: args.max_pvms,
            mem_total: args.max_mem_total.unwrap_or_else(default_mem_total),
        },
        bench_fd: bench_fd(),
        confine: !args.unconfined,
        libs: LibConfig {
            libs,
            lib_dir: args.lib_dir,
            trust_store: hypervisor_ext::trust::default_path(),
        },
        net: NetConfig {
            publish: args.publish.clone(),
            connect: args.connect.clone(),
            max_conns: args.max_conns,
        },
        console_log: args.detach,
        placement: match args.cpuset_cpus {
            Some(CpuList(cpus)) => Some(Placement::new(cpus, args.cpu_spread)?),
            None => None,
        },
    };
    if args.detach {
        detach(&config.run_dir)?;
    }
    let mut monitor = Monitor::new(&image, &config)?;
    // A port the operator left to the host (0) is known only now.
    for (want, (host, guest)) in args.publish.iter().zip(monitor.published()) {
        if want.host.port() == 0 {
            eprintln!("pvmctl: published {host} -> guest port {guest}");
        }
    }
    let outcome = monitor.run()?;
    // From here on this may be a forked child's monitor: it reports for its own pVM.
    let ids = monitor.ids();
    match &outcome {
        Outcome::Exited(_) => {}
        Outcome::Crashed(crash) => report_line(format_args!("pvm {} crashed: {crash}", ids.id)),
        Outcome::Signaled(sig) => report_line(format_args!(
            "pvm {} stopped by signal {}",
            ids.id,
            crate::signal::name(*sig)
        )),
    }
    if ids.parent == 0 && args.detach_family {
        monitor.unregister_root_only();
    } else if ids.parent == 0 {
        let forward = match outcome {
            Outcome::Signaled(sig) => Some(sig),
            _ => None,
        };
        for (id, what) in monitor.wait_for_family(forward) {
            report_line(format_args!("pvm {id} (family {}) {what}", ids.family));
        }
        monitor.unregister();
    }
    // The monitor (VM, vCPU, guest RAM) is still alive: its teardown happens after we are gone.
    hypervisor_ext::teardown::exit_deferring_teardown(outcome.exit_status())
}

/// How long `run -d` waits for its pVM to start.
const DETACH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// `run -d`: forks. The child goes on as the family's root, its console the log file, in a
/// session of its own; the parent prints the root's id once it is registered (running), or,
/// if it ended first, what it wrote, and exits with its status. Call single-threaded.
fn detach(run_dir: &std::path::Path) -> Result<(), RunError> {
    use hypervisor_ext::host::{self, Forked};
    // SAFETY: pvmctl is single-threaded here (the build's output relay was joined).
    let child = match unsafe { host::fork() }.map_err(RunError::Detach)? {
        Forked::Child => {
            let log = hypervisor_ext::console_log::create(run_dir, std::process::id())
                .map_err(|e| RunError::Detach(std::io::Error::other(e)))?;
            hypervisor_ext::console_log::detach_onto(&log).map_err(RunError::Detach)?;
            return Ok(());
        }
        Forked::Parent(child) => child,
    };
    let registry = hypervisor_ext::registry::Registry::open(run_dir)?;
    let deadline = std::time::Instant::now() + DETACH_TIMEOUT;
    loop {
        // Without blocking; an error (a signal) is only another turn of the loop.
        if let Ok(Some((_, status))) = host::waitpid(Some(child), true) {
            // It ended before it was seen running: its id (its log stays), and what it said.
            println!("{child}");
            if let Ok(fd) = hypervisor_ext::console_log::open(run_dir, child) {
                let mut text = String::new();
                let _ = std::io::Read::read_to_string(&mut std::fs::File::from(fd), &mut text);
                eprint!("{text}");
            }
            let code = match status.signal() {
                None => status.code(),
                Some(_) => i32::from(crate::EXIT_PVMCTL_ERROR),
            };
            exit(code);
        }
        if registry.list()?.iter().any(|e| e.id == child) {
            println!("{child}");
            exit(0);
        }
        if std::time::Instant::now() > deadline {
            return Err(RunError::Detach(std::io::Error::from(
                std::io::ErrorKind::TimedOut,
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// Exits with `code`, telling a warm run's `pvmctl run` first.
fn exit(code: i32) -> ! {
    hypervisor_ext::pool::report_exit(code);
    std::process::exit(code)
}

/// `PVM_BENCH_FD`: the fd `pvmctl bench fork` passes for fork timing records.
fn bench_fd() -> Option<i32> {
    std::env::var("PVM_BENCH_FD").ok()?.parse().ok()
}
