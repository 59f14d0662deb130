//! What API handlers and the daemon core say to each other: each request becomes a [`Cmd`]
//! with a reply channel; failures are [`ApiError`]s (an HTTP status and a message).
use tokio::sync::oneshot;

use super::api::{CallInfo, CallRequest, ContainerRequest, EndRequest, EndResponse, StartRequest, TaskInfo};

/// An API failure: HTTP status and message.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
}

impl ApiError {
    pub fn bad(message: impl Into<String>) -> Self {
        Self { status: 400, message: message.into() }
    }
    pub fn not_found(id: &str) -> Self {
        Self { status: 404, message: format!("no running task {id:?} (warden task list shows them)") }
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self { status: 500, message: message.into() }
    }
}

pub type Reply<T> = oneshot::Sender<Result<T, ApiError>>;

/// Requests to the core.
pub enum Cmd {
    Start(Box<StartRequest>, Reply<TaskInfo>),
    Get(String, Reply<TaskInfo>),
    List(Reply<Vec<TaskInfo>>),
    End(String, EndRequest, Reply<EndResponse>),
    Metrics(oneshot::Sender<String>),
    /// A health probe's round trip: the number of running tasks.
    Ping(oneshot::Sender<usize>),
    /// Bind a container (`warden oci-hook`, before its first instruction).
    StartContainer(Box<ContainerRequest>, Reply<TaskInfo>),
    /// End the task bound to a container (by the runtime's container id).
    EndContainer(String, EndRequest, Reply<EndResponse>),
    /// Start a call in a task (`task`, request).
    StartCall(String, Box<CallRequest>, Reply<CallInfo>),
    /// Start a call for a caller inside a task (`daemon/inside.rs`): the caller's cgroup
    /// (absolute) decides the task and the parent.
    StartInsideCall(std::path::PathBuf, Box<CallRequest>, Reply<CallInfo>),
    /// End a call of a task (`task`, call id).
    EndCall(String, String, EndRequest, Reply<EndResponse>),
    /// A process inside a task called the API and was refused (403): recorded on its task.
    ApiRefused(ApiRefusal),
}

/// Who was refused the API, for the `api` deny record on its task.
#[derive(Debug)]
pub struct ApiRefusal {
    pub task: String,
    pub pid: u32,
    pub exe: Option<String>,
    /// Its ancestors inside the task, nearest first.
    pub ancestry: Vec<u32>,
    /// What it asked: `METHOD /path`.
    pub request: String,
}
