//! Pinned kernel state for the node daemon: programs' links and maps under a versioned bpffs
//! directory, so enforcement outlives the daemon process and a restarted daemon re-adopts it.
//!
//! ```text
//! <bpffs>/<name>/<version>/maps/<MAP>          shared maps (ring buffer included)
//! <bpffs>/<name>/<version>/links/<program>     node-wide attachments (sched, LSM engine)
//! <bpffs>/<name>/<version>/tasks/<task>/<prog> per-sandbox egress attachments
//! ```
//!
//! `<version>` is `v<ABI>-<hash of the eBPF object and map sizes>`: a daemon built from other
//! programs, or configured with other map sizes, pins beside the old state and migrates
//! (see `docs/daemon.md`).
use std::{
    fs, io,
    path::{Path, PathBuf},
};

use agent_common::{abi::ABI_VERSION, maps};
use sha2::{Digest, Sha256};

use super::{EBPF_OBJECT, LoadOptions};

/// Maps a daemon pins (and re-adopts). Scratch maps and globals stay private to each load.
pub const PINNED_MAPS: [&str; 11] = [
    maps::EVENTS,
    maps::WATCHED,
    maps::DROPS,
    maps::STATS,
    maps::EXEC_ALLOW,
    maps::EGRESS,
    maps::FILE_RULES,
    maps::SECRET_TOOLS,
    maps::DNS_CONFIG,
    maps::DNS_ORIG,
    maps::UNIX_RULES,
];

/// Where one version of the pinned state lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinLayout {
    /// `<bpffs>/<name>`: every version lives below it.
    pub root: PathBuf,
    /// The version directory name.
    pub version: String,
}

impl PinLayout {
    /// The layout for this build and these sizes under `root`. `version` overrides the
    /// computed version name (tests use it to stage a "previous version").
    pub fn new(root: &Path, opts: &LoadOptions, version: Option<&str>) -> Self {
        let version = version.map(str::to_string).unwrap_or_else(|| version_name(opts));
        Self { root: root.to_path_buf(), version }
    }

    pub fn dir(&self) -> PathBuf {
        self.root.join(&self.version)
    }

    pub fn map_path(&self, name: &str) -> PathBuf {
        self.dir().join("maps").join(name)
    }

    pub fn link_path(&self, program: &str) -> PathBuf {
        self.dir().join("links").join(program)
    }

    pub fn task_dir(&self, task: &str) -> PathBuf {
        self.dir().join("tasks").join(task)
    }

    /// Whether node-wide links of this version are pinned (a daemon ran, and may still be
    /// enforcing through them).
    pub fn has_links(&self) -> bool {
        fs::read_dir(self.dir().join("links")).map(|mut d| d.next().is_some()).unwrap_or(false)
    }

    /// Creates the directories (0700).
    pub fn create_dirs(&self) -> io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        for sub in ["maps", "links", "tasks"] {
            fs::DirBuilder::new().recursive(true).mode(0o700).create(self.dir().join(sub))?;
        }
        Ok(())
    }

    /// Other versions pinned under the same root (left by another build of the daemon).
    pub fn other_versions(&self) -> Vec<PinLayout> {
        let Ok(rd) = fs::read_dir(&self.root) else { return Vec::new() };
        let mut v: Vec<PinLayout> = rd
            .flatten()
            .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|n| *n != self.version)
            .map(|version| PinLayout { root: self.root.clone(), version })
            .collect();
        v.sort_by(|a, b| a.version.cmp(&b.version));
        v
    }

    /// The pinned ring buffer of this version, to read what its programs recorded (a
    /// migration reads the old version's ring after detaching it). Opened as raw map data,
    /// whatever object pinned it; `None` if it is not pinned or not a ring buffer.
    pub fn open_ring(&self) -> Option<aya::maps::RingBuf<aya::maps::MapData>> {
        let md = aya::maps::MapData::from_pin(self.map_path(agent_common::maps::EVENTS)).ok()?;
        aya::maps::RingBuf::try_from(aya::maps::Map::RingBuf(md)).ok()
    }

    /// Unpins everything of this version: links first (programs detach as their last
    /// reference goes), then maps. Returns how many pins were removed.
    pub fn remove(&self) -> io::Result<usize> {
        let mut n = 0;
        for sub in ["tasks", "links", "maps"] {
            n += remove_tree(&self.dir().join(sub))?;
        }
        let _ = fs::remove_dir(self.dir());
        Ok(n)
    }

    /// Unpins one task's egress attachments.
    pub fn remove_task(&self, task: &str) -> io::Result<usize> {
        remove_tree(&self.task_dir(task))
    }
}

/// Removes `dir` and everything under it; a missing `dir` is not an error.
fn remove_tree(dir: &Path) -> io::Result<usize> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut n = 0;
    for e in rd.flatten() {
        if e.file_type()?.is_dir() {
            n += remove_tree(&e.path())?;
        } else {
            fs::remove_file(e.path())?;
            n += 1;
        }
    }
    fs::remove_dir(dir)?;
    Ok(n)
}

/// `v<ABI>-<12 hex>` over the eBPF object and the map sizes.
pub fn version_name(opts: &LoadOptions) -> String {
    let mut h = Sha256::new();
    h.update(EBPF_OBJECT);
    h.update(opts.ring_bytes.to_le_bytes());
    h.update(opts.max_tasks.to_le_bytes());
    h.update(opts.max_cgroups.to_le_bytes());
    h.update(opts.max_exec.to_le_bytes());
    h.update(opts.max_egress.to_le_bytes());
    h.update(opts.max_file_rules.to_le_bytes());
    h.update(opts.max_unix_rules.to_le_bytes());
    format!("v{ABI_VERSION}-{}", &hex::encode(h.finalize())[..12])
}

/// Errors making bpffs available.
#[derive(Debug, thiserror::Error)]
pub enum BpffsError {
    #[error("cannot read /proc/self/mountinfo: {0}")]
    MountInfo(io::Error),
    #[error("cannot create {0}: {1}")]
    Create(PathBuf, io::Error),
    #[error("cannot mount bpffs on {0}: {1} (mount it yourself: mount -t bpf bpf {0})")]
    Mount(PathBuf, io::Error),
}

/// Makes sure a bpf filesystem is mounted at `path` (mounting one, mode 0700, if not).
/// Returns whether it mounted it.
pub fn ensure_bpffs(path: &Path) -> Result<bool, BpffsError> {
    let info = fs::read_to_string("/proc/self/mountinfo").map_err(BpffsError::MountInfo)?;
    if is_bpffs_mounted(&info, path) {
        return Ok(false);
    }
    fs::create_dir_all(path).map_err(|e| BpffsError::Create(path.to_path_buf(), e))?;
    nix::mount::mount(
        Some("bpf"),
        path,
        Some("bpf"),
        nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV | nix::mount::MsFlags::MS_NOEXEC,
        Some("mode=0700"),
    )
    .map_err(|e| BpffsError::Mount(path.to_path_buf(), io::Error::from(e)))?;
    Ok(true)
}

/// Whether `mountinfo` lists a `bpf` filesystem mounted exactly at `path`.
pub fn is_bpffs_mounted(mountinfo: &str, path: &Path) -> bool {
    crate::util::mountinfo::is_mounted(mountinfo, "bpf", path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_bpffs_in_mountinfo() {
        let info = "38 25 0:32 / /sys/fs/bpf rw,nosuid,nodev,noexec,relatime shared:15 - bpf bpf rw,mode=700\n\
                    29 25 0:26 / /sys/fs/cgroup rw shared:9 - cgroup2 cgroup2 rw\n";
        assert!(is_bpffs_mounted(info, Path::new("/sys/fs/bpf")));
        assert!(!is_bpffs_mounted(info, Path::new("/sys/fs/cgroup")));
        assert!(!is_bpffs_mounted(info, Path::new("/sys/fs/bpf/warden")));
    }

    #[test]
    fn version_depends_on_sizes() {
        let a = LoadOptions::default();
        let b = LoadOptions { max_tasks: a.max_tasks * 2, ..a };
        assert_ne!(version_name(&a), version_name(&b));
        assert_eq!(version_name(&a), version_name(&a));
        assert!(version_name(&a).starts_with(&format!("v{ABI_VERSION}-")));
    }

    #[test]
    fn lists_and_removes_other_versions() {
        let d = tempfile::tempdir().unwrap();
        let cur = PinLayout::new(d.path(), &LoadOptions::default(), Some("v9-new"));
        let old = PinLayout::new(d.path(), &LoadOptions::default(), Some("v8-old"));
        cur.create_dirs().unwrap();
        old.create_dirs().unwrap();
        fs::write(old.link_path("x"), b"").unwrap();
        fs::create_dir_all(old.task_dir("t-1")).unwrap();
        fs::write(old.task_dir("t-1").join("egress_connect4"), b"").unwrap();
        assert!(old.has_links() && !cur.has_links());
        assert_eq!(cur.other_versions(), vec![old.clone()]);
        assert_eq!(old.remove().unwrap(), 2);
        assert!(cur.other_versions().is_empty());
    }
}
