//! Kernel boot-time nanoseconds → wall-clock RFC 3339 timestamps.
use time::{OffsetDateTime, format_description::FormatItem, macros::format_description};

const RFC3339_NS: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:9]Z");

/// Maps `bpf_ktime_get_boot_ns` values to wall-clock time, using the offset
/// between `CLOCK_REALTIME` and `CLOCK_BOOTTIME` sampled at creation.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    offset_ns: i128,
}

fn now(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

impl Clock {
    pub fn new() -> Self {
        Self { offset_ns: now(libc::CLOCK_REALTIME) - now(libc::CLOCK_BOOTTIME) }
    }

    /// A clock with a fixed offset (replay, tests).
    pub fn with_offset(offset_ns: i128) -> Self {
        Self { offset_ns }
    }

    /// Realtime minus boot time, in ns.
    pub fn offset_ns(&self) -> i128 {
        self.offset_ns
    }

    /// Current `CLOCK_BOOTTIME` in ns (the kernel's event timebase).
    pub fn boot_now_ns() -> u64 {
        now(libc::CLOCK_BOOTTIME) as u64
    }

    /// Formats a boot-time timestamp as RFC 3339 UTC with nanoseconds.
    pub fn format(&self, boot_ns: u64) -> String {
        format_wall(i128::from(boot_ns) + self.offset_ns)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// Formats Unix-epoch nanoseconds as RFC 3339 UTC with nanoseconds.
pub fn format_wall(unix_ns: i128) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(unix_ns)
        .ok()
        .and_then(|t| t.format(RFC3339_NS).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00.000000000Z".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_nanoseconds() {
        assert_eq!(format_wall(1_700_000_000_123_456_789), "2023-11-14T22:13:20.123456789Z");
        assert_eq!(Clock::with_offset(1_000_000_000).format(5), "1970-01-01T00:00:01.000000005Z");
    }

    #[test]
    fn live_clock_is_near_now() {
        let c = Clock::new();
        let s = c.format(Clock::boot_now_ns());
        let year: i32 = s[..4].parse().unwrap();
        assert!(year >= 2024, "{s}");
    }
}
