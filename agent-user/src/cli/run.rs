//! `warden run`: one task, one fresh sandbox, from the first instruction to the last process.
use std::{fs::File, path::PathBuf, process::ExitStatus, time::Duration};

use anyhow::{Context as _, anyhow};
use tokio::signal::unix::{SignalKind, signal};

use super::Failure;
use crate::{
    audit::{
        AuditRecord, AuditSink, Decision, JsonlSink,
        chain::NodeKey,
        clock::Clock,
        nats::NatsSink,
        sink::{RotatingJsonlSink, TeeSink},
    },
    correlate::ProcessTable,
    loader::{LoadOptions, Sensor},
    pipeline::{GapTracker, Mode, Pipeline, TaskCtx},
    sandbox::{
        Cgroup, cgroup2_mount, confine::Confinement, launch::spawn_into_cgroup, limits::PidsLimit,
        secrets::IssuedSecrets,
    },
    scope::{
        Scope,
        compile::{self, CompiledScope},
        raw::OnGap,
    },
    source::{EventSource, RingBufSource},
    task::{IdentityDoc, new_task_id, node_name, scope_hash},
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
    /// Overrides the scope's `mode`.
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    /// Rotate the log when it would grow past this many bytes: FILE → FILE.1 → FILE.2 ...
    #[arg(long, value_name = "BYTES")]
    pub log_max_bytes: Option<u64>,
    /// With --log-max-bytes: keep at most this many rotated files (default: all, so the whole
    /// chain stays verifiable).
    #[arg(long, value_name = "N", requires = "log_max_bytes")]
    pub log_keep: Option<usize>,
    /// Ring buffer size in bytes (a power of two, at least one page).
    #[arg(long, default_value_t = agent_common::maps::DEFAULT_RING_BYTES, value_parser = parse_ring_bytes)]
    pub ring_bytes: u32,
    /// After CMD exits, how long processes it left behind keep running (still watched and
    /// enforced) before the sandbox is frozen and killed, e.g. `250ms`, `2s`.
    #[arg(long, default_value = "250ms", value_parser = crate::util::parse_duration)]
    pub grace: Duration,
    /// Enforcement engine: `auto` uses BPF LSM where the kernel loads it, else the fallback.
    #[arg(long, value_enum, default_value = "auto")]
    pub engine: EngineChoice,
    /// The node's ed25519 key that signs the log's checkpoints (created 0600 on first use).
    #[arg(long, value_name = "PATH", default_value = crate::audit::chain::DEFAULT_KEY_PATH)]
    pub key: PathBuf,
    /// Also publish the records to this NATS JetStream server (stream WARDEN, subject
    /// warden.events.<node>.<task>), at least once, spooled to disk while it is unreachable.
    #[arg(long, value_name = "URL")]
    pub nats: Option<String>,
    /// The spool for --nats (default /var/lib/warden/spool/<task>.jsonl).
    #[arg(long, value_name = "PATH")]
    pub nats_spool: Option<PathBuf>,
    /// How long to wait at task end for the server to acknowledge everything.
    #[arg(long, default_value = "30s", value_parser = crate::util::parse_duration)]
    pub nats_wait: Duration,
    /// Evaluate these scope-drift rules live; findings become `finding` records.
    #[arg(long, value_name = "DIR")]
    pub rules: Option<PathBuf>,
    /// Write the task's signed workload-identity document here (`warden identity verify`).
    #[arg(long, value_name = "PATH")]
    pub identity: Option<PathBuf>,
    /// Where issued secrets (`secrets: [{name, from}]`) get their per-task tmpfs.
    #[arg(long, default_value = "/run/warden/secrets")]
    pub secrets_dir: PathBuf,
    /// Parent directory for the sandbox cgroup, relative to the cgroup2 mount.
    #[arg(long, default_value = "warden")]
    pub cgroup_parent: String,
    /// Never use the node daemon, even when one is running: load a private sensor.
    #[arg(long)]
    pub no_daemon: bool,
    /// The node daemon's API socket. When a daemon answers there (and no option it does not
    /// take is given: --nats, --rules, --log-max-bytes, --engine, --log -), the task runs
    /// through it.
    #[arg(long, env = "WARDEN_SOCKET", default_value = super::task::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub cmd: Vec<String>,
}

/// `--engine`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineChoice {
    Auto,
    #[value(name = "bpf-lsm")]
    BpfLsm,
    Fallback,
}

fn parse_ring_bytes(s: &str) -> Result<u32, String> {
    let v: u32 = s.parse().map_err(|e| format!("{e}"))?;
    if v < 4096 || !v.is_power_of_two() {
        return Err(format!("{v} is not a power of two >= 4096"));
    }
    Ok(v)
}

pub fn run(args: RunArgs) -> Result<i32, Failure> {
    let mut scope = Scope::load(&args.scope).map_err(|e| Failure::Usage(e.into()))?;
    if let Some(m) = args.mode {
        scope.mode = m;
    }
    // The log and the key are out of the task's reach: refused where the scope grants them
    // for writing explicitly, protected (like the node's state directory) otherwise.
    let mut evidence = vec![args.key.clone()];
    if args.log.as_os_str() != "-" {
        evidence.push(args.log.clone());
        // Rotated parts (`--log-max-bytes`): FILE.1, FILE.2, ...
        let keep = args.log_keep.unwrap_or(16).min(64);
        evidence.extend((1..=keep).map(|n| PathBuf::from(format!("{}.{n}", args.log.display()))));
        compile::evidence_in_write_grant(&scope, "--log", &args.log).map_err(|e| Failure::Usage(e.into()))?;
    }
    compile::evidence_in_write_grant(&scope, "--key", &args.key).map_err(|e| Failure::Usage(e.into()))?;
    compile::protect_evidence(evidence);
    // Issued secrets are placed once the task has an id; everything else is checked now.
    let compiled = CompiledScope::compile(&scope.for_validation()).map_err(|e| Failure::Usage(e.into()))?;
    let rules = match &args.rules {
        Some(dir) => Some(crate::rules::RuleSet::load_dir(dir).map_err(|e| Failure::Usage(e.into()))?),
        None => None,
    };
    if args.cgroup_parent.split('/').any(|c| c == "..") || args.cgroup_parent.starts_with('/') {
        return Err(Failure::Usage(anyhow!("--cgroup-parent must be a relative path without `..`")));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(e.into()))?;
    let daemon_capable = !args.no_daemon
        && args.nats.is_none()
        && args.rules.is_none()
        && args.log_max_bytes.is_none()
        && args.engine == EngineChoice::Auto
        && args.log.as_os_str() != "-";
    if daemon_capable {
        let client = crate::daemon::api::Client::new(&args.socket);
        if rt.block_on(client.is_up()) {
            tracing::info!(socket = %args.socket.display(), "running the task through the node daemon");
            return rt.block_on(run_via_daemon(args, client));
        }
    }
    rt.block_on(run_task(args, compiled, rules))
}

/// `warden run` through the node daemon: the daemon owns the sandbox, the kernel state and
/// the records (it writes the task's whole chain to --log); this process starts CMD in the
/// sandbox, waits, and asks the daemon to end the task.
async fn run_via_daemon(args: RunArgs, client: crate::daemon::api::Client) -> Result<i32, Failure> {
    use super::task::{absolute, client_failure, command_in_task};
    let log = absolute(args.log.clone());
    let req =
        super::task::start_request(&args.scope, args.mode, None, Some(log), true, Some(args.cmd.clone()))?;
    let info = client.start(&req).await.map_err(client_failure)?;
    if let Some(path) = &args.identity {
        std::fs::write(path, serde_json::to_string_pretty(&info.identity).map_err(runtime)? + "\n")
            .with_context(|| format!("writing identity document {}", path.display()))
            .map_err(runtime)?;
    }
    // As without a daemon: a command that cannot start ends the task, 127 if not found.
    let spawned = match command_in_task(&info, &args.cmd) {
        Ok(mut c) => c.spawn().map_err(|e| {
            let code = if e.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 };
            (code, anyhow!("cannot start {}: {e}", args.cmd[0]))
        }),
        Err(Failure::Usage(e) | Failure::Runtime(e)) => Err((126, e)),
    };
    let mut child = match spawned {
        Ok(c) => c,
        Err((code, e)) => {
            let _ = client.end(&info.id, Some("spawn failed".into())).await;
            eprintln!("warden: {e:#}");
            return Ok(code);
        }
    };
    let mut sigint = signal(SignalKind::interrupt()).map_err(runtime)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(runtime)?;
    let (status, reason) = tokio::select! {
        s = child.wait() => (Some(s.map_err(runtime)?), "exited".to_string()),
        _ = sigint.recv() => (None, "signal SIGINT".to_string()),
        _ = sigterm.recv() => (None, "signal SIGTERM".to_string()),
    };
    if status.is_some() {
        // Leftovers get the grace period, still watched and enforced.
        let deadline = tokio::time::Instant::now() + args.grace;
        while tokio::time::Instant::now() < deadline {
            match client.task(&info.id).await {
                Ok(t) if t.processes > 0 => tokio::time::sleep(Duration::from_millis(20)).await,
                _ => break,
            }
        }
    }
    let end = client.end(&info.id, Some(reason.clone())).await.map_err(client_failure)?;
    let status = match status {
        Some(s) => s,
        None => child.wait().await.map_err(runtime)?,
    };
    for e in &end.errors {
        eprintln!("warden: revocation step failed: {e}");
    }
    // The daemon may have ended the task first (ttl): its reason decides the exit code.
    Ok(exit_code(status, if end.already { &end.reason } else { &reason }))
}

fn runtime(e: impl Into<anyhow::Error>) -> Failure {
    Failure::Runtime(e.into())
}

async fn run_task(
    args: RunArgs,
    compiled: CompiledScope,
    rules: Option<crate::rules::RuleSet>,
) -> Result<i32, Failure> {
    let scope = &compiled.scope;
    let enforce = scope.mode == Mode::Enforce;

    let sink: Box<dyn AuditSink> = if args.log.as_os_str() == "-" {
        Box::new(JsonlSink::new(std::io::stdout()))
    } else if let Some(max) = args.log_max_bytes {
        Box::new(
            RotatingJsonlSink::create(&args.log, max, args.log_keep)
                .with_context(|| format!("cannot create log file {}", args.log.display()))
                .map_err(Failure::Usage)?,
        )
    } else {
        let f = File::create(&args.log)
            .with_context(|| format!("cannot create log file {}", args.log.display()))
            .map_err(Failure::Usage)?;
        Box::new(JsonlSink::new(f))
    };

    let mut sensor = Sensor::load(&LoadOptions { ring_bytes: args.ring_bytes, ..Default::default() })
        .context("loading kernel programs")
        .map_err(runtime)?;
    let lsm_engine = match args.engine {
        EngineChoice::Fallback => false,
        EngineChoice::BpfLsm => {
            sensor.attach_lsm_engine().context("--engine bpf-lsm").map_err(runtime)?;
            true
        }
        EngineChoice::Auto => match sensor.attach_lsm_engine() {
            Ok(()) => true,
            Err(e) => {
                // EPERM at load is a kernel that refuses BPF LSM; anything else (a verifier
                // rejection, a missing hook) is worth seeing.
                let msg = format!("{e:#}");
                if msg.contains("Operation not permitted") {
                    tracing::info!(error = %msg, "BPF LSM unavailable; using the fallback engine");
                } else {
                    tracing::warn!(error = %msg, "BPF LSM engine failed to attach; using the fallback engine");
                }
                false
            }
        },
    };
    let engine = if lsm_engine { "bpf-lsm" } else { "fallback" };
    let ring = sensor.take_ring().ok_or_else(|| anyhow!("ring buffer taken")).map_err(runtime)?;
    let mut source = RingBufSource::new(ring).context("polling the ring buffer").map_err(runtime)?;

    let task_id = new_task_id(&scope.task).context("task id").map_err(runtime)?;
    let mut issued = None;
    let compiled = if scope.has_issued_secrets() {
        let mut s = scope.clone();
        let secrets =
            IssuedSecrets::issue(&args.secrets_dir, &task_id, &s).map_err(|e| Failure::Usage(e.into()))?;
        s.place_issued_secrets(secrets.dir());
        // The guard destroys them on every way out, this error included.
        issued = Some(SecretsGuard(secrets));
        CompiledScope::compile(&s).map_err(|e| Failure::Usage(e.into()))?
    } else {
        // Again now that the log exists: the BPF LSM engine protects it by identity.
        CompiledScope::compile(&compiled.scope).map_err(|e| Failure::Usage(e.into()))?
    };
    let scope = &compiled.scope;
    let (sink, nats) = match &args.nats {
        None => (sink, None),
        Some(url) => {
            let spool = args
                .nats_spool
                .clone()
                .unwrap_or_else(|| PathBuf::from(format!("/var/lib/warden/spool/{task_id}.jsonl")));
            let node = node_name();
            let (nats_sink, handle) = NatsSink::start(url, &node, &spool)
                .with_context(|| format!("nats spool {}", spool.display()))
                .map_err(Failure::Usage)?;
            (Box::new(TeeSink(vec![sink, Box::new(nats_sink)])) as Box<dyn AuditSink>, Some((handle, spool)))
        }
    };
    let mount = cgroup2_mount().map_err(runtime)?;
    let parent = mount.join(&args.cgroup_parent);
    let cgroup = Cgroup::create(&parent, &task_id).map_err(runtime)?;
    let mut guard = SandboxGuard {
        cgroup: Some(cgroup.clone()),
        parent: parent.clone(),
        pids: None,
        parent_rel: args.cgroup_parent.clone(),
    };
    // Refusing confinement exists only in enforce mode; audit mode records what the kernel
    // hooks judge and refuses nothing.
    let confine =
        if enforce { Some(Confinement::prepare(&compiled, lsm_engine).map_err(runtime)?) } else { None };
    if enforce && let Some(max) = scope.process_limit {
        guard.pids = Some(PidsLimit::apply(&cgroup, &args.cgroup_parent, &task_id, max).map_err(runtime)?);
    }
    let mut procs_files = vec![cgroup.procs_file()];
    procs_files.extend(guard.pids.as_ref().and_then(PidsLimit::procs_file));
    sensor.attach_egress(&cgroup).map_err(runtime)?;
    sensor.bind(SLOT, &[cgroup.id()], &compiled).map_err(runtime)?;
    let unenforced = compiled.unenforced(lsm_engine);
    if unenforced.iter().any(|u| u == "secrets-by-tool") {
        tracing::warn!(
            "the fallback engine cannot tell tools apart: secrets are readable by every process of the task"
        );
    }

    let key = NodeKey::load_or_create(&args.key).map_err(runtime)?;
    let node = node_name();
    let started_ns = Clock::new().format(Clock::boot_now_ns());
    if let Some(path) = &args.identity {
        let expires = scope.ttl.map(|t| {
            crate::audit::clock::format_wall(
                i128::from(Clock::boot_now_ns()) + Clock::new().offset_ns() + t.as_nanos() as i128,
            )
        });
        let doc = IdentityDoc::new_signed(
            &key,
            &task_id,
            scope_hash(&scope.text),
            cgroup.id(),
            node.clone(),
            started_ns.clone(),
            expires,
        );
        std::fs::write(path, serde_json::to_string_pretty(&doc).map_err(runtime)? + "\n")
            .with_context(|| format!("writing identity document {}", path.display()))
            .map_err(runtime)?;
    }
    let mut pipeline = Pipeline::new(ProcessTable::seed_from("/proc".as_ref()), Clock::new(), sink);
    pipeline.set_signer(key);
    if let Some(set) = rules {
        pipeline.set_rules(set);
    }
    pipeline.register(SLOT, TaskCtx { id: task_id.clone(), mode: scope.mode });
    let clock = *pipeline.clock();
    let now = || clock.format(Clock::boot_now_ns());

    // Orphans of the task (daemonized, setsid'd) re-parent to us, so we reap them.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let start_time = now();
    let mut cmd = tokio::process::Command::new(&args.cmd[0]);
    cmd.args(&args.cmd[1..]);
    let issued_info: Vec<_> = issued.as_ref().map(|g| g.0.issued.clone()).unwrap_or_default();
    for s in &issued_info {
        cmd.env(&s.env, &s.path);
    }
    spawn_into_cgroup(&mut cmd, &procs_files, confine).map_err(runtime)?;
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
        mode: Some(scope.mode.as_str()),
        scope_hash: Some(scope_hash(&scope.text)),
        node: Some(node.clone()),
        engine: Some(engine),
        unenforced: (!unenforced.is_empty()).then_some(unenforced),
        secrets: (!issued_info.is_empty()).then_some(issued_info),
        ..Default::default()
    };
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            pipeline.emit(start).map_err(runtime)?;
            let end = AuditRecord {
                time: now(),
                task: task_id.clone(),
                kind: "task_end",
                decision: Some(Decision::Allow),
                reason: Some(format!("spawn failed: {e}")),
                ..Default::default()
            };
            pipeline.emit(end).and_then(|_| pipeline.flush()).map_err(runtime)?;
            sensor.unbind(SLOT, &compiled).map_err(runtime)?;
            guard.finish().map_err(Failure::Runtime)?;
            eprintln!("warden: cannot start {}: {e}", args.cmd[0]);
            return Ok(if e.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 });
        }
    };
    let child_pid = child.id();
    start.pid = child_pid;
    pipeline.emit(start).map_err(runtime)?;
    tracing::info!(task = %task_id, cgroup = %cgroup.path().display(), pid = ?child.id(), "task started");

    let mut sigint = signal(SignalKind::interrupt()).map_err(runtime)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(runtime)?;
    let ttl = scope.ttl;
    let expiry = async move {
        match ttl {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(expiry);
    // Evidence gaps (records lost in the kernel, undecodable records) are checked every
    // second and become `gap` records; a scope may ask to end the task on the first one.
    let mut gap_tick = tokio::time::interval(Duration::from_secs(1));
    let mut gaps = GapTracker::default();
    let (status, reason): (Option<ExitStatus>, String) = loop {
        tokio::select! {
            r = source.wait() => {
                r.map_err(runtime)?;
                source.drain(&mut |b| pipeline.ingest(b));
                pipeline.flush().map_err(runtime)?;
            }
            s = child.wait() => break (Some(s.map_err(runtime)?), "exited".to_string()),
            _ = sigint.recv() => break (None, "signal SIGINT".to_string()),
            _ = sigterm.recv() => break (None, "signal SIGTERM".to_string()),
            _ = &mut expiry => break (None, "ttl expired".to_string()),
            _ = gap_tick.tick() => {
                let drops = sensor.drops(SLOT).map_err(runtime)?;
                let gap = gaps.record(&mut pipeline, &task_id, drops.total).map_err(runtime)?;
                if gap && scope.on_gap == OnGap::End {
                    break (None, "evidence gap".to_string());
                }
            }
        }
    };

    // End of task: give leftovers the grace period (events keep flowing), then kill what is
    // left, collect the last records, and record the end.
    if status.is_some() {
        let deadline = tokio::time::Instant::now() + args.grace;
        while cgroup.populated().unwrap_or(false) && tokio::time::Instant::now() < deadline {
            tokio::select! {
                r = source.wait() => {
                    r.map_err(runtime)?;
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
        None => child.wait().await.map_err(runtime)?,
    };
    source.drain(&mut |b| pipeline.ingest(b));
    let drops = sensor.drops(SLOT).map_err(runtime)?;
    sensor.unbind(SLOT, &compiled).map_err(runtime)?;
    let code = exit_code(status, &reason);
    reap_orphans();
    gaps.record(&mut pipeline, &task_id, drops.total).map_err(runtime)?;
    let end = AuditRecord {
        time: now(),
        task: task_id.clone(),
        kind: "task_end",
        decision: Some(Decision::Allow),
        pid: child_pid,
        ppid: Some(std::process::id()),
        exit_status: status.code(),
        signal: std::os::unix::process::ExitStatusExt::signal(&status),
        reason: Some(reason),
        drops: Some(drops.total),
        decode_errors: Some(pipeline.decode_failures()),
        killed: Some(left),
        ..Default::default()
    };
    pipeline
        .emit(end)
        .and_then(|_| pipeline.checkpoint(&task_id))
        .and_then(|_| pipeline.flush())
        .map_err(runtime)?;
    if let Some(e) = pipeline.take_io_error() {
        return Err(runtime(anyhow!(e).context("writing audit records")));
    }
    killed.map_err(runtime)?;
    guard.finish().map_err(Failure::Runtime)?;
    if let Some((handle, spool)) = nats {
        let st = handle.close(args.nats_wait).map_err(runtime)?;
        if st.pending > 0 {
            eprintln!(
                "warden: NATS did not acknowledge everything within {:?}; unsent records stay in {} \
                 (publish them with `warden nats flush {} --url URL`)",
                args.nats_wait,
                spool.display(),
                spool.display()
            );
        } else {
            tracing::info!(published = st.published, "all records acknowledged by NATS");
        }
    }
    Ok(code)
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

/// Exit code of `warden run`: when Warden ended the task, 130 (SIGINT), 143 (SIGTERM) or 124
/// (ttl expired, as timeout(1) reports); otherwise the command's status, or 128+signal.
pub(super) fn exit_code(status: ExitStatus, reason: &str) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    match reason {
        r if r.contains("SIGINT") => 130,
        r if r.contains("SIGTERM") => 143,
        r if r.contains("ttl") => 124,
        r if r.contains("evidence gap") => 125,
        _ => status.code().or_else(|| status.signal().map(|s| 128 + s)).unwrap_or(1),
    }
}

/// Destroys a task's issued secrets on every exit path.
struct SecretsGuard(IssuedSecrets);

impl Drop for SecretsGuard {
    fn drop(&mut self) {
        if let Err(e) = self.0.destroy() {
            tracing::error!(error = %e, "destroying issued secrets failed");
        }
    }
}

/// Removes the sandbox (and its pids twin) on every exit path, killing what is left in it.
struct SandboxGuard {
    cgroup: Option<Cgroup>,
    parent: PathBuf,
    pids: Option<PidsLimit>,
    parent_rel: String,
}

impl SandboxGuard {
    fn finish(&mut self) -> anyhow::Result<()> {
        if let Some(cg) = self.cgroup.take() {
            cg.kill_all(KILL_TIMEOUT)?;
            cg.remove()?;
            if let Some(p) = self.pids.take() {
                p.remove(&self.parent_rel);
            }
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
    fn ring_sizes_must_be_page_multiples_of_two() {
        assert_eq!(parse_ring_bytes("4096"), Ok(4096));
        assert!(parse_ring_bytes("5000").is_err());
        assert!(parse_ring_bytes("1024").is_err());
    }
}
