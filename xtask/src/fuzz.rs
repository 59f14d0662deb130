//! `cargo xtask fuzz`: runs every cargo-fuzz target (fuzz/) for a while with the seed corpus.
use std::process::Command;

use crate::util::{run, workspace_root};

/// The targets in fuzz/Cargo.toml.
pub const TARGETS: &[&str] = &["decode", "scope_parse", "rules_parse", "verify"];

#[derive(Debug, clap::Args)]
pub struct FuzzArgs {
    /// Seconds per target.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Only these targets (default: all).
    #[arg(long = "target")]
    pub targets: Vec<String>,
}

pub fn run_fuzz(args: FuzzArgs) -> anyhow::Result<()> {
    let have = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !have {
        run(Command::new("cargo").args(["+stable", "install", "cargo-fuzz", "--locked"]))?;
    }
    let root = workspace_root().join("fuzz");
    let targets: Vec<&str> = if args.targets.is_empty() {
        TARGETS.to_vec()
    } else {
        args.targets.iter().map(String::as_str).collect()
    };
    for t in targets {
        let corpus = root.join("corpus").join(t);
        std::fs::create_dir_all(&corpus)?;
        run(Command::new("cargo")
            .current_dir(&root)
            .args(["+nightly", "fuzz", "run", t])
            .arg(&corpus)
            .arg("--")
            .arg(format!("-max_total_time={}", args.seconds)))?;
        eprintln!("fuzz: {t}: clean for {} s", args.seconds);
    }
    Ok(())
}
