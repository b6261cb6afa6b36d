//! `pvmctl bench net`: pVMs serving TCP clients through published ports, against Linux.
//!
//! In the same run, each round:
//! - `redis-benchmark -c 50 -n 200000 -t set,get` without and with pipelining (`-P 16`) against
//!   the kv example (one pVM, commands in libkv 2) and against `redis-server` (persistence off):
//!   throughput and p50/p99 latency as redis-benchmark reports them (`--csv`); and against
//!   the kv example with [`WORKERS`] pre-forked worker pVMs sharing its listener;
//! - a bulk stream (64 KiB writes, 256 MiB) into a pVM (`netecho --sink`) against a Linux
//!   thread reading a loopback socket;
//! - a 1-byte request/response round trip with a pVM (`netecho`) against a Linux thread
//!   echoing on loopback, spinning on a non-blocking socket (as the pVM path does) and blocking
//!   in `read` (as a typical server).
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use hypervisor_ext::trust::{self, TrustRef};

use crate::figures::{Bar, Figures, Group, Kind, Samples};
use crate::ipc::RoundsArgs;
use crate::{format_us, guest_path, median, write_targets, BenchError, HostInfo, Stats};

/// Errors of `bench net` (wrapped in [`BenchError`]).
#[derive(Debug, thiserror::Error)]
pub enum NetBenchError {
    /// An example guest is missing.
    #[error(transparent)]
    GuestMissing(#[from] crate::GuestMissing),
    /// A tool the baseline needs is missing.
    #[error("{0} is missing: install the Debian packages redis-tools and redis-server")]
    Tool(&'static str),
    /// A step failed.
    #[error("{what}: {detail}")]
    Step {
        /// What was being done.
        what: &'static str,
        /// What went wrong.
        detail: String,
    },
}

fn step(what: &'static str) -> impl FnOnce(String) -> BenchError {
    move |detail| NetBenchError::Step { what, detail }.into()
}

/// redis-benchmark's parameters (the issue's).
const CLIENTS: &str = "50";
const REQUESTS: &str = "200000";
const PIPELINE: &str = "16";
/// Bulk stream: bytes per write, bytes in all.
const CHUNK: usize = 64 * 1024;
const STREAM_BYTES: usize = 256 << 20;
/// Pre-forked kv workers in the workers rows.
const WORKERS: &str = "2";
/// Round trips per measurement.
const ROUND_TRIPS: usize = 20_000;

/// Targets (network issue).
const THROUGHPUT_TARGET: f64 = 0.5;
const LATENCY_TARGET: f64 = 2.0;
const STREAM_TARGET: f64 = 0.5;
const RTT_TARGET: f64 = 1.5;

/// A port nobody listens on now.
fn free_port() -> Result<u16, BenchError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| step("find a free port")(e.to_string()))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| step("find a free port")(e.to_string()))
}

fn connect(port: u16) -> Result<TcpStream, BenchError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) if Instant::now() > deadline => return Err(step("connect")(e.to_string())),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// A background process, ended when dropped: TERM first (a family's root passes it to the
/// whole family, whose pVMs would otherwise outlive a SIGKILLed root), then KILL.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = crate::child::signal(self.0.id(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.0.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The private places of one run.
struct Env {
    dir: PathBuf,
    exe: PathBuf,
}

impl Env {
    fn pvmctl(&self) -> Command {
        let mut cmd = Command::new(&self.exe);
        cmd.env("PVM_RUN_DIR", self.dir.join("run"))
            .env("PVM_TRUST_STORE", self.dir.join("trust").join("trusted"))
            .env_remove("PVM_LOG");
        cmd
    }

    /// `pvmctl run --publish PORT:GUEST_PORT OPTS GUEST -- ARGS` in the background, once it
    /// printed a line starting with `ready`.
    fn start(
        &self,
        port: u16,
        guest_port: u16,
        opts: &[String],
        guest: &Path,
        args: &[&str],
        ready: &str,
    ) -> Result<Server, BenchError> {
        let mut child = self
            .pvmctl()
            .arg("run")
            .arg(format!("--publish=127.0.0.1:{port}:{guest_port}"))
            .args(opts)
            .arg(guest)
            .arg("--")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| step("pvmctl run")(e.to_string()))?;
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            let mut r = BufReader::new(out);
            let _ = r.read_line(&mut line);
            // The rest of its output is not read: drain it in the background.
            std::thread::spawn(move || std::io::copy(&mut r, &mut std::io::sink()));
        }
        let server = Server(child);
        if !line.starts_with(ready) {
            return Err(step("pvmctl run")(format!("printed {line:?}")));
        }
        Ok(server)
    }
}

/// One redis-benchmark test's figures.
#[derive(Clone, Copy, Debug, Default)]
struct Redis {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// `redis-benchmark` against `port`: SET and GET figures.
fn redis_benchmark(port: u16, pipeline: Option<&str>) -> Result<[Redis; 2], BenchError> {
    let mut cmd = Command::new("redis-benchmark");
    cmd.args([
        "-p",
        &port.to_string(),
        "-c",
        CLIENTS,
        "-n",
        REQUESTS,
        "-t",
        "set,get",
        "--csv",
    ]);
    if let Some(p) = pipeline {
        cmd.args(["-P", p]);
    }
    let out = cmd.output().map_err(|_| NetBenchError::Tool("redis-benchmark"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut found = [None, None];
    for line in text.lines() {
        let cells: Vec<&str> = line.split(',').map(|c| c.trim_matches('"')).collect();
        let slot = match cells.first() {
            Some(&"SET") => 0,
            Some(&"GET") => 1,
            _ => continue,
        };
        let num = |i: usize| cells.get(i).and_then(|c| c.parse::<f64>().ok());
        if let (Some(rps), Some(p50), Some(p99)) = (num(1), num(4), num(6)) {
            found[slot] = Some(Redis {
                rps,
                p50_ms: p50,
                p99_ms: p99,
            });
        }
    }
    match found {
        [Some(set), Some(get)] if out.status.success() => Ok([set, get]),
        _ => Err(step("redis-benchmark")(format!(
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        ))),
    }
}

/// Streams [`STREAM_BYTES`] in [`CHUNK`] writes to a sink at `port`; bytes per second.
fn stream(port: u16) -> Result<f64, BenchError> {
    let mut s = connect(port)?;
    let chunk = vec![0x5au8; CHUNK];
    let start = Instant::now();
    for _ in 0..STREAM_BYTES / CHUNK {
        s.write_all(&chunk).map_err(|e| step("stream")(e.to_string()))?;
    }
    s.shutdown(std::net::Shutdown::Write)
        .map_err(|e| step("stream")(e.to_string()))?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)
        .map_err(|e| step("stream")(e.to_string()))?;
    let secs = start.elapsed().as_secs_f64();
    if answer.trim() != STREAM_BYTES.to_string() {
        return Err(step("stream")(format!("the sink counted {answer:?}")));
    }
    Ok(STREAM_BYTES as f64 / secs)
}

/// [`ROUND_TRIPS`] 1-byte round trips with an echo server at `port`.
fn round_trips(port: u16) -> Result<Vec<Duration>, BenchError> {
    let mut s = connect(port)?;
    let mut byte = [7u8];
    let mut samples = Vec::with_capacity(ROUND_TRIPS);
    for i in 0..ROUND_TRIPS + ROUND_TRIPS / 10 {
        let t = Instant::now();
        s.write_all(&byte)
            .map_err(|e| step("round trip")(e.to_string()))?;
        s.read_exact(&mut byte)
            .map_err(|e| step("round trip")(e.to_string()))?;
        if i >= ROUND_TRIPS / 10 {
            samples.push(t.elapsed());
        }
    }
    Ok(samples)
}

/// What a Linux loopback server thread does.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Serve {
    /// Echo, blocking in `read` (as a typical server).
    Echo,
    /// Echo, spinning on a non-blocking socket (as the pVM path does: the fairest baseline for
    /// a round trip).
    EchoSpin,
    /// Count, then answer the count.
    Sink,
}

/// A Linux loopback server thread, one client at a time, for ever (the process ends it).
fn linux_server(mode: Serve) -> Result<u16, BenchError> {
    let sink = mode == Serve::Sink;
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| step("loopback server")(e.to_string()))?;
    let port = l
        .local_addr()
        .map_err(|e| step("loopback server")(e.to_string()))?
        .port();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let _ = s.set_nodelay(true);
            let _ = s.set_nonblocking(mode == Serve::EchoSpin);
            let mut buf = vec![0u8; CHUNK];
            let mut total = 0usize;
            loop {
                match s.read(&mut buf) {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::hint::spin_loop(),
                    Ok(0) | Err(_) => break,
                    Ok(n) if sink => total += n,
                    Ok(n) => {
                        if s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
            if sink {
                let _ = s.write_all(total.to_string().as_bytes());
            }
        }
    });
    Ok(port)
}

/// `pvmctl bench net`.
pub fn net(args: RoundsArgs) -> Result<ExitCode, BenchError> {
    for tool in ["redis-benchmark", "redis-server"] {
        if Command::new(tool).arg("--version").output().is_err() {
            return Err(NetBenchError::Tool(tool).into());
        }
    }
    let exe = std::env::current_exe().map_err(BenchError::CurrentExe)?;
    let scratch = crate::scratch("net", true)?;
    let dir = scratch.path().to_path_buf();
    for sub in ["run", "trust"] {
        // Private, as the runtime requires (mode 0700).
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(dir.join(sub))
            .map_err(|e| step("make the run directory")(e.to_string()))?;
    }
    let env = Env { dir, exe };
    run(&env, &args)
}

fn run(env: &Env, args: &RoundsArgs) -> Result<ExitCode, BenchError> {
    let kv = guest_path("kv").map_err(NetBenchError::from)?;
    let netecho = guest_path("netecho").map_err(NetBenchError::from)?;
    let libkv = crate::guest_lib_path("kv_v2").map_err(NetBenchError::from)?;
    let bytes = std::fs::read(&libkv).map_err(|e| step("read libkv")(e.to_string()))?;
    TrustRef::open(&env.dir.join("trust").join("trusted"))
        .and_then(|t| t.add(&trust::digest(&bytes), "libkv_v2.so"))
        .map_err(|e| step("trust libkv")(e.to_string()))?;
    let linux_echo = linux_server(Serve::Echo)?;
    let linux_spin = linux_server(Serve::EchoSpin)?;
    let linux_sink = linux_server(Serve::Sink)?;
    eprintln!("pvmctl bench net: {} rounds...", args.rounds);
    // [SET, GET] x [plain, pipelined] x [pvm, redis, pvm workers].
    let mut redis: Vec<[[[Redis; 2]; 3]; 2]> = Vec::new();
    let (mut streams, mut linux_streams) = (Vec::new(), Vec::new());
    let (mut rtt, mut linux_rtt, mut spin_rtt) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..args.rounds {
        let kv_port = free_port()?;
        let kv_server = env.start(
            kv_port,
            6379,
            &[format!("--lib=kv={}", libkv.display())],
            &kv,
            &["--port", "6379"],
            "kv: serving",
        )?;
        let redis_port = free_port()?;
        let _redis_server = Server(
            Command::new("redis-server")
                .args(["--port", &redis_port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|_| NetBenchError::Tool("redis-server"))?,
        );
        drop(connect(redis_port)?);
        let mut round = [[[Redis::default(); 2]; 3]; 2];
        for (p, pipeline) in [None, Some(PIPELINE)].into_iter().enumerate() {
            round[p][0] = redis_benchmark(kv_port, pipeline)?;
            round[p][1] = redis_benchmark(redis_port, pipeline)?;
        }
        drop(kv_server);
        let workers_port = free_port()?;
        let workers = env.start(
            workers_port,
            6379,
            &[format!("--lib=kv={}", libkv.display())],
            &kv,
            &["--port", "6379", "--workers", WORKERS],
            "kv: serving",
        )?;
        for (p, pipeline) in [None, Some(PIPELINE)].into_iter().enumerate() {
            round[p][2] = redis_benchmark(workers_port, pipeline)?;
        }
        drop(workers);
        redis.push(round);

        let sink_port = free_port()?;
        let sink = env.start(
            sink_port,
            9,
            &[],
            &netecho,
            &["--port", "9", "--sink"],
            "listening",
        )?;
        streams.push(stream(sink_port)?);
        linux_streams.push(stream(linux_sink)?);
        drop(sink);

        let echo_port = free_port()?;
        let echo = env.start(echo_port, 7, &[], &netecho, &["--port", "7"], "listening")?;
        rtt.push(round_trips(echo_port)?);
        linux_rtt.push(round_trips(linux_echo)?);
        spin_rtt.push(round_trips(linux_spin)?);
        drop(echo);
    }
    figures(
        &redis,
        [&streams, &linux_streams],
        [&rtt, &linux_rtt, &spin_rtt],
        args.rounds,
    )
    .write(&args.figures)?;
    let stats = |runs: &[Vec<Duration>]| runs.iter().map(|r| Stats::new(r)).collect::<Vec<_>>();
    report(
        args,
        &redis,
        &streams,
        &linux_streams,
        [&stats(&rtt), &stats(&linux_rtt), &stats(&spin_rtt)],
    )
}

/// The chart's rows: redis-benchmark's requests/s and its p50 (bar) and p99 (whisker) for the kv
/// pVM (and its pre-forked workers) against redis-server, the stream against Linux loopback,
/// and the 1-byte round trip against a spinning and a blocking Linux server. The CSV has every
/// round's redis-benchmark figures and stream rate, and every round trip.
fn figures(
    redis: &[[[[Redis; 2]; 3]; 2]],
    [streams, linux_streams]: [&[f64]; 2],
    [rtt, linux_rtt, spin_rtt]: [&[Vec<Duration>]; 3],
    rounds: u32,
) -> Figures {
    let mut groups = Vec::new();
    let mut samples = Vec::new();
    let per_round = |p: usize, who: usize, t: usize, f: fn(&Redis) -> f64| {
        redis.iter().map(|r| f(&r[p][who][t])).collect::<Vec<f64>>()
    };
    let latency = |p: usize, who: usize, t: usize| {
        let p50: Vec<f64> = per_round(p, who, t, |r| r.p50_ms * 1e3);
        Bar {
            median: median(&p50),
            p99: Some(median(&per_round(p, who, t, |r| r.p99_ms * 1e3))),
            dots: p50,
        }
    };
    for (p, pipelined) in [(0, ""), (1, " -P 16")] {
        for (t, test) in [(0, "SET"), (1, "GET")] {
            let name = format!("{test}{pipelined}");
            groups.push(Group {
                label: name.clone(),
                kind: Kind::Rate("requests/s"),
                pvm: Some(Bar::of_figures(&per_round(p, 0, t, |r| r.rps))),
                baseline: Some(Bar::of_figures(&per_round(p, 1, t, |r| r.rps))),
            });
            groups.push(Group {
                label: format!("{name}, {WORKERS} workers"),
                kind: Kind::Rate("requests/s"),
                pvm: Some(Bar::of_figures(&per_round(p, 2, t, |r| r.rps))),
                baseline: Some(Bar::of_figures(&per_round(p, 1, t, |r| r.rps))),
            });
            groups.push(Group {
                label: format!("{name} p50/p99"),
                kind: Kind::Latency,
                pvm: Some(latency(p, 0, t)),
                baseline: Some(latency(p, 1, t)),
            });
            for (who, side, row) in [
                (0, "pvm", name.clone()),
                (1, "redis-server", name.clone()),
                (2, "pvm", format!("{name} ({WORKERS} worker pVMs)")),
            ] {
                for (metric, f) in [
                    ("requests_per_s", (|r: &Redis| r.rps) as fn(&Redis) -> f64),
                    ("p50_us", |r: &Redis| r.p50_ms * 1e3),
                    ("p99_us", |r: &Redis| r.p99_ms * 1e3),
                ] {
                    samples.extend(Samples::per_round(&row, side, metric, &per_round(p, who, t, f)));
                }
            }
        }
    }
    let mb = |v: &[f64]| v.iter().map(|b| b / 1e6).collect::<Vec<_>>();
    groups.push(Group {
        label: "stream".into(),
        kind: Kind::Rate("MB/s"),
        pvm: Some(Bar::of_figures(&mb(streams))),
        baseline: Some(Bar::of_figures(&mb(linux_streams))),
    });
    for (side, values) in [("pvm", streams), ("linux", linux_streams)] {
        samples.extend(Samples::per_round("stream", side, "mb_per_s", &mb(values)));
    }
    let all = |runs: &[Vec<Duration>]| runs.concat();
    for (label, linux) in [
        ("1-byte round trip (vs spinning server)", spin_rtt),
        ("1-byte round trip (vs blocking server)", linux_rtt),
    ] {
        groups.push(Group {
            label: label.into(),
            kind: Kind::Latency,
            pvm: Some(Bar::of_samples(&all(rtt))),
            baseline: Some(Bar::of_samples(&all(linux))),
        });
    }
    for (side, runs) in [
        ("pvm", rtt),
        ("linux-spinning", spin_rtt),
        ("linux-blocking", linux_rtt),
    ] {
        for (i, r) in runs.iter().enumerate() {
            samples.push(Samples::of_durations("1-byte round trip", side, i as u32 + 1, r));
        }
    }
    Figures {
        bench: "net",
        title: format!(
            "pvmctl bench net, {}, {}",
            HostInfo::get().date,
            crate::rounds_text(rounds)
        ),
        sides: ("pVM", "redis-server or Linux loopback"),
        groups,
        samples,
    }
}

fn report(
    args: &RoundsArgs,
    redis: &[[[[Redis; 2]; 3]; 2]],
    streams: &[f64],
    linux_streams: &[f64],
    [rtt, linux_rtt, spin_rtt]: [&[Stats]; 3],
) -> Result<ExitCode, BenchError> {
    use std::fmt::Write as _;
    let h = HostInfo::get();
    // Median over rounds of each figure.
    let fig = |p: usize, who: usize, test: usize, f: fn(&Redis) -> f64| {
        median(&redis.iter().map(|r| f(&r[p][who][test])).collect::<Vec<_>>())
    };
    let stream_pvm = median(streams) / 1e6;
    let stream_linux = median(linux_streams) / 1e6;
    let rtt_med = median(&rtt.iter().map(|s| s.median_us).collect::<Vec<_>>());
    let rtt_p99 = median(&rtt.iter().map(|s| s.p99_us).collect::<Vec<_>>());
    let lrtt_med = median(&linux_rtt.iter().map(|s| s.median_us).collect::<Vec<_>>());
    let lrtt_p99 = median(&linux_rtt.iter().map(|s| s.p99_us).collect::<Vec<_>>());
    let srtt_med = median(&spin_rtt.iter().map(|s| s.median_us).collect::<Vec<_>>());
    let srtt_p99 = median(&spin_rtt.iter().map(|s| s.p99_us).collect::<Vec<_>>());
    let mut targets = Vec::new();
    let mut rows = Vec::new();
    let mut worker_rows = Vec::new();
    for (p, label) in [(0, ""), (1, " -P 16")] {
        for (t, name) in [(0, "SET"), (1, "GET")] {
            let workers = (
                fig(p, 2, t, |r| r.rps),
                fig(p, 2, t, |r| r.p50_ms),
                fig(p, 2, t, |r| r.p99_ms),
            );
            worker_rows.push((format!("{name}{label}"), workers));
            let row = (
                format!("{name}{label}"),
                fig(p, 0, t, |r| r.rps),
                fig(p, 0, t, |r| r.p50_ms),
                fig(p, 0, t, |r| r.p99_ms),
                fig(p, 1, t, |r| r.rps),
                fig(p, 1, t, |r| r.p50_ms),
                fig(p, 1, t, |r| r.p99_ms),
            );
            let thr = row.1 / row.4;
            let lat = row.3 / row.6;
            targets.push((
                format!("{} throughput >= {THROUGHPUT_TARGET}x redis-server", row.0),
                format!("{thr:.2}x"),
                thr >= THROUGHPUT_TARGET,
            ));
            targets.push((
                format!("{} p99 latency <= {LATENCY_TARGET}x redis-server", row.0),
                format!("{lat:.2}x"),
                lat <= LATENCY_TARGET,
            ));
            rows.push(row);
        }
    }
    let stream_ratio = stream_pvm / stream_linux;
    targets.push((
        format!("stream >= {STREAM_TARGET}x Linux loopback"),
        format!("{stream_ratio:.2}x"),
        stream_ratio >= STREAM_TARGET,
    ));
    // Against the spinning server: the same technique, the stricter comparison.
    let rtt_ratio = rtt_med / srtt_med;
    targets.push((
        format!("1-byte round trip <= {RTT_TARGET}x Linux loopback (spinning server)"),
        format!("{rtt_ratio:.2}x"),
        rtt_ratio <= RTT_TARGET,
    ));
    if args.json {
        let json = serde_json::json!({
            "date": h.date, "unix_time": h.unix_time, "rounds": args.rounds,
            "redis": rows.iter().map(|r| serde_json::json!({
                "test": r.0, "pvm_rps": r.1, "pvm_p50_ms": r.2, "pvm_p99_ms": r.3,
                "redis_rps": r.4, "redis_p50_ms": r.5, "redis_p99_ms": r.6,
            })).collect::<Vec<_>>(),
            "workers": WORKERS,
            "redis_workers": worker_rows.iter().map(|(t, w)| serde_json::json!({
                "test": t, "pvm_rps": w.0, "pvm_p50_ms": w.1, "pvm_p99_ms": w.2,
            })).collect::<Vec<_>>(),
            "stream_pvm_mb_s": stream_pvm, "stream_linux_mb_s": stream_linux,
            "rtt_pvm_median_us": rtt_med, "rtt_pvm_p99_us": rtt_p99,
            "rtt_linux_median_us": lrtt_med, "rtt_linux_p99_us": lrtt_p99,
            "rtt_linux_spin_median_us": srtt_med, "rtt_linux_spin_p99_us": srtt_p99,
        });
        println!("{json}");
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = format!(
        "pvmctl bench net, {} (unix time {}), host {}: Linux {}, {}\n\
         {} rounds (medians of the rounds' figures); redis-benchmark -c {CLIENTS} -n {REQUESTS} -t set,get \
         [-P {PIPELINE}] --csv\n\n",
        h.date, h.unix_time, h.hostname, h.kernel, h.cpu, args.rounds
    );
    let _ = writeln!(
        out,
        "  {:<10} {:>12} {:>9} {:>9}   {:>12} {:>9} {:>9}   {:>9} {:>9}",
        "", "kv pVM rps", "p50 ms", "p99 ms", "redis rps", "p50 ms", "p99 ms", "rps ratio", "p99 ratio"
    );
    for r in &rows {
        let _ = writeln!(
            out,
            "  {:<10} {:>12.0} {:>9.3} {:>9.3}   {:>12.0} {:>9.3} {:>9.3}   {:>9.2} {:>9.2}",
            r.0,
            r.1,
            r.2,
            r.3,
            r.4,
            r.5,
            r.6,
            r.1 / r.4,
            r.3 / r.6
        );
    }
    let _ = writeln!(
        out,
        "\n  kv with {WORKERS} pre-forked worker pVMs (each its own store):"
    );
    for ((name, w), r) in worker_rows.iter().zip(&rows) {
        let _ = writeln!(
            out,
            "  {:<10} {:>12.0} {:>9.3} {:>9.3}   {:>12} {:>9} {:>9}   {:>9.2} {:>9.2}",
            name,
            w.0,
            w.1,
            w.2,
            "",
            "",
            "",
            w.0 / r.4,
            w.2 / r.6
        );
    }
    let _ = writeln!(
        out,
        "\n  stream (64 KiB writes, {} MiB): pVM {stream_pvm:.0} MB/s, Linux loopback {stream_linux:.0} MB/s, ratio {stream_ratio:.2}",
        STREAM_BYTES >> 20
    );
    let _ = writeln!(
        out,
        "  1-byte round trip: pVM {} median, {} p99; Linux loopback, spinning server {} median, {} p99 \
         (ratio {rtt_ratio:.2}); blocking server {} median, {} p99 (ratio {:.2})",
        format_us(rtt_med),
        format_us(rtt_p99),
        format_us(srtt_med),
        format_us(srtt_p99),
        format_us(lrtt_med),
        format_us(lrtt_p99),
        rtt_med / lrtt_med
    );
    write_targets(&mut out, &targets, 7);
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}
