//! The demo's tool-call part (docs/calls.md): `examples/harness.py` runs as a daemon task and
//! puts every tool through `warden call` under the tool's own scope. Its `summarize` call is
//! refused a connect to the report server that the task scope grants (the `upload-report` call
//! makes the same connect); the demo shows that refusal with the call's id, name and intent,
//! then replays that one call and writes the HTML report.
use std::{
    net::TcpListener,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::Context as _;
use serde_json::Value;

use crate::util;

/// The report server's port in `examples/harness/*.yaml`.
const REPORT_PORT: u16 = 8471;

/// Runs the harness as a task of the daemon that `cli` talks to; `log` is its node log.
pub fn run(
    warden: &Path,
    root: &Path,
    dir: &Path,
    log: &Path,
    cli: &dyn Fn(&[&str]) -> Command,
) -> anyhow::Result<()> {
    // Calls arrived with issue #12; a build without them has nothing to show here.
    let help = cli(&["task", "exec", "--help"]).output()?;
    if !String::from_utf8_lossy(&help.stdout).contains("--call") {
        println!("\n== tool calls: this warden has no calls (`warden task exec --call`); skipped");
        return Ok(());
    }
    // The report server: a loopback listener, so an allowed connect is seen to succeed.
    let server = TcpListener::bind(("127.0.0.1", REPORT_PORT))
        .with_context(|| format!("the demo's report server needs 127.0.0.1:{REPORT_PORT}"))?;
    std::thread::spawn(move || {
        for c in server.incoming() {
            drop(c);
        }
    });
    // The example task scope, with this warden allowed (the harness runs `warden call`).
    let scope = std::fs::read_to_string(root.join("examples/harness/task.yaml"))?
        .replace("/usr/bin/rm]", &format!("/usr/bin/rm, {}]", warden.display()));
    let scope_file = dir.join("harness-task.yaml");
    std::fs::write(&scope_file, scope)?;
    let out = cli(&["task", "start", "--scope", scope_file.to_str().context("utf-8 path")?]).output()?;
    anyhow::ensure!(out.status.success(), "task start: {}", String::from_utf8_lossy(&out.stderr));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    println!("\n== tool calls: warden task start --scope examples/harness/task.yaml (+ warden) -> {id}");
    println!(
        "== warden task exec {id} -- python3 examples/harness.py   (each tool: warden call --name TOOL --scope TOOL.yaml --intent-file PROMPT -- CMD)"
    );
    let harness = root.join("examples/harness.py");
    let inside = cli(&["task", "exec", &id, "--", "/usr/bin/python3"])
        .arg(&harness)
        .arg("--warden")
        .arg(warden)
        .stdin(Stdio::null())
        .output()?;
    let said = String::from_utf8_lossy(&inside.stdout);
    let status = if inside.status.success() {
        print!("{said}");
        inside.status.code()
    } else {
        // `warden call` needs the task's call endpoint; a harness beside the task uses the API.
        let why = said.lines().find(|l| l.contains("error")).unwrap_or("").trim_start_matches("  | ");
        println!(
            "{why}\n\n== `warden call` did not run inside the task; the same harness drives the task from outside: \
             python3 examples/harness.py --task {id}   (each tool: warden task exec {id} --call TOOL ...)"
        );
        Command::new("/usr/bin/python3")
            .arg(&harness)
            .arg("--warden")
            .arg(warden)
            .args(["--task", &id])
            .env("WARDEN_SOCKET", dir.join("warden.sock"))
            .stdin(Stdio::null())
            .status()?
            .code()
    };
    let result = show(warden, root, log, &id, status);
    let _ = cli(&["task", "end", &id]).stdout(Stdio::null()).status();
    result
}

/// Prints the calls' records, checks the refusal is there, replays the call and writes the report.
fn show(warden: &Path, root: &Path, log: &Path, id: &str, status: Option<i32>) -> anyhow::Result<()> {
    anyhow::ensure!(status == Some(0), "the harness failed (exit {status:?})");
    // The daemon writes the last call's records as its ring is drained: wait for its call_end.
    let read = || -> anyhow::Result<Vec<Value>> {
        let text = std::fs::read_to_string(log)?;
        Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|r| r["task"] == id)
            .collect())
    };
    let t0 = std::time::Instant::now();
    let recs = loop {
        let recs = read()?;
        let done = recs.iter().any(|r| r["kind"] == "call_end" && r["call_name"] == "upload-report");
        if done || t0.elapsed() > std::time::Duration::from_secs(15) {
            break recs;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let s = |r: &Value, k: &str| r[k].as_str().unwrap_or("").to_string();
    println!("\n== the calls' records (node log):");
    for r in recs.iter().filter(|r| r.get("call").is_some()) {
        let what = match s(r, "kind").as_str() {
            "call_start" => format!("intent: {:?}", r["intent"]["text"].as_str().unwrap_or("(digest only)")),
            "call_end" => {
                format!("exit {} after {} ms, {} refused", r["exit_status"], r["duration_ms"], r["denials"])
            }
            "connect" | "sendmsg" => format!("{}:{}", s(r, "addr"), r["port"]),
            _ => s(r, "path"),
        };
        println!(
            "{:>4} {:<14} {:<10} {:<6} {:<16} {what}",
            r["seq"],
            s(r, "call_name"),
            s(r, "kind"),
            s(r, "decision"),
            s(r, "rule")
        );
    }
    let summarize = recs
        .iter()
        .find(|r| r["kind"] == "call_start" && r["call_name"] == "summarize")
        .context("no call_start of the summarize call")?;
    let call = s(summarize, "call");
    let refused = recs.iter().find(|r| {
        r["kind"] == "connect"
            && r["decision"] == "deny"
            && r["call"] == call.as_str()
            && r["port"] == REPORT_PORT
    });
    let allowed = recs.iter().find(|r| {
        r["kind"] == "connect"
            && r["decision"] == "allow"
            && r["call_name"] == "upload-report"
            && r["port"] == REPORT_PORT
    });
    anyhow::ensure!(refused.is_some(), "the summarize call's connect was not refused");
    anyhow::ensure!(allowed.is_some(), "the upload-report call's connect was not allowed");
    println!(
        "\n== call {call} (summarize) was refused 127.0.0.1:{REPORT_PORT} by its call scope (no network); the task \
         scope grants it, and the upload-report call made the same connect."
    );
    println!("\n== warden replay --call {call} --rules rules/starter {}", log.display());
    util::run(
        Command::new(warden)
            .args(["replay", "--call", &call, "--rules"])
            .arg(root.join("rules/starter"))
            .arg(log),
    )?;
    let html = root.join("target/demo-calls.html");
    println!(
        "\n== warden report --task {id} --html {}   (Calls section: each call with its intent)",
        html.display()
    );
    util::run(Command::new(warden).arg("report").arg(log).args(["--task", id, "--html"]).arg(&html))?;
    Ok(())
}
