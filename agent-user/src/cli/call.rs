//! `warden call`: inside a task, run a command as a call of the caller's own task or call.
use super::Failure;

#[derive(Debug, clap::Args)]
pub struct CallArgs {
    /// The call's name.
    #[arg(long, value_name = "NAME")]
    pub name: String,
    /// The call's scope, no wider than the caller's.
    #[arg(long, value_name = "SCOPE.yaml")]
    pub scope: Option<std::path::PathBuf>,
    /// Why the call is made (`call_start.intent`), read from a file.
    #[arg(long, value_name = "FILE")]
    pub intent_file: Option<std::path::PathBuf>,
    #[arg(last = true, required = true, value_name = "CMD")]
    pub cmd: Vec<String>,
}

/// The inside endpoint (a per-task socket judging callers by their kernel identity) is not
/// built yet: from inside a task no call can be started, and this says so (exit 2) instead
/// of running CMD unattributed.
pub fn run(_args: CallArgs) -> Result<i32, Failure> {
    Err(Failure::Usage(anyhow::anyhow!(
        "warden call: this build has no call endpoint inside tasks (neither under the node daemon nor under \
         `warden run`); start calls from outside the sandbox with `warden task exec ID --call NAME [--scope S] \
         -- CMD` (docs/daemon.md, Calls)"
    )))
}
