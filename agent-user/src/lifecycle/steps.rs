//! The standard steps of a task, in the order they start. Each owns one resource.
use super::{HostError, Origin, SandboxSpec, Step, StepError, Task, host::Host};
use crate::{
    audit::clock::Clock,
    pipeline::{GapTracker, TaskCtx},
    sandbox::{
        limits::{MemoryLimit, PidsLimit},
        secrets::IssuedSecrets,
    },
    scope::compile::{Build, CompiledScope},
    task::{IdentityDoc, scope_hash},
};
use std::path::Path;

/// The steps every task goes through, in start order.
pub fn standard_steps() -> Vec<Box<dyn Step>> {
    vec![
        Box::new(crate::k8s::ContainerStep),
        Box::new(Secrets::default()),
        Box::new(CompileScope),
        Box::new(Sandbox),
        Box::new(Credentials),
        Box::new(Limits::default()),
        Box::new(Records),
        Box::new(Refusals),
        Box::new(Egress),
        Box::new(Tables),
        Box::new(Dns),
        Box::new(Identity),
    ]
}

/// `secrets`: issues the scope's secrets onto a per-task tmpfs (their paths become part of
/// the scope, so this comes before `scope`) and names them to the task's processes by
/// environment variable.
#[derive(Default)]
pub struct Secrets {
    issued: Option<IssuedSecrets>,
}

impl Step for Secrets {
    fn name(&self) -> &'static str {
        "secrets"
    }

    fn start(&mut self, task: &mut Task, host: &mut dyn Host) -> Result<(), StepError> {
        // A `file:` secret's source is a secret of every task that names it: out of the reach
        // of this task (which reads its copy) and of every task compiled from now on.
        crate::scope::compile::protect_evidence(
            task.scope.secrets.iter().filter_map(|s| s.issue.as_ref()?.file().map(Path::to_path_buf)),
        );
        let issued = match task.origin {
            Origin::New if task.scope.has_issued_secrets() => {
                host.secrets_issue(&task.id, &task.scope).map_err(|e| StepError::usage(self.name(), e))?
            }
            Origin::Adopted if task.secrets_dir.is_some() => {
                host.secrets_adopt(&task.id, task.secrets.clone())
            }
            _ => return Ok(()),
        };
        task.scope.place_issued_secrets(issued.dir());
        task.secrets_dir = Some(issued.dir().to_path_buf());
        task.secrets = issued.issued.clone();
        for s in &issued.issued {
            task.launch.env.push((s.env.clone(), s.path.display().to_string()));
        }
        self.issued = Some(issued);
        Ok(())
    }

    fn end(&mut self, task: &mut Task, host: &mut dyn Host) -> Result<(), StepError> {
        let mut issued = match self.issued.take() {
            Some(s) => s,
            // Never started (a task that could not be re-adopted): destroy what is recorded.
            None if task.secrets_dir.is_some() => host.secrets_adopt(&task.id, task.secrets.clone()),
            None => return Ok(()),
        };
        host.secrets_destroy(&mut issued).map_err(|e| StepError::runtime(self.name(), e))
    }
}

/// `scope`: compiles the scope into what the engines enforce.
pub struct CompileScope;

impl Step for CompileScope {
    fn name(&self) -> &'static str {
        "scope"
    }

    fn start(&mut self, task: &mut Task, host: &mut dyn Host) -> Result<(), StepError> {
        let root = task.container.as_ref().and_then(|c| c.root.as_ref());
        // Only the tables this engine binds, and the Landlock plan only for a launcher.
        let build = Build::for_engine(host.engine().is_lsm(), true, task.launches);
        let compiled = CompiledScope::compile_with(&task.scope, root, build)
            .map_err(|e| StepError::usage(self.name(), e))?;
        task.compiled = Some(compiled);
        Ok(())
    }

    fn end(&mut self, _task: &mut Task, _host: &mut dyn Host) -> Result<(), StepError> {
        Ok(())
    }
}

/// `sandbox`: creates the task's cgroup (or opens the one to bind) and makes the first
/// process join it. Kill happens in the lifecycle's `stop`; the end removes what was created.
pub struct Sandbox;

impl Step for Sandbox {
    fn name(&self) -> &'static str {
        "sandbox"
    }

    fn start(&mut self, task: &mut Task, host: &mut dyn Host) -> Result<(), StepError> {
        let cg = match (&task.sandbox, task.origin) {
            (SandboxSpec::Create, Origin::New) => {
                host.cgroup_create(&task.id).map_err(|e| StepError::runtime(self.name(), e))?
            }
            (SandboxSpec::Bind(path), Origin::New) => {
                host.cgroup_open(path).map_err(|e| StepError::usage(self.name(), e))?
            }
            (SandboxSpec::Create | SandboxSpec::Bind(_), Origin::Adopted) => {
                let path = sandbox_path(task, host);
                let cg = host.cgroup_open(&path).map_err(|e| {
                    StepError::runtime(self.name(), HostError::Refused(format!("its sandbox is gone: {e}")))
                })?;
                if task.cgroup_id.is_some_and(|id| id != cg.id()) {
                    return Err(StepError::runtime(
                        self.name(),
                        HostError::Refused(format!("{} is another cgroup now", path.display())),
                    ));
                }
                cg
            }
        };
        task.cgroup_id = Some(cg.id());
        task.launch.procs_files.push(cg.procs_file());
        task.cgroup = Some(cg);
        Ok(())
    }

    fn end(&mut self, task: &mut Task, host: &mut dyn Host) -> Result<(), StepError> {
        if !task.created() {
            return Ok(());
        }
        let cg = match task.cgroup.take() {
            Some(cg) => cg,
            // Never started (not re-adopted): remove what is at the recorded path.
            None => match host.cgroup_open(&sandbox_path(task, host)) {
                Ok(cg) => cg,
                Err(_) => return Ok(()),
            },
        };
        host.cgroup_remove(&cg).map_err(|e| StepError::runtime(self.name(), e))
    }
}

/// Where the task's cgroup is.
fn sandbox_path(task: &Task, host: &dyn Host) -> std::path::PathBuf {
    if let Some(p) = &task.cgroup_path {
        return p.clone();
    }
    match &task.sandbox {
        SandboxSpec::Bind(p) => p.clone(),
        SandboxSpec::Create => host.node().sandbox_parent().join(&task.id),
    }
}

/// `credentials`: mints the scope's brokered secrets (`exec:`, `token`) and starts the task's
/// broker in its secrets directory (needs the sandbox: the broker answers processes of that
/// cgroup only). At the end the broker stops and every credential is revoked; a revocation that
/// has not landed yet is this step's error (it is retried in the background until it lands).
/// A re-adopted task's values died with the previous daemon: they are revoked, new ones minted.
pub struct Credentials;

impl Credentials {
    /// Writes the task's revocation outcomes as `secret` records (its chain is still open).
    fn record(task: &Task, host: &mut dyn Host) {
        for ev in host.creds_events(&task.id) {
            let reason = ev.describe();
            let rec = crate::audit::AuditRecord {
                time: host.now(),
                task: task.id.clone(),
                kind: crate::audit::Kind::Secret,
                decision: Some(if ev.error.is_none() {
                    crate::audit::Decision::Allow
                } else {
                    crate::audit::Decision::Deny
                }),
                op: Some("revoke"),
                secret: Some(ev.name),
                reason: Some(reason),
                ..Default::default()
            };
            if let Err(e) = host.pipeline().emit(rec) {
                tracing::error!(task = %task.id, error = %e, "writing a secret record failed");
            }
        }
    }
}

impl Step for Credentials {
    fn name(&self) -> &'static str {
        "credentials"
    }

    fn start(&mut self, task: &mut Task, host: &mut dyn Host) -> Result<(), StepError> {
        if !task.scope.has_brokered_secrets() {
            return Ok(());
        }
        let refused = |m: &str| StepError::runtime("credentials", HostError::Refused(m.into()));
        let dir =
            task.secrets_dir.clone().ok_or_else(|| refused("brokered secrets need the secrets directory"))?;
        let cg = task.cgroup.clone().ok_or_else(|| refused("brokered secrets need the sandbox"))?;
        let now = crate::creds::unix_now();
        let expires_at = match task.origin {
            Origin::New => task.scope.ttl.map(|t| now + t.as_secs()),
            Origin::Adopted => {
                host.creds_orphan(&task.id, std::time::Duration::ZERO);
                task.expires_boot_ns.map(|e| now + e.saturating_sub(Clock::boot_now_ns()) / 1_000_000_000)
            }
        };
        let h = host
            .creds_start(&task.id, &task.scope, expires_at, &dir, cg.path())
            .map_err(|e| StepError::usage(self.name(), e))?;
        let socket = h.socket().to_path_buf();
        task.launch.env.push((crate::creds::broker::ENV.to_string(), socket.display().to_string()));
        task.broker = Some(socket);
        task.credentials = h.infos();
        task.creds = Some(h);
        Ok(())
    }

    fn undo(&mut self, task: &mut Task, host: &mut dyn Host) {
        if let Some(h) = task.creds.take() {
            host.creds_end(h, std::time::Duration::ZERO);
        }
    }

    fn end(&mut self, task: &mut Task, host: &mut dyn Host) -> Result<(), StepError> {
        let pending = match task.creds.take() {
            Some(h) => host.creds_end(h, crate::creds::node::END_WAIT),
            // Never started (a task that could not be re-adopted): revoke what is held for it.
            None => host.creds_orphan(&task.id, std::time::Duration::ZERO),
        };
        Self::record(task, host);
        if pending.is_empty() {
            Ok(())
        } else {
            Err(StepError::runtime(
                self.name(),
                HostError::Refused(format!(
                    "revoking {} failed so far; retried with backoff until it lands",
                    pending.join(", ")
                )),
            ))
        }
    }
}

/// `refusals`: the task's Landlock and seccomp refusals, which only the kernel's audit
/// records report, are attributed to it from now on (`crate::kaudit`); at the end, the reports
/// still on their way are read before `task_end`. Comes after `records` (its refusals are its
/// records) and before the first process.
pub struct Refusals;

impl Step for Refusals {
    fn name(&self) -> &'static str {
        "refusals"
    }

    fn start(&mut self, task: &mut Task, host: &mut dyn Host) -> Result<(), StepError> {
        if !task.enforce() {
            return Ok(());
        }
        let lsm = host.engine() == crate::loader::Engine::BpfLsm;
        task.unrecorded = crate::kaudit::unrecorded(lsm, host.refusals_recorded());
        if task.compiled.as_ref().is_some_and(|c| c.exec.is_some() && !c.write_roots.is_empty()) {
            // The write roots are mounted noexec (sandbox/boundary.rs): running a file the task
            // wrote there fails in the kernel's open path before any hook (docs/scope.md).
            task.unrecorded.push("exec-from-write-roots".to_string());
        }
        if task.compiled.as_ref().is_some_and(|c| crate::sandbox::boundary::unrecorded_program_writes(c, lsm))
        {
            // An allowed program Landlock cannot guard (in a write grant, or any under BPF
            // LSM) is bound read-only: a write to it fails with EROFS before any hook.
            task.unrecorded.push("write-allowed-programs".to_string());
        }
        if let (Some(cg), Some(c)) = (&task.cgroup, &task.compiled) {
            let mount = host.node().cgroup_mount.clone();
            host.refusals_register(crate::kaudit::TaskInfo::new(task.slot, None, cg, &mount, c));
        }
        Ok(())
    }

    fn end(&mut self, task: &mut Task, host: &mut dyn Host) -> Result<(), StepError> {
        host.refusals_settle(task.slot);
        Ok(())
    }
}

/// `limits`: the process limit (enforce mode), from the pids controller, and the memory limit
/// (both modes: it guards the node, not the scope), from the memory controller.
#[derive(Default)]
pub struct Limits {
    pids: Option<PidsLimit>,
    memory: Option<MemoryLimit>,
}

/// Where the `limits` step keeps the v1 memory twin's path in [`Task::saved`].
pub const SAVED_MEMORY_V1: &str = "limits.memory_v1";

impl Limits {
    /// The memory limit: the scope's, else the node's default; on a restart, the twin recorded.
    fn start_memory(&mut self, task: &mut Task, host: &mut dyn Host) -> Result<(), StepError> {
        let Some(cg) = task.cgroup.clone() else { return Ok(()) };
        let limit = match task.origin {
            Origin::New => {
                let Some(bytes) = task.scope.memory_limit.or(host.node().memory_default) else {
                    return Ok(());
                };
                match host
                    .memory_limit(&cg, &task.id, bytes)
                    .map_err(|e| StepError::runtime(self.name(), e))?
                {
                    Some(l) => {
                        task.memory_limit = Some(bytes);
                        l
                    }
                    None if task.scope.memory_limit.is_some() => {
                        return Err(StepError::runtime(
                            self.name(),
                            crate::sandbox::CgroupError::NoMemory(
                                "neither cgroup v2 nor a v1 hierarchy offers `memory`".into(),
                            ),
                        ));
                    }
                    None => {
                        tracing::warn!(task = %task.id, "no memory controller on this node: the task has no memory limit");
                        return Ok(());
                    }
                }
            }
            Origin::Adopted => match saved_memory_v1(task) {
                Some(p) => {
                    MemoryLimit::V1(host.cgroup_open(&p).map_err(|e| StepError::runtime(self.name(), e))?)
                }
                None if task.created() => MemoryLimit::Unified,
                None => return Ok(()),
            },
        };
        if let MemoryLimit::V1(twin) = &limit {
            task.saved
                .insert(SAVED_MEMORY_V1.into(), serde_json::Value::String(twin.path().display().to_string()));
        }
        task.launch.procs_files.extend(limit.procs_file());
        task.oom_kills = Some(limit.oom_kills(&cg));
        self.memory = Some(limit);
        Ok(())
    }
}

fn saved_memory_v1(task: &Task) -> Option<std::path::PathBuf> {
    task.saved.get(SAVED_MEMORY_V1).and_then(|v| v.as_str()).map(std::path::PathBuf::from)
}

impl Step for Limits {
    fn name(&self) -> &'static str {
        "limits"
    }

    fn start(&mut self, task: &mut Task, host: &mut dyn Host) -> Result<(), StepError> {
        let limit = match task.origin {
            // A container's cgroup belongs to the kubelet and the runtime: its limits are the pod's.
            Origin::New if task.container.is_some() => return Ok(()),
            Origin::New => {
                self.start_memory(task, host)?;
                let (Some(max), true, Some(cg)) = (task.scope.process_limit, task.enforce(), &task.cgroup)
                else {
                    return Ok(());
                };
                let cg = cg.clone();
                match host.pids_limit(&cg, &task.id, max) {
                    Ok(l) => l,
                    Err(e) => {
                        // This step failed: nothing of it stays (no undo runs for it).
                        if let Some(m) = self.memory.take() {
                            host.memory_remove(&m);
                        }
                        return Err(StepError::runtime(self.name(), e));
                    }
                }
            }
            Origin::Adopted => {
                self.start_memory(task, host)?;
                match &task.pids_v1 {
                    Some(p) => {
                        PidsLimit::V1(host.cgroup_open(p).map_err(|e| StepError::runtime(self.name(), e))?)
                    }
                    None => return Ok(()),
                }
            }
        };
        if let PidsLimit::V1(cg) = &limit {
            task.pids_v1 = Some(cg.path().to_path_buf());
        }
        task.launch.procs_files.extend(limit.procs_file());
        if let Some(cg) = &task.cgroup {
            task.limit_events = Some(limit.events(cg));
        }
        self.pids = Some(limit);
        Ok(())
    }

    fn end(&mut self, task: &mut Task, host: &mut dyn Host) -> Result<(), StepError> {
        let memory = match self.memory.take() {
            Some(l) => Some(l),
            None => match saved_memory_v1(task).map(|p| host.cgroup_open(&p)) {
                Some(Ok(cg)) => Some(MemoryLimit::V1(cg)),
                _ => None,
            },
        };
        if let Some(m) = memory {
            host.memory_remove(&m);
        }
        let limit = match self.pids.take() {
            Some(l) => l,
            None => match task.pids_v1.as_ref().map(|p| host.cgroup_open(p)) {
                Some(Ok(cg)) => PidsLimit::V1(cg),
                _ => return Ok(()),
            },
        };
        host.pids_remove(&limit);
        Ok(())
    }
}

/// `records`: the pipeline attributes the slot's kernel records to the task from here on
/// (before anything of the scope is in the kernel, so nothing it judges goes unattributed).
pub struct Records;

impl Step for Records {
    fn name(&self) -> &'static str {
        "records"
    }

    fn start(&mut self, task: &mut Task, host: &mut dyn Host) -> Result<(), StepError> {
        if task.origin == Origin::New {
            host.reset_drops(task.slot).map_err(|e| StepError::runtime(self.name(), e))?;
            // Only what is lost from now on is this task's gap.
            task.gaps = GapTracker {
                drops: 0,
                decode_errors: host.pipeline().decode_failures(),
                reports_lost: host.pipeline().reports_lost,
            };
        }
        host.pipeline().register(task.slot, TaskCtx::task(task.id.clone(), task.scope.mode));
        Ok(())
    }

    fn undo(&mut self, task: &mut Task, host: &mut dyn Host) {
        let p = host.pipeline();
        p.unregister(task.slot);
        p.forget_chain(&task.id);
    }

    /// The registration outlives the other steps' ends (their records still belong to the
    /// task); the lifecycle closes it after the checkpoint.
    fn end(&mut self, _task: &mut Task, _host: &mut dyn Host) -> Result<(), StepError> {
        Ok(())
    }
}

/// `egress`: the cgroup sock_addr programs that judge the task's connections.
pub struct Egress;

impl Step for Egress {
    fn name(&self) -> &'static str {
        "egress"
    }

    fn start(&mut self, task: &mut Task, host: &mut dyn Host) -> Result<(), StepError> {
        let Some(cg) = task.cgroup.clone() else { return Ok(()) };
        host.egress_attach(&cg, &task.id).map_err(|e| StepError::runtime(self.name(), e))
    }

    fn end(&mut self, task: &mut Task, host: &mut dyn Host) -> Result<(), StepError> {
        host.egress_detach(&task.id).map_err(|e| StepError::runtime(self.name(), e))
    }
}

/// `tables`: the compiled scope into the kernel maps, the watch entries last (no check ever
/// sees half a scope). Also works out what this engine cannot enforce of the scope.
pub struct Tables;

impl Step for Tables {
    fn name(&self) -> &'static str {
        "tables"
    }

    fn start(&mut self, task: &mut Task, host: &mut dyn Host) -> Result<(), StepError> {
        let (Some(cg), Some(compiled)) = (task.cgroup.clone(), task.compiled.as_ref()) else {
            return Ok(());
        };
        let ids = host.cgroup_ids(&cg);
        host.bind(task.slot, &ids, compiled).map_err(|e| StepError::runtime(self.name(), e))?;
        task.bound_boot_ns = Some(Clock::boot_now_ns());
        let lsm = host.engine().is_lsm();
        let mut unenforced = compiled.unenforced(lsm);
        if task.enforce() && !lsm && host.unix_unjudged() {
            // Path-named unix sockets are judged by the cgroup unix programs (6.7+).
            unenforced.push("unix-sockets-by-path".to_string());
        }
        if unenforced.iter().any(|u| u == "secrets-by-tool") && task.origin == Origin::New {
            tracing::warn!(
                task = %task.id,
                "the fallback engine cannot tell tools apart: secrets are readable by every process of the task"
            );
        }
        if task.container.is_some() {
            if task.enforce() {
                unenforced.extend(crate::k8s::container_unenforced(lsm, task.scope.process_limit.is_some()));
            }
            // The pod's memory limits stand in for the scope's (both modes: see `limits`).
            if task.scope.memory_limit.is_some() {
                unenforced.push("limits.memory-in-container".into());
            }
        } else if task.enforce() && !lsm && !task.created() {
            // Landlock and seccomp confine processes Warden starts; processes already in a
            // bound cgroup keep running under the kernel hooks only.
            unenforced.push("files-for-processes-started-outside-warden".to_string());
        }
        task.unenforced = unenforced;
        Ok(())
    }

    fn end(&mut self, task: &mut Task, host: &mut dyn Host) -> Result<(), StepError> {
        host.unbind(task.slot, task.compiled.as_ref()).map_err(|e| StepError::runtime(self.name(), e))
    }
}

/// `dns`: egress by name. The node resolver serves the task at its slot's address, where the
/// kernel redirects its DNS (bound by `tables`: until this step, no process of a new task
/// runs). Its end comes before `tables`' end: once the resolver stops serving the slot no
/// grant is in flight, so unbinding removes every address it granted.
pub struct Dns;

impl Step for Dns {
    fn name(&self) -> &'static str {
        "dns"
    }

    fn start(&mut self, task: &mut Task, host: &mut dyn Host) -> Result<(), StepError> {
        let dns = crate::dns::TaskDns::new(&task.id, task.slot, &task.scope)
            .map_err(|e| StepError::usage(self.name(), e))?;
        match dns {
            Some(d) => host.dns_register(d).map_err(|e| StepError::runtime(self.name(), e)),
            None => Ok(()),
        }
    }

    fn end(&mut self, task: &mut Task, host: &mut dyn Host) -> Result<(), StepError> {
        if task.scope.dns.is_some() {
            host.dns_unregister(task.slot, &task.id);
        }
        Ok(())
    }
}

/// `identity`: the task's signed workload-identity document, its start and expiry.
pub struct Identity;

impl Step for Identity {
    fn name(&self) -> &'static str {
        "identity"
    }

    fn start(&mut self, task: &mut Task, host: &mut dyn Host) -> Result<(), StepError> {
        if task.origin == Origin::Adopted {
            return Ok(());
        }
        let clock = *host.pipeline().clock();
        let now = Clock::boot_now_ns();
        task.started = clock.format(now);
        task.expires_boot_ns = task.scope.ttl.map(|t| now + t.as_nanos() as u64);
        task.expires = task.expires_boot_ns.map(|e| clock.format(e));
        let node = host.node();
        let mut doc = IdentityDoc::new_signed(
            &node.key,
            &task.id,
            scope_hash(&task.scope.text),
            task.cgroup_id.unwrap_or(0),
            node.name.clone(),
            task.started.clone(),
            task.expires.clone(),
        );
        if let Some(c) = &task.container {
            doc.pod = Some(c.pod.clone());
            doc = doc.sign(&node.key);
        }
        task.identity = Some(doc);
        Ok(())
    }

    fn end(&mut self, _task: &mut Task, _host: &mut dyn Host) -> Result<(), StepError> {
        Ok(())
    }
}
