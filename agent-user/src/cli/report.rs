//! `warden report EVENTS.jsonl --html OUT [--scope S.yaml] [--rules DIR] [--task ID]`.
use std::{
    fs::File,
    io::{BufRead, BufReader},
    path::PathBuf,
};

use anyhow::anyhow;
use serde_json::Value;

use super::Failure;
use crate::{
    audit::{
        schema,
        verify::{VerifyOptions, verify},
    },
    report::{Builder, Integrity, MAX_FINDINGS, html, usage::Filesystem},
    rules::{
        RuleSet,
        engine::{Engine, Finding},
    },
    scope::Scope,
};

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// The recorded log (JSON Lines).
    pub file: PathBuf,
    /// Write a self-contained HTML page here (no network needed to view it).
    #[arg(long, value_name = "OUT")]
    pub html: PathBuf,
    /// Show this scope's grants beside what the task used (least-privilege hints).
    #[arg(long, value_name = "S.yaml")]
    pub scope: Option<PathBuf>,
    /// Run this rule directory over the log and show the findings.
    #[arg(long, value_name = "DIR")]
    pub rules: Option<PathBuf>,
    /// Only this task (default: every task in the log).
    #[arg(long)]
    pub task: Option<String>,
}

/// Findings kept for the page, and how many there were.
struct Found {
    kept: Vec<Finding>,
    total: usize,
}

/// Reads the log once, leniently (unreadable lines are skipped and listed in the report),
/// handing each record to the report and the rules as it goes: nothing of the log is kept
/// beyond what the page shows.
fn read(
    args: &ReportArgs,
    b: &mut Builder<'_>,
    mut engine: Option<&mut Engine<'_>>,
) -> Result<Found, Failure> {
    let f = File::open(&args.file)
        .map_err(|e| Failure::Usage(anyhow!("cannot open {}: {e}", args.file.display())))?;
    let mut found = Found { kept: Vec::new(), total: 0 };
    let mut reader = BufReader::with_capacity(1 << 20, f);
    let mut line = Vec::new();
    let mut i = 0usize;
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| Failure::Runtime(anyhow!("{}: {e}", args.file.display())))?;
        if n == 0 {
            break;
        }
        i += 1;
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let parsed = std::str::from_utf8(text)
            .map_err(|_| "not UTF-8".to_string())
            .and_then(|l| serde_json::from_str::<Value>(l).map_err(|e| format!("not a JSON record: {e}")))
            .and_then(|v| schema::upgrade(v).map_err(|e| e.to_string()));
        match parsed {
            Ok(r) if args.task.as_deref().is_none_or(|t| r["task"].as_str() == Some(t)) => {
                b.record(&r);
                if let Some(e) = engine.as_deref_mut() {
                    for f in e.observe(&r) {
                        found.total += 1;
                        if found.kept.len() < MAX_FINDINGS {
                            found.kept.push(f);
                        }
                    }
                }
            }
            Ok(_) => {}
            Err(e) => b.skipped(i, e),
        }
    }
    Ok(found)
}

pub fn run(args: ReportArgs) -> Result<i32, Failure> {
    let usage = Failure::Usage;
    let scope = match &args.scope {
        Some(p) => Some(Scope::load(p).map_err(|e| usage(e.into()))?),
        None => None,
    };
    let rules = match &args.rules {
        Some(d) => Some(RuleSet::load_dir(d).map_err(|e| usage(e.into()))?),
        None => None,
    };
    let mut b = Builder::new(args.file.display().to_string(), scope.as_ref(), &Filesystem);
    let mut engine = rules.as_ref().map(Engine::new);
    let found = read(&args, &mut b, engine.as_mut())?;
    if b.records() == 0 && b.skipped_total() == 0 {
        return Err(usage(anyhow!(
            "{}: no records{}",
            args.file.display(),
            args.task.as_deref().map(|t| format!(" of task {t}")).unwrap_or_default()
        )));
    }
    if let Some(e) = &engine
        && e.eval_errors > 0
    {
        tracing::warn!(errors = e.eval_errors, "rule expressions failed to evaluate");
    }
    let integrity = {
        let f = File::open(&args.file).map_err(|e| Failure::Runtime(e.into()))?;
        match verify(BufReader::new(f), &VerifyOptions { trusted_key: None, allow_open: true }) {
            Ok(r) => Integrity::Intact(r),
            Err(e) => Integrity::Broken(e),
        }
    };
    let report = b.finish(integrity, engine.is_some().then_some((found.kept, found.total)));
    let page = html::render(&report);
    std::fs::write(&args.html, page)
        .map_err(|e| Failure::Runtime(anyhow!("cannot write {}: {e}", args.html.display())))?;
    let judged: usize = report.tasks.iter().map(|t| t.deny + t.audit).sum();
    eprintln!(
        "report: {} ({} records, {} processes, {judged} refused/audited{}{})",
        args.html.display(),
        report.records,
        report.tree.nodes.len(),
        if engine.is_some() { format!(", {} findings", report.findings_total) } else { String::new() },
        if report.skipped_total == 0 {
            String::new()
        } else {
            format!(", {} lines skipped", report.skipped_total)
        },
    );
    Ok(0)
}
