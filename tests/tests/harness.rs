//! Host tier: `examples/harness.py`, an agent tool loop that runs each tool as a call of a
//! daemon task (docs/calls.md): through `warden call` from inside the task, or through
//! `warden task exec ID --call` from outside it. Every tool call is recorded as a
//! call with its name and the intent the harness gave; the `summarize` call, whose scope grants
//! no network, is refused the connect to the report server that the task scope grants (and the
//! `upload-report` call, whose scope grants it, makes); the refusal carries the call's id.
use std::{net::TcpListener, path::Path, time::Duration};

use agent_user::audit::chain::sha256_hex;
use serde_json::Value;
use warden_tests::{daemon::TestDaemon, require, warden_bin};

/// The report server's port in the example scopes (`examples/harness/*.yaml`): the test moves
/// the server to a free port and gives the harness copies of the scopes that grant that one.
const EXAMPLE_PORT: &str = "8471";

/// How the harness starts its calls.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    /// Runs inside the task: `warden call`.
    Inside,
    /// Runs beside the task: `warden task exec ID --call`.
    Outside,
}

#[test]
fn the_example_harness_runs_each_tool_as_a_call() {
    if !require("the_example_harness_runs_each_tool_as_a_call", "root") {
        return;
    }
    harness(Via::Inside);
}

#[test]
fn the_example_harness_drives_a_task_from_outside() {
    if !require("the_example_harness_drives_a_task_from_outside", "root") {
        return;
    }
    harness(Via::Outside);
}

fn harness(via: Via) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let examples = root.join("examples");
    // The report server, on a free port: an allowed connect succeeds, a refused one fails with
    // EPERM. The example scopes grant its port, rewritten from the example's.
    let server = TcpListener::bind(("127.0.0.1", 0)).expect("a port for the report server");
    let port = server.local_addr().unwrap().port();
    let with_port = |text: String| {
        let rewritten = text.replace(&format!("ports: [{EXAMPLE_PORT}]"), &format!("ports: [{port}]"));
        assert!(rewritten != text || !text.contains(EXAMPLE_PORT), "the example port moved: {text}");
        rewritten
    };
    let scopes = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(examples.join("harness")).unwrap() {
        let e = e.unwrap();
        let text = std::fs::read_to_string(e.path()).unwrap();
        std::fs::write(scopes.path().join(e.file_name()), with_port(text)).unwrap();
    }
    server.set_nonblocking(true).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = stop.clone();
    let accept = std::thread::spawn(move || {
        while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
            match server.accept() {
                Ok((c, _)) => drop(c),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    // The starter rules run live: their findings on the calls' records are written as records.
    let d = TestDaemon::start(&format!("rules: {}\n", root.join("rules/starter").display()));
    // The example task scope, with the warden under test allowed (for `warden call`).
    let task_scope = std::fs::read_to_string(scopes.path().join("task.yaml"))
        .unwrap()
        .replace("/usr/bin/rm]", &format!("/usr/bin/rm, {}]", warden_bin().display()));
    assert!(task_scope.contains(&warden_bin().display().to_string()));
    assert!(task_scope.contains(&format!("ports: [{port}]")), "{task_scope}");
    let port_arg = port.to_string();
    let harness_args = ["--scopes", scopes.path().to_str().unwrap(), "--report-port", &port_arg];
    let task = d.start_task("harness", &task_scope);
    let id = task["id"].as_str().expect("task id").to_string();
    let script = examples.join("harness.py");
    let out = match via {
        Via::Inside => d.warden(&[
            "task",
            "exec",
            &id,
            "--",
            "/usr/bin/python3",
            script.to_str().unwrap(),
            "--warden",
            warden_bin().to_str().unwrap(),
            harness_args[0],
            harness_args[1],
            harness_args[2],
            harness_args[3],
        ]),
        Via::Outside => std::process::Command::new("/usr/bin/python3")
            .arg(&script)
            .args(["--warden", warden_bin().to_str().unwrap(), "--task", &id])
            .args(harness_args)
            .env("WARDEN_SOCKET", &d.socket)
            .output()
            .unwrap(),
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = accept.join();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let says =
        format!("{stdout}\nstderr:\n{}\ndaemon:\n{}", String::from_utf8_lossy(&out.stderr), d.stderr());
    assert_eq!(out.status.code(), Some(0), "{says}");
    // What each tool printed, through the harness.
    assert!(stdout.contains("| notes.txt"), "list-files ran: {says}");
    assert!(stdout.contains("| SYSTEM NOTE TO THE ASSISTANT"), "read-notes ran: {says}");
    assert!(stdout.contains("| summary: 2 changes"), "summarize ran: {says}");
    assert!(stdout.contains("| upload: refused: Operation not permitted"), "{says}");
    assert!(stdout.contains("| upload: connected to the report server"), "{says}");

    let end = d.wait_record(&id, Duration::from_secs(20), |r| {
        r["kind"] == "call_end" && r["call_name"] == "upload-report"
    });
    let recs = d.records_of(&id);
    let starts: Vec<&Value> = recs.iter().filter(|r| r["kind"] == "call_start").collect();
    let names: Vec<&str> = starts.iter().map(|r| r["call_name"].as_str().unwrap()).collect();
    assert_eq!(names, ["list-files", "read-notes", "summarize", "upload-report"], "{says}");
    // Each call's intent as the harness wrote it, digest and text; each call under the task.
    let intent = "Summarize the release notes in one line.\n(The notes also asked to upload them first.)";
    let summarize = starts[2];
    assert_eq!(summarize["intent"]["text"], intent);
    assert_eq!(summarize["intent"]["sha256"], sha256_hex(intent.as_bytes()));
    for s in &starts {
        assert_eq!(s["parent"], id.as_str(), "{s}");
    }
    // The refused connect: in the summarize call, by the call's scope.
    let call = summarize["call"].as_str().unwrap();
    let refused: Vec<&Value> = recs
        .iter()
        .filter(|r| r["kind"] == "connect" && r["port"] == port && r["decision"] == "deny")
        .collect();
    assert_eq!(refused.len(), 1, "{says}");
    assert_eq!(
        (refused[0]["call"].as_str(), refused[0]["call_name"].as_str()),
        (Some(call), Some("summarize"))
    );
    assert_eq!(refused[0]["rule"], "network.egress");
    // The same connect, allowed, in upload-report (whose scope grants it, as the task's does).
    assert!(
        recs.iter().any(|r| r["kind"] == "connect"
            && r["port"] == port
            && r["decision"] == "allow"
            && r["call"] == end["call"]),
        "{says}"
    );
    let summarize_end =
        recs.iter().find(|r| r["kind"] == "call_end" && r["call"] == call).expect("summarize's call_end");
    assert_eq!(summarize_end["exit_status"], 3);
    assert_eq!(summarize_end["denials"], 1);
    // Replay of that one call: its records and the task's start, with the call refused.
    let log = d.log.to_str().unwrap();
    let o = std::process::Command::new(warden_bin())
        .args(["replay", "--rules"])
        .arg(root.join("rules/starter"))
        .args(["--call", call, "--format", "json", log])
        .output()
        .unwrap();
    let findings = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains(&format!("replay: call {call}: ")));
    let replayed: Vec<Value> = findings
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|f| f["rule"] == "call-refused")
        .collect();
    assert_eq!(replayed.len(), 1, "{findings}");
    assert_eq!(replayed[0]["seqs"], serde_json::json!([refused[0]["seq"]]));
    // Live, the same rule read the call from the typed record and fired on the same record.
    let live: Vec<&Value> =
        recs.iter().filter(|r| r["kind"] == "finding" && r["rule_id"] == "call-refused").collect();
    assert_eq!(live.len(), 1, "{says}");
    assert_eq!(live[0]["records"], replayed[0]["seqs"]);
    let _ = d.end(&id);
}
