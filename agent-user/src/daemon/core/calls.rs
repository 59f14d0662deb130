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
    daemon::api::{CallInfo, CallRequest, EndResponse},
    lifecycle::{Host, host::KILL_TIMEOUT},
    pipeline::{CallTag, TaskCtx},
    sandbox::Cgroup,
    scope::{Scope, compile::CompiledScope, narrow},
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
        let mut scope = match &req.scope_text {
            None => parent_scope.clone(),
            Some(text) => {
                let path = req.scope_path.clone().unwrap_or_else(|| "call-scope.yaml".into());
                let s = Scope::parse(text, &path).map_err(|e| ApiError::bad(e.to_string()))?;
                narrow::check(&parent_scope, &s).map_err(|w| ApiError::bad(w.to_string()))?;
                let mut s = s;
                // The task's issued secrets stay in the call's reach under the task's tools.
                s.secrets.extend(parent_scope.secrets.iter().filter(|x| x.issue.is_some()).cloned());
                s.broker = parent_scope.broker.clone();
                s
            }
        };
        let remaining = parent_expires.map(|e| Duration::from_nanos(e.saturating_sub(now)));
        let ttl = narrow::ttl(remaining, scope.ttl).map_err(|w| ApiError::bad(w.to_string()))?;
        scope.ttl = ttl;
        let mut compiled = CompiledScope::compile(&scope).map_err(|e| ApiError::bad(e.to_string()))?;
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
        });
        tracing::info!(task = %task_id, call = %id, name = %req.name, slot, "call started");
        Ok(CallInfo { call: id, name: req.name, parent: parent_id, depth: depth + 1, task: info })
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
        for c in &mut t.calls {
            let populated = c.cgroup.populated().unwrap_or(false);
            c.seen_populated |= populated;
            let st = self.pipeline.call_stats(&c.id);
            if c.expires_boot_ns.is_some_and(|e| e <= now) {
                due.push((c.depth, c.id.clone(), "ttl expired"));
            } else if st.exit.is_some() || (c.seen_populated && !populated) {
                due.push((c.depth, c.id.clone(), "exited"));
            }
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
