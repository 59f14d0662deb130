//! Host tier: `warden run` end to end, through the real binary.
use std::{path::Path, process::Command, time::Duration};

use serde_json::Value;
use warden_tests::{require, run_warden, spawn_warden, wait_for, warden_bin};

/// A scope that only names the task.
fn scope(name: &str) -> String {
    format!("version: 1\ntask: {name}\n")
}

/// Pids of live processes whose cgroup path contains `needle`.
fn procs_in_cgroup(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if let Ok(cg) = std::fs::read_to_string(e.path().join("cgroup"))
            && cg.contains(needle)
        {
            out.push(pid);
        }
    }
    out
}

#[test]
fn run_records_the_tree_kills_orphans_and_returns_the_status() {
    if !require("run_records_the_tree_kills_orphans_and_returns_the_status", "tp_btf") {
        return;
    }
    let out =
        run_warden(&scope("orphans"), "ls >/dev/null; (sleep 300 &) ; (setsid sleep 301 &); exit 3", &[]);
    assert_eq!(out.code, Some(3), "stderr: {}", out.stderr);

    let recs = &out.records;
    let task = recs[0]["task"].as_str().unwrap().to_string();
    assert!(task.starts_with("orphans-"));
    // Nothing of the task survives: no process is left in its cgroup.
    assert!(procs_in_cgroup(&task).is_empty(), "processes left in {task}");

    let kinds: Vec<&str> = recs.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"task_start"));
    assert_eq!(&kinds[kinds.len() - 2..], ["task_end", "checkpoint"], "the end is signed");
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r["v"], 2);
        assert_eq!(r["seq"], (i + 1) as u64, "gap-free sequence");
        assert_eq!(r["task"], task.as_str());
        assert!(r["prev"].is_string() && r["hash"].is_string(), "chained: {r}");
        for k in ["time", "kind"] {
            assert!(r.get(k).is_some(), "record {i} lacks {k}: {r}");
        }
        if r["kind"] != "checkpoint" {
            assert!(r.get("decision").is_some(), "record {i} lacks decision: {r}");
        }
    }
    let exec_paths: Vec<&str> =
        recs.iter().filter(|r| r["kind"] == "exec").map(|r| r["path"].as_str().unwrap()).collect();
    for want in ["sh", "ls", "sleep", "setsid"] {
        assert!(
            exec_paths.iter().any(|p| p.ends_with(&format!("/{want}"))),
            "no exec of {want}: {exec_paths:?}"
        );
    }
    assert_eq!(exec_paths.iter().filter(|p| p.ends_with("/sleep")).count(), 2);
    // Each sleep that was killed at task end has its exit record with SIGKILL.
    let killed: Vec<&Value> = recs.iter().filter(|r| r["kind"] == "exit" && r["signal"] == 9).collect();
    assert_eq!(killed.len(), 2, "both sleeps killed: {killed:?}");
    assert!(killed.iter().all(|r| r["comm"] == "sleep"));
    // Every exec/fork/exit has pid, ppid and exe.
    for r in recs.iter().filter(|r| ["exec", "fork", "exit"].contains(&r["kind"].as_str().unwrap())) {
        assert!(r["pid"].is_u64() && r["ppid"].is_u64() && r["exe"].is_string(), "{r}");
    }
    let end = &recs[recs.len() - 2];
    assert_eq!(end["exit_status"], 3);
    assert_eq!(end["drops"], 0);
    assert_eq!(end["killed"], 2);
    assert_eq!(end["reason"], "exited");
}

#[test]
fn sigterm_ends_the_task_the_same_way() {
    if !require("sigterm_ends_the_task_the_same_way", "tp_btf") {
        return;
    }
    let running = spawn_warden(&scope("sigterm"), "(sleep 300 &); exec sleep 299", &[]);
    // Wait until both sleeps have exec'd, then ask warden to stop.
    let ready = wait_for(Duration::from_secs(10), || {
        let n = std::fs::read_to_string(&running.log_path)
            .ok()?
            .lines()
            .filter(|l| l.contains("\"kind\":\"exec\"") && l.contains("/sleep"))
            .count();
        (n >= 2).then_some(())
    });
    assert!(ready.is_some(), "sleeps never started");
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(running.child.id() as i32, libc::SIGTERM) };
    let out = running.finish();
    assert_eq!(
        out.code,
        Some(143),
        "ended by SIGTERM: 128+15, as a shell reports it; stderr: {}",
        out.stderr
    );
    let recs = &out.records;
    let task = recs[0]["task"].as_str().unwrap();
    assert!(procs_in_cgroup(task).is_empty());
    let end = &recs[recs.len() - 2];
    assert_eq!(end["kind"], "task_end");
    assert_eq!(end["reason"], "signal SIGTERM");
    assert_eq!(end["signal"], 9);
}

#[test]
fn bad_input_exits_2_and_starts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("l.jsonl");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "version: 1\ntask: x\nbogus: 1\n").unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "run".into(),
                "--scope".into(),
                bad.display().to_string(),
                "--log".into(),
                log.display().to_string(),
                "--".into(),
                "true".into(),
            ],
            "bogus",
        ),
        (
            vec![
                "run".into(),
                "--scope".into(),
                "/nonexistent.yaml".into(),
                "--log".into(),
                log.display().to_string(),
                "--".into(),
                "true".into(),
            ],
            "nonexistent",
        ),
        (
            vec!["run".into(), "--log".into(), log.display().to_string(), "--".into(), "true".into()],
            "--scope",
        ),
        (
            vec![
                "run".into(),
                "--scope".into(),
                bad.display().to_string(),
                "--log".into(),
                log.display().to_string(),
            ],
            "CMD",
        ),
    ];
    for (args, needle) in cases {
        let out = Command::new(warden_bin()).args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: message should mention {needle}: {err}");
        assert!(!log.exists(), "{args:?}: nothing may be started or written");
    }
}

fn verify(log: &Path) -> (Option<i32>, String) {
    let out = Command::new(warden_bin()).arg("verify").arg(log).output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn verify_accepts_an_intact_log_and_finds_each_tampering() {
    if !require("verify_accepts_an_intact_log_and_finds_each_tampering", "tp_btf") {
        return;
    }
    // The identity document and the tampered copies: a dir of the test's own (`--identity` is
    // named before the run).
    let dir = tempfile::tempdir().unwrap();
    let doc = dir.path().join("identity.json");
    let out =
        run_warden(&scope("evidence"), "ls >/dev/null; true; exit 0", &["--identity", doc.to_str().unwrap()]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let log = &out.log_path;
    let (code, msg) = verify(log);
    assert_eq!(code, Some(0), "{msg}");
    assert!(msg.contains("intact"), "{msg}");
    // The task's identity document verifies; a tampered copy does not.
    let id = |p: &Path| Command::new(warden_bin()).args(["identity", "verify"]).arg(p).output().unwrap();
    let ok = id(&doc);
    assert_eq!(ok.status.code(), Some(0), "{}", String::from_utf8_lossy(&ok.stdout));
    let text = std::fs::read_to_string(&doc).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let task = v["task"].as_str().unwrap().to_string();
    let start: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(log).unwrap().lines().next().unwrap()).unwrap();
    assert_eq!(start["task"], task.as_str(), "the records carry the identity's task id");
    assert_eq!(start["scope_hash"], v["scope_hash"]);
    let forged = dir.path().join("forged.json");
    std::fs::write(&forged, text.replace(&task, "someone-else")).unwrap();
    let bad = id(&forged);
    assert_eq!(bad.status.code(), Some(1), "{}", String::from_utf8_lossy(&bad.stdout));
    let text = std::fs::read_to_string(log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 6);
    let write = |name: &str, content: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, content).unwrap();
        p
    };
    let join = |ls: &[&str]| ls.iter().map(|l| format!("{l}\n")).collect::<String>();
    // A byte flip in line 3.
    let mut flipped = lines.clone();
    let l3 = lines[2].replacen("\"pid\":", "\"pid\":1", 1);
    flipped[2] = &l3;
    let (code, msg) = verify(&write("flip.jsonl", join(&flipped)));
    assert_eq!(code, Some(1));
    assert!(msg.contains(":3: hash mismatch"), "{msg}");
    // Line 4 deleted.
    let mut deleted = lines.clone();
    deleted.remove(3);
    let (code, msg) = verify(&write("deleted.jsonl", join(&deleted)));
    assert_eq!(code, Some(1));
    assert!(msg.contains(":4: sequence"), "{msg}");
    // The tail (task_end and its checkpoint) cut off.
    let (code, msg) = verify(&write("truncated.jsonl", join(&lines[..lines.len() - 2])));
    assert_eq!(code, Some(1));
    assert!(msg.contains(&format!(":{}:", lines.len() - 2)) && msg.contains("truncated"), "{msg}");
    // Half a line missing at the end.
    let (code, msg) = verify(&write("cut.jsonl", text[..text.len() - 20].to_string()));
    assert_eq!(code, Some(1));
    assert!(msg.contains(&format!(":{}: truncated", lines.len())), "{msg}");
}

#[test]
fn evidence_gaps_are_records_and_can_end_the_task() {
    if !require("evidence_gaps_are_records_and_can_end_the_task", "tp_btf") {
        return;
    }
    // A one-page ring cannot hold a burst while its reader is stopped: `warden` (every thread
    // of it, the ring's drain thread too) is held with SIGSTOP from before the burst starts
    // until it has ended, so records are lost in the kernel whatever the drain's speed.
    let stopped_burst = |scope: &str| {
        let sync = tempfile::tempdir().unwrap();
        let (go, done) = (sync.path().join("go"), sync.path().join("done"));
        let script = format!(
            "while [ ! -e {go} ]; do sleep 0.02; done; \
             for j in 1 2 3 4; do (i=0; while [ $i -lt 100 ]; do /bin/true; i=$((i+1)); done) & done; wait; \
             touch {done}; sleep 3",
            go = go.display(),
            done = done.display()
        );
        let w = spawn_warden(scope, &script, &["--ring-bytes", "4096"]);
        let pid = nix::unistd::Pid::from_raw(w.child.id() as i32);
        let started = wait_for(Duration::from_secs(10), || {
            std::fs::read_to_string(&w.log_path).ok().filter(|l| l.contains("task_start"))
        });
        assert!(started.is_some(), "the task started");
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
        std::fs::write(&go, "").unwrap();
        let burst = wait_for(Duration::from_secs(60), || done.exists().then_some(()));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
        assert!(burst.is_some(), "the burst ran");
        w.finish()
    };
    // The loss becomes a gap record, and the task goes on.
    let out = stopped_burst(&scope("gaps"));
    let gaps: Vec<&Value> = out.records.iter().filter(|r| r["kind"] == "gap").collect();
    assert!(!gaps.is_empty(), "a gap record: {}", out.stderr);
    assert!(
        gaps.iter().all(|g| g["drops"].as_u64().unwrap() > 0 || g["decode_errors"].as_u64().unwrap() > 0)
    );
    let end = &out.records[out.records.len() - 2];
    assert_eq!(end["reason"], "exited");
    let lost: u64 = gaps.iter().map(|g| g["drops"].as_u64().unwrap()).sum();
    assert_eq!(end["drops"], lost, "gap records account for every lost record");
    // Failing closed: the same task ends at the first gap.
    let out = stopped_burst(&format!("{}evidence:\n  on_gap: end\n", scope("gaps")));
    assert_eq!(out.code, Some(125), "{}", out.stderr);
    let end = &out.records[out.records.len() - 2];
    assert_eq!(end["reason"], "evidence gap");
}

#[test]
fn a_rotated_log_verifies_as_one_chain() {
    if !require("a_rotated_log_verifies_as_one_chain", "tp_btf") {
        return;
    }
    let out = run_warden(
        &scope("rotate"),
        "ls >/dev/null; ls >/dev/null; ls >/dev/null",
        &["--log-max-bytes", "1500"],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let log = &out.log_path;
    let mut files: Vec<std::path::PathBuf> = (1..100)
        .map(|n| std::path::PathBuf::from(format!("{}.{n}", log.display())))
        .take_while(|p| p.exists())
        .collect();
    assert!(files.len() >= 2, "the log rotated");
    files.reverse();
    files.push(log.clone());
    let run_verify =
        |fs: &[std::path::PathBuf]| Command::new(warden_bin()).arg("verify").args(fs).output().unwrap();
    let ok = run_verify(&files);
    assert_eq!(ok.status.code(), Some(0), "{}", String::from_utf8_lossy(&ok.stdout));
    // Without the oldest file the chain does not start at the beginning.
    let bad = run_verify(&files[1..]);
    assert_eq!(bad.status.code(), Some(1));
    let msg = String::from_utf8_lossy(&bad.stdout);
    assert!(msg.starts_with(&format!("{}:1:", files[1].display())), "{msg}");
}
