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
    report::{Integrity, Report, html, usage::Filesystem},
    rules::{RuleSet, engine::Engine},
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

/// Records, and the lines that could not be read: (line number, why).
type Lines = (Vec<Value>, Vec<(usize, String)>);

/// Reads the log leniently: unreadable lines are skipped and listed in the report.
fn read(args: &ReportArgs) -> Result<Lines, Failure> {
    let f = File::open(&args.file)
        .map_err(|e| Failure::Usage(anyhow!("cannot open {}: {e}", args.file.display())))?;
    let (mut records, mut skipped) = (Vec::new(), Vec::new());
    for (i, line) in BufReader::new(f).split(b'\n').enumerate() {
        let line = line.map_err(|e| Failure::Runtime(anyhow!("{}: {e}", args.file.display())))?;
        let parsed = std::str::from_utf8(&line)
            .map_err(|_| "not UTF-8".to_string())
            .and_then(|l| serde_json::from_str::<Value>(l).map_err(|e| format!("not a JSON record: {e}")))
            .and_then(|v| schema::upgrade(v).map_err(|e| e.to_string()));
        match parsed {
            Ok(r) if args.task.as_deref().is_none_or(|t| r["task"].as_str() == Some(t)) => records.push(r),
            Ok(_) => {}
            Err(e) => skipped.push((i + 1, e)),
        }
    }
    Ok((records, skipped))
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
    let (records, skipped) = read(&args)?;
    if records.is_empty() && skipped.is_empty() {
        return Err(usage(anyhow!(
            "{}: no records{}",
            args.file.display(),
            args.task.as_deref().map(|t| format!(" of task {t}")).unwrap_or_default()
        )));
    }
    let integrity = {
        let f = File::open(&args.file).map_err(|e| Failure::Runtime(e.into()))?;
        match verify(BufReader::new(f), &VerifyOptions { trusted_key: None, allow_open: true }) {
            Ok(r) => Integrity::Intact(r),
            Err(e) => Integrity::Broken(e),
        }
    };
    let findings = rules.as_ref().map(|set| {
        let mut engine = Engine::new(set);
        let found: Vec<_> = records.iter().flat_map(|r| engine.observe(r)).collect();
        if engine.eval_errors > 0 {
            tracing::warn!(errors = engine.eval_errors, "rule expressions failed to evaluate");
        }
        found
    });
    let report = Report::build(
        args.file.display().to_string(),
        records,
        skipped,
        integrity,
        scope.as_ref(),
        findings,
        &Filesystem,
    );
    let page = html::render(&report);
    std::fs::write(&args.html, page)
        .map_err(|e| Failure::Runtime(anyhow!("cannot write {}: {e}", args.html.display())))?;
    let judged =
        report.records.iter().filter(|r| matches!(r["decision"].as_str(), Some("deny" | "audit"))).count();
    eprintln!(
        "report: {} ({} records, {} processes, {judged} refused/audited{}{})",
        args.html.display(),
        report.records.len(),
        report.tree.nodes.len(),
        report.findings.as_ref().map(|f| format!(", {} findings", f.len())).unwrap_or_default(),
        if report.skipped.is_empty() {
            String::new()
        } else {
            format!(", {} lines skipped", report.skipped.len())
        },
    );
    Ok(0)
}
