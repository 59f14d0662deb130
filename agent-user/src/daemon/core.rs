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
    api::{ContainerRequest, EndRequest, EndResponse, StartRequest, TaskInfo},
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
    correlate::ProcessTable,
    creds::{
        broker::SecretEvent,
        node::{NodeCreds, TokenEndpoint},
    },
    k8s::{Container, pod},
    lifecycle::{self, Launched, Lifecycle, Live, Node, Origin, Running, SandboxSpec},
    loader::{Engine, LoadOptions, PinLayout, Sensor, pin::ensure_bpffs, select_engine},
    pipeline::{GapTracker, Mode, Pipeline},
    sandbox::cgroup2_mount,
    scope::{Scope, raw::OnGap},
    source::{EventSource, RingBufSource},
    task::{new_task_id, node_name, scope_hash},
};

/// A [`Live`] host over the core's sensor, ring buffer and pipeline.
macro_rules! live {
    ($core:expr) => {
        Live::new(&$core.node, &mut $core.sensor, Some(&mut $core.source), &mut $core.pipeline)
    };
}

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
    /// A health probe's round trip: the number of running tasks.
    Ping(oneshot::Sender<usize>),
    /// Bind a container (`warden oci-hook`, before its first instruction).
    StartContainer(Box<ContainerRequest>, Reply<TaskInfo>),
    /// End the task bound to a container (by the runtime's container id).
    EndContainer(String, EndRequest, Reply<EndResponse>),
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
    /// Its lifecycle state (scope, cgroup, steps).
    run: Running,
    end_when_empty: bool,
    seen_populated: bool,
    log: Option<PathBuf>,
}

impl Task {
    fn record(&self) -> TaskRecord {
        let t = &self.run.task;
        TaskRecord {
            info: self.info.clone(),
            expires_boot_ns: t.expires_boot_ns,
            end_when_empty: self.end_when_empty,
            log: self.log.clone(),
            pids_v1: t.pids_v1.clone(),
            drops_reported: t.gaps.drops,
            saved: t.saved.clone(),
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
    /// Where sandboxes and secrets go, the signing key, the node name.
    node: Node,
    lc: Lifecycle,
    engine: Engine,
    version: String,
    /// When each re-adopted task's slot was bound in this version's maps (boot-time ns).
    bound_at: HashMap<u32, u64>,
    /// What happened at start (for the log and the tests): adopted attachments, re-adopted
    /// tasks, migrated versions.
    pub startup: Startup,
    /// Brokered credentials (also in `node`): the revocation queue, token signing.
    creds: Arc<NodeCreds>,
    /// Broker answers to record (taken by [`Core::run`]).
    secret_rx: Option<mpsc::UnboundedReceiver<SecretEvent>>,
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
        let engine = select_engine(&mut sensor, cfg.engine)?;
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
        let name = node_name();
        let revocations = cfg.state_dir.join("revocations");
        let (creds, secret_rx) =
            NodeCreds::open(&revocations, key.clone(), name.clone(), cfg.tokens.issuer.clone())
                .map_err(io_ctx(format!("revocation queue {}", revocations.display())))?;
        let creds = Arc::new(creds);
        // The node resolver (egress by name): slot `s` is served at `dns.addr_base + s`. The
        // pinned redirect points here across restarts (same config, same port).
        let resolver = crate::dns::Resolver::new(
            sensor.egress_handle()?,
            cfg.dns.addr_base,
            opts.max_tasks,
            cfg.dns.port,
        );
        sensor.set_dns_config(resolver.dns_config())?;
        let node = Node {
            cgroup_mount: cgroup2_mount().map_err(|e| StartError::Other(e.to_string()))?,
            cgroup_parent: cfg.cgroup_parent.clone(),
            secrets_dir: cfg.secrets_dir.clone(),
            key,
            name,
            creds: Some(creds.clone()),
            resolver: Some(resolver),
        };
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
            node,
            lc: Lifecycle::default(),
            engine,
            version: layout.version.clone(),
            bound_at: HashMap::new(),
            startup,
            creds,
            secret_rx: Some(secret_rx),
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
            if let Some(log) = &rec.log {
                self.open_task_log(&id, log, true).map_err(io_ctx(log.display().to_string()))?;
            }
            let task = match recorded_task(&rec) {
                (t, None) => t,
                (t, Some(why)) => {
                    tracing::error!(task = %id, error = %why, "cannot re-adopt task; ending it");
                    self.startup.vanished_tasks.push(id.clone());
                    self.lc.end_recorded(t, &mut live!(self), &why);
                    self.forget_task(&id);
                    continue;
                }
            };
            match self.lc.adopt(task, &mut live!(self)) {
                Ok(mut run) => {
                    if let Some(at) = run.task.bound_boot_ns {
                        self.bound_at.insert(rec.info.slot, at);
                    }
                    let drops = self.drops_of(rec.info.slot);
                    let since = hb.as_ref().map(|h| h.alive.clone());
                    let gap = AuditRecord {
                        time: now.clone(),
                        task: id.clone(),
                        kind: "gap",
                        since,
                        drops: Some(drops.saturating_sub(run.task.gaps.drops)),
                        reason: Some(
                            "the daemon was down; pinned programs kept enforcing, records made meanwhile were \
                             read from the pinned ring buffer, and `drops` counts those the kernel lost"
                                .into(),
                        ),
                        ..Default::default()
                    };
                    run.task.gaps.drops = drops;
                    self.emit(gap);
                    self.startup.adopted_tasks.push(id.clone());
                    let task = Task {
                        info: rec.info.clone(),
                        run,
                        end_when_empty: rec.end_when_empty,
                        seen_populated: true,
                        log: rec.log.clone(),
                    };
                    self.tasks.insert(id.clone(), task);
                    self.persist(&id);
                }
                Err((why, _ended)) => {
                    tracing::error!(task = %id, error = %why, "cannot re-adopt task; ended it");
                    self.startup.vanished_tasks.push(id.clone());
                    self.forget_task(&id);
                }
            }
        }
        // Credentials still held for tasks this daemon does not run (it died between minting
        // and recording the task): revoke them.
        for task in self.creds.queue.held_tasks() {
            if !self.tasks.contains_key(&task) {
                tracing::warn!(task = %task, "revoking the credentials of a task that is gone");
                self.creds.end_orphan(&task, Duration::ZERO);
            }
        }
        self.publish_sandboxes();
        Ok(())
    }

    /// The JWKS and revoked-token endpoint's state.
    pub fn token_endpoint(&self) -> TokenEndpoint {
        TokenEndpoint { jwks: Arc::new(self.creds.jwks()), queue: self.creds.queue.clone() }
    }

    /// A broker answer as a `secret` record.
    fn record_secret(&mut self, ev: SecretEvent) {
        if !self.tasks.contains_key(&ev.task) {
            return;
        }
        if !ev.granted {
            tracing::warn!(task = %ev.task, secret = %ev.name, pid = ?ev.pid, reason = %ev.reason, "refused a secret");
        }
        let rec = AuditRecord {
            time: self.now(),
            task: ev.task,
            kind: "secret",
            decision: Some(if ev.granted { Decision::Allow } else { Decision::Deny }),
            pid: ev.pid,
            exe: ev.exe,
            action: (!ev.granted).then_some("refuse"),
            rule: (!ev.granted).then_some("secrets"),
            ancestry: Some(ev.ancestry),
            reason: Some(ev.reason),
            op: Some("get"),
            secret: Some(ev.name),
            sha256: ev.sha256,
            ..Default::default()
        };
        self.emit(rec);
    }

    /// Revocation outcomes of running tasks (rotations) as `secret` records; a task's own
    /// end records its final ones, and outcomes of tasks already ended are in the daemon's
    /// log (their chains are closed).
    fn record_revocations(&mut self) {
        let ids: Vec<String> = self.tasks.keys().cloned().collect();
        for id in ids {
            for ev in self.creds.queue.take_events_of(&id) {
                let rec = AuditRecord {
                    time: self.now(),
                    task: ev.task,
                    kind: "secret",
                    decision: Some(if ev.error.is_none() { Decision::Allow } else { Decision::Deny }),
                    op: Some("revoke"),
                    secret: Some(ev.name),
                    reason: Some(match (&ev.error, ev.retry_in) {
                        (None, _) => format!("revoked (attempt {})", ev.attempts),
                        (Some(e), Some(d)) => {
                            format!(
                                "revocation failed (attempt {}): {e}; retried in {}ms",
                                ev.attempts,
                                d.as_millis()
                            )
                        }
                        (Some(e), None) => e.clone(),
                    }),
                    ..Default::default()
                };
                self.emit(rec);
            }
        }
        // Outcomes of ended tasks: logged by the queue, not kept.
        let _ = self.creds.queue.take_events();
    }

    /// Reissues credentials whose rotation is due.
    fn rotate_credentials(&mut self) {
        let mut records = Vec::new();
        for (id, t) in &mut self.tasks {
            let Some(h) = &t.run.task.creds else { continue };
            let rotated = self.creds.rotate(h);
            if rotated.is_empty() {
                continue;
            }
            let infos = h.infos();
            for (name, r) in rotated {
                let (decision, sha256, reason) = match r {
                    Ok(info) => (
                        Decision::Allow,
                        Some(info.sha256),
                        format!("reissued (generation {})", info.generation),
                    ),
                    Err(e) => {
                        (Decision::Deny, None, format!("reissue failed, the current credential stays: {e}"))
                    }
                };
                records.push(AuditRecord {
                    task: id.clone(),
                    kind: "secret",
                    decision: Some(decision),
                    op: Some("rotate"),
                    secret: Some(name),
                    sha256,
                    reason: Some(reason),
                    ..Default::default()
                });
            }
            t.run.task.credentials = infos.clone();
            t.info.credentials = infos;
        }
        for mut r in records {
            r.time = self.now();
            let id = r.task.clone();
            self.emit(r);
            self.persist(&id);
        }
    }

    /// Forgets an ended task's routes, counters and record.
    fn forget_task(&mut self, id: &str) {
        let mut routes = self.routes();
        if let Some(mut log) = routes.task_logs.remove(id) {
            let _ = log.flush();
        }
        routes.counters.remove(id);
        drop(routes);
        if let Err(e) = self.state.remove_task(id) {
            tracing::error!(task = %id, error = %e, "cannot remove the task record");
        }
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
        let v = self.tasks.values().map(|t| t.info.cgroup.clone()).collect();
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
        let mut secret_rx = self.secret_rx.take().unwrap_or_else(|| mpsc::unbounded_channel().1);
        let mut tick = tokio::time::interval(TICK);
        let mut beats = 0u32;
        let resolver = self.node.resolver.clone();
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
                Some(ev) = secret_rx.recv() => {
                    self.record_secret(ev);
                    let _ = self.pipeline.flush();
                }
                _ = tick.tick() => {
                    self.housekeeping();
                    beats += 1;
                    if beats.is_multiple_of(5) {
                        self.beat();
                    }
                }
                ev = crate::dns::next_event(resolver.as_ref()) => {
                    let clock = *self.pipeline.clock();
                    self.emit(ev.record(&clock));
                }
                _ = &mut shutdown => break,
            }
        }
        self.drain();
        if let Some(r) = &resolver {
            let clock = *self.pipeline.clock();
            for ev in r.take_events(None) {
                self.emit(ev.record(&clock));
            }
        }
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
            Cmd::StartContainer(req, reply) => {
                let r = self.start_container(*req);
                let _ = self.pipeline.flush();
                let _ = reply.send(r);
            }
            Cmd::EndContainer(cid, req, reply) => {
                let task = self
                    .tasks
                    .iter()
                    .find(|(_, t)| t.info.pod.as_ref().is_some_and(|p| p.container_id == cid))
                    .map(|(id, _)| id.clone());
                let r = match task {
                    Some(id) => {
                        Ok(self.end_task(&id, req.reason.unwrap_or_else(|| "container stopped".into())))
                    }
                    None => Err(ApiError {
                        status: 404,
                        message: format!("no running task is bound to container {cid:?}"),
                    }),
                };
                let _ = reply.send(r);
            }
            Cmd::Ping(reply) => {
                let _ = reply.send(self.tasks.len());
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
        info.processes = t.run.task.cgroup.as_ref().and_then(|c| c.pids().ok()).map_or(0, |p| p.len() as u64);
        Some(info)
    }

    fn housekeeping(&mut self) {
        self.drain();
        self.rotate_credentials();
        self.record_revocations();
        let now = Clock::boot_now_ns();
        let ids: Vec<String> = self.tasks.keys().cloned().collect();
        for id in ids {
            let Some(t) = self.tasks.get_mut(&id) else { continue };
            if t.run.task.expires_boot_ns.is_some_and(|e| e <= now) {
                self.end_task(&id, "ttl expired".into());
                continue;
            }
            if t.end_when_empty {
                let populated = t.run.task.cgroup.as_ref().is_some_and(|c| c.populated().unwrap_or(false));
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
            let on_gap = t.run.task.scope.on_gap;
            match t.run.task.gaps.record(&mut self.pipeline, &id, drops) {
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

    /// Starts a task through the lifecycle (every step, or none: a failure undoes the
    /// steps before it).
    fn start_task(&mut self, req: StartRequest) -> Result<TaskInfo, ApiError> {
        let scope =
            Scope::parse(&req.scope_text, &req.scope_path).map_err(|e| ApiError::bad(e.to_string()))?;
        self.start_parsed(req, scope, None)
    }

    /// Binds a container to the scope its pod's annotations name, before the container's
    /// first instruction. A refusal is recorded too (`bind_failed`), with the pod as far as it
    /// was established.
    fn start_container(&mut self, req: ContainerRequest) -> Result<TaskInfo, ApiError> {
        let fail_open = req.annotations.get(pod::binding::ON_FAILURE).is_some_and(|v| v == "open");
        let mut known_pod = None;
        let r = self.container_task(&req, &mut known_pod);
        if let Err(e) = &r {
            let short: String = req.id.chars().filter(char::is_ascii_alphanumeric).take(16).collect();
            let task = format!("unbound-{short}");
            let rec = AuditRecord {
                time: self.now(),
                task: task.clone(),
                kind: "bind_failed",
                // The container was refused its start, or (fail-open) starts unbound.
                decision: Some(if fail_open { Decision::Allow } else { Decision::Deny }),
                reason: Some(e.message.clone()),
                pod: known_pod.map(std::sync::Arc::new),
                node: Some(self.node.name.clone()),
                ..Default::default()
            };
            self.emit(rec);
            let _ = self.pipeline.checkpoint(&task);
            self.pipeline.forget_chain(&task);
            tracing::warn!(container = %req.id, fail_open, error = %e.message, "container not bound");
        }
        r
    }

    fn container_task(
        &mut self,
        req: &ContainerRequest,
        known_pod: &mut Option<pod::PodIdentity>,
    ) -> Result<TaskInfo, ApiError> {
        let cgroup_line = std::fs::read_to_string(format!("/proc/{}/cgroup", req.pid))
            .map_err(|e| ApiError::bad(format!("container {}: process {}: {e}", req.id, req.pid)))?;
        let rel = cgroup_line.lines().find_map(|l| l.strip_prefix("0::")).ok_or_else(|| {
            ApiError::bad(format!(
                "container {}: process {} is in no cgroup v2 cgroup; the runtime must place containers in the \
                 unified hierarchy",
                req.id, req.pid
            ))
        })?;
        let identity =
            pod::identify(rel, &req.id, &req.annotations).map_err(|e| ApiError::bad(e.to_string()))?;
        *known_pod = Some(identity.clone());
        let binding = pod::binding_for(&req.annotations, &identity.container)
            .map_err(|e| ApiError::bad(e.to_string()))?
            .ok_or_else(|| {
                ApiError::bad(format!("container {}: no {} annotation", req.id, pod::binding::SCOPE))
            })?;
        let dir = self.cfg.scopes.as_ref().ok_or_else(|| {
            ApiError::bad(
                "the daemon has no scopes directory (daemon config `scopes:`); pods cannot be bound",
            )
        })?;
        let path = dir.join(format!("{}.yaml", binding.scope));
        let text = std::fs::read_to_string(&path).map_err(|e| {
            ApiError::bad(format!("scope {:?} named by the pod: {}: {e}", binding.scope, path.display()))
        })?;
        let scope = Scope::parse(&text, &path).map_err(|e| ApiError::bad(e.to_string()))?;
        let start = StartRequest {
            scope_text: text,
            scope_path: path,
            mode: None,
            cgroup: Some(self.node.cgroup_mount.join(rel.trim_start_matches('/'))),
            log: None,
            // A missed poststop still ends the task once the container's cgroup is empty.
            end_when_empty: true,
            cmd: None,
        };
        self.start_parsed(start, scope, Some(Container::new(identity, req.rootfs.clone())))
    }

    fn start_parsed(
        &mut self,
        req: StartRequest,
        mut scope: Scope,
        container: Option<Container>,
    ) -> Result<TaskInfo, ApiError> {
        if let Some(m) = &req.mode {
            scope.mode = m.parse().map_err(ApiError::bad)?;
        }
        let slot = self.free_slot().ok_or_else(|| ApiError {
            status: 503,
            message: format!("all {} task slots are in use (maps.max_tasks)", self.cfg.maps.max_tasks - 1),
        })?;
        let id = new_task_id(&scope.task).map_err(|e| ApiError::internal(e.to_string()))?;
        let sandbox = match &req.cgroup {
            Some(path) => SandboxSpec::Bind(self.bindable(path)?),
            None => SandboxSpec::Create,
        };
        if let Some(log) = &req.log {
            // The task's own log is evidence too: refused inside an explicit write grant,
            // protected otherwise (it exists before the scope is compiled, so it is protected
            // by identity).
            crate::scope::compile::evidence_in_write_grant(&scope, "the task's log", log)
                .map_err(|e| ApiError::bad(e.to_string()))?;
            crate::scope::compile::protect_evidence([log.clone()]);
            self.open_task_log(&id, log, false)
                .map_err(|e| ApiError::bad(format!("log {}: {e}", log.display())))?;
        }
        let mut task = lifecycle::Task::new(id.clone(), slot, scope, sandbox);
        task.container = container;
        let cmd = req.cmd.clone();
        let started = self
            .lc
            .start(task, &mut live!(self), &mut |_| Launched { cmd: cmd.clone(), ..Default::default() });
        let run = match started {
            Ok(run) => run,
            Err(f) => {
                self.routes().task_logs.remove(&id);
                let msg = f.to_string();
                return Err(if f.error.usage { ApiError::bad(msg) } else { ApiError::internal(msg) });
            }
        };
        let info = self.task_info(&run);
        // A container's process is in its cgroup when it is bound: if the runtime gives up on
        // the container (its hook timed out, say) and removes the cgroup, the task ends at the
        // next tick instead of waiting for processes that never come.
        let seen_populated = run.task.container.is_some();
        let task = Task {
            info: info.clone(),
            run,
            end_when_empty: req.end_when_empty,
            seen_populated,
            log: req.log,
        };
        self.tasks.insert(id.clone(), task);
        self.persist(&id);
        self.publish_sandboxes();
        Ok(info)
    }

    /// Checks a cgroup to bind (`--cgroup`): below the cgroup2 mount, overlapping no running
    /// task's sandbox. Returns its canonical path.
    fn bindable(&self, path: &Path) -> Result<PathBuf, ApiError> {
        let path = std::fs::canonicalize(path)
            .map_err(|e| ApiError::bad(format!("--cgroup {}: {e}", path.display())))?;
        let mount = &self.node.cgroup_mount;
        if !path.starts_with(mount) || &path == mount {
            return Err(ApiError::bad(format!(
                "--cgroup {} is not a cgroup below the cgroup2 mount {}",
                path.display(),
                mount.display()
            )));
        }
        if self.tasks.values().any(|t| t.info.cgroup.starts_with(&path) || path.starts_with(&t.info.cgroup)) {
            return Err(ApiError::bad(format!("{} overlaps the sandbox of a running task", path.display())));
        }
        Ok(path)
    }

    /// What clients learn about a started task.
    fn task_info(&self, run: &Running) -> TaskInfo {
        let t = &run.task;
        let (cgroup, cgroup_id) =
            t.cgroup.as_ref().map(|c| (c.path().to_path_buf(), c.id())).unwrap_or_default();
        TaskInfo {
            id: t.id.clone(),
            slot: t.slot,
            cgroup,
            cgroup_id,
            created: t.created(),
            procs_files: t.launch.procs_files.clone(),
            env: t.launch.env.clone(),
            scope_path: t.scope.source.clone(),
            scope_text: t.scope.text.clone(),
            scope_hash: scope_hash(&t.scope.text),
            mode: t.scope.mode.as_str().to_string(),
            engine: self.engine.as_str().to_string(),
            started: t.started.clone(),
            expires: t.expires.clone(),
            secrets_dir: t.secrets_dir.clone(),
            secrets: t.secrets.clone(),
            broker: t.broker.clone(),
            credentials: t.credentials.clone(),
            processes: 0,
            pod: t.container.as_ref().map(|c| c.pod.clone()),
            identity: t.identity.clone().unwrap_or_else(|| {
                crate::task::IdentityDoc::new_signed(
                    &self.node.key,
                    &t.id,
                    scope_hash(&t.scope.text),
                    cgroup_id,
                    self.node.name.clone(),
                    t.started.clone(),
                    t.expires.clone(),
                )
            }),
        }
    }

    /// Ends a task as one operation, through the lifecycle: kill every process of the
    /// sandbox, collect its last records, revoke every step, write `task_end`. A failing
    /// step does not stop the others; failures are reported in the answer and the record.
    fn end_task(&mut self, id: &str, reason: String) -> EndResponse {
        let Some(t) = self.tasks.remove(id) else {
            return EndResponse { id: id.into(), reason, killed: 0, drops: 0, already: true, errors: vec![] };
        };
        self.publish_sandboxes();
        let ended = self.lc.end(t.run, &mut live!(self), reason.clone());
        let mut errors = ended.errors;
        let mut routes = self.routes();
        if let Some(mut log) = routes.task_logs.remove(id) {
            let _ = log.flush();
        }
        routes.counters.remove(id);
        drop(routes);
        if let Err(e) = self.state.remove_task(id) {
            errors.push(format!("task record: {e}"));
        }
        let resp = EndResponse {
            id: id.into(),
            reason,
            killed: ended.killed,
            drops: ended.drops,
            already: false,
            errors,
        };
        self.ended.push_back(resp.clone());
        if self.ended.len() > ENDED_KEPT {
            self.ended.pop_front();
        }
        resp
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
        m.gauge(
            "warden_revocations_pending",
            "Credentials whose revocation has not landed yet (retried with backoff).",
            &[],
            self.creds.queue.pending().len() as f64,
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

/// The lifecycle's view of a recorded task, for re-adoption, and why it cannot be adopted
/// when its scope no longer parses (then it can only be ended).
fn recorded_task(rec: &TaskRecord) -> (lifecycle::Task, Option<String>) {
    let info = &rec.info;
    let parsed = Scope::parse(&info.scope_text, &info.scope_path);
    let (mut scope, err) = match parsed {
        Ok(s) => (s, None),
        Err(e) => (unreadable_scope(info), Some(e.to_string())),
    };
    scope.mode = parse_mode(&info.mode);
    let sandbox = if info.created { SandboxSpec::Create } else { SandboxSpec::Bind(info.cgroup.clone()) };
    let mut t = lifecycle::Task::new(info.id.clone(), info.slot, scope, sandbox);
    t.origin = Origin::Adopted;
    t.cgroup_id = Some(info.cgroup_id);
    t.cgroup_path = Some(info.cgroup.clone());
    t.secrets_dir = info.secrets_dir.clone();
    t.secrets = info.secrets.clone();
    t.pids_v1 = rec.pids_v1.clone();
    t.started = info.started.clone();
    t.expires = info.expires.clone();
    t.expires_boot_ns = rec.expires_boot_ns;
    t.identity = Some(info.identity.clone());
    // This daemon's decode failures start at zero.
    t.gaps = GapTracker { drops: rec.drops_reported, decode_errors: 0 };
    t.saved = rec.saved.clone();
    t.container = rec.saved.get(crate::k8s::step::SAVED_KEY).and_then(Container::from_saved);
    (t, err)
}

/// A stand-in scope for a recorded task whose scope text no longer parses: enough to end it.
fn unreadable_scope(info: &TaskInfo) -> Scope {
    Scope {
        task: info.id.clone(),
        source: info.scope_path.clone(),
        mode: Mode::Enforce,
        ttl: None,
        exec_allow: None,
        read: None,
        write: None,
        deny: Vec::new(),
        secrets: Vec::new(),
        egress: None,
        hosts: Vec::new(),
        dns: None,
        process_limit: None,
        grants: Default::default(),
        on_gap: OnGap::Continue,
        capabilities: 0,
        user: None,
        text: info.scope_text.clone(),
        broker: None,
    }
}

/// A recorded task's mode (written by [`Mode::as_str`]; enforce if unreadable).
fn parse_mode(s: &str) -> Mode {
    s.parse().unwrap_or(Mode::Enforce)
}
