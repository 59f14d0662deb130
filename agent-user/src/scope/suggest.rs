//! `warden scope suggest`: from what a task did (a log recorded with `--mode audit`, or a log
//! with refusals), the scope that would have allowed it — executables by path, files by
//! directory, egress by address and port (or by name) — written as a scope file for a person
//! to review.
//!
//! What a log can say differs by section, and the suggestion follows it:
//! - every exec and every `connect`/`sendmsg` is recorded, allowed ones included: `exec.allow`
//!   and `network.egress` are the narrowest lists that hold everything the task ran and reached,
//!   also where the base scope did not restrict them;
//! - allowed file accesses are never recorded (too many), only refused or audited ones: a
//!   `files.read`/`files.write` list is extended by the directory of each access it refused,
//!   and a section the base leaves open stays open.
//!
//! Refusals no scope addition can lift (`files.deny`, protected defaults, `limits.processes`)
//! are listed as comments at the top of the output, never silently dropped.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use serde_json::Value;
use serde_norway::{Mapping, Value as Y};

use super::{Scope, compile::CompiledScope};
use crate::{loader::user_dev_to_kernel, scope::compile::egress_allows};

/// The dynamic loader, which a scope may not list (see `Scope::parse`).
fn is_loader(p: &Path) -> bool {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    name.starts_with("ld-linux") || name.starts_with("ld.so") || name.starts_with("ld-musl")
}

/// Errors of `warden scope suggest` (usage errors: exit 2).
#[derive(Debug, thiserror::Error)]
pub enum SuggestError {
    #[error("{0}: no task records (is this a Warden log?)")]
    Empty(String),
    #[error("{0}: no record of task {1}")]
    NoTask(String, String),
    #[error("base scope: {0}")]
    Base(String),
    #[error(
        "the suggested scope does not validate ({0}); this is a bug in warden scope suggest, please report it with the log"
    )]
    Invalid(String),
}

/// A suggestion: the scope text (comments first) and what it added.
#[derive(Debug, Default)]
pub struct Suggestion {
    pub yaml: String,
    /// One line per entry added to the base.
    pub added: Vec<String>,
    /// What was not suggested, and why.
    pub notes: Vec<String>,
}

/// What the records showed the task doing.
#[derive(Debug, Default)]
struct Seen {
    task_ids: BTreeSet<String>,
    /// Executables by the kernel's name of the file, with the identity that ran.
    execs: BTreeMap<PathBuf, (u64, u64)>,
    /// (address, protocol) → ports.
    egress: BTreeMap<(IpAddr, String), BTreeSet<u16>>,
    /// Names the resolver refused or audited → the addresses it answered.
    names: BTreeMap<String, BTreeSet<IpAddr>>,
    /// Directories to read / write.
    read: BTreeSet<PathBuf>,
    write: BTreeSet<PathBuf>,
    /// Refusals no addition lifts: (rule, what).
    unliftable: BTreeSet<(String, String)>,
    /// Earliest `task_start` time, Unix seconds.
    started: Option<i64>,
}

fn rfc3339_secs(t: &str) -> Option<i64> {
    time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|d| d.unix_timestamp())
}

/// The directory a file access is granted by: the path itself if it is a directory, else its
/// parent (files by directory).
fn dir_of(path: &Path) -> PathBuf {
    if path.is_dir() { path.to_path_buf() } else { path.parent().unwrap_or(Path::new("/")).to_path_buf() }
}

fn str_of<'a>(r: &'a Value, k: &str) -> Option<&'a str> {
    r.get(k).and_then(Value::as_str)
}

impl Seen {
    fn record(&mut self, r: &Value) {
        let Some(kind) = str_of(r, "kind") else { return };
        let decision = str_of(r, "decision").unwrap_or("");
        if let Some(t) = str_of(r, "task") {
            self.task_ids.insert(t.to_string());
        }
        match kind {
            "task_start" => {
                if let Some(t) = str_of(r, "time").and_then(rfc3339_secs) {
                    self.started = Some(self.started.map_or(t, |s| s.min(t)));
                }
            }
            "exec" => {
                let Some(exe) = str_of(r, "exe").or_else(|| str_of(r, "path")) else { return };
                let id = (r["dev"].as_u64().unwrap_or(0), r["ino"].as_u64().unwrap_or(0));
                self.execs.entry(PathBuf::from(exe)).or_insert(id);
            }
            "connect" | "sendmsg" => {
                let (Some(addr), Some(port)) =
                    (str_of(r, "addr").and_then(|a| a.parse::<IpAddr>().ok()), r["port"].as_u64())
                else {
                    return;
                };
                let proto = str_of(r, "protocol").unwrap_or("any").to_string();
                self.egress.entry((addr, proto)).or_default().insert(port as u16);
            }
            "dns" if decision == "deny" || decision == "audit" => {
                let Some(q) = str_of(r, "query") else { return };
                let answers = r["answers"].as_array().into_iter().flatten().filter_map(|a| {
                    // "1.2.3.4" (answers kept), possibly with a note after a space.
                    a.as_str().and_then(|s| s.split(' ').next()).and_then(|s| s.parse::<IpAddr>().ok())
                });
                self.names.entry(q.to_string()).or_default().extend(answers);
            }
            _ if decision == "deny" || decision == "audit" => self.refusal(kind, r),
            _ => {}
        }
    }

    fn refusal(&mut self, kind: &str, r: &Value) {
        let rule = str_of(r, "rule").unwrap_or("?");
        let target = str_of(r, "path")
            .map(str::to_string)
            .or_else(|| str_of(r, "syscall").map(|s| format!("syscall {s}")))
            .or_else(|| r["target_pid"].as_u64().map(|p| format!("pid {p}")))
            .unwrap_or_default();
        match (kind, rule) {
            ("open" | "file" | "unix_connect" | "mmap", "files.read" | "files.write") => {
                let Some(path) = str_of(r, "path") else { return };
                let path = Path::new(path);
                // Landlock names the directory of a change to the tree (`file`); the BPF LSM
                // engine names the file.
                let dir = if kind == "file" && str_of(r, "source") == Some("landlock") {
                    path.to_path_buf()
                } else {
                    dir_of(path)
                };
                let blockers: Vec<&str> =
                    r["blockers"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                let f_mode = r["arg"].as_u64().unwrap_or(0);
                let wants_read = rule == "files.read"
                    || blockers.iter().any(|b| b.starts_with("fs.read") || *b == "fs.execute")
                    || (kind == "open" && f_mode & 1 != 0);
                let wants_write = rule == "files.write"
                    || blockers.iter().any(|b| !b.starts_with("fs.read") && *b != "fs.execute")
                        && !blockers.is_empty()
                    || (kind == "open" && f_mode & 2 != 0);
                if wants_read {
                    self.read.insert(dir.clone());
                }
                if wants_write {
                    self.write.insert(dir);
                }
            }
            // Exec and egress refusals are covered by the exec and connect records themselves.
            ("exec" | "connect" | "sendmsg", _) => {}
            _ => {
                self.unliftable.insert((rule.to_string(), format!("{kind} {target}").trim().to_string()));
            }
        }
    }
}

/// Why a refusal by `rule` is not lifted by the suggestion.
fn why_not(rule: &str) -> &'static str {
    match rule {
        "files.deny" => "remove the path from files.deny yourself if the task needs it",
        "secrets" => "a secret is opened only by its tools: add the tool to its `tools`",
        "limits.processes" => "raise limits.processes",
        "protected.io_uring" => "`grant: [io-uring]` gives io_uring back",
        "protected.process" => "processes outside the task stay out of its reach (ptrace: `grant: [ptrace]`)",
        "protected.sockets" => {
            "`grant: [net-raw | net-packet | net-netlink | net-other]` gives the socket class back"
        }
        "protected.credentials" => "`grant: [credentials]` gives credential locations back",
        "protected.userns" => "`grant: [userns]` gives user namespaces back",
        _ => "a protected default: see docs/scope.md, Protected by default",
    }
}

/// True if `p` is `root` or below it.
fn under(p: &Path, root: &Path) -> bool {
    p.starts_with(root)
}

/// Keeps only the outermost of nested directories.
fn outermost(set: &BTreeSet<PathBuf>) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for p in set {
        if !out.iter().any(|o| under(p, o)) {
            out.push(p.clone());
        }
    }
    out
}

/// Whether the executable at `exe` (which ran with identity `id`) is one the task itself
/// created or replaced: it is gone, another file is there now, or it was written after the task
/// started. Such a file gets a new identity each build, so it is allowed by its directory.
fn built_by_task(exe: &Path, id: (u64, u64), started: Option<i64>) -> bool {
    let Ok(m) = std::fs::metadata(exe) else { return true };
    if id.1 != 0 && (m.ino() != id.1 || user_dev_to_kernel(m.dev()) != user_dev_to_kernel(id.0)) {
        return true;
    }
    started.is_some_and(|s| m.ctime() >= s)
}

fn seq_of<'a>(map: &'a mut Mapping, path: &[&str]) -> &'a mut Vec<Y> {
    let mut cur = map;
    for k in &path[..path.len() - 1] {
        let e = cur.entry(Y::String(k.to_string())).or_insert_with(|| Y::Mapping(Mapping::new()));
        if !e.is_mapping() {
            *e = Y::Mapping(Mapping::new());
        }
        cur = e.as_mapping_mut().expect("mapping");
    }
    let e = cur.entry(Y::String(path[path.len() - 1].to_string())).or_insert_with(|| Y::Sequence(Vec::new()));
    if !e.is_sequence() {
        *e = Y::Sequence(Vec::new());
    }
    e.as_sequence_mut().expect("sequence")
}

/// Suggests a scope from the records of a log (every line a JSON record; other tasks' lines are
/// skipped when `task` is given). `base`: the scope the additions go into (its text and
/// validated form); without one the suggestion starts from `version: 1` and the task's name.
pub fn suggest(
    source: &str,
    records: impl IntoIterator<Item = Value>,
    task: Option<&str>,
    base: Option<(&str, &Scope)>,
) -> Result<Suggestion, SuggestError> {
    let mut seen = Seen::default();
    for r in records {
        if task.is_some_and(|t| str_of(&r, "task") != Some(t)) {
            continue;
        }
        seen.record(&r);
    }
    if seen.task_ids.is_empty() {
        return Err(match task {
            Some(t) => SuggestError::NoTask(source.to_string(), t.to_string()),
            None => SuggestError::Empty(source.to_string()),
        });
    }
    let compiled = match base {
        Some((_, s)) => {
            Some(CompiledScope::compile(&s.for_validation()).map_err(|e| SuggestError::Base(e.to_string()))?)
        }
        None => None,
    };
    let mut map: Mapping = match base {
        Some((text, _)) => serde_norway::from_str(text).map_err(|e| SuggestError::Base(e.to_string()))?,
        None => {
            let first = seen.task_ids.iter().next().expect("one task");
            // `<name>-<16 hex>`.
            let name = first.rsplit_once('-').map_or(first.as_str(), |(n, _)| n);
            let mut m = Mapping::new();
            m.insert("version".into(), Y::Number(1.into()));
            m.insert("task".into(), Y::String(name.to_string()));
            m
        }
    };
    let mut out = Suggestion::default();
    if seen.task_ids.len() > 1 {
        out.notes.push(format!(
            "{} tasks in the log, taken together (choose one with --task): {}",
            seen.task_ids.len(),
            seen.task_ids.iter().cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    // The suggestion is for enforce mode.
    if map.contains_key("mode") {
        map.insert("mode".into(), Y::String("enforce".into()));
    }

    // Executables, by the kernel's name of the file.
    let base_exec = compiled.as_ref().and_then(|c| c.exec.clone());
    let mut exec_add: Vec<String> = Vec::new();
    let mut dirs: BTreeSet<PathBuf> = BTreeSet::new();
    for (exe, &(dev, ino)) in &seen.execs {
        let allowed = base_exec.as_ref().is_some_and(|ids| {
            ids.iter().any(|f| f.ino == ino && user_dev_to_kernel(f.dev) == user_dev_to_kernel(dev))
        }) || compiled.as_ref().is_some_and(|c| c.in_exec_dir(exe));
        if allowed {
            continue;
        }
        if is_loader(exe) {
            out.notes.push(format!(
                "{} ran: a program started through the dynamic loader cannot be allowed (list the program itself)",
                exe.display()
            ));
            continue;
        }
        if built_by_task(exe, (dev, ino), seen.started) {
            let d = exe.parent().unwrap_or(Path::new("/")).to_path_buf();
            dirs.insert(d);
            continue;
        }
        exec_add.push(exe.display().to_string());
    }
    for d in outermost(&dirs) {
        exec_add.push(format!("{}/", d.display()));
    }
    if !exec_add.is_empty() || (base_exec.is_none() && !seen.execs.is_empty()) {
        let seq = seq_of(&mut map, &["exec", "allow"]);
        for e in exec_add {
            if e.ends_with('/') {
                out.added.push(format!("exec.allow: {e} (programs the task built there)"));
            } else {
                out.added.push(format!("exec.allow: {e}"));
            }
            seq.push(Y::String(e));
        }
    }

    // Egress: by name where the resolver answered the address, else by address.
    let hosts_base = base.map(|(_, s)| s.hosts.clone()).unwrap_or_default();
    let egress_base = compiled.as_ref().and_then(|c| c.egress.clone());
    let mut rules: Vec<Y> = Vec::new();
    let mut by_name: BTreeMap<String, BTreeMap<String, BTreeSet<u16>>> = BTreeMap::new();
    for ((addr, proto), ports) in &seen.egress {
        let proto_nr = match proto.as_str() {
            "tcp" => 6,
            "udp" => 17,
            _ => 0,
        };
        let ports: Vec<u16> = ports
            .iter()
            .copied()
            .filter(|&p| !egress_base.as_ref().is_some_and(|e| egress_allows(e, *addr, p, proto_nr)))
            .collect();
        if ports.is_empty() {
            continue;
        }
        if let Some((name, _)) = seen.names.iter().find(|(_, a)| a.contains(addr)) {
            by_name.entry(name.clone()).or_default().entry(proto.clone()).or_default().extend(ports);
            continue;
        }
        let mut m = Mapping::new();
        m.insert("to".into(), Y::String(addr.to_string()));
        m.insert("ports".into(), Y::Sequence(ports.iter().map(|&p| Y::Number(p.into())).collect()));
        if proto_nr != 0 {
            m.insert("protocol".into(), Y::String(proto.clone()));
        }
        out.added.push(format!("network.egress: {addr} {proto} {ports:?}"));
        rules.push(Y::Mapping(m));
    }
    for name in seen.names.keys() {
        if crate::dns::policy::rule_for(&hosts_base, name).is_some() {
            continue;
        }
        let protos = by_name.remove(name).unwrap_or_default();
        if protos.is_empty() {
            out.notes.push(format!(
                "{name} was resolved but nothing connected to it; not suggested (add `host: {name}` if the task needs it)"
            ));
            continue;
        }
        for (proto, ports) in protos {
            let mut m = Mapping::new();
            m.insert("host".into(), Y::String(name.clone()));
            m.insert("ports".into(), Y::Sequence(ports.iter().map(|&p| Y::Number(p.into())).collect()));
            if proto == "tcp" || proto == "udp" {
                m.insert("protocol".into(), Y::String(proto.clone()));
            }
            out.added.push(format!("network.egress: host {name} {proto} {ports:?}"));
            rules.push(Y::Mapping(m));
        }
    }
    // Every connection is recorded, allowed ones too: the list is complete even where the base
    // did not restrict egress (then nothing connected means no egress at all).
    if !rules.is_empty() || egress_base.is_none() && hosts_base.is_empty() {
        seq_of(&mut map, &["network", "egress"]).extend(rules);
    }

    // Files: directories of what a restricted list refused.
    for (list, wanted, base_list) in [
        ("read", &seen.read, base.and_then(|(_, s)| s.read.clone())),
        ("write", &seen.write, base.and_then(|(_, s)| s.write.clone())),
    ] {
        let Some(base_list) = base_list else {
            if !wanted.is_empty() {
                out.notes.push(format!(
                    "files.{list}: the base scope does not restrict it; refusals there came from elsewhere"
                ));
            }
            continue;
        };
        let canon: Vec<PathBuf> =
            base_list.iter().map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone())).collect();
        let add: BTreeSet<PathBuf> =
            wanted.iter().filter(|d| !canon.iter().any(|r| under(d, r))).cloned().collect();
        let add = outermost(&add);
        if add.is_empty() {
            continue;
        }
        let seq = seq_of(&mut map, &["files", list]);
        for d in add {
            out.added.push(format!("files.{list}: {}", d.display()));
            seq.push(Y::String(d.display().to_string()));
        }
    }
    for (rule, what) in &seen.unliftable {
        out.notes.push(format!("refused by {rule}: {what} — not suggested; {}", why_not(rule)));
    }
    if base.is_none_or(|(_, s)| s.read.is_none() && s.write.is_none()) {
        out.notes.push(
            "files: left as the base has them. Allowed file accesses are not recorded; to learn file \
             grants, run with a files section (enforce mode) and suggest again from its refusals"
                .to_string(),
        );
    }

    let body = serde_norway::to_string(&Y::Mapping(map)).map_err(|e| SuggestError::Invalid(e.to_string()))?;
    // Whatever is suggested must be a scope `warden scope check` accepts.
    let scope = Scope::parse(&body, Path::new("suggested scope"))
        .map_err(|e| SuggestError::Invalid(e.to_string()))?;
    CompiledScope::compile(&scope.for_validation()).map_err(|e| SuggestError::Invalid(e.to_string()))?;
    let mut yaml = format!("# Suggested by `warden scope suggest` from {source}: review before use.\n");
    for n in &out.notes {
        yaml.push_str(&format!("# note: {n}\n"));
    }
    yaml.push_str(&body);
    out.yaml = yaml;
    Ok(out)
}
