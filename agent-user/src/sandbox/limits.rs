//! The sandbox's resource limits, from the cgroup controllers.
//!
//! - Processes (`limits.processes`), from the pids controller: cgroup v2 `pids.max` in the
//!   sandbox when the unified hierarchy has the controller, else a twin cgroup in the v1 `pids`
//!   hierarchy (hybrid hosts bind `pids` to v1). Forks beyond the limit fail with EAGAIN.
//! - Memory (`limits.memory`, or the node's default), from the memory controller: v2
//!   `memory.max` with `memory.swap.max` 0 in the sandbox, else a twin cgroup in the v1
//!   `memory` hierarchy with `memory.limit_in_bytes` (and `memory.memsw.limit_in_bytes`, the
//!   same: no swap beyond it). At the limit the kernel reclaims, then its OOM killer kills a
//!   process *of the task*; each such kill is counted (`memory.events` / `memory.oom_control`:
//!   `oom_kill N`) and becomes a record.
//!
//! A twin holds the same processes as the sandbox: its `cgroup.procs` is one of the files the
//! task's processes join before exec (`Launch::procs_files`); it is persisted with the task,
//! adopted by a restarted daemon and removed at the task's end.
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

/// Whether the unified hierarchy at `mount` has `controller`.
fn v2_offers(mount: &Path, controller: &str) -> bool {
    let root_controllers = fs::read_to_string(mount.join("cgroup.controllers")).unwrap_or_default();
    root_controllers.split_whitespace().any(|c| c == controller)
}

/// Enables `controller` in `cgroup.subtree_control` down the path from the root to the parent
/// of the sandbox `cg`, so the sandbox has its files.
fn enable_down_to(mount: &Path, cg: &Cgroup, controller: &str) -> Result<(), CgroupError> {
    let enable = format!("+{controller}");
    let mut dir = mount.to_path_buf();
    let rel = cg.path().strip_prefix(mount).unwrap_or(Path::new(""));
    for comp in rel.parent().map(|p| p.components().collect::<Vec<_>>()).unwrap_or_default() {
        let ctl = dir.join("cgroup.subtree_control");
        fs::write(&ctl, &enable).map_err(io(&ctl))?;
        dir.push(comp);
    }
    let ctl = dir.join("cgroup.subtree_control");
    fs::write(&ctl, &enable).map_err(io(&ctl))?;
    Ok(())
}

/// The v1 hierarchy with `controller`, from `/proc/self/mountinfo`.
fn v1_mount(controller: &str) -> Result<Option<PathBuf>, CgroupError> {
    let mi = Path::new("/proc/self/mountinfo");
    let text = fs::read_to_string(mi).map_err(io(mi))?;
    Ok(crate::util::mountinfo::v1_mount_in(&text, controller))
}

/// Removes a v1 twin and, once no other task uses it, its parent `<v1>/<parent_rel>`.
fn remove_twin(cg: &Cgroup, parent_rel: &str) {
    let _ = cg.remove();
    if let Some(parent) = cg.path().parent()
        && parent.ends_with(parent_rel)
    {
        let _ = fs::remove_dir(parent);
    }
}

impl PidsLimit {
    /// Sets a limit of `max` processes for the sandbox `cg` (named `name` under `parent_rel`).
    pub fn apply(cg: &Cgroup, parent_rel: &str, name: &str, max: u32) -> Result<Self, CgroupError> {
        let mount = super::cgroup2_mount()?;
        if v2_offers(&mount, "pids") {
            enable_down_to(&mount, cg, "pids")?;
            let f = cg.path().join("pids.max");
            fs::write(&f, max.to_string()).map_err(io(&f))?;
            return Ok(PidsLimit::Unified);
        }
        let v1 = v1_mount("pids")?.ok_or_else(|| {
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
            remove_twin(cg, parent_rel);
        }
    }
}

/// The node's default memory limit for a task whose scope has no `limits.memory`: half of the
/// node's memory (`MemTotal`), so that one task can never take the whole node, rounded down to
/// a MiB; at least 64 MiB. `None` when `/proc/meminfo` cannot be read.
pub fn default_memory() -> Option<u64> {
    let text = fs::read_to_string("/proc/meminfo").ok()?;
    default_memory_in(&text)
}

/// [`default_memory`] of a `/proc/meminfo` text.
pub fn default_memory_in(meminfo: &str) -> Option<u64> {
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    let half = kib.checked_mul(1024)? / 2;
    Some((half & !((1 << 20) - 1)).max(64 << 20))
}

/// Where the memory limit lives.
#[derive(Debug)]
pub enum MemoryLimit {
    /// `memory.max` of the sandbox cgroup itself.
    Unified,
    /// A cgroup in the v1 memory hierarchy the task's processes also join.
    V1(Cgroup),
}

impl MemoryLimit {
    /// Limits the sandbox `cg` (named `name` under `parent_rel`) to `bytes` of memory, swap
    /// included. `Ok(None)`: no hierarchy of this node has the memory controller.
    pub fn apply(cg: &Cgroup, parent_rel: &str, name: &str, bytes: u64) -> Result<Option<Self>, CgroupError> {
        let mount = super::cgroup2_mount()?;
        if v2_offers(&mount, "memory") {
            enable_down_to(&mount, cg, "memory")?;
            let f = cg.path().join("memory.max");
            fs::write(&f, bytes.to_string()).map_err(io(&f))?;
            // No swap beyond the limit (the file is there only where the kernel has swap).
            let swap = cg.path().join("memory.swap.max");
            if swap.exists() {
                fs::write(&swap, "0").map_err(io(&swap))?;
            }
            return Ok(Some(MemoryLimit::Unified));
        }
        let Some(v1) = v1_mount("memory")? else { return Ok(None) };
        let twin = Cgroup::create(&v1.join(parent_rel), name)?;
        let set = || -> Result<(), CgroupError> {
            let f = twin.path().join("memory.limit_in_bytes");
            fs::write(&f, bytes.to_string()).map_err(io(&f))?;
            // Memory + swap: the same, so nothing goes to swap beyond the limit (present only
            // where swap accounting is on). Written after the memory limit: it may never be
            // below it.
            let sw = twin.path().join("memory.memsw.limit_in_bytes");
            if sw.exists() {
                fs::write(&sw, bytes.to_string()).map_err(io(&sw))?;
            }
            Ok(())
        };
        if let Err(e) = set() {
            remove_twin(&twin, parent_rel);
            return Err(e);
        }
        Ok(Some(MemoryLimit::V1(twin)))
    }

    /// The extra `cgroup.procs` the task's processes must join, if any.
    pub fn procs_file(&self) -> Option<PathBuf> {
        match self {
            MemoryLimit::Unified => None,
            MemoryLimit::V1(cg) => Some(cg.procs_file()),
        }
    }

    /// The counter of the task's processes the OOM killer killed at this limit.
    pub fn oom_kills(&self, sandbox: &Cgroup) -> OomKills {
        let file = match self {
            MemoryLimit::Unified => sandbox.path().join("memory.events"),
            MemoryLimit::V1(cg) => cg.path().join("memory.oom_control"),
        };
        OomKills { file, seen: 0 }
    }

    /// Removes the v1 twin (its processes are gone once the sandbox is killed).
    pub fn remove(&self, parent_rel: &str) {
        if let MemoryLimit::V1(cg) = self {
            remove_twin(cg, parent_rel);
        }
    }
}

/// Processes the OOM killer killed because the task reached its memory limit, from
/// `oom_kill N` of `memory.events` (v2) or `memory.oom_control` (v1).
#[derive(Debug)]
pub struct OomKills {
    file: PathBuf,
    seen: u64,
}

/// `oom_kill` of a `memory.events` or `memory.oom_control` text.
pub fn oom_kills_in(text: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix("oom_kill ")).and_then(|n| n.trim().parse().ok())
}

/// The OOM kills so far of the task whose process joins `procs_files` and whose (task's or
/// call's) cgroup is `cgroup`: for a `task exec` client, which tells the person at the
/// terminal when its command was killed at the task's memory limit. v1: the twin among
/// `procs_files` with `memory.oom_control`; v2: the nearest cgroup from `cgroup` up (a call's
/// cgroup shares its task's limit) whose `memory.max` is set. `None`: no memory limit found.
pub fn task_oom_kills(procs_files: &[PathBuf], cgroup: &Path) -> Option<u64> {
    for f in procs_files {
        if let Some(dir) = f.parent()
            && let Ok(t) = fs::read_to_string(dir.join("memory.oom_control"))
        {
            return oom_kills_in(&t);
        }
    }
    let mut dir = Some(cgroup);
    for _ in 0..8 {
        let d = dir?;
        if fs::read_to_string(d.join("memory.max")).is_ok_and(|m| m.trim() != "max") {
            return fs::read_to_string(d.join("memory.events")).ok().as_deref().and_then(oom_kills_in);
        }
        dir = d.parent();
    }
    None
}

/// What the person at the terminal is told when the kernel killed `kills` of the task's
/// processes at its memory limit of `limit` bytes.
pub fn oom_message(kills: u64, limit: Option<u64>) -> String {
    let limit = limit.map_or_else(String::new, |b| format!(" ({} MiB)", b >> 20));
    format!(
        "the task reached its memory limit{limit}: the kernel killed {kills} of its processes \
         (recorded, rule limits.memory); raise `limits.memory` in the scope if the task needs more"
    )
}

impl OomKills {
    /// Kills since the last call.
    pub fn new_kills(&mut self) -> u64 {
        let now = fs::read_to_string(&self.file).ok().as_deref().and_then(oom_kills_in).unwrap_or(self.seen);
        let new = now.saturating_sub(self.seen);
        self.seen = self.seen.max(now);
        new
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

    #[test]
    fn counts_oom_kills_of_both_hierarchies_once() {
        let v2 = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(oom_kills_in(v2), Some(2));
        assert_eq!(oom_kills_in("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n"), Some(3));
        assert_eq!(oom_kills_in("oom_kill_disable 0\n"), None);
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("memory.events");
        fs::write(&f, v2).unwrap();
        let mut k = OomKills { file: f.clone(), seen: 0 };
        assert_eq!(k.new_kills(), 2);
        assert_eq!(k.new_kills(), 0);
        fs::remove_file(&f).unwrap();
        assert_eq!(k.new_kills(), 0);
    }

    #[test]
    fn the_default_is_half_the_node_rounded_to_a_mib() {
        assert_eq!(default_memory_in("MemTotal:       24684260 kB\nMemFree: 1 kB\n"), Some(12052 << 20));
        assert_eq!(default_memory_in("MemTotal: 65536 kB\n"), Some(64 << 20), "at least 64 MiB");
        assert_eq!(default_memory_in("MemFree: 1 kB\n"), None);
        assert_eq!(default_memory_in("MemTotal: lots\n"), None);
    }
}
