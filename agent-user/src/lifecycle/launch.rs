//! Launch-time hooks: what every process Warden starts in a task gets before its first
//! instruction. Steps add to [`Launch`] as they start; [`spawn`] applies it, for the first
//! process of `warden run` and for `warden task exec` (which gets it from the daemon in
//! `TaskInfo`), behind the task's process boundary (`sandbox::boundary`).
use std::{os::fd::AsRawFd, path::PathBuf};

use serde::{Deserialize, Serialize};

use crate::{
    loader::Engine,
    sandbox::{
        boundary::{Boundary, BoundaryError},
        confine::{ConfineError, Confinement},
        launch::{Start, Started, spawn_in_sandbox},
        tty::Pty,
    },
    scope::{Mode, compile::CompiledScope},
};

/// What a process started in the task gets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Launch {
    /// `cgroup.procs` files it joins between fork and exec (the sandbox, a v1 pids twin).
    pub procs_files: Vec<PathBuf>,
    /// Environment variables it gets (name, value), e.g. the paths of issued secrets.
    #[serde(default)]
    pub env: Vec<(String, String)>,
}

/// Errors preparing a launch.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("preparing the task's confinement: {0}")]
    Confine(#[from] ConfineError),
    #[error("preparing the task's process boundary: {0}")]
    Boundary(#[from] BoundaryError),
    #[error("giving the task its terminal: {0}")]
    Terminal(std::io::Error),
    #[error("the task has no sandbox cgroup to start in")]
    NoSandbox,
    #[error("reading the task's scope: {0}")]
    Scope(String),
    /// Starting the command failed (exec, or a step of the boundary in the new process).
    #[error("{0}")]
    Spawn(std::io::Error),
}

/// Starts `cmd` in the task: behind the task's process boundary (its own PID, mount and
/// cgroup namespaces, session and keyring, no capabilities unless granted), it joins the
/// task's cgroups before its first instruction, gets the task's environment, and in enforce
/// mode carries the confinement compiled from the scope (the fallback engine's Landlock domain
/// and seccomp filter; under BPF LSM only the seccomp filter for what no hook judges).
/// `die_with_caller`: the task is killed when the caller dies (see
/// [`crate::sandbox::launch::Start`]). With `tty`, the command's terminal is that pty (its
/// controlling terminal; the caller relays it: [`crate::sandbox::tty`]).
pub fn spawn(
    launch: &Launch,
    scope: &CompiledScope,
    engine: Engine,
    cmd: &[String],
    die_with_caller: bool,
    tty: Option<&Pty>,
) -> Result<Started, LaunchError> {
    spawn_io(launch, scope, engine, cmd, die_with_caller, tty, None)
}

/// [`spawn`], with `stdio` (stdin, stdout, stderr) as the command's standard streams: the
/// caller's, passed to the daemon's call endpoint.
pub fn spawn_io(
    launch: &Launch,
    scope: &CompiledScope,
    engine: Engine,
    cmd: &[String],
    die_with_caller: bool,
    tty: Option<&Pty>,
    stdio: Option<[std::os::fd::OwnedFd; 3]>,
) -> Result<Started, LaunchError> {
    let enforce = scope.scope.mode == Mode::Enforce;
    let mut confine = if enforce { Some(Confinement::prepare(scope, engine.is_lsm())?) } else { None };
    // The first `cgroup.procs` is the sandbox's own (cgroup v2); a v1 pids twin may follow.
    let sandbox_dir = launch.procs_files.first().and_then(|p| p.parent()).ok_or(LaunchError::NoSandbox)?;
    let boundary = Boundary::prepare(scope, sandbox_dir, enforce, engine.is_lsm())?;
    let mut c = tokio::process::Command::new(&cmd[0]);
    c.args(&cmd[1..]);
    for (k, v) in &launch.env {
        c.env(k, v);
    }
    if let Some([i, o, e]) = stdio {
        c.stdin(i).stdout(o).stderr(e);
    }
    if let Some(pty) = tty {
        let [i, o, e] = pty.stdio().map_err(LaunchError::Terminal)?;
        c.stdin(i).stdout(o).stderr(e);
        if let Some(conf) = confine.as_mut() {
            conf.grant_terminal(pty.slave())?;
        }
        if let Some((uid, gid)) = scope.scope.user {
            // The task's terminal is its user's, as login(1) does it.
            // SAFETY: fchown(2) on the slave we hold.
            if unsafe { libc::fchown(pty.slave().as_raw_fd(), uid, gid) } != 0 {
                return Err(LaunchError::Terminal(std::io::Error::last_os_error()));
            }
        }
    }
    let start = Start {
        procs_files: launch.procs_files.clone(),
        confine,
        boundary,
        die_with_caller,
        ctty: tty.is_some(),
    };
    spawn_in_sandbox(c, start).map_err(LaunchError::Spawn)
}
