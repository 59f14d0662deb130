//! The process limit, from the pids controller: cgroup v2 `pids.max` in the sandbox when the
//! unified hierarchy has the controller, else a twin cgroup in the v1 `pids` hierarchy (hybrid
//! hosts bind `pids` to v1). Forks beyond the limit fail with EAGAIN.
use std::{
    fs,
    path::{Path, PathBuf},
};

use super::{Cgroup, CgroupError};

/// Where the limit lives.
#[derive(Debug)]
pub enum PidsLimit {
    /// `pids.max` of the sandbox cgroup itself.
    Unified,
    /// A cgroup in the v1 pids hierarchy the task's first process also joins.
    V1(Cgroup),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io { path: path.to_path_buf(), source }
}

impl PidsLimit {
    /// Sets a limit of `max` processes for the sandbox `cg` (named `name` under `parent_rel`).
    pub fn apply(cg: &Cgroup, parent_rel: &str, name: &str, max: u32) -> Result<Self, CgroupError> {
        let mount = super::cgroup2_mount()?;
        let root_controllers = fs::read_to_string(mount.join("cgroup.controllers")).unwrap_or_default();
        if root_controllers.split_whitespace().any(|c| c == "pids") {
            // Enable the controller down the path to the sandbox's parent.
            let mut dir = mount.clone();
            let rel = cg.path().strip_prefix(&mount).unwrap_or(Path::new(""));
            for comp in rel.parent().map(|p| p.components().collect::<Vec<_>>()).unwrap_or_default() {
                let ctl = dir.join("cgroup.subtree_control");
                fs::write(&ctl, "+pids").map_err(io(&ctl))?;
                dir.push(comp);
            }
            let ctl = dir.join("cgroup.subtree_control");
            fs::write(&ctl, "+pids").map_err(io(&ctl))?;
            let f = cg.path().join("pids.max");
            fs::write(&f, max.to_string()).map_err(io(&f))?;
            return Ok(PidsLimit::Unified);
        }
        let mi = Path::new("/proc/self/mountinfo");
        let text = fs::read_to_string(mi).map_err(io(mi))?;
        let v1 = crate::util::mountinfo::v1_pids_mount_in(&text).ok_or_else(|| {
            CgroupError::NoPids("neither cgroup v2 nor a v1 hierarchy offers `pids`".into())
        })?;
        let twin = Cgroup::create(&v1.join(parent_rel), name)?;
        let f = twin.path().join("pids.max");
        fs::write(&f, max.to_string()).map_err(io(&f))?;
        Ok(PidsLimit::V1(twin))
    }

    /// The extra `cgroup.procs` the first process must join, if any.
    pub fn procs_file(&self) -> Option<PathBuf> {
        match self {
            PidsLimit::Unified => None,
            PidsLimit::V1(cg) => Some(cg.procs_file()),
        }
    }

    /// The counter of forks refused by this limit.
    pub fn events(&self, sandbox: &Cgroup) -> LimitEvents {
        let file = match self {
            PidsLimit::Unified => sandbox.path().join("pids.events"),
            PidsLimit::V1(cg) => cg.path().join("pids.events"),
        };
        LimitEvents { file, seen: 0 }
    }

    /// Removes the v1 twin (its processes are gone once the sandbox is killed).
    pub fn remove(&self, parent_rel: &str) {
        if let PidsLimit::V1(cg) = self {
            let _ = cg.remove();
            if let Some(parent) = cg.path().parent()
                && parent.ends_with(parent_rel)
            {
                let _ = fs::remove_dir(parent);
            }
        }
    }
}

/// Forks refused by the process limit, from `pids.events` (`max N`: how many times a fork
/// failed because the limit was reached).
#[derive(Debug)]
pub struct LimitEvents {
    file: PathBuf,
    seen: u64,
}

/// `max` of a `pids.events` text.
pub fn max_events_in(text: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix("max ")).and_then(|n| n.trim().parse().ok())
}

impl LimitEvents {
    /// Refusals since the last call.
    pub fn new_refusals(&mut self) -> u64 {
        let now = fs::read_to_string(&self.file).ok().as_deref().and_then(max_events_in).unwrap_or(self.seen);
        let new = now.saturating_sub(self.seen);
        self.seen = self.seen.max(now);
        new
    }
}

#[cfg(test)]
mod event_tests {
    use super::*;

    #[test]
    fn counts_new_refusals_once() {
        assert_eq!(max_events_in("max 3\n"), Some(3));
        assert_eq!(max_events_in("max.imposed 1\nmax 0\n"), Some(0));
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("pids.events");
        fs::write(&f, "max 2\n").unwrap();
        let mut ev = LimitEvents { file: f.clone(), seen: 0 };
        assert_eq!(ev.new_refusals(), 2);
        assert_eq!(ev.new_refusals(), 0);
        fs::write(&f, "max 5\n").unwrap();
        assert_eq!(ev.new_refusals(), 3);
        fs::remove_file(&f).unwrap();
        assert_eq!(ev.new_refusals(), 0, "a vanished file refuses nothing new");
    }
}
