//! `warden rules test DIR` and `warden replay`.
use std::{
    fs::File,
    io::{BufRead, BufReader, IsTerminal, Write},
    net::IpAddr,
    path::PathBuf,
};

use anyhow::anyhow;
use serde_json::Value;

use super::Failure;
use crate::{
    audit::{ocsf, schema},
    loader::user_dev_to_kernel,
    rules::{
        RuleSet, Severity,
        engine::{Engine, Finding, test_rules},
    },
    scope::{
        Scope,
        compile::{CompiledScope, egress_allows},
    },
};

#[derive(Debug, clap::Subcommand)]
pub enum RulesCmd {
    /// Run every rule's example streams (`tests.fire` must fire, `tests.quiet` must not).
    Test {
        /// Directory of rule files (*.yaml).
        dir: PathBuf,
    },
}

pub fn rules(cmd: RulesCmd) -> Result<i32, Failure> {
    let RulesCmd::Test { dir } = cmd;
    let set = RuleSet::load_dir(&dir).map_err(|e| Failure::Usage(e.into()))?;
    let results = test_rules(&set);
    let mut failed = 0;
    for r in &results {
        if r.failures.is_empty() {
            println!("PASS {} ({} examples)", r.rule, r.passed);
        } else {
            failed += 1;
            println!("FAIL {}", r.rule);
            for f in &r.failures {
                println!("     {f}");
            }
        }
    }
    println!("rules: {} passed, {failed} failed", results.len() - failed);
    Ok(if failed == 0 { 0 } else { 1 })
}

/// Output format of replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReplayFormat {
    /// One finding per line, for people.
    Text,
    /// One finding per line, as JSON.
    Json,
    /// Every record mapped to an OCSF 1.x event, one per line, findings as Detection Findings
    /// (docs/ocsf.md). Needs neither --rules nor --scope.
    Ocsf,
}

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// Recorded logs (JSON Lines), in order.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Rule directory to run over the recording.
    #[arg(long)]
    pub rules: Option<PathBuf>,
    /// Re-judge the recording against this scope: what would it have refused?
    #[arg(long)]
    pub scope: Option<PathBuf>,
    /// Only this task.
    #[arg(long)]
    pub task: Option<String>,
    #[arg(long, value_enum, default_value = "text")]
    pub format: ReplayFormat,
    /// Skip (and count) corrupt lines instead of stopping at the first one.
    #[arg(long)]
    pub keep_going: bool,
    /// --format ocsf: `device.hostname`, the host the log was recorded on (default: this host).
    #[arg(long, value_name = "NAME")]
    pub host: Option<String>,
}

/// Re-judges exec and egress records against a compiled scope.
fn rejudge(rec: &Value, scope: &CompiledScope) -> Option<String> {
    match rec["kind"].as_str()? {
        "exec" => {
            let allow = scope.exec.as_ref()?;
            let (dev, ino) = (rec["dev"].as_u64()?, rec["ino"].as_u64()?);
            let allowed =
                allow.iter().any(|f| f.ino == ino && user_dev_to_kernel(f.dev) == user_dev_to_kernel(dev));
            (!allowed).then(|| format!("exec of {} (not in exec.allow)", rec["path"].as_str().unwrap_or("?")))
        }
        k @ ("connect" | "sendmsg") => {
            let entries = scope.egress.as_ref()?;
            let addr: IpAddr = rec["addr"].as_str()?.parse().ok()?;
            let port = rec["port"].as_u64()? as u16;
            let proto = match rec["protocol"].as_str()? {
                "tcp" => 6,
                "udp" => 17,
                other => other.parse().ok()?,
            };
            (!egress_allows(entries, addr, port, proto))
                .then(|| format!("{k} to {addr}:{port} (not in network.egress)"))
        }
        _ => None,
    }
}

fn print(
    f: &Finding,
    format: ReplayFormat,
    ctx: &ocsf::Context,
    out: &mut impl Write,
) -> std::io::Result<()> {
    match format {
        ReplayFormat::Ocsf => {
            serde_json::to_writer(&mut *out, &ocsf::finding(f, ctx))?;
            writeln!(out)
        }
        ReplayFormat::Json => {
            serde_json::to_writer(&mut *out, f)?;
            writeln!(out)
        }
        ReplayFormat::Text => writeln!(
            out,
            "{} {:<8} {} task={} records={:?}: {}",
            f.time,
            format!("{:?}", f.severity).to_lowercase(),
            f.rule,
            f.task,
            f.seqs,
            f.description
        ),
    }
}

pub fn replay(args: ReplayArgs) -> Result<i32, Failure> {
    let usage = |e: anyhow::Error| Failure::Usage(e);
    let set = match &args.rules {
        Some(d) => RuleSet::load_dir(d).map_err(|e| usage(e.into()))?,
        None => RuleSet { rules: Vec::new(), lists: Default::default() },
    };
    let scope = match &args.scope {
        Some(p) => Some(
            CompiledScope::compile(&Scope::load(p).map_err(|e| usage(e.into()))?)
                .map_err(|e| usage(e.into()))?,
        ),
        None => None,
    };
    if set.rules.is_empty() && scope.is_none() && args.format != ReplayFormat::Ocsf {
        return Err(usage(anyhow!("give --rules DIR, --scope FILE, or both")));
    }
    let total: u64 = args.files.iter().filter_map(|f| std::fs::metadata(f).ok()).map(|m| m.len()).sum();
    let bar = (total > 64 << 20 && std::io::stderr().is_terminal())
        .then(|| indicatif::ProgressBar::new(total).with_style(indicatif::ProgressStyle::default_bar()));
    let mut engine = Engine::new(&set);
    let ctx = ocsf::Context {
        hostname: args.host.clone().or_else(|| nix::unistd::gethostname().ok()?.into_string().ok()),
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let (mut records, mut findings, mut skipped) = (0u64, 0u64, 0u64);
    for path in &args.files {
        let f = File::open(path).map_err(|e| usage(anyhow!("cannot open {}: {e}", path.display())))?;
        let mut reader = BufReader::new(f);
        let mut line = String::new();
        let mut n = 0usize;
        loop {
            line.clear();
            let read = reader
                .read_line(&mut line)
                .map_err(|e| Failure::Runtime(anyhow!("{}: {e}", path.display())))?;
            if read == 0 {
                break;
            }
            n += 1;
            if let Some(b) = &bar {
                b.inc(read as u64);
            }
            let parsed = serde_json::from_str::<Value>(line.trim_end_matches('\n'))
                .map_err(|e| format!("not a JSON record: {e}"))
                .and_then(|v| schema::upgrade(v).map_err(|e| e.to_string()));
            let rec = match parsed {
                Ok(r) => r,
                Err(e) if args.keep_going => {
                    skipped += 1;
                    tracing::warn!(file = %path.display(), line = n, error = %e, "skipped");
                    continue;
                }
                Err(e) => {
                    eprintln!("warden: {}:{n}: {e} (use --keep-going to skip bad lines)", path.display());
                    return Ok(1);
                }
            };
            if args.task.as_deref().is_some_and(|t| rec["task"].as_str() != Some(t)) {
                continue;
            }
            records += 1;
            if args.format == ReplayFormat::Ocsf
                && let Some(event) = ocsf::record(&rec, &ctx)
            {
                serde_json::to_writer(&mut out, &event)
                    .and_then(|()| writeln!(out).map_err(serde_json::Error::io))
                    .map_err(|e| Failure::Runtime(e.into()))?;
            }
            let mut found = engine.observe(&rec);
            if let Some(s) = &scope
                && let Some(what) = rejudge(&rec, s)
            {
                found.push(Finding {
                    rule: "scope".into(),
                    severity: Severity::Medium,
                    description: format!("this scope would have refused: {what}"),
                    task: rec["task"].as_str().unwrap_or("").to_string(),
                    pid: rec["pid"].as_u64(),
                    seqs: vec![rec["seq"].as_u64().unwrap_or(0)],
                    time: rec["time"].as_str().unwrap_or("").to_string(),
                });
            }
            for f in &found {
                print(f, args.format, &ctx, &mut out).map_err(|e| Failure::Runtime(e.into()))?;
            }
            findings += found.len() as u64;
        }
    }
    out.flush().map_err(|e| Failure::Runtime(e.into()))?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    eprintln!(
        "replay: {records} records, {findings} findings, {skipped} lines skipped, {} expressions failed to evaluate",
        engine.eval_errors
    );
    Ok(0)
}
