//! The daemon's local API: HTTP/1.1 + JSON over a unix socket. Request and response bodies
//! (shared by the server and the `warden` client verbs) and the client. `docs/daemon.md`
//! lists the endpoints.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};

use crate::{k8s::pod::PodIdentity, sandbox::secrets::IssuedInfo, task::IdentityDoc};

/// API version prefix of every path.
pub const PREFIX: &str = "/v1";

/// The API socket when neither the config (`socket:`), `--socket` nor `WARDEN_SOCKET` says
/// otherwise: the one default the daemon and its clients share.
pub const DEFAULT_SOCKET: &str = "/run/warden/warden.sock";

/// `POST /v1/tasks`: start a task.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    /// The scope's text (the client reads the file).
    pub scope_text: String,
    /// Where the scope came from (for messages and `task_start.scope`).
    pub scope_path: PathBuf,
    /// Overrides the scope's mode: `enforce` or `audit`.
    #[serde(default)]
    pub mode: Option<String>,
    /// Bind this existing cgroup (absolute path inside the cgroup2 mount) instead of
    /// creating a sandbox.
    #[serde(default)]
    pub cgroup: Option<PathBuf>,
    /// Also write this task's records (its whole chain) to this file.
    #[serde(default)]
    pub log: Option<PathBuf>,
    /// End the task when its sandbox has had processes and has none left (`warden run`).
    #[serde(default)]
    pub end_when_empty: bool,
    /// The command, for `task_start.cmd` (`warden run`).
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
}

/// `POST /v1/containers`: bind a container before its first instruction (`warden oci-hook`).
/// The daemon finds the container's cgroup from its process, its pod from the cgroup path
/// and the annotations, and its scope from the annotations and the `scopes` directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerRequest {
    /// The runtime's container id (the OCI state's `id`).
    pub id: String,
    /// The container's process (host pid).
    pub pid: u32,
    /// The container's root filesystem, absolute (scope paths are resolved inside it).
    pub rootfs: PathBuf,
    /// The spec's `warden.dev/*` and `io.kubernetes.*` annotations.
    pub annotations: BTreeMap<String, String>,
}

/// What a client needs to run commands in a task, and what `task list` shows.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TaskInfo {
    pub id: String,
    pub slot: u32,
    pub cgroup: PathBuf,
    pub cgroup_id: u64,
    /// Whether the daemon created the cgroup (and removes it at the end).
    pub created: bool,
    /// `cgroup.procs` files a new process joins (the sandbox, and a v1 pids twin).
    pub procs_files: Vec<PathBuf>,
    /// Environment variables a new process gets (`lifecycle::Launch::env`).
    #[serde(default)]
    pub env: Vec<(String, String)>,
    pub scope_path: PathBuf,
    pub scope_text: String,
    pub scope_hash: String,
    pub mode: String,
    /// `bpf-lsm` or `fallback`.
    pub engine: String,
    pub started: String,
    pub expires: Option<String>,
    /// Where issued secrets are (`<secrets_dir>/<task>`), when the scope issues any.
    pub secrets_dir: Option<PathBuf>,
    /// Issued secrets: name, path, env variable, digest.
    pub secrets: Vec<IssuedInfo>,
    /// The task's secrets broker (`WARDEN_BROKER` in the task), when the scope has
    /// brokered secrets (`exec:`, `token`).
    #[serde(default)]
    pub broker: Option<PathBuf>,
    /// Brokered credentials: name, provider, digest, expiry (never the value).
    #[serde(default)]
    pub credentials: Vec<crate::creds::CredInfo>,
    /// Processes in the sandbox now.
    pub processes: u64,
    pub identity: IdentityDoc,
    /// Paths no process of the task may read or write, as the daemon protects them (its key,
    /// log, state, pins, secrets directory and secret sources): the confinement a client
    /// compiles for `task exec` must carve exactly what the daemon's own compile carved, so
    /// the daemon says it instead of each client guessing from its own configuration.
    #[serde(default)]
    pub protected: Vec<PathBuf>,
    /// The pod and container, for a task bound by `warden oci-hook`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodIdentity>,
}

/// `POST /v1/tasks/{id}/end`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndRequest {
    /// Why (`task_end.reason`); default "ended by request".
    #[serde(default)]
    pub reason: Option<String>,
}

/// `POST /v1/tasks/{id}/calls`: start a call (a tool call, a pipeline stage) in a task.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallRequest {
    /// The call's name (`[A-Za-z0-9._-]`, at most 64 bytes).
    pub name: String,
    /// The parent call's id; absent: the call is directly under the task.
    #[serde(default)]
    pub parent: Option<String>,
    /// The call's scope (no wider than its parent's); absent: the parent's.
    #[serde(default)]
    pub scope_text: Option<String>,
    #[serde(default)]
    pub scope_path: Option<PathBuf>,
    /// Why the call is made (`call_start.intent`).
    #[serde(default)]
    pub intent: Option<String>,
    /// The command, as `call_start.cmd` records it.
    #[serde(default)]
    pub cmd: Vec<String>,
    /// Its working directory (`call_start.cwd`).
    #[serde(default)]
    pub cwd: Option<String>,
}

/// A started call: its id and a [`TaskInfo`] to start its command with (the call's cgroup,
/// scope, identity; the task's id, environment and secrets).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallInfo {
    pub call: String,
    pub name: String,
    /// The task's id or the parent call's.
    pub parent: String,
    pub depth: u32,
    pub task: TaskInfo,
}

/// How a task ended.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EndResponse {
    pub id: String,
    pub reason: String,
    /// Processes still running that the end killed.
    pub killed: u64,
    pub drops: u64,
    /// Whether the task had already ended before this request (TTL, empty sandbox).
    pub already: bool,
    /// Steps of the revocation that failed (the others were still done).
    pub errors: Vec<String>,
}

/// An error body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// Client errors.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach the warden daemon at {path}: {source} (is `warden daemon` running? --socket sets the path)"
    )]
    Connect { path: PathBuf, source: std::io::Error },
    #[error("talking to the warden daemon: {0}")]
    Http(String),
    #[error("the daemon refused the request ({status}): {message}")]
    Refused { status: u16, message: String },
    #[error("unexpected answer from the daemon: {0}")]
    Decode(#[from] serde_json::Error),
}

impl ClientError {
    /// 4xx answers are the caller's mistake (exit 2); the rest are runtime failures.
    pub fn is_usage(&self) -> bool {
        matches!(self, ClientError::Refused { status, .. } if (400..500).contains(status))
    }
}

/// A client of the daemon's socket.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: &Path) -> Self {
        Self { socket: socket.to_path_buf() }
    }

    /// Whether a daemon answers on the socket.
    pub async fn is_up(&self) -> bool {
        self.call::<serde_json::Value>(Method::GET, "/health", None).await.is_ok()
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|source| ClientError::Connect { path: self.socket.clone(), source })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = Request::builder()
            .method(method)
            .uri(format!("{PREFIX}{path}"))
            .header("host", "warden")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Http(e.to_string()))?;
        sender.send_request(req).await.map_err(|e| ClientError::Http(e.to_string()))
    }

    /// One request, one JSON answer.
    pub async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ClientError> {
        let resp = self.send(method, path, body).await?;
        let status = resp.status();
        let bytes =
            resp.into_body().collect().await.map_err(|e| ClientError::Http(e.to_string()))?.to_bytes();
        if status != StatusCode::OK && status != StatusCode::CREATED {
            return Err(refused(status, &bytes));
        }
        Ok(serde_json::from_slice(&bytes)?)
    }

    /// A streamed answer (JSON Lines): `f` gets each chunk as it arrives.
    pub async fn stream(&self, path: &str, mut f: impl FnMut(&[u8]) -> bool) -> Result<(), ClientError> {
        let resp = self.send(Method::GET, path, None).await?;
        let status = resp.status();
        let mut body = resp.into_body();
        if status != StatusCode::OK {
            let bytes = body.collect().await.map_err(|e| ClientError::Http(e.to_string()))?.to_bytes();
            return Err(refused(status, &bytes));
        }
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ClientError::Http(e.to_string()))?;
            if let Some(data) = frame.data_ref()
                && !f(data)
            {
                break;
            }
        }
        Ok(())
    }

    pub async fn start(&self, req: &StartRequest) -> Result<TaskInfo, ClientError> {
        self.call(Method::POST, "/tasks", Some(serde_json::to_vec(req)?)).await
    }

    pub async fn task(&self, id: &str) -> Result<TaskInfo, ClientError> {
        self.call(Method::GET, &format!("/tasks/{}", enc(id)), None).await
    }

    pub async fn list(&self) -> Result<Vec<TaskInfo>, ClientError> {
        self.call(Method::GET, "/tasks", None).await
    }

    pub async fn end(&self, id: &str, reason: Option<String>) -> Result<EndResponse, ClientError> {
        let body = serde_json::to_vec(&EndRequest { reason })?;
        self.call(Method::POST, &format!("/tasks/{}/end", enc(id)), Some(body)).await
    }

    pub async fn bind_container(&self, req: &ContainerRequest) -> Result<TaskInfo, ClientError> {
        self.call(Method::POST, "/containers", Some(serde_json::to_vec(req)?)).await
    }

    /// Ends the task bound to a container (by the runtime's container id).
    pub async fn end_container(&self, id: &str, reason: Option<String>) -> Result<EndResponse, ClientError> {
        let body = serde_json::to_vec(&EndRequest { reason })?;
        self.call(Method::POST, &format!("/containers/{}/end", enc(id)), Some(body)).await
    }

    /// Starts a call in task `id`.
    pub async fn start_call(&self, id: &str, req: &CallRequest) -> Result<CallInfo, ClientError> {
        self.call(Method::POST, &format!("/tasks/{}/calls", enc(id)), Some(serde_json::to_vec(req)?)).await
    }

    /// Ends a call of task `id` (and the calls below it).
    pub async fn end_call(
        &self,
        id: &str,
        call: &str,
        reason: Option<String>,
    ) -> Result<EndResponse, ClientError> {
        let body = serde_json::to_vec(&EndRequest { reason })?;
        self.call(Method::POST, &format!("/tasks/{}/calls/{}/end", enc(id), enc(call)), Some(body)).await
    }

    pub async fn identity(&self, id: &str) -> Result<IdentityDoc, ClientError> {
        self.call(Method::GET, &format!("/tasks/{}/identity", enc(id)), None).await
    }
}

/// An error answer: the daemon's `{"error": ...}` message, or the body as text.
fn refused(status: StatusCode, body: &[u8]) -> ClientError {
    let message = serde_json::from_slice::<ErrorBody>(body)
        .map(|e| e.error)
        .unwrap_or_else(|_| String::from_utf8_lossy(body).into_owned());
    ClientError::Refused { status: status.as_u16(), message }
}

/// Task ids are `[A-Za-z0-9._-]`; anything else is percent-encoded so it cannot change the
/// path.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_cannot_escape_the_path() {
        assert_eq!(super::enc("t-1.a_b"), "t-1.a_b");
        assert_eq!(super::enc("../x?y"), "..%2Fx%3Fy");
    }
}
