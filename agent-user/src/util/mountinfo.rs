//! `/proc/self/mountinfo` parsing: a leaf module (std only) that the sandbox and the loader
//! both read mount points from, so neither depends on the other for it.
use std::path::PathBuf;

/// One mountinfo line, the fields Warden reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount<'a> {
    /// Field 5, the mount point, octal escapes (`\040` for space) decoded.
    pub mount_point: String,
    /// The first field after ` - `.
    pub fstype: &'a str,
    /// The super-block options (comma separated; for cgroup v1, the controllers).
    pub super_options: &'a str,
}

/// The mounts of a mountinfo text; malformed lines are skipped.
pub fn mounts(mountinfo: &str) -> impl Iterator<Item = Mount<'_>> {
    mountinfo.lines().filter_map(|line| {
        let (pre, post) = line.split_once(" - ")?;
        let mut it = post.split_whitespace();
        let fstype = it.next()?;
        let super_options = it.nth(1).unwrap_or("");
        let mount_point = unescape(pre.split_whitespace().nth(4)?);
        Some(Mount { mount_point, fstype, super_options })
    })
}

/// The cgroup2 mount point in a mountinfo text.
pub fn cgroup2_mount_in(mountinfo: &str) -> Option<PathBuf> {
    mounts(mountinfo).find(|m| m.fstype == "cgroup2").map(|m| PathBuf::from(m.mount_point))
}

/// The cgroup v1 hierarchy that has the `pids` controller, in a mountinfo text.
pub fn v1_pids_mount_in(mountinfo: &str) -> Option<PathBuf> {
    v1_mount_in(mountinfo, "pids")
}

/// The cgroup v1 hierarchy that has `controller` (`pids`, `memory`), in a mountinfo text.
pub fn v1_mount_in(mountinfo: &str, controller: &str) -> Option<PathBuf> {
    mounts(mountinfo)
        .find(|m| m.fstype == "cgroup" && m.super_options.split(',').any(|o| o == controller))
        .map(|m| PathBuf::from(m.mount_point))
}

/// Whether a mountinfo text lists a filesystem of type `fstype` mounted exactly at `path`.
pub fn is_mounted(mountinfo: &str, fstype: &str, path: &std::path::Path) -> bool {
    mounts(mountinfo).any(|m| m.fstype == fstype && m.mount_point == path.to_string_lossy())
}

/// Decodes the octal escapes (`\040` for space) of a mountinfo field.
pub fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_in_hybrid_and_unified_layouts() {
        let hybrid = "\
25 1 0:23 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:5 - cgroup2 cgroup2 rw
27 25 0:25 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu";
        assert_eq!(cgroup2_mount_in(hybrid), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        let unified = "30 1 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate";
        assert_eq!(cgroup2_mount_in(unified), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(cgroup2_mount_in("30 1 0:26 / /x rw - ext4 /dev/sda rw"), None);
        assert_eq!(cgroup2_mount_in("garbage"), None);
    }

    #[test]
    fn decodes_octal_escapes_in_mount_points() {
        let line = "30 1 0:26 / /mnt/my\\040cg rw - cgroup2 cgroup2 rw";
        assert_eq!(cgroup2_mount_in(line), Some(PathBuf::from("/mnt/my cg")));
    }

    #[test]
    fn finds_the_v1_pids_hierarchy() {
        let mi = "\
33 25 0:28 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
34 25 0:29 / /sys/fs/cgroup/pids rw,nosuid - cgroup cgroup rw,pids
35 25 0:30 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw";
        assert_eq!(v1_pids_mount_in(mi), Some(PathBuf::from("/sys/fs/cgroup/pids")));
        assert_eq!(v1_pids_mount_in("35 25 0:30 / /x rw - cgroup2 cgroup2 rw"), None);
        assert_eq!(v1_mount_in(mi, "memory"), Some(PathBuf::from("/sys/fs/cgroup/memory")));
        assert_eq!(v1_mount_in("33 25 0:28 / /m rw - cgroup cgroup rw,memoryx", "memory"), None);
    }
}
