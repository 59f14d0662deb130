//! The daemon's core: owns the pinned sensor, the pipeline and the tasks. One tokio task
//! runs it; API handlers talk to it through [`Cmd`] messages, so every change to kernel
//! state and to the audit stream happens in one place, in order.
use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    path::PathBuf,
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use tokio::sync::mpsc;

use super::{
    api::{EndResponse, TaskInfo},
    config::DaemonConfig,
    state::{Heartbeat, StateDir},
};
use crate::{
    audit::{AuditRecord, clock::Clock},
    creds::{broker::SecretEvent, node::NodeCreds},
    lifecycle::{Lifecycle, Node},
    loader::{Engine, Sensor},
    pipeline::{Mode, Pipeline},
    scope::raw::OnGap,
    source::{EventSource, RingBufSource},
};

mod calls;
mod creds;
mod metrics;
mod routes;
mod startup;
mod tasks;

use self::{routes::Routes, tasks::Task};
pub use self::{
    routes::StreamLine,
    startup::{StartError, Startup},
};
pub use super::protocol::{ApiError, Cmd};

/// A [`Live`] host over the core's sensor, ring buffer and pipeline.
macro_rules! live_host {
    ($core:expr) => {
        $crate::lifecycle::Live::new(
            &$core.node,
            &mut $core.sensor,
            Some(&mut $core.source),
            &mut $core.pipeline,
        )
        .with_feed($core.feed.as_mut())
    };
}
use live_host as live;

/// Ended tasks remembered for `end` requests that come after the fact (TTL, empty sandbox).
const ENDED_KEPT: usize = 4096;
/// The housekeeping tick: TTLs, empty sandboxes, evidence gaps, heartbeat.
const TICK: Duration = Duration::from_millis(200);

/// What API handlers read without asking the core.
#[derive(Default)]
pub struct Shared {
    /// Sandbox cgroup directories and their tasks: callers inside them are refused the API,
    /// and the refusal is recorded on their task.
    pub sandboxes: RwLock<Vec<(PathBuf, String)>>,
}

/// The daemon core.
pub struct Core {
    cfg: DaemonConfig,
    sensor: Sensor,
    source: RingBufSource,
    pipeline: Pipeline,
    /// The kernel's reports of Landlock and seccomp refusals (none: they cannot be read here;
    /// tasks say so in `task_start.unrecorded`).
    feed: Option<crate::kaudit::feed::Feed>,
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

impl Core {
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

    fn persist(&self, id: &str) {
        if let Some(t) = self.tasks.get(id)
            && let Err(e) = self.state.save_task(&t.record())
        {
            tracing::error!(task = %id, error = %e, "cannot save the task record; a restart could not re-adopt it");
        }
    }

    fn publish_sandboxes(&self) {
        let v = self.tasks.iter().map(|(id, t)| (t.info.cgroup.clone(), id.clone())).collect();
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
        let used: std::collections::BTreeSet<u32> = self
            .tasks
            .values()
            .flat_map(|t| std::iter::once(t.info.slot).chain(t.calls.iter().map(|c| c.slot)))
            .collect();
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
        if let Some(feed) = self.feed.as_mut()
            && let Err(e) = feed.pump(&mut self.pipeline)
        {
            tracing::error!(error = %e, "reading the kernel's refusal reports failed");
        }
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
            Cmd::StartCall(task, req, reply) => {
                let r = self.start_call(&task, *req);
                let _ = self.pipeline.flush();
                let _ = reply.send(r);
            }
            Cmd::StartInsideCall(cgroup, req, reply) => {
                let r = self.start_inside_call(&cgroup, *req);
                let _ = self.pipeline.flush();
                let _ = reply.send(r);
            }
            Cmd::EndCall(task, call, req, reply) => {
                let reason = req.reason.unwrap_or_else(|| "ended by request".into());
                let r = self.end_call(&task, &call, &reason);
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
            Cmd::ApiRefused(r) => {
                if self.tasks.contains_key(&r.task) {
                    let rec = AuditRecord {
                        time: self.now(),
                        task: r.task,
                        kind: crate::audit::Kind::Api,
                        decision: Some(crate::audit::Decision::Deny),
                        pid: Some(r.pid),
                        exe: r.exe,
                        action: Some("refuse"),
                        rule: Some("protected.api"),
                        ancestry: Some(r.ancestry),
                        reason: Some(r.request),
                        ..Default::default()
                    };
                    self.emit(rec);
                    let _ = self.pipeline.flush();
                }
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
        if let Some((task, _)) = id.split_once('/') {
            // A call: its task's info with the call's cgroup, scope and identity document.
            let t = self.tasks.get(task)?;
            let c = t.calls.iter().find(|c| c.id == id)?;
            let mut info = t.info.clone();
            info.slot = c.slot;
            info.cgroup = c.cgroup.path().to_path_buf();
            info.cgroup_id = c.cgroup.id();
            info.scope_text = c.scope.text.clone();
            info.scope_hash = crate::task::scope_hash(&c.scope.text);
            info.identity = c.identity.clone();
            info.procs_files =
                std::iter::once(c.cgroup.procs_file()).chain(info.procs_files.into_iter().skip(1)).collect();
            info.processes = c.cgroup.pids().map_or(0, |p| p.len() as u64);
            return Some(info);
        }
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
            self.call_housekeeping(&id);
            let Some(t) = self.tasks.get_mut(&id) else { continue };
            if t.end_when_empty {
                let populated = t.run.task.cgroup.as_ref().is_some_and(|c| c.populated().unwrap_or(false));
                if populated {
                    t.seen_populated = true;
                } else if t.seen_populated {
                    self.end_task(&id, "exited".into());
                    continue;
                }
            }
            // Forks the process limit refused, then evidence gaps: loss since the last
            // report becomes a `gap` record.
            self.lc.check_limits(&mut t.run, &mut self.pipeline);
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
}

/// A recorded task's mode (written by [`Mode::as_str`]; enforce if unreadable).
fn parse_mode(s: &str) -> Mode {
    s.parse().unwrap_or(Mode::Enforce)
}
