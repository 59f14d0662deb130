//! `warden replay --call ID`: the records of one call and of the calls under it, with their
//! task's `task_start` and `task_end` as context.
//!
//! One pass in log order, as replay reads: a call's `call_start` names its `parent` (the task,
//! or the call that started it) and comes before anything of the call, so the calls under
//! the selected one are known by the time their records arrive. A record belongs to a call
//! by its `call` field (the kernel's attribution, from the call's cgroup), never by what a
//! process said. The task's `task_start` comes before any of its calls: it is held (one line
//! per task still running, dropped at its `task_end`) and handed back when the task's first
//! selected record arrives, so the output is still in log order for the task.
use std::collections::{HashMap, HashSet};

use crate::rules::view::RecordView;

/// What to do with one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Take {
    /// Not part of the call.
    Skip,
    /// Part of the call (or its task's `task_end`).
    Keep,
    /// Part of the call, the first of its task: replay this held `task_start` line first.
    KeepAfter(String),
}

/// Selects the records of one call and its descendant calls.
#[derive(Debug)]
pub struct CallFilter {
    root: String,
    /// The root call and every call found under it.
    calls: HashSet<String>,
    /// Tasks the selected calls run in (their `task_start`/`task_end` are context).
    tasks: HashSet<String>,
    /// Task → its `task_start` line, until a selected call of the task shows up or it ends.
    held: HashMap<String, String>,
    /// Records of the selected calls.
    pub matched: u64,
    /// `task_start`/`task_end` records kept as context.
    pub context: u64,
    /// Calls found under the root (any depth).
    pub descendants: u64,
}

impl CallFilter {
    pub fn new(root: &str) -> Self {
        CallFilter {
            root: root.to_string(),
            calls: HashSet::from([root.to_string()]),
            tasks: HashSet::new(),
            held: HashMap::new(),
            matched: 0,
            context: 0,
            descendants: 0,
        }
    }

    /// The call asked for.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// Judges the next record of the log; `line` gives its text (asked for only to hold a
    /// `task_start`). A held line handed back ([`Take::KeepAfter`]) is to be fed here again,
    /// before the record that released it: it is kept then (and counted as context).
    pub fn take(&mut self, rec: &dyn RecordView, line: impl FnOnce() -> String) -> Take {
        let kind = rec.str_field("kind").unwrap_or("");
        let task = rec.str_field("task").unwrap_or("");
        match kind {
            "task_start" => {
                if self.tasks.contains(task) {
                    self.context += 1;
                    return Take::Keep;
                }
                self.held.insert(task.to_string(), line());
                return Take::Skip;
            }
            "task_end" => {
                self.held.remove(task);
                if self.tasks.contains(task) {
                    self.context += 1;
                    return Take::Keep;
                }
                return Take::Skip;
            }
            _ => {}
        }
        let Some(call) = rec.str_field("call") else { return Take::Skip };
        if kind == "call_start"
            && call != self.root
            && rec.str_field("parent").is_some_and(|p| self.calls.contains(p))
            && self.calls.insert(call.to_string())
        {
            self.descendants += 1;
        }
        if !self.calls.contains(call) {
            return Take::Skip;
        }
        self.matched += 1;
        if self.tasks.insert(task.to_string())
            && let Some(start) = self.held.remove(task)
        {
            // Counted as context when it is handed back (then it is a task_start of a
            // selected task: kept).
            return Take::KeepAfter(start);
        }
        Take::Keep
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;

    fn run(f: &mut CallFilter, log: &[Value]) -> Vec<Value> {
        let mut out = Vec::new();
        for r in log {
            match f.take(r, || r.to_string()) {
                Take::Skip => {}
                Take::Keep => out.push(r.clone()),
                Take::KeepAfter(l) => {
                    // Replay feeds the held line back through the filter, as here.
                    let start: Value = serde_json::from_str(&l).unwrap();
                    assert_eq!(f.take(&start, || unreachable!()), Take::Keep);
                    out.push(start);
                    out.push(r.clone());
                }
            }
        }
        out
    }

    fn seqs(v: &[Value]) -> Vec<u64> {
        v.iter().map(|r| r["seq"].as_u64().unwrap()).collect()
    }

    /// Two tasks; in `t1` a call `a` with a sub-call `a/b` (and `a/b/c` under it), a sibling
    /// call `d`; in `t2` a call with the same name. Only `a`'s tree and t1's start/end come out.
    #[test]
    fn keeps_the_call_its_descendants_and_the_task_context() {
        let log = vec![
            json!({"seq":1,"task":"t1","kind":"task_start"}),
            json!({"seq":2,"task":"t2","kind":"task_start"}),
            json!({"seq":3,"task":"t1","kind":"exec","pid":10}),
            json!({"seq":4,"task":"t1","kind":"call_start","call":"t1/a","call_name":"fetch","parent":"t1"}),
            json!({"seq":5,"task":"t1","kind":"exec","call":"t1/a","pid":11}),
            json!({"seq":6,"task":"t1","kind":"call_start","call":"t1/d","parent":"t1"}),
            json!({"seq":7,"task":"t1","kind":"call_start","call":"t1/a/b","parent":"t1/a"}),
            json!({"seq":8,"task":"t1","kind":"connect","call":"t1/a/b","decision":"deny"}),
            json!({"seq":9,"task":"t1","kind":"exec","call":"t1/d"}),
            json!({"seq":10,"task":"t1","kind":"call_start","call":"t1/a/b/c","parent":"t1/a/b"}),
            json!({"seq":11,"task":"t1","kind":"exit","call":"t1/a/b/c"}),
            json!({"seq":12,"task":"t2","kind":"call_start","call":"t2/a","call_name":"fetch","parent":"t2"}),
            json!({"seq":13,"task":"t1","kind":"call_end","call":"t1/a/b/c"}),
            json!({"seq":14,"task":"t1","kind":"call_end","call":"t1/a/b"}),
            json!({"seq":15,"task":"t1","kind":"call_end","call":"t1/a"}),
            json!({"seq":16,"task":"t1","kind":"call_end","call":"t1/d"}),
            json!({"seq":17,"task":"t2","kind":"task_end"}),
            json!({"seq":18,"task":"t1","kind":"task_end"}),
        ];
        let mut f = CallFilter::new("t1/a");
        let out = run(&mut f, &log);
        assert_eq!(seqs(&out), vec![1, 4, 5, 7, 8, 10, 11, 13, 14, 15, 18]);
        assert_eq!((f.matched, f.context, f.descendants), (9, 2, 2));
        // A sub-call alone: itself and what it started, not its parent.
        let mut f = CallFilter::new("t1/a/b");
        assert_eq!(seqs(&run(&mut f, &log)), vec![1, 7, 8, 10, 11, 13, 14, 18]);
        // A call that is not in the log: nothing, not even context.
        let mut f = CallFilter::new("t9/x");
        assert!(run(&mut f, &log).is_empty());
        assert_eq!(f.matched, 0);
    }

    /// A process cannot claim a call by naming it: only records whose `call` is the call's
    /// are kept, and a `call_start` whose parent is not selected does not join the tree.
    #[test]
    fn a_call_start_under_another_parent_does_not_join() {
        let log = vec![
            json!({"seq":1,"task":"t","kind":"call_start","call":"t/a","parent":"t"}),
            json!({"seq":2,"task":"t","kind":"call_start","call":"t/x","parent":"t"}),
            json!({"seq":3,"task":"t","kind":"exec","call":"t/x"}),
            json!({"seq":4,"task":"t","kind":"exec","call":"t/a"}),
        ];
        let mut f = CallFilter::new("t/a");
        assert_eq!(seqs(&run(&mut f, &log)), vec![1, 4]);
    }

    /// A random forest of calls: the filter keeps exactly the records whose call is the root
    /// or has the root among its ancestors (computed from the whole log at once), plus the
    /// root's task's start and end, in log order.
    fn forest() -> impl Strategy<Value = (Vec<usize>, Vec<(usize, bool)>, usize)> {
        (1usize..12).prop_flat_map(|n| {
            // Call i's parent: a call before it, or none (the task).
            let parents = (0..n).map(|i| (0..=i).prop_map(move |p| if p == i { usize::MAX } else { p }));
            let events = proptest::collection::vec((0..n, any::<bool>()), 0..40);
            (parents.collect::<Vec<_>>(), events, 0..n)
        })
    }

    proptest! {
        #[test]
        fn keeps_exactly_the_subtree((parents, events, root) in forest()) {
            let id = |i: usize| format!("c{i}");
            let mut log = vec![json!({"task":"t","kind":"task_start"})];
            for (i, p) in parents.iter().enumerate() {
                let parent = if *p == usize::MAX { "t".to_string() } else { id(*p) };
                log.push(json!({"task":"t","kind":"call_start","call":id(i),"parent":parent}));
            }
            // Records of processes in calls, and some outside any call.
            for (c, in_call) in &events {
                log.push(if *in_call {
                    json!({"task":"t","kind":"exec","call":id(*c)})
                } else {
                    json!({"task":"t","kind":"exec"})
                });
            }
            log.push(json!({"task":"t","kind":"task_end"}));
            for (i, r) in log.iter_mut().enumerate() {
                r["seq"] = json!(i + 1);
            }
            let under = |mut c: usize| loop {
                if c == root { break true; }
                match parents[c] { usize::MAX => break false, p => c = p }
            };
            let want: Vec<u64> = log.iter().filter(|r| match r["call"].as_str() {
                Some(c) => under(c[1..].parse().unwrap()),
                None => r["kind"] == "task_start" || r["kind"] == "task_end",
            }).map(|r| r["seq"].as_u64().unwrap()).collect();
            let mut f = CallFilter::new(&id(root));
            let got = seqs(&run(&mut f, &log));
            prop_assert_eq!(&got, &want);
            prop_assert_eq!(f.matched + f.context, got.len() as u64);
            prop_assert_eq!(f.descendants as usize, (0..parents.len()).filter(|&c| c != root && under(c)).count());
        }
    }
}
