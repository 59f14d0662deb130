//! Calls under the daemon: a call (a tool call, a pipeline stage) is a child of a task or of
//! another call, with its own cgroup nested in its parent's, its own kernel slot holding its
//! own scope's tables, and that scope no wider than the parent's (`scope::narrow`). Its
//! records are attributed by slot — the kernel names the slot from the process's cgroup —, so
//! a process is in a call because its cgroup is the call's, never because it says so.
//!
//! Start: parse and check the scope (narrower, ttl within the parent's remaining time) →
//! create `<parent cgroup>/c<N>` (the kernel's `cgroup_mkdir` hook watches it with the
//! parent's slot at once) → register the slot with the pipeline → write the call's tables and
//! then its watch entry (the cgroup moves from the parent's slot to the call's) → refusal
//! feed, DNS → signed identity document naming the parent → `call_start`.
//!
//! End (the command exited — its `exit` record —, the cgroup emptied, the ttl ran out, a
//! request, or its parent ended): the calls below first, deepest first; kill what is left in
//! the cgroup, drain, unbind the slot, remove the cgroup, `call_end` with the counts.
use std::{sync::Arc, time::Duration};

use super::{ApiError, Core, live};
use crate::{
    audit::{AuditRecord, Decision, Intent, Kind, clock::Clock},
    daemon::{
        api::{CallInfo, CallRequest, EndResponse},
        state::CallRecord,
    },
    lifecycle::{Host, host::KILL_TIMEOUT},
    pipeline::{CallTag, TaskCtx},
    sandbox::Cgroup,
    scope::{
        Scope,
        compile::{Build, CompiledScope},
        narrow,
    },
    task::{IdentityDoc, scope_hash},
};

/// How deep calls may nest below their task.
pub const MAX_DEPTH: u32 = 8;

/// A running call.
pub(super) struct Call {
    pub(super) id: String,
    pub(super) name: String,
    pub(super) depth: u32,
    pub(super) slot: u32,
    pub(super) scope: Scope,
    compiled: CompiledScope,
    pub(super) cgroup: Cgroup,
    started_boot_ns: u64,
    pub(super) expires_boot_ns: Option<u64>,
    pub(super) identity: IdentityDoc,
    seen_populated: bool,
    /// The call's own scope text and path (`None`: it runs under its parent's scope), kept
    /// for a restarted daemon.
    scope_text: Option<String>,
    scope_path: std::path::PathBuf,
    /// Its first process, once the pipeline has seen its exec (persisted for re-adoption).
    first_pid: Option<u32>,
}

impl Call {
    pub(super) fn record(&self) -> CallRecord {
        CallRecord {
            id: self.id.clone(),
            name: self.name.clone(),
            depth: self.depth,
            slot: self.slot,
            scope_text: self.scope_text.clone(),
            scope_path: self.scope_path.clone(),
            cgroup: self.cgroup.path().to_path_buf(),
            started_boot_ns: self.started_boot_ns,
            expires_boot_ns: self.expires_boot_ns,
            identity: self.identity.clone(),
            first_pid: self.first_pid,
        }
    }
}

/// The oldest process in `cg` (or below) whose parent is not: a call's command, started by
/// the task's init outside the cgroup. Orphans re-parented to the init are younger than it.
/// `None` when the cgroup is empty or `/proc` says nothing usable.
fn first_process(cg: &Cgroup) -> Option<u32> {
    let pids = cg.pids().ok()?;
    let inside: std::collections::HashSet<i32> = pids.iter().copied().collect();
    pids.iter()
        .filter_map(|&pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let (ppid, start) = parse_stat(&stat)?;
            (!inside.contains(&ppid)).then_some((start, pid))
        })
        .min()
        .and_then(|(_, pid)| u32::try_from(pid).ok())
}

/// `(ppid, starttime)` from `/proc/PID/stat`: the fields after the command name, which may
/// itself hold spaces and parentheses (so split at the last `)`).
fn parse_stat(stat: &str) -> Option<(i32, u64)> {
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let f: Vec<&str> = rest.split_ascii_whitespace().collect();
    // After the name: state(3) ppid(4) ... starttime(22); `f[0]` is field 3.
    Some((f.get(1)?.parse().ok()?, f.get(19)?.parse().ok()?))
}

/// A call's scope: its own text checked no wider than its parent's, keeping the task's
/// issued secrets and broker; or, without a text, its parent's.
fn call_scope(parent: &Scope, text: Option<&str>, path: &std::path::Path) -> Result<Scope, String> {
    let Some(text) = text else { return Ok(parent.clone()) };
    let mut s = Scope::parse(text, path).map_err(|e| e.to_string())?;
    narrow::check(parent, &s).map_err(|w| w.to_string())?;
    // The task's issued secrets stay in the call's reach under the task's tools.
    s.secrets.extend(parent.secrets.iter().filter(|x| x.issue.is_some()).cloned());
    s.broker = parent.broker.clone();
    Ok(s)
}

fn valid_name(n: &str) -> bool {
    !n.is_empty() && n.len() <= 64 && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

impl Core {
    /// Starts a call in task `task_id` (see the module documentation).
    pub(super) fn start_call(&mut self, task_id: &str, req: CallRequest) -> Result<CallInfo, ApiError> {
        if !valid_name(&req.name) {
            return Err(ApiError::bad(format!("call name {:?}: use 1 to 64 of A-Z a-z 0-9 . _ -", req.name)));
        }
        let slot = self.free_slot().ok_or_else(|| ApiError {
            status: 503,
            message: format!("all {} slots are in use (maps.max_tasks)", self.cfg.maps.max_tasks - 1),
        })?;
        let now = Clock::boot_now_ns();
        let t = self.tasks.get_mut(task_id).ok_or_else(|| ApiError::not_found(task_id))?;
        let (parent_scope, parent_cg, parent_id, depth, parent_expires, parent_doc) = match &req.parent {
            None => (
                t.run.task.scope.clone(),
                t.run.task.cgroup.clone().ok_or_else(|| ApiError::bad("the task has no sandbox cgroup"))?,
                task_id.to_string(),
                0,
                t.run.task.expires_boot_ns,
                t.info.identity.clone(),
            ),
            Some(p) => {
                let c = t.calls.iter().find(|c| &c.id == p).ok_or_else(|| ApiError {
                    status: 404,
                    message: format!("task {task_id} has no running call {p:?}"),
                })?;
                (
                    c.scope.clone(),
                    c.cgroup.clone(),
                    c.id.clone(),
                    c.depth,
                    c.expires_boot_ns,
                    c.identity.clone(),
                )
            }
        };
        if depth + 1 > MAX_DEPTH {
            return Err(ApiError::bad(format!("calls nest at most {MAX_DEPTH} deep")));
        }
        let scope_path = req.scope_path.clone().unwrap_or_else(|| "call-scope.yaml".into());
        let mut scope =
            call_scope(&parent_scope, req.scope_text.as_deref(), &scope_path).map_err(ApiError::bad)?;
        let remaining = parent_expires.map(|e| Duration::from_nanos(e.saturating_sub(now)));
        let ttl = narrow::ttl(remaining, scope.ttl).map_err(|w| ApiError::bad(w.to_string()))?;
        scope.ttl = ttl;
        // The tables this engine binds; the Landlock plan is the `task exec` client's.
        let build = Build::for_engine(self.engine.is_lsm(), true, false);
        let mut compiled =
            CompiledScope::compile_with(&scope, None, build).map_err(|e| ApiError::bad(e.to_string()))?;
        compiled.call = true;
        // A number no cgroup below the task has (calls a previous daemon started keep theirs).
        let (n, cgroup) = loop {
            t.next_call += 1;
            let n = t.next_call;
            match Cgroup::create(parent_cg.path(), &format!("c{n}")) {
                Ok(cg) => break (n, cg),
                Err(_) if n % 64 != 0 => continue,
                Err(e) => return Err(ApiError::internal(format!("creating the call's cgroup: {e}"))),
            }
        };
        let id = format!("{parent_id}/c{n}");
        let tag = CallTag { id: Arc::from(id.as_str()), name: Arc::from(req.name.as_str()) };
        let mode = scope.mode;
        let expires_boot_ns = ttl.map(|d| now + d.as_nanos() as u64);
        let clock = *self.pipeline.clock();
        let started = clock.format(now);
        let identity = IdentityDoc::new_call(
            &self.node.key,
            &parent_doc,
            &id,
            &req.name,
            scope_hash(&scope.text),
            cgroup.id(),
            started.clone(),
            expires_boot_ns.map(|e| clock.format(e)),
        );
        // Kernel state: the slot's records are the call's from here on; then its tables, the
        // watch entry last (until then the cgroup is judged by its parent's slot).
        self.pipeline.register(slot, TaskCtx { id: task_id.to_string(), mode, call: Some(tag.clone()) });
        let bound = (|| -> Result<(), String> {
            self.sensor.reset_drops(slot).map_err(|e| e.to_string())?;
            self.sensor.bind(slot, &[cgroup.id()], &compiled).map_err(|e| e.to_string())?;
            let dns = crate::dns::TaskDns::new(task_id, slot, &scope).map_err(|e| e.to_string())?;
            if let Some(d) = dns {
                live!(self).dns_register(d).map_err(|e| e.to_string())?;
            }
            Ok(())
        })();
        if let Err(e) = bound {
            let _ = self.sensor.unbind(slot, &compiled);
            let _ = cgroup.kill_all(KILL_TIMEOUT);
            let _ = cgroup.remove();
            self.pipeline.unregister(slot);
            return Err(ApiError::internal(format!("binding the call's scope: {e}")));
        }
        if let Some(feed) = self.feed.as_mut() {
            feed.register(crate::kaudit::TaskInfo::new(
                slot,
                None,
                &cgroup,
                &self.node.cgroup_mount,
                &compiled,
            ));
        }
        let intent = Intent::new(
            req.intent.as_deref().unwrap_or("").as_bytes(),
            !scope.intent_digest,
            scope.intent_max,
        );
        let rec = AuditRecord {
            time: started.clone(),
            task: task_id.to_string(),
            call: Some(tag.id.clone()),
            call_name: Some(tag.name.clone()),
            kind: Kind::CallStart,
            decision: Some(Decision::Allow),
            parent: Some(parent_id.clone()),
            depth: Some(depth + 1),
            cmd: (!req.cmd.is_empty()).then(|| req.cmd.clone()),
            cwd: req.cwd.clone(),
            scope_hash: Some(scope_hash(&scope.text)),
            cgroup: Some(cgroup.path().display().to_string()),
            cgroup_id: Some(cgroup.id()),
            mode: Some(mode),
            expires: expires_boot_ns.map(|e| clock.format(e)),
            intent: Some(intent),
            ..Default::default()
        };
        self.emit(rec);
        let _ = self.pipeline.flush();
        let Some(t) = self.tasks.get_mut(task_id) else { return Err(ApiError::not_found(task_id)) };
        let mut info = t.info.clone();
        info.scope_text = scope.text.clone();
        info.scope_path = scope.source.clone();
        info.scope_hash = scope_hash(&scope.text);
        info.mode = mode.as_str().to_string();
        info.cgroup = cgroup.path().to_path_buf();
        info.cgroup_id = cgroup.id();
        info.slot = slot;
        // The call's cgroup first (the process joins it); a v1 pids twin of the task after.
        info.procs_files =
            std::iter::once(cgroup.procs_file()).chain(info.procs_files.into_iter().skip(1)).collect();
        info.env.push(("WARDEN_CALL".into(), id.clone()));
        info.expires = expires_boot_ns.map(|e| clock.format(e));
        info.identity = identity.clone();
        info.started = started;
        info.processes = 0;
        t.calls.push(Call {
            id: id.clone(),
            name: req.name.clone(),
            depth: depth + 1,
            slot,
            scope,
            compiled,
            cgroup,
            started_boot_ns: now,
            expires_boot_ns,
            identity,
            seen_populated: false,
            scope_text: req.scope_text.clone(),
            scope_path,
            first_pid: None,
        });
        self.persist(task_id);
        tracing::info!(task = %task_id, call = %id, name = %req.name, slot, "call started");
        Ok(CallInfo { call: id, name: req.name, parent: parent_id, depth: depth + 1, task: info })
    }

    /// Re-adopts the calls a previous daemon left running in task `task_id` (just adopted):
    /// parents first, each call's cgroup and everything below it bound to the call's own
    /// slot again — adopting the task bound its whole subtree to the task's slot, the wider
    /// scope —, its records attributed to it, its refusals fed, its names resolved. A call
    /// whose cgroup is gone gets its `call_end`; one whose scope no longer compiles is killed
    /// and ended (its processes must not keep running under the task's wider scope).
    pub(super) fn readopt_calls(&mut self, task_id: &str, mut records: Vec<CallRecord>) -> Vec<String> {
        records.sort_by_key(|r| r.depth);
        let mut adopted = Vec::new();
        for rec in records {
            match self.readopt_call(task_id, &rec) {
                Ok(()) => adopted.push(rec.id.clone()),
                Err((why, cgroup)) => {
                    tracing::error!(task = %task_id, call = %rec.id, error = %why, "cannot re-adopt call; ending it");
                    let killed = cgroup.as_ref().and_then(|c| c.pids().ok()).map_or(0, |p| p.len() as u64);
                    if let Some(cg) = &cgroup {
                        let _ = cg.kill_all(KILL_TIMEOUT);
                        let _ = cg.remove();
                    }
                    let rec = AuditRecord {
                        time: self.now(),
                        task: task_id.to_string(),
                        call: Some(Arc::from(rec.id.as_str())),
                        call_name: Some(Arc::from(rec.name.as_str())),
                        kind: Kind::CallEnd,
                        decision: Some(Decision::Allow),
                        reason: Some(format!("not re-adopted after a daemon restart: {why}")),
                        killed: Some(killed),
                        duration_ms: Some(
                            Clock::boot_now_ns().saturating_sub(rec.started_boot_ns) / 1_000_000,
                        ),
                        ..Default::default()
                    };
                    self.emit(rec);
                }
            }
        }
        if let Some(t) = self.tasks.get_mut(task_id) {
            let highest = t
                .calls
                .iter()
                .filter_map(|c| c.id.rsplit('/').next()?.strip_prefix('c')?.parse::<u32>().ok())
                .max()
                .unwrap_or(0);
            t.next_call = t.next_call.max(highest);
        }
        self.persist(task_id);
        adopted
    }

    fn readopt_call(&mut self, task_id: &str, rec: &CallRecord) -> Result<(), (String, Option<Cgroup>)> {
        let t = self.tasks.get(task_id).ok_or_else(|| ("its task is gone".to_string(), None))?;
        let parent_id = rec.id.rsplit_once('/').map(|(p, _)| p).unwrap_or(task_id);
        let parent_scope = if parent_id == task_id {
            t.run.task.scope.clone()
        } else {
            let p = t.calls.iter().find(|c| c.id == parent_id);
            p.ok_or_else(|| (format!("its parent {parent_id} was not re-adopted"), None))?.scope.clone()
        };
        let cgroup = Cgroup::open(&rec.cgroup)
            .map_err(|e| (format!("its cgroup {} is gone ({e})", rec.cgroup.display()), None))?;
        let fail = |why: String, cg: &Cgroup| (why, Some(cg.clone()));
        let mut scope = call_scope(&parent_scope, rec.scope_text.as_deref(), &rec.scope_path)
            .map_err(|e| fail(format!("its scope: {e}"), &cgroup))?;
        scope.ttl = rec.expires_boot_ns.map(|e| Duration::from_nanos(e.saturating_sub(rec.started_boot_ns)));
        let mut compiled =
            CompiledScope::compile(&scope).map_err(|e| fail(format!("its scope: {e}"), &cgroup))?;
        compiled.call = true;
        let tag = CallTag { id: Arc::from(rec.id.as_str()), name: Arc::from(rec.name.as_str()) };
        self.pipeline
            .register(rec.slot, TaskCtx { id: task_id.to_string(), mode: scope.mode, call: Some(tag) });
        // Its command's process, if the previous daemon died before saving it: the oldest
        // process of the call whose parent is outside it (the task's init).
        let first_pid = rec.first_pid.or_else(|| first_process(&cgroup));
        self.pipeline.seed_call(&rec.id, first_pid);
        let mut ids = vec![cgroup.id()];
        ids.extend(cgroup.descendant_ids().unwrap_or_default());
        let bound = (|| -> Result<(), String> {
            self.sensor.bind(rec.slot, &ids, &compiled).map_err(|e| e.to_string())?;
            if let Some(d) = crate::dns::TaskDns::new(task_id, rec.slot, &scope).map_err(|e| e.to_string())? {
                live!(self).dns_register(d).map_err(|e| e.to_string())?;
            }
            Ok(())
        })();
        if let Err(e) = bound {
            self.pipeline.unregister(rec.slot);
            return Err(fail(format!("binding its scope: {e}"), &cgroup));
        }
        if let Some(feed) = self.feed.as_mut() {
            feed.register(crate::kaudit::TaskInfo::new(
                rec.slot,
                None,
                &cgroup,
                &self.node.cgroup_mount,
                &compiled,
            ));
        }
        let Some(t) = self.tasks.get_mut(task_id) else {
            return Err(("its task is gone".into(), Some(cgroup)));
        };
        t.calls.push(Call {
            id: rec.id.clone(),
            name: rec.name.clone(),
            depth: rec.depth,
            slot: rec.slot,
            scope,
            compiled,
            cgroup,
            started_boot_ns: rec.started_boot_ns,
            expires_boot_ns: rec.expires_boot_ns,
            identity: rec.identity.clone(),
            seen_populated: true,
            scope_text: rec.scope_text.clone(),
            scope_path: rec.scope_path.clone(),
            first_pid,
        });
        tracing::info!(task = %task_id, call = %rec.id, slot = rec.slot, ?first_pid, "call re-adopted");
        Ok(())
    }

    /// Starts a call for a process inside a task: the deepest task or call whose cgroup holds
    /// `cgroup` (the caller's, from the kernel) is the parent; the request names neither.
    pub(super) fn start_inside_call(
        &mut self,
        cgroup: &std::path::Path,
        mut req: CallRequest,
    ) -> Result<CallInfo, ApiError> {
        let (task_id, parent) = self
            .tasks
            .iter()
            .find_map(|(id, t)| {
                let tcg = t.run.task.cgroup.as_ref()?;
                if !cgroup.starts_with(tcg.path()) {
                    return None;
                }
                let call = t
                    .calls
                    .iter()
                    .filter(|c| cgroup.starts_with(c.cgroup.path()))
                    .max_by_key(|c| c.depth)
                    .map(|c| c.id.clone());
                Some((id.clone(), call))
            })
            .ok_or_else(|| ApiError { status: 403, message: "the caller is in no task".into() })?;
        req.parent = parent;
        self.start_call(&task_id, req)
    }

    /// Ends call `call` of `task_id` and every call below it (deepest first).
    pub(super) fn end_call(
        &mut self,
        task_id: &str,
        call: &str,
        reason: &str,
    ) -> Result<EndResponse, ApiError> {
        let t = self.tasks.get(task_id).ok_or_else(|| ApiError::not_found(task_id))?;
        if !t.calls.iter().any(|c| c.id == call) {
            return Err(ApiError {
                status: 404,
                message: format!("task {task_id} has no running call {call:?}"),
            });
        }
        let mut below: Vec<(u32, String)> = t
            .calls
            .iter()
            .filter(|c| c.id.starts_with(&format!("{call}/")))
            .map(|c| (c.depth, c.id.clone()))
            .collect();
        below.sort_by_key(|c| std::cmp::Reverse(c.0));
        for (_, id) in below {
            self.end_one_call(task_id, &id, "parent ended");
        }
        Ok(self.end_one_call(task_id, call, reason))
    }

    /// Ends every call of a task, deepest first (before the task's own end).
    pub(super) fn end_all_calls(&mut self, task_id: &str) {
        let Some(t) = self.tasks.get(task_id) else { return };
        let mut all: Vec<(u32, String)> = t.calls.iter().map(|c| (c.depth, c.id.clone())).collect();
        all.sort_by_key(|c| std::cmp::Reverse(c.0));
        for (_, id) in all {
            self.end_one_call(task_id, &id, "task ended");
        }
    }

    fn end_one_call(&mut self, task_id: &str, call: &str, reason: &str) -> EndResponse {
        let gone = EndResponse {
            id: call.into(),
            reason: reason.into(),
            killed: 0,
            drops: 0,
            already: true,
            errors: vec![],
        };
        let Some(t) = self.tasks.get_mut(task_id) else { return gone };
        let Some(i) = t.calls.iter().position(|c| c.id == call) else { return gone };
        let c = t.calls.remove(i);
        self.persist(task_id);
        let mut errors = Vec::new();
        let killed = c.cgroup.pids().map(|p| p.len() as u64).unwrap_or(0);
        if let Err(e) = c.cgroup.kill_all(KILL_TIMEOUT) {
            errors.push(format!("kill: {e}"));
        }
        // Every exit record is in the ring once the cgroup is empty.
        self.drain();
        if let Some(feed) = self.feed.as_mut() {
            if let Err(e) = feed.settle(&mut self.pipeline, c.slot) {
                errors.push(format!("refusal reports: {e}"));
            }
            feed.unregister(c.slot);
        }
        if c.scope.dns.is_some() {
            live!(self).dns_unregister(c.slot, task_id);
        }
        let drops = self.drops_of(c.slot);
        if let Err(e) = self.sensor.unbind(c.slot, &c.compiled) {
            errors.push(format!("tables: {e}"));
        }
        if let Err(e) = c.cgroup.remove() {
            errors.push(format!("cgroup: {e}"));
        }
        let st = self.pipeline.take_call_stats(call);
        let (exit_status, signal) = st.exit.unwrap_or((None, None));
        let reason = if errors.is_empty() {
            reason.to_string()
        } else {
            format!("{reason}; errors: {}", errors.join("; "))
        };
        let rec = AuditRecord {
            time: self.now(),
            task: task_id.to_string(),
            call: Some(Arc::from(c.id.as_str())),
            call_name: Some(Arc::from(c.name.as_str())),
            kind: Kind::CallEnd,
            decision: Some(Decision::Allow),
            pid: st.first_pid,
            exit_status,
            signal,
            reason: Some(reason.clone()),
            killed: Some(killed),
            duration_ms: Some(Clock::boot_now_ns().saturating_sub(c.started_boot_ns) / 1_000_000),
            events: Some(st.events),
            denials: Some(st.denials),
            drops: Some(drops),
            ..Default::default()
        };
        self.emit(rec);
        self.pipeline.unregister(c.slot);
        let _ = self.pipeline.flush();
        tracing::info!(task = %task_id, call = %c.id, reason = %reason, "call ended");
        EndResponse { id: c.id, reason, killed, drops, already: false, errors }
    }

    /// The housekeeping of calls: a call ends when its command exited (the kernel's `exit`
    /// record of its first process), when its cgroup emptied, or when its ttl ran out.
    pub(super) fn call_housekeeping(&mut self, task_id: &str) {
        let now = Clock::boot_now_ns();
        let Some(t) = self.tasks.get_mut(task_id) else { return };
        let mut due = Vec::new();
        let mut learned = false;
        for c in &mut t.calls {
            let populated = c.cgroup.populated().unwrap_or(false);
            c.seen_populated |= populated;
            let st = self.pipeline.call_stats(&c.id);
            if c.first_pid.is_none() && st.first_pid.is_some() {
                c.first_pid = st.first_pid;
                learned = true;
            }
            if c.expires_boot_ns.is_some_and(|e| e <= now) {
                due.push((c.depth, c.id.clone(), "ttl expired"));
            } else if st.exit.is_some() || (c.seen_populated && !populated) {
                due.push((c.depth, c.id.clone(), "exited"));
            }
        }
        if learned {
            self.persist(task_id);
        }
        due.sort_by_key(|c| std::cmp::Reverse(c.0));
        for (_, id, why) in due {
            let still = self.tasks.get(task_id).is_some_and(|t| t.calls.iter().any(|c| c.id == id));
            if still {
                let _ = self.end_call(task_id, &id, why);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_stat;

    #[test]
    fn stat_fields_are_read_after_the_last_parenthesis() {
        let s = "4242 (a) b) (c) S 17 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_stat(s), Some((17, 987654)));
        assert_eq!(parse_stat("4242 (sh) S 17"), None, "a truncated line is refused");
        assert_eq!(parse_stat("garbage"), None);
    }
}
