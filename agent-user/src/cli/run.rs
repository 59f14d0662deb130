//! `warden run`: one task, one fresh sandbox, from the first instruction to the last process.
use std::{fs::File, path::PathBuf, process::ExitStatus, time::Duration};

use anyhow::{Context as _, anyhow};
use tokio::signal::unix::{SignalKind, signal};

use super::Failure;
use crate::kaudit::feed::Feed;
use crate::{
    audit::{
        AuditSink, JsonlSink,
        chain::NodeKey,
        clock::Clock,
        nats::NatsSink,
        sink::{RotatingJsonlSink, TeeSink},
    },
    correlate::ProcessTable,
    lifecycle::{
        EndFacts, Launched, Lifecycle, Live, Node, Running, SandboxSpec, Task,
        launch::{self, LaunchError},
    },
    loader::{Engine, EngineChoice, LoadOptions, Sensor, select_engine},
    pipeline::Pipeline,
    sandbox::cgroup2_mount,
    sandbox::launch::Started,
    sandbox::tty::{Pty, TtyArgs},
    scope::{
        Mode, Scope,
        compile::{self, CompiledScope},
        raw::OnGap,
    },
    source::{
        EventSource, RingBufSource,
        handoff::{self, Handoff},
    },
    task::{new_task_id, node_name},
};

/// The slot a standalone `warden run` uses in its own sensor.
const SLOT: u32 = 0;

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
    /// Say nothing at task end (by default the refused actions are summed up on stderr).
    #[arg(short, long)]
    pub quiet: bool,
    /// Never use the node daemon, even when one is running: load a private sensor.
    #[arg(long)]
    pub no_daemon: bool,
    /// The node daemon's API socket. When a daemon answers there (and no option it does not
    /// take is given: --nats, --rules, --log-max-bytes, --engine, --log -), the task runs
    /// through it.
    #[arg(long, env = "WARDEN_SOCKET", default_value = super::task::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    #[command(flatten)]
    pub tty: TtyArgs,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub cmd: Vec<String>,
}

fn parse_ring_bytes(s: &str) -> Result<u32, String> {
    let v: u32 = s.parse().map_err(|e| format!("{e}"))?;
    if v < 4096 || !v.is_power_of_two() {
        return Err(format!("{v} is not a power of two >= 4096"));
    }
    Ok(v)
}

/// The directory holding `p` when it is a shared temporary one: `/tmp`, `/var/tmp`,
/// `/dev/shm`, or any world-writable sticky directory.
fn shared_temp_parent(p: &std::path::Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let abs = std::path::absolute(p).ok()?;
    let dir = std::fs::canonicalize(abs.parent()?).ok()?;
    let mode = std::fs::metadata(&dir).ok()?.permissions().mode();
    let known = ["/tmp", "/var/tmp", "/dev/shm"].iter().any(|t| dir == std::path::Path::new(t));
    (known || mode & 0o1002 == 0o1002).then_some(dir)
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
    if !args.quiet {
        // A writable directory whose programs may run is arbitrary code: say so where it runs.
        for w in compiled.exec_dir_warnings() {
            eprintln!("warden: warning: {w}");
        }
        // Evidence directly in a shared temporary directory, with files.write omitted: what
        // protects it also refuses every new name there (`mktemp` in /tmp): say so at start.
        if scope.write.is_none() {
            for (what, p) in [("--log", &args.log), ("--key", &args.key)] {
                if let Some(dir) = shared_temp_parent(p) {
                    eprintln!(
                        "warden: note: {what} {} is directly in {}, a directory every process writes: to keep it \
                         out of the task's reach the task may not create new files directly in {} (refused and \
                         recorded); put {what} in a directory of its own (e.g. /var/log/warden/)",
                        p.display(),
                        dir.display(),
                        dir.display()
                    );
                }
            }
        }
    }
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
    if scope.has_brokered_secrets() {
        // The broker, the values and the revocation queue live in the node daemon.
        return Err(Failure::Usage(anyhow!(
            "{}: brokered secrets (`from: exec:` and `from: token`) are minted, served and revoked by the \
             node daemon; start `warden daemon` (and leave out --no-daemon and options it does not take: \
             --nats, --rules, --log-max-bytes, --engine, --log -)",
            args.scope.display()
        )));
    }
    rt.block_on(run_task(args, compiled, rules))
}

/// `warden run` through the node daemon: the daemon owns the sandbox, the kernel state and
/// the records (it writes the task's whole chain to --log); this process starts CMD in the
/// sandbox, waits, and asks the daemon to end the task.
async fn run_via_daemon(args: RunArgs, client: crate::daemon::api::Client) -> Result<i32, Failure> {
    use super::task::{absolute, client_failure, spawn_in_task};
    let log = absolute(args.log.clone());
    let req =
        super::task::start_request(&args.scope, args.mode, None, Some(log), true, Some(args.cmd.clone()))?;
    let info = client.start(&req).await.map_err(client_failure)?;
    if let Some(path) = &args.identity {
        std::fs::write(path, serde_json::to_string_pretty(&info.identity).map_err(runtime)? + "\n")
            .with_context(|| format!("writing identity document {}", path.display()))
            .map_err(runtime)?;
    }
    // As without a daemon: a command that cannot start ends the task, 127 if not found. This
    // process owns the command: it dies with it.
    let pty = match args.tty.open() {
        Ok(p) => p,
        Err(e) => {
            let _ = client.end(&info.id, Some("spawn failed".into())).await;
            return Err(runtime(anyhow!(e).context("opening the task's terminal")));
        }
    };
    let spawned = spawn_in_task(&info, &args.cmd, true, pty.as_ref()).map_err(|e| match e {
        LaunchError::Spawn(e) => {
            let code = if e.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 };
            (code, anyhow!("cannot start {}: {e}", args.cmd[0]))
        }
        e => (126, anyhow!("cannot start {}: {e}", args.cmd[0])),
    });
    let mut child = match spawned {
        Ok(c) => c,
        Err((code, e)) => {
            let _ = client.end(&info.id, Some("spawn failed".into())).await;
            eprintln!("warden: {e:#}");
            return Ok(code);
        }
    };
    let relay = match pty.map(Pty::relay).transpose() {
        Ok(r) => r,
        Err(e) => {
            let _ = client.end(&info.id, Some("spawn failed".into())).await;
            return Err(runtime(anyhow!(e).context("relaying the task's terminal")));
        }
    };
    let mut signals = EndSignals::new().map_err(runtime)?;
    let (status, reason) = tokio::select! {
        s = child.main_exit() => (Some(s.map_err(runtime)?), "exited".to_string()),
        sig = signals.recv() => (None, format!("signal {sig}")),
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
        None => child.main_exit().await.map_err(runtime)?,
    };
    child.finish().await.map_err(runtime)?;
    if let Some(r) = relay {
        r.finish();
    }
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
    let scope = compiled.scope;

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
    let engine = select_engine(&mut sensor, args.engine).context("--engine bpf-lsm").map_err(runtime)?;
    let ring = sensor.take_ring().ok_or_else(|| anyhow!("ring buffer taken")).map_err(runtime)?;
    // Drained on its own thread into a bounded hand-off, so rules and sinks never hold up the
    // kernel ring (source/handoff.rs); its overflow counts as lost records.
    let mut source = Handoff::start(move || RingBufSource::new(ring), handoff::DEFAULT_BYTES)
        .context("polling the ring buffer")
        .map_err(runtime)?;
    // Refusals of Landlock and seccomp reach Warden only through the kernel's audit records;
    // read from before the first process starts.
    let mut feed = if scope.mode == crate::scope::Mode::Enforce { Feed::open_or_warn() } else { None };

    let task_id = new_task_id(&scope.task).context("task id").map_err(runtime)?;
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
    let key = NodeKey::load_or_create(&args.key).map_err(runtime)?;
    // Egress by name: a resolver of this run's own (the first free port on the slot address).
    let resolver = match scope.dns {
        Some(_) => Some(crate::dns::Resolver::new(
            sensor.egress_handle().map_err(runtime)?,
            crate::dns::DEFAULT_ADDR_BASE,
            SLOT + 1,
            0,
        )),
        None => None,
    };
    let node = Node {
        cgroup_mount: cgroup2_mount().map_err(runtime)?,
        cgroup_parent: args.cgroup_parent.clone(),
        secrets_dir: args.secrets_dir.clone(),
        key: key.clone(),
        name: node_name(),
        creds: None,
        resolver,
        memory_default: crate::sandbox::limits::default_memory(),
    };
    let mut pipeline = Pipeline::new(ProcessTable::seed_from("/proc".as_ref()), Clock::new(), sink);
    pipeline.set_signer(key);
    if let Some(set) = rules {
        pipeline.set_rules(set);
    }

    // Orphans of the task (daemonized, setsid'd) re-parent to us, so we reap them.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let lc = Lifecycle::default();
    // The first process starts once every step has, before `task_start` (which carries its
    // pid). What fails before the exec is recorded as the task's end.
    let mut spawned: Option<Result<Started, LaunchFailure>> = None;
    let pty = args.tty.open().context("opening the task's terminal").map_err(runtime)?;
    let task = Task::new(task_id.clone(), SLOT, scope, SandboxSpec::Create);
    let started = {
        let mut host =
            Live::new(&node, &mut sensor, Some(&mut source), &mut pipeline).with_feed(feed.as_mut());
        lc.start(task, &mut host, &mut |t| {
            let r = first_process(t, engine, &args, pty.as_ref());
            let pid = r.as_ref().ok().and_then(Started::id);
            spawned = Some(r);
            Launched {
                pid,
                ppid: Some(std::process::id()),
                exe: which_exe(&args.cmd[0]),
                cmd: Some(args.cmd.clone()),
            }
        })
    };
    let mut run = started
        .map_err(|f| if f.error.usage { Failure::Usage(f.into()) } else { Failure::Runtime(f.into()) })?;
    let mut child = match spawned {
        Some(Ok(c)) => c,
        other => {
            let e = match other {
                Some(Err(e)) => e,
                _ => LaunchFailure::Warden(anyhow!("the task's first process was not started")),
            };
            let ended = lc.end(
                run,
                &mut Live::new(&node, &mut sensor, Some(&mut source), &mut pipeline).with_feed(feed.as_mut()),
                format!("spawn failed: {e}"),
            );
            pipeline.flush().map_err(runtime)?;
            if let Some(err) = ended.errors.first() {
                return Err(runtime(anyhow!("revoking the task: {err}")));
            }
            return match e {
                LaunchFailure::Spawn(e) => {
                    eprintln!("warden: cannot start {}: {e}", args.cmd[0]);
                    Ok(if e.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 })
                }
                LaunchFailure::Warden(e) => Err(runtime(e)),
            };
        }
    };
    // The user's terminal is raw from here on; every way out of this function restores it.
    let relay = match pty.map(Pty::relay).transpose() {
        Ok(r) => r,
        Err(e) => {
            lc.end(
                run,
                &mut Live::new(&node, &mut sensor, Some(&mut source), &mut pipeline).with_feed(feed.as_mut()),
                format!("warden failed: relaying the task's terminal: {e}"),
            );
            let _ = pipeline.flush();
            return Err(runtime(anyhow!(e).context("relaying the task's terminal")));
        }
    };
    let child_pid = child.id();
    let cgroup =
        run.task.cgroup.clone().ok_or_else(|| anyhow!("the task has no sandbox")).map_err(runtime)?;
    tracing::info!(task = %task_id, cgroup = %cgroup.path().display(), pid = ?child_pid, "task started");

    let watched = watch(
        &args,
        &lc,
        &mut run,
        (&mut sensor, &mut source, &mut pipeline, feed.as_mut()),
        &mut child,
        node.resolver.as_ref(),
    )
    .await;
    let (status, reason) = match watched {
        Ok(v) => v,
        Err(e) => {
            // Warden itself failed: the task still ends as one operation, on the record.
            lc.end(
                run,
                &mut Live::new(&node, &mut sensor, Some(&mut source), &mut pipeline).with_feed(feed.as_mut()),
                format!("warden failed: {e:#}"),
            );
            let _ = pipeline.flush();
            return Err(runtime(e));
        }
    };

    // End of task: kill what is left (still watched and enforced until then), collect the
    // last records, wait for the command, revoke, and record the end.
    lc.stop(
        &mut run,
        &mut Live::new(&node, &mut sensor, Some(&mut source), &mut pipeline).with_feed(feed.as_mut()),
    );
    let status = match status {
        Some(s) => s,
        None => child.main_exit().await.map_err(runtime)?,
    };
    // The sandbox is empty: the helper and the namespace's init go too.
    child.finish().await.map_err(runtime)?;
    // Everything the task wrote is out; the user's terminal is as it was before the summary.
    if let Some(r) = relay {
        r.finish();
    }
    let code = exit_code(status, &reason);
    reap_orphans();
    let facts = EndFacts {
        reason,
        pid: child_pid,
        ppid: Some(std::process::id()),
        exit_status: status.code(),
        signal: std::os::unix::process::ExitStatusExt::signal(&status),
    };
    let memory_limit = run.task.memory_limit;
    let ended = lc.finish(
        run,
        &mut Live::new(&node, &mut sensor, Some(&mut source), &mut pipeline).with_feed(feed.as_mut()),
        facts,
    );
    pipeline.flush().map_err(runtime)?;
    if !args.quiet {
        eprint!("{}", ended.denials.summary());
    }
    // Said even with --quiet: the task's processes died of it.
    if ended.oom_kills > 0 {
        eprintln!("warden: {}", crate::sandbox::limits::oom_message(ended.oom_kills, memory_limit));
    }
    if let Some(e) = pipeline.take_io_error() {
        return Err(runtime(anyhow!(e).context("writing audit records")));
    }
    if let Some(e) = ended.errors.first() {
        return Err(runtime(anyhow!("revoking the task: {e}")));
    }
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

/// Why the task's first process did not start.
#[derive(Debug, thiserror::Error)]
enum LaunchFailure {
    /// exec failed (exit 127 when not found, else 126).
    #[error("{0}")]
    Spawn(std::io::Error),
    /// Warden could not prepare it (exit 1).
    #[error("{0:#}")]
    Warden(anyhow::Error),
}

/// Writes the identity document (`--identity`) and starts CMD in the task. `warden run` is
/// the only enforcer of the fallback engine: the task dies with it.
fn first_process(
    t: &Task,
    engine: Engine,
    args: &RunArgs,
    tty: Option<&Pty>,
) -> Result<Started, LaunchFailure> {
    if let Some(path) = &args.identity {
        let doc = serde_json::to_string_pretty(&t.identity).map_err(|e| LaunchFailure::Warden(e.into()))?;
        std::fs::write(path, doc + "\n")
            .with_context(|| format!("writing identity document {}", path.display()))
            .map_err(LaunchFailure::Warden)?;
    }
    let compiled = t.compiled.as_ref().ok_or_else(|| LaunchFailure::Warden(anyhow!("scope not compiled")))?;
    launch::spawn(&t.launch, compiled, engine, &args.cmd, true, tty).map_err(|e| match e {
        LaunchError::Spawn(e) => LaunchFailure::Spawn(e),
        e => LaunchFailure::Warden(e.into()),
    })
}

/// Streams the task's records until CMD exits (then gives leftovers the grace period), a
/// signal, the ttl or an evidence gap (with `on_gap: end`) ends it. Returns CMD's status if
/// it exited, and the reason.
async fn watch(
    args: &RunArgs,
    lc: &Lifecycle,
    run: &mut Running,
    (sensor, source, pipeline, mut feed): (&mut Sensor, &mut Handoff, &mut Pipeline, Option<&mut Feed>),
    child: &mut Started,
    resolver: Option<&crate::dns::Resolver>,
) -> anyhow::Result<(Option<ExitStatus>, String)> {
    let task_id = run.task.id.clone();
    let cgroup = run.task.cgroup.clone().ok_or_else(|| anyhow!("the task has no sandbox"))?;
    let mut signals = EndSignals::new()?;
    let ttl = run.task.scope.ttl;
    let on_gap = run.task.scope.on_gap;
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
    let (status, reason): (Option<ExitStatus>, String) = loop {
        tokio::select! {
            r = source.wait() => {
                r?;
                source.drain(&mut |b| pipeline.ingest(b));
                if let Some(f) = feed.as_deref_mut() {
                    f.pump(pipeline)?;
                }
                pipeline.flush()?;
            }
            s = child.main_exit() => break (Some(s?), "exited".to_string()),
            sig = signals.recv() => break (None, format!("signal {sig}")),
            _ = &mut expiry => break (None, "ttl expired".to_string()),
            ev = crate::dns::next_event(resolver) => {
                pipeline.emit(ev.record(pipeline.clock()))?;
                pipeline.flush()?;
            }
            _ = gap_tick.tick() => {
                let oom = lc.check_limits(run, pipeline);
                if oom > 0 {
                    eprintln!("warden: {}", crate::sandbox::limits::oom_message(oom, run.task.memory_limit));
                }
                let drops = sensor.drops(SLOT)?;
                let gap = run.task.gaps.record(pipeline, &task_id, drops.total + source.overflow())?;
                if gap && on_gap == OnGap::End {
                    break (None, "evidence gap".to_string());
                }
            }
        }
    };
    // Leftovers get the grace period (events keep flowing, still enforced).
    if status.is_some() {
        let deadline = tokio::time::Instant::now() + args.grace;
        while cgroup.populated().unwrap_or(false) && tokio::time::Instant::now() < deadline {
            tokio::select! {
                r = source.wait() => {
                    r?;
                    source.drain(&mut |b| pipeline.ingest(b));
                    if let Some(f) = feed.as_deref_mut() {
                        f.pump(pipeline)?;
                    }
                }
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
            }
        }
    }
    Ok((status, reason))
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

/// The signals that end a task cleanly (task_end written, sandbox removed): SIGINT, SIGTERM,
/// and SIGHUP and SIGQUIT (a closed terminal, a typed `^\`) the same way.
struct EndSignals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
}

impl EndSignals {
    fn new() -> std::io::Result<Self> {
        Ok(Self {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
            quit: signal(SignalKind::quit())?,
        })
    }

    /// The name of the next one received.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
            _ = self.hup.recv() => "SIGHUP",
            _ = self.quit.recv() => "SIGQUIT",
        }
    }
}

/// Exit code of `warden run`: when Warden ended the task, 128+signal for SIGINT (130), SIGTERM
/// (143), SIGHUP (129) and SIGQUIT (131), or 124 (ttl expired, as timeout(1) reports);
/// otherwise the command's status, or 128+signal.
pub(super) fn exit_code(status: ExitStatus, reason: &str) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    match reason {
        r if r.contains("SIGINT") => 130,
        r if r.contains("SIGTERM") => 143,
        r if r.contains("SIGHUP") => 129,
        r if r.contains("SIGQUIT") => 131,
        r if r.contains("ttl") => 124,
        r if r.contains("evidence gap") => 125,
        _ => status.code().or_else(|| status.signal().map(|s| 128 + s)).unwrap_or(1),
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
