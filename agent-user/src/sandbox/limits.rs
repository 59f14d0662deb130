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
