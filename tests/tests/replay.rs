//! Host tier: a recorded live session replays to identical findings; corrupt input is
//! reported by line, or skipped and counted with --keep-going.
use std::{path::Path, process::Command};

use warden_tests::{require, run_warden, warden_bin};

fn replay(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(warden_bin()).arg("replay").args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_recorded_session_replays_to_identical_findings() {
    if !require("a_recorded_session_replays_to_identical_findings", "tp_btf") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let payload = t.path().join("payload");
    std::fs::copy("/usr/bin/true", &payload).unwrap();
    let scope = format!(
        "version: 1\ntask: drift\nexec:\n  allow: [/bin/sh, /usr/bin/true, {}]\nnetwork:\n  egress:\n    - to: 127.0.0.1\n      ports: [9]\n",
        payload.display()
    );
    // Five refusals in a row (a burst) and a program run from /tmp.
    let script =
        format!("for i in 1 2 3 4 5; do /usr/bin/id >/dev/null 2>&1; done; {}; exit 0", payload.display());
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules/starter");
    let out = run_warden(&scope, &script, &["--rules", rules.to_str().unwrap()]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let log = t.path().join("session.jsonl");
    let text = out.log.clone();
    std::fs::write(&log, &text).unwrap();
    let args = ["--rules", rules.to_str().unwrap(), "--format", "json", log.to_str().unwrap()];
    let (c1, f1, e1) = replay(&args);
    let (c2, f2, _) = replay(&args);
    assert_eq!((c1, c2), (Some(0), Some(0)), "{e1}");
    assert_eq!(f1, f2, "replay is deterministic");
    let ids: Vec<String> = f1
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["rule"].as_str().unwrap().to_string())
        .collect();
    assert!(ids.contains(&"denial-burst".to_string()), "{f1}");
    // The same engine ran live: its finding records name the same rules and records.
    let live: Vec<(String, serde_json::Value)> = out
        .records
        .iter()
        .filter(|r| r["kind"] == "finding")
        .map(|r| (r["rule_id"].as_str().unwrap().to_string(), r["records"].clone()))
        .collect();
    let replayed: Vec<(String, serde_json::Value)> = f1
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| (v["rule"].as_str().unwrap().to_string(), v["seqs"].clone()))
        .collect();
    assert_eq!(live, replayed, "live findings equal replayed findings");
    if payload.starts_with("/tmp") {
        assert!(ids.contains(&"exec-from-writable-temp".to_string()), "{f1}");
    }
    // A different scope re-judges the same recording.
    let strict = t.path().join("strict.yaml");
    std::fs::write(&strict, "version: 1\ntask: strict\nexec:\n  allow: [/bin/sh]\n").unwrap();
    let (c, f, e) = replay(&["--scope", strict.to_str().unwrap(), log.to_str().unwrap()]);
    assert_eq!(c, Some(0), "{e}");
    assert!(f.contains(&format!("would have refused: exec of {}", payload.display())), "{f}");
    assert_eq!(f.lines().count(), 6, "five refused ids and the payload: {f}");
    // Corrupt input: stop with the line, or skip and count.
    let mut lines: Vec<&str> = text.lines().collect();
    lines[2] = "{not json";
    let bad = t.path().join("bad.jsonl");
    std::fs::write(&bad, lines.join("\n") + "\n").unwrap();
    let (c, _, e) = replay(&["--rules", rules.to_str().unwrap(), bad.to_str().unwrap()]);
    assert_eq!(c, Some(1));
    assert!(e.contains("bad.jsonl:3:"), "{e}");
    let (c, _, e) = replay(&["--rules", rules.to_str().unwrap(), "--keep-going", bad.to_str().unwrap()]);
    assert_eq!(c, Some(0));
    assert!(e.contains("1 lines skipped"), "{e}");
}

/// Replay reads a log in blocks and evaluates rule steps ahead on several threads: the output
/// and the summary are byte-identical whatever the number of threads, across block boundaries,
/// with older-schema records, a corrupt line (skipped with --keep-going) and a task filter.
#[test]
fn replay_output_is_identical_whatever_the_parallelism() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("big.jsonl");
    let mut text = String::new();
    let kinds = ["exec", "open", "connect", "exit", "fork"];
    let paths =
        ["/usr/bin/curl", "/run/secrets/k", "/usr/bin/python3", "/bin/sh", "/tmp/x", "/proc/1/environ"];
    for i in 1..=15_000u64 {
        let task = if i % 7 == 0 { "other" } else { "main" };
        let decision = if i % 13 == 0 { "deny" } else { "allow" };
        let rec = serde_json::json!({
            "v": if i % 997 == 0 { 1 } else { 2 }, "seq": i, "task": task,
            "time": format!("2026-01-01T{:02}:{:02}:{:02}.{:09}Z", i / 3600 % 24, i / 60 % 60, i % 60, i),
            "kind": kinds[(i % 5) as usize], "decision": decision, "pid": 100 + i % 11,
            "path": paths[(i % 6) as usize], "addr": if i % 3 == 0 { "8.8.8.8" } else { "10.0.0.9" },
            "port": if i % 4 == 0 { 53 } else { 443 }, "protocol": "udp",
            "prev": "0".repeat(64), "hash": "f".repeat(64),
        });
        text.push_str(&rec.to_string());
        text.push('\n');
        if i == 8_000 {
            text.push_str("{\"v\":2,\"seq\":\n");
        }
        // Task starts in the middle of blocks: OCSF events after them name their node.
        for (at, task, node) in
            [(3_000, "main", "node-a"), (9_000, "other", "node-b"), (12_000, "main", "node-c")]
        {
            if i == at {
                let start = serde_json::json!({"v": 2, "seq": i, "task": task, "kind": "task_start",
                    "time": "2026-01-01T00:00:00Z", "decision": "allow", "pid": 99, "node": node,
                    "scope": "s.yaml", "cmd": ["sh"]});
                text.push_str(&start.to_string());
                text.push('\n');
            }
        }
    }
    std::fs::write(&log, &text).unwrap();
    assert!(text.len() > 2 * (2 << 20), "the log spans several blocks");
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules/starter");
    let run = |jobs: &str, extra: &[&str]| {
        let mut args =
            vec!["--rules", rules.to_str().unwrap(), "--format", "json", "--keep-going", "--jobs", jobs];
        args.extend_from_slice(extra);
        args.push(log.to_str().unwrap());
        let (code, out, err) = replay(&args);
        assert_eq!(code, Some(0), "{err}");
        (out, err.lines().filter(|l| l.starts_with("replay:")).collect::<Vec<_>>().join("\n"))
    };
    let (one, sum1) = run("1", &[]);
    assert!(one.lines().count() > 500, "findings of several rules: {sum1}");
    assert!(sum1.contains("1 lines skipped"), "{sum1}");
    for jobs in ["2", "3"] {
        let (out, sum) = run(jobs, &[]);
        assert!(out == one, "--jobs {jobs} changed the findings");
        assert_eq!(sum, sum1);
    }
    let (t1, _) = run("1", &["--task", "other"]);
    let (t2, _) = run("2", &["--task", "other"]);
    assert!(!t1.is_empty() && t1 == t2, "a task filter gives the same findings on any number of threads");
    // OCSF events are written ahead on every thread: the same bytes, hosts learnt mid-block.
    let ocsf = |jobs: &str, extra: &[&str]| {
        let mut args =
            vec!["--rules", rules.to_str().unwrap(), "--format", "ocsf", "--keep-going", "--jobs", jobs];
        args.extend_from_slice(extra);
        args.push(log.to_str().unwrap());
        let (code, out, err) = replay(&args);
        assert_eq!(code, Some(0), "{err}");
        out
    };
    let one = ocsf("1", &[]);
    let hosts = |out: &str, host: &str| out.matches(&format!("\"hostname\":\"{host}\"")).count();
    assert!(
        hosts(&one, "node-a") > 1000 && hosts(&one, "node-b") > 1000 && hosts(&one, "node-c") > 1000,
        "events after each task_start name its node"
    );
    assert!(one.contains("\"class_uid\":2004"), "findings follow their records");
    for jobs in ["2", "3"] {
        assert!(ocsf(jobs, &[]) == one, "--jobs {jobs} changed the OCSF output");
    }
    assert!(ocsf("1", &["--task", "other"]) == ocsf("2", &["--task", "other"]));
}
