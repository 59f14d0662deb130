//! HTTP over the unix socket (the API) and over loopback TCP (`/metrics`).
//!
//! Handlers only translate: each request becomes a [`Cmd`] for the core and its answer
//! becomes JSON. Callers whose process is inside a sandbox are refused (403) before any of
//! that: a task cannot drive the daemon that confines it.
use std::{path::PathBuf, sync::Arc};

use axum::{
    Json, Router,
    body::Body,
    extract::{ConnectInfo, Path, Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
    serve::IncomingStream,
};
use tokio::{
    net::UnixListener,
    sync::{broadcast, mpsc, oneshot},
};

use super::{
    api::{ContainerRequest, EndRequest, ErrorBody, StartRequest},
    core::{Shared, StreamLine},
    protocol::{ApiError, Cmd},
};

/// What every handler gets.
#[derive(Clone)]
pub struct AppState {
    pub cmds: mpsc::Sender<Cmd>,
    pub stream: broadcast::Sender<StreamLine>,
    pub shared: Arc<Shared>,
    /// The node log, for `GET /v1/events` without `follow`.
    pub log: PathBuf,
    /// The cgroup2 mount, to place callers.
    pub cgroup_mount: PathBuf,
}

/// The calling process, from the socket's peer credentials.
#[derive(Debug, Clone)]
pub struct Peer {
    pub pid: Option<i32>,
}

impl axum::extract::connect_info::Connected<IncomingStream<'_, UnixListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, UnixListener>) -> Self {
        Peer { pid: stream.io().peer_cred().ok().and_then(|c| c.pid()) }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(ErrorBody { error: self.message })).into_response()
    }
}

/// The API router.
pub fn api_router(state: AppState) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/tasks", post(start).get(list))
        .route("/v1/tasks/{id}", get(task))
        .route("/v1/tasks/{id}/end", post(end))
        .route("/v1/tasks/{id}/identity", get(identity))
        .route("/v1/tasks/{id}/calls", post(start_call))
        .route("/v1/tasks/{id}/calls/{call}/end", post(end_call))
        .route("/v1/containers", post(start_container))
        .route("/v1/containers/{id}/end", post(end_container))
        .route("/v1/events", get(events))
        .layer(axum::middleware::from_fn_with_state(state.clone(), refuse_tasks))
        .with_state(state)
}

/// Refuses callers inside a sandbox before any handler runs, and records each refusal on the
/// caller's task (an `api` deny record: pid, exe, ancestry, the request). Handlers check
/// again ([`guard`]).
async fn refuse_tasks(
    State(s): State<AppState>,
    ConnectInfo(p): ConnectInfo<Peer>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Err(e) = guard(&s, &p) else {
        return next.run(req).await;
    };
    if let Some(pid) = p.pid.and_then(|p| u32::try_from(p).ok())
        && let Some((cgroup, task)) = caller_task(&s, pid)
    {
        let proc_root = std::path::Path::new("/proc");
        let me = crate::creds::peer::read_proc(proc_root, &s.cgroup_mount, pid).ok();
        let mut ancestry = Vec::new();
        let mut ppid = me.as_ref().map_or(0, |m| m.ppid);
        while ppid > 1 && ancestry.len() < 32 {
            let Ok(parent) = crate::creds::peer::read_proc(proc_root, &s.cgroup_mount, ppid) else { break };
            if !parent.cgroup.as_deref().is_some_and(|c| c.starts_with(&cgroup)) {
                break;
            }
            ancestry.push(ppid);
            ppid = parent.ppid;
        }
        let refusal = super::protocol::ApiRefusal {
            task,
            pid,
            exe: me.map(|m| m.exe.display().to_string()),
            ancestry,
            request: format!("{} {}", req.method(), req.uri().path()),
        };
        if s.cmds.try_send(Cmd::ApiRefused(refusal)).is_err() {
            tracing::warn!(pid, "the core is busy; an API refusal goes unrecorded");
        }
    }
    e.into_response()
}

/// The task (and its sandbox cgroup) whose sandbox process `pid` is in.
fn caller_task(state: &AppState, pid: u32) -> Option<(PathBuf, String)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let rel = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    let abs = state.cgroup_mount.join(rel.trim_start_matches('/'));
    let sandboxes = state.shared.sandboxes.read().unwrap_or_else(|e| e.into_inner());
    sandboxes.iter().find(|(c, _)| abs.starts_with(c)).cloned()
}

/// The metrics router.
pub fn metrics_router(cmds: mpsc::Sender<Cmd>) -> Router {
    Router::new().route("/metrics", get(metrics)).route("/health", get(metrics_health)).with_state(cmds)
}

/// Refuses callers that run inside a sandbox.
fn guard(state: &AppState, peer: &Peer) -> Result<(), ApiError> {
    let Some(pid) = peer.pid else {
        return Err(ApiError { status: 403, message: "caller unknown (no peer credentials)".into() });
    };
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
        return Err(ApiError { status: 403, message: "caller vanished".into() });
    };
    let Some(rel) = text.lines().find_map(|l| l.strip_prefix("0::")) else { return Ok(()) };
    let abs = state.cgroup_mount.join(rel.trim_start_matches('/'));
    let sandboxes = state.shared.sandboxes.read().unwrap_or_else(|e| e.into_inner());
    if sandboxes.iter().any(|(s, _)| abs.starts_with(s)) {
        tracing::warn!(pid, cgroup = %abs.display(), "refused an API call from inside a sandbox");
        return Err(ApiError { status: 403, message: "tasks may not use the Warden API".into() });
    }
    Ok(())
}

async fn ask<T>(
    state: &AppState,
    make: impl FnOnce(oneshot::Sender<Result<T, ApiError>>) -> Cmd,
) -> Result<T, ApiError> {
    let (tx, rx) = oneshot::channel();
    state.cmds.send(make(tx)).await.map_err(|_| ApiError::internal("the daemon is stopping"))?;
    rx.await.map_err(|_| ApiError::internal("the daemon dropped the request"))?
}

async fn start_container(
    State(s): State<AppState>,
    ConnectInfo(p): ConnectInfo<Peer>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<super::api::TaskInfo>), ApiError> {
    guard(&s, &p)?;
    let req: ContainerRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad(format!("request body: {e}")))?;
    let info = ask(&s, |tx| Cmd::StartContainer(Box::new(req), tx)).await?;
    Ok((StatusCode::CREATED, Json(info)))
}

async fn end_container(
    State(s): State<AppState>,
    ConnectInfo(p): ConnectInfo<Peer>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<super::api::EndResponse>, ApiError> {
    guard(&s, &p)?;
    let req = end_request(&body)?;
    Ok(Json(ask(&s, |tx| Cmd::EndContainer(id, req, tx)).await?))
}

async fn health(
    State(s): State<AppState>,
    ConnectInfo(p): ConnectInfo<Peer>,
) -> Result<Json<serde_json::Value>, ApiError> {
    guard(&s, &p)?;
    Ok(Json(serde_json::json!({"status": "ok", "pid": std::process::id()})))
}

async fn start(
    State(s): State<AppState>,
    ConnectInfo(p): ConnectInfo<Peer>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<super::api::TaskInfo>), ApiError> {
    guard(&s, &p)?;
    let req: StartRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad(format!("request body: {e}")))?;
    let info = ask(&s, |tx| Cmd::Start(Box::new(req), tx)).await?;
    Ok((StatusCode::CREATED, Json(info)))
}

async fn list(
    State(s): State<AppState>,
    ConnectInfo(p): ConnectInfo<Peer>,
) -> Result<Json<Vec<super::api::TaskInfo>>, ApiError> {
    guard(&s, &p)?;
    Ok(Json(ask(&s, Cmd::List).await?))
}

async fn task(
    State(s): State<AppState>,
    ConnectInfo(p): ConnectInfo<Peer>,
    Path(id): Path<String>,
) -> Result<Json<super::api::TaskInfo>, ApiError> {
    guard(&s, &p)?;
    Ok(Json(ask(&s, |tx| Cmd::Get(id, tx)).await?))
}

async fn start_call(
    State(s): State<AppState>,
    ConnectInfo(p): ConnectInfo<Peer>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<super::api::CallInfo>), ApiError> {
    guard(&s, &p)?;
    let req: super::api::CallRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad(format!("request body: {e}")))?;
    let info = ask(&s, |tx| Cmd::StartCall(id, Box::new(req), tx)).await?;
    Ok((StatusCode::CREATED, Json(info)))
}

async fn end_call(
    State(s): State<AppState>,
    ConnectInfo(p): ConnectInfo<Peer>,
    Path((id, call)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Json<super::api::EndResponse>, ApiError> {
    guard(&s, &p)?;
    let req = end_request(&body)?;
    Ok(Json(ask(&s, |tx| Cmd::EndCall(id, call, req, tx)).await?))
}

async fn identity(
    State(s): State<AppState>,
    ConnectInfo(p): ConnectInfo<Peer>,
    Path(id): Path<String>,
) -> Result<Json<crate::task::IdentityDoc>, ApiError> {
    guard(&s, &p)?;
    Ok(Json(ask(&s, |tx| Cmd::Get(id, tx)).await?.identity))
}

async fn end(
    State(s): State<AppState>,
    ConnectInfo(p): ConnectInfo<Peer>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<super::api::EndResponse>, ApiError> {
    guard(&s, &p)?;
    let req = end_request(&body)?;
    Ok(Json(ask(&s, |tx| Cmd::End(id, req, tx)).await?))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    task: Option<String>,
    #[serde(default)]
    follow: bool,
}

/// `GET /v1/events[?task=ID][&follow=true]`: the node log (filtered), or with `follow` the
/// live stream from now on, as JSON Lines. A follower that falls behind gets a
/// `stream_gap` line saying how many lines it missed (they are in the log).
async fn events(
    State(s): State<AppState>,
    ConnectInfo(p): ConnectInfo<Peer>,
    Query(q): Query<EventsQuery>,
) -> Result<Response, ApiError> {
    guard(&s, &p)?;
    let wants = move |task: Option<&str>, line: &str| -> bool {
        match (&q.task, task) {
            (None, _) => true,
            (Some(t), Some(rt)) => t == rt,
            (Some(t), None) => line.contains(&format!("\"task\":\"{t}\"")),
        }
    };
    let (tx, rx) = mpsc::channel::<Result<axum::body::Bytes, std::io::Error>>(256);
    if q.follow {
        let mut sub = s.stream.subscribe();
        tokio::spawn(async move {
            loop {
                let msg = match sub.recv().await {
                    Ok(l) if wants(Some(&l.task), &l.line) => format!("{}\n", l.line),
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        format!(
                            "{{\"kind\":\"stream_gap\",\"missed\":{n},\"reason\":\"the follower fell behind; the lines are in the node log\"}}\n"
                        )
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                };
                if tx.send(Ok(msg.into())).await.is_err() {
                    break;
                }
            }
        });
    } else {
        let log = s.log.clone();
        tokio::task::spawn_blocking(move || {
            use std::io::BufRead;
            let Ok(f) = std::fs::File::open(&log) else { return };
            let mut r = std::io::BufReader::new(f);
            let mut line = String::new();
            // Whole lines only: the daemon may be half-way through writing the last one.
            while matches!(r.read_line(&mut line), Ok(n) if n > 0) && line.ends_with('\n') {
                if wants(None, &line) && tx.blocking_send(Ok(std::mem::take(&mut line).into())).is_err() {
                    break;
                }
                line.clear();
            }
        });
    }
    let body = Body::from_stream(tokio_stream_from(rx));
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

/// An mpsc receiver as a stream.
fn tokio_stream_from<T: Send + 'static>(mut rx: mpsc::Receiver<T>) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// `GET /health` on the metrics listener (liveness and readiness probes): answers only when
/// the core has answered a round trip, so a wedged core fails the probe.
async fn metrics_health(State(cmds): State<mpsc::Sender<Cmd>>) -> Response {
    let (tx, rx) = oneshot::channel();
    if cmds.send(Cmd::Ping(tx)).await.is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, "stopping\n").into_response();
    }
    match tokio::time::timeout(std::time::Duration::from_secs(5), rx).await {
        Ok(Ok(tasks)) => Json(serde_json::json!({"status": "ok", "tasks": tasks})).into_response(),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "the daemon's core does not answer\n").into_response(),
    }
}

async fn metrics(State(cmds): State<mpsc::Sender<Cmd>>) -> Response {
    let (tx, rx) = oneshot::channel();
    if cmds.send(Cmd::Metrics(tx)).await.is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, "stopping\n").into_response();
    }
    match rx.await {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "stopping\n").into_response(),
    }
}

/// The body of an end request (task, container or call): empty means the defaults.
fn end_request(body: &[u8]) -> Result<EndRequest, ApiError> {
    if body.is_empty() {
        return Ok(EndRequest::default());
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad(format!("request body: {e}")))
}
