//! The machine a benchmark ran on, for the report header.
use std::fs;
use std::time::{SystemTime, UNIX_EPOCH};

/// The machine the benchmark ran on.
pub(crate) struct HostInfo {
    /// Seconds since the Unix epoch.
    pub(crate) unix_time: u64,
    /// "YYYY-MM-DD HH:MM:SS UTC".
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

/// (node name, kernel release), or "unknown" for both if uname fails.
fn uname() -> (String, String) {
    // SAFETY: `utsname` is plain old data: all zeroes is a valid value.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `uts` is a valid, writable utsname.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return ("unknown".into(), "unknown".into());
    }
    let field = |chars: &[libc::c_char]| {
        let bytes: Vec<u8> = chars.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    (field(&uts.nodename), field(&uts.release))
}

/// `unix_time` as "YYYY-MM-DD HH:MM:SS UTC" (proleptic Gregorian calendar).
fn utc_date(unix_time: u64) -> String {
    let days = (unix_time / 86_400) as i64;
    let secs = unix_time % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(utc_date(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc_date(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc_date(1_700_000_000), "2023-11-14 22:13:20 UTC");
    }
}
