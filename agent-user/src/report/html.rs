//! The report as one HTML page: inline CSS and JS only, no network (a Content-Security-Policy
//! with `default-src 'none'` and hashes of the page's own style and script says so to the
//! browser). Every string taken from the log goes through [`Esc`].
use std::fmt::{self, Write as _};

use base64::Engine as _;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{
    CallSummary, Integrity, MAX_CALL_ROWS, MAX_CALLS, MAX_DENIALS, MAX_FINDINGS, MAX_TIMELINE_ALLOWED,
    MAX_TIMELINE_JUDGED, Report, Row,
    tree::{ProcNode, ProcessTree},
    usage::{Grant, Use},
};
use crate::rules::{Severity, engine::Finding};

/// Background of refused (`deny`) rows and exec entries: white text on this red.
pub const DENY_COLOUR: &str = "#d32f2f";
/// Background of `audit` (would have been refused) rows and exec entries.
pub const AUDIT_COLOUR: &str = "#ffb300";
/// Background of the process tree's container.
pub const TREE_COLOUR: &str = "#e6f0fa";

/// Processes drawn in the tree at most.
pub const MAX_TREE_NODES: usize = 5_000;

/// HTML-escapes text for element content and quoted attribute values.
pub struct Esc<'a>(pub &'a str);

impl fmt::Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut last = 0;
        for (i, c) in self.0.char_indices() {
            let rep = match c {
                '&' => "&amp;",
                '<' => "&lt;",
                '>' => "&gt;",
                '"' => "&quot;",
                '\'' => "&#39;",
                // Control characters (a NUL, an escape sequence) are shown, not passed on.
                c if c.is_control() && c != '\n' && c != '\t' => "\u{fffd}",
                _ => continue,
            };
            f.write_str(&self.0[last..i])?;
            f.write_str(rep)?;
            last = i + c.len_utf8();
        }
        f.write_str(&self.0[last..])
    }
}

/// Escapes `s` into a new string.
pub fn escape(s: &str) -> String {
    Esc(s).to_string()
}

const STYLE: &str = r#"
:root{--deny:#d32f2f;--audit:#ffb300;--tree:#e6f0fa}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d232a;background:#f7f8fa}
header{background:#263238;color:#fff;padding:14px 24px}
header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;color:#cfd8dc}
main{padding:4px 24px 48px}
section{margin:20px 0}
h2{font-size:17px;margin:0 0 8px;padding-bottom:4px;border-bottom:2px solid #cfd8dc}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{text-align:left;padding:3px 8px;border-bottom:1px solid #e3e6ea;vertical-align:top}
th{background:#eceff1;font-weight:600}
.mono,code,td.detail,td.exe{font-family:ui-monospace,"DejaVu Sans Mono",Menlo,monospace;font-size:12.5px;word-break:break-all}
td.exe{min-width:15em}
tr.deny td{background:var(--deny);color:#fff}
tr.audit td{background:var(--audit);color:#000}
tr.deny a{color:#fff}
.banner{padding:8px 12px;border-left:5px solid;background:#fff}
.banner.ok{border-color:#2e7d32;background:#edf7ee}
.banner.bad{border-color:#b71c1c;background:#fdecea}
.banner.warn{border-color:#8d6e00;background:#fff8e1}
.tree{background:var(--tree);padding:10px 14px;border-radius:6px}
.tree ul{list-style:none;margin:0;padding-left:22px;border-left:1px dashed #90a4ae}
.tree>ul{border-left:none;padding-left:0}
.tree li{margin:3px 0}
.tree .pid{display:inline-block;min-width:56px;font-weight:700;cursor:pointer;text-decoration:underline dotted}
.tree .exe{font-family:ui-monospace,"DejaVu Sans Mono",Menlo,monospace}
.tree .cmd{color:#37474f}
.tree .exit{margin-left:6px;padding:0 5px;border-radius:3px;background:#cfd8dc;font-size:12px}
.tree .exit.bad{background:#546e7a;color:#fff}
.tree .execs{margin-left:60px;font-size:12.5px}
.exec{display:inline-block;margin:1px 4px 1px 0;padding:0 5px;border-radius:3px;background:#fff;font-family:ui-monospace,"DejaVu Sans Mono",Menlo,monospace}
.exec.deny{background:var(--deny);color:#fff}
.exec.audit{background:var(--audit);color:#000}
.badge{display:inline-block;padding:0 6px;border-radius:3px;font-size:12px;font-weight:600;background:#cfd8dc}
.sev-high,.sev-critical{background:#4a148c;color:#fff}
.sev-medium{background:#7b1fa2;color:#fff}
.used{color:#1b5e20;font-weight:600}
tr.unused td{background:#fff8e1}
.hint{color:#6d4c00}
.controls{margin:6px 0;display:flex;gap:16px;align-items:center}
.controls input[type=search]{width:320px;padding:3px 6px}
#pid-filter{cursor:pointer;color:#0d47a1}
.muted{color:#607d8b}
.calls{list-style:none;padding-left:0}
.calls ul{list-style:none;margin:0;padding-left:22px;border-left:2px solid #b0bec5}
li.call{margin:6px 0;background:#fff;padding:4px 8px;border-radius:4px}
.call-name{font-weight:700;cursor:pointer;text-decoration:underline dotted}
.call .exit{margin-left:6px;padding:0 5px;border-radius:3px;background:#cfd8dc;font-size:12px}
.call .exit.bad{background:#546e7a;color:#fff}
.intent{margin:2px 0 2px 4px}
.intent-text{white-space:pre-wrap}
.call .cmd{color:#37474f;margin-left:4px}
"#;

const SCRIPT: &str = r#"
(function () {
  var rows = Array.prototype.slice.call(document.querySelectorAll('#timeline tbody tr'));
  var only = document.getElementById('only-judged');
  var q = document.getElementById('q');
  var shown = document.getElementById('shown');
  var label = document.getElementById('pid-filter');
  var proc = null, call = null, callName = '';
  function apply() {
    var text = q.value.toLowerCase(), n = 0;
    rows.forEach(function (r) {
      var judged = r.classList.contains('deny') || r.classList.contains('audit');
      var path = r.getAttribute('data-call');
      var show = (!only.checked || judged) &&
        (!text || r.textContent.toLowerCase().indexOf(text) >= 0) &&
        (proc === null || r.getAttribute('data-proc') === proc) &&
        (call === null || (path !== null && path.indexOf(call) === 0));
      r.hidden = !show;
      if (show) n++;
    });
    shown.textContent = n;
    label.textContent = proc !== null ? 'only process ' + proc.split(':')[1] + ' (click to show all)'
      : call !== null ? 'only call ' + callName + ' and the calls under it (click to show all)' : '';
  }
  only.addEventListener('change', apply);
  q.addEventListener('input', apply);
  label.addEventListener('click', function () { proc = null; call = null; apply(); });
  Array.prototype.forEach.call(document.querySelectorAll('.call-name'), function (e) {
    e.addEventListener('click', function () {
      var li = e.parentNode.parentNode;
      proc = null;
      call = li.getAttribute('data-call-path');
      callName = e.textContent;
      apply();
      document.getElementById('timeline').scrollIntoView();
    });
  });
  Array.prototype.forEach.call(document.querySelectorAll('.tree .pid'), function (e) {
    e.addEventListener('click', function () {
      proc = e.parentNode.getAttribute('data-proc');
      call = null;
      apply();
      document.getElementById('timeline').scrollIntoView();
    });
  });
  apply();
  document.documentElement.setAttribute('data-ready', '1');
})();
"#;

fn csp_hash(s: &str) -> String {
    format!("'sha256-{}'", base64::engine::general_purpose::STANDARD.encode(Sha256::digest(s.as_bytes())))
}

fn str_of<'a>(r: &'a Value, k: &str) -> &'a str {
    r.get(k).and_then(Value::as_str).unwrap_or("")
}

fn int_of(r: &Value, k: &str) -> Option<i64> {
    r.get(k).and_then(Value::as_i64)
}

/// `14:57:36.190` of an RFC 3339 time (the whole string if it is not one).
fn clock(t: &str) -> &str {
    t.find('T').and_then(|i| t.get(i + 1..i + 13)).unwrap_or(t)
}

/// Task ids in order of appearance; their index names rows and processes in element ids.
fn tasks(report: &Report) -> Vec<&str> {
    report.tasks.iter().map(|t| t.id.as_str()).collect()
}

/// The one-line detail of a record, by kind (unescaped).
fn detail(r: &Value) -> String {
    let n = |k| int_of(r, k).map_or("?".to_string(), |v| v.to_string());
    match str_of(r, "kind") {
        "exec" | "open" | "mmap" | "mount" | "module" => {
            let mut s = str_of(r, "path").to_string();
            if let Some(a) = int_of(r, "arg") {
                let _ = write!(s, " (arg {a})");
            }
            s
        }
        "fork" => format!("child {}", n("child_pid")),
        "exit" => match (int_of(r, "exit_status"), int_of(r, "signal")) {
            (_, Some(sig)) => format!("killed by signal {sig}"),
            (Some(st), _) => format!("exit status {st}"),
            _ => "ended".into(),
        },
        "connect" | "sendmsg" => {
            format!("{} port {} {}", str_of(r, "addr"), n("port"), str_of(r, "protocol"))
        }
        "signal" => format!("signal {} to {}", n("signal"), n("target_pid")),
        "ptrace" => format!("access to {} (mode {})", n("target_pid"), n("arg")),
        "bpf" => format!("command {}", n("arg")),
        "task_start" => {
            let cmd: Vec<&str> = r
                .get("cmd")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            format!("{} (scope {}, {} mode)", cmd.join(" "), str_of(r, "scope"), str_of(r, "mode"))
        }
        "task_end" => {
            let how = match (int_of(r, "exit_status"), int_of(r, "signal")) {
                (_, Some(sig)) => format!("signal {sig}"),
                (Some(st), _) => format!("exit status {st}"),
                _ => "?".into(),
            };
            format!("{}: {how}; killed {}, drops {}", str_of(r, "reason"), n("killed"), n("drops"))
        }
        "call_start" => {
            let cmd: Vec<&str> = r
                .get("cmd")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            format!("{} started: {} (under {})", str_of(r, "call_name"), cmd.join(" "), str_of(r, "parent"))
        }
        "call_end" => {
            let how = match (int_of(r, "exit_status"), int_of(r, "signal")) {
                (_, Some(sig)) => format!("signal {sig}"),
                (Some(st), _) => format!("exit status {st}"),
                _ => "?".into(),
            };
            format!(
                "{} ended: {how} after {} ms; {} refused, {} records, drops {}",
                str_of(r, "call_name"),
                n("duration_ms"),
                n("denials"),
                n("events"),
                n("drops")
            )
        }
        "gap" => format!("{} dropped, {} malformed", n("drops"), n("decode_errors")),
        "checkpoint" => "signed chain head".into(),
        _ => String::new(),
    }
}

pub(super) fn decision_class(r: &Value) -> &'static str {
    match str_of(r, "decision") {
        "deny" => "deny",
        "audit" => "audit",
        _ => "",
    }
}

/// What a table row shows of a record of task `task_ix`.
pub(super) fn row_of(r: &Value, task_ix: usize) -> Row {
    let decision = str_of(r, "decision");
    let verdict = match (decision, str_of(r, "action")) {
        ("deny", "") => "deny".to_string(),
        ("deny", a) => format!("deny ({a})"),
        (d, _) => d.to_string(),
    };
    let who = match (str_of(r, "comm"), str_of(r, "exe")) {
        ("", e) => e.to_string(),
        (c, "") => c.to_string(),
        (c, e) => format!("{c} {e}"),
    };
    Row {
        seq: int_of(r, "seq").unwrap_or(0),
        time: str_of(r, "time").to_string(),
        task_ix,
        class: decision_class(r),
        pid: int_of(r, "pid"),
        kind: str_of(r, "kind").to_string(),
        verdict,
        who,
        detail: detail(r),
        rule: str_of(r, "rule").to_string(),
        call: None,
    }
}

/// The calls of a report as rows name them: each call's path of indices from its outermost
/// call (`/0/3/`, for filtering by a call and everything under it) and name. Empty when the log
/// has no calls (no call column then).
struct Calls<'a> {
    list: &'a [CallSummary],
    /// Each call's parent, where following parents ends (a damaged log could loop).
    parent: Vec<Option<usize>>,
    path: Vec<String>,
}

/// Nesting followed at most when drawing calls (the runtime allows fewer).
const MAX_CALL_DEPTH: usize = 64;

impl<'a> Calls<'a> {
    fn new(list: &'a [CallSummary]) -> Self {
        let mut parent = Vec::with_capacity(list.len());
        let mut path = Vec::with_capacity(list.len());
        for (i, _) in list.iter().enumerate() {
            let mut chain = vec![i];
            let mut at = i;
            let mut ok = true;
            while let Some(p) = list[at].parent {
                if chain.len() > MAX_CALL_DEPTH || chain.contains(&p) {
                    ok = false;
                    break;
                }
                chain.push(p);
                at = p;
            }
            if !ok {
                chain.truncate(1);
            }
            parent.push(if ok { list[i].parent } else { None });
            let mut s = String::from("/");
            for ix in chain.iter().rev() {
                let _ = write!(s, "{ix}/");
            }
            path.push(s);
        }
        Calls { list, parent, path }
    }

    fn any(&self) -> bool {
        !self.list.is_empty()
    }
}

fn row(out: &mut String, r: &Row, task_ids: &[&str], anchor: bool, calls: &Calls<'_>) {
    let (seq, pid, class, task_ix) = (r.seq, r.pid, r.class, r.task_ix);
    let multi = task_ids.len() > 1;
    out.push_str("<tr");
    if anchor {
        let _ = write!(out, " id=\"r-{task_ix}-{seq}\"");
    }
    if !class.is_empty() {
        let _ = write!(out, " class=\"{class}\"");
    }
    if let Some(p) = pid {
        let _ = write!(out, " data-proc=\"{task_ix}:{p}\"");
    }
    if let Some(c) = r.call {
        let _ = write!(out, " data-call=\"{}\"", calls.path[c]);
    }
    let time = &r.time;
    let _ = write!(out, "><td>{seq}</td><td title=\"{}\">{}</td>", Esc(time), Esc(clock(time)));
    if multi {
        let _ = write!(out, "<td class=\"mono\">{}</td>", Esc(task_ids.get(task_ix).copied().unwrap_or("")));
    }
    if calls.any() {
        match r.call.map(|c| &calls.list[c]) {
            Some(c) => {
                let _ = write!(out, "<td class=\"mono\" title=\"{}\">{}</td>", Esc(&c.id), Esc(&c.name));
            }
            None => out.push_str("<td></td>"),
        }
    }
    let _ = write!(
        out,
        "<td>{}</td><td>{}</td><td>{}</td><td class=\"exe\">{}</td><td class=\"detail\">{}</td><td>{}</td></tr>",
        Esc(&r.kind),
        Esc(&r.verdict),
        pid.map_or(String::new(), |p| p.to_string()),
        Esc(&r.who),
        Esc(&r.detail),
        Esc(&r.rule),
    );
}

fn table_head(out: &mut String, multi: bool, calls: bool) {
    out.push_str("<table><thead><tr><th>seq</th><th>time</th>");
    if multi {
        out.push_str("<th>task</th>");
    }
    if calls {
        out.push_str("<th>call</th>");
    }
    out.push_str(
        "<th>kind</th><th>decision</th><th>pid</th><th>process</th><th>detail</th><th>rule</th></tr></thead><tbody>",
    );
}

fn integrity(out: &mut String, report: &Report) {
    match &report.integrity {
        Integrity::Intact(v) => {
            let keys: Vec<&str> = v.keys.iter().map(String::as_str).collect();
            let _ = write!(
                out,
                "<section id=\"integrity\" class=\"banner ok\"><b>Log intact.</b> {} records of {} task(s); hash \
                 chains unbroken; {} signed checkpoint(s) verify{}.</section>",
                v.records,
                v.tasks.len(),
                v.checkpoints,
                if keys.is_empty() { String::new() } else { format!(" (key {})", Esc(&keys.join(", "))) }
            );
        }
        Integrity::Broken(e) => {
            let _ = write!(
                out,
                "<section id=\"integrity\" class=\"banner bad\"><b>Log NOT intact</b> — line {}: {}. What follows \
                 is what the log says; do not take it as evidence without checking <code>warden verify</code>.</section>",
                e.line,
                Esc(&e.reason)
            );
        }
    }
    if report.skipped_total > 0 {
        let _ = write!(
            out,
            "<section class=\"banner warn\"><b>{} line(s) could not be read and are left out.</b><ul>",
            report.skipped_total
        );
        for (line, why) in report.skipped.iter().take(20) {
            let _ = write!(out, "<li>line {line}: {}</li>", Esc(why));
        }
        out.push_str("</ul></section>");
    }
}

fn summary(out: &mut String, report: &Report, task_ids: &[&str]) {
    out.push_str(
        "<section id=\"summary\"><h2>Tasks</h2><table><thead><tr><th>task</th><th>command</th><th>scope</th>\
         <th>mode / engine</th><th>started</th><th>ended</th><th>records</th><th>refused</th><th>audit</th></tr>\
         </thead><tbody>",
    );
    for (task, t) in report.tasks.iter().zip(task_ids) {
        let (start, end) = (task.start.as_ref(), task.end.as_ref());
        let cmd = start.map(detail).unwrap_or_default();
        let cmd = cmd.split(" (scope ").next().unwrap_or("");
        let mode = start.map_or(String::new(), |s| {
            let mut m = format!("{} / {}", str_of(s, "mode"), str_of(s, "engine"));
            if let Some(u) = s.get("unenforced").and_then(Value::as_array)
                && !u.is_empty()
            {
                let names: Vec<&str> = u.iter().filter_map(Value::as_str).collect();
                let _ = write!(m, " (not enforced here: {})", names.join(", "));
            }
            m
        });
        let ended = end.map_or("not ended (log still open or cut)".to_string(), |e| {
            format!("{} — {}", clock(str_of(e, "time")), detail(e))
        });
        let _ = write!(
            out,
            "<tr><td class=\"mono\">{}</td><td class=\"mono\">{}</td><td class=\"mono\">{}</td><td>{}</td>\
             <td title=\"{}\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            Esc(t),
            Esc(cmd),
            Esc(start.map_or("", |s| str_of(s, "scope"))),
            Esc(&mode),
            Esc(start.map_or("", |s| str_of(s, "time"))),
            Esc(start.map_or("", |s| clock(str_of(s, "time")))),
            Esc(&ended),
            task.records,
            task.deny,
            task.audit,
        );
    }
    out.push_str("</tbody></table></section>");
}

fn denials(out: &mut String, report: &Report, task_ids: &[&str], calls: &Calls<'_>) {
    let total = report.denials_total;
    let _ = write!(out, "<section id=\"denials\"><h2>Refusals and audit-mode violations ({total})</h2>");
    if total == 0 {
        out.push_str("<p class=\"muted\">None: everything the task did was within its scope.</p></section>");
        return;
    }
    table_head(out, task_ids.len() > 1, calls.any());
    for r in &report.denials {
        row(out, r, task_ids, false, calls);
    }
    out.push_str("</tbody></table>");
    if total > report.denials.len() {
        let _ = write!(
            out,
            "<p class=\"hint\">The first {} of {total} are listed ({MAX_DENIALS} at most); the timeline and \
             <code>warden replay</code> have the rest.</p>",
            report.denials.len()
        );
    }
    out.push_str("</section>");
}

fn node_line(out: &mut String, n: &ProcNode, task_ix: usize) {
    let _ = write!(
        out,
        "<li class=\"proc\" data-proc=\"{task_ix}:{}\" data-pid=\"{}\"><span class=\"pid\" title=\"show only this \
         process in the timeline\">{}</span> <span class=\"exe\">{}</span>",
        n.pid,
        n.pid,
        n.pid,
        Esc(n.exe.as_deref().or(n.comm.as_deref()).unwrap_or("?")),
    );
    if let Some(cmd) = &n.cmd {
        let _ = write!(out, " <span class=\"cmd\">— {}</span>", Esc(&cmd.join(" ")));
    }
    match n.exit {
        Some(e) => {
            let (text, bad) = match (e.status, e.signal) {
                (_, Some(sig)) => (format!("killed by signal {sig}"), true),
                (Some(s), _) => (format!("exit {s}"), s != 0),
                _ => ("ended".to_string(), false),
            };
            let _ = write!(out, "<span class=\"exit{}\">{text}</span>", if bad { " bad" } else { "" });
        }
        None => out.push_str("<span class=\"exit\">no exit recorded</span>"),
    }
    if n.judged > 0 {
        let _ = write!(out, " <span class=\"badge sev-high\">{} refused/audited</span>", n.judged);
    }
    if !n.execs.is_empty() {
        out.push_str("<div class=\"execs\">");
        for x in &n.execs {
            let class = match x.decision.as_str() {
                "deny" => " deny",
                "audit" => " audit",
                _ => "",
            };
            let verdict = match (x.decision.as_str(), x.action.as_deref()) {
                ("deny", Some("kill")) => " — killed",
                ("deny", _) => " — refused",
                ("audit", _) => " — audit: would be refused",
                _ => "",
            };
            let rule = x.rule.as_deref().map(|r| format!(" ({r})")).unwrap_or_default();
            let _ = write!(
                out,
                "<a class=\"exec{class}\" href=\"#r-{task_ix}-{}\">exec {}{verdict}{}</a>",
                x.seq,
                Esc(&x.path),
                Esc(&rule)
            );
        }
        out.push_str("</div>");
    }
}

fn process_tree(out: &mut String, tree: &ProcessTree, task_ids: &[&str]) {
    let _ = write!(
        out,
        "<section id=\"processes\"><h2>Process tree ({} processes)</h2><div class=\"tree\" id=\"tree\">",
        tree.nodes.len()
    );
    if tree.nodes.is_empty() {
        out.push_str("<p class=\"muted\">No process records.</p></div></section>");
        return;
    }
    out.push_str("<ul>");
    let mut open = 0usize;
    let walk = tree.walk();
    for &(i, depth) in walk.iter().take(MAX_TREE_NODES) {
        while open > depth {
            out.push_str("</ul></li>");
            open -= 1;
        }
        let n = &tree.nodes[i];
        let ix = task_ids.iter().position(|t| *t == n.task).unwrap_or(0);
        node_line(out, n, ix);
        if n.children.is_empty() {
            out.push_str("</li>");
        } else {
            out.push_str("<ul>");
            open += 1;
        }
    }
    while open > 0 {
        out.push_str("</ul></li>");
        open -= 1;
    }
    out.push_str("</ul>");
    if walk.len() > MAX_TREE_NODES {
        let _ =
            write!(out, "<p class=\"hint\">{} more processes not drawn.</p>", walk.len() - MAX_TREE_NODES);
    }
    out.push_str("</div></section>");
}

/// One call's line in the Calls section: name, id, how it ended, its intent and command, its
/// first records; then the calls under it.
fn call_item(
    out: &mut String,
    report: &Report,
    calls: &Calls<'_>,
    children: &[Vec<usize>],
    rows: &[(Vec<usize>, usize)],
    task_ids: &[&str],
    ix: usize,
) {
    let c = &calls.list[ix];
    let _ = write!(
        out,
        "<li class=\"call\" data-call-path=\"{}\"><div class=\"call-head\"><span class=\"call-name\" \
         title=\"show only this call (and the calls under it) in the timeline\">{}</span> <code>{}</code>",
        calls.path[ix],
        Esc(if c.name.is_empty() { "(no name)" } else { &c.name }),
        Esc(&c.id),
    );
    match &c.end {
        Some(e) => {
            let (text, bad) = match (e.exit_status, e.signal) {
                (_, Some(sig)) => (format!("killed by signal {sig}"), true),
                (Some(s), _) => (format!("exit {s}"), s != 0),
                _ => ("ended".to_string(), false),
            };
            let _ = write!(out, " <span class=\"exit{}\">{text}</span>", if bad { " bad" } else { "" });
            if let Some(d) = e.duration_ms {
                let _ = write!(out, " <span class=\"muted\">{d} ms</span>");
            }
        }
        None => out.push_str(" <span class=\"exit\">no call_end recorded</span>"),
    }
    // The call_end's count is the kernel side's; without one, the refusals the log shows.
    let denials = c.end.as_ref().and_then(|e| e.denials).map_or(c.deny as i64, |d| d);
    if denials > 0 {
        let _ = write!(out, " <span class=\"badge sev-high\">{denials} refused</span>");
    }
    if c.audit > 0 {
        let _ = write!(out, " <span class=\"badge\">{} audited</span>", c.audit);
    }
    let _ = write!(out, " <span class=\"muted\">{} records of its processes</span></div>", c.records);
    match &c.intent {
        Some(i) => match &i.text {
            Some(t) => {
                let _ = write!(
                    out,
                    "<div class=\"intent\"><b>Intent</b>{}: <span class=\"intent-text\">{}</span> \
                     <span class=\"muted mono\" title=\"SHA-256 of the whole intent\">sha256 {}</span></div>",
                    if i.truncated { " (cut)" } else { "" },
                    Esc(t),
                    Esc(&i.sha256),
                );
            }
            None => {
                let _ = write!(
                    out,
                    "<div class=\"intent\"><b>Intent</b>: digest only (the scope keeps no intent text) \
                     <span class=\"mono\">sha256 {}</span></div>",
                    Esc(&i.sha256)
                );
            }
        },
        None if c.start.is_empty() => {
            out.push_str("<div class=\"intent muted\">no call_start in this log (intent unknown)</div>")
        }
        None => out.push_str("<div class=\"intent muted\">no intent given</div>"),
    }
    if !c.cmd.is_empty() {
        let _ = write!(
            out,
            "<div class=\"cmd mono\">$ {}{}</div>",
            Esc(&c.cmd),
            if c.cwd.is_empty() { String::new() } else { format!("  (in {})", escape(&c.cwd)) }
        );
    }
    let (shown, total) = &rows[ix];
    if *total > 0 {
        let _ = write!(out, "<details><summary>its records ({total})</summary>");
        table_head(out, task_ids.len() > 1, true);
        for &r in shown {
            row(out, &report.timeline[r], task_ids, false, calls);
        }
        out.push_str("</tbody></table>");
        if *total > shown.len() {
            let _ = write!(
                out,
                "<p class=\"hint\">The first {} are listed here; click the call's name for all of them in the \
                 timeline.</p>",
                shown.len()
            );
        }
        out.push_str("</details>");
    }
    if !children[ix].is_empty() {
        out.push_str("<ul>");
        for &k in &children[ix] {
            call_item(out, report, calls, children, rows, task_ids, k);
        }
        out.push_str("</ul>");
    }
    out.push_str("</li>");
}

/// The calls (tool calls, stages) of each task, nested as they were started, each with its
/// intent, how it ended and its records.
fn calls_section(out: &mut String, report: &Report, task_ids: &[&str], calls: &Calls<'_>) {
    if !calls.any() {
        return;
    }
    let _ = write!(
        out,
        "<section id=\"calls\"><h2>Calls ({})</h2><p class=\"muted\">Each call ran in its own cgroup under its \
         own scope, no wider than its parent's; a record belongs to a call because its process was in the call's \
         cgroup. Click a call's name to show only its records (and those of the calls under it) in the \
         timeline.</p>",
        report.calls_total
    );
    let mut children = vec![Vec::new(); calls.list.len()];
    let tasks = task_ids.len().max(1);
    let mut roots: Vec<Vec<usize>> = vec![Vec::new(); tasks];
    for (i, p) in calls.parent.iter().enumerate() {
        match p {
            Some(p) => children[*p].push(i),
            None => roots[calls.list[i].task_ix.min(tasks - 1)].push(i),
        }
    }
    let mut rows: Vec<(Vec<usize>, usize)> = vec![(Vec::new(), 0); calls.list.len()];
    for (i, r) in report.timeline.iter().enumerate() {
        if let Some(c) = r.call {
            let (shown, total) = &mut rows[c];
            *total += 1;
            if shown.len() < MAX_CALL_ROWS {
                shown.push(i);
            }
        }
    }
    for (t, top) in roots.iter().enumerate() {
        if top.is_empty() {
            continue;
        }
        if task_ids.len() > 1 {
            let _ = write!(out, "<h3>task <code>{}</code></h3>", Esc(task_ids.get(t).copied().unwrap_or("")));
        }
        out.push_str("<ul class=\"calls\">");
        for &i in top {
            call_item(out, report, calls, &children, &rows, task_ids, i);
        }
        out.push_str("</ul>");
    }
    if report.calls_total > calls.list.len() {
        let _ = write!(
            out,
            "<p class=\"hint\">{} more calls are not listed ({MAX_CALLS} at most); their records show in the \
             timeline without a call.</p>",
            report.calls_total - calls.list.len()
        );
    }
    out.push_str("</section>");
}

fn severity_label(s: Severity) -> &'static str {
    match s {
        Severity::Info => "info",
        Severity::Low => "low",
        Severity::Medium => "medium",
        Severity::High => "high",
        Severity::Critical => "critical",
    }
}

fn findings(out: &mut String, found: &[Finding], total: usize, task_ids: &[&str]) {
    let _ = write!(out, "<section id=\"findings\"><h2>Findings ({total})</h2>");
    if found.is_empty() {
        out.push_str("<p class=\"muted\">No rule fired.</p></section>");
        return;
    }
    out.push_str(
        "<table><thead><tr><th>severity</th><th>rule</th><th>what</th><th>task</th><th>records</th><th>time</th>\
         </tr></thead><tbody>",
    );
    for f in found {
        let ix = task_ids.iter().position(|t| *t == f.task).unwrap_or(0);
        let sev = severity_label(f.severity);
        let links: Vec<String> = f.seqs.iter().map(|s| format!("<a href=\"#r-{ix}-{s}\">{s}</a>")).collect();
        let _ = write!(
            out,
            "<tr class=\"finding\"><td><span class=\"badge sev-{sev}\">{sev}</span></td><td class=\"mono\">{}</td>\
             <td>{}</td><td class=\"mono\">{}</td><td>{}</td><td title=\"{}\">{}</td></tr>",
            Esc(&f.rule),
            Esc(&f.description),
            Esc(&f.task),
            links.join(" "),
            Esc(&f.time),
            Esc(clock(&f.time)),
        );
    }
    out.push_str("</tbody></table>");
    if total > found.len() {
        let _ = write!(
            out,
            "<p class=\"hint\">The first {} of {total} findings are listed ({MAX_FINDINGS} at most); \
             <code>warden replay --rules</code> prints them all.</p>",
            found.len()
        );
    }
    out.push_str("</section>");
}

fn scope_usage(out: &mut String, path: &str, grants: &[Grant]) {
    let unused = grants.iter().filter(|g| !matches!(g.used, Use::Used(_))).count();
    let _ = write!(
        out,
        "<section id=\"scope\"><h2>Scope beside use</h2><p>Scope <code>{}</code>: {} grant(s), {} without a \
         recorded use. Exec and network use is recorded every time, so an unused one there can be removed; \
         allowed file opens are not recorded, so for files and secrets check before narrowing.</p>",
        Esc(path),
        grants.len(),
        unused
    );
    if grants.is_empty() {
        out.push_str("<p class=\"muted\">The scope restricts nothing that can be marked.</p></section>");
        return;
    }
    out.push_str(
        "<table><thead><tr><th>field</th><th>grant</th><th>use</th><th>refused attempts</th></tr></thead><tbody>",
    );
    for g in grants {
        let (class, status) = match g.used {
            Use::Used(n) => ("used", format!("<span class=\"used\">used ({n} record{})</span>", if n == 1 { "" } else { "s" })),
            Use::Unused => (
                "unused",
                "<span class=\"hint\">unused — least privilege: remove this grant</span>".to_string(),
            ),
            Use::NoRecordedUse => (
                "unused",
                "<span class=\"hint\">no recorded use — candidate for removal (allowed uses are not recorded)</span>"
                    .to_string(),
            ),
        };
        let _ = write!(
            out,
            "<tr class=\"{class}\" data-section=\"{}\"><td class=\"mono\">{}</td><td class=\"mono\">{}</td><td>{status}</td><td>{}</td></tr>",
            Esc(g.section),
            Esc(g.section),
            Esc(&g.entry),
            g.refused
        );
    }
    out.push_str("</tbody></table></section>");
}

fn timeline(out: &mut String, report: &Report, task_ids: &[&str], calls: &Calls<'_>) {
    let multi = task_ids.len() > 1;
    let total = report.records;
    let _ = write!(
        out,
        "<section id=\"timeline\"><h2>Timeline ({total} records)</h2><div class=\"controls\">\
         <label><input type=\"checkbox\" id=\"only-judged\"> only refusals and audits</label>\
         <input type=\"search\" id=\"q\" placeholder=\"filter: path, address, kind…\">\
         <span><span id=\"shown\">{total}</span> shown</span><span id=\"pid-filter\"></span></div>"
    );
    table_head(out, multi, calls.any());
    for r in &report.timeline {
        row(out, r, task_ids, true, calls);
    }
    out.push_str("</tbody></table>");
    let left_out: usize = report.left_out.values().map(|l| l.count).sum();
    if left_out > 0 {
        let judged: usize = report
            .left_out
            .iter()
            .filter(|((_, d), _)| matches!(d.as_str(), "deny" | "audit"))
            .map(|(_, l)| l.count)
            .sum();
        let _ = write!(
            out,
            "<div id=\"left-out\"><p class=\"hint\">The timeline is summarized beyond its limits: {left_out} \
             later records are not shown — {} allowed (the first {MAX_TIMELINE_ALLOWED} allowed are shown) and \
             {judged} refused or audited (the first {MAX_TIMELINE_JUDGED} are shown). By kind:</p>\
             <table><thead><tr><th>kind</th><th>decision</th><th>records not shown</th><th>first</th><th>last</th>\
             </tr></thead><tbody>",
            left_out - judged
        );
        for ((kind, decision), l) in &report.left_out {
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td title=\"{}\">{}</td><td title=\"{}\">{}</td></tr>",
                Esc(kind),
                Esc(decision),
                l.count,
                Esc(&l.first_time),
                Esc(clock(&l.first_time)),
                Esc(&l.last_time),
                Esc(clock(&l.last_time)),
            );
        }
        out.push_str(
            "</tbody></table><p class=\"hint\">Use <code>warden replay</code> or the log itself for the rest.</p></div>",
        );
    }
    out.push_str("</section>");
}

/// Renders the whole page.
pub fn render(report: &Report) -> String {
    let task_ids = tasks(report);
    let calls = Calls::new(&report.calls);
    let mut out = String::with_capacity(4096 + (report.timeline.len() + report.denials.len()) * 400);
    let title = match task_ids.as_slice() {
        [one] => format!("Warden report: {one}"),
        _ => format!("Warden report: {}", report.source),
    };
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src {}; script-src {}\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{}</title><style>{STYLE}</style>\
         </head><body><header><h1>{}</h1><p>log <code>{}</code> · {} records · {} task(s) · Warden {}</p></header><main>",
        csp_hash(STYLE),
        csp_hash(SCRIPT),
        Esc(&title),
        Esc(&title),
        Esc(&report.source),
        report.records,
        task_ids.len(),
        env!("CARGO_PKG_VERSION"),
    );
    integrity(&mut out, report);
    summary(&mut out, report, &task_ids);
    denials(&mut out, report, &task_ids, &calls);
    process_tree(&mut out, &report.tree, &task_ids);
    calls_section(&mut out, report, &task_ids, &calls);
    if let Some(f) = &report.findings {
        findings(&mut out, f, report.findings_total, &task_ids);
    }
    if let Some((path, grants)) = &report.scope {
        scope_usage(&mut out, path, grants);
    }
    timeline(&mut out, report, &task_ids, &calls);
    let _ = writeln!(out, "</main><script>{SCRIPT}</script></body></html>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        audit::verify::VerifyError,
        report::{Report, usage::Resolve},
    };
    use serde_json::json;
    use std::path::{Path, PathBuf};

    struct NoFs;
    impl Resolve for NoFs {
        fn identity(&self, _: &Path) -> Option<(u64, u64)> {
            None
        }
        fn canonical(&self, _: &Path) -> Option<PathBuf> {
            None
        }
    }

    #[test]
    fn escapes_markup_quotes_and_control_characters() {
        assert_eq!(escape(r#"<a href="x">'&'</a>"#), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
        assert_eq!(escape("plain /usr/bin/ü"), "plain /usr/bin/ü");
        assert_eq!(escape("a\u{0}b\u{1b}[31m"), "a\u{fffd}b\u{fffd}[31m");
        assert_eq!(escape(""), "");
    }

    const EVIL: &str = "/tmp/<script>alert(1)</script>\"'><img src=x onerror=alert(2)>";

    fn report(records: Vec<Value>, findings: Option<Vec<Finding>>) -> Report {
        Report::build(
            "ev<il>.jsonl".into(),
            records,
            vec![(3, "not a JSON record: <bogus>".into())],
            Integrity::Broken(VerifyError { line: 3, reason: "hash mismatch <x>".into() }),
            None,
            findings,
            &NoFs,
        )
    }

    fn fixture() -> Vec<Value> {
        include_str!("../../../tests/fixtures/calls/calls.jsonl")
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The calls of the fixture: `fetch` (exit 7, 1250 ms, 2 refused) with `parse` under it
    /// (intent kept as a digest only), then `list-files`; each with its intent and its records.
    #[test]
    fn calls_are_nested_with_intent_exit_duration_and_refusals() {
        let rep = report(fixture(), None);
        assert_eq!((rep.calls.len(), rep.calls_total), (3, 3));
        let (fetch, parse, list) = (&rep.calls[0], &rep.calls[1], &rep.calls[2]);
        assert_eq!((fetch.name.as_str(), fetch.parent, fetch.id.as_str()), ("fetch", None, "agent-7f3a/c1"));
        assert_eq!((parse.name.as_str(), parse.parent), ("parse", Some(0)));
        assert_eq!((list.name.as_str(), list.parent), ("list-files", None));
        // exec, refused connect, exit / exec, killed exec, exit.
        assert_eq!((fetch.records, fetch.deny), (3, 1));
        assert_eq!((parse.records, parse.deny), (3, 1));
        let end = fetch.end.as_ref().unwrap();
        assert_eq!((end.exit_status, end.duration_ms, end.denials), (Some(7), Some(1250), Some(2)));
        assert_eq!(
            fetch.intent.as_ref().unwrap().text.as_deref(),
            Some("Fetch the release notes from the mirror and summarize them.")
        );
        let digest = parse.intent.as_ref().unwrap();
        assert_eq!((digest.text.as_deref(), digest.sha256.len()), (None, 64));
        assert_eq!(fetch.cmd, "curl -s http://10.0.0.9/notes");
        // Rows know their call; the task's own records have none.
        let call_of = |seq: i64| rep.timeline.iter().find(|r| r.seq == seq).unwrap().call;
        assert_eq!((call_of(2), call_of(5), call_of(9), call_of(16)), (None, Some(0), Some(1), Some(2)));
        assert_eq!(rep.denials.iter().map(|r| r.call).collect::<Vec<_>>(), vec![Some(0), Some(1)]);

        let page = render(&rep);
        let at = |needle: &str| page.find(needle).unwrap_or_else(|| panic!("{needle} not in the page"));
        // parse is drawn inside fetch's item, list-files after it, at the top level.
        let (f, p, l) = (
            at(r#"<li class="call" data-call-path="/0/">"#),
            at(r#"<ul><li class="call" data-call-path="/0/1/">"#),
            at(r#"</ul></li><li class="call" data-call-path="/2/">"#),
        );
        assert!(f < p && p < l, "{f} {p} {l}");
        let fetch_item = &page[f..p];
        for want in [
            "Fetch the release notes from the mirror and summarize them.",
            "exit 7",
            "1250 ms",
            "2 refused",
            "$ curl -s http://10.0.0.9/notes",
        ] {
            assert!(fetch_item.contains(want), "{want} not in fetch's item");
        }
        assert!(page[p..l].contains("digest only"), "parse's intent is a digest");
        assert!(page[p..l].contains("exit 0"));
        // Timeline rows carry the call's path (for the filter) and the call column.
        assert!(page.contains(r#"data-call="/0/1/"><td>9</td>"#));
        assert!(page.contains("<th>call</th>"));
        // A log without calls has no Calls section and no call column.
        let plain =
            render(&report(fixture().into_iter().filter(|r| r.get("call").is_none()).collect(), None));
        assert!(!plain.contains("id=\"calls\"") && !plain.contains("<th>call</th>"));
    }

    /// A call's name, id, intent, command and cwd are log text: escaped.
    #[test]
    fn call_text_is_escaped() {
        let records = vec![
            json!({"v": 2, "seq": 1, "time": "t", "task": "t", "kind": "call_start", "call": EVIL, "call_name": EVIL, "parent": EVIL, "cmd": [EVIL], "cwd": EVIL, "intent": {"sha256": EVIL, "text": EVIL, "truncated": false}}),
            json!({"v": 2, "seq": 2, "time": "t", "task": "t", "kind": "exec", "call": EVIL, "call_name": EVIL, "path": "/x", "decision": "deny"}),
        ];
        let html = render(&report(records, None));
        assert!(!html.contains("<script>alert") && !html.contains("<img"));
        assert!(html.contains("&lt;script&gt;alert(1)"));
        assert_eq!(html.matches("<script>").count(), 1);
    }

    /// Memory stays bounded: calls beyond the limit are counted, not kept; an intent text
    /// longer than the page keeps is cut at a character boundary and marked.
    #[test]
    fn calls_and_intents_are_bounded() {
        let long = "é".repeat(super::super::MAX_INTENT_BYTES);
        let mut records = vec![
            json!({"v": 2, "seq": 0, "time": "t", "task": "t", "kind": "call_start", "call": "big", "parent": "t", "intent": {"sha256": "x", "text": long, "truncated": false}}),
        ];
        for i in 0..MAX_CALLS + 5 {
            records.push(json!({"v": 2, "seq": i + 1, "time": "t", "task": "t", "kind": "call_start", "call": format!("c{i}"), "parent": "t"}));
        }
        records.push(json!({"v": 2, "seq": 0, "time": "t", "task": "t", "kind": "exec", "call": format!("c{}", MAX_CALLS + 1)}));
        let rep = report(records, None);
        assert_eq!((rep.calls.len(), rep.calls_total), (MAX_CALLS, MAX_CALLS + 6));
        assert_eq!(rep.timeline.last().unwrap().call, None);
        let i = rep.calls[0].intent.as_ref().unwrap();
        assert!(i.truncated);
        assert_eq!(i.text.as_ref().unwrap().len(), super::super::MAX_INTENT_BYTES);
    }

    #[test]
    fn log_text_is_escaped_everywhere_it_appears() {
        let records = vec![
            json!({"v": 2, "seq": 1, "time": "2026-01-01T00:00:00.000000000Z", "task": "t<1>", "kind": "task_start", "decision": "allow", "pid": 10, "ppid": 1, "exe": EVIL, "cmd": [EVIL, "-c", "</li></ul>"], "scope": EVIL, "mode": "enforce", "engine": "fallback"}),
            json!({"v": 2, "seq": 2, "time": "2026-01-01T00:00:01.000000000Z", "task": "t<1>", "kind": "exec", "decision": "deny", "action": "kill", "rule": "exec.allow", "pid": 10, "ppid": 1, "path": EVIL, "exe": EVIL, "comm": "<b>x</b>"}),
            json!({"v": 2, "seq": 3, "time": "<time>", "task": "t<1>", "kind": "connect", "decision": "allow", "pid": 10, "addr": "<addr>", "port": 1, "protocol": "'tcp'"}),
        ];
        let f = Finding {
            rule: "r<1>".into(),
            severity: Severity::High,
            description: EVIL.into(),
            task: "t<1>".into(),
            pid: None,
            seqs: vec![2],
            time: "<t>".into(),
        };
        let html = render(&report(records, Some(vec![f])));
        for bad in [
            "<script>alert",
            "<img",
            "<b>x",
            "<bogus>",
            "'tcp'",
            "<addr>",
            "<time>",
            "<x>",
            "t<1>",
            "r<1>",
            "ev<il>",
        ] {
            assert!(!html.contains(bad), "unescaped {bad:?} in the page");
        }
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#39;&gt;&lt;img"));
        // Exactly the page's own script element.
        assert_eq!(html.matches("<script>").count(), 1);
        assert!(html.contains("default-src 'none'"));
    }

    #[test]
    fn page_has_tree_denials_findings_and_timeline() {
        let records = vec![
            json!({"v": 2, "seq": 1, "time": "2026-01-01T00:00:00.000000000Z", "task": "t", "kind": "task_start", "decision": "allow", "pid": 10, "ppid": 1, "exe": "/bin/sh", "cmd": ["/bin/sh", "-c", "x"]}),
            json!({"v": 2, "seq": 2, "time": "2026-01-01T00:00:01.000000000Z", "task": "t", "kind": "fork", "decision": "allow", "pid": 10, "ppid": 1, "child_pid": 11}),
            json!({"v": 2, "seq": 3, "time": "2026-01-01T00:00:02.000000000Z", "task": "t", "kind": "exec", "decision": "deny", "action": "kill", "rule": "exec.allow", "pid": 11, "ppid": 10, "path": "/usr/bin/id"}),
            json!({"v": 2, "seq": 4, "time": "2026-01-01T00:00:03.000000000Z", "task": "t", "kind": "exit", "decision": "allow", "pid": 11, "ppid": 10, "signal": 9}),
            json!({"v": 2, "seq": 5, "time": "2026-01-01T00:00:04.000000000Z", "task": "t", "kind": "connect", "decision": "audit", "rule": "network.egress", "pid": 10, "ppid": 1, "addr": "10.0.0.1", "port": 443, "protocol": "tcp"}),
        ];
        let html = render(&report(records, Some(Vec::new())));
        assert!(html.contains(
            "<div class=\"tree\" id=\"tree\"><ul><li class=\"proc\" data-proc=\"0:10\" data-pid=\"10\">"
        ));
        assert!(html.contains("data-pid=\"11\""));
        assert!(
            html.contains(
                "<a class=\"exec deny\" href=\"#r-0-3\">exec /usr/bin/id — killed (exec.allow)</a>"
            )
        );
        assert!(html.contains("killed by signal 9"));
        assert!(html.contains("<tr id=\"r-0-3\" class=\"deny\" data-proc=\"0:11\">"));
        assert!(html.contains("<tr id=\"r-0-5\" class=\"audit\" data-proc=\"0:10\">"));
        assert!(html.contains("Refusals and audit-mode violations (2)"));
        assert!(html.contains("No rule fired."));
        assert!(html.contains("Log NOT intact"));
        assert!(html.contains("1 line(s) could not be read"));
        assert!(STYLE.contains(DENY_COLOUR) && STYLE.contains(AUDIT_COLOUR) && STYLE.contains(TREE_COLOUR));
        // Balanced tree markup.
        let tree = &html[html.find("id=\"tree\"").unwrap()..html.find("id=\"findings\"").unwrap()];
        assert_eq!(tree.matches("<ul>").count(), tree.matches("</ul>").count());
        assert_eq!(tree.matches("<li ").count(), tree.matches("</li>").count());
    }

    /// Beyond its limits the page keeps rows up to them, counts the rest and says so, with a
    /// summary by kind; the totals still count every record.
    #[test]
    fn the_timeline_is_summarized_beyond_its_limits() {
        use crate::report::{MAX_DENIALS, MAX_TIMELINE_ALLOWED, MAX_TIMELINE_JUDGED};
        let allowed = MAX_TIMELINE_ALLOWED + 500;
        let judged = MAX_TIMELINE_JUDGED + 7;
        let mut records = Vec::with_capacity(allowed + judged);
        let mut denied = 0;
        for i in 0..allowed + judged {
            let deny = (i % 2 == 1 || i + judged - denied >= allowed + judged) && denied < judged;
            denied += usize::from(deny);
            let (kind, decision) = if deny { ("exec", "deny") } else { ("connect", "allow") };
            records.push(json!({"v": 2, "seq": i + 1, "time": format!("2026-01-01T00:00:{:02}.000Z", i % 60),
                "task": "t", "kind": kind, "decision": decision, "pid": 10 + i % 3, "path": "/x", "addr": "10.0.0.1",
                "port": 1, "protocol": "tcp"}));
        }
        let r = report(records, None);
        assert_eq!(r.records, allowed + judged);
        assert_eq!(r.timeline.len(), MAX_TIMELINE_ALLOWED + MAX_TIMELINE_JUDGED);
        assert_eq!((r.denials.len(), r.denials_total), (MAX_DENIALS, judged));
        assert_eq!(r.left_out[&("connect".to_string(), "allow".to_string())].count, 500);
        assert_eq!(r.left_out[&("exec".to_string(), "deny".to_string())].count, 7);
        assert_eq!(r.tasks[0].records, allowed + judged);
        assert_eq!(r.tasks[0].deny, judged);
        let html = render(&r);
        assert!(html.contains("id=\"left-out\""), "the page says the timeline is summarized");
        assert!(html.contains("507 later records are not shown — 500 allowed"), "counts on the page");
        assert!(html.contains(&format!("The first {MAX_DENIALS} of {judged} are listed")));
        assert!(html.contains(&format!("Timeline ({} records)", allowed + judged)));
        assert_eq!(html.matches("<tr id=\"r-").count(), MAX_TIMELINE_ALLOWED + MAX_TIMELINE_JUDGED);
    }

    #[test]
    fn csp_hashes_are_of_the_inline_style_and_script() {
        let html = render(&report(Vec::new(), None));
        assert!(html.contains(&csp_hash(SCRIPT)) && html.contains(&csp_hash(STYLE)));
        assert!(html.contains(&format!("<script>{SCRIPT}</script>")));
        assert!(html.contains(&format!("<style>{STYLE}</style>")));
        assert_eq!(clock("2026-11-22T14:57:36.190211562Z"), "14:57:36.190");
        assert_eq!(clock("x"), "x");
        let odd = "Ta\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}";
        assert_eq!(clock(odd), odd, "no panic off a char boundary");
    }
}
