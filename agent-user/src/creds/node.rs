//! The node side of brokered credentials, one per daemon (or `warden run`): the revocation
//! queue and its worker, the signing key, and the per-task steps — [`NodeCreds::start_task`]
//! mints and starts the broker, [`NodeCreds::end_task`] stops it and revokes.
//! Also the HTTP router that publishes the JWKS and the revoked token ids.
use std::{
    io,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Json, Router, extract::State, routing::get};
use tokio::sync::mpsc;

use super::{
    CredError, CredInfo, MintCtx, TaskCreds,
    broker::{self, Broker, BrokerCtx, SecretEvent},
    revoke::{RevokeEvent, RevokeQueue},
    token, unix_now,
};
use crate::{audit::chain::NodeKey, scope::Scope};

/// How long ending a task waits for its revocations to land before it reports them pending
/// (they are retried after that regardless).
pub const END_WAIT: Duration = Duration::from_secs(2);

/// A task's brokered credentials and its broker.
pub struct TaskHandle {
    pub task: String,
    pub creds: Arc<Mutex<TaskCreds>>,
    broker: Broker,
    scope_hash: String,
    expires_at: Option<u64>,
}

impl std::fmt::Debug for TaskHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskHandle").field("task", &self.task).field("broker", &self.broker.path()).finish()
    }
}

impl TaskHandle {
    /// The broker socket.
    pub fn socket(&self) -> &Path {
        self.broker.path()
    }

    /// The credentials, as records may show them.
    pub fn infos(&self) -> Vec<CredInfo> {
        self.creds.lock().unwrap_or_else(|e| e.into_inner()).infos()
    }
}

/// Node-wide credential state.
pub struct NodeCreds {
    pub queue: Arc<RevokeQueue>,
    key: NodeKey,
    node: String,
    issuer: String,
    events: mpsc::UnboundedSender<SecretEvent>,
    worker: Option<std::thread::JoinHandle<()>>,
}

impl NodeCreds {
    /// Opens the revocation queue in `dir`, starts its worker, and returns the receiver of
    /// broker events (`secret` records to write).
    pub fn open(
        dir: &Path,
        key: NodeKey,
        node: String,
        issuer: Option<String>,
    ) -> io::Result<(Self, mpsc::UnboundedReceiver<SecretEvent>)> {
        let queue = RevokeQueue::open(dir)?;
        let worker = Some(queue.spawn_worker());
        let (tx, rx) = mpsc::unbounded_channel();
        let issuer = issuer.unwrap_or_else(|| format!("warden://{node}"));
        Ok((Self { queue, key, node, issuer, events: tx, worker }, rx))
    }

    /// The JWKS of the signing key.
    pub fn jwks(&self) -> serde_json::Value {
        token::jwks(&self.key)
    }

    /// Mints `scope`'s brokered secrets for `task` and starts its broker in `secrets_dir`.
    /// On failure nothing is left: what was minted is revoked. Needs a tokio runtime.
    #[allow(clippy::too_many_arguments)]
    pub fn start_task(
        &self,
        scope: &Scope,
        task: &str,
        scope_hash: &str,
        expires_at: Option<u64>,
        secrets_dir: &Path,
        sandbox: &Path,
        cgroup_mount: &Path,
    ) -> Result<TaskHandle, CredError> {
        let ctx = MintCtx {
            task,
            node: &self.node,
            scope_hash,
            task_expires_at: expires_at,
            key: &self.key,
            issuer: &self.issuer,
        };
        let mut creds = TaskCreds::mint(scope, &ctx, &self.queue)?;
        let creds_arc = Arc::new(Mutex::new(TaskCreds::default()));
        let bctx = BrokerCtx {
            task: task.to_string(),
            sandbox: sandbox.to_path_buf(),
            cgroup_mount: cgroup_mount.to_path_buf(),
            creds: creds_arc.clone(),
            events: self.events.clone(),
        };
        let path = secrets_dir.join(broker::SOCKET_NAME);
        let broker = match Broker::start(&path, bctx) {
            Ok(b) => b,
            Err(e) => {
                creds.revoke_all(&self.queue);
                return Err(CredError::Other {
                    name: "broker".into(),
                    message: format!("cannot serve {}: {e}", path.display()),
                });
            }
        };
        *creds_arc.lock().unwrap_or_else(|e| e.into_inner()) = creds;
        Ok(TaskHandle {
            task: task.to_string(),
            creds: creds_arc,
            broker,
            scope_hash: scope_hash.to_string(),
            expires_at,
        })
    }

    /// Reissues the task's credentials whose rotation is due.
    pub fn rotate(&self, h: &TaskHandle) -> Vec<(String, Result<CredInfo, CredError>)> {
        let ctx = MintCtx {
            task: &h.task,
            node: &self.node,
            scope_hash: &h.scope_hash,
            task_expires_at: h.expires_at,
            key: &self.key,
            issuer: &self.issuer,
        };
        h.creds.lock().unwrap_or_else(|e| e.into_inner()).rotate_due(&ctx, &self.queue, unix_now())
    }

    /// Stops the task's broker and revokes every credential; waits up to `wait` for the
    /// revocations to land. Returns what has not landed yet (still retried).
    pub fn end_task(&self, h: TaskHandle, wait: Duration) -> Vec<String> {
        let TaskHandle { task, creds, broker, .. } = h;
        drop(broker);
        creds.lock().unwrap_or_else(|e| e.into_inner()).revoke_all(&self.queue);
        self.finish(&task, wait)
    }

    /// Revokes what a task that is gone (or whose values this process does not have) left
    /// held; waits up to `wait`. Returns what has not landed yet.
    pub fn end_orphan(&self, task: &str, wait: Duration) -> Vec<String> {
        self.queue.release_task(task);
        self.finish(task, wait)
    }

    fn finish(&self, task: &str, wait: Duration) -> Vec<String> {
        if !wait.is_zero() {
            self.queue.wait_task(task, wait);
        }
        self.queue.pending().into_iter().filter(|(t, _, _)| t == task).map(|(_, n, _)| n).collect()
    }

    /// Revocation outcomes since the last call.
    pub fn take_revoke_events(&self) -> Vec<RevokeEvent> {
        self.queue.take_events()
    }

    /// Where the broker socket of a task with secrets directory `dir` is.
    pub fn socket_in(dir: &Path) -> PathBuf {
        dir.join(broker::SOCKET_NAME)
    }
}

impl Drop for NodeCreds {
    fn drop(&mut self) {
        self.queue.stop();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

/// What the token endpoint serves.
#[derive(Clone)]
pub struct TokenEndpoint {
    pub jwks: Arc<serde_json::Value>,
    pub queue: Arc<RevokeQueue>,
}

/// `GET /.well-known/jwks.json` and `GET /v1/revoked` (`{"revoked": [jti, ...]}`: tokens of
/// ended tasks that have not expired yet).
pub fn token_router(ep: TokenEndpoint) -> Router {
    Router::new()
        .route(
            "/.well-known/jwks.json",
            get(|State(ep): State<TokenEndpoint>| async move { Json((*ep.jwks).clone()) }),
        )
        .route(
            "/v1/revoked",
            get(|State(ep): State<TokenEndpoint>| async move {
                Json(serde_json::json!({"revoked": ep.queue.revoked_jtis()}))
            }),
        )
        .with_state(ep)
}
