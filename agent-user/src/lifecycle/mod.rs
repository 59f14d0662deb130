//! The task lifecycle: the one place where a task starts and ends. `warden run` (standalone),
//! the node daemon and the daemon's re-adoption of running tasks after a restart all go
//! through [`Lifecycle`]; this is where a scope becomes kernel state and where that state is
//! taken away again.
//!
//! ```text
//! start:  container → secrets → scope → sandbox → credentials → limits → records → refusals
//!         → egress → tables → identity
//!         → (the caller launches the first process) → task_start
//! end:    freeze and kill → drain → drops into a `gap` → each step's end, last step first
//!         (unbind tables, detach egress, read the last kernel refusal reports, remove limits,
//!         revoke credentials, remove the sandbox, destroy secrets)
//!         → task_end → checkpoint
//! ```
//!
//! # Steps
//! A [`Step`] is one named unit with three parts:
//! - `start` acquires what it is responsible for and writes what later steps or the launch
//!   need into the shared [`Task`] (the cgroup, the compiled scope, env vars, ...);
//! - `undo` gives it back when a *later* step fails to start (steps undo last-first, so
//!   nothing is left behind and the task never existed);
//! - `end` gives it back when the task ends. An `end` that fails does not stop the others:
//!   its error is reported (the daemon's `EndResponse.errors`, `task_end.reason`).
//!
//! Every call into the kernel, cgroupfs or the secrets tmpfs goes through [`Host`], the seam
//! that [`Live`] implements for real and a fake implements in the unit tests (as aya's
//! `sys/fake.rs` fakes syscalls): no root is needed to test that a failing step N leaves
//! nothing of steps 1..N-1 behind.
//!
//! A task re-adopted after a daemon restart runs the same steps with [`Task::origin`] =
//! [`Origin::Adopted`]: each step re-acquires what is still there (opens the cgroup instead of
//! creating it, adopts the issued secrets instead of issuing them, re-binds the tables).
//! A task that cannot be adopted is ended: the `end` of *every* step runs (also of the
//! steps that never started), so an `end` must work from what [`Task`] says (ids, paths)
//! even when its `start` did not run.
//!
//! # Adding a step
//! 1. Write the feature as its own module with a small API, and test it there.
//! 2. Add a `struct MyStep` (its private state as fields) implementing [`Step`] in
//!    `steps.rs`, or in your module, and put it into [`standard_steps`] at the place where
//!    what it needs exists (e.g. after `sandbox` when you need the cgroup, before `tables`
//!    when the kernel tables must see your state, before `identity` when it must be in the
//!    identity document).
//! 3. New kernel or filesystem operations go into [`Host`] (with an implementation in
//!    [`Live`] and in `fake.rs`), so the failure tests keep covering them: the test
//!    `every_failing_step_leaves_nothing_behind` fails the N-th host operation for every N.
//! 4. What the step must find again after a daemon restart goes into [`Task::saved`]
//!    (persisted with the daemon's task record); in `start`, look at `task.origin`.
//!
//! # Launch-time hooks
//! What the task's first process (and every process `warden task exec` starts) gets before
//! its first instruction is described by [`Launch`] in [`Task::launch`]: the `cgroup.procs`
//! files it joins, the environment variables it gets, and (fallback engine, enforce mode)
//! the Landlock/seccomp confinement compiled from the scope. A step adds to it (e.g.
//! `task.launch.env.push(..)`). [`Launch`] is serialisable: the daemon hands it to its
//! clients in `TaskInfo`, and [`launch::spawn`] starts a process with it, for `warden run`
//! and `warden task exec` alike. Something applied between fork and exec (joining
//! namespaces, say) is a new field of [`Launch`] applied in `sandbox::launch`'s `pre_exec`.
pub mod host;
pub mod launch;
mod steps;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

use std::{collections::BTreeMap, path::PathBuf};

use crate::{
    audit::{AuditRecord, Decision},
    pipeline::GapTracker,
    sandbox::{Cgroup, secrets::IssuedInfo},
    scope::{Mode, Scope, compile::CompiledScope},
    task::{IdentityDoc, scope_hash},
};

pub use self::{
    host::{Host, HostError, Live, Node},
    launch::Launch,
    steps::standard_steps,
};

/// A step's failure.
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub struct StepError {
    /// The step that failed ([`Step::name`]).
    pub step: &'static str,
    /// Whether the request was at fault (a scope that does not compile, a cgroup that does
    /// not exist): exit 2 / HTTP 400 rather than a runtime failure.
    pub usage: bool,
    #[source]
    pub source: Box<HostError>,
}

impl StepError {
    /// A runtime failure of `step`.
    pub fn runtime(step: &'static str, e: impl Into<HostError>) -> Self {
        Self { step, usage: false, source: Box::new(e.into()) }
    }

    /// A failure caused by the request (the scope, the asked-for cgroup).
    pub fn usage(step: &'static str, e: impl Into<HostError>) -> Self {
        Self { step, usage: true, source: Box::new(e.into()) }
    }
}

/// One named unit of starting and ending a task. See the module documentation.
pub trait Step: Send {
    /// Short name, used in errors and tests (`sandbox`, `tables`, ...).
    fn name(&self) -> &'static str;
    /// Acquires this step's part of the task (or re-acquires it: `task.origin`).
    fn start(&mut self, task: &mut Task, host: &mut dyn Host) -> Result<(), StepError>;
    /// Gives back what `start` acquired, after a later step failed to start. By default the
    /// same as `end`.
    fn undo(&mut self, task: &mut Task, host: &mut dyn Host) {
        if let Err(e) = self.end(task, host) {
            tracing::warn!(task = %task.id, step = self.name(), error = %e, "undoing a step failed");
        }
    }
    /// Gives back this step's part at task end. Must also work when `start` never ran (a
    /// task that could not be re-adopted), from what [`Task`] says.
    fn end(&mut self, task: &mut Task, host: &mut dyn Host) -> Result<(), StepError>;
}

/// Where a task comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Started now.
    New,
    /// Started by a previous daemon, still running; its kernel state may be in place.
    Adopted,
}

/// Which cgroup the task runs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SandboxSpec {
    /// A new cgroup `<cgroup2 mount>/<node cgroup_parent>/<task id>`, removed at the end.
    Create,
    /// An existing cgroup (e.g. a container's), bound and left in place at the end.
    Bind(PathBuf),
}

/// What the steps share about one task. Steps fill it in as they start.
#[derive(Debug)]
pub struct Task {
    pub id: String,
    /// The task's slot in the kernel maps.
    pub slot: u32,
    pub origin: Origin,
    /// The scope (issued secrets placed once the `secrets` step ran).
    pub scope: Scope,
    pub sandbox: SandboxSpec,
    /// Set by the `scope` step.
    pub compiled: Option<CompiledScope>,
    /// Whether the process running this lifecycle launches the task's processes itself
    /// (`warden run`; the default). The node daemon does not (a `task exec` client compiles
    /// its own confinement): its `scope` step leaves the Landlock plan out.
    pub launches: bool,
    /// Set by the `sandbox` step.
    pub cgroup: Option<Cgroup>,
    /// When re-adopting: the cgroup id the task was started with.
    pub cgroup_id: Option<u64>,
    /// When re-adopting: where its cgroup is, as recorded.
    pub cgroup_path: Option<PathBuf>,
    /// What the task's first process gets before its first instruction.
    pub launch: Launch,
    /// Where the issued secrets are (`<secrets_dir>/<task>`), when the scope issues any.
    pub secrets_dir: Option<PathBuf>,
    /// The issued secrets (paths and digests, never values).
    pub secrets: Vec<IssuedInfo>,
    /// Brokered credentials and the task's broker (`credentials`).
    pub creds: Option<crate::creds::node::TaskHandle>,
    /// The broker socket (`credentials`).
    pub broker: Option<PathBuf>,
    /// The brokered credentials, as records show them (`credentials`).
    pub credentials: Vec<crate::creds::CredInfo>,
    /// The v1 pids twin cgroup, on hybrid hosts (`limits`).
    pub pids_v1: Option<PathBuf>,
    /// Controls of the scope this engine cannot enforce (`task_start.unenforced`).
    pub unenforced: Vec<String>,
    /// Refusals this engine enforces but cannot record on this kernel (`task_start.unrecorded`).
    pub unrecorded: Vec<String>,
    /// Forks the process limit refused, from `pids.events` (`limits`).
    pub limit_events: Option<crate::sandbox::limits::LimitEvents>,
    /// The memory limit in bytes, when one was set at start (`limits`).
    pub memory_limit: Option<u64>,
    /// Processes the kernel killed at the memory limit (`limits`).
    pub oom_kills: Option<crate::sandbox::limits::OomKills>,
    /// `CLOCK_BOOTTIME` ns when the tables were bound (`tables`).
    pub bound_boot_ns: Option<u64>,
    /// The signed workload-identity document (`identity`).
    pub identity: Option<IdentityDoc>,
    /// RFC 3339 start time (`identity`).
    pub started: String,
    /// RFC 3339 expiry, when the scope has a ttl (`identity`).
    pub expires: Option<String>,
    /// `CLOCK_BOOTTIME` ns at which the ttl ends the task.
    pub expires_boot_ns: Option<u64>,
    /// Loss already reported in `gap` records.
    pub gaps: GapTracker,
    /// Whatever a step needs to find its state again after a daemon restart, by step name
    /// (persisted in the daemon's task record).
    pub saved: BTreeMap<String, serde_json::Value>,
    /// A pod's container this task is bound to (`warden oci-hook`): its pod and root.
    pub container: Option<crate::k8s::Container>,
}

impl Task {
    /// A task to start now.
    pub fn new(id: String, slot: u32, scope: Scope, sandbox: SandboxSpec) -> Self {
        Self {
            id,
            slot,
            origin: Origin::New,
            scope,
            sandbox,
            compiled: None,
            launches: true,
            cgroup: None,
            cgroup_id: None,
            cgroup_path: None,
            launch: Launch::default(),
            secrets_dir: None,
            secrets: Vec::new(),
            creds: None,
            broker: None,
            credentials: Vec::new(),
            pids_v1: None,
            unenforced: Vec::new(),
            unrecorded: Vec::new(),
            limit_events: None,
            memory_limit: None,
            oom_kills: None,
            bound_boot_ns: None,
            identity: None,
            started: String::new(),
            expires: None,
            expires_boot_ns: None,
            gaps: GapTracker::default(),
            saved: BTreeMap::new(),
            container: None,
        }
    }

    /// Whether the scope enforces (rather than audits).
    pub fn enforce(&self) -> bool {
        self.scope.mode == Mode::Enforce
    }

    /// Whether the task's cgroup was created for it (and is removed at the end).
    pub fn created(&self) -> bool {
        self.sandbox == SandboxSpec::Create
    }
}

/// Facts about the task's first process for `task_start`, from whoever launched it.
#[derive(Debug, Clone, Default)]
pub struct Launched {
    pub pid: Option<u32>,
    pub ppid: Option<u32>,
    pub exe: Option<String>,
    pub cmd: Option<Vec<String>>,
}

/// Facts for `task_end`.
#[derive(Debug, Clone, Default)]
pub struct EndFacts {
    pub reason: String,
    pub pid: Option<u32>,
    pub ppid: Option<u32>,
    pub exit_status: Option<i32>,
    pub signal: Option<i32>,
}

/// A task whose steps all started.
pub struct Running {
    pub task: Task,
    steps: Vec<Box<dyn Step>>,
    /// Processes still running when the task was stopped.
    killed: u64,
    /// Failures of the end so far.
    errors: Vec<String>,
    /// Processes the kernel killed at the memory limit so far.
    oom_kills: u64,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<_> = self.steps.iter().map(|s| s.name()).collect();
        f.debug_struct("Running").field("task", &self.task).field("steps", &names).finish()
    }
}

/// How a task ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ended {
    pub killed: u64,
    pub drops: u64,
    /// The task's refusals: how many, and the first few.
    pub denials: crate::pipeline::Denials,
    /// Steps of the end that failed (the others were still done).
    pub errors: Vec<String>,
    /// Processes the kernel killed at the task's memory limit, over the whole task.
    pub oom_kills: u64,
}

/// A failed start: which step failed; every step before it was undone.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct StartFailed {
    #[source]
    pub error: StepError,
    /// The steps that had started and were undone, in the order they were undone.
    pub undone: Vec<&'static str>,
}

/// The lifecycle: which steps a task goes through. One per sensor owner (`warden run`, the
/// daemon).
pub struct Lifecycle {
    plan: Box<dyn Fn() -> Vec<Box<dyn Step>> + Send + Sync>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self { plan: Box::new(standard_steps) }
    }
}

impl Lifecycle {
    /// A lifecycle whose tasks go through the steps `plan` makes (fresh ones per task).
    pub fn with_steps(plan: impl Fn() -> Vec<Box<dyn Step>> + Send + Sync + 'static) -> Self {
        Self { plan: Box::new(plan) }
    }

    /// The names of the steps, in start order.
    pub fn step_names(&self) -> Vec<&'static str> {
        (self.plan)().iter().map(|s| s.name()).collect()
    }

    /// Runs every step's `start`, in order. If one fails, the steps before it are undone,
    /// last first, and nothing of the task is left. Then `launch` starts the first process
    /// (or does nothing: under the daemon clients start processes later) and `task_start` is
    /// recorded.
    pub fn start(
        &self,
        task: Task,
        host: &mut dyn Host,
        launch: &mut dyn FnMut(&Task) -> Launched,
    ) -> Result<Running, StartFailed> {
        let mut run = self.start_steps(task, host)?;
        let launched = launch(&run.task);
        if let Some(pid) = launched.pid {
            host.refusals_first_pid(run.task.slot, pid);
        }
        let rec = start_record(&run.task, host, &launched);
        if let Err(e) = host.pipeline().emit(rec) {
            let error = StepError::runtime("task_start", HostError::Io(e));
            let undone = undo_all(&mut run.steps, &mut run.task, host);
            close(&run.task, host);
            return Err(StartFailed { error, undone });
        }
        tracing::info!(task = %run.task.id, slot = run.task.slot, "task started");
        Ok(run)
    }

    /// Re-adopts a task a previous daemon started (`task.origin` = [`Origin::Adopted`]): the
    /// same steps, each re-acquiring what is there. On failure the task cannot go on: every
    /// step's `end` runs (see [`Lifecycle::end_unadoptable`]) and the error is returned.
    pub fn adopt(&self, mut task: Task, host: &mut dyn Host) -> Result<Running, (String, Ended)> {
        debug_assert_eq!(task.origin, Origin::Adopted);
        task.origin = Origin::Adopted;
        let mut steps = (self.plan)();
        for i in 0..steps.len() {
            if let Err(e) = steps[i].start(&mut task, host) {
                let why = e.to_string();
                let run = Running { task, steps, killed: 0, errors: Vec::new(), oom_kills: 0 };
                let ended = self.end_unadoptable(run, host, &why);
                return Err((why, ended));
            }
        }
        Ok(Running { task, steps, killed: 0, errors: Vec::new(), oom_kills: 0 })
    }

    fn start_steps(&self, mut task: Task, host: &mut dyn Host) -> Result<Running, StartFailed> {
        let mut steps = (self.plan)();
        for i in 0..steps.len() {
            if let Err(error) = steps[i].start(&mut task, host) {
                let undone = undo_all(&mut steps[..i], &mut task, host);
                close(&task, host);
                return Err(StartFailed { error, undone });
            }
        }
        Ok(Running { task, steps, killed: 0, errors: Vec::new(), oom_kills: 0 })
    }

    /// The first half of the end: freezes and kills every process of the sandbox, and
    /// collects the records they left in the ring buffer. The task stays bound (enforced)
    /// until [`Lifecycle::finish`].
    pub fn stop(&self, run: &mut Running, host: &mut dyn Host) {
        if let Some(cg) = run.task.cgroup.clone() {
            run.killed = host.cgroup_pids(&cg);
            if let Err(e) = host.cgroup_kill(&cg) {
                run.errors.push(format!("kill: {e}"));
            }
        }
        host.drain();
    }

    /// Writes a `deny` record for each fork the process limit refused and each process the
    /// kernel killed at the memory limit since the last call (the controllers only count
    /// them): call it where gaps are checked. Returns the new memory kills, for the person at
    /// the terminal.
    pub fn check_limits(&self, run: &mut Running, pipeline: &mut crate::pipeline::Pipeline) -> u64 {
        if let Some(ev) = run.task.limit_events.as_mut() {
            let n = ev.new_refusals();
            if let Err(e) = pipeline.limit_refusals(run.task.slot, n) {
                run.errors.push(format!("limit records: {e}"));
            }
        }
        let Some(oom) = run.task.oom_kills.as_mut() else { return 0 };
        let n = oom.new_kills();
        run.oom_kills += n;
        if let Err(e) = pipeline.oom_kills(run.task.slot, n, run.task.memory_limit) {
            run.errors.push(format!("limit records: {e}"));
        }
        n
    }

    /// The second half of the end: loss into a `gap` record, every step's end (last step
    /// first), `task_end`, the checkpoint that seals the task's chain.
    pub fn finish(&self, mut run: Running, host: &mut dyn Host, facts: EndFacts) -> Ended {
        self.check_limits(&mut run, host.pipeline());
        let drops = host.drops(run.task.slot);
        let id = run.task.id.clone();
        if let Err(e) = run.task.gaps.record(host.pipeline(), &id, drops) {
            run.errors.push(format!("gap record: {e}"));
        }
        for step in run.steps.iter_mut().rev() {
            if let Err(e) = step.end(&mut run.task, host) {
                run.errors.push(format!("{}: {e}", step.name()));
            }
        }
        let reason = if run.errors.is_empty() {
            facts.reason.clone()
        } else {
            format!("{}; revocation errors: {}", facts.reason, run.errors.join("; "))
        };
        let decode_errors = host.pipeline().decode_failures();
        let denials = host.pipeline().take_denials(&id);
        let end = AuditRecord {
            time: host.now(),
            task: id.clone(),
            kind: crate::audit::Kind::TaskEnd,
            decision: Some(Decision::Allow),
            pid: facts.pid,
            ppid: facts.ppid,
            exit_status: facts.exit_status,
            signal: facts.signal,
            reason: Some(reason),
            drops: Some(drops),
            decode_errors: Some(decode_errors),
            killed: Some(run.killed),
            denials: Some(denials.count),
            ..Default::default()
        };
        let written = host.pipeline().emit(end).and_then(|()| host.pipeline().checkpoint(&id));
        if let Err(e) = written {
            run.errors.push(format!("task_end: {e}"));
        }
        close(&run.task, host);
        tracing::info!(task = %id, reason = %facts.reason, killed = run.killed, "task ended");
        Ended { killed: run.killed, drops, errors: run.errors, denials, oom_kills: run.oom_kills }
    }

    /// Ends a task: [`Lifecycle::stop`], then [`Lifecycle::finish`].
    pub fn end(&self, mut run: Running, host: &mut dyn Host, reason: String) -> Ended {
        self.stop(&mut run, host);
        self.finish(run, host, EndFacts { reason, ..Default::default() })
    }

    /// Ends a recorded task that could not be re-adopted: whatever of it is left is revoked
    /// by every step's `end`, and `task_end` says why.
    pub fn end_unadoptable(&self, run: Running, host: &mut dyn Host, why: &str) -> Ended {
        self.end(run, host, format!("could not be re-adopted after a daemon restart: {why}"))
    }

    /// Ends a recorded task none of whose steps could start (e.g. its scope no longer
    /// parses): as [`Lifecycle::end_unadoptable`].
    pub fn end_recorded(&self, task: Task, host: &mut dyn Host, why: &str) -> Ended {
        let run = Running { task, steps: (self.plan)(), killed: 0, errors: Vec::new(), oom_kills: 0 };
        self.end_unadoptable(run, host, why)
    }
}

/// Undoes started steps, last first; returns their names in that order.
fn undo_all(steps: &mut [Box<dyn Step>], task: &mut Task, host: &mut dyn Host) -> Vec<&'static str> {
    let mut undone = Vec::new();
    for step in steps.iter_mut().rev() {
        step.undo(task, host);
        undone.push(step.name());
    }
    undone
}

/// Flushes and forgets the task's records state (its slot registration and chain).
fn close(task: &Task, host: &mut dyn Host) {
    let p = host.pipeline();
    let _ = p.flush();
    p.unregister(task.slot);
    p.forget_chain(&task.id);
}

/// `task_start`.
fn start_record(task: &Task, host: &mut dyn Host, launched: &Launched) -> AuditRecord {
    let cgroup = task.cgroup.as_ref();
    AuditRecord {
        time: task.started.clone(),
        task: task.id.clone(),
        kind: crate::audit::Kind::TaskStart,
        decision: Some(Decision::Allow),
        pid: launched.pid,
        ppid: launched.ppid,
        exe: launched.exe.clone(),
        scope: Some(task.scope.source.display().to_string()),
        cmd: launched.cmd.clone(),
        cgroup: cgroup.map(|c| c.path().display().to_string()),
        cgroup_id: cgroup.map(Cgroup::id),
        mode: Some(task.scope.mode),
        scope_hash: Some(scope_hash(&task.scope.text)),
        node: Some(host.node().name.clone()),
        engine: Some(host.engine().as_str()),
        unenforced: (!task.unenforced.is_empty()).then(|| task.unenforced.clone()),
        unrecorded: (!task.unrecorded.is_empty()).then(|| task.unrecorded.clone()),
        expires: task.expires.clone(),
        secrets: (!task.secrets.is_empty()).then(|| task.secrets.clone()),
        credentials: (!task.credentials.is_empty()).then(|| task.credentials.clone()),
        ..Default::default()
    }
}
