//! Rule evaluation over audit records, in input order: the same input gives byte-identical
//! findings. State is kept per rule and per key (task, or task + pid), bounded.
use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;
use serde_json::Value;

use super::{By, INT_FIELDS, Rule, RuleSet, STRING_FIELDS, Severity};

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

/// Evaluates a rule set over a stream of records.
pub struct Engine<'a> {
    set: &'a RuleSet,
    state: Vec<RuleState>,
    /// Evaluate only this rule (rule tests).
    only: Option<usize>,
    /// Expressions that did not evaluate to a boolean (counted, treated as no match).
    pub eval_errors: u64,
}

/// Parses an RFC 3339 time into nanoseconds since the epoch (0 when absent or invalid).
fn time_ns(rec: &Value) -> i128 {
    rec["time"]
        .as_str()
        .and_then(|t| time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok())
        .map_or(0, |t| t.unix_timestamp_nanos())
}

/// The CEL context for one record: every documented field bound (defaults when absent), the
/// whole record as `event`, and the rule set's lists.
fn context(rec: &Value, lists: &BTreeMap<String, Value>) -> cel::Context<'static, 'static> {
    let mut ctx = cel::Context::default();
    for f in STRING_FIELDS {
        let v = rec.get(*f).and_then(Value::as_str).unwrap_or("").to_string();
        ctx.add_variable_from_value(*f, v);
    }
    for f in INT_FIELDS {
        let v = rec.get(*f).and_then(Value::as_i64).unwrap_or(0);
        ctx.add_variable_from_value(*f, v);
    }
    let ancestry: Vec<i64> = rec
        .get("ancestry")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_i64).collect())
        .unwrap_or_default();
    ctx.add_variable_from_value("ancestry", ancestry);
    if let Ok(v) = cel::to_value(rec) {
        ctx.add_variable_from_value("event", v);
    }
    for (name, items) in lists {
        if let Ok(v) = cel::to_value(items) {
            ctx.add_variable_from_value(name.as_str(), v);
        }
    }
    ctx
}

impl<'a> Engine<'a> {
    pub fn new(set: &'a RuleSet) -> Self {
        Self {
            set,
            state: set.rules.iter().map(|_| RuleState::default()).collect(),
            only: None,
            eval_errors: 0,
        }
    }

    /// An engine that evaluates only rule `index` of `set`.
    pub fn for_rule(set: &'a RuleSet, index: usize) -> Self {
        Self { only: Some(index), ..Self::new(set) }
    }

    fn matches(&mut self, prog: &cel::Program, ctx: &cel::Context<'_, '_>) -> bool {
        match prog.execute(ctx) {
            Ok(cel::Value::Bool(b)) => b,
            _ => {
                self.eval_errors += 1;
                false
            }
        }
    }

    /// Feeds one record; returns the findings it completes. Records Warden writes about its
    /// own evidence (`finding`, `checkpoint`) are not events and are skipped, so live and
    /// replayed evaluation see the same stream.
    pub fn observe(&mut self, rec: &Value) -> Vec<Finding> {
        if matches!(rec["kind"].as_str(), Some("finding" | "checkpoint")) {
            return Vec::new();
        }
        let ctx = context(rec, &self.set.lists);
        let ns = time_ns(rec);
        let seq = rec["seq"].as_u64().unwrap_or(0);
        let task = rec["task"].as_str().unwrap_or("").to_string();
        let pid = rec["pid"].as_u64().unwrap_or(0);
        let mut out = Vec::new();
        for i in 0..self.set.rules.len() {
            if self.only.is_some_and(|o| o != i) {
                continue;
            }
            let rule: &Rule = &self.set.rules[i];
            let key: Key = match rule.by {
                By::Task => (task.clone(), 0),
                By::Process => (task.clone(), pid),
            };
            let finding = |seqs: Vec<u64>| Finding {
                rule: rule.id.clone(),
                severity: rule.severity,
                description: rule.description.clone(),
                task: task.clone(),
                pid: (rule.by == By::Process).then_some(pid),
                seqs,
                time: rec["time"].as_str().unwrap_or("").to_string(),
            };
            let within = rule.within.map(|w| w.as_nanos() as i128);
            if rule.sequence {
                // Advance existing partials first, so one record never fills two steps.
                let mut partials = self.state[i].partials.remove(&key).unwrap_or_default();
                if let Some(w) = within {
                    partials.retain(|p| ns - p.start_ns <= w);
                }
                let mut completed = None;
                for p in partials.iter_mut() {
                    if self.matches(&rule.steps[p.step], &ctx) {
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
                } else if self.matches(&rule.steps[0], &ctx) {
                    if partials.len() >= MAX_PARTIALS {
                        partials.remove(0);
                    }
                    partials.push(Partial { step: 1, start_ns: ns, seqs: vec![seq] });
                }
                if !partials.is_empty() {
                    self.state[i].partials.insert(key, partials);
                }
            } else if self.matches(&rule.steps[0], &ctx) {
                if rule.count <= 1 {
                    out.push(finding(vec![seq]));
                    continue;
                }
                let hits = self.state[i].hits.entry(key).or_default();
                hits.push_back((ns, seq));
                if let Some(w) = within {
                    while hits.front().is_some_and(|(t, _)| ns - t > w) {
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
        let mut s = RuleSet { rules: Vec::new(), lists: BTreeMap::new() };
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
        let mut s = RuleSet { rules: Vec::new(), lists: BTreeMap::new() };
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
