//! `warden scope check FILE`: validate and compile a scope without running anything.
use std::path::PathBuf;

use super::Failure;
use crate::scope::{Scope, compile::CompiledScope};

#[derive(Debug, clap::Subcommand)]
pub enum ScopeCmd {
    /// Validate a scope file (and resolve its files) without running anything.
    Check {
        /// The scope file.
        file: PathBuf,
    },
}

pub fn run(cmd: ScopeCmd) -> Result<i32, Failure> {
    match cmd {
        ScopeCmd::Check { file } => {
            let scope = Scope::load(&file).map_err(|e| Failure::Usage(e.into()))?;
            let c = CompiledScope::compile(&scope.for_validation()).map_err(|e| Failure::Usage(e.into()))?;
            println!("{}: ok", file.display());
            println!("  task {} ({})", scope.task, scope.mode.as_str());
            match &c.exec {
                Some(ids) => println!("  exec: {} allowed executables", ids.len()),
                None => println!("  exec: not restricted"),
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
