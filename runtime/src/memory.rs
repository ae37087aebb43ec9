//! How much memory a run may use, asked before anything large is allocated: the host's
//! `MemAvailable` (Linux `/proc/meminfo`), a device's free memory (CUDA), and the
//! `OKAPI_MEMORY_LIMIT` cap a user (or a test) sets — bytes, or with a K/M/G/T suffix.

/// Memory a run may use on one side (host or device), and where the number comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Budget {
    pub bytes: u64,
    /// e.g. "MemAvailable in /proc/meminfo", "free on cuda:0", "OKAPI_MEMORY_LIMIT"
    pub source: String,
}

/// Where a backend keeps its buffers, for the memory check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceMemory {
    /// host memory (the CPU backend): device and host needs add up against the host budget
    Host,
    /// a device with this much free memory
    Free(Budget),
    /// a device that does not say (wgpu): only the host side is checked
    Unknown,
}

static FORCED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// From now on in this process, a memory check that fails only warns (`--force`): the user
/// asked to run anyway, so the later checks (loading a model, a KV cache) must not refuse either.
pub fn force_checks() {
    FORCED.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Whether [`force_checks`] was called.
pub fn checks_forced() -> bool {
    FORCED.load(std::sync::atomic::Ordering::SeqCst)
}

/// `OKAPI_MEMORY_LIMIT` parsed: `12000000000`, `512M`, `16G`, `1.5T` (powers of 1024).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.chars().last()?.to_ascii_uppercase() {
        'K' => (&s[..s.len() - 1], 1u64 << 10),
        'M' => (&s[..s.len() - 1], 1 << 20),
        'G' => (&s[..s.len() - 1], 1 << 30),
        'T' => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    let x: f64 = num.trim().parse().ok()?;
    (x.is_finite() && x >= 0.0).then_some((x * mult as f64) as u64)
}

/// The user's cap, when `OKAPI_MEMORY_LIMIT` is set (an unparsable value is reported as an
/// error by [`limit_error`]).
fn user_limit() -> Option<Budget> {
    let v = std::env::var("OKAPI_MEMORY_LIMIT").ok()?;
    parse_size(&v).map(|bytes| Budget { bytes, source: format!("OKAPI_MEMORY_LIMIT={v}") })
}

/// The one-line complaint about an `OKAPI_MEMORY_LIMIT` that is not a size.
pub fn limit_error() -> Option<String> {
    let v = std::env::var("OKAPI_MEMORY_LIMIT").ok()?;
    parse_size(&v).is_none().then(|| format!("OKAPI_MEMORY_LIMIT={v}: expected a size in bytes, or with a K, M, G or T suffix (e.g. 16G)"))
}

/// `MemAvailable` of `/proc/meminfo` (Linux), in bytes.
fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The smaller of two budgets (either may be unknown).
pub fn min_budget(a: Option<Budget>, b: Option<Budget>) -> Option<Budget> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b.bytes < a.bytes { b } else { a }),
        (a, b) => a.or(b),
    }
}

/// Host memory a run may use: `MemAvailable`, capped by `OKAPI_MEMORY_LIMIT`; `None` where the
/// platform does not say and no cap is set.
pub fn host_budget() -> Option<Budget> {
    let avail = mem_available().map(|bytes| Budget { bytes, source: "MemAvailable in /proc/meminfo".into() });
    min_budget(avail, user_limit())
}

/// A device's free memory, capped by `OKAPI_MEMORY_LIMIT`.
pub fn device_budget(free: u64, device: &str) -> Budget {
    min_budget(Some(Budget { bytes: free, source: format!("free on {device}") }), user_limit()).expect("one budget is known")
}

/// `bytes` for people: "1.5 GiB", "512.0 MiB", "12 B".
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut x = bytes as f64 / 1024.0;
    let mut unit = 0;
    while x >= 1024.0 && unit < UNITS.len() - 1 {
        x /= 1024.0;
        unit += 1;
    }
    format!("{x:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_suffixes_and_refuse_the_rest() {
        assert_eq!(parse_size("1024"), Some(1024));
        assert_eq!(parse_size("512M"), Some(512 << 20));
        assert_eq!(parse_size("1.5g"), Some(3 << 29));
        assert_eq!(parse_size(" 2T "), Some(2 << 40));
        for bad in ["", "G", "-1G", "lots", "1e400", "NaN"] {
            assert_eq!(parse_size(bad), None, "{bad:?}");
        }
        assert_eq!(human(12), "12 B");
        assert_eq!(human(3 << 29), "1.5 GiB");
    }

    #[test]
    fn the_smaller_budget_wins() {
        let a = Some(Budget { bytes: 10, source: "a".into() });
        let b = Some(Budget { bytes: 5, source: "b".into() });
        assert_eq!(min_budget(a.clone(), b.clone()).unwrap().source, "b");
        assert_eq!(min_budget(a.clone(), None), a);
        assert_eq!(min_budget(None, None), None);
    }
}
