//! TCP through published ports on real KVM: clients on the host talk to `examples/netecho` in
//! pVMs; pre-forked workers share a listener; refusals; limits; a killed family leaves nothing.
mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use common::*;

/// Publishes guest port 7 on a free host port of 127.0.0.1.
const PUBLISH: &str = "--publish=127.0.0.1:0:7";

/// Starts netecho with `opts` and `args`; returns it once it listens, with its host port.
fn start_echo(test: &str, opts: &[&str], args: &[&str]) -> (Running, u16) {
    let mut pvm = Running::start(test, opts, "netecho", args);
    pvm.expect("listening on guest port 7");
    let port = host_port(test, &pvm);
    (pvm, port)
}

/// The host port `ps` shows for the root pVM of `pvm`.
fn host_port(test: &str, pvm: &Running) -> u16 {
    let rows = ps_json(test, false);
    let root = rows
        .iter()
        .find(|r| r["id"] == pvm.id())
        .unwrap_or_else(|| panic!("the root is listed: {rows:#?}"));
    root["ports"][0]
        .as_str()
        .and_then(|p| p.split_once("->"))
        .and_then(|(host, _)| host.rsplit_once(':'))
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or_else(|| panic!("ps shows the published port: {root:#?}"))
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the published port");
    s.set_read_timeout(Some(TIME_LIMIT)).unwrap();
    s
}

/// Sends `data`, half-closes, and reads the echo to its end.
fn echo(port: u16, data: &[u8]) -> Vec<u8> {
    let mut s = connect(port);
    let mut reader = s.try_clone().unwrap();
    // Read while writing: a payload larger than the rings and socket buffers must not deadlock.
    let got = std::thread::spawn(move || {
        let mut got = Vec::new();
        reader.read_to_end(&mut got).expect("read the echo");
        got
    });
    s.write_all(data).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    got.join().unwrap()
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Whether `pid` is gone (or a zombie nobody reaped yet).
fn gone(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
        s.rsplit(") ").next().is_some_and(|r| r.starts_with('Z'))
    })
}

#[test]
fn a_client_gets_its_bytes_back_through_a_published_port() {
    require_kvm();
    let t = "net-echo";
    let (pvm, port) = start_echo(t, &[PUBLISH], &["--conns", "3"]);
    // Small, then larger than a ring (256 KiB): the rings wrap and both sides wait for room.
    for (i, len) in [1usize, 100_000, 3 << 20].into_iter().enumerate() {
        let data = pattern(len, i as u8);
        let got = echo(port, &data);
        assert!(got == data, "{len} bytes echoed intact (got {})", got.len());
    }
    let out = pvm.finish();
    out.expect_status(0);
    assert_eq!(out.stdout.matches("served 127.0.0.1:").count(), 3, "{out:#?}");
    assert!(out.stdout.contains(&format!(" {} by pVM", 3 << 20)), "{out:#?}");
    assert_no_leaks(t);
}

#[test]
fn pre_forked_workers_share_one_listener() {
    require_kvm();
    let t = "net-prefork";
    let (pvm, port) = start_echo(t, &[PUBLISH], &["--workers", "3", "--conns", "2"]);
    // Six clients at once: three workers, each serving one connection at a time.
    let clients: Vec<_> = (0..6u8)
        .map(|i| {
            std::thread::spawn(move || {
                let data = pattern(50_000, i);
                assert!(echo(port, &data) == data, "client {i}");
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let out = pvm.finish();
    out.expect_status(0);
    let servers: std::collections::BTreeSet<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("served ").and_then(|l| l.split(" by pVM ").nth(1)))
        .collect();
    assert_eq!(servers.len(), 3, "every worker served (pre-fork): {out:#?}");
    assert_no_leaks(t);
}

#[test]
fn only_published_ports_can_be_listened_on() {
    require_kvm();
    let t = "net-refused";
    // Guest port 8 is not published (7 is); with no --publish at all, nothing is.
    let out = run_guest(t, &[PUBLISH], "netecho", &["--port", "8"]);
    out.expect_status(1);
    assert!(
        out.stderr.contains("cannot listen on port 8: permission denied"),
        "{out:#?}"
    );
    let out = run_guest(t, &[], "netecho", &[]);
    out.expect_status(1);
    assert!(out.stderr.contains("permission denied"), "{out:#?}");
    assert_no_leaks(t);
}

#[test]
fn bad_publish_values_and_taken_ports_are_clear_errors() {
    require_kvm();
    let t = "net-publish-errors";
    for bad in ["70000", "7:0", "x:7", "1.2.3:7", "7:8:9:10", ""] {
        let out = pvmctl_run(
            t,
            &[
                "run",
                &format!("--publish={bad}"),
                &guest("netecho").display().to_string(),
            ],
        );
        out.expect_status(2).expect_no_host_panic();
        assert!(out.stderr.contains("invalid --publish"), "{bad:?}: {out:#?}");
    }
    // A port some other program holds.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = run_guest(t, &[&format!("--publish=127.0.0.1:{port}:7")], "netecho", &[]);
    out.expect_no_host_panic();
    assert_ne!(out.status, Some(0));
    assert!(
        out.stderr.contains(&format!("cannot publish 127.0.0.1:{port}")) && out.stderr.contains("in use"),
        "{out:#?}"
    );
    assert_no_leaks(t);
}

#[test]
fn a_client_that_resets_mid_stream_does_not_disturb_the_next() {
    require_kvm();
    let t = "net-reset";
    let (pvm, port) = start_echo(t, &[PUBLISH], &["--conns", "2"]);
    {
        let mut s = connect(port);
        s.write_all(&pattern(200_000, 1)).unwrap();
        // SO_LINGER 0: closing sends a reset, not an end of file.
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: a valid socket and a pointer to a `linger` of the size given.
        let r = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&s),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0);
    }
    let data = pattern(10_000, 2);
    assert!(echo(port, &data) == data);
    let out = pvm.finish();
    out.expect_status(0);
    assert_eq!(out.stdout.matches("served ").count(), 2, "{out:#?}");
    assert_no_leaks(t);
}

#[test]
fn past_the_connection_limit_clients_are_refused_not_queued_for_ever() {
    require_kvm();
    let t = "net-limit";
    let (pvm, port) = start_echo(t, &[PUBLISH, "--max-conns=1"], &["--conns", "2"]);
    // The first client holds the only connection (its echo works).
    let mut first = connect(port);
    first.write_all(b"hold").unwrap();
    let mut buf = [0u8; 4];
    first.read_exact(&mut buf).unwrap();
    // The second is closed at once: it reads end of file (or a reset), no echo.
    let mut second = connect(port);
    let _ = second.write_all(b"x");
    let mut rest = Vec::new();
    match second.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "no echo past the limit"),
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset),
    }
    // Once the first ends, a new client is served.
    first.shutdown(Shutdown::Write).unwrap();
    let mut tail = Vec::new();
    first.read_to_end(&mut tail).unwrap();
    assert!(echo(port, b"again") == b"again");
    pvm.finish().expect_status(0);
    assert_no_leaks(t);
}

#[test]
fn a_killed_family_closes_its_connections_and_its_backend_ends() {
    require_kvm();
    let t = "net-kill";
    let (mut pvm, port) = start_echo(t, &[PUBLISH], &["--workers", "2"]);
    pvm.expect("2 workers");
    let backend = backend_of(pvm.id()).expect("the family's network backend runs");
    let mut s = connect(port);
    s.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).unwrap();
    ctl(t, &["kill", "-s", "KILL", "--family", &pvm.id().to_string()]).expect_status(0);
    // The client sees its connection end: end of file or a reset, never a hang.
    let mut rest = Vec::new();
    match s.read_to_end(&mut rest) {
        Ok(_) => {}
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset),
    }
    let _ = pvm.finish();
    let deadline = std::time::Instant::now() + TIME_LIMIT;
    while !gone(backend) {
        assert!(std::time::Instant::now() < deadline, "the backend ended");
        std::thread::sleep(Duration::from_millis(5));
    }
    // The port is free again.
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("the published port was released");
    // What SIGKILLed monitors could not remove, the next `ps` does.
    ctl(t, &["ps"]).expect_status(0);
    assert_no_leaks(t);
}

/// Runs `redis-cli -p PORT ARGS...`; its output, trimmed.
fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = std::process::Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .output()
        .expect("redis-cli (Debian package redis-tools; .ci/run installs it)");
    assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim_end().to_string()
}

/// Starts the kv example serving the Redis protocol with libkv `lib`; returns it with its
/// host port.
fn start_kv(test: &str, lib: &str) -> (Running, u16) {
    let (v1, v2) = (guest_lib("kv_v1"), guest_lib("kv_v2"));
    ctl(
        test,
        &[
            "lib",
            "trust",
            &v1.display().to_string(),
            &v2.display().to_string(),
        ],
    )
    .expect_status(0);
    let lib_opt = format!("--lib=kv={}", guest_lib(lib).display());
    let publish = "--publish=127.0.0.1:0:6379";
    let mut pvm = Running::start(test, &[publish, &lib_opt], "kv", &["--port", "6379"]);
    pvm.expect("kv: serving the Redis protocol on guest port 6379");
    let port = host_port(test, &pvm);
    (pvm, port)
}

#[test]
fn redis_cli_talks_to_the_kv_example() {
    require_kvm();
    let t = "net-redis-cli";
    let (mut pvm, port) = start_kv(t, "kv_v1");
    assert_eq!(redis_cli(port, &["PING"]), "PONG");
    assert_eq!(redis_cli(port, &["ECHO", "hello world"]), "hello world");
    assert_eq!(redis_cli(port, &["SET", "greeting", "bonjour à tous"]), "OK");
    assert_eq!(redis_cli(port, &["GET", "greeting"]), "bonjour à tous");
    assert_eq!(redis_cli(port, &["MSET", "a", "1", "b", "2"]), "OK");
    assert_eq!(redis_cli(port, &["MGET", "a", "b", "nope"]), "1\n2");
    assert_eq!(redis_cli(port, &["EXISTS", "a", "b", "nope"]), "2");
    assert_eq!(redis_cli(port, &["DEL", "a", "nope"]), "1");
    assert_eq!(redis_cli(port, &["GET", "a"]), "");
    assert_eq!(redis_cli(port, &["INCR", "n"]), "ERR unknown command 'INCR'");
    // Pipelined: many requests in one write, the answers in order.
    let mut s = connect(port);
    let mut batch = Vec::new();
    for i in 0..200 {
        batch.extend_from_slice(format!("*3\r\n$3\r\nSET\r\n$4\r\nk{i:03}\r\n$3\r\n{i:03}\r\n").as_bytes());
        batch.extend_from_slice(format!("*2\r\n$3\r\nGET\r\n$4\r\nk{i:03}\r\n").as_bytes());
    }
    batch.extend_from_slice(b"PING\r\n*1\r\n$4\r\nQUIT\r\n");
    s.write_all(&batch).unwrap();
    let mut answers = String::new();
    s.read_to_string(&mut answers).unwrap();
    let mut want = String::new();
    for i in 0..200 {
        want.push_str(&format!("+OK\r\n$3\r\n{i:03}\r\n"));
    }
    want.push_str("+PONG\r\n+OK\r\n");
    assert_eq!(answers, want);
    // A request that is not the protocol gets an error, and the connection closes.
    let mut s = connect(port);
    s.write_all(b"*2\r\n$x\r\n").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("-ERR Protocol error"), "{answer:?}");
    ctl(t, &["kill", "-s", "USR1", &pvm.id().to_string()]).expect_status(0);
    pvm.expect("kv: served ");
    pvm.finish().expect_status(0);
    assert_no_leaks(t);
}

#[test]
fn a_hot_swap_during_redis_benchmark_loses_no_request() {
    require_kvm();
    let t = "net-redis-swap";
    let (mut pvm, port) = start_kv(t, "kv_v1");
    assert_eq!(redis_cli(port, &["SET", "kept", "across swaps"]), "OK");
    let bench = std::process::Command::new("redis-benchmark")
        .args([
            "-p",
            &port.to_string(),
            "-c",
            "20",
            "-n",
            "60000",
            "-t",
            "set,get",
            "-q",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("redis-benchmark (Debian package redis-tools; .ci/run installs it)");
    // A checking client: every answer is the one it expects, across the swaps.
    let checker = std::thread::spawn(move || {
        let mut s = connect(port);
        let mut failures = 0;
        let mut buf = vec![0u8; 256];
        for i in 0..3000 {
            let set = format!(
                "*3\r\n$3\r\nSET\r\n$6\r\nc{i:05}\r\n$6\r\nv{i:05}\r\n*2\r\n$3\r\nGET\r\n$6\r\nc{i:05}\r\n"
            );
            s.write_all(set.as_bytes()).unwrap();
            let want = format!("+OK\r\n$6\r\nv{i:05}\r\n");
            let got = &mut buf[..want.len()];
            s.read_exact(got).unwrap();
            if got != want.as_bytes() {
                failures += 1;
            }
        }
        failures
    });
    let (v1, v2) = (guest_lib("kv_v1"), guest_lib("kv_v2"));
    let id = pvm.id().to_string();
    let mut swaps = 0;
    while swaps < 6 {
        let file = if swaps % 2 == 0 { &v2 } else { &v1 };
        let out = ctl(
            t,
            &[
                "lib",
                "update",
                "--allow-downgrade",
                &id,
                "kv",
                &file.display().to_string(),
            ],
        );
        out.expect_status(0);
        swaps += 1;
    }
    assert_eq!(
        checker.join().unwrap(),
        0,
        "every checked answer right across {swaps} swaps"
    );
    let out = finish(bench);
    out.expect_status(0);
    assert!(
        !out.stdout.contains("rror") && !out.stderr.contains("rror"),
        "{out:#?}"
    );
    assert!(
        out.stdout.contains("SET: ") && out.stdout.contains("GET: "),
        "{out:#?}"
    );
    // Back on version 2 (an even number of swaps from 1 ends on 1: one more), data intact.
    ctl(t, &["lib", "update", &id, "kv", &v2.display().to_string()]).expect_status(0);
    assert_eq!(redis_cli(port, &["GET", "kept"]), "across swaps");
    assert_eq!(redis_cli(port, &["INCR", "counter"]), "1");
    assert!(redis_cli(port, &["STATS"]).contains("libkv=2.0.0"));
    ctl(t, &["kill", "-s", "USR1", &id]).expect_status(0);
    pvm.expect("kv: served ");
    pvm.finish().expect_status(0);
    assert_no_leaks(t);
}

#[test]
fn the_backend_dying_gives_the_guest_errors_not_hangs() {
    require_kvm();
    let t = "net-backend-dies";
    let (pvm, port) = start_echo(t, &[PUBLISH], &[]);
    let backend = backend_of(pvm.id()).expect("the family's network backend runs");
    let mut s = connect(port);
    s.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).unwrap();
    // SAFETY: kill has no memory-safety preconditions; `backend` is the family's backend.
    assert_eq!(unsafe { libc::kill(backend as i32, libc::SIGKILL) }, 0);
    // The client's connection ends (its socket was the backend's).
    let mut rest = Vec::new();
    match s.read_to_end(&mut rest) {
        Ok(_) => {}
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset),
    }
    // The guest's stream ends, and its next accept fails: the pVM ends with the error.
    let out = pvm.finish();
    out.expect_status(1);
    assert!(
        out.stderr.contains("Error: the network backend is gone"),
        "{out:#?}"
    );
    assert!(out.stdout.contains("served 127.0.0.1:"), "{out:#?}");
    assert_no_leaks(t);
}

/// A RESP request.
fn resp(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[test]
fn a_client_that_never_reads_or_sends_slowly_does_not_stall_the_others() {
    require_kvm();
    let t = "net-slow-clients";
    let (mut pvm, port) = start_kv(t, "kv_v1");
    let big = vec![b'x'; 1 << 20];
    let mut hog = connect(port);
    hog.write_all(&resp(&[b"SET", b"big", &big])).unwrap();
    let mut ok = [0u8; 5];
    hog.read_exact(&mut ok).unwrap();
    assert_eq!(&ok, b"+OK\r\n");
    // 64 MiB of answers asked for and never read: the server stops reading this client once
    // its answers pile up, and serves the others.
    let gets: Vec<u8> = (0..64).flat_map(|_| resp(&[b"GET", b"big"])).collect();
    hog.write_all(&gets).unwrap();
    assert_eq!(redis_cli(port, &["PING"]), "PONG");
    // A request that arrives a byte at a time is answered once whole.
    let mut slow = connect(port);
    for b in resp(&[b"SET", b"slow", b"value"]) {
        slow.write_all(&[b]).unwrap();
        slow.flush().unwrap();
    }
    slow.read_exact(&mut ok).unwrap();
    assert_eq!(&ok, b"+OK\r\n");
    assert_eq!(redis_cli(port, &["GET", "slow"]), "value");
    drop(hog);
    assert_eq!(redis_cli(port, &["DBSIZE"]), "2");
    ctl(t, &["kill", "-s", "USR1", &pvm.id().to_string()]).expect_status(0);
    pvm.expect("kv: served ");
    pvm.finish().expect_status(0);
    assert_no_leaks(t);
}

#[test]
fn a_pvm_connects_only_where_the_operator_allows() {
    require_kvm();
    let t = "net-connect";
    // A server pVM, and client pVMs of other families connecting to its published port.
    let (server, port) = start_echo(t, &[PUBLISH], &["--conns", "1"]);
    let target = format!("127.0.0.1:{port}");
    let allow = format!("--connect={target}");
    let out = run_guest(t, &[&allow], "netecho", &["--client", &target, "bonjour"]);
    out.expect_status(0);
    assert!(out.stdout.contains("got bonjour"), "{out:#?}");
    assert!(server.finish().stdout.contains("served 127.0.0.1:"));
    // Not on the list: refused before any packet leaves.
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let other_addr = other.local_addr().unwrap().to_string();
    let out = run_guest(t, &[&allow], "netecho", &["--client", &other_addr, "x"]);
    out.expect_status(1);
    assert!(out.stderr.contains("permission denied"), "{out:#?}");
    // No --connect at all: nothing is allowed.
    let out = run_guest(t, &[], "netecho", &["--client", &other_addr, "x"]);
    out.expect_status(1);
    assert!(out.stderr.contains("permission denied"), "{out:#?}");
    // Allowed, but nothing listens there any more.
    drop(other);
    let out = run_guest(
        t,
        &[&format!("--connect={other_addr}")],
        "netecho",
        &["--client", &other_addr, "x"],
    );
    out.expect_status(1);
    assert!(out.stderr.contains("connection refused"), "{out:#?}");
    assert_no_leaks(t);
}
