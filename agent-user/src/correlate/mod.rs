//! Correlate: the process table (pid → parent, executable), seeded from `/proc`
//! for processes that existed before Warden started and kept current from
//! fork/exec/exit events.
use std::{collections::HashMap, fs, path::Path};

use crate::decode::Event;

/// What Warden knows about a live process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcEntry {
    pub ppid: u32,
    pub exe: Option<String>,
}

/// Context the table adds to an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    pub pid: u32,
    pub ppid: u32,
    pub exe: Option<String>,
}

/// pid (thread-group id) → process.
#[derive(Debug, Default)]
pub struct ProcessTable {
    procs: HashMap<u32, ProcEntry>,
    /// The procfs the table was seeded from: a process the table does not know yet (its
    /// record raced its fork or exec, or it started before Warden) is looked up there when
    /// its first record arrives, so the record is matched rather than left without context.
    live: Option<std::path::PathBuf>,
    /// Processes resolved that way.
    pub resolved_late: u64,
    /// Recently exited processes, oldest first (bounded): a report that arrives after the
    /// process's exit record (a kernel audit record, say) still finds its ancestry.
    gone: std::collections::VecDeque<(u32, ProcEntry)>,
}

/// How many exited processes [`ProcessTable`] remembers.
const GONE_MAX: usize = 4096;

impl ProcessTable {
    /// Seeds the table from a procfs root (normally `/proc`). Processes that vanish while
    /// being read are skipped.
    pub fn seed_from(proc_root: &Path) -> Self {
        let mut procs = HashMap::new();
        if let Ok(rd) = fs::read_dir(proc_root) {
            for e in rd.flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                    continue;
                };
                let Ok(stat) = fs::read_to_string(e.path().join("stat")) else { continue };
                let Some(ppid) = parse_stat_ppid(&stat) else { continue };
                let exe = fs::read_link(e.path().join("exe")).ok().map(|p| p.to_string_lossy().into_owned());
                procs.insert(pid, ProcEntry { ppid, exe });
            }
        }
        Self { procs, live: Some(proc_root.to_path_buf()), resolved_late: 0, gone: Default::default() }
    }

    /// Looks up a process missing from the table in procfs and adds it.
    fn resolve(&mut self, tgid: u32) {
        if self.procs.contains_key(&tgid) {
            return;
        }
        let Some(root) = &self.live else { return };
        let dir = root.join(tgid.to_string());
        let Some(ppid) = fs::read_to_string(dir.join("stat")).ok().as_deref().and_then(parse_stat_ppid)
        else {
            return;
        };
        let exe = fs::read_link(dir.join("exe")).ok().map(|p| p.to_string_lossy().into_owned());
        self.procs.insert(tgid, ProcEntry { ppid, exe });
        self.resolved_late += 1;
    }

    pub fn get(&self, pid: u32) -> Option<&ProcEntry> {
        self.procs.get(&pid)
    }

    /// A live process, or one that exited recently.
    pub fn get_or_gone(&self, pid: u32) -> Option<&ProcEntry> {
        self.procs.get(&pid).or_else(|| self.gone.iter().rev().find(|(p, _)| *p == pid).map(|(_, e)| e))
    }

    /// Context for a process named by a report from outside the ring buffer (it may have
    /// exited since, or not be known yet).
    pub fn context_of(&mut self, pid: u32) -> Context {
        self.resolve(pid);
        match self.get_or_gone(pid) {
            Some(e) => Context { pid, ppid: e.ppid, exe: e.exe.clone() },
            None => Context { pid, ppid: 0, exe: None },
        }
    }

    pub fn len(&self) -> usize {
        self.procs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }

    /// Updates the table with `ev` and returns the process context for its record.
    pub fn apply(&mut self, ev: &Event) -> Context {
        let p = ev.proc();
        match ev {
            Event::Fork { child_tgid, .. } => {
                self.resolve(p.tgid);
                let parent_exe = self.procs.get(&p.tgid).and_then(|e| e.exe.clone());
                self.procs.insert(*child_tgid, ProcEntry { ppid: p.tgid, exe: parent_exe.clone() });
                Context { pid: p.tgid, ppid: p.ppid, exe: parent_exe }
            }
            Event::Exec { path, exe, .. } => {
                // The kernel's own name for the image; the invoked path only if it has none.
                let exe = if exe.is_empty() { path.clone() } else { exe.clone() };
                self.procs.insert(p.tgid, ProcEntry { ppid: p.ppid, exe: Some(exe.clone()) });
                Context { pid: p.tgid, ppid: p.ppid, exe: Some(exe) }
            }
            Event::Exit { .. } => {
                let entry = self.procs.remove(&p.tgid);
                let exe = entry.as_ref().and_then(|e| e.exe.clone());
                if let Some(e) = entry {
                    if self.gone.len() >= GONE_MAX {
                        self.gone.pop_front();
                    }
                    self.gone.push_back((p.tgid, e));
                }
                Context { pid: p.tgid, ppid: p.ppid, exe }
            }
            Event::Connect { .. } | Event::Lsm { .. } => {
                self.resolve(p.tgid);
                let exe = self.procs.get(&p.tgid).and_then(|e| e.exe.clone());
                Context { pid: p.tgid, ppid: p.ppid, exe }
            }
        }
    }

    /// The chain of ancestors of `pid`, nearest first, bounded and loop-safe.
    pub fn ancestry(&self, pid: u32) -> Vec<u32> {
        let mut out = Vec::new();
        let mut cur = pid;
        while let Some(e) = self.get_or_gone(cur) {
            if e.ppid == 0 || e.ppid == pid || out.len() >= 64 || out.contains(&e.ppid) {
                break;
            }
            out.push(e.ppid);
            cur = e.ppid;
        }
        out
    }
}

/// The parent pid from `/proc/<pid>/stat`. The command name may contain spaces and
/// parentheses, so fields are counted after the last `)`.
pub fn parse_stat_ppid(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut it = rest.split_whitespace();
    let _state = it.next()?;
    it.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{Event, Meta, Proc};

    fn meta() -> Meta {
        use crate::decode::{KAction, KDecision, KRule};
        Meta {
            ktime_ns: 0,
            cgroup_id: 1,
            slot: 0,
            flags: 0,
            decision: KDecision::Allow,
            action: KAction::None,
            rule: KRule::None,
        }
    }
    fn proc(pid: u32, ppid: u32) -> Proc {
        Proc { pid, tgid: pid, ppid, uid: 0, gid: 0, comm: "x".into() }
    }

    #[test]
    fn parses_stat_with_hostile_comm() {
        assert_eq!(parse_stat_ppid("42 (a) b) c) S 7 42 42 0"), Some(7));
        assert_eq!(parse_stat_ppid("1 (init) S 0 1 1"), Some(0));
        assert_eq!(parse_stat_ppid("garbage"), None);
    }

    #[test]
    fn tracks_fork_exec_exit() {
        let mut t = ProcessTable::default();
        let exec = Event::Exec {
            meta: meta(),
            proc: proc(10, 1),
            old_pid: 10,
            dev: 0,
            ino: 0,
            path: "/bin/sh".into(),
            path_truncated: false,
            exe: "/usr/bin/dash".into(),
            exe_truncated: false,
        };
        assert_eq!(t.apply(&exec).exe.as_deref(), Some("/usr/bin/dash"), "the kernel's executable");
        let fork = Event::Fork { meta: meta(), proc: proc(10, 1), child_pid: 11, child_tgid: 11 };
        t.apply(&fork);
        assert_eq!(t.get(11), Some(&ProcEntry { ppid: 10, exe: Some("/usr/bin/dash".into()) }));
        assert_eq!(t.ancestry(11), vec![10, 1]);
        let exit = Event::Exit { meta: meta(), proc: proc(11, 10), exit_code: 0 };
        assert_eq!(t.apply(&exit).exe.as_deref(), Some("/usr/bin/dash"));
        assert!(t.get(11).is_none());
    }

    #[test]
    fn ancestry_is_loop_safe() {
        let mut t = ProcessTable::default();
        t.procs.insert(2, ProcEntry { ppid: 3, exe: None });
        t.procs.insert(3, ProcEntry { ppid: 2, exe: None });
        assert_eq!(t.ancestry(2), vec![3]);
    }

    #[test]
    fn seeds_from_a_procfs_tree() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("55");
        fs::create_dir(&p).unwrap();
        fs::write(p.join("stat"), "55 (my (proc)) S 9 55 55").unwrap();
        std::os::unix::fs::symlink("/usr/bin/true", p.join("exe")).unwrap();
        fs::create_dir(dir.path().join("self")).unwrap();
        let t = ProcessTable::seed_from(dir.path());
        assert_eq!(t.get(55), Some(&ProcEntry { ppid: 9, exe: Some("/usr/bin/true".into()) }));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn unknown_processes_are_resolved_from_procfs_when_their_record_arrives() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = ProcessTable::seed_from(dir.path());
        assert!(t.is_empty());
        // A process that appears after seeding, whose fork/exec records were not seen.
        let p = dir.path().join("77");
        fs::create_dir(&p).unwrap();
        fs::write(p.join("stat"), "77 (curl) S 70 77 77").unwrap();
        std::os::unix::fs::symlink("/usr/bin/curl", p.join("exe")).unwrap();
        let ev = Event::Connect {
            meta: meta(),
            proc: proc(77, 70),
            addr: "127.0.0.1".parse().unwrap(),
            port: 80,
            protocol: 6,
            op: crate::decode::ConnectOp::Connect,
        };
        assert_eq!(t.apply(&ev).exe.as_deref(), Some("/usr/bin/curl"));
        assert_eq!(t.resolved_late, 1);
        assert_eq!(t.get(77).unwrap().ppid, 70);
    }

    #[test]
    fn seeds_from_real_proc() {
        let t = ProcessTable::seed_from(Path::new("/proc"));
        let me = std::process::id();
        assert!(t.get(me).is_some(), "own process must be in the seeded table");
    }
}
