//! The process tree of a recorded task, rebuilt from its `task_start`, `fork`, `exec`, `exit`
//! and `task_end` records (any other record with a `pid` adds the process if it is new).
//!
//! A pid names one process until its `exit` record; a later record with the same pid is a new
//! process (pid reuse). Parents come from `fork` records, else from the record's `ppid` when
//! that process is known; processes whose parent is not in the log are roots.
use std::collections::HashMap;

use serde_json::Value;

/// One exec a process made (or tried).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exec {
    pub seq: u64,
    /// The path exec was called with.
    pub path: String,
    /// `allow`, `deny` or `audit`.
    pub decision: String,
    /// deny: `refuse` or `kill`.
    pub action: Option<String>,
    /// deny/audit: the scope field that decided.
    pub rule: Option<String>,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub seq: u64,
    pub status: Option<i64>,
    pub signal: Option<i64>,
}

/// One process of the task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcNode {
    pub task: String,
    pub pid: u64,
    /// Index of the parent node, if the parent is in the log.
    pub parent: Option<usize>,
    /// Child nodes, in the order they appeared.
    pub children: Vec<usize>,
    /// The executable it runs (after its last successful exec; inherited at fork).
    pub exe: Option<String>,
    pub comm: Option<String>,
    /// The task's command line (the task's first process).
    pub cmd: Option<Vec<String>>,
    pub execs: Vec<Exec>,
    pub exit: Option<Exit>,
    /// `seq` of the first record about it.
    pub first_seq: u64,
    /// deny/audit records about it, of any kind.
    pub judged: usize,
    /// It is the task's first process (from `task_start`).
    pub task_root: bool,
}

/// The processes of one or more tasks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessTree {
    pub nodes: Vec<ProcNode>,
    /// Nodes without a known parent, in order of appearance.
    pub roots: Vec<usize>,
}

fn s(rec: &Value, k: &str) -> Option<String> {
    rec.get(k).and_then(Value::as_str).map(str::to_string)
}

fn n(rec: &Value, k: &str) -> Option<u64> {
    rec.get(k).and_then(Value::as_u64)
}

/// Builds a [`ProcessTree`] one record at a time, in log order: its memory is the tree's.
#[derive(Default)]
pub struct Builder {
    tree: ProcessTree,
    /// (task, pid) → the node that pid names now.
    live: HashMap<(String, u64), usize>,
    /// task → its first process.
    roots: HashMap<String, usize>,
}

impl Builder {
    fn new_node(&mut self, task: &str, pid: u64, seq: u64, parent: Option<usize>) -> usize {
        let (exe, comm) = match parent {
            Some(p) => (self.tree.nodes[p].exe.clone(), self.tree.nodes[p].comm.clone()),
            None => (None, None),
        };
        let idx = self.tree.nodes.len();
        self.tree.nodes.push(ProcNode {
            task: task.to_string(),
            pid,
            parent,
            children: Vec::new(),
            exe,
            comm,
            cmd: None,
            execs: Vec::new(),
            exit: None,
            first_seq: seq,
            judged: 0,
            task_root: false,
        });
        self.live.insert((task.to_string(), pid), idx);
        idx
    }

    /// The node `pid` names now, created (under `ppid`'s node, if known) when new.
    fn node(&mut self, task: &str, pid: u64, ppid: Option<u64>, seq: u64) -> usize {
        if let Some(&i) = self.live.get(&(task.to_string(), pid)) {
            return i;
        }
        let parent = ppid.and_then(|pp| self.live.get(&(task.to_string(), pp)).copied());
        self.new_node(task, pid, seq, parent)
    }

    /// Takes one record into the tree.
    pub fn observe(&mut self, rec: &Value) {
        let Some(kind) = rec.get("kind").and_then(Value::as_str) else { return };
        let Some(pid) = n(rec, "pid") else { return };
        let task = rec.get("task").and_then(Value::as_str).unwrap_or("");
        let seq = n(rec, "seq").unwrap_or(0);
        let ppid = n(rec, "ppid");
        let decision = s(rec, "decision").unwrap_or_default();
        match kind {
            "task_start" => {
                // Warden (the ppid) is not part of the task.
                let i = self.node(task, pid, None, seq);
                self.roots.insert(task.to_string(), i);
                let node = &mut self.tree.nodes[i];
                node.task_root = true;
                node.exe = s(rec, "exe").or(node.exe.take());
                node.cmd = rec
                    .get("cmd")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect());
            }
            "fork" => {
                let parent = self.node(task, pid, ppid, seq);
                if let Some(comm) = s(rec, "comm") {
                    self.tree.nodes[parent].comm.get_or_insert(comm);
                }
                if let Some(exe) = s(rec, "exe") {
                    self.tree.nodes[parent].exe.get_or_insert(exe);
                }
                let Some(child) = n(rec, "child_pid") else { return };
                match self.live.get(&(task.to_string(), child)).copied() {
                    // Seen before its fork record (records of different CPUs interleave).
                    Some(c) if self.tree.nodes[c].parent.is_none() && c != parent => {
                        self.tree.nodes[c].parent = Some(parent);
                        if self.tree.nodes[c].exe.is_none() {
                            self.tree.nodes[c].exe = self.tree.nodes[parent].exe.clone();
                        }
                    }
                    Some(_) => {}
                    None => {
                        self.new_node(task, child, seq, Some(parent));
                    }
                }
            }
            "exec" => {
                let i = self.node(task, pid, ppid, seq);
                let path = s(rec, "path").or_else(|| s(rec, "exe")).unwrap_or_default();
                let node = &mut self.tree.nodes[i];
                // A refused exec leaves the old image; a killed one (the fallback engine's exec
                // check) replaced it and was killed before its first instruction.
                if decision != "deny" || rec["action"] == "kill" {
                    node.exe = s(rec, "exe").or_else(|| Some(path.clone()));
                    node.comm = s(rec, "comm").or(node.comm.take());
                }
                node.execs.push(Exec {
                    seq,
                    path,
                    decision: decision.clone(),
                    action: s(rec, "action"),
                    rule: s(rec, "rule"),
                });
            }
            "exit" => {
                let i = self.node(task, pid, ppid, seq);
                self.tree.nodes[i].exit =
                    Some(Exit { seq, status: rec["exit_status"].as_i64(), signal: rec["signal"].as_i64() });
                self.live.remove(&(task.to_string(), pid));
            }
            "task_end" => {
                // The task's first process, when its own exit record is missing.
                if let Some(&i) = self.roots.get(task)
                    && self.tree.nodes[i].exit.is_none()
                {
                    self.tree.nodes[i].exit = Some(Exit {
                        seq,
                        status: rec["exit_status"].as_i64(),
                        signal: rec["signal"].as_i64(),
                    });
                }
            }
            _ => {
                let i = self.node(task, pid, ppid, seq);
                let node = &mut self.tree.nodes[i];
                if node.comm.is_none() {
                    node.comm = s(rec, "comm");
                }
                if node.exe.is_none() {
                    node.exe = s(rec, "exe");
                }
            }
        }
        if matches!(decision.as_str(), "deny" | "audit")
            && let Some(&i) = self.live.get(&(task.to_string(), pid))
        {
            self.tree.nodes[i].judged += 1;
        }
    }
}

impl Builder {
    /// The tree of the records observed.
    pub fn finish(self) -> ProcessTree {
        let mut tree = self.tree;
        for i in 0..tree.nodes.len() {
            match tree.nodes[i].parent {
                Some(p) => tree.nodes[p].children.push(i),
                None => tree.roots.push(i),
            }
        }
        tree
    }
}

impl ProcessTree {
    /// Builds the tree from records in log order.
    pub fn build<'a>(records: impl IntoIterator<Item = &'a Value>) -> Self {
        let mut b = Builder::default();
        for r in records {
            b.observe(r);
        }
        b.finish()
    }

    /// Nodes in display order (depth first, children in order of appearance) with their depth.
    /// Iterative, so a deep chain of processes cannot overflow the stack.
    pub fn walk(&self) -> Vec<(usize, usize)> {
        let mut out = Vec::with_capacity(self.nodes.len());
        let mut stack: Vec<(usize, usize)> = self.roots.iter().rev().map(|&r| (r, 0)).collect();
        while let Some((i, depth)) = stack.pop() {
            out.push((i, depth));
            stack.extend(self.nodes[i].children.iter().rev().map(|&c| (c, depth + 1)));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn r(seq: u64, kind: &str, pid: u64, extra: Value) -> Value {
        let mut v = json!({"v": 2, "seq": seq, "task": "t", "kind": kind, "decision": "allow", "pid": pid, "ppid": 1});
        v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        v
    }

    fn session() -> Vec<Value> {
        vec![
            r(1, "task_start", 10, json!({"ppid": 5, "exe": "/bin/sh", "cmd": ["/bin/sh", "-c", "x"]})),
            r(2, "exec", 10, json!({"path": "/bin/sh", "exe": "/usr/bin/dash", "comm": "sh"})),
            r(3, "fork", 10, json!({"child_pid": 11, "exe": "/usr/bin/dash"})),
            r(
                4,
                "exec",
                11,
                json!({"ppid": 10, "path": "/usr/bin/true", "exe": "/usr/bin/true", "comm": "true"}),
            ),
            r(5, "exit", 11, json!({"ppid": 10, "exit_status": 0})),
            r(6, "fork", 10, json!({"child_pid": 12})),
            r(
                7,
                "exec",
                12,
                json!({"ppid": 10, "decision": "deny", "action": "kill", "rule": "exec.allow", "path": "/usr/bin/id", "exe": "/usr/bin/id"}),
            ),
            r(8, "exit", 12, json!({"ppid": 10, "signal": 9})),
            // pid 11 is reused by a new child after its exit.
            r(9, "fork", 10, json!({"child_pid": 11})),
            r(10, "fork", 11, json!({"ppid": 10, "child_pid": 13})),
            r(11, "connect", 13, json!({"ppid": 11, "decision": "deny", "addr": "1.1.1.1", "port": 443})),
            r(12, "exit", 10, json!({"exit_status": 3})),
            r(13, "task_end", 10, json!({"exit_status": 3, "reason": "exited"})),
        ]
    }

    #[test]
    fn builds_parents_children_execs_and_exits() {
        let t = ProcessTree::build(&session());
        assert_eq!(t.roots.len(), 1);
        let root = &t.nodes[t.roots[0]];
        assert_eq!((root.pid, root.task_root), (10, true));
        assert_eq!(root.cmd.as_deref().unwrap(), ["/bin/sh", "-c", "x"]);
        assert_eq!(root.exe.as_deref(), Some("/usr/bin/dash"));
        assert_eq!(
            root.exit,
            Some(Exit { seq: 12, status: Some(3), signal: None }),
            "exit record, not task_end"
        );
        let kids: Vec<u64> = root.children.iter().map(|&c| t.nodes[c].pid).collect();
        assert_eq!(kids, [11, 12, 11], "pid 11 twice: reused after exit");
        let first = &t.nodes[root.children[0]];
        assert_eq!(first.exe.as_deref(), Some("/usr/bin/true"));
        assert_eq!(first.exit.unwrap().status, Some(0));
        assert!(first.children.is_empty());
        let denied = &t.nodes[root.children[1]];
        assert_eq!(denied.execs[0].decision, "deny");
        assert_eq!(denied.execs[0].action.as_deref(), Some("kill"));
        assert_eq!(denied.exe.as_deref(), Some("/usr/bin/id"), "killed after the image was replaced");
        assert_eq!(denied.exit.unwrap().signal, Some(9));
        assert_eq!(denied.judged, 1);
        let second = &t.nodes[root.children[2]];
        assert_eq!(second.first_seq, 9);
        let grandchild = &t.nodes[second.children[0]];
        assert_eq!(grandchild.pid, 13);
        assert_eq!(grandchild.judged, 1);
        assert!(grandchild.exit.is_none());
        let order: Vec<(u64, usize)> = t.walk().iter().map(|&(i, d)| (t.nodes[i].pid, d)).collect();
        assert_eq!(order, [(10, 0), (11, 1), (12, 1), (11, 1), (13, 2)]);
    }

    #[test]
    fn a_refused_exec_keeps_the_image() {
        let recs = vec![
            r(1, "task_start", 10, json!({"exe": "/bin/sh"})),
            r(2, "exec", 10, json!({"decision": "deny", "action": "refuse", "path": "/usr/bin/id"})),
        ];
        let t = ProcessTree::build(&recs);
        assert_eq!(t.nodes[0].exe.as_deref(), Some("/bin/sh"));
        assert_eq!(t.nodes[0].execs[0].path, "/usr/bin/id");
        assert_eq!(t.nodes[0].judged, 1);
    }

    #[test]
    fn exec_before_its_fork_record_is_attached_later() {
        let recs = vec![
            r(1, "task_start", 10, json!({"exe": "/bin/sh"})),
            r(2, "exec", 20, json!({"ppid": 99, "path": "/usr/bin/true"})),
            r(3, "fork", 10, json!({"child_pid": 20})),
        ];
        let t = ProcessTree::build(&recs);
        assert_eq!(t.roots.len(), 1);
        assert_eq!(t.nodes[t.roots[0]].children.len(), 1);
        assert_eq!(t.nodes[t.nodes[t.roots[0]].children[0]].pid, 20);
    }

    #[test]
    fn tasks_are_kept_apart_and_unknown_parents_are_roots() {
        let mut other = r(1, "exec", 10, json!({"path": "/usr/bin/ls"}));
        other["task"] = json!("u");
        let recs = vec![
            r(1, "task_start", 10, json!({})),
            other,
            r(2, "connect", 77, json!({"ppid": 66})),
            r(3, "task_end", 10, json!({"exit_status": 4})),
        ];
        let t = ProcessTree::build(&recs);
        assert_eq!(t.roots.len(), 3);
        assert_eq!(t.nodes.iter().filter(|n| n.pid == 10).count(), 2);
        assert_eq!(t.nodes[0].exit.unwrap().status, Some(4), "task_end stands in for a missing exit");
        assert!(t.nodes[1].exit.is_none(), "the other task's pid 10 did not end");
    }

    #[test]
    fn deep_chains_walk_without_recursion() {
        let mut recs = vec![r(1, "task_start", 1, json!({}))];
        for p in 1..20_000u64 {
            recs.push(r(p + 1, "fork", p, json!({"child_pid": p + 1})));
        }
        let t = ProcessTree::build(&recs);
        let w = t.walk();
        assert_eq!(w.len(), 20_000);
        assert_eq!(w.last().unwrap().1, 19_999);
    }
}
