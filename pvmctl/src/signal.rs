//! Signal names.

/// Signals `pvmctl kill -s` accepts, by name.
pub const SIGNALS: &[(&str, i32)] = &[
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("USR2", libc::SIGUSR2),
    ("TERM", libc::SIGTERM),
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
    if let Some((_, n)) = SIGNALS.iter().find(|(name, _)| *name == bare) {
        return Ok(*n);
    }
    match text.parse::<i32>() {
        Ok(n) if SIGNALS.iter().any(|(_, s)| *s == n) => Ok(n),
        _ => Err(format!(
            "unknown signal {text:?}; use one of {}",
            SIGNALS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse() {
        assert_eq!(parse("TERM"), Ok(libc::SIGTERM));
        assert_eq!(parse("sigkill"), Ok(libc::SIGKILL));
        assert_eq!(parse("9"), Ok(9));
        assert!(parse("STOP").is_err());
        assert!(parse("64").is_err());
        assert_eq!(name(libc::SIGINT), "INT");
    }
}
