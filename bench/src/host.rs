//! The machine a benchmark ran on, for the report header.
use std::fs;
use std::time::{SystemTime, UNIX_EPOCH};

/// The machine the benchmark ran on.
pub(crate) struct HostInfo {
    /// Seconds since the Unix epoch.
    pub(crate) unix_time: u64,
    /// RFC 3339, UTC ("2023-11-14T22:13:20Z").
    pub(crate) date: String,
    pub(crate) hostname: String,
    pub(crate) kernel: String,
    pub(crate) cpu: String,
}

impl HostInfo {
    pub(crate) fn get() -> HostInfo {
        let unix_time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let (hostname, kernel) = uname();
        let cpu = fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .filter_map(|l| l.split_once(':'))
                    .find(|(key, _)| key.trim() == "model name")
                    .map(|(_, value)| value.trim().to_string())
            })
            .unwrap_or_else(|| "unknown CPU".into());
        HostInfo {
            unix_time,
            date: utc_date(unix_time),
            hostname,
            kernel,
            cpu,
        }
    }
}

/// (node name, kernel release).
fn uname() -> (String, String) {
    let uts = rustix::system::uname();
    let text = |c: &std::ffi::CStr| c.to_string_lossy().into_owned();
    (text(uts.nodename()), text(uts.release()))
}

/// `unix_time` as RFC 3339 in UTC, to the second ("2023-11-14T22:13:20Z").
fn utc_date(unix_time: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + std::time::Duration::from_secs(unix_time)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(utc_date(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_date(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc_date(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
