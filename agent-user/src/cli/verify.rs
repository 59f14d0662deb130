//! `warden verify EVENTS.jsonl...`: hash chains and signed heads.
use std::{
    fs::File,
    io::{BufReader, Read},
    path::PathBuf,
};

use super::Failure;
use crate::audit::verify::{VerifyOptions, verify};

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The log to check; a rotated set in order, oldest first (FILE.2 FILE.1 FILE).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Accept only checkpoints signed by this ed25519 public key (hex).
    #[arg(long, value_name = "HEX")]
    pub key: Option<String>,
    /// Accept tasks that have not ended (a log still being written).
    #[arg(long)]
    pub open: bool,
}

/// Exit 0 only for an intact log; 1 with the first bad line otherwise.
pub fn run(args: VerifyArgs) -> Result<i32, Failure> {
    let mut input: Box<dyn Read> = Box::new(std::io::empty());
    let mut lines_per_file = Vec::new();
    for f in &args.files {
        let text = std::fs::read(f)
            .map_err(|e| Failure::Usage(anyhow::anyhow!("cannot open {}: {e}", f.display())))?;
        lines_per_file.push(
            text.iter().filter(|&&b| b == b'\n').count()
                + usize::from(!text.ends_with(b"\n") && !text.is_empty()),
        );
        input = Box::new(input.chain(File::open(f).map_err(|e| Failure::Usage(e.into()))?));
    }
    let opts = VerifyOptions { trusted_key: args.key, allow_open: args.open };
    let names = args.files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(" ");
    match verify(BufReader::new(input), &opts) {
        Ok(r) => {
            println!(
                "{names}: intact: {} records, {} task(s), {} signed checkpoint(s), key(s) {}",
                r.records,
                r.tasks.len(),
                r.checkpoints,
                r.keys.iter().cloned().collect::<Vec<_>>().join(", ")
            );
            Ok(0)
        }
        Err(e) => {
            // Map the line in the concatenated stream back to its file.
            let (mut file, mut line) = (args.files.len() - 1, e.line);
            for (i, n) in lines_per_file.iter().enumerate() {
                if line <= *n || i == lines_per_file.len() - 1 {
                    file = i;
                    break;
                }
                line -= n;
            }
            println!("{}:{line}: {}", args.files[file].display(), e.reason);
            Ok(1)
        }
    }
}
