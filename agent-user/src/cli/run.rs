//! `warden run`: one task, one fresh sandbox, from the first instruction to the last process.
use std::{fs::File, path::PathBuf, process::ExitStatus, time::Duration};

use anyhow::{Context as _, anyhow};
use tokio::signal::unix::{SignalKind, signal};

use super::Failure;
use crate::{
    audit::{AuditRecord, Decision, JsonlSink, clock::Clock},
    correlate::ProcessTable,
    loader::{LoadOptions, Sensor},
    pipeline::{Mode, Pipeline, TaskCtx},
    sandbox::{Cgroup, cgroup2_mount, launch::spawn_into_cgroup},
    scope::Scope,
    source::{EventSource, RingBufSource},
    task::new_task_id,
};

/// The slot a standalone `warden run` uses in its own sensor.
const SLOT: u32 = 0;
/// How long processes get to die after `cgroup.kill`.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The task scope (YAML).
    #[arg(long, value_name = "SCOPE.yaml")]
    pub scope: PathBuf,
    /// Where audit records go (JSON Lines; created or truncated). `-` for stdout.
    #[arg(long, value_name = "EVENTS.jsonl")]
    pub log: PathBuf,
    /// enforce: refuse out-of-scope actions; audit: record them as "audit" and allow.
    #[arg(long, value_enum, default_value = "enforce")]
    pub mode: Mode,
    /// Ring buffer size in bytes (a power of two, at least one page).
    #[arg(long, default_value_t = agent_common::maps::DEFAULT_RING_BYTES, value_parser = parse_ring_bytes)]
    pub ring_bytes: u32,
    /// After CMD exits, how long processes it left behind keep running (still watched and
    /// enforced) before the sandbox is frozen and killed, e.g. `250ms`, `2s`.
    #[arg(long, default_value = "250ms", value_parser = parse_duration)]
    pub grace: Duration,
    /// Parent directory for the sandbox cgroup, relative to the cgroup2 mount.
    #[arg(long, default_value = "warden")]
    pub cgroup_parent: String,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub cmd: Vec<String>,
}

/// Parses `<n>ms`, `<n>s` or `<n>m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.find(|c: char| !c.is_ascii_digit()).map(|i| s.split_at(i)).unwrap_or((s, "s"));
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a duration like 250ms, 2s or 5m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("{s:?}: unknown unit {unit:?}; use ms, s, m or h")),
    }
}

fn parse_ring_bytes(s: &str) -> Result<u32, String> {
    let v: u32 = s.parse().map_err(|e| format!("{e}"))?;
    if v < 4096 || !v.is_power_of_two() {
        return Err(format!("{v} is not a power of two >= 4096"));
    }
    Ok(v)
}

pub fn run(args: RunArgs) -> Result<i32, Failure> {
    let scope = Scope::load(&args.scope).map_err(|e| Failure::Usage(e.into()))?;
    if args.cgroup_parent.split('/').any(|c| c == "..") || args.cgroup_parent.starts_with('/') {
        return Err(Failure::Usage(anyhow!("--cgroup-parent must be a relative path without `..`")));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(e.into()))?;
    rt.block_on(run_task(args, scope))
}

async fn run_task(args: RunArgs, scope: Scope) -> Result<i32, Failure> {
    let usage = |e: anyhow::Error| Failure::Usage(e);
    let runtime = |e: anyhow::Error| Failure::Runtime(e);

    let sink: Box<dyn crate::audit::AuditSink> = if args.log.as_os_str() == "-" {
        Box::new(JsonlSink::new(std::io::stdout()))
    } else {
        let f = File::create(&args.log)
            .with_context(|| format!("cannot create log file {}", args.log.display()))
            .map_err(usage)?;
        Box::new(JsonlSink::new(f))
    };

    let mut sensor = Sensor::load(&LoadOptions { ring_bytes: args.ring_bytes, ..Default::default() })
        .context("loading kernel programs")
        .map_err(runtime)?;
    let mut source =
        RingBufSource::new(sensor.take_ring().ok_or_else(|| anyhow!("ring buffer taken")).map_err(runtime)?)
            .context("polling the ring buffer")
            .map_err(runtime)?;

    let task_id = new_task_id(&scope.task).context("task id").map_err(runtime)?;
    let mount = cgroup2_mount().map_err(|e| runtime(e.into()))?;
    let parent = mount.join(&args.cgroup_parent);
    let cgroup = Cgroup::create(&parent, &task_id).map_err(|e| runtime(e.into()))?;
    let mut guard = SandboxGuard { cgroup: Some(cgroup.clone()), parent: parent.clone() };
    sensor.watch(&[cgroup.id()], SLOT).map_err(|e| runtime(e.into()))?;

    let mut pipeline = Pipeline::new(ProcessTable::seed_from("/proc".as_ref()), Clock::new(), sink);
    pipeline.register(SLOT, TaskCtx { id: task_id.clone(), mode: args.mode });
    let clock = *pipeline.clock();
    let now = || clock.format(Clock::boot_now_ns());

    // Orphans of the task (daemonized, setsid'd) re-parent to us, so we reap them.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let start_time = now();
    let mut cmd = tokio::process::Command::new(&args.cmd[0]);
    cmd.args(&args.cmd[1..]);
    spawn_into_cgroup(&mut cmd, &cgroup.procs_file()).map_err(|e| runtime(e.into()))?;
    let spawned = cmd.spawn();

    let mut start = AuditRecord {
        time: start_time,
        task: task_id.clone(),
        kind: "task_start",
        decision: Some(Decision::Allow),
        ppid: Some(std::process::id()),
        exe: which_exe(&args.cmd[0]),
        scope: Some(scope.source.display().to_string()),
        cmd: Some(args.cmd.clone()),
        cgroup: Some(cgroup.path().display().to_string()),
        cgroup_id: Some(cgroup.id()),
        mode: Some(args.mode.as_str()),
        ..Default::default()
    };
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            pipeline.emit(start).map_err(|e| runtime(e.into()))?;
            let end = AuditRecord {
                time: now(),
                task: task_id.clone(),
                kind: "task_end",
                decision: Some(Decision::Allow),
                reason: Some(format!("spawn failed: {e}")),
                ..Default::default()
            };
            pipeline.emit(end).and_then(|_| pipeline.flush()).map_err(|e| runtime(e.into()))?;
            guard.finish().map_err(runtime)?;
            eprintln!("warden: cannot start {}: {e}", args.cmd[0]);
            return Ok(if e.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 });
        }
    };
    start.pid = child.id();
    pipeline.emit(start).map_err(|e| runtime(e.into()))?;
    tracing::info!(task = %task_id, cgroup = %cgroup.path().display(), pid = ?child.id(), "task started");

    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| runtime(e.into()))?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(|e| runtime(e.into()))?;
    let (status, reason): (Option<ExitStatus>, String) = loop {
        tokio::select! {
            r = source.wait() => {
                r.map_err(|e| runtime(e.into()))?;
                source.drain(&mut |b| pipeline.ingest(b));
                pipeline.flush().map_err(|e| runtime(e.into()))?;
            }
            s = child.wait() => {
                let s = s.map_err(|e| runtime(e.into()))?;
                break (Some(s), "exited".to_string());
            }
            _ = sigint.recv() => break (None, "signal SIGINT".to_string()),
            _ = sigterm.recv() => break (None, "signal SIGTERM".to_string()),
        }
    };

    // End of task: give leftovers the grace period (events keep flowing), then kill what is
    // left, collect the last records, and record the end.
    if status.is_some() {
        let deadline = tokio::time::Instant::now() + args.grace;
        while cgroup.populated().unwrap_or(false) && tokio::time::Instant::now() < deadline {
            tokio::select! {
                r = source.wait() => {
                    r.map_err(|e| runtime(e.into()))?;
                    source.drain(&mut |b| pipeline.ingest(b));
                }
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
            }
        }
    }
    let left = cgroup.pids().map(|p| p.len() as u64).unwrap_or(0);
    let killed = cgroup.kill_all(KILL_TIMEOUT);
    let status = match status {
        Some(s) => s,
        None => child.wait().await.map_err(|e| runtime(e.into()))?,
    };
    source.drain(&mut |b| pipeline.ingest(b));
    let drops = sensor.drops(SLOT).map_err(|e| runtime(e.into()))?;
    sensor.unwatch_slot(SLOT).map_err(|e| runtime(e.into()))?;
    let code = exit_code(status, &reason);
    reap_orphans();
    let end = AuditRecord {
        time: now(),
        task: task_id.clone(),
        kind: "task_end",
        decision: Some(Decision::Allow),
        pid: start_pid(&child),
        ppid: Some(std::process::id()),
        exit_status: status.code(),
        signal: std::os::unix::process::ExitStatusExt::signal(&status),
        reason: Some(reason),
        drops: Some(drops.total),
        decode_errors: Some(pipeline.decode_failures()),
        killed: Some(left),
        ..Default::default()
    };
    pipeline.emit(end).and_then(|_| pipeline.flush()).map_err(|e| runtime(e.into()))?;
    if let Some(e) = pipeline.take_io_error() {
        return Err(runtime(anyhow!(e).context("writing audit records")));
    }
    killed.map_err(|e| runtime(e.into()))?;
    guard.finish().map_err(runtime)?;
    Ok(code)
}

fn start_pid(child: &tokio::process::Child) -> Option<u32> {
    child.id()
}

/// Reaps every exited child (orphans that re-parented to us as subreaper). Called only after
/// the task's own child was waited for, so it cannot steal its status.
fn reap_orphans() {
    loop {
        // SAFETY: plain waitpid with a null status pointer.
        let r = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) };
        if r <= 0 {
            break;
        }
    }
}

/// The absolute path `cmd` resolves to through `PATH`, as exec would find it.
fn which_exe(cmd: &str) -> Option<String> {
    if cmd.contains('/') {
        return std::fs::canonicalize(cmd).ok().map(|p| p.display().to_string());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(cmd))
        .find(|p| std::fs::metadata(p).map(|m| m.is_file()).unwrap_or(false))
        .map(|p| p.display().to_string())
}

/// Exit code of `warden run`: the command's, or 128+signal (shell convention).
fn exit_code(status: ExitStatus, reason: &str) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    if let Some(c) = status.code() {
        return c;
    }
    if let Some(s) = status.signal() {
        return 128 + s;
    }
    if reason.contains("SIGINT") { 130 } else { 143 }
}

/// Removes the sandbox cgroup on every exit path, killing what is left in it.
struct SandboxGuard {
    cgroup: Option<Cgroup>,
    parent: PathBuf,
}

impl SandboxGuard {
    fn finish(&mut self) -> anyhow::Result<()> {
        if let Some(cg) = self.cgroup.take() {
            cg.kill_all(KILL_TIMEOUT)?;
            cg.remove()?;
            // The shared parent goes too once no other task uses it.
            let _ = std::fs::remove_dir(&self.parent);
        }
        Ok(())
    }
}

impl Drop for SandboxGuard {
    fn drop(&mut self) {
        if let Err(e) = self.finish() {
            tracing::error!(error = %e, "sandbox cleanup failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("ms").is_err());
    }

    #[test]
    fn ring_sizes_must_be_page_multiples_of_two() {
        assert_eq!(parse_ring_bytes("4096"), Ok(4096));
        assert!(parse_ring_bytes("5000").is_err());
        assert!(parse_ring_bytes("1024").is_err());
    }
}
