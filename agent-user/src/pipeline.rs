//! The pipeline: decode → correlate → audit, for the sandboxes it knows.
//!
//! Raw records come from any [`crate::source::EventSource`]; each is decoded
//! (failures counted), correlated with the process table and its task, and
//! written to the audit sink with a gap-free per-task sequence number, chained and sealed
//! (see [`crate::audit::chain`]).
use std::{collections::HashMap, io, sync::Arc};

use crate::{
    audit::{
        AuditRecord, AuditSink, Decision, Kind, SCHEMA_VERSION,
        chain::{self, NodeKey},
        clock::Clock,
        record,
    },
    correlate::ProcessTable,
    decode::{Decoder, Event, KAction, KDecision, LsmKind},
    k8s::pod::PodIdentity,
    rules::{RuleSet, engine::Engine},
};

pub use crate::scope::Mode;

/// A task the pipeline attributes events to.
#[derive(Debug, Clone)]
pub struct TaskCtx {
    pub id: String,
    pub mode: Mode,
    /// The slot is a call's (a tool call or stage inside task `id`): its records carry it.
    pub call: Option<CallTag>,
}

impl TaskCtx {
    /// A task's own slot.
    pub fn task(id: String, mode: Mode) -> Self {
        Self { id, mode, call: None }
    }
}

/// The call a slot belongs to, written on every record of the slot (`call`, `call_name`).
#[derive(Debug, Clone)]
pub struct CallTag {
    pub id: Arc<str>,
    pub name: Arc<str>,
}

/// What the pipeline saw of one call, for its `call_end`: counted from the records written,
/// and the exit of its first process as the kernel reported it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallStats {
    /// Records of the call's processes (not `call_start`/`call_end`).
    pub events: u64,
    pub denials: u64,
    /// The first process that ran a program in the call's cgroup (its command).
    pub first_pid: Option<u32>,
    /// That process's exit (status, signal), from its `exit` record.
    pub exit: Option<(Option<i32>, Option<i32>)>,
}

/// Decode → correlate → audit.
pub struct Pipeline {
    decoder: Decoder,
    table: ProcessTable,
    clock: Clock,
    tasks: HashMap<u32, TaskCtx>,
    sink: Box<dyn AuditSink>,
    /// Records for slots no task is registered for.
    pub unattributed: u64,
    /// First sink error from [`Pipeline::ingest`], kept until taken.
    io_error: Option<io::Error>,
    /// Per-task hash chains.
    chains: HashMap<String, TaskChain>,
    signer: Option<NodeKey>,
    /// Scope-drift rules evaluated live over every record written.
    rules: Option<Engine<'static>>,
    /// The pod of each task bound to a container: written on every record of the task.
    pods: HashMap<String, Arc<PodIdentity>>,
    /// pid → sandbox slot, from each sandbox's records: a kernel report that names only a
    /// pid finds its task here. Exited pids move to `gone_slots` (bounded).
    pid_slots: HashMap<u32, u32>,
    gone_slots: std::collections::VecDeque<(u32, u32)>,
    /// Per task: how many `deny` records were written, and the first few (kind, target, rule).
    denials: HashMap<String, Denials>,
    /// Kernel audit reports lost before Warden read them (socket overruns), see
    /// [`crate::kaudit`]; every running task's [`GapTracker`] reports their growth.
    pub reports_lost: u64,
    /// Per running call (by id): its counters for `call_end`.
    calls: HashMap<Arc<str>, CallStats>,
}

/// How many exited pids keep their slot for late reports.
const GONE_SLOTS: usize = 4096;

/// A task's refusals, for the summary at its end.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Denials {
    pub count: u64,
    /// The first [`Denials::KEEP`]: (kind, target, rule).
    pub first: Vec<(String, String, String)>,
}

impl Denials {
    pub const KEEP: usize = 5;

    fn note(&mut self, rec: &AuditRecord) {
        self.count += 1;
        if self.first.len() < Self::KEEP {
            let target = rec
                .path
                .clone()
                .or_else(|| rec.addr.as_ref().map(|a| format!("{a}:{}", rec.port.unwrap_or(0))))
                .or_else(|| rec.syscall.clone())
                .or_else(|| rec.target_pid.map(|p| format!("pid {p}")))
                .unwrap_or_default();
            self.first.push((rec.kind.to_string(), target, rec.rule.unwrap_or("").to_string()));
        }
    }

    /// The summary `warden run` prints at task end (empty when nothing was refused).
    pub fn summary(&self) -> String {
        if self.count == 0 {
            return String::new();
        }
        let mut s = format!(
            "warden: {} action{} refused",
            self.count,
            if self.count == 1 { " was" } else { "s were" }
        );
        s.push_str(if self.count as usize > self.first.len() { "; the first:\n" } else { ":\n" });
        for (kind, target, rule) in &self.first {
            s.push_str(&format!("  {kind:<8} {target}  (rule {rule})\n"));
        }
        s
    }
}

/// Where a task's chain stands.
struct TaskChain {
    seq: u64,
    head: String,
    since_checkpoint: u64,
}

impl Pipeline {
    pub fn new(table: ProcessTable, clock: Clock, sink: Box<dyn AuditSink>) -> Self {
        Self {
            decoder: Decoder::default(),
            table,
            clock,
            tasks: HashMap::new(),
            sink,
            unattributed: 0,
            io_error: None,
            chains: HashMap::new(),
            signer: None,
            rules: None,
            pods: HashMap::new(),
            pid_slots: HashMap::new(),
            gone_slots: Default::default(),
            reports_lost: 0,
            denials: HashMap::new(),
            calls: HashMap::new(),
        }
    }

    /// What was seen of a running call so far.
    pub fn call_stats(&self, call: &str) -> CallStats {
        self.calls.get(call).cloned().unwrap_or_default()
    }

    /// A call re-adopted by a restarted daemon: its first process, if a previous daemon saw
    /// it, so that its `exit` record still ends the call.
    pub fn seed_call(&mut self, call: &str, first_pid: Option<u32>) {
        self.calls.entry(Arc::from(call)).or_default().first_pid = first_pid;
    }

    /// Forgets a call's counters (at its end) and returns them.
    pub fn take_call_stats(&mut self, call: &str) -> CallStats {
        self.calls.remove(call).unwrap_or_default()
    }

    /// The refusals written for `task` so far (and forgets them).
    pub fn take_denials(&mut self, task: &str) -> Denials {
        self.denials.remove(task).unwrap_or_default()
    }

    /// The sandbox slot of a process seen in a sandbox's records (live or recently exited).
    pub fn slot_of_pid(&self, pid: u32) -> Option<u32> {
        self.pid_slots
            .get(&pid)
            .copied()
            .or_else(|| self.gone_slots.iter().rev().find(|(p, _)| *p == pid).map(|(_, s)| *s))
    }

    fn track_slot(&mut self, ev: &Event, pid: u32) {
        let slot = ev.meta().slot;
        match ev {
            Event::Exit { .. } => {
                if let Some(s) = self.pid_slots.remove(&pid) {
                    if self.gone_slots.len() >= GONE_SLOTS {
                        self.gone_slots.pop_front();
                    }
                    self.gone_slots.push_back((pid, s));
                }
            }
            Event::Fork { child_tgid, .. } => {
                self.pid_slots.insert(pid, slot);
                self.pid_slots.insert(*child_tgid, slot);
            }
            _ => {
                self.pid_slots.insert(pid, slot);
            }
        }
    }

    /// Writes a refusal the kernel reported (Landlock, seccomp) as a `deny` record of its task.
    pub fn handle_refusal(&mut self, r: &crate::kaudit::Refusal) -> io::Result<()> {
        let Some(task) = self.tasks.get(&r.slot) else {
            self.unattributed += 1;
            return Ok(());
        };
        let (task, call) = (task.id.clone(), task.call.clone());
        let ctx = r.pid.map(|p| self.table.context_of(p));
        let rec = AuditRecord {
            time: crate::audit::clock::format_wall(r.unix_ns),
            task,
            call: call.as_ref().map(|c| c.id.clone()),
            call_name: call.map(|c| c.name),
            kind: r.kind,
            decision: Some(Decision::Deny),
            action: Some(r.action),
            rule: Some(r.rule),
            ancestry: Some(ctx.as_ref().map(|c| self.table.ancestry(c.pid)).unwrap_or_default()),
            pid: r.pid,
            ppid: ctx.as_ref().map(|c| c.ppid).filter(|p| *p != 0),
            exe: ctx.and_then(|c| c.exe).or_else(|| r.exe.clone()),
            comm: r.comm.clone(),
            path: r.path.clone(),
            path_truncated: r.path_truncated.then_some(true),
            ino: r.ino,
            target_pid: r.target_pid,
            source: Some(r.source),
            syscall: r.syscall.clone(),
            blockers: r.blockers.clone(),
            ..Default::default()
        };
        self.emit(rec)
    }

    /// Writes one `deny` record per fork the process limit refused (`pids.events`): the
    /// controller names neither the process nor the time, so these carry the task only.
    pub fn limit_refusals(&mut self, slot: u32, n: u64) -> io::Result<()> {
        let Some(task) = self.tasks.get(&slot) else { return Ok(()) };
        let task = task.id.clone();
        for _ in 0..n {
            let rec = AuditRecord {
                time: self.clock.format(Clock::boot_now_ns()),
                task: task.clone(),
                kind: Kind::Fork,
                decision: Some(Decision::Deny),
                action: Some("refuse"),
                rule: Some("limits.processes"),
                ancestry: Some(Vec::new()),
                source: Some("pids"),
                ..Default::default()
            };
            self.emit(rec)?;
        }
        Ok(())
    }

    /// Writes one `deny` record per process the kernel's OOM killer killed because the task
    /// reached its memory limit (`memory.events` / `memory.oom_control`: `oom_kill`): like
    /// the pids controller, the memory controller names neither the process nor the time.
    pub fn oom_kills(&mut self, slot: u32, n: u64, limit: Option<u64>) -> io::Result<()> {
        let Some(task) = self.tasks.get(&slot) else { return Ok(()) };
        let task = task.id.clone();
        for _ in 0..n {
            let rec = AuditRecord {
                time: self.clock.format(Clock::boot_now_ns()),
                task: task.clone(),
                kind: Kind::Exit,
                decision: Some(Decision::Deny),
                action: Some("kill"),
                rule: Some("limits.memory"),
                ancestry: Some(Vec::new()),
                source: Some("memory"),
                signal: Some(libc::SIGKILL),
                reason: Some(match limit {
                    Some(b) => {
                        format!("the task reached its memory limit ({b} bytes): the kernel killed a process")
                    }
                    None => "the task ran out of memory: the kernel killed a process".into(),
                }),
                ..Default::default()
            };
            self.emit(rec)?;
        }
        Ok(())
    }

    /// Writes a `gap` for `missing` refusals the kernel counted for task `slot` but Warden never
    /// received.
    pub fn refusals_gap(&mut self, slot: u32, missing: u64) -> io::Result<()> {
        let Some(task) = self.tasks.get(&slot) else { return Ok(()) };
        let rec = AuditRecord {
            time: self.clock.format(Clock::boot_now_ns()),
            task: task.id.clone(),
            kind: Kind::Gap,
            reports_lost: Some(missing),
            reason: Some("the kernel refused more requests than it reported (audit records lost)".into()),
            ..Default::default()
        };
        self.emit(rec)
    }

    pub fn register(&mut self, slot: u32, task: TaskCtx) {
        self.tasks.insert(slot, task);
    }

    pub fn unregister(&mut self, slot: u32) -> Option<TaskCtx> {
        self.tasks.remove(&slot)
    }

    /// Continues a task's chain from a record already written (`seq`, its `hash`): a
    /// restarted daemon picks up where the log ends.
    pub fn resume_chain(&mut self, task: &str, seq: u64, head: String) {
        self.chains.insert(task.to_string(), TaskChain { seq, head, since_checkpoint: 0 });
    }

    /// Forgets an ended task's chain (and its pod).
    pub fn forget_chain(&mut self, task: &str) {
        self.chains.remove(task);
        self.pods.remove(task);
    }

    /// Every record of `task` from now on names this pod and container.
    pub fn set_pod(&mut self, task: &str, pod: PodIdentity) {
        self.pods.insert(task.to_string(), Arc::new(pod));
    }

    /// Records written but not yet flushed stay in the sink; this says how many tasks have a
    /// chain (for metrics and tests).
    pub fn chains(&self) -> usize {
        self.chains.len()
    }

    pub fn decode_failures(&self) -> u64 {
        self.decoder.stats.failed
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    pub fn table(&self) -> &ProcessTable {
        &self.table
    }

    /// Signs checkpoints with this key (without one, no checkpoints are written and logs
    /// cannot be verified end to end).
    pub fn set_signer(&mut self, key: NodeKey) {
        self.signer = Some(key);
    }

    /// Evaluates `set` live: every record written is fed to the rule engine and each finding
    /// is written as a `finding` record right after the record that completed it.
    pub fn set_rules(&mut self, set: RuleSet) {
        let set: &'static RuleSet = Box::leak(Box::new(set));
        self.rules = Some(Engine::new(set));
    }

    /// Writes a record: assigns schema version, the task's next sequence number and `prev`,
    /// seals the line with its hash, and signs a checkpoint every `CHECKPOINT_EVERY` records.
    pub fn emit(&mut self, mut rec: AuditRecord) -> io::Result<()> {
        let chain = self.chains.entry(rec.task.clone()).or_insert_with(|| TaskChain {
            seq: 0,
            head: chain::GENESIS.to_string(),
            since_checkpoint: 0,
        });
        chain.seq += 1;
        rec.v = SCHEMA_VERSION;
        rec.seq = chain.seq;
        rec.prev = Some(chain.head.clone());
        if rec.pod.is_none() {
            rec.pod = self.pods.get(&rec.task).cloned();
        }
        let mut line = serde_json::to_string(&rec)?;
        chain.head = chain::seal(&mut line);
        chain.since_checkpoint = if rec.kind == Kind::Checkpoint { 0 } else { chain.since_checkpoint + 1 };
        let due = chain.since_checkpoint >= chain::CHECKPOINT_EVERY;
        if rec.decision == Some(Decision::Deny) {
            self.denials.entry(rec.task.clone()).or_default().note(&rec);
        }
        if let Some(c) = &rec.call
            && !matches!(rec.kind, Kind::CallStart | Kind::CallEnd)
        {
            let st = self.calls.entry(c.clone()).or_default();
            st.events += 1;
            st.denials += u64::from(rec.decision == Some(Decision::Deny));
        }
        self.sink.write(&rec, &line)?;
        if let Some(engine) = self.rules.as_mut() {
            // The typed record itself, not its line parsed back (docs/rules.md, "Cost").
            let found = engine.observe_view(&crate::rules::view::LiveRecord { rec: &rec, line: &line });
            for f in found {
                self.emit(AuditRecord {
                    time: f.time,
                    task: f.task,
                    kind: Kind::Finding,
                    pid: f.pid.map(|p| p as u32),
                    rule_id: Some(f.rule),
                    severity: Some(f.severity),
                    description: Some(f.description),
                    records: Some(f.seqs),
                    ..Default::default()
                })?;
            }
        }
        if due {
            self.checkpoint(&rec.task)?;
        }
        Ok(())
    }

    /// Writes a signed checkpoint over the task's chain head (no-op without a signer).
    pub fn checkpoint(&mut self, task: &str) -> io::Result<()> {
        let Some(key) = &self.signer else { return Ok(()) };
        let Some(c) = self.chains.get(task) else { return Ok(()) };
        let sig = key.sign(&chain::checkpoint_message(task, c.seq + 1, &c.head));
        let rec = AuditRecord {
            time: self.clock.format(Clock::boot_now_ns()),
            task: task.to_string(),
            kind: Kind::Checkpoint,
            key: Some(key.public_hex()),
            sig: Some(sig),
            ..Default::default()
        };
        self.emit(rec)
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.sink.flush()
    }

    /// Like [`Pipeline::handle_raw`], for use as a source callback: a sink error is kept
    /// (see [`Pipeline::take_io_error`]) instead of returned.
    pub fn ingest(&mut self, bytes: &[u8]) {
        if let Err(e) = self.handle_raw(bytes) {
            self.io_error.get_or_insert(e);
        }
    }

    /// The first sink error [`Pipeline::ingest`] met, if any.
    pub fn take_io_error(&mut self) -> Option<io::Error> {
        self.io_error.take()
    }

    /// Handles one raw record. Malformed records are counted, never fatal.
    pub fn handle_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self.decoder.decode(bytes) {
            Ok(ev) => self.handle(&ev),
            Err(e) => {
                tracing::warn!(error = %e, len = bytes.len(), "undecodable record");
                Ok(())
            }
        }
    }

    /// Like [`Pipeline::ingest`], but only for records `keep` accepts (by their metadata);
    /// undecodable records are counted either way. Returns whether the record was kept.
    pub fn ingest_if(&mut self, bytes: &[u8], keep: impl Fn(&crate::decode::Meta) -> bool) -> bool {
        match self.decoder.decode(bytes) {
            Ok(ev) if keep(ev.meta()) => {
                if let Err(e) = self.handle(&ev) {
                    self.io_error.get_or_insert(e);
                }
                true
            }
            Ok(_) => false,
            Err(e) => {
                tracing::warn!(error = %e, len = bytes.len(), "undecodable record");
                false
            }
        }
    }

    /// Handles one decoded event.
    pub fn handle(&mut self, ev: &Event) -> io::Result<()> {
        let ctx = self.table.apply(ev);
        self.track_slot(ev, ctx.pid);
        let Some(task) = self.tasks.get(&ev.meta().slot) else {
            self.unattributed += 1;
            return Ok(());
        };
        let p = ev.proc();
        let meta = ev.meta();
        let decision = match meta.decision {
            KDecision::Allow => Decision::Allow,
            KDecision::Deny => Decision::Deny,
            KDecision::Audit => Decision::Audit,
        };
        let judged = decision != Decision::Allow;
        let call = task.call.clone();
        if let Some(c) = &call {
            // The call's command is the first process to run a program in its cgroup; its
            // exit (from the kernel's record) is the call's.
            let st = self.calls.entry(c.id.clone()).or_default();
            match ev {
                Event::Exec { .. } if st.first_pid.is_none() => st.first_pid = Some(ctx.pid),
                Event::Exit { exit_code, .. } if st.first_pid == Some(ctx.pid) => {
                    st.exit = Some(record::wait_status(*exit_code));
                }
                _ => {}
            }
        }
        let mut rec = AuditRecord {
            time: self.clock.format(meta.ktime_ns),
            task: task.id.clone(),
            call: call.as_ref().map(|c| c.id.clone()),
            call_name: call.map(|c| c.name),
            kind: ev.kind(),
            decision: Some(decision),
            action: match meta.action {
                KAction::None => None,
                KAction::Refuse => Some("refuse"),
                KAction::Kill => Some("kill"),
            },
            rule: if judged { meta.rule.as_str() } else { None },
            ancestry: judged.then(|| self.table.ancestry(ctx.pid)),
            pid: Some(ctx.pid),
            ppid: Some(ctx.ppid),
            exe: ctx.exe,
            comm: Some(p.comm.clone()),
            uid: Some(p.uid),
            cgroup_id: Some(ev.meta().cgroup_id),
            ..Default::default()
        };
        match ev {
            Event::Exec { dev, ino, path, path_truncated, .. } => {
                rec.path = Some(path.clone());
                rec.dev = Some(record::kernel_dev_to_user(*dev));
                rec.ino = Some(*ino);
                rec.path_truncated = path_truncated.then_some(true);
            }
            Event::Lsm { what, target_pid, arg, dev, ino, path, meta, .. } => {
                if !path.is_empty() {
                    rec.path = Some(path.clone());
                }
                rec.path_truncated =
                    (meta.flags & agent_common::abi::flags::PATH_TRUNCATED != 0).then_some(true);
                if *ino != 0 {
                    rec.dev = Some(record::kernel_dev_to_user(*dev));
                    rec.ino = Some(*ino);
                }
                match what {
                    LsmKind::Signal => {
                        rec.target_pid = Some(*target_pid);
                        rec.signal = Some(*arg as i32);
                    }
                    LsmKind::Ptrace => {
                        rec.target_pid = Some(*target_pid);
                        rec.arg = Some(*arg);
                    }
                    _ => rec.arg = Some(*arg),
                }
            }
            Event::Connect { addr, port, protocol, .. } => {
                rec.addr = Some(addr.to_string());
                rec.port = Some(*port);
                rec.protocol = Some(match protocol {
                    6 => "tcp".to_string(),
                    17 => "udp".to_string(),
                    n => n.to_string(),
                });
            }
            Event::Fork { child_tgid, .. } => rec.child_pid = Some(*child_tgid),
            Event::Exit { exit_code, .. } => {
                (rec.exit_status, rec.signal) = record::wait_status(*exit_code);
            }
        }
        self.emit(rec)
    }
}

/// Turns growth of one task's loss counters into `gap` records: kernel drops of its slot,
/// and undecodable records (which name no task, so every running task counts them).
#[derive(Debug, Default, Clone, Copy)]
pub struct GapTracker {
    /// Drops already reported.
    pub drops: u64,
    /// The pipeline's decode failures already reported.
    pub decode_errors: u64,
    /// Kernel audit reports lost (socket overruns) already reported.
    pub reports_lost: u64,
}

impl GapTracker {
    /// Writes a `gap` record if records were lost since the last call; returns whether it did.
    pub fn record(&mut self, p: &mut Pipeline, task: &str, drops: u64) -> io::Result<bool> {
        let decode_errors = p.decode_failures();
        let reports_lost = p.reports_lost;
        if drops == self.drops && decode_errors == self.decode_errors && reports_lost == self.reports_lost {
            return Ok(false);
        }
        let rec = AuditRecord {
            time: p.clock().format(crate::audit::clock::Clock::boot_now_ns()),
            task: task.to_string(),
            kind: Kind::Gap,
            drops: Some(drops.saturating_sub(self.drops)),
            decode_errors: Some(decode_errors.saturating_sub(self.decode_errors)),
            reports_lost: (reports_lost > self.reports_lost).then(|| reports_lost - self.reports_lost),
            reason: Some(
                "records lost before they could be written (kernel ring buffer or hand-off full, undecodable, \
                 or kernel audit reports overrun)"
                    .into(),
            ),
            ..Default::default()
        };
        self.drops = drops;
        self.decode_errors = decode_errors;
        self.reports_lost = reports_lost;
        p.emit(rec)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        audit::sink::MemorySink,
        decode::tests::exec_bytes,
        source::{EventSource, MemorySource},
    };
    use std::sync::Mutex;

    struct Shared(Arc<Mutex<MemorySink>>);
    impl AuditSink for Shared {
        fn write(&mut self, r: &AuditRecord, line: &str) -> io::Result<()> {
            self.0.lock().unwrap().write(r, line)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn memory_source_flows_to_audit_records_with_task_and_seq() {
        let mem = Arc::new(Mutex::new(MemorySink::default()));
        let mut p =
            Pipeline::new(ProcessTable::default(), Clock::with_offset(0), Box::new(Shared(mem.clone())));
        p.register(3, TaskCtx::task("t-1".into(), Mode::Enforce));
        let mut src =
            MemorySource::new([exec_bytes(10, 1, "/bin/sh"), vec![0u8; 7], exec_bytes(11, 10, "/bin/ls")]);
        assert!(src.wait().await.unwrap());
        assert_eq!(src.drain(&mut |b| p.ingest(b)), 3);
        assert!(!src.wait().await.unwrap(), "memory source ends when drained");
        assert!(p.take_io_error().is_none());
        assert_eq!(p.decode_failures(), 1);
        let recs = &mem.lock().unwrap().records;
        assert_eq!(recs.len(), 2);
        assert_eq!((recs[0].seq, recs[1].seq), (1, 2));
        assert_eq!(recs[1].task, "t-1");
        assert_eq!(recs[1].kind, Kind::Exec);
        assert_eq!(recs[1].path.as_deref(), Some("/bin/ls"));
        assert_eq!(recs[1].ppid, Some(10));
    }

    #[test]
    fn gap_tracker_reports_new_loss_once() {
        let mem = Arc::new(Mutex::new(MemorySink::default()));
        let mut p =
            Pipeline::new(ProcessTable::default(), Clock::with_offset(0), Box::new(Shared(mem.clone())));
        let mut g = GapTracker::default();
        assert!(!g.record(&mut p, "t-1", 0).unwrap(), "nothing lost, nothing written");
        p.ingest(&[0u8; 7]);
        assert!(g.record(&mut p, "t-1", 3).unwrap());
        assert!(!g.record(&mut p, "t-1", 3).unwrap(), "the same loss is reported once");
        assert!(g.record(&mut p, "t-1", 5).unwrap());
        let recs = &mem.lock().unwrap().records;
        let gaps: Vec<_> = recs.iter().map(|r| (r.kind, r.drops, r.decode_errors)).collect();
        assert_eq!(gaps, [(Kind::Gap, Some(3), Some(1)), (Kind::Gap, Some(2), Some(0))]);
    }

    #[tokio::test]
    async fn a_pods_task_names_the_pod_on_every_record() {
        let mem = Arc::new(Mutex::new(MemorySink::default()));
        let mut p =
            Pipeline::new(ProcessTable::default(), Clock::with_offset(0), Box::new(Shared(mem.clone())));
        p.register(3, TaskCtx::task("t-1".into(), Mode::Enforce));
        p.register(4, TaskCtx::task("t-2".into(), Mode::Enforce));
        let pod = PodIdentity {
            uid: "u".into(),
            name: "agent".into(),
            container_id: "c".into(),
            ..Default::default()
        };
        p.set_pod("t-1", pod.clone());
        p.emit(AuditRecord { task: "t-1".into(), kind: Kind::TaskStart, ..Default::default() }).unwrap();
        let mut src = MemorySource::new([exec_bytes(10, 1, "/bin/sh")]);
        assert!(src.wait().await.unwrap());
        src.drain(&mut |b| p.ingest(b));
        p.emit(AuditRecord { task: "t-2".into(), kind: Kind::TaskStart, ..Default::default() }).unwrap();
        p.forget_chain("t-1");
        p.emit(AuditRecord { task: "t-1".into(), kind: Kind::Gap, ..Default::default() }).unwrap();
        let recs = &mem.lock().unwrap().records;
        let pods: Vec<_> =
            recs.iter().map(|r| (r.task.as_str(), r.kind, r.pod.as_deref().cloned())).collect();
        assert_eq!(
            pods,
            [
                ("t-1", Kind::TaskStart, Some(pod.clone())),
                ("t-1", Kind::Exec, Some(pod)),
                ("t-2", Kind::TaskStart, None),
                ("t-1", Kind::Gap, None),
            ]
        );
    }

    #[tokio::test]
    async fn records_of_unknown_slots_are_counted_not_written() {
        let mem = Arc::new(Mutex::new(MemorySink::default()));
        let mut p =
            Pipeline::new(ProcessTable::default(), Clock::with_offset(0), Box::new(Shared(mem.clone())));
        p.handle_raw(&exec_bytes(10, 1, "/bin/sh")).unwrap();
        assert_eq!(p.unattributed, 1);
        assert!(mem.lock().unwrap().records.is_empty());
    }
}
