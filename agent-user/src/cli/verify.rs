//! `warden verify EVENTS.jsonl`: hash chains and signed heads.
use std::{fs::File, io::BufReader, path::PathBuf};

use super::Failure;
use crate::audit::verify::{VerifyOptions, verify};

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The log to check.
    pub file: PathBuf,
    /// Accept only checkpoints signed by this ed25519 public key (hex).
    #[arg(long, value_name = "HEX")]
    pub key: Option<String>,
    /// Accept tasks that have not ended (a log still being written).
    #[arg(long)]
    pub open: bool,
}

/// Exit 0 only for an intact log; 1 with the first bad line otherwise.
pub fn run(args: VerifyArgs) -> Result<i32, Failure> {
    let f = File::open(&args.file)
        .map_err(|e| Failure::Usage(anyhow::anyhow!("cannot open {}: {e}", args.file.display())))?;
    let opts = VerifyOptions { trusted_key: args.key, allow_open: args.open };
    match verify(BufReader::new(f), &opts) {
        Ok(r) => {
            println!(
                "{}: intact: {} records, {} task(s), {} signed checkpoint(s), key(s) {}",
                args.file.display(),
                r.records,
                r.tasks.len(),
                r.checkpoints,
                r.keys.iter().cloned().collect::<Vec<_>>().join(", ")
            );
            Ok(0)
        }
        Err(e) => {
            println!("{}:{}: {}", args.file.display(), e.line, e.reason);
            Ok(1)
        }
    }
}
