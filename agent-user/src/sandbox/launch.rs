//! Starting a command inside a sandbox, behind the task's process boundary, before its first
//! instruction. `warden run` and `warden task exec` both start tasks here (through
//! `lifecycle::launch::spawn`).
//!
//! Three processes, all made between fork and exec (raw syscalls on memory prepared before
//! the fork; no allocation, no locks):
//!
//! ```text
//! caller (warden run / task exec)
//!  └─ helper   its own session (no terminal shared with the user); new PID and mount
//!     │        namespaces for its children; dies with the caller (PR_SET_PDEATHSIG) when
//!     │        the caller enforces alone; waits for the init and exits with it
//!     └─ init  PID 1 of the task's PID namespace, not dumpable, dies with the helper (and
//!        │     the kernel kills the whole namespace with it); mounts the task's view
//!        │     (procfs of the namespace, only the sandbox's cgroup, the scope's mounts);
//!        │     forwards signals to CMD, reaps orphans, reports CMD's exit status on a pipe
//!        │     and exits when nothing is left
//!        └─ CMD joins the sandbox cgroup, enters its cgroup namespace, own session (its
//!               own pty as controlling terminal, when Warden relays one: `tty.rs`) and
//!               keyring, no_new_privs, granted capabilities only, the scope's confinement
//!               (Landlock, seccomp); then exec — its first instruction runs inside
//! ```
//!
//! The helper and the init stay outside the sandbox cgroup: they are never judged, recorded or
//! counted as the task's processes, and the task cannot see them (the helper is outside its
//! PID namespace; the init is not dumpable and Landlock scopes signals and ptrace).
use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::{ffi::OsStrExt, process::ExitStatusExt},
    },
    path::PathBuf,
    process::ExitStatus,
};

use tokio::process::{Child, Command};

use super::{boundary::Boundary, confine::Confinement};

/// Signals the init passes on to CMD (a shell or tool in the task behaves as usual).
const FORWARDED: &[libc::c_int] =
    &[libc::SIGHUP, libc::SIGINT, libc::SIGQUIT, libc::SIGTERM, libc::SIGUSR1, libc::SIGUSR2, libc::SIGWINCH];

/// What a task's first process is started with.
pub struct Start {
    /// `cgroup.procs` files to join (the sandbox, and a v1 pids twin where needed).
    pub procs_files: Vec<PathBuf>,
    /// The scope's confinement (enforce mode).
    pub confine: Option<Confinement>,
    /// The process boundary.
    pub boundary: Boundary,
    /// Kill the task when the caller dies: set when the caller is the only enforcer
    /// (`warden run`); a daemon task's enforcement outlives its launcher.
    pub die_with_caller: bool,
    /// CMD's stdin is the task's own pty (`tty.rs`): it becomes the controlling terminal of
    /// CMD's session.
    pub ctty: bool,
}

/// A task's first process, started.
pub struct Started {
    /// The helper (the caller's direct child).
    pub child: Child,
    status: tokio::net::unix::pipe::Receiver,
    buf: [u8; 4],
    got: usize,
    main: Option<ExitStatus>,
}

impl Started {
    /// The helper's pid (in the caller's PID namespace).
    pub fn id(&self) -> Option<u32> {
        self.child.id()
    }

    /// CMD's exit status, once it has exited (processes it left behind may still run).
    /// Cancel-safe: a `select!` may drop it and call again.
    pub async fn main_exit(&mut self) -> io::Result<ExitStatus> {
        if let Some(s) = self.main {
            return Ok(s);
        }
        while self.got < 4 {
            self.status.readable().await?;
            match self.status.try_read(&mut self.buf[self.got..]) {
                Ok(0) => {
                    // The init ended without a status (killed, or CMD never started): the
                    // helper's exit tells how.
                    let s = self.child.wait().await?;
                    self.main = Some(s);
                    return Ok(s);
                }
                Ok(n) => self.got += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        let s = ExitStatus::from_raw(i32::from_ne_bytes(self.buf));
        self.main = Some(s);
        Ok(s)
    }

    /// After the sandbox is empty: ends the helper (and with it the PID namespace) and reaps it.
    pub async fn finish(&mut self) -> io::Result<()> {
        let _ = self.child.start_kill();
        self.child.wait().await.map(drop)
    }
}

fn last_err() -> io::Error {
    io::Error::last_os_error()
}

/// Closes every fd from `first` on except `keep` (`-1`: none).
///
/// SAFETY (callers): only between fork and exec, in a process that no longer needs them.
unsafe fn close_all_but(first: u32, keep: libc::c_int) {
    // SAFETY: close_range(2) on our own descriptor table.
    unsafe {
        if keep >= first as libc::c_int {
            if keep > first as libc::c_int {
                libc::syscall(libc::SYS_close_range, first, (keep - 1) as u32, 0u32);
            }
            libc::syscall(libc::SYS_close_range, (keep + 1) as u32, u32::MAX, 0u32);
        } else {
            libc::syscall(libc::SYS_close_range, first, u32::MAX, 0u32);
        }
    }
}

/// Closes every fd but those in `keep` (`-1`: an unused slot).
///
/// SAFETY (callers): only between fork and exec, or in the init, in a process that no longer
/// needs them.
unsafe fn close_all_except(mut keep: [libc::c_int; 4]) {
    keep.sort_unstable();
    let mut from: u32 = 0;
    for k in keep {
        if k < 0 {
            continue;
        }
        if k as u32 > from {
            // SAFETY: close_range(2) on our own descriptor table.
            unsafe { libc::syscall(libc::SYS_close_range, from, k as u32 - 1, 0u32) };
        }
        from = k as u32 + 1;
    }
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_close_range, from, u32::MAX, 0u32) };
}

/// The helper: waits for the init and exits as it did.
///
/// SAFETY (callers): only in the forked helper; never returns.
unsafe fn helper_wait(init: libc::pid_t) -> ! {
    // SAFETY: async-signal-safe calls on our own process.
    unsafe {
        close_all_but(0, -1);
        loop {
            let mut st = 0;
            let r = libc::waitpid(init, &mut st, 0);
            if r == init {
                let code = if libc::WIFEXITED(st) { libc::WEXITSTATUS(st) } else { 128 + libc::WTERMSIG(st) };
                libc::_exit(code);
            }
            if r < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                libc::_exit(1);
            }
        }
    }
}

/// The init: forwards signals to `main`, reaps every child, reports `main`'s wait status on
/// `status_fd`, exits when it has no child left. `keep`: the placeholder ptys of the task's
/// terminal view (`boundary.rs`), held open as long as the task lives.
///
/// SAFETY (callers): only in the forked init, with `set` blocked; never returns.
unsafe fn init_loop(
    main: libc::pid_t,
    status_fd: libc::c_int,
    keep: [libc::c_int; 3],
    set: &libc::sigset_t,
) -> ! {
    // SAFETY: async-signal-safe calls; `set` and the locals outlive each call.
    unsafe {
        close_all_except([status_fd, keep[0], keep[1], keep[2]]);
        let mut main_alive = true;
        loop {
            let sig = libc::sigwaitinfo(set, std::ptr::null_mut());
            if sig < 0 {
                continue;
            }
            if sig != libc::SIGCHLD {
                if main_alive {
                    libc::kill(main, sig);
                }
                continue;
            }
            loop {
                let mut st: libc::c_int = 0;
                let r = libc::waitpid(-1, &mut st, libc::WNOHANG);
                if r > 0 {
                    if r == main && main_alive {
                        main_alive = false;
                        libc::write(status_fd, (&st as *const libc::c_int).cast(), 4);
                        libc::close(status_fd);
                    }
                    continue;
                }
                if r < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD) {
                    libc::_exit(0);
                }
                break;
            }
        }
    }
}

/// Starts `cmd` as a task's first process (see the module doc). Returns when CMD has been
/// exec'd, or with the error that stopped it (nothing of it keeps running then).
pub fn spawn_in_sandbox(mut cmd: Command, start: Start) -> io::Result<Started> {
    let paths = start
        .procs_files
        .iter()
        .map(|p| CString::new(p.as_os_str().as_bytes()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in cgroup path"))?;
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(last_err());
    }
    // SAFETY: both fds were just created and are owned here.
    let (rx, tx) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let tx_raw = tx.as_raw_fd();
    let caller = std::process::id() as libc::pid_t;
    let Start { mut confine, boundary, die_with_caller, ctty, .. } = start;
    let mut procs_fds = vec![-1; paths.len()];
    // SAFETY: the closure runs between fork and exec. It makes raw syscalls on memory
    // prepared before the fork (paths, fd slots, the boundary's strings, the Landlock ruleset
    // fd, the seccomp program) and never allocates. The helper and the init never return
    // from it (they `_exit`); only CMD's process goes on to exec.
    unsafe {
        cmd.pre_exec(move || {
            // --- helper ---
            if die_with_caller {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
                if libc::getppid() != caller {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
            }
            if libc::setsid() < 0 {
                return Err(last_err());
            }
            if libc::unshare(libc::CLONE_NEWPID | libc::CLONE_NEWNS) != 0 {
                return Err(last_err());
            }
            let init = libc::fork();
            if init < 0 {
                return Err(last_err());
            }
            if init > 0 {
                helper_wait(init);
            }
            // --- init (PID 1 of the task's namespace) ---
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
            // Open every cgroup.procs before the view hides them (and before joining any:
            // once inside, control files are out of reach).
            let mut opened = Ok(());
            for (slot, path) in procs_fds.iter_mut().zip(&paths) {
                *slot = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if *slot < 0 {
                    opened = Err(last_err());
                    break;
                }
            }
            let view = opened.and_then(|()| boundary.mount_view().map_err(io::Error::from_raw_os_error));
            let (proc_fd, pts_fd, keep) = match &view {
                Ok(v) => (v.proc_fd, v.terminals.pts_fd, v.terminals.keep),
                Err(_) => (-1, -1, [-1; 3]),
            };
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGCHLD);
            for s in FORWARDED {
                libc::sigaddset(&mut set, *s);
            }
            libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            let main = libc::fork();
            if main < 0 {
                libc::_exit(127);
            }
            if main > 0 {
                init_loop(main, tx_raw, keep, &set);
            }
            // --- CMD ---
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            libc::close(tx_raw);
            view?;
            // The placeholders are the init's (close-on-exec: gone at exec anyway).
            for fd in keep {
                if fd >= 0 {
                    libc::close(fd);
                }
            }
            for fd in &procs_fds {
                // "0" means the writing process itself.
                let n = libc::write(*fd, b"0".as_ptr().cast(), 1);
                let err = last_err();
                libc::close(*fd);
                if n != 1 {
                    return Err(err);
                }
            }
            boundary.enter_task(ctty).map_err(io::Error::from_raw_os_error)?;
            if let Some(c) = confine.as_mut() {
                c.grant_read(proc_fd)?;
                libc::close(proc_fd);
                if pts_fd >= 0 {
                    c.grant_ptys(pts_fd)?;
                    libc::close(pts_fd);
                }
                c.apply()?;
            }
            // Only stdin, stdout and stderr cross into the task. Every other descriptor the
            // caller had open without close-on-exec (a shell's redirections, a harness's files,
            // sockets, the user's terminal under another number) would reach past the
            // confinement: an open descriptor is not judged again. Close-on-exec rather than
            // closed, so what this process still needs until exec (the exec-error pipe) stays.
            if libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) != 0 {
                return Err(last_err());
            }
            Ok(())
        });
    }
    cmd.kill_on_drop(die_with_caller);
    let child = cmd.spawn()?;
    drop(tx);
    let status = tokio::net::unix::pipe::Receiver::from_owned_fd(rx)?;
    Ok(Started { child, status, buf: [0; 4], got: 0, main: None })
}
