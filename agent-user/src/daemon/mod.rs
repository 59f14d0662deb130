//! `warden daemon`: one per node. Loads and pins the kernel side, serves the task API on a
//! unix socket and metrics on loopback, and writes the node's audit log.
//!
//! ```text
//! API handler ──Cmd──▶ core (sensor, pipeline, tasks) ──▶ node log, task logs, event stream
//!                         ▲
//!      ring buffer ───────┘
//! ```
//! See `docs/daemon.md`.
pub mod api;
pub mod config;
pub mod core;
pub mod inside;
pub mod metrics;
pub mod protocol;
pub mod server;
pub mod state;

use std::{
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::Path,
    sync::Arc,
};

use anyhow::Context as _;
use tokio::{
    net::UnixListener,
    signal::unix::{SignalKind, signal},
    sync::{broadcast, mpsc},
};

pub use self::config::DaemonConfig;
use self::{
    core::{Core, Shared},
    server::{AppState, Peer},
};

/// Takes the node-wide lock: one daemon per state directory. Held for the process's life.
fn lock(state_dir: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(state_dir)?;
    let path = state_dir.join("daemon.lock");
    let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path)?;
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        anyhow::bail!("another warden daemon holds {} (one daemon per node)", path.display());
    }
    Ok(f)
}

/// Binds the API socket: its directory 0700, the socket 0600, a stale socket replaced.
fn bind_socket(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!("{} is served by another process", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    // Created 0600 from the start: no window where others could connect.
    // SAFETY: umask only affects this process's file creation.
    let old = unsafe { libc::umask(0o177) };
    let l = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let l = l.with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Joins the cgroup namespace of pid 1 when it is not ours (a daemon in a pod with
/// `hostPID`): container cgroup paths in `/proc/PID/cgroup` are then the host's, as the
/// cgroup2 mount (the host's, by `hostPath`) lays them out. Must run before any thread
/// starts (a namespace is joined per thread). Returns whether it joined.
pub fn join_host_cgroup_namespace() -> std::io::Result<bool> {
    let ours = std::fs::read_link("/proc/self/ns/cgroup")?;
    let Ok(host) = std::fs::read_link("/proc/1/ns/cgroup") else { return Ok(false) };
    if ours == host {
        return Ok(false);
    }
    let f = std::fs::File::open("/proc/1/ns/cgroup")?;
    // SAFETY: setns on a namespace descriptor we own; affects only this (still single) thread.
    if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWCGROUP) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(true)
}

/// Runs the daemon until SIGTERM or SIGINT. Running tasks stay enforced after it exits.
pub async fn run(cfg: DaemonConfig) -> anyhow::Result<()> {
    let _lock = lock(&cfg.state_dir)?;
    let (stream_tx, _) = broadcast::channel(4096);
    let shared = Arc::new(Shared::default());
    let socket = cfg.socket.clone();
    let metrics_addr = cfg.metrics.listen;
    let tokens_addr = cfg.tokens.listen;
    let log = cfg.log.path.clone();
    let core = Core::start(cfg, stream_tx.clone(), shared.clone()).context("starting the daemon")?;
    let startup = core.startup.clone();
    if let Some(addr) = tokens_addr {
        let l = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("tokens.listen {addr}"))?;
        let app = crate::creds::node::token_router(core.token_endpoint());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(l, app).await {
                tracing::error!(error = %e, "token endpoint failed");
            }
        });
    }
    let (cmd_tx, cmd_rx) = mpsc::channel(64);
    let state = AppState {
        cmds: cmd_tx.clone(),
        stream: stream_tx,
        shared,
        log,
        cgroup_mount: crate::sandbox::cgroup2_mount()?,
    };
    let cgroup_mount = state.cgroup_mount.clone();
    let listener = bind_socket(&socket)?;
    // The call endpoint inside tasks, beside the API socket (docs/daemon.md, Calls).
    let call_socket = inside::socket_path(&socket);
    crate::scope::compile::allow_call_socket(call_socket.clone());
    inside::serve(&call_socket, cmd_tx.clone(), cgroup_mount, tokio::runtime::Handle::current())
        .with_context(|| format!("serving the call endpoint {}", call_socket.display()))?;
    let app = server::api_router(state).into_make_service_with_connect_info::<Peer>();
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "API server failed");
        }
    });
    if let Some(addr) = metrics_addr {
        let l =
            tokio::net::TcpListener::bind(addr).await.with_context(|| format!("metrics.listen {addr}"))?;
        let app = server::metrics_router(cmd_tx.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(l, app).await {
                tracing::error!(error = %e, "metrics server failed");
            }
        });
    }
    return_freed_heap();
    // One line on stdout for supervisors and tests: what was adopted and migrated.
    println!("{}", serde_json::json!({"ready": true, "socket": socket, "startup": startup}));
    tracing::info!(socket = %socket.display(), version = %startup.version, "warden daemon ready");
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    };
    core.run(cmd_rx, shutdown).await;
    let _ = std::fs::remove_file(&socket);
    inside::remove(&call_socket);
    Ok(())
}

/// Gives the heap that start-up freed (the kernel BTF read twice, the eBPF object) back to the
/// kernel. glibc keeps freed memory below its trim threshold mapped, and a daemon lives for
/// days: measured, this is ≈ 16 MiB of an idle daemon's RSS (`docs/benchmarks.md`).
fn return_freed_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim(3) takes a size and touches only the allocator's own state.
    unsafe {
        libc::malloc_trim(0);
    }
}
