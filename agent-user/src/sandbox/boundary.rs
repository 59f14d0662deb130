//! The process boundary around a task: its own PID, mount and cgroup namespaces, its own
//! session and session keyring, no capabilities unless the scope grants them, `no_new_privs`,
//! optionally another uid/gid, and — in enforce mode — allowed executables read-only and
//! writable grants `noexec` in the task's mount namespace.
//!
//! [`Boundary::prepare`] runs in the parent and builds everything (C strings, bit masks); the
//! steps ([`Boundary::mount_view`], [`Boundary::enter_task`]) run between fork and exec and
//! make raw syscalls only: no allocation, no locks (see `launch.rs` for who runs which).
use std::{
    ffi::CString,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use crate::scope::compile::CompiledScope;

/// Errors preparing the boundary.
#[derive(Debug, thiserror::Error)]
pub enum BoundaryError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("path {0} contains a NUL byte")]
    Nul(PathBuf),
}

/// The last capability number this build knows (`CAP_CHECKPOINT_RESTORE`); the kernel's own
/// last one is found at run time (`PR_CAPBSET_DROP` answers EINVAL past it).
const CAP_SCAN_LIMIT: u32 = 63;

/// `_LINUX_CAPABILITY_VERSION_3`.
const CAP_V3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// `KEYCTL_JOIN_SESSION_KEYRING`.
const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;

/// Which mount covers which path in the task's mount namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountPlan {
    /// cgroup2 mount points: the sandbox's own cgroup directory is bound over each.
    pub cgroup2: Vec<PathBuf>,
    /// cgroup v1 mount points: covered by an empty read-only tmpfs.
    pub cgroup1: Vec<PathBuf>,
    /// Bound onto themselves `noexec,nosuid,nodev` (enforce mode, when `exec.allow` restricts
    /// what runs: then nothing the task writes is mapped executable).
    pub noexec: Vec<PathBuf>,
    /// Bound onto themselves read-only (enforce mode), after the `noexec` ones, so an allowed
    /// program inside a writable grant still runs.
    pub read_only: Vec<PathBuf>,
    /// `exec.allow` directories, bound onto themselves `nosuid,nodev` after the `noexec`
    /// write roots: what the task builds there may run (and be mapped executable) even when
    /// the directory lies in a write root.
    pub exec_dirs: Vec<PathBuf>,
}

/// Directories that hold the system's programs and libraries: a writable grant that contains
/// one is not mounted `noexec` (every program would stop loading its libraries).
const SYSTEM_DIRS: &[&str] = &["/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc", "/opt"];

impl MountPlan {
    /// The plan for a sandbox: every cgroup mount in `mountinfo` (text of
    /// `/proc/self/mountinfo`), and, when `enforce`, the scope's executables and write roots.
    pub fn new(mountinfo: &str, compiled: &CompiledScope, enforce: bool) -> Self {
        let mut plan = MountPlan {
            cgroup2: vec![],
            cgroup1: vec![],
            noexec: vec![],
            read_only: vec![],
            exec_dirs: vec![],
        };
        for m in crate::util::mountinfo::mounts(mountinfo) {
            match m.fstype {
                "cgroup2" => plan.cgroup2.push(PathBuf::from(m.mount_point)),
                "cgroup" => plan.cgroup1.push(PathBuf::from(m.mount_point)),
                _ => {}
            }
        }
        // Without `exec.allow` every program may run, so nothing is refused as a mapping.
        if enforce && compiled.exec.is_some() {
            plan.noexec = compiled
                .write_roots
                .iter()
                .filter(|p| {
                    p.as_path() != Path::new("/")
                        && !SYSTEM_DIRS.iter().any(|s| Path::new(s).starts_with(p))
                        && !p.starts_with("/dev")
                })
                .cloned()
                .collect();
            plan.read_only = compiled.exec_paths.iter().filter(|p| p.exists()).cloned().collect();
            plan.exec_dirs =
                compiled.exec_dirs.iter().map(|d| d.path.clone()).filter(|p| p.exists()).collect();
        }
        plan
    }
}

/// Everything the boundary needs between fork and exec, prepared in the parent.
pub struct Boundary {
    /// The sandbox's cgroup directory (bound over every cgroup2 mount point).
    sandbox_dir: CString,
    cgroup2: Vec<CString>,
    cgroup1: Vec<CString>,
    noexec: Vec<CString>,
    read_only: Vec<CString>,
    exec_dirs: Vec<CString>,
    /// Capabilities kept (bit `1 << nr`).
    caps: u64,
    user: Option<(u32, u32)>,
}

fn c_path(p: &Path) -> Result<CString, BoundaryError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| BoundaryError::Nul(p.to_path_buf()))
}

/// A static C string.
macro_rules! cs {
    ($s:literal) => {
        concat!($s, "\0").as_ptr().cast::<libc::c_char>()
    };
}

fn check(r: libc::c_int) -> Result<(), i32> {
    if r == 0 { Ok(()) } else { Err(errno()) }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)
}

impl Boundary {
    /// Prepares the boundary of a task whose cgroup is `sandbox_dir`. `enforce` adds the
    /// scope's mounts (read-only executables, `noexec` write roots).
    pub fn prepare(
        compiled: &CompiledScope,
        sandbox_dir: &Path,
        enforce: bool,
    ) -> Result<Self, BoundaryError> {
        let mi = Path::new("/proc/self/mountinfo");
        let text = std::fs::read_to_string(mi)
            .map_err(|source| BoundaryError::Read { path: mi.to_path_buf(), source })?;
        let plan = MountPlan::new(&text, compiled, enforce);
        let all = |v: &[PathBuf]| v.iter().map(|p| c_path(p)).collect::<Result<Vec<_>, _>>();
        Ok(Boundary {
            sandbox_dir: c_path(sandbox_dir)?,
            cgroup2: all(&plan.cgroup2)?,
            cgroup1: all(&plan.cgroup1)?,
            noexec: all(&plan.noexec)?,
            read_only: all(&plan.read_only)?,
            exec_dirs: all(&plan.exec_dirs)?,
            caps: compiled.scope.capabilities,
            user: compiled.scope.user,
        })
    }

    /// In the namespace's init, in its new mount namespace (before the task's first process
    /// is forked): stop propagation to the node, mount a procfs of the new PID namespace, show
    /// only the sandbox's own cgroup, and apply the scope's mounts. Returns an `O_PATH`
    /// descriptor of the new `/proc` (rules naming the node's procfs do not cover it), or the
    /// errno of the first failing step.
    pub fn mount_view(&self) -> Result<libc::c_int, i32> {
        // SAFETY: (this block and every one below) mount(2)/umount2(2) with NUL-terminated strings that
        // live in `self` or are static; no memory is written.
        unsafe {
            check(libc::mount(
                std::ptr::null(),
                cs!("/"),
                std::ptr::null(),
                libc::MS_REC | libc::MS_SLAVE,
                std::ptr::null(),
            ))?;
            // The node's procfs shows every process of the node: replace it with one of the
            // task's PID namespace.
            libc::umount2(cs!("/proc"), libc::MNT_DETACH);
            check(libc::mount(
                cs!("proc"),
                cs!("/proc"),
                cs!("proc"),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                std::ptr::null(),
            ))?;
            // The node's knobs in the new procfs stay read-only (rules that name the node's
            // procfs by identity do not cover this one).
            for p in [cs!("/proc/sys"), cs!("/proc/sysrq-trigger"), cs!("/proc/irq"), cs!("/proc/bus")] {
                if libc::mount(p, p, std::ptr::null(), libc::MS_BIND, std::ptr::null()) == 0 {
                    check(libc::mount(
                        std::ptr::null(),
                        p,
                        std::ptr::null(),
                        libc::MS_REMOUNT
                            | libc::MS_BIND
                            | libc::MS_RDONLY
                            | libc::MS_NOSUID
                            | libc::MS_NODEV
                            | libc::MS_NOEXEC,
                        std::ptr::null(),
                    ))?;
                }
            }
            for mp in &self.cgroup2 {
                check(libc::mount(
                    self.sandbox_dir.as_ptr(),
                    mp.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ))?;
            }
            for mp in &self.cgroup1 {
                check(libc::mount(
                    cs!("none"),
                    mp.as_ptr(),
                    cs!("tmpfs"),
                    libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    cs!("size=4k,mode=555").cast(),
                ))?;
            }
            for p in &self.noexec {
                self.bind_self(p, libc::MS_NOEXEC | libc::MS_NOSUID | libc::MS_NODEV)?;
            }
            for p in &self.exec_dirs {
                self.bind_self(p, libc::MS_NOSUID | libc::MS_NODEV)?;
            }
            for p in &self.read_only {
                self.bind_self(p, libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV)?;
            }
            let proc_fd = libc::open(cs!("/proc"), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC);
            if proc_fd < 0 {
                return Err(errno());
            }
            Ok(proc_fd)
        }
    }

    /// Binds `p` onto itself and sets exactly `flags` on the new mount.
    fn bind_self(&self, p: &CString, flags: libc::c_ulong) -> Result<(), i32> {
        // SAFETY: mount(2) with NUL-terminated strings owned by `self`.
        unsafe {
            check(libc::mount(p.as_ptr(), p.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null()))?;
            check(libc::mount(
                std::ptr::null(),
                p.as_ptr(),
                std::ptr::null(),
                libc::MS_REMOUNT | libc::MS_BIND | flags,
                std::ptr::null(),
            ))
        }
    }

    /// In the task's first process, after it joined the sandbox cgroup and before the scope's
    /// confinement: its own cgroup namespace (rooted at the sandbox), its own session (with
    /// the terminal on fd 0 as its controlling terminal when `ctty`: the task's own pty, see
    /// `tty.rs`) and session keyring, `no_new_privs`, and only the granted capabilities (as
    /// `user` when the scope names one). Returns the errno of the first failing step.
    pub fn enter_task(&self, ctty: bool) -> Result<(), i32> {
        // SAFETY: (this block and every one below) plain syscalls with integer arguments or pointers to
        // locals that outlive the call.
        unsafe {
            check(libc::unshare(libc::CLONE_NEWCGROUP))?;
            if libc::setsid() < 0 {
                return Err(errno());
            }
            // A terminal that is no session's controlling terminal needs no capability.
            if ctty {
                check(libc::ioctl(0, libc::TIOCSCTTY, 0))?;
            }
            if libc::syscall(libc::SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, 0usize) < 0 {
                return Err(errno());
            }
            check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
            for cap in 0..=CAP_SCAN_LIMIT {
                if self.caps & (1u64 << cap) != 0 {
                    continue;
                }
                if libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) != 0 {
                    if errno() == libc::EINVAL {
                        break; // past the kernel's last capability
                    }
                    return Err(errno());
                }
            }
            check(libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
                0,
                0,
                0,
            ))?;
            if let Some((uid, gid)) = self.user {
                check(libc::setgroups(0, std::ptr::null()))?;
                check(libc::setresgid(gid, gid, gid))?;
                check(libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0))?;
                check(libc::setresuid(uid, uid, uid))?;
            }
            let lo = self.caps as u32;
            let hi = (self.caps >> 32) as u32;
            let mut hdr = CapHeader { version: CAP_V3, pid: 0 };
            let data = [
                CapData { effective: lo, permitted: lo, inheritable: lo },
                CapData { effective: hi, permitted: hi, inheritable: hi },
            ];
            if libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr()) != 0 {
                return Err(errno());
            }
            if self.user.is_some() {
                // A non-root uid keeps granted capabilities across exec only as ambient ones.
                for cap in 0..=CAP_SCAN_LIMIT {
                    if self.caps & (1u64 << cap) != 0 {
                        check(libc::prctl(
                            libc::PR_CAP_AMBIENT,
                            libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                            cap as libc::c_ulong,
                            0,
                            0,
                        ))?;
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope::{Scope, compile::CompiledScope};

    const MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
42 23 0:39 / /mnt/other\\040cg rw,relatime - cgroup2 cgroup2 rw
";

    fn compiled(text: &str) -> CompiledScope {
        CompiledScope::compile(&Scope::parse(text, Path::new("s.yaml")).unwrap()).unwrap()
    }

    #[test]
    fn every_cgroup_mount_is_covered() {
        let c = compiled("version: 1\ntask: t\n");
        let plan = MountPlan::new(MOUNTINFO, &c, true);
        assert_eq!(plan.cgroup2, [PathBuf::from("/sys/fs/cgroup/unified"), PathBuf::from("/mnt/other cg")]);
        assert_eq!(plan.cgroup1, [PathBuf::from("/sys/fs/cgroup/pids")]);
        assert!(plan.noexec.is_empty() && plan.read_only.is_empty(), "nothing restricted, nothing mounted");
    }

    #[test]
    fn allowed_programs_are_read_only_and_write_roots_noexec_in_enforce_mode() {
        let d = tempfile::tempdir().unwrap();
        let w = std::fs::canonicalize(d.path()).unwrap();
        let c = compiled(&format!(
            "version: 1\ntask: t\nexec:\n  allow: [/bin/sh]\nfiles:\n  write: [{}, /usr, /dev/null]\n",
            w.display()
        ));
        let plan = MountPlan::new(MOUNTINFO, &c, true);
        assert_eq!(
            plan.noexec,
            std::slice::from_ref(&w),
            "not /usr (it holds every program's libraries), not /dev"
        );
        let any_exec = compiled(&format!("version: 1\ntask: t\nfiles:\n  write: [{}]\n", w.display()));
        assert!(
            MountPlan::new(MOUNTINFO, &any_exec, true).noexec.is_empty(),
            "without exec.allow, what the task builds may run"
        );
        let sh = std::fs::canonicalize("/bin/sh").unwrap();
        assert!(plan.read_only.contains(&sh), "{:?}", plan.read_only);
        assert!(
            plan.read_only.iter().any(|p| p.to_string_lossy().contains("ld-linux")),
            "the loader of an allowed program is protected too: {:?}",
            plan.read_only
        );
        let audit = MountPlan::new(MOUNTINFO, &c, false);
        assert!(audit.noexec.is_empty() && audit.read_only.is_empty(), "audit mode refuses nothing");
    }
}
