//! The node daemon on the real kernel: tasks judged by their own scopes, TTL, revocation as
//! one operation, `kill -9` with enforcement holding, migration between pin versions,
//! issued secrets, identity documents, the daemon protected from its tasks, 256 tasks,
//! metrics and the event stream. Every test runs its own daemon (`TestDaemon`), one at a
//! time (they share the machine's two cores and are timing-sensitive).
use std::{
    io::Read,
    net::TcpListener,
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, Instant},
};

use warden_tests::{daemon::TestDaemon, require, warden_bin};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// A loopback listener that accepts (and drops) connections in the background, so a connect
/// that the kernel allows succeeds.
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

fn text(o: &std::process::Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The probe binary: prints `connect ok` or `connect err <errno>`.
fn probe_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_warden-probe"))
}

fn scope_with(task: &str, exec: &[&str], egress_port: Option<u16>, extra: &str) -> String {
    let probe = probe_bin();
    let mut allow: Vec<String> = vec!["/bin/sh".into(), probe.display().to_string()];
    allow.extend(exec.iter().map(|s| s.to_string()));
    let egress = match egress_port {
        Some(p) => format!("network:\n  egress:\n    - to: 127.0.0.1\n      ports: [{p}]\n"),
        None => "network:\n  egress: []\n".into(),
    };
    format!("version: 1\ntask: {task}\nexec:\n  allow: [{}]\n{egress}{extra}", allow.join(", "))
}

/// `warden-probe connect` line for a port.
fn connect(port: u16) -> String {
    format!("{} connect 127.0.0.1 {port}", probe_bin().display())
}

#[test]
fn two_tasks_are_judged_each_by_its_own_scope() {
    if !require("two_tasks_are_judged_each_by_its_own_scope", "root") {
        return;
    }
    let _s = serial();
    let d = TestDaemon::start("");
    let port = listener();
    let a = d.start_task("a", &scope_with("alpha", &["/usr/bin/id"], Some(port), ""));
    let b = d.start_task("b", &scope_with("beta", &[], None, ""));
    let (a_id, b_id) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap());
    assert_ne!(a["slot"], b["slot"]);
    let script = format!("/usr/bin/id >/dev/null && echo exec ok || echo exec refused; {}", connect(port));
    let oa = d.exec(a_id, &script);
    let ob = d.exec(b_id, &script);
    let (ta, tb) = (text(&oa), text(&ob));
    assert!(ta.contains("exec ok") && ta.contains("connect ok"), "{ta}");
    assert!(tb.contains("exec refused") && tb.contains("connect err 1"), "{tb}");
    // The denials are recorded against beta only.
    d.wait_record(b_id, Duration::from_secs(5), |r| r["kind"] == "connect" && r["decision"] == "deny");
    let denied: Vec<_> = d.records().into_iter().filter(|r| r["decision"] == "deny").collect();
    assert!(denied.iter().any(|r| r["task"] == b_id && r["kind"] == "exec"), "{denied:?}");
    assert!(denied.iter().any(|r| r["task"] == b_id && r["kind"] == "connect"), "{denied:?}");
    assert!(denied.iter().all(|r| r["task"] == b_id), "alpha was judged by beta's scope: {denied:?}");
    for id in [a_id, b_id] {
        assert!(d.end(id).status.success());
    }
    d.assert_log_verifies();
}

#[test]
fn ttl_expiry_ends_the_task() {
    if !require("ttl_expiry_ends_the_task", "root") {
        return;
    }
    let _s = serial();
    let d = TestDaemon::start("");
    let t = d.start_task("ttl", &scope_with("ttl", &["/usr/bin/sleep"], None, "ttl: 2s\n"));
    let id = t["id"].as_str().unwrap().to_string();
    assert!(t["expires"].is_string());
    let mut sleeper = d.command(&["task", "exec", &id, "--", "/usr/bin/sleep", "60"]).spawn().unwrap();
    let t0 = Instant::now();
    let end = d.wait_record(&id, Duration::from_secs(15), |r| r["kind"] == "task_end");
    assert_eq!(end["reason"], "ttl expired");
    assert!(end["killed"].as_u64().unwrap() >= 1, "{end}");
    assert!(t0.elapsed() < Duration::from_secs(40), "ended by the ttl, long before the sleep");
    let st = sleeper.wait().unwrap();
    assert_eq!(st.code(), Some(128 + 9), "the task's process was killed");
    assert!(!PathBuf::from(t["cgroup"].as_str().unwrap()).exists(), "sandbox removed");
    let list = d.warden(&["task", "list", "--json"]);
    assert!(!String::from_utf8_lossy(&list.stdout).contains(&id));
    // `end` after the fact says why it ended.
    let again = d.end(&id);
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("had already ended: ttl expired"),
        "{}",
        text(&again)
    );
}

#[test]
fn task_end_revokes_processes_secrets_and_access_together() {
    if !require("task_end_revokes_processes_secrets_and_access_together", "root") {
        return;
    }
    let _s = serial();
    let d = TestDaemon::start("");
    let port = listener();
    let vault = d.dir.path().join("vault-token");
    std::fs::write(&vault, "TOKEN-8d1f").unwrap();
    // Not next to the secrets: nothing new may be created in a directory on the way to a
    // secret (docs/scope.md).
    let outdir = tempfile::tempdir().unwrap();
    let out = outdir.path().join("loop.out");
    let scope = scope_with(
        "revoke",
        &["/usr/bin/cat", "/usr/bin/sleep"],
        Some(port),
        &format!(
            "secrets:\n  - name: tok\n    from: file:{}\n    tools: [/usr/bin/cat]\n    env: TOK_FILE\n",
            vault.display()
        ),
    );
    let t = d.start_task("revoke", &scope);
    let id = t["id"].as_str().unwrap().to_string();
    let secret = PathBuf::from(t["secrets"][0]["path"].as_str().unwrap());
    assert!(secret.starts_with(&d.secrets_dir) && secret.exists());
    assert_eq!(t["secrets"][0]["env"], "TOK_FILE");
    // A long-running process of the task: reads the secret and connects, over and over.
    let script = format!(
        "while true; do /usr/bin/cat \"$TOK_FILE\" >> {o} 2>/dev/null; echo >> {o}; {c} >> {o}; /usr/bin/sleep 0.1; done",
        o = out.display(),
        c = connect(port)
    );
    let mut bg = d.command(&["task", "exec", &id, "--", "/bin/sh", "-c", &script]).spawn().unwrap();
    let during = warden_tests::wait_for(Duration::from_secs(10), || {
        let s = std::fs::read_to_string(&out).ok()?;
        (s.contains("TOKEN-8d1f") && s.contains("connect ok")).then_some(s)
    });
    assert!(
        during.is_some(),
        "during the task the secret and the connect work: {:?}\n{}",
        std::fs::read_to_string(&out),
        d.stderr()
    );
    // Its pid on the node (`$$` is its pid in the task's own PID namespace), from its record.
    // (The daemon writes records as it drains them: wait for it, the output may come first.)
    let pid = warden_tests::wait_for(Duration::from_secs(10), || {
        d.records_of(&id)
            .into_iter()
            .find(|r| r["kind"] == "exec" && r["path"].as_str().is_some_and(|p| p.ends_with("/sh")))
            .and_then(|r| r["pid"].as_i64())
    })
    .expect("exec record of the task's shell");
    // The value never reaches the audit stream: only its digest.
    let start = d.records_of(&id).into_iter().find(|r| r["kind"] == "task_start").unwrap();
    assert_eq!(start["secrets"][0]["name"], "tok");
    assert_eq!(start["secrets"][0]["sha256"].as_str().unwrap().len(), 64);
    assert!(!std::fs::read_to_string(&d.log).unwrap().contains("TOKEN-8d1f"));

    let end = d.end(&id);
    assert!(end.status.success(), "{}", text(&end));
    // Together: no process survives, the secret is gone, the sandbox and its pins are gone.
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "the task's process survived task end");
    assert_eq!(bg.wait().unwrap().code(), Some(128 + 9));
    assert!(!secret.exists() && !secret.parent().unwrap().exists(), "secret survived task end");
    assert!(!PathBuf::from(t["cgroup"].as_str().unwrap()).exists(), "sandbox survived task end");
    let pins: Vec<_> = std::fs::read_dir(&d.pin_root)
        .unwrap()
        .flatten()
        .flat_map(|v| std::fs::read_dir(v.path().join("tasks")).into_iter().flatten().flatten())
        .collect();
    assert!(pins.is_empty(), "egress links of the task still pinned: {pins:?}");
    // Nothing more ran after the end: the output stops growing.
    let len = std::fs::metadata(&out).unwrap().len();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(std::fs::metadata(&out).unwrap().len(), len);
    // And nothing can be started in it any more.
    let late = d.exec(&id, &connect(port));
    assert_eq!(late.status.code(), Some(2), "{}", text(&late));
    let end_rec = d.records_of(&id).into_iter().find(|r| r["kind"] == "task_end").unwrap();
    assert_eq!(end_rec["reason"], "ended by request");
    assert!(end_rec["killed"].as_u64().unwrap() >= 1);
}

/// Runs, inside task `id`, a loop that tries a connect to `port` `rounds` times, 50 ms apart,
/// appending the probe's `connect ok|err <errno>` lines to `out`, then `done`.
fn denied_loop(d: &TestDaemon, id: &str, port: u16, out: &Path, rounds: u32) -> std::process::Child {
    let script = format!(
        "i=0; while [ $i -lt {rounds} ]; do {c} >> {o}; i=$((i+1)); /usr/bin/sleep 0.05; done; echo done >> {o}",
        c = connect(port),
        o = out.display()
    );
    d.command(&["task", "exec", id, "--", "/bin/sh", "-c", &script]).spawn().unwrap()
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p).unwrap_or_default().lines().map(str::to_string).collect()
}

/// Ids of the lifecycle programs (sched and cgroup tracepoints) that use the map pinned at
/// `map_pin`: this daemon's, not another test's or another Warden's.
fn lifecycle_programs(map_pin: &Path) -> Vec<u32> {
    let map_id = aya::maps::MapInfo::from_pin(map_pin).expect("pinned map").id();
    let mut ids: Vec<u32> = aya::programs::loaded_programs()
        .flatten()
        .filter(|p| {
            p.name_as_str().is_some_and(|n| n.starts_with("sched_process") || n.starts_with("cgroup_"))
        })
        .filter(|p| p.map_ids().ok().flatten().is_some_and(|ids| ids.contains(&map_id)))
        .map(|p| p.id())
        .collect();
    ids.sort();
    ids
}

#[test]
fn kill_9_keeps_enforcing_and_a_restart_readopts() {
    if !require("kill_9_keeps_enforcing_and_a_restart_readopts", "root") {
        return;
    }
    let _s = serial();
    let mut d = TestDaemon::start("");
    let open = listener();
    let t = d.start_task("k9", &scope_with("k9", &["/usr/bin/sleep"], None, ""));
    let id = t["id"].as_str().unwrap().to_string();
    // Not in the daemon's directory: tasks cannot create files beside its evidence.
    let outdir = tempfile::tempdir().unwrap();
    let out = outdir.path().join("k9.out");
    let mut bg = denied_loop(&d, &id, open, &out, 80);
    assert!(
        warden_tests::wait_for(Duration::from_secs(10), || (lines(&out).len() >= 3).then_some(())).is_some()
    );
    let version = d.ready["startup"]["version"].as_str().unwrap().to_string();
    let watched = d.pin_root.join(&version).join("maps/WATCHED");
    let before = lifecycle_programs(&watched);
    assert_eq!(before.len(), 5, "{before:?}");
    d.kill9();
    let at_kill = lines(&out).len();
    // The sandboxed process keeps trying while no daemon runs.
    assert!(
        warden_tests::wait_for(Duration::from_secs(10), || (lines(&out).len() >= at_kill + 10).then_some(()))
            .is_some(),
        "the loop stalled while the daemon was down"
    );
    let down = lines(&out)[at_kill..].to_vec();
    assert!(
        down.iter().all(|l| l.starts_with("connect err 1")),
        "a denied connect got through while the daemon was down: {down:?}"
    );
    d.launch(&[]);
    let st = &d.ready["startup"];
    assert!(st["adopted_tasks"].as_array().unwrap().iter().any(|t| t == id.as_str()), "{st}");
    assert_eq!(st["adopted_links"].as_array().unwrap().len(), 5, "{st}");
    // Re-adopted, not loaded or attached twice: the same five programs, still the only ones.
    assert_eq!(st["version"].as_str(), Some(version.as_str()));
    assert_eq!(lifecycle_programs(&watched), before);
    assert!(bg.wait().unwrap().success());
    let all = lines(&out);
    assert_eq!(all.last().map(String::as_str), Some("done"));
    assert!(all[..all.len() - 1].iter().all(|l| l.starts_with("connect err 1")), "{all:?}");
    // The downtime is a gap record, and the connects made meanwhile were still recorded.
    let gap = d.wait_record(&id, Duration::from_secs(5), |r| r["kind"] == "gap");
    assert!(gap["since"].is_string() && gap["drops"].is_u64(), "{gap}");
    // (The daemon drains the ring every 10 ms: the last records may still be on their way.)
    let denied = || {
        d.records_of(&id).into_iter().filter(|r| r["kind"] == "connect" && r["decision"] == "deny").count()
    };
    let _ = warden_tests::wait_for(Duration::from_secs(5), || (denied() >= 80).then_some(()));
    let denied = denied();
    assert!(denied >= 80, "only {denied} of 80 refused connects were recorded");
    assert!(d.end(&id).status.success());
    d.assert_log_verifies();
}

#[test]
fn a_new_version_migrates_old_pins_without_a_window() {
    if !require("a_new_version_migrates_old_pins_without_a_window", "root") {
        return;
    }
    let _s = serial();
    let mut d = TestDaemon::start_with_env("", &[("WARDEN_PIN_VERSION", "v0-previous")]);
    let open = listener();
    let t = d.start_task("mig", &scope_with("mig", &["/usr/bin/sleep"], None, ""));
    let id = t["id"].as_str().unwrap().to_string();
    // Not in the daemon's directory: tasks cannot create files beside its evidence.
    let outdir = tempfile::tempdir().unwrap();
    let out = outdir.path().join("mig.out");
    let mut bg = denied_loop(&d, &id, open, &out, 60);
    assert!(
        warden_tests::wait_for(Duration::from_secs(10), || (lines(&out).len() >= 3).then_some(())).is_some()
    );
    d.stop();
    // Attempts while no daemon runs: recorded only in the previous version's ring.
    let at_stop = lines(&out).len();
    assert!(
        warden_tests::wait_for(Duration::from_secs(10), || (lines(&out).len() >= at_stop + 5).then_some(()))
            .is_some()
    );
    d.launch(&[]);
    let st = d.ready["startup"].clone();
    assert_eq!(st["migrated_from"], serde_json::json!(["v0-previous"]), "{st}");
    assert!(st["adopted_tasks"].as_array().unwrap().iter().any(|t| t == id.as_str()), "{st}");
    assert!(!d.pin_root.join("v0-previous").exists(), "old pins left behind");
    assert!(bg.wait().unwrap().success());
    let all = lines(&out);
    assert!(
        all[..all.len() - 1].iter().all(|l| l.starts_with("connect err 1")),
        "a connect got through during the migration: {all:?}"
    );
    // Every attempt is in the log exactly once: those made while no daemon ran come from the
    // previous version's ring, those after the new bind from the new ring, none from both.
    let attempts = all.iter().filter(|l| l.starts_with("connect")).count();
    let recorded = || {
        d.records_of(&id).into_iter().filter(|r| r["kind"] == "connect" && r["decision"] == "deny").count()
    };
    let _ = warden_tests::wait_for(Duration::from_secs(5), || (recorded() >= attempts).then_some(()));
    assert_eq!(recorded(), attempts, "lost or duplicated across the migration");
    // After the migration the new version alone enforces.
    let after = d.exec(&id, &connect(open));
    assert!(text(&after).contains("connect err 1"), "{}", text(&after));
    assert!(d.end(&id).status.success());
}

#[test]
fn identity_documents_verify_and_tampering_fails() {
    if !require("identity_documents_verify_and_tampering_fails", "root") {
        return;
    }
    let _s = serial();
    let d = TestDaemon::start("");
    let t = d.start_task("idn", &scope_with("idn", &[], None, "ttl: 1h\n"));
    let id = t["id"].as_str().unwrap();
    let out = d.warden(&["task", "identity", id]);
    assert!(out.status.success(), "{}", text(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["task"], id);
    assert_eq!(doc["cgroup_id"], t["cgroup_id"]);
    assert_eq!(doc["scope_hash"], t["scope_hash"]);
    assert!(doc["expires"].is_string() && doc["node"].is_string());
    let p = d.dir.path().join("id.json");
    std::fs::write(&p, &out.stdout).unwrap();
    let ok = d.warden(&["identity", "verify", p.to_str().unwrap()]);
    assert!(ok.status.success(), "{}", text(&ok));
    let tampered = String::from_utf8_lossy(&out.stdout).replace(id, "someone-else");
    std::fs::write(&p, tampered).unwrap();
    let bad = d.warden(&["identity", "verify", p.to_str().unwrap()]);
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad));
    // Records of the task carry its id.
    assert!(d.records_of(id).iter().any(|r| r["kind"] == "task_start"));
    assert!(d.end(id).status.success());
}

#[test]
fn tasks_cannot_reach_stop_or_signal_the_daemon() {
    if !require("tasks_cannot_reach_stop_or_signal_the_daemon", "root") {
        return;
    }
    let _s = serial();
    let d = TestDaemon::start("");
    let warden = warden_bin();
    let node = env!("CARGO_BIN_EXE_warden-node-probe");
    let t = d
        .start_task("prot", &scope_with("prot", &[warden.to_str().unwrap(), node, "/usr/bin/sed"], None, ""));
    let id = t["id"].as_str().unwrap();
    let pid = d.pid();
    // Real attempts, each answered by its own refusal: the API's peer check (403 and its
    // message, not a connection failure), and a SIGSTOP and a SIGKILL the kernel refuses
    // (EPERM; ESRCH would mean the daemon is not even visible, as in a PID namespace).
    let script = format!(
        "WARDEN_SOCKET={s} {w} task list 2>&1; echo api-exit $?
         {node} signal {pid} 19 | /usr/bin/sed s/^signal/stop/
         {node} signal {pid} 9 | /usr/bin/sed s/^signal/kill/",
        s = d.socket.display(),
        w = warden.display()
    );
    let o = d.exec(id, &script);
    let s = text(&o);
    assert!(s.contains("tasks may not use the Warden API"), "the API's own refusal: {s}");
    assert!(!s.contains("api-exit 0"), "{s}");
    // The refusal is on the task's record: who called, from where in the task, what it asked.
    let r = d.wait_record(id, Duration::from_secs(5), |r| r["kind"] == "api");
    assert_eq!(
        (r["decision"].as_str(), r["action"].as_str(), r["rule"].as_str()),
        (Some("deny"), Some("refuse"), Some("protected.api")),
        "{r}"
    );
    assert!(r["pid"].as_u64().is_some() && r["ancestry"].as_array().is_some_and(|a| !a.is_empty()), "{r}");
    assert!(r["exe"].as_str().is_some_and(|e| e.ends_with("/warden")), "{r}");
    assert!(r["reason"].as_str().is_some_and(|q| q.starts_with("GET /v1/")), "{r}");
    for sig in ["stop", "kill"] {
        let line = s.lines().find_map(|l| l.strip_prefix(&format!("{sig} "))).unwrap_or_default();
        assert!(
            line == "err 1" || line == "err 3",
            "{sig}: refused by the kernel (EPERM), or the daemon is not visible: {s}"
        );
    }
    // Still alive, not stopped, and answering.
    let list = d.warden(&["task", "list"]);
    assert!(list.status.success() && String::from_utf8_lossy(&list.stdout).contains(id), "{}", text(&list));
    assert!(d.end(id).status.success());
}

#[test]
fn two_hundred_fifty_six_tasks_at_once() {
    if !require("two_hundred_fifty_six_tasks_at_once", "root") {
        return;
    }
    let _s = serial();
    let d = TestDaemon::start("maps:\n  max_tasks: 300\n");
    // Two listeners; even tasks may reach only the first, odd ones only the second, and every
    // third task may run /usr/bin/id: each task's verdicts must be its own scope's.
    let (a, b) = (listener(), listener());
    let mut ids = Vec::new();
    for i in 0..256 {
        let port = if i % 2 == 0 { a } else { b };
        let exec: &[&str] = if i % 3 == 0 { &["/usr/bin/sed", "/usr/bin/id"] } else { &["/usr/bin/sed"] };
        let scope = d.dir.path().join(format!("many-{i}.yaml"));
        std::fs::write(&scope, scope_with(&format!("many-{i}"), exec, Some(port), "")).unwrap();
        let o = d.warden(&["task", "start", "--scope", scope.to_str().unwrap()]);
        assert!(o.status.success(), "{}", text(&o));
        ids.push(String::from_utf8_lossy(&o.stdout).trim().to_string());
    }
    let list: Vec<serde_json::Value> =
        serde_json::from_slice(&d.warden(&["task", "list", "--json"]).stdout).unwrap();
    assert_eq!(list.len(), 256);
    let slots: std::collections::BTreeSet<u64> = list.iter().map(|t| t["slot"].as_u64().unwrap()).collect();
    assert_eq!(slots.len(), 256, "slots are unique");
    assert!(d.metrics().contains("warden_tasks_active 256"));
    // A spread of tasks, first, middle and last included, each judged by its own scope.
    for i in [0usize, 1, 2, 3, 127, 128, 129, 253, 254, 255] {
        let script = format!(
            "{} | sed s/^connect/a/; {} | sed s/^connect/b/; /usr/bin/id >/dev/null 2>&1 && echo id ran || echo id refused",
            connect(a),
            connect(b)
        );
        let o = d.exec(&ids[i], &script);
        let s = text(&o);
        let (want_a, want_b) = if i % 2 == 0 { ("a ok", "b err 1") } else { ("a err 1", "b ok") };
        assert!(s.contains(want_a) && s.contains(want_b), "task {i}: {s}");
        let want_id = if i % 3 == 0 { "id ran" } else { "id refused" };
        assert!(s.contains(want_id), "task {i}: {s}");
    }
    for id in &ids {
        assert!(d.end(id).status.success());
    }
    assert!(d.metrics().contains("warden_tasks_active 0"));
}

#[test]
fn metrics_and_the_event_stream() {
    if !require("metrics_and_the_event_stream", "root") {
        return;
    }
    let _s = serial();
    let d = TestDaemon::start("");
    let t = d.start_task("obs", &scope_with("obs", &[], None, ""));
    let id = t["id"].as_str().unwrap().to_string();
    let mut follow = d
        .command(&["events", "--follow", "--task", &id])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let o = d.exec(&id, "/usr/bin/id >/dev/null 2>&1; echo x");
    assert!(o.status.success());
    let m = d.metrics();
    for family in [
        "warden_tasks_active 1",
        &format!("warden_task_denials_total{{task=\"{id}\"}} 1"),
        &format!("warden_task_drops_total{{task=\"{id}\"}} 0"),
        "warden_decode_errors_total 0",
        "warden_ring_buffer_fill_bytes",
    ] {
        assert!(m.contains(family), "metrics lack {family}:\n{m}");
    }
    assert!(d.end(&id).status.success());
    // `events --follow --task` streams the task's records and ends with its end.
    let mut s = String::new();
    follow.stdout.take().unwrap().read_to_string(&mut s).unwrap();
    assert!(follow.wait().unwrap().success());
    let kinds: Vec<String> = s
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["kind"].as_str().unwrap().to_string())
        .collect();
    assert!(kinds.contains(&"exec".to_string()), "{kinds:?}");
    assert_eq!(kinds.last().map(String::as_str), Some("checkpoint"));
    // Without --follow: the node log, filtered.
    let hist = d.warden(&["events", "--task", &id]);
    let n = String::from_utf8_lossy(&hist.stdout).lines().count();
    assert_eq!(n, d.records_of(&id).len());
}

#[test]
fn run_goes_through_a_running_daemon() {
    if !require("run_goes_through_a_running_daemon", "root") {
        return;
    }
    let _s = serial();
    let d = TestDaemon::start("");
    let scope = d.dir.path().join("run.yaml");
    std::fs::write(&scope, scope_with("viadaemon", &[], None, "")).unwrap();
    let log = d.dir.path().join("run.jsonl");
    let o = d.warden(&[
        "run",
        "--scope",
        scope.to_str().unwrap(),
        "--log",
        log.to_str().unwrap(),
        "--",
        "/bin/sh",
        "-c",
        "/usr/bin/id; exit 3",
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let recs: Vec<serde_json::Value> =
        std::fs::read_to_string(&log).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let id = recs[0]["task"].as_str().unwrap();
    assert_eq!(recs[0]["kind"], "task_start");
    // The daemon wrote it: the node log has the same task, the same chain.
    assert_eq!(d.records_of(id).len(), recs.len());
    assert!(recs.iter().any(|r| r["kind"] == "exec" && r["decision"] == "deny"));
    let v = std::process::Command::new(warden_bin()).arg("verify").arg(&log).output().unwrap();
    assert!(v.status.success(), "{}", text(&v));
    assert!(d.warden(&["task", "list", "--json"]).stdout.starts_with(b"[]"));
    // A command that cannot start: 127, as without a daemon, and the task is ended.
    let missing = d.dir.path().join("missing.jsonl");
    let o = d.warden(&[
        "run",
        "--scope",
        scope.to_str().unwrap(),
        "--log",
        missing.to_str().unwrap(),
        "--",
        "/nonexistent/agent",
    ]);
    assert_eq!(o.status.code(), Some(127), "{}", text(&o));
    assert!(d.warden(&["task", "list", "--json"]).stdout.starts_with(b"[]"));
}

#[test]
fn bad_config_is_a_usage_error() {
    if !require("bad_config_is_a_usage_error", "root") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("w.yaml");
    std::fs::write(&p, "socket: /tmp/x.sock\nmaps:\n  max_taks: 5\n").unwrap();
    let o = std::process::Command::new(warden_bin())
        .args(["daemon", "--config", p.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("w.yaml:3:") && e.contains("max_taks"), "{e}");
    let o = std::process::Command::new(warden_bin())
        .args(["task", "list"])
        .env("WARDEN_SOCKET", dir.path().join("none.sock"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("is `warden daemon` running?"));
}

#[test]
fn standalone_run_issues_and_destroys_secrets_too() {
    if !require("standalone_run_issues_and_destroys_secrets_too", "root") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let vault = dir.path().join("vault");
    std::fs::write(&vault, "TOKEN-run-51").unwrap();
    let secrets = dir.path().join("secrets");
    let scope = format!(
        "version: 1\ntask: runsec\nsecrets:\n  - name: tok\n    from: file:{}\n    tools: [/usr/bin/cat]\n",
        vault.display()
    );
    let out = warden_tests::run_warden(
        &scope,
        "/usr/bin/cat \"$WARDEN_SECRET_TOK\"; echo; echo \"at $WARDEN_SECRET_TOK\"",
        &["--no-daemon", "--secrets-dir", secrets.to_str().unwrap()],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stdout.contains("TOKEN-run-51"), "{}", out.stdout);
    let at = out.result("at");
    assert!(at.starts_with(secrets.to_str().unwrap()), "{at}");
    assert!(!Path::new(&at).exists(), "the secret outlived the task");
    let start = &out.records[0];
    assert_eq!(start["secrets"][0]["name"], "tok");
    assert!(!out.log.contains("TOKEN-run-51"), "the value reached the log");
    if start["engine"] == "fallback" {
        assert_eq!(start["unenforced"], serde_json::json!(["secrets-by-tool"]));
    }
}

#[test]
fn live_rules_in_the_daemon_become_finding_records() {
    if !require("live_rules_in_the_daemon_become_finding_records", "root") {
        return;
    }
    let _s = serial();
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules/starter");
    let d = TestDaemon::start(&format!("rules: {}\n", rules.canonicalize().unwrap().display()));
    let t = d.start_task("rules", &scope_with("rules", &[], None, ""));
    let id = t["id"].as_str().unwrap();
    let o = d.exec(id, "for i in 1 2 3 4 5 6; do /usr/bin/id >/dev/null 2>&1; done; true");
    assert!(o.status.success(), "{}", text(&o));
    let f = d.wait_record(id, Duration::from_secs(10), |r| r["kind"] == "finding");
    assert_eq!(f["rule_id"], "denial-burst", "{f}");
    assert_eq!(f["records"].as_array().unwrap().len(), 5, "{f}");
    assert!(d.end(id).status.success());
    // Findings are part of the chain like any record.
    d.assert_log_verifies();
}

#[test]
fn binding_an_existing_cgroup_judges_what_already_runs_there() {
    if !require("binding_an_existing_cgroup_judges_what_already_runs_there", "root") {
        return;
    }
    let _s = serial();
    let d = TestDaemon::start("");
    let open = listener();
    // A "container": a cgroup with a process in it before Warden knows about it.
    let cg = warden_tests::TestCgroup::new("bind");
    let outdir = tempfile::tempdir().unwrap();
    let out = outdir.path().join("bind.out");
    let script =
        format!("while true; do {c} >> {o}; /usr/bin/sleep 0.05; done", c = connect(open), o = out.display());
    let mut pre = warden_tests::command_in(&cg.cg, "/bin/sh", &["-c", &script]).spawn().unwrap();
    assert!(
        warden_tests::wait_for(Duration::from_secs(10), || lines(&out)
            .contains(&"connect ok".to_string())
            .then_some(()))
        .is_some(),
        "unbound, the connect works"
    );
    let sp = d.dir.path().join("bind.yaml");
    std::fs::write(&sp, scope_with("bound", &["/usr/bin/sleep"], None, "")).unwrap();
    let o = d.warden(&[
        "task",
        "start",
        "--json",
        "--scope",
        sp.to_str().unwrap(),
        "--cgroup",
        cg.path().to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let t: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let id = t["id"].as_str().unwrap();
    assert_eq!(t["created"], false);
    let at_bind = lines(&out).len();
    assert!(
        warden_tests::wait_for(Duration::from_secs(10), || (lines(&out).len() >= at_bind + 5).then_some(()))
            .is_some()
    );
    // Give the line being written at the bind one slot of slack; everything after is refused.
    let after: Vec<String> = lines(&out)[at_bind + 1..].to_vec();
    assert!(after.iter().all(|l| l.starts_with("connect err 1")), "bound, a connect got through: {after:?}");
    // The refusal is attributed although the process started before the daemon saw it: the
    // process table resolves it from /proc when its first record arrives.
    let denied =
        d.wait_record(id, Duration::from_secs(5), |r| r["kind"] == "connect" && r["decision"] == "deny");
    assert!(denied["exe"].as_str().is_some_and(|e| e.ends_with("warden-probe")), "{denied}");
    assert!(denied["ppid"].is_u64(), "{denied}");
    assert!(d.end(id).status.success());
    assert!(pre.wait().is_ok());
    assert!(cg.cg.pids().unwrap().is_empty(), "task end killed the bound cgroup's processes");
    assert!(cg.path().exists(), "a bound cgroup is not the daemon's to remove");
}
