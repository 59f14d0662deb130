//! Calls (tool calls, pipeline stages) under the node daemon: each in its own cgroup nested in
//! its parent's, its own kernel slot and a scope no wider than its parent's; every record of
//! its processes carries the call because of their cgroup (docs/daemon.md, *Calls*).
//!
//! Each test runs its own daemon ([`TestDaemon`]): its cgroups, pins and state are removed on
//! drop. Runs on the host's engine (the fallback here) and in the VM tier (BPF LSM; all pass
//! on 6.12). Break-checked: without the narrowing check the wider calls ran (both
//! `a_wider...` and the inside test failed); without the call tag on records the refused exec
//! had no `call`; without ending calls before the task no `call_end` was written; with the
//! inside endpoint ignoring the caller's call, the nested call's parent was the task; without
//! the calls' `clone3` refusal a call process forked into its task's cgroup.
use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Output, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use serde_json::Value;
use warden_tests::{coverage, daemon::TestDaemon, require, warden_bin};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

const PROBE: &str = env!("CARGO_BIN_EXE_warden-probe");

/// A loopback listener that accepts (and drops) connections, so an allowed connect succeeds.
fn listener() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for c in l.incoming() {
            drop(c);
        }
    });
    port
}

fn text(o: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `warden task exec ID --call NAME [--scope S] [--parent P] --intent I -- sh -c SCRIPT`.
fn call_cmd(
    d: &TestDaemon,
    id: &str,
    name: &str,
    scope: Option<&str>,
    parent: Option<&str>,
    script: &str,
) -> std::process::Command {
    let mut args: Vec<String> = vec!["task".into(), "exec".into(), id.into(), "--call".into(), name.into()];
    if let Some(s) = scope {
        let p = d.dir.path().join(format!("call-{name}.yaml"));
        std::fs::write(&p, s).unwrap();
        args.extend(["--scope".into(), p.display().to_string()]);
    }
    if let Some(p) = parent {
        args.extend(["--parent".into(), p.into()]);
    }
    args.extend([
        "--intent".into(),
        format!("run {name}"),
        "--".into(),
        "/bin/sh".into(),
        "-c".into(),
        script.into(),
    ]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    d.command(&refs)
}

fn call(
    d: &TestDaemon,
    id: &str,
    name: &str,
    scope: Option<&str>,
    parent: Option<&str>,
    script: &str,
) -> Output {
    call_cmd(d, id, name, scope, parent, script).output().expect("run warden")
}

/// Starts a call in the background; returns the client and the call's id (from `call_start`).
fn call_bg(d: &TestDaemon, id: &str, name: &str, parent: Option<&str>, script: &str) -> (Child, String) {
    let child = call_cmd(d, id, name, None, parent, script)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn warden");
    let r =
        d.wait_record(id, Duration::from_secs(10), |r| r["kind"] == "call_start" && r["call_name"] == name);
    (child, r["call"].as_str().unwrap().to_string())
}

fn task_scope(task: &str, port: u16) -> String {
    format!(
        "version: 1\ntask: {task}\nexec:\n  allow: [/bin/sh, /usr/bin/sleep, /usr/bin/id, /usr/bin/cat, {PROBE}]\n\
         network:\n  egress:\n    - to: 127.0.0.1\n      ports: [{port}]\n"
    )
}

/// A call scope may only narrow: one that allows a program its task does not is refused
/// before anything starts, exit 2, naming the field and the program.
#[test]
fn a_wider_call_scope_is_refused_naming_the_field() {
    if !require("a_wider_call_scope_is_refused_naming_the_field", "root") {
        return;
    }
    let _s = serial();
    let d = TestDaemon::start("");
    let port = listener();
    let t = d.start_task("wide", &task_scope("wide", port));
    let id = t["id"].as_str().unwrap();
    let wider = task_scope("wide", port).replace("/usr/bin/id,", "/usr/bin/id, /usr/bin/curl,");
    let out = call(&d, id, "fetch", Some(&wider), None, "echo ran");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("call scope widens exec.allow: /usr/bin/curl is not allowed by the parent"),
        "{err}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("ran"));
    // Another port than the task's is wider too.
    let other =
        task_scope("wide", port).replace(&format!("ports: [{port}]"), &format!("ports: [{}]", port + 1));
    let out = call(&d, id, "fetch", Some(&other), None, "echo ran");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("call scope widens network.egress"),
        "{}",
        text(&out)
    );
    // Nothing of a refused call was recorded or left behind.
    assert!(d.records_of(id).iter().all(|r| r["kind"] != "call_start"));
    assert!(d.end(id).status.success());
}

/// What the task grants and the call's scope does not — running a program, connecting to a
/// loopback server, reading a file — is refused in the kernel for the call's processes and
/// recorded with the call's id, while the task's own processes still may.
#[test]
fn an_action_the_task_grants_but_the_call_does_not_is_refused_and_attributed() {
    if !require("an_action_the_task_grants_but_the_call_does_not_is_refused_and_attributed", "root") {
        return;
    }
    let _s = serial();
    let d = TestDaemon::start("");
    let port = listener();
    let files = tempfile::tempdir().unwrap();
    let secret = files.path().join("notes.txt");
    std::fs::write(&secret, "task data\n").unwrap();
    let t = d.start_task("narrow", &task_scope("narrow", port));
    let id = t["id"].as_str().unwrap();
    let script = format!(
        "/usr/bin/id >/dev/null && echo exec ok || echo exec refused; {PROBE} connect 127.0.0.1 {port}; \
         /usr/bin/cat {s} >/dev/null 2>&1 && echo read ok || echo read refused",
        s = secret.display()
    );
    // The task itself may do all three.
    let out = d.exec(id, &script);
    let o = text(&out);
    assert!(o.contains("exec ok") && o.contains("connect ok") && o.contains("read ok"), "{o}");
    // The call may not: no id, no egress, the directory denied.
    let narrow = format!(
        "version: 1\ntask: narrow\nexec:\n  allow: [/bin/sh, /usr/bin/cat, {PROBE}]\nnetwork:\n  egress: []\n\
         files:\n  deny: [{}]\n",
        files.path().display()
    );
    let out = call(&d, id, "tool", Some(&narrow), None, &script);
    let o = text(&out);
    assert!(o.contains("exec refused"), "{o}");
    assert!(o.contains("connect err 1"), "{o}");
    assert!(o.contains("read refused"), "{o}");
    let start = d.wait_record(id, Duration::from_secs(5), |r| r["kind"] == "call_start");
    let cid = start["call"].as_str().unwrap().to_string();
    assert!(cid.starts_with(&format!("{id}/c")), "{start}");
    assert_eq!(start["call_name"], "tool");
    assert_eq!(start["parent"], id);
    assert_eq!(start["depth"], 1);
    assert_eq!(start["intent"]["text"], "run tool");
    assert_eq!(start["cmd"][0], "/bin/sh");
    let ended =
        d.wait_record(id, Duration::from_secs(10), |r| r["kind"] == "call_end" && r["call"] == cid.as_str());
    let recs = d.records_of(id);
    let denied: Vec<&Value> = recs.iter().filter(|r| r["decision"] == "deny").collect();
    for (kind, rule) in [("exec", "exec.allow"), ("connect", "network.egress")] {
        let r = denied
            .iter()
            .find(|r| r["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} denial: {denied:?}"));
        assert_eq!(r["call"], cid.as_str(), "{r}");
        assert_eq!(r["call_name"], "tool");
        assert_eq!(r["rule"], rule);
        if kind == "exec" {
            // The fallback engine kills at sched_process_exec; BPF LSM refuses the exec.
            coverage("tool call exec", "syscall", if r["action"] == "kill" { "killed" } else { "enforced" });
        } else {
            coverage("tool call egress", "syscall", "enforced");
        }
    }
    // The read: Landlock's refusal (fallback engine, reported by the kernel) or the LSM hook.
    let read = denied
        .iter()
        .find(|r| r["kind"] == "open" && r["path"].as_str().is_some_and(|p| p.contains("notes.txt")));
    match read {
        Some(r) => {
            assert_eq!(r["call"], cid.as_str(), "{r}");
            coverage("tool call files", "syscall", "enforced");
        }
        None => {
            let unrecorded = recs.iter().find(|r| r["kind"] == "task_start").unwrap()["unrecorded"].clone();
            assert!(
                unrecorded.to_string().contains("files"),
                "the refused read was not recorded: {denied:?}"
            );
            coverage("tool call files", "syscall", "enforced (no record)");
        }
    }
    // The task's own processes' records carry no call; the call's allowed ones do.
    assert!(
        recs.iter()
            .filter(|r| r["kind"] == "exec" && r["decision"] == "allow")
            .any(|r| r.get("call").is_none())
    );
    assert!(
        recs.iter().any(|r| r["kind"] == "exec" && r["decision"] == "allow" && r["call"] == cid.as_str())
    );
    assert_eq!(ended["exit_status"], 0, "{ended}");
    assert!(ended["denials"].as_u64().unwrap() >= 2, "{ended}");
    assert!(ended["events"].as_u64().unwrap() >= ended["denials"].as_u64().unwrap(), "{ended}");
    assert!(ended["duration_ms"].is_u64(), "{ended}");
    assert!(d.end(id).status.success());
    d.assert_log_verifies();
}

/// A process in a call cannot move itself to its parent's cgroup: not by `cgroup.procs`, not
/// by `clone3(CLONE_INTO_CGROUP)`, not even with a descriptor of the parent's cgroup handed to
/// it. Its records stay the call's.
#[test]
fn a_call_cannot_move_to_its_parents_cgroup() {
    if !require("a_call_cannot_move_to_its_parents_cgroup", "root") {
        return;
    }
    let _s = serial();
    let d = TestDaemon::start("");
    let port = listener();
    let t = d.start_task("stay", &task_scope("stay", port));
    let id = t["id"].as_str().unwrap();
    let task_cg = PathBuf::from(t["cgroup"].as_str().unwrap());
    // fd 3: the task's cgroup directory, opened outside and inherited by the client.
    let script = format!(
        "echo fd $({PROBE} clone-into /proc/self/fd/3)
         echo dotdot $({PROBE} clone-into /sys/fs/cgroup/..)
         echo byname $({PROBE} clone-into {t})
         (echo $$ > /proc/self/fd/3/cgroup.procs) 2>/dev/null && echo write ok || echo write err
         (echo $$ > /sys/fs/cgroup/../cgroup.procs) 2>/dev/null && echo write2 ok || echo write2 err
         while read l; do case $l in 0::*) echo cgroup $l;; esac; done < /proc/self/cgroup
         /usr/bin/id >/dev/null 2>&1; echo done",
        t = task_cg.display()
    );
    let inner = call_cmd(&d, id, "stay", None, None, &script);
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.arg("-c").arg("exec 3<\"$0\"; exec \"$@\"").arg(&task_cg).arg(inner.get_program());
    cmd.args(inner.get_args()).env("WARDEN_SOCKET", &d.socket);
    let out = cmd.output().expect("run");
    let o = text(&out);
    for name in ["fd", "dotdot", "byname"] {
        let line = o.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name} line: {o}"));
        assert!(line.contains("err"), "clone3 into the parent's cgroup ({name}) must fail: {o}");
    }
    assert!(o.contains("write err") && o.contains("write2 err"), "{o}");
    assert!(o.contains("cgroup 0::/\n"), "the call's cgroup namespace is rooted at its own cgroup: {o}");
    let start = d.wait_record(id, Duration::from_secs(5), |r| r["kind"] == "call_start");
    let cid = start["call"].as_str().unwrap();
    // Every exec of the call's processes is recorded as the call's.
    d.wait_record(id, Duration::from_secs(10), |r| r["kind"] == "call_end");
    let execs: Vec<Value> = d.records_of(id).into_iter().filter(|r| r["kind"] == "exec").collect();
    assert!(!execs.is_empty());
    assert!(execs.iter().all(|r| r["call"] == cid), "a call process left its call: {execs:?}");
    coverage("tool call cgroup escape", "syscall", "enforced (no record)");
    assert!(d.end(id).status.success());
}

/// Calls nest (4 deep here): each level's records carry its own call id, each id names its
/// parent's; the identity document of the deepest call verifies up to the node and a tampered
/// link fails; ending the task ends its calls first, deepest first, before `task_end`.
#[test]
fn four_deep_nesting_identity_chain_and_task_end() {
    if !require("four_deep_nesting_identity_chain_and_task_end", "root") {
        return;
    }
    let _s = serial();
    let d = TestDaemon::start("");
    let t = d.start_task("deep", "version: 1\ntask: deep\n");
    let id = t["id"].as_str().unwrap().to_string();
    let mut parent: Option<String> = None;
    let mut ids = Vec::new();
    let mut clients = Vec::new();
    for level in 1..=4 {
        let name = format!("l{level}");
        let (c, cid) = call_bg(&d, &id, &name, parent.as_deref(), "/usr/bin/sleep 60");
        let want_parent = parent.clone().unwrap_or_else(|| id.clone());
        assert!(cid.starts_with(&format!("{want_parent}/c")), "{cid} under {want_parent}");
        let start = d
            .records_of(&id)
            .into_iter()
            .find(|r| r["kind"] == "call_start" && r["call"] == cid.as_str())
            .unwrap();
        assert_eq!(start["parent"], want_parent.as_str());
        assert_eq!(start["depth"], level);
        clients.push(c);
        ids.push(cid.clone());
        parent = Some(cid);
    }
    // Each level's sleep is its own call's.
    let t0 = Instant::now();
    loop {
        let recs = d.records_of(&id);
        let ok = ids.iter().all(|cid| {
            recs.iter().any(|r| {
                r["kind"] == "exec"
                    && r["call"] == cid.as_str()
                    && r["path"].as_str().is_some_and(|p| p.ends_with("sleep"))
            })
        });
        if ok {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "not every level's exec is attributed to it: {recs:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The deepest call's identity: a chain of 4 links to the task, signed by the node key.
    let out = d.warden(&["task", "identity", &ids[3]]);
    assert!(out.status.success(), "{}", text(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["call"], ids[3].as_str());
    assert_eq!(doc["parent"]["parent"]["parent"]["call"], ids[0].as_str());
    assert_eq!(doc["parent"]["parent"]["parent"]["parent"]["task"], id.as_str());
    let path = d.dir.path().join("call-id.json");
    std::fs::write(&path, serde_json::to_string(&doc).unwrap()).unwrap();
    let key = d
        .records_of(&id)
        .into_iter()
        .find(|r| r["kind"] == "checkpoint")
        .and_then(|r| r["key"].as_str().map(str::to_string));
    let mut args = vec!["identity".to_string(), "verify".to_string(), path.display().to_string()];
    if let Some(k) = &key {
        args.extend(["--key".into(), k.clone()]);
    }
    let v = std::process::Command::new(warden_bin()).args(&args).output().unwrap();
    assert!(v.status.success(), "{}", text(&v));
    assert!(String::from_utf8_lossy(&v.stdout).contains(&format!("delegated by {id}")), "{}", text(&v));
    // A link in the middle altered (its cgroup id): the chain fails.
    let mut bad = doc.clone();
    let n = bad["parent"]["parent"]["cgroup_id"].as_u64().unwrap();
    bad["parent"]["parent"]["cgroup_id"] = (n + 1).into();
    std::fs::write(&path, serde_json::to_string(&bad).unwrap()).unwrap();
    let v = std::process::Command::new(warden_bin()).args(&args).output().unwrap();
    assert_eq!(v.status.code(), Some(1), "{}", text(&v));
    assert!(String::from_utf8_lossy(&v.stdout).contains("invalid"), "{}", text(&v));
    // Ending the task ends the calls first, deepest first.
    assert!(d.end(&id).status.success());
    for mut c in clients {
        let _ = c.wait();
    }
    let recs = d.records_of(&id);
    let pos = |f: &dyn Fn(&Value) -> bool| recs.iter().position(f);
    let task_end = pos(&|r| r["kind"] == "task_end").expect("task_end");
    let mut last = 0;
    for cid in ids.iter().rev() {
        let e = pos(&|r| r["kind"] == "call_end" && r["call"] == cid.as_str())
            .unwrap_or_else(|| panic!("no call_end of {cid}"));
        assert!(e < task_end, "call_end of {cid} after task_end");
        assert!(e >= last, "call_end of {cid} before a deeper call's");
        last = e;
        let r = &recs[e];
        assert!(r["reason"] == "task ended" || r["reason"] == "parent ended", "{r}");
        assert_eq!(r["signal"], 9, "{r}");
    }
    d.assert_log_verifies();
}

/// Inside a task, `warden call` starts a call through the daemon's call endpoint — under the
/// caller's own task or call, which the caller's cgroup decides, never wider — and the
/// endpoint offers nothing else: a sandboxed caller cannot end its parent (the main API
/// refuses it) and cannot reach another task.
#[test]
fn the_inside_endpoint_starts_calls_only_under_the_caller_never_wider() {
    if !require("the_inside_endpoint_starts_calls_only_under_the_caller_never_wider", "root") {
        return;
    }
    let _s = serial();
    let d = TestDaemon::start("");
    let port = listener();
    let w = warden_bin();
    let w = w.display();
    let scope = task_scope("inside", port).replace("/bin/sh,", &format!("/bin/sh, {w},"));
    let a = d.start_task("inside", &scope);
    let b = d.start_task("other", "version: 1\ntask: other\n");
    let (a_id, b_id) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap());
    let wider = d.dir.path().join("wider.yaml");
    std::fs::write(&wider, scope.replace("/usr/bin/id,", "/usr/bin/id, /usr/bin/curl,")).unwrap();
    let narrow = d.dir.path().join("narrow.yaml");
    std::fs::write(
        &narrow,
        format!(
            "version: 1\ntask: inside\nexec:\n  allow: [/bin/sh, {w}, {PROBE}]\nnetwork:\n  egress: []\n"
        ),
    )
    .unwrap();
    let script = format!(
        "{w} call --name plain --intent 'say hi' -- /bin/sh -c 'echo inside-ok'; echo plain=$?
         {w} call --name wide --scope {wider} -- /bin/sh -c 'echo WIDE-RAN' 2>&1; echo wide=$?
         {w} call --name outer -- /bin/sh -c '{w} call --name inner --scope {narrow} -- /bin/sh -c \"/usr/bin/id >/dev/null 2>&1 && echo inner-id-ok || echo inner-id-refused\"'; echo outer=$?
         WARDEN_SOCKET={api} {w} task end {a_id} >/dev/null 2>&1; echo endparent=$?
         WARDEN_SOCKET={api} {w} task end {b_id} >/dev/null 2>&1; echo endother=$?",
        wider = wider.display(),
        narrow = narrow.display(),
        api = d.socket.display(),
    );
    let out = d.exec(a_id, &script);
    let o = text(&out);
    assert!(o.contains("inside-ok") && o.contains("plain=0"), "{o}");
    assert!(o.contains("wide=2") && !o.contains("WIDE-RAN"), "a wider call ran: {o}");
    assert!(o.contains("inner-id-refused") && o.contains("outer=0"), "{o}");
    assert!(!o.contains("endparent=0") && !o.contains("endother=0"), "a sandboxed caller ended a task: {o}");
    // Every call is the caller's task's, under the caller: the plain and outer ones under the
    // task, the inner one under outer.
    let recs = d.records_of(a_id);
    let starts: Vec<&Value> = recs.iter().filter(|r| r["kind"] == "call_start").collect();
    let by = |n: &str| {
        starts.iter().find(|r| r["call_name"] == n).copied().unwrap_or_else(|| panic!("no {n}: {starts:?}"))
    };
    assert_eq!(by("plain")["parent"], a_id);
    assert_eq!(by("plain")["intent"]["text"], "say hi");
    assert_eq!(by("outer")["parent"], a_id);
    assert_eq!(by("inner")["parent"], by("outer")["call"]);
    assert_eq!(by("inner")["depth"], 2);
    assert!(starts.iter().all(|r| r["call_name"] != "wide"), "{starts:?}");
    assert!(d.records_of(b_id).iter().all(|r| r["kind"] != "call_start"), "a call landed in another task");
    // The inner call's refused exec is the inner call's.
    let inner = by("inner")["call"].as_str().unwrap().to_string();
    d.wait_record(a_id, Duration::from_secs(10), |r| {
        r["kind"] == "exec" && r["decision"] == "deny" && r["call"] == inner.as_str()
    });
    // Both tasks still run: nothing was ended from inside.
    let list = d.warden(&["task", "list", "--json"]);
    let ls = String::from_utf8_lossy(&list.stdout);
    assert!(ls.contains(a_id) && ls.contains(b_id), "{ls}");
    for id in [a_id, b_id] {
        assert!(d.end(id).status.success());
    }
}

/// A daemon killed with `-9` and restarted re-adopts a running call: its processes stay in
/// the call's narrower scope (not the task's, which adopting the task binds to the whole
/// subtree), their records still carry the call, and the call still ends with its command.
/// Break-checked: without re-adopting calls, the call's process ran `/usr/bin/id` (the task
/// allows it) after the restart. Before its command's process was found again from the
/// cgroup, a restart right after the call's first exec ended the call at its next `sleep`.
#[test]
fn a_call_keeps_its_scope_across_a_daemon_restart() {
    if !require("a_call_keeps_its_scope_across_a_daemon_restart", "root") {
        return;
    }
    let _s = serial();
    let mut d = TestDaemon::start("");
    let port = listener();
    let t = d.start_task("restart", &task_scope("restart", port));
    let id = t["id"].as_str().unwrap().to_string();
    let sync = tempfile::tempdir().unwrap();
    let go = sync.path().join("go");
    let narrow = format!(
        "version: 1\ntask: restart\nexec:\n  allow: [/bin/sh, /usr/bin/sleep, {PROBE}]\nnetwork:\n  egress: []\n"
    );
    // The call waits for the restart, then tries what the task grants and it does not.
    let script = format!(
        "while [ ! -e {go} ]; do /usr/bin/sleep 0.1; done
         /usr/bin/id >/dev/null 2>&1 && echo exec ok || echo exec refused
         {PROBE} connect 127.0.0.1 {port}",
        go = go.display()
    );
    let client = call_cmd(&d, &id, "tool", Some(&narrow), None, &script)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn warden");
    let start = d
        .wait_record(&id, Duration::from_secs(10), |r| r["kind"] == "call_start" && r["call_name"] == "tool");
    let cid = start["call"].as_str().unwrap().to_string();
    // Its first process is running (and seen) before the daemon dies.
    d.wait_record(&id, Duration::from_secs(10), |r| r["kind"] == "exec" && r["call"] == cid.as_str());
    d.kill9();
    d.launch(&[]);
    let st = &d.ready["startup"];
    assert!(st["adopted_tasks"].as_array().unwrap().iter().any(|t| t == id.as_str()), "{st}");
    assert!(st["adopted_calls"].as_array().unwrap().iter().any(|c| c == cid.as_str()), "{st}");
    std::fs::write(&go, "").unwrap();
    let out = client.wait_with_output().expect("wait for the call");
    let o = text(&out);
    assert!(o.contains("exec refused"), "the call ran a program only its task allows ({}): {o}", out.status);
    assert!(o.contains("connect err 1"), "the call reached its task's port: {o}");
    // Both refusals are on the record, as the call's, and the call ended with its command.
    let ended =
        d.wait_record(&id, Duration::from_secs(15), |r| r["kind"] == "call_end" && r["call"] == cid.as_str());
    assert_eq!(ended["reason"], "exited", "{ended}");
    let recs = d.records_of(&id);
    for (kind, rule) in [("exec", "exec.allow"), ("connect", "network.egress")] {
        let r = recs
            .iter()
            .find(|r| r["kind"] == kind && r["decision"] == "deny")
            .unwrap_or_else(|| panic!("no {kind} refusal recorded: {recs:?}"));
        assert_eq!(r["call"], cid.as_str(), "{r}");
        assert_eq!(r["call_name"], "tool", "{r}");
        assert_eq!(r["rule"], rule, "{r}");
    }
    assert!(d.end(&id).status.success());
    d.assert_log_verifies();
}

/// A task that runs as another user (`user:`) starts calls through the endpoint too: it is
/// not in the API socket's 0700 directory. The call runs as the task's user, under the call's
/// name. Break-checked: with the endpoint beside the API socket again, `warden call` exited 1
/// and no call started.
#[test]
fn a_task_running_as_another_user_reaches_the_call_endpoint() {
    if !require("a_task_running_as_another_user_reaches_the_call_endpoint", "root") {
        return;
    }
    let _s = serial();
    let d = TestDaemon::start("");
    let w = warden_bin();
    let w = w.display();
    let scope = format!(
        "version: 1\ntask: nobody\nuser: {{uid: 65534, gid: 65534}}\nexec:\n  allow: [/bin/sh, {w}, /usr/bin/id]\n"
    );
    let t = d.start_task("nobody", &scope);
    let id = t["id"].as_str().unwrap();
    let out = d.exec(id, &format!("{w} call --name who --intent 'who am i' -- /usr/bin/id -u; echo call=$?"));
    let o = text(&out);
    assert!(o.contains("65534\n") && o.contains("call=0"), "{o}");
    let start = d.wait_record(id, Duration::from_secs(10), |r| r["kind"] == "call_start");
    assert_eq!(start["call_name"], "who", "{start}");
    assert_eq!(start["parent"], id, "{start}");
    let cid = start["call"].as_str().unwrap().to_string();
    let exec = d.wait_record(id, Duration::from_secs(10), |r| {
        r["kind"] == "exec" && r["call"] == cid.as_str() && r["path"] == "/usr/bin/id"
    });
    assert_eq!(exec["uid"], 65534, "{exec}");
    assert!(d.end(id).status.success());
}
