//! The daemon's core: owns the pinned sensor, the pipeline and the tasks. One tokio task
//! runs it; API handlers talk to it through [`Cmd`] messages, so every change to kernel
//! state and to the audit stream happens in one place, in order.
use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    fs::File,
    io,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use tokio::sync::{broadcast, mpsc, oneshot};

use super::{
    api::{EndRequest, EndResponse, StartRequest, TaskInfo},
    config::DaemonConfig,
    state::{self, Heartbeat, StateDir, TaskRecord},
};
use crate::{
    audit::{
        AuditRecord, AuditSink, Decision, JsonlSink,
        chain::{GENESIS, NodeKey},
        clock::Clock,
        sink::RotatingJsonlSink,
    },
    cli::EngineChoice,
    correlate::ProcessTable,
    loader::{LoadOptions, PinLayout, Sensor, pin::ensure_bpffs},
    pipeline::{GapTracker, Mode, Pipeline, TaskCtx},
    sandbox::{Cgroup, cgroup2_mount, limits::PidsLimit, secrets::IssuedSecrets},
    scope::{Scope, compile::CompiledScope, raw::OnGap},
    source::{EventSource, RingBufSource},
    task::{IdentityDoc, new_task_id, node_name, scope_hash},
};

/// How long processes get to die after `cgroup.kill`.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);
/// Ended tasks remembered for `end` requests that come after the fact (TTL, empty sandbox).
const ENDED_KEPT: usize = 4096;
/// The housekeeping tick: TTLs, empty sandboxes, evidence gaps, heartbeat.
const TICK: Duration = Duration::from_millis(200);

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

type Reply<T> = oneshot::Sender<Result<T, ApiError>>;

/// Requests to the core.
pub enum Cmd {
    Start(Box<StartRequest>, Reply<TaskInfo>),
    Get(String, Reply<TaskInfo>),
    List(Reply<Vec<TaskInfo>>),
    End(String, EndRequest, Reply<EndResponse>),
    Metrics(oneshot::Sender<String>),
}

/// What API handlers read without asking the core.
#[derive(Default)]
pub struct Shared {
    /// Sandbox cgroup directories: callers inside them are refused the API.
    pub sandboxes: RwLock<Vec<PathBuf>>,
}

/// One line of the event stream, for `warden events --follow`.
#[derive(Debug, Clone)]
pub struct StreamLine {
    pub task: Arc<str>,
    pub line: Arc<str>,
}

/// Per-task counters for metrics.
#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    events: u64,
    denials: u64,
}

/// Where records go: the node log, per-task logs, the event stream; and what they count.
struct Routes {
    node: Box<dyn AuditSink>,
    task_logs: HashMap<String, JsonlSink<File>>,
    stream: broadcast::Sender<StreamLine>,
    counters: HashMap<String, Counters>,
    written: u64,
}

/// The pipeline's sink: fans records out along [`Routes`].
struct RoutedSink(Arc<Mutex<Routes>>);

impl AuditSink for RoutedSink {
    fn write(&mut self, r: &AuditRecord, line: &str) -> io::Result<()> {
        let mut routes = self.0.lock().unwrap_or_else(|e| e.into_inner());
        routes.node.write(r, line)?;
        if let Some(t) = routes.task_logs.get_mut(&r.task) {
            t.write(r, line)?;
        }
        let c = routes.counters.entry(r.task.clone()).or_default();
        c.events += 1;
        if matches!(r.decision, Some(Decision::Deny) | Some(Decision::Audit))
            && !matches!(r.kind, "task_start" | "task_end")
        {
            c.denials += 1;
        }
        routes.written += 1;
        // No subscriber is fine: the stream is best effort, the logs are the record.
        let _ = routes.stream.send(StreamLine { task: r.task.as_str().into(), line: line.into() });
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        let mut routes = self.0.lock().unwrap_or_else(|e| e.into_inner());
        routes.node.flush()?;
        for t in routes.task_logs.values_mut() {
            t.flush()?;
        }
        Ok(())
    }
}

/// A running task.
struct Task {
    info: TaskInfo,
    scope: Scope,
    compiled: CompiledScope,
    cgroup: Cgroup,
    pids: Option<PidsLimit>,
    secrets: Option<IssuedSecrets>,
    expires_boot_ns: Option<u64>,
    end_when_empty: bool,
    seen_populated: bool,
    log: Option<PathBuf>,
    /// Loss already reported in `gap` records.
    gaps: GapTracker,
}

impl Task {
    fn record(&self) -> TaskRecord {
        TaskRecord {
            info: self.info.clone(),
            expires_boot_ns: self.expires_boot_ns,
            end_when_empty: self.end_when_empty,
            log: self.log.clone(),
            pids_v1: match &self.pids {
                Some(PidsLimit::V1(cg)) => Some(cg.path().to_path_buf()),
                _ => None,
            },
            drops_reported: self.gaps.drops,
        }
    }
}

/// Errors starting the daemon.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Bpffs(#[from] crate::loader::pin::BpffsError),
    #[error("loading kernel programs: {0}")]
    Load(#[from] crate::loader::LoadError),
    #[error("node key: {0}")]
    Key(#[from] crate::audit::chain::KeyError),
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("rules: {0}")]
    Rules(String),
    #[error("{0}")]
    Other(String),
}

fn io_ctx(what: impl Into<String>) -> impl FnOnce(io::Error) -> StartError {
    let what = what.into();
    move |source| StartError::Io { what, source }
}

/// The daemon core.
pub struct Core {
    cfg: DaemonConfig,
    sensor: Sensor,
    source: RingBufSource,
    pipeline: Pipeline,
    routes: Arc<Mutex<Routes>>,
    shared: Arc<Shared>,
    state: StateDir,
    tasks: BTreeMap<String, Task>,
    ended: VecDeque<EndResponse>,
    key: NodeKey,
    node: String,
    engine: &'static str,
    mount: PathBuf,
    version: String,
    /// When each re-adopted task's slot was bound in this version's maps (boot-time ns).
    bound_at: HashMap<u32, u64>,
    /// What happened at start (for the log and the tests): adopted attachments, re-adopted
    /// tasks, migrated versions.
    pub startup: Startup,
}

/// What the daemon found and did when it started.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Startup {
    pub version: String,
    pub adopted_links: Vec<String>,
    pub adopted_tasks: Vec<String>,
    pub vanished_tasks: Vec<String>,
    pub migrated_from: Vec<String>,
    pub down_since: Option<String>,
}

impl Core {
    /// Loads (or re-adopts) the kernel side, re-adopts running tasks, migrates pins of
    /// other versions, and returns the core with the event stream's sender.
    pub fn start(
        cfg: DaemonConfig,
        stream: broadcast::Sender<StreamLine>,
        shared: Arc<Shared>,
    ) -> Result<Self, StartError> {
        let opts: LoadOptions = cfg.maps;
        let key = NodeKey::load_or_create(&cfg.key)?;
        // The node's key, log, state and pins are out of every task's reach.
        let log = &cfg.log.path;
        let keep = cfg.log.keep.unwrap_or(16).min(64);
        crate::scope::compile::protect_evidence(
            [cfg.key.clone(), log.clone(), cfg.state_dir.clone(), cfg.bpffs.join(&cfg.pin_name)]
                .into_iter()
                .chain((1..=keep).map(|n| PathBuf::from(format!("{}.{n}", log.display())))),
        );
        let rules = match &cfg.rules {
            Some(dir) => {
                Some(crate::rules::RuleSet::load_dir(dir).map_err(|e| StartError::Rules(e.to_string()))?)
            }
            None => None,
        };
        ensure_bpffs(&cfg.bpffs)?;
        let override_version = std::env::var("WARDEN_PIN_VERSION").ok();
        let layout = PinLayout::new(&cfg.bpffs.join(&cfg.pin_name), &opts, override_version.as_deref());
        let old_versions: Vec<PinLayout> =
            layout.other_versions().into_iter().filter(PinLayout::has_links).collect();
        let mut sensor = Sensor::load_pinned(&opts, &layout)?;
        let lsm = match (EngineChoice::from(cfg.engine), sensor.lsm_engine_pinned()) {
            (_, true) => {
                sensor.attach_lsm_engine()?;
                true
            }
            (EngineChoice::Fallback, false) => false,
            (EngineChoice::BpfLsm, false) => {
                sensor.attach_lsm_engine()?;
                true
            }
            (EngineChoice::Auto, false) => match sensor.attach_lsm_engine() {
                Ok(()) => true,
                Err(e) => {
                    tracing::info!(error = %e, "BPF LSM unavailable; using the fallback engine");
                    false
                }
            },
        };
        // After the LSM engine: its pinned links are adopted there.
        let startup = Startup {
            version: layout.version.clone(),
            adopted_links: sensor.adopted().iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let ring = sensor.take_ring().ok_or_else(|| StartError::Other("ring buffer taken".into()))?;
        let source = RingBufSource::new(ring).map_err(io_ctx("polling the ring buffer"))?;

        let state = StateDir::open(&cfg.state_dir)
            .map_err(io_ctx(format!("state dir {}", cfg.state_dir.display())))?;
        if let Some(dir) = cfg.log.path.parent() {
            std::fs::create_dir_all(dir).map_err(io_ctx(format!("log dir {}", dir.display())))?;
        }
        let cut = state::truncate_partial_line(&cfg.log.path)
            .map_err(io_ctx(cfg.log.path.display().to_string()))?;
        if cut > 0 {
            tracing::warn!(bytes = cut, log = %cfg.log.path.display(), "cut a torn last line from the log");
        }
        let node_sink: Box<dyn AuditSink> = match cfg.log.max_bytes {
            Some(max) => Box::new(
                RotatingJsonlSink::append(&cfg.log.path, max, cfg.log.keep)
                    .map_err(io_ctx(cfg.log.path.display().to_string()))?,
            ),
            None => Box::new(JsonlSink::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&cfg.log.path)
                    .map_err(io_ctx(cfg.log.path.display().to_string()))?,
            )),
        };
        let routes = Arc::new(Mutex::new(Routes {
            node: node_sink,
            task_logs: HashMap::new(),
            stream,
            counters: HashMap::new(),
            written: 0,
        }));
        let mut pipeline = Pipeline::new(
            ProcessTable::seed_from("/proc".as_ref()),
            Clock::new(),
            Box::new(RoutedSink(routes.clone())),
        );
        pipeline.set_signer(key.clone());
        if let Some(set) = rules {
            pipeline.set_rules(set);
        }
        let mount = cgroup2_mount().map_err(|e| StartError::Other(e.to_string()))?;
        let node = node_name();
        let mut core = Core {
            cfg,
            sensor,
            source,
            pipeline,
            routes,
            shared,
            state,
            tasks: BTreeMap::new(),
            ended: VecDeque::new(),
            key,
            node,
            engine: if lsm { "bpf-lsm" } else { "fallback" },
            mount,
            version: layout.version.clone(),
            bound_at: HashMap::new(),
            startup,
        };
        core.readopt()?;
        // Every adopted task is bound in this version's maps and attachments now: the old
        // version's programs can go without an unenforced moment. Their ring buffer still
        // holds what they recorded while no daemon ran; it is read after they are detached,
        // up to the moment each task was bound here (later records are in the new ring too).
        for old in old_versions {
            let old_ring = aya::maps::MapData::from_pin(old.map_path(agent_common::maps::EVENTS))
                .ok()
                .and_then(|md| aya::maps::RingBuf::try_from(aya::maps::Map::RingBuf(md)).ok());
            match old.remove() {
                Ok(n) => tracing::info!(version = %old.version, pins = n, "migrated from a previous version"),
                Err(e) => tracing::error!(version = %old.version, error = %e, "cannot remove old pins"),
            }
            if let Some(mut ring) = old_ring {
                let (mut kept, mut skipped) = (0u64, 0u64);
                while let Some(item) = ring.next() {
                    let bound = &core.bound_at;
                    if core.pipeline.ingest_if(&item, |m| bound.get(&m.slot).is_some_and(|t| m.ktime_ns < *t))
                    {
                        kept += 1;
                    } else {
                        skipped += 1;
                    }
                }
                tracing::info!(version = %old.version, kept, skipped, "read the previous version's ring buffer");
            }
            core.startup.migrated_from.push(old.version.clone());
        }
        core.beat();
        core.pipeline.flush().map_err(io_ctx("writing the log"))?;
        Ok(core)
    }

    /// Re-adopts the tasks a previous daemon left running.
    fn readopt(&mut self) -> Result<(), StartError> {
        let hb = self.state.heartbeat();
        let now = self.now();
        self.startup.down_since = hb.as_ref().map(|h| h.alive.clone());
        let records = self.state.tasks();
        let ids: Vec<String> =
            records.iter().filter_map(|r| r.as_ref().ok()).map(|r| r.info.id.clone()).collect();
        let mut heads = state::chain_heads(&self.cfg.log.path, &ids).map_err(io_ctx("reading the log"))?;
        for rec in records {
            let rec = match rec {
                Ok(r) => r,
                Err((path, e)) => {
                    tracing::error!(file = %path.display(), error = %e, "unreadable task record; ignoring it");
                    continue;
                }
            };
            let id = rec.info.id.clone();
            match heads.remove(&id) {
                Some(h) => self.pipeline.resume_chain(&id, h.seq, h.hash),
                None => {
                    tracing::warn!(task = %id, "the log has no record of this task; its chain restarts");
                    self.pipeline.resume_chain(&id, 0, GENESIS.to_string());
                }
            }
            self.pipeline
                .register(rec.info.slot, TaskCtx { id: id.clone(), mode: parse_mode(&rec.info.mode) });
            if let Some(log) = &rec.log {
                self.open_task_log(&id, log, true).map_err(io_ctx(log.display().to_string()))?;
            }
            match self.adopt(&rec) {
                Ok(task) => {
                    let drops = self.drops_of(task.info.slot);
                    let since = hb.as_ref().map(|h| h.alive.clone());
                    let gap = AuditRecord {
                        time: now.clone(),
                        task: id.clone(),
                        kind: "gap",
                        since,
                        drops: Some(drops.saturating_sub(task.gaps.drops)),
                        reason: Some(
                            "the daemon was down; pinned programs kept enforcing, records made meanwhile were \
                             read from the pinned ring buffer, and `drops` counts those the kernel lost"
                                .into(),
                        ),
                        ..Default::default()
                    };
                    let mut task = task;
                    task.gaps.drops = drops;
                    self.emit(gap);
                    self.startup.adopted_tasks.push(id.clone());
                    self.tasks.insert(id.clone(), task);
                    self.persist(&id);
                }
                Err(e) => {
                    tracing::error!(task = %id, error = %e, "cannot re-adopt task; ending it");
                    self.startup.vanished_tasks.push(id.clone());
                    self.end_unadoptable(&rec, &e);
                }
            }
        }
        self.publish_sandboxes();
        Ok(())
    }

    /// Rebuilds a task from its record and makes sure its kernel state is in place (in a
    /// migration: binds it into this version's maps and attaches this version's programs).
    fn adopt(&mut self, rec: &TaskRecord) -> Result<Task, String> {
        let cgroup = Cgroup::open(&rec.info.cgroup).map_err(|e| format!("its sandbox is gone: {e}"))?;
        if cgroup.id() != rec.info.cgroup_id {
            return Err(format!("{} is another cgroup now", rec.info.cgroup.display()));
        }
        let mut scope =
            Scope::parse(&rec.info.scope_text, &rec.info.scope_path).map_err(|e| e.to_string())?;
        scope.mode = parse_mode(&rec.info.mode);
        let secrets = rec.info.secrets_dir.as_ref().map(|dir| {
            scope.place_issued_secrets(dir);
            IssuedSecrets::adopt(&self.cfg.secrets_dir, &rec.info.id, rec.info.secrets.clone())
        });
        let compiled = CompiledScope::compile(&scope).map_err(|e| e.to_string())?;
        self.sensor.attach_task_egress(&cgroup, &rec.info.id).map_err(|e| e.to_string())?;
        self.sensor.bind(rec.info.slot, &sandbox_ids(&cgroup), &compiled).map_err(|e| e.to_string())?;
        self.bound_at.insert(rec.info.slot, Clock::boot_now_ns());
        let pids = rec.pids_v1.as_ref().and_then(|p| Cgroup::open(p).ok()).map(PidsLimit::V1);
        Ok(Task {
            info: rec.info.clone(),
            scope,
            compiled,
            cgroup,
            pids,
            secrets,
            expires_boot_ns: rec.expires_boot_ns,
            end_when_empty: rec.end_when_empty,
            seen_populated: true,
            log: rec.log.clone(),
            // This daemon's decode failures start at zero.
            gaps: GapTracker { drops: rec.drops_reported, decode_errors: 0 },
        })
    }

    /// A recorded task that cannot be adopted: revoke what is left of it and record its end.
    fn end_unadoptable(&mut self, rec: &TaskRecord, why: &str) {
        let _ = self.sensor.unwatch_slot(rec.info.slot);
        let _ = self.sensor.detach_task_egress(&rec.info.id);
        if rec.info.secrets_dir.is_some() {
            let _ =
                IssuedSecrets::adopt(&self.cfg.secrets_dir, &rec.info.id, rec.info.secrets.clone()).destroy();
        }
        if rec.info.created
            && let Ok(cg) = Cgroup::open(&rec.info.cgroup)
        {
            let _ = cg.kill_all(KILL_TIMEOUT);
            let _ = cg.remove();
        }
        let end = AuditRecord {
            time: self.now(),
            task: rec.info.id.clone(),
            kind: "task_end",
            decision: Some(Decision::Allow),
            reason: Some(format!("could not be re-adopted after a daemon restart: {why}")),
            ..Default::default()
        };
        self.emit(end);
        let _ = self.pipeline.checkpoint(&rec.info.id);
        self.close_task(&rec.info.id, rec.info.slot);
        let _ = self.state.remove_task(&rec.info.id);
    }

    /// The record routes (a panic while holding them left them consistent: each write is
    /// one line).
    fn routes(&self) -> std::sync::MutexGuard<'_, Routes> {
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records of `slot` the kernel could not deliver so far.
    fn drops_of(&self, slot: u32) -> u64 {
        self.sensor.drops(slot).map(|d| d.total).unwrap_or(0)
    }

    fn now(&self) -> String {
        self.pipeline.clock().format(Clock::boot_now_ns())
    }

    fn emit(&mut self, rec: AuditRecord) {
        if let Err(e) = self.pipeline.emit(rec) {
            tracing::error!(error = %e, "writing an audit record failed");
        }
    }

    /// Routes a task's records also to `path`: a new file, or (`append`, re-adopting) the
    /// existing one cut back to its last whole line.
    fn open_task_log(&mut self, id: &str, path: &Path, append: bool) -> io::Result<()> {
        let f = if append {
            state::truncate_partial_line(path)?;
            std::fs::OpenOptions::new().create(true).append(true).open(path)?
        } else {
            File::create(path)?
        };
        self.routes().task_logs.insert(id.to_string(), JsonlSink::new(f));
        Ok(())
    }

    fn persist(&self, id: &str) {
        if let Some(t) = self.tasks.get(id)
            && let Err(e) = self.state.save_task(&t.record())
        {
            tracing::error!(task = %id, error = %e, "cannot save the task record; a restart could not re-adopt it");
        }
    }

    fn publish_sandboxes(&self) {
        let v = self.tasks.values().map(|t| t.cgroup.path().to_path_buf()).collect();
        *self.shared.sandboxes.write().unwrap_or_else(|e| e.into_inner()) = v;
    }

    fn beat(&self) {
        let hb = Heartbeat {
            pid: std::process::id(),
            version: self.version.clone(),
            alive_boot_ns: Clock::boot_now_ns(),
            alive: self.now(),
        };
        if let Err(e) = self.state.beat(&hb) {
            tracing::warn!(error = %e, "cannot write the heartbeat");
        }
    }

    fn free_slot(&self) -> Option<u32> {
        let used: std::collections::BTreeSet<u32> = self.tasks.values().map(|t| t.info.slot).collect();
        (1..self.cfg.maps.max_tasks).find(|s| !used.contains(s))
    }

    /// Runs until `shutdown` resolves. Tasks keep running and enforced after it returns; a
    /// restarted daemon re-adopts them.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Cmd>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(TICK);
        let mut beats = 0u32;
        loop {
            tokio::select! {
                r = self.source.wait() => {
                    if let Err(e) = r {
                        tracing::error!(error = %e, "ring buffer poll failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    self.drain();
                }
                cmd = rx.recv() => match cmd {
                    Some(cmd) => self.handle(cmd),
                    None => break,
                },
                _ = tick.tick() => {
                    self.housekeeping();
                    beats += 1;
                    if beats.is_multiple_of(5) {
                        self.beat();
                    }
                }
                _ = &mut shutdown => break,
            }
        }
        self.drain();
        self.beat();
        let _ = self.pipeline.flush();
        tracing::info!(
            tasks = self.tasks.len(),
            "daemon stopping; tasks stay enforced by the pinned programs"
        );
    }

    fn drain(&mut self) {
        let pipeline = &mut self.pipeline;
        self.source.drain(&mut |b| pipeline.ingest(b));
        if let Some(e) = self.pipeline.take_io_error() {
            tracing::error!(error = %e, "writing audit records failed");
        }
        let _ = self.pipeline.flush();
    }

    fn handle(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Start(req, reply) => {
                let r = self.start_task(*req);
                let _ = self.pipeline.flush();
                let _ = reply.send(r);
            }
            Cmd::Get(id, reply) => {
                let r = self.info(&id).ok_or_else(|| ApiError::not_found(&id));
                let _ = reply.send(r);
            }
            Cmd::List(reply) => {
                let ids: Vec<String> = self.tasks.keys().cloned().collect();
                let _ = reply.send(Ok(ids.iter().filter_map(|id| self.info(id)).collect()));
            }
            Cmd::End(id, req, reply) => {
                let r = if self.tasks.contains_key(&id) {
                    Ok(self.end_task(&id, req.reason.unwrap_or_else(|| "ended by request".into())))
                } else {
                    match self.ended.iter().find(|e| e.id == id) {
                        Some(e) => Ok(EndResponse { already: true, ..e.clone() }),
                        None => Err(ApiError::not_found(&id)),
                    }
                };
                let _ = reply.send(r);
            }
            Cmd::Metrics(reply) => {
                // Counters include everything the kernel has handed over so far.
                self.drain();
                let _ = reply.send(self.metrics());
            }
        }
    }

    fn info(&self, id: &str) -> Option<TaskInfo> {
        let t = self.tasks.get(id)?;
        let mut info = t.info.clone();
        info.processes = t.cgroup.pids().map(|p| p.len() as u64).unwrap_or(0);
        Some(info)
    }

    fn housekeeping(&mut self) {
        self.drain();
        let now = Clock::boot_now_ns();
        let ids: Vec<String> = self.tasks.keys().cloned().collect();
        for id in ids {
            let Some(t) = self.tasks.get_mut(&id) else { continue };
            if t.expires_boot_ns.is_some_and(|e| e <= now) {
                self.end_task(&id, "ttl expired".into());
                continue;
            }
            if t.end_when_empty {
                let populated = t.cgroup.populated().unwrap_or(false);
                if populated {
                    t.seen_populated = true;
                } else if t.seen_populated {
                    self.end_task(&id, "exited".into());
                    continue;
                }
            }
            // Evidence gaps: loss since the last report becomes a `gap` record.
            let slot = t.info.slot;
            let drops = self.drops_of(slot);
            let Some(t) = self.tasks.get_mut(&id) else { continue };
            let on_gap = t.scope.on_gap;
            match t.gaps.record(&mut self.pipeline, &id, drops) {
                Ok(false) => {}
                Ok(true) => {
                    self.persist(&id);
                    if on_gap == OnGap::End {
                        self.end_task(&id, "evidence gap".into());
                    }
                }
                Err(e) => tracing::error!(task = %id, error = %e, "writing a gap record failed"),
            }
        }
        let _ = self.pipeline.flush();
    }

    /// Starts a task: issues its secrets, compiles its scope, makes or binds its sandbox
    /// and binds the scope into the kernel maps (the watch entry last, so no check sees
    /// half a scope). Any failure undoes every step before it.
    fn start_task(&mut self, req: StartRequest) -> Result<TaskInfo, ApiError> {
        let mut scope =
            Scope::parse(&req.scope_text, &req.scope_path).map_err(|e| ApiError::bad(e.to_string()))?;
        if let Some(m) = &req.mode {
            scope.mode = m.parse().map_err(ApiError::bad)?;
        }
        let slot = self.free_slot().ok_or_else(|| ApiError {
            status: 503,
            message: format!("all {} task slots are in use (maps.max_tasks)", self.cfg.maps.max_tasks - 1),
        })?;
        let id = new_task_id(&scope.task).map_err(|e| ApiError::internal(e.to_string()))?;
        let mut undo = Undo::default();
        let r = self.start_steps(&req, &mut scope, slot, &id, &mut undo);
        match r {
            Ok(info) => Ok(info),
            Err(e) => {
                self.undo(slot, &id, undo);
                Err(e)
            }
        }
    }

    fn start_steps(
        &mut self,
        req: &StartRequest,
        scope: &mut Scope,
        slot: u32,
        id: &str,
        undo: &mut Undo,
    ) -> Result<TaskInfo, ApiError> {
        let internal = |e: &dyn std::fmt::Display| ApiError::internal(e.to_string());
        if scope.has_issued_secrets() {
            let s = IssuedSecrets::issue(&self.cfg.secrets_dir, id, scope)
                .map_err(|e| ApiError::bad(e.to_string()))?;
            scope.place_issued_secrets(s.dir());
            undo.secrets = Some(s);
        }
        if let Some(log) = &req.log {
            // The task's own log is evidence too: refused inside an explicit write grant,
            // protected otherwise (it exists from here on, so it is protected by identity).
            crate::scope::compile::evidence_in_write_grant(scope, "the task's log", log)
                .map_err(|e| ApiError::bad(e.to_string()))?;
            crate::scope::compile::protect_evidence([log.clone()]);
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .map_err(|e| ApiError::bad(format!("log {}: {e}", log.display())))?;
        }
        let compiled = CompiledScope::compile(scope).map_err(|e| ApiError::bad(e.to_string()))?;
        let (cgroup, created) = match &req.cgroup {
            Some(path) => {
                let path = std::fs::canonicalize(path)
                    .map_err(|e| ApiError::bad(format!("--cgroup {}: {e}", path.display())))?;
                if !path.starts_with(&self.mount) || path == self.mount {
                    return Err(ApiError::bad(format!(
                        "--cgroup {} is not a cgroup below the cgroup2 mount {}",
                        path.display(),
                        self.mount.display()
                    )));
                }
                if self
                    .tasks
                    .values()
                    .any(|t| t.cgroup.path().starts_with(&path) || path.starts_with(t.cgroup.path()))
                {
                    return Err(ApiError::bad(format!(
                        "{} overlaps the sandbox of a running task",
                        path.display()
                    )));
                }
                (Cgroup::open(&path).map_err(|e| ApiError::bad(e.to_string()))?, false)
            }
            None => {
                let parent = self.mount.join(&self.cfg.cgroup_parent);
                (Cgroup::create(&parent, id).map_err(|e| internal(&e))?, true)
            }
        };
        if created {
            undo.cgroup = Some(cgroup.clone());
        }
        let enforce = scope.mode == Mode::Enforce;
        let mut pids = None;
        if enforce && let Some(max) = scope.process_limit {
            let p = PidsLimit::apply(&cgroup, &self.cfg.cgroup_parent, id, max).map_err(|e| internal(&e))?;
            pids = Some(p);
        }
        undo.pids = pids.as_ref().and_then(|p| match p {
            PidsLimit::V1(cg) => Some(cg.clone()),
            PidsLimit::Unified => None,
        });
        self.sensor.reset_drops(slot).map_err(|e| internal(&e))?;
        self.pipeline.register(slot, TaskCtx { id: id.to_string(), mode: scope.mode });
        undo.registered = true;
        if let Some(log) = &req.log {
            self.open_task_log(id, log, false)
                .map_err(|e| ApiError::bad(format!("log {}: {e}", log.display())))?;
        }
        undo.egress = true;
        self.sensor.attach_task_egress(&cgroup, id).map_err(|e| internal(&e))?;
        undo.bound = Some(compiled.clone());
        self.sensor.bind(slot, &sandbox_ids(&cgroup), &compiled).map_err(|e| internal(&e))?;

        let lsm = self.sensor.lsm_engine();
        let mut unenforced = compiled.unenforced(lsm);
        if enforce && !lsm && !created {
            // Landlock and seccomp confine processes Warden starts; processes already in a
            // bound cgroup keep running under the kernel hooks only.
            unenforced.push("files-for-processes-started-outside-warden".to_string());
        }
        let clock = *self.pipeline.clock();
        let boot_now = Clock::boot_now_ns();
        let started = clock.format(boot_now);
        let expires_boot_ns = scope.ttl.map(|t| boot_now + t.as_nanos() as u64);
        let expires = expires_boot_ns.map(|e| clock.format(e));
        let hash = scope_hash(&scope.text);
        let identity = IdentityDoc::new_signed(
            &self.key,
            id,
            hash.clone(),
            cgroup.id(),
            self.node.clone(),
            started.clone(),
            expires.clone(),
        );
        let mut procs_files = vec![cgroup.procs_file()];
        procs_files.extend(pids.as_ref().and_then(PidsLimit::procs_file));
        let secrets = undo.secrets.as_ref().map(|s| s.issued.clone()).unwrap_or_default();
        let info = TaskInfo {
            id: id.to_string(),
            slot,
            cgroup: cgroup.path().to_path_buf(),
            cgroup_id: cgroup.id(),
            created,
            procs_files,
            scope_path: scope.source.clone(),
            scope_text: scope.text.clone(),
            scope_hash: hash.clone(),
            mode: scope.mode.as_str().to_string(),
            engine: self.engine.to_string(),
            started: started.clone(),
            expires: expires.clone(),
            secrets_dir: undo.secrets.as_ref().map(|s| s.dir().to_path_buf()),
            secrets: secrets.clone(),
            processes: 0,
            identity,
        };
        let start = AuditRecord {
            time: started,
            task: id.to_string(),
            kind: "task_start",
            decision: Some(Decision::Allow),
            scope: Some(scope.source.display().to_string()),
            cmd: req.cmd.clone(),
            cgroup: Some(cgroup.path().display().to_string()),
            cgroup_id: Some(cgroup.id()),
            mode: Some(scope.mode.as_str()),
            scope_hash: Some(hash),
            node: Some(self.node.clone()),
            engine: Some(self.engine),
            unenforced: (!unenforced.is_empty()).then_some(unenforced),
            expires,
            secrets: (!secrets.is_empty()).then_some(secrets),
            ..Default::default()
        };
        self.emit(start);
        let task = Task {
            info: info.clone(),
            scope: scope.clone(),
            compiled,
            cgroup,
            pids,
            secrets: undo.secrets.take(),
            expires_boot_ns,
            end_when_empty: req.end_when_empty,
            seen_populated: false,
            log: req.log.clone(),
            // Only what is lost from now on is this task's gap.
            gaps: GapTracker { drops: 0, decode_errors: self.pipeline.decode_failures() },
        };
        *undo = Undo::default();
        self.tasks.insert(id.to_string(), task);
        self.persist(id);
        self.publish_sandboxes();
        tracing::info!(task = %id, slot, "task started");
        Ok(info)
    }

    /// Reverts a failed start, in reverse order.
    fn undo(&mut self, slot: u32, id: &str, mut undo: Undo) {
        if let Some(c) = &undo.bound {
            let _ = self.sensor.unbind(slot, c);
        }
        if undo.egress {
            let _ = self.sensor.detach_task_egress(id);
        }
        if undo.registered {
            self.pipeline.unregister(slot);
            self.pipeline.forget_chain(id);
            self.routes().task_logs.remove(id);
        }
        if let Some(cg) = &undo.pids {
            let _ = cg.remove();
        }
        if let Some(cg) = &undo.cgroup {
            let _ = cg.kill_all(KILL_TIMEOUT);
            let _ = cg.remove();
        }
        if let Some(s) = undo.secrets.as_mut() {
            let _ = s.destroy();
        }
    }

    /// Ends a task as one operation: kill every process of the sandbox, collect its last
    /// records, remove its map entries and attachments, destroy its secrets, remove the
    /// sandbox it created, and write `task_end`. A failing step does not stop the others;
    /// failures are reported in the answer and in the record.
    fn end_task(&mut self, id: &str, reason: String) -> EndResponse {
        let Some(mut t) = self.tasks.remove(id) else {
            return EndResponse { id: id.into(), reason, killed: 0, drops: 0, already: true, errors: vec![] };
        };
        self.publish_sandboxes();
        let mut errors = Vec::new();
        let killed = t.cgroup.pids().map(|p| p.len() as u64).unwrap_or(0);
        if let Err(e) = t.cgroup.kill_all(KILL_TIMEOUT) {
            errors.push(format!("kill: {e}"));
        }
        self.drain();
        let slot = t.info.slot;
        let drops = self.drops_of(slot);
        if let Err(e) = self.sensor.unbind(slot, &t.compiled) {
            errors.push(format!("map entries: {e}"));
        }
        if let Err(e) = self.sensor.detach_task_egress(id) {
            errors.push(format!("egress programs: {e}"));
        }
        if let Some(s) = t.secrets.as_mut()
            && let Err(e) = s.destroy()
        {
            errors.push(format!("secrets: {e}"));
        }
        if let Some(p) = &t.pids {
            p.remove(&self.cfg.cgroup_parent);
        }
        if t.info.created {
            if let Err(e) = t.cgroup.remove() {
                errors.push(format!("sandbox cgroup: {e}"));
            }
            let _ = std::fs::remove_dir(self.mount.join(&self.cfg.cgroup_parent));
        }
        if let Err(e) = t.gaps.record(&mut self.pipeline, id, drops) {
            errors.push(format!("gap record: {e}"));
        }
        let end = AuditRecord {
            time: self.now(),
            task: id.to_string(),
            kind: "task_end",
            decision: Some(Decision::Allow),
            reason: Some(if errors.is_empty() {
                reason.clone()
            } else {
                format!("{reason}; revocation errors: {}", errors.join("; "))
            }),
            drops: Some(drops),
            decode_errors: Some(self.pipeline.decode_failures()),
            killed: Some(killed),
            ..Default::default()
        };
        self.emit(end);
        if let Err(e) = self.pipeline.checkpoint(id) {
            errors.push(format!("checkpoint: {e}"));
        }
        self.close_task(id, slot);
        if let Err(e) = self.state.remove_task(id) {
            errors.push(format!("task record: {e}"));
        }
        tracing::info!(task = %id, %reason, killed, "task ended");
        let resp = EndResponse { id: id.into(), reason, killed, drops, already: false, errors };
        self.ended.push_back(resp.clone());
        if self.ended.len() > ENDED_KEPT {
            self.ended.pop_front();
        }
        resp
    }

    /// Flushes and forgets a task's routes and chain.
    fn close_task(&mut self, id: &str, slot: u32) {
        let _ = self.pipeline.flush();
        self.pipeline.unregister(slot);
        self.pipeline.forget_chain(id);
        let mut routes = self.routes();
        if let Some(mut log) = routes.task_logs.remove(id) {
            let _ = log.flush();
        }
        routes.counters.remove(id);
    }

    /// Prometheus text exposition.
    fn metrics(&self) -> String {
        let routes = self.routes();
        let mut m = super::metrics::Metrics::default();
        m.gauge("warden_tasks_active", "Tasks running on this node.", &[], self.tasks.len() as f64);
        m.counter(
            "warden_records_written_total",
            "Audit records written since the daemon started.",
            &[],
            routes.written as f64,
        );
        m.counter(
            "warden_decode_errors_total",
            "Kernel records that failed to decode.",
            &[],
            self.pipeline.decode_failures() as f64,
        );
        if let Ok(fill) = self.sensor.ring_fill() {
            m.gauge(
                "warden_ring_buffer_fill_bytes",
                "Bytes waiting in the kernel ring buffer when last observed.",
                &[],
                fill as f64,
            );
        }
        m.gauge(
            "warden_ring_buffer_size_bytes",
            "Kernel ring buffer size.",
            &[],
            f64::from(self.cfg.maps.ring_bytes),
        );
        for (id, t) in &self.tasks {
            let c = routes.counters.get(id).copied().unwrap_or_default();
            let labels = [("task", id.as_str())];
            m.counter("warden_task_events_total", "Records written for the task.", &labels, c.events as f64);
            m.counter(
                "warden_task_denials_total",
                "Refused (or, in audit mode, would-be refused) actions of the task.",
                &labels,
                c.denials as f64,
            );
            let drops = self.drops_of(t.info.slot);
            m.counter(
                "warden_task_drops_total",
                "Records of the task the kernel could not deliver.",
                &labels,
                drops as f64,
            );
        }
        m.render()
    }
}

/// What a failed start has to undo.
#[derive(Default)]
struct Undo {
    secrets: Option<IssuedSecrets>,
    cgroup: Option<Cgroup>,
    pids: Option<Cgroup>,
    registered: bool,
    egress: bool,
    bound: Option<CompiledScope>,
}

/// A recorded task's mode (written by [`Mode::as_str`]; enforce if unreadable).
fn parse_mode(s: &str) -> Mode {
    s.parse().unwrap_or(Mode::Enforce)
}

/// A sandbox cgroup and every cgroup below it: what `bind` watches.
fn sandbox_ids(cgroup: &Cgroup) -> Vec<u64> {
    let mut ids = vec![cgroup.id()];
    ids.extend(cgroup.descendant_ids().unwrap_or_default());
    ids
}
