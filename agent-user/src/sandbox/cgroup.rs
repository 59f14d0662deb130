//! cgroup v2: finding the mount, creating, killing and removing sandbox cgroups.
use std::{
    fs,
    io::{self, ErrorKind},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// Errors from cgroup operations.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "no cgroup2 filesystem is mounted (looked in {0}); mount one with `mount -t cgroup2 none /sys/fs/cgroup`"
    )]
    NoCgroup2(String),
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("cannot limit processes: {0}")]
    NoPids(String),
    #[error("cannot limit memory: {0}")]
    NoMemory(String),
    #[error("cgroup {path} still has processes after {waited:?}")]
    NotEmpty { path: PathBuf, waited: Duration },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io { path: path.to_path_buf(), source }
}

/// The cgroup2 mount point of this machine, from `/proc/self/mountinfo`.
pub fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    let p = Path::new("/proc/self/mountinfo");
    let text = fs::read_to_string(p).map_err(io_err(p))?;
    crate::util::mountinfo::cgroup2_mount_in(&text)
        .ok_or_else(|| CgroupError::NoCgroup2(p.display().to_string()))
}

/// A cgroup v2 directory.
#[derive(Debug, Clone)]
pub struct Cgroup {
    path: PathBuf,
    id: u64,
}

impl Cgroup {
    /// Creates `parent/name` (and `parent` if missing). Fails if it already exists.
    pub fn create(parent: &Path, name: &str) -> Result<Self, CgroupError> {
        fs::create_dir_all(parent).map_err(io_err(parent))?;
        let path = parent.join(name);
        fs::create_dir(&path).map_err(io_err(&path))?;
        Self::open(&path)
    }

    /// Opens an existing cgroup directory.
    pub fn open(path: &Path) -> Result<Self, CgroupError> {
        let md = fs::metadata(path).map_err(io_err(path))?;
        // A cgroup v2 id is the inode number of its directory.
        Ok(Self { path: path.to_path_buf(), id: md.ino() })
    }

    /// A cgroup value that names no directory (the lifecycle's fake host).
    #[cfg(test)]
    pub(crate) fn fake(path: PathBuf, id: u64) -> Self {
        Self { path, id }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// Path of `cgroup.procs`, written to move a process in.
    pub fn procs_file(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }

    /// Whether any process is in this cgroup or below (`cgroup.events: populated`).
    pub fn populated(&self) -> Result<bool, CgroupError> {
        let p = self.path.join("cgroup.events");
        match fs::read_to_string(&p) {
            Ok(t) => Ok(t.lines().any(|l| l.trim() == "populated 1")),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err(&p)(e)),
        }
    }

    /// Process ids in this cgroup and its descendants.
    pub fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        let mut out = Vec::new();
        self.walk(&mut |dir| {
            let p = dir.join("cgroup.procs");
            if let Ok(t) = fs::read_to_string(&p) {
                out.extend(t.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
            }
        })?;
        Ok(out)
    }

    /// Calls `f` on this cgroup and every descendant, children before parents.
    fn walk(&self, f: &mut dyn FnMut(&Path)) -> Result<(), CgroupError> {
        fn rec(dir: &Path, f: &mut dyn FnMut(&Path), depth: usize) {
            if depth > 64 {
                return;
            }
            if let Ok(rd) = fs::read_dir(dir) {
                for e in rd.flatten() {
                    if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                        rec(&e.path(), f, depth + 1);
                    }
                }
            }
            f(dir);
        }
        rec(&self.path, f, 0);
        Ok(())
    }

    /// Ids of every descendant cgroup (not this one).
    pub fn descendant_ids(&self) -> Result<Vec<u64>, CgroupError> {
        let mut out = Vec::new();
        let me = self.path.clone();
        self.walk(&mut |dir| {
            if dir != me
                && let Ok(md) = fs::metadata(dir)
            {
                out.push(md.ino());
            }
        })?;
        Ok(out)
    }

    /// Freezes the cgroup and waits (up to `timeout`) until every task in it is frozen.
    ///
    /// Tasks stop only on their way back to user space, so a task in the middle of an
    /// exec finishes it (and its exec is recorded) before it stops. Returns whether the
    /// cgroup reported `frozen 1` in time.
    pub fn freeze(&self, timeout: Duration) -> Result<bool, CgroupError> {
        let f = self.path.join("cgroup.freeze");
        if fs::write(&f, "1").is_err() {
            return Ok(false);
        }
        let start = Instant::now();
        let events = self.path.join("cgroup.events");
        while start.elapsed() < timeout {
            let t = fs::read_to_string(&events).map_err(io_err(&events))?;
            if t.lines().any(|l| l.trim() == "frozen 1") {
                return Ok(true);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(false)
    }

    /// Kills every process in the cgroup and its descendants and waits until it is empty.
    ///
    /// Freezes first (see [`Cgroup::freeze`]) so no task is cut off mid-exec or can fork
    /// away, then uses `cgroup.kill` (Linux 5.14+), which SIGKILLs frozen tasks too; falls
    /// back to SIGKILL of every listed pid, repeated until empty.
    pub fn kill_all(&self, timeout: Duration) -> Result<(), CgroupError> {
        let start = Instant::now();
        if self.populated()? {
            let frozen = self.freeze(timeout.min(Duration::from_secs(2)))?;
            tracing::debug!(cgroup = %self.path.display(), frozen, "froze sandbox before kill");
        }
        let kill_file = self.path.join("cgroup.kill");
        let has_kill = fs::write(&kill_file, "1").is_ok();
        loop {
            if !self.populated()? {
                return Ok(());
            }
            if !has_kill {
                for pid in self.pids()? {
                    // SAFETY: plain kill(2).
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            if start.elapsed() > timeout {
                return Err(CgroupError::NotEmpty { path: self.path.clone(), waited: start.elapsed() });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Removes the cgroup and its descendants (they must be empty).
    pub fn remove(&self) -> Result<(), CgroupError> {
        let mut first_err = None;
        self.walk(&mut |dir| {
            for attempt in 0..50 {
                match fs::remove_dir(dir) {
                    Ok(()) => return,
                    Err(e) if e.kind() == ErrorKind::NotFound => return,
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) && attempt < 49 => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    Err(e) => {
                        first_err.get_or_insert(io_err(dir)(e));
                        return;
                    }
                }
            }
        })?;
        first_err.map_or(Ok(()), Err)
    }
}
