//! Refusals the kernel reports through its audit subsystem: the fallback engine's Landlock
//! domain and seccomp filter refuse without any BPF hook seeing it, but both log to audit.
//!
//! - Landlock (ABI 7, Linux 6.15) logs each denial as `LANDLOCK_ACCESS` with the id of the
//!   domain that denied it, and once per domain a `LANDLOCK_DOMAIN` record naming the pid that
//!   created it (Warden's child: the task's first process) — so a domain id is a task. The
//!   domain is created with `LANDLOCK_RESTRICT_SELF_LOG_NEW_EXEC_ON`, else only denials before
//!   the first exec would be logged. When the domain ends, `status=deallocated denials=N` says
//!   how many it denied: fewer received is a counted gap.
//! - seccomp logs a refused call (`SECCOMP_FILTER_FLAG_LOG`) or a kill as `SECCOMP`, with the
//!   pid: the pid's sandbox is known from the process table (fork/exec records) or, while the
//!   process lives, from `/proc/<pid>/cgroup`.
//!
//! Records are read from the read-only multicast group ([`netlink::Listener`]), which does
//! not disturb auditd. Both mechanisms log only while audit is enabled; when it is off Warden
//! turns it on after adding `-a never,task`, so no task gets a syscall-audit context and no
//! process anywhere pays for it ([`netlink::ensure_enabled`], docs/benchmarks.md). Without a
//! syscall-audit context Landlock's records do not name the process that was refused: the
//! record carries the task (from the domain), the object and the rule, not the pid.
pub mod feed;
pub mod netlink;
pub mod parse;

use std::{
    collections::{HashMap, VecDeque},
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::audit::Kind;
pub use parse::Report;
use parse::{LandlockAccess, LandlockDomain, Seccomp};

/// Whether seccomp logs refused calls of filters that ask for it (`errno` in the node-wide
/// `kernel.seccomp.actions_logged`).
pub fn seccomp_logs_errno() -> bool {
    fs::read_to_string("/proc/sys/kernel/seccomp/actions_logged")
        .is_ok_and(|s| s.split_whitespace().any(|a| a == "errno"))
}

/// Refusal classes the engine enforces but cannot record on this kernel
/// (`task_start.unrecorded`, `warden probe`): `feed` says whether the kernel's audit records
/// can be read ([`feed::Feed::open`] succeeded).
pub fn unrecorded(lsm_engine: bool, feed: bool) -> Vec<String> {
    let mut v = Vec::new();
    let landlock_logs = feed && crate::sandbox::confine::landlock_abi().is_ok_and(|abi| abi >= 7);
    if !lsm_engine && !landlock_logs {
        v.extend(["files", "signals", "ptrace", "unix-sockets"].map(String::from));
    }
    if !(feed && seccomp_logs_errno()) {
        v.push("syscalls".to_string());
    }
    v
}

/// What the tracker needs to know about a task to attribute and name its refusals.
#[derive(Debug, Clone)]
pub struct TaskInfo {
    pub slot: u32,
    /// The task's first process, when Warden started it: the creator of its Landlock domain
    /// (processes started later, `warden task exec`, create theirs and are found by pid).
    pub first_pid: Option<u32>,
    /// The sandbox cgroup, relative to the cgroup2 mount (e.g. `warden/t-1`).
    pub cgroup_rel: String,
    /// The compiled scope's, shared (not a copy per task).
    pub protected: std::sync::Arc<crate::scope::compile::Protected>,
    /// Syscalls the task's seccomp filter refuses: number → name.
    pub syscalls: HashMap<i64, &'static str>,
}

impl TaskInfo {
    /// The task in `slot`, started as `first_pid` in sandbox `cgroup` (under the cgroup2
    /// `mount`), confined by `c`.
    pub fn new(
        slot: u32,
        first_pid: Option<u32>,
        cgroup: &crate::sandbox::Cgroup,
        mount: &Path,
        c: &crate::scope::compile::CompiledScope,
    ) -> Self {
        Self {
            slot,
            first_pid,
            cgroup_rel: cgroup.path().strip_prefix(mount).unwrap_or(cgroup.path()).display().to_string(),
            protected: c.protected.clone(),
            syscalls: c
                .seccomp_deny
                .iter()
                .map(|(name, nr)| (*nr, *name))
                .chain([(libc::SYS_socket, "socket"), (libc::SYS_socketpair, "socketpair")])
                // Refused by their arguments (sandbox/seccomp.rs): aimed at the namespace's
                // init, or creating a user namespace.
                .chain([
                    (libc::SYS_prlimit64, "prlimit64"),
                    (libc::SYS_setpriority, "setpriority"),
                    (libc::SYS_ioprio_set, "ioprio_set"),
                    (libc::SYS_sched_setaffinity, "sched_setaffinity"),
                    (libc::SYS_sched_setscheduler, "sched_setscheduler"),
                    (libc::SYS_sched_setparam, "sched_setparam"),
                    (libc::SYS_sched_setattr, "sched_setattr"),
                    (libc::SYS_unshare, "unshare"),
                    (libc::SYS_clone, "clone"),
                    // Making a file setuid.
                    (libc::SYS_chmod, "chmod"),
                    (libc::SYS_fchmod, "fchmod"),
                    (libc::SYS_fchmodat, "fchmodat"),
                    (452, "fchmodat2"),
                ])
                .collect(),
        }
    }
}

/// One refusal, attributed to a task, ready to become a `deny` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub slot: u32,
    /// Wall-clock time, ns since the Unix epoch.
    pub unix_ns: i128,
    /// Which kernel mechanism refused: `landlock` or `seccomp`.
    pub source: &'static str,
    pub kind: Kind,
    pub rule: &'static str,
    /// `refuse` or `kill`.
    pub action: &'static str,
    /// The process refused, when the kernel names it (seccomp does, Landlock does not).
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub exe: Option<String>,
    pub path: Option<String>,
    pub path_truncated: bool,
    pub ino: Option<u64>,
    pub target_pid: Option<u32>,
    /// seccomp: the call, by name where the filter names it (`i386:11` for a foreign ABI).
    pub syscall: Option<String>,
    /// Landlock: the rights that were missing (`fs.read_file,fs.read_dir`).
    pub blockers: Option<String>,
}

/// What the tracker produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Refusal(Box<Refusal>),
    /// A domain of task `slot` denied `missing` more requests than were received.
    Gap {
        slot: u32,
        missing: u64,
    },
}

#[derive(Debug)]
struct Held {
    since: Instant,
    refusal: Refusal,
    serial: u64,
    domain: u64,
}

/// How long a create denial is held back for the write denial of the same call.
pub const HOLD_FOR: Duration = Duration::from_millis(50);

/// How long a report whose task is not known yet is kept (its domain record or the pid's
/// fork record may still be on the way).
const PENDING_FOR: Duration = Duration::from_secs(2);
const PENDING_MAX: usize = 4096;

/// `AUDIT_ARCH_X86_64` and `AUDIT_ARCH_I386`.
const ARCH_X86_64: u32 = 0xc000_003e;
const ARCH_I386: u32 = 0x4000_0003;
/// x32 calls are x86-64 numbers with this bit set.
const X32_BIT: i64 = 0x4000_0000;

/// Where procfs places a process.
enum ProcSlot {
    Task(u32),
    /// Alive, in no task's sandbox.
    Foreign,
    /// Not there (exited, or not readable).
    Gone,
}

/// Attributes kernel reports to tasks.
#[derive(Debug, Default)]
pub struct Tracker {
    tasks: HashMap<u32, TaskInfo>,
    /// Landlock domain id → (slot, denials received).
    domains: HashMap<u64, (u32, u64)>,
    pending: VecDeque<(Instant, Report)>,
    /// A denial to create a name, held back briefly: an `open(O_CREAT)` of an existing file
    /// that may not be written is denied twice in one call (create in the directory, then
    /// write to the file), and is one refusal.
    held: Option<Held>,
    /// Reports dropped because no task could be found for them (other software's domains and
    /// filters are expected here).
    pub unattributed: u64,
    /// Records that could not be parsed.
    pub malformed: u64,
    proc_root: Option<PathBuf>,
}

impl Tracker {
    /// A tracker that resolves pids it does not know from `proc_root` (normally `/proc`).
    pub fn new(proc_root: &Path) -> Self {
        Self { proc_root: Some(proc_root.to_path_buf()), ..Default::default() }
    }

    pub fn register(&mut self, info: TaskInfo) {
        self.tasks.insert(info.slot, info);
    }

    pub fn first_pid(&mut self, slot: u32, pid: u32) {
        if let Some(t) = self.tasks.get_mut(&slot) {
            t.first_pid = Some(pid);
        }
    }

    pub fn unregister(&mut self, slot: u32) {
        self.tasks.remove(&slot);
        if self.held.as_ref().is_some_and(|h| h.refusal.slot == slot) {
            self.held = None;
        }
        self.domains.retain(|_, (s, _)| *s != slot);
    }

    /// Whether a Landlock domain of `slot` is known (its first denial was seen).
    pub fn has_domain(&self, slot: u32) -> bool {
        self.domains.values().any(|(s, _)| *s == slot)
    }

    /// Parses one raw record and attributes it; malformed records are counted.
    pub fn ingest_raw(
        &mut self,
        typ: u16,
        text: &str,
        pid_slot: &dyn Fn(u32) -> Option<u32>,
        out: &mut Vec<Output>,
    ) {
        match parse::parse(typ, text) {
            Ok(Some(r)) => self.ingest(r, pid_slot, out),
            Ok(None) => {}
            Err(e) => {
                self.malformed += 1;
                tracing::debug!(error = %e, typ, "unparsable kernel audit record");
            }
        }
    }

    /// Attributes `report`; what cannot be attributed yet waits (see [`Tracker::retry`]).
    pub fn ingest(&mut self, report: Report, pid_slot: &dyn Fn(u32) -> Option<u32>, out: &mut Vec<Output>) {
        let domain = matches!(report, Report::Domain(LandlockDomain::Allocated { .. }));
        if self.try_one(&report, pid_slot, true, out) {
            if domain {
                // Its denials that arrived first can be placed now.
                self.retry(pid_slot, out);
            }
            return;
        }
        if self.pending.len() >= PENDING_MAX {
            self.pending.pop_front();
            self.unattributed += 1;
        }
        self.pending.push_back((Instant::now(), report));
    }

    /// Tries the waiting reports again (after new fork/exec records, or a domain record);
    /// those waiting longer than [`PENDING_FOR`] are dropped and counted.
    pub fn retry(&mut self, pid_slot: &dyn Fn(u32) -> Option<u32>, out: &mut Vec<Output>) {
        let waiting = std::mem::take(&mut self.pending);
        let mut new_domain = false;
        for (since, r) in waiting {
            if self.try_one(&r, pid_slot, false, out) {
                new_domain |= matches!(r, Report::Domain(LandlockDomain::Allocated { .. }));
                continue;
            }
            if since.elapsed() > PENDING_FOR {
                self.unattributed += 1;
            } else {
                self.pending.push_back((since, r));
            }
        }
        if new_domain {
            // Denials queued before that domain record can be placed now.
            self.retry(pid_slot, out);
        }
    }

    /// Emits `r`, merged with a held denial when both come from the same call; holds `r`
    /// itself when it may be the first half of one. One call, two denials: `open(O_CREAT)` of
    /// an existing file that may not be written (create in the directory, then write to the
    /// file), and `link`/`rename` (the source's directory, then the destination's).
    fn hold_or_emit(&mut self, mut r: Refusal, serial: u64, domain: u64, out: &mut Vec<Output>) {
        let has = |r: &Refusal, b: &str| {
            r.blockers.as_deref().is_some_and(|x| x.split(',').any(|y| y.starts_with(b)))
        };
        if let Some(h) = self.held.take() {
            // Same domain, within a millisecond, no other record between (a domain record may be).
            let near = h.domain == domain
                && serial > h.serial
                && serial <= h.serial + 2
                && (r.unix_ns - h.refusal.unix_ns).abs() <= 1_000_000;
            let in_dir = r.path.as_deref().and_then(|p| Path::new(p).parent()).map(Path::to_path_buf)
                == h.refusal.path.as_deref().map(PathBuf::from);
            let joined = |a: Option<String>, b: Option<String>| match (a, b) {
                (Some(a), Some(b)) => Some(format!("{a},{b}")),
                (a, b) => a.or(b),
            };
            if near && has(&h.refusal, "fs.refer") {
                // The source side names the rule; the record is about the change to the tree.
                let mut m = h.refusal;
                m.blockers = joined(m.blockers, r.blockers.take());
                out.push(Output::Refusal(Box::new(m)));
                return;
            }
            if near && in_dir {
                r.blockers = joined(h.refusal.blockers, r.blockers.take());
                out.push(Output::Refusal(Box::new(r)));
                return;
            }
            out.push(Output::Refusal(Box::new(h.refusal)));
        }
        if has(&r, "fs.make_") || has(&r, "fs.refer") {
            self.held = Some(Held { since: Instant::now(), refusal: r, serial, domain });
        } else {
            out.push(Output::Refusal(Box::new(r)));
        }
    }

    /// Emits a held create denial once nothing joined it for `after` (zero: now).
    pub fn release_held(&mut self, after: Duration, out: &mut Vec<Output>) {
        if self.held.as_ref().is_some_and(|h| h.since.elapsed() >= after)
            && let Some(h) = self.held.take()
        {
            out.push(Output::Refusal(Box::new(h.refusal)));
        }
    }

    /// Reports still waiting for their task.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The sandbox of a process, from its cgroup while it lives.
    fn proc_slot(&self, pid: u32) -> ProcSlot {
        let Some(root) = &self.proc_root else { return ProcSlot::Gone };
        let Ok(text) = fs::read_to_string(root.join(pid.to_string()).join("cgroup")) else {
            return ProcSlot::Gone;
        };
        let Some(path) = text.lines().find_map(|l| l.strip_prefix("0::")) else { return ProcSlot::Gone };
        let path = path.trim_start_matches('/');
        // The deepest registered cgroup holding the process: a call's cgroup is inside its
        // task's, and its processes are the call's.
        match self
            .tasks
            .values()
            .filter(|t| path == t.cgroup_rel || path.starts_with(&format!("{}/", t.cgroup_rel)))
            .max_by_key(|t| t.cgroup_rel.len())
        {
            Some(t) => ProcSlot::Task(t.slot),
            None => ProcSlot::Foreign,
        }
    }

    /// The task of `pid`: from the sandboxes' own records, else (on first sight only, not on
    /// every retry) from procfs. `Err(())`: a live process of no task — not ours, drop it.
    fn slot_of_pid(
        &self,
        pid: u32,
        pid_slot: &dyn Fn(u32) -> Option<u32>,
        first: bool,
    ) -> Result<Option<u32>, ()> {
        if let Some(s) = pid_slot(pid).filter(|s| self.tasks.contains_key(s)) {
            return Ok(Some(s));
        }
        if !first {
            return Ok(None);
        }
        match self.proc_slot(pid) {
            ProcSlot::Task(s) => Ok(Some(s)),
            ProcSlot::Foreign => Err(()),
            ProcSlot::Gone => Ok(None),
        }
    }

    /// Attributes one report; false if its task is not known yet.
    fn try_one(
        &mut self,
        report: &Report,
        pid_slot: &dyn Fn(u32) -> Option<u32>,
        first: bool,
        out: &mut Vec<Output>,
    ) -> bool {
        match report {
            Report::Domain(LandlockDomain::Allocated { domain, pid, .. }) => {
                let slot = match self.tasks.values().find(|t| t.first_pid == Some(*pid)) {
                    Some(t) => Some(t.slot),
                    None => match self.slot_of_pid(*pid, pid_slot, first) {
                        Ok(s) => s,
                        Err(()) => {
                            self.unattributed += 1;
                            return true;
                        }
                    },
                };
                match slot {
                    Some(s) => {
                        self.domains.entry(*domain).or_insert((s, 0));
                        true
                    }
                    None => false,
                }
            }
            Report::Domain(LandlockDomain::Deallocated { domain, denials, .. }) => {
                if let Some((slot, got)) = self.domains.remove(domain)
                    && got < *denials
                    && self.tasks.contains_key(&slot)
                {
                    out.push(Output::Gap { slot, missing: denials - got });
                }
                true
            }
            Report::Landlock(a) => {
                let Some((slot, got)) = self.domains.get_mut(&a.domain) else { return false };
                *got += 1;
                let slot = *slot;
                if let Some(r) = self.tasks.get(&slot).map(|t| landlock_refusal(t, a)) {
                    self.hold_or_emit(r, a.stamp.serial, a.domain, out);
                }
                true
            }
            Report::Seccomp(s) => {
                let slot = match self.slot_of_pid(s.pid, pid_slot, first) {
                    Ok(Some(slot)) => slot,
                    Ok(None) => return false,
                    Err(()) => {
                        self.unattributed += 1;
                        return true;
                    }
                };
                if let Some(r) = self.tasks.get(&slot).and_then(|t| seccomp_refusal(t, s)) {
                    out.push(Output::Refusal(Box::new(r)));
                }
                true
            }
        }
    }
}

/// Kind and rule of a Landlock denial, from what was missing and the object.
fn landlock_kind_rule(t: &TaskInfo, blockers: &[String], path: Option<&str>) -> (Kind, &'static str) {
    let first = blockers.first().map(String::as_str).unwrap_or("");
    let write = blockers.iter().any(|b| {
        b.starts_with("fs.write")
            || b.starts_with("fs.make_")
            || b.starts_with("fs.remove_")
            || b == "fs.refer"
            || b == "fs.truncate"
            || b == "fs.ioctl_dev"
    });
    let file_rule = || -> &'static str {
        let Some(p) = path.map(Path::new) else { return if write { "files.write" } else { "files.read" } };
        let pr = &t.protected;
        let under = |v: &[PathBuf]| v.iter().any(|d| p.starts_with(d));
        // A directory above a protected path: new names there are refused (the carve-out).
        let above = |v: &[PathBuf]| v.iter().any(|d| d.starts_with(p));
        let roots = if write { &pr.write_roots } else { &pr.read_roots };
        let outside_roots = roots.as_ref().is_some_and(|r| !r.iter().any(|root| p.starts_with(root)));
        if pr.secrets.iter().any(|s| s == p) {
            "secrets"
        } else if under(&pr.deny) {
            "files.deny"
        } else if write && under(&pr.control) {
            "protected.control"
        } else if write && under(&pr.system) {
            "protected.system"
        } else if outside_roots {
            if write { "files.write" } else { "files.read" }
        } else if above(&pr.deny) {
            "files.deny"
        } else if write && above(&pr.control) {
            "protected.control"
        } else if write && above(&pr.system) {
            "protected.system"
        } else if write {
            "files.write"
        } else {
            "files.read"
        }
    };
    match first {
        "scope.signal" => (Kind::Signal, "protected.process"),
        "scope.abstract_unix_socket" => (Kind::Unix, "protected.process"),
        "ptrace" => (Kind::Ptrace, "protected.process"),
        "fs.change_topology" => (Kind::Mount, "protected.mount"),
        _ if blockers.iter().any(|b| b == "fs.refer") => (Kind::File, file_rule()),
        b if b.starts_with("net.") => (Kind::Connect, "network.egress"),
        "fs.ioctl_dev" => (Kind::Ioctl, file_rule()),
        b if b.starts_with("fs.make_") || b.starts_with("fs.remove_") || b == "fs.refer" => {
            (Kind::File, file_rule())
        }
        b if b.starts_with("fs.") => (Kind::Open, file_rule()),
        _ => (Kind::Landlock, "protected.landlock"),
    }
}

fn landlock_refusal(t: &TaskInfo, a: &LandlockAccess) -> Refusal {
    let (kind, rule) = landlock_kind_rule(t, &a.blockers, a.path.as_deref());
    Refusal {
        slot: t.slot,
        unix_ns: a.stamp.unix_ns,
        source: "landlock",
        kind,
        rule,
        action: "refuse",
        pid: None,
        comm: None,
        exe: None,
        path: a.path.clone(),
        path_truncated: a.path_truncated,
        ino: a.ino,
        target_pid: a.opid,
        syscall: None,
        blockers: Some(a.blockers.join(",")),
    }
}

/// Kind and rule of a refused syscall, by name.
pub fn syscall_kind_rule(name: &str) -> (Kind, &'static str) {
    match name {
        "bpf" => (Kind::Bpf, "protected.bpf"),
        "mount" | "umount2" | "fsopen" | "fsconfig" | "fsmount" | "move_mount" | "open_tree"
        | "pivot_root" | "mount_setattr" => (Kind::Mount, "protected.mount"),
        "init_module" | "finit_module" | "delete_module" | "kexec_load" | "kexec_file_load" => {
            (Kind::Module, "protected.modules")
        }
        "ptrace" | "process_vm_readv" | "process_vm_writev" => (Kind::Ptrace, "protected.process"),
        "prlimit64" | "setpriority" | "ioprio_set" | "sched_setaffinity" | "sched_setscheduler"
        | "sched_setparam" | "sched_setattr" => (Kind::Syscall, "protected.process"),
        "unshare" | "clone" => (Kind::Syscall, "protected.userns"),
        "chmod" | "fchmod" | "fchmodat" | "fchmodat2" => (Kind::Syscall, "protected.setid"),
        "io_uring_setup" | "io_uring_enter" | "io_uring_register" => (Kind::Syscall, "protected.io_uring"),
        "socket" | "socketpair" => (Kind::Socket, "protected.sockets"),
        _ => (Kind::Syscall, "protected.syscalls"),
    }
}

/// `SECCOMP_RET_ACTION_FULL` and the actions that refuse.
const RET_ACTION_FULL: u32 = 0xffff_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_KILL_THREAD: u32 = 0;
const RET_TRAP: u32 = 0x0003_0000;
const RET_ERRNO: u32 = 0x0005_0000;

fn seccomp_refusal(t: &TaskInfo, s: &Seccomp) -> Option<Refusal> {
    // (`clone3` answering ENOSYS is never logged: its filter is installed without
    // SECCOMP_FILTER_FLAG_LOG, sandbox/seccomp.rs `build_no_clone3` — the kernel's record
    // carries the action, not the errno, so it could not be told apart here.)
    let action = match s.code & RET_ACTION_FULL {
        RET_ERRNO | RET_TRAP => "refuse",
        RET_KILL_PROCESS | RET_KILL_THREAD => "kill",
        // LOG, ALLOW, TRACE, USER_NOTIF: not a refusal by the filter itself.
        _ => return None,
    };
    let (name, (kind, rule)) = match s.arch {
        ARCH_X86_64 if s.syscall & X32_BIT != 0 => {
            (format!("x32:{}", s.syscall & !X32_BIT), (Kind::Syscall, "protected.syscalls"))
        }
        ARCH_X86_64 => match t.syscalls.get(&s.syscall) {
            Some(n) => (n.to_string(), syscall_kind_rule(n)),
            None => (s.syscall.to_string(), (Kind::Syscall, "protected.syscalls")),
        },
        ARCH_I386 => (format!("i386:{}", s.syscall), (Kind::Syscall, "protected.syscalls")),
        other => (format!("arch-{other:x}:{}", s.syscall), (Kind::Syscall, "protected.syscalls")),
    };
    Some(Refusal {
        slot: t.slot,
        unix_ns: s.stamp.unix_ns,
        source: "seccomp",
        kind,
        rule,
        action,
        pid: Some(s.pid),
        comm: s.comm.clone(),
        exe: s.exe.clone(),
        path: None,
        path_truncated: false,
        ino: None,
        target_pid: None,
        syscall: Some(name),
        blockers: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope::compile::Protected;

    fn task(slot: u32, first_pid: u32) -> TaskInfo {
        TaskInfo {
            slot,
            first_pid: Some(first_pid),
            cgroup_rel: format!("warden/t{slot}"),
            protected: std::sync::Arc::new(Protected {
                deny: vec!["/etc/shadow".into(), "/data/secret".into()],
                secrets: vec!["/data/secret/token".into()],
                control: vec!["/sys/fs/cgroup".into()],
                system: vec!["/etc".into(), "/usr".into(), "/root/.bashrc".into()],
                read_roots: None,
                write_roots: Some(vec!["/data/out".into()]),
            }),
            syscalls: [(321, "bpf"), (425, "io_uring_setup")].into_iter().collect(),
        }
    }

    fn feed(tr: &mut Tracker, typ: u16, text: &str, pids: &HashMap<u32, u32>) -> Vec<Output> {
        let mut out = Vec::new();
        tr.ingest_raw(typ, text, &|p| pids.get(&p).copied(), &mut out);
        out
    }

    #[test]
    fn landlock_denials_wait_for_their_domain_then_name_task_object_and_rule() {
        let mut tr = Tracker::default();
        tr.register(task(3, 100));
        let none = HashMap::new();
        // As on 6.18: the first access record comes before the domain record.
        assert!(
            feed(
                &mut tr,
                1423,
                "audit(1.000:1): domain=a blockers=fs.read_file path=\"/etc/shadow\" dev=\"vda\" ino=5",
                &none
            )
            .is_empty()
        );
        assert_eq!(tr.pending(), 1);
        let out = feed(
            &mut tr,
            1424,
            "audit(1.000:2): domain=a status=allocated mode=enforcing pid=100 uid=0",
            &none,
        );
        let [Output::Refusal(r)] = out.as_slice() else { panic!("{out:?}") };
        assert_eq!(
            (r.slot, r.kind, r.rule, r.source, r.pid),
            (3, Kind::Open, "files.deny", "landlock", None)
        );
        assert_eq!(r.path.as_deref(), Some("/etc/shadow"));
        let out = feed(
            &mut tr,
            1423,
            "audit(1.000:3): domain=a blockers=fs.write_file path=\"/sys/fs/cgroup/x/cgroup.procs\" ino=9",
            &none,
        );
        let [Output::Refusal(r)] = out.as_slice() else { panic!() };
        assert_eq!((r.kind, r.rule), (Kind::Open, "protected.control"));
        // The node's own files: a write names protected.system, a read of them is no refusal
        // of that rule (reads there are the read grants' business).
        for (text, kind, rule) in [
            ("blockers=fs.write_file path=\"/etc/ld.so.preload\" ino=11", Kind::Open, "protected.system"),
            ("blockers=fs.write_file path=\"/root/.bashrc\" ino=13", Kind::Open, "protected.system"),
            ("blockers=fs.write_file path=\"/usr/bin/env\" ino=12", Kind::Open, "protected.system"),
            ("blockers=fs.read_file path=\"/etc/ld.so.preload\" ino=11", Kind::Open, "files.read"),
        ] {
            let out = feed(&mut tr, 1423, &format!("audit(1.000:3): domain=a {text}"), &none);
            let [Output::Refusal(r)] = out.as_slice() else { panic!("{text}: {out:?}") };
            assert_eq!((r.kind, r.rule), (kind, rule), "{text}");
        }
        let out = feed(
            &mut tr,
            1423,
            "audit(1.000:4): domain=a blockers=scope.signal opid=1 ocomm=\"init\"",
            &none,
        );
        let [Output::Refusal(r)] = out.as_slice() else { panic!() };
        assert_eq!((r.kind, r.rule, r.target_pid), (Kind::Signal, "protected.process", Some(1)));
        // A create denial is held back for a moment (see Tracker::hold_or_emit).
        let out = feed(
            &mut tr,
            1423,
            "audit(1.000:5): domain=a blockers=fs.make_reg path=\"/data/secret/new\"",
            &none,
        );
        assert!(out.is_empty());
        let out = feed(
            &mut tr,
            1423,
            "audit(1.000:6): domain=a blockers=fs.read_file path=\"/data/secret/token\"",
            &none,
        );
        let [Output::Refusal(c), Output::Refusal(r)] = out.as_slice() else { panic!("{out:?}") };
        assert_eq!((c.kind, c.rule), (Kind::File, "files.deny"));
        assert_eq!(r.rule, "secrets");
        // Outside files.write, and next to a protected path inside the roots.
        let out =
            feed(&mut tr, 1423, "audit(1.000:20): domain=a blockers=fs.write_file path=\"/tmp/x\"", &none);
        let [Output::Refusal(r)] = out.as_slice() else { panic!() };
        assert_eq!(r.rule, "files.write");
        std::sync::Arc::make_mut(&mut tr.tasks.get_mut(&3).unwrap().protected).write_roots = None;
        feed(&mut tr, 1423, "audit(1.000:21): domain=a blockers=fs.make_reg path=\"/data\"", &none);
        let mut out = Vec::new();
        tr.release_held(Duration::ZERO, &mut out);
        let [Output::Refusal(r)] = out.as_slice() else { panic!() };
        assert_eq!((r.kind, r.rule), (Kind::File, "files.deny"));
        // 11 received; the domain says 12 were denied: one is missing.
        let out = feed(&mut tr, 1424, "audit(2.000:22): domain=a status=deallocated denials=12", &none);
        assert_eq!(out, [Output::Gap { slot: 3, missing: 1 }]);
    }

    #[test]
    fn writes_the_mounts_used_to_refuse_are_named_by_their_rule() {
        // As logged on 6.18 once no read-only bind refuses first (sandbox/boundary.rs): a
        // write to and a truncate of an allowed program outside files.write, a write to a
        // knob of the task's own procfs.
        let mut tr = Tracker::default();
        let mut t = task(4, 200);
        std::sync::Arc::make_mut(&mut t.protected).control.push("/proc".into());
        // A scope granting `system`: /usr is written only outside files.write's roots.
        std::sync::Arc::make_mut(&mut t.protected).system.clear();
        tr.register(t);
        let none = HashMap::new();
        feed(&mut tr, 1424, "audit(1.000:1): domain=b status=allocated mode=enforcing pid=200 uid=0", &none);
        for (serial, blockers, path, rule) in [
            (2, "fs.write_file", "/usr/bin/python3.11", "files.write"),
            (3, "fs.truncate", "/usr/bin/python3.11", "files.write"),
            (4, "fs.write_file", "/proc/sys/kernel/core_pattern", "protected.control"),
        ] {
            let text = format!(
                "audit(1.000:{serial}): domain=b blockers={blockers} path=\"{path}\" dev=\"vda\" ino=7"
            );
            let out = feed(&mut tr, 1423, &text, &none);
            let [Output::Refusal(r)] = out.as_slice() else { panic!("{out:?}") };
            assert_eq!((r.kind, r.rule, r.path.as_deref()), (Kind::Open, rule, Some(path)), "{blockers}");
        }
    }

    #[test]
    fn a_create_and_write_denial_of_one_call_is_one_refusal() {
        let mut tr = Tracker::default();
        tr.register(task(1, 100));
        let none = HashMap::new();
        feed(&mut tr, 1424, "audit(1.000:1): domain=a status=allocated mode=enforcing pid=100", &none);
        let d = "/sys/fs/cgroup/x";
        assert!(
            feed(
                &mut tr,
                1423,
                &format!("audit(1.000:2): domain=a blockers=fs.make_reg path=\"{d}\""),
                &none
            )
            .is_empty()
        );
        let out = feed(
            &mut tr,
            1423,
            &format!("audit(1.000:3): domain=a blockers=fs.write_file path=\"{d}/cgroup.procs\""),
            &none,
        );
        let [Output::Refusal(r)] = out.as_slice() else { panic!("{out:?}") };
        assert_eq!(r.path.as_deref(), Some("/sys/fs/cgroup/x/cgroup.procs"));
        assert_eq!(r.blockers.as_deref(), Some("fs.make_reg,fs.write_file"));
        // A create denial alone is released when nothing joins it; an unrelated denial after
        // it releases it first.
        feed(&mut tr, 1423, "audit(1.000:4): domain=a blockers=fs.make_reg path=\"/a\"", &none);
        let out = feed(&mut tr, 1423, "audit(1.000:6): domain=a blockers=fs.read_file path=\"/b/c\"", &none);
        assert_eq!(out.len(), 2);
        // link/rename: the source's directory, (a domain record,) then the destination's.
        let out = feed(
            &mut tr,
            1423,
            "audit(1.000:10): domain=a blockers=fs.read_file,fs.refer path=\"/data/secret\"",
            &none,
        );
        assert!(out.is_empty());
        let out = feed(&mut tr, 1423, "audit(1.000:12): domain=a blockers=fs.make_char path=\"/out\"", &none);
        let [Output::Refusal(r)] = out.as_slice() else { panic!("{out:?}") };
        assert_eq!((r.kind, r.rule, r.path.as_deref()), (Kind::File, "files.deny", Some("/data/secret")));
        assert_eq!(r.blockers.as_deref(), Some("fs.read_file,fs.refer,fs.make_char"));
        feed(&mut tr, 1423, "audit(1.000:7): domain=a blockers=fs.make_dir path=\"/a\"", &none);
        let mut out = Vec::new();
        tr.release_held(Duration::ZERO, &mut out);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn other_domains_and_unknown_pids_are_not_attributed() {
        let mut tr = Tracker::default();
        tr.register(task(1, 100));
        let none = HashMap::new();
        assert!(
            feed(&mut tr, 1424, "audit(1.000:2): domain=b status=allocated mode=enforcing pid=999", &none)
                .is_empty()
        );
        assert!(
            feed(&mut tr, 1423, "audit(1.000:3): domain=b blockers=fs.read_file path=\"/x\"", &none)
                .is_empty()
        );
        assert_eq!(tr.pending(), 2);
        tr.pending.iter_mut().for_each(|(t, _)| *t -= PENDING_FOR * 2);
        let mut out = Vec::new();
        tr.retry(&|_| None, &mut out);
        assert!(out.is_empty());
        assert_eq!((tr.pending(), tr.unattributed), (0, 2));
        feed(&mut tr, 1423, "garbage", &none);
        assert_eq!(tr.malformed, 1);
    }

    #[test]
    fn seccomp_refusals_are_named_by_the_filter_and_placed_by_pid() {
        let mut tr = Tracker::default();
        tr.register(task(2, 100));
        let pids: HashMap<u32, u32> = [(150, 2)].into_iter().collect();
        let rec = |pid: u32, arch: &str, nr: u32, code: &str| {
            format!(
                "audit(1.5:9): auid=4294967295 uid=0 gid=0 ses=1 pid={pid} comm=\"a\" exe=\"/bin/a\" sig=0 arch={arch} syscall={nr} compat=0 ip=0x1 code={code}"
            )
        };
        let out = feed(&mut tr, 1326, &rec(150, "c000003e", 321, "0x50001"), &pids);
        let [Output::Refusal(r)] = out.as_slice() else { panic!("{out:?}") };
        assert_eq!(
            (r.kind, r.rule, r.action, r.pid, r.syscall.as_deref()),
            (Kind::Bpf, "protected.bpf", "refuse", Some(150), Some("bpf"))
        );
        let out = feed(&mut tr, 1326, &rec(150, "40000003", 11, "0x80000000"), &pids);
        let [Output::Refusal(r)] = out.as_slice() else { panic!() };
        assert_eq!((r.kind, r.action, r.syscall.as_deref()), (Kind::Syscall, "kill", Some("i386:11")));
        let out = feed(&mut tr, 1326, &rec(150, "c000003e", 425, "0x50001"), &pids);
        let [Output::Refusal(r)] = out.as_slice() else { panic!() };
        assert_eq!(r.rule, "protected.io_uring");
        // A logged-and-allowed call is not a refusal; a pid of no task waits, then is dropped.
        assert!(feed(&mut tr, 1326, &rec(150, "c000003e", 1, "0x7ffc0000"), &pids).is_empty());
        assert!(feed(&mut tr, 1326, &rec(4242, "c000003e", 321, "0x50001"), &pids).is_empty());
        assert_eq!(tr.pending(), 1);
    }
}
