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

/// Writes `n` in decimal at the start of `buf` (no allocation: between fork and exec). The
/// callers' buffers keep a NUL after the longest number they can hold.
fn put_decimal(buf: &mut [u8], mut n: u32) {
    let mut digits = [0u8; 10];
    let mut d = 0;
    loop {
        digits[d] = b'0' + (n % 10) as u8;
        d += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for (slot, digit) in buf.iter_mut().zip(digits[..d].iter().rev()) {
        *slot = *digit;
    }
}

/// Binds the file `fd` (an `O_PATH` descriptor in the caller's mount namespace) onto
/// `target`, through `/proc/self/fd/N` (the node's procfs: before the task's replaces it).
/// Between fork and exec: the path is built on the stack.
///
/// SAFETY (callers): `target` is a NUL-terminated path.
unsafe fn bind_fd(fd: libc::c_int, target: *const libc::c_char) -> Result<(), i32> {
    let mut src = *b"/proc/self/fd/\0\0\0\0\0\0\0\0\0\0\0\0";
    put_decimal(&mut src[14..], fd as u32);
    // SAFETY: both paths are NUL-terminated (src on the stack, target by the caller).
    check(unsafe {
        libc::mount(src.as_ptr().cast(), target, std::ptr::null(), libc::MS_BIND, std::ptr::null())
    })
}

/// What [`Boundary::mount_view`] leaves open: descriptors for the task's confinement and
/// the init.
#[derive(Debug, Clone, Copy)]
pub struct View {
    /// `O_PATH` of the task's procfs (Landlock rules naming the node's do not cover it).
    pub proc_fd: libc::c_int,
    pub terminals: TerminalView,
}

/// The task's devpts instance ([`Boundary::terminal_view`]).
#[derive(Debug, Clone, Copy)]
pub struct TerminalView {
    /// `O_PATH` of its root (`-1`: no `/dev/pts`): Landlock's walk leaves a bind mount at its
    /// root for the mount point's parent, so the task's ptys get a rule of their own
    /// ([`crate::sandbox::confine::Confinement::grant_ptys`]).
    pub pts_fd: libc::c_int,
    /// Placeholder pty masters the init keeps open for the task's life: each holds the entry
    /// a terminal the task already had is bound onto (`-1`: none).
    pub keep: [libc::c_int; 3],
}

impl TerminalView {
    /// Closes every descriptor (between fork and exec).
    fn close(&mut self) {
        for fd in std::iter::once(&mut self.pts_fd).chain(self.keep.iter_mut()) {
            if *fd >= 0 {
                // SAFETY: closing a descriptor this view owns.
                unsafe { libc::close(*fd) };
                *fd = -1;
            }
        }
    }
}

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
    /// program inside a writable grant still runs. On the fallback engine only the allowed
    /// programs a Landlock write rule covers ([`landlock_guards_writes`]): the others are
    /// guarded by Landlock, which refuses a write with a record, where the read-only mount
    /// refuses it first (`EROFS`) and unrecorded.
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
    /// `lsm`: the BPF LSM engine (no Landlock domain: every allowed program is bound
    /// read-only).
    pub fn new(mountinfo: &str, compiled: &CompiledScope, enforce: bool, lsm: bool) -> Self {
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
            plan.read_only = compiled
                .exec_paths
                .iter()
                .filter(|p| p.exists() && (lsm || !landlock_guards_writes(compiled, p)))
                .cloned()
                .collect();
            plan.exec_dirs =
                compiled.exec_dirs.iter().map(|d| d.path.clone()).filter(|p| p.exists()).collect();
        }
        plan
    }
}

/// Whether the fallback engine's Landlock domain refuses — and so records — every write to
/// `p`: no `files.write` root and no write rule of the domain covers it. Such a file needs no
/// read-only mount, which would refuse first and leave no record: the kernel checks a
/// mount's read-only flag when it opens a file for writing (`do_dentry_open`) and in
/// `truncate`, before the LSM hooks. A rename over `p` or its removal needs write rights on
/// its directory, which lies outside the write grants too (`p` itself is no directory rule).
/// Without `files.write` every path is writable and nothing is guarded.
pub fn landlock_guards_writes(compiled: &CompiledScope, p: &Path) -> bool {
    let Some(roots) = &compiled.protected.write_roots else { return false };
    !roots.iter().any(|r| p.starts_with(r)) && !compiled.landlock.write.iter().any(|w| p.starts_with(w))
}

/// Whether the fallback engine's Landlock domain refuses every write beneath `p`, by any
/// path: no write rule of the built plan covers it (rules hold by hierarchy, so one on `/`
/// would cover the task's own procfs too). False when no plan was built.
pub fn landlock_refuses_writes(compiled: &CompiledScope, p: &Path) -> bool {
    let built = !compiled.landlock.read.is_empty();
    built && !compiled.landlock.write.iter().any(|w| p.starts_with(w) || w.starts_with(p))
}

/// Whether some allowed program of a task on `lsm` (the BPF LSM engine) or the fallback is
/// bound read-only in its view ([`MountPlan::read_only`]): a write to it is refused with
/// `EROFS` before any hook, unrecorded (`task_start.unrecorded`, `write-allowed-programs`).
pub fn unrecorded_program_writes(compiled: &CompiledScope, lsm: bool) -> bool {
    compiled.exec.is_some() && compiled.exec_paths.iter().any(|p| lsm || !landlock_guards_writes(compiled, p))
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
    /// Bind the node's knobs in the task's procfs (`/proc/sys`, ...) read-only: always but
    /// on the fallback engine in enforce mode, where Landlock refuses every write under
    /// `/proc` (a protected control path) and records it — the read-only mount would refuse
    /// first (`EROFS`), unrecorded.
    proc_read_only: bool,
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
    /// scope's mounts (read-only executables, `noexec` write roots); `lsm`: the BPF LSM engine
    /// ([`MountPlan::new`]).
    pub fn prepare(
        compiled: &CompiledScope,
        sandbox_dir: &Path,
        enforce: bool,
        lsm: bool,
    ) -> Result<Self, BoundaryError> {
        let mi = Path::new("/proc/self/mountinfo");
        let text = std::fs::read_to_string(mi)
            .map_err(|source| BoundaryError::Read { path: mi.to_path_buf(), source })?;
        let plan = MountPlan::new(&text, compiled, enforce, lsm);
        let all = |v: &[PathBuf]| v.iter().map(|p| c_path(p)).collect::<Result<Vec<_>, _>>();
        Ok(Boundary {
            sandbox_dir: c_path(sandbox_dir)?,
            cgroup2: all(&plan.cgroup2)?,
            cgroup1: all(&plan.cgroup1)?,
            noexec: all(&plan.noexec)?,
            read_only: all(&plan.read_only)?,
            exec_dirs: all(&plan.exec_dirs)?,
            proc_read_only: lsm || !enforce || !landlock_refuses_writes(compiled, Path::new("/proc")),
            caps: compiled.scope.capabilities,
            user: compiled.scope.user,
        })
    }

    /// In the namespace's init, in its new mount namespace (before the task's first process
    /// is forked): stop propagation to the node, mount a procfs of the new PID namespace, show
    /// only the sandbox's own cgroup, a devpts instance of the task's own, and apply the scope's
    /// mounts. Returns the [`View`]'s descriptors (`O_PATH` of the new `/proc` — rules naming
    /// the node's procfs do not cover it — and of the task's devpts, placeholders), or the
    /// errno of the first failing step.
    pub fn mount_view(&self) -> Result<View, i32> {
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
            // Before /proc is replaced (the node's procfs names the held terminals).
            let terminals = self.terminal_view()?;
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
            // procfs by identity do not cover this one) — by Landlock on the fallback engine,
            // with a record ([`Boundary::proc_read_only`]).
            let knobs: &[*const libc::c_char] = if self.proc_read_only {
                &[cs!("/proc/sys"), cs!("/proc/sysrq-trigger"), cs!("/proc/irq"), cs!("/proc/bus")]
            } else {
                &[]
            };
            for &p in knobs {
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
            Ok(View { proc_fd, terminals })
        }
    }

    /// Hides the node's terminals: `/dev/pts` of the node holds every pty on it — the user's
    /// terminal, other users' ssh sessions — and a task running as root could open any of them
    /// by path, read what is typed there and write into it. The task's `/dev/pts` is a devpts
    /// instance of its own instead (its `ptmx`, mode 0666, also bound over `/dev/ptmx`): ptys
    /// the task creates work as usual, by path too, and no other pty of the node is there.
    /// The ptys it already holds on its standard streams (its relayed pty, or the terminal
    /// `--no-tty` handed it) keep their path, so `tty` and `echo > $(tty)` work: each is bound
    /// onto the entry of the same number in the new instance, which a placeholder pty the
    /// init keeps open holds (pty numbers are handed out lowest first: the init opens ptys
    /// until it gets that number, then closes the ones below). Between fork and exec, in the
    /// new mount namespace: no allocation (paths and descriptors on the stack).
    fn terminal_view(&self) -> Result<TerminalView, i32> {
        const PTS: &[u8] = b"/dev/pts/";
        let mut view = TerminalView { pts_fd: -1, keep: [-1; 3] };
        // The held terminals' numbers (u32::MAX: none), from the node's procfs.
        let mut num = [u32::MAX; 3];
        let mut held = [-1; 3];
        // SAFETY: (this block) readlink/open/ioctl/mount on NUL-terminated stack buffers and
        // static strings; every descriptor opened here is closed or handed to the caller.
        unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            if libc::stat(cs!("/dev/pts"), &mut st) != 0 || st.st_mode & libc::S_IFMT != libc::S_IFDIR {
                return Ok(view); // a host without ptys
            }
            for fd in 0..3 {
                let mut buf = [0u8; 32];
                let mut link = *b"/proc/self/fd/0\0";
                link[14] = b'0' + fd as u8;
                let n = libc::readlink(link.as_ptr().cast(), buf.as_mut_ptr().cast(), buf.len() - 1);
                if n <= PTS.len() as isize || !buf.starts_with(PTS) {
                    continue;
                }
                let digits = &buf[PTS.len()..n as usize];
                if digits.len() > 6 || !digits.iter().all(u8::is_ascii_digit) {
                    continue;
                }
                let nr = digits.iter().fold(0u32, |a, d| a * 10 + u32::from(d - b'0'));
                if num[..fd].contains(&nr) {
                    continue; // the same terminal on another stream
                }
                // The same file in this namespace's copy of the node's devpts (a bind source
                // must be in the caller's mount namespace).
                let f = libc::open(buf.as_ptr().cast(), libc::O_PATH | libc::O_CLOEXEC);
                if f >= 0 {
                    num[fd] = nr;
                    held[fd] = f;
                }
            }
            let r = self.own_devpts(&num, &held, &mut view);
            for f in held {
                if f >= 0 {
                    libc::close(f);
                }
            }
            if let Err(e) = r {
                view.close();
                return Err(e);
            }
        }
        Ok(view)
    }

    /// [`Self::terminal_view`]'s mounts and placeholders.
    fn own_devpts(
        &self,
        num: &[u32; 3],
        held: &[libc::c_int; 3],
        view: &mut TerminalView,
    ) -> Result<(), i32> {
        /// Placeholders are found for numbers below this (above it, that terminal has no
        /// path in the task's view: `tty` says "not a tty").
        const MAX_PLACEHOLDER: usize = 1024;
        // SAFETY: mount/open/ioctl/close with NUL-terminated static strings and stack buffers.
        unsafe {
            check(libc::mount(
                cs!("devpts"),
                cs!("/dev/pts"),
                cs!("devpts"),
                libc::MS_NOSUID | libc::MS_NOEXEC,
                cs!("newinstance,ptmxmode=0666,mode=0620").cast(),
            ))?;
            view.pts_fd = libc::open(cs!("/dev/pts"), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC);
            if view.pts_fd < 0 {
                return Err(errno());
            }
            let mut st: libc::stat = std::mem::zeroed();
            if libc::lstat(cs!("/dev/ptmx"), &mut st) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFCHR {
                check(libc::mount(
                    cs!("/dev/pts/ptmx"),
                    cs!("/dev/ptmx"),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ))?;
            }
            for i in 0..3 {
                let want = num[i];
                if want == u32::MAX || want as usize >= MAX_PLACEHOLDER {
                    continue;
                }
                let mut below = [-1; MAX_PLACEHOLDER];
                let mut got = -1;
                for slot in below.iter_mut() {
                    let m = libc::open(cs!("/dev/pts/ptmx"), libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
                    if m < 0 {
                        break;
                    }
                    let mut n: libc::c_uint = 0;
                    if libc::ioctl(m, libc::TIOCGPTN, &mut n) != 0 || n > want {
                        libc::close(m);
                        break;
                    }
                    if n == want {
                        got = m;
                        break;
                    }
                    *slot = m;
                }
                for m in below {
                    if m >= 0 {
                        libc::close(m);
                    }
                }
                if got < 0 {
                    continue;
                }
                view.keep[i] = got;
                let mut target = *b"/dev/pts/\0\0\0\0\0\0\0\0";
                put_decimal(&mut target[9..], want);
                bind_fd(held[i], target.as_ptr().cast())?;
            }
        }
        Ok(())
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
        let plan = MountPlan::new(MOUNTINFO, &c, true, true);
        assert_eq!(plan.cgroup2, [PathBuf::from("/sys/fs/cgroup/unified"), PathBuf::from("/mnt/other cg")]);
        assert_eq!(plan.cgroup1, [PathBuf::from("/sys/fs/cgroup/pids")]);
        assert!(plan.noexec.is_empty() && plan.read_only.is_empty(), "nothing restricted, nothing mounted");
    }

    #[test]
    fn allowed_programs_are_read_only_and_write_roots_noexec_in_enforce_mode() {
        let d = tempfile::tempdir().unwrap();
        let w = std::fs::canonicalize(d.path()).unwrap();
        let c = compiled(&format!(
            "version: 1\ntask: t\ngrant: [system]\nexec:\n  allow: [/bin/sh]\nfiles:\n  write: [{}, /usr, /dev/null]\n",
            w.display()
        ));
        let plan = MountPlan::new(MOUNTINFO, &c, true, true);
        assert_eq!(
            plan.noexec,
            std::slice::from_ref(&w),
            "not /usr (it holds every program's libraries), not /dev"
        );
        let any_exec = compiled(&format!("version: 1\ntask: t\nfiles:\n  write: [{}]\n", w.display()));
        assert!(
            MountPlan::new(MOUNTINFO, &any_exec, true, false).noexec.is_empty(),
            "without exec.allow, what the task builds may run"
        );
        let sh = std::fs::canonicalize("/bin/sh").unwrap();
        assert!(plan.read_only.contains(&sh), "{:?}", plan.read_only);
        assert!(
            plan.read_only.iter().any(|p| p.to_string_lossy().contains("ld-linux")),
            "the loader of an allowed program is protected too: {:?}",
            plan.read_only
        );
        let audit = MountPlan::new(MOUNTINFO, &c, false, false);
        assert!(audit.noexec.is_empty() && audit.read_only.is_empty(), "audit mode refuses nothing");
    }

    #[test]
    fn on_the_fallback_only_programs_in_write_grants_are_bound_read_only() {
        let d = tempfile::tempdir().unwrap();
        let w = std::fs::canonicalize(d.path()).unwrap();
        let tool = w.join("tool");
        std::fs::copy("/usr/bin/true", &tool).unwrap();
        let c = compiled(&format!(
            "version: 1\ntask: t\nexec:\n  allow: [/bin/sh, {}]\nfiles:\n  write: [{}]\n",
            tool.display(),
            w.display()
        ));
        let sh = std::fs::canonicalize("/bin/sh").unwrap();
        assert!(landlock_guards_writes(&c, &sh) && !landlock_guards_writes(&c, &tool));
        let fallback = MountPlan::new(MOUNTINFO, &c, true, false);
        assert_eq!(
            fallback.read_only,
            std::slice::from_ref(&tool),
            "Landlock refuses (and records) writes to /bin/sh and its loader; only the program in \
             the write root needs the mount"
        );
        assert_eq!(fallback.noexec, std::slice::from_ref(&w));
        let lsm = MountPlan::new(MOUNTINFO, &c, true, true);
        assert!(lsm.read_only.contains(&sh) && lsm.read_only.contains(&tool), "{:?}", lsm.read_only);
        assert!(unrecorded_program_writes(&c, false) && unrecorded_program_writes(&c, true));
        let outside = compiled(&format!(
            "version: 1\ntask: t\nexec:\n  allow: [/bin/sh]\nfiles:\n  write: [{}]\n",
            w.display()
        ));
        assert!(!unrecorded_program_writes(&outside, false), "every write to /bin/sh is Landlock's");
        let proc = Path::new("/proc");
        assert!(landlock_refuses_writes(&c, proc), "/proc is a protected control path");
        let anywhere = compiled("version: 1\ntask: t\nexec:\n  allow: [/bin/sh]\n");
        assert!(landlock_refuses_writes(&anywhere, proc), "also when files.write is unrestricted");
        let mut unbuilt = anywhere.clone();
        unbuilt.landlock = Default::default();
        assert!(!landlock_refuses_writes(&unbuilt, proc), "no plan, no guard");
        assert!(!landlock_guards_writes(&anywhere, &sh), "files.write unrestricted: nothing is guarded");
        assert!(MountPlan::new(MOUNTINFO, &anywhere, true, false).read_only.contains(&sh));
    }
}

#[cfg(test)]
mod decimal_tests {
    #[test]
    fn put_decimal_writes_the_number_and_leaves_the_nul() {
        let mut b = *b"/dev/pts/\0\0\0\0\0\0\0\0";
        super::put_decimal(&mut b[9..], 1023);
        assert_eq!(&b[..14], b"/dev/pts/1023\0");
        let mut f = *b"/proc/self/fd/\0\0\0\0\0\0\0\0\0\0\0\0";
        super::put_decimal(&mut f[14..], u32::MAX);
        assert_eq!(&f[..25], b"/proc/self/fd/4294967295\0");
        let mut z = [0u8; 3];
        super::put_decimal(&mut z, 0);
        assert_eq!(z, *b"0\0\0");
    }
}
