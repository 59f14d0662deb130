//! `warden scope check FILE`: validate and compile a scope without running anything.
//! `warden scope suggest LOG`: the scope that would have allowed what a recorded task did.
use std::{
    io::{BufRead, Write},
    path::PathBuf,
};

use anyhow::anyhow;

use super::Failure;
use crate::{
    audit::schema,
    scope::{Scope, compile::CompiledScope, suggest},
};

#[derive(Debug, clap::Subcommand)]
pub enum ScopeCmd {
    /// Validate a scope file (and resolve its files) without running anything.
    Check {
        /// The scope file.
        file: PathBuf,
    },
    /// From a log recorded with `--mode audit` (or a log with refusals), write the scope that
    /// would have allowed what the task did, for a person to review: executables by path
    /// (programs the task built by their directory), files by directory, egress by address and
    /// port, or by name where Warden's resolver answered.
    Suggest {
        /// The log (JSON Lines, as `warden run --log` writes it).
        log: PathBuf,
        /// The scope to add to. Default: the scope file the log's `task_start` names, if it
        /// still exists; else a new scope named after the task.
        #[arg(long, value_name = "FILE")]
        scope: Option<PathBuf>,
        /// Start from an empty scope even if the log names one.
        #[arg(long, conflicts_with = "scope")]
        fresh: bool,
        /// Only this task's records (a log may hold several).
        #[arg(long, value_name = "ID")]
        task: Option<String>,
        /// Write the scope here instead of stdout.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
}

fn suggest_cmd(
    log: PathBuf,
    scope: Option<PathBuf>,
    fresh: bool,
    task: Option<String>,
    output: Option<PathBuf>,
) -> Result<i32, Failure> {
    let usage = |e: anyhow::Error| Failure::Usage(e);
    let f = std::fs::File::open(&log).map_err(|e| usage(anyhow!("cannot open {}: {e}", log.display())))?;
    let mut records = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.map_err(|e| usage(anyhow!("{}:{}: cannot read: {e}", log.display(), i + 1)))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&line)
            .map_err(|e| usage(anyhow!("{}:{}: not a JSON record: {e}", log.display(), i + 1)))?;
        let v = schema::upgrade(v).map_err(|e| usage(anyhow!("{}:{}: {e}", log.display(), i + 1)))?;
        records.push(v);
    }
    let base_path = match (scope, fresh) {
        (Some(p), _) => Some(p),
        (None, true) => None,
        (None, false) => {
            let named = records
                .iter()
                .find(|r| {
                    r["kind"] == "task_start" && task.as_deref().is_none_or(|t| r["task"].as_str() == Some(t))
                })
                .and_then(|r| r["scope"].as_str())
                .map(PathBuf::from);
            match named {
                Some(p) if p.is_file() => {
                    eprintln!(
                        "warden: adding to {} (the log's scope; --fresh to start from none)",
                        p.display()
                    );
                    Some(p)
                }
                _ => None,
            }
        }
    };
    let base = match &base_path {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| usage(anyhow!("{}: cannot read: {e}", p.display())))?;
            let s = Scope::parse(&text, p).map_err(|e| usage(e.into()))?;
            Some((text, s))
        }
        None => None,
    };
    let s = suggest::suggest(
        &log.display().to_string(),
        records,
        task.as_deref(),
        base.as_ref().map(|(t, s)| (t.as_str(), s)),
    )
    .map_err(|e| match e {
        suggest::SuggestError::Invalid(_) => Failure::Runtime(e.into()),
        _ => Failure::Usage(e.into()),
    })?;
    match &output {
        Some(p) => std::fs::write(p, &s.yaml)
            .map_err(|e| Failure::Runtime(anyhow!("cannot write {}: {e}", p.display())))?,
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(s.yaml.as_bytes()).map_err(|e| Failure::Runtime(e.into()))?;
        }
    }
    eprintln!("warden: suggested {} additions, {} notes", s.added.len(), s.notes.len());
    for a in &s.added {
        eprintln!("  + {a}");
    }
    Ok(0)
}

pub fn run(cmd: ScopeCmd) -> Result<i32, Failure> {
    match cmd {
        ScopeCmd::Suggest { log, scope, fresh, task, output } => suggest_cmd(log, scope, fresh, task, output),
        ScopeCmd::Check { file } => {
            let scope = Scope::load(&file).map_err(|e| Failure::Usage(e.into()))?;
            let c = CompiledScope::compile(&scope.for_validation()).map_err(|e| Failure::Usage(e.into()))?;
            println!("{}: ok", file.display());
            println!("  task {} ({})", scope.task, scope.mode.as_str());
            match &c.exec {
                Some(ids) => println!("  exec: {} allowed executables", ids.len()),
                None => println!("  exec: not restricted"),
            }
            for d in &c.exec_dirs {
                println!("  exec: any program below {}/", d.path.display());
            }
            for w in c.exec_dir_warnings() {
                eprintln!("warning: {}: {w}", file.display());
            }
            for (name, v) in [("read", &scope.read), ("write", &scope.write)] {
                match v {
                    Some(v) => println!("  files.{name}: {} allowed paths", v.len()),
                    None => println!("  files.{name}: not restricted (protected paths excepted)"),
                }
            }
            println!("  files.deny: {} paths", scope.deny.len());
            match &c.egress {
                Some(e) => println!("  network: {} egress prefixes", e.len()),
                None => println!("  network: not restricted"),
            }
            println!("  secrets: {}", c.secrets.len());
            if let Some(p) = scope.process_limit {
                println!("  limits.processes: {p}");
            }
            let refused: Vec<&str> = c.seccomp_deny.iter().map(|(n, _)| *n).collect();
            println!("  refused syscalls: {}", refused.join(" "));
            let s = c.sockets;
            let extra: Vec<&str> = [
                (s.raw, "raw IP and ICMP"),
                (s.packet, "AF_PACKET"),
                (s.netlink, "all netlink"),
                (s.other, "other families"),
            ]
            .iter()
            .filter_map(|&(on, name)| on.then_some(name))
            .collect();
            println!(
                "  sockets: unix, TCP, UDP, NETLINK_ROUTE{}",
                extra.iter().map(|e| format!(", {e}")).collect::<String>()
            );
            Ok(0)
        }
    }
}
