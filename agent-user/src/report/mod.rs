//! `warden report`: one recorded log as a single self-contained HTML page for incident
//! responders — the integrity of the log, the task's process tree, the refusals, the findings
//! of a rule set, the scope beside what was used, and a filterable timeline.
//!
//! The log is read once, in order, and not kept: a [`Builder`] takes one record at a time and
//! keeps what the page shows — per task a summary, the process tree, the grants' use counts,
//! and table rows up to fixed limits ([`MAX_TIMELINE_ALLOWED`], [`MAX_TIMELINE_JUDGED`],
//! [`MAX_DENIALS`], [`MAX_FINDINGS`]); what goes beyond a limit is counted and summarized by
//! kind on the page. Memory follows the task's process tree and the page's size, not the log's.
//! [`html::render`] writes the page. Everything taken from the log is untrusted and escaped.
pub mod html;
pub mod tree;
pub mod usage;

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use crate::{
    audit::verify::{VerifyError, VerifyReport},
    rules::engine::Finding,
    scope::Scope,
};

/// Allowed records shown in the timeline at most.
pub const MAX_TIMELINE_ALLOWED: usize = 20_000;
/// Refused and audited records shown in the timeline at most.
pub const MAX_TIMELINE_JUDGED: usize = 20_000;
/// Refused and audited records listed in their own section at most.
pub const MAX_DENIALS: usize = 10_000;
/// Findings listed at most.
pub const MAX_FINDINGS: usize = 10_000;
/// Unreadable lines listed at most (all are counted).
pub const MAX_SKIPPED: usize = 20;
/// Calls tracked at most; records of calls beyond are shown as outside any call (all counted).
pub const MAX_CALLS: usize = 10_000;
/// Rows listed under each call in the Calls section at most (the timeline has them all).
pub const MAX_CALL_ROWS: usize = 200;
/// Bytes of a call's intent text kept for the page at most.
pub const MAX_INTENT_BYTES: usize = 4096;

/// What `warden verify` says about the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Integrity {
    Intact(VerifyReport),
    Broken(VerifyError),
}

/// One record as a table row shows it (unescaped), and nothing more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub seq: i64,
    pub time: String,
    /// Index of its task in [`Report::tasks`].
    pub task_ix: usize,
    /// `deny`, `audit` or empty.
    pub class: &'static str,
    pub pid: Option<i64>,
    pub kind: String,
    pub verdict: String,
    /// comm and executable.
    pub who: String,
    pub detail: String,
    pub rule: String,
    /// Index of its call in [`Report::calls`] (none: outside any call, or beyond [`MAX_CALLS`]).
    pub call: Option<usize>,
}

/// A call's stated intent as recorded (`call_start.intent`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntentShown {
    pub sha256: String,
    /// None: the scope keeps digests only (`evidence.intent: digest`).
    pub text: Option<String>,
    /// The text is cut (by Warden at record time, or here at [`MAX_INTENT_BYTES`]).
    pub truncated: bool,
}

/// How a call ended (`call_end`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallEnd {
    pub time: String,
    pub exit_status: Option<i64>,
    pub signal: Option<i64>,
    pub duration_ms: Option<i64>,
    pub events: Option<i64>,
    pub denials: Option<i64>,
    pub drops: Option<i64>,
}

/// One call (a tool call or stage) of a task.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallSummary {
    pub id: String,
    pub task_ix: usize,
    pub name: String,
    /// Its parent call's index in [`Report::calls`]; none: directly under its task (or a
    /// parent the log does not start).
    pub parent: Option<usize>,
    /// `call_start.parent` as recorded (a task or call id).
    pub parent_id: String,
    pub cmd: String,
    pub cwd: String,
    /// When its `call_start` was recorded (empty: not in the log).
    pub start: String,
    pub intent: Option<IntentShown>,
    pub end: Option<CallEnd>,
    /// Records of its processes (`call_start`/`call_end` excluded), refused and audited.
    pub records: usize,
    pub deny: usize,
    pub audit: usize,
}

/// One task of the log.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskSummary {
    pub id: String,
    /// Its first `task_start` and `task_end` records.
    pub start: Option<Value>,
    pub end: Option<Value>,
    pub records: usize,
    pub deny: usize,
    pub audit: usize,
}

/// Records the timeline does not show, of one kind and decision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeftOut {
    pub count: usize,
    pub first_time: String,
    pub last_time: String,
}

/// Everything the page shows.
#[derive(Debug, Clone)]
pub struct Report {
    /// The log's name, as given.
    pub source: String,
    /// Records read (of the task, with `--task`).
    pub records: usize,
    /// Lines that could not be read: (line number, why), the first [`MAX_SKIPPED`] ...
    pub skipped: Vec<(usize, String)>,
    /// ... of this many.
    pub skipped_total: usize,
    pub integrity: Integrity,
    /// Tasks in order of appearance.
    pub tasks: Vec<TaskSummary>,
    pub tree: tree::ProcessTree,
    /// With `--scope`: the scope file and its grants, marked.
    pub scope: Option<(String, Vec<usage::Grant>)>,
    /// With `--rules`: what the rules found (the first [`MAX_FINDINGS`] ...
    pub findings: Option<Vec<Finding>>,
    /// ... of this many).
    pub findings_total: usize,
    /// Refused and audited records, the first [`MAX_DENIALS`] ...
    pub denials: Vec<Row>,
    /// ... of this many.
    pub denials_total: usize,
    /// The timeline's rows, in log order.
    pub timeline: Vec<Row>,
    /// What the timeline leaves out, by (kind, decision).
    pub left_out: BTreeMap<(String, String), LeftOut>,
    /// Calls in order of appearance (the first [`MAX_CALLS`] ...
    pub calls: Vec<CallSummary>,
    /// ... of this many).
    pub calls_total: usize,
}

impl Report {
    /// Gathers the report from records already read. `scope`'s grants are resolved with `fs`.
    pub fn build(
        source: String,
        records: Vec<Value>,
        skipped: Vec<(usize, String)>,
        integrity: Integrity,
        scope: Option<&Scope>,
        findings: Option<Vec<Finding>>,
        fs: &dyn usage::Resolve,
    ) -> Self {
        let mut b = Builder::new(source, scope, fs);
        for (line, why) in skipped {
            b.skipped(line, why);
        }
        for r in &records {
            b.record(r);
        }
        let findings = findings.map(|f| {
            let n = f.len();
            (f, n)
        });
        b.finish(integrity, findings)
    }
}

/// Gathers a [`Report`] one record at a time.
pub struct Builder<'a> {
    source: String,
    records: usize,
    skipped: Vec<(usize, String)>,
    skipped_total: usize,
    tasks: Vec<TaskSummary>,
    task_ix: HashMap<String, usize>,
    tree: tree::Builder,
    usage: Option<(String, usage::UsageCounter<'a>)>,
    denials: Vec<Row>,
    denials_total: usize,
    timeline: Vec<Row>,
    allowed_seen: usize,
    judged_seen: usize,
    left_out: BTreeMap<(String, String), LeftOut>,
    calls: Vec<CallSummary>,
    call_ix: HashMap<String, usize>,
    /// `call_start`s of calls beyond [`MAX_CALLS`] (one per call).
    calls_beyond: usize,
}

fn str_of<'a>(r: &'a Value, k: &str) -> &'a str {
    r.get(k).and_then(Value::as_str).unwrap_or("")
}

impl<'a> Builder<'a> {
    /// `scope`'s grants are resolved with `fs` once, here.
    pub fn new(source: String, scope: Option<&'a Scope>, fs: &dyn usage::Resolve) -> Self {
        Builder {
            source,
            records: 0,
            skipped: Vec::new(),
            skipped_total: 0,
            tasks: Vec::new(),
            task_ix: HashMap::new(),
            tree: tree::Builder::default(),
            usage: scope.map(|s| (s.source.display().to_string(), usage::UsageCounter::new(s, fs))),
            denials: Vec::new(),
            denials_total: 0,
            timeline: Vec::new(),
            allowed_seen: 0,
            judged_seen: 0,
            left_out: BTreeMap::new(),
            calls: Vec::new(),
            call_ix: HashMap::new(),
            calls_beyond: 0,
        }
    }

    /// The call a record belongs to (by its `call` field), learning what its `call_start` and
    /// `call_end` say and counting its records.
    fn call(&mut self, r: &Value, task_ix: usize, class: &str) -> Option<usize> {
        let id = r.get("call").and_then(Value::as_str)?;
        let ix = match self.call_ix.get(id) {
            Some(&i) => i,
            None if self.calls.len() < MAX_CALLS => {
                self.calls.push(CallSummary {
                    id: id.to_string(),
                    task_ix,
                    name: str_of(r, "call_name").to_string(),
                    ..Default::default()
                });
                self.call_ix.insert(id.to_string(), self.calls.len() - 1);
                self.calls.len() - 1
            }
            None => {
                self.calls_beyond += usize::from(str_of(r, "kind") == "call_start");
                return None;
            }
        };
        let parent = match str_of(r, "kind") {
            "call_start" => self.call_ix.get(str_of(r, "parent")).copied().filter(|&p| p != ix),
            _ => None,
        };
        let c = &mut self.calls[ix];
        let int = |k: &str| r.get(k).and_then(Value::as_i64);
        match str_of(r, "kind") {
            "call_start" => {
                c.parent = parent;
                c.parent_id = str_of(r, "parent").to_string();
                c.cmd = r
                    .get("cmd")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" "))
                    .unwrap_or_default();
                c.cwd = str_of(r, "cwd").to_string();
                c.start = str_of(r, "time").to_string();
                if let Some(i) = r.get("intent") {
                    let mut text = i.get("text").and_then(Value::as_str).map(str::to_string);
                    let mut truncated = i.get("truncated").and_then(Value::as_bool).unwrap_or(false);
                    if let Some(t) = &mut text
                        && t.len() > MAX_INTENT_BYTES
                    {
                        let mut end = MAX_INTENT_BYTES;
                        while !t.is_char_boundary(end) {
                            end -= 1;
                        }
                        t.truncate(end);
                        truncated = true;
                    }
                    c.intent = Some(IntentShown {
                        sha256: i.get("sha256").and_then(Value::as_str).unwrap_or("").to_string(),
                        text,
                        truncated,
                    });
                }
            }
            "call_end" => {
                c.end = Some(CallEnd {
                    time: str_of(r, "time").to_string(),
                    exit_status: int("exit_status"),
                    signal: int("signal"),
                    duration_ms: int("duration_ms"),
                    events: int("events"),
                    denials: int("denials"),
                    drops: int("drops"),
                });
            }
            _ => {
                c.records += 1;
                match class {
                    "deny" => c.deny += 1,
                    "audit" => c.audit += 1,
                    _ => {}
                }
            }
        }
        if c.name.is_empty() {
            c.name = str_of(r, "call_name").to_string();
        }
        Some(ix)
    }

    /// A line that could not be read.
    pub fn skipped(&mut self, line: usize, why: String) {
        self.skipped_total += 1;
        if self.skipped.len() < MAX_SKIPPED {
            self.skipped.push((line, why));
        }
    }

    /// Records read so far.
    pub fn records(&self) -> usize {
        self.records
    }

    /// Unreadable lines so far.
    pub fn skipped_total(&self) -> usize {
        self.skipped_total
    }

    /// Takes one record (schema-upgraded), in log order.
    pub fn record(&mut self, r: &Value) {
        self.records += 1;
        let task = str_of(r, "task");
        let ix = match self.task_ix.get(task) {
            Some(&i) => i,
            None => {
                self.tasks.push(TaskSummary {
                    id: task.to_string(),
                    start: None,
                    end: None,
                    records: 0,
                    deny: 0,
                    audit: 0,
                });
                self.task_ix.insert(task.to_string(), self.tasks.len() - 1);
                self.tasks.len() - 1
            }
        };
        let t = &mut self.tasks[ix];
        t.records += 1;
        match str_of(r, "kind") {
            "task_start" if t.start.is_none() => t.start = Some(r.clone()),
            "task_end" if t.end.is_none() => t.end = Some(r.clone()),
            _ => {}
        }
        let class = html::decision_class(r);
        match class {
            "deny" => t.deny += 1,
            "audit" => t.audit += 1,
            _ => {}
        }
        let call = self.call(r, ix, class);
        self.tree.observe(r);
        if let Some((_, u)) = &mut self.usage {
            u.observe(r);
        }
        if !class.is_empty() {
            self.denials_total += 1;
            if self.denials.len() < MAX_DENIALS {
                self.denials.push(Row { call, ..html::row_of(r, ix) });
            }
        }
        let shown = if class.is_empty() {
            self.allowed_seen += 1;
            self.allowed_seen <= MAX_TIMELINE_ALLOWED
        } else {
            self.judged_seen += 1;
            self.judged_seen <= MAX_TIMELINE_JUDGED
        };
        if shown {
            self.timeline.push(Row { call, ..html::row_of(r, ix) });
        } else {
            let time = str_of(r, "time");
            let e = self
                .left_out
                .entry((str_of(r, "kind").to_string(), str_of(r, "decision").to_string()))
                .or_default();
            if e.count == 0 {
                e.first_time = time.to_string();
            }
            e.count += 1;
            e.last_time = time.to_string();
        }
    }

    /// The report; `findings`: what the rules found (kept, of how many), with `--rules`.
    pub fn finish(self, integrity: Integrity, findings: Option<(Vec<Finding>, usize)>) -> Report {
        let findings_total = findings.as_ref().map_or(0, |f| f.1);
        Report {
            source: self.source,
            records: self.records,
            skipped: self.skipped,
            skipped_total: self.skipped_total,
            integrity,
            tasks: self.tasks,
            tree: self.tree.finish(),
            scope: self.usage.map(|(path, u)| (path, u.finish())),
            findings: findings.map(|f| f.0),
            findings_total,
            denials: self.denials,
            denials_total: self.denials_total,
            timeline: self.timeline,
            left_out: self.left_out,
            calls_total: self.calls.len() + self.calls_beyond,
            calls: self.calls,
        }
    }
}
