//! The OCSF mapping as it was before events were written straight to the output (a
//! `serde_json::Value` tree per event): kept, for tests only, as the reference the streaming
//! writer must match byte for byte (`ocsf::tests::writer_matches_the_tree_mapping`).
#![allow(dead_code)]
use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use super::{Context, OCSF_VERSION, epoch_ms, event_uid};

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

const FILE_SYSTEM_ACTIVITY: u32 = 1001;
const KERNEL_EXTENSION_ACTIVITY: u32 = 1002;
const KERNEL_ACTIVITY: u32 = 1003;
const PROCESS_ACTIVITY: u32 = 1007;
const EVENT_LOG_ACTIVITY: u32 = 1008;
const DETECTION_FINDING: u32 = 2004;
const NETWORK_ACTIVITY: u32 = 4001;
const DNS_ACTIVITY: u32 = 4003;

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
        Some(10) => (7, "Set Security", "Set Security", UNKNOWN_FILE, "chmod"),
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
