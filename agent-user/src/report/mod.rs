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
        }
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
        self.tree.observe(r);
        if let Some((_, u)) = &mut self.usage {
            u.observe(r);
        }
        if !class.is_empty() {
            self.denials_total += 1;
            if self.denials.len() < MAX_DENIALS {
                self.denials.push(html::row_of(r, ix));
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
            self.timeline.push(html::row_of(r, ix));
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
        }
    }
}
