//! The seam between the lifecycle and the machine: every kernel, cgroupfs and secrets-tmpfs
//! operation a step makes goes through [`Host`]. [`Live`] is the real one (a [`Sensor`],
//! cgroupfs, the secrets tmpfs); the unit tests use a fake that records what is held and can
//! fail any operation.
use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use crate::{
    audit::{chain::NodeKey, clock::Clock},
    creds::{
        CredError,
        node::{NodeCreds, TaskHandle},
        revoke::RevokeEvent,
    },
    loader::{Engine, LoadError, Sensor},
    pipeline::Pipeline,
    sandbox::{
        Cgroup, CgroupError,
        limits::{MemoryLimit, PidsLimit},
        secrets::{IssuedInfo, IssuedSecrets, SecretError},
    },
    scope::{Scope, ScopeError, compile::CompiledScope},
    source::Drain,
};

/// How long processes get to die after `cgroup.kill`.
pub const KILL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Errors of host operations.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error(transparent)]
    Scope(#[from] ScopeError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Cred(#[from] CredError),
    #[error(transparent)]
    Dns(#[from] crate::dns::DnsError),
    /// A request that cannot be met as asked (e.g. a cgroup that is not the one recorded).
    #[error("{0}")]
    Refused(String),
}

/// What every task of one sensor owner shares: where sandboxes and secrets go, the key
/// that signs identity documents, the node's name.
#[derive(Clone)]
pub struct Node {
    /// The cgroup2 mount (from mountinfo).
    pub cgroup_mount: PathBuf,
    /// Parent of the sandboxes Warden creates, relative to `cgroup_mount`.
    pub cgroup_parent: String,
    /// Where issued secrets get their per-task tmpfs.
    pub secrets_dir: PathBuf,
    /// Signs identity documents (and the log's checkpoints).
    pub key: NodeKey,
    /// The node's host name.
    pub name: String,
    /// Brokered credentials (the node daemon): the revocation queue and its worker.
    /// `None`: this owner cannot mint, serve or revoke them (standalone `warden run`).
    pub creds: Option<Arc<NodeCreds>>,
    /// The resolver for tasks whose scopes name hosts (egress by name), if this sensor owner
    /// runs one.
    pub resolver: Option<crate::dns::Resolver>,
    /// The memory limit of a task whose scope has none (`limits.memory`): by default half of
    /// the node's memory (`sandbox::limits::default_memory`). `None`: no default limit.
    pub memory_default: Option<u64>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("cgroup_mount", &self.cgroup_mount)
            .field("cgroup_parent", &self.cgroup_parent)
            .field("secrets_dir", &self.secrets_dir)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// The directory Warden's sandboxes are created in.
    pub fn sandbox_parent(&self) -> PathBuf {
        self.cgroup_mount.join(&self.cgroup_parent)
    }
}

/// Every operation the lifecycle's steps make on the machine.
pub trait Host {
    /// The node-wide settings.
    fn node(&self) -> &Node;
    /// The engine the sensor runs.
    fn engine(&self) -> Engine;
    /// The records pipeline (task registration, `task_start`, gaps, `task_end`).
    fn pipeline(&mut self) -> &mut Pipeline;
    /// Now, as records write it.
    fn now(&mut self) -> String {
        self.pipeline().clock().format(Clock::boot_now_ns())
    }
    /// Moves what the kernel has recorded so far into the pipeline.
    fn drain(&mut self);

    /// Creates the sandbox cgroup `<sandbox parent>/<name>`.
    fn cgroup_create(&mut self, name: &str) -> Result<Cgroup, HostError>;
    /// Opens an existing cgroup.
    fn cgroup_open(&mut self, path: &Path) -> Result<Cgroup, HostError>;
    /// Ids of the cgroup and every cgroup below it.
    fn cgroup_ids(&mut self, cg: &Cgroup) -> Vec<u64>;
    /// Processes in the cgroup and below.
    fn cgroup_pids(&mut self, cg: &Cgroup) -> u64;
    /// Freezes and kills every process in the cgroup, waiting until it is empty.
    fn cgroup_kill(&mut self, cg: &Cgroup) -> Result<(), HostError>;
    /// Kills what is left and removes a cgroup Warden created (and the shared parent once
    /// no other task uses it).
    fn cgroup_remove(&mut self, cg: &Cgroup) -> Result<(), HostError>;

    /// Limits the sandbox to `max` processes.
    fn pids_limit(&mut self, cg: &Cgroup, name: &str, max: u32) -> Result<PidsLimit, HostError>;
    /// Removes a limit's v1 twin cgroup (if it has one).
    fn pids_remove(&mut self, limit: &PidsLimit);
    /// Limits the sandbox to `bytes` of memory; `None`: the node has no memory controller.
    fn memory_limit(&mut self, cg: &Cgroup, name: &str, bytes: u64)
    -> Result<Option<MemoryLimit>, HostError>;
    /// Removes a memory limit's v1 twin cgroup (if it has one).
    fn memory_remove(&mut self, limit: &MemoryLimit);

    /// Issues the scope's secrets onto the task's tmpfs.
    fn secrets_issue(&mut self, task: &str, scope: &Scope) -> Result<IssuedSecrets, HostError>;
    /// The issued secrets of a running task, as recorded.
    fn secrets_adopt(&mut self, task: &str, issued: Vec<IssuedInfo>) -> IssuedSecrets {
        IssuedSecrets::adopt(&self.node().secrets_dir, task, issued)
    }
    /// Overwrites and removes issued secrets and their tmpfs.
    fn secrets_destroy(&mut self, s: &mut IssuedSecrets) -> Result<(), HostError>;

    /// Zeroes the drop counters of `slot` before it is reused.
    fn reset_drops(&mut self, slot: u32) -> Result<(), HostError>;
    /// Records of `slot` the kernel could not deliver so far.
    fn drops(&mut self, slot: u32) -> u64;
    /// Whether the fallback engine cannot judge path-named unix sockets on this kernel (the
    /// cgroup unix programs did not load: before 6.7).
    fn unix_unjudged(&self) -> bool {
        false
    }
    /// Attaches the egress programs (and the fallback's unix-socket programs) to the task's
    /// cgroup.
    fn egress_attach(&mut self, cg: &Cgroup, task: &str) -> Result<(), HostError>;
    /// Detaches the task's pinned egress programs.
    fn egress_detach(&mut self, task: &str) -> Result<(), HostError>;
    /// Writes the compiled scope's tables for `slot`, then the watch entries of `cgroup_ids`.
    fn bind(&mut self, slot: u32, cgroup_ids: &[u64], scope: &CompiledScope) -> Result<(), HostError>;
    /// Removes the watch entries of `slot`, then (when known) the scope's tables, and every
    /// address granted to the slot by name.
    fn unbind(&mut self, slot: u32, scope: Option<&CompiledScope>) -> Result<(), HostError>;

    /// Mints the scope's brokered secrets and starts the task's broker in `secrets_dir`.
    fn creds_start(
        &mut self,
        task: &str,
        scope: &Scope,
        expires_at: Option<u64>,
        secrets_dir: &Path,
        sandbox: &Path,
    ) -> Result<TaskHandle, HostError> {
        let node = self.node();
        let Some(c) = node.creds.clone() else {
            return Err(HostError::Refused(
                "brokered secrets (`from: exec:`, `from: token`) are minted, served and revoked by the node \
                 daemon; start `warden daemon`"
                    .into(),
            ));
        };
        let mount = node.cgroup_mount.clone();
        let hash = crate::task::scope_hash(&scope.text);
        Ok(c.start_task(scope, task, &hash, expires_at, secrets_dir, sandbox, &mount)?)
    }
    /// Stops a task's broker and revokes its credentials; waits up to `wait` for the
    /// revocations to land. Returns the names not revoked yet (retried in the background).
    fn creds_end(&mut self, h: TaskHandle, wait: Duration) -> Vec<String> {
        match self.node().creds.clone() {
            Some(c) => c.end_task(h, wait),
            None => Vec::new(),
        }
    }
    /// Revokes what a task whose values this process does not hold left behind.
    fn creds_orphan(&mut self, task: &str, wait: Duration) -> Vec<String> {
        match self.node().creds.clone() {
            Some(c) => c.end_orphan(task, wait),
            None => Vec::new(),
        }
    }
    /// Revocation outcomes of `task` since the last call.
    fn creds_events(&mut self, task: &str) -> Vec<RevokeEvent> {
        match self.node().creds.clone() {
            Some(c) => c.queue.take_events_of(task),
            None => Vec::new(),
        }
    }
    /// Starts serving the task's DNS at its slot's address (egress by name).
    fn dns_register(&mut self, task: crate::dns::TaskDns) -> Result<(), HostError>;
    /// Stops serving `slot`'s DNS (no grant is in flight once it returns) and records the
    /// queries answered so far.
    fn dns_unregister(&mut self, slot: u32, task: &str);
    /// Whether the kernel's reports of Landlock and seccomp refusals are read (see
    /// [`crate::kaudit`]). Without a feed, nothing is.
    fn refusals_recorded(&self) -> bool {
        false
    }
    /// Names the task to the refusal feed, so its Landlock and seccomp refusals become its
    /// `deny` records.
    fn refusals_register(&mut self, _info: crate::kaudit::TaskInfo) {}
    /// The task's first process (the creator of its Landlock domain).
    fn refusals_first_pid(&mut self, _slot: u32, _pid: u32) {}
    /// At task end, once its processes are gone: reads the reports still on their way, then
    /// forgets the task.
    fn refusals_settle(&mut self, _slot: u32) {}
}

/// The real host: a loaded sensor, its ring buffer, the pipeline, cgroupfs.
pub struct Live<'a> {
    pub node: &'a Node,
    pub sensor: &'a mut Sensor,
    /// Where [`Host::drain`] reads from (none: nothing to drain).
    pub source: Option<&'a mut dyn Drain>,
    pub pipeline: &'a mut Pipeline,
    /// The kernel's refusal reports (none: not read).
    pub feed: Option<&'a mut crate::kaudit::feed::Feed>,
}

impl<'a> Live<'a> {
    /// Reads the kernel's refusal reports through `feed` too.
    pub fn with_feed(mut self, feed: Option<&'a mut crate::kaudit::feed::Feed>) -> Self {
        self.feed = feed;
        self
    }

    pub fn new(
        node: &'a Node,
        sensor: &'a mut Sensor,
        source: Option<&'a mut dyn Drain>,
        pipeline: &'a mut Pipeline,
    ) -> Self {
        Self { node, sensor, source, pipeline, feed: None }
    }
}

impl Host for Live<'_> {
    fn node(&self) -> &Node {
        self.node
    }

    fn engine(&self) -> Engine {
        if self.sensor.lsm_engine() { Engine::BpfLsm } else { Engine::Fallback }
    }

    fn unix_unjudged(&self) -> bool {
        self.sensor.unix_unjudged().is_some()
    }

    fn pipeline(&mut self) -> &mut Pipeline {
        self.pipeline
    }

    fn drain(&mut self) {
        if let Some(source) = self.source.as_deref_mut() {
            let pipeline = &mut *self.pipeline;
            source.drain_all(&mut |b| pipeline.ingest(b));
        }
        if let Some(feed) = self.feed.as_deref_mut()
            && let Err(e) = feed.pump(self.pipeline)
        {
            tracing::error!(error = %e, "reading the kernel's refusal reports failed");
        }
    }

    fn cgroup_create(&mut self, name: &str) -> Result<Cgroup, HostError> {
        Ok(Cgroup::create(&self.node.sandbox_parent(), name)?)
    }

    fn cgroup_open(&mut self, path: &Path) -> Result<Cgroup, HostError> {
        Ok(Cgroup::open(path)?)
    }

    fn cgroup_ids(&mut self, cg: &Cgroup) -> Vec<u64> {
        let mut ids = vec![cg.id()];
        ids.extend(cg.descendant_ids().unwrap_or_default());
        ids
    }

    fn cgroup_pids(&mut self, cg: &Cgroup) -> u64 {
        cg.pids().map(|p| p.len() as u64).unwrap_or(0)
    }

    fn cgroup_kill(&mut self, cg: &Cgroup) -> Result<(), HostError> {
        Ok(cg.kill_all(KILL_TIMEOUT)?)
    }

    fn cgroup_remove(&mut self, cg: &Cgroup) -> Result<(), HostError> {
        cg.kill_all(KILL_TIMEOUT)?;
        cg.remove()?;
        // The shared parent goes too once no other task uses it.
        let _ = std::fs::remove_dir(self.node.sandbox_parent());
        Ok(())
    }

    fn pids_limit(&mut self, cg: &Cgroup, name: &str, max: u32) -> Result<PidsLimit, HostError> {
        Ok(PidsLimit::apply(cg, &self.node.cgroup_parent, name, max)?)
    }

    fn pids_remove(&mut self, limit: &PidsLimit) {
        limit.remove(&self.node.cgroup_parent);
    }

    fn memory_limit(
        &mut self,
        cg: &Cgroup,
        name: &str,
        bytes: u64,
    ) -> Result<Option<MemoryLimit>, HostError> {
        Ok(MemoryLimit::apply(cg, &self.node.cgroup_parent, name, bytes)?)
    }

    fn memory_remove(&mut self, limit: &MemoryLimit) {
        limit.remove(&self.node.cgroup_parent);
    }

    fn secrets_issue(&mut self, task: &str, scope: &Scope) -> Result<IssuedSecrets, HostError> {
        Ok(IssuedSecrets::issue(&self.node.secrets_dir, task, scope)?)
    }

    fn secrets_destroy(&mut self, s: &mut IssuedSecrets) -> Result<(), HostError> {
        Ok(s.destroy()?)
    }

    fn reset_drops(&mut self, slot: u32) -> Result<(), HostError> {
        Ok(self.sensor.reset_drops(slot)?)
    }

    /// The kernel's drops for `slot`, plus what the source lost on its way to the pipeline.
    fn drops(&mut self, slot: u32) -> u64 {
        let lost = self.source.as_deref().map_or(0, Drain::lost);
        self.sensor.drops(slot).map(|d| d.total).unwrap_or(0) + lost
    }

    fn egress_attach(&mut self, cg: &Cgroup, task: &str) -> Result<(), HostError> {
        Ok(self.sensor.attach_task_egress(cg, task)?)
    }

    fn egress_detach(&mut self, task: &str) -> Result<(), HostError> {
        self.sensor.detach_task_egress(task)?;
        Ok(())
    }

    fn bind(&mut self, slot: u32, cgroup_ids: &[u64], scope: &CompiledScope) -> Result<(), HostError> {
        Ok(self.sensor.bind(slot, cgroup_ids, scope)?)
    }

    fn refusals_recorded(&self) -> bool {
        self.feed.is_some()
    }

    fn refusals_register(&mut self, info: crate::kaudit::TaskInfo) {
        if let Some(feed) = self.feed.as_deref_mut() {
            feed.register(info);
        }
    }

    fn refusals_first_pid(&mut self, slot: u32, pid: u32) {
        if let Some(feed) = self.feed.as_deref_mut() {
            feed.first_pid(slot, pid);
        }
    }

    fn refusals_settle(&mut self, slot: u32) {
        if let Some(feed) = self.feed.as_deref_mut() {
            if let Err(e) = feed.settle(self.pipeline, slot) {
                tracing::error!(error = %e, "reading the kernel's refusal reports failed");
            }
            feed.unregister(slot);
        }
    }

    fn unbind(&mut self, slot: u32, scope: Option<&CompiledScope>) -> Result<(), HostError> {
        match scope {
            Some(s) => self.sensor.unbind(slot, s)?,
            None => {
                self.sensor.unwatch_slot(slot)?;
                self.sensor.clear_egress_slot(slot)?;
            }
        }
        Ok(())
    }

    fn dns_register(&mut self, task: crate::dns::TaskDns) -> Result<(), HostError> {
        let resolver = self.node.resolver.as_ref().ok_or(crate::dns::DnsError::NoResolver)?;
        resolver.register(task)?;
        // The port is known once the first task is served (`warden run` picks a free one).
        Ok(self.sensor.set_dns_config(resolver.dns_config())?)
    }

    fn dns_unregister(&mut self, slot: u32, task: &str) {
        let Some(resolver) = &self.node.resolver else { return };
        resolver.unregister(slot);
        let clock = *self.pipeline.clock();
        for ev in resolver.take_events(Some(task)) {
            if let Err(e) = self.pipeline.emit(ev.record(&clock)) {
                tracing::error!(task, error = %e, "writing a dns record failed");
            }
        }
    }
}
