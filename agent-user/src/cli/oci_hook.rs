//! `warden oci-hook`: the OCI runtime hook that binds a pod's container to its scope before
//! the container's first instruction, and ends the task when the container stops. One
//! command for every phase (the state's `status` tells which). Fails closed: when the
//! container asks for a scope and cannot be bound, the hook fails and the runtime does not
//! start the container, unless the pod chose `warden.dev/on-failure: open`.
use std::{io::Read, io::Write, path::PathBuf, time::Duration};

use anyhow::anyhow;

use super::{Failure, task::SocketArg};
use crate::{
    daemon::api::{Client, ContainerRequest},
    k8s::hook::{self, Phase, Spec, State},
};

#[derive(Debug, clap::Args)]
pub struct OciHookArgs {
    #[command(flatten)]
    pub socket: SocketArg,
    /// Give up on the daemon after this many seconds (keep it below the runtime's hook
    /// timeout).
    #[arg(long, default_value_t = 20, value_name = "SECONDS")]
    pub timeout: u64,
    /// Where a container started unbound under `warden.dev/on-failure: open` is noted when
    /// the daemon could not record it.
    #[arg(long, default_value = "/var/log/warden/oci-hook.jsonl", value_name = "FILE")]
    pub note: PathBuf,
}

pub fn run(args: OciHookArgs) -> Result<i32, Failure> {
    let mut input = Vec::new();
    std::io::stdin().read_to_end(&mut input).map_err(|e| Failure::Usage(anyhow!("reading stdin: {e}")))?;
    let state = State::parse(&input).map_err(|e| Failure::Usage(e.into()))?;
    let phase = state.phase().map_err(|e| Failure::Usage(e.into()))?;
    let spec = Spec::load(&state.bundle).map_err(|e| Failure::Usage(e.into()))?;
    let annotations = hook::annotations(&state, &spec);
    // A malformed binding annotation fails the container: it asked to be bound.
    let binding = match hook::wanted(&annotations) {
        Ok(Some(b)) => b,
        Ok(None) => return Ok(0),
        Err(e) => return Err(Failure::Usage(anyhow!("container {}: {e}", state.id))),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(e.into()))?;
    let client = Client::new(&args.socket.socket);
    let limit = Duration::from_secs(args.timeout);
    match phase {
        Phase::Create => {
            let pid = state
                .pid
                .ok_or_else(|| Failure::Usage(hook::HookError::NoPid(state.status.clone()).into()))?;
            let req = ContainerRequest {
                id: state.id.clone(),
                pid,
                rootfs: spec.rootfs(&state.bundle),
                annotations,
            };
            let r = rt.block_on(async { tokio::time::timeout(limit, client.bind_container(&req)).await });
            let err = match r {
                Ok(Ok(info)) => {
                    tracing::info!(container = %state.id, task = %info.id, "container bound");
                    return Ok(0);
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("the daemon did not answer within {} s", args.timeout),
            };
            if binding.fail_open {
                note(&args.note, &state.id, &binding.scope, &err);
                eprintln!(
                    "warden oci-hook: container {} starts UNBOUND (warden.dev/on-failure: open): {err}",
                    state.id
                );
                return Ok(0);
            }
            Err(Failure::Runtime(anyhow!(
                "container {} asks for scope {:?} and cannot be bound, so it does not start: {err}",
                state.id,
                binding.scope
            )))
        }
        Phase::Stop => {
            let r = rt.block_on(async {
                tokio::time::timeout(limit, client.end_container(&state.id, Some("container stopped".into())))
                    .await
            });
            match r {
                Ok(Ok(_)) => Ok(0),
                // Nothing was bound (fail-open, or already ended when the cgroup emptied).
                Ok(Err(crate::daemon::api::ClientError::Refused { status: 404, .. })) => Ok(0),
                Ok(Err(e)) => Err(Failure::Runtime(anyhow!(
                    "container {}: ending its task: {e} (the daemon ends it once the container's cgroup is empty)",
                    state.id
                ))),
                Err(_) => Err(Failure::Runtime(anyhow!(
                    "container {}: the daemon did not answer within {} s",
                    state.id,
                    args.timeout
                ))),
            }
        }
    }
}

/// Appends one JSON line saying a container started unbound (best effort: the hook's stderr
/// reaches the runtime's log too).
fn note(path: &std::path::Path, id: &str, scope: &str, error: &str) {
    let line = serde_json::json!({
        "kind": "bind_failed",
        "decision": "allow",
        "on_failure": "open",
        "container_id": id,
        "scope": scope,
        "reason": error,
        "time": crate::audit::clock::Clock::new().format(crate::audit::clock::Clock::boot_now_ns()),
    });
    let r = (|| -> std::io::Result<()> {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d)?;
        }
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        writeln!(f, "{line}")
    })();
    if let Err(e) = r {
        eprintln!("warden oci-hook: cannot note the unbound start in {}: {e}", path.display());
    }
}
