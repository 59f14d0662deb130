//! Audit records and findings mapped to [OCSF] 1.8.0 events (`docs/ocsf.md` has the table).
//!
//! Pure functions: a record (`serde_json::Value`, schema v2, see `docs/events.md`) in, an OCSF
//! event out; no I/O. What the mapping does not place in an OCSF attribute is kept, verbatim,
//! under `unmapped` (the hash chain among it), so nothing in the record is lost.
//!
//! Decisions (the `security_control` profile):
//!
//! | decision | `action_id` | `disposition_id` | `status_id` | `severity_id` |
//! |---|---|---|---|---|
//! | `allow` | 1 Allowed | 1 Allowed | 1 Success | 1 Informational |
//! | `deny` | 2 Denied | 2 Blocked | 2 Failure | 2 Low |
//! | `audit` | 3 Observed | 15 Detected | 1 Success | 3 Medium |
//!
//! [OCSF]: https://schema.ocsf.io
use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use crate::rules::{Severity, engine::Finding};

/// The OCSF schema version events are written against (`metadata.version`).
pub const OCSF_VERSION: &str = "1.8.0";

/// What a single record does not carry but an OCSF event wants: `device.hostname`, which only
/// a task's `task_start` names (`node`).
///
/// The host name of an event of task T is, in this order: [`Context::hostname`] (`--host`, an
/// explicit override), the `node` of T's `task_start` (learnt by [`Context::learn`]), then
/// [`Context::fallback_hostname`] (the host doing the conversion), else none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Context {
    /// Overrides `device.hostname` of every event, whatever the records say.
    pub hostname: Option<String>,
    /// `device.hostname` of events whose task's node is unknown: logs from before `task_start`
    /// named the node, or a replay that starts after the task's `task_start`.
    pub fallback_hostname: Option<String>,
    /// Task id → the node its `task_start` names.
    nodes: BTreeMap<String, String>,
}

impl Context {
    /// `hostname` overrides every event's host name; `fallback_hostname` names the host of tasks
    /// whose node is unknown.
    pub fn new(hostname: Option<String>, fallback_hostname: Option<String>) -> Self {
        Self { hostname, fallback_hostname, nodes: BTreeMap::new() }
    }

    /// Notes what a record tells about the events after it: a `task_start`'s `node`. Call it for
    /// every record, in log order, before mapping it.
    pub fn learn(&mut self, rec: &Value) {
        if rec["kind"] == "task_start"
            && let (Some(task), Some(node)) = (rec["task"].as_str(), rec["node"].as_str())
            && !node.is_empty()
        {
            self.nodes.insert(task.to_string(), node.to_string());
        }
    }

    /// `device.hostname` of an event of `task`.
    pub fn hostname_of(&self, task: &str) -> Option<&str> {
        self.hostname
            .as_deref()
            .or_else(|| self.nodes.get(task).map(String::as_str))
            .or(self.fallback_hostname.as_deref())
    }
}

/// An OCSF event class.
#[derive(Debug, Clone, Copy)]
struct Class {
    uid: u32,
    name: &'static str,
    category_uid: u32,
    category_name: &'static str,
}

const SYSTEM: (u32, &str) = (1, "System Activity");
const NETWORK: (u32, &str) = (4, "Network Activity");

const fn class(uid: u32, name: &'static str, category: (u32, &'static str)) -> Class {
    Class { uid, name, category_uid: category.0, category_name: category.1 }
}

pub const FILE_SYSTEM_ACTIVITY: u32 = 1001;
pub const KERNEL_EXTENSION_ACTIVITY: u32 = 1002;
pub const KERNEL_ACTIVITY: u32 = 1003;
pub const PROCESS_ACTIVITY: u32 = 1007;
pub const EVENT_LOG_ACTIVITY: u32 = 1008;
pub const DETECTION_FINDING: u32 = 2004;
pub const NETWORK_ACTIVITY: u32 = 4001;
pub const DNS_ACTIVITY: u32 = 4003;

const FILE: Class = class(FILE_SYSTEM_ACTIVITY, "File System Activity", SYSTEM);
const KEXT: Class = class(KERNEL_EXTENSION_ACTIVITY, "Kernel Extension Activity", SYSTEM);
const KERNEL: Class = class(KERNEL_ACTIVITY, "Kernel Activity", SYSTEM);
const PROCESS: Class = class(PROCESS_ACTIVITY, "Process Activity", SYSTEM);
const EVENT_LOG: Class = class(EVENT_LOG_ACTIVITY, "Event Log Activity", SYSTEM);
const FINDING: Class = class(DETECTION_FINDING, "Detection Finding", (2, "Findings"));
const NET: Class = class(NETWORK_ACTIVITY, "Network Activity", NETWORK);
const DNS: Class = class(DNS_ACTIVITY, "DNS Activity", NETWORK);

/// `activity_id` 99: the class has no activity for it; `activity_name` says what it was.
const OTHER: i64 = 99;

/// The record, with the fields the mapping consumed marked (the rest goes to `unmapped`).
struct Rec<'a> {
    v: &'a Map<String, Value>,
    used: BTreeSet<&'static str>,
}

impl<'a> Rec<'a> {
    fn str(&mut self, k: &'static str) -> Option<&'a str> {
        let s = self.v.get(k)?.as_str()?;
        self.used.insert(k);
        Some(s)
    }
    fn int(&mut self, k: &'static str) -> Option<i64> {
        let n = self.v.get(k)?.as_i64()?;
        self.used.insert(k);
        Some(n)
    }
    fn peek_str(&self, k: &str) -> Option<&'a str> {
        self.v.get(k)?.as_str()
    }
    fn peek_int(&self, k: &str) -> Option<i64> {
        self.v.get(k)?.as_i64()
    }
    fn unmapped(&self) -> Map<String, Value> {
        self.v
            .iter()
            .filter(|(k, _)| !self.used.contains(k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// RFC 3339 → milliseconds since the epoch (OCSF `timestamp_t`); 0 if absent or invalid.
pub fn epoch_ms(rfc3339: &str) -> i64 {
    time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .map_or(0, |t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
}

fn basename(path: &str) -> &str {
    path.rsplit('/').find(|s| !s.is_empty()).unwrap_or(path)
}

/// An OCSF `file` object (`name` and `type_id` are required).
fn file_obj(path: Option<&str>, type_id: i64, dev_ino: Option<(i64, i64)>) -> Value {
    let mut f = Map::new();
    f.insert("name".into(), path.map_or("unknown", basename).into());
    if let Some(p) = path {
        f.insert("path".into(), p.into());
    }
    f.insert("type_id".into(), type_id.into());
    f.insert("type".into(), file_type_name(type_id).into());
    if let Some((dev, ino)) = dev_ino {
        // The file system's own identity: st_dev and inode.
        f.insert("uid".into(), format!("{dev}:{ino}").into());
    }
    Value::Object(f)
}

fn file_type_name(id: i64) -> &'static str {
    match id {
        1 => "Regular File",
        2 => "Folder",
        7 => "Symbolic Link",
        8 => "Executable File",
        _ => "Unknown",
    }
}

/// `file.type_id` 0: the record does not say (a `mknod` may create a device or a pipe).
const UNKNOWN_FILE: i64 = 0;
const REGULAR_FILE: i64 = 1;
const FOLDER: i64 = 2;
const SYMBOLIC_LINK: i64 = 7;

/// `file.type_id` 8: a file that was executed or mapped executable.
const EXECUTABLE_FILE: i64 = 8;

/// The process a record is about: pid, comm, executable, parent, user, sandbox (task).
fn process_obj(r: &mut Rec<'_>) -> Map<String, Value> {
    let mut p = Map::new();
    if let Some(pid) = r.int("pid") {
        p.insert("pid".into(), pid.into());
    }
    if let Some(comm) = r.str("comm") {
        p.insert("name".into(), comm.into());
    }
    if let Some(exe) = r.str("exe") {
        if !p.contains_key("name") {
            p.insert("name".into(), basename(exe).into());
        }
        p.insert("file".into(), file_obj(Some(exe), EXECUTABLE_FILE, None));
    }
    if let Some(ppid) = r.int("ppid") {
        p.insert("parent_process".into(), json!({ "pid": ppid }));
    }
    if let Some(uid) = r.int("uid") {
        p.insert("user".into(), json!({ "uid": uid.to_string() }));
    }
    if let Some(a) = r.v.get("ancestry").and_then(Value::as_array) {
        r.used.insert("ancestry");
        let chain: Vec<Value> = a.iter().filter_map(Value::as_i64).map(|pid| json!({ "pid": pid })).collect();
        p.insert("ancestry".into(), chain.into());
    }
    if let Some(task) = r.peek_str("task") {
        p.insert("sandbox".into(), task.into());
    }
    p
}

/// What the control decided, in OCSF terms.
struct Control {
    action_id: i64,
    action: &'static str,
    disposition_id: i64,
    disposition: &'static str,
    status_id: i64,
    status: &'static str,
    severity_id: i64,
    detail: Option<String>,
}

fn control(r: &mut Rec<'_>) -> Option<Control> {
    // The BPF LSM engine refuses files with EACCES (as Landlock does), everything else with EPERM.
    let errno =
        if matches!(r.peek_str("kind"), Some("open" | "file" | "unix_connect")) { "EACCES" } else { "EPERM" };
    let decision = r.str("decision")?;
    let rule = r.str("rule");
    let how = r.str("action");
    let c = match decision {
        "allow" => Control {
            action_id: 1,
            action: "Allowed",
            disposition_id: 1,
            disposition: "Allowed",
            status_id: 1,
            status: "Success",
            severity_id: 1,
            detail: None,
        },
        "deny" => Control {
            action_id: 2,
            action: "Denied",
            disposition_id: 2,
            disposition: "Blocked",
            status_id: 2,
            status: "Failure",
            severity_id: 2,
            detail: Some(match how {
                Some("kill") => format!(
                    "killed (SIGKILL) before its first instruction: not allowed by the task scope's {}",
                    rule.unwrap_or("rules")
                ),
                _ => {
                    format!("refused ({errno}): not allowed by the task scope's {}", rule.unwrap_or("rules"))
                }
            }),
        },
        "audit" => Control {
            action_id: 3,
            action: "Observed",
            disposition_id: 15,
            disposition: "Detected",
            status_id: 1,
            status: "Success",
            severity_id: 3,
            detail: Some(format!(
                "audit mode: the task scope's {} would have refused this",
                rule.unwrap_or("rules")
            )),
        },
        _ => return None,
    };
    Some(c)
}

fn severity_name(id: i64) -> &'static str {
    match id {
        1 => "Informational",
        2 => "Low",
        3 => "Medium",
        4 => "High",
        5 => "Critical",
        _ => "Unknown",
    }
}

/// An event of `class` with everything every class carries: classification, time, metadata,
/// device, and the control's decision.
fn base(
    r: &mut Rec<'_>,
    class: Class,
    activity_id: i64,
    activity_name: &str,
    type_caption: &str,
    ctx: &Context,
) -> Map<String, Value> {
    let mut e = Map::new();
    e.insert("class_uid".into(), class.uid.into());
    e.insert("class_name".into(), class.name.into());
    e.insert("category_uid".into(), class.category_uid.into());
    e.insert("category_name".into(), class.category_name.into());
    e.insert("activity_id".into(), activity_id.into());
    e.insert("activity_name".into(), activity_name.into());
    e.insert("type_uid".into(), (i64::from(class.uid) * 100 + activity_id).into());
    e.insert("type_name".into(), format!("{}: {type_caption}", class.name).into());
    let time = r.str("time").unwrap_or("");
    e.insert("time".into(), epoch_ms(time).into());
    e.insert("timezone_offset".into(), 0.into());
    let task = r.str("task").unwrap_or("");
    let seq = r.int("seq");
    let kind = r.str("kind").unwrap_or("");
    // A task_start names its own node, learnt or not; `node` is consumed only when it is the
    // host name given (an `--host` override keeps it in `unmapped`).
    let own = if kind == "task_start" { r.peek_str("node").filter(|n| !n.is_empty()) } else { None };
    let hostname = ctx.hostname.as_deref().or(own).or_else(|| ctx.hostname_of(task));
    if own.is_some() && own == hostname {
        r.used.insert("node");
    }
    r.used.insert("v");
    let mut profiles = vec!["host"];
    let c = control(r);
    if c.is_some() {
        profiles.push("security_control");
    }
    let container = container_obj(r);
    if container.is_some() {
        profiles.push("container");
    }
    let mut md = Map::new();
    md.insert("version".into(), OCSF_VERSION.into());
    md.insert("product".into(), product());
    md.insert("profiles".into(), profiles.into());
    md.insert("correlation_uid".into(), task.into());
    if let Some(seq) = seq {
        md.insert("uid".into(), event_uid(task, seq as u64).into());
        md.insert("sequence".into(), seq.into());
    }
    md.insert("event_code".into(), kind.into());
    md.insert("original_time".into(), time.into());
    md.insert("log_name".into(), "warden-audit".into());
    md.insert("log_version".into(), r.peek_int("v").unwrap_or(0).to_string().into());
    e.insert("metadata".into(), Value::Object(md));
    e.insert("device".into(), device(hostname));
    if let Some(ct) = container {
        e.insert("container".into(), ct);
    }
    match c {
        Some(c) => {
            e.insert("action_id".into(), c.action_id.into());
            e.insert("action".into(), c.action.into());
            e.insert("disposition_id".into(), c.disposition_id.into());
            e.insert("disposition".into(), c.disposition.into());
            e.insert("status_id".into(), c.status_id.into());
            e.insert("status".into(), c.status.into());
            e.insert("severity_id".into(), c.severity_id.into());
            e.insert("severity".into(), severity_name(c.severity_id).into());
            e.insert("is_alert".into(), (c.action_id != 1).into());
            if let Some(d) = c.detail {
                e.insert("status_detail".into(), d.into());
            }
            if let Some(rule) = r.peek_str("rule") {
                e.insert(
                    "policy".into(),
                    json!({ "name": rule, "type": "Warden task scope", "is_applied": c.action_id == 2 }),
                );
            }
        }
        None => {
            e.insert("severity_id".into(), 1.into());
            e.insert("severity".into(), "Informational".into());
        }
    }
    e
}

/// The `container` object (container profile) of a pod's task: `uid` the runtime's
/// container id, `name` the container's name in the pod, `pod_uuid` the pod's UID,
/// `orchestrator` Kubernetes, `runtime`, and the pod's namespace and name as the kubelet's
/// container labels (`io.kubernetes.pod.namespace=...`, `io.kubernetes.pod.name=...`).
fn container_obj(r: &mut Rec<'_>) -> Option<Value> {
    let pod = r.v.get("pod")?.as_object()?;
    r.used.insert("pod");
    let s = |k: &str| pod.get(k).and_then(Value::as_str).filter(|v| !v.is_empty());
    let mut c = Map::new();
    if let Some(v) = s("container_id") {
        c.insert("uid".into(), v.into());
    }
    if let Some(v) = s("container") {
        c.insert("name".into(), v.into());
    }
    if let Some(v) = s("uid") {
        c.insert("pod_uuid".into(), v.into());
    }
    c.insert("orchestrator".into(), "Kubernetes".into());
    if let Some(v) = s("runtime") {
        c.insert("runtime".into(), v.into());
    }
    let labels: Vec<Value> =
        [("io.kubernetes.pod.namespace", s("namespace")), ("io.kubernetes.pod.name", s("name"))]
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| Value::from(format!("{k}={v}"))))
            .collect();
    if !labels.is_empty() {
        c.insert("labels".into(), labels.into());
    }
    Some(Value::Object(c))
}

/// The OCSF event uid of a record: task and sequence number, unique per log.
pub fn event_uid(task: &str, seq: u64) -> String {
    format!("{task}/{seq}")
}

fn product() -> Value {
    json!({ "name": "Warden", "vendor_name": "Warden", "version": env!("CARGO_PKG_VERSION") })
}

fn device(hostname: Option<&str>) -> Value {
    let mut d = Map::new();
    d.insert("type_id".into(), 0.into());
    d.insert("type".into(), "Unknown".into());
    if let Some(h) = hostname {
        d.insert("hostname".into(), h.into());
    }
    Value::Object(d)
}

fn finish(mut e: Map<String, Value>, r: &Rec<'_>, message: String) -> Value {
    e.insert("message".into(), message.into());
    let rest = r.unmapped();
    if !rest.is_empty() {
        e.insert("unmapped".into(), Value::Object(rest));
    }
    Value::Object(e)
}

/// A verb for messages: "exec /usr/bin/id (refused)".
fn outcome(r: &Rec<'_>) -> &'static str {
    match (r.peek_str("decision"), r.peek_str("action")) {
        (Some("deny"), Some("kill")) => " (killed)",
        (Some("deny"), _) => " (refused)",
        (Some("audit"), _) => " (audit: would have been refused)",
        _ => "",
    }
}

/// Maps one audit record to an OCSF event. `None` for records with no OCSF counterpart
/// (`checkpoint`: signed chain heads, checked by `warden verify`) and for non-objects.
pub fn record(rec: &Value, ctx: &Context) -> Option<Value> {
    let v = rec.as_object()?;
    let mut r = Rec { v, used: BTreeSet::new() };
    let kind = r.peek_str("kind")?;
    let out = outcome(&r);
    Some(match kind {
        "exec" => {
            let mut e = base(&mut r, PROCESS, 1, "Launch", "Launch", ctx);
            e.insert("launch_type_id".into(), 3.into());
            e.insert("launch_type".into(), "Exec".into());
            let path = r.str("path");
            let id = r.int("dev").zip(r.int("ino"));
            let mut p = process_obj(&mut r);
            // The file exec was asked to run, with its identity. `exe` (the process table's
            // view) stays unmapped when it names something else (a symlink's target).
            if path.is_some() && r.peek_str("exe") != path {
                r.used.remove("exe");
            }
            p.insert("file".into(), file_obj(path.or(r.peek_str("exe")), EXECUTABLE_FILE, id));
            if let Some(t) = r.v.get("path_truncated") {
                r.used.insert("path_truncated");
                p.insert("xattributes".into(), json!({ "path_truncated": t }));
            }
            let mut actor = Map::new();
            for k in ["pid", "parent_process", "user", "sandbox", "ancestry"] {
                if let Some(x) = p.get(k) {
                    actor.insert(k.into(), x.clone());
                }
            }
            e.insert("actor".into(), json!({ "process": actor }));
            e.insert("process".into(), Value::Object(p));
            finish(e, &r, format!("exec {}{out}", path.unwrap_or("?")))
        }
        "fork" => {
            let mut e = base(&mut r, PROCESS, 1, "Launch", "Launch", ctx);
            e.insert("launch_type_id".into(), 2.into());
            e.insert("launch_type".into(), "Fork".into());
            let parent = process_obj(&mut r);
            let child = r.int("child_pid");
            let mut p = Map::new();
            if let Some(c) = child {
                p.insert("pid".into(), c.into());
            }
            for k in ["name", "file", "user", "sandbox"] {
                if let Some(x) = parent.get(k) {
                    p.insert(k.into(), x.clone());
                }
            }
            if let Some(pid) = parent.get("pid") {
                p.insert("parent_process".into(), json!({ "pid": pid }));
            }
            let msg = format!(
                "fork: {} created {}{out}",
                parent.get("pid").map_or("?".into(), Value::to_string),
                child.map_or("?".into(), |c| c.to_string())
            );
            e.insert("actor".into(), json!({ "process": parent }));
            e.insert("process".into(), Value::Object(p));
            finish(e, &r, msg)
        }
        "exit" | "task_end" => {
            let mut e = base(&mut r, PROCESS, 2, "Terminate", "Terminate", ctx);
            let p = Value::Object(process_obj(&mut r));
            let status = r.int("exit_status");
            let signal = r.int("signal");
            if let Some(s) = status {
                e.insert("exit_code".into(), s.into());
            }
            let how = match (status, signal) {
                (_, Some(sig)) => format!("killed by signal {sig}"),
                (Some(s), _) => format!("exited with status {s}"),
                _ => "ended".into(),
            };
            let msg = if kind == "task_end" {
                let reason = r.str("reason").unwrap_or("ended");
                format!("task ended ({reason}): {how}")
            } else {
                format!("process {} {how}", p.get("pid").map_or("?".into(), Value::to_string))
            };
            e.insert("actor".into(), json!({ "process": p.clone() }));
            e.insert("process".into(), p);
            finish(e, &r, msg)
        }
        "task_start" => {
            let mut e = base(&mut r, PROCESS, 1, "Launch", "Launch", ctx);
            e.insert("launch_type_id".into(), 1.into());
            e.insert("launch_type".into(), "Spawn".into());
            let mut p = process_obj(&mut r);
            if let Some(cmd) = r.v.get("cmd").and_then(Value::as_array) {
                r.used.insert("cmd");
                let words: Vec<&str> = cmd.iter().filter_map(Value::as_str).collect();
                p.insert("cmd_line".into(), words.join(" ").into());
            }
            let ppid = p.get("parent_process").cloned();
            let mut actor = json!({ "app_name": "Warden" });
            if let Some(pp) = ppid {
                actor["process"] = pp;
            }
            let scope = r.str("scope").unwrap_or("?");
            let mode = r.peek_str("mode").unwrap_or("enforce");
            e.insert("actor".into(), actor);
            e.insert("process".into(), Value::Object(p));
            finish(e, &r, format!("task started under scope {scope} ({mode} mode)"))
        }
        "bind_failed" => {
            // A pod's container that could not be bound: its start refused (or, fail-open,
            // let through unbound).
            let mut e = base(&mut r, PROCESS, 1, "Launch", "Launch", ctx);
            let reason = r.str("reason").unwrap_or("");
            e.insert("status_detail".into(), format!("container not bound to its scope: {reason}").into());
            e.insert("actor".into(), json!({ "app_name": "Warden" }));
            let verdict = if r.peek_str("decision") == Some("allow") {
                "started unbound (warden.dev/on-failure: open)"
            } else {
                "refused its start"
            };
            finish(e, &r, format!("container {verdict}: {reason}"))
        }
        "signal" | "ptrace" => {
            let (id, name, caption) =
                if kind == "ptrace" { (3, "Open", "Open") } else { (OTHER, "Signal", "Other") };
            let mut e = base(&mut r, PROCESS, id, name, caption, ctx);
            let actor = process_obj(&mut r);
            let target = r.int("target_pid");
            let mut p = Map::new();
            if let Some(t) = target {
                p.insert("pid".into(), t.into());
            }
            let what = if kind == "ptrace" {
                if let Some(mode) = r.int("arg") {
                    e.insert("requested_permissions".into(), mode.into());
                }
                "ptrace access to".to_string()
            } else {
                format!("signal {} to", r.int("signal").map_or("?".into(), |s| s.to_string()))
            };
            let msg = format!("{what} process {}{out}", target.map_or("?".into(), |t| t.to_string()));
            e.insert("actor".into(), json!({ "process": actor }));
            e.insert("process".into(), Value::Object(p));
            finish(e, &r, msg)
        }
        "open" | "mmap" | "mount" | "unix_connect" => {
            let (id, name, caption, type_id) = match kind {
                "open" => (14, "Open", "Open", 0),
                // A connection to a path-named unix socket: the socket file is opened.
                "unix_connect" => (14, "Open", "Open", 5),
                "mount" => (12, "Mount", "Mount", 2),
                _ => (OTHER, "Map Executable", "Other", EXECUTABLE_FILE),
            };
            let mut e = base(&mut r, FILE, id, name, caption, ctx);
            let actor = process_obj(&mut r);
            let path = r.str("path");
            let identity = r.int("dev").zip(r.int("ino"));
            if let Some(mask) = r.int("arg") {
                // open: f_mode; mmap: prot; mount: flags.
                e.insert("access_mask".into(), mask.into());
            }
            e.insert("actor".into(), json!({ "process": actor }));
            e.insert("file".into(), file_obj(path, type_id, identity));
            finish(e, &r, format!("{kind} {}{out}", path.unwrap_or("?")))
        }
        "file" => {
            let (id, name, caption, type_id, verb) = file_change(r.peek_int("arg"));
            let mut e = base(&mut r, FILE, id, name, caption, ctx);
            let actor = process_obj(&mut r);
            let path = r.str("path");
            let identity = r.int("dev").zip(r.int("ino"));
            // `arg` (the operation) stays in `unmapped`: several operations share an activity.
            e.insert("actor".into(), json!({ "process": actor }));
            e.insert("file".into(), file_obj(path, type_id, identity));
            finish(e, &r, format!("{verb} {}{out}", path.unwrap_or("?")))
        }
        "module" => {
            let mut e = base(&mut r, KEXT, 1, "Load", "Load", ctx);
            let actor = process_obj(&mut r);
            let path = r.str("path");
            let identity = r.int("dev").zip(r.int("ino"));
            e.insert("actor".into(), json!({ "process": actor }));
            e.insert("driver".into(), json!({ "file": file_obj(path, 1, identity) }));
            finish(e, &r, format!("kernel module load {}{out}", path.unwrap_or("(from memory)")))
        }
        "bpf" => {
            let mut e = base(&mut r, KERNEL, 4, "Invoke", "Invoke", ctx);
            let actor = process_obj(&mut r);
            let cmd = r.int("arg");
            let mut k = json!({ "name": "bpf", "type_id": 2, "type": "System Call", "system_call": "bpf" });
            if let Some(c) = cmd {
                k["name"] = format!("bpf cmd {c}").into();
            }
            e.insert("actor".into(), json!({ "process": actor }));
            e.insert("kernel".into(), k);
            finish(e, &r, format!("bpf() command {}{out}", cmd.map_or("?".into(), |c| c.to_string())))
        }
        "connect" | "sendmsg" => network(&mut r, kind, out, ctx),
        "dns" => dns(&mut r, out, ctx),
        "gap" => {
            let mut e = base(&mut r, EVENT_LOG, OTHER, "Records Lost", "Other", ctx);
            let drops = r.int("drops").unwrap_or(0);
            let errors = r.int("decode_errors").unwrap_or(0);
            e.insert("severity_id".into(), 3.into());
            e.insert("severity".into(), "Medium".into());
            e.insert("status_id".into(), 2.into());
            e.insert("status".into(), "Failure".into());
            e.insert(
                "status_detail".into(),
                format!("{drops} record(s) dropped in the kernel, {errors} malformed").into(),
            );
            e.insert("actor".into(), json!({ "app_name": "Warden" }));
            e.insert("log_provider".into(), "Warden".into());
            finish(e, &r, format!("evidence gap: {drops} record(s) lost, {errors} malformed"))
        }
        _ => return None,
    })
}

/// A `file` record's operation (`arg`, docs/events.md) → File System Activity `activity_id`,
/// `activity_name`, type caption, `file.type_id` and the verb for `message`.
fn file_change(op: Option<i64>) -> (i64, &'static str, &'static str, i64, &'static str) {
    match op {
        Some(1) => (1, "Create", "Create", UNKNOWN_FILE, "create"),
        Some(2) => (1, "Create", "Create", FOLDER, "mkdir"),
        Some(3) => (1, "Create", "Create", SYMBOLIC_LINK, "symlink"),
        // The record names the existing file, not the new name: not a Create of that file.
        Some(4) => (OTHER, "Link", "Other", UNKNOWN_FILE, "hard link to"),
        Some(5) => (5, "Rename", "Rename", UNKNOWN_FILE, "rename"),
        Some(6) => (4, "Delete", "Delete", UNKNOWN_FILE, "unlink"),
        Some(7) => (4, "Delete", "Delete", FOLDER, "rmdir"),
        Some(8) => (3, "Update", "Update", REGULAR_FILE, "truncate"),
        Some(9) => (5, "Rename", "Rename", UNKNOWN_FILE, "rename (exchange)"),
        _ => (OTHER, "File Change", "Other", UNKNOWN_FILE, "file change"),
    }
}

/// connect/sendmsg: Network Activity Open (a connect) or Traffic (a datagram), whatever the
/// port: a query's name is in the `dns` record. A refused connect is Open with action Denied
/// and disposition Blocked (activity Refuse would say the remote side refused).
fn network(r: &mut Rec<'_>, kind: &str, out: &str, ctx: &Context) -> Value {
    let mut e = if kind == "sendmsg" {
        base(r, NET, 6, "Traffic", "Traffic", ctx)
    } else {
        base(r, NET, 1, "Open", "Open", ctx)
    };
    let actor = process_obj(r);
    let addr = r.str("addr");
    let port = r.int("port");
    let proto = r.str("protocol");
    let mut dst = Map::new();
    if let Some(a) = addr {
        dst.insert("ip".into(), a.into());
    }
    if let Some(p) = port {
        dst.insert("port".into(), p.into());
    }
    let mut conn = Map::new();
    conn.insert("direction_id".into(), 2.into());
    conn.insert("direction".into(), "Outbound".into());
    let num = match proto {
        Some("tcp") => Some(6),
        Some("udp") => Some(17),
        Some(n) => n.parse::<i64>().ok(),
        None => None,
    };
    if let Some(p) = proto {
        conn.insert("protocol_name".into(), p.into());
    }
    if let Some(n) = num {
        conn.insert("protocol_num".into(), n.into());
    }
    if let Some(a) = addr {
        let ver = if a.contains(':') { 6 } else { 4 };
        conn.insert("protocol_ver_id".into(), ver.into());
        conn.insert(
            "protocol_ver".into(),
            (if ver == 6 {
                "Internet Protocol version 6 (IPv6)"
            } else {
                "Internet Protocol version 4 (IPv4)"
            })
            .into(),
        );
    }
    e.insert("actor".into(), json!({ "process": actor }));
    e.insert("dst_endpoint".into(), Value::Object(dst));
    e.insert("connection_info".into(), Value::Object(conn));
    let what = kind;
    let host = match addr {
        Some(a) if a.contains(':') => format!("[{a}]"),
        a => a.unwrap_or("?").to_string(),
    };
    let msg = format!(
        "{what} to {host}:{} {}{out}",
        port.map_or("?".into(), |p| p.to_string()),
        proto.unwrap_or("?")
    );
    finish(e, r, msg)
}

/// dns: DNS Activity Traffic (the task's query and Warden's answer, in one record), with
/// `query`, the kept `answers`, `rcode` and `response_time` (ms). Dropped answers, the
/// granting host rule and the exact latency stay in `unmapped`.
fn dns(r: &mut Rec<'_>, out: &str, ctx: &Context) -> Value {
    let mut e = base(r, DNS, 6, "Traffic", "Traffic", ctx);
    let name = r.str("query").unwrap_or("");
    let qtype = r.str("qtype").unwrap_or("");
    e.insert("query".into(), json!({ "hostname": name, "type": qtype, "class": "IN" }));
    let answers: Vec<Value> = r
        .v
        .get("answers")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(|ip| json!({ "rdata": ip, "type": if ip.contains(':') { "AAAA" } else { "A" }, "class": "IN" }))
                .collect()
        })
        .unwrap_or_default();
    r.used.insert("answers");
    e.insert("answers".into(), answers.into());
    let rcode = r.str("rcode");
    let (rcode_id, caption) = match rcode {
        Some("NOERROR") => (0, "NoError"),
        Some("FORMERR") => (1, "FormError"),
        Some("SERVFAIL") => (2, "ServError"),
        Some("NXDOMAIN") => (3, "NXDomain"),
        Some("NOTIMP") => (4, "NotImp"),
        Some("REFUSED") => (5, "Refused"),
        _ => (OTHER, "Other"),
    };
    e.insert("rcode_id".into(), rcode_id.into());
    e.insert("rcode".into(), caption.into());
    if let Some(us) = r.peek_int("latency_us") {
        e.insert("response_time".into(), (us / 1000).into());
    }
    let actor = process_obj(r);
    e.insert("actor".into(), json!({ "process": actor }));
    if let Some(p) = r.str("protocol") {
        e.insert(
            "connection_info".into(),
            json!({ "protocol_name": p, "direction_id": 2, "direction": "Outbound" }),
        );
    }
    finish(e, r, format!("DNS {qtype} {name}: {}{out}", rcode.unwrap_or("?")))
}

/// OCSF `severity_id` of a rule severity.
fn finding_severity(s: Severity) -> i64 {
    match s {
        Severity::Info => 1,
        Severity::Low => 2,
        Severity::Medium => 3,
        Severity::High => 4,
        Severity::Critical => 5,
    }
}

/// Maps a rule finding to a Detection Finding (2004), activity Create. `finding_info.uid` is
/// `task/rule/seq` (the record that completed it: unique, and the same on every replay);
/// `related_events` name the records that made it fire by their event uids.
pub fn finding(f: &Finding, ctx: &Context) -> Value {
    let severity_id = finding_severity(f.severity);
    let time = epoch_ms(&f.time);
    let last = f.seqs.last().copied().unwrap_or(0);
    let related: Vec<Value> = f.seqs.iter().map(|s| json!({ "uid": event_uid(&f.task, *s) })).collect();
    let mut e = json!({
        "class_uid": FINDING.uid,
        "class_name": FINDING.name,
        "category_uid": FINDING.category_uid,
        "category_name": FINDING.category_name,
        "activity_id": 1,
        "activity_name": "Create",
        "type_uid": i64::from(FINDING.uid) * 100 + 1,
        "type_name": format!("{}: Create", FINDING.name),
        "time": time,
        "timezone_offset": 0,
        "severity_id": severity_id,
        "severity": severity_name(severity_id),
        "status_id": 1,
        "status": "New",
        "is_alert": true,
        "message": f.description,
        "metadata": {
            "version": OCSF_VERSION,
            "product": product(),
            "profiles": ["host"],
            "uid": format!("{}/{}/{last}", f.task, f.rule),
            "correlation_uid": f.task,
            "event_code": "finding",
            "original_time": f.time,
            "log_name": "warden-findings",
        },
        "finding_info": {
            "uid": format!("{}/{}/{last}", f.task, f.rule),
            "title": f.description,
            "desc": f.description,
            "analytic": { "uid": f.rule, "name": f.rule, "type_id": 1, "type": "Rule" },
            "last_seen_time": time,
            "related_events": related,
            "related_events_count": f.seqs.len(),
        },
        "device": device(ctx.hostname_of(&f.task)),
    });
    if let Some(pid) = f.pid {
        let p = json!({ "pid": pid, "sandbox": f.task });
        e["actor"] = json!({ "process": p.clone() });
        e["evidences"] = json!([{ "process": p }]);
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Context {
        Context { hostname: Some("node-1".into()), ..Default::default() }
    }

    fn rec(extra: Value) -> Value {
        let mut r = json!({
            "v": 2, "seq": 7, "time": "2026-11-22T14:57:36.190211562Z", "task": "t-00", "decision": "allow",
            "pid": 100, "ppid": 99, "exe": "/usr/bin/sh", "comm": "sh", "uid": 0, "cgroup_id": 5,
            "prev": "p", "hash": "h",
        });
        r.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        r
    }

    #[test]
    fn a_pods_records_carry_the_container_profile() {
        let pod = json!({"pod": {"uid": "3d1f0b8e-5c2a-4f6e-9a7b-0c1d2e3f4a5b", "namespace": "agents",
            "name": "agent-1", "container": "runner", "container_id": "ab12", "runtime": "containerd"},
            "kind": "exec", "path": "/usr/bin/id", "decision": "deny", "action": "kill", "rule": "exec.allow"});
        let e = record(&rec(pod), &ctx()).unwrap();
        assert_common(&e, 1007, 1);
        let c = &e["container"];
        assert_eq!(c["uid"], "ab12");
        assert_eq!(c["name"], "runner");
        assert_eq!(c["pod_uuid"], "3d1f0b8e-5c2a-4f6e-9a7b-0c1d2e3f4a5b");
        assert_eq!(c["orchestrator"], "Kubernetes");
        assert_eq!(
            c["labels"],
            json!(["io.kubernetes.pod.namespace=agents", "io.kubernetes.pod.name=agent-1"])
        );
        assert!(e["metadata"]["profiles"].as_array().unwrap().iter().any(|p| p == "container"));
        assert!(e["unmapped"].get("pod").is_none(), "the pod is mapped, not repeated");
        let failed = json!({"v": 2, "seq": 1, "time": "2026-11-22T14:57:36.190211562Z", "task": "unbound-ab12",
            "kind": "bind_failed", "decision": "deny", "reason": "no scope x", "prev": "p", "hash": "h",
            "pod": {"uid": "u", "container_id": "ab12"}});
        let e = record(&failed, &ctx()).unwrap();
        assert_eq!((e["class_uid"].as_i64(), e["action"].as_str()), (Some(1007), Some("Denied")));
        assert_eq!(e["container"]["uid"], "ab12");
        assert!(e["status_detail"].as_str().unwrap().contains("no scope x"), "{e}");
        // Without a pod: no container object, no container profile.
        let e = record(&rec(json!({"kind": "exec", "path": "/usr/bin/id"})), &ctx()).unwrap();
        assert!(e.get("container").is_none());
        assert!(!e["metadata"]["profiles"].as_array().unwrap().iter().any(|p| p == "container"));
    }

    /// Fields every event carries, whatever its class.
    fn assert_common(e: &Value, class_uid: u64, activity_id: u64) {
        assert_eq!(e["class_uid"], class_uid);
        assert_eq!(e["activity_id"], activity_id);
        assert_eq!(e["type_uid"], class_uid * 100 + activity_id);
        assert_eq!(e["category_uid"], class_uid / 1000);
        assert_eq!(e["time"], 1_795_359_456_190_i64, "epoch ms");
        assert_eq!(e["metadata"]["version"], OCSF_VERSION);
        assert_eq!(e["metadata"]["product"]["name"], "Warden");
        assert_eq!(e["metadata"]["correlation_uid"], "t-00");
        assert_eq!(e["metadata"]["uid"], "t-00/7");
        assert_eq!(e["metadata"]["original_time"], "2026-11-22T14:57:36.190211562Z");
        assert_eq!(e["device"]["hostname"], "node-1");
        assert!(e["severity_id"].is_i64() && e["message"].is_string());
        // The chain fields are not mapped, so they are kept.
        assert_eq!(e["unmapped"]["hash"], "h");
        assert_eq!(e["unmapped"]["cgroup_id"], 5);
        assert!(e["unmapped"].get("pid").is_none() && e["unmapped"].get("task").is_none());
    }

    #[test]
    fn exec_is_a_process_launch_of_type_exec() {
        let e = record(&rec(json!({"kind": "exec", "path": "/usr/bin/id", "exe": "/usr/bin/id", "comm": "id", "dev": 2049, "ino": 77})), &ctx()).unwrap();
        assert_common(&e, 1007, 1);
        assert_eq!(e["activity_name"], "Launch");
        assert_eq!(e["type_name"], "Process Activity: Launch");
        assert_eq!(e["launch_type_id"], 3);
        assert_eq!(e["process"]["pid"], 100);
        assert_eq!(e["process"]["name"], "id");
        assert_eq!(e["process"]["parent_process"]["pid"], 99);
        assert_eq!(e["process"]["user"]["uid"], "0");
        assert_eq!(e["process"]["sandbox"], "t-00");
        assert_eq!(e["process"]["file"]["path"], "/usr/bin/id");
        assert_eq!(e["process"]["file"]["name"], "id");
        assert_eq!(e["process"]["file"]["type_id"], 8);
        assert_eq!(e["process"]["file"]["uid"], "2049:77");
        assert_eq!(e["actor"]["process"]["pid"], 100);
        assert!(e["actor"]["process"].get("file").is_none(), "same image: not repeated");
        assert_eq!((e["action_id"].clone(), e["disposition_id"].clone()), (json!(1), json!(1)));
        assert_eq!(e["status_id"], 1);
        assert_eq!(e["is_alert"], false);
        assert_eq!(e["metadata"]["profiles"], json!(["host", "security_control"]));
        assert!(e.get("unmapped").unwrap().get("exe").is_none(), "exe is the exec'd path");
        // A symlink: exec'd as /bin/sh, the process table says /usr/bin/dash.
        let s =
            record(&rec(json!({"kind": "exec", "path": "/bin/sh", "exe": "/usr/bin/dash"})), &ctx()).unwrap();
        assert_eq!(s["process"]["file"]["path"], "/bin/sh");
        assert_eq!(s["unmapped"]["exe"], "/usr/bin/dash");
    }

    #[test]
    fn decisions_map_to_action_disposition_status_and_policy() {
        let deny = record(
            &rec(json!({"kind": "exec", "decision": "deny", "action": "kill", "rule": "exec.allow", "ancestry": [99, 1], "path": "/usr/bin/id"})),
            &ctx(),
        )
        .unwrap();
        assert_eq!(deny["action_id"], 2);
        assert_eq!(deny["action"], "Denied");
        assert_eq!(deny["disposition_id"], 2);
        assert_eq!(deny["disposition"], "Blocked");
        assert_eq!(deny["status_id"], 2);
        assert_eq!(deny["severity_id"], 2);
        assert_eq!(deny["is_alert"], true);
        assert_eq!(deny["policy"]["name"], "exec.allow");
        assert!(deny["status_detail"].as_str().unwrap().contains("SIGKILL"));
        assert_eq!(deny["process"]["ancestry"], json!([{"pid": 99}, {"pid": 1}]));
        assert!(deny["message"].as_str().unwrap().ends_with("(killed)"));
        assert!(deny.get("unmapped").unwrap().get("action").is_none(), "action is mapped");

        let audit = record(
            &rec(json!({"kind": "connect", "decision": "audit", "rule": "network.egress", "addr": "10.0.0.1", "port": 443, "protocol": "tcp"})),
            &ctx(),
        )
        .unwrap();
        assert_eq!((audit["action_id"].clone(), audit["action"].clone()), (json!(3), json!("Observed")));
        assert_eq!(
            (audit["disposition_id"].clone(), audit["disposition"].clone()),
            (json!(15), json!("Detected"))
        );
        assert_eq!(audit["status_id"], 1, "the call went through");
        assert_eq!(audit["severity_id"], 3);
        assert_eq!(audit["policy"]["is_applied"], false);
    }

    #[test]
    fn fork_launches_the_child_with_the_parent_as_actor() {
        let e = record(&rec(json!({"kind": "fork", "child_pid": 101})), &ctx()).unwrap();
        assert_common(&e, 1007, 1);
        assert_eq!(e["launch_type_id"], 2);
        assert_eq!(e["launch_type"], "Fork");
        assert_eq!(e["actor"]["process"]["pid"], 100);
        assert_eq!(e["actor"]["process"]["file"]["path"], "/usr/bin/sh");
        assert_eq!(e["process"]["pid"], 101);
        assert_eq!(e["process"]["parent_process"]["pid"], 100);
        assert_eq!(e["process"]["file"]["path"], "/usr/bin/sh");
    }

    #[test]
    fn exit_terminates_with_exit_code_or_signal() {
        let e = record(&rec(json!({"kind": "exit", "exit_status": 3})), &ctx()).unwrap();
        assert_common(&e, 1007, 2);
        assert_eq!(e["activity_name"], "Terminate");
        assert_eq!(e["exit_code"], 3);
        assert_eq!(e["process"]["pid"], 100);
        assert_eq!(e["actor"]["process"]["pid"], 100, "reflexive");
        let k = record(&rec(json!({"kind": "exit", "signal": 9})), &ctx()).unwrap();
        assert!(k.get("exit_code").is_none());
        assert!(k["message"].as_str().unwrap().contains("signal 9"));
        let end = record(
            &rec(json!({"kind": "task_end", "exit_status": 0, "reason": "exited", "killed": 0, "drops": 0})),
            &ctx(),
        )
        .unwrap();
        assert_eq!(end["type_uid"], 100702);
        assert_eq!(end["unmapped"]["drops"], 0);
    }

    #[test]
    fn task_start_is_a_spawn_with_the_command_line() {
        let e = record(
            &rec(json!({"kind": "task_start", "scope": "s.yaml", "cmd": ["/bin/sh", "-c", "id"], "mode": "enforce", "cgroup": "/sys/fs/cgroup/warden/t-00"})),
            &ctx(),
        )
        .unwrap();
        assert_common(&e, 1007, 1);
        assert_eq!(e["launch_type_id"], 1);
        assert_eq!(e["process"]["cmd_line"], "/bin/sh -c id");
        assert_eq!(e["actor"]["process"]["pid"], 99);
        assert_eq!(e["unmapped"]["cgroup"], "/sys/fs/cgroup/warden/t-00");
    }

    #[test]
    fn open_and_mmap_are_file_system_activity() {
        let e = record(
            &rec(json!({"kind": "open", "decision": "deny", "action": "refuse", "rule": "secrets", "path": "/run/secrets/gh", "dev": 2049, "ino": 9, "arg": 1})),
            &ctx(),
        )
        .unwrap();
        assert_common(&e, 1001, 14);
        assert_eq!(e["activity_name"], "Open");
        assert_eq!(e["file"]["path"], "/run/secrets/gh");
        assert_eq!(e["file"]["name"], "gh");
        assert_eq!(e["file"]["type_id"], 0);
        assert_eq!(e["file"]["uid"], "2049:9");
        assert_eq!(e["access_mask"], 1);
        assert_eq!(e["actor"]["process"]["pid"], 100);
        assert_eq!(e["disposition_id"], 2);
        let m = record(&rec(json!({"kind": "mmap", "path": "/tmp/lib.so", "arg": 4})), &ctx()).unwrap();
        assert_common(&m, 1001, 99);
        assert_eq!(m["activity_name"], "Map Executable");
        assert_eq!(m["type_name"], "File System Activity: Other");
        assert_eq!(m["file"]["type_id"], 8);
        let mt = record(
            &rec(json!({"kind": "mount", "decision": "deny", "action": "refuse", "rule": "protected.mount"})),
            &ctx(),
        )
        .unwrap();
        assert_eq!(mt["type_uid"], 100112);
        assert_eq!(mt["file"]["name"], "unknown");
    }

    #[test]
    fn file_tree_changes_are_file_system_activity() {
        // A refused unlink (BPF LSM `path_unlink`): Delete, Denied/Blocked, EACCES.
        let e = record(
            &rec(json!({"kind": "file", "decision": "deny", "action": "refuse", "rule": "files.write", "path": "/etc/passwd", "dev": 2049, "ino": 12, "arg": 6, "ancestry": [99, 1]})),
            &ctx(),
        )
        .unwrap();
        assert_common(&e, 1001, 4);
        assert_eq!(e["class_name"], "File System Activity");
        assert_eq!(e["activity_name"], "Delete");
        assert_eq!(e["type_name"], "File System Activity: Delete");
        assert_eq!(e["file"]["path"], "/etc/passwd");
        assert_eq!(e["file"]["name"], "passwd");
        assert_eq!(e["file"]["type_id"], 0);
        assert_eq!(e["file"]["uid"], "2049:12");
        assert_eq!(e["actor"]["process"]["pid"], 100);
        assert_eq!(e["actor"]["process"]["ancestry"], json!([{"pid": 99}, {"pid": 1}]));
        assert_eq!((e["action_id"].clone(), e["action"].clone()), (json!(2), json!("Denied")));
        assert_eq!((e["disposition_id"].clone(), e["disposition"].clone()), (json!(2), json!("Blocked")));
        assert_eq!(e["status_id"], 2);
        assert_eq!(e["is_alert"], true);
        assert_eq!(
            e["status_detail"], "refused (EACCES): not allowed by the task scope's files.write",
            "files are refused with EACCES"
        );
        assert_eq!(
            e["policy"],
            json!({"name": "files.write", "type": "Warden task scope", "is_applied": true})
        );
        assert_eq!(e["message"], "unlink /etc/passwd (refused)");
        assert_eq!(e["unmapped"]["arg"], 6, "the operation is kept verbatim");
        assert!(e["unmapped"].get("path").is_none() && e["unmapped"].get("dev").is_none());
        // Audit mode: Observed/Detected, the call went through.
        let a = record(
            &rec(json!({"kind": "file", "decision": "audit", "action": "refuse", "rule": "files.deny", "path": "/work/.git", "arg": 2, "path_truncated": true})),
            &ctx(),
        )
        .unwrap();
        assert_common(&a, 1001, 1);
        assert_eq!((a["action_id"].clone(), a["disposition_id"].clone()), (json!(3), json!(15)));
        assert_eq!(a["status_id"], 1);
        assert_eq!(a["file"]["type_id"], 2);
        assert_eq!(a["file"]["type"], "Folder");
        assert!(a["file"].get("uid").is_none(), "no identity for a file that does not exist yet");
        assert_eq!(a["message"], "mkdir /work/.git (audit: would have been refused)");
        assert_eq!(a["unmapped"]["path_truncated"], true);
        // Every operation of docs/events.md.
        for (op, activity_id, activity_name, type_id, verb) in [
            (1, 1, "Create", 0, "create"),
            (2, 1, "Create", 2, "mkdir"),
            (3, 1, "Create", 7, "symlink"),
            (4, 99, "Link", 0, "hard link to"),
            (5, 5, "Rename", 0, "rename"),
            (6, 4, "Delete", 0, "unlink"),
            (7, 4, "Delete", 2, "rmdir"),
            (8, 3, "Update", 1, "truncate"),
            (9, 5, "Rename", 0, "rename (exchange)"),
            (42, 99, "File Change", 0, "file change"),
        ] {
            let e = record(
                &rec(json!({"kind": "file", "decision": "deny", "action": "refuse", "rule": "files.deny", "path": "/x/y", "arg": op})),
                &ctx(),
            )
            .unwrap();
            assert_common(&e, 1001, activity_id);
            assert_eq!(e["activity_name"], activity_name, "op {op}");
            assert_eq!(e["file"]["type_id"], type_id, "op {op}");
            assert_eq!(e["message"], format!("{verb} /x/y (refused)"), "op {op}");
        }
    }

    #[test]
    fn device_hostname_is_the_tasks_node_unless_overridden() {
        let start = json!({"v": 2, "seq": 1, "time": "2026-11-22T14:57:36.190211562Z", "task": "t-00", "kind": "task_start", "decision": "allow", "pid": 100, "ppid": 99, "node": "build-7", "scope": "s.yaml", "cmd": ["true"]});
        let exec = rec(json!({"kind": "exec", "path": "/usr/bin/id"}));
        let other = json!({"v": 2, "seq": 1, "time": "2026-11-22T14:57:36.190211562Z", "task": "t-01", "kind": "exit", "decision": "allow", "pid": 5, "exit_status": 0});
        let mut ctx = Context { fallback_hostname: Some("replayer".into()), ..Default::default() };
        // task_start names its own node, learnt or not; `node` is then consumed.
        let s = record(&start, &ctx).unwrap();
        assert_eq!(s["device"]["hostname"], "build-7");
        assert!(s["unmapped"].get("node").is_none(), "{s}");
        // Before the task's task_start is seen: the fallback (the replaying host).
        assert_eq!(record(&exec, &ctx).unwrap()["device"]["hostname"], "replayer");
        for r in [&start, &exec, &other] {
            ctx.learn(r);
        }
        assert_eq!(record(&exec, &ctx).unwrap()["device"]["hostname"], "build-7");
        // Another task whose node is unknown.
        assert_eq!(record(&other, &ctx).unwrap()["device"]["hostname"], "replayer");
        let f = Finding {
            rule: "r".into(),
            severity: Severity::Low,
            description: "d".into(),
            task: "t-00".into(),
            pid: None,
            seqs: vec![7],
            time: "2026-11-22T14:57:36.190211562Z".into(),
        };
        assert_eq!(finding(&f, &ctx)["device"]["hostname"], "build-7");
        // --host overrides; the recorded node is kept in `unmapped`.
        ctx.hostname = Some("node-1".into());
        assert_eq!(record(&exec, &ctx).unwrap()["device"]["hostname"], "node-1");
        let s = record(&start, &ctx).unwrap();
        assert_eq!(s["device"]["hostname"], "node-1");
        assert_eq!(s["unmapped"]["node"], "build-7");
        assert_eq!(finding(&f, &ctx)["device"]["hostname"], "node-1");
        // Nothing known, no fallback: no hostname.
        let bare = Context::default();
        assert!(record(&exec, &bare).unwrap()["device"].get("hostname").is_none());
        // An empty node (gethostname failed) names nothing.
        let mut c = Context::default();
        let mut blank = start.clone();
        blank["node"] = "".into();
        c.learn(&blank);
        assert!(record(&exec, &c).unwrap()["device"].get("hostname").is_none());
    }

    #[test]
    fn connect_and_sendmsg_are_network_activity() {
        let c = record(
            &rec(json!({"kind": "connect", "addr": "10.1.2.3", "port": 443, "protocol": "tcp"})),
            &ctx(),
        )
        .unwrap();
        assert_common(&c, 4001, 1);
        assert_eq!(c["dst_endpoint"], json!({"ip": "10.1.2.3", "port": 443}));
        assert_eq!(c["connection_info"]["direction_id"], 2);
        assert_eq!(c["connection_info"]["protocol_num"], 6);
        assert_eq!(c["connection_info"]["protocol_ver_id"], 4);
        assert_eq!(c["actor"]["process"]["pid"], 100);
        let d = record(
            &rec(json!({"kind": "connect", "decision": "deny", "action": "refuse", "rule": "network.egress", "addr": "::1", "port": 8080, "protocol": "tcp"})),
            &ctx(),
        )
        .unwrap();
        assert_eq!(d["activity_id"], 1, "a refused connect is an Open that was denied");
        assert_eq!((d["action_id"].clone(), d["disposition_id"].clone()), (json!(2), json!(2)));
        assert_eq!(d["connection_info"]["protocol_ver_id"], 6);
        assert_eq!(d["message"], "connect to [::1]:8080 tcp (refused)");
        let s = record(
            &rec(json!({"kind": "sendmsg", "addr": "10.1.2.3", "port": 9, "protocol": "udp"})),
            &ctx(),
        )
        .unwrap();
        assert_common(&s, 4001, 6);
        assert_eq!(s["connection_info"]["protocol_num"], 17);
    }

    #[test]
    fn port_53_is_network_activity_and_dns_records_are_dns_activity() {
        let e = record(
            &rec(json!({"kind": "sendmsg", "addr": "8.8.8.8", "port": 53, "protocol": "udp"})),
            &ctx(),
        )
        .unwrap();
        assert_common(&e, 4001, 6);
        let q = record(
            &rec(json!({"kind": "dns", "decision": "allow", "rule": "network.egress", "protocol": "udp",
                "query": "api.github.com", "qtype": "A", "host": "api.github.com",
                "answers": ["140.82.112.3", "2606:4700::1"], "dropped": ["10.0.0.1 (private)"],
                "rcode": "NOERROR", "latency_us": 2500})),
            &ctx(),
        )
        .unwrap();
        assert_common(&q, 4003, 6);
        assert_eq!(q["query"], json!({"hostname": "api.github.com", "type": "A", "class": "IN"}));
        assert_eq!(q["answers"][1], json!({"rdata": "2606:4700::1", "type": "AAAA", "class": "IN"}));
        assert_eq!((q["rcode_id"].clone(), q["response_time"].clone()), (json!(0), json!(2)));
        assert_eq!(q["unmapped"]["dropped"], json!(["10.0.0.1 (private)"]));
        let d = record(
            &rec(json!({"kind": "dns", "decision": "deny", "action": "refuse", "rule": "network.egress",
                "query": "x.evil.example", "qtype": "TXT", "answers": [], "rcode": "REFUSED"})),
            &ctx(),
        )
        .unwrap();
        assert_eq!(
            (d["rcode_id"].clone(), d["action_id"].clone(), d["disposition_id"].clone()),
            (json!(5), json!(2), json!(2))
        );
        assert_eq!(d["message"], "DNS TXT x.evil.example: REFUSED (refused)");
    }

    #[test]
    fn lsm_process_and_kernel_records() {
        let p = record(&rec(json!({"kind": "ptrace", "target_pid": 1, "arg": 2})), &ctx()).unwrap();
        assert_common(&p, 1007, 3);
        assert_eq!(p["process"]["pid"], 1);
        assert_eq!(p["requested_permissions"], 2);
        let s = record(&rec(json!({"kind": "signal", "target_pid": 1, "signal": 9})), &ctx()).unwrap();
        assert_common(&s, 1007, 99);
        assert_eq!(s["activity_name"], "Signal");
        let b = record(&rec(json!({"kind": "bpf", "arg": 5})), &ctx()).unwrap();
        assert_common(&b, 1003, 4);
        assert_eq!(b["kernel"]["type_id"], 2);
        let m = record(&rec(json!({"kind": "module", "path": "/tmp/x.ko"})), &ctx()).unwrap();
        assert_common(&m, 1002, 1);
        assert_eq!(m["driver"]["file"]["name"], "x.ko");
    }

    #[test]
    fn gaps_are_reported_and_checkpoints_have_no_counterpart() {
        let g = record(&json!({"v": 2, "seq": 7, "time": "2026-11-22T14:57:36.190211562Z", "task": "t-00", "kind": "gap", "drops": 4, "decode_errors": 0}), &ctx()).unwrap();
        assert_eq!(g["class_uid"], 1008);
        assert_eq!(g["status_id"], 2);
        assert!(g["message"].as_str().unwrap().contains("4 record(s) lost"));
        let c = json!({"v": 2, "seq": 8, "time": "t", "task": "t-00", "kind": "checkpoint", "key": "k", "sig": "s"});
        assert!(record(&c, &ctx()).is_none());
        assert!(record(&json!({"kind": "future-kind"}), &ctx()).is_none());
        assert!(record(&json!("not an object"), &ctx()).is_none());
    }

    #[test]
    fn findings_are_detection_findings() {
        let f = Finding {
            rule: "denial-burst".into(),
            severity: Severity::High,
            description: "five refusals".into(),
            task: "t-00".into(),
            pid: Some(100),
            seqs: vec![4, 7],
            time: "2026-11-22T14:57:36.190211562Z".into(),
        };
        let e = finding(&f, &ctx());
        assert_eq!(e["class_uid"], 2004);
        assert_eq!(e["category_uid"], 2);
        assert_eq!(e["type_uid"], 200401);
        assert_eq!(e["severity_id"], 4);
        assert_eq!(e["severity"], "High");
        assert_eq!(e["status_id"], 1);
        assert_eq!(e["time"], 1_795_359_456_190_i64);
        assert_eq!(e["finding_info"]["uid"], "t-00/denial-burst/7");
        assert_eq!(e["finding_info"]["analytic"]["uid"], "denial-burst");
        assert_eq!(e["finding_info"]["analytic"]["type_id"], 1);
        assert_eq!(e["finding_info"]["related_events"], json!([{"uid": "t-00/4"}, {"uid": "t-00/7"}]));
        assert_eq!(e["evidences"][0]["process"]["pid"], 100);
        assert_eq!(e["metadata"]["version"], OCSF_VERSION);
        let quiet = Finding { pid: None, severity: Severity::Info, ..f };
        let e = finding(&quiet, &Context::default());
        assert_eq!(e["severity_id"], 1);
        assert!(e.get("evidences").is_none());
        assert!(e["device"].get("hostname").is_none());
    }

    #[test]
    fn mapping_is_deterministic() {
        let r = rec(json!({"kind": "exec", "path": "/usr/bin/id"}));
        assert_eq!(
            serde_json::to_string(&record(&r, &ctx())).unwrap(),
            serde_json::to_string(&record(&r, &ctx())).unwrap()
        );
    }
}
