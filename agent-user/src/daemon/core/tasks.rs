//! Tasks under the daemon: start (bind), end as one operation, what clients learn of a task.
//! Every kernel, cgroup and secrets operation is a lifecycle step (`crate::lifecycle`).
use std::path::{Path, PathBuf};

use super::{ApiError, Core, ENDED_KEPT, live};
use crate::{
    audit::{AuditRecord, AuditSink, Decision},
    daemon::{
        api::{ContainerRequest, EndResponse, StartRequest, TaskInfo},
        state::TaskRecord,
    },
    k8s::{Container, pod},
    lifecycle::{self, Launched, Running, SandboxSpec},
    scope::Scope,
    task::{new_task_id, scope_hash},
};

/// A running task.
pub(super) struct Task {
    pub(super) info: TaskInfo,
    /// Its lifecycle state (scope, cgroup, steps).
    pub(super) run: Running,
    pub(super) end_when_empty: bool,
    pub(super) seen_populated: bool,
    pub(super) log: Option<PathBuf>,
    /// Its running calls, in start order (`calls.rs`).
    pub(super) calls: Vec<super::calls::Call>,
    /// Calls started so far (call ids count from 1).
    pub(super) next_call: u32,
}

impl Task {
    pub(super) fn record(&self) -> TaskRecord {
        let t = &self.run.task;
        TaskRecord {
            info: self.info.clone(),
            expires_boot_ns: t.expires_boot_ns,
            end_when_empty: self.end_when_empty,
            log: self.log.clone(),
            pids_v1: t.pids_v1.clone(),
            drops_reported: t.gaps.drops,
            saved: t.saved.clone(),
            calls: self.calls.iter().map(|c| c.record()).collect(),
        }
    }
}

impl Core {
    /// Forgets an ended task's routes, counters and record; a record that cannot be removed
    /// is the caller's to report.
    pub(super) fn forget_task(&mut self, id: &str) -> std::io::Result<()> {
        let mut routes = self.routes();
        if let Some(mut log) = routes.task_logs.remove(id) {
            let _ = log.flush();
        }
        routes.counters.remove(id);
        drop(routes);
        self.state.remove_task(id)
    }

    /// Starts a task through the lifecycle (every step, or none: a failure undoes the
    /// steps before it).
    pub(super) fn start_task(&mut self, req: StartRequest) -> Result<TaskInfo, ApiError> {
        let scope =
            Scope::parse(&req.scope_text, &req.scope_path).map_err(|e| ApiError::bad(e.to_string()))?;
        self.start_parsed(req, scope, None)
    }

    /// Binds a container to the scope its pod's annotations name, before the container's
    /// first instruction. A refusal is recorded too (`bind_failed`), with the pod as far as it
    /// was established.
    pub(super) fn start_container(&mut self, req: ContainerRequest) -> Result<TaskInfo, ApiError> {
        let fail_open = req.annotations.get(pod::binding::ON_FAILURE).is_some_and(|v| v == "open");
        let mut known_pod = None;
        let r = self.container_task(&req, &mut known_pod);
        if let Err(e) = &r {
            let short: String = req.id.chars().filter(char::is_ascii_alphanumeric).take(16).collect();
            let task = format!("unbound-{short}");
            let rec = AuditRecord {
                time: self.now(),
                task: task.clone(),
                kind: crate::audit::Kind::BindFailed,
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
        // Clients launch the task's processes (`task exec`), not the daemon.
        task.launches = false;
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
            calls: Vec::new(),
            next_call: 0,
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
            env: {
                let mut env = t.launch.env.clone();
                if let Some(p) = crate::scope::compile::call_socket() {
                    env.push((crate::daemon::inside::ENV.to_string(), p.display().to_string()));
                }
                env
            },
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
            protected: crate::scope::compile::evidence_paths(),
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
    pub(super) fn end_task(&mut self, id: &str, reason: String) -> EndResponse {
        // Its calls end first, deepest first: every call_end before task_end.
        self.end_all_calls(id);
        let Some(t) = self.tasks.remove(id) else {
            return EndResponse { id: id.into(), reason, killed: 0, drops: 0, already: true, errors: vec![] };
        };
        self.publish_sandboxes();
        let ended = self.lc.end(t.run, &mut live!(self), reason.clone());
        let mut errors = ended.errors;
        if let Err(e) = self.forget_task(id) {
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
}
