//! Rule evaluation over audit records, in input order: the same input gives byte-identical
//! findings. State is kept per rule and per key (task, or task + pid), bounded.
//!
//! Evaluation is split in two, so the expensive half can run anywhere:
//! - [`Evaluator`]: whether one step's condition holds for one record ([`Outcome`]). Pure: it
//!   reads the record through a [`RecordView`] and the rule set's lists, bound once in a root
//!   CEL context. Steps are indexed by the record kinds they can match and guarded by their
//!   [`super::needs::Needs`], so most records run no CEL at all.
//! - [`Engine`]: the per-rule state (sequences, counts in a window), fed in input order. It asks
//!   for outcomes lazily (live, [`Engine::observe_view`]) or takes them precomputed by other
//!   threads ([`Engine::observe_with`], parallel replay); both give the same findings and the
//!   same count of expressions that failed to evaluate.
use std::collections::{BTreeMap, VecDeque};

use cel::common::{
    types::{CelInt, CelString},
    value::{CowVal, Val},
};
use serde::Serialize;
use serde_json::Value;

use super::{By, INT_FIELDS, Rule, RuleSet, STRING_FIELDS, Severity, view::RecordView};

/// Partial sequences kept per rule and key; the oldest is dropped beyond this.
const MAX_PARTIALS: usize = 32;

/// A rule fired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub rule: String,
    pub severity: Severity,
    pub description: String,
    pub task: String,
    /// The process, for `by: process` rules.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u64>,
    /// `seq` of the records that made it fire, in order.
    pub seqs: Vec<u64>,
    /// `time` of the record that completed it.
    pub time: String,
}

type Key = (String, u64);

struct Partial {
    step: usize,
    start_ns: i128,
    seqs: Vec<u64>,
}

#[derive(Default)]
struct RuleState {
    partials: BTreeMap<Key, Vec<Partial>>,
    hits: BTreeMap<Key, VecDeque<(i128, u64)>>,
}

/// Parses an RFC 3339 time into nanoseconds since the epoch (0 when absent or invalid).
fn time_ns(t: Option<&str>) -> i128 {
    t.and_then(|t| time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok())
        .map_or(0, |t| t.unix_timestamp_nanos())
}

/// Whether one step's condition held for one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    No,
    Yes,
    /// The expression did not evaluate to a boolean (counted, treated as no match).
    Error,
    /// Not evaluated ahead ([`Evaluator::outcomes`]): a later step of a sequence, which the
    /// rule state asks for only while a sequence is under way for the record's key. The engine
    /// evaluates it then ([`Engine::observe_with`]).
    Deferred,
}

/// Binds a record's fields to CEL names when an expression reads them.
struct Resolver<'r>(&'r dyn RecordView);

impl cel::context::VariableResolver for Resolver<'_> {
    fn resolve<'b>(&'b self, name: &str) -> Option<CowVal<'b, 'b>> {
        if STRING_FIELDS.contains(&name) {
            return Some(CowVal::owned(CelString::from(self.0.str_field(name).unwrap_or(""))));
        }
        if INT_FIELDS.contains(&name) {
            return Some(CowVal::owned(CelInt::from(self.0.int_field(name).unwrap_or(0))));
        }
        let value = match name {
            "ancestry" => cel::Value::from(self.0.ancestry()),
            "event" => cel::to_value(self.0.json()).ok()?,
            _ => return None,
        };
        let boxed: Box<dyn Val> = value.try_into().ok()?;
        Some(CowVal::Owned(boxed))
    }
}

/// Runs rule conditions over records. One per thread (the CEL context is not shared).
pub struct Evaluator<'a> {
    set: &'a RuleSet,
    /// The lists, bound once.
    root: cel::Context<'static, 'static>,
    /// Rule `i`'s steps are global steps `first[i]..first[i] + steps`.
    first: Vec<usize>,
    /// (rule, step) of each global step.
    steps: Vec<(usize, usize)>,
    /// Global steps left to the engine by [`Evaluator::outcomes`]: the later steps of sequences.
    deferred: Vec<bool>,
    /// Per record kind: which global steps can match it at all (at most [`MAX_KINDS`] kinds;
    /// others are computed each time into `scratch`, so odd input cannot grow it).
    by_kind: Vec<(String, Vec<bool>)>,
    /// The entry of `by_kind` used last (records of one kind come in runs).
    last: usize,
    scratch: Vec<bool>,
    /// Tests: run every step's CEL on every record (no index, no needs), as before both existed.
    #[cfg(test)]
    unindexed: bool,
}

/// Record kinds whose candidate steps are remembered (Warden writes about twenty).
const MAX_KINDS: usize = 64;

impl<'a> Evaluator<'a> {
    pub fn new(set: &'a RuleSet) -> Self {
        let mut root = cel::Context::default();
        for (name, items) in &set.lists {
            if let Ok(v) = cel::to_value(items) {
                root.add_variable_from_value(name.as_str(), v);
            }
        }
        set.regexes.bind(&mut root);
        let mut first = Vec::new();
        let mut steps = Vec::new();
        for (i, r) in set.rules.iter().enumerate() {
            first.push(steps.len());
            steps.extend((0..r.steps.len()).map(|s| (i, s)));
        }
        let deferred = steps.iter().map(|&(r, s)| set.rules[r].sequence && s > 0).collect();
        Self {
            set,
            root,
            first,
            steps,
            deferred,
            by_kind: Vec::new(),
            last: 0,
            scratch: Vec::new(),
            #[cfg(test)]
            unindexed: false,
        }
    }

    /// How many steps all rules have together.
    pub fn step_count(&self) -> usize {
        self.steps.len()
    }

    /// The global index of rule `rule`'s step `step`.
    pub fn step_id(&self, rule: usize, step: usize) -> usize {
        self.first[rule] + step
    }

    /// Which steps can match a record of `kind` (computed once per kind).
    fn candidates(&mut self, kind: &str) -> &[bool] {
        let known = match self.by_kind.get(self.last) {
            Some((k, _)) if k == kind => Some(self.last),
            _ => self.by_kind.iter().position(|(k, _)| k == kind),
        };
        if let Some(i) = known {
            self.last = i;
            return &self.by_kind[i].1;
        }
        let mask: Vec<bool> = self
            .steps
            .iter()
            .map(|&(r, s)| {
                self.set.rules[r].needs[s].of("kind").is_none_or(|lits| {
                    lits.iter().any(|l| matches!(l, super::needs::Lit::Str(k) if k == kind))
                })
            })
            .collect();
        if self.by_kind.len() >= MAX_KINDS {
            self.scratch = mask;
            return &self.scratch;
        }
        self.by_kind.push((kind.to_string(), mask));
        self.last = self.by_kind.len() - 1;
        &self.by_kind[self.last].1
    }

    /// Whether global step `id` holds for `rec`.
    pub fn outcome(&mut self, rec: &dyn RecordView, id: usize) -> Outcome {
        let kind = rec.str_field("kind").unwrap_or("");
        #[cfg(test)]
        if self.unindexed {
            return self.run_cel(rec, id);
        }
        if !self.candidates(kind)[id] {
            return Outcome::No;
        }
        self.outcome_unindexed(rec, id)
    }

    /// [`Evaluator::outcome`] for a step already known to be a candidate for the record's kind.
    fn outcome_unindexed(&self, rec: &dyn RecordView, id: usize) -> Outcome {
        #[cfg(test)]
        if self.unindexed {
            return self.run_cel(rec, id);
        }
        let (r, s) = self.steps[id];
        let rule = &self.set.rules[r];
        for (field, lits) in &rule.needs[s].0 {
            let ok = lits.iter().any(|l| match l {
                super::needs::Lit::Str(v) => rec.str_field(field).unwrap_or("") == v,
                super::needs::Lit::Int(v) => rec.int_field(field).unwrap_or(0) == *v,
            });
            if !ok {
                return Outcome::No;
            }
        }
        self.run_cel(rec, id)
    }

    /// The step's CEL program over `rec`.
    fn run_cel(&self, rec: &dyn RecordView, id: usize) -> Outcome {
        let (r, s) = self.steps[id];
        let rule = &self.set.rules[r];
        let resolver = Resolver(rec);
        let mut ctx = self.root.new_inner_scope();
        ctx.set_variable_resolver(&resolver);
        match cel::Value::resolve_val(&rule.exprs[s], &ctx) {
            Ok(v) => match v.downcast_ref::<cel::common::types::CelBool>() {
                Some(b) if *b.inner() => Outcome::Yes,
                Some(_) => Outcome::No,
                None => Outcome::Error,
            },
            Err(_) => Outcome::Error,
        }
    }

    /// Every step's outcome for `rec` (for evaluation ahead of the engine, e.g. on other threads),
    /// [`Outcome::Deferred`] for later sequence steps that could match it: the rule state asks
    /// for those only while a sequence is under way (rarely), so evaluating them for every
    /// record would be wasted (the starter pack's `egress` step on every connect).
    pub fn outcomes(&mut self, rec: &dyn RecordView, out: &mut Vec<Outcome>) {
        out.clear();
        let kind = rec.str_field("kind").unwrap_or("");
        if matches!(kind, "finding" | "checkpoint") {
            out.resize(self.steps.len(), Outcome::No);
            return;
        }
        // The kind's mask, borrowed out of `self` for the loop (no copy per record).
        self.candidates(kind);
        let remembered = self.by_kind.get(self.last).is_some_and(|(k, _)| k == kind);
        let mask = if remembered {
            std::mem::take(&mut self.by_kind[self.last].1)
        } else {
            std::mem::take(&mut self.scratch)
        };
        out.extend(mask.iter().enumerate().map(|(id, &candidate)| {
            if !candidate {
                Outcome::No
            } else if self.deferred[id] {
                Outcome::Deferred
            } else {
                self.outcome_unindexed(rec, id)
            }
        }));
        if remembered {
            self.by_kind[self.last].1 = mask;
        } else {
            self.scratch = mask;
        }
    }
}

/// Evaluates a rule set over a stream of records.
pub struct Engine<'a> {
    eval: Evaluator<'a>,
    machines: Machines<'a>,
    /// Outcomes of the record being observed, filled as asked for.
    memo: Vec<Option<Outcome>>,
    /// Expressions that did not evaluate to a boolean (counted, treated as no match).
    pub eval_errors: u64,
}

/// The rules' state, apart from the evaluator that answers for their steps.
struct Machines<'a> {
    set: &'a RuleSet,
    /// Global id of each rule's first step.
    first: Vec<usize>,
    state: Vec<RuleState>,
    /// Evaluate only this rule (rule tests).
    only: Option<usize>,
}

impl<'a> Engine<'a> {
    pub fn new(set: &'a RuleSet) -> Self {
        let eval = Evaluator::new(set);
        let machines = Machines {
            set,
            first: eval.first.clone(),
            state: set.rules.iter().map(|_| RuleState::default()).collect(),
            only: None,
        };
        Self { memo: vec![None; eval.step_count()], eval, machines, eval_errors: 0 }
    }

    /// An engine that evaluates only rule `index` of `set`.
    pub fn for_rule(set: &'a RuleSet, index: usize) -> Self {
        let mut e = Self::new(set);
        e.machines.only = Some(index);
        e
    }

    /// Feeds one record given as a JSON tree (rule examples, OCSF replay).
    pub fn observe(&mut self, rec: &Value) -> Vec<Finding> {
        self.observe_view(rec)
    }

    /// Feeds one record; returns the findings it completes. Records Warden writes about its
    /// own evidence (`finding`, `checkpoint`) are not events and are skipped, so live and
    /// replayed evaluation see the same stream.
    pub fn observe_view(&mut self, rec: &dyn RecordView) -> Vec<Finding> {
        if self.machines.set.rules.is_empty() {
            return Vec::new();
        }
        let kind = rec.str_field("kind").unwrap_or("");
        if matches!(kind, "finding" | "checkpoint") {
            return Vec::new();
        }
        // Steps that cannot match this kind are answered before anything is asked.
        let mask = self.eval.candidates(kind);
        for (m, &candidate) in self.memo.iter_mut().zip(mask) {
            *m = if candidate { None } else { Some(Outcome::No) };
        }
        #[cfg(test)]
        if self.eval.unindexed {
            self.memo.iter_mut().for_each(|m| *m = None);
        }
        let mut memo = std::mem::take(&mut self.memo);
        let eval = &self.eval;
        let out = self.machines.run(rec, &mut self.eval_errors, &mut |id| {
            *memo[id].get_or_insert_with(|| eval.outcome_unindexed(rec, id))
        });
        self.memo = memo;
        out
    }

    /// Feeds one record whose step outcomes were computed already ([`Evaluator::outcomes`],
    /// by an evaluator of the same rule set); [`Outcome::Deferred`] steps are evaluated here if
    /// the rule state asks for them.
    pub fn observe_with(&mut self, rec: &dyn RecordView, outcomes: &[Outcome]) -> Vec<Finding> {
        // No rules (replay for OCSF output or re-judging only): nothing to read.
        if self.machines.set.rules.is_empty() {
            return Vec::new();
        }
        if matches!(rec.str_field("kind"), Some("finding" | "checkpoint")) {
            return Vec::new();
        }
        let eval = &self.eval;
        self.machines.run(rec, &mut self.eval_errors, &mut |id| match outcomes[id] {
            Outcome::Deferred => eval.outcome_unindexed(rec, id),
            known => known,
        })
    }
}

impl Machines<'_> {
    /// The rules' state machines over one record; `outcome` answers for global step ids.
    fn run(
        &mut self,
        rec: &dyn RecordView,
        eval_errors: &mut u64,
        outcome: &mut dyn FnMut(usize) -> Outcome,
    ) -> Vec<Finding> {
        let mut errors = 0u64;
        let mut consult = |id: usize| match outcome(id) {
            Outcome::Yes => true,
            // Answered by the caller's `outcome` (see `Engine::observe_with`); never left here.
            Outcome::No | Outcome::Deferred => false,
            Outcome::Error => {
                errors += 1;
                false
            }
        };
        let mut ns_cache: Option<i128> = None;
        let mut ns = || *ns_cache.get_or_insert_with(|| time_ns(rec.str_field("time")));
        let seq = rec.u64_field("seq").unwrap_or(0);
        let task = rec.str_field("task").unwrap_or("");
        let pid = rec.u64_field("pid").unwrap_or(0);
        let mut out = Vec::new();
        for i in 0..self.set.rules.len() {
            if self.only.is_some_and(|o| o != i) {
                continue;
            }
            let rule: &Rule = &self.set.rules[i];
            let first = self.first[i];
            let key = || -> Key {
                match rule.by {
                    By::Task => (task.to_string(), 0),
                    By::Process => (task.to_string(), pid),
                }
            };
            let finding = |seqs: Vec<u64>| Finding {
                rule: rule.id.clone(),
                severity: rule.severity,
                description: rule.description.clone(),
                task: task.to_string(),
                pid: (rule.by == By::Process).then_some(pid),
                seqs,
                time: rec.str_field("time").unwrap_or("").to_string(),
            };
            let within = rule.within.map(|w| w.as_nanos() as i128);
            let state = &mut self.state[i];
            if rule.sequence {
                if state.partials.is_empty() {
                    // Nothing under way for any key: only the first step can matter.
                    if consult(first) {
                        state
                            .partials
                            .insert(key(), vec![Partial { step: 1, start_ns: ns(), seqs: vec![seq] }]);
                    }
                    continue;
                }
                // Advance existing partials first, so one record never fills two steps.
                let key = key();
                let mut partials = state.partials.remove(&key).unwrap_or_default();
                if let Some(w) = within
                    && !partials.is_empty()
                {
                    let now = ns();
                    partials.retain(|p| now - p.start_ns <= w);
                }
                let mut completed = None;
                for p in partials.iter_mut() {
                    if consult(first + p.step) {
                        p.step += 1;
                        p.seqs.push(seq);
                        if p.step == rule.steps.len() {
                            completed = Some(p.seqs.clone());
                            break;
                        }
                    }
                }
                if let Some(seqs) = completed {
                    out.push(finding(seqs));
                    partials.clear();
                } else if consult(first) {
                    if partials.len() >= MAX_PARTIALS {
                        partials.remove(0);
                    }
                    partials.push(Partial { step: 1, start_ns: ns(), seqs: vec![seq] });
                }
                if !partials.is_empty() {
                    state.partials.insert(key, partials);
                }
            } else if consult(first) {
                if rule.count <= 1 {
                    out.push(finding(vec![seq]));
                    continue;
                }
                let now = ns();
                let hits = state.hits.entry(key()).or_default();
                hits.push_back((now, seq));
                if let Some(w) = within {
                    while hits.front().is_some_and(|(t, _)| now - t > w) {
                        hits.pop_front();
                    }
                }
                while hits.len() > rule.count as usize {
                    hits.pop_front();
                }
                if hits.len() >= rule.count as usize {
                    let seqs = hits.iter().map(|(_, s)| *s).collect();
                    hits.clear();
                    out.push(finding(seqs));
                }
            }
        }
        *eval_errors += errors;
        out
    }
}

/// Fills what example events leave out: task, increasing seq, and a time one second apart
/// unless given.
pub fn complete_example(events: &[Value]) -> Vec<Value> {
    events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let mut e = e.clone();
            if let Value::Object(m) = &mut e {
                m.entry("task").or_insert_with(|| Value::from("example"));
                m.entry("seq").or_insert_with(|| Value::from(i as u64 + 1));
                m.entry("time")
                    .or_insert_with(|| Value::from(format!("2026-01-01T00:00:{:02}.000000000Z", i % 60)));
                m.entry("v").or_insert_with(|| Value::from(2));
            }
            e
        })
        .collect()
}

/// Result of one rule's examples.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleTestResult {
    pub rule: String,
    pub passed: usize,
    /// What went wrong, one line each.
    pub failures: Vec<String>,
}

/// Runs every rule's `tests.fire` and `tests.quiet` example streams.
pub fn test_rules(set: &RuleSet) -> Vec<RuleTestResult> {
    let mut results = Vec::new();
    for (idx, rule) in set.rules.iter().enumerate() {
        let mut r = RuleTestResult { rule: rule.id.clone(), passed: 0, failures: Vec::new() };
        if rule.tests.fire.is_empty() {
            r.failures
                .push("no `tests.fire` example: every rule ships at least one stream it must fire on".into());
        }
        for (kind, streams, want) in [("fire", &rule.tests.fire, true), ("quiet", &rule.tests.quiet, false)] {
            for (n, stream) in streams.iter().enumerate() {
                let mut engine = Engine::for_rule(set, idx);
                let fired = complete_example(stream).iter().any(|e| !engine.observe(e).is_empty());
                if fired == want {
                    r.passed += 1;
                } else {
                    r.failures.push(format!(
                        "tests.{kind}[{n}]: {}",
                        if want { "did not fire" } else { "fired but must stay quiet" }
                    ));
                }
                if engine.eval_errors > 0 {
                    r.failures.push(format!(
                        "tests.{kind}[{n}]: {} expression(s) did not evaluate to a boolean",
                        engine.eval_errors
                    ));
                }
            }
        }
        results.push(r);
    }
    results
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::Path;

    fn set(yaml: &str) -> RuleSet {
        let mut s = RuleSet::empty();
        s.add(yaml, Path::new("r.yaml")).unwrap();
        s
    }

    const SEQ: &str = r#"
- id: secret-then-egress
  description: a process read a secret and later connected outside the scope
  severity: high
  sequence:
    - match: kind == "open" && path.startsWith("/run/secrets/")
    - match: kind == "connect" && decision == "allow"
  within: 60s
  by: task
"#;

    fn ev(seq: u64, secs: u64, kind: &str, extra: Value) -> Value {
        let mut v = json!({"v": 2, "seq": seq, "task": "t", "kind": kind, "time": format!("2026-01-01T00:{:02}:{:02}Z", secs / 60, secs % 60)});
        if let (Value::Object(m), Value::Object(x)) = (&mut v, extra) {
            m.extend(x);
        }
        v
    }

    #[test]
    fn sequences_fire_in_order_within_the_window() {
        let s = set(SEQ);
        let mut e = Engine::new(&s);
        assert!(e.observe(&ev(1, 0, "connect", json!({"decision": "allow"}))).is_empty(), "order matters");
        assert!(e.observe(&ev(2, 1, "open", json!({"path": "/run/secrets/gh"}))).is_empty());
        let f = e.observe(&ev(3, 5, "connect", json!({"decision": "allow"})));
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].seqs, vec![2, 3]);
        assert_eq!(f[0].severity, Severity::High);
        // Too late: the window is 60 s.
        let mut e = Engine::new(&s);
        e.observe(&ev(1, 0, "open", json!({"path": "/run/secrets/gh"})));
        assert!(e.observe(&ev(2, 61, "connect", json!({"decision": "allow"}))).is_empty());
        assert_eq!(e.eval_errors, 0);
    }

    /// Evaluated ahead, a sequence's later steps are left to the engine, which evaluates them
    /// only while a sequence is under way, with the same findings.
    #[test]
    fn later_sequence_steps_are_left_to_the_engine() {
        let s = set(SEQ);
        let mut evaluator = Evaluator::new(&s);
        let mut engine = Engine::new(&s);
        let mut out = Vec::new();
        let open = ev(1, 0, "open", json!({"path": "/run/secrets/gh"}));
        evaluator.outcomes(&open, &mut out);
        assert_eq!(out, [Outcome::Yes, Outcome::No]);
        assert!(engine.observe_with(&open, &out).is_empty());
        let connect = ev(2, 5, "connect", json!({"decision": "allow"}));
        evaluator.outcomes(&connect, &mut out);
        assert_eq!(out, [Outcome::No, Outcome::Deferred]);
        let f = engine.observe_with(&connect, &out);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].seqs, vec![1, 2]);
        assert_eq!(engine.eval_errors, 0);
    }

    #[test]
    fn counts_lists_and_macros() {
        let s = set(r#"
lists:
  shells: ["/usr/bin/sh", "/usr/bin/bash"]
macros:
  denied: decision == "deny"
  shell_spawn: kind == "exec" && path in shells
rules:
  - id: burst
    description: many denials
    severity: medium
    match: denied
    count: 3
    within: 10s
  - id: shell
    description: a shell was started
    severity: low
    match: shell_spawn
"#);
        let mut e = Engine::new(&s);
        let mut fired = Vec::new();
        for i in 0..3 {
            fired.extend(e.observe(&ev(i + 1, i, "connect", json!({"decision": "deny"}))));
        }
        assert_eq!(fired.iter().map(|f| f.rule.as_str()).collect::<Vec<_>>(), ["burst"]);
        assert_eq!(fired[0].seqs, vec![1, 2, 3]);
        let f = e.observe(&ev(4, 4, "exec", json!({"path": "/usr/bin/bash"})));
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].rule, "shell");
    }

    #[test]
    fn loading_errors_name_file_rule_and_fix() {
        let mut s = RuleSet::empty();
        let e = s
            .add(
                "- id: x\n  description: d\n  severity: high\n  match: kidn == \"exec\"\n",
                Path::new("r.yaml"),
            )
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "r.yaml: rule x: match: unknown name `kidn`; event fields are listed in docs/rules.md"
        );
        let e = s
            .add("- id: x\n  description: d\n  severity: urgent\n  match: 'true'\n", Path::new("r.yaml"))
            .unwrap_err();
        assert!(e.to_string().starts_with("r.yaml:"), "{e}");
        let e = s
            .add("- id: x\n  description: d\n  severity: high\n  match: kind ==\n", Path::new("r.yaml"))
            .unwrap_err();
        assert!(e.to_string().starts_with("r.yaml: rule x: match:"), "{e}");
        let e = s
            .add("- id: x\n  description: d\n  severity: high\n  sequence:\n    - match: 'true'\n    - match: 'true'\n", Path::new("r.yaml"))
            .unwrap_err();
        assert!(e.to_string().contains("within"), "{e}");
        s.add("- id: x\n  description: d\n  severity: high\n  match: 'true'\n", Path::new("a.yaml")).unwrap();
        let e = s
            .add("- id: x\n  description: d\n  severity: high\n  match: 'true'\n", Path::new("b.yaml"))
            .unwrap_err();
        assert!(e.to_string().contains("duplicate"), "{e}");
    }

    #[test]
    fn rule_examples_are_checked() {
        let s = set(r#"
- id: env
  description: environ read
  severity: high
  match: kind == "open" && path.endsWith("/environ")
  tests:
    fire:
      - [{kind: open, path: /proc/1/environ}]
    quiet:
      - [{kind: open, path: /proc/1/status}]
      - [{kind: open, path: /proc/1/environ}]
"#);
        let r = test_rules(&s);
        assert_eq!(r[0].passed, 2);
        assert_eq!(r[0].failures, vec!["tests.quiet[1]: fired but must stay quiet".to_string()]);
    }
}

#[cfg(test)]
mod equivalence {
    use super::*;
    use crate::rules::view::ReplayRecord;
    use proptest::prelude::*;

    /// The starter pack plus rules that fail to evaluate, read `event` and `ancestry`, and
    /// constrain integers.
    fn rules() -> RuleSet {
        let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../rules/starter"));
        let mut set = RuleSet::load_dir(dir).unwrap();
        set.add(
            r#"
- id: bad-regex
  description: fails on every open (a pattern built at run time, so the builtin's error)
  severity: low
  match: kind == "open" && path.matches(comm + "[")
- id: environ-or-deny
  description: a literal pattern (compiled at load) under an or
  severity: low
  match: path.matches("^/proc/[0-9]+/environ$") || (decision == "deny" && matches(path, "^/usr/bin/(sh|curl)$"))
- id: whole-event
  description: reads event
  severity: low
  match: event.kind == "exec" && has(event.path)
- id: ancestry-one
  description: reads ancestry
  severity: low
  match: decision == "deny" && 1 in ancestry
- id: port-or-deny
  description: ints and an or
  severity: low
  sequence:
    - match: port == 53 || decision == "deny"
    - match: kind in ["exit", "fork"] && pid == 2
  within: 20s
  by: process
"#,
            std::path::Path::new("extra.yaml"),
        )
        .unwrap();
        set
    }

    fn record() -> impl Strategy<Value = (usize, usize, usize, usize, usize, usize, usize, u64)> {
        (0..10usize, 0..4usize, 0..6usize, 0..3usize, 0..3usize, 0..2usize, 0..4usize, 0..40u64)
    }

    fn build(i: usize, t: &mut u64, r: (usize, usize, usize, usize, usize, usize, usize, u64)) -> Value {
        let (kind, decision, path, port, addr, task, pid, dt) = r;
        let kinds =
            ["exec", "open", "connect", "sendmsg", "ptrace", "fork", "exit", "finding", "checkpoint", "x"];
        let paths = [
            "/usr/bin/python3",
            "/usr/bin/sh",
            "/run/secrets/k",
            "/proc/1/environ",
            "/tmp/a",
            "/usr/bin/curl",
        ];
        // Mostly forward in time, sometimes back a little (records of several CPUs).
        *t = if dt < 3 { t.saturating_sub(dt) } else { *t + dt / 4 };
        let (task, kind, path) = (["a", "b"][task], kinds[kind], paths[path]);
        let time = format!("2026-01-01T{:02}:{:02}:{:02}Z", *t / 3600 % 24, *t / 60 % 60, *t % 60);
        let mut v = serde_json::json!({
            "v": 2, "seq": i as u64 + 1, "task": task, "kind": kind, "time": time, "pid": pid, "path": path,
        });
        let m = v.as_object_mut().unwrap();
        if decision < 3 {
            m.insert("decision".into(), ["allow", "deny", "audit"][decision].into());
        }
        if decision == 1 {
            m.insert("ancestry".into(), serde_json::json!([pid, 1]));
        }
        if port < 2 {
            m.insert("port".into(), [53, 443][port].into());
        }
        if addr < 2 {
            m.insert("addr".into(), ["8.8.8.8", "127.0.0.53"][addr].into());
        }
        v
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// The indexed, lazily bound engine gives the findings and evaluation-error counts of
        /// running every step's CEL on every record, whether records are JSON trees, typed
        /// replay records, or evaluated ahead by another evaluator.
        #[test]
        fn index_and_views_change_nothing(recs in proptest::collection::vec(record(), 1..200)) {
            let set = rules();
            let mut t = 0;
            let stream: Vec<Value> = recs.into_iter().enumerate().map(|(i, r)| build(i, &mut t, r)).collect();
            let lines: Vec<String> = stream.iter().map(|v| v.to_string()).collect();
            let mut reference = Engine::new(&set);
            reference.eval.unindexed = true;
            let mut indexed = Engine::new(&set);
            let mut typed = Engine::new(&set);
            let mut ahead = Engine::new(&set);
            let mut ev = Evaluator::new(&set);
            let mut outcomes = Vec::new();
            let mut all = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
            for (v, line) in stream.iter().zip(&lines) {
                all[0].extend(reference.observe(v));
                all[1].extend(indexed.observe(v));
                let r = ReplayRecord::parse(line).unwrap();
                all[2].extend(typed.observe_view(&r));
                ev.outcomes(&r, &mut outcomes);
                all[3].extend(ahead.observe_with(&r, &outcomes));
            }
            // `event` reads the whole line: typed replay records are only used without it, so
            // the typed engines are compared on the other rules.
            let without_event = |f: &Vec<Finding>| f.iter().filter(|f| f.rule != "whole-event").cloned().collect::<Vec<_>>();
            prop_assert_eq!(&all[0], &all[1]);
            prop_assert_eq!(without_event(&all[0]), without_event(&all[2]));
            prop_assert_eq!(without_event(&all[0]), without_event(&all[3]));
            prop_assert_eq!(reference.eval_errors, indexed.eval_errors);
            prop_assert_eq!(reference.eval_errors, typed.eval_errors);
            prop_assert_eq!(reference.eval_errors, ahead.eval_errors);
        }
    }
}

#[cfg(test)]
mod starter_pack {
    use super::*;

    /// The shipped starter pack loads and every rule passes its own examples.
    #[test]
    fn starter_pack_passes_its_examples() {
        let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../rules/starter"));
        let set = RuleSet::load_dir(dir).expect("starter pack loads");
        assert!(set.rules.len() >= 6);
        for r in test_rules(&set) {
            assert!(r.failures.is_empty(), "{}: {:?}", r.rule, r.failures);
            assert!(r.passed >= 2, "{} ships fire and quiet examples", r.rule);
        }
    }
}
