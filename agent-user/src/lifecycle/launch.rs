//! Launch-time hooks: what every process Warden starts in a task gets before its first
//! instruction. Steps add to [`Launch`] as they start; [`command`] applies it, for the first
//! process of `warden run` and for `warden task exec` (which gets it from the daemon in
//! `TaskInfo`).
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{
    loader::Engine,
    sandbox::{
        confine::{ConfineError, Confinement},
        launch::spawn_into_cgroup,
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
    #[error("preparing the command: {0}")]
    Io(#[from] std::io::Error),
}

/// The command that starts `cmd` in the task: it joins the task's cgroups before its first
/// instruction, gets the task's environment, and in enforce mode carries the confinement
/// compiled from the scope (the fallback engine's Landlock domain and seccomp filter; under
/// BPF LSM only the seccomp filter for what no hook judges).
pub fn command(
    launch: &Launch,
    scope: &CompiledScope,
    engine: Engine,
    cmd: &[String],
) -> Result<tokio::process::Command, LaunchError> {
    let confine = if scope.scope.mode == Mode::Enforce {
        Some(Confinement::prepare(scope, engine.is_lsm())?)
    } else {
        None
    };
    let mut c = tokio::process::Command::new(&cmd[0]);
    c.args(&cmd[1..]);
    for (k, v) in &launch.env {
        c.env(k, v);
    }
    spawn_into_cgroup(&mut c, &launch.procs_files, confine)?;
    Ok(c)
}
