//! Signal names.

/// Signals `pvmctl kill -s` accepts, by name: what a pVM handles or ends by, and STOP and
/// CONT (pause and resume).
pub const SIGNALS: &[(&str, i32)] = &[
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("USR2", libc::SIGUSR2),
    ("TERM", libc::SIGTERM),
    ("CONT", libc::SIGCONT),
    ("STOP", libc::SIGSTOP),
];

/// The other Linux signals: named (so that `-s QUIT` is understood), refused with the reason.
const NO_MEANING: &[(&str, i32)] = &[
    ("QUIT", libc::SIGQUIT),
    ("ILL", libc::SIGILL),
    ("TRAP", libc::SIGTRAP),
    ("ABRT", libc::SIGABRT),
    ("BUS", libc::SIGBUS),
    ("FPE", libc::SIGFPE),
    ("SEGV", libc::SIGSEGV),
    ("PIPE", libc::SIGPIPE),
    ("ALRM", libc::SIGALRM),
    ("CHLD", libc::SIGCHLD),
    ("TSTP", libc::SIGTSTP),
    ("TTIN", libc::SIGTTIN),
    ("TTOU", libc::SIGTTOU),
    ("URG", libc::SIGURG),
    ("XCPU", libc::SIGXCPU),
    ("XFSZ", libc::SIGXFSZ),
    ("VTALRM", libc::SIGVTALRM),
    ("PROF", libc::SIGPROF),
    ("WINCH", libc::SIGWINCH),
    ("IO", libc::SIGIO),
    ("PWR", libc::SIGPWR),
    ("SYS", libc::SIGSYS),
];

/// The name of `sig` (its number if it has none here).
pub fn name(sig: i32) -> String {
    SIGNALS
        .iter()
        .find(|(_, n)| *n == sig)
        .map_or_else(|| sig.to_string(), |(name, _)| (*name).to_string())
}

/// Parses `TERM`, `SIGTERM`, `term` or `15`.
pub fn parse(text: &str) -> Result<i32, String> {
    let upper = text.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    let by_name = |list: &[(&str, i32)]| list.iter().find(|(name, _)| *name == bare).map(|(_, n)| *n);
    let by_number = |list: &[(&str, i32)]| {
        let n = text.parse::<i32>().ok()?;
        list.iter().any(|(_, s)| *s == n).then_some(n)
    };
    if let Some(n) = by_name(SIGNALS).or_else(|| by_number(SIGNALS)) {
        return Ok(n);
    }
    let names = SIGNALS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ");
    match by_name(NO_MEANING).or_else(|| by_number(NO_MEANING)) {
        Some(n) => Err(format!(
            "signal {text} ({n}) has no meaning for a pVM; use one of {names}"
        )),
        None => Err(format!("unknown signal {text:?}; use one of {names}")),
    }
}

/// Rewrites `kill -9 ...` and `kill -KILL ...` (the shell's `kill` habit) as `kill -s 9 ...`.
pub fn rewrite_shorthand(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let Some(kill) = args.iter().position(|a| a == "kill") else {
        return args;
    };
    let mut out = Vec::with_capacity(args.len() + 1);
    for (i, a) in args.into_iter().enumerate() {
        let shorthand = a.to_str().and_then(|t| t.strip_prefix('-')).filter(|t| {
            !t.starts_with('-') && t.len() > 1 || t.chars().all(|c| c.is_ascii_digit()) && !t.is_empty()
        });
        match shorthand {
            Some(sig) if i == kill + 1 && parse(sig).is_ok() => {
                out.push("-s".into());
                out.push(sig.into());
            }
            _ => out.push(a),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse() {
        assert_eq!(parse("TERM"), Ok(libc::SIGTERM));
        assert_eq!(parse("sigkill"), Ok(libc::SIGKILL));
        assert_eq!(parse("9"), Ok(9));
        assert_eq!(parse("STOP"), Ok(libc::SIGSTOP));
        assert!(parse("64").is_err());
        assert!(parse("QUIT").unwrap_err().contains("no meaning for a pVM"));
        let args = |v: &[&str]| v.iter().map(std::ffi::OsString::from).collect::<Vec<_>>();
        assert_eq!(
            rewrite_shorthand(args(&["pvmctl", "kill", "-9", "x"])),
            args(&["pvmctl", "kill", "-s", "9", "x"])
        );
        assert_eq!(
            rewrite_shorthand(args(&["pvmctl", "kill", "-KILL", "x"])),
            args(&["pvmctl", "kill", "-s", "KILL", "x"])
        );
        assert_eq!(
            rewrite_shorthand(args(&["pvmctl", "kill", "--family", "x"])),
            args(&["pvmctl", "kill", "--family", "x"])
        );
        assert_eq!(name(libc::SIGINT), "INT");
    }
}
