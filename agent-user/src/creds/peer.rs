//! Who is on the other end of a unix socket, from the kernel: a pidfd of the peer
//! (`SO_PEERPIDFD`, taken when it connected), its executable's identity (device, inode of
//! `/proc/<pid>/exe`), its cgroup, and its ancestors.
//!
//! The pidfd pins the identity against pid reuse: everything is read through `/proc/<pid>`
//! of *this* process's procfs (the caller may be in another pid namespace; the pid the
//! pidfd reports is in ours), and afterwards the pidfd must still name a live process —
//! had the caller exited and its pid been reused, what was read belongs to someone else and
//! the caller is refused. Ancestors are pinned the same way with `pidfd_open`, and each
//! child is re-checked to still have that parent.
use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

/// `SO_PEERPIDFD` (Linux 6.5), not yet in every libc.
const SO_PEERPIDFD: libc::c_int = 77;
/// How far up the process tree a caller's ancestors are read.
const MAX_ANCESTORS: usize = 32;

/// One process, as read from procfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proc {
    pub pid: u32,
    pub ppid: u32,
    /// What `/proc/<pid>/exe` points at (for records).
    pub exe: PathBuf,
    /// The executable's identity: userspace `st_dev` and inode.
    pub dev: u64,
    pub ino: u64,
    /// Its cgroup v2 path below the cgroup2 mount (absolute, under `mount`).
    pub cgroup: Option<PathBuf>,
}

/// A caller and its ancestors (nearest first), all checked to be the processes they were
/// when the caller connected.
#[derive(Debug, Clone)]
pub struct Caller {
    pub proc: Proc,
    pub ancestors: Vec<Proc>,
}

/// The peer's pidfd, taken from the connected socket. Before Linux 6.5 (no `SO_PEERPIDFD`)
/// the peer is found by the pid the kernel recorded at connect (`SO_PEERCRED`) and pinned
/// with `pidfd_open` now: a peer that exited in between and whose pid was reused would be
/// mistaken for the new process (docs/daemon.md says so); from 6.5 the kernel pins it itself.
pub fn peer_pidfd(sock: RawFd) -> io::Result<OwnedFd> {
    let mut fd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: fd and len are valid out-pointers of the sizes given.
    let r = unsafe { libc::getsockopt(sock, libc::SOL_SOCKET, SO_PEERPIDFD, (&raw mut fd).cast(), &mut len) };
    if r != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ENOPROTOOPT) {
            return Err(err);
        }
        let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
        let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        // SAFETY: cred and len are valid out-pointers of the sizes given.
        let r = unsafe {
            libc::getsockopt(sock, libc::SOL_SOCKET, libc::SO_PEERCRED, (&raw mut cred).cast(), &mut len)
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        if cred.pid <= 0 {
            return Err(io::Error::other("the kernel gave no peer pid"));
        }
        return pidfd_open(cred.pid as u32);
    }
    if fd < 0 {
        return Err(io::Error::other("the kernel gave no peer pidfd"));
    }
    // SAFETY: the kernel just gave us this fd; we own it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A pidfd for `pid`.
pub fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall, no pointers.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this fd; we own it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// The pid (in our pid namespace) a pidfd refers to, or `None` if the process is gone.
pub fn pidfd_pid(pidfd: &OwnedFd) -> io::Result<Option<u32>> {
    let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd()))?;
    let pid = text
        .lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|v| v.trim().parse::<i64>().ok())
        .ok_or_else(|| io::Error::other("no Pid in the pidfd's fdinfo"))?;
    Ok((pid > 0).then_some(pid as u32))
}

/// Whether the process behind `pidfd` still runs (signal 0 through the pidfd).
pub fn alive(pidfd: &OwnedFd) -> bool {
    // SAFETY: plain syscall; a null siginfo is allowed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            0,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    r == 0
}

/// Reads process `pid` from `proc_root` (normally `/proc`). Cgroup paths are made absolute
/// under `cgroup_mount`.
pub fn read_proc(proc_root: &Path, cgroup_mount: &Path, pid: u32) -> io::Result<Proc> {
    let dir = proc_root.join(pid.to_string());
    let status = std::fs::read_to_string(dir.join("status"))?;
    let ppid = status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| io::Error::other(format!("no PPid in {}/status", dir.display())))?;
    let md = std::fs::metadata(dir.join("exe"))?;
    let exe = std::fs::read_link(dir.join("exe")).unwrap_or_default();
    let cgroup = std::fs::read_to_string(dir.join("cgroup")).ok().and_then(|t| {
        t.lines()
            .find_map(|l| l.strip_prefix("0::"))
            .map(|rel| cgroup_mount.join(rel.trim().trim_start_matches('/')))
    });
    Ok(Proc { pid, ppid, exe, dev: md.dev(), ino: md.ino(), cgroup })
}

/// Identifies the peer of a connected socket: itself and its ancestors up to (not past)
/// the first one outside `within` (the task's sandbox cgroup).
pub fn identify(sock: RawFd, cgroup_mount: &Path, within: &Path) -> io::Result<Caller> {
    let pidfd = peer_pidfd(sock)?;
    let pid = pidfd_pid(&pidfd)?.ok_or_else(|| io::Error::other("the caller exited"))?;
    let proc_root = Path::new("/proc");
    let me = read_proc(proc_root, cgroup_mount, pid)?;
    if !alive(&pidfd) {
        return Err(io::Error::other("the caller exited while it was identified"));
    }
    let mut ancestors = Vec::new();
    let mut child = me.clone();
    let mut child_fd = pidfd;
    while ancestors.len() < MAX_ANCESTORS && child.ppid > 1 {
        let Ok(pfd) = pidfd_open(child.ppid) else { break };
        let Ok(parent) = read_proc(proc_root, cgroup_mount, child.ppid) else { break };
        // The child must still be alive and still have this parent: otherwise the parent
        // read may be a reused pid.
        let still =
            read_proc(proc_root, cgroup_mount, child.pid).map(|c| c.ppid == parent.pid).unwrap_or(false);
        if !still || !alive(&child_fd) || !alive(&pfd) {
            break;
        }
        if !parent.cgroup.as_deref().is_some_and(|c| c.starts_with(within)) {
            break;
        }
        ancestors.push(parent.clone());
        child = parent;
        child_fd = pfd;
    }
    Ok(Caller { proc: me, ancestors })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn the_peer_of_a_socketpair_is_this_process() {
        let (a, _b) = UnixStream::pair().unwrap();
        let fd = match peer_pidfd(a.as_raw_fd()) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOPROTOOPT) => {
                eprintln!("skipping: SO_PEERPIDFD needs Linux 6.5");
                return;
            }
            Err(e) => panic!("{e}"),
        };
        assert_eq!(pidfd_pid(&fd).unwrap(), Some(std::process::id()));
        assert!(alive(&fd));
        let p = read_proc(Path::new("/proc"), Path::new("/sys/fs/cgroup"), std::process::id()).unwrap();
        let exe = std::fs::metadata(std::env::current_exe().unwrap()).unwrap();
        assert_eq!((p.dev, p.ino), (exe.dev(), exe.ino()));
    }

    #[test]
    fn a_dead_process_pidfd_is_not_alive() {
        let mut c = std::process::Command::new("/bin/true").spawn().unwrap();
        let fd = pidfd_open(c.id()).unwrap();
        c.wait().unwrap();
        assert!(!alive(&fd));
        assert_eq!(pidfd_pid(&fd).unwrap(), None);
    }
}
