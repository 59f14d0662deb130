//! `warden daemon`, `warden task ...` and `warden events`: the node daemon and its clients.
use std::path::{Path, PathBuf};

use anyhow::anyhow;

use super::Failure;
use crate::{
    daemon::{
        DaemonConfig,
        api::{Client, ClientError, StartRequest, TaskInfo},
    },
    lifecycle::{Launch, launch::LaunchError},
    loader::Engine,
    sandbox::{
        launch::Started,
        tty::{Pty, TtyArgs},
    },
    scope::{Mode, Scope, compile::CompiledScope},
};

pub use crate::daemon::api::DEFAULT_SOCKET;

#[derive(Debug, clap::Args)]
pub struct DaemonArgs {
    /// The daemon configuration (YAML, docs/daemon.md). Without it, every default applies.
    #[arg(long, value_name = "warden.yaml")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, clap::Args, Clone)]
pub struct SocketArg {
    /// The daemon's API socket.
    #[arg(long, env = "WARDEN_SOCKET", default_value = DEFAULT_SOCKET, global = true)]
    pub socket: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct TaskArgs {
    #[command(flatten)]
    pub socket: SocketArg,
    #[command(subcommand)]
    pub cmd: TaskCmd,
}

#[derive(Debug, clap::Subcommand)]
pub enum TaskCmd {
    /// Start a task: a new sandbox (or an existing cgroup, bound) held to a scope. Prints
    /// the task id.
    Start {
        #[arg(long, value_name = "SCOPE.yaml")]
        scope: PathBuf,
        /// Bind this existing cgroup (e.g. a container's) instead of creating a sandbox.
        #[arg(long, value_name = "PATH")]
        cgroup: Option<PathBuf>,
        /// Overrides the scope's mode.
        #[arg(long, value_enum)]
        mode: Option<Mode>,
        /// Also write the task's records (its whole hash chain) to this file.
        #[arg(long, value_name = "EVENTS.jsonl")]
        log: Option<PathBuf>,
        /// Print the task as JSON instead of its id.
        #[arg(long)]
        json: bool,
    },
    /// Run a command inside a task's sandbox, confined by its scope; exits with its status.
    Exec {
        id: String,
        #[command(flatten)]
        tty: TtyArgs,
        /// Run CMD as a call (a tool call, a pipeline stage) of the task, named NAME: its own
        /// cgroup, kernel slot and scope, every record of it carrying the call's id.
        #[arg(long, value_name = "NAME")]
        call: Option<String>,
        /// With --call: the call's scope, no wider than its parent's (default: the parent's).
        #[arg(long, value_name = "SCOPE.yaml", requires = "call")]
        scope: Option<PathBuf>,
        /// With --call: start it below this running call of the task (its id) instead of
        /// directly under the task.
        #[arg(long, value_name = "CALL_ID", requires = "call")]
        parent: Option<String>,
        /// With --call: why the call is made (`call_start.intent`).
        #[arg(long, value_name = "TEXT", requires = "call", conflicts_with = "intent_file")]
        intent: Option<String>,
        /// With --call: the intent, read from a file.
        #[arg(long, value_name = "FILE", requires = "call")]
        intent_file: Option<PathBuf>,
        #[arg(last = true, required = true, value_name = "CMD")]
        cmd: Vec<String>,
    },
    /// End a task: kill its processes, revoke its kernel state and secrets, remove its
    /// sandbox, record `task_end`, all together.
    End {
        id: String,
        /// Recorded as `task_end.reason`.
        #[arg(long)]
        reason: Option<String>,
    },
    /// List running tasks.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Print a task's signed identity document (check it with `warden identity verify`).
    Identity { id: String },
}

#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    #[command(flatten)]
    pub socket: SocketArg,
    /// Stream records as they are written (until interrupted, or until the task ends with
    /// --task).
    #[arg(long)]
    pub follow: bool,
    /// Only this task's records.
    #[arg(long, value_name = "ID")]
    pub task: Option<String>,
}

fn rt() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| Failure::Runtime(e.into()))
}

pub(super) fn client_failure(e: ClientError) -> Failure {
    if e.is_usage() { Failure::Usage(e.into()) } else { Failure::Runtime(e.into()) }
}

pub fn daemon(args: DaemonArgs) -> Result<i32, Failure> {
    let cfg = match &args.config {
        Some(p) => DaemonConfig::load(p).map_err(|e| Failure::Usage(e.into()))?,
        None => DaemonConfig::default(),
    };
    // In a pod: see containers' cgroups as the host lays them out (before any thread starts).
    match crate::daemon::join_host_cgroup_namespace() {
        Ok(true) => tracing::info!("joined the host's cgroup namespace"),
        Ok(false) => {}
        Err(e) => {
            return Err(Failure::Runtime(anyhow!(
                "cannot join the host's cgroup namespace (/proc/1/ns/cgroup): {e}; run the daemon with hostPID \
                 and CAP_SYS_ADMIN"
            )));
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(e.into()))?;
    rt.block_on(crate::daemon::run(cfg)).map_err(Failure::Runtime)?;
    Ok(0)
}

pub fn task(args: TaskArgs) -> Result<i32, Failure> {
    let client = Client::new(&args.socket.socket);
    let rt = rt()?;
    match args.cmd {
        TaskCmd::Start { scope, cgroup, mode, log, json } => {
            let req = start_request(&scope, mode, cgroup, log.map(absolute), false, None)?;
            let info = rt.block_on(client.start(&req)).map_err(client_failure)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&info).map_err(|e| Failure::Runtime(e.into()))?);
            } else {
                println!("{}", info.id);
            }
            Ok(0)
        }
        TaskCmd::Exec { id, tty, call, scope, parent, intent, intent_file, cmd } => {
            let info = match call {
                None => rt.block_on(client.task(&id)).map_err(client_failure)?,
                Some(name) => {
                    let req =
                        call_request(name, scope.as_deref(), parent, intent, intent_file.as_deref(), &cmd)?;
                    let c = rt.block_on(client.start_call(&id, &req)).map_err(client_failure)?;
                    tracing::info!(call = %c.call, "call started");
                    c.task
                }
            };
            let pty =
                tty.open().map_err(|e| Failure::Runtime(anyhow!("opening the task's terminal: {e}")))?;
            rt.block_on(async {
                // The task's enforcement is the daemon's: its processes outlive this client.
                let oom_before = crate::sandbox::limits::task_oom_kills(&info.procs_files, &info.cgroup);
                let mut child = spawn_in_task(&info, &cmd, false, pty.as_ref())
                    .map_err(|e| Failure::Runtime(anyhow!("cannot start {}: {e}", cmd[0])))?;
                let relay = pty
                    .map(Pty::relay)
                    .transpose()
                    .map_err(|e| Failure::Runtime(anyhow!("relaying the task's terminal: {e}")))?;
                let status = child.main_exit().await.map_err(|e| Failure::Runtime(e.into()))?;
                // Processes CMD left behind keep the daemon's task (and lose the terminal).
                if let Some(r) = relay {
                    r.finish();
                }
                // Killed at the task's memory limit (by this command or another of the task's
                // processes while it ran): say so; the daemon records it.
                let oom_after = crate::sandbox::limits::task_oom_kills(&info.procs_files, &info.cgroup);
                if let (Some(b), Some(a)) = (oom_before, oom_after)
                    && a > b
                {
                    eprintln!("warden: {}", crate::sandbox::limits::oom_message(a - b, None));
                }
                Ok(super::run::exit_code(status, "exited"))
            })
        }
        TaskCmd::End { id, reason } => {
            let r = rt.block_on(client.end(&id, reason)).map_err(client_failure)?;
            let when = if r.already { "had already ended" } else { "ended" };
            println!("{} {when}: {} (killed {}, drops {})", r.id, r.reason, r.killed, r.drops);
            for e in &r.errors {
                eprintln!("warden: revocation step failed: {e}");
            }
            Ok(if r.errors.is_empty() { 0 } else { 1 })
        }
        TaskCmd::List { json } => {
            let tasks = rt.block_on(client.list()).map_err(client_failure)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&tasks).map_err(|e| Failure::Runtime(e.into()))?);
            } else {
                println!("{:<28} {:>5} {:<8} {:<9} {:>6}  CGROUP", "TASK", "SLOT", "MODE", "ENGINE", "PROCS");
                for t in tasks {
                    println!(
                        "{:<28} {:>5} {:<8} {:<9} {:>6}  {}",
                        t.id,
                        t.slot,
                        t.mode,
                        t.engine,
                        t.processes,
                        t.cgroup.display()
                    );
                }
            }
            Ok(0)
        }
        TaskCmd::Identity { id } => {
            let doc = rt.block_on(client.identity(&id)).map_err(client_failure)?;
            println!("{}", serde_json::to_string_pretty(&doc).map_err(|e| Failure::Runtime(e.into()))?);
            Ok(0)
        }
    }
}

pub fn events(args: EventsArgs) -> Result<i32, Failure> {
    let client = Client::new(&args.socket.socket);
    let mut path = format!("/events?follow={}", args.follow);
    if let Some(t) = &args.task {
        if !t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.') {
            return Err(Failure::Usage(anyhow!("--task {t:?} is not a task id")));
        }
        path.push_str(&format!("&task={t}"));
    }
    let until_end = args.follow && args.task.is_some();
    let rt = rt()?;
    let mut pending: Vec<u8> = Vec::new();
    let mut saw_end = false;
    rt.block_on(client.stream(&path, |chunk| {
        use std::io::Write;
        pending.extend_from_slice(chunk);
        let mut out = std::io::stdout().lock();
        while let Some(i) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=i).collect();
            if out.write_all(&line).is_err() {
                return false;
            }
            // Following one task ends with its last record: the checkpoint after task_end.
            if until_end {
                let kind = kind_of(&line);
                if kind.as_deref() == Some("task_end") {
                    saw_end = true;
                } else if saw_end && kind.as_deref() == Some("checkpoint") {
                    let _ = out.flush();
                    return false;
                }
            }
        }
        out.flush().is_ok()
    }))
    .map_err(client_failure)?;
    Ok(0)
}

fn kind_of(line: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(line).ok()?;
    v.get("kind")?.as_str().map(str::to_string)
}

pub(super) fn absolute(p: PathBuf) -> PathBuf {
    if p.is_absolute() { p } else { std::env::current_dir().map(|d| d.join(&p)).unwrap_or(p) }
}

/// Builds a call's start request (`task exec --call`, `warden call`): the scope file read and
/// checked here (its narrowing is the daemon's to check), the intent read.
pub fn call_request(
    name: String,
    scope: Option<&Path>,
    parent: Option<String>,
    intent: Option<String>,
    intent_file: Option<&Path>,
    cmd: &[String],
) -> Result<crate::daemon::api::CallRequest, Failure> {
    let scope = scope
        .map(|p| Scope::load(p).map(|s| (s.text, absolute(p.to_path_buf()))))
        .transpose()
        .map_err(|e| Failure::Usage(e.into()))?;
    let intent = match intent_file {
        Some(f) => Some(
            std::fs::read(f)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .map_err(|e| Failure::Usage(anyhow!("--intent-file {}: {e}", f.display())))?,
        ),
        None => intent,
    };
    let (scope_text, scope_path) = scope.unzip();
    Ok(crate::daemon::api::CallRequest {
        name,
        parent,
        scope_text,
        scope_path,
        intent,
        cmd: cmd.to_vec(),
        cwd: std::env::current_dir().ok().map(|d| d.display().to_string()),
    })
}

/// Reads and checks a scope file and builds the start request (nothing is sent).
pub fn start_request(
    scope: &Path,
    mode: Option<Mode>,
    cgroup: Option<PathBuf>,
    log: Option<PathBuf>,
    end_when_empty: bool,
    cmd: Option<Vec<String>>,
) -> Result<StartRequest, Failure> {
    let parsed = Scope::load(scope).map_err(|e| Failure::Usage(e.into()))?;
    Ok(StartRequest {
        scope_text: parsed.text,
        scope_path: absolute(scope.to_path_buf()),
        mode: mode.map(|m| m.as_str().to_string()),
        cgroup,
        log,
        end_when_empty,
        cmd,
    })
}

/// Starts `cmd` inside a task's sandbox, exactly as `warden run` starts a task's first process
/// ([`crate::lifecycle::launch::spawn`]): behind the task's process boundary, it joins the
/// sandbox before its first instruction, gets the task's environment (issued secrets are named
/// by their variables) and, in enforce mode, the confinement compiled from the task's scope.
pub fn spawn_in_task(
    info: &TaskInfo,
    cmd: &[String],
    die_with_caller: bool,
    tty: Option<&Pty>,
) -> Result<Started, LaunchError> {
    spawn_in_task_io(info, cmd, die_with_caller, tty, None)
}

/// [`spawn_in_task`] on the given standard streams (the daemon's call endpoint).
pub fn spawn_in_task_io(
    info: &TaskInfo,
    cmd: &[String],
    die_with_caller: bool,
    tty: Option<&Pty>,
    stdio: Option<[std::os::fd::OwnedFd; 3]>,
) -> Result<Started, LaunchError> {
    let prep = |e: anyhow::Error| LaunchError::Scope(format!("{e:#}"));
    let mut scope = Scope::parse(&info.scope_text, &info.scope_path).map_err(|e| prep(e.into()))?;
    scope.mode = info.mode.parse().map_err(|e: String| prep(anyhow!(e)))?;
    if let Some(dir) = &info.secrets_dir {
        scope.place_issued_secrets(dir);
    }
    // What the daemon protects (its key, log, state, every task's secrets) is carved from this
    // confinement too: this process has none of the daemon's configuration, and a compile
    // without it would leave them readable and writable to the task on the fallback engine.
    if info.protected.is_empty() {
        return Err(prep(anyhow!(
            "the daemon did not say which paths it protects (an older daemon?): refusing to start a \
             process that could reach its key and log; run a `warden` of the daemon's version"
        )));
    }
    crate::scope::compile::protect_evidence(info.protected.iter().cloned());
    // The daemon's call endpoint stays reachable, as in the daemon's own compile.
    if let Some((_, p)) = info.env.iter().find(|(k, _)| k == crate::daemon::inside::ENV) {
        crate::scope::compile::allow_call_socket(PathBuf::from(p));
    }
    let engine: Engine = info.engine.parse().map_err(|e: String| prep(anyhow!(e)))?;
    // The confinement only: the daemon binds the kernel tables.
    let build = crate::scope::compile::Build::for_engine(engine.is_lsm(), false, true);
    let mut compiled = CompiledScope::compile_with(&scope, None, build).map_err(|e| prep(e.into()))?;
    // A call's processes may not fork into another cgroup (seccomp: `clone3` → ENOSYS).
    compiled.call = info.identity.call.is_some();
    let mut launch = Launch { procs_files: info.procs_files.clone(), env: info.env.clone() };
    launch.env.push(("WARDEN_TASK".into(), info.id.clone()));
    crate::lifecycle::launch::spawn_io(&launch, &compiled, engine, cmd, die_with_caller, tty, stdio)
}
