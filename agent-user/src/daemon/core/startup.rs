//! Starting the daemon: load or re-adopt the pinned sensor, open the logs, re-adopt the
//! tasks a previous daemon left running (through the lifecycle), and migrate the pins of
//! other versions (reading what their ring buffer still holds).
use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    io,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::broadcast;

use super::{
    Core, Shared, StreamLine, live,
    routes::{RoutedSink, Routes},
    tasks::Task,
};
use crate::{
    audit::{
        AuditRecord, AuditSink, JsonlSink,
        chain::{GENESIS, NodeKey},
        clock::Clock,
        sink::RotatingJsonlSink,
    },
    correlate::ProcessTable,
    creds::node::NodeCreds,
    daemon::{
        api::TaskInfo,
        config::DaemonConfig,
        state::{self, StateDir, TaskRecord},
    },
    k8s::Container,
    lifecycle::{self, Lifecycle, Node, Origin, SandboxSpec},
    loader::{LoadOptions, PinLayout, Sensor, pin::ensure_bpffs, select_engine},
    pipeline::{GapTracker, Mode, Pipeline},
    sandbox::cgroup2_mount,
    scope::{Scope, raw::OnGap},
    source::RingBufSource,
    task::node_name,
};

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

pub(super) fn io_ctx(what: impl Into<String>) -> impl FnOnce(io::Error) -> StartError {
    let what = what.into();
    move |source| StartError::Io { what, source }
}

/// What the daemon found and did when it started.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Startup {
    pub version: String,
    pub adopted_links: Vec<String>,
    pub adopted_tasks: Vec<String>,
    /// Calls re-adopted with their tasks (`task/cN`).
    pub adopted_calls: Vec<String>,
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
        // The node's key, log, state, pins and every task's issued secrets are out of every
        // task's reach (a task's own secrets are granted back file by file when it compiles).
        let log = &cfg.log.path;
        let keep = cfg.log.keep.unwrap_or(16).min(64);
        crate::scope::compile::protect_evidence(
            [
                cfg.key.clone(),
                log.clone(),
                cfg.state_dir.clone(),
                cfg.secrets_dir.clone(),
                cfg.bpffs.join(&cfg.pin_name),
            ]
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
        // Every program is loaded: the kernel BTF read for them is no longer needed.
        sensor.release_btf();
        if !engine.is_lsm() {
            warn_shared_parents(&crate::scope::compile::evidence_paths());
        }
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
            memory_default: crate::sandbox::limits::default_memory(),
        };
        let mut core = Core {
            cfg,
            sensor,
            source,
            pipeline,
            feed: crate::kaudit::feed::Feed::open_or_warn(),
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
            let old_ring = old.open_ring();
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
                    if let Err(e) = self.forget_task(&id) {
                        tracing::error!(task = %id, error = %e, "cannot remove the task record");
                    }
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
                        kind: crate::audit::Kind::Gap,
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
                        // Re-adopted just below: adopting bound the task's whole subtree,
                        // the calls' cgroups included, to the task's slot.
                        calls: Vec::new(),
                        next_call: 0,
                    };
                    self.tasks.insert(id.clone(), task);
                    let calls = self.readopt_calls(&id, rec.calls.clone());
                    self.startup.adopted_calls.extend(calls);
                }
                Err((why, _ended)) => {
                    tracing::error!(task = %id, error = %why, "cannot re-adopt task; ended it");
                    self.startup.vanished_tasks.push(id.clone());
                    if let Err(e) = self.forget_task(&id) {
                        tracing::error!(task = %id, error = %e, "cannot remove the task record");
                    }
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
    scope.mode = super::parse_mode(&info.mode);
    let sandbox = if info.created { SandboxSpec::Create } else { SandboxSpec::Bind(info.cgroup.clone()) };
    let mut t = lifecycle::Task::new(info.id.clone(), info.slot, scope, sandbox);
    t.origin = Origin::Adopted;
    t.launches = false;
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
    t.gaps = GapTracker { drops: rec.drops_reported, decode_errors: 0, reports_lost: 0 };
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
        memory_limit: None,
        grants: Default::default(),
        on_gap: OnGap::Continue,
        intent_digest: false,
        intent_max: crate::audit::INTENT_MAX_DEFAULT,
        capabilities: 0,
        user: None,
        text: info.scope_text.clone(),
        broker: None,
    }
}

/// On the fallback engine a protected file's parent directories lose the right to create
/// entries for every task (Landlock grants whole directories). In a shared directory such as
/// `/tmp` that is a refusal of ordinary work: say so once, with the fix.
fn warn_shared_parents(protected: &[PathBuf]) {
    use std::os::unix::fs::PermissionsExt as _;
    let mut warned = std::collections::BTreeSet::new();
    for p in protected {
        for dir in p.ancestors().skip(1) {
            let Ok(m) = std::fs::metadata(dir) else { continue };
            // World-writable with the sticky bit: a directory every program creates files in.
            if m.permissions().mode() & 0o1002 == 0o1002 && warned.insert(dir.to_path_buf()) {
                tracing::warn!(
                    protected = %p.display(),
                    dir = %dir.display(),
                    "on the fallback engine tasks cannot create files in {} while this daemon keeps \
                     {} there; give the daemon's key, log, state and secrets directories of their own \
                     (e.g. /var/lib/warden, /var/log/warden, /run/warden)",
                    dir.display(),
                    p.display()
                );
            }
        }
    }
}
